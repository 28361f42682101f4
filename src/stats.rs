//! Per-tenant usage counters. Sessions count in plain fields and add them to their tenant's
//! atomics once per transaction, so the relay pays a handful of uncontended additions per
//! transaction and nothing per message beyond a field increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::pool::clock;

/// Counted for an ErrorResponse without a code (no server sends one; a class of its own).
const UNKNOWN_SQLSTATE: &str = "??";

/// One tenant's totals since the proxy started (or the tenant first appeared).
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Transactions finished (ReadyForQuery 'I' after work).
    pub transactions: AtomicU64,
    /// Queries: simple Query messages and extended-protocol Executes.
    pub queries: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Time inside transactions, microseconds (on the pool's coarse clock: exact on average).
    pub xact_time_us: AtomicU64,
    /// Checkouts that had to wait for a connection.
    pub waits: AtomicU64,
    /// Time spent waiting for a connection, microseconds.
    pub wait_time_us: AtomicU64,
    /// Waits by upper bound ([`WAIT_BUCKETS`]); the last counts the rest.
    pub wait_buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
    /// Logins that failed authentication.
    pub auth_failures: AtomicU64,
    /// Errors pgtenant itself sent this tenant's clients, by SQLSTATE class (two characters).
    errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Upper bounds of the checkout-wait histogram, seconds.
pub const WAIT_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

impl TenantStats {
    /// Records a checkout that waited `waited`.
    pub fn record_wait(&self, waited: Duration) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        let secs = waited.as_secs_f64();
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.wait_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an ErrorResponse a backend sent a client of the tenant, from its body (or as
    /// much of it as the relay holds), by the SQLSTATE class in its 'C' field.
    pub fn record_backend_error(&self, body: &[u8]) {
        let (code, _) = crate::protocol::messages::error_fields(body);
        self.record_error(code.unwrap_or(UNKNOWN_SQLSTATE));
    }

    /// Counts an error a client of the tenant was sent (by the proxy or relayed from its
    /// backend), by SQLSTATE class. Errors are rare; this takes a lock.
    pub fn record_error(&self, sqlstate: &str) {
        if sqlstate == crate::error::sqlstate::INVALID_PASSWORD {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        let class: String = sqlstate.chars().take(2).collect();
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(class).or_default() += 1;
    }

    /// Errors by SQLSTATE class so far.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Cumulative checkout-wait histogram counts, one per bound of [`WAIT_BUCKETS`].
    pub fn wait_histogram(&self) -> Vec<u64> {
        let mut total = 0;
        self.wait_buckets[..WAIT_BUCKETS.len()]
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    /// Logins that failed authentication so far.
    pub fn read_auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for display.
    pub fn read(&self) -> StatsRow {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsRow {
            transactions: get(&self.transactions),
            queries: get(&self.queries),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            xact_time_us: get(&self.xact_time_us),
            waits: get(&self.waits),
            wait_time_us: get(&self.wait_time_us),
        }
    }
}

/// A tenant's totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsRow {
    /// See [`TenantStats::transactions`].
    pub transactions: u64,
    /// See [`TenantStats::queries`].
    pub queries: u64,
    /// See [`TenantStats::bytes_in`].
    pub bytes_in: u64,
    /// See [`TenantStats::bytes_out`].
    pub bytes_out: u64,
    /// See [`TenantStats::xact_time_us`].
    pub xact_time_us: u64,
    /// See [`TenantStats::waits`].
    pub waits: u64,
    /// See [`TenantStats::wait_time_us`].
    pub wait_time_us: u64,
}

/// What one session counted since its last flush.
#[derive(Debug, Default)]
pub struct SessionCounts {
    /// Queries sent.
    pub queries: u64,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    started: Option<clock::Instant>,
}

impl SessionCounts {
    /// A transaction began now.
    #[inline]
    pub fn begin(&mut self) {
        self.started = Some(clock::now());
    }

    /// A transaction ended: add it and everything counted so far to the tenant's totals.
    #[inline]
    pub fn end(&mut self, to: &TenantStats) {
        let spent = self
            .started
            .take()
            .map_or(Duration::ZERO, |s| clock::since(clock::now(), s));
        to.transactions.fetch_add(1, Ordering::Relaxed);
        to.xact_time_us
            .fetch_add(spent.as_micros() as u64, Ordering::Relaxed);
        self.flush(to);
    }

    /// Adds what was counted outside a finished transaction (the session is ending).
    pub fn flush(&mut self, to: &TenantStats) {
        if self.queries > 0 {
            to.queries.fetch_add(self.queries, Ordering::Relaxed);
        }
        to.bytes_in.fetch_add(self.bytes_in, Ordering::Relaxed);
        to.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        self.queries = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reach_the_tenant_at_transaction_end_and_session_end() {
        let t = TenantStats::default();
        let mut s = SessionCounts::default();
        s.begin();
        s.queries += 2;
        s.bytes_in += 100;
        s.bytes_out += 300;
        assert_eq!(t.read(), StatsRow::default(), "nothing before the end");
        s.end(&t);
        let r = t.read();
        assert_eq!(
            (r.transactions, r.queries, r.bytes_in, r.bytes_out),
            (1, 2, 100, 300)
        );
        s.queries += 1;
        s.flush(&t);
        assert_eq!(t.read().queries, 3);
        assert_eq!(t.read().transactions, 1);
        t.record_wait(Duration::from_millis(3));
        assert_eq!((t.read().waits, t.read().wait_time_us), (1, 3000));
        t.record_wait(Duration::from_secs(9));
        assert_eq!(
            t.wait_histogram(),
            [0, 1, 1, 1, 1, 1, 1, 1],
            "9 s is past every bound"
        );
        t.record_error("28P01");
        t.record_error("53300");
        t.record_error("53300");
        assert_eq!(t.read_auth_failures(), 1);
        assert_eq!(t.errors(), [("28".to_string(), 1), ("53".to_string(), 2)]);
    }
}
