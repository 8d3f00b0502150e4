//! End-to-end tests: the real server binaries (`kontalkd` on mio, `kontalkd-smol` on smol) on
//! loopback ports, driven by real XMPP clients that nobody here wrote: slixmpp (PyPI, scripts
//! in `tests/clients/`) and go-sendxmpp (Debian).
//!
//! Tools: `<repo>/.venv/bin/python` with slixmpp (or `$KONTALK_PYTHON`), `go-sendxmpp` on PATH;
//! `.ci/run` installs both. Without them a test prints `SKIP: ...` and passes, unless `CI` is set,
//! where it fails. A failing test prints the server's log (see `support::TestServer`).
//!
//! Run one test with its output: `cargo test -p kontalkd-e2e --test e2e NAME -- --nocapture`.

#[macro_use]
mod support;
/// The admin socket: status, sessions, kick, unlock, deluser of an online user.
mod admin;
/// `check` refuses what `run` refuses.
mod check;
/// The data directory: one server per directory, a writable store, private files.
mod datadir;
/// `kontalkd.doap` lists what disco#info advertises.
mod doap;
/// Hostile input: malformed XML, limits, floods and storms against the real binary.
mod hostile;
/// Kontalk clients (the emulator of tests/clients/kontalk_client.py) beside a SCRAM client.
mod kontalk;
/// Logs for operators: failed logins (fail2ban), disconnects.
mod logs;
/// The metrics endpoint, scraped while clients log in and chat.
mod metrics;
/// The Kontalk network: links between real servers with pinned certificates.
mod net;
/// Presence, blocking and last activity checked on the exact stanzas (RFC 6121, XEP-0191, XEP-0012).
mod presence;
/// Push notifications through a fake FCM on loopback: once per absence, retried, no content.
mod push;
/// The same client session on both runtimes gets the same bytes back.
mod runtimes;
/// Federation with Prosody and ejabberd: certificates and dialback, both ways, peers down.
mod s2s;
/// Signals: SIGHUP reloads the certificate, the log (level, file) and the core's policies and limits.
mod signals;
/// The session manager: rosters, subscriptions, presence, delivery, offline storage, blocking.
mod sm;
/// HTTP file upload (XEP-0363): slixmpp's plugin and the HTTPS listener, end to end.
mod upload;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{
    client_script, go_sendxmpp, python, run, Background, Run, Runtime, ServerOptions, TestServer,
    CLIENT_TIMEOUT,
};

// Every test runs once per runtime (`NAME::mio`, `NAME::smol`): the same scenario on each.
per_runtime!(
    slixmpp_logs_in_with_starttls_and_scram,
    slixmpp_logs_in_with_direct_tls,
    slixmpp_logs_in_with_each_mechanism,
    slixmpp_on_tls12_gets_no_tls_unique_but_plain_scram_works,
    two_users_chat_both_ways,
    go_sendxmpp_sends_a_message,
    go_sendxmpp_sends_a_message_over_direct_tls,
    wrong_password_is_refused_and_others_keep_chatting,
    in_band_registration_when_enabled,
    in_band_registration_refused_when_disabled,
    admin_commands,
);

const ALICE: (&str, &str) = ("alice@localhost", "alice's secret");
const BOB: (&str, &str) = ("bob@localhost", "bob-Pa55word");

#[derive(Clone, Copy, Debug)]
enum Tls {
    /// STARTTLS on the c2s port.
    StartTls,
    /// Direct TLS on its own port (XEP-0368).
    Direct,
}

impl Tls {
    fn flag(self) -> &'static str {
        match self {
            Tls::StartTls => "starttls",
            Tls::Direct => "direct",
        }
    }

    fn port(self, server: &TestServer) -> u16 {
        match self {
            Tls::StartTls => server.c2s_port,
            Tls::Direct => server.tls_port,
        }
    }
}

/// One of the slixmpp scripts, pointed at `server` over `tls`, with script-specific `args`.
fn slix(python: &Path, server: &TestServer, script: &str, tls: Tls, args: &[&str]) -> Command {
    let mut cmd = client_script(python, script);
    cmd.args(["--port", &tls.port(server).to_string(), "--tls", tls.flag()])
        .args(args);
    cmd
}

fn login(
    python: &Path,
    server: &TestServer,
    tls: Tls,
    jid: &str,
    password: &str,
    mech: Option<&str>,
) -> Run {
    let mut args = vec!["--jid", jid, "--password", password];
    if let Some(mech) = mech {
        args.extend(["--mech", mech]);
    }
    run(
        slix(python, server, "login.py", tls, &args),
        None,
        CLIENT_TIMEOUT,
    )
}

fn chat_command(
    python: &Path,
    server: &TestServer,
    a: (&str, &str),
    b: (&str, &str),
    rounds: u32,
) -> Command {
    let rounds = rounds.to_string();
    slix(
        python,
        server,
        "chat.py",
        Tls::StartTls,
        &[
            "--jid-a",
            a.0,
            "--password-a",
            a.1,
            "--jid-b",
            b.0,
            "--password-b",
            b.1,
            "--rounds",
            &rounds,
        ],
    )
}

/// A successful login: exit 0, `RESULT ok`, a bound full JID of the right account.
#[track_caller]
fn assert_logged_in(out: &Run, jid: &str) {
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "login of {jid} failed\n{}",
        out.describe()
    );
    let bound = out.value("BOUND").unwrap_or_default();
    assert!(
        bound.starts_with(&format!("{jid}/")) && bound.len() > jid.len() + 1,
        "bound JID {bound:?} is not a full JID of {jid}\n{}",
        out.describe()
    );
}

/// A login refused by SASL with `not-authorized` (exit code 2 of the scripts).
#[track_caller]
fn assert_refused(out: &Run, what: &str) {
    assert_eq!(
        out.code(),
        Some(2),
        "{what}: expected a SASL failure (exit 2)\n{}",
        out.describe()
    );
    assert!(
        out.lines("FAILURE")
            .iter()
            .any(|l| l.starts_with("FAILURE not-authorized")),
        "{what}: expected `FAILURE not-authorized`\n{}",
        out.describe()
    );
    assert!(
        out.value("BOUND").is_none(),
        "{what}: a refused login got a resource\n{}",
        out.describe()
    );
}

/// (to, from, body) of the `RECEIVED` lines.
fn received(out: &Run) -> Vec<(String, String, String)> {
    out.lines("RECEIVED")
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            parts.next();
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

fn normalize(body: &str) -> String {
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn slixmpp_logs_in_with_starttls_and_scram(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    let out = login(&python, &server, Tls::StartTls, ALICE.0, ALICE.1, None);
    assert_logged_in(&out, ALICE.0);
    // slixmpp picks the best mechanism it can do; it has no tls-exporter (Python's ssl lacks
    // it) so on TLS 1.3 it must settle on plain SCRAM, never PLAIN.
    let mech = out.value("MECHANISM").unwrap_or_default();
    assert!(
        mech.starts_with("SCRAM-SHA-"),
        "expected a SCRAM mechanism, got {mech:?}\n{}",
        out.describe()
    );
    eprintln!(
        "slixmpp chose {mech} over {}",
        out.value("TLS").unwrap_or("?")
    );
}

fn slixmpp_logs_in_with_direct_tls(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    let out = login(&python, &server, Tls::Direct, ALICE.0, ALICE.1, None);
    assert_logged_in(&out, ALICE.0);
    let tls = out.value("TLS").unwrap_or_default();
    assert!(
        tls.starts_with("TLSv1."),
        "direct TLS login without TLS? {tls:?}\n{}",
        out.describe()
    );
}

/// Each non-PLUS mechanism the server offers, forced one at a time (go-sendxmpp depends on PLAIN).
fn slixmpp_logs_in_with_each_mechanism(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        for tls in [Tls::StartTls, Tls::Direct] {
            let out = login(&python, &server, tls, ALICE.0, ALICE.1, Some(mech));
            assert_logged_in(&out, ALICE.0);
            assert_eq!(
                out.value("MECHANISM"),
                Some(mech),
                "{tls:?}\n{}",
                out.describe()
            );
        }
    }
}

/// On TLS 1.2 slixmpp prefers SCRAM-SHA-256-PLUS with `tls-unique` (Python's ssl has no
/// tls-exporter). The server offers tls-exporter only, so it must refuse that binding; plain
/// SCRAM over TLS 1.2 works.
fn slixmpp_on_tls12_gets_no_tls_unique_but_plain_scram_works(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    let port = server.c2s_port.to_string();
    let args = [
        "--port",
        &port,
        "--jid",
        ALICE.0,
        "--password",
        ALICE.1,
        "--max-tls",
        "1.2",
    ];

    let mut cmd = client_script(&python, "login.py");
    cmd.args(args);
    let plus = run(cmd, None, CLIENT_TIMEOUT);
    assert_eq!(plus.value("TLS"), Some("TLSv1.2"), "{}", plus.describe());
    assert_eq!(
        plus.value("TRIED"),
        Some("SCRAM-SHA-256-PLUS"),
        "{}",
        plus.describe()
    );
    assert_refused(&plus, "SCRAM-SHA-256-PLUS with tls-unique");

    let mut cmd = client_script(&python, "login.py");
    cmd.args(args).args(["--mech", "SCRAM-SHA-256"]);
    let scram = run(cmd, None, CLIENT_TIMEOUT);
    assert_logged_in(&scram, ALICE.0);
    assert_eq!(scram.value("TLS"), Some("TLSv1.2"), "{}", scram.describe());
}

fn two_users_chat_both_ways(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = run(
        chat_command(&python, &server, ALICE, BOB, 2),
        None,
        CLIENT_TIMEOUT,
    );
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "chat failed\n{}",
        out.describe()
    );

    // The script checked bodies and senders itself; check the record once more from here.
    let bound: Vec<&str> = out
        .lines("BOUND")
        .iter()
        .map(|l| l["BOUND ".len()..].trim())
        .collect();
    let alice = bound
        .iter()
        .find(|j| j.starts_with("alice@localhost/"))
        .expect("alice bound");
    let bob = bound
        .iter()
        .find(|j| j.starts_with("bob@localhost/"))
        .expect("bob bound");
    let got = received(&out);
    let to_bob: Vec<_> = got.iter().filter(|(to, _, _)| to == bob).collect();
    let to_alice: Vec<_> = got.iter().filter(|(to, _, _)| to == alice).collect();
    assert_eq!(
        to_bob.len(),
        2,
        "bob should get 2 messages\n{}",
        out.describe()
    );
    assert_eq!(
        to_alice.len(),
        2,
        "alice should get 2 messages\n{}",
        out.describe()
    );
    assert!(
        to_bob
            .iter()
            .all(|(_, from, body)| from == alice && body.contains("from A")),
        "{}",
        out.describe()
    );
    assert!(
        to_alice
            .iter()
            .all(|(_, from, body)| from == bob && body.contains("from B")),
        "{}",
        out.describe()
    );
    assert!(
        to_bob
            .iter()
            .any(|(_, _, body)| body.contains("<&> ünïcode")),
        "markup characters or non-ASCII text did not survive\n{}",
        out.describe()
    );
}

/// go-sendxmpp as alice, over STARTTLS on the c2s port (`-j 127.0.0.1:PORT`), to bob who
/// listens with slixmpp.
fn go_sendxmpp_sends_a_message(rt: Runtime) {
    go_sendxmpp_to_slixmpp(
        rt,
        Tls::StartTls,
        "Hello bob, from go-sendxmpp over STARTTLS <&> 'quotes' \"too\"",
    );
}

/// The same over direct TLS (`-t`, XEP-0368 port).
fn go_sendxmpp_sends_a_message_over_direct_tls(rt: Runtime) {
    go_sendxmpp_to_slixmpp(
        rt,
        Tls::Direct,
        "Hello bob, from go-sendxmpp over direct TLS <&> ünïcode",
    );
}

fn go_sendxmpp_to_slixmpp(rt: Runtime, tls: Tls, body: &str) {
    let python = require!(python());
    let sendxmpp = require!(go_sendxmpp());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);

    let mut bob = Background::spawn(slix(
        &python,
        &server,
        "listen.py",
        Tls::StartTls,
        &[
            "--jid",
            BOB.0,
            "--password",
            BOB.1,
            "--count",
            "1",
            "--timeout",
            "40",
        ],
    ));
    if let Err(why) = bob.wait_for("READY", Duration::from_secs(30)) {
        panic!(
            "bob is not online: {why}\n{}",
            bob.finish(Duration::from_secs(5)).describe()
        );
    }

    let out = send_with_go_sendxmpp(&sendxmpp, &server, tls, ALICE, BOB.0, body);
    if !out.success() {
        let listener = bob.finish(Duration::from_secs(1));
        panic!(
            "go-sendxmpp ({tls:?}) failed\n{}\n{}",
            out.describe(),
            listener.describe()
        );
    }
    match bob.wait_for("RECEIVED", Duration::from_secs(20)) {
        Ok(line) => {
            let mut parts = line.splitn(4, ' ').skip(2);
            let from = parts.next().unwrap_or_default();
            let got = parts.next().unwrap_or_default();
            assert!(
                from.starts_with("alice@localhost/"),
                "from {from:?} is not alice's full JID: {line}"
            );
            assert_eq!(
                normalize(got),
                normalize(body),
                "the body changed on the way"
            );
        }
        Err(why) => {
            let listener = bob.finish(Duration::from_secs(1));
            panic!(
                "bob did not get the message: {why}\n{}\n{}",
                out.describe(),
                listener.describe()
            );
        }
    }
    let listener = bob.finish(CLIENT_TIMEOUT);
    assert!(
        listener.success() && listener.has_line("RESULT ok"),
        "{}",
        listener.describe()
    );
}

fn send_with_go_sendxmpp(
    sendxmpp: &Path,
    server: &TestServer,
    tls: Tls,
    from: (&str, &str),
    to: &str,
    body: &str,
) -> Run {
    let mut cmd = Command::new(sendxmpp);
    cmd.args([
        "-d",
        "-u",
        from.0,
        "-p",
        from.1,
        "-j",
        &format!("127.0.0.1:{}", tls.port(server)),
    ])
    // -n: skip verification of the self-signed certificate.
    .arg("-n")
    // A config file of the user running the tests must not change anything.
    .env("HOME", server.dir.path());
    if let Tls::Direct = tls {
        cmd.arg("-t");
    }
    cmd.arg(to);
    run(cmd, Some(&format!("{body}\n")), CLIENT_TIMEOUT)
}

fn wrong_password_is_refused_and_others_keep_chatting(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);

    // alice and bob chat while wrong logins come in.
    let chat = Background::spawn(chat_command(&python, &server, ALICE, BOB, 3));

    let wrong = login(
        &python,
        &server,
        Tls::StartTls,
        ALICE.0,
        "not alice's password",
        None,
    );
    assert_refused(&wrong, "wrong password (SCRAM)");
    let wrong_plain = login(
        &python,
        &server,
        Tls::Direct,
        ALICE.0,
        "not alice's password",
        Some("PLAIN"),
    );
    assert_refused(&wrong_plain, "wrong password (PLAIN)");
    let nobody = login(
        &python,
        &server,
        Tls::StartTls,
        "mallory@localhost",
        "whatever",
        None,
    );
    assert_refused(&nobody, "unknown user");

    let during = chat.finish(CLIENT_TIMEOUT);
    assert!(
        during.success() && during.has_line("RESULT ok"),
        "chat during failed logins\n{}",
        during.describe()
    );
    // And afterwards: the failures locked nobody out.
    let after = run(
        chat_command(&python, &server, ALICE, BOB, 1),
        None,
        CLIENT_TIMEOUT,
    );
    assert!(
        after.success() && after.has_line("RESULT ok"),
        "chat after failed logins\n{}",
        after.describe()
    );
}

fn register(python: &Path, server: &TestServer, jid: &str, password: &str, force: bool) -> Run {
    let mut args = vec!["--jid", jid, "--password", password];
    if force {
        args.push("--force");
    }
    run(
        slix(python, server, "register.py", Tls::StartTls, &args),
        None,
        CLIENT_TIMEOUT,
    )
}

fn in_band_registration_when_enabled(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::start(ServerOptions {
        allow_registration: true,
        ..ServerOptions::with_users(rt, &[ALICE])
    });
    let carol = ("carol@localhost", "carol registered herself");

    let out = register(&python, &server, carol.0, carol.1, false);
    assert!(
        out.has_line("FEATURE register advertised"),
        "registration not advertised\n{}",
        out.describe()
    );
    assert!(
        out.has_line(&format!("REGISTERED {}", carol.0)),
        "registration failed\n{}",
        out.describe()
    );
    assert_logged_in(&out, carol.0);

    // The account stays: a fresh login, and the admin command sees it.
    assert_logged_in(
        &login(&python, &server, Tls::Direct, carol.0, carol.1, None),
        carol.0,
    );
    assert!(
        server.users().iter().any(|u| u == carol.0),
        "users: {:?}",
        server.users()
    );

    // An existing account cannot be taken over by registering it again.
    let again = register(&python, &server, ALICE.0, "hijack", false);
    assert_eq!(
        again.code(),
        Some(3),
        "registering an existing user must be refused\n{}",
        again.describe()
    );
    assert!(
        again
            .lines("FAILURE")
            .iter()
            .any(|l| l.starts_with("FAILURE conflict")),
        "{}",
        again.describe()
    );
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, ALICE.0, ALICE.1, None),
        ALICE.0,
    );
}

fn in_band_registration_refused_when_disabled(rt: Runtime) {
    let python = require!(python());
    let dave = ("dave@localhost", "dave tries anyway");
    // By default only phone numbers register (Kontalk's forms): the feature is there,
    // a username and password are refused. Without phone registration, no feature.
    for kontalk in [true, false] {
        let server = TestServer::start(ServerOptions {
            extra_toml: format!("[kontalk]\nregistration = {kontalk}\n"),
            ..ServerOptions::with_users(rt, &[ALICE])
        });
        let out = register(&python, &server, dave.0, dave.1, true);
        let feature = if kontalk { "advertised" } else { "absent" };
        assert!(
            out.has_line(&format!("FEATURE register {feature}")),
            "registration feature should be {feature}\n{}",
            out.describe()
        );
        assert_eq!(
            out.code(),
            Some(3),
            "registration must be refused\n{}",
            out.describe()
        );
        assert!(
            out.lines("FAILURE")
                .iter()
                .any(|l| l.starts_with("FAILURE service-unavailable")
                    || l.starts_with("FAILURE not-allowed")),
            "expected service-unavailable or not-allowed\n{}",
            out.describe()
        );
        assert!(
            !server.users().iter().any(|u| u == dave.0),
            "dave was created anyway"
        );
        assert_refused(
            &login(&python, &server, Tls::StartTls, dave.0, dave.1, None),
            "login of the refused account",
        );
    }
}

fn admin_commands(rt: Runtime) {
    let python = require!(python());
    let mut server = TestServer::with_users(rt, &[ALICE]);
    let carol = "carol@localhost";

    // adduser, with --password and with the password on stdin, while the server runs.
    server
        .admin(&["adduser", carol, "--password", "carol-1"])
        .assert_success();
    server
        .admin_with_input(&["adduser", "dave@localhost"], Some("dave from stdin\n"))
        .assert_success();
    let users = server.users();
    for jid in [ALICE.0, carol, "dave@localhost"] {
        assert!(
            users.iter().any(|u| u == jid),
            "`users` does not list {jid}: {users:?}"
        );
    }
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, carol, "carol-1", None),
        carol,
    );
    assert_logged_in(
        &login(
            &python,
            &server,
            Tls::StartTls,
            "dave@localhost",
            "dave from stdin",
            None,
        ),
        "dave@localhost",
    );

    // adduser of an existing account: refused, with a message that says so.
    let dup = server.admin(&["adduser", carol, "--password", "other"]);
    assert!(
        !dup.success(),
        "adduser of an existing user succeeded\n{}",
        dup.describe()
    );
    let said = format!("{}{}", dup.stdout, dup.stderr).to_lowercase();
    assert!(
        said.contains("exist"),
        "adduser of an existing user should say it exists\n{}",
        dup.describe()
    );
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, carol, "carol-1", None),
        carol,
    );

    // passwd: the new password works, the old one no longer does.
    server
        .admin(&["passwd", carol, "--password", "carol-2"])
        .assert_success();
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, carol, "carol-2", None),
        carol,
    );
    assert_refused(
        &login(&python, &server, Tls::StartTls, carol, "carol-1", None),
        "old password after passwd",
    );

    // deluser: gone from the list and cannot log in.
    server.admin(&["deluser", carol]).assert_success();
    let users = server.users();
    assert!(
        !users.iter().any(|u| u == carol),
        "deleted user still listed: {users:?}"
    );
    assert!(
        users.iter().any(|u| u == ALICE.0),
        "deluser removed someone else: {users:?}"
    );
    assert_refused(
        &login(&python, &server, Tls::StartTls, carol, "carol-2", None),
        "login after deluser",
    );

    // check: the running config is fine; a config with bad values names each bad key.
    let ok = server.admin(&["check"]);
    ok.assert_success();
    let bad = server.dir.path().join("bad.toml");
    let text: String = server
        .config_text()
        .lines()
        .map(|l| {
            if l.starts_with("port =") {
                "port = 0".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&bad, format!("{text}\n[limits]\nmax_depth = 0\n")).unwrap();
    let mut cmd = Command::new(rt.binary());
    cmd.arg("--config").arg(&bad).arg("check");
    let checked = run(cmd, None, Duration::from_secs(30));
    assert_eq!(
        checked.code(),
        Some(1),
        "check of a bad config must exit 1\n{}",
        checked.describe()
    );
    let said = format!("{}{}", checked.stdout, checked.stderr);
    for key in ["limits.max_depth", "c2s.port"] {
        assert!(
            said.lines().any(|l| l.contains(key)),
            "check does not name {key}\n{}",
            checked.describe()
        );
    }

    // SIGTERM stops the server cleanly.
    let status = server.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "kontalkd did not exit 0 on SIGTERM: {status:?}\n{}",
        server.log_report()
    );
}
