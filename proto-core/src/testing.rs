//! Test support shared by the core's tests, the fuzz targets and benches:
//! an in-memory store that answers every [`StoreRequest`] like the SQLite
//! store does.

use std::collections::HashMap;

use crate::sasl::Credentials;
use crate::store::{OfflineMessage, OfflineStored, StoreReply, StoreRequest, UserData};

/// An in-memory store with the semantics of the SQLite one.
#[derive(Debug, Default, Clone)]
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
    /// Last activity.
    pub last: HashMap<String, (u64, String)>,
}

impl MemStore {
    /// Adds an account (with few PBKDF2 iterations: tests log in a lot).
    pub fn add_account(&mut self, user: &str, password: &str) {
        self.accounts.insert(
            user.to_owned(),
            Credentials::derive(password, user.as_bytes(), 16),
        );
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
                    v.insert(credentials);
                    StoreReply::Created(true)
                }
            },
            StoreRequest::SetCredentials {
                username,
                credentials,
            } => StoreReply::Done(self.accounts.insert(username, credentials).is_some()),
            StoreRequest::DeleteAccount { username } => {
                data.remove(&username);
                self.offline.retain(|(u, _)| *u != username);
                StoreReply::Done(self.accounts.remove(&username).is_some())
            }
            StoreRequest::LoadUser { username } => StoreReply::User(
                self.accounts
                    .contains_key(&username)
                    .then(|| data.get(&username).cloned().unwrap_or_default()),
            ),
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
            } => {
                if !self.accounts.contains_key(&username) {
                    return StoreReply::Offline(OfflineStored::NoAccount);
                }
                if self.offline.iter().filter(|(u, _)| *u == username).count() >= quota as usize {
                    return StoreReply::Offline(OfflineStored::QuotaFull);
                }
                self.next_offline += 1;
                self.offline.push((
                    username,
                    OfflineMessage {
                        id: self.next_offline,
                        stanza,
                        stamp,
                    },
                ));
                StoreReply::Offline(OfflineStored::Stored)
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
            StoreRequest::LoadLastActivity { username } => {
                StoreReply::LastActivity(self.last.get(&username).cloned())
            }
        }
    }
}
