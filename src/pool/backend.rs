//! One raw, authenticated backend connection: connect and log in, run the proxy's own simple
//! queries (settings, rollback, reset), tell whether the peer is still there, and say goodbye
//! with a Terminate when dropped.

use std::net::SocketAddr;
use std::time::Duration;

use super::clock::{self, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::backend_tls::{self, BackendStream, BackendTlsError};

use crate::auth::backend::{BackendLoginError, ServerParams, login};
use crate::protocol::{TxStatus, messages};
use crate::session::cancel::CancelTarget;
use crate::session::prepared::BackendStatements;
use crate::tenant::BackendTarget;
use crate::wire::{self, take_cstr};

/// Largest reply accepted to one of the proxy's own queries.
const MAX_REPLY_MESSAGE_LENGTH: usize = 1 << 20;

/// Why a backend connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect or I/O failure.
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Connect, login or a query took too long.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Login refused or broken.
    #[error(transparent)]
    Login(#[from] BackendLoginError),
    /// One of the proxy's queries failed; `body` is the ErrorResponse body, to relay unchanged.
    #[error("backend rejected a statement: {code} {message}")]
    Statement {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
        /// The raw ErrorResponse body.
        body: Bytes,
    },
    /// The backend broke the protocol.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// TLS to the backend could not be set up as its server's tls_mode asks.
    #[error(transparent)]
    Tls(#[from] BackendTlsError),
}

impl From<wire::WireError> for BackendError {
    fn from(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Io(io) => BackendError::Io(io),
            other => BackendError::Protocol(other.to_string()),
        }
    }
}

/// A logged-in backend connection.
#[derive(Debug)]
pub struct BackendConn {
    /// The socket (plain or TLS); the relay reads and writes it directly.
    pub stream: BackendStream,
    /// ParameterStatus values as the backend last reported them.
    pub params: ServerParams,
    /// Where a client's cancel for this connection goes: address, process id and secret, made
    /// once and shared with whichever client holds the connection.
    pub cancel: std::sync::Arc<CancelTarget>,
    /// Returned to the pool at.
    pub idle_since: Instant,
    /// Closed instead of reused from this moment (its pool's max lifetime after `created`).
    pub retire_at: Instant,
    /// Probed for a dead peer before reuse from this moment on (a while after `idle_since`).
    pub probe_at: Instant,
    /// Transaction mode: the statements prepared on this connection.
    pub statements: BackendStatements,
    /// Transaction mode: fingerprint of the client settings this connection carries.
    pub settings_fingerprint: u64,
    /// Transaction mode: the session whose Parse made the unnamed statement (0: none known).
    pub unnamed_owner: u64,
}

impl BackendConn {
    /// Connects and logs in to `target`, all within `limit`; the connection retires once it
    /// is `lifetime` old.
    pub async fn connect(
        target: &BackendTarget,
        limit: Duration,
        lifetime: Duration,
    ) -> Result<Box<BackendConn>, BackendError> {
        timeout(limit, async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            let addr = tcp.peer_addr()?;
            let mut stream = backend_tls::negotiate(tcp, &target.host, &target.tls).await?;
            let login = login(&mut stream, target).await?;
            Ok(Box::new(BackendConn::new(
                stream,
                addr,
                login.params,
                login.pid,
                login.secret.into(),
                lifetime,
            )))
        })
        .await
        .map_err(|_| BackendError::Timeout(limit))?
    }

    fn new(
        stream: BackendStream,
        addr: SocketAddr,
        params: ServerParams,
        pid: i32,
        secret: std::sync::Arc<[u8]>,
        lifetime: Duration,
    ) -> BackendConn {
        let now = clock::now();
        BackendConn {
            stream,
            params,
            cancel: std::sync::Arc::new(CancelTarget { addr, pid, secret }),
            idle_since: now,
            retire_at: clock::after(now, lifetime),
            probe_at: now,
            statements: BackendStatements::default(),
            settings_fingerprint: 0,
            unnamed_owner: 0,
        }
    }

    /// A connection over `stream` with no login, for unit tests of the pool.
    #[cfg(test)]
    pub fn for_tests(stream: TcpStream) -> Box<BackendConn> {
        let addr = stream.peer_addr().expect("peer");
        let secret = std::sync::Arc::from(&[0u8; 4][..]);
        Box::new(BackendConn::new(
            BackendStream::Plain(stream),
            addr,
            ServerParams::default(),
            0,
            secret,
            Duration::from_secs(3600),
        ))
    }

    /// Runs `sql` with the simple protocol and reads up to ReadyForQuery, recording any
    /// ParameterStatus. Fails with the backend's ErrorResponse if a statement failed.
    pub async fn simple_query(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<TxStatus, BackendError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut out, sql);
        timeout(limit, async {
            use tokio::io::AsyncWriteExt;
            self.stream.write_all(&out).await?;
            let mut rbuf = BytesMut::with_capacity(512);
            let mut failure: Option<BackendError> = None;
            loop {
                let (tag, body) =
                    wire::read_message(&mut self.stream, &mut rbuf, MAX_REPLY_MESSAGE_LENGTH)
                        .await?;
                match tag {
                    b'S' => {
                        if let Some((name, rest)) = take_cstr(&body)
                            && let Some((value, _)) = take_cstr(rest)
                        {
                            self.params.set(name, value);
                        }
                    }
                    b'E' => {
                        let (code, message) = messages::error_fields(&body);
                        failure = Some(BackendError::Statement {
                            code: code.unwrap_or("XX000").to_owned(),
                            message: message.unwrap_or("").to_owned(),
                            body: body.clone(),
                        });
                    }
                    b'Z' => {
                        let status = TxStatus::from_byte(body.first().copied().unwrap_or(b'E'));
                        if !rbuf.is_empty() {
                            return Err(BackendError::Protocol("data after ReadyForQuery".into()));
                        }
                        return match failure {
                            Some(f) => Err(f),
                            None => Ok(status),
                        };
                    }
                    // Command completion, rows of a SHOW, notices: nothing to keep.
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| BackendError::Timeout(limit))?
    }

    /// Makes the connection fit for another client: ROLLBACK if a transaction is open, then the
    /// reset query. Any failure means the connection must be closed instead.
    pub async fn reset(
        &mut self,
        status: TxStatus,
        reset_query: &str,
        limit: Duration,
    ) -> Result<(), BackendError> {
        if status != TxStatus::Idle {
            self.simple_query("ROLLBACK", limit).await?;
        }
        if !reset_query.is_empty() && self.simple_query(reset_query, limit).await? != TxStatus::Idle
        {
            return Err(BackendError::Protocol(
                "reset query left a transaction open".into(),
            ));
        }
        Ok(())
    }

    /// False when the backend closed the socket or sent something unasked (a FATAL from
    /// pg_terminate_backend, say) while idle. Never blocks.
    pub fn is_alive(&self) -> bool {
        // A peek at the socket under any TLS: an idle backend sends nothing, so any byte (or
        // the end of the stream) means it is going away.
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(
            self.stream.tcp().poll_peek(&mut cx, &mut buf),
            std::task::Poll::Pending
        )
    }

    /// The value the backend last reported for a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }
}

impl Drop for BackendConn {
    fn drop(&mut self) {
        // Best effort Terminate so the server logs a clean disconnect; never blocks.
        crate::tls::write_without_waiting(&mut self.stream, &[b'X', 0, 0, 0, 4]);
    }
}
