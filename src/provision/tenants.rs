//! Tenants: provisioned on a server in one of three isolation modes, registered in the catalog,
//! managed (status, logins) and dropped. Provisioning keeps a list of what it made and undoes
//! it in reverse on any failure, so a failed `create` leaves no role, database, schema or
//! catalog row behind; it never touches an object it did not make.

use tokio_postgres::Client;

use super::migrations::{self, Migration, Place};
use super::servers::{self, ServerRow};
use super::sql::{self, Login, SCHEMA_GROUP_ROLE, SHARED_GROUP_ROLE, ident, literal, tenant_role};
use super::{Isolation, ProvisionError, Result};
use crate::error::Secret;
use crate::tenant::validate_slug;

/// Database the admin role connects to for cluster-wide statements.
const MAINTENANCE_DB: &str = "postgres";

/// SQLSTATE duplicate_database.
const DUPLICATE_DATABASE: &str = "42P04";
/// unique_violation: what the loser of two concurrent CREATE DATABASE of one name gets.
const UNIQUE_VIOLATION: &str = "23505";
/// Serialises the set-up of a shared database between concurrent `tenant create`s.
const SETUP_LOCK_KEY: i64 = 0x7067_745f_7365_7475;

/// What `tenant create` provisions.
#[derive(Debug)]
pub struct NewTenant {
    /// Routing key.
    pub slug: String,
    /// Server name in the catalog.
    pub server: String,
    /// Isolation mode.
    pub isolation: Isolation,
    /// Schema and shared modes: the shared database (a default per mode when absent).
    pub database: Option<String>,
    /// Pool mode override.
    pub pool_mode: Option<String>,
    /// Pool size override.
    pub pool_size: Option<i32>,
    /// Tenant migrations to apply before the tenant goes live.
    pub migrations: Vec<Migration>,
}

/// A tenant as the catalog has it, without secrets.
#[derive(Debug, Clone)]
pub struct TenantRow {
    /// Routing key.
    pub slug: String,
    /// Server name.
    pub server: String,
    /// Database (the slug when absent).
    pub database: Option<String>,
    /// active, paused, disabled or moving.
    pub status: String,
    /// database, schema or shared.
    pub isolation: String,
    /// Backend role, when the tenant has its own.
    pub backend_user: Option<String>,
    /// Schema isolation: the schema.
    pub schema_name: Option<String>,
    /// Pool mode override.
    pub pool_mode: Option<String>,
    /// Pool size override.
    pub pool_size: Option<i32>,
    /// Highest tenant migration applied, as last recorded.
    pub migration_version: Option<i64>,
    /// The file and error that stopped its last migration run.
    pub migration_failure: Option<(String, String)>,
    /// Login names.
    pub users: Vec<String>,
}

impl TenantRow {
    /// The database the tenant's data lives in.
    pub fn database(&self) -> &str {
        self.database.as_deref().unwrap_or(&self.slug)
    }
}

/// Everything about one tenant that lifecycle commands need, secrets included.
struct Provisioned {
    row: TenantRow,
    backend_password: Secret,
}

/// An object provisioning made, to be undone if a later step fails.
#[derive(Debug)]
enum Made {
    /// A role, with the databases where it may hold grants or objects.
    Role {
        name: String,
        databases: Vec<String>,
    },
    Database(String),
    Schema {
        database: String,
        schema: String,
    },
}

/// Provisions a tenant, runs its migrations and registers it as active; on failure undoes
/// everything it made and returns the first error.
pub async fn create(catalog: &Client, new: NewTenant) -> Result<()> {
    validate_slug(&new.slug).map_err(ProvisionError::Invalid)?;
    if let Some(m) = &new.pool_mode
        && !matches!(m.as_str(), "session" | "transaction")
    {
        return Err(ProvisionError::Invalid(format!(
            "--pool-mode must be session or transaction, not \"{m}\""
        )));
    }
    if new.pool_size.is_some_and(|n| n <= 0) {
        return Err(ProvisionError::Invalid(
            "--pool-size must be positive".into(),
        ));
    }
    if let Some(db) = &new.database {
        if new.isolation == Isolation::Database {
            return Err(ProvisionError::Invalid(
                "--database names the shared database of schema and shared tenants; a database tenant's database is its slug".into(),
            ));
        }
        validate_slug(db)
            .map_err(|e| ProvisionError::Invalid(e.replace("tenant slug", "database name")))?;
    }
    if get(catalog, &new.slug).await.is_ok() {
        return Err(ProvisionError::Exists(format!(
            "tenant \"{}\" already exists",
            new.slug
        )));
    }
    let server = servers::get(catalog, &new.server).await?;
    let admin = sql::connect(&server.admin_login(), MAINTENANCE_DB).await?;
    let mut made = Vec::new();
    let result = provision(catalog, &server, &admin, &new, &mut made).await;
    if let Err(e) = &result {
        tracing::warn!(tenant = %new.slug, error = %e, "provisioning failed; undoing");
        if let Err(undo) = undo(&server, &admin, made).await {
            return Err(ProvisionError::Refused(format!(
                "{e}; undoing it failed too, clean up by hand: {undo}"
            )));
        }
    }
    result
}

async fn provision(
    catalog: &Client,
    server: &ServerRow,
    admin: &Client,
    new: &NewTenant,
    made: &mut Vec<Made>,
) -> Result<()> {
    let role = tenant_role(&new.slug);
    let password = sql::random_password();
    let database = match new.isolation.default_shared_database() {
        None => new.slug.clone(),
        Some(default) => new.database.clone().unwrap_or_else(|| default.into()),
    };
    if sql::exists(
        admin,
        "checking for the role",
        "SELECT 1 FROM pg_roles WHERE rolname = $1",
        &[&role],
    )
    .await?
    {
        return Err(ProvisionError::Exists(format!(
            "role \"{role}\" already exists on server \"{}\"; pgtenant will not adopt it",
            server.name
        )));
    }
    sql::exec(
        admin,
        &format!("creating role \"{role}\""),
        &format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
            ident(&role),
            literal(password.expose())
        ),
    )
    .await?;
    made.push(Made::Role {
        name: role.clone(),
        databases: match new.isolation {
            Isolation::Database => Vec::new(),
            _ => vec![database.clone()],
        },
    });
    let schema_name = match new.isolation {
        Isolation::Database => {
            create_database(admin, &database, Some(&role), made).await?;
            None
        }
        Isolation::Schema => {
            ensure_shared_database(server, admin, &database, new.isolation).await?;
            let db = sql::connect(&server.admin_login(), &database).await?;
            join_group(admin, new.isolation, &role).await?;
            if sql::exists(
                &db,
                "checking for the schema",
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&new.slug],
            )
            .await?
            {
                return Err(ProvisionError::Exists(format!(
                    "schema \"{}\" already exists in database \"{database}\"",
                    new.slug
                )));
            }
            sql::exec(
                &db,
                &format!("creating schema \"{}\"", new.slug),
                &format!(
                    "CREATE SCHEMA {} AUTHORIZATION {}",
                    ident(&new.slug),
                    ident(&role)
                ),
            )
            .await?;
            made.push(Made::Schema {
                database: database.clone(),
                schema: new.slug.clone(),
            });
            sql::exec(
                admin,
                "setting the role's search_path",
                &format!(
                    "ALTER ROLE {} IN DATABASE {} SET search_path TO {}",
                    ident(&role),
                    ident(&database),
                    ident(&new.slug)
                ),
            )
            .await?;
            Some(new.slug.clone())
        }
        Isolation::Shared => {
            ensure_shared_database(server, admin, &database, new.isolation).await?;
            join_group(admin, new.isolation, &role).await?;
            None
        }
    };
    let place = Place {
        label: new.slug.clone(),
        tenants: vec![new.slug.clone()],
        database: database.clone(),
        login: match new.isolation {
            // Shared tables belong to the admin role; tenants only get rows in them.
            Isolation::Shared => server.admin_login(),
            _ => Login {
                host: server.host.clone(),
                port: server.port,
                user: role.clone(),
                password: password.clone(),
                tls: server.tls.clone(),
            },
        },
    };
    let outcome = migrations::apply(&place, &new.migrations, false).await;
    if let Some(failure) = outcome.failure {
        return Err(ProvisionError::Refused(format!(
            "tenant migration {} failed: {}",
            failure.file, failure.error
        )));
    }
    register(
        catalog,
        new,
        &database,
        &role,
        &password,
        schema_name,
        outcome.version,
    )
    .await
}

async fn register(
    catalog: &Client,
    new: &NewTenant,
    database: &str,
    role: &str,
    password: &Secret,
    schema_name: Option<String>,
    version: i64,
) -> Result<()> {
    // One statement, so the tenant and its migration summary appear together or not at all.
    catalog
        .execute(
            "WITH t AS (
                 INSERT INTO pgtenant.tenants (slug, server, database, status, isolation,
                     backend_user, backend_password, schema_name, pool_mode, pool_size)
                 VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, $9)
                 RETURNING slug)
             INSERT INTO pgtenant.tenant_migrations (tenant, version) SELECT slug, $10 FROM t",
            &[
                &new.slug,
                &new.server,
                &database,
                &new.isolation.as_str(),
                &role,
                &password.expose(),
                &schema_name,
                &new.pool_mode,
                &new.pool_size,
                &version,
            ],
        )
        .await
        .map_err(ProvisionError::db("registering the tenant in the catalog"))?;
    Ok(())
}

/// CREATE DATABASE (owned by `owner`, else by the admin role), closed to PUBLIC.
async fn create_database(
    admin: &Client,
    database: &str,
    owner: Option<&str>,
    made: &mut Vec<Made>,
) -> Result<()> {
    if sql::exists(
        admin,
        "checking for the database",
        "SELECT 1 FROM pg_database WHERE datname = $1",
        &[&database],
    )
    .await?
    {
        return Err(ProvisionError::Exists(format!(
            "database \"{database}\" already exists; pgtenant will not adopt it"
        )));
    }
    let owner_clause = owner
        .map(|o| format!(" OWNER {}", ident(o)))
        .unwrap_or_default();
    sql::exec(
        admin,
        &format!("creating database \"{database}\""),
        &format!("CREATE DATABASE {}{owner_clause}", ident(database)),
    )
    .await?;
    made.push(Made::Database(database.to_owned()));
    sql::exec(
        admin,
        "closing the database to other roles",
        &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(database)),
    )
    .await
}

/// The database schema or shared tenants share: made on first use, closed to PUBLIC, open to
/// the mode's group role (so adding a tenant adds a membership, not a grant on the database),
/// with the row-level-security helper for shared mode. Safe to run concurrently: the set-up
/// runs in one transaction under an advisory lock.
async fn ensure_shared_database(
    server: &ServerRow,
    admin: &Client,
    database: &str,
    isolation: Isolation,
) -> Result<()> {
    let present = sql::exists(
        admin,
        "checking for the shared database",
        "SELECT 1 FROM pg_database WHERE datname = $1",
        &[&database],
    )
    .await?;
    if !present {
        match admin
            .batch_execute(&format!("CREATE DATABASE {}", ident(database)))
            .await
        {
            // Infrastructure, like the server: it stays for the next tenant even if this one fails.
            Ok(()) => {}
            // Another `tenant create` made it first: share it. Two CREATE DATABASE racing each
            // other meet in pg_database's unique index (23505) rather than in the name check.
            Err(e)
                if matches!(
                    e.code().map(|c| c.code()),
                    Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)
                ) => {}
            Err(e) => {
                return Err(ProvisionError::Db {
                    step: format!("creating shared database \"{database}\""),
                    source: e,
                });
            }
        }
    }
    let group = ident(group_role(isolation));
    let helper = if isolation == Isolation::Shared {
        shared_helper_sql()
    } else {
        String::new()
    };
    let db = sql::connect(&server.admin_login(), database).await?;
    sql::exec(
        &db,
        &format!("preparing shared database \"{database}\""),
        &format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock({SETUP_LOCK_KEY});
             DO $$ BEGIN CREATE ROLE {group} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             REVOKE ALL ON DATABASE {db} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {group};
             REVOKE ALL ON SCHEMA public FROM PUBLIC;
             {helper}
             COMMIT;",
            db = ident(database)
        ),
    )
    .await
}

/// The group role of a mode's shared databases.
fn group_role(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Shared => SHARED_GROUP_ROLE,
        _ => SCHEMA_GROUP_ROLE,
    }
}

/// `pgtenant_share(table)`: makes an application table a shared tenant table. It adds a
/// `tenant` column defaulting to the connecting role, turns on row-level security with a policy
/// that shows and accepts only the session role's rows (session_user, which SET ROLE cannot
/// change), and grants the shared tenants' group the right to use it.
pub fn shared_helper_sql() -> String {
    let group = ident(SHARED_GROUP_ROLE);
    format!(
        r#"GRANT USAGE ON SCHEMA public TO {group};
CREATE OR REPLACE FUNCTION public.pgtenant_share(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
DECLARE
    seq text;
BEGIN
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT session_user', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('DROP POLICY IF EXISTS pgtenant_tenant ON %s', tbl);
    EXECUTE format('CREATE POLICY pgtenant_tenant ON %s USING (tenant = session_user) WITH CHECK (tenant = session_user)', tbl);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO {group}', tbl);
    FOR seq IN
        SELECT pg_get_serial_sequence(tbl::text, attname) FROM pg_attribute
        WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
    LOOP
        IF seq IS NOT NULL THEN
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO {group}', seq);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION public.pgtenant_share(regclass) FROM PUBLIC;"#
    )
}

async fn join_group(admin: &Client, isolation: Isolation, role: &str) -> Result<()> {
    sql::exec(
        admin,
        "adding the role to its mode's group",
        &format!("GRANT {} TO {}", ident(group_role(isolation)), ident(role)),
    )
    .await
}

/// Undoes what provisioning made, newest first.
async fn undo(server: &ServerRow, admin: &Client, made: Vec<Made>) -> Result<()> {
    for m in made.into_iter().rev() {
        match m {
            Made::Schema { database, schema } => {
                let db = sql::connect(&server.admin_login(), &database).await?;
                sql::exec(
                    &db,
                    &format!("dropping schema \"{schema}\""),
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&schema)),
                )
                .await?;
            }
            Made::Database(database) => {
                sql::exec(
                    admin,
                    &format!("dropping database \"{database}\""),
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&database)),
                )
                .await?;
            }
            Made::Role { name, databases } => drop_role(server, admin, &name, &databases).await?,
        }
    }
    Ok(())
}

/// Drops a tenant role after removing what it owns and was granted in `databases` (and, with
/// them, its grants on shared objects such as databases).
async fn drop_role(
    server: &ServerRow,
    admin: &Client,
    role: &str,
    databases: &[String],
) -> Result<()> {
    for database in databases {
        let still_there = sql::exists(
            admin,
            "checking for the database",
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[database],
        )
        .await?;
        if still_there {
            let db = sql::connect(&server.admin_login(), database).await?;
            sql::exec(
                &db,
                &format!("dropping what role \"{role}\" owns"),
                &format!("DROP OWNED BY {}", ident(role)),
            )
            .await?;
        }
    }
    sql::exec(
        admin,
        &format!("terminating sessions of role \"{role}\""),
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}",
            literal(role)
        ),
    )
    .await?;
    sql::exec(
        admin,
        &format!("dropping role \"{role}\""),
        &format!("DROP ROLE IF EXISTS {}", ident(role)),
    )
    .await
}

const TENANT_COLUMNS: &str = "t.slug, t.server, t.database, t.status, t.isolation, t.backend_user,
    t.schema_name, t.pool_mode, t.pool_size, m.version, m.failed_file, m.error,
    ARRAY(SELECT u.name FROM pgtenant.tenant_users u WHERE u.tenant = t.slug ORDER BY u.name),
    t.backend_password";

fn tenant_from_row(r: &tokio_postgres::Row) -> Provisioned {
    let failed_file: Option<String> = r.get(10);
    let error: Option<String> = r.get(11);
    Provisioned {
        row: TenantRow {
            slug: r.get(0),
            server: r.get(1),
            database: r.get(2),
            status: r.get(3),
            isolation: r.get(4),
            backend_user: r.get(5),
            schema_name: r.get(6),
            pool_mode: r.get(7),
            pool_size: r.get(8),
            migration_version: r.get(9),
            migration_failure: failed_file.zip(error),
            users: r.get(12),
        },
        backend_password: Secret::new(r.get::<_, Option<String>>(13).unwrap_or_default()),
    }
}

async fn query_tenants(
    catalog: &Client,
    filter: &str,
    slug: Option<&str>,
) -> Result<Vec<Provisioned>> {
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM pgtenant.tenants t
         LEFT JOIN pgtenant.tenant_migrations m ON m.tenant = t.slug
         {filter} ORDER BY t.slug COLLATE \"C\""
    );
    let rows = match slug {
        Some(s) => catalog.query(&sql, &[&s]).await,
        None => catalog.query(&sql, &[]).await,
    }
    .map_err(ProvisionError::db("reading tenants from the catalog"))?;
    Ok(rows.iter().map(tenant_from_row).collect())
}

async fn get_provisioned(catalog: &Client, slug: &str) -> Result<Provisioned> {
    query_tenants(catalog, "WHERE t.slug = $1", Some(slug))
        .await?
        .pop()
        .ok_or_else(|| ProvisionError::NotFound(format!("tenant \"{slug}\" does not exist")))
}

/// One tenant.
pub async fn get(catalog: &Client, slug: &str) -> Result<TenantRow> {
    Ok(get_provisioned(catalog, slug).await?.row)
}

/// Every tenant, by slug.
pub async fn list(catalog: &Client) -> Result<Vec<TenantRow>> {
    Ok(query_tenants(catalog, "", None)
        .await?
        .into_iter()
        .map(|p| p.row)
        .collect())
}

/// Sets a tenant's status. Proxies apply it within a second: a disabled tenant's new clients
/// are refused and its connected clients are disconnected.
pub async fn set_status(catalog: &Client, slug: &str, status: &str) -> Result<()> {
    let n = catalog
        .execute(
            "UPDATE pgtenant.tenants SET status = $2 WHERE slug = $1",
            &[&slug, &status],
        )
        .await
        .map_err(ProvisionError::db("updating the tenant's status"))?;
    if n == 0 {
        return Err(ProvisionError::NotFound(format!(
            "tenant \"{slug}\" does not exist"
        )));
    }
    Ok(())
}

/// Disables the tenant, removes what provisioning made for it (its database; or its schema; or
/// its rows in shared tables), its role, and its catalog rows. A tenant registered by hand
/// (without a pgtenant role) only loses its catalog rows: pgtenant drops nothing it did not make.
pub async fn drop(catalog: &Client, slug: &str) -> Result<String> {
    let tenant = get_provisioned(catalog, slug).await?;
    set_status(catalog, slug, "disabled").await?;
    let row = &tenant.row;
    let role = tenant_role(slug);
    let provisioned = row.backend_user.as_deref() == Some(role.as_str());
    let mut removed = String::from("catalog rows");
    if provisioned {
        let server = servers::get(catalog, &row.server).await?;
        let admin = sql::connect(&server.admin_login(), MAINTENANCE_DB).await?;
        let database = row.database().to_owned();
        match Isolation::parse(&row.isolation) {
            Some(Isolation::Database) => {
                undo(
                    &server,
                    &admin,
                    vec![
                        Made::Role {
                            name: role.clone(),
                            databases: vec![],
                        },
                        Made::Database(database.clone()),
                    ],
                )
                .await?;
                removed = format!("database \"{database}\", role \"{role}\", catalog rows");
            }
            Some(Isolation::Schema) => {
                let schema = row.schema_name.clone().unwrap_or_else(|| slug.to_owned());
                undo(
                    &server,
                    &admin,
                    vec![
                        Made::Role {
                            name: role.clone(),
                            databases: vec![database.clone()],
                        },
                        Made::Schema {
                            database: database.clone(),
                            schema: schema.clone(),
                        },
                    ],
                )
                .await?;
                removed =
                    format!("schema \"{schema}\" in \"{database}\", role \"{role}\", catalog rows");
            }
            Some(Isolation::Shared) => {
                let rows = delete_shared_rows(&server, &database, &role).await?;
                undo(
                    &server,
                    &admin,
                    vec![Made::Role {
                        name: role.clone(),
                        databases: vec![database.clone()],
                    }],
                )
                .await?;
                removed = format!(
                    "{rows} row(s) in shared tables of \"{database}\", role \"{role}\", catalog rows"
                );
            }
            None => {
                return Err(ProvisionError::Invalid(format!(
                    "tenant \"{slug}\" has unknown isolation \"{}\"",
                    row.isolation
                )));
            }
        }
    }
    catalog
        .execute("DELETE FROM pgtenant.tenants WHERE slug = $1", &[&slug])
        .await
        .map_err(ProvisionError::db("removing the tenant from the catalog"))?;
    Ok(removed)
}

/// Deletes a shared tenant's rows from every table `pgtenant_share` set up.
async fn delete_shared_rows(server: &ServerRow, database: &str, role: &str) -> Result<u64> {
    let db = sql::connect(&server.admin_login(), database).await?;
    let tables = db
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_policies WHERE policyname = 'pgtenant_tenant'",
            &[],
        )
        .await
        .map_err(ProvisionError::db("finding shared tables"))?;
    let mut deleted = 0;
    for t in &tables {
        let table: String = t.get(0);
        deleted += db
            .execute(&format!("DELETE FROM {table} WHERE tenant = $1"), &[&role])
            .await
            .map_err(ProvisionError::db(format!(
                "deleting the tenant's rows from {table}"
            )))?;
    }
    Ok(deleted)
}

/// Adds a login to a tenant, or (with `replace`) changes its password. Only the SCRAM verifier
/// is stored.
pub async fn set_user(
    catalog: &Client,
    slug: &str,
    name: &str,
    password: &Secret,
    replace: bool,
) -> Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(ProvisionError::Invalid(
            "user names must be non-empty text".into(),
        ));
    }
    if password.expose().is_empty() {
        return Err(ProvisionError::Invalid("empty password".into()));
    }
    let exists_ = get(catalog, slug).await?.users.iter().any(|u| u == name);
    match (exists_, replace) {
        (true, false) => {
            return Err(ProvisionError::Exists(format!(
                "tenant \"{slug}\" already has user \"{name}\"; use `tenant user passwd`"
            )));
        }
        (false, true) => {
            return Err(ProvisionError::NotFound(format!(
                "tenant \"{slug}\" has no user \"{name}\""
            )));
        }
        _ => {}
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    catalog
        .execute(
            "INSERT INTO pgtenant.tenant_users (tenant, name, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, name) DO UPDATE SET password_hash = EXCLUDED.password_hash",
            &[&slug, &name, &verifier],
        )
        .await
        .map_err(ProvisionError::db("storing the user in the catalog"))?;
    Ok(())
}

/// Removes a login from a tenant.
pub async fn remove_user(catalog: &Client, slug: &str, name: &str) -> Result<()> {
    let n = catalog
        .execute(
            "DELETE FROM pgtenant.tenant_users WHERE tenant = $1 AND name = $2",
            &[&slug, &name],
        )
        .await
        .map_err(ProvisionError::db("removing the user from the catalog"))?;
    if n == 0 {
        return Err(ProvisionError::NotFound(format!(
            "tenant \"{slug}\" has no user \"{name}\""
        )));
    }
    Ok(())
}

/// The migration places of the chosen tenants (all when `only` is None): each database- or
/// schema-mode tenant is one place, reached as its own role; the shared-mode tenants of one
/// shared database are one place together, reached as the admin role.
pub async fn migration_places(catalog: &Client, only: Option<&str>) -> Result<Vec<Place>> {
    let tenants = match only {
        Some(slug) => vec![get_provisioned(catalog, slug).await?],
        None => query_tenants(catalog, "", None).await?,
    };
    let servers = servers::list(catalog).await?;
    let mut places: Vec<Place> = Vec::new();
    for t in tenants {
        let row = t.row;
        let Some(server) = servers.iter().find(|s| s.name == row.server) else {
            continue;
        };
        let isolation = Isolation::parse(&row.isolation).unwrap_or(Isolation::Database);
        let database = row.database().to_owned();
        if isolation == Isolation::Shared {
            let label = format!("{}/{database}", server.name);
            if let Some(p) = places.iter_mut().find(|p| p.label == label) {
                p.tenants.push(row.slug);
                continue;
            }
            places.push(Place {
                label,
                tenants: vec![row.slug],
                database,
                login: server.admin_login(),
            });
            continue;
        }
        let login = match row.backend_user {
            Some(user) => Login {
                host: server.host.clone(),
                port: server.port,
                user,
                password: t.backend_password,
                tls: server.tls.clone(),
            },
            None => server.admin_login(),
        };
        places.push(Place {
            label: row.slug.clone(),
            tenants: vec![row.slug],
            database,
            login,
        });
    }
    Ok(places)
}
