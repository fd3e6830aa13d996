//! TLS client settings for one upstream: which certificates are trusted (the system store
//! through rustls-platform-verifier, or only a configured private CA), optional SPKI pinning
//! on top of that (RFC 7858 §4.2), and the session cache that makes reconnects cheap.
//!
//! There is deliberately no way to turn certificate validation off: a private resolver is
//! trusted by configuring its CA, never by skipping the check.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::common::error::PinMismatch;
use crate::config::UpstreamConfig;

/// Why the TLS settings for an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The configured CA file holds a certificate rustls cannot use as a trust anchor.
    #[error("upstream {upstream}: CA file {file}: {source}")]
    BadCa {
        upstream: String,
        file: String,
        source: rustls::Error,
    },
    /// The verifier could not be built (e.g. no usable system trust store).
    #[error("upstream {upstream}: certificate verifier: {reason}")]
    Verifier { upstream: String, reason: String },
    /// The DoH URL is one the HTTP client cannot send requests to.
    #[error("upstream {upstream}: the URL cannot be used for HTTP requests")]
    Url { upstream: String },
    /// The crypto provider rejected the protocol versions.
    #[error("TLS settings: {0}")]
    Protocol(rustls::Error),
}

/// The rustls client configuration for `upstream`.
///
/// Keep the returned config for the life of the upstream: it owns the session cache, so a
/// reconnect resumes the previous TLS session instead of doing a full handshake.
pub fn client_config(upstream: &UpstreamConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier: Arc<dyn ServerCertVerifier> = match &upstream.ca_roots {
        Some(certs) => {
            let file = upstream
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|source| TlsSetupError::BadCa {
                        upstream: upstream.label(),
                        file: file.clone(),
                        source,
                    })?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Verifier {
                    upstream: upstream.label(),
                    reason: e.to_string(),
                })?
        }
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| {
                TlsSetupError::Verifier {
                    upstream: upstream.label(),
                    reason: e.to_string(),
                }
            })?,
        ),
    };
    if !upstream.pin_sha256.is_empty() {
        verifier = Arc::new(PinningVerifier {
            inner: verifier,
            pins: upstream.pin_sha256.clone(),
        });
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsSetupError::Protocol)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Validates the certificate with `inner` first, then requires its public key to be pinned.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let spki = subject_public_key_info(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        if self.pins.iter().any(|pin| pin[..] == *digest.as_ref()) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate: the bytes RFC 7858 pins hash.
///
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != 0x30 {
        return None;
    }
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, _, rest) = der_element(tbs)?;
    (tag == 0x30).then(|| &tbs[..tbs.len() - rest.len()])
}

/// Splits one DER element off `input`: (tag, contents, remaining input).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 {
            return None;
        }
        let len = input
            .get(2..2 + octets)?
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + octets)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn spki_is_found_in_generated_certificates() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["dns.test".to_string()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(
                subject_public_key_info(cert.der()),
                Some(&key.subject_public_key_info()[..])
            );
        }
    }

    #[test]
    fn truncated_certificates_have_no_spki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["dns.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der();
        for cut in 0..der.len() / 2 {
            assert!(subject_public_key_info(&der[..cut]).is_none());
        }
    }
}
