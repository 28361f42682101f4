//! Hostile and broken clients: each gets an error or a closed socket, nobody else notices, and
//! nothing in the proxy panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

static PROXY_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics raised inside the proxy's own source (tests' assertion panics are elsewhere).
fn count_proxy_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().starts_with("src/"))
            {
                PROXY_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

async fn proxy(extra: &str) -> (pgtenant::server::ProxyHandle, String) {
    count_proxy_panics();
    single_tenant_proxy("scram-sha-256", extra, "").await
}

/// Sends `bytes`, then reads whatever comes back until the proxy closes (or 5 s pass).
async fn send_and_collect(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    reply
}

fn startup_bytes(version: u32, body: &[u8]) -> Vec<u8> {
    [
        &((body.len() + 8) as u32).to_be_bytes()[..],
        &version.to_be_bytes(),
        body,
    ]
    .concat()
}

fn error_code(reply: &[u8]) -> Option<String> {
    if reply.first() != Some(&b'E') || reply.len() < 5 {
        return None;
    }
    let (code, _) = pgtenant::protocol::messages::error_fields(&reply[5..]);
    code.map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_08p01() {
    let (proxy, slug) = proxy("").await;
    let addr = proxy.addrs[0];
    let mut cases: Vec<Vec<u8>> = vec![
        1_000_000u32.to_be_bytes().to_vec(),           // oversized length
        3u32.to_be_bytes().to_vec(),                   // shorter than the header
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // wrong protocol
        startup_bytes(196_608, b"user"),               // no NUL
    ];
    // Startup with no user name: 28000.
    let no_user = startup_bytes(196_608, b"database\0x\0\0");
    assert_eq!(
        error_code(&send_and_collect(addr, &no_user).await).as_deref(),
        Some("28000")
    );
    // Protocol 2: unsupported.
    let v2 = startup_bytes(0x0002_0000, b"user\0app\0\0");
    assert_eq!(
        error_code(&send_and_collect(addr, &v2).await).as_deref(),
        Some("0A000")
    );
    for case in cases.drain(..) {
        assert_eq!(
            error_code(&send_and_collect(addr, &case).await).as_deref(),
            Some("08P01"),
            "{case:?}"
        );
    }
    connect(addr, "app", &slug)
        .await
        .expect("a normal client still gets in");
    assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_requests_are_refused_with_n_and_the_session_goes_on() {
    let (proxy, slug) = proxy("").await;
    for code in [80_877_104u32, 80_877_103] {
        let mut s = TcpStream::connect(proxy.addrs[0]).await.expect("connect");
        s.write_all(&[&8u32.to_be_bytes()[..], &code.to_be_bytes()].concat())
            .await
            .expect("request");
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, b"N");
    }
    // psql's default sslmode=prefer does exactly this, then logs in in plain text.
    let out = std::process::Command::new(pg_bin("psql"))
        .arg(format!(
            "postgresql://app:{PASSWORD}@127.0.0.1:{}/{slug}?sslmode=prefer",
            proxy.addrs[0].port()
        ))
        .args(["-XAtc", "SELECT name FROM whoami"])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        slug,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_vanishing_clients_are_cut_off_without_affecting_others() {
    // (With deferred accept the kernel would hold the silent client instead: see below.)
    let (proxy, slug) = proxy(
        "[proxy]\nstartup_timeout_ms = 300\nmax_client_connections = 50\ntcp_defer_accept_secs = 0\n",
    )
    .await;
    let addr = proxy.addrs[0];
    // Connects and says nothing: closed after the startup timeout with an error.
    let silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
            .await
            .map(|_| reply)
    });
    // Half a startup packet, then gone.
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(&[0, 0, 0, 40, 0, 3]).await.expect("write");
    drop(half);
    // Vanishes in the middle of SCRAM.
    let mut mid_auth = TcpStream::connect(addr).await.expect("connect");
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "app"), ("database", slug.as_str())],
        &mut out,
    )
    .expect("startup");
    mid_auth.write_all(&out).await.expect("write");
    let mut first = [0u8; 1];
    mid_auth.read_exact(&mut first).await.expect("auth request");
    assert_eq!(&first, b"R");
    drop(mid_auth);
    // Everyone else is fine meanwhile.
    let c = connect(addr, "app", &slug).await.expect("normal client");
    c.query("SELECT 1", &[]).await.expect("query");
    let reply = silent
        .await
        .expect("task")
        .expect("silent client closed in time");
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"));
    assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_deferred_accept_the_startup_timeout_starts_at_the_first_bytes() {
    // The default defers accepting until the client sends something: a client silent for
    // longer than the startup timeout is not cut off (the proxy has not seen it yet) and logs
    // in when it speaks. Without the socket option it would get 08P01 after 300 ms, as in
    // `silent_and_vanishing_clients_are_cut_off_without_affecting_others`.
    let (proxy, slug) = proxy("[proxy]\nstartup_timeout_ms = 300\n").await;
    let mut slow = TcpStream::connect(proxy.addrs[0]).await.expect("connect");
    let mut early = [0u8; 1];
    let silent = tokio::time::timeout(Duration::from_millis(1500), slow.read(&mut early)).await;
    assert!(
        silent.is_err(),
        "the proxy answered a client it should not have accepted yet"
    );
    let mut raw = RawClient::login_on(slow, "app", &slug).await;
    let (tags, status) = raw.query("SELECT 1").await;
    assert_eq!(
        tags.first(),
        Some(&b'T'),
        "row description after a late login"
    );
    assert_eq!((tags, status), (b"TDC".to_vec(), b'I'));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_after_login_ends_only_that_session() {
    let (proxy, slug) = proxy("").await;
    let addr = proxy.addrs[0];
    let other = connect(addr, "app", &slug).await.expect("bystander");
    let mut raw = RawClient::login(addr, "app", &slug).await;
    raw.stream
        .write_all(&[b'Q', 0, 0, 0, 2])
        .await
        .expect("write bad frame");
    let (tag, body) = raw.read().await;
    assert_eq!(tag, b'E');
    assert_eq!(
        pgtenant::protocol::messages::error_fields(&body).0,
        Some("08P01")
    );
    other
        .query("SELECT 1", &[])
        .await
        .expect("bystander unaffected");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_from_many_clients_never_panics_the_proxy() {
    let (proxy, slug) = proxy("[proxy]\nstartup_timeout_ms = 500\n").await;
    let addr = proxy.addrs[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let len = rng.random_range(0..300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Every other one starts with a plausible length and protocol version.
        if i % 2 == 0 && bytes.len() >= 8 {
            let n = bytes.len() as u32;
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            bytes[4..8].copy_from_slice(&196_608u32.to_be_bytes());
        }
        tasks.push(tokio::spawn(
            async move { send_and_collect(addr, &bytes).await },
        ));
    }
    for t in tasks {
        t.await.expect("garbage client task");
    }
    let c = connect(addr, "app", &slug)
        .await
        .expect("normal client after the storm");
    c.query("SELECT 1", &[]).await.expect("query");
    assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_global_limit_get_53300() {
    let (proxy, slug) = proxy("[proxy]\nmax_client_connections = 2\n").await;
    let addr = proxy.addrs[0];
    let _a = connect(addr, "app", &slug).await.expect("1");
    let _b = connect(addr, "app", &slug).await.expect("2");
    let e = connect(addr, "app", &slug)
        .await
        .expect_err("3 is one too many");
    assert_eq!(sqlstate(&e), "53300");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_connected_clients_57p01() {
    let (proxy, slug) = proxy("").await;
    let mut raw = RawClient::login(proxy.addrs[0], "app", &slug).await;
    raw.query("SELECT 1").await;
    proxy.shutdown().await;
    let (tag, body) = raw.read().await;
    assert_eq!(tag, b'E');
    assert_eq!(
        pgtenant::protocol::messages::error_fields(&body).0,
        Some("57P01")
    );
}

/// Well-framed messages with random or half-valid bodies, so they reach the transaction-mode
/// decoding of Parse, Bind, Describe, Close and Query.
fn garbage_frames(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    const TAGS: &[u8] = b"PBDCESHQFdcfZXx\x00";
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..12) {
        let tag = TAGS[rng.random_range(0..TAGS.len())];
        let body: Vec<u8> = match rng.random_range(0..4) {
            0 => b"s1\0SELECT 1\0\0\0".to_vec(),
            1 => b"\0s1\0\0\0\0\0\0\0".to_vec(),
            2 => b"Ss1\0".to_vec(),
            _ => (0..rng.random_range(0..40))
                .map(|_| {
                    if rng.random_bool(0.2) {
                        0
                    } else {
                        rng.random()
                    }
                })
                .collect(),
        };
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_messages_in_transaction_mode_never_panic() {
    count_proxy_panics();
    let (proxy, slug) = single_tenant_proxy(
        "trust",
        "",
        "pool_mode = \"transaction\"\npool_size = 3\ncheckout_timeout_ms = 3000",
    )
    .await;
    let addr = proxy.addrs[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let bytes = garbage_frames(&mut rng);
        let slug = slug.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = RawClient::login(addr, "app", &slug).await;
            let _ = raw.stream.write_all(&bytes).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), raw.stream.read_to_end(&mut sink))
                .await;
        }));
    }
    for t in tasks {
        t.await.expect("garbage client task");
    }
    let c = connect(addr, "app", &slug)
        .await
        .expect("normal client after");
    assert_eq!(whoami(&c).await, slug);
    assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}
