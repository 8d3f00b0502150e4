//! Kontalk registration (XEP-0077 with Kontalk's forms, KONTALK.md part 1
//! section 1): the instructions form, the phone number with its
//! verification code, the code with the key of the client's certificate
//! (certified by the server and returned), key rollover, and private key
//! backups by token.
//!
//! Each answer goes out once what it reports is durable.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::Rng;
use sha1::{Digest, Sha1};

use super::bridge;
use super::keys::{self, UserKey};
use crate::effects::{Event, Pending};
use crate::error::StanzaErrorCondition as SE;
use crate::forms::{self, Submitted};
use crate::ns;
use crate::sasl::scram::DEFAULT_ITERATIONS;
use crate::sasl::Credentials;
use crate::server::{ConnId, IdMap, Server};
use crate::stanza::iq_result;
use crate::store::{CodeIssued, Registration, StoreReply, StoreRequest, StoredKey};
use crate::xml::Element;

/// `FORM_TYPE` of the code step.
pub const REGISTER_CODE: &str = "http://kontalk.org/protocol/register#code";
/// `FORM_TYPE` of a key rollover.
pub const REGISTER_KEY: &str = "http://kontalk.org/protocol/register#key";
/// `FORM_TYPE` of a private key backup.
pub const REGISTER_PRIVATE_KEY: &str = "http://kontalk.org/protocol/register#privatekey";
/// Namespace of a private key retrieval.
pub const REGISTER_ACCOUNT: &str = "http://kontalk.org/protocol/register#account";

/// The challenge this server sends codes with (the only one it offers).
const CHALLENGE: &str = "pin";

/// Digits of a private key backup token (the client expects 40).
const TOKEN_DIGITS: usize = 40;

/// Digits of a verification code.
const CODE_DIGITS: u32 = 6;

/// A phone number in E.164 (`+` and 8 to 15 digits, the first not 0),
/// from what a client sent: spaces, dashes, dots and parentheses are
/// dropped, a leading `00` is an international prefix. A number without
/// either prefix is refused: the server does not know the client's country.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let kept: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = kept.strip_prefix('+').or_else(|| kept.strip_prefix("00"))?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| format!("+{digits}"))
}

/// The user id of a phone number in E.164: the lowercase hex SHA-1 of it.
pub fn user_id(e164: &str) -> String {
    Sha1::digest(e164.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `node` looks like a Kontalk user id (40 lowercase hex digits).
pub fn is_user_id(node: &str) -> bool {
    node.len() == 40 && node.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A verification code to send, handed to the runtime as
/// [`Event::SendCode`]; answered with [`Server::handle_code_sent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMessage {
    /// The token to answer with.
    pub token: u64,
    /// The phone number, E.164.
    pub phone: String,
    /// The code.
    pub code: String,
}

/// What waits on a store answer of the registration.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// The phone step: the code was stored (or refused).
    Code {
        conn: ConnId,
        iq: Element,
        phone: String,
        code: String,
    },
    /// The code step: the account and key were stored (or the code refused).
    Registered {
        conn: ConnId,
        iq: Element,
        username: String,
        key: StoredKey,
    },
    /// A rollover: the account's key, to check the revocation against.
    RolloverKey {
        conn: ConnId,
        iq: Element,
        new: Vec<u8>,
        revoked: Vec<u8>,
    },
    /// A rollover: the new key was stored.
    RolledOver {
        conn: ConnId,
        iq: Element,
        username: String,
        key: StoredKey,
    },
    /// A backup: the account's public key, to keep beside it.
    BackupKey {
        conn: ConnId,
        iq: Element,
        private: Vec<u8>,
    },
    /// A backup was stored under `token`.
    BackedUp {
        conn: ConnId,
        iq: Element,
        token: String,
    },
    /// A retrieval: the backup, if the token is good.
    Retrieved { conn: ConnId, iq: Element },
}

impl Waiting {
    /// What the core does when the request fails (for the log line).
    pub(crate) fn after_failure(&self) -> &'static str {
        match self {
            Waiting::Code { .. } => "no code was sent and the client got internal-server-error",
            Waiting::Registered { .. } => {
                "nothing was registered and the client got internal-server-error"
            }
            Waiting::RolloverKey { .. } | Waiting::RolledOver { .. } => {
                "the key stays as it was and the client got internal-server-error"
            }
            Waiting::BackupKey { .. } | Waiting::BackedUp { .. } => {
                "nothing was kept and the client got internal-server-error"
            }
            Waiting::Retrieved { .. } => "the client got internal-server-error",
        }
    }
}

/// The core's Kontalk state: the server's key, and the codes handed to
/// the runtime to send.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The server's OpenPGP key, once the runtime gave it.
    pub(crate) key: Option<std::sync::Arc<keys::ServerKey>>,
    /// The login certificates verified with that key.
    pub(crate) logins: bridge::LoginCache,
    pub(crate) sending: Sending,
}

/// Codes handed to the runtime to send.
#[derive(Debug, Default)]
pub(crate) struct Sending {
    next: u64,
    /// By token: the connection and iq that wait for the code to go out,
    /// and the code's account and value (withdrawn if it does not).
    waiting: IdMap<u64, (ConnId, Element, String, String)>,
}

impl Server {
    /// An unauthenticated `get`: the instructions form (with the fields of
    /// username/password registration too, when that is open).
    pub(crate) fn kontalk_instructions(&mut self, id: ConnId, iq: &Element) {
        let k = &self.config.kontalk;
        let mut phone = forms::field("phone", "text-single", Some("Phone number"), None);
        phone = phone.with_child(Element::new(ns::DATA, "required"));
        let mut challenge = forms::field(
            "challenge",
            "list-single",
            Some("Verification"),
            Some(CHALLENGE),
        );
        challenge = challenge.with_child(
            Element::new(ns::DATA, "option")
                .with_attr("label", "Code")
                .with_child(Element::new(ns::DATA, "value").with_text(CHALLENGE)),
        );
        let mut form = forms::form("form", ns::REGISTER)
            .with_child(phone)
            .with_child(forms::field(
                "force",
                "boolean",
                Some("Register again"),
                None,
            ))
            .with_child(forms::field("fallback", "boolean", Some("Fallback"), None))
            .with_child(challenge);
        if let Some(url) = &k.terms_url {
            form = form
                .with_child(forms::field(
                    "accept-terms",
                    "boolean",
                    Some("I accept the service terms"),
                    None,
                ))
                .with_child(forms::field("terms", "hidden", None, Some(url)));
        }
        let mut q = Element::new(ns::REGISTER, "query").with_child(
            Element::new(ns::REGISTER, "instructions")
                .with_text("Register with your phone number: a verification code will be sent."),
        );
        if self.config.allow_registration {
            q = q
                .with_child(Element::new(ns::REGISTER, "username"))
                .with_child(Element::new(ns::REGISTER, "password"));
        }
        q = q.with_child(form);
        self.send_stanza(id, &iq_result(iq).with_child(q));
    }

    /// A `set` with a form: the phone or code step before login (`user` is
    /// `None`), a rollover or a backup after.
    pub(crate) fn kontalk_form(
        &mut self,
        id: ConnId,
        iq: &Element,
        x: &Element,
        user: Option<&str>,
    ) {
        let form = Submitted::read(x);
        match (user, form.form_type()) {
            (None, Some(ns::REGISTER)) if form.has("phone") => self.phone_step(id, iq, &form),
            (None, Some(REGISTER_CODE)) => self.code_step(id, iq, &form),
            // The client sends both fields; the Kontalk server looks at the names.
            (Some(user), _) if form.has("publickey") => {
                let user = user.to_owned();
                self.rollover(id, iq, &user, &form)
            }
            (Some(user), _) if form.has("privatekey") => {
                let user = user.to_owned();
                self.backup(id, iq, &user, &form)
            }
            (None, _) => {
                self.reply_error(id, iq, SE::BadRequest, Some("unknown registration form"))
            }
            (Some(_), _) => self.reply_error(id, iq, SE::BadRequest, Some("unknown form")),
        }
    }

    fn phone_step(&mut self, id: ConnId, iq: &Element, form: &Submitted) {
        let k = self.config.kontalk.clone();
        if !k.registration {
            return self.reply_error(id, iq, SE::NotAllowed, Some("registration is closed"));
        }
        if k.terms_url.is_some() && !form.flag("accept-terms") {
            return self.reply_error(
                id,
                iq,
                SE::BadRequest,
                Some("Service terms were not accepted."),
            );
        }
        let Some(phone) = form.value("phone").and_then(normalize_phone) else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Bad phone number."));
        };
        let (Some(now), Some(at), Some(peer)) = (
            self.clock.unix_now(),
            self.clock.now(),
            self.conns.get(&id).map(|c| c.peer),
        ) else {
            return self.reply_error(id, iq, SE::ServiceUnavailable, None);
        };
        let window = self.config.limits.auth_failure_window;
        if !self
            .guard
            .admit_code_request(peer, at, window, k.codes_per_address)
        {
            log::info!("{peer}: too many verification codes asked for; refused");
            return self.reply_error_typed(
                id,
                iq,
                SE::ServiceUnavailable,
                "wait",
                Some("Too many requests."),
            );
        }
        let code = {
            let max = 10u32.pow(CODE_DIGITS);
            // Uniform: draws past the last whole multiple are drawn again.
            let zone = u32::MAX - u32::MAX % max;
            let n = loop {
                let n = self.rng.next_u32();
                if n < zone {
                    break n % max;
                }
            };
            format!("{n:0width$}", width = CODE_DIGITS as usize)
        };
        let username = user_id(&phone);
        // Registered on another server of the network: the same `conflict`
        // as for one registered here (the client offers `force`); with
        // `force` the number registers here too, and the network's
        // directory has two claims (see `net`).
        let force = form.flag("force");
        if !force {
            if let Some(home) = self.net_home(&username) {
                log::info!("{username}@{}: registered on {home}; conflict", self.domain);
                return self.reply_error_typed(id, iq, SE::Conflict, "modify", None);
            }
        }
        self.fx.store(
            Pending::Kontalk(Waiting::Code {
                conn: id,
                iq: iq.clone(),
                phone,
                code: code.clone(),
            }),
            StoreRequest::IssueCode {
                username,
                code,
                now,
                expires: now + k.code_lifetime.as_secs(),
                resend_after: k.resend_after.as_secs(),
                force,
            },
        );
    }

    fn code_step(&mut self, id: ConnId, iq: &Element, form: &Submitted) {
        if !self.config.kontalk.registration {
            return self.reply_error(id, iq, SE::NotAllowed, Some("registration is closed"));
        }
        let Some(code) = form.value("code").map(str::to_owned) else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Invalid verification code."));
        };
        let (Some(server_key), Some(now)) = (self.kontalk.key.clone(), self.clock.unix_now())
        else {
            return self.reply_error(
                id,
                iq,
                SE::ServiceUnavailable,
                Some("the server has no key"),
            );
        };
        let domain = self.config.domain.clone();
        let Some(cert) = self
            .conns
            .get(&id)
            .and_then(|c| c.stream.peer_certificate())
        else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Invalid public key."));
        };
        let key = match bridge::check_registration(cert, &domain) {
            Ok(k) => k,
            Err(e) => {
                log::info!("registration refused: the certificate's key: {e}");
                return self.reply_error(id, iq, SE::BadRequest, Some("Invalid public key."));
            }
        };
        let Some(node) = key
            .jid
            .split('@')
            .next()
            .filter(|n| is_user_id(n))
            .map(str::to_owned)
        else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Invalid public key."));
        };
        let signed = match keys::certify(&server_key, &key.key, &key.jid, self.seed(), now) {
            Ok(s) => s,
            Err(e) => {
                log::info!("registration of {node} refused: {e}");
                return self.reply_error(id, iq, SE::BadRequest, Some("Invalid public key."));
            }
        };
        // An account that logs in with its key: a password nobody knows.
        let mut secret = [0u8; 32];
        self.rng.fill_bytes(&mut secret);
        let credentials =
            Credentials::derive(&B64.encode(secret), &secret[..16], DEFAULT_ITERATIONS);
        self.fx.store(
            Pending::Kontalk(Waiting::Registered {
                conn: id,
                iq: iq.clone(),
                username: node.clone(),
                key: StoredKey {
                    fingerprint: key.fingerprint.clone(),
                    key: signed.clone(),
                },
            }),
            StoreRequest::Register {
                username: node,
                code,
                now,
                max_attempts: self.config.kontalk.max_attempts,
                credentials: Box::new(credentials),
                key: StoredKey {
                    fingerprint: key.fingerprint,
                    key: signed,
                },
            },
        );
    }

    fn rollover(&mut self, id: ConnId, iq: &Element, user: &str, form: &Submitted) {
        let decoded = |v: Option<&str>| v.and_then(|v| B64.decode(v).ok());
        let (Some(new), Some(revoked)) = (
            decoded(form.value("publickey")),
            decoded(form.value("revoked")),
        ) else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Invalid public key."));
        };
        self.fx.store(
            Pending::Kontalk(Waiting::RolloverKey {
                conn: id,
                iq: iq.clone(),
                new,
                revoked,
            }),
            StoreRequest::LoadKey {
                username: user.to_owned(),
            },
        );
    }

    fn backup(&mut self, id: ConnId, iq: &Element, user: &str, form: &Submitted) {
        let Some(private) = form.value("privatekey").and_then(|v| B64.decode(v).ok()) else {
            return self.reply_error(id, iq, SE::BadRequest, Some("Invalid private key."));
        };
        self.fx.store(
            Pending::Kontalk(Waiting::BackupKey {
                conn: id,
                iq: iq.clone(),
                private,
            }),
            StoreRequest::LoadKey {
                username: user.to_owned(),
            },
        );
    }

    /// An unauthenticated `get` for a private key backup by its token.
    pub(crate) fn kontalk_retrieve(&mut self, id: ConnId, iq: &Element, account: &Element) {
        let token = account
            .child(REGISTER_ACCOUNT, "privatekey")
            .and_then(|p| p.child(REGISTER_ACCOUNT, "token"))
            .map(|t| t.text().trim().to_owned())
            .filter(|t| !t.is_empty());
        let (Some(token), Some(now)) = (token, self.clock.unix_now()) else {
            return self.reply_error(id, iq, SE::BadRequest, Some("a token is required"));
        };
        self.fx.store(
            Pending::Kontalk(Waiting::Retrieved {
                conn: id,
                iq: iq.clone(),
            }),
            StoreRequest::LoadPrivateKey { token, now },
        );
    }

    /// The store answered a registration request.
    pub(crate) fn kontalk_stored(&mut self, waiting: Waiting, reply: StoreReply) {
        match waiting {
            Waiting::Code {
                conn,
                iq,
                phone,
                code,
            } => match reply {
                StoreReply::Code(CodeIssued::Issued) => {
                    let s = &mut self.kontalk.sending;
                    s.next += 1;
                    let token = s.next;
                    s.waiting
                        .insert(token, (conn, iq, user_id(&phone), code.clone()));
                    self.fx
                        .push(Event::SendCode(CodeMessage { token, phone, code }));
                }
                StoreReply::Code(CodeIssued::Throttled) => self.reply_error_typed(
                    conn,
                    &iq,
                    SE::ServiceUnavailable,
                    "wait",
                    Some("A code was sent a moment ago: wait for it."),
                ),
                // The client offers to register again with `force`.
                StoreReply::Code(CodeIssued::Registered) => {
                    self.reply_error_typed(conn, &iq, SE::Conflict, "modify", None)
                }
                _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
            },
            Waiting::Registered {
                conn,
                iq,
                username,
                key,
            } => match reply {
                StoreReply::Registration(Registration::Registered { created }) => {
                    if created {
                        self.net_accounts_changed();
                    }
                    log::info!(
                        "{username}@{}: registered by phone{}",
                        self.config.domain,
                        if created {
                            ""
                        } else {
                            " again, with a new key"
                        }
                    );
                    let signed = key.key.clone();
                    if let Some(bare) = self.account_jid(&username) {
                        self.sm.key_stored(&bare, key);
                    }
                    let key = B64.encode(&signed);
                    self.form_answer(
                        conn,
                        &iq,
                        REGISTER_CODE,
                        "publickey",
                        "Signed public key",
                        &key,
                    );
                }
                StoreReply::Registration(Registration::WrongCode) => self.reply_error(
                    conn,
                    &iq,
                    SE::BadRequest,
                    Some("Invalid verification code."),
                ),
                _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
            },
            Waiting::RolloverKey {
                conn,
                iq,
                new,
                revoked,
            } => {
                let StoreReply::Key(stored) = reply else {
                    return self.reply_error(conn, &iq, SE::InternalServerError, None);
                };
                match self.check_rollover(conn, stored, &new, &revoked) {
                    Ok((username, key)) => {
                        self.fx.store(
                            Pending::Kontalk(Waiting::RolledOver {
                                conn,
                                iq,
                                username: username.clone(),
                                key: key.clone(),
                            }),
                            StoreRequest::SetKey { username, key },
                        );
                    }
                    Err(why) => {
                        log::info!("key rollover refused: {why}");
                        self.reply_error(conn, &iq, SE::BadRequest, Some("Invalid public key."))
                    }
                }
            }
            Waiting::RolledOver {
                conn,
                iq,
                username,
                key,
            } => match reply {
                StoreReply::Done(true) => {
                    let signed = B64.encode(&key.key);
                    if let Some(bare) = self.account_jid(&username) {
                        log::info!("{bare}: key rolled over to {}", key.fingerprint);
                        self.sm.key_stored(&bare, key);
                    }
                    self.form_answer(
                        conn,
                        &iq,
                        REGISTER_KEY,
                        "publickey",
                        "Signed public key",
                        &signed,
                    );
                }
                _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
            },
            Waiting::BackupKey { conn, iq, private } => {
                let (StoreReply::Key(Some(public)), Some(now), Some(user)) =
                    (reply, self.clock.unix_now(), self.conn_user(conn))
                else {
                    return self.reply_error(conn, &iq, SE::InternalServerError, None);
                };
                let token: String = (0..TOKEN_DIGITS)
                    .map(|_| char::from(b'0' + (self.rng.next_u32() % 10) as u8))
                    .collect();
                self.fx.store(
                    Pending::Kontalk(Waiting::BackedUp {
                        conn,
                        iq,
                        token: token.clone(),
                    }),
                    StoreRequest::SetPrivateKey {
                        username: user,
                        token,
                        private,
                        public: public.key,
                        expires: now + self.config.kontalk.private_key_lifetime.as_secs(),
                    },
                );
            }
            Waiting::BackedUp { conn, iq, token } => match reply {
                StoreReply::Done(true) => {
                    self.form_answer(
                        conn,
                        &iq,
                        REGISTER_PRIVATE_KEY,
                        "token",
                        "Private key token",
                        &token,
                    );
                }
                _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
            },
            Waiting::Retrieved { conn, iq } => match reply {
                StoreReply::PrivateKey(Some((private, public))) => {
                    let keys = Element::new(REGISTER_ACCOUNT, "privatekey")
                        .with_child(
                            Element::new(REGISTER_ACCOUNT, "private")
                                .with_text(&B64.encode(private)),
                        )
                        .with_child(
                            Element::new(REGISTER_ACCOUNT, "public").with_text(&B64.encode(public)),
                        );
                    let q = Element::new(ns::REGISTER, "query")
                        .with_child(Element::new(REGISTER_ACCOUNT, "account").with_child(keys));
                    self.send_stanza(conn, &iq_result(&iq).with_child(q));
                }
                StoreReply::PrivateKey(None) => {
                    self.reply_error(conn, &iq, SE::ItemNotFound, Some("no such token"))
                }
                _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
            },
        }
    }

    /// A rollover's keys, checked: the revoked key is the account's and its
    /// revocation verifies; the new key's user id is the account's. Returns
    /// the username and the new key, certified.
    fn check_rollover(
        &mut self,
        conn: ConnId,
        stored: Option<StoredKey>,
        new: &[u8],
        revoked: &[u8],
    ) -> Result<(String, StoredKey), String> {
        let user = self.conn_user(conn).ok_or("the session is gone")?;
        let stored = stored.ok_or("the account has no key")?;
        let old = UserKey::parse(revoked).map_err(|e| format!("the revoked key: {e}"))?;
        if old.fingerprint() != stored.fingerprint {
            return Err("the revoked key is not the account's".into());
        }
        if !old.is_revoked() {
            return Err("the old key carries no valid revocation".into());
        }
        let (Some(server_key), Some(now)) = (self.kontalk.key.clone(), self.clock.unix_now())
        else {
            return Err("the server has no key".into());
        };
        let jid = format!("{user}@{}", self.config.domain);
        let fingerprint = UserKey::parse(new)
            .map_err(|e| format!("the new key: {e}"))?
            .fingerprint();
        let signed = keys::certify(&server_key, new, &jid, self.seed(), now)
            .map_err(|e| format!("the new key: {e}"))?;
        Ok((
            user,
            StoredKey {
                fingerprint,
                key: signed,
            },
        ))
    }

    /// The runtime sent a verification code (or could not: `Err` says why,
    /// for the log).
    pub fn handle_code_sent(&mut self, token: u64, result: Result<(), String>) {
        let Some((conn, iq, username, code)) = self.kontalk.sending.waiting.remove(&token) else {
            return;
        };
        match result {
            Ok(()) => {
                let x = forms::form("form", ns::REGISTER)
                    .with_child(forms::field(
                        "from",
                        "text-single",
                        Some("Sender ID"),
                        Some(&self.config.kontalk.sender),
                    ))
                    .with_child(forms::field(
                        "challenge",
                        "text-single",
                        None,
                        Some(CHALLENGE),
                    ));
                let q = Element::new(ns::REGISTER, "query")
                    .with_child(
                        Element::new(ns::REGISTER, "instructions")
                            .with_text("A verification code was sent to your phone. Send it in a form of http://kontalk.org/protocol/register#code."),
                    )
                    .with_child(x);
                self.send_stanza(conn, &iq_result(&iq).with_child(q));
            }
            Err(why) => {
                log::error!("a verification code could not be sent: {why}; the client got service-unavailable");
                // Not sent, not kept: the number may ask again at once
                // (its request comes after this one in the store).
                self.fx.store(
                    Pending::Ignore("the code expires by itself"),
                    StoreRequest::WithdrawCode { username, code },
                );
                self.reply_error(
                    conn,
                    &iq,
                    SE::ServiceUnavailable,
                    Some("The code could not be sent."),
                );
            }
        }
    }

    /// The result of `iq`: a `jabber:iq:register` query holding a form of
    /// `form_type` with the one field `var` (the way Kontalk answers).
    fn form_answer(
        &mut self,
        conn: ConnId,
        iq: &Element,
        form_type: &str,
        var: &str,
        label: &str,
        value: &str,
    ) {
        let x = forms::form("form", form_type).with_child(forms::field(
            var,
            "text-single",
            Some(label),
            Some(value),
        ));
        let q = Element::new(ns::REGISTER, "query").with_child(x);
        self.send_stanza(conn, &iq_result(iq).with_child(q));
    }

    /// The bare JID of the local account `username`.
    pub(crate) fn account_jid(&self, username: &str) -> Option<jid::BareJid> {
        jid::BareJid::new(&format!("{username}@{}", self.domain)).ok()
    }

    /// A seed for one use of randomness outside the core's own RNG (key
    /// signatures), drawn from it.
    pub(crate) fn seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_normalized_to_e164_and_hashed() {
        assert_eq!(
            normalize_phone("+15555215554").as_deref(),
            Some("+15555215554")
        );
        assert_eq!(
            normalize_phone(" 0039 (333) 123-4567 ").as_deref(),
            Some("+393331234567")
        );
        for bad in [
            "15555215554",
            "+1555",
            "+1234567890123456",
            "+0123456789",
            "+1555521555x",
            "",
        ] {
            assert_eq!(normalize_phone(bad), None, "{bad}");
        }
        // KONTALK.md: SP phone-hash.md's value, recomputed.
        assert_eq!(
            user_id("+15555215554"),
            "4bdd4f929f3a1062253e4e496bafba0bdfb5db75"
        );
        assert!(is_user_id(&user_id("+15555215554")));
        assert!(!is_user_id("alice"));
    }
}
