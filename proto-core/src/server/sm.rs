//! The session manager: RFC 6121 delivery rules, presence, rosters and
//! subscriptions, offline storage (XEP-0160), blocking (XEP-0191), vCards
//! (XEP-0054), last activity (XEP-0012) and entity time (XEP-0202).
//!
//! Every stanza that involves a local account waits until that account's
//! data ([`UserData`]) is in memory; stanzas for the same account are
//! handled in arrival order. Changes are made durable through storage
//! requests, and what depends on them (iq results, roster pushes, routed
//! subscription stanzas) is sent only when the store has answered.

use jid::{BareJid, FullJid, Jid};

use super::{ConnId, Deferred, Event, Keyed, PeerMap, PeerSet, Pending, Server};
use crate::address::{parse_bare, parse_jid, Bare};
use crate::error::{error_reply, StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::roster::{RosterItem, Subscription, SubscriptionType};
use crate::router::Route;
use crate::store::{OfflineMessage, OfflineStored, StoreReply, StoreRequest, UserData};
use crate::xml::Element;

/// The in-memory view of one local account.
#[derive(Debug)]
pub(super) struct Account {
    pub(super) loaded: bool,
    pub(super) exists: bool,
    pub(super) roster_version: u64,
    pub(super) roster: PeerMap<String, RosterItem>,
    pub(super) blocklist: PeerSet<String>,
    /// Work that waits for the data to load, in arrival order.
    pub(super) waiting: Vec<Waiting>,
    /// Offline messages are being loaded for delivery.
    pub(super) offline_loading: bool,
}

impl Account {
    /// Not loaded yet; its maps hash with `keyed`.
    fn new(keyed: Keyed) -> Account {
        Account {
            loaded: false,
            exists: false,
            roster_version: 0,
            roster: PeerMap::with_hasher(keyed.clone()),
            blocklist: PeerSet::with_hasher(keyed.clone()),
            waiting: Vec::new(),
            offline_loading: false,
        }
    }
}

/// Work that needs an account's data.
#[derive(Debug)]
pub(super) enum Waiting {
    /// Finish resource binding.
    Bind { conn: ConnId, iq: Element },
    /// A stanza from a session of this account.
    Outbound { conn: ConnId, el: Element },
    /// A stanza to this account (with `from` stamped).
    Inbound { el: Element },
}

fn is_blocked(list: &PeerSet<String>, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    let domain = jid.domain().as_str();
    list.contains(jid.as_str())
        || list.contains(jid.bare().as_str())
        || list.contains(domain)
        || jid
            .resource()
            .is_some_and(|r| list.contains(&format!("{domain}/{}", r.as_str())))
}

fn visible(item: &RosterItem) -> bool {
    item.in_roster
        || item.subscription.to
        || item.subscription.from
        || item.subscription.pending_out
}

fn item_xml(item: &RosterItem, removed: bool) -> Element {
    let mut el = Element::new(ns::ROSTER, "item").with_attr("jid", &item.jid);
    el.set_attr(
        "subscription",
        Some(if removed {
            "remove"
        } else {
            item.subscription.as_str()
        }),
    );
    if !removed {
        if item.subscription.pending_out {
            el.set_attr("ask", Some("subscribe"));
        }
        if let Some(name) = &item.name {
            el.set_attr("name", Some(name));
        }
        for g in &item.groups {
            el = el.with_child(Element::new(ns::ROSTER, "group").with_text(g));
        }
    }
    el
}

/// Whether a message is worth storing for an offline recipient (XEP-0160):
/// `normal` or `chat` with content other than chat states.
fn storable(el: &Element) -> bool {
    matches!(el.attr("type").unwrap_or("normal"), "normal" | "chat")
        && el
            .elements()
            .any(|c| c.ns != ns::CHATSTATES && !(c.ns == ns::CLIENT && c.name == "thread"))
}

/// RFC 3339 UTC time for XEP-0082 stamps.
pub(super) fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl Server {
    // ------------------------------------------------------------ accounts

    /// Runs `w` now if `bare`'s data is loaded and nothing waits before it;
    /// otherwise queues it (loading the data if needed).
    fn with_account(&mut self, bare: &BareJid, w: Waiting) {
        match self.accounts.get_mut(bare) {
            Some(acc) if acc.loaded && acc.waiting.is_empty() => self.run_waiting(bare, w),
            Some(acc) => acc.waiting.push(w),
            None => {
                self.accounts.insert(
                    bare.clone(),
                    Account {
                        waiting: vec![w],
                        ..Account::new(self.keyed.clone())
                    },
                );
                let username = bare
                    .node()
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                let token = self.token();
                self.pending.insert(token, Pending::LoadUser(bare.clone()));
                self.events
                    .push_back(Event::Store(token, StoreRequest::LoadUser { username }));
            }
        }
    }

    pub(super) fn user_loaded(&mut self, bare: BareJid, reply: StoreReply) {
        let Some(acc) = self.accounts.get_mut(&bare) else {
            return;
        };
        match reply {
            StoreReply::User(data) => {
                acc.loaded = true;
                acc.exists = data.is_some();
                let UserData {
                    roster_version,
                    roster,
                    blocklist,
                } = data.unwrap_or_default();
                acc.roster_version = roster_version;
                acc.roster.clear();
                acc.roster
                    .extend(roster.into_iter().map(|i| (i.jid.clone(), i)));
                acc.blocklist.clear();
                acc.blocklist.extend(blocklist);
            }
            other => {
                log::error!("{bare}: loading the account failed: {other:?}");
                // Answer what waited with errors; the next stanza retries.
                let waiting = std::mem::take(&mut acc.waiting);
                self.accounts.remove(&bare);
                for w in waiting {
                    match w {
                        Waiting::Bind { conn, .. } => {
                            self.fail(conn, XE::InternalServerError, None)
                        }
                        Waiting::Outbound { conn, el } => {
                            self.reply_error(conn, &el, SE::InternalServerError, None)
                        }
                        Waiting::Inbound { el } => self.bounce_routed(&el, SE::InternalServerError),
                    }
                }
                return;
            }
        }
        let waiting = std::mem::take(&mut acc.waiting);
        for w in waiting {
            self.run_waiting(&bare, w);
        }
        self.maybe_evict(&bare);
    }

    fn run_waiting(&mut self, bare: &BareJid, w: Waiting) {
        match w {
            Waiting::Bind { conn, iq } => self.finish_bind(conn, bare, &iq),
            Waiting::Outbound { conn, el } => {
                if self.conns.contains_key(&conn) {
                    self.outbound(conn, el);
                }
            }
            Waiting::Inbound { el } => self.inbound_ready(bare, el),
        }
    }

    /// Forgets an account's data when nothing needs it any more.
    pub(super) fn maybe_evict(&mut self, bare: &BareJid) {
        let idle = self
            .accounts
            .get(bare)
            .is_some_and(|a| a.loaded && a.waiting.is_empty() && !a.offline_loading);
        if idle && !self.sessions.contains_key(bare) {
            self.accounts.remove(bare);
        }
    }

    fn account(&self, bare: &BareJid) -> Option<&Account> {
        self.accounts.get(bare).filter(|a| a.loaded)
    }

    // -------------------------------------------------------------- binding

    pub(super) fn bind_loaded(&mut self, conn: ConnId, iq: Element) {
        let Some(bare) = self.full_jid(conn).map(|j| j.bare()) else {
            return;
        };
        self.with_account(&bare, Waiting::Bind { conn, iq });
    }

    fn finish_bind(&mut self, conn: ConnId, bare: &BareJid, iq: &Element) {
        if !self.account(bare).is_some_and(|a| a.exists) {
            self.fail(
                conn,
                XE::NotAuthorized,
                Some("the account no longer exists"),
            );
            return;
        }
        let Some(full) = self.conns.get(&conn).and_then(|c| c.jid.clone()) else {
            return;
        };
        let reply = self.iq_result(iq).with_child(
            Element::new(ns::BIND, "bind")
                .with_child(Element::new(ns::BIND, "jid").with_text(full.as_str())),
        );
        self.send_stanza(conn, &reply);
    }

    // ------------------------------------------------------------- sessions

    pub(super) fn find_session(&self, full: &FullJid) -> Option<ConnId> {
        let bare = full.bare();
        self.sessions
            .get(&bare)?
            .iter()
            .copied()
            .find(|c| self.conns.get(c).and_then(|c| c.jid.as_ref()) == Some(full))
    }

    pub(super) fn unregister_session(&mut self, id: ConnId, jid: &FullJid) {
        let bare = jid.bare();
        if let Some(list) = self.sessions.get_mut(&bare) {
            list.retain(|c| *c != id);
            if list.is_empty() {
                self.sessions.remove(&bare);
            }
        }
    }

    /// Available resources of a local account, with their priorities.
    pub(super) fn available_resources(&self, bare: &BareJid) -> Vec<(ConnId, i8)> {
        self.sessions
            .get(bare)
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        self.conns
                            .get(c)
                            .filter(|c| c.available)
                            .map(|conn| (*c, conn.priority))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn full_jid(&self, conn: ConnId) -> Option<FullJid> {
        self.conns.get(&conn).and_then(|c| c.jid.clone())
    }

    /// A session ended: unavailable presence, last activity, cache.
    pub(super) fn session_closed(
        &mut self,
        jid: &FullJid,
        available: bool,
        directed: &PeerSet<Jid>,
        status: String,
    ) {
        let bare = jid.bare();
        if available || !directed.is_empty() {
            let unavailable = Element::new(ns::CLIENT, "presence")
                .with_attr("from", jid.as_str())
                .with_attr("type", "unavailable");
            self.broadcast_presence(jid, &unavailable, directed, available);
        }
        if !self.sessions.contains_key(&bare) {
            if let (Some(node), Some(at)) = (bare.node(), self.unix_now()) {
                let token = self.token();
                self.pending.insert(token, Pending::Ignore);
                self.events.push_back(Event::Store(
                    token,
                    StoreRequest::SetLastActivity {
                        username: node.as_str().to_owned(),
                        at,
                        status,
                    },
                ));
            }
        }
        self.maybe_evict(&bare);
    }

    // ------------------------------------------------------------ outbound

    /// A stanza from a bound session, `from` already stamped.
    pub(super) fn on_client_stanza(&mut self, conn: ConnId, el: Element) {
        let Some(bare) = self.full_jid(conn).map(|j| j.bare()) else {
            return;
        };
        self.with_account(&bare, Waiting::Outbound { conn, el });
    }

    fn outbound(&mut self, conn: ConnId, el: Element) {
        let Some(sender) = self.full_jid(conn) else {
            return;
        };
        let to = el.attr("to").and_then(|t| self.jids.parse(t).ok());
        let bare = sender.bare();
        match el.name.as_str() {
            "message" => {
                let to = to.unwrap_or_else(|| Jid::from(bare.clone()));
                if self.outbound_blocked(conn, &bare, &to, &el) {
                    return;
                }
                let mut el = el;
                el.set_attr("to", Some(to.as_str()));
                self.route(el);
            }
            "presence" => self.outbound_presence(conn, &sender, to, el),
            _ => {
                let ty = el.attr("type").unwrap_or_default().to_owned();
                let valid = match ty.as_str() {
                    "get" | "set" => el.attr("id").is_some() && el.elements().count() == 1,
                    "result" => el.attr("id").is_some() && el.elements().count() <= 1,
                    "error" => el.attr("id").is_some(),
                    _ => false,
                };
                if !valid {
                    return self.reply_error(conn, &el, SE::BadRequest, None);
                }
                match to {
                    None => self.account_iq(conn, &sender, el),
                    Some(t) if t == bare.clone() => self.account_iq(conn, &sender, el),
                    Some(t)
                        if t.node().is_none() && t.domain().as_str() == self.domain.as_str() =>
                    {
                        if t.resource().is_some() {
                            return self.reply_error(conn, &el, SE::ServiceUnavailable, None);
                        }
                        self.server_iq(conn, &el)
                    }
                    Some(t) => {
                        if !self.outbound_blocked(conn, &bare, &t, &el) {
                            self.route(el);
                        }
                    }
                }
            }
        }
    }

    /// XEP-0191 3.4: a stanza to a blocked contact gets `not-acceptable`.
    fn outbound_blocked(&mut self, conn: ConnId, bare: &BareJid, to: &Jid, el: &Element) -> bool {
        let blocked = self
            .account(bare)
            .is_some_and(|a| is_blocked(&a.blocklist, to));
        if blocked {
            if let Some(mut reply) = error_reply(el, SE::NotAcceptable, None) {
                if let Some(err) = reply.children.iter_mut().rev().find_map(|n| match n {
                    crate::xml::Node::Element(e) if e.name == "error" => Some(e),
                    _ => None,
                }) {
                    err.children.push(crate::xml::Node::Element(Element::new(
                        ns::BLOCKING_ERRORS,
                        "blocked",
                    )));
                }
                self.send_stanza(conn, &reply);
            }
        }
        blocked
    }

    // ------------------------------------------------------------- routing

    /// Routes a stanza whose `from` is stamped and `to` is set.
    pub(super) fn route(&mut self, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| self.jids.parse(t).ok()) else {
            return;
        };
        match self.router.route(&to) {
            Route::Local => self.inbound(to, el),
            // A route that is down bounces back. Net and S2S links do not
            // exist yet, so no remote route is ever up.
            route => {
                debug_assert!(!self.router.is_up(&route));
                self.bounce_routed(&el, SE::RemoteServerNotFound)
            }
        }
    }

    /// Sends an error for a routed stanza back to its sender (never for an error).
    pub(super) fn bounce_routed(&mut self, el: &Element, cond: SE) {
        if let Some(reply) = error_reply(el, cond, None) {
            self.route(reply);
        }
    }

    fn inbound(&mut self, to: Jid, el: Element) {
        if to.node().is_none() {
            // To the server itself, from another local entity.
            let request = matches!(el.attr("type"), Some("get" | "set"));
            if el.name == "message" || (el.name == "iq" && request) {
                self.bounce_routed(&el, SE::ServiceUnavailable);
            }
            return;
        }
        let bare = to.bare();
        self.with_account(&bare, Waiting::Inbound { el });
    }

    fn inbound_ready(&mut self, bare: &BareJid, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| self.jids.parse(t).ok()) else {
            return;
        };
        let Some(from) = el.attr("from").and_then(|t| self.jids.parse(t).ok()) else {
            return;
        };
        let ty = el.attr("type").unwrap_or_default().to_owned();
        let (exists, blocked) = match self.account(bare) {
            Some(a) => (a.exists, is_blocked(&a.blocklist, &from)),
            None => return,
        };
        if !exists {
            match el.name.as_str() {
                "message" => self.bounce_routed(&el, SE::ServiceUnavailable),
                "iq" if ty == "get" || ty == "set" => {
                    self.bounce_routed(&el, SE::ServiceUnavailable)
                }
                // RFC 6121 3.1.3: a request to a missing contact is answered `unsubscribed`.
                "presence" if ty == "subscribe" => {
                    let reply = Element::new(ns::CLIENT, "presence")
                        .with_attr("from", bare.as_str())
                        .with_attr("to", from.bare().as_str())
                        .with_attr("type", "unsubscribed");
                    self.route(reply);
                }
                _ => {}
            }
            self.maybe_evict(bare);
            return;
        }
        if blocked {
            // XEP-0191 3.4: nothing from a blocked entity reaches the user.
            match el.name.as_str() {
                "message" => self.bounce_routed(&el, SE::ServiceUnavailable),
                "iq" if ty == "get" || ty == "set" => {
                    self.bounce_routed(&el, SE::ServiceUnavailable)
                }
                _ => {}
            }
            return;
        }
        match el.name.as_str() {
            "message" => self.deliver_message(bare, &to, el),
            "presence" => self.inbound_presence(bare, &to, &from, el),
            _ => self.inbound_iq(bare, &to, &from, el),
        }
    }

    /// RFC 6121 section 8.5 for messages, with offline storage.
    fn deliver_message(&mut self, bare: &BareJid, to: &Jid, el: Element) {
        let ty = el.attr("type").unwrap_or("normal").to_owned();
        if let Ok(full) = to.clone().try_into_full() {
            if let Some(target) = self.find_session(&full) {
                self.send_stanza(target, &el);
                return;
            }
            // RFC 6121 8.5.3.2.1: no such resource.
            match ty.as_str() {
                "chat" | "normal" => {}
                "groupchat" => return self.bounce_routed(&el, SE::ServiceUnavailable),
                _ => return,
            }
        }
        match ty.as_str() {
            "error" => {}
            "groupchat" => self.bounce_routed(&el, SE::ServiceUnavailable),
            t => {
                // RFC 6121 8.5.2.1.1: every available resource with non-negative priority.
                let targets: Vec<ConnId> = self
                    .available_resources(bare)
                    .into_iter()
                    .filter(|&(_, p)| p >= 0)
                    .map(|(c, _)| c)
                    .collect();
                if !targets.is_empty() {
                    let mut buf = Vec::with_capacity(256);
                    el.write_to(&mut buf, ns::CLIENT);
                    for c in targets {
                        self.send_raw(c, &buf);
                    }
                } else if t != "headline" && storable(&el) {
                    self.store_offline(bare, el);
                }
                // Headlines and content-less messages (chat states) to an
                // offline user are dropped silently (XEP-0160, XEP-0085).
            }
        }
    }

    fn store_offline(&mut self, bare: &BareJid, el: Element) {
        let (Some(node), Some(stamp)) = (bare.node(), self.unix_now()) else {
            return self.bounce_routed(&el, SE::ServiceUnavailable);
        };
        let token = self.token();
        let request = StoreRequest::StoreOffline {
            username: node.as_str().to_owned(),
            stanza: el.to_xml(ns::CLIENT),
            stamp,
            quota: self.config.offline_quota,
        };
        self.pending.insert(token, Pending::StoreOffline(el));
        self.events.push_back(Event::Store(token, request));
    }

    pub(super) fn offline_stored(&mut self, el: Element, reply: StoreReply) {
        match reply {
            StoreReply::Offline(OfflineStored::Stored) => {}
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
            other => {
                log::error!("storing an offline message failed: {other:?}");
                self.bounce_routed(&el, SE::InternalServerError);
            }
        }
    }

    /// Loads the account's offline messages for delivery to `conn`.
    fn deliver_offline(&mut self, conn: ConnId, bare: &BareJid) {
        let Some(acc) = self.accounts.get_mut(bare) else {
            return;
        };
        if acc.offline_loading {
            return;
        }
        acc.offline_loading = true;
        let username = bare
            .node()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default();
        let token = self.token();
        self.pending.insert(
            token,
            Pending::LoadOffline {
                conn,
                bare: bare.clone(),
            },
        );
        self.events
            .push_back(Event::Store(token, StoreRequest::LoadOffline { username }));
    }

    pub(super) fn offline_loaded(&mut self, conn: ConnId, bare: BareJid, reply: StoreReply) {
        if let Some(acc) = self.accounts.get_mut(&bare) {
            acc.offline_loading = false;
        }
        let StoreReply::OfflineMessages(messages) = reply else {
            log::error!("{bare}: loading offline messages failed: {reply:?}");
            return;
        };
        if messages.is_empty() {
            self.maybe_evict(&bare);
            return;
        }
        // Deliver to the session that asked, or any other available one.
        let target = if self.conns.get(&conn).is_some_and(|c| c.available) {
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
        let mut ids = Vec::with_capacity(messages.len());
        for OfflineMessage { id, stanza, stamp } in messages {
            ids.push(id);
            let Some(mut el) = crate::xml::parse_fragment(&stanza, &self.config.limits) else {
                log::warn!("{bare}: dropping an unreadable offline message {id}");
                continue;
            };
            el.children.push(crate::xml::Node::Element(
                Element::new(ns::DELAY, "delay")
                    .with_attr("from", self.domain.as_str())
                    .with_attr("stamp", &rfc3339(stamp))
                    .with_text("Offline storage"),
            ));
            self.send_stanza(target, &el);
        }
        let username = bare
            .node()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default();
        let token = self.token();
        self.pending.insert(token, Pending::Ignore);
        self.events.push_back(Event::Store(
            token,
            StoreRequest::DeleteOffline { username, ids },
        ));
        self.maybe_evict(&bare);
    }

    // ------------------------------------------------------------ presence

    fn outbound_presence(&mut self, conn: ConnId, sender: &FullJid, to: Option<Jid>, el: Element) {
        let ty = el.attr("type").map(str::to_owned);
        if let Some(sub) = ty.as_deref().and_then(SubscriptionType::from_type) {
            let Some(to) = to else {
                return self.reply_error(conn, &el, SE::BadRequest, None);
            };
            return self.outbound_subscription(conn, sender, to.bare(), sub, el);
        }
        match (to, ty.as_deref()) {
            (None, None) => {
                let priority = el
                    .child(ns::CLIENT, "priority")
                    .and_then(|p| p.text().trim().parse::<i8>().ok())
                    .unwrap_or(0);
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let initial = !c.available;
                c.available = true;
                c.priority = priority;
                c.last_presence = Some(el.clone());
                self.broadcast_presence(sender, &el, &PeerSet::default(), true);
                if initial {
                    self.initial_presence(conn, sender);
                }
            }
            (None, Some("unavailable")) => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let was_available = c.available;
                c.available = false;
                c.last_presence = None;
                let directed =
                    std::mem::replace(&mut c.directed, PeerSet::with_hasher(self.keyed.clone()));
                self.broadcast_presence(sender, &el, &directed, was_available);
            }
            (None, _) => {}
            (Some(to), Some("probe")) => self.probe(conn, sender, &to.bare()),
            (Some(to), ty) => {
                if matches!(ty, None | Some("unavailable")) {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        if ty.is_none() {
                            if c.directed.len() < super::MAX_DIRECTED {
                                c.directed.insert(to.clone());
                            }
                        } else {
                            c.directed.remove(&to);
                        }
                    }
                }
                if !self.outbound_blocked(conn, &sender.bare(), &to, &el) {
                    self.route(el);
                }
            }
        }
    }

    /// RFC 6121 4.2.2: probes answered from memory, pending requests, offline messages.
    fn initial_presence(&mut self, conn: ConnId, sender: &FullJid) {
        let bare = sender.bare();
        let Some(acc) = self.account(&bare) else {
            return;
        };
        // The account's other resources (implicitly subscribed to each other).
        let mut to_send: Vec<Element> = self
            .available_resources(&bare)
            .into_iter()
            .filter(|&(c, _)| c != conn)
            .filter_map(|(c, _)| self.conns.get(&c).and_then(|c| c.last_presence.clone()))
            .collect();
        for item in acc.roster.values() {
            let Ok(contact) = parse_bare(&item.jid) else {
                continue;
            };
            if item.subscription.to && !is_blocked(&acc.blocklist, &Jid::from(contact.clone())) {
                for (c, _) in self.available_resources(&contact) {
                    if let Some(p) = self.conns.get(&c).and_then(|c| c.last_presence.clone()) {
                        to_send.push(p);
                    }
                }
            }
            if item.subscription.pending_in {
                // A request that arrived while the user was offline (RFC 6121 3.1.3).
                to_send.push(
                    Element::new(ns::CLIENT, "presence")
                        .with_attr("from", &item.jid)
                        .with_attr("type", "subscribe"),
                );
            }
        }
        for mut p in to_send {
            p.set_attr("to", Some(sender.as_str()));
            self.send_stanza(conn, &p);
        }
        self.deliver_offline(conn, &bare);
    }

    /// Sends `sender`'s broadcast presence to its own other resources, to
    /// contacts subscribed to it, and to `directed`.
    pub(super) fn broadcast_presence(
        &mut self,
        sender: &FullJid,
        el: &Element,
        directed: &PeerSet<Jid>,
        to_subscribers: bool,
    ) {
        let bare = sender.bare();
        let mut targets: Vec<ConnId> = self
            .available_resources(&bare)
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| self.conns[c].jid.as_ref() != Some(sender))
            .collect();
        let add = |server: &Server, to: &Jid, targets: &mut Vec<ConnId>| {
            let found: Vec<ConnId> = match to.clone().try_into_full() {
                Ok(full) => server.find_session(&full).into_iter().collect(),
                Err(b) => server
                    .available_resources(&b)
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect(),
            };
            for c in found {
                if !targets.contains(&c) {
                    targets.push(c);
                }
            }
        };
        if to_subscribers {
            if let Some(acc) = self.account(&bare) {
                let subscribers: Vec<Jid> = acc
                    .roster
                    .values()
                    .filter(|i| i.subscription.from)
                    .filter_map(|i| parse_jid(&i.jid).ok())
                    .filter(|j| !is_blocked(&acc.blocklist, j))
                    .collect();
                for j in &subscribers {
                    add(self, j, &mut targets);
                }
            }
        }
        for j in directed {
            add(self, j, &mut targets);
        }
        let mut copy = el.clone();
        copy.set_attr("from", Some(sender.as_str()));
        for t in targets {
            if let Some(j) = self.conns.get(&t).and_then(|c| c.jid.as_ref()) {
                copy.set_attr("to", Some(j.as_str()));
            }
            self.send_stanza(t, &copy);
        }
    }

    /// Sends the current presence of `of`'s resources to `to` (or
    /// `unavailable` from each when `available` is false).
    fn presence_of_to(&mut self, of: &BareJid, to: &BareJid, available: bool) {
        let presences: Vec<Element> = self
            .available_resources(of)
            .into_iter()
            .filter_map(|(c, _)| {
                let conn = self.conns.get(&c)?;
                let full = conn.jid.as_ref()?;
                if available {
                    conn.last_presence.clone().map(|mut p| {
                        p.set_attr("from", Some(full.as_str()));
                        p
                    })
                } else {
                    Some(
                        Element::new(ns::CLIENT, "presence")
                            .with_attr("from", full.as_str())
                            .with_attr("type", "unavailable"),
                    )
                }
            })
            .collect();
        for mut p in presences {
            p.set_attr("to", Some(to.as_str()));
            self.route(p);
        }
    }

    /// A presence probe from a local user (RFC 6121 4.3).
    fn probe(&mut self, conn: ConnId, sender: &FullJid, contact: &BareJid) {
        let subscribed = self
            .account(&sender.bare())
            .and_then(|a| a.roster.get(contact.as_str()))
            .is_some_and(|i| i.subscription.to);
        if !subscribed || contact.domain().as_str() != self.domain.as_str() {
            return;
        }
        let presences: Vec<Element> = self
            .available_resources(contact)
            .into_iter()
            .filter_map(|(c, _)| self.conns.get(&c).and_then(|c| c.last_presence.clone()))
            .collect();
        for mut p in presences {
            p.set_attr("to", Some(sender.as_str()));
            self.send_stanza(conn, &p);
        }
    }

    fn inbound_presence(&mut self, bare: &BareJid, to: &Jid, from: &Jid, el: Element) {
        let ty = el.attr("type").unwrap_or_default().to_owned();
        if let Some(sub) = SubscriptionType::from_type(&ty) {
            return self.inbound_subscription(bare, from.bare(), sub, el);
        }
        if ty == "probe" {
            return;
        }
        let targets: Vec<ConnId> = match to.clone().try_into_full() {
            Ok(full) => self.find_session(&full).into_iter().collect(),
            Err(b) => self
                .available_resources(&b)
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
        };
        for t in targets {
            self.send_stanza(t, &el);
        }
    }

    // -------------------------------------------------------- subscriptions

    fn roster_item(&self, user: &BareJid, contact: &BareJid) -> RosterItem {
        self.account(user)
            .and_then(|a| a.roster.get(contact.as_str()).cloned())
            .unwrap_or_else(|| RosterItem {
                jid: contact.as_str().to_owned(),
                name: None,
                groups: Vec::new(),
                subscription: Subscription::default(),
                in_roster: false,
            })
    }

    /// Stores `item` in `user`'s roster (memory now, store as a request) and
    /// returns the new roster version; `push` sends roster pushes once durable.
    fn save_item(&mut self, user: &BareJid, item: RosterItem, push: bool, mut then: Vec<Deferred>) {
        let Some(acc) = self.accounts.get_mut(user).filter(|a| a.loaded) else {
            return;
        };
        let old = acc.roster.get(&item.jid);
        let was_visible = old.is_some_and(visible);
        let keep = item.in_roster || item.subscription != Subscription::default();
        acc.roster_version += 1;
        let version = acc.roster_version;
        let username = user
            .node()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default();
        let request = if keep {
            acc.roster.insert(item.jid.clone(), item.clone());
            StoreRequest::SetRosterItem {
                username,
                item: item.clone(),
            }
        } else {
            acc.roster.remove(&item.jid);
            StoreRequest::RemoveRosterItem {
                username,
                jid: item.jid.clone(),
            }
        };
        if push && (was_visible || visible(&item)) {
            let removed = !keep || !visible(&item);
            then.insert(
                0,
                Deferred::Push {
                    user: user.clone(),
                    item: item_xml(&item, removed),
                    version,
                },
            );
        }
        let token = self.token();
        self.pending.insert(token, Pending::Durable(then));
        self.events.push_back(Event::Store(token, request));
    }

    fn outbound_subscription(
        &mut self,
        conn: ConnId,
        sender: &FullJid,
        contact: BareJid,
        t: SubscriptionType,
        el: Element,
    ) {
        let user = sender.bare();
        if contact == user {
            return self.reply_error(
                conn,
                &el,
                SE::BadRequest,
                Some("you cannot subscribe to yourself"),
            );
        }
        let mut item = self.roster_item(&user, &contact);
        let step = item.subscription.outbound(t);
        let mut then = Vec::new();
        // Subscription stanzas travel between bare JIDs (RFC 6121 3.1.2).
        let mut stanza = Element::new(ns::CLIENT, "presence")
            .with_attr("from", user.as_str())
            .with_attr("to", contact.as_str())
            .with_attr("type", t.as_str());
        if let Some(id) = el.attr("id") {
            stanza.set_attr("id", Some(id));
        }
        stanza.children = el.children.clone();
        if step.route {
            then.push(Deferred::Route(stanza));
        }
        let added = t == SubscriptionType::Subscribe && !item.in_roster;
        self.presence_on_change(&user, &contact, item.subscription, step.state, &mut then);
        item.subscription = step.state;
        if t == SubscriptionType::Subscribe || (t == SubscriptionType::Subscribed && step.route) {
            item.in_roster = true;
        }
        if step.push || added || then.iter().any(|d| matches!(d, Deferred::Route(_))) {
            self.save_item(&user, item, step.push || added, then);
        }
    }

    /// When `user` starts or stops receiving a local `contact`'s presence,
    /// the contact's current presence (or `unavailable`) follows the
    /// subscription stanza and roster push (RFC 6121 3.1.5, 3.2.2, 3.3.3).
    fn presence_on_change(
        &self,
        user: &BareJid,
        contact: &BareJid,
        before: Subscription,
        after: Subscription,
        then: &mut Vec<Deferred>,
    ) {
        // Over S2S the contact's server sends it; only local contacts are ours to do.
        if before.to != after.to && self.router.route(&Jid::from(contact.clone())) == Route::Local {
            then.push(Deferred::PresenceTo {
                of: contact.clone(),
                to: user.clone(),
                available: after.to,
            });
        }
    }

    fn inbound_subscription(
        &mut self,
        bare: &BareJid,
        contact: BareJid,
        t: SubscriptionType,
        el: Element,
    ) {
        let mut item = self.roster_item(bare, &contact);
        let step = item.subscription.inbound(t);
        let mut then = Vec::new();
        if step.deliver {
            let mut copy = el.clone();
            copy.set_attr("from", Some(contact.as_str()));
            copy.set_attr("to", Some(bare.as_str()));
            then.push(Deferred::Deliver {
                user: bare.clone(),
                el: copy,
            });
        }
        if step.auto_subscribed {
            let reply = Element::new(ns::CLIENT, "presence")
                .with_attr("from", bare.as_str())
                .with_attr("to", contact.as_str())
                .with_attr("type", "subscribed");
            then.push(Deferred::Route(reply));
        }
        self.presence_on_change(bare, &contact, item.subscription, step.state, &mut then);
        if step.state != item.subscription {
            if step.auto_subscribed {
                item.in_roster = true;
            }
            item.subscription = step.state;
            self.save_item(bare, item, step.push, then);
        } else {
            self.run_deferred(then);
        }
    }

    pub(super) fn run_deferred(&mut self, then: Vec<Deferred>) {
        for d in then {
            match d {
                Deferred::Route(el) => self.route(el),
                Deferred::Send(conn, el) => self.send_stanza(conn, &el),
                Deferred::Deliver { user, el } => {
                    for (c, _) in self.available_resources(&user) {
                        self.send_stanza(c, &el);
                    }
                }
                Deferred::Push {
                    user,
                    item,
                    version,
                } => self.roster_push(&user, item, version),
                Deferred::PresenceTo { of, to, available } => {
                    self.presence_of_to(&of, &to, available)
                }
                Deferred::BlockPush { user, el, except } => {
                    self.push_to_interested(&user, except, |c| c.blocklist_requested, el);
                }
            }
        }
    }

    /// Roster push to every interested resource (RFC 6121 2.1.6).
    fn roster_push(&mut self, user: &BareJid, item: Element, version: u64) {
        let query = Element::new(ns::ROSTER, "query")
            .with_attr("ver", &version.to_string())
            .with_child(item);
        self.push_to_interested(user, None, |c| c.roster_requested, query);
    }

    /// An iq `set` push of `payload` to every session of `user` that
    /// `interested` selects (it asked for the roster or the block list).
    fn push_to_interested(
        &mut self,
        user: &BareJid,
        except: Option<ConnId>,
        interested: impl Fn(&super::Conn) -> bool,
        payload: Element,
    ) {
        let targets: Vec<(ConnId, FullJid)> = self
            .sessions
            .get(user)
            .into_iter()
            .flatten()
            .filter(|c| Some(**c) != except)
            .filter_map(|c| {
                let conn = self.conns.get(c).filter(|x| interested(x))?;
                Some((*c, conn.jid.clone()?))
            })
            .collect();
        for (c, full) in targets {
            let id = format!("push-{}", self.random_hex(4));
            let iq = Element::new(ns::CLIENT, "iq")
                .with_attr("type", "set")
                .with_attr("id", &id)
                .with_attr("to", full.as_str())
                .with_child(payload.clone());
            self.send_stanza(c, &iq);
        }
    }

    // ----------------------------------------------------------------- iqs

    /// An iq to the user's own account (no `to`, or the bare JID).
    fn account_iq(&mut self, conn: ConnId, sender: &FullJid, iq: Element) {
        let ty = iq.attr("type").unwrap_or_default().to_owned();
        if ty == "result" || ty == "error" {
            return;
        }
        let Some(payload) = iq.elements().next().cloned() else {
            return;
        };
        match (payload.ns.as_str(), payload.name.as_str()) {
            (ns::ROSTER, "query") => self.roster_iq(conn, sender, &iq, &payload),
            (ns::BLOCKING, _) => self.blocking_iq(conn, sender, &iq, &payload),
            (ns::VCARD, "vCard") => {
                let user = sender
                    .node()
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                if ty == "get" {
                    self.load_vcard(conn, iq, user, true);
                } else {
                    let token = self.token();
                    let reply = self.iq_result(&iq);
                    self.pending
                        .insert(token, Pending::Durable(vec![Deferred::Send(conn, reply)]));
                    self.events.push_back(Event::Store(
                        token,
                        StoreRequest::SetVcard {
                            username: user,
                            vcard: payload.to_xml(ns::CLIENT),
                        },
                    ));
                }
            }
            (ns::LAST, "query") if ty == "get" => {
                let q = Element::new(ns::LAST, "query").with_attr("seconds", "0");
                let reply = self.iq_result(&iq).with_child(q);
                self.send_stanza(conn, &reply);
            }
            (ns::DISCO_INFO, "query") if ty == "get" && payload.attr("node").is_none() => {
                let mut q = Element::new(ns::DISCO_INFO, "query").with_child(
                    Element::new(ns::DISCO_INFO, "identity")
                        .with_attr("category", "account")
                        .with_attr("type", "registered"),
                );
                for f in [ns::DISCO_INFO, ns::DISCO_ITEMS] {
                    q = q.with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", f));
                }
                let reply = self.iq_result(&iq).with_child(q);
                self.send_stanza(conn, &reply);
            }
            (ns::DISCO_ITEMS, "query") if ty == "get" => {
                let reply = self
                    .iq_result(&iq)
                    .with_child(Element::new(ns::DISCO_ITEMS, "query"));
                self.send_stanza(conn, &reply);
            }
            (ns::PING, "ping") if ty == "get" => {
                let reply = self.iq_result(&iq);
                self.send_stanza(conn, &reply);
            }
            (ns::REGISTER, "query") => {
                let user = self.conns.get(&conn).and_then(|c| c.user.clone());
                self.on_register(conn, iq, user.as_deref());
            }
            _ => self.reply_error(conn, &iq, SE::ServiceUnavailable, None),
        }
    }

    fn load_vcard(&mut self, conn: ConnId, iq: Element, username: String, own: bool) {
        let token = self.token();
        self.pending.insert(token, Pending::Vcard { conn, iq, own });
        self.events
            .push_back(Event::Store(token, StoreRequest::LoadVcard { username }));
    }

    pub(super) fn vcard_loaded(&mut self, conn: ConnId, iq: Element, own: bool, reply: StoreReply) {
        let vcard = match reply {
            StoreReply::Vcard(Some(xml)) => crate::xml::parse_fragment(&xml, &self.config.limits),
            StoreReply::Vcard(None) if own => Some(Element::new(ns::VCARD, "vCard")),
            StoreReply::Vcard(None) => None,
            other => {
                log::error!("loading a vCard failed: {other:?}");
                return self.reply_error(conn, &iq, SE::InternalServerError, None);
            }
        };
        match vcard {
            Some(v) => {
                let reply = self.iq_result(&iq).with_child(v);
                self.send_stanza(conn, &reply);
            }
            None => self.reply_error(conn, &iq, SE::ItemNotFound, None),
        }
    }

    /// An iq to another local account's bare or full JID.
    fn inbound_iq(&mut self, bare: &BareJid, to: &Jid, from: &Jid, iq: Element) {
        let ty = iq.attr("type").unwrap_or_default().to_owned();
        let request = ty == "get" || ty == "set";
        if let Ok(full) = to.clone().try_into_full() {
            match self.find_session(&full) {
                Some(target) => self.send_stanza(target, &iq),
                None if request => self.bounce_routed(&iq, SE::ServiceUnavailable),
                None => {}
            }
            return;
        }
        if !request {
            return;
        }
        // Handled by the server on behalf of the account (RFC 6121 8.5.2.1.3).
        let Some(payload) = iq.elements().next().cloned() else {
            return;
        };
        let local_requester = self.full_jid_conn(from);
        match (
            payload.ns.as_str(),
            payload.name.as_str(),
            ty.as_str(),
            local_requester,
        ) {
            (ns::VCARD, "vCard", "get", Some(conn)) => {
                let user = bare
                    .node()
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                self.load_vcard(conn, iq, user, false);
            }
            (ns::LAST, "query", "get", _) => {
                let allowed = self
                    .account(bare)
                    .and_then(|a| a.roster.get(from.bare().as_str()))
                    .is_some_and(|i| i.subscription.from);
                if !allowed {
                    return self.bounce_routed(&iq, SE::Forbidden);
                }
                if self.available_resources(bare).is_empty() {
                    let user = bare
                        .node()
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default();
                    let token = self.token();
                    self.pending.insert(token, Pending::Last(iq));
                    self.events.push_back(Event::Store(
                        token,
                        StoreRequest::LoadLastActivity { username: user },
                    ));
                } else {
                    let q = Element::new(ns::LAST, "query").with_attr("seconds", "0");
                    let reply = self.iq_result(&iq).with_child(q);
                    self.route(reply);
                }
            }
            (ns::PING, "ping", "get", _) => {
                let reply = self.iq_result(&iq);
                self.route(reply);
            }
            (ns::DISCO_INFO, "query", "get", _) if payload.attr("node").is_none() => {
                let q = Element::new(ns::DISCO_INFO, "query").with_child(
                    Element::new(ns::DISCO_INFO, "identity")
                        .with_attr("category", "account")
                        .with_attr("type", "registered"),
                );
                let reply = self.iq_result(&iq).with_child(q);
                self.route(reply);
            }
            _ => self.bounce_routed(&iq, SE::ServiceUnavailable),
        }
    }

    fn full_jid_conn(&self, jid: &Jid) -> Option<ConnId> {
        let full = jid.clone().try_into_full().ok()?;
        self.find_session(&full)
    }

    pub(super) fn last_loaded(&mut self, iq: Element, reply: StoreReply) {
        let (seconds, status) = match reply {
            StoreReply::LastActivity(Some((at, status))) => (
                self.unix_now()
                    .map(|now| now.saturating_sub(at))
                    .unwrap_or(0),
                status,
            ),
            StoreReply::LastActivity(None) => return self.bounce_routed(&iq, SE::ItemNotFound),
            _ => return self.bounce_routed(&iq, SE::InternalServerError),
        };
        let mut q = Element::new(ns::LAST, "query").with_attr("seconds", &seconds.to_string());
        if !status.is_empty() {
            q = q.with_text(&status);
        }
        let reply = self.iq_result(&iq).with_child(q);
        self.route(reply);
    }

    fn roster_iq(&mut self, conn: ConnId, sender: &FullJid, iq: &Element, query: &Element) {
        let user = sender.bare();
        match iq.attr("type") {
            Some("get") => {
                let Some(acc) = self.account(&user) else {
                    return;
                };
                let version = acc.roster_version.to_string();
                let reply = if query.attr("ver") == Some(version.as_str()) {
                    // XEP-0237: unchanged, pushes will follow.
                    self.iq_result(iq)
                } else {
                    let mut q = Element::new(ns::ROSTER, "query").with_attr("ver", &version);
                    let mut items: Vec<&RosterItem> =
                        acc.roster.values().filter(|i| visible(i)).collect();
                    items.sort_by(|a, b| a.jid.cmp(&b.jid));
                    for i in items {
                        q = q.with_child(item_xml(i, false));
                    }
                    self.iq_result(iq).with_child(q)
                };
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.roster_requested = true;
                }
                self.send_stanza(conn, &reply);
            }
            Some("set") => {
                let items: Vec<&Element> = query.elements().collect();
                let [item] = items.as_slice() else {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::BadRequest,
                        Some("a roster set has exactly one item"),
                    );
                };
                if !item.is(ns::ROSTER, "item") {
                    return self.reply_error(conn, iq, SE::BadRequest, None);
                }
                let Some(contact) = item
                    .attr("jid")
                    .and_then(|j| parse_jid(j).ok())
                    .map(|j| j.bare())
                else {
                    return self.reply_error(conn, iq, SE::JidMalformed, None);
                };
                if contact == user {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::NotAllowed,
                        Some("you cannot add yourself"),
                    );
                }
                let mut groups = Vec::new();
                for g in item.elements() {
                    let name = g.text();
                    if !g.is(ns::ROSTER, "group") || name.trim().is_empty() {
                        return self.reply_error(
                            conn,
                            iq,
                            SE::NotAcceptable,
                            Some("empty group name"),
                        );
                    }
                    if groups.contains(&name) {
                        return self.reply_error(conn, iq, SE::BadRequest, Some("duplicate group"));
                    }
                    groups.push(name);
                }
                let reply = self.iq_result(iq);
                if item.attr("subscription") == Some("remove") {
                    return self.roster_remove(conn, &user, contact, iq, reply);
                }
                let mut stored = self.roster_item(&user, &contact);
                stored.in_roster = true;
                stored.name = item
                    .attr("name")
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned);
                stored.groups = groups;
                self.save_item(&user, stored, true, vec![Deferred::Send(conn, reply)]);
            }
            _ => self.reply_error(conn, iq, SE::BadRequest, None),
        }
    }

    /// RFC 6121 2.5: removal cancels subscriptions both ways.
    fn roster_remove(
        &mut self,
        conn: ConnId,
        user: &BareJid,
        contact: BareJid,
        iq: &Element,
        reply: Element,
    ) {
        let Some(item) = self
            .account(user)
            .and_then(|a| a.roster.get(contact.as_str()).cloned())
        else {
            return self.reply_error(conn, iq, SE::ItemNotFound, None);
        };
        let mut then = vec![Deferred::Send(conn, reply)];
        let presence = |t: &str| {
            Element::new(ns::CLIENT, "presence")
                .with_attr("from", user.as_str())
                .with_attr("to", contact.as_str())
                .with_attr("type", t)
        };
        if item.subscription.to || item.subscription.pending_out {
            then.push(Deferred::Route(presence("unsubscribe")));
        }
        if item.subscription.from || item.subscription.pending_in {
            then.push(Deferred::Route(presence("unsubscribed")));
        }
        self.presence_on_change(
            user,
            &contact,
            item.subscription,
            Subscription::default(),
            &mut then,
        );
        let removed = RosterItem {
            subscription: Subscription::default(),
            in_roster: false,
            ..item
        };
        self.save_item(user, removed, true, then);
    }

    fn blocking_iq(&mut self, conn: ConnId, sender: &FullJid, iq: &Element, payload: &Element) {
        let user = sender.bare();
        let ty = iq.attr("type").unwrap_or_default();
        match (payload.name.as_str(), ty) {
            ("blocklist", "get") => {
                let Some(acc) = self.account(&user) else {
                    return;
                };
                let mut list: Vec<&String> = acc.blocklist.iter().collect();
                list.sort();
                let mut q = Element::new(ns::BLOCKING, "blocklist");
                for j in list {
                    q = q.with_child(Element::new(ns::BLOCKING, "item").with_attr("jid", j));
                }
                let reply = self.iq_result(iq).with_child(q);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.blocklist_requested = true;
                }
                self.send_stanza(conn, &reply);
            }
            (verb @ ("block" | "unblock"), "set") => {
                let mut jids = Vec::new();
                for item in payload.elements() {
                    match item.attr("jid").and_then(|j| parse_jid(j).ok()) {
                        Some(j) if item.is(ns::BLOCKING, "item") => jids.push(j),
                        _ => return self.reply_error(conn, iq, SE::JidMalformed, None),
                    }
                }
                let block = verb == "block";
                if block && jids.is_empty() {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::BadRequest,
                        Some("block needs at least one item"),
                    );
                }
                let Some(acc) = self.accounts.get_mut(&user).filter(|a| a.loaded) else {
                    return;
                };
                let clear = !block && jids.is_empty();
                let changed: Vec<Jid> = if clear {
                    acc.blocklist
                        .iter()
                        .filter_map(|j| parse_jid(j).ok())
                        .collect()
                } else {
                    jids.clone()
                };
                let strings: Vec<String> = jids.iter().map(|j| j.as_str().to_owned()).collect();
                if clear {
                    acc.blocklist.clear();
                } else if block {
                    acc.blocklist.extend(strings.iter().cloned());
                } else {
                    for s in &strings {
                        acc.blocklist.remove(s);
                    }
                }
                let (add, remove) = if block {
                    (strings, Vec::new())
                } else {
                    (Vec::new(), strings)
                };
                let username = sender
                    .node()
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                let mut then = vec![Deferred::Send(conn, self.iq_result(iq))];
                then.push(Deferred::BlockPush {
                    user: user.clone(),
                    el: payload.clone(),
                    except: Some(conn),
                });
                // Blocked contacts see the user go offline; unblocked ones
                // that are subscribed see the current presence again.
                for j in changed {
                    let b = j.bare();
                    let subscribed = self
                        .account(&user)
                        .and_then(|a| a.roster.get(b.as_str()))
                        .is_some_and(|i| i.subscription.from);
                    if subscribed && b.domain().as_str() == self.domain.as_str() {
                        then.push(Deferred::PresenceTo {
                            of: user.clone(),
                            to: b,
                            available: !block,
                        });
                    }
                }
                let token = self.token();
                self.pending.insert(token, Pending::Durable(then));
                self.events.push_back(Event::Store(
                    token,
                    StoreRequest::SetBlocklist {
                        username,
                        clear,
                        add,
                        remove,
                    },
                ));
            }
            _ => self.reply_error(conn, iq, SE::BadRequest, None),
        }
    }

    // -------------------------------------------------------------- server

    /// The server's own iq services (to the domain).
    pub(super) fn server_iq(&mut self, id: ConnId, iq: &Element) {
        let ty = iq.attr("type").unwrap_or_default();
        if ty == "result" || ty == "error" {
            return;
        }
        let Some(payload) = iq.elements().next().cloned() else {
            return;
        };
        let reply = self.iq_result(iq);
        match (payload.ns.as_str(), payload.name.as_str(), ty) {
            (ns::PING, "ping", "get") => self.send_stanza(id, &reply),
            (ns::DISCO_INFO, "query", "get") if payload.attr("node").is_none() => {
                let mut q = Element::new(ns::DISCO_INFO, "query").with_child(
                    Element::new(ns::DISCO_INFO, "identity")
                        .with_attr("category", "server")
                        .with_attr("type", "im")
                        .with_attr("name", &self.config.software_name),
                );
                let mut features = vec![
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    ns::PING,
                    ns::VERSION,
                    ns::TIME,
                    ns::LAST,
                    ns::BLOCKING,
                    ns::VCARD,
                    ns::ROSTER_VER,
                    ns::OFFLINE,
                ];
                if self.config.allow_registration {
                    features.push(ns::REGISTER);
                }
                features.sort_unstable();
                for f in features {
                    q = q.with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", f));
                }
                self.send_stanza(id, &reply.with_child(q));
            }
            (ns::DISCO_INFO, "query", "get") => self.reply_error(id, iq, SE::ItemNotFound, None),
            (ns::DISCO_ITEMS, "query", "get") => {
                if payload.attr("node").is_some() {
                    return self.reply_error(id, iq, SE::ItemNotFound, None);
                }
                self.send_stanza(
                    id,
                    &reply.with_child(Element::new(ns::DISCO_ITEMS, "query")),
                );
            }
            (ns::VERSION, "query", "get") => {
                let q = Element::new(ns::VERSION, "query")
                    .with_child(
                        Element::new(ns::VERSION, "name").with_text(&self.config.software_name),
                    )
                    .with_child(
                        Element::new(ns::VERSION, "version")
                            .with_text(&self.config.software_version),
                    );
                self.send_stanza(id, &reply.with_child(q));
            }
            (ns::TIME, "time", "get") => match self.unix_now() {
                Some(now) => {
                    let q = Element::new(ns::TIME, "time")
                        .with_child(Element::new(ns::TIME, "tzo").with_text("+00:00"))
                        .with_child(Element::new(ns::TIME, "utc").with_text(&rfc3339(now)));
                    self.send_stanza(id, &reply.with_child(q));
                }
                None => self.reply_error(id, iq, SE::ServiceUnavailable, None),
            },
            (ns::LAST, "query", "get") => {
                // XEP-0012 section 5: the server's uptime.
                let uptime = self.uptime().unwrap_or(0);
                let q = Element::new(ns::LAST, "query").with_attr("seconds", &uptime.to_string());
                self.send_stanza(id, &reply.with_child(q));
            }
            (ns::REGISTER, "query", _) if self.config.allow_registration => {
                let user = self.conns.get(&id).and_then(|c| c.user.clone());
                self.on_register(id, iq.clone(), user.as_deref());
            }
            _ => self.reply_error(id, iq, SE::ServiceUnavailable, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_600 + 3661), "2027-01-01T01:01:01Z");
    }

    #[test]
    fn block_matching() {
        let list: PeerSet<String> = [
            "bad@x".to_owned(),
            "spam.org".to_owned(),
            "a@y/r".to_owned(),
        ]
        .into_iter()
        .collect();
        assert!(is_blocked(&list, &Jid::new("bad@x/phone").unwrap()));
        assert!(is_blocked(&list, &Jid::new("anyone@spam.org").unwrap()));
        assert!(is_blocked(&list, &Jid::new("a@y/r").unwrap()));
        assert!(!is_blocked(&list, &Jid::new("a@y/other").unwrap()));
        assert!(!is_blocked(&list, &Jid::new("good@x").unwrap()));
    }
}
