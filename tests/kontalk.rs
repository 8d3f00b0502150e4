//! Kontalk clients, as the emulator of `tests/clients/kontalk_client.py` (written from
//! KONTALK.md: the Android client's bytes) drives them: registration by phone number with the
//! code from the file provider, login with the bridge certificate (SASL EXTERNAL), keys,
//! subscriptions, chat with receipts and stream management, contact match, the server list and
//! group messages; a slixmpp client with SCRAM on the same server at the same time. And the
//! registrations and logins that must fail, each with the error the client tells apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::support::{
    client_script, free_ports, load_generator, python, run, toml_string, Background, Run, Runtime,
    ServerOptions, TempDir, TestServer,
};
use super::ALICE;

per_runtime!(
    a_kontalk_client_registers_logs_in_and_chats_beside_a_scram_client,
    bad_registrations_and_logins_are_refused_with_the_errors_the_client_tells_apart,
    a_key_rolls_over_and_a_private_key_backup_comes_back_by_its_token,
    codes_go_through_an_http_sms_gateway_and_a_refusal_is_not_a_lost_number,
    the_benches_register_and_log_in_kontalk_clients_with_codes_through_their_own_gateway,
    a_kontalk_client_sends_a_photo_through_the_upload_service,
);

const TIMEOUT: Duration = Duration::from_secs(90);

/// The lowercase hex SHA-1 of a phone number: its user id.
fn user_id(phone: &str) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(phone.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server whose verification codes go to `codes`, with the SCRAM account alice.
fn server(rt: Runtime, codes: &Path) -> TestServer {
    TestServer::start(ServerOptions {
        extra_toml: format!(
            "[kontalk]\nverification = \"file\"\nverification_file = {}\n",
            toml_string(&codes.display().to_string())
        ),
        ..ServerOptions::with_users(rt, &[ALICE])
    })
}

/// The emulator with `state` (its keys) and `args` (its commands).
fn emulator(
    python: &Path,
    server: &TestServer,
    state: &Path,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = client_script(python, "kontalk_client.py");
    cmd.args([
        "--port",
        &server.c2s_port.to_string(),
        "--domain",
        "localhost",
        "--state",
        &state.display().to_string(),
        "--timeout",
        "60",
    ])
    .args(args);
    cmd
}

fn kontalk(python: &Path, server: &TestServer, state: &Path, args: &[&str]) -> Run {
    run(emulator(python, server, state, args), None, TIMEOUT)
}

fn register(python: &Path, server: &TestServer, state: &Path, phone: &str, codes: &Path) -> Run {
    let out = kontalk(
        python,
        server,
        state,
        &[
            "register",
            "--phone",
            phone,
            "--code-file",
            &codes.display().to_string(),
        ],
    );
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "registration of {phone}:\n{}\n{}",
        out.describe(),
        server.log_report()
    );
    out
}

/// The emulator needs `cryptography` beside slixmpp.
fn kontalk_python() -> Option<std::path::PathBuf> {
    let python = python()?;
    let ok = std::process::Command::new(&python)
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    super::support::missing(
        &format!("{} cannot import cryptography", python.display()),
        "the venv's pip install cryptography==50.0.2 (or run .ci/run)",
    )
}

fn a_kontalk_client_registers_logs_in_and_chats_beside_a_scram_client(rt: Runtime) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk");
    let codes = dir.path().join("codes");
    let server = server(rt, &codes);
    let (alice_phone, bob_phone) = ("+15555215554", "+15555215555");
    let (a_state, b_state) = (dir.path().join("alice"), dir.path().join("bob"));
    let out = register(&python, &server, &a_state, alice_phone, &codes);
    let a = format!("{}@localhost", user_id(alice_phone));
    assert_eq!(
        out.value("REGISTERED"),
        Some(a.as_str()),
        "{}",
        out.describe()
    );
    // The user's self-signature first, then the server's certification (the
    // client reads its key flags from the first).
    assert_eq!(out.value("KEYFLAGS"), Some("0x21"), "{}", out.describe());
    let sigs = out.lines("UIDSIG");
    assert!(
        sigs.len() == 2
            && sigs[0].contains("0x13")
            && sigs[0].ends_with("self")
            && sigs[1].contains("0x10"),
        "{}",
        out.describe()
    );
    let a_print = out.value("FINGERPRINT").expect("a fingerprint").to_owned();
    let out = register(&python, &server, &b_state, bob_phone, &codes);
    let b_print = out.value("FINGERPRINT").expect("a fingerprint").to_owned();
    let b = format!("{}@localhost", user_id(bob_phone));

    // Bob listens (and approves alice's subscription as the client does for a user of its
    // network) while alice subscribes, asks for keys, matches contacts, lists servers, chats
    // and writes to a group.
    let mut bob = Background::spawn(emulator(
        &python,
        &server,
        &b_state,
        &["login", "listen", "--count", "2"],
    ));
    if let Err(why) = bob.wait_for("READY", Duration::from_secs(60)) {
        panic!(
            "bob is not online: {why}\n{}\n{}",
            bob.finish(Duration::from_secs(5)).describe(),
            server.log_report()
        );
    }
    let nobody = format!("{}@localhost", "0".repeat(40));
    let out = kontalk(
        &python,
        &server,
        &a_state,
        &[
            "login",
            "subscribe",
            "--to",
            &b,
            "--wait-subscribed",
            "pubkey",
            "--of",
            &b,
            "match",
            "--jids",
            &format!("{b},{nobody}"),
            "serverlist",
            "chat",
            "--to",
            &b,
            "--body",
            "hello bob",
            "--wait-receipt",
            "group",
            "--to",
            &b,
            "--body",
            "group hi",
        ],
    );
    assert!(
        out.success(),
        "alice:\n{}\n{}",
        out.describe(),
        server.log_report()
    );
    // SASL EXTERNAL alone is offered to a client with its certificate.
    assert_eq!(out.value("MECHANISMS"), Some("EXTERNAL"));
    assert_eq!(
        out.value("BOUND").map(|j| j.split('/').next().unwrap()),
        Some(a.as_str())
    );
    assert!(out.has_line("SM enabled"));
    // The server's key, and that it certified alice's.
    let server_print = out.value("SERVERKEY").expect("the server key").to_owned();
    // The operator sees the same fingerprint.
    let fp = server.admin(&["fingerprint"]);
    assert!(
        fp.success() && fp.stdout.trim() == server_print,
        "{}",
        fp.describe()
    );
    assert!(
        out.has_line("CERTIFIED-BY-SERVER 0x10 valid"),
        "{}",
        out.describe()
    );
    assert!(
        out.has_line(&format!("SUBSCRIBED {b}")),
        "{}",
        out.describe()
    );
    assert!(
        out.has_line(&format!("PUBKEY {b} {b_print}")),
        "{}",
        out.describe()
    );
    // Contact match: the existing user only, answered from probe@.
    assert_eq!(
        out.lines("MATCH"),
        [format!("MATCH {b}")],
        "{}",
        out.describe()
    );
    assert!(
        out.has_line(&format!("SERVER localhost {server_print}")),
        "{}",
        out.describe()
    );
    // "Sent" is the server's ack; "delivered" is bob's receipt.
    let acked = out.lines("ACKED");
    assert_eq!(acked.len(), 2, "{}", out.describe());
    assert_eq!(out.lines("RECEIPT").len(), 1, "{}", out.describe());

    let bob = bob.finish(TIMEOUT);
    assert!(
        bob.success(),
        "bob:\n{}\n{}",
        bob.describe(),
        server.log_report()
    );
    // Alice's request carried her key and fingerprint; her presence her fingerprint.
    assert!(
        bob.lines("PRESENCE")
            .iter()
            .any(|l| l.contains(" subscribe ") && l.contains(&format!("key={a_print}"))),
        "{}",
        bob.describe()
    );
    assert!(bob.has_line(&format!("APPROVED {a}")), "{}", bob.describe());
    assert!(
        bob.stdout.contains(&format!("RECEIVED {a}/")) && bob.stdout.contains(" hello bob"),
        "{}",
        bob.describe()
    );
    assert!(
        bob.lines("GROUP").len() == 1 && bob.stdout.contains(" group hi"),
        "{}",
        bob.describe()
    );

    // A standard client with SCRAM on the same server, at the same time as a Kontalk login.
    let mut b_again = Background::spawn(emulator(
        &python,
        &server,
        &b_state,
        &["login", "listen", "--count", "1"],
    ));
    if let Err(why) = b_again.wait_for("READY", Duration::from_secs(60)) {
        panic!(
            "bob is not online: {why}\n{}",
            b_again.finish(Duration::from_secs(5)).describe()
        );
    }
    let mut cmd = client_script(&python, "send.py");
    cmd.args([
        "--port",
        &server.c2s_port.to_string(),
        "--tls",
        "starttls",
        "--jid",
        ALICE.0,
        "--password",
        ALICE.1,
        "--to",
        &b,
        "--body",
        "from slixmpp",
    ]);
    let sent = run(cmd, None, TIMEOUT);
    assert!(
        sent.success(),
        "slixmpp:\n{}\n{}",
        sent.describe(),
        server.log_report()
    );
    let got = b_again.finish(TIMEOUT);
    assert!(
        got.stdout.contains(&format!("RECEIVED {}/", ALICE.0))
            && got.stdout.contains("from slixmpp"),
        "{}\n{}",
        got.describe(),
        server.log_report()
    );
}

fn bad_registrations_and_logins_are_refused_with_the_errors_the_client_tells_apart(rt: Runtime) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk-bad");
    let codes = dir.path().join("codes");
    let server = server(rt, &codes);
    let codes_arg = codes.display().to_string();
    let phone = "+15555215556";
    let state = dir.path().join("carol");
    // A wrong code: bad-request, nothing registered.
    let out = kontalk(
        &python,
        &server,
        &state,
        &[
            "register",
            "--phone",
            phone,
            "--code-file",
            &codes_arg,
            "--tamper",
            "wrong-code",
        ],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.has_line("FAILURE bad-request Invalid verification code."),
        "{}",
        out.describe()
    );
    // Another code at once: throttled (service-unavailable, type wait).
    let out = kontalk(
        &python,
        &server,
        &state,
        &[
            "register",
            "--phone",
            phone,
            "--code-file",
            &codes_arg,
            "--reuse-key",
        ],
    );
    assert!(
        out.stdout.contains("IQ-ERROR service-unavailable wait"),
        "{}",
        out.describe()
    );
    let users = server.admin(&["users"]);
    assert!(
        !users.stdout.contains(&user_id(phone)),
        "nothing stored: {}",
        users.describe()
    );
    // A bad number.
    let out = kontalk(
        &python,
        &server,
        &dir.path().join("dave"),
        &["register", "--phone", "+55555", "--code-file", &codes_arg],
    );
    assert!(
        out.has_line("FAILURE bad-request Bad phone number."),
        "{}",
        out.describe()
    );
    // A certificate whose key is not the OpenPGP key: the registration refuses the key.
    let eve = dir.path().join("eve");
    let out = kontalk(
        &python,
        &server,
        &eve,
        &[
            "register",
            "--phone",
            "+15555215557",
            "--code-file",
            &codes_arg,
            "--tamper",
            "cert-key",
        ],
    );
    assert!(
        out.has_line("FAILURE bad-request Invalid public key."),
        "{}",
        out.describe()
    );
    // Registered, then: the number again without force is a conflict.
    let frank = dir.path().join("frank");
    register(&python, &server, &frank, "+15555215558", &codes);
    let out = kontalk(
        &python,
        &server,
        &dir.path().join("frank2"),
        &[
            "register",
            "--phone",
            "+15555215558",
            "--code-file",
            &codes_arg,
        ],
    );
    assert!(
        out.stdout.contains("IQ-ERROR conflict"),
        "{}",
        out.describe()
    );
    // Logins that must fail: the unsigned key (not certified by this server), a
    // certificate with another key.
    for tamper in ["unsigned-key", "cert-key"] {
        let out = kontalk(
            &python,
            &server,
            &frank,
            &["login", "--expect-fail", "--tamper", tamper],
        );
        assert!(
            out.success() && out.stdout.contains("FAILURE not-authorized"),
            "{tamper}:\n{}\n{}",
            out.describe(),
            server.log_report()
        );
    }
    // And the right one still logs in; the server kept running throughout.
    let out = kontalk(&python, &server, &frank, &["login"]);
    assert!(
        out.success() && out.value("READY").is_some(),
        "{}\n{}",
        out.describe(),
        server.log_report()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn a_key_rolls_over_and_a_private_key_backup_comes_back_by_its_token(rt: Runtime) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk-keys");
    let codes = dir.path().join("codes");
    let server = server(rt, &codes);
    let state = dir.path().join("gina");
    let out = register(&python, &server, &state, "+15555215559", &codes);
    let old_print = out.value("FINGERPRINT").expect("a fingerprint").to_owned();
    let ok = |out: &Run, what: &str| {
        assert!(
            out.success(),
            "{what}:\n{}\n{}",
            out.describe(),
            server.log_report()
        );
    };
    // A backup after login (addressed to the domain, as the client does), its token
    // retrieved before login.
    let out = kontalk(&python, &server, &state, &["login", "backup"]);
    ok(&out, "backup");
    let token = out.value("TOKEN").expect("a token").to_owned();
    assert!(
        token.len() == 40 && token.bytes().all(|b| b.is_ascii_digit()),
        "{token}"
    );
    let out = kontalk(&python, &server, &state, &["restore", "--token", &token]);
    ok(&out, "restore");
    assert!(out.has_line("SAME-AS-BACKUP yes"), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("public={old_print}")),
        "{}",
        out.describe()
    );
    let out = kontalk(
        &python,
        &server,
        &state,
        &[
            "restore",
            "--token",
            "0000",
            "--expect-error",
            "item-not-found",
        ],
    );
    ok(&out, "an unknown token");
    // A rollover needs the old key's revocation.
    for bad in ["none", "bad", "foreign"] {
        let out = kontalk(
            &python,
            &server,
            &state,
            &[
                "login",
                "rollover",
                "--revocation",
                bad,
                "--expect-error",
                "bad-request",
            ],
        );
        ok(&out, &format!("a rollover with revocation {bad}"));
    }
    let before = dir.path().join("gina-before");
    copy_dir(&state, &before);
    let out = kontalk(&python, &server, &state, &["login", "rollover"]);
    ok(&out, "rollover");
    let new_print = out.value("ROLLEDOVER").expect("the new key").to_owned();
    assert_ne!(new_print, old_print);
    assert!(
        out.has_line("CERTIFIED-BY-SERVER 0x10 valid"),
        "{}",
        out.describe()
    );
    // The new key logs in; the old one no longer does.
    let out = kontalk(
        &python,
        &server,
        &state,
        &[
            "login",
            "pubkey",
            "--of",
            &format!("{}@localhost", user_id("+15555215559")),
        ],
    );
    ok(&out, "login with the new key");
    assert!(
        out.stdout.contains(&new_print),
        "the account's key is the new one: {}",
        out.describe()
    );
    let out = kontalk(&python, &server, &before, &["login", "--expect-fail"]);
    assert!(
        out.success() && out.stdout.contains("FAILURE not-authorized"),
        "{}",
        out.describe()
    );
}

/// An SMS gateway on 127.0.0.1 that takes JSON `{"to": ..., "text": ...}`
/// with a bearer token: it refuses the first request (503), then appends
/// each code to `codes` as the file provider would (`<number> <code>`).
/// Each request's head and body go to the receiver.
fn sms_gateway(codes: &Path) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/sms", listener.local_addr().unwrap());
    let codes = codes.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { return };
            let mut conn = BufReader::new(conn);
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if conn.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = conn.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).into_owned();
            let field = |name: &str| {
                let start = body.find(&format!("\"{name}\":\""))? + name.len() + 4;
                Some(body[start..start + body[start..].find('"')?].to_owned())
            };
            let status = match (n, field("to"), field("text")) {
                (0, _, _) => "503 Service Unavailable",
                (_, Some(to), Some(text)) if head.contains("Bearer s3cret") => {
                    let code = text.rsplit(' ').next().unwrap_or_default().to_owned();
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&codes)
                        .unwrap();
                    writeln!(f, "{to} {code}").unwrap();
                    "202 Accepted"
                }
                _ => "400 Bad Request",
            };
            let reply =
                format!("HTTP/1.1 {status}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy");
            let _ = conn.get_mut().write_all(reply.as_bytes());
            let _ = tx.send(head + &body);
        }
    });
    (url, rx)
}

fn codes_go_through_an_http_sms_gateway_and_a_refusal_is_not_a_lost_number(rt: Runtime) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk-gateway");
    let codes = dir.path().join("codes");
    let (url, requests) = sms_gateway(&codes);
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "[kontalk]\nverification = \"http\"\nsender = \"Kontalk \\\"test\\\"\"\n\
             gateway_url = {}\ngateway_content_type = \"application/json\"\n\
             gateway_body = '{{\"to\":\"{{phone}}\",\"from\":\"{{sender}}\",\"text\":\"Your code: {{code}}\"}}'\n\
             gateway_authorization = \"Bearer s3cret\"\ngateway_timeout = 10\n",
            toml_string(&url)
        ),
        ..ServerOptions::with_users(rt, &[ALICE])
    });
    let phone = "+15555215560";
    let state = dir.path().join("gina");
    // The gateway refuses the first code: the client hears service-unavailable
    // (not "wait": nothing was sent), and the server says why in its log.
    let out = kontalk(
        &python,
        &server,
        &state,
        &[
            "register",
            "--phone",
            phone,
            "--code-file",
            &codes.display().to_string(),
        ],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("IQ-ERROR service-unavailable cancel"),
        "{}",
        out.describe()
    );
    let first = requests
        .recv_timeout(TIMEOUT)
        .expect("the gateway was asked");
    assert!(first.starts_with("POST /v1/sms HTTP/1.1\r\n"), "{first}");
    let body =
        format!("{{\"to\":\"{phone}\",\"from\":\"Kontalk \\\"test\\\"\",\"text\":\"Your code: ");
    assert!(
        first.contains(&body),
        "the body is the template, JSON-escaped: {first}"
    );
    let log = server.log_text();
    assert!(
        log.contains("503") && log.contains("could not be sent"),
        "{}",
        server.log_report()
    );
    // At once again: the code not sent was withdrawn, so no throttle; this
    // one reaches the phone and registers the number.
    register(&python, &server, &state, phone, &codes);
    let second = requests.recv_timeout(TIMEOUT).expect("asked again");
    assert!(second.contains("Bearer s3cret"), "{second}");
    let out = kontalk(&python, &server, &state, &["login"]);
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "{}",
        out.describe()
    );
}

/// The value of the generator's `RESULT label metric direction value` line for `metric`.
fn figure(out: &Run, metric: &str) -> Option<f64> {
    out.stdout.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.len() == 5 && f[0] == "RESULT" && f[2] == metric).then(|| f[4].parse().ok())?
    })
}

/// The benches' Kontalk scenarios work against the real server (no timing is asserted, only
/// that every registration and login went through): identities made by the emulator, the
/// load generator registering them over and over with the codes through its own SMS gateway
/// (the server's `http` provider), the emulator's certificates of the certified keys, and
/// EXTERNAL logins with them.
fn the_benches_register_and_log_in_kontalk_clients_with_codes_through_their_own_gateway(
    rt: Runtime,
) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk-bench");
    let keys = dir.path().join("keys");
    let keys_arg = keys.display().to_string();
    let offline = |args: &[&str]| {
        let mut cmd = client_script(&python, "kontalk_client.py");
        cmd.args(["--timeout", "60"]).args(args);
        run(cmd, None, TIMEOUT)
    };
    let made = offline(&["bench-keys", "--out", &keys_arg, "--count", "3"]);
    assert!(
        made.success() && made.has_line(&format!("BENCH-KEYS 3 {keys_arg}")),
        "{}",
        made.describe()
    );
    let gateway = format!("127.0.0.1:{}", free_ports().0);
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "[kontalk]\nverification = \"http\"\ngateway_method = \"GET\"\n\
             gateway_url = \"http://{gateway}/sms?to={{phone}}&code={{code}}\"\n\
             resend_after = 0\ncodes_per_address = 0\n"
        ),
        log_level: "info".into(),
        ..ServerOptions::with_users(rt, &[])
    });
    let pid = server.pid().expect("the server runs").to_string();
    let addr = server.c2s_addr().to_string();
    let load = |args: &[&str]| {
        let mut cmd = std::process::Command::new(load_generator());
        cmd.args(args).args([
            "--server",
            &addr,
            "--pid",
            &pid,
            "--label",
            "kontalkd",
            "--concurrency",
            "3",
            "--warmup",
            "0.2",
            "--secs",
            "1",
            "--deadline",
            "60",
        ]);
        run(cmd, None, TIMEOUT)
    };
    let reg = load(&[
        "kontalk-register",
        "--keys",
        &keys_arg,
        "--gateway",
        &gateway,
    ]);
    let name = "register (Kontalk, phone + code)";
    assert!(reg.success(), "{}\n{}", reg.describe(), server.log_report());
    assert!(
        figure(&reg, &format!("{name}: registrations/s")).is_some_and(|r| r > 0.0)
            && figure(&reg, &format!("{name}: server CPU µs/registration")).is_some()
            && figure(&reg, &format!("{name}: failed registrations")).is_none(),
        "{}",
        reg.describe()
    );
    let users = server.users();
    for i in 0..3 {
        let d = keys.join(i.to_string());
        let phone = std::fs::read_to_string(d.join("phone")).unwrap();
        assert!(
            users.contains(&format!("{}@localhost", user_id(phone.trim()))),
            "{phone} registered: {users:?}"
        );
        assert!(
            d.join("signed.pgp").is_file(),
            "the certified key of {phone} kept"
        );
    }
    let certs = offline(&["bench-certs", "--dir", &keys_arg]);
    assert!(
        certs.success() && certs.has_line(&format!("BENCH-CERTS 3 {keys_arg}")),
        "{}",
        certs.describe()
    );
    let login = load(&["kontalk-login", "--keys", &keys_arg]);
    let name = "login EXTERNAL (Kontalk certificate)";
    assert!(
        login.success(),
        "{}\n{}",
        login.describe(),
        server.log_report()
    );
    assert!(
        figure(&login, &format!("{name}: logins/s")).is_some_and(|r| r > 0.0)
            && figure(&login, &format!("{name}: failed logins")).is_none(),
        "{}",
        login.describe()
    );
}

/// The Android client's photo (KONTALK.md part 1 section 5): the service found by disco#info of
/// the domain's items, a slot of XEP-0363 0.2, a PUT answered 200 (the client fails on 201),
/// the URL in a `jabber:x:oob` message that the contact's client downloads. A file over the
/// limit gets no slot, and PUTs unlike their slot leave no file.
fn a_kontalk_client_sends_a_photo_through_the_upload_service(rt: Runtime) {
    let python = require!(kontalk_python());
    let dir = TempDir::new("kontalk-upload");
    let codes = dir.path().join("codes");
    let server = TestServer::start(ServerOptions {
        extra_toml: format!(
            "[kontalk]\nverification = \"file\"\nverification_file = {}\n",
            toml_string(&codes.display().to_string())
        ),
        upload: true,
        upload_toml: "max_file_size = 500000\n".into(),
        ..ServerOptions::with_users(rt, &[])
    });
    let (alice_phone, bob_phone) = ("+15555215560", "+15555215561");
    let (a_state, b_state) = (dir.path().join("alice"), dir.path().join("bob"));
    register(&python, &server, &a_state, alice_phone, &codes);
    register(&python, &server, &b_state, bob_phone, &codes);
    let b = format!("{}@localhost", user_id(bob_phone));
    let mut bob = Background::spawn(emulator(
        &python,
        &server,
        &b_state,
        &[
            "login",
            "listen",
            "--count",
            "1",
            "--wait",
            "30",
            "--download",
        ],
    ));
    if let Err(why) = bob.wait_for("READY", Duration::from_secs(60)) {
        panic!(
            "bob is not online: {why}\n{}\n{}",
            bob.finish(Duration::from_secs(5)).describe(),
            server.log_report()
        );
    }
    let out = kontalk(
        &python,
        &server,
        &a_state,
        &[
            "login",
            "upload",
            "--size",
            "200000",
            "--to",
            &b,
            "upload",
            "--size",
            "500001",
            "--expect-error",
            "not-acceptable",
            "upload",
            "--size",
            "1000",
            "--put-size",
            "999",
            "--expect-status",
            "400",
            "upload",
            "--size",
            "1000",
            "--put-type",
            "image/png",
            "--expect-status",
            "415",
        ],
    );
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "{}\n{}",
        out.describe(),
        server.log_report()
    );
    assert_eq!(
        out.value("UPLOAD-SERVICE"),
        Some("media.localhost"),
        "{}",
        out.describe()
    );
    assert_eq!(out.lines("PUT")[0], "PUT 200", "{}", out.describe());
    let uploaded = out.value("UPLOADED").expect("an UPLOADED line").to_owned();
    let (url, sha) = uploaded.split_once(' ').expect("url and sha256");
    let bob = bob.finish(Duration::from_secs(40));
    assert!(
        bob.success(),
        "bob:\n{}\n{}",
        bob.describe(),
        server.log_report()
    );
    assert!(
        bob.lines("OOB")
            .iter()
            .any(|l| l.ends_with(&format!(" image/jpeg 200000 {url}"))),
        "{}",
        bob.describe()
    );
    assert_eq!(
        bob.value("DOWNLOADED"),
        Some(format!("200 image/jpeg 200000 {sha}").as_str()),
        "{}",
        bob.describe()
    );
    let files = super::upload::stored_files(&server);
    assert_eq!(files.len(), 1, "only the photo is kept: {files:?}");
}
