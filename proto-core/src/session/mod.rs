//! The session manager (SM): RFC 6121 for the accounts of this server.
//!
//! One file per feature: sessions and delivery ([`delivery`]), presence
//! ([`presence`]), offline storage ([`offline`], XEP-0160), roster and
//! subscriptions ([`roster`]), blocking ([`blocking`], XEP-0191), vCards
//! ([`vcard`], XEP-0054), and the one iq dispatcher with the server's own
//! iqs ([`iq`]). This file holds the SM's state (the bound sessions, the
//! accounts in memory), the loading of an account's data, and the effects
//! that wait for the store.
//!
//! Every stanza that involves a local account waits until that account's
//! data ([`UserData`]) is in memory; stanzas for the same account are
//! handled in arrival order. Changes are made durable through storage
//! requests, and what depends on them (iq results, roster pushes, routed
//! subscription stanzas) is sent only when the store has answered.

mod blocking;
mod delivery;
mod iq;
mod offline;
mod presence;
mod roster;
mod vcard;

use jid::{BareJid, FullJid, Jid};

use crate::effects::Pending;
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::ns;
use crate::roster::RosterItem;
use crate::server::{ConnId, Keyed, PeerMap, PeerSet, Server};
use crate::stanza::StanzaKind;
use crate::store::{StoreReply, StoreRequest, UserData};
use crate::xml::Element;

/// Most directed-presence targets remembered per session.
pub(crate) const MAX_DIRECTED: usize = 1000;

/// A bound resource: what the SM keeps about one client session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) jid: FullJid,
    /// When it was bound (seconds since the Unix epoch), if the core knew
    /// the wall-clock time then.
    pub(crate) bound_at: Option<u64>,
    /// Sent initial presence and not unavailable since.
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// Entities that got directed presence from this session.
    pub(crate) directed: PeerSet<Jid>,
    pub(crate) last_presence: Option<Element>,
    /// Asked for the roster: gets roster pushes (RFC 6121 2.1.6).
    pub(crate) roster_requested: bool,
    /// Asked for the block list: gets blocking pushes (XEP-0191).
    pub(crate) blocklist_requested: bool,
}

/// The in-memory view of one local account.
#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) loaded: bool,
    pub(crate) exists: bool,
    pub(crate) roster_version: u64,
    pub(crate) roster: PeerMap<String, RosterItem>,
    pub(crate) blocklist: PeerSet<String>,
    /// Work that waits for the data to load, in arrival order.
    waiting: Vec<Waiting>,
    /// Offline messages are being loaded for delivery.
    pub(crate) offline_loading: bool,
}

impl Account {
    /// Not loaded yet; its maps hash with `keyed`.
    fn new(keyed: Keyed) -> Account {
        Account {
            loaded: false,
            exists: false,
            roster_version: 0,
            roster: PeerMap::with_hasher(keyed.clone()),
            blocklist: PeerSet::with_hasher(keyed.clone()),
            waiting: Vec::new(),
            offline_loading: false,
        }
    }
}

/// Work that needs an account's data.
#[derive(Debug)]
enum Waiting {
    /// Finish resource binding.
    Bind { conn: ConnId, iq: Element },
    /// A stanza from a session of this account.
    Outbound { conn: ConnId, el: Element },
    /// A stanza to this account (with `from` stamped).
    Inbound { el: Element },
}

/// An effect that waits until the store says a change is durable.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// Send to one session.
    Send(ConnId, Element),
    /// Route a stanza (with `from` and `to`).
    Route(Element),
    /// Deliver to every available resource of a local account.
    Deliver { user: BareJid, el: Element },
    /// Roster push of one item to the account's interested resources.
    Push {
        user: BareJid,
        item: Element,
        version: u64,
    },
    /// Blocking push (XEP-0191) to the account's interested resources.
    BlockPush {
        user: BareJid,
        el: Element,
        except: Option<ConnId>,
    },
    /// Send `of`'s current presence (or unavailable) to `to`.
    PresenceTo {
        of: BareJid,
        to: BareJid,
        available: bool,
    },
}

/// What the connection table tells the session manager about a session's
/// connection.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    /// The connection of a bound session ended (closed by either side, or
    /// failed); the session is gone from the table and handed over whole.
    Ended { conn: ConnId, session: Session },
}

/// The SM's state.
#[derive(Debug)]
pub(crate) struct SessionManager {
    /// The bound sessions of each local account, in binding order.
    sessions: PeerMap<BareJid, Vec<ConnId>>,
    /// Local accounts in use.
    accounts: PeerMap<BareJid, Account>,
}

impl SessionManager {
    pub(crate) fn new(keyed: Keyed) -> SessionManager {
        SessionManager {
            sessions: PeerMap::with_hasher(keyed.clone()),
            accounts: PeerMap::with_hasher(keyed),
        }
    }

    /// Number of bound resources.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    /// The sessions of a local account.
    pub(crate) fn sessions_of(&self, bare: &BareJid) -> Vec<ConnId> {
        self.sessions.get(bare).cloned().unwrap_or_default()
    }

    /// Forgets an account's data (it was removed).
    pub(crate) fn forget_account(&mut self, bare: &BareJid) {
        self.accounts.remove(bare);
    }

    /// The account's data, once loaded.
    fn account(&self, bare: &BareJid) -> Option<&Account> {
        self.accounts.get(bare).filter(|a| a.loaded)
    }

    fn account_mut(&mut self, bare: &BareJid) -> Option<&mut Account> {
        self.accounts.get_mut(bare).filter(|a| a.loaded)
    }
}

/// The username (node part) of a local account.
fn username(bare: &BareJid) -> String {
    bare.node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

impl Server {
    // ------------------------------------------------------------ accounts

    /// Runs `w` now if `bare`'s data is loaded and nothing waits before it;
    /// otherwise queues it (loading the data if needed).
    fn with_account(&mut self, bare: &BareJid, w: Waiting) {
        match self.sm.accounts.get_mut(bare) {
            Some(acc) if acc.loaded && acc.waiting.is_empty() => self.run_waiting(bare, w),
            Some(acc) => acc.waiting.push(w),
            None => {
                self.sm.accounts.insert(
                    bare.clone(),
                    Account {
                        waiting: vec![w],
                        ..Account::new(self.keyed.clone())
                    },
                );
                self.fx.store(
                    Pending::LoadUser(bare.clone()),
                    StoreRequest::LoadUser {
                        username: username(bare),
                    },
                );
            }
        }
    }

    /// The store answered with an account's data.
    pub(crate) fn user_loaded(&mut self, bare: BareJid, reply: StoreReply) {
        let Some(acc) = self.sm.accounts.get_mut(&bare) else {
            return;
        };
        match reply {
            StoreReply::User(data) => {
                acc.loaded = true;
                acc.exists = data.is_some();
                let UserData {
                    roster_version,
                    roster,
                    blocklist,
                } = data.unwrap_or_default();
                acc.roster_version = roster_version;
                acc.roster.clear();
                acc.roster
                    .extend(roster.into_iter().map(|i| (i.jid.clone(), i)));
                acc.blocklist.clear();
                acc.blocklist.extend(blocklist);
            }
            other => {
                log::error!("{bare}: loading the account failed: {other:?}");
                // Answer what waited with errors; the next stanza retries.
                let waiting = std::mem::take(&mut acc.waiting);
                self.sm.accounts.remove(&bare);
                for w in waiting {
                    match w {
                        Waiting::Bind { conn, .. } => {
                            self.fail(conn, XE::InternalServerError, None)
                        }
                        Waiting::Outbound { conn, el } => {
                            self.reply_error(conn, &el, SE::InternalServerError, None)
                        }
                        Waiting::Inbound { el } => self.bounce_routed(&el, SE::InternalServerError),
                    }
                }
                return;
            }
        }
        let waiting = std::mem::take(&mut acc.waiting);
        for w in waiting {
            self.run_waiting(&bare, w);
        }
        self.maybe_evict(&bare);
    }

    fn run_waiting(&mut self, bare: &BareJid, w: Waiting) {
        match w {
            Waiting::Bind { conn, iq } => self.finish_bind(conn, bare, &iq),
            Waiting::Outbound { conn, el } => {
                if self.conns.contains_key(&conn) {
                    self.outbound(conn, el);
                }
            }
            Waiting::Inbound { el } => self.inbound_ready(bare, el),
        }
    }

    /// Forgets an account's data when nothing needs it any more.
    fn maybe_evict(&mut self, bare: &BareJid) {
        let idle = self
            .sm
            .accounts
            .get(bare)
            .is_some_and(|a| a.loaded && a.waiting.is_empty() && !a.offline_loading);
        if idle && !self.sm.sessions.contains_key(bare) {
            self.sm.accounts.remove(bare);
        }
    }

    // ------------------------------------------------------- durable changes

    /// The store answered a change that effects wait on: run them, or, when
    /// it failed, answer the client with an error and reload the accounts
    /// involved, so memory matches the store again.
    pub(crate) fn durable(&mut self, mut then: Vec<Deferred>, reply: StoreReply) {
        match reply {
            StoreReply::Failed(msg) => {
                log::error!("a change could not be stored: {msg}");
                self.durable_failed(then);
            }
            StoreReply::RosterVersion(stored) => {
                // Pushes carry the version the store gave the change.
                for d in &mut then {
                    if let Deferred::Push { version, .. } = d {
                        *version = stored;
                    }
                }
                self.run_deferred(then);
            }
            _ => self.run_deferred(then),
        }
    }

    fn durable_failed(&mut self, then: Vec<Deferred>) {
        for d in then {
            match d {
                Deferred::Send(conn, el) if StanzaKind::of(&el) == Some(StanzaKind::Iq) => {
                    let mut req = el.clone();
                    req.set_attr("type", Some("set"));
                    let (to, from) = (
                        req.attr("from").map(str::to_owned),
                        req.attr("to").map(str::to_owned),
                    );
                    req.set_attr("to", to.as_deref());
                    req.set_attr("from", from.as_deref());
                    self.reply_error(conn, &req, SE::InternalServerError, None);
                }
                Deferred::Push { user, .. } | Deferred::BlockPush { user, .. } => {
                    self.sm.accounts.retain(|b, a| b != &user || !a.loaded);
                }
                _ => {}
            }
        }
    }

    fn run_deferred(&mut self, then: Vec<Deferred>) {
        for d in then {
            match d {
                Deferred::Route(el) => self.route(el),
                Deferred::Send(conn, el) => self.send_stanza(conn, &el),
                Deferred::Deliver { user, el } => {
                    for (c, _) in self.available_resources(&user) {
                        self.send_stanza(c, &el);
                    }
                }
                Deferred::Push {
                    user,
                    item,
                    version,
                } => self.roster_push(&user, item, version),
                Deferred::PresenceTo { of, to, available } => {
                    self.presence_of_to(&of, &to, available)
                }
                Deferred::BlockPush { user, el, except } => {
                    self.push_to_interested(&user, except, |s| s.blocklist_requested, el);
                }
            }
        }
    }

    /// An iq `set` push of `payload` to every session of `user` that
    /// `interested` selects (it asked for the roster or the block list).
    fn push_to_interested(
        &mut self,
        user: &BareJid,
        except: Option<ConnId>,
        interested: impl Fn(&Session) -> bool,
        payload: Element,
    ) {
        let targets: Vec<(ConnId, FullJid)> = self
            .sm
            .sessions
            .get(user)
            .into_iter()
            .flatten()
            .filter(|c| Some(**c) != except)
            .filter_map(|c| {
                let s = self
                    .conns
                    .get(c)?
                    .session
                    .as_ref()
                    .filter(|s| interested(s))?;
                Some((*c, s.jid.clone()))
            })
            .collect();
        for (c, full) in targets {
            let id = format!("push-{}", self.random_hex(4));
            let iq = Element::new(ns::CLIENT, "iq")
                .with_attr("type", "set")
                .with_attr("id", &id)
                .with_attr("to", full.as_str())
                .with_child(payload.clone());
            self.send_stanza(c, &iq);
        }
    }

    /// Stores a change for `user` (the memory is already changed); `then`
    /// runs once it is durable.
    fn store_change(&mut self, then: Vec<Deferred>, request: StoreRequest) {
        self.fx.store(Pending::Durable(then), request);
    }
}
