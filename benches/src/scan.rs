//! Cheap scanners for what a receiving session gets, so that the generator
//! spends far less per message than a server does: no XML parsing on the
//! relay path, only a search for end tags and markers across chunks.

/// Counts `</message>` end tags (delivered messages) and the ends of error
/// elements (`</error>` of a stanza error, `</stream:error>`) in a byte
/// stream read in arbitrary chunks.
#[derive(Default)]
pub struct EndTagCounter {
    tail: Vec<u8>,
}

const MESSAGE_END: &[u8] = b"</message";
const ERROR_END: &[u8] = b"</error";
const STREAM_ERROR_END: &[u8] = b"</stream:error";
const KEEP: usize = 16;

impl EndTagCounter {
    /// A counter at the start of a stream.
    pub fn new() -> EndTagCounter {
        EndTagCounter::default()
    }

    /// Scans one chunk; returns (messages, errors) completed in it.
    pub fn feed(&mut self, chunk: &[u8]) -> (u64, u64) {
        let (mut messages, mut errors) = (0, 0);
        let mut from = 0;
        while let Some(off) = chunk[from..].iter().position(|&b| b == b'>') {
            let i = from + off;
            if self.before(chunk, i, MESSAGE_END) {
                messages += 1;
            } else if self.before(chunk, i, ERROR_END) || self.before(chunk, i, STREAM_ERROR_END) {
                errors += 1;
            }
            from = i + 1;
        }
        let keep = chunk.len().min(KEEP);
        if keep < KEEP {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(KEEP);
            self.tail.drain(..excess);
        } else {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        }
        (messages, errors)
    }

    /// Whether `pat` ends right before `chunk[i]`, looking into the previous
    /// chunk's tail when needed.
    fn before(&self, chunk: &[u8], i: usize, pat: &[u8]) -> bool {
        if i >= pat.len() {
            return &chunk[i - pat.len()..i] == pat;
        }
        let from_tail = pat.len() - i;
        self.tail.len() >= from_tail
            && self.tail[self.tail.len() - from_tail..] == pat[..from_tail]
            && chunk[..i] == pat[from_tail..]
    }
}

/// Marker in a message body before the 20 digits of its send time.
pub const STAMP_MARK: &[u8] = b"~~";
/// Digits of a send time (nanoseconds since the generator's epoch).
pub const STAMP_DIGITS: usize = 20;

/// Finds send-time stamps (`~~` and 20 digits) in a byte stream read in
/// arbitrary chunks.
#[derive(Default)]
pub struct StampScanner {
    buf: Vec<u8>,
}

impl StampScanner {
    /// A scanner at the start of a stream.
    pub fn new() -> StampScanner {
        StampScanner::default()
    }

    /// Scans one chunk, calling `found` with each complete stamp.
    pub fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(u64)) {
        self.buf.extend_from_slice(chunk);
        let len = self.buf.len();
        let need = STAMP_MARK.len() + STAMP_DIGITS;
        let mut done = 0;
        let mut i = 0;
        while let Some(off) = self.buf[i..].iter().position(|&b| b == STAMP_MARK[0]) {
            let p = i + off;
            if p + need > len {
                break;
            }
            let digits = &self.buf[p + STAMP_MARK.len()..p + need];
            if self.buf[p..].starts_with(STAMP_MARK) && digits.iter().all(u8::is_ascii_digit) {
                let v = digits
                    .iter()
                    .fold(0u64, |a, d| a * 10 + u64::from(d - b'0'));
                found(v);
                done = p + need;
                i = done;
            } else {
                i = p + 1;
                done = i;
            }
        }
        // Keep only what may begin an incomplete stamp.
        let keep_from = done.max(len.saturating_sub(need - 1));
        self.buf.drain(..keep_from);
    }
}

/// Writes `v` as 20 zero-padded digits.
pub fn write_stamp(out: &mut [u8], mut v: u64) {
    for slot in out[..STAMP_DIGITS].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// What [`SmScanner`] finds in a server's stream: each top-level element
/// as it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmEvent {
    /// A `<message/>`: the value of its first stamp (`~~` and 20 digits in
    /// its text) and whether it has an `<error/>` child.
    Message {
        /// The stamp's value, if it has one.
        stamp: Option<u64>,
        /// An `<error/>` child: a stanza error.
        error: bool,
    },
    /// A `<presence/>` or `<iq/>` (with or without an `<error/>` child).
    Stanza {
        /// An `<error/>` child: a stanza error.
        error: bool,
    },
    /// A stream-management ack request, `<r/>`.
    Request,
    /// A stream-management ack, `<a h/>`: its `h` (`None` when missing or
    /// not a 32-bit number).
    Ack(Option<u32>),
    /// Any other top-level element (`stream:error`, `failed`, ...): its name.
    Other(String),
    /// `</stream:stream>`.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmState {
    Text,
    Lt,
    Name,
    Tag,
    Quote(u8),
    EndTag,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Message,
    Stanza,
    Request,
    Ack,
    Other,
}

const NAME_MAX: usize = 32;
const TAG_MAX: usize = 256;

/// A byte-level scanner of what a stream-management client receives: it
/// tracks element depth (quotes, self-closing tags and end tags; no
/// entities, no names beyond the top level's and `error`) and reports every
/// top-level element as it ends, in a byte stream read in arbitrary chunks.
/// That is all a client needs to count stanzas for its `h`, answer `<r/>`,
/// read `<a h/>` and check the stamps of messages, at a few nanoseconds per
/// byte and no allocation per stanza.
pub struct SmScanner {
    state: SmState,
    depth: u32,
    name: [u8; NAME_MAX],
    name_len: usize,
    self_closing: bool,
    top: Top,
    /// The name of the current top-level element (for [`SmEvent::Other`]).
    top_name: [u8; NAME_MAX],
    top_name_len: usize,
    top_error: bool,
    /// The attributes of a top-level `<a/>` (for its `h`).
    tag: Vec<u8>,
    capture: bool,
    tildes: u8,
    digits: u8,
    value: u64,
    stamp: Option<u64>,
}

impl Default for SmScanner {
    fn default() -> Self {
        SmScanner::new()
    }
}

impl SmScanner {
    /// A scanner inside a stream (after its header).
    pub fn new() -> SmScanner {
        SmScanner {
            state: SmState::Text,
            depth: 1,
            name: [0; NAME_MAX],
            name_len: 0,
            self_closing: false,
            top: Top::Other,
            top_name: [0; NAME_MAX],
            top_name_len: 0,
            top_error: false,
            tag: Vec::with_capacity(TAG_MAX),
            capture: false,
            tildes: 0,
            digits: 0,
            value: 0,
            stamp: None,
        }
    }

    /// Scans one chunk, calling `found` for each top-level element that ends in it.
    pub fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(SmEvent)) {
        let mut i = 0;
        while i < chunk.len() {
            // Where nothing but one byte matters (text outside a stamp,
            // attribute values, end tags), skip to it.
            let skip_to = match self.state {
                SmState::Text
                    if !(self.top == Top::Message && self.depth >= 2 && self.stamp.is_none()) =>
                {
                    Some(b'<')
                }
                SmState::Quote(q) if !self.capture => Some(q),
                SmState::EndTag | SmState::Skip => Some(b'>'),
                _ => None,
            };
            if let Some(want) = skip_to {
                match chunk[i..].iter().position(|&b| b == want) {
                    Some(off) => i += off,
                    None => return,
                }
            }
            let b = chunk[i];
            i += 1;
            match self.state {
                SmState::Text => {
                    if b == b'<' {
                        self.state = SmState::Lt;
                        self.tildes = 0;
                        self.digits = 0;
                    } else {
                        self.stamp_byte(b);
                    }
                }
                SmState::Lt => match b {
                    b'/' => self.state = SmState::EndTag,
                    b'?' | b'!' => self.state = SmState::Skip,
                    _ => {
                        self.state = SmState::Name;
                        self.name[0] = b;
                        self.name_len = 1;
                    }
                },
                SmState::Name => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.start_name();
                        self.state = SmState::Tag;
                    }
                    b'/' => {
                        self.start_name();
                        self.self_closing = true;
                        self.state = SmState::Tag;
                    }
                    b'>' => {
                        self.start_name();
                        self.end_start_tag(&mut found);
                    }
                    _ => {
                        if self.name_len < NAME_MAX {
                            self.name[self.name_len] = b;
                        }
                        self.name_len += 1;
                    }
                },
                SmState::Tag => {
                    match b {
                        b'>' => {
                            self.end_start_tag(&mut found);
                            continue;
                        }
                        b'/' => self.self_closing = true,
                        b'\'' | b'"' => {
                            self.self_closing = false;
                            self.state = SmState::Quote(b);
                        }
                        b' ' | b'\t' | b'\r' | b'\n' => {}
                        _ => self.self_closing = false,
                    }
                    self.capture_byte(b);
                }
                SmState::Quote(q) => {
                    if b == q {
                        self.state = SmState::Tag;
                    }
                    self.capture_byte(b);
                }
                SmState::EndTag => {
                    self.state = SmState::Text;
                    self.depth = self.depth.saturating_sub(1);
                    match self.depth {
                        1 => self.top_done(&mut found),
                        0 => found(SmEvent::End),
                        _ => {}
                    }
                }
                SmState::Skip => self.state = SmState::Text,
            }
        }
    }

    fn stamp_byte(&mut self, b: u8) {
        if b == STAMP_MARK[0] && self.digits == 0 {
            self.tildes = (self.tildes + 1).min(STAMP_MARK.len() as u8);
        } else if self.tildes as usize == STAMP_MARK.len() && b.is_ascii_digit() {
            if self.digits == 0 {
                self.value = 0;
            }
            self.value = self
                .value
                .wrapping_mul(10)
                .wrapping_add(u64::from(b - b'0'));
            self.digits += 1;
            if self.digits as usize == STAMP_DIGITS {
                self.stamp = Some(self.value);
                self.tildes = 0;
                self.digits = 0;
            }
        } else {
            self.tildes = u8::from(b == STAMP_MARK[0]);
            self.digits = 0;
        }
    }

    #[inline]
    fn capture_byte(&mut self, b: u8) {
        if self.capture && self.tag.len() < TAG_MAX {
            self.tag.push(b);
        }
    }

    /// The name of a start tag is complete.
    fn start_name(&mut self) {
        self.self_closing = false;
        let name = &self.name[..self.name_len.min(NAME_MAX)];
        if self.depth == 1 {
            self.top = match name {
                b"message" => Top::Message,
                b"presence" | b"iq" => Top::Stanza,
                b"r" => Top::Request,
                b"a" => Top::Ack,
                _ => Top::Other,
            };
            self.top_name = self.name;
            self.top_name_len = self.name_len.min(NAME_MAX);
            self.top_error = false;
            self.stamp = None;
            self.capture = self.top == Top::Ack;
            self.tag.clear();
            self.tag.push(b' ');
        } else if name == b"error" {
            self.top_error = true;
        }
    }

    fn end_start_tag(&mut self, found: &mut impl FnMut(SmEvent)) {
        self.state = SmState::Text;
        self.capture = false;
        if !self.self_closing {
            self.depth += 1;
        } else if self.depth == 1 {
            self.top_done(found);
        }
        self.self_closing = false;
    }

    /// A top-level element ended.
    fn top_done(&mut self, found: &mut impl FnMut(SmEvent)) {
        found(match self.top {
            Top::Message => SmEvent::Message {
                stamp: self.stamp,
                error: self.top_error,
            },
            Top::Stanza => SmEvent::Stanza {
                error: self.top_error,
            },
            Top::Request => SmEvent::Request,
            Top::Ack => SmEvent::Ack(attr_u32(&self.tag, b'h')),
            Top::Other => SmEvent::Other(
                String::from_utf8_lossy(&self.top_name[..self.top_name_len]).into_owned(),
            ),
        });
        self.stamp = None;
        self.top = Top::Other;
    }
}

/// The value of a one-letter attribute in the attributes of a tag (which
/// start with a space), as a 32-bit number.
fn attr_u32(tag: &[u8], name: u8) -> Option<u32> {
    let mut i = 0;
    while i + 3 < tag.len() {
        if tag[i].is_ascii_whitespace() && tag[i + 1] == name {
            let mut j = i + 2;
            while j < tag.len() && tag[j].is_ascii_whitespace() {
                j += 1;
            }
            if tag.get(j) == Some(&b'=') {
                j += 1;
                while j < tag.len() && tag[j].is_ascii_whitespace() {
                    j += 1;
                }
                let q = *tag.get(j)?;
                if q != b'\'' && q != b'"' {
                    return None;
                }
                let rest = &tag[j + 1..];
                let end = rest.iter().position(|&b| b == q)?;
                return std::str::from_utf8(&rest[..end]).ok()?.parse().ok();
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_split(data: &[u8], at: usize) -> (u64, u64) {
        let mut c = EndTagCounter::new();
        let (a, b) = c.feed(&data[..at]);
        let (x, y) = c.feed(&data[at..]);
        (a + x, b + y)
    }

    #[test]
    fn counts_messages_and_errors_across_any_split() {
        let data = b"<presence/><message to='a'><body>x&gt;</body></message>\
            <message type='error'><error type='cancel'><service-unavailable/></error></message>\
            <message><body>y</body></message><stream:error><conflict/></stream:error>";
        for at in 0..=data.len() {
            assert_eq!(count_split(data, at), (3, 2), "split at {at}");
        }
        let mut c = EndTagCounter::new();
        let mut total = 0;
        for b in data.iter() {
            total += c.feed(std::slice::from_ref(b)).0;
        }
        assert_eq!(total, 3);
    }

    #[test]
    fn stamps_across_any_split() {
        let mut msg = b"<message><body>~~".to_vec();
        let mut digits = [0u8; STAMP_DIGITS];
        write_stamp(&mut digits, 1_234_567_890_123);
        msg.extend_from_slice(&digits);
        msg.extend_from_slice(b"xx~y</body></message>");
        let data = [msg.clone(), msg.clone(), msg].concat();
        for at in 0..=data.len() {
            let mut s = StampScanner::new();
            let mut got = Vec::new();
            s.feed(&data[..at], |v| got.push(v));
            s.feed(&data[at..], |v| got.push(v));
            assert_eq!(got, vec![1_234_567_890_123; 3], "split at {at}");
        }
    }

    fn sm_events(data: &[u8], at: usize) -> Vec<SmEvent> {
        let mut s = SmScanner::new();
        let mut got = Vec::new();
        s.feed(&data[..at], |e| got.push(e));
        s.feed(&data[at..], |e| got.push(e));
        got
    }

    #[test]
    fn sm_scanner_reports_top_level_elements_across_any_split() {
        let mut stamp = [0u8; STAMP_DIGITS];
        write_stamp(&mut stamp, 42_000_000_000_017);
        let stamp = std::str::from_utf8(&stamp).expect("digits");
        let data = format!(
            " <presence from='b0@localhost/load' to='b0@localhost/load'/>\
             <message from='b0@x/y' to=\"b1@x/y\" type='chat' id='a>b/'><body>~x~~1~~{stamp}\
             Lorem &amp; ipsum</body><stanza-id xmlns='urn:xmpp:sid:0' by='b1@x' id='s1'/></message>\
             <r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='4294967295'/>\n\
             <a h = \"17\" xmlns='urn:xmpp:sm:3'></a><a xmlns='urn:xmpp:sm:3'/>\
             <message type='error'><body>no stamp</body><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>\
             <iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>\
             <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
             </stream:stream>"
        );
        let want = vec![
            SmEvent::Stanza { error: false },
            SmEvent::Message {
                stamp: Some(42_000_000_000_017),
                error: false,
            },
            SmEvent::Request,
            SmEvent::Ack(Some(u32::MAX)),
            SmEvent::Ack(Some(17)),
            SmEvent::Ack(None),
            SmEvent::Message {
                stamp: None,
                error: true,
            },
            SmEvent::Stanza { error: false },
            SmEvent::Other("stream:error".into()),
            SmEvent::End,
        ];
        let data = data.as_bytes();
        for at in 0..=data.len() {
            assert_eq!(sm_events(data, at), want, "split at {at}");
        }
        let mut s = SmScanner::new();
        let mut got = Vec::new();
        for b in data {
            s.feed(std::slice::from_ref(b), |e| got.push(e));
        }
        assert_eq!(got, want);
    }
}
