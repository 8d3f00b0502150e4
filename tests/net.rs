//! The Kontalk network's links between real servers: each with a certificate of its own, pinned
//! by the others' lists (`kontalkd net-fingerprint`); a link comes up, comes back after its
//! peer restarts, and a server that is not listed is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::support::{
    client_script, free_ports, python, run, toml_string, Background, Runtime, ServerOptions,
    TempDir, TestServer, CLIENT_TIMEOUT,
};

per_runtime!(
    servers_link_with_pinned_certificates_share_their_users_and_link_again_after_a_restart,
    three_servers_carry_chat_and_presence_and_lose_nothing_when_a_home_is_killed
);

/// A data directory with the server's certificate made in it, and its fingerprint.
fn prepared(rt: Runtime, dir: &Path, name: &str) -> (PathBuf, String) {
    prepared_for(rt, dir, name, "localhost")
}

/// [`prepared`] for a network whose domain is `domain`.
pub(super) fn prepared_for(rt: Runtime, dir: &Path, name: &str, domain: &str) -> (PathBuf, String) {
    let data = dir.join(format!("data-{name}"));
    let config = dir.join(format!("{name}.toml"));
    fs::write(
        &config,
        format!(
            "[server]\ndomain = {}\ndata_dir = {}\n",
            toml_string(domain),
            toml_string(&data.to_string_lossy())
        ),
    )
    .unwrap();
    let mut cmd = Command::new(rt.binary());
    cmd.arg("--config").arg(&config).arg("net-fingerprint");
    let out = run(cmd, None, Duration::from_secs(20));
    out.assert_success();
    (data, out.stdout.trim().to_owned())
}

/// `[net]` for `host` on `port`, listing `servers` (host, Net port, fingerprint, the
/// address of its clients).
pub(super) fn net_toml(host: &str, port: u16, servers: &[(&str, u16, &str, &str)]) -> String {
    let mut t = format!("[net]\nhost = \"{host}\"\nlisten = \"127.0.0.1\"\nport = {port}\n");
    for (h, p, f, clients) in servers {
        t.push_str(&format!(
            "[[net.servers]]\nhost = \"{h}\"\naddress = \"127.0.0.1:{p}\"\n\
             fingerprint = \"{f}\"\nclients = \"{clients}\"\n"
        ));
    }
    t
}

/// A client that starts SCRAM-SHA-256 as `user` on `server` (plaintext): what it receives
/// until the server closes the stream.
fn scram_start(server: &TestServer, user: &str) -> String {
    use base64::Engine;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.c2s_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = base64::engine::general_purpose::STANDARD.encode(format!("n,,n={user},r=0a1b2c3d"));
    write!(
        s,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>\
         <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("</stream:stream>") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn start(rt: Runtime, data: &Path, net: String, users: &[(&str, &str)]) -> TestServer {
    TestServer::start(ServerOptions {
        data_from: Some(data.to_owned()),
        extra_toml: net,
        log_level: "info".into(),
        require_encryption: false,
        ..ServerOptions::with_users(rt, users)
    })
}

/// Waits until `server`'s status has `line`.
pub(super) fn wait_status(server: &TestServer, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = server.admin(&["status"]);
        if status.stdout.contains(line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no '{line}' in the status:\n{}",
            status.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `server`'s log has `line` at least `times` times.
fn wait_log(server: &TestServer, line: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log_text().matches(line).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {times}x '{line}' in the log:\n{}",
            server.log_report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn servers_link_with_pinned_certificates_share_their_users_and_link_again_after_a_restart(
    rt: Runtime,
) {
    let dir = TempDir::new("kontalkd-e2e-net");
    let (data_a, fpr_a) = prepared(rt, dir.path(), "a");
    let (data_b, fpr_b) = prepared(rt, dir.path(), "b");
    let (data_c, _) = prepared(rt, dir.path(), "c");
    assert_ne!(fpr_a, fpr_b, "each server has a certificate of its own");
    let (port_a, port_b) = free_ports();
    // a.localhost sorts first: it opens the link, b.localhost accepts it.
    let mut b = start(
        rt,
        &data_b,
        net_toml(
            "b.localhost",
            port_b,
            &[("a.localhost", port_a, &fpr_a, "a.localhost")],
        ),
        &[("bob@localhost", "bobpw")],
    );
    let b_clients = b.c2s_addr().to_string();
    let a = start(
        rt,
        &data_a,
        net_toml(
            "a.localhost",
            port_a,
            &[("b.localhost", port_b, &fpr_b, &b_clients)],
        ),
        &[],
    );
    wait_log(&a, "net: link to b.localhost up", 1);
    wait_log(&b, "net: link to a.localhost up", 1);
    let status = a.admin(&["status"]);
    status.assert_success();
    assert!(
        status
            .stdout
            .contains("network: localhost as a.localhost, 1 of 1 link(s) up")
            && status.stdout.contains("  b.localhost up address=127.0.0.1"),
        "{}",
        status.describe()
    );

    // Garbage on a's Net port: refused, and the link to b stays up.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port_a)).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = raw.write_all(b"<stream:stream to='a.localhost'>hello\r\n");
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        wait_log(&a, "net: refused a link from 127.0.0.1", 1);
        wait_status(&a, "1 of 1 link(s) up");
    }

    // The directory: a knows b's user, and one made while both run.
    wait_status(&a, "directory: 1 user(s) on the other servers");
    // bob's client came to a: it is sent to b, where bob lives.
    let got = scram_start(&a, "bob");
    assert!(
        got.contains(&format!(
            "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{b_clients}</see-other-host>"
        )),
        "{got}\n{}",
        a.log_report()
    );
    b.admin(&["adduser", "carol@localhost", "--password", "carolpw"])
        .assert_success();
    wait_status(&a, "directory: 2 user(s) on the other servers");

    // b goes away: a says so and tries again until b is back.
    b.stop();
    wait_log(&a, "net: link to b.localhost down", 1);
    // Down, or between two attempts; not up.
    let status = a.admin(&["status"]);
    assert!(
        status.stdout.contains("0 of 1 link(s) up") && !status.stdout.contains("b.localhost up"),
        "{}",
        status.describe()
    );
    b.restart();
    wait_log(&a, "net: link to b.localhost up", 2);
    wait_log(&b, "net: link to a.localhost up", 2);

    // A server that a does not list (0.localhost sorts first, so it opens
    // the link) is refused with host-unknown, and keeps trying.
    let (port_c, _) = free_ports();
    let c = start(
        rt,
        &data_c,
        net_toml(
            "0.localhost",
            port_c,
            &[("a.localhost", port_a, &fpr_a, "a.localhost")],
        ),
        &[],
    );
    wait_log(
        &a,
        "net: refused a link from 127.0.0.1: stream error host-unknown",
        2,
    );
    wait_log(
        &c,
        "net: link to a.localhost down: stream error host-unknown",
        1,
    );
    assert!(!c.log_text().contains("net: link to a.localhost up"));
    assert_eq!(
        a.log_text().matches("net: link to b.localhost up").count(),
        2,
        "the refusal did not touch the link to b"
    );
}

/// A slixmpp script against `server` (STARTTLS on its client port).
fn slix(python: &Path, server: &TestServer, script: &str, args: &[&str]) -> Command {
    let mut cmd = client_script(python, script);
    cmd.args([
        "--port",
        &server.c2s_addr().port().to_string(),
        "--tls",
        "starttls",
    ])
    .args(args);
    cmd
}

/// The proof end to end: three servers of one network (`localhost`), a user on each;
/// a message and a presence subscription across servers; a client that comes to the wrong
/// server is sent home (see-other-host) and logs in there; then one server is killed (`kill -9`)
/// while a user of another sends its user twenty messages, and started again: each arrives
/// once, in order.
fn three_servers_carry_chat_and_presence_and_lose_nothing_when_a_home_is_killed(rt: Runtime) {
    let python = require!(python());
    let dir = TempDir::new("kontalkd-e2e-net3");
    let names = ["a", "b", "c"];
    let prepared: Vec<(PathBuf, String)> =
        names.iter().map(|n| prepared(rt, dir.path(), n)).collect();
    let (p0, p1) = free_ports();
    let (p2, _) = free_ports();
    let ports = [p0, p1, p2];
    let users = [
        ("alice@localhost", "alicepw"),
        ("bob@localhost", "bobpw"),
        ("carol@localhost", "carolpw"),
    ];
    // Each lists the others with their Net port, fingerprint and client address (known
    // once they run: they start with a placeholder, then again with the real ones).
    let toml = |i: usize, clients: &[String]| {
        let others: Vec<(String, u16, &str, &str)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                let host = format!("{}.localhost", names[j]);
                (host, ports[j], prepared[j].1.as_str(), clients[j].as_str())
            })
            .collect();
        let list: Vec<(&str, u16, &str, &str)> = others
            .iter()
            .map(|(h, p, f, c)| (h.as_str(), *p, *f, *c))
            .collect();
        net_toml(&format!("{}.localhost", names[i]), ports[i], &list)
    };
    let placeholders: Vec<String> = names
        .iter()
        .map(|n| format!("{n}.localhost:5222"))
        .collect();
    let mut servers: Vec<TestServer> = (0..3)
        .map(|i| start(rt, &prepared[i].0, toml(i, &placeholders), &users[i..=i]))
        .collect();
    let clients: Vec<String> = servers.iter().map(|s| s.c2s_addr().to_string()).collect();
    for (i, s) in servers.iter_mut().enumerate() {
        s.stop();
        s.options.extra_toml = toml(i, &clients);
        std::fs::write(&s.config, s.config_text()).unwrap();
        s.restart();
    }
    for s in &servers {
        wait_status(s, "2 of 2 link(s) up");
        wait_status(s, "directory: 2 user(s) on the other servers");
    }
    let [alice, bob, carol] = users;

    // alice (on a) writes to bob (on b).
    let mut listener = Background::spawn(slix(
        &python,
        &servers[1],
        "listen.py",
        &[
            "--jid",
            bob.0,
            "--password",
            bob.1,
            "--count",
            "1",
            "--timeout",
            "40",
        ],
    ));
    if let Err(why) = listener.wait_for("READY", Duration::from_secs(30)) {
        panic!(
            "bob is not online: {why}\n{}",
            listener.finish(Duration::from_secs(5)).describe()
        );
    }
    let sent = run(
        slix(
            &python,
            &servers[0],
            "send.py",
            &[
                "--jid",
                alice.0,
                "--password",
                alice.1,
                "--to",
                bob.0,
                "--body",
                "hello from a",
            ],
        ),
        None,
        CLIENT_TIMEOUT,
    );
    sent.assert_success();
    let got = listener.finish(CLIENT_TIMEOUT);
    assert!(
        got.lines("RECEIVED")
            .iter()
            .any(|l| l.contains("alice@localhost/") && l.ends_with("hello from a")),
        "{}\n{}\n{}",
        got.describe(),
        servers[0].log_report(),
        servers[1].log_report()
    );

    // bob's client comes to a: it is sent to b (see-other-host), follows, and logs in there.
    let out = run(
        slix(
            &python,
            &servers[0],
            "login.py",
            &["--jid", bob.0, "--password", bob.1, "--follow-redirect"],
        ),
        None,
        CLIENT_TIMEOUT,
    );
    assert!(
        out.success()
            && out.has_line(&format!("REDIRECTED {}", clients[1]))
            && out
                .lines("BOUND")
                .iter()
                .any(|l| l.contains("bob@localhost/")),
        "{}",
        out.describe()
    );

    // alice and carol (on c) subscribe to each other; presence flows both ways.
    let out = run(
        slix(
            &python,
            &servers[0],
            "subscribe.py",
            &[
                "--jid-a",
                alice.0,
                "--password-a",
                alice.1,
                "--jid-b",
                carol.0,
                "--password-b",
                carol.1,
                "--port-b",
                &servers[2].c2s_addr().port().to_string(),
                "--timeout",
                "40",
            ],
        ),
        None,
        CLIENT_TIMEOUT,
    );
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "subscription across servers: {}\n{}",
        out.value("RESULT").unwrap_or("no RESULT line"),
        out.describe()
    );
    for line in [
        format!("ITEM {} {} subscription=both", alice.0, carol.0),
        format!("ITEM {} {} subscription=both", carol.0, alice.0),
    ] {
        assert!(out.has_line(&line), "no line {line:?}\n{}", out.describe());
    }

    // carol is offline; alice writes twenty messages; c is killed after the fifth is sent,
    // and started again a moment later.
    let bodies: Vec<String> = (1..=20).map(|i| format!("crash-{i:02}")).collect();
    let mut args = vec![
        "--jid",
        alice.0,
        "--password",
        alice.1,
        "--to",
        carol.0,
        "--pause",
        "0.1",
    ];
    for b in &bodies {
        args.extend(["--body", b.as_str()]);
    }
    args.extend(["--timeout", "60"]);
    let mut sender = Background::spawn(slix(&python, &servers[0], "send.py", &args));
    for _ in 0..5 {
        if let Err(why) = sender.wait_for("SENT", Duration::from_secs(30)) {
            panic!(
                "alice sends nothing: {why}\n{}",
                sender.finish(Duration::from_secs(5)).describe()
            );
        }
    }
    assert!(
        servers[2].kill9().is_some(),
        "c was not running\n{}",
        servers[2].log_report()
    );
    let sent = sender.finish(CLIENT_TIMEOUT);
    assert!(sent.has_line("SENT-ALL"), "{}", sent.describe());
    servers[2].restart();
    wait_status(&servers[2], "2 of 2 link(s) up");
    let got = run(
        slix(
            &python,
            &servers[2],
            "listen.py",
            &[
                "--jid",
                carol.0,
                "--password",
                carol.1,
                "--count",
                "20",
                "--timeout",
                "60",
            ],
        ),
        None,
        Duration::from_secs(90),
    );
    let received: Vec<String> = got
        .lines("RECEIVED")
        .iter()
        .filter_map(|l| l.rsplit(' ').next())
        .filter(|b| b.starts_with("crash-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        received,
        bodies,
        "every message once, in order\n{}\n{}\n{}",
        got.describe(),
        servers[0].log_report(),
        servers[2].log_report()
    );
    // Nothing is left in a's outbox for c.
    let status = servers[0].admin(&["status"]);
    assert!(
        status.stdout.contains("2 of 2 link(s) up"),
        "{}",
        status.describe()
    );
    for s in &mut servers {
        s.stop();
    }
}
