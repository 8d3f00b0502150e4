//! Stanzas between the servers of a Kontalk network: the outbox (kept
//! until the other server has them durable) and the inbox (kept until
//! delivered here, repeats recognized by the origin's number).

use proto_core::NetReceived;
use rusqlite::{params, Connection, OptionalExtension};

use super::{from_int, to_int, Failure};

/// [`proto_core::StoreRequest::NetQueue`]: the stanza's number, `None` when
/// `dest` has `limit` kept (counted in `net_outbox_size`, kept with the rows).
pub(super) fn queue(
    conn: &Connection,
    dest: &str,
    stanza: &str,
    limit: u32,
) -> Result<Option<u64>, Failure> {
    let n: i64 = conn
        .prepare_cached("SELECT n FROM net_outbox_size WHERE dest = ?1")?
        .query_row([dest], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if n >= i64::from(limit) {
        return Ok(None);
    }
    conn.prepare_cached("INSERT INTO net_outbox (dest, stanza) VALUES (?1, ?2)")?
        .execute([dest, stanza])?;
    let seq = u64::try_from(conn.last_insert_rowid()).unwrap_or(0);
    conn.prepare_cached(
        "INSERT INTO net_outbox_size (dest, n) VALUES (?1, 1)
         ON CONFLICT (dest) DO UPDATE SET n = n + 1",
    )?
    .execute([dest])?;
    Ok(Some(seq))
}

/// [`proto_core::StoreRequest::NetOutbox`].
pub(super) fn outbox(
    conn: &Connection,
    dest: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<(u64, String)>, Failure> {
    let rows = conn
        .prepare_cached(
            "SELECT seq, stanza FROM net_outbox WHERE dest = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![dest, to_int(after)?, limit], |row| {
            Ok((from_int(row, 0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// [`proto_core::StoreRequest::NetAcked`].
pub(super) fn acked(conn: &Connection, dest: &str, upto: u64) -> Result<(), Failure> {
    let gone = conn
        .prepare_cached("DELETE FROM net_outbox WHERE dest = ?1 AND seq <= ?2")?
        .execute(params![dest, to_int(upto)?])?;
    if gone > 0 {
        conn.prepare_cached("UPDATE net_outbox_size SET n = n - ?2 WHERE dest = ?1")?
            .execute(params![dest, gone as i64])?;
    }
    Ok(())
}

/// [`proto_core::StoreRequest::NetReceive`].
pub(super) fn receive(
    conn: &Connection,
    origin: &str,
    epoch: &str,
    seq: u64,
    prev: Option<u64>,
    stanza: &str,
) -> Result<NetReceived, Failure> {
    let last: u64 = conn
        .prepare_cached("SELECT seq FROM net_received WHERE origin = ?1 AND epoch = ?2")?
        .query_row([origin, epoch], |row| from_int(row, 0))
        .optional()?
        .unwrap_or(0);
    if seq <= last {
        return Ok(NetReceived::Repeat);
    }
    if prev.is_some_and(|p| p > last) {
        return Ok(NetReceived::Gap);
    }
    conn.prepare_cached("INSERT INTO net_inbox (origin, stanza) VALUES (?1, ?2)")?
        .execute([origin, stanza])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO net_received (origin, epoch, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (origin) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
    )?
    .execute(params![origin, epoch, to_int(seq)?])?;
    Ok(NetReceived::New(id))
}

/// [`proto_core::StoreRequest::LoadNetInbox`].
pub(super) fn inbox(conn: &Connection) -> Result<Vec<(i64, String, String)>, Failure> {
    let rows = conn
        .prepare_cached("SELECT id, origin, stanza FROM net_inbox ORDER BY id")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// [`proto_core::StoreRequest::NetDelivered`] (and a stored message that came
/// from the inbox).
pub(super) fn delivered(conn: &Connection, ids: &[i64]) -> Result<(), Failure> {
    let mut stmt = conn.prepare_cached("DELETE FROM net_inbox WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, TempDir};
    use crate::Store;
    use proto_core::{NetReceived, StoreReply, StoreRequest};

    #[test]
    fn the_outbox_numbers_each_stanza_once_and_keeps_it_until_acknowledged() {
        let dir = TempDir::new("net-outbox");
        let mut store = Store::open(&dir.0).unwrap();
        let q = |dest: &str, s: &str| StoreRequest::NetQueue {
            dest: dest.into(),
            stanza: s.into(),
            limit: 2,
        };
        let replies = run(
            &mut store,
            vec![q("prime", "a"), q("gamma", "b"), q("prime", "c")],
        );
        assert_eq!(
            replies,
            [
                StoreReply::NetQueued(Some(1)),
                StoreReply::NetQueued(Some(2)),
                StoreReply::NetQueued(Some(3))
            ]
        );
        // prime's outbox is full (two kept): a third is refused.
        assert_eq!(
            run(&mut store, vec![q("prime", "x")]),
            [StoreReply::NetQueued(None)]
        );
        let read = |store: &mut Store, after| {
            run(
                store,
                vec![StoreRequest::NetOutbox {
                    dest: "prime".into(),
                    after,
                    limit: 10,
                }],
            )
        };
        assert_eq!(
            read(&mut store, 0),
            [StoreReply::NetOutbox(vec![
                (1, "a".into()),
                (3, "c".into())
            ])]
        );
        assert_eq!(
            read(&mut store, 1),
            [StoreReply::NetOutbox(vec![(3, "c".into())])]
        );
        run(
            &mut store,
            vec![StoreRequest::NetAcked {
                dest: "prime".into(),
                upto: 1,
            }],
        );
        // Acknowledged rows are gone and their numbers are never used again,
        // even after a restart.
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        run(
            &mut store,
            vec![StoreRequest::NetAcked {
                dest: "prime".into(),
                upto: 3,
            }],
        );
        assert_eq!(read(&mut store, 0), [StoreReply::NetOutbox(vec![])]);
        // Acknowledged, they make room again (the count survives the restart).
        assert_eq!(
            run(
                &mut store,
                vec![q("prime", "d"), q("prime", "e"), q("prime", "f")]
            ),
            [
                StoreReply::NetQueued(Some(4)),
                StoreReply::NetQueued(Some(5)),
                StoreReply::NetQueued(None)
            ]
        );
        // gamma's row is untouched by prime's acknowledgements.
        assert_eq!(
            run(
                &mut store,
                vec![StoreRequest::NetOutbox {
                    dest: "gamma".into(),
                    after: 0,
                    limit: 10
                }]
            ),
            [StoreReply::NetOutbox(vec![(2, "b".into())])]
        );
    }

    #[test]
    fn the_inbox_takes_each_number_of_an_origin_once_per_epoch() {
        let dir = TempDir::new("net-inbox");
        let mut store = Store::open(&dir.0).unwrap();
        let r = |origin: &str, epoch: &str, seq: u64, s: &str| StoreRequest::NetReceive {
            origin: origin.into(),
            epoch: epoch.into(),
            seq,
            prev: None,
            stanza: s.into(),
        };
        let replies = run(
            &mut store,
            vec![
                r("prime", "e1", 1, "a"),
                r("prime", "e1", 1, "a"),
                r("prime", "e1", 3, "c"),
                r("prime", "e1", 2, "b"),
                r("gamma", "g1", 1, "x"),
                // prime lost its database: its numbers start over.
                r("prime", "e2", 1, "z"),
            ],
        );
        assert_eq!(
            replies,
            [
                StoreReply::NetReceived(NetReceived::New(1)),
                StoreReply::NetReceived(NetReceived::Repeat),
                StoreReply::NetReceived(NetReceived::New(2)),
                StoreReply::NetReceived(NetReceived::Repeat),
                StoreReply::NetReceived(NetReceived::New(3)),
                StoreReply::NetReceived(NetReceived::New(4)),
            ]
        );
        run(
            &mut store,
            vec![StoreRequest::NetDelivered { ids: vec![1, 3] }],
        );
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(
            run(&mut store, vec![StoreRequest::LoadNetInbox]),
            [StoreReply::NetInbox(vec![
                (2, "prime".into(), "c".into()),
                (4, "prime".into(), "z".into())
            ])]
        );
        assert_eq!(
            run(&mut store, vec![r("prime", "e2", 1, "z")]),
            [StoreReply::NetReceived(NetReceived::Repeat)],
            "the last number survives a restart"
        );
        // After one that was not kept, the next of its link is not either:
        // it would pass for the last, and the one before for a repeat.
        let after = |seq: u64, prev: u64| StoreRequest::NetReceive {
            origin: "prime".into(),
            epoch: "e2".into(),
            seq,
            prev: Some(prev),
            stanza: "y".into(),
        };
        assert_eq!(
            run(&mut store, vec![after(3, 2), after(2, 1)]),
            [
                StoreReply::NetReceived(NetReceived::Gap),
                StoreReply::NetReceived(NetReceived::New(5))
            ]
        );
    }

    #[test]
    fn a_message_leaves_the_inbox_in_the_transaction_that_stores_it_offline() {
        let dir = TempDir::new("net-inbox-offline");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("carol", "pw").unwrap();
        run(
            &mut store,
            vec![StoreRequest::NetReceive {
                origin: "beta".into(),
                epoch: "e".into(),
                seq: 1,
                prev: None,
                stanza: "<message/>".into(),
            }],
        );
        let offline = |user: &str| StoreRequest::StoreOffline {
            username: user.into(),
            stanza: "<message/>".into(),
            stamp: 1,
            quota: 10,
            archive: None,
            key: None,
            inbox: Some(1),
        };
        // Not stored (no such account): it stays in the inbox.
        run(&mut store, vec![offline("nobody")]);
        assert_eq!(
            run(&mut store, vec![StoreRequest::LoadNetInbox]),
            [StoreReply::NetInbox(vec![(
                1,
                "beta".into(),
                "<message/>".into()
            )])]
        );
        run(&mut store, vec![offline("carol")]);
        assert_eq!(
            run(&mut store, vec![StoreRequest::LoadNetInbox]),
            [StoreReply::NetInbox(vec![])]
        );
    }
}
