//! Counters of what the core did since it started, for the host's metrics
//! endpoint: plain integer adds where things happen (the relay path pays
//! one add per stanza and per buffer, no allocation, no hashing).
//!
//! Gauges (connections, sessions, queued output, storage requests in
//! flight) are not counted: they are read when asked for, from the
//! [`Server`](crate::Server)'s own tables.

use crate::stanza::StanzaKind;

/// Stanzas by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StanzaCounts {
    /// `<message/>`
    pub message: u64,
    /// `<presence/>`
    pub presence: u64,
    /// `<iq/>`
    pub iq: u64,
}

impl StanzaCounts {
    /// Counts `n` stanzas of `kind`.
    #[inline]
    pub(crate) fn add(&mut self, kind: StanzaKind, n: u64) {
        match kind {
            StanzaKind::Message => self.message += n,
            StanzaKind::Presence => self.presence += n,
            StanzaKind::Iq => self.iq += n,
        }
    }

    /// The counts with their kinds' element names.
    pub fn by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("message", self.message),
            ("presence", self.presence),
            ("iq", self.iq),
        ]
    }
}

/// What the core counted since it started; read with
/// [`Server::counters`](crate::Server::counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted (including those refused by a limit at once).
    pub connections_accepted: u64,
    /// Stanzas received on client streams.
    pub stanzas_in: StanzaCounts,
    /// Stanzas sent on client streams.
    pub stanzas_out: StanzaCounts,
    /// Bytes received (as read from the sockets, TLS included).
    pub bytes_in: u64,
    /// Bytes handed to the runtime to send (TLS included).
    pub bytes_out: u64,
    /// Successful SASL authentications.
    pub logins: u64,
    /// Failed SASL authentications (the `login failed:` log lines).
    pub login_failures: u64,
    /// Logins refused because the address is locked out.
    pub logins_refused: u64,
    /// Messages the store accepted for offline accounts.
    pub offline_stored: u64,
    /// Pushes handed to the host to send (one per device token).
    pub pushes: u64,
}
