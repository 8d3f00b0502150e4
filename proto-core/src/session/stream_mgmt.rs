//! Stream management (XEP-0198, `urn:xmpp:sm:3`): acknowledgements both
//! ways and resumption of a session on a new connection.
//!
//! - **Our acks.** `h` counts the client's stanzas the session manager has
//!   handled. An `<a/>` goes out only once what they asked of the store is
//!   durable: when store requests are in flight, the answer waits for a
//!   [`StoreRequest::Barrier`] behind them, and for another behind the
//!   requests their answers led to (a message that waited for its
//!   recipient's data is stored only once the data is in).
//! - **Their acks.** Every stanza written to the client after `<enable/>`
//!   is kept (its bytes) until the client's `<a h/>` covers it; a message
//!   from offline storage is deleted there only then. The server asks with
//!   `<r/>` every [`ACK_EVERY`] stanzas. What is kept is bounded
//!   (four output budgets); past it the stream ends and what was kept goes
//!   where RFC 6121 section 8.5 sends it.
//! - **Resumption.** A session that enabled it and loses its connection
//!   (the peer went away, a read failed, it stopped answering pings) is
//!   detached, not ended: it keeps its place, stanzas to it are kept as
//!   above, and `<resume previd h/>` on a new authenticated connection of
//!   the same account within [`Limits::resume_timeout`](crate::Limits) moves
//!   it there and sends again what the client had not acknowledged. After
//!   the timeout, or when the client ends its stream itself, the session
//!   ends and what it kept is redelivered (messages to other resources or
//!   offline storage, iq requests answered with an error): never lost, and
//!   never twice to one session.

use std::collections::VecDeque;
use std::time::Instant;

use super::outbox::Handed;
use super::username;
use crate::address::Bare;
use crate::effects::Pending;
use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::store::{StoreRequest, StoreToken};
use crate::timer::TimerKind;
use crate::xml::Element;

/// The server asks for an ack (`<r/>`) once this many stanzas wait for one.
pub(crate) const ACK_EVERY: usize = 8;

/// One stanza written to the client and not acknowledged yet.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// What it was, for redelivery (`None`: presence and the like, which
    /// are not redelivered).
    pub(crate) what: Option<Handed>,
    pub(crate) bytes: Vec<u8>,
}

/// A session's stream-management state.
#[derive(Debug)]
pub(crate) struct StreamMgmt {
    /// The resumption id, when the session may be resumed.
    pub(crate) id: Option<String>,
    /// The client's stanzas handled (our `h`).
    pub(crate) handled: u32,
    /// The last `h` the client sent.
    acked: u32,
    /// Stanzas sent and not acknowledged, oldest first.
    pub(crate) unacked: VecDeque<Unacked>,
    unacked_bytes: usize,
    /// An `<r/>` went out and its answer has not come.
    asked: bool,
}

impl StreamMgmt {
    /// Takes `h` from the client: how many of the unacknowledged stanzas it
    /// has now; their offline ids go to `offline`, the keys of those stored
    /// in flight to `in_flight`. `Err` when `h` counts more than was sent.
    fn ack(&mut self, h: u32, offline: &mut Vec<i64>, in_flight: &mut Vec<u64>) -> Result<(), u32> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(self.acked.wrapping_add(self.unacked.len() as u32));
        }
        for u in self.unacked.drain(..newly) {
            self.unacked_bytes -= u.bytes.len();
            match u.what {
                Some(Handed::Offline(id)) => offline.push(id),
                Some(Handed::InFlight(key)) => in_flight.push(key),
                _ => {}
            }
        }
        self.acked = h;
        self.asked = false;
        Ok(())
    }
}

impl StreamMgmt {
    /// The message in flight with `key` was not stored after all: if the
    /// session ends before it is acknowledged, it is redelivered.
    pub(crate) fn not_stored(&mut self, key: u64) {
        for u in &mut self.unacked {
            if u.what == Some(Handed::InFlight(key)) {
                u.what = Some(Handed::Message);
            }
        }
    }
}

fn sm(name: &str) -> Element {
    Element::new(ns::SM, name)
}

impl Server {
    /// A stream-management element (`enable`, `r`, `a`) from a bound session.
    pub(crate) fn on_sm_element(&mut self, conn: ConnId, el: &Element) {
        match el.name.as_str() {
            "enable" => self.sm_enable(conn, el),
            "r" => self.sm_request(conn),
            "a" => self.sm_ack(conn, el),
            _ => self.sm_failed(conn, "feature-not-implemented", None),
        }
    }

    fn sm_failed(&mut self, conn: ConnId, condition: &str, h: Option<u32>) {
        let mut failed = sm("failed").with_child(Element::new(ns::STANZAS, condition));
        if let Some(h) = h {
            failed.set_attr("h", Some(&h.to_string()));
        }
        self.send_element(conn, &failed, ns::CLIENT);
    }

    fn sm_enable(&mut self, conn: ConnId, el: &Element) {
        let timeout = self.config.limits.resume_timeout;
        let resume = matches!(el.attr("resume"), Some("true" | "1")) && !timeout.is_zero();
        let id = resume.then(|| self.random_hex(16));
        let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) else {
            return;
        };
        if s.sm.is_some() {
            return self.sm_failed(conn, "unexpected-request", None);
        }
        s.sm = Some(Box::new(StreamMgmt {
            id: id.clone(),
            handled: 0,
            acked: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            asked: false,
        }));
        let mut enabled = sm("enabled");
        if let Some(id) = &id {
            self.sm.resumable.insert(id.clone(), conn);
            enabled.set_attr("id", Some(id));
            enabled.set_attr("resume", Some("true"));
            enabled.set_attr("max", Some(&timeout.as_secs().to_string()));
        }
        self.send_element(conn, &enabled, ns::CLIENT);
    }

    /// `<r/>`: our `h`, once what the handled stanzas stored is durable.
    fn sm_request(&mut self, conn: ConnId) {
        let Some(h) = self.sm_state(conn).map(|sm| sm.handled) else {
            return self.sm_failed(conn, "unexpected-request", None);
        };
        self.ack_when_durable(conn, h);
    }

    /// Sends `<a h/>` on `conn` (a client's or a server's stream) at once,
    /// or behind a barrier when store requests are in flight.
    pub(crate) fn ack_when_durable(&mut self, conn: ConnId, h: u32) {
        if self.fx.in_flight() == 0 {
            self.send_ack(conn, h);
        } else {
            let asked = self.fx.next_token();
            self.fx
                .store(Pending::Ack { conn, h, asked }, StoreRequest::Barrier);
        }
    }

    /// The barrier of an `<r/>` is answered: the requests before it are.
    /// Those their answers led to (say, storing a message that waited for
    /// its recipient's data) may still be in flight; then the ack waits
    /// for them behind another barrier.
    pub(crate) fn barrier_passed(&mut self, conn: ConnId, h: u32, asked: StoreToken) {
        if self.fx.follow_up_in_flight(asked) {
            self.fx
                .store(Pending::Ack { conn, h, asked }, StoreRequest::Barrier);
        } else {
            self.send_ack(conn, h);
        }
    }

    /// Sends `<a h/>` (the store made everything before it durable).
    pub(crate) fn send_ack(&mut self, conn: ConnId, h: u32) {
        if self.s2s.owns(conn) {
            return self.s2s_send_ack(conn, h);
        }
        let a = sm("a").with_attr("h", &h.to_string());
        self.send_element(conn, &a, ns::CLIENT);
    }

    /// `<a h/>` from the client.
    fn sm_ack(&mut self, conn: ConnId, el: &Element) {
        let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
            return self.fail(conn, XE::InvalidXml, Some("<a/> needs a number h"));
        };
        self.apply_ack(conn, h);
    }

    /// The client has the first `h` stanzas: forget them, and delete the
    /// offline messages among them from storage.
    fn apply_ack(&mut self, conn: ConnId, h: u32) -> bool {
        let (mut offline, mut in_flight) = (Vec::new(), Vec::new());
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(s) = c.session.as_mut() else {
            return false;
        };
        let user = s.jid.bare();
        let Some(sm) = s.sm.as_mut() else {
            return false;
        };
        if let Err(sent) = sm.ack(h, &mut offline, &mut in_flight) {
            log::info!("conn {}: acknowledged {h} stanzas of {sent}", conn.0);
            self.fail(
                conn,
                XE::UndefinedCondition,
                Some("h counts more stanzas than were sent"),
            );
            return false;
        }
        if !offline.is_empty() {
            self.fx.store(
                Pending::Ignore("they stay stored and are delivered again at the next login"),
                StoreRequest::DeleteOffline {
                    username: username(&user),
                    ids: offline,
                },
            );
        }
        if !in_flight.is_empty() {
            self.fx.store(
                Pending::Ignore("they stay stored and are delivered again at the next login"),
                StoreRequest::DeleteInFlight {
                    username: username(&user),
                    keys: in_flight,
                },
            );
        }
        true
    }

    fn sm_state(&self, conn: ConnId) -> Option<&StreamMgmt> {
        self.conns.get(&conn)?.session.as_ref()?.sm.as_deref()
    }

    /// A stanza is about to be written to `conn`'s client: with stream
    /// management on, it is kept until acknowledged. Returns whether to ask
    /// for an ack after it (`<r/>`). Past the bound of what may be kept,
    /// the stream (or the detached session) ends, and what was kept,
    /// this stanza included, is redelivered.
    pub(crate) fn sm_keep(&mut self, conn: ConnId, bytes: &[u8], what: Option<Handed>) -> bool {
        let bound = self.config.limits.output_budget.saturating_mul(4);
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let detached = c.detached;
        let Some(sm) = c.session.as_mut().and_then(|s| s.sm.as_mut()) else {
            return false;
        };
        sm.unacked.push_back(Unacked {
            what,
            bytes: bytes.to_vec(),
        });
        sm.unacked_bytes += bytes.len();
        if sm.unacked_bytes > bound {
            log::info!("conn {}: too many unacknowledged stanzas, closing", conn.0);
            if detached {
                self.close(conn, "too many stanzas waited for a resumption");
            } else {
                self.fail(
                    conn,
                    XE::PolicyViolation,
                    Some("too many unacknowledged stanzas"),
                );
            }
            return false;
        }
        let ask = !detached && !sm.asked && sm.unacked.len() >= ACK_EVERY;
        if ask {
            sm.asked = true;
        }
        ask
    }

    /// Whether losing `conn` detaches its session instead of ending it.
    pub(crate) fn resumable(&self, conn: ConnId) -> bool {
        self.sm_state(conn).is_some_and(|sm| sm.id.is_some())
    }

    /// The connection of a resumable session is lost: the runtime closes
    /// the socket, the session stays where it is (stanzas to it are kept)
    /// until it is resumed or [`Limits::resume_timeout`](crate::Limits) passes.
    pub(crate) fn detach(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let timeout = self.config.limits.resume_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Not taken by the runtime: kept as unacknowledged already.
        c.stream.withdraw(u64::MAX);
        if let Some(s) = c.session.as_mut() {
            s.outbox = Default::default();
        }
        c.detached = true;
        self.detached += 1;
        c.timers.clear();
        c.timers.set(TimerKind::Resume, Some(now + timeout));
        let peer = c.peer;
        log::info!(
            "detach: conn={} address={peer} jid={} reason={reason} resumable_for={}s",
            conn.0,
            c.who(&self.domain),
            timeout.as_secs()
        );
        self.guard.release(peer);
        self.reschedule(conn);
        self.fx.push(crate::Event::Close(conn));
    }

    /// `<resume previd h/>` on `conn`, authenticated and not bound. The
    /// `<resumed h/>` it is answered with acknowledges what the old
    /// connection's stanzas asked of the store, so, as an `<a/>` does, it
    /// waits until that is durable.
    pub(crate) fn sm_resume(&mut self, now: Instant, conn: ConnId, el: &Element) {
        if self.fx.in_flight() == 0 {
            return self.finish_resume(now, conn, el);
        }
        let asked = self.fx.next_token();
        self.fx.store(
            Pending::Resume {
                conn,
                el: el.clone(),
                asked,
            },
            StoreRequest::Barrier,
        );
    }

    /// The barrier of a `<resume/>` is answered (see [`Server::barrier_passed`]).
    pub(crate) fn resume_barrier_passed(
        &mut self,
        now: Instant,
        conn: ConnId,
        el: Element,
        asked: StoreToken,
    ) {
        if self.fx.follow_up_in_flight(asked) {
            self.fx
                .store(Pending::Resume { conn, el, asked }, StoreRequest::Barrier);
        } else if self.conns.contains_key(&conn) {
            self.finish_resume(now, conn, &el);
        }
    }

    fn finish_resume(&mut self, now: Instant, conn: ConnId, el: &Element) {
        let user = self.conn_user(conn);
        let previd = el.attr("previd").unwrap_or_default();
        let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
        let old = self.sm.resumable.get(previd).copied().filter(|old| {
            self.conns
                .get(old)
                .and_then(|c| c.session.as_ref())
                .is_some_and(|s| s.jid.node().map(|n| n.as_str()) == user.as_deref())
        });
        let (Some(old), Some(h)) = (old, h) else {
            return self.sm_failed(conn, "item-not-found", None);
        };
        if !self.apply_ack(old, h) {
            return self.sm_failed(conn, "item-not-found", None);
        }
        // The session leaves its old connection, which ends without it.
        let Some(mut session) = self.conns.get_mut(&old).and_then(|c| c.session.take()) else {
            return self.sm_failed(conn, "item-not-found", None);
        };
        let old_detached = self.conns.get(&old).is_some_and(|c| c.detached);
        if old_detached {
            if let Some(c) = self.conns.remove(&old) {
                self.timers.remove(old, &c.timers);
                self.detached -= 1;
            }
        } else {
            self.fail(old, XE::Conflict, Some("the session was resumed elsewhere"));
        }
        let bare = session.jid.bare();
        if let Some(list) = self.sm.sessions.get_mut(&bare) {
            for c in list.iter_mut().filter(|c| **c == old) {
                *c = conn;
            }
        }
        let (previd, handled, resend) = {
            let sm = session.sm.as_mut().expect("resumable");
            let resend: Vec<Vec<u8>> = sm.unacked.iter().map(|u| u.bytes.clone()).collect();
            (sm.id.clone().unwrap_or_default(), sm.handled, resend)
        };
        self.sm.resumable.insert(previd.clone(), conn);
        log::info!(
            "resume: conn={conn} jid={} from conn={old} resent={}",
            session.jid,
            resend.len(),
            conn = conn.0,
            old = old.0
        );
        let ping = self.config.limits.ping_interval;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.session = Some(session);
        c.timers.set(TimerKind::Ping, Some(now + ping));
        self.reschedule(conn);
        let resumed = sm("resumed")
            .with_attr("previd", &previd)
            .with_attr("h", &handled.to_string());
        self.send_element(conn, &resumed, ns::CLIENT);
        // Sent again, in order, under the numbers the client knows them by.
        for bytes in resend {
            self.send_raw(conn, &bytes);
        }
    }
}
