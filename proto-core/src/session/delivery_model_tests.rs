//! The delivery guarantees (DESIGN.md, "Delivery guarantees") checked
//! against a model with proptest: a sender writes messages with unique
//! bodies to a recipient (its bare or full JID) while the recipient's
//! connection drops, is resumed (XEP-0198) or replaced by a fresh login,
//! the resumption timeout passes, acks go both ways, and the store fails
//! chosen requests or holds its answers back. Either side may or may not
//! use stream management.
//!
//! What each test client receives is parsed at the XML level and messages
//! are told apart by their body text only (the server may add children
//! and store more than offline messages). The properties:
//!
//! 1. Nothing is silently gone: every message the sender's `<a h/>` covers
//!    (every message, for a sender without stream management) that got no
//!    error back is, once the recipient logged in one last time, sent
//!    initial presence and acknowledged everything, delivered to the
//!    recipient at least once or still in offline storage. And when the
//!    `<a h/>` arrives, each message it covers is answered with an error,
//!    stored, delivered, or kept in the recipient's detached session.
//! 2. Nothing twice to one session (a stream, and the streams that resumed
//!    it): after a resumption the server sends again only what the client
//!    did not acknowledge.
//! 3. No message is both answered with an error and delivered, and none
//!    is answered twice.
//!
//! "Delivered" is what the recipient has for sure: with stream management,
//! what it acknowledged (with `<a h/>` or the `h` of `<resume/>`), without,
//! what it received. A message a session received but never acknowledged
//! may come again in a later session, or bounce when storing it for later
//! fails: the server cannot know it arrived. At the end, with everything
//! acknowledged, nothing is left in offline storage either.
//!
//! Held store answers are given one at a time, in order (and those they
//! lead to after them), with a look at the clients after each; a login or
//! resumption answers what is held first (SCRAM needs the store). Not
//! modelled: output the runtime takes late (the fixture takes it at once),
//! several sessions of the recipient at a time, other senders, the
//! offline quota, and a server restart.
//!
//! The default is a few dozen cases; for a long run set the case count:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p proto-core --release --lib delivery_model
//! ```
//!
//! (about a minute in a debug build; proptest prints the smallest failing
//! case it finds).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::fixture;
use crate::ns;
use crate::sasl::Mechanism;
use crate::store::StoreRequest;
use crate::testing::Fixture;
use crate::xml::Element;
use crate::{ConnId, Limits, Listener};

const RECIPIENT: &str = "bob@localhost";
const RECIPIENT_FULL: &str = "bob@localhost/phone";

/// How a client uses stream management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sm {
    Off,
    On,
    Resumable,
}

/// A kind of store request to fail once.
#[derive(Debug, Clone, Copy)]
enum Failing {
    StoreOffline,
    LoadUser,
    LoadOffline,
    DeleteOffline,
    Barrier,
    /// Whatever request comes next.
    Any,
}

impl Failing {
    fn matches(self, r: &StoreRequest) -> bool {
        match self {
            Failing::StoreOffline => matches!(r, StoreRequest::StoreOffline { .. }),
            Failing::LoadUser => matches!(r, StoreRequest::LoadUser { .. }),
            Failing::LoadOffline => matches!(r, StoreRequest::LoadOffline { .. }),
            Failing::DeleteOffline => matches!(r, StoreRequest::DeleteOffline { .. }),
            Failing::Barrier => matches!(r, StoreRequest::Barrier),
            Failing::Any => true,
        }
    }
}

/// Time that passes.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Short,
    Long,
    /// Just short of the resumption timeout.
    UnderTimeout,
    /// Just past it.
    PastTimeout,
}

impl Wait {
    fn duration(self, resume_timeout: Duration) -> Duration {
        match self {
            Wait::Short => Duration::from_secs(5),
            Wait::Long => Duration::from_secs(100),
            Wait::UnderTimeout => resume_timeout - Duration::from_secs(1),
            Wait::PastTimeout => resume_timeout + Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// The sender writes a message (with a new body) to the recipient's
    /// full JID or bare JID.
    Send {
        full: bool,
    },
    /// The sender asks for an ack (`<r/>`).
    SenderAsks,
    /// The sender acknowledges what it received.
    SenderAcks,
    /// The recipient acknowledges what it received but the last `lag`.
    RecipientAcks {
        lag: u32,
    },
    /// The recipient asks for an ack.
    RecipientAsks,
    /// The recipient's TCP connection drops.
    Drop,
    /// The recipient resumes on a new connection (if it has a session to
    /// resume; a fresh session when the resumption fails).
    Resume,
    /// The recipient logs in afresh (replacing its session if it has one).
    Reconnect(Sm),
    /// The recipient ends its stream.
    Close,
    Advance(Wait),
    /// The next store request of a kind fails.
    Fail(Failing),
    /// The store holds its answers back...
    Hold,
    /// ...until now.
    Release,
}

#[derive(Debug, Clone)]
struct Case {
    sender_sm: bool,
    /// How the recipient is logged in at the start (`None`: it is not).
    recipient: Option<Sm>,
    ops: Vec<Op>,
}

/// One message of the sender.
#[derive(Debug, Default)]
struct Msg {
    /// Errors the sender got for it.
    errors: u32,
    /// Covered by an `<a h/>` to the sender.
    acked: bool,
}

/// One session of the recipient, across the streams that resumed it.
#[derive(Debug, Default)]
struct SessionLog {
    /// The messages it received.
    got: HashSet<usize>,
    /// The messages it has for sure (acknowledged, or received without
    /// stream management).
    delivered: HashSet<usize>,
}

/// A client's stream-management counters.
#[derive(Debug, Default)]
struct ClientSm {
    /// The resumption id.
    previd: Option<String>,
    /// The stanzas received since `<enable/>`, in order, with the message
    /// each one was (if one of ours).
    received: Vec<Option<usize>>,
    /// The last `h` sent.
    acked: usize,
    /// Stanzas sent since `<enable/>`, with the message each was.
    sent: Vec<Option<usize>>,
    /// The last `h` the server sent.
    server_acked: usize,
}

/// The recipient's connection.
#[derive(Debug, Clone, Copy)]
enum Link {
    Offline,
    Up(ConnId),
    /// Its connection dropped at `since`, with a session that may be resumed.
    Down {
        since: Instant,
    },
}

struct Model {
    h: Fixture,
    resume_timeout: Duration,
    sender: ConnId,
    /// The sender's counters, with stream management.
    sender_sm: Option<ClientSm>,
    link: Link,
    /// The recipient's current session: its log and counters.
    session: Option<(usize, Option<ClientSm>)>,
    msgs: Vec<Msg>,
    sessions: Vec<SessionLog>,
    holding: bool,
}

type Check = Result<(), String>;

fn body_of(el: &Element) -> Option<usize> {
    el.child(ns::CLIENT, "body")?
        .text()
        .strip_prefix('m')?
        .parse()
        .ok()
}

fn is_stanza(el: &Element) -> bool {
    el.ns == ns::CLIENT && ["message", "presence", "iq"].contains(&el.name.as_str())
}

fn is_ping(el: &Element) -> bool {
    el.name == "iq" && el.attr("type") == Some("get") && el.child(ns::PING, "ping").is_some()
}

fn pong(ping: &Element) -> String {
    format!(
        "<iq type='result' id='{}' to='{}'/>",
        ping.attr("id").unwrap_or_default(),
        ping.attr("from").unwrap_or_default()
    )
}

impl Model {
    fn new(sender_sm: bool) -> Model {
        let mut h = fixture();
        let resume_timeout = h.server.config().limits.resume_timeout;
        let sender = h.session("alice", "secret", "desk");
        let sender_sm = sender_sm.then(|| {
            h.send(sender, "<enable xmlns='urn:xmpp:sm:3'/>");
            let enabled = h.stanza(sender);
            assert!(enabled.is(ns::SM, "enabled"), "{enabled:?}");
            ClientSm::default()
        });
        Model {
            h,
            resume_timeout,
            sender,
            sender_sm,
            link: Link::Offline,
            session: None,
            msgs: Vec::new(),
            sessions: Vec::new(),
            holding: false,
        }
    }

    fn run(&mut self, case: &Case) -> Check {
        if let Some(sm) = case.recipient {
            self.login(sm)?;
        }
        for &op in &case.ops {
            self.step(op)?;
        }
        self.finish()
    }

    fn step(&mut self, op: Op) -> Check {
        match op {
            Op::Send { full } => {
                let i = self.msgs.len();
                self.msgs.push(Msg::default());
                let to = if full { RECIPIENT_FULL } else { RECIPIENT };
                self.h.send(
                    self.sender,
                    format!("<message to='{to}' type='chat' id='m{i}'><body>m{i}</body></message>"),
                );
                if let Some(sm) = &mut self.sender_sm {
                    sm.sent.push(Some(i));
                }
            }
            Op::SenderAsks if self.sender_sm.is_some() => {
                self.h.send(self.sender, "<r xmlns='urn:xmpp:sm:3'/>");
            }
            Op::SenderAcks => {
                if let Some(sm) = &self.sender_sm {
                    let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", sm.received.len());
                    self.h.send(self.sender, a);
                }
            }
            Op::RecipientAcks { lag } => self.recipient_acks(lag as usize),
            Op::RecipientAsks => {
                if let (Link::Up(c), Some((_, Some(_)))) = (self.link, &self.session) {
                    self.h.send(c, "<r xmlns='urn:xmpp:sm:3'/>");
                }
            }
            Op::Drop => {
                if let Link::Up(c) = self.link {
                    self.h.server.handle_eof(self.h.now, c);
                    self.h.pump();
                    self.lost_connection();
                }
            }
            Op::Resume => {
                if matches!(self.link, Link::Down { .. }) {
                    self.resume()?;
                }
            }
            Op::Reconnect(sm) => self.login(sm)?,
            Op::Close => {
                if let Link::Up(c) = self.link {
                    self.h.send(c, "</stream:stream>");
                    self.link = Link::Offline;
                    self.session = None;
                }
            }
            Op::Advance(w) => self.h.advance(w.duration(self.resume_timeout)),
            Op::Fail(kind) => self.h.fail_next(move |r| kind.matches(r)),
            Op::Hold => {
                self.h.hold_store();
                self.holding = true;
            }
            Op::Release => self.release()?,
            Op::SenderAsks => {}
        }
        self.observe()
    }

    /// The recipient's connection is gone: a resumable session waits for
    /// it, any other ended.
    fn lost_connection(&mut self) {
        let resumable = matches!(&self.session, Some((_, Some(sm))) if sm.previd.is_some());
        if resumable {
            self.link = Link::Down { since: self.h.now };
        } else {
            self.link = Link::Offline;
            self.session = None;
        }
    }

    fn recipient_acks(&mut self, lag: usize) {
        let (Link::Up(c), Some((log, Some(sm)))) = (self.link, &mut self.session) else {
            return;
        };
        let h = sm.received.len().saturating_sub(lag).max(sm.acked);
        for m in sm.received[sm.acked..h].iter().flatten() {
            self.sessions[*log].delivered.insert(*m);
        }
        sm.acked = h;
        self.h
            .send(c, format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"));
    }

    /// Answers the held store requests one at a time, in order (those they
    /// lead to as well), looking at what the clients got after each.
    fn release(&mut self) -> Check {
        if !self.holding {
            return Ok(());
        }
        loop {
            let held = self.h.release_store();
            self.h.hold_store();
            if held.is_empty() {
                break;
            }
            for (token, req) in held {
                let reply = self.h.reply(&req);
                self.h.server.handle_store_reply(self.h.now, token, reply);
                self.h.pump();
                self.observe()?;
            }
        }
        self.h.release_store();
        self.holding = false;
        Ok(())
    }

    /// SCRAM on a new connection of the recipient; `None` when it failed
    /// (the store did), and the connection is dropped.
    fn authenticate(&mut self) -> Option<ConnId> {
        let c = self.h.connect_client(Listener::Starttls);
        self.h.open(c);
        let r = self.h.scram(c, Mechanism::ScramSha1, "bob", "hunter2");
        if !r.is(ns::SASL, "success") {
            self.h.server.handle_eof(self.h.now, c);
            self.h.pump();
            return None;
        }
        Some(c)
    }

    /// A fresh login of the recipient: SCRAM, bind, stream management as
    /// `sm` says, initial presence. A failure of the store on the way
    /// leaves it offline (or as it was, when SCRAM failed).
    fn login(&mut self, sm: Sm) -> Check {
        self.release()?;
        let Some(c) = self.authenticate() else {
            return Ok(());
        };
        self.h.open(c);
        self.bind(c, sm)
    }

    /// Binds the recipient's resource on `c` (authenticated, stream open)
    /// and goes on as [`Model::login`].
    fn bind(&mut self, c: ConnId, sm: Sm) -> Check {
        self.h.send(
            c,
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
        );
        // The old session of the resource, if any, is replaced.
        self.link = Link::Offline;
        self.session = None;
        let got = self.h.stanzas(c);
        if got
            .iter()
            .any(|e| is_stanza(e) && e.attr("id") != Some("bind"))
        {
            return Err(format!("stanzas before the session was set up: {got:?}"));
        }
        let bound = got.iter().any(|e| e.attr("type") == Some("result"));
        if !bound || self.h.is_closed(c) {
            self.h.server.handle_eof(self.h.now, c);
            self.h.pump();
            return Ok(());
        }
        let client_sm = match sm {
            Sm::Off => None,
            Sm::On | Sm::Resumable => {
                let resume = if sm == Sm::Resumable {
                    " resume='true'"
                } else {
                    ""
                };
                self.h
                    .send(c, format!("<enable xmlns='urn:xmpp:sm:3'{resume}/>"));
                let enabled = self.h.stanza(c);
                if !enabled.is(ns::SM, "enabled") {
                    return Err(format!("enable answered with {enabled:?}"));
                }
                Some(ClientSm {
                    previd: enabled.attr("id").map(str::to_owned),
                    ..ClientSm::default()
                })
            }
        };
        self.sessions.push(SessionLog::default());
        self.session = Some((self.sessions.len() - 1, client_sm));
        self.link = Link::Up(c);
        self.recipient_sends(c, "<presence/>".to_owned());
        Ok(())
    }

    /// A stanza from the recipient's client.
    fn recipient_sends(&mut self, c: ConnId, stanza: String) {
        if let Some((_, Some(sm))) = &mut self.session {
            sm.sent.push(None);
        }
        self.h.send(c, stanza);
    }

    /// The recipient resumes its detached session on a new connection: the
    /// server must accept within the timeout and refuse after it; refused,
    /// the client binds a fresh session there.
    fn resume(&mut self) -> Check {
        let Link::Down { since } = self.link else {
            return Ok(());
        };
        let Some((log, Some(sm))) = &self.session else {
            return Err("a detached session without stream management".into());
        };
        let (log, previd, h) = (*log, sm.previd.clone(), sm.received.len());
        self.release()?;
        let Some(c) = self.authenticate() else {
            return Ok(());
        };
        self.h.open(c);
        let in_time = self.h.now.duration_since(since) < self.resume_timeout;
        self.h.send(
            c,
            format!(
                "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='{h}'/>",
                previd.unwrap_or_default()
            ),
        );
        let answer = self.h.stanza(c);
        if answer.is(ns::SM, "resumed") {
            if !in_time {
                return Err("resumed a session past the resumption timeout".into());
            }
            let Some((_, Some(sm))) = &mut self.session else {
                unreachable!("checked above");
            };
            // The h of <resume/> acknowledges everything received.
            for m in sm.received[sm.acked..].iter().flatten() {
                self.sessions[log].delivered.insert(*m);
            }
            sm.acked = h;
            let server_h = answer.attr("h").and_then(|h| h.parse::<usize>().ok());
            if server_h != Some(sm.sent.len()) {
                return Err(format!(
                    "<resumed/> counts {server_h:?} of the {} stanzas the client sent",
                    sm.sent.len()
                ));
            }
            self.link = Link::Up(c);
            return Ok(());
        }
        if !answer.is(ns::SM, "failed") {
            return Err(format!("resume answered with {answer:?}"));
        }
        if in_time {
            return Err("the resumption failed within the timeout".into());
        }
        self.link = Link::Offline;
        self.session = None;
        self.bind(c, Sm::Resumable)
    }

    /// Whether message `m` is in the recipient's offline storage.
    fn stored(&self, m: usize) -> bool {
        let limits = Limits::default();
        self.h.store.offline.iter().any(|(user, om)| {
            user == "bob"
                && crate::xml::parse_fragment(&om.stanza, &limits)
                    .is_some_and(|el| body_of(&el) == Some(m))
        })
    }

    fn delivered(&self, m: usize) -> bool {
        self.sessions.iter().any(|s| s.delivered.contains(&m))
    }

    /// Reads what the clients received and answers their pings, until
    /// nothing more comes; checks each thing as it comes.
    fn observe(&mut self) -> Check {
        loop {
            let mut progress = false;
            for el in self.h.stanzas(self.sender) {
                progress = true;
                self.sender_got(&el)?;
            }
            if self.h.is_closed(self.sender) {
                return Err("the sender's stream ended".into());
            }
            if let Link::Up(c) = self.link {
                for el in self.h.stanzas(c) {
                    progress = true;
                    self.recipient_got(c, &el)?;
                }
                if self.h.is_closed(c) {
                    return Err("the server closed the recipient's stream".into());
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn sender_got(&mut self, el: &Element) -> Check {
        if el.is(ns::SM, "a") {
            let Some(sm) = &mut self.sender_sm else {
                return Err(format!("an ack without stream management: {el:?}"));
            };
            let h = el.attr("h").and_then(|h| h.parse::<usize>().ok());
            let h = match h {
                Some(h) if h >= sm.server_acked && h <= sm.sent.len() => h,
                _ => {
                    return Err(format!(
                        "the sender sent {} stanzas, {} acknowledged before, and got {el:?}",
                        sm.sent.len(),
                        sm.server_acked
                    ))
                }
            };
            let covered: Vec<usize> = sm.sent[sm.server_acked..h]
                .iter()
                .flatten()
                .copied()
                .collect();
            sm.server_acked = h;
            for m in covered {
                self.msgs[m].acked = true;
                let kept = matches!(self.link, Link::Down { .. });
                let got = self.sessions.iter().any(|s| s.got.contains(&m));
                if self.msgs[m].errors == 0 && !self.stored(m) && !got && !kept {
                    return Err(format!(
                        "m{m} acknowledged to the sender while neither stored, delivered nor answered with an error"
                    ));
                }
            }
            return Ok(());
        }
        if !is_stanza(el) {
            return Ok(());
        }
        if let Some(sm) = &mut self.sender_sm {
            sm.received.push(None);
        }
        if is_ping(el) {
            if let Some(sm) = &mut self.sender_sm {
                sm.sent.push(None);
            }
            self.h.send(self.sender, pong(el));
            return Ok(());
        }
        if el.name == "message" && el.attr("type") == Some("error") {
            let Some(m) = body_of(el).filter(|&m| m < self.msgs.len()) else {
                return Err(format!("an error for no message of ours: {el:?}"));
            };
            self.msgs[m].errors += 1;
            if self.msgs[m].errors > 1 {
                return Err(format!("m{m} answered with an error twice"));
            }
            if self.delivered(m) {
                return Err(format!("m{m} answered with an error and delivered"));
            }
        }
        Ok(())
    }

    fn recipient_got(&mut self, c: ConnId, el: &Element) -> Check {
        if !is_stanza(el) {
            return Ok(());
        }
        let Some((log, sm)) = &mut self.session else {
            return Err(format!("a stanza without a session: {el:?}"));
        };
        let log = *log;
        let m = (el.name == "message").then(|| body_of(el)).flatten();
        if let Some(sm) = sm {
            sm.received.push(m);
        }
        if let Some(m) = m {
            if !self.sessions[log].got.insert(m) {
                return Err(format!("m{m} delivered twice to one session"));
            }
            if sm.is_none() {
                self.sessions[log].delivered.insert(m);
            }
        }
        if is_ping(el) {
            self.recipient_sends(c, pong(el));
        }
        Ok(())
    }

    /// The end: a healthy store, everything answered and acknowledged,
    /// one more login of the recipient; then what the properties say.
    fn finish(&mut self) -> Check {
        self.h.clear_failures();
        self.release()?;
        self.observe()?;
        if let Some(sm) = &self.sender_sm {
            let sent = sm.sent.len();
            self.h.send(self.sender, "<r xmlns='urn:xmpp:sm:3'/>");
            self.observe()?;
            let acked = self.sender_sm.as_ref().map_or(0, |sm| sm.server_acked);
            if acked != sent {
                return Err(format!(
                    "the last ack to the sender counts {acked} of {sent} stanzas"
                ));
            }
        }
        self.login(Sm::On)?;
        if !matches!(self.link, Link::Up(_)) {
            return Err("the last login failed with a healthy store".into());
        }
        self.observe()?;
        self.recipient_acks(0);
        self.observe()?;
        for (m, msg) in self.msgs.iter().enumerate() {
            let promised = msg.acked || self.sender_sm.is_none();
            if msg.errors == 0 && promised && !self.delivered(m) && !self.stored(m) {
                return Err(format!("m{m} silently lost"));
            }
            if msg.errors > 0 && self.delivered(m) {
                return Err(format!("m{m} answered with an error and delivered"));
            }
        }
        let left: Vec<_> = self
            .h
            .store
            .offline
            .iter()
            .map(|(_, m)| &m.stanza)
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "still stored after a session took and acknowledged everything: {left:?}"
            ));
        }
        Ok(())
    }
}

fn check(case: &Case) -> Check {
    Model::new(case.sender_sm).run(case)
}

fn sm_mode() -> impl Strategy<Value = Sm> {
    prop_oneof![1 => Just(Sm::Off), 1 => Just(Sm::On), 2 => Just(Sm::Resumable)]
}

fn op() -> impl Strategy<Value = Op> {
    let failing = prop_oneof![
        Just(Failing::StoreOffline),
        Just(Failing::LoadUser),
        Just(Failing::LoadOffline),
        Just(Failing::DeleteOffline),
        Just(Failing::Barrier),
        Just(Failing::Any),
    ];
    let wait = prop_oneof![
        Just(Wait::Short),
        Just(Wait::Long),
        Just(Wait::UnderTimeout),
        Just(Wait::PastTimeout),
    ];
    prop_oneof![
        5 => any::<bool>().prop_map(|full| Op::Send { full }),
        2 => Just(Op::SenderAsks),
        1 => Just(Op::SenderAcks),
        2 => (0u32..3).prop_map(|lag| Op::RecipientAcks { lag }),
        1 => Just(Op::RecipientAsks),
        3 => Just(Op::Drop),
        3 => Just(Op::Resume),
        1 => sm_mode().prop_map(Op::Reconnect),
        1 => Just(Op::Close),
        1 => wait.prop_map(Op::Advance),
        2 => failing.prop_map(Op::Fail),
        2 => Just(Op::Hold),
        2 => Just(Op::Release),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        proptest::option::weighted(0.8, sm_mode()),
        proptest::collection::vec(op(), 0..=20),
    )
        .prop_map(|(sender_sm, recipient, ops)| Case {
            sender_sm,
            recipient,
            ops,
        })
}

proptest! {
    // PROPTEST_CASES overrides the count (see the top of the file).
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn nothing_lost_doubled_or_bounced_and_delivered(case in case()) {
        check(&case).map_err(TestCaseError::fail)?;
    }
}

/// A message in flight to a session with stream management whose storage
/// fails after the session is gone is routed again, and waits behind a
/// load of its recipient's data that a later message started: the sender's
/// ack must wait for it still (found by the model).
#[test]
fn an_ack_waits_for_a_message_that_queued_behind_later_work() {
    let case = Case {
        sender_sm: true,
        recipient: Some(Sm::On),
        ops: vec![
            Op::Hold,
            Op::Send { full: false },
            Op::Fail(Failing::StoreOffline),
            Op::SenderAsks,
            Op::Drop,
            Op::Send { full: false },
            Op::Reconnect(Sm::Off),
        ],
    };
    check(&case).unwrap();
}
