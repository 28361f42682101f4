//! Reads and writes for the relays. tokio's `poll_read` and `poll_write` pass through its
//! readiness registration on every call (cooperative budget, the waiter lock, the waker check),
//! even when the socket has data. A plain TCP socket is read and written here with one system
//! call while tokio says it is ready, and the task's waker is registered only when it has nothing
//! (or no room): about 4% fewer instructions per transaction (benches/instructions.sh); a relay
//! that reads the same socket on every wake-up keeps a [`ReadArm`], so that the waker is stored
//! once per wake-up, not once per look. TLS streams go through tokio's traits as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::hangup;
use crate::pool::backend_tls::BackendStream;
use crate::tls::TlsClient;

/// A byte stream the relays read and write.
pub trait RelayIo {
    /// Appends what the peer sent to `into` (which has spare room): `Ok(0)` at the end of the
    /// stream, Pending (the task's waker registered) when nothing has come. `arm` remembers that
    /// the task's waker is already stored for the stream's read readiness, for a task that reads
    /// the stream over and over (a fresh one for a single read); streams that do not keep
    /// readiness ignore it.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
        arm: &mut ReadArm,
    ) -> Poll<io::Result<usize>>;

    /// [`RelayIo::poll_fill`] into a slice (the session relay's ring buffer).
    fn poll_read_into(&mut self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Writes some of `out`: how much, or Pending (waker registered) while there is no room.
    fn poll_send(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Poll<io::Result<usize>>;

    /// Whether the peer has closed or reset the connection, without reading what it sent
    /// ([`super::hangup`]).
    fn hung_up(&self) -> bool;
}

/// Which task waker, if any, a socket's read readiness holds since its last empty check.
///
/// A relay task polls both of its sockets each time it wakes, but only one of them woke it: the
/// other one still holds the task's waker, and storing it again costs tokio a lock and a
/// comparison (about 110 instructions, a few times per transaction). While the arm names the
/// polling task's waker and tokio has reported no readiness since it was stored, the read
/// answers Pending at once. Readiness is only set by the reactor, which takes the stored waker
/// as it sets it, so a socket that has become readable is always read. The arm must start
/// disarmed whenever the socket may have been read elsewhere (a pooled connection's new user).
#[derive(Debug, Default)]
pub struct ReadArm(Option<(usize, usize)>);

impl ReadArm {
    /// Forgets any stored waker: the next empty read stores the waker again.
    pub fn disarm(&mut self) {
        self.0 = None;
    }

    fn holds(&self, cx: &Context<'_>) -> bool {
        self.0 == Some(waker_identity(cx))
    }

    fn arm(&mut self, cx: &Context<'_>) {
        self.0 = Some(waker_identity(cx));
    }
}

fn waker_identity(cx: &Context<'_>) -> (usize, usize) {
    let waker = cx.waker();
    (waker.data() as usize, waker.vtable() as *const _ as usize)
}

impl RelayIo for TcpStream {
    fn poll_read_into(&mut self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>> {
        let room = into.len();
        let at = into.as_mut_ptr();
        recv_when_ready(self, cx, room, &mut ReadArm::default(), |sock| {
            recv(sock, at, room)
        })
    }

    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
        arm: &mut ReadArm,
    ) -> Poll<io::Result<usize>> {
        let start = into.len();
        let spare = into.spare_capacity_mut();
        let room = spare.len();
        let at = spare.as_mut_ptr().cast::<u8>();
        let n = ready!(recv_when_ready(self, cx, room, arm, |sock| recv(
            sock, at, room
        )))?;
        // SAFETY: recv wrote the first `n` bytes of the spare capacity.
        unsafe { into.set_len(start + n) };
        Poll::Ready(Ok(n))
    }

    fn hung_up(&self) -> bool {
        hangup::hung_up(self)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let sock = SockRef::from(&*self);
            match self.try_io(Interest::WRITABLE, || send(&sock, out)) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => ready!(self.poll_write_ready(cx))?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Err(e)),
                },
            }
        }
    }
}

/// One `recv` (through `read`, into `room` bytes of space) while tokio says the socket is
/// readable; otherwise the waker is registered (unless `arm` says it already is).
fn recv_when_ready(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    room: usize,
    arm: &mut ReadArm,
    mut read: impl FnMut(&Socket) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        let mut drained = None;
        let mut looked = false;
        let sock = SockRef::from(stream);
        // `try_io` notes tokio's readiness before the closure runs and clears exactly that
        // readiness when the closure says WouldBlock, so an event the reactor records meanwhile
        // is kept. A short read emptied the socket: it is reported as WouldBlock too, so the
        // next call registers the waker instead of asking the kernel again (the rule tokio's own
        // poll_read follows on epoll).
        let got = stream.try_io(Interest::READABLE, || {
            looked = true;
            let n = read(&sock)?;
            if n > 0 && n < room {
                drained = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        // Readiness seen means the reactor took the stored waker; none seen since this task's
        // waker was stored means it is still there.
        if looked {
            arm.disarm();
        }
        return match (got, drained) {
            (_, Some(n)) | (Ok(n), None) => Poll::Ready(Ok(n)),
            (Err(e), None) => match e.kind() {
                io::ErrorKind::WouldBlock => {
                    if !looked && arm.holds(cx) {
                        return Poll::Pending;
                    }
                    // With its budget spent the task is woken to run again later and no waker
                    // is stored: nothing to remember then.
                    let stores = tokio::task::coop::has_budget_remaining();
                    match stream.poll_read_ready(cx) {
                        Poll::Pending => {
                            if stores {
                                arm.arm(cx);
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(ready) => {
                            ready?;
                            continue;
                        }
                    }
                }
                io::ErrorKind::Interrupted => continue,
                _ => Poll::Ready(Err(e)),
            },
        };
    }
}

/// recv(2) into `len` bytes at `at`, as a plain system call. glibc's `recv` and `send` are
/// cancellation points: in a process with more than one thread (a runtime with several workers,
/// or the log writer's thread) each call brackets the system call with the bookkeeping of
/// asynchronous cancellation, which Rust never uses (about 60 instructions a call, a few calls a
/// transaction; benches/README.md).
fn recv(sock: &Socket, at: *mut u8, len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `at` is valid for writes of `len` bytes (the caller's spare room), the socket is
    // open while borrowed, and the kernel writes at most `len` bytes there.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            sock.as_raw_fd(),
            at,
            len,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// send(2) of `out` as a plain system call (see [`recv`]); a closed peer is an error, never a
/// SIGPIPE.
fn send(sock: &Socket, out: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `out` is valid for reads of its length, the socket is open while borrowed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            sock.as_raw_fd(),
            out.as_ptr(),
            out.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Streams that are not plain sockets (TLS; in-memory pipes in tests): through tokio's traits.
pub trait ViaTokio: AsyncRead + AsyncWrite + Unpin {
    /// [`RelayIo::hung_up`]: the socket under the stream, if it has one.
    fn hung_up(&self) -> bool;
}

impl ViaTokio for TlsClient {
    fn hung_up(&self) -> bool {
        hangup::hung_up(self.stream.get_ref().0)
    }
}

/// In-memory pipes stand in for sockets in the relays' unit tests.
#[cfg(test)]
impl ViaTokio for tokio::io::DuplexStream {
    fn hung_up(&self) -> bool {
        false
    }
}

impl<T: ViaTokio> RelayIo for T {
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
        _: &mut ReadArm,
    ) -> Poll<io::Result<usize>> {
        fill_via_tokio(self, cx, into)
    }

    fn poll_read_into(&mut self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>> {
        read_via_tokio(self, cx, into)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, out)
    }

    fn hung_up(&self) -> bool {
        ViaTokio::hung_up(self)
    }
}

impl RelayIo for BackendStream {
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut BytesMut,
        arm: &mut ReadArm,
    ) -> Poll<io::Result<usize>> {
        match self {
            BackendStream::Plain(s) => s.poll_fill(cx, into, arm),
            BackendStream::Tls(_) => fill_via_tokio(self, cx, into),
        }
    }

    fn poll_read_into(&mut self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            BackendStream::Plain(s) => s.poll_read_into(cx, into),
            BackendStream::Tls(_) => read_via_tokio(self, cx, into),
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            BackendStream::Plain(s) => s.poll_send(cx, out),
            BackendStream::Tls(_) => Pin::new(self).poll_write(cx, out),
        }
    }

    fn hung_up(&self) -> bool {
        match self {
            BackendStream::Plain(s) => hangup::hung_up(s),
            BackendStream::Tls(s) => hangup::hung_up(s.get_ref().0),
        }
    }
}

fn fill_via_tokio<R: AsyncRead + Unpin>(
    from: &mut R,
    cx: &mut Context<'_>,
    into: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(from), cx, into)
}

fn read_via_tokio<R: AsyncRead + Unpin>(
    from: &mut R,
    cx: &mut Context<'_>,
    into: &mut [u8],
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(into);
    ready!(Pin::new(from).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(rb.filled().len()))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    /// Waits (at most 5 s) for `s` to append to `into`.
    async fn fill(s: &mut TcpStream, into: &mut BytesMut, what: &str) -> usize {
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| s.poll_fill(cx, into, &mut ReadArm::default())),
        )
        .await
        .expect(what)
        .expect("read")
    }

    fn fill_now(s: &mut TcpStream, into: &mut BytesMut) -> Poll<io::Result<usize>> {
        let waker = std::task::Waker::noop();
        s.poll_fill(
            &mut Context::from_waker(waker),
            into,
            &mut ReadArm::default(),
        )
    }

    #[tokio::test]
    async fn a_drained_socket_wakes_the_task_when_more_comes() {
        let (mut ours, mut theirs) = pair().await;
        let mut buf = BytesMut::with_capacity(1024);
        theirs.write_all(b"first").await.expect("write");
        let n = fill(&mut ours, &mut buf, "first bytes arrive").await;
        assert_eq!((n, &buf[..]), (5, &b"first"[..]));
        // Nothing more now.
        assert!(fill_now(&mut ours, &mut buf).is_pending());
        // What comes later wakes the waiting task (a lost wake-up would time out here).
        let reader = tokio::spawn(async move {
            let n = poll_fn(|cx| ours.poll_fill(cx, &mut buf, &mut ReadArm::default()))
                .await
                .expect("read");
            (n, buf)
        });
        let (n, buf) = sent_later(reader, &mut theirs, b"second").await;
        assert_eq!((n, &buf[..]), (6, &b"firstsecond"[..]));
    }

    /// Sends `bytes` once the spawned `reader` has had time to wait for them, and returns what
    /// it read (at most 5 s: a lost wake-up fails here).
    async fn sent_later(
        reader: tokio::task::JoinHandle<(usize, BytesMut)>,
        theirs: &mut TcpStream,
        bytes: &[u8],
    ) -> (usize, BytesMut) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        theirs.write_all(bytes).await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .expect("reader task")
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }

        /// Lets the reactor run until this waker has been woken `times` times (at most 5 s).
        async fn woken(&self, times: usize, what: &str) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.get() < times {
                assert!(tokio::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn fill_armed(
        s: &mut TcpStream,
        into: &mut BytesMut,
        arm: &mut ReadArm,
        waker: &std::sync::Arc<Count>,
    ) -> Poll<io::Result<usize>> {
        let waker = std::task::Waker::from(waker.clone());
        s.poll_fill(&mut Context::from_waker(&waker), into, arm)
    }

    #[tokio::test]
    async fn an_armed_read_still_wakes_its_task_and_a_new_waker_is_stored() {
        let (mut ours, mut theirs) = pair().await;
        let mut buf = BytesMut::with_capacity(1024);
        let mut arm = ReadArm::default();
        let first = std::sync::Arc::new(Count::default());
        // Stored once, then known to be stored.
        assert!(fill_armed(&mut ours, &mut buf, &mut arm, &first).is_pending());
        assert!(fill_armed(&mut ours, &mut buf, &mut arm, &first).is_pending());
        theirs.write_all(b"one").await.expect("write");
        first.woken(1, "the armed task was woken").await;
        let got = fill_armed(&mut ours, &mut buf, &mut arm, &first);
        assert!(matches!(got, Poll::Ready(Ok(3))), "{got:?}");
        // The wake-up used the stored waker: the next empty read stores it again.
        assert!(fill_armed(&mut ours, &mut buf, &mut arm, &first).is_pending());
        theirs.write_all(b"two").await.expect("write");
        first.woken(2, "the task was woken again").await;
        let got = fill_armed(&mut ours, &mut buf, &mut arm, &first);
        assert!(matches!(got, Poll::Ready(Ok(3))), "{got:?}");
        // Another task's waker is stored although the arm holds the first one's.
        assert!(fill_armed(&mut ours, &mut buf, &mut arm, &first).is_pending());
        let second = std::sync::Arc::new(Count::default());
        assert!(fill_armed(&mut ours, &mut buf, &mut arm, &second).is_pending());
        theirs.write_all(b"six").await.expect("write");
        second.woken(1, "the second task was woken").await;
        let got = fill_armed(&mut ours, &mut buf, &mut arm, &second);
        assert!(matches!(got, Poll::Ready(Ok(3))), "{got:?}");
        assert_eq!(&buf[..], b"onetwosix");
    }

    #[tokio::test]
    async fn a_read_refused_for_budget_is_not_remembered_as_waiting() {
        let (mut ours, mut theirs) = pair().await;
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(1024);
            let mut arm = ReadArm::default();
            // Spend the task's budget without yielding: the read then stores no waker.
            while tokio::task::coop::has_budget_remaining() {
                tokio::task::coop::consume_budget().await;
            }
            let n = poll_fn(|cx| ours.poll_fill(cx, &mut buf, &mut arm))
                .await
                .expect("read");
            (n, buf)
        });
        let (n, buf) = sent_later(reader, &mut theirs, b"late").await;
        assert_eq!((n, &buf[..]), (4, &b"late"[..]));
    }

    #[tokio::test]
    async fn a_full_buffer_is_read_again_and_the_end_is_zero() {
        let (mut ours, mut theirs) = pair().await;
        let sent: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        theirs.write_all(&sent).await.expect("write");
        drop(theirs);
        let mut got = BytesMut::new();
        loop {
            got.reserve(4096);
            if fill(&mut ours, &mut got, "bytes or the end arrive").await == 0 {
                break;
            }
        }
        assert_eq!(&got[..], &sent[..]);
    }

    #[tokio::test]
    async fn sends_wait_for_room_and_deliver_everything() {
        let (mut ours, mut theirs) = pair().await;
        let sent: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = BytesMut::new();
            loop {
                got.reserve(64 * 1024);
                match poll_fn(|cx| theirs.poll_fill(cx, &mut got, &mut ReadArm::default()))
                    .await
                    .expect("read")
                {
                    0 => return got,
                    _ => tokio::time::sleep(Duration::from_micros(50)).await,
                }
            }
        });
        let mut out = &sent[..];
        while !out.is_empty() {
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                poll_fn(|cx| ours.poll_send(cx, out)),
            )
            .await
            .expect("room comes")
            .expect("send");
            out = &out[n..];
        }
        drop(ours);
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("reader finishes")
            .expect("reader task");
        assert_eq!(got.len(), sent.len());
        assert!(got[..] == sent[..]);
    }
}
