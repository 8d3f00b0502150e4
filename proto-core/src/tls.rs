//! TLS set-up for client streams: the core builds and owns the rustls state.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, as read from PEM files by the runtime.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
}

/// ALPN protocol id for direct TLS client connections (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The two rustls configurations of a client listener set.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// For STARTTLS on the plain port (no ALPN).
    pub starttls: Arc<rustls::ServerConfig>,
    /// For direct TLS (XEP-0368), with ALPN `xmpp-client`.
    pub direct: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    /// Builds both configurations from one identity, with the `ring` provider.
    pub fn new(identity: &TlsIdentity) -> Result<TlsConfigs, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
            cfg.alpn_protocols = alpn;
            // Stream ids and session tickets would need a clock; keep the core pure.
            cfg.send_tls13_tickets = 0;
            Ok(Arc::new(cfg))
        };
        Ok(TlsConfigs {
            starttls: build(Vec::new())?,
            direct: build(vec![ALPN_XMPP_CLIENT.to_vec()])?,
        })
    }
}
