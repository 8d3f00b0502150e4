//! The protocol core is runtime-agnostic down to the byte: the same scripted client session
//! against kontalkd on mio and on smol, with the same RNG seed (`KONTALKD_TEST_SEED`), the same
//! configuration and the same database, gets the same bytes back from both.
//!
//! The session is plaintext (`require_encryption = false`) so the bytes can be compared, and
//! one connection long with no timing-dependent step, so the core's random choices (stream
//! ids, SCRAM nonces) come in the same order on both runtimes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use proto_core::sasl::{ScramClient, ScramHash};

use super::support::{toml_string, TempDir, DOMAIN};
use super::*;

/// Any fixed seed: what matters is that both servers get the same one.
const SEED: &str = "6b6f6e74616c6b643a2073616d652062797465732c20616e792072756e74696d";
/// How long one step may wait for the server's answer.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The account of the session, and its resource.
const USER: (&str, &str) = ("alice", "alice's secret");
const RESOURCE: &str = "transcript";
/// The client's SCRAM nonce, fixed like the server's seed.
const CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";

const STREAM_HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// Every byte the server sent on one connection, and what the client said between them.
struct Session {
    runtime: Runtime,
    stream: TcpStream,
    /// The server's bytes, all of them, in order.
    received: Vec<u8>,
    /// Where the current step's answer starts in `received`.
    step_start: usize,
    /// What the client sent, one line a step, for failure messages.
    log: Vec<String>,
}

impl Session {
    fn connect(server: &TestServer) -> Session {
        let stream = TcpStream::connect(server.c2s_addr())
            .unwrap_or_else(|e| panic!("connect to {}: {e}", server.c2s_addr()));
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Session {
            runtime: server.options.runtime,
            stream,
            received: Vec::new(),
            step_start: 0,
            log: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// The server's answer to the current step so far.
    fn answer(&self) -> String {
        String::from_utf8_lossy(&self.received[self.step_start..]).into_owned()
    }

    /// Sends `data`; the next step's answer starts here.
    fn send(&mut self, data: &str) {
        self.log.push(format!("C: {data}"));
        self.step_start = self.received.len();
        self.stream
            .write_all(data.as_bytes())
            .unwrap_or_else(|e| panic!("{:?}: send {data:?}: {e}", self.runtime));
    }

    /// Reads until `done` says the current step's answer is complete (or the server closes
    /// the connection, when `eof` is expected), failing after [`STEP_TIMEOUT`].
    fn read_until(&mut self, what: &str, eof: bool, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if !eof && done(&self.answer()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{:?}: no {what} within {STEP_TIMEOUT:?}\n--- client:\n{}\n--- server:\n{}",
                    self.runtime,
                    self.log.join("\n"),
                    self.text()
                );
            }
            match self.stream.read(&mut buf) {
                Ok(0) if eof && done(&self.answer()) => return,
                Ok(0) => panic!(
                    "{:?}: the server closed the connection while {what} was expected\n{}",
                    self.runtime,
                    self.text()
                ),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{:?}: read: {e}\n{}", self.runtime, self.text()),
            }
        }
    }

    /// Waits for the answer to contain `marker`.
    fn expect(&mut self, marker: &str) {
        self.read_until(marker, false, |answer| answer.contains(marker));
    }

    /// Waits for the whole `<name ... id='ID' ...>` element answering the stanza `id`
    /// (self-closing, or up to its `</name>`).
    fn expect_reply(&mut self, name: &str, id: &str) {
        let what = format!("<{name}/> with id {id}");
        let attr = format!("id='{id}'");
        let close = format!("</{name}>");
        self.read_until(&what, false, |answer| {
            let Some(at) = answer.find(&attr) else {
                return false;
            };
            let rest = &answer[at..];
            match rest.find('>') {
                Some(end) if rest[..end].ends_with('/') => true,
                Some(_) => rest.contains(&close),
                None => false,
            }
        });
    }

    /// The text content of the answer's first `<name ...>...</name>`.
    fn content(&self, name: &str) -> String {
        let answer = self.answer();
        let start = answer
            .find(&format!("<{name}"))
            .and_then(|at| answer[at..].find('>').map(|end| at + end + 1))
            .unwrap_or_else(|| panic!("{:?}: no <{name}> in {answer}", self.runtime));
        let end = answer[start..]
            .find(&format!("</{name}>"))
            .map(|end| start + end)
            .unwrap_or(start);
        answer[start..end].to_string()
    }
}

/// The scripted session: stream, SCRAM-SHA-1 login, bind, presence, a message to itself, a
/// ping, disco#info, an iq to a resource that is not there, and the closing handshake.
/// Returns every byte the server sent.
fn scripted_session(server: &TestServer) -> Vec<u8> {
    let mut s = Session::connect(server);
    let me = format!("{}@{DOMAIN}/{RESOURCE}", USER.0);

    s.send(STREAM_HEADER);
    s.expect("</stream:features>");

    let mut scram = ScramClient::new(ScramHash::Sha1, USER.0, USER.1, CLIENT_NONCE, None);
    let first = B64.encode(scram.client_first());
    s.send(&format!(
        "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{first}</auth>"
    ));
    s.expect("</challenge>");
    let challenge = B64
        .decode(s.content("challenge"))
        .expect("challenge in base64");
    let response = scram
        .client_final(&challenge)
        .unwrap_or_else(|e| panic!("{:?}: bad server-first-message: {e:?}", s.runtime));
    s.send(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        B64.encode(response)
    ));
    s.expect("</success>");
    let server_final = B64.decode(s.content("success")).expect("success in base64");
    scram
        .verify_server_final(&server_final)
        .unwrap_or_else(|e| panic!("{:?}: the server's signature: {e:?}", s.runtime));

    s.send(STREAM_HEADER);
    s.expect("</stream:features>");
    s.send(&format!(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{RESOURCE}</resource></bind></iq>"
    ));
    s.expect_reply("iq", "bind1");
    assert!(
        s.answer().contains(&me),
        "{:?}: bound to {}",
        s.runtime,
        s.answer()
    );

    // Initial presence has no answer of its own (the roster is empty); the roster get after
    // it is answered after whatever the presence caused, in order.
    s.send("<presence id='p1'/>");
    s.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
    s.expect_reply("iq", "roster1");

    s.send(&format!(
        "<message to='{me}' type='chat' id='m1'><body>note to self &lt;&amp;&gt; ünïcode</body></message>"
    ));
    s.expect_reply("message", "m1");

    s.send(&format!(
        "<iq type='get' id='ping1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    s.expect_reply("iq", "ping1");

    s.send(&format!(
        "<iq type='get' id='disco1' to='{DOMAIN}'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    s.expect_reply("iq", "disco1");

    s.send(&format!(
        "<iq type='get' id='err1' to='{}@{DOMAIN}/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>",
        USER.0
    ));
    s.expect_reply("iq", "err1");
    assert!(
        s.answer().contains("type='error'"),
        "{:?}: an iq to a resource that is not there must bounce: {}",
        s.runtime,
        s.answer()
    );

    s.send("</stream:stream>");
    s.read_until("the closing handshake and EOF", true, |answer| {
        answer.contains("</stream:stream>")
    });
    s.received
}

/// The first place where two transcripts differ, with some context, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(80);
    format!(
        "first difference at byte {at} (lengths {} and {}):\n  mio:  ...{}\n  smol: ...{}",
        a.len(),
        b.len(),
        String::from_utf8_lossy(&a[from..(at + 80).min(a.len())]),
        String::from_utf8_lossy(&b[from..(at + 80).min(b.len())]),
    )
}

#[test]
fn same_session_same_bytes_on_both_runtimes() {
    // One database for both, made once and copied: the account's SCRAM salt is in the
    // server's answer, so it must be the same.
    let template = TempDir::new("kontalkd-transcript");
    let config = template.path().join("kontalkd.toml");
    let data = template.path().join("data");
    std::fs::write(
        &config,
        format!(
            "[server]\ndomain = {}\ndata_dir = {}\n",
            toml_string(DOMAIN),
            toml_string(&data.to_string_lossy())
        ),
    )
    .unwrap();
    let mut adduser = Command::new(support::kontalkd());
    adduser.arg("--config").arg(&config).args([
        "adduser",
        &format!("{}@{DOMAIN}", USER.0),
        "--password",
        USER.1,
    ]);
    run(adduser, None, Duration::from_secs(30)).assert_success();

    let transcripts: Vec<(Runtime, Vec<u8>)> = Runtime::ALL
        .iter()
        .map(|&runtime| {
            let server = TestServer::start(ServerOptions {
                data_from: Some(data.clone()),
                seed: Some(SEED.into()),
                require_encryption: false,
                allow_registration: false,
                ..ServerOptions::with_users(runtime, &[])
            });
            (runtime, scripted_session(&server))
        })
        .collect();

    let (mio, smol) = (&transcripts[0].1, &transcripts[1].1);
    let text = String::from_utf8_lossy(mio);
    for expected in [
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
        &format!("<jid>{}@{DOMAIN}/{RESOURCE}</jid>", USER.0),
        "note to self",
        "http://jabber.org/protocol/disco#info",
        "type='error'",
        "</stream:stream>",
    ] {
        assert!(
            text.contains(expected),
            "the transcript lacks {expected:?}:\n{text}"
        );
    }
    assert!(
        mio == smol,
        "the runtimes sent different bytes for the same session: {}\n--- mio:\n{}\n--- smol:\n{}",
        first_difference(mio, smol),
        text,
        String::from_utf8_lossy(smol)
    );
    eprintln!("mio and smol sent the same {} bytes:\n{text}", mio.len());
}
