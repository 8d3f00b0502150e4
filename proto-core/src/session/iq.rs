//! The one iq dispatcher of the session manager, and the iqs the server
//! answers itself: for its own domain (service discovery, version, time,
//! uptime, ping, registration) and on behalf of its accounts (RFC 6121
//! section 8.5.2.1.3: roster, blocking, vCard, last activity, disco).

use jid::{BareJid, FullJid, Jid};

use super::outbox::Handed;
use super::username;
use crate::address::Bare;
use crate::effects::Pending;
use crate::error::{error_reply, StanzaErrorCondition as SE};
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::timer::rfc3339;
use crate::xml::Element;

/// Who asked, and so where the answer goes.
enum Asker<'a> {
    /// A session's own client: answers go straight back to it.
    Session(ConnId),
    /// A routed iq from `from` (with its session, when it is local):
    /// answers are routed back.
    Routed {
        requester: Option<ConnId>,
        from: &'a Jid,
    },
}

/// Whom an iq the server answers is for.
enum IqTarget<'a> {
    /// The server's own domain.
    Server,
    /// The asking session's own account.
    OwnAccount(&'a FullJid),
    /// Another local account, answered on its behalf.
    Account(&'a BareJid),
}

impl Server {
    /// An iq from a bound session, checked and with `from` stamped.
    pub(super) fn outbound_iq(
        &mut self,
        conn: ConnId,
        sender: &FullJid,
        to: Option<Jid>,
        iq: Element,
    ) {
        let bare = sender.bare();
        let target = match &to {
            None => IqTarget::OwnAccount(sender),
            Some(t) if *t == bare => IqTarget::OwnAccount(sender),
            Some(t) if t.node().is_none() && t.domain().as_str() == self.domain.as_str() => {
                if t.resource().is_some() {
                    return self.reply_error(conn, &iq, SE::ServiceUnavailable, None);
                }
                IqTarget::Server
            }
            Some(t) if self.is_upload_service(t) => return self.upload_iq(conn, &iq),
            Some(t) => {
                if let Some(service) = crate::kontalk::services::service_of(t, self.domain.as_str())
                {
                    return self.service_iq(conn, service, &iq);
                }
                if !self.outbound_blocked(conn, &bare, t, &iq) {
                    self.route(iq);
                }
                return;
            }
        };
        self.serve_iq(Asker::Session(conn), target, &iq);
    }

    /// An iq routed to the server's own domain (from another server):
    /// answered as a session's would be, the answer routed back.
    pub(super) fn routed_server_iq(&mut self, iq: &Element) {
        let Some(from) = iq.attr("from").and_then(|f| self.jids.parse(f).ok()) else {
            return;
        };
        self.serve_iq(
            Asker::Routed {
                requester: None,
                from: &from,
            },
            IqTarget::Server,
            iq,
        );
    }

    /// An iq routed to a local account's bare or full JID.
    pub(super) fn inbound_iq(&mut self, bare: &BareJid, to: &Jid, from: &Jid, iq: Element) {
        let request = IqType::of(&iq).is_some_and(IqType::is_request);
        // An app server's answer to a notification (XEP-0357).
        if !request && to.resource().is_none() && self.app_push_answer(&iq) {
            return;
        }
        if let Ok(full) = to.clone().try_into_full() {
            match self.find_session(&full) {
                Some(target) => {
                    let mut buf = Vec::with_capacity(256);
                    iq.write_to(&mut buf, ns::CLIENT);
                    self.hand(target, &buf, Handed::Iq);
                }
                None if request => self.bounce_routed(&iq, SE::ServiceUnavailable),
                None => {}
            }
            return;
        }
        let requester = self.full_jid_conn(from);
        self.serve_iq(
            Asker::Routed { requester, from },
            IqTarget::Account(bare),
            &iq,
        );
    }

    /// The dispatcher: an iq the server answers, for `target`.
    fn serve_iq(&mut self, asker: Asker<'_>, target: IqTarget<'_>, iq: &Element) {
        let Some(ty) = IqType::of(iq).filter(|t| t.is_request()) else {
            return;
        };
        let Some(payload) = iq.elements().next().cloned() else {
            return;
        };
        let get = ty == IqType::Get;
        let own = match (&asker, &target) {
            (Asker::Session(conn), IqTarget::OwnAccount(sender)) => Some((*conn, *sender)),
            _ => None,
        };
        match (payload.ns.as_str(), payload.name.as_str()) {
            (ns::ROSTER, "query") if own.is_some() => {
                let (conn, sender) = own.expect("checked");
                self.roster_iq(conn, sender, iq, &payload)
            }
            // RFC 6121 2.1.5, 2.3.3: nobody reads or changes another account's roster.
            (ns::ROSTER, "query") if matches!(target, IqTarget::Account(_)) => {
                self.iq_error(&asker, iq, SE::Forbidden)
            }
            (ns::PRIVATE, "query") => match own {
                Some((conn, sender)) => self.private_iq(conn, &sender.bare(), iq, &payload),
                // XEP-0049 section 3: nobody reads another account's.
                None => self.iq_error(&asker, iq, SE::Forbidden),
            },
            (ns::MAM, _) => match own {
                Some((conn, sender)) => self.archive_iq(conn, &sender.bare(), iq, &payload),
                // Only an account's own sessions read its archive.
                None => self.iq_error(&asker, iq, SE::Forbidden),
            },
            (ns::PUSH, "enable" | "disable") if own.is_some() && !get => {
                let (conn, sender) = own.expect("checked");
                self.app_push_iq(conn, &sender.bare(), iq, &payload)
            }
            (ns::CARBONS, _) if own.is_some() && !get => {
                let (conn, _) = own.expect("checked");
                self.carbons_iq(conn, iq, &payload)
            }
            (ns::BLOCKING, _) if own.is_some() => {
                let (conn, sender) = own.expect("checked");
                self.blocking_iq(conn, sender, iq, &payload)
            }
            (ns::VCARD, "vCard") => match (own, &asker, &target) {
                (Some((conn, sender)), ..) => {
                    let bare = sender.bare();
                    if get {
                        self.load_vcard(conn, iq.clone(), username(&bare), true);
                    } else {
                        self.set_vcard(conn, iq, &bare, &payload);
                    }
                }
                (
                    None,
                    Asker::Routed {
                        requester: Some(conn),
                        ..
                    },
                    IqTarget::Account(bare),
                ) if get => self.load_vcard(*conn, iq.clone(), username(bare), false),
                _ => self.iq_error(&asker, iq, SE::ServiceUnavailable),
            },
            (ns::LAST, "query") if get => match &target {
                IqTarget::Server => {
                    // XEP-0012 section 5: the server's uptime.
                    let uptime = self.clock.uptime().unwrap_or(0);
                    self.iq_reply(&asker, iq, Some(last_query(uptime)));
                }
                IqTarget::OwnAccount(_) => self.iq_reply(&asker, iq, Some(last_query(0))),
                IqTarget::Account(bare) => self.last_activity(&asker, bare, iq),
            },
            (ns::PING, "ping") if get => self.iq_reply(&asker, iq, None),
            // Kontalk: the key of an account (answered by the server, which
            // holds it), or the server's own.
            (crate::kontalk::services::PUBKEY, "pubkey") if get => {
                let owner = match &target {
                    IqTarget::Server => None,
                    IqTarget::OwnAccount(s) => Some(s.bare()),
                    IqTarget::Account(b) => Some((*b).clone()),
                };
                match self.pubkey_of(owner.as_ref()) {
                    Some(key) => self.iq_reply(&asker, iq, Some(key)),
                    None => self.iq_error(&asker, iq, SE::ItemNotFound),
                }
            }
            (ns::DISCO_INFO, "query") if get => match (&target, payload.attr("node")) {
                (IqTarget::Server, None) => {
                    let q = self.server_disco_info();
                    self.iq_reply(&asker, iq, Some(q));
                }
                (IqTarget::Server, Some(_)) => self.iq_error(&asker, iq, SE::ItemNotFound),
                (_, None) => {
                    let q = account_disco_info(self.config.archive);
                    self.iq_reply(&asker, iq, Some(q))
                }
                (_, Some(_)) => self.iq_error(&asker, iq, SE::ServiceUnavailable),
            },
            (ns::DISCO_ITEMS, "query") if get => match (&target, payload.attr("node")) {
                (IqTarget::Server, node) => match self.server_disco_items(node) {
                    Some(items) => {
                        let mut q = Element::new(ns::DISCO_ITEMS, "query");
                        if let Some(node) = node {
                            q = q.with_attr("node", node);
                        }
                        for item in items {
                            q = q.with_child(item);
                        }
                        self.iq_reply(&asker, iq, Some(q))
                    }
                    None => self.iq_error(&asker, iq, SE::ItemNotFound),
                },
                (IqTarget::OwnAccount(_), _) => {
                    self.iq_reply(&asker, iq, Some(Element::new(ns::DISCO_ITEMS, "query")))
                }
                (IqTarget::Account(_), _) => self.iq_error(&asker, iq, SE::ServiceUnavailable),
            },
            (ns::VERSION, "query") if get && matches!(target, IqTarget::Server) => {
                let q = Element::new(ns::VERSION, "query")
                    .with_child(
                        Element::new(ns::VERSION, "name").with_text(&self.config.software_name),
                    )
                    .with_child(
                        Element::new(ns::VERSION, "version")
                            .with_text(&self.config.software_version),
                    );
                self.iq_reply(&asker, iq, Some(q));
            }
            (ns::TIME, "time") if get && matches!(target, IqTarget::Server) => {
                match self.clock.unix_now() {
                    Some(now) => {
                        let q = Element::new(ns::TIME, "time")
                            .with_child(Element::new(ns::TIME, "tzo").with_text("+00:00"))
                            .with_child(Element::new(ns::TIME, "utc").with_text(&rfc3339(now)));
                        self.iq_reply(&asker, iq, Some(q));
                    }
                    None => self.iq_error(&asker, iq, SE::ServiceUnavailable),
                }
            }
            // XEP-0077 after login (a password change, a removal, and
            // Kontalk's key rollover and backup, which the client addresses
            // to the domain): the session's own account, whatever the
            // registration of new accounts.
            (ns::REGISTER, "query") => match (&asker, &target) {
                (Asker::Session(conn), IqTarget::OwnAccount(_) | IqTarget::Server) => {
                    self.register_iq(*conn, iq)
                }
                _ => self.iq_error(&asker, iq, SE::ServiceUnavailable),
            },
            _ => self.iq_error(&asker, iq, SE::ServiceUnavailable),
        }
    }

    /// XEP-0077 on a bound session: its own account.
    fn register_iq(&mut self, conn: ConnId, iq: &Element) {
        let user = self.conn_user(conn);
        self.on_register(conn, iq.clone(), user.as_deref());
    }

    /// The result of `iq`, with `payload`, to whoever asked.
    fn iq_reply(&mut self, asker: &Asker<'_>, iq: &Element, payload: Option<Element>) {
        let mut reply = iq_result(iq);
        if let Some(p) = payload {
            reply = reply.with_child(p);
        }
        match asker {
            Asker::Session(conn) => self.send_stanza(*conn, &reply),
            Asker::Routed { .. } => self.route(reply),
        }
    }

    /// An error for `iq`, to whoever asked.
    fn iq_error(&mut self, asker: &Asker<'_>, iq: &Element, cond: SE) {
        match asker {
            Asker::Session(conn) => self.reply_error(*conn, iq, cond, None),
            Asker::Routed { .. } => {
                if let Some(reply) = error_reply(iq, cond, None) {
                    self.route(reply);
                }
            }
        }
    }

    /// The domain's disco items (of `node`): its services; `None` for a
    /// node it does not have.
    fn server_disco_items(&self, node: Option<&str>) -> Option<Vec<Element>> {
        let mut items = self.push_disco_items(node)?;
        if node.is_none() {
            items.extend(self.upload_disco_item());
        }
        Some(items)
    }

    fn server_disco_info(&self) -> Element {
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
            ns::CARBONS,
            ns::PRIVATE,
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
        q
    }

    /// XEP-0012 for another local account: only for a contact it shares
    /// its presence with; seconds since its last session, or 0 while
    /// online.
    fn last_activity(&mut self, asker: &Asker<'_>, bare: &BareJid, iq: &Element) {
        let Asker::Routed { from, .. } = asker else {
            return;
        };
        let allowed = self
            .sm
            .account(bare)
            .and_then(|a| a.roster.get(from.bare().as_str()))
            .is_some_and(|i| i.subscription.from);
        if !allowed {
            return self.iq_error(asker, iq, SE::Forbidden);
        }
        if self.available_resources(bare).is_empty() {
            self.fx.store(
                Pending::Last(iq.clone()),
                StoreRequest::LoadLastActivity {
                    username: username(bare),
                },
            );
        } else {
            self.iq_reply(asker, iq, Some(last_query(0)));
        }
    }

    /// The store answered with an account's last activity.
    pub(crate) fn last_loaded(&mut self, iq: Element, reply: StoreReply) {
        let (seconds, status) = match reply {
            StoreReply::LastActivity(Some((at, status))) => (
                self.clock
                    .unix_now()
                    .map(|now| now.saturating_sub(at))
                    .unwrap_or(0),
                status,
            ),
            StoreReply::LastActivity(None) => return self.bounce_routed(&iq, SE::ItemNotFound),
            _ => return self.bounce_routed(&iq, SE::InternalServerError),
        };
        let mut q = last_query(seconds);
        if !status.is_empty() {
            q = q.with_text(&status);
        }
        let reply = iq_result(&iq).with_child(q);
        self.route(reply);
    }
}

/// The disco#info of an account (XEP-0030): a registered account, with
/// its archive (XEP-0313) when there is one.
fn account_disco_info(archive: bool) -> Element {
    let mut q = Element::new(ns::DISCO_INFO, "query").with_child(
        Element::new(ns::DISCO_INFO, "identity")
            .with_attr("category", "account")
            .with_attr("type", "registered"),
    );
    let mut features = vec![ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PUSH];
    if archive {
        features.extend([ns::MAM, ns::MAM_EXTENDED, ns::SID]);
    }
    for f in features {
        q = q.with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", f));
    }
    q
}

fn last_query(seconds: u64) -> Element {
    Element::new(ns::LAST, "query").with_attr("seconds", &seconds.to_string())
}
