//! Bounded async reads of whole messages, for the two login legs (client authentication and the
//! proxy's own backend login). The relay never uses this: it scans frames without decoding.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a whole message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a length outside `4..=max`.
    #[error("message type {tag:#04x} has invalid length {len}")]
    BadLength {
        /// Message type.
        tag: u8,
        /// Claimed length.
        len: u32,
    },
}

/// Reads one typed message (tag, body) of at most `max` bytes (length word included), using
/// `buf` for whatever arrives beyond it. Cancel-safe: partial input stays in `buf`.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, Bytes), WireError> {
    loop {
        if let Some(&[tag, a, b, c, d]) = buf.first_chunk::<5>() {
            let len = u32::from_be_bytes([a, b, c, d]);
            if len < 4 || len as usize > max {
                return Err(WireError::BadLength { tag, len });
            }
            let total = 1 + len as usize;
            if buf.len() >= total {
                let mut msg = buf.split_to(total);
                msg.advance(5);
                return Ok((tag, msg.freeze()));
            }
            buf.reserve(total - buf.len());
        } else {
            // Room for a whole SASL message or ParameterStatus burst in one read.
            buf.reserve(1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Splits a NUL-terminated string off the front of `body`.
pub fn take_cstr(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&body[..nul]).ok()?;
    Some((s, &body[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_split_messages_and_rejects_long_ones() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in [
                &b"p\0\0"[..],
                b"\0\x08ab",
                b"cdZ\0\0\0\x05I",
                b"Q\0\0\x10\0",
            ] {
                a.write_all(chunk).await.expect("write");
            }
        });
        let mut buf = BytesMut::new();
        let (tag, body) = read_message(&mut b, &mut buf, 100).await.expect("first");
        assert_eq!((tag, &body[..]), (b'p', &b"abcd"[..]));
        let (tag, body) = read_message(&mut b, &mut buf, 100).await.expect("second");
        assert_eq!((tag, &body[..]), (b'Z', &b"I"[..]));
        assert!(matches!(
            read_message(&mut b, &mut buf, 100).await,
            Err(WireError::BadLength { tag: b'Q', .. })
        ));
    }
}
