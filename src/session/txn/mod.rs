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

mod buffers;
mod client;
mod expect;
mod replies;
mod statements;

use buffers::{complete_run, read_some, rewind};
use expect::*;

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

/// A checkout in progress.
type Checkout = Pin<Box<dyn Future<Output = Result<PooledConn, CheckoutError>> + Send>>;

/// Everything a transaction-mode client carries between transactions.
pub struct TxnSession<'a> {
    /// Who made the unnamed statement on a connection, if this session did (see
    /// `own_unnamed`): unique to the session, renewed when a Query the proxy answers alone
    /// drops the statement.
    unnamed_id: u64,
    /// The client sent an unnamed Parse since its last Sync: the unnamed statement its next
    /// Bind or Describe uses is that one (or none, if the backend skips both).
    unnamed_in_batch: bool,
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
    portal_changes: Vec<PortalChange>,
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
        let holders = pool.holders.clone();
        TxnSession {
            unnamed_id: unnamed_id(),
            unnamed_in_batch: false,
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
            statements: ClientStatements::held_in(holders),
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
        if c.statements.may_have_unheld(self.statements.holders()) {
            self.close_unheld(c);
        }
        self.backend = Some(conn);
        self.server_arm.disarm();
        self.counts.begin();
    }

    /// Closes the statements on `c` that no client of the tenant holds any more (their last
    /// holder closed or deallocated them, or left), ahead of what the client sent.
    #[cold]
    fn close_unheld(&mut self, c: &mut crate::pool::backend::BackendConn) {
        for name in c.statements.unheld(self.statements.holders()) {
            prepared::write_statement_target(&mut self.sout, b'C', &name);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Close,
                owner: Owner::Proxy,
                parse: None,
            });
        }
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
        if self.expect.front().is_some_and(Expect::is_marker) {
            self.write_front_locals();
        }
    }

    fn write_front_locals(&mut self) {
        while self.expect.front().is_some_and(Expect::is_marker) {
            match self.expect.pop_front() {
                Some(Expect::Local(reply)) => self.write_local(reply),
                Some(Expect::UnnamedOwner(id)) => {
                    if let Some(conn) = self.backend.as_mut() {
                        conn.conn().unnamed_owner = id;
                    }
                }
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
}

/// A fresh owner for an unnamed statement (see `TxnSession::unnamed_id`).
fn unnamed_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What handling a client message came to.
enum Step {
    Done,
    NeedMore,
    NeedBackend,
    /// Handled again once the barrier set for it lifts.
    Wait,
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

/// A statement that fails with `message` and SQLSTATE `code` on the backend (with 25P02
/// instead in a failed transaction, as any statement does).
fn refusal_sql(code: &str, message: &str) -> String {
    let escaped = message.replace('\'', "''");
    format!(
        "DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{escaped}'; END$pgtenant$"
    )
}
