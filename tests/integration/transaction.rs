//! Transaction pooling: connections held only for a transaction, prepared statements that
//! follow their client onto any connection, settings that follow too, state that cannot follow
//! pinned or refused, cancels, checkout limits.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

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
    assert_pool_exhausted(&e, &slug, "pool size 1");
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

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("show")
        .get(0)
}

/// RESET ALL returns to the client's startup values, as in Postgres, on whatever connection the
/// client gets next; a prepared SET changes nothing until it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_return_to_startup_values_and_prepared_sets_count_when_run() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let a = connect_with(addr, "app", PASSWORD, &slug, "-c application_name=a-app")
        .await
        .expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    assert_eq!(show(&a, "application_name").await, "a-app");
    assert_eq!(show(&b, "application_name").await, "");
    a.batch_execute("SET application_name = 'x'")
        .await
        .expect("set");
    a.batch_execute("RESET ALL").await.expect("reset all");
    // b takes the only connection in between, with its own settings.
    b.batch_execute("SET application_name = 'b-app'")
        .await
        .expect("b set");
    assert_eq!(show(&a, "application_name").await, "a-app");
    assert_eq!(show(&b, "application_name").await, "b-app");
    // Parsed (and described) but not run: nothing changes.
    let set = a
        .prepare("SET application_name = 'prepared'")
        .await
        .expect("prepare");
    assert_eq!(show(&b, "application_name").await, "b-app");
    assert_eq!(show(&a, "application_name").await, "a-app");
    // Run in a later transaction: it counts then, and follows a to its next connection.
    a.execute(&set, &[]).await.expect("run the prepared set");
    assert_eq!(show(&b, "application_name").await, "b-app");
    assert_eq!(show(&a, "application_name").await, "prepared");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_each_client_onto_a_shared_connection() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let a = connect_with(addr, "app", PASSWORD, &slug, "-c statement_timeout=1234")
        .await
        .expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    a.batch_execute("SET search_path TO app_a, public; SET application_name = 'client-a'")
        .await
        .expect("a sets");
    b.batch_execute("SET TIME ZONE 'Asia/Tokyo'")
        .await
        .expect("b sets");
    b.batch_execute("SET application_name TO 'client-b'")
        .await
        .expect("b sets");
    // A SET that is rolled back does not stick; one that is committed does.
    a.batch_execute("BEGIN; SET work_mem = '3MB'; ROLLBACK")
        .await
        .expect("rolled back");
    b.batch_execute("BEGIN; SET work_mem = '5MB'; COMMIT")
        .await
        .expect("committed");
    for _ in 0..3 {
        assert_eq!(
            backend_pid(&a).await,
            backend_pid(&b).await,
            "one connection"
        );
        assert_eq!(show(&a, "search_path").await, "app_a, public");
        assert_eq!(show(&a, "application_name").await, "client-a");
        assert_eq!(show(&a, "statement_timeout").await, "1234ms");
        assert_eq!(show(&a, "work_mem").await, "4MB");
        assert_ne!(show(&a, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&b, "application_name").await, "client-b");
        assert_eq!(show(&b, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&b, "work_mem").await, "5MB");
        assert_eq!(show(&b, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "statement_timeout").await, "0");
    }
    b.batch_execute("RESET TIME ZONE").await.expect("reset");
    b.batch_execute("RESET work_mem").await.expect("reset");
    assert_eq!(show(&a, "search_path").await, "app_a, public");
    assert_eq!(show(&b, "work_mem").await, "4MB");
    a.batch_execute("RESET ALL").await.expect("reset all");
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
    assert_eq!(show(&b, "application_name").await, "client-b");
    proxy.shutdown().await;
}

/// Runs `sql` as an unnamed statement (Parse, Bind, Execute with no name).
async fn typed(c: &tokio_postgres::Client, sql: &str) -> Vec<tokio_postgres::Row> {
    c.query_typed(sql, &[]).await.expect(sql)
}

/// Unnamed statements (one Parse per execution, as many drivers send them): a text seen before
/// is known to be plain without another look, and a different text is still looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_are_tracked_after_repeated_plain_ones() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2").await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    for _ in 0..3 {
        typed(&a, "SELECT 1").await;
    }
    // work_mem is not reported back by the server: only the statement says it changed.
    typed(&a, "SET work_mem = '7MB'").await;
    typed(&a, "SELECT 1").await;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..2 {
        for b_holds_one in [true, false] {
            // While b is in a transaction, a must take the other connection.
            if b_holds_one {
                b.batch_execute("BEGIN").await.expect("b begins");
            }
            let rows = typed(&a, "SELECT current_setting('work_mem')").await;
            assert_eq!(rows[0].get::<_, String>(0), "7MB");
            pids.insert(backend_pid(&a).await);
            if b_holds_one {
                b.batch_execute("COMMIT").await.expect("b commits");
            }
        }
    }
    assert_eq!(pids.len(), 2, "a ran on both connections");
    // After the same plain text, a statement that pins still pins.
    typed(&a, "SELECT 1").await;
    typed(&a, "CREATE TEMP TABLE t_unnamed (x int)").await;
    let pid = backend_pid(&a).await;
    for _ in 0..2 {
        b.batch_execute("BEGIN").await.expect("b begins");
        typed(&a, "SELECT * FROM t_unnamed").await;
        assert_eq!(backend_pid(&a).await, pid, "pinned to its connection");
        b.batch_execute("COMMIT").await.expect("b commits");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_cannot_follow_pins_the_client() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2").await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .expect("temp table");
    let pid = backend_pid(&a).await;
    for i in 0..5 {
        a.execute("INSERT INTO scratch VALUES ($1)", &[&i])
            .await
            .expect("the temp table is still there");
        // b runs meanwhile on the other connection.
        assert_ne!(backend_pid(&b).await, pid);
    }
    assert_eq!(backend_pid(&a).await, pid, "pinned to its connection");
    let n: i64 = a
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 5);
    drop(a);
    // Once the pinned client leaves, its connection is closed, never handed on with the table.
    assert!(
        eventually(Duration::from_secs(5), || async {
            backends_on(&bed().a, &slug).await == 1
        })
        .await
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_cannot_follow_is_refused_under_the_error_policy() {
    let (proxy, slug) = txn_proxy("[pool]\nsession_state = \"error\"", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let c = connect(addr, "app", &slug).await.expect("client");
    for sql in [
        "LISTEN news",
        "CREATE TEMP TABLE t (x int)",
        "SELECT pg_advisory_lock(7)",
        "PREPARE p AS SELECT 1",
    ] {
        let e = c.batch_execute(sql).await.expect_err(sql);
        let db = e.as_db_error().expect("db error");
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().contains("transaction pooling"),
            "{}",
            db.message()
        );
    }
    // Inside a transaction the refusal fails the transaction on the backend too.
    c.batch_execute("BEGIN").await.expect("begin");
    let e = c.batch_execute("LISTEN news").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "0A000");
    let e = c
        .batch_execute("SELECT 1")
        .await
        .expect_err("failed transaction");
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    // Through the extended protocol too; the session goes on afterwards.
    let e = c
        .prepare("CREATE TEMP TABLE t2 (x int)")
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(whoami(&c).await, slug);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_and_no_other() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2").await;
    let addr = proxy.addrs[0];
    let a = connect(addr, "app", &slug).await.expect("a");
    let b = connect(addr, "app", &slug).await.expect("b");
    // a's idle key points nowhere: a cancel between transactions does nothing.
    a.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    assert_eq!(whoami(&a).await, slug);
    let token = a.cancel_token();
    let slow = tokio::spawn(async move { a.batch_execute("SELECT pg_sleep(20)").await });
    let other = tokio::spawn(async move { b.batch_execute("SELECT pg_sleep(1.5)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let e = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("cancelled promptly")
        .expect("task")
        .expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014");
    other
        .await
        .expect("task")
        .expect("the other client's query was not cancelled");
    proxy.shutdown().await;
}

mod raw {
    use super::*;
    use postgres_protocol::message::frontend;

    fn parse(name: &str, sql: &str) -> bytes::BytesMut {
        let mut b = bytes::BytesMut::new();
        frontend::parse(name, sql, std::iter::empty(), &mut b).expect("parse");
        b
    }

    fn bind_execute_sync(name: &str) -> bytes::BytesMut {
        let mut b = bytes::BytesMut::new();
        bind_unnamed_portal(name, &mut b);
        frontend::execute("", 0, &mut b).expect("execute");
        frontend::sync(&mut b);
        b
    }

    /// A Parse and its Sync.
    fn parse_sync(name: &str, sql: &str) -> bytes::BytesMut {
        let mut b = parse(name, sql);
        frontend::sync(&mut b);
        b
    }

    fn close_sync(name: &str) -> bytes::BytesMut {
        let mut b = bytes::BytesMut::new();
        frontend::close(b'S', name, &mut b).expect("close");
        frontend::sync(&mut b);
        b
    }

    /// Sends a Parse that fails and a Flush, no Sync, and reads the error: the backend now
    /// skips everything up to the next Sync.
    async fn fail_without_sync(c: &mut RawClient) {
        let mut batch = parse("", "SELEC 1");
        frontend::flush(&mut batch);
        c.send(&batch).await;
        let (tag, body) = c.read().await;
        assert_eq!(
            (tag, pgtenant::protocol::messages::error_fields(&body).0),
            (b'E', Some("42601"))
        );
    }

    fn sync() -> bytes::BytesMut {
        let mut b = bytes::BytesMut::new();
        frontend::sync(&mut b);
        b
    }

    /// A batch its client has not ended with Sync keeps the connection, even once every reply
    /// so far has come: without the Sync the backend is inside the batch's implicit
    /// transaction, and after an error it skips everything up to the next Sync, so another
    /// client given that connection would run inside the batch or get no answer at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_without_its_sync_keeps_its_connection() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1\ncheckout_timeout_ms = 10000").await;
        let addr = proxy.addrs[0];
        let mut a = RawClient::login(addr, "app", &slug).await;
        let other = |n: i32| {
            let slug = slug.clone();
            tokio::spawn(async move {
                let b = connect(addr, "app", &slug).await.expect("b logs in");
                let row = b
                    .query_one(&format!("SELECT {n}"), &[])
                    .await
                    .expect("b queries");
                row.get::<_, i32>(0)
            })
        };
        let flush = |mut b: bytes::BytesMut| {
            frontend::flush(&mut b);
            b
        };
        // Every reply of Parse, Bind and Execute has come, but no Sync: b must wait.
        let mut batch = parse("", "SELECT 1");
        let mut rest = bind_execute_sync("");
        rest.truncate(rest.len() - sync().len()); // the Sync off the end
        batch.extend_from_slice(&rest);
        a.send(&flush(batch)).await;
        let mut tags = Vec::new();
        while tags.last() != Some(&b'C') {
            tags.push(a.read().await.0);
        }
        assert_eq!(tags, b"12DC");
        let b = other(2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !b.is_finished(),
            "b waits for the connection a's batch holds"
        );
        a.send(&sync()).await;
        assert_eq!(a.until_ready().await, (vec![], vec![], b'I'));
        let got = tokio::time::timeout(Duration::from_secs(10), b).await;
        assert_eq!(got.expect("b is answered").expect("b"), 2);
        // An error without Sync: the backend skips to the next Sync; b is served only after it.
        fail_without_sync(&mut a).await;
        let b = other(3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.send(&sync()).await;
        assert_eq!(a.until_ready().await, (vec![], vec![], b'I'));
        let got = tokio::time::timeout(Duration::from_secs(10), b).await;
        assert_eq!(got.expect("b is answered").expect("b"), 3);
        proxy.shutdown().await;
    }

    /// After an error in a batch Postgres skips everything up to the Sync, a simple Query too:
    /// the client hears the error and one ReadyForQuery, and its connection goes back with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_inside_a_failed_batch_is_skipped_as_postgres_does() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1\ncheckout_timeout_ms = 3000").await;
        let addr = proxy.addrs[0];
        let mut a = RawClient::login(addr, "app", &slug).await;
        let mut batch = parse("", "SELEC 1");
        frontend::query("SELECT 1", &mut batch).expect("query");
        batch.extend_from_slice(&sync());
        a.send(&batch).await;
        assert_eq!(
            a.until_ready().await,
            (b"E".to_vec(), vec!["42601".to_owned()], b'I')
        );
        // Between transactions now: another client gets the only connection.
        let b = connect(addr, "app", &slug).await.expect("b logs in");
        let n: i32 = b.query_one("SELECT 4", &[]).await.expect("b").get(0);
        assert_eq!(n, 4);
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        proxy.shutdown().await;
    }

    /// After an error in a batch Postgres skips every message up to the Sync, also ones the
    /// client sends only after it has read the error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_sent_after_an_error_are_skipped_until_the_sync() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
        let mut a = RawClient::login(proxy.addrs[0], "app", &slug).await;
        fail_without_sync(&mut a).await;
        let mut rest = parse("s1", "SELECT 1");
        rest.extend_from_slice(&parse("", "SELECT 2"));
        rest.extend_from_slice(&bind_execute_sync(""));
        a.send(&rest).await;
        let got = tokio::time::timeout(Duration::from_secs(10), a.until_ready()).await;
        assert_eq!(got.expect("the batch ends"), (vec![], vec![], b'I'));
        // s1 was skipped too.
        a.send(&bind_execute_sync("s1")).await;
        assert_eq!(a.until_ready().await.1, vec!["26000".to_owned()]);
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        proxy.shutdown().await;
    }

    /// Postgres checks a Parse's text before the name: in a failed transaction a duplicate name
    /// with a COMMIT gets 42P05, with anything else 25P02, also when the connection no longer
    /// has the client's first statement of that name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_parse_is_checked_in_postgres_order() {
        let (proxy, slug) = txn_proxy(
            "[pool]\nprepared_statements_per_connection = 1",
            "pool_size = 1",
        )
        .await;
        let mut a = RawClient::login(proxy.addrs[0], "app", &slug).await;
        // s2 pushes s1 off the connection (the duplicate checks below must not need it).
        let mut batch = parse("s1", "SELECT 1");
        batch.extend_from_slice(&parse("s2", "SELECT 2"));
        batch.extend_from_slice(&sync());
        a.send(&batch).await;
        assert_eq!(a.until_ready().await, (b"11".to_vec(), vec![], b'I'));
        let batch = parse_sync("s1", "SELEC 3");
        a.send(&batch).await;
        assert_eq!(a.until_ready().await.1, vec!["42601".to_owned()]);
        // Running s2 pushes s1 off again.
        a.send(&bind_execute_sync("s2")).await;
        assert_eq!(a.until_ready().await.1, Vec::<String>::new());
        assert_eq!(a.query("BEGIN").await, (b"C".to_vec(), b'T'));
        assert_eq!(a.query("SELC").await, (b"E".to_vec(), b'E'));
        for (sql, code) in [("COMMIT", "42P05"), ("SELECT 3", "25P02")] {
            let batch = parse_sync("s1", sql);
            a.send(&batch).await;
            assert_eq!(
                a.until_ready().await,
                (b"E".to_vec(), vec![code.to_owned()], b'E')
            );
        }
        assert_eq!(a.query("ROLLBACK").await, (b"C".to_vec(), b'I'));
        a.send(&bind_execute_sync("s1")).await;
        assert_eq!(a.until_ready().await, (b"2DC".to_vec(), vec![], b'I'));
        proxy.shutdown().await;
    }

    /// A Parse or Close the proxy answers itself (the statement is already on the connection,
    /// or is the client's alone) is undone when an earlier message of the batch fails, since
    /// Postgres would have skipped it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_undoes_the_parse_and_close_the_proxy_answered() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
        let mut a = RawClient::login(proxy.addrs[0], "app", &slug).await;
        let batch = parse_sync("s1", "SELECT 1");
        a.send(&batch).await;
        assert_eq!(a.until_ready().await, (b"1".to_vec(), vec![], b'I'));
        // s2 has s1's text, so the connection has it already; then s1 is closed. Both come
        // after an error.
        let mut batch = parse("", "SELEC 1");
        batch.extend_from_slice(&parse("s2", "SELECT 1"));
        frontend::close(b'S', "s1", &mut batch).expect("close");
        batch.extend_from_slice(&sync());
        a.send(&batch).await;
        assert_eq!(
            a.until_ready().await,
            (b"E".to_vec(), vec!["42601".to_owned()], b'I')
        );
        // s2 was never made: it can be prepared with another text. s1 was never closed.
        let mut batch = parse("s2", "SELECT 2");
        batch.extend_from_slice(&bind_execute_sync("s2"));
        a.send(&batch).await;
        assert_eq!(a.until_ready().await, (b"12DC".to_vec(), vec![], b'I'));
        a.send(&bind_execute_sync("s1")).await;
        assert_eq!(a.until_ready().await, (b"2DC".to_vec(), vec![], b'I'));
        proxy.shutdown().await;
    }

    /// The commit at a Sync can fail (here a deferred unique check): the error is the Sync's
    /// own and its ReadyForQuery still ends the batch, on a connection the client can go on using.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_at_the_sync_itself_ends_the_batch() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1\ncheckout_timeout_ms = 10000").await;
        let mut a = RawClient::login(proxy.addrs[0], "app", &slug).await;
        let (_, status) = a
            .query("CREATE TABLE deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
            .await;
        assert_eq!(status, b'I');
        let mut batch = parse("", "INSERT INTO deferred_check VALUES (1), (1)");
        batch.extend_from_slice(&bind_execute_sync(""));
        a.send(&batch).await;
        let got = tokio::time::timeout(Duration::from_secs(10), a.until_ready()).await;
        assert_eq!(
            got.expect("the batch ends"),
            (b"12CE".to_vec(), vec!["23505".to_owned()], b'I')
        );
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        proxy.shutdown().await;
    }

    /// A statement refused in a batch ends that batch at its Sync, as an error would: behind an
    /// earlier error it is skipped (only the first error is heard), inside a transaction block
    /// it fails the block on the backend too, and with no backend held the proxy answers alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_statement_ends_its_batch_at_the_sync() {
        let (proxy, slug) = txn_proxy(
            "[pool]\nsession_state = \"error\"",
            "pool_size = 1\ncheckout_timeout_ms = 10000",
        )
        .await;
        let addr = proxy.addrs[0];
        let mut a = RawClient::login(addr, "app", &slug).await;
        async fn ready(a: &mut RawClient) -> (Vec<u8>, Vec<String>, u8) {
            tokio::time::timeout(Duration::from_secs(10), a.until_ready())
                .await
                .expect("the batch ends")
        }
        let codes = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Behind an error in the same batch the refused Parse is skipped, as Postgres skips
        // everything up to the Sync: only the first error is heard.
        let mut batch = parse("", "SELEC 1");
        batch.extend_from_slice(&parse("", "LISTEN news"));
        batch.extend_from_slice(&sync());
        a.send(&batch).await;
        assert_eq!(
            ready(&mut a).await,
            (b"E".to_vec(), codes(&["42601"]), b'I')
        );
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        // So it is when it comes after the client has read that error.
        fail_without_sync(&mut a).await;
        let batch = parse_sync("", "LISTEN news");
        a.send(&batch).await;
        assert_eq!(ready(&mut a).await, (vec![], vec![], b'I'));
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        // Refused inside a transaction block: the block fails, as after any error.
        assert_eq!(a.query("BEGIN").await, (b"C".to_vec(), b'T'));
        let mut batch = parse("", "SELECT 1");
        batch.extend_from_slice(&parse("", "LISTEN news"));
        batch.extend_from_slice(&bind_execute_sync(""));
        a.send(&batch).await;
        assert_eq!(
            ready(&mut a).await,
            (b"1E".to_vec(), codes(&["0A000"]), b'E')
        );
        a.send_query("SELECT 1").await;
        assert_eq!(
            ready(&mut a).await,
            (b"E".to_vec(), codes(&["25P02"]), b'E')
        );
        assert_eq!(a.query("ROLLBACK").await, (b"C".to_vec(), b'I'));
        // Refused as the first message of a batch, with no backend held.
        let mut batch = parse("", "LISTEN news");
        batch.extend_from_slice(&bind_execute_sync(""));
        a.send(&batch).await;
        assert_eq!(
            ready(&mut a).await,
            (b"E".to_vec(), codes(&["0A000"]), b'I')
        );
        // The connection went back each time: another client gets the only one.
        let b = connect(addr, "app", &slug).await.expect("b logs in");
        let n: i32 = b.query_one("SELECT 4", &[]).await.expect("b").get(0);
        assert_eq!(n, 4);
        assert_eq!(a.query("SELECT 5").await, (b"TDC".to_vec(), b'I'));
        proxy.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_deallocate_and_duplicates_behave_as_postgres() {
        let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
        let addr = proxy.addrs[0];
        let mut c = RawClient::login(addr, "app", &slug).await;
        let mut other = RawClient::login(addr, "app", &slug).await;
        // Two clients, one name, two texts.
        let msg = parse_sync("s1", "SELECT 1");
        c.send(&msg).await;
        assert_eq!(c.until_ready().await, (b"1".to_vec(), vec![], b'I'));
        let msg = parse_sync("s1", "SELECT 2");
        other.send(&msg).await;
        assert_eq!(other.until_ready().await, (b"1".to_vec(), vec![], b'I'));
        c.send(&bind_execute_sync("s1")).await;
        let (tags, codes, _) = c.until_ready().await;
        assert_eq!((tags, codes), (b"2DC".to_vec(), vec![]));
        // A second Parse of the same name fails as in Postgres, and the batch is skipped.
        let mut msg = parse("s1", "SELECT 3");
        msg.extend_from_slice(&bind_execute_sync("s1"));
        c.send(&msg).await;
        let (tags, codes, status) = c.until_ready().await;
        assert_eq!(
            (tags, codes, status),
            (b"E".to_vec(), vec!["42P05".to_string()], b'I')
        );
        // Close forgets it for this client only.
        c.send(&close_sync("s1")).await;
        assert_eq!(c.until_ready().await, (b"3".to_vec(), vec![], b'I'));
        c.send(&bind_execute_sync("s1")).await;
        let (_, codes, _) = c.until_ready().await;
        assert_eq!(codes, vec!["26000".to_string()], "closed statement is gone");
        other.send(&bind_execute_sync("s1")).await;
        let (tags, codes, _) = other.until_ready().await;
        assert_eq!(
            (tags, codes),
            (b"2DC".to_vec(), vec![]),
            "the other client's s1 lives"
        );
        // SQL DEALLOCATE of a protocol-level statement, then DEALLOCATE ALL.
        let mut msg = parse("s2", "SELECT 2");
        msg.extend_from_slice(&parse("s3", "SELECT 3"));
        msg.extend_from_slice(&sync());
        c.send(&msg).await;
        assert_eq!(c.until_ready().await, (b"11".to_vec(), vec![], b'I'));
        let (tags, status) = c.query("DEALLOCATE s2").await;
        assert_eq!((tags, status), (b"C".to_vec(), b'I'));
        c.send(&bind_execute_sync("s2")).await;
        assert_eq!(c.until_ready().await.1, vec!["26000".to_string()]);
        c.send(&bind_execute_sync("s3")).await;
        assert_eq!(c.until_ready().await.1, Vec::<String>::new());
        let (tags, _) = c.query("DEALLOCATE ALL").await;
        assert_eq!(tags, b"C".to_vec());
        c.send(&bind_execute_sync("s3")).await;
        assert_eq!(c.until_ready().await.1, vec!["26000".to_string()]);
        // A name prepared again after DEALLOCATE prepares cleanly.
        let mut msg = parse("s2", "SELECT 22");
        msg.extend_from_slice(&bind_execute_sync("s2"));
        c.send(&msg).await;
        let (tags, codes, _) = c.until_ready().await;
        assert_eq!((tags, codes), (b"12DC".to_vec(), vec![]));
        proxy.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_works_on_a_connection_that_has_not_seen_the_statement() {
        // One connection that keeps one statement: preparing s2 closes s1 on the backend.
        let (proxy, slug) = txn_proxy(
            "[pool]\nprepared_statements_per_connection = 1",
            "pool_size = 1",
        )
        .await;
        let mut c = RawClient::login(proxy.addrs[0], "app", &slug).await;
        let mut msg = parse("s1", "SELECT name FROM whoami");
        msg.extend_from_slice(&parse("s2", "SELECT 2"));
        msg.extend_from_slice(&sync());
        c.send(&msg).await;
        assert_eq!(c.until_ready().await, (b"11".to_vec(), vec![], b'I'));
        // Describe s1: the proxy prepares it there again, and only the client's replies show.
        let mut msg = bytes::BytesMut::new();
        frontend::describe(b'S', "s1", &mut msg).expect("describe");
        msg.extend_from_slice(&sync());
        c.send(&msg).await;
        let (tags, codes, status) = c.until_ready().await;
        assert_eq!((tags, codes, status), (b"tT".to_vec(), vec![], b'I'));
        proxy.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_keeps_a_bounded_set_of_statements() {
        let (proxy, slug) = txn_proxy(
            "[pool]\nprepared_statements_per_connection = 3",
            "pool_size = 1",
        )
        .await;
        let mut c = RawClient::login(proxy.addrs[0], "app", &slug).await;
        for round in 0..2 {
            for i in 0..6 {
                let name = format!("q{i}");
                if round == 0 {
                    let msg = parse_sync(&name, &format!("SELECT {i}"));
                    c.send(&msg).await;
                    c.until_ready().await;
                }
                c.send(&bind_execute_sync(&name)).await;
                let (tags, codes, _) = c.until_ready().await;
                assert_eq!(
                    (tags, codes),
                    (b"2DC".to_vec(), vec![]),
                    "{name} round {round}"
                );
            }
        }
        // The one connection holds at most three of the statements.
        let other = connect(proxy.addrs[0], "app", &slug).await.expect("client");
        let n: i64 = other
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .expect("count")
            .get(0);
        assert!((1..=3).contains(&n), "{n} statements on the connection");
        assert_eq!(backends_on(&bed().a, &slug).await, 1);
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_copies_stream_through_transaction_mode() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let c = connect(proxy.addrs[0], "app", &slug).await.expect("client");
    // 20 MB of rows, larger than every buffer on the way.
    let rows = c
        .query(
            "SELECT repeat(md5(i::text), 32) FROM generate_series(1, 20000) i",
            &[],
        )
        .await
        .expect("big result");
    assert_eq!(rows.len(), 20_000);
    assert!(rows.iter().all(|r| r.get::<_, String>(0).len() == 1024));
    // Many small rows (taken in runs by the relay), each in its place.
    let small = c
        .query("SELECT i FROM generate_series(1, 50000) i", &[])
        .await
        .expect("many rows");
    let values: Vec<i32> = small.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, (1..=50_000).collect::<Vec<i32>>());
    // COPY in both directions inside transaction pooling.
    let sink = c
        .copy_in("COPY items (id, note) FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = std::pin::pin!(sink);
    for i in 0..5000 {
        futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(format!("{i}\tnote {i}\n")))
            .await
            .expect("copy row");
    }
    assert_eq!(sink.as_mut().finish().await.expect("copy done"), 5000);
    let out = c
        .copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<_> = futures_util::StreamExt::collect(out).await;
    let text: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.expect("chunk").to_vec())
        .collect();
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 5000);
    // A prepared statement after all that still lines up.
    let s = c.prepare("SELECT $1::text").await.expect("prepare");
    assert_eq!(
        c.query_one(&s, &[&"after"])
            .await
            .expect("row")
            .get::<_, String>(0),
        "after"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_message_never_hands_a_half_message_on() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let mut raw = RawClient::login(addr, "app", &slug).await;
    // The header of a 1,000-byte CopyData (which Postgres reads whole, then ignores outside a
    // COPY) and only part of its body: the backend waits for the rest.
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&1000u32.to_be_bytes());
    partial.extend_from_slice(&[7u8; 100]);
    raw.send(&partial).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(raw);
    let c = connect(addr, "app", &slug).await.expect("next client");
    let name = tokio::time::timeout(Duration::from_secs(10), whoami(&c))
        .await
        .expect("the next client is not fed to a half-read message");
    assert_eq!(name, slug);
    proxy.shutdown().await;
}
