//! Frame scanning for the relay: finds message boundaries in a byte stream by reading only the
//! five-byte headers (tag + length) and, for ReadyForQuery, the status byte. Bodies are counted,
//! never copied or decoded, so a 1 GiB DataRow streams through a 64 KiB buffer.

use std::ops::ControlFlow;

/// A message header as seen in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Message type byte.
    pub tag: u8,
    /// Length word: the body length plus four.
    pub len: u32,
    /// ReadyForQuery's status byte; zero for every other tag.
    pub status: u8,
    /// The buffer from this frame's header on (nothing is computed from it unless asked).
    from_header: &'a [u8],
}

impl<'a> Frame<'a> {
    /// As much of the body as the scanned buffer holds (all of a small message, as a rule):
    /// enough to read an ErrorResponse's SQLSTATE without decoding anything else.
    pub fn body(&self) -> &'a [u8] {
        let end = self.from_header.len().min(self.len as usize + 1);
        self.from_header.get(5..end).unwrap_or_default()
    }
}

/// A length word the scanner refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {len} for message type {tag:#04x}")]
pub struct FrameError {
    /// The message type.
    pub tag: u8,
    /// The length it claimed.
    pub len: u32,
}

/// Stream position between calls: how much of the current frame's body is still to come.
#[derive(Debug, Clone, Copy)]
pub struct FrameScanner {
    body_left: usize,
    max_len: usize,
}

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes from the start of the buffer that may be forwarded: whole headers and any body bytes.
    /// A partial header at the end stays behind for the next read.
    pub forward: usize,
    /// The callback asked to stop before a frame that starts at `forward`.
    pub stopped: bool,
}

impl FrameScanner {
    /// A scanner that refuses frames longer than `max_len` (length word included).
    pub fn new(max_len: usize) -> Self {
        FrameScanner {
            body_left: 0,
            max_len,
        }
    }

    /// True when the stream sits exactly on a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0
    }

    /// Walks `buf`, calling `on_frame` for each header found. Returning `Break` from the callback
    /// stops before that frame (its header stays unconsumed). Never allocates.
    pub fn scan(
        &mut self,
        buf: &[u8],
        mut on_frame: impl FnMut(Frame) -> ControlFlow<()>,
    ) -> Result<Scanned, FrameError> {
        let mut pos = 0;
        loop {
            if self.body_left > 0 {
                let take = self.body_left.min(buf.len() - pos);
                pos += take;
                self.body_left -= take;
                if self.body_left > 0 {
                    return Ok(Scanned {
                        forward: pos,
                        stopped: false,
                    });
                }
            }
            let rest = &buf[pos..];
            let Some(&[tag, a, b, c, d]) = rest.first_chunk::<5>() else {
                return Ok(Scanned {
                    forward: pos,
                    stopped: false,
                });
            };
            let len = u32::from_be_bytes([a, b, c, d]);
            if len < 4 || len as usize > self.max_len || (tag == b'Z' && len != 5) {
                return Err(FrameError { tag, len });
            }
            let status = if tag == b'Z' {
                match rest.get(5) {
                    Some(&s) => s,
                    None => {
                        return Ok(Scanned {
                            forward: pos,
                            stopped: false,
                        });
                    }
                }
            } else {
                0
            };
            if on_frame(Frame {
                tag,
                len,
                status,
                from_header: rest,
            })
            .is_break()
            {
                return Ok(Scanned {
                    forward: pos,
                    stopped: true,
                });
            }
            pos += 5;
            self.body_left = len as usize - 4;
        }
    }
}

/// One whole message, for tests.
#[cfg(test)]
pub(crate) fn test_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::test_message as msg;
    use super::*;

    fn tags(s: &mut FrameScanner, buf: &[u8]) -> (Vec<(u8, u8)>, Scanned) {
        let mut seen = Vec::new();
        let r = s
            .scan(buf, |f| {
                seen.push((f.tag, f.status));
                ControlFlow::Continue(())
            })
            .expect("valid frames");
        (seen, r)
    }

    #[test]
    fn whole_frames_in_one_buffer() {
        let mut buf = msg(b'T', b"abc");
        buf.extend(msg(b'D', b"0123456789"));
        buf.extend(msg(b'Z', b"I"));
        let mut s = FrameScanner::new(1 << 30);
        let (seen, r) = tags(&mut s, &buf);
        assert_eq!(seen, vec![(b'T', 0), (b'D', 0), (b'Z', b'I')]);
        assert_eq!(
            r,
            Scanned {
                forward: buf.len(),
                stopped: false
            }
        );
        assert!(s.at_boundary());
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let mut stream = msg(b'C', b"SELECT 1\0");
        stream.extend(msg(b'D', &[7; 300]));
        stream.extend(msg(b'Z', b"T"));
        for cut in 0..stream.len() {
            let mut s = FrameScanner::new(1 << 30);
            let mut all = Vec::new();
            let mut pending = stream[..cut].to_vec();
            let (seen, r) = tags(&mut s, &pending);
            all.extend(seen);
            pending.drain(..r.forward);
            pending.extend_from_slice(&stream[cut..]);
            let (seen, r) = tags(&mut s, &pending);
            all.extend(seen);
            assert_eq!(r.forward, pending.len(), "cut {cut}");
            assert_eq!(all, vec![(b'C', 0), (b'D', 0), (b'Z', b'T')], "cut {cut}");
        }
    }

    #[test]
    fn partial_header_is_held_back() {
        let buf = msg(b'Q', b"select 1\0");
        let mut s = FrameScanner::new(1 << 30);
        let (seen, r) = tags(&mut s, &buf[..3]);
        assert!(seen.is_empty());
        assert_eq!(r.forward, 0);
    }

    #[test]
    fn stop_leaves_frame_unconsumed() {
        let mut buf = msg(b'Q', b"x\0");
        let at = buf.len();
        buf.extend(msg(b'X', b""));
        let mut s = FrameScanner::new(1 << 30);
        let r = s
            .scan(&buf, |f| {
                if f.tag == b'X' {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .expect("valid");
        assert_eq!(
            r,
            Scanned {
                forward: at,
                stopped: true
            }
        );
    }

    #[test]
    fn bad_lengths_are_rejected() {
        for (buf, max) in [
            (vec![b'Q', 0, 0, 0, 3], 1 << 30),
            (vec![b'Q', 0x7f, 0xff, 0xff, 0xff], 1 << 30),
            (vec![b'Q', 0, 0, 1, 0], 100),
            (vec![b'Z', 0, 0, 0, 9, b'I'], 1 << 30),
        ] {
            let mut s = FrameScanner::new(max);
            assert!(
                s.scan(&buf, |_| ControlFlow::Continue(())).is_err(),
                "{buf:?}"
            );
        }
    }
}
