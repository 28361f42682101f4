//! Reloading the config file (SIGHUP, or RELOAD on the admin console). What can change live
//! does at once — pool settings, limits and timeouts, file tenants and servers, admin users,
//! logging of connections, the shutdown grace — and new connections see it; what cannot
//! (listeners, threads, log format, the client limit's semaphore, the catalog connection) keeps
//! its old value and is reported as needing a restart. Listeners' TLS certificates are re-read
//! from their files, so a renewed certificate goes in force without dropping a connection. An
//! invalid file or certificate changes nothing.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::server::Shared;

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Settings now in force with a new value: (key, value).
    pub applied: Vec<(String, String)>,
    /// Settings whose new value waits for a restart: (key, new value).
    pub needs_restart: Vec<(String, String)>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was started without a file (tests, embedding).
    #[error("pgtenant was not started from a config file; nothing to reload")]
    NoFile,
    /// The file is unreadable or invalid; the old config stays in force.
    #[error("{0}; the running configuration is unchanged")]
    Invalid(#[from] ConfigError),
    /// A listener's certificate or key no longer loads; nothing changed.
    #[error("{0}; the running configuration is unchanged")]
    Tls(#[from] crate::tls::TlsError),
}

/// Keys that only a restart applies.
const RESTART_ONLY: &[&str] = &[
    "listeners",
    "proxy.worker_threads",
    "proxy.log_format",
    "proxy.max_client_connections",
    "proxy.tcp_defer_accept_secs",
    "proxy.log_flush_ms",
    "catalog",
    "metrics",
];

/// Re-reads the file the proxy was started from and puts what can change live in force.
pub fn reload(shared: &Shared) -> Result<ReloadReport, ReloadError> {
    let path = shared.config_path().ok_or(ReloadError::NoFile)?;
    let report = reload_from(shared, &path)?;
    tracing::info!(
        path = %path.display(),
        applied = ?report.applied.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        needs_restart = ?report.needs_restart.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "configuration reloaded"
    );
    Ok(report)
}

fn reload_from(shared: &Shared, path: &Path) -> Result<ReloadReport, ReloadError> {
    let old = shared.config();
    let wanted = Config::load(path)?;
    let mut new = wanted.clone();
    // What only a restart can apply keeps its running value, so SHOW CONFIG tells the truth.
    new.listeners = old.listeners.clone();
    new.proxy.worker_threads = old.proxy.worker_threads;
    new.proxy.log_format = old.proxy.log_format;
    new.proxy.max_client_connections = old.proxy.max_client_connections;
    new.proxy.tcp_defer_accept_secs = old.proxy.tcp_defer_accept_secs;
    new.proxy.log_flush_ms = old.proxy.log_flush_ms;
    new.catalog = old.catalog.clone();
    new.metrics = old.metrics.clone();
    // Certificates are re-read from the running listeners' files (renewed in place); all must
    // load before anything changes.
    let mut acceptors = Vec::new();
    for l in &old.listeners {
        acceptors.push(crate::tls::load_acceptor(l)?);
    }
    let before = old.summary();
    let after = new.summary();
    let mut report = ReloadReport::default();
    for (key, value) in &after {
        if before.iter().any(|(k, v)| k == key && v != value) {
            report.applied.push((key.clone(), value.clone()));
        }
    }
    for (key, value) in wanted.summary() {
        if RESTART_ONLY.contains(&key.as_str())
            && after.iter().any(|(k, v)| *k == key && *v != value)
        {
            report.needs_restart.push((key, value));
        }
    }
    shared.catalog.set_config(Arc::new(new));
    for (i, (tls, acceptor)) in shared.tls.iter().zip(acceptors).enumerate() {
        if acceptor.is_some() {
            report
                .applied
                .push((format!("listeners[{i}] certificate"), "reloaded".into()));
        }
        tls.replace(acceptor);
    }
    // Servers' CA files are read again by the next connection to each.
    crate::pool::backend_tls::reload();
    Ok(report)
}
