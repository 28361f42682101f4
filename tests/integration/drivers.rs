//! Real drivers through transaction pooling, several clients at once on fewer connections, each
//! preparing statements with the same and with different names and texts: psycopg 3, asyncpg,
//! node-postgres and the PostgreSQL JDBC driver, as separate processes (.ci/run installs them).

use std::process::Command;

use crate::support::*;

/// A transaction-mode tenant with 3 connections for 8 clients.
async fn txn_tenant() -> (pgtenant::server::ProxyHandle, String, u16) {
    let (proxy, slug) = single_tenant_proxy(
        "scram-sha-256",
        "",
        "pool_mode = \"transaction\"\npool_size = 3",
    )
    .await;
    let port = proxy.addrs[0].port();
    (proxy, slug, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepares_and_deallocates_in_transaction_mode() {
    let (proxy, slug, port) = txn_tenant().await;
    let script = format!(
        r#"
import threading, psycopg
errors = []
def client(k):
    try:
        dsn = "host=127.0.0.1 port={port} user=app password={PASSWORD} dbname={slug}"
        with psycopg.connect(dsn, prepare_threshold=0, autocommit=(k % 2 == 0)) as conn:
            # A small cache makes psycopg deallocate statements as it goes.
            conn.prepared_max = 2
            for i in range(30):
                row = conn.execute("SELECT name, %s::int FROM whoami", (i,)).fetchone()
                assert row == ("{slug}", i), row
                row = conn.execute("SELECT %s::int + " + str(k), (i,)).fetchone()
                assert row == (i + k,), row
                row = conn.execute("SELECT %s::text || 'x'", (str(i),)).fetchone()
                assert row == (str(i) + "x",), row
                if not conn.autocommit:
                    conn.commit()
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
print("ok")
"#
    );
    let (ok, out, err) = run(Command::new("python3").args(["-c", &script]));
    assert!(ok, "psycopg: {err}");
    assert_eq!(out.trim(), "ok");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_with_its_statement_cache_works_in_transaction_mode() {
    let (proxy, slug, port) = txn_tenant().await;
    let script = format!(
        r#"
import asyncio, asyncpg
async def client(k):
    conn = await asyncpg.connect(host="127.0.0.1", port={port}, user="app", password="{PASSWORD}", database="{slug}", ssl=False)
    try:
        for i in range(30):
            assert await conn.fetchval("SELECT name FROM whoami WHERE $1::int >= 0", i) == "{slug}"
            assert await conn.fetchval("SELECT $1::int + " + str(k), i) == i + k
            async with conn.transaction():
                stmt = await conn.prepare("SELECT $1::int * 2")
                assert await stmt.fetchval(i) == 2 * i
    finally:
        await conn.close()
async def main():
    await asyncio.gather(*(client(k) for k in range(8)))
    print("ok")
asyncio.run(main())
"#
    );
    let (ok, out, err) = run(Command::new("python3").args(["-c", &script]));
    assert!(ok, "asyncpg (is it installed? .ci/run installs it): {err}");
    assert_eq!(out.trim(), "ok");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries_work_in_transaction_mode() {
    let (proxy, slug, port) = txn_tenant().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/pg").exists(),
        "node-postgres missing: .ci/run runs npm ci in tests/node"
    );
    let script = format!(
        r#"
const {{ Client }} = require('pg');
async function client(k) {{
  const c = new Client({{ host: '127.0.0.1', port: {port}, user: 'app', password: '{PASSWORD}', database: '{slug}' }});
  await c.connect();
  try {{
    for (let i = 0; i < 30; i++) {{
      let r = await c.query({{ name: 'who', text: 'SELECT name, $1::int AS n FROM whoami', values: [i] }});
      if (r.rows[0].name !== '{slug}' || r.rows[0].n !== i) throw new Error('wrong row ' + JSON.stringify(r.rows));
      // Same name in every client, a different text per client.
      r = await c.query({{ name: 'mine', text: 'SELECT $1::int + ' + k + ' AS v', values: [i] }});
      if (r.rows[0].v !== i + k) throw new Error('wrong sum ' + JSON.stringify(r.rows));
    }}
  }} finally {{
    await c.end();
  }}
}}
Promise.all([...Array(8).keys()].map(client)).then(() => console.log('ok'), (e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let (ok, out, err) = run(Command::new("node").current_dir(&dir).args(["-e", &script]));
    assert!(ok, "node-postgres: {err}");
    assert_eq!(out.trim(), "ok");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_server_side_prepares_work_in_transaction_mode() {
    let (proxy, slug, port) = txn_tenant().await;
    // The default prepareThreshold (5): the driver switches to named server-side statements
    // after five executions of a PreparedStatement.
    let source = format!(
        r#"
import java.sql.*;
import java.util.*;
public class TxnProbe {{
    public static void main(String[] a) throws Exception {{
        String url = "jdbc:postgresql://127.0.0.1:{port}/{slug}?sslmode=disable";
        List<Thread> threads = new ArrayList<>();
        List<Throwable> errors = Collections.synchronizedList(new ArrayList<>());
        java.util.concurrent.atomic.AtomicBoolean serverPrepared = new java.util.concurrent.atomic.AtomicBoolean();
        for (int k = 0; k < 8; k++) {{
            final int kk = k;
            Thread t = new Thread(() -> {{
                try (Connection c = DriverManager.getConnection(url, "app", "{PASSWORD}")) {{
                    PreparedStatement shared = c.prepareStatement("SELECT name, ?::int FROM whoami");
                    PreparedStatement own = c.prepareStatement("SELECT ?::int + " + kk);
                    for (int i = 0; i < 20; i++) {{
                        shared.setInt(1, i);
                        try (ResultSet rs = shared.executeQuery()) {{
                            rs.next();
                            if (!rs.getString(1).equals("{slug}") || rs.getInt(2) != i) throw new AssertionError("wrong row");
                        }}
                        own.setInt(1, i);
                        try (ResultSet rs = own.executeQuery()) {{
                            rs.next();
                            if (rs.getInt(1) != i + kk) throw new AssertionError("wrong sum");
                        }}
                    }}
                    // In a transaction too.
                    c.setAutoCommit(false);
                    for (int i = 0; i < 10; i++) {{
                        own.setInt(1, i);
                        try (ResultSet rs = own.executeQuery()) {{ rs.next(); }}
                    }}
                    // The backend of this transaction has the statement under pgtenant's name
                    // (one no client holds any more is closed, so look while this one does).
                    try (ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgtenant_%'")) {{
                        rs.next();
                        if (rs.getLong(1) > 0) serverPrepared.set(true);
                    }}
                    c.commit();
                }} catch (Throwable e) {{ errors.add(e); }}
            }});
            threads.add(t);
            t.start();
        }}
        for (Thread t : threads) t.join();
        if (!errors.isEmpty()) {{ errors.get(0).printStackTrace(); System.exit(1); }}
        System.out.println(serverPrepared.get() ? "server-prepared" : "not-prepared");
    }}
}}
"#
    );
    let out = run_jdbc_program("TxnProbe", &source);
    assert_eq!(out.trim(), "server-prepared");
    proxy.shutdown().await;
}
