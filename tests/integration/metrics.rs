//! The Prometheus endpoint, scraped over HTTP and checked against traffic that was sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// GET `path` from the endpoint: (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Samples by `name{labels}`.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample");
            (k.to_owned(), v.parse().expect("number"))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_clients_transactions_waits_and_failures() {
    let bed = bed();
    let (t1, t2) = (unique("met"), unique("met"));
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    let head = format!(
        "{}[metrics]\naddress = \"127.0.0.1:0\"\n{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE)
    );
    let t2_toml = tenant_toml(
        &t2,
        &bed.a,
        &t2,
        "pool_mode = \"transaction\"\npool_size = 1",
    );
    std::fs::write(
        &path,
        format!("{head}{}{t2_toml}", tenant_toml(&t1, &bed.a, &t1, "")),
    )
    .expect("config");
    let proxy = pgtenant::server::start(pgtenant::config::Config::load(&path).expect("valid"))
        .await
        .expect("starts");
    proxy.shared.set_config_path(path.clone());
    let (addr, metrics) = (proxy.addrs[0], proxy.metrics_addr.expect("metrics bound"));

    let c1 = connect(addr, "app", &t1).await.expect("t1");
    for _ in 0..3 {
        c1.simple_query("SELECT 1").await.expect("query");
    }
    let bad = connect_with(addr, "app", "wrong", &t2, "")
        .await
        .expect_err("bad password");
    assert_eq!(sqlstate(&bad), "28P01");
    let holder = connect(addr, "app", &t2).await.expect("holder");
    let waiter = connect(addr, "app", &t2).await.expect("waiter");
    holder.batch_execute("BEGIN").await.expect("begin");
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| ()) });
    let l2 = format!("tenant=\"{t2}\"");
    assert!(
        eventually(Duration::from_secs(5), || async {
            scrape(metrics)
                .await
                .get(&format!("pgtenant_waiting_clients{{{l2}}}"))
                == Some(&1.0)
        })
        .await
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    waiting.await.expect("task").expect("waiter served");
    // A transaction is counted just after its ReadyForQuery went out: wait for the last one.
    let transactions = |labels: String, n: f64| async move {
        eventually(Duration::from_secs(5), || async {
            scrape(metrics)
                .await
                .get(&format!("pgtenant_transactions_total{{{labels}}}"))
                == Some(&n)
        })
        .await
    };
    assert!(transactions(l2.clone(), 2.0).await, "t2's two transactions");
    // Backend errors count too, by class: 22012 in session mode (t1), 42P01 and 22012 in
    // transaction mode (t2, simple and extended protocol).
    let e = c1
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    let e = holder
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("no table");
    assert_eq!(sqlstate(&e), "42P01");
    // (tokio-postgres returns on the ErrorResponse and may send its next request before the
    // proxy has read the ReadyForQuery behind it; the proxy then keeps the connection for both,
    // one transaction. So t2's transactions are not counted from here on; its queries are.)
    let e = holder
        .query("SELECT 1 / $1", &[&0i32])
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e), "22012");

    let l1 = format!("tenant=\"{t1}\"");
    // Queries are added with their transaction, once the proxy has read its ReadyForQuery.
    // BEGIN, COMMIT, SELECT 2, the failed SELECT, the failed Execute.
    let t2_queries = format!("pgtenant_queries_total{{{l2}}}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            scrape(metrics).await.get(&t2_queries) == Some(&5.0)
        })
        .await,
        "t2's five queries counted"
    );
    assert!(
        transactions(l1.clone(), 4.0).await,
        "transactions counted: {:?}",
        scrape(metrics)
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with("pgtenant_transactions_total")
                || k.starts_with("pgtenant_queries_total"))
            .collect::<Vec<_>>()
    );
    let m = scrape(metrics).await;
    assert_eq!(
        value(&m, &format!("pgtenant_client_connections{{{l1}}}")),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!("pgtenant_server_connections{{{l1},state=\"active\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(&m, &format!("pgtenant_transactions_total{{{l1}}}")),
        4.0
    );
    assert_eq!(value(&m, &format!("pgtenant_queries_total{{{l1}}}")), 4.0);
    for (labels, class) in [(&l1, "22"), (&l2, "22"), (&l2, "42")] {
        assert_eq!(
            value(
                &m,
                &format!("pgtenant_errors_total{{{labels},class=\"{class}\"}}")
            ),
            1.0,
            "{labels} {class}"
        );
    }
    assert!(value(&m, &format!("pgtenant_sent_bytes_total{{{l1}}}")) > 0.0);
    assert_eq!(
        value(&m, &format!("pgtenant_auth_failures_total{{{l2}}}")),
        1.0
    );
    assert_eq!(
        value(&m, &format!("pgtenant_errors_total{{{l2},class=\"28\"}}")),
        1.0
    );
    assert_eq!(
        value(&m, &format!("pgtenant_checkout_wait_seconds_count{{{l2}}}")),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!("pgtenant_checkout_wait_seconds_bucket{{{l2},le=\"+Inf\"}}")
        ),
        1.0
    );
    let server = format!("server=\"{}\"", bed.a.name);
    assert!(
        value(
            &m,
            &format!("pgtenant_server_budget_connections{{{server},state=\"open\"}}")
        ) >= 2.0
    );
    assert_eq!(value(&m, "pgtenant_catalog_up"), 1.0);
    assert_eq!(value(&m, &format!("pgtenant_paused{{{l2}}}")), 0.0);
    proxy.shared.pools.pause(Some(&t2));
    let paused = scrape(metrics).await;
    assert_eq!(value(&paused, &format!("pgtenant_paused{{{l2}}}")), 1.0);
    assert_eq!(value(&paused, &format!("pgtenant_paused{{{l1}}}")), 0.0);
    proxy.shared.pools.resume(None);
    assert_eq!(value(&m, "pgtenant_tenants"), 2.0);
    let (status, _) = get(metrics, "/other").await;
    assert!(status.contains("404"), "{status}");

    // A tenant that leaves the config takes its series with it.
    std::fs::write(&path, format!("{head}{t2_toml}")).expect("config");
    pgtenant::reload::reload(&proxy.shared).expect("reload");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !scrape(metrics).await.keys().any(|k| k.contains(&l1))
        })
        .await,
        "t1's series expired"
    );
    drop(c1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_reach_the_catalog() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a]).await;
    let slug = unique("usage");
    create_tenant_db(&bed.a, &slug).await;
    let catalog = connect_url(&url).await.expect("catalog");
    catalog_add_tenant(&catalog, &slug, &bed.a, &slug).await;
    let toml = format!(
        "{}[catalog]\nurl = \"{url}\"\nusage_interval_ms = 200\n",
        listener_toml("scram-sha-256")
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await
    );
    let c = connect(addr, "app", &slug).await.expect("client");
    for _ in 0..4 {
        c.simple_query("SELECT 1").await.expect("query");
    }
    let sums = || async {
        catalog
            .query_one(
                "SELECT coalesce(sum(transactions), 0)::bigint, coalesce(sum(queries), 0)::bigint,
                        coalesce(sum(bytes_out), 0)::bigint, count(DISTINCT proxy)
                 FROM pgtenant.tenant_usage WHERE tenant = $1",
                &[&slug],
            )
            .await
            .expect("usage")
    };
    // The connection checks made by `eventually` above count too: wait for the four queries.
    assert!(
        eventually(Duration::from_secs(10), || async {
            sums().await.get::<_, i64>(1) >= 4
        })
        .await,
        "usage rows were written"
    );
    let r = sums().await;
    assert_eq!(r.get::<_, i64>(0), 4, "four transactions");
    assert_eq!(r.get::<_, i64>(1), 4, "four queries");
    assert!(r.get::<_, i64>(2) > 0);
    assert_eq!(r.get::<_, i64>(3), 1);
    // Shutdown flushes what is left.
    c.simple_query("SELECT 2").await.expect("query");
    proxy.shutdown().await;
    assert_eq!(
        sums().await.get::<_, i64>(0),
        5,
        "the last transaction was flushed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_report_their_lag_and_servers_tls_mode_comes_from_the_catalog() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a]).await;
    let slug = unique("lag");
    create_tenant_db(&bed.a, &slug).await;
    let catalog = connect_url(&url).await.expect("catalog");
    catalog_add_tenant(&catalog, &slug, &bed.a, &slug).await;
    let toml = format!(
        "{}[metrics]\naddress = \"127.0.0.1:0\"\n[catalog]\nurl = \"{url}\"\n",
        listener_toml("scram-sha-256")
    );
    let proxy = start_proxy(&toml).await;
    let (addr, metrics) = (proxy.addrs[0], proxy.metrics_addr.expect("metrics"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await
    );
    // No change notified yet: no lag to report.
    let lag = "pgtenant_catalog_notification_lag_seconds";
    assert_eq!(value(&scrape(metrics).await, lag), 0.0);

    // The catalog says the server needs TLS, which it does not offer: the tenant's next
    // connection fails; the change itself came with its time, so the lag is known.
    catalog
        .execute(
            "UPDATE pgtenant.servers SET tls_mode = 'require' WHERE name = $1",
            &[&bed.a.name],
        )
        .await
        .expect("require tls");
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(connect(addr, "app", &slug).await, Err(e) if sqlstate(&e) == "08006")
        })
        .await,
        "a server the catalog says needs TLS is not reached in plaintext"
    );
    // Recorded just after the snapshot went in force: wait for it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let seen = value(&scrape(metrics).await, lag);
            seen > 0.0 && seen < 60.0
        })
        .await,
        "the change's lag is reported"
    );
    catalog
        .execute(
            "UPDATE pgtenant.servers SET tls_mode = 'prefer' WHERE name = $1",
            &[&bed.a.name],
        )
        .await
        .expect("prefer tls");
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await
    );
    // verify-full without a CA file is refused by the catalog itself.
    let e = catalog
        .execute(
            "UPDATE pgtenant.servers SET tls_mode = 'verify-full' WHERE name = $1",
            &[&bed.a.name],
        )
        .await
        .expect_err("no CA file");
    assert_eq!(sqlstate(&e), "23514");
    proxy.shutdown().await;
}
