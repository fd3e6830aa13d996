//! The certificate chain and key that DNS over TLS and DNS over HTTPS serve (`tls_certificate`,
//! `tls_key`), read from PEM files and checked to match when the configuration is loaded, so a
//! pair that cannot be used is a configuration error, at start and at a reload.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::InconsistentKeys;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate chain and the private key it certifies, checked to match.
#[derive(Clone)]
pub struct Identity {
    certified: Arc<CertifiedKey>,
    /// Where it was read from, for messages.
    certificate: PathBuf,
}

impl fmt::Debug for Identity {
    /// Names the file; the key stays out of any log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificate", &self.certificate)
            .field("chain_length", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// Why a certificate and key could not be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: cannot read: {source}", file.display())]
    ReadCertificate { file: PathBuf, source: io::Error },
    #[error("{}: cannot read: {source}", file.display())]
    ReadKey { file: PathBuf, source: io::Error },
    #[error("{}: no PEM certificate in it", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{}: not a PEM certificate chain: {reason}", file.display())]
    BadCertificate { file: PathBuf, reason: String },
    #[error("{}: no PEM private key in it (PKCS#8, RSA or EC)", file.display())]
    NoKey { file: PathBuf },
    #[error("{}: not a usable private key: {reason}", file.display())]
    BadKey { file: PathBuf, reason: String },
    #[error("{}: does not match the certificate in {}", key.display(), certificate.display())]
    Mismatch { key: PathBuf, certificate: PathBuf },
}

impl IdentityError {
    /// Whether the error is about the key file (else the certificate file).
    pub fn is_about_key(&self) -> bool {
        matches!(
            self,
            IdentityError::ReadKey { .. }
                | IdentityError::NoKey { .. }
                | IdentityError::BadKey { .. }
                | IdentityError::Mismatch { .. }
        )
    }
}

impl Identity {
    /// The pair as rustls serves it.
    pub(crate) fn certified(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Reads the PEM certificate chain at `certificate` (the server's certificate first) and
    /// the PEM private key at `key` (PKCS#8, PKCS#1 RSA or SEC1 EC), and checks that the key
    /// is the one the first certificate certifies.
    pub fn load(certificate: &Path, key: &Path) -> Result<Identity, IdentityError> {
        let chain = read_chain(certificate)?;
        let private_key = read_key(key)?;
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(private_key)
            .map_err(|error| IdentityError::BadKey {
                file: key.to_path_buf(),
                reason: error.to_string(),
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // ring reports every key kind it loads; `Unknown` would only mean it cannot say.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::Mismatch {
                    key: key.to_path_buf(),
                    certificate: certificate.to_path_buf(),
                });
            }
            Err(error) => {
                return Err(IdentityError::BadCertificate {
                    file: certificate.to_path_buf(),
                    reason: error.to_string(),
                });
            }
        }
        Ok(Identity {
            certified: Arc::new(certified),
            certificate: certificate.to_path_buf(),
        })
    }
}

fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = std::fs::read(file).map_err(|source| IdentityError::ReadCertificate {
        file: file.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| IdentityError::BadCertificate {
            file: file.to_path_buf(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(IdentityError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let pem = std::fs::read(file).map_err(|source| IdentityError::ReadKey {
        file: file.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::NoKey {
            file: file.to_path_buf(),
        },
        error => IdentityError::BadKey {
            file: file.to_path_buf(),
            reason: error.to_string(),
        },
    })
}
