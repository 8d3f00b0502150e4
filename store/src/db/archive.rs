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
