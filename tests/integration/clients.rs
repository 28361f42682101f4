//! Real client programs through the proxy: psql, pgbench and psycopg, as separate processes.

use std::process::Command;

use crate::support::*;

async fn tenant_proxy() -> (pgtenant::server::ProxyHandle, String) {
    single_tenant_proxy("scram-sha-256", "", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_copies_and_sees_notices() {
    let (proxy, slug) = tenant_proxy().await;
    let port = proxy.addrs[0].port().to_string();
    let psql = |sql: &str| {
        let mut c = Command::new(pg_bin("psql"));
        c.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-d",
            &slug,
            "-Atc",
            sql,
        ]);
        c
    };
    let (ok, out, err) = run(&mut psql("SELECT name FROM whoami"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), slug);
    let (ok, _, err) = run(&mut psql(
        "DO $$ BEGIN RAISE NOTICE 'hello from %', current_database(); END $$",
    ));
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("NOTICE:  hello from {slug}")),
        "{err}"
    );
    // COPY in and out through the relay.
    let (ok, _, err) = run(psql("\\copy items FROM stdin").stdin_str("1\tone\n2\ttwo\n"));
    assert!(ok, "{err}");
    let (ok, out, err) = run(&mut psql(
        "COPY (SELECT id, note FROM items ORDER BY id) TO STDOUT",
    ));
    assert!(ok, "{err}");
    assert_eq!(out, "1\tone\n2\ttwo\n");
    let (ok, _, err) = run(&mut psql("SELECT 1/0"));
    assert!(!ok);
    assert!(err.contains("division by zero"), "{err}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_in_every_protocol_mode() {
    let (proxy, slug) = tenant_proxy().await;
    let port = proxy.addrs[0].port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "app"];
    let (ok, _, err) = run(Command::new(pg_bin("pgbench"))
        .args(base)
        .args(["-i", "-s", "1", "-q", &slug]));
    assert!(ok, "pgbench -i: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run(Command::new(pg_bin("pgbench"))
            .args(base)
            .args(["-M", mode, "-c", "4", "-t", "50", "-S", &slug]));
        assert!(ok, "pgbench -M {mode}: {err}");
        assert!(
            out.contains("number of transactions actually processed: 200/200"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_connects_queries_and_uses_server_side_prepares() {
    let (proxy, slug) = tenant_proxy().await;
    let script = format!(
        r#"
import psycopg
with psycopg.connect("host=127.0.0.1 port={port} user=app password={PASSWORD} dbname={slug}", prepare_threshold=0) as conn:
    for i in range(5):
        row = conn.execute("SELECT name, %s::int FROM whoami", (i,)).fetchone()
        assert row == ("{slug}", i), row
    conn.execute("INSERT INTO items VALUES (%s, %s)", (1, "psycopg"))
    conn.commit()
    print(conn.execute("SELECT note FROM items").fetchone()[0])
"#,
        port = proxy.addrs[0].port()
    );
    let (ok, out, err) = run(Command::new("python3").args(["-c", &script]));
    assert!(
        ok,
        "psycopg failed (is it installed? .ci/run installs it): {err}"
    );
    assert_eq!(out.trim(), "psycopg");
    proxy.shutdown().await;
}

trait StdinStr {
    fn stdin_str(&mut self, input: &str) -> &mut Self;
}

impl StdinStr for Command {
    /// Feeds `input` on standard input through a temporary file.
    fn stdin_str(&mut self, input: &str) -> &mut Self {
        let path = std::env::temp_dir().join(unique("stdin"));
        std::fs::write(&path, input).expect("stdin file");
        self.stdin(std::fs::File::open(&path).expect("stdin file"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_connects_and_uses_server_side_prepares() {
    let (proxy, slug) = tenant_proxy().await;
    // prepareThreshold=1: the driver switches to named server-side statements at once.
    let source = format!(
        r#"
import java.sql.*;
public class Probe {{
    public static void main(String[] a) throws Exception {{
        String url = "jdbc:postgresql://127.0.0.1:{port}/{slug}?prepareThreshold=1&sslmode=disable";
        try (Connection c = DriverManager.getConnection(url, "app", "{PASSWORD}")) {{
            PreparedStatement ps = c.prepareStatement("SELECT name, ?::int FROM whoami");
            for (int i = 0; i < 10; i++) {{
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {{
                    rs.next();
                    if (rs.getInt(2) != i) throw new AssertionError("wrong row");
                    if (i == 9) System.out.println(rs.getString(1));
                }}
            }}
            try (ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")) {{
                rs.next();
                System.out.println(rs.getLong(1) > 0 ? "server-prepared" : "not-prepared");
            }}
        }}
    }}
}}
"#,
        port = proxy.addrs[0].port()
    );
    let out = run_jdbc_program("Probe", &source);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![slug.as_str(), "server-prepared"]
    );
    proxy.shutdown().await;
}
