//! Kontalk clients for the load generator (KONTALK.md part 1).
//!
//! * [`Identity`]: a user as the Kontalk client emulator makes it
//!   (`tests/clients/kontalk_client.py bench-keys`): a phone number, the RSA
//!   primary key, the bridge certificate of the new, unsigned OpenPGP key,
//!   and after a registration the certified key and its certificate
//!   (`bench-certs`), the one the client logs in with (SASL EXTERNAL).
//! * [`register`]: the three registration steps as the Android client runs
//!   them, each on its own STARTTLS connection that never authenticates:
//!   the instructions, the phone number, and the code with the certificate of
//!   the new key, answered with the key certified by the server.
//! * [`Gateway`]: an SMS gateway on loopback that takes the server's
//!   verification codes (`[kontalk] verification = "http"` with
//!   [`Gateway::url_template`]) and hands them to the registering clients.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto_core::xml::Element;
use rustls::ClientConfig;

use crate::client::{self, describe_error, Opened, Target};
use crate::tls;

const NS_REGISTER: &str = "jabber:iq:register";
const NS_DATA: &str = "jabber:x:data";
const NS_CLIENT: &str = "jabber:client";
/// The form of the phone step.
const FORM_PHONE: &str = "jabber:iq:register";
/// The form of the code step.
const FORM_CODE: &str = "http://kontalk.org/protocol/register#code";

/// A Kontalk user for the benches, read from its directory.
pub struct Identity {
    /// Its directory (`DIR/<i>`).
    pub dir: PathBuf,
    /// The phone number, E.164.
    pub phone: String,
    /// TLS with the bridge certificate of the unsigned key (the code step).
    pub unsigned: Arc<ClientConfig>,
    key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl Identity {
    /// The identities `DIR/0`, `DIR/1`, ... up to the first one missing.
    pub fn load_all(dir: &Path) -> Result<Vec<Identity>, String> {
        let mut all = Vec::new();
        loop {
            let d = dir.join(all.len().to_string());
            if !d.join("phone").exists() {
                break;
            }
            let phone = String::from_utf8(read(&d.join("phone"))?)
                .map_err(|_| format!("{}/phone: not text", d.display()))?
                .trim()
                .to_owned();
            let key = read(&d.join("key.der"))?;
            let unsigned =
                tls::client_config_with_cert(read(&d.join("unsigned.der"))?, key.clone())
                    .map_err(|e| format!("{}: {e}", d.display()))?;
            all.push(Identity {
                dir: d,
                phone,
                unsigned,
                key,
            });
        }
        if all.is_empty() {
            return Err(format!(
                "no identities in {} (make them with kontalk_client.py bench-keys)",
                dir.display()
            ));
        }
        Ok(all)
    }

    /// TLS with the certificate of the certified key (`signed.der`), the
    /// one EXTERNAL logs in with.
    pub fn login_config(&self) -> Result<Arc<ClientConfig>, String> {
        let cert = read(&self.dir.join("signed.der")).map_err(|e| {
            format!("{e} (register with kontalk-register, then kontalk_client.py bench-certs)")
        })?;
        tls::client_config_with_cert(cert, self.key.clone())
            .map_err(|e| format!("{}: {e}", self.dir.display()))
    }

    /// Keeps the certified key the server returned (`signed.pgp`).
    pub fn save_signed(&self, key: &[u8]) -> Result<(), String> {
        let path = self.dir.join("signed.pgp");
        std::fs::write(&path, key).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Escapes text for XML character data and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A registration form (type submit) with these fields, as the client
/// writes it.
fn form(domain: &str, id: &str, fields: &[(&str, &str, &str)]) -> String {
    let fields: String = fields
        .iter()
        .map(|(var, kind, value)| {
            format!(
                "<field var='{var}' type='{kind}'><value>{}</value></field>",
                escape(value)
            )
        })
        .collect();
    format!(
        "<iq to='{domain}' id='{id}' type='set'><query xmlns='{NS_REGISTER}'>\
         <x xmlns='{NS_DATA}' type='submit'>{fields}</x></query></iq>"
    )
}

/// The first value of a field of the form in a registration reply.
fn field(reply: &Element, var: &str) -> Option<String> {
    reply
        .child(NS_REGISTER, "query")
        .and_then(|q| q.child(NS_DATA, "x"))
        .and_then(|x| {
            x.elements()
                .find(|f| f.name == "field" && f.attr("var") == Some(var))
        })
        .and_then(|f| f.elements().find(|v| v.name == "value").map(|v| v.text()))
}

/// Sends an iq on a fresh STARTTLS connection and returns its reply; an
/// error reply is [`Refused`] with its condition.
fn ask(target: &Target, tls: &Arc<ClientConfig>, iq: &str, id: &str) -> io::Result<Element> {
    let Opened {
        mut stream,
        mut reader,
        ..
    } = client::open(target, Some(tls))?;
    stream.write_all(iq.as_bytes())?;
    let reply = loop {
        let el = reader.stanza(&mut stream)?;
        if el.is(NS_CLIENT, "iq") && el.attr("id") == Some(id) {
            break el;
        }
    };
    stream.close();
    if reply.attr("type") == Some("result") {
        Ok(reply)
    } else {
        Err(io::Error::other(Refused(describe_error(&reply))))
    }
}

/// A registration step answered with an error (its condition).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The condition of a refused step, if that is what `e` is.
pub fn refusal(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
        .map(|r| r.0.as_str())
}

/// Registers `who` (KONTALK.md 1 A-C) with the code the gateway receives,
/// and returns the certified key. `force`: the number may be registered
/// already (the client's "register again").
pub fn register(
    target: &Target,
    who: &Identity,
    force: bool,
    gateway: &Gateway,
) -> io::Result<Vec<u8>> {
    let domain = &target.domain;
    // A: the instructions.
    ask(
        target,
        &target.tls,
        &format!("<iq to='{domain}' id='ra' type='get'><query xmlns='{NS_REGISTER}'></query></iq>"),
        "ra",
    )?;
    // B: the phone number; the reply comes once the code went out.
    gateway.forget(&who.phone);
    let mut fields = vec![
        ("FORM_TYPE", "hidden", FORM_PHONE),
        ("phone", "text-single", who.phone.as_str()),
    ];
    if force {
        fields.push(("force", "boolean", "true"));
    }
    fields.push(("challenge", "text-single", "pin"));
    let reply = ask(target, &target.tls, &form(domain, "rb", &fields), "rb")?;
    if field(&reply, "from").is_none() {
        return Err(io::Error::other("the phone step's reply has no from field"));
    }
    let code = gateway.code(&who.phone, target.timeout).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no code for {} reached the gateway", who.phone),
        )
    })?;
    // C: the code, with the certificate of the new key.
    let fields = [
        ("FORM_TYPE", "hidden", FORM_CODE),
        ("code", "text-single", code.as_str()),
    ];
    let reply = ask(target, &who.unsigned, &form(domain, "rc", &fields), "rc")?;
    let key = field(&reply, "publickey")
        .ok_or_else(|| io::Error::other("the code step's reply has no publickey field"))?;
    let key: String = key.split_whitespace().collect();
    B64.decode(key)
        .map_err(|_| io::Error::other("the returned publickey is not base64"))
}

/// An SMS gateway on loopback: takes `GET /sms?to=PHONE&code=CODE` and
/// answers 200; the registering clients wait for their number's code.
pub struct Gateway {
    addr: SocketAddr,
    codes: Arc<(Mutex<HashMap<String, String>>, Condvar)>,
    received: Arc<AtomicU64>,
}

impl Gateway {
    /// Listens on `addr` (loopback) and serves every request on a thread
    /// of its own.
    pub fn start(addr: SocketAddr) -> io::Result<Gateway> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::other(format!(
                "the gateway listens on loopback only, not {addr}"
            )));
        }
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let codes: Arc<(Mutex<HashMap<String, String>>, Condvar)> = Arc::default();
        let received = Arc::new(AtomicU64::new(0));
        let (c, r) = (codes.clone(), received.clone());
        thread::Builder::new()
            .name("gateway".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (c, r) = (c.clone(), r.clone());
                    let _ = thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || serve(conn, &c, &r));
                }
            })?;
        Ok(Gateway {
            addr,
            codes,
            received,
        })
    }

    /// The `kontalk.gateway_url` that sends the codes here (method GET).
    pub fn url_template(&self) -> String {
        format!("http://{}/sms?to={{phone}}&code={{code}}", self.addr)
    }

    /// Requests taken so far.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Forgets the code this number had.
    pub fn forget(&self, phone: &str) {
        self.codes.0.lock().expect("lock").remove(phone);
    }

    /// The code sent to this number, waiting for it at most `timeout`.
    pub fn code(&self, phone: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (map, cond) = &*self.codes;
        let mut codes = map.lock().expect("lock");
        loop {
            if let Some(code) = codes.remove(phone) {
                return Some(code);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            codes = cond.wait_timeout(codes, left).expect("lock").0;
        }
    }
}

/// One HTTP/1.1 request: the request line and headers (no body is read:
/// the codes come in the query), then `Connection: close`.
fn serve(
    mut conn: TcpStream,
    codes: &(Mutex<HashMap<String, String>>, Condvar),
    received: &AtomicU64,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let status = match parse_request(line) {
        Some((phone, code)) => {
            received.fetch_add(1, Relaxed);
            codes.0.lock().expect("lock").insert(phone, code);
            codes.1.notify_all();
            "200 OK"
        }
        None => "400 Bad Request",
    };
    let _ = conn.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

/// `(to, code)` of `GET /sms?to=...&code=... HTTP/1.1`.
fn parse_request(line: &str) -> Option<(String, String)> {
    let mut parts = line.split(' ');
    if parts.next()? != "GET" {
        return None;
    }
    let (path, query) = parts.next()?.split_once('?')?;
    if path != "/sms" {
        return None;
    }
    let (mut to, mut code) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("to", v)) => to = Some(percent_decode(v)?),
            Some(("code", v)) => code = Some(percent_decode(v)?),
            _ => {}
        }
    }
    Some((to?, code?))
}

/// Percent-decoding of a query value (`+` is a space).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_reads_the_servers_requests() {
        assert_eq!(
            parse_request("GET /sms?to=%2B15555210000&code=123456 HTTP/1.1"),
            Some(("+15555210000".into(), "123456".into()))
        );
        assert_eq!(parse_request("POST /sms?to=1&code=2 HTTP/1.1"), None);
        assert_eq!(parse_request("GET /other?to=1&code=2 HTTP/1.1"), None);
        assert_eq!(parse_request("GET /sms?to=%2&code=2 HTTP/1.1"), None);
        assert_eq!(parse_request("GET /sms?code=2 HTTP/1.1"), None);
        assert_eq!(percent_decode("a+b%41").as_deref(), Some("a bA"));
    }

    #[test]
    fn a_code_that_reached_the_gateway_is_handed_out_once() {
        let gw = Gateway::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = gw
            .url_template()
            .replace("{phone}", "%2B15555210001")
            .replace("{code}", "654321");
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut c = TcpStream::connect(host).unwrap();
        write!(c, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let wait = Duration::from_secs(5);
        assert_eq!(gw.code("+15555210001", wait).as_deref(), Some("654321"));
        assert_eq!(gw.received(), 1);
        assert_eq!(gw.code("+15555210001", Duration::ZERO), None);
    }

    #[test]
    fn forms_are_written_as_the_client_writes_them() {
        let iq = form(
            "localhost",
            "rb",
            &[
                ("FORM_TYPE", "hidden", FORM_PHONE),
                ("phone", "text-single", "+1<"),
            ],
        );
        assert_eq!(
            iq,
            "<iq to='localhost' id='rb' type='set'><query xmlns='jabber:iq:register'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>jabber:iq:register</value></field>\
             <field var='phone' type='text-single'><value>+1&lt;</value></field></x></query></iq>"
        );
    }
}
