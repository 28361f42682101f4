//! The Prometheus endpoint (`[metrics] address`, off by default): `GET /metrics` answers the
//! text exposition format, rendered at scrape time from the proxy's live state — pools, client
//! registry, per-tenant counters, server budgets, catalog health. Rendering from state (rather
//! than a push-style registry) means a tenant's series disappear with the tenant, and nothing
//! on the relay path touches a metrics handle. The HTTP side is the least that Prometheus
//! needs: one bounded request per connection, a timeout, `Connection: close`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::pool::CONSOLE_KEY;
use crate::server::Shared;
use crate::stats::WAIT_BUCKETS;

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves scrapes until `stop` is set.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(&shared, stream)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::server::stopped(&mut stop) => return,
        }
    }
}

async fn answer(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let (status, body) = match route(&head) {
        Route::Metrics => ("200 OK", render(shared)),
        Route::NotFound => ("404 Not Found", "not found; try /metrics\n".to_owned()),
        Route::NotGet => ("405 Method Not Allowed", "GET only\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// A GET of anything else.
    NotFound,
    /// Another method.
    NotGet,
}

/// Reads the request line of `head` (the bytes up to the blank line).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => Route::Metrics,
        (Some(b"GET"), _) => Route::NotFound,
        _ => Route::NotGet,
    }
}

/// Writes one metric family: its HELP and TYPE lines, then each sample.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value, escaped as the exposition format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition, from the state now.
pub fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(4096);
    let tenant = |t: &str| format!("tenant=\"{}\"", label(t));

    let mut clients: BTreeMap<String, u64> = BTreeMap::new();
    for (t, _) in shared.pools.clients() {
        if t != CONSOLE_KEY {
            *clients.entry(t).or_default() += 1;
        }
    }
    let samples: Vec<_> = clients
        .iter()
        .map(|(t, n)| (tenant(t), n.to_string()))
        .collect();
    family(
        &mut out,
        "pgtenant_client_connections",
        "gauge",
        "Clients logged in, by tenant.",
        &samples,
    );

    let pools = shared.pools.pool_rows();
    let samples: Vec<_> = pools
        .iter()
        .map(|p| (tenant(&p.tenant), p.waiting.to_string()))
        .collect();
    family(
        &mut out,
        "pgtenant_waiting_clients",
        "gauge",
        "Clients waiting for a backend connection.",
        &samples,
    );
    let samples: Vec<_> = pools
        .iter()
        .map(|p| {
            let paused = shared.pools.is_paused(&p.tenant);
            (tenant(&p.tenant), u8::from(paused).to_string())
        })
        .collect();
    family(
        &mut out,
        "pgtenant_paused",
        "gauge",
        "1 while a console PAUSE holds the tenant's new transactions.",
        &samples,
    );
    let mut samples = Vec::new();
    for p in &pools {
        let active = p.open.saturating_sub(p.idle);
        samples.push((
            format!("{},state=\"active\"", tenant(&p.tenant)),
            active.to_string(),
        ));
        samples.push((
            format!("{},state=\"idle\"", tenant(&p.tenant)),
            p.idle.to_string(),
        ));
    }
    family(
        &mut out,
        "pgtenant_server_connections",
        "gauge",
        "Backend connections of each tenant's pool, by state.",
        &samples,
    );

    let stats = shared.pools.stats_rows();
    let counter = |out: &mut String,
                   name: &str,
                   help: &str,
                   get: &dyn Fn(&crate::stats::StatsRow) -> String| {
        let samples: Vec<_> = stats.iter().map(|(t, s)| (tenant(t), get(s))).collect();
        family(out, name, "counter", help, &samples);
    };
    counter(
        &mut out,
        "pgtenant_transactions_total",
        "Transactions finished.",
        &|s| s.transactions.to_string(),
    );
    counter(
        &mut out,
        "pgtenant_queries_total",
        "Query and Execute messages.",
        &|s| s.queries.to_string(),
    );
    counter(
        &mut out,
        "pgtenant_received_bytes_total",
        "Bytes received from clients.",
        &|s| s.bytes_in.to_string(),
    );
    counter(
        &mut out,
        "pgtenant_sent_bytes_total",
        "Bytes sent to clients.",
        &|s| s.bytes_out.to_string(),
    );
    counter(
        &mut out,
        "pgtenant_transaction_seconds_total",
        "Time spent inside transactions.",
        &|s| format!("{:.6}", s.xact_time_us as f64 / 1e6),
    );

    let _ = writeln!(
        out,
        "# HELP pgtenant_checkout_wait_seconds Time clients waited for a backend connection.\n# TYPE pgtenant_checkout_wait_seconds histogram"
    );
    let mut auth = Vec::new();
    let mut errors = Vec::new();
    for (t, s) in &stats {
        let Some(live) = shared.pools.stats_if_present(t) else {
            continue;
        };
        for (bound, count) in WAIT_BUCKETS.iter().zip(live.wait_histogram()) {
            let _ = writeln!(
                out,
                "pgtenant_checkout_wait_seconds_bucket{{{},le=\"{bound}\"}} {count}",
                tenant(t)
            );
        }
        let _ = writeln!(
            out,
            "pgtenant_checkout_wait_seconds_bucket{{{},le=\"+Inf\"}} {}",
            tenant(t),
            s.waits
        );
        let _ = writeln!(
            out,
            "pgtenant_checkout_wait_seconds_sum{{{}}} {:.6}",
            tenant(t),
            s.wait_time_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "pgtenant_checkout_wait_seconds_count{{{}}} {}",
            tenant(t),
            s.waits
        );
        auth.push((tenant(t), live.read_auth_failures().to_string()));
        for (class, n) in live.errors() {
            errors.push((
                format!("{},class=\"{}\"", tenant(t), label(&class)),
                n.to_string(),
            ));
        }
    }
    family(
        &mut out,
        "pgtenant_auth_failures_total",
        "counter",
        "Logins that failed authentication.",
        &auth,
    );
    family(
        &mut out,
        "pgtenant_errors_total",
        "counter",
        "Errors clients were sent (the proxy's refusals and their backends' errors), by SQLSTATE class.",
        &errors,
    );

    let mut max = Vec::new();
    let mut conns = Vec::new();
    let mut waiting = Vec::new();
    for (server, u) in shared.pools.server_rows() {
        let s = format!("server=\"{}\"", label(&server));
        max.push((s.clone(), u.max.to_string()));
        conns.push((format!("{s},state=\"open\""), u.open.to_string()));
        conns.push((format!("{s},state=\"idle\""), u.idle.to_string()));
        waiting.push((s, u.waiting.to_string()));
    }
    family(
        &mut out,
        "pgtenant_server_budget_max_connections",
        "gauge",
        "A server's shared backend connection budget.",
        &max,
    );
    family(
        &mut out,
        "pgtenant_server_budget_connections",
        "gauge",
        "Backend connections a server's tenants hold, by state.",
        &conns,
    );
    family(
        &mut out,
        "pgtenant_server_budget_waiting_clients",
        "gauge",
        "Clients waiting on a server's budget.",
        &waiting,
    );

    let health = shared.catalog.health();
    let loaded = health
        .last_load
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    family(
        &mut out,
        "pgtenant_catalog_last_load_timestamp_seconds",
        "gauge",
        "When the catalog database was last loaded (0: never; the config file only).",
        &[(String::new(), format!("{loaded:.3}"))],
    );
    family(
        &mut out,
        "pgtenant_catalog_up",
        "gauge",
        "1 while the catalog database answers (or none is configured).",
        &[(
            String::new(),
            u8::from(health.last_error.is_none()).to_string(),
        )],
    );
    family(
        &mut out,
        "pgtenant_catalog_notification_lag_seconds",
        "gauge",
        "From the last notified catalog change to its snapshot being in force here.",
        &[(
            String::new(),
            format!(
                "{:.6}",
                health.notification_lag.map_or(0.0, |d| d.as_secs_f64())
            ),
        )],
    );
    family(
        &mut out,
        "pgtenant_tenants",
        "gauge",
        "Tenants in the routing snapshot.",
        &[(String::new(), shared.catalog.snapshot().len().to_string())],
    );
    family(
        &mut out,
        "pgtenant_log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log output took none while they came.",
        &[(
            String::new(),
            crate::logging::batch::dropped_total().to_string(),
        )],
    );
    out
}
