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
}
