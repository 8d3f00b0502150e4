//! The message archive (XEP-0313): each account's messages in arrival
//! order, found by archive id, the other party and time; and each
//! account's archiving preferences.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{from_int, to_int, Failure};
use proto_core::{
    ArchiveDefault, ArchiveEntry, ArchivePage, ArchivePrefs, ArchiveQuery, ArchivedMessage,
};

/// Separates the JIDs of a preference list in its column (U+001F cannot
/// occur in a JID).
const JID_END: char = '\u{1f}';

/// Keeps `entry` in `username`'s archive.
pub(super) fn insert(
    conn: &Connection,
    username: &str,
    entry: &ArchiveEntry,
) -> Result<(), Failure> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO archive (username, sid, with_bare, with_full, stamp, stanza)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS
                 (SELECT 1 FROM accounts WHERE username = ?1)",
        )?
        .execute(params![
            username,
            entry.id,
            entry.with,
            entry.with_full,
            to_int(entry.stamp)?,
            entry.stanza
        ])?;
    if inserted == 0 {
        return Err(Failure::NoAccount(username.to_owned()));
    }
    Ok(())
}

/// The row of the message with archive id `sid`, if it is in the archive.
fn row_of(conn: &Connection, username: &str, sid: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM archive WHERE username = ?1 AND sid = ?2")?
        .query_row([username, sid], |row| row.get(0))
        .optional()
}

/// A page of `username`'s archive; `None` when `after` or `before` names
/// a message that is not in it.
pub(super) fn query(
    conn: &Connection,
    username: &str,
    q: &ArchiveQuery,
) -> Result<Option<ArchivePage>, Failure> {
    let bound = |id: &Option<String>| -> rusqlite::Result<Option<Option<i64>>> {
        match id {
            None => Ok(Some(None)),
            Some(sid) => Ok(row_of(conn, username, sid)?.map(Some)),
        }
    };
    let (Some(after), Some(before)) = (bound(&q.after)?, bound(&q.before)?) else {
        return Ok(None);
    };
    // What with, start, end and ids select; the page is cut from it.
    let mut filter = String::from("username = ?");
    let mut values: Vec<Value> = vec![Value::Text(username.to_owned())];
    if let Some(with) = &q.with {
        filter.push_str(if with.contains('/') {
            " AND with_full = ?"
        } else {
            " AND with_bare = ?"
        });
        values.push(Value::Text(with.clone()));
    }
    if let Some(start) = q.start {
        filter.push_str(" AND stamp >= ?");
        values.push(Value::Integer(to_int(start)?));
    }
    if let Some(end) = q.end {
        filter.push_str(" AND stamp <= ?");
        values.push(Value::Integer(to_int(end)?));
    }
    if !q.ids.is_empty() {
        filter.push_str(" AND sid IN (");
        for (i, id) in q.ids.iter().enumerate() {
            filter.push_str(if i == 0 { "?" } else { ", ?" });
            values.push(Value::Text(id.clone()));
        }
        filter.push(')');
    }
    let count: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM archive WHERE {filter}"))?
        .query_row(params_from_iter(&values), |row| row.get(0))?;
    let mut page_filter = filter;
    if let Some(a) = after {
        page_filter.push_str(" AND id > ?");
        values.push(Value::Integer(a));
    }
    if let Some(b) = before {
        page_filter.push_str(" AND id < ?");
        values.push(Value::Integer(b));
    }
    // One more than the page: whether the range goes on past it.
    values.push(Value::Integer(i64::from(q.max) + 1));
    let order = if q.from_end { "DESC" } else { "ASC" };
    let mut messages: Vec<ArchivedMessage> = conn
        .prepare_cached(&format!(
            "SELECT sid, stamp, stanza FROM archive WHERE {page_filter} ORDER BY id {order} LIMIT ?"
        ))?
        .query_map(params_from_iter(&values), |row| {
            Ok(ArchivedMessage {
                id: row.get(0)?,
                stamp: from_int(row, 1)?,
                stanza: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let complete = messages.len() <= q.max as usize;
    messages.truncate(q.max as usize);
    if q.from_end {
        messages.reverse();
    }
    Ok(Some(ArchivePage {
        messages,
        complete,
        count: u64::try_from(count).unwrap_or(0),
    }))
}

/// Deletes what was archived before `before`.
pub(super) fn expire(conn: &Connection, before: u64) -> rusqlite::Result<()> {
    let before = i64::try_from(before).unwrap_or(i64::MAX);
    conn.prepare_cached("DELETE FROM archive WHERE stamp < ?1")?
        .execute([before])?;
    Ok(())
}

/// Stores `username`'s preferences.
pub(super) fn set_prefs(
    conn: &Connection,
    username: &str,
    prefs: &ArchivePrefs,
) -> Result<(), Failure> {
    super::require_account(conn, username)?;
    let join = |jids: &[String]| {
        jids.iter()
            .map(|j| format!("{j}{JID_END}"))
            .collect::<String>()
    };
    conn.prepare_cached(
        "INSERT INTO archive_prefs (username, default_policy, always, never) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (username) DO UPDATE SET default_policy = excluded.default_policy,
             always = excluded.always, never = excluded.never",
    )?
    .execute(params![username, prefs.default.as_str(), join(&prefs.always), join(&prefs.never)])?;
    Ok(())
}

/// `username`'s preferences, if it set some.
pub(super) fn load_prefs(
    conn: &Connection,
    username: &str,
) -> rusqlite::Result<Option<ArchivePrefs>> {
    let split = |s: String| s.split_terminator(JID_END).map(str::to_owned).collect();
    conn.prepare_cached(
        "SELECT default_policy, always, never FROM archive_prefs WHERE username = ?1",
    )?
    .query_row([username], |row| {
        let default: String = row.get(0)?;
        Ok(ArchivePrefs {
            default: ArchiveDefault::parse(&default).unwrap_or_default(),
            always: split(row.get(1)?),
            never: split(row.get(2)?),
        })
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, TempDir};
    use crate::Store;
    use proto_core::{ArchiveDefault, ArchiveEntry, ArchivePrefs, ArchiveQuery};
    use proto_core::{OfflineStored, StoreReply, StoreRequest, UserData};

    fn entry(id: &str, with_full: &str, stamp: u64) -> ArchiveEntry {
        ArchiveEntry {
            id: id.into(),
            with: with_full.split('/').next().unwrap().into(),
            with_full: with_full.into(),
            stamp,
            stanza: format!("<message><body>{id}</body></message>"),
        }
    }

    fn archive(user: &str, e: ArchiveEntry) -> StoreRequest {
        StoreRequest::Archive {
            username: user.into(),
            entry: e,
        }
    }

    /// The ids of a page, whether it is complete, and the count; `None`
    /// for an unknown after/before id.
    fn page(
        store: &mut Store,
        user: &str,
        query: ArchiveQuery,
    ) -> Option<(Vec<String>, bool, u64)> {
        let reply = run(
            store,
            vec![StoreRequest::QueryArchive {
                username: user.into(),
                query,
            }],
        );
        match reply.into_iter().next() {
            Some(StoreReply::ArchivePage(p)) => p.map(|p| {
                (
                    p.messages.into_iter().map(|m| m.id).collect(),
                    p.complete,
                    p.count,
                )
            }),
            other => panic!("{other:?}"),
        }
    }

    fn q(max: u32) -> ArchiveQuery {
        ArchiveQuery {
            max,
            ..ArchiveQuery::default()
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn store_with_messages() -> (TempDir, Store) {
        let dir = TempDir::new("archive");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        store.add_user("bob", "pw").unwrap();
        let mut reqs = Vec::new();
        for (i, with) in [
            "bob@x/phone",
            "carol@x",
            "bob@x/laptop",
            "carol@x",
            "bob@x/phone",
        ]
        .iter()
        .enumerate()
        {
            reqs.push(archive(
                "alice",
                entry(&format!("a{i}"), with, 100 + i as u64 * 10),
            ));
        }
        reqs.push(archive("bob", entry("b0", "alice@x/r", 100)));
        assert!(run(&mut store, reqs)
            .iter()
            .all(|r| *r == StoreReply::Done(true)));
        (dir, store)
    }

    #[test]
    fn pages_filters_and_ids() {
        let (_dir, mut s) = store_with_messages();
        assert_eq!(
            page(&mut s, "alice", q(10)),
            Some((ids(&["a0", "a1", "a2", "a3", "a4"]), true, 5))
        );
        assert_eq!(
            page(&mut s, "bob", q(10)),
            Some((ids(&["b0"]), true, 1)),
            "one's own only"
        );
        assert_eq!(
            page(&mut s, "alice", q(2)),
            Some((ids(&["a0", "a1"]), false, 5))
        );
        let after = ArchiveQuery {
            after: Some("a1".into()),
            ..q(2)
        };
        assert_eq!(
            page(&mut s, "alice", after),
            Some((ids(&["a2", "a3"]), false, 5))
        );
        let after = ArchiveQuery {
            after: Some("a2".into()),
            ..q(2)
        };
        assert_eq!(
            page(&mut s, "alice", after),
            Some((ids(&["a3", "a4"]), true, 5))
        );
        let last = ArchiveQuery {
            from_end: true,
            ..q(2)
        };
        assert_eq!(
            page(&mut s, "alice", last),
            Some((ids(&["a3", "a4"]), false, 5))
        );
        let before = ArchiveQuery {
            before: Some("a3".into()),
            from_end: true,
            ..q(5)
        };
        assert_eq!(
            page(&mut s, "alice", before),
            Some((ids(&["a0", "a1", "a2"]), true, 5))
        );
        let between = ArchiveQuery {
            after: Some("a0".into()),
            before: Some("a4".into()),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", between),
            Some((ids(&["a1", "a2", "a3"]), true, 5))
        );
        let bare = ArchiveQuery {
            with: Some("bob@x".into()),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", bare),
            Some((ids(&["a0", "a2", "a4"]), true, 3))
        );
        let full = ArchiveQuery {
            with: Some("bob@x/phone".into()),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", full),
            Some((ids(&["a0", "a4"]), true, 2))
        );
        let time = ArchiveQuery {
            start: Some(110),
            end: Some(130),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", time),
            Some((ids(&["a1", "a2", "a3"]), true, 3))
        );
        let some = ArchiveQuery {
            ids: ids(&["a3", "a0", "b0"]),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", some),
            Some((ids(&["a0", "a3"]), true, 2))
        );
        assert_eq!(
            page(&mut s, "alice", q(0)),
            Some((vec![], false, 5)),
            "count only"
        );
        let unknown = ArchiveQuery {
            after: Some("b0".into()),
            ..q(9)
        };
        assert_eq!(
            page(&mut s, "alice", unknown),
            None,
            "another account's id is unknown here"
        );
    }

    #[test]
    fn expiry_deletion_and_missing_accounts() {
        let (_dir, mut s) = store_with_messages();
        assert_eq!(
            run(&mut s, vec![StoreRequest::ExpireArchive { before: 120 }]),
            [StoreReply::Done(true)]
        );
        assert_eq!(
            page(&mut s, "alice", q(9)).unwrap().0,
            ids(&["a2", "a3", "a4"])
        );
        assert_eq!(page(&mut s, "bob", q(9)).unwrap().0, Vec::<String>::new());
        // Archiving for an account that does not exist fails clearly.
        let r = run(&mut s, vec![archive("nobody", entry("n0", "a@x", 1))]);
        assert!(
            matches!(&r[0], StoreReply::Failed(m) if m.contains("nobody")),
            "{r:?}"
        );
        // The archive goes with the account.
        s.delete_user("alice").unwrap();
        s.add_user("alice", "pw").unwrap();
        assert_eq!(page(&mut s, "alice", q(9)).unwrap().0, Vec::<String>::new());
    }

    #[test]
    fn an_offline_message_and_its_archive_copy_are_one() {
        let (_dir, mut s) = store_with_messages();
        let offline = |id: &str| StoreRequest::StoreOffline {
            username: "bob".into(),
            stanza: format!("<message><body>{id}</body></message>"),
            stamp: 500,
            quota: 1,
            archive: Some(entry(id, "alice@x/r", 500)),
            key: None,
            inbox: None,
        };
        assert_eq!(
            run(&mut s, vec![offline("o1"), offline("o2")]),
            [
                StoreReply::Offline(OfflineStored::Stored(1)),
                StoreReply::Offline(OfflineStored::QuotaFull)
            ]
        );
        assert_eq!(page(&mut s, "bob", q(9)).unwrap().0, ids(&["b0", "o1"]));
    }

    #[test]
    fn preferences_round_trip() {
        let (_dir, mut s) = store_with_messages();
        let load = || StoreRequest::LoadUser {
            username: "bob".into(),
        };
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: ids(&["a@x", "b@y"]),
            never: ids(&["c@z"]),
        };
        let set = StoreRequest::SetArchivePrefs {
            username: "bob".into(),
            prefs: prefs.clone(),
        };
        let r = run(&mut s, vec![load(), set, load()]);
        assert_eq!(r[0], StoreReply::User(Some(UserData::default())));
        assert_eq!(r[1], StoreReply::Done(true));
        let StoreReply::User(Some(data)) = &r[2] else {
            panic!("{r:?}")
        };
        assert_eq!(data.archive_prefs.as_ref(), Some(&prefs));
        let empty = ArchivePrefs::default();
        let set = StoreRequest::SetArchivePrefs {
            username: "bob".into(),
            prefs: empty.clone(),
        };
        let r = run(&mut s, vec![set, load()]);
        let StoreReply::User(Some(data)) = &r[1] else {
            panic!("{r:?}")
        };
        assert_eq!(data.archive_prefs.as_ref(), Some(&empty));
    }
}
