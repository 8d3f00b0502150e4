//! runtime-mio: drives the kontalkd protocol core (`proto-core`) with mio.
//!
//! The runtime moves bytes between sockets and the core, fires the core's
//! timers, executes its storage requests against the SQLite store (one
//! transaction per batch), and turns SIGINT/SIGTERM into a clean shutdown.
//! It knows nothing about XMPP.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kontalkd_store::{FileConfig, Store};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use proto_core::{
    ConnId, Event, Listener, Server, StoreReply, StoreRequest, StoreToken, TlsConfigs,
};

const STARTTLS_LISTENER: Token = Token(0);
const DIRECT_TLS_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Connection tokens are `ConnId` plus this offset.
const CONN_BASE: usize = 16;
const READ_CHUNK: usize = 16 * 1024;

struct Socket {
    stream: TcpStream,
    /// Bytes taken from the core and not yet written.
    pending: Vec<u8>,
    /// The core has more output, to be taken once `pending` is written.
    want_transmit: bool,
    /// Reading paused because the core's output budget is full.
    throttled: bool,
}

/// Starts the server with `config` and runs until SIGINT or SIGTERM.
pub fn run_server(config: FileConfig) -> Result<(), Box<dyn std::error::Error>> {
    let identity = kontalkd_store::load_or_create_identity(&config)?;
    let tls = TlsConfigs::new(&identity)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no system randomness: {e}"))?;
    let server = Server::new(config.core.clone(), tls, seed)?;
    let store = Store::open(&config.data_dir)?;
    let mut rt = Runtime::new(&config, server, store)?;
    rt.run()
}

struct Runtime {
    poll: Poll,
    server: Server,
    store: Store,
    listeners: Vec<(Token, TcpListener, Listener)>,
    signals: signal_hook_mio::v1_0::Signals,
    sockets: HashMap<ConnId, Socket>,
    batch: Vec<(StoreToken, StoreRequest)>,
    buf: Vec<u8>,
    shutting_down: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Box<dyn std::error::Error>> {
    TcpListener::bind(addr).map_err(|e| format!("cannot listen for {what} on {addr}: {e}").into())
}

impl Runtime {
    fn new(
        config: &FileConfig,
        server: Server,
        store: Store,
    ) -> Result<Runtime, Box<dyn std::error::Error>> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let mut l = bind(
            SocketAddr::new(config.listen, config.c2s_port),
            "client connections (STARTTLS)",
        )?;
        poll.registry()
            .register(&mut l, STARTTLS_LISTENER, Interest::READABLE)?;
        log::info!("listening for clients on {} (STARTTLS)", l.local_addr()?);
        listeners.push((STARTTLS_LISTENER, l, Listener::Starttls));
        if let Some(port) = config.direct_tls_port {
            let mut l = bind(
                SocketAddr::new(config.listen, port),
                "client connections (direct TLS)",
            )?;
            poll.registry()
                .register(&mut l, DIRECT_TLS_LISTENER, Interest::READABLE)?;
            log::info!("listening for clients on {} (direct TLS)", l.local_addr()?);
            listeners.push((DIRECT_TLS_LISTENER, l, Listener::DirectTls));
        }
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        log::info!("serving domain {}", config.core.domain);
        Ok(Runtime {
            poll,
            server,
            store,
            listeners,
            signals,
            sockets: HashMap::new(),
            batch: Vec::new(),
            buf: vec![0u8; READ_CHUNK],
            shutting_down: false,
        })
    }

    fn run(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let mut events = Events::with_capacity(1024);
        let mut last_clock: Option<Instant> = None;
        loop {
            let timeout = self
                .server
                .poll_timeout()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let timeout = if self.shutting_down {
                Some(
                    timeout
                        .unwrap_or(Duration::MAX)
                        .min(Duration::from_millis(100)),
                )
            } else {
                timeout
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = Instant::now();
            if last_clock.is_none_or(|t: Instant| now.duration_since(t) >= Duration::from_secs(60))
            {
                last_clock = Some(now);
                self.server.handle_wall_clock(now, unix_now());
            }
            for ev in events.iter() {
                match ev.token() {
                    STARTTLS_LISTENER | DIRECT_TLS_LISTENER => self.accept(now, ev.token()),
                    SIGNALS => self.on_signal(now),
                    token => {
                        let id = ConnId((token.0 - CONN_BASE) as u64);
                        if ev.is_writable() {
                            self.flush(id);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(now, id);
                        }
                    }
                }
                self.drain(now);
            }
            if self.server.poll_timeout().is_some_and(|at| at <= now) {
                self.server.handle_timeout(now);
                self.drain(now);
            }
            if self.shutting_down && self.sockets.is_empty() {
                log::info!("all connections closed, bye");
                return Ok(());
            }
        }
    }

    fn on_signal(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() {
            return;
        }
        if self.shutting_down {
            log::warn!("second signal: exiting now");
            std::process::exit(1);
        }
        log::info!("signal {}: shutting down", signals[0]);
        self.shutting_down = true;
        for (_, l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        self.server.handle_shutdown(now);
    }

    fn accept(&mut self, now: Instant, token: Token) {
        loop {
            let Some((_, listener, kind)) = self.listeners.iter().find(|(t, ..)| *t == token)
            else {
                return;
            };
            let kind = *kind;
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let id = self.server.handle_accept(now, kind, addr.ip());
                    let token = Token(id.0 as usize + CONN_BASE);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        log::warn!("cannot register connection from {addr}: {e}");
                        self.server.handle_eof(now, id);
                        continue;
                    }
                    log::debug!("conn {}: accepted from {addr} ({kind:?})", id.0);
                    self.sockets.insert(
                        id,
                        Socket {
                            stream,
                            pending: Vec::new(),
                            want_transmit: false,
                            throttled: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(sock) = self.sockets.get_mut(&id) else {
                return;
            };
            if !self.server.wants_read(id) {
                sock.throttled = true;
                return;
            }
            sock.throttled = false;
            match sock.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.server.handle_eof(now, id);
                    return;
                }
                Ok(n) => {
                    self.server.handle_data(now, id, &self.buf[..n]);
                    // Let the core's output reach the sockets between reads.
                    self.drain(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("conn {}: read failed: {e}", id.0);
                    self.server.handle_eof(now, id);
                    return;
                }
            }
        }
    }

    /// Writes what a socket has pending; returns false if the socket is gone.
    fn write_pending(sock: &mut Socket) -> io::Result<()> {
        while !sock.pending.is_empty() {
            match sock.stream.write(&sock.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sock.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn transmit(&mut self, id: ConnId) {
        let Some(sock) = self.sockets.get_mut(&id) else {
            // Closed already: discard.
            let mut sink = Vec::new();
            self.server.poll_transmit(id, &mut sink);
            return;
        };
        if !sock.pending.is_empty() {
            // Take more from the core only once the socket caught up.
            sock.want_transmit = true;
            return;
        }
        self.server.poll_transmit(id, &mut sock.pending);
        self.flush(id);
    }

    fn flush(&mut self, id: ConnId) {
        let Some(sock) = self.sockets.get_mut(&id) else {
            return;
        };
        loop {
            if let Err(e) = Self::write_pending(sock) {
                log::debug!("conn {}: write failed: {e}", id.0);
                sock.pending.clear();
                self.server.handle_eof(Instant::now(), id);
                return;
            }
            if !sock.pending.is_empty() || !sock.want_transmit {
                break;
            }
            sock.want_transmit = false;
            self.server.poll_transmit(id, &mut sock.pending);
        }
        let interest = if sock.pending.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let token = Token(id.0 as usize + CONN_BASE);
        let _ = self
            .poll
            .registry()
            .reregister(&mut sock.stream, token, interest);
        if sock.throttled && self.server.wants_read(id) {
            self.read(Instant::now(), id);
        }
    }

    fn close(&mut self, id: ConnId) {
        let Some(mut sock) = self.sockets.remove(&id) else {
            return;
        };
        self.server.poll_transmit(id, &mut sock.pending);
        // Best effort: the peer gets the closing bytes if its window has room.
        let _ = Self::write_pending(&mut sock);
        let _ = sock.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.poll.registry().deregister(&mut sock.stream);
        log::debug!("conn {}: closed", id.0);
    }

    /// Drains the core's events, executing storage requests in batches.
    fn drain(&mut self, now: Instant) {
        loop {
            while let Some(ev) = self.server.poll_event() {
                match ev {
                    Event::Transmit(id) => self.transmit(id),
                    Event::Close(id) => self.close(id),
                    Event::Store(token, req) => self.batch.push((token, req)),
                }
            }
            if self.batch.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.batch);
            for (token, reply) in self.store.execute_batch(batch) {
                if let StoreReply::Failed(msg) = &reply {
                    log::error!("store request failed: {msg}");
                }
                self.server.handle_store_reply(now, token, reply);
            }
        }
    }
}
