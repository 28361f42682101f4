//! Client authentication: one exchange per listener method, against the tenant user's stored
//! hash. An unknown user runs the same exchange against a decoy and fails the same way, so user
//! names cannot be probed.

use bytes::BytesMut;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::scram::{ScramServer, ScramVerifier};
use super::{StoredPassword, md5_response_matches};
use crate::config::AuthMethod;
use crate::error::ClientError;
use crate::protocol::{MAX_AUTH_MESSAGE_LENGTH, messages};
use crate::wire::{self, take_cstr};

/// Everything one authentication needs.
pub struct AuthRequest<'a> {
    /// The listener's method.
    pub method: AuthMethod,
    /// The user name as shown in errors (without tenant suffix).
    pub user: &'a str,
    /// The stored hash, `None` for an unknown user.
    pub stored: Option<&'a StoredPassword>,
    /// Per-process key that makes decoy salts stable per user name.
    pub decoy_key: &'a [u8; 32],
}

/// Runs the exchange; `Ok` means the caller may send AuthenticationOk. Errors are ready to send.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    req: AuthRequest<'_>,
) -> Result<(), ClientError> {
    let failed = || ClientError::password_failed(req.user);
    match (req.method, req.stored) {
        (AuthMethod::Trust, _) => Ok(()),
        (AuthMethod::Md5, Some(StoredPassword::Md5(hex))) => md5_exchange(stream, rbuf, hex).await,
        (_, Some(StoredPassword::Scram(v))) => scram_exchange(stream, rbuf, v).await.map_err(|e| {
            tracing::debug!(error = %e, "SCRAM exchange failed");
            failed()
        }),
        // SCRAM listener and an md5-only user, or an unknown user: same exchange, same failure.
        // On an md5 listener too an unknown user is asked for SCRAM, as Postgres asks one by its
        // default `password_encryption`, so that it looks like a user with a SCRAM verifier.
        (_, _) => {
            let decoy = ScramVerifier::decoy(req.user, req.decoy_key);
            scram_exchange(stream, rbuf, &decoy)
                .await
                .and(Err(failed()))
                .map_err(|_| failed())
        }
    }
    .map_err(|e| {
        if e.code == crate::error::sqlstate::INVALID_PASSWORD {
            failed()
        } else {
            e
        }
    })
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &BytesMut) -> Result<(), ClientError> {
    stream
        .write_all(buf)
        .await
        .map_err(|_| ClientError::protocol("client closed the connection during authentication"))
}

async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<bytes::Bytes, ClientError> {
    let (tag, body) = wire::read_message(stream, rbuf, MAX_AUTH_MESSAGE_LENGTH)
        .await
        .map_err(|e| ClientError::protocol(format!("invalid authentication message: {e}")))?;
    if tag != b'p' {
        return Err(ClientError::protocol(format!(
            "expected a password message, got message type {tag:#04x}"
        )));
    }
    Ok(body)
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    stored_hex: &str,
) -> Result<(), ClientError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    messages::auth_md5(&mut out, salt);
    send(stream, &out).await?;
    let body = read_password_message(stream, rbuf).await?;
    let response = body.strip_suffix(&[0]).unwrap_or(&body);
    if md5_response_matches(stored_hex, salt, response) {
        Ok(())
    } else {
        Err(ClientError::password_failed(""))
    }
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    verifier: &ScramVerifier,
) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    messages::auth_sasl(&mut out);
    send(stream, &out).await?;
    let body = read_password_message(stream, rbuf).await?;
    let (mechanism, rest) =
        take_cstr(&body).ok_or_else(|| ClientError::protocol("malformed SASL initial response"))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(ClientError::protocol(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let Some((len, data)) = rest.split_first_chunk::<4>() else {
        return Err(ClientError::protocol("malformed SASL initial response"));
    };
    if i32::from_be_bytes(*len) < 0 || i32::from_be_bytes(*len) as usize != data.len() {
        return Err(ClientError::protocol("malformed SASL initial response"));
    }
    let (exchange, server_first) = ScramServer::start(verifier, data)
        .map_err(|e| ClientError::password_failed("").with_detail(e.to_string()))?;
    out.clear();
    messages::auth_sasl_continue(&mut out, server_first.as_bytes());
    send(stream, &out).await?;
    let client_final = read_password_message(stream, rbuf).await?;
    let server_final = exchange
        .finish(&client_final)
        .map_err(|_| ClientError::password_failed(""))?;
    out.clear();
    messages::auth_sasl_final(&mut out, server_final.as_bytes());
    send(stream, &out).await
}
