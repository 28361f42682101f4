//! `pgtenant quickstart`: a throwaway local Postgres holding a catalog and two demo tenants
//! (`acme`, `globex`), the proxy in front of it, and the URLs to try. Ctrl-C stops it all.

use anyhow::Context;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::config::{CatalogConfig, Config, ListenerConfig};
use crate::error::Secret;
use crate::localpg::{ClusterOptions, LocalCluster};
use crate::tenant::catalog;

/// Prints a line, ignoring a closed stdout (a reader that went away must not stop the cleanup).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Password of the demo tenants' `app` user.
pub const DEMO_PASSWORD: &str = "quickstart";

/// The demo tenants and a line of data each.
const DEMO_TENANTS: &[(&str, &str)] = &[
    ("acme", "Acme Corp's first note"),
    ("globex", "Globex Corp's first note"),
];

fn random_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Runs the quick start until SIGINT/SIGTERM.
pub async fn run(port: u16) -> anyhow::Result<()> {
    say!("Starting a throwaway PostgreSQL cluster…");
    let opts = ClusterOptions {
        superuser_password: random_password(),
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts)).await??;
    let backend_password = random_password();
    setup(&cluster, &backend_password)
        .await
        .context("creating the demo catalog and tenants")?;
    let config = Config {
        listeners: vec![ListenerConfig::plain(([127, 0, 0, 1], port).into())],
        catalog: Some(CatalogConfig {
            url: Secret::new(cluster.superuser_url("pgtenant_catalog")),
            migrate_on_start: false,
            reload_interval_ms: 30_000,
            usage_interval_ms: 60_000,
        }),
        ..Config::from_toml("")?
    };
    let proxy = crate::server::start(config)
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    // Wait for the first catalog load so the URLs below work at once.
    let mut updates = proxy.shared.catalog.subscribe();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        updates.wait_for(|s| !s.is_empty()),
    )
    .await;
    say!();
    say!(
        "pgtenant is listening on 127.0.0.1:{port}, with tenants acme and globex (user app, password {DEMO_PASSWORD}):"
    );
    say!();
    for (slug, _) in DEMO_TENANTS {
        say!(
            "  psql \"postgresql://app:{DEMO_PASSWORD}@127.0.0.1:{port}/{slug}\" -c 'SELECT * FROM notes'"
        );
    }
    say!(
        "  psql \"postgresql://app.globex:{DEMO_PASSWORD}@127.0.0.1:{port}/\"   # tenant as a user suffix"
    );
    say!();
    say!("The catalog (change tenants live with SQL):");
    say!(
        "  psql \"{}\" -c 'TABLE pgtenant.tenants'",
        cluster.superuser_url("pgtenant_catalog")
    );
    say!();
    say!("Press Ctrl-C to stop and delete everything.");
    crate::cli::wait_for_signal().await;
    say!("Stopping…");
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

async fn setup(cluster: &LocalCluster, backend_password: &str) -> anyhow::Result<()> {
    let admin =
        catalog::postgres::connect(&Secret::new(cluster.superuser_url("postgres")), None).await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE pgtenant_backend LOGIN PASSWORD '{backend_password}'"
        ))
        .await?;
    admin
        .batch_execute("CREATE DATABASE pgtenant_catalog")
        .await?;
    for (slug, note) in DEMO_TENANTS {
        admin
            .batch_execute(&format!("CREATE DATABASE {slug} OWNER pgtenant_backend"))
            .await?;
        let db =
            catalog::postgres::connect(&Secret::new(cluster.superuser_url(slug)), None).await?;
        db.batch_execute("SET ROLE pgtenant_backend; CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
            .await?;
        db.execute("INSERT INTO notes (body) VALUES ($1)", &[note])
            .await?;
    }
    let mut cat = catalog::postgres::connect(
        &Secret::new(cluster.superuser_url("pgtenant_catalog")),
        None,
    )
    .await?;
    catalog::migrate::migrate(&mut cat).await?;
    cat.execute(
        "INSERT INTO pgtenant.servers (name, host, port, backend_user, backend_password)
         VALUES ('local', '127.0.0.1', $1, 'pgtenant_backend', $2)",
        &[&i32::from(cluster.port), &backend_password],
    )
    .await?;
    let verifier = postgres_protocol::password::scram_sha_256(DEMO_PASSWORD.as_bytes());
    for (slug, _) in DEMO_TENANTS {
        cat.execute(
            "INSERT INTO pgtenant.tenants (slug, server) VALUES ($1, 'local')",
            &[slug],
        )
        .await?;
        cat.execute(
            "INSERT INTO pgtenant.tenant_users (tenant, name, password_hash) VALUES ($1, 'app', $2)",
            &[slug, &verifier],
        )
        .await?;
    }
    Ok(())
}
