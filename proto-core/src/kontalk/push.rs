//! Kontalk's push registration (KONTALK.md part 1 section 5): the client
//! looks through the domain's disco items for one whose disco#info has
//! [`PUSH`] (`push@<domain>` here), asks the domain for the items of the
//! node [`PUSH`] and takes the node of the item `gcm.push.<domain>` as the
//! sender id it registers its device with; then it sends its token to
//! `push@<domain>` (`<register provider='gcm'>TOKEN</register>`, and
//! `<unregister provider='gcm'/>` to stop). The tokens are kept in the store
//! (the legacy server held them in memory only), one per account and
//! provider, and go with the account.
//!
//! Delivery (with [`KontalkConfig::push_delivery`](crate::KontalkConfig)):
//! when a message with a body or an end-to-end payload is stored for an
//! account with no session, or kept for a session waiting to be resumed
//! (XEP-0198), the core loads the account's tokens and asks the host for
//! one push per token ([`Event::Push`]), with no content of the message;
//! while those are out, more messages for the account push nothing
//! (collapsed). The host answers each with [`Server::handle_push_done`];
//! a token the provider calls unregistered is deleted, unless the device
//! registered a new one meanwhile.

use crate::effects::{Event, Pending};
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

/// Kontalk's push namespace: the feature, the disco node and the payloads.
pub const PUSH: &str = "http://kontalk.org/extensions/presence#push";

/// Most accounts with pushes out at once; a message for one more pushes
/// nothing (it waits in storage as ever).
const MAX_PENDING: usize = 10_000;

/// One push the host sends (answer with [`Server::handle_push_done`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// The job's number, for the answer.
    pub id: u64,
    /// The account it wakes.
    pub username: String,
    /// The provider the device registered with (`gcm`: Firebase Cloud Messaging).
    pub provider: String,
    /// The device's token.
    pub token: String,
}

/// How a push went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The provider took it.
    Sent,
    /// The provider says the token is no longer registered: it is deleted.
    Unregistered,
    /// It failed for good (after the host's retries); the reason is logged.
    Failed(String),
}

/// The pushes out, by account.
#[derive(Debug, Default)]
pub(crate) struct PushState {
    /// Accounts with a push out: how many of their jobs are (0 while the
    /// tokens load).
    pending: std::collections::HashMap<String, usize>,
    /// Jobs out, by id.
    jobs: std::collections::HashMap<u64, PushJob>,
    next: u64,
    /// XEP-0357 notifications waiting for their app server's answer, by
    /// iq id.
    pub(crate) app_out: std::collections::HashMap<String, (jid::BareJid, crate::store::AppPush)>,
}

/// Whether a message wakes its recipient's device: a `chat` or `normal`
/// message with a body or an end-to-end payload.
pub(crate) fn worth_a_push(el: &Element) -> bool {
    matches!(el.attr("type").unwrap_or("normal"), "chat" | "normal")
        && el
            .elements()
            .any(|c| (c.ns == ns::CLIENT && c.name == "body") || c.ns == ns::E2E)
}

/// Longest provider name taken (`gcm`).
const MAX_PROVIDER: usize = 32;
/// Longest device token taken (FCM tokens are about 160 bytes).
const MAX_TOKEN: usize = 4096;

impl Server {
    /// The sender id clients register with, when push is configured.
    fn push_sender_id(&self) -> Option<&str> {
        self.config.kontalk.push_sender_id.as_deref()
    }

    /// The domain's disco items of the push service: `push@<domain>` among
    /// the domain's items (`node` `None`), the sender id under the node
    /// [`PUSH`]; `None` for a node that is not ours.
    pub(crate) fn push_disco_items(&self, node: Option<&str>) -> Option<Vec<Element>> {
        let item = |jid: String| Element::new(ns::DISCO_ITEMS, "item").with_attr("jid", &jid);
        match (node, self.push_sender_id()) {
            (None, None) => Some(Vec::new()),
            (None, Some(_)) => Some(vec![item(format!("push@{}", self.domain))]),
            (Some(PUSH), Some(sender)) => Some(vec![
                item(format!("gcm.push.{}", self.domain)).with_attr("node", sender)
            ]),
            (Some(_), _) => None,
        }
    }

    /// An iq from a session to `push@<domain>`.
    pub(crate) fn push_iq(&mut self, conn: ConnId, iq: &Element) {
        if self.push_sender_id().is_none() {
            return self.reply_error(conn, iq, SE::ServiceUnavailable, None);
        }
        let Some(payload) = iq.elements().next() else {
            return self.reply_error(conn, iq, SE::BadRequest, None);
        };
        let kind = IqType::of(iq);
        match (payload.ns.as_str(), payload.name.as_str(), kind) {
            (ns::DISCO_INFO, "query", Some(IqType::Get)) if payload.attr("node").is_none() => {
                let q = Element::new(ns::DISCO_INFO, "query")
                    .with_child(
                        Element::new(ns::DISCO_INFO, "identity")
                            .with_attr("category", "component")
                            .with_attr("type", "generic")
                            .with_attr("name", "Push notifications"),
                    )
                    .with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", PUSH));
                self.send_stanza(conn, &iq_result(iq).with_child(q));
            }
            (PUSH, name @ ("register" | "unregister"), Some(IqType::Set)) => {
                let Some(username) = self.conn_user(conn) else {
                    return self.reply_error(conn, iq, SE::NotAuthorized, None);
                };
                let provider = payload.attr("provider").unwrap_or_default();
                if provider.is_empty()
                    || provider.len() > MAX_PROVIDER
                    || !provider
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::BadRequest,
                        Some("the provider is missing or not a name"),
                    );
                }
                let request = if name == "register" {
                    let token = payload.text();
                    let token = token.trim();
                    if token.is_empty() || token.len() > MAX_TOKEN {
                        return self.reply_error(
                            conn,
                            iq,
                            SE::BadRequest,
                            Some("the token is missing or too long"),
                        );
                    }
                    StoreRequest::SetPushToken {
                        username,
                        provider: provider.to_owned(),
                        token: token.to_owned(),
                    }
                } else {
                    StoreRequest::RemovePushToken {
                        username,
                        provider: provider.to_owned(),
                        only: None,
                    }
                };
                self.fx.store(
                    Pending::Push {
                        conn,
                        iq: iq.clone(),
                    },
                    request,
                );
            }
            _ => self.reply_error(conn, iq, SE::ServiceUnavailable, None),
        }
    }

    /// A message for `username` was stored (no session) or kept for a
    /// session waiting to be resumed: a push, unless one is out already.
    /// `apps`: the account's XEP-0357 registrations when the caller has
    /// them (else those of the account in memory).
    pub(crate) fn push_for(
        &mut self,
        bare: &jid::BareJid,
        el: &Element,
        apps: Option<Vec<crate::store::AppPush>>,
    ) {
        let Some(username) = bare.node().map(|n| n.as_str()) else {
            return;
        };
        if !worth_a_push(el) {
            return;
        }
        // A device connected (not only waiting to be resumed) is awake.
        let awake = self
            .sm
            .sessions_of(bare)
            .iter()
            .any(|c| self.conns.get(c).is_some_and(|c| !c.detached));
        if awake {
            return;
        }
        // Standard clients' app servers (XEP-0357), each time.
        self.app_push_notify(bare, el, apps);
        if !self.config.kontalk.push_delivery
            || self.push_sender_id().is_none()
            || self.push.pending.contains_key(username)
        {
            return;
        }
        if self.push.pending.len() >= MAX_PENDING {
            log::warn!("push: {MAX_PENDING} accounts have pushes out; none for {username}");
            return;
        }
        self.push.pending.insert(username.to_owned(), 0);
        self.fx.store(
            Pending::PushTokens(username.to_owned()),
            StoreRequest::LoadPushTokens {
                username: username.to_owned(),
            },
        );
    }

    /// The account's tokens: a push to each.
    pub(crate) fn push_tokens_loaded(&mut self, username: String, reply: StoreReply) {
        let tokens = match reply {
            StoreReply::PushTokens(tokens) => tokens,
            _ => Vec::new(),
        };
        if tokens.is_empty() {
            self.push.pending.remove(&username);
            return;
        }
        self.push.pending.insert(username.clone(), tokens.len());
        for (provider, token) in tokens {
            self.push.next += 1;
            let job = PushJob {
                id: self.push.next,
                username: username.clone(),
                provider,
                token,
            };
            self.push.jobs.insert(job.id, job.clone());
            self.counters.pushes += 1;
            self.fx.push(Event::Push(job));
        }
    }

    /// The host sent (or gave up on) the push `id`.
    pub fn handle_push_done(&mut self, id: u64, outcome: PushOutcome) {
        let Some(job) = self.push.jobs.remove(&id) else {
            return;
        };
        match outcome {
            PushOutcome::Sent => {}
            PushOutcome::Unregistered => {
                log::info!(
                    "push: the {} token of {} is no longer registered; deleted",
                    job.provider,
                    job.username
                );
                self.fx.store(
                    Pending::Ignore("the token stays until the next push finds it unregistered"),
                    StoreRequest::RemovePushToken {
                        username: job.username.clone(),
                        provider: job.provider.clone(),
                        only: Some(job.token.clone()),
                    },
                );
            }
            PushOutcome::Failed(why) => {
                log::warn!("push: to a device of {} failed: {why}", job.username)
            }
        }
        if let Some(left) = self.push.pending.get_mut(&job.username) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.push.pending.remove(&job.username);
            }
        }
    }

    /// The store kept (or forgot) a push token: the client gets its result
    /// once it is durable.
    pub(crate) fn push_stored(&mut self, conn: ConnId, iq: Element, reply: StoreReply) {
        match reply {
            StoreReply::Done(_) => self.send_stanza(conn, &iq_result(&iq)),
            _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PUSH;
    use crate::ns;
    use crate::testing::{answer, test_tls, Fixture};
    use crate::Config;

    fn fixture(sender: Option<&str>) -> Fixture {
        let mut config = Config {
            require_tls: false,
            ..Config::default()
        };
        config.kontalk.push_sender_id = sender.map(str::to_owned);
        let mut h = Fixture::with_config(config, &test_tls(), [3; 32]);
        h.store.add_account("alice", "secret");
        h
    }

    #[test]
    fn the_kontalk_client_finds_the_sender_id_and_its_token_is_kept_until_unregistered() {
        let mut h = fixture(Some("123456789012"));
        let a = h.session("alice", "secret", "phone");
        // Its discovery, step by step (KONTALK.md part 1 section 5).
        h.send(
            a,
            "<iq to='localhost' type='get' id='i'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        );
        let got = h.stanzas(a);
        let (items, error) = answer(&got, "i");
        assert_eq!(error, None);
        let jids: Vec<&str> = items
            .child(ns::DISCO_ITEMS, "query")
            .unwrap()
            .elements()
            .filter_map(|i| i.attr("jid"))
            .collect();
        assert_eq!(jids, ["push@localhost"]);
        h.send(
            a,
            "<iq to='push@localhost' type='get' id='f'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let got = h.stanzas(a);
        let (info, error) = answer(&got, "f");
        assert_eq!(error, None);
        assert_eq!(info.attr("from"), Some("push@localhost"));
        let q = info.child(ns::DISCO_INFO, "query").unwrap();
        assert!(q
            .elements()
            .any(|f| f.name == "feature" && f.attr("var") == Some(PUSH)));
        h.send(
            a,
            format!(
                "<iq to='localhost' type='get' id='n'><query xmlns='http://jabber.org/protocol/disco#items' node='{PUSH}'/></iq>"
            ),
        );
        let got = h.stanzas(a);
        let (node, error) = answer(&got, "n");
        assert_eq!(error, None);
        let item = node
            .child(ns::DISCO_ITEMS, "query")
            .and_then(|q| q.child(ns::DISCO_ITEMS, "item"))
            .unwrap_or_else(|| panic!("{node:?}"));
        assert_eq!(item.attr("jid"), Some("gcm.push.localhost"));
        assert_eq!(item.attr("node"), Some("123456789012"));

        // Registered: durable before the result, replaced by a new token.
        for (id, token) in [("r1", "first-token"), ("r2", " second-token\n")] {
            h.send(
                a,
                format!(
                    "<iq to='push@localhost' type='set' id='{id}'><register xmlns='{PUSH}' provider='gcm'>{token}</register></iq>"
                ),
            );
            let got = h.stanzas(a);
            let (reply, error) = answer(&got, id);
            assert_eq!(error, None, "{reply:?}");
            assert_eq!(reply.attr("type"), Some("result"));
            assert_eq!(reply.attr("from"), Some("push@localhost"));
        }
        assert_eq!(
            h.store.push_tokens.get(&("alice".into(), "gcm".into())),
            Some(&"second-token".to_owned())
        );
        // Nonsense is refused and changes nothing.
        for (id, payload) in [
            ("b1", format!("<register xmlns='{PUSH}' provider='gcm'/>")),
            ("b2", format!("<register xmlns='{PUSH}'>t</register>")),
            (
                "b3",
                format!("<register xmlns='{PUSH}' provider='g c m'>t</register>"),
            ),
            ("b4", format!("<unregister xmlns='{PUSH}'/>")),
        ] {
            h.send(
                a,
                format!("<iq to='push@localhost' type='set' id='{id}'>{payload}</iq>"),
            );
            assert_eq!(
                answer(&h.stanzas(a), id).1.as_deref(),
                Some("bad-request"),
                "{payload}"
            );
        }
        h.send(
            a,
            format!("<iq to='push@localhost' type='get' id='g'><register xmlns='{PUSH}' provider='gcm'>t</register></iq>"),
        );
        assert_eq!(
            answer(&h.stanzas(a), "g").1.as_deref(),
            Some("service-unavailable")
        );
        assert_eq!(h.store.push_tokens.len(), 1);

        h.send(
            a,
            format!("<iq to='push@localhost' type='set' id='u'><unregister xmlns='{PUSH}' provider='gcm'/></iq>"),
        );
        assert_eq!(answer(&h.stanzas(a), "u").1, None);
        assert!(h.store.push_tokens.is_empty());
    }

    #[test]
    fn without_a_sender_id_no_push_is_offered() {
        let mut h = fixture(None);
        let a = h.session("alice", "secret", "phone");
        h.send(
            a,
            "<iq to='localhost' type='get' id='i'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        );
        let got = h.stanzas(a);
        let (items, _) = answer(&got, "i");
        assert_eq!(
            items
                .child(ns::DISCO_ITEMS, "query")
                .unwrap()
                .elements()
                .count(),
            0
        );
        h.send(
            a,
            format!("<iq to='localhost' type='get' id='n'><query xmlns='http://jabber.org/protocol/disco#items' node='{PUSH}'/></iq>"),
        );
        assert_eq!(
            answer(&h.stanzas(a), "n").1.as_deref(),
            Some("item-not-found")
        );
        h.send(
            a,
            format!("<iq to='push@localhost' type='set' id='r'><register xmlns='{PUSH}' provider='gcm'>t</register></iq>"),
        );
        assert_eq!(
            answer(&h.stanzas(a), "r").1.as_deref(),
            Some("service-unavailable")
        );
        assert!(h.store.push_tokens.is_empty());
    }

    #[test]
    fn a_failed_write_answers_internal_server_error() {
        let mut h = fixture(Some("42"));
        let a = h.session("alice", "secret", "phone");
        h.fail_next(|r| matches!(r, crate::StoreRequest::SetPushToken { .. }));
        h.send(
            a,
            format!("<iq to='push@localhost' type='set' id='r'><register xmlns='{PUSH}' provider='gcm'>t</register></iq>"),
        );
        assert_eq!(
            answer(&h.stanzas(a), "r").1.as_deref(),
            Some("internal-server-error")
        );
    }

    fn delivering(h: &mut Fixture) {
        let mut config = h.server.config().clone();
        config.kontalk.push_delivery = true;
        h.server.reconfigure(config);
    }

    fn message(h: &mut Fixture, from: crate::ConnId, body: &str) {
        h.send(
            from,
            format!("<message to='alice@localhost' type='chat'><body>{body}</body></message>"),
        );
        h.pump();
    }

    #[test]
    fn a_message_for_an_offline_account_pushes_once_per_device_while_one_is_out() {
        let mut h = fixture(Some("42"));
        delivering(&mut h);
        h.store.add_account("bob", "secret");
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "device-1".into());
        let b = h.session("bob", "secret", "laptop");
        message(&mut h, b, "one");
        assert_eq!(h.store.offline.len(), 1);
        assert_eq!(h.pushes.len(), 1, "{:?}", h.pushes);
        let job = h.pushes[0].clone();
        assert_eq!(
            (
                job.username.as_str(),
                job.provider.as_str(),
                job.token.as_str()
            ),
            ("alice", "gcm", "device-1")
        );
        // Collapsed while it is out; chat states push nothing.
        message(&mut h, b, "two");
        h.send(
            b,
            "<message to='alice@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        h.pump();
        assert_eq!(h.pushes.len(), 1);
        h.server.handle_push_done(job.id, super::PushOutcome::Sent);
        h.pump();
        message(&mut h, b, "three");
        assert_eq!(h.pushes.len(), 2);
        // A failure is not a reason to delete the token.
        let job = h.pushes[1].clone();
        h.server
            .handle_push_done(job.id, super::PushOutcome::Failed("503".into()));
        h.pump();
        assert_eq!(h.store.push_tokens.len(), 1);
        // Online, nothing is pushed.
        let _a = h.session("alice", "secret", "phone");
        message(&mut h, b, "four");
        assert_eq!(h.pushes.len(), 2);
    }

    #[test]
    fn an_unregistered_token_is_deleted_unless_a_new_one_replaced_it() {
        let mut h = fixture(Some("42"));
        delivering(&mut h);
        h.store.add_account("bob", "secret");
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "old".into());
        let b = h.session("bob", "secret", "laptop");
        message(&mut h, b, "one");
        let job = h.pushes.pop().expect("a push");
        h.server
            .handle_push_done(job.id, super::PushOutcome::Unregistered);
        h.pump();
        assert!(h.store.push_tokens.is_empty());
        // No token: no push, and nothing stays pending.
        message(&mut h, b, "two");
        assert!(h.pushes.is_empty());
        // A token replaced while its push was out stays.
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "first".into());
        message(&mut h, b, "three");
        let job = h.pushes.pop().expect("a push");
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "second".into());
        h.server
            .handle_push_done(job.id, super::PushOutcome::Unregistered);
        h.pump();
        assert_eq!(
            h.store.push_tokens.get(&("alice".into(), "gcm".into())),
            Some(&"second".to_owned())
        );
        // An answer for a job that is not out changes nothing.
        h.server
            .handle_push_done(job.id, super::PushOutcome::Unregistered);
        h.pump();
        assert_eq!(h.store.push_tokens.len(), 1);
    }

    #[test]
    fn without_delivery_configured_nothing_is_pushed() {
        let mut h = fixture(Some("42"));
        h.store.add_account("bob", "secret");
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "device".into());
        let b = h.session("bob", "secret", "laptop");
        message(&mut h, b, "one");
        assert_eq!(h.store.offline.len(), 1);
        assert!(h.pushes.is_empty());
    }

    #[test]
    fn a_session_waiting_to_be_resumed_gets_a_push() {
        let mut h = fixture(Some("42"));
        delivering(&mut h);
        h.store.add_account("bob", "secret");
        h.store
            .push_tokens
            .insert(("alice".into(), "gcm".into()), "device".into());
        let a = h.session("alice", "secret", "phone");
        h.send(a, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        h.send(a, "<presence/>");
        let _ = h.stanzas(a);
        let b = h.session("bob", "secret", "laptop");
        message(&mut h, b, "while awake");
        assert!(h.pushes.is_empty(), "a connected phone is awake");
        // The phone's connection drops: its session waits to be resumed.
        h.server.handle_eof(h.now, a);
        h.pump();
        message(&mut h, b, "while asleep");
        assert_eq!(h.pushes.len(), 1, "{:?}", h.pushes);
        assert_eq!(h.pushes[0].token, "device");
    }
}
