//! The server's TLS identity: configured PEM files, or a generated self-signed certificate.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use proto_core::TlsIdentity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::FileConfig;

/// Loads the certificate chain and key named in the configuration, or, when none
/// is configured, `data_dir/tls/cert.pem` and `data_dir/tls/key.pem`, generating
/// a self-signed certificate for the domain there on first start.
///
/// Errors name the file that could not be read, parsed or written.
pub fn load_or_create_identity(cfg: &FileConfig) -> Result<TlsIdentity, String> {
    let (cert_path, key_path) = match (&cfg.tls_certificate, &cfg.tls_private_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = cfg.data_dir.join("tls");
            let paths = (dir.join("cert.pem"), dir.join("key.pem"));
            if !paths.0.exists() {
                generate(&cfg.core.domain, &dir, &paths.0, &paths.1)?;
            }
            paths
        }
    };
    let cert_chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?;
    if cert_chain.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    Ok(TlsIdentity { cert_chain, key })
}

/// Generates a self-signed certificate for `domain`, writing the key (mode 0600) then the certificate.
///
/// The certificate is written last, through a rename, so that its presence means both files are complete.
fn generate(domain: &str, dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;

    let (cert, signing_key) = self_signed(domain, crate::runtime::unix_now())
        .map_err(|e| format!("cannot generate a certificate for {domain}: {e}"))?;
    write_file(key_path, signing_key.serialize_pem().as_bytes(), 0o600)?;
    let tmp = PathBuf::from(format!("{}.tmp", cert_path.display()));
    write_file(&tmp, cert.pem().as_bytes(), 0o644)?;
    fs::rename(&tmp, cert_path)
        .map_err(|e| format!("cannot write certificate {}: {e}", cert_path.display()))?;
    log::info!(
        "generated a self-signed certificate for {domain} in {} (set tls.certificate and \
         tls.private_key to use your own)",
        cert_path.display()
    );
    Ok(())
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

/// Writes a file, created with `mode` on Unix, and flushes it to disk.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
        .open(path)
        .and_then(|mut file| {
            // An existing file keeps its mode on open: set it explicitly.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
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
