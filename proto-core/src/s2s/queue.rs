//! The pairs' queues, kept in the store until the peer has them.
//!
//! A stanza worth keeping ([`crate::stanza::worth_keeping`]: messages,
//! presence subscriptions, iq answers) that goes to a remote domain is kept
//! in the store first, with its pair of domains
//! ([`StoreRequest::S2sKeep`], `"<our domain> <remote domain>"`), as it
//! goes on the stream, and takes its place in the pair's
//! queue at once, so that nothing behind it overtakes it: the queue goes
//! out in order and stops at a stanza the store has not kept yet. The
//! sender's XEP-0198 ack waits for the store as for any storage.
//!
//! A kept stanza is deleted ([`StoreRequest::S2sForget`], by ranges of
//! numbers) once the peer has it: when its `<a/>` covers it on a stream with stream management, when
//! it was written on a stream without (the peer gives no other sign), or
//! when it was answered with an error because the domain could not be
//! reached. What a stop or a crash left kept goes out at the next start
//! ([`StoreRequest::LoadS2s`]), before anything queued since, and
//! nothing goes out on any stream until it is loaded. A clean stop keeps
//! what waits instead of answering it.
//!
//! What a stanza can still meet (see the README's "Federation"): one the
//! peer got and had not acknowledged when the stream or this server broke
//! goes again (XEP-0198 without resumption cannot tell), and one written
//! to a stream without stream management that breaks is lost with it.

use std::time::{Duration, Instant};

use super::{Pair, Server};
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

/// A failed load of the queues, or a failed deletion, is tried again
/// after this.
const RETRY: Duration = Duration::from_secs(5);

/// The store's name of the pair: `<ours> <theirs>` (no domain has a space).
fn store_name(pair: &Pair) -> String {
    let mut name = String::with_capacity(pair.0.len() + 1 + pair.1.len());
    name.push_str(&pair.0);
    name.push(' ');
    name.push_str(&pair.1);
    name
}

/// A stanza in a pair's queue.
pub(super) struct Queued {
    pub(super) item: Item,
    pub(super) keep: Keep,
}

/// A queued stanza, in `jabber:server` (see [`Server::s2s_answer`]).
pub(super) enum Item {
    /// Written when it goes out.
    Element(Element),
    /// Written once already, for the store and the stream: its element is
    /// gone (made again from these bytes only if it must be answered).
    Wire(String),
}

impl Queued {
    /// The stanza as an element, to be answered.
    pub(super) fn into_element(self, limits: &crate::config::Limits) -> Option<Element> {
        match self.item {
            Item::Element(el) => Some(el),
            Item::Wire(wire) => {
                let el = unwire(&wire, limits);
                if el.is_none() {
                    // (Never: written here from an element, parsed again
                    // without the input limits.)
                    log::error!("s2s: a stanza written does not parse again");
                }
                el
            }
        }
    }
}

/// A stanza written on a stream with stream management, until the peer's
/// `<a/>` covers it: its bytes only.
pub(super) struct Sent {
    pub(super) wire: String,
    pub(super) keep: Keep,
}

impl Sent {
    /// Back in the queue, to go again.
    pub(super) fn requeue(self) -> Queued {
        Queued {
            item: Item::Wire(self.wire),
            keep: self.keep,
        }
    }
}

/// A stanza as it went out (in `jabber:server` by its context), parsed.
/// Made here from an element, it is not held to the input limits (the
/// `from` stamped on it may make it longer than what came in).
fn unwire(wire: &str, limits: &crate::config::Limits) -> Option<Element> {
    let limits = crate::config::Limits {
        max_stanza_size: usize::MAX,
        ..limits.clone()
    };
    crate::xml::parse_fragment_in(wire, ns::SERVER, &limits)
}

/// Where a queued stanza is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Not worth keeping: in memory only.
    Memory,
    /// On its way to the store: the pair's number of the request.
    Storing(u64),
    /// In the store with this number, until the peer has it.
    Kept(u64),
}

/// The numbers of kept stanzas of one pair that go together (answered, or
/// covered by one `<a/>`): the lowest and the highest. A pair's numbers
/// rise in its queue's order, so nothing else of the pair is between.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span(Option<(u64, u64)>);

impl Span {
    pub(super) fn add(&mut self, keep: Keep) {
        if let Keep::Kept(seq) = keep {
            self.0 = Some(match self.0 {
                None => (seq, seq),
                Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
            });
        }
    }

    fn of(seq: u64) -> Span {
        Span(Some((seq, seq)))
    }
}

/// Loading what the last run left in the outboxes.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Loaded: the queues may go out.
    pub(super) done: bool,
    asking: bool,
    pub(super) retry_at: Option<Instant>,
    /// The lowest number the store gave a stanza of this run: the load
    /// takes only what is older.
    first_seq: Option<u64>,
}

/// What waits on a store request of federation's queues.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// The `n`th stanza kept for the pair.
    Queued { pair: Pair, n: u64 },
    /// The queues at start.
    Load,
    /// A deletion (tried again if it fails: a row left would go again
    /// after a restart).
    Forget { pair: Pair, span: Span },
}

impl Waiting {
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Queued { .. } => "the sender got internal-server-error",
            Waiting::Load => "loaded again in 5 s; nothing goes to other servers meanwhile",
            Waiting::Forget { .. } => "tried again in 5 s",
        }
    }
}

impl Server {
    /// Sends a routed stanza (`from` stamped, `to` set) to the remote
    /// domain `remote`.
    pub(crate) fn s2s_send(&mut self, now: Instant, remote: String, el: Element) {
        let Some(cfg) = self.s2s.config.as_ref() else {
            return self.bounce_routed(&el, SE::RemoteServerNotFound);
        };
        let limit = cfg.queue_limit;
        let local = el
            .attr("from")
            .and_then(|f| self.jids.parse(f).ok())
            .and_then(|f| self.s2s_local(f.domain().as_str()));
        let Some(local) = local else {
            // Only our own entities send to other servers.
            return self.bounce_routed(&el, SE::NotAllowed);
        };
        let worth = crate::stanza::worth_keeping(&el);
        if !worth && self.shutting_down() {
            // Its stream is going: nothing would send it.
            return self.bounce_routed(&el, SE::RemoteServerNotFound);
        }
        let pair = (local, remote);
        if !self.s2s.outs.contains_key(&pair) {
            self.s2s.outs.insert(pair.clone(), super::Out::new());
        }
        let out = self.s2s.outs.get_mut(&pair).expect("just made");
        if out.queue.len() >= limit {
            log::warn!("s2s: the queue to {} is full", pair.1);
            return self.bounce_routed(&el, SE::ResourceConstraint);
        }
        let mut el = el;
        super::renamespace(&mut el, ns::CLIENT, ns::SERVER);
        let (keep, item) = if worth {
            self.s2s.stored += 1;
            let n = self.s2s.stored;
            let wire = el.to_xml(ns::SERVER);
            // Its bytes from now on: the element goes while it is fresh.
            drop(el);
            self.fx.store(
                Pending::S2s(Waiting::Queued {
                    pair: pair.clone(),
                    n,
                }),
                StoreRequest::S2sKeep {
                    dest: store_name(&pair),
                    stanza: wire.clone(),
                },
            );
            (Keep::Storing(n), Item::Wire(wire))
        } else {
            (Keep::Memory, Item::Element(el))
        };
        out.queue.push_back(Queued { item, keep });
        self.s2s_load(now);
        self.s2s_flush(now, &pair);
        self.s2s_step(now, &pair);
    }

    /// Answers a queued stanza (in `jabber:server`) with an error.
    pub(super) fn s2s_answer(&mut self, mut el: Element, cond: SE) {
        super::renamespace(&mut el, ns::SERVER, ns::CLIENT);
        self.bounce_routed(&el, cond);
    }

    /// The pair's stanzas the store keeps up to number `upto` are deleted:
    /// the peer has them (or they were answered).
    pub(super) fn s2s_forget(&mut self, pair: &Pair, span: Span) {
        let Some((lo, upto)) = span.0 else {
            return;
        };
        let after = lo - 1;
        self.fx.store(
            Pending::S2s(Waiting::Forget {
                pair: pair.clone(),
                span,
            }),
            StoreRequest::S2sForget {
                dest: store_name(pair),
                after,
                upto,
            },
        );
    }

    /// Deletions that failed are tried again once due.
    pub(super) fn s2s_forget_again(&mut self, now: Instant) {
        let due: Vec<(Pair, Span)> = {
            let again = &mut self.s2s.forget_again;
            let (due, later) = core::mem::take(again)
                .into_iter()
                .partition(|(at, _, _)| *at <= now);
            *again = later;
            due.into_iter().map(|(_, p, s)| (p, s)).collect()
        };
        for (pair, span) in due {
            self.s2s_forget(&pair, span);
        }
    }

    /// Loads what the outboxes keep (at start, and again after a failure).
    pub(super) fn s2s_load(&mut self, now: Instant) {
        let load = &mut self.s2s.load;
        if load.done || load.asking || load.retry_at.is_some_and(|at| at > now) {
            return;
        }
        load.asking = true;
        self.fx
            .store(Pending::S2s(Waiting::Load), StoreRequest::LoadS2s);
    }

    /// A store request of federation's queues was answered.
    pub(crate) fn s2s_stored(&mut self, now: Instant, w: Waiting, reply: StoreReply) {
        match w {
            Waiting::Queued { pair, n } => self.s2s_kept(pair, n, reply),
            Waiting::Load => match reply {
                StoreReply::S2sQueues(rows) => self.s2s_loaded(now, rows),
                _ => {
                    let load = &mut self.s2s.load;
                    load.asking = false;
                    load.retry_at = Some(now + RETRY);
                }
            },
            Waiting::Forget { pair, span } => {
                if matches!(reply, StoreReply::Failed(_)) {
                    self.s2s.forget_again.push((now + RETRY, pair, span));
                }
            }
        }
    }

    /// The store kept (or refused) the pair's `n`th stanza.
    fn s2s_kept(&mut self, pair: Pair, n: u64, reply: StoreReply) {
        if let StoreReply::S2sKept(seq) = reply {
            let first = &mut self.s2s.load.first_seq;
            *first = Some(first.map_or(seq, |f| f.min(seq)));
        }
        let out = self.s2s.outs.get_mut(&pair);
        let at = out
            .as_ref()
            .and_then(|o| o.queue.iter().position(|q| q.keep == Keep::Storing(n)));
        let (Some(out), Some(at)) = (out, at) else {
            // Answered meanwhile (the domain could not be reached).
            if let StoreReply::S2sKept(seq) = reply {
                self.s2s_forget(&pair, Span::of(seq));
            }
            return;
        };
        match reply {
            StoreReply::S2sKept(seq) => out.queue[at].keep = Keep::Kept(seq),
            _ => {
                let q = out.queue.remove(at).expect("just found");
                if let Some(el) = q.into_element(&self.config.limits) {
                    self.s2s_answer(el, SE::InternalServerError);
                }
            }
        }
        // Once the caller has handed every answer of the batch.
        if let Some(out) = self.s2s.outs.get_mut(&pair) {
            if !std::mem::replace(&mut out.flush_later, true) {
                self.s2s.flush_later.push(pair);
            }
        }
    }

    /// The queues whose stanzas the store kept since the last call go out.
    pub(crate) fn s2s_flush_later(&mut self) {
        if self.s2s.flush_later.is_empty() {
            return;
        }
        let Some(now) = self.clock.now() else {
            return;
        };
        for pair in std::mem::take(&mut self.s2s.flush_later) {
            if let Some(out) = self.s2s.outs.get_mut(&pair) {
                out.flush_later = false;
                self.s2s_flush(now, &pair);
            }
        }
    }

    /// What the last run left in the outboxes goes before what came since.
    fn s2s_loaded(&mut self, now: Instant, rows: Vec<(String, u64, String)>) {
        let load = &mut self.s2s.load;
        load.done = true;
        load.asking = false;
        load.retry_at = None;
        let first = load.first_seq;
        let mut by_pair: Vec<(Pair, Vec<Queued>)> = Vec::new();
        let mut count = 0;
        for (dest, seq, stanza) in rows {
            if first.is_some_and(|f| seq >= f) {
                continue;
            }
            let pair = dest
                .split_once(' ')
                .map(|(l, r)| (l.to_owned(), r.to_owned()));
            // Kept as it goes out.
            let el = unwire(&stanza, &self.config.limits);
            let (Some(pair), Some(mut el)) = (pair, el) else {
                log::error!("s2s: a kept stanza for {dest:?} does not parse again; deleted");
                self.fx.store(
                    Pending::Ignore("it stays kept and is deleted again at the next start"),
                    StoreRequest::S2sForget {
                        dest,
                        after: seq - 1,
                        upto: seq,
                    },
                );
                continue;
            };
            if self.s2s_local(&pair.0).as_deref() != Some(pair.0.as_str()) {
                log::warn!(
                    "s2s: {} is no longer a domain of this server; what it kept for {} is \
                     answered",
                    pair.0,
                    pair.1
                );
                self.s2s_answer(el, SE::RemoteServerNotFound);
                self.s2s_forget(&pair, Span::of(seq));
                continue;
            }
            count += 1;
            super::renamespace(&mut el, ns::CLIENT, ns::SERVER);
            let q = Queued {
                item: Item::Element(el),
                keep: Keep::Kept(seq),
            };
            match by_pair.iter_mut().find(|(p, _)| *p == pair) {
                Some((_, list)) => list.push(q),
                None => by_pair.push((pair, vec![q])),
            }
        }
        if count > 0 {
            log::info!("s2s: {count} stanza(s) kept for other servers go out again");
        }
        for (pair, list) in by_pair {
            let out = self.s2s.outs.entry(pair).or_insert_with(super::Out::new);
            for q in list.into_iter().rev() {
                out.queue.push_front(q);
            }
        }
        let pairs: Vec<Pair> = self.s2s.outs.keys().cloned().collect();
        for pair in pairs {
            self.s2s_flush(now, &pair);
            self.s2s_step(now, &pair);
        }
    }
}
