//! Spare relay buffers, kept per thread: a client that connects reuses the buffers of one that
//! left instead of asking malloc for fresh 16 KiB blocks (glibc's slow path for blocks that size,
//! on memory gone cold), which a new connection per transaction would otherwise pay every time.

use std::cell::RefCell;

use bytes::BytesMut;

/// How many spare buffers a thread keeps (at most `MAX_SPARE * MAX_KEPT` bytes).
const MAX_SPARE: usize = 64;
/// Smaller ones are not worth keeping: a taker would have to grow them anyway.
const MIN_KEPT: usize = 4 * 1024;
/// Buffers that grew beyond this (a large result went through) go back to malloc.
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes.
pub fn take(capacity: usize) -> BytesMut {
    let spare = SPARE.with_borrow_mut(Vec::pop);
    match spare {
        Some(mut buf) => {
            // Unique and empty: takes back the room consumed from its front, without allocating.
            buf.reserve(capacity);
            buf
        }
        None => BytesMut::with_capacity(capacity),
    }
}

/// Keeps `buf` for the next client (its bytes are never read again: only its room is reused).
pub fn give(mut buf: BytesMut) {
    buf.clear();
    if !(MIN_KEPT..=MAX_KEPT).contains(&buf.capacity()) {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_room() {
        let mut buf = take(1024);
        buf.extend_from_slice(b"secret of the last client");
        buf.advance(6);
        let addr = buf.as_ptr() as usize;
        give(buf);
        let again = take(1024);
        assert!(again.is_empty());
        assert!(again.capacity() >= 1024);
        // The same block, its consumed front reclaimed.
        assert_eq!(again.as_ptr() as usize, addr - 6);
    }

    #[test]
    fn only_buffers_of_a_useful_size_are_kept() {
        give(BytesMut::with_capacity(MAX_KEPT + 1));
        give(BytesMut::with_capacity(16));
        SPARE.with_borrow(|spare| assert!(spare.is_empty()));
        for _ in 0..MAX_SPARE + 1 {
            give(BytesMut::with_capacity(MIN_KEPT));
        }
        SPARE.with_borrow(|spare| assert_eq!(spare.len(), MAX_SPARE));
    }
}
