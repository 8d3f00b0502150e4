//! Roster and subscriptions (RFC 6121 sections 2 and 3): roster get, set
//! and remove, roster pushes, and the subscription state machine of
//! [`crate::roster`] applied to stanzas in both directions.

use jid::{BareJid, FullJid, Jid};

use super::{username, Change, Deferred};
use crate::address::{parse_jid, Bare};
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::roster::{RosterItem, Subscription, SubscriptionType};
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::StoreRequest;
use crate::xml::Element;

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
        if item.subscription.approved {
            el.set_attr("approved", Some("true"));
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

impl Server {
    fn roster_item(&self, user: &BareJid, contact: &BareJid) -> RosterItem {
        self.sm
            .account(user)
            .and_then(|a| a.roster.get(contact.as_str()).cloned())
            .unwrap_or_else(|| RosterItem {
                jid: contact.as_str().to_owned(),
                name: None,
                groups: Vec::new(),
                subscription: Subscription::default(),
                in_roster: false,
                request: None,
            })
    }

    /// Stores `item` in `user`'s roster: memory changes, and roster pushes
    /// (when `push`) go out with the store's version, once it is durable.
    fn save_item(
        &mut self,
        user: &BareJid,
        mut item: RosterItem,
        push: bool,
        mut then: Vec<Deferred>,
    ) {
        if !item.subscription.pending_in {
            // Answered: nothing waits any more.
            item.request = None;
        }
        let Some(acc) = self.sm.account(user) else {
            return;
        };
        let was_visible = acc.roster.get(&item.jid).is_some_and(visible);
        let keep = item.in_roster || item.subscription != Subscription::default();
        let username = username(user);
        let request = if keep {
            StoreRequest::SetRosterItem {
                username,
                item: item.clone(),
            }
        } else {
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
                    // The store's answer gives the version.
                    version: 0,
                },
            );
        }
        self.store_change(user, Some(Change::Roster { item, keep }), then, request);
    }

    pub(super) fn outbound_subscription(
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
        if t == SubscriptionType::Subscribe {
            // Kontalk: a request carries the requester's key.
            let key = self.pubkey_payload(&user, true);
            crate::kontalk::services::set_pubkey(&mut stanza, key);
        }
        if step.route {
            then.push(Deferred::Route(stanza));
        }
        let added = t == SubscriptionType::Subscribe && !item.in_roster;
        self.presence_on_change(&user, &contact, item.subscription, step.state, &mut then);
        // The user approved (or cancelled) a remote contact's subscription:
        // as the contact's server, its presence follows (RFC 6121 3.1.5,
        // 3.2.2); a local contact gets it from `presence_on_change` of its own.
        if item.subscription.from != step.state.from && !self.is_local(&Jid::from(contact.clone()))
        {
            then.push(Deferred::PresenceTo {
                of: user.clone(),
                to: contact.clone(),
                available: step.state.from,
            });
        }
        // A request answered, or a pre-approval (RFC 6121 3.4.2), makes an
        // item of the contact.
        let approved = !item.subscription.approved && step.state.approved;
        item.subscription = step.state;
        if t == SubscriptionType::Subscribe
            || (t == SubscriptionType::Subscribed && (step.route || approved))
        {
            item.in_roster = true;
        }
        if step.push || added || then.iter().any(|d| matches!(d, Deferred::Route(_))) {
            self.save_item(&user, item, step.push || added, then);
        }
    }

    /// When `user` starts or stops receiving a local `contact`'s presence,
    /// the contact's current presence follows the subscription stanza
    /// (RFC 6121 3.1.5), and `unavailable` comes before it (3.2.2, 3.3.3).
    fn presence_on_change(
        &self,
        user: &BareJid,
        contact: &BareJid,
        before: Subscription,
        after: Subscription,
        then: &mut Vec<Deferred>,
    ) {
        // A remote contact's server sends it; only local contacts are ours to do.
        if before.to != after.to && self.is_local(&Jid::from(contact.clone())) {
            let presence = Deferred::PresenceTo {
                of: contact.clone(),
                to: user.clone(),
                available: after.to,
            };
            if after.to {
                then.push(presence);
            } else {
                then.insert(0, presence);
            }
        }
    }

    pub(super) fn inbound_subscription(
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
            // RFC 6121 3.1.3: a request to the available resources; the
            // answers and cancellations (3.1.6, 3.2.3, 3.3.3) to the
            // interested ones, which hold the roster they change.
            then.push(Deferred::Deliver {
                user: bare.clone(),
                el: copy,
                interested: t != SubscriptionType::Subscribe,
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
            if t == SubscriptionType::Subscribe && step.state.pending_in {
                // Kept as sent, for each login until it is answered.
                let mut request = el.clone();
                request.set_attr("from", Some(contact.as_str()));
                request.set_attr("to", Some(bare.as_str()));
                item.request = Some(request.to_xml(ns::CLIENT));
            }
            item.subscription = step.state;
            self.save_item(bare, item, step.push, then);
        } else {
            self.run_deferred(then);
        }
    }

    /// Roster push to every interested resource (RFC 6121 2.1.6).
    pub(super) fn roster_push(&mut self, user: &BareJid, item: Element, version: u64) {
        let query = Element::new(ns::ROSTER, "query")
            .with_attr("ver", &version.to_string())
            .with_child(item);
        self.push_to_interested(user, None, |s| s.roster_requested, query);
    }

    pub(super) fn roster_iq(
        &mut self,
        conn: ConnId,
        sender: &FullJid,
        iq: &Element,
        query: &Element,
    ) {
        let user = sender.bare();
        match IqType::of(iq) {
            Some(IqType::Get) => {
                let Some(acc) = self.sm.account(&user) else {
                    return;
                };
                let version = acc.roster_version.to_string();
                let reply = if query.attr("ver") == Some(version.as_str()) {
                    // XEP-0237: unchanged, pushes will follow.
                    iq_result(iq)
                } else {
                    let mut q = Element::new(ns::ROSTER, "query").with_attr("ver", &version);
                    let mut items: Vec<&RosterItem> =
                        acc.roster.values().filter(|i| visible(i)).collect();
                    items.sort_by(|a, b| a.jid.cmp(&b.jid));
                    for i in items {
                        q = q.with_child(item_xml(i, false));
                    }
                    iq_result(iq).with_child(q)
                };
                if let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) {
                    s.roster_requested = true;
                }
                self.send_stanza(conn, &reply);
            }
            Some(IqType::Set) => {
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
                let reply = iq_result(iq);
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
        // RFC 6121 2.5.3: a request that waits is not an item yet.
        let Some(item) = self
            .sm
            .account(user)
            .and_then(|a| a.roster.get(contact.as_str()).cloned())
            .filter(visible)
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
            request: None,
            ..item
        };
        self.save_item(user, removed, true, then);
    }
}
