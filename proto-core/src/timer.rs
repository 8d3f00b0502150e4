//! Time in the core: typed timers keyed by (connection, kind), the
//! server's periodic maintenance, and the wall clock the runtime reports.
//!
//! The core reads no clock: every instant comes in through a `handle_*`
//! call, and the earliest timer goes out through `poll_timeout`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::server::ConnId;

/// What a connection's timer is for. When several are due at once they
/// fire in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// A throttled answer (a failed login) may go out.
    Held,
    /// The stanza rate limit has a token for the next queued stanza.
    RateLimit,
    /// The stream is still not authenticated.
    Auth,
    /// No input for the idle timeout.
    Idle,
    /// A server ping (XEP-0199) went unanswered.
    PingTimeout,
    /// A quiet session is due for a server ping.
    Ping,
    /// A whitespace keepalive is due.
    Keepalive,
    /// A detached session (XEP-0198) was not resumed in time.
    Resume,
}

impl TimerKind {
    /// Every kind, in firing order.
    pub(crate) const ALL: [TimerKind; 8] = [
        TimerKind::Held,
        TimerKind::RateLimit,
        TimerKind::Auth,
        TimerKind::Idle,
        TimerKind::PingTimeout,
        TimerKind::Ping,
        TimerKind::Keepalive,
        TimerKind::Resume,
    ];
}

/// The deadlines of one connection, one per kind.
#[derive(Debug, Default)]
pub(crate) struct ConnTimers {
    at: [Option<Instant>; TimerKind::ALL.len()],
    /// The instant under which the connection is in the queue.
    queued: Option<Instant>,
}

impl ConnTimers {
    /// Sets (or clears) the deadline of `kind`; takes effect in the queue
    /// with [`Timers::schedule`].
    pub(crate) fn set(&mut self, kind: TimerKind, at: Option<Instant>) {
        self.at[kind as usize] = at;
    }

    /// Clears every deadline.
    pub(crate) fn clear(&mut self) {
        self.at = Default::default();
    }

    /// Clears `kind` if it is due at `now`; returns whether it was.
    pub(crate) fn take_due(&mut self, kind: TimerKind, now: Instant) -> bool {
        let due = self.at[kind as usize].is_some_and(|at| at <= now);
        if due {
            self.at[kind as usize] = None;
        }
        due
    }

    /// The connection was taken out of the queue by [`Timers::pop_due`].
    pub(crate) fn unqueued(&mut self) {
        self.queued = None;
    }

    fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

/// The queue of connections by their next deadline, and the server's own
/// maintenance timer.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    queue: BTreeSet<(Instant, ConnId)>,
    /// Next run of periodic maintenance (offline expiry, pruning).
    maintenance: Option<Instant>,
}

/// How often periodic maintenance (offline expiry) runs.
pub(crate) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

impl Timers {
    /// Puts `id` in the queue under its earliest deadline.
    pub(crate) fn schedule(&mut self, id: ConnId, t: &mut ConnTimers) {
        let next = t.next();
        if t.queued != next {
            if let Some(old) = t.queued.take() {
                self.queue.remove(&(old, id));
            }
            if let Some(at) = next {
                self.queue.insert((at, id));
            }
            t.queued = next;
        }
    }

    /// Takes `id` out of the queue (the connection ends).
    pub(crate) fn remove(&mut self, id: ConnId, t: &ConnTimers) {
        if let Some(at) = t.queued {
            self.queue.remove(&(at, id));
        }
    }

    /// The next connection with a deadline at or before `now`, taken out of
    /// the queue (tell its [`ConnTimers`] with `unqueued`).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<ConnId> {
        let &(at, id) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.pop_first();
        Some(id)
    }

    /// Maintenance starts one interval after `now`.
    pub(crate) fn start_maintenance(&mut self, now: Instant) {
        self.maintenance = Some(now + MAINTENANCE_INTERVAL);
    }

    /// Whether maintenance is due at `now`; if so it is rescheduled.
    pub(crate) fn maintenance_due(&mut self, now: Instant) -> bool {
        let due = self.maintenance.is_some_and(|m| m <= now);
        if due {
            self.start_maintenance(now);
        }
        due
    }

    /// The earliest deadline of all.
    pub(crate) fn next(&self) -> Option<Instant> {
        let conn = self.queue.first().map(|&(at, _)| at);
        match (conn, self.maintenance) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The wall clock, as the runtime reports it, and the core's latest `now`.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// An instant and the Unix time (seconds) it corresponds to.
    wall: Option<(Instant, u64)>,
    started: Option<Instant>,
    /// The latest `now` seen.
    last_now: Option<Instant>,
}

impl Clock {
    /// Notes `now` (time never goes back).
    pub(crate) fn tick(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |l| l.max(now)));
    }

    /// The latest `now` seen.
    pub(crate) fn now(&self) -> Option<Instant> {
        self.last_now
    }

    /// Records a wall-clock reading; returns whether it was the first.
    pub(crate) fn set_wall(&mut self, now: Instant, unix_secs: u64) -> bool {
        self.wall = Some((now, unix_secs));
        let first = self.started.is_none();
        if first {
            self.started = Some(now);
        }
        first
    }

    /// Current Unix time, from the last wall-clock reading.
    pub(crate) fn unix_now(&self) -> Option<u64> {
        let (at, unix) = self.wall?;
        Some(unix + self.last_now?.saturating_duration_since(at).as_secs())
    }

    /// Seconds since the first wall-clock reading.
    pub(crate) fn uptime(&self) -> Option<u64> {
        Some(
            self.last_now?
                .saturating_duration_since(self.started?)
                .as_secs(),
        )
    }
}

/// RFC 3339 UTC time for XEP-0082 stamps.
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Seconds since the Unix epoch of an XEP-0082 DateTime
/// (`CCYY-MM-DDThh:mm:ss[.sss](Z|+hh:mm|-hh:mm)`); fractions of a second
/// are dropped. `None` for anything else, or a time before 1970.
pub(crate) fn parse_datetime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: core::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        core::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let (oh, om) = (v(*h1, *h2), v(*m1, *m2));
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since 1970-01-01 (the inverse of `rfc3339`'s civil date).
    let (yy, mp) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy.rem_euclid(400);
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_back() {
        for t in [0, 951_782_400, 1_798_761_600 + 3661, 4_102_444_799] {
            assert_eq!(parse_datetime(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_datetime("2000-02-29T01:00:00.123+01:00"),
            Some(951_782_400)
        );
        assert_eq!(parse_datetime("1970-01-01T00:00:00-00:30"), Some(1800));
        for bad in [
            "",
            "2000-02-30T00:00:00Z",
            "2001-02-29T00:00:00Z",
            "2000-01-01T24:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01 00:00:00Z",
            "2000-01-01T00:00:00.Z",
            "2000-01-01T00:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "+000-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_600 + 3661), "2027-01-01T01:01:01Z");
    }
}
