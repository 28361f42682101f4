//! The admin console: psql to the reserved database (`[admin] database`, default `pgtenant`) on
//! any listener reaches it instead of a tenant. Only the users of `[admin] users` get in, always
//! by SCRAM-SHA-256 (an unknown user, tenant users included, fails like a wrong password). It
//! speaks the simple query protocol and answers each command with an ordinary result set, so
//! psql prints a table.

pub mod commands;
mod result;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::auth::StoredPassword;
use crate::auth::client::{AuthRequest, authenticate};
use crate::config::{AuthMethod, Config};
use crate::error::{ClientError, sqlstate};
use crate::protocol::messages;
use crate::server::Shared;
use crate::session::{SessionEnd, StartupRequest};
use crate::wire;

/// Longest console command accepted.
const MAX_COMMAND_LENGTH: usize = 64 * 1024;

/// True when the client asked for the console's database.
pub fn wants_console(config: &Config, params: &[(String, String)]) -> bool {
    params
        .iter()
        .any(|(k, v)| k == "database" && *v == config.admin.database)
}

/// Serves one console session, from authentication to Terminate.
pub async fn serve<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    mut req: StartupRequest,
) -> SessionEnd {
    let user = req
        .params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    crate::logging::client::record_names(None, &user);
    req.kick.set_user(&user);
    let stored = shared
        .config()
        .admin
        .users
        .iter()
        .find(|u| u.name == user)
        .and_then(|u| StoredPassword::parse(u.password_hash.expose()));
    let mut rbuf = std::mem::take(&mut req.early);
    let auth = AuthRequest {
        method: AuthMethod::ScramSha256,
        user: &user,
        stored: stored.as_ref(),
        decoy_key: &shared.decoy_key,
    };
    let authenticated =
        tokio::time::timeout_at(req.login_deadline, authenticate(client, &mut rbuf, auth))
            .await
            .unwrap_or_else(|_| Err(ClientError::protocol("authentication timed out")));
    if let Err(e) = authenticated {
        return refuse(client, e).await;
    }
    if shared.config().proxy.log_connections {
        tracing::info!(console = true, "client connected");
    }
    // Listed by SHOW CLIENTS, and closed at once by a shutdown drain.
    let _slot = shared.pools.admit_console(&req.kick);
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", "15.0 (pgtenant admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::ready_for_query(&mut out, b'I');
    if client.write_all(&out).await.is_err() {
        return SessionEnd::ClientLeft;
    }
    console(shared, client, &mut rbuf).await
}

async fn console<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    rbuf: &mut BytesMut,
) -> SessionEnd {
    // After an extended-protocol message, everything up to Sync is skipped (as Postgres does
    // after an error).
    let mut skipping = false;
    loop {
        let (tag, body) = match wire::read_message(client, rbuf, MAX_COMMAND_LENGTH).await {
            Ok(m) => m,
            Err(_) => return SessionEnd::ClientLeft,
        };
        let mut out = BytesMut::new();
        match tag {
            b'X' => return SessionEnd::ClientLeft,
            b'Q' => {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body));
                let shutdown = commands::run(shared, &text, &mut out).await;
                messages::ready_for_query(&mut out, b'I');
                if client.write_all(&out).await.is_err() {
                    return SessionEnd::ClientLeft;
                }
                if shutdown {
                    shared.request_shutdown();
                }
                continue;
            }
            b'S' if skipping => {
                skipping = false;
                messages::ready_for_query(&mut out, b'I');
            }
            _ if skipping => continue,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
                skipping = tag != b'S';
                messages::error_response(
                    &mut out,
                    &ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console accepts simple queries only",
                    ),
                );
                if tag == b'S' {
                    messages::ready_for_query(&mut out, b'I');
                }
            }
            other => {
                let e = ClientError::protocol(format!(
                    "unexpected message type {other:#04x} on the admin console"
                ));
                return refuse(client, e).await;
            }
        }
        if client.write_all(&out).await.is_err() {
            return SessionEnd::ClientLeft;
        }
    }
}

async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, err: ClientError) -> SessionEnd {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, &err);
    let _ = client.write_all(&out).await;
    SessionEnd::Refused(err)
}
