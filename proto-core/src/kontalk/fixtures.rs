//! Test fixtures: real keys made the way the Kontalk client and server make
//! them, and bridge certificates made the way the client makes them
//! (KONTALK.md section 2). RSA key generation is slow, so the keys are
//! made once per test binary.

use std::sync::OnceLock;

use pgp::composed::{KeyType, SignedSecretKey};
use pgp::crypto::{ecc_curve::ECCCurve, hash::HashAlgorithm};
use pgp::packet::{
    self, KeyFlags, RevocationCode, Signature, SignatureConfig, SignatureType, Subpacket,
    SubpacketData, UserId,
};
use pgp::ser::Serialize;
use pgp::types::{
    KeyDetails, PacketHeaderVersion, Password, PlainSecretParams, PublicParams, SecretParams,
    SignedUser, Timestamp,
};
use rand_chacha_03::rand_core::SeedableRng;
use rand_chacha_03::ChaCha20Rng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey};
use sha1::{Digest, Sha1};

use super::bridge::PGP_EXTENSION_OID_DER;
use super::keys::{build_key, self_signature, KeySpec, ServerKey};

/// The domain of the tests' JIDs.
pub(crate) const DOMAIN: &str = "localhost";
/// When the user's key was made.
pub(crate) const USER_CREATED: u64 = 1_700_000_000;
/// A time at which the user's key is valid.
pub(crate) const NOW: u64 = USER_CREATED + 86_400;
/// When the server's keys were made.
const SERVER_CREATED: u64 = USER_CREATED - 86_400;

/// The keys the tests share.
pub(crate) struct Fixture {
    /// The server's key.
    pub(crate) server: ServerKey,
    /// Another server's key.
    pub(crate) other_server: ServerKey,
    /// A user's key, as the Kontalk client makes it (not yet certified).
    pub(crate) user: SignedSecretKey,
    /// The user's JID: sha1hex(phone)@DOMAIN.
    pub(crate) jid: String,
}

/// The flags of the client's primary key: certify and authenticate (0x21).
pub(crate) fn client_primary_flags() -> KeyFlags {
    let mut flags = KeyFlags::default();
    flags.set_certify(true);
    flags.set_authentication(true);
    flags
}

/// The keys, made on first use.
pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = ServerKey::generate([1; 32], "kontalkd <localhost>", SERVER_CREATED).unwrap();
        let other_server =
            ServerKey::generate([2; 32], "other <other.example>", SERVER_CREATED).unwrap();
        let jid = format!("{}@{DOMAIN}", hex(&Sha1::digest(b"+15555215554")));
        let mut sign = KeyFlags::default();
        sign.set_sign(true);
        let mut encrypt = KeyFlags::default();
        encrypt.set_encrypt_comms(true);
        let user = build_key(
            &mut ChaCha20Rng::from_seed([3; 32]),
            KeySpec {
                key_type: KeyType::Rsa(2048),
                flags: client_primary_flags(),
                uid: &format!("Test User <{jid}>"),
                created: Timestamp::from_secs(USER_CREATED as u32),
                expires_after: None,
                subkeys: vec![
                    (KeyType::ECDSA(ECCCurve::P256), sign),
                    (KeyType::ECDH(ECCCurve::P256), encrypt),
                ],
            },
        )
        .unwrap();
        Fixture {
            server,
            other_server,
            user,
            jid,
        }
    })
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary transferable public key of a secret key.
pub(crate) fn public_bytes(key: &SignedSecretKey) -> Vec<u8> {
    key.to_public_key().to_bytes().unwrap()
}

/// The user's key with its one self-signature replaced by one that sets a
/// key expiration time of `secs` after creation.
pub(crate) fn user_expiring(secs: u32) -> Vec<u8> {
    let mut key = fixture().user.clone();
    let user = &mut key.details.users[0];
    user.signatures = vec![self_signature(
        &key.primary_key,
        &user.id,
        &client_primary_flags(),
        Timestamp::from_secs(USER_CREATED as u32),
        Some(secs),
    )
    .unwrap()];
    public_bytes(&key)
}

/// A key revocation (0x20) of `key`'s primary key, made by `signer`.
pub(crate) fn revocation(signer: &packet::SecretKey, key: &packet::PublicKey) -> Signature {
    let mut config = SignatureConfig::v4(
        SignatureType::KeyRevocation,
        signer.algorithm(),
        HashAlgorithm::Sha256,
    );
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::from_secs(
            NOW as u32,
        )))
        .unwrap(),
        Subpacket::regular(SubpacketData::IssuerFingerprint(signer.fingerprint())).unwrap(),
        Subpacket::regular(SubpacketData::RevocationReason(
            RevocationCode::KeySuperseded,
            "rollover".into(),
        ))
        .unwrap(),
    ];
    config.unhashed_subpackets =
        vec![Subpacket::regular(SubpacketData::IssuerKeyId(signer.legacy_key_id())).unwrap()];
    config.sign_key(signer, &Password::empty(), key).unwrap()
}

/// The user's key (a secret key, so that it can be changed and signed
/// again) with a key revocation made by `signer`, or by itself.
pub(crate) fn user_revoked_by(signer: Option<&packet::SecretKey>) -> SignedSecretKey {
    let mut key = fixture().user.clone();
    let signer = signer.unwrap_or(&key.primary_key);
    let sig = revocation(signer, key.primary_key.public_key());
    key.details.revocation_signatures.push(sig);
    key
}

/// The user's key with another user id, self-signed, put before its own.
pub(crate) fn user_with_first_uid(uid: &str) -> Vec<u8> {
    let mut key = fixture().user.clone();
    let id = UserId::from_str(PacketHeaderVersion::New, uid).unwrap();
    let sig = self_signature(
        &key.primary_key,
        &id,
        &client_primary_flags(),
        Timestamp::from_secs(USER_CREATED as u32),
        None,
    )
    .unwrap();
    key.details.users.insert(0, SignedUser::new(id, vec![sig]));
    public_bytes(&key)
}

/// The RSA private key of an OpenPGP RSA secret key, for the rsa crate.
pub(crate) fn rsa_private(key: &packet::SecretKey) -> RsaPrivateKey {
    let PublicParams::RSA(public) = key.public_key().public_params() else {
        panic!("not an RSA key");
    };
    let SecretParams::Plain(PlainSecretParams::RSA(secret)) = key.secret_params() else {
        panic!("not an unprotected RSA key");
    };
    let (d, p, q, _) = secret.to_bytes();
    RsaPrivateKey::from_components(
        public.key.n().clone(),
        public.key.e().clone(),
        BigUint::from_bytes_be(&d),
        vec![BigUint::from_bytes_be(&p), BigUint::from_bytes_be(&q)],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------
// DER, just enough to take a certificate apart and put it together.

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|&b| b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// A DER element: tag, length, content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// The first DER element of `bytes`: its tag, content, and whole length.
pub(crate) fn read_tlv(bytes: &[u8]) -> (u8, &[u8], usize) {
    let tag = bytes[0];
    let (len, header) = if bytes[1] < 0x80 {
        (usize::from(bytes[1]), 2)
    } else {
        let n = usize::from(bytes[1] & 0x7f);
        let len = bytes[2..2 + n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    (tag, &bytes[header..header + len], header + len)
}

/// Replaces the one occurrence of `from` in `bytes` by `to` (of the same length).
fn replace_once(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = (0..=bytes.len() - from.len())
        .filter(|&i| bytes[i..].starts_with(from))
        .collect();
    assert_eq!(hits.len(), 1, "expected one occurrence");
    bytes[hits[0]..hits[0] + to.len()].copy_from_slice(to);
}

/// The DER of the OBJECT IDENTIFIER sha256WithRSAEncryption.
const SHA256_WITH_RSA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
];
/// The DER of the OBJECT IDENTIFIER sha1WithRSAEncryption.
pub(crate) const SHA1_WITH_RSA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05,
];
/// The DigestInfo prefix of a SHA-1 hash (RFC 8017 section 9.2).
const SHA1_DIGEST_INFO: [u8; 15] = [
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];

/// rcgen takes OIDs as u64 arcs, and the OpenPGP OID's last arc is 126 bits
/// long: the extension is written under a stand-in of the same encoded
/// length (2.25 then eighteen arcs of 1), then patched.
fn stand_in_oid() -> Vec<u64> {
    let mut arcs = vec![2, 25];
    arcs.extend([1; 18]);
    arcs
}

/// The SHA-1 DigestInfo of `data`, for a PKCS#1 v1.5 signature.
pub(crate) fn sha1_digest_info(data: &[u8]) -> Vec<u8> {
    let mut info = SHA1_DIGEST_INFO.to_vec();
    info.extend_from_slice(&Sha1::digest(data));
    info
}

/// A bridge certificate made the way the Kontalk client makes it: v3,
/// serial 1, subject = issuer = O=OpenPGP to X.509 Bridge, CN=`uid`,
/// notBefore = notAfter = `created`, the RSA key of `cert_key`, the
/// client's seven extensions in its order (basicConstraints, keyUsage,
/// netscape-cert-type, SKI, AKI, the non-standard subjectAltName with one
/// xmppAddr per JID, the OpenPGP extension holding `keyring`), signed
/// sha1WithRSAEncryption.
pub(crate) fn bridge_cert(
    cert_key: &RsaPrivateKey,
    keyring: &[u8],
    uid: &str,
    jids: &[&str],
    created: u64,
) -> Vec<u8> {
    use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue};
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePrivateKey;

    let pkcs8 = cert_key.to_pkcs8_der().unwrap();
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();

    let mut params = CertificateParams::default();
    params.serial_number = Some(1u64.into());
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::OrganizationName,
        DnValue::Utf8String("OpenPGP to X.509 Bridge".into()),
    );
    dn.push(DnType::CommonName, DnValue::Utf8String(uid.into()));
    params.distinguished_name = dn;
    let when = time::OffsetDateTime::from_unix_timestamp(created as i64).unwrap();
    params.not_before = when;
    params.not_after = when;

    let key_bits = cert_key.to_public_key().to_pkcs1_der().unwrap();
    let ski = Sha1::digest(key_bits.as_bytes()).to_vec();
    let mut san = Vec::new();
    for jid in jids {
        // xmppAddr, with no [0] EXPLICIT around the UTF8String (as the client writes it).
        let mut other = tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05]);
        other.extend(tlv(0x0c, jid.as_bytes()));
        san.extend(tlv(0xa0, &other));
    }
    let mut pgp_bits = vec![0];
    pgp_bits.extend_from_slice(keyring);

    let critical = |oid: &[u64], content: Vec<u8>| {
        let mut ext = CustomExtension::from_oid_content(oid, content);
        ext.set_criticality(true);
        ext
    };
    params.custom_extensions = vec![
        critical(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]),
        critical(&[2, 5, 29, 15], vec![0x03, 0x02, 0x02, 0xec]),
        CustomExtension::from_oid_content(
            &[2, 16, 840, 1, 113730, 1, 1],
            vec![0x03, 0x02, 0x05, 0xa0],
        ),
        CustomExtension::from_oid_content(&[2, 5, 29, 14], tlv(0x04, &ski)),
        CustomExtension::from_oid_content(&[2, 5, 29, 35], tlv(0x30, &tlv(0x80, &ski))),
        CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &san)),
        CustomExtension::from_oid_content(&stand_in_oid(), tlv(0x03, &pgp_bits)),
    ];
    let cert = params.self_signed(&key_pair).unwrap();

    // Take the TBS out, make it say SHA-1 and carry the real OID, sign it again.
    let (_, outer, _) = read_tlv(cert.der());
    let (_, _, tbs_len) = read_tlv(outer);
    let mut tbs = outer[..tbs_len].to_vec();
    replace_once(&mut tbs, &SHA256_WITH_RSA, &SHA1_WITH_RSA);
    let mut stand_in = vec![0x06, 19, 0x69];
    stand_in.extend([1; 18]);
    let mut real = vec![0x06, 19];
    real.extend(PGP_EXTENSION_OID_DER);
    replace_once(&mut tbs, &stand_in, &real);
    let sig = cert_key
        .sign(Pkcs1v15Sign::new_unprefixed(), &sha1_digest_info(&tbs))
        .unwrap();

    let mut alg = SHA1_WITH_RSA.to_vec();
    alg.extend([0x05, 0x00]);
    let mut sig_bits = vec![0];
    sig_bits.extend(sig);
    let mut content = tbs;
    content.extend(tlv(0x30, &alg));
    content.extend(tlv(0x03, &sig_bits));
    tlv(0x30, &content)
}

/// A bridge certificate for `keyring` made with the key of `user` (its primary RSA key).
pub(crate) fn user_cert(user: &SignedSecretKey, keyring: &[u8]) -> Vec<u8> {
    let jid = &fixture().jid;
    bridge_cert(
        &rsa_private(&user.primary_key),
        keyring,
        &format!("Test User <{jid}>"),
        &[jid],
        USER_CREATED,
    )
}
