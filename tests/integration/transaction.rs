//! Transaction pooling: connections held only for a transaction, prepared statements that
//! follow their client onto any connection, settings that follow too, state that cannot follow
//! pinned or refused, cancels, checkout limits.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// A transaction-mode proxy with one tenant; `tenant_extra` goes into the tenant's table and
/// `proxy_extra` before the servers.
async fn txn_proxy(
    proxy_extra: &str,
    tenant_extra: &str,
) -> (pgtenant::server::ProxyHandle, String) {
    single_tenant_proxy(
        "scram-sha-256",
        proxy_extra,
        &format!("pool_mode = \"transaction\"\n{tenant_extra}"),
    )
    .await
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("client program runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_one_connection_between_transactions() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1\ncheckout_timeout_ms = 5000").await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    // Both logged in and both query on the only connection: neither holds it between queries.
    let pid = backend_pid(&a).await;
    assert_eq!(backend_pid(&b).await, pid);
    assert_eq!(whoami(&a).await, slug);
    // A transaction holds it: b waits until a commits.
    a.batch_execute("BEGIN; INSERT INTO items VALUES (1, 'a')")
        .await
        .expect("begin");
    let waiting = tokio::spawn(async move {
        let n: i64 = b
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("b queries after a commits")
            .get(0);
        n
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b waits while a's transaction runs");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(waiting.await.expect("b"), 1, "b saw a's committed row");
    assert_eq!(backends_on(&bed().a, &slug).await, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_past_the_checkout_timeout_gets_53300() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1\ncheckout_timeout_ms = 300").await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    a.batch_execute("BEGIN")
        .await
        .expect("a holds the connection");
    let e = b
        .batch_execute("SELECT 1")
        .await
        .expect_err("no connection");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains(&slug) && db.message().contains("pool size 1"),
        "{}",
        db.message()
    );
    a.batch_execute("COMMIT").await.expect("a goes on");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_client_limit_answers_53300() {
    let (proxy, slug) = txn_proxy("", "max_client_connections = 2").await;
    let addr = proxy.addrs[0];
    let _a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    let e = connect(addr, "app", &slug)
        .await
        .expect_err("third refused");
    assert_eq!(sqlstate(&e), "53300");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("limit 2"), "{msg}");
    drop(b);
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await,
        "a freed place is taken again"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_clients_across_connections() {
    // 12 clients on 3 connections; tokio-postgres names its statements s0, s1, ... in every
    // client, so the names collide across clients while the texts differ.
    let (proxy, slug) = txn_proxy("", "pool_size = 3").await;
    let addr = proxy.addrs[0];
    let mut tasks = Vec::new();
    for i in 0..12i32 {
        let slug = slug.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(addr, "app", &slug).await.expect("client");
            let own = c
                .prepare(&format!("SELECT $1::int + {i}"))
                .await
                .expect("prepare own");
            let shared = c
                .prepare("SELECT name FROM whoami WHERE $1::int >= 0")
                .await
                .expect("prepare shared");
            for n in 0..40i32 {
                let row = c.query_one(&own, &[&n]).await.expect("own statement");
                assert_eq!(row.get::<_, i32>(0), n + i);
                let row = c.query_one(&shared, &[&n]).await.expect("shared statement");
                assert_eq!(row.get::<_, String>(0), slug);
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // A statement prepared inside a transaction is usable after it.
            c.batch_execute("BEGIN").await.expect("begin");
            let late = c
                .prepare("SELECT 'late'::text")
                .await
                .expect("prepare late");
            c.batch_execute("COMMIT").await.expect("commit");
            let row = c.query_one(&late, &[]).await.expect("late statement");
            assert_eq!(row.get::<_, String>(0), "late");
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert!(backends_on(&bed().a, &slug).await <= 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prepare_leaves_no_statement_behind() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let c = connect(proxy.addrs[0], "app", &slug).await.expect("client");
    let e = c
        .prepare("SELECT * FROM no_such_table")
        .await
        .expect_err("fails");
    assert_eq!(sqlstate(&e), "42P01");
    // The client goes on, and the same text prepares once the table exists.
    c.batch_execute("CREATE TABLE no_such_table (x int); INSERT INTO no_such_table VALUES (7)")
        .await
        .expect("create");
    let s = c
        .prepare("SELECT * FROM no_such_table")
        .await
        .expect("prepares");
    assert_eq!(
        c.query_one(&s, &[]).await.expect("runs").get::<_, i32>(0),
        7
    );
    // Errors inside a pipelined batch skip to Sync, and the client's state stays in step.
    let bad = c.prepare("SELECT 1/$1::int").await.expect("prepare");
    let e = c
        .query_one(&bad, &[&0i32])
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    assert_eq!(
        c.query_one(&bad, &[&1i32])
            .await
            .expect("ok")
            .get::<_, i32>(0),
        1
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_every_protocol_mode_in_transaction_pooling() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2").await;
    let port = proxy.addrs[0].port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "app"];
    let (ok, _, err) = run(Command::new(pg_bin("pgbench"))
        .args(base)
        .args(["-i", "-s", "1", "-q", &slug]));
    assert!(ok, "pgbench -i: {err}");
    for mode in ["simple", "extended", "prepared"] {
        // The full TPC-B-like script: multi-statement transactions, 8 clients on 2 connections.
        // One thread per client: pgbench prepares with a blocking call, which would stall a
        // shared thread while its other clients hold both connections mid-transaction.
        let (ok, out, err) = run(Command::new(pg_bin("pgbench"))
            .args(base)
            .args(["-M", mode, "-c", "8", "-j", "8", "-t", "50", &slug]));
        assert!(ok, "pgbench -M {mode}: {err}");
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    assert!(backends_on(&bed().a, &slug).await <= 2);
    proxy.shutdown().await;
}
