//! The metrics endpoint (`server.metrics_listen`): scraped with a plain HTTP GET, valid
//! OpenMetrics text whose counters move by what a client did in between; other paths, methods
//! and garbage get their HTTP errors, and a silent client does not hold it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::hostile::Raw;
use super::support::{Runtime, ServerOptions, TestServer};

per_runtime!(metrics_are_scraped_and_move_as_clients_log_in_and_send);

/// One HTTP exchange: what the server answered (until it closed the connection).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).expect("UTF-8")
}

/// The samples of a scrape, `name{labels}` -> value, after checking the answer's shape.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let answer = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{head}"
    );
    assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
    assert!(body.ends_with("# EOF\n"), "{body}");
    let mut samples = HashMap::new();
    let mut families = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name value");
        samples.insert(name.to_owned(), value.parse().expect("a number"));
    }
    // Every sample belongs to a declared family, counters end in _total.
    for name in samples.keys() {
        let base = name.split('{').next().unwrap();
        let family = ["_total", "_bucket", "_count", "_sum", "_info"]
            .iter()
            .find_map(|suffix| base.strip_suffix(suffix))
            .filter(|f| families.contains_key(*f))
            .unwrap_or(base);
        let kind = families
            .get(family)
            .unwrap_or_else(|| panic!("{name} has no # TYPE"));
        if kind == "counter" {
            assert!(base.ends_with("_total"), "counter sample {name}");
        }
    }
    samples
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn metrics_are_scraped_and_move_as_clients_log_in_and_send(rt: Runtime) {
    let metrics = free_addr();
    let mut options = ServerOptions::with_users(
        rt,
        &[
            ("alice@localhost", "pw-alice"),
            ("bob@localhost", "pw-bob"),
            ("carol@localhost", "pw-carol"),
        ],
    );
    options.require_encryption = false;
    options.log_level = "info".into();
    options.metrics_listen = Some(metrics);
    let server = TestServer::start(options);
    assert!(server
        .log_text()
        .contains(&format!("metrics on http://{metrics}/metrics")));

    // A silent client holds no slot that matters: scrapes are answered meanwhile.
    let mut silent = TcpStream::connect(metrics).unwrap();
    let silent_since = Instant::now();

    let before = scrape(metrics);
    let get = |m: &HashMap<String, f64>, k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in the metrics: {m:#?}"))
    };
    assert_eq!(get(&before, "kontalkd_sessions"), 0.0);
    assert_eq!(get(&before, "kontalkd_logins_total"), 0.0);

    let failed = Raw::connect(server.c2s_addr())
        .scram("alice", "wrong")
        .answer;
    assert!(failed.contains("not-authorized"), "{failed}");
    let mut alice = Raw::login(server.c2s_addr(), "alice", "pw-alice", "a");
    let mut bob = Raw::login(server.c2s_addr(), "bob", "pw-bob", "b");
    alice.wait_for("bob@localhost/b", 0).ok();
    for i in 0..3 {
        alice.send(
            format!("<message to='bob@localhost' type='chat' id='c{i}'><body>hello {i}</body></message>")
                .as_bytes(),
        );
    }
    bob.wait_for("hello 2", 0).expect("bob gets the messages");
    // carol is offline: stored.
    alice.send(b"<message to='carol@localhost' type='chat' id='off'><body>later</body></message>");
    alice.send(b"<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.wait_for("id='sync'", 0).expect("ping answered");

    let after = scrape(metrics);
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(delta("kontalkd_logins_total"), 2.0);
    assert_eq!(delta("kontalkd_login_failures_total"), 1.0);
    assert_eq!(delta("kontalkd_connections_accepted_total"), 3.0);
    assert_eq!(get(&after, "kontalkd_sessions"), 2.0);
    assert_eq!(get(&after, "kontalkd_connections"), 2.0);
    assert_eq!(
        delta("kontalkd_stanzas_received_total{kind=\"message\"}"),
        4.0
    );
    assert_eq!(delta("kontalkd_stanzas_sent_total{kind=\"message\"}"), 3.0);
    // Two binds and a ping.
    assert_eq!(delta("kontalkd_stanzas_received_total{kind=\"iq\"}"), 3.0);
    assert!(delta("kontalkd_stanzas_received_total{kind=\"presence\"}") >= 2.0);
    assert_eq!(delta("kontalkd_offline_messages_stored_total"), 1.0);
    assert!(delta("kontalkd_received_bytes_total") > 500.0);
    assert!(delta("kontalkd_sent_bytes_total") > 500.0);
    assert!(delta("kontalkd_store_requests_total{outcome=\"ok\"}") >= 5.0);
    assert_eq!(
        delta("kontalkd_store_requests_total{outcome=\"failed\"}"),
        0.0
    );
    let batches = get(&after, "kontalkd_store_batch_seconds_count");
    assert!(batches >= 1.0 && delta("kontalkd_store_batch_seconds_count") >= 1.0);
    assert_eq!(
        get(&after, "kontalkd_store_batch_seconds_bucket{le=\"+Inf\"}"),
        batches
    );
    assert!(get(&after, "kontalkd_store_batch_seconds_sum") > 0.0);
    assert_eq!(get(&after, "kontalkd_store_queue"), 0.0);
    assert!(get(&after, "kontalkd_resident_memory_bytes") > 1e6);

    // Other paths, methods and garbage.
    let status = |answer: String| answer.lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        status(http(metrics, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(http(metrics, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status(http(metrics, b"hello there\r\n\r\n")),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status(http(metrics, &[b'A'; 5_000])),
        "HTTP/1.1 400 Bad Request"
    );

    // The silent client is closed at the request deadline, unanswered.
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(14),
        "closed after {waited:?}"
    );
}
