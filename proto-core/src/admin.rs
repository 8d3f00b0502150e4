//! What an operator asks of a running core (the admin socket of the host):
//! the bound sessions, ending a user's sessions (kick), ending an account's
//! sessions when it is deleted, and clearing login lockouts.
//!
//! These are pure queries and commands on the [`Server`]: the core does
//! no I/O for them, and what they end is drained like any other output.

use core::net::IpAddr;
use std::time::Instant;

use jid::{BareJid, Jid};

use crate::error::StreamErrorCondition as XE;
use crate::server::{ConnId, Listener, Server};

/// The text of the stream error a kicked session gets.
pub const KICK_TEXT: &str = "kicked by the administrator";
/// The text of the stream error the sessions of a deleted account get.
pub const DELETED_TEXT: &str = "Account deleted";

/// One bound session, as [`Server::sessions`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The connection's handle.
    pub conn: ConnId,
    /// The session's full JID.
    pub jid: String,
    /// The peer's address.
    pub address: IpAddr,
    /// The listener the connection came in on.
    pub listener: Listener,
    /// The stream is encrypted (STARTTLS or direct TLS).
    pub tls: bool,
    /// When the resource was bound (seconds since the Unix epoch), once the
    /// core was told the wall-clock time.
    pub since: Option<u64>,
    /// The session sent initial presence and is not unavailable since.
    pub available: bool,
    /// The priority of its last presence.
    pub priority: i8,
    /// It asked for the roster (gets roster pushes).
    pub roster: bool,
    /// It asked for the block list (gets blocking pushes).
    pub blocklist: bool,
    /// Bytes waiting to be sent to it.
    pub pending_output: usize,
}

impl SessionInfo {
    /// [`since`](Self::since) as an RFC 3339 UTC time (`2027-01-15T08:00:00Z`).
    pub fn since_rfc3339(&self) -> Option<String> {
        self.since.map(crate::timer::rfc3339)
    }
}

/// A login lockout cleared by [`Server::clear_lockouts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearedLockout {
    /// The address whose failed logins were forgotten.
    pub address: IpAddr,
    /// The failed logins it had in its window.
    pub failures: u32,
    /// Its logins were refused (the failures had reached the limit).
    pub locked_out: bool,
}

impl Server {
    /// Every bound session, in connection order.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                let s = c.session.as_ref()?;
                Some(SessionInfo {
                    conn: *id,
                    jid: s.jid.to_string(),
                    address: c.peer,
                    listener: c.listener,
                    tls: c.stream.is_tls(),
                    since: s.bound_at,
                    available: s.available,
                    priority: s.priority,
                    roster: s.roster_requested,
                    blocklist: s.blocklist_requested,
                    pending_output: c.stream.pending_output(),
                })
            })
            .collect();
        list.sort_by_key(|s| s.conn);
        list
    }

    /// Ends the sessions of `jid` with the stream error `policy-violation`
    /// ("kicked by the administrator"): every resource of a bare JID, the
    /// one of a full JID. Returns how many ended (each is logged with its
    /// `disconnect:` line). Drain the core afterwards.
    pub fn kick(&mut self, now: Instant, jid: &Jid) -> usize {
        self.clock.tick(now);
        let targets: Vec<ConnId> = match jid.clone().try_into_full() {
            Ok(full) => self.find_session(&full).into_iter().collect(),
            Err(bare) => self.sm.sessions_of(&bare),
        };
        for &c in &targets {
            self.fail(c, XE::PolicyViolation, Some(KICK_TEXT));
        }
        targets.len()
    }

    /// The account `bare` is being deleted: every connection authenticated
    /// as it (bound or not) ends with the stream error `not-authorized`
    /// ("Account deleted"), and what the core keeps of the account is
    /// forgotten, so that the next stanza to it loads it again (and finds
    /// it gone once the store deleted it). Returns how many connections
    /// ended. Drain the core (so the store runs what their ends asked for)
    /// before deleting the account in the store.
    pub fn end_account(&mut self, now: Instant, bare: &BareJid) -> usize {
        self.clock.tick(now);
        let Some(node) = bare.node() else {
            return 0;
        };
        if bare.domain().as_str() != self.domain.as_str() {
            return 0;
        }
        let mut targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.auth.user.as_deref() == Some(node.as_str()))
            .map(|(id, _)| *id)
            .collect();
        targets.sort();
        self.sm.account_gone(bare);
        for &c in &targets {
            self.fail(c, XE::NotAuthorized, Some(DELETED_TEXT));
        }
        self.sm.forget_account(bare, &mut self.fx);
        targets.len()
    }

    /// Forgets the failed logins of `address` (or of every address when
    /// `None`), which lifts a lockout at once. Returns what was cleared.
    pub fn clear_lockouts(&mut self, address: Option<IpAddr>) -> Vec<ClearedLockout> {
        let Some(now) = self.clock.now() else {
            return Vec::new();
        };
        let mut cleared = self.guard.clear_failures(address, now, &self.config.limits);
        cleared.sort();
        cleared
            .into_iter()
            .map(|(address, failures, locked_out)| ClearedLockout {
                address,
                failures,
                locked_out,
            })
            .collect()
    }

    /// Storage requests sent and not yet answered.
    pub fn pending_store_requests(&self) -> usize {
        self.fx.in_flight()
    }

    /// Bytes waiting to be sent, over every connection.
    pub fn pending_output_bytes(&self) -> usize {
        self.conns.values().map(|c| c.stream.pending_output()).sum()
    }
}
