//! The transaction relay under fuzzing, over real sockets on the loopback interface: a client
//! sends pipelines of Parse, Bind, Describe, Execute, Close, Sync, Flush, Query, copy and
//! FunctionCall messages that the fuzzer composes, through a [`TxnSession`] whose pool connects
//! to [`PgModel`] backends (or to a backend that answers with the fuzzer's bytes).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::pg_model::{PgModel, TEXTS, split_message};
use crate::config::{PoolMode, SessionStatePolicy};
use crate::error::Secret;
use crate::pool::backend_tls::{BackendTls, BackendTlsMode};
use crate::pool::{KickSwitch, Pools, TenantPool};
use crate::protocol::messages;
use crate::session::cancel::CancelRegistry;
use crate::session::tracking::Settings;
use crate::session::txn::{TxnEnd, TxnSession};
use crate::tenant::{BackendTarget, PoolSettings, Tenant, TenantStatus};

/// Longest one input may take; a relay still busy then is stuck.
const INPUT_LIMIT: Duration = Duration::from_secs(20);

/// Longest a client waits for the replies it expects before it leaves.
const REPLIES_LIMIT: Duration = Duration::from_secs(2);

/// Client messages composed from one input, at most.
const MAX_MESSAGES: usize = 400;

/// Statements a backend connection keeps: small, so that the proxy evicts and prepares again.
const STATEMENTS_PER_CONNECTION: u32 = 3;

const STATEMENT_NAMES: &[&str] = &["", "s1", "s2", "a_long_statement_name"];
const PORTAL_NAMES: &[&str] = &["", "p1"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the relay's fuzz targets")
    })
}

/// A client session composed by [`compose`]: its messages, and the replies a backend of its
/// own gives them.
pub struct Composed {
    pub messages: BytesMut,
    pub direct: BytesMut,
    /// How much of `direct` a backend of its own has flushed by the end (see [`flushes`]).
    pub flushed: usize,
}

/// The client messages `data` stands for, as one or two clients' sessions (the op that splits
/// them comes once): well-formed messages in any order a client may send them, each answered
/// by a [`PgModel`] of the session's own as it is composed. In copy-in mode a client sends copy
/// messages (or Sync and Flush, which Postgres ignores there): another op becomes CopyData.
pub fn compose(data: &[u8]) -> Vec<Composed> {
    let mut sessions = vec![(BytesMut::new(), PgModel::default(), BytesMut::new(), 0)];
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    for _ in 0..MAX_MESSAGES {
        let Some(mut op) = next() else { break };
        let arg = next().unwrap_or(0);
        let (out, model, direct, flushed) = sessions.last_mut().expect("one session at least");
        if model.closed {
            break;
        }
        if model.in_copy() && !matches!(op % 14, 7 | 8 | 10 | 11) {
            op = 10;
        }
        // In a failed transaction a client ends it. (What else it sends fails as it does
        // without the proxy, except that a statement the connection must prepare again fails
        // with 25P02 there even where Postgres would describe it: see the README's Limits.)
        let rollback = model.in_failed_block() && op % 14 != 7;
        let start = out.len();
        let statement = STATEMENT_NAMES[usize::from(arg) % STATEMENT_NAMES.len()];
        let portal = PORTAL_NAMES[usize::from(arg) % PORTAL_NAMES.len()];
        let text = TEXTS[usize::from(arg) % TEXTS.len()];
        match op % 14 {
            _ if rollback => messages::query(out, "rollback"),
            0 => {
                let statement = STATEMENT_NAMES[usize::from(arg >> 5) % STATEMENT_NAMES.len()];
                messages::write_message(out, b'P', |b| {
                    put_cstr(b, statement);
                    put_cstr(b, text);
                    b.put_u16(0);
                });
            }
            1 => {
                let portal = PORTAL_NAMES[usize::from(arg >> 7)];
                let params = u16::from(arg & 0x60 == 0x60);
                messages::write_message(out, b'B', |b| {
                    put_cstr(b, portal);
                    put_cstr(b, statement);
                    b.put_u16(0);
                    b.put_u16(params);
                    for _ in 0..params {
                        b.put_i32(-1);
                    }
                    b.put_u16(0);
                });
            }
            2 => describe_or_close(out, b'D', b'S', statement),
            3 => describe_or_close(out, b'D', b'P', portal),
            4 => messages::write_message(out, b'E', |b| {
                put_cstr(b, portal);
                b.put_u32(0);
            }),
            5 => describe_or_close(out, b'C', b'S', statement),
            6 => describe_or_close(out, b'C', b'P', portal),
            7 => messages::write_message(out, b'S', |_| {}),
            8 => messages::write_message(out, b'H', |_| {}),
            9 => messages::query(out, text),
            10 => messages::write_message(out, b'd', |b| b.put_slice(b"1\n")),
            11 if arg % 2 == 0 => messages::write_message(out, b'c', |_| {}),
            11 => messages::write_message(out, b'f', |b| put_cstr(b, "stop")),
            12 => messages::write_message(out, b'F', |b| {
                b.put_u32(0);
                b.put_u16(0);
                b.put_u16(0);
                b.put_u16(0);
            }),
            _ => {
                if sessions.len() == 1 {
                    sessions.push((BytesMut::new(), PgModel::default(), BytesMut::new(), 0));
                }
                continue;
            }
        }
        if let Some((tag, body, _)) = split_message(&out[start..]) {
            let before = direct.len();
            model.message(tag, body, direct);
            if tag == b'H' || model.closed || flushes(&direct[before..]) {
                *flushed = direct.len();
            }
        }
    }
    sessions
        .into_iter()
        .map(|(messages, _, direct, flushed)| Composed {
            messages,
            direct,
            flushed,
        })
        .collect()
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn describe_or_close(out: &mut BytesMut, tag: u8, what: u8, name: &str) {
    messages::write_message(out, tag, |b| {
        b.put_u8(what);
        put_cstr(b, name);
    });
}

/// What a client sees of a reply, for comparing: the message type and what identifies it (an
/// error's severity and SQLSTATE, a command tag, a transaction status, a column count), not
/// the text that may name the proxy's statements. Notices and ParameterStatus are left out.
fn replies(bytes: &[u8]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut rest = bytes;
    while let Some((tag, body, next)) = split_message(rest) {
        rest = next;
        let field = |code: u8| -> String {
            let mut fields = body.split(|&b| b == 0);
            fields
                .find(|f| f.first() == Some(&code))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                .unwrap_or_default()
        };
        seen.push(match tag {
            b'N' | b'S' => continue,
            b'E' => format!("E {} {}", field(b'S'), field(b'C')),
            b'C' => format!("C {}", String::from_utf8_lossy(body).trim_end_matches('\0')),
            b'Z' | b'T' | b't' => format!("{} {:?}", tag as char, &body[..body.len().min(2)]),
            _ => (tag as char).to_string(),
        });
    }
    seen
}

fn tenant(port: u16) -> Tenant {
    Tenant {
        slug: "fuzz".into(),
        status: TenantStatus::Active,
        backend: Arc::new(BackendTarget {
            server: "model".into(),
            host: "127.0.0.1".into(),
            port,
            database: "fuzz".into(),
            user: "fuzz".into(),
            server_max_connections: 4,
            password: Secret::default(),
            tls: BackendTls {
                mode: BackendTlsMode::Disable,
                ca_file: None,
            },
        }),
        pool: PoolSettings {
            mode: PoolMode::Transaction,
            size: 1,
            min_idle: 0,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reset_query: String::new(),
            max_client_connections: 4,
            session_state: SessionStatePolicy::Pin,
            prepared_statements_per_connection: STATEMENTS_PER_CONNECTION,
            reply_timeout: None,
        },
        users: Default::default(),
    }
}

/// Accepts backend connections: each logs in and is served by a [`PgModel`], or, with a
/// `script`, gets those bytes after its login, then an end of stream.
async fn backends(listener: TcpListener, script: Option<Arc<[u8]>>) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        connections.spawn(backend(stream, script.clone()));
    }
}

async fn backend(mut stream: TcpStream, script: Option<Arc<[u8]>>) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(4096);
    // The StartupMessage: a length, then that many bytes in all.
    loop {
        if let Some(len) = input
            .first_chunk::<4>()
            .map(|l| u32::from_be_bytes(*l) as usize)
            && input.len() >= len
        {
            let _ = input.split_to(len.max(4).min(input.len()));
            break;
        }
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
    let mut out = BytesMut::new();
    PgModel::login(&mut out);
    if let Some(script) = script {
        out.extend_from_slice(&script);
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        while stream.read_buf(&mut input).await? > 0 {
            input.clear();
        }
        return Ok(());
    }
    let mut model = PgModel::default();
    // Replies go out when Postgres flushes them (see `flushes`); it also does when its 8 KiB
    // buffer fills, which the composed pipelines stay under.
    let mut due = true;
    loop {
        if due {
            stream.write_all(&out).await?;
            out.clear();
            due = false;
        }
        if model.closed {
            return Ok(());
        }
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        while let Some((tag, body, rest)) = split_message(&input[used..]) {
            let before = out.len();
            model.message(tag, body, &mut out);
            used = input.len() - rest.len();
            due |= tag == b'H' || model.closed || flushes(&out[before..]);
            if model.closed {
                break;
            }
        }
        let _ = input.split_to(used);
    }
}

/// Whether replies include one after which Postgres flushes its output: ReadyForQuery,
/// CopyInResponse, an error or notice. (A Flush message, and the end of the connection, flush
/// too.)
fn flushes(replies: &[u8]) -> bool {
    let mut rest = replies;
    while let Some((tag, _, next)) = split_message(rest) {
        if matches!(tag, b'Z' | b'G' | b'E' | b'N') {
            return true;
        }
        rest = next;
    }
    false
}

/// One client's session through the relay: sends `session`, reads replies until it has `want`
/// of them (or the relay closes), then leaves and reads what else comes. The relay's end is
/// handled as `session::serve` does: a refusal reaches the client as an ErrorResponse.
async fn through_relay(
    pool: &Arc<TenantPool>,
    pools: &Pools,
    registry: &Arc<CancelRegistry>,
    session: &[u8],
    want: usize,
) -> (BytesMut, TxnEnd) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = TcpStream::connect(addr).await.expect("connect");
    let (mut client, peer) = listener.accept().await.expect("accept");
    let kick = KickSwitch::new(
        1,
        peer,
        Arc::new(AtomicBool::new(false)),
        pools.proxy_pause(),
    );
    let key = registry.register();
    let repool = || None;
    let relay = async {
        let mut relay = TxnSession::new(
            pool.clone(),
            &repool,
            &key,
            &kick,
            Duration::from_secs(1),
            Settings::from_startup(&[]),
            BytesMut::new(),
        );
        let end = relay.run(&mut client).await;
        drop(relay);
        if let TxnEnd::Refused(e) = &end {
            let mut out = BytesMut::new();
            messages::error_response(&mut out, e);
            let _ = client.write_all(&out).await;
        }
        drop(client);
        end
    };
    let app = async {
        let (mut from_relay, mut to_relay) = app.into_split();
        let mut got = BytesMut::new();
        let read_wanted = async {
            while replies(&got).len() < want {
                if from_relay.read_buf(&mut got).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        };
        // Fewer replies than a backend of its own gives: the comparison shows which.
        let _ = tokio::join!(
            to_relay.write_all(session),
            tokio::time::timeout(REPLIES_LIMIT, read_wanted)
        );
        let _ = to_relay.shutdown().await;
        let mut rest = Vec::new();
        let _ = from_relay.read_to_end(&mut rest).await;
        got.extend_from_slice(&rest);
        got
    };
    let (end, got) = tokio::join!(relay, app);
    (got, end)
}

/// Runs `body` with a listener of backends on the loopback interface and a pool of them.
fn with_backends<F>(script: Option<Arc<[u8]>>, body: F)
where
    F: AsyncFnOnce(&Arc<TenantPool>, &Pools, &Arc<CancelRegistry>),
{
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let mut tasks = JoinSet::new();
        tasks.spawn(backends(listener, script));
        let pools = Pools::default();
        let pool = pools.pool_for(&tenant(port));
        let registry = Arc::new(CancelRegistry::default());
        tokio::time::timeout(INPUT_LIMIT, body(&pool, &pools, &registry))
            .await
            .expect("the relay stalled");
        pools.close_all();
    });
}

/// Client pipelines (see [`compose`]) get the same replies through the relay as from a backend
/// of their own; a second client then finds the statements and settings the first left on the
/// shared connection, and must see none of them.
pub fn txn_pipeline(data: &[u8]) {
    let sessions = compose(data);
    with_backends(None, async |pool, pools, registry| {
        for (i, session) in sessions.iter().enumerate() {
            // All that a backend of its own flushed must come, and whatever else comes must
            // be what it would send next (the proxy may send a Flush of its own).
            let all = replies(&session.direct);
            let want = replies(&session.direct[..session.flushed]).len();
            let (got, end) = through_relay(pool, pools, registry, &session.messages, want).await;
            if let TxnEnd::ServerProtocol(e) = &end {
                panic!("client {i}: the relay lost track of the backend: {e}");
            }
            let got = replies(&got);
            assert!(
                got.len() >= want && all.starts_with(&got),
                "client {i}: replies differ ({end:?})\n  left: {got:?}\n right: {all:?} (first {want} flushed)"
            );
        }
    });
}

/// A backend that answers whatever the fuzzer says (after a proper login) to a client pipeline:
/// the relay ends the session, whatever the bytes, without a panic or a hang.
pub fn txn_replies(data: &[u8]) {
    let (client, script) = match data.split_first() {
        Some((&n, rest)) => rest.split_at((usize::from(n) * 4).min(rest.len())),
        None => return,
    };
    let sessions = compose(client);
    with_backends(Some(script.into()), async |pool, pools, registry| {
        for session in &sessions {
            let _ = through_relay(pool, pools, registry, &session.messages, 0).await;
        }
    });
}
