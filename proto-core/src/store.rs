//! Storage as an effect: the typed requests the core emits and the answers it expects.
//!
//! The core never touches a database. When it needs stored data (an account's
//! SCRAM keys) or must make something durable (a new account), it emits a
//! [`StoreRequest`] with a [`StoreToken`] through
//! [`Server::poll_event`](crate::Server::poll_event). The runtime executes the
//! request (batching requests into one transaction where it can) and hands the
//! result back with [`Server::handle_store_reply`](crate::Server::handle_store_reply).

use crate::roster::RosterItem;
use crate::sasl::Credentials;

/// Identifies one outstanding storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreToken(pub u64);

/// Something the core needs the store to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    /// Look up the SCRAM credentials of a local account (node part, already normalized).
    LoadCredentials {
        /// The account's username (the node part of its JID).
        username: String,
    },
    /// Create a new account; must be durable before the reply is sent.
    CreateAccount {
        /// The account's username (the node part of its JID).
        username: String,
        /// Its salted SCRAM keys; the password itself is never stored.
        credentials: Credentials,
    },
    /// Replace the credentials of an existing account (password change).
    SetCredentials {
        /// The account's username.
        username: String,
        /// The new salted SCRAM keys.
        credentials: Credentials,
    },
    /// Delete an account and everything stored for it (roster, offline
    /// messages, block list, vCard, last activity).
    DeleteAccount {
        /// The account's username.
        username: String,
    },
    /// Load what the session manager keeps in memory for an account.
    LoadUser {
        /// The account's username.
        username: String,
    },
    /// Insert or replace one roster item (keyed by its JID) and bump the
    /// roster version.
    SetRosterItem {
        /// The account's username.
        username: String,
        /// The item as it must be stored.
        item: RosterItem,
    },
    /// Remove one roster item and bump the roster version.
    RemoveRosterItem {
        /// The account's username.
        username: String,
        /// The contact's bare JID.
        jid: String,
    },
    /// Store a message for an account that is offline (XEP-0160), unless
    /// the account has `quota` messages stored already.
    StoreOffline {
        /// The recipient's username.
        username: String,
        /// The serialized stanza (with the server-stamped `from`).
        stanza: String,
        /// When the server received it (seconds since the Unix epoch).
        stamp: u64,
        /// Most messages stored per account.
        quota: u32,
        /// The recipient's archive copy (XEP-0313), stored with it or not
        /// at all (a message refused for the quota is not archived either).
        archive: Option<ArchiveEntry>,
        /// For a message in flight to a session with stream management: the
        /// core's key for it, by which [`StoreRequest::DeleteInFlight`]
        /// deletes it once the client acknowledges it.
        key: Option<u64>,
        /// For a stanza that came from another server of the network: its
        /// row in the inbox (see [`StoreRequest::NetReceive`]), deleted in
        /// the same transaction when the message is stored.
        inbox: Option<i64>,
    },
    /// Load the stored messages of an account, oldest first.
    LoadOffline {
        /// The account's username.
        username: String,
    },
    /// Delete delivered offline messages.
    DeleteOffline {
        /// The account's username.
        username: String,
        /// The ids from [`OfflineMessage::id`].
        ids: Vec<i64>,
    },
    /// Delete messages stored while in flight, by their keys (see
    /// [`StoreRequest::StoreOffline`]); keys not stored are no error.
    DeleteInFlight {
        /// The account's username.
        username: String,
        /// The keys.
        keys: Vec<u64>,
    },
    /// Delete offline messages stored before `before` (seconds since the Unix epoch).
    ExpireOffline {
        /// The cut-off time.
        before: u64,
    },
    /// Change the block list (XEP-0191).
    SetBlocklist {
        /// The account's username.
        username: String,
        /// Remove every entry first (`<unblock/>` without items).
        clear: bool,
        /// JIDs to add.
        add: Vec<String>,
        /// JIDs to remove.
        remove: Vec<String>,
    },
    /// Store the account's vCard (XEP-0054), as serialized XML.
    SetVcard {
        /// The account's username.
        username: String,
        /// The `<vCard xmlns='vcard-temp'>` element, serialized.
        vcard: String,
    },
    /// Load the account's vCard.
    LoadVcard {
        /// The account's username.
        username: String,
    },
    /// Store private XML (XEP-0049): each element replaces the one of its
    /// namespace.
    SetPrivate {
        /// The account's username.
        username: String,
        /// (namespace, the element serialized) for each element.
        items: Vec<(String, String)>,
    },
    /// Load the private XML of one namespace (XEP-0049).
    LoadPrivate {
        /// The account's username.
        username: String,
        /// The namespace of the element.
        namespace: String,
    },
    /// Record when the account's last session ended (XEP-0012).
    SetLastActivity {
        /// The account's username.
        username: String,
        /// Seconds since the Unix epoch.
        at: u64,
        /// The status text of the last unavailable presence.
        status: String,
    },
    /// Load the account's last activity.
    LoadLastActivity {
        /// The account's username.
        username: String,
    },
    /// Keep a message in an account's archive (XEP-0313).
    Archive {
        /// The account's username.
        username: String,
        /// The message and what it is found by.
        entry: ArchiveEntry,
    },
    /// A page of an account's archive.
    QueryArchive {
        /// The account's username.
        username: String,
        /// What to look for.
        query: ArchiveQuery,
    },
    /// Replace the account's archiving preferences.
    SetArchivePrefs {
        /// The account's username.
        username: String,
        /// The new preferences.
        prefs: ArchivePrefs,
    },
    /// Delete archived messages stored before `before` (seconds since the Unix epoch).
    ExpireArchive {
        /// The cut-off time.
        before: u64,
    },
    /// Kontalk registration, the phone step: a verification code for the
    /// account `username` (the hash of the number), valid until `expires`,
    /// unless one was issued less than `resend_after` seconds before `now`
    /// (answered [`CodeIssued::Throttled`]) or the account exists and
    /// `force` is not set ([`CodeIssued::Registered`]).
    IssueCode {
        /// The account's username.
        username: String,
        /// The code.
        code: String,
        /// Seconds since the Unix epoch.
        now: u64,
        /// When the code stops being valid.
        expires: u64,
        /// Seconds before another code may be issued.
        resend_after: u64,
        /// Register again a number that has an account.
        force: bool,
    },
    /// Kontalk registration: the code `code` of `username` could not be
    /// sent; it goes (if it is still the one stored), so that the number
    /// may ask again at once.
    WithdrawCode {
        /// The account's username.
        username: String,
        /// The code that was not sent.
        code: String,
    },
    /// Kontalk registration, the code step: a wrong `code` counts against
    /// `max_attempts` (the code is gone after that many); the right one is
    /// used up, the account created if it is new (with `credentials`, whose
    /// password nobody knows: the account logs in with its key) and `key`
    /// stored as the one it logs in with.
    Register {
        /// The account's username.
        username: String,
        /// The code the client sent.
        code: String,
        /// Seconds since the Unix epoch.
        now: u64,
        /// Wrong codes allowed.
        max_attempts: u32,
        /// The credentials of a new account (boxed: the rarest request
        /// does not size every event).
        credentials: Box<Credentials>,
        /// The key, certified by the server.
        key: StoredKey,
    },
    /// The OpenPGP key an account logs in with (Kontalk).
    LoadKey {
        /// The account's username.
        username: String,
    },
    /// Replace the key an account logs in with (a newer key at login, a rollover).
    SetKey {
        /// The account's username.
        username: String,
        /// The new key.
        key: StoredKey,
    },
    /// Keep a private key backup (Kontalk `register#privatekey`) under
    /// `token` until `expires`.
    SetPrivateKey {
        /// The account's username.
        username: String,
        /// The token the client retrieves it with.
        token: String,
        /// The encrypted private key, as the client sent it.
        private: Vec<u8>,
        /// The public key that goes with it.
        public: Vec<u8>,
        /// Seconds since the Unix epoch.
        expires: u64,
    },
    /// A private key backup by its token, if it has not expired at `now`.
    LoadPrivateKey {
        /// The token.
        token: String,
        /// Seconds since the Unix epoch.
        now: u64,
    },
    /// Which of these accounts exist (Kontalk contact match).
    ExistingAccounts {
        /// The usernames asked about.
        usernames: Vec<String>,
    },
    /// Delete verification codes and private key backups that expired before `before`.
    ExpireKontalk {
        /// The cut-off time.
        before: u64,
    },
    /// The changes of this server's accounts (created, deleted) numbered
    /// after `after`, oldest first, at most `limit` of them: what the other
    /// servers of a Kontalk network have not seen of this server's users.
    /// Every account creation and deletion is such a change, numbered in
    /// the transaction that makes it; an account's older changes are
    /// replaced by its newest.
    DirectoryChanges {
        /// The last number seen.
        after: u64,
        /// At most this many changes.
        limit: u32,
    },
    /// Changes of another server's users, as that server numbered them:
    /// applied in one transaction with the last number seen from it, so
    /// that what was applied and where to go on agree after any crash.
    /// Changes at or below the number already seen are skipped.
    StoreDirectory {
        /// The other server's host.
        home: String,
        /// Which log of it the changes come from (see
        /// [`StoreReply::DirectoryChanges`]), kept with the last number.
        epoch: String,
        /// Its users start over: those known of it are forgotten, and the
        /// last number seen from it is 0, before `changes` apply (its log
        /// was lost or restored from an older copy).
        reset: bool,
        /// Its changes, oldest first.
        changes: Vec<DirectoryChange>,
    },
    /// The whole directory of the network as this server knows it: the
    /// other servers' users, and the last number seen from each.
    LoadDirectory,
    /// Keep a stanza for a user of the network's server `dest` until that
    /// server says it has it durable ([`StoreRequest::NetAcked`]); it gets
    /// the next number of this server's outbox, never used again.
    NetQueue {
        /// The host of the server it goes to.
        dest: String,
        /// The serialized stanza.
        stanza: String,
        /// Most stanzas kept for `dest`: beyond, it is not kept
        /// ([`StoreReply::NetQueued`] with `None`).
        limit: u32,
    },
    /// The stanzas kept for `dest` numbered after `after`, oldest first, at
    /// most `limit` of them.
    NetOutbox {
        /// The host of the server they go to.
        dest: String,
        /// The last number sent.
        after: u64,
        /// At most this many.
        limit: u32,
    },
    /// `dest` has every stanza for it numbered up to `upto` durable: they
    /// are deleted here.
    NetAcked {
        /// The host of the server they went to.
        dest: String,
        /// The last number it has.
        upto: u64,
    },
    /// Keep a stanza for another domain's server until it has it
    /// ([`StoreRequest::S2sForget`]); answered with [`StoreReply::S2sKept`]:
    /// its number, higher than every one kept (once every one above it is
    /// deleted, a number may come again).
    S2sKeep {
        /// The pair of domains, `"<ours> <theirs>"`.
        dest: String,
        /// The stanza as it goes on the stream (`jabber:server`).
        stanza: String,
    },
    /// The pair's stanzas numbered after `after` and up to `upto` are
    /// deleted (the peer has them, or they were answered): all it keeps
    /// with those numbers.
    S2sForget {
        /// The pair of domains, `"<ours> <theirs>"`.
        dest: String,
        /// The range starts after this number.
        after: u64,
        /// The last number deleted now.
        upto: u64,
    },
    /// Every stanza federation keeps, oldest first (what waited for other
    /// servers when this one stopped; see [`crate::s2s`]).
    LoadS2s,
    /// Keep the push token an account's device registered with `provider`
    /// (Kontalk's `push@` service), replacing the one it had there.
    /// Answered with [`StoreReply::Done`] (`true`).
    SetPushToken {
        /// The account's username.
        username: String,
        /// The push provider the client named (`gcm`).
        provider: String,
        /// The device's token.
        token: String,
    },
    /// Forget the account's push token for `provider`. Answered with
    /// [`StoreReply::Done`]: whether there was one.
    RemovePushToken {
        /// The account's username.
        username: String,
        /// The push provider the client named.
        provider: String,
        /// Only if it is this token (one the provider refused: a newer one
        /// the device registered meanwhile stays).
        only: Option<String>,
    },
    /// Keep a push registration (XEP-0357) of the account, replacing the
    /// one for the same app server and node. Answered with
    /// [`StoreReply::Done`] (`false`: no such account).
    SetAppPush {
        /// The account's username.
        username: String,
        /// The registration.
        push: AppPush,
    },
    /// Forget the account's registrations with the app server `jid` (only
    /// the one of `node` when given). Answered with [`StoreReply::Done`]:
    /// whether there was one.
    RemoveAppPush {
        /// The account's username.
        username: String,
        /// The app server's JID.
        jid: String,
        /// Its node; `None`: every node of that app server.
        node: Option<String>,
    },
    /// The account's push tokens. Answered with [`StoreReply::PushTokens`].
    LoadPushTokens {
        /// The account's username.
        username: String,
    },
    /// Keep an upload slot (XEP-0363) unless the account's files and open
    /// slots, with this one, would be over `quota` bytes (0: no limit):
    /// what counts is every file not expired at `now` and every slot whose
    /// PUT may still start. Answered with [`StoreReply::UploadReserved`].
    ReserveUpload {
        /// The slot, as the store keeps it (state [`UploadState::Reserved`]).
        slot: UploadSlot,
        /// The account's quota in bytes; 0: no limit.
        quota: u64,
        /// The time (Unix seconds).
        now: u64,
    },
    /// A stanza numbered `seq` by the server `origin` (of its outbox
    /// `epoch`): kept in the inbox until delivered here, with the number as
    /// the last one durable from `origin`, in one transaction, unless a
    /// number at least as high of the same epoch is durable already (a
    /// repeat), or the one before it on its link (`prev`) is not durable
    /// (it failed: this one must not count as the last). Answered with
    /// [`StoreReply::NetReceived`].
    NetReceive {
        /// The host of the server it came from.
        origin: String,
        /// Which outbox of it (see [`Directory::epoch`]).
        epoch: String,
        /// Its number there.
        seq: u64,
        /// The number of the stanza before it on the same link (`None`:
        /// the link's first, the oldest the origin keeps).
        prev: Option<u64>,
        /// The serialized stanza.
        stanza: String,
    },
    /// The stanzas in the inbox, oldest first (those a crash left
    /// undelivered).
    LoadNetInbox,
    /// Stanzas of the inbox are delivered (or answered): deleted.
    NetDelivered {
        /// Their ids (see [`StoreReply::NetReceived`]).
        ids: Vec<i64>,
    },
    /// Nothing: answered with [`StoreReply::Done`] once every request sent
    /// before it is answered (they are durable then), for an XEP-0198 `<a/>`
    /// that must not run ahead of the store.
    Barrier,
}

/// One change of a server's users (see [`StoreRequest::DirectoryChanges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChange {
    /// Its number on its home server.
    pub seq: u64,
    /// The account (the local part of its JID).
    pub username: String,
    /// Whether the account exists after the change (`false`: deleted).
    pub present: bool,
}

/// The directory as [`StoreRequest::LoadDirectory`] answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// `(home, username)` of every user of the other servers.
    pub users: Vec<(String, String)>,
    /// `(home, number, epoch)`: the last change seen from each other
    /// server, and of which of its logs.
    pub seen: Vec<(String, u64, String)>,
    /// This server's own epoch (see [`StoreReply::DirectoryChanges`]),
    /// which also numbers its outbox ([`StoreRequest::NetQueue`]).
    pub epoch: String,
}

impl StoreRequest {
    /// What the request does, in words for a log line ("storing an offline
    /// message"), and the username of the account it concerns, if one.
    pub fn describe(&self) -> (&'static str, Option<&str>) {
        use StoreRequest as R;
        match self {
            R::LoadCredentials { username } => ("loading the credentials", Some(username)),
            R::CreateAccount { username, .. } => ("creating the account", Some(username)),
            R::SetCredentials { username, .. } => ("changing the password", Some(username)),
            R::DeleteAccount { username } => ("deleting the account", Some(username)),
            R::LoadUser { username } => ("loading the roster and block list", Some(username)),
            R::SetRosterItem { username, .. } => ("storing a roster item", Some(username)),
            R::RemoveRosterItem { username, .. } => ("removing a roster item", Some(username)),
            R::StoreOffline { username, .. } => ("storing an offline message", Some(username)),
            R::LoadOffline { username } => ("loading the offline messages", Some(username)),
            R::DeleteOffline { username, .. } => {
                ("deleting delivered offline messages", Some(username))
            }
            R::DeleteInFlight { username, .. } => {
                ("deleting acknowledged messages", Some(username))
            }
            R::ExpireOffline { .. } => ("deleting expired offline messages", None),
            R::SetBlocklist { username, .. } => ("storing the block list", Some(username)),
            R::SetVcard { username, .. } => ("storing the vCard", Some(username)),
            R::LoadVcard { username } => ("loading the vCard", Some(username)),
            R::SetPrivate { username, .. } => ("storing private XML", Some(username)),
            R::LoadPrivate { username, .. } => ("loading private XML", Some(username)),
            R::SetLastActivity { username, .. } => ("storing the last activity", Some(username)),
            R::LoadLastActivity { username } => ("loading the last activity", Some(username)),
            R::Archive { username, .. } => ("archiving a message", Some(username)),
            R::QueryArchive { username, .. } => ("querying the archive", Some(username)),
            R::SetArchivePrefs { username, .. } => {
                ("storing the archiving preferences", Some(username))
            }
            R::ExpireArchive { .. } => ("deleting expired archived messages", None),
            R::IssueCode { username, .. } => ("issuing a verification code", Some(username)),
            R::WithdrawCode { username, .. } => {
                ("withdrawing a verification code not sent", Some(username))
            }
            R::Register { username, .. } => ("registering the account's key", Some(username)),
            R::LoadKey { username } => ("loading the account's key", Some(username)),
            R::SetKey { username, .. } => ("storing the account's key", Some(username)),
            R::SetPrivateKey { username, .. } => ("storing a private key backup", Some(username)),
            R::LoadPrivateKey { .. } => ("loading a private key backup", None),
            R::ExistingAccounts { .. } => ("matching contacts", None),
            R::ExpireKontalk { .. } => {
                ("deleting expired verification codes and key backups", None)
            }
            R::DirectoryChanges { .. } => ("reading this server's directory changes", None),
            R::StoreDirectory { .. } => ("storing another server's directory changes", None),
            R::LoadDirectory => ("loading the network's directory", None),
            R::NetQueue { .. } => ("keeping a stanza for another server", None),
            R::NetOutbox { .. } => ("reading the stanzas kept for another server", None),
            R::NetAcked { .. } => ("deleting what another server has", None),
            R::SetPushToken { username, .. } => ("storing a push token", Some(username)),
            R::RemovePushToken { username, .. } => ("removing a push token", Some(username)),
            R::LoadPushTokens { username } => ("loading the push tokens", Some(username)),
            R::SetAppPush { username, .. } => ("storing a push registration", Some(username)),
            R::RemoveAppPush { username, .. } => ("removing a push registration", Some(username)),
            R::ReserveUpload { slot, .. } => ("keeping an upload slot", Some(&slot.username)),
            R::S2sKeep { .. } => ("keeping a stanza for another domain", None),
            R::S2sForget { .. } => ("deleting what another domain has", None),
            R::LoadS2s => ("loading the stanzas kept for other domains", None),
            R::NetReceive { .. } => ("keeping a stanza from another server", None),
            R::LoadNetInbox => ("loading the stanzas from other servers", None),
            R::NetDelivered { .. } => ("deleting delivered stanzas from other servers", None),
            R::Barrier => ("waiting for the requests before it", None),
        }
    }
}

/// An account's OpenPGP key (Kontalk), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The v4 fingerprint, uppercase hex.
    pub fingerprint: String,
    /// The transferable public key, binary, with the server's certification.
    pub key: Vec<u8>,
}

/// Answer to [`StoreRequest::IssueCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeIssued {
    /// Stored: the code may be sent.
    Issued,
    /// A code was issued too recently; nothing changed.
    Throttled,
    /// The account exists and `force` was not set; nothing changed.
    Registered,
}

/// Answer to [`StoreRequest::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The key is stored; `created` when the account is new.
    Registered {
        /// Whether the account was created.
        created: bool,
    },
    /// The code is wrong (or expired, or used up).
    WrongCode,
}

/// What the session manager keeps in memory for an account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserData {
    /// The roster version (XEP-0237): bumped on every roster change.
    pub roster_version: u64,
    /// Every roster item, including pending inbound requests.
    pub roster: Vec<RosterItem>,
    /// Blocked JIDs (XEP-0191).
    pub blocklist: Vec<String>,
    /// Archiving preferences (XEP-0313); `None` until the user sets some.
    pub archive_prefs: Option<ArchivePrefs>,
    /// The OpenPGP key the account logs in with (Kontalk), if it has one.
    pub key: Option<StoredKey>,
    /// The account's push registrations with app servers (XEP-0357).
    pub app_push: Vec<AppPush>,
}

/// A push registration with an app server (XEP-0357): where the account's
/// notifications are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPush {
    /// The app server's JID.
    pub jid: String,
    /// Its node for this device.
    pub node: String,
    /// The publish options (a data form, serialized), if the client gave some.
    pub options: Option<String>,
}

/// Which messages an account archives by default (XEP-0313 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveDefault {
    /// Every message.
    #[default]
    Always,
    /// None, but those with the JIDs listed as always.
    Never,
    /// Messages with contacts in the roster.
    Roster,
}

impl ArchiveDefault {
    /// The name in `<prefs default='...'/>`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        }
    }

    /// The value of a `default` attribute.
    pub fn parse(s: &str) -> Option<ArchiveDefault> {
        match s {
            "always" => Some(ArchiveDefault::Always),
            "never" => Some(ArchiveDefault::Never),
            "roster" => Some(ArchiveDefault::Roster),
            _ => None,
        }
    }
}

/// An account's archiving preferences (XEP-0313 section 7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePrefs {
    /// What is archived when neither list names the other party.
    pub default: ArchiveDefault,
    /// Bare JIDs whose messages are always archived.
    pub always: Vec<String>,
    /// Bare JIDs whose messages are never archived (this list wins).
    pub never: Vec<String>,
}

/// A message for an account's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Its archive id, also its `<stanza-id/>` (XEP-0359): unique per account.
    pub id: String,
    /// The other party's bare JID.
    pub with: String,
    /// The other party's JID as in the message (full when it had a resource).
    pub with_full: String,
    /// When the server received it (seconds since the Unix epoch).
    pub stamp: u64,
    /// The serialized stanza.
    pub stanza: String,
}

/// What a query of the archive asks for (XEP-0313 section 4, with the
/// paging of XEP-0059).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveQuery {
    /// Only messages with this JID: a bare one matches each of its
    /// resources, a full one only itself.
    pub with: Option<String>,
    /// Only messages stored at or after this time.
    pub start: Option<u64>,
    /// Only messages stored at or before this time.
    pub end: Option<u64>,
    /// Only messages after the one with this archive id.
    pub after: Option<String>,
    /// Only messages before the one with this archive id.
    pub before: Option<String>,
    /// Only the messages with these archive ids (empty: any).
    pub ids: Vec<String>,
    /// The page at the end of the range (the newest), not its start.
    pub from_end: bool,
    /// Most messages in the page.
    pub max: u32,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Its archive id.
    pub id: String,
    /// When it was stored (seconds since the Unix epoch).
    pub stamp: u64,
    /// The serialized stanza.
    pub stanza: String,
}

/// A page of an archive, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePage {
    /// The messages of the page, oldest first.
    pub messages: Vec<ArchivedMessage>,
    /// The page reaches the end of the range in its direction (the newest
    /// message, or the oldest for a page from the end).
    pub complete: bool,
    /// How many messages the query's `with`, `start` and `end` match in all.
    pub count: u64,
}

/// A stored offline message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Store id, increasing with arrival.
    pub id: i64,
    /// The serialized stanza.
    pub stanza: String,
    /// When it was received (seconds since the Unix epoch).
    pub stamp: u64,
    /// Its key, when it was stored in flight to a session.
    pub key: Option<u64>,
}

/// Answer to [`StoreRequest::NetReceive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetReceived {
    /// Kept, with this id in the inbox.
    New(i64),
    /// Durable already.
    Repeat,
    /// Not kept: the stanza before it on its link is not durable.
    Gap,
}

/// Answer to [`StoreRequest::StoreOffline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineStored {
    /// Durable, with this id (see [`OfflineMessage::id`]).
    Stored(i64),
    /// The account's quota is full; nothing was stored.
    QuotaFull,
    /// There is no such account.
    NoAccount,
}

/// The store's answer to a [`StoreRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// Answer to [`StoreRequest::LoadCredentials`]: `None` when there is no such account.
    Credentials(Option<Credentials>),
    /// Answer to [`StoreRequest::CreateAccount`]: `false` when the username is taken.
    Created(bool),
    /// Answer to [`StoreRequest::SetCredentials`] and [`StoreRequest::DeleteAccount`]:
    /// `false` when there is no such account. Also the answer to
    /// [`StoreRequest::DeleteOffline`], [`StoreRequest::DeleteInFlight`],
    /// [`StoreRequest::ExpireOffline`],
    /// [`StoreRequest::SetBlocklist`], [`StoreRequest::SetVcard`],
    /// [`StoreRequest::SetPrivate`] and [`StoreRequest::SetLastActivity`]
    /// (always `true`).
    Done(bool),
    /// Answer to [`StoreRequest::LoadUser`]: `None` when there is no such account.
    User(Option<UserData>),
    /// Answer to [`StoreRequest::SetRosterItem`] and
    /// [`StoreRequest::RemoveRosterItem`]: the new roster version.
    RosterVersion(u64),
    /// Answer to [`StoreRequest::StoreOffline`].
    Offline(OfflineStored),
    /// Answer to [`StoreRequest::LoadOffline`].
    OfflineMessages(Vec<OfflineMessage>),
    /// Answer to [`StoreRequest::LoadVcard`].
    Vcard(Option<String>),
    /// Answer to [`StoreRequest::LoadPrivate`]: the element, serialized.
    Private(Option<String>),
    /// Answer to [`StoreRequest::LoadLastActivity`]: time and status.
    LastActivity(Option<(u64, String)>),
    /// Answer to [`StoreRequest::QueryArchive`]: `None` when the `after`
    /// or `before` id is not in the archive. ([`StoreRequest::Archive`],
    /// [`StoreRequest::SetArchivePrefs`] and [`StoreRequest::ExpireArchive`]
    /// are answered with [`StoreReply::Done`].)
    ArchivePage(Option<ArchivePage>),
    /// Answer to [`StoreRequest::IssueCode`].
    Code(CodeIssued),
    /// Answer to [`StoreRequest::Register`].
    Registration(Registration),
    /// Answer to [`StoreRequest::LoadKey`]. ([`StoreRequest::SetKey`],
    /// [`StoreRequest::SetPrivateKey`] and [`StoreRequest::ExpireKontalk`]
    /// are answered with [`StoreReply::Done`], `false` when there is no
    /// such account.)
    Key(Option<StoredKey>),
    /// Answer to [`StoreRequest::ExistingAccounts`]: those that exist, in the order asked.
    Existing(Vec<String>),
    /// Answer to [`StoreRequest::LoadPrivateKey`]: the private and the public key.
    PrivateKey(Option<(Vec<u8>, Vec<u8>)>),
    /// Answer to [`StoreRequest::DirectoryChanges`]. ([`StoreRequest::StoreDirectory`]
    /// is answered with [`StoreReply::Done`].)
    DirectoryChanges {
        /// The changes asked for.
        changes: Vec<DirectoryChange>,
        /// The highest number of the log (0 when it is empty).
        last: u64,
        /// Which log this is: made anew with the database, and for each
        /// backup copy, so that a server whose database was lost or
        /// restored is not taken for the one the others knew.
        epoch: String,
    },
    /// Answer to [`StoreRequest::LoadDirectory`].
    Directory(Directory),
    /// Answer to [`StoreRequest::NetQueue`]: the stanza's number, or `None`
    /// when the outbox for that server is full. ([`StoreRequest::NetAcked`]
    /// and [`StoreRequest::NetDelivered`] are answered with [`StoreReply::Done`].)
    NetQueued(Option<u64>),
    /// Answer to [`StoreRequest::NetOutbox`]: `(number, stanza)`.
    NetOutbox(Vec<(u64, String)>),
    /// Answer to [`StoreRequest::S2sKeep`]: the stanza's number.
    /// ([`StoreRequest::S2sForget`] is answered with [`StoreReply::Done`].)
    S2sKept(u64),
    /// Answer to [`StoreRequest::LoadS2s`]: `(pair, number, stanza)`,
    /// oldest first.
    S2sQueues(Vec<(String, u64, String)>),
    /// Answer to [`StoreRequest::NetReceive`].
    NetReceived(NetReceived),
    /// Answer to [`StoreRequest::LoadNetInbox`]: `(id, origin, stanza)`.
    NetInbox(Vec<(i64, String, String)>),
    /// Answer to [`StoreRequest::ReserveUpload`]: `None` when the slot is
    /// kept; over the quota, `Some` of the time (Unix seconds) when the
    /// oldest of the account's files or slots stops counting.
    UploadReserved(Option<u64>),
    /// Answer to [`StoreRequest::LoadPushTokens`]: `(provider, token)`.
    PushTokens(Vec<(String, String)>),
    /// The store failed; the message is for logs, never sent to clients.
    Failed(String),
}

/// An upload slot (XEP-0363) as the store keeps it: what its PUT must be,
/// and until when it and its file count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSlot {
    /// The unguessable token of its URLs (hex).
    pub token: String,
    /// The account it was given to.
    pub username: String,
    /// The file name the client asked for.
    pub filename: String,
    /// The file's exact size in bytes.
    pub size: u64,
    /// The file's content type (what the PUT must say, what the GET
    /// serves); empty when the client gave none (the PUT's is kept).
    pub content_type: String,
    /// The PUT must start by this time (Unix seconds).
    pub put_by: u64,
    /// The file is deleted at this time (Unix seconds).
    pub expires: u64,
    /// Where its upload stands.
    pub state: UploadState,
    /// Asked for in version 0.2 (`urn:xmpp:http:upload`), whose clients
    /// count only `200 OK` as a PUT's success (`201 Created` otherwise).
    pub legacy: bool,
}

/// Where the upload of a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Given out, no PUT yet (or the last one failed).
    Reserved,
    /// A PUT is writing the file.
    Uploading,
    /// The file is complete and served.
    Stored,
}

impl UploadState {
    /// The state's number in the store.
    pub fn code(self) -> i64 {
        match self {
            UploadState::Reserved => 0,
            UploadState::Uploading => 1,
            UploadState::Stored => 2,
        }
    }

    /// The state of a number in the store.
    pub fn from_code(code: i64) -> Option<UploadState> {
        match code {
            0 => Some(UploadState::Reserved),
            1 => Some(UploadState::Uploading),
            2 => Some(UploadState::Stored),
            _ => None,
        }
    }
}
