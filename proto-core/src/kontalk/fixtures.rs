//! Test fixtures: real keys made the way the Kontalk client and server make
//! them (KONTALK.md section 2). RSA key generation is slow, so the keys are
//! made once per test binary.

use std::sync::OnceLock;

use pgp::composed::{KeyType, SignedSecretKey};
use pgp::crypto::{ecc_curve::ECCCurve, hash::HashAlgorithm};
use pgp::packet::{
    self, KeyFlags, RevocationCode, Signature, SignatureConfig, SignatureType, Subpacket,
    SubpacketData,
};
use pgp::ser::Serialize;
use pgp::types::{KeyDetails, Password, PlainSecretParams, PublicParams, SecretParams, Timestamp};
use rand_chacha_03::rand_core::SeedableRng;
use rand_chacha_03::ChaCha20Rng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use sha1::{Digest, Sha1};

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
