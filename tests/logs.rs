//! Logs an operator acts on: a failed login names the account and the address in the shape the
//! README's fail2ban filter matches, and a disconnect says who and why.

use std::process::Command;
use std::time::Duration;

use super::support::{python, repo_root, run, Background, Runtime, ServerOptions, TestServer};
use super::{assert_logged_in, chat_command, login, Tls, ALICE, BOB, CLIENT_TIMEOUT};

per_runtime!(
    a_failed_login_is_logged_for_fail2ban_and_disconnects_say_why,
    the_stanza_trace_shows_what_goes_in_and_out_and_rustls_stays_quiet,
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
