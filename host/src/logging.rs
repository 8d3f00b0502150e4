//! The server's log: env_logger's format, to standard error or to
//! `server.log_file`, with a level and a file that SIGHUP can change.
//!
//! env_logger fixes its filter when it is built, so the installed logger
//! holds one behind a lock and [`reload`] swaps in a new one (and sets
//! `log`'s global maximum level, which is what keeps a call below the level
//! near free: the `log` macros compare it before they reach the logger).
//! Every env_logger built here writes through the same [`Sink`], which
//! [`reload`] reopens: after logrotate renamed the file, new lines go to a
//! new file at the configured path (`postrotate kill -HUP`).

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use log::{LevelFilter, Log, Metadata, Record};

use crate::FileConfig;

/// Mode of a log file the server creates (before the umask): the owner
/// writes, its group (an `adm` for fail2ban, say) reads.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Where log lines go.
enum Target {
    Stderr,
    File { path: PathBuf, file: File },
}

/// The one destination every env_logger of this process writes to.
struct Sink(Mutex<Target>);

/// env_logger's pipe into the [`Sink`].
struct SinkWriter(Arc<Sink>);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // env_logger writes a whole record at once (write_all of its buffer).
        let mut target = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *target {
            Target::Stderr => io::stderr().write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut target = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *target {
            Target::Stderr => io::stderr().flush(),
            Target::File { file, .. } => file.flush(),
        }
    }
}

/// The installed logger: the current env_logger, swapped on reload.
struct Logger {
    sink: Arc<Sink>,
    current: RwLock<env_logger::Logger>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .log(record)
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Opens (creating with [`LOG_FILE_MODE`]) the log file for appending.
fn open_log_file(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))
}

fn target_for(config: &FileConfig) -> Result<Target, String> {
    Ok(match &config.log_file {
        None => Target::Stderr,
        Some(path) => Target::File {
            path: path.clone(),
            file: open_log_file(path)?,
        },
    })
}

/// An env_logger for `config`'s level, writing into `sink`. rustls's own
/// records are for debugging TLS, not for operators: at most warnings,
/// unless `RUST_LOG` asks for them; `RUST_LOG` overrides the level.
fn build(config: &FileConfig, sink: &Arc<Sink>, to_terminal: bool) -> env_logger::Logger {
    env_logger::Builder::new()
        .filter_level(config.log_level)
        .filter_module("rustls", config.log_level.min(LevelFilter::Warn))
        .parse_default_env()
        .write_style(if to_terminal {
            env_logger::WriteStyle::Auto
        } else {
            env_logger::WriteStyle::Never
        })
        .target(env_logger::Target::Pipe(Box::new(SinkWriter(sink.clone()))))
        .build()
}

fn to_terminal(config: &FileConfig) -> bool {
    config.log_file.is_none() && io::stderr().is_terminal()
}

/// Installs the server's logger for `config` (`run` does, once): the log
/// file is opened (created) now, so that a path the server cannot write is
/// an error at start.
pub fn init(config: &FileConfig) -> Result<(), String> {
    let sink = Arc::new(Sink(Mutex::new(target_for(config)?)));
    let current = build(config, &sink, to_terminal(config));
    let max = current.filter();
    let logger = LOGGER.get_or_init(|| Logger {
        sink,
        current: RwLock::new(current),
    });
    log::set_logger(logger).map_err(|e| format!("cannot install the logger: {e}"))?;
    log::set_max_level(max);
    Ok(())
}

/// SIGHUP: applies `config`'s log level and reopens its log file (or goes
/// back to standard error). Returns what it did, for the reload's log line;
/// `None` when the logger of this process is not the one of [`init`] (an
/// application embedding a runtime logs its own way). When the file cannot
/// be opened, the level still changes and the old destination stays.
pub fn reload(config: &FileConfig) -> Option<Result<String, String>> {
    let logger = LOGGER.get()?;
    let opened = target_for(config);
    let fresh = build(config, &logger.sink, to_terminal(config));
    let max = fresh.filter();
    *logger.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    log::set_max_level(max);
    let level = if std::env::var_os("RUST_LOG").is_some() {
        format!(
            "log level {} (RUST_LOG is set and decides it)",
            max.as_str().to_lowercase()
        )
    } else {
        format!("log level {}", config.log_level.as_str().to_lowercase())
    };
    Some(match opened {
        Ok(target) => {
            let to = match &target {
                Target::Stderr => "standard error".to_owned(),
                Target::File { path, .. } => format!("the log file {}", path.display()),
            };
            *logger.sink.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
            Ok(format!("{level}, logging to {to}"))
        }
        Err(e) => Err(format!("{level}; {e}, logging goes on where it went")),
    })
}
