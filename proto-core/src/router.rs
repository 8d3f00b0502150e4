//! The router: where a stanza addressed to a JID goes.
//!
//! The table, in order (DESIGN.md): the local host -> the session manager;
//! each other host of the network -> its Net link; anything else -> S2S
//! (the default route). A destination with no route is a bounce, and the
//! session manager answers it as RFC 6120 section 8.3 says. Until Net and
//! S2S add their routes, every other domain is a bounce with
//! `remote-server-not-found` (section 8.3.3.16).

use jid::Jid;

use crate::error::StanzaErrorCondition;

/// The decision for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The local host: the session manager delivers it (to a session, to
    /// offline storage, or to the server's own services).
    Local,
    /// No route: the sender gets this error.
    Bounce(StanzaErrorCondition),
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
            Route::Bounce(StanzaErrorCondition::RemoteServerNotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_host_or_bounce() {
        let r = Router::new("beta.kontalk.net");
        let j = |s: &str| Jid::new(s).unwrap();
        assert_eq!(r.route(&j("a@beta.kontalk.net/x")), Route::Local);
        assert_eq!(r.route(&j("Beta.Kontalk.Net")), Route::Local);
        assert_eq!(
            r.route(&j("a@example.org")),
            Route::Bounce(StanzaErrorCondition::RemoteServerNotFound)
        );
    }
}
