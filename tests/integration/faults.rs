//! Faults under the proxy: a backend connection reset mid-reply, a backend that stops answering
//! mid-transaction, the catalog database restarted while clients log in, and the proxy's stderr
//! closed. Each time: no panic, no stuck client, no dirty backend reused, other tenants
//! unaffected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::*;

/// What a [`FaultyLink`] does to the connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Pass,
    /// Stop forwarding either way, sockets kept open: a hung server or network path.
    Freeze,
    /// Reset both sides (RST): a connection cut mid-stream.
    Reset,
}

/// A TCP relay in front of a server that the test can freeze or cut, connection by connection.
struct FaultyLink {
    port: u16,
    links: Arc<Mutex<Vec<watch::Sender<Fault>>>>,
}

impl FaultyLink {
    async fn start(target_port: u16) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let links: Arc<Mutex<Vec<watch::Sender<Fault>>>> = Arc::default();
        let registry = links.clone();
        tokio::spawn(async move {
            while let Ok((mut near, _)) = listener.accept().await {
                let Ok(mut far) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let (tx, mut rx) = watch::channel(Fault::Pass);
                registry.lock().expect("links").push(tx);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut near, &mut far) => return,
                        _ = rx.wait_for(|f| *f != Fault::Pass) => {}
                    }
                    // Frozen: nothing moves until the test resets or ends.
                    let _ = rx.wait_for(|f| *f == Fault::Reset).await;
                    for s in [&near, &far] {
                        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                    }
                });
            }
        });
        FaultyLink { port, links }
    }

    /// Does `fault` to every connection open now that still passes (a reset: to frozen ones
    /// too); later ones pass.
    fn apply(&self, fault: Fault) {
        for link in self.links.lock().expect("links").iter() {
            if fault == Fault::Reset || *link.borrow() == Fault::Pass {
                let _ = link.send(fault);
            }
        }
    }

    /// Connections through the link that still pass.
    fn passing(&self) -> usize {
        let links = self.links.lock().expect("links");
        links.iter().filter(|l| *l.borrow() == Fault::Pass).count()
    }
}

/// A proxy with a tenant reached through `link` (mode `mode`, `extra` in `[pool]`) and one on
/// server A directly; returns it with the two slugs.
async fn proxy_through(
    link: &FaultyLink,
    mode: &str,
    pool: &str,
) -> (pgtenant::server::ProxyHandle, String, String) {
    let (faulty, healthy) = (unique("fault"), unique("fault"));
    create_tenant_db(&bed().a, &faulty).await;
    create_tenant_db(&bed().a, &healthy).await;
    let via = Server {
        name: "via_link",
        port: link.port,
    };
    let toml = format!(
        "{}[pool]\n{pool}\n{}{}{}{}",
        listener_toml("scram-sha-256"),
        via.toml(SCRAM_ROLE),
        bed().a.toml(SCRAM_ROLE),
        tenant_toml(&faulty, &via, &faulty, &format!("pool_mode = \"{mode}\"")),
        tenant_toml(
            &healthy,
            &bed().a,
            &healthy,
            &format!("pool_mode = \"{mode}\"")
        ),
    );
    (start_proxy(&toml).await, faulty, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_reset_mid_reply_ends_only_that_client() {
    for mode in ["session", "transaction"] {
        let link = FaultyLink::start(bed().a.port).await;
        let (proxy, faulty, healthy) = proxy_through(&link, mode, "").await;
        let addr = proxy.addrs[0];
        let mut raw = RawClient::login(addr, "app", &faulty).await;
        raw.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)")
            .await;
        // The reply is streaming: cut it.
        loop {
            if raw.read().await.0 == b'D' {
                break;
            }
        }
        link.apply(Fault::Reset);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut head = [0u8; 5];
                match tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut head).await {
                    Err(_) => return None,
                    Ok(_) if head[0] == b'E' => {
                        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                        let mut body = vec![0u8; len as usize - 4];
                        let _ =
                            tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut body).await;
                        let (code, _) = pgtenant::protocol::messages::error_fields(&body);
                        return code.map(str::to_owned);
                    }
                    Ok(_) => {
                        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                        let mut body = vec![0u8; len as usize - 4];
                        if tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut body)
                            .await
                            .is_err()
                        {
                            return None;
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{mode}: the client was left hanging"));
        assert!(
            ended.is_none() || ended.as_deref() == Some("08006"),
            "{mode}: {ended:?}"
        );
        // The next client gets a fresh connection; the other tenant never noticed.
        let c = connect(addr, "app", &faulty).await.expect("login");
        assert_eq!(whoami(&c).await, faulty, "{mode}");
        let h = connect(addr, "app", &healthy).await.expect("login");
        assert_eq!(whoami(&h).await, healthy, "{mode}");
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_is_closed_after_the_reply_timeout() {
    for mode in ["session", "transaction"] {
        let link = FaultyLink::start(bed().a.port).await;
        let (proxy, faulty, healthy) = proxy_through(&link, mode, "reply_timeout_ms = 1000").await;
        let addr = proxy.addrs[0];
        let c = connect(addr, "app", &faulty).await.expect("login");
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
        assert!(link.passing() >= 1, "{mode}");
        link.apply(Fault::Freeze);
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 2"))
            .await
            .unwrap_or_else(|_| panic!("{mode}: no answer after the reply timeout"))
            .expect_err("the backend is frozen");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{mode}: {:?} {e}",
            started.elapsed()
        );
        assert_eq!(sqlstate(&e), "08006", "{mode}: {e}");
        // The healthy tenant never waited.
        let h = connect(addr, "app", &healthy).await.expect("login");
        assert_eq!(whoami(&h).await, healthy, "{mode}");
        // The frozen connection is not handed out again: a new client gets a new one.
        let c = connect(addr, "app", &faulty).await.expect("login");
        assert_eq!(whoami(&c).await, faulty, "{mode}");
        assert!(link.passing() >= 1, "{mode}: a new backend connection");
        link.apply(Fault::Reset);
        proxy.shutdown().await;
    }
}
