//! The Kontalk network (Net): the links between the servers that share one
//! network domain (DESIGN.md, "Net").
//!
//! ## Links
//!
//! Each pair of servers of a network has one link, one TCP connection that
//! carries both directions. The server whose host name sorts first opens
//! it, to the other's Net listener (port 5270); the other only accepts.
//! A link that drops is opened again by the same side, after 1 s, then
//! twice as long each time it fails, up to [`MAX_BACKOFF`]; once up, the
//! backoff starts over.
//!
//! A link is TLS from the first byte (ALPN `kontalk-net`) with a
//! certificate on each side, and neither side trusts a certificate
//! authority: each compares the SHA-256 of the other's certificate with the
//! fingerprint its configuration lists for that host
//! ([`NetPeer::fingerprint`](crate::NetPeer::fingerprint)). Then the
//! stream headers (`jabber:server`, RFC 6120 section 4.7): the opener says
//! `from` (its host) and `to` (the other's); the acceptor refuses a `to`
//! that is not its host (`host-unknown`), a `from` that is not an enabled
//! server of its list (`host-unknown`) and a certificate that is not the
//! one listed for that `from` (`not-authorized`), and answers with its
//! header and features carrying `<link xmlns='urn:kontalk:net:0'/>`. The
//! opener checks the acceptor's certificate and `from` the same way when
//! the header comes; the features put the link up on its side.
//!
//! A newer link from a server replaces the one it had (a server that
//! restarted opens a new link before the old one times out).
//!
//! Once up, each side sends its OpenPGP public key (Kontalk),
//! `<key xmlns='urn:kontalk:net:0'>BASE64</key>`: the server list of
//! Kontalk clients (`network@<domain>`) names every server with the
//! fingerprint of its key.
//!
//! Once up, a link carries the directory (see `directory`) and the
//! stanzas between the servers' users, each delivered once (see
//! `handover`); before, anything but whitespace is refused
//! (`unsupported-stanza-type`).

use core::net::IpAddr;
use std::time::{Duration, Instant};

mod directory;
mod handover;

pub use directory::{BATCH, POLL};
pub use handover::{OUTBOX_BATCH, OUTBOX_LIMIT};

/// What waits on a store request of the network.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// The directory.
    Dir(directory::Waiting),
    /// Stanzas between the servers.
    Handover(handover::Waiting),
}

impl Waiting {
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Dir(w) => w.after_failure(),
            Waiting::Handover(w) => w.after_failure(),
        }
    }
}

use crate::config::NetConfig;
use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::server::{ConnId, IdMap, Keyed, Server};
use crate::stream::{self, Stream, StreamNs};
use crate::xml::{Element, StreamEvent, StreamHeader};
use crate::Event;

/// The first wait before a link is opened again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a link is opened again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The links, and what the core knows of each server of the network.
pub(crate) struct Net {
    /// This server's host name; empty when the server is alone.
    host: String,
    peers: Vec<Peer>,
    links: IdMap<ConnId, Link>,
    /// The network's users.
    dir: directory::Dir,
    /// The inbox was loaded at start (what a crash left is delivered).
    inbox_loaded: bool,
    inbox_loading: bool,
    /// Stanzas kept in the inbox before it was loaded: delivered after
    /// what the load brings (server, inbox id, stanza).
    early: Vec<(usize, i64, Element)>,
}

/// One other server of the network.
struct Peer {
    host: String,
    address: String,
    clients: String,
    fingerprint: [u8; 32],
    enabled: bool,
    /// The link that serves it (opening, in its handshake, or up).
    link: Option<ConnId>,
    /// This server opens the link (its host sorts first).
    opener: bool,
    /// When to open it next (the opener only, while there is none).
    retry_at: Option<Instant>,
    /// Its OpenPGP key and that key's fingerprint, as its link last sent it.
    pgp: Option<(String, crate::kontalk::keys::UserKey)>,
    backoff: Duration,
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The runtime is connecting (the opener's side).
    Connecting,
    /// TLS and the headers.
    Handshake,
    /// Both headers checked: the link carries the network's traffic.
    Up,
}

/// One link.
pub(crate) struct Link {
    stream: Stream,
    /// The server at the other end: known from the start for the opener,
    /// from its header for the acceptor.
    peer: Option<usize>,
    state: State,
    /// The remote address, for the log.
    address: Option<IpAddr>,
    /// The handshake must be done by then.
    deadline: Instant,
    last_input: Instant,
    last_output: Instant,
    transmit_queued: bool,
    /// What it sends of this server's directory, once the peer asked.
    sync: Option<directory::Sync>,
    /// What it sends of the outbox, once up (and the directory loaded).
    out: Option<handover::Out>,
    /// The epoch of the peer's outbox, from its `<sync/>`.
    peer_epoch: Option<String>,
    /// Its stanzas waiting in the store.
    receiving: usize,
    /// The number of the last stanza it brought.
    last_received: Option<u64>,
    /// The highest number made durable that the next `<a/>` acknowledges.
    ack_due: Option<u64>,
}

impl Net {
    /// The links of `config` (none for a server alone).
    pub(crate) fn new(config: Option<&NetConfig>, keyed: Keyed) -> Net {
        let Some(config) = config else {
            return Net {
                host: String::new(),
                peers: Vec::new(),
                links: IdMap::default(),
                dir: directory::Dir::new(0, keyed),
                inbox_loaded: false,
                inbox_loading: false,
                early: Vec::new(),
            };
        };
        let host = config.host.to_ascii_lowercase();
        let peers = config
            .peers
            .iter()
            .map(|p| {
                let peer_host = p.host.to_ascii_lowercase();
                Peer {
                    opener: host < peer_host,
                    host: peer_host,
                    address: p.address.clone(),
                    clients: p.clients.clone(),
                    fingerprint: p.fingerprint,
                    enabled: p.enabled,
                    link: None,
                    retry_at: None,
                    pgp: None,
                    backoff: FIRST_BACKOFF,
                }
            })
            .collect::<Vec<Peer>>();
        Net {
            host,
            dir: directory::Dir::new(peers.len(), keyed),
            peers,
            links: IdMap::default(),
            inbox_loaded: false,
            inbox_loading: false,
            early: Vec::new(),
        }
    }

    /// The other servers' hosts, in the order of the list.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.host.clone()).collect()
    }

    /// Whether `id` is a link.
    pub(crate) fn owns(&self, id: ConnId) -> bool {
        self.links.contains_key(&id)
    }

    /// The earliest instant the links have work.
    pub(crate) fn next_deadline(&self, keepalive: Duration, idle: Duration) -> Option<Instant> {
        let retries = self.peers.iter().filter_map(|p| p.retry_at);
        let links = self.links.values().map(|l| match l.state {
            State::Connecting | State::Handshake => l.deadline,
            State::Up => {
                let at = (l.last_output + keepalive).min(l.last_input + idle);
                match l.sync.as_ref().and_then(|s| s.next_poll) {
                    Some(poll) => at.min(poll),
                    None => at,
                }
            }
        });
        retries.chain(links).chain(self.dir.retry_load).min()
    }

    /// This server's host in its network (empty: alone).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The hosts whose link is up, for status and tests.
    pub(crate) fn up(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| {
                p.link
                    .and_then(|id| self.links.get(&id))
                    .is_some_and(|l| l.state == State::Up)
            })
            .map(|p| p.host.as_str())
            .collect()
    }

    /// The OpenPGP keys of the network's other (enabled) servers, as their
    /// links sent them: certifications by them count at login.
    pub(crate) fn keys(&self) -> Vec<&crate::kontalk::keys::UserKey> {
        self.peers
            .iter()
            .filter(|p| p.enabled)
            .filter_map(|p| p.pgp.as_ref().map(|(_, k)| k))
            .collect()
    }

    /// The enabled server of the list with this host.
    pub(crate) fn peer_by_host(&self, host: &str) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.enabled && p.host.eq_ignore_ascii_case(host))
    }
}

/// One other server of the network, as [`Server::net_status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its host name.
    pub host: String,
    /// `up`, `handshake`, `connecting`, `down` (its link is opened again at
    /// `retry_at`, or by the other side) or `disabled`.
    pub state: &'static str,
    /// The remote address of its link, once connected.
    pub address: Option<IpAddr>,
    /// When this server opens its link again.
    pub retry_at: Option<Instant>,
}

impl Server {
    /// This server's host in its network (`None`: alone), and each other
    /// server with the state of its link.
    pub fn net_status(&self) -> Option<(&str, Vec<PeerStatus>)> {
        if self.net.host.is_empty() {
            return None;
        }
        let peers = self
            .net
            .peers
            .iter()
            .map(|p| {
                let link = p.link.and_then(|id| self.net.links.get(&id));
                PeerStatus {
                    host: p.host.clone(),
                    state: match (p.enabled, link.map(|l| l.state)) {
                        (false, _) => "disabled",
                        (true, Some(State::Up)) => "up",
                        (true, Some(State::Handshake)) => "handshake",
                        (true, Some(State::Connecting)) => "connecting",
                        (true, None) => "down",
                    },
                    address: link.and_then(|l| l.address),
                    retry_at: p.retry_at,
                }
            })
            .collect();
        Some((&self.net.host, peers))
    }

    /// A client logs in as `username`, which is not an account here: if
    /// its home is another server of the network, the client is sent there
    /// (`see-other-host`, RFC 6120 section 4.9.3.19) and `true` returned.
    pub(crate) fn net_redirect(&mut self, id: ConnId, username: &str) -> bool {
        let Some(&i) = self.net.dir.homes.get(username) else {
            return false;
        };
        let p = &self.net.peers[i];
        let (host, clients) = (p.host.clone(), p.clients.clone());
        let reason = format!("{username} lives on {host}: see-other-host {clients}");
        self.fail_with(id, &crate::error::see_other_host(&clients), &reason);
        true
    }

    /// The hosts of the network whose link is up.
    pub fn net_links_up(&self) -> Vec<String> {
        self.net.up().into_iter().map(str::to_owned).collect()
    }

    /// Opens the links that are due, fires the links' deadlines. Called
    /// from [`Server::handle_timeout`] and [`Server::handle_wall_clock`]
    /// (the first one, at start, opens the links).
    pub(crate) fn net_timeout(&mut self, now: Instant) {
        // Alone, or shutting down: no link opens.
        if self.net.host.is_empty() || self.shutting_down() {
            return;
        }
        self.dir_load(now);
        let limits = &self.config.limits;
        let (keepalive, idle, auth) = (
            limits.keepalive_interval,
            limits.idle_timeout,
            limits.auth_timeout,
        );
        for i in 0..self.net.peers.len() {
            let p = &self.net.peers[i];
            let due =
                p.opener && p.enabled && p.link.is_none() && p.retry_at.is_none_or(|at| at <= now);
            if !due {
                continue;
            }
            let id = self.next_id();
            let p = &mut self.net.peers[i];
            p.retry_at = None;
            p.link = Some(id);
            let address = p.address.clone();
            log::debug!("net: opening the link to {} at {address}", p.host);
            self.net.links.insert(
                id,
                Link {
                    stream: Stream::new(StreamNs::Server, &self.config.limits, None),
                    peer: Some(i),
                    state: State::Connecting,
                    address: None,
                    deadline: now + auth,
                    last_input: now,
                    last_output: now,
                    transmit_queued: false,
                    sync: None,
                    out: None,
                    peer_epoch: None,
                    receiving: 0,
                    last_received: None,
                    ack_due: None,
                },
            );
            self.fx.push(Event::Connect { conn: id, address });
        }
        let ids: Vec<ConnId> = self.net.links.keys().copied().collect();
        for id in ids {
            let Some(link) = self.net.links.get_mut(&id) else {
                continue;
            };
            match link.state {
                State::Connecting if now >= link.deadline => {
                    self.link_gone(now, id, "no connection within the handshake time")
                }
                State::Handshake if now >= link.deadline => self.link_fail(
                    now,
                    id,
                    XE::ConnectionTimeout,
                    "the handshake took too long",
                ),
                State::Up if now >= link.last_input + idle => {
                    self.link_fail(now, id, XE::ConnectionTimeout, "the link went silent")
                }
                State::Up => {
                    if link
                        .sync
                        .as_ref()
                        .and_then(|s| s.next_poll)
                        .is_some_and(|at| at <= now)
                    {
                        self.dir_ask(id);
                    }
                    self.out_retry(id);
                    let Some(link) = self.net.links.get(&id) else {
                        continue;
                    };
                    if now >= link.last_output + keepalive {
                        // Whitespace keepalive (RFC 6120 section 4.6.1).
                        self.link_write(now, id, b" ");
                    }
                }
                _ => {}
            }
        }
    }

    /// A connection came in on the Net listener.
    pub(crate) fn net_accept(&mut self, now: Instant, peer: IpAddr) -> ConnId {
        let id = self.next_id();
        let tls = rustls::ServerConnection::new(self.tls.net_server.clone())
            .expect("valid server config");
        let link = Link {
            stream: Stream::new(
                StreamNs::Server,
                &self.config.limits,
                Some(stream::unbounded(tls.into())),
            ),
            peer: None,
            state: State::Handshake,
            address: Some(peer),
            deadline: now + self.config.limits.auth_timeout,
            last_input: now,
            last_output: now,
            transmit_queued: false,
            sync: None,
            out: None,
            peer_epoch: None,
            receiving: 0,
            last_received: None,
            ack_due: None,
        };
        self.net.links.insert(id, link);
        if self.net.host.is_empty() || self.shutting_down() {
            let why = if self.net.host.is_empty() {
                "this server is in no network"
            } else {
                "the server is shutting down"
            };
            self.link_fail(now, id, XE::HostUnknown, why);
        }
        id
    }

    /// The runtime connected the link or stream `id` (an [`Event::Connect`]).
    pub fn handle_connected(&mut self, now: Instant, id: ConnId, peer: IpAddr) {
        self.clock.tick(now);
        if self.s2s.owns(id) {
            return self.s2s_connected(now, id, peer);
        }
        let stream_id = self.random_hex(16);
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        let Some(i) = link.peer.filter(|_| link.state == State::Connecting) else {
            return;
        };
        let host = self.net.peers[i].host.clone();
        let Ok(name) = rustls::pki_types::ServerName::try_from(host.clone()) else {
            return self.link_gone(now, id, "the host is not a TLS server name");
        };
        let tls = rustls::ClientConnection::new(self.tls.net_client.clone(), name)
            .expect("valid client config");
        link.stream = Stream::new(
            StreamNs::Server,
            &self.config.limits,
            Some(stream::unbounded(tls.into())),
        );
        link.state = State::Handshake;
        link.address = Some(peer);
        link.deadline = now + self.config.limits.auth_timeout;
        link.last_input = now;
        // The ClientHello, and our header (sent once TLS is up).
        link.stream.read_tls(&[]);
        let header = link
            .stream
            .header_bytes(&stream_id, &self.net.host, Some(&host));
        self.link_write(now, id, &header);
    }

    /// The runtime could not connect the link or stream `id`.
    pub fn handle_connect_failed(&mut self, now: Instant, id: ConnId, why: &str) {
        self.clock.tick(now);
        if self.s2s.owns(id) {
            return self.s2s_connect_failed(now, id, why);
        }
        if self.net.owns(id) {
            self.link_gone(now, id, &format!("cannot connect: {why}"));
        }
    }

    /// Bytes arrived on a link.
    pub(crate) fn link_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        link.last_input = now;
        let read = link.stream.read_tls(data);
        self.link_transmit(id);
        let mut input = &read.plain[..];
        loop {
            let Some(link) = self.net.links.get_mut(&id) else {
                return;
            };
            let ev = match link.stream.next_event(&mut input) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(cond) => return self.link_fail(now, id, cond, "bad XML on the link"),
            };
            match ev {
                StreamEvent::Header(h) => self.link_header(now, id, h),
                StreamEvent::Stanza(el) => self.link_element(now, id, el),
                StreamEvent::End => {
                    self.link_write(now, id, stream::CLOSE);
                    return self.link_gone(now, id, "the peer closed the stream");
                }
            }
        }
        if read.closed && self.net.owns(id) {
            self.link_gone(now, id, "TLS closed by the peer, or failed");
        }
    }

    /// Whether the certificate of the link's TLS peer is the one listed for
    /// peer `i`; if not, the link ends (`not-authorized`).
    fn pinned(&mut self, now: Instant, id: ConnId, i: usize) -> bool {
        let pinned = self.net.links.get(&id).is_some_and(|l| {
            l.stream
                .peer_certificate()
                .is_some_and(|c| crate::tls::fingerprint(c) == self.net.peers[i].fingerprint)
        });
        if !pinned {
            self.link_fail(
                now,
                id,
                XE::NotAuthorized,
                "the certificate is not the one listed for this host",
            );
        }
        pinned
    }

    fn link_header(&mut self, now: Instant, id: ConnId, h: StreamHeader) {
        if let Err((cond, text)) = stream::header::check_version(&h) {
            return self.link_fail(now, id, cond, text);
        }
        let Some(link) = self.net.links.get(&id) else {
            return;
        };
        let from = h.from.as_deref().unwrap_or("");
        match link.peer {
            // We opened it: the acceptor says who it is.
            Some(i) => {
                if !from.eq_ignore_ascii_case(&self.net.peers[i].host) {
                    return self.link_fail(
                        now,
                        id,
                        XE::InvalidFrom,
                        "the header names another host than the one connected to",
                    );
                }
                if !self.pinned(now, id, i) {
                    return;
                }
                if let Some(link) = self.net.links.get_mut(&id) {
                    link.stream.set_open();
                }
            }
            // It was opened to us: who claims to be calling, and to whom.
            None => {
                let to = h.to.as_deref().unwrap_or("");
                if !to.eq_ignore_ascii_case(&self.net.host) {
                    return self.link_fail(now, id, XE::HostUnknown, "not this server's host");
                }
                let Some(i) = self.net.peer_by_host(from) else {
                    return self.link_fail(
                        now,
                        id,
                        XE::HostUnknown,
                        "not an enabled server of this network",
                    );
                };
                if !self.pinned(now, id, i) {
                    return;
                }
                let host = self.net.peers[i].host.clone();
                let stream_id = self.random_hex(16);
                let Some(link) = self.net.links.get_mut(&id) else {
                    return;
                };
                link.peer = Some(i);
                let mut out = link
                    .stream
                    .header_bytes(&stream_id, &self.net.host, Some(&host));
                link.stream.set_open();
                let features =
                    Element::new(ns::STREAM, "features").with_child(Element::new(ns::NET, "link"));
                out.extend_from_slice(features.to_xml(ns::SERVER).as_bytes());
                self.link_write(now, id, &out);
                self.link_up(now, id, i);
            }
        }
    }

    fn link_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let Some(link) = self.net.links.get(&id) else {
            return;
        };
        if el.is(ns::STREAM, "error") {
            let why = crate::error::describe_stream_error(&el);
            return self.link_gone(now, id, &format!("stream error {why} from the peer"));
        }
        if let (State::Up, Some(peer)) = (link.state, link.peer) {
            if el.is(ns::NET, "key") {
                return self.link_key(now, id, peer, &el);
            }
            if el.is(ns::NET, "sync") {
                return self.dir_sync(now, id, &el);
            }
            if el.is(ns::NET, "dir") {
                return self.dir_batch(now, id, peer, &el);
            }
            if el.is(ns::NET, "s") {
                return self.net_receive(now, id, peer, &el);
            }
            if el.is(ns::NET, "a") {
                return self.net_ack(now, id, peer, &el);
            }
        }
        let opening = link.state == State::Handshake && link.stream.is_open();
        match (opening, link.peer) {
            (true, Some(i)) if el.is(ns::STREAM, "features") => {
                if el.child(ns::NET, "link").is_some() {
                    self.link_up(now, id, i);
                } else {
                    self.link_fail(
                        now,
                        id,
                        XE::UnsupportedFeature,
                        "the peer offers no Net link",
                    );
                }
            }
            _ => self.link_fail(
                now,
                id,
                XE::UnsupportedStanzaType,
                "not something a Net link carries",
            ),
        }
    }

    /// The link to peer `i` is up: it replaces any other link of that peer.
    fn link_up(&mut self, now: Instant, id: ConnId, i: usize) {
        let old = self.net.peers[i].link.replace(id).filter(|&old| old != id);
        let p = &mut self.net.peers[i];
        p.retry_at = None;
        p.backoff = FIRST_BACKOFF;
        let host = p.host.clone();
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        link.state = State::Up;
        let address = link
            .address
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        log::info!("net: link to {host} up (address {address})");
        if let Some(old) = old {
            self.link_fail(now, old, XE::Conflict, "replaced by a newer link");
        }
        self.dir_link_up(now, id, i);
        if let Some(key) = self.kontalk.key.clone() {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(key.public_bytes());
            self.link_element_out(now, id, &Element::new(ns::NET, "key").with_text(&b64));
        }
    }

    /// The peer's OpenPGP key.
    fn link_key(&mut self, now: Instant, id: ConnId, peer: usize, el: &Element) {
        use base64::Engine;
        let text: String = el.text().split_whitespace().collect();
        let key = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|b| crate::kontalk::keys::UserKey::parse(&b).ok());
        let Some(key) = key else {
            return self.link_fail(now, id, XE::BadFormat, "the server key does not parse");
        };
        let fpr = key.fingerprint();
        let p = &mut self.net.peers[peer];
        let before = p.pgp.as_ref().map(|(f, _)| f.clone());
        if before.as_deref() != Some(fpr.as_str()) {
            log::info!("net: the OpenPGP key of {} is {fpr}", p.host);
        }
        p.pgp = Some((fpr.clone(), key));
        if before.is_some_and(|b| b != fpr) {
            // Logins its old key passed are checked again.
            self.kontalk.logins = Default::default();
        }
    }

    /// The servers of the network for Kontalk clients' server list: this
    /// one's host (`None` alone), and each other's host with the
    /// fingerprint of its OpenPGP key, once its link sent it.
    pub(crate) fn net_servers(&self) -> Option<(&str, Vec<(&str, &str)>)> {
        if self.net.host.is_empty() {
            return None;
        }
        let peers = self
            .net
            .peers
            .iter()
            .filter(|p| p.enabled)
            .filter_map(|p| Some((p.host.as_str(), p.pgp.as_ref()?.0.as_str())))
            .collect();
        Some((&self.net.host, peers))
    }

    /// Ends a link with a stream error (RFC 6120 section 4.9).
    pub(crate) fn link_fail(&mut self, now: Instant, id: ConnId, cond: XE, text: &str) {
        let stream_id = self.random_hex(16);
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        if link.state != State::Connecting {
            let bytes = link
                .stream
                .error_bytes(Some(&stream_id), &self.net.host, cond, Some(text));
            self.link_write(now, id, &bytes);
        }
        self.link_gone(now, id, &format!("stream error {} ({text})", cond.as_str()));
    }

    /// Forgets a link and tells the runtime to close it; the opener opens
    /// it again after its backoff.
    pub(crate) fn link_gone(&mut self, now: Instant, id: ConnId, reason: &str) {
        let Some(mut link) = self.net.links.remove(&id) else {
            return;
        };
        let last = link.stream.finish();
        if !last.is_empty() {
            self.closing_output_insert(id, last);
            self.fx.push(Event::Transmit(id));
        }
        self.fx.push(Event::Close(id));
        let Some(i) = link.peer else {
            log::info!(
                "net: refused a link from {}: {reason}",
                link.address
                    .map_or_else(|| "-".to_owned(), |a| a.to_string())
            );
            return;
        };
        let shutting_down = self.shutting_down();
        let p = &mut self.net.peers[i];
        if p.link != Some(id) {
            return;
        }
        p.link = None;
        if p.opener && p.enabled && !shutting_down {
            p.retry_at = Some(now + p.backoff);
            log::warn!(
                "net: link to {} down: {reason}; again in {} s",
                p.host,
                p.backoff.as_secs()
            );
            p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
        } else {
            log::warn!("net: link to {} down: {reason}", p.host);
        }
    }

    /// Queues an element on a link.
    pub(crate) fn link_element_out(&mut self, now: Instant, id: ConnId, el: &Element) {
        let bytes = el.to_xml(ns::SERVER);
        self.link_write(now, id, bytes.as_bytes());
    }

    /// Queues bytes on a link.
    fn link_write(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        if let Some(link) = self.net.links.get_mut(&id) {
            link.stream.write(bytes);
            link.last_output = now;
            self.link_transmit(id);
        }
    }

    /// Tells the runtime once that a link has bytes to send.
    fn link_transmit(&mut self, id: ConnId) {
        if let Some(link) = self.net.links.get_mut(&id) {
            if !link.transmit_queued && link.stream.pending_output() > 0 {
                link.transmit_queued = true;
                self.fx.push(Event::Transmit(id));
            }
        }
    }

    /// The bytes a link has to send (see [`Server::poll_transmit`]).
    pub(crate) fn link_take(&mut self, id: ConnId, buf: &mut Vec<u8>) -> Option<usize> {
        self.ack_flush(id);
        let link = self.net.links.get_mut(&id)?;
        link.transmit_queued = false;
        let n = link.stream.take_output(buf);
        self.dir_drained(id);
        self.out_ask(id);
        Some(n)
    }

    /// Whether a link may be read (its output is within the budget).
    pub(crate) fn link_wants_read(&self, id: ConnId) -> Option<bool> {
        let link = self.net.links.get(&id)?;
        // A peer's directory waits in the store at most two batches deep:
        // then TCP holds the rest back.
        let storing = link.peer.map_or(0, |i| self.net.dir.storing[i]);
        Some(
            link.stream.pending_output() < self.config.limits.output_budget
                && storing < directory::STORING
                && link.receiving < handover::RECEIVING
                && self.net.early.len() < handover::RECEIVING,
        )
    }

    /// Shutdown: every link ends with `system-shutdown`.
    pub(crate) fn net_shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.net.links.keys().copied().collect();
        for id in ids {
            self.link_fail(now, id, XE::SystemShutdown, "the server is shutting down");
        }
    }
}

impl Server {
    /// A store request of the network was answered.
    pub(crate) fn net_stored(&mut self, now: Instant, w: Waiting, reply: crate::store::StoreReply) {
        match w {
            Waiting::Dir(w) => self.dir_stored(now, w, reply),
            Waiting::Handover(w) => self.handover_stored(now, w, reply),
        }
    }
}

#[cfg(test)]
mod tests;
