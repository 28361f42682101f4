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

/// Writes through a rustls stream and pushes the records out at once: rustls may take bytes
/// while the socket is full and report them written, and a relay that has nothing more to say
/// would otherwise never flush them.
#[inline]
pub(crate) fn poll_write_through<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    buf: &[u8],
) -> std::task::Poll<std::io::Result<usize>> {
    let wrote = std::pin::Pin::new(&mut *stream).poll_write(cx, buf);
    if matches!(wrote, std::task::Poll::Ready(Ok(_))) {
        let _ = std::pin::Pin::new(stream).poll_flush(cx);
    }
    wrote
}

/// Writes `bytes` and flushes without waiting, for a goodbye from Drop: whatever the socket (or
/// rustls) does not take now is lost, as it would be on a closing plain socket.
pub(crate) fn write_without_waiting<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = std::pin::Pin::new(&mut *stream).poll_write(&mut cx, bytes);
    let _ = std::pin::Pin::new(stream).poll_flush(&mut cx);
}

/// Reads from a rustls stream after pushing out records an earlier write left behind (the
/// relays poll the read side on every pass, so stalled records go out as the socket drains).
#[inline]
pub(crate) fn poll_read_flushing<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> std::task::Poll<std::io::Result<()>> {
    let _ = std::pin::Pin::new(&mut *stream).poll_flush(cx);
    std::pin::Pin::new(stream).poll_read(cx, buf)
}

/// A client's TLS session. Reads and writes go through [`poll_read_flushing`] and
/// [`poll_write_through`]; dropped because the client was kicked or the proxy shuts down, it
/// says why (57P01) as plain TCP clients hear it, then closes the TLS session.
pub(crate) struct TlsClient {
    /// The session.
    pub stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    /// What to say when dropped, if anything (computed then).
    pub goodbye: Box<dyn Fn() -> Option<crate::error::ClientError> + Send + Sync>,
}

impl tokio::io::AsyncRead for TlsClient {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        poll_read_flushing(&mut self.get_mut().stream, cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsClient {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        poll_write_through(&mut self.get_mut().stream, cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let Some(reason) = (self.goodbye)() else {
            return;
        };
        let mut out = bytes::BytesMut::new();
        crate::protocol::messages::error_response(&mut out, &reason);
        write_without_waiting(&mut self.stream, &out);
        self.stream.get_mut().1.send_close_notify();
        write_without_waiting(&mut self.stream, &[]);
    }
}
