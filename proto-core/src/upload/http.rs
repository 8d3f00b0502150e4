//! The HTTP side of file upload, decided without I/O: the host reads a
//! request head, hands it to [`parse_head`], looks up the slot of its
//! token ([`token_of`]), and [`put`] or [`get`] says what to answer; the
//! response heads are written here too. The host only moves the bytes of
//! the file between the socket and the disk.
//!
//! What a PUT must be (XEP-0363 section 5): to a slot not used yet, before
//! its time is up, with exactly the slot's size as `Content-Length` and
//! its content type; success is `200 OK` for a slot asked for in version
//! 0.2 (the Kontalk client counts nothing else) and `201 Created` for the
//! current version. A GET or HEAD serves a complete file that has not
//! expired, with its type, its length, a single byte range (RFC 9110
//! section 14) when asked, and cache headers; an unknown token is 403 for
//! a PUT and 404 for a GET.

use crate::store::{UploadSlot, UploadState};

/// The longest request head taken, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields taken in one request.
pub const MAX_HEADERS: usize = 32;

/// The method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Fetch a file.
    Get,
    /// A file's headers only.
    Head,
    /// Upload a file to its slot.
    Put,
    /// A browser's CORS preflight.
    Options,
    /// Anything else (answered 405).
    Other,
}

/// A request head, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The request target (path and query), as sent.
    pub path: String,
    /// `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// `Range`, if sent.
    pub range: Option<String>,
    /// Whether the client waits for `100 Continue` before its body.
    pub expect_continue: bool,
    /// Whether the connection stays open after the answer (HTTP/1.1
    /// unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub keep_alive: bool,
    /// Whether the body comes with a `Transfer-Encoding` (refused: a PUT
    /// must say its length).
    pub transfer_encoding: bool,
    /// The head's length in bytes: the body starts there.
    pub len: usize,
}

/// A refusal, as an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 400: the request is malformed, or its length is not the slot's.
    BadRequest,
    /// 403: a PUT to a token that is unknown, used, or whose time is up.
    Forbidden,
    /// 404: no file (unknown token, not uploaded, or expired).
    NotFound,
    /// 405: a method the service does not serve.
    MethodNotAllowed,
    /// 408: a request head that took too long to come.
    RequestTimeout,
    /// 409: the slot's file is being uploaded or is there already.
    Conflict,
    /// 411: a PUT without `Content-Length`.
    LengthRequired,
    /// 413: a body longer than the slot's size.
    PayloadTooLarge,
    /// 415: a content type other than the slot's.
    UnsupportedMediaType,
    /// 416: a range outside the file (of this length).
    RangeNotSatisfiable(u64),
    /// 431: a head over [`MAX_HEAD`] or [`MAX_HEADERS`].
    HeadersTooLarge,
    /// 500: the server failed (the disk, the store).
    Internal,
    /// 503: the server is busy (too many connections).
    Unavailable,
}

impl Status {
    /// The status code and its reason phrase.
    pub fn code(self) -> (u16, &'static str) {
        match self {
            Status::BadRequest => (400, "Bad Request"),
            Status::Forbidden => (403, "Forbidden"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::Conflict => (409, "Conflict"),
            Status::LengthRequired => (411, "Length Required"),
            Status::PayloadTooLarge => (413, "Content Too Large"),
            Status::UnsupportedMediaType => (415, "Unsupported Media Type"),
            Status::RangeNotSatisfiable(_) => (416, "Range Not Satisfiable"),
            Status::HeadersTooLarge => (431, "Request Header Fields Too Large"),
            Status::Internal => (500, "Internal Server Error"),
            Status::Unavailable => (503, "Service Unavailable"),
        }
    }
}

/// Reads a request head from the start of `buf`: `Ok(None)` while it is
/// incomplete (and under [`MAX_HEAD`]).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Status> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(Status::HeadersTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Status::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Status::HeadersTooLarge),
        Err(_) => return Err(Status::BadRequest),
    };
    let method = match req.method.unwrap_or_default() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let path = req.path.unwrap_or_default().to_owned();
    let mut head = Head {
        method,
        path,
        content_length: None,
        content_type: None,
        range: None,
        expect_continue: false,
        keep_alive: req.version == Some(1),
        transfer_encoding: false,
        len,
    };
    for field in req.headers.iter() {
        let value = std::str::from_utf8(field.value)
            .map_err(|_| Status::BadRequest)?
            .trim();
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Status::BadRequest);
            }
            let n: u64 = value.parse().map_err(|_| Status::BadRequest)?;
            // RFC 9112 section 6.3: differing lengths are an error.
            if head.content_length.is_some_and(|m| m != n) {
                return Err(Status::BadRequest);
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("range") {
            head.range = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
    }
    Ok(Some(head))
}

/// The token a request target names (`/upload/<token>/<file name>`, a
/// query ignored): 40 lowercase hex digits, or `None`.
pub fn token_of(path: &str) -> Option<&str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix(super::PATH_PREFIX)?;
    let (token, name) = rest.split_once('/')?;
    let hex = token.len() == 2 * super::TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && !name.is_empty()).then_some(token)
}

/// Whether `s` is a media type as a header can carry it: `type/subtype`
/// of token characters, with parameters of printable ASCII.
pub fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let (essence, params) = s.split_once(';').unwrap_or((s, ""));
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    s.len() <= super::MAX_CONTENT_TYPE
        && token(ty)
        && token(sub)
        && params.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Two media types are the same one: type and subtype case-insensitively,
/// parameters with the spaces around them dropped.
fn same_media_type(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> (String, Vec<String>) {
        let mut parts = s.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim().to_ascii_lowercase(), v.trim()),
                None => p.to_ascii_lowercase(),
            })
            .collect();
        (essence, params)
    };
    norm(a) == norm(b)
}

/// What a PUT to `slot` (`None`: its token is unknown) may do at `now`:
/// the body's length, to be read whole and kept, or the refusal.
pub fn put(head: &Head, slot: Option<&UploadSlot>, now: u64) -> Result<u64, Status> {
    let slot = slot.ok_or(Status::Forbidden)?;
    match slot.state {
        UploadState::Reserved if now <= slot.put_by => {}
        UploadState::Reserved => return Err(Status::Forbidden),
        UploadState::Uploading | UploadState::Stored => return Err(Status::Conflict),
    }
    if head.transfer_encoding {
        return Err(Status::LengthRequired);
    }
    let length = head.content_length.ok_or(Status::LengthRequired)?;
    if length > slot.size {
        return Err(Status::PayloadTooLarge);
    }
    if length != slot.size {
        return Err(Status::BadRequest);
    }
    if !slot.content_type.is_empty() {
        let sent = head.content_type.as_deref().unwrap_or_default();
        if !same_media_type(sent, &slot.content_type) {
            return Err(Status::UnsupportedMediaType);
        }
    } else if head
        .content_type
        .as_deref()
        .is_some_and(|t| !is_media_type(t))
    {
        return Err(Status::UnsupportedMediaType);
    }
    Ok(length)
}

/// The content type a PUT's file is served with: the slot's, else the
/// PUT's, else `application/octet-stream`.
pub fn stored_type(head: &Head, slot: &UploadSlot) -> String {
    if !slot.content_type.is_empty() {
        return slot.content_type.clone();
    }
    head.content_type
        .clone()
        .filter(|t| is_media_type(t))
        .unwrap_or_else(|| "application/octet-stream".to_owned())
}

/// The answer to a PUT that kept its file: 200 for a slot of version 0.2
/// (the Kontalk client fails on anything else), 201 for the current one.
pub fn put_done(legacy: bool, keep_alive: bool) -> Vec<u8> {
    let status = if legacy { "200 OK" } else { "201 Created" };
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n");
    common_fields(&mut out, keep_alive);
    out.push_str("\r\n");
    out.into_bytes()
}

/// What a GET or HEAD serves: a byte range of the file (all of it unless
/// a range was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serve {
    /// First byte.
    pub start: u64,
    /// Bytes from `start`.
    pub len: u64,
    /// The file's length.
    pub total: u64,
    /// Whether it is a range (206) rather than the whole file (200).
    pub partial: bool,
}

/// What a GET or HEAD of `slot` (`None`: unknown token) serves at `now`.
pub fn get(head: &Head, slot: Option<&UploadSlot>, now: u64) -> Result<Serve, Status> {
    let slot = slot
        .filter(|s| s.state == UploadState::Stored && now < s.expires)
        .ok_or(Status::NotFound)?;
    let total = slot.size;
    let whole = Serve {
        start: 0,
        len: total,
        total,
        partial: false,
    };
    match head.range.as_deref().map(|r| byte_range(r, total)) {
        None | Some(Range::Ignored) => Ok(whole),
        Some(Range::Bytes(start, end)) => Ok(Serve {
            start,
            len: end - start + 1,
            total,
            partial: true,
        }),
        Some(Range::Unsatisfiable) => Err(Status::RangeNotSatisfiable(total)),
    }
}

/// A `Range` field read against a file of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// First and last byte, inclusive.
    Bytes(u64, u64),
    /// No byte of the file is in it.
    Unsatisfiable,
    /// Not one byte range (several, another unit, malformed): RFC 9110
    /// section 14.2 lets the server send the whole file.
    Ignored,
}

fn byte_range(field: &str, total: u64) -> Range {
    let Some(spec) = field.trim().strip_prefix("bytes=") else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if total == 0 => Range::Unsatisfiable,
            Some(n) => Range::Bytes(total.saturating_sub(n), total - 1),
            None => Range::Ignored,
        },
        (a, b) => {
            let Some(a) = num(a) else {
                return Range::Ignored;
            };
            let b = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match b {
                None => Range::Ignored,
                Some(b) if b < a => Range::Ignored,
                Some(_) if a >= total => Range::Unsatisfiable,
                Some(b) => Range::Bytes(a, b.min(total - 1)),
            }
        }
    }
}

/// The head of a GET's or HEAD's answer that serves `serve` of `slot`
/// at `now`: its type, length, range, and cache fields (the file never
/// changes: cached until it expires).
pub fn file_head(slot: &UploadSlot, serve: &Serve, now: u64, keep_alive: bool) -> Vec<u8> {
    use std::fmt::Write;
    let mut out = String::with_capacity(512);
    if serve.partial {
        let _ = write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {}-{}/{}\r\n",
            serve.start,
            serve.start + serve.len - 1,
            serve.total
        );
    } else {
        out.push_str("HTTP/1.1 200 OK\r\n");
    }
    let ty = if slot.content_type.is_empty() {
        "application/octet-stream"
    } else {
        &slot.content_type
    };
    let _ = write!(
        out,
        "Content-Type: {ty}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\
         Cache-Control: public, max-age={}, immutable\r\nETag: \"{}\"\r\n",
        serve.len,
        slot.expires.saturating_sub(now),
        slot.token
    );
    // The name as RFC 6266 and RFC 8187 carry it; media shown inline,
    // anything else saved.
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| ty.to_ascii_lowercase().starts_with(p));
    let name =
        percent_encoding::utf8_percent_encode(&slot.filename, percent_encoding::NON_ALPHANUMERIC);
    let _ = write!(
        out,
        "Content-Disposition: {}; filename*=UTF-8''{name}\r\n",
        if inline { "inline" } else { "attachment" }
    );
    common_fields(&mut out, keep_alive);
    out.push_str("\r\n");
    out.into_bytes()
}

/// `100 Continue`, for a PUT that asked for it and may send its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The answer to a browser's CORS preflight (XEP-0363 section 5: web
/// clients upload from another origin).
pub fn preflight(keep_alive: bool) -> Vec<u8> {
    let mut out = String::from(
        "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Methods: GET, HEAD, PUT, OPTIONS\r\n\
         Access-Control-Allow-Headers: Content-Type\r\nAccess-Control-Max-Age: 86400\r\n",
    );
    common_fields(&mut out, keep_alive);
    out.push_str("\r\n");
    out.into_bytes()
}

/// A refusal's answer, with a line of text saying why.
pub fn refusal(status: Status, keep_alive: bool) -> Vec<u8> {
    use std::fmt::Write;
    let (code, reason) = status.code();
    let body = format!("{code} {reason}\n");
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    match status {
        Status::RangeNotSatisfiable(total) => {
            let _ = write!(out, "Content-Range: bytes */{total}\r\n");
        }
        Status::MethodNotAllowed => out.push_str("Allow: GET, HEAD, PUT, OPTIONS\r\n"),
        _ => {}
    }
    common_fields(&mut out, keep_alive);
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// The fields of every answer: the connection's fate, and what keeps a
/// browser from running what it fetched (a file is data, never a page).
fn common_fields(out: &mut String, keep_alive: bool) {
    out.push_str(
        "Access-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; sandbox\r\n",
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(state: UploadState) -> UploadSlot {
        UploadSlot {
            token: "ab".repeat(20),
            username: "alice".into(),
            filename: "my photo.jpg".into(),
            size: 10,
            content_type: "image/jpeg".into(),
            put_by: 100,
            expires: 1000,
            state,
            legacy: false,
        }
    }

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_head_is_read_whole_or_waited_for_or_refused() {
        let text = "PUT /upload/x/y HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\
                    Content-Type: image/jpeg\r\nExpect: 100-continue\r\n\r\nBODY";
        let h = head(text);
        assert_eq!(h.method, Method::Put);
        assert_eq!(h.content_length, Some(10));
        assert!(h.expect_continue && h.keep_alive);
        assert_eq!(h.len, text.find("BODY").unwrap());
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        assert_eq!(
            parse_head(b"GET /\0 HTTP/1.1\r\n\r\n"),
            Err(Status::BadRequest)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(long.as_bytes()), Err(Status::HeadersTooLarge));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X{i}: y\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(many.as_bytes()), Err(Status::HeadersTooLarge));
        let two = "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_head(two.as_bytes()), Err(Status::BadRequest));
        let neg = "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_head(neg.as_bytes()), Err(Status::BadRequest));
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn only_a_well_formed_token_is_looked_up() {
        let t = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(token_of(&format!("/upload/{t}/a.jpg")), Some(t));
        assert_eq!(token_of(&format!("/upload/{t}/a.jpg?x=1")), Some(t));
        assert_eq!(token_of(&format!("/upload/{t}/")), None);
        assert_eq!(token_of(&format!("/upload/{}/a", t.to_uppercase())), None);
        assert_eq!(token_of(&format!("/upload/{t}0/a")), None);
        assert_eq!(token_of(&format!("/other/{t}/a")), None);
        assert_eq!(token_of("/upload/../a"), None);
    }

    #[test]
    fn a_put_must_be_the_slots_size_and_type_in_its_time() {
        let ok = head("PUT / HTTP/1.1\r\nContent-Length: 10\r\nContent-Type: Image/JPEG\r\n\r\n");
        let s = slot(UploadState::Reserved);
        assert_eq!(put(&ok, Some(&s), 50), Ok(10));
        assert_eq!(put(&ok, Some(&s), 100), Ok(10));
        assert_eq!(put(&ok, Some(&s), 101), Err(Status::Forbidden));
        assert_eq!(put(&ok, None, 50), Err(Status::Forbidden));
        assert_eq!(
            put(&ok, Some(&slot(UploadState::Stored)), 50),
            Err(Status::Conflict)
        );
        assert_eq!(
            put(&ok, Some(&slot(UploadState::Uploading)), 50),
            Err(Status::Conflict)
        );
        let big = head("PUT / HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: image/jpeg\r\n\r\n");
        assert_eq!(put(&big, Some(&s), 50), Err(Status::PayloadTooLarge));
        let small = head("PUT / HTTP/1.1\r\nContent-Length: 9\r\nContent-Type: image/jpeg\r\n\r\n");
        assert_eq!(put(&small, Some(&s), 50), Err(Status::BadRequest));
        let none = head("PUT / HTTP/1.1\r\nContent-Type: image/jpeg\r\n\r\n");
        assert_eq!(put(&none, Some(&s), 50), Err(Status::LengthRequired));
        let chunked = head(
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: image/jpeg\r\n\r\n",
        );
        assert_eq!(put(&chunked, Some(&s), 50), Err(Status::LengthRequired));
        let png = head("PUT / HTTP/1.1\r\nContent-Length: 10\r\nContent-Type: image/png\r\n\r\n");
        assert_eq!(put(&png, Some(&s), 50), Err(Status::UnsupportedMediaType));
        let untyped = head("PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            put(&untyped, Some(&s), 50),
            Err(Status::UnsupportedMediaType)
        );
        // A slot asked for without a type takes the PUT's, or none.
        let mut any = slot(UploadState::Reserved);
        any.content_type.clear();
        assert_eq!(put(&png, Some(&any), 50), Ok(10));
        assert_eq!(stored_type(&png, &any), "image/png");
        assert_eq!(put(&untyped, Some(&any), 50), Ok(10));
        assert_eq!(stored_type(&untyped, &any), "application/octet-stream");
    }

    #[test]
    fn a_get_serves_a_stored_file_until_it_expires_with_one_range() {
        let s = slot(UploadState::Stored);
        let get_with = |range: &str| {
            let text = if range.is_empty() {
                "GET / HTTP/1.1\r\n\r\n".to_owned()
            } else {
                format!("GET / HTTP/1.1\r\nRange: {range}\r\n\r\n")
            };
            get(&head(&text), Some(&s), 500)
        };
        let whole = Serve {
            start: 0,
            len: 10,
            total: 10,
            partial: false,
        };
        assert_eq!(get_with(""), Ok(whole));
        let part = |start, len| {
            Ok(Serve {
                start,
                len,
                total: 10,
                partial: true,
            })
        };
        assert_eq!(get_with("bytes=2-5"), part(2, 4));
        assert_eq!(get_with("bytes=2-"), part(2, 8));
        assert_eq!(get_with("bytes=8-100"), part(8, 2));
        assert_eq!(get_with("bytes=-3"), part(7, 3));
        assert_eq!(get_with("bytes=-30"), part(0, 10));
        assert_eq!(get_with("bytes=10-"), Err(Status::RangeNotSatisfiable(10)));
        assert_eq!(get_with("bytes=-0"), Err(Status::RangeNotSatisfiable(10)));
        assert_eq!(get_with("bytes=0-1,4-5"), Ok(whole));
        assert_eq!(get_with("bytes=5-2"), Ok(whole));
        assert_eq!(get_with("items=0-1"), Ok(whole));
        let plain = head("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(get(&plain, Some(&s), 1000), Err(Status::NotFound));
        assert_eq!(get(&plain, None, 5), Err(Status::NotFound));
        for state in [UploadState::Reserved, UploadState::Uploading] {
            assert_eq!(get(&plain, Some(&slot(state)), 5), Err(Status::NotFound));
        }
    }

    #[test]
    fn the_answers_say_what_each_client_counts() {
        let s = String::from_utf8(put_done(true, true)).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        let s = String::from_utf8(put_done(false, false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 201 Created\r\n"), "{s}");
        assert!(s.contains("\r\nConnection: close\r\n"), "{s}");
        let slot = slot(UploadState::Stored);
        let serve = Serve {
            start: 2,
            len: 4,
            total: 10,
            partial: true,
        };
        let s = String::from_utf8(file_head(&slot, &serve, 400, true)).unwrap();
        for field in [
            "HTTP/1.1 206 Partial Content\r\n",
            "\r\nContent-Range: bytes 2-5/10\r\n",
            "\r\nContent-Type: image/jpeg\r\n",
            "\r\nContent-Length: 4\r\n",
            "\r\nCache-Control: public, max-age=600, immutable\r\n",
            "\r\nContent-Disposition: inline; filename*=UTF-8''my%20photo%2Ejpg\r\n",
            "\r\nX-Content-Type-Options: nosniff\r\n",
        ] {
            assert!(s.contains(field), "{field:?} in {s}");
        }
        assert!(s.ends_with("\r\n\r\n"));
        let s = String::from_utf8(refusal(Status::RangeNotSatisfiable(10), true)).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 416 Range Not Satisfiable\r\n"),
            "{s}"
        );
        assert!(s.contains("\r\nContent-Range: bytes */10\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n416 Range Not Satisfiable\n"), "{s}");
    }

    #[test]
    fn media_types_are_checked_and_compared_as_rfc_9110_says() {
        assert!(is_media_type("image/jpeg"));
        assert!(is_media_type("text/plain; charset=utf-8"));
        assert!(!is_media_type("image"));
        assert!(!is_media_type("image/jpeg\r\nX: y"));
        assert!(!is_media_type("im age/jpeg"));
        // Found by the fuzzer: what a header cannot carry, even at an end.
        assert!(!is_media_type("image/png\r"));
        assert!(!is_media_type(" image/png"));
        assert!(!is_media_type("text/plain; charset=utf-8\r"));
        assert!(same_media_type(
            "Text/Plain; Charset=utf-8",
            "text/plain;charset=utf-8"
        ));
        assert!(!same_media_type("text/plain", "text/html"));
    }
}
