//! The console's commands. Each reads the proxy's live state (snapshot, pools, budgets, client
//! registry) and answers with a text result set; none touches a backend.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::BytesMut;

use super::result;
use crate::config::PoolMode;
use crate::error::{ClientError, sqlstate};
use crate::protocol::messages;
use crate::server::Shared;
use crate::tenant::TenantStatus;

/// What the console knows, for the error that answers anything else.
const KNOWN: &str = "SHOW TENANTS, SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG, SHOW VERSION, PAUSE [tenant], RESUME [tenant], KILL tenant, DISABLE tenant, ENABLE tenant, RELOAD, SHUTDOWN";

/// How often PAUSE looks whether the running transactions have finished.
const PAUSE_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs every `;`-separated command of a simple query, writing each answer; returns true when
/// one was SHUTDOWN. An error ends the query, as in Postgres.
pub async fn run(shared: &Shared, text: &str, out: &mut BytesMut) -> bool {
    let commands: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        messages::write_message(out, b'I', |_| {});
        return false;
    }
    for command in commands {
        match one(shared, command, out).await {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Shutdown) => return true,
            Err(e) => {
                messages::error_response(out, &e);
                return false;
            }
        }
    }
    false
}

enum Outcome {
    Done,
    Shutdown,
}

/// A SHOW command's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// SHOW TENANTS.
    Tenants,
    /// SHOW POOLS.
    Pools,
    /// SHOW CLIENTS.
    Clients,
    /// SHOW SERVERS.
    Servers,
    /// SHOW CONFIG.
    Config,
    /// SHOW STATS.
    Stats,
    /// SHOW VERSION.
    Version,
}

/// One console command as typed (keywords in any case; a tenant name as given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// SHOW ….
    Show(Show),
    /// PAUSE [tenant].
    Pause(Option<&'a str>),
    /// RESUME [tenant].
    Resume(Option<&'a str>),
    /// KILL tenant.
    Kill(&'a str),
    /// RELOAD.
    Reload,
    /// DISABLE tenant.
    Disable(&'a str),
    /// ENABLE tenant.
    Enable(&'a str),
    /// SHUTDOWN.
    Shutdown,
}

/// Reads one command; an unknown one is a syntax error whose hint lists the known ones.
pub fn parse(command: &str) -> Result<Command<'_>, ClientError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let show = |what| Ok(Command::Show(what));
    match (upper.as_slice(), words.get(1).copied()) {
        (["SHOW", "TENANTS"], _) => show(Show::Tenants),
        (["SHOW", "POOLS"], _) => show(Show::Pools),
        (["SHOW", "CLIENTS"], _) => show(Show::Clients),
        (["SHOW", "SERVERS"], _) => show(Show::Servers),
        (["SHOW", "CONFIG"], _) => show(Show::Config),
        (["SHOW", "STATS"], _) => show(Show::Stats),
        (["SHOW", "VERSION"], _) => show(Show::Version),
        (["PAUSE"], _) => Ok(Command::Pause(None)),
        (["PAUSE", _], tenant) => Ok(Command::Pause(tenant)),
        (["RESUME"], _) => Ok(Command::Resume(None)),
        (["RESUME", _], tenant) => Ok(Command::Resume(tenant)),
        (["KILL", _], Some(tenant)) => Ok(Command::Kill(tenant)),
        (["RELOAD"], _) => Ok(Command::Reload),
        (["DISABLE", _], Some(tenant)) => Ok(Command::Disable(tenant)),
        (["ENABLE", _], Some(tenant)) => Ok(Command::Enable(tenant)),
        (["SHUTDOWN"], _) => Ok(Command::Shutdown),
        _ => {
            let mut e = ClientError::error(
                sqlstate::SYNTAX_ERROR,
                format!("unknown admin command \"{command}\""),
            );
            e.hint = Some(format!("The console knows: {KNOWN}."));
            Err(e)
        }
    }
}

async fn one(shared: &Shared, command: &str, out: &mut BytesMut) -> Result<Outcome, ClientError> {
    match parse(command)? {
        Command::Show(Show::Tenants) => show_tenants(shared, out),
        Command::Show(Show::Pools) => show_pools(shared, out),
        Command::Show(Show::Clients) => show_clients(shared, out),
        Command::Show(Show::Servers) => show_servers(shared, out),
        Command::Show(Show::Config) => show_config(shared, out),
        Command::Show(Show::Stats) => show_stats(shared, out),
        Command::Show(Show::Version) => result::write(
            out,
            &["version"],
            &[vec![format!("pgtenant {}", env!("CARGO_PKG_VERSION"))]],
            "SHOW",
        ),
        Command::Pause(None) => pause(shared, None, out).await?,
        Command::Pause(Some(tenant)) => {
            pause(shared, Some(known_tenant(shared, tenant)?), out).await?
        }
        Command::Resume(None) => {
            shared.pools.resume(None);
            tracing::info!("admin resumed every tenant");
            result::complete(out, "RESUME");
        }
        Command::Resume(Some(tenant)) => {
            let tenant = known_tenant(shared, tenant)?;
            shared.pools.resume(Some(tenant));
            tracing::info!(tenant, "admin resumed the tenant");
            result::complete(out, "RESUME");
        }
        Command::Kill(tenant) => {
            let tenant = known_tenant(shared, tenant)?;
            let n = shared
                .pools
                .kick_tenant(tenant, &ClientError::killed_by_admin(tenant));
            tracing::info!(tenant, clients = n, "admin killed the tenant's clients");
            result::complete(out, "KILL");
        }
        Command::Reload => match crate::reload::reload(shared) {
            Ok(report) => {
                let rows: Vec<Vec<String>> = report
                    .applied
                    .into_iter()
                    .map(|(k, v)| vec![k, v, "applied".into()])
                    .chain(
                        report
                            .needs_restart
                            .into_iter()
                            .map(|(k, v)| vec![k, v, "needs restart".into()]),
                    )
                    .collect();
                result::write(out, &["key", "value", "status"], &rows, "RELOAD");
            }
            Err(e) => {
                return Err(ClientError::error(
                    sqlstate::CONFIG_FILE_ERROR,
                    e.to_string(),
                ));
            }
        },
        Command::Disable(tenant) => {
            set_status(shared, tenant, "disabled").await?;
            result::complete(out, "DISABLE");
        }
        Command::Enable(tenant) => {
            set_status(shared, tenant, "active").await?;
            result::complete(out, "ENABLE");
        }
        Command::Shutdown => {
            tracing::info!("admin asked for shutdown");
            result::complete(out, "SHUTDOWN");
            return Ok(Outcome::Shutdown);
        }
    }
    Ok(Outcome::Done)
}

fn known_tenant<'w>(shared: &Shared, tenant: &'w str) -> Result<&'w str, ClientError> {
    if shared.catalog.snapshot().tenant(tenant).is_none() {
        return Err(ClientError::error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("tenant \"{tenant}\" does not exist"),
        ));
    }
    Ok(tenant)
}

/// PAUSE holds new transactions of the tenant (of all, without one) and answers once the
/// running ones have finished, as pgbouncer's does. If they outlast the pause timeout it
/// fails with 57014, and the pause stays in force until RESUME.
async fn pause(
    shared: &Shared,
    tenant: Option<&str>,
    out: &mut BytesMut,
) -> Result<(), ClientError> {
    shared.pools.pause(tenant);
    tracing::info!(
        tenant = tenant.unwrap_or("(all)"),
        "admin paused new transactions"
    );
    let limit = std::time::Duration::from_millis(shared.config().proxy.pause_timeout_ms);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let running = shared.pools.busy_clients(tenant);
        if running == 0 {
            result::complete(out, "PAUSE");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut e = ClientError::error(
                sqlstate::QUERY_CANCELED,
                format!(
                    "PAUSE gave up after {} ms: {running} transaction(s) still running",
                    limit.as_millis()
                ),
            );
            e.hint = Some("New transactions stay held; RESUME lets them go.".into());
            return Err(e);
        }
        tokio::time::sleep(PAUSE_TICK).await;
    }
}

/// DISABLE/ENABLE write the catalog, the source of truth, so every proxy following it applies
/// the change (this one within its LISTEN round trip: a disabled tenant's clients are closed).
async fn set_status(shared: &Shared, tenant: &str, status: &str) -> Result<(), ClientError> {
    let config = shared.config();
    let Some(catalog) = &config.catalog else {
        return Err(ClientError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "tenants of the config file change in the file: set status there and RELOAD",
        ));
    };
    let failed = |e: String| {
        tracing::warn!(error = %e, "console could not update the catalog");
        ClientError::error(
            sqlstate::CONNECTION_FAILURE,
            "the catalog database could not be updated (see the proxy's log)",
        )
    };
    let client = crate::tenant::catalog::postgres::connect(&catalog.url, None)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let n = client
        .execute(
            "UPDATE pgtenant.tenants SET status = $2 WHERE slug = $1",
            &[&tenant, &status],
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    if n == 0 {
        return Err(ClientError::error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("tenant \"{tenant}\" is not in the catalog database"),
        ));
    }
    tracing::info!(tenant, status, "console changed the tenant's status");
    Ok(())
}

fn status_text(s: TenantStatus) -> &'static str {
    match s {
        TenantStatus::Active => "active",
        TenantStatus::Paused => "paused",
        TenantStatus::Disabled => "disabled",
        TenantStatus::Moving => "moving",
    }
}

fn mode_text(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn show_tenants(shared: &Shared, out: &mut BytesMut) {
    let clients = clients_by_tenant(shared);
    let snapshot = shared.catalog.snapshot();
    let mut tenants: Vec<_> = snapshot.tenants().collect();
    tenants.sort_by(|a, b| a.slug.cmp(&b.slug));
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.slug.clone(),
                status_text(t.status).into(),
                t.backend.server.clone(),
                t.backend.database.clone(),
                t.backend.user.clone(),
                mode_text(t.pool.mode).into(),
                t.pool.size.to_string(),
                t.users.len().to_string(),
                clients
                    .get(t.slug.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    result::write(
        out,
        &[
            "tenant",
            "status",
            "server",
            "database",
            "role",
            "pool_mode",
            "pool_size",
            "users",
            "clients",
        ],
        &rows,
        "SHOW",
    );
}

fn clients_by_tenant(shared: &Shared) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (tenant, _) in shared.pools.clients() {
        *counts.entry(tenant).or_insert(0) += 1;
    }
    counts
}

fn show_pools(shared: &Shared, out: &mut BytesMut) {
    let rows: Vec<Vec<String>> = shared
        .pools
        .pool_rows()
        .into_iter()
        .map(|p| {
            let paused = shared.pools.is_paused(&p.tenant);
            vec![
                p.tenant,
                p.server,
                mode_text(p.mode).into(),
                p.size.to_string(),
                p.clients.to_string(),
                p.waiting.to_string(),
                (p.open - p.idle.min(p.open)).to_string(),
                p.idle.to_string(),
                p.max_wait.as_millis().to_string(),
                paused.to_string(),
            ]
        })
        .collect();
    result::write(
        out,
        &[
            "tenant",
            "server",
            "pool_mode",
            "pool_size",
            "cl_connected",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "maxwait_ms",
            "paused",
        ],
        &rows,
        "SHOW",
    );
}

fn show_clients(shared: &Shared, out: &mut BytesMut) {
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = shared
        .pools
        .clients()
        .into_iter()
        .map(|(tenant, c)| {
            let age = now.duration_since(c.connected_at).unwrap_or_default();
            vec![
                c.client_id.to_string(),
                if tenant == crate::pool::CONSOLE_KEY {
                    "(console)".to_owned()
                } else {
                    tenant
                },
                c.user().to_owned(),
                c.peer.to_string(),
                age.as_secs().to_string(),
            ]
        })
        .collect();
    result::write(
        out,
        &["id", "tenant", "user", "address", "connected_s"],
        &rows,
        "SHOW",
    );
}

fn show_servers(shared: &Shared, out: &mut BytesMut) {
    let snapshot = shared.catalog.snapshot();
    // Servers as the routing table knows them (through their tenants), with their budgets.
    let mut servers: BTreeMap<String, (String, u16, u32, usize)> = BTreeMap::new();
    for t in snapshot.tenants() {
        let b = &t.backend;
        let e = servers.entry(b.server.clone()).or_insert((
            b.host.clone(),
            b.port,
            b.server_max_connections,
            0,
        ));
        e.3 += 1;
    }
    let budgets: BTreeMap<String, crate::pool::BudgetUsage> =
        shared.pools.server_rows().into_iter().collect();
    let rows: Vec<Vec<String>> = servers
        .into_iter()
        .map(|(name, (host, port, max, tenants))| {
            let used = budgets.get(&name);
            vec![
                name.clone(),
                host,
                port.to_string(),
                max.to_string(),
                used.map_or(0, |u| u.open).to_string(),
                used.map_or(0, |u| u.idle).to_string(),
                used.map_or(0, |u| u.waiting).to_string(),
                tenants.to_string(),
            ]
        })
        .collect();
    result::write(
        out,
        &[
            "server",
            "host",
            "port",
            "max_connections",
            "open",
            "idle",
            "waiting",
            "tenants",
        ],
        &rows,
        "SHOW",
    );
}

fn show_stats(shared: &Shared, out: &mut BytesMut) {
    let avg = |total: u64, n: u64| total.checked_div(n).unwrap_or(0).to_string();
    let rows: Vec<Vec<String>> = shared
        .pools
        .stats_rows()
        .into_iter()
        .map(|(tenant, s)| {
            vec![
                tenant,
                s.transactions.to_string(),
                s.queries.to_string(),
                s.bytes_in.to_string(),
                s.bytes_out.to_string(),
                s.xact_time_us.to_string(),
                avg(s.xact_time_us, s.transactions),
                s.waits.to_string(),
                s.wait_time_us.to_string(),
                avg(s.wait_time_us, s.waits),
            ]
        })
        .collect();
    result::write(
        out,
        &[
            "tenant",
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time_us",
            "avg_xact_us",
            "wait_count",
            "wait_time_us",
            "avg_wait_us",
        ],
        &rows,
        "SHOW",
    );
}

fn show_config(shared: &Shared, out: &mut BytesMut) {
    let rows: Vec<Vec<String>> = shared
        .config()
        .summary()
        .into_iter()
        .map(|(k, v)| vec![k, v])
        .collect();
    result::write(out, &["key", "value"], &rows, "SHOW");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_in_any_case_and_unknown_ones_say_what_is_known() {
        let cases = [
            ("show tenants", Command::Show(Show::Tenants)),
            ("SHOW  Pools", Command::Show(Show::Pools)),
            ("pause", Command::Pause(None)),
            ("PAUSE Acme", Command::Pause(Some("Acme"))),
            ("resume acme", Command::Resume(Some("acme"))),
            ("kill acme", Command::Kill("acme")),
            ("Disable acme", Command::Disable("acme")),
            ("enable acme", Command::Enable("acme")),
            ("reload", Command::Reload),
            ("shutdown", Command::Shutdown),
        ];
        for (text, command) in cases {
            assert_eq!(parse(text).expect(text), command, "{text}");
        }
        for text in [
            "",
            "kill",
            "show",
            "pause a b",
            "drop tenant acme",
            "SHOW\u{0}TENANTS",
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.code, sqlstate::SYNTAX_ERROR, "{text}");
            assert!(
                e.hint
                    .as_deref()
                    .is_some_and(|h| h.contains("SHOW TENANTS"))
            );
        }
    }
}
