//! # kontalkd-benches: measuring kontalkd against Prosody and ejabberd
//!
//! Three instruments live in this package:
//!
//! * `benches/core.rs`: criterion benches of proto-core's hot paths, driven in
//!   memory through `proto_core::testing` (no sockets).
//! * `kontalkd-load`: a load generator that speaks plain, standard XMPP
//!   (RFC 6120 streams, STARTTLS, SCRAM, bind, XEP-0077 registration) to any
//!   server on loopback, and reports the server's CPU time (from
//!   `/proc/PID/stat`) and memory (`VmRSS`) with every figure.
//! * `kontalkd-forwarder`: the physical limit. It answers the login
//!   handshake (real SCRAM, one password for every account) and then copies
//!   raw bytes from each connection to its paired connection, without
//!   looking at them: the same generator scenario moves the same bytes
//!   through it, with no XML and no routing.
//!
//! ## Accounts and pairs
//!
//! Every scenario uses the accounts `PREFIX0`, `PREFIX1`, ... (default
//! `b0`, `b1`, ...) with one password (default `benchpw`), created with
//! `kontalkd-load register` (in-band, XEP-0077) or the servers' own tools.
//! Relay pair `i` is sender `PREFIX{2i}` and receiver `PREFIX{2i+1}`; the
//! forwarder pairs account `PREFIXn` with `PREFIX(n xor 1)` the same way.
//!
//! The generator is threads and blocking sockets (std only): one thread per
//! relay pair, which writes a batch of messages whenever fewer than half of
//! its window are in flight and counts `</message>` end tags on the
//! receiving side instead of parsing XML.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod kontalk;
pub mod procfs;
pub mod report;
pub mod scan;
pub mod scram;
pub mod tls;

/// The name of account `i`.
pub fn account(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// The relay partner of an account named `PREFIXn` (`PREFIX(n xor 1)`),
/// `None` when the name does not end in digits.
pub fn partner(name: &str) -> Option<String> {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let n: usize = name[digits..].parse().ok()?;
    Some(format!("{}{}", &name[..digits], n ^ 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn partners_pair_even_and_odd() {
        assert_eq!(super::partner("b0").as_deref(), Some("b1"));
        assert_eq!(super::partner("b1").as_deref(), Some("b0"));
        assert_eq!(super::partner("x17").as_deref(), Some("x16"));
        assert_eq!(super::partner("alice"), None);
        assert_eq!(super::account("b", 3), "b3");
    }
}
