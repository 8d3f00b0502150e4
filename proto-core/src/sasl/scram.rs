//! SCRAM (RFC 5802, RFC 7677) with optional `tls-exporter` channel binding (RFC 9266).
//!
//! Both sides are here: [`ScramServer`] for the server core, and
//! [`ScramClient`] for tests and the load generator. The math uses the
//! RustCrypto `hmac`, `sha1`, `sha2` and `pbkdf2` crates.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    /// SHA-1 (SCRAM-SHA-1).
    Sha1,
    /// SHA-256 (SCRAM-SHA-256).
    Sha256,
}

impl ScramHash {
    /// `H(data)`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key size");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with HMAC of this hash.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out
            }
            ScramHash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// What the server stores for one hash: never the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl core::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// Derives the stored keys from a (SASLprepped) password.
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
        }
    }

    /// Checks a plaintext password against these keys (used by SASL PLAIN).
    pub fn verify_password(&self, hash: ScramHash, password: &str) -> bool {
        let salted = hash.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        constant_time_eq(&hash.hash(&client_key), &self.stored_key)
    }
}

/// The credentials of one account: SCRAM keys for both hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Keys for SCRAM-SHA-1.
    pub sha1: ScramKeys,
    /// Keys for SCRAM-SHA-256 (also used to check PLAIN).
    pub sha256: ScramKeys,
}

/// PBKDF2 iterations used for new credentials (RFC 7677 recommends at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

impl Credentials {
    /// Derives both key sets from a password; `salt` must be random (16 bytes or more).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Credentials {
        Credentials {
            sha1: ScramKeys::derive(ScramHash::Sha1, password, salt, iterations),
            sha256: ScramKeys::derive(ScramHash::Sha256, password, salt, iterations),
        }
    }

    /// The keys for one hash.
    pub fn keys(&self, hash: ScramHash) -> &ScramKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a SCRAM exchange failed; maps to a SASL failure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramError {
    /// The message does not follow the SCRAM grammar (`malformed-request`).
    Malformed,
    /// Wrong password or unknown user (`not-authorized`).
    NotAuthorized,
    /// An authorization identity other than the user (`invalid-authzid`).
    InvalidAuthzid,
    /// Channel binding is missing, unsupported or does not match (`not-authorized`).
    ChannelBinding,
    /// A message arrived in the wrong state (`malformed-request`).
    UnexpectedMessage,
}

/// Decodes a SCRAM `saslname` (`=2C` is `,`, `=3D` is `=`).
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['=', ',']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return None;
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Some(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Channel binding as seen by the server for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerBinding {
    /// No TLS: the server does not support channel binding on this stream.
    Unsupported,
    /// TLS with `tls-exporter` data; `plus` tells whether a `-PLUS` mechanism was chosen.
    Available {
        /// The exporter output (32 bytes) of this TLS session.
        data: Vec<u8>,
        /// Whether the client picked a `-PLUS` mechanism.
        plus: bool,
    },
}

#[derive(Debug)]
enum ServerState {
    Start,
    WantKeys {
        client_first_bare: String,
        client_nonce: String,
        gs2_header: String,
    },
    WantFinal {
        auth_message_prefix: String,
        nonce: String,
        gs2_header: String,
        keys: ScramKeys,
        known: bool,
    },
    Done,
}

/// The server side of one SCRAM exchange.
///
/// 1. [`client_first`](Self::client_first) parses the client's first message
///    and returns the username whose keys the caller must fetch.
/// 2. [`server_first`](Self::server_first) takes those keys (or `None` for an
///    unknown user: the exchange goes on with made-up keys and fails at the
///    end, so usernames cannot be probed) and returns the server's challenge.
/// 3. [`client_final`](Self::client_final) checks the proof and returns the
///    server's final message.
#[derive(Debug)]
pub struct ScramServer {
    hash: ScramHash,
    binding: ServerBinding,
    state: ServerState,
}

impl ScramServer {
    /// Starts an exchange for `hash` with the given channel-binding situation.
    pub fn new(hash: ScramHash, binding: ServerBinding) -> ScramServer {
        ScramServer {
            hash,
            binding,
            state: ServerState::Start,
        }
    }

    /// The hash of this exchange.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// Parses `client-first-message`; returns the (unnormalized) username.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, ServerState::Start) {
            return Err(ScramError::UnexpectedMessage);
        }
        let text = core::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (cbflag, rest) = text.split_once(',').ok_or(ScramError::Malformed)?;
        let (raw_authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        match (cbflag, &self.binding) {
            ("n", ServerBinding::Available { plus: true, .. }) => {
                return Err(ScramError::ChannelBinding)
            }
            ("n", _) => {}
            // The client could bind but believes we cannot: a downgrade when we offer -PLUS.
            ("y", ServerBinding::Available { .. }) => return Err(ScramError::ChannelBinding),
            ("y", ServerBinding::Unsupported) => {}
            ("p=tls-exporter", ServerBinding::Available { plus: true, .. }) => {}
            (flag, _) if flag.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        if let (ServerBinding::Available { plus: true, .. }, false) =
            (&self.binding, cbflag.starts_with("p="))
        {
            return Err(ScramError::ChannelBinding);
        }
        let authzid = if raw_authzid.is_empty() {
            None
        } else {
            let a = raw_authzid
                .strip_prefix("a=")
                .ok_or(ScramError::Malformed)?;
            Some(decode_saslname(a).ok_or(ScramError::Malformed)?)
        };
        let mut fields = bare.split(',');
        let user = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .ok_or(ScramError::Malformed)?;
        let username = decode_saslname(user).ok_or(ScramError::Malformed)?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if !is_printable_nonce(nonce) || username.is_empty() {
            return Err(ScramError::Malformed);
        }
        if let Some(authzid) = authzid {
            // Only "act as yourself" is allowed: the bare JID or the username.
            let own = authzid == username
                || authzid
                    .split_once('@')
                    .is_some_and(|(node, _)| node == username);
            if !own {
                return Err(ScramError::InvalidAuthzid);
            }
        }
        self.state = ServerState::WantKeys {
            client_first_bare: bare.to_owned(),
            client_nonce: nonce.to_owned(),
            gs2_header: format!("{cbflag},{raw_authzid},"),
        };
        Ok(username)
    }

    /// Builds `server-first-message`. `server_nonce` must be fresh random
    /// printable characters; `fallback_salt` is used for unknown users.
    pub fn server_first(
        &mut self,
        keys: Option<&ScramKeys>,
        server_nonce: &str,
        fallback_salt: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let ServerState::WantKeys {
            client_first_bare,
            client_nonce,
            gs2_header,
        } = core::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::UnexpectedMessage);
        };
        let known = keys.is_some();
        let keys = match keys {
            Some(k) => k.clone(),
            None => ScramKeys {
                salt: fallback_salt.to_vec(),
                iterations: DEFAULT_ITERATIONS,
                stored_key: self.hash.hash(fallback_salt),
                server_key: self.hash.hash(server_nonce.as_bytes()),
            },
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        self.state = ServerState::WantFinal {
            auth_message_prefix: format!("{client_first_bare},{server_first}"),
            nonce,
            gs2_header,
            keys,
            known,
        };
        Ok(server_first.into_bytes())
    }

    /// Checks `client-final-message`; on success returns `server-final-message`.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::WantFinal {
            auth_message_prefix,
            nonce,
            gs2_header,
            keys,
            known,
        } = core::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::UnexpectedMessage);
        };
        let text = core::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let cb = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        let got_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        let cb = B64.decode(cb).map_err(|_| ScramError::Malformed)?;
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        let mut expected_cb = gs2_header.clone().into_bytes();
        if gs2_header.starts_with("p=") {
            if let ServerBinding::Available { data, .. } = &self.binding {
                expected_cb.extend_from_slice(data);
            }
        }
        if !constant_time_eq(&cb, &expected_cb) {
            return Err(ScramError::ChannelBinding);
        }
        if got_nonce != nonce {
            return Err(ScramError::NotAuthorized);
        }
        let auth_message = format!("{auth_message_prefix},{without_proof}");
        let signature = self.hash.hmac(&keys.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !known || !constant_time_eq(&self.hash.hash(&client_key), &keys.stored_key) {
            return Err(ScramError::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The client side of a SCRAM exchange (for tests and the load generator).
#[derive(Debug)]
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange. `binding` is `Some(exporter data)` to use
    /// `p=tls-exporter` (a `-PLUS` mechanism), `None` for `n`.
    pub fn new(
        hash: ScramHash,
        username: &str,
        password: &str,
        nonce: &str,
        binding: Option<Vec<u8>>,
    ) -> ScramClient {
        let (gs2_header, cb_data) = match binding {
            Some(data) => ("p=tls-exporter,,".to_owned(), data),
            None => ("n,,".to_owned(), Vec::new()),
        };
        ScramClient {
            hash,
            password: password.to_owned(),
            gs2_header,
            cb_data,
            client_first_bare: format!("n={},r={nonce}", encode_saslname(username)),
            client_nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    /// `client-first-message`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    /// Answers `server-first-message` with `client-final-message`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = core::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for field in text.split(',') {
            if let Some(v) = field.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = field.strip_prefix("s=") {
                salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed)?);
            } else if let Some(v) = field.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().map_err(|_| ScramError::Malformed)?);
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) if n.starts_with(&self.client_nonce) && i > 0 => (n, s, i),
            _ => return Err(ScramError::Malformed),
        };
        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        let stored_key = self.hash.hash(&client_key);
        let mut cb = self.gs2_header.clone().into_bytes();
        cb.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(&cb));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hash.hmac(&salted, b"Server Key");
        self.server_signature = Some(self.hash.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks `server-final-message` (mutual authentication).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = core::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        let v = text.strip_prefix("v=").ok_or(ScramError::NotAuthorized)?;
        let v = B64.decode(v).map_err(|_| ScramError::Malformed)?;
        match &self.server_signature {
            Some(sig) if constant_time_eq(sig, &v) => Ok(()),
            _ => Err(ScramError::NotAuthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 section 5: user "user", password "pencil".
    #[test]
    fn rfc5802_sha1_vector() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let keys = ScramKeys::derive(ScramHash::Sha1, "pencil", &salt, 4096);
        let mut server = ScramServer::new(ScramHash::Sha1, ServerBinding::Unsupported);
        let user = server
            .client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
            .unwrap();
        assert_eq!(user, "user");
        let first = server
            .server_first(Some(&keys), "3rfcNHYJY1ZVvWVs7j", b"")
            .unwrap();
        assert_eq!(
            first,
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let fin = server
            .client_final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
            .unwrap();
        assert_eq!(fin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");

        let mut client = ScramClient::new(
            ScramHash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
            None,
        );
        assert_eq!(
            client.client_first(),
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        );
        let cf = client
            .client_final(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            cf,
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        client
            .verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
    }

    /// RFC 7677 section 3: user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive(ScramHash::Sha256, "pencil", &salt, 4096);
        let mut server = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        server
            .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let first = server
            .server_first(Some(&keys), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", b"")
            .unwrap();
        assert_eq!(
            first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = server
            .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(keys.verify_password(ScramHash::Sha256, "pencil"));
        assert!(!keys.verify_password(ScramHash::Sha256, "pencil2"));
    }

    fn run(
        hash: ScramHash,
        server_binding: ServerBinding,
        client_binding: Option<Vec<u8>>,
        password: &str,
    ) -> Result<(), ScramError> {
        let keys = ScramKeys::derive(hash, "secret", b"0123456789abcdef", 4096);
        let mut server = ScramServer::new(hash, server_binding);
        let mut client = ScramClient::new(hash, "alice", password, "clientnonce", client_binding);
        server.client_first(&client.client_first())?;
        let sf = server.server_first(Some(&keys), "servernonce", b"x")?;
        let cf = client.client_final(&sf)?;
        let fin = server.client_final(&cf)?;
        client.verify_server_final(&fin)
    }

    #[test]
    fn channel_binding_matches_and_mismatches() {
        let data = vec![7u8; 32];
        let plus = ServerBinding::Available {
            data: data.clone(),
            plus: true,
        };
        assert_eq!(
            run(ScramHash::Sha256, plus.clone(), Some(data), "secret"),
            Ok(())
        );
        assert_eq!(
            run(
                ScramHash::Sha256,
                plus.clone(),
                Some(vec![8u8; 32]),
                "secret"
            ),
            Err(ScramError::ChannelBinding)
        );
        // A -PLUS mechanism without binding is refused.
        assert_eq!(
            run(ScramHash::Sha1, plus, None, "secret"),
            Err(ScramError::ChannelBinding)
        );
        let plain_tls = ServerBinding::Available {
            data: vec![1; 32],
            plus: false,
        };
        assert_eq!(run(ScramHash::Sha1, plain_tls, None, "secret"), Ok(()));
        assert_eq!(
            run(ScramHash::Sha1, ServerBinding::Unsupported, None, "wrong"),
            Err(ScramError::NotAuthorized)
        );
    }

    #[test]
    fn downgrade_and_garbage_are_refused() {
        let tls = ServerBinding::Available {
            data: vec![1; 32],
            plus: false,
        };
        let mut s = ScramServer::new(ScramHash::Sha256, tls);
        assert_eq!(
            s.client_first(b"y,,n=a,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        assert_eq!(s.client_first(b"y,,n=a,r=abc"), Ok("a".to_owned()));
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=a,r=b",
            b"n,,r=b",
            b"n,,n=a",
            b"n,,n=a=,r=b",
            b"\xff",
        ] {
            let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
            assert!(s.client_first(bad).is_err(), "{bad:?}");
        }
        let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        assert_eq!(
            s.client_first(b"n,a=bob,n=alice,r=abc"),
            Err(ScramError::InvalidAuthzid)
        );
        let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        assert_eq!(
            s.client_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::UnexpectedMessage)
        );
    }

    #[test]
    fn unknown_user_fails_only_at_the_end() {
        let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        let mut c = ScramClient::new(ScramHash::Sha256, "ghost", "pw", "cn", None);
        s.client_first(&c.client_first()).unwrap();
        let sf = s.server_first(None, "sn", b"fakesaltfakesalt").unwrap();
        let cf = c.client_final(&sf).unwrap();
        assert_eq!(s.client_final(&cf), Err(ScramError::NotAuthorized));
    }

    #[test]
    fn replayed_final_message_is_refused() {
        let keys = ScramKeys::derive(ScramHash::Sha256, "pw", b"saltsaltsaltsalt", 4096);
        let mut s = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        let mut c = ScramClient::new(ScramHash::Sha256, "alice", "pw", "cn1", None);
        s.client_first(&c.client_first()).unwrap();
        let sf = s.server_first(Some(&keys), "sn1", b"").unwrap();
        let cf = c.client_final(&sf).unwrap();
        s.client_final(&cf).unwrap();
        // A second exchange with a fresh server nonce rejects the old proof.
        let mut s2 = ScramServer::new(ScramHash::Sha256, ServerBinding::Unsupported);
        s2.client_first(&c.client_first()).unwrap();
        s2.server_first(Some(&keys), "sn2", b"").unwrap();
        assert_eq!(s2.client_final(&cf), Err(ScramError::NotAuthorized));
    }
}
