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

/// [`proto_core::StoreRequest::DirectoryChanges`]: the changes, the
/// log's highest number and its epoch.
pub(super) fn changes(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> Result<(Vec<DirectoryChange>, u64, String), Failure> {
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
    let changes = rows.collect::<Result<_, _>>()?;
    let last: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM directory_log")?
        .query_row([], |row| row.get(0))?;
    let epoch: String = conn
        .prepare_cached("SELECT epoch FROM directory_epoch")?
        .query_row([], |row| row.get(0))?;
    Ok((changes, last.map_or(0, |l| l.max(0) as u64), epoch))
}

/// [`proto_core::StoreRequest::StoreDirectory`].
pub(super) fn store(
    conn: &Connection,
    home: &str,
    epoch: &str,
    reset: bool,
    changes: &[DirectoryChange],
) -> Result<(), Failure> {
    if reset {
        conn.prepare_cached("DELETE FROM directory WHERE home = ?1")?
            .execute([home])?;
        conn.prepare_cached("DELETE FROM directory_seen WHERE home = ?1")?
            .execute([home])?;
    }
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
        "INSERT INTO directory_seen (home, seq, epoch) VALUES (?1, ?2, ?3)
         ON CONFLICT (home) DO UPDATE SET seq = excluded.seq, epoch = excluded.epoch",
    )?
    .execute(params![home, to_int(last)?, epoch])?;
    Ok(())
}

/// [`proto_core::StoreRequest::LoadDirectory`].
pub(super) fn load(conn: &Connection) -> Result<Directory, Failure> {
    let users = conn
        .prepare_cached("SELECT home, username FROM directory ORDER BY home, username")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let seen = conn
        .prepare_cached("SELECT home, seq, epoch FROM directory_seen ORDER BY home")?
        .query_map([], |row| Ok((row.get(0)?, from_int(row, 1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let epoch = conn
        .prepare_cached("SELECT epoch FROM directory_epoch")?
        .query_row([], |row| row.get(0))?;
    Ok(Directory { users, seen, epoch })
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

    /// The directory loaded, its own (random) epoch checked and left out.
    fn load(store: &mut Store) -> Vec<StoreReply> {
        let mut replies = run(store, vec![StoreRequest::LoadDirectory]);
        if let [StoreReply::Directory(d)] = &mut replies[..] {
            assert_eq!(d.epoch.len(), 32, "{d:?}");
            d.epoch.clear();
        }
        replies
    }

    fn changes(store: &mut Store, after: u64, limit: u32) -> Vec<DirectoryChange> {
        let (changes, _) = changes_and_last(store, after, limit);
        changes
    }

    fn changes_and_last(store: &mut Store, after: u64, limit: u32) -> (Vec<DirectoryChange>, u64) {
        match &run(store, vec![StoreRequest::DirectoryChanges { after, limit }])[..] {
            [StoreReply::DirectoryChanges { changes, last, .. }] => (changes.clone(), *last),
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
        assert_eq!(
            changes_and_last(&mut store, 5, 10),
            (vec![], 5),
            "the log's end"
        );
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
            epoch: "e1".into(),
            reset: false,
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
                    epoch: "g1".into(),
                    reset: false,
                    changes: vec![change(9, "c", true)],
                },
            ],
        );
        assert_eq!(
            load(&mut store),
            [StoreReply::Directory(Directory {
                users: vec![
                    ("gamma.kontalk.net".into(), "c".into()),
                    ("prime.kontalk.net".into(), "b".into())
                ],
                seen: vec![
                    ("gamma.kontalk.net".into(), 9, "g1".into()),
                    ("prime.kontalk.net".into(), 3, "e1".into())
                ],
                epoch: String::new(),
            })]
        );
        // None of it is this server's own change.
        assert_eq!(changes(&mut store, 0, 10), []);
        // prime starts over (its log was lost): what was known of it goes,
        // and its numbers count from 0 again.
        run(
            &mut store,
            vec![StoreRequest::StoreDirectory {
                home: "prime.kontalk.net".into(),
                epoch: "e2".into(),
                reset: true,
                changes: vec![change(1, "z", true)],
            }],
        );
        assert_eq!(
            load(&mut store),
            [StoreReply::Directory(Directory {
                users: vec![
                    ("gamma.kontalk.net".into(), "c".into()),
                    ("prime.kontalk.net".into(), "z".into())
                ],
                seen: vec![
                    ("gamma.kontalk.net".into(), 9, "g1".into()),
                    ("prime.kontalk.net".into(), 1, "e2".into())
                ],
                epoch: String::new(),
            })]
        );
    }
}
