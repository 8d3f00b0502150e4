//! Federation: streams to and from other XMPP servers (S2S, RFC 6120),
//! on the stream layer ([`crate::stream`]).
//!
//! ## Outbound
//!
//! One stream per pair (our domain, remote domain), opened when the first
//! stanza for the remote domain comes (or a dialback verification must be
//! asked there). Where it goes: a static route of the configuration, else
//! DNS ([`crate::dns`]: SRV `_xmpps-server` and `_xmpp-server`, then the
//! domain on port 5269), each address in turn. Then the negotiation as an
//! initiating server: STARTTLS (required by default; or TLS from the first
//! byte for an `_xmpps-server` target), and authentication: SASL EXTERNAL
//! with our certificate (XEP-0178) when the peer offers it, else dialback
//! (XEP-0220) with a key of XEP-0185, also when EXTERNAL failed and the
//! peer offers dialback on the same stream (the next stream to that
//! domain goes straight to dialback).
//!
//! Stanzas wait in the pair's queue (at most
//! [`S2sConfig::queue_limit`](crate::S2sConfig::queue_limit); one more is
//! answered with `resource-constraint`) until the stream is authenticated,
//! and go out as the stream's output budget allows. When no address gives
//! an authenticated stream, every queued stanza is answered once, as RFC
//! 6120 section 8.3 says: `remote-server-timeout` if an attempt timed out,
//! else `remote-server-not-found` (errors and presence are not answered);
//! the next attempt waits [`FIRST_BACKOFF`], doubled each time up to
//! [`MAX_BACKOFF`], and stanzas that come meanwhile wait for it. A stream
//! that carried no stanza for
//! [`S2sConfig::idle_timeout`](crate::S2sConfig::idle_timeout) is closed,
//! and made again for the next stanza.
//!
//! ## Inbound
//!
//! A stream to one of our domains (the configured domain, and this host
//! in a network); STARTTLS first when TLS is required. After TLS the
//! features offer SASL EXTERNAL when the peer's certificate authenticates
//! the domain of its header's `from` (against the configured authorities,
//! with the serverAuth purpose also for a client certificate), and
//! dialback unless certificates are required. A `<db:result/>` is
//! accepted at once when the stream's certificate authenticates its
//! domain (XEP-0344), else verified with the authoritative server over our
//! outbound stream to that domain (`<db:verify/>`). A `<db:verify/>` from
//! a receiving server is answered from our secret, on any stream.
//!
//! A stanza is accepted only from a domain the stream authenticated
//! (`invalid-from`) and to one of our domains (`host-unknown`); then it is
//! routed like any other ([`Server::route`]).

mod dialback;

use core::net::IpAddr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::ServerName;

use crate::config::S2sConfig;
use crate::dns::{Resolution, Step, Target};
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::server::{ConnId, IdMap, Server};
use crate::stanza::StanzaKind;
use crate::stream::{self, Stream, StreamNs};
use crate::xml::{Element, StreamEvent, StreamHeader};
use crate::Event;

pub(crate) use dialback::Keys;

/// The first wait before a domain that could not be reached is tried again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a domain is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The dialback stream feature (XEP-0220 section 2.4).
const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// (our domain, remote domain).
type Pair = (String, String);

/// Federation's streams and queues.
pub(crate) struct S2s {
    config: Option<S2sConfig>,
    keys: Keys,
    conns: IdMap<ConnId, Conn>,
    outs: HashMap<Pair, Out>,
    /// The DNS questions in flight: whose resolution they are.
    dns: IdMap<ConnId, Pair>,
}

/// The outbound side of one pair of domains.
struct Out {
    /// The stream in use (connecting, negotiating or up).
    conn: Option<ConnId>,
    /// Where to connect next, while the stream is not up; its DNS token.
    resolution: Option<(ConnId, Resolution)>,
    /// Stanzas waiting for the stream (or for its output budget).
    queue: VecDeque<Element>,
    /// Dialback verifications to ask on the stream once it can carry them.
    verifies: Vec<Verify>,
    /// Those asked, waiting for the answer.
    asked: Vec<Verify>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// An attempt since the last success timed out.
    timed_out: bool,
    /// The peer refused our certificate: dialback from the start.
    external_failed: bool,
}

impl Out {
    /// Nothing waits yet, no backoff.
    fn new() -> Out {
        Out {
            conn: None,
            resolution: None,
            queue: VecDeque::new(),
            verifies: Vec::new(),
            asked: Vec::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            timed_out: false,
            external_failed: false,
        }
    }
}

/// A `<db:result/>` that came on an inbound stream, to be verified with
/// the authoritative server.
#[derive(Debug, Clone)]
struct Verify {
    inbound: ConnId,
    /// The id of the inbound stream (ours).
    stream_id: String,
    key: String,
}

/// Where an outbound stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The runtime is connecting.
    Connecting,
    /// Our header went out; theirs is awaited (first, after TLS, after SASL).
    Header,
    /// Their header came; the features are awaited.
    Features,
    /// `<starttls/>` sent.
    StartTls,
    /// `<auth mechanism='EXTERNAL'/>` sent.
    Sasl,
    /// `<db:result/>` sent.
    Dialback,
    /// Authenticated: stanzas flow.
    Up,
}

enum Side {
    In(Inbound),
    Out(Outbound),
}

struct Inbound {
    /// Our domain the header named.
    local: Option<String>,
    /// The domain the header's `from` named.
    from: Option<String>,
    /// The domains this stream authenticated.
    authed: Vec<String>,
    /// SASL succeeded (the features after the restart offer nothing).
    sasl_done: bool,
}

struct Outbound {
    pair: Pair,
    phase: Phase,
    direct_tls: bool,
    /// The id of the peer's header (the dialback key is made with it).
    stream_id: Option<String>,
    /// The peer offered dialback on this stream.
    dialback_offered: bool,
    /// SASL succeeded: the restarted stream's features put it up.
    sasl_done: bool,
}

/// One server-to-server stream.
struct Conn {
    stream: Stream,
    side: Side,
    address: Option<IpAddr>,
    /// It must be authenticated by then (`None` once it is).
    deadline: Option<Instant>,
    last_output: Instant,
    /// The last stanza either way (the idle close).
    last_stanza: Instant,
    transmit_queued: bool,
    /// The id of our header (inbound streams).
    stream_id: String,
    /// How it was authenticated (see [`S2sStream::auth`]).
    auth: &'static str,
}

impl S2s {
    /// Federation as `config` says (`None`: off, every remote domain bounces).
    pub(crate) fn new(config: Option<&S2sConfig>) -> S2s {
        S2s {
            keys: Keys::new(config.map_or(&[][..], |c| &c.dialback_secret)),
            config: config.cloned(),
            conns: IdMap::default(),
            outs: HashMap::new(),
            dns: IdMap::default(),
        }
    }

    /// Whether federation is on.
    pub(crate) fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Whether `domain` is refused both ways.
    pub(crate) fn refused(&self, domain: &str) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.refuse.iter().any(|d| d.eq_ignore_ascii_case(domain)))
    }

    /// Whether `id` is a server-to-server stream.
    pub(crate) fn owns(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// The earliest instant the streams and queues have work.
    pub(crate) fn next_deadline(&self, keepalive: Duration) -> Option<Instant> {
        let idle = self.config.as_ref()?.idle_timeout;
        let conns = self.conns.values().map(|c| {
            let up = c.deadline.is_none();
            let at = c.last_stanza + idle;
            match (c.deadline, up) {
                (Some(d), _) => d.min(at),
                (None, _) => at.min(c.last_output + keepalive),
            }
        });
        let outs = self.outs.values().filter_map(|o| {
            let retry = o
                .retry_at
                .filter(|_| !o.queue.is_empty() || !o.verifies.is_empty());
            let dns = o.resolution.as_ref().and_then(|(_, r)| r.poll_timeout());
            match (retry, dns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        });
        conns.chain(outs).min()
    }
}

/// One server-to-server stream, as [`Server::s2s_status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sStream {
    /// Our domain on it (an inbound stream's header `to`; `-` if none yet).
    pub local: String,
    /// The remote domain (an inbound stream's header `from`; `-` if none).
    pub remote: String,
    /// We opened it.
    pub outbound: bool,
    /// How it was authenticated: `certificate` (SASL EXTERNAL, or
    /// dialback accepted from the certificate), `dialback`, or `none` yet.
    pub auth: &'static str,
    /// The remote address, once connected.
    pub address: Option<IpAddr>,
    /// Stanzas waiting for an outbound stream to come up.
    pub queued: usize,
}

/// The stanza with its namespace (and that of its children in it) moved
/// from `from` to `to`: `jabber:client` inside the server, `jabber:server`
/// on a server-to-server stream.
fn renamespace(el: &mut Element, from: &str, to: &str) {
    if el.ns == from {
        el.ns = to.to_owned();
        for c in el.children.iter_mut() {
            if let crate::xml::Node::Element(child) = c {
                renamespace(child, from, to);
            }
        }
    }
}

impl Server {
    /// The server-to-server streams, in no particular order.
    pub fn s2s_status(&self) -> Vec<S2sStream> {
        self.s2s
            .conns
            .values()
            .map(|c| {
                let (local, remote, queued) = match &c.side {
                    Side::In(i) => (i.local.clone(), i.from.clone(), 0),
                    Side::Out(o) => (
                        Some(o.pair.0.clone()),
                        Some(o.pair.1.clone()),
                        self.s2s.outs.get(&o.pair).map_or(0, |out| out.queue.len()),
                    ),
                };
                S2sStream {
                    local: local.unwrap_or_else(|| "-".into()),
                    remote: remote.unwrap_or_else(|| "-".into()),
                    outbound: matches!(c.side, Side::Out(_)),
                    auth: c.auth,
                    address: c.address,
                    queued,
                }
            })
            .collect()
    }

    /// Our domains a remote server may address: the configured domain and,
    /// in a network, this server's host.
    fn s2s_local(&self, domain: &str) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        let host = self.net.host();
        (domain == self.domain.as_str() || (!host.is_empty() && domain == host)).then_some(domain)
    }

    /// Sends a routed stanza (`from` stamped, `to` set) to the remote
    /// domain `remote`.
    pub(crate) fn s2s_send(&mut self, now: Instant, remote: String, el: Element) {
        let Some(cfg) = self.s2s.config.as_ref() else {
            return self.bounce_routed(&el, SE::RemoteServerNotFound);
        };
        let limit = cfg.queue_limit;
        let local = el
            .attr("from")
            .and_then(|f| self.jids.parse(f).ok())
            .and_then(|f| self.s2s_local(f.domain().as_str()));
        let Some(local) = local else {
            // Only our own entities send to other servers.
            return self.bounce_routed(&el, SE::NotAllowed);
        };
        let pair = (local, remote);
        let out = self.s2s.outs.entry(pair.clone()).or_insert_with(Out::new);
        if out.queue.len() >= limit {
            log::warn!("s2s: the queue to {} is full", pair.1);
            return self.bounce_routed(&el, SE::ResourceConstraint);
        }
        out.queue.push_back(el);
        self.s2s_flush(now, &pair);
        self.s2s_step(now, &pair);
    }

    /// Writes what the pair's queue holds to its stream, once it is up,
    /// as far as the output budget allows.
    fn s2s_flush(&mut self, now: Instant, pair: &Pair) {
        let budget = self.config.limits.output_budget;
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        let Some(id) = out.conn else {
            return;
        };
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        if !matches!(&conn.side, Side::Out(o) if o.phase == Phase::Up) {
            return;
        }
        let mut buf = Vec::new();
        while conn.stream.pending_output() + buf.len() < budget {
            let Some(mut el) = out.queue.pop_front() else {
                break;
            };
            renamespace(&mut el, ns::CLIENT, ns::SERVER);
            el.write_to(&mut buf, ns::SERVER);
        }
        if !buf.is_empty() {
            conn.last_stanza = now;
            self.s2s_write(now, id, &buf);
        }
    }

    /// Brings the pair's stream up if something waits for it: the next
    /// DNS question, the next address, or the end of the attempt.
    fn s2s_step(&mut self, now: Instant, pair: &Pair) {
        if self.shutting_down() {
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
    fn s2s_give_up(&mut self, now: Instant, pair: &Pair, why: &str) {
        let Some(out) = self.s2s.outs.get_mut(pair) else {
            return;
        };
        if let Some((token, _)) = out.resolution.take() {
            self.s2s.dns.remove(&token);
        }
        let cond = if out.timed_out {
            SE::RemoteServerTimeout
        } else {
            SE::RemoteServerNotFound
        };
        out.timed_out = false;
        out.retry_at = Some(now + out.backoff);
        // Nobody waited for the stream (an idle one that broke, the
        // server stopping): nothing for an operator to act on.
        let level = if out.queue.is_empty() && out.verifies.is_empty() && out.asked.is_empty() {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "s2s: cannot reach {} from {}: {why}; {} stanzas answered with {}, again in {} s",
            pair.1,
            pair.0,
            out.queue.len(),
            cond.as_str(),
            out.backoff.as_secs()
        );
        out.backoff = (out.backoff * 2).min(MAX_BACKOFF);
        let queue = core::mem::take(&mut out.queue);
        let verifies: Vec<Verify> = out.verifies.drain(..).chain(out.asked.drain(..)).collect();
        for el in queue {
            self.bounce_routed(&el, cond);
        }
        for v in verifies {
            self.s2s_result(now, v.inbound, &pair.0, &pair.1, Err(cond));
        }
    }

    /// A DNS answer for the question `token`.
    pub fn handle_dns_answer(&mut self, now: Instant, token: ConnId, bytes: &[u8]) {
        self.clock.tick(now);
        let Some(pair) = self.s2s.dns.get(&token).cloned() else {
            return;
        };
        if let Some(Some((t, r))) = self.s2s.outs.get_mut(&pair).map(|o| o.resolution.as_mut()) {
            if *t == token {
                r.handle_answer(now, bytes);
            }
        }
        self.s2s_step(now, &pair);
    }

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

    /// The runtime connected the outbound stream `id`.
    pub(crate) fn s2s_connected(&mut self, now: Instant, id: ConnId, peer: IpAddr) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        if o.phase != Phase::Connecting {
            return;
        }
        conn.address = Some(peer);
        o.phase = Phase::Header;
        let (local, remote) = o.pair.clone();
        if o.direct_tls {
            let Ok(name) = ServerName::try_from(remote.clone()) else {
                return self.s2s_gone(now, id, "the domain is not a TLS server name");
            };
            let tls = rustls::ClientConnection::new(self.tls.s2s_client_direct.clone(), name)
                .expect("valid client config");
            conn.stream = Stream::new(
                StreamNs::Server,
                &self.config.limits,
                Some(stream::unbounded(tls.into())),
            );
            conn.stream.read_tls(&[]);
        }
        let header = conn.stream.header_bytes("", &local, Some(&remote));
        let header = strip_empty_id(header);
        self.s2s_write(now, id, &header);
    }

    /// The runtime could not connect the outbound stream `id`.
    pub(crate) fn s2s_connect_failed(&mut self, now: Instant, id: ConnId, why: &str) {
        self.s2s_gone(now, id, &format!("cannot connect: {why}"));
    }

    /// Bytes arrived on a server-to-server stream.
    pub(crate) fn s2s_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let (plain, closed) = if conn.stream.is_tls() {
            let read = conn.stream.read_tls(data);
            (read.plain, read.closed)
        } else {
            (data.to_vec(), false)
        };
        self.s2s_transmit(id);
        let was_tls = self.s2s.conns.get(&id).is_some_and(|c| c.stream.is_tls());
        let mut input = &plain[..];
        loop {
            let Some(conn) = self.s2s.conns.get_mut(&id) else {
                return;
            };
            // STARTTLS in this read: what follows it is TLS, not XML.
            if !was_tls && conn.stream.is_tls() {
                let rest = input.to_vec();
                if !rest.is_empty() {
                    self.s2s_data(now, id, &rest);
                }
                return;
            }
            let ev = match conn.stream.next_event(&mut input) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(cond) => return self.s2s_fail(now, id, cond, "bad XML"),
            };
            match ev {
                StreamEvent::Header(h) => self.s2s_header(now, id, h),
                StreamEvent::Stanza(el) => self.s2s_element(now, id, el),
                StreamEvent::End => {
                    self.s2s_write(now, id, stream::CLOSE);
                    return self.s2s_gone(now, id, "the peer closed the stream");
                }
            }
        }
        if closed && self.s2s.owns(id) {
            self.s2s_gone(now, id, "TLS closed by the peer, or failed");
        }
    }

    fn s2s_header(&mut self, now: Instant, id: ConnId, h: StreamHeader) {
        log::trace!(
            "s2s {} in: header from {:?} to {:?} id {:?}",
            id.0,
            h.from,
            h.to,
            h.id
        );
        if let Err((cond, text)) = stream::header::check_version(&h) {
            return self.s2s_fail(now, id, cond, text);
        }
        let require_tls = self.s2s.config.as_ref().is_some_and(|c| c.require_tls);
        let require_certs = self
            .s2s
            .config
            .as_ref()
            .is_some_and(|c| c.require_certificates);
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        match &mut conn.side {
            Side::Out(o) => {
                o.stream_id = h.id.clone();
                o.phase = Phase::Features;
                conn.stream.set_open();
            }
            Side::In(_) => {
                let Some(local) = h.to.as_deref().and_then(|t| self.s2s_local(t)) else {
                    return self.s2s_fail(now, id, XE::HostUnknown, "not a domain of this server");
                };
                let from = h.from.as_deref().map(str::to_ascii_lowercase);
                if from.as_deref().is_some_and(|f| self.s2s.refused(f)) {
                    return self.s2s_fail(now, id, XE::PolicyViolation, "this domain is refused");
                }
                let external = from.as_deref().is_some_and(|f| self.s2s_cert_for(id, f));
                let stream_id = self.random_hex(16);
                let Some(conn) = self.s2s.conns.get_mut(&id) else {
                    return;
                };
                let Side::In(i) = &mut conn.side else {
                    return;
                };
                i.local = Some(local.clone());
                if i.from.is_none() {
                    i.from = from.clone();
                }
                conn.stream_id = stream_id.clone();
                let mut out = conn
                    .stream
                    .header_bytes(&stream_id, &local, from.as_deref());
                conn.stream.set_open();
                let mut features = Element::new(ns::STREAM, "features");
                let tls = conn.stream.is_tls();
                if i.sasl_done {
                    // Authenticated: nothing more to negotiate.
                } else if !tls {
                    let mut starttls = Element::new(ns::TLS, "starttls");
                    if require_tls {
                        starttls = starttls.with_child(Element::new(ns::TLS, "required"));
                    }
                    features = features.with_child(starttls);
                    if !require_tls && !require_certs {
                        features = features.with_child(dialback_feature());
                    }
                } else {
                    if external {
                        features =
                            features.with_child(Element::new(ns::SASL, "mechanisms").with_child(
                                Element::new(ns::SASL, "mechanism").with_text("EXTERNAL"),
                            ));
                    }
                    if !require_certs || external {
                        features = features.with_child(dialback_feature());
                    }
                }
                features.write_to(&mut out, ns::SERVER);
                self.s2s_write(now, id, &out);
            }
        }
    }

    /// Whether the TLS certificate of stream `id` authenticates `domain`.
    fn s2s_cert_for(&self, id: ConnId, domain: &str) -> bool {
        let (Some(conn), Some(roots), Some(unix)) = (
            self.s2s.conns.get(&id),
            self.tls.s2s_roots.as_ref(),
            self.clock.unix_now(),
        ) else {
            return false;
        };
        crate::tls::authenticates(roots, conn.stream.peer_chain(), domain, unix)
    }

    fn s2s_element(&mut self, now: Instant, id: ConnId, el: Element) {
        log::trace!("s2s {} in: {}", id.0, el.to_xml(ns::SERVER));
        if el.is(ns::STREAM, "error") {
            let why = crate::error::describe_stream_error(&el);
            return self.s2s_gone(now, id, &format!("stream error {why} from the peer"));
        }
        if el.is(ns::DIALBACK, "verify") && el.attr("type").is_none() {
            return self.s2s_verify_asked(now, id, &el);
        }
        let Some(conn) = self.s2s.conns.get(&id) else {
            return;
        };
        match &conn.side {
            Side::Out(_) => self.s2s_out_element(now, id, el),
            Side::In(_) => self.s2s_in_element(now, id, el),
        }
    }

    // ------------------------------------------------------------ outbound

    fn s2s_out_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let require_tls = self.s2s.config.as_ref().is_some_and(|c| c.require_tls);
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::Out(o) = &mut conn.side else {
            return;
        };
        let pair = o.pair.clone();
        if el.is(ns::DIALBACK, "verify") {
            return self.s2s_verify_answered(now, &pair, &el);
        }
        match o.phase {
            Phase::Features if el.is(ns::STREAM, "features") => {
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
            _ => self.s2s_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "not expected while negotiating",
            ),
        }
    }

    /// Dialback on outbound stream `id`: our key for the peer's stream id.
    fn s2s_out_dialback(&mut self, now: Instant, id: ConnId) {
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
        let key = self.s2s.keys.key(&pair.1, &pair.0, &stream_id);
        let result = Element::new(ns::DIALBACK, "result")
            .with_attr("from", &pair.0)
            .with_attr("to", &pair.1)
            .with_text(&key);
        self.s2s_write(now, id, result.to_xml(ns::SERVER).as_bytes());
    }

    /// The outbound stream `id` is authenticated: the queue goes out.
    fn s2s_out_up(&mut self, now: Instant, id: ConnId) {
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
        self.s2s_ask_verifies(now, id, &pair);
        self.s2s_flush(now, &pair);
    }

    /// The peer refused us (or we it): the attempt ends for every address.
    fn s2s_out_refused(&mut self, now: Instant, id: ConnId, why: &str) {
        let pair = match self.s2s.conns.get(&id).map(|c| &c.side) {
            Some(Side::Out(o)) => o.pair.clone(),
            _ => return,
        };
        self.s2s_fail(now, id, XE::NotAuthorized, why);
        self.s2s_give_up(now, &pair, why);
    }

    /// Sends the verifications waiting for the pair's stream `id`.
    fn s2s_ask_verifies(&mut self, now: Instant, id: ConnId, pair: &Pair) {
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
    fn s2s_verify_answered(&mut self, now: Instant, pair: &Pair, el: &Element) {
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

    // ------------------------------------------------------------- inbound

    fn s2s_in_element(&mut self, now: Instant, id: ConnId, el: Element) {
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

    /// SASL EXTERNAL on an inbound stream (XEP-0178).
    fn s2s_in_external(&mut self, now: Instant, id: ConnId, el: &Element) {
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
        let limits = self.config.limits.clone();
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let Side::In(i) = &mut conn.side else {
            return;
        };
        if !ok {
            let failure = Element::new(ns::SASL, "failure")
                .with_child(Element::new(ns::SASL, "not-authorized"));
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

    /// A `<db:result/>` on an inbound stream: the originating server asks
    /// us to accept its domain on this stream.
    fn s2s_in_dialback(&mut self, now: Instant, id: ConnId, el: &Element) {
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
    fn s2s_result(
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
    fn s2s_verify_asked(&mut self, now: Instant, id: ConnId, el: &Element) {
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
    fn s2s_in_stanza(&mut self, now: Instant, id: ConnId, mut el: Element) {
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
        }
        renamespace(&mut el, ns::SERVER, ns::CLIENT);
        el.set_attr("from", Some(from.as_str()));
        el.set_attr("to", Some(to.as_str()));
        self.route(el);
    }

    // ------------------------------------------------------------- streams

    /// Ends a stream with a stream error (RFC 6120 section 4.9).
    pub(crate) fn s2s_fail(&mut self, now: Instant, id: ConnId, cond: XE, text: &str) {
        let stream_id = self.random_hex(16);
        let local = self.domain.as_str().to_owned();
        let Some(conn) = self.s2s.conns.get_mut(&id) else {
            return;
        };
        let connecting = matches!(&conn.side, Side::Out(o) if o.phase == Phase::Connecting);
        if !connecting {
            let bytes = conn
                .stream
                .error_bytes(Some(&stream_id), &local, cond, Some(text));
            self.s2s_write(now, id, &bytes);
        }
        self.s2s_gone(now, id, &format!("stream error {} ({text})", cond.as_str()));
    }

    /// Ends a stream cleanly (its closing tag).
    fn s2s_close(&mut self, now: Instant, id: ConnId, reason: &str) {
        self.s2s_write(now, id, stream::CLOSE);
        self.s2s_gone(now, id, reason);
    }

    /// Forgets a stream and tells the runtime to close it; an outbound
    /// stream's pair tries its next address, or reconnects if stanzas wait.
    pub(crate) fn s2s_gone(&mut self, now: Instant, id: ConnId, reason: &str) {
        let Some(mut conn) = self.s2s.conns.remove(&id) else {
            return;
        };
        let last = conn.stream.finish();
        if !last.is_empty() {
            self.closing_output_insert(id, last);
            self.fx.push(Event::Transmit(id));
        }
        self.fx.push(Event::Close(id));
        let address = conn.address.map_or_else(|| "-".into(), |a| a.to_string());
        match conn.side {
            Side::In(i) => {
                log::info!(
                    "s2s: inbound stream from {} ({address}) ended: {reason}",
                    i.from.as_deref().unwrap_or("-")
                );
            }
            Side::Out(o) => {
                let Some(out) = self.s2s.outs.get_mut(&o.pair) else {
                    return;
                };
                if out.conn != Some(id) {
                    return;
                }
                out.conn = None;
                // What was asked and not answered is asked again.
                let asked: Vec<Verify> = out.asked.drain(..).collect();
                out.verifies.extend(asked);
                if o.phase == Phase::Up {
                    log::info!(
                        "s2s: stream from {} to {} ({address}) ended: {reason}",
                        o.pair.0,
                        o.pair.1
                    );
                    if let Some((token, _)) = out.resolution.take() {
                        self.s2s.dns.remove(&token);
                    }
                } else {
                    log::debug!(
                        "s2s: {} at {address} did not work for {}: {reason}",
                        o.pair.1,
                        o.pair.0
                    );
                    if reason.contains("timeout") || reason.contains("too long") {
                        out.timed_out = true;
                    }
                }
                self.s2s_step(now, &o.pair);
            }
        }
    }

    /// Queues bytes on a stream.
    fn s2s_write(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        if let Some(conn) = self.s2s.conns.get_mut(&id) {
            log::trace!("s2s {} out: {}", id.0, String::from_utf8_lossy(bytes));
            conn.stream.write(bytes);
            conn.last_output = now;
            self.s2s_transmit(id);
        }
    }

    /// Tells the runtime once that a stream has bytes to send.
    fn s2s_transmit(&mut self, id: ConnId) {
        if let Some(conn) = self.s2s.conns.get_mut(&id) {
            if !conn.transmit_queued && conn.stream.pending_output() > 0 {
                conn.transmit_queued = true;
                self.fx.push(Event::Transmit(id));
            }
        }
    }

    /// The bytes a stream has to send (see [`Server::poll_transmit`]); the
    /// queue behind it moves on.
    pub(crate) fn s2s_take(&mut self, id: ConnId, buf: &mut Vec<u8>) -> Option<usize> {
        let conn = self.s2s.conns.get_mut(&id)?;
        conn.transmit_queued = false;
        let n = conn.stream.take_output(buf);
        if let (Side::Out(o), Some(now)) = (&conn.side, self.clock.now()) {
            if o.phase == Phase::Up {
                let pair = o.pair.clone();
                self.s2s_flush(now, &pair);
            }
        }
        Some(n)
    }

    /// Whether a stream may be read (its output is within the budget).
    pub(crate) fn s2s_wants_read(&self, id: ConnId) -> Option<bool> {
        let conn = self.s2s.conns.get(&id)?;
        Some(conn.stream.pending_output() < self.config.limits.output_budget)
    }

    /// Fires what is due: DNS timeouts, retries, handshake deadlines, idle
    /// streams and keepalives.
    pub(crate) fn s2s_timeout(&mut self, now: Instant) {
        let Some(idle) = self.s2s.config.as_ref().map(|c| c.idle_timeout) else {
            return;
        };
        let keepalive = self.config.limits.keepalive_interval;
        let pairs: Vec<Pair> = self.s2s.outs.keys().cloned().collect();
        for pair in pairs {
            if let Some(Some((_, r))) = self.s2s.outs.get_mut(&pair).map(|o| o.resolution.as_mut())
            {
                if r.poll_timeout().is_some_and(|at| at <= now) {
                    r.handle_timeout(now);
                }
            }
            self.s2s_step(now, &pair);
        }
        let ids: Vec<ConnId> = self.s2s.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.s2s.conns.get(&id) else {
                continue;
            };
            if conn.deadline.is_some_and(|d| now >= d) {
                if let Side::Out(o) = &conn.side {
                    if let Some(out) = self.s2s.outs.get_mut(&o.pair) {
                        out.timed_out = true;
                    }
                }
                self.s2s_fail(
                    now,
                    id,
                    XE::ConnectionTimeout,
                    "the negotiation took too long",
                );
            } else if now >= conn.last_stanza + idle {
                self.s2s_close(now, id, "idle");
            } else if conn.deadline.is_none() && now >= conn.last_output + keepalive {
                // Whitespace keepalive (RFC 6120 section 4.6.1).
                self.s2s_write(now, id, b" ");
            }
        }
    }

    /// Shutdown: every stream ends with `system-shutdown`; what waits is
    /// answered.
    pub(crate) fn s2s_shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.s2s.conns.keys().copied().collect();
        for id in ids {
            self.s2s_fail(now, id, XE::SystemShutdown, "the server is shutting down");
        }
        let pairs: Vec<Pair> = self.s2s.outs.keys().cloned().collect();
        for pair in pairs {
            self.s2s_give_up(now, &pair, "the server is shutting down");
        }
    }
}

/// The dialback feature (XEP-0220 section 2.4), with error support.
fn dialback_feature() -> Element {
    Element::new(NS_DIALBACK_FEATURE, "dialback")
        .with_child(Element::new(NS_DIALBACK_FEATURE, "errors"))
}

/// An initiating server's header has no `id` (RFC 6120 section 4.7.3).
fn strip_empty_id(header: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(header).expect("headers are UTF-8");
    text.replacen(" id=''", "", 1).into_bytes()
}

#[cfg(test)]
mod tests;
