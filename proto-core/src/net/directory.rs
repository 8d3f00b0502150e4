//! The directory: every server of the network knows the home of every
//! user of the network.
//!
//! Each server is the only writer of its own users' entries: every
//! creation and deletion of one of its accounts is a change its store
//! numbers ([`StoreRequest::DirectoryChanges`]). When a link comes up, each
//! side asks the other for the changes after the last number it has made
//! durable: `<sync xmlns='urn:kontalk:net:0' seen='N'/>`. The other answers
//! with batches of at most [`BATCH`] changes,
//! `<dir><user seq='S' name='U'/><user seq='S' name='U' gone='true'/></dir>`,
//! the next one only once the link's output is below half its budget; once
//! caught up it looks for new changes every [`POLL`]. The receiver stores
//! each batch with the last number seen in one transaction
//! ([`StoreRequest::StoreDirectory`]), and only then puts it in memory. A
//! batch that could not be stored ends the link: the next one asks again
//! from what is durable, so nothing is lost or applied twice. The
//! directory of every server is loaded from the store at start, before the
//! first `<sync/>` goes out.
//!
//! Each log has an epoch, made with the database and anew in every backup
//! copy; `<sync/>` says which epoch the asker's number is of, and every
//! batch says its own. A peer whose number is of another epoch (this
//! server's database was lost, or restored from a backup), or beyond the
//! log's end, gets all the changes again, in batches whose first says
//! `reset='true'`: it forgets what it knew of this server first.
//!
//! Two servers that both claim a user (each registered it) are both kept
//! in the store; in memory the host that sorts first is the user's home.

use std::time::{Duration, Instant};

use crate::effects::Pending;
use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::server::{ConnId, Keyed, PeerMap, Server};
use crate::store::{DirectoryChange, StoreReply, StoreRequest};
use crate::xml::Element;

use super::State;

/// Changes in one `<dir/>` batch.
pub const BATCH: u32 = 500;
/// How often a link that is caught up looks for new changes.
pub const POLL: Duration = Duration::from_secs(5);
/// Batches of one server stored at once, at most: beyond, its link is not
/// read until one is stored.
pub(super) const STORING: usize = 2;
/// How soon a failed load of the directory is tried again.
pub(super) const LOAD_RETRY: Duration = Duration::from_secs(5);

/// What the core knows of the network's users.
pub(crate) struct Dir {
    /// Loaded from the store (until then no `<sync/>` goes out).
    pub(super) loaded: bool,
    /// The load is in flight.
    loading: bool,
    /// When to try the load again after a failure.
    pub(super) retry_load: Option<Instant>,
    /// Each user of the other servers: the index of its home.
    pub(super) homes: PeerMap<String, usize>,
    /// Per server (index of `Net::peers`): the last change durable here,
    /// and of which of its logs.
    pub(super) seen: Vec<u64>,
    pub(super) epochs: Vec<String>,
    /// This server's own epoch (of its log and its outbox), once loaded.
    pub(super) epoch: String,
    /// Per server: its batches in the store now.
    pub(super) storing: Vec<usize>,
    /// Per server, while its changes after a link's `<sync/>` come: how
    /// many have been stored since.
    catching_up: Vec<Option<u64>>,
}

impl Dir {
    pub(super) fn new(peers: usize, keyed: Keyed) -> Dir {
        Dir {
            loaded: false,
            loading: false,
            retry_load: None,
            homes: PeerMap::with_hasher(keyed),
            seen: vec![0; peers],
            epochs: vec![String::new(); peers],
            epoch: String::new(),
            storing: vec![0; peers],
            catching_up: vec![None; peers],
        }
    }
}

/// What a link sends of this server's changes.
#[derive(Debug, Default)]
pub(crate) struct Sync {
    /// The last change sent (or seen by the peer).
    sent: u64,
    /// A read of the changes is in flight.
    asking: bool,
    /// The last batch was full: more wait once the output drains.
    more: bool,
    /// When to look for new changes (caught up).
    pub(super) next_poll: Option<Instant>,
    /// The epoch the peer's number is of.
    peer_epoch: String,
    /// Whether the peer's number was checked against this log.
    checked: bool,
    /// The next batch starts the peer's copy over.
    reset: bool,
    /// The first batch after the `<sync/>` went out (it goes even empty:
    /// the peer learns it is caught up).
    answered: bool,
}

/// What waits on a directory request.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// The directory, at start.
    Load,
    /// This server's changes, for the link.
    Changes { link: ConnId },
    /// A batch of server `peer`'s changes.
    Stored {
        peer: usize,
        epoch: String,
        reset: bool,
        /// More batches follow this one.
        more: bool,
        changes: Vec<DirectoryChange>,
    },
}

impl Waiting {
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Load => "no link asks for changes until it is loaded; tried again in 5 s",
            Waiting::Changes { .. } => "they are read again at the next look",
            Waiting::Stored { .. } => {
                "the link ends, and the next one asks again from what is stored"
            }
        }
    }
}

impl Server {
    /// The home of `username` among the other servers of the network
    /// (`None`: not known there; this server's own accounts are its own).
    pub fn net_home(&self, username: &str) -> Option<&str> {
        let i = *self.net.dir.homes.get(username)?;
        Some(&self.net.peers[i].host)
    }

    /// This server's accounts changed (one was created or deleted): the
    /// links that are caught up send the change now rather than at their
    /// next look. The core calls it for the changes it makes; a host that
    /// changes accounts itself (an admin command) calls it after.
    pub fn net_accounts_changed(&mut self) {
        let ids: Vec<ConnId> = self
            .net
            .links
            .iter()
            .filter(|(_, l)| l.sync.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.dir_ask(id);
        }
    }

    /// How many users of the other servers this server knows.
    pub fn net_directory_len(&self) -> usize {
        self.net.dir.homes.len()
    }

    /// Starts the load of the directory (at start, and after a failure).
    pub(super) fn dir_load(&mut self, now: Instant) {
        let d = &mut self.net.dir;
        let all = d.loaded && self.net.inbox_loaded;
        if all || d.retry_load.is_some_and(|at| at > now) {
            return;
        }
        d.retry_load = None;
        if !d.loaded && !d.loading {
            d.loading = true;
            self.fx.store(
                Pending::Net(super::Waiting::Dir(Waiting::Load)),
                StoreRequest::LoadDirectory,
            );
        }
        // After the directory: its senders are checked against it.
        self.inbox_load();
    }

    /// A link came up: ask its peer for what is missing here.
    pub(super) fn dir_link_up(&mut self, now: Instant, id: ConnId, peer: usize) {
        if !self.net.dir.loaded {
            return;
        }
        self.net.dir.catching_up[peer] = Some(0);
        let seen = self.net.dir.seen[peer];
        let sync = Element::new(ns::NET, "sync")
            .with_attr("seen", &seen.to_string())
            .with_attr("epoch", &self.net.dir.epochs[peer])
            .with_attr("mine", &self.net.dir.epoch);
        self.link_element_out(now, id, &sync);
        self.out_start(id);
    }

    /// The peer asks for this server's changes after `seen`.
    pub(super) fn dir_sync(&mut self, now: Instant, id: ConnId, el: &Element) {
        let Some(seen) = el.attr("seen").and_then(|s| s.parse::<u64>().ok()) else {
            return self.link_fail(now, id, XE::BadFormat, "a sync without a number");
        };
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        link.peer_epoch = Some(el.attr("mine").unwrap_or_default().to_owned());
        link.sync = Some(Sync {
            sent: seen,
            peer_epoch: el.attr("epoch").unwrap_or_default().to_owned(),
            ..Sync::default()
        });
        self.dir_ask(id);
    }

    /// Reads the next changes for the link, unless a read is in flight or
    /// its output is over half its budget (then once it drains).
    pub(super) fn dir_ask(&mut self, id: ConnId) {
        let half = self.config.limits.output_budget / 2;
        let Some(link) = self.net.links.get_mut(&id) else {
            return;
        };
        let pending = link.stream.pending_output();
        let Some(sync) = link.sync.as_mut() else {
            return;
        };
        if sync.asking || pending > half {
            return;
        }
        sync.asking = true;
        sync.more = false;
        sync.next_poll = None;
        let after = sync.sent;
        self.fx.store(
            Pending::Net(super::Waiting::Dir(Waiting::Changes { link: id })),
            // One more than a batch: whether more follow is known.
            StoreRequest::DirectoryChanges {
                after,
                limit: BATCH + 1,
            },
        );
    }

    /// The link's output was taken: a paused sync goes on.
    pub(super) fn dir_drained(&mut self, id: ConnId) {
        let more = self
            .net
            .links
            .get(&id)
            .and_then(|l| l.sync.as_ref())
            .is_some_and(|s| s.more && !s.asking);
        if more {
            self.dir_ask(id);
        }
    }

    /// A `<dir/>` batch from the peer: stored, then in memory.
    pub(super) fn dir_batch(&mut self, now: Instant, id: ConnId, peer: usize, el: &Element) {
        let reset = el.attr("reset") == Some("true");
        let more = el.attr("more") == Some("true");
        let epoch = el.attr("epoch").unwrap_or_default().to_owned();
        let mut changes = Vec::new();
        for u in el.elements() {
            let seq = u.attr("seq").and_then(|s| s.parse::<u64>().ok());
            let name = u.attr("name").filter(|n| !n.is_empty() && n.len() <= 1023);
            let (true, Some(seq), Some(name)) = (u.is(ns::NET, "user"), seq, name) else {
                return self.link_fail(now, id, XE::BadFormat, "a directory entry is malformed");
            };
            changes.push(DirectoryChange {
                seq,
                username: name.to_owned(),
                present: u.attr("gone") != Some("true"),
            });
        }
        if changes.len() > BATCH as usize {
            return self.link_fail(now, id, XE::PolicyViolation, "a directory batch is too big");
        }
        let home = self.net.peers[peer].host.clone();
        self.net.dir.storing[peer] += 1;
        self.fx.store(
            Pending::Net(super::Waiting::Dir(Waiting::Stored {
                peer,
                epoch: epoch.clone(),
                reset,
                more,
                changes: changes.clone(),
            })),
            StoreRequest::StoreDirectory {
                home,
                epoch,
                reset,
                changes,
            },
        );
    }

    /// A directory request was answered.
    pub(super) fn dir_stored(&mut self, now: Instant, w: Waiting, reply: StoreReply) {
        if let Waiting::Stored { peer, .. } = &w {
            let peer = *peer;
            let storing = &mut self.net.dir.storing[peer];
            *storing = storing.saturating_sub(1);
            // Its link may be read again.
            if *storing + 1 == STORING {
                if let Some(id) = self.net.peers[peer].link {
                    self.fx.push(crate::Event::Resume(id));
                }
            }
        }
        match (w, reply) {
            (Waiting::Load, StoreReply::Directory(d)) => {
                let dir = &mut self.net.dir;
                dir.loading = false;
                dir.loaded = true;
                dir.epoch = d.epoch;
                for (home, seq, epoch) in d.seen {
                    if let Some(i) = self.net.peers.iter().position(|p| p.host == home) {
                        dir.seen[i] = seq;
                        dir.epochs[i] = epoch;
                    }
                }
                for (home, user) in d.users {
                    if let Some(i) = self.net.peers.iter().position(|p| p.host == home) {
                        self.dir_claim(i, user);
                    }
                }
                log::info!(
                    "net: directory loaded, {} users on the other servers",
                    self.net.dir.homes.len()
                );
                let up: Vec<(ConnId, usize)> = self
                    .net
                    .peers
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| Some((p.link?, i)))
                    .filter(|(id, _)| self.net.links.get(id).is_some_and(|l| l.state == State::Up))
                    .collect();
                for (id, i) in up {
                    self.dir_link_up(now, id, i);
                }
            }
            (Waiting::Load, _) => {
                self.net.dir.loading = false;
                self.net.dir.retry_load = Some(now + LOAD_RETRY);
            }
            (Waiting::Changes { link }, reply) => {
                let Some(l) = self.net.links.get_mut(&link) else {
                    return;
                };
                let Some(sync) = l.sync.as_mut() else {
                    return;
                };
                sync.asking = false;
                let StoreReply::DirectoryChanges {
                    changes,
                    last,
                    epoch,
                } = reply
                else {
                    sync.next_poll = Some(now + POLL);
                    return;
                };
                if !sync.checked {
                    sync.checked = true;
                    let fresh = sync.sent == 0 && sync.peer_epoch.is_empty();
                    if !fresh && (sync.peer_epoch != epoch || last < sync.sent) {
                        // The peer's number is of another log, or beyond this
                        // one's end: it starts over.
                        let seen = sync.sent;
                        sync.sent = 0;
                        sync.reset = true;
                        let host = l.peer.map(|i| self.net.peers[i].host.clone());
                        log::warn!(
                            "net: {} has seen this server's changes up to {seen} of another \
                             log or beyond this one's end {last} (the database was lost or \
                             restored): it gets them all again",
                            host.as_deref().unwrap_or("-")
                        );
                        return self.dir_ask(link);
                    }
                }
                let reset = std::mem::take(&mut sync.reset);
                let first = !std::mem::replace(&mut sync.answered, true);
                let mut changes = changes;
                sync.more = changes.len() > BATCH as usize;
                changes.truncate(BATCH as usize);
                if !sync.more {
                    sync.next_poll = Some(now + POLL);
                }
                match changes.last() {
                    Some(c) => sync.sent = c.seq,
                    // Nothing new: said once after the sync (the peer is caught
                    // up) or when the peer's copy must start over.
                    None if !(reset || first) => return,
                    None => {}
                }
                let mut batch = Element::new(ns::NET, "dir").with_attr("epoch", &epoch);
                if reset {
                    batch = batch.with_attr("reset", "true");
                }
                if sync.more {
                    batch = batch.with_attr("more", "true");
                }
                for c in changes {
                    let mut u = Element::new(ns::NET, "user")
                        .with_attr("seq", &c.seq.to_string())
                        .with_attr("name", &c.username);
                    if !c.present {
                        u = u.with_attr("gone", "true");
                    }
                    batch = batch.with_child(u);
                }
                self.link_element_out(now, link, &batch);
                self.dir_drained(link);
            }
            (
                Waiting::Stored {
                    peer,
                    epoch,
                    reset,
                    more,
                    changes,
                },
                StoreReply::Done(true),
            ) => {
                if let Some(n) = self.net.dir.catching_up[peer].as_mut() {
                    *n += changes.len() as u64;
                    if !more {
                        log::info!(
                            "net: caught up with the directory of {}: {n} changes",
                            self.net.peers[peer].host
                        );
                        self.net.dir.catching_up[peer] = None;
                    }
                }
                if reset {
                    self.net.dir.homes.retain(|_, home| *home != peer);
                    self.net.dir.seen[peer] = 0;
                }
                self.net.dir.epochs[peer] = epoch;
                let seen = self.net.dir.seen[peer];
                let mut last = seen;
                for c in changes.into_iter().filter(|c| c.seq > seen) {
                    last = last.max(c.seq);
                    if c.present {
                        self.dir_claim(peer, c.username);
                    } else if self.net.dir.homes.get(&c.username) == Some(&peer) {
                        self.net.dir.homes.remove(&c.username);
                    }
                }
                self.net.dir.seen[peer] = last;
            }
            (Waiting::Stored { peer, .. }, _) => {
                // What was not stored is asked for again on the next link.
                if let Some(id) = self.net.peers[peer].link {
                    self.link_fail(
                        now,
                        id,
                        XE::UndefinedCondition,
                        "the directory could not be stored",
                    );
                }
            }
        }
    }

    /// Server `peer` says `user` lives there; of two claims, the host that
    /// sorts first is the home.
    fn dir_claim(&mut self, peer: usize, user: String) {
        let peers = &self.net.peers;
        let homes = &mut self.net.dir.homes;
        match homes.get(&user).copied() {
            Some(other) if other != peer => {
                let (a, b) = (&peers[other].host, &peers[peer].host);
                let home = if b < a { peer } else { other };
                log::warn!(
                    "net: {user} is claimed by {a} and by {b}; {} is its home",
                    peers[home].host
                );
                homes.insert(user, home);
            }
            _ => {
                homes.insert(user, peer);
            }
        }
    }
}
