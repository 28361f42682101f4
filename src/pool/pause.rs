//! The console's PAUSE and RESUME: a gate that new transactions pass (or wait at) while the
//! ones already running finish. One gate per tenant and one for the whole proxy; a client looks
//! at both when a transaction starts, which costs two atomic loads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Holds new transactions while paused; wakes every waiter on resume.
#[derive(Default)]
pub struct PauseGate {
    paused: AtomicBool,
    resumed: Notify,
}

impl PauseGate {
    /// True while new transactions must wait. SeqCst pairs with the client's busy flag (see
    /// [`super::KickSwitch::begin_transaction`]): either the client sees the pause or the pauser
    /// sees the client busy.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Holds new transactions from now on.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets held and new transactions go.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }
}

/// A transaction held at a PAUSE, as a relay keeps it across polls: true once resumed, false
/// when the client waited too long.
pub type Hold = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Waits until neither gate is paused (true) or `limit` passes (false).
pub async fn wait_open(
    proxy: Arc<PauseGate>,
    tenant: Option<Arc<PauseGate>>,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let tenant = tenant.unwrap_or_default();
    loop {
        // Registered before the check, so a resume between the two is not missed.
        let proxy_resumed = proxy.resumed.notified();
        let tenant_resumed = tenant.resumed.notified();
        tokio::pin!(proxy_resumed, tenant_resumed);
        proxy_resumed.as_mut().enable();
        tenant_resumed.as_mut().enable();
        if !proxy.is_paused() && !tenant.is_paused() {
            return true;
        }
        tokio::select! {
            _ = proxy_resumed => {}
            _ = tenant_resumed => {}
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}
