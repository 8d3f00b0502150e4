//! The resolver against a fake name server: answers made with hickory-proto
//! from a table of records, truncated over UDP when asked to, silent for
//! the names it is told to ignore.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::HashMap;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::BinEncodable;
use rand_core::SeedableRng;

use super::*;

#[derive(Default)]
struct FakeDns {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Names answered with the truncation bit over UDP.
    truncate: Vec<String>,
    /// Names never answered.
    silent: Vec<String>,
    /// Every question, as (name, type, tcp).
    asked: Vec<(String, RecordType, bool)>,
    /// Records added to every answer.
    extra: Vec<Record>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl FakeDns {
    fn srv(&mut self, service: &str, priority: u16, weight: u16, port: u16, target: &str) {
        self.records
            .entry((service.to_owned(), RecordType::SRV))
            .or_default()
            .push(RData::SRV(SRV::new(priority, weight, port, name(target))));
    }

    fn a(&mut self, host: &str, ip: [u8; 4]) {
        self.records
            .entry((host.to_owned(), RecordType::A))
            .or_default()
            .push(RData::A(A(Ipv4Addr::from(ip))));
    }

    fn aaaa(&mut self, host: &str, ip: Ipv6Addr) {
        self.records
            .entry((host.to_owned(), RecordType::AAAA))
            .or_default()
            .push(RData::AAAA(AAAA(ip)));
    }

    /// The answer to `q`, if the server answers.
    fn answer(&mut self, q: &Query) -> Option<Vec<u8>> {
        let m = Message::from_vec(&q.bytes).unwrap();
        let question = m.queries[0].clone();
        let qname = question.name().to_ascii();
        let qtype = question.query_type();
        self.asked.push((qname.clone(), qtype, q.tcp));
        if self.silent.contains(&qname) {
            return None;
        }
        let mut r = Message::new(m.metadata.id, MessageType::Response, m.metadata.op_code);
        r.add_query(question.clone());
        if self.truncate.contains(&qname) && !q.tcp {
            r.metadata.truncation = true;
            return Some(r.to_bytes().unwrap());
        }
        match self.records.get(&(qname.clone(), qtype)) {
            Some(list) => {
                for data in list {
                    r.add_answer(Record::from_rdata(name(&qname), 300, data.clone()));
                }
            }
            None if !self.records.keys().any(|(n, _)| *n == qname) => {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            None => {}
        }
        for record in &self.extra {
            r.add_answer(record.clone());
        }
        Some(r.to_bytes().unwrap())
    }
}

fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}

/// Runs `r` against `dns` to the end (connecting to no candidate): the
/// candidates in order, and why it ended.
fn run(r: &mut Resolution, dns: &mut FakeDns, seed: u64) -> (Vec<Candidate>, &'static str) {
    let mut rng = rng(seed);
    let mut now = Instant::now();
    let mut out = Vec::new();
    for _ in 0..1000 {
        match r.poll(now, &mut rng) {
            Step::Query(q) => {
                if let Some(a) = dns.answer(&q) {
                    r.handle_answer(now, &a);
                }
            }
            Step::Candidate(c) => out.push(c),
            Step::Waiting => {
                now = r.poll_timeout().expect("a deadline while waiting");
                r.handle_timeout(now);
            }
            Step::Exhausted(why) => return (out, why),
        }
    }
    panic!("the resolution did not end");
}

fn addrs(c: &[Candidate]) -> Vec<(String, bool)> {
    c.iter()
        .map(|c| (c.addr.to_string(), c.direct_tls))
        .collect()
}

#[test]
fn srv_records_go_by_priority_direct_tls_first_then_each_targets_addresses() {
    let mut dns = FakeDns::default();
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        10,
        0,
        5269,
        "b.example.org.",
    );
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        5,
        0,
        5270,
        "a.example.org.",
    );
    dns.srv(
        "_xmpps-server._tcp.example.org.",
        5,
        0,
        5271,
        "a.example.org.",
    );
    dns.a("a.example.org.", [192, 0, 2, 1]);
    dns.aaaa("a.example.org.", "2001:db8::1".parse().unwrap());
    dns.a("b.example.org.", [192, 0, 2, 2]);
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(1));
    let (c, why) = run(&mut r, &mut dns, 1);
    assert_eq!(
        addrs(&c),
        [
            ("[2001:db8::1]:5271".to_owned(), true),
            ("192.0.2.1:5271".to_owned(), true),
            ("[2001:db8::1]:5270".to_owned(), false),
            ("192.0.2.1:5270".to_owned(), false),
            ("192.0.2.2:5269".to_owned(), false),
        ]
    );
    assert_eq!(why, "every address of the domain was tried");
    // b's addresses were asked for only after a's were handed out.
    let hosts: Vec<&str> = dns
        .asked
        .iter()
        .filter(|(_, t, _)| *t == RecordType::A)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(
        hosts,
        ["a.example.org.", "a.example.org.", "b.example.org."]
    );
}

#[test]
fn weights_share_the_first_place_as_rfc_2782_says() {
    let mut first = HashMap::new();
    for seed in 0..400 {
        let mut dns = FakeDns::default();
        dns.srv(
            "_xmpp-server._tcp.example.org.",
            1,
            30,
            5269,
            "heavy.example.org.",
        );
        dns.srv(
            "_xmpp-server._tcp.example.org.",
            1,
            10,
            5269,
            "light.example.org.",
        );
        dns.a("heavy.example.org.", [192, 0, 2, 1]);
        dns.a("light.example.org.", [192, 0, 2, 2]);
        let mut r = Resolution::new("example.org", Instant::now(), &mut rng(seed));
        let (c, _) = run(&mut r, &mut dns, seed);
        assert_eq!(c.len(), 2, "both are tried");
        *first.entry(c[0].host.clone()).or_insert(0) += 1;
    }
    let heavy = first["heavy.example.org"];
    // 3 in 4 expected: 300 of 400, well clear of chance either way.
    assert!(
        (250..350).contains(&heavy),
        "heavy first {heavy} times of 400"
    );
}

#[test]
fn without_srv_records_the_domain_itself_on_5269() {
    let mut dns = FakeDns::default();
    dns.a("example.org.", [192, 0, 2, 7]);
    let mut r = Resolution::new("Example.ORG", Instant::now(), &mut rng(2));
    let (c, _) = run(&mut r, &mut dns, 2);
    assert_eq!(addrs(&c), [("192.0.2.7:5269".to_owned(), false)]);
}

#[test]
fn a_dot_target_means_no_service_but_only_for_starttls() {
    let mut dns = FakeDns::default();
    dns.srv("_xmpp-server._tcp.example.org.", 0, 0, 0, ".");
    dns.a("example.org.", [192, 0, 2, 7]);
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(3));
    let (c, why) = run(&mut r, &mut dns, 3);
    assert!(c.is_empty(), "{c:?}");
    assert!(why.contains("no server-to-server service"), "{why}");
    // No direct TLS only: STARTTLS on the fallback.
    let mut dns = FakeDns::default();
    dns.srv("_xmpps-server._tcp.example.org.", 0, 0, 0, ".");
    dns.a("example.org.", [192, 0, 2, 7]);
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(3));
    let (c, _) = run(&mut r, &mut dns, 3);
    assert_eq!(addrs(&c), [("192.0.2.7:5269".to_owned(), false)]);
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let mut dns = FakeDns::default();
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        1,
        0,
        5269,
        "xmpp.example.org.",
    );
    dns.a("xmpp.example.org.", [192, 0, 2, 9]);
    dns.truncate.push("_xmpp-server._tcp.example.org.".into());
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(4));
    let (c, _) = run(&mut r, &mut dns, 4);
    assert_eq!(addrs(&c), [("192.0.2.9:5269".to_owned(), false)]);
    let srv: Vec<bool> = dns
        .asked
        .iter()
        .filter(|(n, _, _)| n == "_xmpp-server._tcp.example.org.")
        .map(|(_, _, tcp)| *tcp)
        .collect();
    assert_eq!(srv, [false, true]);
}

#[test]
fn a_silent_name_server_is_asked_twice_then_the_question_counts_as_empty() {
    let mut dns = FakeDns::default();
    dns.silent.push("_xmpps-server._tcp.example.org.".into());
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        1,
        0,
        5269,
        "xmpp.example.org.",
    );
    dns.a("xmpp.example.org.", [192, 0, 2, 9]);
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(5));
    let (c, _) = run(&mut r, &mut dns, 5);
    assert_eq!(addrs(&c), [("192.0.2.9:5269".to_owned(), false)]);
    let asked = dns
        .asked
        .iter()
        .filter(|(n, _, _)| n == "_xmpps-server._tcp.example.org.")
        .count();
    assert_eq!(asked, 2);
}

#[test]
fn answers_that_are_not_for_a_question_in_flight_change_nothing() {
    let mut dns = FakeDns::default();
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        1,
        0,
        5269,
        "xmpp.example.org.",
    );
    dns.a("xmpp.example.org.", [192, 0, 2, 9]);
    dns.a("evil.example.org.", [203, 0, 113, 1]);
    let now = Instant::now();
    let mut rng = rng(6);
    let mut r = Resolution::new("example.org", now, &mut rng);
    // Garbage, an answer with another id, and one for another name.
    r.handle_answer(now, b"\x00\x01garbage");
    let Step::Query(q) = r.poll(now, &mut rng) else {
        panic!("a question first");
    };
    let mut forged = Message::from_vec(&dns.answer(&q).unwrap()).unwrap();
    forged.metadata.id = forged.metadata.id.wrapping_add(7);
    r.handle_answer(now, &forged.to_bytes().unwrap());
    let mut other = Message::new(q.id, MessageType::Response, OpCode::Query);
    other.add_query(DnsQuery::query(name("evil.example.org."), RecordType::A));
    other.add_answer(Record::from_rdata(
        name("evil.example.org."),
        300,
        RData::A(A(Ipv4Addr::new(203, 0, 113, 1))),
    ));
    r.handle_answer(now, &other.to_bytes().unwrap());
    // The real answers still count, and nothing of the forged ones.
    r.handle_answer(now, &dns.answer(&q).unwrap());
    let (c, _) = run(&mut r, &mut dns, 6);
    assert_eq!(addrs(&c), [("192.0.2.9:5269".to_owned(), false)]);
}

#[test]
fn a_static_route_skips_srv_and_an_address_literal_skips_dns() {
    let mut dns = FakeDns::default();
    let target = Target {
        host: "127.0.0.1".into(),
        port: 15269,
        direct_tls: false,
    };
    let mut r = Resolution::to_target("example.org", target, &mut rng(7));
    let (c, _) = run(&mut r, &mut dns, 7);
    assert_eq!(addrs(&c), [("127.0.0.1:15269".to_owned(), false)]);
    assert!(dns.asked.is_empty());
}

#[test]
fn only_records_of_the_name_asked_or_its_aliases_count() {
    let mut dns = FakeDns::default();
    dns.srv(
        "_xmpp-server._tcp.example.org.",
        1,
        0,
        5269,
        "xmpp.example.org.",
    );
    dns.records.insert(
        ("xmpp.example.org.".into(), RecordType::A),
        vec![RData::CNAME(hickory_proto::rr::rdata::CNAME(name(
            "real.example.org.",
        )))],
    );
    // Every answer also carries a record of a name nobody asked for.
    dns.extra.push(Record::from_rdata(
        name("evil.example.org."),
        300,
        RData::A(A(Ipv4Addr::new(203, 0, 113, 1))),
    ));
    dns.extra.push(Record::from_rdata(
        name("real.example.org."),
        300,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
    ));
    let mut r = Resolution::new("example.org", Instant::now(), &mut rng(8));
    let (c, _) = run(&mut r, &mut dns, 8);
    // real's address through the alias (given in the A answer only), never evil's.
    assert_eq!(addrs(&c), [("192.0.2.10:5269".to_owned(), false)]);
}
