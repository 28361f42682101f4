//! Catalog schema migrations: the numbered files of `catalog_migrations/`, embedded in the
//! binary and applied in order, each version once, in one transaction under an advisory lock so
//! that proxies starting together do not race.

use tokio_postgres::Client;

/// (version, file name, SQL) of every catalog migration, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_catalog.sql",
        include_str!("../../../catalog_migrations/0001_catalog.sql"),
    ),
    (
        2,
        "0002_pool_budgets.sql",
        include_str!("../../../catalog_migrations/0002_pool_budgets.sql"),
    ),
    (
        3,
        "0003_lifecycle.sql",
        include_str!("../../../catalog_migrations/0003_lifecycle.sql"),
    ),
    (
        4,
        "0004_usage.sql",
        include_str!("../../../catalog_migrations/0004_usage.sql"),
    ),
    (
        5,
        "0005_server_tls.sql",
        include_str!("../../../catalog_migrations/0005_server_tls.sql"),
    ),
    (
        6,
        "0006_verify_ca.sql",
        include_str!("../../../catalog_migrations/0006_verify_ca.sql"),
    ),
];

/// Advisory lock key that serialises migration runs ("pgtenant" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7067_7465_6e61_6e74;

/// Applies every migration not yet recorded; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgtenant;
         CREATE TABLE IF NOT EXISTS pgtenant.catalog_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM pgtenant.catalog_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pgtenant.catalog_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}
