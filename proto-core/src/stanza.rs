//! The three kinds of stanza (RFC 6120 section 8) and the iq types, typed,
//! and the replies every part builds from a request.

use crate::ns;
use crate::xml::Element;

/// What a top-level element of a client stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

impl StanzaKind {
    /// The kind of `el`, if it is a stanza of the client namespace.
    pub fn of(el: &Element) -> Option<StanzaKind> {
        if el.ns != ns::CLIENT {
            return None;
        }
        StanzaKind::from_name(&el.name)
    }

    /// The kind with this element name (any namespace).
    pub fn from_name(name: &str) -> Option<StanzaKind> {
        match name {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

/// The `type` of an iq (RFC 6120 section 8.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    /// A request for information.
    Get,
    /// A request to change something.
    Set,
    /// A successful answer.
    Result,
    /// A failed answer.
    Error,
}

impl IqType {
    /// The type of `iq`, if it has a valid one.
    pub fn of(iq: &Element) -> Option<IqType> {
        match iq.attr("type")? {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }

    /// Whether it asks for an answer (`get` or `set`).
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// Whether a stanza on its way to another server is worth keeping until
/// that server has it, across a link that is down or a restart: messages,
/// presence subscriptions, iq answers. An iq request is answered with an
/// error instead, and other presence is only ever the current one (the
/// next broadcast or probe brings it).
pub(crate) fn worth_keeping(el: &Element) -> bool {
    match StanzaKind::of(el) {
        Some(StanzaKind::Message) => true,
        Some(StanzaKind::Presence) => matches!(
            el.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
        ),
        Some(StanzaKind::Iq) => !IqType::of(el).is_some_and(IqType::is_request),
        None => false,
    }
}

/// The empty `result` to an iq request: same id, addresses swapped.
pub fn iq_result(iq: &Element) -> Element {
    answering(
        Element::new(ns::CLIENT, "iq").with_attr("type", "result"),
        iq,
    )
}

/// `reply` with the id of `stanza` and its addresses swapped (RFC 6120
/// sections 8.2.3 and 8.3.1).
pub fn answering(mut reply: Element, stanza: &Element) -> Element {
    if let Some(v) = stanza.attr("id") {
        reply.set_attr("id", Some(v));
    }
    if let Some(v) = stanza.attr("from") {
        reply.set_attr("to", Some(v));
    }
    if let Some(v) = stanza.attr("to") {
        reply.set_attr("from", Some(v));
    }
    reply
}
