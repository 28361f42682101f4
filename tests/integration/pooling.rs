//! Session pools: reset between clients, dirty connections never reused, limits and timeouts,
//! backend errors relayed unchanged.

use std::time::Duration;

use crate::support::*;

async fn one_tenant(pool: &str) -> (pgtenant::server::ProxyHandle, String) {
    single_tenant_proxy("scram-sha-256", "", pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_does_not_survive_to_the_next_client() {
    let (proxy, slug) = one_tenant("pool_size = 1").await;
    let addr = proxy.addrs[0];
    let c1 = connect(addr, "app", &slug).await.expect("first client");
    let pid = backend_pid(&c1).await;
    c1.batch_execute(
        "SET search_path = pg_catalog; SET application_name = 'leaky'; SET statement_timeout = '7s';
         CREATE TEMP TABLE secret_tmp (x int); PREPARE leaked AS SELECT 1; LISTEN leaked_channel;
         SELECT pg_advisory_lock(42);",
    )
    .await
    .expect("session state");
    drop(c1);
    let c2 = connect(addr, "app", &slug).await.expect("second client");
    assert_eq!(
        backend_pid(&c2).await,
        pid,
        "the same backend connection was reused"
    );
    let row = c2
        .query_one(
            "SELECT current_setting('search_path'), current_setting('application_name'),
                    current_setting('statement_timeout'),
                    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked'),
                    (SELECT count(*) FROM pg_listening_channels()),
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
            &[],
        )
        .await
        .expect("state query");
    assert_eq!(row.get::<_, String>(0), "\"$user\", public");
    assert_ne!(row.get::<_, String>(1), "leaky");
    assert_eq!(row.get::<_, String>(2), "0");
    assert_eq!(
        (
            row.get::<_, i64>(3),
            row.get::<_, i64>(4),
            row.get::<_, i64>(5)
        ),
        (0, 0, 0)
    );
    let e = c2
        .query("SELECT * FROM secret_tmp", &[])
        .await
        .expect_err("temp table is gone");
    assert_eq!(sqlstate(&e), "42P01");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_the_backend() {
    let (proxy, slug) = one_tenant("pool_size = 2").await;
    let addr = proxy.addrs[0];
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("app")
        .password(PASSWORD)
        .dbname(&slug);
    cfg.application_name("billing-worker")
        .options("-c statement_timeout=1234 -c search_path=pg_catalog");
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(conn);
    let row = c
        .query_one("SELECT current_setting('application_name'), current_setting('statement_timeout'), current_setting('search_path')", &[])
        .await
        .expect("settings");
    assert_eq!(row.get::<_, String>(0), "billing-worker");
    assert_eq!(row.get::<_, String>(1), "1234ms");
    assert_eq!(row.get::<_, String>(2), "pg_catalog");
    // A value the backend rejects fails the login with the backend's own error.
    let mut bad = cfg.clone();
    bad.options("-c statement_timeout=banana");
    let e = bad
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("bad setting refused");
    assert_eq!(sqlstate(&e), "22023");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_transaction_leaves_nothing_behind() {
    let (proxy, slug) = one_tenant("pool_size = 1").await;
    let addr = proxy.addrs[0];
    let mut raw = RawClient::login(addr, "app", &slug).await;
    let (_, status) = raw
        .query("BEGIN; INSERT INTO items VALUES (1, 'uncommitted')")
        .await;
    assert_eq!(status, b'T');
    drop(raw); // no Terminate: the socket just closes
    let c = connect(addr, "app", &slug)
        .await
        .expect("next client gets the connection");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "the open transaction was rolled back");
    let status: String = c
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .expect("tx")
        .get(0);
    assert_eq!(status, "read committed");
    drop(c);

    // Vanishing while a query runs: the connection is closed, never handed out.
    let mut raw = RawClient::login(addr, "app", &slug).await;
    let (_, _) = raw.query("SELECT 1").await;
    // The backend closed after the first vanishing client may still be leaving: wait until the
    // proxy's one backend is the only one.
    let admin = bed().a.superuser(&slug).await;
    let mut busy_pid = 0;
    for _ in 0..100 {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[&slug],
            )
            .await
            .expect("activity");
        if let [row] = rows.as_slice() {
            busy_pid = row.get(0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(busy_pid, 0, "the proxy's only backend");
    raw.send_query("SELECT pg_sleep(0.5)").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    let c = connect(addr, "app", &slug).await.expect("next client");
    assert_ne!(
        backend_pid(&c).await,
        busy_pid,
        "a connection left mid-query is not reused"
    );
    c.query("SELECT 1", &[]).await.expect("works");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_53300_after_the_checkout_timeout() {
    let (proxy, slug) = one_tenant("pool_size = 1\ncheckout_timeout_ms = 300").await;
    let addr = proxy.addrs[0];
    let holder = connect(addr, "app", &slug)
        .await
        .expect("takes the only connection");
    let e = connect(addr, "app", &slug)
        .await
        .expect_err("no connection free");
    assert_pool_exhausted(&e, &slug, "pool size 1");
    drop(holder);
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_opens_ahead_and_idle_timeout_closes() {
    let bed = bed();
    let (proxy, slug) = one_tenant("pool_size = 4\nmin_idle = 2\nidle_timeout_ms = 200").await;
    // The pool exists once the tenant is first used.
    drop(
        connect(proxy.addrs[0], "app", &slug)
            .await
            .expect("first use"),
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends_on(&bed.a, &slug).await == 2
        })
        .await,
        "min_idle kept"
    );
    let clients: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| connect(proxy.addrs[0], "app", &slug))).await;
    assert!(clients.iter().all(|c| c.is_ok()));
    assert_eq!(backends_on(&bed.a, &slug).await, 4);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends_on(&bed.a, &slug).await == 2
        })
        .await,
        "idle connections beyond min_idle closed"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_and_broken_idle_connections_are_replaced() {
    let bed = bed();
    let (proxy, slug) = one_tenant("pool_size = 1\nmax_lifetime_ms = 300").await;
    let addr = proxy.addrs[0];
    let first = backend_pid(&connect(addr, "app", &slug).await.expect("c1")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = backend_pid(&connect(addr, "app", &slug).await.expect("c2")).await;
    assert_ne!(
        first, second,
        "a connection past its lifetime is not reused"
    );
    proxy.shutdown().await;

    let (proxy, slug) = one_tenant("pool_size = 1").await;
    let addr = proxy.addrs[0];
    let pid = backend_pid(&connect(addr, "app", &slug).await.expect("c1")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let admin = bed.a.superuser("postgres").await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate idle backend");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = connect(addr, "app", &slug).await.expect("c2");
    assert_ne!(
        backend_pid(&c).await,
        pid,
        "a dead idle connection is replaced, not handed out"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_reach_the_client_unchanged() {
    let bed = bed();
    let (proxy, slug) = one_tenant("").await;
    let c = connect(proxy.addrs[0], "app", &slug)
        .await
        .expect("connects");
    let e = c
        .query("SELECT * FROM no_such_table", &[])
        .await
        .expect_err("missing table");
    let db = e.as_db_error().expect("db error");
    assert_eq!((db.code().code(), db.severity()), ("42P01", "ERROR"));
    assert!(db.position().is_some(), "position field relayed");
    c.execute("INSERT INTO items VALUES (1, 'a')", &[])
        .await
        .expect("insert");
    let e = c
        .execute("INSERT INTO items VALUES (1, 'b')", &[])
        .await
        .expect_err("duplicate");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "23505");
    assert_eq!(db.constraint(), Some("items_pkey"));
    assert_eq!(db.table(), Some("items"));
    assert!(db.detail().is_some_and(|d| d.contains("(id)=(1)")));
    // The session goes on after errors.
    c.query("SELECT 1", &[]).await.expect("still usable");

    // A backend killed under a client: the client gets the backend's own FATAL.
    let pid = backend_pid(&c).await;
    bed.a
        .superuser("postgres")
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let e = c.query("SELECT 1", &[]).await.expect_err("connection gone");
    assert!(
        e.as_db_error().is_some_and(|d| d.code().code() == "57P01") || e.is_closed(),
        "terminated backend reported: {e}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pipeline_flows_both_ways_without_deadlock() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, slug) = one_tenant("").await;
    let raw = RawClient::login(proxy.addrs[0], "app", &slug).await;
    // Far more requests, and replies, than every socket buffer on the way holds together: the
    // client writes them all before reading, while reading on the side as a pipelining driver does.
    const QUERIES: usize = 20_000;
    let sql = format!("SELECT repeat('x', 2000) -- {}", "p".repeat(1000));
    let mut batch = bytes::BytesMut::new();
    for _ in 0..QUERIES {
        postgres_protocol::message::frontend::query(&sql, &mut batch).expect("query");
    }
    let (mut rd, mut wr) = raw.stream.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&batch).await.map(|_| wr) });
    let reader = tokio::spawn(async move {
        let (mut ready, mut buf) = (0usize, vec![0u8; 1 << 16]);
        // The last five bytes of the previous read, so a ReadyForQuery split between reads counts.
        let mut seen: Vec<u8> = Vec::new();
        while ready < QUERIES {
            let n = rd.read(&mut buf).await.expect("read");
            assert!(n > 0, "proxy closed the connection");
            seen.extend_from_slice(&buf[..n]);
            ready += seen.windows(6).filter(|w| w == b"Z\0\0\0\x05I").count();
            seen.drain(..seen.len() - 5);
        }
        ready
    });
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        (writer.await, reader.await)
    })
    .await;
    let (w, r) = done.expect("the pipeline completed instead of deadlocking");
    w.expect("writer").expect("write");
    assert_eq!(r.expect("reader"), QUERIES);
    proxy.shutdown().await;
}
