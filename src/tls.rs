//! Client-facing TLS: each listener with a certificate answers SSLRequest with 'S' and runs a
//! rustls handshake (ring provider, TLS 1.2 and 1.3); a listener may require it. Acceptors sit
//! behind an atomic pointer so that RELOAD/SIGHUP can put renewed certificates in force without
//! touching connections.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;

/// Why certificates could not be put in force. The text names the file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("TLS file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key (mismatch, unsupported key type…).
    #[error("TLS certificate {path}: {reason}")]
    Rejected {
        /// The certificate file.
        path: String,
        /// rustls's reason.
        reason: String,
    },
}

/// Builds an acceptor from a PEM certificate chain and key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rejected = |reason: String| TlsError::Rejected {
        path: cert.display().to_string(),
        reason,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| rejected(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One listener's TLS: its current acceptor (none without a certificate) and whether plaintext
/// clients are refused.
pub struct ListenerTls {
    acceptor: ArcSwapOption<TlsAcceptor>,
    /// Clients must use TLS.
    pub required: bool,
}

impl ListenerTls {
    /// Loads the listener's certificate, if it has one.
    pub fn load(listener: &ListenerConfig) -> Result<Self, TlsError> {
        Ok(ListenerTls {
            acceptor: ArcSwapOption::new(load_acceptor(listener)?.map(Arc::new)),
            required: listener.tls_required,
        })
    }

    /// The acceptor in force, if TLS is offered.
    pub fn acceptor(&self) -> Option<Arc<TlsAcceptor>> {
        self.acceptor.load_full()
    }

    /// Puts a freshly loaded acceptor in force; connections already up keep theirs.
    pub fn replace(&self, acceptor: Option<TlsAcceptor>) {
        self.acceptor.store(acceptor.map(Arc::new));
    }
}

/// The acceptor a listener's files describe, if it has any.
pub fn load_acceptor(listener: &ListenerConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&listener.tls_cert_file, &listener.tls_key_file) {
        (Some(cert), Some(key)) => acceptor(cert, key).map(Some),
        _ => Ok(None),
    }
}
