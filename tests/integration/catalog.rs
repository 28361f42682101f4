//! The Postgres catalog: live changes by LISTEN/NOTIFY, and serving through a catalog outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

pub async fn proxy_on_catalog(url: &str, extra: &str) -> pgtenant::server::ProxyHandle {
    let toml = format!(
        "{}{extra}\n[catalog]\nurl = \"{url}\"\nreload_interval_ms = 60000\n",
        listener_toml("scram-sha-256")
    );
    let proxy = start_proxy(&toml).await;
    let mut updates = proxy.shared.catalog.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        updates.wait_for(|s| s.source == pgtenant::tenant::snapshot::SnapshotSource::Catalog),
    )
    .await
    .expect("first catalog load")
    .expect("catalog alive");
    proxy
}

async fn routes_to(addr: std::net::SocketAddr, tenant: &str, db: &str) -> bool {
    match connect(addr, "app", tenant).await {
        Ok(c) => whoami(&c).await == db,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_apply_without_restart() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a, &bed.b]).await;
    let cat = connect_url(&url).await.expect("catalog");
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    let slug = unique("live");
    let (db_a, db_b) = (format!("{slug}_a"), format!("{slug}_b"));
    create_tenant_db(&bed.a, &db_a).await;
    create_tenant_db(&bed.b, &db_b).await;

    assert_eq!(
        sqlstate(&connect(addr, "app", &slug).await.expect_err("not yet")),
        "3D000"
    );
    catalog_add_tenant(&cat, &slug, &bed.a, &db_a).await;
    assert!(
        eventually(Duration::from_secs(5), || routes_to(addr, &slug, &db_a)).await,
        "insert routed"
    );
    let old = connect(addr, "app", &slug)
        .await
        .expect("connects before the move");

    // Move: new connections go to server B; the open session stays where it was.
    cat.execute(
        "UPDATE pgtenant.tenants SET server = $1, database = $2 WHERE slug = $3",
        &[&bed.b.name, &db_b, &slug],
    )
    .await
    .expect("move");
    assert!(
        eventually(Duration::from_secs(5), || routes_to(addr, &slug, &db_b)).await,
        "move routed"
    );
    assert_eq!(whoami(&old).await, db_a);

    // A new password hash applies to new logins.
    let new_hash = postgres_protocol::password::scram_sha_256(b"rotated");
    cat.execute(
        "UPDATE pgtenant.tenant_users SET password_hash = $1 WHERE tenant = $2",
        &[&new_hash, &slug],
    )
    .await
    .expect("rotate");
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect_with(addr, "app", "rotated", &slug, "")
                .await
                .is_ok()
        })
        .await
    );

    cat.execute("DELETE FROM pgtenant.tenants WHERE slug = $1", &[&slug])
        .await
        .expect("delete");
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect(addr, "app", &slug)
                .await
                .err()
                .is_some_and(|e| sqlstate(&e) == "3D000")
        })
        .await,
        "delete applied"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_tenant_clients_wait_and_proceed_on_resume() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a]).await;
    let cat = connect_url(&url).await.expect("catalog");
    let slug = unique("pause");
    create_tenant_db(&bed.a, &slug).await;
    catalog_add_tenant(&cat, &slug, &bed.a, &slug).await;
    cat.execute(
        "UPDATE pgtenant.tenants SET status = 'paused' WHERE slug = $1",
        &[&slug],
    )
    .await
    .expect("pause");
    let proxy = proxy_on_catalog(&url, "[proxy]\npause_timeout_ms = 20000\n").await;
    let addr = proxy.addrs[0];
    let slug2 = slug.clone();
    let waiting = tokio::spawn(async move { connect(addr, "app", &slug2).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the client waits while the tenant is paused"
    );
    cat.execute(
        "UPDATE pgtenant.tenants SET status = 'active' WHERE slug = $1",
        &[&slug],
    )
    .await
    .expect("resume");
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("client proceeds after resume")
        .expect("task")
        .expect("connects");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_tenants_keep_working_while_the_catalog_restarts_under_logins() {
    let bed = bed();
    // A catalog cluster of this test's own, since it gets stopped.
    let (mut own, cat_server) = own_server("own_catalog").await;
    let url = create_catalog(&cat_server, &[&bed.a]).await;
    let slug = unique("outage");
    create_tenant_db(&bed.a, &slug).await;
    {
        let cat = connect_url(&url).await.expect("catalog");
        catalog_add_tenant(&cat, &slug, &bed.a, &slug).await;
    }
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    assert!(routes_to(addr, &slug, &slug).await);

    // Clients log in the whole time the catalog goes down and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let logins = tokio::spawn({
        let (stop, slug) = (stop.clone(), slug.clone());
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let login =
                    tokio::time::timeout(Duration::from_secs(10), connect(addr, "app", &slug));
                match login.await {
                    Ok(Ok(c)) if whoami(&c).await == slug => ok += 1,
                    Ok(Ok(_)) => failed.push("routed elsewhere".to_owned()),
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("login hung".to_owned()),
                }
            }
            (ok, failed)
        }
    });
    own = stop_own(own).await;
    // Give the proxy time to notice and fail a reconnect or two.
    assert!(
        eventually(Duration::from_secs(10), || async {
            proxy.shared.catalog.health().last_error.is_some()
        })
        .await,
        "outage noticed"
    );
    for _ in 0..3 {
        assert!(
            routes_to(addr, &slug, &slug).await,
            "known tenant still routed during the outage"
        );
    }

    own = restart_own(own).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = logins.await.expect("logins");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 0);
    let slug2 = unique("after");
    create_tenant_db(&bed.a, &slug2).await;
    let cat = connect_url(&url).await.expect("catalog back");
    catalog_add_tenant(&cat, &slug2, &bed.a, &slug2).await;
    assert!(
        eventually(Duration::from_secs(15), || routes_to(addr, &slug2, &slug2)).await,
        "the proxy reconnected by itself and follows changes again"
    );
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop(own))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reload_catches_changes_whose_notification_was_missed() {
    let bed = bed();
    let url = create_catalog(&bed.catalog, &[&bed.a]).await;
    let cat = connect_url(&url).await.expect("catalog");
    let toml = format!(
        "{}[catalog]\nurl = \"{url}\"\nreload_interval_ms = 300\n",
        listener_toml("scram-sha-256")
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addrs[0];
    // Silence the triggers: only the timer can bring this tenant in.
    cat.batch_execute(
        "ALTER TABLE pgtenant.tenants DISABLE TRIGGER tenants_notify;
         ALTER TABLE pgtenant.tenant_users DISABLE TRIGGER tenant_users_notify;",
    )
    .await
    .expect("disable triggers");
    let slug = unique("quiet");
    create_tenant_db(&bed.a, &slug).await;
    catalog_add_tenant(&cat, &slug, &bed.a, &slug).await;
    assert!(
        eventually(Duration::from_secs(10), || routes_to(addr, &slug, &slug)).await,
        "the full reload picked up the silent insert"
    );
    proxy.shutdown().await;
}
