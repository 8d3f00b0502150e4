//! Kontalk's service addresses and keys (KONTALK.md part 1 sections 4 and
//! 5): contact match at `probe@<domain>`, the server list at
//! `network@<domain>`, groups through `multicast@<domain>` (XEP-0033), and
//! the keys of `urn:xmpp:pubkey:2`. Every answer comes from the address the
//! request was sent to: the client drops replies from any other.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use jid::{FullJid, Jid};

use super::register::is_user_id;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::xml::{Element, Node};

/// Public keys between users (`urn:xmpp:pubkey:2`).
pub const PUBKEY: &str = "urn:xmpp:pubkey:2";
/// Contact match.
pub const ROSTER_MATCH: &str = "http://kontalk.org/extensions/roster";
/// The server list.
pub const SERVERLIST: &str = "http://kontalk.org/extensions/serverlist";
/// Ad-hoc commands (XEP-0050).
pub const COMMANDS: &str = "http://jabber.org/protocol/commands";
/// Extended stanza addressing (XEP-0033).
pub const ADDRESS: &str = "http://jabber.org/protocol/address";

/// Most JIDs one contact match may ask about (the client sends 500 at most).
pub const MAX_MATCH: usize = 500;
/// Most recipients of one group message.
pub const MAX_RECIPIENTS: usize = 100;

/// A service address of this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// `probe@`: contact match.
    Probe,
    /// `network@`: the server list.
    Network,
    /// `multicast@`: group messages.
    Multicast,
    /// `push@`: push registrations.
    Push,
}

/// The service `jid` names on `domain`, if it names one (a bare JID).
pub(crate) fn service_of(jid: &Jid, domain: &str) -> Option<Service> {
    if jid.resource().is_some() || jid.domain().as_str() != domain {
        return None;
    }
    match jid.node()?.as_str() {
        "probe" => Some(Service::Probe),
        "network" => Some(Service::Network),
        "multicast" => Some(Service::Multicast),
        "push" => Some(Service::Push),
        _ => None,
    }
}

/// What waits on a store answer of a service.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A contact match: which of the asked accounts exist.
    Match {
        conn: ConnId,
        iq: Element,
        /// The users asked about, in order.
        asked: Vec<String>,
    },
}

impl Waiting {
    /// What the core does when the request fails (for the log line).
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Match { .. } => "the client got internal-server-error",
        }
    }
}

impl Server {
    /// An iq from a session to one of the service addresses.
    pub(crate) fn service_iq(&mut self, conn: ConnId, service: Service, iq: &Element) {
        if service == Service::Push {
            return self.push_iq(conn, iq);
        }
        let payload = iq.elements().next();
        let get = IqType::of(iq) == Some(IqType::Get);
        match (service, payload.map(|p| (p.ns.as_str(), p.name.as_str()))) {
            (Service::Probe, Some((ROSTER_MATCH, "query"))) if get => {
                let query = payload.expect("matched");
                let items: Vec<&Element> = query
                    .elements()
                    .filter(|i| i.is(ROSTER_MATCH, "item"))
                    .collect();
                if items.len() > MAX_MATCH {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::PolicyViolation,
                        Some("at most 500 items per request"),
                    );
                }
                // The network's users are ours (this server is the network
                // until Net links others): only user ids of this domain.
                let domain = self.domain.as_str();
                let mut usernames: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.attr("jid"))
                    .filter_map(|j| j.split_once('@'))
                    .filter(|(node, d)| d.eq_ignore_ascii_case(domain) && is_user_id(node))
                    .map(|(node, _)| node.to_owned())
                    .collect();
                usernames.sort();
                usernames.dedup();
                self.fx.store(
                    Pending::KontalkService(Waiting::Match {
                        conn,
                        iq: iq.clone(),
                        asked: usernames.clone(),
                    }),
                    StoreRequest::ExistingAccounts { usernames },
                );
            }
            (Service::Network, Some((COMMANDS, "command")))
                if payload.and_then(|p| p.attr("node")) == Some("serverlist") =>
            {
                let Some(key) = self.kontalk.key.clone() else {
                    return self.reply_error(conn, iq, SE::ServiceUnavailable, None);
                };
                // This server (by its host in a network), and the network's
                // other servers whose key is known.
                let (host, others) = self
                    .net_servers()
                    .unwrap_or((self.domain.as_str(), Vec::new()));
                let item = |node: &str, fpr: &str| {
                    Element::new(SERVERLIST, "item")
                        .with_attr("node", node)
                        .with_attr("fingerprint", fpr)
                };
                let mut list = Element::new(SERVERLIST, "serverlist")
                    .with_child(item(host, &key.fingerprint()));
                for (node, fpr) in others {
                    list = list.with_child(item(node, fpr));
                }
                let command = Element::new(COMMANDS, "command")
                    .with_attr("node", "serverlist")
                    .with_attr("status", "completed")
                    .with_child(list);
                self.send_stanza(conn, &iq_result(iq).with_child(command));
            }
            _ => self.reply_error(conn, iq, SE::ServiceUnavailable, None),
        }
    }

    /// The store answered a service's request.
    pub(crate) fn kontalk_service_stored(&mut self, waiting: Waiting, reply: StoreReply) {
        match waiting {
            Waiting::Match { conn, iq, asked } => {
                let StoreReply::Existing(found) = reply else {
                    return self.reply_error(conn, &iq, SE::InternalServerError, None);
                };
                // The whole network: the accounts here, and those the
                // directory places on the other servers.
                let found: Vec<String> = asked
                    .into_iter()
                    .filter(|u| found.contains(u) || self.net_home(u).is_some())
                    .collect();
                let mut q = Element::new(ROSTER_MATCH, "query");
                for user in found {
                    q = q.with_child(
                        Element::new(ROSTER_MATCH, "item")
                            .with_attr("jid", &format!("{user}@{}", self.domain)),
                    );
                }
                self.send_stanza(conn, &iq_result(&iq).with_child(q));
            }
        }
    }

    /// A message to `multicast@<domain>` (XEP-0033): a copy to each `to`,
    /// `cc` and `bcc` address, as if the sender had sent it there, with the
    /// addresses marked delivered and the `bcc` ones left out; the rest of
    /// the message (a Kontalk group payload) untouched.
    pub(crate) fn multicast(&mut self, conn: ConnId, sender: &FullJid, el: Element) {
        let Some(addresses) = el.child(ADDRESS, "addresses") else {
            return self.reply_error(conn, &el, SE::BadRequest, Some("no addresses"));
        };
        let mut targets = Vec::new();
        let mut header = Element::new(ADDRESS, "addresses");
        for a in addresses.elements().filter(|a| a.is(ADDRESS, "address")) {
            let ty = a.attr("type").unwrap_or_default();
            if !matches!(ty, "to" | "cc" | "bcc") {
                continue;
            }
            let Some(jid) = a.attr("jid").and_then(|j| self.jids.parse(j).ok()) else {
                return self.reply_error(conn, &el, SE::JidMalformed, None);
            };
            if !targets.contains(&jid) {
                targets.push(jid);
            }
            if ty != "bcc" {
                let mut kept = a.clone();
                kept.set_attr("delivered", Some("true"));
                header = header.with_child(kept);
            }
        }
        if targets.is_empty() {
            return self.reply_error(conn, &el, SE::BadRequest, Some("no recipients"));
        }
        if targets.len() > MAX_RECIPIENTS {
            return self.reply_error(conn, &el, SE::PolicyViolation, Some("too many recipients"));
        }
        let mut base = el;
        base.children
            .retain(|n| !matches!(n, Node::Element(e) if e.is(ADDRESS, "addresses")));
        base.children.push(Node::Element(header));
        for to in targets {
            let mut copy = base.clone();
            copy.set_attr("to", Some(to.as_str()));
            self.outbound_message(conn, sender, to, copy);
        }
    }

    /// `urn:xmpp:pubkey:2` for `owner` (the server's own key when `None`),
    /// from memory: the account is loaded when its iq is served.
    pub(crate) fn pubkey_of(&self, owner: Option<&jid::BareJid>) -> Option<Element> {
        let key = match owner {
            None => self.kontalk.key.as_ref()?.public_bytes(),
            Some(bare) => self.sm.account(bare)?.key.as_ref()?.key.clone(),
        };
        Some(Element::new(PUBKEY, "pubkey").with_text(&B64.encode(key)))
    }

    /// The `<pubkey><print/></pubkey>` every broadcast presence of `owner`
    /// carries (and a subscription request, with the key itself), if it has a key.
    pub(crate) fn pubkey_payload(&self, owner: &jid::BareJid, with_key: bool) -> Option<Element> {
        let key = self.sm.account(owner)?.key.as_ref()?;
        let mut el = Element::new(PUBKEY, "pubkey");
        if with_key {
            el = el.with_child(Element::new(PUBKEY, "key").with_text(&B64.encode(&key.key)));
        }
        Some(el.with_child(Element::new(PUBKEY, "print").with_text(&key.fingerprint)))
    }
}

/// Replaces any `<pubkey/>` of `el` (a client may not send its own) with `payload`.
pub(crate) fn set_pubkey(el: &mut Element, payload: Option<Element>) {
    el.children
        .retain(|n| !matches!(n, Node::Element(e) if e.is(PUBKEY, "pubkey")));
    if let Some(p) = payload {
        el.children.push(Node::Element(p));
    }
}
