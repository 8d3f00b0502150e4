//! Stream errors (RFC 6120 section 4.9) and stanza errors (section 8.3).

use crate::stanza::{answering, StanzaKind};
use crate::xml::{Element, NS_CLIENT};

/// Namespace of stream error conditions.
pub const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Namespace of stanza error conditions.
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every condition, in RFC order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The element name of the condition.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

conditions! {
    /// Stream error conditions of RFC 6120 section 4.9.3.
    StreamErrorCondition {
        /// 4.9.3.1: XML that cannot be processed.
        BadFormat = "bad-format",
        /// 4.9.3.2: an unsupported or missing namespace prefix.
        BadNamespacePrefix = "bad-namespace-prefix",
        /// 4.9.3.3: a new stream conflicts with this one (resource replaced).
        Conflict = "conflict",
        /// 4.9.3.4: no traffic for too long.
        ConnectionTimeout = "connection-timeout",
        /// 4.9.3.5: the host is no longer served.
        HostGone = "host-gone",
        /// 4.9.3.6: the `to` of the stream header is not served here.
        HostUnknown = "host-unknown",
        /// 4.9.3.7: a stanza lacks a required address.
        ImproperAddressing = "improper-addressing",
        /// 4.9.3.8: the server hit an internal error.
        InternalServerError = "internal-server-error",
        /// 4.9.3.9: a `from` the peer may not use.
        InvalidFrom = "invalid-from",
        /// 4.9.3.10: wrong stream or content namespace.
        InvalidNamespace = "invalid-namespace",
        /// 4.9.3.11: invalid XML for the schema.
        InvalidXml = "invalid-xml",
        /// 4.9.3.12: data before authentication, or failed authentication.
        NotAuthorized = "not-authorized",
        /// 4.9.3.13: XML that is not well-formed.
        NotWellFormed = "not-well-formed",
        /// 4.9.3.14: a local policy (a limit) was broken.
        PolicyViolation = "policy-violation",
        /// 4.9.3.15: a needed remote connection failed.
        RemoteConnectionFailed = "remote-connection-failed",
        /// 4.9.3.16: the stream is reset (security-critical change).
        Reset = "reset",
        /// 4.9.3.17: the server lacks resources for the stream.
        ResourceConstraint = "resource-constraint",
        /// 4.9.3.18: comments, PIs, DTDs or entity references.
        RestrictedXml = "restricted-xml",
        /// 4.9.3.19: the peer should connect to another host.
        SeeOtherHost = "see-other-host",
        /// 4.9.3.20: the server is shutting down.
        SystemShutdown = "system-shutdown",
        /// 4.9.3.21: none of the others.
        UndefinedCondition = "undefined-condition",
        /// 4.9.3.22: an encoding other than UTF-8.
        UnsupportedEncoding = "unsupported-encoding",
        /// 4.9.3.23: a required stream feature is not supported.
        UnsupportedFeature = "unsupported-feature",
        /// 4.9.3.24: an unknown top-level element.
        UnsupportedStanzaType = "unsupported-stanza-type",
        /// 4.9.3.25: a stream version the server does not support.
        UnsupportedVersion = "unsupported-version",
    }
}

conditions! {
    /// Stanza error conditions of RFC 6120 section 8.3.3.
    StanzaErrorCondition {
        /// 8.3.3.1
        BadRequest = "bad-request",
        /// 8.3.3.2
        Conflict = "conflict",
        /// 8.3.3.3
        FeatureNotImplemented = "feature-not-implemented",
        /// 8.3.3.4
        Forbidden = "forbidden",
        /// 8.3.3.5
        Gone = "gone",
        /// 8.3.3.6
        InternalServerError = "internal-server-error",
        /// 8.3.3.7
        ItemNotFound = "item-not-found",
        /// 8.3.3.8
        JidMalformed = "jid-malformed",
        /// 8.3.3.9
        NotAcceptable = "not-acceptable",
        /// 8.3.3.10
        NotAllowed = "not-allowed",
        /// 8.3.3.11
        NotAuthorized = "not-authorized",
        /// 8.3.3.12
        PolicyViolation = "policy-violation",
        /// 8.3.3.13
        RecipientUnavailable = "recipient-unavailable",
        /// 8.3.3.14
        Redirect = "redirect",
        /// 8.3.3.15
        RegistrationRequired = "registration-required",
        /// 8.3.3.16
        RemoteServerNotFound = "remote-server-not-found",
        /// 8.3.3.17
        RemoteServerTimeout = "remote-server-timeout",
        /// 8.3.3.18
        ResourceConstraint = "resource-constraint",
        /// 8.3.3.19
        ServiceUnavailable = "service-unavailable",
        /// 8.3.3.20
        SubscriptionRequired = "subscription-required",
        /// 8.3.3.21
        UndefinedCondition = "undefined-condition",
        /// 8.3.3.22
        UnexpectedRequest = "unexpected-request",
    }
}

conditions! {
    /// SASL failure conditions of RFC 6120 section 6.5.
    SaslCondition {
        /// 6.5.1: the exchange was aborted by the client.
        Aborted = "aborted",
        /// 6.5.2: the account is disabled.
        AccountDisabled = "account-disabled",
        /// 6.5.3: the credentials have expired.
        CredentialsExpired = "credentials-expired",
        /// 6.5.4: the mechanism needs an encrypted stream.
        EncryptionRequired = "encryption-required",
        /// 6.5.5: the data is not valid base64.
        IncorrectEncoding = "incorrect-encoding",
        /// 6.5.6: the authorization identity is not allowed.
        InvalidAuthzid = "invalid-authzid",
        /// 6.5.7: a mechanism the server does not offer.
        InvalidMechanism = "invalid-mechanism",
        /// 6.5.8: the request is malformed.
        MalformedRequest = "malformed-request",
        /// 6.5.9: the mechanism is weaker than the server allows.
        MechanismTooWeak = "mechanism-too-weak",
        /// 6.5.10: the credentials are wrong.
        NotAuthorized = "not-authorized",
        /// 6.5.11: a temporary error on the server's side.
        TemporaryAuthFailure = "temporary-auth-failure",
    }
}

impl StanzaErrorCondition {
    /// The error `type` RFC 6120 section 8.3.3 gives for the condition.
    pub fn error_type(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest
            | JidMalformed
            | NotAcceptable
            | PolicyViolation
            | Redirect
            | FeatureNotImplemented => "modify",
            Conflict | Forbidden | ItemNotFound | NotAllowed | NotAuthorized
            | RegistrationRequired | SubscriptionRequired | Gone => "cancel",
            InternalServerError | ResourceConstraint | RecipientUnavailable
            | RemoteServerTimeout => "wait",
            RemoteServerNotFound | ServiceUnavailable | UndefinedCondition | UnexpectedRequest => {
                "cancel"
            }
        }
    }
}

/// Builds the error reply to `stanza` (RFC 6120 section 8.3.1): addresses
/// swapped, same id, the original payload kept for messages and presences.
///
/// Returns `None` when `stanza` is itself an error (an error is never
/// answered with an error), or for an iq result.
pub fn error_reply(
    stanza: &Element,
    condition: StanzaErrorCondition,
    text: Option<&str>,
) -> Option<Element> {
    let ty = stanza.attr("type");
    let iq = StanzaKind::from_name(&stanza.name) == Some(StanzaKind::Iq);
    if ty == Some("error") || (iq && ty == Some("result")) {
        return None;
    }
    let mut reply = answering(Element::new(NS_CLIENT, &stanza.name), stanza);
    reply.set_attr("type", Some("error"));
    if !iq {
        reply.children = stanza.children.clone();
    }
    let mut err = Element::new(NS_CLIENT, "error").with_attr("type", condition.error_type());
    err = err.with_child(Element::new(NS_STANZAS, condition.as_str()));
    if let Some(text) = text {
        err = err.with_child(Element::new(NS_STANZAS, "text").with_text(text));
    }
    Some(reply.with_child(err))
}

/// The `<error/>` child of an error stanza built by [`error_reply`], for a
/// protocol that wants another error type than its condition's usual one
/// (RFC 6120 section 8.3.2 lets the type vary) or an application condition.
pub fn error_child(reply: &mut Element) -> Option<&mut Element> {
    reply.children.iter_mut().rev().find_map(|n| match n {
        crate::xml::Node::Element(e) if e.name == "error" => Some(e),
        _ => None,
    })
}

/// Builds `<stream:error>` with the condition and an optional text.
pub fn stream_error(condition: StreamErrorCondition, text: Option<&str>) -> Vec<u8> {
    let mut out = b"<stream:error>".to_vec();
    Element::new(NS_STREAMS, condition.as_str()).write_to(&mut out, "");
    if let Some(text) = text {
        Element::new(NS_STREAMS, "text")
            .with_text(text)
            .write_to(&mut out, "");
    }
    out.extend_from_slice(b"</stream:error>");
    out
}

/// `<stream:error>` with `see-other-host` naming where to connect instead
/// (RFC 6120 section 4.9.3.19: the address is the condition's text).
pub fn see_other_host(address: &str) -> Vec<u8> {
    let mut out = b"<stream:error>".to_vec();
    Element::new(NS_STREAMS, "see-other-host")
        .with_text(address)
        .write_to(&mut out, "");
    out.extend_from_slice(b"</stream:error>");
    out
}

/// What a peer's `<stream:error>` says, for the log: its condition and
/// its text, if any (`host-unknown (not this server's host)`).
pub fn describe_stream_error(el: &Element) -> String {
    let cond = el
        .elements()
        .find(|c| c.ns == NS_STREAMS && c.name != "text")
        .map_or("undefined-condition", |c| c.name.as_str());
    match el
        .elements()
        .find(|c| c.ns == NS_STREAMS && c.name == "text")
    {
        Some(t) => format!("{cond} ({})", t.text()),
        None => cond.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_condition_serializes() {
        assert_eq!(StreamErrorCondition::ALL.len(), 25);
        for c in StreamErrorCondition::ALL {
            let xml = String::from_utf8(stream_error(*c, None)).unwrap();
            assert!(xml.contains(&format!("<{} xmlns='{NS_STREAMS}'/>", c.as_str())));
        }
        assert_eq!(StanzaErrorCondition::ALL.len(), 22);
    }

    #[test]
    fn errors_are_not_answered_with_errors() {
        let msg = Element::new(NS_CLIENT, "message")
            .with_attr("from", "a@x/r")
            .with_attr("to", "b@x")
            .with_attr("id", "m1")
            .with_child(Element::new(NS_CLIENT, "body").with_text("hi"));
        let reply = error_reply(&msg, StanzaErrorCondition::ServiceUnavailable, None).unwrap();
        assert_eq!(
            reply.to_xml(NS_CLIENT),
            "<message id='m1' to='a@x/r' from='b@x' type='error'><body>hi</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        );
        assert!(error_reply(&reply, StanzaErrorCondition::ServiceUnavailable, None).is_none());
        let result = Element::new(NS_CLIENT, "iq").with_attr("type", "result");
        assert!(error_reply(&result, StanzaErrorCondition::BadRequest, None).is_none());
    }
}
