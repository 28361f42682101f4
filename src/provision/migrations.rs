//! Tenant migrations: numbered SQL files (`0001_orders.sql`, `0002_…`) applied in order to each
//! tenant's place — its database, its schema (reached as its own role, whose search_path is that
//! schema), or the shared database of shared-mode tenants — each file in its own transaction,
//! recorded in a `pgtenant_migrations` table there so that nothing is applied twice.

use std::path::Path;

use tokio_postgres::Client;

use super::sql::{self, Login};
use super::{ProvisionError, Result};

/// Serialises migration runs on one place: two `pgtenant migrate` at once take turns.
const LOCK_KEY: i64 = 0x7067_745f_6d69_6772;

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number its name starts with.
    pub version: i64,
    /// The file name.
    pub name: String,
    /// Its SQL.
    pub sql: String,
}

/// Reads `dir`'s `NNNN_name.sql` files in version order. Other files are ignored; two files
/// with one version are an error.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ProvisionError::Io(format!("cannot read {}: {e}", dir.display())))?;
    let mut out: Vec<Migration> = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| ProvisionError::Io(format!("cannot read {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = parse_version(&name) else {
            continue;
        };
        let sql = std::fs::read_to_string(entry.path())
            .map_err(|e| ProvisionError::Io(format!("cannot read {name}: {e}")))?;
        if let Some(other) = out.iter().find(|m| m.version == version) {
            return Err(ProvisionError::Invalid(format!(
                "{name} and {} share version {version}",
                other.name
            )));
        }
        out.push(Migration { version, name, sql });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// `0012_add_orders.sql` → 12.
fn parse_version(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".sql")?.split('_').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v > 0)
}

/// Where migrations run and whom they count for.
#[derive(Debug, Clone)]
pub struct Place {
    /// What to call it in reports: the slug, or `server/database` for shared tenants.
    pub label: String,
    /// Tenants whose version this place holds.
    pub tenants: Vec<String>,
    /// Database to connect to.
    pub database: String,
    /// Role to connect as.
    pub login: Login,
}

/// How migrating one place went.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Highest version now applied there.
    pub version: i64,
    /// Versions applied (or, in a dry run, to be applied) by this run.
    pub applied: Vec<i64>,
    /// What stopped it.
    pub failure: Option<Failure>,
}

/// The file and error that stopped a place's migrations.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The file ("-" when it failed before any file).
    pub file: String,
    /// The error, with its SQLSTATE when the server sent one.
    pub error: String,
}

/// Applies the migrations `place` lacks, in order, each in its own transaction; stops at the
/// first failure. A dry run only reports what it would apply.
pub async fn apply(place: &Place, migrations: &[Migration], dry_run: bool) -> Outcome {
    let mut outcome = Outcome::default();
    let client = match sql::connect(&place.login, &place.database).await {
        Ok(c) => c,
        Err(e) => {
            outcome.failure = Some(Failure {
                file: "-".into(),
                error: e.to_string(),
            });
            return outcome;
        }
    };
    if let Err(e) = run(&client, migrations, dry_run, &mut outcome).await {
        outcome.failure = Some(e);
    }
    outcome
}

async fn run(
    client: &Client,
    migrations: &[Migration],
    dry_run: bool,
    outcome: &mut Outcome,
) -> std::result::Result<(), Failure> {
    let setup = |e: tokio_postgres::Error| Failure {
        file: "-".into(),
        error: db_error_text(&e),
    };
    let done: Vec<i64> = if dry_run {
        // A dry run writes nothing, not even the bookkeeping table.
        client
            .query("SELECT version FROM pgtenant_migrations", &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    } else {
        client
            .batch_execute(&format!(
                "SET lock_timeout = '60s';
                 SELECT pg_advisory_lock({LOCK_KEY});
                 RESET lock_timeout;
                 CREATE TABLE IF NOT EXISTS pgtenant_migrations (
                     version    bigint PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(setup)?;
        client
            .query("SELECT version FROM pgtenant_migrations", &[])
            .await
            .map_err(setup)?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    outcome.version = done.iter().copied().max().unwrap_or(0);
    for m in migrations.iter().filter(|m| !done.contains(&m.version)) {
        if !dry_run {
            apply_one(client, m).await.map_err(|e| Failure {
                file: m.name.clone(),
                error: db_error_text(&e),
            })?;
            outcome.version = outcome.version.max(m.version);
        }
        outcome.applied.push(m.version);
    }
    Ok(())
}

async fn apply_one(
    client: &Client,
    m: &Migration,
) -> std::result::Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        client.batch_execute(&m.sql).await?;
        client
            .execute(
                "INSERT INTO pgtenant_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// A database error as "SQLSTATE: message", or the client library's text.
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Records each tenant's outcome in the catalog summary.
pub async fn record(catalog: &Client, place: &Place, outcome: &Outcome) -> Result<()> {
    let (file, error) = match &outcome.failure {
        Some(f) => (Some(f.file.clone()), Some(f.error.clone())),
        None => (None, None),
    };
    for tenant in &place.tenants {
        catalog
            .execute(
                "INSERT INTO pgtenant.tenant_migrations (tenant, version, failed_file, error, updated_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (tenant) DO UPDATE SET version = EXCLUDED.version,
                     failed_file = EXCLUDED.failed_file, error = EXCLUDED.error, updated_at = now()",
                &[tenant, &outcome.version, &file, &error],
            )
            .await
            .map_err(ProvisionError::db("recording the migration summary in the catalog"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_leading_number() {
        for (name, want) in [
            ("0001_orders.sql", Some(1)),
            ("12_x.sql", Some(12)),
            ("0003.sql", Some(3)),
            ("0000_zero.sql", None),
            ("readme.md", None),
            ("v1_orders.sql", None),
            ("0001_orders.sql.bak", None),
        ] {
            assert_eq!(parse_version(name), want, "{name}");
        }
    }

    #[test]
    fn loading_sorts_and_refuses_duplicate_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("0002_b.sql"), "SELECT 2").expect("write");
        std::fs::write(dir.path().join("0001_a.sql"), "SELECT 1").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let loaded = load_dir(dir.path()).expect("loads");
        let names: Vec<&str> = loaded.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["0001_a.sql", "0002_b.sql"]);
        std::fs::write(dir.path().join("2_again.sql"), "SELECT 2").expect("write");
        assert!(matches!(
            load_dir(dir.path()),
            Err(ProvisionError::Invalid(_))
        ));
    }
}
