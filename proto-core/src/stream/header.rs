//! The stream header (RFC 6120 section 4.7), for each kind of peer.

use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::xml::{escape_into, StreamHeader};

/// The default namespace of a stream, which says who is at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamNs {
    /// A client (`jabber:client`, RFC 6120 section 4.8.3).
    Client,
    /// Another server (`jabber:server`), with the dialback namespace
    /// declared (XEP-0220), as Prosody and ejabberd expect.
    Server,
}

impl StreamNs {
    /// The namespace stanzas of this stream are in.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamNs::Client => ns::CLIENT,
            StreamNs::Server => ns::SERVER,
        }
    }
}

/// Writes our opening `<stream:stream>` into `out`.
pub(super) fn write(
    out: &mut Vec<u8>,
    kind: StreamNs,
    id: &str,
    from: &str,
    to: Option<&str>,
    lang: Option<&str>,
) {
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    if kind == StreamNs::Server {
        out.extend_from_slice(b"' xmlns:db='");
        out.extend_from_slice(ns::DIALBACK.as_bytes());
    }
    out.extend_from_slice(b"' id='");
    escape_into(out, id, true);
    out.extend_from_slice(b"' from='");
    escape_into(out, from, true);
    out.push(b'\'');
    if let Some(to) = to {
        out.extend_from_slice(b" to='");
        escape_into(out, to, true);
        out.push(b'\'');
    }
    out.extend_from_slice(b" version='1.0'");
    if let Some(lang) = lang {
        out.extend_from_slice(b" xml:lang='");
        escape_into(out, lang, true);
        out.push(b'\'');
    }
    out.push(b'>');
}

/// RFC 6120 section 4.7.5: a major version above 1 is not supported; a
/// missing version means a pre-1.0 peer, which this server does not serve.
pub(crate) fn check_version(h: &StreamHeader) -> Result<(), (XE, &'static str)> {
    let major = h
        .version
        .as_deref()
        .and_then(|v| v.split_once('.'))
        .and_then(|(major, _)| major.parse::<u32>().ok());
    if major == Some(1) {
        Ok(())
    } else {
        Err((
            XE::UnsupportedVersion,
            "only XMPP 1.0 streams are supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_per_kind() {
        let mut out = Vec::new();
        write(
            &mut out,
            StreamNs::Client,
            "i1",
            "localhost",
            Some("a@localhost"),
            Some("en"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='i1' from='localhost' to='a@localhost' version='1.0' xml:lang='en'>"
        );
        let mut out = Vec::new();
        write(&mut out, StreamNs::Server, "i2", "kontalk.net", None, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' id='i2' from='kontalk.net' version='1.0'>"
        );
    }

    #[test]
    fn versions() {
        let h = |v: Option<&str>| StreamHeader {
            version: v.map(str::to_owned),
            ..StreamHeader::default()
        };
        assert!(check_version(&h(Some("1.0"))).is_ok());
        assert!(check_version(&h(Some("1.5"))).is_ok());
        assert!(check_version(&h(Some("2.0"))).is_err());
        assert!(check_version(&h(None)).is_err());
    }
}
