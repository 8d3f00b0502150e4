//! kontalkd-load: an XMPP load generator for loopback benchmarks of any
//! server (kontalkd, Prosody, ejabberd, the kontalkd-forwarder baseline).
//!
//! Run `kontalkd-load help` for the scenarios and options.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kontalkd_benches::client::{self, Login, Sasl, Session, Stream, Target};
use kontalkd_benches::kontalk::{self, Gateway, Identity};
use kontalkd_benches::procfs::{self, Processes};
use kontalkd_benches::report::{self, percentile, result_line, Better};
use kontalkd_benches::scan::{self, EndTagCounter, SmEvent, SmScanner, StampScanner};
use kontalkd_benches::scram::SaltCache;
use kontalkd_benches::{account, tls};
use proto_core::sasl::ScramHash;

const HELP: &str = "\
kontalkd-load: XMPP load generator for loopback benchmarks (standard XMPP, and Kontalk clients)

Usage: kontalkd-load SCENARIO [OPTIONS]

Scenarios:
  register   create the accounts PREFIX0..PREFIX(N-1) in-band (XEP-0077)
               --accounts N (200)
  relay      N sender/receiver pairs, messages of --body bytes, at most --window
             messages in flight per pair; reports messages/s and server CPU per message
               --pairs N (100) --body BYTES (64) --window W (32) --name NAME
             [--receivers ADDR: the receivers log in on another server (of a Kontalk
             network: the messages cross it); --receivers-domain NAME: theirs is another
             domain (federation: the messages cross S2S)]
             [--sm: stream management (XEP-0198) on every session; each batch ends
             with <r/>, the receivers answer the server's <r/>; every message must
             arrive once and in order and every request be acked; also reports
             acks/s and the p99 time to an ack]
  latency    pairs at a fixed total --rate (messages/s), one message per write;
             reports latency percentiles (send to receipt); with --batch-us T each
             sender writes every T µs what is due in one write (the shape of the
             relay scenario's batches), the senders' ticks spread over T
               --pairs N (10) --body BYTES (64) --rate R (required) --name NAME (rate)
  login      C concurrent clients log in (SCRAM) and bind, over and over
               --concurrency C (50) [--tls: STARTTLS first]
  idle       open N authenticated sessions (with presence), report server RSS per session
               --sessions N (2000) --settle SECS (2) [--tls]
  kontalk-register
             C concurrent Kontalk clients register their phone numbers over and over
             (instructions, phone, code: three STARTTLS connections, the last with the
             bridge certificate of the new key; again with force after a conflict), the
             codes through an SMS gateway this generator serves (GET); reports
             registrations/s; keeps each identity's certified key as DIR/<i>/signed.pgp
               --keys DIR (from kontalk_client.py bench-keys) --gateway ADDR (127.0.0.1:0)
             the server needs [kontalk] verification = \"http\", gateway_method = \"GET\",
             gateway_url = \"http://ADDR/sms?to={phone}&code={code}\", resend_after = 0,
             codes_per_address = 0
  kontalk-login
             C concurrent Kontalk clients log in with SASL EXTERNAL (STARTTLS with the
             certificate of the certified key) and bind, over and over
               --keys DIR (after kontalk-register and kontalk_client.py bench-certs)
  upload     one client asks --service for --count slots of --size bytes (XEP-0363,
             urn:xmpp:http:upload:0), PUTs every file over HTTPS, then GETs every one
             (a connection each, as clients do) and checks its bytes; reports MB/s and
             server CPU ms per MB of each phase
               --service JID (upload.DOMAIN) --size BYTES (1048576) --count N (20)
               --name NAME [--tls: STARTTLS for the XMPP session]
  table      print the side-by-side table of a file of RESULT lines
               table FILE --columns A,B,... [--ratio A/B]...

Common options:
  --server ADDR       server address, loopback only (127.0.0.1:5222)
  --domain NAME       XMPP domain (localhost)
  --pid PID[,PID]     server process(es): CPU seconds and RSS are read from /proc
  --label NAME        column name in RESULT lines (server)
  --prefix P          account prefix (b)      --password PW   password (benchpw)
  --mech M            SCRAM-SHA-256 (default) or SCRAM-SHA-1
  --concurrency C     parallel logins while setting up (50)
  --warmup SECS (1)   --secs SECS (5)         --timeout SECS (10): per I/O step
  --deadline SECS     abort the whole run after this long (300)

Results go to stdout as tab-separated lines: RESULT label metric direction value
(direction + higher is better, - lower is better, = context). Progress goes to stderr.
";

/// Nanoseconds since the generator started (for latency stamps).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Args {
    scenario: String,
    positional: Vec<String>,
    opts: HashMap<String, Vec<String>>,
}

const FLAGS: &[&str] = &["tls", "sm"];

impl Args {
    fn parse() -> Result<Args, String> {
        let mut scenario = None;
        let mut positional = Vec::new();
        let mut opts: HashMap<String, Vec<String>> = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if name == "help" {
                    return Ok(Args {
                        scenario: "help".into(),
                        positional,
                        opts,
                    });
                }
                let value = if FLAGS.contains(&name) {
                    "true".to_owned()
                } else {
                    it.next().ok_or_else(|| format!("--{name} needs a value"))?
                };
                opts.entry(name.to_owned()).or_default().push(value);
            } else if scenario.is_none() {
                scenario = Some(a);
            } else {
                positional.push(a);
            }
        }
        Ok(Args {
            scenario: scenario.unwrap_or_else(|| "help".into()),
            positional,
            opts,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.opts
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn str_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}")),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        for k in self.opts.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option --{k} for {} (see --help)",
                    self.scenario
                ));
            }
        }
        Ok(())
    }
}

const COMMON: &[&str] = &[
    "server",
    "domain",
    "pid",
    "label",
    "prefix",
    "password",
    "mech",
    "concurrency",
    "warmup",
    "secs",
    "timeout",
    "deadline",
];

struct Ctx {
    target: Target,
    cache: SaltCache,
    password: String,
    prefix: String,
    procs: Processes,
    label: String,
    concurrency: usize,
    warmup: Duration,
    secs: Duration,
    nonces: AtomicU64,
    epoch: u64,
    /// `--receivers`: the relay's receivers log in there (another server).
    receivers: Option<Target>,
}

impl Ctx {
    fn new(args: &Args) -> Result<Ctx, String> {
        let addr: SocketAddr = args
            .str_or("server", "127.0.0.1:5222")
            .parse()
            .map_err(|e| format!("--server: {e}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--server {addr}: the generator only loads servers on loopback"
            ));
        }
        let hash = match args
            .str_or("mech", "SCRAM-SHA-256")
            .to_ascii_uppercase()
            .as_str()
        {
            "SCRAM-SHA-256" => ScramHash::Sha256,
            "SCRAM-SHA-1" => ScramHash::Sha1,
            m => return Err(format!("--mech {m}: SCRAM-SHA-256 or SCRAM-SHA-1")),
        };
        let secs = |name, default: f64| -> Result<Duration, String> {
            let v: f64 = args.num(name, default)?;
            if !(0.0..=3600.0).contains(&v) {
                return Err(format!("--{name} {v}: between 0 and 3600 seconds"));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let concurrency: usize = args.num("concurrency", 50)?;
        if !(1..=2000).contains(&concurrency) {
            return Err("--concurrency: 1 to 2000".into());
        }
        let target = Target {
            addr,
            domain: args.str_or("domain", "localhost"),
            timeout: secs("timeout", 10.0)?,
            tls: tls::client_config(),
            hash,
        };
        let receivers = match args.get("receivers") {
            None => None,
            Some(r) => {
                let addr: SocketAddr = r.parse().map_err(|e| format!("--receivers: {e}"))?;
                if !addr.ip().is_loopback() {
                    return Err(format!("--receivers {addr}: loopback only"));
                }
                Some(Target {
                    addr,
                    domain: args.str_or("receivers-domain", &target.domain),
                    ..target.clone()
                })
            }
        };
        Ok(Ctx {
            target,
            receivers,
            cache: SaltCache::new(),
            password: args.str_or("password", "benchpw"),
            prefix: args.str_or("prefix", "b"),
            procs: Processes::parse(args.get("pid").unwrap_or(""))?,
            label: args.str_or("label", "server"),
            concurrency,
            warmup: secs("warmup", 1.0)?,
            secs: secs("secs", 5.0)?,
            nonces: AtomicU64::new(0),
            epoch: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
        })
    }

    fn nonce(&self) -> String {
        format!("{:x}n{:x}", self.epoch, self.nonces.fetch_add(1, Relaxed))
    }

    fn result(&self, metric: &str, better: Better, value: f64) {
        println!("{}", result_line(&self.label, metric, better, value));
        eprintln!("  {metric}: {value:.2}");
    }

    /// Lets the workers warm up, then counts what they do over the measured
    /// window (with a sample at each end) and tells them to stop: (done in
    /// the window, errors in all, first sample, last sample).
    fn measure(&self, counters: &[Counter], stop: &AtomicBool) -> (u64, u64, Sample, Sample) {
        thread::sleep(self.warmup);
        let (d0, _) = sum(counters);
        let s0 = self.sample();
        thread::sleep(self.secs);
        let (d1, e1) = sum(counters);
        let s1 = self.sample();
        stop.store(true, Relaxed);
        (d1 - d0, e1, s0, s1)
    }

    fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            server_cpu: self.procs.cpu_seconds(),
            each_cpu: if self.procs.0.len() > 1 {
                self.procs.each_cpu_seconds()
            } else {
                Vec::new()
            },
            own_cpu: procfs::self_cpu_seconds().unwrap_or(0.0),
        }
    }

    /// Reports server CPU per operation and both processes' CPU use.
    fn cpu_results(&self, name: &str, unit: &str, ops: u64, a: &Sample, b: &Sample) {
        let dt = b.at.duration_since(a.at).as_secs_f64();
        if let (Some(x), Some(y)) = (a.server_cpu, b.server_cpu) {
            if ops > 0 {
                self.result(
                    &format!("{name}: server CPU µs/{unit}"),
                    Better::Lower,
                    (y - x) * 1e6 / ops as f64,
                );
            }
            self.result(
                &format!("{name}: server CPU % of a core"),
                Better::Info,
                (y - x) / dt * 100.0,
            );
        }
        // Several servers (a message crossing two): each one's share, in
        // the order of --pid.
        for (i, (x, y)) in a.each_cpu.iter().zip(&b.each_cpu).enumerate() {
            if let (Some(x), Some(y), true) = (x, y, ops > 0) {
                self.result(
                    &format!("{name}: server CPU µs/{unit}, --pid #{}", i + 1),
                    Better::Lower,
                    (y - x) * 1e6 / ops as f64,
                );
            }
        }
        self.result(
            &format!("{name}: generator CPU % of a core"),
            Better::Info,
            (b.own_cpu - a.own_cpu) / dt * 100.0,
        );
    }

    /// Logs in `PREFIX{i}` for every `i` in `indices`, `concurrency` at a time.
    fn open_sessions(
        &self,
        indices: &[usize],
        starttls: bool,
        presence: bool,
        sm: bool,
    ) -> io::Result<Vec<Session>> {
        self.open_sessions_at(&self.target, indices, starttls, presence, sm)
    }

    /// [`Ctx::open_sessions`] on the server of `target`.
    fn open_sessions_at(
        &self,
        target: &Target,
        indices: &[usize],
        starttls: bool,
        presence: bool,
        sm: bool,
    ) -> io::Result<Vec<Session>> {
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<Session>>> =
            Mutex::new((0..indices.len()).map(|_| None).collect());
        let failed: Mutex<Option<io::Error>> = Mutex::new(None);
        let workers = self.concurrency.min(indices.len()).max(1);
        thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failed.lock().expect("lock").is_some() {
                        return;
                    }
                    let k = next.fetch_add(1, Relaxed);
                    let Some(&i) = indices.get(k) else { return };
                    let user = account(&self.prefix, i);
                    let nonce = self.nonce();
                    let how = Login {
                        sasl: Sasl::Scram {
                            user: &user,
                            password: &self.password,
                            nonce: &nonce,
                        },
                        resource: "load",
                        starttls,
                        presence,
                        sm,
                    };
                    match client::login(target, &how, &self.cache) {
                        Ok(sess) => slots.lock().expect("lock")[k] = Some(sess),
                        Err(e) => {
                            *failed.lock().expect("lock") =
                                Some(io::Error::other(format!("login of {user}: {e}")));
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(slots
            .into_inner()
            .expect("lock")
            .into_iter()
            .map(|s| s.expect("every slot filled"))
            .collect())
    }
}

struct Sample {
    at: Instant,
    server_cpu: Option<f64>,
    /// Each `--pid`'s CPU seconds, when there are several.
    each_cpu: Vec<Option<f64>>,
    own_cpu: f64,
}

/// Per-thread counters, padded so threads do not share cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Counter {
    done: AtomicU64,
    errors: AtomicU64,
}

fn sum(counters: &[Counter]) -> (u64, u64) {
    counters.iter().fold((0, 0), |(d, e), c| {
        (d + c.done.load(Relaxed), e + c.errors.load(Relaxed))
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn plain(s: Stream) -> io::Result<TcpStream> {
    match s {
        Stream::Plain(t) => Ok(t),
        Stream::Tls(_) => Err(io::Error::other("relay sessions are plaintext")),
    }
}

/// Reads whatever a socket has without blocking; returns errors seen.
fn drain(sock: &mut TcpStream, counter: &mut EndTagCounter, buf: &mut [u8]) -> io::Result<u64> {
    sock.set_nonblocking(true)?;
    let mut errors = 0;
    let res = loop {
        match sock.read(buf) {
            Ok(0) => break Err(io::Error::other("server closed a sender's connection")),
            Ok(n) => errors += counter.feed(&buf[..n]).1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(errors),
            Err(e) => break Err(e),
        }
    };
    sock.set_nonblocking(false)?;
    res
}

/// A chat message from a sender to `to`, with a body of `body` bytes.
/// With `stamp`, the body starts with the stamp marker and 20 digits;
/// returns the message and the offset of the digits.
fn message(to: &str, body: usize, stamp: bool) -> (Vec<u8>, usize) {
    let mut m = format!("<message to='{to}' type='chat' id='m'><body>").into_bytes();
    let mut offset = 0;
    let mut len = 0;
    if stamp {
        m.extend_from_slice(scan::STAMP_MARK);
        offset = m.len();
        m.extend_from_slice(&[b'0'; scan::STAMP_DIGITS]);
        len = scan::STAMP_MARK.len() + scan::STAMP_DIGITS;
    }
    let filler = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    m.extend(filler.iter().cycle().take(body.saturating_sub(len)));
    m.extend_from_slice(b"</body></message>");
    (m, offset)
}

fn pair_sessions(ctx: &Ctx, pairs: usize, sm: bool) -> Result<Vec<(Session, Session)>, String> {
    let t = Instant::now();
    // With stream management the presences go out once every session is
    // there and has enabled it: each counts in its partner's `h` (a server
    // counts it; the forwarder drops bytes for a partner not yet connected).
    let mut sessions = match &ctx.receivers {
        None => {
            let indices: Vec<usize> = (0..2 * pairs).collect();
            ctx.open_sessions(&indices, false, !sm, sm)
        }
        // Senders on --server, receivers on --receivers (another server of
        // a Kontalk network): interleaved as pairs again.
        Some(receivers) => {
            let even: Vec<usize> = (0..pairs).map(|p| 2 * p).collect();
            let odd: Vec<usize> = (0..pairs).map(|p| 2 * p + 1).collect();
            ctx.open_sessions(&even, false, !sm, sm).and_then(|tx| {
                let rx = ctx.open_sessions_at(receivers, &odd, false, !sm, sm)?;
                Ok(tx.into_iter().zip(rx).flat_map(|(a, b)| [a, b]).collect())
            })
        }
    }
    .map_err(|e| e.to_string())?;
    if sm {
        for s in &mut sessions {
            s.stream
                .write_all(b"<presence/>")
                .map_err(|e| format!("presence of {}: {e}", s.jid))?;
        }
    }
    eprintln!(
        "  {} sessions logged in in {:.1} s",
        sessions.len(),
        t.elapsed().as_secs_f64()
    );
    let mut it = sessions.into_iter();
    let mut out = Vec::new();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    // Let presence echoes and the like arrive before measuring.
    thread::sleep(Duration::from_millis(200));
    Ok(out)
}

fn relay(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let pairs: usize = args.num("pairs", 100)?;
    let body: usize = args.num("body", 64)?;
    let window: u64 = args.num("window", 32)?;
    let sm = args.flag("sm");
    if !(1..=5000).contains(&pairs) || !(1..=65536).contains(&body) || !(2..=4096).contains(&window)
    {
        return Err("--pairs 1..5000, --body 1..65536, --window 2..4096".into());
    }
    if sm && body < scan::STAMP_MARK.len() + scan::STAMP_DIGITS {
        return Err(
            "--body: at least 22 bytes with --sm (a sequence number is in the body)".into(),
        );
    }
    // The default of 100 pairs is unnamed; other counts say how many.
    let default = format!(
        "{}{}{}",
        if body % 1024 == 0 {
            format!("{} KiB", body / 1024)
        } else {
            format!("{body} B")
        },
        if sm { ", SM" } else { "" },
        match pairs {
            100 => String::new(),
            1 => ", 1 pair".to_owned(),
            n => format!(", {n} pairs"),
        }
    );
    let name = format!("relay {}", args.str_or("name", &default));
    eprintln!(
        "{name}: {pairs} pairs, window {window}{}, on {}",
        if sm { ", stream management" } else { "" },
        ctx.label
    );
    let sessions = pair_sessions(ctx, pairs, sm)?;
    // Sequence numbers carry this run's id: a message left over from an
    // earlier run (offline storage) is told apart from a lost or repeated one.
    let run = (ctx.epoch / 1000) % RUN_IDS;
    let stop = AtomicBool::new(false);
    let counters: Vec<Counter> = (0..pairs).map(|_| Counter::default()).collect();
    let (delivered, errors, s0, s1, failures, stats) = thread::scope(|s| {
        let mut handles = Vec::new();
        for ((tx, rx), ctr) in sessions.into_iter().zip(&counters) {
            let stop = &stop;
            handles.push(
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        if sm {
                            relay_pair_sm(tx, rx, body, window, run, stop, ctr)
                        } else {
                            relay_pair(tx, rx, body, window, stop, ctr).map(|()| SmStats::default())
                        }
                    })
                    .expect("spawn"),
            );
        }
        let (done, e1, s0, s1) = ctx.measure(&counters, &stop);
        let mut failures = Vec::new();
        let mut stats = Vec::new();
        for h in handles {
            match h.join().expect("relay thread") {
                Ok(st) => stats.push(st),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (done, e1, s0, s1, failures, stats)
    });
    if let Some(f) = failures.first() {
        return Err(format!(
            "{} of {pairs} pairs failed; first: {f}",
            failures.len()
        ));
    }
    let dt = s1.at.duration_since(s0.at).as_secs_f64();
    let rate = delivered as f64 / dt;
    ctx.result(&format!("{name}: msgs/s"), Better::Higher, rate);
    ctx.cpu_results(&name, "msg", delivered, &s0, &s1);
    if sm {
        let mut waits: Vec<u64> = stats
            .iter()
            .flat_map(|st| &st.acks)
            .filter(|(at, _)| *at >= s0.at && *at < s1.at)
            .map(|&(_, ns)| ns)
            .collect();
        waits.sort_unstable();
        let (requests, answers, asked) = stats.iter().fold((0, 0, 0), |(r, a, q), st| {
            (r + st.requests, a + st.answers, q + st.server_requests)
        });
        eprintln!(
            "  every message delivered once and in order; {requests} ack requests, \
             {answers} acks, every request covered; the server asked for {asked} acks"
        );
        ctx.result(
            &format!("{name}: acks/s"),
            Better::Info,
            waits.len() as f64 / dt,
        );
        if waits.is_empty() {
            eprintln!("  warning: no request was acked within the measured window");
        } else {
            ctx.result(
                &format!("{name}: p99 ms to ack"),
                Better::Lower,
                percentile(&waits, 99.0) as f64 / 1e6,
            );
        }
        let stale: u64 = stats.iter().map(|st| st.stale).sum();
        if stale > 0 {
            eprintln!("  warning: {stale} messages from earlier runs (offline storage) arrived");
            ctx.result(
                &format!("{name}: earlier runs' messages"),
                Better::Info,
                stale as f64,
            );
        }
    }
    if errors > 0 {
        ctx.result(
            &format!("{name}: error stanzas"),
            Better::Lower,
            errors as f64,
        );
    }
    Ok(())
}

fn relay_pair(
    sender: Session,
    receiver: Session,
    body: usize,
    window: u64,
    stop: &AtomicBool,
    ctr: &Counter,
) -> io::Result<()> {
    let to = receiver.jid.clone();
    let mut tx = plain(sender.stream)?;
    let mut rx = plain(receiver.stream)?;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let (msg, _) = message(&to, body, false);
    let batch = msg.repeat(window as usize);
    let mut rx_count = EndTagCounter::new();
    let mut tx_count = EndTagCounter::new();
    let mut received = rx_count.feed(&receiver.leftover).0;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rounds = 0u64;
    let mut last_progress = Instant::now();
    let mut draining_since: Option<Instant> = None;
    loop {
        if draining_since.is_none() && stop.load(Relaxed) {
            draining_since = Some(Instant::now());
        }
        let in_flight = sent.saturating_sub(received);
        match draining_since {
            // Stopped: let what is in flight arrive, so nothing is left offline.
            Some(t) if in_flight == 0 || t.elapsed() > Duration::from_secs(2) => break,
            Some(_) => {}
            None if in_flight <= window / 2 => {
                let k = window - in_flight;
                tx.write_all(&batch[..k as usize * msg.len()])?;
                sent += k;
            }
            None => {}
        }
        match rx.read(&mut buf) {
            Ok(0) => return Err(io::Error::other("server closed a receiver's connection")),
            Ok(n) => {
                let (m, e) = rx_count.feed(&buf[..n]);
                received += m;
                ctr.done.fetch_add(m, Relaxed);
                if e > 0 {
                    ctr.errors.fetch_add(e, Relaxed);
                }
                if m > 0 {
                    last_progress = Instant::now();
                }
            }
            Err(e) if is_timeout(&e) => {
                if draining_since.is_none() && last_progress.elapsed() > Duration::from_secs(10) {
                    return Err(io::Error::other(format!(
                        "no message delivered to {to} for 10 s ({in_flight} in flight)"
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        rounds += 1;
        if rounds % 256 == 0 {
            let e = drain(&mut tx, &mut tx_count, &mut buf)?;
            if e > 0 {
                ctr.errors.fetch_add(e, Relaxed);
            }
        }
    }
    let _ = tx.write_all(client::STREAM_END);
    let _ = rx.write_all(client::STREAM_END);
    Ok(())
}

/// Runs are told apart by 7 digits of a message's stamp (20 digits: a u64),
/// its sequence number within the run by the last 12.
const RUN_IDS: u64 = 10_000_000;
const SEQ_SPAN: u64 = 1_000_000_000_000;
/// How long a pair waits for a message or an ack before it reports a failure.
const STALL: Duration = Duration::from_secs(30);
const SM_REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// What a stream-management pair saw besides its messages.
#[derive(Default)]
struct SmStats {
    /// Per ack request: when its answer came and how long it took (ns).
    acks: Vec<(Instant, u64)>,
    /// `<r/>` sent and `<a/>` received by the sender.
    requests: u64,
    answers: u64,
    /// The server's `<r/>` to the sender and the receiver.
    server_requests: u64,
    /// Messages of earlier runs that arrived.
    stale: u64,
}

/// A connection with stream management on, non-blocking, in a pair's poll.
struct SmConn {
    sock: mio::net::TcpStream,
    scan: SmScanner,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    /// Stanzas received since `<enable/>` (our `h`, mod 2^32).
    handled: u32,
    /// The server's `<r/>` (answered).
    requests: u64,
}

impl SmConn {
    fn new(s: Stream, poll: &mio::Poll, token: usize) -> io::Result<SmConn> {
        let sock = plain(s)?;
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(sock);
        poll.registry().register(
            &mut sock,
            mio::Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        Ok(SmConn {
            sock,
            scan: SmScanner::new(),
            out: Vec::new(),
            handled: 0,
            requests: 0,
        })
    }

    /// Writes what the socket takes and keeps the rest for [`SmConn::flush`].
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.out.is_empty() {
            let n = write_some(&mut self.sock, data)?;
            self.out.extend_from_slice(&data[n..]);
            Ok(())
        } else {
            self.out.extend_from_slice(data);
            self.flush()
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let n = write_some(&mut self.sock, &self.out)?;
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Scans bytes from the server: counts its stanzas, hands every
    /// top-level element to `on` and answers each `<r/>`.
    fn take(
        &mut self,
        data: &[u8],
        mut on: impl FnMut(&SmEvent) -> io::Result<()>,
    ) -> io::Result<()> {
        let (handled, mut requests, mut res) = (&mut self.handled, 0, Ok(()));
        self.scan.feed(data, |ev| {
            match ev {
                SmEvent::Message { .. } | SmEvent::Stanza { .. } => {
                    *handled = handled.wrapping_add(1);
                }
                SmEvent::Request => requests += 1,
                _ => {}
            }
            if res.is_ok() {
                res = on(&ev);
            }
        });
        res?;
        if requests > 0 {
            // One answer per request, in one write.
            self.requests += requests;
            let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.handled);
            self.send(a.repeat(requests as usize).as_bytes())?;
        }
        Ok(())
    }

    /// Reads everything the socket has (edge-triggered poll).
    fn read(
        &mut self,
        buf: &mut [u8],
        mut on: impl FnMut(&SmEvent) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            match self.sock.read(buf) {
                Ok(0) => return Err(io::Error::other("the server closed the connection")),
                Ok(n) => {
                    self.take(&buf[..n], &mut on)?;
                    // A short read emptied the socket: more data makes a new edge.
                    if n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `<a h/>` with every stanza received so far.
    fn ack(&mut self) -> io::Result<()> {
        let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.handled);
        self.send(a.as_bytes())
    }
}

fn write_some(sock: &mut mio::net::TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A stream-management pair's bookkeeping.
struct SmPair {
    to: String,
    run: u64,
    /// Messages sent, and received in order.
    sent: u64,
    received: u64,
    errors: u64,
    /// Stanzas the sender sent since `<enable/>` (the presence, then the
    /// messages), mod 2^32: the `h` the server's acks must reach.
    stanzas: u32,
    /// The server's last `h`.
    acked: u32,
    /// Ack requests not covered yet: when sent, stanzas sent before them.
    asked: VecDeque<(Instant, u32)>,
    stats: SmStats,
}

/// Whether `a` is at least `b` in the mod-2^32 order of `h`.
fn h_at_least(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) < 1 << 31
}

impl SmPair {
    fn on_receiver(&mut self, ev: &SmEvent) -> io::Result<()> {
        match *ev {
            SmEvent::Message { error: true, .. } | SmEvent::Stanza { error: true } => {
                self.errors += 1;
            }
            SmEvent::Message { stamp: Some(v), .. } if v / SEQ_SPAN == self.run => {
                let seq = v % SEQ_SPAN;
                if seq != self.received {
                    return Err(io::Error::other(format!(
                        "{} got message {seq} when {} was next ({} sent): {}",
                        self.to,
                        self.received,
                        self.sent,
                        if seq < self.received {
                            "a duplicate"
                        } else {
                            "messages lost or out of order"
                        }
                    )));
                }
                self.received += 1;
            }
            SmEvent::Message { .. } => self.stats.stale += 1,
            SmEvent::Stanza { .. } | SmEvent::Request | SmEvent::Ack(_) => {}
            SmEvent::Other(ref name) => {
                return Err(io::Error::other(format!("{} got <{name}/>", self.to)))
            }
            SmEvent::End => return Err(io::Error::other("the server ended a receiver's stream")),
        }
        Ok(())
    }

    fn on_sender(&mut self, ev: &SmEvent) -> io::Result<()> {
        match *ev {
            SmEvent::Ack(Some(h)) => {
                if !h_at_least(h, self.acked) || !h_at_least(self.stanzas, h) {
                    return Err(io::Error::other(format!(
                        "the server acked h={h} after h={} with {} stanzas sent",
                        self.acked, self.stanzas
                    )));
                }
                self.acked = h;
                self.stats.answers += 1;
                let now = Instant::now();
                // An answer covers every request sent after no more stanzas than it counts.
                while let Some(&(at, before)) = self.asked.front() {
                    if !h_at_least(h, before) {
                        break;
                    }
                    self.asked.pop_front();
                    self.stats
                        .acks
                        .push((now, now.duration_since(at).as_nanos() as u64));
                }
            }
            SmEvent::Ack(None) => return Err(io::Error::other("an <a/> without a valid h")),
            SmEvent::Message { error, .. } | SmEvent::Stanza { error } => {
                self.errors += u64::from(error);
            }
            SmEvent::Request => {}
            SmEvent::Other(ref name) => {
                return Err(io::Error::other(format!(
                    "the sender to {} got <{name}/>",
                    self.to
                )))
            }
            SmEvent::End => return Err(io::Error::other("the server ended a sender's stream")),
        }
        Ok(())
    }
}

/// The relay with stream management: like [`relay_pair`], and every batch
/// ends with `<r/>`; the receiver answers the server's `<r/>`. Every
/// message must arrive once and in order (sequence numbers in the bodies),
/// and every request must be acked with an `h` that covers what was sent
/// before it; a message or an ack missing for 30 s fails the pair.
fn relay_pair_sm(
    sender: Session,
    receiver: Session,
    body: usize,
    window: u64,
    run: u64,
    stop: &AtomicBool,
    ctr: &Counter,
) -> io::Result<SmStats> {
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(8);
    let mut tx = SmConn::new(sender.stream, &poll, 0)?;
    let mut rx = SmConn::new(receiver.stream, &poll, 1)?;
    let (mut msg, offset) = message(&receiver.jid, body, true);
    let mut p = SmPair {
        to: receiver.jid,
        run,
        sent: 0,
        received: 0,
        errors: 0,
        stanzas: 1,
        acked: 0,
        asked: VecDeque::new(),
        stats: SmStats::default(),
    };
    tx.take(&sender.leftover, |ev| p.on_sender(ev))?;
    rx.take(&receiver.leftover, |ev| p.on_receiver(ev))?;
    let mut batch = Vec::with_capacity(window as usize * msg.len() + SM_REQUEST.len());
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_progress = Instant::now();
    let mut draining_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if draining_since.is_none() && stop.load(Relaxed) {
            draining_since = Some(now);
        }
        let in_flight = p.sent - p.received;
        match draining_since {
            // Stopped: everything in flight must arrive and be acked.
            Some(_) if in_flight == 0 && p.asked.is_empty() => break,
            Some(t) if now.duration_since(t) > STALL => {
                return Err(io::Error::other(format!(
                    "{} s after the run {in_flight} of {} messages to {} were not delivered \
                     and {} ack requests not covered (h={} of {} stanzas)",
                    STALL.as_secs(),
                    p.sent,
                    p.to,
                    p.asked.len(),
                    p.acked,
                    p.stanzas
                )));
            }
            None if in_flight <= window / 2 && tx.out.is_empty() => {
                let k = window - in_flight;
                batch.clear();
                for _ in 0..k {
                    scan::write_stamp(&mut msg[offset..], run * SEQ_SPAN + p.sent);
                    batch.extend_from_slice(&msg);
                    p.sent += 1;
                }
                batch.extend_from_slice(SM_REQUEST);
                p.stanzas = p.stanzas.wrapping_add(k as u32);
                p.asked.push_back((now, p.stanzas));
                p.stats.requests += 1;
                tx.send(&batch)?;
            }
            _ => {}
        }
        if in_flight > 0 && now.duration_since(last_progress) > STALL {
            return Err(io::Error::other(format!(
                "no message delivered to {} for {} s ({in_flight} in flight)",
                p.to,
                STALL.as_secs()
            )));
        }
        if let Some(&(at, _)) = p.asked.front() {
            if now.duration_since(at) > STALL {
                return Err(io::Error::other(format!(
                    "no ack for {} s (h={} of {} stanzas, {} requests open): \
                     the server does not answer <r/>",
                    STALL.as_secs(),
                    p.acked,
                    p.stanzas,
                    p.asked.len()
                )));
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let (received, errors) = (p.received, p.errors);
        for ev in events.iter() {
            let conn = if ev.token().0 == 0 { &mut tx } else { &mut rx };
            if ev.is_writable() {
                conn.flush()?;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                if ev.token().0 == 0 {
                    conn.read(&mut buf, |e| p.on_sender(e))?;
                } else {
                    conn.read(&mut buf, |e| p.on_receiver(e))?;
                }
            }
        }
        if p.received > received {
            ctr.done.fetch_add(p.received - received, Relaxed);
            last_progress = Instant::now();
        }
        if p.errors > errors {
            ctr.errors.fetch_add(p.errors - errors, Relaxed);
        }
    }
    // Ack everything received, so that nothing is left for the server to
    // redeliver (or store offline) when the streams end.
    for conn in [&mut tx, &mut rx] {
        let _ = conn.ack();
        let _ = conn.send(client::STREAM_END);
    }
    p.stats.server_requests = tx.requests + rx.requests;
    Ok(p.stats)
}

fn latency(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let pairs: usize = args.num("pairs", 10)?;
    let body: usize = args.num("body", 64)?;
    let rate: f64 = args.num("rate", 0.0)?;
    let batch_ns: u64 = args.num::<u64>("batch-us", 0)?.saturating_mul(1000);
    if batch_ns > 100_000_000 {
        return Err("--batch-us: at most 100000".into());
    }
    if !(1..=1000).contains(&pairs) || !(1.0..=10_000_000.0).contains(&rate) {
        return Err("--pairs 1..1000 and --rate (messages/s, required) 1..10^7".into());
    }
    if body < scan::STAMP_MARK.len() + scan::STAMP_DIGITS {
        return Err("--body: at least 22 bytes (the send time is in the body)".into());
    }
    let name = format!("latency {}", args.str_or("name", &format!("@ {rate:.0}/s")));
    eprintln!(
        "{name}: {pairs} pairs, {rate:.0} messages/s, on {}",
        ctx.label
    );
    let sessions = pair_sessions(ctx, pairs, false)?;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    // The receivers' readiness comes from epoll: one system call per turn,
    // not a read per receiver.
    let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
    for (tx, rx) in sessions {
        let (msg, offset) = message(&rx.jid, body, true);
        senders.push((plain(tx.stream).map_err(|e| e.to_string())?, msg, offset));
        let sock = plain(rx.stream).map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut sock = mio::net::TcpStream::from_std(sock);
        poll.registry()
            .register(
                &mut sock,
                mio::Token(receivers.len()),
                mio::Interest::READABLE,
            )
            .map_err(|e| e.to_string())?;
        let mut scanner = StampScanner::new();
        scanner.feed(&rx.leftover, |_| {});
        receivers.push((sock, scanner));
    }
    let mut events = mio::Events::with_capacity(1024);
    let start = now_ns();
    let lo = start + ctx.warmup.as_nanos() as u64;
    let hi = lo + ctx.secs.as_nanos() as u64;
    // Room for every sample up front: growing a vector of millions of
    // samples mid-run would stall the generator and show as latency.
    let mut samples: Vec<u64> =
        Vec::with_capacity((rate * (ctx.secs.as_secs_f64() + 1.0)).min(50_000_000.0) as usize);
    let mut buf = vec![0u8; 64 * 1024];
    // Batches (--batch-us): sender i's next write and its next message
    // (messages are numbered over all senders, round robin).
    let mut next_tick: Vec<u64> = (0..pairs as u64)
        .map(|i| start + i * batch_ns / pairs as u64)
        .collect();
    let mut next_k: Vec<u64> = (0..pairs as u64).collect();
    let mut batch = Vec::new();
    let (mut sent, mut sent_in_window, mut late) = (0u64, 0u64, 0u64);
    let (mut s0, mut s1) = (None, None);
    // One thread paces and receives: message k is written at start + k / rate
    // (round robin over the senders), and in between it asks epoll (without
    // waiting) which receivers have bytes and reads those. When there was
    // nothing to do it sleeps ~60 µs (20 µs plus timer slack) if the next
    // message is due later than that, and polls again at once otherwise. No
    // thread wakes up per message, so the generator costs little more than
    // its send and receive system calls; at low rates the sleeping adds at
    // most one idle period to a measured latency.
    let stragglers = 500_000_000;
    loop {
        let now = now_ns();
        if s0.is_none() && now >= lo {
            s0 = Some(ctx.sample());
        }
        if s1.is_none() && now >= hi {
            s1 = Some(ctx.sample());
        }
        if now >= hi + stragglers {
            break;
        }
        let mut busy = false;
        if now < hi && batch_ns > 0 {
            // Batches: sender i writes every batch_ns, all of its messages
            // then due in one write. The senders' ticks are spread over the
            // period (clients are not synchronized), so the server sees a
            // batch every batch_ns / pairs, not all of them at once.
            for (i, (sock, msg, offset)) in senders.iter_mut().enumerate() {
                if now < next_tick[i] {
                    continue;
                }
                let stamp = now_ns();
                let mut k = next_k[i];
                while start + (k as f64 * 1e9 / rate) as u64 <= now {
                    scan::write_stamp(&mut msg[*offset..], stamp);
                    batch.extend_from_slice(msg);
                    if (lo..hi).contains(&stamp) {
                        sent_in_window += 1;
                        if stamp > next_tick[i] + 1_000_000 {
                            late += 1;
                        }
                    }
                    k += pairs as u64;
                    sent += 1;
                }
                next_k[i] = k;
                if !batch.is_empty() {
                    sock.write_all(&batch).map_err(|e| format!("send: {e}"))?;
                    batch.clear();
                    busy = true;
                }
                while next_tick[i] <= now {
                    next_tick[i] += batch_ns;
                }
            }
        } else if now < hi {
            let due = ((now - start) as f64 * rate / 1e9) as u64 + 1;
            while sent < due {
                let (sock, msg, offset) = &mut senders[sent as usize % pairs];
                let stamp = now_ns();
                scan::write_stamp(&mut msg[*offset..], stamp);
                sock.write_all(msg).map_err(|e| format!("send: {e}"))?;
                let scheduled = start + (sent as f64 * 1e9 / rate) as u64;
                if (lo..hi).contains(&stamp) {
                    sent_in_window += 1;
                    if stamp > scheduled + 1_000_000 {
                        late += 1;
                    }
                }
                sent += 1;
                busy = true;
            }
        }
        match poll.poll(&mut events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let (sock, scanner) = &mut receivers[ev.token().0];
            // Edge-triggered: read until the socket is empty.
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => return Err("the server closed a receiver's connection".into()),
                    Ok(n) => {
                        let at = now_ns();
                        scanner.feed(&buf[..n], |stamp| {
                            if (lo..hi).contains(&stamp) {
                                samples.push(at.saturating_sub(stamp));
                            }
                        });
                        busy = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("receive: {e}")),
                }
            }
        }
        let mut next_due = start + (sent as f64 * 1e9 / rate) as u64;
        if batch_ns > 0 {
            next_due = next_tick.iter().copied().min().unwrap_or(next_due);
        }
        if !busy && (now >= hi || next_due > now_ns() + 100_000) {
            thread::sleep(Duration::from_micros(20));
        }
    }
    for (sock, _, _) in &mut senders {
        let _ = sock.write_all(client::STREAM_END);
    }
    for (sock, _) in receivers {
        let sock: TcpStream = sock.into();
        let _ = sock.set_nonblocking(false);
        let _ = (&sock).write_all(client::STREAM_END);
    }
    let (s0, s1) = (s0.expect("sampled"), s1.expect("sampled"));
    samples.sort_unstable();
    let us = |p: f64| percentile(&samples, p) as f64 / 1000.0;
    let dt = s1.at.duration_since(s0.at).as_secs_f64();
    ctx.result(
        &format!("{name}: rate msgs/s"),
        Better::Info,
        sent_in_window as f64 / dt,
    );
    ctx.result(&format!("{name}: p50 µs"), Better::Lower, us(50.0));
    ctx.result(&format!("{name}: p99 µs"), Better::Lower, us(99.0));
    ctx.result(&format!("{name}: p99.9 µs"), Better::Lower, us(99.9));
    eprintln!("  max: {:.0} µs", us(100.0));
    let lost = sent_in_window.saturating_sub(samples.len() as u64);
    if lost > 0 {
        ctx.result(
            &format!("{name}: not delivered"),
            Better::Lower,
            lost as f64,
        );
    }
    if late > 0 {
        eprintln!("  warning: the generator sent {late} messages more than 1 ms late");
    }
    // Always reported: a run without late sends is a 0 in the table, not a gap.
    ctx.result(
        &format!("{name}: sent >1 ms late"),
        Better::Info,
        late as f64,
    );
    ctx.cpu_results(&name, "msg", samples.len() as u64, &s0, &s1);
    Ok(())
}

/// What a loop of operations measured: done in the window, failed in
/// all, the samples at both ends of the window, the durations (ns) of the
/// operations that ended in it, sorted, and the first failure.
struct Looped {
    done: u64,
    errors: u64,
    s0: Sample,
    s1: Sample,
    durations: Vec<u64>,
    first_error: Option<String>,
}

/// Runs `op(worker, k)` over and over on `workers` threads (`k` counts a
/// worker's operations), and measures the window (see [`Ctx::measure`]).
/// A failed operation is counted, its worker pauses 10 ms and goes on.
fn op_loop<F>(ctx: &Ctx, workers: usize, op: F) -> Looped
where
    F: Fn(usize, u64) -> Result<(), String> + Sync,
{
    let stop = AtomicBool::new(false);
    let counters: Vec<Counter> = (0..workers).map(|_| Counter::default()).collect();
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let (done, errors, s0, s1, mut times) = thread::scope(|s| {
        let mut handles = Vec::new();
        for (j, ctr) in counters.iter().enumerate() {
            let (stop, first_error, op) = (&stop, &first_error, &op);
            handles.push(
                thread::Builder::new()
                    .stack_size(512 * 1024)
                    .spawn_scoped(s, move || {
                        let mut times = Vec::new();
                        let mut k = 0u64;
                        while !stop.load(Relaxed) {
                            let t = Instant::now();
                            match op(j, k) {
                                Ok(()) => {
                                    let end = Instant::now();
                                    times.push((end, end.duration_since(t).as_nanos() as u64));
                                    ctr.done.fetch_add(1, Relaxed);
                                }
                                Err(e) => {
                                    ctr.errors.fetch_add(1, Relaxed);
                                    first_error.lock().expect("lock").get_or_insert(e);
                                    thread::sleep(Duration::from_millis(10));
                                }
                            }
                            k += 1;
                        }
                        times
                    })
                    .expect("spawn"),
            );
        }
        let (done, e1, s0, s1) = ctx.measure(&counters, &stop);
        let times: Vec<(Instant, u64)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect();
        (done, e1, s0, s1, times)
    });
    times.retain(|(end, _)| *end >= s0.at && *end < s1.at);
    let mut durations: Vec<u64> = times.into_iter().map(|(_, d)| d).collect();
    durations.sort_unstable();
    Looped {
        done,
        errors,
        s0,
        s1,
        durations,
        first_error: first_error.into_inner().expect("lock"),
    }
}

impl Looped {
    /// Reports `NAME: UNITs/s`, the p99 time of one, the server CPU per one
    /// and the failures; an error when none succeeded.
    fn report(&self, ctx: &Ctx, name: &str, unit: &str, units: &str) -> Result<(), String> {
        if let Some(e) = &self.first_error {
            eprintln!("  {} {units} failed; first: {e}", self.errors);
            if self.done == 0 {
                return Err(format!("{name}: no {unit} succeeded: {e}"));
            }
        }
        let dt = self.s1.at.duration_since(self.s0.at).as_secs_f64();
        ctx.result(
            &format!("{name}: {units}/s"),
            Better::Higher,
            self.done as f64 / dt,
        );
        ctx.result(
            &format!("{name}: p99 ms per {unit}"),
            Better::Lower,
            percentile(&self.durations, 99.0) as f64 / 1e6,
        );
        ctx.cpu_results(name, unit, self.done, &self.s0, &self.s1);
        if self.errors > 0 {
            ctx.result(
                &format!("{name}: failed {units}"),
                Better::Lower,
                self.errors as f64,
            );
        }
        Ok(())
    }
}

/// One login and bind, then the stream is closed.
fn login_once(ctx: &Ctx, sasl: Sasl<'_>, resource: &str, starttls: bool) -> Result<(), String> {
    let how = Login {
        sasl,
        resource,
        starttls,
        presence: false,
        sm: false,
    };
    let sess = client::login(&ctx.target, &how, &ctx.cache).map_err(|e| e.to_string())?;
    sess.stream.close();
    Ok(())
}

fn login(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let starttls = args.flag("tls");
    let name = format!("login {}", if starttls { "STARTTLS" } else { "plaintext" });
    let workers = ctx.concurrency;
    eprintln!("{name}: {workers} concurrent clients on {}", ctx.label);
    op_loop(ctx, workers, |j, k| {
        let user = account(&ctx.prefix, j);
        let nonce = ctx.nonce();
        let sasl = Sasl::Scram {
            user: &user,
            password: &ctx.password,
            nonce: &nonce,
        };
        login_once(ctx, sasl, &format!("l{j}x{k}"), starttls).map_err(|e| format!("{user}: {e}"))
    })
    .report(ctx, &name, "login", "logins")
}

/// The identities of `--keys`, at most `--concurrency` of them (one per worker).
fn identities(ctx: &Ctx, args: &Args) -> Result<Vec<Identity>, String> {
    let dir = args.get("keys").ok_or("--keys DIR is needed")?;
    let mut all = Identity::load_all(Path::new(dir))?;
    all.truncate(ctx.concurrency);
    Ok(all)
}

fn kontalk_login(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let ids = identities(ctx, args)?;
    let configs = ids
        .iter()
        .map(Identity::login_config)
        .collect::<Result<Vec<_>, _>>()?;
    let name = "login EXTERNAL (Kontalk certificate)";
    eprintln!("{name}: {} concurrent clients on {}", ids.len(), ctx.label);
    op_loop(ctx, ids.len(), |j, k| {
        login_once(ctx, Sasl::External(&configs[j]), &format!("k{j}x{k}"), true)
            .map_err(|e| format!("{}: {e}", ids[j].phone))
    })
    .report(ctx, name, "login", "logins")
}

fn kontalk_register(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let ids = identities(ctx, args)?;
    let addr: SocketAddr = args
        .str_or("gateway", "127.0.0.1:0")
        .parse()
        .map_err(|e| format!("--gateway: {e}"))?;
    let gateway = Gateway::start(addr).map_err(|e| format!("the gateway on {addr}: {e}"))?;
    let name = "register (Kontalk, phone + code)";
    eprintln!(
        "{name}: {} concurrent clients on {}, codes through {}",
        ids.len(),
        ctx.label,
        gateway.url_template()
    );
    // The client registers again with `force` after a conflict; a worker's
    // last certified key is kept for kontalk-login.
    let forced: Vec<AtomicBool> = ids.iter().map(|_| AtomicBool::new(false)).collect();
    let last: Vec<Mutex<Option<Vec<u8>>>> = ids.iter().map(|_| Mutex::new(None)).collect();
    let looped = op_loop(ctx, ids.len(), |j, _| {
        let who = &ids[j];
        let key = match kontalk::register(&ctx.target, who, forced[j].load(Relaxed), &gateway) {
            Err(e) if kontalk::refusal(&e) == Some("conflict") => {
                forced[j].store(true, Relaxed);
                kontalk::register(&ctx.target, who, true, &gateway)
            }
            other => other,
        }
        .map_err(|e| format!("{}: {e}", who.phone))?;
        *last[j].lock().expect("lock") = Some(key);
        Ok(())
    });
    for (who, key) in ids.iter().zip(&last) {
        if let Some(key) = key.lock().expect("lock").as_deref() {
            who.save_signed(key)?;
        }
    }
    eprintln!("  the gateway took {} codes", gateway.received());
    looped.report(ctx, name, "registration", "registrations")
}

fn idle(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let n: usize = args.num("sessions", 2000)?;
    let settle: f64 = args.num("settle", 2.0)?;
    if !(1..=100_000).contains(&n) || !(0.0..=60.0).contains(&settle) {
        return Err("--sessions 1..100000, --settle 0..60".into());
    }
    let starttls = args.flag("tls");
    let name = format!("idle {}", if starttls { "STARTTLS" } else { "plaintext" });
    eprintln!("{name}: {n} sessions on {}", ctx.label);
    let rss0 = ctx.procs.rss_kib();
    let s0 = ctx.sample();
    let indices: Vec<usize> = (0..n).collect();
    let sessions = ctx
        .open_sessions(&indices, starttls, true, false)
        .map_err(|e| e.to_string())?;
    let s1 = ctx.sample();
    let dt = s1.at.duration_since(s0.at).as_secs_f64();
    eprintln!("  {n} sessions open in {dt:.1} s");
    thread::sleep(Duration::from_secs_f64(settle));
    let rss1 = ctx.procs.rss_kib();
    if let (Some(a), Some(b)) = (rss0, rss1) {
        ctx.result(
            &format!("{name}: server RSS KiB/session"),
            Better::Lower,
            (b as f64 - a as f64) / n as f64,
        );
        ctx.result(
            &format!("{name}: server RSS MiB total"),
            Better::Info,
            b as f64 / 1024.0,
        );
    }
    if let (Some(a), Some(b)) = (s0.server_cpu, s1.server_cpu) {
        ctx.result(
            &format!("{name}: server CPU µs per login + presence"),
            Better::Lower,
            (b - a) * 1e6 / n as f64,
        );
    }
    for s in sessions {
        s.stream.close();
    }
    Ok(())
}

/// A slot of XEP-0363: where to PUT (with the headers to send) and GET.
struct Slot {
    put: String,
    headers: Vec<(String, String)>,
    get: String,
}

fn upload(ctx: &Ctx, args: &Args) -> Result<(), String> {
    const NS: &str = "urn:xmpp:http:upload:0";
    let size: usize = args.num("size", 1 << 20)?;
    let count: usize = args.num("count", 20)?;
    if !(1..=1 << 30).contains(&size) || !(1..=10_000).contains(&count) {
        return Err("--size 1..1073741824, --count 1..10000".into());
    }
    let service = args.str_or("service", &format!("upload.{}", ctx.target.domain));
    let name = args.str_or("name", &format!("upload {}", human_size(size)));
    let mut sess = ctx
        .open_sessions(&[0], args.flag("tls"), false, false)
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no session")?;
    let mut reader = client::Reader::in_session(&sess.leftover).map_err(|e| e.to_string())?;
    let mut slots = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("slot{i}");
        let iq = format!(
            "<iq type='get' id='{id}' to='{service}'><request xmlns='{NS}' \
             filename='bench-{i}.bin' size='{size}' content-type='application/octet-stream'/></iq>"
        );
        sess.stream
            .write_all(iq.as_bytes())
            .map_err(|e| e.to_string())?;
        let reply = reader
            .iq_result(&mut sess.stream, &id)
            .map_err(|e| format!("slot {i} from {service}: {e}"))?;
        let slot = reply.child(NS, "slot").ok_or("no <slot/> in the answer")?;
        let put = slot.child(NS, "put").ok_or("no <put/>")?;
        let get = slot.child(NS, "get").ok_or("no <get/>")?;
        slots.push(Slot {
            put: put.attr("url").ok_or("no put url")?.to_owned(),
            headers: put
                .elements()
                .filter(|h| h.name == "header")
                .filter_map(|h| Some((h.attr("name")?.to_owned(), h.text())))
                .collect(),
            get: get.attr("url").ok_or("no get url")?.to_owned(),
        });
    }
    sess.stream.close();
    // The same bytes for every file, not all zeros (a pattern of the size's own).
    let body: Vec<u8> = (0..size).map(|i| (i * 31 + i / 4093) as u8).collect();
    eprintln!(
        "{name}: {count} files of {size} bytes through {service} on {}",
        ctx.label
    );
    let bytes = (size * count) as f64;
    let mb = bytes / 1e6;
    let phase = |what: &str, put: bool| -> Result<(), String> {
        let s0 = ctx.sample();
        let mut times = Vec::with_capacity(count);
        for (i, slot) in slots.iter().enumerate() {
            let t = Instant::now();
            let (status, got) = if put {
                http_request("PUT", &slot.put, &slot.headers, &body, ctx.target.timeout)
            } else {
                http_request("GET", &slot.get, &[], &[], ctx.target.timeout)
            }
            .map_err(|e| format!("{what} {i}: {e}"))?;
            times.push(t.elapsed().as_nanos() as u64);
            let ok = if put {
                matches!(status, 200 | 201)
            } else {
                status == 200 && got == body
            };
            if !ok {
                return Err(format!(
                    "{what} {i}: status {status}, {} bytes back",
                    got.len()
                ));
            }
        }
        let s1 = ctx.sample();
        let dt = s1.at.duration_since(s0.at).as_secs_f64();
        ctx.result(&format!("{name} {what}: MB/s"), Better::Higher, mb / dt);
        ctx.result(
            &format!("{name} {what}: p99 ms per file"),
            Better::Lower,
            percentile(&times, 99.0) as f64 / 1e6,
        );
        if let (Some(a), Some(b)) = (s0.server_cpu, s1.server_cpu) {
            ctx.result(
                &format!("{name} {what}: server CPU ms/MB"),
                Better::Lower,
                (b - a) * 1e3 / mb,
            );
        }
        ctx.result(
            &format!("{name} {what}: generator CPU % of a core"),
            Better::Info,
            (s1.own_cpu - s0.own_cpu) / dt * 100.0,
        );
        Ok(())
    };
    phase("PUT", true)?;
    phase("GET", false)
}

fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// One HTTP/1.1 request on a connection of its own (HTTPS for an `https`
/// URL, its certificate not checked); the status and the body.
fn http_request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| io::Error::other(format!("{what}: {url}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (authority, if scheme == "https" { 443 } else { 80 }),
    };
    let ip = match host {
        "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        h => h.parse().map_err(|_| bad("not a loopback host"))?,
    };
    if !ip.is_loopback() {
        return Err(bad("the generator only loads servers on loopback"));
    }
    let tcp = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    tcp.set_nodelay(true)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if method == "PUT" {
        head.push_str(&format!(
            "Content-Length: {}\r\nContent-Type: application/octet-stream\r\n",
            body.len()
        ));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = |s: &mut dyn ReadWrite| -> io::Result<(u16, Vec<u8>)> {
        s.write_all(head.as_bytes())?;
        for chunk in body.chunks(64 * 1024) {
            s.write_all(chunk)?;
        }
        s.flush()?;
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            // A server may close without TLS's close_notify once it answered.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !got.is_empty() => {}
            Err(e) => return Err(e),
        }
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("no complete answer"))?;
        let status = std::str::from_utf8(&got[..end])
            .ok()
            .and_then(|h| h.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other("no status line"))?;
        Ok((status, got.split_off(end + 4)))
    };
    if scheme == "https" {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let conn =
            rustls::ClientConnection::new(tls::client_config(), name).map_err(io::Error::other)?;
        exchange(&mut rustls::StreamOwned::new(conn, tcp))
    } else {
        exchange(&mut { tcp })
    }
}

/// A connection to read and write, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn register(ctx: &Ctx, args: &Args) -> Result<(), String> {
    let n: usize = args.num("accounts", 200)?;
    if !(1..=200_000).contains(&n) {
        return Err("--accounts 1..200000".into());
    }
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let created = AtomicUsize::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    thread::scope(|s| {
        for _ in 0..ctx.concurrency.min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n || failed.lock().expect("lock").is_some() {
                    return;
                }
                let user = account(&ctx.prefix, i);
                match client::register(&ctx.target, &user, &ctx.password) {
                    Ok(true) => {
                        created.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => *failed.lock().expect("lock") = Some(format!("{user}: {e}")),
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("lock") {
        return Err(format!("registration failed: {e}"));
    }
    eprintln!(
        "register: {n} accounts {}0..{}{} on {} ({} new) in {:.1} s",
        ctx.prefix,
        ctx.prefix,
        n - 1,
        ctx.label,
        created.load(Relaxed),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn table(args: &Args) -> Result<(), String> {
    let file = args
        .positional
        .first()
        .ok_or("table FILE --columns A,B,... [--ratio A/B]...")?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let columns: Vec<String> = args
        .str_or("columns", "")
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let mut ratios = Vec::new();
    for r in args.opts.get("ratio").into_iter().flatten() {
        let (a, b) = r
            .split_once('/')
            .ok_or_else(|| format!("--ratio {r}: A/B"))?;
        ratios.push((a.to_owned(), b.to_owned()));
    }
    print!("{}", report::table(&text, &columns, &ratios));
    Ok(())
}

fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let extra: &[&str] = match args.scenario.as_str() {
        "help" => {
            print!("{HELP}");
            return Ok(());
        }
        "table" => {
            args.check_known(&["columns", "ratio"])?;
            return table(&args);
        }
        "register" => &["accounts"],
        "relay" => &[
            "pairs",
            "body",
            "window",
            "sm",
            "name",
            "receivers",
            "receivers-domain",
        ],
        "latency" => &["pairs", "body", "rate", "name", "batch-us"],
        "login" => &["tls"],
        "kontalk-register" => &["keys", "gateway"],
        "kontalk-login" => &["keys"],
        "idle" => &["sessions", "settle", "tls"],
        "upload" => &["service", "size", "count", "name", "tls"],
        other => return Err(format!("unknown scenario {other:?} (see --help)")),
    };
    args.check_known(&[COMMON, extra].concat())?;
    let deadline: f64 = args.num("deadline", 300.0)?;
    thread::spawn(move || {
        thread::sleep(Duration::from_secs_f64(deadline));
        eprintln!("kontalkd-load: deadline of {deadline} s reached, aborting");
        std::process::exit(3);
    });
    let ctx = Ctx::new(&args)?;
    now_ns();
    match args.scenario.as_str() {
        "register" => register(&ctx, &args),
        "relay" => relay(&ctx, &args),
        "latency" => latency(&ctx, &args),
        "login" => login(&ctx, &args),
        "kontalk-register" => kontalk_register(&ctx, &args),
        "kontalk-login" => kontalk_login(&ctx, &args),
        "idle" => idle(&ctx, &args),
        "upload" => upload(&ctx, &args),
        _ => unreachable!("checked above"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kontalkd-load: {e}");
            ExitCode::FAILURE
        }
    }
}
