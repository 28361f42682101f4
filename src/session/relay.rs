//! The hot path: raw frames both ways between a client and its backend connection. Only frame
//! headers are read (for Terminate and ReadyForQuery); bodies pass through untouched, and the two
//! buffers are reused for the whole session, so relaying allocates nothing per message.

use std::ops::ControlFlow;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::state::LinkState;
use crate::protocol::MAX_CLIENT_MESSAGE_LENGTH;
use crate::protocol::frame::{FrameError, FrameScanner};

/// Size of each direction's buffer: 32 KiB a client in all, so 10,000 clients fit in 320 MiB.
pub const RELAY_BUFFER_SIZE: usize = 16 * 1024;

/// Below this much free space, a buffer is compacted before the next read.
const MIN_READ_SPACE: usize = 4 * 1024;

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
}

/// Both directions of one client's relay.
pub struct Relay {
    client_buf: BytesMut,
    server_buf: BytesMut,
    client_scan: FrameScanner,
    server_scan: FrameScanner,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new(BytesMut::new())
    }
}

impl Relay {
    /// A relay starting with whatever the client already sent after its login.
    pub fn new(mut client_buf: BytesMut) -> Self {
        client_buf.reserve(RELAY_BUFFER_SIZE);
        Relay {
            client_buf,
            server_buf: BytesMut::with_capacity(RELAY_BUFFER_SIZE),
            client_scan: FrameScanner::new(MAX_CLIENT_MESSAGE_LENGTH),
            server_scan: FrameScanner::new(usize::MAX),
        }
    }

    /// Relays until either side leaves, keeping `link` up to date.
    pub async fn run<C, S>(
        &mut self,
        client: &mut C,
        server: &mut S,
        link: &mut LinkState,
    ) -> RelayEnd
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Bytes that arrived with the login go first.
        if !self.client_buf.is_empty()
            && let Some(end) = self.client_to_server(server, link).await
        {
            return end;
        }
        loop {
            make_room(&mut self.client_buf);
            make_room(&mut self.server_buf);
            // Both reads are cancel-safe: a read that loses the race has taken no bytes.
            tokio::select! {
                biased;
                r = client.read_buf(&mut self.client_buf) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return RelayEnd::ClientLeft;
                    }
                    if let Some(end) = self.client_to_server(server, link).await {
                        return end;
                    }
                }
                r = server.read_buf(&mut self.server_buf) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return RelayEnd::ServerGone;
                    }
                    if let Some(end) = self.server_to_client(client, link).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn client_to_server<S: AsyncWrite + Unpin>(
        &mut self,
        server: &mut S,
        link: &mut LinkState,
    ) -> Option<RelayEnd> {
        let scanned = self.client_scan.scan(&self.client_buf, |f| {
            if f.tag == b'X' {
                return ControlFlow::Break(());
            }
            link.on_client_frame(f.tag);
            ControlFlow::Continue(())
        });
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => return Some(RelayEnd::ClientProtocol(e)),
        };
        if scanned.forward > 0 {
            if server
                .write_all(&self.client_buf[..scanned.forward])
                .await
                .is_err()
            {
                return Some(RelayEnd::ServerGone);
            }
            self.client_buf.advance(scanned.forward);
        }
        scanned.stopped.then_some(RelayEnd::ClientLeft)
    }

    async fn server_to_client<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        link: &mut LinkState,
    ) -> Option<RelayEnd> {
        let scanned = self.server_scan.scan(&self.server_buf, |f| {
            if f.tag == b'Z' {
                link.on_ready_for_query(f.status);
            }
            ControlFlow::Continue(())
        });
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => return Some(RelayEnd::ServerProtocol(e)),
        };
        if scanned.forward > 0 {
            if client
                .write_all(&self.server_buf[..scanned.forward])
                .await
                .is_err()
            {
                return Some(RelayEnd::ClientLeft);
            }
            self.server_buf.advance(scanned.forward);
        }
        None
    }
}

/// Compacts a mostly-consumed buffer in place so the next read has room; never grows it past
/// [`RELAY_BUFFER_SIZE`] since at most a partial header is ever left behind.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(RELAY_BUFFER_SIZE - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TxStatus;
    use crate::protocol::frame::test_message as msg;

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
