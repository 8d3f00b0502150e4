//! The router's table: where a stanza addressed to a JID goes.
//!
//! In order: the local host -> the session manager; anything else -> the
//! default route (S2S). Until server-to-server links exist, every remote
//! route is down, and the session manager bounces such stanzas with
//! `remote-server-not-found` (RFC 6120 section 8.3.3.16).

use jid::Jid;

/// The decision for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A local account or the server itself: the session manager handles it.
    Local,
    /// Another domain: the default route (server-to-server).
    Remote,
}

/// The route table.
#[derive(Debug, Clone)]
pub struct Router {
    local: String,
}

impl Router {
    /// A table serving `domain` (already normalized).
    pub fn new(domain: &str) -> Router {
        Router {
            local: domain.to_owned(),
        }
    }

    /// Where a stanza to `to` goes.
    pub fn route(&self, to: &Jid) -> Route {
        if to.domain().as_str() == self.local {
            Route::Local
        } else {
            Route::Remote
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote() {
        let r = Router::new("localhost");
        assert_eq!(r.route(&Jid::new("a@localhost/x").unwrap()), Route::Local);
        assert_eq!(r.route(&Jid::new("localhost").unwrap()), Route::Local);
        assert_eq!(r.route(&Jid::new("LocalHost").unwrap()), Route::Local);
        assert_eq!(r.route(&Jid::new("a@example.org").unwrap()), Route::Remote);
    }
}
