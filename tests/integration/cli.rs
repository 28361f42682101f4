//! The `pgtenant` binary: catalog migrate, serve with signals, and the quick start.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pgtenant");

fn sigterm(child: &std::process::Child, signal: i32) {
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(child.id() as i32, signal) };
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "pgtenant did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new, empty database on the catalog server; returns its URL.
async fn empty_catalog_db() -> String {
    let name = unique("cli");
    let server = &bed().catalog;
    server
        .superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("db");
    server.superuser_url(&name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_migrate_is_idempotent_and_records_versions() {
    let url = empty_catalog_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pgtenant.toml");
    std::fs::write(&cfg, format!("[catalog]\nurl = \"{url}\"\n")).expect("config");
    for expected in ["applied versions [1, 2, 3, 4, 5, 6]", "applied versions []"] {
        let out = Command::new(BIN)
            .args(["catalog", "migrate", "--config"])
            .arg(&cfg)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(expected));
    }
    // The environment variable works too, and the password never reaches argv.
    let out = Command::new(BIN)
        .args(["catalog", "migrate"])
        .env("PGTENANT_CATALOG_URL", &url)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let c = connect_url(&url).await.expect("catalog");
    let versions: Vec<i32> = c
        .query("SELECT version FROM pgtenant.catalog_migrations", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    for table in ["servers", "tenants", "tenant_users"] {
        c.query(&format!("SELECT * FROM pgtenant.{table}"), &[])
            .await
            .expect("table exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_migrates_on_start_routes_and_exits_cleanly_on_sigterm() {
    let bed = bed();
    let url = empty_catalog_db().await;
    let port = pgtenant::localpg::free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pgtenant.toml");
    std::fs::write(
        &cfg,
        format!("[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[catalog]\nurl = \"{url}\"\nmigrate_on_start = true\n"),
    )
    .expect("config");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    // Once the schema exists, register a tenant and reach it through the proxy.
    let slug = unique("served");
    create_tenant_db(&bed.a, &slug).await;
    let migrated = eventually(Duration::from_secs(20), || async {
        match connect_url(&url).await {
            Ok(c) => c.query("SELECT 1 FROM pgtenant.tenants", &[]).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(migrated, "serve applied the catalog migrations");
    let cat = connect_url(&url).await.expect("catalog");
    cat.execute(
        "INSERT INTO pgtenant.servers (name, host, port, backend_user, backend_password) VALUES ('a', '127.0.0.1', $1, $2, $3)",
        &[&i32::from(bed.a.port), &SCRAM_ROLE, &PASSWORD],
    )
    .await
    .expect("server");
    catalog_add_tenant(
        &cat,
        &slug,
        &Server {
            name: "a",
            port: bed.a.port,
        },
        &slug,
    )
    .await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let routed = eventually(Duration::from_secs(10), || async {
        match connect(addr, "app", &slug).await {
            Ok(c) => whoami(&c).await == slug,
            Err(_) => false,
        }
    })
    .await;
    assert!(routed);
    sigterm(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut child, Duration::from_secs(20));
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)
            .expect("log");
        (s, log)
    })
    .await
    .expect("wait");
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert!(
        !status.1.contains(PASSWORD),
        "the log never shows a password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_two_demo_tenants_and_stops_on_ctrl_c() {
    let port = pgtenant::localpg::free_port().expect("port");
    let mut child = Command::new(BIN)
        .args(["quickstart", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("quickstart starts");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let done = line.contains("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(120), lines)
        .await
        .expect("quickstart ready")
        .expect("reader");
    let urls: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("psql \"")
                .and_then(|r| r.split('"').next())
                .map(str::to_owned)
        })
        .collect();
    assert!(urls.len() >= 3, "{lines:?}");
    let psql = |url: &str, sql: &str| {
        let out = Command::new(pg_bin("psql"))
            .args([url, "-XAtc", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        psql(&urls[0], "SELECT body FROM notes"),
        "Acme Corp's first note"
    );
    assert_eq!(
        psql(&urls[1], "SELECT body FROM notes"),
        "Globex Corp's first note"
    );
    assert_eq!(
        psql(&urls[2], "SELECT body FROM notes"),
        "Globex Corp's first note"
    );
    assert!(
        psql(&urls[3], "SELECT count(*) FROM pgtenant.tenants") == "2",
        "catalog URL works"
    );
    sigterm(&child, libc::SIGINT);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(30)))
            .await
            .expect("wait");
    assert!(status.success(), "{status:?}");
    // Everything it started is gone: the catalog server no longer answers.
    let out = Command::new(pg_bin("psql"))
        .args([&urls[3], "-XAtc", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!out.status.success(), "the throwaway cluster was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_cleanly_on_console_shutdown() {
    let port = pgtenant::localpg::free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pgtenant.toml");
    let hash = postgres_protocol::password::scram_sha_256(b"admin-pw");
    std::fs::write(
        &cfg,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[[admin.users]]\nname = \"dba\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .expect("config");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut admin = None;
    for _ in 0..100 {
        if let Ok(c) = connect_with(addr, "dba", "admin-pw", "pgtenant", "").await {
            admin = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = admin.expect("the console answers");
    admin.simple_query("SHUTDOWN").await.expect("shutdown");
    exits_cleanly(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_line_per_connection_start_and_end_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Info lines held far longer than the test runs: they must still reach the log at exit.
    let (child, slug, addr, _) = serve_piped(
        dir.path(),
        "[proxy]\nlog_format = \"json\"\nlog_flush_ms = 10000\n",
    )
    .await;
    // A startup packet with an unknown protocol code: refused during the handshake.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("raw");
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78])
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer),
    )
    .await;
    assert_eq!(answer.first(), Some(&b'E'), "refused with an ErrorResponse");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = stop_and_read_log(child).await;
    assert!(!log.contains(PASSWORD), "no secrets in logs");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let ours = |v: &&serde_json::Value| v["span"]["tenant"].as_str() == Some(slug.as_str());
    let started: Vec<_> = lines
        .iter()
        .filter(ours)
        .filter(|v| message(v) == "client connected")
        .collect();
    assert!(!started.is_empty(), "{log}");
    assert_eq!(started[0]["span"]["user"], "app");
    assert!(
        started[0]["span"]["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:")
    );
    let ended: Vec<_> = lines
        .iter()
        .filter(ours)
        .filter(|v| message(v) == "client disconnected")
        .collect();
    assert_eq!(
        ended.len(),
        started.len(),
        "one end line per start line\n{log}"
    );
    assert!(ended[0]["fields"]["duration_ms"].is_u64(), "{log}");
    // Lines from the handshake carry the connection's fields too.
    let rejected: Vec<_> = lines
        .iter()
        .filter(|v| message(v) == "startup rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{log}");
    assert!(rejected[0]["span"]["id"].is_u64(), "{log}");
    assert!(
        rejected[0]["span"]["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let bed = bed();
    let (t1, t2) = (unique("hup"), unique("hup"));
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let port = pgtenant::localpg::free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pgtenant.toml");
    let base = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{}{}",
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&t1, &bed.a, &t1, "")
    );
    std::fs::write(&cfg, &base).expect("config");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &t1).await.is_ok()
        })
        .await
    );
    // An invalid file is refused and the proxy goes on; a valid one adds the tenant.
    std::fs::write(&cfg, "[pool]\nsize = 0\n").expect("config");
    sigterm(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        connect(addr, "app", &t1).await.is_ok(),
        "the old config stays"
    );
    std::fs::write(&cfg, format!("{base}{}", tenant_toml(&t2, &bed.a, &t2, ""))).expect("config");
    sigterm(&child, libc::SIGHUP);
    let reloaded = eventually(Duration::from_secs(10), || async {
        match connect(addr, "app", &t2).await {
            Ok(c) => whoami(&c).await == t2,
            Err(_) => false,
        }
    })
    .await;
    assert!(reloaded, "SIGHUP brought the new tenant in");
    sigterm(&child, libc::SIGTERM);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
            .await
            .expect("wait");
    assert!(status.success());
}

/// `pgtenant serve` with one tenant on server A, a metrics endpoint, info logs (plain text
/// unless `head` says otherwise) and stderr piped to the test; returns the child, the tenant,
/// and the client and metrics addresses.
async fn serve_piped(
    dir: &std::path::Path,
    head: &str,
) -> (
    std::process::Child,
    String,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let bed = bed();
    let slug = unique("logs");
    create_tenant_db(&bed.a, &slug).await;
    let port = pgtenant::localpg::free_port().expect("port");
    let metrics_port = pgtenant::localpg::free_port().expect("port");
    let cfg = dir.join("pgtenant.toml");
    std::fs::write(
        &cfg,
        format!(
            "{head}[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n{}{}",
            bed.a.toml(SCRAM_ROLE),
            tenant_toml(&slug, &bed.a, &slug, "")
        ),
    )
    .expect("config");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("PGTENANT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let served = eventually(Duration::from_secs(10), || async {
        match connect(addr, "app", &slug).await {
            Ok(c) => whoami(&c).await == slug,
            Err(_) => false,
        }
    })
    .await;
    assert!(served);
    (child, slug, addr, ([127, 0, 0, 1], metrics_port).into())
}

/// Waits (up to 20 s) for `child` to exit, and asserts it exited with success.
async fn exits_cleanly(mut child: std::process::Child) {
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
            .await
            .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

/// Stops `child` with SIGTERM and returns what it logged.
async fn stop_and_read_log(mut child: std::process::Child) -> String {
    sigterm(&child, libc::SIGTERM);
    tokio::task::spawn_blocking(move || {
        assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)
            .expect("log");
        log
    })
    .await
    .expect("wait")
}

/// Sends `startup` on a new connection; true when an ErrorResponse comes back within 10 s.
async fn refused(addr: std::net::SocketAddr, startup: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(startup).await.ok()?;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        answer.first().copied()
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .ok()
        .flatten()
        == Some(b'E')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stalls_drops_lines_and_never_stalls_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, slug, addr, metrics) = serve_piped(dir.path(), "").await;
    // Nobody reads the pipe until the end: once it and the log buffer are full, lines are
    // dropped. Each refused startup logs a line of about 200 bytes: 12,000 are twice what the
    // pipe and the buffer hold.
    let stderr = child.stderr.take().expect("stderr");
    let bad_protocol = [0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..1500 {
                answered += usize::from(refused(addr, &bad_protocol).await);
            }
            answered
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 1500, "every client was answered");
    }
    let c = tokio::time::timeout(Duration::from_secs(10), connect(addr, "app", &slug))
        .await
        .expect("a login is not held up by the log")
        .expect("login");
    assert_eq!(whoami(&c).await, slug);
    let scraped = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(metrics)
            .await
            .expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("response");
        body
    })
    .await
    .expect("metrics answer");
    let dropped: u64 = scraped
        .lines()
        .find_map(|l| l.strip_prefix("pgtenant_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter: {scraped}"));
    assert!(dropped > 0, "{scraped}");
    // Once the log is read again, a warning says how many lines were lost.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let report = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("log lines once read again");
        if line.contains("log lines dropped") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no report");
    };
    assert!(report.contains(" WARN "), "{report}");
    let reported: u64 = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lines="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        reported > 0 && reported <= dropped,
        "{report} ({dropped} dropped)"
    );
    drop(c);
    sigterm(&child, libc::SIGTERM);
    exits_cleanly(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_a_client_sends_cannot_forge_plain_log_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, slug, addr, _) = serve_piped(dir.path(), "").await;
    let forged = "x\n2026-12-01T00:00:00.000000Z  INFO pgtenant::session: forged \x1b[31mred";
    let startup = |user: &str, db: &str| {
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", user), ("database", db)],
            &mut out,
        )
        .expect("startup");
        out.to_vec()
    };
    // An unknown tenant, and a known one with a user that does not exist, sent no password.
    assert!(refused(addr, &startup("app", forged)).await);
    connect_with(addr, forged, "wrong", &slug, "")
        .await
        .expect_err("no such user");
    let log = stop_and_read_log(child).await;
    assert!(log.contains("forged"), "the attempts were logged: {log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00"),
            "forged line: {log}"
        );
        assert!(!line.contains('\x1b'), "raw escape: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_changes_nothing_for_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, slug, addr, _) = serve_piped(dir.path(), "").await;
    // Every log line from here on fails to be written (EPIPE).
    drop(child.stderr.take());
    for _ in 0..20 {
        let c = connect(addr, "app", &slug).await.expect("login");
        assert_eq!(whoami(&c).await, slug);
    }
    let bad_protocol = [0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78];
    assert!(
        refused(addr, &bad_protocol).await,
        "warnings are written too"
    );
    sigterm(&child, libc::SIGTERM);
    exits_cleanly(child).await;
}
