//! # proto-core: the sans-IO protocol core of kontalkd
//!
//! Pure state machines for the Kontalk XMPP server. The core owns each
//! stream's rustls state, so a runtime moves ciphertext only.
//!
//! ## The parts
//!
//! | module | part |
//! |---|---|
//! | [`server`] | the facade: the `handle_*` / `poll_*` calls below, the connection table, the dispatch of a connection's events to the part that handles them |
//! | `effects` | [`Event`], and the storage requests in flight with what waits on each answer |
//! | `timer` | typed timers keyed by (connection, kind): authentication, idle, server ping and its answer, keepalive, throttled answers, the rate limit; periodic maintenance; the wall clock |
//! | `guard` | connections per address and in total, failed logins per address (throttling, lock-out), the stanza rate limit |
//! | `stream` | what every stream has, whoever the peer: framing under the [`Limits`], TLS in either direction (`rustls::Connection`), the header for `jabber:client` and `jabber:server`, restarts, stream errors, the closing handshake, the output budget. It knows nothing of users |
//! | `c2s` | client negotiation on a stream: STARTTLS, SASL, in-band registration (XEP-0077), resource binding |
//! | `session` | the session manager (RFC 6121), one file per feature: sessions and delivery, presence, offline storage, roster and subscriptions, blocking, vCards, and the one iq dispatcher with the server's own iqs |
//! | [`admin`] | what an operator asks of a running core: the sessions, kick, the end of a deleted account's sessions, clearing login lockouts |
//! | [`metrics`] | the counters (stanzas, bytes, logins, offline messages) behind the host's metrics endpoint |
//! | [`router`] | where every stanza goes: the local host, or a bounce (Net and S2S add their routes) |
//! | [`net`] | the Kontalk network: the links between the servers of one network domain, with pinned certificates both ways, opened again with a backoff |
//! | [`xml`], [`stanza`], [`address`], [`sasl`], [`roster`], [`error`], [`ns`], [`config`], [`store`], [`tls`] | the vocabulary: XML elements and the stream parser, stanza kinds and iq types, JIDs, SASL mechanisms, the subscription state machine, error conditions, namespaces, configuration, storage requests and replies, TLS set-up |
//!
//! A connection's state is composed of the parts' own: its `Stream`, what
//! C2S keeps (the SASL exchange, the authenticated user), the bound
//! session the SM keeps, its timers and its rate limit. When a connection
//! ends, the stream layer forgets it and its session's end is handed to
//! the session manager as an event of its own.
//!
//! ## The contract
//!
//! The core does no I/O: no sockets, no files, no clock, no global RNG.
//!
//! * **Input** goes in through `handle_*` calls on [`Server`]:
//!   [`Server::handle_accept`], [`Server::handle_data`],
//!   [`Server::handle_eof`], [`Server::handle_connected`],
//!   [`Server::handle_connect_failed`], [`Server::handle_store_reply`],
//!   [`Server::handle_code_sent`], [`Server::handle_timeout`],
//!   [`Server::handle_wall_clock`], [`Server::handle_shutdown`]. Every call that needs the time takes it
//!   as `now: Instant`; randomness comes from the seed given to
//!   [`Server::new`].
//! * **Output** comes out through `poll_*` calls: [`Server::poll_event`]
//!   (data to send, connections to close, connections to open for Net
//!   links, storage requests, verification codes to send),
//!   [`Server::poll_transmit`] (the bytes of one connection, written into a
//!   buffer the caller supplies) and [`Server::poll_timeout`].
//! * **Polling order:** after every `handle_*` call, the caller drains
//!   [`Server::poll_event`] until it returns `None` (answering each
//!   [`Event::Transmit`] with [`Server::poll_transmit`]), then sleeps until
//!   [`Server::poll_timeout`] or the next input, whichever comes first, and
//!   calls [`Server::handle_timeout`] when that instant has passed.
//! * **Bounded:** every queue in the core is bounded. A connection whose
//!   pending output exceeds [`Limits::output_budget`], or whose stanzas
//!   wait for the rate limit ([`Limits::stanzas_per_second`]), is not read
//!   ([`Server::wants_read`] returns `false`): TCP pushes back on the
//!   client. The runtime asks again after it wrote the connection's output,
//!   and when the core says [`Event::Resume`].
//! * **Storage is an effect:** the core emits [`StoreRequest`]s with a
//!   [`StoreToken`] and continues when the runtime answers; nothing is
//!   acknowledged to a client before the store said it is durable.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub mod admin;
pub(crate) mod c2s;
pub mod config;
pub mod dns;
pub(crate) mod effects;
pub mod error;
pub mod forms;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub(crate) mod guard;
pub mod kontalk;
pub mod metrics;
pub mod net;
pub mod ns;
pub mod roster;
pub mod router;
pub mod s2s;
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
pub mod upload;
pub mod xml;

pub use config::Reconfigured;
pub use config::{
    Config, KontalkConfig, Limits, NetConfig, NetPeer, S2sConfig, S2sRoute, UploadConfig,
};
pub use effects::Event;
pub use server::{ConnId, IdMap, Listener, Server};
pub use store::{
    AppPush, ArchiveDefault, ArchiveEntry, ArchivePage, ArchivePrefs, ArchiveQuery,
    ArchivedMessage, CodeIssued, Directory, DirectoryChange, NetReceived, OfflineMessage,
    OfflineStored, Registration, StoreReply, StoreRequest, StoreToken, StoredKey, UploadSlot,
    UploadState, UserData,
};
pub use tls::{TlsConfigs, TlsIdentity};
#[cfg(test)]
mod tests;
