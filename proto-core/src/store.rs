//! Storage as an effect: the typed requests the core emits and the answers it expects.
//!
//! The core never touches a database. When it needs stored data (an account's
//! SCRAM keys) or must make something durable (a new account), it emits a
//! [`StoreRequest`] with a [`StoreToken`] through
//! [`Server::poll_event`](crate::Server::poll_event). The runtime executes the
//! request (batching requests into one transaction where it can) and hands the
//! result back with [`Server::handle_store_reply`](crate::Server::handle_store_reply).

use crate::sasl::Credentials;

/// Identifies one outstanding storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreToken(pub u64);

/// Something the core needs the store to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    /// Look up the SCRAM credentials of a local account (node part, already normalized).
    LoadCredentials {
        /// The account's username (the node part of its JID).
        username: String,
    },
    /// Create a new account; must be durable before the reply is sent.
    CreateAccount {
        /// The account's username (the node part of its JID).
        username: String,
        /// Its salted SCRAM keys; the password itself is never stored.
        credentials: Credentials,
    },
    /// Replace the credentials of an existing account (password change).
    SetCredentials {
        /// The account's username.
        username: String,
        /// The new salted SCRAM keys.
        credentials: Credentials,
    },
    /// Delete an account and everything stored for it.
    DeleteAccount {
        /// The account's username.
        username: String,
    },
}

/// The store's answer to a [`StoreRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// Answer to [`StoreRequest::LoadCredentials`]: `None` when there is no such account.
    Credentials(Option<Credentials>),
    /// Answer to [`StoreRequest::CreateAccount`]: `false` when the username is taken.
    Created(bool),
    /// Answer to [`StoreRequest::SetCredentials`] and [`StoreRequest::DeleteAccount`]:
    /// `false` when there is no such account.
    Done(bool),
    /// The store failed; the message is for logs, never sent to clients.
    Failed(String),
}
