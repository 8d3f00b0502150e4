//! Logs an operator acts on: a failed login names the account and the address in the shape the
//! README's fail2ban filter matches, and a disconnect says who and why.

use std::process::Command;
use std::time::Duration;

use super::hostile::Raw;
use super::support::{python, repo_root, run, Background, Runtime, ServerOptions, TestServer};
use super::{assert_logged_in, chat_command, login, Tls, ALICE, BOB, CLIENT_TIMEOUT};

per_runtime!(
    a_failed_login_is_logged_for_fail2ban_and_disconnects_say_why,
    the_stanza_trace_shows_what_goes_in_and_out_and_rustls_stays_quiet,
    a_store_failure_is_one_error_line_that_says_what_was_lost,
);

/// The `failregex` of the README's fail2ban filter.
fn readme_failregex() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    readme
        .lines()
        .find_map(|l| l.strip_prefix("failregex = "))
        .expect("the README shows a fail2ban failregex")
        .trim()
        .to_owned()
}

fn a_failed_login_is_logged_for_fail2ban_and_disconnects_say_why(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    let wrong = login(
        &python,
        &server,
        Tls::StartTls,
        ALICE.0,
        "not the password",
        None,
    );
    assert!(!wrong.success(), "{}", wrong.describe());
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, ALICE.0, ALICE.1, None),
        ALICE.0,
    );
    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "login failed: account={} address=127.0.0.1 reason=not-authorized",
            ALICE.0
        )),
        "no failed-login line\n{}",
        server.log_report()
    );
    // fail2ban's <HOST> is an address; the filter must find exactly the failed login's.
    let pattern = readme_failregex().replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)");
    let script = "import re, sys\n\
                  hosts = [m.group('host') for m in re.finditer(sys.argv[1], sys.stdin.read())]\n\
                  print(' '.join(hosts))\n";
    let mut cmd = Command::new(&python);
    cmd.args(["-c", script, &pattern]);
    let out = run(cmd, Some(&log), Duration::from_secs(20));
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        "127.0.0.1",
        "the README's filter should match the one failed login\n{}",
        out.describe()
    );
    // Both sessions ended; each disconnect says from where and why.
    let disconnects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("disconnect: conn=") && l.contains("address=127.0.0.1"))
        .collect();
    assert!(
        disconnects.len() >= 2 && disconnects.iter().all(|l| l.contains(" reason=")),
        "disconnect lines: {disconnects:#?}\n{}",
        server.log_report()
    );
    assert!(
        disconnects
            .iter()
            .any(|l| l.contains(&format!("jid={}/", ALICE.0))),
        "the logged-in session's disconnect names its JID: {disconnects:#?}"
    );
}

fn the_stanza_trace_shows_what_goes_in_and_out_and_rustls_stays_quiet(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::start(ServerOptions {
        log_level: "trace".into(),
        ..ServerOptions::with_users(rt, &[ALICE, BOB])
    });
    let chat =
        Background::spawn(chat_command(&python, &server, ALICE, BOB, 1)).finish(CLIENT_TIMEOUT);
    assert!(
        chat.success() && chat.has_line("RESULT ok"),
        "{}",
        chat.describe()
    );
    let log = server.log_text();
    let traced = |dir: &str| {
        log.lines()
            .any(|l| l.contains(" TRACE ") && l.contains(&format!("{dir}: <message")))
    };
    assert!(
        traced("in") && traced("out"),
        "the trace should show the messages both ways\n{}",
        server.log_report()
    );
    assert!(
        !log.lines()
            .any(|l| (l.contains(" TRACE ") || l.contains(" DEBUG ")) && l.contains(" rustls")),
        "rustls's own records should stay out of the log unless RUST_LOG asks\n{}",
        server.log_report()
    );
}

/// An account deleted behind the server's back (here with Python's sqlite3, as an operator's
/// script might): the next change the session stores fails in the store. The failure is one
/// line at `error`, naming the request, the account, the store's reason and what the server did
/// about it; the client gets its error.
fn a_store_failure_is_one_error_line_that_says_what_was_lost(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::start(ServerOptions {
        require_encryption: false,
        ..ServerOptions::with_users(rt, &[ALICE])
    });
    let user = ALICE.0.split('@').next().unwrap();
    let mut alice = Raw::login(server.c2s_addr(), user, ALICE.1, "phone");
    let db = server.dir.path().join("data/kontalkd.sqlite");
    let mut cmd = Command::new(&python);
    cmd.args([
        "-c",
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
         print(c.execute('DELETE FROM accounts WHERE username = ?', (sys.argv[2],)).rowcount)\n",
    ])
    .arg(&db)
    .arg(user);
    let out = run(cmd, None, Duration::from_secs(20));
    out.assert_success();
    assert_eq!(out.stdout.trim(), "1", "{}", out.describe());

    let mark = alice.mark();
    alice.send(b"<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>");
    let answer = alice
        .wait_for("internal-server-error", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    assert!(answer.contains("id='v1'"), "{answer}");

    let log = server.log_text();
    let about: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no such account"))
        .collect();
    assert_eq!(
        about.len(),
        1,
        "one line for one failed request: {about:#?}\n{}",
        server.log_report()
    );
    let line = about[0];
    for part in [
        " ERROR ",
        "store: storing the vCard of alice@localhost failed: no such account 'alice'; ",
        "internal-server-error",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(
        !log.lines()
            .any(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l != line),
        "no other warning or error\n{}",
        server.log_report()
    );
}
