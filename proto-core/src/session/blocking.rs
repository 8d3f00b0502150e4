//! Blocking (XEP-0191): the block list, its pushes, and stanzas to and
//! from blocked entities.

use jid::{FullJid, Jid};

use super::{username, Change, Deferred};
use crate::address::{parse_jid, Bare};
use crate::error::{error_child, error_reply, StanzaErrorCondition as SE};
use crate::ns;
use crate::server::{ConnId, PeerSet, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::StoreRequest;
use crate::xml::{Element, Node};

/// Whether `jid` matches an entry of the block list (XEP-0191 section 3.2
/// with the JID matching of RFC 6121 section 8.5: full, bare, domain,
/// domain/resource).
pub(super) fn is_blocked(list: &PeerSet<String>, jid: &Jid) -> bool {
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

impl Server {
    /// Whether the local account `account` (in memory) blocks `jid`.
    pub(super) fn blocks(&self, account: &jid::BareJid, jid: &Jid) -> bool {
        self.sm
            .account(account)
            .is_some_and(|a| is_blocked(&a.blocklist, jid))
    }

    /// XEP-0191 3.4: a stanza to a blocked contact gets `not-acceptable`.
    pub(super) fn outbound_blocked(
        &mut self,
        conn: ConnId,
        bare: &jid::BareJid,
        to: &Jid,
        el: &Element,
    ) -> bool {
        let blocked = self.blocks(bare, to);
        if blocked {
            if let Some(mut reply) = error_reply(el, SE::NotAcceptable, None) {
                if let Some(err) = error_child(&mut reply) {
                    // XEP-0191 section 3.5: not-acceptable, of type cancel.
                    err.set_attr("type", Some("cancel"));
                    err.children
                        .push(Node::Element(Element::new(ns::BLOCKING_ERRORS, "blocked")));
                }
                self.send_stanza(conn, &reply);
            }
        }
        blocked
    }

    pub(super) fn blocking_iq(
        &mut self,
        conn: ConnId,
        sender: &FullJid,
        iq: &Element,
        payload: &Element,
    ) {
        let user = sender.bare();
        match (payload.name.as_str(), IqType::of(iq)) {
            ("blocklist", Some(IqType::Get)) => {
                let Some(acc) = self.sm.account(&user) else {
                    return;
                };
                let mut list: Vec<&String> = acc.blocklist.iter().collect();
                list.sort();
                let mut q = Element::new(ns::BLOCKING, "blocklist");
                for j in list {
                    q = q.with_child(Element::new(ns::BLOCKING, "item").with_attr("jid", j));
                }
                let reply = iq_result(iq).with_child(q);
                if let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) {
                    s.blocklist_requested = true;
                }
                self.send_stanza(conn, &reply);
            }
            (verb @ ("block" | "unblock"), Some(IqType::Set)) => {
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
                let Some(acc) = self.sm.account(&user) else {
                    return;
                };
                let clear = !block && jids.is_empty();
                // What changes: an item blocked twice is told once.
                let changed: Vec<Jid> = if clear {
                    acc.blocklist
                        .iter()
                        .filter_map(|j| parse_jid(j).ok())
                        .collect()
                } else {
                    jids.iter()
                        .filter(|j| acc.blocklist.contains(j.as_str()) != block)
                        .cloned()
                        .collect()
                };
                let strings: Vec<String> = jids.iter().map(|j| j.as_str().to_owned()).collect();
                let (add, remove) = if block {
                    (strings, Vec::new())
                } else {
                    (Vec::new(), strings)
                };
                let mut then = vec![Deferred::Send(conn, iq_result(iq))];
                then.push(Deferred::BlockPush {
                    user: user.clone(),
                    el: payload.clone(),
                    // Every interested resource, the one that asked too (3.3).
                    except: None,
                });
                // Blocked contacts see the user go offline; unblocked ones
                // that are subscribed see the current presence again.
                for j in changed {
                    let b = j.bare();
                    let subscribed = self
                        .sm
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
                let change = Change::Blocklist {
                    clear,
                    add: add.clone(),
                    remove: remove.clone(),
                };
                self.store_change(
                    &user,
                    Some(change),
                    then,
                    StoreRequest::SetBlocklist {
                        username: username(&user),
                        clear,
                        add,
                        remove,
                    },
                );
            }
            _ => self.reply_error(conn, iq, SE::BadRequest, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
