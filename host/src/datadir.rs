//! The data directory belongs to one server: `run` takes an exclusive lock
//! on `kontalkd.lock` in it before anything else touches it, and holds it
//! until the process ends. A second server on the same directory is
//! refused, with the process id of the one that holds it.
//!
//! The lock is the operating system's (`flock`), so it goes away with the
//! process, however that ends: a `kill -9` leaves no stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE_NAME: &str = "kontalkd.lock";

/// The held lock of a data directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if missing (mode 0700) and takes its lock, writing this
    /// process's id into the lock file.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, String> {
        create_private_dir(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
        warn_if_exposed(dir);
        let path = dir.join(LOCK_FILE_NAME);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(format!(
                    "the data directory {} is in use by another kontalkd{who}; \
                     one data directory serves one server",
                    dir.display()
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            log::warn!("cannot write the process id into {}: {e}", path.display());
        }
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` and its missing parents, readable by the owner only (0700)
/// on Unix; an existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A data directory others may read exposes the accounts' keys: say so.
fn warn_if_exposed(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                log::warn!(
                    "the data directory {} has mode {mode:03o}: other users may read the \
                     accounts' keys; `chmod 700 {}`",
                    dir.display(),
                    dir.display()
                );
            }
        }
    }
}

/// Writes a file, created with `mode` on Unix, and flushes it to disk.
/// The dialback secret of federation (XEP-0185) in the data directory,
/// `s2s-dialback.secret`: made from the system's randomness on first start
/// (64 hex digits, mode 0600) and read from then on, so that keys given
/// before a restart still verify after it.
pub fn load_or_create_dialback_secret(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join("s2s-dialback.secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(format!(
                "{} is too short for a dialback secret (delete it to make a new one)",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no system randomness: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&path, hex.as_bytes(), 0o600)?;
    Ok(hex.into_bytes())
}

pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut options = OpenOptions::new();
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
    fn the_dialback_secret_is_made_once_and_read_after() {
        let dir = temp("dialback");
        std::fs::create_dir_all(&dir).unwrap();
        let first = load_or_create_dialback_secret(&dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_dialback_secret(&dir).unwrap(), first);
        std::fs::write(dir.join("s2s-dialback.secret"), "short").unwrap();
        let e = load_or_create_dialback_secret(&dir).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kontalkd-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn one_holder_at_a_time() {
        let dir = temp("lock");
        let first = DataDirLock::acquire(&dir).unwrap();
        let err = DataDirLock::acquire(&dir).unwrap_err();
        assert!(err.contains("in use by another kontalkd"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "names the holder: {err}"
        );
        drop(first);
        let again = DataDirLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with(LOCK_FILE_NAME));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
