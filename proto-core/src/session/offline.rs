//! Offline storage (XEP-0160): messages for an account with no available
//! resource are stored, and delivered with a delay stamp (XEP-0203) when
//! a session of the account sends its initial presence.

use jid::BareJid;

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

/// Whether a message is worth storing for an offline recipient (XEP-0160):
/// `normal` or `chat` with content other than chat states.
pub(super) fn storable(el: &Element) -> bool {
    matches!(el.attr("type").unwrap_or("normal"), "normal" | "chat")
        && el
            .elements()
            .any(|c| c.ns != ns::CHATSTATES && !(c.ns == ns::CLIENT && c.name == "thread"))
}

impl Server {
    /// Stores `el` for `bare`, and `archive` (its archive copy) with it.
    pub(super) fn store_offline(
        &mut self,
        bare: &BareJid,
        el: Element,
        archive: Option<ArchiveEntry>,
    ) {
        let (Some(node), Some(stamp)) = (bare.node(), self.clock.unix_now()) else {
            return self.bounce_routed(&el, SE::ServiceUnavailable);
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
        };
        self.fx.store(Pending::StoreOffline(el), request);
    }

    /// The store answered: the message is stored, or its sender hears why not.
    pub(crate) fn offline_stored(&mut self, el: Element, reply: StoreReply) {
        match reply {
            StoreReply::Offline(OfflineStored::Stored) => self.counters.offline_stored += 1,
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
        let StoreReply::OfflineMessages(messages) = reply else {
            // Logged as a store failure; the messages stay for the next login.
            return;
        };
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
            let Some(OfflineMessage { id, stanza, stamp }) = s.offline.pop_front() else {
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
