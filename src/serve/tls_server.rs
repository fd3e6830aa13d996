//! TLS for clients (DNS over TLS and DNS over HTTPS): the server's certificate chain and key,
//! read from PEM files, and the rustls settings both listeners use. TLS 1.2 and 1.3 only, each
//! listener with its own ALPN, session resumption (tickets, and a session cache for TLS 1.2
//! clients without ticket support), and a deadline for handshakes.
//!
//! The pair in force is held by [`CurrentIdentity`], which rustls asks at every handshake, so a
//! reload swaps it for new connections while those already open keep the session they have.
//! Loading a pair is done by the configuration (`tls_certificate`, `tls_key`): a pair that
//! cannot be read or does not match is a configuration error, at start and at a reload, and a
//! refused reload keeps the pair in force.

use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::common::lock;
use crate::config::Identity;

/// ALPN of DNS over TLS, as the IANA registry names it.
pub(crate) const ALPN_DOT: &[u8] = b"dot";
/// ALPN of DNS over HTTPS: HTTP/2 first (RFC 8484 §5.2 recommends it), then HTTP/1.1.
pub(crate) const ALPN_DOH: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS sessions remembered for resumption by clients that resume by session id (TLS 1.2
/// without tickets); about 200 bytes each.
const SESSION_CACHE: usize = 4096;

/// Longest a client may take to complete its TLS handshake. A handshake is one or two round
/// trips; a connection still handshaking after this holds a slot for nothing.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key in force, asked by rustls at each handshake. `None` until a
/// configuration gives a pair: handshakes then fail, and the listeners wait for a reload.
#[derive(Default)]
pub(crate) struct CurrentIdentity(RwLock<Option<Arc<CertifiedKey>>>);

impl fmt::Debug for CurrentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentIdentity")
    }
}

impl CurrentIdentity {
    /// Puts `identity` in force for the handshakes from now on; `None` keeps the one in force.
    pub(crate) fn replace(&self, identity: Option<&Identity>) {
        if let Some(identity) = identity {
            *lock::write(&self.0) = Some(identity.certified().clone());
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        lock::read(&self.0).is_some()
    }
}

impl ResolvesServerCert for CurrentIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        lock::read(&self.0).clone()
    }
}

/// Why the TLS server settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsServerError {
    #[error("TLS server settings: {0}")]
    Settings(#[from] rustls::Error),
}

/// The acceptor of one kind of listener: TLS 1.2 and 1.3, the certificate `identity` holds,
/// these ALPN protocols (a client offering ALPN without any of them is refused, RFC 7301 §3.2),
/// resumption by ticket and by session id.
pub(crate) fn acceptor(
    identity: Arc<CurrentIdentity>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, TlsServerError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a client's TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// The client's TLS handshake on `stream`, within [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
) -> Result<TlsStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(HandshakeError::Failed(error)),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::IdentityError;

    struct Files {
        _dir: tempfile::TempDir,
        certificate: PathBuf,
        key: PathBuf,
    }

    fn write_pair(cert_pem: &str, key_pem: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let certificate = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&certificate, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        Files {
            _dir: dir,
            certificate,
            key,
        }
    }

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["dns.test".to_string()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key)
    }

    #[test]
    fn pkcs8_ec_and_ed25519_keys_load() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (cert, key) = self_signed(alg);
            let files = write_pair(&cert, &key.serialize_pem());
            Identity::load(&files.certificate, &files.key).unwrap();
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch_naming_both_files() {
        let (cert, _) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let files = write_pair(&cert, &other.serialize_pem());
        let error = Identity::load(&files.certificate, &files.key).unwrap_err();
        assert!(matches!(error, IdentityError::Mismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(&files.key.display().to_string()));
        assert!(message.contains(&files.certificate.display().to_string()));
    }

    #[test]
    fn unreadable_or_empty_files_name_the_file() {
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let files = write_pair(&cert, &key.serialize_pem());
        let missing = files.key.with_file_name("missing.pem");
        let error = Identity::load(&files.certificate, &missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&missing.display().to_string())
        );

        let files = write_pair("not PEM at all\n", &key.serialize_pem());
        let error = Identity::load(&files.certificate, &files.key).unwrap_err();
        assert!(
            matches!(error, IdentityError::NoCertificate { .. }),
            "{error}"
        );

        // A certificate where the key should be.
        let files = write_pair(&cert, &cert);
        let error = Identity::load(&files.certificate, &files.key).unwrap_err();
        assert!(matches!(error, IdentityError::NoKey { .. }), "{error}");
        assert!(error.to_string().contains("key.pem"), "{error}");
    }

    #[test]
    fn the_identity_in_force_changes_only_with_a_new_pair() {
        let current = CurrentIdentity::default();
        assert!(!current.is_set());
        let (cert, key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        let files = write_pair(&cert, &key.serialize_pem());
        let identity = Identity::load(&files.certificate, &files.key).unwrap();
        current.replace(Some(&identity));
        current.replace(None);
        let held = lock::read(&current.0).clone().unwrap();
        assert!(Arc::ptr_eq(&held, identity.certified()));
    }
}
