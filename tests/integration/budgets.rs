//! Shared server budgets and pool health in transaction mode: many clients of several tenants
//! on a small budget, served fairly; a backend server that goes away and comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_of_three_tenants_share_ten_connections_fairly() {
    let bed = bed();
    // Uneven demand: 140, 50 and 10 clients, each running 10 transactions.
    let tenants = [
        (unique("big"), 140),
        (unique("mid"), 50),
        (unique("small"), 10),
    ];
    let mut toml = format!(
        "{}{}max_connections = 10\n",
        listener_toml("trust"),
        bed.a.toml(SCRAM_ROLE)
    );
    for (slug, _) in &tenants {
        create_tenant_db(&bed.a, slug).await;
        toml.push_str(&tenant_toml(
            slug,
            &bed.a,
            slug,
            "pool_mode = \"transaction\"\npool_size = 10\ncheckout_timeout_ms = 60000",
        ));
    }
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    // Completion order of every transaction, and the proxy's own count of open connections.
    let order = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = {
        let (shared, peak) = (proxy.shared.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                if let Some(u) = shared.pools.server_usage("server_a") {
                    peak.fetch_max(u.open, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Everyone logs in first, then all start at once: the test is about the run, not about
    // who connected first.
    let total: usize = tenants.iter().map(|(_, n)| n).sum();
    let start = Arc::new(tokio::sync::Barrier::new(total));
    let mut tasks = Vec::new();
    for (slug, clients) in &tenants {
        for _ in 0..*clients {
            let (slug, order, start) = (slug.clone(), order.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let c = connect(addr, "app", &slug).await.expect("client connects");
                start.wait().await;
                let mut ranks = Vec::new();
                for _ in 0..10 {
                    let row = c
                        .query_one("SELECT name, pg_sleep(0.005)::text FROM whoami", &[])
                        .await
                        .expect("transaction");
                    assert_eq!(
                        row.get::<_, String>(0),
                        slug,
                        "answered by its own database"
                    );
                    ranks.push(order.fetch_add(1, Ordering::Relaxed));
                }
                (slug, ranks)
            }));
        }
    }
    let mut ranks: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        let (slug, r) = t.await.expect("client task");
        ranks.entry(slug).or_default().extend(r);
    }
    sampling.abort();
    assert!(
        peak.load(Ordering::Relaxed) <= 10,
        "the server budget held: peak {}",
        peak.load(Ordering::Relaxed)
    );
    let mean = |slug: &str| {
        let r = &ranks[slug];
        r.iter().sum::<u64>() as f64 / r.len() as f64
    };
    let (big, mid, small) = (
        mean(&tenants[0].0),
        mean(&tenants[1].0),
        mean(&tenants[2].0),
    );
    eprintln!("mean completion rank: small {small:.0}, mid {mid:.0}, big {big:.0}");
    // Served per tenant, not per client: the small tenant's few clients get their share of
    // connections and finish early instead of queueing behind the big tenant's 140.
    assert!(
        small < 0.5 * big && mid < big,
        "mean completion rank: small {small:.0}, mid {mid:.0}, big {big:.0}"
    );
    let open: i64 = bed
        .a
        .superuser("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)",
            &[&tenants.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()],
        )
        .await
        .expect("count")
        .get(0);
    assert!(open <= 10, "{open} backend connections");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_fails_only_its_tenants_who_recover_when_it_returns() {
    let bed = bed();
    let (mut own, lost) = own_server("server_lost").await;
    let (on_lost, on_a) = (unique("onlost"), unique("ona"));
    create_tenant_db(&lost, &on_lost).await;
    create_tenant_db(&bed.a, &on_a).await;
    let txn = "pool_mode = \"transaction\"\npool_size = 2";
    let toml = format!(
        "{}{}{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        lost.toml(SCRAM_ROLE),
        tenant_toml(&on_lost, &lost, &on_lost, txn),
        tenant_toml(&on_a, &bed.a, &on_a, txn),
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &on_a).await.expect("tenant on A");
    let idle = connect(addr, "app", &on_lost)
        .await
        .expect("tenant on the lost server");
    let mut busy = RawClient::login(addr, "app", &on_lost).await;
    assert_eq!(whoami(&idle).await, on_lost);
    assert_eq!(busy.query("BEGIN").await.1, b'T', "mid-transaction");

    own = stop_own(own).await;
    // The client mid-transaction hears the server's own words, relayed as they came.
    let (tag, body) = busy.read().await;
    assert_eq!(tag, b'E');
    assert_eq!(
        pgtenant::protocol::messages::error_fields(&body).0,
        Some("57P01")
    );
    // A client between transactions gets a clear connection failure, not a hang.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = idle
        .batch_execute("SELECT 1")
        .await
        .expect_err("server gone");
    assert!(["57P01", "08006"].contains(&sqlstate(&e).as_str()), "{e:?}");
    // The other server's tenant does not notice.
    for _ in 0..5 {
        assert_eq!(whoami(&a).await, on_a);
    }

    own = restart_own(own).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            match connect(addr, "app", &on_lost).await {
                Ok(c) => c.query_one("SELECT name FROM whoami", &[]).await.is_ok(),
                Err(_) => false,
            }
        })
        .await,
        "the tenant recovers by itself"
    );
    assert_eq!(whoami(&a).await, on_a);
    proxy.shutdown().await;
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_makes_room_by_closing_another_tenants_idle_connection() {
    let bed = bed();
    let (x, y) = (unique("bx"), unique("by"));
    let mut toml = format!(
        "{}{}max_connections = 2\n",
        listener_toml("trust"),
        bed.a.toml(SCRAM_ROLE)
    );
    for slug in [&x, &y] {
        create_tenant_db(&bed.a, slug).await;
        toml.push_str(&tenant_toml(
            slug,
            &bed.a,
            slug,
            "pool_mode = \"transaction\"\ncheckout_timeout_ms = 5000",
        ));
    }
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    // x fills the budget with two connections, then leaves them idle.
    let (x1, x2) = (
        connect(addr, "app", &x).await.expect("x1"),
        connect(addr, "app", &x).await.expect("x2"),
    );
    x1.batch_execute("BEGIN").await.expect("x1 holds one");
    x2.batch_execute("BEGIN").await.expect("x2 holds the other");
    x1.batch_execute("COMMIT").await.expect("x1 idle");
    x2.batch_execute("COMMIT").await.expect("x2 idle");
    assert_eq!(backends_on(&bed.a, &x).await, 2);
    // y gets a connection at once by closing one of x's idle ones.
    let y1 = connect(addr, "app", &y).await.expect("y");
    assert_eq!(whoami(&y1).await, y);
    assert!(
        eventually(Duration::from_secs(5), || async {
            backends_on(&bed.a, &x).await == 1
        })
        .await
    );
    let usage = proxy.shared.pools.server_usage("server_a").expect("budget");
    assert_eq!((usage.max, usage.open), (2, 2));
    assert_eq!(whoami(&x1).await, x, "x still works on what it has");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_idle_connections_are_replaced_without_the_client_noticing() {
    let (proxy, slug) = single_tenant_proxy(
        "scram-sha-256",
        "",
        "pool_mode = \"transaction\"\npool_size = 2",
    )
    .await;
    let c = connect(proxy.addrs[0], "app", &slug).await.expect("client");
    assert_eq!(whoami(&c).await, slug);
    let killed: i64 = bed()
        .a
        .superuser("postgres")
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            &[&slug],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(
            whoami(&c).await,
            slug,
            "a fresh connection serves the client"
        );
    }
    proxy.shutdown().await;
}
