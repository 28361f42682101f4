//! The Postgres catalog source: loads servers, tenants and users in one repeatable-read
//! transaction, LISTENs on `pgtenant_catalog` for changes, reloads periodically, and reconnects
//! by itself. While the database is unreachable the last snapshot keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::Catalog;
use crate::config::{CatalogConfig, ServerConfig, TenantConfig, TenantUserConfig};
use crate::error::Secret;

/// The NOTIFY channel catalog triggers signal on.
pub const CHANNEL: &str = "pgtenant_catalog";

/// Connect timeout used when the URL sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a catalog load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the catalog database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The URL does not parse, or its TLS settings are wrong (the text never quotes the URL).
    #[error("invalid catalog URL: {0}")]
    BadUrl(String),
    /// No connection: TCP, TLS (as the URL's sslmode demands) or the login failed.
    #[error("catalog database: {0}")]
    Connect(crate::pgclient::ConnectError),
    /// Query failure.
    #[error("catalog database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A query took too long.
    #[error("catalog database did not answer in time")]
    Timeout,
    /// The notification stream ended.
    #[error("catalog connection closed")]
    Closed,
}

/// Connects to the catalog database and drives the connection in a task. Notifications, if any,
/// go to `notify` with the time of the change when the payload carries one (bounded: one
/// pending reload is enough).
pub async fn connect(
    url: &Secret,
    notify: Option<mpsc::Sender<Option<SystemTime>>>,
) -> Result<Client, CatalogError> {
    let (mut config, tls) = crate::pgclient::parse(url.expose()).map_err(|e| match e {
        crate::pgclient::ConnectError::BadString(why) => CatalogError::BadUrl(why),
        other => CatalogError::Connect(other),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("pgtenant-catalog");
    }
    let (client, mut connection) = crate::pgclient::connect(&config, &tls)
        .await
        .map_err(CatalogError::Connect)?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify {
                        // Full means a reload is already pending: that one will see this change.
                        let _ = tx.try_send(change_time(n.payload()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "catalog connection ended");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// Follows the catalog forever: connect, LISTEN, load, reload on notification or timer; on any
/// failure keep the snapshot, log, and reconnect with backoff.
pub async fn follow(catalog: Arc<Catalog>, db: CatalogConfig) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match follow_once(&catalog, &db).await {
            Ok(()) => return,
            Err(e) => {
                let known = catalog.snapshot().len();
                tracing::error!(error = %e, tenants_kept = known, "catalog unreachable; serving the last snapshot");
                catalog.record_error(e.to_string());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(catalog: &Catalog, db: &CatalogConfig) -> Result<(), CatalogError> {
    let (tx, mut rx) = mpsc::channel(1);
    let client = connect(&db.url, Some(tx)).await?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Load after LISTEN so that no change falls between the two.
    reload(catalog, &client).await?;
    tracing::info!(
        tenants = catalog.snapshot().len(),
        "catalog loaded; following changes"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(db.reload_interval_ms.max(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => {
                let Some(changed_at) = n else {
                    return Err(CatalogError::Closed);
                };
                reload(catalog, &client).await?;
                if let Some(lag) = changed_at.and_then(|t| SystemTime::now().duration_since(t).ok()) {
                    catalog.record_notification_lag(lag);
                }
            }
            _ = tick.tick() => reload(catalog, &client).await?,
        }
    }
}

/// The time a change notification carries after its '@' (seconds since the epoch, as the
/// catalog's trigger wrote them from 0005 on).
pub(crate) fn change_time(payload: &str) -> Option<SystemTime> {
    let (_, secs) = payload.rsplit_once('@')?;
    let secs: f64 = secs.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

async fn reload(catalog: &Catalog, client: &Client) -> Result<(), CatalogError> {
    let (servers, tenants) = tokio::time::timeout(LOAD_TIMEOUT, load(client))
        .await
        .map_err(|_| CatalogError::Timeout)??;
    catalog.install(servers, tenants);
    Ok(())
}

/// Reads every server, tenant and tenant user in one consistent snapshot.
pub async fn load(client: &Client) -> Result<(Vec<ServerConfig>, Vec<TenantConfig>), CatalogError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = load_rows(client).await;
    client.batch_execute("COMMIT").await?;
    result
}

async fn load_rows(
    client: &Client,
) -> Result<(Vec<ServerConfig>, Vec<TenantConfig>), CatalogError> {
    let servers = client
        .query(
            "SELECT name, host, port, backend_user, backend_password, max_connections,
                    tls_mode, tls_ca_file
             FROM pgtenant.servers",
            &[],
        )
        .await?
        .iter()
        .map(|r| ServerConfig {
            name: r.get(0),
            host: r.get(1),
            port: u16::try_from(r.get::<_, i32>(2)).unwrap_or(0),
            user: r.get(3),
            password: Secret::new(r.get::<_, String>(4)),
            max_connections: r
                .get::<_, Option<i32>>(5)
                .and_then(|v| u32::try_from(v).ok()),
            tls_mode: r.get(6),
            tls_ca_file: r.get(7),
        })
        .collect();
    let mut tenants: Vec<TenantConfig> = client
        .query(
            "SELECT slug, server, database, status, backend_user, backend_password, pool_size, min_idle,
                    idle_timeout_ms, max_lifetime_ms, checkout_timeout_ms, pool_mode,
                    max_client_connections
             FROM pgtenant.tenants ORDER BY slug COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|r| TenantConfig {
            slug: r.get(0),
            server: r.get(1),
            database: r.get(2),
            status: r.get(3),
            backend_user: r.get(4),
            backend_password: r.get::<_, Option<String>>(5).map(Secret::new),
            pool_size: r.get::<_, Option<i32>>(6).and_then(|v| u32::try_from(v).ok()),
            min_idle: r.get::<_, Option<i32>>(7).and_then(|v| u32::try_from(v).ok()),
            idle_timeout_ms: r.get::<_, Option<i64>>(8).and_then(|v| u64::try_from(v).ok()),
            max_lifetime_ms: r.get::<_, Option<i64>>(9).and_then(|v| u64::try_from(v).ok()),
            checkout_timeout_ms: r.get::<_, Option<i64>>(10).and_then(|v| u64::try_from(v).ok()),
            pool_mode: r.get(11),
            max_client_connections: r.get::<_, Option<i32>>(12).and_then(|v| u32::try_from(v).ok()),
            users: Vec::new(),
        })
        .collect();
    let users = client
        .query(
            "SELECT tenant, name, password_hash FROM pgtenant.tenant_users ORDER BY tenant",
            &[],
        )
        .await?;
    for r in &users {
        let slug: &str = r.get(0);
        if let Ok(i) = tenants.binary_search_by(|t| t.slug.as_str().cmp(slug)) {
            tenants[i].users.push(TenantUserConfig {
                name: r.get(1),
                password_hash: Secret::new(r.get::<_, String>(2)),
            });
        }
    }
    Ok((servers, tenants))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_time_reads_the_payloads_timestamp_and_ignores_the_rest() {
        let t = change_time("tenants:UPDATE@1764600000.25").expect("a time");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch"),
            Duration::from_millis(1_764_600_000_250)
        );
        // Payloads of catalogs before migration 0005, and garbage, carry no time.
        for payload in [
            "tenants:UPDATE",
            "x@",
            "x@abc",
            "x@-5",
            "x@NaN",
            "x@inf",
            "x@1e400",
        ] {
            assert_eq!(change_time(payload), None, "{payload}");
        }
    }
}
