//! Tests of the keys: the server's key, user keys made like the client's,
//! certification, revocation and expiry.
use rsa::traits::PublicKeyParts;

use super::super::fixtures::{
    fixture, public_bytes, rsa_private, user_expiring, user_revoked_by, NOW, USER_CREATED,
};
use super::super::packets;
use super::*;

fn user_bytes() -> Vec<u8> {
    public_bytes(&fixture().user)
}

#[test]
fn server_key_round_trips_through_armor() {
    let f = fixture();
    let armored = f.server.to_armored();
    assert!(armored.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"));
    let again = ServerKey::from_bytes(armored.as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), f.server.fingerprint());
    assert_eq!(again.public_bytes(), f.server.public_bytes());
    // It still certifies, and what it certifies verifies with the original.
    let signed = certify(&again, &user_bytes(), &f.jid, [9; 32], NOW).unwrap();
    assert!(UserKey::parse(&signed)
        .unwrap()
        .certified_by(&f.server, &f.jid));
    // A binary secret key reads too.
    let binary = f.server.secret.to_bytes().unwrap();
    let again = ServerKey::from_bytes(&binary).unwrap();
    assert_eq!(again.fingerprint(), f.server.fingerprint());
}

#[test]
fn server_key_is_what_was_asked_for() {
    let f = fixture();
    let fpr = f.server.fingerprint();
    assert_eq!(fpr.len(), 40);
    assert!(fpr
        .chars()
        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
    // A v4 key id is the low 64 bits of the fingerprint.
    assert_eq!(f.server.key_id(), fpr[24..]);
    let public = UserKey::parse(&f.server.public_bytes()).unwrap();
    assert_eq!(public.fingerprint(), fpr);
    assert_eq!(public.created(), USER_CREATED - 86_400);
    assert_eq!(public.user_ids(), ["kontalkd <localhost>"]);
    let (n, e) = public.primary_rsa().unwrap();
    assert_eq!(n.len() * 8, 2048);
    assert_eq!(e, [1, 0, 1]);
    // rPGP's own check of every binding: the self-signature and the
    // encryption subkey's binding, both SHA-256, dated at creation.
    public.key.verify_bindings().unwrap();
    let sig = &public.key.details.users[0].signatures[0];
    assert_eq!(sig.hash_alg(), Some(HashAlgorithm::Sha256));
    assert_eq!(
        sig.created().map(Timestamp::as_secs),
        Some(public.created() as u32)
    );
    assert!(sig.key_flags().certify() && sig.key_flags().sign());
    let sub = &public.key.public_subkeys[0];
    assert!(matches!(sub.key.public_params(), PublicParams::RSA(_)));
    assert!(sub.signatures[0].key_flags().encrypt_comms());
    assert!(!public.is_revoked());
    assert_eq!(public.expires(), None);
}

#[test]
fn server_key_generation_depends_on_the_seed_alone() {
    let f = fixture();
    let again =
        ServerKey::generate([1; 32], "kontalkd <localhost>", USER_CREATED - 86_400).unwrap();
    assert_eq!(again.public_bytes(), f.server.public_bytes());
    assert_eq!(again.to_armored(), f.server.to_armored());
}

#[test]
fn a_protected_or_public_key_is_no_server_key() {
    let f = fixture();
    assert!(matches!(
        ServerKey::from_bytes(&f.server.public_bytes()),
        Err(KeyError::BadPacket(_))
    ));
    let mut secret = f.server.secret.clone();
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    secret
        .primary_key
        .set_password(&mut rng, &Password::from("secret"))
        .unwrap();
    let armored = secret.to_armored_string(ArmorOptions::default()).unwrap();
    assert_eq!(
        ServerKey::from_bytes(armored.as_bytes()).unwrap_err(),
        KeyError::Protected
    );
    assert!(matches!(
        ServerKey::from_bytes(b"not a key"),
        Err(KeyError::BadPacket(_))
    ));
}

#[test]
fn user_key_facts() {
    let f = fixture();
    let key = UserKey::parse(&user_bytes()).unwrap();
    assert_eq!(key.created(), USER_CREATED);
    assert_eq!(key.user_ids(), [format!("Test User <{}>", f.jid)]);
    assert_eq!(key.emails(), std::slice::from_ref(&f.jid));
    assert_eq!(key.email_domains(), [Some("localhost".to_owned())]);
    assert_eq!(
        key.fingerprint(),
        hex_upper(f.user.fingerprint().as_bytes())
    );
    // The modulus and exponent are the rsa crate's.
    let rsa = rsa_private(&f.user.primary_key);
    let (n, e) = key.primary_rsa().unwrap();
    assert_eq!(n, rsa.n().to_bytes_be());
    assert_eq!(e, rsa.e().to_bytes_be());
    assert!(!key.is_revoked());
    assert_eq!(key.expires(), None);
    assert!(!key.is_expired(NOW));
    // Created in the future (beyond the clock skew allowed) counts as expired.
    assert!(!key.is_expired(USER_CREATED - CLOCK_SKEW));
    assert!(key.is_expired(USER_CREATED - CLOCK_SKEW - 1));
    // Armored, the same key.
    let armored = f
        .user
        .to_public_key()
        .to_armored_string(ArmorOptions::default())
        .unwrap();
    let again = UserKey::parse(armored.as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), key.fingerprint());
    assert_eq!(again.bytes(), key.bytes());
    // Not a key.
    assert!(matches!(UserKey::parse(b""), Err(KeyError::BadPacket(_))));
    assert!(matches!(
        UserKey::parse(&[0x99, 0, 0]),
        Err(KeyError::BadPacket(_))
    ));
}

#[test]
fn the_client_like_key_is_bound_as_the_client_binds_it() {
    let f = fixture();
    let key = UserKey::parse(&user_bytes()).unwrap();
    // Uncertified, rPGP can check every binding at once.
    key.key.verify_bindings().unwrap();
    let sig = &key.key.details.users[0].signatures[0];
    assert_eq!(sig.typ(), Some(SignatureType::CertPositive));
    assert_eq!(sig.hash_alg(), Some(HashAlgorithm::Sha256));
    assert_eq!(sig.key_flags(), fixture_flags());
    let subs = &key.key.public_subkeys;
    assert_eq!(subs.len(), 2);
    // The signing subkey's binding embeds its back-signature (0x19).
    let back = subs[0].signatures[0].embedded_signature().unwrap();
    assert_eq!(back.typ(), Some(SignatureType::KeyBinding));
    back.verify_primary_key_binding(&subs[0].key, &key.key.primary_key)
        .unwrap();
    assert!(subs[1].signatures[0].key_flags().encrypt_comms());
    assert_eq!(
        key.fingerprint(),
        hex_upper(f.user.fingerprint().as_bytes())
    );
}

fn fixture_flags() -> KeyFlags {
    super::super::fixtures::client_primary_flags()
}

/// What the Kontalk client does with its key (AC `PGP.getKeyFlags`):
/// the key flags of the first signature over the primary key that has
/// hashed subpackets (direct signatures first, then each user id's in
/// order).
fn client_key_flags(key: &UserKey) -> KeyFlags {
    let details = &key.key.details;
    details
        .direct_signatures
        .iter()
        .chain(details.users.iter().flat_map(|u| u.signatures.iter()))
        .find(|s| {
            s.config()
                .is_some_and(|c| c.hashed_subpackets().next().is_some())
        })
        .map(Signature::key_flags)
        .unwrap()
}

#[test]
fn certify_keeps_the_self_signature_first_and_the_rest_as_it_was() {
    let f = fixture();
    let before = user_bytes();
    let after = certify(&f.server, &before, &f.jid, [7; 32], NOW).unwrap();

    // Byte for byte, the input with one packet inserted right after the
    // user id's self-signature.
    let old = packets::split(&before).unwrap();
    let new = packets::split(&after).unwrap();
    assert_eq!(new.len(), old.len() + 1);
    let uid_at = old
        .iter()
        .position(|p| p.tag == packets::TAG_USER_ID)
        .unwrap();
    assert_eq!(old[uid_at + 1].tag, packets::TAG_SIGNATURE);
    let inserted = &new[uid_at + 2];
    assert_eq!(inserted.tag, packets::TAG_SIGNATURE);
    let mut rebuilt = after[..inserted.whole.start].to_vec();
    rebuilt.extend_from_slice(&after[inserted.whole.end..]);
    assert_eq!(rebuilt, before);

    let key = UserKey::parse(&after).unwrap();
    let primary = &key.key.primary_key;
    let user = &key.key.details.users[0];
    assert_eq!(user.signatures.len(), 2);
    // First: the user's own positive self-signature, still valid.
    let own = &user.signatures[0];
    assert_eq!(own.typ(), Some(SignatureType::CertPositive));
    assert!(names_issuer(own, primary));
    own.verify_certification(primary, Tag::UserId, &user.id)
        .unwrap();
    // Then: the server's generic certification, made at NOW.
    let server = &user.signatures[1];
    assert_eq!(server.typ(), Some(SignatureType::CertGeneric));
    assert_eq!(server.created().map(Timestamp::as_secs), Some(NOW as u32));
    assert!(names_issuer(server, f.server.primary_public()));
    server
        .verify_third_party_certification(primary, f.server.primary_public(), Tag::UserId, &user.id)
        .unwrap();
    // The key flags the client reads are still its own (certify + authenticate).
    assert_eq!(client_key_flags(&key), fixture_flags());
    assert!(client_key_flags(&key).authentication());
    // rPGP's all-at-once check refuses the third-party signature (the
    // caveat this module works around); each subkey still binds.
    assert!(key.key.verify_bindings().is_err());
    for sub in &key.key.public_subkeys {
        sub.verify_bindings(primary).unwrap();
    }
    // Fingerprint and creation time are the key's.
    assert_eq!(
        key.fingerprint(),
        UserKey::parse(&before).unwrap().fingerprint()
    );
}

#[test]
fn certified_by_the_server_and_no_one_else() {
    let f = fixture();
    let uncertified = UserKey::parse(&user_bytes()).unwrap();
    assert!(!uncertified.certified_by(&f.server, &f.jid));
    let signed = certify(&f.server, &user_bytes(), &f.jid, [7; 32], NOW).unwrap();
    let key = UserKey::parse(&signed).unwrap();
    assert!(key.certified_by(&f.server, &f.jid));
    assert!(key.certified_by(&f.server, &f.jid.to_uppercase()));
    assert!(key.certified_by_key(f.server.public_key(), &f.jid));
    assert!(!key.certified_by(&f.other_server, &f.jid));
    assert!(!key.certified_by(&f.server, "someone@localhost"));
    // Certifying again changes nothing.
    let twice = certify(&f.server, &signed, &f.jid, [8; 32], NOW).unwrap();
    assert_eq!(twice, signed);
    // Armored input, binary output with the same certification.
    let armored = f
        .user
        .to_public_key()
        .to_armored_string(ArmorOptions::default())
        .unwrap();
    let from_armor = certify(&f.server, armored.as_bytes(), &f.jid, [7; 32], NOW).unwrap();
    assert_eq!(from_armor, signed);
}

#[test]
fn only_generic_and_casual_certifications_count() {
    let f = fixture();
    let check = |typ: SignatureType| {
        let signed = certify_as(&f.server, &user_bytes(), &f.jid, [7; 32], NOW, typ).unwrap();
        let key = UserKey::parse(&signed).unwrap();
        // The signature is there and valid; only its type decides.
        let sig = key.key.details.users[0].signatures.last().unwrap();
        assert_eq!(sig.typ(), Some(typ));
        sig.verify_third_party_certification(
            &key.key.primary_key,
            f.server.primary_public(),
            Tag::UserId,
            &key.key.details.users[0].id,
        )
        .unwrap();
        key.certified_by(&f.server, &f.jid)
    };
    assert!(check(SignatureType::CertGeneric));
    assert!(check(SignatureType::CertCasual));
    assert!(!check(SignatureType::CertPersona));
    assert!(!check(SignatureType::CertPositive));
}

#[test]
fn a_certification_that_does_not_verify_does_not_count() {
    let f = fixture();
    let signed = certify(&f.server, &user_bytes(), &f.jid, [7; 32], NOW).unwrap();
    let mut key = UserKey::parse(&signed).unwrap();
    // The same certification over another user id.
    let sig = key.key.details.users[0].signatures[1].clone();
    let other = UserId::from_str(PacketHeaderVersion::New, "Mallory <mallory@localhost>").unwrap();
    key.key
        .details
        .users
        .push(SignedUser::new(other, vec![sig]));
    assert!(!key.certified_by(&f.server, "mallory@localhost"));
    assert!(key.certified_by(&f.server, &f.jid));
}

#[test]
fn certify_refuses_what_it_must_not_sign() {
    let f = fixture();
    assert_eq!(
        certify(&f.server, &user_bytes(), "other@localhost", [7; 32], NOW),
        Err(KeyError::NoMatchingUid)
    );
    let revoked = public_bytes(&user_revoked_by(None));
    assert_eq!(
        certify(&f.server, &revoked, &f.jid, [7; 32], NOW),
        Err(KeyError::Revoked)
    );
    let expiring = user_expiring(3600);
    assert!(certify(&f.server, &expiring, &f.jid, [7; 32], USER_CREATED + 60).is_ok());
    assert_eq!(
        certify(&f.server, &expiring, &f.jid, [7; 32], USER_CREATED + 3600),
        Err(KeyError::Expired)
    );
    assert_eq!(
        certify(
            &f.server,
            &user_bytes(),
            &f.jid,
            [7; 32],
            u64::from(u32::MAX) + 1
        ),
        Err(KeyError::BadTime(u64::from(u32::MAX) + 1))
    );
    // A user id whose only signature is someone else's.
    let mut key = fixture().user.to_public_key();
    key.details.users[0].signatures = vec![other_servers_certification()];
    let bytes = key.to_bytes().unwrap();
    assert_eq!(
        certify(&f.server, &bytes, &f.jid, [7; 32], NOW),
        Err(KeyError::NoSelfSignature)
    );
}

/// The other server's certification of the user's user id.
fn other_servers_certification() -> Signature {
    let f = fixture();
    let signed = certify(&f.other_server, &user_bytes(), &f.jid, [7; 32], NOW).unwrap();
    let key = UserKey::parse(&signed).unwrap();
    key.key.details.users[0].signatures[1].clone()
}

#[test]
fn expiry_comes_from_the_primary_user_ids_self_signature() {
    let key = UserKey::parse(&user_expiring(3600)).unwrap();
    assert_eq!(key.expires(), Some(USER_CREATED + 3600));
    assert!(!key.is_expired(USER_CREATED + 3599));
    assert!(key.is_expired(USER_CREATED + 3600));
    // Zero means "never".
    let key = UserKey::parse(&user_expiring(0)).unwrap();
    assert_eq!(key.expires(), None);
}

#[test]
fn revocation_counts_only_when_the_key_made_it_and_it_verifies() {
    let f = fixture();
    let revoked = public_bytes(&user_revoked_by(None));
    let key = UserKey::parse(&revoked).unwrap();
    assert!(key.is_revoked());
    assert_eq!(
        verify_revocation(&revoked).unwrap().fingerprint(),
        key.fingerprint()
    );
    assert_eq!(
        verify_revocation(&user_bytes()).unwrap_err(),
        KeyError::NotRevoked
    );
    // A revocation made by another key is no revocation of this one.
    let by_other = public_bytes(&user_revoked_by(Some(&f.server.secret.primary_key)));
    assert!(!UserKey::parse(&by_other).unwrap().is_revoked());
    // Nor is the key's own revocation of another key.
    let mut key = fixture().user.to_public_key();
    let other = f.server.public_key().key.primary_key.clone();
    let sig = super::super::fixtures::revocation(&fixture().user.primary_key, &other);
    key.details.revocation_signatures.push(sig);
    assert!(!UserKey::parse(&key.to_bytes().unwrap())
        .unwrap()
        .is_revoked());
}

#[test]
fn uid_email_and_domain() {
    assert_eq!(uid_email("Name <a@b.c>"), "a@b.c");
    assert_eq!(uid_email("a@b.c"), "a@b.c");
    assert_eq!(uid_email("x <y> <a@b.c>"), "a@b.c");
    assert_eq!(uid_email("broken> <"), "broken> <");
    assert_eq!(email_domain("a@b.c"), Some("b.c"));
    assert_eq!(email_domain("a@b@c"), Some("c"));
    assert_eq!(email_domain("abc"), None);
}
