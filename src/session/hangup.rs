//! Noticing a client that hung up while the relay was not reading it.
//!
//! A relay stops reading a client whose input waits for a backend that takes none of it (a
//! statement blocked on a lock, a slow COPY): reading on would buffer without bound. A client
//! that leaves then is never read, so its end of stream is never seen, and its session, its
//! slot and its backend would stay until the backend moves again. While the client is held back
//! like that, its socket is asked every [`HANGUP_CHECK`] whether the peer has closed or reset
//! the connection (`POLLRDHUP`, as Postgres' own `client_connection_check_interval`), without
//! reading what it sent.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How often a held-back client's socket is checked.
pub const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// The timer of one relay's checks: running only while its client is held back.
#[derive(Debug, Default)]
pub struct HangupWatch {
    timer: Option<Pin<Box<Sleep>>>,
}

impl HangupWatch {
    /// For a relay about to wait with its client held back: true once `hung_up` says the client
    /// is gone, checked every [`HANGUP_CHECK`] (the task is woken for each check).
    pub fn poll_gone(&mut self, cx: &mut Context<'_>, hung_up: impl Fn() -> bool) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(HANGUP_CHECK)));
        while timer.as_mut().poll(cx).is_ready() {
            if hung_up() {
                return true;
            }
            timer.as_mut().reset(Instant::now() + HANGUP_CHECK);
        }
        false
    }

    /// The client is read again: no more checks until it is held back again.
    #[inline(always)]
    pub fn stop(&mut self) {
        if self.timer.is_some() {
            self.timer = None;
        }
    }
}

/// Whether the peer of socket `fd` has closed its side or reset the connection; bytes it sent
/// before that stay unread.
pub fn socket_hung_up(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout: poll only reads and writes that struct.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// [`socket_hung_up`] for a stream with a socket.
pub fn hung_up(stream: &impl AsRawFd) -> bool {
    socket_hung_up(stream.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn unread_bytes_do_not_look_like_a_hang_up_but_a_close_behind_them_does() {
        let (mut client, server) = pair().await;
        client.write_all(b"unread").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!hung_up(&server));
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(hung_up(&server));
    }

    #[tokio::test]
    async fn a_reset_is_a_hang_up() {
        let (client, server) = pair().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(hung_up(&server));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_asks_once_per_interval_and_stops_when_told() {
        let asked = std::cell::Cell::new(0);
        let mut watch = HangupWatch::default();
        let gone = std::future::poll_fn(|cx| {
            if watch.poll_gone(cx, || {
                asked.set(asked.get() + 1);
                asked.get() == 3
            }) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let started = Instant::now();
        gone.await;
        assert_eq!(asked.get(), 3);
        assert_eq!(started.elapsed(), HANGUP_CHECK * 3);
        watch.stop();
        assert!(watch.timer.is_none());
    }
}
