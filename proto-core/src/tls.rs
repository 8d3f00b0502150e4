//! TLS set-up for client streams and Net links: the core builds and owns
//! the rustls state.

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
        Ok(TlsConfigs {
            starttls: build(Vec::new())?,
            direct: build(vec![ALPN_XMPP_CLIENT.to_vec()])?,
            net_server: Arc::new(net_server),
            net_client: Arc::new(net_client),
        })
    }
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
