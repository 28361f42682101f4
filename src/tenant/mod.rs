//! Tenants: what a tenant is, how a client names one ([`resolve`]), the immutable routing table
//! every connection reads ([`snapshot`]), and where that table comes from ([`catalog`]).

pub mod catalog;
pub mod resolve;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::StoredPassword;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::error::Secret;

/// The longest slug accepted; it becomes part of database and role names (63 bytes in Postgres).
pub const MAX_SLUG_LENGTH: usize = 48;

/// Checks a slug: lowercase ASCII letters, digits, `_` and `-`, starting with a letter.
pub fn validate_slug(slug: &str) -> Result<(), String> {
    let ok_chars = slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let starts_ok = slug.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if slug.is_empty() || slug.len() > MAX_SLUG_LENGTH || !ok_chars || !starts_ok {
        return Err(format!(
            "invalid tenant slug \"{}\": use 1 to {MAX_SLUG_LENGTH} lowercase letters, digits, '_' or '-', starting with a letter",
            slug.escape_debug()
        ));
    }
    Ok(())
}

/// Whether a tenant takes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    /// Serving.
    Active,
    /// New connections wait until it is active again.
    Paused,
    /// Refused.
    Disabled,
    /// Being moved between servers: new connections wait like paused ones.
    Moving,
}

impl TenantStatus {
    /// Parses the catalog's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TenantStatus::Active),
            "paused" => Some(TenantStatus::Paused),
            "disabled" => Some(TenantStatus::Disabled),
            "moving" => Some(TenantStatus::Moving),
            _ => None,
        }
    }
}

/// Where and as whom the proxy connects for a tenant. Two tenants never share a pool even when
/// their targets are equal: pools are keyed by tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendTarget {
    /// Catalog name of the server.
    pub server: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database on that server.
    pub database: String,
    /// Role the proxy logs in as.
    pub user: String,
    /// Backend connections the server holds for all its tenants.
    pub server_max_connections: u32,
    /// That role's password (empty for trust).
    pub password: Secret,
    /// How connections to the server are secured.
    pub tls: crate::pool::backend_tls::BackendTls,
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}({}:{}/{} as {})",
            self.server, self.host, self.port, self.database, self.user
        )
    }
}

/// A tenant's effective pool settings: its overrides on top of the server-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Most backend connections.
    pub size: u32,
    /// Idle connections kept ready.
    pub min_idle: u32,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Connections older than this are closed when next idle.
    pub max_lifetime: Duration,
    /// Wait for a free connection before 53300.
    pub checkout_timeout: Duration,
    /// Connect plus login to the backend.
    pub connect_timeout: Duration,
    /// Run before a connection serves another client; empty to skip.
    pub reset_query: String,
    /// Clients of this tenant connected at once.
    pub max_client_connections: u32,
    /// Transaction mode: pin or refuse state that cannot follow a client.
    pub session_state: SessionStatePolicy,
    /// Transaction mode: prepared statements kept per backend connection.
    pub prepared_statements_per_connection: u32,
    /// A backend owing replies and silent this long is closed (see [`crate::session::silence`]).
    pub reply_timeout: Option<Duration>,
}

/// One tenant as the proxy routes it.
#[derive(Debug)]
pub struct Tenant {
    /// Routing key.
    pub slug: String,
    /// Whether it takes connections.
    pub status: TenantStatus,
    /// Its backend.
    pub backend: Arc<BackendTarget>,
    /// Its pool.
    pub pool: PoolSettings,
    /// Its logins by name.
    pub users: HashMap<String, StoredPassword>,
}
