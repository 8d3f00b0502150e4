//! Push notifications through Firebase Cloud Messaging's HTTP v1 API: the
//! core says which device to wake ([`proto_core::Event::Push`]); here a
//! worker thread gets an OAuth2 access token with the service account's key
//! (a JWT signed with RS256, kept until shortly before it expires), sends one
//! data message with no content of the message (`action`
//! `org.kontalk.CHECK_MESSAGES`, what the Kontalk client listens for:
//! it then logs in and takes its messages), retries with backoff on 429 and
//! 5xx (as `Retry-After` says, else 1, 2, 4, 8 s), and tells the core how it
//! went: a token FCM calls `UNREGISTERED` is deleted by the core.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use proto_core::kontalk::push::{PushJob, PushOutcome};

use crate::kontalk::Wake;

/// Pushes waiting for a worker; one more fails at once.
const QUEUE: usize = 1024;
/// Workers sending pushes.
const WORKERS: usize = 2;
/// Tries of one push (the first and the retries).
const ATTEMPTS: u32 = 5;
/// The longest wait before a retry, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// What FCM's OAuth2 scope is.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// FCM's send endpoint; `{project}` is the service account's project.
pub const DEFAULT_SEND_URL: &str = "https://fcm.googleapis.com/v1/projects/{project}/messages:send";
/// What the Kontalk client does on a push: check for messages.
const ACTION: &str = "org.kontalk.CHECK_MESSAGES";

/// Where pushes go (`kontalk.push_credentials` and the endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service account's JSON key file (from the Firebase console).
    pub credentials: PathBuf,
    /// The send endpoint, `{project}` replaced; default [`DEFAULT_SEND_URL`].
    pub send_url: String,
    /// The OAuth2 token endpoint; empty: the key file's `token_uri`.
    pub token_url: String,
    /// Each HTTP request's timeout.
    pub timeout: Duration,
}

/// A service account's key, as read from its JSON file.
pub struct Credentials {
    client_email: String,
    project_id: String,
    token_uri: String,
    key: rsa::RsaPrivateKey,
}

impl Credentials {
    /// Reads and checks the key file: its fields, and the private key.
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let what = || format!("kontalk.push_credentials: {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", what()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", what()))?;
        let field = |name: &str| -> Result<String, String> {
            json.get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!(
                        "{}: no \"{name}\" (a service account key from the Firebase console has it)",
                        what()
                    )
                })
        };
        use rsa::pkcs8::DecodePrivateKey;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&field("private_key")?)
            .map_err(|e| format!("{}: the private key: {e}", what()))?;
        Ok(Credentials {
            client_email: field("client_email")?,
            project_id: field("project_id")?,
            token_uri: field("token_uri")?,
            key,
        })
    }

    /// The signed JWT that asks for an access token at `aud` (RFC 7523).
    fn assertion(&self, aud: &str, now: u64) -> Result<String, String> {
        use rsa::signature::{SignatureEncoding, Signer};
        let header = B64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": aud,
            "iat": now,
            "exp": now + 3600,
        });
        let claims = B64URL.encode(claims.to_string());
        let signing = format!("{header}.{claims}");
        let key = rsa::pkcs1v15::SigningKey::<sha2_010::Sha256>::new(self.key.clone());
        let signature = key
            .try_sign(signing.as_bytes())
            .map_err(|e| format!("cannot sign the token request: {e}"))?;
        Ok(format!("{signing}.{}", B64URL.encode(signature.to_bytes())))
    }
}

/// What sends pushes: the credentials, the endpoints, the access token.
struct Fcm {
    creds: Credentials,
    send_url: String,
    token_url: String,
    agent: ureq::Agent,
    token: Mutex<Option<(String, Instant)>>,
}

/// The answer of one try.
enum Try {
    Done(PushOutcome),
    /// Worth another try after this long.
    Again(Duration, String),
}

impl Fcm {
    fn new(config: &FcmConfig) -> Result<Fcm, String> {
        let creds = Credentials::load(&config.credentials)?;
        let send_url = config.send_url.replace("{project}", &creds.project_id);
        let token_url = if config.token_url.is_empty() {
            creds.token_uri.clone()
        } else {
            config.token_url.clone()
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("kontalkd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Fcm {
            creds,
            send_url,
            token_url,
            agent,
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the kept one, or a new one.
    fn access_token(&self, fresh: bool) -> Result<String, String> {
        let mut kept = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some((token, until)), false) = (kept.as_ref(), fresh) {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let assertion = self
            .creds
            .assertion(&self.token_url, crate::runtime::unix_now())?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let mut answer = self
            .agent
            .post(&self.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .map_err(|e| format!("the token endpoint {}: {e}", self.token_url))?;
        let status = answer.status();
        let text = body_text(&mut answer);
        if !status.is_success() {
            return Err(format!(
                "the token endpoint {} answered {status}: {}",
                self.token_url,
                text.trim()
            ));
        }
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("the token endpoint's answer is not JSON: {e}"))?;
        let token = json
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or("the token endpoint's answer has no access_token")?
            .to_owned();
        let lasts = json
            .get("expires_in")
            .and_then(|t| t.as_u64())
            .unwrap_or(3600);
        // Renewed a minute before it runs out.
        let until = Instant::now() + Duration::from_secs(lasts.saturating_sub(60).max(1));
        *kept = Some((token.clone(), until));
        Ok(token)
    }

    fn try_once(&self, job: &PushJob, fresh_token: bool) -> Try {
        let token = match self.access_token(fresh_token) {
            Ok(t) => t,
            Err(e) => return Try::Again(Duration::ZERO, e),
        };
        let body = serde_json::json!({
            "message": {
                "token": job.token,
                "data": { "action": ACTION },
                "android": { "priority": "HIGH" },
            }
        });
        let answer = self
            .agent
            .post(&self.send_url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        let mut answer = match answer {
            Ok(a) => a,
            Err(e) => return Try::Again(Duration::ZERO, format!("{}: {e}", self.send_url)),
        };
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = body_text(&mut answer);
        match status {
            200..=299 => Try::Done(PushOutcome::Sent),
            // FCM's errors: `UNREGISTERED` (404, or 400 for some) is a
            // token the device no longer has.
            _ if text.contains("UNREGISTERED") => Try::Done(PushOutcome::Unregistered),
            401 if !fresh_token => Try::Again(Duration::ZERO, "401: a new access token".into()),
            429 | 500..=599 => Try::Again(
                retry_after.unwrap_or_default(),
                format!("{status}: {}", one_line(&text)),
            ),
            _ => Try::Done(PushOutcome::Failed(format!(
                "FCM answered {status}: {}",
                one_line(&text)
            ))),
        }
    }

    /// Sends `job`, retrying with backoff.
    fn deliver(&self, job: &PushJob) -> PushOutcome {
        let mut last = String::new();
        let mut fresh = false;
        for attempt in 0..ATTEMPTS {
            match self.try_once(job, fresh) {
                Try::Done(outcome) => return outcome,
                Try::Again(after, why) => {
                    fresh = why.starts_with("401");
                    last = why;
                    if attempt + 1 == ATTEMPTS {
                        break;
                    }
                    let backoff = if after.is_zero() && !fresh {
                        Duration::from_secs(1 << attempt)
                    } else {
                        after
                    };
                    log::debug!("push to {}: {last}; again in {backoff:?}", job.username);
                    std::thread::sleep(backoff.min(MAX_BACKOFF));
                }
            }
        }
        PushOutcome::Failed(format!("{ATTEMPTS} tries, the last: {last}"))
    }
}

/// An answer's body as text (the first 64 KiB; what FCM answers is short).
fn body_text(answer: &mut ureq::http::Response<ureq::Body>) -> String {
    answer
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default()
}

fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

/// Sends the core's pushes on worker threads; [`poll`](Self::poll) collects
/// how they went.
pub struct Pusher {
    fcm: Option<Arc<Fcm>>,
    queue: Option<SyncSender<PushJob>>,
    done_tx: Sender<(u64, PushOutcome)>,
    done: Receiver<(u64, PushOutcome)>,
    wake: Option<Wake>,
}

impl Pusher {
    /// A pusher for `config` (`None`: pushes fail at once, as not configured).
    pub fn new(config: Option<&FcmConfig>) -> Result<Pusher, String> {
        let fcm = config.map(Fcm::new).transpose()?.map(Arc::new);
        let (done_tx, done) = mpsc::channel();
        Ok(Pusher {
            fcm,
            queue: None,
            done_tx,
            done,
            wake: None,
        })
    }

    /// How a worker wakes the runtime once a push is done.
    pub fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// Sends `job`: how it went when that is known at once, else `None`
    /// (see [`poll`](Self::poll)).
    pub fn send(&mut self, job: PushJob) -> Option<(u64, PushOutcome)> {
        let Some(fcm) = self.fcm.clone() else {
            return Some((job.id, PushOutcome::Failed("push is not configured".into())));
        };
        let (done, wake) = (self.done_tx.clone(), self.wake.clone());
        let queue = self
            .queue
            .get_or_insert_with(|| start_workers(fcm, done, wake));
        let id = job.id;
        match queue.try_send(job) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some((
                id,
                PushOutcome::Failed(format!("{QUEUE} pushes already wait")),
            )),
            Err(TrySendError::Disconnected(_)) => {
                self.queue = None;
                Some((id, PushOutcome::Failed("the push workers are gone".into())))
            }
        }
    }

    /// The pushes done since the last call.
    pub fn poll(&mut self) -> impl Iterator<Item = (u64, PushOutcome)> + '_ {
        self.done.try_iter()
    }
}

fn start_workers(
    fcm: Arc<Fcm>,
    done: Sender<(u64, PushOutcome)>,
    wake: Option<Wake>,
) -> SyncSender<PushJob> {
    let (tx, rx) = mpsc::sync_channel::<PushJob>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let (rx, done, wake, fcm) = (rx.clone(), done.clone(), wake.clone(), fcm.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("push-{i}"))
            .spawn(move || loop {
                let next = rx.lock().map(|rx| rx.recv());
                let Ok(Ok(job)) = next else { return };
                let outcome = fcm.deliver(&job);
                if done.send((job.id, outcome)).is_err() {
                    return;
                }
                if let Some(wake) = &wake {
                    wake();
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start a push worker: {e}");
        }
    }
    tx
}
