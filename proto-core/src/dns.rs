//! Where a server-to-server stream to a domain goes (RFC 6120 section 3.2,
//! XEP-0368), found as a state machine: the core makes the DNS messages
//! (`hickory-proto`), the runtime only sends them to a name server and
//! hands back what comes (over TCP when the answer was truncated), and the
//! machine says which address to try next.
//!
//! The order: the SRV records of `_xmpps-server._tcp.<domain>` (direct TLS)
//! and `_xmpp-server._tcp.<domain>` (STARTTLS) together, by priority, a
//! direct TLS one first at equal priority, by weight within a priority
//! (RFC 2782's weighted random choice, from the caller's seeded RNG); a
//! service whose only record has the target `.` is not offered (for
//! `_xmpp-server`, the domain has no server-to-server service at all); with
//! no record at all (no such name, none of the type, or no answer), the
//! domain itself on port 5269 with STARTTLS. Each target's addresses (AAAA, then
//! A) are asked for only when the one before is used up. A name server
//! that does not answer within [`QUERY_TIMEOUT`] is asked once more, then
//! the question counts as answered with nothing. At most [`MAX_TARGETS`]
//! targets and [`MAX_ADDRESSES`] addresses of each are tried. A static
//! route (from the configuration) replaces the SRV step.

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use rand_core::Rng;

/// The port of a domain without SRV records (RFC 6120 section 3.2.2).
pub const PORT: u16 = 5269;
/// SRV targets tried at most (a hostile answer may list thousands).
pub const MAX_TARGETS: usize = 32;
/// Addresses of one target tried at most.
pub const MAX_ADDRESSES: usize = 16;
/// How long a question waits for its answer before it is asked again (once).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A host to connect to, from an SRV record, the fallback or a static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (or an IP address literal).
    pub host: String,
    /// The port.
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// An address to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The target it is an address of (for the log).
    pub host: String,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// A DNS message for the runtime to send to a name server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message's id (its answer carries it).
    pub id: u16,
    /// The message, as it goes on the wire (without TCP's length prefix).
    pub bytes: Vec<u8>,
    /// Over TCP (the answer over UDP was truncated).
    pub tcp: bool,
}

/// What the resolution has for its caller now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this to a name server ([`Resolution::handle_answer`] takes the answer).
    Query(Query),
    /// Try this address next.
    Candidate(Candidate),
    /// Nothing to do until an answer comes or [`Resolution::poll_timeout`].
    Waiting,
    /// Every address was handed out, or there is none: why, for the log.
    Exhausted(&'static str),
}

/// One question in flight.
#[derive(Debug)]
struct Asked {
    id: u16,
    name: Name,
    qtype: RecordType,
    tcp: bool,
    deadline: Instant,
    retried: bool,
    /// The question is answered (the records are in).
    done: bool,
}

#[derive(Debug)]
enum Phase {
    /// The two SRV questions are in flight.
    Srv,
    /// The targets, in order; the current one's addresses are asked for.
    Targets,
}

/// The resolution of one domain.
#[derive(Debug)]
pub struct Resolution {
    domain: String,
    phase: Phase,
    asked: Vec<Asked>,
    /// Questions made and not handed to the caller yet.
    outbox: VecDeque<Query>,
    /// SRV records so far: (priority, weight, port, target, direct TLS).
    srv: Vec<(u16, u16, u16, String, bool)>,
    /// Services that said "none here" (`.`): (direct TLS).
    refused: Vec<bool>,
    targets: VecDeque<Target>,
    /// The target whose addresses are being asked for.
    current: Option<Target>,
    addrs: Vec<IpAddr>,
    ready: VecDeque<Candidate>,
    next_id: u16,
}

impl Resolution {
    /// Starts the resolution of `domain` at `now` (its SRV questions).
    pub fn new(domain: &str, now: Instant, rng: &mut impl Rng) -> Resolution {
        let mut r = Resolution::empty(domain, rng, Phase::Srv);
        for service in ["_xmpps-server", "_xmpp-server"] {
            // (Not a name DNS can carry: no question; the fallback fails too.)
            if let Ok(name) = Name::from_str(&format!("{service}._tcp.{domain}.")) {
                r.ask(now, name, RecordType::SRV, false);
            }
        }
        if r.asked.is_empty() {
            r.phase = Phase::Targets;
        }
        r
    }

    /// A resolution that goes straight to `target` (a static route).
    pub fn to_target(domain: &str, target: Target, rng: &mut impl Rng) -> Resolution {
        let mut r = Resolution::empty(domain, rng, Phase::Targets);
        r.targets.push_back(target);
        r
    }

    fn empty(domain: &str, rng: &mut impl Rng, phase: Phase) -> Resolution {
        Resolution {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            phase,
            asked: Vec::new(),
            outbox: VecDeque::new(),
            srv: Vec::new(),
            refused: Vec::new(),
            targets: VecDeque::new(),
            current: None,
            addrs: Vec::new(),
            ready: VecDeque::new(),
            next_id: (rng.next_u32() & 0xffff) as u16,
        }
    }

    fn ask(&mut self, now: Instant, name: Name, qtype: RecordType, tcp: bool) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(DnsQuery::query(name.clone(), qtype));
        let Ok(bytes) = m.to_bytes() else {
            return;
        };
        self.asked.push(Asked {
            id,
            name,
            qtype,
            tcp,
            deadline: now + QUERY_TIMEOUT,
            retried: false,
            done: false,
        });
        self.outbox.push_back(Query { id, bytes, tcp });
    }

    /// The earliest deadline of a question in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.asked
            .iter()
            .filter(|a| !a.done)
            .map(|a| a.deadline)
            .min()
    }

    /// Questions whose deadline passed are asked again, or (the second
    /// time) count as answered with nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<usize> = (0..self.asked.len())
            .filter(|&i| !self.asked[i].done && self.asked[i].deadline <= now)
            .collect();
        for i in late {
            let a = &mut self.asked[i];
            if a.retried {
                a.done = true;
            } else {
                a.done = true;
                let (name, qtype, tcp) = (a.name.clone(), a.qtype, a.tcp);
                self.ask(now, name, qtype, tcp);
                if let Some(again) = self.asked.last_mut() {
                    again.retried = true;
                }
            }
        }
    }

    /// An answer from a name server (any: one that is not for a question
    /// in flight, or does not parse, is ignored).
    pub fn handle_answer(&mut self, now: Instant, bytes: &[u8]) {
        let Ok(m) = Message::from_vec(bytes) else {
            return;
        };
        let Some(i) = self.asked.iter().position(|a| {
            !a.done
                && a.id == m.metadata.id
                && m.queries
                    .first()
                    .is_some_and(|q| q.query_type() == a.qtype && q.name().eq_case(&a.name))
        }) else {
            return;
        };
        if m.metadata.message_type != MessageType::Response {
            return;
        }
        self.asked[i].done = true;
        if m.metadata.truncation && !self.asked[i].tcp {
            let (name, qtype) = (self.asked[i].name.clone(), self.asked[i].qtype);
            return self.ask(now, name, qtype, true);
        }
        if m.metadata.response_code != ResponseCode::NoError {
            return;
        }
        let qtype = self.asked[i].qtype;
        let direct_tls = self.asked[i].name.to_ascii().starts_with("_xmpps-server.");
        // Only records of the name asked, or of the names it is an alias of
        // (CNAME, in the order the server gives them): nothing else.
        let mut names = vec![self.asked[i].name.clone()];
        for record in m.answers.iter() {
            if let RData::CNAME(target) = &record.data {
                if names.iter().any(|n| n.eq_case(&record.name)) {
                    names.push(target.0.clone());
                }
            }
        }
        for record in m
            .answers
            .iter()
            .filter(|r| names.iter().any(|n| n.eq_case(&r.name)))
        {
            match (&record.data, qtype) {
                (RData::SRV(srv), RecordType::SRV) => {
                    let target = srv.target.to_ascii();
                    let target = target.trim_end_matches('.');
                    if target.is_empty() {
                        self.refused.push(direct_tls);
                    } else {
                        self.srv.push((
                            srv.priority,
                            srv.weight,
                            srv.port,
                            target.to_ascii_lowercase(),
                            direct_tls,
                        ));
                    }
                }
                (RData::A(a), RecordType::A) => self.addrs.push(IpAddr::V4(a.0)),
                (RData::AAAA(a), RecordType::AAAA) => self.addrs.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }

    /// What to do next: a question to send, an address to try, or wait.
    /// Call it after every `handle_*`, and again after each address that
    /// could not be connected to.
    pub fn poll(&mut self, now: Instant, rng: &mut impl Rng) -> Step {
        loop {
            if let Some(q) = self.outbox.pop_front() {
                return Step::Query(q);
            }
            if let Some(c) = self.ready.pop_front() {
                return Step::Candidate(c);
            }
            let busy = self.asked.iter().any(|a| !a.done);
            match self.phase {
                Phase::Srv if busy => return Step::Waiting,
                Phase::Srv => {
                    self.phase = Phase::Targets;
                    self.asked.clear();
                    if let Err(why) = self.order_targets(rng) {
                        return Step::Exhausted(why);
                    }
                }
                Phase::Targets if busy => return Step::Waiting,
                Phase::Targets => {
                    // The current target's addresses are in: hand them out.
                    if let Some(t) = self.current.take() {
                        self.asked.clear();
                        // AAAA first, then A (as they were asked).
                        let mut addrs = std::mem::take(&mut self.addrs);
                        addrs.sort_by_key(|a| a.is_ipv4());
                        addrs.dedup();
                        addrs.truncate(MAX_ADDRESSES);
                        for ip in addrs {
                            self.ready.push_back(Candidate {
                                addr: SocketAddr::new(ip, t.port),
                                host: t.host.clone(),
                                direct_tls: t.direct_tls,
                            });
                        }
                        continue;
                    }
                    let Some(t) = self.targets.pop_front() else {
                        return Step::Exhausted("every address of the domain was tried");
                    };
                    if let Ok(ip) = t.host.parse::<IpAddr>() {
                        self.ready.push_back(Candidate {
                            addr: SocketAddr::new(ip, t.port),
                            host: t.host.clone(),
                            direct_tls: t.direct_tls,
                        });
                        continue;
                    }
                    match Name::from_str(&format!("{}.", t.host)) {
                        Ok(name) => {
                            self.ask(now, name.clone(), RecordType::AAAA, false);
                            self.ask(now, name, RecordType::A, false);
                            self.current = Some(t);
                        }
                        Err(_) => continue,
                    }
                }
            }
        }
    }

    /// The SRV records in the order to try them (or the fallback).
    fn order_targets(&mut self, rng: &mut impl Rng) -> Result<(), &'static str> {
        if self.srv.is_empty() {
            // `_xmpp-server` said "not here" (RFC 6120 3.2.1); a `.` of
            // `_xmpps-server` only says there is no direct TLS.
            if self.refused.contains(&false) {
                return Err("the domain offers no server-to-server service (SRV target '.')");
            }
            self.targets.push_back(Target {
                host: self.domain.clone(),
                port: PORT,
                direct_tls: false,
            });
            return Ok(());
        }
        let mut records = std::mem::take(&mut self.srv);
        // By priority, direct TLS first at equal priority.
        records.sort_by_key(|r| (r.0, !r.4));
        let mut i = 0;
        while i < records.len() {
            let key = (records[i].0, records[i].4);
            let end = i + records[i..]
                .iter()
                .take_while(|r| (r.0, r.4) == key)
                .count();
            // RFC 2782: within a priority, pick by weight (zero weights
            // first in the list, so they get a chance), one at a time.
            let mut group: Vec<(u16, u16, u16, String, bool)> = records[i..end].to_vec();
            group.sort_by_key(|r| r.1 != 0);
            while !group.is_empty() {
                let total: u32 = group.iter().map(|r| u32::from(r.1)).sum();
                let pick = if total == 0 {
                    0
                } else {
                    let n = rng.next_u32() % (total + 1);
                    let mut run = 0;
                    group
                        .iter()
                        .position(|r| {
                            run += u32::from(r.1);
                            run >= n
                        })
                        .unwrap_or(0)
                };
                let (_, _, port, host, direct_tls) = group.remove(pick);
                self.targets.push_back(Target {
                    host,
                    port,
                    direct_tls,
                });
            }
            i = end;
        }
        self.targets.truncate(MAX_TARGETS);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
