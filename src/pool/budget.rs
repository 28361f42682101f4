//! One server's connection budget, shared by every tenant pool placed on it: how many backend
//! connections exist, each tenant's idle connections, and the clients waiting for one. A single
//! lock per server keeps the counts exact.
//!
//! Fairness: when the budget is full, a connection released by a tenant above its fair share
//! (the budget divided among tenants in use) is closed and its capacity handed to a waiting tenant
//! below its share, round-robin; a tenant that needs a connection while the budget is full and
//! nobody is busy takes one by closing the least recently used idle connection of another tenant.
//! Connections never move between tenants: capacity moves, by closing and opening.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::backend::BackendConn;
use super::clock::{self, Instant};

/// Identifies one tenant pool within its server.
pub type PoolId = u64;

/// Pool ids are small counters the proxy mints, so hashing them needs no DoS resistance: a
/// multiply spreads them, for a lookup that costs a few instructions on every checkout.
#[derive(Default, Clone, Copy)]
struct PoolIdHasher(u64);

impl std::hash::Hasher for PoolIdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Slots = HashMap<PoolId, Slot, std::hash::BuildHasherDefault<PoolIdHasher>>;

/// Idle connections older than this are probed for a dead peer before reuse; younger ones are
/// handed out as they are, sparing a syscall per transaction.
const PROBE_AFTER_IDLE: Duration = Duration::from_millis(100);

/// What a checkout is given.
#[derive(Debug)]
pub enum Grant {
    /// An idle connection of the tenant.
    Conn(Box<BackendConn>),
    /// Leave to open a new connection; the capacity is already counted.
    Open,
}

/// The answer to a request for a connection.
pub enum Take {
    /// Granted at once.
    Now(Grant),
    /// Queued: the grant arrives on the receiver, or the sender is dropped when the pool retires.
    Wait(u64, oneshot::Receiver<Grant>),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
    /// When it started waiting, for the admin console's max wait.
    since: clock::Instant,
}

/// One tenant pool's share of the server.
struct Slot {
    size: usize,
    /// Connections of this pool that exist or are being opened.
    open: usize,
    /// Most recently returned last. Boxed so that a checkout or return moves a pointer, not the
    /// whole connection, on every transaction.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<BackendConn>>,
    waiters: VecDeque<Waiter>,
    retired: bool,
}

impl Slot {
    fn busy(&self) -> usize {
        self.open - self.idle.len()
    }

    fn expired(&self, conn: &BackendConn, now: Instant) -> bool {
        now >= conn.retire_at
    }
}

struct State {
    max: usize,
    open: usize,
    slots: Slots,
    /// Pools with waiters, in the order they are next served.
    rotation: VecDeque<PoolId>,
    next_waiter: u64,
}

/// The budget of one server.
pub struct ServerBudget {
    /// Catalog name of the server.
    pub name: String,
    state: Mutex<State>,
}

/// A point-in-time view of a budget, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUsage {
    /// The limit.
    pub max: usize,
    /// Connections open or being opened.
    pub open: usize,
    /// Of those, idle.
    pub idle: usize,
    /// Clients waiting.
    pub waiting: usize,
}

impl ServerBudget {
    /// A budget of `max` connections.
    pub fn new(name: &str, max: usize) -> Self {
        ServerBudget {
            name: name.to_owned(),
            state: Mutex::new(State {
                max: max.max(1),
                open: 0,
                slots: Slots::default(),
                rotation: VecDeque::new(),
                next_waiter: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the limit (catalog edit). Extra connections close as they come back.
    pub fn set_max(&self, max: usize) {
        let mut st = self.lock();
        if st.max != max.max(1) {
            st.max = max.max(1);
            st.dispatch();
        }
    }

    /// Registers a pool.
    pub fn add_pool(&self, id: PoolId, size: usize) {
        self.lock().slots.insert(
            id,
            Slot {
                size: size.max(1),
                open: 0,
                idle: Vec::new(),
                waiters: VecDeque::new(),
                retired: false,
            },
        );
    }

    /// Retires a pool: its idle connections close, its waiters are told to look again, and its
    /// busy connections close when they come back.
    pub fn retire_pool(&self, id: PoolId) {
        let mut st = self.lock();
        let Some(slot) = st.slots.get_mut(&id) else {
            return;
        };
        slot.retired = true;
        slot.waiters.clear();
        let closed = slot.idle.len();
        slot.idle.clear();
        slot.open -= closed;
        st.open -= closed;
        st.rotation.retain(|p| *p != id);
        st.forget_if_done(id);
        st.dispatch();
    }

    /// A live idle connection of pool `id`, if it has one.
    pub fn take_idle(&self, id: PoolId) -> Option<Box<BackendConn>> {
        State::pop_idle(&mut self.lock(), id)
    }

    /// Asks for a connection for pool `id`.
    pub fn take(&self, id: PoolId) -> Take {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(conn) = State::pop_idle(st, id) {
            return Take::Now(Grant::Conn(conn));
        }
        let Some(slot) = st.slots.get_mut(&id) else {
            let (_, rx) = oneshot::channel();
            return Take::Wait(0, rx);
        };
        if slot.open < slot.size {
            if st.open < st.max {
                slot.open += 1;
                st.open += 1;
                return Take::Now(Grant::Open);
            }
            if st.evict_lru_idle(id) {
                if let Some(slot) = st.slots.get_mut(&id) {
                    slot.open += 1;
                }
                st.open += 1;
                return Take::Now(Grant::Open);
            }
        }
        let (tx, rx) = oneshot::channel();
        st.next_waiter += 1;
        let wid = st.next_waiter;
        if let Some(slot) = st.slots.get_mut(&id) {
            slot.waiters.push_back(Waiter {
                id: wid,
                tx,
                since: clock::now(),
            });
        }
        if !st.rotation.contains(&id) {
            st.rotation.push_back(id);
        }
        Take::Wait(wid, rx)
    }

    /// Withdraws a waiter that gave up. Returns a grant that raced with the withdrawal, if any,
    /// so the caller can use it instead of failing.
    pub fn cancel_wait(
        &self,
        id: PoolId,
        waiter: u64,
        rx: &mut oneshot::Receiver<Grant>,
    ) -> Option<Grant> {
        let mut st = self.lock();
        if let Some(slot) = st.slots.get_mut(&id) {
            slot.waiters.retain(|w| w.id != waiter);
            if slot.waiters.is_empty() {
                st.rotation.retain(|p| *p != id);
            }
        }
        rx.try_recv().ok()
    }

    /// A connection of pool `id` comes back clean and reusable.
    pub fn put_back(&self, id: PoolId, mut conn: Box<BackendConn>) {
        let mut st = self.lock();
        let now = clock::now();
        let nobody_waits = st.rotation.is_empty();
        let Some(slot) = st.slots.get_mut(&id) else {
            return;
        };
        if slot.retired || slot.expired(&conn, now) {
            drop(conn);
            st.release_capacity(id);
            return;
        }
        conn.idle_since = now;
        conn.probe_at = clock::after(now, PROBE_AFTER_IDLE);
        // The common case, on every transaction: no client of any tenant waits.
        if nobody_waits {
            slot.idle.push(conn);
            return;
        }
        // Budget full and another tenant below its fair share waits: capacity moves to it.
        if st.open >= st.max
            && let Some(other) = st.needy_other(id)
        {
            drop(conn);
            st.release_capacity(id);
            st.grant_open(other);
            return;
        }
        let mut conn = conn;
        loop {
            let Some(slot) = st.slots.get_mut(&id) else {
                return;
            };
            let Some(w) = slot.waiters.pop_front() else {
                break;
            };
            match w.tx.send(Grant::Conn(conn)) {
                Ok(()) => {
                    st.rotate(id);
                    return;
                }
                Err(Grant::Conn(back)) => conn = back,
                Err(Grant::Open) => return,
            }
        }
        st.rotation.retain(|p| *p != id);
        // Nobody of this tenant waits; a tenant waiting on the full budget gets the capacity.
        if st.open >= st.max
            && let Some(other) = st.waiting_other(id)
        {
            drop(conn);
            st.release_capacity(id);
            st.grant_open(other);
            return;
        }
        if let Some(slot) = st.slots.get_mut(&id) {
            slot.idle.push(conn);
        }
    }

    /// A connection of pool `id` (or the leave to open one) is gone: closed, failed to open, or
    /// dropped dirty.
    pub fn closed(&self, id: PoolId) {
        let mut st = self.lock();
        st.release_capacity(id);
        st.dispatch();
    }

    /// Closes idle connections of pool `id` that are dead, past their lifetime, or idle longer
    /// than `idle_timeout` beyond the first `min_idle`. Returns how many remain idle.
    pub fn evict_idle(
        &self,
        id: PoolId,
        idle_timeout: Duration,
        min_idle: usize,
        now: Instant,
    ) -> usize {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(slot) = st.slots.get_mut(&id) else {
            return 0;
        };
        let before = slot.idle.len();
        slot.idle.retain(|c| c.is_alive() && now < c.retire_at);
        // Oldest returns sit at the bottom of the stack.
        let stale = slot
            .idle
            .iter()
            .take_while(|c| clock::since(now, c.idle_since) >= idle_timeout)
            .count();
        let removable = stale.min(slot.idle.len().saturating_sub(min_idle));
        slot.idle.drain(..removable);
        let closed = before - slot.idle.len();
        slot.open -= closed;
        st.open -= closed;
        let left = slot.idle.len();
        if closed > 0 {
            st.dispatch();
        }
        left
    }

    /// Reserves capacity to open one more idle connection for pool `id`, if both its size and
    /// the budget allow without evicting anyone.
    pub fn reserve_spare(&self, id: PoolId) -> bool {
        let mut st = self.lock();
        if st.open >= st.max {
            return false;
        }
        let Some(slot) = st.slots.get_mut(&id) else {
            return false;
        };
        if slot.retired || slot.open >= slot.size {
            return false;
        }
        slot.open += 1;
        st.open += 1;
        true
    }

    /// The server's numbers now.
    pub fn usage(&self) -> BudgetUsage {
        let st = self.lock();
        BudgetUsage {
            max: st.max,
            open: st.open,
            idle: st.slots.values().map(|s| s.idle.len()).sum(),
            waiting: st.slots.values().map(|s| s.waiters.len()).sum(),
        }
    }

    /// How long pool `id`'s longest waiting client has waited.
    pub fn pool_max_wait(&self, id: PoolId) -> Duration {
        let st = self.lock();
        let now = clock::now();
        st.slots
            .get(&id)
            .and_then(|s| s.waiters.front())
            .map_or(Duration::ZERO, |w| clock::since(now, w.since))
    }

    /// Pool `id`'s numbers now: (open, idle, waiting).
    pub fn pool_usage(&self, id: PoolId) -> (usize, usize, usize) {
        let st = self.lock();
        st.slots
            .get(&id)
            .map_or((0, 0, 0), |s| (s.open, s.idle.len(), s.waiters.len()))
    }
}

impl State {
    /// Pops the most recently returned idle connection that is within its lifetime and, if it
    /// sat idle a while, still connected; the others are closed on the way.
    fn pop_idle(st: &mut State, id: PoolId) -> Option<Box<BackendConn>> {
        let slot = st.slots.get_mut(&id)?;
        let mut now = None;
        while let Some(conn) = slot.idle.pop() {
            let now = *now.get_or_insert_with(clock::now);
            if slot.expired(&conn, now) || (now >= conn.probe_at && !conn.is_alive()) {
                slot.open -= 1;
                st.open -= 1;
                continue;
            }
            return Some(conn);
        }
        None
    }

    fn release_capacity(&mut self, id: PoolId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.open = slot.open.saturating_sub(1);
        }
        self.open = self.open.saturating_sub(1);
        self.forget_if_done(id);
    }

    fn forget_if_done(&mut self, id: PoolId) {
        if self
            .slots
            .get(&id)
            .is_some_and(|s| s.retired && s.open == 0)
        {
            self.slots.remove(&id);
        }
    }

    /// Fair share of the budget among pools in use (busy connections or waiters).
    fn share(&self) -> usize {
        let in_use = self
            .slots
            .values()
            .filter(|s| s.busy() > 0 || !s.waiters.is_empty())
            .count();
        (self.max / in_use.max(1)).max(1)
    }

    /// The next pool in rotation, other than `id`, that waits for capacity and is below its
    /// fair share, provided `id` itself is above its share or has nobody waiting.
    fn needy_other(&self, id: PoolId) -> Option<PoolId> {
        let me = self.slots.get(&id)?;
        let share = self.share();
        if !me.waiters.is_empty() && me.open <= share {
            return None;
        }
        self.rotation.iter().copied().find(|p| {
            *p != id
                && self
                    .slots
                    .get(p)
                    .is_some_and(|s| !s.waiters.is_empty() && s.open < s.size && s.open < share)
        })
    }

    /// The next pool in rotation, other than `id`, that waits for capacity.
    fn waiting_other(&self, id: PoolId) -> Option<PoolId> {
        self.rotation.iter().copied().find(|p| {
            *p != id
                && self
                    .slots
                    .get(p)
                    .is_some_and(|s| !s.waiters.is_empty() && s.open < s.size)
        })
    }

    /// Sends leave-to-open to pool `id`'s first live waiter; if none is left the capacity stays
    /// free.
    fn grant_open(&mut self, id: PoolId) {
        loop {
            let Some(slot) = self.slots.get_mut(&id) else {
                return;
            };
            let Some(w) = slot.waiters.pop_front() else {
                self.rotation.retain(|p| *p != id);
                return;
            };
            slot.open += 1;
            self.open += 1;
            if w.tx.send(Grant::Open).is_ok() {
                self.rotate(id);
                return;
            }
            self.release_capacity(id);
        }
    }

    /// Moves `id` to the back of the rotation if it still has waiters, else out of it.
    fn rotate(&mut self, id: PoolId) {
        self.rotation.retain(|p| *p != id);
        if self.slots.get(&id).is_some_and(|s| !s.waiters.is_empty()) {
            self.rotation.push_back(id);
        }
    }

    /// Hands free capacity to waiting pools, round-robin.
    fn dispatch(&mut self) {
        while self.open < self.max {
            let next = self.rotation.iter().copied().find(|p| {
                self.slots
                    .get(p)
                    .is_some_and(|s| !s.waiters.is_empty() && s.open < s.size)
            });
            match next {
                Some(p) => self.grant_open(p),
                None => return,
            }
        }
    }

    /// Closes the least recently used idle connection of a pool other than `id`.
    fn evict_lru_idle(&mut self, id: PoolId) -> bool {
        let victim = self
            .slots
            .iter()
            .filter(|(p, s)| **p != id && !s.idle.is_empty())
            .min_by_key(|(_, s)| s.idle.first().map(|c| c.idle_since))
            .map(|(p, _)| *p);
        let Some(victim) = victim else {
            return false;
        };
        if let Some(slot) = self.slots.get_mut(&victim) {
            slot.idle.remove(0);
            slot.open -= 1;
        }
        self.open -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection to a throwaway local listener, standing in for a backend.
    async fn fake_conn(listener: &TcpListener) -> Box<BackendConn> {
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (_peer, _) = listener.accept().await.expect("accept");
        BackendConn::for_tests(stream)
    }

    fn granted(t: Take) -> Grant {
        match t {
            Take::Now(g) => g,
            Take::Wait(..) => panic!("expected a grant"),
        }
    }

    #[tokio::test]
    async fn a_returned_connection_goes_to_the_waiter() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = ServerBudget::new("s", 10);
        b.add_pool(1, 1);
        assert!(matches!(granted(b.take(1)), Grant::Open));
        let Take::Wait(_, rx) = b.take(1) else {
            panic!("pool is full");
        };
        b.put_back(1, fake_conn(&listener).await);
        assert!(matches!(rx.await, Ok(Grant::Conn(_))));
        assert_eq!(b.usage().open, 1);
    }

    #[tokio::test]
    async fn a_full_budget_moves_capacity_to_a_tenant_below_its_share() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = ServerBudget::new("s", 2);
        b.add_pool(1, 5);
        b.add_pool(2, 5);
        // Tenant 1 takes the whole budget and wants more.
        assert!(matches!(granted(b.take(1)), Grant::Open));
        assert!(matches!(granted(b.take(1)), Grant::Open));
        let Take::Wait(_, mut rx1) = b.take(1) else {
            panic!("budget full");
        };
        let Take::Wait(_, rx2) = b.take(2) else {
            panic!("budget full");
        };
        // Tenant 1 is above its share (1 of 2): its returned connection closes and tenant 2
        // may open one, although tenant 1 has a waiter too.
        b.put_back(1, fake_conn(&listener).await);
        assert!(matches!(rx2.await, Ok(Grant::Open)));
        assert!(rx1.try_recv().is_err());
        assert_eq!(b.usage().open, 2);
        // At its share, tenant 1 keeps what it returns for its own waiter.
        b.put_back(1, fake_conn(&listener).await);
        assert!(matches!(rx1.await, Ok(Grant::Conn(_))));
    }

    #[tokio::test]
    async fn an_idle_connection_of_another_tenant_is_evicted_for_a_newcomer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = ServerBudget::new("s", 1);
        b.add_pool(1, 5);
        b.add_pool(2, 5);
        assert!(matches!(granted(b.take(1)), Grant::Open));
        b.put_back(1, fake_conn(&listener).await);
        assert_eq!(b.pool_usage(1), (1, 1, 0));
        assert!(matches!(granted(b.take(2)), Grant::Open));
        assert_eq!(b.pool_usage(1), (0, 0, 0));
        assert_eq!(b.usage().open, 1);
    }

    #[tokio::test]
    async fn a_withdrawn_waiter_is_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = ServerBudget::new("s", 10);
        b.add_pool(1, 1);
        assert!(matches!(granted(b.take(1)), Grant::Open));
        let Take::Wait(w1, mut rx1) = b.take(1) else {
            panic!("full");
        };
        let Take::Wait(_, rx2) = b.take(1) else {
            panic!("full");
        };
        assert!(b.cancel_wait(1, w1, &mut rx1).is_none());
        b.put_back(1, fake_conn(&listener).await);
        assert!(matches!(rx2.await, Ok(Grant::Conn(_))));
    }
}
