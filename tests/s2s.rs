//! Federation with the two most deployed XMPP servers, Prosody and ejabberd from Debian, on
//! loopback only: a test CA; a name server (dnsmasq-base) that answers for the `.test` domains
//! and refuses every other name, so nothing leaves the machine; kontalkd for `k.test`, Prosody
//! for `p.test`, ejabberd for `e.test`; slixmpp clients on each server.
//!
//! With each peer, in both directions: chat messages, a presence subscription with presence
//! flowing after it, and pings of the server and of a full JID; a message from a peer's user to
//! kontalkd's while she is offline is stored and delivered once at her next login. Once with certificates every
//! server trusts (SASL EXTERNAL both ways), once with kontalkd's own self-signed certificate and
//! no authority configured on its side (dialback both ways). Prosody runs mod_smacks, so the
//! streams with it carry XEP-0198 acks both ways after SASL EXTERNAL. A domain whose server does not
//! answer, and a peer stopped after its streams were up, each get their sender one
//! `remote-server-not-found` per stanza. `kontalkd s2s` names how each stream was authenticated.
//! Last, kontalkd is killed (-9) while messages it acknowledged wait for a frozen Prosody, and
//! each arrives once after its restart. Apart: a Kontalk network of two kontalkd servers, which
//! Prosody reaches through the one its name server names, and which reaches Prosody from each
//! user's home.
//!
//! Tools (`.ci/run` installs them): `prosody`, `ejabberd`, `dnsmasq-base` and `lua-unbound` from
//! Debian; the test runs as root, since the peers run as their own system users (`setpriv`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::support::{
    client_script, free_ports, missing, port_open, python, run, toml_string, Background, Run,
    Runtime, ServerOptions, TempDir, TestServer, CLIENT_TIMEOUT,
};

per_runtime!(
    federates_with_prosody_and_ejabberd_by_certificate,
    federates_with_prosody_and_ejabberd_by_dialback
);

/// kontalkd's domain, Prosody's, ejabberd's, and one whose server never answers.
const K: &str = "k.test";
const P: &str = "p.test";
const E: &str = "e.test";
const DOWN: &str = "down.test";
/// How long a peer gets to open its ports (ejabberd takes about 3 s).
const PEER_STARTUP: Duration = Duration::from_secs(30);

/// How kontalkd and its peers authenticate each other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trust {
    /// Every certificate is signed by the test CA, which every server trusts: SASL EXTERNAL.
    Certificates,
    /// kontalkd has its own self-signed certificate (the peers cannot verify it) and no
    /// authority for theirs: dialback, both ways.
    Dialback,
}

impl Trust {
    /// How `kontalkd s2s` names the streams' authentication.
    fn auth(self) -> &'static str {
        match self {
            Trust::Certificates => "certificate",
            Trust::Dialback => "dialback",
        }
    }
}

fn federates_with_prosody_and_ejabberd_by_certificate(rt: Runtime) {
    federation(rt, Trust::Certificates);
}

fn federates_with_prosody_and_ejabberd_by_dialback(rt: Runtime) {
    federation(rt, Trust::Dialback);
}

/// One user of one server.
struct Account {
    jid: String,
    password: &'static str,
    port: u16,
}

impl Account {
    /// `user@domain` with its password, on the client port `port`.
    fn new(user: &str, domain: &str, password: &'static str, port: u16) -> Account {
        Account {
            jid: format!("{user}@{domain}"),
            password,
            port,
        }
    }
}

fn federation(rt: Runtime, trust: Trust) {
    let python = require!(python());
    let Some(tools) = Tools::find() else {
        return;
    };
    let dir = TempDir::new("kontalkd-e2e-s2s");
    let ports = low_ports(8);
    let [dns, k_s2s, p_c2s, p_s2s, e_c2s, e_s2s, e_dist, down] = ports[..] else {
        unreachable!()
    };
    let pki = Pki::new(&[K, P, E]);
    let ca = dir.path().join("ca.crt");
    fs::write(&ca, &pki.ca_pem).unwrap();

    let _dns = tools.dnsmasq(
        dir.path(),
        dns,
        &[(K, k_s2s), (P, p_s2s), (E, e_s2s), (DOWN, down)],
    );
    let prosody = tools.prosody(dir.path(), &pki, &ca, dns, p_c2s, p_s2s);
    let ejabberd = tools.ejabberd(dir.path(), &pki, &ca, dns, e_c2s, e_s2s, e_dist);

    let mut extra = String::new();
    if trust == Trust::Certificates {
        let (cert, key) = pki.write(dir.path(), K);
        let _ = writeln!(
            extra,
            "[tls]\ncertificate = {}\nprivate_key = {}\n",
            toml_string(&cert.to_string_lossy()),
            toml_string(&key.to_string_lossy())
        );
    }
    let _ = writeln!(
        extra,
        "[s2s]\nenabled = true\nlisten = \"127.0.0.1\"\nport = {k_s2s}\n\
         name_servers = [\"127.0.0.1:{dns}\"]"
    );
    if trust == Trust::Certificates {
        let _ = writeln!(extra, "ca_files = [{}]", toml_string(&ca.to_string_lossy()));
    }
    let mut kontalkd = TestServer::start(ServerOptions {
        domain: K.to_owned(),
        extra_toml: extra,
        ..ServerOptions::with_users(rt, &[("alice@k.test", "alicepw")])
    });
    prosody.wait_ready(&[p_c2s, p_s2s]);
    prosody.register(&tools, "bob", "bobpw");
    ejabberd.wait_ready(&[e_c2s, e_s2s]);
    ejabberd.register(&tools, "carol", "carolpw");

    let alice = Account::new("alice", K, "alicepw", kontalkd.c2s_port);
    let bob = Account::new("bob", P, "bobpw", p_c2s);
    let carol = Account::new("carol", E, "carolpw", e_c2s);
    let peers = [(&bob, &prosody), (&carol, &ejabberd.daemon)];
    let report = |run: &Run| {
        let mut r = run.describe();
        r.push_str(&kontalkd.log_report());
        for (_, daemon) in &peers {
            r.push_str(&daemon.report());
        }
        r
    };

    for (peer, _) in &peers {
        // Both ways in one run: alice -> peer and peer -> alice, each from the full JID.
        let chat = pair(&python, "chat.py", &alice, peer, &[]);
        assert!(chat.success(), "chat with {}\n{}", peer.jid, report(&chat));
        assert_eq!(chat.lines("RECEIVED").len(), 2, "{}", report(&chat));
        // alice subscribes to the peer's user and back: both requests cross, both rosters
        // end with subscription=both, and presence follows.
        let subscribe = pair(&python, "subscribe.py", &alice, peer, &[]);
        assert!(
            subscribe.success(),
            "subscription with {}\n{}",
            peer.jid,
            report(&subscribe)
        );
        // Pings of the other server and of a full JID, started from each side.
        for (a, b) in [(&alice, *peer), (*peer, &alice)] {
            let pings = pair(&python, "federation.py", a, b, &[]);
            assert!(
                pings.success(),
                "pings {} -> {}\n{}",
                a.jid,
                b.jid,
                report(&pings)
            );
            assert_eq!(pings.lines("PING").len(), 3, "{}", report(&pings));
        }
    }

    // A message from each peer's user to alice while she is offline: stored here, delivered
    // once at her next login, with its delay stamp.
    for (peer, _) in &peers {
        let body = format!("while you were away, from {}", peer.jid);
        let mut cmd = client_script(&python, "send.py");
        cmd.args(["--port", &peer.port.to_string()])
            .args(["--jid", &peer.jid, "--password", peer.password])
            .args(["--to", &alice.jid, "--body", &body, "--quiet"]);
        let sent = run(cmd, None, CLIENT_TIMEOUT);
        assert!(sent.success(), "{}", report(&sent));
        // The peer has sent it once send.py is done; it is stored once it crossed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut inbox;
        loop {
            let mut cmd = client_script(&python, "inbox.py");
            cmd.args(["--port", &alice.port.to_string()])
                .args(["--jid", &alice.jid, "--password", alice.password])
                .args(["--count", "1", "--settle", "1", "--timeout", "8", "--quiet"]);
            inbox = run(cmd, None, CLIENT_TIMEOUT);
            if inbox.success() || Instant::now() > deadline {
                break;
            }
        }
        assert!(inbox.success(), "{}", report(&inbox));
        let delayed: Vec<&str> = inbox
            .lines("DELAYED")
            .into_iter()
            .filter(|l| l.ends_with(&body))
            .collect();
        assert_eq!(
            delayed.len(),
            1,
            "stored once, with its delay\n{}",
            report(&inbox)
        );
        assert_eq!(inbox.value("COUNT"), Some("1"), "{}", report(&inbox));
    }

    // Every stream with each peer was authenticated the way this run means.
    let s2s = kontalkd.admin(&["s2s"]);
    s2s.assert_success();
    for peer in [P, E] {
        for line in [
            format!("out {K} -> {peer} auth={}", trust.auth()),
            format!("in {peer} -> {K} auth={}", trust.auth()),
        ] {
            assert!(
                s2s.stdout.contains(&line),
                "no {line:?} in kontalkd s2s:\n{}",
                report(&s2s)
            );
        }
    }

    // Prosody (mod_smacks) acknowledges what it gets on kontalkd's stream and asks kontalkd
    // for acks on its own (XEP-0198 on server streams); it offers and enables stream
    // management only in the features after SASL, so not on dialback streams. ejabberd has
    // none on server streams.
    let prosody_sm = match trust {
        Trust::Certificates => "yes",
        Trust::Dialback => "no",
    };
    for (peer, sm) in [(P, prosody_sm), (E, "no")] {
        for prefix in [format!("out {K} -> {peer} "), format!("in {peer} -> {K} ")] {
            let line = s2s.stdout.lines().find(|l| l.starts_with(&prefix));
            assert!(
                line.is_some_and(|l| l.contains(&format!(" sm={sm} "))),
                "{prefix}: sm={sm} expected\n{}",
                report(&s2s)
            );
        }
    }
    let status = kontalkd.admin(&["status"]);
    assert!(
        status.stdout.contains("federation: 2 stream(s) out,"),
        "{}",
        report(&status)
    );

    // A domain whose server never answers: the message and the iq each bounce once.
    let down_run = pair(
        &python,
        "federation.py",
        &alice,
        &bob,
        &["--down-domain", DOWN],
    );
    assert!(down_run.success(), "{}", report(&down_run));
    assert_bounced(&down_run, &report);

    // A peer that goes away after its streams were up: what alice sends to it afterwards
    // bounces once each, and the other peer is not affected.
    prosody.stop();
    let gone = pair(
        &python,
        "federation.py",
        &alice,
        &carol,
        &["--down-domain", P],
    );
    assert!(gone.success(), "{}", report(&gone));
    assert_bounced(&gone, &report);

    // What kontalkd acknowledged is kept across a crash while it waits for a stream: Prosody
    // back but frozen (SIGSTOP: its port takes the connection, nothing answers), alice's
    // messages to bob get kontalkd's <a/> (XEP-0198) while they wait; kontalkd is killed
    // (-9) and started again; Prosody thaws, and bob, offline, finds each once.
    let prosody = tools.prosody(dir.path(), &pki, &ca, dns, p_c2s, p_s2s);
    prosody.wait_ready(&[p_c2s, p_s2s]);
    kontalkd.kill9();
    kontalkd.restart();
    let report = |run: &Run| {
        let mut r = run.describe();
        r.push_str(&kontalkd.log_report());
        r.push_str(&prosody.report());
        r
    };
    prosody.signal("-STOP");
    let bodies = ["kept one", "kept two", "kept three"];
    let mut cmd = client_script(&python, "send.py");
    cmd.args(["--port", &alice.port.to_string()])
        .args(["--jid", &alice.jid, "--password", alice.password])
        .args(["--to", &bob.jid, "--acked", "--pause", "0.1"]);
    for b in bodies {
        cmd.args(["--body", b]);
    }
    let sent = run(cmd, None, CLIENT_TIMEOUT);
    assert!(sent.success(), "{}", report(&sent));
    assert_eq!(sent.lines("ACKED").len(), 3, "{}", report(&sent));
    // (Prosody stays frozen: had it read the stanzas, they would come twice, as XEP-0198
    // without resumption cannot tell; see the README.)
    kontalkd.kill9();
    kontalkd.restart();
    prosody.signal("-CONT");
    let report = |run: &Run| {
        let mut r = run.describe();
        r.push_str(&kontalkd.log_report());
        r.push_str(&prosody.report());
        r
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let inbox = loop {
        let mut cmd = client_script(&python, "inbox.py");
        cmd.args(["--port", &bob.port.to_string()])
            .args(["--jid", &bob.jid, "--password", bob.password])
            .args([
                "--count",
                "3",
                "--settle",
                "2",
                "--timeout",
                "10",
                "--quiet",
            ]);
        let inbox = run(cmd, None, CLIENT_TIMEOUT);
        if inbox.success() || Instant::now() > deadline {
            break inbox;
        }
    };
    assert!(inbox.success(), "{}", report(&inbox));
    for b in bodies {
        let got = inbox
            .lines("RECEIVED")
            .into_iter()
            .filter(|l| l.ends_with(b))
            .count();
        assert_eq!(got, 1, "{b:?} once\n{}", report(&inbox));
    }
    assert_eq!(inbox.value("COUNT"), Some("3"), "{}", report(&inbox));
}

/// XEP-0357 over federation: alice (kontalkd, `k.test`) enables push notifications at an
/// app server that is a slixmpp client of Prosody (`app@p.test/push`); messages from carol
/// while alice is offline are published to it over S2S from alice's bare JID: the summary
/// form with its count, alice's publish options, no body. The app server refuses the second:
/// the registration is disabled, and the third message publishes nothing.
#[test]
fn an_app_server_behind_prosody_gets_push_notifications_over_s2s() {
    let python = require!(python());
    let Some(tools) = Tools::find() else {
        return;
    };
    let dir = TempDir::new("kontalkd-e2e-s2s-push");
    let ports = low_ports(4);
    let [dns, k_s2s, p_c2s, p_s2s] = ports[..] else {
        unreachable!()
    };
    let pki = Pki::new(&[K, P]);
    let ca = dir.path().join("ca.crt");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let _dns = tools.dnsmasq(dir.path(), dns, &[(K, k_s2s), (P, p_s2s)]);
    let prosody = tools.prosody(dir.path(), &pki, &ca, dns, p_c2s, p_s2s);
    let kontalkd = TestServer::start(ServerOptions {
        domain: K.to_owned(),
        extra_toml: format!(
            "[s2s]\nenabled = true\nlisten = \"127.0.0.1\"\nport = {k_s2s}\n\
             name_servers = [\"127.0.0.1:{dns}\"]\n"
        ),
        ..ServerOptions::with_users(
            Runtime::Mio,
            &[("alice@k.test", "alicepw"), ("carol@k.test", "carolpw")],
        )
    });
    prosody.wait_ready(&[p_c2s, p_s2s]);
    prosody.register(&tools, "app", "apppw");
    let report = |what: &str| format!("{what}\n{}{}", kontalkd.log_report(), prosody.report());

    let mut app = client_script(&python, "app_server.py");
    app.args(["--port", &p_c2s.to_string()])
        .args([
            "--jid",
            "app@p.test",
            "--password",
            "apppw",
            "--resource",
            "push",
        ])
        .args([
            "--count",
            "2",
            "--refuse-after",
            "1",
            "--timeout",
            "60",
            "--quiet",
        ]);
    let mut app = Background::spawn(app);
    if let Err(why) = app.wait_for("READY", Duration::from_secs(30)) {
        panic!(
            "{}",
            report(&format!("the app server is not online: {why}"))
        );
    }
    let mut enable = client_script(&python, "push_enable.py");
    enable
        .args(["--port", &kontalkd.c2s_port.to_string()])
        .args(["--jid", "alice@k.test", "--password", "alicepw"])
        .args([
            "--app",
            "app@p.test/push",
            "--node",
            "device-node",
            "--quiet",
        ]);
    let enabled = run(enable, None, CLIENT_TIMEOUT);
    assert!(
        enabled.has_line("ENABLED app@p.test/push device-node"),
        "{}",
        report(&enabled.describe())
    );
    let send = |body: &str| {
        let mut cmd = client_script(&python, "send.py");
        cmd.args(["--port", &kontalkd.c2s_port.to_string()])
            .args(["--jid", "carol@k.test", "--password", "carolpw"])
            .args(["--to", "alice@k.test", "--body", body, "--quiet"]);
        let sent = run(cmd, None, CLIENT_TIMEOUT);
        assert!(sent.success(), "{}", report(&sent.describe()));
    };
    send("the secret plan, one");
    if let Err(why) = app.wait_for("PUBLISH", Duration::from_secs(30)) {
        panic!("{}", report(&format!("no notification: {why}")));
    }
    send("the secret plan, two");
    let app = app.finish(Duration::from_secs(40));
    assert!(app.success(), "{}", report(&app.describe()));
    let publishes = app.lines("PUBLISH");
    assert_eq!(publishes.len(), 2, "{}", report(&app.describe()));
    for line in &publishes {
        assert_eq!(
            *line,
            "PUBLISH alice@k.test device-node 1 - s3cr3t",
            "{}",
            report(&app.describe())
        );
    }
    assert!(!app.has_line("BODY-LEAK"), "{}", report(&app.describe()));
    // Refused once: disabled, so the next message publishes nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kontalkd.log_text().contains("its registration is disabled") {
        assert!(Instant::now() < deadline, "{}", report("no disable"));
        thread::sleep(Duration::from_millis(100));
    }
    let notified = || {
        kontalkd
            .log_text()
            .matches("push: a notification of alice@k.test")
            .count()
    };
    assert_eq!(notified(), 2, "{}", report("two notifications"));
    send("the secret plan, three");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        notified(),
        2,
        "{}",
        report("a notification after the registration was disabled")
    );
}

/// The Kontalk network's domain in [`a_foreign_server_reaches_a_network_through_one_server`].
const N: &str = "n.test";

/// Federation of a Kontalk network (issue 13's S2S part), end to end: two kontalkd servers of
/// the network `n.test`, `beta.n.test` (runtime-mio) with alice and `prime.n.test`
/// (runtime-smol) with bob, each with its own self-signed certificate and the network's shared
/// dialback secret; the name server names only beta for `n.test`. Prosody's dave chats with
/// both and subscribes to bob's presence: what dave sends to bob reaches beta and goes on to
/// prime over Net; what bob sends leaves prime on prime's own stream as `n.test`, whose
/// dialback key Prosody checks at beta, the only server of the network it knows.
#[test]
fn a_foreign_server_reaches_a_network_through_one_server() {
    let python = require!(python());
    let Some(tools) = Tools::find() else {
        return;
    };
    let dir = TempDir::new("kontalkd-e2e-s2s-net");
    let ports = low_ports(5);
    let [dns, beta_s2s, prime_s2s, p_c2s, p_s2s] = ports[..] else {
        unreachable!()
    };
    let pki = Pki::new(&[P]);
    let ca = dir.path().join("ca.crt");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let _dns = tools.dnsmasq(dir.path(), dns, &[(N, beta_s2s), (P, p_s2s)]);
    let prosody = tools.prosody(dir.path(), &pki, &ca, dns, p_c2s, p_s2s);

    let (data_beta, fpr_beta) = super::net::prepared_for(Runtime::Mio, dir.path(), "beta", N);
    let (data_prime, fpr_prime) = super::net::prepared_for(Runtime::Smol, dir.path(), "prime", N);
    let (net_beta, net_prime) = free_ports();
    let s2s = |port: u16| {
        format!(
            "[s2s]\nenabled = true\nlisten = \"127.0.0.1\"\nport = {port}\n\
             name_servers = [\"127.0.0.1:{dns}\"]\n\
             dialback_secret = \"the network's own secret, the same on every server\"\n"
        )
    };
    let server = |rt: Runtime, data: &Path, net: String, port: u16, user: (&str, &str)| {
        TestServer::start(ServerOptions {
            domain: N.to_owned(),
            data_from: Some(data.to_owned()),
            extra_toml: format!("{net}{}", s2s(port)),
            log_level: "info".into(),
            ..ServerOptions::with_users(rt, &[user])
        })
    };
    let beta = server(
        Runtime::Mio,
        &data_beta,
        super::net::net_toml(
            "beta.n.test",
            net_beta,
            &[("prime.n.test", net_prime, &fpr_prime, "prime.n.test:5222")],
        ),
        beta_s2s,
        ("alice@n.test", "alicepw"),
    );
    let prime = server(
        Runtime::Smol,
        &data_prime,
        super::net::net_toml(
            "prime.n.test",
            net_prime,
            &[("beta.n.test", net_beta, &fpr_beta, "beta.n.test:5222")],
        ),
        prime_s2s,
        ("bob@n.test", "bobpw"),
    );
    for s in [&beta, &prime] {
        super::net::wait_status(s, "1 of 1 link(s) up");
        super::net::wait_status(s, "directory: 1 user(s) on the other servers");
    }
    prosody.wait_ready(&[p_c2s, p_s2s]);
    prosody.register(&tools, "dave", "davepw");

    let alice = Account::new("alice", N, "alicepw", beta.c2s_port);
    let bob = Account::new("bob", N, "bobpw", prime.c2s_port);
    let dave = Account::new("dave", P, "davepw", p_c2s);
    let report = |run: &Run| {
        let mut r = run.describe();
        r.push_str(&beta.log_report());
        r.push_str(&prime.log_report());
        r.push_str(&prosody.report());
        r
    };
    // bob first: dave's first stanza for the network opens Prosody's stream to beta.
    for user in [&bob, &alice] {
        let chat = pair(&python, "chat.py", &dave, user, &[]);
        assert!(chat.success(), "chat with {}\n{}", user.jid, report(&chat));
        assert_eq!(chat.lines("RECEIVED").len(), 2, "{}", report(&chat));
    }
    let subscribe = pair(&python, "subscribe.py", &dave, &bob, &[]);
    assert!(subscribe.success(), "{}", report(&subscribe));
    let pings = pair(&python, "federation.py", &dave, &bob, &[]);
    assert!(pings.success(), "{}", report(&pings));
    assert_eq!(pings.lines("PING").len(), 3, "{}", report(&pings));

    // Prosody reached the network at beta only; each home wrote to it on its own stream.
    let streams = |s: &TestServer| {
        let out = s.admin(&["s2s"]);
        out.assert_success();
        out.stdout
    };
    let (at_beta, at_prime) = (streams(&beta), streams(&prime));
    let has = |text: &str, line: &str| text.lines().any(|l| l.starts_with(line));
    assert!(
        has(&at_beta, &format!("in {P} -> {N} auth=dialback")),
        "{at_beta}"
    );
    assert!(
        has(&at_beta, &format!("out {N} -> {P} auth=dialback")),
        "{at_beta}"
    );
    assert!(
        has(&at_prime, &format!("out {N} -> {P} auth=dialback")),
        "{at_prime}"
    );
    assert!(!has(&at_prime, &format!("in {P} -> ")), "{at_prime}");
}

/// One message and one iq came back, each once, as `remote-server-not-found`.
fn assert_bounced(run: &Run, report: &dyn Fn(&Run) -> String) {
    for kind in ["message", "iq"] {
        let line = format!("BOUNCED {kind} remote-server-not-found");
        assert!(run.has_line(&line), "no {line:?}\n{}", report(run));
    }
    assert_eq!(run.lines("BOUNCED").len(), 2, "{}", report(run));
}

/// Runs a two-user script with A and B on their servers.
fn pair(python: &Path, script: &str, a: &Account, b: &Account, extra: &[&str]) -> Run {
    let mut cmd = client_script(python, script);
    cmd.args(["--port", &a.port.to_string()])
        .args(["--jid-a", &a.jid, "--password-a", a.password])
        .args(["--jid-b", &b.jid, "--password-b", b.password])
        .args(["--port-b", &b.port.to_string()])
        .args(["--timeout", "40", "--quiet"])
        .args(extra);
    run(cmd, None, CLIENT_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// Ports, certificates
// ---------------------------------------------------------------------------------------------

/// `n` distinct loopback ports, free for TCP and UDP, below the kernel's ephemeral range
/// (32768 and up), where no outgoing connection can be holding one as its source port.
fn low_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 10_000;
    let mut ports = Vec::new();
    while ports.len() < n {
        let i = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(i < 12_000, "no free ports left below 32768");
        let port = 20_000 + ((base + i * 7) % 12_000) as u16;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free && !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A test CA and a certificate it signed for each domain (subjectAltName the domain,
/// extended key usage serverAuth and clientAuth, as FEDERATION.md says peers need).
struct Pki {
    ca_pem: String,
    /// (domain, certificate PEM, private key PEM).
    leaves: Vec<(String, String, String)>,
}

impl Pki {
    fn new(domains: &[&str]) -> Pki {
        // Valid from yesterday for 30 days: ejabberd sets a timer to each certificate's
        // expiry, and Erlang's timers end at 49 days (rcgen's default, year 4096, crashes it).
        let days = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        // Midnight UTC of `days` since 1970-01-01 (the civil calendar from days, as in
        // Howard Hinnant's `civil_from_days`).
        let date = |days: u64| {
            let z = days as i64 + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
            let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
            let year = yoe + era * 400 + i64::from(month <= 2);
            rcgen::date_time_ymd(year as i32, month, day)
        };
        let (not_before, not_after) = (date(days - 1), date(days + 30));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kontalkd federation test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaves = domains
            .iter()
            .map(|d| {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::new(vec![(*d).to_owned()]).unwrap();
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, *d);
                params.not_before = not_before;
                params.not_after = not_after;
                params.extended_key_usages = vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let cert = params.signed_by(&key, &issuer).unwrap();
                ((*d).to_owned(), cert.pem(), key.serialize_pem())
            })
            .collect();
        Pki {
            ca_pem: ca.pem(),
            leaves,
        }
    }

    fn leaf(&self, domain: &str) -> (&str, &str) {
        let (_, cert, key) = self
            .leaves
            .iter()
            .find(|(d, _, _)| d == domain)
            .unwrap_or_else(|| panic!("no certificate for {domain}"));
        (cert, key)
    }

    /// Writes `DIR/DOMAIN.crt` and `DIR/DOMAIN.key`.
    fn write(&self, dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(domain);
        let cert_path = dir.join(format!("{domain}.crt"));
        let key_path = dir.join(format!("{domain}.key"));
        fs::write(&cert_path, cert).unwrap();
        fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }
}

// ---------------------------------------------------------------------------------------------
// The peers
// ---------------------------------------------------------------------------------------------

/// The Debian programs the test starts.
struct Tools {
    dnsmasq: PathBuf,
    prosody: PathBuf,
    prosodyctl: PathBuf,
    ejabberdctl: PathBuf,
    setpriv: PathBuf,
}

impl Tools {
    /// The programs, or `None` after [`missing`] (a failure in CI).
    fn find() -> Option<Tools> {
        const INSTALL: &str = "apt-get install prosody ejabberd dnsmasq-base lua-unbound \
                               (or run .ci/run), and run the tests as root";
        if !is_root() {
            return missing(
                "root (Prosody and ejabberd run as their own users)",
                INSTALL,
            );
        }
        let find = |name: &str| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        };
        let mut found = Vec::new();
        for name in ["dnsmasq", "prosody", "prosodyctl", "ejabberdctl", "setpriv"] {
            match find(name) {
                Some(p) => found.push(p),
                None => return missing(name, INSTALL),
            }
        }
        if !Path::new("/usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so").exists()
            && !lua_unbound_installed()
        {
            return missing("lua-unbound (Prosody's resolver)", INSTALL);
        }
        let mut found = found.into_iter();
        let mut next = || found.next().expect("five programs");
        Some(Tools {
            dnsmasq: next(),
            prosody: next(),
            prosodyctl: next(),
            ejabberdctl: next(),
            setpriv: next(),
        })
    }

    /// `program` run as the system user `user` (its own group and supplementary groups).
    fn as_user(&self, user: &str, program: &Path) -> Command {
        let mut cmd = Command::new(&self.setpriv);
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg(program);
        cmd
    }

    /// dnsmasq in the foreground on `port`: an SRV record `_xmpp-server._tcp.DOMAIN` ->
    /// `localhost:PORT` for each of `domains`, `localhost` itself, and REFUSED for every
    /// other name (nothing is forwarded).
    fn dnsmasq(&self, dir: &Path, port: u16, domains: &[(&str, u16)]) -> Daemon {
        let log = dir.join("dnsmasq.log");
        let mut cmd = Command::new(&self.dnsmasq);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/test/",
            "--host-record=localhost,127.0.0.1",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--port={port}"));
        for (domain, p) in domains {
            cmd.arg(format!(
                "--srv-host=_xmpp-server._tcp.{domain},localhost,{p},0,5"
            ));
        }
        let d = Daemon::spawn("dnsmasq", cmd, &log, vec![log.clone()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log_has("started, version") {
            d.assert_alive();
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start\n{}",
                d.report()
            );
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Prosody for `p.test` with the test CA's certificate, its name server the test's, and
    /// dialback allowed when a certificate does not verify.
    fn prosody(&self, dir: &Path, pki: &Pki, ca: &Path, dns: u16, c2s: u16, s2s: u16) -> Daemon {
        let home = dir.join("prosody");
        let certs = home.join("certs");
        fs::create_dir_all(home.join("data")).unwrap();
        fs::create_dir_all(&certs).unwrap();
        pki.write(&certs, P);
        let log = home.join("prosody.log");
        let config = home.join("prosody.cfg.lua");
        let path = |p: &Path| lua_string(&p.to_string_lossy());
        let text = format!(
            "pidfile = {pid}\n\
             data_path = {data}\n\
             daemonize = false\n\
             log = {{ debug = {log} }}\n\
             interfaces = {{ \"127.0.0.1\" }}\n\
             c2s_ports = {{ {c2s} }}\n\
             s2s_ports = {{ {s2s} }}\n\
             http_ports = {{}}\n\
             https_ports = {{}}\n\
             modules_enabled = {{ \"roster\"; \"saslauth\"; \"tls\"; \"dialback\"; \"disco\"; \
             \"ping\"; \"presence\"; \"message\"; \"iq\"; \"posix\"; \"smacks\"; \"offline\" }}\n\
             -- One stream per direction, as FEDERATION.md says.\n\
             modules_disabled = {{ \"s2s_bidi\" }}\n\
             certificates = {certs}\n\
             ssl = {{ cafile = {ca} }}\n\
             use_ipv6 = false\n\
             authentication = \"internal_plain\"\n\
             s2s_secure_auth = false\n\
             unbound = {{ resolvconf = false; hoststxt = false; \
             forward = {{ \"127.0.0.1@{dns}\" }}; \
             options = {{ [\"local-zone:\"] = \"test. transparent\" }} }}\n\
             VirtualHost \"{P}\"\n",
            pid = path(&home.join("prosody.pid")),
            data = path(&home.join("data")),
            log = path(&log),
            certs = path(&certs),
            ca = path(ca),
        );
        fs::write(&config, text).unwrap();
        chown(&home, "prosody");
        let mut cmd = self.as_user("prosody", &self.prosody);
        cmd.arg("--config").arg(&config).arg("-F");
        let mut d = Daemon::spawn(
            "prosody",
            cmd,
            &home.join("prosody.out"),
            vec![home.join("prosody.out"), log],
        );
        d.config = Some(config);
        d
    }

    /// ejabberd for `e.test`: its own node, spool and logs; Erlang distribution on `dist`
    /// (no epmd); the test's name server; federation only with `.test` domains.
    #[allow(clippy::too_many_arguments)]
    fn ejabberd(
        &self,
        dir: &Path,
        pki: &Pki,
        ca: &Path,
        dns: u16,
        c2s: u16,
        s2s: u16,
        dist: u16,
    ) -> Ejabberd {
        let home = dir.join("ejabberd");
        let conf = home.join("conf");
        let spool = home.join("spool");
        let logs = home.join("logs");
        for d in [&conf, &spool, &logs] {
            fs::create_dir_all(d).unwrap();
        }
        let (cert, key) = pki.leaf(E);
        let pem = conf.join(format!("{E}.pem"));
        fs::write(&pem, format!("{key}{cert}")).unwrap();
        let yaml = |p: &Path| toml_string(&p.to_string_lossy());
        // The order matters: resolv_conf "" first, then the name server (FEDERATION.md).
        fs::write(
            conf.join("inetrc"),
            format!(
                "{{resolv_conf, \"\"}}.\n{{nameserver, {{127,0,0,1}}, {dns}}}.\n\
                 {{lookup, [dns]}}.\n"
            ),
        )
        .unwrap();
        let node = format!("ejabberd{dist}@localhost");
        fs::write(
            conf.join("ejabberdctl.cfg"),
            format!("ERL_DIST_PORT={dist}\nINET_DIST_INTERFACE=127.0.0.1\nERLANG_NODE={node}\n"),
        )
        .unwrap();
        fs::write(
            conf.join("ejabberd.yml"),
            format!(
                "hosts: [\"{E}\"]\n\
                 loglevel: info\n\
                 certfiles: [{pem}]\n\
                 ca_file: {ca}\n\
                 listen:\n\
                 \x20 - port: {c2s}\n\
                 \x20   ip: \"127.0.0.1\"\n\
                 \x20   module: ejabberd_c2s\n\
                 \x20   starttls: true\n\
                 \x20 - port: {s2s}\n\
                 \x20   ip: \"127.0.0.1\"\n\
                 \x20   module: ejabberd_s2s_in\n\
                 s2s_use_starttls: required\n\
                 outgoing_s2s_families: [ipv4]\n\
                 acl:\n\
                 \x20 testdomains:\n\
                 \x20   server_regexp: \"\\\\.test$\"\n\
                 access_rules:\n\
                 \x20 s2s_test:\n\
                 \x20   allow: testdomains\n\
                 s2s_access: s2s_test\n\
                 auth_method: internal\n\
                 modules:\n\
                 \x20 mod_roster: {{}}\n\
                 \x20 mod_ping: {{}}\n\
                 \x20 mod_disco: {{}}\n\
                 \x20 mod_s2s_dialback: {{}}\n",
                pem = yaml(&pem),
                ca = yaml(ca),
            ),
        )
        .unwrap();
        chown(&home, "ejabberd");
        let ctl_args = vec![
            "--config-dir".into(),
            conf.to_string_lossy().into_owned(),
            "--spool".into(),
            spool.to_string_lossy().into_owned(),
            "--logs".into(),
            logs.to_string_lossy().into_owned(),
        ];
        let mut cmd = self.as_user("ejabberd", &self.ejabberdctl);
        cmd.args(&ctl_args)
            .arg("foreground")
            // The Erlang cookie lives in $HOME: the spool, the same for ejabberdctl below.
            .env("HOME", &spool)
            .current_dir(&spool);
        let daemon = Daemon::spawn(
            "ejabberd",
            cmd,
            &home.join("ejabberd.out"),
            vec![home.join("ejabberd.out"), logs.join("ejabberd.log")],
        );
        Ejabberd {
            daemon,
            ctl_args,
            spool,
        }
    }
}

/// ejabberd, and what its `ejabberdctl` needs to reach it.
struct Ejabberd {
    daemon: Daemon,
    ctl_args: Vec<String>,
    spool: PathBuf,
}

impl Ejabberd {
    fn wait_ready(&self, ports: &[u16]) {
        self.daemon.wait_ready(ports);
    }

    /// `ejabberdctl register USER e.test PASSWORD` on the running node.
    fn register(&self, tools: &Tools, user: &str, password: &str) {
        let mut cmd = tools.as_user("ejabberd", &tools.ejabberdctl);
        cmd.args(&self.ctl_args)
            .args(["register", user, E, password])
            .env("HOME", &self.spool)
            .current_dir(&self.spool);
        let out = run(cmd, None, Duration::from_secs(60));
        assert!(
            out.success(),
            "ejabberdctl register\n{}{}",
            out.describe(),
            self.daemon.report()
        );
    }
}

/// A peer process in a process group of its own (setpriv, ejabberdctl's shell, the Erlang
/// VM and its helpers), stopped with the whole group; its logs are printed when the test fails.
struct Daemon {
    what: &'static str,
    child: RefCell<Option<Child>>,
    /// The files to show in a failure report.
    logs: Vec<PathBuf>,
    /// Prosody's configuration (for `prosodyctl`).
    config: Option<PathBuf>,
}

impl Daemon {
    fn spawn(what: &'static str, mut cmd: Command, out: &Path, logs: Vec<PathBuf>) -> Daemon {
        let file = File::create(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Daemon {
            what,
            child: RefCell::new(Some(child)),
            logs,
            config: None,
        }
    }

    fn assert_alive(&self) {
        let exited = self
            .child
            .borrow_mut()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            self.child.borrow_mut().take();
            panic!("{} exited: {status}\n{}", self.what, self.report());
        }
    }

    fn log_has(&self, text: &str) -> bool {
        self.logs
            .iter()
            .any(|l| fs::read_to_string(l).is_ok_and(|t| t.contains(text)))
    }

    /// Waits until the peer listens on every one of `ports`.
    fn wait_ready(&self, ports: &[u16]) {
        let deadline = Instant::now() + PEER_STARTUP;
        while !ports.iter().all(|p| port_open(*p)) {
            assert!(
                Instant::now() < deadline,
                "{} did not open {ports:?} within {PEER_STARTUP:?}\n{}",
                self.what,
                self.report()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `prosodyctl register USER p.test PASSWORD`.
    fn register(&self, tools: &Tools, user: &str, password: &str) {
        let config = self.config.as_ref().expect("a Prosody daemon");
        let mut cmd = tools.as_user("prosody", &tools.prosodyctl);
        cmd.arg("--config")
            .arg(config)
            .args(["register", user, P, password]);
        let out = run(cmd, None, Duration::from_secs(30));
        assert!(
            out.success(),
            "prosodyctl register\n{}{}",
            out.describe(),
            self.report()
        );
    }

    /// A signal (`-STOP`, `-CONT`) to the whole group.
    fn signal(&self, sig: &str) {
        let Some(id) = self.child.borrow().as_ref().map(Child::id) else {
            return;
        };
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{id}")])
            .status();
    }

    /// SIGTERM to the group, SIGKILL after 10 s.
    fn stop(&self) {
        let Some(mut child) = self.child.borrow_mut().take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The leader is gone; the rest of the group goes with it.
                signal("-KILL");
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL");
        let _ = child.wait();
    }

    fn report(&self) -> String {
        let mut r = String::new();
        for log in &self.logs {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(300)..];
            let _ = writeln!(
                r,
                "===== {} ({}) =====\n{}",
                self.what,
                log.display(),
                tail.join("\n")
            );
        }
        r
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn lua_unbound_installed() -> bool {
    Command::new("dpkg")
        .args(["-s", "lua-unbound"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Gives `dir` and everything in it to the system user `user`.
fn chown(dir: &Path, user: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success(), "chown -R {user} {}", dir.display());
}

/// `s` as a Lua string literal.
fn lua_string(s: &str) -> String {
    format!("{s:?}")
}
