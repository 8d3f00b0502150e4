//! The framing of binary OpenPGP data (RFC 9580 section 4.2): where each
//! packet starts and ends, so that a signature can be put into a key
//! without parsing and re-encoding the packets around it. rPGP drops the
//! packets it does not know when it parses a key; splicing the bytes keeps
//! them all.

use std::ops::Range;

/// Packet tags this module looks for.
pub(crate) const TAG_SIGNATURE: u8 = 2;
/// A public key (the primary key of a transferable public key).
pub(crate) const TAG_PUBLIC_KEY: u8 = 6;
/// A trust packet: local to a keyring, may follow a signature.
pub(crate) const TAG_TRUST: u8 = 12;
/// A user id.
pub(crate) const TAG_USER_ID: u8 = 13;

/// One packet in a byte string: its tag, and the ranges of the whole packet
/// and of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPacket {
    /// The packet tag.
    pub(crate) tag: u8,
    /// Header and body.
    pub(crate) whole: Range<usize>,
    /// The body alone.
    pub(crate) body: Range<usize>,
}

/// Why a byte string is not a sequence of whole packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A header's first byte lacks its high bit.
    NotAPacket(usize),
    /// A header or body runs past the end.
    Truncated(usize),
    /// Partial or indeterminate lengths, which key material never uses.
    UnsupportedLength(usize),
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::NotAPacket(at) => write!(f, "no packet header at byte {at}"),
            FramingError::Truncated(at) => write!(f, "packet at byte {at} is truncated"),
            FramingError::UnsupportedLength(at) => write!(
                f,
                "packet at byte {at} has a partial or indeterminate length"
            ),
        }
    }
}

/// Splits binary OpenPGP data into its packets; every byte must belong to one.
pub(crate) fn split(bytes: &[u8]) -> Result<Vec<RawPacket>, FramingError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let p = one(bytes, at)?;
        at = p.whole.end;
        out.push(p);
    }
    Ok(out)
}

fn one(bytes: &[u8], start: usize) -> Result<RawPacket, FramingError> {
    let byte = |i: usize| bytes.get(i).copied().ok_or(FramingError::Truncated(start));
    let b0 = byte(start)?;
    if b0 & 0x80 == 0 {
        return Err(FramingError::NotAPacket(start));
    }
    let (tag, header_len, body_len) = if b0 & 0x40 != 0 {
        // New format: the tag in six bits, then a one-, two- or five-octet length.
        let tag = b0 & 0x3f;
        let o1 = byte(start + 1)?;
        match o1 {
            0..=191 => (tag, 2, usize::from(o1)),
            192..=223 => {
                let o2 = byte(start + 2)?;
                (
                    tag,
                    3,
                    ((usize::from(o1) - 192) << 8) + usize::from(o2) + 192,
                )
            }
            255 => {
                let mut len = 0usize;
                for i in 0..4 {
                    len = (len << 8) | usize::from(byte(start + 2 + i)?);
                }
                (tag, 6, len)
            }
            224..=254 => return Err(FramingError::UnsupportedLength(start)),
        }
    } else {
        // Old format: the tag in four bits, the length type in two.
        let tag = (b0 >> 2) & 0x0f;
        let octets = match b0 & 0x03 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return Err(FramingError::UnsupportedLength(start)),
        };
        let mut len = 0usize;
        for i in 0..octets {
            len = (len << 8) | usize::from(byte(start + 1 + i)?);
        }
        (tag, 1 + octets, len)
    };
    let body_start = start + header_len;
    let end = body_start
        .checked_add(body_len)
        .filter(|&end| end <= bytes.len())
        .ok_or(FramingError::Truncated(start))?;
    Ok(RawPacket {
        tag,
        whole: start..end,
        body: body_start..end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_headers_of_every_length_form() {
        let body_300 = vec![7u8; 300];
        let mut bytes = Vec::new();
        // Old format, tag 6, one-octet length.
        bytes.extend([0x80 | (6 << 2), 3, 1, 2, 3]);
        // Old format, tag 13, two-octet length.
        bytes.extend([0x80 | (13 << 2) | 1, 0x01, 0x2c]);
        bytes.extend(&body_300);
        // New format, tag 2, two-octet length: 300 = ((192 - 192) << 8) + 108 + 192.
        bytes.extend([0xc0 | 2, 192, 108]);
        bytes.extend(&body_300);
        // New format, tag 14, five-octet length.
        bytes.extend([0xc0 | 14, 255, 0, 0, 0, 1, 9]);
        let ps = split(&bytes).unwrap();
        let tags: Vec<u8> = ps.iter().map(|p| p.tag).collect();
        assert_eq!(tags, [6, 13, 2, 14]);
        assert_eq!(&bytes[ps[0].body.clone()], &[1, 2, 3]);
        assert_eq!(ps[1].body.len(), 300);
        assert_eq!(ps[2].body.len(), 300);
        assert_eq!(&bytes[ps[3].body.clone()], &[9]);
        assert_eq!(ps[3].whole.end, bytes.len());
    }

    #[test]
    fn refuses_what_is_not_whole_packets() {
        assert_eq!(split(&[0x01]), Err(FramingError::NotAPacket(0)));
        assert_eq!(split(&[0x98, 5, 1]), Err(FramingError::Truncated(0)));
        assert_eq!(split(&[0x9b, 0]), Err(FramingError::UnsupportedLength(0)));
        assert_eq!(
            split(&[0xc2, 224, 0]),
            Err(FramingError::UnsupportedLength(0))
        );
        assert_eq!(split(&[]), Ok(Vec::new()));
    }
}
