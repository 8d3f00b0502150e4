//! The router: where a stanza addressed to a JID goes.
//!
//! The table, in order (DESIGN.md): the local domain (the network domain
//! in a Kontalk network) -> the session manager, which sends a user whose
//! home is another server of the network to that server's link (the
//! directory decides, see [`crate::net`]); this server's own host name
//! -> the server itself (it has no users); each other host of the network
//! -> its Net link; anything else -> S2S (the default route). A
//! destination with no route is a bounce, and the session manager answers
//! it as RFC 6120 section 8.3 says. Until S2S adds its route, every other
//! domain is a bounce with `remote-server-not-found` (section 8.3.3.16).

use jid::Jid;

use crate::error::StanzaErrorCondition;

/// The decision for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The local host: the session manager delivers it (to a session, to
    /// offline storage, or to the server's own services).
    Local,
    /// Another host of the network: the link of the server with this index
    /// in the network's list.
    Net(usize),
    /// Another XMPP server: the stream to this domain (federation).
    S2s(String),
    /// The server's upload service (XEP-0363, `media.<domain>`).
    Upload,
    /// No route: the sender gets this error.
    Bounce(StanzaErrorCondition),
}

/// The route table.
#[derive(Debug, Clone)]
pub struct Router {
    local: String,
    /// This server's own host name in a network (`beta.kontalk.net`).
    host: Option<String>,
    /// The other hosts of the network, in the order of its list.
    network: Vec<String>,
    /// Whether other domains go to S2S (else they bounce).
    s2s: bool,
    /// The upload service's domain (lowercase), if it is on.
    upload: Option<String>,
}

impl Router {
    /// A table serving `domain` (already normalized).
    pub fn new(domain: &str) -> Router {
        Router {
            local: domain.to_owned(),
            host: None,
            network: Vec::new(),
            s2s: false,
            upload: None,
        }
    }

    /// The table with the upload service at `domain` (its bare domain;
    /// a user or resource of it is a bounce with `service-unavailable`).
    pub fn with_upload(mut self, domain: Option<&str>) -> Router {
        self.upload = domain.map(str::to_ascii_lowercase);
        self
    }

    /// The table with the other hosts of the network (lowercase), in the
    /// order of its list.
    pub fn with_network(mut self, hosts: Vec<String>) -> Router {
        self.network = hosts;
        self
    }

    /// The table with this server's host name in a network (lowercase;
    /// empty: none): the server itself (its own iqs, as a remote server
    /// may ask them of it). It has no users (they are of the network
    /// domain): a user of it is a bounce with `service-unavailable` (RFC
    /// 6121 section 8.5.1).
    pub fn with_host(mut self, host: &str) -> Router {
        self.host = (!host.is_empty()).then(|| host.to_owned());
        self
    }

    /// The table with federation on (`true`): every other domain is S2S.
    pub fn with_s2s(mut self, on: bool) -> Router {
        self.s2s = on;
        self
    }

    /// Where a stanza to `to` goes.
    pub fn route(&self, to: &Jid) -> Route {
        let domain = to.domain().as_str();
        if domain == self.local {
            Route::Local
        } else if self.host.as_deref() == Some(domain) {
            match to.node() {
                None => Route::Local,
                Some(_) => Route::Bounce(StanzaErrorCondition::ServiceUnavailable),
            }
        } else if self.upload.as_deref() == Some(domain) {
            match (to.node(), to.resource()) {
                (None, None) => Route::Upload,
                _ => Route::Bounce(StanzaErrorCondition::ServiceUnavailable),
            }
        } else if let Some(i) = self.network.iter().position(|h| h == domain) {
            Route::Net(i)
        } else if self.s2s {
            Route::S2s(domain.to_owned())
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

    #[test]
    fn the_other_hosts_of_the_network_go_to_their_links() {
        let r = Router::new("kontalk.net")
            .with_network(vec!["prime.kontalk.net".into(), "gamma.kontalk.net".into()]);
        let j = |s: &str| Jid::new(s).unwrap();
        assert_eq!(r.route(&j("a@kontalk.net")), Route::Local);
        assert_eq!(r.route(&j("Gamma.Kontalk.Net")), Route::Net(1));
        assert_eq!(r.route(&j("x@prime.kontalk.net/r")), Route::Net(0));
        let r = r.with_host("beta.kontalk.net");
        assert_eq!(r.route(&j("beta.kontalk.net")), Route::Local);
        assert_eq!(r.route(&j("beta.kontalk.net/x")), Route::Local);
        assert_eq!(
            r.route(&j("a@beta.kontalk.net")),
            Route::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            r.route(&j("a@example.org")),
            Route::Bounce(StanzaErrorCondition::RemoteServerNotFound)
        );
    }

    #[test]
    fn the_upload_service_is_its_own_route_before_federation() {
        let r = Router::new("kontalk.net")
            .with_s2s(true)
            .with_upload(Some("media.kontalk.net"));
        let j = |s: &str| Jid::new(s).unwrap();
        assert_eq!(r.route(&j("Media.Kontalk.Net")), Route::Upload);
        assert_eq!(
            r.route(&j("a@media.kontalk.net")),
            Route::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            r.route(&j("media.kontalk.net/r")),
            Route::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            r.route(&j("media.example.org")),
            Route::S2s("media.example.org".into())
        );
    }

    #[test]
    fn with_federation_every_other_domain_is_s2s() {
        let r = Router::new("kontalk.net")
            .with_network(vec!["prime.kontalk.net".into()])
            .with_s2s(true);
        let j = |s: &str| Jid::new(s).unwrap();
        assert_eq!(r.route(&j("a@kontalk.net")), Route::Local);
        assert_eq!(r.route(&j("prime.kontalk.net")), Route::Net(0));
        assert_eq!(
            r.route(&j("a@Example.org/r")),
            Route::S2s("example.org".into())
        );
    }
}
