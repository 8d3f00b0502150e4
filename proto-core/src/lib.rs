//! # proto-core: the sans-IO protocol core of kontalkd
//!
//! Pure state machines for the Kontalk XMPP server: XML framing, client
//! stream negotiation (RFC 6120: STARTTLS, SASL, resource binding), routing
//! between local sessions and the server's own iq services. The core owns
//! each stream's `rustls::ServerConnection`, so a runtime moves ciphertext
//! only.
//!
//! ## The contract
//!
//! The core does no I/O: no sockets, no files, no clock, no global RNG.
//!
//! * **Input** goes in through `handle_*` calls on [`Server`]:
//!   [`Server::handle_accept`], [`Server::handle_data`],
//!   [`Server::handle_eof`], [`Server::handle_store_reply`],
//!   [`Server::handle_timeout`], [`Server::handle_shutdown`]. Every call
//!   that needs the time takes it as `now: Instant`; randomness comes from
//!   the seed given to [`Server::new`].
//! * **Output** comes out through `poll_*` calls: [`Server::poll_event`]
//!   (data to send, connections to close, storage requests),
//!   [`Server::poll_transmit`] (the bytes of one connection, written into a
//!   buffer the caller supplies) and [`Server::poll_timeout`].
//! * **Polling order:** after every `handle_*` call, the caller drains
//!   [`Server::poll_event`] until it returns `None` (answering each
//!   [`Event::Transmit`] with [`Server::poll_transmit`]), then sleeps until
//!   [`Server::poll_timeout`] or the next input, whichever comes first, and
//!   calls [`Server::handle_timeout`] when that instant has passed.
//! * **Bounded:** every queue in the core is bounded. A connection whose
//!   pending output exceeds [`Limits::output_budget`] is not read
//!   ([`Server::wants_read`] returns `false`) until it drains.
//! * **Storage is an effect:** the core emits [`StoreRequest`]s with a
//!   [`StoreToken`] and continues when the runtime answers; nothing is
//!   acknowledged to a client before the store said it is durable.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub(crate) mod c2s;
pub mod config;
pub(crate) mod effects;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub(crate) mod guard;
pub mod ns;
pub mod roster;
pub mod router;
pub mod sasl;
pub mod server;
pub(crate) mod session;
pub mod stanza;
pub mod store;
pub(crate) mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub(crate) mod timer;
pub mod tls;
pub mod xml;

pub use config::{Config, Limits};
pub use effects::Event;
pub use server::{ConnId, IdMap, Listener, Server};
pub use store::{OfflineMessage, OfflineStored, StoreReply, StoreRequest, StoreToken, UserData};
pub use tls::{TlsConfigs, TlsIdentity};
#[cfg(test)]
mod tests;
