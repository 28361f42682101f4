//! Cancel routing. Each client gets a proxy-minted random key; the registry maps it to the
//! backend connection serving that client right now. A CancelRequest with an unknown or wrong
//! key is dropped silently, as Postgres does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::messages;

/// How long forwarding one cancel may take.
const CANCEL_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cancel for a client goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Backend address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret.
    pub secret: Arc<[u8]>,
}

/// The client holds no backend (between transactions, or before login ends).
const DETACHED: u8 = 0;
/// The client holds the backend in `Entry::target`.
const ATTACHED: u8 = 1;
/// A cancel went to the attached backend: that connection must not serve anyone else, since the
/// signal may land after the client's query has finished.
const CANCELLED: u8 = 2;

struct Entry {
    secret: [u8; 4],
    /// The backend the client holds while `state` says so; otherwise the last one it held.
    target: Mutex<Option<Arc<CancelTarget>>>,
    /// DETACHED, ATTACHED or CANCELLED. A transaction-mode client attaches and detaches once per
    /// transaction: attaching is one uncontended lock and no allocation (targets are shared),
    /// detaching one atomic swap.
    state: AtomicU8,
}

/// All live client keys.
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<i32, Arc<Entry>>>,
}

/// A client's registered key; unregisters on drop.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    entry: Arc<Entry>,
    /// Process id shown to the client.
    pub pid: i32,
}

impl CancelKey {
    /// The secret shown to the client.
    pub fn secret(&self) -> [u8; 4] {
        self.entry.secret
    }

    /// Points cancels at the backend now serving the client.
    pub fn attach(&self, target: &Arc<CancelTarget>) {
        let mut held = self.entry.target.lock().unwrap_or_else(|p| p.into_inner());
        if !held.as_ref().is_some_and(|t| Arc::ptr_eq(t, target)) {
            *held = Some(target.clone());
        }
        // Set while the lock is held, so a canceller never sees ATTACHED with the old target.
        self.entry.state.store(ATTACHED, Ordering::Release);
    }

    /// Stops cancels reaching the current backend and tells whether one was sent to it since
    /// it was attached; such a connection is closed rather than reused.
    pub fn detach(&self) -> bool {
        self.entry.state.swap(DETACHED, Ordering::AcqRel) == CANCELLED
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Mints a fresh random key for a client.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        self.register_as(None)
    }

    /// Mints a key for a client with a fresh random secret and process id `pid` when no other
    /// client's key has it (a random one otherwise).
    pub fn register_as(self: &Arc<Self>, pid: Option<i32>) -> CancelKey {
        let mut rng = rand::rng();
        let secret: [u8; 4] = rng.random();
        let entry = Arc::new(Entry {
            secret,
            target: Mutex::new(None),
            state: AtomicU8::new(DETACHED),
        });
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let pid = match pid {
            Some(pid) if pid > 0 && !keys.contains_key(&pid) => pid,
            _ => loop {
                let pid = rng.random_range(1..i32::MAX);
                if !keys.contains_key(&pid) {
                    break pid;
                }
            },
        };
        keys.insert(pid, entry.clone());
        CancelKey {
            registry: self.clone(),
            entry,
            pid,
        }
    }

    /// Looks a key up: the target only if the secret matches (compared in constant time).
    pub fn target_for(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let entry = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned()?;
        if secret.ct_eq(&entry.secret).unwrap_u8() == 0 {
            return None;
        }
        let held = entry.target.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock the client cannot attach elsewhere meanwhile; a detach that won the
        // race left DETACHED, so no cancel goes out, and one that loses sees CANCELLED.
        match entry
            .state
            .compare_exchange(ATTACHED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(CANCELLED) => held.as_deref().cloned(),
            Err(_) => None,
        }
    }

    /// Forwards a client's CancelRequest to the backend serving it, if the key is right.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let Some(target) = self.target_for(pid, secret) else {
            tracing::info!(pid, "cancel request with an unknown key ignored");
            return;
        };
        let result = tokio::time::timeout(CANCEL_FORWARD_TIMEOUT, async {
            let mut s = TcpStream::connect(target.addr).await?;
            let mut buf = BytesMut::with_capacity(16);
            messages::cancel_request(&mut buf, target.pid, &target.secret);
            s.write_all(&buf).await?;
            // The server closes the socket once it has read the request.
            let mut sink = [0u8; 16];
            while s.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!(pid, backend_pid = target.pid, "cancel request forwarded"),
            Ok(Err(e)) => tracing::warn!(pid, error = %e, "cancel request could not be forwarded"),
            Err(_) => tracing::warn!(pid, "cancel request forwarding timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_finds_the_target() {
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        let target = Arc::new(CancelTarget {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            pid: 9,
            secret: Arc::from(&[1u8, 2, 3, 4][..]),
        });
        assert_eq!(
            reg.target_for(key.pid, &key.secret()),
            None,
            "nothing attached"
        );
        key.attach(&target);
        assert!(!key.detach(), "nothing cancelled yet");
        assert_eq!(
            reg.target_for(key.pid, &key.secret()),
            None,
            "a detached client's last backend gets no cancel"
        );
        key.attach(&target);
        assert_eq!(
            reg.target_for(key.pid, &key.secret()),
            Some((*target).clone())
        );
        assert_eq!(
            reg.target_for(key.pid, &key.secret()),
            Some((*target).clone()),
            "a session may cancel again"
        );
        assert!(key.detach(), "the cancelled connection is reported once");
        assert!(!key.detach());
        let other = Arc::new(CancelTarget {
            pid: 10,
            ..(*target).clone()
        });
        key.attach(&other);
        assert_eq!(
            reg.target_for(key.pid, &key.secret()),
            Some((*other).clone())
        );
        key.detach();
        let mut wrong = key.secret();
        wrong[0] ^= 1;
        assert_eq!(reg.target_for(key.pid, &wrong), None);
        assert_eq!(reg.target_for(key.pid, &[0; 8]), None);
        let pid = key.pid;
        let secret = key.secret();
        drop(key);
        assert_eq!(reg.target_for(pid, &secret), None, "dropped keys are gone");
    }

    #[test]
    fn a_chosen_process_id_is_used_unless_another_key_has_it() {
        let reg = Arc::new(CancelRegistry::default());
        let first = reg.register_as(Some(4242));
        assert_eq!(first.pid, 4242);
        let second = reg.register_as(Some(4242));
        assert_ne!(second.pid, 4242, "taken: a random one");
        assert_ne!(first.secret(), [0; 4]);
        drop(first);
        assert_eq!(reg.register_as(Some(4242)).pid, 4242, "free again");
    }
}
