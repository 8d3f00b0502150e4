//! Test support shared by the core's tests, the fuzz targets and benches:
//! an in-memory store that answers every [`StoreRequest`] like the SQLite
//! store does, a fixed test certificate, and a [`Fixture`] that drives a
//! server with plaintext clients and simulated time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::sasl::scram::{ScramClient, ScramHash};
use crate::sasl::Credentials;
use crate::store::{OfflineMessage, OfflineStored, StoreReply, StoreRequest, UserData};
use crate::xml::{StreamEvent, StreamParser};
use crate::{Config, ConnId, Event, Limits, Listener, Server, TlsConfigs, TlsIdentity};

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

/// A fixed self-signed certificate for `localhost` (tests and fuzzing only).
pub fn test_tls() -> TlsConfigs {
    let identity = TlsIdentity {
        cert_chain: vec![CertificateDer::from_pem_slice(CERT.as_bytes()).expect("valid PEM")],
        key: PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("valid PEM"),
    };
    TlsConfigs::new(&identity).expect("valid identity")
}

/// A client stream header for `localhost`.
pub const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// A server with plaintext streams, an in-memory store and simulated time,
/// plus the raw bytes each connection received.
pub struct Fixture {
    /// The core under test.
    pub server: Server,
    /// The store behind it.
    pub store: MemStore,
    /// Simulated time.
    pub now: Instant,
    /// Everything each connection was sent.
    pub received: HashMap<ConnId, Vec<u8>>,
    /// Connections the core closed.
    pub closed: Vec<ConnId>,
    /// When set, store requests fail.
    pub store_fails: bool,
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
        let mut store = MemStore::default();
        for i in 0..4 {
            store.add_account(&format!("user{i}"), "pw");
        }
        let now = Instant::now();
        let mut server = Server::new(config, tls.clone(), [1; 32]).expect("valid config");
        server.handle_wall_clock(now, 1_800_000_000);
        Fixture {
            server,
            store,
            now,
            received: HashMap::new(),
            closed: Vec::new(),
            store_fails: false,
        }
    }

    /// Opens a connection.
    pub fn connect(&mut self) -> ConnId {
        let id = self.server.handle_accept(
            self.now,
            Listener::Starttls,
            core::net::IpAddr::from([127, 0, 0, 1]),
        );
        self.received.insert(id, Vec::new());
        self.pump();
        id
    }

    /// Feeds bytes from a client and runs the core until it is idle.
    pub fn send(&mut self, id: ConnId, data: &[u8]) {
        if !self.closed.contains(&id) {
            self.server.handle_data(self.now, id, data);
            self.pump();
        }
    }

    /// Lets time pass.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.pump();
    }

    /// Drains the core's events, answering store requests.
    pub fn pump(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            match ev {
                Event::Transmit(id) => {
                    let mut buf = Vec::new();
                    self.server.poll_transmit(id, &mut buf);
                    assert!(!self.closed.contains(&id), "output after close");
                    self.received.entry(id).or_default().extend_from_slice(&buf);
                }
                Event::Close(id) => self.closed.push(id),
                Event::Store(token, req) => {
                    let reply = if self.store_fails {
                        crate::StoreReply::Failed("injected".into())
                    } else {
                        self.store.answer(&req)
                    };
                    self.server.handle_store_reply(self.now, token, reply);
                }
            }
        }
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

    /// Plaintext SCRAM-SHA-1 login and bind; returns the connection if it worked.
    pub fn login(&mut self, user: &str, resource: &str) -> Option<ConnId> {
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
        let bind = format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>");
        self.send(id, bind.as_bytes());
        (!self.closed.contains(&id)).then_some(id)
    }
}
