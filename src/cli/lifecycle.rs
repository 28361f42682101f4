//! `pgtenant server …`, `pgtenant tenant …` and `pgtenant migrate …`: argument parsing and
//! terminal output over [`crate::provision`]. Passwords come from the environment, a prompt or
//! standard input, never from argv, and are never printed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::error::Secret;
use crate::provision::Isolation;
use crate::provision::migrations::{self, Migration, Outcome, Place};
use crate::provision::servers::{self, NewServer};
use crate::provision::tenants::{self, NewTenant};

/// Environment variable holding a server's admin password for `server add`.
pub const SERVER_PASSWORD_ENV: &str = "PGTENANT_SERVER_PASSWORD";

/// `pgtenant server …`.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a server. The admin role's password is read from PGTENANT_SERVER_PASSWORD, else
    /// from a prompt or standard input.
    Add {
        /// Name tenants refer to.
        name: String,
        /// Host name or address.
        #[arg(long)]
        host: String,
        /// Port.
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// Role pgtenant provisions with (CREATEDB and CREATEROLE, or a superuser).
        #[arg(long, default_value = "postgres")]
        admin_user: String,
        /// Backend connections shared by all tenants on it (the proxy default when absent).
        #[arg(long)]
        max_connections: Option<i32>,
        /// How the proxy secures its connections to it: disable, prefer, require, verify-ca,
        /// verify-full.
        #[arg(long, default_value = "prefer")]
        tls_mode: String,
        /// PEM file (on each proxy's host) of the CA that signs its certificate (verify-ca,
        /// verify-full).
        #[arg(long)]
        tls_ca_file: Option<String>,
    },
    /// List servers (without passwords).
    List,
    /// Remove a server that holds no tenant.
    Remove {
        /// Server name.
        name: String,
    },
}

/// `pgtenant tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Provision a tenant, run its migrations, and register it as active.
    Create {
        /// Routing key: 1-48 lowercase letters, digits, '_' or '-', starting with a letter.
        slug: String,
        /// Server to place it on.
        #[arg(long)]
        server: String,
        /// database, schema or shared.
        #[arg(long, default_value = "database")]
        isolation: String,
        /// Schema and shared modes: the shared database (pgtenant_schemas / pgtenant_shared).
        #[arg(long)]
        database: Option<String>,
        /// session or transaction (the proxy default when absent).
        #[arg(long)]
        pool_mode: Option<String>,
        /// Most backend connections for it (the proxy default when absent).
        #[arg(long)]
        pool_size: Option<i32>,
        /// Tenant migrations to apply before it goes live.
        #[arg(long, env = "PGTENANT_MIGRATIONS")]
        migrations: Option<PathBuf>,
    },
    /// List tenants with status, isolation, server and pool settings.
    List,
    /// Show one tenant.
    Show {
        /// Tenant slug.
        slug: String,
    },
    /// Refuse the tenant's new clients and disconnect its connected ones.
    Disable {
        /// Tenant slug.
        slug: String,
    },
    /// Serve the tenant again.
    Enable {
        /// Tenant slug.
        slug: String,
    },
    /// Remove the tenant and the data pgtenant provisioned for it.
    Drop {
        /// Tenant slug.
        slug: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Manage the tenant's logins.
    User {
        /// User subcommand.
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// `pgtenant tenant user …`. Passwords are read from a prompt or standard input.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a login.
    Add {
        /// Tenant slug.
        slug: String,
        /// User name.
        name: String,
    },
    /// Remove a login.
    Remove {
        /// Tenant slug.
        slug: String,
        /// User name.
        name: String,
    },
    /// Change a login's password.
    Passwd {
        /// Tenant slug.
        slug: String,
        /// User name.
        name: String,
    },
}

/// `pgtenant migrate …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    /// `status`.
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// Directory of numbered SQL files (0001_name.sql, …).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only this tenant.
    #[arg(long, conflicts_with = "all")]
    pub tenant: Option<String>,
    /// Every tenant.
    #[arg(long)]
    pub all: bool,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Report what would be applied; apply nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Configuration file holding `[catalog] url` (or set PGTENANT_CATALOG_URL).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

/// `pgtenant migrate status`.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Each tenant's migration version, and whether it is behind the directory's newest file.
    Status {
        /// Directory of numbered SQL files, to tell who is behind.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Connects to the catalog named by `--config` or PGTENANT_CATALOG_URL.
pub async fn catalog_client(config: Option<PathBuf>) -> anyhow::Result<Client> {
    let url = super::catalog_url(config)?;
    crate::tenant::catalog::postgres::connect(&url, None)
        .await
        .context("connecting to the catalog database")
}

/// Runs a `server` subcommand.
pub async fn server(catalog: &Client, command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Add {
            name,
            host,
            port,
            admin_user,
            max_connections,
            tls_mode,
            tls_ca_file,
        } => {
            let admin_password = match std::env::var(SERVER_PASSWORD_ENV) {
                Ok(p) => Secret::new(p),
                Err(_) => read_secret(&format!("password of {admin_user}: "), false)?,
            };
            servers::add(
                catalog,
                &NewServer {
                    name: name.clone(),
                    host,
                    port,
                    admin_user,
                    admin_password,
                    max_connections,
                    tls_mode,
                    tls_ca_file,
                },
            )
            .await?;
            println!("server \"{name}\" added");
        }
        ServerCommand::List => {
            let rows = servers::list(catalog).await?;
            let table: Vec<Vec<String>> = rows
                .into_iter()
                .map(|s| {
                    vec![
                        s.name,
                        s.host,
                        s.port.to_string(),
                        s.admin_user,
                        s.max_connections
                            .map_or("default".into(), |n| n.to_string()),
                        s.tenants.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "name",
                    "host",
                    "port",
                    "admin user",
                    "max connections",
                    "tenants",
                ],
                &table,
            );
        }
        ServerCommand::Remove { name } => {
            servers::remove(catalog, &name).await?;
            println!("server \"{name}\" removed");
        }
    }
    Ok(())
}

/// Runs a `tenant` subcommand.
pub async fn tenant(catalog: &Client, command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create {
            slug,
            server,
            isolation,
            database,
            pool_mode,
            pool_size,
            migrations,
        } => {
            let Some(isolation) = Isolation::parse(&isolation) else {
                bail!("--isolation must be database, schema or shared, not \"{isolation}\"");
            };
            let migrations = match migrations {
                Some(dir) => migrations::load_dir(&dir)?,
                None => Vec::new(),
            };
            let count = migrations.len();
            let started = Instant::now();
            tenants::create(
                catalog,
                NewTenant {
                    slug: slug.clone(),
                    server,
                    isolation,
                    database,
                    pool_mode,
                    pool_size,
                    migrations,
                },
            )
            .await?;
            println!(
                "tenant \"{slug}\" created ({} isolation, {count} migration(s)) in {:.2?}",
                isolation.as_str(),
                started.elapsed()
            );
        }
        TenantCommand::List => {
            let rows = tenants::list(catalog).await?;
            let table: Vec<Vec<String>> = rows
                .into_iter()
                .map(|t| {
                    let database = t.database().to_owned();
                    vec![
                        t.slug,
                        t.status,
                        t.isolation,
                        t.server,
                        t.pool_mode.unwrap_or_else(|| "default".into()),
                        t.pool_size.map_or("default".into(), |n| n.to_string()),
                        t.migration_version.map_or("-".into(), |v| v.to_string()),
                        database,
                    ]
                })
                .collect();
            print_table(
                &[
                    "slug",
                    "status",
                    "isolation",
                    "server",
                    "pool mode",
                    "pool size",
                    "migration",
                    "database",
                ],
                &table,
            );
        }
        TenantCommand::Show { slug } => {
            let t = tenants::get(catalog, &slug).await?;
            let mut lines = vec![
                ("slug", t.slug.clone()),
                ("status", t.status.clone()),
                ("isolation", t.isolation.clone()),
                ("server", t.server.clone()),
                ("database", t.database().to_owned()),
            ];
            if let Some(s) = &t.schema_name {
                lines.push(("schema", s.clone()));
            }
            lines.push((
                "backend role",
                t.backend_user
                    .clone()
                    .unwrap_or_else(|| "the server's".into()),
            ));
            lines.push((
                "pool mode",
                t.pool_mode.clone().unwrap_or_else(|| "default".into()),
            ));
            lines.push((
                "pool size",
                t.pool_size.map_or("default".into(), |n| n.to_string()),
            ));
            lines.push((
                "migration",
                t.migration_version.map_or("-".into(), |v| v.to_string()),
            ));
            if let Some((file, error)) = &t.migration_failure {
                lines.push(("migration failed", format!("{file}: {error}")));
            }
            lines.push(("users", t.users.join(", ")));
            for (k, v) in lines {
                println!("{k:>16}: {v}");
            }
        }
        TenantCommand::Disable { slug } => {
            tenants::set_status(catalog, &slug, "disabled").await?;
            println!("tenant \"{slug}\" disabled");
        }
        TenantCommand::Enable { slug } => {
            tenants::set_status(catalog, &slug, "active").await?;
            println!("tenant \"{slug}\" enabled");
        }
        TenantCommand::Drop { slug, yes } => {
            if !yes {
                confirm_drop(&slug)?;
            }
            let removed = tenants::drop(catalog, &slug).await?;
            println!("tenant \"{slug}\" dropped: removed {removed}");
        }
        TenantCommand::User { command } => match command {
            UserCommand::Add { slug, name } => {
                let password = read_secret(&format!("password for {name}: "), true)?;
                tenants::set_user(catalog, &slug, &name, &password, false).await?;
                println!("user \"{name}\" added to tenant \"{slug}\"");
            }
            UserCommand::Passwd { slug, name } => {
                let password = read_secret(&format!("new password for {name}: "), true)?;
                tenants::set_user(catalog, &slug, &name, &password, true).await?;
                println!("password of user \"{name}\" of tenant \"{slug}\" changed");
            }
            UserCommand::Remove { slug, name } => {
                tenants::remove_user(catalog, &slug, &name).await?;
                println!("user \"{name}\" removed from tenant \"{slug}\"");
            }
        },
    }
    Ok(())
}

/// Runs `migrate` or `migrate status`.
pub async fn migrate(catalog: &Client, args: MigrateArgs) -> anyhow::Result<()> {
    if let Some(MigrateCommand::Status { dir }) = args.command {
        return status(catalog, dir).await;
    }
    let Some(dir) = args.dir else {
        bail!("give --dir DIR with the numbered SQL files");
    };
    if args.tenant.is_none() && !args.all {
        bail!("give --tenant SLUG or --all");
    }
    let files = migrations::load_dir(&dir)?;
    let places = tenants::migration_places(catalog, args.tenant.as_deref()).await?;
    let jobs = args.jobs.clamp(1, 64);
    let started = Instant::now();
    let progress = Progress::new(places.len() as u64);
    let files = &files;
    let dry_run = args.dry_run;
    let mut results = futures_util::stream::iter(places)
        .map(|place| async move {
            let outcome = migrations::apply(&place, files, dry_run).await;
            (place, outcome)
        })
        .buffer_unordered(jobs);
    let mut failed: Vec<(Place, Outcome)> = Vec::new();
    let (mut changed, mut current) = (0usize, 0usize);
    while let Some((place, outcome)) = results.next().await {
        if !dry_run {
            migrations::record(catalog, &place, &outcome).await?;
        }
        progress.done(&report_line(&place, &outcome, files, dry_run));
        match (&outcome.failure, outcome.applied.is_empty()) {
            (Some(_), _) => failed.push((place, outcome)),
            (None, true) => current += 1,
            (None, false) => changed += 1,
        }
    }
    progress.finish();
    let verb = if dry_run { "would migrate" } else { "migrated" };
    println!(
        "{verb} {changed} tenant place(s), {current} already current, {} failed, in {:.2?}",
        failed.len(),
        started.elapsed()
    );
    for (place, outcome) in &failed {
        if let Some(f) = &outcome.failure {
            println!("FAILED {}: {}: {}", place.label, f.file, f.error);
        }
    }
    if !failed.is_empty() {
        bail!("{} tenant place(s) failed", failed.len());
    }
    Ok(())
}

fn report_line(place: &Place, outcome: &Outcome, files: &[Migration], dry_run: bool) -> String {
    let names: Vec<&str> = outcome
        .applied
        .iter()
        .filter_map(|v| {
            files
                .iter()
                .find(|m| m.version == *v)
                .map(|m| m.name.as_str())
        })
        .collect();
    match (&outcome.failure, dry_run) {
        (Some(f), _) => format!("{}: failed at {}: {}", place.label, f.file, f.error),
        (None, _) if names.is_empty() => {
            format!("{}: up to date (version {})", place.label, outcome.version)
        }
        (None, true) => format!("{}: would apply {}", place.label, names.join(", ")),
        (None, false) => format!(
            "{}: applied {} (version {})",
            place.label,
            names.join(", "),
            outcome.version
        ),
    }
}

async fn status(catalog: &Client, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let latest = match dir {
        Some(d) => migrations::load_dir(&d)?.last().map(|m| m.version),
        None => None,
    };
    let rows = tenants::list(catalog).await?;
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|t| {
            let version = t.migration_version.unwrap_or(0);
            let state = match (&t.migration_failure, latest) {
                (Some((file, _)), _) => format!("failed at {file}"),
                (None, Some(l)) if version < l => format!("behind (latest {l})"),
                (None, Some(_)) => "up to date".into(),
                (None, None) => "-".into(),
            };
            vec![t.slug, t.isolation, version.to_string(), state]
        })
        .collect();
    print_table(&["tenant", "isolation", "version", "state"], &table);
    Ok(())
}

/// Tenants done out of total: a bar on a terminal, a log line each otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tenants  {elapsed_precise}  {msg}",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    fn done(&self, line: &str) {
        match &self.0 {
            Some(bar) => {
                bar.set_message(line.to_owned());
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Prints rows under a header, columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A password from a prompt (twice, when `confirm`) on a terminal, else the first line of
/// standard input.
fn read_secret(prompt: &str, confirm: bool) -> anyhow::Result<Secret> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt).context("reading the password")?;
        if confirm {
            let again = rpassword::prompt_password("again: ").context("reading the password")?;
            if again != first {
                bail!("the passwords differ");
            }
        }
        return Ok(Secret::new(first));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(Secret::new(line.trim_end_matches(['\r', '\n'])))
}

fn confirm_drop(slug: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("dropping tenant \"{slug}\" deletes its data; confirm with --yes");
    }
    print!("This deletes tenant \"{slug}\" and its data. Type the slug to confirm: ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != slug {
        bail!("not confirmed; nothing dropped");
    }
    Ok(())
}
