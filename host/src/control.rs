//! The control plane of a running server, for every runtime: the admin
//! socket (`DATA_DIR/kontalkd.sock`, one command line per connection, the
//! way `prosodyctl` and `ejabberdctl` talk to their servers) and the
//! metrics endpoint (OpenMetrics text over HTTP/1.1, `GET /metrics`).
//!
//! A runtime accepts the connections, reads their bytes into a [`Request`]
//! until [`Request::feed`] says it is complete (or its peer ends its side,
//! or [`REQUEST_TIMEOUT`] passes: then the connection is closed unanswered),
//! hands it to [`Core::control`], writes the answer and closes the
//! connection. Everything else (the commands, HTTP, the metrics text) is
//! here, so no runtime knows what a command is.
//!
//! The admin protocol: the client sends one line (`status`, `sessions`,
//! `kick JID`, `unlock ADDRESS`, `unlock all`, `deluser JID`); the answer's
//! first line is `ok` or `error`, the rest is for the operator. The command
//! line's `status`, `sessions`, `kick`, `unlock` and `deluser` are the
//! client ([`send_admin`]).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jid::{BareJid, Jid};
use proto_core::Server;

use crate::runtime::{Core, Error};

/// The admin socket's file name in the data directory.
pub const SOCKET_NAME: &str = "kontalkd.sock";
/// The longest request read from a control connection, in bytes.
pub const MAX_REQUEST: usize = 4096;
/// How long a control connection may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections open at once, per endpoint; one more is closed at
/// once.
pub const MAX_CONNECTIONS: usize = 16;

/// The content type of the metrics (OpenMetrics 1.0 text).
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds (seconds) of the store batch latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Where the admin socket of `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The endpoint a control connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The admin socket: one command line.
    Admin,
    /// The metrics endpoint: one HTTP request.
    Metrics,
}

/// The request of one control connection, read in pieces.
#[derive(Debug)]
pub struct Request {
    plane: Plane,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Request {
    /// A connection on `plane` was accepted at `now`.
    pub fn new(plane: Plane, now: Instant) -> Request {
        Request {
            plane,
            buf: Vec::new(),
            deadline: now + REQUEST_TIMEOUT,
        }
    }

    /// When the connection is closed if its request is not complete.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Adds bytes read; returns whether the request is complete (a whole
    /// line, a whole HTTP head, or more than [`MAX_REQUEST`] bytes: then it
    /// is answered with an error). Bytes past the limit are not kept.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        let room = (MAX_REQUEST + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        self.complete()
    }

    /// Whether the request can be answered.
    pub fn complete(&self) -> bool {
        self.buf.len() > MAX_REQUEST
            || match self.plane {
                Plane::Admin => self.buf.contains(&b'\n'),
                Plane::Metrics => {
                    self.buf.windows(4).any(|w| w == b"\r\n\r\n")
                        || self.buf.windows(2).any(|w| w == b"\n\n")
                }
            }
    }
}

/// The store's side of the metrics, kept by [`Core::drain`].
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    ok: u64,
    failed: u64,
    /// Batches per latency bucket (not cumulative), the last for `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    batches: u64,
    seconds: f64,
}

impl StoreStats {
    /// One batch of `requests` took `took`; `failed` of them failed.
    pub(crate) fn observe(&mut self, took: Duration, requests: usize, failed: usize) {
        self.failed += failed as u64;
        self.ok += (requests - failed) as u64;
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.batches += 1;
        self.seconds += secs;
    }
}

/// Removes the admin socket's file when the server ends cleanly.
#[derive(Debug)]
pub(crate) struct SocketFile(pub(crate) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the admin socket in `data_dir`, owner-only (mode 0600), after
/// removing a stale one: the caller holds the data directory's lock, so
/// a socket there belongs to no running server.
pub(crate) fn bind_socket(data_dir: &Path) -> Result<(UnixListener, SocketFile), Error> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => log::info!("removed the stale admin socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display()).into()),
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot bind the admin socket {}: {e}", path.display()))?;
    let file = SocketFile(path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {} owner-only: {e}", path.display()))?;
    listener.set_nonblocking(true)?;
    log::info!("admin socket on {}", path.display());
    Ok((listener, file))
}

/// The username of `jid` (`user` or `user@domain`), which must belong to
/// `domain`.
pub fn username(jid: &str, domain: &str) -> Result<String, String> {
    match jid.split_once('@') {
        None => Ok(jid.to_owned()),
        Some((user, d)) => {
            if d.eq_ignore_ascii_case(domain) {
                Ok(user.to_owned())
            } else {
                Err(format!("{jid}: this server hosts {domain}, not {d}"))
            }
        }
    }
}

impl Core {
    /// Answers a control connection's request (complete or not: an
    /// incomplete one is a bad request). Commands that end streams leave
    /// their output in the core: call [`drain`](Self::drain) afterwards, as
    /// after any `handle_*` call.
    pub fn control(&mut self, now: Instant, request: &Request) -> Vec<u8> {
        match request.plane {
            Plane::Admin => {
                let (ok, text) = if request.buf.len() > MAX_REQUEST {
                    (false, format!("a command is at most {MAX_REQUEST} bytes"))
                } else {
                    match std::str::from_utf8(&request.buf) {
                        Ok(line) => match self.admin_command(now, line.trim()) {
                            Ok(text) => (true, text),
                            Err(text) => (false, text),
                        },
                        Err(_) => (false, "a command is UTF-8 text".to_owned()),
                    }
                };
                let mut answer = if ok { "ok\n" } else { "error\n" }.to_owned();
                answer.push_str(&text);
                if !answer.ends_with('\n') {
                    answer.push('\n');
                }
                answer.into_bytes()
            }
            Plane::Metrics => self.http(&request.buf),
        }
    }

    fn admin_command(&mut self, now: Instant, line: &str) -> Result<String, String> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg = words.next();
        if words.next().is_some() {
            return Err(format!("{command}: too many arguments"));
        }
        let need = |arg: Option<&str>, what: &str| {
            arg.map(str::to_owned)
                .ok_or_else(|| format!("{command}: which {what}?"))
        };
        match command {
            "status" => Ok(self.status_text()),
            "sessions" => Ok(self.sessions_text()),
            "s2s" => Ok(self.s2s_text()),
            "kick" => {
                let target = need(arg, "JID")?;
                let jid = Jid::new(&target).map_err(|e| format!("{target}: not a JID ({e})"))?;
                if jid.node().is_none() || jid.domain().as_str() != self.config.core.domain {
                    return Err(format!(
                        "{target}: not an account of {}",
                        self.config.core.domain
                    ));
                }
                match self.server.kick(now, &jid) {
                    0 => Err(format!("{jid} has no session")),
                    n => Ok(format!("kicked {jid}: {n} session(s) ended")),
                }
            }
            "unlock" => {
                let target = need(arg, "address (or all)")?;
                let address = if target == "all" {
                    None
                } else {
                    Some(
                        target
                            .parse::<IpAddr>()
                            .map_err(|_| format!("{target}: not an IP address (or all)"))?,
                    )
                };
                let cleared = self.server.clear_lockouts(address);
                if cleared.is_empty() {
                    return Ok(match address {
                        Some(a) => format!("no failed logins recorded for {a}"),
                        None => "no failed logins recorded".to_owned(),
                    });
                }
                let mut text = String::new();
                for c in cleared {
                    let _ = writeln!(
                        text,
                        "cleared {}: {} failed login(s){}",
                        c.address,
                        c.failures,
                        if c.locked_out { ", was locked out" } else { "" }
                    );
                }
                Ok(text)
            }
            "deluser" => {
                let target = need(arg, "account")?;
                let user = username(&target, &self.config.core.domain)?;
                self.delete_account(now, &user)
            }
            "" => Err("no command".to_owned()),
            other => Err(format!(
                "unknown command {other:?} (status, sessions, s2s, kick JID, unlock ADDRESS|all, deluser JID)"
            )),
        }
    }

    /// `deluser` while the server runs: the account's streams end (with
    /// `not-authorized`) and the core forgets it, the store runs what their
    /// ends asked for (their last activity), and only then is the account
    /// deleted, so nothing in flight meets a missing account.
    fn delete_account(&mut self, now: Instant, user: &str) -> Result<String, String> {
        let domain = self.config.core.domain.clone();
        match self.store.user_exists(user) {
            Ok(true) => {}
            Ok(false) => return Err(format!("no account {user}@{domain}")),
            Err(e) => return Err(format!("{user}: {e}")),
        }
        let bare = BareJid::new(&format!("{user}@{domain}"))
            .map_err(|e| format!("{user}@{domain}: not a JID ({e})"))?;
        let ended = self.server.end_account(now, &bare);
        self.drain_holding_io(now);
        self.store
            .delete_user(user)
            .map_err(|e| format!("deleting {bare} failed: {e}"))?;
        // The network's other servers hear of it now.
        self.server.net_accounts_changed();
        self.drain_holding_io(now);
        log::info!("deluser: {bare} deleted, {ended} connection(s) ended");
        Ok(format!("deleted {bare} ({ended} connection(s) ended)"))
    }

    fn status_text(&self) -> String {
        let s = &self.server;
        let mut t = String::new();
        let _ = writeln!(t, "kontalkd {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(t, "domain: {}", self.config.core.domain);
        let _ = writeln!(t, "uptime: {}s", self.started.elapsed().as_secs());
        let _ = writeln!(t, "connections: {}", s.connection_count());
        let _ = writeln!(t, "sessions: {}", s.session_count());
        match resident_bytes() {
            Some(b) => {
                let _ = writeln!(t, "memory: {} KiB resident", b / 1024);
            }
            None => {
                let _ = writeln!(t, "memory: unknown");
            }
        }
        let _ = writeln!(
            t,
            "store queue: {} request(s) in flight",
            s.pending_store_requests()
        );
        let _ = writeln!(t, "output queue: {} byte(s)", s.pending_output_bytes());
        if s.s2s_enabled() {
            let streams = s.s2s_status();
            let out = streams.iter().filter(|x| x.outbound).count();
            let _ = writeln!(
                t,
                "federation: {out} stream(s) out, {} in, {} stanza(s) queued",
                streams.len() - out,
                s.s2s_queued()
            );
        }
        if let Some((host, peers)) = s.net_status() {
            let up = peers.iter().filter(|p| p.state == "up").count();
            let _ = writeln!(
                t,
                "network: {} as {host}, {up} of {} link(s) up",
                self.config.core.domain,
                peers.len()
            );
            let _ = writeln!(
                t,
                "directory: {} user(s) on the other servers",
                s.net_directory_len()
            );
            let now = Instant::now();
            for p in peers {
                let mut line = format!("  {} {}", p.host, p.state);
                if let Some(addr) = p.address {
                    let _ = write!(line, " address={addr}");
                }
                if let Some(at) = p.retry_at {
                    let _ = write!(
                        line,
                        " retry_in={}s",
                        at.saturating_duration_since(now).as_secs()
                    );
                }
                let _ = writeln!(t, "{line}");
            }
        }
        t
    }

    fn sessions_text(&self) -> String {
        let list = self.server.sessions();
        let mut t = format!("{} session(s)\n", list.len());
        for s in list {
            let yes = |b: bool| if b { "yes" } else { "no" };
            let _ = writeln!(
                t,
                "{} address={} since={} listener={} tls={} available={} priority={} roster={} blocklist={} queued={}",
                s.jid,
                s.address,
                s.since_rfc3339().unwrap_or_else(|| "-".to_owned()),
                match s.listener {
                    proto_core::Listener::Starttls => "starttls",
                    proto_core::Listener::DirectTls => "direct-tls",
                    proto_core::Listener::Net => "net",
                    proto_core::Listener::S2s => "s2s",
                    proto_core::Listener::S2sDirect => "s2s-direct",
                },
                yes(s.tls),
                yes(s.available),
                s.priority,
                yes(s.roster),
                yes(s.blocklist),
                s.pending_output,
            );
        }
        t
    }

    /// `s2s`: the federation streams, outbound first, each with how it was
    /// authenticated.
    fn s2s_text(&self) -> String {
        let mut list = self.server.s2s_status();
        list.sort_by(|a, b| {
            (!a.outbound, &a.remote, &a.local).cmp(&(!b.outbound, &b.remote, &b.local))
        });
        let mut t = format!("{} stream(s)\n", list.len());
        for s in list {
            let (arrow, from, to) = if s.outbound {
                ("out", &s.local, &s.remote)
            } else {
                ("in", &s.remote, &s.local)
            };
            let _ = writeln!(
                t,
                "{arrow} {from} -> {to} auth={} address={} queued={} sm={} unacked={}{}",
                s.auth,
                s.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                s.queued,
                if s.sm { "yes" } else { "no" },
                s.unacked,
                if s.also.is_empty() {
                    String::new()
                } else {
                    format!(" also={}", s.also.join(","))
                },
            );
        }
        t
    }

    /// The answer to one HTTP request on the metrics endpoint.
    fn http(&self, head: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let request_line = lines.next().unwrap_or_default();
        let parts: Vec<&str> = request_line.split(' ').collect();
        let complete =
            head.len() <= MAX_REQUEST && (text.contains("\r\n\r\n") || text.contains("\n\n"));
        let headers_ok = lines
            .take_while(|l| !l.is_empty())
            .all(|l| l.split_once(':').is_some_and(|(name, _)| is_token(name)));
        if !complete || parts.len() != 3 || !headers_ok || !parts[2].starts_with("HTTP/1.") {
            return http_response("400 Bad Request", "text/plain", b"bad request\n");
        }
        if parts[0] != "GET" {
            return http_response(
                "405 Method Not Allowed",
                "text/plain",
                b"only GET is allowed\n",
            );
        }
        let path = parts[1].split('?').next().unwrap_or_default();
        if path != "/metrics" {
            return http_response("404 Not Found", "text/plain", b"see /metrics\n");
        }
        http_response("200 OK", OPENMETRICS_TYPE, self.metrics_text().as_bytes())
    }

    /// The metrics in OpenMetrics text format, ending in `# EOF`.
    pub fn metrics_text(&self) -> String {
        let s: &Server = &self.server;
        let c = s.counters();
        let mut m = Metrics(String::with_capacity(4096));
        m.family("kontalkd_build", "info", "The server's version.");
        m.sample(
            "kontalkd_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1,
        );
        m.gauge(
            "kontalkd_uptime_seconds",
            "Seconds since the server started.",
            self.started.elapsed().as_secs(),
        );
        if let Some(b) = resident_bytes() {
            m.gauge(
                "kontalkd_resident_memory_bytes",
                "Resident memory of the server process.",
                b,
            );
        }
        m.gauge(
            "kontalkd_connections",
            "Open client connections.",
            s.connection_count() as u64,
        );
        if let Some((_, peers)) = s.net_status() {
            m.gauge(
                "kontalkd_net_links_up",
                "Links up to the other servers of the Kontalk network.",
                peers.iter().filter(|p| p.state == "up").count() as u64,
            );
            m.gauge(
                "kontalkd_net_directory_users",
                "Users of the network's other servers that this server knows.",
                s.net_directory_len() as u64,
            );
        }
        if s.s2s_enabled() {
            let streams = s.s2s_status();
            let out = streams.iter().filter(|x| x.outbound).count();
            m.gauge(
                "kontalkd_s2s_streams_outbound",
                "Federation streams this server opened to other servers.",
                out as u64,
            );
            m.gauge(
                "kontalkd_s2s_streams_inbound",
                "Federation streams other servers opened to this one.",
                (streams.len() - out) as u64,
            );
            m.gauge(
                "kontalkd_s2s_queued",
                "Stanzas waiting for their federation stream to come up.",
                s.s2s_queued() as u64,
            );
        }
        m.gauge(
            "kontalkd_sessions",
            "Bound client sessions (resources).",
            s.session_count() as u64,
        );
        m.counter(
            "kontalkd_connections_accepted",
            "Client connections accepted.",
            c.connections_accepted,
        );
        m.family(
            "kontalkd_stanzas_received",
            "counter",
            "Stanzas received from clients, by kind.",
        );
        for (kind, n) in c.stanzas_in.by_kind() {
            m.sample(
                "kontalkd_stanzas_received_total",
                &format!("kind=\"{kind}\""),
                n,
            );
        }
        m.family(
            "kontalkd_stanzas_sent",
            "counter",
            "Stanzas sent to clients, by kind.",
        );
        for (kind, n) in c.stanzas_out.by_kind() {
            m.sample(
                "kontalkd_stanzas_sent_total",
                &format!("kind=\"{kind}\""),
                n,
            );
        }
        m.counter(
            "kontalkd_received_bytes",
            "Bytes received from clients (TLS included).",
            c.bytes_in,
        );
        m.counter(
            "kontalkd_sent_bytes",
            "Bytes sent to clients (TLS included).",
            c.bytes_out,
        );
        m.counter("kontalkd_logins", "Successful logins.", c.logins);
        m.counter(
            "kontalkd_login_failures",
            "Failed logins (wrong credentials and the like).",
            c.login_failures,
        );
        m.counter(
            "kontalkd_logins_refused",
            "Logins refused by a lockout (of the account at the address, or of the address).",
            c.logins_refused,
        );
        m.counter(
            "kontalkd_offline_messages_stored",
            "Messages stored for offline accounts.",
            c.offline_stored,
        );
        m.counter(
            "kontalkd_pushes",
            "Push notifications handed to the provider's client (one per device).",
            c.pushes,
        );
        m.gauge(
            "kontalkd_output_queue_bytes",
            "Bytes waiting to be sent, over every connection.",
            s.pending_output_bytes() as u64,
        );
        m.gauge(
            "kontalkd_store_queue",
            "Storage requests in flight.",
            s.pending_store_requests() as u64,
        );
        let st = &self.store_stats;
        m.family(
            "kontalkd_store_requests",
            "counter",
            "Storage requests executed, by outcome.",
        );
        m.sample("kontalkd_store_requests_total", "outcome=\"ok\"", st.ok);
        m.sample(
            "kontalkd_store_requests_total",
            "outcome=\"failed\"",
            st.failed,
        );
        m.family(
            "kontalkd_store_batch_seconds",
            "histogram",
            "Time to execute one batch of storage requests (one transaction).",
        );
        let mut cumulative = 0;
        for (i, n) in st.buckets.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format!("{b:?}"));
            m.sample(
                "kontalkd_store_batch_seconds_bucket",
                &format!("le=\"{le}\""),
                cumulative,
            );
        }
        let _ = writeln!(m.0, "kontalkd_store_batch_seconds_sum {}", st.seconds);
        m.sample("kontalkd_store_batch_seconds_count", "", st.batches);
        m.0.push_str("# EOF\n");
        m.0
    }
}

/// OpenMetrics text, one family after the other.
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        let _ = writeln!(self.0, "# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(&format!("{name}_total"), "", value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The process's resident memory, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Why [`send_admin`] got no answer.
#[derive(Debug)]
pub enum AdminError {
    /// No server listens on the socket (no socket file, or a stale one).
    NotRunning(PathBuf),
    /// The socket is there but talking to it failed.
    Failed(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::NotRunning(path) => write!(
                f,
                "the server is not running (no socket at {})",
                path.display()
            ),
            AdminError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AdminError {}

/// Sends one command line to the server of `data_dir`; returns whether it
/// succeeded and the text of its answer.
pub fn send_admin(data_dir: &Path, command: &str) -> Result<(bool, String), AdminError> {
    let path = socket_path(data_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(AdminError::NotRunning(path));
        }
        Err(e) => {
            return Err(AdminError::Failed(format!(
                "cannot connect to {}: {e}",
                path.display()
            )))
        }
    };
    let failed = |e: std::io::Error| AdminError::Failed(format!("{}: {e}", path.display()));
    let timeout = Some(Duration::from_secs(30));
    stream.set_read_timeout(timeout).map_err(failed)?;
    stream.set_write_timeout(timeout).map_err(failed)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(failed)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(failed)?;
    let (status, text) = answer.split_once('\n').unwrap_or((&answer, ""));
    match status {
        "ok" => Ok((true, text.to_owned())),
        "error" => Ok((false, text.to_owned())),
        _ => Err(AdminError::Failed(format!(
            "{}: an answer that is not one: {answer:?}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_complete_at_a_line_or_an_http_head_or_the_limit() {
        let now = Instant::now();
        let mut r = Request::new(Plane::Admin, now);
        assert!(!r.feed(b"stat"));
        assert!(r.feed(b"us\n"));
        let mut r = Request::new(Plane::Metrics, now);
        assert!(!r.feed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(r.feed(b"\r\n"));
        let mut r = Request::new(Plane::Admin, now);
        assert!(r.feed(&[b'x'; MAX_REQUEST + 100]));
        assert_eq!(r.buf.len(), MAX_REQUEST + 1, "no more is kept");
        assert_eq!(r.deadline(), now + REQUEST_TIMEOUT);
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let mut st = StoreStats::default();
        st.observe(Duration::from_micros(300), 3, 1);
        st.observe(Duration::from_millis(7), 1, 0);
        st.observe(Duration::from_secs(10), 1, 0);
        assert_eq!((st.ok, st.failed, st.batches), (4, 1, 3));
        assert_eq!(st.buckets[0], 1);
        assert_eq!(st.buckets[4], 1);
        assert_eq!(st.buckets[LATENCY_BUCKETS.len()], 1);
    }

    #[test]
    fn usernames_belong_to_the_domain() {
        assert_eq!(username("alice", "localhost").unwrap(), "alice");
        assert_eq!(username("alice@LocalHost", "localhost").unwrap(), "alice");
        assert!(username("alice@example.org", "localhost").is_err());
    }
}
