//! SASL (RFC 6120 section 6): mechanisms, credentials and the SCRAM exchange.
//!
//! Supported: `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-1-PLUS` (channel binding
//! `tls-exporter`, RFC 9266), `SCRAM-SHA-256`, `SCRAM-SHA-1` (RFC 5802,
//! RFC 7677) and `PLAIN` (RFC 4616, offered only on encrypted streams).

pub mod scram;

pub use scram::{Credentials, ScramClient, ScramError, ScramHash, ScramKeys, ScramServer};

/// The `tls-exporter` label of RFC 9266.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// A SASL mechanism the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// SCRAM-SHA-256 with `tls-exporter` channel binding.
    ScramSha256Plus,
    /// SCRAM-SHA-1 with `tls-exporter` channel binding.
    ScramSha1Plus,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-1 (RFC 5802).
    ScramSha1,
    /// PLAIN (RFC 4616); only over TLS.
    Plain,
    /// EXTERNAL (RFC 4422 appendix A): the Kontalk client's certificate,
    /// offered alone to a client that presented one.
    External,
}

impl Mechanism {
    /// The password mechanisms, in order of preference.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA name of the mechanism.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }

    /// Parses a mechanism name as sent in `<auth mechanism='...'/>`.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .chain([Mechanism::External])
            .find(|m| m.name() == name)
    }

    /// Whether the mechanism needs channel binding data.
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }

    /// The hash of a SCRAM mechanism, `None` for PLAIN and EXTERNAL.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain | Mechanism::External => None,
        }
    }
}

/// Parses a PLAIN message (`authzid NUL authcid NUL passwd`, RFC 4616).
///
/// Returns `(authzid, authcid, password)`, or `None` when malformed.
pub fn parse_plain(msg: &[u8]) -> Option<(&str, &str, &str)> {
    let text = core::str::from_utf8(msg).ok()?;
    let mut parts = text.splitn(3, '\0');
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if authcid.is_empty() || password.is_empty() || password.contains('\0') {
        return None;
    }
    Some((authzid, authcid, password))
}

/// Normalizes a username for lookup: the nodeprep profile of RFC 7622,
/// the same normalization a JID's local part gets.
pub fn normalize_username(name: &str) -> Option<String> {
    let node = jid::NodePart::new(name).ok()?;
    Some(node.as_str().to_owned())
}

/// Prepares a password with SASLprep (RFC 4013); `None` when it is not acceptable.
pub fn prepare_password(password: &str) -> Option<String> {
    if password.is_empty() {
        return None;
    }
    stringprep::saslprep(password).ok().map(|p| p.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_parses_and_rejects() {
        assert_eq!(
            parse_plain(b"\0alice\0secret"),
            Some(("", "alice", "secret"))
        );
        assert_eq!(
            parse_plain(b"alice@x\0alice\0pw"),
            Some(("alice@x", "alice", "pw"))
        );
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
        assert_eq!(parse_plain(b"\xff\0a\0b"), None);
    }

    #[test]
    fn usernames_are_nodeprepped() {
        assert_eq!(normalize_username("Alice").as_deref(), Some("alice"));
        assert_eq!(normalize_username("a b@c"), None);
        assert_eq!(normalize_username(""), None);
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
    }
}
