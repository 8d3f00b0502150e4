//! HTTP file upload (XEP-0363): the service at its own address
//! (`media.<domain>`, [`UploadConfig::service`]) hands out slots to the
//! server's accounts, in both versions clients speak: `urn:xmpp:http:upload`
//! (0.2, children, what the Kontalk client sends) and `urn:xmpp:http:upload:0`
//! (attributes, what Conversations, Gajim and Dino send). Everything a slot
//! is decided here: its token (unguessable, from the core's RNG), its size
//! and content type, until when its PUT may start and when its file goes,
//! the size limit and the account's quota (counted by the store in the
//! same transaction that keeps the slot, see
//! [`StoreRequest::ReserveUpload`]). The files themselves never pass
//! through the core: the host serves them over HTTP, and [`http`] decides
//! each of its answers.

pub mod http;

use crate::config::UploadConfig;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType, StanzaKind};
use crate::store::{StoreReply, StoreRequest, UploadSlot, UploadState};
use crate::xml::{Element, Node};
use crate::{forms, ns};

/// The current namespace (XEP-0363 1.x).
pub const UPLOAD: &str = "urn:xmpp:http:upload:0";
/// The namespace of version 0.2, the Kontalk client's.
pub const UPLOAD_LEGACY: &str = "urn:xmpp:http:upload";
/// Random bytes of a slot's token (160 bits, as hex in its URLs).
pub const TOKEN_BYTES: usize = 20;
/// Where the files are, under the base URL: `/upload/<token>/<file name>`.
pub const PATH_PREFIX: &str = "/upload/";
/// The longest file name taken, in bytes.
pub const MAX_FILENAME: usize = 255;
/// The longest content type taken, in bytes.
pub const MAX_CONTENT_TYPE: usize = 255;

/// A slot request, as either version asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRequest {
    /// Version 0.2 (`urn:xmpp:http:upload`): children, `<put>URL</put>`.
    pub legacy: bool,
    pub filename: String,
    pub size: u64,
    pub content_type: String,
}

/// Reads a slot request of either version; the error is the text of a
/// `bad-request`.
pub(crate) fn parse_request(payload: &Element) -> Result<SlotRequest, &'static str> {
    let legacy = payload.ns == UPLOAD_LEGACY;
    let field = |name: &str| -> Option<String> {
        if legacy {
            payload
                .elements()
                .find(|c| c.is(UPLOAD_LEGACY, name))
                .map(|c| c.text().trim().to_owned())
        } else {
            payload.attr(name).map(str::to_owned)
        }
    };
    let filename = field("filename").unwrap_or_default();
    if filename.is_empty() || filename.len() > MAX_FILENAME {
        return Err("the file name is missing or longer than 255 bytes");
    }
    if filename
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err("the file name has a control character or a slash");
    }
    let size = field("size")
        .and_then(|s| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        })
        .ok_or("the size is missing or not a number of bytes")?;
    let content_type = field("content-type").unwrap_or_default();
    if !content_type.is_empty() && !http::is_media_type(&content_type) {
        return Err("the content type is not a media type (type/subtype)");
    }
    Ok(SlotRequest {
        legacy,
        filename,
        size,
        content_type,
    })
}

/// Until when `slot` counts against its account's quota: a file until it
/// expires, a slot not used yet until its PUT may no longer start.
pub fn counts_until(slot: &UploadSlot) -> u64 {
    match slot.state {
        UploadState::Reserved => slot.put_by.min(slot.expires),
        UploadState::Uploading | UploadState::Stored => slot.expires,
    }
}

/// The quota, decided for the stores: whether `slot` fits beside the
/// account's `others` at `now` under `quota` bytes (0: no limit). `None`:
/// it fits; else the time its oldest counted slot stops counting.
pub fn over_quota<'a>(
    slot: &UploadSlot,
    others: impl IntoIterator<Item = &'a UploadSlot>,
    quota: u64,
    now: u64,
) -> Option<u64> {
    if quota == 0 {
        return None;
    }
    let mut used = slot.size;
    let mut first: Option<u64> = None;
    for other in others {
        let until = counts_until(other);
        if until >= now && other.token != slot.token {
            used = used.saturating_add(other.size);
            first = Some(first.map_or(until, |f| f.min(until)));
        }
    }
    (used > quota).then(|| first.unwrap_or(now))
}

/// A namespace's application error element of XEP-0363.
fn ns_of(legacy: bool) -> &'static str {
    if legacy {
        UPLOAD_LEGACY
    } else {
        UPLOAD
    }
}

impl Server {
    /// The upload service's settings, when it is on.
    pub(crate) fn upload_config(&self) -> Option<&UploadConfig> {
        self.config.upload.as_ref()
    }

    /// Whether `domain` is the upload service's address.
    pub(crate) fn is_upload_service(&self, jid: &jid::Jid) -> bool {
        jid.node().is_none()
            && jid.resource().is_none()
            && self
                .upload_config()
                .is_some_and(|u| u.service.eq_ignore_ascii_case(jid.domain().as_str()))
    }

    /// The upload service among the domain's disco items.
    pub(crate) fn upload_disco_item(&self) -> Option<Element> {
        let u = self.upload_config()?;
        Some(
            Element::new(ns::DISCO_ITEMS, "item")
                .with_attr("jid", &u.service)
                .with_attr("name", "HTTP File Upload"),
        )
    }

    /// The service's disco#info (XEP-0363 section 4): its identity, both
    /// namespaces, and the largest file in each namespace's form.
    fn upload_disco_info(&self, max: u64) -> Element {
        let mut q = Element::new(ns::DISCO_INFO, "query")
            .with_child(
                Element::new(ns::DISCO_INFO, "identity")
                    .with_attr("category", "store")
                    .with_attr("type", "file")
                    .with_attr("name", "HTTP File Upload"),
            )
            .with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", ns::DISCO_INFO))
            .with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", UPLOAD))
            .with_child(Element::new(ns::DISCO_INFO, "feature").with_attr("var", UPLOAD_LEGACY));
        let max = max.to_string();
        for namespace in [UPLOAD, UPLOAD_LEGACY] {
            q = q.with_child(forms::form("result", namespace).with_child(forms::field(
                "max-file-size",
                "text-single",
                None,
                Some(&max),
            )));
        }
        q
    }

    /// An iq from a session to the upload service.
    pub(crate) fn upload_iq(&mut self, conn: ConnId, iq: &Element) {
        let Some(cfg) = self.upload_config().cloned() else {
            return self.reply_error(conn, iq, SE::ServiceUnavailable, None);
        };
        let Some(payload) = iq.elements().next() else {
            return self.reply_error(conn, iq, SE::BadRequest, None);
        };
        let kind = IqType::of(iq);
        match (payload.ns.as_str(), payload.name.as_str(), kind) {
            (ns::DISCO_INFO, "query", Some(IqType::Get)) if payload.attr("node").is_none() => {
                let q = self.upload_disco_info(cfg.max_file_size);
                self.send_stanza(conn, &iq_result(iq).with_child(q));
            }
            (ns::DISCO_ITEMS, "query", Some(IqType::Get)) => {
                let q = Element::new(ns::DISCO_ITEMS, "query");
                self.send_stanza(conn, &iq_result(iq).with_child(q));
            }
            (UPLOAD | UPLOAD_LEGACY, "request", Some(IqType::Get)) => {
                self.slot_request(conn, &cfg, iq, payload)
            }
            _ => self.reply_error(conn, iq, SE::ServiceUnavailable, None),
        }
    }

    /// A slot request of a session: checked, then kept by the store (which
    /// counts the quota) before the client gets its URLs.
    fn slot_request(&mut self, conn: ConnId, cfg: &UploadConfig, iq: &Element, payload: &Element) {
        let Some(username) = self.conn_user(conn) else {
            return self.reply_error(conn, iq, SE::NotAuthorized, None);
        };
        let request = match parse_request(payload) {
            Ok(r) => r,
            Err(why) => return self.reply_error(conn, iq, SE::BadRequest, Some(why)),
        };
        if request.size > cfg.max_file_size {
            let namespace = ns_of(request.legacy);
            let limit = if request.legacy {
                "max-size"
            } else {
                "max-file-size"
            };
            let text = format!("the file is too large: at most {} bytes", cfg.max_file_size);
            let app = Element::new(namespace, "file-too-large").with_child(
                Element::new(namespace, limit).with_text(&cfg.max_file_size.to_string()),
            );
            return self.reply_upload_error(conn, iq, SE::NotAcceptable, &text, Some(app));
        }
        if cfg.quota != 0 && request.size > cfg.quota {
            let text = format!(
                "the file is larger than the quota of an account ({} bytes)",
                cfg.quota
            );
            return self.reply_upload_error(conn, iq, SE::NotAcceptable, &text, None);
        }
        let Some(now) = self.clock.unix_now() else {
            return self.reply_error(conn, iq, SE::ServiceUnavailable, None);
        };
        let token = self.random_hex(TOKEN_BYTES);
        let slot = UploadSlot {
            token,
            username,
            filename: request.filename,
            size: request.size,
            content_type: request.content_type,
            put_by: now.saturating_add(cfg.slot_lifetime.as_secs()),
            expires: now.saturating_add(cfg.expire_after.as_secs()),
            state: UploadState::Reserved,
            legacy: request.legacy,
        };
        let reply = slot_element(&cfg.base_url, &slot, request.legacy);
        self.fx.store(
            Pending::Upload {
                conn,
                iq: iq.clone(),
                reply,
                legacy: request.legacy,
            },
            StoreRequest::ReserveUpload {
                slot,
                quota: cfg.quota,
                now,
            },
        );
    }

    /// The store kept the slot (the client gets its URLs) or found the
    /// account over its quota.
    pub(crate) fn upload_reserved(
        &mut self,
        conn: ConnId,
        iq: Element,
        reply: Element,
        legacy: bool,
        answer: StoreReply,
    ) {
        match answer {
            StoreReply::UploadReserved(None) => {
                self.send_stanza(conn, &iq_result(&iq).with_child(reply))
            }
            StoreReply::UploadReserved(Some(retry)) => {
                let app = Element::new(ns_of(legacy), "retry")
                    .with_attr("stamp", &crate::timer::rfc3339(retry));
                self.reply_upload_error(
                    conn,
                    &iq,
                    SE::ResourceConstraint,
                    "the account's uploads are over its quota until the oldest expires",
                    Some(app),
                )
            }
            _ => self.reply_error(conn, &iq, SE::InternalServerError, None),
        }
    }

    /// An error of the service, with XEP-0363's element in it.
    fn reply_upload_error(
        &mut self,
        conn: ConnId,
        iq: &Element,
        cond: SE,
        text: &str,
        app: Option<Element>,
    ) {
        let Some(mut reply) = crate::error::error_reply(iq, cond, Some(text)) else {
            return;
        };
        if let (Some(err), Some(app)) = (crate::error::error_child(&mut reply), app) {
            err.children.push(Node::Element(app));
        }
        self.send_stanza(conn, &reply);
    }

    /// A stanza routed to the service from another server: its disco#info
    /// is public; slots are for this server's accounts only.
    pub(crate) fn upload_routed(&mut self, el: &Element) {
        let Some(max) = self.upload_config().map(|u| u.max_file_size) else {
            return;
        };
        let request = IqType::of(el).is_some_and(IqType::is_request);
        match StanzaKind::of(el) {
            Some(StanzaKind::Iq) if request => {
                let payload = el.elements().next();
                let disco = payload
                    .is_some_and(|p| p.is(ns::DISCO_INFO, "query") && p.attr("node").is_none())
                    && IqType::of(el) == Some(IqType::Get);
                if disco {
                    let q = self.upload_disco_info(max);
                    self.route(iq_result(el).with_child(q));
                } else {
                    self.bounce_routed(el, SE::NotAllowed);
                }
            }
            Some(StanzaKind::Message) => self.bounce_routed(el, SE::ServiceUnavailable),
            _ => {}
        }
    }
}

/// The `<slot/>` answer for `slot` in its version: `put` and `get` are
/// the same URL.
fn slot_element(base_url: &str, slot: &UploadSlot, legacy: bool) -> Element {
    let url = file_url(base_url, &slot.token, &slot.filename);
    let namespace = ns_of(legacy);
    let slot = Element::new(namespace, "slot");
    if legacy {
        slot.with_child(Element::new(namespace, "put").with_text(&url))
            .with_child(Element::new(namespace, "get").with_text(&url))
    } else {
        slot.with_child(Element::new(namespace, "put").with_attr("url", &url))
            .with_child(Element::new(namespace, "get").with_attr("url", &url))
    }
}

/// A file's URL: the base, the token, the file name percent-encoded.
pub fn file_url(base_url: &str, token: &str, filename: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    /// RFC 3986 section 2.3: what stays as it is.
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    format!(
        "{base_url}{PATH_PREFIX}{token}/{}",
        utf8_percent_encode(filename, KEEP)
    )
}

#[cfg(test)]
mod tests;
