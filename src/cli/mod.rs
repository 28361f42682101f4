//! The command line: `serve`, `quickstart`, `catalog migrate`, `hash-password`, and the tenant
//! lifecycle (`server`, `tenant`, `migrate`, in [`lifecycle`]). Secrets are read from the
//! environment, a config file, a prompt or standard input, never from argv.

pub mod lifecycle;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::error::Secret;
use crate::tenant::catalog;

/// pgtenant: a tenant-routing Postgres proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Start a throwaway local Postgres with two demo tenants and the proxy in front of it.
    Quickstart {
        /// Port the proxy listens on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Manage the catalog database.
    Catalog {
        /// Catalog subcommand.
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Servers tenants live on.
    Server {
        /// Server subcommand.
        #[command(subcommand)]
        command: lifecycle::ServerCommand,
        /// Configuration file holding `[catalog] url` (or set PGTENANT_CATALOG_URL).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Provision, list, manage and drop tenants.
    Tenant {
        /// Tenant subcommand.
        #[command(subcommand)]
        command: lifecycle::TenantCommand,
        /// Configuration file holding `[catalog] url` (or set PGTENANT_CATALOG_URL).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Apply numbered SQL files to tenants (`migrate --dir DIR --all`), or show where each
    /// tenant stands (`migrate status`).
    Migrate(lifecycle::MigrateArgs),
    /// Read a password on standard input and print the hash to store for a tenant user.
    HashPassword {
        /// Print an md5 hash (needs the user name) instead of a SCRAM-SHA-256 verifier.
        #[arg(long, value_name = "USER")]
        md5_for_user: Option<String>,
    },
}

/// Catalog subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Create or upgrade the catalog schema (idempotent). The URL comes from `[catalog] url` in
    /// the config file, or from PGTENANT_CATALOG_URL.
    Migrate {
        /// Configuration file holding `[catalog] url`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its config before the runtime exists: the config sizes the runtime.
    let (cli, workers) = match cli.command {
        Command::Serve { config } => match Config::load(&config) {
            Ok(loaded) => {
                crate::logging::init(loaded.proxy.log_format);
                let workers = loaded.proxy.worker_threads;
                (
                    Cli {
                        command: Command::Serve { config },
                    },
                    Some((loaded, workers)),
                )
            }
            Err(e) => {
                eprintln!("pgtenant: {e}");
                return ExitCode::FAILURE;
            }
        },
        command => {
            crate::logging::init(LogFormat::Text);
            (Cli { command }, None)
        }
    };
    let threads = workers.as_ref().map_or(1, |(_, w)| *w);
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgtenant: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = workers.map(|(c, _)| c);
    let result = runtime.block_on(run(cli, loaded));
    // Tasks dropped with the runtime may still log; then the held lines go out.
    drop(runtime);
    crate::logging::batch::stop();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, loaded: Option<Config>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config: path } => match loaded {
            Some(c) => serve(c, path).await,
            None => serve(Config::load(&path)?, path).await,
        },
        Command::Quickstart { port } => crate::quickstart::run(port).await,
        Command::Catalog {
            command: CatalogCommand::Migrate { config },
        } => {
            let url = catalog_url(config)?;
            let applied = migrate_catalog(&url).await?;
            println!("catalog migrated: applied versions {applied:?}");
            Ok(())
        }
        Command::Server { command, config } => {
            let catalog = lifecycle::catalog_client(config).await?;
            lifecycle::server(&catalog, command).await
        }
        Command::Tenant { command, config } => {
            let catalog = lifecycle::catalog_client(config).await?;
            lifecycle::tenant(&catalog, command).await
        }
        Command::Migrate(args) => {
            let catalog = lifecycle::catalog_client(args.config.clone()).await?;
            lifecycle::migrate(&catalog, args).await
        }
        Command::HashPassword { md5_for_user } => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("empty password on standard input");
            }
            match md5_for_user {
                Some(user) => println!(
                    "{}",
                    postgres_protocol::password::md5(password.as_bytes(), &user)
                ),
                None => println!(
                    "{}",
                    postgres_protocol::password::scram_sha_256(password.as_bytes())
                ),
            }
            Ok(())
        }
    }
}

pub(crate) fn catalog_url(config: Option<PathBuf>) -> anyhow::Result<Secret> {
    if let Some(path) = config {
        let config = Config::load(&path)?;
        return config
            .catalog
            .map(|c| c.url)
            .with_context(|| format!("{} has no [catalog] url", path.display()));
    }
    std::env::var("PGTENANT_CATALOG_URL")
        .map(Secret::new)
        .context("give --config FILE with a [catalog] url, or set PGTENANT_CATALOG_URL")
}

/// Applies the catalog migrations at `url`; returns the versions applied now.
pub async fn migrate_catalog(url: &Secret) -> anyhow::Result<Vec<i32>> {
    let mut client = catalog::postgres::connect(url, None)
        .await
        .context("connecting to the catalog database")?;
    catalog::migrate::migrate(&mut client)
        .await
        .context("applying catalog migrations")
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    if let Some(c) = &config.catalog
        && c.migrate_on_start
    {
        let applied = migrate_catalog(&c.url).await?;
        tracing::info!(?applied, "catalog migrated");
    }
    let log_flush = Duration::from_millis(config.proxy.log_flush_ms);
    let proxy = crate::server::start(config)
        .await
        .context("starting listeners")?;
    crate::logging::batch::start(log_flush);
    proxy.shared.set_config_path(path);
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = wait_for_signal() => break,
            _ = proxy.shutdown_requested() => break,
            Some(()) = hangup.recv() => {
                if let Err(e) = crate::reload::reload(&proxy.shared) {
                    tracing::error!(error = %e, "reload refused");
                }
            }
        }
    }
    proxy.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
