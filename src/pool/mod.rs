//! Per-tenant pools of raw backend connections. A pool belongs to exactly one tenant and one
//! backend target for its whole life: when the catalog moves a tenant or changes its pool
//! settings, a new pool replaces the old one and the old one's connections close as they return.
//! Checkouts hand out a [`PooledConn`] guard; a guard dropped without [`PooledConn::release`]
//! closes its connection, so nothing dirty is ever reused.

pub mod backend;
pub mod backend_tls;
pub mod budget;
pub mod clock;
pub mod pause;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use backend::{BackendConn, BackendError};
pub use budget::{BudgetUsage, ServerBudget};
pub use pause::PauseGate;

use crate::protocol::TxStatus;
use crate::stats::TenantStats;
use crate::tenant::snapshot::Snapshot;
use crate::tenant::{BackendTarget, PoolSettings, Tenant, TenantStatus};
use budget::{Grant, PoolId, Take};

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No connection became free within the checkout timeout.
    #[error("no connection became free within {0:?}")]
    Timeout(Duration),
    /// A new connection could not be made.
    #[error(transparent)]
    Connect(#[from] BackendError),
    /// The pool was replaced (catalog change) while waiting; look the tenant up again.
    #[error("the tenant's pool was replaced")]
    Retired,
}

/// All pools, keyed by tenant slug, and the budgets of the servers they live on.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, Arc<TenantPool>>>,
    servers: Mutex<HashMap<String, Arc<ServerBudget>>>,
    clients: Mutex<HashMap<String, Arc<TenantClients>>>,
    stats: Mutex<HashMap<String, Arc<TenantStats>>>,
    /// PAUSE without a tenant: every client's transactions wait at it.
    proxy_pause: Arc<PauseGate>,
    next_id: AtomicU64,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<TenantPool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn budget(&self, target: &BackendTarget) -> Arc<ServerBudget> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let max = target.server_max_connections as usize;
        let budget = servers
            .entry(target.server.clone())
            .or_insert_with(|| Arc::new(ServerBudget::new(&target.server, max)));
        budget.set_max(max);
        budget.clone()
    }

    /// The budget of a server, if any pool was placed on it.
    pub fn server_usage(&self, server: &str) -> Option<BudgetUsage> {
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.get(server).map(|b| b.usage())
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holders = pools
            .get(&tenant.slug)
            .map(|p| p.holders.clone())
            .unwrap_or_default();
        let fresh = Arc::new(TenantPool::new(
            tenant,
            id,
            self.budget(&tenant.backend),
            self.stats_for(&tenant.slug),
            holders,
        ));
        if let Some(old) = pools.insert(tenant.slug.clone(), fresh.clone()) {
            tracing::info!(tenant = %tenant.slug, from = ?old.target, to = ?tenant.backend, "tenant pool replaced");
            old.retire();
        }
        fresh
    }

    /// Counts a client of `tenant` in, or refuses it when the tenant already has `limit`. While
    /// the slot lives, `kick` can end the client's task (see [`Pools::kick_unservable`]).
    pub fn admit_client(
        &self,
        tenant: &str,
        limit: u32,
        kick: &Arc<KickSwitch>,
    ) -> Option<ClientSlot> {
        let clients = self.tenant_clients(tenant);
        let admitted = clients
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = kick.tenant_pause.set(clients.pause.clone());
        clients.members().insert(id, kick.clone());
        Some(ClientSlot { clients, id })
    }

    /// The client registry (and PAUSE gate) of `tenant`, made on first use and kept while the
    /// proxy runs; the key is allocated only then.
    fn tenant_clients(&self, tenant: &str) -> Arc<TenantClients> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(tenant) {
            return c.clone();
        }
        clients.entry(tenant.to_owned()).or_default().clone()
    }

    /// The proxy-wide PAUSE gate, which every client's switch holds.
    pub fn proxy_pause(&self) -> Arc<PauseGate> {
        self.proxy_pause.clone()
    }

    /// Holds new transactions of `tenant` (of every tenant when `None`) from now on.
    pub fn pause(&self, tenant: Option<&str>) {
        match tenant {
            Some(t) => self.tenant_clients(t).pause.pause(),
            None => self.proxy_pause.pause(),
        }
    }

    /// Lets the held transactions of `tenant` go; `None` lifts every pause, the proxy's and each
    /// tenant's.
    pub fn resume(&self, tenant: Option<&str>) {
        match tenant {
            Some(t) => self.tenant_clients(t).pause.resume(),
            None => {
                self.proxy_pause.resume();
                let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                for c in clients.values() {
                    c.pause.resume();
                }
            }
        }
    }

    /// True when new transactions of `tenant` are held, by its own pause or the proxy's.
    pub fn is_paused(&self, tenant: &str) -> bool {
        if self.proxy_pause.is_paused() {
            return true;
        }
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(tenant).is_some_and(|c| c.pause.is_paused())
    }

    /// Clients of `tenant` (of every tenant when `None`) inside a transaction now. PAUSE asks
    /// every few milliseconds, so nothing is copied.
    pub fn busy_clients(&self, tenant: Option<&str>) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .iter()
            .filter(|(t, _)| {
                t.as_str() != CONSOLE_KEY && tenant.is_none_or(|want| want == t.as_str())
            })
            .map(|(_, c)| c.members().values().filter(|k| k.is_busy()).count())
            .sum()
    }

    /// The usage counters of `tenant`, made on first use; they outlive pool replacements.
    pub fn stats_for(&self, tenant: &str) -> Arc<TenantStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry(tenant.to_owned()).or_default().clone()
    }

    /// The counters of `tenant` if it has any (no entry is made).
    pub fn stats_if_present(&self, tenant: &str) -> Option<Arc<TenantStats>> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.get(tenant).cloned()
    }

    /// Every tenant's counters, by slug.
    pub fn stats_rows(&self) -> Vec<(String, crate::stats::StatsRow)> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = stats.iter().map(|(k, v)| (k.clone(), v.read())).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Ends the tasks of every connected client of `tenant`, telling each `reason`; returns how
    /// many there were.
    pub fn kick_tenant(&self, tenant: &str, reason: &crate::error::ClientError) -> usize {
        let clients = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients.get(tenant).cloned()
        };
        let members: Vec<Arc<KickSwitch>> = clients
            .map(|c| c.members().values().cloned().collect())
            .unwrap_or_default();
        for m in &members {
            m.kick(reason.clone());
        }
        members.len()
    }

    /// Ends every registered client that is between transactions (shutdown drain); returns how
    /// many clients are still inside one.
    pub fn kick_idle(&self, reason: &crate::error::ClientError) -> usize {
        let mut busy = 0;
        for (_, c) in self.clients() {
            if c.is_busy() {
                busy += 1;
            } else {
                c.kick(reason.clone());
            }
        }
        busy
    }

    /// Registers an admin console session, so that SHOW CLIENTS lists it and a shutdown drain
    /// closes it; it counts against no tenant.
    pub fn admit_console(&self, kick: &Arc<KickSwitch>) -> ClientSlot {
        let clients = self.tenant_clients(CONSOLE_KEY);
        clients.count.fetch_add(1, Ordering::AcqRel);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        clients.members().insert(id, kick.clone());
        ClientSlot { clients, id }
    }

    /// Every logged-in client, by tenant, for the admin console.
    pub fn clients(&self) -> Vec<(String, Arc<KickSwitch>)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Arc<KickSwitch>)> = clients
            .iter()
            .flat_map(|(slug, c)| {
                c.members()
                    .values()
                    .map(|k| (slug.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|(_, k)| k.client_id);
        out
    }

    /// Each tenant pool's numbers now, by tenant, for the admin console.
    pub fn pool_rows(&self) -> Vec<PoolRow> {
        let pools: Vec<Arc<TenantPool>> = self.lock().values().cloned().collect();
        let connected = |slug: &str| {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .get(slug)
                .map_or(0, |c| c.count.load(Ordering::Acquire))
        };
        let mut rows: Vec<PoolRow> = pools
            .iter()
            .map(|p| {
                let (open, idle, waiting) = p.usage();
                PoolRow {
                    tenant: p.tenant.clone(),
                    server: p.target.server.clone(),
                    mode: p.settings.mode,
                    size: p.settings.size,
                    clients: connected(&p.tenant),
                    waiting,
                    open,
                    idle,
                    max_wait: p.server.pool_max_wait(p.id),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        rows
    }

    /// Each server's shared budget now, by name.
    pub fn server_rows(&self) -> Vec<(String, BudgetUsage)> {
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(String, BudgetUsage)> = servers
            .iter()
            .map(|(n, b)| (n.clone(), b.usage()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Ends the tasks of connected clients whose tenant the snapshot no longer serves (disabled
    /// or removed); each is told why with 57P01 as its socket closes.
    pub fn kick_unservable(&self, snapshot: &Snapshot) {
        let tenants: Vec<(String, Arc<TenantClients>)> = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (slug, clients) in tenants {
            if slug == CONSOLE_KEY {
                continue;
            }
            let servable = snapshot
                .tenant(&slug)
                .is_some_and(|t| t.status != TenantStatus::Disabled);
            if servable {
                continue;
            }
            let members: Vec<Arc<KickSwitch>> = clients.members().values().cloned().collect();
            if !members.is_empty() {
                tracing::info!(tenant = %slug, clients = members.len(), "tenant disabled or removed; disconnecting its clients");
            }
            for m in members {
                m.kick(crate::error::ClientError::tenant_closed(&slug));
            }
        }
    }

    /// Periodic upkeep: disconnect clients of disabled tenants, retire pools of tenants gone from
    /// the catalog, close idle connections past their idle timeout or lifetime or closed by the
    /// server, and open connections up to `min_idle`.
    pub fn maintain(&self, snapshot: &Snapshot) {
        self.kick_unservable(snapshot);
        let pools: Vec<Arc<TenantPool>> = {
            let mut map = self.lock();
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|slug, _| snapshot.tenant(slug).is_some());
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
            let idle = pool.evict_idle();
            let active = snapshot
                .tenant(&pool.tenant)
                .is_some_and(|t| t.status == TenantStatus::Active);
            if active {
                pool.top_up(idle);
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

/// The client registry's key for admin console sessions (no tenant has an empty slug).
pub const CONSOLE_KEY: &str = "";

/// One tenant pool as the admin console shows it.
#[derive(Debug, Clone)]
pub struct PoolRow {
    /// Owning tenant.
    pub tenant: String,
    /// Server it draws on.
    pub server: String,
    /// Session or transaction pooling.
    pub mode: crate::config::PoolMode,
    /// Its size.
    pub size: u32,
    /// Clients logged in.
    pub clients: u32,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Backend connections open (or opening).
    pub open: usize,
    /// Of those, idle.
    pub idle: usize,
    /// The longest current wait.
    pub max_wait: Duration,
}

/// The connected clients of one tenant.
#[derive(Default)]
struct TenantClients {
    count: AtomicU32,
    members: Mutex<HashMap<u64, Arc<KickSwitch>>>,
    /// The tenant's PAUSE gate; each admitted client's switch holds it.
    pause: Arc<PauseGate>,
}

impl TenantClients {
    fn members(&self) -> MutexGuard<'_, HashMap<u64, Arc<KickSwitch>>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client counted against its tenant's client limit, and reachable by
/// [`Pools::kick_unservable`], until dropped.
pub struct ClientSlot {
    clients: Arc<TenantClients>,
    id: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.clients.members().remove(&self.id);
        self.clients.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends one client's task from outside it, saying why. The accept loop arms it with the task's
/// abort handle; the client's socket reads the reason as it is dropped. No cost per message. It
/// also carries what the admin console shows of the client.
pub struct KickSwitch {
    abort: std::sync::OnceLock<tokio::task::AbortHandle>,
    reason: std::sync::OnceLock<crate::error::ClientError>,
    /// The client's connection id (as in the logs).
    pub client_id: u64,
    /// Its address.
    pub peer: std::net::SocketAddr,
    /// When it connected.
    pub connected_at: std::time::SystemTime,
    user: std::sync::OnceLock<String>,
    /// In a transaction (or mid-request): a draining proxy and a PAUSE let it finish.
    busy: AtomicBool,
    /// The proxy's drain flag: set, no new transaction may start.
    draining: Arc<AtomicBool>,
    /// The whole proxy's PAUSE gate, and the tenant's once the client is admitted.
    proxy_pause: Arc<PauseGate>,
    tenant_pause: std::sync::OnceLock<Arc<PauseGate>>,
}

/// What a client may do with the transaction it is about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on.
    Open,
    /// The proxy is shutting down: refuse it with 57P01.
    Draining,
    /// A PAUSE is in force: wait for RESUME (see [`KickSwitch::until_resumed`]).
    Paused,
}

impl KickSwitch {
    /// A switch for a client just accepted; `draining` is the proxy's drain flag.
    pub fn new(
        client_id: u64,
        peer: std::net::SocketAddr,
        draining: Arc<AtomicBool>,
        proxy_pause: Arc<PauseGate>,
    ) -> Self {
        KickSwitch {
            abort: std::sync::OnceLock::new(),
            reason: std::sync::OnceLock::new(),
            client_id,
            peer,
            connected_at: std::time::SystemTime::now(),
            user: std::sync::OnceLock::new(),
            busy: AtomicBool::new(false),
            draining,
            proxy_pause,
            tenant_pause: std::sync::OnceLock::new(),
        }
    }

    /// Called when a transaction (or request) is about to start: marks the client busy unless
    /// the proxy drains or a PAUSE holds it. Busy is stored before the flags are read, and the
    /// drain and PAUSE store their flag before reading busy flags (all SeqCst), so no
    /// transaction starts unseen by a drain or PAUSE that is waiting for running ones to end.
    #[inline]
    pub fn begin_transaction(&self) -> Gate {
        self.busy.store(true, Ordering::SeqCst);
        let gate = if self.draining.load(Ordering::SeqCst) {
            Gate::Draining
        } else if self.proxy_pause.is_paused()
            || self.tenant_pause.get().is_some_and(|g| g.is_paused())
        {
            Gate::Paused
        } else {
            return Gate::Open;
        };
        self.busy.store(false, Ordering::SeqCst);
        gate
    }

    /// Marks the end of the client's transaction.
    #[inline]
    pub fn end_transaction(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// True while the client is inside a transaction.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Resolves true once no PAUSE holds this client, false after `limit`.
    pub fn until_resumed(&self, limit: Duration) -> pause::Hold {
        Box::pin(pause::wait_open(
            self.proxy_pause.clone(),
            self.tenant_pause.get().cloned(),
            limit,
        ))
    }

    /// Records the user the client logged in as.
    pub fn set_user(&self, user: &str) {
        let _ = self.user.set(user.to_owned());
    }

    /// The user the client logged in as, once known.
    pub fn user(&self) -> &str {
        self.user.get().map_or("", String::as_str)
    }

    /// Arms the switch with the task it ends.
    pub fn arm(&self, abort: tokio::task::AbortHandle) {
        let _ = self.abort.set(abort);
    }

    /// Ends the task; `reason` goes to the client.
    pub fn kick(&self, reason: crate::error::ClientError) {
        let _ = self.reason.set(reason);
        if let Some(a) = self.abort.get() {
            a.abort();
        }
    }

    /// Why the client was kicked, if it was.
    pub fn reason(&self) -> Option<&crate::error::ClientError> {
        self.reason.get()
    }
}

/// The connections of one tenant on one backend target; their capacity comes from the server's
/// shared budget.
pub struct TenantPool {
    /// Owning tenant.
    pub tenant: String,
    /// Where its connections go.
    pub target: Arc<BackendTarget>,
    /// Its limits and timeouts.
    pub settings: PoolSettings,
    id: PoolId,
    server: Arc<ServerBudget>,
    retired: AtomicBool,
    /// The tenant's usage counters (shared with its sessions, kept across pool replacements).
    pub stats: Arc<TenantStats>,
    /// Which backend statements the tenant's clients hold (kept across pool replacements).
    pub holders: Arc<crate::session::prepared::StatementHolders>,
}

impl TenantPool {
    fn new(
        tenant: &Tenant,
        id: PoolId,
        server: Arc<ServerBudget>,
        stats: Arc<TenantStats>,
        holders: Arc<crate::session::prepared::StatementHolders>,
    ) -> Self {
        server.add_pool(id, tenant.pool.size as usize);
        TenantPool {
            tenant: tenant.slug.clone(),
            target: tenant.backend.clone(),
            settings: tenant.pool.clone(),
            id,
            server,
            retired: AtomicBool::new(false),
            stats,
            holders,
        }
    }

    /// The limits a client waiting on this pool runs into, for its error message.
    pub fn limits(&self) -> String {
        format!(
            "pool size {}, server \"{}\" max_connections {}",
            self.settings.size, self.target.server, self.target.server_max_connections
        )
    }

    /// True once a catalog change replaced this pool.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// (open, idle, waiting) connections and clients of this pool now.
    pub fn usage(&self) -> (usize, usize, usize) {
        self.server.pool_usage(self.id)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.server.retire_pool(self.id);
    }

    /// Waits up to the checkout timeout for a connection: the most recently used live idle one,
    /// or a new one when the tenant's size and the server's budget allow. Cancel-safe.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, CheckoutError> {
        let limit = self.settings.checkout_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let grant = match self.server.take(self.id) {
            Take::Now(g) => g,
            Take::Wait(waiter, rx) => {
                let started = tokio::time::Instant::now();
                let mut wait = Wait {
                    pool: self,
                    waiter,
                    rx: Some(rx),
                };
                let got = wait.until(deadline, limit).await;
                self.stats.record_wait(started.elapsed());
                got?
            }
        };
        let conn = match grant {
            Grant::Conn(conn) => conn,
            Grant::Open => {
                // The guard owns the reserved capacity from here: a failed or cancelled open
                // gives it back.
                let mut guard = PooledConn {
                    conn: None,
                    pool: self.clone(),
                    returned: false,
                };
                let conn = BackendConn::connect(
                    &self.target,
                    self.settings.connect_timeout,
                    self.settings.max_lifetime,
                )
                .await?;
                tracing::debug!(tenant = %self.tenant, backend = ?self.target, pid = conn.cancel.pid, "backend connection opened");
                guard.conn = Some(conn);
                return Ok(guard);
            }
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            returned: false,
        })
    }

    /// An idle connection right now, if there is one: the common case, with no waiting and no
    /// allocation.
    pub fn try_checkout(self: &Arc<Self>) -> Option<PooledConn> {
        if self.is_retired() {
            return None;
        }
        self.server.take_idle(self.id).map(|conn| PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            returned: false,
        })
    }

    fn evict_idle(&self) -> usize {
        self.server.evict_idle(
            self.id,
            self.settings.idle_timeout,
            self.settings.min_idle as usize,
            clock::now(),
        )
    }

    fn top_up(self: &Arc<Self>, idle: usize) {
        let missing = (self.settings.min_idle as usize).saturating_sub(idle);
        for _ in 0..missing {
            if !self.server.reserve_spare(self.id) {
                return;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                let settings = &pool.settings;
                match BackendConn::connect(
                    &pool.target,
                    settings.connect_timeout,
                    settings.max_lifetime,
                )
                .await
                {
                    Ok(conn) => pool.server.put_back(pool.id, conn),
                    Err(e) => {
                        pool.server.closed(pool.id);
                        tracing::warn!(tenant = %pool.tenant, error = %e, "could not open a min_idle connection")
                    }
                }
            });
        }
    }
}

/// A queued checkout; withdraws itself from the queue if dropped or timed out.
struct Wait<'a> {
    pool: &'a TenantPool,
    waiter: u64,
    rx: Option<tokio::sync::oneshot::Receiver<Grant>>,
}

impl Wait<'_> {
    async fn until(
        &mut self,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Result<Grant, CheckoutError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(CheckoutError::Retired);
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(grant)) => {
                self.rx = None;
                Ok(grant)
            }
            Ok(Err(_)) => {
                self.rx = None;
                Err(CheckoutError::Retired)
            }
            Err(_) => match self.withdraw() {
                Some(grant) => Ok(grant),
                None => Err(CheckoutError::Timeout(limit)),
            },
        }
    }

    fn withdraw(&mut self) -> Option<Grant> {
        let mut rx = self.rx.take()?;
        self.pool
            .server
            .cancel_wait(self.pool.id, self.waiter, &mut rx)
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        match self.withdraw() {
            Some(Grant::Conn(conn)) => self.pool.server.put_back(self.pool.id, conn),
            Some(Grant::Open) => self.pool.server.closed(self.pool.id),
            None => {}
        }
    }
}

/// A checked-out connection. Dropping it closes the connection; [`PooledConn::release`] resets
/// it and returns it to its pool.
pub struct PooledConn {
    conn: Option<Box<BackendConn>>,
    pool: Arc<TenantPool>,
    /// The capacity went back to the pool through `release` or `give_back`.
    returned: bool,
}

impl PooledConn {
    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        self.conn
            .as_mut()
            .expect("a PooledConn holds its connection until consumed")
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<TenantPool> {
        &self.pool
    }

    /// Resets the connection (ROLLBACK when `status` is not idle, then the reset query) and
    /// returns it to the pool, or closes it if the reset fails or times out.
    pub async fn release(mut self, status: TxStatus, reset_timeout: Duration) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        self.returned = true;
        match conn
            .reset(status, &self.pool.settings.reset_query, reset_timeout)
            .await
        {
            Ok(()) => self.pool.server.put_back(self.pool.id, conn),
            Err(e) => {
                self.pool.server.closed(self.pool.id);
                tracing::info!(tenant = %self.pool.tenant, error = %e, "backend connection closed: reset failed")
            }
        }
    }

    /// Returns a connection that is idle and carries only state the pool tracks (transaction
    /// mode, between transactions), without a reset.
    pub fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            self.returned = true;
            self.pool.server.put_back(self.pool.id, conn);
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        // A connection (or reserved capacity) not given back cleanly is closed.
        if !self.returned {
            drop(self.conn.take());
            self.pool.server.closed(self.pool.id);
        }
    }
}
