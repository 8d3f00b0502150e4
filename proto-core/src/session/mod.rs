//! The session manager (SM): RFC 6121 for the accounts of this server.
//!
//! One file per feature: sessions and delivery ([`delivery`]), presence
//! ([`presence`]), offline storage ([`offline`], XEP-0160), the message
//! archive ([`archive`], XEP-0313), roster and
//! subscriptions ([`roster`]), blocking ([`blocking`], XEP-0191), vCards
//! ([`vcard`], XEP-0054), and the one iq dispatcher with the server's own
//! iqs ([`iq`]). This file holds the SM's state (the bound sessions, the
//! accounts in memory), the loading of an account's data, and the effects
//! that wait for the store.
//!
//! Every stanza that involves a local account waits until that account's
//! data ([`UserData`]) is in memory; stanzas for the same account are
//! handled in arrival order. Memory follows the store: a change (a roster
//! item, the block list) is sent to the store as a request and applied to
//! memory only when the store says it is durable, together with what
//! depends on it (iq results, roster pushes with the store's version,
//! routed subscription stanzas, presence). While a change of an account is
//! in flight, the account's next stanzas wait, so that each one sees the
//! durable state of the one before; a change the store refuses leaves
//! memory as it was.

pub(crate) mod app_push;
mod archive;
mod blocking;
mod carbons;
pub(crate) mod csi;
mod delivery;
mod iq;
mod offline;
mod outbox;
pub(crate) use outbox::Handed;
mod presence;
mod private;
mod roster;
mod stream_mgmt;
mod vcard;

use std::collections::VecDeque;

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
    /// Enabled message carbons (XEP-0280).
    pub(crate) carbons: bool,
    /// Said `<inactive/>` (XEP-0352): presence updates wait.
    pub(crate) inactive: bool,
    /// The presence updates that wait, the latest per sender.
    pub(crate) held_presence: Vec<Element>,
    /// Stream management (XEP-0198), once enabled.
    pub(crate) sm: Option<Box<stream_mgmt::StreamMgmt>>,
    /// Messages and iqs written to the stream and not taken yet.
    pub(crate) outbox: outbox::Outbox,
    /// Withdrawn when the session ended, for redelivery.
    pub(crate) withdrawn: outbox::Withdrawn,
    /// Offline messages loaded for this session and not written yet.
    pub(crate) offline: VecDeque<crate::store::OfflineMessage>,
}

/// The in-memory view of one local account.
#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) loaded: bool,
    pub(crate) exists: bool,
    pub(crate) roster_version: u64,
    pub(crate) roster: PeerMap<String, RosterItem>,
    pub(crate) blocklist: PeerSet<String>,
    /// Archiving preferences (XEP-0313).
    pub(crate) archive_prefs: crate::store::ArchivePrefs,
    /// The OpenPGP key the account logs in with (Kontalk).
    pub(crate) key: Option<crate::store::StoredKey>,
    /// Its push registrations with app servers (XEP-0357).
    pub(crate) app_push: Vec<crate::store::AppPush>,
    /// Work that waits for the data to load, or for the changes in flight
    /// to be durable, in arrival order.
    waiting: VecDeque<Waiting>,
    /// Changes sent to the store and not answered yet.
    writing: u32,
    /// Offline messages are being loaded for delivery.
    pub(crate) offline_loading: bool,
}

impl Account {
    /// Loaded, nothing in flight, nothing waiting: a stanza runs at once.
    fn ready(&self) -> bool {
        self.loaded && self.writing == 0 && self.waiting.is_empty()
    }

    /// Applies a change the store made durable; `version` is the roster
    /// version the store answered, if it did.
    fn apply(&mut self, change: Change, version: Option<u64>) {
        match change {
            Change::Roster { item, keep } => {
                if keep {
                    self.roster.insert(item.jid.clone(), item);
                } else {
                    self.roster.remove(&item.jid);
                }
            }
            Change::Blocklist { clear, add, remove } => {
                if clear {
                    self.blocklist.clear();
                }
                self.blocklist.extend(add);
                for r in &remove {
                    self.blocklist.remove(r);
                }
            }
            Change::ArchivePrefs(prefs) => self.archive_prefs = prefs,
        }
        if let Some(v) = version {
            self.roster_version = v;
        }
    }

    /// Not loaded yet; its maps hash with `keyed`.
    fn new(keyed: Keyed) -> Account {
        Account {
            loaded: false,
            exists: false,
            roster_version: 0,
            roster: PeerMap::with_hasher(keyed.clone()),
            blocklist: PeerSet::with_hasher(keyed.clone()),
            archive_prefs: Default::default(),
            key: None,
            app_push: Vec::new(),
            waiting: VecDeque::new(),
            writing: 0,
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
    /// A stanza to this account (with `from` stamped); `origin` is what
    /// its store requests will follow from (see [`Effects::queue`](crate::effects::Effects::queue)).
    Inbound {
        el: Element,
        origin: Option<crate::store::StoreToken>,
        /// Its row in the Net inbox, when it came from another server of
        /// the network (deleted once it is delivered).
        inbox: Option<i64>,
    },
}

/// An effect that waits until the store says a change is durable.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// Send to one session.
    Send(ConnId, Element),
    /// Route a stanza (with `from` and `to`).
    Route(Element),
    /// Deliver to a local account's sessions: every available one, or
    /// (`interested`) every one that asked for the roster.
    Deliver {
        user: BareJid,
        el: Element,
        interested: bool,
    },
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

/// A change of an account's data in memory, applied once the store says it
/// is durable.
#[derive(Debug)]
pub(crate) enum Change {
    /// One roster item stored (`keep`) or removed; the roster version
    /// becomes the one the store answers.
    Roster { item: RosterItem, keep: bool },
    /// The block list: cleared first when `clear`, then `add` and `remove`.
    Blocklist {
        clear: bool,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// The archiving preferences (XEP-0313).
    ArchivePrefs(crate::store::ArchivePrefs),
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
    /// Resumable sessions (XEP-0198) by resumption id.
    pub(crate) resumable: PeerMap<String, ConnId>,
    /// Messages in flight to sessions whose storage is not answered yet,
    /// by key: whether the session ended without their acknowledgement
    /// (then a failed storage routes them again).
    pub(crate) flights: crate::server::IdMap<u64, bool>,
}

impl SessionManager {
    pub(crate) fn new(keyed: Keyed) -> SessionManager {
        SessionManager {
            sessions: PeerMap::with_hasher(keyed.clone()),
            accounts: PeerMap::with_hasher(keyed.clone()),
            resumable: PeerMap::with_hasher(keyed),
            flights: Default::default(),
        }
    }

    /// Number of bound resources.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }

    /// The sessions of a local account.
    /// The key `bare` logs in with changed (or the account was just
    /// registered): memory follows the store.
    pub(crate) fn key_stored(&mut self, bare: &BareJid, key: crate::store::StoredKey) {
        if let Some(acc) = self.accounts.get_mut(bare) {
            acc.exists = true;
            acc.key = Some(key);
        }
    }

    pub(crate) fn sessions_of(&self, bare: &BareJid) -> Vec<ConnId> {
        self.sessions.get(bare).cloned().unwrap_or_default()
    }

    /// Forgets an account's data (it was removed).
    /// (`fx` hears of the queued stanzas that go with it.)
    pub(crate) fn forget_account(&mut self, bare: &BareJid, fx: &mut crate::effects::Effects) {
        let mut delivered = Vec::new();
        for w in self
            .accounts
            .remove(bare)
            .into_iter()
            .flat_map(|a| a.waiting)
        {
            if let Waiting::Inbound { origin, inbox, .. } = w {
                if let Some(o) = origin {
                    fx.drop_queued(o);
                }
                delivered.extend(inbox);
            }
        }
        if !delivered.is_empty() {
            fx.store(
                Pending::Ignore("they are delivered again at the next start"),
                StoreRequest::NetDelivered { ids: delivered },
            );
        }
    }

    /// The account is being deleted: from now on stanzas to it are
    /// answered as for an account that does not exist (what its ending
    /// sessions had not taken included), not stored for it.
    pub(crate) fn account_gone(&mut self, bare: &BareJid) {
        if let Some(acc) = self.accounts.get_mut(bare) {
            acc.exists = false;
        }
    }

    /// The account's data, once loaded.
    pub(crate) fn account(&self, bare: &BareJid) -> Option<&Account> {
        self.accounts.get(bare).filter(|a| a.loaded)
    }

    /// The same, to change.
    pub(crate) fn account_mut(&mut self, bare: &BareJid) -> Option<&mut Account> {
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
    fn with_account(&mut self, bare: &BareJid, mut w: Waiting) {
        let ready = self.sm.accounts.get(bare).is_some_and(Account::ready);
        if let (false, Waiting::Inbound { origin, .. }) = (ready, &mut w) {
            *origin = Some(self.fx.queue());
        }
        match self.sm.accounts.get_mut(bare) {
            Some(acc) if acc.ready() => self.run_waiting(bare, w),
            Some(acc) => acc.waiting.push_back(w),
            None => {
                self.sm.accounts.insert(
                    bare.clone(),
                    Account {
                        waiting: VecDeque::from([w]),
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
                    archive_prefs,
                    key,
                    app_push,
                } = data.unwrap_or_default();
                acc.app_push = app_push;
                acc.archive_prefs = archive_prefs.unwrap_or_default();
                acc.key = key;
                acc.roster_version = roster_version;
                acc.roster.clear();
                acc.roster
                    .extend(roster.into_iter().map(|i| (i.jid.clone(), i)));
                acc.blocklist.clear();
                acc.blocklist.extend(blocklist);
            }
            _ => {
                // Logged as a store failure. Answer what waited with errors; the next stanza retries.
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
                        Waiting::Inbound { el, origin, inbox } => {
                            if let Some(o) = origin {
                                self.fx.drop_queued(o);
                            }
                            self.bounce_routed(&el, SE::InternalServerError);
                            self.net_delivered(inbox);
                        }
                    }
                }
                return;
            }
        }
        self.resume_waiting(&bare);
    }

    /// Runs what waits for `bare`, in order, as long as nothing is in flight
    /// for it (a stanza run here may start a change: the rest waits for it).
    fn resume_waiting(&mut self, bare: &BareJid) {
        while let Some(acc) = self.sm.accounts.get_mut(bare) {
            if !acc.loaded || acc.writing > 0 {
                return;
            }
            let Some(w) = acc.waiting.pop_front() else {
                break;
            };
            self.run_waiting(bare, w);
        }
        self.maybe_evict(bare);
    }

    fn run_waiting(&mut self, bare: &BareJid, w: Waiting) {
        match w {
            Waiting::Bind { conn, iq } => self.finish_bind(conn, bare, &iq),
            Waiting::Outbound { conn, el } => {
                if self.conns.contains_key(&conn) {
                    self.outbound(conn, el);
                }
            }
            Waiting::Inbound {
                el,
                origin: None,
                inbox,
            } => self.inbound_ready(bare, el, inbox),
            Waiting::Inbound {
                el,
                origin: Some(o),
                inbox,
            } => {
                let outer = self.fx.run_queued(o);
                self.inbound_ready(bare, el, inbox);
                self.fx.ran_queued(outer);
            }
        }
    }

    /// Forgets an account's data when nothing needs it any more.
    fn maybe_evict(&mut self, bare: &BareJid) {
        let idle = self
            .sm
            .accounts
            .get(bare)
            .is_some_and(|a| a.ready() && !a.offline_loading);
        if idle && !self.sm.sessions.contains_key(bare) {
            self.sm.accounts.remove(bare);
        }
    }

    // ------------------------------------------------------- durable changes

    /// Sends `change` of `user`'s data to the store as `request`; memory
    /// changes, and `then` runs, once the store says it is durable. The
    /// account's next stanzas wait until then.
    fn store_change(
        &mut self,
        user: &BareJid,
        change: Option<Change>,
        then: Vec<Deferred>,
        request: StoreRequest,
    ) {
        if let Some(acc) = self.sm.accounts.get_mut(user) {
            acc.writing += 1;
        }
        self.fx.store(
            Pending::Durable {
                user: user.clone(),
                change,
                then,
            },
            request,
        );
    }

    /// The store answered a change of `user`'s data: apply it to memory and
    /// run what waited on it, or, when it failed, answer the client with an
    /// error and leave memory as it was; then what waited for the account
    /// goes on.
    pub(crate) fn durable(
        &mut self,
        user: BareJid,
        change: Option<Change>,
        mut then: Vec<Deferred>,
        reply: StoreReply,
    ) {
        match reply {
            // Logged where every store failure is.
            StoreReply::Failed(_) => self.durable_failed(then),
            reply => {
                let version = match reply {
                    StoreReply::RosterVersion(v) => Some(v),
                    _ => None,
                };
                if let Some(acc) = self.sm.accounts.get_mut(&user) {
                    if let Some(change) = change {
                        acc.apply(change, version);
                    }
                }
                // Pushes carry the version the store gave the change.
                if let Some(stored) = version {
                    for d in &mut then {
                        if let Deferred::Push { version, .. } = d {
                            *version = stored;
                        }
                    }
                }
                self.run_deferred(then);
            }
        }
        if let Some(acc) = self.sm.accounts.get_mut(&user) {
            acc.writing = acc.writing.saturating_sub(1);
        }
        self.resume_waiting(&user);
    }

    fn durable_failed(&mut self, then: Vec<Deferred>) {
        for d in then {
            if let Deferred::Send(conn, el) = d {
                if StanzaKind::of(&el) == Some(StanzaKind::Iq) {
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
            }
        }
    }

    fn run_deferred(&mut self, then: Vec<Deferred>) {
        for d in then {
            match d {
                Deferred::Route(el) => self.route(el),
                Deferred::Send(conn, el) => self.send_stanza(conn, &el),
                Deferred::Deliver {
                    user,
                    el,
                    interested,
                } => {
                    let targets: Vec<ConnId> = if interested {
                        self.sm
                            .sessions_of(&user)
                            .into_iter()
                            .filter(|c| {
                                self.conns
                                    .get(c)
                                    .and_then(|c| c.session.as_ref())
                                    .is_some_and(|s| s.roster_requested)
                            })
                            .collect()
                    } else {
                        self.available_resources(&user)
                            .into_iter()
                            .map(|(c, _)| c)
                            .collect()
                    };
                    for c in targets {
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
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stream_mgmt_tests;

#[cfg(test)]
mod delivery_model_tests;

#[cfg(test)]
mod archive_tests;
