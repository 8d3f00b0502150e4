//! The I/O side of kontalkd shared by the runtimes.
//!
//! - [`db`]: the SQLite [`Store`] that executes the core's storage requests
//!   (one transaction per batch) and the account admin helpers of the CLI;
//! - [`config`]: the TOML configuration file, validated into a [`FileConfig`];
//! - [`tls`]: the server's TLS identity, from PEM files or generated on first start;
//! - [`runtime`]: what every runtime does around the core (start-up, the
//!   drain of the core's events with batched storage, timers and wall clock);
//! - [`cli`]: the `kontalkd` command line, given the runtimes it can start.

pub mod cli;
pub mod config;
pub mod db;
pub mod runtime;
pub mod tls;

pub use config::{
    example_config, load_config, parse_config, ConfigError, ConfigErrors, FileConfig,
};
pub use db::{Store, StoreError};
pub use tls::load_or_create_identity;
