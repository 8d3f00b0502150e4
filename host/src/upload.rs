//! The listener of file upload (XEP-0363): HTTPS (or plain HTTP behind a
//! proxy) on its own port, beside the event loop of whichever runtime runs
//! the core. The core hands out the slots; here the files move between the
//! sockets and `<data_dir>/uploads/`, and every answer is decided by
//! [`proto_core::upload::http`]. Files never pass through the core.
//!
//! One thread per connection (blocking I/O, bounded by
//! `upload.max_connections`, each read and write under a timeout), one
//! that accepts, one that deletes expired files. A PUT writes
//! `<token>.part`, syncs it and renames it to `<token>` before the slot is
//! marked stored and the client gets its success: a file is served only
//! whole, and an upload cut short leaves nothing behind (its slot may be
//! used again while its time lasts). A start clears what a stop cut short.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use kontalkd_store::Store;
use proto_core::upload::http::{self, Head, Method, Status};
use proto_core::UploadSlot;

use crate::config::UploadFile;
use crate::runtime::{unix_now, Error};

/// How long a connection may stay silent (or refuse to read) before it is closed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired files are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Every this many sweeps, files without a slot (their account was
/// deleted) are looked for too.
const ORPHANS_EVERY: u32 = 60;
/// Bytes moved per read or write of a file.
const CHUNK: usize = 64 * 1024;
/// How long a request head may take to come whole (a client sending a
/// byte now and then holds no thread for longer).
const HEAD_DEADLINE: Duration = Duration::from_secs(30);

/// The running listener; stopped when dropped.
pub struct Upload {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

struct Shared {
    /// The listener's own connection to the database.
    store: Mutex<Store>,
    dir: PathBuf,
    /// `None`: plain HTTP.
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    active: AtomicUsize,
    max_connections: usize,
    /// Connections by address, and the most one address may have (0: no limit).
    per_ip: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    max_per_ip: usize,
    stopped: AtomicBool,
}

/// An address's place among the connections, given back when dropped.
struct IpSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

/// A place for one more connection from `ip`, unless it has its most.
fn take_ip(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<IpSlot> {
    let mut map = shared.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    let n = map.entry(ip).or_insert(0);
    if shared.max_per_ip != 0 && *n >= shared.max_per_ip {
        return None;
    }
    *n += 1;
    Some(IpSlot {
        shared: shared.clone(),
        ip,
    })
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, token: &str) -> PathBuf {
        self.dir.join(token)
    }

    fn part(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{token}.part"))
    }
}

impl Upload {
    /// Opens the store's database again for the listener, clears what a
    /// stop cut short, deletes what expired, binds `file.listener` and
    /// starts serving. `tls`: the HTTPS configuration (used when
    /// `file.tls`); `max_per_ip`: the most connections from one address
    /// (0: no limit; the server's `limits.max_connections_per_ip`).
    pub fn start(
        file: &UploadFile,
        data_dir: &Path,
        tls: Arc<rustls::ServerConfig>,
        max_per_ip: usize,
    ) -> Result<Upload, Error> {
        let dir = data_dir.join("uploads");
        crate::datadir::create_private_dir(&dir)
            .map_err(|e| format!("cannot create the upload directory {}: {e}", dir.display()))?;
        let mut store = Store::open(data_dir)?;
        let interrupted = store.uploads_interrupted()?;
        let listener = TcpListener::bind(file.listener).map_err(|e| {
            format!(
                "cannot listen for uploads on {}: {e} (upload.listen, upload.port; \
                 upload.enabled = false turns file upload off)",
                file.listener
            )
        })?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            dir,
            tls: RwLock::new(file.tls.then_some(tls)),
            active: AtomicUsize::new(0),
            max_connections: file.max_connections,
            per_ip: Mutex::new(std::collections::HashMap::new()),
            max_per_ip,
            stopped: AtomicBool::new(false),
        });
        let parts = clear_parts(&shared.dir);
        if interrupted + parts > 0 {
            log::info!(
                "upload: {interrupted} upload(s) cut short by the last stop, {parts} partial file(s) deleted"
            );
        }
        sweep(&shared, unix_now(), true);
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("upload-accept".into())
            .spawn(move || accept(&accepting, &listener))?;
        let sweeping = shared.clone();
        std::thread::Builder::new()
            .name("upload-sweep".into())
            .spawn(move || {
                let mut n = 0u32;
                while !sweeping.stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(SWEEP_EVERY);
                    n = n.wrapping_add(1);
                    sweep(&sweeping, unix_now(), n.is_multiple_of(ORPHANS_EVERY));
                }
            })?;
        log::info!(
            "upload: serving files on {addr} ({})",
            if file.tls { "HTTPS" } else { "plain HTTP" }
        );
        Ok(Upload { shared, addr })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A renewed certificate: connections from now on get it (when the
    /// listener does HTTPS).
    pub fn set_tls(&self, tls: Arc<rustls::ServerConfig>) {
        let mut current = self
            .shared
            .tls
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.is_some() {
            *current = Some(tls);
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then lets the listener go.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Deletes the partial files a stop left (at start: no PUT runs).
fn clear_parts(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Deletes the files of slots that stopped counting at `now`, and with
/// `orphans`, the files no slot names (their account is gone).
fn sweep(shared: &Shared, now: u64, orphans: bool) {
    let gone = match shared.store().expire_uploads(now) {
        Ok(gone) => gone,
        Err(e) => return log::error!("upload: cannot delete expired files: {e}"),
    };
    for token in &gone {
        remove_if_there(&shared.file(token));
    }
    if !gone.is_empty() {
        log::info!(
            "upload: {} expired slot(s) and their files deleted",
            gone.len()
        );
    }
    if !orphans {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&shared.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".part") {
            continue;
        }
        match shared.store().upload_slot(&name) {
            Ok(None) => {
                log::info!("upload: deleting {name}, a file no slot names");
                remove_if_there(&entry.path());
            }
            Ok(Some(_)) => {}
            Err(e) => return log::error!("upload: cannot look for orphaned files: {e}"),
        }
    }
}

fn remove_if_there(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!("upload: cannot delete {}: {e}", path.display()),
    }
}

fn accept(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let tcp = match stream {
            Ok(tcp) => tcp,
            Err(e) => {
                log::warn!("upload: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let tls = shared
            .tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            if tls.is_none() {
                let _ = (&tcp).write_all(&http::refusal(Status::Unavailable, false));
            }
            continue;
        }
        // Here, in the order the connections came: the first ones of an
        // address get its places.
        let peer = tcp.peer_addr().ok();
        let Some(slot) = peer.and_then(|p| take_ip(shared, p.ip())) else {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            log::debug!("upload: {peer:?} has its most connections; refused");
            if tls.is_none() {
                let _ = (&tcp).write_all(&http::refusal(Status::Unavailable, false));
            }
            continue;
        };
        let conn = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("upload-conn".into())
            .spawn(move || {
                if let Err(e) = connection(&conn, tcp, tls) {
                    log::debug!("upload: connection from {peer:?}: {e}");
                }
                drop(slot);
                conn.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            log::error!("upload: cannot start a connection's thread: {e}");
        }
    }
}

fn connection(
    shared: &Shared,
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    match tls {
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            let served = requests(shared, &mut stream);
            stream.conn.send_close_notify();
            let _ = stream.flush();
            served
        }
        None => requests(shared, &mut { tcp }),
    }
}

/// Serves the requests of one connection, one after the other.
fn requests(shared: &Shared, s: &mut (impl Read + Write)) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let deadline = std::time::Instant::now() + HEAD_DEADLINE;
        let head = loop {
            match http::parse_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(status) => {
                    s.write_all(&http::refusal(status, false))?;
                    return s.flush();
                }
            }
            if std::time::Instant::now() > deadline {
                s.write_all(&http::refusal(Status::RequestTimeout, false))?;
                return s.flush();
            }
            let n = match s.read(&mut chunk) {
                Ok(n) => n,
                // Between requests, a client may just go (without TLS's close_notify).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && buf.is_empty() => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..head.len);
        let keep_alive = match head.method {
            Method::Put => put(shared, s, &head, &mut buf, &mut chunk)?,
            Method::Get | Method::Head => get(shared, s, &head, &mut chunk)?,
            Method::Options => {
                s.write_all(&http::preflight(head.keep_alive))?;
                head.keep_alive
            }
            Method::Other => {
                s.write_all(&http::refusal(Status::MethodNotAllowed, false))?;
                false
            }
        };
        s.flush()?;
        // A body that was not read would be taken for the next request.
        let unread = head.content_length.unwrap_or(0) > 0 && head.method != Method::Put;
        if !keep_alive || unread || head.transfer_encoding {
            return Ok(());
        }
    }
}

/// The slot of a request's token, `Err` when the store failed.
fn slot_of(shared: &Shared, head: &Head) -> Result<Option<UploadSlot>, ()> {
    let Some(token) = http::token_of(&head.path) else {
        return Ok(None);
    };
    shared.store().upload_slot(token).map_err(|e| {
        log::error!("upload: cannot look up a slot: {e}");
    })
}

/// A PUT: `buf` holds what came after its head. Whether the connection
/// may go on.
fn put(
    shared: &Shared,
    s: &mut (impl Read + Write),
    head: &Head,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> io::Result<bool> {
    let now = unix_now();
    let Ok(slot) = slot_of(shared, head) else {
        s.write_all(&http::refusal(Status::Internal, false))?;
        return Ok(false);
    };
    let length = match http::put(head, slot.as_ref(), now) {
        Ok(length) => length,
        Err(status) => {
            s.write_all(&http::refusal(status, false))?;
            return Ok(false);
        }
    };
    let slot = slot.expect("put() refuses a missing slot");
    match shared.store().upload_begin(&slot.token, now) {
        Ok(true) => {}
        Ok(false) => {
            s.write_all(&http::refusal(Status::Conflict, false))?;
            return Ok(false);
        }
        Err(e) => {
            log::error!("upload: cannot start an upload: {e}");
            s.write_all(&http::refusal(Status::Internal, false))?;
            return Ok(false);
        }
    }
    let part = shared.part(&slot.token);
    let received = (|| {
        if head.expect_continue && (buf.len() as u64) < length {
            s.write_all(http::CONTINUE).map_err(Cut::Client)?;
            s.flush().map_err(Cut::Client)?;
        }
        receive(s, buf, length, &part, chunk)?;
        std::fs::rename(&part, shared.file(&slot.token)).map_err(Cut::Disk)?;
        std::fs::File::open(&shared.dir)
            .and_then(|d| d.sync_all())
            .map_err(Cut::Disk)
    })();
    let stored = received.and_then(|()| {
        shared
            .store()
            .upload_stored(&slot.token, &http::stored_type(head, &slot))
            .map_err(|e| Cut::Store(e.to_string()))
    });
    match stored {
        Ok(()) => {
            log::info!(
                "upload: {} stored {:?} ({} bytes)",
                slot.username,
                slot.filename,
                slot.size
            );
            s.write_all(&http::put_done(slot.legacy, head.keep_alive))?;
            Ok(head.keep_alive)
        }
        Err(cut) => {
            remove_if_there(&part);
            remove_if_there(&shared.file(&slot.token));
            if let Err(e) = shared.store().upload_failed(&slot.token) {
                log::error!("upload: cannot give a slot back after a failed upload: {e}");
            }
            match cut {
                Cut::Client(e) => {
                    log::info!(
                        "upload: {}'s upload of {:?} cut short ({e}); nothing kept",
                        slot.username,
                        slot.filename
                    );
                    Ok(false)
                }
                Cut::Disk(e) => {
                    log::error!("upload: cannot write {}: {e}", part.display());
                    s.write_all(&http::refusal(Status::Internal, false))?;
                    Ok(false)
                }
                Cut::Store(e) => {
                    log::error!("upload: cannot mark an upload stored: {e}");
                    s.write_all(&http::refusal(Status::Internal, false))?;
                    Ok(false)
                }
            }
        }
    }
}

/// Why a PUT's body was not kept.
enum Cut {
    /// The client went or stopped sending.
    Client(io::Error),
    /// The disk refused it.
    Disk(io::Error),
    /// The store could not mark it.
    Store(String),
}

/// Reads `length` bytes of body (those in `buf` first; what follows them
/// stays there for the next request) into `part`, synced to disk.
fn receive(
    s: &mut impl Read,
    buf: &mut Vec<u8>,
    length: u64,
    part: &Path,
    chunk: &mut [u8],
) -> Result<(), Cut> {
    let mut file = std::fs::File::create(part).map_err(Cut::Disk)?;
    let first = (buf.len() as u64).min(length) as usize;
    file.write_all(&buf[..first]).map_err(Cut::Disk)?;
    buf.drain(..first);
    let mut left = length - first as u64;
    while left > 0 {
        let want = (chunk.len() as u64).min(left) as usize;
        let n = s.read(&mut chunk[..want]).map_err(Cut::Client)?;
        if n == 0 {
            return Err(Cut::Client(io::ErrorKind::UnexpectedEof.into()));
        }
        file.write_all(&chunk[..n]).map_err(Cut::Disk)?;
        left -= n as u64;
    }
    file.sync_all().map_err(Cut::Disk)
}

/// A GET or HEAD. Whether the connection may go on.
fn get(shared: &Shared, s: &mut impl Write, head: &Head, chunk: &mut [u8]) -> io::Result<bool> {
    let now = unix_now();
    let Ok(slot) = slot_of(shared, head) else {
        s.write_all(&http::refusal(Status::Internal, head.keep_alive))?;
        return Ok(head.keep_alive);
    };
    let serve = match http::get(head, slot.as_ref(), now) {
        Ok(serve) => serve,
        Err(status) => {
            s.write_all(&http::refusal(status, head.keep_alive))?;
            return Ok(head.keep_alive);
        }
    };
    let slot = slot.expect("get() refuses a missing slot");
    let path = shared.file(&slot.token);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) => {
            log::error!("upload: cannot read {}: {e}", path.display());
            s.write_all(&http::refusal(Status::NotFound, head.keep_alive))?;
            return Ok(head.keep_alive);
        }
    };
    s.write_all(&http::file_head(&slot, &serve, now, head.keep_alive))?;
    if head.method == Method::Head {
        return Ok(head.keep_alive);
    }
    file.seek(SeekFrom::Start(serve.start))?;
    let mut left = serve.len;
    while left > 0 {
        let want = (chunk.len() as u64).min(left) as usize;
        let n = file.read(&mut chunk[..want])?;
        if n == 0 {
            // The file is shorter than its slot says: the answer cannot be
            // completed; the connection ends so the client sees it.
            log::error!("upload: {} is shorter than its slot", path.display());
            return Ok(false);
        }
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(head.keep_alive)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::time::Duration;

    use kontalkd_store::Store;
    use proto_core::{StoreReply, StoreRequest, StoreToken, UploadSlot, UploadState};

    use super::{sweep, Upload};
    use crate::config::UploadFile;
    use crate::runtime::unix_now;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A listener (plain HTTP) on a fresh data directory with an account.
    fn listener(name: &str) -> (Dir, Store, Upload) {
        listener_with(name, 0)
    }

    /// The same, with at most `max_per_ip` connections from one address.
    fn listener_with(name: &str, max_per_ip: usize) -> (Dir, Store, Upload) {
        let dir =
            std::env::temp_dir().join(format!("kontalkd-upload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir).unwrap();
        store.add_user("alice", "secret").unwrap();
        let identity = crate::tls::load_or_create_identity(&crate::FileConfig {
            data_dir: dir.clone(),
            ..crate::FileConfig::default()
        })
        .unwrap();
        let tls = proto_core::TlsConfigs::new(&identity).unwrap();
        let file = UploadFile {
            listener: "127.0.0.1:0".parse().unwrap(),
            tls: false,
            max_connections: 8,
        };
        let upload = Upload::start(&file, &dir, tls.https, max_per_ip).unwrap();
        (Dir(dir), store, upload)
    }

    fn reserve(store: &mut Store, token: &str, size: u64, ty: &str, legacy: bool) -> UploadSlot {
        let now = unix_now();
        let slot = UploadSlot {
            token: token.repeat(40 / token.len()),
            username: "alice".into(),
            filename: "photo.jpg".into(),
            size,
            content_type: ty.into(),
            put_by: now + 60,
            expires: now + 3600,
            state: UploadState::Reserved,
            legacy,
        };
        let reply = store.execute_batch(vec![(
            StoreToken(1),
            StoreRequest::ReserveUpload {
                slot: slot.clone(),
                quota: 0,
                now,
            },
        )]);
        assert_eq!(reply[0].1, StoreReply::UploadReserved(None));
        slot
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    fn exchange(upload: &Upload, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(upload.local_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A GET of `token`'s file that closes the connection after its answer.
    fn get_request(token: &str) -> Vec<u8> {
        format!("GET /upload/{token}/x HTTP/1.1\r\nConnection: close\r\n\r\n").into_bytes()
    }

    fn put_request(slot: &UploadSlot, ty: &str, body: &[u8], close: bool) -> Vec<u8> {
        let mut r = format!(
            "PUT /upload/{}/photo.jpg HTTP/1.1\r\nHost: x\r\nContent-Type: {ty}\r\n\
             Content-Length: {}\r\n{}\r\n",
            slot.token,
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn files(dir: &Dir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.0.join("uploads"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_put_keeps_the_file_whole_and_a_get_serves_it_on_one_connection() {
        let (dir, mut store, upload) = listener("roundtrip");
        let slot = reserve(&mut store, "a1", 11, "image/jpeg", true);
        // The PUT, then on the same connection a GET, a range and a HEAD.
        let mut requests = put_request(&slot, "image/jpeg", b"hello world", false);
        let path = format!("/upload/{}/photo.jpg", slot.token);
        requests.extend(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").bytes());
        requests.extend(format!("GET {path} HTTP/1.1\r\nRange: bytes=6-\r\n\r\n").bytes());
        requests.extend(format!("HEAD {path} HTTP/1.1\r\nConnection: close\r\n\r\n").bytes());
        let out = exchange(&upload, &requests);
        let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 4, "{out}");
        assert!(answers[0].starts_with("200 OK\r\n"), "{out}");
        assert!(answers[1].starts_with("200 OK\r\n"), "{out}");
        assert!(answers[1].ends_with("\r\n\r\nhello world"), "{out}");
        assert!(answers[2].starts_with("206 Partial Content\r\n"), "{out}");
        assert!(
            answers[2].contains("Content-Range: bytes 6-10/11\r\n"),
            "{out}"
        );
        assert!(answers[2].ends_with("\r\n\r\nworld"), "{out}");
        assert!(answers[3].contains("Content-Length: 11\r\n"), "{out}");
        assert!(
            answers[3].ends_with("\r\n\r\n"),
            "a HEAD has no body: {out}"
        );
        assert_eq!(files(&dir), [slot.token.as_str()]);
        assert_eq!(
            std::fs::read(dir.0.join("uploads").join(&slot.token)).unwrap(),
            b"hello world"
        );
        // Once only; the current version's PUT is 201.
        let out = exchange(
            &upload,
            &put_request(&slot, "image/jpeg", b"hello world", true),
        );
        assert!(out.starts_with("HTTP/1.1 409 "), "{out}");
        let slot = reserve(&mut store, "b2", 3, "", false);
        let out = exchange(&upload, &put_request(&slot, "text/plain", b"abc", true));
        assert!(out.starts_with("HTTP/1.1 201 Created\r\n"), "{out}");
        let out = exchange(&upload, &get_request(&slot.token));
        assert!(out.contains("Content-Type: text/plain\r\n"), "{out}");
    }

    #[test]
    fn refused_and_broken_uploads_leave_no_file() {
        let (dir, mut store, upload) = listener("refused");
        let slot = reserve(&mut store, "c3", 5, "image/png", false);
        for (request, status) in [
            (put_request(&slot, "image/png", b"toolong", true), "413"),
            (put_request(&slot, "image/png", b"shrt", true), "400"),
            (put_request(&slot, "image/jpeg", b"right", true), "415"),
        ] {
            let out = exchange(&upload, &request);
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{status}: {out}"
            );
        }
        let forged = UploadSlot {
            token: "d4".repeat(20),
            ..slot.clone()
        };
        let out = exchange(&upload, &put_request(&forged, "image/png", b"right", true));
        assert!(out.starts_with("HTTP/1.1 403 "), "{out}");
        let out = exchange(&upload, &get_request(&forged.token));
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        let out = exchange(
            &upload,
            b"GET /etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        let out = exchange(&upload, b"DELETE /upload/x/y HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
        let out = exchange(&upload, b"\x16\x03\x01garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        // Cut short: the client goes after two of its five bytes, once the
        // server has started writing them.
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {:?}",
                    files(&dir)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let state = |store: &Store| store.upload_slot(&slot.token).unwrap().unwrap().state;
        {
            let mut tcp = TcpStream::connect(upload.local_addr()).unwrap();
            let request = put_request(&slot, "image/png", b"right", false);
            tcp.write_all(&request[..request.len() - 3]).unwrap();
            wait("the upload started", &|| {
                state(&store) == UploadState::Uploading
            });
            // Not served meanwhile.
            let out = exchange(&upload, &get_request(&slot.token));
            assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        }
        wait("the upload failed", &|| {
            state(&store) == UploadState::Reserved && files(&dir).is_empty()
        });
        // The slot can still be used while its time lasts.
        let out = exchange(&upload, &put_request(&slot, "image/png", b"right", true));
        assert!(out.starts_with("HTTP/1.1 201 "), "{out}");
        assert_eq!(files(&dir), [slot.token.as_str()]);
    }

    #[test]
    fn expired_files_and_files_of_deleted_accounts_are_deleted() {
        let (dir, mut store, upload) = listener("expiry");
        let kept = reserve(&mut store, "e5", 2, "", false);
        let old = reserve(&mut store, "f6", 2, "", false);
        for slot in [&kept, &old] {
            let out = exchange(&upload, &put_request(slot, "text/plain", b"ok", true));
            assert!(out.starts_with("HTTP/1.1 201 "), "{out}");
        }
        std::fs::write(dir.0.join("uploads").join("stray"), b"x").unwrap();
        let now = unix_now();
        // At `now + 3601` both expired; before, only files without a slot go.
        sweep(&upload.shared, now, true);
        assert_eq!(files(&dir), [kept.token.clone(), old.token.clone()]);
        sweep(&upload.shared, now + 3601, false);
        assert!(files(&dir).is_empty());
        assert_eq!(store.upload_slot(&kept.token).unwrap(), None);
        let out = exchange(&upload, &get_request(&kept.token));
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        let gone = reserve(&mut store, "a7", 2, "", false);
        let out = exchange(&upload, &put_request(&gone, "text/plain", b"ok", true));
        assert!(out.starts_with("HTTP/1.1 201 "), "{out}");
        store.delete_user("alice").unwrap();
        sweep(&upload.shared, now, true);
        assert!(files(&dir).is_empty());
    }

    #[test]
    fn one_address_gets_at_most_its_share_of_the_connections() {
        let (_dir, mut store, upload) = listener_with("per-ip", 2);
        let slot = reserve(&mut store, "a8", 2, "", false);
        // Two connections that say nothing hold the address's two places.
        let idle: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(upload.local_addr()).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let out = loop {
            let out = exchange(&upload, &get_request(&slot.token));
            if out.starts_with("HTTP/1.1 503 ") {
                break out;
            }
            // (The two may not be counted yet.)
            assert!(std::time::Instant::now() < deadline, "{out}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(out.contains("Connection: close"), "{out}");
        // Once they go, the address is served again.
        drop(idle);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = exchange(&upload, &get_request(&slot.token));
            if out.starts_with("HTTP/1.1 404 ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
