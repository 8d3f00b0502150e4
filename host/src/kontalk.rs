//! Kontalk in the host: the server's OpenPGP key (configured, or generated
//! into the data directory on first start, like the TLS certificate), and
//! the providers that send verification codes.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use proto_core::kontalk::keys::ServerKey;
use proto_core::kontalk::register::CodeMessage;

use crate::config::{FileConfig, Verification};

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

/// Sends a verification code the way the configuration says.
pub fn send_code(verification: &Verification, msg: &CodeMessage) -> Result<(), String> {
    match verification {
        Verification::Log => {
            log::info!("verification code for {}: {}", msg.phone, msg.code);
            Ok(())
        }
        Verification::File(path) => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| {
                f.write_all(format!("{} {}\n", msg.phone, msg.code).as_bytes())?;
                f.sync_data()
            })
            .map_err(|e| format!("cannot append to {}: {e}", path.display())),
    }
}
