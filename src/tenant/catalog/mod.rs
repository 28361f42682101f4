//! Where the routing snapshot comes from: the config file's `[[servers]]`/`[[tenants]]`, and,
//! when configured, the Postgres catalog database, whose changes arrive by LISTEN/NOTIFY plus a
//! periodic full reload. The catalog holds the current snapshot in a watch channel, so readers
//! get it without locks and waiters (paused tenants) wake when it changes.

pub mod migrate;
pub mod postgres;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::snapshot::{Snapshot, SnapshotSource};
use crate::config::{Config, ServerConfig, TenantConfig};

/// Catalog connection health, for logs and (later) metrics.
#[derive(Debug, Clone, Default)]
pub struct CatalogHealth {
    /// Last successful load from the catalog database.
    pub last_load: Option<SystemTime>,
    /// Last failure, while it lasts.
    pub last_error: Option<String>,
    /// From the last notified catalog change (its time, as the catalog's trigger saw it) to its
    /// snapshot being in force here.
    pub notification_lag: Option<std::time::Duration>,
}

/// The live snapshot and how it is kept current.
pub struct Catalog {
    /// The configuration in force; swapped whole on reload.
    config: ArcSwap<Config>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    health: Mutex<CatalogHealth>,
    /// The last rows loaded from the catalog database, rebuilt on top of a reloaded config.
    db_rows: Mutex<Option<(Vec<ServerConfig>, Vec<TenantConfig>)>>,
}

impl Catalog {
    /// A catalog serving the config file's tenants until the database (if any) loads.
    pub fn new(config: Arc<Config>) -> Arc<Self> {
        let snapshot = file_snapshot(&config);
        Arc::new(Catalog {
            config: ArcSwap::new(config),
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            health: Mutex::default(),
            db_rows: Mutex::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a reloaded configuration in force and rebuilds the snapshot from its `[[servers]]`
    /// and `[[tenants]]` plus the last catalog rows: new connections see it at once.
    pub fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
        let rows = self
            .db_rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match rows {
            Some((servers, tenants)) => self.install(servers, tenants),
            None => {
                self.snapshot
                    .send_replace(Arc::new(file_snapshot(&self.config())));
            }
        }
    }

    /// The current routing table.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Health of the catalog database link.
    pub fn health(&self) -> CatalogHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs rows loaded from the catalog database on top of the config file's.
    pub fn install(&self, servers: Vec<ServerConfig>, tenants: Vec<TenantConfig>) {
        *self.db_rows.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((servers.clone(), tenants.clone()));
        let config = self.config();
        let all_servers: Vec<ServerConfig> =
            config.servers.iter().cloned().chain(servers).collect();
        let all_tenants: Vec<TenantConfig> =
            config.tenants.iter().cloned().chain(tenants).collect();
        // Later server rows win too: keep the last row per name.
        let mut dedup: Vec<ServerConfig> = Vec::with_capacity(all_servers.len());
        for s in all_servers.into_iter().rev() {
            if !dedup.iter().any(|d| d.name == s.name) {
                dedup.push(s);
            }
        }
        let (snapshot, warnings) =
            Snapshot::build(&dedup, &all_tenants, &config.pool, SnapshotSource::Catalog);
        for w in warnings {
            tracing::warn!("{w}");
        }
        tracing::debug!(tenants = snapshot.len(), "catalog snapshot installed");
        self.snapshot.send_replace(Arc::new(snapshot));
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.last_load = Some(SystemTime::now());
        h.last_error = None;
    }

    /// Records how late a notified change came into force.
    pub fn record_notification_lag(&self, lag: std::time::Duration) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notification_lag = Some(lag);
    }

    fn record_error(&self, error: String) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(error);
    }

    /// The task that follows the catalog database, if one is configured; it runs until dropped.
    pub fn follower(self: &Arc<Self>) -> Option<impl Future<Output = ()> + Send + 'static> {
        let db = self.config().catalog.clone()?;
        Some(postgres::follow(self.clone(), db))
    }
}

/// The routing table of the config file's own servers and tenants; rows it cannot route are
/// logged and left out.
fn file_snapshot(config: &Config) -> Snapshot {
    let (snapshot, warnings) = Snapshot::build(
        &config.servers,
        &config.tenants,
        &config.pool,
        SnapshotSource::Toml,
    );
    for w in warnings {
        tracing::warn!("{w}");
    }
    snapshot
}
