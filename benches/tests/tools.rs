//! The load generator and the forwarder work together: every plaintext
//! scenario runs briefly against the forwarder and reports its figures.
//! No timing is asserted, only that the figures are there.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Forwarder(Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_forwarder() -> (Forwarder, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_kontalkd-forwarder"))
        .args(["--listen", &addr])
        .stderr(Stdio::null())
        .spawn()
        .expect("start the forwarder");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the forwarder does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Forwarder(child), addr)
}

fn load(addr: &str, pid: u32, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kontalkd-load"))
        .args(args)
        .args([
            "--server",
            addr,
            "--pid",
            &pid.to_string(),
            "--label",
            "fwd",
        ])
        .args(["--warmup", "0.2", "--secs", "0.3", "--deadline", "60"])
        .output()
        .expect("run kontalkd-load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kontalkd-load {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn value(results: &str, metric: &str) -> f64 {
    results
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.len() == 5 && f[0] == "RESULT" && f[1] == "fwd" && f[2] == metric)
        .unwrap_or_else(|| panic!("no {metric:?} in {results}"))[4]
        .parse()
        .expect("a number")
}

#[test]
fn every_plaintext_scenario_runs_against_the_forwarder() {
    let (fwd, addr) = start_forwarder();
    let pid = fwd.0.id();
    load(&addr, pid, &["register", "--accounts", "8"]);

    let relay = load(&addr, pid, &["relay", "--pairs", "2", "--body", "100"]);
    assert!(
        value(&relay, "relay 100 B, 2 pairs: msgs/s") > 0.0,
        "{relay}"
    );
    value(&relay, "relay 100 B, 2 pairs: server CPU % of a core");

    // Stream management: the forwarder answers <enable/>, the receivers
    // answer the senders' <r/>; every message and every ack must arrive.
    let sm = load(&addr, pid, &["relay", "--sm", "--pairs", "2"]);
    assert!(value(&sm, "relay 64 B, SM, 2 pairs: msgs/s") > 0.0, "{sm}");
    assert!(value(&sm, "relay 64 B, SM, 2 pairs: acks/s") > 0.0, "{sm}");
    value(&sm, "relay 64 B, SM, 2 pairs: p99 ms to ack");
    let named = load(
        &addr,
        pid,
        &["relay", "--sm", "--pairs", "1", "--name", "64 B, SM + x"],
    );
    value(&named, "relay 64 B, SM + x: server CPU µs/msg");

    let latency = load(&addr, pid, &["latency", "--pairs", "2", "--rate", "200"]);
    assert!(
        value(&latency, "latency @ 200/s: rate msgs/s") > 0.0,
        "{latency}"
    );
    value(&latency, "latency @ 200/s: p99 µs");

    let batched = load(
        &addr,
        pid,
        &[
            "latency",
            "--pairs",
            "2",
            "--rate",
            "400",
            "--batch-us",
            "5000",
            "--name",
            "b",
        ],
    );
    assert!(value(&batched, "latency b: rate msgs/s") > 0.0, "{batched}");
    value(&batched, "latency b: p99 µs");

    let login = load(&addr, pid, &["login", "--concurrency", "2"]);
    assert!(value(&login, "login plaintext: logins/s") > 0.0, "{login}");

    let idle = load(&addr, pid, &["idle", "--sessions", "8", "--settle", "0"]);
    value(&idle, "idle plaintext: server RSS KiB/session");

    let mut file = std::env::temp_dir();
    file.push(format!("kontalkd-load-test-{}.tsv", std::process::id()));
    std::fs::write(&file, [relay, latency].concat()).expect("write results");
    let out = Command::new(env!("CARGO_BIN_EXE_kontalkd-load"))
        .args([
            "table",
            file.to_str().expect("utf-8 path"),
            "--columns",
            "fwd,other",
        ])
        .args(["--ratio", "fwd/other"])
        .output()
        .expect("run kontalkd-load table");
    let _ = std::fs::remove_file(&file);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("| scenario: metric | better | fwd | other | fwd / other |"),
        "{table}"
    );
    assert!(
        table.contains("| relay 100 B, 2 pairs: msgs/s | higher |"),
        "{table}"
    );
}

#[test]
fn refuses_servers_off_loopback_and_unknown_options() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kontalkd-load"))
            .args(args)
            .output()
            .expect("run kontalkd-load")
    };
    let out = run(&["relay", "--server", "192.0.2.1:5222"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = run(&["relay", "--bogus", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option --bogus"));
    assert!(run(&["--help"]).status.success());
}
