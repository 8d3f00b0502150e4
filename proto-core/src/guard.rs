//! Limits that protect the server from its peers: connections per address
//! and in total, failed logins per address (throttling, then lock-out), and
//! the stanza rate limit of a session.

use core::net::IpAddr;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::StreamErrorCondition as XE;
use crate::server::{Keyed, PeerMap};
use crate::xml::Element;
use crate::Limits;

/// Per-address states kept before expired ones are pruned.
const MAX_IP_STATES: usize = 4096;

/// Per-address bookkeeping for the connection and login-failure limits.
#[derive(Debug, Default)]
struct IpState {
    conns: usize,
    failures: u32,
    window_start: Option<Instant>,
}

/// The per-address limits.
#[derive(Debug)]
pub(crate) struct Guard {
    per_ip: PeerMap<IpAddr, IpState>,
}

impl Guard {
    pub(crate) fn new(keyed: Keyed) -> Guard {
        Guard {
            per_ip: PeerMap::with_hasher(keyed),
        }
    }

    /// Counts a new connection from `peer`; `open` connections were open
    /// before it. Refuses it (with the stream error to end it with) when a
    /// limit is reached.
    pub(crate) fn admit(
        &mut self,
        peer: IpAddr,
        open: usize,
        limits: &Limits,
    ) -> Result<(), (XE, &'static str)> {
        let from_peer = {
            let ip = self.per_ip.entry(peer).or_default();
            ip.conns += 1;
            ip.conns
        };
        if open >= limits.max_connections {
            log::warn!(
                "connection limit ({}) reached: refusing {peer}",
                limits.max_connections
            );
            Err((
                XE::ResourceConstraint,
                "the server is full, try again later",
            ))
        } else if limits.max_connections_per_ip > 0 && from_peer > limits.max_connections_per_ip {
            log::info!("too many connections from {peer}");
            Err((
                XE::PolicyViolation,
                "too many connections from your address",
            ))
        } else {
            Ok(())
        }
    }

    /// A connection from `peer` ended.
    pub(crate) fn release(&mut self, peer: IpAddr) {
        if let Some(ip) = self.per_ip.get_mut(&peer) {
            ip.conns = ip.conns.saturating_sub(1);
            if ip.conns == 0 && ip.failures == 0 {
                self.per_ip.remove(&peer);
            }
        }
    }

    /// Counts a failed login from `peer`; returns the failures in the
    /// current window.
    pub(crate) fn count_failure(&mut self, peer: IpAddr, now: Instant, limits: &Limits) -> u32 {
        if self.per_ip.len() >= MAX_IP_STATES {
            self.prune(now, limits);
        }
        let ip = self.per_ip.entry(peer).or_default();
        if ip
            .window_start
            .is_none_or(|s| now >= s + limits.auth_failure_window)
        {
            ip.window_start = Some(now);
            ip.failures = 0;
        }
        ip.failures += 1;
        ip.failures
    }

    /// How long the answer to the `failures`th failed login in a window is
    /// held back: past half of the allowed failures, later and later.
    pub(crate) fn throttle(failures: u32, limits: &Limits) -> Option<Duration> {
        let half = limits.max_auth_failures_per_ip / 2;
        (failures > half).then(|| Duration::from_secs(u64::from((failures - half).min(5))))
    }

    /// Forgets addresses without connections whose failure window is over.
    pub(crate) fn prune(&mut self, now: Instant, limits: &Limits) {
        let window = limits.auth_failure_window;
        self.per_ip
            .retain(|_, ip| ip.conns > 0 || ip.window_start.is_some_and(|s| now < s + window));
    }

    /// Whether logins from `peer` are refused for now.
    pub(crate) fn locked_out(&self, peer: IpAddr, now: Instant, limits: &Limits) -> bool {
        self.per_ip.get(&peer).is_some_and(|ip| {
            ip.failures >= limits.max_auth_failures_per_ip
                && ip
                    .window_start
                    .is_some_and(|s| now < s + limits.auth_failure_window)
        })
    }

    /// Forgets the failed logins of `address` (every address when `None`);
    /// returns each address that had some, with its failures and the start
    /// of its window.
    pub(crate) fn clear_failures(
        &mut self,
        address: Option<IpAddr>,
    ) -> Vec<(IpAddr, u32, Option<Instant>)> {
        let mut cleared = Vec::new();
        self.per_ip.retain(|ip, state| {
            if address.is_some_and(|a| a != *ip) || state.failures == 0 {
                return true;
            }
            cleared.push((*ip, state.failures, state.window_start));
            state.failures = 0;
            state.window_start = None;
            state.conns > 0
        });
        cleared
    }

    /// Addresses with state (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// Stanzas that may wait beyond a burst: what one read of a connection can
/// bring while the rate limit holds its backlog.
pub(crate) const BACKLOG_SLACK: usize = 2048;

/// The stanza rate limit of one session: a token bucket with a bounded
/// backlog of stanzas that wait for tokens.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    at: Instant,
    backlog: VecDeque<Element>,
}

/// What the rate limit says of a new stanza.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Handle it now.
    Now(Element),
    /// It waits in the backlog.
    Queued,
    /// The backlog is past its bound: more stanzas came in one read than
    /// a burst and [`BACKLOG_SLACK`] (the connection is not read while
    /// stanzas wait, so only a caller that ignores `wants_read` gets here).
    Overflow,
}

impl RateLimit {
    /// A full bucket for `rate` stanzas per second.
    pub(crate) fn new(now: Instant, rate: u32) -> RateLimit {
        RateLimit {
            tokens: f64::from(rate) * 2.0,
            at: now,
            backlog: VecDeque::new(),
        }
    }

    fn refill(&mut self, now: Instant, rate: u32) {
        let burst = f64::from(rate) * 2.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(burst);
        self.at = now;
    }

    /// A stanza arrived (`rate` > 0).
    pub(crate) fn admit(&mut self, now: Instant, rate: u32, el: Element) -> Admit {
        self.refill(now, rate);
        if self.backlog.is_empty() && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Now(el);
        }
        if self.backlog.len() >= 2 * rate as usize + BACKLOG_SLACK {
            return Admit::Overflow;
        }
        self.backlog.push_back(el);
        Admit::Queued
    }

    /// The next queued stanza whose token has come.
    pub(crate) fn next_ready(&mut self, now: Instant, rate: u32) -> Option<Element> {
        self.refill(now, rate);
        if self.tokens < 1.0 || self.backlog.is_empty() {
            return None;
        }
        self.tokens -= 1.0;
        self.backlog.pop_front()
    }

    /// Stanzas wait for tokens.
    pub(crate) fn waiting(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// When the next queued stanza gets its token (`None`: nothing queued).
    pub(crate) fn deadline(&self, rate: u32) -> Option<Instant> {
        if self.backlog.is_empty() || rate == 0 {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(self.at + Duration::from_secs_f64(missing / f64::from(rate)))
    }
}
