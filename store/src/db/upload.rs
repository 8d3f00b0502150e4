//! HTTP file upload (XEP-0363): the slots the core gives out, and what
//! the host's HTTP listener does with them (a PUT starts, ends or fails;
//! files expire). The quota is proto-core's rule
//! ([`proto_core::upload::over_quota`]), applied here to the account's
//! rows in the transaction that keeps the slot.

use proto_core::{UploadSlot, UploadState};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_int, require_account, to_int, Failure, Store, StoreError};

const COLUMNS: &str =
    "token, username, filename, size, content_type, put_by, expires, state, legacy";

fn slot_of(row: &Row<'_>) -> rusqlite::Result<UploadSlot> {
    let state: i64 = row.get(7)?;
    Ok(UploadSlot {
        token: row.get(0)?,
        username: row.get(1)?,
        filename: row.get(2)?,
        size: from_int(row, 3)?,
        content_type: row.get(4)?,
        put_by: from_int(row, 5)?,
        expires: from_int(row, 6)?,
        state: UploadState::from_code(state)
            .ok_or(rusqlite::Error::IntegralValueOutOfRange(7, state))?,
        legacy: row.get(8)?,
    })
}

/// [`proto_core::StoreRequest::ReserveUpload`].
pub(super) fn reserve(
    conn: &Connection,
    slot: &UploadSlot,
    quota: u64,
    now: u64,
) -> Result<Option<u64>, Failure> {
    require_account(conn, &slot.username)?;
    if quota != 0 {
        let mine: Vec<UploadSlot> = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM uploads WHERE username = ?1 AND expires >= ?2"
            ))?
            .query_map(params![slot.username, to_int(now)?], slot_of)?
            .collect::<Result<_, _>>()?;
        if let Some(retry) = proto_core::upload::over_quota(slot, &mine, quota, now) {
            return Ok(Some(retry));
        }
    }
    conn.prepare_cached(&format!(
        "INSERT INTO uploads ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        slot.token,
        slot.username,
        slot.filename,
        to_int(slot.size)?,
        slot.content_type,
        to_int(slot.put_by)?,
        to_int(slot.expires)?,
        slot.state.code(),
        slot.legacy,
    ])?;
    Ok(None)
}

/// What the HTTP listener asks of the slots.
impl Store {
    /// The slot of `token`, if there is one.
    pub fn upload_slot(&self, token: &str) -> Result<Option<UploadSlot>, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM uploads WHERE token = ?1"))
            .and_then(|mut s| s.query_row([token], slot_of).optional())
            .map_err(StoreError::Sql)
    }

    /// A PUT to `token` starts: the slot goes from reserved to uploading
    /// unless its time is up at `now` or another PUT took it first
    /// (`false`).
    pub fn upload_begin(&mut self, token: &str, now: u64) -> Result<bool, StoreError> {
        let now = to_int(now).map_err(StoreError::Sql)?;
        self.conn
            .prepare_cached(
                "UPDATE uploads SET state = 1 WHERE token = ?1 AND state = 0 AND put_by >= ?2",
            )
            .and_then(|mut s| s.execute(params![token, now]))
            .map(|n| n > 0)
            .map_err(StoreError::Sql)
    }

    /// The PUT's file is complete and on disk: served from now on with
    /// `content_type`.
    pub fn upload_stored(&mut self, token: &str, content_type: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE uploads SET state = 2, content_type = ?2 WHERE token = ?1 AND state = 1",
            )
            .and_then(|mut s| s.execute([token, content_type]))
            .map(drop)
            .map_err(StoreError::Sql)
    }

    /// The PUT failed (its partial file is gone): the slot may be used
    /// again while its time lasts.
    pub fn upload_failed(&mut self, token: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE uploads SET state = 0 WHERE token = ?1 AND state = 1")
            .and_then(|mut s| s.execute([token]))
            .map(drop)
            .map_err(StoreError::Sql)
    }

    /// At start: PUTs that were running when the server stopped failed.
    pub fn uploads_interrupted(&mut self) -> Result<usize, StoreError> {
        self.conn
            .execute("UPDATE uploads SET state = 0 WHERE state = 1", [])
            .map_err(StoreError::Sql)
    }

    /// Deletes the slots that stopped counting at `now` (files expired,
    /// slots never used in their time) and returns their tokens, whose
    /// files the caller deletes.
    pub fn expire_uploads(&mut self, now: u64) -> Result<Vec<String>, StoreError> {
        let now = to_int(now).map_err(StoreError::Sql)?;
        self.conn
            .prepare_cached(
                "DELETE FROM uploads WHERE expires < ?1 OR (state = 0 AND put_by < ?1)
                 RETURNING token",
            )
            .and_then(|mut s| {
                s.query_map([now], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(StoreError::Sql)
    }
}

#[cfg(test)]
mod tests {
    use proto_core::{StoreReply, StoreRequest, UploadSlot, UploadState};

    use crate::db::tests::{run, TempDir};
    use crate::Store;

    fn slot(token: &str, size: u64, put_by: u64, expires: u64) -> UploadSlot {
        UploadSlot {
            token: token.into(),
            username: "alice".into(),
            filename: "a b.jpg".into(),
            size,
            content_type: "image/jpeg".into(),
            put_by,
            expires,
            state: UploadState::Reserved,
            legacy: true,
        }
    }

    fn reserve(slot: UploadSlot, now: u64) -> StoreRequest {
        StoreRequest::ReserveUpload {
            slot,
            quota: 2000,
            now,
        }
    }

    #[test]
    fn slots_count_against_the_quota_go_through_a_put_and_expire() {
        let dir = TempDir::new("upload");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "secret").unwrap();
        let replies = run(
            &mut store,
            vec![
                reserve(slot("t1", 1000, 200, 1000), 100),
                reserve(slot("t2", 1000, 300, 1000), 100),
                reserve(slot("t3", 1, 300, 1000), 100),
            ],
        );
        assert_eq!(
            replies,
            [
                StoreReply::UploadReserved(None),
                StoreReply::UploadReserved(None),
                StoreReply::UploadReserved(Some(200)),
            ]
        );
        let got = store.upload_slot("t1").unwrap().unwrap();
        assert_eq!(got, slot("t1", 1000, 200, 1000));
        assert_eq!(store.upload_slot("t3").unwrap(), None);
        // One PUT at a time, in the slot's time.
        assert!(!store.upload_begin("t1", 201).unwrap());
        assert!(store.upload_begin("t1", 200).unwrap());
        assert!(!store.upload_begin("t1", 150).unwrap());
        store.upload_failed("t1").unwrap();
        assert!(store.upload_begin("t1", 150).unwrap());
        store.upload_stored("t1", "image/jpeg").unwrap();
        assert_eq!(
            store.upload_slot("t1").unwrap().unwrap().state,
            UploadState::Stored
        );
        // A PUT that a stop interrupted counts as failed.
        assert!(store.upload_begin("t2", 150).unwrap());
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(store.uploads_interrupted().unwrap(), 1);
        assert_eq!(
            store.upload_slot("t2").unwrap().unwrap().state,
            UploadState::Reserved
        );
        // t2 never got its file in its time: gone at 301, t1 at 1001.
        assert!(store.expire_uploads(300).unwrap().is_empty());
        assert_eq!(store.expire_uploads(301).unwrap(), ["t2"]);
        assert_eq!(
            run(&mut store, vec![reserve(slot("t4", 1000, 400, 1000), 350)]),
            [StoreReply::UploadReserved(None)]
        );
        assert_eq!(store.expire_uploads(1000).unwrap(), ["t4"]);
        assert_eq!(store.expire_uploads(1001).unwrap(), ["t1"]);
        // Slots go with their account; nobody else's may be kept.
        run(&mut store, vec![reserve(slot("t5", 1, 2000, 3000), 1500)]);
        store.delete_user("alice").unwrap();
        assert_eq!(store.upload_slot("t5").unwrap(), None);
        assert!(matches!(
            run(&mut store, vec![reserve(slot("t6", 1, 2000, 3000), 1500)])[0],
            StoreReply::Failed(_)
        ));
    }
}
