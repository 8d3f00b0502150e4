//! The Kontalk client's X.509 "bridge" certificate, and the server's checks
//! on it (KONTALK.md, sections 1 C, 2 and 3).
//!
//! The client wraps its OpenPGP key in a self-signed certificate whose
//! public key is the OpenPGP primary RSA key and whose extension
//! [`PGP_EXTENSION_OID`] holds the binary OpenPGP keyring. The certificate
//! is odd (a SHA-1 signature, notAfter equal to notBefore, a
//! subjectAltName that is not valid DER for its type), so it is read
//! leniently: extensions are not parsed, and only the SubjectPublicKeyInfo
//! and the OpenPGP extension are used. Dates, chain and signature are not
//! checked; the OpenPGP key's own signatures are what count.

use std::collections::VecDeque;
use std::fmt;

use sha2::{Digest, Sha256};

use x509_parser::asn1_rs::{BitString, FromDer};
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser;
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;

use super::keys::{
    email_domain, expired_at, strip_zeros, to_binary, uid_email, KeyError, ServerKey, UserKey,
};
use crate::server::IdMap;

/// The OID of the extension that holds the OpenPGP keyring (the UUID
/// 24e844a0-6cbc-11e3-8997-0002a5d5c51b as an OID under 2.25).
pub const PGP_EXTENSION_OID: &str = "2.25.49058212633447845622587297037800555803";

/// [`PGP_EXTENSION_OID`], DER-encoded (the content octets of the OBJECT IDENTIFIER).
pub const PGP_EXTENSION_OID_DER: [u8; 19] = [
    0x69, 0xc9, 0xe8, 0xa2, 0xa8, 0x8d, 0xcb, 0xe0, 0xc7, 0xc7, 0x89, 0xcb, 0xc0, 0x80, 0xaa, 0xae,
    0xd7, 0x8a, 0x1b,
];

/// Why a bridge certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// The bytes are not an X.509 certificate.
    BadCertificate(String),
    /// The certificate has no OpenPGP extension.
    NoPgpExtension,
    /// The OpenPGP extension is not a BIT STRING with no unused bits.
    BadPgpExtension,
    /// The certificate's public key is not RSA.
    NotRsa,
    /// The certificate's key is not the OpenPGP primary key.
    KeyMismatch,
    /// The user id's email is not in the server's domain.
    WrongDomain,
    /// The OpenPGP key was refused (unreadable, revoked, expired, not certified, ...).
    Key(KeyError),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::BadCertificate(e) => write!(f, "not a readable X.509 certificate: {e}"),
            CertError::NoPgpExtension => write!(f, "the certificate has no OpenPGP extension"),
            CertError::BadPgpExtension => {
                write!(f, "the OpenPGP extension is not a whole BIT STRING")
            }
            CertError::NotRsa => write!(f, "the certificate's public key is not RSA"),
            CertError::KeyMismatch => {
                write!(f, "the certificate's key is not the OpenPGP primary key")
            }
            CertError::WrongDomain => write!(f, "the user id is not in the server's domain"),
            CertError::Key(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CertError {}

impl From<KeyError> for CertError {
    fn from(e: KeyError) -> Self {
        CertError::Key(e)
    }
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (_, cert) = X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der)
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    Ok(cert)
}

/// Whether `der` is a certificate that carries the OpenPGP extension.
pub fn has_pgp_extension(der: &[u8]) -> bool {
    parse_x509(der).is_ok_and(|cert| {
        cert.extensions()
            .iter()
            .any(|ext| ext.oid.as_bytes() == PGP_EXTENSION_OID_DER)
    })
}

/// What a bridge certificate holds: the RSA key and the OpenPGP keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeCert {
    modulus: Vec<u8>,
    exponent: Vec<u8>,
    keyring: Vec<u8>,
}

impl BridgeCert {
    /// Reads a certificate (DER): its RSA public key and the binary
    /// OpenPGP keyring of its OpenPGP extension.
    pub fn parse(der: &[u8]) -> Result<BridgeCert, CertError> {
        let cert = parse_x509(der)?;
        let ext = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.as_bytes() == PGP_EXTENSION_OID_DER)
            .ok_or(CertError::NoPgpExtension)?;
        let (rest, bits) =
            BitString::from_der(ext.value).map_err(|_| CertError::BadPgpExtension)?;
        if !rest.is_empty() || bits.unused_bits != 0 {
            return Err(CertError::BadPgpExtension);
        }
        let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
            return Err(CertError::NotRsa);
        };
        Ok(BridgeCert {
            modulus: strip_zeros(rsa.modulus).to_vec(),
            exponent: strip_zeros(rsa.exponent).to_vec(),
            keyring: bits.data.into_owned(),
        })
    }

    /// The binary OpenPGP keyring of the extension.
    pub fn keyring(&self) -> &[u8] {
        &self.keyring
    }

    /// The certificate's RSA key: big-endian modulus and exponent, without leading zeros.
    pub fn rsa(&self) -> (&[u8], &[u8]) {
        (&self.modulus, &self.exponent)
    }

    /// Whether the certificate's RSA key is the primary key of `key`.
    pub fn key_matches(&self, key: &UserKey) -> bool {
        key.primary_rsa()
            .is_some_and(|(n, e)| n == self.modulus && e == self.exponent)
    }

    /// Parses the keyring and checks that its primary key is the certificate's.
    fn matching_key(&self) -> Result<UserKey, CertError> {
        let key = UserKey::parse(&self.keyring)?;
        if key.primary_rsa().is_none() {
            return Err(KeyError::NotRsa.into());
        }
        if !self.key_matches(&key) {
            return Err(CertError::KeyMismatch);
        }
        Ok(key)
    }
}

/// The key of the registration code step, as the certificate gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The JID: the first user id's email, lowercase.
    pub jid: String,
    /// The fingerprint of the primary key (40 uppercase hex digits).
    pub fingerprint: String,
    /// The binary keyring of the certificate (still to be certified).
    pub key: Vec<u8>,
}

/// The registration code step (KONTALK.md 1 C): the certificate carries the
/// OpenPGP extension, its key is the keyring's primary key, and the first
/// user id's email has the domain `domain`. Whether the code is valid for
/// that JID is the caller's to check; [`super::keys::certify`] then signs the key.
pub fn check_registration(der: &[u8], domain: &str) -> Result<Registration, CertError> {
    let key = BridgeCert::parse(der)?.matching_key()?;
    let first = key
        .user_ids()
        .into_iter()
        .next()
        .ok_or(KeyError::NoMatchingUid)?;
    let email = uid_email(&first);
    if !email_domain(email).is_some_and(|d| d.eq_ignore_ascii_case(domain)) {
        return Err(CertError::WrongDomain);
    }
    Ok(Registration {
        jid: email.to_ascii_lowercase(),
        fingerprint: key.fingerprint(),
        key: key.bytes().to_vec(),
    })
}

/// The key a SASL EXTERNAL login presented, once it passed [`check_login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginKey {
    /// The JID: the email of the certified user id, lowercase.
    pub jid: String,
    /// The fingerprint of the primary key (40 uppercase hex digits).
    pub fingerprint: String,
    /// The creation time of the primary key, in unix seconds.
    pub created: u64,
    /// The binary keyring of the certificate.
    pub key: Vec<u8>,
}

/// SASL EXTERNAL (KONTALK.md section 3, steps 1 and 3 to 6): the
/// certificate carries the OpenPGP extension and its key is the keyring's
/// primary key; that key is neither revoked nor expired at `now_unix`
/// (nor created in the future); and a user id whose email has the domain
/// `domain` carries a generic (0x10) or casual (0x12) certification by the
/// server's primary key that verifies. The JID is that email. Comparing
/// the fingerprint with the stored one (step 7) is the caller's.
pub fn check_login(
    der: &[u8],
    domain: &str,
    server: &ServerKey,
    now_unix: u64,
) -> Result<LoginKey, CertError> {
    let cert = BridgeCert::parse(der)?;
    verify_login(&cert, domain, server, &[])?.login(&cert, now_unix)
}

/// What [`check_login`] finds in a certificate apart from the time: the
/// checks that need the signatures, which are most of a login's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    jid: String,
    fingerprint: String,
    created: u64,
    expires: Option<u64>,
}

/// The checks of [`check_login`] that do not depend on the time; the
/// certification may also be by one of `network`, the keys of the other
/// servers of the network.
fn verify_login(
    cert: &BridgeCert,
    domain: &str,
    server: &ServerKey,
    network: &[&UserKey],
) -> Result<Verified, CertError> {
    let key = cert.matching_key()?;
    if key.is_revoked() {
        return Err(KeyError::Revoked.into());
    }
    let email = key
        .certified_email_in(server, domain)
        .or_else(|| {
            network
                .iter()
                .find_map(|other| key.certified_email_in_by(other, domain))
        })
        .ok_or(KeyError::NotCertified)?;
    Ok(Verified {
        jid: email.to_ascii_lowercase(),
        fingerprint: key.fingerprint(),
        created: key.created(),
        expires: key.expires(),
    })
}

impl Verified {
    /// The login with `cert`'s key at `now_unix`, unless the key is expired
    /// then (or created in the future).
    fn login(self, cert: &BridgeCert, now_unix: u64) -> Result<LoginKey, CertError> {
        if expired_at(self.created, self.expires, now_unix) {
            return Err(KeyError::Expired.into());
        }
        Ok(LoginKey {
            jid: self.jid,
            fingerprint: self.fingerprint,
            created: self.created,
            key: to_binary(cert.keyring())?,
        })
    }
}

/// How many certificates [`LoginCache`] remembers.
pub const LOGIN_CACHE_SIZE: usize = 16_384;

/// The certificates that logged in lately, by the SHA-256 of the domain and
/// their DER, with what [`check_login`] verified in them apart from the
/// time: a client logs in with the same certificate every time it connects,
/// and the signatures' checks are most of an EXTERNAL login's cost. Only
/// certificates that passed are kept (about 150 bytes each), at most
/// [`LOGIN_CACHE_SIZE`], the oldest forgotten first. The verdict depends on
/// nothing else but the server's key: a cache belongs to one server key.
#[derive(Debug)]
pub struct LoginCache {
    verified: IdMap<[u8; 32], Verified>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl Default for LoginCache {
    fn default() -> Self {
        LoginCache::with_capacity(LOGIN_CACHE_SIZE)
    }
}

impl LoginCache {
    /// A cache of at most `capacity` certificates (at least one).
    pub fn with_capacity(capacity: usize) -> LoginCache {
        LoginCache {
            verified: IdMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// [`check_login`], with the checks of a certificate seen before taken
    /// from the cache, and a certification by one of `network` (the keys of
    /// the other servers of a Kontalk network) accepted too. A verdict kept
    /// stays right as more servers' keys are learnt (only passes are kept,
    /// and more keys only pass more); when a server's key changes, the
    /// cache is emptied.
    pub fn check_login(
        &mut self,
        der: &[u8],
        domain: &str,
        server: &ServerKey,
        network: &[&UserKey],
        now_unix: u64,
    ) -> Result<LoginKey, CertError> {
        let cert = BridgeCert::parse(der)?;
        let mut hash = Sha256::new();
        hash.update(domain.to_ascii_lowercase().as_bytes());
        hash.update([0]);
        hash.update(der);
        let digest: [u8; 32] = hash.finalize().into();
        let verified = match self.verified.get(&digest) {
            Some(v) => v.clone(),
            None => {
                let v = verify_login(&cert, domain, server, network)?;
                if self.order.len() >= self.capacity {
                    if let Some(oldest) = self.order.pop_front() {
                        self.verified.remove(&oldest);
                    }
                }
                self.order.push_back(digest);
                self.verified.insert(digest, v.clone());
                v
            }
        };
        verified.login(&cert, now_unix)
    }

    /// How many certificates it remembers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use pgp::composed::Deserializable;

    use super::super::fixtures::{
        bridge_cert, fixture, public_bytes, read_tlv, rsa_private, sha1_digest_info, user_cert,
        user_expiring, user_revoked_by, user_with_first_uid, DOMAIN, NOW, SHA1_WITH_RSA,
        USER_CREATED,
    };
    use super::super::keys::{certify, certify_as};
    use super::*;

    fn user_bytes() -> Vec<u8> {
        public_bytes(&fixture().user)
    }

    fn certified(bytes: &[u8]) -> Vec<u8> {
        let f = fixture();
        certify(&f.server, bytes, &f.jid, [7; 32], NOW).unwrap()
    }

    /// The DER content octets of a dotted OID, arcs up to 128 bits.
    fn oid_der(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u128> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut out = Vec::new();
        for arc in std::iter::once(arcs[0] * 40 + arcs[1]).chain(arcs[2..].iter().copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push((rest & 0x7f) as u8 | 0x80);
                rest >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    #[test]
    fn the_oid_constants_agree() {
        assert_eq!(oid_der(PGP_EXTENSION_OID), PGP_EXTENSION_OID_DER);
        // And the OID is the UUID of KONTALK.md, read as one integer.
        let uuid = u128::from_str_radix("24e844a06cbc11e389970002a5d5c51b", 16).unwrap();
        assert_eq!(PGP_EXTENSION_OID, format!("2.25.{uuid}"));
    }

    #[test]
    fn the_test_certificate_is_made_like_the_clients() {
        let f = fixture();
        let keyring = certified(&user_bytes());
        let der = user_cert(&f.user, &keyring);
        let (rest, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(cert.version().0, 2);
        assert_eq!(cert.raw_serial(), [1]);
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(cert.validity().not_before, cert.validity().not_after);
        assert_eq!(cert.validity().not_before.timestamp(), USER_CREATED as i64);
        assert_eq!(
            cert.signature_algorithm.algorithm.as_bytes(),
            &SHA1_WITH_RSA[2..]
        );
        // The client's seven extensions, in its order.
        let oids: Vec<String> = cert
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        assert_eq!(
            oids[..6],
            [
                "2.5.29.19",
                "2.5.29.15",
                "2.16.840.1.113730.1.1",
                "2.5.29.14",
                "2.5.29.35",
                "2.5.29.17"
            ]
        );
        assert_eq!(oids.len(), 7);
        assert_eq!(cert.extensions()[6].oid.as_bytes(), PGP_EXTENSION_OID_DER);
        assert!(cert.extensions()[0].critical && cert.extensions()[1].critical);
        assert!(!cert.extensions()[6].critical);
        // The subjectAltName is the client's: no [0] EXPLICIT around the UTF8String.
        let (_, san, _) = read_tlv(cert.extensions()[5].value);
        let (tag, other_name, _) = read_tlv(san);
        assert_eq!(tag, 0xa0);
        let (_, _, oid_len) = read_tlv(other_name);
        let (tag, jid, _) = read_tlv(&other_name[oid_len..]);
        assert_eq!((tag, jid), (0x0c, f.jid.as_bytes()));
        // The SHA-1 signature verifies with the certificate's key.
        let (_, outer, _) = read_tlv(&der);
        let (_, _, tbs_len) = read_tlv(outer);
        let rsa = rsa_private(&f.user.primary_key).to_public_key();
        rsa.verify(
            rsa::Pkcs1v15Sign::new_unprefixed(),
            &sha1_digest_info(&outer[..tbs_len]),
            &cert.signature_value.data,
        )
        .unwrap();
    }

    #[test]
    fn parse_finds_the_keyring_and_the_key() {
        let f = fixture();
        let keyring = certified(&user_bytes());
        let der = user_cert(&f.user, &keyring);
        assert!(has_pgp_extension(&der));
        let cert = BridgeCert::parse(&der).unwrap();
        assert_eq!(cert.keyring(), keyring);
        let key = UserKey::parse(cert.keyring()).unwrap();
        assert!(cert.key_matches(&key));
        let (n, e) = key.primary_rsa().unwrap();
        assert_eq!(cert.rsa(), (&n[..], &e[..]));
        // Another key's certificate does not match.
        let other = UserKey::parse(&f.server.public_bytes()).unwrap();
        assert!(!cert.key_matches(&other));
    }

    #[test]
    fn a_certificate_without_the_extension_or_not_a_certificate() {
        let f = fixture();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let plain = params.self_signed(&key).unwrap();
        assert!(!has_pgp_extension(plain.der()));
        assert_eq!(
            BridgeCert::parse(plain.der()),
            Err(CertError::NoPgpExtension)
        );
        assert!(!has_pgp_extension(b"garbage"));
        assert!(matches!(
            BridgeCert::parse(b"garbage"),
            Err(CertError::BadCertificate(_))
        ));
        // An extension that holds something else than a keyring.
        let der = bridge_cert(
            &rsa_private(&f.user.primary_key),
            b"not a key",
            "x",
            &[],
            USER_CREATED,
        );
        assert!(matches!(
            check_login(&der, DOMAIN, &f.server, NOW),
            Err(CertError::Key(KeyError::BadPacket(_)))
        ));
    }

    #[test]
    fn a_good_certified_key_logs_in() {
        let f = fixture();
        let keyring = certified(&user_bytes());
        let login = check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.server, NOW).unwrap();
        assert_eq!(login.jid, f.jid);
        assert_eq!(
            login.fingerprint,
            UserKey::parse(&keyring).unwrap().fingerprint()
        );
        assert_eq!(login.created, USER_CREATED);
        assert_eq!(login.key, keyring);
        // The domain compares without case; the JID comes back lowercase.
        let login =
            check_login(&user_cert(&f.user, &keyring), "LocalHost", &f.server, NOW).unwrap();
        assert_eq!(login.jid, f.jid);
    }

    #[test]
    fn a_certificate_of_another_key_fails() {
        let f = fixture();
        let keyring = certified(&user_bytes());
        // The keyring is right, the certificate's key is the other server's.
        let der = bridge_cert(
            &rsa_private(f.other_server.secret_primary()),
            &keyring,
            "Test User",
            &[&f.jid],
            USER_CREATED,
        );
        assert_eq!(
            check_login(&der, DOMAIN, &f.server, NOW),
            Err(CertError::KeyMismatch)
        );
        assert_eq!(
            check_registration(&der, DOMAIN),
            Err(CertError::KeyMismatch)
        );
    }

    #[test]
    fn a_revoked_key_fails() {
        let f = fixture();
        // Certified first, then revoked (as a rollover leaves the old key).
        let signed = certified(&user_bytes());
        let mut key = fixture().user.clone();
        let parsed = pgp::composed::SignedPublicKey::from_bytes(&signed[..]).unwrap();
        key.details.users = parsed.details.users.clone();
        let revoked = user_revoked_by(None);
        key.details.revocation_signatures = revoked.details.revocation_signatures.clone();
        let keyring = public_bytes(&key);
        assert!(UserKey::parse(&keyring)
            .unwrap()
            .certified_by(&f.server, &f.jid));
        assert_eq!(
            check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.server, NOW),
            Err(CertError::Key(KeyError::Revoked))
        );
    }

    #[test]
    fn a_uid_certified_by_another_server_fails() {
        let f = fixture();
        let keyring = certify(&f.other_server, &user_bytes(), &f.jid, [7; 32], NOW).unwrap();
        assert_eq!(
            check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.server, NOW),
            Err(CertError::Key(KeyError::NotCertified))
        );
        // And the server's own check passes it for the other server.
        assert!(check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.other_server, NOW).is_ok());
    }

    #[test]
    fn a_uid_certified_by_a_server_of_the_network_logs_in_through_the_cache() {
        let f = fixture();
        let keyring = certify(&f.other_server, &user_bytes(), &f.jid, [7; 32], NOW).unwrap();
        let der = user_cert(&f.user, &keyring);
        let mut cache = LoginCache::default();
        // Not while the other server's key is unknown (and nothing is kept).
        assert_eq!(
            cache.check_login(&der, DOMAIN, &f.server, &[], NOW),
            Err(CertError::Key(KeyError::NotCertified))
        );
        assert!(cache.is_empty());
        // With it: the login passes, as one certified here does.
        let other = f.other_server.public_key();
        let login = cache
            .check_login(&der, DOMAIN, &f.server, &[other], NOW)
            .unwrap();
        assert_eq!(login.jid, f.jid);
        // Certified by a server that is not of the network: still refused.
        let mut cache = LoginCache::default();
        let stranger = certify(&f.other_server, &user_bytes(), &f.jid, [8; 32], NOW).unwrap();
        assert_eq!(
            cache.check_login(
                &user_cert(&f.user, &stranger),
                DOMAIN,
                &f.server,
                &[f.server.public_key()],
                NOW
            ),
            Err(CertError::Key(KeyError::NotCertified))
        );
    }

    #[test]
    fn a_positive_or_persona_certification_alone_fails() {
        let f = fixture();
        for typ in [
            pgp::packet::SignatureType::CertPositive,
            pgp::packet::SignatureType::CertPersona,
        ] {
            let keyring = certify_as(&f.server, &user_bytes(), &f.jid, [7; 32], NOW, typ).unwrap();
            assert_eq!(
                check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.server, NOW),
                Err(CertError::Key(KeyError::NotCertified)),
                "{typ:?}"
            );
        }
        let keyring = certify_as(
            &f.server,
            &user_bytes(),
            &f.jid,
            [7; 32],
            NOW,
            pgp::packet::SignatureType::CertCasual,
        )
        .unwrap();
        assert!(check_login(&user_cert(&f.user, &keyring), DOMAIN, &f.server, NOW).is_ok());
    }

    #[test]
    fn an_uncertified_key_or_another_domain_fails() {
        let f = fixture();
        assert_eq!(
            check_login(&user_cert(&f.user, &user_bytes()), DOMAIN, &f.server, NOW),
            Err(CertError::Key(KeyError::NotCertified))
        );
        let keyring = certified(&user_bytes());
        assert_eq!(
            check_login(&user_cert(&f.user, &keyring), "kontalk.net", &f.server, NOW),
            Err(CertError::Key(KeyError::NotCertified))
        );
    }

    #[test]
    fn an_expired_or_future_key_fails() {
        let f = fixture();
        let keyring = certify(
            &f.server,
            &user_expiring(3600),
            &f.jid,
            [7; 32],
            USER_CREATED + 60,
        )
        .unwrap();
        let der = user_cert(&f.user, &keyring);
        assert!(check_login(&der, DOMAIN, &f.server, USER_CREATED + 3599).is_ok());
        assert_eq!(
            check_login(&der, DOMAIN, &f.server, USER_CREATED + 3600),
            Err(CertError::Key(KeyError::Expired))
        );
        // Created after "now", by more than the clock skew allowed.
        let keyring = certified(&user_bytes());
        assert_eq!(
            check_login(
                &user_cert(&f.user, &keyring),
                DOMAIN,
                &f.server,
                USER_CREATED - crate::kontalk::keys::CLOCK_SKEW - 1
            ),
            Err(CertError::Key(KeyError::Expired))
        );
    }

    #[test]
    fn the_login_cache_answers_as_the_checks_do_and_still_minds_the_time() {
        let f = fixture();
        let keyring = certify(
            &f.server,
            &user_expiring(3600),
            &f.jid,
            [7; 32],
            USER_CREATED + 60,
        )
        .unwrap();
        let der = user_cert(&f.user, &keyring);
        let mut cache = LoginCache::with_capacity(2);
        let now = USER_CREATED + 60;
        let first = cache
            .check_login(&der, DOMAIN, &f.server, &[], now)
            .unwrap();
        assert_eq!(first, check_login(&der, DOMAIN, &f.server, now).unwrap());
        assert_eq!(cache.len(), 1);
        // Seen again: the same answer from the cache, and no new entry.
        assert_eq!(
            cache.check_login(&der, DOMAIN, &f.server, &[], now),
            Ok(first)
        );
        assert_eq!(cache.len(), 1);
        // The expiry is checked every time, cached or not.
        assert_eq!(
            cache.check_login(&der, DOMAIN, &f.server, &[], USER_CREATED + 3600),
            Err(CertError::Key(KeyError::Expired))
        );
        // Another domain is not answered from this domain's entry.
        assert_eq!(
            cache.check_login(&der, "other.example", &f.server, &[], now),
            Err(CertError::Key(KeyError::NotCertified))
        );
        // Refused certificates are not kept.
        let uncertified = user_cert(&f.user, &user_bytes());
        assert_eq!(
            cache.check_login(&uncertified, DOMAIN, &f.server, &[], now),
            Err(CertError::Key(KeyError::NotCertified))
        );
        assert_eq!(cache.len(), 1);
        // At capacity the oldest goes first, and is verified anew when it comes back.
        let other = user_cert(&f.user, &certified(&user_bytes()));
        let third = user_cert(
            &f.user,
            &certify(&f.server, &user_bytes(), &f.jid, [8; 32], now).unwrap(),
        );
        for der in [&other, &third, &der] {
            assert!(cache.check_login(der, DOMAIN, &f.server, &[], now).is_ok());
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn registration_takes_the_first_uid_of_the_domain() {
        let f = fixture();
        let keyring = user_bytes();
        let reg = check_registration(&user_cert(&f.user, &keyring), DOMAIN).unwrap();
        assert_eq!(reg.jid, f.jid);
        assert_eq!(reg.key, keyring);
        assert_eq!(
            reg.fingerprint,
            UserKey::parse(&keyring).unwrap().fingerprint()
        );
        // The unsigned keyring then certifies and logs in.
        let signed = certify(&f.server, &reg.key, &reg.jid, [7; 32], NOW).unwrap();
        assert!(check_login(&user_cert(&f.user, &signed), DOMAIN, &f.server, NOW).is_ok());
        // Another domain.
        assert_eq!(
            check_registration(&user_cert(&f.user, &keyring), "kontalk.net"),
            Err(CertError::WrongDomain)
        );
        // A first user id of another domain, even with ours second.
        let two = user_with_first_uid("Someone <someone@other.example>");
        assert_eq!(UserKey::parse(&two).unwrap().emails()[1], f.jid);
        assert_eq!(
            check_registration(&user_cert(&f.user, &two), DOMAIN),
            Err(CertError::WrongDomain)
        );
    }
}
