//! Transaction pooling: a client holds a backend connection from the first message of a
//! transaction until the ReadyForQuery 'I' that ends it, and none in between.
//!
//! Client messages pass through one at a time. Most are copied unchanged (large ones streamed);
//! Parse, Bind, Describe and Close of named statements are rewritten to backend-side names
//! ([`super::prepared`]), and a statement the current connection lacks is prepared on it first.
//! Every forwarded message that the backend answers leaves an entry in a queue of expected
//! replies, so the proxy knows which replies to swallow (those to its own injected messages) and
//! where to put the replies it makes itself (CloseComplete for a client-only Close, the answer to
//! a DEALLOCATE). Session settings are replayed onto each
//! connection that does not carry them yet ([`super::tracking`]).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::cancel::CancelKey;
use super::hangup::HangupWatch;
use super::prepared::{self, ClientStatements, MAX_STATEMENTS_PER_CLIENT, Statement};
use super::relay::{Passes, Waiting};
use super::silence::SilenceWatch;
use super::sockio::{ReadArm, RelayIo};
use super::spare;
use super::tracking::{
    Classified, Settings, SettingsChange, UNKNOWN_SETTINGS, classify, statements,
};
use crate::config::SessionStatePolicy;
use crate::error::ClientError;
use crate::pool::{CheckoutError, Gate, KickSwitch, PooledConn, TenantPool};
use crate::protocol::{MAX_CLIENT_MESSAGE_LENGTH, messages};
use crate::stats::{SessionCounts, TenantStats};

/// Most bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Unwritten output beyond which the side producing it is not read.
const HIGH_WATER: usize = 64 * 1024;
/// A buffer that a long message made larger than this goes back to ordinary size once it is
/// empty (client input: once little of it is left): a 1 GiB statement leaves no 1 GiB buffer
/// behind it.
const MAX_IDLE_CAPACITY: usize = 256 * 1024;
/// Longest statement text remembered as plain (see `TxnSession::classify_parse`).
const MAX_REMEMBERED_SQL: usize = 4096;

/// Largest backend message the proxy reads whole (ParameterStatus, CommandComplete, ...).
const MAX_DECODED_SERVER_MESSAGE: usize = 1 << 20;

/// Longest prefix of a Bind message searched for its two names.
const MAX_BIND_NAMES: usize = 8 * 1024;

/// Portals whose execution changes settings that one client may have open; beyond, the client
/// is pinned to its connection, where its settings need no tracking.
const MAX_PORTAL_CHANGES: usize = 1024;

/// Replies outstanding before the proxy stops reading a pipelining client.
const MAX_EXPECTED: usize = 64 * 1024;

/// The statement standing in for the Sync of a refused batch (see
/// `TxnSession::sync_after_refusal`).
const REFUSAL_STAND_IN: &str =
    "DO $pgtenant$BEGIN RAISE EXCEPTION 'refused by pgtenant'; END$pgtenant$";

/// Backend name of the scratch statement of `TxnSession::parse_duplicate`.
const PROBE_STATEMENT: &str = "pgtenant_probe";

/// Reported parameters a client cannot set, so never replayed.
const UNSETTABLE_PARAMETERS: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

/// How a transaction-mode session ended.
#[derive(Debug)]
pub enum TxnEnd {
    /// The client left.
    ClientLeft,
    /// The backend went away mid-transaction; what it sent was relayed.
    ServerGone,
    /// The client must be told this and disconnected.
    Refused(ClientError),
    /// The backend broke the protocol (or the proxy lost track of it).
    ServerProtocol(String),
}

/// The backend message that completes a forwarded client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// Query or FunctionCall: everything up to ReadyForQuery.
    Query,
}

/// Whose reply it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The client's: forwarded.
    Client,
    /// The proxy's own message: swallowed.
    Proxy,
    /// The proxy's replacement for a Sync after a refused message: only its ReadyForQuery is
    /// forwarded.
    SyncStandIn,
    /// The second of two Parses of the same text under the scratch name, for a client's Parse
    /// of a name it already has (see `TxnSession::parse_duplicate`): it fails with "already
    /// exists", which the proxy words with the client's name.
    DuplicateCheck,
}

/// A reply the proxy writes itself, in order with the backend's.
#[derive(Debug)]
enum Local {
    /// A Close the proxy answers alone; of a named statement, the one it forgot.
    CloseComplete(Option<NamedStatement>),
    Error(Box<ClientError>),
    CommandComplete(&'static str),
    /// ReadyForQuery with the transaction status the backend last reported.
    ReadyForQuery,
}

#[derive(Debug)]
enum Expect {
    Reply {
        reply: Reply,
        owner: Owner,
        /// A named Parse the client or proxy sent: undone if it fails.
        parse: Option<ParseUndo>,
    },
    Local(Local),
    /// Where the client ended a COPY FROM STDIN (CopyDone or CopyFail): Syncs it sent before
    /// this point, while the backend was in copy-in mode, are ignored by the backend.
    CopyEnd,
    /// A settings change of the statement whose reply follows (see `TxnSession::pend`).
    Pending(Pending),
}

/// Why the client's messages up to its next Sync are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    None,
    /// The proxy refused one: the Sync is replaced (see `TxnSession::sync_after_refusal`).
    Refused,
    /// The backend is skipping to the Sync after an error, which the client has not sent
    /// yet: it would skip them and answer none. The Sync goes on.
    Backend,
}

/// What the client's next message must wait for before the proxy handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barrier {
    None,
    /// A Sync went out while statements the proxy created or forgot in advance could still be
    /// undone (a failed or skipped Parse or Close): messages after the Sync run on the backend
    /// whatever happened, so the proxy must know which statements exist before it maps names.
    Undoable,
    /// DISCARD ALL went out: which statements exist is known once it has been answered.
    Drained,
}

impl Expect {
    /// A reply whose failure, or whose request the backend skips, changes which statements
    /// the client or the connection has (see `TxnSession::undo`).
    fn may_be_undone(&self) -> bool {
        matches!(
            self,
            Expect::Reply { parse: Some(_), .. } | Expect::Local(Local::CloseComplete(Some(_)))
        )
    }
}

#[derive(Debug)]
struct ParseUndo {
    client_name: Option<Box<[u8]>>,
    stmt: Arc<Statement>,
}

/// A client's statement name and the statement it stood for: what a Close the proxy answered
/// alone changed, undone if the backend skips the batch before it.
#[derive(Debug)]
struct NamedStatement {
    name: Box<[u8]>,
    stmt: Arc<Statement>,
}

/// Changes to the client's settings made inside the current transaction, applied when it ends
/// without error or rollback.
#[derive(Debug)]
enum Pending {
    Set(String, Bytes),
    Reset(String),
    ResetAll,
}

/// What a server message means for the queue.
enum ServerAction {
    Forward,
    Swallow,
}

impl ServerAction {
    /// Replies the client asked for (or nobody, on a desynchronised queue) reach it; the
    /// proxy's own are swallowed.
    fn for_owner(owner: Option<Owner>) -> ServerAction {
        if owner == Some(Owner::Client) || owner.is_none() {
            ServerAction::Forward
        } else {
            ServerAction::Swallow
        }
    }
}

/// A checkout in progress.
type Checkout = Pin<Box<dyn Future<Output = Result<PooledConn, CheckoutError>> + Send>>;

/// Everything a transaction-mode client carries between transactions.
pub struct TxnSession<'a> {
    pool: Arc<TenantPool>,
    /// Looks the tenant's pool up again after a catalog change replaced it.
    repool: &'a (dyn Fn() -> Option<Arc<TenantPool>> + Sync),
    key: &'a CancelKey,
    /// Marks transaction boundaries; says when the proxy drains or a PAUSE holds transactions.
    kick: &'a KickSwitch,
    /// Longest a transaction waits at a PAUSE.
    pause_limit: std::time::Duration,
    held: Option<crate::pool::pause::Hold>,
    /// Between begin_transaction and the end of that transaction.
    in_txn: bool,
    /// The tenant's usage counters, fed once per transaction from `counts`.
    stats: Arc<TenantStats>,
    counts: SessionCounts,
    policy: SessionStatePolicy,
    backend: Option<PooledConn>,
    acquiring: Option<Checkout>,
    cin: BytesMut,
    /// Length of the message at the front of `cin` that must be handled whole (Query, Parse,
    /// Describe, Close), while it has not all come: the client is read past `HIGH_WATER` until it
    /// has, up to Postgres' own message limit. Zero otherwise.
    cin_whole: usize,
    sout: BytesMut,
    /// Backend bytes; the first `sin_fwd` are approved for the client as they are, and go out
    /// after everything in `cout` (no copy unless the proxy must insert or drop something).
    sin: BytesMut,
    sin_fwd: usize,
    cout: BytesMut,
    client_stream_left: usize,
    /// The rest of the client message being streamed is dropped, not forwarded.
    client_stream_dropped: bool,
    server_stream_left: usize,
    server_stream_forward: bool,
    expect: VecDeque<Expect>,
    statements: ClientStatements,
    settings: Settings,
    pending: Vec<Pending>,
    txn_failed: bool,
    last_status: u8,
    pinned: Option<&'static str>,
    /// The class of the Query at the front of `cin`, kept while it waits for a backend so the
    /// text is classified once per query.
    waiting_query: Option<Classified>,
    /// The settings change the unnamed statement makes when run.
    unnamed_change: Option<Arc<SettingsChange>>,
    /// Open portals (by name, "" the unnamed one) whose execution changes settings.
    portal_changes: Vec<(Box<[u8]>, Arc<SettingsChange>)>,
    /// What the client's next message waits for (see `settled`).
    barrier: Barrier,
    /// An undoable entry (see `Expect::may_be_undone`) was queued since the client's last Sync.
    undoable_queued: bool,
    /// The last Parse text classified as plain: drivers send the same text in an unnamed Parse
    /// for every execution, and a comparison is cheaper than classifying it again.
    plain_sql: Vec<u8>,
    /// Whether this task's waker waits on the client's socket (see [`ReadArm`]).
    client_arm: ReadArm,
    /// The same for the backend connection's socket; disarmed for each connection taken.
    server_arm: ReadArm,
    /// The backend is in copy-in mode (CopyInResponse seen, client's CopyDone/CopyFail not yet).
    copy_in: bool,
    /// Whether the client's messages up to its next Sync are dropped, and why.
    skip: Skip,
    /// The held backend was sent an extended-protocol message after the last Sync (or Query)
    /// it was sent: it is inside the client's batch — an implicit transaction, or skipping to
    /// the next Sync after an error — even when every reply so far has arrived, so it must not
    /// go back to the pool before the ReadyForQuery of the Sync that ends the batch.
    unsynced: bool,
    poisoned: bool,
    client_done: bool,
    /// Checks whether a client that is held back (see `client_held_back`) has left.
    hangup: HangupWatch,
    /// Closes a backend that owes replies and stays silent too long.
    silence: SilenceWatch,
}

impl Drop for TxnSession<'_> {
    fn drop(&mut self) {
        for buf in [&mut self.cin, &mut self.sout, &mut self.sin, &mut self.cout] {
            spare::give(std::mem::take(buf));
        }
    }
}

impl<'a> TxnSession<'a> {
    /// A session whose client already logged in with `settings`; `early` holds whatever the
    /// client sent after its login.
    pub fn new(
        pool: Arc<TenantPool>,
        repool: &'a (dyn Fn() -> Option<Arc<TenantPool>> + Sync),
        key: &'a CancelKey,
        kick: &'a KickSwitch,
        pause_limit: std::time::Duration,
        settings: Settings,
        early: BytesMut,
    ) -> Self {
        let policy = pool.settings.session_state;
        let reply_timeout = pool.settings.reply_timeout;
        let stats = pool.stats.clone();
        TxnSession {
            stats,
            counts: SessionCounts::default(),
            pool,
            repool,
            key,
            kick,
            pause_limit,
            held: None,
            in_txn: false,
            policy,
            backend: None,
            acquiring: None,
            cin: early,
            cin_whole: 0,
            sout: spare::take(READ_CHUNK),
            sin: spare::take(READ_CHUNK),
            sin_fwd: 0,
            cout: spare::take(READ_CHUNK),
            client_stream_left: 0,
            client_stream_dropped: false,
            server_stream_left: 0,
            server_stream_forward: true,
            expect: VecDeque::new(),
            statements: ClientStatements::default(),
            settings,
            pending: Vec::new(),
            txn_failed: false,
            last_status: b'I',
            pinned: None,
            waiting_query: None,
            unnamed_change: None,
            portal_changes: Vec::new(),
            barrier: Barrier::None,
            undoable_queued: false,
            plain_sql: Vec::new(),
            client_arm: ReadArm::default(),
            server_arm: ReadArm::default(),
            copy_in: false,
            skip: Skip::None,
            unsynced: false,
            poisoned: false,
            client_done: false,
            hangup: HangupWatch::default(),
            silence: SilenceWatch::new(reply_timeout),
        }
    }

    /// Serves the client until it leaves or the session must end.
    pub async fn run<C: AsyncWrite + RelayIo + Unpin>(&mut self, client: &mut C) -> TxnEnd {
        let end = poll_fn(|cx| self.poll_session(cx, client)).await;
        // A backend whose replies no longer match what was sent to it is in an unknown state.
        if matches!(end, TxnEnd::ServerProtocol(_)) {
            self.poisoned = true;
        }
        // Whatever the backend said last (its FATAL) still reaches the client.
        self.spill_server();
        if !self.cout.is_empty() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                client.write_all(&self.cout),
            )
            .await;
        }
        self.finish();
        self.counts.flush(&self.stats);
        end
    }

    /// Gives the backend back if it sits idle between transactions; closes it otherwise.
    fn finish(&mut self) {
        let Some(conn) = self.backend.take() else {
            return;
        };
        let cancelled = self.key.detach();
        if self.at_rest() && !cancelled && !self.poisoned {
            conn.give_back();
        }
    }

    /// The held backend sits between transactions: nothing outstanding, its last
    /// ReadyForQuery said idle, no batch open since, nothing half sent or half read. A pinned
    /// connection carries state of this client's, and one that got only part of a message
    /// would read the next client's bytes as the rest: neither is at rest.
    // Runs on every pass of poll_session (through release_if_done).
    #[inline(always)]
    fn at_rest(&self) -> bool {
        self.expect.is_empty()
            && self.last_status == b'I'
            && self.pinned.is_none()
            && !self.unsynced
            && self.client_stream_left == 0
            && self.server_stream_left == 0
            && self.sout.is_empty()
    }

    fn poll_session<C: AsyncWrite + RelayIo + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
    ) -> Poll<TxnEnd> {
        let mut waiting = Waiting::default();
        let mut passes = Passes::default();
        loop {
            let mut progress = false;
            if let Some(held) = self.held.as_mut()
                && let Poll::Ready(resumed) = held.as_mut().poll(cx)
            {
                self.held = None;
                if !resumed {
                    return Poll::Ready(TxnEnd::Refused(ClientError::tenant_paused(
                        &self.pool.tenant,
                        self.pause_limit.as_millis() as u64,
                    )));
                }
                progress = true;
            }
            if let Some(acquiring) = self.acquiring.as_mut() {
                match acquiring.as_mut().poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(result) => {
                        self.acquiring = None;
                        match result {
                            Ok(conn) => {
                                self.attach(conn);
                                progress = true;
                            }
                            Err(CheckoutError::Retired) => match (self.repool)() {
                                Some(pool) => {
                                    self.pool = pool;
                                    progress = true;
                                }
                                None => {
                                    return Poll::Ready(TxnEnd::Refused(
                                        ClientError::unknown_tenant(&self.pool.tenant),
                                    ));
                                }
                            },
                            Err(e) => return Poll::Ready(TxnEnd::Refused(self.checkout_error(e))),
                        }
                    }
                }
            }
            // Each direction in turn: read, handle, and pass on at once, so one pass carries a
            // request to the backend or a reply to the client.
            if !self.client_done && !waiting.client_read && !self.client_held_back() {
                self.hangup.stop();
                match read_some(cx, client, &mut self.cin, &mut self.client_arm) {
                    Poll::Pending => waiting.client_read = true,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.client_done = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.counts.bytes_in += n as u64;
                        progress = true;
                    }
                }
            }
            match self.process_client() {
                Ok(moved) => progress |= moved,
                Err(end) => return Poll::Ready(end),
            }
            if !waiting.server_write
                && !self.sout.is_empty()
                && let Some(conn) = self.backend.as_mut()
            {
                let was_full = self.sout.len() >= HIGH_WATER;
                loop {
                    match conn.conn().stream.poll_send(cx, &self.sout) {
                        Poll::Pending => {
                            waiting.server_write = true;
                            break;
                        }
                        Poll::Ready(Ok(n)) if n > 0 => {
                            self.silence.exchanged();
                            self.sout.advance(n);
                            if self.sout.is_empty() {
                                rewind(&mut self.sout);
                                break;
                            }
                        }
                        Poll::Ready(_) => return Poll::Ready(self.server_gone()),
                    }
                }
                // Room again for what the client sends.
                progress |= was_full && self.sout.len() < HIGH_WATER;
            }
            if !waiting.server_read
                && self.cout.len() + self.sin_fwd < HIGH_WATER
                && let Some(conn) = self.backend.as_mut()
            {
                match read_some(
                    cx,
                    &mut conn.conn().stream,
                    &mut self.sin,
                    &mut self.server_arm,
                ) {
                    Poll::Pending => waiting.server_read = true,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(self.server_gone());
                    }
                    Poll::Ready(Ok(n)) => {
                        self.silence.exchanged();
                        self.counts.bytes_out += n as u64;
                        progress = true;
                    }
                }
            }
            match self.process_server() {
                Ok(moved) => progress |= moved,
                Err(end) => return Poll::Ready(end),
            }
            // The connection goes back (and the transaction is counted) before the client hears
            // the transaction ended.
            if self.release_if_done() {
                progress = true;
                // A released connection's pending wake-ups no longer matter.
                waiting.server_read = false;
                waiting.server_write = false;
            }
            if !waiting.client_write && (!self.cout.is_empty() || self.sin_fwd > 0) {
                let was_full = self.cout.len() + self.sin_fwd >= HIGH_WATER;
                loop {
                    // The proxy's own bytes first, then the approved backend bytes in place.
                    let from_cout = !self.cout.is_empty();
                    let out = if from_cout {
                        &self.cout[..]
                    } else {
                        &self.sin[..self.sin_fwd]
                    };
                    match client.poll_send(cx, out) {
                        Poll::Pending => {
                            waiting.client_write = true;
                            break;
                        }
                        Poll::Ready(Ok(n)) if n > 0 => {
                            if from_cout {
                                self.cout.advance(n);
                                rewind(&mut self.cout);
                            } else {
                                self.sin.advance(n);
                                self.sin_fwd -= n;
                                rewind(&mut self.sin);
                            }
                            if self.cout.is_empty() && self.sin_fwd == 0 {
                                break;
                            }
                        }
                        Poll::Ready(_) => return Poll::Ready(TxnEnd::ClientLeft),
                    }
                }
                // Room again for what the backend sends.
                progress |= was_full && self.cout.len() + self.sin_fwd < HIGH_WATER;
            }
            if self.client_done && self.cout.is_empty() && self.sin_fwd == 0 && self.sout.is_empty()
            {
                return Poll::Ready(TxnEnd::ClientLeft);
            }
            if !progress {
                // About to wait: watch a client the relay does not read, and a backend that owes
                // replies, if a reply timeout is set. Both are rare; their work is out of line.
                let held_back = !self.client_done && self.client_held_back();
                let owed =
                    self.silence.is_on() && self.backend.is_some() && !self.expect.is_empty();
                if (held_back || owed)
                    && let Some(end) = self.watch_while_waiting(cx, client, held_back, owed)
                {
                    return Poll::Ready(end);
                }
                return Poll::Pending;
            }
            if passes.spent(cx) {
                return Poll::Pending;
            }
        }
    }

    /// While the relay waits: a held-back client that hung up ends the session, and so does a
    /// backend owing replies that has been silent for the reply timeout.
    #[cold]
    fn watch_while_waiting<C: RelayIo>(
        &mut self,
        cx: &mut Context<'_>,
        client: &C,
        held_back: bool,
        owed: bool,
    ) -> Option<TxnEnd> {
        if held_back && self.hangup.poll_gone(cx, || client.hung_up()) {
            return Some(TxnEnd::ClientLeft);
        }
        let limit = if owed {
            self.silence.poll_silent(cx)?
        } else {
            return None;
        };
        self.poisoned = true;
        let ms = limit.as_millis() as u64;
        tracing::warn!(tenant = %self.pool.tenant, limit_ms = ms, "backend silent while replies were due: closed");
        Some(TxnEnd::Refused(ClientError::server_silent(
            &self.pool.tenant,
            ms,
        )))
    }

    /// The client is not read: what it sent waits for the backend to take what went before
    /// (a message the proxy needs whole is read to its end first).
    #[inline(always)]
    fn client_held_back(&self) -> bool {
        (self.cin.len() >= HIGH_WATER && self.cin.len() >= self.cin_whole)
            || self.sout.len() >= HIGH_WATER
    }

    fn server_gone(&mut self) -> TxnEnd {
        // Relay what arrived before the close (a FATAL with its SQLSTATE), or say it was lost.
        let _ = self.process_server();
        self.backend = None;
        self.key.detach();
        if !self.cout.is_empty() || self.sin_fwd > 0 || self.expect.is_empty() {
            TxnEnd::ServerGone
        } else {
            TxnEnd::Refused(ClientError::server_lost(&self.pool.tenant))
        }
    }

    fn checkout_error(&self, e: CheckoutError) -> ClientError {
        match e {
            CheckoutError::Timeout(waited) => ClientError::pool_exhausted(
                &self.pool.tenant,
                &self.pool.limits(),
                waited.as_millis() as u64,
            ),
            CheckoutError::Connect(e) => {
                tracing::error!(error = %e, backend = ?self.pool.target, "backend connection failed");
                ClientError::backend_unavailable(&self.pool.tenant)
            }
            CheckoutError::Retired => ClientError::backend_unavailable(&self.pool.tenant),
        }
    }

    /// Starts getting a backend connection: an idle one at once if there is one.
    fn acquire(&mut self) {
        if self.acquiring.is_some() {
            return;
        }
        if self.pool.is_retired()
            && let Some(pool) = (self.repool)()
        {
            self.pool = pool;
        }
        let pool = self.pool.clone();
        self.acquiring = Some(Box::pin(async move { pool.checkout().await }));
    }

    /// Takes a connection into use: cancels go to it, and it gets the client's settings.
    fn attach(&mut self, mut conn: PooledConn) {
        let c = conn.conn();
        self.key.attach(&c.cancel);
        if c.settings_fingerprint != self.settings.fingerprint() {
            let sql = self.settings.apply_sql();
            c.settings_fingerprint = self.settings.fingerprint();
            // Ahead of anything the client sent, since sout is empty between transactions.
            messages::query(&mut self.sout, &sql);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Query,
                owner: Owner::Proxy,
                parse: None,
            });
        }
        self.backend = Some(conn);
        self.server_arm.disarm();
        self.counts.begin();
    }

    /// Returns the connection once its transaction is over and nothing is outstanding.
    // Runs on every pass of poll_session; out of line it cost 110 instructions per transaction.
    #[inline(always)]
    fn release_if_done(&mut self) -> bool {
        if self.backend.is_none() || !self.at_rest() {
            return false;
        }
        let cancelled = self.key.detach();
        if let Some(conn) = self.backend.take()
            && !cancelled
            && !self.poisoned
        {
            conn.give_back();
        }
        self.poisoned = false;
        self.in_txn = false;
        self.kick.end_transaction();
        self.counts.end(&self.stats);
        true
    }

    /// Queues a reply of the proxy's own, after everything the backend still owes.
    fn local(&mut self, reply: Local) {
        if self.expect.is_empty() {
            self.write_local(reply);
        } else {
            self.expect.push_back(Expect::Local(reply));
        }
    }

    fn write_local(&mut self, reply: Local) {
        self.spill_server();
        match reply {
            Local::CloseComplete(_) => self.cout.put_slice(&[b'3', 0, 0, 0, 4]),
            Local::Error(e) => messages::error_response(&mut self.cout, &e),
            Local::CommandComplete(tag) => messages::write_message(&mut self.cout, b'C', |b| {
                b.put_slice(tag.as_bytes());
                b.put_u8(0);
            }),
            Local::ReadyForQuery => messages::ready_for_query(&mut self.cout, self.last_status),
        }
    }

    /// Writes the proxy's replies that have reached the front of the queue. Runs after every
    /// backend message; the check stays inline (out of line it cost ~100 instructions a
    /// transaction), the rare writing does not.
    #[inline(always)]
    fn flush_locals(&mut self) {
        if matches!(
            self.expect.front(),
            Some(Expect::Local(_) | Expect::CopyEnd | Expect::Pending(_))
        ) {
            self.write_front_locals();
        }
    }

    fn write_front_locals(&mut self) {
        while let Some(Expect::Local(_) | Expect::CopyEnd | Expect::Pending(_)) =
            self.expect.front()
        {
            match self.expect.pop_front() {
                Some(Expect::Local(reply)) => self.write_local(reply),
                // Everything before it has been answered: its statement runs now.
                Some(Expect::Pending(change)) => self.pending.push(change),
                _ => {}
            }
        }
    }

    /// Refuses the current message: an error reply, then everything up to Sync is skipped.
    fn refuse(&mut self, err: ClientError) {
        self.local(Local::Error(Box::new(err)));
        self.skip = Skip::Refused;
    }

    fn expect_reply(&mut self, reply: Reply) {
        self.expect.push_back(Expect::Reply {
            reply,
            owner: Owner::Client,
            parse: None,
        });
    }

    /// Handles whole client messages (streaming large pass-through ones) until input runs out,
    /// a backend is needed and not yet held, or output is backed up. True when bytes moved.
    #[inline(always)]
    fn process_client(&mut self) -> Result<bool, TxnEnd> {
        // Nothing to handle is the common case of a relay pass: no call for it.
        if self.cin.is_empty() {
            return Ok(false);
        }
        let moved = self.client_messages();
        rewind(&mut self.cin);
        if self.cin.capacity() > MAX_IDLE_CAPACITY && self.cin_whole == 0 {
            self.shrink_input();
        }
        moved
    }

    /// Moves what is left of the client's input out of a buffer a long message made large.
    #[cold]
    fn shrink_input(&mut self) {
        if self.cin.len() < READ_CHUNK {
            let mut fresh = spare::take(READ_CHUNK);
            fresh.extend_from_slice(&self.cin);
            self.cin = fresh;
        }
    }

    fn client_messages(&mut self) -> Result<bool, TxnEnd> {
        let mut moved = false;
        loop {
            if self.client_stream_left > 0 {
                let n = self.client_stream_left.min(self.cin.len());
                if n == 0 {
                    return Ok(moved);
                }
                if !self.client_stream_dropped {
                    self.sout.put_slice(&self.cin[..n]);
                }
                self.cin.advance(n);
                self.client_stream_left -= n;
                if self.client_stream_left == 0 {
                    self.client_stream_dropped = false;
                }
                moved = true;
                continue;
            }
            if self.client_done
                || self.sout.len() >= HIGH_WATER
                || self.expect.len() >= MAX_EXPECTED
                || self.acquiring.is_some()
                || self.held.is_some()
                || (self.barrier != Barrier::None && !self.settled())
            {
                return Ok(moved);
            }
            let Some(&[tag, a, b, c, d]) = self.cin.first_chunk::<5>() else {
                return Ok(moved);
            };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if !(4..=MAX_CLIENT_MESSAGE_LENGTH).contains(&len) {
                return Err(TxnEnd::Refused(ClientError::protocol(format!(
                    "invalid message length {len} for message type {tag:#04x}"
                ))));
            }
            let whole = self.cin.len() > len;
            if tag == b'X' {
                self.client_done = true;
                return Ok(true);
            }
            if self.skip != Skip::None {
                if tag != b'S' {
                    self.cin_whole = 0;
                    if whole {
                        self.cin.advance(len + 1);
                    } else {
                        self.client_stream_left = len + 1 - self.cin.len();
                        self.client_stream_dropped = true;
                        self.cin.clear();
                    }
                    moved = true;
                    continue;
                }
                if !whole {
                    return Ok(moved);
                }
                if std::mem::replace(&mut self.skip, Skip::None) == Skip::Refused {
                    self.cin.advance(len + 1);
                    self.sync_after_refusal();
                    moved = true;
                    continue;
                }
                // After the backend's own error the Sync goes on as usual.
            }
            // A client pinned to its backend starts its next transaction here.
            if !self.in_txn && self.backend.is_some() && !self.pass_gate()? {
                return Ok(true);
            }
            match self.client_message(tag, len, whole)? {
                Step::Done => {
                    moved = true;
                    self.cin_whole = 0;
                    self.counts.queries += u64::from(tag == b'Q' || tag == b'E');
                    if self.backend.is_some() {
                        self.note_batch(tag);
                    }
                }
                Step::NeedMore => {
                    // A Bind waits only for its names, which fit under HIGH_WATER.
                    if tag != b'B' {
                        self.await_whole(len + 1);
                    }
                    return Ok(moved);
                }
                Step::NeedBackend => {
                    if !self.pass_gate()? {
                        return Ok(true);
                    }
                    if let Some(conn) = self.pool.try_checkout() {
                        self.attach(conn);
                        moved = true;
                        continue;
                    }
                    // The new checkout must be polled before this poll returns.
                    self.acquire();
                    return Ok(true);
                }
            }
        }
    }

    /// The message at the front of `cin`, `size` bytes with its tag, is needed whole: room is
    /// made for all of it at once, and the client is read until it has come.
    #[cold]
    fn await_whole(&mut self, size: usize) {
        if self.cin_whole != size {
            self.cin_whole = size;
            self.cin.reserve(size.saturating_sub(self.cin.len()));
        }
    }

    /// Lets a transaction start: a draining proxy lets transactions finish but starts none, and
    /// a PAUSE holds them until RESUME (false: held). The client is busy from here.
    #[inline]
    fn pass_gate(&mut self) -> Result<bool, TxnEnd> {
        match self.kick.begin_transaction() {
            Gate::Open => {
                self.in_txn = true;
                Ok(true)
            }
            Gate::Draining => Err(TxnEnd::Refused(ClientError::shutting_down())),
            Gate::Paused => {
                self.held = Some(self.kick.until_resumed(self.pause_limit));
                Ok(false)
            }
        }
    }

    /// True once what the barrier waits for has come (see [`Barrier`]), which lifts it: the
    /// proxy must know which statements exist, for the client and on the connection, before
    /// it maps the names in the client's next messages.
    #[cold]
    fn settled(&mut self) -> bool {
        let settled = match self.barrier {
            Barrier::None => true,
            Barrier::Undoable => !self.expect.iter().any(Expect::may_be_undone),
            Barrier::Drained => self.expect.is_empty() || self.skip == Skip::Backend,
        };
        if settled {
            self.barrier = Barrier::None;
        }
        settled
    }

    /// Keeps [`TxnSession::unsynced`] for a client message handled while a backend is held:
    /// a Query, a FunctionCall or a Sync the backend will act on ends a batch with a
    /// ReadyForQuery; Flush and copy data change nothing; anything else opens a batch.
    #[inline]
    fn note_batch(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.unsynced = false,
            // In copy-in mode the backend ignores a Sync.
            b'S' if !self.copy_in => self.unsynced = false,
            b'S' | b'H' | b'd' | b'c' | b'f' => {}
            _ => self.unsynced = true,
        }
    }

    /// The Sync that ends a refused batch: a held backend must fail its transaction too, so a
    /// statement that raises stands in for the Sync; without one, the proxy answers alone.
    ///
    /// The stand-in goes by the extended protocol, ending in a Sync of its own: a backend
    /// already skipping to the next Sync after an earlier error in the batch skips it whole and
    /// answers the Sync, one that is not runs it, fails and answers the Sync. Either way one
    /// ReadyForQuery ends the batch, as the client's Sync would have.
    fn sync_after_refusal(&mut self) {
        if self.backend.is_none() {
            self.last_status = b'I';
            self.local(Local::ReadyForQuery);
            return;
        }
        let out = &mut self.sout;
        messages::write_message(out, b'P', |b| {
            b.put_u8(0);
            b.put_slice(REFUSAL_STAND_IN.as_bytes());
            b.put_u8(0);
            b.put_u16(0);
        });
        // Unnamed portal and statement; no parameters, no result columns.
        messages::write_message(out, b'B', |b| b.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]));
        messages::write_message(out, b'E', |b| b.put_slice(&[0, 0, 0, 0, 0]));
        messages::write_message(out, b'S', |_| {});
        self.unsynced = false;
        for reply in [Reply::Parse, Reply::Bind, Reply::Execute, Reply::Sync] {
            self.expect.push_back(Expect::Reply {
                reply,
                owner: Owner::SyncStandIn,
                parse: None,
            });
        }
    }

    /// Handles one client message whose header is at the front of `cin`.
    // Once per client message; out of line (it grew past the inlining threshold) it cost
    // about 100 instructions a transaction.
    #[inline(always)]
    fn client_message(&mut self, tag: u8, len: usize, whole: bool) -> Result<Step, TxnEnd> {
        let held = self.backend.is_some();
        match tag {
            b'S' if !held => {
                self.cin.advance(len + 1);
                self.last_status = b'I';
                self.local(Local::ReadyForQuery);
                Ok(Step::Done)
            }
            b'H' if !held => {
                self.cin.advance(len + 1);
                Ok(Step::Done)
            }
            b'P' | b'Q' | b'D' | b'C' => {
                if !whole {
                    return Ok(Step::NeedMore);
                }
                // Borrow the message in place while `self` changes; it is consumed only when
                // handled, so a message that needs a backend first is simply looked at again.
                let cin = std::mem::take(&mut self.cin);
                let msg = &cin[..len + 1];
                let step = match tag {
                    b'P' => self.parse(msg),
                    b'Q' => Ok(self.query(msg)),
                    b'D' => self.describe(msg),
                    _ => self.close(msg),
                };
                self.cin = cin;
                if matches!(step, Ok(Step::Done)) {
                    self.cin.advance(len + 1);
                }
                step
            }
            _ if !held => Ok(Step::NeedBackend),
            b'B' => self.bind(len),
            _ => {
                let mut flush_after = false;
                if tag == b'E' && !self.portal_changes.is_empty() {
                    if !whole {
                        return Ok(Step::NeedMore);
                    }
                    flush_after = self.execute_portal(len);
                }
                let take = (len + 1).min(self.cin.len());
                self.sout.put_slice(&self.cin[..take]);
                self.cin.advance(take);
                self.client_stream_left = len + 1 - take;
                match tag {
                    b'E' => {
                        self.expect_reply(Reply::Execute);
                        // A barrier mid-batch waits for replies the backend keeps until a
                        // Flush.
                        if flush_after {
                            messages::write_message(&mut self.sout, b'H', |_| {});
                        }
                    }
                    // In copy-in mode the backend ignores Sync.
                    b'S' if !self.copy_in => {
                        if std::mem::take(&mut self.undoable_queued) {
                            self.barrier = Barrier::Undoable;
                        }
                        self.expect_reply(Reply::Sync);
                    }
                    b'F' => self.expect_reply(Reply::Query),
                    b'c' | b'f' if self.copy_in => self.copy_in = false,
                    // The backend has not said CopyInResponse yet (or this is no COPY): mark
                    // the spot, so Syncs before it can be told from those after.
                    b'c' | b'f' if !self.expect.is_empty() => {
                        self.expect.push_back(Expect::CopyEnd)
                    }
                    // Flush, CopyData: no reply of their own.
                    _ => {}
                }
                Ok(Step::Done)
            }
        }
    }

    fn parse(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let body = &msg[5..];
        let Some((name, rest)) = prepared::cstr(body) else {
            return Err(malformed("Parse"));
        };
        let Some((sql, _)) = prepared::cstr(rest) else {
            return Err(malformed("Parse"));
        };
        if self.backend.is_none() {
            return Ok(Step::NeedBackend);
        }
        let class = self.classify_parse(sql);
        // DEALLOCATE of a statement the client has: the backend knows it by another name.
        let stand_in;
        let (msg, rest) = match &class {
            Classified::Deallocate(Some(target))
                if self.pinned.is_none() && self.statements.contains(target.as_bytes()) =>
            {
                stand_in = self.deallocate_stand_in(name, rest, sql.len());
                (&stand_in[..], &stand_in[5 + name.len() + 1..])
            }
            _ => (msg, rest),
        };
        let change = match class {
            Classified::Plain => None,
            // Postgres refuses several statements in one Parse.
            Classified::Multi => None,
            _ if self.pinned.is_some() => None,
            _ => SettingsChange::of(&class, sql),
        };
        if change.is_none() && class != Classified::Multi && self.watch_statement(sql, class, true)
        {
            return Ok(Step::Done);
        }
        if name.is_empty() {
            self.unnamed_change = change;
            self.sout.put_slice(msg);
            self.expect_reply(Reply::Parse);
            return Ok(Step::Done);
        }
        if self.statements.contains(name) {
            self.parse_duplicate(name, rest);
            return Ok(Step::Done);
        }
        let stmt = Arc::new(Statement::from_parse(rest).with_change(change));
        if !self.statements.insert(name, stmt.clone()) {
            self.refuse(ClientError::too_many_statements(MAX_STATEMENTS_PER_CLIENT));
            return Ok(Step::Done);
        }
        // Prepared again even where the connection has it: its copy may predate a schema
        // change this client's Parse comes after (see `prepared`).
        self.prepare_on_backend(&stmt, Owner::Client, Some(name.into()));
        Ok(Step::Done)
    }

    /// A Parse of a name the client already has fails, but Postgres checks the text first (its
    /// syntax, a failed transaction, the objects it names) and reports what it finds before
    /// the duplicate. The backend makes the same checks in the same order when the text is
    /// parsed twice under the scratch name: the first Parse fails as Postgres would, or the
    /// second fails with 42P05 (see [`Owner::DuplicateCheck`]). The scratch statement may be
    /// left behind; every use of the scratch name closes it first.
    fn parse_duplicate(&mut self, name: &[u8], rest: &[u8]) {
        self.close_probe();
        for owner in [Owner::Proxy, Owner::DuplicateCheck] {
            write_probe_parse(&mut self.sout, rest);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Parse,
                owner,
                parse: None,
            });
        }
        let err = ClientError::duplicate_statement(&String::from_utf8_lossy(name));
        self.expect
            .push_back(Expect::Local(Local::Error(Box::new(err))));
    }

    /// A Parse of `DEALLOCATE name`, a statement the client has, goes to the backend as
    /// `DEALLOCATE` of the scratch statement, prepared just before it: run, it answers as
    /// Postgres would (a second run fails with `26000`), and the client's name goes when it runs
    /// (see `execute_portal`). `rest` is the client's text (`sql_len` bytes, then a NUL) and
    /// parameter types; returns the whole Parse message to send in its place.
    #[cold]
    fn deallocate_stand_in(&mut self, name: &[u8], rest: &[u8], sql_len: usize) -> Vec<u8> {
        self.close_probe();
        messages::write_message(&mut self.sout, b'P', |b| {
            b.put_slice(PROBE_STATEMENT.as_bytes());
            b.put_u8(0);
            b.put_slice(b"SELECT 1\0\0\0");
        });
        self.expect.push_back(Expect::Reply {
            reply: Reply::Parse,
            owner: Owner::Proxy,
            parse: None,
        });
        let sql = format!("DEALLOCATE {PROBE_STATEMENT}");
        let types = rest.get(sql_len + 1..).unwrap_or_default();
        let mut out = BytesMut::new();
        messages::write_message(&mut out, b'P', |b| {
            b.put_slice(name);
            b.put_u8(0);
            b.put_slice(sql.as_bytes());
            b.put_u8(0);
            b.put_slice(types);
        });
        out.to_vec()
    }

    /// Closes the scratch statement, which a duplicate check may have left.
    fn close_probe(&mut self) {
        prepared::write_statement_target(&mut self.sout, b'C', PROBE_STATEMENT);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Close,
            owner: Owner::Proxy,
            parse: None,
        });
    }

    /// True when the backend has `stmt`, prepared after the client's Parse; marks it used.
    fn on_backend(&mut self, stmt: &Statement) -> bool {
        self.backend
            .as_mut()
            .is_some_and(|b| b.conn().statements.touch(stmt))
    }

    /// Sends `stmt`'s Parse to the backend, closing its least recently used statement first if
    /// the connection is at its bound. A Close of the same name goes first: an older copy may
    /// be there (see `prepared`), or one whose Close a failed batch skipped after the proxy
    /// had forgotten it; Postgres answers a Close of no statement all the same.
    fn prepare_on_backend(
        &mut self,
        stmt: &Arc<Statement>,
        owner: Owner,
        client_name: Option<Box<[u8]>>,
    ) {
        let capacity = self.pool.settings.prepared_statements_per_connection as usize;
        let Some(conn) = self.backend.as_mut() else {
            return;
        };
        self.undoable_queued = true;
        if let Some(evicted) = conn.conn().statements.add(&stmt.backend_name, capacity) {
            prepared::write_statement_target(&mut self.sout, b'C', &evicted);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Close,
                owner: Owner::Proxy,
                parse: None,
            });
        }
        prepared::write_statement_target(&mut self.sout, b'C', &stmt.backend_name);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Close,
            owner: Owner::Proxy,
            parse: None,
        });
        self.sout.put_slice(&stmt.parse);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Parse,
            owner,
            parse: Some(ParseUndo {
                client_name,
                stmt: stmt.clone(),
            }),
        });
    }

    /// What a Parse's statement text means for pooling; the same text as the last plain one is
    /// plain without another look. (Query texts carry their literals and seldom repeat: there
    /// the comparison and copy would cost more than they save.)
    fn classify_parse(&mut self, sql: &[u8]) -> Classified {
        if self.plain_sql == sql {
            return Classified::Plain;
        }
        let class = classify(sql);
        if class == Classified::Plain && sql.len() <= MAX_REMEMBERED_SQL {
            self.plain_sql.clear();
            self.plain_sql.extend_from_slice(sql);
        }
        class
    }

    /// Looks at the SQL of a Query or Parse (classified as `class`) for session state. True
    /// when the message was refused (error policy) and must not go on.
    fn watch_statement(&mut self, sql: &[u8], class: Classified, is_parse: bool) -> bool {
        if self.pinned.is_some() {
            return false;
        }
        let pins = match class {
            Classified::Plain | Classified::Deallocate(_) => return false,
            Classified::Pins(what) => Some(what),
            Classified::Multi => {
                let mut pins = None;
                for (class, text) in statements(sql) {
                    if let Classified::Pins(what) = class {
                        pins = Some(what);
                        break;
                    }
                    self.track(class, text);
                }
                pins
            }
            single => {
                self.track(single, sql);
                None
            }
        };
        let Some(what) = pins else {
            return false;
        };
        match self.policy {
            SessionStatePolicy::Pin => {
                tracing::info!(tenant = %self.pool.tenant, reason = what, "client pinned to its backend connection");
                self.pinned = Some(what);
                false
            }
            SessionStatePolicy::Error => {
                // Changes queued by earlier statements of the refused query never happen.
                self.pending.clear();
                let err = ClientError::session_state_refused(what);
                if is_parse {
                    self.refuse(err);
                } else {
                    // A raising statement in its place keeps the backend's transaction state
                    // the same as the client's.
                    let sql = refusal_sql(&err.message);
                    messages::query(&mut self.sout, &sql);
                    self.expect_reply(Reply::Query);
                }
                true
            }
        }
    }

    /// Queues a settings change of one statement, applied if its transaction commits.
    fn track(&mut self, class: Classified, text: &[u8]) {
        match class {
            Classified::Set { name } => self.pend(Pending::Set(name, Bytes::copy_from_slice(text))),
            Classified::Reset { name } => self.pend(Pending::Reset(name)),
            Classified::ResetAll => self.pend(Pending::ResetAll),
            Classified::DiscardAll => {
                self.pend(Pending::ResetAll);
                // Which statements exist afterwards is known when it has run (see
                // `command_complete`); the client's next messages wait for that.
                self.barrier = Barrier::Drained;
            }
            Classified::Plain
            | Classified::Deallocate(_)
            | Classified::Pins(_)
            | Classified::Multi => {}
        }
    }

    /// A settings change of the statement being sent. It belongs to that statement's
    /// transaction, so it waits in the queue behind the replies still due for earlier ones
    /// (whose transaction may end first), and is dropped if the backend skips the statement.
    fn pend(&mut self, change: Pending) {
        if self.expect.is_empty() {
            self.pending.push(change);
        } else {
            self.expect.push_back(Expect::Pending(change));
        }
    }

    fn query(&mut self, msg: &[u8]) -> Step {
        // The text ends at the message's final NUL; one inside it makes the backend refuse the
        // message anyway.
        let body = &msg[5..];
        let sql = body.strip_suffix(&[0]).unwrap_or(body);
        let class = self.waiting_query.take().unwrap_or_else(|| classify(sql));
        // DEALLOCATE of a protocol-level statement is the proxy's to answer.
        if let Classified::Deallocate(target) = &class
            && self.pinned.is_none()
        {
            let known = match target {
                Some(name) => self.statements.remove(name.as_bytes()).is_some(),
                None => {
                    self.statements.clear();
                    true
                }
            };
            if known {
                let tag = if target.is_some() {
                    "DEALLOCATE"
                } else {
                    "DEALLOCATE ALL"
                };
                self.local(Local::CommandComplete(tag));
                self.local(Local::ReadyForQuery);
                return Step::Done;
            }
        }
        if self.backend.is_none() {
            self.waiting_query = Some(class);
            return Step::NeedBackend;
        }
        if self.watch_statement(sql, class, false) {
            return Step::Done;
        }
        // A simple query drops the unnamed statement and portal.
        if self.unnamed_change.is_some() || !self.portal_changes.is_empty() {
            self.unnamed_change = None;
            self.portal_changes.retain(|(portal, _)| !portal.is_empty());
        }
        self.sout.put_slice(msg);
        self.expect_reply(Reply::Query);
        Step::Done
    }

    fn describe(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let Some((&kind, rest)) = msg[5..].split_first() else {
            return Err(malformed("Describe"));
        };
        let name = prepared::cstr(rest).map_or(rest, |(n, _)| n);
        if self.backend.is_none() {
            return Ok(Step::NeedBackend);
        }
        if kind == b'S'
            && !name.is_empty()
            && let Some(stmt) = self.statements.get(name).cloned()
        {
            if !self.on_backend(&stmt) {
                self.prepare_on_backend(&stmt, Owner::Proxy, None);
            }
            prepared::write_statement_target(&mut self.sout, b'D', &stmt.backend_name);
            self.expect_reply(Reply::DescribeStatement);
            return Ok(Step::Done);
        }
        self.sout.put_slice(msg);
        self.expect_reply(if kind == b'S' {
            Reply::DescribeStatement
        } else {
            Reply::DescribePortal
        });
        Ok(Step::Done)
    }

    fn close(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let Some((&kind, rest)) = msg[5..].split_first() else {
            return Err(malformed("Close"));
        };
        let name = prepared::cstr(rest).map_or(rest, |(n, _)| n);
        // A named statement is the client's alone; the backend copy may serve others.
        if kind == b'S'
            && !name.is_empty()
            && (self.pinned.is_none() || self.statements.contains(name))
        {
            let closed = self.statements.remove(name).map(|stmt| NamedStatement {
                name: name.into(),
                stmt,
            });
            self.undoable_queued = true;
            self.local(Local::CloseComplete(closed));
            return Ok(Step::Done);
        }
        if kind == b'P' && !self.portal_changes.is_empty() {
            self.portal_changes.retain(|(portal, _)| **portal != *name);
        }
        if self.backend.is_none() {
            // Outside a transaction there are no portals, and unnamed statements are gone.
            self.local(Local::CloseComplete(None));
            return Ok(Step::Done);
        }
        self.sout.put_slice(msg);
        self.expect_reply(Reply::Close);
        Ok(Step::Done)
    }

    /// Bind: only the two names at its front are read; the parameters stream through.
    fn bind(&mut self, len: usize) -> Result<Step, TxnEnd> {
        let avail = self.cin.len().min(len + 1);
        let head = &self.cin[5..avail];
        let names = prepared::cstr(head).and_then(|(portal, rest)| {
            prepared::cstr(rest).map(|(stmt, _)| (portal.len(), stmt.len()))
        });
        let Some((portal_len, stmt_len)) = names else {
            if avail > len || avail >= MAX_BIND_NAMES {
                return Err(malformed("Bind"));
            }
            return Ok(Step::NeedMore);
        };
        let names_end = 5 + portal_len + 1 + stmt_len + 1;
        let stmt_name = &self.cin[5 + portal_len + 1..names_end - 1];
        let stmt = if stmt_name.is_empty() {
            None
        } else {
            self.statements.get(stmt_name).cloned()
        };
        let change = match &stmt {
            Some(stmt) => stmt.change.as_ref(),
            None if stmt_name.is_empty() => self.unnamed_change.as_ref(),
            None => None,
        };
        if change.is_some() || !self.portal_changes.is_empty() {
            let change = change.cloned();
            let portal: Box<[u8]> = self.cin[5..5 + portal_len].into();
            self.bind_portal(portal, change);
        }
        match stmt {
            None => {
                // Unnamed, or unknown to the proxy: the backend answers as it would.
                self.sout.put_slice(&self.cin[..avail]);
                self.cin.advance(avail);
                self.client_stream_left = len + 1 - avail;
            }
            Some(stmt) => {
                if !self.on_backend(&stmt) {
                    self.prepare_on_backend(&stmt, Owner::Proxy, None);
                }
                let head = &self.cin[..avail];
                let rest_total = len + 1 - names_end;
                let portal = &head[5..5 + portal_len];
                self.sout.put_u8(b'B');
                let new_len = 4 + portal_len + 1 + stmt.backend_name.len() + 1 + rest_total;
                self.sout
                    .put_u32(u32::try_from(new_len).map_err(|_| malformed("Bind"))?);
                self.sout.put_slice(portal);
                self.sout.put_u8(0);
                self.sout.put_slice(stmt.backend_name.as_bytes());
                self.sout.put_u8(0);
                self.sout.put_slice(&head[names_end..]);
                self.cin.advance(avail);
                self.client_stream_left = len + 1 - avail;
            }
        }
        self.expect_reply(Reply::Bind);
        Ok(Step::Done)
    }

    /// Notes what executing `portal` will do to the client's settings (a Bind replaces the
    /// portal of the same name).
    #[cold]
    fn bind_portal(&mut self, portal: Box<[u8]>, change: Option<Arc<SettingsChange>>) {
        self.portal_changes.retain(|(name, _)| *name != portal);
        let Some(change) = change else {
            return;
        };
        if self.portal_changes.len() >= MAX_PORTAL_CHANGES {
            tracing::info!(tenant = %self.pool.tenant, reason = "many open portals that change settings", "client pinned to its backend connection");
            self.pinned = Some("many open portals that change settings");
            self.portal_changes.clear();
            return;
        }
        self.portal_changes.push((portal, change));
    }

    /// Execute of a portal whose statement changes settings (queued, to stick if the
    /// transaction commits) or deallocates client statements (gone now: DEALLOCATE is not
    /// transactional). `cin` holds the whole message. True when the client's next messages wait
    /// for this one's reply (DISCARD ALL).
    #[cold]
    fn execute_portal(&mut self, len: usize) -> bool {
        let portal = prepared::cstr(&self.cin[5..len + 1]).map_or(&[][..], |(n, _)| n);
        let change = self
            .portal_changes
            .iter()
            .find(|(name, _)| **name == *portal)
            .map(|(_, change)| change.clone());
        if let Some(change) = change {
            match &change.class {
                Classified::Deallocate(Some(name)) => {
                    self.statements.remove(name.as_bytes());
                }
                Classified::Deallocate(None) => self.statements.clear(),
                class => self.track(class.clone(), &change.text),
            }
        }
        self.barrier == Barrier::Drained
    }

    /// Moves the approved backend bytes into `cout`, so something can be added after them or a
    /// message after them dropped.
    fn spill_server(&mut self) {
        if self.sin_fwd > 0 {
            self.cout.put_slice(&self.sin[..self.sin_fwd]);
            self.sin.advance(self.sin_fwd);
            self.sin_fwd = 0;
        }
    }

    /// Passes `n` backend bytes after the approved ones on to the client, or drops them.
    fn take_server_bytes(&mut self, n: usize, forward: bool) {
        if forward {
            self.sin_fwd += n;
        } else {
            self.spill_server();
            self.sin.advance(n);
        }
    }

    /// Handles backend messages (streaming large pass-through ones) until input runs out or the
    /// client's output is backed up. True when bytes moved.
    #[inline(always)]
    fn process_server(&mut self) -> Result<bool, TxnEnd> {
        // Nothing unhandled is the common case of a relay pass: no call for it.
        if self.sin.len() == self.sin_fwd {
            return Ok(false);
        }
        self.server_messages()
    }

    fn server_messages(&mut self) -> Result<bool, TxnEnd> {
        let mut moved = false;
        loop {
            if self.server_stream_left > 0 {
                let n = self.server_stream_left.min(self.sin.len() - self.sin_fwd);
                if n == 0 {
                    return Ok(moved);
                }
                self.take_server_bytes(n, self.server_stream_forward);
                self.server_stream_left -= n;
                if self.server_stream_left == 0 {
                    self.flush_locals();
                }
                moved = true;
                continue;
            }
            if self.cout.len() + self.sin_fwd >= HIGH_WATER {
                return Ok(moved);
            }
            let Some(&[tag, a, b, c, d]) = self.sin[self.sin_fwd..].first_chunk::<5>() else {
                return Ok(moved);
            };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len < 4 {
                return Err(TxnEnd::ServerProtocol(format!(
                    "invalid message length {len} for message type {tag:#04x}"
                )));
            }
            // Rows, most of a result's bytes, are taken in whole runs: a DataRow never changes
            // what the queue expects, so every row of a run goes where the first one goes.
            if tag == b'D' {
                let room = HIGH_WATER - (self.cout.len() + self.sin_fwd);
                let run = complete_run(&self.sin[self.sin_fwd..], b'D', room);
                if run > 0 {
                    let action = ServerAction::for_owner(self.front_reply().1);
                    self.take_server_bytes(run, matches!(action, ServerAction::Forward));
                    self.flush_locals();
                    moved = true;
                    continue;
                }
            }
            let decoded = matches!(tag, b'Z' | b'S' | b'C' | b'E');
            if decoded && len > MAX_DECODED_SERVER_MESSAGE {
                return Err(TxnEnd::ServerProtocol(format!(
                    "message {tag:#04x} of {len} bytes is too long"
                )));
            }
            let available = self.sin.len() - self.sin_fwd;
            if decoded && available <= len {
                self.sin.reserve(len + 1 - available);
                return Ok(moved);
            }
            let action = self.server_message(tag, len)?;
            let take = (len + 1).min(available);
            self.server_stream_left = len + 1 - take;
            self.server_stream_forward = matches!(action, ServerAction::Forward);
            self.take_server_bytes(take, self.server_stream_forward);
            if self.server_stream_left == 0 {
                // The proxy's own replies queued behind this one go out after it.
                self.flush_locals();
            }
            moved = true;
        }
    }

    /// The backend message being decided on: what follows the approved bytes.
    fn server_msg(&self) -> &[u8] {
        &self.sin[self.sin_fwd..]
    }

    /// The reply the queue expects next and whose it is, when a reply is next.
    fn front_reply(&self) -> (Option<Reply>, Option<Owner>) {
        match self.expect.front() {
            Some(Expect::Reply { reply, owner, .. }) => (Some(*reply), Some(*owner)),
            _ => (None, None),
        }
    }

    /// Decides what one backend message (header at the front of `sin`; whole if decoded) does
    /// to the queue and whether it reaches the client.
    fn server_message(&mut self, tag: u8, len: usize) -> Result<ServerAction, TxnEnd> {
        let (front_reply, front_owner) = self.front_reply();
        match tag {
            // Asynchronous: notices and notifications always reach the client.
            b'N' | b'A' => Ok(ServerAction::Forward),
            b'S' => {
                let body = &self.server_msg()[5..len + 1];
                let (name, value) = prepared::cstr(body)
                    .and_then(|(n, r)| prepared::cstr(r).map(|(v, _)| (n, v)))
                    .ok_or_else(|| TxnEnd::ServerProtocol("malformed ParameterStatus".into()))?;
                let name = String::from_utf8_lossy(name).into_owned();
                let value = String::from_utf8_lossy(value).into_owned();
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().params.set(&name, &value);
                }
                if front_owner == Some(Owner::Proxy) {
                    return Ok(ServerAction::Swallow);
                }
                // A change the client made (SET, set_config, a rolled-back SET undone).
                if !UNSETTABLE_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                    self.settings.set_value(&name, &value);
                    if let Some(conn) = self.backend.as_mut() {
                        conn.conn().settings_fingerprint = self.settings.fingerprint();
                    }
                }
                Ok(ServerAction::Forward)
            }
            b'Z' => {
                if len != 5 {
                    return Err(TxnEnd::ServerProtocol(format!(
                        "ReadyForQuery of length {len}"
                    )));
                }
                let status = self.server_msg()[5];
                let Some(Expect::Reply { owner, .. }) = self.expect.pop_front() else {
                    return Err(self.lost_track(tag));
                };
                if !matches!(front_reply, Some(Reply::Sync | Reply::Query)) {
                    return Err(self.lost_track(tag));
                }
                self.last_status = status;
                // The proxy's own settings query ends no transaction of the client's.
                if status == b'I' && owner != Owner::Proxy {
                    self.end_of_transaction();
                    // A pinned client keeps its backend but is between transactions now.
                    if self.pinned.is_some() && self.expect.is_empty() {
                        self.in_txn = false;
                        self.kick.end_transaction();
                    }
                }
                Ok(if owner == Owner::Proxy {
                    ServerAction::Swallow
                } else {
                    ServerAction::Forward
                })
            }
            b'E' => {
                // Any error fails the transaction, one of the proxy's own messages too.
                self.txn_failed = true;
                if front_owner != Some(Owner::Proxy) {
                    self.stats
                        .record_backend_error(&self.server_msg()[5..len + 1]);
                }
                if front_owner == Some(Owner::DuplicateCheck) {
                    return Ok(self.duplicate_checked(len));
                }
                let action = ServerAction::for_owner(front_owner);
                if front_owner == Some(Owner::Proxy) && front_reply == Some(Reply::Query) {
                    tracing::warn!(tenant = %self.pool.tenant, "replaying client settings failed; the connection will be closed");
                    self.poisoned = true;
                }
                // A Query's error comes before its ReadyForQuery, and so does the error of the
                // commit at a Sync; any other is an extended-protocol message's.
                if !matches!(front_reply, Some(Reply::Query | Reply::Sync) | None) {
                    self.skip_to_sync();
                }
                // An injected Parse failing shows the client why its Bind cannot run.
                if front_owner == Some(Owner::Proxy) && front_reply == Some(Reply::Parse) {
                    return Ok(ServerAction::Forward);
                }
                Ok(action)
            }
            b'1' | b'2' | b'3' => {
                let want = match tag {
                    b'1' => Reply::Parse,
                    b'2' => Reply::Bind,
                    _ => Reply::Close,
                };
                // A duplicate check that succeeds changed a statement the connection shares.
                if front_reply != Some(want) || front_owner == Some(Owner::DuplicateCheck) {
                    return Err(self.lost_track(tag));
                }
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'T' | b'n'
                if matches!(
                    front_reply,
                    Some(Reply::DescribeStatement | Reply::DescribePortal)
                ) =>
            {
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'C' | b'I' | b's' if front_reply == Some(Reply::Execute) => {
                if tag == b'C' {
                    self.command_complete(len);
                }
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'C' => {
                self.command_complete(len);
                Ok(ServerAction::for_owner(front_owner))
            }
            b'G' => {
                self.enter_copy_in();
                Ok(ServerAction::for_owner(front_owner))
            }
            _ => Ok(ServerAction::for_owner(front_owner)),
        }
    }

    /// CommandComplete: a ROLLBACK undoes SETs of the transaction; DISCARD ALL and DEALLOCATE
    /// ALL wiped the connection's prepared statements.
    fn command_complete(&mut self, len: usize) {
        // The command tag without its NUL; a malformed empty one matches nothing.
        let tag = self.server_msg().get(5..len).unwrap_or_default();
        match tag {
            b"ROLLBACK" => self.txn_failed = true,
            b"DISCARD ALL" => {
                self.statements.clear();
                self.unnamed_change = None;
                self.portal_changes.clear();
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.clear();
                }
            }
            b"DEALLOCATE ALL" => {
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.clear();
                }
            }
            _ => {}
        }
    }

    /// CopyInResponse: Syncs the client sent after the COPY and before its CopyDone (if it
    /// already sent one) never get a reply, so they leave the queue.
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        self.copy_in = true;
        while i < self.expect.len() {
            match self.expect.get(i) {
                Some(Expect::CopyEnd) => {
                    self.expect.remove(i);
                    self.copy_in = false;
                    return;
                }
                Some(Expect::Reply {
                    reply: Reply::Sync, ..
                }) => {
                    self.expect.remove(i);
                }
                _ => i += 1,
            }
        }
    }

    /// A transaction ended: settings changed inside it stick unless it failed or rolled back.
    fn end_of_transaction(&mut self) {
        // Portals end with their transaction.
        self.portal_changes.clear();
        let failed = std::mem::take(&mut self.txn_failed);
        let pending = std::mem::take(&mut self.pending);
        if failed || pending.is_empty() {
            return;
        }
        // A RESET of a startup parameter left the connection at its own startup value, not the
        // client's: the next transaction on it sets it again.
        let mut differs = false;
        for p in pending {
            match p {
                Pending::Set(name, sql) => self.settings.set_statement(name, &sql),
                Pending::Reset(name) => differs |= self.settings.reset(&name),
                Pending::ResetAll => differs |= self.settings.clear(),
            }
        }
        if let Some(conn) = self.backend.as_mut() {
            conn.conn().settings_fingerprint = if differs {
                UNKNOWN_SETTINGS
            } else {
                self.settings.fingerprint()
            };
        }
    }

    /// An extended-protocol message failed: the backend skips everything up to the next Sync,
    /// a Query or FunctionCall the client sent before that Sync too, so nothing it would have
    /// answered in between is awaited, and what the proxy did in advance for those messages is
    /// undone, latest first, as if they had never come.
    #[cold]
    fn skip_to_sync(&mut self) {
        self.skip_to_sync_after(1);
    }

    /// Like [`TxnSession::skip_to_sync`], for a failure `certain` entries into the queue.
    fn skip_to_sync_after(&mut self, certain: usize) {
        let skipped = certain
            + self
                .expect
                .iter()
                .skip(certain)
                .take_while(|e| {
                    !matches!(
                        e,
                        Expect::Reply {
                            reply: Reply::Sync,
                            ..
                        } | Expect::Reply {
                            reply: Reply::Query,
                            owner: Owner::Proxy,
                            ..
                        }
                    )
                })
                .count();
        // Nothing up to a Sync is left: the client has yet to send it.
        if skipped == self.expect.len() {
            self.skip = Skip::Backend;
        }
        let skipped: Vec<Expect> = self.expect.drain(..skipped).collect();
        for entry in skipped.into_iter().rev() {
            self.undo(entry);
        }
    }

    /// The backend's error for a duplicate check (see [`Owner::DuplicateCheck`]): an error in
    /// the text reaches the client as it is; the expected duplicate is replaced by the proxy's
    /// own, which names the client's statement. Either way the backend skips to the Sync.
    #[cold]
    fn duplicate_checked(&mut self, len: usize) -> ServerAction {
        let body = &self.server_msg()[5..len + 1];
        if messages::error_fields(body).0
            != Some(crate::error::sqlstate::DUPLICATE_PREPARED_STATEMENT)
        {
            self.skip_to_sync();
            return ServerAction::Forward;
        }
        self.expect.pop_front();
        let own_error = self.expect.pop_front();
        self.skip_to_sync_after(0);
        if let Some(own_error) = own_error {
            self.expect.push_front(own_error);
        }
        ServerAction::Swallow
    }

    /// Undoes what the proxy did for a message the backend skipped: a Parse leaves no trace of
    /// its statement, and a Close it answered alone forgets nothing.
    fn undo(&mut self, entry: Expect) {
        match entry {
            Expect::Reply {
                parse: Some(undo), ..
            } => {
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.remove(&undo.stmt.backend_name);
                }
                if let Some(name) = undo.client_name {
                    self.forget_if_same(&name, &undo.stmt);
                }
            }
            Expect::Local(Local::CloseComplete(Some(named)))
                if !self.statements.contains(&named.name) =>
            {
                self.statements.insert(&named.name, named.stmt);
            }
            _ => {}
        }
    }

    /// Forgets the client's `name` if it still stands for `stmt`.
    fn forget_if_same(&mut self, name: &[u8], stmt: &Arc<Statement>) {
        if self
            .statements
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, stmt))
        {
            self.statements.remove(name);
        }
    }

    fn lost_track(&self, tag: u8) -> TxnEnd {
        tracing::error!(tenant = %self.pool.tenant, tag = %char::from(tag), expected = ?self.expect.front(), "reply does not match the request queue");
        TxnEnd::ServerProtocol(format!("unexpected message {:?}", char::from(tag)))
    }
}

/// What handling a client message came to.
enum Step {
    Done,
    NeedMore,
    NeedBackend,
}

fn malformed(what: &str) -> TxnEnd {
    TxnEnd::Refused(ClientError::protocol(format!("malformed {what} message")))
}

/// A Parse of a client's statement text (`rest`: text and parameter types) under the scratch
/// name.
fn write_probe_parse(out: &mut BytesMut, rest: &[u8]) {
    messages::write_message(out, b'P', |b| {
        b.put_slice(PROBE_STATEMENT.as_bytes());
        b.put_u8(0);
        b.put_slice(rest);
    });
}

/// A statement that fails with `message` and SQLSTATE 0A000 on the backend.
fn refusal_sql(message: &str) -> String {
    let escaped = message.replace('\'', "''");
    format!(
        "DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{escaped}'; END$pgtenant$"
    )
}

fn read_some<R: RelayIo>(
    cx: &mut Context<'_>,
    from: &mut R,
    into: &mut BytesMut,
    arm: &mut ReadArm,
) -> Poll<std::io::Result<usize>> {
    if into.capacity() - into.len() < READ_CHUNK / 4 {
        into.reserve(READ_CHUNK);
    }
    from.poll_fill(cx, into, arm)
}

/// Moves a buffer that was just emptied back to the start of its memory, as the session relay's
/// pipes do. Otherwise consumed bytes leave the buffer's start creeping through its whole
/// allocation, and each transaction's bytes (written by the kernel's receive copy or by the
/// relay) land on cache lines untouched since the last lap: about 3% more CPU per `-S`
/// transaction (README, Benchmarks). Called where bytes are consumed, not before each read: most
/// reads find the buffer already at its start, and the check would be a call into `bytes` for
/// nothing.
#[inline(always)]
fn rewind(buf: &mut BytesMut) {
    if buf.is_empty() {
        // Room for one more byte than it has: found only by moving back, never by allocating.
        let _ = buf.try_reclaim(buf.capacity() + 1);
        if buf.capacity() > MAX_IDLE_CAPACITY {
            release(buf);
        }
    }
}

/// Swaps an emptied buffer that a long message made large for one of ordinary size.
#[cold]
fn release(buf: &mut BytesMut) {
    *buf = spare::take(READ_CHUNK);
}

/// Length of the whole `tag` messages at the front of `buf`, stopping once `room` bytes are
/// reached (the first message is always counted) or at anything else: another tag, a message
/// not yet complete, a length the message loop must refuse.
fn complete_run(buf: &[u8], tag: u8, room: usize) -> usize {
    let mut at = 0;
    while at < room.max(1) {
        let Some(&[t, a, b, c, d]) = buf.get(at..).and_then(|rest| rest.first_chunk::<5>()) else {
            break;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if t != tag || len < 4 || buf.len() - at <= len {
            break;
        }
        at += len + 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::{MAX_IDLE_CAPACITY, complete_run, rewind};
    use bytes::{Buf, BufMut, BytesMut};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_run_is_the_whole_messages_of_one_tag_up_to_room() {
        let row = msg(b'D', b"\0\x01\0\0\0\x011");
        let rows = [row.clone(), row.clone(), row.clone()].concat();
        let n = row.len();
        let mut buf = [rows.clone(), msg(b'C', b"SELECT 3\0")].concat();
        assert_eq!(
            complete_run(&buf, b'D', 1 << 20),
            3 * n,
            "stops at another tag"
        );
        assert_eq!(
            complete_run(&buf, b'D', n + 1),
            2 * n,
            "stops once room is reached"
        );
        assert_eq!(
            complete_run(&buf, b'D', 0),
            n,
            "the first message always counts"
        );
        assert_eq!(
            complete_run(&buf[..3 * n - 1], b'D', 1 << 20),
            2 * n,
            "incomplete"
        );
        assert_eq!(complete_run(&buf[..4], b'D', 1 << 20), 0, "no whole header");
        assert_eq!(complete_run(&buf, b'C', 1 << 20), 0, "another tag first");
        buf[2 * n + 4] = 3; // a length below 4: left to the message loop to refuse
        assert_eq!(complete_run(&buf, b'D', 1 << 20), 2 * n);
    }

    #[test]
    fn an_emptied_buffer_starts_again_at_the_beginning_of_its_memory() {
        let mut buf = BytesMut::with_capacity(1024);
        let start = buf.as_ptr();
        buf.put_slice(&[7; 300]);
        buf.advance(200);
        rewind(&mut buf);
        assert_eq!(
            buf.as_ptr(),
            start.wrapping_add(200),
            "bytes left: not moved"
        );
        buf.advance(100);
        rewind(&mut buf);
        assert_eq!(buf.as_ptr(), start, "empty: back at the start");
        assert_eq!(buf.capacity(), 1024, "with all its room");
        rewind(&mut buf);
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (start, 1024),
            "already there"
        );
    }

    #[test]
    fn an_emptied_buffer_a_long_message_made_large_goes_back_to_ordinary_size() {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_slice(&vec![7; 4 * MAX_IDLE_CAPACITY]);
        buf.advance(MAX_IDLE_CAPACITY);
        rewind(&mut buf);
        assert!(buf.capacity() > MAX_IDLE_CAPACITY, "bytes left: kept");
        buf.advance(3 * MAX_IDLE_CAPACITY);
        rewind(&mut buf);
        assert!(buf.is_empty());
        assert!(buf.capacity() <= MAX_IDLE_CAPACITY, "{}", buf.capacity());
    }
}
