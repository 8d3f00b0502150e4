//! Kontalk keys: the OpenPGP keys of users and of the server, and the
//! X.509 "bridge" certificate a Kontalk client presents in its TLS handshake.
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
//! * [`bridge`]: the certificate, read leniently (only the public key and
//!   the OpenPGP extension matter), and the two checks the server makes on
//!   it: [`bridge::check_registration`] for the registration code step and
//!   [`bridge::check_login`] for SASL EXTERNAL.
//! * [`register`]: registration by phone number (Kontalk's forms of
//!   XEP-0077), key rollover and private key backups.
//! * [`services`]: contact match at `probe@`, the server list at
//!   `network@`, groups through `multicast@`, and `urn:xmpp:pubkey:2`.
//! * [`push`]: the devices' push registrations at `push@`.

pub mod bridge;
pub mod keys;
mod packets;
pub mod push;
pub mod register;
pub mod services;

#[cfg(test)]
mod fixtures;
