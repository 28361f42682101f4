//! Tenant resolution and routing across two servers.

use std::time::Duration;

use crate::support::*;

struct TwoTenants {
    proxy: pgtenant::server::ProxyHandle,
    t1: String,
    t2: String,
    db1: String,
    db2: String,
}

async fn two_tenants(extra_config: &str) -> TwoTenants {
    let bed = bed();
    let (t1, t2) = (unique("ra"), unique("rb"));
    let (db1, db2) = (format!("{t1}_db"), format!("{t2}_db"));
    create_tenant_db(&bed.a, &db1).await;
    create_tenant_db(&bed.b, &db2).await;
    let toml = format!(
        "{}{extra_config}\n{}{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        bed.b.toml(SCRAM_ROLE),
        tenant_toml(&t1, &bed.a, &db1, ""),
        tenant_toml(&t2, &bed.b, &db2, "")
    );
    TwoTenants {
        proxy: start_proxy(&toml).await,
        t1,
        t2,
        db1,
        db2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_sql_lands_in_each_tenants_own_database_on_its_own_server() {
    let t = two_tenants("").await;
    let addr = t.proxy.addrs[0];
    let c1 = connect(addr, "app", &t.t1)
        .await
        .expect("tenant 1 connects");
    let c2 = connect(addr, "app", &t.t2)
        .await
        .expect("tenant 2 connects");
    for (c, i) in [(&c1, 1), (&c2, 2)] {
        c.execute("INSERT INTO items VALUES ($1, 'from proxy')", &[&i])
            .await
            .expect("insert");
    }
    assert_eq!(whoami(&c1).await, t.db1);
    assert_eq!(whoami(&c2).await, t.db2);
    let port1: i32 = c1
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0);
    let port2: i32 = c2
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0);
    assert_eq!(
        (port1, port2),
        (i32::from(bed().a.port), i32::from(bed().b.port))
    );
    // Each database holds only its own tenant's row.
    let direct1 = bed().a.superuser(&t.db1).await;
    let direct2 = bed().b.superuser(&t.db2).await;
    let ids = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(direct1
            .query("SELECT id FROM items", &[])
            .await
            .expect("rows")),
        vec![1]
    );
    assert_eq!(
        ids(direct2
            .query("SELECT id FROM items", &[])
            .await
            .expect("rows")),
        vec![2]
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_resolves_and_disagreement_is_refused() {
    let t = two_tenants("").await;
    let addr = t.proxy.addrs[0];
    let by_suffix = connect(addr, &format!("app.{}", t.t2), "")
        .await
        .expect("user suffix");
    assert_eq!(whoami(&by_suffix).await, t.db2);
    let by_suffix_and_db = connect(addr, &format!("app.{}", t.t2), &t.t2)
        .await
        .expect("agreeing strategies");
    assert_eq!(whoami(&by_suffix_and_db).await, t.db2);
    let by_options = connect_with(
        addr,
        "app",
        PASSWORD,
        "",
        &format!("-c pgtenant.tenant={}", t.t1),
    )
    .await
    .expect("options");
    assert_eq!(whoami(&by_options).await, t.db1);
    let conflict = connect(addr, &format!("app.{}", t.t2), &t.t1)
        .await
        .expect_err("conflict refused");
    assert_eq!(sqlstate(&conflict), "08004");
    let msg = conflict
        .as_db_error()
        .expect("db error")
        .message()
        .to_owned();
    assert!(msg.contains(&t.t1) && msg.contains(&t.t2), "{msg}");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_order_and_selection_come_from_config() {
    let t = two_tenants("[proxy]\nresolve = [\"user_suffix\"]\n").await;
    let addr = t.proxy.addrs[0];
    // The database name is not a strategy here, so it does not conflict and does not route.
    let c = connect(addr, &format!("app.{}", t.t1), &t.t2)
        .await
        .expect("suffix only");
    assert_eq!(whoami(&c).await, t.db1);
    let e = connect(addr, "app", &t.t1)
        .await
        .expect_err("database strategy disabled");
    assert_eq!(sqlstate(&e), "3D000");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_is_refused_with_3d000_naming_it_and_a_hint() {
    let t = two_tenants("").await;
    let e = connect(t.proxy.addrs[0], "app", "no_such_tenant")
        .await
        .expect_err("refused");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "3D000");
    assert!(
        db.message().contains("\"no_such_tenant\""),
        "{}",
        db.message()
    );
    assert!(
        db.hint().is_some_and(|h| h.contains("user.TENANT")),
        "{:?}",
        db.hint()
    );
    assert_eq!(db.severity(), "FATAL");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_tenant_is_refused_and_paused_tenant_waits_then_times_out() {
    let bed = bed();
    let (on, off, paused) = (unique("on"), unique("off"), unique("paused"));
    create_tenant_db(&bed.a, &on).await;
    let toml = format!(
        "{}[proxy]\npause_timeout_ms = 400\n{}{}{}{}",
        listener_toml("scram-sha-256"),
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&on, &bed.a, &on, ""),
        tenant_toml(&off, &bed.a, &on, "status = \"disabled\""),
        tenant_toml(&paused, &bed.a, &on, "status = \"paused\"")
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    let e = connect(addr, "app", &off).await.expect_err("disabled");
    assert_eq!(sqlstate(&e), "55000");
    assert!(e.as_db_error().expect("db").message().contains("disabled"));
    let started = std::time::Instant::now();
    let e = connect(addr, "app", &paused)
        .await
        .expect_err("paused past the timeout");
    assert_eq!(sqlstate(&e), "57P03");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the client waited before failing"
    );
    connect(addr, "app", &on)
        .await
        .expect("active tenant unaffected");
    proxy.shutdown().await;
}
