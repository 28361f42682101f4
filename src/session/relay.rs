//! The hot path: raw frames both ways between a client and its backend connection. Only frame
//! headers are read (for Terminate and ReadyForQuery); bodies pass through untouched. Each
//! direction has its own fixed buffer, and both directions progress independently inside one
//! poll, so a client that pipelines more than every socket buffer holds while it reads replies
//! never deadlocks the two legs against each other. Nothing is allocated per message.

use std::future::poll_fn;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::hangup::HangupWatch;
use super::silence::SilenceWatch;
use super::sockio::RelayIo;
use super::state::LinkState;
use crate::pool::{Gate, KickSwitch};
use crate::protocol::MAX_CLIENT_MESSAGE_LENGTH;
use crate::protocol::TxStatus;
use crate::protocol::frame::{Frame, FrameError, FrameScanner};
use crate::stats::{SessionCounts, TenantStats};

/// Size of each direction's buffer: 32 KiB a client in all, so 10,000 clients fit in 320 MiB.
pub const RELAY_BUFFER_SIZE: usize = 16 * 1024;

/// Below this much free space at the end, a buffer is compacted before the next read.
const MIN_READ_SPACE: usize = 4 * 1024;

/// How long the last words of a departing backend (its FATAL error) may take to reach the client.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// The backend closed its socket or failed; anything it sent first was relayed.
    ServerGone,
    /// The client sent a frame with an impossible length.
    ClientProtocol(FrameError),
    /// The backend sent a frame with an impossible length.
    ServerProtocol(FrameError),
    /// The proxy is shutting down and the client began a new transaction; nothing of it was
    /// sent to the backend.
    ShuttingDown,
    /// A PAUSE held the client's next transaction longer than it may wait; nothing of it was
    /// sent to the backend.
    PausedTooLong(Duration),
    /// The backend owed replies and sent nothing for this long (`[pool] reply_timeout_ms`).
    ServerSilent(Duration),
}

/// One direction: bytes read from one side, waiting to be written to the other.
/// `buf[start..ready]` holds whole-header-checked bytes to forward, `buf[ready..end]` a partial
/// header waiting for the rest.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    ready: usize,
    end: usize,
    scanner: FrameScanner,
}

impl Pipe {
    fn new(max_frame: usize, initial: &[u8]) -> Self {
        let mut buf = vec![0u8; RELAY_BUFFER_SIZE.max(initial.len())].into_boxed_slice();
        buf[..initial.len()].copy_from_slice(initial);
        Pipe {
            buf,
            start: 0,
            ready: 0,
            end: initial.len(),
            scanner: FrameScanner::new(max_frame),
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.ready]
    }

    /// Scans newly read bytes; true when the callback stopped before a frame.
    fn scan(&mut self, on_frame: impl FnMut(Frame) -> ControlFlow<()>) -> Result<bool, FrameError> {
        let scanned = self
            .scanner
            .scan(&self.buf[self.ready..self.end], on_frame)?;
        self.ready += scanned.forward;
        Ok(scanned.stopped)
    }

    /// Free space to read into, compacting first when the tail is short; empty when the buffer
    /// is full of bytes the other side has not taken yet (backpressure).
    fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.ready, self.end) = (0, 0, 0);
        } else if self.buf.len() - self.end < MIN_READ_SPACE && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.ready, self.end) = (self.ready - self.start, self.end - self.start);
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }
}

/// Both directions of one client's relay.
pub struct Relay {
    to_server: Pipe,
    to_client: Pipe,
    client_done: bool,
    /// The client's switch (marks transaction boundaries, says when the proxy drains) and the
    /// tenant's usage counters, fed once per transaction from `counts`; always set together.
    accounting: Option<(Arc<KickSwitch>, Arc<TenantStats>)>,
    counts: SessionCounts,
    /// Longest a transaction waits at a PAUSE, and the wait in progress.
    pause_limit: Duration,
    held: Option<crate::pool::pause::Hold>,
    /// Checks whether a client that is not read (see `held_back` in `poll_relay`) has left.
    hangup: HangupWatch,
    /// Ends the relay when the backend owes replies and stays silent too long.
    silence: SilenceWatch,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new(BytesMut::new())
    }
}

impl Relay {
    /// A relay starting with whatever the client already sent after its login.
    pub fn new(client_bytes: BytesMut) -> Self {
        Relay {
            to_server: Pipe::new(MAX_CLIENT_MESSAGE_LENGTH, &client_bytes),
            to_client: Pipe::new(usize::MAX, &[]),
            client_done: false,
            accounting: None,
            counts: SessionCounts::default(),
            pause_limit: Duration::ZERO,
            held: None,
            hangup: HangupWatch::default(),
            silence: SilenceWatch::new(None),
        }
    }

    /// Reports transaction boundaries to `kick` (refusing a new transaction once the proxy
    /// drains for shutdown, holding it up to `pause_limit` while a PAUSE is in force), and
    /// counts usage into `stats`.
    pub fn with_accounting(
        mut self,
        kick: Arc<KickSwitch>,
        stats: Arc<TenantStats>,
        pause_limit: Duration,
    ) -> Self {
        self.accounting = Some((kick, stats));
        self.pause_limit = pause_limit;
        self
    }

    /// Ends the relay when the backend owes replies and sends nothing for `limit`.
    pub fn with_reply_timeout(mut self, limit: Option<Duration>) -> Self {
        self.silence = SilenceWatch::new(limit);
        self
    }

    /// Relays until either side leaves, keeping `link` up to date.
    pub async fn run<C, S>(
        &mut self,
        client: &mut C,
        server: &mut S,
        link: &mut LinkState,
    ) -> RelayEnd
    where
        C: AsyncWrite + RelayIo + Unpin,
        S: RelayIo,
    {
        // Bytes that arrived with the login have not been looked at yet.
        if let Err(end) = self.scan_client(link) {
            return end;
        }
        let end = poll_fn(|cx| self.poll_relay(cx, client, server, link)).await;
        if let Some((_, stats)) = &self.accounting {
            self.counts.flush(stats);
        }
        if matches!(end, RelayEnd::ServerGone) && !self.to_client.pending().is_empty() {
            let _ = tokio::time::timeout(
                FINAL_FLUSH_TIMEOUT,
                client.write_all(self.to_client.pending()),
            )
            .await;
        }
        end
    }

    /// Scans what the client sent since the last scan: stops at Terminate, tracks the link.
    fn scan_client(&mut self, link: &mut LinkState) -> Result<(), RelayEnd> {
        let kick = self.accounting.as_ref().map(|(k, _)| &**k);
        let counts = &mut self.counts;
        let mut gate = Gate::Open;
        let scanned = self.to_server.scan(|f| {
            if f.tag == b'X' {
                return ControlFlow::Break(());
            }
            // The first message after ReadyForQuery 'I' starts a transaction (or request).
            if *link == LinkState::Ready(TxStatus::Idle)
                && let Some(k) = kick
            {
                gate = k.begin_transaction();
                if gate != Gate::Open {
                    return ControlFlow::Break(());
                }
                counts.begin();
            }
            counts.queries += u64::from(f.tag == b'Q' || f.tag == b'E');
            link.on_client_frame(f.tag);
            ControlFlow::Continue(())
        });
        match gate {
            Gate::Open => {}
            Gate::Draining => return Err(RelayEnd::ShuttingDown),
            Gate::Paused => {
                // The held frame and what follows stay unscanned, so unsent, until RESUME.
                if let Some(k) = kick {
                    self.held = Some(k.until_resumed(self.pause_limit));
                }
                return Ok(());
            }
        }
        match scanned {
            Ok(stopped) => {
                self.client_done = stopped;
                Ok(())
            }
            Err(e) => Err(RelayEnd::ClientProtocol(e)),
        }
    }

    /// Moves whatever can move without blocking, in both directions, until nothing can; then
    /// every blocked operation has registered its wake-up.
    fn poll_relay<C, S>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        server: &mut S,
        link: &mut LinkState,
    ) -> Poll<RelayEnd>
    where
        C: RelayIo,
        S: RelayIo,
    {
        // Operations that returned Pending in this call have registered their wake-up; polling
        // them again before we return would only repeat that registration.
        let mut waiting = Waiting::default();
        let mut passes = Passes::default();
        loop {
            let mut progress = false;
            // The client is not read: its pipe is full, or a PAUSE holds what it sent.
            let mut held_back = false;
            if let Some(held) = self.held.as_mut()
                && let Poll::Ready(resumed) = held.as_mut().poll(cx)
            {
                self.held = None;
                if !resumed {
                    return Poll::Ready(RelayEnd::PausedTooLong(self.pause_limit));
                }
                if let Err(end) = self.scan_client(link) {
                    return Poll::Ready(end);
                }
                progress = true;
            }
            if !waiting.server_write {
                match write_pending(cx, server, &mut self.to_server) {
                    WriteOutcome::Idle => {}
                    WriteOutcome::Blocked => waiting.server_write = true,
                    WriteOutcome::Wrote => {
                        self.silence.exchanged();
                        progress = true;
                    }
                    WriteOutcome::Gone => return Poll::Ready(RelayEnd::ServerGone),
                }
            }
            if !waiting.client_write {
                match write_pending(cx, client, &mut self.to_client) {
                    WriteOutcome::Idle => {}
                    WriteOutcome::Blocked => waiting.client_write = true,
                    WriteOutcome::Wrote => progress = true,
                    WriteOutcome::Gone => return Poll::Ready(RelayEnd::ClientLeft),
                }
            }
            if self.client_done && self.to_server.pending().is_empty() {
                return Poll::Ready(RelayEnd::ClientLeft);
            }
            if !self.client_done && self.held.is_some() {
                held_back = true;
            } else if !self.client_done && !waiting.client_read {
                match read_into(cx, client, &mut self.to_server) {
                    ReadOutcome::Full => held_back = true,
                    ReadOutcome::Blocked => {
                        waiting.client_read = true;
                        self.hangup.stop();
                    }
                    ReadOutcome::Closed => return Poll::Ready(RelayEnd::ClientLeft),
                    ReadOutcome::Read(n) => {
                        progress = true;
                        self.hangup.stop();
                        self.counts.bytes_in += n as u64;
                        if let Err(end) = self.scan_client(link) {
                            return Poll::Ready(end);
                        }
                    }
                }
            }
            if !waiting.server_read {
                match read_into(cx, server, &mut self.to_client) {
                    ReadOutcome::Full => {}
                    ReadOutcome::Blocked => waiting.server_read = true,
                    ReadOutcome::Closed => return Poll::Ready(RelayEnd::ServerGone),
                    ReadOutcome::Read(n) => {
                        progress = true;
                        self.silence.exchanged();
                        self.counts.bytes_out += n as u64;
                        let accounting = self.accounting.as_ref();
                        let counts = &mut self.counts;
                        let scanned = self.to_client.scan(|f| {
                            if f.tag == b'E'
                                && let Some((_, stats)) = accounting
                            {
                                stats.record_backend_error(f.body());
                            }
                            if f.tag == b'Z' {
                                link.on_ready_for_query(f.status);
                                if *link == LinkState::Ready(TxStatus::Idle)
                                    && let Some((k, stats)) = accounting
                                {
                                    k.end_transaction();
                                    counts.end(stats);
                                }
                            }
                            ControlFlow::Continue(())
                        });
                        if let Err(e) = scanned {
                            return Poll::Ready(RelayEnd::ServerProtocol(e));
                        }
                    }
                }
            }
            if !progress {
                if held_back && self.hangup.poll_gone(cx, || client.hung_up()) {
                    return Poll::Ready(RelayEnd::ClientLeft);
                }
                if matches!(link, LinkState::Busy { .. })
                    && let Some(limit) = self.silence.poll_silent(cx)
                {
                    return Poll::Ready(RelayEnd::ServerSilent(limit));
                }
                return Poll::Pending;
            }
            if passes.spent(cx) {
                return Poll::Pending;
            }
        }
    }
}

/// Passes of a relay loop (this one or the transaction-mode session's) in one poll before the
/// task lets others run.
const MAX_PASSES_PER_POLL: u32 = 32;

/// Counts the passes of one poll of a relay loop. Plain sockets are read without tokio's
/// cooperative budget ([`super::sockio`]), so a client and backend that keep each other busy
/// would hold the thread: after [`MAX_PASSES_PER_POLL`] the task wakes itself and ends the poll.
#[derive(Default)]
pub(super) struct Passes(u32);

impl Passes {
    /// Counts a pass that moved something; true (the task already woken) when the poll must end.
    pub(super) fn spent(&mut self, cx: &Context<'_>) -> bool {
        self.0 += 1;
        if self.0 < MAX_PASSES_PER_POLL {
            return false;
        }
        cx.waker().wake_by_ref();
        true
    }
}

/// Which of the four socket operations are parked on a wake-up within one poll of a relay
/// (this one or the transaction-mode session's): polling them again before returning would only
/// repeat the registration.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) client_read: bool,
    pub(super) client_write: bool,
    pub(super) server_read: bool,
    pub(super) server_write: bool,
}

enum WriteOutcome {
    /// Nothing to write.
    Idle,
    /// The peer cannot take more now (wake-up registered).
    Blocked,
    /// Bytes moved.
    Wrote,
    /// The peer is gone.
    Gone,
}

/// Writes what `pipe` holds for `to`.
fn write_pending<W: RelayIo>(cx: &mut Context<'_>, to: &mut W, pipe: &mut Pipe) -> WriteOutcome {
    if pipe.pending().is_empty() {
        return WriteOutcome::Idle;
    }
    match to.poll_send(cx, pipe.pending()) {
        Poll::Pending => WriteOutcome::Blocked,
        Poll::Ready(Ok(n)) if n > 0 => {
            pipe.start += n;
            WriteOutcome::Wrote
        }
        Poll::Ready(_) => WriteOutcome::Gone,
    }
}

enum ReadOutcome {
    /// No room until the other side drains (no wake-up registered: the drain is the wake-up).
    Full,
    /// Nothing to read now (wake-up registered).
    Blocked,
    /// End of stream or error.
    Closed,
    /// This many bytes arrived.
    Read(usize),
}

fn read_into<R: RelayIo>(cx: &mut Context<'_>, from: &mut R, pipe: &mut Pipe) -> ReadOutcome {
    let space = pipe.space();
    if space.is_empty() {
        return ReadOutcome::Full;
    }
    match from.poll_read_into(cx, space) {
        Poll::Pending => ReadOutcome::Blocked,
        Poll::Ready(Ok(n)) if n > 0 => {
            pipe.end += n;
            ReadOutcome::Read(n)
        }
        Poll::Ready(_) => ReadOutcome::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TxStatus;
    use crate::protocol::frame::test_message as msg;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_relay_that_could_go_on_yields_after_its_passes() {
        use futures_util::FutureExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Wake, Waker};

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Far more than one poll's passes can move (each pass reads at most one buffer).
        let sent: Vec<u8> = (0..4 * MAX_PASSES_PER_POLL as usize * RELAY_BUFFER_SIZE / 1024)
            .flat_map(|_| msg(b'Q', &[b'x'; 1019]))
            .collect();
        let (mut client_app, mut client_side) = tokio::io::duplex(sent.len() * 2);
        let (mut server_side, mut backend) = tokio::io::duplex(sent.len() * 2);
        client_app
            .write_all(&sent)
            .now_or_never()
            .expect("room in the pipe")
            .expect("write");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (mut relay, mut link) = (Relay::default(), LinkState::Ready(TxStatus::Idle));
        let mut yielded = 0;
        loop {
            let poll = relay.poll_relay(&mut cx, &mut client_side, &mut server_side, &mut link);
            assert!(poll.is_pending(), "the relay ended: {poll:?}");
            match count.0.swap(0, Ordering::Relaxed) {
                0 => break,
                _ => yielded += 1,
            }
        }
        assert!(yielded >= 3, "yielded {yielded} times");
        let mut got = vec![0u8; sent.len()];
        backend
            .read_exact(&mut got)
            .now_or_never()
            .expect("everything arrived")
            .expect("read");
        assert!(got == sent);
    }

    #[tokio::test]
    async fn relays_both_ways_and_stops_at_terminate() {
        let (mut client_app, mut client_side) = tokio::io::duplex(1 << 16);
        let (mut server_side, mut backend) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move {
            let mut relay = Relay::default();
            let mut link = LinkState::Ready(TxStatus::Idle);
            let end = relay
                .run(&mut client_side, &mut server_side, &mut link)
                .await;
            (end, link)
        });
        let query = msg(b'Q', b"select 1\0");
        client_app.write_all(&query).await.expect("write");
        let mut got = vec![0u8; query.len()];
        backend.read_exact(&mut got).await.expect("backend reads");
        assert_eq!(got, query);
        let mut reply = msg(b'D', &[5; 100_000]);
        reply.extend(msg(b'Z', b"T"));
        backend.write_all(&reply).await.expect("write");
        let mut got = vec![0u8; reply.len()];
        client_app.read_exact(&mut got).await.expect("client reads");
        assert_eq!(got, reply);
        client_app.write_all(&msg(b'X', b"")).await.expect("write");
        let (end, link) = task.await.expect("relay task");
        assert!(matches!(end, RelayEnd::ClientLeft));
        assert_eq!(link, LinkState::Ready(TxStatus::InBlock));
    }

    #[tokio::test]
    async fn bad_client_length_ends_relay() {
        let (mut client_app, mut client_side) = tokio::io::duplex(1024);
        let (mut server_side, _backend) = tokio::io::duplex(1024);
        client_app
            .write_all(&[b'Q', 0, 0, 0, 1])
            .await
            .expect("write");
        let mut link = LinkState::Ready(TxStatus::Idle);
        let end = Relay::default()
            .run(&mut client_side, &mut server_side, &mut link)
            .await;
        assert!(matches!(end, RelayEnd::ClientProtocol(_)));
    }
}
