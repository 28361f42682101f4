//! The admin console: psql and tokio-postgres to the reserved database, each command's rows
//! checked against what the proxy is doing, KILL and SHUTDOWN, and who is kept out.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

const ADMIN_PASSWORD: &str = "admin-pw";

/// A proxy with two tenants on server A and one admin user.
async fn proxy_with_console() -> (pgtenant::server::ProxyHandle, String, String) {
    proxy_with_console_and("", 1).await
}

/// The same, with `head` (top-level config tables) first and the second tenant's pool size.
async fn proxy_with_console_and(
    head: &str,
    t2_pool_size: u32,
) -> (pgtenant::server::ProxyHandle, String, String) {
    let bed = bed();
    let (t1, t2) = (unique("adm"), unique("adm"));
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let admin_hash = postgres_protocol::password::scram_sha_256(ADMIN_PASSWORD.as_bytes());
    let toml = format!(
        "{head}{}[[admin.users]]\nname = \"dba\"\npassword_hash = \"{admin_hash}\"\n{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&t1, &bed.a, &t1, ""),
        tenant_toml(
            &t2,
            &bed.a,
            &t2,
            &format!("pool_mode = \"transaction\"\npool_size = {t2_pool_size}")
        ),
    );
    (start_proxy(&toml).await, t1, t2)
}

async fn console(addr: SocketAddr) -> Client {
    connect_with(addr, "dba", ADMIN_PASSWORD, "pgtenant", "")
        .await
        .expect("admin connects")
}

/// The rows of one console command, as (column → value) maps.
async fn rows(c: &Client, command: &str) -> Vec<Vec<(String, String)>> {
    c.simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn field<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

fn row_of<'a>(rows: &'a [Vec<(String, String)>], col: &str, value: &str) -> &'a [(String, String)] {
    rows.iter()
        .find(|r| field(r, col) == value)
        .unwrap_or_else(|| panic!("no row with {col} = {value} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_describe_tenants_pools_clients_and_servers() {
    let (proxy, t1, t2) = proxy_with_console().await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    let version = rows(&admin, "SHOW VERSION").await;
    assert_eq!(
        field(&version[0], "version"),
        format!("pgtenant {}", env!("CARGO_PKG_VERSION"))
    );

    // One session-mode client holds a backend connection; one transaction-mode client holds none.
    let c1 = connect(addr, "app", &t1).await.expect("t1 client");
    let c2 = connect(addr, "app", &t2).await.expect("t2 client");
    assert_eq!(whoami(&c1).await, t1);
    assert_eq!(whoami(&c2).await, t2);

    let tenants = rows(&admin, "show tenants;").await;
    let r1 = row_of(&tenants, "tenant", &t1);
    assert_eq!(field(r1, "status"), "active");
    assert_eq!(field(r1, "server"), bed().a.name);
    assert_eq!(field(r1, "pool_mode"), "session");
    assert_eq!(field(r1, "clients"), "1");
    assert_eq!(
        field(row_of(&tenants, "tenant", &t2), "pool_mode"),
        "transaction"
    );

    let pools = rows(&admin, "SHOW POOLS").await;
    let p1 = row_of(&pools, "tenant", &t1);
    assert_eq!(field(p1, "cl_connected"), "1");
    assert_eq!(
        field(p1, "sv_active"),
        "1",
        "the session-mode client holds its connection"
    );
    assert_eq!(field(p1, "cl_waiting"), "0");
    let p2 = row_of(&pools, "tenant", &t2);
    assert_eq!(
        field(p2, "sv_active"),
        "0",
        "between transactions nobody holds one"
    );
    assert_eq!(field(p2, "sv_idle"), "1");

    let clients = rows(&admin, "SHOW CLIENTS").await;
    let mine: Vec<_> = clients
        .iter()
        .filter(|r| field(r, "tenant") == t1)
        .collect();
    assert_eq!(mine.len(), 1, "{clients:?}");
    assert_eq!(field(mine[0], "user"), "app");
    assert!(field(mine[0], "address").starts_with("127.0.0.1:"));

    let servers = rows(&admin, "SHOW SERVERS").await;
    let a = row_of(&servers, "server", bed().a.name);
    assert_eq!(field(a, "port"), bed().a.port.to_string());
    assert_eq!(field(a, "tenants"), "2");
    assert_eq!(field(a, "open"), "2");

    let config = rows(&admin, "SHOW CONFIG").await;
    assert_eq!(
        field(row_of(&config, "key", "admin.database"), "value"),
        "pgtenant"
    );
    let all = format!("{config:?}");
    assert!(
        !all.contains(PASSWORD) && !all.contains(ADMIN_PASSWORD),
        "secrets in SHOW CONFIG"
    );

    // psql prints the same as a table.
    let (ok, out, err) = run(std::process::Command::new(pg_bin("psql"))
        .arg(format!(
            "postgresql://dba:{ADMIN_PASSWORD}@127.0.0.1:{}/pgtenant",
            addr.port()
        ))
        .args(["-X", "-c", "SHOW TENANTS"]));
    assert!(ok, "{err}");
    assert!(
        out.contains(&t1) && out.contains(&t2) && out.contains("pool_mode"),
        "{out}"
    );
    drop((c1, c2));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_disconnects_one_tenants_clients_only() {
    let (proxy, t1, t2) = proxy_with_console().await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    let c1 = connect(addr, "app", &t1).await.expect("t1");
    let c2 = connect(addr, "app", &t2).await.expect("t2");
    admin
        .simple_query(&format!("KILL {t1}"))
        .await
        .expect("kill");
    let e = c1.simple_query("SELECT 1").await.expect_err("killed");
    assert!(
        e.as_db_error().map(|d| d.code().code()) == Some("57P01") || e.is_closed(),
        "{e}"
    );
    assert_eq!(whoami(&c2).await, t2, "the other tenant is untouched");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !rows(&admin, "SHOW CLIENTS")
                .await
                .iter()
                .any(|r| field(r, "tenant") == t1)
        })
        .await
    );
    let e = admin
        .simple_query("KILL nosuchtenant")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "3D000");
    // The tenant itself is not disabled: its clients may come back.
    let again = connect(addr, "app", &t1).await.expect("reconnects");
    assert_eq!(whoami(&again).await, t1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_keeps_out_tenants_and_strangers_and_rejects_what_it_does_not_know() {
    let (proxy, t1, _) = proxy_with_console().await;
    let addr = proxy.addrs[0];
    // A tenant's user with its own (correct) password, a wrong admin password, an unknown user.
    for (user, pw) in [
        ("app", PASSWORD),
        ("dba", "wrong"),
        ("nobody", ADMIN_PASSWORD),
    ] {
        let e = connect_with(addr, user, pw, "pgtenant", "")
            .await
            .expect_err("kept out");
        assert_eq!(sqlstate(&e), "28P01", "{user}");
    }
    // A tenant user naming the tenant as a suffix still lands on the console's login, not a tenant.
    let e = connect_with(addr, &format!("app.{t1}"), PASSWORD, "pgtenant", "")
        .await
        .expect_err("kept out");
    assert_eq!(sqlstate(&e), "28P01");
    let admin = console(addr).await;
    let e = admin
        .simple_query("DROP TABLE x")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "42601");
    assert!(
        e.as_db_error()
            .and_then(|d| d.hint())
            .unwrap_or("")
            .contains("SHOW POOLS")
    );
    let e = admin
        .query("SELECT $1::text", &[&"x"])
        .await
        .expect_err("extended");
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(
        rows(&admin, "SHOW VERSION").await.len(),
        1,
        "the session goes on"
    );
    let empty = admin.simple_query("").await.expect("empty query");
    assert!(
        empty
            .iter()
            .all(|m| !matches!(m, SimpleQueryMessage::Row(_)))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_the_console_stops_the_proxy() {
    let (proxy, t1, _) = proxy_with_console().await;
    let addr = proxy.addrs[0];
    let client = connect(addr, "app", &t1).await.expect("client");
    let admin = console(addr).await;
    admin
        .simple_query("SHUTDOWN")
        .await
        .expect("shutdown accepted");
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown_requested())
        .await
        .expect("the proxy saw the request");
    // The idle client is closed by the drain that follows (57P01 on its socket).
    assert!(
        eventually(Duration::from_secs(10), || async { client.is_closed() }).await,
        "the idle client was closed"
    );
    proxy.shutdown().await;
    assert!(
        connect(addr, "app", &t1).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_live_settings_reports_restarts_and_refuses_a_bad_file() {
    let bed = bed();
    let (t1, t2) = (unique("rel"), unique("rel"));
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let admin_hash = postgres_protocol::password::scram_sha_256(ADMIN_PASSWORD.as_bytes());
    let base = format!(
        "[[admin.users]]\nname = \"dba\"\npassword_hash = \"{admin_hash}\"\n{}{}",
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&t1, &bed.a, &t1, ""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, format!("{}{base}", listener_toml("scram-sha-256"))).expect("write");
    let config = pgtenant::config::Config::load(&path).expect("valid");
    let proxy = pgtenant::server::start(config).await.expect("starts");
    proxy.shared.set_config_path(path.clone());
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    assert!(
        connect(addr, "app", &t2).await.is_err(),
        "t2 is not in the file yet"
    );

    // New pool size and pause timeout, a second tenant, and a listener change.
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[proxy]\npause_timeout_ms = 1234\ntcp_defer_accept_secs = 10\nlog_flush_ms = 20\n[pool]\nsize = 7\n{base}{}",
            tenant_toml(&t2, &bed.a, &t2, "")
        ),
    )
    .expect("write");
    let report = rows(&admin, "RELOAD").await;
    let status = |key: &str| field(row_of(&report, "key", key), "status").to_owned();
    assert_eq!(status("pool.size"), "applied");
    assert_eq!(field(row_of(&report, "key", "pool.size"), "value"), "7");
    assert_eq!(status("proxy.pause_timeout_ms"), "applied");
    assert_eq!(status("tenants (file)"), "applied");
    assert_eq!(status("listeners"), "needs restart");
    assert_eq!(status("proxy.tcp_defer_accept_secs"), "needs restart");
    assert_eq!(status("proxy.log_flush_ms"), "needs restart");
    let c2 = connect(addr, "app", &t2)
        .await
        .expect("the new tenant routes");
    assert_eq!(whoami(&c2).await, t2);
    let c1 = connect(addr, "app", &t1).await.expect("t1 still routes");
    assert_eq!(whoami(&c1).await, t1);
    let pools = rows(&admin, "SHOW POOLS").await;
    assert_eq!(field(row_of(&pools, "tenant", &t1), "pool_size"), "7");
    let config = rows(&admin, "SHOW CONFIG").await;
    assert!(
        field(row_of(&config, "key", "listeners"), "value").starts_with("127.0.0.1:0"),
        "the running listener is shown, not the one waiting for a restart"
    );
    assert_eq!(
        field(
            row_of(&config, "key", "proxy.tcp_defer_accept_secs"),
            "value"
        ),
        "45"
    );
    assert_eq!(
        field(row_of(&config, "key", "proxy.log_flush_ms"), "value"),
        "100"
    );

    // A broken file changes nothing and says where it is broken.
    std::fs::write(&path, format!("[pool]\nsize = \"seven\"\n{base}")).expect("write");
    let e = admin.simple_query("RELOAD").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "F0000");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("line 2") && message.contains("unchanged"),
        "{message}"
    );
    let config = rows(&admin, "SHOW CONFIG").await;
    assert_eq!(field(row_of(&config, "key", "pool.size"), "value"), "7");
    assert_eq!(
        whoami(&connect(addr, "app", &t2).await.expect("still")).await,
        t2
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_counts_each_tenants_transactions_queries_and_bytes() {
    let (proxy, t1, t2) = proxy_with_console().await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    // Session mode (t1) and transaction mode (t2): five one-statement transactions, then one
    // explicit transaction of three statements in one Query message.
    for t in [&t1, &t2] {
        let c = connect(addr, "app", t).await.expect("client");
        for _ in 0..5 {
            c.simple_query("SELECT 1").await.expect("query");
        }
        c.simple_query("BEGIN; SELECT 2; COMMIT")
            .await
            .expect("transaction");
    }
    let stats = rows(&admin, "SHOW STATS").await;
    for t in [&t1, &t2] {
        let r = row_of(&stats, "tenant", t);
        assert_eq!(field(r, "xact_count"), "6", "{t}: {r:?}");
        assert_eq!(field(r, "query_count"), "6", "{t}: {r:?}");
        let bytes_in: u64 = field(r, "bytes_received").parse().expect("number");
        let bytes_out: u64 = field(r, "bytes_sent").parse().expect("number");
        // Six Query messages out; six results (RowDescription, DataRow, CommandComplete,
        // ReadyForQuery at least) back.
        assert!(bytes_in >= 6 * 14, "{t}: {bytes_in}");
        assert!(bytes_out > bytes_in, "{t}: {bytes_out}");
        assert_eq!(field(r, "wait_count"), "0");
    }
    // t2 has one connection: while a transaction holds it, another client's query waits.
    let holder = connect(addr, "app", &t2).await.expect("holder");
    let waiter = connect(addr, "app", &t2).await.expect("waiter");
    holder.batch_execute("BEGIN").await.expect("begin");
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 3").await.map(|_| ()) });
    assert!(
        eventually(Duration::from_secs(5), || async {
            field(
                row_of(&rows(&admin, "SHOW POOLS").await, "tenant", &t2),
                "cl_waiting",
            ) == "1"
        })
        .await
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    waiting
        .await
        .expect("task")
        .expect("the waiter got the connection");
    let stats = rows(&admin, "SHOW STATS").await;
    let r = row_of(&stats, "tenant", &t2);
    assert_eq!(field(r, "wait_count"), "1", "{r:?}");
    assert_eq!(field(r, "xact_count"), "8", "{r:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_write_the_catalog() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a]).await;
    let slug = unique("dis");
    create_tenant_db(&bed.a, &slug).await;
    let catalog = connect_url(&url).await.expect("catalog");
    catalog_add_tenant(&catalog, &slug, &bed.a, &slug).await;
    let admin_hash = postgres_protocol::password::scram_sha_256(ADMIN_PASSWORD.as_bytes());
    let proxy = crate::catalog::proxy_on_catalog(
        &url,
        &format!("[[admin.users]]\nname = \"dba\"\npassword_hash = \"{admin_hash}\"\n"),
    )
    .await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    let held = connect(addr, "app", &slug).await.expect("client");
    admin
        .simple_query(&format!("DISABLE {slug}"))
        .await
        .expect("disable");
    let status: String = catalog
        .query_one(
            "SELECT status FROM pgtenant.tenants WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(status, "disabled", "the catalog holds the change");
    assert!(
        eventually(Duration::from_secs(10), || async { held.is_closed() }).await,
        "the connected client was closed"
    );
    let e = connect(addr, "app", &slug).await.expect_err("refused");
    assert_eq!(sqlstate(&e), "55000");
    admin
        .simple_query(&format!("enable {slug}"))
        .await
        .expect("enable");
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await
    );
    let e = admin
        .simple_query("DISABLE nosuch")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "3D000");
    proxy.shutdown().await;
    // Tenants of the config file are changed in the file.
    let (proxy, t1, _) = proxy_with_console().await;
    let admin = console(proxy.addrs[0]).await;
    let e = admin
        .simple_query(&format!("DISABLE {t1}"))
        .await
        .expect_err("file tenant");
    assert_eq!(sqlstate(&e), "0A000");
    proxy.shutdown().await;
}

/// True when `task` has not finished: it is blocked on something the test still holds.
fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    !task.is_finished()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_running_transactions_then_holds_new_ones_until_resume() {
    let (proxy, t1, t2) = proxy_with_console_and("", 4).await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    // t2 pools by transaction: one client inside a transaction, one pinned (session advisory
    // lock) but between transactions, one idle.
    let running = connect(addr, "app", &t2).await.expect("running");
    running
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    let pinned = connect(addr, "app", &t2).await.expect("pinned");
    pinned
        .simple_query("SELECT pg_advisory_lock(77)")
        .await
        .expect("pin");
    let held = connect(addr, "app", &t2).await.expect("held");
    let other = connect(addr, "app", &t1).await.expect("other tenant");

    let pause = {
        let admin = console(addr).await;
        let t2 = t2.clone();
        tokio::spawn(async move { admin.simple_query(&format!("PAUSE {t2}")).await })
    };
    // PAUSE cannot answer while a transaction of the tenant runs; the pinned client, between
    // transactions, does not keep it waiting.
    assert!(
        eventually(Duration::from_secs(5), || async {
            field(
                row_of(&rows(&admin, "SHOW POOLS").await, "tenant", &t2),
                "paused",
            ) == "true"
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        still_waiting(&pause),
        "PAUSE answered while a transaction ran"
    );
    // New transactions of the paused tenant wait; the running one goes on; others are untouched.
    let waiting = tokio::spawn(async move {
        let r = held.simple_query("SELECT 42").await;
        (held, r)
    });
    assert_eq!(
        running
            .query_one("SELECT 2", &[])
            .await
            .expect("inside the transaction")
            .get::<_, i32>(0),
        2
    );
    assert_eq!(whoami(&other).await, t1);
    running.batch_execute("COMMIT").await.expect("commit");
    let answered = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE answers once the transaction ended")
        .expect("task");
    answered.expect("PAUSE succeeds");
    // Held: the transaction that ended cannot start another, the waiting client stays waiting.
    let next = tokio::spawn(async move {
        let r = running.simple_query("SELECT 43").await;
        (running, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        still_waiting(&waiting) && still_waiting(&next),
        "a held transaction ran"
    );
    let pools = rows(&admin, "SHOW POOLS").await;
    assert_eq!(field(row_of(&pools, "tenant", &t1), "paused"), "false");

    admin
        .simple_query(&format!("RESUME {t2}"))
        .await
        .expect("resume");
    let (_held, r) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("released by RESUME")
        .expect("task");
    assert_eq!(first_value(&r.expect("held query runs")), "42");
    let (_running, r) = next.await.expect("task");
    assert_eq!(first_value(&r.expect("next transaction runs")), "43");
    assert_eq!(
        field(
            row_of(&rows(&admin, "SHOW POOLS").await, "tenant", &t2),
            "paused"
        ),
        "false"
    );
    drop(pinned);

    // PAUSE without a tenant holds every tenant, session pooling too; RESUME lets them go.
    admin.simple_query("PAUSE").await.expect("pause all");
    let session_client = tokio::spawn(async move {
        let r = other.simple_query("SELECT 44").await;
        (other, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        still_waiting(&session_client),
        "a session-mode transaction ran while paused"
    );
    admin.simple_query("RESUME").await.expect("resume all");
    let (_other, r) = tokio::time::timeout(Duration::from_secs(10), session_client)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(first_value(&r.expect("runs after RESUME")), "44");

    let e = admin
        .simple_query("PAUSE nosuchtenant")
        .await
        .expect_err("unknown tenant");
    assert_eq!(sqlstate(&e), "3D000");

    // Through psql: the command tags and the pool's paused column.
    let (ok, out, err) = run(std::process::Command::new(pg_bin("psql"))
        .arg(format!(
            "postgresql://dba:{ADMIN_PASSWORD}@127.0.0.1:{}/pgtenant",
            addr.port()
        ))
        .args(["-X", "-A", "-F", ","])
        .args(["-c", &format!("PAUSE {t2}"), "-c", "SHOW POOLS"])
        .args(["-c", &format!("RESUME {t2}"), "-c", "SHOW POOLS"]));
    assert!(ok, "{err}");
    let t2_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{t2},")))
        .collect();
    assert_eq!(t2_rows.len(), 2, "{out}");
    assert!(
        t2_rows[0].ends_with(",true") && t2_rows[1].ends_with(",false"),
        "{out}"
    );
    assert!(out.contains("PAUSE") && out.contains("RESUME"), "{out}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_outlasted_fails_and_held_clients_give_up_with_57p03() {
    let (proxy, t1, t2) = proxy_with_console_and("[proxy]\npause_timeout_ms = 400\n", 3).await;
    let addr = proxy.addrs[0];
    let admin = console(addr).await;
    let running = connect(addr, "app", &t2).await.expect("running");
    running
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    let e = admin
        .simple_query(&format!("PAUSE {t2}"))
        .await
        .expect_err("the transaction outlasts the pause timeout");
    assert_eq!(sqlstate(&e), "57014");
    // The pause stays in force: a new transaction waits, then gives up with 57P03.
    let held = connect(addr, "app", &t2).await.expect("held");
    let e = held.simple_query("SELECT 1").await.expect_err("gave up");
    assert_eq!(sqlstate(&e), "57P03");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains(&t2), "{message}");
    // A session-mode client of a paused tenant too.
    let session_client = connect(addr, "app", &t1).await.expect("session client");
    admin
        .simple_query(&format!("PAUSE {t1}"))
        .await
        .expect("nothing runs on t1");
    let e = session_client
        .simple_query("SELECT 1")
        .await
        .expect_err("gave up");
    assert_eq!(sqlstate(&e), "57P03");
    // The running transaction was never disturbed, and RESUME lets the tenants work again.
    running.batch_execute("COMMIT").await.expect("commit");
    admin.simple_query("RESUME").await.expect("resume");
    let again = connect(addr, "app", &t2).await.expect("reconnects");
    assert_eq!(whoami(&again).await, t2);
    let again = connect(addr, "app", &t1).await.expect("reconnects");
    assert_eq!(whoami(&again).await, t1);
    proxy.shutdown().await;
}

fn first_value(messages: &[SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_command_through_psql() {
    let bed = bed();
    let (t1, t2) = (unique("psq"), unique("psq"));
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let admin_hash = postgres_protocol::password::scram_sha_256(ADMIN_PASSWORD.as_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    let toml = format!(
        "{}[[admin.users]]\nname = \"dba\"\npassword_hash = \"{admin_hash}\"\n{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&t1, &bed.a, &t1, ""),
        tenant_toml(&t2, &bed.a, &t2, "pool_mode = \"transaction\""),
    );
    std::fs::write(&path, toml).expect("config");
    let proxy = pgtenant::server::start(pgtenant::config::Config::load(&path).expect("valid"))
        .await
        .expect("starts");
    proxy.shared.set_config_path(path.clone());
    let addr = proxy.addrs[0];
    let c1 = connect(addr, "app", &t1).await.expect("t1");
    c1.simple_query("SELECT 1").await.expect("query");
    let c2 = connect(addr, "app", &t2).await.expect("t2");

    let mut psql = std::process::Command::new(pg_bin("psql"));
    psql.arg(format!(
        "postgresql://dba:{ADMIN_PASSWORD}@127.0.0.1:{}/pgtenant",
        addr.port()
    ))
    .args(["-X", "-A", "-F", ","]);
    for command in [
        "SHOW TENANTS".to_owned(),
        "SHOW POOLS".into(),
        "SHOW CLIENTS".into(),
        "SHOW SERVERS".into(),
        "SHOW STATS".into(),
        "SHOW CONFIG".into(),
        "SHOW VERSION".into(),
        format!("PAUSE {t1}"),
        format!("RESUME {t1}"),
        format!("KILL {t2}"),
        format!("DISABLE {t1}"),
        "RELOAD".into(),
        "SHOW NONSENSE".into(),
        "SHUTDOWN".into(),
    ] {
        psql.args(["-c", &command]);
    }
    let (_, out, err) = run(&mut psql);
    let server = bed.a.name;
    let expected = [
        // SHOW TENANTS, SHOW POOLS, SHOW STATS: one row per tenant.
        format!("{t1},active,{server},{t1},{SCRAM_ROLE},session,"),
        format!("{t2},active,{server},{t2},{SCRAM_ROLE},transaction,"),
        format!("{t1},{server},session,"),
        format!("{t1},1,1,"),
        // SHOW CLIENTS lists the console session itself.
        ",(console),dba,127.0.0.1:".into(),
        format!("{server},127.0.0.1,{},", bed.a.port),
        "proxy.pause_timeout_ms,30000".into(),
        format!("pgtenant {}", env!("CARGO_PKG_VERSION")),
        "PAUSE".into(),
        "RESUME".into(),
        "KILL".into(),
        "key,value,status".into(),
        "SHUTDOWN".into(),
    ];
    for line in expected {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&line) || l.contains(&line)),
            "no {line:?} in:\n{out}"
        );
    }
    assert!(
        err.contains("tenants of the config file change in the file"),
        "{err}"
    );
    assert!(err.contains("unknown admin command"), "{err}");
    assert!(
        eventually(Duration::from_secs(5), || async { c2.is_closed() }).await,
        "KILL closed t2's client"
    );
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown_requested())
        .await
        .expect("SHUTDOWN reached the proxy");
    drop(c1);
    proxy.shutdown().await;
}
