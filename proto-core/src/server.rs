//! The server facade: the `handle_*` / `poll_*` calls of the contract, the
//! connection table, and the dispatch of what happens on a connection to
//! the part that handles it (client negotiation, the session manager).
//!
//! See the crate documentation for the calling contract.

use core::net::IpAddr;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::address::JidCache;
use crate::c2s::Auth;
use crate::effects::{Effects, Pending};
use crate::error::StreamErrorCondition as XE;
use crate::guard::{Guard, RateLimit};
use crate::metrics::Counters;
use crate::ns;
use crate::router::Router;
use crate::session::{Session, SessionEvent, SessionManager};
use crate::stanza::StanzaKind;
use crate::store::{StoreReply, StoreRequest, StoreToken};
use crate::stream::{self, Stream, StreamNs};
use crate::timer::{Clock, ConnTimers, TimerKind, Timers};
use crate::tls::TlsConfigs;
use crate::xml::{Element, StreamEvent};
use crate::{Config, Event};

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
    /// Links from the other servers of a Kontalk network (port 5270).
    Net,
    /// Streams from other XMPP servers, upgraded with STARTTLS (port 5269).
    S2s,
    /// Streams from other XMPP servers with TLS from the first byte
    /// (XEP-0368, port 5270 by convention; ALPN `xmpp-server`).
    S2sDirect,
}

/// One connection: its stream, and what each part keeps about it.
pub(crate) struct Conn {
    /// The remote address (for per-address limits).
    pub(crate) peer: IpAddr,
    /// The listener it came in on.
    pub(crate) listener: Listener,
    pub(crate) created: Instant,
    /// Framing, TLS, header, output.
    pub(crate) stream: Stream,
    /// An [`Event::Transmit`] for it is queued and not yet answered.
    /// Its session (XEP-0198) lost the connection and waits to be
    /// resumed: there is no socket, and nothing is written to the stream.
    pub(crate) detached: bool,
    transmit_queued: bool,
    /// Client negotiation: SASL and the authenticated user.
    pub(crate) auth: Auth,
    /// The bound session (after resource binding).
    pub(crate) session: Option<Session>,
    pub(crate) last_input: Instant,
    pub(crate) last_output: Instant,
    /// A server ping (XEP-0199) waits for an answer since this instant.
    pub(crate) ping_sent: Option<Instant>,
    pub(crate) timers: ConnTimers,
    /// Output held back until an instant (throttled login failures).
    pub(crate) held: Option<(Instant, Vec<u8>)>,
    pub(crate) rate: RateLimit,
}

impl Conn {
    /// Who is at the other end, for the log: the bound JID, the
    /// authenticated account, or `-`.
    pub(crate) fn who(&self, domain: &jid::DomainPart) -> String {
        match (self.jid(), &self.auth.user) {
            (Some(jid), _) => jid.to_string(),
            (None, Some(user)) => format!("{user}@{}", domain.as_str()),
            (None, None) => "-".to_owned(),
        }
    }

    /// The full JID of the bound session.
    pub(crate) fn jid(&self) -> Option<&jid::FullJid> {
        self.session.as_ref().map(|s| &s.jid)
    }
}

/// The protocol core of one server: many client connections, one router.
pub struct Server {
    pub(crate) config: Config,
    pub(crate) tls: TlsConfigs,
    pub(crate) rng: ChaCha20Rng,
    /// Boxed: the map's spare buckets then cost a pointer, not a `Conn`.
    pub(crate) conns: IdMap<ConnId, Box<Conn>>,
    /// Of `conns`, the detached ones (a session waiting to be resumed, no socket).
    pub(crate) detached: usize,
    next_conn: u64,
    pub(crate) fx: Effects,
    pub(crate) timers: Timers,
    /// Last bytes of connections already closed, until the runtime takes them.
    closing_output: IdMap<ConnId, Vec<u8>>,
    pub(crate) sm: SessionManager,
    pub(crate) router: Router,
    pub(crate) clock: Clock,
    pub(crate) guard: Guard,
    /// The hasher of every [`PeerMap`] and [`PeerSet`].
    pub(crate) keyed: Keyed,
    /// Canonical forms of the addresses stanzas carry.
    pub(crate) jids: JidCache,
    pub(crate) domain: jid::DomainPart,
    shutting_down: bool,
    /// What happened since the start, for metrics.
    pub(crate) counters: Counters,
    /// Kontalk: the server's key, codes being sent.
    pub(crate) kontalk: crate::kontalk::register::State,
    /// Kontalk: the pushes out.
    pub(crate) push: crate::kontalk::push::PushState,
    /// The Kontalk network's links.
    pub(crate) net: crate::net::Net,
    /// Federation: streams to and from other servers.
    pub(crate) s2s: crate::s2s::S2s,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("domain", &self.config.domain)
            .field("connections", &self.conns.len())
            .field("sessions", &self.session_count())
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
        let net = crate::net::Net::new(config.net.as_ref(), keyed.clone());
        let s2s = crate::s2s::S2s::new(config.s2s.as_ref(), keyed.clone());
        let router = Router::new(domain.as_str())
            .with_host(net.host())
            .with_network(net.hosts())
            .with_s2s(s2s.enabled())
            .with_upload(config.upload.as_ref().map(|u| u.service.as_str()));
        Ok(Server {
            config,
            tls,
            rng,
            conns: IdMap::default(),
            detached: 0,
            next_conn: 1,
            fx: Effects::default(),
            timers: Timers::default(),
            closing_output: IdMap::default(),
            sm: SessionManager::new(keyed.clone()),
            router,
            clock: Clock::default(),
            guard: Guard::new(keyed.clone()),
            jids: JidCache::new(keyed.clone()),
            keyed,
            domain,
            shutting_down: false,
            counters: Counters::default(),
            kontalk: Default::default(),
            push: Default::default(),
            net,
            s2s,
        })
    }

    /// Replaces the TLS configurations (a renewed certificate): connections
    /// accepted from now on, and STARTTLS from now on, use them; streams
    /// already encrypted keep the state they negotiated.
    pub fn set_tls(&mut self, tls: TlsConfigs) {
        self.tls = tls;
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len() - self.detached
    }

    /// Whether `id` is a connection the core knows (a client's or a Net
    /// link's): a runtime whose connect finished after the core gave up on
    /// the link drops the socket.
    pub fn has_connection(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id) || self.net.owns(id) || self.s2s.owns(id)
    }

    /// Number of bound resources (sessions).
    pub fn session_count(&self) -> usize {
        self.sm.session_count()
    }

    /// What the core counted since it started (stanzas, bytes, logins, ...).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    // ----------------------------------------------------------------- input

    /// A new connection was accepted on `listener`; returns its handle.
    ///
    /// `peer` is the remote address, for the per-address limits.
    pub fn handle_accept(&mut self, now: Instant, listener: Listener, peer: IpAddr) -> ConnId {
        self.clock.tick(now);
        match listener {
            Listener::Net => return self.net_accept(now, peer),
            Listener::S2s => return self.s2s_accept(now, peer, false),
            Listener::S2sDirect => return self.s2s_accept(now, peer, true),
            Listener::Starttls | Listener::DirectTls => {}
        }
        let id = self.next_id();
        self.counters.connections_accepted += 1;
        let tls = match listener {
            Listener::DirectTls => Some(self.new_tls(true)),
            _ => None,
        };
        let limits = &self.config.limits;
        let mut conn = Conn {
            peer,
            listener,
            created: now,
            stream: Stream::new(StreamNs::Client, limits, tls),
            transmit_queued: false,
            detached: false,
            auth: Auth::default(),
            session: None,
            last_input: now,
            last_output: now,
            ping_sent: None,
            timers: ConnTimers::default(),
            held: None,
            rate: RateLimit::new(now, limits.stanzas_per_second),
        };
        conn.timers
            .set(TimerKind::Auth, Some(now + limits.auth_timeout));
        conn.timers
            .set(TimerKind::Idle, Some(now + limits.idle_timeout));
        let open = self.conns.len() - self.detached;
        self.conns.insert(id, Box::new(conn));
        let admitted = self.guard.admit(peer, open, &self.config.limits);
        self.reschedule(id);
        if self.shutting_down {
            self.fail(id, XE::SystemShutdown, None);
        } else if let Err((cond, text)) = admitted {
            self.fail(id, cond, Some(text));
        }
        id
    }

    /// A new connection handle.
    pub(crate) fn next_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// Whether [`Server::handle_shutdown`] was called.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Keeps the last bytes of a connection that is gone, until the
    /// runtime takes them.
    pub(crate) fn closing_output_insert(&mut self, id: ConnId, bytes: Vec<u8>) {
        self.closing_output.insert(id, bytes);
    }

    /// A new server-side rustls state, for STARTTLS or direct TLS.
    pub(crate) fn new_tls(&self, direct: bool) -> rustls::Connection {
        let cfg = if direct {
            &self.tls.direct
        } else {
            &self.tls.starttls
        };
        let tls = rustls::ServerConnection::new(cfg.clone()).expect("valid server config");
        stream::unbounded(tls.into())
    }

    /// Bytes arrived from the peer of `id`.
    pub fn handle_data(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.clock.tick(now);
        self.counters.bytes_in += data.len() as u64;
        if self.net.owns(id) {
            return self.link_data(now, id, data);
        }
        if self.s2s.owns(id) {
            return self.s2s_data(now, id, data);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.last_input = now;
        conn.ping_sent = None;
        let limits = &self.config.limits;
        conn.timers
            .set(TimerKind::Idle, Some(now + limits.idle_timeout));
        conn.timers.set(TimerKind::PingTimeout, None);
        if conn.session.is_some() {
            conn.timers
                .set(TimerKind::Ping, Some(now + limits.ping_interval));
        }
        if conn.stream.is_tls() {
            self.tls_input(now, id, data);
        } else {
            self.xml_input(now, id, data);
        }
        self.reschedule(id);
    }

    /// The peer of `id` closed its side of the TCP connection (or it failed).
    pub fn handle_eof(&mut self, now: Instant, id: ConnId) {
        self.clock.tick(now);
        if self.net.owns(id) {
            return self.link_gone(now, id, "connection closed by the peer");
        }
        if self.s2s.owns(id) {
            return self.s2s_gone(now, id, "connection closed by the peer");
        }
        if self.conns.get(&id).is_some_and(|c| !c.detached) {
            self.lose(now, id, "connection closed by the peer");
        }
    }

    /// The connection is gone (or dead): a resumable session (XEP-0198) is
    /// detached to wait for its client, any other ends.
    pub(crate) fn lose(&mut self, now: Instant, id: ConnId, reason: &str) {
        if self.resumable(id) {
            self.detach(now, id, reason);
        } else {
            self.close(id, reason);
        }
    }

    /// The runtime finished a storage request.
    pub fn handle_store_reply(&mut self, now: Instant, token: StoreToken, reply: StoreReply) {
        self.clock.tick(now);
        let Some((pending, asked)) = self.fx.answered(token) else {
            return;
        };
        // The one line of a failed request: which request, and what the
        // core does about it (the handlers below do it and log nothing).
        if let StoreReply::Failed(msg) = &reply {
            let of = asked
                .username
                .map(|u| format!(" of {u}@{}", self.domain))
                .unwrap_or_default();
            log::error!(
                "store: {}{of} failed: {msg}; {}",
                asked.what,
                pending.after_failure()
            );
        }
        match pending {
            Pending::Sasl(id) => self.sasl_keys(id, reply),
            Pending::Register { conn, iq } => self.registered(conn, &iq, reply),
            Pending::Password { conn, iq } => self.password_changed(conn, &iq, reply),
            Pending::Remove { conn, iq } => self.account_deleted(conn, &iq, reply),
            Pending::LoadUser(bare) => self.user_loaded(bare, reply),
            Pending::Durable { user, change, then } => self.durable(user, change, then, reply),
            Pending::StoreOffline(el, inbox, apps) => self.offline_stored(el, inbox, apps, reply),
            Pending::InFlight {
                to,
                el,
                archive,
                key,
                inbox,
            } => self.in_flight_stored(to, el, archive, key, inbox, reply),
            Pending::LoadOffline { conn, bare } => self.offline_loaded(conn, bare, reply),
            Pending::Vcard { conn, iq, own } => self.vcard_loaded(conn, iq, own, reply),
            Pending::Private { conn, iq, empty } => self.private_loaded(conn, iq, empty, reply),
            Pending::Archive {
                conn,
                iq,
                queryid,
                flip,
            } => self.archive_page(conn, iq, queryid, flip, reply),
            Pending::Ack { conn, h, asked } => self.barrier_passed(conn, h, asked),
            Pending::Resume { conn, el, asked } => self.resume_barrier_passed(now, conn, el, asked),
            Pending::Last(iq) => self.last_loaded(iq, reply),
            Pending::Kontalk(w) => self.kontalk_stored(w, reply),
            Pending::KontalkService(w) => self.kontalk_service_stored(w, reply),
            Pending::Push { conn, iq } => self.push_stored(conn, iq, reply),
            Pending::PushTokens(username) => self.push_tokens_loaded(username, reply),
            Pending::AppPush {
                conn,
                iq,
                bare,
                change,
            } => self.app_push_stored(conn, iq, bare, change, reply),
            Pending::Upload {
                conn,
                iq,
                reply: slot,
                legacy,
            } => self.upload_reserved(conn, iq, slot, legacy, reply),
            Pending::Net(w) => self.net_stored(now, w, reply),
            Pending::S2s(w) => self.s2s_stored(now, w, reply),
            Pending::Ignore(_) => {}
        }
        self.fx.answer_handled();
    }

    /// Gives the core the server's OpenPGP key (Kontalk): it certifies the
    /// keys of registering users and checks them at login. Without one,
    /// Kontalk registration and login are refused.
    pub fn set_kontalk_key(&mut self, key: crate::kontalk::keys::ServerKey) {
        self.kontalk.key = Some(std::sync::Arc::new(key));
        self.kontalk.logins = Default::default();
    }

    /// Tells the core the wall-clock time (seconds since the Unix epoch) at
    /// `now`. Needed for offline stamps, entity time and expiry; call it at
    /// start and now and then (every `handle_timeout` is fine).
    pub fn handle_wall_clock(&mut self, now: Instant, unix_secs: u64) {
        self.clock.tick(now);
        if self.clock.set_wall(now, unix_secs) {
            self.timers.start_maintenance(now);
        }
        // The first reading is the start: the links are opened, and what
        // federation's queues kept is loaded.
        self.net_timeout(now);
        self.s2s_timeout(now);
    }

    /// Time passed: fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.tick(now);
        if self.timers.maintenance_due(now) {
            self.guard.prune(now, &self.config.limits);
            if let Some(unix) = self.clock.unix_now() {
                let before = unix.saturating_sub(self.config.offline_expiry.as_secs());
                self.fx.store(
                    Pending::Ignore("they are deleted at the next maintenance"),
                    StoreRequest::ExpireOffline { before },
                );
                self.expire_archive(unix);
            }
        }
        while let Some(id) = self.timers.pop_due(now) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.timers.unqueued();
            }
            for kind in TimerKind::ALL {
                let Some(conn) = self.conns.get_mut(&id) else {
                    break;
                };
                if conn.timers.take_due(kind, now) {
                    self.fire(now, id, kind);
                }
            }
            self.reschedule(id);
        }
        self.net_timeout(now);
        self.s2s_timeout(now);
    }

    /// One due timer of a connection.
    fn fire(&mut self, now: Instant, id: ConnId, kind: TimerKind) {
        let limits = &self.config.limits;
        match kind {
            TimerKind::Held => {
                if let Some((_, bytes)) = self.conns.get_mut(&id).and_then(|c| c.held.take()) {
                    self.send_raw(id, &bytes);
                }
            }
            TimerKind::RateLimit => self.drain_backlog(now, id),
            TimerKind::Auth => self.fail(
                id,
                XE::ConnectionTimeout,
                Some("authentication took too long"),
            ),
            TimerKind::Idle | TimerKind::PingTimeout if self.resumable(id) => {
                self.detach(now, id, "idle for too long")
            }
            TimerKind::Idle | TimerKind::PingTimeout => {
                self.fail(id, XE::ConnectionTimeout, Some("idle for too long"))
            }
            TimerKind::Resume => self.close(id, "not resumed in time"),
            TimerKind::Ping => {
                let ping_timeout = limits.ping_timeout;
                let keepalive = limits.keepalive_interval;
                self.server_ping(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.ping_sent = Some(now);
                    c.last_output = now;
                    c.timers
                        .set(TimerKind::PingTimeout, Some(now + ping_timeout));
                    if c.stream.is_open() {
                        c.timers.set(TimerKind::Keepalive, Some(now + keepalive));
                    }
                }
            }
            TimerKind::Keepalive => {
                let keepalive = limits.keepalive_interval;
                self.send_raw(id, b" ");
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_output = now;
                    c.timers.set(TimerKind::Keepalive, Some(now + keepalive));
                }
            }
        }
    }

    /// The server is shutting down: every stream gets `system-shutdown`.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.net_shutdown(now);
        self.s2s_shutdown(now);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.fail(id, XE::SystemShutdown, None);
        }
    }

    // ---------------------------------------------------------------- output

    /// The next output event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.fx.is_idle() {
            // What waited for the end of the handle_* call (several store
            // answers' stanzas in one write).
            self.s2s_flush_later();
        }
        self.fx.pop()
    }

    /// Moves the bytes `id` has to send into `buf` (appending).
    /// Returns the number of bytes moved.
    pub fn poll_transmit(&mut self, id: ConnId, buf: &mut Vec<u8>) -> usize {
        if let Some(n) = self.link_take(id, buf) {
            self.counters.bytes_out += n as u64;
            return n;
        }
        if let Some(n) = self.s2s_take(id, buf) {
            self.counters.bytes_out += n as u64;
            return n;
        }
        let n = match self.conns.get_mut(&id) {
            Some(conn) => {
                conn.transmit_queued = false;
                let n = conn.stream.take_output(buf);
                if conn.session.is_some() {
                    self.output_taken(id);
                }
                n
            }
            None => match self.closing_output.remove(&id) {
                Some(mut out) => stream::take_into(&mut out, buf),
                None => 0,
            },
        };
        self.counters.bytes_out += n as u64;
        n
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limits = &self.config.limits;
        let links = self
            .net
            .next_deadline(limits.keepalive_interval, limits.idle_timeout);
        let s2s = self.s2s.next_deadline(limits.keepalive_interval);
        [self.timers.next(), links, s2s].into_iter().flatten().min()
    }

    /// Whether the runtime should read from `id` now: false while its output
    /// is over budget, or while stanzas it sent wait for the rate limit
    /// (backpressure: TCP slows the client down). Once the waiting stanzas
    /// are handled, [`Event::Resume`] says so.
    pub fn wants_read(&self, id: ConnId) -> bool {
        if let Some(wants) = self.link_wants_read(id) {
            return wants;
        }
        if let Some(wants) = self.s2s_wants_read(id) {
            return wants;
        }
        self.conns.get(&id).is_some_and(|c| {
            c.stream.pending_output() < self.config.limits.output_budget
                && !c.rate.waiting()
                && !c.detached
        })
    }

    // ------------------------------------------------- the connection table

    /// Puts `id` in the timer queue under its earliest deadline.
    pub(crate) fn reschedule(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            self.timers.schedule(id, &mut conn.timers);
        }
    }

    /// The account `conn` authenticated as, if it did.
    pub(crate) fn conn_user(&self, conn: ConnId) -> Option<String> {
        self.conns.get(&conn).and_then(|c| c.auth.user.clone())
    }

    pub(crate) fn random_hex(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill_bytes(&mut buf);
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tls_input(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let read = conn.stream.read_tls(data);
        self.queue_transmit(id);
        if !read.plain.is_empty() {
            self.xml_input(now, id, &read.plain);
        }
        if read.closed && self.conns.contains_key(&id) {
            // Without the stream's closing tag: the connection is lost,
            // and a resumable session waits for its client.
            self.lose(now, id, "TLS closed by the peer, or failed");
        }
    }

    fn xml_input(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let mut input = data;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let was_tls = conn.stream.is_tls();
            let ev = match conn.stream.next_event(&mut input) {
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
                StreamEvent::Header(h) => self.on_client_header(id, h),
                StreamEvent::Stanza(el) => {
                    // The stanza trace (`trace` level): what comes in, as parsed.
                    log::trace!("conn {} in: {}", id.0, el.to_xml(ns::CLIENT));
                    if let Some(kind) = StanzaKind::of(&el) {
                        self.counters.stanzas_in.add(kind, 1);
                    }
                    self.on_client_element(now, id, el)
                }
                StreamEvent::End => {
                    self.send_raw(id, stream::CLOSE);
                    self.close(id, "stream closed by the peer");
                    return;
                }
            }
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            if !was_tls && conn.stream.is_tls() {
                // STARTTLS just switched: everything after <starttls/> is TLS.
                if !input.is_empty() {
                    self.tls_input(now, id, input);
                }
                return;
            }
        }
    }

    /// Serializes `el` into the connection's output.
    pub(crate) fn send_element(&mut self, id: ConnId, el: &Element, parent_ns: &str) {
        let mut buf = Vec::with_capacity(256);
        el.write_to(&mut buf, parent_ns);
        self.send_raw(id, &buf);
    }

    /// Sends a stanza on a client stream.
    pub(crate) fn send_stanza(&mut self, id: ConnId, el: &Element) {
        if let Some(kind) = StanzaKind::of(el) {
            self.counters.stanzas_out.add(kind, 1);
        }
        let mut buf = Vec::with_capacity(256);
        el.write_to(&mut buf, ns::CLIENT);
        self.stanza_out(id, &buf, None);
    }

    /// Writes one stanza to `id`'s client; with stream management on, it
    /// is kept until the client acknowledges it.
    pub(crate) fn stanza_out(
        &mut self,
        id: ConnId,
        bytes: &[u8],
        what: Option<crate::session::Handed>,
    ) {
        let ask = self.sm_keep(id, bytes, what);
        self.send_raw(id, bytes);
        if ask {
            self.send_raw(id, b"<r xmlns='urn:xmpp:sm:3'/>");
        }
    }

    /// Queues bytes for the peer of `id`. A peer whose output grows past
    /// four times the budget does not read while others send to it: its
    /// stream ends.
    pub(crate) fn send_raw(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id).filter(|c| !c.detached) else {
            return;
        };
        // The stanza trace (`trace` level): what goes out, before TLS.
        log::trace!("conn {} out: {}", id.0, String::from_utf8_lossy(bytes));
        conn.stream.write(bytes);
        let over =
            conn.stream.pending_output() > self.config.limits.output_budget.saturating_mul(4);
        self.queue_transmit(id);
        if over {
            // What the runtime has not taken is withdrawn (whole: TLS
            // encrypts at take time), so the stream error is the next thing
            // the peer reads, and what was withdrawn is handled as for a
            // resource that went away.
            log::info!("conn {}: output over budget, closing", id.0);
            self.withdraw_unsent(id);
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.stream.withdraw(u64::MAX);
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
            if conn.stream.pending_output() > 0 && !conn.transmit_queued {
                conn.transmit_queued = true;
                self.fx.push(Event::Transmit(id));
            }
        }
    }

    /// Ends a stream with a stream error (RFC 6120 section 4.9).
    pub(crate) fn fail(&mut self, id: ConnId, cond: XE, text: Option<&str>) {
        let reason = match text {
            Some(t) => format!("stream error {} ({t})", cond.as_str()),
            None => format!("stream error {}", cond.as_str()),
        };
        self.fail_with(id, &crate::error::stream_error(cond, text), &reason);
    }

    /// [`fail`](Self::fail) with the `<stream:error>` element given as it
    /// is, and the reason for the log.
    pub(crate) fn fail_with(&mut self, id: ConnId, error: &[u8], reason: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // A held-back (throttled) answer goes out before the error.
        if let Some((_, held)) = conn.held.take() {
            self.send_raw(id, &held);
        }
        // What the session was handed and not taken goes elsewhere (8.5).
        self.withdraw_unsent(id);
        let Some(needs_header) = self.conns.get(&id).map(|c| c.stream.needs_header()) else {
            return;
        };
        let header_id = needs_header.then(|| self.random_hex(16));
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let bytes = conn
            .stream
            .end_bytes(header_id.as_deref(), &self.config.domain, error);
        self.send_raw(id, &bytes);
        self.close(id, reason);
    }

    /// Forgets a connection and tells the runtime to close it; the end of
    /// a bound session goes to the session manager as an event (the stream
    /// layer knows nothing of sessions).
    ///
    /// Logged at `info`: `disconnect: conn=N address=IP jid=JID|- reason=WHY`.
    pub(crate) fn close(&mut self, id: ConnId, reason: &str) {
        self.withdraw_unsent(id);
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        log::info!(
            "disconnect: conn={} address={} jid={} reason={reason}",
            id.0,
            conn.peer,
            conn.who(&self.domain)
        );
        let leftover = if conn.detached {
            Vec::new()
        } else {
            conn.stream.finish()
        };
        let detached = conn.detached;
        self.timers.remove(id, &conn.timers);
        if detached {
            self.detached -= 1;
        } else {
            // A detached session's address was released when it detached.
            self.guard.release(conn.peer);
        }
        if let Some(session) = conn.session.take() {
            self.on_session_event(SessionEvent::Ended { conn: id, session });
        }
        if detached {
            // The runtime closed the socket when the session detached.
            return;
        }
        // The last bytes (stream error, closing tag, close_notify) go out
        // through one more Transmit before the Close.
        if !leftover.is_empty() {
            self.closing_output.insert(id, leftover);
            if !conn.transmit_queued {
                self.fx.push(Event::Transmit(id));
            }
        }
        self.fx.push(Event::Close(id));
    }
}
