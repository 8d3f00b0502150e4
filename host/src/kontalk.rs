//! Kontalk in the host: the server's OpenPGP key (configured, or generated
//! into the data directory on first start, like the TLS certificate), and
//! the providers that send verification codes.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use proto_core::kontalk::keys::ServerKey;
use proto_core::kontalk::register::CodeMessage;

use crate::config::{FileConfig, Gateway, Verification};

/// Name of the generated key inside the data directory.
pub const KEY_FILE_NAME: &str = "server-key.asc";

/// Where the server's key is, and whether it is the generated one.
pub fn key_path(cfg: &FileConfig) -> (PathBuf, bool) {
    match &cfg.kontalk_key_file {
        Some(p) => (p.clone(), false),
        None => (cfg.data_dir.join(KEY_FILE_NAME), true),
    }
}

/// The user id of a generated server key.
fn server_uid(domain: &str) -> String {
    format!("kontalkd {domain} <kontalk@{domain}>")
}

/// Loads the server's key, generating it (mode 0600) when it is the
/// data directory's and there is none yet. `seed` makes the key.
pub fn load_or_create_key(cfg: &FileConfig, seed: [u8; 32], now: u64) -> Result<ServerKey, String> {
    let (path, generated) = key_path(cfg);
    if generated && !path.exists() {
        let key = ServerKey::generate(seed, &server_uid(&cfg.core.domain), now)
            .map_err(|e| format!("cannot generate the server's OpenPGP key: {e}"))?;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        crate::datadir::write_file(&tmp, key.to_armored().as_bytes(), 0o600)?;
        fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write the server's key {}: {e}", path.display()))?;
        log::info!(
            "generated the server's OpenPGP key {} in {} (set kontalk.key_file to use your own)",
            key.fingerprint(),
            path.display()
        );
        return Ok(key);
    }
    load_key(&path)
}

/// Reads a server key file (armored or binary secret key, unprotected).
pub fn load_key(path: &std::path::Path) -> Result<ServerKey, String> {
    let bytes = fs::read(path)
        .map_err(|e| format!("cannot read the server's key {}: {e}", path.display()))?;
    ServerKey::from_bytes(&bytes)
        .map_err(|e| format!("{} is not a usable OpenPGP secret key: {e}", path.display()))
}

/// Threads that send codes to an HTTP gateway (each request may take
/// seconds: the requests of several registrations overlap).
pub const GATEWAY_WORKERS: usize = 4;

/// Codes waiting for a gateway worker; beyond, a registration is told
/// at once that its code could not be sent.
pub const GATEWAY_QUEUE: usize = 256;

/// How much of a gateway's answer to an error is kept for the log.
const GATEWAY_EXCERPT: u64 = 300;

/// The outcome of sending one code: the core's token, and what happened.
pub type CodeSent = (u64, Result<(), String>);

/// Wakes the runtime's loop from another thread (a finished request).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// One request to a gateway, its templates filled in.
struct GatewayRequest {
    token: u64,
    url: String,
    /// `(Content-Type, body)` of a POST; `None`: a GET.
    body: Option<(String, String)>,
    authorization: Option<String>,
    timeout: std::time::Duration,
}

/// Sends verification codes the way the configuration says: at once into
/// the log or a file; on worker threads to an HTTP gateway, whose answers
/// [`poll`](Self::poll) collects (the runtime's loop never waits on a
/// gateway, and [`set_wake`](Self::set_wake) tells it when one answered).
pub struct CodeSender {
    /// The gateway workers' queue, started with the first request.
    queue: Option<SyncSender<GatewayRequest>>,
    done_tx: Sender<CodeSent>,
    done: Receiver<CodeSent>,
    wake: Option<Wake>,
}

impl Default for CodeSender {
    fn default() -> Self {
        let (done_tx, done) = mpsc::channel();
        CodeSender {
            queue: None,
            done_tx,
            done,
            wake: None,
        }
    }
}

impl CodeSender {
    /// How a worker wakes the runtime after a request (set before the
    /// first one).
    pub fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// Sends `msg` (`sender`: the configured sender id): the result when it
    /// is known at once, `None` when a gateway worker has it (see
    /// [`poll`](Self::poll)).
    pub fn send(
        &mut self,
        verification: &Verification,
        sender: &str,
        msg: &CodeMessage,
    ) -> Option<Result<(), String>> {
        let gateway = match verification {
            Verification::Log => {
                log::info!("verification code for {}: {}", msg.phone, msg.code);
                return Some(Ok(()));
            }
            Verification::File(path) => return Some(append_code(path, msg)),
            Verification::Http(gateway) => gateway,
        };
        let request = gateway_request(gateway, sender, msg);
        let queue = self
            .queue
            .get_or_insert_with(|| start_workers(self.done_tx.clone(), self.wake.clone()));
        match queue.try_send(request) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(Err(format!(
                "{GATEWAY_QUEUE} codes already wait for the gateway"
            ))),
            Err(TrySendError::Disconnected(_)) => {
                self.queue = None;
                Some(Err("the gateway workers are gone".into()))
            }
        }
    }

    /// The codes the gateway workers are done with, since the last call.
    pub fn poll(&mut self) -> impl Iterator<Item = CodeSent> + '_ {
        self.done.try_iter()
    }
}

fn start_workers(done: Sender<CodeSent>, wake: Option<Wake>) -> SyncSender<GatewayRequest> {
    let (tx, rx) = mpsc::sync_channel::<GatewayRequest>(GATEWAY_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..GATEWAY_WORKERS {
        let (rx, done, wake) = (rx.clone(), done.clone(), wake.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sms-gateway-{i}"))
            .spawn(move || loop {
                let next = rx.lock().map(|rx| rx.recv());
                let Ok(Ok(request)) = next else { return };
                let result = perform(&request);
                if done.send((request.token, result)).is_err() {
                    return;
                }
                if let Some(wake) = &wake {
                    wake();
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start an SMS gateway worker: {e}");
        }
    }
    tx
}

/// The request that sends `msg` through `gateway`.
fn gateway_request(gateway: &Gateway, sender: &str, msg: &CodeMessage) -> GatewayRequest {
    let values = [msg.phone.as_str(), msg.code.as_str(), sender];
    let url = fill(&gateway.url, &values, percent_encode);
    let body = gateway.post.then(|| {
        let ct = gateway.content_type.to_ascii_lowercase();
        let escape: fn(&str) -> String = if ct.contains("x-www-form-urlencoded") {
            percent_encode
        } else if ct.contains("json") {
            json_escape
        } else {
            str::to_owned
        };
        (
            gateway.content_type.clone(),
            fill(&gateway.body, &values, escape),
        )
    });
    GatewayRequest {
        token: msg.token,
        url,
        body,
        authorization: gateway.authorization.clone(),
        timeout: gateway.timeout,
    }
}

/// `template` with each of [`GATEWAY_PLACEHOLDERS`] replaced by its value
/// of `values` (same order), escaped.
///
/// [`GATEWAY_PLACEHOLDERS`]: crate::config::GATEWAY_PLACEHOLDERS
fn fill(template: &str, values: &[&str; 3], escape: fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    'scan: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        for (name, value) in crate::config::GATEWAY_PLACEHOLDERS.iter().zip(values) {
            if rest[open..].starts_with(name) {
                out.push_str(&escape(value));
                rest = &rest[open + name.len()..];
                continue 'scan;
            }
        }
        out.push('{');
        rest = &rest[open + 1..];
    }
    out.push_str(rest);
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters
/// (so a `+` of a number stays a `+`, in a query and in a form).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inside of a JSON string holding `value`.
fn json_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The host a request goes to, for the log (the URL itself may hold a
/// secret of the gateway's account).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// Runs one gateway request: a 2xx answer is a sent code.
fn perform(request: &GatewayRequest) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(request.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("kontalkd/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let answer = match &request.body {
        Some((content_type, body)) => {
            let mut req = agent
                .post(&request.url)
                .header("Content-Type", content_type);
            if let Some(auth) = &request.authorization {
                req = req.header("Authorization", auth);
            }
            req.send(body.as_bytes())
        }
        None => {
            let mut req = agent.get(&request.url);
            if let Some(auth) = &request.authorization {
                req = req.header("Authorization", auth);
            }
            req.call()
        }
    };
    let host = host_of(&request.url);
    match answer {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(mut response) => {
            let status = response.status();
            let text = response
                .body_mut()
                .with_config()
                .limit(GATEWAY_EXCERPT)
                .read_to_string()
                .unwrap_or_default();
            Err(format!(
                "the SMS gateway {host} answered {status}: {}",
                text.trim()
            ))
        }
        Err(e) => Err(format!("the SMS gateway {host} failed: {e}")),
    }
}

/// Appends `<number> <code>` to the file provider's file, synced.
fn append_code(path: &std::path::Path, msg: &CodeMessage) -> Result<(), String> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(format!("{} {}\n", msg.phone, msg.code).as_bytes())?;
            f.sync_data()
        })
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::time::Duration;

    fn msg(token: u64) -> CodeMessage {
        CodeMessage {
            token,
            phone: "+15555215554".into(),
            code: "123456".into(),
        }
    }

    fn gateway(url: String, body: &str, content_type: &str) -> Gateway {
        Gateway {
            url,
            post: true,
            body: body.into(),
            content_type: content_type.into(),
            authorization: Some("Basic dTpw".into()),
            timeout: Duration::from_secs(5),
        }
    }

    /// A gateway on 127.0.0.1 that answers `answers` requests with
    /// `status`, and hands each request (head and body) over.
    fn serve(status: &'static str, answers: usize) -> (String, Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(answers) {
                let mut conn = BufReader::new(conn.unwrap());
                let (mut head, mut len) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    conn.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                conn.read_exact(&mut body).unwrap();
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno key"
                );
                conn.get_mut().write_all(reply.as_bytes()).unwrap();
                tx.send(head + &String::from_utf8(body).unwrap()).unwrap();
            }
        });
        (url, rx)
    }

    #[test]
    fn templates_are_filled_and_escaped_for_where_they_stand() {
        let values = ["+1 555", "12\"3", "Kontalk & co"];
        assert_eq!(
            fill("to={phone}&t={code}&s={sender}{x}", &values, percent_encode),
            "to=%2B1%20555&t=12%223&s=Kontalk%20%26%20co{x}"
        );
        assert_eq!(
            fill(r#"{"to":"{phone}","t":"{code}"}"#, &values, json_escape),
            r#"{"to":"+1 555","t":"12\"3"}"#
        );
        assert_eq!(json_escape("a\\b\n"), "a\\\\b\\u000a");
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            host_of("https://sms.example:8443/x?key=secret"),
            "sms.example:8443"
        );
        assert_eq!(host_of("http://h"), "h");
    }

    #[test]
    fn a_form_post_reaches_the_gateway_and_a_2xx_is_a_sent_code() {
        let (url, requests) = serve("200 OK", 1);
        let g = gateway(
            format!("{url}/sms?from={{sender}}"),
            "to={phone}&text=Code+{code}",
            "application/x-www-form-urlencoded",
        );
        assert_eq!(
            perform(&gateway_request(&g, "Kontalk SMS", &msg(1))),
            Ok(())
        );
        let request = requests.recv().unwrap();
        assert!(
            request.starts_with("POST /sms?from=Kontalk%20SMS HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/x-www-form-urlencoded"),
            "{request}"
        );
        assert!(lower.contains("authorization: basic dtpw"), "{request}");
        assert!(
            request.ends_with("\r\n\r\nto=%2B15555215554&text=Code+123456"),
            "{request}"
        );
    }

    #[test]
    fn a_refusing_or_absent_gateway_is_an_error_that_names_it() {
        let (url, _requests) = serve("401 Unauthorized", 1);
        let g = gateway(url.clone(), "{code}", "text/plain");
        let err = perform(&gateway_request(&g, "s", &msg(1))).unwrap_err();
        assert!(err.contains("401") && err.contains("no key"), "{err}");
        assert!(err.contains(host_of(&url)), "{err}");
        // Nobody listens there any more.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let err = perform(&gateway_request(
            &gateway(url, "{code}", "text/plain"),
            "s",
            &msg(2),
        ))
        .unwrap_err();
        assert!(err.contains("failed"), "{err}");
    }

    #[test]
    fn the_sender_hands_gateway_results_back_and_wakes_the_loop() {
        let (url, requests) = serve("204 No Content", 3);
        let g = Verification::Http(gateway(url, "{phone} {code}", "text/plain"));
        let (woke_tx, woke) = mpsc::channel();
        let woke_tx = Mutex::new(woke_tx);
        let mut sender = CodeSender::default();
        sender.set_wake(Arc::new(move || {
            let _ = woke_tx.lock().unwrap().send(());
        }));
        for token in 1..=3 {
            assert_eq!(sender.send(&g, "s", &msg(token)), None, "queued, not sent");
        }
        let mut done = Vec::new();
        while done.len() < 3 {
            woke.recv_timeout(Duration::from_secs(30)).expect("woken");
            done.extend(sender.poll());
        }
        done.sort_by_key(|d| d.0);
        assert_eq!(done, [(1, Ok(())), (2, Ok(())), (3, Ok(()))]);
        for _ in 0..3 {
            assert!(requests.recv().unwrap().ends_with("+15555215554 123456"));
        }
        // The log goes at once.
        assert_eq!(sender.send(&Verification::Log, "s", &msg(4)), Some(Ok(())));
    }
}
