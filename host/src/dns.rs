//! The host's part of federation's DNS: the core makes every question and
//! reads every answer ([`proto_core::dns`]); this only carries the bytes to
//! a name server and back, over UDP (TCP when the core asks, after a
//! truncated answer), on a thread of its own so that the event loop never
//! waits, and wakes the runtime when an answer came. A question that gets
//! no answer is simply dropped: the core asks again or gives up at its own
//! timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use proto_core::dns::Query;
use proto_core::ConnId;

use crate::kontalk::Wake;

/// How long one question waits on the network (the core's own timeout
/// decides when it is asked again).
const WAIT: Duration = Duration::from_secs(4);
/// Questions carried at once, at most (more are dropped: the core retries).
const IN_FLIGHT: usize = 64;
/// The largest answer taken (over UDP, EDNS is not asked for: 512 would
/// do; TCP answers may be longer).
const MAX_ANSWER: usize = 65_535;

/// The name servers of `/etc/resolv.conf` (`nameserver` lines), port 53.
pub fn system_name_servers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A link-local IPv6 address with its zone (`fe80::1%eth0`) is left out.
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Questions under way, and their answers once there.
pub struct Dns {
    servers: Vec<SocketAddr>,
    tx: Sender<(ConnId, Vec<u8>)>,
    rx: Receiver<(ConnId, Vec<u8>)>,
    wake: Option<Wake>,
    in_flight: Arc<AtomicUsize>,
}

impl Dns {
    /// Questions go to `servers`, in turn (the first that answers wins).
    pub fn new(servers: Vec<SocketAddr>) -> Dns {
        let (tx, rx) = channel();
        Dns {
            servers,
            tx,
            rx,
            wake: None,
            in_flight: Arc::default(),
        }
    }

    /// How an answer wakes the runtime.
    pub fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// Sends `query` for `token`; [`poll`](Self::poll) has the answer later.
    pub fn ask(&self, token: ConnId, query: Query) {
        if self.servers.is_empty() {
            log::warn!("dns: no name server (none in /etc/resolv.conf, none in s2s.name_servers)");
            return;
        }
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            log::warn!("dns: {IN_FLIGHT} questions in flight; one more waits for the retry");
            return;
        }
        let (servers, tx, wake, in_flight) = (
            self.servers.clone(),
            self.tx.clone(),
            self.wake.clone(),
            self.in_flight.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for server in servers {
                    let answer = if query.tcp {
                        ask_tcp(server, &query.bytes)
                    } else {
                        ask_udp(server, query.id, &query.bytes)
                    };
                    match answer {
                        Ok(bytes) => {
                            let _ = tx.send((token, bytes));
                            if let Some(wake) = &wake {
                                wake();
                            }
                            break;
                        }
                        Err(e) => log::debug!("dns: {server}: {e}"),
                    }
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            log::error!("dns: cannot start a thread: {e}");
        }
    }

    /// The answers that came since the last call.
    pub fn poll(&self) -> Vec<(ConnId, Vec<u8>)> {
        self.rx.try_iter().collect()
    }
}

fn ask_udp(server: SocketAddr, id: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(WAIT))?;
    socket.send(bytes)?;
    let mut buf = vec![0u8; MAX_ANSWER];
    loop {
        let n = socket.recv(&mut buf)?;
        // Only the answer to this question (a late one to an earlier question is not).
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

fn ask_tcp(server: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::other("a question longer than TCP's length field"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_its_name_servers_in_order() {
        let text = "# a comment\nsearch example.org\nnameserver 127.0.0.53\n\
                    nameserver ::1\nnameserver fe80::1%eth0\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_question_goes_to_the_name_server_and_its_answer_comes_back_by_token() {
        // A name server on loopback that echoes the question with the QR bit set.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            buf[2] |= 0x80;
            server.send_to(&buf[..n], from).unwrap();
        });
        let dns = Dns::new(vec![addr]);
        let (wtx, wrx) = channel();
        let mut dns = dns;
        dns.set_wake(Arc::new(move || {
            let _ = wtx.send(());
        }));
        let question = vec![0x12, 0x34, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dns.ask(
            ConnId(7),
            Query {
                id: 0x1234,
                bytes: question.clone(),
                tcp: false,
            },
        );
        wrx.recv_timeout(Duration::from_secs(10)).unwrap();
        let answers = dns.poll();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, ConnId(7));
        assert_eq!(answers[0].1[..2], question[..2]);
        assert_eq!(answers[0].1[2] & 0x80, 0x80);
    }
}
