//! The reply timeout: a backend that owes replies and has sent nothing for
//! `[pool] reply_timeout_ms` is taken for hung (a frozen server, a network path that drops
//! everything without a reset), closed, and its client told. Off (zero) by default: a statement
//! that computes for a long time before its first row is silent too.
//!
//! The relays note each exchange with the backend on the pool's coarse clock (a few nanoseconds,
//! and only when a limit is set); a timer runs only while a relay waits for owed replies, and
//! when it fires the silence is measured from the last exchange.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

use crate::pool::clock;

/// One relay's watch over its backend's silence.
#[derive(Debug)]
pub struct SilenceWatch {
    limit: Option<Duration>,
    /// The last bytes read from or written to the backend.
    last_exchange: clock::Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl SilenceWatch {
    /// A watch closing backends silent for `limit` (None: never).
    pub fn new(limit: Option<Duration>) -> Self {
        SilenceWatch {
            limit,
            last_exchange: clock::now(),
            timer: None,
        }
    }

    /// A limit is set.
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.limit.is_some()
    }

    /// Bytes went to or came from the backend.
    #[inline(always)]
    pub fn exchanged(&mut self) {
        if self.limit.is_some() {
            self.last_exchange = clock::now();
        }
    }

    /// For a relay about to wait while its backend owes replies: the limit, once the backend has
    /// been silent that long (the task is woken when it may be).
    #[inline]
    pub fn poll_silent(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let limit = self.limit?;
        self.poll_timer(cx, limit)
    }

    #[cold]
    fn poll_timer(&mut self, cx: &mut Context<'_>, limit: Duration) -> Option<Duration> {
        loop {
            let silent = clock::since(clock::now(), self.last_exchange);
            if silent >= limit {
                return Some(limit);
            }
            let due = tokio::time::Instant::now() + (limit - silent);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    #[tokio::test]
    async fn without_a_limit_the_backend_may_stay_silent() {
        let mut watch = SilenceWatch::new(None);
        let silent = std::future::poll_fn(|cx| Poll::Ready(watch.poll_silent(cx))).await;
        assert_eq!(silent, None);
    }

    #[tokio::test]
    async fn silence_past_the_limit_is_reported_and_an_exchange_starts_it_again() {
        let limit = Duration::from_millis(50);
        let mut watch = SilenceWatch::new(Some(limit));
        let silent = std::future::poll_fn(|cx| match watch.poll_silent(cx) {
            Some(l) => Poll::Ready(l),
            None => Poll::Pending,
        });
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), silent).await,
            Ok(limit)
        );
        watch.exchanged();
        let now = std::future::poll_fn(|cx| Poll::Ready(watch.poll_silent(cx))).await;
        assert_eq!(now, None, "just heard from");
    }
}
