//! Kontalk's push registration (KONTALK.md part 1 section 5): the client
//! looks through the domain's disco items for one whose disco#info has
//! [`PUSH`] (`push@<domain>` here), asks the domain for the items of the
//! node [`PUSH`] and takes the node of the item `gcm.push.<domain>` as the
//! sender id it registers its device with; then it sends its token to
//! `push@<domain>` (`<register provider='gcm'>TOKEN</register>`, and
//! `<unregister provider='gcm'/>` to stop). The tokens are kept in the store
//! (the legacy server held them in memory only), one per account and
//! provider, and go with the account.

use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

/// Kontalk's push namespace: the feature, the disco node and the payloads.
pub const PUSH: &str = "http://kontalk.org/extensions/presence#push";

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
                let Some(username) = self.conns.get(&conn).and_then(|c| c.auth.user.clone()) else {
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
}
