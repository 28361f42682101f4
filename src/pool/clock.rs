//! The pool's clock. Every checkout and return reads it, and its users (probe after 100 ms idle,
//! lifetimes, idle timeouts) need only millisecond-scale precision, so it is the kernel's coarse
//! monotonic clock: read from shared memory, a few nanoseconds, no hardware timer.

use std::time::Duration;

/// A moment on the pool's clock.
pub type Instant = coarsetime::Instant;

/// Now, on the pool's clock.
pub fn now() -> Instant {
    coarsetime::Instant::now_without_cache_update()
}

/// `at + span`; a span beyond 50 years is as good as forever and counts as 50 years (the clock
/// holds whole seconds in 32 bits).
pub fn after(at: Instant, span: Duration) -> Instant {
    const FOREVER: Duration = Duration::from_secs(50 * 365 * 24 * 3600);
    at + coarsetime::Duration::from(span.min(FOREVER))
}

/// How long from `earlier` to `later`, zero if `later` is not after it.
pub fn since(later: Instant, earlier: Instant) -> Duration {
    if later > earlier {
        Duration::from(later.duration_since(earlier))
    } else {
        Duration::ZERO
    }
}
