//! The TOML configuration file.
//!
//! Every key is optional; see [`example_config`] for the layout and the defaults.
//! Validation reports every bad value at once, each named by its full key
//! (`limits.max_depth`), and an unknown key is an error.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The validated configuration of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// What the protocol core needs: domain, policies and limits.
    pub core: proto_core::Config,
    /// Directory of the database and the generated certificate (`server.data_dir`).
    pub data_dir: PathBuf,
    /// Address the client listeners bind to (`c2s.listen`).
    pub listen: IpAddr,
    /// Port of the STARTTLS client listener (`c2s.port`).
    pub c2s_port: u16,
    /// Port of the direct TLS (XEP-0368) client listener; `None` when disabled (`c2s.direct_tls_port = 0`).
    pub direct_tls_port: Option<u16>,
    /// PEM certificate chain (`tls.certificate`); `None` = generated self-signed certificate.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key (`tls.private_key`); set exactly when `tls_certificate` is.
    pub tls_private_key: Option<PathBuf>,
    /// Maximum level of log messages (`server.log_level`).
    pub log_level: log::LevelFilter,
    /// File the log is appended to (`server.log_file`); `None`: standard error.
    /// Reopened on SIGHUP, for logrotate.
    pub log_file: Option<PathBuf>,
    /// Address of the metrics endpoint (`server.metrics_listen`); `None`
    /// when it is off (the default).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The server's OpenPGP key (`kontalk.key_file`); `None`: the one
    /// generated into the data directory on first start.
    pub kontalk_key_file: Option<PathBuf>,
    /// How verification codes reach their phone (`kontalk.verification`).
    pub verification: Verification,
    /// The Net listener of a server in a Kontalk network (`net.listen`,
    /// `net.port`); `None` for a server alone. The network itself (this
    /// server's host, the other servers) is `core.net`.
    pub net_listener: Option<std::net::SocketAddr>,
    /// The fingerprint `[[net.servers]]` lists for this server itself, if
    /// the list has its entry (checked against its certificate).
    pub net_own_fingerprint: Option<[u8; 32]>,
    /// Federation's listeners, authorities and name servers (`[s2s]`);
    /// `None` when federation is off. Its policies are `core.s2s`.
    pub s2s: Option<S2sFile>,
    /// File upload's listener (`[upload]`); `None` when it is off. The
    /// service's rules are `core.upload`.
    pub upload: Option<UploadFile>,
    /// Where pushes go (`kontalk.push_credentials` and the endpoints);
    /// `None`: none are sent.
    pub push: Option<crate::push::FcmConfig>,
    /// The file this was read from (`None`: the built-in defaults), read
    /// again on SIGHUP.
    pub source: Option<PathBuf>,
}

/// What the host does for federation (`[s2s]`): the listeners, the
/// certificate authorities, the name servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sFile {
    /// The STARTTLS listener (`s2s.listen`, `s2s.port`).
    pub listener: std::net::SocketAddr,
    /// The direct TLS listener (XEP-0368, `s2s.direct_tls_port`); `None`: off.
    pub direct_listener: Option<std::net::SocketAddr>,
    /// PEM files of authorities trusted for other servers' certificates
    /// (`s2s.ca_files`), besides the system's unless `system_roots` is off.
    pub ca_files: Vec<PathBuf>,
    /// Whether the system's authorities count (`s2s.system_roots`).
    pub system_roots: bool,
    /// Where DNS questions go (`s2s.name_servers`); empty: `/etc/resolv.conf`'s.
    pub name_servers: Vec<std::net::SocketAddr>,
    /// The dialback secret came from the configuration (else from the
    /// data directory, made on first start).
    pub secret_configured: bool,
}

/// The default port of Net listeners.
pub const NET_PORT: u16 = 5270;

/// A certificate fingerprint as `kontalkd net-fingerprint` prints it and
/// `net.servers[].fingerprint` takes it: 32 bytes in uppercase hex pairs
/// joined by colons.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `text` is `host:port` (`[v6]:port` for IPv6), the host a name
/// or an IP address, the port not 0.
fn valid_address(text: &str) -> bool {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.is_empty()
        && !host.contains(['@', '/', '[', ']', ':'])
        && jid::DomainPart::new(host).is_ok()
}

/// Reads a SHA-256 fingerprint: 64 hex digits, in either case, with or
/// without colons between the pairs (an optional `sha256:` before them).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let digits: String = if t.contains(':') {
        let pairs: Vec<&str> = t.split(':').collect();
        if pairs.iter().any(|p| p.len() != 2) {
            return None;
        }
        pairs.concat()
    } else {
        t.to_owned()
    };
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Where verification codes of Kontalk registrations go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Into the log, one `info` line per code (small servers and tests).
    Log,
    /// Appended to a file, one line `<number> <code>` per code.
    File(PathBuf),
    /// One HTTP request per code to an SMS gateway.
    Http(Gateway),
}

/// An HTTP SMS gateway (`kontalk.gateway_*`): the request that sends one
/// code. `{phone}` (E.164), `{code}` and `{sender}` in the URL and the body
/// are replaced by their values, escaped for where they stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `http://` or `https://` URL (a template).
    pub url: String,
    /// POST (with the body) or GET.
    pub post: bool,
    /// The body of a POST (a template).
    pub body: String,
    /// Its `Content-Type`; a form's values are percent-encoded, JSON's
    /// escaped as JSON strings.
    pub content_type: String,
    /// The `Authorization` header, if the gateway wants one.
    pub authorization: Option<String>,
    /// The longest a request may take, connection included.
    pub timeout: Duration,
}

/// The placeholders of a gateway's templates.
pub const GATEWAY_PLACEHOLDERS: [&str; 3] = ["{phone}", "{code}", "{sender}"];

impl Default for FileConfig {
    fn default() -> Self {
        parse_config("").expect("the defaults are valid")
    }
}

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full key of the bad value, like `limits.max_depth`; empty when the
    /// problem is not tied to a key (a TOML syntax error, an unreadable file).
    pub key: String,
    /// What is wrong, with the accepted values.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One line per error, `key: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn single(key: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

/// Reads and validates the configuration file; `None` gives the defaults.
pub fn load_config(path: Option<&Path>) -> Result<FileConfig, ConfigErrors> {
    let Some(path) = path else {
        return parse_config("");
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(
            "",
            format!("cannot read configuration file {}: {e}", path.display()),
        )
    })?;
    let mut config = parse_config(&text).map_err(|mut errors| {
        for e in &mut errors.0 {
            if e.key.is_empty() {
                e.message = format!("{}: {}", path.display(), e.message);
            }
        }
        errors
    })?;
    config.source = Some(path.to_owned());
    Ok(config)
}

/// Parses and validates the text of a configuration file.
pub fn parse_config(text: &str) -> Result<FileConfig, ConfigErrors> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigErrors::single("", format!("TOML syntax error{at}: {}", e.message()))
    })?;
    // serde stops at the first value of the wrong type: note it, take the key
    // out (its default applies) and read again, so that every one is named.
    let mut doc = doc;
    let mut errors = Vec::new();
    let raw = loop {
        match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => break raw,
            Err(e) => {
                let key = e
                    .span()
                    .and_then(|span| key_at(doc.get_ref(), span.start, ""))
                    .unwrap_or_default();
                let removed = !key.is_empty() && remove_key(doc.get_mut(), &key);
                errors.push(ConfigError {
                    key,
                    message: plain_words(e.message()),
                });
                if !removed || errors.len() > 100 {
                    return Err(ConfigErrors(errors));
                }
            }
        }
    };
    match raw.validate() {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            errors.extend(more.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// Takes the entry of the dotted `key` out of `table`; whether there was one.
fn remove_key(table: &mut toml::de::DeTable<'_>, key: &str) -> bool {
    match key.split_once('.') {
        None => {
            let found = table.keys().find(|k| k.get_ref() == key).cloned();
            found.is_some_and(|k| table.remove(&k).is_some())
        }
        Some((head, rest)) => table.iter_mut().any(|(k, v)| {
            k.get_ref() == head
                && match v.get_mut() {
                    toml::de::DeValue::Table(inner) => remove_key(inner, rest),
                    _ => false,
                }
        }),
    }
}

/// serde's type names in the words of the configuration file.
fn plain_words(message: &str) -> String {
    let mut m = message
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    if let Some(at) = m.find("expected struct Raw") {
        m.truncate(at);
        m.push_str("expected a table");
    }
    m
}

/// The full key of the entry whose key or value covers byte `pos` of the file.
fn key_at(table: &toml::de::DeTable<'_>, pos: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let Some(inner) = value.get_ref().as_table() {
            if let Some(found) = key_at(inner, pos, &path) {
                return Some(found);
            }
        }
        if key.span().contains(&pos) || value.span().contains(&pos) {
            return Some(path);
        }
    }
    None
}

/// The key in the configuration file of a field of [`proto_core::Config`]
/// as [`proto_core::Server::reconfigure`] names it (`require_tls` is
/// `c2s.require_encryption`; the limits have the same names).
pub fn file_key(core_field: &str) -> String {
    match core_field {
        "domain" => "server.domain",
        "require_tls" => "c2s.require_encryption",
        "allow_registration" => "c2s.allow_registration",
        "offline_quota" => "offline.quota",
        "offline_expiry" => "offline.expiry_days",
        "archive" => "archive.enabled",
        "archive_retention" => "archive.retention_days",
        "net" => "[net] (host and servers)",
        "s2s" => "[s2s]",
        other => other,
    }
    .to_owned()
}

/// The commented example configuration file, with every key at its default.
pub fn example_config() -> &'static str {
    include_str!("kontalkd.example.toml")
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    c2s: RawC2s,
    tls: RawTls,
    limits: RawLimits,
    offline: RawOffline,
    archive: RawArchive,
    kontalk: RawKontalk,
    net: RawNet,
    s2s: RawS2s,
    upload: RawUpload,
    push: RawPush,
}

/// `[push]`: notifications to standard clients' app servers (XEP-0357).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawPush {
    include_sender: bool,
}

/// `[upload]`: HTTP file upload (XEP-0363) and its HTTPS listener.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpload {
    enabled: bool,
    service: String,
    listen: String,
    port: i64,
    tls: bool,
    public_url: String,
    max_file_size: i64,
    quota: i64,
    slot_lifetime: i64,
    expire_after_days: i64,
    max_connections: i64,
}

impl Default for RawUpload {
    fn default() -> Self {
        let d = proto_core::UploadConfig::new("localhost", "");
        RawUpload {
            enabled: true,
            service: String::new(),
            listen: String::new(),
            port: i64::from(UPLOAD_PORT),
            tls: true,
            public_url: String::new(),
            max_file_size: d.max_file_size as i64,
            quota: d.quota as i64,
            slot_lifetime: d.slot_lifetime.as_secs() as i64,
            expire_after_days: (d.expire_after.as_secs() / 86_400) as i64,
            max_connections: 256,
        }
    }
}

/// The upload listener's port unless configured (ejabberd's too).
pub const UPLOAD_PORT: u16 = 5443;

/// What the host does for file upload (`[upload]`): the listener. The
/// service's rules are `core.upload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Where the HTTP listener binds (`upload.listen`, `upload.port`).
    pub listener: std::net::SocketAddr,
    /// HTTPS with the server's certificate (`upload.tls`); `false`: plain
    /// HTTP, for a proxy in front that does TLS.
    pub tls: bool,
    /// Most connections served at once (`upload.max_connections`).
    pub max_connections: usize,
}

/// `[s2s]`: federation with other XMPP servers.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawS2s {
    enabled: bool,
    listen: String,
    port: i64,
    direct_tls_port: i64,
    require_encryption: bool,
    require_certificates: bool,
    ca_files: Vec<PathBuf>,
    system_roots: bool,
    dialback_secret: String,
    name_servers: Vec<String>,
    refuse: Vec<String>,
    queue_limit: i64,
    idle_timeout: i64,
    max_inbound: i64,
    max_inbound_per_ip: i64,
    max_inbound_per_domain: i64,
    max_outbound: i64,
    routes: Vec<RawS2sRoute>,
}

impl Default for RawS2s {
    fn default() -> Self {
        let core = proto_core::S2sConfig::default();
        RawS2s {
            enabled: false,
            listen: "0.0.0.0".into(),
            port: i64::from(proto_core::dns::PORT),
            direct_tls_port: 0,
            require_encryption: core.require_tls,
            require_certificates: core.require_certificates,
            ca_files: Vec::new(),
            system_roots: true,
            dialback_secret: String::new(),
            name_servers: Vec::new(),
            refuse: Vec::new(),
            queue_limit: core.queue_limit as i64,
            idle_timeout: core.idle_timeout.as_secs() as i64,
            max_inbound: core.max_inbound as i64,
            max_inbound_per_ip: core.max_inbound_per_ip as i64,
            max_inbound_per_domain: core.max_inbound_per_domain as i64,
            max_outbound: core.max_outbound as i64,
            routes: Vec::new(),
        }
    }
}

/// One `[[s2s.routes]]` entry: a domain reached at a fixed place.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS2sRoute {
    domain: String,
    host: String,
    #[serde(default = "s2s_port")]
    port: i64,
    #[serde(default)]
    direct_tls: bool,
}

fn s2s_port() -> i64 {
    i64::from(proto_core::dns::PORT)
}

/// `[net]`: the Kontalk network; absent (no `host`, no servers): alone.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNet {
    host: String,
    listen: String,
    port: i64,
    servers: Vec<RawNetServer>,
}

impl Default for RawNet {
    fn default() -> Self {
        RawNet {
            host: String::new(),
            listen: "0.0.0.0".into(),
            port: i64::from(NET_PORT),
            servers: Vec::new(),
        }
    }
}

/// One `[[net.servers]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetServer {
    host: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    clients: String,
    fingerprint: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// `[kontalk]`: registration by phone number, the server's key.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawKontalk {
    registration: bool,
    verification: String,
    verification_file: PathBuf,
    gateway_url: String,
    gateway_method: String,
    gateway_body: String,
    gateway_content_type: String,
    gateway_authorization: String,
    gateway_timeout: i64,
    sender: String,
    code_lifetime: i64,
    resend_after: i64,
    max_attempts: i64,
    codes_per_address: i64,
    terms_url: String,
    private_key_lifetime: i64,
    key_file: PathBuf,
    push_sender_id: String,
    push_credentials: PathBuf,
    push_send_url: String,
    push_token_url: String,
    push_timeout: i64,
}

impl Default for RawKontalk {
    fn default() -> Self {
        let d = proto_core::KontalkConfig::default();
        RawKontalk {
            registration: d.registration,
            verification: "log".into(),
            verification_file: PathBuf::new(),
            gateway_url: String::new(),
            gateway_method: "POST".into(),
            gateway_body: "to={phone}&from={sender}&text=Your+verification+code:+{code}".into(),
            gateway_content_type: "application/x-www-form-urlencoded".into(),
            gateway_authorization: String::new(),
            gateway_timeout: 10,
            sender: d.sender,
            code_lifetime: d.code_lifetime.as_secs() as i64,
            resend_after: d.resend_after.as_secs() as i64,
            max_attempts: i64::from(d.max_attempts),
            codes_per_address: i64::from(d.codes_per_address),
            terms_url: d.terms_url.unwrap_or_default(),
            private_key_lifetime: d.private_key_lifetime.as_secs() as i64,
            key_file: PathBuf::new(),
            push_sender_id: String::new(),
            push_credentials: PathBuf::new(),
            push_send_url: crate::push::DEFAULT_SEND_URL.into(),
            push_token_url: String::new(),
            push_timeout: 10,
        }
    }
}

/// `[archive]`: XEP-0313 message archive.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawArchive {
    enabled: bool,
    retention_days: i64,
}

impl Default for RawArchive {
    fn default() -> Self {
        let d = proto_core::Config::default();
        RawArchive {
            enabled: d.archive,
            retention_days: (d.archive_retention.as_secs() / 86_400) as i64,
        }
    }
}

/// `[offline]`: XEP-0160 offline storage.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOffline {
    quota: i64,
    expiry_days: i64,
}

impl Default for RawOffline {
    fn default() -> Self {
        let d = proto_core::Config::default();
        RawOffline {
            quota: i64::from(d.offline_quota),
            expiry_days: (d.offline_expiry.as_secs() / 86_400) as i64,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    domain: String,
    data_dir: PathBuf,
    log_level: String,
    log_file: PathBuf,
    metrics_listen: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            domain: "localhost".into(),
            data_dir: "./data".into(),
            log_level: "info".into(),
            log_file: PathBuf::new(),
            metrics_listen: String::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawC2s {
    listen: String,
    port: i64,
    direct_tls_port: i64,
    require_encryption: bool,
    allow_registration: bool,
}

impl Default for RawC2s {
    fn default() -> Self {
        RawC2s {
            listen: "127.0.0.1".into(),
            port: 5222,
            direct_tls_port: 5223,
            require_encryption: true,
            allow_registration: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
}

/// Limits as written in the file: integers (seconds for durations), checked in [`RawConfig::validate`].
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    max_stanza_size: i64,
    max_depth: i64,
    max_attributes: i64,
    auth_timeout: i64,
    idle_timeout: i64,
    keepalive_interval: i64,
    max_auth_failures: i64,
    output_budget: i64,
    ping_interval: i64,
    ping_timeout: i64,
    max_connections: i64,
    max_connections_per_ip: i64,
    max_auth_failures_per_ip: i64,
    auth_failure_window: i64,
    stanzas_per_second: i64,
    resume_timeout: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = proto_core::Limits::default();
        let n = |v: usize| v as i64;
        RawLimits {
            max_stanza_size: n(d.max_stanza_size),
            max_depth: n(d.max_depth),
            max_attributes: n(d.max_attributes),
            auth_timeout: d.auth_timeout.as_secs() as i64,
            idle_timeout: d.idle_timeout.as_secs() as i64,
            keepalive_interval: d.keepalive_interval.as_secs() as i64,
            max_auth_failures: i64::from(d.max_auth_failures),
            output_budget: n(d.output_budget),
            ping_interval: d.ping_interval.as_secs() as i64,
            ping_timeout: d.ping_timeout.as_secs() as i64,
            max_connections: n(d.max_connections),
            max_connections_per_ip: n(d.max_connections_per_ip),
            max_auth_failures_per_ip: i64::from(d.max_auth_failures_per_ip),
            auth_failure_window: d.auth_failure_window.as_secs() as i64,
            stanzas_per_second: i64::from(d.stanzas_per_second),
            resume_timeout: d.resume_timeout.as_secs() as i64,
        }
    }
}

/// Longest accepted duration: one year, far from overflowing `Instant` arithmetic.
const MAX_SECONDS: i64 = 365 * 24 * 3600;

/// Collects validation errors.
#[derive(Default)]
struct Checker(Vec<ConfigError>);

impl Checker {
    fn error(&mut self, key: &str, message: String) {
        self.0.push(ConfigError {
            key: key.to_owned(),
            message,
        });
    }

    /// `value` converted to `T` when within `min..=max` (`max` = `None`: up to `T`'s maximum).
    fn int<T: TryFrom<i64> + Default>(
        &mut self,
        key: &str,
        value: i64,
        min: i64,
        max: Option<i64>,
    ) -> T {
        let in_range = value >= min && max.is_none_or(|max| value <= max);
        match T::try_from(value) {
            Ok(v) if in_range => v,
            _ => {
                let accepted = match max {
                    Some(max) => format!("between {min} and {max}"),
                    None => format!("at least {min}"),
                };
                self.error(key, format!("must be {accepted}, got {value}"));
                T::default()
            }
        }
    }

    /// `kontalk.push_sender_id`: empty (push off), or the sender id the
    /// client registers with (Firebase's project number: digits).
    fn push_sender_id(&mut self, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        if value.len() > 32 || !value.bytes().all(|b| b.is_ascii_digit()) {
            self.error(
                "kontalk.push_sender_id",
                format!(
                    "{value:?} is not a sender id: Firebase's project number, digits only \
                     (empty: no push)"
                ),
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// `kontalk.push_credentials` and the endpoints: `None` without
    /// credentials. The key file itself is read at start (and by `check`).
    fn push(&mut self, raw: &RawKontalk, sender: bool) -> Option<crate::push::FcmConfig> {
        if raw.push_credentials.as_os_str().is_empty() {
            return None;
        }
        if !sender {
            self.error(
                "kontalk.push_credentials",
                "needs kontalk.push_sender_id: the clients register for push with it".into(),
            );
        }
        for (key, url) in [
            ("kontalk.push_send_url", &raw.push_send_url),
            ("kontalk.push_token_url", &raw.push_token_url),
        ] {
            if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
                self.error(key, format!("'{url}' is not an http(s) URL"));
            }
        }
        if raw.push_send_url.is_empty() {
            self.error(
                "kontalk.push_send_url",
                format!(
                    "must not be empty (FCM's is {})",
                    crate::push::DEFAULT_SEND_URL
                ),
            );
        }
        let timeout = self.seconds("kontalk.push_timeout", raw.push_timeout, 1);
        Some(crate::push::FcmConfig {
            credentials: raw.push_credentials.clone(),
            send_url: raw.push_send_url.clone(),
            token_url: raw.push_token_url.clone(),
            timeout,
        })
    }

    fn seconds(&mut self, key: &str, value: i64, min: i64) -> Duration {
        Duration::from_secs(self.int(key, value, min, Some(MAX_SECONDS)))
    }

    /// `None` for an empty path.
    fn optional_path(path: PathBuf) -> Option<PathBuf> {
        (!path.as_os_str().is_empty()).then_some(path)
    }

    /// The HTTP gateway of `verification = "http"`, every key checked.
    fn gateway(&mut self, k: &RawKontalk) -> Option<Gateway> {
        let errors = self.0.len();
        let post = match k.gateway_method.to_ascii_uppercase().as_str() {
            "POST" => true,
            "GET" => false,
            other => {
                self.error(
                    "kontalk.gateway_method",
                    format!("'{other}' is not a method: \"POST\" or \"GET\""),
                );
                true
            }
        };
        if k.gateway_url.is_empty() {
            self.error(
                "kontalk.gateway_url",
                "must name the gateway's http:// or https:// URL (verification = \"http\")".into(),
            );
        } else {
            self.template("kontalk.gateway_url", &k.gateway_url);
            // The URL as it will be sent, with placeholders filled in.
            let sample = GATEWAY_PLACEHOLDERS
                .iter()
                .fold(k.gateway_url.clone(), |u, p| u.replace(p, "0"));
            match sample.parse::<ureq::http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => self.error(
                    "kontalk.gateway_url",
                    format!(
                        "'{}' is not an http:// or https:// URL with a host",
                        k.gateway_url
                    ),
                ),
                Err(e) => self.error(
                    "kontalk.gateway_url",
                    format!("'{}' is not a URL: {e}", k.gateway_url),
                ),
            }
        }
        if post {
            self.template("kontalk.gateway_body", &k.gateway_body);
            if ureq::http::HeaderValue::from_str(&k.gateway_content_type).is_err()
                || k.gateway_content_type.is_empty()
            {
                self.error(
                    "kontalk.gateway_content_type",
                    format!("'{}' is not a Content-Type", k.gateway_content_type),
                );
            }
        }
        let carries_code =
            k.gateway_url.contains("{code}") || (post && k.gateway_body.contains("{code}"));
        if !carries_code && !k.gateway_url.is_empty() {
            self.error(
                if post {
                    "kontalk.gateway_body"
                } else {
                    "kontalk.gateway_url"
                },
                "must hold {code}, or the code never reaches the phone".into(),
            );
        }
        if ureq::http::HeaderValue::from_str(&k.gateway_authorization).is_err() {
            self.error(
                "kontalk.gateway_authorization",
                "is not a header value (no line breaks or control characters)".into(),
            );
        }
        let timeout = Duration::from_secs(self.int(
            "kontalk.gateway_timeout",
            k.gateway_timeout,
            1,
            Some(300),
        ));
        (self.0.len() == errors).then(|| Gateway {
            url: k.gateway_url.clone(),
            post,
            body: k.gateway_body.clone(),
            content_type: k.gateway_content_type.clone(),
            authorization: (!k.gateway_authorization.is_empty())
                .then(|| k.gateway_authorization.clone()),
            timeout,
        })
    }

    /// A host name (a JID domain without `@` or `/`), lowercase; `None`
    /// after naming the error.
    fn host_name(&mut self, key: &str, name: &str) -> Option<String> {
        match jid::DomainPart::new(name) {
            Ok(d) if !name.is_empty() && !name.contains(['@', '/']) => {
                Some(d.as_str().to_ascii_lowercase())
            }
            _ => {
                self.error(
                    key,
                    format!("'{name}' is not a host name (like beta.kontalk.net)"),
                );
                None
            }
        }
    }

    /// `[s2s]`, every key checked; `None` when federation is off.
    /// `[upload]`: the service's rules and its listener, `None` when off.
    fn upload(
        &mut self,
        raw: RawUpload,
        domain: &str,
        c2s_listen: IpAddr,
        ports: &[u16],
    ) -> Option<(proto_core::UploadConfig, UploadFile)> {
        if !raw.enabled {
            return None;
        }
        let errors = self.0.len();
        let listen: IpAddr = if raw.listen.is_empty() {
            c2s_listen
        } else {
            raw.listen.parse().unwrap_or_else(|_| {
                self.error(
                    "upload.listen",
                    format!(
                        "must be an IP address (like 0.0.0.0 or ::), got '{}'; empty: c2s.listen's",
                        raw.listen
                    ),
                );
                IpAddr::from([0, 0, 0, 0])
            })
        };
        let port: u16 = self.int("upload.port", raw.port, 1, Some(65535));
        if ports.contains(&port) {
            self.error(
                "upload.port",
                format!("must differ from the XMPP ports ({port} is one of them)"),
            );
        }
        let service = if raw.service.is_empty() {
            format!("media.{domain}")
        } else {
            raw.service.to_ascii_lowercase()
        };
        if jid::DomainPart::new(&service).is_err()
            || service.contains(['@', '/'])
            || service.eq_ignore_ascii_case(domain)
        {
            self.error(
                "upload.service",
                format!(
                    "'{service}' is not a domain of its own (like media.{domain}); empty:                      media.<domain>"
                ),
            );
        }
        let scheme = if raw.tls { "https" } else { "http" };
        let base = if raw.public_url.is_empty() {
            format!("{scheme}://{domain}:{port}")
        } else {
            raw.public_url.trim_end_matches('/').to_owned()
        };
        let well_formed = base
            .split_once("://")
            .filter(|(s, _)| *s == "https" || *s == "http")
            .is_some_and(|(_, host)| !host.is_empty() && !host.contains(['/', '?', '#', '@', ' ']));
        if !well_formed {
            self.error(
                "upload.public_url",
                format!(
                    "'{}' is not a base URL (https://host or https://host:port, no path):                      where clients reach the upload listener; empty: {scheme}://<domain>:<port>",
                    raw.public_url
                ),
            );
        }
        let mut core = proto_core::UploadConfig::new(domain, &base);
        core.service = service;
        core.max_file_size = self.int("upload.max_file_size", raw.max_file_size, 1, None);
        core.quota = self.int("upload.quota", raw.quota, 0, None);
        core.slot_lifetime = self.seconds("upload.slot_lifetime", raw.slot_lifetime, 10);
        let days: u64 = self.int(
            "upload.expire_after_days",
            raw.expire_after_days,
            1,
            Some(3650),
        );
        core.expire_after = Duration::from_secs(days * 86_400);
        let max_connections = self.int(
            "upload.max_connections",
            raw.max_connections,
            1,
            Some(10_000),
        );
        if self.0.len() > errors {
            return None;
        }
        Some((
            core,
            UploadFile {
                listener: std::net::SocketAddr::new(listen, port),
                tls: raw.tls,
                max_connections,
            },
        ))
    }

    fn s2s(&mut self, raw: RawS2s, ports: &[u16]) -> Option<(proto_core::S2sConfig, S2sFile)> {
        if !raw.enabled {
            return None;
        }
        let errors = self.0.len();
        let listen = raw.listen.parse().unwrap_or_else(|_| {
            self.error(
                "s2s.listen",
                format!(
                    "must be an IP address (like 0.0.0.0 or ::), got '{}'",
                    raw.listen
                ),
            );
            IpAddr::from([0, 0, 0, 0])
        });
        let port: u16 = self.int("s2s.port", raw.port, 1, Some(65535));
        let direct: u16 = self.int("s2s.direct_tls_port", raw.direct_tls_port, 0, Some(65535));
        for (key, p) in [("s2s.port", port), ("s2s.direct_tls_port", direct)] {
            if p != 0 && ports.contains(&p) {
                self.error(
                    key,
                    format!("must differ from the client and Net ports ({p} is one of them)"),
                );
            }
        }
        if direct != 0 && direct == port {
            self.error("s2s.direct_tls_port", "must differ from s2s.port".into());
        }
        let mut name_servers = Vec::new();
        for (i, n) in raw.name_servers.iter().enumerate() {
            let addr = n
                .parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| n.parse::<IpAddr>().ok().map(|ip| (ip, 53).into()));
            match addr {
                Some(a) => name_servers.push(a),
                None => self.error(
                    &format!("s2s.name_servers[{i}]"),
                    format!("'{n}' is not an IP address with an optional port (like 127.0.0.1:53)"),
                ),
            }
        }
        let mut refuse = Vec::new();
        for (i, d) in raw.refuse.iter().enumerate() {
            if let Some(d) = self.host_name(&format!("s2s.refuse[{i}]"), d) {
                refuse.push(d);
            }
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let key = |f: &str| format!("s2s.routes[{i}].{f}");
            let domain = self.host_name(&key("domain"), &r.domain);
            let host_ok = r.host.parse::<IpAddr>().is_ok() || jid::DomainPart::new(&r.host).is_ok();
            if !host_ok || r.host.is_empty() {
                self.error(
                    &key("host"),
                    format!("'{}' is not a host name or IP address", r.host),
                );
            }
            let port: u16 = self.int(&key("port"), r.port, 1, Some(65535));
            if let Some(domain) = domain {
                routes.push(proto_core::S2sRoute {
                    domain,
                    host: r.host,
                    port,
                    direct_tls: r.direct_tls,
                });
            }
        }
        for (i, f) in raw.ca_files.iter().enumerate() {
            if f.as_os_str().is_empty() {
                self.error(&format!("s2s.ca_files[{i}]"), "is an empty path".into());
            }
        }
        let core = proto_core::S2sConfig {
            require_tls: raw.require_encryption,
            require_certificates: raw.require_certificates,
            dialback_secret: raw.dialback_secret.clone().into_bytes(),
            routes,
            refuse,
            queue_limit: self.int("s2s.queue_limit", raw.queue_limit, 1, Some(1_000_000)),
            max_inbound: self.int("s2s.max_inbound", raw.max_inbound, 1, Some(1_000_000)),
            max_inbound_per_ip: self.int(
                "s2s.max_inbound_per_ip",
                raw.max_inbound_per_ip,
                1,
                Some(1_000_000),
            ),
            max_inbound_per_domain: self.int(
                "s2s.max_inbound_per_domain",
                raw.max_inbound_per_domain,
                1,
                Some(1_000_000),
            ),
            max_outbound: self.int("s2s.max_outbound", raw.max_outbound, 1, Some(1_000_000)),
            idle_timeout: self.seconds("s2s.idle_timeout", raw.idle_timeout, 10),
        };
        (self.0.len() == errors).then(|| {
            (
                core,
                S2sFile {
                    listener: std::net::SocketAddr::new(listen, port),
                    direct_listener: (direct != 0)
                        .then(|| std::net::SocketAddr::new(listen, direct)),
                    ca_files: raw.ca_files,
                    system_roots: raw.system_roots,
                    name_servers,
                    secret_configured: !raw.dialback_secret.is_empty(),
                },
            )
        })
    }

    /// `[net]`, every key checked: the network and the Net listener;
    /// `None` when the section is absent. This server's own entry in
    /// `net.servers` is left out of the peers.
    fn net(
        &mut self,
        net: RawNet,
        domain: &str,
        c2s_ports: [u16; 2],
    ) -> Option<(
        proto_core::NetConfig,
        std::net::SocketAddr,
        Option<[u8; 32]>,
    )> {
        if net.host.is_empty() && net.servers.is_empty() {
            return None;
        }
        let errors = self.0.len();
        let host = if net.host.is_empty() {
            self.error(
                "net.host",
                "must name this server's host in the network (like beta.kontalk.net) when \
                 net.servers is set"
                    .into(),
            );
            None
        } else {
            self.host_name("net.host", &net.host)
        };
        if host
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(domain))
        {
            self.error(
                "net.host",
                format!(
                    "must differ from server.domain ('{domain}', the network's domain that every \
                     user is in): it is this server's own name"
                ),
            );
        }
        let listen = net.listen.parse().unwrap_or_else(|_| {
            self.error(
                "net.listen",
                format!(
                    "must be an IP address (like 0.0.0.0 or ::), got '{}'",
                    net.listen
                ),
            );
            IpAddr::from([0, 0, 0, 0])
        });
        let port: u16 = self.int("net.port", net.port, 1, Some(65535));
        if port != 0 && c2s_ports.contains(&port) {
            self.error(
                "net.port",
                format!("must differ from the client ports ({port} is one of them)"),
            );
        }
        let mut peers = Vec::new();
        let mut own = None;
        let mut seen: Vec<String> = Vec::new();
        for (i, s) in net.servers.into_iter().enumerate() {
            let key = |field: &str| format!("net.servers[{i}].{field}");
            let name = self.host_name(&key("host"), &s.host);
            let fingerprint = parse_fingerprint(&s.fingerprint);
            if fingerprint.is_none() {
                self.error(
                    &key("fingerprint"),
                    format!(
                        "'{}' is not a SHA-256 fingerprint (64 hex digits, colons allowed, as \
                         `kontalkd net-fingerprint` prints it on that server)",
                        s.fingerprint
                    ),
                );
            }
            let address = if s.address.is_empty() {
                format!("{}:{NET_PORT}", s.host)
            } else {
                s.address.clone()
            };
            let clients = if s.clients.is_empty() {
                s.host.to_ascii_lowercase()
            } else {
                s.clients.clone()
            };
            // The clients' address may leave the port out (5222 then).
            if !s.clients.is_empty()
                && !valid_address(&clients)
                && !valid_address(&format!("{clients}:5222"))
            {
                self.error(
                    &key("clients"),
                    format!(
                        "'{clients}' is not where clients connect (like beta.kontalk.net, \
                         beta.kontalk.net:5222 or 192.0.2.7:5222)"
                    ),
                );
            }
            // A default address is as good as its host, which is checked above.
            if (name.is_some() || !s.address.is_empty()) && !valid_address(&address) {
                self.error(
                    &key("address"),
                    format!(
                        "'{address}' is not an address with a port (like prime.kontalk.net:5270 \
                         or 192.0.2.7:5270)"
                    ),
                );
            }
            let Some(name) = name else { continue };
            if name.eq_ignore_ascii_case(domain) {
                self.error(
                    &key("host"),
                    format!("'{name}' is server.domain, the network's domain, not a server"),
                );
                continue;
            }
            if seen.contains(&name) {
                self.error(&key("host"), format!("'{name}' is listed twice"));
                continue;
            }
            seen.push(name.clone());
            if host.as_deref() == Some(name.as_str()) {
                // The same list on every server: this one's own entry.
                own = fingerprint;
                continue;
            }
            if let Some(fingerprint) = fingerprint {
                peers.push(proto_core::NetPeer {
                    host: name,
                    address,
                    clients,
                    fingerprint,
                    enabled: s.enabled,
                });
            }
        }
        (self.0.len() == errors).then(|| {
            let host = host.unwrap_or_default();
            (
                proto_core::NetConfig { host, peers },
                std::net::SocketAddr::new(listen, port),
                own,
            )
        })
    }

    /// Every `{name}` of a template (a name of letters and `_`) is one of
    /// [`GATEWAY_PLACEHOLDERS`]; other braces, like a JSON body's, stay as
    /// they are.
    fn template(&mut self, key: &str, template: &str) {
        for (open, _) in template.match_indices('{') {
            let rest = &template[open + 1..];
            let len = rest
                .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
                .unwrap_or(rest.len());
            if len > 0 && rest[len..].starts_with('}') {
                let name = &template[open..open + len + 2];
                if !GATEWAY_PLACEHOLDERS.contains(&name) {
                    self.error(
                        key,
                        format!(
                            "has the unknown placeholder {name}: use {{phone}}, {{code}} or {{sender}}"
                        ),
                    );
                }
            }
        }
    }
}

impl RawConfig {
    fn validate(self) -> Result<FileConfig, ConfigErrors> {
        let mut c = Checker::default();
        let RawConfig {
            server,
            c2s,
            tls,
            limits,
            offline,
            archive,
            kontalk,
            net,
            s2s,
            upload,
            push: raw_push,
        } = self;

        let domain = match jid::DomainPart::new(&server.domain) {
            Ok(d) if !server.domain.contains(['@', '/']) => d.as_str().to_owned(),
            _ => {
                c.error(
                    "server.domain",
                    format!(
                        "'{}' is not a valid JID domain (a host name like example.org)",
                        server.domain
                    ),
                );
                String::new()
            }
        };
        if server.data_dir.as_os_str().is_empty() {
            c.error("server.data_dir", "must not be empty".into());
        }
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let log_level = if LEVELS.contains(&server.log_level.as_str()) {
            server.log_level.parse().unwrap_or(log::LevelFilter::Info)
        } else {
            c.error(
                "server.log_level",
                format!(
                    "must be one of {}, got '{}'",
                    LEVELS.join(", "),
                    server.log_level
                ),
            );
            log::LevelFilter::Info
        };

        let metrics_listen = match server.metrics_listen.trim() {
            "" => None,
            text => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.port() != 0 => Some(addr),
                _ => {
                    c.error(
                        "server.metrics_listen",
                        format!(
                            "must be an IP address and a port (like 127.0.0.1:9275 or [::1]:9275), \
                             or empty to turn the metrics off, got '{text}'"
                        ),
                    );
                    None
                }
            },
        };

        let listen = c2s.listen.parse().unwrap_or_else(|_| {
            c.error(
                "c2s.listen",
                format!(
                    "must be an IP address (like 127.0.0.1, 0.0.0.0 or ::), got '{}'",
                    c2s.listen
                ),
            );
            IpAddr::from([0, 0, 0, 0])
        });
        let c2s_port = c.int("c2s.port", c2s.port, 1, Some(65535));
        let direct_tls_port = c.int("c2s.direct_tls_port", c2s.direct_tls_port, 0, Some(65535));
        if direct_tls_port != 0 && direct_tls_port == c2s_port {
            c.error(
                "c2s.direct_tls_port",
                format!("must differ from c2s.port ({c2s_port}); 0 disables direct TLS"),
            );
        }

        let tls_certificate = Checker::optional_path(tls.certificate);
        let tls_private_key = Checker::optional_path(tls.private_key);
        match (&tls_certificate, &tls_private_key) {
            (Some(_), None) => c.error(
                "tls.private_key",
                "must be set when tls.certificate is set (both or neither)".into(),
            ),
            (None, Some(_)) => c.error(
                "tls.certificate",
                "must be set when tls.private_key is set (both or neither)".into(),
            ),
            _ => {}
        }

        let core_limits = proto_core::Limits {
            max_stanza_size: c.int(
                "limits.max_stanza_size",
                limits.max_stanza_size,
                10_000,
                None,
            ),
            max_depth: c.int("limits.max_depth", limits.max_depth, 4, Some(1000)),
            max_attributes: c.int(
                "limits.max_attributes",
                limits.max_attributes,
                1,
                Some(10_000),
            ),
            auth_timeout: c.seconds("limits.auth_timeout", limits.auth_timeout, 1),
            idle_timeout: c.seconds("limits.idle_timeout", limits.idle_timeout, 10),
            keepalive_interval: c.seconds(
                "limits.keepalive_interval",
                limits.keepalive_interval,
                1,
            ),
            max_auth_failures: c.int(
                "limits.max_auth_failures",
                limits.max_auth_failures,
                1,
                None,
            ),
            output_budget: c.int("limits.output_budget", limits.output_budget, 65_536, None),
            ping_interval: c.seconds("limits.ping_interval", limits.ping_interval, 10),
            ping_timeout: c.seconds("limits.ping_timeout", limits.ping_timeout, 5),
            max_connections: c.int(
                "limits.max_connections",
                limits.max_connections,
                1,
                Some(10_000_000),
            ),
            max_connections_per_ip: c.int(
                "limits.max_connections_per_ip",
                limits.max_connections_per_ip,
                0,
                Some(10_000_000),
            ),
            max_auth_failures_per_ip: c.int(
                "limits.max_auth_failures_per_ip",
                limits.max_auth_failures_per_ip,
                1,
                None,
            ),
            auth_failure_window: c.seconds(
                "limits.auth_failure_window",
                limits.auth_failure_window,
                1,
            ),
            stanzas_per_second: c.int(
                "limits.stanzas_per_second",
                limits.stanzas_per_second,
                0,
                Some(1_000_000),
            ),
            resume_timeout: c.seconds("limits.resume_timeout", limits.resume_timeout, 0),
        };
        let offline_quota = c.int("offline.quota", offline.quota, 0, Some(1_000_000));
        let expiry_days: u64 = c.int("offline.expiry_days", offline.expiry_days, 1, Some(3650));
        let retention_days: u64 = c.int(
            "archive.retention_days",
            archive.retention_days,
            0,
            Some(36500),
        );

        let verification = match kontalk.verification.as_str() {
            "log" => Verification::Log,
            "file" if !kontalk.verification_file.as_os_str().is_empty() => {
                Verification::File(kontalk.verification_file.clone())
            }
            "file" => {
                c.error(
                    "kontalk.verification_file",
                    "must name the file the codes are appended to (verification = \"file\")".into(),
                );
                Verification::Log
            }
            "http" => match c.gateway(&kontalk) {
                Some(g) => Verification::Http(g),
                None => Verification::Log,
            },
            other => {
                c.error(
                    "kontalk.verification",
                    format!("'{other}' is not a provider: \"log\", \"file\" or \"http\""),
                );
                Verification::Log
            }
        };
        let (net, net_listener, net_own_fingerprint) =
            match c.net(net, &domain, [c2s_port, direct_tls_port]) {
                Some((n, l, own)) => (Some(n), Some(l), own),
                None => (None, None, None),
            };
        let mut taken = vec![c2s_port, direct_tls_port];
        if let Some(l) = net_listener {
            taken.push(l.port());
        }
        if net.is_some() && s2s.enabled && s2s.dialback_secret.is_empty() {
            // A foreign server verifies the network domain's dialback keys at
            // whichever server its DNS names: every one must know the key.
            c.error(
                "s2s.dialback_secret",
                "must be set, the same on every server of the network, when [net] and [s2s] \
                 are both on: a foreign server may check the network domain's dialback keys at \
                 any of them"
                    .into(),
            );
        }
        let (core_s2s, s2s_file) = match c.s2s(s2s, &taken) {
            Some((core, file)) => (Some(core), Some(file)),
            None => (None, None),
        };
        if let Some(f) = &s2s_file {
            taken.push(f.listener.port());
            taken.extend(f.direct_listener.map(|l| l.port()));
        }
        let (core_upload, upload_file) = match c.upload(upload, &domain, listen, &taken) {
            Some((core, file)) => (Some(core), Some(file)),
            None => (None, None),
        };
        let core_kontalk = proto_core::KontalkConfig {
            registration: kontalk.registration,
            sender: kontalk.sender.clone(),
            code_lifetime: c.seconds("kontalk.code_lifetime", kontalk.code_lifetime, 60),
            resend_after: c.seconds("kontalk.resend_after", kontalk.resend_after, 0),
            max_attempts: c.int("kontalk.max_attempts", kontalk.max_attempts, 1, Some(1000)),
            codes_per_address: c.int(
                "kontalk.codes_per_address",
                kontalk.codes_per_address,
                0,
                Some(1_000_000),
            ),
            terms_url: (!kontalk.terms_url.is_empty()).then(|| kontalk.terms_url.clone()),
            private_key_lifetime: c.seconds(
                "kontalk.private_key_lifetime",
                kontalk.private_key_lifetime,
                60,
            ),
            push_sender_id: c.push_sender_id(&kontalk.push_sender_id),
            push_delivery: false,
        };
        let push = c.push(&kontalk, core_kontalk.push_sender_id.is_some());
        let core_kontalk = proto_core::KontalkConfig {
            push_delivery: push.is_some(),
            ..core_kontalk
        };

        if !c.0.is_empty() {
            return Err(ConfigErrors(c.0));
        }
        Ok(FileConfig {
            core: proto_core::Config {
                domain,
                require_tls: c2s.require_encryption,
                allow_registration: c2s.allow_registration,
                limits: core_limits,
                offline_quota,
                offline_expiry: Duration::from_secs(expiry_days * 86_400),
                archive: archive.enabled,
                archive_retention: Duration::from_secs(retention_days * 86_400),
                kontalk: core_kontalk,
                net,
                s2s: core_s2s,
                upload: core_upload,
                push_include_sender: raw_push.include_sender,
                ..proto_core::Config::default()
            },
            kontalk_key_file: Checker::optional_path(kontalk.key_file),
            verification,
            data_dir: server.data_dir,
            listen,
            c2s_port,
            direct_tls_port: (direct_tls_port != 0).then_some(direct_tls_port),
            tls_certificate,
            tls_private_key,
            log_level,
            log_file: Checker::optional_path(server.log_file),
            metrics_listen,
            net_listener,
            net_own_fingerprint,
            s2s: s2s_file,
            upload: upload_file,
            push,
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_of_the_wrong_type_is_named_in_plain_words() {
        let text = "[c2s]\nport = \"abc\"\nrequire_encryption = \"yes\"\n\
                    [limits]\nmax_depth = \"x\"\nidle_timeout = -5\n";
        let errors = parse_config(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "c2s.port",
                "c2s.require_encryption",
                "limits.max_depth",
                "limits.idle_timeout"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("expected an integer"),
            "{errors:?}"
        );
        assert!(
            errors[1].message.contains("expected true or false"),
            "{errors:?}"
        );
        assert!(
            !errors.iter().any(|e| e.message.contains("i64")),
            "{errors:?}"
        );
    }

    fn keys(errors: &ConfigErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn defaults() {
        let cfg = parse_config("").unwrap();
        assert_eq!(
            cfg.core,
            proto_core::Config {
                upload: Some(proto_core::UploadConfig::new(
                    "localhost",
                    "https://localhost:5443"
                )),
                ..proto_core::Config::default()
            }
        );
        assert_eq!(
            cfg.upload,
            Some(UploadFile {
                listener: "127.0.0.1:5443".parse().unwrap(),
                tls: true,
                max_connections: 256,
            })
        );
        assert_eq!(cfg.data_dir, Path::new("./data"));
        assert_eq!(cfg.listen, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(cfg.c2s_port, 5222);
        assert_eq!(cfg.direct_tls_port, Some(5223));
        assert_eq!(cfg.tls_certificate, None);
        assert_eq!(cfg.tls_private_key, None);
        assert_eq!(cfg.log_level, log::LevelFilter::Info);
        assert_eq!(cfg.log_file, None);
        assert_eq!(load_config(None).unwrap(), cfg);
        assert_eq!(FileConfig::default(), cfg);
    }

    #[test]
    fn push_delivery_needs_credentials_and_the_sender_id() {
        let cfg = parse_config(
            "[kontalk]\npush_sender_id = \"42\"\npush_credentials = \"/etc/kontalkd/fcm.json\"\n",
        )
        .unwrap();
        assert!(cfg.core.kontalk.push_delivery);
        let push = cfg.push.unwrap();
        assert_eq!(push.credentials, Path::new("/etc/kontalkd/fcm.json"));
        assert_eq!(push.send_url, crate::push::DEFAULT_SEND_URL);
        assert_eq!(push.timeout, Duration::from_secs(10));
        let none = parse_config("[kontalk]\npush_sender_id = \"42\"\n").unwrap();
        assert!(!none.core.kontalk.push_delivery && none.push.is_none());
        let errors = parse_config(
            "[kontalk]\npush_credentials = \"x.json\"\npush_token_url = \"ftp://x\"\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&errors),
            ["kontalk.push_credentials", "kontalk.push_token_url"],
            "{errors:?}"
        );
    }

    #[test]
    fn upload_settings_are_checked_and_named() {
        let cfg = parse_config(
            "[server]\ndomain = \"example.org\"\n[upload]\nservice = \"Files.Example.org\"\n\
             listen = \"::\"\nport = 8443\ntls = false\npublic_url = \"https://up.example.org/\"\n\
             max_file_size = 1000\nquota = 0\nslot_lifetime = 60\nexpire_after_days = 2\n",
        )
        .unwrap();
        let u = cfg.core.upload.unwrap();
        assert_eq!(u.service, "files.example.org");
        assert_eq!(u.base_url, "https://up.example.org");
        assert_eq!((u.max_file_size, u.quota), (1000, 0));
        assert_eq!(u.slot_lifetime, Duration::from_secs(60));
        assert_eq!(u.expire_after, Duration::from_secs(2 * 86_400));
        let file = cfg.upload.unwrap();
        assert_eq!(file.listener, "[::]:8443".parse().unwrap());
        assert!(!file.tls);
        let plain = parse_config("[upload]\ntls = false\n").unwrap();
        assert_eq!(plain.core.upload.unwrap().base_url, "http://localhost:5443");
        let off = parse_config("[upload]\nenabled = false\n").unwrap();
        assert_eq!((off.core.upload, off.upload), (None, None));
        let errors = parse_config(
            "[upload]\nservice = \"localhost\"\nport = 5222\npublic_url = \"ftp://x\"\n\
             max_file_size = 0\nlisten = \"everywhere\"\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&errors),
            [
                "upload.listen",
                "upload.port",
                "upload.service",
                "upload.public_url",
                "upload.max_file_size"
            ],
            "{errors:?}"
        );
        let errors = parse_config("[upload]\npublic_url = \"https://h/path\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["upload.public_url"]);
    }

    #[test]
    fn example_parses_to_the_defaults() {
        assert_eq!(
            parse_config(example_config()).unwrap(),
            parse_config("").unwrap()
        );
    }

    #[test]
    fn full_file() {
        let cfg = parse_config(
            r#"
            [server]
            domain = "Example.ORG"
            data_dir = "/var/lib/kontalkd"
            log_level = "debug"
            log_file = "/var/log/kontalkd/kontalkd.log"
            [c2s]
            listen = "::"
            port = 15222
            direct_tls_port = 0
            require_encryption = false
            allow_registration = true
            [tls]
            certificate = "cert.pem"
            private_key = "key.pem"
            [limits]
            max_stanza_size = 10000
            max_depth = 4
            max_attributes = 10000
            auth_timeout = 1
            idle_timeout = 10
            keepalive_interval = 30
            max_auth_failures = 5
            output_budget = 65536
            "#,
        )
        .unwrap();
        assert_eq!(cfg.core.domain, "example.org");
        assert!(!cfg.core.require_tls);
        assert!(cfg.core.allow_registration);
        assert_eq!(
            cfg.core.limits,
            proto_core::Limits {
                max_stanza_size: 10_000,
                max_depth: 4,
                max_attributes: 10_000,
                auth_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(10),
                keepalive_interval: Duration::from_secs(30),
                max_auth_failures: 5,
                output_budget: 65_536,
                ..proto_core::Limits::default()
            }
        );
        assert_eq!(cfg.data_dir, Path::new("/var/lib/kontalkd"));
        assert_eq!(cfg.log_level, log::LevelFilter::Debug);
        assert_eq!(
            cfg.log_file.as_deref(),
            Some(Path::new("/var/log/kontalkd/kontalkd.log"))
        );
        assert_eq!(cfg.listen, "::".parse::<IpAddr>().unwrap());
        assert_eq!(cfg.c2s_port, 15222);
        assert_eq!(cfg.direct_tls_port, None);
        assert_eq!(cfg.tls_certificate.as_deref(), Some(Path::new("cert.pem")));
        assert_eq!(cfg.tls_private_key.as_deref(), Some(Path::new("key.pem")));
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_given_an_address_and_port() {
        assert_eq!(parse_config("").unwrap().metrics_listen, None);
        let cfg = parse_config("[server]\nmetrics_listen = \"127.0.0.1:9275\"\n").unwrap();
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9275".parse().unwrap()));
        let cfg = parse_config("[server]\nmetrics_listen = \"[::1]:9275\"\n").unwrap();
        assert_eq!(cfg.metrics_listen, Some("[::1]:9275".parse().unwrap()));
        for bad in ["localhost:9275", "127.0.0.1", "127.0.0.1:0", "9275"] {
            let errors = parse_config(&format!("[server]\nmetrics_listen = \"{bad}\"\n"))
                .unwrap_err()
                .0;
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].key, "server.metrics_listen");
            assert!(errors[0].message.contains(bad), "{}", errors[0].message);
        }
    }

    #[test]
    fn every_bad_value_is_reported() {
        let errors = parse_config(
            r#"
            [server]
            domain = "a@b"
            log_level = "loud"
            [c2s]
            listen = "localhost"
            port = 70000
            direct_tls_port = -1
            [limits]
            max_stanza_size = 100
            max_depth = 2
            max_attributes = 0
            auth_timeout = 0
            idle_timeout = 5
            keepalive_interval = 99999999999
            max_auth_failures = 0
            output_budget = 1
            "#,
        )
        .unwrap_err();
        assert_eq!(
            keys(&errors),
            [
                "server.domain",
                "server.log_level",
                "c2s.listen",
                "c2s.port",
                "c2s.direct_tls_port",
                "limits.max_stanza_size",
                "limits.max_depth",
                "limits.max_attributes",
                "limits.auth_timeout",
                "limits.idle_timeout",
                "limits.keepalive_interval",
                "limits.max_auth_failures",
                "limits.output_budget",
            ]
        );
        let text = errors.to_string();
        assert_eq!(text.lines().count(), errors.0.len());
        assert!(
            text.contains("limits.max_depth: must be between 4 and 1000, got 2"),
            "{text}"
        );
        assert!(
            text.contains("c2s.port: must be between 1 and 65535, got 70000"),
            "{text}"
        );
        assert!(
            text.contains("limits.max_stanza_size: must be at least 10000, got 100"),
            "{text}"
        );
    }

    #[test]
    fn same_ports_are_refused() {
        let errors = parse_config("[c2s]\nport = 5223\n").unwrap_err();
        assert_eq!(keys(&errors), ["c2s.direct_tls_port"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let errors = parse_config("[limits]\nmax_depth = 8\nmax_dept = 8\n").unwrap_err();
        assert_eq!(keys(&errors), ["limits.max_dept"]);
        assert!(errors.0[0].message.contains("max_dept"), "{errors}");

        let errors = parse_config("[serveur]\ndomain = \"x\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["serveur"]);

        let errors = parse_config("[c2s]\nport = \"5222\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["c2s.port"]);
    }

    #[test]
    fn bad_toml_is_one_error() {
        let errors = parse_config("[server]\ndomain = \n").unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].key, "");
        assert!(errors.0[0].message.contains("line 2"), "{errors}");
    }

    #[test]
    fn a_network_is_read_with_this_servers_own_entry_left_out() {
        let fpr = |b: u8| vec![format!("{b:02x}"); 32].join(":");
        let text = format!(
            "[server]\ndomain = \"kontalk.net\"\n\
             [net]\nhost = \"Beta.Kontalk.Net\"\nlisten = \"127.0.0.1\"\nport = 15270\n\
             [[net.servers]]\nhost = \"beta.kontalk.net\"\nfingerprint = \"{}\"\n\
             [[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"{}\"\n\
             [[net.servers]]\nhost = \"gamma.kontalk.net\"\naddress = \"127.0.0.1:15271\"\n\
             clients = \"127.0.0.1:15272\"\n\
             fingerprint = \"sha256:{}\"\nenabled = false\n",
            fpr(1),
            fpr(0xab),
            "CD".repeat(32)
        );
        let cfg = parse_config(&text).unwrap();
        let net = cfg.core.net.unwrap();
        assert_eq!(net.host, "beta.kontalk.net");
        assert_eq!(cfg.net_listener, Some("127.0.0.1:15270".parse().unwrap()));
        assert_eq!(
            net.peers,
            [
                proto_core::NetPeer {
                    host: "prime.kontalk.net".into(),
                    address: "prime.kontalk.net:5270".into(),
                    clients: "prime.kontalk.net".into(),
                    fingerprint: [0xab; 32],
                    enabled: true,
                },
                proto_core::NetPeer {
                    host: "gamma.kontalk.net".into(),
                    address: "127.0.0.1:15271".into(),
                    clients: "127.0.0.1:15272".into(),
                    fingerprint: [0xcd; 32],
                    enabled: false,
                },
            ]
        );
        assert_eq!(parse_config("").unwrap().core.net, None);
        assert_eq!(parse_config("").unwrap().net_listener, None);
        assert_eq!(
            format_fingerprint(&[0xab; 32]),
            vec!["AB"; 32].join(":"),
            "what net-fingerprint prints"
        );
        assert_eq!(
            parse_fingerprint(&format_fingerprint(&[7; 32])),
            Some([7; 32])
        );
    }

    #[test]
    fn federation_is_read_with_its_routes_and_is_off_by_default() {
        let cfg = parse_config("").unwrap();
        assert!(cfg.s2s.is_none() && cfg.core.s2s.is_none());
        let cfg = parse_config(
            "[server]\ndomain = \"k.test\"\n[s2s]\nenabled = true\nport = 15269\n\
             direct_tls_port = 15271\nname_servers = [\"127.0.0.1:5353\", \"::1\"]\n\
             refuse = [\"Spam.Test\"]\nca_files = [\"/tmp/ca.pem\"]\n\
             [[s2s.routes]]\ndomain = \"p.test\"\nhost = \"127.0.0.1\"\nport = 25269\n",
        )
        .unwrap();
        let file = cfg.s2s.unwrap();
        assert_eq!(file.listener, "0.0.0.0:15269".parse().unwrap());
        assert_eq!(file.direct_listener, Some("0.0.0.0:15271".parse().unwrap()));
        assert_eq!(
            file.name_servers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(!file.secret_configured);
        let core = cfg.core.s2s.unwrap();
        assert!(core.require_tls && !core.require_certificates);
        assert_eq!(core.refuse, vec!["spam.test".to_owned()]);
        assert_eq!(core.routes[0].domain, "p.test");
        assert_eq!(core.routes[0].port, 25269);
    }

    #[test]
    fn federation_in_a_network_needs_the_networks_dialback_secret() {
        let fpr = vec!["00"; 32].join(":");
        let text = |secret: &str| {
            format!(
                "[server]\ndomain = \"kontalk.net\"\n\
                 [net]\nhost = \"beta.kontalk.net\"\nport = 15270\n\
                 [[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"{fpr}\"\n\
                 [s2s]\nenabled = true\nport = 15269\n{secret}"
            )
        };
        let errors = parse_config(&text("")).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["s2s.dialback_secret"], "{errors:?}");
        let cfg = parse_config(&text("dialback_secret = \"shared by the network\"\n")).unwrap();
        assert!(cfg.s2s.unwrap().secret_configured);
        assert_eq!(
            cfg.core.s2s.unwrap().dialback_secret,
            b"shared by the network".to_vec()
        );
    }

    #[test]
    fn every_bad_federation_value_is_named() {
        let text = "[s2s]\nenabled = true\nlisten = \"here\"\nport = 5222\n\
                    name_servers = [\"dns.example\"]\nrefuse = [\"a@b\"]\nidle_timeout = 1\n\
                    max_inbound_per_domain = 0\nmax_outbound = -1\n\
                    [[s2s.routes]]\ndomain = \"\"\nhost = \"\"\nport = 0\n";
        let errors = parse_config(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "s2s.listen",
                "s2s.port",
                "s2s.name_servers[0]",
                "s2s.refuse[0]",
                "s2s.routes[0].domain",
                "s2s.routes[0].host",
                "s2s.routes[0].port",
                "s2s.max_inbound_per_domain",
                "s2s.max_outbound",
                "s2s.idle_timeout",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn every_bad_network_value_is_named() {
        let good = vec!["00"; 32].join(":");
        let text = format!(
            "[server]\ndomain = \"kontalk.net\"\n[c2s]\nport = 5222\n\
             [net]\nhost = \"kontalk.net\"\nlisten = \"everywhere\"\nport = 5222\n\
             [[net.servers]]\nhost = \"a b\"\nfingerprint = \"{good}\"\n\
             [[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"12:34\"\n\
             [[net.servers]]\nhost = \"gamma.kontalk.net\"\naddress = \"gamma\"\n\
             fingerprint = \"{good}\"\n\
             [[net.servers]]\nhost = \"gamma.kontalk.net\"\nfingerprint = \"{good}\"\n\
             [[net.servers]]\nhost = \"kontalk.net\"\nfingerprint = \"{good}\"\n"
        );
        let errors = parse_config(&text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net.host",
                "net.listen",
                "net.port",
                "net.servers[0].host",
                "net.servers[1].fingerprint",
                "net.servers[2].address",
                "net.servers[3].host",
                "net.servers[4].host",
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("server.domain"), "{errors:?}");
        assert!(errors[6].message.contains("listed twice"), "{errors:?}");
        // Servers without this server's host.
        let errors = parse_config(&format!(
            "[[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"{good}\"\n"
        ))
        .unwrap_err()
        .0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "net.host");
        // An entry without a fingerprint is a TOML-level error named by its array.
        let errors = parse_config("[[net.servers]]\nhost = \"prime.kontalk.net\"\n")
            .unwrap_err()
            .0;
        assert!(
            errors.iter().any(|e| e.message.contains("fingerprint")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_http_gateway_is_checked_key_by_key() {
        let cfg = parse_config(
            "[kontalk]\nverification = \"http\"\n\
             gateway_url = \"https://sms.example/send?key=K\"\n\
             gateway_body = '{\"to\":\"{phone}\",\"text\":\"{code}\"}'\n\
             gateway_content_type = \"application/json\"\n\
             gateway_authorization = \"Bearer T\"\ngateway_timeout = 5\n",
        )
        .unwrap();
        assert_eq!(
            cfg.verification,
            Verification::Http(Gateway {
                url: "https://sms.example/send?key=K".into(),
                post: true,
                body: r#"{"to":"{phone}","text":"{code}"}"#.into(),
                content_type: "application/json".into(),
                authorization: Some("Bearer T".into()),
                timeout: Duration::from_secs(5),
            })
        );
        let get = parse_config(
            "[kontalk]\nverification = \"http\"\ngateway_method = \"get\"\n\
             gateway_url = \"http://127.0.0.1:8080/sms?to={phone}&code={code}\"\n",
        )
        .unwrap();
        assert!(matches!(
            get.verification,
            Verification::Http(Gateway { post: false, .. })
        ));

        let errors = parse_config("[kontalk]\nverification = \"http\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["kontalk.gateway_url"]);
        for (toml, key, says) in [
            (
                "gateway_url = \"ftp://h/{code}\"",
                "kontalk.gateway_url",
                "http://",
            ),
            (
                "gateway_url = \"https:///{code}\"",
                "kontalk.gateway_url",
                "URL",
            ),
            (
                "gateway_url = \"https://h/{number}\"",
                "kontalk.gateway_url",
                "{number}",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_body = \"x\"",
                "kontalk.gateway_body",
                "{code}",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_body = \"{code\"",
                "kontalk.gateway_body",
                "{code}",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_method = \"PUT\"",
                "kontalk.gateway_method",
                "PUT",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_timeout = 301",
                "kontalk.gateway_timeout",
                "300",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_authorization = \"a\\nb\"",
                "kontalk.gateway_authorization",
                "header",
            ),
            (
                "gateway_url = \"https://h/\"\ngateway_content_type = \"\"",
                "kontalk.gateway_content_type",
                "Content-Type",
            ),
        ] {
            let errors =
                parse_config(&format!("[kontalk]\nverification = \"http\"\n{toml}\n")).unwrap_err();
            assert!(keys(&errors).contains(&key), "{toml}: {errors}");
            assert!(errors.to_string().contains(says), "{toml}: {errors}");
        }
        let errors = parse_config("[kontalk]\nverification = \"sms\"\n").unwrap_err();
        assert!(errors.to_string().contains("\"http\""), "{errors}");
    }

    #[test]
    fn the_push_sender_id_is_digits_or_empty() {
        let c = parse_config("[kontalk]\npush_sender_id = \"123456789012\"\n").unwrap();
        assert_eq!(
            c.core.kontalk.push_sender_id.as_deref(),
            Some("123456789012")
        );
        assert_eq!(parse_config("").unwrap().core.kontalk.push_sender_id, None);
        for bad in ["abc", "12 34", "1234567890123456789012345678901234"] {
            let errors =
                parse_config(&format!("[kontalk]\npush_sender_id = \"{bad}\"\n")).unwrap_err();
            assert_eq!(keys(&errors), ["kontalk.push_sender_id"], "{bad}");
        }
    }

    #[test]
    fn certificate_without_key() {
        let errors = parse_config("[tls]\ncertificate = \"cert.pem\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["tls.private_key"]);
        let errors = parse_config("[tls]\nprivate_key = \"key.pem\"\n").unwrap_err();
        assert_eq!(keys(&errors), ["tls.certificate"]);
    }

    #[test]
    fn unreadable_file_is_named() {
        let path = Path::new("/nonexistent/kontalkd.toml");
        let errors = load_config(Some(path)).unwrap_err();
        assert!(
            errors.to_string().contains("/nonexistent/kontalkd.toml"),
            "{errors}"
        );
    }
}
