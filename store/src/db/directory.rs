//! The Kontalk network's directory: the numbered changes of this server's
//! accounts (what the other servers fetch), and the other servers' users
//! with the last change seen from each.

use proto_core::{Directory, DirectoryChange};
use rusqlite::{params, Connection, OptionalExtension};

use super::{from_int, to_int, Failure};

/// Numbers a change of one of this server's accounts, replacing its older
/// change: in the transaction that creates or deletes the account.
pub(super) fn account_changed(
    conn: &Connection,
    username: &str,
    present: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM directory_log WHERE username = ?1")?
        .execute([username])?;
    conn.prepare_cached("INSERT INTO directory_log (username, present) VALUES (?1, ?2)")?
        .execute(params![username, present])?;
    Ok(())
}

/// [`proto_core::StoreRequest::DirectoryChanges`].
pub(super) fn changes(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> Result<Vec<DirectoryChange>, Failure> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, username, present FROM directory_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![to_int(after)?, limit], |row| {
        Ok(DirectoryChange {
            seq: from_int(row, 0)?,
            username: row.get(1)?,
            present: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// [`proto_core::StoreRequest::StoreDirectory`].
pub(super) fn store(
    conn: &Connection,
    home: &str,
    changes: &[DirectoryChange],
) -> Result<(), Failure> {
    let seen: u64 = conn
        .prepare_cached("SELECT seq FROM directory_seen WHERE home = ?1")?
        .query_row([home], |row| from_int(row, 0))
        .optional()?
        .unwrap_or(0);
    let mut last = seen;
    for c in changes.iter().filter(|c| c.seq > seen) {
        if c.present {
            conn.prepare_cached(
                "INSERT INTO directory (home, username) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute([home, &c.username])?;
        } else {
            conn.prepare_cached("DELETE FROM directory WHERE home = ?1 AND username = ?2")?
                .execute([home, &c.username])?;
        }
        last = last.max(c.seq);
    }
    conn.prepare_cached(
        "INSERT INTO directory_seen (home, seq) VALUES (?1, ?2)
         ON CONFLICT (home) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![home, to_int(last)?])?;
    Ok(())
}

/// [`proto_core::StoreRequest::LoadDirectory`].
pub(super) fn load(conn: &Connection) -> Result<Directory, Failure> {
    let users = conn
        .prepare_cached("SELECT home, username FROM directory ORDER BY home, username")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let seen = conn
        .prepare_cached("SELECT home, seq FROM directory_seen ORDER BY home")?
        .query_map([], |row| Ok((row.get(0)?, from_int(row, 1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Directory { users, seen })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{creds, run, TempDir};
    use crate::Store;
    use proto_core::{Directory, DirectoryChange, StoreReply, StoreRequest};

    fn change(seq: u64, username: &str, present: bool) -> DirectoryChange {
        DirectoryChange {
            seq,
            username: username.into(),
            present,
        }
    }

    fn changes(store: &mut Store, after: u64, limit: u32) -> Vec<DirectoryChange> {
        match &run(store, vec![StoreRequest::DirectoryChanges { after, limit }])[..] {
            [StoreReply::DirectoryChanges(c)] => c.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_account_change_is_numbered_with_the_change_itself() {
        let dir = TempDir::new("directory-log");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        let create = |u: &str| StoreRequest::CreateAccount {
            username: u.into(),
            credentials: creds("pw"),
        };
        run(
            &mut store,
            vec![create("bob"), create("carol"), create("bob")],
        );
        assert_eq!(
            changes(&mut store, 0, 10),
            [
                change(1, "alice", true),
                change(2, "bob", true),
                change(3, "carol", true)
            ],
            "the taken name made no change"
        );
        // A deletion replaces the account's creation, with a new number.
        run(
            &mut store,
            vec![StoreRequest::DeleteAccount {
                username: "bob".into(),
            }],
        );
        store.delete_user("alice").unwrap();
        assert_eq!(
            changes(&mut store, 0, 10),
            [
                change(3, "carol", true),
                change(4, "bob", false),
                change(5, "alice", false)
            ]
        );
        // From a number on, and a bounded number of them.
        assert_eq!(changes(&mut store, 3, 1), [change(4, "bob", false)]);
        assert_eq!(changes(&mut store, 5, 10), []);
        // Created again: present, numbered after everything.
        store.add_user("alice", "pw").unwrap();
        assert_eq!(changes(&mut store, 5, 10), [change(6, "alice", true)]);
        // The numbers survive a restart.
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("dave", "pw").unwrap();
        assert_eq!(changes(&mut store, 6, 10), [change(7, "dave", true)]);
    }

    #[test]
    fn another_servers_changes_apply_once_with_the_last_number_seen() {
        let dir = TempDir::new("directory-peer");
        let mut store = Store::open(&dir.0).unwrap();
        let apply = |changes: Vec<DirectoryChange>| StoreRequest::StoreDirectory {
            home: "prime.kontalk.net".into(),
            changes,
        };
        run(
            &mut store,
            vec![
                apply(vec![change(1, "a", true), change(2, "b", true)]),
                apply(vec![change(3, "a", false)]),
                // A repeat of what was seen changes nothing.
                apply(vec![change(1, "a", true)]),
                StoreRequest::StoreDirectory {
                    home: "gamma.kontalk.net".into(),
                    changes: vec![change(9, "c", true)],
                },
            ],
        );
        let loaded = run(&mut store, vec![StoreRequest::LoadDirectory]);
        assert_eq!(
            loaded,
            [StoreReply::Directory(Directory {
                users: vec![
                    ("gamma.kontalk.net".into(), "c".into()),
                    ("prime.kontalk.net".into(), "b".into())
                ],
                seen: vec![
                    ("gamma.kontalk.net".into(), 9),
                    ("prime.kontalk.net".into(), 3)
                ],
            })]
        );
        // None of it is this server's own change.
        assert_eq!(changes(&mut store, 0, 10), []);
    }
}
