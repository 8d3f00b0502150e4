//! Push notifications for standard clients (XEP-0357): a session enables
//! them with its app server's JID, a node and publish options, kept in the
//! store (with the account, loaded with it); on the events that push a
//! Kontalk device (a message with a body or an end-to-end payload stored
//! for an account with no connected session, or kept for a session waiting
//! to be resumed), the server publishes a notification to each app server
//! from the account's bare JID: the summary form with a message count, and
//! the last sender only when [`Config::push_include_sender`] says so
//! (never the body). An app server that answers with an error other than
//! `wait` loses its registration (section 6: the server may disable it).
//!
//! [`Config::push_include_sender`]: crate::Config::push_include_sender

use jid::{BareJid, Jid};

use super::username;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::iq_result;
use crate::store::{AppPush, StoreReply, StoreRequest};
use crate::xml::{Element, Node};

/// Most registrations per account.
const MAX_PER_ACCOUNT: usize = 20;
/// Most publishes waiting for their app server's answer.
const MAX_OUT: usize = 10_000;
/// The longest node taken.
const MAX_NODE: usize = 1024;

/// A change of the registrations, applied once durable.
#[derive(Debug)]
pub(crate) enum AppPushChange {
    Enable(AppPush),
    Disable { jid: String, node: Option<String> },
}

impl AppPushChange {
    /// The store's request that makes the change for `username`.
    fn request(&self, username: String) -> StoreRequest {
        match self {
            AppPushChange::Enable(push) => StoreRequest::SetAppPush {
                username,
                push: push.clone(),
            },
            AppPushChange::Disable { jid, node } => StoreRequest::RemoveAppPush {
                username,
                jid: jid.clone(),
                node: node.clone(),
            },
        }
    }

    /// Applies the change to an account's registrations.
    pub(crate) fn apply(self, list: &mut Vec<AppPush>) {
        match self {
            AppPushChange::Enable(push) => {
                list.retain(|p| !(p.jid == push.jid && p.node == push.node));
                list.push(push);
            }
            AppPushChange::Disable { jid, node } => {
                list.retain(|p| !(p.jid == jid && node.as_ref().is_none_or(|n| *n == p.node)))
            }
        }
    }
}

impl Server {
    /// `<enable/>` or `<disable/>` from a session of `bare`.
    pub(super) fn app_push_iq(
        &mut self,
        conn: ConnId,
        bare: &BareJid,
        iq: &Element,
        payload: &Element,
    ) {
        let Some(jid) = payload
            .attr("jid")
            .and_then(|j| self.jids.parse(j).ok())
            .map(|j| j.to_string())
        else {
            return self.reply_error(
                conn,
                iq,
                SE::BadRequest,
                Some("the app server's jid is missing or not a JID"),
            );
        };
        let node = payload.attr("node").map(str::to_owned);
        if node.as_ref().is_some_and(|n| n.len() > MAX_NODE) {
            return self.reply_error(conn, iq, SE::BadRequest, Some("the node is too long"));
        }
        let change = match payload.name.as_str() {
            "enable" => {
                let Some(node) = node.filter(|n| !n.is_empty()) else {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::BadRequest,
                        Some("enable needs a node (XEP-0357 section 5)"),
                    );
                };
                let count = self.sm.account(bare).map_or(0, |a| a.app_push.len());
                if count >= MAX_PER_ACCOUNT {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::ResourceConstraint,
                        Some("at most 20 push registrations per account"),
                    );
                }
                let options = payload
                    .elements()
                    .find(|x| x.is(ns::DATA, "x"))
                    .map(|x| x.to_xml(ns::CLIENT));
                AppPushChange::Enable(AppPush { jid, node, options })
            }
            _ => AppPushChange::Disable { jid, node },
        };
        self.change_app_push(Some((conn, iq.clone())), bare, change);
    }

    /// Asks the store for `change`; `asked`: the session's iq that gets the
    /// answer once it is durable.
    fn change_app_push(
        &mut self,
        asked: Option<(ConnId, Element)>,
        bare: &BareJid,
        change: AppPushChange,
    ) {
        let request = change.request(username(bare));
        let (conn, iq) = asked.unzip();
        self.fx.store(
            Pending::AppPush {
                conn,
                iq,
                bare: bare.clone(),
                change,
            },
            request,
        );
    }

    /// The store made a change of the registrations durable: memory
    /// follows, the client gets its result.
    pub(crate) fn app_push_stored(
        &mut self,
        conn: Option<ConnId>,
        iq: Option<Element>,
        bare: BareJid,
        change: AppPushChange,
        reply: StoreReply,
    ) {
        match reply {
            StoreReply::Done(_) => {
                if let Some(acc) = self.sm.account_mut(&bare) {
                    change.apply(&mut acc.app_push);
                }
                if let (Some(conn), Some(iq)) = (conn, iq) {
                    self.send_stanza(conn, &iq_result(&iq));
                }
            }
            _ => {
                if let (Some(conn), Some(iq)) = (conn, iq) {
                    self.reply_error(conn, &iq, SE::InternalServerError, None);
                }
            }
        }
    }

    /// A notification to each of `bare`'s app servers (`list`, else the
    /// account's in memory), for `el`.
    pub(crate) fn app_push_notify(
        &mut self,
        bare: &BareJid,
        el: &Element,
        list: Option<Vec<AppPush>>,
    ) {
        let Some(list) = list.or_else(|| self.sm.account(bare).map(|a| a.app_push.clone())) else {
            return;
        };
        let sender = self
            .config
            .push_include_sender
            .then(|| el.attr("from").and_then(|f| self.jids.parse(f).ok()))
            .flatten()
            .map(|f: Jid| f.to_bare().to_string());
        for push in list {
            if self.push.app_out.len() >= MAX_OUT {
                log::warn!("push: {MAX_OUT} notifications wait for their app servers");
                return;
            }
            let id = format!("push-{}", self.random_hex(8));
            let mut form = crate::forms::form("submit", ns::PUSH_SUMMARY).with_child(
                crate::forms::field("message-count", "text-single", None, Some("1")),
            );
            if let Some(sender) = &sender {
                form = form.with_child(crate::forms::field(
                    "last-message-sender",
                    "jid-single",
                    None,
                    Some(sender),
                ));
            }
            let mut pubsub = Element::new(ns::PUBSUB, "pubsub").with_child(
                Element::new(ns::PUBSUB, "publish")
                    .with_attr("node", &push.node)
                    .with_child(
                        Element::new(ns::PUBSUB, "item")
                            .with_child(Element::new(ns::PUSH, "notification").with_child(form)),
                    ),
            );
            if let Some(options) = push
                .options
                .as_deref()
                .and_then(|o| crate::xml::parse_fragment(o, &self.config.limits))
            {
                pubsub.children.push(Node::Element(
                    Element::new(ns::PUBSUB, "publish-options").with_child(options),
                ));
            }
            let iq = Element::new(ns::CLIENT, "iq")
                .with_attr("type", "set")
                .with_attr("id", &id)
                .with_attr("from", &bare.to_string())
                .with_attr("to", &push.jid)
                .with_child(pubsub);
            log::debug!(
                "push: a notification of {bare} to {} ({})",
                push.jid,
                push.node
            );
            self.push.app_out.insert(id, (bare.clone(), push));
            self.counters.pushes += 1;
            self.route(iq);
        }
    }

    /// An answer to a notification: an error other than `wait` disables
    /// the registration. `false` when `iq` answers none.
    pub(super) fn app_push_answer(&mut self, iq: &Element) -> bool {
        let Some(id) = iq.attr("id") else {
            return false;
        };
        let Some((bare, push)) = self.push.app_out.remove(id) else {
            return false;
        };
        let error_type = iq
            .child(ns::CLIENT, "error")
            .and_then(|e| e.attr("type"))
            .unwrap_or("cancel");
        if iq.attr("type") == Some("error") && error_type != "wait" {
            log::info!(
                "push: {} refused a notification of {bare}; its registration is disabled",
                push.jid
            );
            let change = AppPushChange::Disable {
                jid: push.jid,
                node: Some(push.node),
            };
            self.change_app_push(None, &bare, change);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::ns;
    use crate::testing::{answer, test_tls, Fixture};
    use crate::Config;

    fn fixture() -> Fixture {
        let config = Config {
            require_tls: false,
            ..Config::default()
        };
        let mut h = Fixture::with_config(config, &test_tls(), [5; 32]);
        for user in ["alice", "bob"] {
            h.store.add_account(user, "secret");
        }
        h
    }

    const ENABLE: &str = "<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' \
        jid='bob@localhost/app' node='n1'><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='secret'><value>s3cr3t</value></field></x></enable></iq>";

    #[test]
    fn an_app_server_gets_a_notification_per_message_until_it_refuses_one() {
        let mut h = fixture();
        let a = h.session("alice", "secret", "phone");
        h.send(
            a,
            "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let got = h.stanzas(a);
        let (info, _) = answer(&got, "d");
        assert!(info
            .child(ns::DISCO_INFO, "query")
            .unwrap()
            .elements()
            .any(|f| f.attr("var") == Some(ns::PUSH)));
        h.send(
            a,
            "<iq type='set' id='bad'><enable xmlns='urn:xmpp:push:0' jid='bob@localhost/app'/></iq>",
        );
        assert_eq!(
            answer(&h.stanzas(a), "bad").1.as_deref(),
            Some("bad-request")
        );
        h.send(a, ENABLE);
        assert_eq!(answer(&h.stanzas(a), "en").1, None);
        let kept = &h.store.data["alice"].app_push;
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].jid.as_str(), kept[0].node.as_str()),
            ("bob@localhost/app", "n1")
        );
        // The app server (a session here), and alice gone.
        let app = h.session("bob", "secret", "app");
        h.send(app, "<presence/>");
        let laptop = h.session("bob", "secret", "laptop");
        h.server.handle_eof(h.now, a);
        h.pump();
        let _ = h.stanzas(app);
        h.send(
            laptop,
            "<message to='alice@localhost' type='chat'><body>the secret plan</body></message>",
        );
        let got = h.stanzas(app);
        let iq = got
            .iter()
            .find(|e| e.name == "iq")
            .unwrap_or_else(|| panic!("a notification: {got:?}"));
        assert_eq!(iq.attr("from"), Some("alice@localhost"));
        assert_eq!(iq.attr("type"), Some("set"));
        let pubsub = iq.child(ns::PUBSUB, "pubsub").unwrap();
        let publish = pubsub.child(ns::PUBSUB, "publish").unwrap();
        assert_eq!(publish.attr("node"), Some("n1"));
        let form = publish
            .child(ns::PUBSUB, "item")
            .and_then(|i| i.child(ns::PUSH, "notification"))
            .and_then(|n| n.child(ns::DATA, "x"))
            .map(crate::forms::Submitted::read)
            .unwrap();
        assert_eq!(form.form_type(), Some(ns::PUSH_SUMMARY));
        assert_eq!(form.value("message-count"), Some("1"));
        assert!(!form.has("last-message-sender"), "only when configured");
        let options = pubsub
            .child(ns::PUBSUB, "publish-options")
            .and_then(|o| o.child(ns::DATA, "x"))
            .map(crate::forms::Submitted::read)
            .unwrap();
        assert_eq!(options.value("secret"), Some("s3cr3t"));
        let text = iq.to_xml(ns::CLIENT);
        assert!(!text.contains("secret plan"), "no body: {text}");
        // Answered: the next message notifies again.
        let id = iq.attr("id").unwrap().to_owned();
        h.send(
            app,
            format!("<iq type='result' id='{id}' to='alice@localhost'/>"),
        );
        h.send(
            laptop,
            "<message to='alice@localhost' type='chat'><body>two</body></message>",
        );
        let got = h.stanzas(app);
        let iq = got
            .iter()
            .find(|e| e.name == "iq")
            .expect("a second notification");
        // Refused: the registration goes, and nothing more is published.
        let id = iq.attr("id").unwrap().to_owned();
        h.send(
            app,
            format!("<iq type='error' id='{id}' to='alice@localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        );
        assert!(h.store.data["alice"].app_push.is_empty());
        h.send(
            laptop,
            "<message to='alice@localhost' type='chat'><body>three</body></message>",
        );
        assert!(!h.stanzas(app).iter().any(|e| e.name == "iq"));
        assert_eq!(h.store.offline.len(), 3);
    }

    #[test]
    fn disable_forgets_one_node_or_every_node_of_an_app_server() {
        let mut h = fixture();
        let a = h.session("alice", "secret", "phone");
        h.send(a, ENABLE);
        h.send(
            a,
            "<iq type='set' id='e2'><enable xmlns='urn:xmpp:push:0' jid='bob@localhost/app' node='n2'/></iq>",
        );
        assert_eq!(answer(&h.stanzas(a), "e2").1, None);
        assert_eq!(h.store.data["alice"].app_push.len(), 2);
        h.send(
            a,
            "<iq type='set' id='d1'><disable xmlns='urn:xmpp:push:0' jid='bob@localhost/app' node='n1'/></iq>",
        );
        assert_eq!(answer(&h.stanzas(a), "d1").1, None);
        assert_eq!(h.store.data["alice"].app_push.len(), 1);
        h.send(
            a,
            "<iq type='set' id='d2'><disable xmlns='urn:xmpp:push:0' jid='bob@localhost/app'/></iq>",
        );
        assert_eq!(answer(&h.stanzas(a), "d2").1, None);
        assert!(h.store.data["alice"].app_push.is_empty());
    }
}
