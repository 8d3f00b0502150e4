//! Stanzas between the servers of the network, each delivered once.
//!
//! ## The origin: kept until the home has it
//!
//! A stanza for a user whose home is another server of the network (the
//! directory says which), or for another host of the network, is kept in
//! the origin's store first ([`StoreRequest::NetQueue`]), which numbers it
//! (never the same number twice). The sender's XEP-0198 ack waits for that
//! as for any storage. Once kept it goes on the link, wrapped with its
//! number, `<s xmlns='urn:kontalk:net:0' seq='N'><message xmlns='jabber:client' …/></s>`,
//! straight away when the link is up and has sent everything before it,
//! otherwise read back from the store, oldest first, in batches of
//! [`OUTBOX_BATCH`] that flow only while the link's output is under half
//! its budget. It is deleted only when the home says `<a seq='N'/>`:
//! everything numbered up to N on this link is durable there. A new link
//! sends again what is still kept, from the oldest. At most
//! [`OUTBOX_LIMIT`] wait for one server: beyond, a stanza is answered
//! `resource-constraint` (RFC 6120 section 8.3.3.18).
//!
//! While the link is down, messages and presence subscriptions are kept for
//! later; an iq request is answered `remote-server-timeout` at once (RFC
//! 6120 section 8.3.3.15) and other presence is not kept (it is only
//! ever the current one: the next broadcast or probe brings it).
//!
//! ## The home: durable before the ack, delivered once
//!
//! The home keeps each `<s/>` in its inbox, with N as the last number
//! durable from the origin, in one transaction
//! ([`StoreRequest::NetReceive`]); a number at or below the last one is a
//! repeat, acknowledged and dropped; and one whose predecessor on the link
//! is not durable (its storage failed) is not kept either, lest it pass for
//! the last and the predecessor, sent again, for a repeat. Numbers are of
//! the origin's outbox epoch (`mine` in its `<sync/>`): a server whose database was lost starts
//! its numbers over, and the home takes them as new. Only then the ack goes
//! out (one for all that the store made durable at once), and the stanza goes to the session manager as one from a local
//! user would; it leaves the inbox with the delivery: in the same
//! transaction as its offline storage, or right after it was handed to a
//! session or answered. What a crash leaves in the inbox is delivered at
//! the next start, before what comes meanwhile (which waits, and the links
//! are not read while [`RECEIVING`] wait so). A link is not read while
//! [`RECEIVING`] of its stanzas wait in the store.
//!
//! The home checks that the sender is a user the directory does not place
//! on another server, the origin's host, or of a foreign domain (the origin
//! took it from a federation stream); anything else is dropped.

use jid::Jid;

use crate::effects::Pending;
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{IqType, StanzaKind};
use crate::store::{NetReceived, StoreReply, StoreRequest};
use crate::xml::Element;

use super::State;

/// Stanzas read from the outbox at once.
pub const OUTBOX_BATCH: u32 = 100;
/// Stanzas kept for one server at most (while it is away): beyond, a
/// message is answered `resource-constraint`, as a full offline storage is.
pub const OUTBOX_LIMIT: u32 = 100_000;
/// A link's stanzas waiting in the store at most: beyond, it is not read.
pub(super) const RECEIVING: usize = 64;

/// What a link sends of the outbox.
#[derive(Debug, Default)]
pub(crate) struct Out {
    /// The last number written on the link.
    sent: u64,
    /// Everything kept has been written: new stanzas go straight out.
    caught_up: bool,
    /// A read of the outbox is in flight.
    asking: bool,
    /// The deletion of what the peer acknowledged up to this number failed:
    /// tried again at the next timeout.
    delete_failed: Option<u64>,
}

/// What waits on a store request of the handover.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A stanza kept for server `peer`, serialized as it goes on the link
    /// (the element answers the sender if it cannot be kept).
    Queued {
        peer: usize,
        el: Element,
        stanza: String,
    },
    /// The outbox read for a link.
    Outbox { link: ConnId },
    /// A stanza from server `peer`, numbered `seq`, kept in the inbox.
    Received {
        link: ConnId,
        peer: usize,
        seq: u64,
        el: Element,
    },
    /// What server `peer` acknowledged on `link`, deleted.
    Acked { link: ConnId, upto: u64 },
    /// The inbox at start.
    Inbox,
}

impl Waiting {
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Queued { .. } => "the sender got internal-server-error",
            Waiting::Outbox { .. } => "the link ends; the next one reads the outbox again",
            Waiting::Received { .. } => {
                "the link ends without the ack; the other server sends it again"
            }
            Waiting::Acked { .. } => "tried again at the next timeout",
            Waiting::Inbox => "loaded again in 5 s",
        }
    }
}

impl Server {
    /// The server of the network that is the home of `to`, a JID of the
    /// network domain, if it is not this one.
    pub(crate) fn net_home_of(&self, to: &Jid) -> Option<usize> {
        let node = to.node()?;
        let &i = self.net.dir.homes.get(node.as_str())?;
        // An account of this server (both claim it) stays here.
        let local = self.sm.account(&to.to_bare()).is_some_and(|a| a.exists);
        (!local).then_some(i)
    }

    fn link_of(&self, peer: usize) -> Option<ConnId> {
        self.net.peers[peer]
            .link
            .filter(|id| self.net.links.get(id).is_some_and(|l| l.state == State::Up))
    }

    /// Sends a stanza (`from` stamped, `to` set) to server `peer` of the
    /// network: kept until that server has it.
    pub(crate) fn net_route(&mut self, peer: usize, el: Element) {
        if self.link_of(peer).is_none() && !crate::stanza::worth_keeping(&el) {
            if IqType::of(&el).is_some_and(IqType::is_request) {
                self.bounce_routed(&el, SE::RemoteServerTimeout);
            }
            return;
        }
        let dest = self.net.peers[peer].host.clone();
        // `xmlns='jabber:client'` written out: it travels inside `<s/>`.
        let stanza = el.to_xml(ns::SERVER);
        self.fx.store(
            Pending::Net(super::Waiting::Handover(Waiting::Queued {
                peer,
                el,
                stanza: stanza.clone(),
            })),
            StoreRequest::NetQueue {
                dest,
                stanza,
                limit: OUTBOX_LIMIT,
            },
        );
    }

    /// The link came up (and the directory is loaded): what the outbox
    /// keeps for its peer goes out, oldest first.
    pub(super) fn out_start(&mut self, id: ConnId) {
        if let Some(link) = self.net.links.get_mut(&id) {
            link.out = Some(Out::default());
            self.out_ask(id);
        }
    }

    /// Reads the next stanzas of the outbox for the link, unless a read is
    /// in flight, it is caught up, or its output is over half its budget
    /// (then once it drains: called again when the link's output is taken).
    pub(super) fn out_ask(&mut self, id: ConnId) {
        let half = self.config.limits.output_budget / 2;
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        let pending = link.stream.pending_output();
        let (Some(out), Some(peer)) = (link.out.as_mut(), link.peer) else {
            return;
        };
        if out.asking || out.caught_up || pending > half {
            return;
        }
        out.asking = true;
        let after = out.sent;
        let dest = self.net.peers[peer].host.clone();
        self.fx.store(
            Pending::Net(super::Waiting::Handover(Waiting::Outbox { link: id })),
            StoreRequest::NetOutbox {
                dest,
                after,
                limit: OUTBOX_BATCH,
            },
        );
    }

    /// Writes one kept stanza on the link.
    fn out_write(&mut self, now: std::time::Instant, id: ConnId, seq: u64, stanza: &str) {
        let mut bytes = Vec::with_capacity(stanza.len() + 48);
        bytes.extend_from_slice(b"<s xmlns='");
        bytes.extend_from_slice(ns::NET.as_bytes());
        bytes.extend_from_slice(format!("' seq='{seq}'>").as_bytes());
        bytes.extend_from_slice(stanza.as_bytes());
        bytes.extend_from_slice(b"</s>");
        if let Some(out) = self.net.links.get_mut(&id).and_then(|l| l.out.as_mut()) {
            out.sent = seq;
        }
        log::trace!("net: {} sends {seq} on {id:?}", self.net.host);
        self.link_write(now, id, &bytes);
    }

    /// A stanza from server `peer`: kept in the inbox, then acknowledged
    /// and delivered.
    pub(super) fn net_receive(
        &mut self,
        now: std::time::Instant,
        id: ConnId,
        peer: usize,
        el: &Element,
    ) {
        let seq = el.attr("seq").and_then(|s| s.parse::<u64>().ok());
        let mut children = el.elements();
        let (Some(seq), Some(stanza), None) = (seq, children.next(), children.next()) else {
            return self.link_fail(now, id, XE::BadFormat, "a stanza without its number");
        };
        if stanza.ns != ns::CLIENT || StanzaKind::of(stanza).is_none() {
            return self.link_fail(now, id, XE::BadFormat, "not a stanza of jabber:client");
        }
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        let Some(epoch) = link.peer_epoch.clone() else {
            return self.link_fail(now, id, XE::BadFormat, "a stanza before the sync");
        };
        link.receiving += 1;
        let prev = link.last_received.replace(seq);
        log::trace!(
            "net: {} got {seq} (after {prev:?}) on {id:?}",
            self.net.host
        );
        let origin = self.net.peers[peer].host.clone();
        let text = stanza.to_xml(ns::CLIENT);
        self.fx.store(
            Pending::Net(super::Waiting::Handover(Waiting::Received {
                link: id,
                peer,
                seq,
                el: stanza.clone(),
            })),
            StoreRequest::NetReceive {
                origin,
                epoch,
                seq,
                prev,
                stanza: text,
            },
        );
    }

    /// `seq` from the link is durable: one `<a/>` goes out with the link's
    /// next output, for every stanza made durable until then (the store
    /// answers a batch at once: one ack for all of it).
    fn ack_due(&mut self, id: ConnId, seq: u64) {
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        link.ack_due = Some(link.ack_due.map_or(seq, |s| s.max(seq)));
        if !link.transmit_queued {
            link.transmit_queued = true;
            self.fx.push(crate::Event::Transmit(id));
        }
    }

    /// The ack due on a link, written as its output is taken.
    pub(super) fn ack_flush(&mut self, id: ConnId) {
        let now = self.clock.now();
        let Some(seq) = self.net.links.get_mut(&id).and_then(|l| l.ack_due.take()) else {
            return;
        };
        let ack = Element::new(ns::NET, "a").with_attr("seq", &seq.to_string());
        let bytes = ack.to_xml(ns::SERVER);
        if let Some(link) = self.net.links.get_mut(&id) {
            link.stream.write(bytes.as_bytes());
            link.last_output = now.unwrap_or(link.last_output);
        }
    }

    /// `<a seq/>`: the peer has everything numbered up to `seq` that this
    /// link sent durable.
    pub(super) fn net_ack(
        &mut self,
        now: std::time::Instant,
        id: ConnId,
        peer: usize,
        el: &Element,
    ) {
        let seq = el.attr("seq").and_then(|s| s.parse::<u64>().ok());
        let sent = self
            .net
            .links
            .get(&id)
            .and_then(|l| l.out.as_ref())
            .map_or(0, |o| o.sent);
        let Some(seq) = seq.filter(|&s| s <= sent) else {
            return self.link_fail(now, id, XE::BadFormat, "an ack of nothing sent");
        };
        log::trace!("net: {} has {seq} acknowledged on {id:?}", self.net.host);
        self.out_delete(id, peer, seq);
    }

    fn out_delete(&mut self, link: ConnId, peer: usize, upto: u64) {
        let dest = self.net.peers[peer].host.clone();
        self.fx.store(
            Pending::Net(super::Waiting::Handover(Waiting::Acked { link, upto })),
            StoreRequest::NetAcked { dest, upto },
        );
    }

    /// A deletion that failed is tried again (from the link's timeout).
    pub(super) fn out_retry(&mut self, id: ConnId) {
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        let (Some(peer), Some(upto)) = (
            link.peer,
            link.out.as_mut().and_then(|o| o.delete_failed.take()),
        ) else {
            return;
        };
        self.out_delete(id, peer, upto);
    }

    /// A stanza of the inbox is delivered (or answered): it leaves it.
    pub(crate) fn net_delivered(&mut self, inbox: Option<i64>) {
        if let Some(id) = inbox {
            self.fx.store(
                Pending::Ignore("it is delivered again at the next start"),
                StoreRequest::NetDelivered { ids: vec![id] },
            );
        }
    }

    /// Loads the inbox (at start, with the directory).
    pub(super) fn inbox_load(&mut self) {
        let n = &mut self.net;
        if n.inbox_loaded || n.inbox_loading {
            return;
        }
        n.inbox_loading = true;
        self.fx.store(
            Pending::Net(super::Waiting::Handover(Waiting::Inbox)),
            StoreRequest::LoadNetInbox,
        );
    }

    /// A stanza of the inbox (from server `origin`, if it is still in the
    /// list) goes to the session manager.
    fn net_deliver(&mut self, origin: Option<usize>, inbox: i64, el: Element) {
        log::trace!(
            "net: {} delivers {inbox} {:?}",
            self.net.host,
            el.attr("id")
        );
        let from = el.attr("from").and_then(|f| self.jids.parse(f).ok());
        let to = el.attr("to").and_then(|t| self.jids.parse(t).ok());
        let (Some(from), Some(to)) = (from, to) else {
            return self.net_delivered(Some(inbox));
        };
        if let Some(o) = origin {
            let host = &self.net.peers[o].host;
            let domain = from.domain().as_str();
            let theirs = if domain == self.domain.as_str() {
                from.node()
                    .is_some_and(|n| self.net.dir.homes.get(n.as_str()).is_none_or(|&h| h == o))
            } else if domain == host.as_str() {
                true
            } else {
                // A foreign domain, whose stanza the origin took on a
                // federation stream it authenticated (a foreign server
                // reaches the network through any of its servers); never
                // one of the network's hosts speaking for another.
                domain != self.net.host && !self.net.peers.iter().any(|p| p.host == domain)
            };
            if !theirs {
                log::warn!("net: {host} sent a stanza from {from}, who is not its user; dropped");
                return self.net_delivered(Some(inbox));
            }
        }
        if to.domain().as_str() != self.domain.as_str() {
            if IqType::of(&el).is_some_and(IqType::is_request)
                || StanzaKind::of(&el) == Some(StanzaKind::Message)
            {
                self.bounce_routed(&el, SE::ServiceUnavailable);
            }
            return self.net_delivered(Some(inbox));
        }
        self.inbound(to, el, Some(inbox));
    }

    /// A store request of the handover was answered.
    pub(super) fn handover_stored(
        &mut self,
        now: std::time::Instant,
        w: Waiting,
        reply: StoreReply,
    ) {
        match (w, reply) {
            (Waiting::Queued { peer, el, .. }, StoreReply::NetQueued(None)) => {
                log::warn!(
                    "net: {OUTBOX_LIMIT} stanzas wait for {} already; refused one",
                    self.net.peers[peer].host
                );
                self.bounce_routed(&el, SE::ResourceConstraint);
            }
            (Waiting::Queued { peer, el, stanza }, StoreReply::NetQueued(Some(seq))) => {
                log::trace!("net: {} keeps {seq} {:?}", self.net.host, el.attr("id"));
                let half = self.config.limits.output_budget / 2;
                let Some(id) = self.link_of(peer) else {
                    return;
                };
                let Some(link) = self.net.links.get_mut(&id) else {
                    return;
                };
                let pending = link.stream.pending_output();
                let Some(out) = link.out.as_mut() else {
                    return;
                };
                if out.caught_up && !out.asking && pending <= half && seq > out.sent {
                    self.out_write(now, id, seq, &stanza);
                } else {
                    out.caught_up = false;
                    self.out_ask(id);
                }
            }
            (Waiting::Queued { el, .. }, _) => self.bounce_routed(&el, SE::InternalServerError),
            (Waiting::Outbox { link }, StoreReply::NetOutbox(rows)) => {
                let Some(out) = self.net.links.get_mut(&link).and_then(|l| l.out.as_mut()) else {
                    return;
                };
                out.asking = false;
                out.caught_up = rows.len() < OUTBOX_BATCH as usize;
                let sent = out.sent;
                log::trace!(
                    "net: {} read {} of the outbox after {sent}",
                    self.net.host,
                    rows.len()
                );
                for (seq, stanza) in rows.into_iter().filter(|(s, _)| *s > sent) {
                    self.out_write(now, link, seq, &stanza);
                }
                self.out_ask(link);
            }
            (Waiting::Outbox { link }, _) => self.link_fail(
                now,
                link,
                XE::UndefinedCondition,
                "the outbox cannot be read",
            ),
            (
                Waiting::Received {
                    link,
                    peer,
                    seq,
                    el,
                },
                reply,
            ) => {
                if let Some(l) = self.net.links.get_mut(&link) {
                    l.receiving -= 1;
                    if l.receiving + 1 == RECEIVING {
                        self.fx.push(crate::Event::Resume(link));
                    }
                }
                let inbox = match reply {
                    StoreReply::NetReceived(NetReceived::New(inbox)) => Some(inbox),
                    StoreReply::NetReceived(NetReceived::Repeat) => None,
                    // Not durable: no ack, and the link ends so that the
                    // origin sends it again, from the oldest it keeps.
                    StoreReply::NetReceived(NetReceived::Gap) => {
                        return self.link_fail(
                            now,
                            link,
                            XE::UndefinedCondition,
                            "a stanza before this one could not be stored",
                        )
                    }
                    _ => {
                        return self.link_fail(
                            now,
                            link,
                            XE::UndefinedCondition,
                            "a stanza could not be stored",
                        )
                    }
                };
                log::trace!("net: {} kept {seq} of {link:?}: {inbox:?}", self.net.host);
                self.ack_due(link, seq);
                if let Some(inbox) = inbox {
                    if self.net.inbox_loaded {
                        self.net_deliver(Some(peer), inbox, el);
                    } else {
                        // After what a crash left in the inbox: in order.
                        self.net.early.push((peer, inbox, el));
                    }
                }
            }
            (Waiting::Acked { .. }, StoreReply::Done(_)) => {}
            (Waiting::Acked { link, upto }, _) => {
                if let Some(out) = self.net.links.get_mut(&link).and_then(|l| l.out.as_mut()) {
                    out.delete_failed = Some(out.delete_failed.map_or(upto, |u| u.max(upto)));
                }
            }
            (Waiting::Inbox, StoreReply::NetInbox(rows)) => {
                self.net.inbox_loading = false;
                self.net.inbox_loaded = true;
                let early = std::mem::take(&mut self.net.early);
                let again: Vec<(i64, String, String)> = rows
                    .into_iter()
                    .filter(|r| !early.iter().any(|(_, id, _)| *id == r.0))
                    .collect();
                if !again.is_empty() {
                    log::info!(
                        "net: {} stanzas from other servers to deliver again",
                        again.len()
                    );
                }
                for (id, origin, stanza) in again {
                    let el = crate::xml::parse_fragment(&stanza, &self.config.limits);
                    let Some(el) = el else {
                        log::error!("net: a stanza of the inbox does not parse again; dropped");
                        self.net_delivered(Some(id));
                        continue;
                    };
                    let origin = self.net.peer_by_host(&origin);
                    self.net_deliver(origin, id, el);
                }
                for (peer, id, el) in early {
                    self.net_deliver(Some(peer), id, el);
                }
                // Links that waited for it are read again.
                let ids: Vec<ConnId> = self.net.links.keys().copied().collect();
                for id in ids {
                    self.fx.push(crate::Event::Resume(id));
                }
            }
            (Waiting::Inbox, _) => {
                self.net.inbox_loading = false;
                self.net.dir.retry_load = Some(now + super::directory::LOAD_RETRY);
            }
        }
    }
}
