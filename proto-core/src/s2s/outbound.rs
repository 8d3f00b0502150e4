//! Outbound: the queue of each pair of domains, finding and connecting
//! its server, and the negotiation as the initiating server (STARTTLS,
//! SASL EXTERNAL, dialback as the originating server); see the
//! [module](super) documentation.

use std::time::Instant;

use base64::Engine;
use rustls::pki_types::ServerName;

use super::*;
use crate::dns::{Resolution, Step, Target};
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stream::{self, Stream, StreamNs};
use crate::xml::Element;
use crate::Event;

impl Server {
    /// Writes what the pair's queue holds to its stream, once it is up,
    /// as far as the output budget allows.
    pub(super) fn s2s_flush(&mut self, now: Instant, pair: &Pair) {
        let budget = self.config.limits.output_budget;
        if !self.s2s.load.done {
            // What the last run left goes first.
            return;
        }
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        let Some(id) = out.conn else {
            return;
        };
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        let Some(via) = o.carrier(&pair.0) else {
            return;
        };
        // Room for what goes now (it is one write).
        let mut want = 0;
        for q in &out.queue {
            if matches!(q.keep, Keep::Storing(_)) || want >= budget {
                break;
            }
            want += match &q.item {
                Item::Wire(wire) => wire.len(),
                Item::Element(_) => 256,
            };
        }
        let mut buf = Vec::with_capacity(want.min(budget) + 64);
        // What went on a stream without stream management: the peer gives
        // no other sign that it has it.
        let mut written = Span::default();
        while conn.stream.pending_output() + buf.len() < budget
            && o.sm.as_ref().is_none_or(|s| s.unacked.len() < MAX_UNACKED)
        {
            // In order: nothing overtakes a stanza the store is keeping.
            if out
                .queue
                .front()
                .is_none_or(|q| matches!(q.keep, Keep::Storing(_)))
            {
                break;
            }
            let q = out.queue.pop_front().expect("just seen");
            match o.sm.as_mut() {
                // Its bytes kept until the peer has it.
                Some(sm) => {
                    let wire = match q.item {
                        Item::Wire(wire) => wire,
                        Item::Element(el) => el.to_xml(ns::SERVER),
                    };
                    buf.extend_from_slice(wire.as_bytes());
                    sm.unacked.push_back((via, Sent { wire, keep: q.keep }));
                }
                None => {
                    match &q.item {
                        Item::Wire(wire) => buf.extend_from_slice(wire.as_bytes()),
                        Item::Element(el) => el.write_to(&mut buf, ns::SERVER),
                    }
                    written.add(q.keep);
                }
            }
        }
        self.s2s_forget(pair, written);
        let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) else {
            return;
        };
        // An `<r/>` behind what went out, or when the window is full (no
        // more goes out until an `<a/>`), unless one is on its way.
        let full =
            o.sm.as_ref()
                .is_some_and(|s| s.unacked.len() >= MAX_UNACKED);
        if !buf.is_empty() || full {
            if let Some(sm) = o.sm.as_mut().filter(|s| !s.asked) {
                sm.asked = true;
                sm_element("r").write_to(&mut buf, ns::SERVER);
            }
        }
        if !buf.is_empty() {
            if let Some(conn) = self.s2s.conns.get_mut(&id) {
                conn.last_stanza = now;
            }
            self.s2s_write(now, id, &buf);
        }
    }

    /// Brings the pair's stream up if something waits for it: the next
    /// DNS question, the next address, or the end of the attempt.
    pub(super) fn s2s_step(&mut self, now: Instant, pair: &Pair) {
        // Nothing is tried (and so nothing answered or deleted) before what
        // the last run left is loaded: a deletion's range could reach it.
        if self.shutting_down() || !self.s2s.load.done {
            return;
        }
        loop {
            let Some(out) = self.s2s.outs.get_mut(pair) else {
                return;
            };
            if out.conn.is_some() {
                return;
            }
            if out.queue.is_empty() && out.verifies.is_empty() {
                if out.retry_at.is_none_or(|at| at <= now) {
                    // Nothing waits, no backoff to remember.
                    if let Some((token, _)) = out.resolution.take() {
                        self.s2s.dns.remove(&token);
                    }
                    self.s2s.outs.remove(pair);
                }
                return;
            }
            if out.retry_at.is_some_and(|at| at > now) {
                return;
            }
            out.retry_at = None;
            if out.resolution.is_none() && self.s2s_multiplex(now, pair) {
                return;
            }
            let out = self.s2s.outs.get_mut(pair).expect("just seen");
            if out.resolution.is_none() {
                let route = self
                    .s2s
                    .config
                    .as_ref()
                    .and_then(|c| {
                        c.routes
                            .iter()
                            .find(|r| r.domain.eq_ignore_ascii_case(&pair.1))
                    })
                    .cloned();
                let r = match route {
                    Some(r) => Resolution::to_target(
                        &pair.1,
                        Target {
                            host: r.host,
                            port: r.port,
                            direct_tls: r.direct_tls,
                        },
                        &mut self.rng,
                    ),
                    None => Resolution::new(&pair.1, now, &mut self.rng),
                };
                let token = self.next_id();
                self.s2s.dns.insert(token, pair.clone());
                let out = self.s2s.outs.get_mut(pair).expect("just seen");
                out.resolution = Some((token, r));
            }
            let out = self.s2s.outs.get_mut(pair).expect("just seen");
            let (token, r) = out.resolution.as_mut().expect("just set");
            let token = *token;
            match r.poll(now, &mut self.rng) {
                Step::Query(query) => self.fx.push(Event::Resolve { token, query }),
                Step::Candidate(c) => {
                    if !self.s2s_out_room(now) {
                        return self.s2s_give_up_as(
                            now,
                            pair,
                            "as many outbound streams as allowed, each busy",
                            Some(SE::ResourceConstraint),
                        );
                    }
                    let id = self.next_id();
                    log::debug!(
                        "s2s: connecting to {} at {} ({}) for {}",
                        pair.1,
                        c.addr,
                        c.host,
                        if c.direct_tls {
                            "direct TLS"
                        } else {
                            "STARTTLS"
                        }
                    );
                    let out = self.s2s.outs.get_mut(pair).expect("just seen");
                    out.conn = Some(id);
                    let limits = &self.config.limits;
                    self.s2s.conns.insert(
                        id,
                        Conn {
                            stream: Stream::new(StreamNs::Server, limits, None),
                            side: Side::Out(Outbound {
                                pair: pair.clone(),
                                phase: Phase::Connecting,
                                direct_tls: c.direct_tls,
                                stream_id: None,
                                dialback_offered: false,
                                sasl_done: false,
                                sm_offered: false,
                                sm: None,
                                also: Vec::new(),
                            }),
                            address: Some(c.addr.ip()),
                            deadline: Some(now + limits.auth_timeout),
                            last_output: now,
                            last_stanza: now,
                            transmit_queued: false,
                            stream_id: String::new(),
                            auth: "none",
                        },
                    );
                    self.fx.push(Event::Connect {
                        conn: id,
                        address: c.addr.to_string(),
                    });
                    return;
                }
                Step::Waiting => return,
                Step::Exhausted(why) => return self.s2s_give_up(now, pair, why),
            }
        }
    }

    /// No address of the remote domain gave an authenticated stream: every
    /// stanza waiting for it is answered, and the next attempt waits.
    pub(super) fn s2s_give_up(&mut self, now: Instant, pair: &Pair, why: &str) {
        self.s2s_give_up_as(now, pair, why, None)
    }

    /// [`Server::s2s_give_up`], answering with `cond` when given.
    fn s2s_give_up_as(&mut self, now: Instant, pair: &Pair, why: &str, cond: Option<SE>) {
        let stopping = self.shutting_down();
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        if let Some((token, _)) = out.resolution.take() {
            self.s2s.dns.remove(&token);
        }
        let cond = cond.unwrap_or(if out.timed_out {
            SE::RemoteServerTimeout
        } else {
            SE::RemoteServerNotFound
        });
        out.timed_out = false;
        out.retry_at = Some(now + out.backoff);
        // Stopping, what the store keeps stays there for the next start.
        let (kept, answered): (VecDeque<Queued>, VecDeque<Queued>) =
            core::mem::take(&mut out.queue)
                .into_iter()
                .partition(|q| stopping && q.keep != Keep::Memory);
        out.queue = kept;
        // Nobody waited for the stream (an idle one that broke, the
        // server stopping): nothing for an operator to act on.
        let level = if answered.is_empty() && out.verifies.is_empty() && out.asked.is_empty() {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "s2s: cannot reach {} from {}: {why}; {} stanzas answered with {}, again in {} s",
            pair.1,
            pair.0,
            answered.len(),
            cond.as_str(),
            out.backoff.as_secs()
        );
        out.backoff = (out.backoff * 2).min(MAX_BACKOFF);
        let verifies: Vec<Verify> = out.verifies.drain(..).chain(out.asked.drain(..)).collect();
        let mut forget = Span::default();
        for q in answered {
            forget.add(q.keep);
            if let Some(el) = q.into_element(&self.config.limits) {
                self.s2s_answer(el, cond);
            }
        }
        self.s2s_forget(pair, forget);
        for v in verifies {
            self.s2s_result(now, v.inbound, &pair.0, &pair.1, Err(cond));
        }
    }

    pub(super) fn s2s_out_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let require_tls = self.s2s.config.as_ref().is_some_and(|c| c.require_tls);
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        let pair = o.pair.clone();
        if el.is(ns::DIALBACK, "verify") {
            // Asked for one of our domains on the stream.
            let pair = el
                .attr("to")
                .and_then(|to| o.pairs().into_iter().find(|p| p.0 == to))
                .unwrap_or(pair);
            return self.s2s_verify_answered(now, &pair, &el);
        }
        if o.phase == Phase::Up && el.is(ns::DIALBACK, "result") {
            return self.s2s_multiplexed(now, id, &el);
        }
        match o.phase {
            Phase::Features if el.is(ns::STREAM, "features") => {
                o.sm_offered = el.child(ns::SM, "sm").is_some();
                if o.sasl_done {
                    return self.s2s_out_up(now, id);
                }
                o.dialback_offered = el.child(NS_DIALBACK_FEATURE, "dialback").is_some();
                let tls = conn.stream.is_tls();
                if !tls && el.child(ns::TLS, "starttls").is_some() {
                    o.phase = Phase::StartTls;
                    let bytes = Element::new(ns::TLS, "starttls").to_xml(ns::SERVER);
                    return self.s2s_write(now, id, bytes.as_bytes());
                }
                if !tls && require_tls {
                    return self.s2s_out_refused(now, id, "the peer offers no TLS");
                }
                // Verifications wait for a stream past TLS.
                self.s2s_ask_verifies(now, id, &pair);
                let external_failed = self.s2s.outs.get(&pair).is_some_and(|o| o.external_failed);
                let external = tls
                    && !external_failed
                    && el
                        .child(ns::SASL, "mechanisms")
                        .is_some_and(|m| m.elements().any(|c| c.text().trim() == "EXTERNAL"));
                if external {
                    if let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) {
                        o.phase = Phase::Sasl;
                    }
                    let authzid = base64::engine::general_purpose::STANDARD.encode(&pair.0);
                    let auth = Element::new(ns::SASL, "auth")
                        .with_attr("mechanism", "EXTERNAL")
                        .with_text(&authzid);
                    return self.s2s_write(now, id, auth.to_xml(ns::SERVER).as_bytes());
                }
                self.s2s_out_dialback(now, id)
            }
            Phase::StartTls if el.is(ns::TLS, "proceed") => {
                let Ok(name) = ServerName::try_from(pair.1.clone()) else {
                    return self.s2s_gone(now, id, "the domain is not a TLS server name");
                };
                let tls = rustls::ClientConnection::new(self.tls.s2s_client.clone(), name)
                    .expect("valid client config");
                let limits = &self.config.limits;
                conn.stream.start_tls(stream::unbounded(tls.into()), limits);
                conn.stream.read_tls(&[]);
                o.phase = Phase::Header;
                let header = strip_empty_id(conn.stream.header_bytes("", &pair.0, Some(&pair.1)));
                self.s2s_write(now, id, &header);
            }
            Phase::Sasl if el.is(ns::SASL, "success") => {
                o.sasl_done = true;
                o.phase = Phase::Header;
                let limits = &self.config.limits;
                conn.stream.restart(limits);
                let header = strip_empty_id(conn.stream.header_bytes("", &pair.0, Some(&pair.1)));
                self.s2s_write(now, id, &header);
            }
            Phase::Sasl if el.is(ns::SASL, "failure") => {
                log::info!(
                    "s2s: {} refused our certificate for {}; dialback",
                    pair.1,
                    pair.0
                );
                if let Some(out) = self.s2s.outs.get_mut(&pair) {
                    out.external_failed = true;
                }
                if o.dialback_offered {
                    self.s2s_out_dialback(now, id)
                } else {
                    // The next stream goes straight to dialback.
                    self.s2s_close(now, id, "SASL EXTERNAL refused")
                }
            }
            Phase::Dialback if el.is(ns::DIALBACK, "result") => match el.attr("type") {
                Some("valid") => self.s2s_out_up(now, id),
                _ => self.s2s_out_refused(now, id, "the peer refused our dialback key"),
            },
            Phase::Up if el.ns == ns::SM && o.sm.is_some() => self.s2s_out_sm(now, id, &el),
            _ => self.s2s_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "not expected while negotiating",
            ),
        }
    }

    /// Our domain `pair.0` asks to be accepted on a stream another of our
    /// domains has up to the same remote domain (dialback multiplexing,
    /// XEP-0220 section 2.6), if one is there, its peer offered dialback,
    /// and it did not refuse this before. Whether it asked.
    fn s2s_multiplex(&mut self, now: Instant, pair: &Pair) -> bool {
        if self.s2s.outs.get(pair).is_none_or(|o| o.no_multiplexing) {
            return false;
        }
        let host = self.s2s.conns.iter().find_map(|(&id, c)| match &c.side {
            Side::Out(o)
                if o.phase == Phase::Up
                    && o.dialback_offered
                    && o.pair.1 == pair.1
                    && o.pair.0 != pair.0
                    && !o.also.iter().any(|a| a.local == pair.0) =>
            {
                o.stream_id.clone().map(|s| (id, s))
            }
            _ => None,
        });
        let Some((id, stream_id)) = host else {
            return false;
        };
        let by = now + self.config.limits.auth_timeout;
        if let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) {
            o.also.push(Also {
                local: pair.0.clone(),
                state: AlsoState::Asked(by),
            });
        }
        if let Some(out) = self.s2s.outs.get_mut(pair) {
            out.conn = Some(id);
        }
        log::debug!(
            "s2s: {} asks {} to take it on the stream of another of our domains",
            pair.0,
            pair.1
        );
        self.s2s_write_db_result(now, id, pair, &stream_id);
        true
    }

    /// Our `<db:result/>` for the pair on stream `id`: the key of our
    /// domain for the peer's stream id (XEP-0185).
    fn s2s_write_db_result(&mut self, now: Instant, id: ConnId, pair: &Pair, stream_id: &str) {
        let key = self.s2s.keys.key(&pair.1, &pair.0, stream_id);
        let result = Element::new(ns::DIALBACK, "result")
            .with_attr("from", &pair.0)
            .with_attr("to", &pair.1)
            .with_text(&key);
        self.s2s_write(now, id, result.to_xml(ns::SERVER).as_bytes());
    }

    /// The peer's answer to a `<db:result/>` for another of our domains on
    /// the up stream `id`: valid, its stanzas go on it; anything else, it
    /// gets a stream of its own.
    fn s2s_multiplexed(&mut self, now: Instant, id: ConnId, el: &Element) {
        let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) else {
            return;
        };
        let to = el.attr("to").unwrap_or_default();
        let asked = o
            .also
            .iter_mut()
            .find(|a| a.local == to && matches!(a.state, AlsoState::Asked(_)));
        let Some(also) = asked else {
            return self.s2s_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "a dialback result nobody asked for",
            );
        };
        let pair = (also.local.clone(), o.pair.1.clone());
        if el.attr("type") == Some("valid") {
            also.state = AlsoState::Up;
            log::info!(
                "s2s: {} also sends to {} on the stream of {}",
                pair.0,
                pair.1,
                o.pair.0
            );
            self.s2s_ask_verifies(now, id, &pair);
            return self.s2s_flush(now, &pair);
        }
        also.state = AlsoState::Refused;
        log::info!(
            "s2s: {} does not take {} on the stream of {}; it gets its own",
            pair.1,
            pair.0,
            o.pair.0
        );
        self.s2s_own_stream(now, id, &pair);
    }

    /// A domain the peer did not take on stream `id` in time gets its own.
    pub(super) fn s2s_multiplex_timeout(&mut self, now: Instant, id: ConnId) {
        let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) else {
            return;
        };
        let late: Vec<Pair> = o
            .also
            .iter_mut()
            .filter(|a| matches!(a.state, AlsoState::Asked(by) if by <= now))
            .map(|a| {
                a.state = AlsoState::Refused;
                a.local.clone()
            })
            .map(|local| (local, o.pair.1.clone()))
            .collect();
        for pair in late {
            log::info!("s2s: {} did not answer for {} in time", pair.1, pair.0);
            self.s2s_own_stream(now, id, &pair);
        }
    }

    /// The pair no longer waits on stream `id`: it makes its own.
    fn s2s_own_stream(&mut self, now: Instant, id: ConnId, pair: &Pair) {
        if let Some(out) = self.s2s.outs.get_mut(pair) {
            out.no_multiplexing = true;
            if out.conn == Some(id) {
                out.conn = None;
            }
        }
        self.s2s_step(now, pair);
    }

    /// Whether another outbound stream may open: fewer than
    /// `max_outbound` are there, or the one idle longest (up, nothing in
    /// flight or waiting for it) is closed to make room.
    fn s2s_out_room(&mut self, now: Instant) -> bool {
        let limit = self
            .s2s
            .config
            .as_ref()
            .map_or(usize::MAX, |c| c.max_outbound);
        let outs = &self.s2s.outs;
        let mut count = 0;
        let mut idlest: Option<(Instant, ConnId)> = None;
        for (&id, c) in self.s2s.conns.iter() {
            let Side::Out(o) = &c.side else {
                continue;
            };
            count += 1;
            // Nothing in flight on it, nothing waiting for it.
            let idle = o.phase == Phase::Up
                && o.sm.as_ref().is_none_or(|s| s.unacked.is_empty())
                && !o
                    .also
                    .iter()
                    .any(|a| matches!(a.state, AlsoState::Asked(_)))
                && o.pairs().iter().all(|p| {
                    outs.get(p).is_none_or(|out| {
                        out.queue.is_empty() && out.verifies.is_empty() && out.asked.is_empty()
                    })
                });
            if idle && idlest.is_none_or(|(at, _)| c.last_stanza < at) {
                idlest = Some((c.last_stanza, id));
            }
        }
        if count < limit {
            return true;
        }
        let Some((_, id)) = idlest else {
            return false;
        };
        self.s2s_close(now, id, "closed to make room for another domain's");
        true
    }

    /// Dialback on outbound stream `id`: our key for the peer's stream id.
    pub(super) fn s2s_out_dialback(&mut self, now: Instant, id: ConnId) {
        let require_certs = self
            .s2s
            .config
            .as_ref()
            .is_some_and(|c| c.require_certificates);
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        let pair = o.pair.clone();
        let Some(stream_id) = o.stream_id.clone() else {
            return self.s2s_out_refused(now, id, "the peer's header has no id for dialback");
        };
        if require_certs && !self.s2s_cert_for(id, &pair.1) {
            return self.s2s_out_refused(
                now,
                id,
                "its certificate does not authenticate the domain, and certificates are required",
            );
        }
        let Some(Side::Out(o)) = self.s2s.conns.get_mut(&id).map(|c| &mut c.side) else {
            return;
        };
        o.phase = Phase::Dialback;
        self.s2s_write_db_result(now, id, &pair, &stream_id);
    }

    /// The outbound stream `id` is authenticated: the queue goes out.
    pub(super) fn s2s_out_up(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        o.phase = Phase::Up;
        conn.auth = if o.sasl_done {
            "certificate"
        } else {
            "dialback"
        };
        conn.deadline = None;
        conn.last_stanza = now;
        let pair = o.pair.clone();
        let address = conn.address.map_or_else(|| "-".into(), |a| a.to_string());
        log::info!(
            "s2s: stream from {} to {} up (address {address}, {})",
            pair.0,
            pair.1,
            if o.sasl_done {
                "certificate"
            } else {
                "dialback"
            }
        );
        if let Some(out) = self.s2s.outs.get_mut(&pair) {
            out.backoff = FIRST_BACKOFF;
            out.timed_out = false;
            if let Some((token, _)) = out.resolution.take() {
                self.s2s.dns.remove(&token);
            }
        }
        if o.sm_offered {
            // Everything written from here on is counted by the peer.
            o.sm = Some(OutSm::default());
            let enable = sm_element("enable").to_xml(ns::SERVER);
            self.s2s_write(now, id, enable.as_bytes());
        }
        self.s2s_ask_verifies(now, id, &pair);
        self.s2s_flush(now, &pair);
    }

    /// Stream management on outbound stream `id`: the peer's answer to
    /// `<enable/>`, its acks, its requests.
    pub(super) fn s2s_out_sm(&mut self, now: Instant, id: ConnId, el: &Element) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        let pair = o.pair.clone();
        let Some(sm) = o.sm.as_mut() else {
            return;
        };
        match el.name.as_str() {
            "enabled" => sm.enabled = true,
            "failed" => {
                // No acks on this stream: what went out is as without them
                // (written: the peer gives no other sign).
                log::debug!("s2s: {} refused stream management", pair.1);
                let unacked = core::mem::take(&mut sm.unacked);
                o.sm = None;
                let pairs = o.pairs();
                self.s2s_forget_sent(&pairs, unacked);
            }
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return self.s2s_fail(now, id, XE::InvalidXml, "<a/> needs a number h");
                };
                let newly = h.wrapping_sub(sm.acked) as usize;
                if newly > sm.unacked.len() {
                    return self.s2s_fail(
                        now,
                        id,
                        XE::UndefinedCondition,
                        "acknowledged more stanzas than were sent",
                    );
                }
                let acked: Vec<(usize, Sent)> = sm.unacked.drain(..newly).collect();
                sm.acked = h;
                sm.asked = false;
                let pairs = o.pairs();
                self.s2s_forget_sent(&pairs, acked);
                // What waited for room goes now, with the next `<r/>`; what
                // is still unacknowledged is asked about then, or at the
                // keepalive if nothing more goes out.
                for pair in &pairs {
                    self.s2s_flush(now, pair);
                }
            }
            // Nothing comes to us on our own stream: none handled.
            "r" => {
                let a = sm_element("a").with_attr("h", "0").to_xml(ns::SERVER);
                self.s2s_write(now, id, a.as_bytes());
            }
            _ => self.s2s_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "not a stream management element",
            ),
        }
    }

    /// Stanzas written on a stream, each with which of its `pairs` sent it
    /// (see [`Outbound::carrier`]), that the peer has: deleted from the
    /// store, pair by pair.
    fn s2s_forget_sent(&mut self, pairs: &[Pair], sent: impl IntoIterator<Item = (usize, Sent)>) {
        let mut spans = vec![Span::default(); pairs.len()];
        for (via, s) in sent {
            spans[via].add(s.keep);
        }
        for (pair, span) in pairs.iter().zip(spans) {
            self.s2s_forget(pair, span);
        }
    }

    /// The peer refused us (or we it): the attempt ends for every address.
    pub(super) fn s2s_out_refused(&mut self, now: Instant, id: ConnId, why: &str) {
        let pair = match self.s2s.conns.get(&id).map(|c| &c.side) {
            Some(Side::Out(o)) => o.pair.clone(),
            _ => return,
        };
        self.s2s_fail(now, id, XE::NotAuthorized, why);
        self.s2s_give_up(now, &pair, why);
    }

    /// Sends the verifications waiting for the pair's stream `id`.
    pub(super) fn s2s_ask_verifies(&mut self, now: Instant, id: ConnId, pair: &Pair) {
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        let verifies = core::mem::take(&mut out.verifies);
        let mut bytes = Vec::new();
        for v in &verifies {
            Element::new(ns::DIALBACK, "verify")
                .with_attr("from", &pair.0)
                .with_attr("to", &pair.1)
                .with_attr("id", &v.stream_id)
                .with_text(&v.key)
                .write_to(&mut bytes, ns::SERVER);
        }
        out.asked.extend(verifies);
        if !bytes.is_empty() {
            self.s2s_write(now, id, &bytes);
        }
    }

    /// The authoritative server answered a `<db:verify/>` on our stream.
    pub(super) fn s2s_verify_answered(&mut self, now: Instant, pair: &Pair, el: &Element) {
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        let id = el.attr("id").unwrap_or_default();
        let Some(i) = out.asked.iter().position(|v| v.stream_id == id) else {
            return;
        };
        let v = out.asked.remove(i);
        let valid = el.attr("type") == Some("valid");
        self.s2s_result(now, v.inbound, &pair.0, &pair.1, Ok(valid));
    }
}
