//! Messages larger than the relays' buffers, and clients that leave while the proxy is not
//! reading them: long statements pass in both pool modes, and a client that hangs up mid-message
//! or behind a backend that takes nothing is gone at once, its backend closed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

const MODES: [&str; 2] = ["session", "transaction"];

async fn proxy(mode: &str) -> (pgtenant::server::ProxyHandle, String) {
    single_tenant_proxy("scram-sha-256", "", &format!("pool_mode = \"{mode}\"")).await
}

/// `SELECT length('xxx…')` of about `size` bytes.
fn long_statement(size: usize) -> String {
    format!("SELECT length('{}')", "x".repeat(size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_longer_than_the_relay_buffers_pass_in_both_pool_modes() {
    for mode in MODES {
        let (proxy, slug) = proxy(mode).await;
        let c = connect(proxy.addrs[0], "app", &slug).await.expect("login");
        for size in [70 * 1024, 1024 * 1024, 16 * 1024 * 1024] {
            let sql = long_statement(size);
            let want = size.to_string();
            // Simple protocol: one Query message.
            let rows = tokio::time::timeout(Duration::from_secs(30), c.simple_query(&sql))
                .await
                .unwrap_or_else(|_| panic!("{mode}: a {size}-byte Query hangs"))
                .expect("simple query");
            let got = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(got.as_deref(), Some(want.as_str()), "{mode}, {size}");
            // Extended protocol: a named Parse (with Describe), then Bind/Execute.
            let stmt = tokio::time::timeout(Duration::from_secs(30), c.prepare(&sql))
                .await
                .unwrap_or_else(|_| panic!("{mode}: a {size}-byte Parse hangs"))
                .expect("prepare");
            let n: i32 = c.query_one(&stmt, &[]).await.expect("execute").get(0);
            assert_eq!(n as usize, size, "{mode}");
        }
        // psql -f with a 100 KiB statement, as an ORM's multi-row INSERT would be.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("big.sql");
        let values: Vec<String> = (0..4000)
            .map(|i| format!("({i}, 'note number {i} of a long insert')"))
            .collect();
        std::fs::write(
            &file,
            format!(
                "BEGIN;\nINSERT INTO items VALUES {};\nSELECT count(*) FROM items;\nROLLBACK;\n",
                values.join(",")
            ),
        )
        .expect("write file");
        let (ok, out, err) = run(std::process::Command::new(pg_bin("psql"))
            .arg(format!(
                "postgresql://app:{PASSWORD}@127.0.0.1:{}/{slug}",
                proxy.addrs[0].port()
            ))
            .args(["-XAt", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&file));
        assert!(ok, "{mode}: {err}");
        assert!(out.lines().any(|l| l == "4000"), "{mode}: {out}");
        drop(c);
        proxy.shutdown().await;
    }
}

/// The proxy's clients of tenant `slug`.
fn clients_of(proxy: &pgtenant::server::ProxyHandle, slug: &str) -> usize {
    proxy
        .shared
        .pools
        .clients()
        .iter()
        .filter(|(tenant, _)| tenant == slug)
        .count()
}

/// Asserts that the proxy lists no client of `slug` within 10 s.
async fn assert_clients_gone(proxy: &pgtenant::server::ProxyHandle, slug: &str, mode: &str) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            clients_of(proxy, slug) == 0
        })
        .await,
        "{mode}: the client is still listed"
    );
}

/// Backends of the tenant's login role in database `db` that sit inside a transaction.
async fn backends_in_transaction(db: &str) -> i64 {
    bed()
        .a
        .superuser("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 \
             AND state LIKE 'idle in transaction%'",
            &[&db, &SCRAM_ROLE],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_statement_is_gone_and_its_transaction_ends() {
    for mode in MODES {
        let (proxy, slug) = proxy(mode).await;
        let mut raw = RawClient::login(proxy.addrs[0], "app", &slug).await;
        let (_, status) = raw.query("BEGIN").await;
        assert_eq!(status, b'T');
        assert_eq!(backends_in_transaction(&slug).await, 1, "{mode}");
        // Half of a 1 MiB Query, then the client is gone.
        let sql = long_statement(1024 * 1024);
        let mut msg = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(&sql, &mut msg).expect("query");
        let half = &msg[..msg.len() / 2];
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.stream.write_all(half)).await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                clients_of(&proxy, &slug) == 1
            })
            .await
        );
        drop(raw);
        assert_clients_gone(&proxy, &slug, mode).await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                backends_in_transaction(&slug).await == 0
            })
            .await,
            "{mode}: its backend stays idle in transaction"
        );
        // The tenant still serves.
        let c = connect(proxy.addrs[0], "app", &slug).await.expect("login");
        assert_eq!(whoami(&c).await, slug);
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_while_its_backend_reads_nothing_is_gone() {
    for mode in MODES {
        let (proxy, slug) = proxy(mode).await;
        // The client's first statement waits for a lock, so its backend reads nothing more.
        let locker = bed().a.superuser(&slug).await;
        locker
            .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let mut raw = RawClient::login(proxy.addrs[0], "app", &slug).await;
        raw.send_query("SELECT count(*) FROM items").await;
        // Far more than the socket buffers between here and the backend hold.
        let mut flood = bytes::BytesMut::new();
        let filler = long_statement(1024 * 1024);
        for _ in 0..64 {
            postgres_protocol::message::frontend::query(&filler, &mut flood).expect("query");
        }
        let sent = tokio::time::timeout(Duration::from_secs(3), raw.stream.write_all(&flood)).await;
        assert!(sent.is_err(), "{mode}: the proxy read everything");
        socket2::SockRef::from(&raw.stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(raw);
        assert_clients_gone(&proxy, &slug, mode).await;
        // Once the lock goes, the backend finds its socket closed; none is pooled.
        locker.batch_execute("ROLLBACK").await.expect("unlock");
        assert!(
            eventually(Duration::from_secs(10), || async {
                backends_on(&bed().a, &slug).await == 1
            })
            .await,
            "{mode}: the client's backend is still open"
        );
        let c = connect(proxy.addrs[0], "app", &slug).await.expect("login");
        assert_eq!(whoami(&c).await, slug);
        proxy.shutdown().await;
    }
}
