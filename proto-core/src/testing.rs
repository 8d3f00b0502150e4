//! Test support shared by the core's tests, the fuzz targets and benches:
//! an in-memory store that answers every [`StoreRequest`] like the SQLite
//! store does, a fixed test certificate, and a [`Fixture`] that drives a
//! server with simulated time and test clients: raw plaintext ones and XMPP
//! ones that speak TLS and parse what they receive.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::StreamErrorCondition;
use crate::ns;
use crate::roster::RosterItem;
use crate::sasl::scram::{ScramClient, ScramHash};
use crate::sasl::{Credentials, Mechanism, TLS_EXPORTER_LABEL};
use crate::store::{
    ArchiveEntry, ArchivePage, ArchiveQuery, ArchivedMessage, CodeIssued, OfflineMessage,
    OfflineStored, Registration, StoreReply, StoreRequest, StoreToken, StoredKey, UserData,
};
use crate::xml::{Element, StreamEvent, StreamParser};
use crate::{Config, ConnId, Event, Limits, Listener, Server, TlsConfigs, TlsIdentity};

/// An in-memory store with the semantics of the SQLite one.
#[derive(Debug, Clone)]
pub struct MemStore {
    /// Accounts and their credentials.
    pub accounts: HashMap<String, Credentials>,
    /// Rosters and block lists.
    pub data: HashMap<String, UserData>,
    /// Offline messages in arrival order, with their recipient.
    pub offline: Vec<(String, OfflineMessage)>,
    /// Last offline message id handed out.
    pub next_offline: i64,
    /// vCards.
    pub vcards: HashMap<String, String>,
    /// Private XML by (username, namespace).
    pub private: HashMap<(String, String), String>,
    /// Last activity.
    pub last: HashMap<String, (u64, String)>,
    /// Archived messages (XEP-0313) in arrival order, with their account.
    pub archive: Vec<(String, ArchiveEntry)>,
    /// Kontalk keys by account.
    pub keys: HashMap<String, StoredKey>,
    /// Kontalk verification codes by account: code, issued, expires, wrong attempts.
    pub codes: HashMap<String, (String, u64, u64, u32)>,
    /// Private key backups by token: account, private, public, expires.
    pub private_keys: HashMap<String, (String, Vec<u8>, Vec<u8>, u64)>,
    /// The changes of the accounts (the directory log), oldest first.
    pub directory_log: Vec<crate::store::DirectoryChange>,
    /// The number of the last change.
    pub directory_seq: u64,
    /// The other servers' users: (home, username).
    pub directory: std::collections::BTreeSet<(String, String)>,
    /// The last change seen from each other server, and of which log.
    pub directory_seen: std::collections::BTreeMap<String, (u64, String)>,
    /// Which log this store's is (see [`StoreReply::DirectoryChanges`]):
    /// distinct for every `MemStore` made.
    pub directory_epoch: String,
    /// Stanzas for other servers of the network by number: (dest, stanza).
    pub net_outbox: std::collections::BTreeMap<u64, (String, String)>,
    /// The last number of the outbox.
    pub net_seq: u64,
    /// Federation's queues: number -> (pair, stanza).
    pub s2s_outbox: std::collections::BTreeMap<u64, (String, String)>,
    /// Stanzas from other servers by inbox id: (origin, stanza).
    pub net_inbox: std::collections::BTreeMap<i64, (String, String)>,
    /// The last inbox id.
    pub net_inbox_id: i64,
    /// The last number durable from each origin, and of which epoch.
    pub net_received: HashMap<String, (String, u64)>,
    /// Push tokens by (user, provider).
    pub push_tokens: HashMap<(String, String), String>,
    /// Upload slots (XEP-0363), in the order given out.
    pub uploads: Vec<crate::store::UploadSlot>,
}

impl Default for MemStore {
    fn default() -> Self {
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MemStore {
            accounts: HashMap::new(),
            data: HashMap::new(),
            offline: Vec::new(),
            next_offline: 0,
            vcards: HashMap::new(),
            private: HashMap::new(),
            last: HashMap::new(),
            archive: Vec::new(),
            keys: HashMap::new(),
            codes: HashMap::new(),
            private_keys: HashMap::new(),
            directory_log: Vec::new(),
            directory_seq: 0,
            directory: Default::default(),
            directory_seen: Default::default(),
            directory_epoch: format!("memstore-{n}"),
            net_outbox: Default::default(),
            net_seq: 0,
            s2s_outbox: Default::default(),
            net_inbox: Default::default(),
            net_inbox_id: 0,
            net_received: HashMap::new(),
            push_tokens: HashMap::new(),
            uploads: Vec::new(),
        }
    }
}

impl MemStore {
    /// Adds an account (with few PBKDF2 iterations: tests log in a lot).
    pub fn add_account(&mut self, user: &str, password: &str) {
        self.accounts.insert(
            user.to_owned(),
            Credentials::derive(password, user.as_bytes(), 16),
        );
        self.account_changed(user, true);
    }

    /// Numbers a change of an account in the directory log (its older
    /// change replaced), as the SQLite store does.
    fn account_changed(&mut self, username: &str, present: bool) {
        self.directory_seq += 1;
        self.directory_log.retain(|c| c.username != username);
        self.directory_log.push(crate::store::DirectoryChange {
            seq: self.directory_seq,
            username: username.to_owned(),
            present,
        });
    }

    /// Executes one request.
    pub fn answer(&mut self, req: &StoreRequest) -> StoreReply {
        let data = &mut self.data;
        match req.clone() {
            StoreRequest::LoadCredentials { username } => {
                StoreReply::Credentials(self.accounts.get(&username).cloned())
            }
            StoreRequest::CreateAccount {
                username,
                credentials,
            } => match self.accounts.entry(username) {
                std::collections::hash_map::Entry::Occupied(_) => StoreReply::Created(false),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let username = v.key().clone();
                    v.insert(credentials);
                    self.account_changed(&username, true);
                    StoreReply::Created(true)
                }
            },
            StoreRequest::SetCredentials {
                username,
                credentials,
            } => StoreReply::Done(self.accounts.insert(username, credentials).is_some()),
            StoreRequest::DeleteAccount { username } => {
                data.remove(&username);
                self.private.retain(|(u, _), _| *u != username);
                self.offline.retain(|(u, _)| *u != username);
                self.archive.retain(|(u, _)| *u != username);
                self.keys.remove(&username);
                self.private_keys.retain(|_, p| p.0 != username);
                self.push_tokens.retain(|(u, _), _| *u != username);
                self.uploads.retain(|s| s.username != username);
                let existed = self.accounts.remove(&username).is_some();
                if existed {
                    self.account_changed(&username, false);
                }
                StoreReply::Done(existed)
            }
            StoreRequest::LoadUser { username } => {
                StoreReply::User(self.accounts.contains_key(&username).then(|| UserData {
                    key: self.keys.get(&username).cloned(),
                    ..data.get(&username).cloned().unwrap_or_default()
                }))
            }
            StoreRequest::SetAppPush { username, push } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Done(false);
                }
                let list = &mut data.entry(username).or_default().app_push;
                crate::session::app_push::AppPushChange::Enable(push).apply(list);
                StoreReply::Done(true)
            }
            StoreRequest::RemoveAppPush {
                username,
                jid,
                node,
            } => {
                let list = &mut data.entry(username).or_default().app_push;
                let before = list.len();
                crate::session::app_push::AppPushChange::Disable { jid, node }.apply(list);
                StoreReply::Done(list.len() < before)
            }
            StoreRequest::SetRosterItem { username, item } => {
                let d = data.entry(username).or_default();
                match d.roster.iter_mut().find(|i| i.jid == item.jid) {
                    Some(i) => *i = item,
                    None => d.roster.push(item),
                }
                d.roster_version += 1;
                StoreReply::RosterVersion(d.roster_version)
            }
            StoreRequest::RemoveRosterItem { username, jid } => {
                let d = data.entry(username).or_default();
                let before = d.roster.len();
                d.roster.retain(|i| i.jid != jid);
                if d.roster.len() != before {
                    d.roster_version += 1;
                }
                StoreReply::RosterVersion(d.roster_version)
            }
            StoreRequest::StoreOffline {
                username,
                stanza,
                stamp,
                quota,
                archive,
                key,
                inbox,
            } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Offline(OfflineStored::NoAccount);
                }
                if self.offline.iter().filter(|(u, _)| *u == username).count() >= quota as usize {
                    return StoreReply::Offline(OfflineStored::QuotaFull);
                }
                if let Some(entry) = archive {
                    self.archive.push((username.clone(), entry));
                }
                if let Some(id) = inbox {
                    self.net_inbox.remove(&id);
                }
                self.next_offline += 1;
                self.offline.push((
                    username,
                    OfflineMessage {
                        id: self.next_offline,
                        stanza,
                        stamp,
                        key,
                    },
                ));
                StoreReply::Offline(OfflineStored::Stored(self.next_offline))
            }
            StoreRequest::LoadOffline { username } => StoreReply::OfflineMessages(
                self.offline
                    .iter()
                    .filter(|(u, _)| *u == username)
                    .map(|(_, m)| m.clone())
                    .collect(),
            ),
            StoreRequest::DeleteOffline { username, ids } => {
                self.offline
                    .retain(|(u, m)| *u != username || !ids.contains(&m.id));
                StoreReply::Done(true)
            }
            StoreRequest::DeleteInFlight { username, keys } => {
                self.offline
                    .retain(|(u, m)| *u != username || !m.key.is_some_and(|k| keys.contains(&k)));
                StoreReply::Done(true)
            }
            StoreRequest::ExpireOffline { before } => {
                self.offline.retain(|(_, m)| m.stamp >= before);
                StoreReply::Done(true)
            }
            StoreRequest::SetBlocklist {
                username,
                clear,
                add,
                remove,
            } => {
                let d = data.entry(username).or_default();
                if clear {
                    d.blocklist.clear();
                }
                for a in add {
                    if !d.blocklist.contains(&a) {
                        d.blocklist.push(a);
                    }
                }
                d.blocklist.retain(|b| !remove.contains(b));
                StoreReply::Done(true)
            }
            StoreRequest::SetVcard { username, vcard } => {
                self.vcards.insert(username, vcard);
                StoreReply::Done(true)
            }
            StoreRequest::SetPrivate { username, items } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Failed(format!("no such account '{username}'"));
                }
                for (namespace, xml) in items {
                    self.private.insert((username.clone(), namespace), xml);
                }
                StoreReply::Done(true)
            }
            StoreRequest::LoadPrivate {
                username,
                namespace,
            } => StoreReply::Private(self.private.get(&(username, namespace)).cloned()),
            StoreRequest::LoadVcard { username } => {
                StoreReply::Vcard(self.vcards.get(&username).cloned())
            }
            StoreRequest::SetLastActivity {
                username,
                at,
                status,
            } => {
                self.last.insert(username, (at, status));
                StoreReply::Done(true)
            }
            StoreRequest::Archive { username, entry } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Failed(format!("no such account '{username}'"));
                }
                self.archive.push((username, entry));
                StoreReply::Done(true)
            }
            StoreRequest::QueryArchive { username, query } => {
                StoreReply::ArchivePage(self.query_archive(&username, &query))
            }
            StoreRequest::SetArchivePrefs { username, prefs } => {
                data.entry(username).or_default().archive_prefs = Some(prefs);
                StoreReply::Done(true)
            }
            StoreRequest::ExpireArchive { before } => {
                self.archive.retain(|(_, e)| e.stamp >= before);
                StoreReply::Done(true)
            }
            StoreRequest::IssueCode {
                username,
                code,
                now,
                expires,
                resend_after,
                force,
            } => {
                if self.accounts.contains_key(&username) && !force {
                    return StoreReply::Code(CodeIssued::Registered);
                }
                if let Some((_, issued, until, _)) = self.codes.get(&username) {
                    if *until > now && now < issued.saturating_add(resend_after) {
                        return StoreReply::Code(CodeIssued::Throttled);
                    }
                }
                self.codes.insert(username, (code, now, expires, 0));
                StoreReply::Code(CodeIssued::Issued)
            }
            StoreRequest::WithdrawCode { username, code } => {
                let here = self.codes.get(&username).is_some_and(|c| c.0 == code);
                if here {
                    self.codes.remove(&username);
                }
                StoreReply::Done(here)
            }
            StoreRequest::Register {
                username,
                code,
                now,
                max_attempts,
                credentials,
                key,
            } => {
                let Some(entry) = self.codes.get_mut(&username) else {
                    return StoreReply::Registration(Registration::WrongCode);
                };
                if entry.2 <= now || entry.0 != code {
                    entry.3 += 1;
                    if entry.2 <= now || entry.3 >= max_attempts {
                        self.codes.remove(&username);
                    }
                    return StoreReply::Registration(Registration::WrongCode);
                }
                self.codes.remove(&username);
                let created = !self.accounts.contains_key(&username);
                self.accounts
                    .entry(username.clone())
                    .or_insert(*credentials);
                if created {
                    self.account_changed(&username, true);
                }
                self.keys.insert(username, key);
                StoreReply::Registration(Registration::Registered { created })
            }
            StoreRequest::LoadKey { username } => {
                StoreReply::Key(self.keys.get(&username).cloned())
            }
            StoreRequest::SetKey { username, key } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Done(false);
                }
                self.keys.insert(username, key);
                StoreReply::Done(true)
            }
            StoreRequest::SetPrivateKey {
                username,
                token,
                private,
                public,
                expires,
            } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Done(false);
                }
                self.private_keys
                    .insert(token, (username, private, public, expires));
                StoreReply::Done(true)
            }
            StoreRequest::LoadPrivateKey { token, now } => StoreReply::PrivateKey(
                self.private_keys
                    .get(&token)
                    .filter(|e| e.3 > now)
                    .map(|e| (e.1.clone(), e.2.clone())),
            ),
            StoreRequest::ExistingAccounts { usernames } => StoreReply::Existing(
                usernames
                    .into_iter()
                    .filter(|u| self.accounts.contains_key(u))
                    .collect(),
            ),
            StoreRequest::ExpireKontalk { before } => {
                self.codes.retain(|_, c| c.2 >= before);
                self.private_keys.retain(|_, p| p.3 >= before);
                StoreReply::Done(true)
            }
            StoreRequest::DirectoryChanges { after, limit } => StoreReply::DirectoryChanges {
                changes: self
                    .directory_log
                    .iter()
                    .filter(|c| c.seq > after)
                    .take(limit as usize)
                    .cloned()
                    .collect(),
                last: self.directory_log.last().map_or(0, |c| c.seq),
                epoch: self.directory_epoch.clone(),
            },
            StoreRequest::StoreDirectory {
                home,
                epoch,
                reset,
                changes,
            } => {
                if reset {
                    self.directory.retain(|(h, _)| *h != home);
                    self.directory_seen.insert(home.clone(), (0, epoch.clone()));
                }
                let seen = self.directory_seen.get(&home).map_or(0, |s| s.0);
                let mut last = seen;
                for c in changes.iter().filter(|c| c.seq > seen) {
                    let key = (home.clone(), c.username.clone());
                    if c.present {
                        self.directory.insert(key);
                    } else {
                        self.directory.remove(&key);
                    }
                    last = last.max(c.seq);
                }
                self.directory_seen.insert(home, (last, epoch));
                StoreReply::Done(true)
            }
            StoreRequest::LoadDirectory => StoreReply::Directory(crate::store::Directory {
                users: self.directory.iter().cloned().collect(),
                seen: self
                    .directory_seen
                    .iter()
                    .map(|(h, (s, e))| (h.clone(), *s, e.clone()))
                    .collect(),
                epoch: self.directory_epoch.clone(),
            }),
            StoreRequest::NetQueue {
                dest,
                stanza,
                limit,
            } => {
                if self.net_outbox.values().filter(|(d, _)| *d == dest).count() >= limit as usize {
                    return StoreReply::NetQueued(None);
                }
                self.net_seq += 1;
                self.net_outbox.insert(self.net_seq, (dest, stanza));
                StoreReply::NetQueued(Some(self.net_seq))
            }
            StoreRequest::NetOutbox { dest, after, limit } => StoreReply::NetOutbox(
                self.net_outbox
                    .range(after + 1..)
                    .filter(|(_, (d, _))| *d == dest)
                    .take(limit as usize)
                    .map(|(&seq, (_, s))| (seq, s.clone()))
                    .collect(),
            ),
            StoreRequest::S2sKeep { dest, stanza } => {
                // Above every one kept, as SQLite's key (a number may come
                // again once every one above it is gone).
                let seq = self.s2s_outbox.keys().next_back().map_or(1, |s| s + 1);
                self.s2s_outbox.insert(seq, (dest, stanza));
                StoreReply::S2sKept(seq)
            }
            StoreRequest::S2sForget { dest, after, upto } => {
                self.s2s_outbox
                    .retain(|&seq, (d, _)| !(*d == dest && seq > after && seq <= upto));
                StoreReply::Done(true)
            }
            StoreRequest::SetPushToken {
                username,
                provider,
                token,
            } => {
                self.push_tokens.insert((username, provider), token);
                StoreReply::Done(true)
            }
            StoreRequest::RemovePushToken {
                username,
                provider,
                only,
            } => {
                let key = (username, provider);
                let matches = self
                    .push_tokens
                    .get(&key)
                    .is_some_and(|t| only.as_ref().is_none_or(|o| o == t));
                StoreReply::Done(matches && self.push_tokens.remove(&key).is_some())
            }
            StoreRequest::LoadPushTokens { username } => {
                let mut tokens: Vec<(String, String)> = self
                    .push_tokens
                    .iter()
                    .filter(|((u, _), _)| *u == username)
                    .map(|((_, p), t)| (p.clone(), t.clone()))
                    .collect();
                tokens.sort();
                StoreReply::PushTokens(tokens)
            }
            StoreRequest::ReserveUpload { slot, quota, now } => {
                let mine = self.uploads.iter().filter(|s| s.username == slot.username);
                let over = crate::upload::over_quota(&slot, mine, quota, now);
                if over.is_none() {
                    self.uploads.push(slot);
                }
                StoreReply::UploadReserved(over)
            }
            StoreRequest::LoadS2s => StoreReply::S2sQueues(
                self.s2s_outbox
                    .iter()
                    .map(|(&seq, (d, s))| (d.clone(), seq, s.clone()))
                    .collect(),
            ),
            StoreRequest::NetAcked { dest, upto } => {
                self.net_outbox
                    .retain(|&seq, (d, _)| !(*d == dest && seq <= upto));
                StoreReply::Done(true)
            }
            StoreRequest::NetReceive {
                origin,
                epoch,
                seq,
                prev,
                stanza,
            } => {
                let last = self
                    .net_received
                    .get(&origin)
                    .filter(|(e, _)| *e == epoch)
                    .map_or(0, |(_, s)| *s);
                if seq <= last {
                    return StoreReply::NetReceived(crate::NetReceived::Repeat);
                }
                if prev.is_some_and(|p| p > last) {
                    return StoreReply::NetReceived(crate::NetReceived::Gap);
                }
                self.net_inbox_id += 1;
                self.net_inbox
                    .insert(self.net_inbox_id, (origin.clone(), stanza));
                self.net_received.insert(origin, (epoch, seq));
                StoreReply::NetReceived(crate::NetReceived::New(self.net_inbox_id))
            }
            StoreRequest::LoadNetInbox => StoreReply::NetInbox(
                self.net_inbox
                    .iter()
                    .map(|(&id, (o, s))| (id, o.clone(), s.clone()))
                    .collect(),
            ),
            StoreRequest::NetDelivered { ids } => {
                for id in ids {
                    self.net_inbox.remove(&id);
                }
                StoreReply::Done(true)
            }
            StoreRequest::Barrier => StoreReply::Done(true),
            StoreRequest::LoadLastActivity { username } => {
                StoreReply::LastActivity(self.last.get(&username).cloned())
            }
        }
    }
}

impl MemStore {
    /// A page of `username`'s archive, as the SQLite store answers it.
    fn query_archive(&self, username: &str, q: &ArchiveQuery) -> Option<ArchivePage> {
        let mine: Vec<&ArchiveEntry> = self
            .archive
            .iter()
            .filter(|(u, _)| u == username)
            .map(|(_, e)| e)
            .collect();
        let position = |id: &Option<String>| match id {
            None => Some(None),
            Some(id) => mine.iter().position(|e| e.id == *id).map(Some),
        };
        let (after, before) = (position(&q.after)?, position(&q.before)?);
        let matching: Vec<(usize, &ArchiveEntry)> = mine
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, e)| match &q.with {
                Some(w) if w.contains('/') => e.with_full == *w,
                Some(w) => e.with == *w,
                None => true,
            })
            .filter(|(_, e)| {
                q.start.is_none_or(|s| e.stamp >= s) && q.end.is_none_or(|t| e.stamp <= t)
            })
            .filter(|(_, e)| q.ids.is_empty() || q.ids.contains(&e.id))
            .collect();
        let count = matching.len() as u64;
        let range: Vec<&ArchiveEntry> = matching
            .into_iter()
            .filter(|(i, _)| after.is_none_or(|a| *i > a) && before.is_none_or(|b| *i < b))
            .map(|(_, e)| e)
            .collect();
        let max = q.max as usize;
        let (page, complete) = if q.from_end {
            let start = range.len().saturating_sub(max);
            (&range[start..], start == 0)
        } else {
            let end = range.len().min(max);
            (&range[..end], end == range.len())
        };
        Some(ArchivePage {
            messages: page
                .iter()
                .map(|e| ArchivedMessage {
                    id: e.id.clone(),
                    stamp: e.stamp,
                    stanza: e.stanza.clone(),
                })
                .collect(),
            complete,
            count,
        })
    }
}

const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBXjCCAQSgAwIBAgIUTbywKAPUU2zZhofGKO9xnUXXeyQwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWcmNnZW4gc2VsZiBzaWduZWQgY2VydDAgFw03NTAxMDEwMDAw
MDBaGA80MDk2MDEwMTAwMDAwMFowITEfMB0GA1UEAwwWcmNnZW4gc2VsZiBzaWdu
ZWQgY2VydDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHQveYD8JxjXO9qDgDZe
6tOT+g5MpmIrQozjv7vHF82+yk8hQKhjv/pCROAbgze0sAy7W3eBFFHZKoAFSGT3
n+ejGDAWMBQGA1UdEQQNMAuCCWxvY2FsaG9zdDAKBggqhkjOPQQDAgNIADBFAiEA
iyWKztYBFUrlre0GpLBg3wRwkmc8bZWuSBPG5vNm4vUCIBbQJLsjy/MxZ0wL11Ue
obO8EIvGzpAo+bKOSCpUSIT1
-----END CERTIFICATE-----";

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLP9rAITsgl/Ayvyi
LUwHXJV1fRWDiWEID7WC8aO/COShRANCAAR0L3mA/CcY1zvag4A2XurTk/oOTKZi
K0KM47+7xxfNvspPIUCoY7/6QkTgG4M3tLAMu1t3gRRR2SqABUhk95/n
-----END PRIVATE KEY-----";

/// A Kontalk server key for tests and fuzzing, made once per process (RSA
/// key generation is slow).
pub fn test_server_key() -> &'static crate::kontalk::keys::ServerKey {
    static KEY: std::sync::OnceLock<crate::kontalk::keys::ServerKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        crate::kontalk::keys::ServerKey::generate(
            [3; 32],
            "test <kontalk@localhost>",
            1_700_000_000,
        )
        .expect("a server key")
    })
}

/// A network in which this server is `host` and `peer` (at 192.0.2.1,
/// its certificate's SHA-256 `fingerprint`) the one other server.
pub fn test_network(host: &str, peer: &str, fingerprint: [u8; 32]) -> crate::NetConfig {
    crate::NetConfig {
        host: host.into(),
        peers: vec![crate::NetPeer {
            host: peer.into(),
            address: "192.0.2.1:5270".into(),
            clients: peer.into(),
            fingerprint,
            enabled: true,
        }],
    }
}

/// The DER of [`test_tls`]'s certificate.
pub fn test_certificate_der() -> Vec<u8> {
    CertificateDer::from_pem_slice(CERT.as_bytes())
        .expect("valid PEM")
        .as_ref()
        .to_vec()
}

/// A fixed self-signed certificate for `localhost` (tests and fuzzing only).
pub fn test_tls() -> TlsConfigs {
    let identity = TlsIdentity {
        cert_chain: vec![CertificateDer::from_pem_slice(CERT.as_bytes()).expect("valid PEM")],
        key: PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("valid PEM"),
    };
    TlsConfigs::new(&identity).expect("valid identity")
}

/// A client logs in as `user` (password `pw`) on a plaintext stream to
/// `domain` with SCRAM-SHA-1 and binds `resource`; `exchange` sends bytes
/// on the connection and returns everything it received so far.
#[cfg(test)]
pub(crate) fn scram_login(
    domain: &str,
    user: &str,
    resource: &str,
    mut exchange: impl FnMut(&str) -> String,
) {
    use crate::sasl::scram::{ScramClient, ScramHash};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    );
    let mut scram = ScramClient::new(ScramHash::Sha1, user, "pw", "nonce", None);
    let auth = format!(
        "{header}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
        B64.encode(scram.client_first())
    );
    let text = exchange(&auth);
    let start = text
        .find("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
        .expect(&text)
        + 52;
    let end = start + text[start..].find("</challenge>").unwrap();
    let fin = scram
        .client_final(&B64.decode(&text[start..end]).unwrap())
        .unwrap();
    let response = format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(fin)
    );
    let text = exchange(&response);
    assert!(text.contains("<success"), "{text}");
    let text = exchange(&format!(
        "{header}<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{resource}</resource></bind></iq>"
    ));
    assert!(text.contains("<jid>"), "{text}");
}

/// Picks store requests (see [`Fixture::fail_next`]).
type RequestMatch = dyn Fn(&StoreRequest) -> bool;

/// A client stream header for `localhost`.
pub const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// The test client's side of one connection opened with
/// [`Fixture::connect_client`]: it parses what it receives and speaks TLS
/// on the direct-TLS listener and after `<proceed/>`.
pub struct Client {
    /// Its TLS session, once it has one.
    pub tls: Option<rustls::ClientConnection>,
    /// Parses the (plaintext) stream it receives.
    pub parser: StreamParser,
    /// What the parser made of it, not taken yet.
    pub events: VecDeque<StreamEvent>,
    /// The core closed the connection, or the client's TLS session failed.
    pub closed: bool,
    /// It connected to [`Listener::DirectTls`].
    pub direct: bool,
}

/// A server with an in-memory store and simulated time, driven by test
/// clients: raw ones ([`Fixture::connect`], bytes in and out, as the fuzz
/// targets and benches want them) and XMPP ones
/// ([`Fixture::connect_client`], with TLS and a stream parser, as the
/// core's tests want them).
pub struct Fixture {
    /// The core under test.
    pub server: Server,
    /// The store behind it.
    pub store: MemStore,
    /// Simulated time.
    pub now: Instant,
    /// Everything each connection received, in plaintext (decrypted for a
    /// [`Client`] speaking TLS).
    pub received: HashMap<ConnId, Vec<u8>>,
    /// Connections the core closed.
    pub closed: Vec<ConnId>,
    /// Connections the core said may be read again ([`Event::Resume`]).
    pub resumed: Vec<ConnId>,
    /// The address new connections come from (127.0.0.1 unless changed).
    pub peer: core::net::IpAddr,
    /// When set, store requests fail.
    pub store_fails: bool,
    /// Failures armed with [`Fixture::fail_next`], each waiting for the
    /// first request it matches.
    armed_failures: Vec<Box<RequestMatch>>,
    /// The clients opened with [`Fixture::connect_client`].
    pub clients: HashMap<ConnId, Client>,
    /// Requests held back by [`Fixture::hold_store`].
    held: Option<Vec<(StoreToken, StoreRequest)>>,
    /// Verification codes the core asked to send (each answered as sent).
    pub sent_codes: Vec<crate::kontalk::register::CodeMessage>,
    /// When set, sending a code fails with this (a gateway that refuses).
    pub code_failure: Option<String>,
    /// Pushes the core asked to send, unanswered (answer them with
    /// `server.handle_push_done`).
    pub pushes: Vec<crate::kontalk::push::PushJob>,
    /// The clients' TLS configuration, made when the first one needs it.
    client_config: Option<Arc<rustls::ClientConfig>>,
    /// Reused for each transmit.
    buf: Vec<u8>,
}

impl Fixture {
    /// A fresh server for `localhost` with accounts `user0`..`user3` (password `pw`).
    pub fn new(tls: &TlsConfigs) -> Fixture {
        let config = Config {
            require_tls: false,
            allow_registration: true,
            offline_quota: 5,
            limits: Limits {
                max_stanza_size: 20_000,
                ..Limits::default()
            },
            ..Config::default()
        };
        let mut f = Fixture::with_config(config, tls, [1; 32]);
        for i in 0..4 {
            f.store.add_account(&format!("user{i}"), "pw");
        }
        f
    }

    /// A fresh server with `config` and `seed`, an empty store and the wall
    /// clock at 2027-01-15T08:00:00Z.
    pub fn with_config(config: Config, tls: &TlsConfigs, seed: [u8; 32]) -> Fixture {
        let now = Instant::now();
        let mut server = Server::new(config, tls.clone(), seed).expect("valid config");
        server.handle_wall_clock(now, 1_800_000_000);
        Fixture {
            server,
            store: MemStore::default(),
            now,
            received: HashMap::new(),
            closed: Vec::new(),
            resumed: Vec::new(),
            peer: core::net::IpAddr::from([127, 0, 0, 1]),
            store_fails: false,
            armed_failures: Vec::new(),
            clients: HashMap::new(),
            held: None,
            sent_codes: Vec::new(),
            pushes: Vec::new(),
            code_failure: None,
            client_config: None,
            buf: Vec::new(),
        }
    }

    /// Opens a raw connection on the STARTTLS listener: what [`Fixture::send`]
    /// gets goes to the core as it is, what the core sends is only recorded
    /// in [`Fixture::received`].
    pub fn connect(&mut self) -> ConnId {
        let id = self.accept(Listener::Starttls);
        self.pump();
        id
    }

    /// Opens a connection from an XMPP test [`Client`] on `listener`.
    pub fn connect_client(&mut self, listener: Listener) -> ConnId {
        let id = self.accept(listener);
        let direct = listener == Listener::DirectTls;
        let tls = direct.then(|| tls_client(&mut self.client_config));
        self.clients.insert(
            id,
            Client {
                tls,
                parser: StreamParser::new(&Limits::default()),
                events: VecDeque::new(),
                closed: false,
                direct,
            },
        );
        self.pump();
        id
    }

    fn accept(&mut self, listener: Listener) -> ConnId {
        let id = self.server.handle_accept(self.now, listener, self.peer);
        self.received.insert(id, Vec::new());
        id
    }

    /// The TLS configuration of the test clients: it trusts the certificate
    /// of [`test_tls`] and offers ALPN `xmpp-client`.
    pub fn tls_client_config(&mut self) -> Arc<rustls::ClientConfig> {
        client_config(&mut self.client_config).clone()
    }

    /// Feeds bytes from a client (through its TLS session if it has one)
    /// and runs the core until it is idle. Nothing happens once the core
    /// closed the connection.
    pub fn send(&mut self, id: ConnId, data: impl AsRef<[u8]>) {
        if self.closed.contains(&id) {
            return;
        }
        let data = data.as_ref();
        match self.clients.get_mut(&id).and_then(|c| c.tls.as_mut()) {
            Some(tls) => tls.writer().write_all(data).expect("TLS buffer"),
            None => self.server.handle_data(self.now, id, data),
        }
        self.pump();
    }

    /// Lets time pass.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.pump();
    }

    /// Moves everything between the core, the store and the clients until
    /// nothing moves: drains the core's events, answers (or holds) store
    /// requests, delivers output and sends what the clients' TLS sessions
    /// have to say.
    pub fn pump(&mut self) {
        loop {
            while let Some(ev) = self.server.poll_event() {
                match ev {
                    Event::Transmit(id) => {
                        let mut buf = std::mem::take(&mut self.buf);
                        buf.clear();
                        self.server.poll_transmit(id, &mut buf);
                        assert!(!self.closed.contains(&id), "output after close");
                        self.deliver(id, &buf);
                        self.buf = buf;
                    }
                    Event::Resume(id) => self.resumed.push(id),
                    Event::Close(id) => {
                        self.closed.push(id);
                        if let Some(c) = self.clients.get_mut(&id) {
                            c.closed = true;
                        }
                    }
                    // No name server here: the question goes unanswered.
                    Event::Resolve { .. } => {}
                    // No Net links in these tests: nothing to connect to.
                    Event::Connect { conn, .. } => {
                        self.server
                            .handle_connect_failed(self.now, conn, "no network here")
                    }
                    Event::SendCode(msg) => {
                        let token = msg.token;
                        self.sent_codes.push(msg);
                        let sent = self.code_failure.clone().map_or(Ok(()), Err);
                        self.server.handle_code_sent(token, sent);
                    }
                    Event::Push(job) => self.pushes.push(job),
                    Event::Store(token, req) => {
                        if let Some(held) = self.held.as_mut() {
                            held.push((token, req));
                            continue;
                        }
                        let reply = self.reply(&req);
                        self.server.handle_store_reply(self.now, token, reply);
                    }
                }
            }
            let mut progress = false;
            for (&id, c) in self.clients.iter_mut() {
                if c.closed {
                    continue;
                }
                if let Some(tls) = c.tls.as_mut() {
                    let mut wire = Vec::new();
                    while tls.wants_write() {
                        tls.write_tls(&mut wire).expect("TLS output");
                    }
                    if !wire.is_empty() {
                        progress = true;
                        self.server.handle_data(self.now, id, &wire);
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Records what the core sent to `id` and, for a [`Client`], decrypts
    /// and parses it (switching to TLS after `<proceed/>`).
    fn deliver(&mut self, id: ConnId, bytes: &[u8]) {
        let received = self.received.entry(id).or_default();
        let Some(c) = self.clients.get_mut(&id) else {
            received.extend_from_slice(bytes);
            return;
        };
        let mut input: Vec<u8> = bytes.to_vec();
        loop {
            let plain = match c.tls.as_mut() {
                Some(tls) => {
                    let mut plain = Vec::new();
                    let mut rd = &input[..];
                    while !rd.is_empty() {
                        tls.read_tls(&mut rd).expect("TLS input");
                        if tls.process_new_packets().is_err() {
                            c.closed = true;
                            return;
                        }
                        // Read as it comes: rustls holds little plaintext.
                        let _ = tls.reader().read_to_end(&mut plain);
                    }
                    plain
                }
                None => std::mem::take(&mut input),
            };
            received.extend_from_slice(&plain);
            let mut p = &plain[..];
            let mut switched = false;
            while let Ok(Some(ev)) = c.parser.next(&mut p) {
                let proceed = matches!(&ev, StreamEvent::Stanza(e) if e.is(ns::TLS, "proceed"));
                c.events.push_back(ev);
                if proceed {
                    // What follows <proceed/> is TLS.
                    c.tls = Some(tls_client(&mut self.client_config));
                    c.parser = StreamParser::new(&Limits::default());
                    input = p.to_vec();
                    switched = true;
                    break;
                }
            }
            if !switched || input.is_empty() {
                return;
            }
        }
    }

    /// Whether `id` is closed: by the core, or by its [`Client`] after a
    /// TLS failure.
    pub fn is_closed(&self, id: ConnId) -> bool {
        self.closed.contains(&id) || self.clients.get(&id).is_some_and(|c| c.closed)
    }

    /// Makes the next store request that `matches` fail (answered with
    /// [`StoreReply::Failed`]), once: the request is not carried out, and
    /// the requests after it are answered as usual. Several may be armed;
    /// each waits for its own match.
    pub fn fail_next(&mut self, matches: impl Fn(&StoreRequest) -> bool + 'static) {
        self.armed_failures.push(Box::new(matches));
    }

    /// Disarms the failures of [`Fixture::fail_next`] that did not happen.
    pub fn clear_failures(&mut self) {
        self.armed_failures.clear();
    }

    /// How the fixture answers `req` (as [`Fixture::pump`] does): a failure
    /// when [`Fixture::store_fails`] is set or an armed
    /// [`Fixture::fail_next`] matches it (which disarms that one), otherwise
    /// what the [`MemStore`] makes of it. For answering the requests
    /// [`Fixture::release_store`] hands back.
    pub fn reply(&mut self, req: &StoreRequest) -> StoreReply {
        if self.store_fails {
            return StoreReply::Failed("injected".into());
        }
        if let Some(i) = self.armed_failures.iter().position(|m| m(req)) {
            drop(self.armed_failures.remove(i));
            return StoreReply::Failed("injected".into());
        }
        self.store.answer(req)
    }

    /// Holds store requests back, unanswered, until [`Fixture::release_store`].
    pub fn hold_store(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Stops holding store requests and hands back those held, still
    /// unanswered (answer them with `server.handle_store_reply`, then
    /// [`Fixture::pump`]).
    pub fn release_store(&mut self) -> Vec<(StoreToken, StoreRequest)> {
        self.held.take().unwrap_or_default()
    }

    fn client(&mut self, id: ConnId) -> &mut Client {
        self.clients
            .get_mut(&id)
            .expect("a connection from connect_client")
    }

    /// The next thing `id`'s client parsed.
    pub fn next(&mut self, id: ConnId) -> StreamEvent {
        self.client(id)
            .events
            .pop_front()
            .expect("an event from the server")
    }

    /// The next thing `id`'s client parsed, which must be a stanza.
    pub fn stanza(&mut self, id: ConnId) -> Element {
        match self.next(id) {
            StreamEvent::Stanza(e) => e,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    /// Asserts that `id`'s client has nothing left to read.
    pub fn no_more(&mut self, id: ConnId) {
        let c = self.client(id);
        assert!(c.events.is_empty(), "unexpected: {:?}", c.events);
    }

    /// Everything `id`'s client received and did not read yet, as stanzas.
    pub fn stanzas(&mut self, id: ConnId) -> Vec<Element> {
        self.client(id)
            .events
            .drain(..)
            .filter_map(|e| match e {
                StreamEvent::Stanza(el) => Some(el),
                _ => None,
            })
            .collect()
    }

    /// Forgets what `id`'s client received and did not read yet.
    pub fn drain(&mut self, id: ConnId) {
        self.client(id).events.clear();
    }

    /// Opens (or restarts) the stream; returns the features.
    pub fn open(&mut self, id: ConnId) -> Element {
        self.client(id).parser = StreamParser::new(&Limits::default());
        self.send(id, HEADER);
        assert!(matches!(self.next(id), StreamEvent::Header(_)));
        let f = self.stanza(id);
        assert!(f.is(ns::STREAM, "features"), "{f:?}");
        f
    }

    /// Expects a stream error with `cond` and a closed connection.
    pub fn expect_stream_error(&mut self, id: ConnId, cond: StreamErrorCondition) {
        loop {
            match self.next(id) {
                StreamEvent::Header(_) => continue,
                StreamEvent::Stanza(e) if e.is(ns::STREAM, "error") => {
                    assert!(
                        e.child(crate::error::NS_STREAMS, cond.as_str()).is_some(),
                        "expected {cond:?}, got {e:?}"
                    );
                    break;
                }
                other => panic!("expected stream error {cond:?}, got {other:?}"),
            }
        }
        assert!(matches!(self.next(id), StreamEvent::End));
        assert!(
            self.is_closed(id),
            "connection left open after a stream error"
        );
    }

    /// Opens the stream, STARTTLS, opens it again; returns the features.
    pub fn starttls(&mut self, id: ConnId) -> Element {
        self.open(id);
        self.send(id, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(self.stanza(id).is(ns::TLS, "proceed"));
        self.open(id)
    }

    /// The `tls-exporter` channel binding of `id`'s TLS session.
    pub fn exporter(&self, id: ConnId) -> Vec<u8> {
        let mut out = vec![0u8; 32];
        self.clients[&id]
            .tls
            .as_ref()
            .expect("a TLS session")
            .export_keying_material(&mut out, TLS_EXPORTER_LABEL, None)
            .expect("exporter");
        out
    }

    /// A SCRAM exchange; returns the final SASL element.
    pub fn scram(&mut self, id: ConnId, mech: Mechanism, user: &str, password: &str) -> Element {
        let binding = mech.is_plus().then(|| self.exporter(id));
        let mut client = ScramClient::new(
            mech.scram_hash().expect("a SCRAM mechanism"),
            user,
            password,
            "clientnonce123",
            binding,
        );
        if let Err(answer) = self.scram_exchange(id, mech.name(), &mut client) {
            return answer;
        }
        let result = self.stanza(id);
        if result.is(ns::SASL, "success") {
            client
                .verify_server_final(&B64.decode(result.text()).expect("base64"))
                .expect("server signature");
        }
        result
    }

    /// Sends `<auth/>` with `client`'s first message and, if the server
    /// answers with a challenge, the `<response/>`; otherwise returns the
    /// server's answer.
    pub fn scram_exchange(
        &mut self,
        id: ConnId,
        mechanism: &str,
        client: &mut ScramClient,
    ) -> Result<(), Element> {
        self.send(
            id,
            format!(
                "<auth xmlns='{}' mechanism='{mechanism}'>{}</auth>",
                ns::SASL,
                B64.encode(client.client_first())
            ),
        );
        let challenge = self.stanza(id);
        if !challenge.is(ns::SASL, "challenge") {
            return Err(challenge);
        }
        let server_first = B64.decode(challenge.text()).expect("base64");
        let fin = client
            .client_final(&server_first)
            .expect("a valid server-first message");
        self.send(
            id,
            format!(
                "<response xmlns='{}'>{}</response>",
                ns::SASL,
                B64.encode(fin)
            ),
        );
        Ok(())
    }

    /// Restarts the stream and binds `resource` (or one the server picks);
    /// returns the full JID.
    pub fn bind(&mut self, id: ConnId, resource: Option<&str>) -> String {
        let f = self.open(id);
        assert!(f.child(ns::BIND, "bind").is_some());
        let r = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(
            id,
            format!(
                "<iq type='set' id='b1'><bind xmlns='{}'>{r}</bind></iq>",
                ns::BIND
            ),
        );
        let res = self.stanza(id);
        assert_eq!(res.attr("type"), Some("result"), "{res:?}");
        res.child(ns::BIND, "bind")
            .and_then(|b| b.child(ns::BIND, "jid"))
            .expect("a bound JID")
            .text()
    }

    /// A raw client's plaintext SCRAM-SHA-1 login (password `pw`) and bind;
    /// returns the connection if it worked.
    pub fn login(&mut self, user: &str, resource: &str) -> Option<ConnId> {
        let id = self.authenticate(user)?;
        let bind = format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>");
        self.send(id, bind.as_bytes());
        (!self.closed.contains(&id)).then_some(id)
    }

    /// A raw client's plaintext SCRAM-SHA-1 login (password `pw`) and the
    /// stream restart after it, without binding (say, to resume a session).
    pub fn authenticate(&mut self, user: &str) -> Option<ConnId> {
        let id = self.connect();
        self.send(id, HEADER);
        let mut client = ScramClient::new(ScramHash::Sha1, user, "pw", "fuzznonce", None);
        let auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(client.client_first())
        );
        self.send(id, auth.as_bytes());
        let text = String::from_utf8_lossy(&self.received[&id]).into_owned();
        let start = text.find("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")? + 52;
        let end = start + text[start..].find("</challenge>")?;
        let server_first = B64.decode(&text[start..end]).ok()?;
        let fin = client.client_final(&server_first).ok()?;
        let resp = format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin)
        );
        self.send(id, resp.as_bytes());
        self.send(id, HEADER);
        (!self.closed.contains(&id)).then_some(id)
    }

    /// A [`Client`]'s STARTTLS, SCRAM-SHA-256-PLUS login, bind and initial
    /// presence, its echo read.
    pub fn login_tls(&mut self, user: &str, password: &str, resource: &str) -> ConnId {
        let id = self.connect_client(Listener::Starttls);
        self.starttls(id);
        let r = self.scram(id, Mechanism::ScramSha256Plus, user, password);
        assert!(r.is(ns::SASL, "success"), "{r:?}");
        let full = self.bind(id, Some(resource));
        self.send(id, "<presence/>");
        // RFC 6121 4.2.2: the resource's own presence comes back first.
        let echo = self.stanza(id);
        assert!(echo.is(ns::CLIENT, "presence"), "{echo:?}");
        assert_eq!(echo.attr("from"), Some(full.as_str()), "{echo:?}");
        id
    }

    /// A [`Client`]'s plaintext SCRAM-SHA-1 login and bind (the server must
    /// not require TLS), without presence.
    pub fn session(&mut self, user: &str, password: &str, resource: &str) -> ConnId {
        let id = self.connect_client(Listener::Starttls);
        self.open(id);
        let r = self.scram(id, Mechanism::ScramSha1, user, password);
        assert!(r.is(ns::SASL, "success"), "{r:?}");
        self.bind(id, Some(resource));
        id
    }

    /// `user`'s roster as stored.
    pub fn roster_of(&self, user: &str) -> Vec<RosterItem> {
        self.store
            .data
            .get(user)
            .map(|d| d.roster.clone())
            .unwrap_or_default()
    }

    /// Everything `id` received, checked to be well-formed XML: each stream
    /// (the server restarts it after SASL) up to a switch to TLS.
    pub fn check_output(&self, id: ConnId) {
        const DECL: &[u8] = b"<?xml version='1.0'?>";
        const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
        let bytes = &self.received[&id];
        let mut starts: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i..].starts_with(DECL))
            .collect();
        starts.push(bytes.len());
        for w in starts.windows(2) {
            let mut stream = &bytes[w[0]..w[1]];
            if let Some(p) = stream.windows(PROCEED.len()).position(|x| x == PROCEED) {
                stream = &stream[..p + PROCEED.len()];
            }
            let limits = Limits {
                max_stanza_size: 1 << 20,
                max_depth: 1000,
                max_attributes: 1000,
                ..Limits::default()
            };
            let mut p = StreamParser::new(&limits);
            let mut input = stream;
            loop {
                match p.next(&mut input) {
                    Ok(Some(StreamEvent::End)) | Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(e) => panic!(
                        "the server wrote malformed XML ({e:?}): {}",
                        String::from_utf8_lossy(stream)
                    ),
                }
            }
        }
    }
}

/// The test clients' TLS configuration, made on first use.
fn client_config(config: &mut Option<Arc<rustls::ClientConfig>>) -> &Arc<rustls::ClientConfig> {
    config.get_or_insert_with(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CERT.as_bytes()).expect("valid PEM"))
            .expect("a valid root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
        Arc::new(config)
    })
}

/// A new client TLS session for `localhost`.
fn tls_client(config: &mut Option<Arc<rustls::ClientConfig>>) -> rustls::ClientConnection {
    let name = ServerName::try_from("localhost").expect("a valid name");
    rustls::ClientConnection::new(client_config(config).clone(), name).expect("a TLS client")
}

/// The first stanza of `got` with `id`, and its error condition if it is one.
pub fn answer<'a>(got: &'a [Element], id: &str) -> (&'a Element, Option<String>) {
    let e = got
        .iter()
        .find(|e| e.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no answer {id}: {got:?}"));
    let condition = e
        .child(ns::CLIENT, "error")
        .and_then(|err| err.elements().find(|c| c.ns == ns::STANZAS))
        .map(|c| c.name.clone());
    (e, condition)
}
