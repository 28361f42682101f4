//! A client's life after the handshake: resolve its tenant, authenticate it, wait out a pause,
//! take a backend connection, carry its settings over, relay, and give the connection back clean.

pub mod cancel;
pub mod hangup;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod silence;
pub mod sockio;
pub mod spare;
pub mod state;
pub mod tracking;
pub mod txn;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::auth::client::{AuthRequest, authenticate};
use crate::config::AuthMethod;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::logging::client::ClientLog;
use crate::pool::{BackendError, CheckoutError, ClientSlot, KickSwitch, PooledConn};
use crate::protocol::{TxStatus, messages};
use crate::server::Shared;
use crate::tenant::resolve::{TlsServerName, resolve};
use crate::tenant::{Tenant, TenantStatus};
use relay::{Relay, RelayEnd};
use sockio::RelayIo;
use state::LinkState;
use tracking::Settings;
use txn::{TxnEnd, TxnSession};

/// How a session ended, for the disconnect log line.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client left; its connection went back to the pool or was closed if it was mid-query.
    ClientLeft,
    /// The backend went away under the client.
    ServerGone,
    /// The session was refused or broke; the client was told why.
    Refused(ClientError),
}

/// What a client asked for at startup.
pub struct StartupRequest {
    /// Startup parameters.
    pub params: Vec<(String, String)>,
    /// The listener's authentication method.
    pub auth: AuthMethod,
    /// When login must be finished (handshake included).
    pub login_deadline: Instant,
    /// Whatever the client sent after its startup packet.
    pub early: BytesMut,
    /// Ends this client's task when its tenant is disabled.
    pub kick: Arc<KickSwitch>,
    /// The TLS server name the client sent, if it came over TLS with one.
    pub sni: Option<String>,
}

/// A logged-in client with its backend connection, ready to relay.
struct Opened {
    guard: PooledConn,
    key: cancel::CancelKey,
    /// Whatever the client sent after its login messages.
    early_bytes: BytesMut,
    tenant: Arc<Tenant>,
    /// Transaction mode: the settings that follow the client.
    settings: Settings,
    /// Counts the client against its tenant's limit while it is connected.
    _slot: ClientSlot,
    /// Marks the client's transaction boundaries; says when the proxy drains.
    kick: Arc<KickSwitch>,
}

/// Serves one client from its startup parameters to its disconnect. Login and release run in
/// `log`'s scope; the relay runs outside it, so that a wake-up costs nothing for logging (a
/// tracing span here once cost 6% of the relay's instructions, benches/instructions.sh).
pub async fn serve<C: AsyncRead + AsyncWrite + RelayIo + Unpin>(
    shared: &Shared,
    client: &mut C,
    req: StartupRequest,
    log: &Arc<ClientLog>,
) -> SessionEnd {
    let mut opened = match log.scope(open(shared, client, req)).await {
        Ok(o) => o,
        Err(end) => return end,
    };
    if opened.tenant.pool.mode == PoolMode::Transaction {
        return serve_transactions(shared, client, opened, log).await;
    }
    let mut link = LinkState::Ready(TxStatus::Idle);
    let end = Relay::new(std::mem::take(&mut opened.early_bytes))
        .with_accounting(
            opened.kick.clone(),
            opened.guard.pool().stats.clone(),
            Duration::from_millis(shared.config().proxy.pause_timeout_ms),
        )
        .with_reply_timeout(opened.guard.pool().settings.reply_timeout)
        .run(client, &mut opened.guard.conn().stream, &mut link)
        .await;
    log.scope(close(shared, client, opened, end, link)).await
}

/// Transaction mode: the login's connection goes back at once, and each transaction takes one.
async fn serve_transactions<C: AsyncRead + AsyncWrite + RelayIo + Unpin>(
    shared: &Shared,
    client: &mut C,
    opened: Opened,
    log: &Arc<ClientLog>,
) -> SessionEnd {
    let Opened {
        guard,
        key,
        early_bytes,
        tenant,
        settings,
        _slot,
        kick,
    } = opened;
    let pool = guard.pool().clone();
    key.detach();
    guard.give_back();
    let slug = tenant.slug.clone();
    let repool = move || {
        let t = shared.catalog.snapshot().tenant(&slug).cloned()?;
        (t.status != TenantStatus::Disabled).then(|| shared.pools.pool_for(&t))
    };
    let pause_limit = Duration::from_millis(shared.config().proxy.pause_timeout_ms);
    let mut session = TxnSession::new(
        pool,
        &repool,
        &key,
        &kick,
        pause_limit,
        settings,
        early_bytes,
    );
    let end = session.run(client).await;
    log.scope(async {
        match end {
            TxnEnd::ClientLeft => SessionEnd::ClientLeft,
            TxnEnd::ServerGone => SessionEnd::ServerGone,
            TxnEnd::Refused(e) => refuse(client, counted(shared, &tenant.slug, e)).await,
            TxnEnd::ServerProtocol(e) => {
                tracing::error!(error = %e, "backend broke the protocol");
                refuse(client, ClientError::internal()).await
            }
        }
    })
    .await
}

/// Login, checkout, settings, and the login reply to the client.
async fn open<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    mut req: StartupRequest,
) -> Result<Opened, SessionEnd> {
    let mut rbuf = std::mem::take(&mut req.early);
    let (tenant, settings) = match login(shared, client, &mut rbuf, &req).await {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(client, e).await),
    };
    if shared.config().proxy.log_connections {
        tracing::info!("client connected");
    }
    let Some(slot) =
        shared
            .pools
            .admit_client(&tenant.slug, tenant.pool.max_client_connections, &req.kick)
    else {
        let e = ClientError::tenant_client_limit(&tenant.slug, tenant.pool.max_client_connections);
        return Err(refuse(client, counted(shared, &tenant.slug, e)).await);
    };
    let mut guard = match checkout(shared, &tenant).await {
        Ok(g) => g,
        Err(e) => return Err(refuse(client, counted(shared, &tenant.slug, e)).await),
    };
    let reset_timeout = Duration::from_millis(shared.config().proxy.reset_timeout_ms);
    // Carry the client's settings over; a bad value fails the login as the backend would.
    let tracked = Settings::from_startup(&settings);
    let transaction_mode = tenant.pool.mode == PoolMode::Transaction;
    let conn = guard.conn();
    let sql = if transaction_mode {
        if conn.settings_fingerprint == tracked.fingerprint() {
            String::new()
        } else {
            tracked.apply_sql()
        }
    } else {
        params::settings_sql(&settings, |n| conn.param(n))
    };
    if !sql.is_empty() {
        match conn.simple_query(&sql, reset_timeout).await {
            Ok(_) => conn.settings_fingerprint = tracked.fingerprint(),
            Err(BackendError::Statement { body, .. }) => {
                let mut out = BytesMut::new();
                messages::write_message(&mut out, b'E', |b| b.extend_from_slice(&body));
                let _ = client.write_all(&out).await;
                guard.release(TxStatus::Idle, reset_timeout).await;
                return Err(SessionEnd::ClientLeft);
            }
            Err(e) => {
                tracing::warn!(error = %e, "applying client settings failed");
                return Err(refuse(client, ClientError::backend_unavailable(&tenant.slug)).await);
            }
        }
    }
    let conn = guard.conn();
    // A session-mode client keeps its backend: it is told the backend's own process id (with
    // a secret of the proxy's), so pg_backend_pid(), pg_stat_activity and a NOTIFY's sender
    // agree with it. A transaction-mode client moves between backends: no one pid is its own.
    let key = shared
        .cancels
        .register_as((!transaction_mode).then_some(conn.cancel.pid));
    key.attach(&conn.cancel);
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    conn.params.put_status_messages(&mut out);
    messages::backend_key_data(&mut out, key.pid, key.secret());
    messages::ready_for_query(&mut out, b'I');
    if client.write_all(&out).await.is_err() {
        guard.release(TxStatus::Idle, reset_timeout).await;
        return Err(SessionEnd::ClientLeft);
    }
    Ok(Opened {
        guard,
        key,
        early_bytes: rbuf,
        tenant,
        settings: tracked,
        _slot: slot,
        kick: req.kick,
    })
}

/// Gives the backend connection back (or closes it) according to how the relay ended.
async fn close<C: AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    opened: Opened,
    end: RelayEnd,
    link: LinkState,
) -> SessionEnd {
    let Opened {
        guard, key, tenant, ..
    } = opened;
    // The status to reset the connection from, or None to close it: mid-query the backend may
    // still be sending, and a connection a cancel was sent to may get the signal after the
    // client's query ended, in the next client's.
    let cancelled = key.detach();
    let reusable = match link {
        LinkState::Ready(status) if !cancelled => Some(status),
        _ => None,
    };
    let reset_timeout = Duration::from_millis(shared.config().proxy.reset_timeout_ms);
    match end {
        RelayEnd::ClientLeft => {
            match reusable {
                Some(status) => guard.release(status, reset_timeout).await,
                None => drop(guard),
            }
            SessionEnd::ClientLeft
        }
        RelayEnd::ServerGone => SessionEnd::ServerGone,
        RelayEnd::ShuttingDown => {
            if let Some(status) = reusable {
                guard.release(status, reset_timeout).await;
            }
            refuse(client, ClientError::shutting_down()).await
        }
        RelayEnd::PausedTooLong(waited) => {
            if let Some(status) = reusable {
                guard.release(status, reset_timeout).await;
            }
            let e = ClientError::tenant_paused(&tenant.slug, waited.as_millis() as u64);
            refuse(client, e).await
        }
        RelayEnd::ServerSilent(limit) => {
            // The guard is dropped, so the connection closed: it is owed replies.
            let ms = limit.as_millis() as u64;
            tracing::warn!(
                limit_ms = ms,
                "backend silent while replies were due: closed"
            );
            refuse(client, ClientError::server_silent(&tenant.slug, ms)).await
        }
        RelayEnd::ClientProtocol(e) => refuse(client, ClientError::protocol(e.to_string())).await,
        RelayEnd::ServerProtocol(e) => {
            tracing::error!(error = %e, "backend broke the protocol");
            refuse(client, ClientError::internal()).await
        }
    }
}

async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, err: ClientError) -> SessionEnd {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, &err);
    let _ = client.write_all(&out).await;
    SessionEnd::Refused(err)
}

/// Resolves, checks and authenticates; returns the (possibly resumed) tenant and the client's
/// settings for the backend.
async fn login<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    rbuf: &mut BytesMut,
    req: &StartupRequest,
) -> Result<(Arc<Tenant>, Vec<(String, String)>), ClientError> {
    let config = shared.config();
    let sni = req.sni.as_deref().map(|host| TlsServerName {
        host,
        suffix: &config.proxy.sni_suffix,
    });
    let resolved = resolve(&req.params, &config.proxy.resolve, sni)?;
    crate::logging::client::record_names(Some(&resolved.tenant), &resolved.user);
    req.kick.set_user(&resolved.user);
    let settings = params::client_settings(&req.params, &resolved.settings)?;
    let tenant = shared.catalog.snapshot().tenant(&resolved.tenant).cloned();
    let tenant = tenant.ok_or_else(|| ClientError::unknown_tenant(&resolved.tenant))?;
    let slug = tenant.slug.clone();
    let admitted = async {
        if tenant.status == TenantStatus::Disabled {
            return Err(ClientError::tenant_disabled(&tenant.slug));
        }
        let auth = AuthRequest {
            method: req.auth,
            user: &resolved.user,
            stored: tenant.users.get(&resolved.user),
            decoy_key: &shared.decoy_key,
        };
        tokio::time::timeout_at(req.login_deadline, authenticate(client, rbuf, auth))
            .await
            .map_err(|_| ClientError::protocol("authentication timed out"))??;
        wait_until_active(shared, tenant).await
    }
    .await;
    match admitted {
        Ok(tenant) => Ok((tenant, settings)),
        Err(e) => Err(counted(shared, &slug, e)),
    }
}

/// Counts an error pgtenant sends a client of a known tenant (metrics: errors by SQLSTATE
/// class, authentication failures).
fn counted(shared: &Shared, tenant: &str, e: ClientError) -> ClientError {
    shared.pools.stats_for(tenant).record_error(e.code);
    e
}

/// Holds a client of a paused (or moving) tenant until the catalog says active again, up to the
/// pause timeout.
async fn wait_until_active(
    shared: &Shared,
    tenant: Arc<Tenant>,
) -> Result<Arc<Tenant>, ClientError> {
    if tenant.status == TenantStatus::Active {
        return Ok(tenant);
    }
    let limit = Duration::from_millis(shared.config().proxy.pause_timeout_ms);
    let started = Instant::now();
    let mut updates = shared.catalog.subscribe();
    let slug = tenant.slug.clone();
    tracing::info!(tenant = %slug, "tenant is paused; client waits");
    loop {
        let current = updates.borrow_and_update().tenant(&slug).cloned();
        match current {
            None => return Err(ClientError::unknown_tenant(&slug)),
            Some(t) if t.status == TenantStatus::Active => return Ok(t),
            Some(t) if t.status == TenantStatus::Disabled => {
                return Err(ClientError::tenant_disabled(&slug));
            }
            Some(_) => {}
        }
        match tokio::time::timeout_at(started + limit, updates.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(ClientError::tenant_paused(&slug, limit.as_millis() as u64)),
        }
    }
}

async fn checkout(shared: &Shared, tenant: &Tenant) -> Result<PooledConn, ClientError> {
    // A pool replaced while we waited (catalog change) is looked up again, a few times at most.
    for _ in 0..3 {
        let pool = shared.pools.pool_for(tenant);
        match pool.checkout().await {
            Ok(conn) => return Ok(conn),
            Err(CheckoutError::Retired) => continue,
            Err(CheckoutError::Timeout(waited)) => {
                return Err(ClientError::pool_exhausted(
                    &tenant.slug,
                    &pool.limits(),
                    waited.as_millis() as u64,
                ));
            }
            Err(CheckoutError::Connect(e)) => {
                tracing::error!(error = %e, backend = ?tenant.backend, "backend connection failed");
                return Err(ClientError::backend_unavailable(&tenant.slug));
            }
        }
    }
    Err(ClientError::backend_unavailable(&tenant.slug))
}
