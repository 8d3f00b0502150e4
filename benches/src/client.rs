//! A minimal, blocking XMPP client (RFC 6120): stream header, STARTTLS,
//! SASL SCRAM or EXTERNAL (with a client certificate), resource binding,
//! initial presence, and in-band registration (XEP-0077). Standard XMPP
//! only: it works against any server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto_core::sasl::ScramHash;
use proto_core::xml::{Element, StreamEvent, StreamParser};
use proto_core::Limits;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::scram::{SaltCache, Scram};

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_CLIENT: &str = "jabber:client";
const NS_REGISTER: &str = "jabber:iq:register";
const NS_SM: &str = "urn:xmpp:sm:3";

/// The closing tag a client sends before it hangs up.
pub const STREAM_END: &[u8] = b"</stream:stream>";

/// A plain or TLS client connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS after STARTTLS.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Sends `</stream:stream>` (and a TLS close_notify) and drops the connection.
    pub fn close(mut self) {
        let _ = self.write_all(STREAM_END);
        if let Stream::Tls(s) = &mut self {
            s.conn.send_close_notify();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut s.sock).is_err() {
                    break;
                }
            }
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Generous limits for what servers send us.
fn client_limits() -> Limits {
    Limits {
        max_stanza_size: 1 << 20,
        max_depth: 100,
        max_attributes: 100,
        ..Limits::default()
    }
}

/// Reads stream events from a connection with proto-core's stream parser.
pub struct Reader {
    parser: StreamParser,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

impl Reader {
    /// A reader for a new stream (a restart needs a new one).
    pub fn new() -> Reader {
        Reader {
            parser: StreamParser::new(&client_limits()),
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// A reader for the stream of a logged-in [`Session`]: its parser
    /// past a stream header, then `leftover` (what the login read beyond
    /// the bind result).
    pub fn in_session(leftover: &[u8]) -> io::Result<Reader> {
        const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
        let mut r = Reader::new();
        r.buf = [HEADER, leftover].concat();
        r.buf.resize(r.buf.len().max(16 * 1024), 0);
        r.end = HEADER.len() + leftover.len();
        match r.next(&mut io::empty())? {
            StreamEvent::Header(_) => Ok(r),
            other => Err(io::Error::other(format!("not a header: {other:?}"))),
        }
    }

    /// Bytes read from the socket that the parser has not looked at yet.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next stream event; an error when the stream ends or breaks.
    pub fn next(&mut self, s: &mut impl Read) -> io::Result<StreamEvent> {
        loop {
            if self.start < self.end {
                let mut input = &self.buf[self.start..self.end];
                let res = self.parser.next(&mut input);
                self.start = self.end - input.len();
                match res {
                    Ok(Some(ev)) => return Ok(ev),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::other(format!("bad XML from server: {e:?}"))),
                }
            }
            let n = s.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                ));
            }
            self.start = 0;
            self.end = n;
        }
    }

    /// The next top-level element; a stream error or end is an error.
    pub fn stanza(&mut self, s: &mut impl Read) -> io::Result<Element> {
        match self.next(s)? {
            StreamEvent::Stanza(el) if el.is(NS_STREAM, "error") => Err(io::Error::other(format!(
                "stream error: {}",
                el.elements()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Header(_) => Err(io::Error::other("unexpected stream header")),
            StreamEvent::End => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the stream",
            )),
        }
    }

    /// The stream header and then the features.
    pub fn features(&mut self, s: &mut impl Read) -> io::Result<Element> {
        match self.next(s)? {
            StreamEvent::Header(_) => {}
            other => {
                return Err(io::Error::other(format!(
                    "expected a stream header, got {other:?}"
                )))
            }
        }
        let el = self.stanza(s)?;
        if !el.is(NS_STREAM, "features") {
            return Err(io::Error::other(format!(
                "expected stream features, got <{}/>",
                el.name
            )));
        }
        Ok(el)
    }

    /// Skips stanzas until an `<iq/>` with this id; an error reply is an error.
    pub fn iq_result(&mut self, s: &mut impl Read, id: &str) -> io::Result<Element> {
        loop {
            let el = self.stanza(s)?;
            if el.is(NS_CLIENT, "iq") && el.attr("id") == Some(id) {
                if el.attr("type") == Some("result") {
                    return Ok(el);
                }
                return Err(io::Error::other(format!(
                    "iq {id} failed: {}",
                    describe_error(&el)
                )));
            }
        }
    }
}

/// The condition of an error stanza, for messages.
pub fn describe_error(el: &Element) -> String {
    el.elements()
        .find(|e| e.name == "error")
        .map(|e| {
            e.elements()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "unknown error".into())
}

/// Where and how to log in.
#[derive(Clone)]
pub struct Target {
    /// Server address (loopback).
    pub addr: SocketAddr,
    /// The XMPP domain (`to` of the stream header).
    pub domain: String,
    /// Timeout of every connect, read and write during set-up.
    pub timeout: Duration,
    /// The TLS client configuration for STARTTLS.
    pub tls: Arc<ClientConfig>,
    /// SCRAM-SHA-256 or SCRAM-SHA-1.
    pub hash: ScramHash,
}

impl Target {
    fn connect(&self) -> io::Result<TcpStream> {
        let tcp = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        Ok(tcp)
    }

    fn header(&self) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            self.domain
        )
    }
}

/// A logged-in session.
pub struct Session {
    /// The connection.
    pub stream: Stream,
    /// The full JID the server bound.
    pub jid: String,
    /// Bytes already read after the bind result (to be looked at first).
    pub leftover: Vec<u8>,
}

/// How to authenticate.
#[derive(Clone, Debug)]
pub enum Sasl<'a> {
    /// SCRAM with the target's hash.
    Scram {
        /// Account name (local part).
        user: &'a str,
        /// Its password.
        password: &'a str,
        /// Client nonce (unique per login).
        nonce: &'a str,
    },
    /// EXTERNAL (RFC 4422 appendix A, no authorization identity: the
    /// certificate says who logs in) with the client certificate of this TLS
    /// configuration: the stream always goes through STARTTLS with it.
    External(&'a Arc<ClientConfig>),
}

/// How to log in.
#[derive(Clone, Debug)]
pub struct Login<'a> {
    /// The mechanism and what it needs.
    pub sasl: Sasl<'a>,
    /// Resource to bind.
    pub resource: &'a str,
    /// STARTTLS before authenticating (always with [`Sasl::External`]).
    pub starttls: bool,
    /// Send initial presence after binding.
    pub presence: bool,
    /// Enable stream management (XEP-0198, `urn:xmpp:sm:3`, no resumption)
    /// after binding and wait for `<enabled/>`, before the presence: the
    /// server's `h` and ours then count every stanza after it.
    pub sm: bool,
}

fn proto_err(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A stream before authentication: the connection, its reader and the
/// latest features.
pub struct Opened {
    /// The connection (TLS after STARTTLS).
    pub stream: Stream,
    /// The reader of the current stream.
    pub reader: Reader,
    /// The features the server offered last.
    pub features: Element,
}

/// Connects and opens a stream, and with `tls` goes through STARTTLS with
/// that configuration (and opens the stream again).
pub fn open(target: &Target, tls: Option<&Arc<ClientConfig>>) -> io::Result<Opened> {
    let tcp = target.connect()?;
    let mut stream = Stream::Plain(tcp);
    let header = target.header();
    stream.write_all(header.as_bytes())?;
    let mut reader = Reader::new();
    let mut features = reader.features(&mut stream)?;
    if let Some(tls) = tls {
        if features.child(NS_TLS, "starttls").is_none() {
            return Err(proto_err("the server does not offer STARTTLS".into()));
        }
        stream.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")?;
        let el = reader.stanza(&mut stream)?;
        if !el.is(NS_TLS, "proceed") {
            return Err(proto_err(format!("STARTTLS refused: <{}/>", el.name)));
        }
        let Stream::Plain(tcp) = stream else {
            unreachable!("STARTTLS on a plain stream")
        };
        let name = ServerName::try_from(target.domain.clone())
            .map_err(|e| proto_err(format!("bad server name: {e}")))?;
        let conn = ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
        stream = Stream::Tls(Box::new(StreamOwned::new(conn, tcp)));
        stream.write_all(header.as_bytes())?;
        reader = Reader::new();
        features = reader.features(&mut stream)?;
    }
    Ok(Opened {
        stream,
        reader,
        features,
    })
}

/// The SASL mechanisms in a features element.
fn mechanisms(features: &Element) -> Vec<String> {
    features
        .child(NS_SASL, "mechanisms")
        .map(|m| m.elements().map(|e| e.text()).collect())
        .unwrap_or_default()
}

/// Connects, authenticates and binds a resource.
pub fn login(target: &Target, how: &Login<'_>, cache: &SaltCache) -> io::Result<Session> {
    let tls = match how.sasl {
        Sasl::External(tls) => Some(tls),
        Sasl::Scram { .. } => how.starttls.then_some(&target.tls),
    };
    let Opened {
        mut stream,
        reader: mut rd,
        features,
    } = open(target, tls)?;
    let offered = mechanisms(&features);
    match how.sasl {
        Sasl::Scram {
            user,
            password,
            nonce,
        } => scram(
            target,
            &mut stream,
            &mut rd,
            &offered,
            (user, password, nonce),
            cache,
        )?,
        Sasl::External(_) => external(&mut stream, &mut rd, &offered)?,
    }
    let header = target.header();
    stream.write_all(header.as_bytes())?;
    rd = Reader::new();
    let features = rd.features(&mut stream)?;
    let bind = format!(
        "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        how.resource
    );
    stream.write_all(bind.as_bytes())?;
    let res = rd.iq_result(&mut stream, "bind1")?;
    let jid = res
        .child(NS_BIND, "bind")
        .and_then(|b| b.child(NS_BIND, "jid"))
        .map(|j| j.text())
        .ok_or_else(|| proto_err("bind result without jid".into()))?;
    // RFC 3921 sessions: only when the server says they are not optional.
    if let Some(s) = features.child(NS_SESSION, "session") {
        if s.child(NS_SESSION, "optional").is_none() {
            stream.write_all(
                b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            )?;
            rd.iq_result(&mut stream, "sess1")?;
        }
    }
    if how.sm {
        if features.child(NS_SM, "sm").is_none() {
            return Err(proto_err(
                "the server does not offer stream management (urn:xmpp:sm:3)".into(),
            ));
        }
        stream.write_all(b"<enable xmlns='urn:xmpp:sm:3'/>")?;
        loop {
            let el = rd.stanza(&mut stream)?;
            if el.is(NS_SM, "enabled") {
                break;
            }
            if el.is(NS_SM, "failed") {
                return Err(proto_err(format!(
                    "stream management refused: {}",
                    el.elements()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    if how.presence {
        stream.write_all(b"<presence/>")?;
    }
    Ok(Session {
        stream,
        jid,
        leftover: rd.leftover().to_vec(),
    })
}

/// SCRAM (RFC 5802) with the target's hash; the server's signature is checked.
fn scram(
    target: &Target,
    stream: &mut Stream,
    rd: &mut Reader,
    offered: &[String],
    (user, password, nonce): (&str, &str, &str),
    cache: &SaltCache,
) -> io::Result<()> {
    let mut scram = Scram::new(target.hash, user, password, nonce);
    if !offered.iter().any(|m| m == scram.mechanism()) {
        return Err(proto_err(format!(
            "the server does not offer {} (it offers {offered:?})",
            scram.mechanism()
        )));
    }
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
        scram.mechanism(),
        B64.encode(scram.client_first())
    );
    stream.write_all(auth.as_bytes())?;
    let mut verified = false;
    loop {
        let el = rd.stanza(stream)?;
        let data = B64
            .decode(el.text().trim())
            .map_err(|_| proto_err("bad base64 from server".into()))?;
        if el.is(NS_SASL, "challenge") {
            if data.starts_with(b"v=") {
                scram.verify_server_final(&data).map_err(proto_err)?;
                verified = true;
                stream.write_all(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")?;
            } else {
                let fin = scram.client_final(&data, cache).map_err(proto_err)?;
                let resp = format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(fin)
                );
                stream.write_all(resp.as_bytes())?;
            }
        } else if el.is(NS_SASL, "success") {
            if !data.is_empty() {
                scram.verify_server_final(&data).map_err(proto_err)?;
            } else if !verified {
                return Err(proto_err("SASL success without server signature".into()));
            }
            break;
        } else if el.is(NS_SASL, "failure") {
            let why: Vec<String> = el.elements().map(|e| e.name.clone()).collect();
            return Err(proto_err(format!(
                "SASL failure for {}: {}",
                user,
                why.join(", ")
            )));
        } else {
            return Err(proto_err(format!("unexpected <{}/> during SASL", el.name)));
        }
    }
    Ok(())
}

/// EXTERNAL: the certificate is the credential; the response is empty (`=`).
fn external(stream: &mut Stream, rd: &mut Reader, offered: &[String]) -> io::Result<()> {
    if !offered.iter().any(|m| m == "EXTERNAL") {
        return Err(proto_err(format!(
            "the server does not offer EXTERNAL (it offers {offered:?})"
        )));
    }
    stream.write_all(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
    )?;
    let el = rd.stanza(stream)?;
    if el.is(NS_SASL, "success") {
        return Ok(());
    }
    Err(proto_err(format!(
        "EXTERNAL refused: <{}/> {}",
        el.name,
        el.elements()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Creates an account with in-band registration (XEP-0077) on a plain
/// stream. `Ok(false)` when it already existed.
pub fn register(target: &Target, user: &str, password: &str) -> io::Result<bool> {
    let Opened {
        mut stream,
        reader: mut rd,
        ..
    } = open(target, None)?;
    let iq = format!(
        "<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    );
    stream.write_all(iq.as_bytes())?;
    let created = loop {
        let el = rd.stanza(&mut stream)?;
        if !(el.is(NS_CLIENT, "iq") && el.attr("id") == Some("reg1")) {
            continue;
        }
        match el.attr("type") {
            Some("result") => break true,
            _ if describe_error(&el).contains("conflict") => break false,
            _ => {
                return Err(proto_err(format!(
                    "registration of {user} failed: {}",
                    describe_error(&el)
                )))
            }
        }
    };
    stream.close();
    Ok(created)
}
