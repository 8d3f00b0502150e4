//! runtime-mio: drives the kontalkd protocol core (`proto-core`) with mio.
//!
//! A hand-rolled readiness loop: the runtime moves bytes between sockets and
//! the core, fires the core's timers and turns SIGINT/SIGTERM into a clean
//! shutdown and SIGHUP into a reload. What every runtime does around the core (start-up, draining the
//! core's events with batched storage, timers and wall clock) is
//! [`kontalkd_host::runtime::Core`]. It knows nothing about XMPP. The
//! admin socket and the metrics endpoint are a few more sockets in the same
//! loop; what their requests mean is [`kontalkd_host::control`].

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use kontalkd_host::control::{self, Plane, Request};
use kontalkd_host::runtime::{Core, Error, Output};
use kontalkd_host::FileConfig;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};
use proto_core::{ConnId, IdMap, Listener, Server};

const STARTTLS_LISTENER: Token = Token(0);
const DIRECT_TLS_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const ADMIN_LISTENER: Token = Token(3);
const METRICS_LISTENER: Token = Token(4);
/// A thread of the host has something for the core (see `Core::set_wake`).
const WAKE: Token = Token(5);
/// Links from the other servers of a Kontalk network.
const NET_LISTENER: Token = Token(6);
/// Streams from other XMPP servers (STARTTLS, direct TLS).
const S2S_LISTENER: Token = Token(7);
const S2S_DIRECT_LISTENER: Token = Token(8);
/// Control connections (admin, metrics) have tokens from here on, one per slot.
const CONTROL_BASE: usize = 16;
/// Connection tokens are `ConnId` plus this offset.
const CONN_BASE: usize = CONTROL_BASE + control::MAX_CONNECTIONS;
const READ_CHUNK: usize = 16 * 1024;

struct Socket {
    stream: TcpStream,
    /// Bytes taken from the core and not yet written.
    pending: Vec<u8>,
    /// The core has more output, to be taken once `pending` is written.
    want_transmit: bool,
    /// Reading paused because the core's output budget is full.
    throttled: bool,
    /// Registered for writability too (output waits for the socket).
    writable: bool,
    /// In `Sockets::dirty`: has output to write (see `Runtime::flush_dirty`).
    dirty: bool,
    /// A Net link being connected (its first writability says how it went).
    connecting: bool,
}

impl Socket {
    fn new(stream: TcpStream) -> Socket {
        Socket {
            stream,
            pending: Vec::new(),
            want_transmit: false,
            throttled: false,
            writable: false,
            dirty: false,
            connecting: false,
        }
    }
}

/// A control connection's socket.
enum CtlStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl CtlStream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            CtlStream::Unix(s) => s,
            CtlStream::Tcp(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            CtlStream::Unix(s) => s.read(buf),
            CtlStream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CtlStream::Unix(s) => s.write(buf),
            CtlStream::Tcp(s) => s.write(buf),
        }
    }
}

/// A control connection: its request being read, then its answer being
/// written; closed when written or at the request's deadline.
struct ControlConn {
    stream: CtlStream,
    request: Request,
    /// The answer, once there is one, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
}

/// Starts the server with `config` and runs until SIGINT or SIGTERM.
pub fn run_server(config: FileConfig) -> Result<(), Error> {
    let core = Core::start(&config)?;
    let mut rt = Runtime::new(&config, core)?;
    rt.run()
}

struct Runtime {
    poll: Poll,
    core: Core,
    listeners: Vec<(Token, TcpListener, Listener)>,
    signals: signal_hook_mio::v1_0::Signals,
    sockets: Sockets,
    buf: Vec<u8>,
    shutting_down: bool,
    admin: UnixListener,
    metrics: Option<TcpListener>,
    /// Control connections by slot (token `CONTROL_BASE + slot`).
    controls: Vec<Option<ControlConn>>,
}

/// The connections' sockets, apart from the core so that the core's output
/// can be written while it is being drained.
struct Sockets {
    registry: Registry,
    map: IdMap<ConnId, Socket>,
    /// Throttled connections whose output drained: to be read again.
    resume: Vec<ConnId>,
    /// Connections with output to write (see `Runtime::flush_dirty`).
    dirty: Vec<ConnId>,
}

fn conn_token(id: ConnId) -> Token {
    Token(id.0 as usize + CONN_BASE)
}

impl Runtime {
    fn new(config: &FileConfig, mut core: Core) -> Result<Runtime, Error> {
        let poll = Poll::new()?;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        core.set_wake(std::sync::Arc::new(move || {
            if let Err(e) = waker.wake() {
                log::error!("cannot wake the event loop: {e}");
            }
        }));
        let mut admin = UnixListener::from_std(core.bind_control()?);
        poll.registry()
            .register(&mut admin, ADMIN_LISTENER, Interest::READABLE)?;
        let mut metrics = core.bind_metrics()?.map(TcpListener::from_std);
        if let Some(m) = &mut metrics {
            poll.registry()
                .register(m, METRICS_LISTENER, Interest::READABLE)?;
        }
        let mut listeners = Vec::new();
        for (listener, kind) in Core::bind_listeners(config)? {
            let token = match kind {
                Listener::Starttls => STARTTLS_LISTENER,
                Listener::DirectTls => DIRECT_TLS_LISTENER,
                Listener::Net => NET_LISTENER,
                Listener::S2s => S2S_LISTENER,
                Listener::S2sDirect => S2S_DIRECT_LISTENER,
            };
            let mut l = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut l, token, Interest::READABLE)?;
            listeners.push((token, l, kind));
        }
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let registry = poll.registry().try_clone()?;
        Ok(Runtime {
            poll,
            core,
            listeners,
            signals,
            sockets: Sockets {
                registry,
                map: IdMap::default(),
                resume: Vec::new(),
                dirty: Vec::new(),
            },
            buf: vec![0u8; READ_CHUNK],
            shutting_down: false,
            admin,
            metrics,
            controls: (0..control::MAX_CONNECTIONS).map(|_| None).collect(),
        })
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(1024);
        log::info!("ready");
        loop {
            let deadline = self
                .controls
                .iter()
                .flatten()
                .map(|c| c.request.deadline())
                .fold(self.core.poll_timeout(), Instant::min);
            let timeout = deadline.saturating_duration_since(Instant::now());
            let timeout = if self.shutting_down {
                timeout.min(Duration::from_millis(100))
            } else {
                timeout
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    STARTTLS_LISTENER | DIRECT_TLS_LISTENER | NET_LISTENER | S2S_LISTENER
                    | S2S_DIRECT_LISTENER => self.accept(now, ev.token()),
                    SIGNALS => self.on_signal(now),
                    // What woke the loop is taken by `handle_timers` below.
                    WAKE => {}
                    ADMIN_LISTENER | METRICS_LISTENER => self.accept_control(now, ev.token()),
                    Token(t) if t < CONN_BASE => self.control_event(now, t - CONTROL_BASE),
                    token => {
                        let id = ConnId((token.0 - CONN_BASE) as u64);
                        if self.sockets.map.get(&id).is_some_and(|s| s.connecting) {
                            self.sockets.connected(&mut self.core.server, now, id);
                            self.drain_deferring_store(now);
                            self.flush_dirty(now, false);
                            continue;
                        }
                        if ev.is_writable() {
                            self.sockets.flush(&mut self.core.server, id);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // At the end of the input, read until the socket
                            // says so: no other edge will come.
                            let to_the_end = ev.is_read_closed() || ev.is_error();
                            self.read(now, id, to_the_end);
                        }
                    }
                }
                // Each event's output is written before the next event:
                // holding it for a batch of events was measured to cost
                // latency and to gain no throughput. What the events ask of
                // the store waits for the end of the batch of events: one
                // transaction (one sync to disk) for all of them.
                self.drain_deferring_store(now);
                self.flush_dirty(now, false);
            }
            self.core.handle_timers(now);
            self.drain(now);
            self.flush_dirty(now, true);
            for slot in 0..self.controls.len() {
                if self.controls[slot]
                    .as_ref()
                    .is_some_and(|c| c.request.deadline() <= now)
                {
                    self.close_control(slot);
                }
            }
            if self.shutting_down && self.sockets.map.is_empty() {
                log::info!("all connections closed, bye");
                return Ok(());
            }
        }
    }

    fn on_signal(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        let (reloads, stops): (Vec<i32>, Vec<i32>) = signals
            .into_iter()
            .partition(|&s| s == signal_hook::consts::SIGHUP);
        if !reloads.is_empty() && !self.shutting_down {
            log::info!("signal {}: reloading", reloads[0]);
            self.core.reload();
        }
        if stops.is_empty() {
            return;
        }
        if self.shutting_down {
            log::warn!("second signal: exiting now");
            std::process::exit(1);
        }
        log::info!("signal {}: shutting down", stops[0]);
        self.shutting_down = true;
        for (_, l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        self.core.server.handle_shutdown(now);
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
                    let id = self.core.server.handle_accept(now, kind, addr.ip());
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        conn_token(id),
                        Interest::READABLE,
                    ) {
                        log::warn!("cannot register connection from {addr}: {e}");
                        self.core.server.handle_eof(now, id);
                        continue;
                    }
                    log::debug!("conn {}: accepted from {addr} ({kind:?})", id.0);
                    self.sockets.map.insert(id, Socket::new(stream));
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

    /// Accepts control connections into free slots; one more than the
    /// slots is closed at once.
    fn accept_control(&mut self, now: Instant, token: Token) {
        loop {
            let (stream, plane) = match token {
                ADMIN_LISTENER => match self.admin.accept() {
                    Ok((s, _)) => (CtlStream::Unix(s), Plane::Admin),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        log::warn!("admin socket: accept failed: {e}");
                        return;
                    }
                },
                _ => match self.metrics.as_ref().map(|m| m.accept()) {
                    Some(Ok((s, _))) => (CtlStream::Tcp(s), Plane::Metrics),
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Some(Err(e)) => {
                        log::warn!("metrics: accept failed: {e}");
                        return;
                    }
                    None => return,
                },
            };
            let Some(slot) = self.controls.iter().position(Option::is_none) else {
                log::warn!("too many control connections: closing one");
                continue;
            };
            let mut conn = ControlConn {
                stream,
                request: Request::new(plane, now),
                answer: None,
            };
            let token = Token(CONTROL_BASE + slot);
            if self
                .poll
                .registry()
                .register(conn.stream.source(), token, Interest::READABLE)
                .is_ok()
            {
                self.controls[slot] = Some(conn);
                // Edge-triggered: what arrived before registration is read now.
                self.control_event(now, slot);
            }
        }
    }

    /// A control connection is ready: read its request until it is complete
    /// (or its peer ends it), have the core answer, write the answer.
    fn control_event(&mut self, now: Instant, slot: usize) {
        let Some(conn) = self.controls.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.answer.is_none() {
            let ready = loop {
                match conn.stream.read(&mut self.buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        if conn.request.feed(&self.buf[..n]) {
                            break true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.close_control(slot);
                        return;
                    }
                }
            };
            if !ready {
                return;
            }
            let answer = self.core.control(now, &conn.request);
            conn.answer = Some((answer, 0));
            let _ = self.poll.registry().reregister(
                conn.stream.source(),
                Token(CONTROL_BASE + slot),
                Interest::WRITABLE,
            );
            // What the command did to the streams (a kick) goes out now.
            self.drain(now);
            self.flush_dirty(now, true);
        }
        let Some(conn) = self.controls.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some((answer, written)) = conn.answer.as_mut() else {
            return;
        };
        while *written < answer.len() {
            match conn.stream.write(&answer[*written..]) {
                Ok(0) => break,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close_control(slot);
    }

    fn close_control(&mut self, slot: usize) {
        if let Some(mut conn) = self.controls[slot].take() {
            let _ = self.poll.registry().deregister(conn.stream.source());
        }
    }

    /// Reads from `id` while the core wants input. The socket is
    /// edge-triggered: a read that fills less than the buffer emptied it, and
    /// new bytes bring a new event, so unless `to_the_end` it stops there
    /// rather than paying a system call to hear `WouldBlock`.
    fn read(&mut self, now: Instant, id: ConnId, to_the_end: bool) {
        loop {
            let Some(sock) = self.sockets.map.get_mut(&id) else {
                return;
            };
            if !self.core.server.wants_read(id) {
                sock.throttled = true;
                return;
            }
            sock.throttled = false;
            match sock.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.core.server.handle_eof(now, id);
                    return;
                }
                Ok(n) => {
                    self.core.server.handle_data(now, id, &self.buf[..n]);
                    // Let the core's output reach the sockets between reads:
                    // a sender's backlog must not pile up in its receivers'
                    // output budgets.
                    self.drain_deferring_store(now);
                    self.flush_dirty(now, false);
                    if n < self.buf.len() && !to_the_end {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("conn {}: read failed: {e}", id.0);
                    self.core.server.handle_eof(now, id);
                    return;
                }
            }
        }
    }

    /// Drains the core (see [`Core::drain`]): output is gathered for
    /// [`flush_dirty`](Self::flush_dirty).
    fn drain(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        self.core
            .drain(now, |server, out| sockets.output(server, out));
    }

    /// [`drain`](Self::drain) with the storage requests left for the next
    /// one (see [`Core::drain_deferring_store`]).
    fn drain_deferring_store(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        self.core
            .drain_deferring_store(now, |server, out| sockets.output(server, out));
    }

    /// Writes the output gathered since the last call (everything an event
    /// produced for one connection leaves in one system call), then reads
    /// again from the connections whose backpressure ended, until neither
    /// has work; `store` runs the storage requests that wait too.
    fn flush_dirty(&mut self, now: Instant, store: bool) {
        loop {
            let dirty = std::mem::take(&mut self.sockets.dirty);
            if dirty.is_empty() && self.sockets.resume.is_empty() {
                return;
            }
            for &id in &dirty {
                if let Some(sock) = self.sockets.map.get_mut(&id) {
                    sock.dirty = false;
                    self.sockets.flush(&mut self.core.server, id);
                }
            }
            // Give the vector back (its capacity) unless flushing refilled it.
            if self.sockets.dirty.is_empty() {
                self.sockets.dirty = dirty;
                self.sockets.dirty.clear();
            }
            while let Some(id) = self.sockets.resume.pop() {
                self.read(now, id, true);
            }
            if store {
                self.drain(now);
            } else {
                self.drain_deferring_store(now);
            }
        }
    }
}

impl Sockets {
    /// One output of the core.
    fn output(&mut self, server: &mut Server, out: Output) {
        match out {
            Output::Transmit(id) => self.transmit(server, id),
            Output::Close(id) => self.close(server, id),
            Output::Resume(id) => self.resume_if_throttled(server, id),
            Output::Connect(id, addr) => self.connect(server, id, addr),
        }
    }

    /// Starts connecting a Net link (non-blocking); its first writability
    /// comes to [`connected`](Self::connected).
    fn connect(&mut self, server: &mut Server, id: ConnId, addr: std::net::SocketAddr) {
        let now = Instant::now();
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return server.handle_connect_failed(now, id, &format!("{addr}: {e}")),
        };
        if let Err(e) = self.registry.register(
            &mut stream,
            conn_token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return server.handle_connect_failed(now, id, &format!("{addr}: {e}"));
        }
        log::debug!("conn {}: connecting to {addr}", id.0);
        let mut sock = Socket::new(stream);
        sock.connecting = true;
        sock.writable = true;
        self.map.insert(id, sock);
    }

    /// A Net link's connection attempt ended: the core hears how.
    fn connected(&mut self, server: &mut Server, now: Instant, id: ConnId) {
        let Some(sock) = self.map.get_mut(&id) else {
            return;
        };
        let peer = match sock.stream.take_error() {
            Ok(None) => sock.stream.peer_addr(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        let peer = match peer {
            Ok(peer) => peer,
            // Not connected yet (a spurious wake-up): wait for the next event.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                let _ = self.registry.deregister(&mut sock.stream);
                self.map.remove(&id);
                return server.handle_connect_failed(now, id, &e.to_string());
            }
        };
        let _ = sock.stream.set_nodelay(true);
        sock.connecting = false;
        sock.writable = false;
        let _ = self
            .registry
            .reregister(&mut sock.stream, conn_token(id), Interest::READABLE);
        log::debug!("conn {}: connected to {peer}", id.0);
        server.handle_connected(now, id, peer.ip());
    }

    /// Writes what a socket has pending.
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

    fn transmit(&mut self, server: &mut Server, id: ConnId) {
        let Some(sock) = self.map.get_mut(&id) else {
            // Closed already: discard.
            let mut sink = Vec::new();
            server.poll_transmit(id, &mut sink);
            return;
        };
        if sock.pending.is_empty() {
            server.poll_transmit(id, &mut sock.pending);
        } else {
            // Take more from the core only once the socket caught up.
            sock.want_transmit = true;
        }
        if !sock.dirty && !sock.writable {
            sock.dirty = true;
            self.dirty.push(id);
        }
    }

    fn flush(&mut self, server: &mut Server, id: ConnId) {
        let Some(sock) = self.map.get_mut(&id) else {
            return;
        };
        loop {
            if let Err(e) = Self::write_pending(sock) {
                log::debug!("conn {}: write failed: {e}", id.0);
                sock.pending.clear();
                server.handle_eof(Instant::now(), id);
                return;
            }
            if !sock.pending.is_empty() || !sock.want_transmit {
                break;
            }
            sock.want_transmit = false;
            server.poll_transmit(id, &mut sock.pending);
        }
        // Re-register only when the interest changes: an epoll_ctl per
        // transmit costs a system call per relayed message.
        let writable = !sock.pending.is_empty();
        if writable != sock.writable {
            sock.writable = writable;
            let interest = if writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .registry
                .reregister(&mut sock.stream, conn_token(id), interest);
        }
        if sock.throttled && server.wants_read(id) {
            self.resume.push(id);
        }
    }

    /// Reads `id` again (in `flush_dirty`) if it was throttled and the core
    /// wants to read it now.
    fn resume_if_throttled(&mut self, server: &Server, id: ConnId) {
        if self.map.get(&id).is_some_and(|s| s.throttled) && server.wants_read(id) {
            self.resume.push(id);
        }
    }

    fn close(&mut self, server: &mut Server, id: ConnId) {
        let Some(mut sock) = self.map.remove(&id) else {
            return;
        };
        server.poll_transmit(id, &mut sock.pending);
        // Best effort: the peer gets the closing bytes if its window has room.
        let _ = Self::write_pending(&mut sock);
        let _ = sock.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.registry.deregister(&mut sock.stream);
        log::debug!("conn {}: closed", id.0);
    }
}
