//! Net links between servers driven in memory: each server has its own
//! certificate, the harness carries the bytes of every connection between
//! the two cores, and time is simulated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::{NetConfig, NetPeer};
use crate::testing::MemStore;
use crate::tls::fingerprint;
use crate::{Config, ConnId, Event, Listener, Server, TlsConfigs, TlsIdentity};

/// A certificate of its own for `host` (ECDSA P-256, made per test).
fn identity(host: &str) -> (TlsIdentity, [u8; 32]) {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let der = cert.cert.der().to_vec();
    let fpr = fingerprint(&der);
    let id = TlsIdentity {
        cert_chain: vec![CertificateDer::from(der)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der())),
    };
    (id, fpr)
}

/// One server of the simulated network.
struct Node {
    server: Server,
    /// What it was made with, for a restart.
    config: Config,
    tls: TlsConfigs,
    store: MemStore,
    /// Connections the core asked for, in order.
    connects: usize,
    /// Every directory change the core asked its store to keep: (home, number).
    stored: Vec<(String, u64)>,
    /// The `StoreDirectory` requests (one per batch received).
    batches: usize,
}

/// The servers, the connections between them, and the time.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    /// (node, conn) -> (node, conn) at the other end.
    wires: HashMap<(usize, ConnId), (usize, ConnId)>,
    /// Nodes whose listener takes no connection.
    down: Vec<usize>,
    /// Nodes whose next `StoreDirectory` fails.
    failing: Vec<usize>,
    /// What clients' connections (not links) received.
    clients: HashMap<(usize, ConnId), Vec<u8>>,
    /// Connections whose other end restarted: what they send next is
    /// answered with a reset (the connection ends), as a TCP stack does.
    dead: Vec<(usize, ConnId)>,
    /// Nodes whose `StoreDirectory` requests wait in `held`.
    hold: Vec<usize>,
    held: Vec<(usize, crate::StoreToken, crate::StoreRequest)>,
    /// The `Resume` events, by node.
    resumed: Vec<(usize, ConnId)>,
    /// Nodes whose store carries out every request but whose core never
    /// hears the answer: it crashed right after the commit (the test
    /// restarts it).
    deaf: Vec<usize>,
    /// Requests of a node that never reach its store (it crashed before
    /// they were carried out): node and which.
    lost: Vec<(usize, Which)>,
    /// Nodes whose disk is slow: every request waits in `slow_held` until
    /// [`Net::release`]; a restart loses what waits.
    slow: Vec<usize>,
    slow_held: Vec<(usize, crate::StoreToken, crate::StoreRequest)>,
    /// The next request of a node that matches fails (once).
    fail_once: Vec<(usize, Which)>,
}

/// Which store requests a test means.
type Which = fn(&crate::StoreRequest) -> bool;

/// Node `i`'s address in the lists.
fn address(i: usize) -> String {
    format!("10.0.0.{}:5270", i + 1)
}

fn ip(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, i as u8 + 1])
}

impl Net {
    /// Servers for `hosts`, each listing all the others with their real
    /// fingerprints, except what `tweak` changes in a node's list.
    fn new(hosts: &[&str], tweak: impl Fn(usize, &mut Vec<NetPeer>)) -> Net {
        Net::with_accounts(hosts, &[], tweak)
    }

    /// [`Net::new`], node `i` with the accounts `accounts[i]`.
    fn with_accounts(
        hosts: &[&str],
        accounts: &[&[&str]],
        tweak: impl Fn(usize, &mut Vec<NetPeer>),
    ) -> Net {
        let ids: Vec<(TlsIdentity, [u8; 32])> = hosts.iter().map(|h| identity(h)).collect();
        let now = Instant::now();
        let mut nodes = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let mut peers: Vec<NetPeer> = hosts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, h)| NetPeer {
                    host: (*h).to_owned(),
                    address: address(j),
                    clients: format!("{h}:5222"),
                    fingerprint: ids[j].1,
                    enabled: true,
                })
                .collect();
            tweak(i, &mut peers);
            let config = Config {
                domain: "kontalk.net".into(),
                require_tls: false,
                allow_registration: true,
                net: Some(NetConfig {
                    host: (*host).to_owned(),
                    peers,
                }),
                ..Config::default()
            };
            let tls = TlsConfigs::new(&ids[i].0).unwrap();
            let mut server = Server::new(config.clone(), tls.clone(), [i as u8 + 1; 32]).unwrap();
            server.set_kontalk_key(crate::testing::test_server_key().clone());
            let mut store = MemStore::default();
            for user in accounts.get(i).copied().unwrap_or_default() {
                store.add_account(user, "pw");
            }
            nodes.push(Node {
                server,
                config,
                tls,
                store,
                connects: 0,
                stored: Vec::new(),
                batches: 0,
            });
        }
        let mut net = Net {
            nodes,
            now,
            wires: HashMap::new(),
            down: Vec::new(),
            failing: Vec::new(),
            clients: HashMap::new(),
            dead: Vec::new(),
            hold: Vec::new(),
            held: Vec::new(),
            resumed: Vec::new(),
            deaf: Vec::new(),
            lost: Vec::new(),
            slow: Vec::new(),
            slow_held: Vec::new(),
            fail_once: Vec::new(),
        };
        for i in 0..net.nodes.len() {
            net.nodes[i].server.handle_wall_clock(now, 1_800_000_000);
        }
        net.pump();
        net
    }

    fn node_of(&self, address: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self::address(i) == address)
    }

    /// Carries everything between the cores until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(ev) = self.nodes[i].server.poll_event() {
                    moved = true;
                    self.event(i, ev);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn event(&mut self, i: usize, ev: Event) {
        let now = self.now;
        match ev {
            Event::Transmit(id) => {
                let mut buf = Vec::new();
                self.nodes[i].server.poll_transmit(id, &mut buf);
                if self.dead.contains(&(i, id)) {
                    self.dead.retain(|&d| d != (i, id));
                    self.nodes[i].server.handle_eof(now, id);
                } else if let Some(&(j, other)) = self.wires.get(&(i, id)) {
                    if !buf.is_empty() {
                        self.nodes[j].server.handle_data(now, other, &buf);
                    }
                } else if let Some(out) = self.clients.get_mut(&(i, id)) {
                    out.extend_from_slice(&buf);
                }
            }
            Event::Close(id) => {
                if let Some((j, other)) = self.wires.remove(&(i, id)) {
                    self.wires.remove(&(j, other));
                    self.nodes[j].server.handle_eof(now, other);
                }
            }
            Event::Connect { conn, address } => {
                self.nodes[i].connects += 1;
                // A machine that is away reaches no one, and no one reaches it.
                let target = self
                    .node_of(&address)
                    .filter(|j| !self.down.contains(j) && !self.down.contains(&i));
                match target {
                    Some(j) => {
                        let other = self.nodes[j]
                            .server
                            .handle_accept(now, Listener::Net, ip(i));
                        self.wires.insert((i, conn), (j, other));
                        self.wires.insert((j, other), (i, conn));
                        self.nodes[i].server.handle_connected(now, conn, ip(j));
                    }
                    None => {
                        self.nodes[i]
                            .server
                            .handle_connect_failed(now, conn, "connection refused")
                    }
                }
            }
            Event::Store(token, req) => {
                if let crate::StoreRequest::StoreDirectory { home, changes, .. } = &req {
                    let n = &mut self.nodes[i];
                    n.batches += 1;
                    n.stored
                        .extend(changes.iter().map(|c| (home.clone(), c.seq)));
                }
                let directory = matches!(req, crate::StoreRequest::StoreDirectory { .. });
                if directory && self.hold.contains(&i) {
                    self.held.push((i, token, req));
                    return;
                }
                let fail = directory && self.failing.contains(&i);
                if fail {
                    self.failing.retain(|&n| n != i);
                    let reply = crate::StoreReply::Failed("disk full".into());
                    self.nodes[i].server.handle_store_reply(now, token, reply);
                    return;
                }
                if self.lost.iter().any(|(n, f)| *n == i && f(&req)) {
                    return;
                }
                if self.slow.contains(&i) {
                    self.slow_held.push((i, token, req));
                    return;
                }
                self.execute(i, token, req);
            }
            Event::Resume(id) => self.resumed.push((i, id)),
            Event::SendCode(_) | Event::Resolve { .. } | Event::Push(_) => {}
        }
    }

    /// Carries out a store request of node `i` and answers it (unless it
    /// is to fail, or the node is deaf).
    fn execute(&mut self, i: usize, token: crate::StoreToken, req: crate::StoreRequest) {
        let now = self.now;
        if let Some(k) = self.fail_once.iter().position(|(n, f)| *n == i && f(&req)) {
            self.fail_once.remove(k);
            let reply = crate::StoreReply::Failed("disk full".into());
            self.nodes[i].server.handle_store_reply(now, token, reply);
            return;
        }
        let reply = self.nodes[i].store.answer(&req);
        if !self.deaf.contains(&i) {
            self.nodes[i].server.handle_store_reply(now, token, reply);
        }
    }

    /// Node `i`'s slow disk carries out the first `n` requests waiting.
    fn release(&mut self, i: usize, n: usize) {
        for _ in 0..n {
            let Some(k) = self.slow_held.iter().position(|(j, _, _)| *j == i) else {
                break;
            };
            let (_, token, req) = self.slow_held.remove(k);
            self.execute(i, token, req);
            self.pump();
        }
    }

    /// Lets time pass, firing every node's timers on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.server.poll_timeout())
                .min()
                .filter(|&t| t <= end);
            let Some(at) = next else { break };
            self.now = at.max(self.now);
            for n in &mut self.nodes {
                n.server.handle_timeout(self.now);
            }
            self.pump();
        }
        self.now = end;
        for n in &mut self.nodes {
            n.server.handle_timeout(end);
        }
        self.pump();
    }

    fn up(&self, i: usize) -> Vec<String> {
        let mut up = self.nodes[i].server.net_links_up();
        up.sort();
        up
    }

    /// Makes node `i`'s next `StoreDirectory` fail.
    fn fail_directory_once(&mut self, i: usize) {
        self.failing.push(i);
    }

    /// Node `i` starts again with its memory gone and without closing its
    /// connections: the other ends see nothing.
    fn restart(&mut self, i: usize) {
        // What its disk had not carried out is lost with it; its new
        // connections (numbered from 1 again) are none of the old ones.
        self.slow_held.retain(|(j, _, _)| *j != i);
        self.dead.retain(|(j, _)| *j != i);
        self.clients.retain(|(j, _), _| *j != i);
        let n = &mut self.nodes[i];
        n.server = Server::new(n.config.clone(), n.tls.clone(), [i as u8 + 101; 32]).unwrap();
        n.server
            .set_kontalk_key(crate::testing::test_server_key().clone());
        let orphans: Vec<(usize, ConnId)> = self
            .wires
            .keys()
            .filter(|(a, _)| *a == i)
            .copied()
            .collect();
        for k in orphans {
            if let Some(other) = self.wires.remove(&k) {
                self.wires.remove(&other);
                self.dead.push(other);
            }
        }
        self.nodes[i]
            .server
            .handle_wall_clock(self.now, 1_800_000_000);
        self.pump();
    }

    /// Cuts every connection of node `i` (its machine went away).
    fn cut(&mut self, i: usize) {
        let now = self.now;
        let wires: Vec<((usize, ConnId), (usize, ConnId))> = self
            .wires
            .iter()
            .filter(|((a, _), _)| *a == i)
            .map(|(&k, &v)| (k, v))
            .collect();
        for ((a, ca), (b, cb)) in wires {
            self.wires.remove(&(a, ca));
            self.wires.remove(&(b, cb));
            self.nodes[b].server.handle_eof(now, cb);
            self.nodes[a].server.handle_eof(now, ca);
        }
        self.pump();
    }
}

#[test]
fn servers_link_each_pair_once_with_the_listed_certificates() {
    let net = Net::new(
        &["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"],
        |_, _| {},
    );
    assert_eq!(net.up(0), ["gamma.kontalk.net", "prime.kontalk.net"]);
    assert_eq!(net.up(1), ["beta.kontalk.net", "gamma.kontalk.net"]);
    assert_eq!(net.up(2), ["beta.kontalk.net", "prime.kontalk.net"]);
    // One connection per pair, opened by the host that sorts first: beta
    // opens two, gamma one (to prime), prime none.
    let connects: Vec<usize> = net.nodes.iter().map(|n| n.connects).collect();
    assert_eq!(connects, [2, 0, 1]);
    assert_eq!(net.wires.len(), 6, "three links, both ends");
}

#[test]
fn a_certificate_other_than_the_listed_one_is_refused_on_either_side() {
    // prime lists a wrong fingerprint for beta: prime refuses beta's link.
    let mut net = Net::new(&["beta.kontalk.net", "prime.kontalk.net"], |i, peers| {
        if i == 1 {
            peers[0].fingerprint = [9; 32];
        }
    });
    assert!(net.up(0).is_empty() && net.up(1).is_empty());
    assert!(net.wires.is_empty(), "the refused link is closed");
    // beta tries again after 1 s, then 2 s: the backoff doubles.
    assert_eq!(net.nodes[0].connects, 1);
    net.advance(Duration::from_millis(999));
    assert_eq!(net.nodes[0].connects, 1);
    net.advance(Duration::from_millis(1));
    assert_eq!(net.nodes[0].connects, 2);
    net.advance(Duration::from_millis(1999));
    assert_eq!(net.nodes[0].connects, 2);
    net.advance(Duration::from_millis(1));
    assert_eq!(net.nodes[0].connects, 3);

    // Now beta lists a wrong fingerprint for prime: beta refuses prime's
    // certificate when prime's header comes.
    let mut net = Net::new(&["beta.kontalk.net", "prime.kontalk.net"], |i, peers| {
        if i == 0 {
            peers[0].fingerprint = [9; 32];
        }
    });
    assert!(net.up(0).is_empty() && net.up(1).is_empty());
    // prime had put it up on its side; beta's refusal takes it down.
    assert!(net.wires.is_empty());
    net.advance(Duration::from_secs(1));
    assert_eq!(net.nodes[0].connects, 2);
    assert_eq!(net.nodes[1].connects, 0, "prime never opens a link to beta");
}

#[test]
fn a_server_that_is_not_listed_or_not_enabled_is_refused() {
    // gamma lists prime, prime does not list gamma; beta is listed by
    // prime but disabled.
    let mut net = Net::new(
        &["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"],
        |i, peers| {
            if i == 1 {
                peers.retain(|p| p.host != "gamma.kontalk.net");
                peers[0].enabled = false;
            }
        },
    );
    assert_eq!(net.up(0), ["gamma.kontalk.net"]);
    assert_eq!(net.up(1), Vec::<String>::new());
    assert_eq!(net.up(2), ["beta.kontalk.net"]);
    // Both keep trying, with their backoff, and are refused each time.
    net.advance(Duration::from_secs(3));
    assert!(net.up(1).is_empty());
    assert_eq!(
        net.nodes[0].connects,
        2 + 2,
        "beta: prime at 0 s, 1 s and 3 s"
    );
}

#[test]
fn a_link_that_drops_is_opened_again_and_a_restarted_server_replaces_its_old_link() {
    let mut net = Net::new(&["beta.kontalk.net", "prime.kontalk.net"], |_, _| {});
    assert_eq!(net.up(1), ["beta.kontalk.net"]);
    // prime's machine goes away: beta cannot reach it for a while.
    net.down.push(1);
    net.cut(1);
    assert!(net.up(0).is_empty() && net.up(1).is_empty());
    net.advance(Duration::from_secs(1));
    assert_eq!(net.nodes[0].connects, 2, "refused once");
    net.down.clear();
    net.advance(Duration::from_secs(2));
    assert_eq!(net.nodes[0].connects, 3);
    assert_eq!(net.up(0), ["prime.kontalk.net"]);
    assert_eq!(net.up(1), ["beta.kontalk.net"]);

    // beta restarts without its old connection closing (its machine
    // rebooted): the new link replaces the old one at prime, which ends the
    // old one.
    let old_at_prime: Vec<ConnId> = net
        .wires
        .keys()
        .filter(|(n, _)| *n == 1)
        .map(|&(_, c)| c)
        .collect();
    net.restart(0);
    assert_eq!(net.up(0), ["prime.kontalk.net"]);
    assert_eq!(net.up(1), ["beta.kontalk.net"]);
    assert_eq!(old_at_prime.len(), 1);
    assert!(
        !net.wires.contains_key(&(1, old_at_prime[0])) && net.dead.is_empty(),
        "prime ended the old link (its conflict error met the reset)"
    );
    assert_eq!(net.wires.len(), 2, "one link, both ends");
}

fn home<'a>(net: &'a Net, i: usize, user: &str) -> Option<&'a str> {
    net.nodes[i].server.net_home(user)
}

#[test]
fn every_server_learns_the_homes_of_the_other_servers_users() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"],
        &[&["alice", "bob"], &["carol"], &[]],
        |_, _| {},
    );
    assert_eq!(home(&net, 0, "carol"), Some("prime.kontalk.net"));
    assert_eq!(home(&net, 1, "alice"), Some("beta.kontalk.net"));
    assert_eq!(home(&net, 2, "bob"), Some("beta.kontalk.net"));
    assert_eq!(home(&net, 2, "carol"), Some("prime.kontalk.net"));
    assert_eq!(
        home(&net, 0, "alice"),
        None,
        "its own users are not elsewhere"
    );
    assert_eq!(home(&net, 0, "nobody"), None);
    // What is in memory is what is stored.
    assert!(net.nodes[0]
        .store
        .directory
        .contains(&("prime.kontalk.net".into(), "carol".into())));

    // A user registered on prime later, and one deleted: within a poll.
    let create = crate::StoreRequest::CreateAccount {
        username: "dave".into(),
        credentials: crate::sasl::Credentials::derive("pw", b"salt", 16),
    };
    net.nodes[1].store.answer(&create);
    net.nodes[1]
        .store
        .answer(&crate::StoreRequest::DeleteAccount {
            username: "carol".into(),
        });
    assert_eq!(home(&net, 0, "dave"), None);
    net.advance(super::POLL);
    for i in [0, 2] {
        assert_eq!(home(&net, i, "dave"), Some("prime.kontalk.net"));
        assert_eq!(home(&net, i, "carol"), None, "deleted");
    }
    // Each change reached each server once.
    for n in &net.nodes {
        let mut seen = n.stored.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n.stored.len(), "{:?}", n.stored);
    }
}

#[test]
fn a_server_that_restarts_asks_only_for_what_it_has_not_stored() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &["carol", "dave"]],
        |_, _| {},
    );
    assert_eq!(home(&net, 0, "dave"), Some("prime.kontalk.net"));
    // beta goes away; prime gets a user meanwhile; beta comes back with its
    // memory gone and its store kept.
    net.down.push(0);
    net.cut(0);
    net.nodes[1].store.add_account("erin", "pw");
    net.down.clear();
    net.restart(0);
    assert_eq!(net.up(0), ["prime.kontalk.net"]);
    assert_eq!(
        home(&net, 0, "carol"),
        Some("prime.kontalk.net"),
        "loaded from the store"
    );
    assert_eq!(home(&net, 0, "erin"), Some("prime.kontalk.net"), "fetched");
    let from_prime: Vec<u64> = net.nodes[0]
        .stored
        .iter()
        .filter(|(h, _)| h == "prime.kontalk.net")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        from_prime,
        [1, 2, 3],
        "carol and dave once, then erin alone"
    );
}

#[test]
fn a_big_directory_goes_in_batches() {
    let users: Vec<String> = (0..1234).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &names],
        |_, _| {},
    );
    assert_eq!(net.nodes[0].server.net_directory_len(), 1234);
    assert_eq!(home(&net, 0, "u1233"), Some("prime.kontalk.net"));
    assert_eq!(net.nodes[0].stored.len(), 1234, "each change once");
    assert_eq!(net.nodes[0].batches, 3, "500, 500 and 234");
}

#[test]
fn a_batch_that_cannot_be_stored_ends_the_link_and_the_next_link_asks_again() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &["carol"]],
        |_, _| {},
    );
    assert_eq!(home(&net, 0, "carol"), Some("prime.kontalk.net"));
    net.nodes[1].store.add_account("dave", "pw");
    // beta's store fails the next batch: nothing of it is in memory.
    net.fail_directory_once(0);
    net.advance(super::POLL);
    assert_eq!(home(&net, 0, "dave"), None);
    assert!(net.up(0).is_empty(), "the link ended");
    // The link comes back and dave comes with it.
    net.advance(Duration::from_secs(1));
    assert_eq!(home(&net, 0, "dave"), Some("prime.kontalk.net"));
}

impl Net {
    /// A plaintext client on node `i` that opens a stream and sends
    /// `body`; returns what it received.
    fn client(&mut self, i: usize, body: &str) -> String {
        let now = self.now;
        let id = self.nodes[i].server.handle_accept(
            now,
            Listener::Starttls,
            IpAddr::from([192, 0, 2, 1]),
        );
        self.clients.insert((i, id), Vec::new());
        let input = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='kontalk.net' version='1.0'>{body}"
        );
        self.nodes[i].server.handle_data(now, id, input.as_bytes());
        self.pump();
        String::from_utf8_lossy(&self.clients[&(i, id)]).into_owned()
    }

    /// A client on node `i` that starts SCRAM-SHA-256 as `user`.
    fn scram_start(&mut self, i: usize, user: &str) -> String {
        use base64::Engine;
        let first =
            base64::engine::general_purpose::STANDARD.encode(format!("n,,n={user},r=0123abcd"));
        self.client(
            i,
            &format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
            ),
        )
    }

    /// A client on node `i` that registers `user` in-band (XEP-0077).
    fn register(&mut self, i: usize, user: &str) -> String {
        self.client(
            i,
            &format!(
                "<iq type='set' id='r1'><query xmlns='jabber:iq:register'>\
                 <username>{user}</username><password>pw</password></query></iq>"
            ),
        )
    }
}

#[test]
fn a_client_of_a_user_of_another_server_is_sent_there() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&["alice"], &["carol"]],
        |_, _| {},
    );
    let out = net.scram_start(0, "carol");
    assert!(
        out.contains(
            "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>\
             prime.kontalk.net:5222</see-other-host></stream:error></stream:stream>"
        ),
        "{out}"
    );
    // Its own user goes on with SCRAM, and so does one nobody has (to
    // fail as it always did, without saying that the account is unknown).
    for user in ["alice", "nobody"] {
        let out = net.scram_start(0, user);
        assert!(
            out.contains("<challenge") && !out.contains("see-other-host"),
            "{out}"
        );
    }
}

/// One run of the directory's simulation: random changes, link drops,
/// machines away, restarts, lost databases and failing stores on three
/// servers, then the network heals. Every server must then know exactly the other servers'
/// accounts, in memory as in its store.
fn simulate(seed: u64, steps: usize) {
    use rand_core::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut net = Net::new(
        &["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"],
        |_, _| {},
    );
    let mut next_user = 0u32;
    let pick = |rng: &mut rand_chacha::ChaCha20Rng, n: usize| (rng.next_u32() as usize) % n;
    for _ in 0..steps {
        let node = pick(&mut rng, 3);
        match pick(&mut rng, 10) {
            0..=2 => {
                next_user += 1;
                let create = crate::StoreRequest::CreateAccount {
                    username: format!("u{next_user}"),
                    credentials: crate::sasl::Credentials::derive("pw", b"salt", 1),
                };
                net.nodes[node].store.answer(&create);
            }
            3 => {
                let users: Vec<String> = net.nodes[node].store.accounts.keys().cloned().collect();
                if !users.is_empty() {
                    let u = users[pick(&mut rng, users.len())].clone();
                    net.nodes[node]
                        .store
                        .answer(&crate::StoreRequest::DeleteAccount { username: u });
                }
            }
            4 => {
                // The machine goes away for a while.
                if !net.down.contains(&node) {
                    net.down.push(node);
                }
                net.cut(node);
            }
            5 => net.down.retain(|&n| n != node),
            6 => net.restart(node),
            7 => net.fail_directory_once(node),
            // Rarely: the database is lost and the server starts again
            // with an empty one (or one restored from long ago).
            8 if pick(&mut rng, 4) == 0 => {
                net.nodes[node].store = MemStore::default();
                net.restart(node);
            }
            _ => {}
        }
        let ms = u64::from(rng.next_u32() % 7000);
        net.advance(Duration::from_millis(ms));
    }
    // Healed: every machine back, time for the backoff and a poll.
    net.down.clear();
    net.failing.clear();
    net.advance(Duration::from_secs(130));
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let host = net.nodes[j]
                .server
                .net_status()
                .expect("in a network")
                .0
                .to_owned();
            assert_eq!(net.up(i).len(), 2, "seed {seed}: node {i} links");
            for user in net.nodes[j].store.accounts.keys() {
                assert_eq!(
                    home(&net, i, user),
                    Some(host.as_str()),
                    "seed {seed}: node {i} knows {user} of {host}"
                );
                assert!(
                    net.nodes[i]
                        .store
                        .directory
                        .contains(&(host.clone(), user.clone())),
                    "seed {seed}: node {i} stored {user} of {host}"
                );
            }
        }
        let others: usize = (0..3)
            .filter(|&j| j != i)
            .map(|j| net.nodes[j].store.accounts.len())
            .sum();
        assert_eq!(
            net.nodes[i].server.net_directory_len(),
            others,
            "seed {seed}: node {i} knows no one else (deleted users are gone)"
        );
        assert_eq!(
            net.nodes[i].store.directory.len(),
            others,
            "seed {seed}: node {i}'s store agrees"
        );
    }
}

/// The seeds and the steps of a simulation: `KONTALKD_SIM_SEEDS` seeds
/// (default `seeds`) from `KONTALKD_SIM_FIRST` (default 0),
/// `KONTALKD_SIM_STEPS` steps each (default 40).
fn sim_knobs(seeds: u64) -> (std::ops::Range<u64>, usize) {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let first = var("KONTALKD_SIM_FIRST", 0);
    let seeds = var("KONTALKD_SIM_SEEDS", seeds);
    (first..first + seeds, var("KONTALKD_SIM_STEPS", 40) as usize)
}

/// The directory's simulation over many seeds: `KONTALKD_SIM_SEEDS` (default
/// 200) runs from `KONTALKD_SIM_FIRST` (default 0), `KONTALKD_SIM_STEPS` steps
/// each (default 40). A failure names its seed; it replays with
/// `KONTALKD_SIM_FIRST=<seed> KONTALKD_SIM_SEEDS=1`.
#[test]
fn the_directories_agree_once_the_network_heals_whatever_happened() {
    let (seeds, steps) = sim_knobs(200);
    for seed in seeds {
        simulate(seed, steps);
    }
}

#[test]
fn an_account_made_here_reaches_the_other_servers_at_once() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &["carol"]],
        |_, _| {},
    );
    assert_eq!(home(&net, 0, "carol"), Some("prime.kontalk.net"));
    let out = net.register(1, "dave");
    assert!(out.contains("type='result'"), "{out}");
    // No time passed: not the next look, the change itself.
    assert_eq!(home(&net, 0, "dave"), Some("prime.kontalk.net"));
    // An account the host deletes itself, told to the core.
    net.nodes[1]
        .store
        .answer(&crate::StoreRequest::DeleteAccount {
            username: "carol".into(),
        });
    net.nodes[1].server.net_accounts_changed();
    net.pump();
    assert_eq!(home(&net, 0, "carol"), None);
}

#[test]
fn each_server_learns_the_others_openpgp_keys_for_the_server_list() {
    let net = Net::new(
        &["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"],
        |i, peers| {
            // gamma is listed by beta but disabled there: not in beta's list.
            if i == 0 {
                peers[1].enabled = false;
            }
        },
    );
    let fpr = crate::testing::test_server_key().fingerprint();
    let (host, others) = net.nodes[0].server.net_servers().expect("in a network");
    assert_eq!(host, "beta.kontalk.net");
    assert_eq!(others, [("prime.kontalk.net", fpr.as_str())]);
    let (host, mut others) = net.nodes[1].server.net_servers().expect("in a network");
    others.sort();
    assert_eq!(host, "prime.kontalk.net");
    assert_eq!(
        others,
        [
            ("gamma.kontalk.net", fpr.as_str()),
            ("beta.kontalk.net", fpr.as_str())
        ]
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn a_server_whose_database_was_lost_is_learnt_again_from_scratch() {
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &["carol", "dave", "erin"]],
        |_, _| {},
    );
    assert_eq!(net.nodes[0].server.net_directory_len(), 3);
    // prime comes back with an older, smaller database: one account, one
    // it never had in the copy beta knows.
    let mut older = MemStore::default();
    older.add_account("frank", "pw");
    net.nodes[1].store = older;
    net.restart(1);
    // beta's link met the reset at the next keepalive and opened again.
    net.advance(Duration::from_secs(65));
    assert_eq!(net.up(0), ["prime.kontalk.net"]);
    assert_eq!(home(&net, 0, "frank"), Some("prime.kontalk.net"));
    for gone in ["carol", "dave", "erin"] {
        assert_eq!(home(&net, 0, gone), None, "{gone} is not on prime any more");
    }
    assert_eq!(net.nodes[0].server.net_directory_len(), 1);
    assert_eq!(net.nodes[0].store.directory.len(), 1, "the store agrees");
    // And new accounts on prime keep coming, numbered from its new log.
    net.nodes[1].store.add_account("gina", "pw");
    net.advance(super::POLL);
    assert_eq!(home(&net, 0, "gina"), Some("prime.kontalk.net"));
}

#[test]
fn a_server_that_shuts_down_ends_its_links_and_opens_none() {
    let mut net = Net::new(&["beta.kontalk.net", "prime.kontalk.net"], |_, _| {});
    assert_eq!(net.up(0), ["prime.kontalk.net"]);
    let now = net.now;
    net.nodes[0].server.handle_shutdown(now);
    net.pump();
    assert!(net.up(0).is_empty() && net.up(1).is_empty());
    assert!(net.wires.is_empty(), "the link is closed");
    let connects = net.nodes[0].connects;
    net.advance(Duration::from_secs(120));
    assert_eq!(
        net.nodes[0].connects, connects,
        "no link opened while shutting down"
    );
    assert!(net.nodes[0]
        .server
        .net_status()
        .is_some_and(|(_, p)| p[0].retry_at.is_none()));
}

#[test]
fn a_link_is_not_read_while_two_of_its_batches_wait_in_the_store() {
    let users: Vec<String> = (0..1234).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut net = Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&[], &["first"]],
        |_, _| {},
    );
    assert_eq!(home(&net, 0, "first"), Some("prime.kontalk.net"));
    let link = net
        .wires
        .keys()
        .find(|(n, _)| *n == 0)
        .map(|&(_, id)| id)
        .expect("beta's link");
    // beta's store is slow: prime's new users wait in it.
    net.hold.push(0);
    for u in &names {
        net.nodes[1].store.add_account(u, "pw");
    }
    net.nodes[1].server.net_accounts_changed();
    net.pump();
    assert!(net.held.len() >= 2, "{} batches", net.held.len());
    assert!(!net.nodes[0].server.wants_read(link), "held back");
    // The store catches up: the link is read again, and said so.
    net.hold.clear();
    let now = net.now;
    let held = std::mem::take(&mut net.held);
    for (i, token, req) in held {
        let reply = net.nodes[i].store.answer(&req);
        net.nodes[i].server.handle_store_reply(now, token, reply);
        net.pump();
    }
    assert!(net.nodes[0].server.wants_read(link));
    assert!(net.resumed.contains(&(0, link)));
    assert_eq!(net.nodes[0].server.net_directory_len(), 1235);
}

// ------------------------------------------------------------ the handover

impl Net {
    /// `user` (password `pw`) logs in on node `i` over plaintext
    /// (SCRAM-SHA-1) and binds `resource`; with `presence`, sends its
    /// initial presence. Returns its connection.
    fn login(&mut self, i: usize, user: &str, resource: &str, presence: bool) -> ConnId {
        let now = self.now;
        let id = self.nodes[i].server.handle_accept(
            now,
            Listener::Starttls,
            IpAddr::from([192, 0, 2, 1]),
        );
        self.clients.insert((i, id), Vec::new());
        crate::testing::scram_login("kontalk.net", user, resource, |data| {
            self.send(i, id, data);
            self.received(i, id)
        });
        if presence {
            self.send(i, id, "<presence/>");
        }
        id
    }

    /// A client sends `data` on its connection `id` of node `i`.
    fn send(&mut self, i: usize, id: ConnId, data: &str) {
        let now = self.now;
        self.nodes[i].server.handle_data(now, id, data.as_bytes());
        self.pump();
    }

    /// Everything a client's connection received.
    fn received(&self, i: usize, id: ConnId) -> String {
        String::from_utf8_lossy(&self.clients[&(i, id)]).into_owned()
    }

    /// A chat message from the session `id` of node `i`.
    fn chat(&mut self, i: usize, id: ConnId, to: &str, body: &str) {
        self.send(
            i,
            id,
            &format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"),
        );
    }

    /// The bodies of the messages stored offline for `user` on node `i`.
    fn offline_bodies(&self, i: usize, user: &str) -> Vec<String> {
        self.nodes[i]
            .store
            .offline
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, m)| body_of(&m.stanza))
            .collect()
    }
}

/// Two servers: alice's home beta, carol's home prime.
fn alice_and_carol() -> Net {
    Net::with_accounts(
        &["beta.kontalk.net", "prime.kontalk.net"],
        &[&["alice"], &["carol"]],
        |_, _| {},
    )
}

/// The text of the first `<body>` in `xml`.
fn body_of(xml: &str) -> String {
    let start = xml.find("<body>").map_or(0, |s| s + 6);
    let end = xml[start..].find("</body>").map_or(start, |e| start + e);
    xml[start..end].to_owned()
}

/// How many times `<body>{body}</body>` is in `text`.
fn count(text: &str, body: &str) -> usize {
    text.matches(&format!("<body>{body}</body>")).count()
}

#[test]
fn messages_between_users_of_two_servers_arrive_live_and_offline() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    // carol is offline: the message waits in her home's offline storage.
    net.chat(0, alice, "carol@kontalk.net", "one");
    assert_eq!(net.offline_bodies(1, "carol"), ["one"]);
    let stored = &net.nodes[1].store.offline[0].1.stanza;
    assert!(
        stored.contains("from='alice@kontalk.net/phone'"),
        "{stored}"
    );
    assert!(
        net.nodes[0].store.net_outbox.is_empty(),
        "acknowledged, deleted"
    );
    assert!(
        net.nodes[1].store.net_inbox.is_empty(),
        "delivered, deleted"
    );
    // She logs in: she gets it, then live ones, and her answer comes back.
    let carol = net.login(1, "carol", "tablet", true);
    assert_eq!(count(&net.received(1, carol), "one"), 1);
    net.chat(0, alice, "carol@kontalk.net", "two");
    assert_eq!(count(&net.received(1, carol), "two"), 1);
    net.chat(1, carol, "alice@kontalk.net/phone", "three");
    let got = net.received(0, alice);
    assert_eq!(count(&got, "three"), 1, "{got}");
    assert!(got.contains("from='carol@kontalk.net/tablet'"), "{got}");
    // Presence to a user of the other server goes there too.
    net.send(
        0,
        alice,
        "<presence to='carol@kontalk.net/tablet'><status>hi</status></presence>",
    );
    assert!(net.received(1, carol).contains("<status>hi</status>"));
    // A message to nobody of the network is answered as RFC 6121 says.
    net.chat(0, alice, "nobody@kontalk.net", "four");
    assert!(net.received(0, alice).contains("service-unavailable"));
    for n in &net.nodes {
        assert!(n.store.net_outbox.is_empty() && n.store.net_inbox.is_empty());
    }
}

#[test]
fn messages_wait_while_the_home_is_away_and_arrive_once_in_order() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    net.down.push(1);
    net.cut(1);
    for body in ["m1", "m2", "m3"] {
        net.chat(0, alice, "carol@kontalk.net", body);
    }
    // An iq request gets its answer at once rather than waiting.
    net.send(
        0,
        alice,
        "<iq type='get' id='v1' to='carol@kontalk.net/x'><query xmlns='jabber:iq:version'/></iq>",
    );
    assert!(net.received(0, alice).contains("remote-server-timeout"));
    assert_eq!(net.nodes[0].store.net_outbox.len(), 3, "kept while away");
    assert!(net.offline_bodies(1, "carol").is_empty());
    net.down.clear();
    net.advance(Duration::from_secs(70));
    assert_eq!(net.offline_bodies(1, "carol"), ["m1", "m2", "m3"]);
    assert!(net.nodes[0].store.net_outbox.is_empty());
}

#[test]
fn a_home_that_crashes_after_storing_delivers_each_message_once() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    // prime keeps the message in its inbox, and dies before it hears so:
    // no ack went out, nothing was delivered.
    net.deaf.push(1);
    net.chat(0, alice, "carol@kontalk.net", "once");
    assert_eq!(net.nodes[1].store.net_inbox.len(), 1);
    assert_eq!(net.nodes[0].store.net_outbox.len(), 1, "not acknowledged");
    net.deaf.clear();
    net.restart(1);
    net.advance(Duration::from_secs(70));
    // Delivered from the inbox at the start; beta's copy came again on the
    // new link and was dropped as a repeat, and is deleted now.
    assert_eq!(net.offline_bodies(1, "carol"), ["once"]);
    assert!(net.nodes[1].store.net_inbox.is_empty());
    assert!(net.nodes[0].store.net_outbox.is_empty());
}

#[test]
fn an_origin_that_crashes_before_the_ack_sends_again_and_the_home_drops_the_repeat() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    // beta dies right after keeping the message: its memory never hears
    // the number, so it does not send it; the next start does.
    net.deaf.push(0);
    net.chat(0, alice, "carol@kontalk.net", "kept");
    assert_eq!(net.nodes[0].store.net_outbox.len(), 1);
    net.deaf.clear();
    net.restart(0);
    net.advance(Duration::from_secs(70));
    assert_eq!(net.offline_bodies(1, "carol"), ["kept"]);
    // Once more: beta sends, prime stores and acks, beta dies before the
    // ack's deletion is carried out: the new link sends it again, prime
    // drops it.
    let alice = net.login(0, "alice", "phone", true);
    net.lost
        .push((0, |r| matches!(r, crate::StoreRequest::NetAcked { .. })));
    net.chat(0, alice, "carol@kontalk.net", "again");
    assert_eq!(net.nodes[0].store.net_outbox.len(), 1, "still kept");
    assert_eq!(net.offline_bodies(1, "carol"), ["kept", "again"]);
    net.lost.clear();
    net.restart(0);
    net.advance(Duration::from_secs(70));
    assert_eq!(net.offline_bodies(1, "carol"), ["kept", "again"]);
    assert!(net.nodes[0].store.net_outbox.is_empty());
}

/// With `KONTALKD_SIM_TRACE`, the core's log (every level) on stderr.
fn trace_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("proto_core")
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("{} {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// One message of the simulation.
struct Sent {
    id: String,
    /// The recipient and its home.
    to: (usize, String),
    /// Its sender and the sender's home.
    from: (usize, String),
    /// The sender's server acknowledged it (XEP-0198 `<a h/>`).
    acked: bool,
    /// The sender got an error for it.
    errored: bool,
}

/// A sender's session: the messages it sent since `<enable/>`, in order.
struct Sender {
    node: usize,
    user: String,
    conn: Option<ConnId>,
    sent: Vec<usize>,
}

impl Net {
    /// The sender logs in again (with stream management) if it has no session.
    fn sender_up(&mut self, s: &mut Sender) {
        if s.conn.is_none() {
            // A slow disk catches up while the login waits for it.
            let slow = self.slow.contains(&s.node);
            self.release(s.node, usize::MAX);
            self.slow.retain(|&n| n != s.node);
            let id = self.login(s.node, &s.user, "r", false);
            self.send(s.node, id, "<enable xmlns='urn:xmpp:sm:3'/>");
            if slow {
                self.slow.push(s.node);
            }
            s.conn = Some(id);
            s.sent.clear();
        }
    }

    /// What the sender's session learnt: acks and errors.
    fn settle(&self, s: &Sender, ledger: &mut [Sent]) {
        let Some(id) = s.conn else {
            return;
        };
        let text = self.received(s.node, id);
        let mut h = 0usize;
        for part in text.split("<a xmlns='urn:xmpp:sm:3' h='").skip(1) {
            let n: usize = part.split('\'').next().unwrap().parse().unwrap();
            h = h.max(n);
        }
        for &m in s.sent.iter().take(h) {
            ledger[m].acked = true;
        }
        for tag in text.split("<message ").skip(1) {
            let tag = tag.split('>').next().unwrap();
            if !tag.contains("type='error'") {
                continue;
            }
            if let Some(id) = tag.split("id='").nth(1).and_then(|r| r.split('\'').next()) {
                if let Some(m) = ledger.iter_mut().find(|m| m.id == id) {
                    m.errored = true;
                }
            }
        }
    }
}

/// One run of the network's simulation with messages: senders on each of
/// three servers send to users of every server (all offline, so that every
/// delivery is a stored row), while links drop, machines go away, servers
/// crash with their disk's work half done, disks are slow and requests
/// fail. Then the network heals, and every message its sender's server
/// acknowledged (without an error) must be stored exactly once at its
/// recipient's home, in the order each sender sent; none other more than
/// once; no outbox or inbox holds anything.
fn simulate_messages(seed: u64, steps: usize) {
    use crate::StoreRequest as R;
    use rand_core::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let hosts = ["beta.kontalk.net", "prime.kontalk.net", "gamma.kontalk.net"];
    let users: Vec<Vec<String>> = (0..3)
        .map(|k| vec![format!("s{k}"), format!("r{k}a"), format!("r{k}b")])
        .collect();
    let accounts: Vec<Vec<&str>> = users
        .iter()
        .map(|u| u.iter().map(String::as_str).collect())
        .collect();
    let accounts: Vec<&[&str]> = accounts.iter().map(Vec::as_slice).collect();
    let mut net = Net::with_accounts(&hosts, &accounts, |_, _| {});
    let mut senders: Vec<Sender> = (0..3)
        .map(|k| Sender {
            node: k,
            user: format!("s{k}"),
            conn: None,
            sent: Vec::new(),
        })
        .collect();
    for s in &mut senders {
        net.sender_up(s);
    }
    let mut ledger: Vec<Sent> = Vec::new();
    let pick = |rng: &mut rand_chacha::ChaCha20Rng, n: usize| (rng.next_u32() as usize) % n;
    let kinds: [Which; 5] = [
        |r| matches!(r, R::NetQueue { .. }),
        |r| matches!(r, R::NetReceive { .. }),
        |r| matches!(r, R::NetOutbox { .. }),
        |r| matches!(r, R::NetAcked { .. }),
        |r| matches!(r, R::LoadNetInbox),
    ];
    let trace = std::env::var_os("KONTALKD_SIM_TRACE").is_some();
    if trace {
        trace_log();
    }
    for step in 0..steps {
        let node = pick(&mut rng, 3);
        let what = pick(&mut rng, 12);
        if trace {
            eprintln!(
                "step {step}: node {node} action {what} links {:?} slow {:?} down {:?}",
                (0..3).map(|i| net.up(i).len()).collect::<Vec<_>>(),
                net.slow,
                net.down
            );
        }
        match what {
            0..=4 => {
                let to_node = pick(&mut rng, 3);
                let to = users[to_node][1 + pick(&mut rng, 2)].clone();
                let id = format!("m{}", ledger.len());
                let s = &mut senders[node];
                s.sent.push(ledger.len());
                ledger.push(Sent {
                    id: id.clone(),
                    to: (to_node, to.clone()),
                    from: (node, s.user.clone()),
                    acked: false,
                    errored: false,
                });
                let conn = s.conn.expect("a session");
                net.send(
                    node,
                    conn,
                    &format!(
                        "<message to='{to}@kontalk.net' type='chat' id='{id}'><body>{id}</body>\
                         </message><r xmlns='urn:xmpp:sm:3'/>"
                    ),
                );
            }
            5 => {
                if !net.down.contains(&node) {
                    net.down.push(node);
                }
                net.cut(node);
            }
            6 => net.down.retain(|&n| n != node),
            7 | 8 => {
                // A crash: what its disk had not done is lost; with a slow
                // disk, some of it was done and never answered.
                if net.slow.contains(&node) && pick(&mut rng, 2) == 0 {
                    let n = pick(&mut rng, 4);
                    net.deaf.push(node);
                    net.release(node, n);
                    net.deaf.retain(|&d| d != node);
                }
                net.settle(&senders[node], &mut ledger);
                net.restart(node);
                let s = &mut senders[node];
                s.conn = None;
                net.sender_up(s);
            }
            9 => {
                if net.slow.contains(&node) {
                    let n = pick(&mut rng, 6);
                    net.release(node, n);
                    if pick(&mut rng, 2) == 0 {
                        net.release(node, usize::MAX);
                        net.slow.retain(|&d| d != node);
                    }
                } else {
                    net.slow.push(node);
                }
            }
            10 => net
                .fail_once
                .push((node, kinds[pick(&mut rng, kinds.len())])),
            _ => {}
        }
        let ms = u64::from(rng.next_u32() % 5000);
        net.advance(Duration::from_millis(ms));
    }
    // Healed.
    net.down.clear();
    net.fail_once.clear();
    // (Each disk's work leads to others' work: until all are done.)
    while !net.slow_held.is_empty() {
        for i in 0..3 {
            net.release(i, usize::MAX);
        }
    }
    net.slow.clear();
    net.advance(Duration::from_secs(130));
    for s in &senders {
        net.settle(s, &mut ledger);
    }
    let mut order: HashMap<(usize, String), Vec<String>> = HashMap::new();
    for m in &ledger {
        let (home, user) = &m.to;
        let rows: Vec<String> = net.offline_bodies(*home, user);
        let n = rows.iter().filter(|b| **b == m.id).count();
        assert!(n <= 1, "seed {seed}: {} stored {n} times", m.id);
        if m.acked && !m.errored {
            assert_eq!(n, 1, "seed {seed}: {} acknowledged and not stored", m.id);
        }
        if m.errored {
            assert_eq!(
                n, 0,
                "seed {seed}: {} answered with an error and stored",
                m.id
            );
        }
        if m.acked && n == 1 {
            order
                .entry((m.from.0, m.to.1.clone()))
                .or_default()
                .push(m.id.clone());
        }
    }
    for ((from, to), ids) in order {
        let home = ledger.iter().find(|m| m.to.1 == to).unwrap().to.0;
        let rows: Vec<String> = net
            .offline_bodies(home, &to)
            .into_iter()
            .filter(|b| ids.contains(b))
            .collect();
        assert_eq!(rows, ids, "seed {seed}: from node {from} to {to}, in order");
    }
    for (i, n) in net.nodes.iter().enumerate() {
        assert!(
            n.store.net_outbox.is_empty(),
            "seed {seed}: node {i} outbox {:?}",
            n.store.net_outbox
        );
        assert!(
            n.store.net_inbox.is_empty(),
            "seed {seed}: node {i} inbox {:?}",
            n.store.net_inbox
        );
    }
}

/// The network's simulation with messages over many seeds, with the same
/// knobs as the directory's (`KONTALKD_SIM_SEEDS`, default 1000;
/// `KONTALKD_SIM_FIRST`; `KONTALKD_SIM_STEPS`, default 40;
/// `KONTALKD_SIM_TRACE` prints the core's log).
#[test]
fn every_acknowledged_message_is_stored_once_at_its_home_whatever_happened() {
    let (seeds, steps) = sim_knobs(1000);
    for seed in seeds {
        simulate_messages(seed, steps);
    }
}

#[test]
fn a_subscription_between_users_of_two_servers_brings_presence() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", false);
    net.send(
        0,
        alice,
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>",
    );
    let carol = net.login(1, "carol", "tablet", false);
    net.send(
        1,
        carol,
        "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>",
    );
    net.send(
        0,
        alice,
        "<presence to='carol@kontalk.net' type='subscribe'/>",
    );
    let got = net.received(1, carol);
    assert!(
        got.contains("type='subscribe'") && got.contains("from='alice@kontalk.net'"),
        "{got}"
    );
    net.send(
        1,
        carol,
        "<presence to='alice@kontalk.net' type='subscribed'/>",
    );
    // alice's roster has carol with `to`, and carol's presence came after.
    let got = net.received(0, alice);
    let push = got.rfind("subscription='to'").expect(&got);
    let presence = got
        .rfind("<presence from='carol@kontalk.net/tablet'")
        .expect(&got);
    assert!(push < presence, "{got}");
    let item = |i: usize, user: &str, of: &str| {
        net.nodes[i].store.data[user]
            .roster
            .iter()
            .find(|it| it.jid == of)
            .map(|it| (it.subscription.from, it.subscription.to))
    };
    assert_eq!(item(0, "alice", "carol@kontalk.net"), Some((false, true)));
    assert_eq!(item(1, "carol", "alice@kontalk.net"), Some((true, false)));
    // carol's next presence reaches alice; alice's does not reach carol.
    net.send(1, carol, "<presence><status>away now</status></presence>");
    assert!(net.received(0, alice).contains("<status>away now</status>"));
    net.send(0, alice, "<presence><status>here</status></presence>");
    assert!(!net.received(1, carol).contains("<status>here</status>"));
}

#[test]
fn iqs_and_blocking_between_users_of_two_servers_work_as_on_one() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    let carol = net.login(1, "carol", "tablet", true);
    // An iq to carol's resource reaches her client, and her answer comes back.
    net.send(
        0,
        alice,
        "<iq type='get' id='v1' to='carol@kontalk.net/tablet'><query xmlns='jabber:iq:version'/></iq>",
    );
    let got = net.received(1, carol);
    assert!(
        got.contains("id='v1'") && got.contains("from='alice@kontalk.net/phone'"),
        "{got}"
    );
    net.send(
        1,
        carol,
        "<iq type='result' id='v1' to='alice@kontalk.net/phone'><query xmlns='jabber:iq:version'>\
         <name>tablet</name></query></iq>",
    );
    assert!(net.received(0, alice).contains("<name>tablet</name>"));
    // An iq to her bare JID is answered by her home (her vCard: none yet).
    net.send(
        0,
        alice,
        "<iq type='get' id='vc' to='carol@kontalk.net'><vCard xmlns='vcard-temp'/></iq>",
    );
    let got = net.received(0, alice);
    assert!(
        got.contains("id='vc'") && got.contains("from='carol@kontalk.net'"),
        "{got}"
    );
    // alice blocks carol: carol's message is refused by alice's home, and
    // carol hears so (XEP-0191 3.4).
    net.send(
        0,
        alice,
        "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='carol@kontalk.net'/></block></iq>",
    );
    net.chat(1, carol, "alice@kontalk.net", "blocked");
    assert_eq!(count(&net.received(0, alice), "blocked"), 0);
    let got = net.received(1, carol);
    assert!(got.contains("service-unavailable"), "{got}");
    for n in &net.nodes {
        assert!(n.store.net_outbox.is_empty() && n.store.net_inbox.is_empty());
    }
}

#[test]
fn a_full_outbox_answers_the_sender_instead_of_growing() {
    let mut net = alice_and_carol();
    let alice = net.login(0, "alice", "phone", true);
    net.down.push(1);
    net.cut(1);
    let outbox = &mut net.nodes[0].store.net_outbox;
    for seq in 1..=u64::from(super::OUTBOX_LIMIT) {
        outbox.insert(seq, ("prime.kontalk.net".into(), String::new()));
    }
    net.nodes[0].store.net_seq = u64::from(super::OUTBOX_LIMIT);
    net.chat(0, alice, "carol@kontalk.net", "one too many");
    let got = net.received(0, alice);
    assert!(
        got.contains("type='error'") && got.contains("resource-constraint"),
        "{got}"
    );
    assert_eq!(
        net.nodes[0].store.net_outbox.len(),
        super::OUTBOX_LIMIT as usize
    );
}
