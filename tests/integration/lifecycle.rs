//! The tenant lifecycle through the `pgtenant` binary: servers, tenants in each isolation mode
//! (provisioned on a real cluster, routed by a proxy following the catalog), isolation escape
//! attempts, clean failure, migrations across many tenants, and catalog rows written by hand.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::catalog::proxy_on_catalog;
use crate::support::*;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_pgtenant");

/// Runs the binary against `catalog` with `stdin` fed in: (success, stdout, stderr).
fn pgtenant(catalog: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("PGTENANT_CATALOG_URL", catalog)
        .env("PGTENANT_LOG", "warn")
        .env_remove("PGTENANT_MIGRATIONS")
        .env_remove("PGTENANT_SERVER_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgtenant runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("pgtenant exits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`pgtenant`] on a blocking thread: (success, stdout and stderr together).
async fn run_cli(catalog: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let (catalog, stdin) = (catalog.to_owned(), stdin.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (success, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgtenant(&catalog, &args, &stdin)
    })
    .await
    .expect("task");
    (success, format!("{out}{err}"))
}

/// Runs the CLI, asserting success; returns its output.
pub(crate) async fn ok(catalog: &str, args: &[&str], stdin: &str) -> String {
    let (success, out) = run_cli(catalog, args, stdin).await;
    assert!(success, "pgtenant {args:?} failed:\n{out}");
    out
}

/// Runs the CLI, asserting failure; returns its output.
pub(crate) async fn fails(catalog: &str, args: &[&str], stdin: &str) -> String {
    let (success, out) = run_cli(catalog, args, stdin).await;
    assert!(!success, "pgtenant {args:?} should have failed:\n{out}");
    out
}

/// A fresh migrated catalog with servers A and B registered through `server add` (admin: the
/// clusters' superuser).
async fn lifecycle_catalog() -> String {
    let url = create_catalog(&bed().catalog, &[]).await;
    for (name, s) in [("a", &bed().a), ("b", &bed().b)] {
        let port = s.port.to_string();
        ok(
            &url,
            &[
                "server",
                "add",
                name,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--admin-user",
                "postgres",
            ],
            &format!("{PASSWORD}\n"),
        )
        .await;
    }
    url
}

/// A migrations directory with `files` (name, SQL).
fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).expect("write migration");
    }
    dir
}

const ITEMS: &str = "CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL);";
const SHARED_ITEMS: &str = "CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL); SELECT pgtenant_share('items');";

fn items_dir(isolation: &str) -> tempfile::TempDir {
    let first = if isolation == "shared" {
        SHARED_ITEMS
    } else {
        ITEMS
    };
    migrations_dir(&[
        ("0001_items.sql", first),
        ("0002_index.sql", "CREATE INDEX items_note ON items (note);"),
    ])
}

/// Creates tenant `slug` with user `app` (password [`PASSWORD`]).
async fn create(url: &str, slug: &str, isolation: &str, dir: &tempfile::TempDir) {
    let path = dir.path().to_string_lossy().into_owned();
    ok(
        url,
        &[
            "tenant",
            "create",
            slug,
            "--server",
            "a",
            "--isolation",
            isolation,
            "--migrations",
            &path,
        ],
        "",
    )
    .await;
    ok(
        url,
        &["tenant", "user", "add", slug, "app"],
        &format!("{PASSWORD}\n"),
    )
    .await;
}

async fn role_exists(server: &Server, role: &str) -> bool {
    let c = server.superuser("postgres").await;
    !c.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .expect("roles")
        .is_empty()
}

async fn database_exists(server: &Server, db: &str) -> bool {
    let c = server.superuser("postgres").await;
    !c.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .expect("databases")
        .is_empty()
}

async fn catalog_has(url: &str, slug: &str) -> bool {
    let c = connect_url(url).await.expect("catalog");
    !c.query("SELECT 1 FROM pgtenant.tenants WHERE slug = $1", &[&slug])
        .await
        .expect("tenants")
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_added_listed_and_removed_without_showing_passwords() {
    let url = lifecycle_catalog().await;
    let list = ok(&url, &["server", "list"], "").await;
    assert!(
        list.contains("127.0.0.1") && list.contains("postgres"),
        "{list}"
    );
    assert!(!list.contains(PASSWORD), "password printed: {list}");
    let again = fails(&url, &["server", "add", "a", "--host", "x"], "pw\n").await;
    assert!(again.contains("already exists"), "{again}");
    let bad = fails(&url, &["server", "add", "Bad\"Name", "--host", "x"], "pw\n").await;
    assert!(bad.contains("invalid server name"), "{bad}");
    for (mode, says) in [
        ("sometimes", "--tls-mode \"sometimes\""),
        ("verify-full", "needs --tls-ca-file"),
    ] {
        let args = ["server", "add", "d", "--host", "x", "--tls-mode", mode];
        let bad = fails(&url, &args, "pw\n").await;
        assert!(bad.contains(says), "{bad}");
    }
    // The env variable is the other way to pass the password; never argv.
    let (success, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let out = Command::new(BIN)
                .args([
                    "server",
                    "add",
                    "c",
                    "--host",
                    "127.0.0.1",
                    "--max-connections",
                    "7",
                    "--tls-mode",
                    "verify-full",
                    "--tls-ca-file",
                    "/etc/ca.pem",
                ])
                .env("PGTENANT_CATALOG_URL", &url)
                .env("PGTENANT_SERVER_PASSWORD", "from-env")
                .stdin(Stdio::null())
                .output()
                .expect("runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    })
    .await
    .expect("task");
    assert!(success, "{out}{err}");
    let c = connect_url(&url).await.expect("catalog");
    let row = c
        .query_one(
            "SELECT backend_password, max_connections, tls_mode, tls_ca_file
             FROM pgtenant.servers WHERE name = 'c'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "from-env");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(7));
    assert_eq!(row.get::<_, String>(2), "verify-full");
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some("/etc/ca.pem")
    );
    // A server holding a tenant stays.
    let slug = unique("srv");
    create(&url, &slug, "schema", &items_dir("schema")).await;
    let refused = fails(&url, &["server", "remove", "a"], "").await;
    assert!(refused.contains("still holds 1 tenant"), "{refused}");
    ok(&url, &["server", "remove", "c"], "").await;
    let list = ok(&url, &["server", "list"], "").await;
    assert!(!list.lines().any(|l| l.starts_with("c ")), "{list}");
    ok(&url, &["tenant", "drop", &slug, "--yes"], "").await;
}

/// Create, route, disable (connected clients leave with 57P01), enable, show, drop: one mode.
async fn lifecycle_in_mode(isolation: &str) {
    let url = lifecycle_catalog().await;
    let slug = unique(&format!("life_{isolation}"));
    let role = format!("pgtenant_t_{slug}");
    create(&url, &slug, isolation, &items_dir(isolation)).await;
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    let routed = eventually(Duration::from_secs(10), || async {
        connect(addr, "app", &slug).await.is_ok()
    })
    .await;
    assert!(routed, "{isolation} tenant never became routable");
    let c = connect(addr, "app", &slug).await.expect("connects");
    c.execute("INSERT INTO items (note) VALUES ('hello')", &[])
        .await
        .expect("insert through the proxy");
    let user: String = c
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("user")
        .get(0);
    assert_eq!(
        user, role,
        "backend connections log in as the tenant's role"
    );
    let list = ok(&url, &["tenant", "list"], "").await;
    let line = list
        .lines()
        .find(|l| l.starts_with(&slug))
        .unwrap_or_default();
    assert!(
        line.contains("active") && line.contains(isolation) && line.contains(" 2 "),
        "{list}"
    );
    let show = ok(&url, &["tenant", "show", &slug], "").await;
    assert!(show.contains(&role) && show.contains("app"), "{show}");
    assert!(!show.contains("password"), "{show}");

    ok(&url, &["tenant", "disable", &slug], "").await;
    let kicked = c.query_one("SELECT pg_sleep(10)", &[]).await;
    let e = kicked.expect_err("a disabled tenant's client is disconnected");
    assert!(
        e.as_db_error().map(|d| d.code().code()) == Some("57P01") || e.is_closed(),
        "{e}"
    );
    let refused = connect(addr, "app", &slug)
        .await
        .expect_err("disabled refuses");
    assert_eq!(sqlstate(&refused), "55000");
    ok(&url, &["tenant", "enable", &slug], "").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &slug).await.is_ok()
        })
        .await,
        "enabled again"
    );
    let c = connect(addr, "app", &slug).await.expect("connects again");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    drop(c);

    let unconfirmed = fails(&url, &["tenant", "drop", &slug], "").await;
    assert!(unconfirmed.contains("--yes"), "{unconfirmed}");
    let dropped = ok(&url, &["tenant", "drop", &slug, "--yes"], "").await;
    assert!(dropped.contains("dropped"), "{dropped}");
    assert!(!catalog_has(&url, &slug).await);
    assert!(!role_exists(&bed().a, &role).await, "role dropped");
    match isolation {
        "database" => assert!(!database_exists(&bed().a, &slug).await),
        "schema" => {
            let d = bed().a.superuser("pgtenant_schemas").await;
            let left = d
                .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&slug])
                .await
                .expect("schemas");
            assert!(left.is_empty(), "schema dropped");
        }
        _ => {
            let d = bed().a.superuser("pgtenant_shared").await;
            let left: i64 = d
                .query_one("SELECT count(*) FROM items WHERE tenant = $1", &[&role])
                .await
                .expect("rows")
                .get(0);
            assert_eq!(left, 0, "the tenant's shared rows are deleted");
        }
    }
    let gone = connect(addr, "app", &slug)
        .await
        .expect_err("dropped tenant is unknown");
    assert_eq!(sqlstate(&gone), "3D000");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tenant_lifecycle() {
    lifecycle_in_mode("database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_tenant_lifecycle() {
    lifecycle_in_mode("schema").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tenant_lifecycle() {
    lifecycle_in_mode("shared").await;
}

/// A query that must fail with `code`.
async fn denied(c: &Client, sql: &str, code: &str) {
    denied_any(c, sql, &[code]).await;
}

/// A query that must fail with one of `codes`.
async fn denied_any(c: &Client, sql: &str, codes: &[&str]) {
    let e = c.batch_execute(sql).await.expect_err(sql);
    assert!(codes.contains(&sqlstate(&e).as_str()), "{sql}: {e}");
}

/// Two tenants in one mode; A tries every escape toward B's rows.
async fn escape_attempts(isolation: &str) {
    let url = lifecycle_catalog().await;
    let (a, b) = (
        unique(&format!("esc_{isolation}")),
        unique(&format!("esc_{isolation}")),
    );
    let dir = items_dir(isolation);
    create(&url, &a, isolation, &dir).await;
    create(&url, &b, isolation, &dir).await;
    let role_b = format!("pgtenant_t_{b}");
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(addr, "app", &b).await.is_ok()
        })
        .await
    );
    let cb = connect(addr, "app", &b).await.expect("b connects");
    cb.execute("INSERT INTO items (note) VALUES ('secret of b')", &[])
        .await
        .expect("b writes");
    let ca = connect(addr, "app", &a).await.expect("a connects");
    let count_secret = "SELECT count(*) FROM items WHERE note = 'secret of b'";
    let n: i64 = ca
        .query_one(count_secret, &[])
        .await
        .expect("a reads its items")
        .get(0);
    assert_eq!(n, 0, "a sees none of b's rows");
    denied(&ca, &format!("SET ROLE \"{role_b}\""), "42501").await;
    denied(
        &ca,
        &format!("SET SESSION AUTHORIZATION \"{role_b}\""),
        "42501",
    )
    .await;
    denied(&ca, "SET ROLE postgres", "42501").await;
    ca.batch_execute("RESET ROLE")
        .await
        .expect("reset role is harmless");
    let n: i64 = ca.query_one(count_secret, &[]).await.expect("count").get(0);
    assert_eq!(n, 0);
    match isolation {
        "schema" => {
            denied(&ca, &format!("SELECT * FROM \"{b}\".items"), "42501").await;
            ca.batch_execute(&format!("SET search_path TO \"{b}\", public"))
                .await
                .expect("set");
            // A schema without USAGE drops out of the search path, or denies outright.
            denied_any(&ca, "SELECT * FROM items", &["42501", "42P01"]).await;
            ca.batch_execute("RESET search_path").await.expect("reset");
            denied(
                &ca,
                &format!("CREATE TABLE \"{b}\".planted (x int)"),
                "42501",
            )
            .await;
            denied(&ca, "CREATE TABLE public.planted (x int)", "42501").await;
        }
        "shared" => {
            // The group role carries the table privileges; becoming it shows no one's rows.
            ca.batch_execute("SET ROLE pgtenant_shared_tenants")
                .await
                .expect("member may set role");
            let n: i64 = ca
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .expect("count")
                .get(0);
            assert_eq!(n, 0, "session_user keys the rows, not current_user");
            ca.batch_execute("RESET ROLE").await.expect("reset");
            ca.execute("INSERT INTO items (note) VALUES ('mine')", &[])
                .await
                .expect("own row");
            denied(
                &ca,
                &format!("INSERT INTO items (note, tenant) VALUES ('planted', '{role_b}')"),
                "42501",
            )
            .await;
            let updated = ca
                .execute(
                    &format!("UPDATE items SET note = 'x' WHERE tenant = '{role_b}'"),
                    &[],
                )
                .await
                .expect("update runs");
            assert_eq!(updated, 0, "b's rows are invisible to updates");
            denied(
                &ca,
                &format!("UPDATE items SET tenant = '{role_b}'"),
                "42501",
            )
            .await;
            denied(&ca, "ALTER TABLE items DISABLE ROW LEVEL SECURITY", "42501").await;
            denied(&ca, "CREATE TABLE planted (x int)", "42501").await;
        }
        _ => {
            // Its own database: b's database does not even accept a's role, password and all.
            let catalog = connect_url(&url).await.expect("catalog");
            let password: String = catalog
                .query_one(
                    "SELECT backend_password FROM pgtenant.tenants WHERE slug = $1",
                    &[&a],
                )
                .await
                .expect("a's role password")
                .get(0);
            let own = format!(
                "postgresql://pgtenant_t_{a}:{password}@127.0.0.1:{}/{a}",
                bed().a.port
            );
            connect_url(&own)
                .await
                .expect("a's role reaches a's database");
            let other = format!(
                "postgresql://pgtenant_t_{a}:{password}@127.0.0.1:{}/{b}",
                bed().a.port
            );
            let e = connect_url(&other)
                .await
                .expect_err("a's role cannot reach b's database");
            assert_eq!(sqlstate(&e), "42501", "{e}");
        }
    }
    // Postgres hides other roles' query text in pg_stat_activity.
    let b_query = cb
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid");
    let b_pid: i32 = b_query.get(0);
    let text: Option<String> = ca
        .query_opt(
            "SELECT query FROM pg_stat_activity WHERE pid = $1",
            &[&b_pid],
        )
        .await
        .expect("pg_stat_activity")
        .and_then(|r| r.get(0));
    assert!(
        text.as_deref()
            .is_none_or(|t| t == "<insufficient privilege>"),
        "a saw b's query: {text:?}"
    );
    let n: i64 = cb
        .query_one(count_secret, &[])
        .await
        .expect("b still reads")
        .get(0);
    assert_eq!(n, 1, "b's row is intact");
    proxy.shutdown().await;
    for slug in [&a, &b] {
        ok(&url, &["tenant", "drop", slug, "--yes"], "").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_isolation_resists_escapes() {
    escape_attempts("database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_isolation_resists_escapes() {
    escape_attempts("schema").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_isolation_resists_escapes() {
    escape_attempts("shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_provisioning_leaves_nothing_behind() {
    let url = lifecycle_catalog().await;
    let broken = migrations_dir(&[
        ("0001_items.sql", ITEMS),
        (
            "0002_broken.sql",
            "CREATE TABLE oops (x int); SELECT no_such_function();",
        ),
    ]);
    let path = broken.path().to_string_lossy().into_owned();
    for isolation in ["database", "schema"] {
        let slug = unique("fail");
        let out = fails(
            &url,
            &[
                "tenant",
                "create",
                &slug,
                "--server",
                "a",
                "--isolation",
                isolation,
                "--migrations",
                &path,
            ],
            "",
        )
        .await;
        assert!(
            out.contains("0002_broken.sql") && out.contains("42883"),
            "{out}"
        );
        assert!(!catalog_has(&url, &slug).await, "no catalog row");
        assert!(
            !role_exists(&bed().a, &format!("pgtenant_t_{slug}")).await,
            "no role"
        );
        assert!(!database_exists(&bed().a, &slug).await, "no database");
        if isolation == "schema" {
            let d = bed().a.superuser("pgtenant_schemas").await;
            let left = d
                .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&slug])
                .await
                .expect("schemas");
            assert!(left.is_empty(), "no schema");
        }
    }
    // A database that already exists is not adopted, and not dropped either.
    let slug = unique("taken");
    bed()
        .a
        .superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {slug}"))
        .await
        .expect("db");
    let out = fails(&url, &["tenant", "create", &slug, "--server", "a"], "").await;
    assert!(out.contains("already exists"), "{out}");
    assert!(
        database_exists(&bed().a, &slug).await,
        "someone else's database survives"
    );
    assert!(
        !role_exists(&bed().a, &format!("pgtenant_t_{slug}")).await,
        "no role"
    );
    // An unknown server fails before anything is made.
    let out = fails(
        &url,
        &["tenant", "create", &unique("x"), "--server", "nowhere"],
        "",
    )
    .await;
    assert!(out.contains("server \"nowhere\" does not exist"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_or_quoted() {
    let url = lifecycle_catalog().await;
    for slug in [
        "a\"; DROP DATABASE postgres; --",
        "Upper",
        "1digit",
        "with space",
        "semi;colon",
        "quote'd",
        "",
        &"x".repeat(49),
    ] {
        let out = fails(&url, &["tenant", "create", slug, "--server", "a"], "").await;
        assert!(out.contains("invalid tenant slug"), "{slug:?}: {out}");
    }
    let out = fails(
        &url,
        &[
            "tenant",
            "create",
            &unique("h"),
            "--server",
            "a",
            "--isolation",
            "schema",
            "--database",
            "x\"y",
        ],
        "",
    )
    .await;
    assert!(out.contains("invalid database name"), "{out}");
    // A legal slug with '-' (quoted everywhere) and a hostile user name (a bind parameter).
    let slug = format!("{}-x", unique("dash"));
    create(&url, &slug, "schema", &items_dir("schema")).await;
    let evil = "app'); DROP TABLE pgtenant.tenants; --";
    ok(
        &url,
        &["tenant", "user", "add", &slug, evil],
        &format!("{PASSWORD}\n"),
    )
    .await;
    let c = connect_url(&url).await.expect("catalog");
    let users: i64 = c
        .query_one(
            "SELECT count(*) FROM pgtenant.tenant_users WHERE tenant = $1",
            &[&slug],
        )
        .await
        .expect("users table still there")
        .get(0);
    assert_eq!(users, 2);
    let hash: String = c
        .query_one(
            "SELECT password_hash FROM pgtenant.tenant_users WHERE tenant = $1 AND name = 'app'",
            &[&slug],
        )
        .await
        .expect("hash")
        .get(0);
    assert!(hash.starts_with("SCRAM-SHA-256$") && !hash.contains(PASSWORD));
    ok(
        &url,
        &["tenant", "user", "passwd", &slug, "app"],
        "another-pw\n",
    )
    .await;
    ok(&url, &["tenant", "user", "remove", &slug, evil], "").await;
    let out = fails(&url, &["tenant", "user", "remove", &slug, evil], "").await;
    assert!(out.contains("has no user"), "{out}");
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    let c = connect_with(addr, "app", "another-pw", &slug, "")
        .await
        .expect("new password works");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("items")
        .get(0);
    assert_eq!(n, 0);
    proxy.shutdown().await;
    ok(&url, &["tenant", "drop", &slug, "--yes"], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_across_fifty_tenants_and_one_failure_stops_only_its_tenant() {
    let url = lifecycle_catalog().await;
    let catalog = connect_url(&url).await.expect("catalog");
    let first = migrations_dir(&[("0001_items.sql", ITEMS)]);
    let v1 = pgtenant::provision::migrations::load_dir(first.path()).expect("loads");
    let mut slugs = Vec::new();
    for i in 0..50 {
        let slug = unique(&format!("m{i}"));
        pgtenant::provision::tenants::create(
            &catalog,
            pgtenant::provision::tenants::NewTenant {
                slug: slug.clone(),
                server: if i % 2 == 0 { "a".into() } else { "b".into() },
                isolation: pgtenant::provision::Isolation::Schema,
                database: Some("mig_tenants".into()),
                pool_mode: None,
                pool_size: None,
                migrations: v1.clone(),
            },
        )
        .await
        .expect("tenant created");
        slugs.push(slug);
    }
    // One tenant already has what 0002 creates: its 0002 will fail.
    let broken = slugs[7].clone();
    let password: String = catalog
        .query_one(
            "SELECT backend_password FROM pgtenant.tenants WHERE slug = $1",
            &[&broken],
        )
        .await
        .expect("password")
        .get(0);
    let server = if 7 % 2 == 0 { &bed().a } else { &bed().b };
    let own = connect_url(&format!(
        "postgresql://pgtenant_t_{broken}:{password}@127.0.0.1:{}/mig_tenants",
        server.port
    ))
    .await
    .expect("tenant role connects");
    own.batch_execute("CREATE TABLE audit (x int)")
        .await
        .expect("conflict planted");
    let dir = migrations_dir(&[
        ("0001_items.sql", ITEMS),
        (
            "0002_audit.sql",
            "CREATE TABLE audit (id serial, what text);",
        ),
        (
            "0003_seed.sql",
            "INSERT INTO items (note) VALUES ('seeded');",
        ),
    ]);
    let path = dir.path().to_string_lossy().into_owned();

    let dry = ok(&url, &["migrate", "--dir", &path, "--all", "--dry-run"], "").await;
    assert!(dry.contains("would migrate 50"), "{dry}");
    let status = ok(&url, &["migrate", "status", "--dir", &path], "").await;
    assert_eq!(status.matches("behind (latest 3)").count(), 50, "{status}");

    let out = fails(
        &url,
        &["migrate", "--dir", &path, "--all", "--jobs", "4"],
        "",
    )
    .await;
    assert!(
        out.contains("migrated 49") && out.contains("1 failed"),
        "{out}"
    );
    assert!(
        out.contains(&format!("FAILED {broken}: 0002_audit.sql: 42P07")),
        "{out}"
    );
    let status = ok(&url, &["migrate", "status", "--dir", &path], "").await;
    assert_eq!(status.matches("up to date").count(), 49, "{status}");
    assert!(status.contains("failed at 0002_audit.sql"), "{status}");

    // Re-running applies nothing twice; the broken tenant fails the same way.
    let again = fails(
        &url,
        &["migrate", "--dir", &path, "--all", "--jobs", "4"],
        "",
    )
    .await;
    assert!(
        again.contains("49 already current") && again.contains("1 failed"),
        "{again}"
    );
    let seeded: i64 = own
        .query_one("SELECT count(*) FROM items WHERE note = 'seeded'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(seeded, 0, "the failed tenant stopped at 0002");
    for slug in [&slugs[0], &slugs[1]] {
        let p: String = catalog
            .query_one(
                "SELECT backend_password FROM pgtenant.tenants WHERE slug = $1",
                &[slug],
            )
            .await
            .expect("password")
            .get(0);
        let port = if slug == &slugs[0] {
            bed().a.port
        } else {
            bed().b.port
        };
        let c = connect_url(&format!(
            "postgresql://pgtenant_t_{slug}:{p}@127.0.0.1:{port}/mig_tenants"
        ))
        .await
        .expect("connects");
        let seeded: i64 = c
            .query_one("SELECT count(*) FROM items WHERE note = 'seeded'", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(seeded, 1, "0003 ran exactly once in {slug}");
        let versions: Vec<i64> = c
            .query(
                "SELECT version FROM pgtenant_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("versions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [1, 2, 3]);
    }
    // Fix the tenant and migrate it alone.
    own.batch_execute("DROP TABLE audit").await.expect("fixed");
    let fixed = ok(&url, &["migrate", "--dir", &path, "--tenant", &broken], "").await;
    assert!(fixed.contains("migrated 1"), "{fixed}");
    let status = ok(&url, &["migrate", "status", "--dir", &path], "").await;
    assert_eq!(status.matches("up to date").count(), 50, "{status}");
    for slug in &slugs {
        pgtenant::provision::tenants::drop(&catalog, slug)
            .await
            .expect("dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_rows_written_with_sql_route_like_the_cli() {
    let url = lifecycle_catalog().await;
    let proxy = proxy_on_catalog(&url, "").await;
    let addr = proxy.addrs[0];
    // What `tenant create` does for an existing database, as a DBA would type it in psql.
    let db = unique("bysql");
    create_tenant_db(&bed().b, &db).await;
    let c = connect_url(&url).await.expect("catalog");
    c.batch_execute(&format!(
        "INSERT INTO pgtenant.tenants (slug, server, database, backend_user, backend_password)
             VALUES ('{db}', 'b', '{db}', '{SCRAM_ROLE}', '{PASSWORD}');
         INSERT INTO pgtenant.tenant_users (tenant, name, password_hash) VALUES ('{db}', 'app', '{}');",
        verifier()
    ))
    .await
    .expect("rows");
    assert!(
        eventually(Duration::from_secs(10), || async {
            match connect(addr, "app", &db).await {
                Ok(c) => whoami(&c).await == db,
                Err(_) => false,
            }
        })
        .await,
        "a tenant inserted with SQL routes"
    );
    let list = ok(&url, &["tenant", "list"], "").await;
    assert!(list.lines().any(|l| l.starts_with(&db)), "{list}");
    let held = connect(addr, "app", &db).await.expect("connects");
    c.execute(
        "UPDATE pgtenant.tenants SET status = 'disabled' WHERE slug = $1",
        &[&db],
    )
    .await
    .expect("disable by SQL");
    let e = held
        .query_one("SELECT pg_sleep(10)", &[])
        .await
        .expect_err("disconnected");
    assert!(
        e.as_db_error().map(|d| d.code().code()) == Some("57P01") || e.is_closed(),
        "{e}"
    );
    // Drop removes only the catalog rows of a tenant pgtenant did not provision.
    let out = ok(&url, &["tenant", "drop", &db, "--yes"], "").await;
    assert!(out.contains("removed catalog rows"), "{out}");
    assert!(
        database_exists(&bed().b, &db).await,
        "pgtenant drops nothing it did not make"
    );
    proxy.shutdown().await;
}
