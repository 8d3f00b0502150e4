//! SASL on a client stream (RFC 6120 section 6): the exchange of the
//! mechanisms in [`crate::sasl`], failures counted and throttled per
//! address ([`crate::guard`]), and the stream restart on success.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::Rng;

use crate::effects::Pending;
use crate::error::{SaslCondition as SC, StreamErrorCondition as XE};
use crate::guard::{Counted, Lockout};
use crate::ns;
use crate::sasl::scram::ServerBinding;
use crate::sasl::{self, Mechanism, ScramServer, TLS_EXPORTER_LABEL};
use crate::server::{ConnId, Server};
use crate::store::{StoreReply, StoreRequest};
use crate::timer::TimerKind;
use crate::xml::Element;

/// A SASL exchange in progress.
#[derive(Debug)]
pub(crate) enum Sasl {
    /// `<auth/>` without initial response: waiting for `<response/>`.
    AwaitInitial(Mechanism),
    /// SCRAM: waiting for the account's keys from the store.
    ScramKeys(ScramServer, String),
    /// SCRAM: challenge sent, waiting for the client's final message.
    ScramFinal(ScramServer, String),
    /// PLAIN: waiting for the account's keys from the store.
    PlainKeys { username: String, password: String },
    /// EXTERNAL: the certificate's key checked, waiting for the key the
    /// account logs in with.
    ExternalKey {
        username: String,
        key: crate::store::StoredKey,
        created: u64,
    },
    /// EXTERNAL: a newer key of the account being stored.
    ExternalNewKey {
        username: String,
        key: crate::store::StoredKey,
    },
}

fn scram_condition(e: sasl::ScramError) -> SC {
    match e {
        sasl::ScramError::Malformed | sasl::ScramError::UnexpectedMessage => SC::MalformedRequest,
        sasl::ScramError::InvalidAuthzid => SC::InvalidAuthzid,
        sasl::ScramError::NotAuthorized | sasl::ScramError::ChannelBinding => SC::NotAuthorized,
    }
}

fn failure(condition: SC, text: Option<&str>) -> Element {
    let mut failure =
        Element::new(ns::SASL, "failure").with_child(Element::new(ns::SASL, condition.as_str()));
    if let Some(text) = text {
        failure = failure.with_child(Element::new(ns::SASL, "text").with_text(text));
    }
    failure
}

impl Server {
    pub(super) fn on_auth(&mut self, id: ConnId, el: &Element) {
        if self.refused_for_lockout(id, None) {
            return;
        }
        if self.conns[&id].auth.sasl.is_some() {
            self.sasl_failure(
                id,
                SC::MalformedRequest,
                Some("an exchange is already running"),
            );
            return;
        }
        let name = el.attr("mechanism").unwrap_or_default();
        let Some(mech) = Mechanism::from_name(name) else {
            self.sasl_failure(id, SC::InvalidMechanism, None);
            return;
        };
        if !self.offered_mechanisms(id).contains(&mech) {
            let cond = if self.is_secure(id) {
                SC::InvalidMechanism
            } else {
                SC::EncryptionRequired
            };
            self.sasl_failure(id, cond, None);
            return;
        }
        let text = el.text();
        let text = text.trim();
        if text.is_empty() {
            // No initial response: ask for it with an empty challenge.
            self.conns.get_mut(&id).expect("present").auth.sasl =
                Some(Box::new(Sasl::AwaitInitial(mech)));
            self.send_raw(id, b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
            return;
        }
        let data = if text == "=" {
            Ok(Vec::new())
        } else {
            B64.decode(text)
        };
        match data {
            Ok(data) => self.sasl_start(id, mech, &data),
            Err(_) => self.sasl_failure(id, SC::IncorrectEncoding, None),
        }
    }

    fn sasl_start(&mut self, id: ConnId, mech: Mechanism, data: &[u8]) {
        if mech == Mechanism::External {
            // The authorization identity is the certificate's (Tigase too
            // ignores what the client sends there; Smack sends none).
            return self.external_start(id);
        }
        match mech.scram_hash() {
            Some(hash) => {
                let binding = match self.conns[&id].stream.tls_exporter(TLS_EXPORTER_LABEL) {
                    Some(data) => ServerBinding::Available {
                        data,
                        plus: mech.is_plus(),
                    },
                    None => ServerBinding::Unsupported,
                };
                let mut scram = ScramServer::new(hash, binding);
                let username = match scram.client_first(data) {
                    Ok(u) => u,
                    Err(sasl::ScramError::ChannelBinding) => {
                        // A binding type we do not support (say tls-unique) is
                        // no password guess: the client may retry without it.
                        self.sasl_refuse(
                            id,
                            SC::NotAuthorized,
                            Some("only tls-exporter channel binding is supported"),
                        );
                        return;
                    }
                    Err(e) => {
                        self.sasl_failure(id, scram_condition(e), None);
                        return;
                    }
                };
                let Some(username) = sasl::normalize_username(&username) else {
                    self.sasl_failure(id, SC::NotAuthorized, None);
                    return;
                };
                let auth = &mut self.conns.get_mut(&id).expect("present").auth;
                auth.attempt = Some(username.clone());
                auth.sasl = Some(Box::new(Sasl::ScramKeys(scram, username.clone())));
                self.request_credentials(id, username);
            }
            None => {
                let Some((authzid, authcid, password)) = sasl::parse_plain(data) else {
                    self.sasl_failure(id, SC::MalformedRequest, None);
                    return;
                };
                let Some(username) = sasl::normalize_username(authcid) else {
                    self.sasl_failure(id, SC::NotAuthorized, None);
                    return;
                };
                self.conns.get_mut(&id).expect("present").auth.attempt = Some(username.clone());
                if !authzid.is_empty()
                    && authzid != format!("{username}@{}", self.config.domain)
                    && authzid != username
                {
                    self.sasl_failure(id, SC::InvalidAuthzid, None);
                    return;
                }
                let Some(password) = sasl::prepare_password(password) else {
                    self.sasl_failure(id, SC::NotAuthorized, None);
                    return;
                };
                self.conns.get_mut(&id).expect("present").auth.sasl =
                    Some(Box::new(Sasl::PlainKeys {
                        username: username.clone(),
                        password,
                    }));
                self.request_credentials(id, username);
            }
        }
    }

    /// SASL EXTERNAL with a Kontalk bridge certificate (KONTALK.md section
    /// 3): its key is the OpenPGP key it carries, that key is valid and one
    /// of its user ids, `<user>@<domain>`, is certified by this server; then
    /// the store says whether it is the key the account logs in with.
    fn external_start(&mut self, id: ConnId) {
        let Some(cert) = self.bridge_certificate(id).map(<[u8]>::to_vec) else {
            return self.sasl_failure(id, SC::NotAuthorized, Some("no client certificate"));
        };
        let (Some(server_key), Some(now)) = (self.kontalk.key.clone(), self.clock.unix_now())
        else {
            return self.sasl_failure(id, SC::TemporaryAuthFailure, None);
        };
        let network = self.net.keys();
        let checked =
            self.kontalk
                .logins
                .check_login(&cert, &self.config.domain, &server_key, &network, now);
        let login = match checked {
            Ok(l) => l,
            Err(e) => {
                log::info!("conn {}: the client certificate does not log in: {e}", id.0);
                return self.sasl_failure(
                    id,
                    SC::NotAuthorized,
                    Some("the certificate's key is not valid here"),
                );
            }
        };
        let Some(username) = login
            .jid
            .split('@')
            .next()
            .and_then(sasl::normalize_username)
        else {
            return self.sasl_failure(id, SC::NotAuthorized, None);
        };
        if self.refused_for_lockout(id, Some(&username)) {
            return;
        }
        let auth = &mut self.conns.get_mut(&id).expect("present").auth;
        auth.attempt = Some(username.clone());
        auth.sasl = Some(Box::new(Sasl::ExternalKey {
            username: username.clone(),
            key: crate::store::StoredKey {
                fingerprint: login.fingerprint,
                key: login.key,
            },
            created: login.created,
        }));
        self.fx
            .store(Pending::Sasl(id), StoreRequest::LoadKey { username });
    }

    /// The store answered for an EXTERNAL login: the account's key (rule 7
    /// of KONTALK.md section 3: the same key, or a valid newer one than the
    /// stored key while that is still valid), or that the newer key is stored.
    fn external_keys(&mut self, id: ConnId, sasl: Sasl, reply: StoreReply) {
        match (sasl, reply) {
            (
                Sasl::ExternalKey {
                    username,
                    key,
                    created,
                },
                StoreReply::Key(stored),
            ) => {
                let Some(stored) = stored else {
                    if self.net_redirect(id, &username) {
                        return;
                    }
                    return self.sasl_failure(id, SC::NotAuthorized, Some("not registered here"));
                };
                if stored.fingerprint == key.fingerprint {
                    return self.sasl_success(id, username, None);
                }
                let now = self.clock.unix_now().unwrap_or(0);
                let newer = crate::kontalk::keys::UserKey::parse(&stored.key).is_ok_and(|old| {
                    !old.is_revoked() && !old.is_expired(now) && created > old.created()
                });
                if !newer {
                    return self.sasl_failure(
                        id,
                        SC::NotAuthorized,
                        Some("this is not the account's key"),
                    );
                }
                log::info!(
                    "{username}@{}: logs in with a newer key {}",
                    self.domain,
                    key.fingerprint
                );
                self.conns.get_mut(&id).expect("present").auth.sasl =
                    Some(Box::new(Sasl::ExternalNewKey {
                        username: username.clone(),
                        key: key.clone(),
                    }));
                self.fx
                    .store(Pending::Sasl(id), StoreRequest::SetKey { username, key });
            }
            (Sasl::ExternalNewKey { username, key }, StoreReply::Done(true)) => {
                if let Some(bare) = self.account_jid(&username) {
                    self.sm.key_stored(&bare, key);
                }
                self.sasl_success(id, username, None)
            }
            // A failure, logged where every store failure is.
            _ => self.sasl_failure(id, SC::TemporaryAuthFailure, None),
        }
    }

    fn request_credentials(&mut self, id: ConnId, username: String) {
        if self.refused_for_lockout(id, Some(&username)) {
            return;
        }
        self.fx.store(
            Pending::Sasl(id),
            StoreRequest::LoadCredentials { username },
        );
    }

    /// The store answered with the account's credentials.
    pub(crate) fn sasl_keys(&mut self, id: ConnId, reply: StoreReply) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(
            conn.auth.sasl.as_deref(),
            Some(Sasl::ExternalKey { .. } | Sasl::ExternalNewKey { .. })
        ) {
            let sasl = *conn.auth.sasl.take().expect("checked");
            return self.external_keys(id, sasl, reply);
        }
        let creds = match reply {
            StoreReply::Credentials(c) => c,
            // A failure, logged where every store failure is.
            _ => {
                conn.auth.sasl = None;
                self.sasl_failure(id, SC::TemporaryAuthFailure, None);
                return;
            }
        };
        let sasl = conn.auth.sasl.take().map(|b| *b);
        // An account of another server of the network: its client goes there.
        if creds.is_none() {
            if let Some(Sasl::ScramKeys(_, username) | Sasl::PlainKeys { username, .. }) = &sasl {
                if self.net_redirect(id, &username.clone()) {
                    return;
                }
            }
        }
        match sasl {
            Some(Sasl::ScramKeys(mut scram, username)) => {
                let nonce = {
                    let mut raw = [0u8; 18];
                    self.rng.fill_bytes(&mut raw);
                    B64.encode(raw)
                };
                let mut fallback_salt = [0u8; 16];
                self.rng.fill_bytes(&mut fallback_salt);
                let keys = creds.as_ref().map(|c| c.keys(scram.hash()));
                match scram.server_first(keys, &nonce, &fallback_salt) {
                    Ok(msg) => {
                        let conn = self.conns.get_mut(&id).expect("present");
                        conn.auth.sasl = Some(Box::new(Sasl::ScramFinal(scram, username)));
                        let el = Element::new(ns::SASL, "challenge").with_text(&B64.encode(msg));
                        self.send_element(id, &el, ns::CLIENT);
                    }
                    Err(e) => self.sasl_failure(id, scram_condition(e), None),
                }
            }
            Some(Sasl::PlainKeys { username, password }) => {
                let ok = creds
                    .is_some_and(|c| c.sha256.verify_password(sasl::ScramHash::Sha256, &password));
                if ok {
                    self.sasl_success(id, username, None);
                } else {
                    self.sasl_failure(id, SC::NotAuthorized, None);
                }
            }
            other => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.auth.sasl = other.map(Box::new);
                }
            }
        }
    }

    pub(super) fn on_sasl_response(&mut self, id: ConnId, el: &Element) {
        let text = el.text();
        let data = match B64.decode(text.trim()) {
            Ok(d) => d,
            Err(_) => {
                self.sasl_failure(id, SC::IncorrectEncoding, None);
                return;
            }
        };
        let conn = self.conns.get_mut(&id).expect("present");
        match conn.auth.sasl.take().map(|b| *b) {
            Some(Sasl::AwaitInitial(mech)) => self.sasl_start(id, mech, &data),
            Some(Sasl::ScramFinal(mut scram, username)) => match scram.client_final(&data) {
                Ok(server_final) => self.sasl_success(id, username, Some(server_final)),
                Err(e) => self.sasl_failure(id, scram_condition(e), None),
            },
            Some(other) => {
                conn.auth.sasl = Some(Box::new(other));
                self.sasl_failure(id, SC::MalformedRequest, Some("unexpected response"));
            }
            None => self.sasl_failure(id, SC::MalformedRequest, Some("no exchange is running")),
        }
    }

    fn sasl_success(&mut self, id: ConnId, username: String, additional: Option<Vec<u8>>) {
        let mut success = Element::new(ns::SASL, "success");
        if let Some(data) = additional {
            success = success.with_text(&B64.encode(data));
        }
        self.send_element(id, &success, ns::CLIENT);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        log::info!(
            "conn {} from {}: authenticated as {username}",
            id.0,
            conn.peer
        );
        conn.auth.user = Some(username);
        conn.auth.sasl = None;
        self.counters.logins += 1;
        conn.auth.attempt = None;
        conn.timers.set(TimerKind::Auth, None);
        // Stream restart (RFC 6120 6.4.6): a new parser from the next byte on.
        self.restart_stream(id);
        self.reschedule(id);
    }

    /// A SASL failure that counts towards the failure limits. It is logged
    /// at `warn` in a fixed shape, for log watchers such as fail2ban:
    /// `login failed: account=JID|- address=IP reason=CONDITION`.
    fn sasl_failure(&mut self, id: ConnId, condition: SC, text: Option<&str>) {
        self.counters.login_failures += 1;
        let attempt = self.conns.get_mut(&id).and_then(|c| c.auth.attempt.take());
        if let Some(conn) = self.conns.get(&id) {
            log::warn!(
                "login failed: account={} address={} reason={}",
                account_jid(attempt.as_deref(), self.domain.as_str()),
                conn.peer,
                condition.as_str()
            );
        }
        let counted = self.count_failure(id, attempt.as_deref());
        if let Some(delay) = counted.delay {
            // Throttle: the answer comes later, and later with every failure.
            let now = self.clock.now().unwrap_or_else(|| self.conns[&id].created);
            let bytes = failure(condition, text).to_xml(ns::CLIENT).into_bytes();
            let conn = self.conns.get_mut(&id).expect("present");
            conn.auth.sasl = None;
            conn.held = Some((now + delay, bytes));
            conn.timers.set(TimerKind::Held, Some(now + delay));
            self.reschedule(id);
        } else {
            self.sasl_refuse(id, condition, text);
        }
        if let Some((lockout, failures)) = counted.lockout {
            let Some(peer) = self.conns.get(&id).map(|c| c.peer) else {
                return;
            };
            let window = self.config.limits.auth_failure_window.as_secs();
            let why = match lockout {
                Lockout::Account => {
                    log::warn!(
                        "login lockout: account={} address={peer} failures={failures} for={window}s",
                        account_jid(attempt.as_deref(), self.domain.as_str()),
                    );
                    "too many failed logins for this account from your address; try again later"
                }
                Lockout::Address => {
                    log::warn!("login lockout: address={peer} failures={failures} for={window}s");
                    "too many failed logins from your address; try again later"
                }
            };
            self.fail(id, XE::PolicyViolation, Some(why));
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.auth.failures += 1;
        if conn.auth.failures >= self.config.limits.max_auth_failures {
            self.fail(
                id,
                XE::PolicyViolation,
                Some("too many failed authentication attempts"),
            );
        }
    }

    /// Counts a failed login of the connection (for `account`, when the
    /// client named one).
    fn count_failure(&mut self, id: ConnId, account: Option<&str>) -> Counted {
        let Some(conn) = self.conns.get(&id) else {
            return Counted {
                delay: None,
                lockout: None,
            };
        };
        let now = self.clock.now().unwrap_or(conn.created);
        self.guard
            .count_failure(conn.peer, account, now, &self.config.limits)
    }

    /// Refuses the login when the connection's address (or, once named,
    /// the account at that address) is locked out: `temporary-auth-failure`,
    /// then the stream ends. Logged at `warn`:
    /// `login refused: [account=JID ]address=IP reason=locked-out`.
    fn refused_for_lockout(&mut self, id: ConnId, account: Option<&str>) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        let now = self.clock.now().unwrap_or(conn.created);
        let peer = conn.peer;
        let Some(lockout) = self
            .guard
            .locked_out(peer, account, now, &self.config.limits)
        else {
            return false;
        };
        self.counters.logins_refused += 1;
        let why = match lockout {
            Lockout::Account => {
                log::warn!(
                    "login refused: account={} address={peer} reason=locked-out",
                    account_jid(account, self.domain.as_str())
                );
                "too many failed logins for this account from your address; try again later"
            }
            Lockout::Address => {
                log::warn!("login refused: address={peer} reason=locked-out");
                "too many failed logins from your address; try again later"
            }
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.auth.attempt = None;
        }
        self.sasl_refuse(id, SC::TemporaryAuthFailure, Some(why));
        self.fail(id, XE::PolicyViolation, Some(why));
        true
    }

    /// Ends the SASL exchange with `<failure/>`.
    pub(super) fn sasl_refuse(&mut self, id: ConnId, condition: SC, text: Option<&str>) {
        self.send_element(id, &failure(condition, text), ns::CLIENT);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.auth.sasl = None;
    }
}

/// `user@domain` for the log lines, `-` when the client named no valid account.
fn account_jid(user: Option<&str>, domain: &str) -> String {
    user.map_or_else(|| "-".to_owned(), |u| format!("{u}@{domain}"))
}
