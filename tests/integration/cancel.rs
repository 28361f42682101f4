//! Cancel requests: the proxy's key reaches the right backend; a wrong key does nothing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Waits until `query` runs on database `db` of server A.
async fn sleeping(db: &str, query: &str) -> bool {
    let admin = bed().a.superuser("postgres").await;
    eventually(Duration::from_secs(10), || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query = $2 AND state = 'active'",
                &[&db, &query],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await
}

/// Runs a long query on `c` (a client of tenant `slug`), cancels it with the key the proxy
/// gave, and checks it ends with 57014; the client is dropped.
async fn cancel_a_long_query(c: tokio_postgres::Client, slug: &str) {
    let token = c.cancel_token();
    let running =
        tokio::spawn(async move { c.query("SELECT pg_sleep(30)", &[]).await.map(|_| ()) });
    assert!(
        sleeping(slug, "SELECT pg_sleep(30)").await,
        "the query started"
    );
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let e = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("query ends soon after the cancel")
        .expect("task")
        .expect_err("query was cancelled");
    assert_eq!(sqlstate(&e), "57014");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_the_proxy_key_stops_the_query_and_a_wrong_key_does_nothing() {
    let (proxy, slug) = single_tenant_proxy("scram-sha-256", "", "").await;
    let addr = proxy.addrs[0];

    // tokio-postgres cancels with the BackendKeyData it got from the proxy.
    let c = connect(addr, "app", &slug).await.expect("connects");
    cancel_a_long_query(c, &slug).await;

    // A wrong secret for a real key, and an unknown key: the query keeps running.
    let mut raw = RawClient::login(addr, "app", &slug).await;
    raw.send_query("SELECT pg_sleep(1.5)").await;
    assert!(
        sleeping(&slug, "SELECT pg_sleep(1.5)").await,
        "the query started"
    );
    let (pid, mut secret) = raw.key.clone();
    secret[0] ^= 0xff;
    for (p, s) in [(pid, secret), (pid.wrapping_add(1), raw.key.1.clone())] {
        let mut s2 = tokio::net::TcpStream::connect(addr)
            .await
            .expect("cancel connection");
        let mut msg = Vec::new();
        msg.extend_from_slice(&16u32.to_be_bytes());
        msg.extend_from_slice(&80_877_102u32.to_be_bytes());
        msg.extend_from_slice(&p.to_be_bytes());
        msg.extend_from_slice(&s);
        s2.write_all(&msg).await.expect("send cancel");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s2.read_to_end(&mut sink)).await;
    }
    let (tags, status) = raw.query("SELECT 1").await;
    // The sleep's own reply arrives first and carries no error.
    assert!(
        !tags.contains(&b'E'),
        "the query was not cancelled: {tags:?}"
    );
    assert_eq!(status, b'I');
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_is_told_its_backends_own_pid() {
    let (proxy, slug) = single_tenant_proxy("scram-sha-256", "", "").await;
    let mut raw = RawClient::login(proxy.addrs[0], "app", &slug).await;
    raw.send_query("SELECT pg_backend_pid()").await;
    let pid = loop {
        let (tag, body) = raw.read().await;
        if tag == b'D' {
            // One column: its length, then its text.
            break std::str::from_utf8(&body[6..])
                .expect("text")
                .parse::<i32>()
                .expect("pid");
        }
    };
    assert_eq!(raw.key.0, pid, "BackendKeyData names the backend's own pid");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_connection_sent_a_cancel_is_closed_not_pooled() {
    let (proxy, slug) = single_tenant_proxy("scram-sha-256", "", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let c = connect(addr, "app", &slug).await.expect("connects");
    let cancelled_pid = backend_pid(&c).await;
    cancel_a_long_query(c, &slug).await;
    // The client left; a late signal could hit whoever got that connection next.
    let next = connect(addr, "app", &slug).await.expect("connects");
    assert_ne!(backend_pid(&next).await, cancelled_pid);
    proxy.shutdown().await;
}
