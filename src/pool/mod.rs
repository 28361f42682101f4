//! Per-tenant pools of raw backend connections. A pool belongs to exactly one tenant and one
//! backend target for its whole life: when the catalog moves a tenant or changes its pool
//! settings, a new pool replaces the old one and the old one's connections close as they return.
//! Checkouts hand out a [`PooledConn`] guard; a guard dropped without [`PooledConn::release`]
//! closes its connection, so nothing dirty is ever reused.

pub mod backend;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use backend::{BackendConn, BackendError};

use crate::protocol::TxStatus;
use crate::tenant::snapshot::Snapshot;
use crate::tenant::{BackendTarget, PoolSettings, Tenant, TenantStatus};

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// Every connection stayed busy for the whole checkout timeout.
    #[error("no connection became free within {0:?}")]
    Timeout(Duration),
    /// A new connection could not be made.
    #[error(transparent)]
    Connect(#[from] BackendError),
}

/// All pools, keyed by tenant slug.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, Arc<TenantPool>>>,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<TenantPool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `tenant`, created on first use and replaced when the tenant's backend or pool
    /// settings changed in the catalog.
    pub fn pool_for(&self, tenant: &Tenant) -> Arc<TenantPool> {
        let mut pools = self.lock();
        if let Some(p) = pools.get(&tenant.slug)
            && *p.target == *tenant.backend
            && p.settings == tenant.pool
        {
            return p.clone();
        }
        let fresh = Arc::new(TenantPool::new(tenant));
        if let Some(old) = pools.insert(tenant.slug.clone(), fresh.clone()) {
            tracing::info!(tenant = %tenant.slug, from = ?old.target, to = ?tenant.backend, "tenant pool replaced");
            old.retire();
        }
        fresh
    }

    /// Periodic upkeep: retire pools of tenants gone from the catalog, close idle connections past
    /// their idle timeout or lifetime or closed by the server, and open connections up to
    /// `min_idle`.
    pub fn maintain(&self, snapshot: &Snapshot) {
        let pools: Vec<Arc<TenantPool>> = {
            let mut map = self.lock();
            map.retain(|slug, pool| {
                let keep = snapshot.tenant(slug).is_some();
                if !keep {
                    pool.retire();
                }
                keep
            });
            map.values().cloned().collect()
        };
        for pool in pools {
            pool.evict_idle();
            let active = snapshot
                .tenant(&pool.tenant)
                .is_some_and(|t| t.status == TenantStatus::Active);
            if active {
                pool.top_up();
            }
        }
    }

    /// Closes every pool (shutdown).
    pub fn close_all(&self) {
        for (_, pool) in self.lock().drain() {
            pool.retire();
        }
    }
}

/// The connections of one tenant on one backend target.
pub struct TenantPool {
    /// Owning tenant.
    pub tenant: String,
    /// Where its connections go.
    pub target: Arc<BackendTarget>,
    /// Its limits and timeouts.
    pub settings: PoolSettings,
    idle: Mutex<Vec<BackendConn>>,
    /// One permit per connection that may exist; held by checked-out guards and by connections
    /// being opened for `min_idle`.
    permits: Arc<Semaphore>,
    retired: AtomicBool,
}

impl TenantPool {
    fn new(tenant: &Tenant) -> Self {
        TenantPool {
            tenant: tenant.slug.clone(),
            target: tenant.backend.clone(),
            settings: tenant.pool.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(tenant.pool.size as usize)),
            retired: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<BackendConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.idle().clear();
    }

    fn expired(&self, conn: &BackendConn, now: Instant) -> bool {
        now.duration_since(conn.created) >= self.settings.max_lifetime
    }

    /// Waits up to the checkout timeout for a connection: the most recently used live idle one,
    /// or a new one. Cancel-safe: a cancelled wait takes nothing.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, CheckoutError> {
        let limit = self.settings.checkout_timeout;
        let permit = tokio::time::timeout(limit, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| CheckoutError::Timeout(limit))?
            .map_err(|_| CheckoutError::Timeout(limit))?;
        let now = Instant::now();
        loop {
            let Some(conn) = self.idle().pop() else { break };
            if conn.is_alive() && !self.expired(&conn, now) {
                return Ok(PooledConn {
                    conn: Some(conn),
                    pool: self.clone(),
                    _permit: permit,
                });
            }
        }
        let conn = BackendConn::connect(&self.target, self.settings.connect_timeout).await?;
        tracing::debug!(tenant = %self.tenant, backend = ?self.target, pid = conn.pid, "backend connection opened");
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    fn give_back(&self, mut conn: BackendConn) {
        if self.retired.load(Ordering::Acquire) || self.expired(&conn, Instant::now()) {
            return;
        }
        conn.idle_since = Instant::now();
        self.idle().push(conn);
    }

    fn evict_idle(&self) {
        let now = Instant::now();
        let mut idle = self.idle();
        idle.retain(|c| c.is_alive() && !self.expired(c, now));
        // The stack is in return order, so the longest-idle connections sit at the bottom.
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.idle_since) >= self.settings.idle_timeout)
            .count();
        let removable = stale.min(idle.len().saturating_sub(self.settings.min_idle as usize));
        idle.drain(..removable);
    }

    fn top_up(self: &Arc<Self>) {
        let missing = (self.settings.min_idle as usize).saturating_sub(self.idle_count());
        for _ in 0..missing {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            let pool = self.clone();
            tokio::spawn(async move {
                match BackendConn::connect(&pool.target, pool.settings.connect_timeout).await {
                    Ok(conn) => pool.give_back(conn),
                    Err(e) => {
                        tracing::warn!(tenant = %pool.tenant, error = %e, "could not open a min_idle connection")
                    }
                }
                drop(permit);
            });
        }
    }
}

/// A checked-out connection. Dropping it closes the connection; [`PooledConn::release`] resets
/// it and returns it to its pool.
pub struct PooledConn {
    conn: Option<BackendConn>,
    pool: Arc<TenantPool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        self.conn
            .as_mut()
            .expect("a PooledConn holds its connection until consumed")
    }

    /// Resets the connection (ROLLBACK when `status` is not idle, then the reset query) and
    /// returns it to the pool, or closes it if the reset fails or times out.
    pub async fn release(mut self, status: TxStatus, reset_timeout: Duration) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match conn
            .reset(status, &self.pool.settings.reset_query, reset_timeout)
            .await
        {
            Ok(()) => self.pool.give_back(conn),
            Err(e) => {
                tracing::info!(tenant = %self.pool.tenant, error = %e, "backend connection closed: reset failed")
            }
        }
    }
}
