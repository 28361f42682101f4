//! The routing table: an immutable snapshot of every tenant, built from catalog rows and swapped
//! whole when the catalog changes, so a connection reads a consistent view without locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{BackendTarget, PoolSettings, Tenant, TenantStatus};
use crate::auth::StoredPassword;
use crate::config::{PoolDefaults, PoolMode, ServerConfig, TenantConfig};

/// Where a snapshot's rows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    /// The config file only.
    Toml,
    /// The config file plus the Postgres catalog.
    Catalog,
}

/// Every routable tenant at one moment.
#[derive(Debug)]
pub struct Snapshot {
    tenants: HashMap<String, Arc<Tenant>>,
    /// What it was built from.
    pub source: SnapshotSource,
    /// When it was built.
    pub built_at: SystemTime,
}

impl Snapshot {
    /// An empty table (before anything loaded).
    pub fn empty() -> Self {
        Snapshot {
            tenants: HashMap::new(),
            source: SnapshotSource::Toml,
            built_at: SystemTime::now(),
        }
    }

    /// Builds a snapshot from rows. Later rows win over earlier ones with the same slug, so the
    /// caller passes the config file's rows first and the catalog's after. A row that cannot be
    /// routed (unknown server, bad status or hash) is skipped and reported in the second value.
    pub fn build(
        servers: &[ServerConfig],
        tenants: &[TenantConfig],
        defaults: &PoolDefaults,
        source: SnapshotSource,
    ) -> (Snapshot, Vec<String>) {
        let by_name: HashMap<&str, &ServerConfig> =
            servers.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut warnings = Vec::new();
        let mut map = HashMap::with_capacity(tenants.len());
        for t in tenants {
            match build_tenant(t, &by_name, defaults) {
                Ok(tenant) => {
                    map.insert(t.slug.clone(), Arc::new(tenant));
                }
                Err(why) => warnings.push(format!("tenant \"{}\" skipped: {why}", t.slug)),
            }
        }
        (
            Snapshot {
                tenants: map,
                source,
                built_at: SystemTime::now(),
            },
            warnings,
        )
    }

    /// Every tenant, in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant with this slug.
    pub fn tenant(&self, slug: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(slug)
    }

    /// How many tenants it routes.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// True when it routes nobody.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

fn build_tenant(
    t: &TenantConfig,
    servers: &HashMap<&str, &ServerConfig>,
    d: &PoolDefaults,
) -> Result<Tenant, String> {
    super::validate_slug(&t.slug)?;
    let server = servers
        .get(t.server.as_str())
        .ok_or_else(|| format!("unknown server \"{}\"", t.server))?;
    let status =
        TenantStatus::parse(&t.status).ok_or_else(|| format!("unknown status \"{}\"", t.status))?;
    let mut users = HashMap::with_capacity(t.users.len());
    for u in &t.users {
        let hash = StoredPassword::parse(u.password_hash.expose())
            .ok_or_else(|| format!("user \"{}\" has an unusable password hash", u.name))?;
        users.insert(u.name.clone(), hash);
    }
    let (user, password) = match &t.backend_user {
        Some(u) => (u.clone(), t.backend_password.clone().unwrap_or_default()),
        None => (server.user.clone(), server.password.clone()),
    };
    let size = t.pool_size.unwrap_or(d.size).max(1);
    let mode = match &t.pool_mode {
        Some(m) => PoolMode::parse(m).ok_or_else(|| format!("unknown pool mode \"{m}\""))?,
        None => d.mode,
    };
    let ms = Duration::from_millis;
    Ok(Tenant {
        slug: t.slug.clone(),
        status,
        backend: Arc::new(BackendTarget {
            server: server.name.clone(),
            host: server.host.clone(),
            port: server.port,
            database: t.database.clone().unwrap_or_else(|| t.slug.clone()),
            user,
            server_max_connections: server
                .max_connections
                .unwrap_or(d.server_max_connections)
                .max(1),
            password,
            tls: server.backend_tls()?,
        }),
        pool: PoolSettings {
            mode,
            size,
            min_idle: t.min_idle.unwrap_or(d.min_idle).min(size),
            idle_timeout: ms(t.idle_timeout_ms.unwrap_or(d.idle_timeout_ms)),
            max_lifetime: ms(t.max_lifetime_ms.unwrap_or(d.max_lifetime_ms)),
            checkout_timeout: ms(t.checkout_timeout_ms.unwrap_or(d.checkout_timeout_ms)),
            connect_timeout: ms(d.connect_timeout_ms),
            reset_query: d.reset_query.clone(),
            max_client_connections: t
                .max_client_connections
                .unwrap_or(d.max_client_connections)
                .max(1),
            session_state: d.session_state,
            prepared_statements_per_connection: d.prepared_statements_per_connection.max(1),
            reply_timeout: (d.reply_timeout_ms > 0).then(|| ms(d.reply_timeout_ms)),
        },
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            host: "h".into(),
            port: 5432,
            user: "u".into(),
            ..Default::default()
        }
    }

    fn tenant(slug: &str, server: &str) -> TenantConfig {
        TenantConfig {
            slug: slug.into(),
            server: server.into(),
            status: "active".into(),
            pool_size: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn later_rows_win_and_bad_rows_are_reported() {
        let servers = [server("a"), server("b")];
        let mut moved = tenant("acme", "b");
        moved.database = Some("acme_db".into());
        let rows = [
            tenant("acme", "a"),
            moved,
            tenant("ghost", "nowhere"),
            tenant("Bad", "a"),
        ];
        let (snap, warnings) = Snapshot::build(
            &servers,
            &rows,
            &PoolDefaults::default(),
            SnapshotSource::Catalog,
        );
        assert_eq!(snap.len(), 1);
        let acme = snap.tenant("acme").expect("acme routed");
        assert_eq!(acme.backend.server, "b");
        assert_eq!(acme.backend.database, "acme_db");
        assert_eq!(acme.pool.size, 3);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }
}
