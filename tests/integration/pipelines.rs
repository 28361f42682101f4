//! Random pipelines of extended-protocol messages, each sent both straight to Postgres and
//! through the proxy in transaction mode: every reply must be the same. Several clients share
//! a pool smaller than their number, so statements move between backend connections.
//!
//! A failure prints the seed; `PGTENANT_FUZZ_SEED=<seed>` repeats that client's pipelines (as
//! the first client; `PGTENANT_FUZZ_CLIENTS=1` runs it alone).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use crate::support::*;

/// Statement texts: plain, several rows, a parse error, an execution error, transaction
/// control, and settings that must follow the client between connections.
const TEXTS: &[&str] = &[
    "SELECT 1",
    "SELECT 2",
    "SELECT x FROM generate_series(1, 3) x",
    "SELEC 3",
    "SELECT 1 / 0",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SHOW application_name",
    "SET application_name = 'fuzzed'",
    "RESET application_name",
    "RESET ALL",
    "DISCARD ALL",
];

/// Simple queries sent inside a pipeline.
const QUERIES: &[&str] = &[
    "SELECT 7",
    "BEGIN",
    "COMMIT",
    "SELC",
    "SHOW application_name",
    "SET application_name = 'simple'",
    "RESET ALL",
];

const NAMES: &[&str] = &["s1", "s2", "s3"];

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// One pipeline ending in Sync, and a readable account of it. Only what behaves the same
/// through a transaction pooler is generated: the unnamed statement and portal are used only
/// in the batch (up to a Sync or Query) that made them, as with any transaction pooler; and a
/// named statement is described only while the transaction cannot have failed (before the
/// first Sync or Query, when it starts `healthy`): see the README on Describe in a failed
/// transaction.
fn pipeline(rng: &mut Rng, healthy: bool) -> (BytesMut, String) {
    let mut out = BytesMut::new();
    let mut text = String::new();
    let mut unnamed_statement = false;
    let mut portal = false;
    let mut may_describe = healthy;
    for _ in 0..1 + rng.below(8) {
        match rng.below(10) {
            0 | 1 => {
                let name = if rng.below(2) == 0 {
                    ""
                } else {
                    rng.pick(NAMES)
                };
                let sql = rng.pick(TEXTS);
                frontend::parse(name, sql, std::iter::empty(), &mut out).expect("parse");
                unnamed_statement |= name.is_empty();
                let _ = write!(text, "P({name:?}, {sql:?}) ");
            }
            2 | 3 => {
                let name = if unnamed_statement && rng.below(2) == 0 {
                    ""
                } else {
                    rng.pick(NAMES)
                };
                bind_unnamed_portal(name, &mut out);
                portal = true;
                let _ = write!(text, "B({name:?}) ");
            }
            4 if portal => {
                let rows = rng.below(3) as i32;
                frontend::execute("", rows, &mut out).expect("execute");
                let _ = write!(text, "E({rows}) ");
            }
            5 => {
                if portal && rng.below(2) == 0 {
                    frontend::describe(b'P', "", &mut out).expect("describe");
                    text.push_str("D(P) ");
                } else {
                    let name = if unnamed_statement && (!may_describe || rng.below(3) == 0) {
                        ""
                    } else if may_describe {
                        rng.pick(NAMES)
                    } else {
                        continue;
                    };
                    frontend::describe(b'S', name, &mut out).expect("describe");
                    let _ = write!(text, "D(S {name:?}) ");
                }
            }
            6 => {
                if rng.below(3) == 0 {
                    frontend::close(b'P', "", &mut out).expect("close");
                    portal = false;
                    text.push_str("C(P) ");
                } else {
                    let name = rng.pick(NAMES);
                    frontend::close(b'S', name, &mut out).expect("close");
                    let _ = write!(text, "C(S {name:?}) ");
                }
            }
            7 => {
                frontend::sync(&mut out);
                (unnamed_statement, portal, may_describe) = (false, false, false);
                text.push_str("S ");
            }
            8 => {
                let sql = rng.pick(QUERIES);
                frontend::query(sql, &mut out).expect("query");
                (unnamed_statement, portal, may_describe) = (false, false, false);
                let _ = write!(text, "Q({sql:?}) ");
            }
            _ => {
                frontend::flush(&mut out);
                text.push_str("H ");
            }
        }
    }
    frontend::sync(&mut out);
    text.push('S');
    (out, text)
}

/// Sends a pipeline and then an empty query, whose EmptyQueryResponse and ReadyForQuery mark
/// the end of the replies (an empty query runs even in a failed transaction). Returns every
/// reply, as its tag with what identifies it: SQLSTATE of errors and notices, status of
/// ReadyForQuery, contents of rows, parameter statuses and command tags.
async fn replies(c: &mut RawClient, pipeline: &[u8]) -> Result<Vec<String>, Vec<String>> {
    let mut bytes = BytesMut::from(pipeline);
    frontend::query("", &mut bytes).expect("query");
    c.send(&bytes).await;
    let mut seen = Vec::new();
    loop {
        let Ok((tag, body)) = tokio::time::timeout(Duration::from_secs(20), c.read()).await else {
            seen.push("<no reply in 20 s>".to_owned());
            return Err(seen);
        };
        let what = match tag {
            // Messages may differ: one naming a statement the proxy had mapped ahead of a
            // failure names its backend name.
            b'E' | b'N' => pgtenant::protocol::messages::error_fields(&body)
                .0
                .unwrap_or("")
                .to_owned(),
            b'Z' => char::from(body[0]).to_string(),
            b'D' | b'S' | b'C' | b'T' => String::from_utf8_lossy(&body).into_owned(),
            _ => String::new(),
        };
        seen.push(format!("{}{what}", char::from(tag)));
        if tag == b'Z' && seen.len() >= 2 && seen[seen.len() - 2] == "I" {
            return Ok(seen);
        }
    }
}

/// Runs `rounds` pipelines from `seed` on a direct connection and a proxied one side by side.
async fn compare(direct: SocketAddr, proxy: SocketAddr, db: String, seed: u64, rounds: usize) {
    let mut straight = RawClient::login(direct, SCRAM_ROLE, &db).await;
    let mut proxied = RawClient::login(proxy, "app", &db).await;
    // The same starting application_name on both.
    for c in [&mut straight, &mut proxied] {
        assert_eq!(c.query("SET application_name = 'start'").await.1, b'I');
    }
    let mut rng = Rng(seed | 1);
    let mut history = Vec::new();
    let mut status = "ZI".to_owned();
    for round in 0..rounds {
        let healthy = status != "ZE";
        let (bytes, text) = pipeline(&mut rng, healthy);
        history.push(text);
        let mut checks = vec![bytes];
        // Then, outside a transaction block, whether each name is prepared (Describe fails
        // with 26000 when it is not).
        let mut probe = BytesMut::new();
        for name in NAMES {
            frontend::describe(b'S', name, &mut probe).expect("describe");
            frontend::sync(&mut probe);
        }
        checks.push(probe);
        for (i, bytes) in checks.iter().enumerate() {
            let want = replies(&mut straight, bytes).await;
            let got = replies(&mut proxied, bytes).await;
            assert!(
                want.is_ok() && want == got,
                "seed {seed}, round {round}{}: replies differ\n\
                 last pipelines:\n  {}\ndirect: {want:?}\nproxied: {got:?}",
                if i == 1 {
                    " (D(S s1) S D(S s2) S D(S s3) S)"
                } else {
                    ""
                },
                history[history.len().saturating_sub(6)..].join("\n  ")
            );
            if let Ok(seen) = want {
                // The status before the closing empty query's replies.
                status = seen[seen.len() - 3].clone();
            }
            // In a transaction block a probe's 26000 would fail the transaction.
            if status != "ZI" {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_get_the_replies_postgres_gives() {
    let (proxy, slug) = txn_proxy("", "pool_size = 2\ncheckout_timeout_ms = 30000").await;
    let direct: SocketAddr = ([127, 0, 0, 1], bed().a.port).into();
    let base = match std::env::var("PGTENANT_FUZZ_SEED") {
        Ok(s) => s.parse().expect("PGTENANT_FUZZ_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    // Three clients on two connections: statements and settings must follow each client.
    let n: u64 = std::env::var("PGTENANT_FUZZ_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let seed = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tokio::spawn(compare(direct, proxy.addrs[0], slug.clone(), seed, 150))
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    proxy.shutdown().await;
}

/// Who sends a step of [`compare_steps`].
#[derive(Clone, Copy, PartialEq)]
enum By {
    /// The client of the step before.
    Same,
    /// A new client, which through a pool of one gets the connection the last one left.
    New,
    /// A new client that sends the step without the closing empty query (which would drop the
    /// unnamed statement and end a batch) and reads replies up to the first of this type; the
    /// next step's new client takes over from it.
    NewReadingTo(u8),
}

/// Runs `steps` on a direct connection and through the proxy; every step's replies must be
/// the same.
async fn compare_steps(steps: &[(By, BytesMut)]) {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let direct: SocketAddr = ([127, 0, 0, 1], bed().a.port).into();
    let mut straight: Option<RawClient> = None;
    let mut proxied: Option<RawClient> = None;
    for (i, (by, bytes)) in steps.iter().enumerate() {
        if *by != By::Same || straight.is_none() {
            // The client before leaves as it is, mid-batch or not.
            drop(straight.take());
            drop(proxied.take());
            straight = Some(RawClient::login(direct, SCRAM_ROLE, &slug).await);
            proxied = Some(RawClient::login(proxy.addrs[0], "app", &slug).await);
        }
        let (Some(s), Some(p)) = (straight.as_mut(), proxied.as_mut()) else {
            unreachable!("both logged in above");
        };
        if let By::NewReadingTo(last) = *by {
            let mut seen = Vec::new();
            for c in [&mut *s, &mut *p] {
                c.send(bytes).await;
                let mut tags = Vec::new();
                loop {
                    let (tag, _) = c.read().await;
                    tags.push(tag);
                    if tag == last {
                        break;
                    }
                }
                seen.push(tags);
            }
            assert_eq!(seen[0], seen[1], "step {i}: direct, proxied");
            continue;
        }
        let want = replies(s, bytes).await;
        let got = replies(p, bytes).await;
        assert!(
            want.is_ok() && want == got,
            "step {i}: direct {want:?}, proxied {got:?}"
        );
    }
    proxy.shutdown().await;
}

fn msgs(build: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    build(&mut out);
    out
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), out).expect("parse");
}

fn bind_execute(out: &mut BytesMut, statement: &str) {
    bind_unnamed_portal(statement, out);
    frontend::execute("", 0, out).expect("execute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_follows_the_transaction_state_as_postgres_does() {
    let q = |sql: &'static str| msgs(|b| frontend::query(sql, b).expect("query"));
    compare_steps(&[
        (
            By::New,
            msgs(|b| {
                parse(b, "s1", "SELECT 1");
                frontend::sync(b);
            }),
        ),
        // Refused in a failed transaction, by name or ALL, and the statement stays.
        (By::Same, q("BEGIN")),
        (By::Same, q("SELECT 1 / 0")),
        (By::Same, q("DEALLOCATE s1")),
        (By::Same, q("DEALLOCATE ALL")),
        (By::Same, q("ROLLBACK")),
        (
            By::Same,
            msgs(|b| {
                bind_execute(b, "s1");
                frontend::sync(b);
            }),
        ),
        // Inside a healthy transaction it goes; a second time it fails.
        (By::Same, q("BEGIN")),
        (By::Same, q("DEALLOCATE s1")),
        (By::Same, q("DEALLOCATE s1")),
        (By::Same, q("ROLLBACK")),
        // A Parse of DEALLOCATE runs when executed: the statement prepared in between goes.
        (
            By::Same,
            msgs(|b| {
                parse(b, "", "DEALLOCATE s2");
                parse(b, "s2", "SELECT 2");
                bind_execute(b, "");
                frontend::sync(b);
                bind_execute(b, "s2");
                frontend::sync(b);
            }),
        ),
        // A DEALLOCATE Query in the middle of a batch, with its replies still due (which
        // Postgres keeps until a Flush or Sync).
        (
            By::Same,
            msgs(|b| {
                parse(b, "s3", "SELECT 3");
                frontend::sync(b);
                parse(b, "", "SELECT 1");
                bind_execute(b, "");
                frontend::query("DEALLOCATE s3", b).expect("query");
                bind_execute(b, "s3");
                frontend::sync(b);
            }),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_runs_another_clients_unnamed_statement_or_portal() {
    compare_steps(&[
        (
            By::NewReadingTo(b'Z'),
            msgs(|b| {
                parse(b, "", "SELECT 'first client'");
                frontend::sync(b);
            }),
        ),
        // The same backend connection, another client: no unnamed statement of its own.
        (
            By::New,
            msgs(|b| {
                bind_execute(b, "");
                frontend::sync(b);
            }),
        ),
        // A client leaves with its batch open after an error that makes the backend skip a
        // Query: the connection is not handed on still skipping.
        (
            By::NewReadingTo(b'E'),
            msgs(|b| {
                parse(b, "", "SELECT 1");
                bind_execute(b, "no_such_statement");
                frontend::query("SELECT 2", b).expect("query");
            }),
        ),
        (
            By::New,
            msgs(|b| {
                frontend::describe(b'P', "", b).expect("describe");
                frontend::sync(b);
            }),
        ),
        // Its own unnamed statement from the batch before, while replies of that batch and of
        // this one (which Postgres keeps until a Flush or Sync) are still due.
        (
            By::Same,
            msgs(|b| {
                frontend::query("SELECT 1", b).expect("query");
                parse(b, "", "SELECT 2");
                frontend::sync(b);
                parse(b, "s2", "SELECT 3");
                bind_execute(b, "");
                frontend::sync(b);
            }),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_statement_no_client_holds_is_closed() {
    let (proxy, slug) = txn_proxy("", "pool_size = 1").await;
    let addr = proxy.addrs[0];
    // The copies on the one backend connection, by their text.
    let count = msgs(|b| {
        let sql = "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT 101'";
        frontend::query(sql, b).expect("query");
    });
    let prepare = msgs(|b| {
        parse(b, "s1", "SELECT 101");
        frontend::sync(b);
    });
    let close = msgs(|b| {
        frontend::close(b'S', "s1", b).expect("close");
        frontend::sync(b);
    });
    let row = |n: char| format!("D\0\u{1}\0\0\0\u{1}{n}");
    let mut a = RawClient::login(addr, "app", &slug).await;
    let mut b = RawClient::login(addr, "app", &slug).await;
    for c in [&mut a, &mut b] {
        let seen = replies(c, &prepare).await.expect("prepare");
        assert_eq!(seen[0], "1", "{seen:?}");
    }
    // A lets go; B still holds the statement, so the copy stays.
    replies(&mut a, &close).await.expect("close");
    let seen = replies(&mut a, &count).await.expect("count");
    assert!(seen.contains(&row('1')), "{seen:?}");
    // B lets go too: nobody holds it, and the connection closes it before its next transaction.
    replies(&mut b, &close).await.expect("close");
    let seen = replies(&mut a, &count).await.expect("count");
    assert!(seen.contains(&row('0')), "{seen:?}");
    proxy.shutdown().await;
}
