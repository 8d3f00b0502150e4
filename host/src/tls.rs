//! The server's TLS identity: configured PEM files, or a generated self-signed certificate.

use std::fs;
use std::path::{Path, PathBuf};

use proto_core::{TlsConfigs, TlsIdentity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::FileConfig;

/// The certificate and key files of the configuration: the configured ones,
/// or `data_dir/tls/cert.pem` and `data_dir/tls/key.pem`; `true` when they
/// are the generated ones.
pub fn identity_paths(cfg: &FileConfig) -> (PathBuf, PathBuf, bool) {
    match (&cfg.tls_certificate, &cfg.tls_private_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
        _ => {
            let dir = cfg.data_dir.join("tls");
            (dir.join("cert.pem"), dir.join("key.pem"), true)
        }
    }
}

/// [`load_or_create_identity`], checked as [`inspect`] does at `now`, and
/// the rustls configurations built from it (once: building them is the
/// check that the key fits). Warnings are logged; errors refuse the
/// identity (all of them, one per line).
pub fn load_checked_tls(cfg: &FileConfig, now: u64) -> Result<TlsConfigs, String> {
    let identity = load_or_create_identity(cfg)?;
    let (cert_path, key_path, _) = identity_paths(cfg);
    let mut findings = Findings::default();
    let tls = TlsConfigs::new(&identity)
        .map_err(|e| {
            findings
                .errors
                .push(key_mismatch(&key_path, &cert_path, &e))
        })
        .ok();
    inspect_certificate(&identity, &cert_path, &cfg.core.domain, now, &mut findings);
    net_certificates(cfg, &identity, &mut findings);
    for w in &findings.warnings {
        log::warn!("{w}");
    }
    let roots = match s2s_roots(cfg) {
        Ok(roots) => roots,
        Err(e) => {
            findings.errors.push(e);
            Vec::new()
        }
    };
    match tls {
        Some(tls) if findings.errors.is_empty() => tls
            .with_roots(roots)
            .map_err(|e| format!("the s2s authorities: {e}")),
        _ => Err(findings.errors.join("\n")),
    }
}

/// The system's certificate bundle (Debian's `ca-certificates`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The authorities that authenticate other servers (federation): the
/// system's (unless `s2s.system_roots` is off) and `s2s.ca_files`.
fn s2s_roots(cfg: &FileConfig) -> Result<Vec<CertificateDer<'static>>, String> {
    let Some(s2s) = &cfg.s2s else {
        return Ok(Vec::new());
    };
    let mut roots = Vec::new();
    let system = Path::new(SYSTEM_ROOTS);
    if s2s.system_roots && system.exists() {
        match CertificateDer::pem_file_iter(system).map(|c| c.flatten().collect::<Vec<_>>()) {
            Ok(certs) => roots.extend(certs),
            Err(e) => log::warn!("cannot read the system's authorities {SYSTEM_ROOTS}: {e}"),
        }
    }
    for path in &s2s.ca_files {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("s2s.ca_files: cannot read {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "s2s.ca_files: {} holds no PEM certificate",
                path.display()
            ));
        }
        roots.extend(certs);
    }
    Ok(roots)
}

/// Loads the certificate chain and key named in the configuration, or, when none
/// is configured, `data_dir/tls/cert.pem` and `data_dir/tls/key.pem`, generating
/// a self-signed certificate for the domain there on first start.
///
/// Errors name the file that could not be read, parsed or written.
pub fn load_or_create_identity(cfg: &FileConfig) -> Result<TlsIdentity, String> {
    let (cert_path, key_path, generated) = identity_paths(cfg);
    if generated && !cert_path.exists() {
        let dir = cert_path.parent().expect("a file in the tls directory");
        generate(&cfg.core.domain, dir, &cert_path, &key_path)?;
    }
    load_identity(&cert_path, &key_path)
}

/// Reads a PEM certificate chain and private key.
fn load_identity(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, String> {
    let cert_chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?;
    if cert_chain.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    Ok(TlsIdentity { cert_chain, key })
}

/// Generates a self-signed certificate for `domain`, writing the key (mode 0600) then the certificate.
///
/// The certificate is written last, through a rename, so that its presence means both files are complete.
fn generate(domain: &str, dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    crate::datadir::create_private_dir(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;

    let (cert, signing_key) = self_signed(domain, crate::runtime::unix_now())
        .map_err(|e| format!("cannot generate a certificate for {domain}: {e}"))?;
    crate::datadir::write_file(key_path, signing_key.serialize_pem().as_bytes(), 0o600)?;
    let tmp = PathBuf::from(format!("{}.tmp", cert_path.display()));
    crate::datadir::write_file(&tmp, cert.pem().as_bytes(), 0o644)?;
    fs::rename(&tmp, cert_path)
        .map_err(|e| format!("cannot write certificate {}: {e}", cert_path.display()))?;
    log::info!(
        "generated a self-signed certificate for {domain} in {} (set tls.certificate and \
         tls.private_key to use your own)",
        cert_path.display()
    );
    Ok(())
}

/// What is wrong, or soon will be, with a certificate for a domain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// The server would not start, or clients would refuse it.
    pub errors: Vec<String>,
    /// Worth knowing now (an expiry coming up).
    pub warnings: Vec<String>,
}

/// Days before its expiry from which a certificate is warned about.
pub const EXPIRY_WARNING_DAYS: u64 = 14;

/// Loads the configuration's certificate and key (generating none) and
/// checks them for the domain at `now` with [`inspect`]. The generated
/// certificate that does not exist yet is no error: it is made at the first
/// start.
pub fn check_identity(cfg: &FileConfig, now: u64) -> Findings {
    let (cert_path, key_path, generated) = identity_paths(cfg);
    if generated && !cert_path.exists() {
        return Findings::default();
    }
    match load_identity(&cert_path, &key_path) {
        Ok(identity) => {
            let mut findings = inspect(&identity, &cert_path, &key_path, &cfg.core.domain, now);
            net_certificates(cfg, &identity, &mut findings);
            findings
        }
        Err(e) => Findings {
            errors: vec![e],
            warnings: Vec::new(),
        },
    }
}

/// The network's certificates as `[[net.servers]]` lists them, against this
/// server's: its own entry names another certificate (the other servers,
/// with the same list, refuse its links), or two servers share one (each
/// could then claim to be the other). Warnings: the other servers' lists
/// are what counts, and this one may be stale.
fn net_certificates(cfg: &FileConfig, identity: &TlsIdentity, findings: &mut Findings) {
    let Some(net) = &cfg.core.net else {
        return;
    };
    let leaf = identity.cert_chain[0].as_ref();
    let ours = proto_core::tls::fingerprint(leaf);
    if let Some(listed) = cfg.net_own_fingerprint.filter(|f| *f != ours) {
        findings.warnings.push(format!(
            "[[net.servers]] lists {} for this server ({}), but its certificate is {}: servers \
             with this list refuse its links (`kontalkd net-fingerprint` prints this one)",
            crate::config::format_fingerprint(&listed),
            net.host,
            crate::config::format_fingerprint(&ours)
        ));
    }
    for (i, p) in net.peers.iter().enumerate() {
        if p.fingerprint == ours {
            findings.warnings.push(format!(
                "{} has this server's certificate: it could claim to be {}, and {} to be it",
                p.host, net.host, net.host
            ));
        }
        if let Some(q) = net.peers[..i]
            .iter()
            .find(|q| q.fingerprint == p.fingerprint)
        {
            findings.warnings.push(format!(
                "{} and {} share a certificate: each could claim to be the other",
                q.host, p.host
            ));
        }
    }
}

/// Checks a loaded identity: the key belongs to the certificate, the
/// certificate names `domain` (its A-label; a `*.` wildcard covers one
/// label) and is valid at `now`, with a warning [`EXPIRY_WARNING_DAYS`]
/// before it expires.
pub fn inspect(
    identity: &TlsIdentity,
    cert_path: &Path,
    key_path: &Path,
    domain: &str,
    now: u64,
) -> Findings {
    let mut f = Findings::default();
    if let Err(e) = TlsConfigs::new(identity) {
        f.errors.push(key_mismatch(key_path, cert_path, &e));
    }
    inspect_certificate(identity, cert_path, domain, now, &mut f);
    f
}

fn key_mismatch(key_path: &Path, cert_path: &Path, e: &rustls::Error) -> String {
    format!(
        "the private key {} does not fit the certificate {}: {e}",
        key_path.display(),
        cert_path.display()
    )
}

/// The certificate's part of [`inspect`]: names and validity.
fn inspect_certificate(
    identity: &TlsIdentity,
    cert_path: &Path,
    domain: &str,
    now: u64,
    f: &mut Findings,
) {
    let Some(leaf) = identity.cert_chain.first() else {
        return;
    };
    let cert = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => cert,
        Err(e) => {
            f.errors.push(format!(
                "the certificate {} cannot be read: {e}",
                cert_path.display()
            ));
            return;
        }
    };
    let ascii = idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_owned());
    let names = certificate_names(&cert);
    if !names.iter().any(|n| name_matches(n, &ascii)) {
        f.errors.push(format!(
            "the certificate {} is for {} but the server's domain is {domain}: clients would \
             refuse it",
            cert_path.display(),
            if names.is_empty() {
                "no name".to_owned()
            } else {
                names.join(", ")
            }
        ));
    }
    let validity = cert.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now = now as i64;
    let day = |t: i64| date_of(t);
    if until <= now {
        f.errors.push(format!(
            "the certificate {} expired on {}",
            cert_path.display(),
            day(until)
        ));
    } else if until - now < EXPIRY_WARNING_DAYS as i64 * 86_400 {
        f.warnings.push(format!(
            "the certificate {} expires on {} (in {} days): renew it, then `kill -HUP` the server",
            cert_path.display(),
            day(until),
            (until - now) / 86_400
        ));
    }
    if from > now {
        f.errors.push(format!(
            "the certificate {} is not valid before {}",
            cert_path.display(),
            day(from)
        ));
    }
}

/// The DNS names a certificate is for: its subjectAltName dNSNames, or its
/// common name when it has none (RFC 6125 section 6.4.4).
fn certificate_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    names
}

/// RFC 6125 section 6.4: the name, or a wildcard in its first label only.
fn name_matches(name: &str, domain: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    match name.strip_prefix("*.") {
        Some(rest) => domain
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && parent == rest),
        None => name == domain,
    }
}

/// `YYYY-MM-DD` of a Unix time.
fn date_of(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_else(|_| t.to_string())
}

/// How long a generated certificate is valid.
const GENERATED_VALIDITY_DAYS: i64 = 3 * 365;

/// A self-signed certificate for `domain` (its A-label when internationalized,
/// RFC 5891) as subject and only name, valid from a day before `now` for
/// [`GENERATED_VALIDITY_DAYS`].
fn self_signed(domain: &str, now: u64) -> Result<(rcgen::Certificate, rcgen::KeyPair), String> {
    let ascii = idna::domain_to_ascii(domain).map_err(|e| format!("not a valid domain: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![ascii.clone()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ascii);
    let now = time::OffsetDateTime::from_unix_timestamp(now as i64).map_err(|e| e.to_string())?;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(GENERATED_VALIDITY_DAYS);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_names_the_domain_for_three_years() {
        // 2027-01-15T08:00:00Z
        let (cert, _key) = self_signed("Bücher.example", 1_800_000_000).unwrap();
        let der = cert.der().to_vec();
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"xn--bcher-kva.example"), "the A-label names it");
        assert!(!has(b"rcgen self signed cert"));
        assert!(has(b"270114080000Z"), "valid from a day before");
        assert!(has(b"300114080000Z"), "until three years after");
    }
    use crate::config::parse_config;

    fn identity_for(domain: &str, made_at: u64) -> TlsIdentity {
        let (cert, key) = self_signed(domain, made_at).unwrap();
        TlsIdentity {
            cert_chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            ),
        }
    }

    fn inspect_at(identity: &TlsIdentity, domain: &str, now: u64) -> Findings {
        inspect(
            identity,
            Path::new("cert.pem"),
            Path::new("key.pem"),
            domain,
            now,
        )
    }

    const T0: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    #[test]
    fn a_good_certificate_has_no_findings() {
        let id = identity_for("localhost", T0);
        assert_eq!(inspect_at(&id, "localhost", T0), Findings::default());
        let idn = identity_for("Bücher.example", T0);
        assert_eq!(inspect_at(&idn, "bücher.example", T0), Findings::default());
    }

    #[test]
    fn a_certificate_for_another_name_is_an_error() {
        let id = identity_for("localhost", T0);
        let f = inspect_at(&id, "example.org", T0);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert!(f.errors[0].contains("is for localhost"), "{f:?}");
        assert!(f.errors[0].contains("example.org"), "{f:?}");
    }

    #[test]
    fn expiry_is_warned_about_then_an_error() {
        let id = identity_for("localhost", T0);
        let soon = T0 + GENERATED_VALIDITY_DAYS as u64 * DAY - 5 * DAY;
        let f = inspect_at(&id, "localhost", soon);
        assert!(f.errors.is_empty(), "{f:?}");
        assert!(
            f.warnings[0].contains("expires on 2030-01-14 (in 5 days)"),
            "{f:?}"
        );
        let f = inspect_at(&id, "localhost", T0 + 4 * 365 * DAY);
        assert!(f.errors[0].contains("expired on 2030-01-14"), "{f:?}");
        let f = inspect_at(&id, "localhost", T0 - 2 * DAY);
        assert!(f.errors[0].contains("not valid before"), "{f:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_an_error() {
        let mut id = identity_for("localhost", T0);
        id.key = identity_for("localhost", T0).key;
        let f = inspect_at(&id, "localhost", T0);
        assert!(f.errors.iter().any(|e| e.contains("does not fit")), "{f:?}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.org", "chat.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(name_matches("example.org", "Example.Org"));
    }

    #[test]
    fn generates_then_reuses_a_certificate() {
        let dir = std::env::temp_dir().join(format!("kontalkd-host-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut cfg = parse_config("[server]\ndomain = \"example.org\"\n").unwrap();
        cfg.data_dir = dir.clone();

        let first = load_or_create_identity(&cfg).unwrap();
        let cert_path = dir.join("tls/cert.pem");
        let key_path = dir.join("tls/key.pem");
        assert!(cert_path.exists() && key_path.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pem = fs::read(&cert_path).unwrap();

        let second = load_or_create_identity(&cfg).unwrap();
        assert_eq!(fs::read(&cert_path).unwrap(), pem);
        assert_eq!(first.cert_chain, second.cert_chain);
        assert_eq!(first.key.secret_der(), second.key.secret_der());
        proto_core::TlsConfigs::new(&second).unwrap();

        // The same files named in the configuration load the same identity.
        cfg.tls_certificate = Some(cert_path);
        cfg.tls_private_key = Some(key_path);
        let third = load_or_create_identity(&cfg).unwrap();
        assert_eq!(third.cert_chain, first.cert_chain);

        cfg.tls_certificate = Some(dir.join("missing.pem"));
        let err = load_or_create_identity(&cfg).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");

        fs::remove_dir_all(&dir).unwrap();
    }
}
