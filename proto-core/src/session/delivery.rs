//! Sessions and delivery: a session's binding and its end, the table of
//! bound resources, stanzas from a session on their way out, stanzas to a
//! local account on their way in, and the delivery rules of RFC 6121
//! section 8.5 for messages.

use jid::{BareJid, FullJid, Jid};

use super::archive;
use super::carbons::{self, Side};
use super::offline::storable;
use super::outbox::Handed;
use super::{Session, SessionEvent, Waiting};
use crate::address::Bare;
use crate::effects::Pending;
use crate::error::{error_reply, StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::router::Route;
use crate::server::{ConnId, PeerSet, Server};
use crate::stanza::{iq_result, IqType, StanzaKind};
use crate::store::StoreRequest;
use crate::timer::TimerKind;
use crate::xml::Element;

impl Server {
    // ------------------------------------------------------------ sessions

    /// The session bound to `full`, if any.
    pub(crate) fn find_session(&self, full: &FullJid) -> Option<ConnId> {
        let bare = full.bare();
        self.sm
            .sessions
            .get(&bare)?
            .iter()
            .copied()
            .find(|c| self.conns.get(c).and_then(|c| c.jid()) == Some(full))
    }

    /// Available resources of a local account, with their priorities.
    pub(crate) fn available_resources(&self, bare: &BareJid) -> Vec<(ConnId, i8)> {
        self.sm
            .sessions
            .get(bare)
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        let s = self.conns.get(c)?.session.as_ref()?;
                        s.available.then_some((*c, s.priority))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The full JID bound on `conn`.
    pub(crate) fn full_jid(&self, conn: ConnId) -> Option<FullJid> {
        self.conns.get(&conn).and_then(|c| c.jid().cloned())
    }

    /// The session of a full JID, if `jid` is one.
    pub(super) fn full_jid_conn(&self, jid: &Jid) -> Option<ConnId> {
        let full = jid.clone().try_into_full().ok()?;
        self.find_session(&full)
    }

    /// The sessions a stanza to `to` reaches: the one resource of a full
    /// JID, or every available resource of a bare one.
    pub(super) fn addressed_sessions(&self, to: &Jid) -> Vec<ConnId> {
        match to.clone().try_into_full() {
            Ok(full) => self.find_session(&full).into_iter().collect(),
            Err(b) => self
                .available_resources(&b)
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
        }
    }

    // -------------------------------------------------------------- binding

    /// C2S bound `full` on `conn`: a second login with the same resource
    /// replaces the old session, and the result goes out once the
    /// account's roster and block list are in memory.
    pub(crate) fn bind_session(&mut self, conn: ConnId, full: FullJid, iq: Element) {
        if let Some(old) = self.find_session(&full) {
            log::info!("{full}: resource replaced by a new login");
            self.fail(
                old,
                XE::Conflict,
                Some("replaced by a new login with the same resource"),
            );
        }
        let bare = full.bare();
        let ping_interval = self.config.limits.ping_interval;
        let bound_at = self.clock.unix_now();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.session = Some(Session {
            jid: full,
            bound_at,
            available: false,
            priority: 0,
            directed: PeerSet::with_hasher(self.keyed.clone()),
            last_presence: None,
            roster_requested: false,
            blocklist_requested: false,
            carbons: false,
            inactive: false,
            held_presence: Vec::new(),
            sm: None,
            outbox: Default::default(),
            withdrawn: Vec::new(),
            offline: Default::default(),
        });
        if c.ping_sent.is_none() {
            c.timers
                .set(TimerKind::Ping, Some(c.last_input + ping_interval));
        }
        self.sm.sessions.entry(bare.clone()).or_default().push(conn);
        self.with_account(&bare, Waiting::Bind { conn, iq });
    }

    pub(super) fn finish_bind(&mut self, conn: ConnId, bare: &BareJid, iq: &Element) {
        if !self.sm.account(bare).is_some_and(|a| a.exists) {
            self.fail(
                conn,
                XE::NotAuthorized,
                Some("the account no longer exists"),
            );
            return;
        }
        let Some(full) = self.full_jid(conn) else {
            return;
        };
        let reply = iq_result(iq).with_child(
            Element::new(ns::BIND, "bind")
                .with_child(Element::new(ns::BIND, "jid").with_text(full.as_str())),
        );
        self.send_stanza(conn, &reply);
    }

    /// An event of a session's connection.
    pub(crate) fn on_session_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Ended { conn, session } => self.session_ended(conn, session),
        }
    }

    /// A connection with a bound session ended: the session leaves the
    /// table, its presence goes unavailable, and the last activity of an
    /// account with no session left is stored.
    fn session_ended(&mut self, id: ConnId, session: Session) {
        let Session {
            jid,
            available,
            directed,
            last_presence,
            mut withdrawn,
            sm,
            ..
        } = session;
        // What a client with stream management did not acknowledge goes
        // where the withdrawn stanzas go.
        if let Some(sm) = sm {
            if let Some(rid) = &sm.id {
                self.sm.resumable.remove(rid);
            }
            withdrawn.extend(
                sm.unacked
                    .into_iter()
                    .filter_map(|u| u.what.map(|w| (w, u.bytes))),
            );
        }
        let bare = jid.bare();
        if let Some(list) = self.sm.sessions.get_mut(&bare) {
            list.retain(|c| *c != id);
            if list.is_empty() {
                self.sm.sessions.remove(&bare);
            }
        }
        self.redeliver(&bare, withdrawn);
        // The status of the session's last unavailable presence, as Prosody
        // and ejabberd keep it (none when the connection just went away).
        let status = last_presence
            .as_ref()
            .filter(|p| p.attr("type") == Some("unavailable"))
            .and_then(|p| p.child(ns::CLIENT, "status"))
            .map(|s| s.text())
            .unwrap_or_default();
        if available || !directed.is_empty() {
            let unavailable = Element::new(ns::CLIENT, "presence")
                .with_attr("from", jid.as_str())
                .with_attr("type", "unavailable");
            // Nothing back to the session: it is gone.
            self.broadcast_presence(&jid, &unavailable, &directed, available, false);
        }
        if !self.sm.sessions.contains_key(&bare) {
            if let (Some(node), Some(at)) = (bare.node(), self.clock.unix_now()) {
                self.fx.store(
                    Pending::Ignore("the account's last activity stays what it was"),
                    StoreRequest::SetLastActivity {
                        username: node.as_str().to_owned(),
                        at,
                        status,
                    },
                );
            }
        }
        self.maybe_evict(&bare);
    }

    // ------------------------------------------------------------ outbound

    /// A stanza from a bound session, `from` already stamped.
    pub(crate) fn on_client_stanza(&mut self, conn: ConnId, el: Element) {
        let Some(bare) = self.full_jid(conn).map(|j| j.bare()) else {
            return;
        };
        self.with_account(&bare, Waiting::Outbound { conn, el });
    }

    pub(super) fn outbound(&mut self, conn: ConnId, el: Element) {
        let Some(sender) = self.full_jid(conn) else {
            return;
        };
        if let Some(sm) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.session.as_mut()?.sm.as_mut())
        {
            sm.handled = sm.handled.wrapping_add(1);
        }
        let to = el.attr("to").and_then(|t| self.jids.parse(t).ok());
        let bare = sender.bare();
        match StanzaKind::of(&el) {
            Some(StanzaKind::Message) => {
                let to = to.unwrap_or_else(|| Jid::from(bare.clone()));
                match crate::kontalk::services::service_of(&to, self.domain.as_str()) {
                    Some(crate::kontalk::services::Service::Multicast) => {
                        self.multicast(conn, &sender, el)
                    }
                    _ => self.outbound_message(conn, &sender, to, el),
                }
            }
            Some(StanzaKind::Presence) => self.outbound_presence(conn, &sender, to, el),
            Some(StanzaKind::Iq) => {
                let valid = match IqType::of(&el) {
                    Some(IqType::Get | IqType::Set) => {
                        el.attr("id").is_some() && el.elements().count() == 1
                    }
                    Some(IqType::Result) => el.attr("id").is_some() && el.elements().count() <= 1,
                    Some(IqType::Error) => el.attr("id").is_some(),
                    None => false,
                };
                if !valid {
                    return self.reply_error(conn, &el, SE::BadRequest, None);
                }
                self.outbound_iq(conn, &sender, to, el);
            }
            None => {}
        }
    }

    /// A message from a session to `to`: refused when `to` is blocked,
    /// archived, copied to the sender's other devices, routed.
    pub(crate) fn outbound_message(
        &mut self,
        conn: ConnId,
        sender: &jid::FullJid,
        to: Jid,
        mut el: Element,
    ) {
        let bare = sender.bare();
        if self.outbound_blocked(conn, &bare, &to, &el) {
            return;
        }
        el.set_attr("to", Some(to.as_str()));
        archive::drop_claimed_ids(&mut el, &to.bare());
        let archived = self.archive_sent(sender, &to, &el);
        if carbons::eligible(&el) {
            self.carbon_copies(&bare, &[conn], &el, Side::Sent, archived.as_deref());
        }
        self.route(el);
    }

    // ------------------------------------------------------------- routing

    /// Routes a stanza whose `from` is stamped and `to` is set, where the
    /// router says.
    pub(crate) fn route(&mut self, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| self.jids.parse(t).ok()) else {
            return;
        };
        match self.router.route(&to) {
            Route::Local => match self.net_home_of(&to) {
                Some(peer) => self.net_route(peer, el),
                None => self.inbound(to, el, None),
            },
            Route::Net(peer) => self.net_route(peer, el),
            Route::Upload => self.upload_routed(&el),
            Route::S2s(domain) if self.s2s.refused(&domain) => {
                self.bounce_routed(&el, SE::NotAllowed)
            }
            Route::S2s(domain) => match self.clock.now() {
                Some(now) => self.s2s_send(now, domain, el),
                // (Never: every call that routes has ticked the clock.)
                None => self.bounce_routed(&el, SE::InternalServerError),
            },
            Route::Bounce(cond) => self.bounce_routed(&el, cond),
        }
    }

    /// Whether `jid` is of this server: its domain, and not a user whose
    /// home is another server of the network.
    pub(crate) fn is_local(&self, jid: &Jid) -> bool {
        self.router.route(jid) == Route::Local && self.net_home_of(jid).is_none()
    }

    /// Sends an error for a routed stanza back to its sender (never for an error).
    pub(crate) fn bounce_routed(&mut self, el: &Element, cond: SE) {
        if let Some(reply) = error_reply(el, cond, None) {
            self.route(reply);
        }
    }

    /// A stanza to a local account, or to the server itself; `inbox` is its
    /// row in the Net inbox when it came from another server of the network.
    pub(crate) fn inbound(&mut self, to: Jid, el: Element, inbox: Option<i64>) {
        if to.node().is_none() {
            // To the server itself, from another server's entity (its
            // own sessions' iqs are answered where they come in).
            let request = IqType::of(&el).is_some_and(IqType::is_request);
            match StanzaKind::of(&el) {
                Some(StanzaKind::Message) => self.bounce_routed(&el, SE::ServiceUnavailable),
                Some(StanzaKind::Iq) if request && to.resource().is_none() => {
                    self.routed_server_iq(&el)
                }
                Some(StanzaKind::Iq) if request => self.bounce_routed(&el, SE::ServiceUnavailable),
                _ => {}
            }
            return self.net_delivered(inbox);
        }
        let bare = to.bare();
        self.with_account(
            &bare,
            Waiting::Inbound {
                el,
                origin: None,
                inbox,
            },
        );
    }

    pub(super) fn inbound_ready(&mut self, bare: &BareJid, el: Element, inbox: Option<i64>) {
        let to = el.attr("to").and_then(|t| self.jids.parse(t).ok());
        let from = el.attr("from").and_then(|t| self.jids.parse(t).ok());
        let (Some(to), Some(from)) = (to, from) else {
            return self.net_delivered(inbox);
        };
        let kind = StanzaKind::of(&el);
        let request = IqType::of(&el).is_some_and(IqType::is_request);
        let (exists, blocked) = match self.sm.account(bare) {
            Some(a) => (a.exists, super::blocking::is_blocked(&a.blocklist, &from)),
            None => return self.net_delivered(inbox),
        };
        if !exists {
            match kind {
                Some(StanzaKind::Message) => self.bounce_routed(&el, SE::ServiceUnavailable),
                Some(StanzaKind::Iq) if request => self.bounce_routed(&el, SE::ServiceUnavailable),
                // RFC 6121 3.1.3 and 4.3.2: a request or a probe to a
                // missing contact is answered `unsubscribed`.
                Some(StanzaKind::Presence)
                    if matches!(el.attr("type"), Some("subscribe" | "probe")) =>
                {
                    self.unsubscribed_to(bare, &from.bare());
                }
                _ => {}
            }
            self.net_delivered(inbox);
            self.maybe_evict(bare);
            return;
        }
        if blocked {
            // XEP-0191 3.4: nothing from a blocked entity reaches the user.
            match kind {
                Some(StanzaKind::Message) => self.bounce_routed(&el, SE::ServiceUnavailable),
                Some(StanzaKind::Iq) if request => self.bounce_routed(&el, SE::ServiceUnavailable),
                _ => {}
            }
            return self.net_delivered(inbox);
        }
        match kind {
            Some(StanzaKind::Message) => return self.deliver_message(bare, &to, &from, el, inbox),
            Some(StanzaKind::Presence) => self.inbound_presence(bare, &to, &from, el),
            Some(StanzaKind::Iq) => self.inbound_iq(bare, &to, &from, el),
            None => {}
        }
        // After what it asked of the store (a roster change), so that a
        // crash in between delivers it again rather than never.
        self.net_delivered(inbox);
    }

    /// Hands a message from `from` to `targets`, sessions of `bare`, with
    /// its archive copy and the carbons for the account's other resources.
    /// One session with stream management gets it stored until the client
    /// acknowledges it.
    fn deliver_to(
        &mut self,
        bare: &BareJid,
        from: &Jid,
        targets: &[ConnId],
        mut el: Element,
        inbox: Option<i64>,
    ) {
        let archived = self.archive_received(bare, from, &mut el);
        if carbons::eligible(&el) {
            self.carbon_copies(bare, targets, &el, Side::Received, None);
        }
        if let [one] = *targets {
            if let (true, Some(full)) = (self.stored_until_acked(one, &el), self.full_jid(one)) {
                return self.store_in_flight(one, full, el, archived, inbox);
            }
        }
        let mut buf = Vec::with_capacity(256);
        el.write_to(&mut buf, ns::CLIENT);
        let what = if targets.len() > 1 {
            Handed::SharedMessage
        } else {
            Handed::Message
        };
        for &c in targets {
            self.hand(c, &buf, what);
        }
        if let Some(entry) = archived {
            self.archive_delivered(bare, entry, &buf);
        }
        self.net_delivered(inbox);
    }

    /// RFC 6121 section 8.5 for messages, with offline storage and the
    /// recipient's archive copy.
    fn deliver_message(
        &mut self,
        bare: &BareJid,
        to: &Jid,
        from: &Jid,
        mut el: Element,
        inbox: Option<i64>,
    ) {
        let ty = el.attr("type").unwrap_or("normal").to_owned();
        if let Ok(full) = to.clone().try_into_full() {
            if let Some(target) = self.find_session(&full) {
                return self.deliver_to(bare, from, &[target], el, inbox);
            }
            // RFC 6121 8.5.3.2.1: no such resource.
            match ty.as_str() {
                "chat" | "normal" => {}
                "groupchat" => {
                    self.bounce_routed(&el, SE::ServiceUnavailable);
                    return self.net_delivered(inbox);
                }
                _ => return self.net_delivered(inbox),
            }
        }
        match ty.as_str() {
            "error" => self.net_delivered(inbox),
            "groupchat" => {
                self.bounce_routed(&el, SE::ServiceUnavailable);
                self.net_delivered(inbox);
            }
            t => {
                // RFC 6121 8.5.2.1: a headline to every available resource
                // with non-negative priority; chat and normal to the "most
                // available" ones, those of the highest non-negative
                // priority, as Prosody and ejabberd do (the others get
                // their copy through carbons).
                let mut targets = self.available_resources(bare);
                targets.retain(|&(_, p)| p >= 0);
                if t != "headline" {
                    let top = targets.iter().map(|&(_, p)| p).max();
                    targets.retain(|&(_, p)| Some(p) == top);
                }
                let targets: Vec<ConnId> = targets.into_iter().map(|(c, _)| c).collect();
                if !targets.is_empty() {
                    self.deliver_to(bare, from, &targets, el, inbox);
                } else if t != "headline" && storable(&el) {
                    let archived = self.archive_received(bare, from, &mut el);
                    self.store_offline(bare, el, archived, inbox);
                } else {
                    self.net_delivered(inbox);
                }
                // Headlines and content-less messages (chat states) to an
                // offline user are dropped silently (XEP-0160, XEP-0085).
            }
        }
    }
}
