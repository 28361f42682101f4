//! Log lines on their way to stderr, written in batches.
//!
//! A line written the moment it is formatted costs a `write` system call into the log file, and
//! a new connection logs two (login and logout): in a `pgbench -C` run those two calls were
//! about 6% of the proxy's CPU per connection. While `serve` runs, info and debug lines wait in a
//! bounded buffer and go out together at most [`ProxyConfig::log_flush_ms`] after the first of
//! them, when the buffer fills, or before a warning or an error (which are written at once, after
//! everything that came before them: the order never changes). The buffer is written at exit
//! and before a panic message.
//!
//! [`ProxyConfig::log_flush_ms`]: crate::config::ProxyConfig::log_flush_ms

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that make a write at once, whatever the delay: the buffer's bound.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// Lines waiting for their batch, and where batches go.
pub struct LineBatch<W> {
    state: Mutex<Held<W>>,
    /// Off until a flusher runs ([`LineBatch::flush_within`]): each line is then written at once.
    batching: AtomicBool,
    /// Wakes the flusher when a line lands in an empty buffer.
    first_line: Notify,
}

struct Held<W> {
    lines: Vec<u8>,
    out: W,
}

impl<W: Write> Held<W> {
    fn write_out(&mut self) {
        // A log that cannot be written has nowhere to report it; the lines are dropped.
        let _ = self.out.write_all(&self.lines);
        let _ = self.out.flush();
        self.lines.clear();
    }
}

impl<W: Write> LineBatch<W> {
    /// An empty batch writing to `out`, not batching until a flusher runs.
    pub const fn new(out: W) -> Self {
        LineBatch {
            state: Mutex::new(Held {
                lines: Vec::new(),
                out,
            }),
            batching: AtomicBool::new(false),
            first_line: Notify::const_new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held<W>> {
        // Nothing panics while holding the lock; a poisoned buffer is still a buffer.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one formatted line: written now when `urgent` (warnings, errors), when not
    /// batching, or when the buffer reaches [`FLUSH_BYTES`]; held otherwise.
    pub fn push(&self, line: &[u8], urgent: bool) {
        let mut held = self.held();
        let was_empty = held.lines.is_empty();
        held.lines.extend_from_slice(line);
        if urgent || held.lines.len() >= FLUSH_BYTES || !self.batching.load(Ordering::Acquire) {
            held.write_out();
        } else if was_empty {
            self.first_line.notify_one();
        }
    }

    /// Writes whatever is held.
    pub fn flush(&self) {
        let mut held = self.held();
        if !held.lines.is_empty() {
            held.write_out();
        }
    }

    /// Writes what is held and turns batching off: later lines are written at once.
    pub fn stop(&self) {
        self.batching.store(false, Ordering::Release);
        self.flush();
    }

    /// Writes what is held unless another thread holds the buffer (a panic hook must not wait).
    fn try_flush(&self) {
        if let Ok(mut held) = self.state.try_lock()
            && !held.lines.is_empty()
        {
            held.write_out();
        }
    }

    /// Turns batching on and writes each batch within `delay` of its first line, until the
    /// future is dropped (batching then stays on; [`LineBatch::flush`] writes the rest).
    pub async fn flush_within(&self, delay: Duration) {
        self.batching.store(true, Ordering::Release);
        loop {
            self.first_line.notified().await;
            tokio::time::sleep(delay).await;
            self.flush();
        }
    }
}

/// The process's stderr, as the batch's output.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The batch every log line of the process goes through.
pub static STDERR: LineBatch<Stderr> = LineBatch::new(Stderr);

/// The subscriber's writer: each formatted line goes to [`STDERR`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchedStderr;

/// One line on its way to [`STDERR`]; the subscriber writes a whole line in one call.
pub struct LineWriter {
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        STDERR.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: urgent(meta.level()),
        }
    }
}

/// Warnings and errors are written at once: someone may be watching for them.
fn urgent(level: &Level) -> bool {
    *level <= Level::WARN
}

/// Batches the process's log lines (each within `delay`) while the current runtime runs; a zero
/// delay leaves every line written at once.
pub fn start(delay: Duration) {
    if !delay.is_zero() {
        tokio::spawn(STDERR.flush_within(delay));
    }
}

/// At exit: writes the lines still held, and any later line at once.
pub fn stop() {
    STDERR.stop();
}

/// Makes a panic message come after the lines logged before it.
pub fn flush_before_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        STDERR.try_flush();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What reached the output, and in how many writes.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            self.writes += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn seen(batch: &LineBatch<Recorder>) -> (String, usize) {
        let held = batch.held();
        (
            String::from_utf8_lossy(&held.out.bytes).into_owned(),
            held.out.writes,
        )
    }

    /// A batch whose flusher is running (and so batching) on the test's runtime.
    async fn batching(delay: Duration) -> Arc<LineBatch<Recorder>> {
        let batch = Arc::new(LineBatch::new(Recorder::default()));
        let flusher = batch.clone();
        tokio::spawn(async move { flusher.flush_within(delay).await });
        tokio::task::yield_now().await;
        batch
    }

    #[test]
    fn without_a_flusher_each_line_is_written_at_once() {
        let batch = LineBatch::new(Recorder::default());
        batch.push(b"one\n", false);
        batch.push(b"two\n", false);
        assert_eq!(seen(&batch), ("one\ntwo\n".into(), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn lines_wait_for_the_delay_then_go_out_together_in_order() {
        let batch = batching(Duration::from_millis(100)).await;
        batch.push(b"one\n", false);
        batch.push(b"two\n", false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen(&batch), (String::new(), 0), "held within the delay");
        batch.push(b"three\n", false);
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert_eq!(seen(&batch), ("one\ntwo\nthree\n".into(), 1));
        // The next line starts a new batch and waits its own delay.
        batch.push(b"four\n", false);
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert_eq!(seen(&batch).1, 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(seen(&batch), ("one\ntwo\nthree\nfour\n".into(), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_goes_out_at_once_after_the_lines_before_it() {
        let batch = batching(Duration::from_secs(10)).await;
        batch.push(b"info\n", false);
        batch.push(b"WARN\n", true);
        assert_eq!(seen(&batch), ("info\nWARN\n".into(), 1));
        batch.flush();
        assert_eq!(seen(&batch).1, 1, "nothing left to write");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_is_written_without_waiting() {
        let batch = batching(Duration::from_secs(10)).await;
        let line = [b'x'; 1000];
        for _ in 0..FLUSH_BYTES / 1000 {
            batch.push(&line, false);
        }
        assert_eq!(seen(&batch).1, 0);
        batch.push(&line, false);
        let (text, writes) = seen(&batch);
        assert_eq!((text.len(), writes), ((FLUSH_BYTES / 1000 + 1) * 1000, 1));
        assert!(batch.held().lines.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flush_writes_what_is_held() {
        let batch = batching(Duration::from_secs(10)).await;
        batch.push(b"last words\n", false);
        assert_eq!(seen(&batch).1, 0);
        batch.flush();
        assert_eq!(seen(&batch), ("last words\n".into(), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn after_stop_held_lines_are_out_and_later_ones_go_at_once() {
        let batch = batching(Duration::from_secs(10)).await;
        batch.push(b"held\n", false);
        batch.stop();
        assert_eq!(seen(&batch), ("held\n".into(), 1));
        batch.push(b"late\n", false);
        assert_eq!(seen(&batch), ("held\nlate\n".into(), 2));
    }

    #[test]
    fn warnings_and_errors_are_urgent() {
        assert!(urgent(&Level::ERROR));
        assert!(urgent(&Level::WARN));
        assert!(!urgent(&Level::INFO));
        assert!(!urgent(&Level::DEBUG));
    }
}
