//! The configuration file: serde structs with defaults, and `validate()` with messages that name
//! the offending key. Every key is documented in `config/pgtenant.example.toml`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Secret;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect; one listener on 127.0.0.1:6432 when absent.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Connection handling shared by all listeners.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Pool defaults for every tenant; tenants may override.
    #[serde(default)]
    pub pool: PoolDefaults,
    /// The Postgres catalog, when there is one.
    #[serde(default)]
    pub catalog: Option<CatalogConfig>,
    /// Servers of the embedded (TOML) catalog.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// Tenants of the embedded (TOML) catalog.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// The admin console.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The Prometheus endpoint; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// Where Prometheus scrapes `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port of the HTTP endpoint.
    pub address: SocketAddr,
}

/// The admin console: a reserved database name on every listener, for the users listed here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The database name that reaches the console instead of a tenant.
    #[serde(default = "default_admin_database")]
    pub database: String,
    /// Who may use it (SCRAM verifiers, as for tenant users); nobody when empty.
    #[serde(default)]
    pub users: Vec<TenantUserConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            database: default_admin_database(),
            users: Vec::new(),
        }
    }
}

fn default_admin_database() -> String {
    "pgtenant".into()
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port.
    pub address: SocketAddr,
    /// How clients on this listener prove who they are.
    #[serde(default)]
    pub auth: AuthMethod,
    /// PEM certificate chain; with `tls_key_file`, clients may (or must) use TLS.
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Refuse clients that do not use TLS (28000).
    #[serde(default)]
    pub tls_required: bool,
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::plain(SocketAddr::from((
        [127, 0, 0, 1],
        6432,
    )))]
}

impl ListenerConfig {
    /// A listener without TLS, with the default authentication.
    pub fn plain(address: SocketAddr) -> Self {
        ListenerConfig {
            address,
            auth: AuthMethod::default(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

/// Client authentication method of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 only.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 for users whose stored hash is md5, SCRAM for the others (as Postgres does).
    #[serde(rename = "md5")]
    Md5,
    /// No password: local development only.
    #[serde(rename = "trust")]
    Trust,
}

/// A way of finding the tenant in a startup packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveStrategy {
    /// The database name is the tenant slug.
    Database,
    /// The user name ends in `.tenant`.
    UserSuffix,
    /// `options=-c pgtenant.tenant=slug`.
    Options,
    /// The TLS server name: `acme.<proxy.sni_suffix>` names `acme`.
    Sni,
}

/// Connection handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Strategies tried, in order; all that name a tenant must agree.
    pub resolve: Vec<ResolveStrategy>,
    /// Time a client has from TCP accept to the end of authentication.
    pub startup_timeout_ms: u64,
    /// Linux: the kernel hands a new connection to the proxy only once its first bytes (the
    /// startup packet) have arrived, or after this many seconds (`TCP_DEFER_ACCEPT`, as
    /// pgbouncer's `tcp_defer_accept`): one wake-up per connection fewer, and a client that
    /// connects and says nothing holds no proxy slot meanwhile. 0 turns it off.
    pub tcp_defer_accept_secs: u32,
    /// Info and debug log lines wait up to this long and go out in one write (warnings and
    /// errors at once, after what came before them): a login's two lines no longer cost two
    /// system calls. 0 writes every line at once.
    pub log_flush_ms: u64,
    /// Clients served at once across all tenants (53300 beyond).
    pub max_client_connections: usize,
    /// How long a new client of a paused tenant, or a transaction held by PAUSE, waits.
    pub pause_timeout_ms: u64,
    /// Time allowed for a client-less backend connection to reset itself.
    pub reset_timeout_ms: u64,
    /// Threads serving connections. One (the default) spends the least CPU per transaction,
    /// like pgbouncer; more scale past one core's worth of traffic.
    pub worker_threads: usize,
    /// On shutdown, how long clients inside a transaction may take to finish it before they are
    /// closed with 57P01.
    pub shutdown_grace_ms: u64,
    /// The domain under which a TLS server name's first label names the tenant (strategy
    /// `sni`): with `db.example.com`, `acme.db.example.com` is tenant `acme`.
    pub sni_suffix: String,
    /// A log line when a client has logged in (the line when it leaves is always written).
    pub log_connections: bool,
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            resolve: vec![
                ResolveStrategy::Database,
                ResolveStrategy::UserSuffix,
                ResolveStrategy::Options,
            ],
            startup_timeout_ms: 10_000,
            tcp_defer_accept_secs: 45,
            log_flush_ms: 100,
            max_client_connections: 10_000,
            pause_timeout_ms: 30_000,
            reset_timeout_ms: 5_000,
            worker_threads: 1,
            shutdown_grace_ms: 10_000,
            sni_suffix: String::new(),
            log_connections: true,
            log_format: LogFormat::Text,
        }
    }
}

/// How a tenant's backend connections are shared between its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A client keeps one backend connection for its whole session.
    #[default]
    Session,
    /// A client holds a backend connection from the first message of a transaction to the
    /// ReadyForQuery that ends it, and none in between.
    Transaction,
}

impl PoolMode {
    /// Parses the catalog's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(PoolMode::Session),
            "transaction" => Some(PoolMode::Transaction),
            _ => None,
        }
    }
}

/// What transaction mode does when a client creates state that cannot follow it from one backend
/// connection to the next (temp tables, LISTEN, session advisory locks, WITH HOLD cursors,
/// SQL-level PREPARE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatePolicy {
    /// Keep the client on its backend connection for the rest of its session.
    #[default]
    Pin,
    /// Refuse the statement with 0A000 before it reaches the backend.
    Error,
}

/// Pool settings every tenant starts from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaults {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Most backend connections a tenant may hold.
    pub size: u32,
    /// Idle connections kept open ahead of demand.
    pub min_idle: u32,
    /// An idle connection older than this is closed (down to `min_idle`).
    pub idle_timeout_ms: u64,
    /// Any connection older than this is closed when next idle.
    pub max_lifetime_ms: u64,
    /// How long a client waits for a backend connection before 53300.
    pub checkout_timeout_ms: u64,
    /// TCP connect plus login to a backend.
    pub connect_timeout_ms: u64,
    /// Run on a connection before another client gets it; empty to skip.
    pub reset_query: String,
    /// Clients one tenant may have connected at once (53300 beyond).
    pub max_client_connections: u32,
    /// Backend connections a server holds for all its tenants together, unless the server sets
    /// its own `max_connections`.
    pub server_max_connections: u32,
    /// Transaction mode: pin or refuse session state that cannot follow a client.
    pub session_state: SessionStatePolicy,
    /// Transaction mode: prepared statements kept per backend connection (least recently used
    /// are closed beyond it).
    pub prepared_statements_per_connection: u32,
    /// A backend that owes replies and sends nothing for this long is closed and its client
    /// told (08006); 0 turns it off. A statement silent for longer before its first row ends too.
    pub reply_timeout_ms: u64,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        PoolDefaults {
            mode: PoolMode::Session,
            size: 20,
            min_idle: 0,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 3_600_000,
            checkout_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            reset_query: "DISCARD ALL".into(),
            max_client_connections: 5_000,
            server_max_connections: 90,
            session_state: SessionStatePolicy::Pin,
            prepared_statements_per_connection: 250,
            reply_timeout_ms: 0,
        }
    }
}

/// The Postgres catalog database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// libpq-style URL or key=value string; may hold a password, so it is never logged.
    pub url: Secret,
    /// Apply `catalog_migrations/` when `serve` starts.
    #[serde(default)]
    pub migrate_on_start: bool,
    /// Full reload period, covering missed notifications.
    #[serde(default = "default_reload_interval")]
    pub reload_interval_ms: u64,
    /// How often per-tenant usage goes to `pgtenant.tenant_usage`; 0 turns it off.
    #[serde(default = "default_usage_interval")]
    pub usage_interval_ms: u64,
}

fn default_reload_interval() -> u64 {
    30_000
}

fn default_usage_interval() -> u64 {
    60_000
}

/// A backend server of the embedded catalog.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name tenants refer to.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role the proxy logs in as (unless the tenant names its own).
    pub user: String,
    /// Its password (SCRAM/md5/cleartext as the server asks); empty for trust.
    #[serde(default)]
    pub password: Secret,
    /// Backend connections shared by all tenants on this server; `pool.server_max_connections`
    /// when absent.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// TLS to this server: disable, prefer (default), require, verify-ca or verify-full.
    #[serde(default)]
    pub tls_mode: Option<String>,
    /// PEM file of the CA that signs the server's certificate (verify-ca, verify-full).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
}

impl ServerConfig {
    /// The server's TLS settings, checked: a known mode, and a CA file for verify-ca/-full.
    pub fn backend_tls(&self) -> Result<crate::pool::backend_tls::BackendTls, String> {
        crate::pool::backend_tls::BackendTls::from_settings(
            self.tls_mode.as_deref(),
            self.tls_ca_file.as_deref(),
            ["tls_mode", "tls_ca_file"],
        )
    }
}

fn default_pg_port() -> u16 {
    5432
}

/// A tenant of the embedded catalog. (`Default` leaves the required fields empty: for code
/// that builds rows field by field.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The routing key clients name.
    pub slug: String,
    /// Server it lives on.
    pub server: String,
    /// Database on that server; the slug when absent.
    pub database: Option<String>,
    /// active, paused, disabled or moving.
    #[serde(default = "default_status")]
    pub status: String,
    /// Backend role override (schema/shared isolation); the server's role when absent.
    pub backend_user: Option<String>,
    /// Password of `backend_user`.
    pub backend_password: Option<Secret>,
    /// Pool mode override: "session" or "transaction".
    pub pool_mode: Option<String>,
    /// Pool size override.
    pub pool_size: Option<u32>,
    /// Per-tenant client limit override.
    pub max_client_connections: Option<u32>,
    /// min_idle override.
    pub min_idle: Option<u32>,
    /// idle_timeout_ms override.
    pub idle_timeout_ms: Option<u64>,
    /// max_lifetime_ms override.
    pub max_lifetime_ms: Option<u64>,
    /// checkout_timeout_ms override.
    pub checkout_timeout_ms: Option<u64>,
    /// Logins of this tenant.
    #[serde(default)]
    pub users: Vec<TenantUserConfig>,
}

fn default_status() -> String {
    "active".into()
}

/// A login of a tenant: a SCRAM verifier or md5 hash, never a plaintext password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUserConfig {
    /// User name as the client sends it (without the `.tenant` suffix).
    pub name: String,
    /// `SCRAM-SHA-256$…` verifier (make one with `pgtenant hash-password`) or `md5…` hash.
    pub password_hash: Secret,
}

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or a wrong type; the message carries line and column.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The settings as (key, value) text, for SHOW CONFIG and for telling what a reload changed.
    /// No secrets: the catalog URL and passwords are left out on purpose; file tenants and
    /// servers appear as a digest of their (redacted) contents.
    pub fn summary(&self) -> Vec<(String, String)> {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("{} ({:?})", l.address, l.auth))
            .collect();
        let resolve: Vec<String> = self
            .proxy
            .resolve
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        let (x, p) = (&self.proxy, &self.pool);
        let digest = |text: String| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let rows: Vec<(&str, String)> = vec![
            ("listeners", listeners.join(", ")),
            ("proxy.resolve", resolve.join(", ")),
            ("proxy.startup_timeout_ms", x.startup_timeout_ms.to_string()),
            (
                "proxy.tcp_defer_accept_secs",
                x.tcp_defer_accept_secs.to_string(),
            ),
            ("proxy.log_flush_ms", x.log_flush_ms.to_string()),
            (
                "proxy.max_client_connections",
                x.max_client_connections.to_string(),
            ),
            ("proxy.pause_timeout_ms", x.pause_timeout_ms.to_string()),
            ("proxy.reset_timeout_ms", x.reset_timeout_ms.to_string()),
            ("proxy.worker_threads", x.worker_threads.to_string()),
            ("proxy.shutdown_grace_ms", x.shutdown_grace_ms.to_string()),
            ("proxy.log_connections", x.log_connections.to_string()),
            (
                "proxy.log_format",
                format!("{:?}", x.log_format).to_lowercase(),
            ),
            ("pool.mode", format!("{:?}", p.mode).to_lowercase()),
            ("pool.size", p.size.to_string()),
            ("pool.min_idle", p.min_idle.to_string()),
            ("pool.idle_timeout_ms", p.idle_timeout_ms.to_string()),
            ("pool.max_lifetime_ms", p.max_lifetime_ms.to_string()),
            (
                "pool.checkout_timeout_ms",
                p.checkout_timeout_ms.to_string(),
            ),
            ("pool.connect_timeout_ms", p.connect_timeout_ms.to_string()),
            ("pool.reset_query", p.reset_query.clone()),
            (
                "pool.max_client_connections",
                p.max_client_connections.to_string(),
            ),
            (
                "pool.server_max_connections",
                p.server_max_connections.to_string(),
            ),
            ("pool.session_state", format!("{:?}", p.session_state)),
            (
                "pool.prepared_statements_per_connection",
                p.prepared_statements_per_connection.to_string(),
            ),
            ("pool.reply_timeout_ms", p.reply_timeout_ms.to_string()),
            (
                "catalog",
                match &self.catalog {
                    Some(c) => format!("postgres (reload every {} ms)", c.reload_interval_ms),
                    None => "config file only".into(),
                },
            ),
            (
                "servers (file)",
                format!(
                    "{} ({})",
                    self.servers.len(),
                    digest(format!("{:?}", self.servers))
                ),
            ),
            (
                "tenants (file)",
                format!(
                    "{} ({})",
                    self.tenants.len(),
                    digest(format!("{:?}", self.tenants))
                ),
            ),
            (
                "metrics",
                self.metrics
                    .as_ref()
                    .map_or("off".into(), |m| m.address.to_string()),
            ),
            ("admin.database", self.admin.database.clone()),
            (
                "admin.users",
                format!(
                    "{} ({})",
                    self.admin.users.len(),
                    digest(format!("{:?}", self.admin.users))
                ),
            ),
        ];
        rows.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listeners.is_empty() {
            return bad("at least one [[listeners]] entry is needed".into());
        }
        if self.proxy.resolve.is_empty() {
            return bad("proxy.resolve must name at least one strategy".into());
        }
        if self.proxy.tcp_defer_accept_secs > 3600 {
            return bad("proxy.tcp_defer_accept_secs must be at most 3600".into());
        }
        if self.proxy.log_flush_ms > 10_000 {
            return bad("proxy.log_flush_ms must be at most 10000".into());
        }
        if self.proxy.worker_threads == 0 || self.proxy.worker_threads > 1024 {
            return bad("proxy.worker_threads must be between 1 and 1024".into());
        }
        if self.pool.size == 0 {
            return bad("pool.size must be at least 1".into());
        }
        if self.pool.min_idle > self.pool.size {
            return bad("pool.min_idle must not exceed pool.size".into());
        }
        if self.pool.server_max_connections == 0 || self.pool.max_client_connections == 0 {
            return bad(
                "pool.server_max_connections and pool.max_client_connections must be at least 1"
                    .into(),
            );
        }
        if self.pool.prepared_statements_per_connection == 0 {
            return bad("pool.prepared_statements_per_connection must be at least 1".into());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.tls_cert_file.is_some() != l.tls_key_file.is_some() {
                return bad(format!(
                    "listeners[{i}] ({}): tls_cert_file and tls_key_file go together",
                    l.address
                ));
            }
            if l.tls_required && l.tls_cert_file.is_none() {
                return bad(format!(
                    "listeners[{i}] ({}): tls_required needs tls_cert_file and tls_key_file",
                    l.address
                ));
            }
        }
        if self.proxy.resolve.contains(&ResolveStrategy::Sni) && self.proxy.sni_suffix.is_empty() {
            return bad("proxy.resolve has \"sni\" but proxy.sni_suffix is empty".into());
        }
        if self.admin.database.is_empty() {
            return bad("admin.database must not be empty".into());
        }
        for (i, u) in self.admin.users.iter().enumerate() {
            if !matches!(
                crate::auth::StoredPassword::parse(u.password_hash.expose()),
                Some(crate::auth::StoredPassword::Scram(_))
            ) {
                return bad(format!(
                    "admin.users[{i}] ({}): password_hash must be a SCRAM-SHA-256 verifier (pgtenant hash-password)",
                    u.name
                ));
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() || s.host.is_empty() || s.user.is_empty() {
                return bad(format!(
                    "servers[{i}]: name, host and user must not be empty"
                ));
            }
            if s.max_connections == Some(0) {
                return bad(format!(
                    "servers[{i}] ({}): max_connections must be at least 1",
                    s.name
                ));
            }
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return bad(format!(
                    "servers[{i}]: duplicate server name \"{}\"",
                    s.name
                ));
            }
            if let Err(e) = s.backend_tls() {
                return bad(format!("servers[{i}] ({}): {e}", s.name));
            }
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if let Err(e) = crate::tenant::validate_slug(&t.slug) {
                return bad(format!("tenants[{i}]: {e}"));
            }
            if self.tenants[..i].iter().any(|o| o.slug == t.slug) {
                return bad(format!(
                    "tenants[{i}]: duplicate tenant slug \"{}\"",
                    t.slug
                ));
            }
            if !self.servers.iter().any(|s| s.name == t.server) {
                return bad(format!(
                    "tenants[{i}] ({}): unknown server \"{}\"",
                    t.slug, t.server
                ));
            }
            if crate::tenant::TenantStatus::parse(&t.status).is_none() {
                return bad(format!(
                    "tenants[{i}] ({}): status must be active, paused, disabled or moving, not \"{}\"",
                    t.slug, t.status
                ));
            }
            if let Some(mode) = &t.pool_mode
                && PoolMode::parse(mode).is_none()
            {
                return bad(format!(
                    "tenants[{i}] ({}): pool_mode must be session or transaction, not \"{mode}\"",
                    t.slug
                ));
            }
            if t.max_client_connections == Some(0) {
                return bad(format!(
                    "tenants[{i}] ({}): max_client_connections must be at least 1",
                    t.slug
                ));
            }
            if t.pool_size == Some(0) {
                return bad(format!(
                    "tenants[{i}] ({}): pool_size must be at least 1",
                    t.slug
                ));
            }
            for (j, u) in t.users.iter().enumerate() {
                if crate::auth::StoredPassword::parse(u.password_hash.expose()).is_none() {
                    return bad(format!(
                        "tenants[{i}].users[{j}] ({}): password_hash must be a SCRAM-SHA-256 verifier or an md5 hash",
                        u.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// `startup_timeout_ms` as a Duration.
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }

    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$\
        ZuVrI/sC/bdmYV1yc8jjflEUoZeAlWpZ3Dv4U1FkHU0=:9tGfAqT0fu/ixdXFb36L+qSLDI0JnmXWWP/FJGnt2Ik=";

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml("").expect("empty config is valid");
        assert_eq!(c.listeners[0].address.port(), 6432);
        assert_eq!(c.listeners[0].auth, AuthMethod::ScramSha256);
        assert_eq!(c.pool.reset_query, "DISCARD ALL");
        assert_eq!(c.proxy.resolve.len(), 3);
    }

    #[test]
    fn rejects_with_reasons() {
        let server = "[[servers]]\nname='s'\nhost='h'\nuser='u'\n";
        let cases = [
            ("[pool]\nsize = 0", "pool.size"),
            ("[proxy]\nbogus = 1", "unknown field"),
            ("[[tenants]]\nslug='a'\nserver='nope'", "unknown server"),
            (
                &format!("{server}[[tenants]]\nslug='Bad Slug'\nserver='s'"),
                "tenants[0]",
            ),
            (
                &format!("{server}[[tenants]]\nslug='a'\nserver='s'\nstatus='asleep'"),
                "status must be",
            ),
            (
                &format!(
                    "{server}[[tenants]]\nslug='a'\nserver='s'\n[[tenants.users]]\nname='u'\npassword_hash='plain'"
                ),
                "password_hash",
            ),
            (&format!("{server}{server}"), "duplicate server"),
            (
                "[[admin.users]]\nname='dba'\npassword_hash='md5d41d8cd98f00b204e9800998ecf8427'",
                "admin.users[0] (dba): password_hash must be a SCRAM-SHA-256 verifier",
            ),
            ("[admin]\ndatabase=''", "admin.database"),
            ("[proxy]\nlog_flush_ms = 10001", "proxy.log_flush_ms"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let err = Config::from_toml("[pool]\nsize = \"ten\"\n")
            .expect_err("type error")
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn full_tenant_parses() {
        let text = format!(
            "[[servers]]\nname='s'\nhost='h'\nuser='u'\npassword='p'\n\
             [[tenants]]\nslug='acme'\nserver='s'\npool_size=3\n\
             [[tenants.users]]\nname='app'\npassword_hash='{VERIFIER}'\n"
        );
        let c = Config::from_toml(&text).expect("valid");
        assert_eq!(c.tenants[0].pool_size, Some(3));
        assert!(!format!("{c:?}").contains("p'"), "secrets are redacted");
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn shipped_config_files_are_valid() {
        for file in ["config/pgtenant.example.toml", "config/pgtenant.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            if let Err(e) = super::Config::load(&path) {
                panic!("{file}: {e}");
            }
        }
    }
}
