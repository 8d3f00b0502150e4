//! OpenPGP keys (rPGP): the server's own key, the keys of users, and the
//! server's certification of a user id.
//!
//! What the Kontalk server asks of a user's key (KONTALK.md, sections 2
//! and 3): its primary key is RSA (it is also the TLS key of the client's
//! bridge certificate), it is neither revoked nor expired, and the user id
//! that names the user's JID carries a certification (type 0x10 or 0x12)
//! by the server's primary key. The server makes that certification at
//! registration ([`certify`]) and checks it at every login
//! ([`UserKey::certified_by`]).
//!
//! rPGP has no policy layer, and its `verify_bindings()` refuses a key
//! that carries third-party certifications, so every signature here is
//! checked on its own: a self-signature with
//! `Signature::verify_certification`, a certification with
//! `Signature::verify_third_party_certification`, a key revocation with
//! `Signature::verify_key`.
//!
//! Nothing here reads the clock: rPGP's own builders stamp signatures with
//! the system clock, so keys and signatures are made from
//! `SignatureConfig`s whose creation times the caller gives.

use std::fmt;
use std::io::Read;

use pgp::composed::{
    ArmorOptions, Deserializable, KeyType, SignedKeyDetails, SignedPublicKey, SignedPublicSubKey,
    SignedSecretKey, SignedSecretSubKey,
};
use pgp::crypto::{hash::HashAlgorithm, sym::SymmetricKeyAlgorithm};
use pgp::packet::{
    self, Features, KeyFlags, PacketTrait, PubKeyInner, Signature, SignatureConfig, SignatureType,
    Subpacket, SubpacketData, UserId,
};
use pgp::ser::Serialize;
use pgp::types::{
    CompressionAlgorithm, Duration, KeyDetails, KeyVersion, PacketHeaderVersion, Password,
    PublicParams, SecretParams, SignedUser, Tag, Timestamp,
};
use rand_chacha_03::rand_core::SeedableRng;
use rand_chacha_03::ChaCha20Rng;

use super::packets;

/// Why a key was refused, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The bytes are not an OpenPGP key (or not one rPGP can read).
    BadPacket(String),
    /// The secret key is protected by a passphrase; the server's key must not be.
    Protected,
    /// No user id of the key has the JID as its email.
    NoMatchingUid,
    /// The user id of the JID has no valid self-signature by the primary key.
    NoSelfSignature,
    /// The primary key is not an RSA key.
    NotRsa,
    /// The primary key carries a valid key revocation (type 0x20).
    Revoked,
    /// The key has expired, or its creation time lies in the future.
    Expired,
    /// No user id carries a valid certification by the server's primary key.
    NotCertified,
    /// The key carries no valid key revocation, where one was expected (key rollover).
    NotRevoked,
    /// A time that an OpenPGP timestamp (32 bits) cannot hold.
    BadTime(u64),
    /// rPGP failed to make a key or a signature.
    Crypto(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::BadPacket(e) => write!(f, "not a readable OpenPGP key: {e}"),
            KeyError::Protected => write!(f, "the secret key is protected by a passphrase"),
            KeyError::NoMatchingUid => write!(f, "no user id of the key names the JID"),
            KeyError::NoSelfSignature => {
                write!(f, "the user id has no valid self-signature")
            }
            KeyError::NotRsa => write!(f, "the primary key is not an RSA key"),
            KeyError::Revoked => write!(f, "the key is revoked"),
            KeyError::Expired => write!(f, "the key is expired or not yet valid"),
            KeyError::NotCertified => {
                write!(f, "no user id is certified by the server's key")
            }
            KeyError::NotRevoked => write!(f, "the key carries no valid revocation"),
            KeyError::BadTime(t) => write!(f, "time {t} does not fit an OpenPGP timestamp"),
            KeyError::Crypto(e) => write!(f, "OpenPGP operation failed: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

fn bad_packet(e: impl fmt::Display) -> KeyError {
    KeyError::BadPacket(e.to_string())
}

fn crypto(e: impl fmt::Display) -> KeyError {
    KeyError::Crypto(e.to_string())
}

/// A unix time as an OpenPGP timestamp.
fn timestamp(unix: u64) -> Result<Timestamp, KeyError> {
    u32::try_from(unix)
        .map(Timestamp::from_secs)
        .map_err(|_| KeyError::BadTime(unix))
}

fn hex_upper(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

/// How far ahead of the server's clock a key's creation time may be.
pub const CLOCK_SKEW: u64 = 3600;

/// The email part of a user id: what lies inside the last `<...>`, or the
/// whole user id when it has no angle brackets.
pub fn uid_email(uid: &str) -> &str {
    match (uid.rfind('<'), uid.rfind('>')) {
        (Some(open), Some(close)) if open < close => &uid[open + 1..close],
        _ => uid,
    }
}

/// The domain of an email address: what follows its last `@`.
pub fn email_domain(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, domain)| domain)
}

/// Binary OpenPGP data: the bytes themselves, or the body of an ASCII armor.
/// [`UserKey::is_expired`] of a key created at `created` that expires at
/// `expires` (unix seconds; `None`: never).
pub(crate) fn expired_at(created: u64, expires: Option<u64>, now_unix: u64) -> bool {
    created > now_unix.saturating_add(CLOCK_SKEW) || expires.is_some_and(|e| e <= now_unix)
}

/// The binary form of a key, binary or ASCII-armored.
pub(crate) fn to_binary(bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    match bytes.first() {
        None => Err(bad_packet("empty input")),
        // The first byte of a packet has its high bit set; armor is text.
        Some(b) if b & 0x80 != 0 => Ok(bytes.to_vec()),
        Some(_) => {
            let opts = pgp::armor::DearmorOptions::new().set_limit(bytes.len());
            let mut dearmor = pgp::armor::Dearmor::with_options(bytes, opts);
            let mut out = Vec::new();
            dearmor.read_to_end(&mut out).map_err(bad_packet)?;
            Ok(out)
        }
    }
}

fn uid_string(id: &UserId) -> String {
    String::from_utf8_lossy(id.id()).into_owned()
}

/// Whether a signature names `key` as its issuer (key id or fingerprint).
fn names_issuer(sig: &Signature, key: &impl KeyDetails) -> bool {
    sig.issuer_key_id()
        .iter()
        .any(|id| **id == key.legacy_key_id())
        || sig
            .issuer_fingerprint()
            .iter()
            .any(|fp| **fp == key.fingerprint())
}

/// A valid self-certification (types 0x10 to 0x13) of `uid` by `primary`.
fn is_self_signature(sig: &Signature, primary: &packet::PublicKey, uid: &UserId) -> bool {
    matches!(
        sig.typ(),
        Some(
            SignatureType::CertGeneric
                | SignatureType::CertPersona
                | SignatureType::CertCasual
                | SignatureType::CertPositive
        )
    ) && sig.verify_certification(primary, Tag::UserId, uid).is_ok()
}

/// A valid certification of `uid` of the key `signee` by `signer`, of one
/// of the types `types`, whose issuer subpacket names `signer`.
fn is_certification_by(
    sig: &Signature,
    types: &[SignatureType],
    signee: &packet::PublicKey,
    uid: &UserId,
    signer: &packet::PublicKey,
) -> bool {
    sig.typ().is_some_and(|t| types.contains(&t))
        && names_issuer(sig, signer)
        && sig
            .verify_third_party_certification(signee, signer, Tag::UserId, uid)
            .is_ok()
}

/// The certification types that make a user id the server's: generic
/// (0x10) and casual (0x12), as the Kontalk server accepts them. Persona
/// (0x11) and positive (0x13) certifications do not count.
const SERVER_CERTIFICATIONS: &[SignatureType] =
    &[SignatureType::CertGeneric, SignatureType::CertCasual];

/// The big-endian integers of a run of MPIs (two-octet bit count, then the bytes).
fn mpis(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let bits = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
        let len = bits.div_ceil(8);
        let value = bytes.get(2..2 + len)?;
        out.push(value.to_vec());
        bytes = &bytes[2 + len..];
    }
    Some(out)
}

/// A big-endian integer without its leading zero bytes.
pub(crate) fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

// ---------------------------------------------------------------------------
// Making keys and self-signatures.

/// What a generated key is made of. Test fixtures make client-like keys
/// with it too.
pub(crate) struct KeySpec<'a> {
    /// The primary key's algorithm.
    pub(crate) key_type: KeyType,
    /// The primary key's flags.
    pub(crate) flags: KeyFlags,
    /// The one (primary) user id.
    pub(crate) uid: &'a str,
    /// Creation time of the keys and of their signatures.
    pub(crate) created: Timestamp,
    /// Key expiration, in seconds after creation.
    pub(crate) expires_after: Option<u32>,
    /// The subkeys and their flags; a signing subkey gets a back-signature.
    pub(crate) subkeys: Vec<(KeyType, KeyFlags)>,
}

/// The unhashed issuer key id subpacket of v4 signatures.
fn issuer_key_id(key: &impl KeyDetails) -> Result<Vec<Subpacket>, KeyError> {
    if key.version() <= KeyVersion::V4 {
        Ok(vec![Subpacket::regular(SubpacketData::IssuerKeyId(
            key.legacy_key_id(),
        ))
        .map_err(crypto)?])
    } else {
        Ok(Vec::new())
    }
}

/// A positive self-certification (0x13) of `uid`, SHA-256, with the key
/// flags, preferences and primary-user-id flag, made at `created`.
pub(crate) fn self_signature(
    primary: &packet::SecretKey,
    uid: &UserId,
    flags: &KeyFlags,
    created: Timestamp,
    expires_after: Option<u32>,
) -> Result<Signature, KeyError> {
    let mut config = SignatureConfig::v4(
        SignatureType::CertPositive,
        primary.algorithm(),
        HashAlgorithm::Sha256,
    );
    let mut features = Features::new();
    features.set_seipd_v1(true);
    let mut hashed = vec![
        SubpacketData::SignatureCreationTime(created),
        SubpacketData::IssuerFingerprint(primary.fingerprint()),
        SubpacketData::KeyFlags(flags.clone()),
    ];
    if let Some(secs) = expires_after {
        hashed.push(SubpacketData::KeyExpirationTime(Duration::from_secs(secs)));
    }
    hashed.extend([
        SubpacketData::PreferredSymmetricAlgorithms(
            [
                SymmetricKeyAlgorithm::AES256,
                SymmetricKeyAlgorithm::AES192,
                SymmetricKeyAlgorithm::AES128,
            ]
            .into_iter()
            .collect(),
        ),
        SubpacketData::PreferredHashAlgorithms(
            [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
                .into_iter()
                .collect(),
        ),
        SubpacketData::PreferredCompressionAlgorithms(
            [CompressionAlgorithm::ZLIB, CompressionAlgorithm::ZIP]
                .into_iter()
                .collect(),
        ),
        SubpacketData::Features(features),
        SubpacketData::IsPrimary(true),
    ]);
    config.hashed_subpackets = hashed
        .into_iter()
        .map(Subpacket::regular)
        .collect::<Result<_, _>>()
        .map_err(crypto)?;
    config.unhashed_subpackets = issuer_key_id(primary)?;
    config
        .sign_certification(
            primary,
            primary.public_key(),
            &Password::empty(),
            Tag::UserId,
            uid,
        )
        .map_err(crypto)
}

/// Generates a v4 key: the primary key, its one user id with a positive
/// self-signature, and the subkeys with their binding signatures (and a
/// back-signature for a signing subkey). Every timestamp is `spec.created`.
pub(crate) fn build_key(
    rng: &mut ChaCha20Rng,
    spec: KeySpec<'_>,
) -> Result<SignedSecretKey, KeyError> {
    let pw = Password::empty();
    let (public_params, secret_params) = spec.key_type.generate(&mut *rng).map_err(crypto)?;
    let inner = PubKeyInner::new(
        KeyVersion::V4,
        spec.key_type.to_alg(),
        spec.created,
        None,
        public_params,
    )
    .map_err(crypto)?;
    let public = packet::PublicKey::from_inner(inner).map_err(crypto)?;
    let primary = packet::SecretKey::new(public, secret_params).map_err(crypto)?;

    let uid = UserId::from_str(PacketHeaderVersion::New, spec.uid).map_err(crypto)?;
    let sig = self_signature(
        &primary,
        &uid,
        &spec.flags,
        spec.created,
        spec.expires_after,
    )?;
    let details = SignedKeyDetails::new(
        Vec::new(),
        Vec::new(),
        vec![SignedUser::new(uid, vec![sig])],
        Vec::new(),
    );

    let mut secret_subkeys = Vec::new();
    for (key_type, flags) in spec.subkeys {
        let (public_params, secret_params) = key_type.generate(&mut *rng).map_err(crypto)?;
        let inner = PubKeyInner::new(
            KeyVersion::V4,
            key_type.to_alg(),
            spec.created,
            None,
            public_params,
        )
        .map_err(crypto)?;
        let public = packet::PublicSubkey::from_inner(inner).map_err(crypto)?;
        let sub = packet::SecretSubkey::new(public, secret_params).map_err(crypto)?;

        let mut hashed = vec![
            SubpacketData::SignatureCreationTime(spec.created),
            SubpacketData::IssuerFingerprint(primary.fingerprint()),
            SubpacketData::KeyFlags(flags.clone()),
        ];
        if flags.sign() {
            // The subkey's back-signature (0x19): it wants to belong to the primary.
            let mut back = SignatureConfig::v4(
                SignatureType::KeyBinding,
                sub.algorithm(),
                HashAlgorithm::Sha256,
            );
            back.hashed_subpackets = vec![
                Subpacket::regular(SubpacketData::SignatureCreationTime(spec.created))
                    .map_err(crypto)?,
                Subpacket::regular(SubpacketData::IssuerFingerprint(sub.fingerprint()))
                    .map_err(crypto)?,
            ];
            back.unhashed_subpackets = issuer_key_id(&sub)?;
            let back = back
                .sign_primary_key_binding(&sub, sub.public_key(), &pw, primary.public_key())
                .map_err(crypto)?;
            hashed.push(SubpacketData::EmbeddedSignature(Box::new(back)));
        }
        let mut binding = SignatureConfig::v4(
            SignatureType::SubkeyBinding,
            primary.algorithm(),
            HashAlgorithm::Sha256,
        );
        binding.hashed_subpackets = hashed
            .into_iter()
            .map(Subpacket::regular)
            .collect::<Result<_, _>>()
            .map_err(crypto)?;
        binding.unhashed_subpackets = issuer_key_id(&primary)?;
        let binding = binding
            .sign_subkey_binding(&primary, primary.public_key(), &pw, sub.public_key())
            .map_err(crypto)?;
        secret_subkeys.push(SignedSecretSubKey::new(sub, vec![binding]));
    }

    Ok(SignedSecretKey {
        primary_key: primary,
        details,
        public_subkeys: Vec::<SignedPublicSubKey>::new(),
        secret_subkeys,
    })
}

// ---------------------------------------------------------------------------
// The server's key.

/// The server's own OpenPGP key: an unprotected secret key whose primary
/// key certifies the user ids of registered users.
#[derive(Clone)]
pub struct ServerKey {
    secret: SignedSecretKey,
    public: UserKey,
    armored: String,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// Generates the server's key from `seed` (the caller draws it from its
    /// seeded RNG): an RSA-2048 primary key that can certify and sign, the
    /// user id `uid` with a SHA-256 positive self-signature, and an RSA-2048
    /// encryption subkey. Keys and signatures are dated `created_unix`.
    pub fn generate(seed: [u8; 32], uid: &str, created_unix: u64) -> Result<ServerKey, KeyError> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        let mut encrypt = KeyFlags::default();
        encrypt.set_encrypt_comms(true);
        encrypt.set_encrypt_storage(true);
        let secret = build_key(
            &mut rng,
            KeySpec {
                key_type: KeyType::Rsa(2048),
                flags,
                uid,
                created: timestamp(created_unix)?,
                expires_after: None,
                subkeys: vec![(KeyType::Rsa(2048), encrypt)],
            },
        )?;
        ServerKey::from_secret(secret)
    }

    /// Reads an unprotected secret key, ASCII-armored or binary.
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerKey, KeyError> {
        let (secret, _) = SignedSecretKey::from_reader_single(bytes).map_err(bad_packet)?;
        if !matches!(secret.primary_key.secret_params(), SecretParams::Plain(_)) {
            return Err(KeyError::Protected);
        }
        ServerKey::from_secret(secret)
    }

    fn from_secret(secret: SignedSecretKey) -> Result<ServerKey, KeyError> {
        let public = secret.to_public_key();
        let bytes = public.to_bytes().map_err(crypto)?;
        let armored = secret
            .to_armored_string(ArmorOptions::default())
            .map_err(crypto)?;
        Ok(ServerKey {
            secret,
            public: UserKey { key: public, bytes },
            armored,
        })
    }

    /// The unprotected secret key, ASCII-armored, for a host to write to a file.
    pub fn to_armored(&self) -> String {
        self.armored.clone()
    }

    /// The v4 fingerprint of the primary key: 40 uppercase hex digits.
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint()
    }

    /// The key id of the primary key: 16 uppercase hex digits.
    pub fn key_id(&self) -> String {
        self.public.key_id()
    }

    /// The binary transferable public key (what `<pubkey/>` to the domain returns).
    pub fn public_bytes(&self) -> Vec<u8> {
        self.public.bytes.clone()
    }

    /// The public key, parsed.
    pub fn public_key(&self) -> &UserKey {
        &self.public
    }

    fn primary_public(&self) -> &packet::PublicKey {
        &self.public.key.primary_key
    }

    /// The secret primary key (tests make certificates with it).
    #[cfg(test)]
    pub(crate) fn secret_primary(&self) -> &packet::SecretKey {
        &self.secret.primary_key
    }
}

// ---------------------------------------------------------------------------
// A user's key.

/// A parsed transferable public key, as a user's client sends it.
#[derive(Debug, Clone)]
pub struct UserKey {
    key: SignedPublicKey,
    bytes: Vec<u8>,
}

impl UserKey {
    /// Parses a transferable public key, binary or ASCII-armored. Only the
    /// first key counts when the bytes hold several.
    pub fn parse(bytes: &[u8]) -> Result<UserKey, KeyError> {
        let bytes = to_binary(bytes)?;
        let key = SignedPublicKey::from_bytes(&bytes[..]).map_err(bad_packet)?;
        Ok(UserKey { key, bytes })
    }

    /// The binary form of the key, as given (or as dearmored).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The v4 fingerprint of the primary key: 40 uppercase hex digits.
    pub fn fingerprint(&self) -> String {
        hex_upper(self.key.primary_key.fingerprint().as_bytes())
    }

    /// The key id of the primary key: 16 uppercase hex digits.
    pub fn key_id(&self) -> String {
        hex_upper(self.key.primary_key.legacy_key_id().as_ref())
    }

    /// The creation time of the primary key, in unix seconds.
    pub fn created(&self) -> u64 {
        u64::from(self.key.primary_key.created_at().as_secs())
    }

    /// The user ids, in the key's order (invalid UTF-8 replaced).
    pub fn user_ids(&self) -> Vec<String> {
        self.key
            .details
            .users
            .iter()
            .map(|u| uid_string(&u.id))
            .collect()
    }

    /// The email of each user id ([`uid_email`]), in the key's order.
    pub fn emails(&self) -> Vec<String> {
        self.user_ids()
            .iter()
            .map(|uid| uid_email(uid).to_owned())
            .collect()
    }

    /// The domain of each user id's email ([`email_domain`]), in the key's order.
    pub fn email_domains(&self) -> Vec<Option<String>> {
        self.emails()
            .iter()
            .map(|e| email_domain(e).map(str::to_owned))
            .collect()
    }

    /// The RSA public key of the primary key, as big-endian modulus and
    /// exponent without leading zeros; `None` when it is not RSA.
    pub fn primary_rsa(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let PublicParams::RSA(params) = self.key.primary_key.public_params() else {
            return None;
        };
        let bytes = params.to_bytes().ok()?;
        match mpis(&bytes)?.as_slice() {
            [n, e] => Some((strip_zeros(n).to_vec(), strip_zeros(e).to_vec())),
            _ => None,
        }
    }

    /// Whether the primary key carries a key revocation (0x20) that it made
    /// itself and that verifies.
    pub fn is_revoked(&self) -> bool {
        let primary = &self.key.primary_key;
        self.key.details.revocation_signatures.iter().any(|sig| {
            sig.typ() == Some(SignatureType::KeyRevocation) && sig.verify_key(primary).is_ok()
        })
    }

    /// The user id whose self-signature says it is the primary one, or else the first.
    fn primary_user(&self) -> Option<&SignedUser> {
        let primary = &self.key.primary_key;
        let users = &self.key.details.users;
        users
            .iter()
            .find(|u| {
                u.signatures
                    .iter()
                    .any(|s| s.is_primary() && is_self_signature(s, primary, &u.id))
            })
            .or_else(|| users.first())
    }

    /// When the key expires, in unix seconds: its creation time plus the key
    /// expiration time of the newest valid self-signature on the primary
    /// user id. `None` when it never expires. (An expiration set by a
    /// direct-key signature is not looked at; the Kontalk client sets none.)
    pub fn expires(&self) -> Option<u64> {
        let primary = &self.key.primary_key;
        let user = self.primary_user()?;
        let sig = user
            .signatures
            .iter()
            .filter(|s| is_self_signature(s, primary, &user.id))
            .max_by_key(|s| s.created().map_or(0, Timestamp::as_secs))?;
        let secs = sig.key_expiration_time()?.as_secs();
        (secs != 0).then(|| self.created() + u64::from(secs))
    }

    /// Whether the key is expired at `now_unix`: it has expired, or its
    /// creation time lies in the future by more than [`CLOCK_SKEW`] (a
    /// phone whose clock runs ahead makes keys "from the future").
    pub fn is_expired(&self, now_unix: u64) -> bool {
        expired_at(self.created(), self.expires(), now_unix)
    }

    /// Whether the user id whose email is `jid` carries a generic (0x10) or
    /// casual (0x12) certification whose issuer is the server's primary key
    /// and which verifies. Persona (0x11) and positive (0x13)
    /// certifications do not count.
    pub fn certified_by(&self, server: &ServerKey, jid: &str) -> bool {
        self.certified_email(server.primary_public(), |e| e.eq_ignore_ascii_case(jid))
            .is_some()
    }

    /// [`UserKey::certified_by`], with the server's public key only (as
    /// parsed from [`ServerKey::public_bytes`]).
    pub fn certified_by_key(&self, server_public: &UserKey, jid: &str) -> bool {
        self.certified_email(&server_public.key.primary_key, |e| {
            e.eq_ignore_ascii_case(jid)
        })
        .is_some()
    }

    /// The email of the first user id whose email satisfies `wanted` and
    /// which carries a server certification (see [`UserKey::certified_by`]).
    pub(crate) fn certified_email(
        &self,
        server: &packet::PublicKey,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let primary = &self.key.primary_key;
        self.key.details.users.iter().find_map(|u| {
            let uid = uid_string(&u.id);
            let email = uid_email(&uid);
            (wanted(email)
                && u.signatures
                    .iter()
                    .any(|s| is_certification_by(s, SERVER_CERTIFICATIONS, primary, &u.id, server)))
            .then(|| email.to_owned())
        })
    }

    /// The email of the server-certified user id whose domain is `domain`.
    pub(crate) fn certified_email_in(&self, server: &ServerKey, domain: &str) -> Option<String> {
        self.certified_email_by(server.primary_public(), domain)
    }

    /// The same, certified by another server of the network, whose public
    /// key this is.
    pub(crate) fn certified_email_in_by(&self, server: &UserKey, domain: &str) -> Option<String> {
        self.certified_email_by(&server.key.primary_key, domain)
    }

    fn certified_email_by(&self, server: &packet::PublicKey, domain: &str) -> Option<String> {
        self.certified_email(server, |e| {
            email_domain(e).is_some_and(|d| d.eq_ignore_ascii_case(domain))
        })
    }
}

/// For key rollover: parses the old key a client sends with its new one
/// (field `revoked`) and returns it when it carries a valid key revocation
/// ([`UserKey::is_revoked`]), else [`KeyError::NotRevoked`].
pub fn verify_revocation(bytes: &[u8]) -> Result<UserKey, KeyError> {
    let key = UserKey::parse(bytes)?;
    if key.is_revoked() {
        Ok(key)
    } else {
        Err(KeyError::NotRevoked)
    }
}

// ---------------------------------------------------------------------------
// The server's certification.

/// Certifies a user's key the way the Kontalk server does at registration:
/// parses `user_key` (a transferable public key, binary or armored), finds
/// the user id whose email is `jid`, and adds to it a generic certification
/// (0x10, SHA-256, made at `now_unix`) by the server's primary key. Returns
/// the binary key with that signature inserted after the user id's other
/// signatures, so the user's self-signature keeps its place: first, on a
/// key the Kontalk client made (the client reads its key flags from the
/// first signature over its key). Every other packet is kept byte for byte.
///
/// Refuses a revoked or expired key, a key with no user id for `jid`, and
/// a user id without a valid self-signature. A user id the server has
/// already certified comes back unchanged. `seed` feeds the randomness a
/// v6 server key's signature salt needs.
pub fn certify(
    server: &ServerKey,
    user_key: &[u8],
    jid: &str,
    seed: [u8; 32],
    now_unix: u64,
) -> Result<Vec<u8>, KeyError> {
    certify_as(
        server,
        user_key,
        jid,
        seed,
        now_unix,
        SignatureType::CertGeneric,
    )
}

/// [`certify`] with a certification type of the caller's choice (tests
/// make 0x13 certifications with it, which must not count).
pub(crate) fn certify_as(
    server: &ServerKey,
    user_key: &[u8],
    jid: &str,
    seed: [u8; 32],
    now_unix: u64,
    typ: SignatureType,
) -> Result<Vec<u8>, KeyError> {
    let now = timestamp(now_unix)?;
    let key = UserKey::parse(user_key)?;
    if key.is_revoked() {
        return Err(KeyError::Revoked);
    }
    if key.is_expired(now_unix) {
        return Err(KeyError::Expired);
    }
    let primary = &key.key.primary_key;
    let mut named = key
        .key
        .details
        .users
        .iter()
        .filter(|u| uid_email(&uid_string(&u.id)).eq_ignore_ascii_case(jid))
        .peekable();
    if named.peek().is_none() {
        return Err(KeyError::NoMatchingUid);
    }
    let user = named
        .find(|u| {
            u.signatures
                .iter()
                .any(|s| is_self_signature(s, primary, &u.id))
        })
        .ok_or(KeyError::NoSelfSignature)?;
    let server_public = server.primary_public();
    if user
        .signatures
        .iter()
        .any(|s| is_certification_by(s, &[typ], primary, &user.id, server_public))
    {
        return Ok(key.bytes);
    }

    let signer = &server.secret.primary_key;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut config = SignatureConfig::from_key(&mut rng, signer, typ).map_err(crypto)?;
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::SignatureCreationTime(now)).map_err(crypto)?,
        Subpacket::regular(SubpacketData::IssuerFingerprint(signer.fingerprint()))
            .map_err(crypto)?,
    ];
    config.unhashed_subpackets = issuer_key_id(signer)?;
    let sig = config
        .sign_certification_third_party(signer, &Password::empty(), primary, Tag::UserId, &user.id)
        .map_err(crypto)?;
    let mut packet = Vec::new();
    sig.to_writer_with_header(&mut packet).map_err(crypto)?;
    insert_after_uid(&key.bytes, user.id.id(), &packet)
}

/// Inserts `packet` after the signatures (and trust packets) that follow
/// the first user id packet whose body is `uid` in the first key of `bytes`.
fn insert_after_uid(bytes: &[u8], uid: &[u8], packet: &[u8]) -> Result<Vec<u8>, KeyError> {
    let all = packets::split(bytes).map_err(bad_packet)?;
    if all.first().map(|p| p.tag) != Some(packets::TAG_PUBLIC_KEY) {
        return Err(bad_packet(
            "the key does not start with a public key packet",
        ));
    }
    let key_end = all
        .iter()
        .skip(1)
        .position(|p| p.tag == packets::TAG_PUBLIC_KEY)
        .map_or(all.len(), |i| i + 1);
    let at = (1..key_end)
        .find(|&i| all[i].tag == packets::TAG_USER_ID && bytes[all[i].body.clone()] == *uid)
        .ok_or(KeyError::NoMatchingUid)?;
    let after = (at + 1..key_end)
        .find(|&i| !matches!(all[i].tag, packets::TAG_SIGNATURE | packets::TAG_TRUST))
        .unwrap_or(key_end);
    let offset = all.get(after).map_or(bytes.len(), |p| p.whole.start);
    let mut out = Vec::with_capacity(bytes.len() + packet.len());
    out.extend_from_slice(&bytes[..offset]);
    out.extend_from_slice(packet);
    out.extend_from_slice(&bytes[offset..]);
    Ok(out)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
