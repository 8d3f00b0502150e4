//! TLS set-up for client streams, Net links and server-to-server streams:
//! the core builds and owns the rustls state.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

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

/// ALPN protocol id of Net links between the servers of a Kontalk network.
pub const ALPN_NET: &[u8] = b"kontalk-net";

/// ALPN protocol id for direct TLS server-to-server streams (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The rustls configurations of the server: its client listeners, and both
/// ends of Net links.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// For STARTTLS on the plain port (no ALPN).
    pub starttls: Arc<rustls::ServerConfig>,
    /// For direct TLS (XEP-0368), with ALPN `xmpp-client`.
    pub direct: Arc<rustls::ServerConfig>,
    /// A Net link another server opened: its certificate is required.
    pub net_server: Arc<rustls::ServerConfig>,
    /// A Net link this server opens, presenting its certificate.
    pub net_client: Arc<rustls::ClientConfig>,
    /// An inbound server-to-server stream (STARTTLS): the peer's
    /// certificate is asked for, and checked for its domain by the stream
    /// (SASL EXTERNAL), not by TLS.
    pub s2s_server: Arc<rustls::ServerConfig>,
    /// An inbound server-to-server stream with direct TLS (ALPN `xmpp-server`).
    pub s2s_direct: Arc<rustls::ServerConfig>,
    /// An outbound server-to-server stream (STARTTLS), presenting our
    /// certificate as the client certificate (for the peer's SASL
    /// EXTERNAL); the peer's certificate is checked by the stream.
    pub s2s_client: Arc<rustls::ClientConfig>,
    /// The same with direct TLS (ALPN `xmpp-server`).
    pub s2s_client_direct: Arc<rustls::ClientConfig>,
    /// The host's HTTPS listener of file upload (ALPN `http/1.1`, no
    /// client certificate asked for).
    pub https: Arc<rustls::ServerConfig>,
    /// The certificate authorities a peer's certificate must chain to for
    /// its domain to count as authenticated by it; `None`: none does (dialback only).
    pub s2s_roots: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

/// The SHA-256 of a certificate (DER): what a Net link pins.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(cert).into()
}

impl TlsConfigs {
    /// Builds both configurations from one identity, with the `ring` provider.
    pub fn new(identity: &TlsIdentity) -> Result<TlsConfigs, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier = Arc::new(AnyClientCert {
            algorithms,
            mandatory: false,
        });
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier.clone())
                .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
            cfg.alpn_protocols = alpn;
            // Stream ids and session tickets would need a clock; keep the core pure.
            cfg.send_tls13_tickets = 0;
            Ok(Arc::new(cfg))
        };
        // Net links: any certificate passes TLS (its handshake signature
        // checked), and the link compares its SHA-256 with the one listed
        // for the host the peer claims (see `net`): one check for both ends.
        let mut net_server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                algorithms,
                mandatory: true,
            }))
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        net_server.alpn_protocols = vec![ALPN_NET.to_vec()];
        net_server.send_tls13_tickets = 0;
        let mut net_client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert { algorithms }))
            .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        net_client.alpn_protocols = vec![ALPN_NET.to_vec()];
        net_client.resumption = rustls::client::Resumption::disabled();
        let s2s_client = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert { algorithms }))
                .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
            cfg.alpn_protocols = alpn;
            cfg.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(cfg))
        };
        let mut https = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfigs {
            https: Arc::new(https),
            starttls: build(Vec::new())?,
            direct: build(vec![ALPN_XMPP_CLIENT.to_vec()])?,
            net_server: Arc::new(net_server),
            net_client: Arc::new(net_client),
            s2s_server: build(Vec::new())?,
            s2s_direct: build(vec![ALPN_XMPP_SERVER.to_vec()])?,
            s2s_client: s2s_client(Vec::new())?,
            s2s_client_direct: s2s_client(vec![ALPN_XMPP_SERVER.to_vec()])?,
            s2s_roots: None,
        })
    }

    /// The same, with the certificate authorities that authenticate the
    /// domains of other servers (the system's and the configuration's).
    /// A certificate that does not parse is skipped; an empty list trusts none.
    pub fn with_roots(
        mut self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<TlsConfigs, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        let (_, _) = store.add_parsable_certificates(roots);
        if store.is_empty() {
            self.s2s_roots = None;
            return Ok(self);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.s2s_roots = Some(verifier);
        Ok(self)
    }
}

/// Whether the certificate chain `chain` (leaf first) authenticates
/// `domain` at the wall-clock time `unix_secs`: it chains to one of the
/// `roots`, is valid then, and names the domain (RFC 6125). The purpose
/// checked is serverAuth, also for a chain presented as a client
/// certificate (XEP-0178: public authorities no longer issue clientAuth).
pub(crate) fn authenticates(
    roots: &rustls::client::WebPkiServerVerifier,
    chain: &[CertificateDer<'_>],
    domain: &str,
    unix_secs: u64,
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(domain.to_owned()) else {
        return false;
    };
    let now = UnixTime::since_unix_epoch(core::time::Duration::from_secs(unix_secs));
    roots
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .is_ok()
}

/// Client certificates on client streams: asked for, never required, with
/// an empty list of acceptable issuers, and any certificate accepted. A
/// Kontalk client logs in with a self-signed "bridge" certificate that
/// carries its OpenPGP key (SASL EXTERNAL decides whether it is trusted);
/// a certificate authority list would make its key manager send none. The
/// handshake still proves the client holds the certificate's key: its
/// signature is checked as rustls checks a server's.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
    /// Required (Net links) rather than asked for (client streams).
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's certificate on a Net link this server opened: any passes
/// TLS (its handshake signature checked), the link checks the pin.
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
