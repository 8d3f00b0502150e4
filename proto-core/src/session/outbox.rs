//! What a session was handed and the runtime has not taken yet.
//!
//! A stanza routed to a session is written to its stream, and is out of the
//! core's hands once the runtime takes the stream's output
//! ([`Server::poll_transmit`]). Until then it can still be withdrawn, and
//! when the session ends first (the peer went away, it does not read, it
//! was replaced, kicked, or the server stops) it is: the stream encrypts at
//! take time, so what was not taken comes back whole, as plaintext, and
//! goes where RFC 6121 section 8.5 sends a stanza for a resource that is no
//! longer there: a message to the account's other resources or to offline
//! storage, an iq request answered with `service-unavailable`. A message
//! that came from offline storage is deleted there only once taken; if it
//! was withdrawn it simply stays stored.
//!
//! The outbox keeps only where each message or iq lies in the stream (no
//! copy of its bytes): the withdrawn plaintext gives them back.

use std::collections::VecDeque;

use jid::BareJid;

use crate::address::Bare;

use super::username;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::server::{ConnId, Server};
use crate::stanza::{IqType, StanzaKind};
use crate::store::StoreRequest;

/// What a withdrawn stanza was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// A message addressed to this resource (its full JID), or to the bare
    /// JID with this resource as its only recipient.
    Message,
    /// A message to the bare JID that other resources got as well: they
    /// have it, so a withdrawn copy is dropped.
    SharedMessage,
    /// A message from offline storage, with its id there.
    Offline(i64),
    /// A message stored as it went to this session (with stream
    /// management), with its key there: deleted once acknowledged.
    InFlight(u64),
    /// An iq routed to this resource.
    Iq,
}

/// One stanza in a session's stream: plaintext positions `start..end`.
#[derive(Debug)]
struct Entry {
    start: u64,
    end: u64,
    what: Handed,
}

/// The messages and iqs a session's stream holds that the runtime has not
/// taken.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    entries: VecDeque<Entry>,
}

/// Withdrawn stanzas of a session that ends, with their bytes.
pub(crate) type Withdrawn = Vec<(Handed, Vec<u8>)>;

impl Outbox {
    /// The runtime took the stream's output up to `taken`: forget what is
    /// out, and give the offline ids among it (to be deleted from storage).
    pub(crate) fn taken(&mut self, taken: u64, offline: &mut Vec<i64>) {
        while let Some(e) = self.entries.front() {
            if e.end > taken {
                break;
            }
            if let Handed::Offline(id) = e.what {
                offline.push(id);
            }
            self.entries.pop_front();
        }
    }

    /// Whether stanzas wait to be taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What waits to be taken.
    pub(crate) fn handed(&self) -> impl Iterator<Item = Handed> + '_ {
        self.entries.iter().map(|e| e.what)
    }

    /// The message in flight with `key` was not stored after all: it is a
    /// message like any other (redelivered if withdrawn).
    pub(crate) fn not_stored(&mut self, key: u64) {
        for e in &mut self.entries {
            if e.what == Handed::InFlight(key) {
                e.what = Handed::Message;
            }
        }
    }

    /// Whether messages from offline storage wait to be taken.
    pub(crate) fn holds_offline(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.what, Handed::Offline(_)))
    }
}

impl Server {
    /// Writes `bytes` (one stanza, `what`) to `conn`'s stream and remembers
    /// where it lies, until the runtime takes it.
    pub(super) fn hand(&mut self, conn: ConnId, bytes: &[u8], what: Handed) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let start = c.stream.written();
        let kind = match what {
            Handed::Iq => StanzaKind::Iq,
            _ => StanzaKind::Message,
        };
        self.counters.stanzas_out.add(kind, 1);
        if let Some(s) = c.session.as_mut() {
            s.outbox.entries.push_back(Entry {
                start,
                end: start + bytes.len() as u64,
                what,
            });
        }
        self.stanza_out(conn, bytes, Some(what));
    }

    /// After the runtime took `conn`'s output: what it took is out of the
    /// core's hands; messages from offline storage among it are deleted there.
    pub(crate) fn output_taken(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let taken = c.stream.taken();
        let Some(s) = c.session.as_mut() else {
            return;
        };
        if s.outbox.is_empty() && s.offline.is_empty() {
            return;
        }
        let mut ids = Vec::new();
        s.outbox.taken(taken, &mut ids);
        if s.sm.is_some() {
            // With stream management, deleted once acknowledged.
            ids.clear();
        }
        let more = !s.offline.is_empty();
        if !ids.is_empty() {
            let username = username(&s.jid.bare());
            self.fx.store(
                Pending::Ignore("they stay stored and are delivered again at the next login"),
                StoreRequest::DeleteOffline { username, ids },
            );
        }
        if more {
            self.feed_offline(conn);
        }
    }

    /// The session on `conn` ends: withdraws from its stream the messages
    /// and iqs the runtime has not taken (with whatever lies between them),
    /// keeping them in the session for [`Server::redeliver`] once it has
    /// left the table. What was written after the last of them (a closing
    /// tag, a stream error) stays.
    pub(crate) fn withdraw_unsent(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(s) = c.session.as_mut() else {
            return;
        };
        let Some(last) = s.outbox.entries.back() else {
            return;
        };
        let base = c.stream.taken();
        let bytes = c.stream.withdraw(last.end);
        if s.sm.is_some() {
            // Kept until acknowledged: redelivered from there.
            s.outbox.entries.clear();
            return;
        }
        for e in s.outbox.entries.drain(..) {
            let (from, to) = ((e.start - base) as usize, (e.end - base) as usize);
            if let Some(b) = bytes.get(from..to) {
                s.withdrawn.push((e.what, b.to_vec()));
            }
        }
    }

    /// Stanzas withdrawn from a session of `user` that ended, now that it
    /// has left the table: RFC 6121 section 8.5 for a resource that is gone.
    pub(super) fn redeliver(&mut self, user: &BareJid, withdrawn: Withdrawn) {
        let offline = withdrawn
            .iter()
            .any(|(w, _)| matches!(w, Handed::Offline(_) | Handed::InFlight(_)));
        for (what, bytes) in withdrawn {
            let Some(el) = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| crate::xml::parse_fragment(s, &self.config.limits))
            else {
                log::error!("{user}: a withdrawn stanza does not parse again; dropped");
                continue;
            };
            match (what, StanzaKind::of(&el)) {
                // Still stored: the next session gets it.
                (Handed::InFlight(key), _) => {
                    // Stored, or, if its storage is still to be answered
                    // and fails, routed again then.
                    if let Some(orphaned) = self.sm.flights.get_mut(&key) {
                        *orphaned = true;
                    }
                }
                (Handed::Offline(_) | Handed::SharedMessage, _) => {}
                (Handed::Message, Some(StanzaKind::Message)) => {
                    // To the full JID that is gone: 8.5.3.2.1 (other
                    // resources, or offline storage).
                    self.route(el);
                }
                (Handed::Iq, Some(StanzaKind::Iq))
                    if IqType::of(&el).is_some_and(IqType::is_request) =>
                {
                    self.bounce_routed(&el, SE::ServiceUnavailable);
                }
                _ => {}
            }
        }
        // Messages from offline storage stay stored: another available
        // session of the account gets them now rather than at its next login.
        if offline {
            if let Some((c, _)) = self
                .available_resources(user)
                .into_iter()
                .find(|&(_, p)| p >= 0)
            {
                self.deliver_offline(c, user);
            }
        }
    }
}
