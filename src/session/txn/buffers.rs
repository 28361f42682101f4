//! The relay's byte buffers: reads into them, their memory reused as they empty, and runs of
//! whole messages found at their front.

use bytes::BytesMut;
use std::task::{Context, Poll};

use super::{MAX_IDLE_CAPACITY, READ_CHUNK};
use crate::session::sockio::{ReadArm, RelayIo};
use crate::session::spare;

pub(super) fn read_some<R: RelayIo>(
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
pub(super) fn rewind(buf: &mut BytesMut) {
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
pub(super) fn release(buf: &mut BytesMut) {
    *buf = spare::take(READ_CHUNK);
}

/// Length of the whole `tag` messages at the front of `buf`, stopping once `room` bytes are
/// reached (the first message is always counted) or at anything else: another tag, a message
/// not yet complete, a length the message loop must refuse.
pub(super) fn complete_run(buf: &[u8], tag: u8, room: usize) -> usize {
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
