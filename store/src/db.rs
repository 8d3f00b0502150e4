//! The SQLite store: accounts with their SCRAM credentials, rosters, offline
//! messages, the message archive, block lists, vCards and last activity.
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

use proto_core::roster::{RosterItem, Subscription};
use proto_core::sasl::scram::DEFAULT_ITERATIONS;
use proto_core::sasl::{normalize_username, prepare_password, Credentials, ScramKeys};
use proto_core::{OfflineMessage, OfflineStored, StoreReply, StoreRequest, StoreToken, UserData};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "kontalkd.sqlite";

/// Schema migrations: entry `i` brings the schema from version `i` to `i + 1`.
///
/// The version is kept in `PRAGMA user_version`; add new steps at the end, never edit old ones.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE accounts (
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
    ) STRICT;",
    // Everything kept per account is deleted with it (ON DELETE CASCADE).
    // Roster groups are stored in one column, each followed by U+001F (which
    // cannot occur in XML text), so that no groups and one empty group differ.
    "ALTER TABLE accounts ADD COLUMN roster_version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE roster_items (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        jid TEXT NOT NULL,
        name TEXT,
        groups TEXT NOT NULL,
        sub_to INTEGER NOT NULL,
        sub_from INTEGER NOT NULL,
        pending_out INTEGER NOT NULL,
        pending_in INTEGER NOT NULL,
        approved INTEGER NOT NULL,
        in_roster INTEGER NOT NULL,
        PRIMARY KEY (username, jid)
    ) STRICT;
    CREATE TABLE offline_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        stanza TEXT NOT NULL,
        stamp INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX offline_messages_by_user ON offline_messages (username, id);
    CREATE INDEX offline_messages_by_stamp ON offline_messages (stamp);
    CREATE TABLE blocklist (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        jid TEXT NOT NULL,
        PRIMARY KEY (username, jid)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE vcards (
        username TEXT PRIMARY KEY NOT NULL
            REFERENCES accounts (username) ON DELETE CASCADE,
        vcard TEXT NOT NULL
    ) STRICT;
    CREATE TABLE last_activity (
        username TEXT PRIMARY KEY NOT NULL
            REFERENCES accounts (username) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        status TEXT NOT NULL
    ) STRICT;",
    // XEP-0049 private XML storage: one element per (account, namespace).
    "CREATE TABLE private_xml (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        namespace TEXT NOT NULL,
        xml TEXT NOT NULL,
        PRIMARY KEY (username, namespace)
    ) STRICT, WITHOUT ROWID;",
    // XEP-0313 message archive: rows in arrival order (the rowid), found by
    // their archive id (sid), the other party and time. Preference lists
    // hold bare JIDs, each followed by U+001F.
    "CREATE TABLE archive (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        sid TEXT NOT NULL,
        with_bare TEXT NOT NULL,
        with_full TEXT NOT NULL,
        stamp INTEGER NOT NULL,
        stanza TEXT NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX archive_by_sid ON archive (username, sid);
    CREATE INDEX archive_by_user ON archive (username, id);
    CREATE INDEX archive_by_with ON archive (username, with_bare, id);
    CREATE INDEX archive_by_stamp ON archive (stamp);
    CREATE TABLE archive_prefs (
        username TEXT PRIMARY KEY NOT NULL
            REFERENCES accounts (username) ON DELETE CASCADE,
        default_policy TEXT NOT NULL,
        always TEXT NOT NULL,
        never TEXT NOT NULL
    ) STRICT;",
    // A message in flight to a session with stream management is stored
    // with the core's key, by which it is deleted when acknowledged.
    "ALTER TABLE offline_messages ADD COLUMN flight INTEGER;
    CREATE INDEX offline_messages_by_flight ON offline_messages (username, flight)
        WHERE flight IS NOT NULL;",
    // A subscription request waiting for an answer, as it was sent.
    "ALTER TABLE roster_items ADD COLUMN request TEXT;",
    // Kontalk: the OpenPGP key each account logs in with, the verification
    // codes of phone registrations (by the account they create: no phone
    // number is kept), private key backups by token.
    "CREATE TABLE kontalk_keys (
        username TEXT PRIMARY KEY NOT NULL
            REFERENCES accounts (username) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        key BLOB NOT NULL
    ) STRICT;
    CREATE TABLE verification_codes (
        username TEXT PRIMARY KEY NOT NULL,
        code TEXT NOT NULL,
        issued INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        attempts INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX verification_codes_by_expiry ON verification_codes (expires);
    CREATE TABLE private_keys (
        token TEXT PRIMARY KEY NOT NULL,
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        private BLOB NOT NULL,
        public BLOB NOT NULL,
        expires INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX private_keys_by_expiry ON private_keys (expires);",
    // The Kontalk network's directory: each creation and deletion of an
    // account here is a numbered change (an account's older change
    // replaced; the accounts there already are the first changes), which
    // the other servers fetch from the last number they saw; and their
    // users as they told, with the last number seen from each.
    "CREATE TABLE directory_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL UNIQUE,
        present INTEGER NOT NULL
    ) STRICT;
    INSERT INTO directory_log (username, present)
        SELECT username, 1 FROM accounts ORDER BY created_at, username;
    CREATE TABLE directory (
        home TEXT NOT NULL,
        username TEXT NOT NULL,
        PRIMARY KEY (home, username)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX directory_by_username ON directory (username);
    CREATE TABLE directory_seen (
        home TEXT PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL
    ) STRICT;",
    // Which directory log this database holds: made with it, and anew in
    // each backup copy, so that a server whose database was lost or
    // restored is not taken for the one the others knew; and of which log
    // of each other server the last number seen is.
    "CREATE TABLE directory_epoch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch TEXT NOT NULL
    ) STRICT;
    INSERT INTO directory_epoch (id, epoch) VALUES (1, lower(hex(randomblob(16))));
    ALTER TABLE directory_seen ADD COLUMN epoch TEXT NOT NULL DEFAULT '';",
    // Stanzas between the servers of a Kontalk network: those for another
    // server's users, numbered (never twice) and kept until that server
    // says it has them durable; those from another server, kept until
    // delivered here, with the last number made durable from each (of
    // which of its outboxes: the epoch above, made with its database).
    "CREATE TABLE net_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        dest TEXT NOT NULL,
        stanza TEXT NOT NULL
    ) STRICT;
    CREATE INDEX net_outbox_by_dest ON net_outbox (dest, seq);
    CREATE TABLE net_inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        origin TEXT NOT NULL,
        stanza TEXT NOT NULL
    ) STRICT;
    CREATE TABLE net_received (
        origin TEXT PRIMARY KEY NOT NULL,
        epoch TEXT NOT NULL,
        seq INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE net_outbox_size (
        dest TEXT PRIMARY KEY NOT NULL,
        n INTEGER NOT NULL
    ) STRICT;",
    // Federation's queues: each stanza for another domain until its
    // server has it, numbered above every one kept, by pair of domains.
    // No index, no AUTOINCREMENT: it is read whole only at start, and
    // deleted by ranges of numbers of one pair.
    "CREATE TABLE s2s_outbox (
        seq INTEGER PRIMARY KEY,
        dest TEXT NOT NULL,
        stanza TEXT NOT NULL
    ) STRICT;",
    // The push tokens of the accounts' devices (Kontalk's push@ service),
    // one per provider, gone with the account.
    "CREATE TABLE push_tokens (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        provider TEXT NOT NULL,
        token TEXT NOT NULL,
        PRIMARY KEY (username, provider)
    ) STRICT, WITHOUT ROWID;",
    // HTTP file upload (XEP-0363): every slot given out, until its file
    // expires (or its PUT never came in its time), gone with the account.
    // State: 0 reserved, 1 uploading, 2 stored.
    "CREATE TABLE uploads (
        token TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        filename TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        put_by INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        state INTEGER NOT NULL,
        legacy INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX uploads_by_account ON uploads (username, expires);
    CREATE INDEX uploads_by_expiry ON uploads (expires);",
    // Push registrations with app servers (XEP-0357), loaded with the
    // account, gone with it.
    "CREATE TABLE app_push (
        username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
        jid TEXT NOT NULL,
        node TEXT NOT NULL,
        options TEXT,
        PRIMARY KEY (username, jid, node)
    ) STRICT, WITHOUT ROWID;",
];

mod archive;
mod directory;
mod kontalk;
mod net;
mod s2s;
mod upload;

/// Ends each roster group in the `groups` column of `roster_items`.
const GROUP_END: char = '\u{1f}';

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
    /// There is no database where a command expected one.
    NoDatabase {
        /// The database file that does not exist.
        path: PathBuf,
    },
    /// The database cannot be written by this process (file or directory
    /// permissions, another user's files, a read-only file system).
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What SQLite said, when it said something.
        detail: String,
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
            StoreError::NoDatabase { path } => write!(
                f,
                "there is no database at {} (is server.data_dir right? `kontalkd run` and \
                 `kontalkd adduser` create it)",
                path.display()
            ),
            StoreError::ReadOnly { path, detail } => write!(
                f,
                "the database {} cannot be written by this process{}; run kontalkd as the \
                 user that owns the data directory",
                path.display(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
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

/// Creates `dir` (and missing parents) with mode 0700 on Unix.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty `path` with mode 0600 on Unix unless it exists.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The server database: one SQLite file in the data directory.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `data_dir/kontalkd.sqlite` and brings its schema up to date.
    ///
    /// A missing `data_dir` is created readable by its owner only (0700), and
    /// a new database file with mode 0600 (it holds the accounts' keys);
    /// SQLite gives its `-wal` and `-shm` files the database's mode.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        create_private_file(&path).map_err(|source| StoreError::DataDir {
            path: path.clone(),
            source,
        })?;
        Store::open_file(path)
    }

    /// Opens `data_dir/kontalkd.sqlite`, which must exist: for the commands
    /// that read or change accounts, which never create a database.
    pub fn open_existing(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::NoDatabase { path });
        }
        Store::open_file(path)
    }

    /// The database file of `data_dir`.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(DB_FILE_NAME)
    }

    /// Fails unless this process can write the database: SQLite opens a
    /// file it cannot write read-only and says so only at the first write,
    /// when a message would be lost.
    pub fn check_writable(&mut self) -> Result<(), StoreError> {
        let path = || self.conn.path().map(PathBuf::from).unwrap_or_default();
        let read_only = self
            .conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(StoreError::Sql)?;
        if read_only {
            return Err(StoreError::ReadOnly {
                path: path(),
                detail: String::new(),
            });
        }
        // A write lock needs the journal files too (a directory the process
        // cannot write has none).
        let probe = self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;");
        if let Err(e) = probe {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(StoreError::ReadOnly {
                path: path(),
                detail: e.to_string(),
            });
        }
        Ok(())
    }

    fn open_file(path: PathBuf) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
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
        // Each request of a batch runs in a savepoint, whose journal (the
        // pages it changed, to undo it alone) is only needed until the
        // batch commits: in memory, not a temporary file written page by
        // page (that was most of the cost of a write).
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(open_err)?;
        // The pages the server writes all the time (the indexes of the
        // archive and of offline storage) stay in memory (4 MiB, twice the
        // default: a bounded cache that a flood of stored messages fills
        // for good, so no larger), and go from the log to the database
        // every 10,000 pages rather than every 1,000 (a page changed many
        // times in between is copied once).
        conn.pragma_update(None, "cache_size", -4_096)
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        // Every statement of the request paths is prepared once and kept.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store { conn })
    }

    /// Executes the core's requests in one transaction and answers each, in order.
    ///
    /// A request that fails is answered with [`StoreReply::Failed`] and
    /// undone without undoing the others: the batch runs once as it is, and
    /// if a request fails, it is rolled back and runs again with each
    /// request in its own savepoint (a savepoint copies every page a request
    /// changes, which is most of the cost of a write: only failures pay for
    /// it). When the transaction cannot be started or committed, every reply
    /// is `Failed`. Changes are durable when this returns.
    pub fn execute_batch(
        &mut self,
        batch: Vec<(StoreToken, StoreRequest)>,
    ) -> Vec<(StoreToken, StoreReply)> {
        if batch.is_empty() {
            return Vec::new();
        }
        let fail_all = |batch: &[(StoreToken, StoreRequest)], msg: String| {
            batch
                .iter()
                .map(|(token, _)| (*token, StoreReply::Failed(msg.clone())))
                .collect()
        };
        let tx = match begin(&mut self.conn) {
            Ok(tx) => tx,
            Err(e) => return fail_all(&batch, format!("cannot begin transaction: {e}")),
        };
        let mut replies = Vec::with_capacity(batch.len());
        for (token, request) in &batch {
            match execute(&tx, request) {
                Ok(reply) => replies.push((*token, reply)),
                Err(_) => break,
            }
        }
        let replies = if replies.len() == batch.len() {
            commit(tx, replies)
        } else {
            // Undone whole; again, each request on its own.
            drop(tx);
            let mut tx = match begin(&mut self.conn) {
                Ok(tx) => tx,
                Err(e) => return fail_all(&batch, format!("cannot begin transaction: {e}")),
            };
            let mut replies = Vec::with_capacity(batch.len());
            for (token, request) in &batch {
                let reply = tx
                    .savepoint()
                    .map_err(Failure::from)
                    .and_then(|sp| {
                        let reply = execute(&sp, request)?;
                        sp.commit()?;
                        Ok(reply)
                    })
                    // The core logs the failure, with what it does about it.
                    .unwrap_or_else(|e| StoreReply::Failed(e.to_string()));
                replies.push((*token, reply));
            }
            commit(tx, replies)
        };
        replies
    }

    /// Creates an account; fails with [`StoreError::UserExists`] when the name is taken.
    pub fn add_user(&mut self, username: &str, password: &str) -> Result<(), StoreError> {
        let (username, credentials) = prepare_account(username, password)?;
        // The account and its directory change, together.
        let tx = self.conn.transaction()?;
        let created = create_account(&tx, &username, &credentials)?;
        tx.commit()?;
        if created {
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
        let tx = self.conn.transaction()?;
        let deleted = delete_account(&tx, &username)?;
        tx.commit()?;
        if deleted {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(username))
        }
    }

    /// Writes a consistent copy of the database to `dest` (SQLite's
    /// `VACUUM INTO`: one read transaction, so it is safe while the server
    /// runs and writes). `dest` must not exist; it is created with mode
    /// 0600, like the database. Returns the number of accounts in the copy.
    pub fn backup_to(&self, dest: &Path) -> Result<usize, StoreError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(dest).map_err(|source| StoreError::DataDir {
            path: dest.to_owned(),
            source,
        })?;
        let written = self
            .conn
            .execute("VACUUM INTO ?1", [dest.to_string_lossy()])
            .map_err(StoreError::Sql);
        if let Err(e) = written {
            let _ = std::fs::remove_file(dest);
            return Err(e);
        }
        // A copy is another log: restored, it must not pass for this one.
        let copy = Connection::open(dest)?;
        copy.execute(
            "UPDATE directory_epoch SET epoch = lower(hex(randomblob(16)))",
            [],
        )?;
        let accounts: i64 = copy.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        Ok(accounts as usize)
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

/// Why a request of a batch failed; its savepoint is rolled back.
#[derive(Debug)]
enum Failure {
    /// A query failed.
    Sql(rusqlite::Error),
    /// The request concerns an account that does not exist.
    NoAccount(String),
    /// The request holds a value that cannot be stored.
    Invalid(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Sql(e) => write!(f, "database error: {e}"),
            Failure::NoAccount(user) => write!(f, "no such account '{user}'"),
            Failure::Invalid(what) => f.write_str(what),
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// A write transaction, with the write lock taken at once.
fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Commits a batch's transaction: its replies, or every one `Failed`.
fn commit(
    tx: rusqlite::Transaction<'_>,
    mut replies: Vec<(StoreToken, StoreReply)>,
) -> Vec<(StoreToken, StoreReply)> {
    if let Err(e) = tx.commit() {
        // Each request's failure is logged by the core.
        let msg = format!("commit failed: {e}");
        for (_, reply) in &mut replies {
            *reply = StoreReply::Failed(msg.clone());
        }
    }
    replies
}

/// Runs one request of a batch.
fn execute(conn: &Connection, request: &StoreRequest) -> Result<StoreReply, Failure> {
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
        StoreRequest::SetPushToken {
            username,
            provider,
            token,
        } => {
            conn.prepare_cached(
                "INSERT INTO push_tokens (username, provider, token) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username, provider) DO UPDATE SET token = excluded.token",
            )?
            .execute([username, provider, token])?;
            StoreReply::Done(true)
        }
        StoreRequest::RemovePushToken {
            username,
            provider,
            only,
        } => StoreReply::Done(
            conn.prepare_cached(
                "DELETE FROM push_tokens WHERE username = ?1 AND provider = ?2
                 AND (?3 IS NULL OR token = ?3)",
            )?
            .execute(params![username, provider, only])?
                > 0,
        ),
        StoreRequest::SetAppPush { username, push } => {
            require_account(conn, username)?;
            conn.prepare_cached(
                "INSERT INTO app_push (username, jid, node, options) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (username, jid, node) DO UPDATE SET options = excluded.options",
            )?
            .execute(params![username, push.jid, push.node, push.options])?;
            StoreReply::Done(true)
        }
        StoreRequest::RemoveAppPush {
            username,
            jid,
            node,
        } => StoreReply::Done(
            conn.prepare_cached(
                "DELETE FROM app_push WHERE username = ?1 AND jid = ?2
                 AND (?3 IS NULL OR node = ?3)",
            )?
            .execute(params![username, jid, node])?
                > 0,
        ),
        StoreRequest::LoadPushTokens { username } => StoreReply::PushTokens(
            conn.prepare_cached(
                "SELECT provider, token FROM push_tokens WHERE username = ?1 ORDER BY provider",
            )?
            .query_map([username], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?,
        ),
        StoreRequest::ReserveUpload { slot, quota, now } => {
            StoreReply::UploadReserved(upload::reserve(conn, slot, *quota, *now)?)
        }
        StoreRequest::LoadUser { username } => StoreReply::User(load_user(conn, username)?),
        StoreRequest::SetRosterItem { username, item } => {
            StoreReply::RosterVersion(set_roster_item(conn, username, item)?)
        }
        StoreRequest::RemoveRosterItem { username, jid } => {
            StoreReply::RosterVersion(remove_roster_item(conn, username, jid)?)
        }
        StoreRequest::StoreOffline {
            username,
            stanza,
            stamp,
            quota,
            archive: copy,
            key,
            inbox,
        } => {
            let stored = store_offline(conn, username, stanza, *stamp, *quota, *key)?;
            if let OfflineStored::Stored(_) = stored {
                if let Some(entry) = copy {
                    archive::insert(conn, username, entry)?;
                }
                if let Some(id) = inbox {
                    net::delivered(conn, &[*id])?;
                }
            }
            StoreReply::Offline(stored)
        }
        StoreRequest::LoadOffline { username } => {
            StoreReply::OfflineMessages(load_offline(conn, username)?)
        }
        StoreRequest::DeleteOffline { username, ids } => {
            let mut stmt = conn
                .prepare_cached("DELETE FROM offline_messages WHERE username = ?1 AND id = ?2")?;
            for id in ids {
                stmt.execute(params![username, id])?;
            }
            StoreReply::Done(true)
        }
        StoreRequest::DeleteInFlight { username, keys } => {
            let mut stmt = conn.prepare_cached(
                "DELETE FROM offline_messages WHERE username = ?1 AND flight = ?2",
            )?;
            for key in keys {
                stmt.execute(params![username, flight(*key)?])?;
            }
            StoreReply::Done(true)
        }
        StoreRequest::ExpireOffline { before } => {
            // Everything is older than a cut-off beyond what can be stored.
            let before = i64::try_from(*before).unwrap_or(i64::MAX);
            conn.prepare_cached("DELETE FROM offline_messages WHERE stamp < ?1")?
                .execute([before])?;
            StoreReply::Done(true)
        }
        StoreRequest::SetBlocklist {
            username,
            clear,
            add,
            remove,
        } => {
            set_blocklist(conn, username, *clear, add, remove)?;
            StoreReply::Done(true)
        }
        StoreRequest::SetVcard { username, vcard } => {
            require_account(conn, username)?;
            conn.prepare_cached(
                "INSERT INTO vcards (username, vcard) VALUES (?1, ?2)
                 ON CONFLICT (username) DO UPDATE SET vcard = excluded.vcard",
            )?
            .execute(params![username, vcard])?;
            StoreReply::Done(true)
        }
        StoreRequest::SetPrivate { username, items } => {
            require_account(conn, username)?;
            let mut put = conn.prepare_cached(
                "INSERT INTO private_xml (username, namespace, xml) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username, namespace) DO UPDATE SET xml = excluded.xml",
            )?;
            for (namespace, xml) in items {
                put.execute(params![username, namespace, xml])?;
            }
            StoreReply::Done(true)
        }
        StoreRequest::LoadPrivate {
            username,
            namespace,
        } => StoreReply::Private(
            conn.prepare_cached(
                "SELECT xml FROM private_xml WHERE username = ?1 AND namespace = ?2",
            )?
            .query_row([username, namespace], |row| row.get(0))
            .optional()?,
        ),
        StoreRequest::LoadVcard { username } => StoreReply::Vcard(
            conn.prepare_cached("SELECT vcard FROM vcards WHERE username = ?1")?
                .query_row([username], |row| row.get(0))
                .optional()?,
        ),
        StoreRequest::SetLastActivity {
            username,
            at,
            status,
        } => {
            require_account(conn, username)?;
            conn.prepare_cached(
                "INSERT INTO last_activity (username, at, status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username) DO UPDATE SET at = excluded.at, status = excluded.status",
            )?
            .execute(params![username, to_int(*at)?, status])?;
            StoreReply::Done(true)
        }
        StoreRequest::Archive { username, entry } => {
            archive::insert(conn, username, entry)?;
            StoreReply::Done(true)
        }
        StoreRequest::QueryArchive { username, query } => {
            StoreReply::ArchivePage(archive::query(conn, username, query)?)
        }
        StoreRequest::SetArchivePrefs { username, prefs } => {
            archive::set_prefs(conn, username, prefs)?;
            StoreReply::Done(true)
        }
        StoreRequest::ExpireArchive { before } => {
            archive::expire(conn, *before)?;
            StoreReply::Done(true)
        }
        StoreRequest::IssueCode {
            username,
            code,
            now,
            expires,
            resend_after,
            force,
        } => StoreReply::Code(kontalk::issue_code(
            conn,
            username,
            code,
            *now,
            *expires,
            *resend_after,
            *force,
        )?),
        StoreRequest::WithdrawCode { username, code } => {
            StoreReply::Done(kontalk::withdraw_code(conn, username, code)?)
        }
        StoreRequest::Register {
            username,
            code,
            now,
            max_attempts,
            credentials,
            key,
        } => StoreReply::Registration(kontalk::register(
            conn,
            username,
            code,
            *now,
            *max_attempts,
            credentials,
            key,
        )?),
        StoreRequest::LoadKey { username } => StoreReply::Key(kontalk::load_key(conn, username)?),
        StoreRequest::SetKey { username, key } => {
            StoreReply::Done(kontalk::set_key(conn, username, key)?)
        }
        StoreRequest::SetPrivateKey {
            username,
            token,
            private,
            public,
            expires,
        } => StoreReply::Done(kontalk::set_private_key(
            conn, username, token, private, public, *expires,
        )?),
        StoreRequest::LoadPrivateKey { token, now } => {
            StoreReply::PrivateKey(kontalk::load_private_key(conn, token, *now)?)
        }
        StoreRequest::ExistingAccounts { usernames } => {
            let mut exists = conn.prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")?;
            let mut found = Vec::new();
            for u in usernames {
                if exists.exists([u])? {
                    found.push(u.clone());
                }
            }
            StoreReply::Existing(found)
        }
        StoreRequest::ExpireKontalk { before } => {
            kontalk::expire(conn, *before)?;
            StoreReply::Done(true)
        }
        StoreRequest::DirectoryChanges { after, limit } => {
            let (changes, last, epoch) = directory::changes(conn, *after, *limit)?;
            StoreReply::DirectoryChanges {
                changes,
                last,
                epoch,
            }
        }
        StoreRequest::StoreDirectory {
            home,
            epoch,
            reset,
            changes,
        } => {
            directory::store(conn, home, epoch, *reset, changes)?;
            StoreReply::Done(true)
        }
        StoreRequest::LoadDirectory => StoreReply::Directory(directory::load(conn)?),
        StoreRequest::NetQueue {
            dest,
            stanza,
            limit,
        } => StoreReply::NetQueued(net::queue(conn, dest, stanza, *limit)?),
        StoreRequest::NetOutbox { dest, after, limit } => {
            StoreReply::NetOutbox(net::outbox(conn, dest, *after, *limit)?)
        }
        StoreRequest::S2sKeep { dest, stanza } => {
            StoreReply::S2sKept(s2s::keep(conn, dest, stanza)?)
        }
        StoreRequest::S2sForget { dest, after, upto } => {
            s2s::forget(conn, dest, *after, *upto)?;
            StoreReply::Done(true)
        }
        StoreRequest::LoadS2s => StoreReply::S2sQueues(s2s::load(conn)?),
        StoreRequest::NetAcked { dest, upto } => {
            net::acked(conn, dest, *upto)?;
            StoreReply::Done(true)
        }
        StoreRequest::NetReceive {
            origin,
            epoch,
            seq,
            prev,
            stanza,
        } => StoreReply::NetReceived(net::receive(conn, origin, epoch, *seq, *prev, stanza)?),
        StoreRequest::LoadNetInbox => StoreReply::NetInbox(net::inbox(conn)?),
        StoreRequest::NetDelivered { ids } => {
            net::delivered(conn, ids)?;
            StoreReply::Done(true)
        }
        // The batch runs in order: everything before it is answered.
        StoreRequest::Barrier => StoreReply::Done(true),
        StoreRequest::LoadLastActivity { username } => StoreReply::LastActivity(
            conn.prepare_cached("SELECT at, status FROM last_activity WHERE username = ?1")?
                .query_row([username], |row| Ok((from_int(row, 0)?, row.get(1)?)))
                .optional()?,
        ),
    })
}

/// A message's key in flight, as stored (the core makes them below 2^63).
fn flight(key: u64) -> rusqlite::Result<i64> {
    to_int(key)
}

/// Converts a time or version for storage (SQLite integers are signed).
fn to_int(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Reads a time or version stored with [`to_int`].
fn from_int(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Fails with [`Failure::NoAccount`] unless the account exists.
///
/// The foreign keys would refuse the inserts anyway; checking first gives a
/// clear message, also for requests that insert nothing.
fn require_account(conn: &Connection, username: &str) -> Result<(), Failure> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")?
        .query_row([username], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(Failure::NoAccount(username.to_owned()))
    }
}

/// The account's roster version and block list, or `None` when it does not exist.
fn load_user(conn: &Connection, username: &str) -> rusqlite::Result<Option<UserData>> {
    let Some(roster_version) = conn
        .query_row(
            "SELECT roster_version FROM accounts WHERE username = ?1",
            [username],
            |row| from_int(row, 0),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let roster = conn
        .prepare_cached(
            "SELECT jid, name, groups, sub_to, sub_from, pending_out, pending_in, approved,
                    in_roster, request
             FROM roster_items WHERE username = ?1 ORDER BY rowid",
        )?
        .query_map([username], |row| {
            let groups: String = row.get(2)?;
            Ok(RosterItem {
                jid: row.get(0)?,
                name: row.get(1)?,
                groups: groups.split_terminator(GROUP_END).map(Into::into).collect(),
                subscription: Subscription {
                    to: row.get(3)?,
                    from: row.get(4)?,
                    pending_out: row.get(5)?,
                    pending_in: row.get(6)?,
                    approved: row.get(7)?,
                },
                in_roster: row.get(8)?,
                request: row.get(9)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let blocklist = conn
        .prepare_cached("SELECT jid FROM blocklist WHERE username = ?1 ORDER BY jid")?
        .query_map([username], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(UserData {
        roster_version,
        roster,
        blocklist,
        archive_prefs: archive::load_prefs(conn, username)?,
        key: kontalk::load_key(conn, username)?,
        app_push: conn
            .prepare_cached(
                "SELECT jid, node, options FROM app_push WHERE username = ?1 ORDER BY jid, node",
            )?
            .query_map([username], |row| {
                Ok(proto_core::AppPush {
                    jid: row.get(0)?,
                    node: row.get(1)?,
                    options: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?,
    }))
}

/// Adds one to the account's roster version and returns the new version.
fn bump_roster_version(conn: &Connection, username: &str) -> Result<u64, Failure> {
    conn.prepare_cached(
        "UPDATE accounts SET roster_version = roster_version + 1 WHERE username = ?1
         RETURNING roster_version",
    )?
    .query_row([username], |row| from_int(row, 0))
    .optional()?
    .ok_or_else(|| Failure::NoAccount(username.to_owned()))
}

/// Inserts or replaces a roster item (an update keeps its place in the roster).
fn set_roster_item(conn: &Connection, username: &str, item: &RosterItem) -> Result<u64, Failure> {
    require_account(conn, username)?;
    if item.groups.iter().any(|g| g.contains(GROUP_END)) {
        return Err(Failure::Invalid("roster group name contains U+001F"));
    }
    let mut groups = String::new();
    for group in &item.groups {
        groups.push_str(group);
        groups.push(GROUP_END);
    }
    let s = &item.subscription;
    conn.prepare_cached(
        "INSERT INTO roster_items (username, jid, name, groups, sub_to, sub_from, pending_out,
             pending_in, approved, in_roster, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (username, jid) DO UPDATE SET
             name = excluded.name, groups = excluded.groups, sub_to = excluded.sub_to,
             sub_from = excluded.sub_from, pending_out = excluded.pending_out,
             pending_in = excluded.pending_in, approved = excluded.approved,
             in_roster = excluded.in_roster, request = excluded.request",
    )?
    .execute(params![
        username,
        item.jid,
        item.name,
        groups,
        s.to,
        s.from,
        s.pending_out,
        s.pending_in,
        s.approved,
        item.in_roster,
        item.request,
    ])?;
    bump_roster_version(conn, username)
}

/// Removes a roster item; the version is bumped only when there was one.
fn remove_roster_item(conn: &Connection, username: &str, jid: &str) -> Result<u64, Failure> {
    let deleted = conn
        .prepare_cached("DELETE FROM roster_items WHERE username = ?1 AND jid = ?2")?
        .execute([username, jid])?;
    if deleted > 0 {
        return bump_roster_version(conn, username);
    }
    conn.prepare_cached("SELECT roster_version FROM accounts WHERE username = ?1")?
        .query_row([username], |row| from_int(row, 0))
        .optional()?
        .ok_or_else(|| Failure::NoAccount(username.to_owned()))
}

/// Stores an offline message unless the account is missing or its quota full.
fn store_offline(
    conn: &Connection,
    username: &str,
    stanza: &str,
    stamp: u64,
    quota: u32,
    key: Option<u64>,
) -> rusqlite::Result<OfflineStored> {
    let count: Option<i64> = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM offline_messages WHERE username = ?1)
             FROM accounts WHERE username = ?1",
        )?
        .query_row([username], |row| row.get(0))
        .optional()?;
    Ok(match count {
        None => OfflineStored::NoAccount,
        Some(n) if n >= i64::from(quota) => OfflineStored::QuotaFull,
        Some(_) => {
            conn.prepare_cached(
                "INSERT INTO offline_messages (username, stanza, stamp, flight)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                username,
                stanza,
                to_int(stamp)?,
                key.map(flight).transpose()?
            ])?;
            OfflineStored::Stored(conn.last_insert_rowid())
        }
    })
}

/// The account's offline messages, oldest first.
fn load_offline(conn: &Connection, username: &str) -> rusqlite::Result<Vec<OfflineMessage>> {
    conn.prepare_cached(
        "SELECT id, stanza, stamp, flight FROM offline_messages WHERE username = ?1 ORDER BY id",
    )?
    .query_map([username], |row| {
        let key: Option<i64> = row.get(3)?;
        Ok(OfflineMessage {
            id: row.get(0)?,
            stanza: row.get(1)?,
            stamp: from_int(row, 2)?,
            key: key.and_then(|k| u64::try_from(k).ok()),
        })
    })?
    .collect()
}

/// Clears the block list if asked, then adds and removes entries.
fn set_blocklist(
    conn: &Connection,
    username: &str,
    clear: bool,
    add: &[String],
    remove: &[String],
) -> Result<(), Failure> {
    require_account(conn, username)?;
    if clear {
        conn.prepare_cached("DELETE FROM blocklist WHERE username = ?1")?
            .execute([username])?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO blocklist (username, jid) VALUES (?1, ?2)
         ON CONFLICT (username, jid) DO NOTHING",
    )?;
    for jid in add {
        insert.execute([username, jid])?;
    }
    let mut delete =
        conn.prepare_cached("DELETE FROM blocklist WHERE username = ?1 AND jid = ?2")?;
    for jid in remove {
        delete.execute([username, jid])?;
    }
    Ok(())
}

fn load_credentials(conn: &Connection, username: &str) -> rusqlite::Result<Option<Credentials>> {
    conn.prepare_cached(
        "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
         FROM accounts WHERE username = ?1",
    )?
    .query_row([username], |row| {
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
    })
    .optional()
}

/// Inserts an account; `false` when the username is taken.
fn create_account(conn: &Connection, username: &str, c: &Credentials) -> rusqlite::Result<bool> {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO accounts (username,
             sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
             created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (username) DO NOTHING",
        )?
        .execute(params![
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
        ])?;
    if inserted == 1 {
        directory::account_changed(conn, username, true)?;
    }
    Ok(inserted == 1)
}

/// Replaces an account's credentials; `false` when there is no such account.
fn set_credentials(conn: &Connection, username: &str, c: &Credentials) -> rusqlite::Result<bool> {
    let updated = conn
        .prepare_cached(
            "UPDATE accounts SET
             sha1_salt = ?2, sha1_iterations = ?3, sha1_stored_key = ?4, sha1_server_key = ?5,
             sha256_salt = ?6, sha256_iterations = ?7, sha256_stored_key = ?8,
             sha256_server_key = ?9
         WHERE username = ?1",
        )?
        .execute(params![
            username,
            c.sha1.salt,
            c.sha1.iterations,
            c.sha1.stored_key,
            c.sha1.server_key,
            c.sha256.salt,
            c.sha256.iterations,
            c.sha256.stored_key,
            c.sha256.server_key,
        ])?;
    Ok(updated > 0)
}

/// Deletes an account; `false` when there is no such account.
fn delete_account(conn: &Connection, username: &str) -> rusqlite::Result<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM accounts WHERE username = ?1")?
        .execute([username])?
        > 0;
    if deleted {
        directory::account_changed(conn, username, false)?;
    }
    Ok(deleted)
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
    pub(crate) fn creds(password: &str) -> Credentials {
        Credentials::derive(password, b"0123456789abcdef", 2)
    }

    pub(crate) fn run(store: &mut Store, requests: Vec<StoreRequest>) -> Vec<StoreReply> {
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

    #[test]
    fn app_push_registrations_load_with_the_account_and_go_with_it() {
        let dir = TempDir::new("app-push");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "secret").unwrap();
        let push = |jid: &str, node: &str, options: Option<&str>| proto_core::AppPush {
            jid: jid.into(),
            node: node.into(),
            options: options.map(Into::into),
        };
        let set = |p: proto_core::AppPush| StoreRequest::SetAppPush {
            username: "alice".into(),
            push: p,
        };
        let replies = run(
            &mut store,
            vec![
                set(push("push.example", "n1", None)),
                set(push("push.example", "n1", Some("<x/>"))),
                set(push("push.example", "n2", None)),
                set(push("other.example", "n3", None)),
            ],
        );
        assert!(
            replies.iter().all(|r| *r == StoreReply::Done(true)),
            "{replies:?}"
        );
        let load = |store: &mut Store| match &run(
            store,
            vec![StoreRequest::LoadUser {
                username: "alice".into(),
            }],
        )[0]
        {
            StoreReply::User(Some(u)) => u.app_push.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            load(&mut store),
            [
                push("other.example", "n3", None),
                push("push.example", "n1", Some("<x/>")),
                push("push.example", "n2", None),
            ]
        );
        let remove = |jid: &str, node: Option<&str>| StoreRequest::RemoveAppPush {
            username: "alice".into(),
            jid: jid.into(),
            node: node.map(Into::into),
        };
        assert_eq!(
            run(
                &mut store,
                vec![
                    remove("other.example", Some("nope")),
                    remove("push.example", None)
                ]
            ),
            [StoreReply::Done(false), StoreReply::Done(true)]
        );
        assert_eq!(load(&mut store), [push("other.example", "n3", None)]);
        store.delete_user("alice").unwrap();
        assert!(matches!(
            run(&mut store, vec![set(push("a.example", "n", None))])[0],
            StoreReply::Failed(_)
        ));
    }

    #[test]
    fn push_tokens_one_per_provider_replaced_removed_and_gone_with_the_account() {
        let dir = TempDir::new("push");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "secret").unwrap();
        let set = |token: &str| StoreRequest::SetPushToken {
            username: "alice".into(),
            provider: "gcm".into(),
            token: token.into(),
        };
        let tokens = |store: &Store| -> Vec<(String, String)> {
            store
                .conn
                .prepare("SELECT provider, token FROM push_tokens WHERE username = 'alice'")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            run(&mut store, vec![set("one"), set("two")]),
            [StoreReply::Done(true), StoreReply::Done(true)]
        );
        assert_eq!(tokens(&store), [("gcm".to_owned(), "two".to_owned())]);
        // Kept across a restart.
        drop(store);
        let mut store = Store::open(&dir.0).unwrap();
        assert_eq!(tokens(&store).len(), 1);
        let remove = || StoreRequest::RemovePushToken {
            username: "alice".into(),
            provider: "gcm".into(),
            only: None,
        };
        assert_eq!(
            run(&mut store, vec![remove(), remove()]),
            [StoreReply::Done(true), StoreReply::Done(false)]
        );
        assert!(tokens(&store).is_empty());
        // No token for an account that does not exist; none left by one deleted.
        assert!(matches!(
            run(
                &mut store,
                vec![StoreRequest::SetPushToken {
                    username: "nobody".into(),
                    provider: "gcm".into(),
                    token: "t".into(),
                }]
            )[..],
            [StoreReply::Failed(_)]
        ));
        run(&mut store, vec![set("three")]);
        run(
            &mut store,
            vec![StoreRequest::DeleteAccount {
                username: "alice".into(),
            }],
        );
        assert!(tokens(&store).is_empty());
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
    fn a_new_data_directory_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("modes");
        let data = dir.0.join("data");
        let mut store = Store::open(&data).unwrap();
        store.check_writable().unwrap();
        store.add_user("alice", "secret").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&Store::path_in(&data)), 0o600);
        let wal = data.join(format!("{DB_FILE_NAME}-wal"));
        assert_eq!(
            mode(&wal),
            0o600,
            "SQLite gives the WAL the database's mode"
        );
    }

    #[test]
    fn account_commands_never_create_a_database() {
        let dir = TempDir::new("existing");
        let err = Store::open_existing(&dir.0).unwrap_err();
        assert!(matches!(err, StoreError::NoDatabase { .. }), "{err}");
        assert!(err.to_string().contains(DB_FILE_NAME), "{err}");
        assert!(!Store::path_in(&dir.0).exists(), "nothing was created");
        Store::open(&dir.0)
            .unwrap()
            .add_user("alice", "pw")
            .unwrap();
        let store = Store::open_existing(&dir.0).unwrap();
        assert_eq!(store.list_users().unwrap(), ["alice"]);
    }

    #[test]
    fn a_database_opened_read_only_is_refused() {
        let dir = TempDir::new("readonly");
        drop(Store::open(&dir.0).unwrap());
        // What SQLite does with a file it may not write: it opens it read-only.
        let conn = Connection::open_with_flags(
            Store::path_in(&dir.0),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut store = Store { conn };
        let err = store.check_writable().unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("cannot be written"), "{err}");
    }

    #[test]
    fn a_backup_is_a_complete_private_database() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("backup");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        store.add_user("bob", "pw").unwrap();
        let dest = dir.0.join("copy.sqlite");
        assert_eq!(store.backup_to(&dest).unwrap(), 2);
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // An existing file is never overwritten.
        assert!(store.backup_to(&dest).is_err());
        // Restored as a data directory's database, it has everything.
        let restored = dir.0.join("restored");
        std::fs::create_dir_all(&restored).unwrap();
        std::fs::copy(&dest, Store::path_in(&restored)).unwrap();
        let back = Store::open_existing(&restored).unwrap();
        assert_eq!(back.list_users().unwrap(), ["alice", "bob"]);
        // Its directory log is another epoch: the network's other servers
        // do not take the restored server for the one they knew.
        let epoch = |c: &Connection| -> String {
            c.query_row("SELECT epoch FROM directory_epoch", [], |r| r.get(0))
                .unwrap()
        };
        assert_ne!(epoch(&store.conn), epoch(&back.conn));
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

    fn load_user(username: &str) -> StoreRequest {
        StoreRequest::LoadUser {
            username: username.into(),
        }
    }

    fn item(jid: &str, name: Option<&str>, groups: &[&str], sub: Subscription) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            name: name.map(Into::into),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            subscription: sub,
            in_roster: true,
            request: None,
        }
    }

    fn set_item(username: &str, item: &RosterItem) -> StoreRequest {
        StoreRequest::SetRosterItem {
            username: username.into(),
            item: item.clone(),
        }
    }

    fn remove_item(username: &str, jid: &str) -> StoreRequest {
        StoreRequest::RemoveRosterItem {
            username: username.into(),
            jid: jid.into(),
        }
    }

    fn offline(username: &str, stanza: &str, stamp: u64, quota: u32) -> StoreRequest {
        StoreRequest::StoreOffline {
            username: username.into(),
            stanza: stanza.into(),
            stamp,
            quota,
            archive: None,
            key: None,
            inbox: None,
        }
    }

    fn offline_messages(store: &mut Store, username: &str) -> Vec<OfflineMessage> {
        let request = StoreRequest::LoadOffline {
            username: username.into(),
        };
        match run(store, vec![request]).pop() {
            Some(StoreReply::OfflineMessages(msgs)) => msgs,
            other => panic!("{other:?}"),
        }
    }

    fn load_offline(store: &mut Store, username: &str) -> Vec<(String, u64)> {
        let msgs = offline_messages(store, username);
        msgs.into_iter().map(|m| (m.stanza, m.stamp)).collect()
    }

    fn offline_ids(store: &mut Store, username: &str) -> Vec<i64> {
        offline_messages(store, username)
            .iter()
            .map(|m| m.id)
            .collect()
    }

    fn blocklist(username: &str, clear: bool, add: &[&str], remove: &[&str]) -> StoreRequest {
        StoreRequest::SetBlocklist {
            username: username.into(),
            clear,
            add: add.iter().map(|j| j.to_string()).collect(),
            remove: remove.iter().map(|j| j.to_string()).collect(),
        }
    }

    fn is_no_account(reply: &StoreReply, username: &str) -> bool {
        matches!(reply, StoreReply::Failed(msg) if msg.contains("no such account")
            && msg.contains(username))
    }

    #[test]
    fn roster_items_and_versions() {
        let dir = TempDir::new("roster");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        assert_eq!(
            run(&mut store, vec![load_user("bob")]),
            [StoreReply::User(None)]
        );
        assert_eq!(
            run(&mut store, vec![load_user("alice")]),
            [StoreReply::User(Some(UserData::default()))]
        );

        let both = Subscription {
            to: true,
            from: true,
            ..Subscription::default()
        };
        let pending = Subscription {
            pending_out: true,
            pending_in: true,
            approved: true,
            ..Subscription::default()
        };
        let carol = item("carol@example.org", Some("Carol"), &["b", "a", ""], both);
        let mut dave = item("dave@example.org", None, &[], pending);
        dave.in_roster = false;
        let erin = item("erin@example.org", None, &["x"], Subscription::default());
        assert_eq!(
            run(
                &mut store,
                vec![
                    set_item("alice", &carol),
                    set_item("alice", &dave),
                    set_item("alice", &erin),
                ]
            ),
            [1, 2, 3].map(StoreReply::RosterVersion)
        );
        // An update keeps the item's place.
        let carol2 = item("carol@example.org", None, &[], Subscription::default());
        assert_eq!(
            run(&mut store, vec![set_item("alice", &carol2)]),
            [StoreReply::RosterVersion(4)]
        );
        let user = |store: &mut Store| match run(store, vec![load_user("alice")]).pop() {
            Some(StoreReply::User(Some(data))) => data,
            other => panic!("{other:?}"),
        };
        let data = user(&mut store);
        assert_eq!(data.roster_version, 4);
        assert_eq!(data.roster, [carol2, dave.clone(), erin.clone()]);
        assert_eq!(
            run(&mut store, vec![set_item("alice", &carol)]),
            [StoreReply::RosterVersion(5)]
        );
        assert_eq!(user(&mut store).roster[0], carol);

        // Removing bumps the version only when there was something to remove.
        assert_eq!(
            run(
                &mut store,
                vec![
                    remove_item("alice", "dave@example.org"),
                    remove_item("alice", "dave@example.org"),
                ]
            ),
            [StoreReply::RosterVersion(6), StoreReply::RosterVersion(6)]
        );
        assert_eq!(user(&mut store).roster, [carol.clone(), erin]);

        // Unknown account, and a group that cannot be stored: nothing changes.
        let bad = item("frank@example.org", None, &["a\u{1f}b"], both);
        let replies = run(
            &mut store,
            vec![
                set_item("bob", &carol),
                remove_item("bob", "carol@example.org"),
                set_item("alice", &bad),
            ],
        );
        assert!(is_no_account(&replies[0], "bob"), "{replies:?}");
        assert!(is_no_account(&replies[1], "bob"), "{replies:?}");
        assert!(matches!(&replies[2], StoreReply::Failed(m) if m.contains("U+001F")));
        let data = user(&mut store);
        assert_eq!(data.roster_version, 6);
        assert_eq!(data.roster.len(), 2);
    }

    #[test]
    fn messages_in_flight_are_deleted_by_their_key() {
        let dir = TempDir::new("flight");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        store.add_user("bob", "pw").unwrap();
        let keyed = |user: &str, stanza: &str, key: Option<u64>| StoreRequest::StoreOffline {
            username: user.into(),
            stanza: stanza.into(),
            stamp: 1,
            quota: 10,
            archive: None,
            key,
            inbox: None,
        };
        let big = (1u64 << 63) - 1;
        run(
            &mut store,
            vec![
                keyed("alice", "<a1/>", Some(7)),
                keyed("alice", "<a2/>", None),
                keyed("alice", "<a3/>", Some(big)),
                keyed("bob", "<b1/>", Some(7)),
            ],
        );
        let keys: Vec<Option<u64>> = offline_messages(&mut store, "alice")
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, [Some(7), None, Some(big)], "loaded with their keys");
        let delete = |user: &str, keys: Vec<u64>| StoreRequest::DeleteInFlight {
            username: user.into(),
            keys,
        };
        assert_eq!(
            run(&mut store, vec![delete("alice", vec![7, big, 99])]),
            [StoreReply::Done(true)],
            "a key not stored is no error"
        );
        assert_eq!(load_offline(&mut store, "alice"), [("<a2/>".into(), 1)]);
        assert_eq!(
            load_offline(&mut store, "bob"),
            [("<b1/>".into(), 1)],
            "one's own only"
        );
    }

    #[test]
    fn offline_quota_order_delete_and_expiry() {
        let dir = TempDir::new("offline");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        store.add_user("bob", "pw").unwrap();
        use OfflineStored::*;
        assert_eq!(
            run(
                &mut store,
                vec![
                    offline("alice", "<m1/>", 30, 3),
                    offline("bob", "<b1/>", 10, 3),
                    offline("alice", "<m2/>", 10, 3),
                    offline("alice", "<m3/>", 20, 3),
                    offline("alice", "<m4/>", 40, 3),
                    offline("carol", "<c/>", 40, 3),
                    offline("bob", "<b2/>", 40, 0),
                ]
            ),
            [
                Stored(1),
                Stored(2),
                Stored(3),
                Stored(4),
                QuotaFull,
                NoAccount,
                QuotaFull
            ]
            .map(StoreReply::Offline)
        );
        // Oldest first, by arrival rather than stamp.
        assert_eq!(
            load_offline(&mut store, "alice"),
            [
                ("<m1/>".into(), 30),
                ("<m2/>".into(), 10),
                ("<m3/>".into(), 20)
            ]
        );
        assert!(load_offline(&mut store, "carol").is_empty());

        // Only the user's own messages are deleted.
        let alice = offline_ids(&mut store, "alice");
        let bob = offline_ids(&mut store, "bob");
        assert!(alice.windows(2).all(|w| w[0] < w[1]));
        let delete = |username: &str, ids: Vec<i64>| StoreRequest::DeleteOffline {
            username: username.into(),
            ids,
        };
        assert_eq!(
            run(
                &mut store,
                vec![
                    delete("alice", vec![alice[1], bob[0]]),
                    delete("bob", vec![999])
                ]
            ),
            [StoreReply::Done(true), StoreReply::Done(true)]
        );
        assert_eq!(offline_ids(&mut store, "alice"), [alice[0], alice[2]]);
        assert_eq!(offline_ids(&mut store, "bob"), bob);
        // Room again, and new ids keep increasing.
        run(&mut store, vec![offline("alice", "<m5/>", 50, 3)]);
        let ids = offline_ids(&mut store, "alice");
        assert!(ids[2] > alice[2]);

        // Expiry is strict and applies to every account.
        assert_eq!(
            run(&mut store, vec![StoreRequest::ExpireOffline { before: 20 }]),
            [StoreReply::Done(true)]
        );
        assert_eq!(
            load_offline(&mut store, "alice"),
            [
                ("<m1/>".into(), 30),
                ("<m3/>".into(), 20),
                ("<m5/>".into(), 50)
            ]
        );
        assert!(load_offline(&mut store, "bob").is_empty());
        run(
            &mut store,
            vec![StoreRequest::ExpireOffline { before: u64::MAX }],
        );
        assert!(load_offline(&mut store, "alice").is_empty());
    }

    #[test]
    fn blocklist_changes() {
        let dir = TempDir::new("blocklist");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        let blocked = |store: &mut Store| match run(store, vec![load_user("alice")]).pop() {
            Some(StoreReply::User(Some(data))) => data.blocklist,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            run(
                &mut store,
                vec![
                    blocklist("alice", false, &["z@x", "a@x", "m@x", "a@x"], &[]),
                    blocklist("alice", false, &["m@x", "b@x"], &["z@x", "nobody@x"]),
                ]
            ),
            [StoreReply::Done(true), StoreReply::Done(true)]
        );
        assert_eq!(blocked(&mut store), ["a@x", "b@x", "m@x"]);
        // Clear first, then add, then remove.
        run(
            &mut store,
            vec![blocklist("alice", true, &["q@x", "r@x"], &["r@x"])],
        );
        assert_eq!(blocked(&mut store), ["q@x"]);
        run(&mut store, vec![blocklist("alice", true, &[], &[])]);
        assert!(blocked(&mut store).is_empty());

        let replies = run(&mut store, vec![blocklist("bob", true, &[], &[])]);
        assert!(is_no_account(&replies[0], "bob"), "{replies:?}");
    }

    #[test]
    fn private_xml_per_namespace() {
        let dir = TempDir::new("private");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        let set = |u: &str, items: &[(&str, &str)]| StoreRequest::SetPrivate {
            username: u.into(),
            items: items
                .iter()
                .map(|(n, x)| ((*n).to_owned(), (*x).to_owned()))
                .collect(),
        };
        let load = |u: &str, n: &str| StoreRequest::LoadPrivate {
            username: u.into(),
            namespace: n.into(),
        };
        assert_eq!(
            run(
                &mut store,
                vec![
                    load("alice", "a"),
                    set(
                        "alice",
                        &[("a", "<x xmlns='a'>1</x>"), ("b", "<y xmlns='b'/>")]
                    ),
                    set("alice", &[("a", "<x xmlns='a'>2</x>")]),
                    load("alice", "a"),
                    load("alice", "b"),
                ]
            ),
            [
                StoreReply::Private(None),
                StoreReply::Done(true),
                StoreReply::Done(true),
                StoreReply::Private(Some("<x xmlns='a'>2</x>".into())),
                StoreReply::Private(Some("<y xmlns='b'/>".into())),
            ]
        );
        let replies = run(&mut store, vec![set("bob", &[("a", "<x xmlns='a'/>")])]);
        assert!(is_no_account(&replies[0], "bob"), "{replies:?}");
        // Deleted with the account.
        run(
            &mut store,
            vec![StoreRequest::DeleteAccount {
                username: "alice".into(),
            }],
        );
        store.add_user("alice", "pw").unwrap();
        assert_eq!(
            run(&mut store, vec![load("alice", "a")]),
            [StoreReply::Private(None)]
        );
    }

    #[test]
    fn vcard_and_last_activity() {
        let dir = TempDir::new("vcard");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        let set_vcard = |u: &str, v: &str| StoreRequest::SetVcard {
            username: u.into(),
            vcard: v.into(),
        };
        let load_vcard = |u: &str| StoreRequest::LoadVcard { username: u.into() };
        let set_last = |u: &str, at: u64, s: &str| StoreRequest::SetLastActivity {
            username: u.into(),
            at,
            status: s.into(),
        };
        let load_last = |u: &str| StoreRequest::LoadLastActivity { username: u.into() };

        assert_eq!(
            run(&mut store, vec![load_vcard("alice"), load_last("alice")]),
            [StoreReply::Vcard(None), StoreReply::LastActivity(None)]
        );
        assert_eq!(
            run(
                &mut store,
                vec![
                    set_vcard("alice", "<vCard>1</vCard>"),
                    set_vcard("alice", "<vCard>2</vCard>"),
                    set_last("alice", 100, "gone"),
                    set_last("alice", 200, ""),
                    load_vcard("alice"),
                    load_last("alice"),
                ]
            ),
            [
                StoreReply::Done(true),
                StoreReply::Done(true),
                StoreReply::Done(true),
                StoreReply::Done(true),
                StoreReply::Vcard(Some("<vCard>2</vCard>".into())),
                StoreReply::LastActivity(Some((200, String::new()))),
            ]
        );
        let replies = run(
            &mut store,
            vec![set_vcard("bob", "<vCard/>"), set_last("bob", 1, "x")],
        );
        assert!(
            replies.iter().all(|r| is_no_account(r, "bob")),
            "{replies:?}"
        );
        assert_eq!(
            run(&mut store, vec![load_vcard("bob"), load_last("bob")]),
            [StoreReply::Vcard(None), StoreReply::LastActivity(None)]
        );
    }

    /// Stores one of everything for `username`.
    fn populate(store: &mut Store, username: &str) {
        let replies = run(
            store,
            vec![
                set_item(
                    username,
                    &item("carol@x", None, &["g"], Subscription::default()),
                ),
                offline(username, "<m/>", 10, 10),
                blocklist(username, false, &["spam@x"], &[]),
                StoreRequest::SetVcard {
                    username: username.into(),
                    vcard: "<vCard/>".into(),
                },
                StoreRequest::SetLastActivity {
                    username: username.into(),
                    at: 5,
                    status: "bye".into(),
                },
            ],
        );
        assert!(
            !replies.iter().any(|r| matches!(r, StoreReply::Failed(_))),
            "{replies:?}"
        );
    }

    #[test]
    fn deleting_an_account_deletes_everything_of_it() {
        let dir = TempDir::new("cascade");
        let mut store = Store::open(&dir.0).unwrap();
        store.add_user("alice", "pw").unwrap();
        store.add_user("bob", "pw").unwrap();
        populate(&mut store, "alice");
        populate(&mut store, "bob");
        assert_eq!(
            run(
                &mut store,
                vec![StoreRequest::DeleteAccount {
                    username: "alice".into()
                }]
            ),
            [StoreReply::Done(true)]
        );
        for table in [
            "roster_items",
            "offline_messages",
            "blocklist",
            "vcards",
            "last_activity",
        ] {
            let owners: Vec<String> = store
                .conn
                .prepare(&format!("SELECT DISTINCT username FROM {table}"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(owners, ["bob"], "{table}");
        }
        // A new account with the same name starts empty, at roster version 0.
        store.add_user("alice", "pw").unwrap();
        assert_eq!(
            run(
                &mut store,
                vec![
                    load_user("alice"),
                    StoreRequest::LoadVcard {
                        username: "alice".into()
                    },
                    StoreRequest::LoadLastActivity {
                        username: "alice".into()
                    },
                ]
            ),
            [
                StoreReply::User(Some(UserData::default())),
                StoreReply::Vcard(None),
                StoreReply::LastActivity(None),
            ]
        );
        assert!(load_offline(&mut store, "alice").is_empty());
    }

    #[test]
    fn migration_from_version_1_keeps_the_accounts() {
        let dir = TempDir::new("migrate");
        let a = creds("one");
        std::fs::create_dir_all(&dir.0).unwrap();
        {
            let conn = Connection::open(dir.0.join(DB_FILE_NAME)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            // The account as version 1 wrote it.
            conn.execute(
                "INSERT INTO accounts (username,
                 sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                 sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key,
                 created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
                params![
                    "alice",
                    a.sha1.salt,
                    a.sha1.iterations,
                    a.sha1.stored_key,
                    a.sha1.server_key,
                    a.sha256.salt,
                    a.sha256.iterations,
                    a.sha256.stored_key,
                    a.sha256.server_key,
                ],
            )
            .unwrap();
        }
        let mut store = Store::open(&dir.0).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64, "every later step ran");
        assert_eq!(
            run(&mut store, vec![load("alice"), load_user("alice")]),
            [
                StoreReply::Credentials(Some(a)),
                StoreReply::User(Some(UserData::default())),
            ]
        );
        populate(&mut store, "alice");
        assert_eq!(
            run(&mut store, vec![remove_item("alice", "carol@x")]),
            [StoreReply::RosterVersion(2)]
        );
        // The accounts there already are the directory's first changes.
        let epoch: String = store
            .conn
            .query_row("SELECT epoch FROM directory_epoch", [], |r| r.get(0))
            .unwrap();
        assert_eq!(epoch.len(), 32);
        assert_eq!(
            run(
                &mut store,
                vec![StoreRequest::DirectoryChanges {
                    after: 0,
                    limit: 10
                }]
            ),
            [StoreReply::DirectoryChanges {
                changes: vec![proto_core::DirectoryChange {
                    seq: 1,
                    username: "alice".into(),
                    present: true
                }],
                last: 1,
                epoch: epoch.clone()
            }]
        );
    }

    #[test]
    fn user_data_survives_reopening() {
        let dir = TempDir::new("reopen-user");
        {
            let mut store = Store::open(&dir.0).unwrap();
            store.add_user("alice", "pw").unwrap();
            populate(&mut store, "alice");
        }
        let mut store = Store::open(&dir.0).unwrap();
        let replies = run(
            &mut store,
            vec![
                load_user("alice"),
                StoreRequest::LoadVcard {
                    username: "alice".into(),
                },
                StoreRequest::LoadLastActivity {
                    username: "alice".into(),
                },
            ],
        );
        assert_eq!(
            replies,
            [
                StoreReply::User(Some(UserData {
                    roster_version: 1,
                    roster: vec![item("carol@x", None, &["g"], Subscription::default())],
                    blocklist: vec!["spam@x".into()],
                    archive_prefs: None,
                    key: None,
                    app_push: Vec::new(),
                })),
                StoreReply::Vcard(Some("<vCard/>".into())),
                StoreReply::LastActivity(Some((5, "bye".into()))),
            ]
        );
        assert_eq!(load_offline(&mut store, "alice"), [("<m/>".into(), 10)]);
    }
}
