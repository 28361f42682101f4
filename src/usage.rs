//! Usage accounting: every `[catalog] usage_interval_ms`, each tenant's counters since the last
//! flush go to `pgtenant.tenant_usage` in the catalog database, one row per tenant that did
//! something. A flush that fails is retried with the next one (the deltas keep growing), and
//! shutdown flushes once more, so nothing counted is lost while the catalog comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::error::Secret;
use crate::server::Shared;
use crate::stats::StatsRow;

/// Longest a flush may take before it counts as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Flushes usage every `interval` until `stop`, then once more.
pub async fn run(
    shared: Arc<Shared>,
    url: Secret,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let proxy = proxy_name();
    let mut flushed: HashMap<String, StatsRow> = HashMap::new();
    let mut since = SystemTime::now();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = crate::server::stopped(&mut stop) => true,
        };
        let now = SystemTime::now();
        let current = shared.pools.stats_rows();
        let rows = deltas(&flushed, &current);
        if !rows.is_empty() {
            match tokio::time::timeout(FLUSH_TIMEOUT, write(&url, &proxy, since, now, &rows)).await
            {
                Ok(Ok(())) => {
                    flushed = current.into_iter().collect();
                    since = now;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "usage flush failed; retrying with the next one")
                }
                Err(_) => tracing::warn!("usage flush timed out; retrying with the next one"),
            }
        } else {
            since = now;
        }
        if stopping {
            return;
        }
    }
}

/// What each tenant did since `flushed`: only tenants that did something.
fn deltas(
    flushed: &HashMap<String, StatsRow>,
    current: &[(String, StatsRow)],
) -> Vec<(String, StatsRow)> {
    current
        .iter()
        .filter_map(|(tenant, now)| {
            let before = flushed.get(tenant).copied().unwrap_or_default();
            let d = StatsRow {
                transactions: now.transactions.saturating_sub(before.transactions),
                queries: now.queries.saturating_sub(before.queries),
                bytes_in: now.bytes_in.saturating_sub(before.bytes_in),
                bytes_out: now.bytes_out.saturating_sub(before.bytes_out),
                xact_time_us: now.xact_time_us.saturating_sub(before.xact_time_us),
                waits: 0,
                wait_time_us: 0,
            };
            let idle = d.transactions == 0 && d.queries == 0 && d.bytes_in == 0 && d.bytes_out == 0;
            (!idle).then(|| (tenant.clone(), d))
        })
        .collect()
}

async fn write(
    url: &Secret,
    proxy: &str,
    from: SystemTime,
    to: SystemTime,
    rows: &[(String, StatsRow)],
) -> Result<(), crate::tenant::catalog::postgres::CatalogError> {
    let client = crate::tenant::catalog::postgres::connect(url, None).await?;
    let col = |f: fn(&StatsRow) -> u64| -> Vec<i64> {
        rows.iter()
            .map(|(_, r)| i64::try_from(f(r)).unwrap_or(i64::MAX))
            .collect()
    };
    let tenants: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    client
        .execute(
            "INSERT INTO pgtenant.tenant_usage (tenant, proxy, period_start, period_end,
                 transactions, queries, bytes_in, bytes_out, busy_time_us)
             SELECT t, $2, $3, $4, x, q, i, o, b
             FROM unnest($1::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
                  AS u(t, x, q, i, o, b)",
            &[
                &tenants,
                &proxy,
                &from,
                &to,
                &col(|r| r.transactions),
                &col(|r| r.queries),
                &col(|r| r.bytes_in),
                &col(|r| r.bytes_out),
                &col(|r| r.xact_time_us),
            ],
        )
        .await?;
    Ok(())
}

/// This proxy in usage rows: host name and process id.
fn proxy_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tenants_that_did_something_are_written() {
        let row = |x, q| StatsRow {
            transactions: x,
            queries: q,
            bytes_in: 10 * q,
            bytes_out: 20 * q,
            ..StatsRow::default()
        };
        let before: HashMap<String, StatsRow> =
            [("a".to_string(), row(5, 5)), ("b".to_string(), row(2, 2))].into();
        let now = vec![
            ("a".to_string(), row(8, 9)),
            ("b".to_string(), row(2, 2)),
            ("c".to_string(), row(1, 1)),
        ];
        let d = deltas(&before, &now);
        let got: Vec<(&str, u64, u64)> = d
            .iter()
            .map(|(t, r)| (t.as_str(), r.transactions, r.queries))
            .collect();
        assert_eq!(got, [("a", 3, 4), ("c", 1, 1)]);
    }
}
