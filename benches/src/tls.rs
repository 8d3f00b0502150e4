//! The generator's TLS client: rustls with the ring provider, no resumption
//! (every login pays a full handshake, as a first login does), and a verifier
//! that accepts any certificate. That is only acceptable because the
//! generator talks to servers on loopback that it started itself; it also
//! keeps the client's share of the handshake small.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
}

/// A client configuration for loopback benchmarking (see the module docs).
pub fn client_config() -> Arc<ClientConfig> {
    let mut config = builder().with_no_client_auth();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The same, presenting a client certificate (DER) with its private key
/// (PKCS#8 DER) when the server asks for one.
pub fn client_config_with_cert(cert: Vec<u8>, key: Vec<u8>) -> Result<Arc<ClientConfig>, String> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let mut config = builder()
        .with_client_auth_cert(vec![CertificateDer::from(cert)], key)
        .map_err(|e| format!("the client certificate or its key: {e}"))?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}
