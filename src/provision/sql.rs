//! Quoting, naming and connections for provisioning SQL. Every identifier and literal that
//! reaches SQL text goes through [`ident`] or [`literal`]; values go as bind parameters wherever
//! Postgres accepts them (utility statements such as CREATE ROLE do not).

use std::str::FromStr;
use std::time::Duration;

use rand::RngCore;
use tokio_postgres::Client;

use super::{ProvisionError, Result};
use crate::error::Secret;

/// Longest wait for a server to accept a provisioning connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of every role pgtenant makes for a tenant; [`tenant_role`] adds the slug.
pub const ROLE_PREFIX: &str = "pgtenant_t_";

/// The group role every schema-isolation tenant role is a member of: it may connect to the
/// shared database, and nothing more.
pub const SCHEMA_GROUP_ROLE: &str = "pgtenant_schema_tenants";

/// The group role every shared-isolation tenant role is a member of: it carries the privileges
/// on shared tables, while row-level security keys rows on each member's own name.
pub const SHARED_GROUP_ROLE: &str = "pgtenant_shared_tenants";

/// A quoted SQL identifier: `a"b` becomes `"a""b"`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings is on since Postgres 9.1).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The role pgtenant makes for a tenant.
pub fn tenant_role(slug: &str) -> String {
    format!("{ROLE_PREFIX}{slug}")
}

/// A random password for a tenant's backend role: 32 bytes, hex. It lives only in the catalog
/// (and, hashed, on the server).
pub fn random_password() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Where and as whom to connect for provisioning.
#[derive(Debug, Clone)]
pub struct Login {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role.
    pub user: String,
    /// Its password (empty for trust).
    pub password: Secret,
    /// TLS as the server's `tls_mode` and `tls_ca_file` say.
    pub tls: crate::pool::backend_tls::BackendTls,
}

/// Connects to `database` as `login`; the connection is driven by a task of its own.
pub async fn connect(login: &Login, database: &str) -> Result<Client> {
    let mut config = tokio_postgres::Config::from_str("")
        .map_err(|_| ProvisionError::Invalid("connection settings".into()))?;
    config
        .host(&login.host)
        .port(login.port)
        .user(&login.user)
        .dbname(database)
        .application_name("pgtenant-provision")
        .connect_timeout(CONNECT_TIMEOUT);
    if !login.password.expose().is_empty() {
        config.password(login.password.expose());
    }
    let step = format!(
        "connecting to database \"{database}\" on {}:{} as \"{}\"",
        login.host, login.port, login.user
    );
    let (client, connection) = crate::pgclient::connect(&config, &login.tls)
        .await
        .map_err(|e| match e {
            crate::pgclient::ConnectError::Db(e) => ProvisionError::db(step)(e),
            other => ProvisionError::Connect(format!("{step}: {other}")),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "provisioning connection ended");
        }
    });
    Ok(client)
}

/// Runs one statement, naming `step` in the error.
pub async fn exec(client: &Client, step: &str, sql: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(ProvisionError::db(step))
}

/// True when the query returns at least one row.
pub async fn exists(
    client: &Client,
    step: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<bool> {
    let rows = client
        .query(sql, params)
        .await
        .map_err(ProvisionError::db(step))?;
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(ident("acme"), "\"acme\"");
        assert_eq!(
            ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("\\'"), "'\\'''");
    }

    #[test]
    fn random_passwords_differ_and_are_hex() {
        let (a, b) = (random_password(), random_password());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
