//! Addresses: every JID from the outside is parsed here.
//!
//! The `jid` crate's normalization (nodeprep, UTS #46 for domains,
//! resourceprep) is not always idempotent: fuzzing found domains such as
//! `0\u{3f9}` that normalize to a string which normalizes again to a
//! different one. Two spellings of one address would then compare unequal
//! (roster keys, block lists, sessions). Parsing to a fixed point gives every
//! address one canonical form.

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
}
