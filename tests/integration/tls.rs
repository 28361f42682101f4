//! Client-facing TLS with a CA made at test time: sslmode=require and verify-full through psql,
//! tenant resolution from the TLS server name, a listener that requires TLS, refused early
//! bytes, and certificates renewed by RELOAD while a TLS session stays up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// A CA and a server certificate it signed (for localhost, 127.0.0.1 and *.db.test), as files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, tag: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("pgtenant test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "*.db.test".to_string()])
            .expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let pki = Pki {
        ca: dir.join(format!("ca-{tag}.pem")),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).expect("ca file");
    std::fs::write(&pki.cert, cert.pem()).expect("cert file");
    std::fs::write(&pki.key, key.serialize_pem()).expect("key file");
    pki
}

/// A slug that is also a valid DNS label.
fn dns_slug() -> String {
    unique("tls").replace('_', "x")
}

fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    run(Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_verify_the_proxy_and_name_tenants_by_server_name() {
    let bed = bed();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path(), "one");
    let (t1, t2) = (dns_slug(), dns_slug());
    create_tenant_db(&bed.a, &t1).await;
    create_tenant_db(&bed.a, &t2).await;
    let admin_hash = postgres_protocol::password::scram_sha_256(b"admin-pw");
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
             [[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_required = true\n\
             [proxy]\nresolve = [\"sni\", \"user_suffix\", \"options\"]\nsni_suffix = \"db.test\"\n\
             [[admin.users]]\nname = \"dba\"\npassword_hash = \"{admin_hash}\"\n{}{}{}",
            pki.cert.display(),
            pki.key.display(),
            pki.cert.display(),
            pki.key.display(),
            bed.a.toml(SCRAM_ROLE),
            tenant_toml(&t1, &bed.a, &t1, ""),
            tenant_toml(&t2, &bed.a, &t2, ""),
        ),
    )
    .expect("config");
    let proxy = pgtenant::server::start(pgtenant::config::Config::load(&path).expect("valid"))
        .await
        .expect("starts");
    proxy.shared.set_config_path(path.clone());
    let (open, strict) = (proxy.addrs[0].port(), proxy.addrs[1].port());
    let conninfo = |port: u16, rest: &str| format!("host=127.0.0.1 port={port} {rest}");

    // sslmode=require: encrypted, tenant from the user suffix.
    let (ok, out, err) = psql(
        &conninfo(open, &format!("user=app.{t1} sslmode=require")),
        "SELECT name FROM whoami",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), t1);
    // verify-full against the test CA, by name and by address.
    let ca = pki.ca.display().to_string();
    for host in ["host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"] {
        let (ok, out, err) = psql(
            &format!("{host} port={open} user=app.{t1} sslmode=verify-full sslrootcert={ca}"),
            "SELECT name FROM whoami",
        );
        assert!(ok, "{host}: {err}");
        assert_eq!(out.trim(), t1);
    }
    // The server name alone names the tenant.
    let (ok, out, err) = psql(
        &format!(
            "host={t2}.db.test hostaddr=127.0.0.1 port={open} user=app sslmode=verify-full sslrootcert={ca}"
        ),
        "SELECT name FROM whoami",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), t2);
    // A server name and a user suffix that disagree are refused.
    let (ok, _, err) = psql(
        &format!(
            "host={t2}.db.test hostaddr=127.0.0.1 port={open} user=app.{t1} sslmode=verify-full sslrootcert={ca}"
        ),
        "SELECT 1",
    );
    assert!(!ok && err.contains("conflicting tenants"), "{err}");
    // Plaintext still works on the first listener, not on the second.
    let (ok, out, _) = psql(
        &conninfo(open, &format!("user=app.{t1} sslmode=disable")),
        "SELECT name FROM whoami",
    );
    assert!(ok);
    assert_eq!(out.trim(), t1);
    let (ok, _, err) = psql(
        &conninfo(strict, &format!("user=app.{t1} sslmode=disable")),
        "SELECT 1",
    );
    assert!(!ok && err.contains("requires TLS"), "{err}");
    let (ok, out, err) = psql(
        &conninfo(strict, &format!("user=app.{t1} sslmode=require")),
        "SELECT name FROM whoami",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), t1);

    // Renewed certificates (from another CA) go in force on RELOAD; a TLS session stays up.
    let held = Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &conninfo(open, &format!("user=app.{t1} sslmode=require")),
            "-c",
            "SELECT pg_sleep(2)",
            "-c",
            "SELECT name FROM whoami",
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let renewed = make_pki(dir.path(), "two");
    let admin = connect_with(proxy.addrs[0], "dba", "admin-pw", "pgtenant", "")
        .await
        .expect("console");
    let report = admin.simple_query("RELOAD").await.expect("reload");
    let reloaded = report.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("listeners[0] certificate"),
        _ => false,
    });
    assert!(reloaded, "the report names the reloaded certificate");
    let new_ca = renewed.ca.display().to_string();
    let (ok, _, err) = psql(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={open} user=app.{t1} sslmode=verify-full sslrootcert={ca}"
        ),
        "SELECT 1",
    );
    assert!(!ok, "the old CA no longer verifies the proxy: {err}");
    let (ok, _, err) = psql(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={open} user=app.{t1} sslmode=verify-full sslrootcert={new_ca}"
        ),
        "SELECT 1",
    );
    assert!(ok, "the new certificate is in force: {err}");
    let out = tokio::task::spawn_blocking(move || held.wait_with_output().expect("psql ends"))
        .await
        .expect("task");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&t1),
        "the held session went on"
    );

    // A TLS client whose tenant is killed mid-query hears why (57P01), as plaintext ones do.
    let busy = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d"])
        .arg(conninfo(open, &format!("user=app.{t1} sslmode=require")))
        .args(["-c", "SELECT pg_sleep(30)"])
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    let sleeping = || async {
        let c = bed.a.superuser("postgres").await;
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
            &[],
        )
        .await
        .expect("activity")
        .get::<_, i64>(0)
            == 1
    };
    assert!(eventually(std::time::Duration::from_secs(10), sleeping).await);
    admin
        .simple_query(&format!("KILL {t1}"))
        .await
        .expect("kill");
    let out = tokio::task::spawn_blocking(move || busy.wait_with_output().expect("psql ends"))
        .await
        .expect("task");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("administrator killed"),
        "{err}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_a_bad_certificate_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("missing.pem");
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{0}\"\ntls_key_file = \"{0}\"\n",
        cert.display()
    );
    let config = pgtenant::config::Config::from_toml(&toml).expect("valid toml");
    let err = pgtenant::server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let half = "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_required = true\n";
    let err = pgtenant::config::Config::from_toml(half).expect_err("invalid");
    assert!(err.to_string().contains("tls_required needs"), "{err}");
}

/// A CA and a certificate it signed for `names` only, as PEM strings.
fn ca_and_cert(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A certificate and key for localhost, the CA file that signed it and another CA's file
/// (written in `dir`).
fn server_pki(dir: &Path) -> (String, String, PathBuf, PathBuf) {
    let (ca, cert, key) = ca_and_cert(&["localhost"]);
    let (other_ca, _, _) = ca_and_cert(&["localhost"]);
    let (ca_file, other_ca_file) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&ca_file, ca).expect("ca");
    std::fs::write(&other_ca_file, other_ca).expect("other ca");
    (cert, key, ca_file, other_ca_file)
}

/// What the backend says of the proxy's connection: is it TLS?
async fn backend_uses_tls(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .expect("pg_stat_ssl")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_follows_each_servers_mode() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // A server with TLS whose certificate names localhost only (no IP address).
    let (cert, key, ca_file, other_ca_file) = server_pki(dir);
    let (cluster, tls_pg) = own_server("tls_pg").await;
    cluster.enable_tls(&cert, &key).expect("tls on");
    let require_url = format!("{}?sslmode=require", tls_pg.superuser_url("postgres"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            run(Command::new(pg_bin("psql")).args([&require_url, "-XAtc", "SELECT 1"])).0
        })
        .await,
        "the test server never accepted TLS"
    );
    let db = unique("btls");
    create_tenant_db(&tls_pg, &db).await;
    let plain = &bed().a;
    let plain_db = unique("btls");
    create_tenant_db(plain, &plain_db).await;

    // (server name, host, tls settings, the cluster, database, pool mode)
    let ca_path = ca_file.display().to_string();
    let other_path = other_ca_file.display().to_string();
    let servers: Vec<(&'static str, &str, String, &Server, &str)> = vec![
        (
            "tls_disable",
            "127.0.0.1",
            "tls_mode = \"disable\"".into(),
            &tls_pg,
            &db,
        ),
        ("tls_prefer", "127.0.0.1", String::new(), &tls_pg, &db),
        (
            "tls_require",
            "127.0.0.1",
            "tls_mode = \"require\"".into(),
            &tls_pg,
            &db,
        ),
        (
            "tls_verify",
            "localhost",
            format!("tls_mode = \"verify-full\"\ntls_ca_file = \"{ca_path}\""),
            &tls_pg,
            &db,
        ),
        (
            "tls_other_ca",
            "localhost",
            format!("tls_mode = \"verify-full\"\ntls_ca_file = \"{other_path}\""),
            &tls_pg,
            &db,
        ),
        (
            "tls_wrong_host",
            "127.0.0.1",
            format!("tls_mode = \"verify-full\"\ntls_ca_file = \"{ca_path}\""),
            &tls_pg,
            &db,
        ),
        (
            "plain_prefer",
            "127.0.0.1",
            "tls_mode = \"prefer\"".into(),
            plain,
            &plain_db,
        ),
        (
            "plain_require",
            "127.0.0.1",
            "tls_mode = \"require\"".into(),
            plain,
            &plain_db,
        ),
    ];
    let mut toml = listener_toml("scram-sha-256");
    let mut slugs = Vec::new();
    for (i, (name, host, tls, on, database)) in servers.iter().enumerate() {
        toml.push_str(&format!(
            "[[servers]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {}\nuser = \"{SCRAM_ROLE}\"\npassword = \"{PASSWORD}\"\n{tls}\n",
            on.port
        ));
        let slug = unique("btls");
        // Every other tenant pools by transaction, so both relays run over TLS.
        let mode = if i % 2 == 0 { "transaction" } else { "session" };
        let named = Server {
            name,
            port: on.port,
        };
        toml.push_str(&tenant_toml(
            &slug,
            &named,
            database,
            &format!("pool_mode = \"{mode}\""),
        ));
        slugs.push(slug);
    }
    let path = dir.join("pgtenant.toml");
    std::fs::write(&path, &toml).expect("config");
    let proxy = pgtenant::server::start(pgtenant::config::Config::load(&path).expect("valid"))
        .await
        .expect("starts");
    proxy.shared.set_config_path(path.clone());
    let addr = proxy.addrs[0];
    let expect = [
        Some(false), // disable
        Some(true),  // prefer, offered
        Some(true),  // require
        Some(true),  // verify-full, right CA and name
        None,        // verify-full, another CA
        None,        // verify-full, a name the certificate lacks
        Some(false), // prefer, not offered
        None,        // require, not offered
    ];
    for ((slug, (name, .., database)), want) in slugs.iter().zip(&servers).zip(expect) {
        let got = connect(addr, "app", slug).await;
        match want {
            Some(tls) => {
                let c = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(backend_uses_tls(&c).await, tls, "{name}");
                // Extended protocol and a larger result through the (TLS) relay.
                let rows = c
                    .query(
                        "SELECT g, repeat('x', 1000) FROM generate_series(1, $1) g",
                        &[&500i32],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(rows.len(), 500, "{name}");
                assert_eq!(whoami(&c).await, *database, "{name}");
            }
            None => {
                let e = got.expect_err(name);
                assert_eq!(sqlstate(&e), "08006", "{name}");
            }
        }
    }
    // A renewed CA file is read again on RELOAD (not before: the built config is kept).
    let other_ca_slug = &slugs[4];
    std::fs::copy(&ca_file, &other_ca_file).expect("renew the CA file");
    let e = connect(addr, "app", other_ca_slug)
        .await
        .expect_err("before RELOAD");
    assert_eq!(sqlstate(&e), "08006");
    pgtenant::reload::reload(&proxy.shared).expect("reload");
    let c = connect(addr, "app", other_ca_slug)
        .await
        .expect("after RELOAD");
    assert!(backend_uses_tls(&c).await);
    proxy.shutdown().await;

    // A bad tls_mode or verify-full without a CA file is refused when the file is read.
    for bad in ["tls_mode = \"sometimes\"", "tls_mode = \"verify-full\""] {
        let toml = format!(
            "{}{}{bad}\n",
            listener_toml("scram-sha-256"),
            plain.toml(SCRAM_ROLE)
        );
        let e = pgtenant::config::Config::from_toml(&toml).expect_err(bad);
        assert!(e.to_string().contains("tls"), "{e}");
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_and_provisioning_connect_with_tls_as_told() {
    use crate::lifecycle::{fails, ok};
    use pgtenant::error::Secret;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (cert, key, ca_file, other_ca_file) = server_pki(dir);
    let (ca_path, other_path) = (ca_file.display(), other_ca_file.display());
    // A server holding the catalog that, once TLS is on, refuses every login without it.
    let (cluster, tls_pg) = own_server("tls_catalog").await;
    let catalog_url = create_catalog(&tls_pg, &[]).await;
    let hba: String = tls_pg
        .superuser("postgres")
        .await
        .query_one("SHOW hba_file", &[])
        .await
        .expect("hba_file")
        .get(0);
    let old = std::fs::read_to_string(&hba).expect("read hba");
    std::fs::write(&hba, format!("hostnossl all all all reject\n{old}")).expect("write hba");
    cluster.enable_tls(&cert, &key).expect("tls on");
    let (db, port) = (
        catalog_url.rsplit('/').next().expect("db name").to_owned(),
        tls_pg.port,
    );
    let url = |host: &str, params: &str| {
        format!("postgresql://postgres:{PASSWORD}@{host}:{port}/{db}{params}")
    };
    let catalog = |conninfo: String| async move {
        pgtenant::tenant::catalog::postgres::connect(&Secret::new(conninfo), None).await
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            catalog(url("127.0.0.1", "?sslmode=disable")).await.is_err()
        })
        .await,
        "the server never refused plaintext"
    );
    // (connection string, connects)
    let cases = [
        (url("127.0.0.1", ""), true), // prefer: TLS, offered
        (url("127.0.0.1", "?sslmode=require"), true),
        (
            url(
                "127.0.0.1",
                &format!("?sslmode=verify-ca&sslrootcert={ca_path}"),
            ),
            true,
        ),
        (
            url(
                "localhost",
                &format!("?sslmode=verify-full&sslrootcert={ca_path}"),
            ),
            true,
        ),
        (
            format!(
                "host=localhost port={port} user=postgres password={PASSWORD} dbname={db} \
                 sslmode=verify-full sslrootcert='{ca_path}'"
            ),
            true,
        ),
        // hostaddr: connect there, check the certificate against host.
        (
            format!(
                "host=localhost hostaddr=127.0.0.1 port={port} user=postgres \
                 password={PASSWORD} dbname={db} sslmode=verify-full sslrootcert={ca_path}"
            ),
            true,
        ),
        (url("127.0.0.1", "?sslmode=disable"), false),
        // The certificate names localhost only.
        (
            url(
                "127.0.0.1",
                &format!("?sslmode=verify-full&sslrootcert={ca_path}"),
            ),
            false,
        ),
        (
            url(
                "localhost",
                &format!("?sslmode=verify-ca&sslrootcert={other_path}"),
            ),
            false,
        ),
    ];
    for (conninfo, connects) in cases {
        match catalog(conninfo.clone()).await {
            Ok(c) => {
                assert!(connects, "{conninfo} connected");
                assert!(backend_uses_tls(&c).await, "{conninfo}");
            }
            Err(e) => {
                assert!(!connects, "{conninfo}: {e}");
                assert!(!e.to_string().contains(PASSWORD), "{e}");
            }
        }
    }
    let verified = url(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={ca_path}"),
    );
    let refused = url(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={other_path}"),
    );
    // A proxy loads and follows that catalog over verified TLS.
    let slug = unique("tlscat");
    create_tenant_db(&bed().a, &slug).await;
    let c = catalog(verified.clone()).await.expect("catalog");
    c.execute(
        "INSERT INTO pgtenant.servers (name, host, port, backend_user, backend_password) VALUES ('a', '127.0.0.1', $1, $2, $3)",
        &[&i32::from(bed().a.port), &SCRAM_ROLE, &PASSWORD],
    )
    .await
    .expect("server row");
    catalog_add_tenant(
        &c,
        &slug,
        &Server {
            name: "a",
            port: bed().a.port,
        },
        &slug,
    )
    .await;
    let proxy = crate::catalog::proxy_on_catalog(&verified, "").await;
    let client = connect(proxy.addrs[0], "app", &slug).await.expect("routed");
    assert_eq!(whoami(&client).await, slug);
    proxy.shutdown().await;
    // The CLI reaches the catalog the same way, and refuses a CA that did not sign it.
    let out = fails(&refused, &["server", "list"], "").await;
    assert!(!out.contains(PASSWORD), "{out}");
    assert!(
        out.contains("certificate"),
        "refused for its certificate: {out}"
    );
    ok(&verified, &["server", "list"], "").await;
    // Provisioning on the TLS-only server follows its tls_mode.
    let port = port.to_string();
    let add = |name: &'static str, mode: &'static str| {
        let (port, ca_path) = (port.clone(), ca_path.to_string());
        let verified = verified.clone();
        async move {
            let mut args = vec![
                "server",
                "add",
                name,
                "--host",
                "localhost",
                "--port",
                &port,
                "--admin-user",
                "postgres",
                "--tls-mode",
                mode,
            ];
            if mode.starts_with("verify") {
                args.extend(["--tls-ca-file", &ca_path]);
            }
            ok(&verified, &args, &format!("{PASSWORD}\n")).await;
        }
    };
    add("tls_full", "verify-full").await;
    add("tls_plain", "disable").await;
    let made = unique("tlsprov");
    ok(
        &verified,
        &[
            "tenant",
            "create",
            &made,
            "--server",
            "tls_full",
            "--isolation",
            "database",
        ],
        "",
    )
    .await;
    let out = fails(
        &verified,
        &[
            "tenant",
            "create",
            &unique("tlsprov"),
            "--server",
            "tls_plain",
            "--isolation",
            "database",
        ],
        "",
    )
    .await;
    assert!(!out.contains(PASSWORD), "{out}");
    assert!(
        out.contains("no encryption"),
        "refused for want of TLS: {out}"
    );
    ok(&verified, &["tenant", "drop", &made, "--yes"], "").await;
    drop(cluster);
}
