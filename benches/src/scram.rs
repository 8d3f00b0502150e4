//! The client side of SCRAM (RFC 5802, RFC 7677) for the load generator, with
//! the salted password cached per account.
//!
//! `proto_core::sasl::ScramClient` runs PBKDF2 (4096 iterations on kontalkd,
//! Prosody and ejabberd alike) on every login. The servers do not: they keep
//! the salted keys. A generator that recomputed PBKDF2 per login would spend
//! about 2 ms of CPU per login on its own side and measure itself, not the
//! server. Real clients cache the salted password (RFC 5802 section 5.1), so
//! this one does too; the arithmetic is `proto_core::sasl::ScramHash`'s, and a
//! test checks that the messages equal `ScramClient`'s byte for byte.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use proto_core::sasl::ScramHash;

/// (SHA-256?, username, salt, iterations).
type SaltKey = (bool, String, Vec<u8>, u32);

/// Salted passwords by (hash, username, salt, iterations), shared by threads.
#[derive(Default)]
pub struct SaltCache {
    map: Mutex<HashMap<SaltKey, Arc<Vec<u8>>>>,
}

impl SaltCache {
    /// An empty cache.
    pub fn new() -> SaltCache {
        SaltCache::default()
    }

    fn salted(
        &self,
        hash: ScramHash,
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Arc<Vec<u8>> {
        let key = (
            hash == ScramHash::Sha256,
            user.to_owned(),
            salt.to_vec(),
            iterations,
        );
        if let Some(v) = self.map.lock().expect("cache lock").get(&key) {
            return v.clone();
        }
        // Computed outside the lock: PBKDF2 takes milliseconds.
        let v = Arc::new(hash.salted_password(password.as_bytes(), salt, iterations));
        self.map.lock().expect("cache lock").insert(key, v.clone());
        v
    }
}

/// One SCRAM exchange without channel binding (`n,,`).
pub struct Scram {
    hash: ScramHash,
    username: String,
    password: String,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    /// Starts an exchange; `nonce` must be printable ASCII without commas.
    pub fn new(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Scram {
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Scram {
            hash,
            username: username.to_owned(),
            password: password.to_owned(),
            client_first_bare: format!("n={name},r={nonce}"),
            nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    /// The SASL mechanism name.
    pub fn mechanism(&self) -> &'static str {
        match self.hash {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// `client-first-message`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers `server-first-message` with `client-final-message`.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        cache: &SaltCache,
    ) -> Result<Vec<u8>, String> {
        let text = core::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for field in text.split(',') {
            if let Some(v) = field.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = field.strip_prefix("s=") {
                salt = Some(B64.decode(v).map_err(|_| "bad salt")?);
            } else if let Some(v) = field.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().map_err(|_| "bad iteration count")?);
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) if n.starts_with(&self.nonce) && i > 0 => (n, s, i),
            _ => return Err(format!("malformed server-first-message: {text}")),
        };
        let h = self.hash;
        let salted = cache.salted(h, &self.username, &self.password, &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks `server-final-message` (`v=...`): the server knew the password.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let text = core::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        let v = text
            .strip_prefix("v=")
            .ok_or_else(|| format!("server-final without verifier: {text}"))?;
        let v = B64.decode(v).map_err(|_| "bad verifier")?;
        match &self.server_signature {
            Some(sig) if *sig == v => Ok(()),
            _ => Err("wrong server signature".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_core::sasl::scram::ServerBinding;
    use proto_core::sasl::{Credentials, ScramClient, ScramServer};

    #[test]
    fn same_messages_as_proto_core_client_and_accepted_by_its_server() {
        let creds = Credentials::derive("pencil", b"0123456789abcdef", 64);
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let cache = SaltCache::new();
            for round in 0..2 {
                let mut reference = ScramClient::new(hash, "user", "pencil", "abcNONCE", None);
                let mut ours = Scram::new(hash, "user", "pencil", "abcNONCE");
                assert_eq!(ours.client_first(), reference.client_first());
                let mut server = ScramServer::new(hash, ServerBinding::Unsupported);
                assert_eq!(server.client_first(&ours.client_first()).unwrap(), "user");
                let first = server
                    .server_first(Some(creds.keys(hash)), &format!("srv{round}"), b"")
                    .unwrap();
                let fin = ours.client_final(&first, &cache).unwrap();
                assert_eq!(fin, reference.client_final(&first).unwrap());
                let server_final = server.client_final(&fin).unwrap();
                ours.verify_server_final(&server_final).unwrap();
                assert!(ours.verify_server_final(b"v=AAAA").is_err());
            }
            assert_eq!(
                cache.map.lock().unwrap().len(),
                1,
                "computed once per account"
            );
        }
    }
}
