//! Addresses: every JID from the outside is parsed here.
//!
//! The `jid` crate's normalization (nodeprep, UTS #46 for domains,
//! resourceprep) is not always idempotent: fuzzing found domains such as
//! `0\u{3f9}` that normalize to a string which normalizes again to a
//! different one. Two spellings of one address would then compare unequal
//! (roster keys, block lists, sessions). Parsing to a fixed point gives every
//! address one canonical form.

use std::collections::HashMap;

use jid::{BareJid, Jid};

/// Parses and normalizes a JID to its canonical form.
pub fn parse_jid(s: &str) -> Result<Jid, jid::Error> {
    let mut jid = Jid::new(s)?;
    // Two more passes reach the fixed point for every input fuzzing found;
    // the loop is bounded all the same.
    for _ in 0..4 {
        match Jid::new(jid.as_str()) {
            Ok(again) if again.as_str() != jid.as_str() => jid = again,
            _ => break,
        }
    }
    Ok(jid)
}

/// Parses a JID and keeps its bare part.
pub fn parse_bare(s: &str) -> Result<BareJid, jid::Error> {
    parse_jid(s).map(|j| j.into_bare())
}

/// The bare part of an address.
///
/// `jid`'s own `to_bare` builds the string with `format!`; copying it and
/// cutting the resource off is several times cheaper, and routing a stanza
/// takes the bare part of its addresses several times.
pub trait Bare {
    /// The bare JID (`node@domain` or `domain`).
    fn bare(&self) -> BareJid;
}

impl Bare for Jid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }
}

impl Bare for jid::FullJid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }
}

/// How many addresses a [`JidCache`] remembers before it starts afresh.
pub const JID_CACHE_SIZE: usize = 4096;

/// Remembers [`parse_jid`]'s canonical forms of recently seen addresses.
///
/// Normalization (stringprep and UTS #46, twice for the fixed point) is the
/// costliest part of routing a small stanza, and the same few addresses come
/// by again and again: every relayed stanza has its `to` parsed on the way
/// in and its `to` and `from` on the way out. Only successful parses are
/// kept; when [`JID_CACHE_SIZE`] addresses are known the cache is emptied,
/// so it never holds more than that.
#[derive(Debug)]
pub struct JidCache {
    known: HashMap<Box<str>, Jid, foldhash::fast::FixedState>,
}

impl JidCache {
    /// An empty cache whose map hashes with `hasher` (give it a secret
    /// seed: the addresses come from peers).
    pub fn new(hasher: foldhash::fast::FixedState) -> JidCache {
        JidCache {
            known: HashMap::with_hasher(hasher),
        }
    }

    /// [`parse_jid`], answered from memory when `s` was seen lately.
    pub fn parse(&mut self, s: &str) -> Result<Jid, jid::Error> {
        if let Some(jid) = self.known.get(s) {
            return Ok(jid.clone());
        }
        let jid = parse_jid(s)?;
        if self.known.len() >= JID_CACHE_SIZE {
            self.known.clear();
        }
        self.known.insert(s.into(), jid.clone());
        Ok(jid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_are_fixed_points() {
        // Found by the jid fuzz target.
        let j = parse_jid("0\u{3f9}").unwrap();
        assert_eq!(parse_jid(j.as_str()).unwrap(), j);
        assert_eq!(
            parse_jid("Alice@LocalHost/Phone").unwrap().as_str(),
            "alice@localhost/Phone"
        );
        assert_eq!(
            parse_bare("alice@localhost/x").unwrap().as_str(),
            "alice@localhost"
        );
        assert!(parse_jid("@@").is_err());
    }

    #[test]
    fn bare_is_to_bare() {
        for s in ["a@b/c", "a@b", "b/c", "b", "Alice@LocalHost/Phone/x"] {
            let j = parse_jid(s).unwrap();
            assert_eq!(j.bare(), j.to_bare());
            if let Ok(full) = j.clone().try_into_full() {
                assert_eq!(full.bare(), full.to_bare());
            }
        }
    }

    #[test]
    fn the_cache_answers_like_parse_jid_and_stays_bounded() {
        let mut cache = JidCache::new(foldhash::fast::FixedState::with_seed(7));
        for s in ["Alice@LocalHost/Phone", "0\u{3f9}", "a@b", "@@", "x@y/"] {
            for _ in 0..2 {
                assert_eq!(cache.parse(s), parse_jid(s), "{s}");
            }
        }
        for i in 0..JID_CACHE_SIZE * 2 + 3 {
            let s = format!("u{i}@example.org");
            assert_eq!(cache.parse(&s).unwrap().as_str(), s);
            assert!(cache.known.len() <= JID_CACHE_SIZE);
        }
    }
}
