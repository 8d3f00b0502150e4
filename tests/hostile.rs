//! Hostile input against the real binary. Each attack runs against its own server with a
//! healthy pair of sessions (alice and bob, logged in before the attack). For each attack the
//! test checks the expected stream or stanza error (RFC 6120), that the server stays up, that
//! the healthy sessions keep chatting during and after the attack, and that the server's
//! memory returns to its level before the attack.
//!
//! The attack clients speak raw XMPP over plaintext TCP (`require_encryption = false`), so
//! every byte is under the test's control; logins use SCRAM-SHA-1 computed with proto-core's
//! client side.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto_core::sasl::{ScramClient, ScramHash};

use super::support::{Runtime, ServerOptions, TestServer};

per_runtime!(
    malformed_xml_namespaces_dtd_entities_comments_and_tags,
    deep_nesting_huge_attribute_and_invalid_utf8,
    bad_addresses_stanzas_before_auth_and_spoofing,
    sasl_garbage_and_replayed_scram,
    slowloris_is_timed_out,
    connection_flood_is_limited,
    login_failure_storm_is_throttled_then_refused,
    never_reading_client_under_flood_is_disconnected,
    a_burst_of_messages_slows_the_sender_and_all_arrive,
);

pub(crate) const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
const WAIT: Duration = Duration::from_secs(10);

/// A raw TCP client that keeps everything it received.
pub(crate) struct Raw {
    stream: TcpStream,
    pub(crate) received: Vec<u8>,
    pub(crate) closed: bool,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        Raw {
            stream,
            received: Vec::new(),
            closed: false,
        }
    }

    /// Sends bytes; a server that already closed the connection is not an error.
    pub(crate) fn send(&mut self, data: &[u8]) -> bool {
        self.stream.write_all(data).is_ok()
    }

    /// How much was received so far: a mark for [`wait_for`](Self::wait_for).
    pub(crate) fn mark(&self) -> usize {
        self.received.len()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Reads until `needle` appears in what was received after `from`, or the deadline.
    pub(crate) fn wait_for(&mut self, needle: &str, from: usize) -> Result<String, String> {
        self.wait_for_any(&[needle], from).ok_or_else(|| {
            format!(
                "no {needle:?} (closed: {}); got: {}",
                self.closed,
                self.text()
            )
        })
    }

    /// Reads until one of `needles` appears after `from`, the connection closes, or the deadline.
    pub(crate) fn wait_for_any(&mut self, needles: &[&str], from: usize) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        let from = from.min(self.received.len());
        let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        // Only what arrived since the last look (and a needle's length
        // before it) is searched: a long stream stays linear.
        let mut scanned = from;
        loop {
            let start = scanned.saturating_sub(longest).max(from);
            let fresh = &self.received[start..];
            if needles
                .iter()
                .any(|n| fresh.windows(n.len()).any(|w| w == n.as_bytes()))
            {
                return Some(String::from_utf8_lossy(&self.received[from..]).into_owned());
            }
            scanned = self.received.len();
            if self.closed || Instant::now() > deadline {
                return None;
            }
            self.read_some(Duration::from_millis(100));
        }
    }

    pub(crate) fn read_some(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).ok();
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => self.closed = true,
        }
    }

    /// Expects `<stream:error>` with `condition`, then the server closing the connection.
    pub(crate) fn expect_stream_error(&mut self, condition: &str) {
        let text = self
            .wait_for("</stream:error>", 0)
            .unwrap_or_else(|e| panic!("expected stream error {condition}: {e}"));
        let tag = format!("<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
        assert!(
            text.contains(&tag),
            "expected stream error {condition}, got: {text}"
        );
        let deadline = Instant::now() + WAIT;
        while !self.closed && Instant::now() < deadline {
            self.read_some(Duration::from_millis(100));
        }
        assert!(
            self.closed,
            "the server did not close the connection after {condition}"
        );
    }

    /// A plaintext SCRAM-SHA-1 login and bind.
    /// Opens the stream and runs one SCRAM-SHA-1 exchange; the returned
    /// `answer` is everything received after the `<auth/>`.
    pub(crate) fn scram(&mut self, user: &str, password: &str) -> Scram {
        self.send(HEADER.as_bytes());
        let mut out = Scram::default();
        if self.wait_for("</stream:features>", 0).is_err() {
            return out;
        }
        let mut client = ScramClient::new(ScramHash::Sha1, user, password, "hostile-nonce", None);
        out.auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(client.client_first())
        );
        let mark = self.received.len();
        self.send(out.auth.as_bytes());
        let text = self.wait_for("</", mark).unwrap_or_default();
        const OPEN: &str = "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>";
        if let (Some(start), Some(end)) = (text.find(OPEN), text.find("</challenge>")) {
            let server_first = B64
                .decode(&text[start + OPEN.len()..end])
                .unwrap_or_default();
            if let Ok(fin) = client.client_final(&server_first) {
                out.response = format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(fin)
                );
                self.send(out.response.as_bytes());
                let _ = self.wait_for_any(&["</success>", "</failure>"], mark);
            }
        } else {
            let _ = self.wait_for("</failure>", mark);
        }
        out.answer = String::from_utf8_lossy(&self.received[mark..]).into_owned();
        out
    }

    /// A plaintext SCRAM-SHA-1 login and bind.
    pub(crate) fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Raw {
        let mut c = Raw::connect(addr);
        let scram = c.scram(user, password);
        assert!(
            scram.answer.contains("<success"),
            "login failed: {}",
            scram.answer
        );
        let mark = c.received.len();
        c.send(HEADER.as_bytes());
        c.wait_for("</stream:features>", mark)
            .expect("features after login");
        c.send(format!("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq><presence/>").as_bytes());
        c.wait_for("</bind>", mark).expect("bind");
        c
    }
}

/// One SCRAM exchange as the client saw it.
#[derive(Default)]
pub(crate) struct Scram {
    auth: String,
    response: String,
    pub(crate) answer: String,
}

/// A server for one attack, with the healthy pair logged in.
struct Arena {
    server: TestServer,
    alice: Raw,
    bob: Raw,
    counter: u32,
    rss_before: u64,
}

impl Arena {
    fn new(rt: Runtime, limits: &str) -> Arena {
        let mut options = ServerOptions::with_users(
            rt,
            &[
                ("alice@localhost", "pw-alice"),
                ("bob@localhost", "pw-bob"),
                ("carol@localhost", "pw-carol"),
            ],
        );
        options.require_encryption = false;
        options.log_level = "info".into();
        options.extra_toml = format!("[limits]\n{limits}\n");
        let server = TestServer::start(options);
        let addr = server.c2s_addr();
        let alice = Raw::login(addr, "alice", "pw-alice", "healthy");
        let bob = Raw::login(addr, "bob", "pw-bob", "healthy");
        let mut arena = Arena {
            server,
            alice,
            bob,
            counter: 0,
            rss_before: 0,
        };
        arena.chat();
        arena.rss_before = arena.rss_kb();
        arena
    }

    fn addr(&self) -> SocketAddr {
        self.server.c2s_addr()
    }

    /// The healthy pair exchanges a message both ways.
    fn chat(&mut self) {
        for (from, to) in [(true, false), (false, true)] {
            self.counter += 1;
            let body = format!("healthy-{}", self.counter);
            let (sender, receiver, target) = if from && !to {
                (&mut self.alice, &mut self.bob, "bob@localhost")
            } else {
                (&mut self.bob, &mut self.alice, "alice@localhost")
            };
            let mark = receiver.received.len();
            assert!(
                sender.send(
                    format!("<message to='{target}' type='chat'><body>{body}</body></message>")
                        .as_bytes()
                ),
                "healthy session cut"
            );
            receiver.wait_for(&body, mark).unwrap_or_else(|e| {
                panic!(
                    "the healthy session stopped chatting: {e}\n{}",
                    self.server.log_report()
                )
            });
        }
    }

    fn rss_kb(&self) -> u64 {
        let pid = self.server.pid().expect("server running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// After the attack: the pair still chats and memory is back near its level before.
    fn finish(mut self) {
        self.chat();
        assert!(self.server.pid().is_some(), "the server died");
        // Freed memory may take a moment to be returned (allocator trimming).
        let deadline = Instant::now() + Duration::from_secs(5);
        let limit = self.rss_before + 16 * 1024;
        let mut rss = self.rss_kb();
        while rss > limit && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            rss = self.rss_kb();
        }
        eprintln!(
            "server RSS: {} KiB before the attack, {rss} KiB after",
            self.rss_before
        );
        assert!(
            rss <= limit,
            "memory did not come back: {} KiB before, {rss} KiB after",
            self.rss_before
        );
    }
}

/// One connection, one byte sequence, one stream error.
fn expect_error_for(arena: &mut Arena, data: &[u8], condition: &str) {
    let mut c = Raw::connect(arena.addr());
    c.send(data);
    arena.chat();
    c.expect_stream_error(condition);
}

fn malformed_xml_namespaces_dtd_entities_comments_and_tags(rt: Runtime) {
    let mut a = Arena::new(rt, "");
    let h = HEADER;
    let cases: Vec<(String, &str)> = vec![
        (format!("{h}<message><body>x</message>"), "not-well-formed"),
        (format!("{h}<message></presence>"), "not-well-formed"),
        (format!("{h}<<<>>>"), "not-well-formed"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>".into(), "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>".into(), "host-unknown"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='2.0'>".into(), "unsupported-version"),
        (format!("{h}<x:message/>"), "bad-namespace-prefix"),
        ("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><stream:stream/>".into(), "restricted-xml"),
        (format!("{h}<message><body>&x;</body></message>"), "restricted-xml"),
        (format!("{h}<!-- a comment -->"), "restricted-xml"),
        (format!("{h}<?php evil() ?>"), "restricted-xml"),
        ("<?xml version='1.0' encoding='UTF-16'?><stream:stream/>".into(), "unsupported-encoding"),
    ];
    for (data, condition) in cases {
        expect_error_for(&mut a, data.as_bytes(), condition);
    }
    // Unclosed tags followed by the end of the TCP stream: the server just forgets them.
    let mut c = Raw::connect(a.addr());
    c.send(format!("{h}<message><body>").as_bytes());
    drop(c);
    a.finish();
}

fn deep_nesting_huge_attribute_and_invalid_utf8(rt: Runtime) {
    let mut a = Arena::new(rt, "");
    let h = HEADER;
    // 10,000-deep nesting.
    let deep = format!("{h}{}", "<a>".repeat(10_000));
    expect_error_for(&mut a, deep.as_bytes(), "policy-violation");
    // A 100 MB attribute, sent in pieces while the server cuts it short.
    let mut c = Raw::connect(a.addr());
    c.send(format!("{h}<message to='").as_bytes());
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 100 << 20 && c.send(&chunk) {
        sent += chunk.len();
    }
    a.chat();
    c.expect_stream_error("policy-violation");
    assert!(sent < 100 << 20, "the server read all 100 MB");
    // Invalid UTF-8.
    let mut bad = format!("{h}<message><body>").into_bytes();
    bad.extend_from_slice(b"\xff\xfe\xc3\x28</body></message>");
    expect_error_for(&mut a, &bad, "not-well-formed");
    a.finish();
}

fn bad_addresses_stanzas_before_auth_and_spoofing(rt: Runtime) {
    let mut a = Arena::new(rt, "");
    let h = HEADER;
    expect_error_for(
        &mut a,
        format!("{h}<message to='bob@localhost'><body>sneaky</body></message>").as_bytes(),
        "not-authorized",
    );
    expect_error_for(
        &mut a,
        format!("{h}<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>").as_bytes(),
        "not-authorized",
    );
    expect_error_for(&mut a, b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a@@b' version='1.0'>", "host-unknown");
    // Invalid JIDs inside stanzas get a stanza error; the stream stays.
    let mut carol = Raw::login(a.addr(), "carol", "pw-carol", "r");
    let mark = carol.received.len();
    carol.send(b"<message to='@@invalid' id='j1'><body>x</body></message>");
    let text = carol
        .wait_for("jid-malformed", mark)
        .expect("jid-malformed");
    assert!(text.contains("id='j1'"));
    let mark = carol.received.len();
    carol.send(b"<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    carol
        .wait_for("id='p'", mark)
        .expect("the stream survives a bad JID");
    // A spoofed sender ends the stream; bob never sees the message.
    let mark = a.bob.received.len();
    carol.send(b"<message from='alice@localhost/healthy' to='bob@localhost'><body>spoofed</body></message>");
    carol.expect_stream_error("invalid-from");
    a.chat();
    assert!(!String::from_utf8_lossy(&a.bob.received[mark..]).contains("spoofed"));
    a.finish();
}

fn sasl_garbage_and_replayed_scram(rt: Runtime) {
    let mut a = Arena::new(rt, "");
    let mut c = Raw::connect(a.addr());
    c.send(HEADER.as_bytes());
    c.wait_for("</stream:features>", 0).unwrap();
    let mark = c.received.len();
    c.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>%%%not base64%%%</auth>");
    c.wait_for("incorrect-encoding", mark).unwrap();
    let mark = c.received.len();
    c.send(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode("garbage,,,")
        )
        .as_bytes(),
    );
    c.wait_for("malformed-request", mark).unwrap();
    let mark = c.received.len();
    c.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AAAA</response>");
    c.wait_for("<failure", mark).unwrap();
    // That was the third failure on one connection: it ends.
    c.expect_stream_error("policy-violation");
    a.chat();

    // Capture a full, successful SCRAM exchange, then replay its messages.
    let captured = Raw::connect(a.addr()).scram("carol", "pw-carol");
    assert!(captured.answer.contains("<success"));
    let (auth, response) = (captured.auth, captured.response);
    let mut replay = Raw::connect(a.addr());
    replay.send(HEADER.as_bytes());
    replay.wait_for("</stream:features>", 0).unwrap();
    replay.send(auth.as_bytes());
    replay.wait_for("</challenge>", 0).unwrap();
    let mark = replay.received.len();
    replay.send(response.as_bytes());
    replay
        .wait_for("not-authorized", mark)
        .expect("a replayed proof is refused");
    a.finish();
}

fn slowloris_is_timed_out(rt: Runtime) {
    let mut a = Arena::new(rt, "auth_timeout = 3");
    let mut c = Raw::connect(a.addr());
    // The header, one byte at a time, then silence.
    for b in HEADER.as_bytes().iter().take(40) {
        c.send(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_millis(25));
    }
    a.chat();
    c.expect_stream_error("connection-timeout");
    a.finish();
}

fn connection_flood_is_limited(rt: Runtime) {
    let mut a = Arena::new(rt, "max_connections_per_ip = 150");
    let mut flood: Vec<Raw> = (0..200).map(|_| Raw::connect(a.addr())).collect();
    for c in &mut flood {
        c.send(HEADER.as_bytes());
    }
    a.chat();
    // The healthy pair holds 2 slots: all but ~148 are refused.
    let mut refused = 0;
    for c in &mut flood {
        c.read_some(Duration::from_millis(50));
        if c.text().contains("<policy-violation") {
            refused += 1;
        }
    }
    assert!(refused >= 50, "only {refused} of 200 were refused");
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    a.finish();
}

/// One SCRAM-SHA-1 attempt on a new connection; returns the server's answer.
fn scram_attempt(addr: SocketAddr, user: &str, password: &str) -> String {
    Raw::connect(addr).scram(user, password).answer
}

fn login_failure_storm_is_throttled_then_refused(rt: Runtime) {
    let mut a = Arena::new(rt, "max_auth_failures_per_ip = 6\nauth_failure_window = 10");
    let start = Instant::now();
    let mut refused = false;
    for _ in 0..12 {
        let answer = scram_attempt(a.addr(), "carol", "wrong");
        if answer.contains("temporary-auth-failure") {
            refused = true;
            break;
        }
        assert!(answer.contains("not-authorized"), "{answer}");
        a.chat();
    }
    assert!(refused, "logins were never refused");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "failures were not throttled"
    );
    // Existing sessions are not affected; after the window, carol logs in again.
    a.chat();
    std::thread::sleep(
        Duration::from_secs(10).saturating_sub(start.elapsed()) + Duration::from_secs(1),
    );
    Raw::login(a.addr(), "carol", "pw-carol", "back");
    a.finish();
}

fn never_reading_client_under_flood_is_disconnected(rt: Runtime) {
    let mut a = Arena::new(rt, "output_budget = 65536\nstanzas_per_second = 0");
    let mut carol = Raw::login(a.addr(), "carol", "pw-carol", "sleepy");
    // Carol stops reading; bob floods her with 1 KiB messages.
    let body = "y".repeat(1024);
    let mut cut = false;
    for i in 0..4000 {
        let msg = format!("<message to='carol@localhost/sleepy' type='chat' id='f{i}'><body>{body}</body></message>");
        assert!(
            a.bob.send(msg.as_bytes()),
            "the flooding sender was cut instead"
        );
        if i % 500 == 0 {
            a.chat();
        }
        if i % 100 == 0 && a.server.log_text().contains("output over budget") {
            cut = true;
            break;
        }
    }
    a.chat();
    assert!(
        cut || a.server.log_text().contains("output over budget"),
        "the slow reader was never cut off"
    );
    // What carol finally reads ends with the stream error (if her buffer had room for it).
    carol.read_some(Duration::from_millis(200));
    a.finish();
}

fn a_burst_of_messages_slows_the_sender_and_all_arrive(rt: Runtime) {
    let mut a = Arena::new(rt, "stanzas_per_second = 500");
    let carol = Raw::login(a.addr(), "carol", "pw-carol", "burst");
    // 2,200 messages in one write: twice the burst the rate allows. The
    // server reads them as fast as the rate lets it, and TCP holds the rest.
    let wire: String = (0..2200)
        .map(|i| {
            format!(
                "<message to='bob@localhost/healthy' type='chat'><body>burst-{i}.</body></message>"
            )
        })
        .collect();
    let sender = std::thread::spawn(move || {
        let mut carol = carol;
        assert!(carol.send(wire.as_bytes()), "the burst was cut");
        carol
    });
    let mark = a.bob.received.len();
    let got = a
        .bob
        .wait_for("burst-2199.", mark)
        .unwrap_or_else(|e| panic!("not all of the burst arrived: {e}"));
    let mut carol = sender.join().expect("the sender");
    let mut next = 0;
    for part in got.split("<body>burst-").skip(1) {
        let n: usize = part.split('.').next().unwrap().parse().unwrap();
        assert_eq!(n, next, "in order, each once");
        next += 1;
    }
    assert_eq!(next, 2200);
    carol.read_some(Duration::from_millis(200));
    assert!(
        !carol.closed && !carol.text().contains("stream:error"),
        "the burst ended the sender's stream: {}",
        carol.text()
    );
    a.chat();
    a.finish();
}
