//! Prepared statements across schema changes in transaction mode: a client that prepares after a
//! migration gets the statement as the schema is now, never a backend copy prepared before it,
//! as on a direct connection; and DEALLOCATE, as drivers send it after DDL, in both protocols.

use crate::support::*;

/// Column names of `sql` prepared by `c` and run once.
async fn prepared_columns(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let stmt = c.prepare(sql).await.expect("prepare");
    c.query(&stmt, &[]).await.expect("run");
    stmt.columns().iter().map(|c| c.name().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_preparing_after_alter_table_gets_the_new_columns() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    let sql = "SELECT * FROM items";
    let before = connect(addr, "app", &slug).await.expect("login");
    assert_eq!(prepared_columns(&before, sql).await, ["id", "note"]);
    // A migration, made directly on the server as a deploy would.
    bed()
        .a
        .superuser(&slug)
        .await
        .batch_execute("ALTER TABLE items ADD COLUMN added int")
        .await
        .expect("alter");
    // Every new client lands on the one connection, which has the old statement.
    for _ in 0..3 {
        let after = connect(addr, "app", &slug).await.expect("login");
        assert_eq!(prepared_columns(&after, sql).await, ["id", "note", "added"]);
    }
    // The client that has the old statement gets the new one when it prepares again.
    assert_eq!(
        prepared_columns(&before, sql).await,
        ["id", "note", "added"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_after_ddl_and_deallocate_all_works() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2").await;
    let addr = proxy.addrs[0];
    let c = connect(addr, "app", &slug).await.expect("login");
    // Hold one connection so the client's statements are spread over both.
    let other = connect(addr, "app", &slug).await.expect("login");
    c.batch_execute("CREATE TABLE shapes (a int); INSERT INTO shapes VALUES (1)")
        .await
        .expect("create");
    let sql = "SELECT * FROM shapes";
    assert_eq!(prepared_columns(&c, sql).await, ["a"]);
    other.batch_execute("BEGIN").await.expect("hold");
    assert_eq!(prepared_columns(&c, sql).await, ["a"]);
    other.batch_execute("COMMIT").await.expect("release");
    // Drop and re-create what the statement uses, then do what drivers do after DDL.
    c.batch_execute(
        "DROP TABLE shapes; CREATE TABLE shapes (a int, b text); \
         INSERT INTO shapes VALUES (2, 'two')",
    )
    .await
    .expect("re-create");
    c.batch_execute("DEALLOCATE ALL").await.expect("deallocate");
    for _ in 0..4 {
        other.batch_execute("BEGIN").await.expect("hold");
        assert_eq!(prepared_columns(&c, sql).await, ["a", "b"]);
        other.batch_execute("COMMIT").await.expect("release");
        assert_eq!(prepared_columns(&c, sql).await, ["a", "b"]);
    }
    proxy.shutdown().await;
}

/// Parse, Bind, Describe, Execute and Sync of `sql` as the unnamed statement, as drivers send a
/// statement without parameters by the extended protocol.
fn run_unnamed(sql: &str) -> bytes::BytesMut {
    use postgres_protocol::message::frontend;
    let mut out = bytes::BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut out).expect("parse");
    bind_unnamed_portal("", &mut out);
    frontend::describe(b'P', "", &mut out).expect("describe");
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::sync(&mut out);
    out
}

/// Parse of a named statement, then Sync.
fn prepare_named(name: &str, sql: &str) -> bytes::BytesMut {
    use postgres_protocol::message::frontend;
    let mut out = bytes::BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut out).expect("parse");
    frontend::sync(&mut out);
    out
}

/// Bind and Execute of statement `name`, then Sync.
fn run_named(name: &str) -> bytes::BytesMut {
    use postgres_protocol::message::frontend;
    let mut out = bytes::BytesMut::new();
    bind_unnamed_portal(name, &mut out);
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::sync(&mut out);
    out
}

/// The command tags and error SQLSTATEs of the replies up to ReadyForQuery.
async fn outcome(c: &mut RawClient, sent: &[u8]) -> (Vec<String>, Vec<String>) {
    c.send(sent).await;
    let (mut tags, mut codes) = (Vec::new(), Vec::new());
    loop {
        let (tag, body) = c.read().await;
        match tag {
            b'C' => tags.push(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
            b'E' => {
                let (code, _) = pgtenant::protocol::messages::error_fields(&body);
                codes.push(code.unwrap_or("").to_owned());
            }
            b'Z' => return (tags, codes),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_by_the_extended_protocol_forgets_the_clients_statement() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let mut c = RawClient::login(proxy.addrs[0], "app", &slug).await;
    let none: Vec<String> = Vec::new();
    assert_eq!(
        outcome(&mut c, &prepare_named("S_1", "SELECT 1")).await,
        (vec![], none.clone())
    );
    assert_eq!(
        outcome(&mut c, &run_named("S_1")).await,
        (vec!["SELECT 1".into()], none.clone())
    );
    // As psycopg sends it: DEALLOCATE by the extended protocol, unnamed.
    assert_eq!(
        outcome(&mut c, &run_unnamed("DEALLOCATE S_1")).await,
        (vec!["DEALLOCATE".into()], none.clone())
    );
    assert_eq!(
        outcome(&mut c, &run_named("S_1")).await,
        (vec![], vec!["26000".into()])
    );
    assert_eq!(
        outcome(&mut c, &run_unnamed("DEALLOCATE S_1")).await,
        (vec![], vec!["26000".into()]),
        "gone already, as on Postgres"
    );
    // The name is free again, and DEALLOCATE ALL frees every name.
    for name in ["S_1", "S_2"] {
        assert_eq!(
            outcome(&mut c, &prepare_named(name, "SELECT 2")).await,
            (vec![], none.clone())
        );
    }
    assert_eq!(
        outcome(&mut c, &run_unnamed("DEALLOCATE ALL")).await,
        (vec!["DEALLOCATE ALL".into()], none.clone())
    );
    for name in ["S_1", "S_2"] {
        assert_eq!(
            outcome(&mut c, &run_named(name)).await,
            (vec![], vec!["26000".into()])
        );
        assert_eq!(
            outcome(&mut c, &prepare_named(name, "SELECT 3")).await,
            (vec![], none.clone())
        );
        assert_eq!(
            outcome(&mut c, &run_named(name)).await,
            (vec!["SELECT 1".into()], none.clone())
        );
    }
    // A statement parsed but never run deallocates nothing.
    let mut parse_only = bytes::BytesMut::new();
    postgres_protocol::message::frontend::parse(
        "",
        "DEALLOCATE S_1",
        std::iter::empty(),
        &mut parse_only,
    )
    .expect("parse");
    postgres_protocol::message::frontend::sync(&mut parse_only);
    assert_eq!(outcome(&mut c, &parse_only).await, (vec![], none.clone()));
    assert_eq!(
        outcome(&mut c, &run_named("S_1")).await,
        (vec!["SELECT 1".into()], none)
    );
    proxy.shutdown().await;
}
