//! Dialback keys (XEP-0185): a key proves to a receiving server that the
//! stream it was given came from a server that holds this domain's secret,
//! without either side keeping state per stream.
//!
//! The key is `HMAC-SHA256(hex(SHA-256(secret)), receiving, " ",
//! originating, " ", stream id)`, in lowercase hex. The secret survives
//! restarts (the runtime keeps it in the data directory), so that a key
//! sent before a restart still verifies after it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The keys of one server: the hex of its secret's SHA-256, kept as the
/// HMAC key.
#[derive(Clone)]
pub(crate) struct Keys {
    hmac_key: String,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// The keys made from `secret`.
    pub(crate) fn new(secret: &[u8]) -> Keys {
        Keys {
            hmac_key: hex(&Sha256::digest(secret)),
        }
    }

    /// The key for a stream with id `stream_id` that `originating` opened
    /// to `receiving`.
    pub(crate) fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.hmac_key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `key` is the one for this stream (in constant time).
    pub(crate) fn verify(
        &self,
        receiving: &str,
        originating: &str,
        stream_id: &str,
        key: &str,
    ) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        let given = key.trim().to_ascii_lowercase();
        expected.len() == given.len()
            && expected
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of XEP-0185 section 3 (its text and the vector the
    /// federation notes give).
    #[test]
    fn the_example_of_xep_0185() {
        let keys = Keys::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            keys.hmac_key,
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        let key = keys.key("xmpp.example.com", "example.org", "D60000229F");
        assert_eq!(
            key,
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(keys.verify("xmpp.example.com", "example.org", "D60000229F", &key));
        assert!(keys.verify(
            "xmpp.example.com",
            "example.org",
            "D60000229F",
            &key.to_ascii_uppercase()
        ));
    }

    #[test]
    fn another_stream_domain_or_secret_gives_another_key() {
        let keys = Keys::new(b"s3cr3tf0rd14lb4ck");
        let key = keys.key("xmpp.example.com", "example.org", "D60000229F");
        assert!(!keys.verify("xmpp.example.com", "example.org", "D60000229E", &key));
        assert!(!keys.verify("example.net", "example.org", "D60000229F", &key));
        assert!(!keys.verify("xmpp.example.com", "example.net", "D60000229F", &key));
        assert!(!keys.verify("xmpp.example.com", "example.org", "D60000229F", ""));
        assert!(!keys.verify("xmpp.example.com", "example.org", "D60000229F", &key[1..]));
        let other = Keys::new(b"another secret");
        assert!(!other.verify("xmpp.example.com", "example.org", "D60000229F", &key));
    }
}
