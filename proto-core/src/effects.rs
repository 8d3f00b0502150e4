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
    /// Execute a storage request and answer with
    /// [`Server::handle_store_reply`](crate::Server::handle_store_reply).
    Store(StoreToken, StoreRequest),
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
    Durable(Vec<Deferred>),
    /// SM: a message stored for an offline user.
    StoreOffline(Element),
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
    /// Nothing waits on the answer (bookkeeping writes).
    Ignore,
}

/// The queue of events and the table of requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    events: VecDeque<Event>,
    pending: IdMap<StoreToken, Pending>,
    next_token: u64,
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

    /// Asks the runtime to run `request`; `then` waits for the answer.
    pub(crate) fn store(&mut self, then: Pending, request: StoreRequest) {
        self.next_token += 1;
        let token = StoreToken(self.next_token);
        self.pending.insert(token, then);
        self.events.push_back(Event::Store(token, request));
    }

    /// Storage requests sent and not answered yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// What waited on `token` (once: a repeated answer finds nothing).
    pub(crate) fn answered(&mut self, token: StoreToken) -> Option<Pending> {
        self.pending.remove(&token)
    }
}
