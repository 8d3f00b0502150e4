//! Signals: SIGHUP reloads the certificate (a renewed one reaches new clients; a broken one is
//! refused and the server keeps serving the one it has), and logs what it did.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::support::{python, run, toml_string, Runtime, ServerOptions, TestServer};
use super::{assert_logged_in, login, Tls, ALICE};

per_runtime!(
    sighup_reloads_the_certificate_and_keeps_a_good_one_over_a_broken_one,
    sighup_changes_the_log_level_and_reopens_the_log_file,
);

/// The SHA-256 of the certificate a TLS client gets on the direct TLS port.
fn served_certificate(python: &Path, port: u16) -> String {
    let script = format!(
        "import hashlib, socket, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         with ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), \
         server_hostname='localhost') as s:\n\
         \x20   print(hashlib.sha256(s.getpeercert(True)).hexdigest())\n"
    );
    let mut cmd = Command::new(python);
    cmd.args(["-c", &script]);
    let out = run(cmd, None, Duration::from_secs(20));
    out.assert_success();
    out.stdout.trim().to_owned()
}

fn hangup(server: &TestServer) {
    let pid = server.pid().expect("running");
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -HUP {pid}");
}

/// Waits until the server's log has `what` `times` times.
fn wait_logged(server: &TestServer, what: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log_text().matches(what).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log after SIGHUP\n{}",
            server.log_report()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn sighup_reloads_the_certificate_and_keeps_a_good_one_over_a_broken_one(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE]);
    let first = served_certificate(&python, server.tls_port);
    assert_eq!(first.len(), 64, "{first}");

    // A renewed certificate: another server's generated one, copied over the files.
    let other = TestServer::with_users(rt, &[]);
    let renewed = served_certificate(&python, other.tls_port);
    assert_ne!(first, renewed);
    let tls = server.dir.path().join("data/tls");
    let other_tls = other.dir.path().join("data/tls");
    fs::copy(other_tls.join("key.pem"), tls.join("key.pem")).unwrap();
    fs::copy(other_tls.join("cert.pem"), tls.join("cert.pem")).unwrap();
    hangup(&server);
    wait_logged(&server, "reload: read", 1);
    assert_eq!(
        served_certificate(&python, server.tls_port),
        renewed,
        "a new client should get the renewed certificate\n{}",
        server.log_report()
    );
    assert_logged_in(
        &login(&python, &server, Tls::Direct, ALICE.0, ALICE.1, None),
        ALICE.0,
    );

    // A broken certificate: refused, said so, and the renewed one goes on being served.
    fs::write(tls.join("cert.pem"), "not a certificate\n").unwrap();
    hangup(&server);
    wait_logged(&server, "keeps its current certificate", 1);
    assert_eq!(served_certificate(&python, server.tls_port), renewed);
    assert_logged_in(
        &login(&python, &server, Tls::StartTls, ALICE.0, ALICE.1, None),
        ALICE.0,
    );
    assert!(
        server.pid().is_some() && !server.log_text().contains("shutting down"),
        "SIGHUP must not stop the server\n{}",
        server.log_report()
    );
}

/// The server's config file with `log_level` and, when given, `log_file` in its `[server]`.
fn write_config(server: &TestServer, level: &str, file: Option<&Path>) {
    let mut text = String::new();
    for line in server.config_text().lines() {
        if line.starts_with("log_level") {
            text.push_str(&format!("log_level = {}\n", toml_string(level)));
            if let Some(file) = file {
                text.push_str(&format!(
                    "log_file = {}\n",
                    toml_string(&file.to_string_lossy())
                ));
            }
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    fs::write(&server.config, text).unwrap();
}

/// Opens and closes a TCP connection to the server: a debug line ("conn N: accepted").
fn poke(server: &TestServer) {
    drop(std::net::TcpStream::connect(server.c2s_addr()).expect("connect"));
}

/// Waits until `file` holds `what` `times` times.
fn wait_in_file(server: &TestServer, file: &Path, what: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.matches(what).count() >= times {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in {} after SIGHUP:\n{text}\n{}",
            file.display(),
            server.log_report()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP applies `server.log_level` and `server.log_file`: at `debug` a connection is logged,
/// at `info` it is not; the log goes to the file (created private), and after logrotate's
/// rename and SIGHUP to a new file at the same path while the renamed one keeps what it had.
fn sighup_changes_the_log_level_and_reopens_the_log_file(rt: Runtime) {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(ServerOptions {
        log_level: "info".into(),
        ..ServerOptions::with_users(rt, &[])
    });
    let accepted = ": accepted from";
    poke(&server);

    let file = server.dir.path().join("logs.log");
    write_config(&server, "debug", Some(&file));
    hangup(&server);
    wait_in_file(&server, &file, "reload: read", 1);
    let mode = fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o037, 0, "log file mode {mode:o}: not private");
    poke(&server);
    let text = wait_in_file(&server, &file, accepted, 1);
    assert!(text.contains(" DEBUG "), "{text}");
    let stderr = server.log_text();
    assert!(
        !stderr.contains(accepted),
        "at info, and then in the file, no connection in the first log:\n{stderr}"
    );
    assert!(
        text.contains("reload: log level debug, logging to the log file"),
        "{text}"
    );

    // logrotate: rename, then SIGHUP (here with the level back to info).
    let rotated = server.dir.path().join("logs.log.1");
    fs::rename(&file, &rotated).unwrap();
    write_config(&server, "info", Some(&file));
    hangup(&server);
    let text = wait_in_file(&server, &file, "reload: read", 1);
    assert!(!text.contains(accepted), "{text}");
    poke(&server);
    // A debug line would be there by the time a later info line is: the next reload's.
    hangup(&server);
    let text = wait_in_file(&server, &file, "reload: read", 2);
    assert!(
        !text.contains(accepted),
        "at info again, no connection is logged:\n{text}"
    );
    let old = fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.matches(accepted).count(), 1, "{old}");
    assert_eq!(old.matches("reload: read").count(), 1, "{old}");
}
