//! Client authentication per listener method, and the proxy's own backend logins.

use crate::support::*;

fn server_as(server: &Server, name: &str, role: &str) -> String {
    format!(
        "[[servers]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{role}\"\npassword = \"{PASSWORD}\"\n",
        server.port
    )
}

/// A second tenant user, `legacy`, stored with an md5 hash.
fn legacy_user() -> String {
    let md5 = postgres_protocol::password::md5(PASSWORD.as_bytes(), "legacy");
    format!("[[tenants.users]]\nname = \"legacy\"\npassword_hash = \"{md5}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_accepts_the_right_password_and_refuses_others_with_28p01() {
    let (proxy, slug) = single_tenant_proxy("scram-sha-256", "", "").await;
    let addr = proxy.addrs[0];
    assert_eq!(
        whoami(&connect(addr, "app", &slug).await.expect("right password")).await,
        slug
    );
    for (user, password) in [("app", "wrong"), ("nobody", PASSWORD), ("app", "")] {
        let e = connect_with(addr, user, password, &slug, "")
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "28P01", "{user}/{password}");
        let msg = e.as_db_error().expect("db").message().to_owned();
        assert_eq!(
            msg,
            format!("password authentication failed for user \"{user}\"")
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_listener_uses_md5_hashes_and_scram_verifiers() {
    let (proxy, slug) = single_tenant_proxy("md5", "", &legacy_user()).await;
    let addr = proxy.addrs[0];
    connect(addr, "legacy", &slug)
        .await
        .expect("md5 user logs in with md5");
    connect(addr, "app", &slug)
        .await
        .expect("SCRAM user logs in with SCRAM");
    let e = connect_with(addr, "legacy", "wrong", &slug, "")
        .await
        .expect_err("wrong md5 password");
    assert_eq!(sqlstate(&e), "28P01");
    let e = connect_with(addr, "ghost", PASSWORD, &slug, "")
        .await
        .expect_err("unknown user");
    assert_eq!(sqlstate(&e), "28P01");
    // An unknown user is asked what a user with a SCRAM verifier is asked (SASL), as Postgres
    // asks by its default password_encryption: which users exist cannot be probed.
    for (user, method) in [("app", 10), ("ghost", 10), ("legacy", 5)] {
        assert_eq!(
            first_auth_request(addr, user, &slug).await,
            method,
            "{user}"
        );
    }
    proxy.shutdown().await;
}

/// The authentication method (the AuthenticationRequest code) the proxy first asks `user` for.
async fn first_auth_request(addr: std::net::SocketAddr, user: &str, db: &str) -> u32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", db)],
        &mut out,
    )
    .expect("startup");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("send");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("reply");
    assert_eq!(head[0], b'R', "{head:?}");
    u32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_listener_refuses_md5_only_users() {
    let (proxy, slug) = single_tenant_proxy("scram-sha-256", "", &legacy_user()).await;
    let e = connect(proxy.addrs[0], "legacy", &slug)
        .await
        .expect_err("md5 hash cannot do SCRAM");
    assert_eq!(sqlstate(&e), "28P01");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_listener_takes_no_password() {
    let (proxy, slug) = single_tenant_proxy("trust", "", "").await;
    connect_with(proxy.addrs[0], "anyone", "", &slug, "")
        .await
        .expect("trust");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_logs_in_to_backends_with_scram_md5_and_trust() {
    let bed = bed();
    let mut toml = listener_toml("scram-sha-256");
    let mut slugs = Vec::new();
    for (server_name, role) in [
        ("as_scram", SCRAM_ROLE),
        ("as_md5", MD5_ROLE),
        ("as_trust", TRUST_ROLE),
    ] {
        let slug = unique("login");
        create_tenant_db(&bed.a, &slug).await;
        toml.push_str(&server_as(&bed.a, server_name, role));
        let server = Server {
            name: server_name,
            port: bed.a.port,
        };
        toml.push_str(&tenant_toml(&slug, &server, &slug, ""));
        slugs.push((slug, role));
    }
    let proxy = start_proxy(&toml).await;
    for (slug, role) in slugs {
        let c = connect(proxy.addrs[0], "app", &slug)
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let user: String = c
            .query_one("SELECT current_user", &[])
            .await
            .expect("current_user")
            .get(0);
        assert_eq!(user, role);
    }
    // A wrong backend password is the proxy's problem: the client sees 08006 and no secret.
    let slug = unique("badpw");
    create_tenant_db(&bed.a, &slug).await;
    let bad = format!(
        "{}[[servers]]\nname = \"bad\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{SCRAM_ROLE}\"\npassword = \"nope\"\n{}",
        listener_toml("scram-sha-256"),
        bed.a.port,
        tenant_toml(
            &slug,
            &Server {
                name: "bad",
                port: bed.a.port
            },
            &slug,
            ""
        )
    );
    let proxy = start_proxy(&bad).await;
    let e = connect(proxy.addrs[0], "app", &slug)
        .await
        .expect_err("backend login fails");
    assert_eq!(sqlstate(&e), "08006");
    assert!(!e.to_string().contains("nope"));
    proxy.shutdown().await;
}
