//! Criterion benches of proto-core's hot paths, in memory (no sockets):
//!
//! * `relay`: one chat message parsed, routed and serialized between two
//!   bound sessions (64 B and 1 KiB bodies);
//! * `presence_broadcast`: one presence update delivered to 100 subscribers;
//! * `login`: a full SCRAM-SHA-256 login (stream, SASL, restart, bind, close);
//! * `framing`: the XML stream parser alone, in MB/s.
//!
//! Driven through `proto_core::testing` (the `Fixture` and its `MemStore`),
//! with the output taken the way a runtime takes it (`poll_transmit` into a
//! reused buffer). Run with `cargo bench -p kontalkd-benches --bench core`.

use std::collections::HashMap;
use std::hint::black_box;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kontalkd_benches::scram::{SaltCache, Scram};
use proto_core::roster::{RosterItem, Subscription};
use proto_core::sasl::ScramHash;
use proto_core::store::UserData;
use proto_core::testing::{test_tls, Fixture, HEADER};
use proto_core::xml::StreamParser;
use proto_core::{Config, ConnId, Event, Limits, Listener, Server};

/// A fixture whose server has no per-session rate limit or per-address
/// connection cap (a bench sends far more than any client would).
fn fixture(users: usize) -> Fixture {
    let tls = test_tls();
    let mut fx = Fixture::new(&tls);
    let config = Config {
        require_tls: false,
        limits: Limits {
            stanzas_per_second: 0,
            max_connections_per_ip: 0,
            max_connections: 1_000_000,
            ..Limits::default()
        },
        ..Config::default()
    };
    fx.server = Server::new(config, tls, [7; 32]).expect("valid config");
    fx.server.handle_wall_clock(fx.now, 1_800_000_000);
    for i in 0..users {
        fx.store.add_account(&format!("u{i}"), "pw");
    }
    fx
}

/// Drains the core like a runtime: each connection's output is taken into
/// its reused buffer and "written" (cleared). Returns the bytes sent; the
/// output of `capture` is appended to `captured`.
fn drain(
    fx: &mut Fixture,
    bufs: &mut HashMap<ConnId, Vec<u8>>,
    capture: Option<(ConnId, &mut Vec<u8>)>,
) -> usize {
    let mut bytes = 0;
    let (cap_id, mut cap) = match capture {
        Some((id, v)) => (Some(id), Some(v)),
        None => (None, None),
    };
    while let Some(ev) = fx.server.poll_event() {
        match ev {
            Event::Transmit(id) => {
                let b = bufs.entry(id).or_default();
                fx.server.poll_transmit(id, b);
                bytes += b.len();
                if Some(id) == cap_id {
                    if let Some(c) = cap.as_deref_mut() {
                        c.extend_from_slice(b);
                    }
                }
                b.clear();
            }
            Event::Close(id) => {
                bufs.remove(&id);
            }
            // The bench feeds input regardless of backpressure.
            Event::Resume(_) => {}
            Event::Store(token, req) => {
                let reply = fx.store.answer(&req);
                fx.server.handle_store_reply(fx.now, token, reply);
            }
            Event::SendCode(msg) => fx.server.handle_code_sent(msg.token, Ok(())),
            Event::Push(job) => fx
                .server
                .handle_push_done(job.id, proto_core::kontalk::push::PushOutcome::Sent),
            // No network in the benches' server.
            Event::Connect { conn, .. } => fx.server.handle_connect_failed(fx.now, conn, "none"),
            Event::Resolve { .. } => {}
        }
    }
    bytes
}

fn chat(to: &str, body: usize) -> Vec<u8> {
    let text: String = "Lorem ipsum dolor sit amet. "
        .chars()
        .cycle()
        .take(body)
        .collect();
    format!("<message to='{to}' type='chat' id='m1'><body>{text}</body></message>").into_bytes()
}

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    for body in [64, 1024] {
        let mut fx = fixture(2);
        let a = fx.login("u0", "a").expect("login u0");
        let b = fx.login("u1", "b").expect("login u1");
        fx.send(a, b"<presence/>");
        fx.send(b, b"<presence/>");
        let msg = chat("u1@localhost/b", body);
        let mut bufs = HashMap::new();
        // Check once that the message really arrives.
        let mut got = Vec::new();
        fx.server.handle_data(fx.now, a, &msg);
        drain(&mut fx, &mut bufs, Some((b, &mut got)));
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains("<body>Lorem"), "not relayed: {got}");
        g.bench_function(format!("chat {body} B"), |bench| {
            bench.iter(|| {
                fx.server.handle_data(fx.now, a, black_box(&msg));
                black_box(drain(&mut fx, &mut bufs, None))
            })
        });
    }
    g.finish();
}

fn both() -> Subscription {
    Subscription {
        to: true,
        from: true,
        ..Subscription::default()
    }
}

fn roster(contacts: impl Iterator<Item = String>) -> UserData {
    UserData {
        roster_version: 1,
        roster: contacts
            .map(|c| RosterItem {
                jid: format!("{c}@localhost"),
                name: None,
                groups: Vec::new(),
                subscription: both(),
                in_roster: true,
                request: None,
            })
            .collect(),
        blocklist: Vec::new(),
        archive_prefs: None,
        key: None,
        app_push: Vec::new(),
    }
}

fn presence_broadcast(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 100;
    let mut fx = fixture(SUBSCRIBERS + 1);
    fx.store.data.insert(
        "u0".into(),
        roster((1..=SUBSCRIBERS).map(|i| format!("u{i}"))),
    );
    for i in 1..=SUBSCRIBERS {
        fx.store
            .data
            .insert(format!("u{i}"), roster(std::iter::once("u0".to_owned())));
    }
    let mut contacts = Vec::new();
    for i in 1..=SUBSCRIBERS {
        let id = fx.login(&format!("u{i}"), "r").expect("login contact");
        fx.send(id, b"<presence/>");
        contacts.push(id);
    }
    let user = fx.login("u0", "r").expect("login u0");
    fx.send(user, b"<presence/>");
    let update = b"<presence><show>away</show><status>In a meeting</status></presence>";
    let mut bufs = HashMap::new();
    // Check once that every subscriber gets the update.
    for id in &contacts {
        fx.received.get_mut(id).expect("contact").clear();
    }
    fx.send(user, update);
    for id in &contacts {
        let got = String::from_utf8_lossy(&fx.received[id]);
        assert!(got.contains("In a meeting"), "no broadcast: {got}");
    }
    let mut g = c.benchmark_group("presence_broadcast");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function(format!("{SUBSCRIBERS} subscribers"), |bench| {
        bench.iter(|| {
            fx.server.handle_data(fx.now, user, black_box(update));
            black_box(drain(&mut fx, &mut bufs, None))
        })
    });
    g.finish();
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = start + text[start..].find(close)?;
    Some(&text[start..end])
}

/// One full login; returns the connection's output during SASL.
fn one_login(fx: &mut Fixture, bufs: &mut HashMap<ConnId, Vec<u8>>, cache: &SaltCache) -> usize {
    let ip = core::net::IpAddr::from([127, 0, 0, 1]);
    let id = fx.server.handle_accept(fx.now, Listener::Starttls, ip);
    drain(fx, bufs, None);
    fx.server.handle_data(fx.now, id, HEADER);
    drain(fx, bufs, None);
    let mut scram = Scram::new(ScramHash::Sha256, "u0", "pw", "benchnonce");
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode(scram.client_first())
    );
    let mut out = Vec::new();
    fx.server.handle_data(fx.now, id, auth.as_bytes());
    drain(fx, bufs, Some((id, &mut out)));
    let text = String::from_utf8_lossy(&out);
    let challenge = between(
        &text,
        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
        "<",
    )
    .expect("a challenge");
    let first = B64.decode(challenge).expect("base64");
    let fin = scram.client_final(&first, cache).expect("server-first");
    let resp = format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(fin)
    );
    out.clear();
    fx.server.handle_data(fx.now, id, resp.as_bytes());
    drain(fx, bufs, Some((id, &mut out)));
    let text = String::from_utf8_lossy(&out);
    let success = between(
        &text,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
        "<",
    )
    .expect("success");
    scram
        .verify_server_final(&B64.decode(success).expect("base64"))
        .expect("server signature");
    fx.server.handle_data(fx.now, id, HEADER);
    drain(fx, bufs, None);
    out.clear();
    fx.server.handle_data(
        fx.now,
        id,
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    );
    drain(fx, bufs, Some((id, &mut out)));
    assert!(out.starts_with(b"<iq"), "bind failed");
    fx.server.handle_eof(fx.now, id);
    drain(fx, bufs, None)
}

fn login(c: &mut Criterion) {
    let mut fx = fixture(1);
    let mut bufs = HashMap::new();
    let cache = SaltCache::new();
    one_login(&mut fx, &mut bufs, &cache);
    let mut g = c.benchmark_group("login");
    g.throughput(Throughput::Elements(1));
    g.bench_function("SCRAM-SHA-256 + bind", |bench| {
        bench.iter(|| black_box(one_login(&mut fx, &mut bufs, &cache)))
    });
    g.finish();
    assert_eq!(
        fx.server.connection_count(),
        0,
        "logins leave no connection behind"
    );
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    for body in [64, 1024] {
        let mut stream = HEADER.to_vec();
        let msg = chat("u1@localhost/b", body);
        while stream.len() < 1 << 20 {
            stream.extend_from_slice(&msg);
        }
        let limits = Limits::default();
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(format!("chat {body} B, 16 KiB reads"), |bench| {
            bench.iter(|| {
                let mut parser = StreamParser::new(&limits);
                let mut stanzas = 0usize;
                for chunk in stream.chunks(16 * 1024) {
                    let mut input = chunk;
                    while let Some(ev) = parser.next(&mut input).expect("well-formed") {
                        black_box(&ev);
                        stanzas += 1;
                    }
                }
                stanzas
            })
        });
    }
    g.finish();
}

/// The Kontalk client's certificate, made by the client emulator
/// (tests/clients/kontalk_client.py) the way the Android client makes it,
/// and the test server key that certified its key (bench data only).
const BRIDGE_SIGNED: &[u8] = include_bytes!("../fixtures/kontalk-bridge-signed.der");
const BRIDGE_UNSIGNED: &[u8] = include_bytes!("../fixtures/kontalk-bridge-unsigned.der");
const SERVER_KEY: &[u8] = include_bytes!("../fixtures/kontalk-server-key.asc");

/// The server's CPU per Kontalk registration (the code step: the key read
/// from the certificate, checked, certified) and per EXTERNAL login (the
/// certificate's checks), beside `login/SCRAM-SHA-256 + bind`.
fn kontalk(c: &mut Criterion) {
    use proto_core::kontalk::{bridge, keys};
    let server = keys::ServerKey::from_bytes(SERVER_KEY).expect("the bench server key");
    let now = 1_800_000_000;
    let mut g = c.benchmark_group("kontalk");
    g.throughput(Throughput::Elements(1));
    g.bench_function("registration code step (check + certify)", |bench| {
        bench.iter(|| {
            let key = bridge::check_registration(BRIDGE_UNSIGNED, "localhost").expect("a key");
            keys::certify(&server, &key.key, &key.jid, [1; 32], now).expect("certified")
        })
    });
    g.bench_function("EXTERNAL login check", |bench| {
        bench.iter(|| bridge::check_login(BRIDGE_SIGNED, "localhost", &server, now).expect("valid"))
    });
    // The same check of a certificate that logged in before (the server's
    // cache of verified certificates).
    let mut cache = bridge::LoginCache::default();
    g.bench_function("EXTERNAL login check, certificate seen before", |bench| {
        bench.iter(|| {
            cache
                .check_login(BRIDGE_SIGNED, "localhost", &server, &[], now)
                .expect("valid")
        })
    });
    g.finish();
}

criterion_group!(benches, relay, presence_broadcast, login, framing, kontalk);
criterion_main!(benches);
