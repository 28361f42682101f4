//! Log lines on their way to stderr: written by a thread of their own, in batches.
//!
//! No thread that serves clients writes to the log output: a reader that stalls (stderr a pipe
//! nobody reads, a full disk) would stall it, and every client with it. Lines go into a bounded
//! buffer, and the writer thread writes them out, many in one `write`: at most
//! [`ProxyConfig::log_flush_ms`] after the first of them, when [`FLUSH_BYTES`] are waiting, or at
//! once for a warning or an error (after everything that came before them: the order never
//! changes). A line written the moment it is formatted costs a system call, and a new connection
//! logs two (login and logout): in a `pgbench -C` run those calls were about 6% of the proxy's
//! CPU per connection, which is why lines wait for their batch rather than being handed over one
//! by one (`tracing-appender`'s non-blocking writer wakes its thread for every line).
//!
//! While the output takes nothing, lines beyond [`MAX_HELD_BYTES`] are dropped and counted (the
//! `pgtenant_log_lines_dropped_total` metric); once it takes lines again, a warning says how
//! many were lost. At exit and before a panic message, what is held is written, waiting at most
//! [`EXIT_FLUSH_LIMIT`] for an output that may never take it.
//!
//! [`ProxyConfig::log_flush_ms`]: crate::config::ProxyConfig::log_flush_ms

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Held bytes that make a write at once, whatever the delay.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// Held bytes beyond which new lines are dropped: the buffer's bound.
pub const MAX_HELD_BYTES: usize = 1024 * 1024;
/// Longest the process waits at exit, or before a panic message, for held lines to be written.
pub const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Lines waiting for their batch, and the writer thread's output.
pub struct LineBatch<W> {
    held: Mutex<Held>,
    /// Wakes the writer: a first line, an urgent one, a full batch, a flush asked for.
    wake: Condvar,
    /// Wakes those waiting for a flush to be done.
    written: Condvar,
    /// Only the writer thread writes here.
    out: Mutex<W>,
    /// How long a batch waits for more lines after its first, in microseconds.
    delay_us: AtomicU64,
    /// Lines dropped since the process started.
    dropped_total: AtomicU64,
    /// Says that lines were dropped: called by the writer thread once the output took lines again.
    report_dropped: fn(u64),
}

#[derive(Default)]
struct Held {
    lines: Vec<u8>,
    /// When the first held line came.
    since: Option<Instant>,
    /// A held line must go out now.
    urgent: bool,
    /// Lines dropped and not yet reported.
    dropped: u64,
    /// Flushes asked for, and how many of them the writer has done (see `flush_within`).
    flushes_asked: u64,
    flushes_done: u64,
}

impl<W: Write + Send + 'static> LineBatch<W> {
    /// An empty batch writing to `out` with no delay, once its writer thread runs
    /// ([`LineBatch::spawn_writer`]). `report_dropped` is told how many lines were dropped.
    pub fn new(out: W, report_dropped: fn(u64)) -> Self {
        LineBatch {
            held: Mutex::new(Held::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            out: Mutex::new(out),
            delay_us: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            report_dropped,
        }
    }

    /// Starts the thread that writes the batch's lines.
    pub fn spawn_writer(batch: &Arc<Self>) -> io::Result<()> {
        let batch = batch.clone();
        std::thread::Builder::new()
            .name("pgtenant-log".into())
            .spawn(move || batch.write_forever())
            .map(drop)
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Nothing panics while holding the lock; a poisoned buffer is still a buffer.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines wait up to `delay` after the first of a batch (zero: each goes out at once).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Lines dropped since the start because the output took none.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Takes one formatted line, never waiting for the output: held for the writer (at once
    /// when `urgent`), or dropped and counted when [`MAX_HELD_BYTES`] are already held.
    pub fn push(&self, line: &[u8], urgent: bool) {
        let mut held = self.held();
        if held.lines.len() + line.len() > MAX_HELD_BYTES {
            held.dropped += 1;
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = held.lines.is_empty();
        held.lines.extend_from_slice(line);
        if was_empty {
            held.since = Some(Instant::now());
        }
        let full = held.lines.len() >= FLUSH_BYTES;
        if urgent {
            held.urgent = true;
        }
        // The writer waits for a first line, or for the delay, which these cut short.
        if was_empty || urgent || full {
            drop(held);
            self.wake.notify_one();
        }
    }

    /// Has what is held written, waiting at most `limit` for it; true when it was.
    pub fn flush_within(&self, limit: Duration) -> bool {
        let held = self.held();
        self.flush_held(held, limit)
    }

    /// [`LineBatch::flush_within`] unless another thread holds the buffer (a panic hook must
    /// not wait for a lock).
    fn try_flush_within(&self, limit: Duration) {
        if let Ok(held) = self.held.try_lock() {
            self.flush_held(held, limit);
        }
    }

    fn flush_held(&self, mut held: MutexGuard<'_, Held>, limit: Duration) -> bool {
        held.flushes_asked += 1;
        let asked = held.flushes_asked;
        self.wake.notify_one();
        let (held, _) = self
            .written
            .wait_timeout_while(held, limit, |h| h.flushes_done < asked)
            .unwrap_or_else(|e| e.into_inner());
        held.flushes_done >= asked
    }

    /// The writer thread: waits for a batch to be due, writes it, says what was dropped.
    fn write_forever(&self) {
        let mut batch = Vec::new();
        loop {
            let (flushes, dropped) = self.next_batch(&mut batch);
            {
                let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                // A log that cannot be written has nowhere to report it; the lines are lost.
                let _ = out.write_all(&batch);
                let _ = out.flush();
            }
            batch.clear();
            if dropped > 0 {
                (self.report_dropped)(dropped);
            }
            let mut held = self.held();
            held.flushes_done = held.flushes_done.max(flushes);
            drop(held);
            self.written.notify_all();
        }
    }

    /// Waits until the held lines are due, then swaps them into `batch`: the flushes asked for
    /// so far, and the lines dropped since the last report.
    fn next_batch(&self, batch: &mut Vec<u8>) -> (u64, u64) {
        let mut held = self.held();
        loop {
            let asked = held.flushes_asked > held.flushes_done;
            if held.lines.is_empty() && held.dropped == 0 {
                if asked {
                    held.flushes_done = held.flushes_asked;
                    self.written.notify_all();
                }
                held = self.wake.wait(held).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let due = held.since.map_or(Instant::now(), |s| s + self.delay());
            let now = Instant::now();
            if asked || held.urgent || held.lines.len() >= FLUSH_BYTES || now >= due {
                break;
            }
            held = self
                .wake
                .wait_timeout(held, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::swap(&mut held.lines, batch);
        held.since = None;
        held.urgent = false;
        (held.flushes_asked, std::mem::take(&mut held.dropped))
    }
}

/// The process's stderr, as the writer thread's output.
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
pub static STDERR: LazyLock<Arc<LineBatch<Stderr>>> =
    LazyLock::new(|| Arc::new(LineBatch::new(Stderr, report_dropped)));

fn report_dropped(lines: u64) {
    tracing::warn!(
        lines,
        "log lines dropped: the log output took none while they came"
    );
}

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

/// Warnings and errors go out at once: someone may be watching for them.
fn urgent(level: &Level) -> bool {
    *level <= Level::WARN
}

/// Starts the thread that writes the process's log lines (each line at once until [`start`]).
pub fn spawn_stderr_writer() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = LineBatch::spawn_writer(&STDERR) {
            eprintln!("pgtenant: cannot start the log writer thread: {e}");
        }
    });
}

/// While `serve` runs: batches the process's log lines, each within `delay` (zero: at once).
pub fn start(delay: Duration) {
    STDERR.set_delay(delay);
}

/// At exit: writes the lines still held (waiting at most [`EXIT_FLUSH_LIMIT`]), and any later
/// line at once.
pub fn stop() {
    STDERR.set_delay(Duration::ZERO);
    STDERR.flush_within(EXIT_FLUSH_LIMIT);
}

/// Lines the process dropped because the log output took none.
pub fn dropped_total() -> u64 {
    STDERR.dropped_total()
}

/// Makes a panic message come after the lines logged before it.
pub fn flush_before_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        STDERR.try_flush_within(EXIT_FLUSH_LIMIT);
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// What reached the output and in how many writes; writes wait while the output is shut.
    #[derive(Clone, Default)]
    struct Output(Arc<OutputState>);

    #[derive(Default)]
    struct OutputState {
        bytes: Mutex<Vec<u8>>,
        writes: AtomicUsize,
        shut: Mutex<bool>,
        opened: Condvar,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let s = &self.0;
            let shut = s.shut.lock().expect("lock");
            drop(s.opened.wait_while(shut, |shut| *shut).expect("wait"));
            s.bytes.lock().expect("lock").extend_from_slice(buf);
            s.writes.fetch_add(1, Ordering::SeqCst);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn seen(&self) -> (String, usize) {
            let bytes = self.0.bytes.lock().expect("lock");
            (
                String::from_utf8_lossy(&bytes).into_owned(),
                self.0.writes.load(Ordering::SeqCst),
            )
        }

        fn set_shut(&self, shut: bool) {
            *self.0.shut.lock().expect("lock") = shut;
            self.0.opened.notify_all();
        }

        /// Waits (at most 10 s) until `n` writes have been made.
        fn await_writes(&self, n: usize) {
            let started = Instant::now();
            while self.0.writes.load(Ordering::SeqCst) < n {
                assert!(started.elapsed() < Duration::from_secs(10), "no write");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    static REPORTED: AtomicU64 = AtomicU64::new(0);

    fn note_dropped(lines: u64) {
        REPORTED.fetch_add(lines, Ordering::SeqCst);
    }

    fn writer(delay: Duration) -> (Arc<LineBatch<Output>>, Output) {
        let out = Output::default();
        let batch = Arc::new(LineBatch::new(out.clone(), note_dropped));
        batch.set_delay(delay);
        LineBatch::spawn_writer(&batch).expect("writer thread");
        (batch, out)
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn without_a_delay_each_line_goes_out_at_once() {
        let (batch, out) = writer(Duration::ZERO);
        batch.push(b"one\n", false);
        out.await_writes(1);
        batch.push(b"two\n", false);
        out.await_writes(2);
        assert_eq!(out.seen().0, "one\ntwo\n");
    }

    #[test]
    fn lines_wait_for_their_batch_then_go_out_together_in_order() {
        let (batch, out) = writer(LONG);
        batch.push(b"one\n", false);
        batch.push(b"two\n", false);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(out.seen(), (String::new(), 0), "held for the delay");
        assert!(batch.flush_within(Duration::from_secs(10)));
        assert_eq!(out.seen(), ("one\ntwo\n".into(), 1));
        // Nothing held: a flush has nothing to write.
        assert!(batch.flush_within(Duration::from_secs(10)));
        assert_eq!(out.seen().1, 1);
    }

    #[test]
    fn a_warning_goes_out_at_once_after_the_lines_before_it() {
        let (batch, out) = writer(LONG);
        batch.push(b"info\n", false);
        batch.push(b"WARN\n", true);
        out.await_writes(1);
        assert_eq!(out.seen(), ("info\nWARN\n".into(), 1));
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let (batch, out) = writer(LONG);
        let line = [b'x'; 1000];
        for _ in 0..FLUSH_BYTES / 1000 + 1 {
            batch.push(&line, false);
        }
        out.await_writes(1);
        assert_eq!(out.seen().0.len(), (FLUSH_BYTES / 1000 + 1) * 1000);
    }

    #[test]
    fn a_stalled_output_never_holds_up_a_line_and_drops_are_counted_then_reported() {
        let (batch, out) = writer(Duration::ZERO);
        out.set_shut(true);
        // The writer takes the first line and stalls in its write.
        batch.push(b"first\n", false);
        std::thread::sleep(Duration::from_millis(20));
        let (done_tx, done_rx) = mpsc::channel();
        let pusher = batch.clone();
        std::thread::spawn(move || {
            let line = [b'y'; 1023];
            for _ in 0..2 * MAX_HELD_BYTES / 1024 {
                pusher.push(&line, true);
            }
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("pushing never waits for the output");
        let dropped = batch.dropped_total();
        // About half of the 2 MiB pushed did not fit.
        assert!(dropped >= (MAX_HELD_BYTES / 2048) as u64, "{dropped}");
        assert!(
            !batch.flush_within(Duration::from_millis(50)),
            "the output takes nothing"
        );
        assert_eq!(
            REPORTED.load(Ordering::SeqCst),
            0,
            "not reported while stalled"
        );
        out.set_shut(false);
        assert!(batch.flush_within(Duration::from_secs(10)));
        assert_eq!(REPORTED.load(Ordering::SeqCst), dropped);
        let (text, _) = out.seen();
        assert!(text.starts_with("first\n"));
        assert!(text.len() <= "first\n".len() + MAX_HELD_BYTES);
    }

    #[test]
    fn warnings_and_errors_are_urgent() {
        assert!(urgent(&Level::ERROR));
        assert!(urgent(&Level::WARN));
        assert!(!urgent(&Level::INFO));
        assert!(!urgent(&Level::DEBUG));
    }
}
