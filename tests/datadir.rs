//! The data directory belongs to one server: a second instance is refused, a database the
//! server cannot write is refused before `ready`, new files are private, and the account
//! commands never create a database where there is none; a backup taken while clients chat
//! restores and starts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::support::{free_ports, run, Run, Runtime, TempDir, TestServer};
use super::ALICE;

per_runtime!(
    a_second_server_on_the_same_data_directory_is_refused,
    a_new_data_directory_is_private,
    a_database_the_server_cannot_write_is_refused_at_start,
    account_commands_never_create_a_database,
    a_backup_taken_while_clients_chat_restores_and_starts,
);

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn data_dir(server: &TestServer) -> PathBuf {
    server.dir.path().join("data")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `BINARY --config CONFIG run`, expected to end by itself (refused), with its output.
fn run_refused(rt: Runtime, config: &Path, wrap: Option<&[&str]>) -> Run {
    let binary = rt.binary();
    let mut cmd = match wrap {
        Some(prefix) => {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    cmd.arg("--config")
        .arg(config)
        .args(["run", "--runtime", rt.name()])
        .env_remove("RUST_LOG")
        .env_remove("KONTALKD_RUNTIME");
    let out = run(cmd, None, START_TIMEOUT);
    assert!(
        !out.timed_out,
        "the server should have refused to start, but it ran\n{}",
        out.describe()
    );
    assert!(
        !out.success(),
        "the server should have refused to start\n{}",
        out.describe()
    );
    out
}

fn a_second_server_on_the_same_data_directory_is_refused(rt: Runtime) {
    let server = TestServer::with_users(rt, &[ALICE]);
    let pid = server.pid().expect("running");
    // The same configuration on other ports: only the data directory is shared.
    let (c2s, tls) = free_ports();
    let text = server
        .config_text()
        .replace(
            &format!("port = {}", server.c2s_port),
            &format!("port = {c2s}"),
        )
        .replace(
            &format!("direct_tls_port = {}", server.tls_port),
            &format!("direct_tls_port = {tls}"),
        );
    let second = server.dir.path().join("second.toml");
    fs::write(&second, text).unwrap();
    let out = run_refused(rt, &second, None);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("in use by another kontalkd") && said.contains(&format!("pid {pid}")),
        "the refusal should name the data directory's holder (pid {pid})\n{}",
        out.describe()
    );
    assert!(!said.contains("] ready"), "{}", out.describe());
    // The first server is untouched: its accounts are there and it still serves.
    assert_eq!(server.users(), [ALICE.0]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.c2s_port)).is_ok(),
        "the first server stopped listening\n{}",
        server.log_report()
    );
}

fn a_new_data_directory_is_private(rt: Runtime) {
    let server = TestServer::with_users(rt, &[ALICE]);
    let data = data_dir(&server);
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("kontalkd.sqlite")), 0o600, "the database");
    assert_eq!(mode(&data.join("kontalkd.lock")), 0o600, "the lock file");
    assert_eq!(mode(&data.join("tls")), 0o700, "the TLS directory");
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600, "the private key");
    for entry in fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is readable by others",
                path.display()
            );
        }
    }
}

/// Whether this process runs as root (which writes any file, whatever its mode).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn chown_tree(path: &Path, owner: &str) {
    let st = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success(), "chown -R {owner} {}", path.display());
}

fn a_database_the_server_cannot_write_is_refused_at_start(rt: Runtime) {
    let mut server = TestServer::with_users(rt, &[ALICE]);
    server.stop();
    let data = data_dir(&server);
    let db = data.join("kontalkd.sqlite");
    // The database belongs to someone else: the server can read it but not write it. As
    // root, the server runs as `nobody` with everything else in the directory its own.
    let wrap: Option<Vec<&str>> = if is_root() {
        chown_tree(server.dir.path(), "nobody");
        chown_tree(&db, "root");
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        Some(vec![
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
    } else {
        fs::set_permissions(&db, fs::Permissions::from_mode(0o444)).unwrap();
        None
    };
    let out = run_refused(rt, &server.config, wrap.as_deref());
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("cannot be written by this process") && said.contains("kontalkd.sqlite"),
        "the refusal should say the database cannot be written\n{}",
        out.describe()
    );
    assert!(
        !said.contains("] ready"),
        "refused only after `ready`\n{}",
        out.describe()
    );
    // Given back to the server's user, the same data starts and nothing was lost.
    if is_root() {
        chown_tree(server.dir.path(), "root");
    }
    fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap();
    server.restart();
    assert_eq!(server.users(), [ALICE.0]);
}

fn account_commands_never_create_a_database(rt: Runtime) {
    let dir = TempDir::new("kontalkd-e2e-nodb");
    let data = dir.path().join("data");
    let config = dir.path().join("kontalkd.toml");
    fs::write(
        &config,
        format!("[server]\ndata_dir = {:?}\n", data.to_string_lossy()),
    )
    .unwrap();
    let admin = |args: &[&str]| {
        let mut cmd = Command::new(rt.binary());
        cmd.arg("--config").arg(&config).args(args);
        run(cmd, None, START_TIMEOUT)
    };
    for args in [
        &["users"][..],
        &["passwd", "alice@localhost", "--password", "x"],
        &["deluser", "alice@localhost"],
    ] {
        let out = admin(args);
        assert!(!out.success(), "{args:?} succeeded\n{}", out.describe());
        assert!(
            out.stderr.contains("there is no database at")
                && out.stderr.contains("kontalkd.sqlite"),
            "{args:?} should say there is no database\n{}",
            out.describe()
        );
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
    // adduser makes the database, says so, and the next command finds it.
    let out = admin(&["adduser", "alice@localhost", "--password", "pw"]);
    out.assert_success();
    assert!(
        out.stderr.contains("created the database"),
        "{}",
        out.describe()
    );
    let out = admin(&["users"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "alice@localhost");
    assert!(
        out.stderr.contains(&format!(
            "database: {}",
            data.join("kontalkd.sqlite").display()
        )),
        "`users` should say which database it read\n{}",
        out.describe()
    );
}

fn a_backup_taken_while_clients_chat_restores_and_starts(rt: Runtime) {
    let python = require!(super::support::python());
    let server = TestServer::with_users(rt, &[ALICE, super::BOB]);
    let chat = super::support::Background::spawn(super::chat_command(
        &python,
        &server,
        ALICE,
        super::BOB,
        5,
    ));
    // Two copies while the chat runs (the store writes: sessions, last activity).
    let keep = TempDir::new("kontalkd-e2e-backup");
    for n in 0..2 {
        let file = keep.path().join(format!("backup-{n}.sqlite"));
        let out = server.admin(&["backup", &file.to_string_lossy()]);
        out.assert_success();
        assert!(
            out.stdout.contains("(2 accounts)"),
            "backup should count the accounts\n{}",
            out.describe()
        );
        assert_eq!(mode(&file), 0o600, "a backup holds the keys: private");
        std::thread::sleep(Duration::from_millis(300));
    }
    let during = chat.finish(super::CLIENT_TIMEOUT);
    assert!(
        during.success() && during.has_line("RESULT ok"),
        "the chat during the backups failed\n{}\n{}",
        during.describe(),
        server.log_report()
    );
    // A backup file is never overwritten.
    let again = server.admin(&[
        "backup",
        &keep.path().join("backup-0.sqlite").to_string_lossy(),
    ]);
    assert!(!again.success(), "{}", again.describe());

    // The README's restore: the copy becomes kontalkd.sqlite of a data directory.
    let data = keep.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::copy(
        keep.path().join("backup-1.sqlite"),
        data.join("kontalkd.sqlite"),
    )
    .unwrap();
    let restored = TestServer::start(super::ServerOptions {
        data_from: Some(data),
        ..super::ServerOptions::with_users(rt, &[])
    });
    assert_eq!(restored.users(), [ALICE.0, super::BOB.0]);
    super::assert_logged_in(
        &super::login(
            &python,
            &restored,
            super::Tls::StartTls,
            ALICE.0,
            ALICE.1,
            None,
        ),
        ALICE.0,
    );
}
