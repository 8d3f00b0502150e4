//! Limits that protect the server from its peers: connections per address
//! and in total, failed logins (throttling, then lock-out of an account at
//! an address, and of an address only at a much higher count), and the
//! stanza rate limit of a session.

use core::net::IpAddr;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::StreamErrorCondition as XE;
use crate::server::{Keyed, PeerMap};
use crate::xml::Element;
use crate::Limits;

/// States kept per kind (addresses, accounts, account at an address)
/// before expired ones are pruned.
const MAX_STATES: usize = 4096;

/// Failed logins one address may have over all accounts, in multiples of
/// the per-(account, address) limit, before logins from it are refused:
/// behind carrier-grade NAT thousands of users share an address, so one of
/// them guessing must not lock the others out.
pub(crate) const ADDRESS_FACTOR: u32 = 20;

/// Failed logins an account may have from all addresses, in multiples of
/// the per-(account, address) limit, before its failure answers slow down
/// (never refused: its owner's right password still works).
pub(crate) const ACCOUNT_FACTOR: u32 = 5;

/// Failures counted in a window that starts with the first one.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    failures: u32,
    start: Option<Instant>,
}

impl Window {
    fn live(&self, now: Instant, window: Duration) -> bool {
        self.start.is_some_and(|s| now < s + window)
    }

    fn count(&mut self, now: Instant, window: Duration) -> u32 {
        if !self.live(now, window) {
            *self = Window {
                failures: 0,
                start: Some(now),
            };
        }
        self.failures += 1;
        self.failures
    }

    fn reached(&self, limit: u32, now: Instant, window: Duration) -> bool {
        limit > 0 && self.failures >= limit && self.live(now, window)
    }
}

/// Per-address bookkeeping for the connection and login-failure limits.
#[derive(Debug, Default)]
struct IpState {
    conns: usize,
    failures: Window,
    /// Verification codes asked for (Kontalk registration).
    codes: Window,
}

/// Why logins are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lockout {
    /// This account, from this address.
    Account,
    /// Every account, from this address.
    Address,
}

/// A failed login, counted: how long its answer is held back, and the
/// lockout it just reached, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    pub(crate) delay: Option<Duration>,
    pub(crate) lockout: Option<(Lockout, u32)>,
}

/// The per-address and per-account limits.
#[derive(Debug)]
pub(crate) struct Guard {
    per_ip: PeerMap<IpAddr, IpState>,
    per_account: PeerMap<String, Window>,
    per_pair: PeerMap<(IpAddr, String), Window>,
}

impl Guard {
    pub(crate) fn new(keyed: Keyed) -> Guard {
        Guard {
            per_ip: PeerMap::with_hasher(keyed.clone()),
            per_account: PeerMap::with_hasher(keyed.clone()),
            per_pair: PeerMap::with_hasher(keyed),
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
            if ip.conns == 0 && ip.failures.failures == 0 {
                self.per_ip.remove(&peer);
            }
        }
    }

    /// Counts a failed login from `peer` for `account` (when the client
    /// named a valid one): against the address, the account, and the
    /// account at that address.
    pub(crate) fn count_failure(
        &mut self,
        peer: IpAddr,
        account: Option<&str>,
        now: Instant,
        limits: &Limits,
    ) -> Counted {
        if self.per_ip.len() >= MAX_STATES
            || self.per_account.len() >= MAX_STATES
            || self.per_pair.len() >= MAX_STATES
        {
            self.prune(now, limits);
        }
        let window = limits.auth_failure_window;
        let max = limits.max_auth_failures_per_ip;
        let at_ip = self
            .per_ip
            .entry(peer)
            .or_default()
            .failures
            .count(now, window);
        let mut delay = throttle(at_ip, max.saturating_mul(ADDRESS_FACTOR));
        let mut lockout = (at_ip == max.saturating_mul(ADDRESS_FACTOR) && max > 0)
            .then_some((Lockout::Address, at_ip));
        // Accounts are named by the client: past the bound (all of them
        // live), new names are counted at the address only.
        let room = |len: usize, known: bool| known || len < MAX_STATES;
        let account = account.filter(|a| {
            room(self.per_account.len(), self.per_account.contains_key(*a))
                && room(
                    self.per_pair.len(),
                    self.per_pair.contains_key(&(peer, (*a).to_owned())),
                )
        });
        if let Some(account) = account {
            let of_account = self
                .per_account
                .entry(account.to_owned())
                .or_default()
                .count(now, window);
            let pair = self
                .per_pair
                .entry((peer, account.to_owned()))
                .or_default()
                .count(now, window);
            delay = delay
                .max(throttle(of_account, max.saturating_mul(ACCOUNT_FACTOR)))
                .max(throttle(pair, max));
            if lockout.is_none() && pair == max && max > 0 {
                lockout = Some((Lockout::Account, pair));
            }
        }
        Counted { delay, lockout }
    }

    /// Counts a verification code asked for from `peer` (Kontalk phone
    /// registration): whether it is within `limit` per `window` (0: no limit).
    pub(crate) fn admit_code_request(
        &mut self,
        peer: IpAddr,
        now: Instant,
        window: Duration,
        limit: u32,
    ) -> bool {
        if limit == 0 {
            return true;
        }
        if self.per_ip.len() >= MAX_STATES && !self.per_ip.contains_key(&peer) {
            self.per_ip
                .retain(|_, ip| ip.conns > 0 || ip.codes.live(now, window));
        }
        let ip = self.per_ip.entry(peer).or_default();
        if ip.codes.reached(limit, now, window) {
            return false;
        }
        ip.codes.count(now, window);
        true
    }

    /// Whether logins from `peer` (for `account`, once the client named
    /// it) are refused for now, and why.
    pub(crate) fn locked_out(
        &self,
        peer: IpAddr,
        account: Option<&str>,
        now: Instant,
        limits: &Limits,
    ) -> Option<Lockout> {
        let window = limits.auth_failure_window;
        let max = limits.max_auth_failures_per_ip;
        if self.per_ip.get(&peer).is_some_and(|ip| {
            ip.failures
                .reached(max.saturating_mul(ADDRESS_FACTOR), now, window)
        }) {
            return Some(Lockout::Address);
        }
        let account = account?;
        self.per_pair
            .get(&(peer, account.to_owned()))
            .is_some_and(|w| w.reached(max, now, window))
            .then_some(Lockout::Account)
    }

    /// Forgets what expired: addresses without connections whose failure
    /// window is over, and accounts' windows that are over.
    pub(crate) fn prune(&mut self, now: Instant, limits: &Limits) {
        let window = limits.auth_failure_window;
        // A code window is the registration's, as long as the login window.
        self.per_ip.retain(|_, ip| {
            ip.conns > 0 || ip.failures.live(now, window) || ip.codes.live(now, window)
        });
        self.per_account.retain(|_, w| w.live(now, window));
        self.per_pair.retain(|_, w| w.live(now, window));
    }

    /// Forgets the failed logins of `address` (every address when `None`),
    /// at the address and for each account at it: the lockouts end at once.
    /// Returns, per address, the failures it had and whether logins from it
    /// (for any account) were refused.
    pub(crate) fn clear_failures(
        &mut self,
        address: Option<IpAddr>,
        now: Instant,
        limits: &Limits,
    ) -> Vec<(IpAddr, u32, bool)> {
        let window = limits.auth_failure_window;
        let max = limits.max_auth_failures_per_ip;
        let mut cleared: Vec<(IpAddr, u32, bool)> = Vec::new();
        let wanted = |ip: &IpAddr| address.is_none_or(|a| a == *ip);
        self.per_ip.retain(|ip, state| {
            if !wanted(ip) || state.failures.failures == 0 {
                return true;
            }
            let locked = state
                .failures
                .reached(max.saturating_mul(ADDRESS_FACTOR), now, window);
            cleared.push((*ip, state.failures.failures, locked));
            state.failures = Window::default();
            state.conns > 0
        });
        self.per_pair.retain(|(ip, _), w| {
            if !wanted(ip) {
                return true;
            }
            if w.reached(max, now, window) {
                match cleared.iter_mut().find(|c| c.0 == *ip) {
                    Some(c) => c.2 = true,
                    None => cleared.push((*ip, w.failures, true)),
                }
            }
            false
        });
        cleared
    }

    /// Addresses with state (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// How long the answer to the `failures`th failed login in a window is
/// held back, for a limit of `limit`: past half of it, later and later (at
/// most 5 s).
fn throttle(failures: u32, limit: u32) -> Option<Duration> {
    let half = limit / 2;
    (limit > 0 && failures > half).then(|| Duration::from_secs(u64::from((failures - half).min(5))))
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
