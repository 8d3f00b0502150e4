//! Offline storage (XEP-0160): messages for an account with no available
//! resource are stored, and delivered with a delay stamp (XEP-0203) when
//! a session of the account sends its initial presence.
//!
//! Storage also holds the messages in flight to a session with stream
//! management (XEP-0198): such a message is stored first and handed to the
//! session once durable, and deleted when the client acknowledges it. A
//! session that ends, or a server that dies, before the acknowledgement
//! leaves it stored, and the next login gets it; the client never gets it
//! twice in one session.

use jid::{BareJid, FullJid};

use super::outbox::Handed;
use super::username;
use crate::address::Bare;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::store::{ArchiveEntry, OfflineMessage, OfflineStored, StoreReply, StoreRequest};
use crate::timer::rfc3339;
use crate::xml::{Element, Node};
use rand_core::Rng as _;

/// Whether a message is worth storing for an offline recipient (XEP-0160):
/// `normal` or `chat` with content other than chat states.
pub(super) fn storable(el: &Element) -> bool {
    matches!(el.attr("type").unwrap_or("normal"), "normal" | "chat")
        && el
            .elements()
            .any(|c| c.ns != ns::CHATSTATES && !(c.ns == ns::CLIENT && c.name == "thread"))
}

impl Server {
    /// Stores `el` for `bare`, and `archive` (its archive copy) with it;
    /// `inbox`, its row in the Net inbox, goes in the same transaction.
    pub(super) fn store_offline(
        &mut self,
        bare: &BareJid,
        el: Element,
        archive: Option<ArchiveEntry>,
        inbox: Option<i64>,
    ) {
        let (Some(node), Some(stamp)) = (bare.node(), self.clock.unix_now()) else {
            self.bounce_routed(&el, SE::ServiceUnavailable);
            return self.net_delivered(inbox);
        };
        let stanza = el.to_xml(ns::CLIENT);
        let archive = archive.map(|mut entry| {
            entry.stanza = stanza.clone();
            entry
        });
        let request = StoreRequest::StoreOffline {
            username: node.as_str().to_owned(),
            stanza,
            stamp,
            quota: self.config.offline_quota,
            archive,
            key: None,
            inbox,
        };
        // Its app servers (XEP-0357), as the account has them now: it may
        // be out of memory by the time the store answers.
        let apps = self
            .sm
            .account(bare)
            .map(|a| a.app_push.clone())
            .unwrap_or_default();
        self.fx
            .store(Pending::StoreOffline(el, inbox, apps), request);
    }

    /// The store answered: the message is stored, or its sender hears why not.
    pub(crate) fn offline_stored(
        &mut self,
        el: Element,
        inbox: Option<i64>,
        apps: Vec<crate::store::AppPush>,
        reply: StoreReply,
    ) {
        if !matches!(reply, StoreReply::Offline(OfflineStored::Stored(_))) {
            // Answered: it leaves the inbox (stored, it left with it).
            self.net_delivered(inbox);
        }
        match reply {
            StoreReply::Offline(OfflineStored::Stored(_)) => {
                self.counters.offline_stored += 1;
                if let Some(to) = el.attr("to").and_then(|t| self.jids.parse(t).ok()) {
                    self.push_for(&to.to_bare(), &el, Some(apps));
                }
            }
            StoreReply::Offline(OfflineStored::QuotaFull) => {
                log::info!(
                    "offline storage of {} is full",
                    el.attr("to").unwrap_or_default()
                );
                self.bounce_routed(&el, SE::ServiceUnavailable);
            }
            StoreReply::Offline(OfflineStored::NoAccount) => {
                self.bounce_routed(&el, SE::ServiceUnavailable)
            }
            // A failure is logged where every store failure is.
            _ => self.bounce_routed(&el, SE::InternalServerError),
        }
    }

    /// Whether a message for the one session `conn` is stored until the
    /// client acknowledges it: the session has stream management, and the
    /// message is one offline storage keeps.
    pub(super) fn stored_until_acked(&self, conn: ConnId, el: &Element) -> bool {
        storable(el)
            && self
                .conns
                .get(&conn)
                .and_then(|c| c.session.as_ref())
                .is_some_and(|s| s.sm.is_some())
    }

    /// Hands `el` to the session `conn` of `to`, and stores it (with its
    /// archive copy, if any) until the client acknowledges it. Nothing
    /// waits for the store: an acknowledgement that comes first deletes it
    /// all the same (the store runs requests in order).
    pub(super) fn store_in_flight(
        &mut self,
        conn: ConnId,
        to: FullJid,
        el: Element,
        archive: Option<ArchiveEntry>,
        inbox: Option<i64>,
    ) {
        let mut buf = Vec::with_capacity(256);
        el.write_to(&mut buf, ns::CLIENT);
        let Some(stamp) = self.clock.unix_now() else {
            // No wall clock yet: no stamp to store it with.
            if let Some(entry) = archive {
                self.archive_delivered(&to.bare(), entry, &buf);
            }
            self.hand(conn, &buf, Handed::Message);
            return self.net_delivered(inbox);
        };
        let key = self.rng.next_u64() >> 1;
        self.sm.flights.insert(key, false);
        self.hand(conn, &buf, Handed::InFlight(key));
        // A session waiting to be resumed: its phone may be asleep.
        if self.conns.get(&conn).is_some_and(|c| c.detached) {
            self.push_for(&to.bare(), &el, None);
        }
        let stanza = String::from_utf8_lossy(&buf).into_owned();
        let copy = archive.clone().map(|mut entry| {
            entry.stanza = stanza.clone();
            entry
        });
        let username = username(&to.bare());
        self.fx.store(
            Pending::InFlight {
                to,
                el,
                archive,
                key,
                inbox,
            },
            StoreRequest::StoreOffline {
                username,
                stanza,
                stamp,
                quota: self.config.offline_quota,
                archive: copy,
                key: Some(key),
                inbox,
            },
        );
    }

    /// The store answered for the message in flight with `key` to the
    /// session of `to`. Stored, it stays so until acknowledged (the session
    /// ended without acknowledging it meanwhile: another available one gets
    /// it now, or the next login). Not stored (the quota, a failure), it is
    /// a message like any other in the session, redelivered if the session
    /// ends before the acknowledgement, or routed again if the session
    /// ended so already; and its archive copy is stored on its own.
    pub(crate) fn in_flight_stored(
        &mut self,
        to: FullJid,
        el: Element,
        archive: Option<ArchiveEntry>,
        key: u64,
        inbox: Option<i64>,
        reply: StoreReply,
    ) {
        let bare = to.bare();
        let session = self.find_session(&to);
        let orphaned = self.sm.flights.remove(&key).unwrap_or(false);
        if !matches!(reply, StoreReply::Offline(OfflineStored::Stored(_))) {
            // In the session's hands (or routed again below) from now on.
            self.net_delivered(inbox);
        }
        if let StoreReply::Offline(OfflineStored::Stored(_)) = reply {
            if orphaned {
                if let Some((c, _)) = self
                    .available_resources(&bare)
                    .into_iter()
                    .find(|&(_, p)| p >= 0)
                {
                    self.deliver_offline(c, &bare);
                }
            }
            return;
        }
        if let Some(entry) = archive {
            let mut buf = Vec::with_capacity(256);
            el.write_to(&mut buf, ns::CLIENT);
            self.archive_delivered(&bare, entry, &buf);
        }
        if orphaned {
            return self.route(el);
        }
        // Still in the session (or acknowledged already: then nothing is marked).
        if let Some(s) = session.and_then(|c| self.conns.get_mut(&c)?.session.as_mut()) {
            s.outbox.not_stored(key);
            if let Some(sm) = s.sm.as_mut() {
                sm.not_stored(key);
            }
        }
    }

    /// Loads the account's offline messages for delivery to `conn`, unless
    /// they are being loaded or delivered already (to this session or
    /// another of the account: they stay stored until taken, and would come
    /// twice).
    pub(super) fn deliver_offline(&mut self, conn: ConnId, bare: &BareJid) {
        if self.offline_in_hand(bare) {
            return;
        }
        let Some(acc) = self.sm.accounts.get_mut(bare) else {
            return;
        };
        if acc.offline_loading {
            return;
        }
        acc.offline_loading = true;
        self.fx.store(
            Pending::LoadOffline {
                conn,
                bare: bare.clone(),
            },
            StoreRequest::LoadOffline {
                username: username(bare),
            },
        );
    }

    /// The stored messages that sessions of `bare` hold (as
    /// [`Handed::Offline`] or [`Handed::InFlight`]): to be written, written
    /// and not taken, or taken and not acknowledged.
    fn offline_held(&self, bare: &BareJid) -> Vec<Handed> {
        let mut held = Vec::new();
        for c in self.sm.sessions_of(bare) {
            let Some(s) = self.conns.get(&c).and_then(|c| c.session.as_ref()) else {
                continue;
            };
            held.extend(s.offline.iter().map(|m| Handed::Offline(m.id)));
            held.extend(s.outbox.handed());
            if let Some(sm) = &s.sm {
                held.extend(sm.unacked.iter().filter_map(|u| u.what));
            }
        }
        held.retain(|h| matches!(h, Handed::Offline(_) | Handed::InFlight(_)));
        held
    }

    /// Whether a session of `bare` holds offline messages: waiting to be
    /// written, or written and not taken.
    fn offline_in_hand(&self, bare: &BareJid) -> bool {
        self.sm.sessions_of(bare).iter().any(|c| {
            self.conns
                .get(c)
                .and_then(|c| c.session.as_ref())
                .is_some_and(|s| !s.offline.is_empty() || s.outbox.holds_offline())
        })
    }

    /// The store answered with the offline messages for `conn`: they are
    /// written to the session a few at a time (as its output drains, see
    /// [`Server::feed_offline`]) and deleted from storage once taken.
    pub(crate) fn offline_loaded(&mut self, conn: ConnId, bare: BareJid, reply: StoreReply) {
        if let Some(acc) = self.sm.accounts.get_mut(&bare) {
            acc.offline_loading = false;
        }
        let StoreReply::OfflineMessages(mut messages) = reply else {
            // Logged as a store failure; the messages stay for the next login.
            return;
        };
        // Those a session holds already (in flight to it, not acknowledged).
        let held = self.offline_held(&bare);
        messages.retain(|m| {
            !held.contains(&Handed::Offline(m.id))
                && !m.key.is_some_and(|k| held.contains(&Handed::InFlight(k)))
        });
        if messages.is_empty() {
            self.maybe_evict(&bare);
            return;
        }
        // Deliver to the session that asked, or any other available one.
        let asker_available = self
            .conns
            .get(&conn)
            .and_then(|c| c.session.as_ref())
            .is_some_and(|s| s.available);
        let target = if asker_available {
            Some(conn)
        } else {
            self.available_resources(&bare)
                .into_iter()
                .find(|&(_, p)| p >= 0)
                .map(|(c, _)| c)
        };
        let Some(target) = target else {
            self.maybe_evict(&bare);
            return;
        };
        if let Some(s) = self.conns.get_mut(&target).and_then(|c| c.session.as_mut()) {
            s.offline.extend(messages);
        }
        self.feed_offline(target);
        self.maybe_evict(&bare);
    }

    /// Writes waiting offline messages to `conn` while its output is under
    /// the budget; the rest follow as the runtime takes the output. The
    /// output budget bounds what a session holds, however many are stored.
    pub(crate) fn feed_offline(&mut self, conn: ConnId) {
        let budget = self.config.limits.output_budget;
        let mut unreadable = Vec::new();
        while let Some(c) = self.conns.get_mut(&conn) {
            if c.stream.pending_output() >= budget {
                break;
            }
            let Some(s) = c.session.as_mut() else {
                break;
            };
            let Some(OfflineMessage {
                id, stanza, stamp, ..
            }) = s.offline.pop_front()
            else {
                break;
            };
            let Some(mut el) = crate::xml::parse_fragment(&stanza, &self.config.limits) else {
                log::warn!("{}: dropping an unreadable offline message {id}", s.jid);
                unreadable.push(id);
                continue;
            };
            el.children.push(Node::Element(
                Element::new(ns::DELAY, "delay")
                    .with_attr("from", self.domain.as_str())
                    .with_attr("stamp", &rfc3339(stamp))
                    .with_text("Offline storage"),
            ));
            let mut buf = Vec::with_capacity(stanza.len() + 128);
            el.write_to(&mut buf, ns::CLIENT);
            self.hand(conn, &buf, Handed::Offline(id));
        }
        if let (false, Some(bare)) = (unreadable.is_empty(), self.full_jid(conn)) {
            self.fx.store(
                Pending::Ignore("they stay stored and are skipped again at the next login"),
                StoreRequest::DeleteOffline {
                    username: username(&bare.bare()),
                    ids: unreadable,
                },
            );
        }
    }
}
