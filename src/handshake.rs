//! The first packets of a connection: an SSLRequest is taken up when the listener offers TLS
//! (the caller runs the TLS handshake) and refused with 'N' otherwise, as is GSSENCRequest;
//! then a StartupMessage or CancelRequest. Lengths are checked before any body
//! is read; the caller bounds the whole exchange with the startup timeout.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ClientError;
use crate::protocol::MAX_STARTUP_PACKET_LENGTH;
use crate::protocol::messages;
use crate::protocol::startup::{self, StartupError, StartupPacket};

/// Encryption requests a client may make before its startup packet (GSSENC then SSL, as libpq).
const MAX_ENCRYPTION_REQUESTS: usize = 2;

/// What the client came for.
#[derive(Debug)]
pub enum Handshake {
    /// A session, with its startup parameters.
    Startup {
        /// Startup parameters; `user` is present.
        params: Vec<(String, String)>,
    },
    /// The client asked for TLS and this listener offers it: answer 'S' and run the TLS
    /// handshake, then negotiate again over TLS.
    Tls,
    /// A cancel of another session's query.
    Cancel {
        /// Key process id.
        pid: i32,
        /// Key secret.
        secret: Vec<u8>,
    },
}

/// Why a handshake ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client left or the socket failed: nothing to answer.
    #[error("client disconnected during startup: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something unacceptable; the error goes back to it.
    #[error("{0}")]
    Rejected(ClientError),
}

impl From<StartupError> for HandshakeError {
    fn from(e: StartupError) -> Self {
        let err = match e {
            StartupError::UnsupportedVersion(..) => ClientError::unsupported(e.to_string()),
            StartupError::NoUser => {
                ClientError::fatal(crate::error::sqlstate::INVALID_AUTHORIZATION, e.to_string())
            }
            _ => ClientError::protocol(e.to_string()),
        };
        HandshakeError::Rejected(err)
    }
}

/// Runs the pre-authentication exchange. Not cancel-safe; call it under a timeout and drop the
/// connection when it fires. Reads through `buf`, one read per packet rather than one per field;
/// whatever the client sent after its startup packet stays there for the login.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    offer_tls: bool,
) -> Result<Handshake, HandshakeError> {
    for _ in 0..=MAX_ENCRYPTION_REQUESTS {
        let body = read_packet(stream, buf).await?;
        match startup::parse(&body)? {
            StartupPacket::SslRequest if offer_tls => {
                // Bytes sent before the TLS handshake would be taken as if they came over TLS
                // (CVE-2021-23214): refuse them, as Postgres does.
                if !buf.is_empty() {
                    return Err(HandshakeError::Rejected(ClientError::protocol(
                        "received unencrypted data after SSL request",
                    )));
                }
                return Ok(Handshake::Tls);
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                stream.write_all(b"N").await?
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Handshake::Cancel { pid, secret }),
            StartupPacket::Startup { minor, params, .. } => {
                let (protocol_opts, params): (Vec<_>, Vec<_>) = params
                    .into_iter()
                    .partition(|(n, _)| n.starts_with("_pq_."));
                if minor > 0 || !protocol_opts.is_empty() {
                    let names: Vec<&str> = protocol_opts.iter().map(|(n, _)| n.as_str()).collect();
                    let mut out = BytesMut::new();
                    messages::negotiate_protocol_version(&mut out, &names);
                    stream.write_all(&out).await?;
                }
                return Ok(Handshake::Startup { params });
            }
        }
    }
    Err(HandshakeError::Rejected(ClientError::protocol(
        "too many encryption requests",
    )))
}

/// Room for a whole typical startup packet in the first read.
const FIRST_READ: usize = 256;

/// One length-prefixed packet without its length word. The length is checked before the body is
/// waited for, so `buf` stays within about twice the largest packet allowed.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, HandshakeError> {
    loop {
        if let Some(word) = buf.first_chunk::<4>() {
            let len = u32::from_be_bytes(*word) as usize;
            if !(8..=MAX_STARTUP_PACKET_LENGTH).contains(&len) {
                return Err(HandshakeError::Rejected(ClientError::protocol(format!(
                    "invalid startup packet length {len}"
                ))));
            }
            if buf.len() >= len {
                let mut packet = buf.split_to(len);
                packet.advance(4);
                return Ok(packet);
            }
            buf.reserve(len - buf.len());
        } else {
            buf.reserve(FIRST_READ);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(version: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[tokio::test]
    async fn ssl_refused_then_startup() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = packet(crate::protocol::SSL_REQUEST_CODE, b"");
        input.extend(packet(
            crate::protocol::PROTOCOL_3_0,
            b"user\0app\0database\0acme\0\0",
        ));
        client.write_all(&input).await.expect("write");
        let hs = negotiate(&mut server, &mut BytesMut::new(), false)
            .await
            .expect("negotiates");
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"N");
        assert!(matches!(hs, Handshake::Startup { params } if params.len() == 2));
    }

    #[tokio::test]
    async fn bytes_after_the_startup_packet_are_kept_for_the_login() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = packet(crate::protocol::PROTOCOL_3_0, b"user\0app\0\0");
        input.extend_from_slice(b"p\0\0\0\x08pw\0\0");
        client.write_all(&input).await.expect("write");
        let mut buf = BytesMut::new();
        let hs = negotiate(&mut server, &mut buf, false)
            .await
            .expect("negotiates");
        assert!(matches!(hs, Handshake::Startup { params } if params.len() == 1));
        assert_eq!(&buf[..], b"p\0\0\0\x08pw\0\0");
    }

    #[tokio::test]
    async fn a_packet_split_over_many_reads_is_reassembled() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let input = packet(
            crate::protocol::PROTOCOL_3_0,
            b"user\0app\0database\0acme\0\0",
        );
        let writer = tokio::spawn(async move {
            for byte in input {
                client.write_all(&[byte]).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let hs = negotiate(&mut server, &mut BytesMut::new(), false)
            .await
            .expect("negotiates");
        assert!(matches!(hs, Handshake::Startup { params } if params.len() == 2));
        drop(writer.await);
    }

    #[tokio::test]
    async fn tls_is_taken_up_when_offered_and_early_bytes_are_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let ssl = packet(crate::protocol::SSL_REQUEST_CODE, b"");
        client.write_all(&ssl).await.expect("write");
        let hs = negotiate(&mut server, &mut BytesMut::new(), true)
            .await
            .expect("negotiates");
        assert!(matches!(hs, Handshake::Tls));
        // Plaintext pipelined behind the SSLRequest would pass as TLS-protected: refused.
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = ssl.clone();
        input.extend(packet(crate::protocol::PROTOCOL_3_0, b"user\0app\0\0"));
        client.write_all(&input).await.expect("write");
        let r = negotiate(&mut server, &mut BytesMut::new(), true).await;
        assert!(matches!(r, Err(HandshakeError::Rejected(e)) if e.code == "08P01"));
    }

    #[tokio::test]
    async fn oversized_and_tiny_lengths_are_rejected() {
        for len in [0u32, 7, 10_001, u32::MAX] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(&len.to_be_bytes()).await.expect("write");
            let r = negotiate(&mut server, &mut BytesMut::new(), false).await;
            assert!(
                matches!(r, Err(HandshakeError::Rejected(e)) if e.code == "08P01"),
                "len {len}"
            );
        }
    }

    #[tokio::test]
    async fn newer_minor_version_gets_negotiation() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(&packet(0x0003_0002, b"user\0app\0_pq_.x\0y\0\0"))
            .await
            .expect("write");
        let hs = negotiate(&mut server, &mut BytesMut::new(), false)
            .await
            .expect("negotiates");
        assert!(matches!(hs, Handshake::Startup { params } if params.len() == 1));
        let mut tag = [0u8; 1];
        client.read_exact(&mut tag).await.expect("read");
        assert_eq!(&tag, b"v");
    }

    #[tokio::test]
    async fn endless_ssl_requests_are_cut_off() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let req = packet(crate::protocol::SSL_REQUEST_CODE, b"");
        client
            .write_all(&[req.clone(), req.clone(), req].concat())
            .await
            .expect("write");
        assert!(matches!(
            negotiate(&mut server, &mut BytesMut::new(), false).await,
            Err(HandshakeError::Rejected(_))
        ));
    }
}
