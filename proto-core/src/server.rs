//! The server: client connections, their negotiation, and routing between them.
//!
//! See the crate documentation for the calling contract.

use core::net::IpAddr;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use jid::{BareJid, FullJid, Jid};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::address::{Bare, JidCache};
use crate::error::{
    error_reply, stream_error, StanzaErrorCondition as SE, StreamErrorCondition as XE,
};
use crate::ns;
use crate::router::Router;
use crate::sasl::scram::{Credentials, ServerBinding, DEFAULT_ITERATIONS};
use crate::sasl::{self, Mechanism, ScramServer, TLS_EXPORTER_LABEL};
use crate::store::{StoreReply, StoreRequest, StoreToken};
use crate::tls::TlsConfigs;
use crate::xml::{Element, StreamEvent, StreamParser};
use crate::Config;

/// Identifies one connection; chosen by the core in [`Server::handle_accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A map keyed by handles the server hands out itself ([`ConnId`], store
/// tokens). It hashes with foldhash's fixed-seed hasher, several times
/// cheaper than the standard SipHash: no peer chooses these keys, so there
/// is no collision attack to defend against, and a fixed seed keeps the core
/// free of randomness it did not get from the runtime.
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// The hasher of the core's maps keyed by what peers send (addresses,
/// roster entries): foldhash, seeded from the core's seed. Nobody outside
/// knows the seed, so nobody can aim for collisions; and the core takes no
/// randomness from anywhere but its runtime (std's `RandomState` would
/// take its keys from the operating system).
pub(crate) type Keyed = foldhash::fast::FixedState;
/// A map keyed by what peers send (see [`Keyed`]); build it with the
/// server's hasher (`with_hasher(server.keyed)`).
pub(crate) type PeerMap<K, V> = HashMap<K, V, Keyed>;
/// A set of what peers send (see [`Keyed`]).
pub(crate) type PeerSet<K> = HashSet<K, Keyed>;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain TCP, upgraded with STARTTLS (port 5222).
    Starttls,
    /// TLS from the first byte (XEP-0368, port 5223).
    DirectTls,
}

/// Output of the core, drained with [`Server::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection has bytes to send: call [`Server::poll_transmit`].
    Transmit(ConnId),
    /// Close the connection's socket after writing what it has to send.
    /// The core has forgotten the connection.
    Close(ConnId),
    /// Execute a storage request and answer with [`Server::handle_store_reply`].
    Store(StoreToken, StoreRequest),
}

/// Whether a stream ends with a clean closing tag or only a TCP close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the (first or restarted) stream header.
    Header,
    /// Header exchanged; negotiating or exchanging stanzas.
    Open,
}

#[derive(Debug)]
enum Sasl {
    /// `<auth/>` without initial response: waiting for `<response/>`.
    AwaitInitial(Mechanism),
    /// SCRAM: waiting for the account's keys from the store.
    ScramKeys(ScramServer, String),
    /// SCRAM: challenge sent, waiting for the client's final message.
    ScramFinal(ScramServer, String),
    /// PLAIN: waiting for the account's keys from the store.
    PlainKeys { username: String, password: String },
}

#[derive(Debug)]
enum Pending {
    Sasl(ConnId),
    Register {
        conn: ConnId,
        iq: Element,
    },
    Password {
        conn: ConnId,
        iq: Element,
    },
    Remove {
        conn: ConnId,
        iq: Element,
    },
    LoadUser(BareJid),
    /// What to do once a change is durable.
    Durable(Vec<Deferred>),
    StoreOffline(Element),
    LoadOffline {
        conn: ConnId,
        bare: BareJid,
    },
    Vcard {
        conn: ConnId,
        iq: Element,
        own: bool,
    },
    Last(Element),
    /// Nothing waits on the answer (bookkeeping writes).
    Ignore,
}

/// An effect that waits until the store says a change is durable.
#[derive(Debug)]
enum Deferred {
    /// Send to one session.
    Send(ConnId, Element),
    /// Route a stanza (with `from` and `to`).
    Route(Element),
    /// Deliver to every available resource of a local account.
    Deliver { user: BareJid, el: Element },
    /// Roster push of one item to the account's interested resources.
    Push {
        user: BareJid,
        item: Element,
        version: u64,
    },
    /// Blocking push (XEP-0191) to the account's interested resources.
    BlockPush {
        user: BareJid,
        el: Element,
        except: Option<ConnId>,
    },
    /// Send `of`'s current presence (or unavailable) to `to`.
    PresenceTo {
        of: BareJid,
        to: BareJid,
        available: bool,
    },
}

struct Conn {
    /// The remote address (for per-address limits).
    peer: IpAddr,
    stage: Stage,
    parser: StreamParser,
    /// Boxed: a plaintext stream does not pay for it.
    tls: Option<Box<rustls::ServerConnection>>,
    /// Bytes ready for the socket (ciphertext once TLS is on).
    out: Vec<u8>,
    /// Just switched to TLS with STARTTLS: whitespace before the first TLS
    /// record is tolerated (some clients end `<starttls/>` with a newline).
    tls_fresh: bool,
    transmit_queued: bool,
    header_sent: bool,
    stream_id: String,
    /// The authenticated username (node part).
    user: Option<String>,
    jid: Option<FullJid>,
    sasl: Option<Sasl>,
    auth_failures: u32,
    created: Instant,
    last_input: Instant,
    last_output: Instant,
    timer: Option<Instant>,
    /// Sent initial presence and not unavailable since.
    available: bool,
    priority: i8,
    /// Entities that got directed presence from this session.
    directed: PeerSet<Jid>,
    last_presence: Option<Element>,
    /// Asked for the roster: gets roster pushes (RFC 6121 2.1.6).
    roster_requested: bool,
    /// Asked for the block list: gets blocking pushes (XEP-0191).
    blocklist_requested: bool,
    /// A server ping (XEP-0199) waits for an answer since this instant.
    ping_sent: Option<Instant>,
    /// Output held back until an instant (throttled login failures).
    held: Option<(Instant, Vec<u8>)>,
    /// Stanza rate limiting: available tokens and when they were counted.
    tokens: f64,
    tokens_at: Instant,
    /// Stanzas waiting for tokens, in order.
    backlog: VecDeque<Element>,
}

/// Per-address bookkeeping for the connection and login-failure limits.
#[derive(Debug, Default)]
struct IpState {
    conns: usize,
    failures: u32,
    window_start: Option<Instant>,
}

/// How often periodic maintenance (offline expiry) runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Per-address states kept before expired ones are pruned.
const MAX_IP_STATES: usize = 4096;

/// Most directed-presence targets remembered per session.
pub(super) const MAX_DIRECTED: usize = 1000;

/// The protocol core of one server: many client connections, one router.
pub struct Server {
    config: Config,
    tls: TlsConfigs,
    rng: ChaCha20Rng,
    /// Boxed: the map's spare buckets then cost a pointer, not a `Conn`.
    conns: IdMap<ConnId, Box<Conn>>,
    next_conn: u64,
    sessions: PeerMap<BareJid, Vec<ConnId>>,
    events: VecDeque<Event>,
    pending: IdMap<StoreToken, Pending>,
    next_token: u64,
    timers: BTreeSet<(Instant, ConnId)>,
    /// Last bytes of connections already closed, until the runtime takes them.
    closing_output: IdMap<ConnId, Vec<u8>>,
    /// Session-manager view of local accounts in use.
    accounts: PeerMap<BareJid, sm::Account>,
    router: Router,
    /// Wall clock: an instant and the Unix time (seconds) it corresponds to.
    wall_clock: Option<(Instant, u64)>,
    started: Option<Instant>,
    /// Next run of periodic maintenance (offline expiry).
    maintenance: Option<Instant>,
    per_ip: PeerMap<IpAddr, IpState>,
    /// The hasher of every [`PeerMap`] and [`PeerSet`].
    keyed: Keyed,
    /// Canonical forms of the addresses stanzas carry.
    jids: JidCache,
    domain: jid::DomainPart,
    shutting_down: bool,
    /// The latest `now` seen, for wall-clock arithmetic.
    last_now: Option<Instant>,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("domain", &self.config.domain)
            .field("connections", &self.conns.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Why [`Server::new`] refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Server {
    /// Creates a server core. `seed` seeds every random choice the core makes
    /// (stream ids, SCRAM nonces, salts, generated resources).
    pub fn new(config: Config, tls: TlsConfigs, seed: [u8; 32]) -> Result<Server, ConfigError> {
        let domain = jid::DomainPart::new(&config.domain)
            .map_err(|e| ConfigError(format!("invalid domain {:?}: {e}", config.domain)))?
            .into_owned();
        let mut rng = ChaCha20Rng::from_seed(seed);
        let keyed = Keyed::with_seed(rng.next_u64());
        Ok(Server {
            config,
            tls,
            rng,
            conns: IdMap::default(),
            next_conn: 1,
            sessions: PeerMap::with_hasher(keyed.clone()),
            events: VecDeque::new(),
            pending: IdMap::default(),
            next_token: 1,
            timers: BTreeSet::new(),
            closing_output: IdMap::default(),
            accounts: PeerMap::with_hasher(keyed.clone()),
            router: Router::new(domain.as_str()),
            wall_clock: None,
            started: None,
            maintenance: None,
            per_ip: PeerMap::with_hasher(keyed.clone()),
            jids: JidCache::new(keyed.clone()),
            keyed,
            domain,
            shutting_down: false,
            last_now: None,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of bound resources (sessions).
    pub fn session_count(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    // ----------------------------------------------------------------- input

    /// A new connection was accepted on `listener`; returns its handle.
    ///
    /// `peer` is the remote address, for the per-address limits.
    pub fn handle_accept(&mut self, now: Instant, listener: Listener, peer: IpAddr) -> ConnId {
        self.tick(now);
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let tls = match listener {
            Listener::DirectTls => Some(Box::new(self.new_tls(true))),
            Listener::Starttls => None,
        };
        let conn = Conn {
            peer,
            stage: Stage::Header,
            parser: StreamParser::new(&self.config.limits),
            tls,
            out: Vec::new(),
            tls_fresh: false,
            transmit_queued: false,
            header_sent: false,
            stream_id: String::new(),
            user: None,
            jid: None,
            sasl: None,
            auth_failures: 0,
            created: now,
            last_input: now,
            last_output: now,
            timer: None,
            available: false,
            priority: 0,
            directed: PeerSet::with_hasher(self.keyed.clone()),
            last_presence: None,
            roster_requested: false,
            blocklist_requested: false,
            ping_sent: None,
            held: None,
            tokens: f64::from(self.config.limits.stanzas_per_second) * 2.0,
            tokens_at: now,
            backlog: VecDeque::new(),
        };
        let total = self.conns.len();
        self.conns.insert(id, Box::new(conn));
        let from_peer = {
            let ip = self.per_ip.entry(peer).or_default();
            ip.conns += 1;
            ip.conns
        };
        self.reschedule(id);
        let limits = &self.config.limits;
        if self.shutting_down {
            self.fail(id, XE::SystemShutdown, None);
        } else if total >= limits.max_connections {
            log::warn!(
                "connection limit ({}) reached: refusing {peer}",
                limits.max_connections
            );
            self.fail(
                id,
                XE::ResourceConstraint,
                Some("the server is full, try again later"),
            );
        } else if limits.max_connections_per_ip > 0 && from_peer > limits.max_connections_per_ip {
            log::info!("too many connections from {peer}");
            self.fail(
                id,
                XE::PolicyViolation,
                Some("too many connections from your address"),
            );
        }
        id
    }

    fn new_tls(&self, direct: bool) -> rustls::ServerConnection {
        let cfg = if direct {
            &self.tls.direct
        } else {
            &self.tls.starttls
        };
        let mut conn = rustls::ServerConnection::new(cfg.clone()).expect("valid server config");
        // The core bounds output itself (Limits::output_budget).
        conn.set_buffer_limit(None);
        conn
    }

    /// Bytes arrived from the peer of `id`.
    pub fn handle_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.tick(now);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.last_input = now;
        conn.ping_sent = None;
        if conn.tls.is_some() {
            self.tls_input(now, id, data);
        } else {
            self.xml_input(now, id, data);
        }
        self.reschedule(id);
    }

    /// The peer of `id` closed its side of the TCP connection (or it failed).
    pub fn handle_eof(&mut self, _now: Instant, id: ConnId) {
        if self.conns.contains_key(&id) {
            self.close(id);
        }
    }

    /// The runtime finished a storage request.
    pub fn handle_store_reply(&mut self, now: Instant, token: StoreToken, reply: StoreReply) {
        self.tick(now);
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        match pending {
            Pending::Sasl(id) => self.sasl_keys(id, reply),
            Pending::Register { conn, iq } => {
                let answer = match reply {
                    StoreReply::Created(true) => Ok(()),
                    StoreReply::Created(false) => Err(SE::Conflict),
                    _ => Err(SE::InternalServerError),
                };
                self.iq_answer(conn, &iq, answer);
            }
            Pending::Password { conn, iq } => {
                let answer = match reply {
                    StoreReply::Done(true) => Ok(()),
                    _ => Err(SE::InternalServerError),
                };
                self.iq_answer(conn, &iq, answer);
            }
            Pending::Remove { conn, iq } => {
                let ok = reply == StoreReply::Done(true);
                self.iq_answer(
                    conn,
                    &iq,
                    if ok {
                        Ok(())
                    } else {
                        Err(SE::InternalServerError)
                    },
                );
                if ok {
                    self.account_removed(conn);
                }
            }
            Pending::LoadUser(bare) => self.user_loaded(bare, reply),
            Pending::Durable(then) => {
                if let StoreReply::Failed(msg) = &reply {
                    log::error!("a change could not be stored: {msg}");
                    self.durable_failed(then);
                } else {
                    self.run_deferred(then);
                }
            }
            Pending::StoreOffline(el) => self.offline_stored(el, reply),
            Pending::LoadOffline { conn, bare } => self.offline_loaded(conn, bare, reply),
            Pending::Vcard { conn, iq, own } => self.vcard_loaded(conn, iq, own, reply),
            Pending::Last(iq) => self.last_loaded(iq, reply),
            Pending::Ignore => {
                if let StoreReply::Failed(msg) = &reply {
                    log::error!("a store request failed: {msg}");
                }
            }
        }
        let _ = now;
    }

    /// A change failed to become durable: answer the client with an error
    /// and reload the accounts involved, so memory matches the store again.
    fn durable_failed(&mut self, then: Vec<Deferred>) {
        for d in then {
            match d {
                Deferred::Send(conn, el) if el.name == "iq" => {
                    let mut req = el.clone();
                    req.set_attr("type", Some("set"));
                    let (to, from) = (
                        req.attr("from").map(str::to_owned),
                        req.attr("to").map(str::to_owned),
                    );
                    req.set_attr("to", to.as_deref());
                    req.set_attr("from", from.as_deref());
                    self.reply_error(conn, &req, SE::InternalServerError, None);
                }
                Deferred::Push { user, .. } | Deferred::BlockPush { user, .. } => {
                    self.accounts.retain(|b, a| b != &user || !a.loaded);
                }
                _ => {}
            }
        }
    }

    /// XEP-0077 account removal: every session of the account ends.
    fn account_removed(&mut self, conn: ConnId) {
        let Some(bare) = self.full_jid(conn).map(|j| j.bare()) else {
            self.fail(conn, XE::NotAuthorized, Some("account removed"));
            return;
        };
        let sessions = self.sessions.get(&bare).cloned().unwrap_or_default();
        for c in sessions {
            self.fail(c, XE::NotAuthorized, Some("account removed"));
        }
        self.accounts.remove(&bare);
    }

    /// Tells the core the wall-clock time (seconds since the Unix epoch) at
    /// `now`. Needed for offline stamps, entity time and expiry; call it at
    /// start and now and then (every `handle_timeout` is fine).
    pub fn handle_wall_clock(&mut self, now: Instant, unix_secs: u64) {
        self.tick(now);
        self.wall_clock = Some((now, unix_secs));
        if self.started.is_none() {
            self.started = Some(now);
            self.maintenance = Some(now + MAINTENANCE_INTERVAL);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |l| l.max(now)));
    }

    /// Current Unix time, from the last wall-clock reading.
    fn unix_now(&self) -> Option<u64> {
        let (at, unix) = self.wall_clock?;
        Some(unix + self.last_now?.saturating_duration_since(at).as_secs())
    }

    fn uptime(&self) -> Option<u64> {
        Some(
            self.last_now?
                .saturating_duration_since(self.started?)
                .as_secs(),
        )
    }

    /// Time passed: fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        if self.maintenance.is_some_and(|m| m <= now) {
            self.maintenance = Some(now + MAINTENANCE_INTERVAL);
            self.prune_ip_states(now);
            if let Some(unix) = self.unix_now() {
                let before = unix.saturating_sub(self.config.offline_expiry.as_secs());
                let token = self.token();
                self.pending.insert(token, Pending::Ignore);
                self.events
                    .push_back(Event::Store(token, StoreRequest::ExpireOffline { before }));
            }
        }
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            conn.timer = None;
            let limits = self.config.limits.clone();
            if let Some((at, bytes)) = conn.held.take() {
                if now >= at {
                    self.send_raw(id, &bytes);
                } else {
                    conn.held = Some((at, bytes));
                }
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if !conn.backlog.is_empty() {
                self.drain_backlog(now, id);
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.user.is_none() && now >= conn.created + limits.auth_timeout {
                self.fail(
                    id,
                    XE::ConnectionTimeout,
                    Some("authentication took too long"),
                );
                continue;
            }
            if now >= conn.last_input + limits.idle_timeout
                || conn
                    .ping_sent
                    .is_some_and(|at| now >= at + limits.ping_timeout)
            {
                self.fail(id, XE::ConnectionTimeout, Some("idle for too long"));
                continue;
            }
            if conn.jid.is_some()
                && conn.ping_sent.is_none()
                && now >= conn.last_input + limits.ping_interval
            {
                // XEP-0199: is the client still there?
                conn.ping_sent = Some(now);
                let to = conn
                    .jid
                    .as_ref()
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
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_output = now;
                }
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.stage == Stage::Open && now >= conn.last_output + limits.keepalive_interval {
                self.send_raw(id, b" ");
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_output = now;
                }
            }
            self.reschedule(id);
        }
    }

    /// The server is shutting down: every stream gets `system-shutdown`.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.fail(id, XE::SystemShutdown, None);
        }
    }

    // ---------------------------------------------------------------- output

    /// The next output event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves the bytes `id` has to send into `buf` (appending).
    /// Returns the number of bytes moved.
    pub fn poll_transmit(&mut self, id: ConnId, buf: &mut Vec<u8>) -> usize {
        let out = match self.conns.get_mut(&id) {
            Some(conn) => {
                conn.transmit_queued = false;
                &mut conn.out
            }
            None => match self.closing_output.get_mut(&id) {
                Some(out) => out,
                None => return 0,
            },
        };
        let n = out.len();
        if buf.is_empty() {
            core::mem::swap(buf, out);
        } else {
            buf.append(out);
        }
        self.closing_output.remove(&id);
        n
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.timers.first().map(|&(at, _)| at);
        match (conn, self.maintenance) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the runtime should read from `id` now (false while its output
    /// is over budget: backpressure).
    pub fn wants_read(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| c.out.len() < self.config.limits.output_budget)
    }

    /// Whether the runtime has given all remaining output of `id` back...
    /// (true when the core holds no output for the connection).
    pub fn is_drained(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_none_or(|c| c.out.is_empty())
    }

    // ------------------------------------------------------------- internals

    fn reschedule(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let limits = &self.config.limits;
        let mut at = conn.last_input + limits.idle_timeout;
        match conn.ping_sent {
            Some(sent) => at = at.min(sent + limits.ping_timeout),
            None if conn.jid.is_some() => at = at.min(conn.last_input + limits.ping_interval),
            None => {}
        }
        if conn.user.is_none() {
            at = at.min(conn.created + limits.auth_timeout);
        }
        if let Some((held, _)) = &conn.held {
            at = at.min(*held);
        }
        if !conn.backlog.is_empty() && limits.stanzas_per_second > 0 {
            let missing = (1.0 - conn.tokens).max(0.0);
            at = at.min(
                conn.tokens_at
                    + Duration::from_secs_f64(missing / f64::from(limits.stanzas_per_second)),
            );
        }
        if conn.stage == Stage::Open {
            at = at.min(conn.last_output + limits.keepalive_interval);
        }
        if conn.timer != Some(at) {
            if let Some(old) = conn.timer.take() {
                self.timers.remove(&(old, id));
            }
            conn.timer = Some(at);
            self.timers.insert((at, id));
        }
    }

    fn token(&mut self) -> StoreToken {
        let t = StoreToken(self.next_token);
        self.next_token += 1;
        t
    }

    fn random_hex(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill_bytes(&mut buf);
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tls_input(&mut self, now: Instant, id: ConnId, mut data: &[u8]) {
        let mut plain = Vec::new();
        let mut closed = false;
        {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.tls_fresh {
                let skip = data.iter().take_while(|b| b" \t\r\n".contains(b)).count();
                data = &data[skip..];
                conn.tls_fresh = data.is_empty();
            }
            let tls = conn.tls.as_mut().expect("tls_input on a TLS stream");
            while !data.is_empty() {
                if let Err(e) = tls.read_tls(&mut data) {
                    log::debug!("conn {}: TLS read failed: {e}", id.0);
                    closed = true;
                    break;
                }
                match tls.process_new_packets() {
                    Ok(state) => {
                        if state.plaintext_bytes_to_read() > 0 {
                            let start = plain.len();
                            plain.resize(start + state.plaintext_bytes_to_read(), 0);
                            let n = tls.reader().read(&mut plain[start..]).unwrap_or(0);
                            plain.truncate(start + n);
                        }
                        if state.peer_has_closed() {
                            closed = true;
                        }
                    }
                    Err(e) => {
                        log::debug!("conn {}: TLS error: {e}", id.0);
                        // Send the alert, then drop the connection.
                        while tls.wants_write() {
                            if tls.write_tls(&mut conn.out).is_err() {
                                break;
                            }
                        }
                        closed = true;
                        break;
                    }
                }
            }
            while tls.wants_write() {
                if tls.write_tls(&mut conn.out).is_err() {
                    break;
                }
            }
        }
        self.queue_transmit(id);
        if !plain.is_empty() {
            self.xml_input(now, id, &plain);
        }
        if closed && self.conns.contains_key(&id) {
            self.close(id);
        }
    }

    fn xml_input(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let mut input = data;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let was_tls = conn.tls.is_some();
            let ev = match conn.parser.next(&mut input) {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(cond) => {
                    let text = match cond {
                        XE::PolicyViolation => {
                            Some("stream limits exceeded (see the advertised stream limits)")
                        }
                        _ => None,
                    };
                    self.fail(id, cond, text);
                    return;
                }
            };
            match ev {
                StreamEvent::Header(h) => self.on_header(id, h),
                StreamEvent::Stanza(el) => self.on_element(now, id, el),
                StreamEvent::End => {
                    self.send_raw(id, b"</stream:stream>");
                    self.close(id);
                    return;
                }
            }
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            if !was_tls && conn.tls.is_some() {
                // STARTTLS just switched: everything after <starttls/> is TLS.
                if !input.is_empty() {
                    self.tls_input(now, id, input);
                }
                return;
            }
        }
    }

    fn on_header(&mut self, id: ConnId, h: crate::xml::StreamHeader) {
        let id_str = self.random_hex(16);
        let domain = self.config.domain.clone();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.stream_id = id_str;
        let mut header = Vec::with_capacity(256);
        header.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
        header.extend_from_slice(conn.stream_id.as_bytes());
        header.extend_from_slice(b"' from='");
        crate::xml::escape_into(&mut header, &domain, true);
        header.push(b'\'');
        if let Some(from) = &h.from {
            header.extend_from_slice(b" to='");
            crate::xml::escape_into(&mut header, from, true);
            header.push(b'\'');
        }
        header.extend_from_slice(b" version='1.0' xml:lang='en'>");
        conn.header_sent = true;
        self.send_raw(id, &header);

        // RFC 6120 4.7.5: a major version above 1 is not supported; a missing
        // version means a pre-1.0 peer, which this server does not serve.
        let version_ok = h
            .version
            .as_deref()
            .and_then(|v| v.split_once('.'))
            .and_then(|(major, _)| major.parse::<u32>().ok())
            == Some(1);
        if !version_ok {
            self.fail(
                id,
                XE::UnsupportedVersion,
                Some("only XMPP 1.0 streams are supported"),
            );
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
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.stage = Stage::Open;
        }
        self.send_element(id, &features, ns::STREAM);
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

    fn channel_binding(&self, id: ConnId) -> Option<Vec<u8>> {
        let tls = self.conns.get(&id)?.tls.as_ref()?;
        let mut out = vec![0u8; 32];
        tls.export_keying_material(&mut out, TLS_EXPORTER_LABEL, None)
            .ok()?;
        Some(out)
    }

    fn offered_mechanisms(&self, id: ConnId) -> Vec<Mechanism> {
        let Some(conn) = self.conns.get(&id) else {
            return Vec::new();
        };
        let secure = conn.tls.is_some();
        Mechanism::ALL
            .into_iter()
            .filter(|m| match m {
                Mechanism::Plain => secure,
                m if m.is_plus() => secure,
                _ => secure || !self.config.require_tls,
            })
            .collect()
    }

    fn registration_open(&self, id: ConnId) -> bool {
        let secure = self.conns.get(&id).is_some_and(|c| c.tls.is_some());
        self.config.allow_registration && (secure || !self.config.require_tls)
    }

    fn features(&mut self, id: ConnId) -> Element {
        let conn = &self.conns[&id];
        let mut f = Element::new(ns::STREAM, "features");
        if conn.user.is_some() {
            f = f
                .with_child(Element::new(ns::ROSTER_VER, "ver"))
                .with_child(Element::new(ns::BIND, "bind"))
                .with_child(
                    Element::new(ns::SESSION, "session")
                        .with_child(Element::new(ns::SESSION, "optional")),
                );
        } else {
            if conn.tls.is_none() {
                let mut st = Element::new(ns::TLS, "starttls");
                if self.config.require_tls {
                    st = st.with_child(Element::new(ns::TLS, "required"));
                }
                f = f.with_child(st);
            }
            let mechs = self.offered_mechanisms(id);
            if !mechs.is_empty() {
                let mut m = Element::new(ns::SASL, "mechanisms");
                for mech in mechs {
                    m = m.with_child(Element::new(ns::SASL, "mechanism").with_text(mech.name()));
                }
                f = f.with_child(m);
                if self.conns[&id].tls.is_some() {
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

    /// Serializes `el` into the connection's output.
    fn send_element(&mut self, id: ConnId, el: &Element, parent_ns: &str) {
        let mut buf = Vec::with_capacity(256);
        el.write_to(&mut buf, parent_ns);
        self.send_raw(id, &buf);
    }

    fn send_stanza(&mut self, id: ConnId, el: &Element) {
        self.send_element(id, el, ns::CLIENT);
    }

    fn send_raw(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.tls.as_mut() {
            Some(tls) => {
                let _ = tls.writer().write_all(bytes);
                while tls.wants_write() {
                    if tls.write_tls(&mut conn.out).is_err() {
                        break;
                    }
                }
            }
            None => conn.out.extend_from_slice(bytes),
        }
        let over = conn.out.len() > self.config.limits.output_budget.saturating_mul(4);
        self.queue_transmit(id);
        if over {
            // A peer that does not read while others send to it: drop it.
            // The stream error is best effort; its buffer is over budget.
            log::info!("conn {}: output over budget, closing", id.0);
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.out.clear();
            }
            self.fail(
                id,
                XE::PolicyViolation,
                Some("output buffer exceeded: the client does not read"),
            );
        }
    }

    fn queue_transmit(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if !conn.out.is_empty() && !conn.transmit_queued {
                conn.transmit_queued = true;
                self.events.push_back(Event::Transmit(id));
            }
        }
    }

    /// Ends a stream with a stream error (RFC 6120 section 4.9).
    fn fail(&mut self, id: ConnId, cond: XE, text: Option<&str>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        log::debug!("conn {}: stream error {}", id.0, cond.as_str());
        // A held-back (throttled) answer goes out before the error.
        if let Some((_, held)) = conn.held.take() {
            self.send_raw(id, &held);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.header_sent {
            conn.header_sent = true;
            let header = format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' version='1.0'>",
                self.random_hex(16),
                self.config.domain
            );
            self.send_raw(id, header.as_bytes());
        }
        let mut bytes = stream_error(cond, text);
        bytes.extend_from_slice(b"</stream:stream>");
        self.send_raw(id, &bytes);
        self.close(id);
    }

    /// Forgets a connection: ends its session and tells the runtime to close.
    fn close(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(tls) = conn.tls.as_mut() {
            tls.send_close_notify();
            while tls.wants_write() {
                if tls.write_tls(&mut conn.out).is_err() {
                    break;
                }
            }
        }
        if let Some(t) = conn.timer {
            self.timers.remove(&(t, id));
        }
        if let Some(ip) = self.per_ip.get_mut(&conn.peer) {
            ip.conns = ip.conns.saturating_sub(1);
            if ip.conns == 0 && ip.failures == 0 {
                self.per_ip.remove(&conn.peer);
            }
        }
        let leftover = core::mem::take(&mut conn.out);
        if let Some(jid) = conn.jid.clone() {
            self.unregister_session(id, &jid);
            let status = conn
                .last_presence
                .as_ref()
                .and_then(|p| p.child(ns::CLIENT, "status"))
                .map(|s| s.text())
                .unwrap_or_default();
            self.session_closed(&jid, conn.available, &conn.directed, status);
        }
        // The last bytes (stream error, closing tag, close_notify) go out
        // through one more Transmit before the Close.
        if !leftover.is_empty() {
            self.closing_output.insert(id, leftover);
            if !conn.transmit_queued {
                self.events.push_back(Event::Transmit(id));
            }
        }
        self.events.push_back(Event::Close(id));
    }

    // ------------------------------------------------------ stream elements

    /// Stanza rate limiting: a token bucket per session, with a bounded
    /// backlog; a session that overflows it is disconnected.
    fn rate_limited(&mut self, now: Instant, id: ConnId, el: Element) {
        let rate = self.config.limits.stanzas_per_second;
        if rate == 0 {
            return self.on_stanza(id, el);
        }
        let conn = self.conns.get_mut(&id).expect("present");
        refill(conn, now, rate);
        if conn.backlog.is_empty() && conn.tokens >= 1.0 {
            conn.tokens -= 1.0;
            return self.on_stanza(id, el);
        }
        if conn.backlog.len() >= 2 * rate as usize {
            self.fail(id, XE::PolicyViolation, Some("too many stanzas per second"));
            return;
        }
        conn.backlog.push_back(el);
        self.reschedule(id);
    }

    fn drain_backlog(&mut self, now: Instant, id: ConnId) {
        let rate = self.config.limits.stanzas_per_second;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            refill(conn, now, rate);
            if conn.tokens < 1.0 || conn.backlog.is_empty() {
                return;
            }
            conn.tokens -= 1.0;
            let el = conn.backlog.pop_front().expect("not empty");
            self.on_stanza(id, el);
        }
    }

    fn on_element(&mut self, now: Instant, id: ConnId, el: Element) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let authed = conn.user.is_some();
        let bound = conn.jid.is_some();
        match (el.ns.as_str(), el.name.as_str()) {
            (ns::TLS, "starttls") if !authed => self.on_starttls(id),
            (ns::SASL, "auth") if !authed => self.on_auth(id, &el),
            (ns::SASL, "response") if !authed => self.on_sasl_response(id, &el),
            (ns::SASL, "abort") if !authed => {
                self.sasl_refuse(id, "aborted", None);
            }
            (ns::CLIENT, "iq") if !authed => {
                if el.child(ns::REGISTER, "query").is_some() {
                    if self.registration_open(id) {
                        self.on_register(id, el, None);
                    } else if self.config.allow_registration {
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
            (ns::CLIENT, "iq") if !bound => {
                if el.child(ns::BIND, "bind").is_some() {
                    self.on_bind(id, &el);
                } else if el.child(ns::SESSION, "session").is_some() {
                    self.iq_answer(id, &el, Ok(()));
                } else {
                    self.fail(id, XE::NotAuthorized, Some("bind a resource first"));
                }
            }
            _ if !authed => self.fail(id, XE::NotAuthorized, Some("authenticate first")),
            (ns::CLIENT, "message" | "presence" | "iq") if bound => self.rate_limited(now, id, el),
            (ns::CLIENT, _) | (_, _) if !bound => {
                self.fail(id, XE::NotAuthorized, Some("bind a resource first"))
            }
            _ => self.fail(id, XE::UnsupportedStanzaType, None),
        }
    }

    fn on_starttls(&mut self, id: ConnId) {
        if self.conns.get(&id).is_some_and(|c| c.tls.is_some()) {
            self.send_raw(
                id,
                b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>",
            );
            self.close(id);
            return;
        }
        self.send_raw(id, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let tls = self.new_tls(false);
        let limits = self.config.limits.clone();
        let conn = self.conns.get_mut(&id).expect("present");
        // Atomic switch: the reply went out in plaintext, the next byte in
        // either direction is TLS, and the XML parser starts afresh.
        conn.tls = Some(Box::new(tls));
        conn.tls_fresh = true;
        conn.parser = StreamParser::new(&limits);
        conn.stage = Stage::Header;
    }

    /// A SASL failure that counts towards `max_auth_failures`.
    fn sasl_failure(&mut self, id: ConnId, condition: &str, text: Option<&str>) {
        let failures = self.count_ip_failure(id);
        let limits = &self.config.limits;
        let half = limits.max_auth_failures_per_ip / 2;
        if failures > half {
            // Throttle: the answer comes later, and later with every failure.
            let delay = Duration::from_secs(u64::from((failures - half).min(5)));
            let now = self.last_now.unwrap_or_else(|| self.conns[&id].created);
            let mut failure =
                Element::new(ns::SASL, "failure").with_child(Element::new(ns::SASL, condition));
            if let Some(text) = text {
                failure = failure.with_child(Element::new(ns::SASL, "text").with_text(text));
            }
            let conn = self.conns.get_mut(&id).expect("present");
            conn.sasl = None;
            conn.held = Some((now + delay, failure.to_xml(ns::CLIENT).into_bytes()));
            self.reschedule(id);
        } else {
            self.sasl_refuse(id, condition, text);
        }
        if failures >= self.config.limits.max_auth_failures_per_ip {
            self.fail(
                id,
                XE::PolicyViolation,
                Some("too many failed logins from your address; try again later"),
            );
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.auth_failures += 1;
        if conn.auth_failures >= self.config.limits.max_auth_failures {
            self.fail(
                id,
                XE::PolicyViolation,
                Some("too many failed authentication attempts"),
            );
        }
    }

    /// Counts a failed login against the connection's address; returns the
    /// failures in the current window.
    fn count_ip_failure(&mut self, id: ConnId) -> u32 {
        let Some(conn) = self.conns.get(&id) else {
            return 0;
        };
        let now = self.last_now.unwrap_or(conn.created);
        let window = self.config.limits.auth_failure_window;
        let peer = conn.peer;
        if self.per_ip.len() >= MAX_IP_STATES {
            self.prune_ip_states(now);
        }
        let ip = self.per_ip.entry(peer).or_default();
        if ip.window_start.is_none_or(|s| now >= s + window) {
            ip.window_start = Some(now);
            ip.failures = 0;
        }
        ip.failures += 1;
        ip.failures
    }

    /// Forgets addresses without connections whose failure window is over.
    fn prune_ip_states(&mut self, now: Instant) {
        let window = self.config.limits.auth_failure_window;
        self.per_ip
            .retain(|_, ip| ip.conns > 0 || ip.window_start.is_some_and(|s| now < s + window));
    }

    /// Whether logins from the connection's address are refused for now.
    fn ip_locked_out(&self, id: ConnId) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let now = self.last_now.unwrap_or(conn.created);
        self.per_ip.get(&conn.peer).is_some_and(|ip| {
            ip.failures >= self.config.limits.max_auth_failures_per_ip
                && ip
                    .window_start
                    .is_some_and(|s| now < s + self.config.limits.auth_failure_window)
        })
    }

    /// Ends the SASL exchange with `<failure/>`.
    fn sasl_refuse(&mut self, id: ConnId, condition: &str, text: Option<&str>) {
        let mut failure =
            Element::new(ns::SASL, "failure").with_child(Element::new(ns::SASL, condition));
        if let Some(text) = text {
            failure = failure.with_child(Element::new(ns::SASL, "text").with_text(text));
        }
        self.send_element(id, &failure, ns::CLIENT);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.sasl = None;
    }

    fn on_auth(&mut self, id: ConnId, el: &Element) {
        if self.ip_locked_out(id) {
            self.sasl_refuse(
                id,
                "temporary-auth-failure",
                Some("too many failed logins from your address; try again later"),
            );
            self.fail(
                id,
                XE::PolicyViolation,
                Some("too many failed logins from your address; try again later"),
            );
            return;
        }
        if self.conns[&id].sasl.is_some() {
            self.sasl_failure(
                id,
                "malformed-request",
                Some("an exchange is already running"),
            );
            return;
        }
        let name = el.attr("mechanism").unwrap_or_default();
        let Some(mech) = Mechanism::from_name(name) else {
            self.sasl_failure(id, "invalid-mechanism", None);
            return;
        };
        if !self.offered_mechanisms(id).contains(&mech) {
            let cond = if self.conns[&id].tls.is_none() {
                "encryption-required"
            } else {
                "invalid-mechanism"
            };
            self.sasl_failure(id, cond, None);
            return;
        }
        let text = el.text();
        let text = text.trim();
        if text.is_empty() {
            // No initial response: ask for it with an empty challenge.
            self.conns.get_mut(&id).expect("present").sasl = Some(Sasl::AwaitInitial(mech));
            self.send_raw(id, b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
            return;
        }
        let data = if text == "=" {
            Ok(Vec::new())
        } else {
            B64.decode(text)
        };
        match data {
            Ok(data) => self.sasl_start(id, mech, &data),
            Err(_) => self.sasl_failure(id, "incorrect-encoding", None),
        }
    }

    fn sasl_start(&mut self, id: ConnId, mech: Mechanism, data: &[u8]) {
        match mech.scram_hash() {
            Some(hash) => {
                let binding = match self.channel_binding(id) {
                    Some(data) => ServerBinding::Available {
                        data,
                        plus: mech.is_plus(),
                    },
                    None => ServerBinding::Unsupported,
                };
                let mut scram = ScramServer::new(hash, binding);
                let username = match scram.client_first(data) {
                    Ok(u) => u,
                    Err(sasl::ScramError::ChannelBinding) => {
                        // A binding type we do not support (say tls-unique) is
                        // no password guess: the client may retry without it.
                        self.sasl_refuse(
                            id,
                            "not-authorized",
                            Some("only tls-exporter channel binding is supported"),
                        );
                        return;
                    }
                    Err(e) => {
                        self.sasl_failure(id, scram_condition(e), None);
                        return;
                    }
                };
                let Some(username) = sasl::normalize_username(&username) else {
                    self.sasl_failure(id, "not-authorized", None);
                    return;
                };
                self.conns.get_mut(&id).expect("present").sasl =
                    Some(Sasl::ScramKeys(scram, username.clone()));
                self.request_credentials(id, username);
            }
            None => {
                let Some((authzid, authcid, password)) = sasl::parse_plain(data) else {
                    self.sasl_failure(id, "malformed-request", None);
                    return;
                };
                let Some(username) = sasl::normalize_username(authcid) else {
                    self.sasl_failure(id, "not-authorized", None);
                    return;
                };
                if !authzid.is_empty()
                    && authzid != format!("{username}@{}", self.config.domain)
                    && authzid != username
                {
                    self.sasl_failure(id, "invalid-authzid", None);
                    return;
                }
                let Some(password) = sasl::prepare_password(password) else {
                    self.sasl_failure(id, "not-authorized", None);
                    return;
                };
                self.conns.get_mut(&id).expect("present").sasl = Some(Sasl::PlainKeys {
                    username: username.clone(),
                    password,
                });
                self.request_credentials(id, username);
            }
        }
    }

    fn request_credentials(&mut self, id: ConnId, username: String) {
        let token = self.token();
        self.pending.insert(token, Pending::Sasl(id));
        self.events.push_back(Event::Store(
            token,
            StoreRequest::LoadCredentials { username },
        ));
    }

    fn sasl_keys(&mut self, id: ConnId, reply: StoreReply) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let creds = match reply {
            StoreReply::Credentials(c) => c,
            other => {
                log::warn!("credential lookup failed: {other:?}");
                conn.sasl = None;
                self.sasl_failure(id, "temporary-auth-failure", None);
                return;
            }
        };
        match conn.sasl.take() {
            Some(Sasl::ScramKeys(mut scram, username)) => {
                let nonce = {
                    let mut raw = [0u8; 18];
                    self.rng.fill_bytes(&mut raw);
                    B64.encode(raw)
                };
                let mut fallback_salt = [0u8; 16];
                self.rng.fill_bytes(&mut fallback_salt);
                let keys = creds.as_ref().map(|c| c.keys(scram.hash()));
                match scram.server_first(keys, &nonce, &fallback_salt) {
                    Ok(msg) => {
                        let conn = self.conns.get_mut(&id).expect("present");
                        conn.sasl = Some(Sasl::ScramFinal(scram, username));
                        let el = Element::new(ns::SASL, "challenge").with_text(&B64.encode(msg));
                        self.send_element(id, &el, ns::CLIENT);
                    }
                    Err(e) => self.sasl_failure(id, scram_condition(e), None),
                }
            }
            Some(Sasl::PlainKeys { username, password }) => {
                let ok = creds
                    .is_some_and(|c| c.sha256.verify_password(sasl::ScramHash::Sha256, &password));
                if ok {
                    self.sasl_success(id, username, None);
                } else {
                    self.sasl_failure(id, "not-authorized", None);
                }
            }
            other => {
                conn.sasl = other;
            }
        }
    }

    fn on_sasl_response(&mut self, id: ConnId, el: &Element) {
        let text = el.text();
        let data = match B64.decode(text.trim()) {
            Ok(d) => d,
            Err(_) => {
                self.sasl_failure(id, "incorrect-encoding", None);
                return;
            }
        };
        let conn = self.conns.get_mut(&id).expect("present");
        match conn.sasl.take() {
            Some(Sasl::AwaitInitial(mech)) => self.sasl_start(id, mech, &data),
            Some(Sasl::ScramFinal(mut scram, username)) => match scram.client_final(&data) {
                Ok(server_final) => self.sasl_success(id, username, Some(server_final)),
                Err(e) => self.sasl_failure(id, scram_condition(e), None),
            },
            Some(other) => {
                conn.sasl = Some(other);
                self.sasl_failure(id, "malformed-request", Some("unexpected response"));
            }
            None => self.sasl_failure(id, "malformed-request", Some("no exchange is running")),
        }
    }

    fn sasl_success(&mut self, id: ConnId, username: String, additional: Option<Vec<u8>>) {
        let mut success = Element::new(ns::SASL, "success");
        if let Some(data) = additional {
            success = success.with_text(&B64.encode(data));
        }
        self.send_element(id, &success, ns::CLIENT);
        let limits = self.config.limits.clone();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        log::info!(
            "conn {} from {}: authenticated as {username}",
            id.0,
            conn.peer
        );
        conn.user = Some(username);
        conn.sasl = None;
        // Stream restart (RFC 6120 6.4.6): a new parser from the next byte on.
        conn.parser = StreamParser::new(&limits);
        conn.stage = Stage::Header;
        self.reschedule(id);
    }

    // ---------------------------------------------------------------- iq utils

    fn reply_error(&mut self, id: ConnId, stanza: &Element, cond: SE, text: Option<&str>) {
        if let Some(reply) = error_reply(stanza, cond, text) {
            self.send_stanza(id, &reply);
        }
    }

    /// Answers an iq of `id`'s own client: an empty result, or an error.
    fn iq_answer(&mut self, id: ConnId, iq: &Element, answer: Result<(), SE>) {
        match answer {
            Ok(()) => {
                let reply = self.iq_result(iq);
                self.send_stanza(id, &reply);
            }
            Err(cond) => self.reply_error(id, iq, cond, None),
        }
    }

    fn iq_result(&self, iq: &Element) -> Element {
        let mut reply = Element::new(ns::CLIENT, "iq").with_attr("type", "result");
        if let Some(v) = iq.attr("id") {
            reply.set_attr("id", Some(v));
        }
        if let Some(v) = iq.attr("from") {
            reply.set_attr("to", Some(v));
        }
        if let Some(v) = iq.attr("to") {
            reply.set_attr("from", Some(v));
        }
        reply
    }

    // ------------------------------------------------------- registration

    /// XEP-0077: `user` is `None` before authentication.
    fn on_register(&mut self, id: ConnId, iq: Element, user: Option<&str>) {
        let query = iq.child(ns::REGISTER, "query").expect("checked by caller");
        match iq.attr("type") {
            Some("get") => {
                let mut q = Element::new(ns::REGISTER, "query");
                match user {
                    Some(u) => {
                        q = q
                            .with_child(Element::new(ns::REGISTER, "registered"))
                            .with_child(Element::new(ns::REGISTER, "username").with_text(u))
                            .with_child(Element::new(ns::REGISTER, "password"));
                    }
                    None => {
                        q = q
                            .with_child(Element::new(ns::REGISTER, "instructions").with_text(
                                "Choose a username and password to register with this server.",
                            ))
                            .with_child(Element::new(ns::REGISTER, "username"))
                            .with_child(Element::new(ns::REGISTER, "password"));
                    }
                }
                let reply = self.iq_result(&iq).with_child(q);
                self.send_stanza(id, &reply);
            }
            Some("set") => {
                if query.child(ns::REGISTER, "remove").is_some() {
                    let Some(username) = user else {
                        self.reply_error(id, &iq, SE::NotAuthorized, None);
                        return;
                    };
                    let token = self.token();
                    self.pending.insert(
                        token,
                        Pending::Remove {
                            conn: id,
                            iq: iq.clone(),
                        },
                    );
                    self.events.push_back(Event::Store(
                        token,
                        StoreRequest::DeleteAccount {
                            username: username.to_owned(),
                        },
                    ));
                    return;
                }
                let field = |name: &str| query.child(ns::REGISTER, name).map(|e| e.text());
                let (Some(username), Some(password)) = (field("username"), field("password"))
                else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::BadRequest,
                        Some("username and password are required"),
                    );
                    return;
                };
                let Some(username) = sasl::normalize_username(username.trim()) else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::JidMalformed,
                        Some("this username is not allowed"),
                    );
                    return;
                };
                let Some(password) = sasl::prepare_password(&password) else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::NotAcceptable,
                        Some("this password is not allowed"),
                    );
                    return;
                };
                if user.is_some_and(|u| u != username) {
                    self.reply_error(
                        id,
                        &iq,
                        SE::NotAllowed,
                        Some("you can only change your own password"),
                    );
                    return;
                }
                let mut salt = [0u8; 16];
                self.rng.fill_bytes(&mut salt);
                let credentials = Credentials::derive(&password, &salt, DEFAULT_ITERATIONS);
                let token = self.token();
                let request = if user.is_some() {
                    self.pending.insert(
                        token,
                        Pending::Password {
                            conn: id,
                            iq: iq.clone(),
                        },
                    );
                    StoreRequest::SetCredentials {
                        username,
                        credentials,
                    }
                } else {
                    self.pending.insert(
                        token,
                        Pending::Register {
                            conn: id,
                            iq: iq.clone(),
                        },
                    );
                    StoreRequest::CreateAccount {
                        username,
                        credentials,
                    }
                };
                self.events.push_back(Event::Store(token, request));
            }
            _ => self.reply_error(id, &iq, SE::BadRequest, None),
        }
    }

    // ------------------------------------------------------------- binding

    fn on_bind(&mut self, id: ConnId, iq: &Element) {
        if iq.attr("type") != Some("set") {
            self.reply_error(id, iq, SE::BadRequest, None);
            return;
        }
        let bind = iq.child(ns::BIND, "bind").expect("checked by caller");
        let requested = bind
            .child(ns::BIND, "resource")
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let user = self.conns[&id].user.clone().expect("authenticated");
        let bare = BareJid::from_parts(
            Some(&jid::NodePart::new(&user).expect("normalized at login")),
            &self.domain,
        );
        let full = match requested {
            Some(r) => match bare.with_resource_str(r.trim()) {
                Ok(full) => full,
                Err(_) => {
                    self.reply_error(id, iq, SE::BadRequest, Some("invalid resource"));
                    return;
                }
            },
            None => {
                let r = format!("kontalkd-{}", self.random_hex(6));
                bare.with_resource_str(&r)
                    .expect("generated resource is valid")
            }
        };
        // A second login with the same resource replaces the old session.
        if let Some(old) = self.find_session(&full) {
            log::info!("{full}: resource replaced by a new login");
            self.fail(
                old,
                XE::Conflict,
                Some("replaced by a new login with the same resource"),
            );
        }
        let conn = self.conns.get_mut(&id).expect("present");
        conn.jid = Some(full.clone());
        self.sessions.entry(bare).or_default().push(id);
        // The result goes out once the account's roster and block list are in memory.
        self.bind_loaded(id, iq.clone());
    }

    // ------------------------------------------------------------- stanzas

    /// A stanza from a bound session: `from` checked and stamped, `to` parsed.
    fn on_stanza(&mut self, id: ConnId, mut el: Element) {
        let Some(sender) = self.conns.get(&id).and_then(|c| c.jid.clone()) else {
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
}

fn refill(conn: &mut Conn, now: Instant, rate: u32) {
    let burst = f64::from(rate) * 2.0;
    let elapsed = now.saturating_duration_since(conn.tokens_at).as_secs_f64();
    conn.tokens = (conn.tokens + elapsed * f64::from(rate)).min(burst);
    conn.tokens_at = now;
}

fn scram_condition(e: sasl::ScramError) -> &'static str {
    match e {
        sasl::ScramError::Malformed | sasl::ScramError::UnexpectedMessage => "malformed-request",
        sasl::ScramError::InvalidAuthzid => "invalid-authzid",
        sasl::ScramError::NotAuthorized | sasl::ScramError::ChannelBinding => "not-authorized",
    }
}

mod sm;
#[cfg(test)]
mod tests;
