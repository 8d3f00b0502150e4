//! Configuration of the protocol core: served domain, policies and limits.
//!
//! The runtimes fill this from the configuration file; the core only reads it,
//! and takes a new one while it runs with [`Server::reconfigure`](crate::Server::reconfigure).

use core::time::Duration;

/// Limits enforced on every client stream.
///
/// `max_stanza_size` and `idle_timeout` are advertised to clients with
/// XEP-0478 (stream limits advertisement); a breach of any limit is answered
/// with the `policy-violation` stream error (RFC 6120 section 4.9.3.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza accepted, in bytes of XML as received.
    pub max_stanza_size: usize,
    /// Deepest element nesting accepted inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Most attributes accepted on one element.
    pub max_attributes: usize,
    /// Time a stream may stay unauthenticated before it is closed with `connection-timeout`.
    pub auth_timeout: Duration,
    /// Time without any input after which a stream is closed with `connection-timeout`.
    pub idle_timeout: Duration,
    /// Time without any output after which the server sends a whitespace keepalive.
    pub keepalive_interval: Duration,
    /// Failed SASL attempts accepted on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Bytes of output a connection may have queued before it stops being read.
    pub output_budget: usize,
    /// Time without input after which the server pings a bound session (XEP-0199).
    pub ping_interval: Duration,
    /// Time a session has to answer a server ping before it is closed.
    pub ping_timeout: Duration,
    /// Most open connections; one more gets `resource-constraint`.
    pub max_connections: usize,
    /// Most open connections from one address (0: no limit); one more gets
    /// `policy-violation`.
    pub max_connections_per_ip: usize,
    /// Failed logins for one account from one address within
    /// `auth_failure_window` after which that account's logins from that
    /// address are refused; past half of it, each failure is answered later
    /// and later (throttling). An address as a whole is refused at 20 times
    /// this (many users share one behind carrier-grade NAT), and an
    /// account's failures from every address (5 times this) only slow its
    /// failure answers down.
    pub max_auth_failures_per_ip: u32,
    /// The window over which failed logins per address are counted.
    pub auth_failure_window: Duration,
    /// Stanzas per second a session may send (0: no limit); bursts of twice
    /// that are absorbed; beyond, the stanzas wait and the connection is not
    /// read until they are handled (TCP pushes back on the client).
    pub stanzas_per_second: u32,
    /// How long a session with stream management (XEP-0198) that lost its
    /// connection waits to be resumed on a new one (0: no resumption).
    pub resume_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            auth_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            keepalive_interval: Duration::from_secs(60),
            max_auth_failures: 3,
            output_budget: 1024 * 1024,
            ping_interval: Duration::from_secs(240),
            ping_timeout: Duration::from_secs(90),
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_auth_failures_per_ip: 10,
            auth_failure_window: Duration::from_secs(600),
            stanzas_per_second: 100,
            resume_timeout: Duration::from_secs(300),
        }
    }
}

/// Policies and identity of the server as the core sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The XMPP domain this server hosts (for example `localhost` or `kontalk.net`).
    pub domain: String,
    /// Whether STARTTLS must complete before authentication (RFC 6120 section 5.3.1).
    pub require_tls: bool,
    /// Whether in-band registration (XEP-0077) of username/password accounts is open.
    pub allow_registration: bool,
    /// Name and version reported to XEP-0092 software version queries.
    pub software_name: String,
    /// Version reported to XEP-0092 software version queries.
    pub software_version: String,
    /// Stream limits.
    pub limits: Limits,
    /// Most offline messages stored per account (XEP-0160); the sender of
    /// one more gets `service-unavailable`.
    pub offline_quota: u32,
    /// Offline messages older than this are deleted.
    pub offline_expiry: Duration,
    /// Whether messages are kept in each account's archive (XEP-0313).
    pub archive: bool,
    /// Archived messages older than this are deleted (zero: kept until the
    /// account is deleted).
    pub archive_retention: Duration,
    /// Kontalk: registration by phone number, keys, the network.
    pub kontalk: KontalkConfig,
    /// The Kontalk network this server is one of (Net); `None`: alone.
    pub net: Option<NetConfig>,
    /// Federation with other XMPP servers (S2S); `None`: every other
    /// domain is answered with `remote-server-not-found`.
    pub s2s: Option<S2sConfig>,
    /// HTTP file upload (XEP-0363) at its own address; `None`: off.
    pub upload: Option<UploadConfig>,
    /// Whether XEP-0357 notifications name the last message's sender (its
    /// bare JID); never the body.
    pub push_include_sender: bool,
}

/// HTTP file upload (XEP-0363): the service's address, where its files
/// are served, and its limits. The core hands out the slots; the host
/// serves the files (see [`crate::upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// The service's address (a domain, `media.<domain>` by default),
    /// listed in the domain's disco items.
    pub service: String,
    /// Where the files are served: scheme, host and port, no path and no
    /// trailing slash (`https://localhost:5443`).
    pub base_url: String,
    /// The largest file taken, in bytes (advertised, XEP-0363 section 6).
    pub max_file_size: u64,
    /// The most bytes one account may have stored (files not yet expired,
    /// and slots not yet used nor expired); 0: no limit.
    pub quota: u64,
    /// A slot's PUT must start this long after the slot was given out.
    pub slot_lifetime: Duration,
    /// A file is deleted this long after its slot was given out.
    pub expire_after: Duration,
}

impl UploadConfig {
    /// The defaults for `domain`, served at `base_url`.
    pub fn new(domain: &str, base_url: &str) -> UploadConfig {
        UploadConfig {
            service: format!("media.{domain}"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            max_file_size: 100 * 1024 * 1024,
            quota: 1024 * 1024 * 1024,
            slot_lifetime: Duration::from_secs(300),
            expire_after: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Federation (S2S, RFC 6120): streams to and from other XMPP servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sConfig {
    /// Streams without TLS are refused, both ways (RFC 6120 section 5.3.1).
    pub require_tls: bool,
    /// A peer must authenticate with a certificate that verifies for its
    /// domain (SASL EXTERNAL, or dialback over such a stream); dialback
    /// alone is refused.
    pub require_certificates: bool,
    /// The secret dialback keys are made from (XEP-0185): it must survive
    /// restarts.
    pub dialback_secret: Vec<u8>,
    /// Domains reached at a fixed place instead of through DNS.
    pub routes: Vec<S2sRoute>,
    /// Domains refused both ways (lowercase).
    pub refuse: Vec<String>,
    /// Stanzas queued for one domain while its stream is being made; one
    /// more is answered with `resource-constraint`.
    pub queue_limit: usize,
    /// Most inbound streams in all.
    pub max_inbound: usize,
    /// Most inbound streams from one address.
    pub max_inbound_per_ip: usize,
    /// Most inbound streams that authenticated one remote domain: one
    /// more is refused its authentication.
    pub max_inbound_per_domain: usize,
    /// Most outbound streams in all (one per pair of domains): a new one
    /// closes the stream that has been idle longest, or, if every one is
    /// busy, what waits for it is answered with `resource-constraint`.
    pub max_outbound: usize,
    /// A stream that carried no stanza this long is closed (and made again
    /// when a stanza comes).
    pub idle_timeout: Duration,
}

/// A domain reached at a fixed host and port (no DNS of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sRoute {
    /// The remote domain (lowercase).
    pub domain: String,
    /// The host name or IP address to connect to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            require_tls: true,
            require_certificates: false,
            dialback_secret: Vec::new(),
            routes: Vec::new(),
            refuse: Vec::new(),
            queue_limit: 10_000,
            max_inbound: 1000,
            max_inbound_per_ip: 20,
            max_inbound_per_domain: 10,
            max_outbound: 1000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The Kontalk network (Net): the servers that share [`Config::domain`]
/// (the network's domain, like `kontalk.net`), each with a host name of
/// its own and its own users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// This server's host name in the network, like `beta.kontalk.net`.
    pub host: String,
    /// The other servers of the network.
    pub peers: Vec<NetPeer>,
}

/// One other server of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPeer {
    /// Its host name, the one it claims on a link.
    pub host: String,
    /// Where its Net listener is (`name:port` or `ip:port`), for the
    /// runtime to connect to.
    pub address: String,
    /// Where its clients connect (`name`, `name:port` or `ip:port`): what
    /// a client of its users that came here is told
    /// (`see-other-host`, RFC 6120 section 4.9.3.19).
    pub clients: String,
    /// The SHA-256 of its TLS certificate (DER): a link whose certificate
    /// has another is refused, both ways.
    pub fingerprint: [u8; 32],
    /// Whether it is linked to; a disabled server is refused like an
    /// unknown one.
    pub enabled: bool,
}

/// What Kontalk clients get: registration by phone number with a
/// verification code, keys certified by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KontalkConfig {
    /// Whether phone numbers may register (the Kontalk forms of XEP-0077).
    pub registration: bool,
    /// The sender the verification code comes from, as the client shows it
    /// (the `from` field of the answer: a phone number or a name).
    pub sender: String,
    /// A verification code is valid this long.
    pub code_lifetime: Duration,
    /// A number gets another code only this long after the last one.
    pub resend_after: Duration,
    /// Wrong codes allowed before the code is gone.
    pub max_attempts: u32,
    /// Codes asked for from one address per login-failure window
    /// ([`Limits::auth_failure_window`]); 0: no limit.
    pub codes_per_address: u32,
    /// The terms of service the client must accept, if any (a URL).
    pub terms_url: Option<String>,
    /// A private key backup can be retrieved this long.
    pub private_key_lifetime: Duration,
    /// The push sender id (Firebase Cloud Messaging's project number) the
    /// Kontalk client registers its device with; with it, `push@<domain>`
    /// takes the devices' push tokens (see [`crate::kontalk::push`]).
    pub push_sender_id: Option<String>,
    /// Whether the host sends pushes (its provider is configured): see
    /// [`crate::kontalk::push`].
    pub push_delivery: bool,
}

impl Default for KontalkConfig {
    fn default() -> Self {
        KontalkConfig {
            registration: true,
            sender: "kontalkd".to_owned(),
            code_lifetime: Duration::from_secs(15 * 60),
            resend_after: Duration::from_secs(60),
            max_attempts: 5,
            codes_per_address: 20,
            terms_url: None,
            private_key_lifetime: Duration::from_secs(24 * 3600),
            push_sender_id: None,
            push_delivery: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".to_owned(),
            require_tls: true,
            allow_registration: false,
            software_name: "kontalkd".to_owned(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            limits: Limits::default(),
            offline_quota: 1000,
            offline_expiry: Duration::from_secs(7 * 24 * 3600),
            archive: true,
            archive_retention: Duration::from_secs(30 * 24 * 3600),
            kontalk: KontalkConfig::default(),
            net: None,
            s2s: None,
            upload: None,
            push_include_sender: false,
        }
    }
}

/// What [`Server::reconfigure`] did with a new configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Settings that changed and apply from now on, by field name
    /// (`allow_registration`, `limits.max_depth`).
    pub applied: Vec<String>,
    /// Settings that changed but keep their running value until a restart.
    pub restart: Vec<String>,
}

impl crate::Server {
    /// A new configuration while the server runs (a reload): applies what
    /// can change safely and keeps the rest, returning both lists by the
    /// fields' names (`require_tls`, `limits.max_depth`, ...).
    ///
    /// What applies, applies from now on: policies and quotas to the next
    /// request (registration, TLS before authentication, offline quota and
    /// expiry, software version); connection limits to the next accepted
    /// connection; login throttling to the next failure; timers (auth,
    /// keepalive, ping) to the next time they are set; the stanza rate and
    /// output budget to the next stanza; the parser limits (stanza size,
    /// depth, attributes) to every stream started or restarted from now on,
    /// which also advertises them (XEP-0478), while a running stream keeps
    /// the ones it was told. What needs a restart: the domain (every
    /// address, route and session depends on it) and a shorter
    /// `idle_timeout`, which streams were told with XEP-0478 and must not
    /// be cut short of (a longer one applies).
    pub fn reconfigure(&mut self, new: Config) -> Reconfigured {
        // Every field is decided below: a new one fails to compile here
        // until it is.
        let Config {
            domain: _,
            require_tls: _,
            allow_registration: _,
            software_name: _,
            software_version: _,
            limits: _,
            offline_quota: _,
            offline_expiry: _,
            archive: _,
            archive_retention: _,
            kontalk: _,
            net: _,
            s2s: _,
            upload: _,
            push_include_sender: _,
        } = &new;
        let crate::Limits {
            max_stanza_size: _,
            max_depth: _,
            max_attributes: _,
            auth_timeout: _,
            idle_timeout: _,
            keepalive_interval: _,
            max_auth_failures: _,
            output_budget: _,
            ping_interval: _,
            ping_timeout: _,
            max_connections: _,
            max_connections_per_ip: _,
            max_auth_failures_per_ip: _,
            auth_failure_window: _,
            stanzas_per_second: _,
            resume_timeout: _,
        } = &new.limits;
        let mut done = Reconfigured::default();
        let old = &mut self.config;
        macro_rules! apply {
            ($($field:ident).+) => {
                if old.$($field).+ != new.$($field).+ {
                    old.$($field).+ = new.$($field).+.clone();
                    done.applied.push(stringify!($($field).+).replace(' ', ""));
                }
            };
        }
        if old.domain != new.domain {
            done.restart.push("domain".into());
        }
        if old.net != new.net {
            done.restart.push("net".into());
        }
        if old.s2s != new.s2s {
            done.restart.push("s2s".into());
        }
        if old.upload != new.upload {
            done.restart.push("upload".into());
        }
        apply!(require_tls);
        apply!(allow_registration);
        apply!(software_name);
        apply!(software_version);
        apply!(offline_quota);
        apply!(offline_expiry);
        apply!(archive);
        apply!(archive_retention);
        apply!(push_include_sender);
        let crate::config::KontalkConfig {
            registration: _,
            sender: _,
            code_lifetime: _,
            resend_after: _,
            max_attempts: _,
            codes_per_address: _,
            terms_url: _,
            private_key_lifetime: _,
            push_sender_id: _,
            push_delivery: _,
        } = &new.kontalk;
        apply!(kontalk.registration);
        apply!(kontalk.sender);
        apply!(kontalk.code_lifetime);
        apply!(kontalk.resend_after);
        apply!(kontalk.max_attempts);
        apply!(kontalk.codes_per_address);
        apply!(kontalk.terms_url);
        apply!(kontalk.private_key_lifetime);
        apply!(kontalk.push_sender_id);
        apply!(kontalk.push_delivery);
        apply!(limits.max_stanza_size);
        apply!(limits.max_depth);
        apply!(limits.max_attributes);
        apply!(limits.auth_timeout);
        if new.limits.idle_timeout < old.limits.idle_timeout {
            done.restart.push("limits.idle_timeout".into());
        } else {
            apply!(limits.idle_timeout);
        }
        apply!(limits.keepalive_interval);
        apply!(limits.max_auth_failures);
        apply!(limits.output_budget);
        apply!(limits.ping_interval);
        apply!(limits.ping_timeout);
        apply!(limits.max_connections);
        apply!(limits.max_connections_per_ip);
        apply!(limits.max_auth_failures_per_ip);
        apply!(limits.auth_failure_window);
        apply!(limits.stanzas_per_second);
        apply!(limits.resume_timeout);
        done
    }
}
