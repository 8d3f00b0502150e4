//! The admin socket of a running server (`DATA_DIR/kontalkd.sock`) through the command line:
//! `status`, `sessions`, `kick`, `unlock` and `deluser` of an online user, and what the commands
//! say when no server runs. The clients are raw plaintext sessions (see `hostile::Raw`).

use std::os::unix::fs::PermissionsExt;

use super::hostile::Raw;
use super::support::{Run, Runtime, ServerOptions, TestServer};

per_runtime!(
    status_sessions_and_kick_over_the_admin_socket,
    a_lockout_is_cleared_over_the_admin_socket,
    deluser_of_an_online_user_ends_its_session_and_nothing_is_stored_for_it,
);

fn server(rt: Runtime, limits: &str) -> TestServer {
    let mut options = ServerOptions::with_users(
        rt,
        &[("alice@localhost", "pw-alice"), ("bob@localhost", "pw-bob")],
    );
    options.require_encryption = false;
    options.log_level = "info".into();
    options.extra_toml = format!("[limits]\n{limits}\n");
    TestServer::start(options)
}

#[track_caller]
fn assert_failed_with(out: &Run, what: &str) {
    assert!(
        !out.success() && out.stderr.contains(what),
        "expected a failure saying {what:?}\n{}",
        out.describe()
    );
}

fn status_sessions_and_kick_over_the_admin_socket(rt: Runtime) {
    let mut server = server(rt, "");
    let socket = server.dir.path().join("data/kontalkd.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the admin socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is owner-only");

    let mut alice = Raw::login(server.c2s_addr(), "alice", "pw-alice", "phone");
    let mut bob = Raw::login(server.c2s_addr(), "bob", "pw-bob", "pc");
    bob.wait_for("alice@localhost/phone", 0).ok();

    let status = server.admin(&["status"]);
    status.assert_success();
    for line in [
        &format!("kontalkd {}", env!("CARGO_PKG_VERSION")),
        "connections: 2",
        "sessions: 2",
        "store queue: 0 request(s) in flight",
    ] {
        assert!(status.has_line(line), "no {line:?}\n{}", status.describe());
    }
    assert!(
        status.value("uptime:").is_some() && status.value("memory:").is_some(),
        "{}",
        status.describe()
    );
    let kib: u64 = status
        .value("memory:")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kib > 1000, "resident memory in KiB: {}", status.describe());

    let sessions = server.admin(&["sessions"]);
    sessions.assert_success();
    assert!(sessions.has_line("2 session(s)"), "{}", sessions.describe());
    let line = sessions
        .lines("alice@localhost/phone")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("alice is listed\n{}", sessions.describe()));
    for field in [
        "address=127.0.0.1",
        "listener=starttls",
        "tls=no",
        "available=yes",
    ] {
        assert!(line.contains(field), "{field} in {line:?}");
    }
    // Bound a moment ago, by the wall clock.
    let since = line
        .split(' ')
        .find_map(|f| f.strip_prefix("since="))
        .unwrap_or("-");
    assert!(
        since.len() == 20 && since.ends_with('Z') && since.starts_with("20"),
        "since={since}"
    );
    assert_eq!(sessions.lines("bob@localhost/pc").len(), 1);

    // Kick one resource: it gets the stream error, the others go on.
    let kick = server.admin(&["kick", "alice@localhost/phone"]);
    kick.assert_success();
    assert!(
        kick.stdout.contains("1 session(s) ended"),
        "{}",
        kick.describe()
    );
    alice.expect_stream_error("policy-violation");
    assert!(alice.text().contains("kicked by the administrator"));
    let mark = bob.received.len();
    bob.send(b"<iq type='get' id='still-here'><ping xmlns='urn:xmpp:ping'/></iq>");
    bob.wait_for("still-here", mark)
        .expect("bob's session goes on");
    let sessions = server.admin(&["sessions"]);
    assert!(sessions.has_line("1 session(s)"), "{}", sessions.describe());
    assert!(server.log_text().contains(
        "jid=alice@localhost/phone reason=stream error policy-violation (kicked by the administrator)"
    ));
    assert_failed_with(
        &server.admin(&["kick", "alice@localhost"]),
        "has no session",
    );
    assert_failed_with(
        &server.admin(&["kick", "bob@example.org"]),
        "not an account",
    );

    // A bare JID ends every resource.
    let _bob2 = Raw::login(server.c2s_addr(), "bob", "pw-bob", "laptop");
    let kick = server.admin(&["kick", "bob@localhost"]);
    assert!(
        kick.stdout.contains("2 session(s) ended"),
        "{}",
        kick.describe()
    );
    bob.expect_stream_error("policy-violation");

    // Stopped: the socket is gone and the commands say that no server runs.
    server.stop();
    assert!(!socket.exists(), "the socket is removed at a clean exit");
    for command in [
        &["status"][..],
        &["sessions"],
        &["kick", "bob@localhost"],
        &["unlock", "--all"],
    ] {
        assert_failed_with(
            &server.admin(command),
            &format!(
                "the server is not running (no socket at {})",
                socket.display()
            ),
        );
    }
}

fn a_lockout_is_cleared_over_the_admin_socket(rt: Runtime) {
    let server = server(
        rt,
        "max_auth_failures_per_ip = 2\nauth_failure_window = 600",
    );
    assert!(server
        .admin(&["unlock", "127.0.0.1"])
        .assert_success()
        .stdout
        .contains("no failed logins recorded for 127.0.0.1"));
    for _ in 0..2 {
        let answer = Raw::connect(server.c2s_addr())
            .scram("alice", "wrong")
            .answer;
        assert!(answer.contains("not-authorized"), "{answer}");
    }
    let answer = Raw::connect(server.c2s_addr())
        .scram("alice", "pw-alice")
        .answer;
    assert!(
        answer.contains("temporary-auth-failure"),
        "locked out: {answer}"
    );
    let unlock = server.admin(&["unlock", "127.0.0.1"]);
    unlock.assert_success();
    assert!(
        unlock.has_line("cleared 127.0.0.1: 2 failed login(s), was locked out"),
        "{}",
        unlock.describe()
    );
    // At once, not after the window.
    let mut alice = Raw::login(server.c2s_addr(), "alice", "pw-alice", "back");
    alice.send(b"<iq type='get' id='in'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.wait_for("id='in'", 0).expect("logged in");
    assert!(server
        .admin(&["unlock", "--all"])
        .assert_success()
        .has_line("no failed logins recorded"));
    assert_failed_with(
        &server.admin(&["unlock", "not-an-address"]),
        "not an IP address",
    );
}

fn deluser_of_an_online_user_ends_its_session_and_nothing_is_stored_for_it(rt: Runtime) {
    let mut server = server(rt, "");
    let mut alice = Raw::login(server.c2s_addr(), "alice", "pw-alice", "phone");
    let mut bob = Raw::login(server.c2s_addr(), "bob", "pw-bob", "pc");
    // bob chats with alice before.
    bob.send(b"<message to='alice@localhost' type='chat' id='m1'><body>before</body></message>");
    alice.wait_for("before", 0).expect("delivered");

    let del = server.admin(&["deluser", "alice@localhost"]);
    del.assert_success();
    assert!(
        del.stdout
            .contains("deleted alice@localhost (1 connection(s) ended)"),
        "{}",
        del.describe()
    );
    alice.expect_stream_error("not-authorized");
    assert!(alice.text().contains("Account deleted"), "{}", alice.text());

    // A message to the deleted account is refused, not stored.
    let mark = bob.received.len();
    bob.send(b"<message to='alice@localhost' type='chat' id='m2'><body>after</body></message>");
    let answer = bob.wait_for("id='m2'", mark).expect("an answer");
    assert!(
        answer.contains("type='error'") && answer.contains("service-unavailable"),
        "{answer}"
    );
    assert_eq!(server.users(), ["bob@localhost"]);
    let answer = Raw::connect(server.c2s_addr())
        .scram("alice", "pw-alice")
        .answer;
    assert!(answer.contains("not-authorized"), "{answer}");
    assert_failed_with(
        &server.admin(&["deluser", "alice"]),
        "no account alice@localhost",
    );

    // passwd works on the database while the server runs: the next login uses the new one.
    server
        .admin(&["passwd", "bob", "--password", "new-bob"])
        .assert_success();
    Raw::login(server.c2s_addr(), "bob", "new-bob", "again");
    let old = Raw::connect(server.c2s_addr())
        .scram("bob", "pw-bob")
        .answer;
    assert!(old.contains("not-authorized"), "{old}");

    let log = server.log_text();
    assert!(
        !log.contains("no such account") && !log.contains("store request failed"),
        "the store never met the missing account\n{}",
        server.log_report()
    );
    assert!(log.contains("deluser: alice@localhost deleted, 1 connection(s) ended"));

    // Without a server, deluser works on the database.
    server.stop();
    let del = server.admin(&["deluser", "bob"]);
    del.assert_success();
    assert!(del.has_line("deleted bob@localhost"), "{}", del.describe());
    assert!(server.users().is_empty());
}
