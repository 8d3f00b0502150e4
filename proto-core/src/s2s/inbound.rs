//! Inbound: streams from other servers, their authentication (SASL
//! EXTERNAL, dialback as the receiving server) and the checks on what
//! they carry; see the [module](super) documentation.

use core::net::IpAddr;
use std::time::Instant;

use base64::Engine;

use super::*;
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::StanzaKind;
use crate::stream::{self, Stream, StreamNs};
use crate::xml::Element;

impl Server {
    /// A connection came in on an S2S listener.
    pub(crate) fn s2s_accept(&mut self, now: Instant, peer: IpAddr, direct: bool) -> ConnId {
        let id = self.next_id();
        let tls = direct.then(|| {
            let tls = rustls::ServerConnection::new(self.tls.s2s_direct.clone())
                .expect("valid server config");
            stream::unbounded(tls.into())
        });
        let limits = &self.config.limits;
        let conn = Conn {
            stream: Stream::new(StreamNs::Server, limits, tls),
            side: Side::In(Inbound {
                local: None,
                from: None,
                authed: Vec::new(),
                sasl_done: false,
                sm: None,
            }),
            address: Some(peer),
            deadline: Some(now + limits.auth_timeout),
            last_output: now,
            last_stanza: now,
            transmit_queued: false,
            stream_id: self.random_hex(16),
            auth: "none",
        };
        let inbound = self
            .s2s
            .conns
            .values()
            .filter(|c| matches!(c.side, Side::In(_)))
            .count();
        let from_peer = self
            .s2s
            .conns
            .values()
            .filter(|c| matches!(c.side, Side::In(_)) && c.address == Some(peer))
            .count();
        self.s2s.conns.insert(id, conn);
        let refusal = match self.s2s.config.as_ref() {
            None => Some((XE::HostUnknown, "this server does not federate")),
            Some(_) if self.shutting_down() => {
                Some((XE::SystemShutdown, "the server is shutting down"))
            }
            Some(c) if inbound >= c.max_inbound => {
                Some((XE::ResourceConstraint, "too many server-to-server streams"))
            }
            Some(c) if from_peer >= c.max_inbound_per_ip => Some((
                XE::PolicyViolation,
                "too many server-to-server streams from this address",
            )),
            Some(_) => None,
        };
        if let Some((cond, text)) = refusal {
            self.s2s_fail(now, id, cond, text);
        }
        id
    }

    pub(super) fn s2s_in_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let require_tls = self.s2s.config.as_ref().is_some_and(|c| c.require_tls);
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::In(i) = &mut conn.side else {
            return;
        };
        let tls = conn.stream.is_tls();
        if el.is(ns::TLS, "starttls") && !tls && i.authed.is_empty() {
            let proceed = Element::new(ns::TLS, "proceed").to_xml(ns::SERVER);
            conn.stream.write(proceed.as_bytes());
            let tls = rustls::ServerConnection::new(self.tls.s2s_server.clone())
                .expect("valid server config");
            let limits = &self.config.limits;
            conn.stream.start_tls(stream::unbounded(tls.into()), limits);
            conn.last_output = now;
            return self.s2s_transmit(id);
        }
        if !tls && require_tls {
            return self.s2s_fail(
                now,
                id,
                XE::PolicyViolation,
                "STARTTLS is required before anything else",
            );
        }
        if el.is(ns::SASL, "auth") {
            return self.s2s_in_external(now, id, &el);
        }
        if el.is(ns::DIALBACK, "result") && el.attr("type").is_none() {
            return self.s2s_in_dialback(now, id, &el);
        }
        if el.ns == ns::SM {
            return self.s2s_in_sm(now, id, &el);
        }
        if StanzaKind::from_name(&el.name).is_some() && el.ns == ns::SERVER {
            return self.s2s_in_stanza(now, id, el);
        }
        self.s2s_fail(
            now,
            id,
            XE::UnsupportedStanzaType,
            "not something a server-to-server stream carries",
        )
    }

    /// Stream management on inbound stream `id` (XEP-0198, no
    /// resumption): `<enable/>` once authenticated, and `<r/>` answered
    /// with our `h` once what the stanzas it counts stored is durable.
    pub(super) fn s2s_in_sm(&mut self, now: Instant, id: ConnId, el: &Element) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::In(i) = &mut conn.side else {
            return;
        };
        match (el.name.as_str(), i.sm) {
            ("enable", None) if !i.authed.is_empty() => {
                i.sm = Some(0);
                let enabled = sm_element("enabled").to_xml(ns::SERVER);
                self.s2s_write(now, id, enabled.as_bytes());
            }
            ("enable", _) => {
                let failed = sm_element("failed")
                    .with_child(Element::new(ns::STANZAS, "unexpected-request"))
                    .to_xml(ns::SERVER);
                self.s2s_write(now, id, failed.as_bytes());
            }
            ("r", Some(h)) => self.ack_when_durable(id, h),
            // We send nothing on an inbound stream: nothing to acknowledge.
            ("a", Some(_)) => {}
            _ => self.s2s_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "stream management is not enabled on this stream",
            ),
        }
    }

    /// Our `<a h/>` on inbound stream `id`.
    pub(crate) fn s2s_send_ack(&mut self, id: ConnId, h: u32) {
        let Some(now) = self.clock.now() else {
            return;
        };
        let a = sm_element("a")
            .with_attr("h", &h.to_string())
            .to_xml(ns::SERVER);
        self.s2s_write(now, id, a.as_bytes());
    }

    /// SASL EXTERNAL on an inbound stream (XEP-0178).
    pub(super) fn s2s_in_external(&mut self, now: Instant, id: ConnId, el: &Element) {
        let Some(conn) = self.s2s.conns.get(&id) else {
            return;
        };
        let Side::In(i) = &conn.side else {
            return;
        };
        let text = el.text();
        let text = text.trim();
        let authzid = match text {
            "" | "=" => i.from.clone(),
            b64 => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|s| s.to_ascii_lowercase()),
        };
        let from = i.from.clone();
        let ok = el.attr("mechanism") == Some("EXTERNAL")
            && conn.stream.is_tls()
            && i.authed.is_empty()
            && authzid.is_some()
            && (from.is_none() || from == authzid)
            && authzid
                .as_deref()
                .is_some_and(|d| !self.s2s.refused(d) && self.s2s_cert_for(id, d));
        let full = authzid.as_deref().is_some_and(|d| !self.s2s_in_room(id, d));
        let limits = self.config.limits.clone();
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::In(i) = &mut conn.side else {
            return;
        };
        if !ok || full {
            // RFC 6120 section 6.5: temporary-auth-failure, try later.
            let cond = if ok {
                "temporary-auth-failure"
            } else {
                "not-authorized"
            };
            let failure =
                Element::new(ns::SASL, "failure").with_child(Element::new(ns::SASL, cond));
            log::info!(
                "s2s: SASL EXTERNAL of {} refused",
                authzid.as_deref().unwrap_or("-")
            );
            return self.s2s_write(now, id, failure.to_xml(ns::SERVER).as_bytes());
        }
        let domain = authzid.expect("checked");
        log::info!("s2s: {domain} authenticated by its certificate (SASL EXTERNAL)");
        i.authed.push(domain.clone());
        i.from = Some(domain);
        i.sasl_done = true;
        conn.deadline = None;
        conn.auth = "certificate";
        let success = Element::new(ns::SASL, "success").to_xml(ns::SERVER);
        conn.stream.write(success.as_bytes());
        conn.stream.restart(&limits);
        conn.last_output = now;
        self.s2s_transmit(id);
    }

    /// Whether inbound stream `id` may authenticate `domain`: it has, or
    /// fewer than `max_inbound_per_domain` others have.
    fn s2s_in_room(&self, id: ConnId, domain: &str) -> bool {
        let limit = self
            .s2s
            .config
            .as_ref()
            .map_or(usize::MAX, |c| c.max_inbound_per_domain);
        let mut others = 0;
        for (&cid, c) in self.s2s.conns.iter() {
            if let Side::In(i) = &c.side {
                if i.authed.iter().any(|d| d == domain) {
                    if cid == id {
                        return true;
                    }
                    others += 1;
                }
            }
        }
        others < limit
    }

    /// A `<db:result/>` on an inbound stream: the originating server asks
    /// us to accept its domain on this stream.
    pub(super) fn s2s_in_dialback(&mut self, now: Instant, id: ConnId, el: &Element) {
        let from = el.attr("from").unwrap_or_default().to_ascii_lowercase();
        let to = el.attr("to").unwrap_or_default().to_ascii_lowercase();
        let Some(local) = self.s2s_local(&to) else {
            return self.s2s_result(now, id, &to, &from, Err(SE::ItemNotFound));
        };
        let require_certs = self
            .s2s
            .config
            .as_ref()
            .is_some_and(|c| c.require_certificates);
        let cert = self.s2s_cert_for(id, &from);
        if from.is_empty() || self.s2s.refused(&from) || jid::DomainPart::new(&from).is_err() {
            return self.s2s_result(now, id, &local, &from, Err(SE::Forbidden));
        }
        if !self.s2s_in_room(id, &from) {
            log::warn!("s2s: {from} has as many inbound streams as it may; refused another");
            return self.s2s_result(now, id, &local, &from, Err(SE::ResourceConstraint));
        }
        if cert {
            // XEP-0344: the certificate authenticates the domain already.
            if let Some(conn) = self.s2s.conns.get_mut(&id) {
                conn.auth = "certificate";
            }
            return self.s2s_result(now, id, &local, &from, Ok(true));
        }
        if require_certs {
            return self.s2s_result(now, id, &local, &from, Err(SE::NotAuthorized));
        }
        let Some(conn) = self.s2s.conns.get(&id) else {
            return;
        };
        let v = Verify {
            inbound: id,
            stream_id: conn.stream_id.clone(),
            key: el.text().trim().to_owned(),
        };
        let pair = (local, from);
        let out = self.s2s.outs.entry(pair.clone()).or_insert_with(Out::new);
        if out.verifies.len() + out.asked.len() >= 64 {
            return self.s2s_result(now, id, &pair.0, &pair.1, Err(SE::ResourceConstraint));
        }
        out.verifies.push(v);
        // A stream already past TLS takes the question now.
        let ready = out.conn.and_then(|c| self.s2s.conns.get(&c)).is_some_and(|c| {
            c.stream.is_tls()
                && matches!(&c.side, Side::Out(o) if !matches!(o.phase, Phase::Connecting | Phase::Header | Phase::StartTls))
        });
        if let (true, Some(c)) = (ready, out.conn) {
            self.s2s_ask_verifies(now, c, &pair);
        }
        // A domain that failed a moment ago is asked again now: a peer is
        // waiting for the answer.
        if let Some(out) = self.s2s.outs.get_mut(&pair) {
            out.retry_at = None;
        }
        self.s2s_step(now, &pair);
    }

    /// Answers a `<db:result/>` on inbound stream `id`: valid (the domain
    /// may send on it), invalid, or an error.
    pub(super) fn s2s_result(
        &mut self,
        now: Instant,
        id: ConnId,
        local: &str,
        remote: &str,
        outcome: Result<bool, SE>,
    ) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::In(i) = &mut conn.side else {
            return;
        };
        let mut result = Element::new(ns::DIALBACK, "result")
            .with_attr("from", local)
            .with_attr("to", remote);
        match outcome {
            Ok(true) => {
                log::info!("s2s: {remote} authenticated by dialback");
                if !i.authed.iter().any(|d| d == remote) {
                    i.authed.push(remote.to_owned());
                }
                conn.deadline = None;
                if conn.auth == "none" {
                    conn.auth = "dialback";
                }
                result = result.with_attr("type", "valid");
            }
            Ok(false) => {
                log::info!("s2s: dialback of {remote} refused (invalid key)");
                result = result.with_attr("type", "invalid");
            }
            Err(cond) => {
                log::info!("s2s: dialback of {remote} failed: {}", cond.as_str());
                // XEP-0220 section 2.3: a stanza error inside the result.
                result = result.with_attr("type", "error").with_child(
                    Element::new(ns::SERVER, "error")
                        .with_attr("type", cond.error_type())
                        .with_child(Element::new(ns::STANZAS, cond.as_str())),
                );
            }
        }
        self.s2s_write(now, id, result.to_xml(ns::SERVER).as_bytes());
    }

    /// A receiving server asks whether a key is ours (we are the
    /// authoritative server): answered from the secret, on this stream.
    pub(super) fn s2s_verify_asked(&mut self, now: Instant, id: ConnId, el: &Element) {
        let from = el.attr("from").unwrap_or_default().to_ascii_lowercase();
        let to = el.attr("to").unwrap_or_default().to_ascii_lowercase();
        let stream_id = el.attr("id").unwrap_or_default();
        let valid = self.s2s_local(&to).is_some()
            && self.s2s.keys.verify(&from, &to, stream_id, &el.text());
        let answer = Element::new(ns::DIALBACK, "verify")
            .with_attr("from", &to)
            .with_attr("to", &from)
            .with_attr("id", stream_id)
            .with_attr("type", if valid { "valid" } else { "invalid" });
        self.s2s_write(now, id, answer.to_xml(ns::SERVER).as_bytes());
    }

    /// A stanza on an inbound stream: from a domain it authenticated, to
    /// one of ours, then routed.
    pub(super) fn s2s_in_stanza(&mut self, now: Instant, id: ConnId, mut el: Element) {
        let Some(conn) = self.s2s.conns.get(&id) else {
            return;
        };
        let Side::In(i) = &conn.side else {
            return;
        };
        if i.authed.is_empty() {
            return self.s2s_fail(now, id, XE::NotAuthorized, "a stanza before authentication");
        }
        let from = el.attr("from").and_then(|f| jid::Jid::new(f).ok());
        let to = el.attr("to").and_then(|t| jid::Jid::new(t).ok());
        let (Some(from), Some(to)) = (from, to) else {
            return self.s2s_fail(
                now,
                id,
                XE::ImproperAddressing,
                "a stanza without a valid from and to",
            );
        };
        let from_domain = from.domain().as_str().to_owned();
        if !i.authed.contains(&from_domain) {
            return self.s2s_fail(
                now,
                id,
                XE::InvalidFrom,
                "from a domain this stream did not authenticate",
            );
        }
        if self.s2s_local(to.domain().as_str()).is_none() {
            return self.s2s_fail(
                now,
                id,
                XE::HostUnknown,
                "to a domain this server does not serve",
            );
        }
        if let Some(conn) = self.s2s.conns.get_mut(&id) {
            conn.last_stanza = now;
            if let Side::In(Inbound { sm: Some(h), .. }) = &mut conn.side {
                *h = h.wrapping_add(1);
            }
        }
        renamespace(&mut el, ns::SERVER, ns::CLIENT);
        el.set_attr("from", Some(from.as_str()));
        el.set_attr("to", Some(to.as_str()));
        self.route(el);
    }
}
