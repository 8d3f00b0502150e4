//! What hosts the kontalkd protocol core, for every runtime (runtime-mio,
//! runtime-smol): all that is neither the pure core nor a runtime's sockets.
//!
//! - [`config`]: the TOML configuration file, validated into a [`FileConfig`];
//! - [`datadir`]: the data directory belongs to one server (its lock);
//! - [`dns`]: federation's DNS questions carried to a name server;
//! - [`logging`]: the log, to standard error or a file, reloaded on SIGHUP;
//! - [`tls`]: the server's TLS identity, from PEM files or generated on first start;
//! - [`kontalk`]: the server's OpenPGP key (likewise), and the providers
//!   that send verification codes;
//! - [`runtime`]: what every runtime does around the core (start-up, the
//!   drain of the core's events with batched storage in the SQLite store of
//!   `kontalkd-store`, timers and wall clock);
//! - [`control`]: the admin socket and the metrics endpoint of a running
//!   server (requests, commands, the OpenMetrics text), and the client of
//!   the admin socket;
//! - [`push`]: push notifications through Firebase Cloud Messaging;
//! - [`upload`]: the HTTP(S) listener of file upload (XEP-0363), whose
//!   answers proto-core decides;
//! - [`cli`]: the `kontalkd` command line, given the runtimes it can start.

pub mod cli;
pub mod config;
pub mod control;
pub mod datadir;
pub mod dns;
pub mod kontalk;
pub mod logging;
pub mod net;
pub mod push;
pub mod runtime;
pub mod tls;
pub mod upload;

pub use config::{
    example_config, load_config, parse_config, ConfigError, ConfigErrors, FileConfig,
};
pub use tls::load_or_create_identity;
