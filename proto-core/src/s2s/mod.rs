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
//! domain goes straight to dialback). Another of our domains (the
//! network's and this host, in a network) rides on a stream that is up to
//! the same remote domain when its peer offered dialback: it asks with a
//! `<db:result/>` of its own (XEP-0220 multiplexing), and gets a stream
//! of its own if the peer says no or nothing in time.
//!
//! Stanzas wait in the pair's queue (at most
//! [`S2sConfig::queue_limit`](crate::S2sConfig::queue_limit); one more is
//! answered with `resource-constraint`) until the stream is authenticated,
//! and go out as the stream's output budget allows; messages, presence
//! subscriptions and iq answers are kept in the store meanwhile, until the
//! peer has them, and survive a restart (see `queue.rs`). When no address gives
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
mod inbound;
mod outbound;
mod queue;

use core::net::IpAddr;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::config::S2sConfig;
use crate::dns::Resolution;
use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::server::{ConnId, IdMap, Keyed, PeerMap, Server};
use crate::stream::{self, Stream, StreamNs};
use crate::xml::{Element, StreamEvent, StreamHeader};
use crate::Event;

pub(crate) use dialback::Keys;
pub(crate) use queue::Waiting;
use queue::{Item, Keep, Queued, Sent, Span};

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
    outs: PeerMap<Pair, Out>,
    /// Pairs whose queues go out once the core's caller drains its
    /// events: the store's answers of one batch let their stanzas go in
    /// one write (one TLS record) instead of one each.
    flush_later: Vec<Pair>,
    /// The DNS questions in flight: whose resolution they are.
    dns: IdMap<ConnId, Pair>,
    /// What the last run left in the store.
    load: queue::Load,
    /// Deletions of kept stanzas that failed, and when they are tried
    /// again.
    forget_again: Vec<(Instant, Pair, Span)>,
    /// Stanzas sent to the store so far (numbers the requests, for every
    /// pair: a pair's state may go and come back while one is in flight).
    stored: u64,
}

/// The outbound side of one pair of domains.
struct Out {
    /// The stream in use (connecting, negotiating or up).
    conn: Option<ConnId>,
    /// Where to connect next, while the stream is not up; its DNS token.
    resolution: Option<(ConnId, Resolution)>,
    /// Stanzas waiting for the stream (or for its output budget, or for
    /// the store), in order.
    queue: VecDeque<Queued>,
    /// The peer would not take this domain on a stream of another of ours:
    /// it gets a stream of its own.
    no_multiplexing: bool,
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
    /// In [`S2s::flush_later`].
    flush_later: bool,
}

impl Out {
    /// Nothing waits yet, no backoff.
    fn new() -> Out {
        Out {
            conn: None,
            resolution: None,
            queue: VecDeque::new(),
            no_multiplexing: false,
            verifies: Vec::new(),
            asked: Vec::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            timed_out: false,
            external_failed: false,
            flush_later: false,
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
    /// Stream management: the peer's stanzas handled since its `<enable/>`
    /// (our `h`), once it enabled it.
    sm: Option<u32>,
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
    /// The peer's features offered stream management (XEP-0198).
    sm_offered: bool,
    /// Stream management, once we asked for it.
    sm: Option<OutSm>,
    /// Our other domains on this stream (dialback multiplexing, XEP-0220
    /// section 2.6): asked for with a `<db:result/>` of their own once the
    /// stream is up, and carrying their pair's stanzas once valid.
    also: Vec<Also>,
}

/// Another of our domains on an outbound stream.
struct Also {
    local: String,
    state: AlsoState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlsoState {
    /// Our `<db:result/>` went out; the answer is due by then.
    Asked(Instant),
    /// The peer said valid: the domain's stanzas go on the stream.
    Up,
    /// The peer said no (or nothing in time): the domain gets its own.
    Refused,
}

impl Outbound {
    /// Which of our domains on the stream sends `local`'s stanzas, once it
    /// may: 0 the stream's own, `i + 1` the `i`th of `also`.
    fn carrier(&self, local: &str) -> Option<usize> {
        if self.phase != Phase::Up {
            return None;
        }
        if self.pair.0 == local {
            return Some(0);
        }
        self.also
            .iter()
            .position(|a| a.state == AlsoState::Up && a.local == local)
            .map(|i| i + 1)
    }

    /// The pair of our domain number `i` (see [`Outbound::carrier`]).
    fn pair_of(&self, i: usize) -> Pair {
        match i {
            0 => self.pair.clone(),
            i => (self.also[i - 1].local.clone(), self.pair.1.clone()),
        }
    }

    /// Every pair the stream serves or was asked to: its own first.
    fn pairs(&self) -> Vec<Pair> {
        (0..=self.also.len()).map(|i| self.pair_of(i)).collect()
    }
}

/// Stream management on an outbound stream (XEP-0198 without resumption):
/// what went out since `<enable/>` and is not acknowledged yet.
#[derive(Default)]
struct OutSm {
    /// The peer said `<enabled/>`.
    enabled: bool,
    /// The `h` of its last `<a/>`.
    acked: u32,
    /// Stanzas written and not covered by an `<a/>`, oldest first (in the
    /// server namespace, as written), each with which of our domains on
    /// the stream sent it (see [`Outbound::carrier`]).
    unacked: VecDeque<(usize, queue::Sent)>,
    /// An `<r/>` went out and its answer has not come.
    asked: bool,
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
    pub(crate) fn new(config: Option<&S2sConfig>, keyed: Keyed) -> S2s {
        S2s {
            keys: Keys::new(config.map_or(&[][..], |c| &c.dialback_secret)),
            config: config.cloned(),
            conns: IdMap::default(),
            outs: PeerMap::with_hasher(keyed),
            flush_later: Vec::new(),
            dns: IdMap::default(),
            load: queue::Load::default(),
            forget_again: Vec::new(),
            stored: 0,
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
            let at = match (c.deadline, up) {
                (Some(d), _) => d.min(at),
                (None, _) => at.min(c.last_output + keepalive),
            };
            match &c.side {
                Side::Out(o) => o
                    .also
                    .iter()
                    .filter_map(|a| match a.state {
                        AlsoState::Asked(by) => Some(by),
                        _ => None,
                    })
                    .fold(at, Instant::min),
                Side::In(_) => at,
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
        let load = self.load.retry_at.filter(|_| !self.load.done);
        let forget = self.forget_again.iter().map(|(at, _, _)| *at).min();
        conns.chain(outs).chain(load).chain(forget).min()
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
    /// Stream management (XEP-0198) is on: the peer acknowledges what it
    /// got (outbound), or we do (inbound).
    pub sm: bool,
    /// Outbound: stanzas written and not acknowledged yet.
    pub unacked: usize,
    /// Outbound: our other domains the peer accepted on it (dialback
    /// multiplexing).
    pub also: Vec<String>,
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
                let (sm, unacked, also) = match &c.side {
                    Side::In(i) => (i.sm.is_some(), 0, Vec::new()),
                    Side::Out(o) => (
                        o.sm.as_ref().is_some_and(|s| s.enabled),
                        o.sm.as_ref().map_or(0, |s| s.unacked.len()),
                        o.also
                            .iter()
                            .filter(|a| a.state == AlsoState::Up)
                            .map(|a| a.local.clone())
                            .collect(),
                    ),
                };
                S2sStream {
                    local: local.unwrap_or_else(|| "-".into()),
                    remote: remote.unwrap_or_else(|| "-".into()),
                    outbound: matches!(c.side, Side::Out(_)),
                    auth: c.auth,
                    address: c.address,
                    queued,
                    sm,
                    unacked,
                    also,
                }
            })
            .collect()
    }

    /// Federation is on (`[s2s]`).
    pub fn s2s_enabled(&self) -> bool {
        self.s2s.enabled()
    }

    /// Stanzas waiting for their outbound streams, all remote domains
    /// together (also those waiting for the next attempt).
    pub fn s2s_queued(&self) -> usize {
        self.s2s.outs.values().map(|o| o.queue.len()).sum()
    }

    /// Our domains a remote server may address: the configured domain and,
    /// in a network, this server's host.
    fn s2s_local(&self, domain: &str) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        let host = self.net.host();
        (domain == self.domain.as_str() || (!host.is_empty() && domain == host)).then_some(domain)
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
                    // Authenticated: only stream management to enable.
                    features = features.with_child(Element::new(ns::SM, "sm"));
                } else if !tls {
                    let mut starttls = Element::new(ns::TLS, "starttls");
                    if require_tls {
                        starttls = starttls.with_child(Element::new(ns::TLS, "required"));
                    }
                    features = features.with_child(starttls);
                    if !require_tls && !require_certs {
                        features = features.with_child(dialback_feature());
                    }
                    if !require_tls {
                        features = features.with_child(Element::new(ns::SM, "sm"));
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
                    // For after the authentication (dialback needs no restart).
                    features = features.with_child(Element::new(ns::SM, "sm"));
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
            Side::Out(mut o) => {
                // What the peer did not acknowledge goes again on the next
                // stream, in order, before what waited behind it (or is
                // answered with an error if the domain cannot be reached).
                let mut unacked: Vec<Vec<Queued>> = o.pairs().iter().map(|_| Vec::new()).collect();
                if let Some(sm) = o.sm.take() {
                    if !sm.unacked.is_empty() {
                        log::info!(
                            "s2s: {} stanza(s) to {} not acknowledged when the stream ended; \
                             they go again",
                            sm.unacked.len(),
                            o.pair.1
                        );
                    }
                    for (i, sent) in sm.unacked {
                        unacked[i].push(sent.requeue());
                    }
                }
                let mut pairs = o.pairs();
                let mut was_on: Vec<Pair> = Vec::new();
                for (pair, unacked) in pairs.iter().zip(unacked) {
                    let Some(out) = self.s2s.outs.get_mut(pair) else {
                        continue;
                    };
                    if out.conn != Some(id) {
                        continue;
                    }
                    was_on.push(pair.clone());
                    out.conn = None;
                    if pair.0 != o.pair.0
                        && o.also
                            .iter()
                            .any(|a| a.local == pair.0 && matches!(a.state, AlsoState::Asked(_)))
                    {
                        // It ended on our asking: perhaps for it.
                        out.no_multiplexing = true;
                    }
                    for q in unacked.into_iter().rev() {
                        out.queue.push_front(q);
                    }
                    // What was asked and not answered is asked again.
                    let asked: Vec<Verify> = out.asked.drain(..).collect();
                    out.verifies.extend(asked);
                    if o.phase == Phase::Up {
                        log::info!(
                            "s2s: stream from {} to {} ({address}) ended: {reason}",
                            pair.0,
                            pair.1
                        );
                        if let Some((token, _)) = out.resolution.take() {
                            self.s2s.dns.remove(&token);
                        }
                    } else {
                        log::debug!(
                            "s2s: {} at {address} did not work for {}: {reason}",
                            pair.1,
                            pair.0
                        );
                        if reason.contains("timeout") || reason.contains("too long") {
                            out.timed_out = true;
                        }
                    }
                }
                // (Only those: another pair may be in the middle of its
                // own step, which called this.)
                pairs.retain(|p| was_on.contains(p));
                for pair in &pairs {
                    self.s2s_step(now, pair);
                }
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
                // Every pair on it, ours and those riding on it (on the
                // hot path: no list made when none rides on it).
                let pair = o.pair.clone();
                let riding: Vec<Pair> = o
                    .also
                    .iter()
                    .filter(|a| a.state == AlsoState::Up)
                    .map(|a| (a.local.clone(), o.pair.1.clone()))
                    .collect();
                self.s2s_flush(now, &pair);
                for pair in &riding {
                    self.s2s_flush(now, pair);
                }
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
        if !self.shutting_down() {
            self.s2s_load(now);
        }
        self.s2s_forget_again(now);
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
        for &id in &ids {
            self.s2s_multiplex_timeout(now, id);
        }
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
            } else if now >= conn.last_stanza + idle && !has_unacked(conn) {
                self.s2s_close(now, id, "idle");
            } else if conn.deadline.is_none() && now >= conn.last_output + keepalive {
                // Whitespace keepalive (RFC 6120 section 4.6.1), or the
                // question about what is still unacknowledged.
                let ask = match self.s2s.conns.get_mut(&id).map(|c| &mut c.side) {
                    Some(Side::Out(Outbound { sm: Some(sm), .. }))
                        if !sm.unacked.is_empty() && !sm.asked =>
                    {
                        sm.asked = true;
                        true
                    }
                    _ => false,
                };
                if ask {
                    let r = sm_element("r").to_xml(ns::SERVER);
                    self.s2s_write(now, id, r.as_bytes());
                } else {
                    self.s2s_write(now, id, b" ");
                }
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

/// Stanzas an outbound stream with stream management carries before the
/// peer must acknowledge some: more wait in the pair's (bounded) queue.
const MAX_UNACKED: usize = 10_000;

/// An outbound stream still waits for the peer to acknowledge something.
fn has_unacked(conn: &Conn) -> bool {
    matches!(&conn.side, Side::Out(o) if o.sm.as_ref().is_some_and(|s| !s.unacked.is_empty()))
}

/// `<r/>`, `<a h/>` and friends (XEP-0198).
fn sm_element(name: &str) -> Element {
    Element::new(ns::SM, name)
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
