//! kontalkd-forwarder: the physical limit for the relay benchmarks.
//!
//! It listens like an XMPP server, answers the login handshake with canned
//! replies (stream header and features, real SCRAM-SHA-256/SHA-1 against one
//! password shared by every account, in-band registration that always
//! succeeds, resource binding, stream management's `<enable/>`) and then
//! stops parsing: every byte a session sends afterwards is copied as-is to
//! its partner's connection, the session
//! of account `PREFIX(n xor 1)` for account `PREFIXn` (b0 <-> b1, b2 <-> b3,
//! ...), which is exactly how `kontalkd-load` pairs senders and receivers.
//! Bytes of a session whose partner is not connected are dropped.
//!
//! The handshake runs on a thread per connection (blocking, simple); the
//! relaying runs on one mio event loop, the I/O model of kontalkd-mio: per
//! readable socket one `read` and one `write` to the partner, with the same
//! backpressure (a connection is not read while its partner has unwritten
//! bytes). What it leaves out is exactly the XMPP work: no XML is parsed,
//! nothing is routed or serialized.
//!
//! So `kontalkd-load relay` and `kontalkd-load latency` run unchanged against
//! it and measure what the loopback, the kernel and the generator itself can
//! do; a server can at best reach these figures.
//!
//! Usage: `kontalkd-forwarder [--listen 127.0.0.1:5299] [--domain localhost]
//! [--password benchpw]`

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kontalkd_benches::client::Reader;
use kontalkd_benches::partner;
use mio::{Events, Interest, Poll, Token, Waker};
use proto_core::sasl::scram::ServerBinding;
use proto_core::sasl::scram::DEFAULT_ITERATIONS;
use proto_core::sasl::{Credentials, ScramHash, ScramServer};
use proto_core::xml::{Element, StreamEvent};

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_CLIENT: &str = "jabber:client";
const NS_SM: &str = "urn:xmpp:sm:3";

/// A connection past its handshake: account, socket, bytes already read,
/// the handshake's last answer (written by the relay loop, so that the
/// client hears it only once its connection is there).
type Handoff = (String, TcpStream, Vec<u8>, Vec<u8>);

struct Shared {
    domain: String,
    credentials: Credentials,
    /// Hands connections over to the relay loop, and wakes it.
    handoff: mpsc::Sender<Handoff>,
    waker: Waker,
    next_id: AtomicU64,
}

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:5299".to_owned();
    let mut domain = "localhost".to_owned();
    let mut password = "benchpw".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let slot = match a.as_str() {
            "--listen" => &mut listen,
            "--domain" => &mut domain,
            "--password" => &mut password,
            _ => {
                eprintln!(
                    "usage: kontalkd-forwarder [--listen ADDR] [--domain NAME] [--password PW]"
                );
                return ExitCode::FAILURE;
            }
        };
        match args.next() {
            Some(v) => *slot = v,
            None => {
                eprintln!("{a} needs a value");
                return ExitCode::FAILURE;
            }
        }
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("--listen {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("--listen {addr}: loopback only");
        return ExitCode::FAILURE;
    }
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (handoff, rx) = mpsc::channel();
    let started = Poll::new().and_then(|poll| {
        let waker = Waker::new(poll.registry(), WAKER)?;
        thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                if let Err(e) = relay_loop(poll, rx) {
                    eprintln!("relay loop failed: {e}");
                    std::process::exit(1);
                }
            })
            .map(|_| waker)
    });
    let waker = match started {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start the relay loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        domain,
        credentials: Credentials::derive(&password, b"kontalkd-forwarder", DEFAULT_ITERATIONS),
        handoff,
        waker,
        next_id: AtomicU64::new(1),
    });
    eprintln!("kontalkd-forwarder: listening on {addr}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let id = shared.next_id.fetch_add(1, Relaxed);
                if let Err(e) = serve(&shared, conn, id) {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) {
                        eprintln!("connection {id}: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start a thread: {e}");
        }
    }
    ExitCode::SUCCESS
}

fn header(domain: &str, id: u64) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' id='fwd{id}' \
         version='1.0' xml:lang='en'>"
    )
}

fn serve(shared: &Shared, mut sock: TcpStream, id: u64) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let (user, leftover, answer) = handshake(shared, &mut sock, id)?;
    shared
        .handoff
        .send((user, sock, leftover, answer))
        .map_err(|_| io::Error::other("the relay loop is gone"))?;
    shared.waker.wake()
}

/// A connection past its handshake, in the relay loop.
struct Conn {
    sock: mio::net::TcpStream,
    user: String,
    /// The partner's connection, once looked up.
    partner: Option<Token>,
    /// Bytes for this connection that its socket did not take yet.
    out: Vec<u8>,
    /// The connection whose reading waits until `out` is written.
    blocked_reader: Option<Token>,
    /// Not read until its partner's `out` drains (backpressure).
    paused: bool,
}

/// The relay: one mio event loop (epoll, as kontalkd-mio), no parsing.
struct Relay {
    poll: Poll,
    conns: HashMap<Token, Conn>,
    by_user: HashMap<String, Token>,
    next: usize,
    buf: Vec<u8>,
}

const WAKER: Token = Token(0);

fn relay_loop(poll: Poll, rx: mpsc::Receiver<Handoff>) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    let mut relay = Relay {
        poll,
        conns: HashMap::new(),
        by_user: HashMap::new(),
        next: 1,
        buf: vec![0u8; 64 * 1024],
    };
    loop {
        if let Err(e) = relay.poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == WAKER {
                while let Ok((user, sock, first, answer)) = rx.try_recv() {
                    relay.add(user, sock, &first, answer)?;
                }
                continue;
            }
            if ev.is_writable() {
                relay.flush(t);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                relay.read(t);
            }
        }
    }
}

impl Relay {
    fn add(
        &mut self,
        user: String,
        sock: TcpStream,
        first: &[u8],
        answer: Vec<u8>,
    ) -> io::Result<()> {
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(sock);
        let t = Token(self.next);
        self.next += 1;
        self.poll
            .registry()
            .register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)?;
        self.by_user.insert(user.clone(), t);
        self.conns.insert(
            t,
            Conn {
                sock,
                user,
                partner: None,
                out: answer,
                blocked_reader: None,
                paused: false,
            },
        );
        self.flush(t);
        self.forward(t, first);
        self.read(t);
        Ok(())
    }

    fn read(&mut self, t: Token) {
        loop {
            let Some(c) = self.conns.get_mut(&t) else {
                return;
            };
            if c.paused {
                return;
            }
            match c.sock.read(&mut self.buf) {
                Ok(0) => return self.close(t),
                Ok(n) => {
                    let data = std::mem::take(&mut self.buf);
                    self.forward(t, &data[..n]);
                    self.buf = data;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(t),
            }
        }
    }

    /// Sends `data` from `from` to its partner; dropped when it has none.
    fn forward(&mut self, from: Token, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Some(c) = self.conns.get(&from) else {
            return;
        };
        let p = match c.partner.filter(|p| self.conns.contains_key(p)) {
            Some(p) => p,
            None => {
                let found = partner(&c.user).and_then(|name| self.by_user.get(&name).copied());
                match found {
                    Some(p) => {
                        self.conns.get_mut(&from).expect("present").partner = Some(p);
                        p
                    }
                    None => return,
                }
            }
        };
        let Some(pc) = self.conns.get_mut(&p) else {
            return;
        };
        let mut rest = data;
        if pc.out.is_empty() {
            loop {
                match pc.sock.write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        if rest.is_empty() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.close(p),
                }
            }
        }
        pc.out.extend_from_slice(rest);
        pc.blocked_reader = Some(from);
        let _ = self.poll.registry().reregister(
            &mut pc.sock,
            p,
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Some(fc) = self.conns.get_mut(&from) {
            fc.paused = true;
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(t),
            }
        }
        let _ = self
            .poll
            .registry()
            .reregister(&mut c.sock, t, Interest::READABLE);
        if let Some(r) = c.blocked_reader.take() {
            if let Some(rc) = self.conns.get_mut(&r) {
                rc.paused = false;
            }
            self.read(r);
        }
    }

    fn close(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.sock);
        let _ = c.sock.shutdown(Shutdown::Both);
        if self.by_user.get(&c.user) == Some(&t) {
            self.by_user.remove(&c.user);
        }
        if let Some(r) = c.blocked_reader {
            if let Some(rc) = self.conns.get_mut(&r) {
                rc.paused = false;
            }
            self.read(r);
        }
    }
}

/// Canned login: returns the account name and the bytes after the bind request.
fn handshake(
    shared: &Shared,
    sock: &mut TcpStream,
    id: u64,
) -> io::Result<(String, Vec<u8>, Vec<u8>)> {
    let domain = &shared.domain;
    let mut rd = Reader::new();
    expect_header(&mut rd, sock)?;
    let features = format!(
        "{}<stream:features><mechanisms xmlns='{NS_SASL}'><mechanism>SCRAM-SHA-256</mechanism>\
         <mechanism>SCRAM-SHA-1</mechanism></mechanisms>\
         <register xmlns='http://jabber.org/features/iq-register'/></stream:features>",
        header(domain, id)
    );
    sock.write_all(features.as_bytes())?;
    let user = loop {
        let el = rd.stanza(sock)?;
        if el.is(NS_CLIENT, "iq") {
            // In-band registration (or anything else): always succeeds.
            let reply = format!(
                "<iq type='result' id='{}'/>",
                el.attr("id").unwrap_or_default()
            );
            sock.write_all(reply.as_bytes())?;
            continue;
        }
        if !el.is(NS_SASL, "auth") {
            return Err(io::Error::other(format!("unexpected <{}/>", el.name)));
        }
        match scram(shared, sock, &mut rd, &el, id)? {
            Some(user) => break user,
            None => continue,
        }
    };
    let mut rd = Reader::new();
    expect_header(&mut rd, sock)?;
    let features = format!(
        "{}<stream:features><bind xmlns='{NS_BIND}'/><sm xmlns='{NS_SM}'/></stream:features>",
        header(domain, id)
    );
    sock.write_all(features.as_bytes())?;
    loop {
        let el = rd.stanza(sock)?;
        let bind = el.child(NS_BIND, "bind");
        if !el.is(NS_CLIENT, "iq") || bind.is_none() {
            continue;
        }
        let resource = bind
            .and_then(|b| b.child(NS_BIND, "resource"))
            .map(|r| r.text())
            .unwrap_or_else(|| format!("fwd{id}"));
        let reply = format!(
            "<iq type='result' id='{}'><bind xmlns='{NS_BIND}'><jid>{user}@{domain}/{resource}</jid></bind></iq>",
            el.attr("id").unwrap_or_default()
        );
        // Stream management (XEP-0198): `<enable/>` right after binding is
        // answered (by the relay loop, once the connection is there); past
        // that `<r/>` and `<a/>` are bytes like any other, so a client's
        // requests reach its partner, whose answers count what it received:
        // the relay scenario with stream management runs unchanged. Every
        // client of the generator sends something after binding (presence,
        // `<enable/>` or the end of its stream).
        let mut answer = reply.into_bytes();
        sock.write_all(&answer)?;
        answer.clear();
        let next = rd.stanza(sock)?;
        let mut first = Vec::new();
        if next.is(NS_SM, "enable") {
            answer.extend_from_slice(format!("<enabled xmlns='{NS_SM}'/>").as_bytes());
        } else {
            first = next.to_xml(NS_CLIENT).into_bytes();
        }
        first.extend_from_slice(rd.leftover());
        return Ok((user, first, answer));
    }
}

fn expect_header(rd: &mut Reader, sock: &mut TcpStream) -> io::Result<()> {
    match rd.next(sock)? {
        StreamEvent::Header(_) => Ok(()),
        other => Err(io::Error::other(format!(
            "expected a stream header, got {other:?}"
        ))),
    }
}

/// One SCRAM exchange; `Some(user)` once `<success/>` is sent, `None` after
/// a `<failure/>` (the client may try again).
fn scram(
    shared: &Shared,
    sock: &mut TcpStream,
    rd: &mut Reader,
    auth: &Element,
    id: u64,
) -> io::Result<Option<String>> {
    let hash = match auth.attr("mechanism") {
        Some("SCRAM-SHA-256") => ScramHash::Sha256,
        Some("SCRAM-SHA-1") => ScramHash::Sha1,
        _ => return failure(sock, "invalid-mechanism"),
    };
    let mut server = ScramServer::new(hash, ServerBinding::Unsupported);
    let first = B64.decode(auth.text().trim()).unwrap_or_default();
    let Ok(user) = server.client_first(&first) else {
        return failure(sock, "malformed-request");
    };
    let nonce = format!("fwd{id}x{}", shared.next_id.fetch_add(1, Relaxed));
    let Ok(challenge) = server.server_first(Some(shared.credentials.keys(hash)), &nonce, b"")
    else {
        return failure(sock, "malformed-request");
    };
    let challenge = format!(
        "<challenge xmlns='{NS_SASL}'>{}</challenge>",
        B64.encode(challenge)
    );
    sock.write_all(challenge.as_bytes())?;
    let resp = rd.stanza(sock)?;
    if !resp.is(NS_SASL, "response") {
        return failure(sock, "malformed-request");
    }
    let fin = B64.decode(resp.text().trim()).unwrap_or_default();
    match server.client_final(&fin) {
        Ok(server_final) => {
            // The success carries the server signature (RFC 6120 6.3.10).
            let success = format!(
                "<success xmlns='{NS_SASL}'>{}</success>",
                B64.encode(server_final)
            );
            sock.write_all(success.as_bytes())?;
            Ok(Some(user))
        }
        Err(_) => failure(sock, "not-authorized"),
    }
}

fn failure(sock: &mut TcpStream, condition: &str) -> io::Result<Option<String>> {
    let f = format!("<failure xmlns='{NS_SASL}'><{condition}/></failure>");
    sock.write_all(f.as_bytes())?;
    Ok(None)
}
