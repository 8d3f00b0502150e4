//! Federation's queues: each stanza for another domain's server, kept
//! until that server has it, numbered above every row kept (the table's
//! key: a number may come again once every row above it is gone, which
//! the core allows for: it deletes the ranges of what it holds).

use rusqlite::{params, Connection};

use super::{from_int, to_int, Failure};

/// [`proto_core::StoreRequest::S2sKeep`]: the stanza's number.
pub(super) fn keep(conn: &Connection, dest: &str, stanza: &str) -> Result<u64, Failure> {
    conn.prepare_cached("INSERT INTO s2s_outbox (dest, stanza) VALUES (?1, ?2)")?
        .execute([dest, stanza])?;
    Ok(u64::try_from(conn.last_insert_rowid()).unwrap_or(0))
}

/// [`proto_core::StoreRequest::S2sForget`]: a range of numbers (the
/// table's key), so that no other pair's rows are visited but those in it.
pub(super) fn forget(conn: &Connection, dest: &str, after: u64, upto: u64) -> Result<(), Failure> {
    conn.prepare_cached("DELETE FROM s2s_outbox WHERE seq > ?2 AND seq <= ?3 AND dest = ?1")?
        .execute(params![dest, to_int(after)?, to_int(upto)?])?;
    Ok(())
}

/// [`proto_core::StoreRequest::LoadS2s`].
pub(super) fn load(conn: &Connection) -> Result<Vec<(String, u64, String)>, Failure> {
    let rows = conn
        .prepare_cached("SELECT dest, seq, stanza FROM s2s_outbox ORDER BY seq")?
        .query_map([], |row| Ok((row.get(0)?, from_int(row, 1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, TempDir};
    use crate::Store;
    use proto_core::{StoreReply, StoreRequest};

    #[test]
    fn each_pair_keeps_its_stanzas_in_order_until_forgotten_by_ranges() {
        let dir = TempDir::new("s2s-outbox");
        let mut store = Store::open(&dir.0).unwrap();
        let keep = |dest: &str, s: &str| StoreRequest::S2sKeep {
            dest: dest.into(),
            stanza: s.into(),
        };
        let forget = |dest: &str, after, upto| StoreRequest::S2sForget {
            dest: dest.into(),
            after,
            upto,
        };
        let replies = run(
            &mut store,
            vec![
                keep("a.test b.test", "1"),
                keep("a.test c.test", "2"),
                keep("a.test b.test", "3"),
            ],
        );
        assert_eq!(
            replies,
            [
                StoreReply::S2sKept(1),
                StoreReply::S2sKept(2),
                StoreReply::S2sKept(3)
            ]
        );
        // b.test has 1 and 3: forgetting 1 to 3 of it leaves c.test's 2.
        run(&mut store, vec![forget("a.test b.test", 0, 3)]);
        assert_eq!(
            run(&mut store, vec![StoreRequest::LoadS2s]),
            [StoreReply::S2sQueues(vec![(
                "a.test c.test".into(),
                2,
                "2".into()
            )])]
        );
        // Numbers go on above what is kept, also after a restart.
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(
            run(&mut store, vec![keep("a.test b.test", "4")]),
            [StoreReply::S2sKept(3)]
        );
        run(&mut store, vec![forget("a.test c.test", 1, 2)]);
        // A range leaves what is outside it.
        run(
            &mut store,
            vec![keep("a.test b.test", "5"), forget("a.test b.test", 3, 4)],
        );
        assert_eq!(
            run(&mut store, vec![StoreRequest::LoadS2s]),
            [StoreReply::S2sQueues(vec![(
                "a.test b.test".into(),
                3,
                "4".into()
            )])]
        );
    }
}
