//! What every runtime does around the protocol core, written once.
//!
//! A runtime (runtime-mio, runtime-smol) owns sockets and a way to wait for
//! them; everything else it needs lives here so that no runtime copies it:
//!
//! - [`Core::start`]: the start-up (the data directory's lock, TLS identity,
//!   rustls configs, the RNG seed, [`Server::new`], [`Store::open`] and its
//!   write check, the first wall-clock reading);
//! - [`Core::bind_listeners`]: the client listeners of the configuration;
//! - [`Core::drain`]: the polling contract of `proto-core` after a
//!   `handle_*` call: events are drained until none is left, storage
//!   requests are batched and executed with [`Store::execute_batch`] (one
//!   transaction per drain) and their replies fed back; only
//!   [`Output::Transmit`] and [`Output::Close`] are left to the runtime;
//! - [`Core::handle_timers`] and [`Core::poll_timeout`]: the core's timers
//!   and the wall clock (read at start and at least once a minute).
//!
//! The core itself stays reachable as [`Core::server`] for the `handle_*`
//! calls that come from sockets (`handle_accept`, `handle_data`,
//! `handle_eof`, `handle_shutdown`) and for `poll_transmit` and `wants_read`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto_core::{ConnId, Event, Listener, Server, StoreReply, StoreRequest, StoreToken};

use kontalkd_store::Store;

use crate::control::{self, SocketFile, StoreStats};
use crate::datadir::DataDirLock;
use crate::tls::load_checked_tls;
use crate::FileConfig;

/// The error of a runtime that could not start or failed: `Send` and `Sync`,
/// so that a server future can be spawned on a multi-threaded executor.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Most storage requests [`Core::drain_deferring_store`] lets wait.
pub const STORE_BATCH: usize = 1024;

/// Longest [`Core::drain_deferring_store`] lets the first of them wait.
pub const STORE_DELAY: Duration = Duration::from_millis(2);

/// How often the core is told the wall-clock time, at the latest.
pub const WALL_CLOCK_INTERVAL: Duration = Duration::from_secs(60);

/// Environment variable that fixes the core's RNG seed: 64 hex digits.
///
/// **For tests only**: with a fixed seed, stream ids and SCRAM nonces repeat
/// from one start to the next, which is what the test that compares the
/// runtimes byte for byte needs, and what a real server must never do.
pub const TEST_SEED_VAR: &str = "KONTALKD_TEST_SEED";

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the core asks of the runtime's sockets (storage requests are handled
/// by [`Core::drain`] itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the address for the Net link, then tell
    /// the core [`Server::handle_connected`] or
    /// [`Server::handle_connect_failed`]; from then on it is a connection
    /// like an accepted one.
    Connect(ConnId, std::net::SocketAddr),
    /// The connection has bytes to send: take them with
    /// [`Server::poll_transmit`] once the socket can take them.
    Transmit(ConnId),
    /// Write what the connection still has (best effort), then close it.
    Close(ConnId),
    /// Read the connection again if reading was paused because
    /// [`Server::wants_read`] said no (and it now says yes).
    Resume(ConnId),
}

/// The protocol core with its store: everything a runtime drives.
pub struct Core {
    /// The configuration the server runs with (read again on reload).
    pub(crate) config: FileConfig,
    /// The admin socket's file, removed when the core is dropped (before
    /// the lock is released).
    socket_file: Option<SocketFile>,
    /// The data directory's lock, held for the life of the server.
    _lock: DataDirLock,
    /// The protocol core.
    pub server: Server,
    pub(crate) store: Store,
    batch: Vec<(StoreToken, StoreRequest)>,
    last_wall_clock: Instant,
    /// When the core started (uptime).
    pub(crate) started: Instant,
    /// Requests, outcomes and batch latency of the store, for metrics.
    pub(crate) store_stats: StoreStats,
    /// Output of a drain that ran without the runtime's sockets (an admin
    /// command), handed to the runtime at the next [`Core::drain`].
    held_io: Vec<Output>,
    /// When the oldest request of `batch` came (while it waits).
    batch_since: Option<Instant>,
    /// Sends the verification codes of Kontalk registrations.
    codes: crate::kontalk::CodeSender,
    /// Addresses of Net links being resolved.
    resolver: crate::net::Resolver,
    /// Federation's DNS questions.
    dns: crate::dns::Dns,
    /// File upload's listener, when it is on.
    upload: Option<crate::upload::Upload>,
    /// Sends the pushes.
    pusher: crate::push::Pusher,
}

impl Core {
    /// Starts the core for `config`: takes the data directory's lock (a
    /// second server on it is refused), loads (or on first start creates) the TLS
    /// identity, builds the rustls configs, seeds the core's RNG from the
    /// operating system (or from [`TEST_SEED_VAR`]), opens the store and checks
    /// that it can write it, and tells the core the wall-clock time.
    pub fn start(config: &FileConfig) -> Result<Core, Error> {
        // Before anything touches the data directory: it is this server's.
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let tls = load_checked_tls(config, unix_now())?;
        let seed = match std::env::var(TEST_SEED_VAR) {
            Ok(hex) => {
                log::warn!(
                    "{TEST_SEED_VAR} is set: the core's randomness is fixed (for tests only)"
                );
                parse_seed(&hex).ok_or_else(|| format!("{TEST_SEED_VAR} must be 64 hex digits"))?
            }
            Err(_) => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| format!("no system randomness: {e}"))?;
                seed
            }
        };
        let mut core_config = config.core.clone();
        if let (Some(s2s), Some(file)) = (core_config.s2s.as_mut(), &config.s2s) {
            if !file.secret_configured {
                s2s.dialback_secret =
                    crate::datadir::load_or_create_dialback_secret(&config.data_dir)?;
            }
        }
        let https = tls.https.clone();
        let mut server = Server::new(core_config, tls, seed)?;
        // The key's own randomness, apart from the core's.
        let key_seed: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::new()
                .chain_update(seed)
                .chain_update(b"kontalkd server key")
                .finalize()
                .into()
        };
        let key = crate::kontalk::load_or_create_key(config, key_seed, unix_now())?;
        log::info!("the server's OpenPGP key is {}", key.fingerprint());
        server.set_kontalk_key(key);
        let mut store = Store::open(&config.data_dir)?;
        store.check_writable()?;
        let pusher = crate::push::Pusher::new(config.push.as_ref())?;
        let upload = match &config.upload {
            Some(file) => Some(crate::upload::Upload::start(
                file,
                &config.data_dir,
                https,
                config.core.limits.max_connections_per_ip,
            )?),
            None => None,
        };
        let now = Instant::now();
        server.handle_wall_clock(now, unix_now());
        log::info!("serving domain {}", config.core.domain);
        if config.s2s.is_some() {
            log::info!(
                "federation on: {} routes, TLS {}, certificates {}",
                config.core.s2s.as_ref().map_or(0, |c| c.routes.len()),
                if config.core.s2s.as_ref().is_some_and(|c| c.require_tls) {
                    "required"
                } else {
                    "optional"
                },
                if config
                    .core
                    .s2s
                    .as_ref()
                    .is_some_and(|c| c.require_certificates)
                {
                    "required"
                } else {
                    "or dialback"
                },
            );
        }
        if let Some(net) = &config.core.net {
            log::info!(
                "network {}: this server is {}, with {} other servers",
                config.core.domain,
                net.host,
                net.peers.len()
            );
        }
        Ok(Core {
            config: config.clone(),
            socket_file: None,
            _lock: lock,
            server,
            store,
            batch: Vec::new(),
            last_wall_clock: now,
            started: now,
            store_stats: StoreStats::default(),
            held_io: Vec::new(),
            codes: Default::default(),
            resolver: Default::default(),
            dns: crate::dns::Dns::new(match &config.s2s {
                Some(s) if !s.name_servers.is_empty() => s.name_servers.clone(),
                Some(_) => crate::dns::system_name_servers(),
                None => Vec::new(),
            }),
            batch_since: None,
            upload,
            pusher,
        })
    }

    /// SIGHUP: reads the configuration file again and applies what can
    /// change while the server runs: the TLS certificate and key (new
    /// connections get them; established streams keep theirs), the log
    /// level and log file (reopened, for logrotate), and the core's policies
    /// and limits that [`Server::reconfigure`] can apply. What needs a
    /// restart (domain, listeners, data directory, a shorter idle timeout)
    /// is named when it changed, and not applied. When the file or the
    /// certificate cannot be read, nothing changes and the log says why.
    pub fn reload(&mut self) {
        let from = self.config.source.as_ref().map_or_else(
            || "the built-in defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let fresh = match crate::load_config(self.config.source.as_deref()) {
            Ok(c) => c,
            Err(errors) => {
                log::error!("reload: {from} has errors; nothing changed:\n{errors}");
                return;
            }
        };
        let tls = match load_checked_tls(&fresh, unix_now()) {
            Ok(tls) => tls,
            Err(e) => {
                log::error!(
                    "reload: {e}; nothing changed, the server keeps its current certificate"
                );
                return;
            }
        };
        // The log first, so that what follows is logged the new way.
        match crate::logging::reload(&fresh) {
            Some(Ok(what)) => log::info!("reload: {what}"),
            Some(Err(e)) => log::error!("reload: {e}"),
            None => {}
        }
        if let Some(upload) = &self.upload {
            upload.set_tls(tls.https.clone());
        }
        self.server.set_tls(tls);
        let (cert, _, _) = crate::tls::identity_paths(&fresh);
        log::info!(
            "reload: read {from}; new connections get the certificate {}",
            cert.display()
        );
        let done = self.server.reconfigure(fresh.core.clone());
        if !done.applied.is_empty() {
            let keys: Vec<String> = done
                .applied
                .iter()
                .map(|f| crate::config::file_key(f))
                .collect();
            log::info!("reload: applied {}", keys.join(", "));
        }
        let old = &self.config;
        let mut restart: Vec<String> = done
            .restart
            .iter()
            .map(|f| crate::config::file_key(f))
            .collect();
        if (fresh.listen, fresh.c2s_port, fresh.direct_tls_port)
            != (old.listen, old.c2s_port, old.direct_tls_port)
        {
            restart.push("the listeners (c2s.listen, c2s.port, c2s.direct_tls_port)".into());
        }
        if fresh.metrics_listen != old.metrics_listen {
            restart.push("server.metrics_listen".into());
        }
        if fresh.data_dir != old.data_dir {
            restart.push("server.data_dir".into());
        }
        if fresh.push != old.push {
            restart.push("the push provider (kontalk.push_*)".into());
        }
        if fresh.upload != old.upload {
            restart.push("the upload listener ([upload])".into());
        }
        if fresh.net_listener != old.net_listener {
            restart.push("the Net listener (net.listen, net.port)".into());
        }
        if !restart.is_empty() {
            log::warn!(
                "reload: {} changed and take effect at the next start",
                restart.join(", ")
            );
        }
        // What runs: the new certificate, log and what the core applied.
        self.config.core = self.server.config().clone();
        self.config.tls_certificate = fresh.tls_certificate;
        self.config.tls_private_key = fresh.tls_private_key;
        self.config.log_level = fresh.log_level;
        self.config.log_file = fresh.log_file;
    }

    /// Binds the client listeners of `config` (STARTTLS, and direct TLS unless
    /// disabled), non-blocking, ready to be handed to an event loop.
    pub fn bind_listeners(config: &FileConfig) -> Result<Vec<(TcpListener, Listener)>, Error> {
        let mut wanted = vec![(
            SocketAddr::new(config.listen, config.c2s_port),
            Listener::Starttls,
            "STARTTLS",
        )];
        if let Some(port) = config.direct_tls_port {
            wanted.push((
                SocketAddr::new(config.listen, port),
                Listener::DirectTls,
                "direct TLS",
            ));
        }
        if let Some(addr) = config.net_listener {
            wanted.push((addr, Listener::Net, "Net"));
        }
        if let Some(s2s) = &config.s2s {
            wanted.push((s2s.listener, Listener::S2s, "S2S, STARTTLS"));
            if let Some(addr) = s2s.direct_listener {
                wanted.push((addr, Listener::S2sDirect, "S2S, direct TLS"));
            }
        }
        let mut listeners = Vec::new();
        for (addr, kind, what) in wanted {
            let listener = TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| {
                    let whose = match kind {
                        Listener::Net => "links of the network's servers",
                        Listener::S2s | Listener::S2sDirect => "other XMPP servers",
                        Listener::Starttls | Listener::DirectTls => "client connections",
                    };
                    format!("cannot listen for {whose} ({what}) on {addr}: {e}")
                })?;
            log::info!(
                "listening for {} on {} ({what})",
                match kind {
                    Listener::Net => "the network's servers",
                    Listener::S2s | Listener::S2sDirect => "other XMPP servers",
                    Listener::Starttls | Listener::DirectTls => "clients",
                },
                listener.local_addr()?
            );
            listeners.push((listener, kind));
        }
        Ok(listeners)
    }

    /// Binds the admin socket (`DATA_DIR/kontalkd.sock`, mode 0600; a stale
    /// one is removed first: the data directory's lock is ours), non-blocking.
    /// The file is removed when the core is dropped.
    pub fn bind_control(&mut self) -> Result<UnixListener, Error> {
        let (listener, file) = control::bind_socket(&self.config.data_dir)?;
        self.socket_file = Some(file);
        Ok(listener)
    }

    /// Binds the metrics endpoint (`server.metrics_listen`), non-blocking;
    /// `None` when it is off.
    pub fn bind_metrics(&self) -> Result<Option<TcpListener>, Error> {
        let Some(addr) = self.config.metrics_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        log::info!("metrics on http://{}/metrics", listener.local_addr()?);
        Ok(Some(listener))
    }

    /// Drains the core without the runtime (for an admin command that must
    /// see the store run what the core asked for before it goes on): the
    /// output is held for the next [`drain`](Self::drain).
    pub(crate) fn drain_holding_io(&mut self, now: Instant) {
        let mut held = std::mem::take(&mut self.held_io);
        self.drain(now, |_, out| held.push(out));
        self.held_io = held;
    }

    /// Drains the core's events after a `handle_*` call, as the contract asks:
    /// storage requests are collected and executed as one batch (one
    /// transaction) whenever no other event is left, their replies fed back,
    /// and draining goes on until the core has nothing more to say. Transmit,
    /// Close and Resume go to `io`, in order, with the server for
    /// `poll_transmit` and `wants_read`.
    pub fn drain(&mut self, now: Instant, io: impl FnMut(&mut Server, Output)) {
        self.drain_with(now, io, 0);
    }

    /// [`drain`](Self::drain), but the storage requests wait (up to
    /// [`STORE_BATCH`] of them, [`STORE_DELAY`] at most) for the next `drain`, which runs them with
    /// those that came meanwhile in one transaction: a runtime that handles
    /// many sockets' input in a row calls this after each and `drain` after
    /// the last (group commit: one transaction, one sync to disk, for all of
    /// them). Nothing that waits on the store goes out before that.
    pub fn drain_deferring_store(&mut self, now: Instant, io: impl FnMut(&mut Server, Output)) {
        self.drain_with(now, io, STORE_BATCH);
    }

    /// Runs the storage requests collected now (`defer` 0), or once there
    /// are `defer` of them.
    fn drain_with(&mut self, now: Instant, mut io: impl FnMut(&mut Server, Output), defer: usize) {
        for out in std::mem::take(&mut self.held_io) {
            io(&mut self.server, out);
        }
        loop {
            while let Some(ev) = self.server.poll_event() {
                match ev {
                    Event::Transmit(id) => io(&mut self.server, Output::Transmit(id)),
                    Event::Close(id) => io(&mut self.server, Output::Close(id)),
                    Event::Resume(id) => io(&mut self.server, Output::Resume(id)),
                    Event::Store(token, req) => self.batch.push((token, req)),
                    Event::Connect { conn, address } => {
                        match self.resolver.resolve(conn, &address) {
                            Some(Ok(addr)) => io(&mut self.server, Output::Connect(conn, addr)),
                            Some(Err(e)) => self.server.handle_connect_failed(now, conn, &e),
                            None => {}
                        }
                    }
                    Event::Resolve { token, query } => self.dns.ask(token, query),
                    Event::Push(job) => {
                        if let Some((id, outcome)) = self.pusher.send(job) {
                            self.server.handle_push_done(id, outcome);
                        }
                    }
                    Event::SendCode(msg) => {
                        let sender = &self.config.core.kontalk.sender;
                        if let Some(sent) = self.codes.send(&self.config.verification, sender, &msg)
                        {
                            self.server.handle_code_sent(msg.token, sent);
                        }
                    }
                }
            }
            let wait = if defer == 0 {
                self.batch.is_empty()
            } else {
                let since = *self.batch_since.get_or_insert(now);
                self.batch.len() < defer && now.saturating_duration_since(since) < STORE_DELAY
            };
            if wait {
                if self.batch.is_empty() {
                    self.batch_since = None;
                }
                return;
            }
            self.batch_since = None;
            let batch = std::mem::take(&mut self.batch);
            // A failed request is logged once, by the core, which knows
            // what it does about it.
            let requests = batch.len();
            let started = Instant::now();
            let replies = self.store.execute_batch(batch);
            let failed = replies
                .iter()
                .filter(|(_, r)| matches!(r, StoreReply::Failed(_)))
                .count();
            self.store_stats
                .observe(started.elapsed(), requests, failed);
            for (token, reply) in replies {
                self.server.handle_store_reply(now, token, reply);
            }
        }
    }

    /// How a thread of the host (an SMS gateway's worker) wakes the
    /// runtime's loop once it has something for the core; the loop then
    /// calls [`handle_timers`](Self::handle_timers), which takes it.
    pub fn set_wake(&mut self, wake: crate::kontalk::Wake) {
        self.codes.set_wake(wake.clone());
        self.pusher.set_wake(wake.clone());
        self.resolver.set_wake(wake.clone());
        self.dns.set_wake(wake);
    }

    /// Fires what is due at `now`: the wall-clock reading (once a minute),
    /// the core's timers, and what the host's threads finished (see
    /// [`set_wake`](Self::set_wake)). Call [`drain`](Self::drain) afterwards.
    pub fn handle_timers(&mut self, now: Instant) {
        for (token, sent) in self.codes.poll() {
            self.server.handle_code_sent(token, sent);
        }
        for (id, outcome) in self.pusher.poll() {
            self.server.handle_push_done(id, outcome);
        }
        for (token, answer) in self.dns.poll() {
            self.server.handle_dns_answer(now, token, &answer);
        }
        for (conn, resolved) in self.resolver.poll() {
            match resolved {
                Ok(addr) => self.held_io.push(Output::Connect(conn, addr)),
                Err(e) => self.server.handle_connect_failed(now, conn, &e),
            }
        }
        if now.saturating_duration_since(self.last_wall_clock) >= WALL_CLOCK_INTERVAL {
            self.last_wall_clock = now;
            self.server.handle_wall_clock(now, unix_now());
        }
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            self.server.handle_timeout(now);
        }
    }

    /// When [`handle_timers`](Self::handle_timers) has work next: the core's
    /// own timeout or the next wall-clock reading, whichever comes first.
    pub fn poll_timeout(&self) -> Instant {
        let clock = self.last_wall_clock + WALL_CLOCK_INTERVAL;
        self.server.poll_timeout().map_or(clock, |at| at.min(clock))
    }
}

fn parse_seed(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (byte, pair) in seed.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_64_hex_digits() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let seed = parse_seed(hex).unwrap();
        assert_eq!(seed[0], 0x00);
        assert_eq!(seed[1], 0x11);
        assert_eq!(seed[31], 0xff);
        assert!(parse_seed(&hex[..62]).is_none());
        assert!(parse_seed(&format!("{}zz", &hex[..62])).is_none());
        assert!(parse_seed("").is_none());
    }
}
