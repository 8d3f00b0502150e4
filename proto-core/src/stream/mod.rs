//! What every stream has, whoever is at the other end (a client, a foreign
//! server, a server of our network): framing under the limits, TLS in
//! either direction, the stream header, restarts, stream errors, the
//! closing handshake and the output budget.
//!
//! A [`Stream`] knows bytes, XML events and TLS; it knows nothing of users,
//! rosters or routing. What runs on top of it (client negotiation in
//! [`crate::c2s`], later server links) decides what the events mean.

pub(crate) mod header;

use std::io::{Read, Write};

use crate::error::{stream_error, StreamErrorCondition as XE};
use crate::xml::{StreamEvent, StreamParser};
use crate::Limits;

pub use header::StreamNs;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting for the (first or restarted) stream header.
    Header,
    /// Header exchanged; negotiating or exchanging stanzas.
    Open,
}

/// What decrypting a read produced.
#[derive(Debug, Default)]
pub(crate) struct TlsRead {
    /// The plaintext, for the XML parser.
    pub(crate) plain: Vec<u8>,
    /// The peer closed TLS, or TLS failed (any alert is already queued).
    pub(crate) closed: bool,
}

/// One XML stream over one transport connection.
pub(crate) struct Stream {
    ns: StreamNs,
    stage: Stage,
    parser: StreamParser,
    /// Boxed: a plaintext stream does not pay for it.
    tls: Option<Box<rustls::Connection>>,
    /// Bytes ready for the socket: plaintext before TLS, TLS records
    /// (handshake, alerts, and application data encrypted at take time).
    out: Vec<u8>,
    /// On TLS: plaintext queued for the peer and not encrypted yet. It is
    /// encrypted when the runtime takes the output, so that what was not
    /// taken can still be withdrawn ([`withdraw`](Self::withdraw))
    /// without cutting the TLS record sequence.
    plain: Vec<u8>,
    /// Plaintext bytes queued since the stream began ([`write`](Self::write)).
    written: u64,
    /// Of those, the ones the runtime has taken.
    taken: u64,
    /// Just switched to TLS with STARTTLS: whitespace before the first TLS
    /// record is tolerated (some clients end `<starttls/>` with a newline).
    tls_fresh: bool,
    /// Our stream header went out (a stream error needs one before it).
    header_sent: bool,
}

impl Stream {
    /// A new stream in namespace `ns`; `tls` is set for direct TLS.
    pub(crate) fn new(ns: StreamNs, limits: &Limits, tls: Option<rustls::Connection>) -> Stream {
        Stream {
            ns,
            stage: Stage::Header,
            parser: StreamParser::new(limits),
            tls: tls.map(Box::new),
            out: Vec::new(),
            plain: Vec::new(),
            written: 0,
            taken: 0,
            tls_fresh: false,
            header_sent: false,
        }
    }

    /// Whether TLS is on.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The certificate the peer presented in the TLS handshake, if any.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        let certs = self.tls.as_ref()?.peer_certificates()?;
        certs.first().map(|c| c.as_ref())
    }

    /// The whole chain the peer presented (leaf first), if any.
    pub(crate) fn peer_chain(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.tls
            .as_ref()
            .and_then(|t| t.peer_certificates())
            .unwrap_or(&[])
    }

    /// Whether the header exchange is done (stanzas may flow).
    pub(crate) fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }

    /// Bytes queued for the socket (plaintext not yet encrypted included).
    pub(crate) fn pending_output(&self) -> usize {
        self.out.len() + self.plain.len()
    }

    /// Plaintext bytes queued since the stream began: a stanza queued now
    /// ends at this position once [`write`](Self::write) returns.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Plaintext bytes the runtime has taken: the stanzas that end at or
    /// before this position are out of the core's hands.
    pub(crate) fn taken(&self) -> u64 {
        self.taken
    }

    /// Moves the queued bytes into `buf` (appending), encrypting the queued
    /// plaintext first; returns how many.
    pub(crate) fn take_output(&mut self, buf: &mut Vec<u8>) -> usize {
        self.encrypt();
        self.taken = self.written;
        take_into(&mut self.out, buf)
    }

    /// Withdraws the plaintext queued for the peer from [`taken`](Self::taken)
    /// up to position `upto` (at most what was written), and returns it: it
    /// never reaches the peer. This is clean at any stanza boundary, TLS or
    /// not, because TLS encrypts at take time; TLS records already made
    /// (handshake, alerts) stay, and so does what was written after `upto`.
    pub(crate) fn withdraw(&mut self, upto: u64) -> Vec<u8> {
        let n = upto.min(self.written).saturating_sub(self.taken) as usize;
        let unsent = if self.tls.is_some() {
            &mut self.plain
        } else {
            &mut self.out
        };
        let n = n.min(unsent.len());
        let bytes: Vec<u8> = unsent.drain(..n).collect();
        self.taken += n as u64;
        bytes
    }

    /// Encrypts the queued plaintext into TLS records.
    fn encrypt(&mut self) {
        if self.plain.is_empty() {
            return;
        }
        if let Some(tls) = self.tls.as_mut() {
            let _ = tls.writer().write_all(&self.plain);
            self.plain.clear();
            flush_tls(tls, &mut self.out);
        }
    }

    /// Feeds ciphertext through TLS; handshake records and alerts for the
    /// peer are queued as output.
    pub(crate) fn read_tls(&mut self, mut data: &[u8]) -> TlsRead {
        let mut read = TlsRead::default();
        if self.tls_fresh {
            let skip = data.iter().take_while(|b| b" \t\r\n".contains(b)).count();
            data = &data[skip..];
            self.tls_fresh = data.is_empty();
        }
        let tls = self.tls.as_mut().expect("read_tls on a TLS stream");
        while !data.is_empty() {
            if let Err(e) = tls.read_tls(&mut data) {
                log::debug!("TLS read failed: {e}");
                read.closed = true;
                break;
            }
            match tls.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = read.plain.len();
                        read.plain.resize(start + n, 0);
                        let got = tls.reader().read(&mut read.plain[start..]).unwrap_or(0);
                        read.plain.truncate(start + got);
                    }
                    if state.peer_has_closed() {
                        read.closed = true;
                    }
                }
                Err(e) => {
                    log::debug!("TLS error: {e}");
                    // The alert goes out, then the connection is dropped.
                    read.closed = true;
                    break;
                }
            }
        }
        flush_tls(tls, &mut self.out);
        read
    }

    /// The next stream event in `input` (advancing it), under the limits.
    pub(crate) fn next_event(&mut self, input: &mut &[u8]) -> Result<Option<StreamEvent>, XE> {
        self.parser.next(input)
    }

    /// Queues bytes for the peer (encrypted when taken, once TLS is on).
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        match self.tls {
            Some(_) => self.plain.extend_from_slice(bytes),
            None => self.out.extend_from_slice(bytes),
        }
    }

    /// Our stream header (RFC 6120 section 4.7) with a new `id`, for
    /// [`write`](Self::write); `to` is the peer's `from`, if it gave one.
    pub(crate) fn header_bytes(&mut self, id: &str, from: &str, to: Option<&str>) -> Vec<u8> {
        let mut header = Vec::with_capacity(256);
        header::write(&mut header, self.ns, id, from, to, Some("en"));
        self.header_sent = true;
        header
    }

    /// The header exchange is done and stanzas may flow.
    pub(crate) fn set_open(&mut self) {
        self.stage = Stage::Open;
    }

    /// A stream restart (RFC 6120 sections 5.3.3 and 6.4.6): a new parser
    /// from the next byte on, and a new header exchange.
    pub(crate) fn restart(&mut self, limits: &Limits) {
        self.parser = StreamParser::new(limits);
        self.stage = Stage::Header;
    }

    /// STARTTLS: the reply already went out in plaintext; from the next byte
    /// in either direction everything is TLS, and the stream restarts.
    pub(crate) fn start_tls(&mut self, tls: rustls::Connection, limits: &Limits) {
        self.tls = Some(Box::new(tls));
        self.tls_fresh = true;
        self.restart(limits);
    }

    /// Whether our stream header has not gone out yet (a stream error
    /// needs one before it).
    pub(crate) fn needs_header(&self) -> bool {
        !self.header_sent
    }

    /// The bytes that end the stream with a stream error (RFC 6120 section
    /// 4.9) and our closing tag, for [`write`](Self::write). `header_id` is
    /// for a stream whose header has not gone out: a minimal one goes first.
    pub(crate) fn error_bytes(
        &mut self,
        header_id: Option<&str>,
        from: &str,
        cond: XE,
        text: Option<&str>,
    ) -> Vec<u8> {
        self.end_bytes(header_id, from, &stream_error(cond, text))
    }

    /// [`error_bytes`](Self::error_bytes) with the `<stream:error>`
    /// element given as it is.
    pub(crate) fn end_bytes(
        &mut self,
        header_id: Option<&str>,
        from: &str,
        error: &[u8],
    ) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(256);
        if let Some(id) = header_id.filter(|_| !self.header_sent) {
            self.header_sent = true;
            header::write(&mut bytes, self.ns, id, from, None, None);
        }
        bytes.extend_from_slice(error);
        bytes.extend_from_slice(CLOSE);
        bytes
    }

    /// The transport ends: TLS `close_notify`, and every byte still queued
    /// for the peer.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.encrypt();
        self.taken = self.written;
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            flush_tls(tls, &mut self.out);
        }
        core::mem::take(&mut self.out)
    }

    /// Channel-binding data of type `tls-exporter` (RFC 9266), on TLS only.
    pub(crate) fn tls_exporter(&self, label: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 32];
        self.tls
            .as_ref()?
            .export_keying_material(&mut out, label, None)
            .ok()?;
        Some(out)
    }
}

/// Our closing tag (RFC 6120 section 4.4).
pub(crate) const CLOSE: &[u8] = b"</stream:stream>";

/// A new rustls state whose buffering the core bounds itself
/// ([`Limits::output_budget`]).
pub(crate) fn unbounded(mut tls: rustls::Connection) -> rustls::Connection {
    tls.set_buffer_limit(None);
    tls
}

fn flush_tls(tls: &mut rustls::Connection, out: &mut Vec<u8>) {
    while tls.wants_write() {
        if tls.write_tls(out).is_err() {
            break;
        }
    }
}

/// Moves `from` into `buf` (appending; a swap when `buf` is empty).
pub(crate) fn take_into(from: &mut Vec<u8>, buf: &mut Vec<u8>) -> usize {
    let n = from.len();
    if buf.is_empty() {
        core::mem::swap(buf, from);
    } else {
        buf.append(from);
    }
    n
}
