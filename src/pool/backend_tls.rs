//! Backend-facing TLS, per server (and for the catalog and provisioning connections), with
//! libpq's sslmode meanings: `disable` never asks, `prefer` asks and falls back to plaintext
//! when the server says no, `require` insists but checks no certificate, `verify-ca` insists and
//! checks the chain against a CA file, `verify-full` checks the host name too. The relay reads
//! and writes a [`BackendStream`] either way.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the proxy secures its connections to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendTlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (unverified), plaintext otherwise; libpq's default.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with the chain checked against `tls_ca_file`, whatever host name it names.
    VerifyCa,
    /// TLS with the chain checked against `tls_ca_file` and the host name against the
    /// certificate.
    VerifyFull,
}

impl BackendTlsMode {
    /// Parses a config or catalog value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disable" => Some(Self::Disable),
            "prefer" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-ca" => Some(Self::VerifyCa),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    /// The certificate chain is checked against a CA file.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }

    /// The value as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A server's TLS settings, as its tenants' backend targets carry them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendTls {
    /// The mode.
    pub mode: BackendTlsMode,
    /// PEM file of the CA(s) that sign the server's certificate (`verify-ca`, `verify-full`).
    pub ca_file: Option<String>,
}

impl BackendTls {
    /// Checks a server's settings as written (config file, catalog row, CLI flags): a known
    /// mode (prefer when absent) and a CA file for verify-full. `names` are the two settings
    /// as the writer knows them, for the message.
    pub fn from_settings(
        mode: Option<&str>,
        ca_file: Option<&str>,
        names: [&str; 2],
    ) -> Result<BackendTls, String> {
        let [mode_name, ca_name] = names;
        let mode = match mode {
            None => BackendTlsMode::default(),
            Some(m) => BackendTlsMode::parse(m).ok_or_else(|| {
                format!(
                    "{mode_name} \"{m}\" is not one of disable, prefer, require, verify-ca, verify-full"
                )
            })?,
        };
        let ca_file = ca_file.filter(|f| !f.is_empty()).map(str::to_owned);
        if mode.verifies() && ca_file.is_none() {
            return Err(format!("{mode_name} {} needs {ca_name}", mode.as_str()));
        }
        Ok(BackendTls { mode, ca_file })
    }
}

/// Why TLS to a backend could not be set up. No key material is ever in the text.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// The server answered SSLRequest with no and the mode insists.
    #[error("the server does not accept TLS (tls_mode = {0})")]
    Refused(&'static str),
    /// The CA file could not be used.
    #[error("TLS CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The handshake failed (certificate not trusted, wrong host name, ...).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    /// The server answered SSLRequest with something else.
    #[error("unexpected answer to SSLRequest: {0:#04x}")]
    Unexpected(u8),
    /// Socket failure while negotiating.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A backend socket, plain or TLS; the TLS state is boxed so plain connections stay small.
#[derive(Debug)]
pub enum BackendStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl BackendStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for BackendStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => crate::tls::poll_read_flushing(&mut **s, cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => crate::tls::poll_write_through(&mut **s, cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Secures a fresh TCP connection to `host` as `tls` says, before the startup message.
pub async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    tls: &BackendTls,
) -> Result<BackendStream, BackendTlsError> {
    if tls.mode == BackendTlsMode::Disable {
        return Ok(BackendStream::Plain(tcp));
    }
    let config = client_config(tls)?;
    tcp.write_all(&SSL_REQUEST).await?;
    // One byte, read alone: nothing the server sent after it may be taken as TLS-protected.
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if tls.mode == BackendTlsMode::Prefer => return Ok(BackendStream::Plain(tcp)),
        b'N' => return Err(BackendTlsError::Refused(tls.mode.as_str())),
        other => return Err(BackendTlsError::Unexpected(other)),
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| BackendTlsError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(BackendTlsError::Handshake)?;
    Ok(BackendStream::Tls(Box::new(stream)))
}

/// Client configs by CA file and whether the host name is checked (no file: unverified), built
/// once; RELOAD empties it so renewed CA files are read again.
type ConfigKey = Option<(String, bool)>;
static CONFIGS: Mutex<Option<HashMap<ConfigKey, Arc<rustls::ClientConfig>>>> = Mutex::new(None);

/// Forgets the built configs: the next connection to each server reads its CA file again.
pub fn reload() {
    *CONFIGS.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

fn client_config(tls: &BackendTls) -> Result<Arc<rustls::ClientConfig>, BackendTlsError> {
    let key = tls.mode.verifies().then(|| {
        (
            tls.ca_file.clone().unwrap_or_default(),
            tls.mode == BackendTlsMode::VerifyFull,
        )
    });
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    let configs = configs.get_or_insert_with(HashMap::new);
    if let Some(c) = configs.get(&key) {
        return Ok(c.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendTlsError::Handshake(io::Error::other(e)))?;
    let config = match &key {
        Some((path, true)) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        Some((path, false)) => {
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(path)?),
                provider,
            )
            .build()
            .map_err(|e| BackendTlsError::Handshake(io::Error::other(e)))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(chain)))
                .with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    let config = Arc::new(config);
    configs.insert(key, config.clone());
    Ok(config)
}

fn roots(path: &str) -> Result<rustls::RootCertStore, BackendTlsError> {
    let bad = |reason: String| BackendTlsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("certificate verification needs a CA file".into()));
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        store
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(store)
}

/// `verify-ca`: the chain is checked as for `verify-full`, but not the host name, as libpq does.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate is accepted (as libpq does without a root file),
/// but the handshake's signatures are still checked, so the session keys are the server's.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
