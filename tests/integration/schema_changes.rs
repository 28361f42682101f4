//! Prepared statements across schema changes in transaction mode: a client that prepares after a
//! migration gets the statement as the schema is now, never a backend copy prepared before it,
//! as on a direct connection.

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
