//! End-to-end test support: a real `kontalkd` on loopback ports in its own temporary directory,
//! and real clients (slixmpp scripts in `tests/clients/`, go-sendxmpp) run against it.
//!
//! std only. Every [`TestServer`] has its own ports and directory, so tests run in parallel.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server gets to open both ports.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Written to the log file between two runs of the server (see [`TestServer::restart`]).
const RESTART_MARKER: &str = "===== test harness: restarting kontalkd =====";
/// Deadline of one admin command.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one client run (the scripts have their own, shorter, deadline).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);

pub const DOMAIN: &str = "localhost";

/// The runtime a [`TestServer`] runs on, each with its own binary: `kontalkd run --runtime mio`
/// (runtime-mio) or `kontalkd-smol run --runtime smol` (runtime-smol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Mio,
    Smol,
}

impl Runtime {
    /// Every runtime, in the order the tests run on them.
    pub const ALL: [Runtime; 2] = [Runtime::Mio, Runtime::Smol];

    /// The `--runtime` value, and the Rust crate name (`runtime_NAME`) in the server's log.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Mio => "mio",
            Runtime::Smol => "smol",
        }
    }

    /// The server binary of this runtime (its `run` and admin commands).
    pub fn binary(self) -> PathBuf {
        let bins = binaries();
        match self {
            Runtime::Mio => bins.mio.clone(),
            Runtime::Smol => bins.smol.clone(),
        }
    }
}

/// Runs each listed test once per runtime: for every `fn NAME(rt: Runtime)` it defines a
/// module `NAME` with the tests `NAME::mio` and `NAME::smol` (one body, no copies). A test
/// that is not listed is never called, which `dead_code` (and so clippy) reports.
macro_rules! per_runtime {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn mio() {
                    super::$name($crate::support::Runtime::Mio)
                }

                #[test]
                fn smol() {
                    super::$name($crate::support::Runtime::Smol)
                }
            }
        )+
    };
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `kontalkd` binary (runtime-mio), for admin commands that need no particular runtime.
pub fn kontalkd() -> PathBuf {
    Runtime::Mio.binary()
}

/// The `kontalkd-load` binary (kontalkd-benches), for the tests of the benches' Kontalk
/// scenarios against the real server.
pub fn load_generator() -> PathBuf {
    binaries().load.clone()
}

/// The server binaries under test, and the load generator.
struct Binaries {
    /// `kontalkd` (runtime-mio).
    mio: PathBuf,
    /// `kontalkd-smol` (runtime-smol).
    smol: PathBuf,
    /// `kontalkd-load` (kontalkd-benches).
    load: PathBuf,
}

/// The server binaries, built once per test process (see [`build_binaries`]); a failed build
/// fails every test that needs them, with cargo's output.
fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BUILT.get_or_init(build_binaries) {
        Ok(bins) => bins,
        Err(why) => panic!("{why}"),
    }
}

/// Builds both server binaries and the load generator with
/// `cargo build -p runtime-mio -p runtime-smol -p kontalkd-benches --bins`, with
/// the profile and into the target directory of this test binary, which cargo put in
/// `<target dir>/<profile dir>/deps/` (so `CARGO_TARGET_DIR` and `--release` carry over), and
/// returns their paths in `<target dir>/<profile dir>/`. They are other packages' binaries, so
/// cargo does not build them for this one (no `CARGO_BIN_EXE_*`); building them here means a
/// test always runs the binaries of the sources as they are now.
fn build_binaries() -> Result<Binaries, String> {
    let exe = std::env::current_exe().map_err(|e| format!("where is this test binary? {e}"))?;
    let (profile_dir, target_dir) = exe
        .parent()
        .and_then(Path::parent)
        .and_then(|profile_dir| Some((profile_dir, profile_dir.parent()?)))
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps/", exe.display()))?;
    // The `dev` and `test` profiles build into `debug`; every other profile into its name.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile in {}", profile_dir.display())),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(repo_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", profile])
        .args([
            "-p",
            "runtime-mio",
            "-p",
            "runtime-smol",
            "-p",
            "kontalkd-benches",
        ])
        .arg("--bins")
        .stdin(Stdio::null());
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bins = Binaries {
        mio: profile_dir.join("kontalkd"),
        smol: profile_dir.join("kontalkd-smol"),
        load: profile_dir.join("kontalkd-load"),
    };
    for bin in [&bins.mio, &bins.smol, &bins.load] {
        if !bin.is_file() {
            return Err(format!("{what} made no {}", bin.display()));
        }
    }
    Ok(bins)
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// Returns early from the calling test when a tool is missing outside CI (see [`python`]).
macro_rules! require {
    ($tool:expr) => {
        match $tool {
            Some(tool) => tool,
            None => return,
        }
    };
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A missing tool: a failure in CI, a loud skip elsewhere.
pub fn missing<T>(what: &str, install: &str) -> Option<T> {
    if in_ci() {
        panic!(
            "{what} is missing, and CI is set so this test cannot be skipped; install: {install}"
        );
    }
    eprintln!("SKIP: {what} is missing; install with: {install}");
    None
}

/// The Python interpreter with slixmpp: `$KONTALK_PYTHON`, else `<repo>/.venv/bin/python`.
/// `None` (after printing SKIP) when it is missing and `CI` is not set; panics in CI.
pub fn python() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let python = match std::env::var_os("KONTALK_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => repo_root().join(".venv/bin/python"),
        };
        let probe = Command::new(&python)
            .args(["-c", "import slixmpp; print(slixmpp.__version__)"])
            .stdin(Stdio::null())
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !version.starts_with("1.") || version.starts_with("1.8.") {
                    eprintln!("warning: slixmpp {version}: the scripts are written for 1.17");
                }
                Ok(python)
            }
            Ok(out) => Err(format!(
                "{} cannot import slixmpp ({})",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("{} ({e})", python.display())),
        }
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(why) => missing(
            &format!("python with slixmpp: {why}"),
            "python3 -m venv .venv && .venv/bin/pip install slixmpp==1.17.0 (or run .ci/run; or set KONTALK_PYTHON)",
        ),
    }
}

/// `go-sendxmpp` from `PATH` (Debian package `go-sendxmpp`).
pub fn go_sendxmpp() -> Option<PathBuf> {
    match find_in_path("go-sendxmpp") {
        Some(p) => Some(p),
        None => missing("go-sendxmpp", "apt-get install go-sendxmpp"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command running one of the slixmpp scripts of `tests/clients/`.
pub fn client_script(python: &Path, script: &str) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg(repo_root().join("tests/clients").join(script))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

// ---------------------------------------------------------------------------------------------
// Running processes with deadlines
// ---------------------------------------------------------------------------------------------

/// What a finished (or killed) process said.
pub struct Run {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Lines of stdout that start with `keyword` followed by a space or the end of the line.
    pub fn lines(&self, keyword: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| {
                l.strip_prefix(keyword)
                    .is_some_and(|r| r.is_empty() || r.starts_with(' '))
            })
            .collect()
    }

    /// The rest of the first stdout line starting with `keyword`.
    pub fn value(&self, keyword: &str) -> Option<&str> {
        self.lines(keyword)
            .first()
            .map(|l| l[keyword.len()..].trim())
    }

    pub fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l.trim_end() == line)
    }

    /// stdout and stderr together, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "--- {}: {}{}",
            self.what,
            match self.status {
                Some(st) => format!("{st}"),
                None => "no exit status".into(),
            },
            if self.timed_out {
                " (killed at its deadline)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "--- stdout:\n{}", self.stdout);
        let _ = writeln!(s, "--- stderr:\n{}", tail(&self.stderr, 400));
        s
    }

    /// Panics with the full output unless the process exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "{} failed\n{}", self.what, self.describe());
        self
    }
}

fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max_lines {
        return text.to_string();
    }
    format!(
        "[... {} lines cut ...]\n{}",
        lines.len() - max_lines,
        lines[lines.len() - max_lines..].join("\n")
    )
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn read_all_in_thread<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` up to `timeout`, killing it at the deadline. Returns (status, timed_out).
fn wait_deadline(child: &mut Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (Some(st), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                return (child.wait().ok(), true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => return (None, false),
        }
    }
}

/// Runs `cmd` to completion (stdin fed from `input`), killing it after `timeout`.
pub fn run(mut cmd: Command, input: Option<&str>, timeout: Duration) -> Run {
    let what = describe_command(&cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        // A writer thread, so a child that never reads cannot block us.
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let out = read_all_in_thread(child.stdout.take().expect("piped stdout"));
    let err = read_all_in_thread(child.stderr.take().expect("piped stderr"));
    let (status, timed_out) = wait_deadline(&mut child, timeout);
    let done = Run {
        what,
        status,
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    verbose(&done);
    done
}

/// With `KONTALK_E2E_VERBOSE` set, every process's stdout is printed (stderr too if it is `2`).
fn verbose(done: &Run) {
    match std::env::var("KONTALK_E2E_VERBOSE").as_deref() {
        Ok("2") => eprintln!("{}", done.describe()),
        Ok(v) if !v.is_empty() => {
            eprintln!("--- {}: {:?}\n{}", done.what, done.status, done.stdout)
        }
        _ => {}
    }
}

/// A process whose stdout is read line by line while it runs (a listening client).
pub struct Background {
    what: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Background {
        let what = describe_command(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(read_all_in_thread(
            child.stderr.take().expect("piped stderr"),
        ));
        Background {
            what,
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stdout line starting with `keyword`; Err (with the output so far) on
    /// timeout or if the process ends first.
    pub fn wait_for(&mut self, keyword: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line
                        .strip_prefix(keyword)
                        .is_some_and(|r| r.is_empty() || r.starts_with(' '))
                    {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no {keyword:?} line from {} within {timeout:?}",
                        self.what
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} ended without a {keyword:?} line", self.what))
                }
            }
        }
    }

    /// Waits for the process to end (killing it after `timeout`) and returns all its output.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let (status, timed_out) = wait_deadline(&mut self.child, timeout);
        // The reader thread ends at EOF, so this drains everything that is left.
        let mut stdout: Vec<String> = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            stdout.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let mut stdout = stdout.join("\n");
        stdout.push('\n');
        let done = Run {
            what: self.what.clone(),
            status,
            timed_out,
            stdout,
            stderr,
        };
        verbose(&done);
        done
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// How to set up a [`TestServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The runtime the server runs on.
    pub runtime: Runtime,
    /// `server.domain` ([`DOMAIN`] unless a test federates several domains).
    pub domain: String,
    /// Accounts created with `kontalkd adduser` before the server starts: (JID, password).
    pub users: Vec<(String, String)>,
    /// A data directory (database, certificate) copied in before the first start, so that
    /// several servers share accounts down to their salts.
    pub data_from: Option<PathBuf>,
    /// `KONTALKD_TEST_SEED`: the core's RNG seed (64 hex digits), fixed for the byte-level
    /// comparison of the runtimes.
    pub seed: Option<String>,
    pub allow_registration: bool,
    pub require_encryption: bool,
    pub log_level: String,
    /// Extra TOML appended to the config file, e.g. a `[limits]` table.
    pub extra_toml: String,
    /// `server.metrics_listen`: the metrics endpoint's address, off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// File upload (`[upload]`) on a port of its own ([`TestServer::upload_port`]); off
    /// unless asked for (or configured in `extra_toml`), so that servers side by side do
    /// not all want its default port.
    pub upload: bool,
    /// More lines of the `[upload]` table when `upload` is on (`max_file_size = 1000`).
    pub upload_toml: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            runtime: Runtime::Mio,
            domain: DOMAIN.to_owned(),
            users: Vec::new(),
            data_from: None,
            seed: None,
            allow_registration: false,
            require_encryption: true,
            log_level: "debug".into(),
            extra_toml: String::new(),
            metrics_listen: None,
            upload: false,
            upload_toml: String::new(),
        }
    }
}

impl ServerOptions {
    pub fn with_users(runtime: Runtime, users: &[(&str, &str)]) -> Self {
        ServerOptions {
            runtime,
            users: users
                .iter()
                .map(|(j, p)| (j.to_string(), p.to_string()))
                .collect(),
            ..ServerOptions::default()
        }
    }
}

/// A temporary directory, removed on drop (kept when `KONTALK_KEEP_TEST_DIRS` is set).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KONTALK_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Two distinct free loopback ports (bound to port 0, read, released).
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// `s` as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running `kontalkd`: its own directory, config file, ports and log file. Stopped (SIGTERM,
/// then SIGKILL) on drop; when the test is failing, the server's log is printed then.
pub struct TestServer {
    pub dir: TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The STARTTLS c2s port.
    pub c2s_port: u16,
    /// The direct TLS (XEP-0368) port.
    pub tls_port: u16,
    /// The upload listener's port (0 unless [`ServerOptions::upload`]).
    pub upload_port: u16,
    pub options: ServerOptions,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server on `runtime` with default options and these accounts.
    pub fn with_users(runtime: Runtime, users: &[(&str, &str)]) -> TestServer {
        TestServer::start(ServerOptions::with_users(runtime, users))
    }

    pub fn start(options: ServerOptions) -> TestServer {
        let dir = TempDir::new("kontalkd-e2e");
        let config = dir.path().join("kontalkd.toml");
        let log = dir.path().join("kontalkd.log");
        let mut server = TestServer {
            dir,
            config,
            log,
            c2s_port: 0,
            tls_port: 0,
            upload_port: 0,
            options,
            child: None,
        };
        // A port picked here can be taken by someone else before the server binds it:
        // try again with new ports when that happens.
        for attempt in 1..=3 {
            let (c2s, tls) = free_ports();
            server.c2s_port = c2s;
            server.tls_port = tls;
            if server.options.upload {
                server.upload_port = free_ports().0;
            }
            server.write_config();
            if attempt == 1 {
                if let Some(from) = server.options.data_from.clone() {
                    copy_dir(&from, &server.dir.path().join("data"));
                }
                let users = server.options.users.clone();
                for (jid, password) in &users {
                    server
                        .admin(&["adduser", jid, "--password", password])
                        .assert_success();
                }
            }
            match server.spawn_and_wait(false) {
                Ok(()) => return server,
                Err(why) if attempt < 3 && server.log_text().contains("in use") => {
                    eprintln!(
                        "server start attempt {attempt} failed ({why}); retrying with other ports"
                    );
                }
                Err(why) => panic!("kontalkd did not start: {why}\n{}", server.log_report()),
            }
        }
        unreachable!()
    }

    /// The config file's text for these ports and options.
    pub fn config_text(&self) -> String {
        let o = &self.options;
        let mut t = String::new();
        let _ = writeln!(t, "[server]");
        let _ = writeln!(t, "domain = {}", toml_string(&o.domain));
        let _ = writeln!(
            t,
            "data_dir = {}",
            toml_string(&self.dir.path().join("data").to_string_lossy())
        );
        let _ = writeln!(t, "log_level = {}", toml_string(&o.log_level));
        if let Some(addr) = o.metrics_listen {
            let _ = writeln!(t, "metrics_listen = {}", toml_string(&addr.to_string()));
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "[c2s]");
        let _ = writeln!(t, "listen = \"127.0.0.1\"");
        let _ = writeln!(t, "port = {}", self.c2s_port);
        let _ = writeln!(t, "direct_tls_port = {}", self.tls_port);
        let _ = writeln!(t, "require_encryption = {}", o.require_encryption);
        let _ = writeln!(t, "allow_registration = {}", o.allow_registration);
        let _ = writeln!(t);
        if !o.extra_toml.contains("[upload]") {
            let _ = writeln!(t, "[upload]");
            if o.upload {
                let _ = writeln!(t, "listen = \"127.0.0.1\"");
                let _ = writeln!(t, "port = {}", self.upload_port);
                t.push_str(&o.upload_toml);
            } else {
                let _ = writeln!(t, "enabled = false");
            }
            let _ = writeln!(t);
        }
        t.push_str(&o.extra_toml);
        t
    }

    fn write_config(&self) {
        fs::write(&self.config, self.config_text())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config.display()));
    }

    /// Starts the binary and waits for its ports. `append`: keep the log of an earlier run
    /// (a restart) instead of starting a new one.
    fn spawn_and_wait(&mut self, append: bool) -> Result<(), String> {
        let log = if append {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
        } else {
            File::create(&self.log)
        }
        .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let runtime = self.options.runtime.name();
        let binary = self.options.runtime.binary();
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["run", "--runtime", runtime])
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "1")
            // The config's log level (debug) applies, and the `ready` line below is seen.
            .env_remove("RUST_LOG")
            .env_remove("KONTALKD_RUNTIME")
            .env_remove("KONTALKD_TEST_SEED")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        if let Some(seed) = &self.options.seed {
            cmd.env("KONTALKD_TEST_SEED", seed);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        self.child = Some(child);
        // The runtime's own first words: proof that the test runs on the runtime it names.
        let ready = format!(" runtime_{runtime}] ready");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut ports = vec![self.c2s_port, self.tls_port];
        if self.upload_port != 0 {
            ports.push(self.upload_port);
        }
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("kontalkd exited during startup: {st}"));
            }
            if ports.iter().all(|p| port_open(*p))
                && self
                    .log_text()
                    .get(log_start..)
                    .is_some_and(|l| l.contains(&ready))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "ports {ports:?} not open, or no {ready:?} in the log, after {STARTUP_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `kontalkd --config FILE ARGS...` (an admin command, with the binary of the server's
    /// runtime) to completion.
    pub fn admin(&self, args: &[&str]) -> Run {
        self.admin_with_input(args, None)
    }

    /// Like [`admin`](Self::admin), feeding `input` on stdin.
    pub fn admin_with_input(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut cmd = Command::new(self.options.runtime.binary());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path());
        run(cmd, input, ADMIN_TIMEOUT)
    }

    /// `kontalkd users`, one JID a line.
    pub fn users(&self) -> Vec<String> {
        let out = self.admin(&["users"]);
        out.assert_success();
        out.stdout
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    pub fn log_report(&self) -> String {
        format!(
            "===== kontalkd log ({}) =====\n{}\n===== config =====\n{}===== end of kontalkd log =====",
            self.log.display(),
            tail(&self.log_text(), 2000),
            self.config_text()
        )
    }

    /// Stops the server with SIGTERM and returns its exit status (None if it had to be killed
    /// after [`STOP_TIMEOUT`] or was not running).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL: no chance to flush, close or clean up anything, as in
    /// a crash or a power cut of the process. Returns its exit status (None if it was not
    /// running).
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // Child::kill is SIGKILL on Unix.
        let _ = child.kill();
        child.wait().ok()
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill9`](Self::kill9): the same
    /// config, data directory and ports; the log goes on in the same file, after a marker.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart of a running server: stop or kill it first"
        );
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "{RESTART_MARKER}"));
        // The ports were the server's own a moment ago; someone else taking one now is
        // unlikely, but a port still held by the old process's sockets is retried briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait(true) {
                Ok(()) => return,
                Err(why)
                    if Instant::now() < deadline
                        && self
                            .log_text()
                            .rsplit(RESTART_MARKER)
                            .next()
                            .is_some_and(|since| since.contains("in use")) =>
                {
                    eprintln!("restart failed ({why}); retrying");
                    thread::sleep(Duration::from_millis(250));
                }
                Err(why) => panic!("kontalkd did not restart: {why}\n{}", self.log_report()),
            }
        }
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.c2s_port))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!("{}", self.log_report());
            if status.is_none() {
                eprintln!(
                    "(kontalkd did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed)"
                );
            }
        }
    }
}

/// Copies the files of `from` into `to`, recursively (a data directory: a few small files).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries =
        fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
        }
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
