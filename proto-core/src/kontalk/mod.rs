//! Kontalk keys: the OpenPGP keys of users and of the server.
//!
//! Pure functions over bytes, like the rest of the core: no clock (every
//! check that needs the time takes `now_unix`), no global RNG (whatever
//! needs randomness takes a 32-byte seed the caller draws from its own
//! seeded RNG), no I/O.
//!
//! * [`keys`]: the server's own key ([`keys::ServerKey`]: generate, load,
//!   export), a parsed user key ([`keys::UserKey`]: fingerprint, user ids,
//!   revocation, expiry, the server's certification), and [`keys::certify`],
//!   which adds the server's certification to a user id the way the Kontalk
//!   server does it at registration.

pub mod keys;
mod packets;

#[cfg(test)]
mod fixtures;
