//! The host's part of Net links: turning a server's address (`name:port`
//! or `ip:port`) into a socket address for the runtime to connect to. An IP
//! address needs nothing; a name is resolved on a thread of its own (the
//! event loop never waits on DNS), which wakes the runtime when it is done.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, Sender};

use proto_core::ConnId;

use crate::kontalk::Wake;

/// Resolutions under way, and their results once there.
pub struct Resolver {
    tx: Sender<(ConnId, Result<SocketAddr, String>)>,
    rx: Receiver<(ConnId, Result<SocketAddr, String>)>,
    wake: Option<Wake>,
}

impl Default for Resolver {
    fn default() -> Self {
        let (tx, rx) = channel();
        Resolver { tx, rx, wake: None }
    }
}

impl Resolver {
    /// How a finished resolution wakes the runtime.
    pub fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// The socket address of `address` when it is one already; else its
    /// resolution starts, and [`poll`](Self::poll) has it later.
    pub fn resolve(&self, conn: ConnId, address: &str) -> Option<Result<SocketAddr, String>> {
        if let Ok(addr) = address.parse::<SocketAddr>() {
            return Some(Ok(addr));
        }
        let (tx, wake, address) = (self.tx.clone(), self.wake.clone(), address.to_owned());
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = match address.to_socket_addrs() {
                    Ok(mut addrs) => addrs
                        .next()
                        .ok_or_else(|| format!("{address} has no address")),
                    Err(e) => Err(format!("cannot resolve {address}: {e}")),
                };
                let _ = tx.send((conn, result));
                if let Some(wake) = wake {
                    wake();
                }
            });
        match spawned {
            Ok(_) => None,
            Err(e) => Some(Err(format!("cannot start a resolver thread: {e}"))),
        }
    }

    /// The resolutions that finished since the last call.
    pub fn poll(&self) -> Vec<(ConnId, Result<SocketAddr, String>)> {
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_taken_as_it_is_and_a_name_is_resolved_aside_from_etc_hosts() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve(ConnId(1), "127.0.0.1:5270"),
            Some(Ok("127.0.0.1:5270".parse().unwrap()))
        );
        let (wake_tx, wake_rx) = channel();
        let mut r = Resolver::default();
        r.set_wake(std::sync::Arc::new(move || {
            let _ = wake_tx.send(());
        }));
        assert_eq!(r.resolve(ConnId(2), "localhost:5270"), None);
        wake_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let done = r.poll();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, ConnId(2));
        assert!(done[0].1.as_ref().unwrap().ip().is_loopback(), "{done:?}");
    }
}
