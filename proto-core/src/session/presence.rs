//! Presence (RFC 6121 section 4): a session's broadcast and directed
//! presence, initial presence and probes, presence to local accounts.

use jid::{BareJid, FullJid, Jid};

use super::blocking::is_blocked;
use super::MAX_DIRECTED;
use crate::address::{parse_bare, parse_jid, Bare};
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::roster::SubscriptionType;
use crate::router::Route;
use crate::server::{ConnId, PeerSet, Server};
use crate::xml::Element;

impl Server {
    pub(super) fn outbound_presence(
        &mut self,
        conn: ConnId,
        sender: &FullJid,
        to: Option<Jid>,
        el: Element,
    ) {
        let ty = el.attr("type").map(str::to_owned);
        if let Some(sub) = ty.as_deref().and_then(SubscriptionType::from_type) {
            let Some(to) = to else {
                return self.reply_error(conn, &el, SE::BadRequest, None);
            };
            if self.outbound_blocked(conn, &sender.bare(), &to, &el) {
                return;
            }
            return self.outbound_subscription(conn, sender, to.bare(), sub, el);
        }
        match (to, ty.as_deref()) {
            (None, None) => {
                // Kontalk: every broadcast presence carries the sender's
                // key fingerprint (clients see key changes by it).
                let mut el = el;
                let print = self.pubkey_payload(&sender.bare(), false);
                crate::kontalk::services::set_pubkey(&mut el, print);
                let priority = el
                    .child(ns::CLIENT, "priority")
                    .and_then(|p| p.text().trim().parse::<i8>().ok())
                    .unwrap_or(0);
                let Some(s) = self.session_mut(conn) else {
                    return;
                };
                let initial = !s.available;
                // Offline messages go to a resource that may get messages
                // to the bare JID (RFC 6121 8.5.2.1.1, XEP-0160 section 4):
                // at its first presence of a priority that is not negative.
                let offline = priority >= 0 && (initial || s.priority < 0);
                s.available = true;
                s.priority = priority;
                s.last_presence = Some(el.clone());
                self.broadcast_presence(sender, &el, &PeerSet::default(), true, true);
                if initial {
                    self.initial_presence(conn, sender);
                }
                if offline {
                    self.deliver_offline(conn, &sender.bare());
                }
            }
            (None, Some("unavailable")) => {
                let keyed = self.keyed.clone();
                let Some(s) = self.session_mut(conn) else {
                    return;
                };
                let was_available = s.available;
                s.available = false;
                // Its status is the account's last activity's (XEP-0012) if
                // the session ends now; readers of a presence to answer
                // with look at available sessions only.
                s.last_presence = Some(el.clone());
                let directed = std::mem::replace(&mut s.directed, PeerSet::with_hasher(keyed));
                self.broadcast_presence(sender, &el, &directed, was_available, true);
            }
            (None, _) => {}
            (Some(to), Some("probe")) => {
                // Answered on the contact's behalf, from its roster (RFC 6121 4.3.2).
                let mut el = el;
                el.set_attr("to", Some(to.bare().as_str()));
                if !self.outbound_blocked(conn, &sender.bare(), &to, &el) {
                    self.route(el);
                }
            }
            (Some(to), ty) => {
                if self.outbound_blocked(conn, &sender.bare(), &to, &el) {
                    return;
                }
                if let Some(s) = self.session_mut(conn) {
                    match ty {
                        None if s.directed.len() < MAX_DIRECTED => {
                            s.directed.insert(to.clone());
                        }
                        // RFC 6121 4.6.3: an unavailable or error presence
                        // ends the directed presence.
                        Some("unavailable" | "error") => {
                            s.directed.remove(&to);
                        }
                        _ => {}
                    }
                }
                self.route(el);
            }
        }
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut super::Session> {
        self.conns.get_mut(&conn)?.session.as_mut()
    }

    /// The last broadcast presence of a session.
    fn last_presence(&self, conn: ConnId) -> Option<Element> {
        self.conns
            .get(&conn)?
            .session
            .as_ref()?
            .last_presence
            .clone()
    }

    /// RFC 6121 4.2.2: probes answered from memory, pending requests.
    fn initial_presence(&mut self, conn: ConnId, sender: &FullJid) {
        let bare = sender.bare();
        let Some(acc) = self.sm.account(&bare) else {
            return;
        };
        // The account's other resources (implicitly subscribed to each other).
        let mut to_send: Vec<Element> = self
            .available_resources(&bare)
            .into_iter()
            .filter(|&(c, _)| c != conn)
            .filter_map(|(c, _)| self.last_presence(c))
            .collect();
        let me = Jid::from(sender.clone());
        for item in acc.roster.values() {
            let Ok(contact) = parse_bare(&item.jid) else {
                continue;
            };
            // XEP-0191 3.3: nothing from a contact either side blocked.
            if is_blocked(&acc.blocklist, &Jid::from(contact.clone())) {
                continue;
            }
            if item.subscription.to && !self.blocks(&contact, &me) {
                for (c, _) in self.available_resources(&contact) {
                    if let Some(p) = self.last_presence(c) {
                        to_send.push(p);
                    }
                }
            }
            if item.subscription.pending_in {
                // A request that waits for an answer (RFC 6121 3.1.3), as it was sent.
                let request = item
                    .request
                    .as_deref()
                    .and_then(|r| crate::xml::parse_fragment(r, &self.config.limits))
                    .filter(|r| r.attr("type") == Some("subscribe"));
                to_send.push(request.unwrap_or_else(|| {
                    Element::new(ns::CLIENT, "presence")
                        .with_attr("from", &item.jid)
                        .with_attr("type", "subscribe")
                }));
            }
        }
        for mut p in to_send {
            p.set_attr("to", Some(sender.as_str()));
            self.send_stanza(conn, &p);
        }
    }

    /// Sends `sender`'s broadcast presence (RFC 6121 4.2.2, 4.4.2, 4.5.2):
    /// back to the resource that sent it when `echo`, to the account's other
    /// available resources (at their full JIDs), to the contacts subscribed
    /// to it (at their bare JIDs, as the roster has them, delivered to each
    /// of their available resources) and to `directed` (as addressed). A
    /// session reached twice gets the first of these only.
    pub(super) fn broadcast_presence(
        &mut self,
        sender: &FullJid,
        el: &Element,
        directed: &PeerSet<Jid>,
        to_subscribers: bool,
        echo: bool,
    ) {
        let bare = sender.bare();
        let mut targets: Vec<(ConnId, Jid)> = Vec::new();
        if echo {
            if let Some(c) = self.find_session(sender) {
                targets.push((c, Jid::from(sender.clone())));
            }
        }
        for (c, _) in self.available_resources(&bare) {
            if let Some(j) = self.full_jid(c).filter(|j| j != sender) {
                targets.push((c, Jid::from(j)));
            }
        }
        let me = Jid::from(sender.clone());
        // Not to an account that blocks the sender, nor to a resource the
        // sender blocks (XEP-0191 3.3: a full JID blocks that resource only).
        // Contacts of other servers get it there (their home decides).
        let mut remote: Vec<Jid> = Vec::new();
        let add =
            |server: &Server, to: &Jid, targets: &mut Vec<(ConnId, Jid)>, remote: &mut Vec<Jid>| {
                if !server.is_local(to) {
                    // (Not where no route goes: no error for each broadcast.)
                    let routed = !matches!(server.router.route(to), Route::Bounce(_));
                    if routed && !remote.contains(to) {
                        remote.push(to.clone());
                    }
                    return;
                }
                if server.blocks(&to.bare(), &me) {
                    return;
                }
                for c in server.addressed_sessions(to) {
                    let blocked = server
                        .full_jid(c)
                        .is_some_and(|j| server.blocks(&bare, &Jid::from(j)));
                    if !blocked && !targets.iter().any(|(t, _)| *t == c) {
                        targets.push((c, to.clone()));
                    }
                }
            };
        if to_subscribers {
            if let Some(acc) = self.sm.account(&bare) {
                let subscribers: Vec<Jid> = acc
                    .roster
                    .values()
                    .filter(|i| i.subscription.from)
                    .filter_map(|i| parse_jid(&i.jid).ok())
                    .filter(|j| !is_blocked(&acc.blocklist, j))
                    .collect();
                for j in &subscribers {
                    add(self, j, &mut targets, &mut remote);
                }
            }
        }
        for j in directed {
            add(self, j, &mut targets, &mut remote);
        }
        let mut copy = el.clone();
        copy.set_attr("from", Some(sender.as_str()));
        for (t, to) in targets {
            copy.set_attr("to", Some(to.as_str()));
            self.send_presence(t, &copy);
        }
        for to in remote {
            copy.set_attr("to", Some(to.as_str()));
            self.route(copy.clone());
        }
    }

    /// Sends the current presence of `of`'s resources to `to` (or
    /// `unavailable` from each when `available` is false): to a local
    /// account's available resources at once, in order with the stanzas
    /// the same change sends, unless it blocks `of`.
    pub(super) fn presence_of_to(&mut self, of: &BareJid, to: &BareJid, available: bool) {
        let presences: Vec<Element> = self
            .available_resources(of)
            .into_iter()
            .filter_map(|(c, _)| {
                let s = self.conns.get(&c)?.session.as_ref()?;
                if available {
                    s.last_presence.clone().map(|mut p| {
                        p.set_attr("from", Some(s.jid.as_str()));
                        p
                    })
                } else {
                    Some(
                        Element::new(ns::CLIENT, "presence")
                            .with_attr("from", s.jid.as_str())
                            .with_attr("type", "unavailable"),
                    )
                }
            })
            .collect();
        let local = self.is_local(&Jid::from(to.clone()));
        if local && self.blocks(to, &Jid::from(of.clone())) {
            return;
        }
        let targets: Vec<ConnId> = match local {
            true => self
                .available_resources(to)
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
            false => Vec::new(),
        };
        for mut p in presences {
            p.set_attr("to", Some(to.as_str()));
            if !local {
                self.route(p);
                continue;
            }
            for &c in &targets {
                self.send_presence(c, &p);
            }
        }
    }

    /// A presence probe from `from` to the local account `contact` (RFC
    /// 6121 4.3.2): one it shares its presence with gets the presence of
    /// each available resource (nothing while none is), anyone else
    /// `unsubscribed` (its presence is not revealed).
    fn answer_probe(&mut self, contact: &BareJid, from: &Jid) {
        let shared = self
            .sm
            .account(contact)
            .and_then(|a| a.roster.get(from.bare().as_str()))
            .is_some_and(|i| i.subscription.from);
        if !shared {
            return self.unsubscribed_to(contact, &from.bare());
        }
        let presences: Vec<Element> = self
            .available_resources(contact)
            .into_iter()
            .filter_map(|(c, _)| {
                let s = self.conns.get(&c)?.session.as_ref()?;
                s.last_presence.clone().map(|mut p| {
                    p.set_attr("from", Some(s.jid.as_str()));
                    p
                })
            })
            .collect();
        for mut p in presences {
            p.set_attr("to", Some(from.as_str()));
            self.route(p);
        }
    }

    /// `unsubscribed` from the local account `contact` to `user`: the
    /// answer to a subscription request or probe it does not accept.
    pub(super) fn unsubscribed_to(&mut self, contact: &BareJid, user: &BareJid) {
        let reply = Element::new(ns::CLIENT, "presence")
            .with_attr("from", contact.as_str())
            .with_attr("to", user.as_str())
            .with_attr("type", "unsubscribed");
        self.route(reply);
    }

    pub(super) fn inbound_presence(&mut self, bare: &BareJid, to: &Jid, from: &Jid, el: Element) {
        let ty = el.attr("type").unwrap_or_default().to_owned();
        if let Some(sub) = SubscriptionType::from_type(&ty) {
            return self.inbound_subscription(bare, from.bare(), sub, el);
        }
        if ty == "probe" {
            return self.answer_probe(bare, from);
        }
        for t in self.addressed_sessions(to) {
            self.send_presence(t, &el);
        }
    }
}
