//! Servers in the catalog: add, list, remove. A server's role (`backend_user`) is the admin role
//! pgtenant provisions with (it needs CREATEDB and CREATEROLE) and the role the proxy logs in as
//! for tenants registered without a role of their own.

use tokio_postgres::Client;

use super::sql::Login;
use super::{ProvisionError, Result};
use crate::error::Secret;
use crate::pool::backend_tls::BackendTls;
use crate::tenant::validate_slug;

/// A server row.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Catalog name.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin role.
    pub admin_user: String,
    /// Its password.
    pub admin_password: Secret,
    /// Backend connections shared by its tenants; the proxy default when absent.
    pub max_connections: Option<i32>,
    /// Tenants placed on it.
    pub tenants: i64,
    /// How provisioning (and the proxy) secure connections to it.
    pub tls: BackendTls,
}

impl ServerRow {
    /// The admin login for provisioning on this server.
    pub fn admin_login(&self) -> Login {
        Login {
            host: self.host.clone(),
            port: self.port,
            user: self.admin_user.clone(),
            password: self.admin_password.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// What `server add` registers.
#[derive(Debug)]
pub struct NewServer {
    /// Catalog name (the slug charset).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin role.
    pub admin_user: String,
    /// Its password.
    pub admin_password: Secret,
    /// Shared backend connection budget.
    pub max_connections: Option<i32>,
    /// TLS from the proxy: disable, prefer, require, verify-ca or verify-full.
    pub tls_mode: String,
    /// The CA file verify-ca and verify-full check against.
    pub tls_ca_file: Option<String>,
}

/// Registers a server.
pub async fn add(catalog: &Client, s: &NewServer) -> Result<()> {
    validate_slug(&s.name)
        .map_err(|e| ProvisionError::Invalid(e.replace("tenant slug", "server name")))?;
    if s.admin_user.is_empty() {
        return Err(ProvisionError::Invalid(
            "--admin-user must not be empty".into(),
        ));
    }
    if s.max_connections.is_some_and(|n| n <= 0) {
        return Err(ProvisionError::Invalid(
            "--max-connections must be positive".into(),
        ));
    }
    crate::pool::backend_tls::BackendTls::from_settings(
        Some(&s.tls_mode),
        s.tls_ca_file.as_deref(),
        ["--tls-mode", "--tls-ca-file"],
    )
    .map_err(ProvisionError::Invalid)?;
    let inserted = catalog
        .execute(
            "INSERT INTO pgtenant.servers (name, host, port, backend_user, backend_password, max_connections,
                                          tls_mode, tls_ca_file)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
            &[
                &s.name,
                &s.host,
                &i32::from(s.port),
                &s.admin_user,
                &s.admin_password.expose(),
                &s.max_connections,
                &s.tls_mode,
                &s.tls_ca_file,
            ],
        )
        .await
        .map_err(ProvisionError::db("registering the server in the catalog"))?;
    if inserted == 0 {
        return Err(ProvisionError::Exists(format!(
            "server \"{}\" already exists",
            s.name
        )));
    }
    Ok(())
}

/// Every server with its tenant count, by name.
pub async fn list(catalog: &Client) -> Result<Vec<ServerRow>> {
    let rows = catalog
        .query(
            "SELECT s.name, s.host, s.port, s.backend_user, s.backend_password, s.max_connections,
                    (SELECT count(*) FROM pgtenant.tenants t WHERE t.server = s.name),
                    s.tls_mode, s.tls_ca_file
             FROM pgtenant.servers s ORDER BY s.name COLLATE \"C\"",
            &[],
        )
        .await
        .map_err(ProvisionError::db("reading servers from the catalog"))?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let tls = BackendTls::from_settings(
                r.get::<_, Option<&str>>(7),
                r.get::<_, Option<&str>>(8),
                ["tls_mode", "tls_ca_file"],
            )
            .map_err(|e| ProvisionError::Invalid(format!("server \"{name}\": {e}")))?;
            Ok(ServerRow {
                name,
                host: r.get(1),
                port: u16::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                admin_user: r.get(3),
                admin_password: Secret::new(r.get::<_, String>(4)),
                max_connections: r.get(5),
                tenants: r.get(6),
                tls,
            })
        })
        .collect()
}

/// One server by name.
pub async fn get(catalog: &Client, name: &str) -> Result<ServerRow> {
    list(catalog)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ProvisionError::NotFound(format!("server \"{name}\" does not exist")))
}

/// Removes a server that holds no tenant.
pub async fn remove(catalog: &Client, name: &str) -> Result<()> {
    let server = get(catalog, name).await?;
    if server.tenants > 0 {
        return Err(ProvisionError::Refused(format!(
            "server \"{name}\" still holds {} tenant(s); drop or move them first",
            server.tenants
        )));
    }
    catalog
        .execute("DELETE FROM pgtenant.servers WHERE name = $1", &[&name])
        .await
        .map_err(ProvisionError::db("removing the server from the catalog"))?;
    Ok(())
}
