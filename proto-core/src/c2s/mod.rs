//! Client streams (C2S): the negotiation of RFC 6120 on top of the stream
//! layer: the header and features, STARTTLS, SASL ([`sasl`]), in-band
//! registration ([`register`], XEP-0077) and resource binding ([`bind`]).
//! A bound session's stanzas go to the session manager.

mod bind;
mod register;
mod sasl;

use std::time::Instant;

use crate::address::Bare;
use crate::error::{error_reply, StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::guard::Admit;
use crate::ns;
use crate::sasl::Mechanism;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, StanzaKind};
use crate::stream::header::check_version;
use crate::timer::TimerKind;
use crate::xml::{Element, StreamHeader};
use crate::Event;

pub(crate) use sasl::Sasl;

/// What client negotiation keeps about a connection.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    /// The authenticated username (node part).
    pub(crate) user: Option<String>,
    /// The SASL exchange in progress (boxed: a session that is done with
    /// SASL does not carry a SCRAM state's room).
    pub(crate) sasl: Option<Box<Sasl>>,
    /// Failed SASL attempts on this connection.
    pub(crate) failures: u32,
    /// The account the running exchange is for, once the client named it
    /// (for the log of a failed login).
    pub(crate) attempt: Option<String>,
}

impl Server {
    /// The client's (first or restarted) stream header.
    pub(crate) fn on_client_header(&mut self, id: ConnId, h: StreamHeader) {
        let stream_id = self.random_hex(16);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let header = conn
            .stream
            .header_bytes(&stream_id, &self.config.domain, h.from.as_deref());
        self.send_raw(id, &header);
        if let Err((cond, text)) = check_version(&h) {
            self.fail(id, cond, Some(text));
            return;
        }
        let host_ok = match &h.to {
            None => true,
            Some(to) => jid::DomainPart::new(to).is_ok_and(|d| d.as_str() == self.domain.as_str()),
        };
        if !host_ok {
            self.fail(
                id,
                XE::HostUnknown,
                Some("this server does not serve that host"),
            );
            return;
        }
        let features = self.features(id);
        let keepalive = self.config.limits.keepalive_interval;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.stream.set_open();
            conn.timers
                .set(TimerKind::Keepalive, Some(conn.last_output + keepalive));
        }
        self.send_element(id, &features, ns::STREAM);
    }

    /// A stream restart (after STARTTLS or SASL): a new parser from the
    /// next byte on, and no keepalives until the new header.
    fn restart_stream(&mut self, id: ConnId) {
        let limits = &self.config.limits;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.stream.restart(limits);
            conn.timers.set(TimerKind::Keepalive, None);
        }
    }

    fn limits_feature(&self) -> Element {
        let l = &self.config.limits;
        Element::new(ns::STREAM_LIMITS, "limits")
            .with_child(
                Element::new(ns::STREAM_LIMITS, "max-bytes")
                    .with_text(&l.max_stanza_size.to_string()),
            )
            .with_child(
                Element::new(ns::STREAM_LIMITS, "idle-seconds")
                    .with_text(&l.idle_timeout.as_secs().to_string()),
            )
    }

    fn is_secure(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.stream.is_tls())
    }

    fn offered_mechanisms(&self, id: ConnId) -> Vec<Mechanism> {
        if !self.conns.contains_key(&id) {
            return Vec::new();
        }
        let secure = self.is_secure(id);
        // A Kontalk client with its bridge certificate has no password, and
        // would pick SCRAM if it were offered (KONTALK.md section 0).
        if self.bridge_certificate(id).is_some() {
            return vec![Mechanism::External];
        }
        Mechanism::ALL
            .into_iter()
            .filter(|m| match m {
                Mechanism::Plain => secure,
                m if m.is_plus() => secure,
                _ => secure || !self.config.require_tls,
            })
            .collect()
    }

    /// The Kontalk bridge certificate the client presented, if it did.
    pub(crate) fn bridge_certificate(&self, id: ConnId) -> Option<&[u8]> {
        self.conns
            .get(&id)?
            .stream
            .peer_certificate()
            .filter(|der| crate::kontalk::bridge::has_pgp_extension(der))
    }

    /// Whether registration (username/password, or Kontalk's by phone) is
    /// open on this stream.
    fn registration_open(&self, id: ConnId) -> bool {
        (self.config.allow_registration || self.config.kontalk.registration)
            && (self.is_secure(id) || !self.config.require_tls)
    }

    fn features(&mut self, id: ConnId) -> Element {
        let conn = &self.conns[&id];
        let mut f = Element::new(ns::STREAM, "features");
        if conn.auth.user.is_some() {
            f = f
                .with_child(Element::new(ns::ROSTER_VER, "ver"))
                .with_child(Element::new(ns::PRE_APPROVAL, "sub"))
                .with_child(Element::new(ns::BIND, "bind"))
                .with_child(crate::session::csi::feature())
                .with_child(Element::new(ns::SM, "sm"))
                .with_child(
                    Element::new(ns::SESSION, "session")
                        .with_child(Element::new(ns::SESSION, "optional")),
                );
        } else {
            let secure = conn.stream.is_tls();
            if !secure {
                let mut st = Element::new(ns::TLS, "starttls");
                if self.config.require_tls {
                    st = st.with_child(Element::new(ns::TLS, "required"));
                }
                f = f.with_child(st);
            }
            let mechs = self.offered_mechanisms(id);
            if !mechs.is_empty() {
                let plus = mechs.iter().any(|m| m.is_plus());
                let mut m = Element::new(ns::SASL, "mechanisms");
                for mech in mechs {
                    m = m.with_child(Element::new(ns::SASL, "mechanism").with_text(mech.name()));
                }
                f = f.with_child(m);
                // XEP-0440: the binding types, for the -PLUS mechanisms offered.
                if secure && plus {
                    f = f.with_child(
                        Element::new(ns::SASL_CB, "sasl-channel-binding").with_child(
                            Element::new(ns::SASL_CB, "channel-binding")
                                .with_attr("type", "tls-exporter"),
                        ),
                    );
                }
            }
            if self.registration_open(id) {
                f = f.with_child(Element::new(ns::REGISTER_FEATURE, "register"));
            }
        }
        f.with_child(self.limits_feature())
    }

    /// A top-level element on a client stream: negotiation until a resource
    /// is bound, then stanzas for the session manager.
    pub(crate) fn on_client_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let authed = conn.auth.user.is_some();
        let bound = conn.session.is_some();
        let kind = StanzaKind::of(&el);
        match (el.ns.as_str(), el.name.as_str()) {
            (ns::TLS, "starttls") if !authed => self.on_starttls(id),
            (ns::SASL, "auth") if !authed => self.on_auth(id, &el),
            (ns::SASL, "response") if !authed => self.on_sasl_response(id, &el),
            (ns::SASL, "abort") if !authed => {
                self.sasl_refuse(id, crate::error::SaslCondition::Aborted, None);
            }
            _ if kind == Some(StanzaKind::Iq) && !authed => {
                if el.child(ns::REGISTER, "query").is_some() {
                    if self.registration_open(id) {
                        self.on_register(id, el, None);
                    } else if self.config.allow_registration || self.config.kontalk.registration {
                        self.reply_error(
                            id,
                            &el,
                            SE::NotAuthorized,
                            Some("registration needs an encrypted stream"),
                        );
                    } else {
                        self.reply_error(
                            id,
                            &el,
                            SE::ServiceUnavailable,
                            Some("in-band registration is disabled"),
                        );
                    }
                } else {
                    self.fail(id, XE::NotAuthorized, Some("authenticate first"));
                }
            }
            _ if kind == Some(StanzaKind::Iq) && !bound => {
                if el.child(ns::BIND, "bind").is_some() {
                    self.on_bind(id, &el);
                } else if el.child(ns::SESSION, "session").is_some() {
                    self.iq_answer(id, &el, Ok(()));
                } else {
                    self.fail(id, XE::NotAuthorized, Some("bind a resource first"));
                }
            }
            _ if !authed => self.fail(id, XE::NotAuthorized, Some("authenticate first")),
            (ns::SM, "resume") if authed && !bound => self.sm_resume(now, id, &el),
            (ns::SM, "enable") if !bound => {
                let failed = Element::new(ns::SM, "failed")
                    .with_child(Element::new(ns::STANZAS, "unexpected-request"));
                self.send_element(id, &failed, ns::CLIENT);
            }
            _ if !bound => self.fail(id, XE::NotAuthorized, Some("bind a resource first")),
            (ns::SM, _) => self.on_sm_element(id, &el),
            (ns::CSI, state @ ("active" | "inactive")) => self.client_state(id, state == "active"),
            _ if kind.is_some() => self.rate_limited(now, id, el),
            _ => self.fail(id, XE::UnsupportedStanzaType, None),
        }
    }

    fn on_starttls(&mut self, id: ConnId) {
        if self.is_secure(id) {
            self.send_raw(
                id,
                b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>",
            );
            self.close(id, "STARTTLS on an encrypted stream");
            return;
        }
        self.send_raw(id, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let tls = self.new_tls(false);
        let limits = &self.config.limits;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // Atomic switch: the reply went out in plaintext, the next byte in
        // either direction is TLS, and the XML parser starts afresh.
        conn.stream.start_tls(tls, limits);
        conn.timers.set(TimerKind::Keepalive, None);
    }

    /// Stanza rate limiting: a token bucket per session. Stanzas over the
    /// rate wait in a backlog, and the connection is not read while they do
    /// ([`Server::wants_read`]), so a burst slows the client down instead of
    /// ending its stream; only a backlog past its bound, which reading one
    /// chunk at a time never reaches, is a `policy-violation`.
    fn rate_limited(&mut self, now: Instant, id: ConnId, el: Element) {
        let rate = self.config.limits.stanzas_per_second;
        if rate == 0 {
            return self.on_stanza(id, el);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.rate.admit(now, rate, el) {
            Admit::Now(el) => self.on_stanza(id, el),
            Admit::Overflow => {
                self.fail(id, XE::PolicyViolation, Some("too many stanzas per second"))
            }
            Admit::Queued => {
                conn.timers
                    .set(TimerKind::RateLimit, conn.rate.deadline(rate));
                self.reschedule(id);
            }
        }
    }

    /// Handles the queued stanzas whose tokens have come.
    pub(crate) fn drain_backlog(&mut self, now: Instant, id: ConnId) {
        let rate = self.config.limits.stanzas_per_second;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.rate.next_ready(now, rate) {
                Some(el) => self.on_stanza(id, el),
                None => {
                    conn.timers
                        .set(TimerKind::RateLimit, conn.rate.deadline(rate));
                    if !conn.rate.waiting() {
                        self.fx.push(Event::Resume(id));
                    }
                    return;
                }
            }
        }
    }

    /// A stanza from a bound session: `from` checked and stamped, `to`
    /// parsed; then the session manager has it.
    fn on_stanza(&mut self, id: ConnId, mut el: Element) {
        let Some(sender) = self.conns.get(&id).and_then(|c| c.jid().cloned()) else {
            return;
        };
        // RFC 6120 8.1.2.1: the server stamps `from`; a client may only claim itself.
        if let Some(from) = el.attr("from") {
            let ok = self
                .jids
                .parse(from)
                .is_ok_and(|j| j == *sender || j == *sender.bare());
            if !ok {
                self.fail(
                    id,
                    XE::InvalidFrom,
                    Some("the from address does not match this session"),
                );
                return;
            }
        }
        el.set_attr("from", Some(sender.as_str()));
        if let Some(t) = el.attr("to") {
            if self.jids.parse(t).is_err() {
                let mut copy = el.clone();
                copy.set_attr("to", None);
                if let Some(mut reply) = error_reply(&copy, SE::JidMalformed, None) {
                    reply.set_attr("from", None);
                    self.send_stanza(id, &reply);
                }
                return;
            }
        }
        self.on_client_stanza(id, el);
    }

    /// XEP-0199: is the client of a quiet session still there?
    pub(crate) fn server_ping(&mut self, id: ConnId) {
        let to = self
            .full_jid(id)
            .map(|j| j.as_str().to_owned())
            .unwrap_or_default();
        let id_attr = format!("ping-{}", self.random_hex(4));
        let ping = Element::new(ns::CLIENT, "iq")
            .with_attr("type", "get")
            .with_attr("id", &id_attr)
            .with_attr("from", self.domain.as_str())
            .with_attr("to", &to)
            .with_child(Element::new(ns::PING, "ping"));
        self.send_stanza(id, &ping);
    }

    // ------------------------------------------------- answers on the stream

    /// Answers a stanza of `id`'s own client with a stanza error.
    pub(crate) fn reply_error(
        &mut self,
        id: ConnId,
        stanza: &Element,
        cond: SE,
        text: Option<&str>,
    ) {
        if let Some(reply) = error_reply(stanza, cond, text) {
            self.send_stanza(id, &reply);
        }
    }

    /// [`reply_error`](Self::reply_error) with an error `type` other than
    /// the condition's usual one.
    pub(crate) fn reply_error_typed(
        &mut self,
        id: ConnId,
        stanza: &Element,
        cond: SE,
        ty: &str,
        text: Option<&str>,
    ) {
        if let Some(mut reply) = error_reply(stanza, cond, text) {
            if let Some(err) = crate::error::error_child(&mut reply) {
                err.set_attr("type", Some(ty));
            }
            self.send_stanza(id, &reply);
        }
    }

    /// Answers an iq of `id`'s own client: an empty result, or an error.
    pub(crate) fn iq_answer(&mut self, id: ConnId, iq: &Element, answer: Result<(), SE>) {
        match answer {
            Ok(()) => self.send_stanza(id, &iq_result(iq)),
            Err(cond) => self.reply_error(id, iq, cond, None),
        }
    }
}
