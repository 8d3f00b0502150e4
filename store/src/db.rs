//! The SQLite store: accounts and their SCRAM credentials.
//!
//! The runtimes execute the core's [`StoreRequest`]s with [`Store::execute_batch`],
//! one transaction per batch; the command-line tools manage accounts with the
//! admin helpers ([`Store::add_user`], [`Store::set_password`], ...).
//!
//! The database is opened with `synchronous=FULL` in WAL mode, so a batch is
//! durable when [`Store::execute_batch`] returns: nothing may be acknowledged
//! to a client before that.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_core::sasl::scram::DEFAULT_ITERATIONS;
use proto_core::sasl::{normalize_username, prepare_password, Credentials, ScramKeys};
use proto_core::{StoreReply, StoreRequest, StoreToken};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "kontalkd.sqlite";

/// Schema migrations: entry `i` brings the schema from version `i` to `i + 1`.
///
/// The version is kept in `PRAGMA user_version`; add new steps at the end, never edit old ones.
const MIGRATIONS: &[&str] = &["CREATE TABLE accounts (
        username TEXT PRIMARY KEY NOT NULL,
        sha1_salt BLOB NOT NULL,
        sha1_iterations INTEGER NOT NULL,
        sha1_stored_key BLOB NOT NULL,
        sha1_server_key BLOB NOT NULL,
        sha256_salt BLOB NOT NULL,
        sha256_iterations INTEGER NOT NULL,
        sha256_stored_key BLOB NOT NULL,
        sha256_server_key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;"];

/// Length of the random salt of new credentials, in bytes.
const SALT_LEN: usize = 16;

/// Errors of the store.
#[derive(Debug)]
pub enum StoreError {
    /// The data directory could not be created.
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened or its schema set up.
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer kontalkd with a schema this one does not know.
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// A query failed.
    Sql(rusqlite::Error),
    /// The operating system's random generator failed (needed for salts).
    Random(getrandom::Error),
    /// An account with this (normalized) username already exists.
    UserExists(String),
    /// There is no account with this (normalized) username.
    NoSuchUser(String),
    /// The username is not a valid JID local part (RFC 7622); holds the name as given.
    InvalidUsername(String),
    /// The password is empty or refused by SASLprep (RFC 4013).
    InvalidPassword,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::DataDir { path, source } => {
                write!(
                    f,
                    "cannot create data directory {}: {source}",
                    path.display()
                )
            }
            StoreError::Open { path, source } => {
                write!(f, "cannot open database {}: {source}", path.display())
            }
            StoreError::SchemaTooNew {
                path,
                found,
                supported,
            } => write!(
                f,
                "database {} has schema version {found}, but this kontalkd supports at most \
                 version {supported}; use a newer kontalkd",
                path.display()
            ),
            StoreError::Sql(e) => write!(f, "database error: {e}"),
            StoreError::Random(e) => write!(f, "cannot generate a random salt: {e}"),
            StoreError::UserExists(user) => write!(f, "user '{user}' already exists"),
            StoreError::NoSuchUser(user) => write!(f, "no such user '{user}'"),
            StoreError::InvalidUsername(user) => write!(
                f,
                "invalid username '{user}': not a valid JID local part \
                 (no spaces or any of \"&'/:<>@)"
            ),
            StoreError::InvalidPassword => {
                write!(
                    f,
                    "invalid password: empty or containing forbidden characters"
                )
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::DataDir { source, .. } => Some(source),
            StoreError::Open { source, .. } | StoreError::Sql(source) => Some(source),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e)
    }
}

/// The account database: one SQLite file in the data directory.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `data_dir/kontalkd.sqlite` and brings its schema up to date.
    ///
    /// `data_dir` is created if missing.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("{}: journal mode is {mode}, not WAL", path.display());
        }
        // FULL: a commit is on disk when it returns, even in WAL mode.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Store { conn })
    }

    /// Executes the core's requests in one transaction and answers each, in order.
    ///
    /// Each request runs in its own savepoint: one that fails is answered with
    /// [`StoreReply::Failed`] and undone without undoing the others. When the
    /// transaction cannot be started or committed, every reply is `Failed`.
    /// Changes are durable when this returns.
    pub fn execute_batch(
        &mut self,
        batch: Vec<(StoreToken, StoreRequest)>,
    ) -> Vec<(StoreToken, StoreReply)> {
        if batch.is_empty() {
            return Vec::new();
        }
        let fail_all = |batch: Vec<(StoreToken, StoreRequest)>, msg: String| {
            batch
                .into_iter()
                .map(|(token, _)| (token, StoreReply::Failed(msg.clone())))
                .collect()
        };
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return fail_all(batch, format!("cannot begin transaction: {e}")),
        };
        let mut replies = Vec::with_capacity(batch.len());
        for (token, request) in batch {
            let reply = tx
                .savepoint()
                .and_then(|sp| {
                    let reply = execute(&sp, &request)?;
                    sp.commit()?;
                    Ok(reply)
                })
                .unwrap_or_else(|e| {
                    log::warn!("store request {token:?} failed: {e}");
                    StoreReply::Failed(e.to_string())
                });
            replies.push((token, reply));
        }
        if let Err(e) = tx.commit() {
            log::error!("store commit failed: {e}");
            let msg = format!("commit failed: {e}");
            for (_, reply) in &mut replies {
                *reply = StoreReply::Failed(msg.clone());
            }
        }
        replies
    }

    /// Creates an account; fails with [`StoreError::UserExists`] when the name is taken.
    pub fn add_user(&mut self, username: &str, password: &str) -> Result<(), StoreError> {
        let (username, credentials) = prepare_account(username, password)?;
        if create_account(&self.conn, &username, &credentials)? {
            Ok(())
        } else {
            Err(StoreError::UserExists(username))
        }
    }

    /// Changes an account's password; fails with [`StoreError::NoSuchUser`] when it does not exist.
    pub fn set_password(&mut self, username: &str, password: &str) -> Result<(), StoreError> {
        let (username, credentials) = prepare_account(username, password)?;
        if set_credentials(&self.conn, &username, &credentials)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(username))
        }
    }

    /// Deletes an account; fails with [`StoreError::NoSuchUser`] when it does not exist.
    pub fn delete_user(&mut self, username: &str) -> Result<(), StoreError> {
        let username = normalize(username)?;
        if delete_account(&self.conn, &username)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(username))
        }
    }

    /// All usernames, sorted.
    pub fn list_users(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT username FROM accounts ORDER BY username")?;
        let users = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(users)
    }

    /// Whether an account exists (the username is normalized first).
    pub fn user_exists(&self, username: &str) -> Result<bool, StoreError> {
        let username = normalize(username)?;
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM accounts WHERE username = ?1",
                [&username],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

/// Applies the missing migrations, each in its own transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let supported = MIGRATIONS.len() as i64;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_err)?;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported,
        });
    }
    for (from, sql) in (version..).zip(&MIGRATIONS[version as usize..]) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        tx.execute_batch(sql).map_err(open_err)?;
        tx.pragma_update(None, "user_version", from + 1)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        log::info!(
            "{}: database schema now at version {}",
            path.display(),
            from + 1
        );
    }
    Ok(())
}

/// Runs one request of a batch.
fn execute(conn: &Connection, request: &StoreRequest) -> rusqlite::Result<StoreReply> {
    Ok(match request {
        StoreRequest::LoadCredentials { username } => {
            StoreReply::Credentials(load_credentials(conn, username)?)
        }
        StoreRequest::CreateAccount {
            username,
            credentials,
        } => StoreReply::Created(create_account(conn, username, credentials)?),
        StoreRequest::SetCredentials {
            username,
            credentials,
        } => StoreReply::Done(set_credentials(conn, username, credentials)?),
        StoreRequest::DeleteAccount { username } => {
            StoreReply::Done(delete_account(conn, username)?)
        }
    })
}

fn load_credentials(conn: &Connection, username: &str) -> rusqlite::Result<Option<Credentials>> {
    conn.query_row(
        "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
         FROM accounts WHERE username = ?1",
        [username],
        |row| {
            Ok(Credentials {
                sha1: ScramKeys {
                    salt: row.get(0)?,
                    iterations: row.get(1)?,
                    stored_key: row.get(2)?,
                    server_key: row.get(3)?,
                },
                sha256: ScramKeys {
                    salt: row.get(4)?,
                    iterations: row.get(5)?,
                    stored_key: row.get(6)?,
                    server_key: row.get(7)?,
                },
            })
        },
    )
    .optional()
}

/// Inserts an account; `false` when the username is taken.
fn create_account(conn: &Connection, username: &str, c: &Credentials) -> rusqlite::Result<bool> {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let inserted = conn.execute(
        "INSERT INTO accounts (username,
             sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
             created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (username) DO NOTHING",
        params![
            username,
            c.sha1.salt,
            c.sha1.iterations,
            c.sha1.stored_key,
            c.sha1.server_key,
            c.sha256.salt,
            c.sha256.iterations,
            c.sha256.stored_key,
            c.sha256.server_key,
            created_at,
        ],
    )?;
    Ok(inserted == 1)
}

/// Replaces an account's credentials; `false` when there is no such account.
fn set_credentials(conn: &Connection, username: &str, c: &Credentials) -> rusqlite::Result<bool> {
    let updated = conn.execute(
        "UPDATE accounts SET
             sha1_salt = ?2, sha1_iterations = ?3, sha1_stored_key = ?4, sha1_server_key = ?5,
             sha256_salt = ?6, sha256_iterations = ?7, sha256_stored_key = ?8,
             sha256_server_key = ?9
         WHERE username = ?1",
        params![
            username,
            c.sha1.salt,
            c.sha1.iterations,
            c.sha1.stored_key,
            c.sha1.server_key,
            c.sha256.salt,
            c.sha256.iterations,
            c.sha256.stored_key,
            c.sha256.server_key,
        ],
    )?;
    Ok(updated > 0)
}

/// Deletes an account; `false` when there is no such account.
fn delete_account(conn: &Connection, username: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM accounts WHERE username = ?1", [username])? > 0)
}

fn normalize(username: &str) -> Result<String, StoreError> {
    normalize_username(username).ok_or_else(|| StoreError::InvalidUsername(username.to_owned()))
}

/// Normalizes the username and derives credentials from the password with a fresh salt.
fn prepare_account(username: &str, password: &str) -> Result<(String, Credentials), StoreError> {
    let username = normalize(username)?;
    let password = prepare_password(password).ok_or(StoreError::InvalidPassword)?;
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(StoreError::Random)?;
    let credentials = Credentials::derive(&password, &salt, DEFAULT_ITERATIONS);
    Ok((username, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_core::sasl::ScramHash;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "kontalkd-store-{name}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Cheap credentials for tests (few iterations).
    fn creds(password: &str) -> Credentials {
        Credentials::derive(password, b"0123456789abcdef", 2)
    }

    fn run(store: &mut Store, requests: Vec<StoreRequest>) -> Vec<StoreReply> {
        let batch = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| (StoreToken(i as u64), r))
            .collect();
        let replies = store.execute_batch(batch);
        for (i, (token, _)) in replies.iter().enumerate() {
            assert_eq!(*token, StoreToken(i as u64));
        }
        replies.into_iter().map(|(_, r)| r).collect()
    }

    fn load(username: &str) -> StoreRequest {
        StoreRequest::LoadCredentials {
            username: username.into(),
        }
    }

    fn create(username: &str, c: &Credentials) -> StoreRequest {
        StoreRequest::CreateAccount {
            username: username.into(),
            credentials: c.clone(),
        }
    }

    #[test]
    fn requests_create_load_set_delete() {
        let dir = TempDir::new("requests");
        let mut store = Store::open(&dir.0).unwrap();
        let (a, b) = (creds("one"), creds("two"));

        assert_eq!(
            run(&mut store, vec![load("alice")]),
            [StoreReply::Credentials(None)]
        );
        assert_eq!(
            run(&mut store, vec![create("alice", &a)]),
            [StoreReply::Created(true)]
        );
        assert_eq!(
            run(&mut store, vec![load("alice")]),
            [StoreReply::Credentials(Some(a.clone()))]
        );
        let set = |u: &str| StoreRequest::SetCredentials {
            username: u.into(),
            credentials: b.clone(),
        };
        assert_eq!(
            run(&mut store, vec![set("alice"), set("bob"), load("alice")]),
            [
                StoreReply::Done(true),
                StoreReply::Done(false),
                StoreReply::Credentials(Some(b.clone()))
            ]
        );
        let delete = |u: &str| StoreRequest::DeleteAccount { username: u.into() };
        assert_eq!(
            run(
                &mut store,
                vec![delete("alice"), delete("alice"), load("alice")]
            ),
            [
                StoreReply::Done(true),
                StoreReply::Done(false),
                StoreReply::Credentials(None)
            ]
        );
        assert!(run(&mut store, Vec::new()).is_empty());
    }

    #[test]
    fn duplicate_create_is_refused_and_keeps_the_first() {
        let dir = TempDir::new("duplicate");
        let mut store = Store::open(&dir.0).unwrap();
        let (a, b) = (creds("one"), creds("two"));
        assert_eq!(
            run(
                &mut store,
                vec![create("alice", &a), create("alice", &b), load("alice")]
            ),
            [
                StoreReply::Created(true),
                StoreReply::Created(false),
                StoreReply::Credentials(Some(a))
            ]
        );
    }

    #[test]
    fn a_failing_request_does_not_undo_the_others() {
        let dir = TempDir::new("mixed");
        let mut store = Store::open(&dir.0).unwrap();
        let a = creds("one");
        // A row whose iteration count does not fit in a u32 makes its load fail.
        store.add_user("broken", "pw").unwrap();
        store
            .conn
            .execute(
                "UPDATE accounts SET sha1_iterations = -1 WHERE username = 'broken'",
                [],
            )
            .unwrap();
        let replies = run(
            &mut store,
            vec![create("alice", &a), load("broken"), create("bob", &a)],
        );
        assert_eq!(replies[0], StoreReply::Created(true));
        assert!(matches!(replies[1], StoreReply::Failed(_)), "{replies:?}");
        assert_eq!(replies[2], StoreReply::Created(true));
        assert_eq!(store.list_users().unwrap(), ["alice", "bob", "broken"]);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = TempDir::new("reopen");
        let a = creds("one");
        {
            let mut store = Store::open(&dir.0).unwrap();
            run(&mut store, vec![create("alice", &a)]);
        }
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(
            run(&mut store, vec![load("alice")]),
            [StoreReply::Credentials(Some(a))]
        );
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = TempDir::new("newer");
        drop(Store::open(&dir.0).unwrap());
        Connection::open(dir.0.join(DB_FILE_NAME))
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&dir.0).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }));
        assert!(err.to_string().contains(DB_FILE_NAME), "{err}");
    }

    #[test]
    fn open_failure_names_the_path() {
        let dir = TempDir::new("openfail");
        // The data directory is a file: it cannot be created.
        std::fs::write(&dir.0, b"not a directory").unwrap();
        let err = Store::open(&dir.0).unwrap_err();
        assert!(err.to_string().contains(&*dir.0.to_string_lossy()), "{err}");
        std::fs::remove_file(&dir.0).unwrap();
    }

    #[test]
    fn admin_helpers() {
        let dir = TempDir::new("admin");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("Alice", "secret").unwrap();
        store.add_user("bob", "pw").unwrap();
        assert!(store.user_exists("alice").unwrap());
        assert!(store.user_exists("ALICE").unwrap());
        assert!(!store.user_exists("carol").unwrap());
        assert_eq!(store.list_users().unwrap(), ["alice", "bob"]);

        assert!(matches!(
            store.add_user("alice", "x"),
            Err(StoreError::UserExists(u)) if u == "alice"
        ));
        assert!(matches!(
            store.add_user("a b@c", "x"),
            Err(StoreError::InvalidUsername(_))
        ));
        assert!(matches!(
            store.add_user("carol", ""),
            Err(StoreError::InvalidPassword)
        ));

        // The stored keys verify the password, and a new password replaces them.
        let keys = |store: &mut Store| match &run(store, vec![load("alice")])[0] {
            StoreReply::Credentials(Some(c)) => c.clone(),
            other => panic!("{other:?}"),
        };
        let old = keys(&mut store);
        assert_eq!(old.sha256.iterations, DEFAULT_ITERATIONS);
        assert_eq!(old.sha256.salt.len(), SALT_LEN);
        assert!(old.sha256.verify_password(ScramHash::Sha256, "secret"));
        assert!(old.sha1.verify_password(ScramHash::Sha1, "secret"));
        store.set_password("ALICE", "new secret").unwrap();
        let new = keys(&mut store);
        assert_ne!(new.sha256.salt, old.sha256.salt);
        assert!(new.sha256.verify_password(ScramHash::Sha256, "new secret"));
        assert!(!new.sha256.verify_password(ScramHash::Sha256, "secret"));
        assert!(matches!(
            store.set_password("carol", "x"),
            Err(StoreError::NoSuchUser(u)) if u == "carol"
        ));

        store.delete_user("Bob").unwrap();
        assert!(matches!(
            store.delete_user("bob"),
            Err(StoreError::NoSuchUser(_))
        ));
        assert_eq!(store.list_users().unwrap(), ["alice"]);
    }
}
