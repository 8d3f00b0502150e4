//! Kontalk accounts: verification codes of the phone registration, the
//! OpenPGP key each account logs in with, and private key backups.

use proto_core::sasl::Credentials;
use proto_core::{CodeIssued, Registration, StoredKey};
use rusqlite::{params, Connection, OptionalExtension};

use super::{create_account, from_int, to_int, Failure};

/// [`proto_core::StoreRequest::IssueCode`].
pub(super) fn issue_code(
    conn: &Connection,
    username: &str,
    code: &str,
    now: u64,
    expires: u64,
    resend_after: u64,
    force: bool,
) -> Result<CodeIssued, Failure> {
    if !force && account_exists(conn, username)? {
        return Ok(CodeIssued::Registered);
    }
    let last: Option<(u64, u64)> = conn
        .prepare_cached("SELECT issued, expires FROM verification_codes WHERE username = ?1")?
        .query_row([username], |row| Ok((from_int(row, 0)?, from_int(row, 1)?)))
        .optional()?;
    if let Some((issued, until)) = last {
        if until > now && now < issued.saturating_add(resend_after) {
            return Ok(CodeIssued::Throttled);
        }
    }
    conn.prepare_cached(
        "INSERT INTO verification_codes (username, code, issued, expires, attempts)
         VALUES (?1, ?2, ?3, ?4, 0)
         ON CONFLICT (username) DO UPDATE SET code = excluded.code,
             issued = excluded.issued, expires = excluded.expires, attempts = 0",
    )?
    .execute(params![username, code, to_int(now)?, to_int(expires)?])?;
    Ok(CodeIssued::Issued)
}

/// [`proto_core::StoreRequest::WithdrawCode`]: whether it was there.
pub(super) fn withdraw_code(
    conn: &Connection,
    username: &str,
    code: &str,
) -> Result<bool, Failure> {
    Ok(conn
        .prepare_cached("DELETE FROM verification_codes WHERE username = ?1 AND code = ?2")?
        .execute([username, code])?
        > 0)
}

/// [`proto_core::StoreRequest::Register`].
pub(super) fn register(
    conn: &Connection,
    username: &str,
    code: &str,
    now: u64,
    max_attempts: u32,
    credentials: &Credentials,
    key: &StoredKey,
) -> Result<Registration, Failure> {
    let stored: Option<(String, u64, u32)> = conn
        .prepare_cached(
            "SELECT code, expires, attempts FROM verification_codes WHERE username = ?1",
        )?
        .query_row([username], |row| {
            Ok((row.get(0)?, from_int(row, 1)?, row.get(2)?))
        })
        .optional()?;
    let Some((right, expires, attempts)) = stored else {
        return Ok(Registration::WrongCode);
    };
    if expires <= now || right != code {
        if expires <= now || attempts + 1 >= max_attempts {
            conn.prepare_cached("DELETE FROM verification_codes WHERE username = ?1")?
                .execute([username])?;
        } else {
            conn.prepare_cached(
                "UPDATE verification_codes SET attempts = attempts + 1 WHERE username = ?1",
            )?
            .execute([username])?;
        }
        return Ok(Registration::WrongCode);
    }
    conn.prepare_cached("DELETE FROM verification_codes WHERE username = ?1")?
        .execute([username])?;
    let created = create_account(conn, username, credentials)?;
    set_key(conn, username, key)?;
    Ok(Registration::Registered { created })
}

/// [`proto_core::StoreRequest::LoadKey`].
pub(super) fn load_key(conn: &Connection, username: &str) -> rusqlite::Result<Option<StoredKey>> {
    conn.prepare_cached("SELECT fingerprint, key FROM kontalk_keys WHERE username = ?1")?
        .query_row([username], |row| {
            Ok(StoredKey {
                fingerprint: row.get(0)?,
                key: row.get(1)?,
            })
        })
        .optional()
}

/// [`proto_core::StoreRequest::SetKey`]: `false` when there is no such account.
pub(super) fn set_key(conn: &Connection, username: &str, key: &StoredKey) -> Result<bool, Failure> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO kontalk_keys (username, fingerprint, key)
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM accounts WHERE username = ?1)
             ON CONFLICT (username) DO UPDATE SET fingerprint = excluded.fingerprint,
                 key = excluded.key",
        )?
        .execute(params![username, key.fingerprint, key.key])?;
    Ok(changed > 0)
}

/// [`proto_core::StoreRequest::SetPrivateKey`]: `false` when there is no such account.
pub(super) fn set_private_key(
    conn: &Connection,
    username: &str,
    token: &str,
    private: &[u8],
    public: &[u8],
    expires: u64,
) -> Result<bool, Failure> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO private_keys (token, username, private, public, expires)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM accounts WHERE username = ?2)
             ON CONFLICT (token) DO UPDATE SET username = excluded.username,
                 private = excluded.private, public = excluded.public,
                 expires = excluded.expires",
        )?
        .execute(params![token, username, private, public, to_int(expires)?])?;
    Ok(changed > 0)
}

/// [`proto_core::StoreRequest::LoadPrivateKey`].
pub(super) fn load_private_key(
    conn: &Connection,
    token: &str,
    now: u64,
) -> rusqlite::Result<Option<(Vec<u8>, Vec<u8>)>> {
    conn.prepare_cached(
        "SELECT private, public FROM private_keys WHERE token = ?1 AND expires > ?2",
    )?
    .query_row(params![token, to_int(now)?], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })
    .optional()
}

/// [`proto_core::StoreRequest::ExpireKontalk`].
pub(super) fn expire(conn: &Connection, before: u64) -> Result<(), Failure> {
    let before = to_int(before)?;
    conn.prepare_cached("DELETE FROM verification_codes WHERE expires < ?1")?
        .execute([before])?;
    conn.prepare_cached("DELETE FROM private_keys WHERE expires < ?1")?
        .execute([before])?;
    Ok(())
}

fn account_exists(conn: &Connection, username: &str) -> Result<bool, Failure> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")?
        .query_row([username], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{creds, run, TempDir};
    use crate::Store;
    use proto_core::{CodeIssued, Registration, StoreReply, StoreRequest, StoredKey};

    fn issue(code: &str, now: u64, force: bool) -> StoreRequest {
        StoreRequest::IssueCode {
            username: "4bdd".into(),
            code: code.into(),
            now,
            expires: now + 600,
            resend_after: 60,
            force,
        }
    }

    fn register(code: &str, now: u64, fingerprint: &str) -> StoreRequest {
        StoreRequest::Register {
            username: "4bdd".into(),
            code: code.into(),
            now,
            max_attempts: 3,
            credentials: Box::new(creds("random")),
            key: StoredKey {
                fingerprint: fingerprint.into(),
                key: fingerprint.as_bytes().to_vec(),
            },
        }
    }

    #[test]
    fn a_code_is_throttled_checked_used_up_and_registers_the_key() {
        let dir = TempDir::new("kontalk-codes");
        let mut store = Store::open(&dir.0).unwrap();
        let code = |r: Vec<StoreReply>| r.into_iter().next().unwrap();
        assert_eq!(
            code(run(&mut store, vec![issue("111111", 1000, false)])),
            StoreReply::Code(CodeIssued::Issued)
        );
        // Again within a minute: throttled, the first code stays.
        assert_eq!(
            code(run(&mut store, vec![issue("222222", 1030, false)])),
            StoreReply::Code(CodeIssued::Throttled)
        );
        assert_eq!(
            code(run(&mut store, vec![register("222222", 1040, "A")])),
            StoreReply::Registration(Registration::WrongCode)
        );
        assert_eq!(
            code(run(&mut store, vec![register("111111", 1050, "A")])),
            StoreReply::Registration(Registration::Registered { created: true })
        );
        // Used up.
        assert_eq!(
            code(run(&mut store, vec![register("111111", 1060, "B")])),
            StoreReply::Registration(Registration::WrongCode)
        );
        let key = code(run(
            &mut store,
            vec![StoreRequest::LoadKey {
                username: "4bdd".into(),
            }],
        ));
        assert_eq!(
            key,
            StoreReply::Key(Some(StoredKey {
                fingerprint: "A".into(),
                key: b"A".to_vec()
            }))
        );
        // Registered: a new code only with force; registering again keeps the account.
        assert_eq!(
            code(run(&mut store, vec![issue("333333", 2000, false)])),
            StoreReply::Code(CodeIssued::Registered)
        );
        assert_eq!(
            code(run(&mut store, vec![issue("333333", 2000, true)])),
            StoreReply::Code(CodeIssued::Issued)
        );
        assert_eq!(
            code(run(&mut store, vec![register("333333", 2010, "B")])),
            StoreReply::Registration(Registration::Registered { created: false })
        );
    }

    #[test]
    fn a_code_not_sent_is_withdrawn_and_the_number_may_ask_again() {
        let dir = TempDir::new("kontalk-withdraw");
        let mut store = Store::open(&dir.0).unwrap();
        let withdraw = |code: &str| StoreRequest::WithdrawCode {
            username: "4bdd".into(),
            code: code.into(),
        };
        run(&mut store, vec![issue("111111", 1000, false)]);
        // Another code than the stored one withdraws nothing.
        assert_eq!(
            run(&mut store, vec![withdraw("999999")]),
            [StoreReply::Done(false)]
        );
        assert_eq!(
            run(
                &mut store,
                vec![withdraw("111111"), issue("222222", 1001, false)]
            ),
            [StoreReply::Done(true), StoreReply::Code(CodeIssued::Issued)]
        );
        assert_eq!(
            run(&mut store, vec![register("111111", 1002, "A")]),
            [StoreReply::Registration(Registration::WrongCode)]
        );
        assert_eq!(
            run(&mut store, vec![register("222222", 1003, "A")]),
            [StoreReply::Registration(Registration::Registered {
                created: true
            })]
        );
    }

    #[test]
    fn wrong_and_expired_codes_are_gone() {
        let dir = TempDir::new("kontalk-wrong");
        let mut store = Store::open(&dir.0).unwrap();
        run(&mut store, vec![issue("111111", 1000, false)]);
        // Three attempts: the third wrong one ends the code, the right one comes too late.
        let replies = run(
            &mut store,
            vec![
                register("000000", 1001, "A"),
                register("000001", 1002, "A"),
                register("000002", 1003, "A"),
                register("111111", 1004, "A"),
            ],
        );
        assert!(
            replies
                .iter()
                .all(|r| *r == StoreReply::Registration(Registration::WrongCode)),
            "{replies:?}"
        );
        run(&mut store, vec![issue("444444", 2000, false)]);
        assert_eq!(
            run(&mut store, vec![register("444444", 2600, "A")]),
            [StoreReply::Registration(Registration::WrongCode)],
            "expired"
        );
        // Nothing was created.
        assert_eq!(
            run(
                &mut store,
                vec![StoreRequest::LoadKey {
                    username: "4bdd".into()
                }]
            ),
            [StoreReply::Key(None)]
        );
    }

    #[test]
    fn private_key_backups_are_kept_until_they_expire() {
        let dir = TempDir::new("kontalk-private");
        let mut store = Store::open(&dir.0).unwrap();
        let set = |user: &str| StoreRequest::SetPrivateKey {
            username: user.into(),
            token: "1234".into(),
            private: b"secret".to_vec(),
            public: b"public".to_vec(),
            expires: 5000,
        };
        assert_eq!(
            run(&mut store, vec![set("nobody")]),
            [StoreReply::Done(false)]
        );
        run(
            &mut store,
            vec![issue("111111", 1000, false), register("111111", 1001, "A")],
        );
        assert_eq!(run(&mut store, vec![set("4bdd")]), [StoreReply::Done(true)]);
        let load = |now| StoreRequest::LoadPrivateKey {
            token: "1234".into(),
            now,
        };
        assert_eq!(
            run(&mut store, vec![load(4000), load(5000)]),
            [
                StoreReply::PrivateKey(Some((b"secret".to_vec(), b"public".to_vec()))),
                StoreReply::PrivateKey(None)
            ]
        );
        run(
            &mut store,
            vec![StoreRequest::ExpireKontalk { before: 6000 }],
        );
        assert_eq!(
            run(&mut store, vec![load(4000)]),
            [StoreReply::PrivateKey(None)]
        );
    }
}
