//! Cancel routing. Each client gets a proxy-minted random key; the registry maps it to the
//! backend connection serving that client right now. A CancelRequest with an unknown or wrong
//! key is dropped silently, as Postgres does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

struct Entry {
    secret: [u8; 4],
    target: Mutex<Option<CancelTarget>>,
    /// A cancel went to the current target: that connection must not serve anyone else, since
    /// the signal may land after the client's query has finished.
    cancelled: AtomicBool,
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

    /// Points cancels at the backend now serving the client (`None` between transactions).
    pub fn set_target(&self, target: Option<CancelTarget>) {
        *self.entry.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Stops cancels reaching the current backend and tells whether one was sent to it since
    /// it was set; such a connection is closed rather than reused.
    pub fn detach(&self) -> bool {
        let mut target = self.entry.target.lock().unwrap_or_else(|p| p.into_inner());
        *target = None;
        self.entry.cancelled.swap(false, Ordering::AcqRel)
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
        let mut rng = rand::rng();
        let secret: [u8; 4] = rng.random();
        let entry = Arc::new(Entry {
            secret,
            target: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        });
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            let pid = rng.random_range(1..i32::MAX);
            if !keys.contains_key(&pid) {
                break pid;
            }
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
        let target = entry
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if target.is_some() {
            entry.cancelled.store(true, Ordering::Release);
        }
        target
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
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            pid: 9,
            secret: Arc::from(&[1u8, 2, 3, 4][..]),
        };
        key.set_target(Some(target.clone()));
        assert!(!key.detach(), "nothing cancelled yet");
        key.set_target(Some(target.clone()));
        assert_eq!(reg.target_for(key.pid, &key.secret()), Some(target));
        assert!(key.detach(), "the cancelled connection is reported once");
        assert!(!key.detach());
        let mut wrong = key.secret();
        wrong[0] ^= 1;
        assert_eq!(reg.target_for(key.pid, &wrong), None);
        assert_eq!(reg.target_for(key.pid, &[0; 8]), None);
        let pid = key.pid;
        let secret = key.secret();
        drop(key);
        assert_eq!(reg.target_for(pid, &secret), None, "dropped keys are gone");
    }
}
