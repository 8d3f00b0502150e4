//! What the core asks of its runtime: the [`Event`]s drained with
//! [`Server::poll_event`](crate::Server::poll_event), and the storage
//! requests in flight with what waits on each answer.

use std::collections::VecDeque;

use jid::BareJid;

use crate::server::{ConnId, IdMap};
use crate::session::Deferred;
use crate::store::{StoreRequest, StoreToken};
use crate::xml::Element;

/// Output of the core, drained with [`Server::poll_event`](crate::Server::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection has bytes to send: call
    /// [`Server::poll_transmit`](crate::Server::poll_transmit).
    Transmit(ConnId),
    /// Close the connection's socket after writing what it has to send.
    /// The core has forgotten the connection.
    Close(ConnId),
    /// The connection may be read again: [`Server::wants_read`](crate::Server::wants_read)
    /// said `false` because its stanzas waited for the rate limit, and they
    /// have been handled. (Output that drains is seen by the runtime itself.)
    Resume(ConnId),
    /// Execute a storage request and answer with
    /// [`Server::handle_store_reply`](crate::Server::handle_store_reply).
    Store(StoreToken, StoreRequest),
    /// Open a TCP connection to `address` (`name:port` or `ip:port`) for
    /// the Net link or server-to-server stream `conn`, and answer with
    /// [`Server::handle_connected`](crate::Server::handle_connected) or
    /// [`Server::handle_connect_failed`](crate::Server::handle_connect_failed);
    /// then the connection's bytes go through the same calls as an accepted
    /// one's.
    Connect {
        /// The link's handle.
        conn: ConnId,
        /// Where to connect.
        address: String,
    },
    /// Send a DNS question to a name server (over TCP if `query.tcp`) and
    /// hand its answer to
    /// [`Server::handle_dns_answer`](crate::Server::handle_dns_answer) with
    /// the same `token`. An answer that never comes needs no call: the
    /// core asks again or gives up at its own timeout.
    Resolve {
        /// Whose question it is.
        token: ConnId,
        /// The message.
        query: crate::dns::Query,
    },
    /// Send a verification code of a Kontalk registration through the
    /// configured provider, and answer with
    /// [`Server::handle_code_sent`](crate::Server::handle_code_sent).
    SendCode(crate::kontalk::register::CodeMessage),
    /// Send a push notification to a device (no content: it wakes the
    /// client, which then logs in), and answer with
    /// [`Server::handle_push_done`](crate::Server::handle_push_done).
    Push(crate::kontalk::push::PushJob),
}

/// What waits on the answer to one storage request.
#[derive(Debug)]
pub(crate) enum Pending {
    /// C2S: the credentials of a SASL exchange.
    Sasl(ConnId),
    /// C2S: XEP-0077 account creation.
    Register { conn: ConnId, iq: Element },
    /// C2S: XEP-0077 password change.
    Password { conn: ConnId, iq: Element },
    /// C2S: XEP-0077 account removal.
    Remove { conn: ConnId, iq: Element },
    /// SM: an account's roster and block list.
    LoadUser(BareJid),
    /// SM: what to do once a change is durable.
    Durable {
        user: BareJid,
        change: Option<crate::session::Change>,
        then: Vec<Deferred>,
    },
    /// SM: a message stored for an offline user (with its row in the Net
    /// inbox, when it came from another server of the network).
    StoreOffline(Element, Option<i64>, Vec<crate::store::AppPush>),
    /// SM: a message stored before it goes to the session of `to` (stream
    /// management: kept until acknowledged), with its archive copy.
    InFlight {
        to: jid::FullJid,
        el: Element,
        archive: Option<crate::store::ArchiveEntry>,
        key: u64,
        inbox: Option<i64>,
    },
    /// SM: offline messages for delivery to a new session.
    LoadOffline { conn: ConnId, bare: BareJid },
    /// SM: a vCard for an iq.
    Vcard {
        conn: ConnId,
        iq: Element,
        own: bool,
    },
    /// SM: last activity of an offline contact, for an iq.
    Last(Element),
    /// SM: private XML (XEP-0049) for an iq; `empty` is the element asked
    /// for, the answer when nothing is stored.
    Private {
        conn: ConnId,
        iq: Element,
        empty: Element,
    },
    /// SM: a query of the archive (XEP-0313) from `conn`; `flip` asks for
    /// the page newest first.
    Archive {
        conn: ConnId,
        iq: Element,
        queryid: Option<String>,
        flip: bool,
    },
    /// SM: an XEP-0198 `<a h/>` that waits for the requests before it
    /// and for those their answers led to; `asked` is the first barrier's
    /// token (see [`Effects::follow_up_in_flight`]).
    Ack {
        conn: ConnId,
        h: u32,
        asked: StoreToken,
    },
    /// SM: an XEP-0198 `<resume/>` on `conn`, whose `<resumed h/>` waits as
    /// an ack does.
    Resume {
        conn: ConnId,
        el: Element,
        asked: StoreToken,
    },
    /// Kontalk registration.
    Kontalk(crate::kontalk::register::Waiting),
    /// Kontalk services (contact match).
    KontalkService(crate::kontalk::services::Waiting),
    /// A push registration of a session's device (`push@`).
    Push { conn: ConnId, iq: Element },
    /// An upload slot being kept (XEP-0363): the slot's answer, sent once
    /// the store kept it.
    Upload {
        conn: ConnId,
        iq: Element,
        reply: Element,
        legacy: bool,
    },
    /// The push tokens of an account a push is for.
    PushTokens(String),
    /// A change of an account's XEP-0357 registrations (of a session's
    /// iq, or of an app server's refusal).
    AppPush {
        conn: Option<ConnId>,
        iq: Option<Element>,
        bare: BareJid,
        change: crate::session::app_push::AppPushChange,
    },
    /// The Kontalk network's directory.
    Net(crate::net::Waiting),
    /// Federation's queues.
    S2s(crate::s2s::Waiting),
    /// Nothing waits on the answer (bookkeeping writes); the words say what
    /// a failure means ("the messages stay stored and come again").
    Ignore(&'static str),
}

impl Pending {
    /// What the core does when the request fails, in words for the one log
    /// line of the failure (see [`Server::handle_store_reply`](crate::Server::handle_store_reply)).
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Pending::Sasl(_) => "the login got temporary-auth-failure",
            Pending::Register { .. } => "the registration got internal-server-error",
            Pending::Password { .. } => {
                "the password is unchanged and the client got internal-server-error"
            }
            Pending::Remove { .. } => "the account stays and the client got internal-server-error",
            Pending::LoadUser(_) => {
                "the stanzas that waited for it got internal-server-error; the next one loads it again"
            }
            Pending::Durable { .. } => {
                "the change is not made (memory stays as stored); a roster, block or vCard iq that asked for it got internal-server-error"
            }
            Pending::StoreOffline(..) => "the sender got internal-server-error",
            Pending::InFlight { .. } => {
                "the message is in its session, kept in memory until acknowledged"
            }
            Pending::LoadOffline { .. } => "the messages stay stored for the next login",
            Pending::Vcard { .. }
            | Pending::Last(_)
            | Pending::Private { .. }
            | Pending::Archive { .. } => {
                "the asker got internal-server-error"
            }
            Pending::Ack { .. } => {
                "the ack goes out all the same (the stanzas it counts were answered)"
            }
            Pending::Resume { .. } => {
                "the resumption goes on all the same (the stanzas it counts were answered)"
            }
            Pending::Kontalk(w) => w.after_failure(),
            Pending::KontalkService(w) => w.after_failure(),
            Pending::Push { .. } | Pending::Upload { .. } => "the client got internal-server-error",
            Pending::PushTokens(_) => "no push for this message (it waits in storage)",
            Pending::AppPush { .. } => "the registrations are unchanged (an iq that asked got internal-server-error)",
            Pending::Net(w) => w.after_failure(),
            Pending::S2s(w) => w.after_failure(),
            Pending::Ignore(what) => what,
        }
    }
}

/// A request in flight as a failure's log line names it: what it does and
/// the account it concerns.
#[derive(Debug)]
pub(crate) struct Asked {
    pub(crate) what: &'static str,
    pub(crate) username: Option<String>,
}

/// The queue of events and the table of requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    events: VecDeque<Event>,
    /// What waits on each request, what it asked, and its origin: the
    /// request itself, or, for one made while an answer was handled, the
    /// origin of that answer's request.
    pending: IdMap<StoreToken, (Pending, Asked, StoreToken)>,
    next_token: u64,
    /// The origin of the answer being handled, if one is.
    answering: Option<StoreToken>,
    /// Origins of work that waits in a queue (a stanza for an account whose
    /// data is loading) and will ask the store only when it runs: how many
    /// wait with each.
    queued: std::collections::BTreeMap<StoreToken, u32>,
}

impl Effects {
    /// Queues an event.
    pub(crate) fn push(&mut self, ev: Event) {
        self.events.push_back(ev);
    }

    /// The next event, if any.
    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether no event waits for the runtime.
    pub(crate) fn is_idle(&self) -> bool {
        self.events.is_empty()
    }

    /// Asks the runtime to run `request`; `then` waits for the answer.
    pub(crate) fn store(&mut self, then: Pending, request: StoreRequest) {
        self.next_token += 1;
        let token = StoreToken(self.next_token);
        let (what, username) = request.describe();
        let asked = Asked {
            what,
            username: username.map(str::to_owned),
        };
        let origin = self.answering.unwrap_or(token);
        self.pending.insert(token, (then, asked, origin));
        self.events.push_back(Event::Store(token, request));
    }

    /// The token the next request will get.
    pub(crate) fn next_token(&self) -> StoreToken {
        StoreToken(self.next_token + 1)
    }

    /// Whether a request made while handling an answer to one made before
    /// `token` is in flight: the work of stanzas that waited for that
    /// answer (a message waiting for its recipient's data asks to be
    /// stored only once the data is in).
    pub(crate) fn follow_up_in_flight(&self, token: StoreToken) -> bool {
        self.queued
            .keys()
            .next()
            .is_some_and(|&first| first < token)
            || self.pending.values().any(|&(_, _, origin)| origin < token)
    }

    /// Work is queued now, to run later: its origin is that of the answer
    /// being handled, or now (a barrier asked for later does not wait for
    /// it). Hand it back to [`Effects::run_queued`] or [`Effects::drop_queued`].
    pub(crate) fn queue(&mut self) -> StoreToken {
        let origin = self.answering.unwrap_or(StoreToken(self.next_token));
        *self.queued.entry(origin).or_default() += 1;
        origin
    }

    /// Queued work of `origin` runs now: the requests it makes until
    /// [`Effects::ran_queued`] follow from `origin`. Returns what to give
    /// that.
    pub(crate) fn run_queued(&mut self, origin: StoreToken) -> Option<StoreToken> {
        self.drop_queued(origin);
        self.answering.replace(origin)
    }

    /// The queued work started with [`Effects::run_queued`] is done.
    pub(crate) fn ran_queued(&mut self, outer: Option<StoreToken>) {
        self.answering = outer;
    }

    /// Queued work of `origin` is gone without running (answered with an
    /// error, or its account forgotten).
    pub(crate) fn drop_queued(&mut self, origin: StoreToken) {
        if let Some(n) = self.queued.get_mut(&origin) {
            *n -= 1;
            if *n == 0 {
                self.queued.remove(&origin);
            }
        }
    }

    /// Storage requests sent and not answered yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// What waited on `token` (once: a repeated answer finds nothing).
    /// Requests made until [`Effects::answer_handled`] follow from it.
    pub(crate) fn answered(&mut self, token: StoreToken) -> Option<(Pending, Asked)> {
        let (pending, asked, origin) = self.pending.remove(&token)?;
        self.answering = Some(origin);
        Some((pending, asked))
    }

    /// The answer taken with [`Effects::answered`] is handled.
    pub(crate) fn answer_handled(&mut self) {
        self.answering = None;
    }
}
