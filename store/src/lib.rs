//! The SQLite store of kontalkd.
//!
//! [`db`]: the [`Store`] that executes the core's storage requests (one
//! transaction per batch), and the account admin helpers of the command line.

pub mod db;

pub use db::{Store, StoreError};
