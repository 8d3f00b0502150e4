//! runtime-smol: drives the kontalkd protocol core (`proto-core`) with smol.
//!
//! It uses the parts of smol 2 that a server needs: the async-io reactor
//! (sockets and timers), an async-executor for the connection tasks,
//! async-channel between them and async-signal for SIGINT/SIGTERM (shutdown) and SIGHUP (reload); smol's
//! file, process and blocking-pool parts are left out. Like runtime-mio it
//! moves bytes and fires timers and knows nothing about XMPP; what every
//! runtime does around the core (start-up, draining the core's events with
//! batched storage, timers and wall clock) is
//! [`kontalkd_host::runtime::Core`].
//!
//! # Embedding
//!
//! [`run_server`] is a future that serves until SIGINT/SIGTERM, and
//! [`run_server_until`] one that serves until a future of yours resolves. Both
//! are `Send`, so a smol application can `smol::spawn` them, or run them with
//! `smol::block_on` as [`run`] does:
//!
//! ```no_run
//! let config = kontalkd_host::load_config(Some("kontalkd.toml".as_ref()))
//!     .map_err(|errors| errors.to_string())?;
//! let (stop, stopped) = async_channel::bounded::<()>(1);
//! // ... hand `stop` to whatever decides that the server ends, then:
//! async_io::block_on(runtime_smol::run_server_until(config, async move {
//!     let _ = stopped.recv().await;
//! }))?;
//! # drop(stop);
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! ```
//!
//! The store (SQLite, `synchronous=FULL`) runs on the task that owns the
//! core, so a commit blocks the thread that polls the future for the length
//! of an fsync; an application with latency-sensitive tasks of its own gives
//! kontalkd a thread (`std::thread::spawn(|| runtime_smol::run(config))`).
//!
//! # Shape
//!
//! One task owns the core ([`proto_core::Server`], through
//! [`Core`]) and the store; nothing else touches them. Each connection has
//! one task, which the owner steers with a bounded channel:
//!
//! - it reads once per permission from the owner and sends what it read to
//!   the owner, which hands it to the core and gives the next permission
//!   unless [`proto_core::Server::wants_read`] says no (backpressure: the
//!   permission waits until the connection's output drained). It reads into
//!   the thread's one read buffer and sends only the bytes read, so an idle
//!   connection holds no read buffer;
//! - at the same time it writes one buffer at a time, taken from the core
//!   with `poll_transmit` when the previous one is written, and gives each
//!   buffer back for the next output; on close it writes what is left (best
//!   effort, for at most [`CLOSE_LINGER`]) and shuts the socket down.
//!
//! Reads and writes are single non-blocking system calls made when the
//! socket is ready, so either can be interrupted by the other without
//! losing bytes.
//!
//! The owner never waits on a task: what it sends fits in the channels by
//! construction, so the tasks' bounded channel to the owner cannot deadlock.
//!
//! The admin socket and the metrics endpoint: one task per control
//! connection reads its request ([`kontalkd_host::control::Request`]),
//! sends it to the owner with a channel for the answer
//! ([`Core::control`]), writes the answer and closes, all within
//! [`kontalkd_host::control::REQUEST_TIMEOUT`].

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_executor::{Executor, Task};
use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use std::io::{Read, Write};

use futures_lite::{future, stream, AsyncReadExt, AsyncWriteExt, Stream, StreamExt};
use kontalkd_host::control::{self, Plane, Request};
use kontalkd_host::runtime::{Core, Output};
use kontalkd_host::FileConfig;
use proto_core::{ConnId, IdMap, Listener, Server};

/// The error of a server that could not start or was stopped twice.
pub use kontalkd_host::runtime::Error;

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// The largest written buffer kept for the next output.
const SPARE_MAX: usize = 4 * 1024;
/// Messages from the tasks that may wait for the owner of the core.
const INBOX: usize = 1024;
/// How long a closed connection's last bytes may take to be written.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the server on the current thread until SIGINT or SIGTERM:
/// `smol::block_on(run_server(config))`.
pub fn run(config: FileConfig) -> Result<(), Error> {
    async_io::block_on(run_server(config))
}

/// Serves `config` (reloading it on SIGHUP) until SIGINT or SIGTERM, then closes every stream with
/// `system-shutdown` and returns once all connections are closed. A second
/// signal during that returns at once, with an error.
pub async fn run_server(config: FileConfig) -> Result<(), Error> {
    let signals = Signals::new([Signal::Int, Signal::Term, Signal::Hup])?;
    let controls = signals.filter_map(|signal| signal.ok()).map(|signal| {
        let why = format!("signal {}", signal as i32);
        match signal {
            Signal::Hup => Control::Reload(why),
            _ => Control::Stop(why),
        }
    });
    serve(config, controls).await
}

/// Serves `config` until `shutdown` resolves, then shuts down as
/// [`run_server`] does on a signal.
pub async fn run_server_until(
    config: FileConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let stops =
        stream::once_future(shutdown).map(|()| Control::Stop("shutdown requested".to_owned()));
    serve(config, stops).await
}

/// What comes from outside the connections: signals, a shutdown request.
enum Control {
    /// Shut down (why).
    Stop(String),
    /// Read the configuration again (why).
    Reload(String),
}

/// What the tasks tell the owner of the core.
enum Input {
    Accepted(Listener, Async<TcpStream>, SocketAddr),
    /// Bytes read.
    Data(ConnId, Vec<u8>),
    /// The peer closed the connection, or reading failed.
    Eof(ConnId),
    /// A buffer was written and is given back, empty.
    Written(ConnId, Vec<u8>),
    WriteFailed(ConnId),
    /// A signal or a shutdown request.
    Control(Control),
    /// A control connection (admin socket, metrics) was accepted.
    ControlAccepted(Plane, CtlStream),
    /// A control connection's request, and where its answer goes.
    Request(Request, Sender<Vec<u8>>),
    /// A thread of the host has something for the core (see
    /// `Core::set_wake`): taken by `handle_timers`.
    Wake,
    /// A Net link's connection attempt to this address ended.
    Connected(ConnId, SocketAddr, Result<Async<TcpStream>, String>),
}

/// What the owner tells a connection's task.
enum Ctl {
    /// Read once more.
    Read,
    /// Write this buffer (no other is being written).
    Write(Vec<u8>),
    /// Write these last bytes after any being written, then shut the socket
    /// down.
    Close(Vec<u8>),
}

/// Control messages that can be in flight at once: a permission to read,
/// a buffer to write, the close.
const CTL_BOUND: usize = 3;

/// The owner's view of one connection.
struct Conn {
    ctl: Sender<Ctl>,
    /// The permission to read is held back while the core does not want to
    /// read.
    parked: bool,
    /// A buffer is being written.
    writing: bool,
    /// The core has more output, to be taken once the write is done.
    want_transmit: bool,
    /// The last written buffer, for the next output.
    spare: Vec<u8>,
    task: Task<()>,
}

async fn serve(
    config: FileConfig,
    controls: impl Stream<Item = Control> + Send + 'static,
) -> Result<(), Error> {
    let mut core = Core::start(&config)?;
    let admin = Async::new(core.bind_control()?)?;
    let metrics = core.bind_metrics()?.map(Async::new).transpose()?;
    let listeners = Core::bind_listeners(&config)?
        .into_iter()
        .map(|(l, kind)| Async::new(l).map(|l| (l, kind)))
        .collect::<Result<Vec<_>, _>>()?;
    let ex = Executor::new();
    let (to_owner, inbox) = async_channel::bounded(INBOX);
    let waker = to_owner.clone();
    // A full inbox needs no wake: the loop goes round anyway.
    core.set_wake(std::sync::Arc::new(move || {
        let _ = waker.try_send(Input::Wake);
    }));
    let mut acceptors: Vec<Task<()>> = listeners
        .into_iter()
        .map(|(l, kind)| ex.spawn(accept_loop(l, kind, to_owner.clone())))
        .collect();
    acceptors.push(ex.spawn(admin_accept_loop(admin, to_owner.clone())));
    if let Some(metrics) = metrics {
        acceptors.push(ex.spawn(metrics_accept_loop(metrics, to_owner.clone())));
    }
    let stop = to_owner.clone();
    ex.spawn(async move {
        let mut controls = std::pin::pin!(controls);
        while let Some(control) = controls.next().await {
            if stop.send(Input::Control(control)).await.is_err() {
                return;
            }
        }
    })
    .detach();
    let owner = Owner {
        ex: &ex,
        core,
        to_owner,
        conns: IdMap::default(),
        acceptors,
        closing: Vec::new(),
        controls: Vec::new(),
        stopping: false,
    };
    ex.run(owner.run(inbox)).await
}

struct Owner<'ex> {
    ex: &'ex Executor<'static>,
    core: Core,
    to_owner: Sender<Input>,
    conns: IdMap<ConnId, Conn>,
    /// The accept loops; dropped (cancelled, listeners closed) on shutdown.
    acceptors: Vec<Task<()>>,
    /// Writers of closed connections, writing their last bytes.
    closing: Vec<Task<()>>,
    /// The control connections' tasks.
    controls: Vec<Task<()>>,
    stopping: bool,
}

impl Owner<'_> {
    async fn run(mut self, inbox: Receiver<Input>) -> Result<(), Error> {
        let mut timer = Timer::never();
        let mut armed = None;
        log::info!("ready");
        while !(self.stopping && self.conns.is_empty()) {
            let at = self.core.poll_timeout();
            if armed != Some(at) {
                timer.set_at(at);
                armed = Some(at);
            }
            let input = future::or(async { inbox.recv().await.ok() }, async {
                (&mut timer).await;
                None
            })
            .await;
            let now = Instant::now();
            match input {
                Some(input) => self.handle(now, input)?,
                // The timer fired: arm it again.
                None => armed = None,
            }
            self.core.handle_timers(now);
            // What the inputs ask of the store runs once none is waiting:
            // one transaction (one sync to disk) for all of them.
            self.drain_store(now, inbox.is_empty());
        }
        log::info!("all connections closed, bye");
        // The last bytes of closed connections, for CLOSE_LINGER at most.
        drop(inbox);
        for task in self.closing {
            task.await;
        }
        Ok(())
    }

    fn handle(&mut self, now: Instant, input: Input) -> Result<(), Error> {
        match input {
            Input::Accepted(kind, stream, addr) => {
                if !self.stopping {
                    self.accept(now, kind, stream, addr);
                }
            }
            Input::Data(id, buf) => {
                if self.conns.contains_key(&id) {
                    self.core.server.handle_data(now, id, &buf);
                    // Let the core's output reach the sockets before reading on.
                    self.drain_store(now, false);
                    drop(buf);
                    self.read_again(id);
                }
            }
            Input::Eof(id) | Input::WriteFailed(id) => {
                if self.conns.contains_key(&id) {
                    self.core.server.handle_eof(now, id);
                }
            }
            Input::Written(id, buf) => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                conn.writing = false;
                // Keep a small buffer for the next output; give a burst's back.
                if buf.capacity() <= SPARE_MAX {
                    conn.spare = buf;
                }
                if conn.want_transmit {
                    conn.want_transmit = false;
                    transmit(&mut self.conns, &mut self.core.server, id);
                }
                if self
                    .conns
                    .get_mut(&id)
                    .is_some_and(|c| std::mem::take(&mut c.parked))
                {
                    self.read_again(id);
                }
            }
            Input::ControlAccepted(plane, stream) => {
                self.controls.retain(|t| !t.is_finished());
                if self.controls.len() >= control::MAX_CONNECTIONS {
                    log::warn!("too many control connections: closing one");
                } else {
                    let conn = control_conn(stream, plane, self.to_owner.clone());
                    self.controls.push(self.ex.spawn(async move {
                        let timeout = async {
                            Timer::after(control::REQUEST_TIMEOUT).await;
                        };
                        future::or(conn, timeout).await;
                    }));
                }
            }
            Input::Request(request, reply) => {
                let answer = self.core.control(now, &request);
                // Bounded(1) and fresh: the owner never waits.
                let _ = reply.try_send(answer);
            }
            Input::Wake => {}
            Input::Connected(id, addr, result) => match result {
                Ok(stream) if !self.stopping && self.core.server.has_connection(id) => {
                    let _ = stream.get_ref().set_nodelay(true);
                    log::debug!("conn {}: connected to {addr}", id.0);
                    self.adopt(id, stream);
                    self.core.server.handle_connected(now, id, addr.ip());
                }
                // The core gave up on the link meanwhile: the socket closes.
                Ok(_) => {}
                Err(e) => self
                    .core
                    .server
                    .handle_connect_failed(now, id, &format!("{addr}: {e}")),
            },
            Input::Control(Control::Reload(why)) => {
                if !self.stopping {
                    log::info!("{why}: reloading");
                    self.core.reload();
                }
            }
            Input::Control(Control::Stop(why)) => {
                if self.stopping {
                    log::warn!("{why} during the shutdown: exiting now");
                    return Err(format!("{why} during the shutdown").into());
                }
                log::info!("{why}: shutting down");
                self.stopping = true;
                self.acceptors.clear();
                self.core.server.handle_shutdown(now);
            }
        }
        Ok(())
    }

    fn accept(&mut self, now: Instant, kind: Listener, stream: Async<TcpStream>, addr: SocketAddr) {
        let _ = stream.get_ref().set_nodelay(true);
        let id = self.core.server.handle_accept(now, kind, addr.ip());
        log::debug!("conn {}: accepted from {addr} ({kind:?})", id.0);
        self.adopt(id, stream);
    }

    /// Gives a connection its task, reading at once.
    fn adopt(&mut self, id: ConnId, stream: Async<TcpStream>) {
        // The owner never waits: what it sends fits by construction.
        let (ctl, orders) = async_channel::bounded(CTL_BOUND);
        let _ = ctl.try_send(Ctl::Read);
        let task = self
            .ex
            .spawn(conn_loop(id, stream, orders, self.to_owner.clone()));
        self.conns.insert(
            id,
            Conn {
                ctl,
                parked: false,
                writing: false,
                want_transmit: false,
                spare: Vec::new(),
                task,
            },
        );
    }

    /// Lets the connection's task read again, or parks the permission while the
    /// connection's output is over budget.
    fn read_again(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if self.core.server.wants_read(id) {
            let _ = conn.ctl.try_send(Ctl::Read);
        } else {
            conn.parked = true;
        }
    }

    /// Drains the core, running the storage requests now (`store`) or
    /// leaving them for the next drain that does (see
    /// [`Core::drain_deferring_store`]).
    fn drain_store(&mut self, now: Instant, store: bool) {
        let conns = &mut self.conns;
        let closing = &mut self.closing;
        let ex = self.ex;
        let to_owner = &self.to_owner;
        let output = |server: &mut Server, out: Output| match out {
            Output::Connect(id, addr) => {
                let owner = to_owner.clone();
                ex.spawn(async move {
                    let result = Async::<TcpStream>::connect(addr)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = owner.send(Input::Connected(id, addr, result)).await;
                })
                .detach();
            }
            Output::Transmit(id) => transmit(conns, server, id),
            Output::Resume(id) => {
                if let Some(conn) = conns.get_mut(&id) {
                    if conn.parked && server.wants_read(id) {
                        conn.parked = false;
                        let _ = conn.ctl.try_send(Ctl::Read);
                    }
                }
            }
            Output::Close(id) => {
                let Some(conn) = conns.remove(&id) else {
                    return;
                };
                let mut rest = Vec::new();
                server.poll_transmit(id, &mut rest);
                let _ = conn.ctl.try_send(Ctl::Close(rest));
                // Best effort: a peer that does not read gets CLOSE_LINGER, then
                // the task is cancelled and the socket closed.
                let task = conn.task;
                closing.retain(|t| !t.is_finished());
                closing.push(ex.spawn(future::or(task, async {
                    Timer::after(CLOSE_LINGER).await;
                })));
                log::debug!("conn {}: closed", id.0);
            }
        };
        if store {
            self.core.drain(now, output);
        } else {
            self.core.drain_deferring_store(now, output);
        }
    }
}

/// Hands the core's output for `id` to its task, unless a write is under way.
fn transmit(conns: &mut IdMap<ConnId, Conn>, server: &mut Server, id: ConnId) {
    let Some(conn) = conns.get_mut(&id) else {
        // Closed already: discard.
        server.poll_transmit(id, &mut Vec::new());
        return;
    };
    if conn.writing {
        // Take more from the core only once the socket caught up.
        conn.want_transmit = true;
        return;
    }
    let mut buf = std::mem::take(&mut conn.spare);
    server.poll_transmit(id, &mut buf);
    if buf.is_empty() {
        conn.spare = buf;
        return;
    }
    conn.writing = true;
    let _ = conn.ctl.try_send(Ctl::Write(buf));
}

async fn accept_loop(listener: Async<TcpListener>, kind: Listener, owner: Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if owner
                    .send(Input::Accepted(kind, stream, addr))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                log::warn!("accept failed: {e}");
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A control connection's socket.
enum CtlStream {
    Unix(Async<UnixStream>),
    Tcp(Async<TcpStream>),
}

async fn admin_accept_loop(listener: Async<UnixListener>, owner: Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let input = Input::ControlAccepted(Plane::Admin, CtlStream::Unix(stream));
                if owner.send(input).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("admin socket: accept failed: {e}");
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn metrics_accept_loop(listener: Async<TcpListener>, owner: Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let input = Input::ControlAccepted(Plane::Metrics, CtlStream::Tcp(stream));
                if owner.send(input).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One control connection: the request, the owner's answer, written.
async fn control_conn(stream: CtlStream, plane: Plane, owner: Sender<Input>) {
    match stream {
        CtlStream::Unix(s) => control_exchange(s, plane, owner).await,
        CtlStream::Tcp(s) => control_exchange(s, plane, owner).await,
    }
}

async fn control_exchange<S>(mut stream: Async<S>, plane: Plane, owner: Sender<Input>)
where
    Async<S>: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let mut request = Request::new(plane, Instant::now());
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if request.feed(&buf[..n]) {
                    break;
                }
            }
            Err(_) => return,
        }
    }
    let (reply, answer) = async_channel::bounded(1);
    if owner.send(Input::Request(request, reply)).await.is_err() {
        return;
    }
    if let Ok(answer) = answer.recv().await {
        let _ = stream.write_all(&answer).await;
        let _ = stream.flush().await;
    }
}

thread_local! {
    /// The buffer every connection task on this thread reads into; what was
    /// read is copied out at its length.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// What a connection's task waits for.
enum Step {
    Ctl(Option<Ctl>),
    Read(std::io::Result<Vec<u8>>),
    Wrote(std::io::Result<usize>),
}

/// One connection: reads when permitted, writes what it is given (see the
/// crate documentation).
async fn conn_loop(
    id: ConnId,
    stream: Async<TcpStream>,
    orders: Receiver<Ctl>,
    owner: Sender<Input>,
) {
    let mut may_read = false;
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut closing = false;
    loop {
        let step = {
            let ctl = async { Step::Ctl(orders.recv().await.ok()) };
            let read = async {
                if !may_read || closing {
                    return future::pending().await;
                }
                // The read buffer is the thread's: it is not part of the
                // task's state while the connection is idle.
                Step::Read(
                    stream
                        .read_with(|s| {
                            READ_BUF.with_borrow_mut(|buf| match (&*s).read(buf) {
                                Ok(n) => Ok(buf[..n].to_vec()),
                                Err(e) => Err(retry_interrupted(e)),
                            })
                        })
                        .await,
                )
            };
            let write = async {
                if written == out.len() {
                    return future::pending().await;
                }
                Step::Wrote(
                    stream
                        .write_with(|s| (&*s).write(&out[written..]).map_err(retry_interrupted))
                        .await,
                )
            };
            future::or(write, future::or(read, ctl)).await
        };
        match step {
            // The owner is gone.
            Step::Ctl(None) => return,
            Step::Ctl(Some(Ctl::Read)) => may_read = true,
            Step::Ctl(Some(Ctl::Write(buf))) => {
                out = buf;
                written = 0;
            }
            Step::Ctl(Some(Ctl::Close(rest))) => {
                out.extend_from_slice(&rest);
                closing = true;
            }
            Step::Read(result) => {
                may_read = false;
                let input = match result {
                    Ok(data) if !data.is_empty() => Input::Data(id, data),
                    Ok(_) => Input::Eof(id),
                    Err(e) => {
                        log::debug!("conn {}: read failed: {e}", id.0);
                        Input::Eof(id)
                    }
                };
                if owner.send(input).await.is_err() {
                    return;
                }
            }
            Step::Wrote(Ok(0)) | Step::Wrote(Err(_)) if !closing => {
                log::debug!("conn {}: write failed", id.0);
                let _ = owner.send(Input::WriteFailed(id)).await;
                return;
            }
            Step::Wrote(Ok(n)) if n > 0 => {
                written += n;
                if written == out.len() && !closing {
                    out.clear();
                    written = 0;
                    let buf = std::mem::take(&mut out);
                    if owner.send(Input::Written(id, buf)).await.is_err() {
                        return;
                    }
                }
            }
            // Closing and the write failed: nothing more to do.
            Step::Wrote(_) => written = out.len(),
        }
        if closing && written == out.len() {
            let _ = stream.get_ref().shutdown(Shutdown::Both);
            return;
        }
    }
}

/// An interrupted system call is retried once the socket is ready (at once
/// if it is).
fn retry_interrupted(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::Interrupted {
        std::io::ErrorKind::WouldBlock.into()
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smol application can `smol::spawn` the server.
    #[test]
    fn the_server_futures_are_send() {
        fn is_send<T: Send + 'static>(_: &T) {}
        is_send(&run_server(FileConfig::default()));
        is_send(&run_server_until(FileConfig::default(), async {}));
    }
}
