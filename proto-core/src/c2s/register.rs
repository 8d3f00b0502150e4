//! In-band registration (XEP-0077): creating an account before login,
//! changing its password and removing it after.

use rand_core::Rng;

use crate::address::Bare;
use crate::effects::Pending;
use crate::error::{StanzaErrorCondition as SE, StreamErrorCondition as XE};
use crate::kontalk::register::REGISTER_ACCOUNT;
use crate::ns;
use crate::sasl::scram::DEFAULT_ITERATIONS;
use crate::sasl::{self, Credentials};
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

impl Server {
    /// XEP-0077: `user` is `None` before authentication.
    pub(crate) fn on_register(&mut self, id: ConnId, iq: Element, user: Option<&str>) {
        let query = iq.child(ns::REGISTER, "query").expect("checked by caller");
        // Kontalk's forms (a client registering by phone, after login a key
        // rollover or backup) and private key retrieval.
        if IqType::of(&iq) == Some(IqType::Set) {
            if let Some(x) = query.child(ns::DATA, "x").cloned() {
                return self.kontalk_form(id, &iq, &x, user);
            }
        }
        if user.is_none() && IqType::of(&iq) == Some(IqType::Get) {
            if let Some(account) = query.child(REGISTER_ACCOUNT, "account").cloned() {
                return self.kontalk_retrieve(id, &iq, &account);
            }
            if self.config.kontalk.registration {
                return self.kontalk_instructions(id, &iq);
            }
        }
        if user.is_none() && !self.config.allow_registration {
            return self.reply_error(
                id,
                &iq,
                SE::ServiceUnavailable,
                Some("registration is by phone number: send the form"),
            );
        }
        match IqType::of(&iq) {
            Some(IqType::Get) => {
                let mut q = Element::new(ns::REGISTER, "query");
                match user {
                    Some(u) => {
                        q = q
                            .with_child(Element::new(ns::REGISTER, "registered"))
                            .with_child(Element::new(ns::REGISTER, "username").with_text(u))
                            .with_child(Element::new(ns::REGISTER, "password"));
                    }
                    None => {
                        q = q
                            .with_child(Element::new(ns::REGISTER, "instructions").with_text(
                                "Choose a username and password to register with this server.",
                            ))
                            .with_child(Element::new(ns::REGISTER, "username"))
                            .with_child(Element::new(ns::REGISTER, "password"));
                    }
                }
                let reply = iq_result(&iq).with_child(q);
                self.send_stanza(id, &reply);
            }
            Some(IqType::Set) => {
                if query.child(ns::REGISTER, "remove").is_some() {
                    let Some(username) = user else {
                        self.reply_error(id, &iq, SE::NotAuthorized, None);
                        return;
                    };
                    let username = username.to_owned();
                    self.fx.store(
                        Pending::Remove {
                            conn: id,
                            iq: iq.clone(),
                        },
                        StoreRequest::DeleteAccount { username },
                    );
                    return;
                }
                let field = |name: &str| query.child(ns::REGISTER, name).map(|e| e.text());
                let (Some(username), Some(password)) = (field("username"), field("password"))
                else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::BadRequest,
                        Some("username and password are required"),
                    );
                    return;
                };
                let Some(username) = sasl::normalize_username(username.trim()) else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::JidMalformed,
                        Some("this username is not allowed"),
                    );
                    return;
                };
                let Some(password) = sasl::prepare_password(&password) else {
                    self.reply_error(
                        id,
                        &iq,
                        SE::NotAcceptable,
                        Some("this password is not allowed"),
                    );
                    return;
                };
                if user.is_some_and(|u| u != username) {
                    self.reply_error(
                        id,
                        &iq,
                        SE::NotAllowed,
                        Some("you can only change your own password"),
                    );
                    return;
                }
                let mut salt = [0u8; 16];
                self.rng.fill_bytes(&mut salt);
                let credentials = Credentials::derive(&password, &salt, DEFAULT_ITERATIONS);
                let (then, request) = if user.is_some() {
                    (
                        Pending::Password {
                            conn: id,
                            iq: iq.clone(),
                        },
                        StoreRequest::SetCredentials {
                            username,
                            credentials,
                        },
                    )
                } else {
                    (
                        Pending::Register {
                            conn: id,
                            iq: iq.clone(),
                        },
                        StoreRequest::CreateAccount {
                            username,
                            credentials,
                        },
                    )
                };
                self.fx.store(then, request);
            }
            _ => self.reply_error(id, &iq, SE::BadRequest, None),
        }
    }

    /// The store answered an account creation.
    pub(crate) fn registered(&mut self, conn: ConnId, iq: &Element, reply: StoreReply) {
        let answer = match reply {
            StoreReply::Created(true) => {
                self.net_accounts_changed();
                Ok(())
            }
            StoreReply::Created(false) => Err(SE::Conflict),
            _ => Err(SE::InternalServerError),
        };
        self.iq_answer(conn, iq, answer);
    }

    /// The store answered a password change.
    pub(crate) fn password_changed(&mut self, conn: ConnId, iq: &Element, reply: StoreReply) {
        let answer = match reply {
            StoreReply::Done(true) => Ok(()),
            _ => Err(SE::InternalServerError),
        };
        self.iq_answer(conn, iq, answer);
    }

    /// The store answered an account removal: every session of the
    /// account ends.
    pub(crate) fn account_deleted(&mut self, conn: ConnId, iq: &Element, reply: StoreReply) {
        let ok = reply == StoreReply::Done(true);
        self.iq_answer(
            conn,
            iq,
            if ok {
                Ok(())
            } else {
                Err(SE::InternalServerError)
            },
        );
        if !ok {
            return;
        }
        self.net_accounts_changed();
        let Some(bare) = self.full_jid(conn).map(|j| j.bare()) else {
            self.fail(conn, XE::NotAuthorized, Some("account removed"));
            return;
        };
        self.sm.account_gone(&bare);
        for c in self.sm.sessions_of(&bare) {
            self.fail(c, XE::NotAuthorized, Some("account removed"));
        }
        self.sm.forget_account(&bare, &mut self.fx);
    }
}
