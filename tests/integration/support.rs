//! The test bed: throwaway Postgres clusters shared by every test of this binary (two backend
//! servers and a catalog server, started once), unique databases per test, an in-process proxy
//! per test, and client helpers. Clusters stop when the test process exits.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgtenant::config::Config;
use pgtenant::localpg::{ClusterOptions, LocalCluster};
use pgtenant::server::ProxyHandle;
use tokio_postgres::{Client, NoTls};

/// Password of every test role.
pub const PASSWORD: &str = "s3cret-pw";
/// Backend roles on every server, one per login method the proxy must speak.
pub const SCRAM_ROLE: &str = "pgtenant_scram";
pub const MD5_ROLE: &str = "pgtenant_md5";
pub const TRUST_ROLE: &str = "pgtenant_trust";

/// A running shared cluster.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: &'static str,
    pub port: u16,
}

impl Server {
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A `[[servers]]` TOML entry logging in as `role`.
    pub fn toml(&self, role: &str) -> String {
        format!(
            "[[servers]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{role}\"\npassword = \"{PASSWORD}\"\n",
            self.name, self.port
        )
    }

    pub async fn superuser(&self, db: &str) -> Client {
        connect_url(&self.superuser_url(db))
            .await
            .expect("superuser connects")
    }
}

pub struct Bed {
    pub a: Server,
    pub b: Server,
    pub catalog: Server,
}

static CLUSTERS: Mutex<Vec<LocalCluster>> = Mutex::new(Vec::new());
static BED: OnceLock<Bed> = OnceLock::new();

extern "C" fn stop_clusters() {
    let clusters: Vec<LocalCluster> =
        std::mem::take(&mut *CLUSTERS.lock().unwrap_or_else(|p| p.into_inner()));
    drop(clusters);
}

pub fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        superuser_password: PASSWORD.into(),
        hba_prepend: vec![
            format!("host all {MD5_ROLE} 127.0.0.1/32 md5"),
            format!("host all {TRUST_ROLE} 127.0.0.1/32 trust"),
        ],
        settings: vec![],
    }
}

/// Starts a cluster with the three backend roles; kept alive until the process exits.
pub fn start_server(name: &'static str) -> Server {
    let cluster = LocalCluster::start(&cluster_options()).expect("cluster starts");
    let port = cluster.port;
    CLUSTERS.lock().expect("cluster list").push(cluster);
    let server = Server { name, port };
    block_on(create_roles(&server));
    server
}

/// A cluster of a test's own, for a test that stops and restarts it, with the backend roles.
/// Returns it with its [`Server`] handle; dropping the cluster removes it.
pub async fn own_server(name: &'static str) -> (LocalCluster, Server) {
    let opts = cluster_options();
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&opts))
        .await
        .expect("task")
        .expect("cluster starts");
    let server = Server {
        name,
        port: cluster.port,
    };
    create_roles(&server).await;
    (cluster, server)
}

/// Stops a test's own cluster (fast shutdown), keeping its data for [`restart_own`].
pub async fn stop_own(mut cluster: LocalCluster) -> LocalCluster {
    tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .expect("stop")
}

/// Starts a stopped cluster again on its port.
pub async fn restart_own(mut cluster: LocalCluster) -> LocalCluster {
    tokio::task::spawn_blocking(move || {
        cluster
            .restart(&cluster_options())
            .expect("cluster restarts");
        cluster
    })
    .await
    .expect("restart")
}

/// Runs a client program with the test password in `PGPASSWORD`: (success, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("client program runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where Debian's libpostgresql-jdbc-java puts the driver (.ci/run installs it).
pub const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Compiles the Java class `class` from `source` against the JDBC driver and runs it; returns
/// its standard output, failing the test if either step fails.
pub fn run_jdbc_program(class: &str, source: &str) -> String {
    assert!(
        std::path::Path::new(JDBC_JAR).exists(),
        "{JDBC_JAR} missing: .ci/run installs libpostgresql-jdbc-java"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(format!("{class}.java")), source).expect("source");
    let (ok, _, err) = run(std::process::Command::new("javac")
        .current_dir(dir.path())
        .args(["-cp", JDBC_JAR, &format!("{class}.java")]));
    assert!(ok, "javac: {err}");
    let cp = format!("{JDBC_JAR}:{}", dir.path().display());
    let (ok, out, err) = run(std::process::Command::new("java").args(["-cp", &cp, class]));
    assert!(ok, "{class} failed: {err}");
    out
}

/// The backend process id serving `c` right now.
pub async fn backend_pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// Asserts a FATAL 53300 whose message names the tenant and `limit` (e.g. "pool size 1").
pub fn assert_pool_exhausted(e: &tokio_postgres::Error, slug: &str, limit: &str) {
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains(slug) && db.message().contains(limit),
        "{}",
        db.message()
    );
}

/// Creates the three backend roles on a fresh cluster.
pub async fn create_roles(server: &Server) {
    let c = server.superuser("postgres").await;
    c.batch_execute(&format!(
        "CREATE ROLE {SCRAM_ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}';
         SET password_encryption = 'md5';
         CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {TRUST_ROLE} LOGIN;"
    ))
    .await
    .expect("roles created");
}

/// Runs a future on a private runtime (for set-up outside any test runtime).
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("set-up thread")
    })
}

/// The shared clusters, started by the first test that asks.
pub fn bed() -> &'static Bed {
    BED.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe { libc::atexit(stop_clusters) };
        let (a, b, catalog) = std::thread::scope(|s| {
            let a = s.spawn(|| start_server("server_a"));
            let b = s.spawn(|| start_server("server_b"));
            let c = s.spawn(|| start_server("catalog"));
            (
                a.join().expect("a"),
                b.join().expect("b"),
                c.join().expect("c"),
            )
        });
        Bed { a, b, catalog }
    })
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id() % 10_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a database on `server`, owned by every backend role, with a table `whoami(name)`
/// holding the database name.
pub async fn create_tenant_db(server: &Server, db: &str) {
    let c = server.superuser("postgres").await;
    c.batch_execute(&format!("CREATE DATABASE {db} OWNER {SCRAM_ROLE}"))
        .await
        .expect("create database");
    let d = server.superuser(db).await;
    d.batch_execute(&format!(
        "CREATE TABLE whoami (name text); INSERT INTO whoami VALUES ('{db}');
         CREATE TABLE items (id int PRIMARY KEY, note text);
         GRANT ALL ON ALL TABLES IN SCHEMA public TO {SCRAM_ROLE}, {MD5_ROLE}, {TRUST_ROLE};
         GRANT ALL ON SCHEMA public TO {SCRAM_ROLE}, {MD5_ROLE}, {TRUST_ROLE};"
    ))
    .await
    .expect("seed database");
}

/// SCRAM verifier of the test password.
pub fn verifier() -> String {
    postgres_protocol::password::scram_sha_256(PASSWORD.as_bytes())
}

/// A `[[tenants]]` TOML entry with user `app`.
pub fn tenant_toml(slug: &str, server: &Server, db: &str, extra: &str) -> String {
    format!(
        "[[tenants]]\nslug = \"{slug}\"\nserver = \"{}\"\ndatabase = \"{db}\"\n{extra}\n\
         [[tenants.users]]\nname = \"app\"\npassword_hash = \"{}\"\n",
        server.name,
        verifier()
    )
}

/// Proxy TOML preamble: one listener on a free port.
pub fn listener_toml(auth: &str) -> String {
    format!("[[listeners]]\naddress = \"127.0.0.1:0\"\nauth = \"{auth}\"\n")
}

pub async fn start_proxy(toml: &str) -> ProxyHandle {
    let config =
        Config::from_toml(toml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
    pgtenant::server::start(config).await.expect("proxy starts")
}

pub async fn connect_url(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects through the proxy at `addr`.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_with(addr, user, PASSWORD, db, "").await
}

pub async fn connect_with(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    options: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db);
    cfg.connect_timeout(Duration::from_secs(10));
    if !options.is_empty() {
        cfg.options(options);
    }
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn whoami(client: &Client) -> String {
    client
        .query_one("SELECT name FROM whoami", &[])
        .await
        .expect("whoami")
        .get(0)
}

/// The SQLSTATE of a failed connection or query.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {e}"))
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh catalog database on the catalog server, migrated, with servers A and B registered
/// (logging in as the SCRAM role). Returns its URL.
pub async fn create_catalog(on: &Server, servers: &[&Server]) -> String {
    let name = unique("catalog");
    on.superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("catalog db");
    let url = on.superuser_url(&name);
    pgtenant::cli::migrate_catalog(&pgtenant::error::Secret::new(url.clone()))
        .await
        .expect("migrate");
    let c = connect_url(&url).await.expect("catalog connects");
    for s in servers {
        c.execute(
            "INSERT INTO pgtenant.servers (name, host, port, backend_user, backend_password) VALUES ($1, '127.0.0.1', $2, $3, $4)",
            &[&s.name, &i32::from(s.port), &SCRAM_ROLE, &PASSWORD],
        )
        .await
        .expect("server row");
    }
    url
}

/// Registers a tenant with user `app` in a catalog.
pub async fn catalog_add_tenant(catalog: &Client, slug: &str, server: &Server, db: &str) {
    catalog
        .execute(
            "INSERT INTO pgtenant.tenants (slug, server, database) VALUES ($1, $2, $3)",
            &[&slug, &server.name, &db],
        )
        .await
        .expect("tenant row");
    catalog
        .execute("INSERT INTO pgtenant.tenant_users (tenant, name, password_hash) VALUES ($1, 'app', $2)", &[&slug, &verifier()])
        .await
        .expect("user row");
}

/// Path of a PostgreSQL client binary (psql, pgbench).
pub fn pg_bin(name: &str) -> std::path::PathBuf {
    pgtenant::localpg::find_bin_dir()
        .expect("postgres binaries")
        .join(name)
}

/// A hand-driven protocol client, for what libraries will not do: vanish mid-transaction,
/// send malformed frames, read raw replies.
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
    /// BackendKeyData the proxy sent.
    pub key: (i32, Vec<u8>),
}

impl RawClient {
    /// Connects and logs in with SCRAM as `user` to database `db`.
    pub async fn login(addr: SocketAddr, user: &str, db: &str) -> RawClient {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("tcp connect");
        RawClient::login_on(stream, user, db).await
    }

    /// Logs in with SCRAM as `user` to database `db` over a connection already open.
    pub async fn login_on(mut stream: tokio::net::TcpStream, user: &str, db: &str) -> RawClient {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        use postgres_protocol::message::frontend;
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        frontend::startup_message([("user", user), ("database", db)], &mut out).expect("startup");
        stream.write_all(&out).await.expect("send startup");
        let mut c = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            key: (0, vec![]),
        };
        let mut scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
        loop {
            let (tag, body) = c.read().await;
            out.clear();
            match (
                tag,
                body.get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(10)) => {
                    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                        .expect("sasl");
                    c.stream.write_all(&out).await.expect("send");
                }
                (b'R', Some(11)) => {
                    scram.update(&body[4..]).expect("server-first");
                    frontend::sasl_response(scram.message(), &mut out).expect("sasl");
                    c.stream.write_all(&out).await.expect("send");
                }
                (b'R', _) => {}
                (b'K', _) => {
                    c.key = (
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        body[4..].to_vec(),
                    )
                }
                (b'Z', _) => return c,
                (b'E', _) => panic!("login failed: {:?}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }

    /// Reads one message.
    pub async fn read(&mut self) -> (u8, bytes::Bytes) {
        pgtenant::wire::read_message(&mut self.stream, &mut self.buf, 1 << 30)
            .await
            .expect("read message")
    }

    /// Sends a simple query and returns the tags of every reply up to ReadyForQuery, with the
    /// ReadyForQuery status.
    pub async fn query(&mut self, sql: &str) -> (Vec<u8>, u8) {
        self.send_query(sql).await;
        let mut tags = Vec::new();
        loop {
            let (tag, body) = self.read().await;
            if tag == b'Z' {
                return (tags, body[0]);
            }
            tags.push(tag);
        }
    }

    /// Sends raw protocol bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads replies up to ReadyForQuery: their tags, the SQLSTATEs of any errors, and the
    /// ReadyForQuery status.
    pub async fn until_ready(&mut self) -> (Vec<u8>, Vec<String>, u8) {
        let mut tags = Vec::new();
        let mut codes = Vec::new();
        loop {
            let (tag, body) = self.read().await;
            match tag {
                b'Z' => return (tags, codes, body[0]),
                b'E' => {
                    let (code, _) = pgtenant::protocol::messages::error_fields(&body);
                    codes.push(code.unwrap_or("").to_owned());
                }
                _ => {}
            }
            tags.push(tag);
        }
    }

    /// Sends a simple query without waiting.
    pub async fn send_query(&mut self, sql: &str) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).expect("query");
        self.stream.write_all(&out).await.expect("send query");
    }
}

/// Backend connections the proxy holds open to `db`, idle ones included.
pub async fn backends_on(server: &Server, db: &str) -> i64 {
    server
        .superuser("postgres")
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", &[&db])
        .await
        .expect("count")
        .get(0)
}

/// A proxy with one tenant (user `app`) on server A in a database of its own, listening with
/// `auth`. `proxy_extra` is TOML placed before the servers (e.g. a `[proxy]` table);
/// `tenant_extra` goes into the tenant's table.
pub async fn single_tenant_proxy(
    auth: &str,
    proxy_extra: &str,
    tenant_extra: &str,
) -> (ProxyHandle, String) {
    let bed = bed();
    let slug = unique("t");
    create_tenant_db(&bed.a, &slug).await;
    let toml = format!(
        "{}{proxy_extra}\n{}{}",
        listener_toml(auth),
        bed.a.toml(SCRAM_ROLE),
        tenant_toml(&slug, &bed.a, &slug, tenant_extra)
    );
    (start_proxy(&toml).await, slug)
}

/// A transaction-mode proxy with one tenant; `tenant_extra` goes into the tenant's table and
/// `proxy_extra` before the servers.
pub async fn txn_proxy(proxy_extra: &str, tenant_extra: &str) -> (ProxyHandle, String) {
    single_tenant_proxy(
        "scram-sha-256",
        proxy_extra,
        &format!("pool_mode = \"transaction\"\n{tenant_extra}"),
    )
    .await
}

/// A Bind of statement `name` to the unnamed portal, without parameters, results in text.
pub fn bind_unnamed_portal(name: &str, out: &mut bytes::BytesMut) {
    postgres_protocol::message::frontend::bind(
        "",
        name,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<i32>>(),
        |_: Option<i32>,
         _: &mut bytes::BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::Yes)
        },
        std::iter::empty(),
        out,
    )
    .map_err(|_| "bind")
    .expect("bind");
}
