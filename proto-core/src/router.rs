//! The router's table: where a stanza addressed to a JID goes.
//!
//! In order: the local host and the network domain -> the session manager;
//! each other host of the network -> its Net link; anything else -> S2S
//! (the default route). A route whose link is not up is a bounce: the
//! session manager answers with `remote-server-not-found`
//! (RFC 6120 section 8.3.3.16). Until Net and S2S exist no link is ever up.

use std::collections::BTreeSet;

use jid::Jid;

/// The decision for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The local host or the network domain: the session manager handles it.
    Local,
    /// Another server of our network, over its Net link.
    Net(String),
    /// A foreign domain, over server-to-server federation (the default route).
    S2s(String),
}

/// The route table.
#[derive(Debug, Clone)]
pub struct Router {
    local: String,
    network: Option<String>,
    net_hosts: BTreeSet<String>,
    up: BTreeSet<String>,
}

impl Router {
    /// A table serving `domain` (already normalized) with no network.
    pub fn new(domain: &str) -> Router {
        Router {
            local: domain.to_owned(),
            network: None,
            net_hosts: BTreeSet::new(),
            up: BTreeSet::new(),
        }
    }

    /// Adds the network domain and the other hosts of the network.
    pub fn with_network(
        mut self,
        network: &str,
        hosts: impl IntoIterator<Item = String>,
    ) -> Router {
        self.network = Some(network.to_owned());
        self.net_hosts = hosts.into_iter().filter(|h| *h != self.local).collect();
        self
    }

    /// Where a stanza to `to` goes.
    pub fn route(&self, to: &Jid) -> Route {
        let domain = to.domain().as_str();
        if domain == self.local || self.network.as_deref() == Some(domain) {
            Route::Local
        } else if self.net_hosts.contains(domain) {
            Route::Net(domain.to_owned())
        } else {
            Route::S2s(domain.to_owned())
        }
    }

    /// Marks the link to a Net host or S2S domain as up or down.
    pub fn set_link(&mut self, peer: &str, up: bool) {
        if up {
            self.up.insert(peer.to_owned());
        } else {
            self.up.remove(peer);
        }
    }

    /// Whether a route can carry a stanza now; a route that is down bounces.
    pub fn is_up(&self, route: &Route) -> bool {
        match route {
            Route::Local => true,
            Route::Net(peer) | Route::S2s(peer) => self.up.contains(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_and_link_state() {
        let r = Router::new("beta.kontalk.net").with_network(
            "kontalk.net",
            [
                "prime.kontalk.net".to_owned(),
                "beta.kontalk.net".to_owned(),
            ],
        );
        let j = |s: &str| Jid::new(s).unwrap();
        assert_eq!(r.route(&j("a@beta.kontalk.net/x")), Route::Local);
        assert_eq!(r.route(&j("a@kontalk.net")), Route::Local);
        assert_eq!(r.route(&j("Beta.Kontalk.Net")), Route::Local);
        assert_eq!(
            r.route(&j("a@prime.kontalk.net")),
            Route::Net("prime.kontalk.net".into())
        );
        assert_eq!(
            r.route(&j("a@example.org")),
            Route::S2s("example.org".into())
        );
        let mut r = r;
        assert!(!r.is_up(&Route::S2s("example.org".into())));
        r.set_link("example.org", true);
        assert!(r.is_up(&Route::S2s("example.org".into())));
        assert!(r.is_up(&Route::Local));
    }
}
