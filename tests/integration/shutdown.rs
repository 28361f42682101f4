//! Graceful shutdown: transactions in flight finish, the next one is refused with 57P01, idle
//! clients are closed at once, and a transaction that outlasts the grace is cut off.

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::*;

async fn proxy(grace_ms: u64) -> (pgtenant::server::ProxyHandle, String, String) {
    let bed = bed();
    let (session, txn) = (unique("drain"), unique("drain"));
    create_tenant_db(&bed.a, &session).await;
    create_tenant_db(&bed.a, &txn).await;
    let toml = format!(
        "{}[proxy]\nshutdown_grace_ms = {grace_ms}\n{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&session, &bed.a, &session, ""),
        tenant_toml(&txn, &bed.a, &txn, "pool_mode = \"transaction\""),
    );
    (start_proxy(&toml).await, session, txn)
}

fn closed_for_shutdown(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().map(|d| d.code().code()) == Some("57P01") || e.is_closed()
}

async fn open_transaction(c: &Client) {
    c.batch_execute("BEGIN; INSERT INTO items VALUES (1, 'in flight')")
        .await
        .expect("transaction starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_in_flight_finish_and_the_next_one_is_refused() {
    let (proxy, session, txn) = proxy(30_000).await;
    let addr = proxy.addrs[0];
    let in_session = connect(addr, "app", &session)
        .await
        .expect("session client");
    let in_txn = connect(addr, "app", &txn)
        .await
        .expect("transaction client");
    let idle = connect(addr, "app", &session).await.expect("idle client");
    open_transaction(&in_session).await;
    open_transaction(&in_txn).await;
    let stopping = tokio::spawn(proxy.shutdown());
    // The idle client goes at once; the two in a transaction stay.
    assert!(
        eventually(Duration::from_secs(10), || async { idle.is_closed() }).await,
        "the idle client was closed"
    );
    assert!(
        connect(addr, "app", &session).await.is_err(),
        "no new clients"
    );
    for c in [&in_session, &in_txn] {
        c.batch_execute("COMMIT")
            .await
            .expect("the transaction in flight commits");
        let e = c
            .simple_query("SELECT 1")
            .await
            .expect_err("the next one is refused");
        assert!(closed_for_shutdown(&e), "{e}");
    }
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown ends once the clients are gone")
        .expect("task");
    // Both commits landed.
    for db in [&session, &txn] {
        let n: i64 = bed()
            .a
            .superuser(db)
            .await
            .query_one("SELECT count(*) FROM items WHERE note = 'in flight'", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1, "{db}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_outlasts_the_grace_is_cut_off() {
    let (proxy, session, _) = proxy(500).await;
    let addr = proxy.addrs[0];
    let slow = connect(addr, "app", &session).await.expect("client");
    open_transaction(&slow).await;
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown())
        .await
        .expect("shutdown does not wait past the grace");
    let e = slow.batch_execute("COMMIT").await.expect_err("cut off");
    assert!(closed_for_shutdown(&e), "{e}");
    let n: i64 = bed()
        .a
        .superuser(&session)
        .await
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "the cut-off transaction rolled back");
}
