//! The client connection a log line is about. Every line a client's task logs while it logs in,
//! and the lines at its end, name the connection: its id, peer address, tenant and user.
//!
//! A tracing span carried these at first, but creating it, recording the tenant and user into it
//! and entering and leaving it at each poll of the login cost about 9,000 instructions per
//! connection, more than a sixth of what a new connection costs the proxy outside SCRAM
//! (benches/instructions.sh with `-C`). Here the task holds a pointer to its [`ClientLog`] in a
//! task-local, which costs a swap per poll, and the line formatters write its fields themselves.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

tokio::task_local! {
    static CURRENT: Arc<ClientLog>;
}

/// A client connection as its log lines name it. Its fields are formatted once, when first
/// needed, and each line copies the text (as tracing-subscriber does a span's fields).
#[derive(Debug)]
pub struct ClientLog {
    id: u64,
    peer: SocketAddr,
    /// `id=7 peer=127.0.0.1:5000`.
    head: OnceLock<String>,
    /// The tenant and user, known once the startup packet has been read and resolved.
    names: OnceLock<Names>,
}

/// A connection's tenant (none for the admin console) and user, and how a plain line writes them.
#[derive(Debug)]
struct Names {
    tenant: Option<String>,
    user: String,
    /// ` tenant="acme" user="app"`.
    plain: String,
}

impl ClientLog {
    /// A connection known by its id and peer address so far.
    pub fn new(id: u64, peer: SocketAddr) -> Arc<Self> {
        Arc::new(ClientLog {
            id,
            peer,
            head: OnceLock::new(),
            names: OnceLock::new(),
        })
    }

    /// Runs `fut` with every line it logs naming this connection.
    pub fn scope<F: Future>(self: &Arc<Self>, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self.clone(), fut)
    }

    /// Runs `f` with every line it logs naming this connection.
    pub fn in_scope<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// The connection's fields in the plain line format, as tracing-subscriber writes a span's
    /// fields: `id=7 peer=127.0.0.1:5000 tenant="acme" user="app"`, names not yet known left out.
    pub(super) fn write_fields(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let head = self.head.get_or_init(|| {
            let mut head = String::with_capacity(48);
            let _ = head.write_str("id=");
            let _ = super::write_decimal(&mut head, self.id);
            let _ = head.write_str(" peer=");
            let _ = super::PeerAddr(self.peer).write_to(&mut head);
            head
        });
        out.write_str(head)?;
        match self.names.get() {
            Some(names) => out.write_str(&names.plain),
            None => Ok(()),
        }
    }

    /// The connection as a JSON object, as tracing-subscriber's JSON format writes a span:
    /// `{"id":7,"peer":"127.0.0.1:5000","tenant":"acme","user":"app","name":"client"}`.
    pub(super) fn write_json(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str("{\"id\":")?;
        super::write_decimal(out, self.id)?;
        out.write_str(",\"peer\":\"")?;
        super::PeerAddr(self.peer).write_to(out)?;
        out.write_char('"')?;
        if let Some(names) = self.names.get() {
            if let Some(tenant) = &names.tenant {
                out.write_str(",\"tenant\":")?;
                super::write_json_str(out, tenant)?;
            }
            out.write_str(",\"user\":")?;
            super::write_json_str(out, &names.user)?;
        }
        out.write_str(",\"name\":\"client\"}")
    }
}

/// Names the tenant (none for the admin console) and user of the connection whose task is
/// running: its lines carry them from now on. Does nothing outside a connection's scope or when
/// they are already named.
pub fn record_names(tenant: Option<&str>, user: &str) {
    let _ = CURRENT.try_with(|c| {
        c.names.get_or_init(|| {
            let mut plain = String::new();
            if let Some(tenant) = tenant {
                let _ = plain.write_str(" tenant=");
                let _ = super::write_debug_str(&mut plain, tenant);
            }
            let _ = plain.write_str(" user=");
            let _ = super::write_debug_str(&mut plain, user);
            Names {
                tenant: tenant.map(str::to_owned),
                user: user.to_owned(),
                plain,
            }
        });
    });
}

/// The connection whose task is logging; `None` outside any connection's scope.
pub(super) fn current() -> Option<Arc<ClientLog>> {
    CURRENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(c: &ClientLog) -> String {
        let mut s = String::new();
        c.write_fields(&mut s).expect("formats");
        s
    }

    #[tokio::test]
    async fn names_follow_the_task_that_records_them() {
        let a = ClientLog::new(1, "127.0.0.1:5000".parse().expect("address"));
        let b = ClientLog::new(2, "[::1]:6000".parse().expect("address"));
        a.scope(async {
            record_names(Some("acme"), "app");
            record_names(Some("other"), "app");
        })
        .await;
        assert_eq!(
            plain(&a),
            "id=1 peer=127.0.0.1:5000 tenant=\"acme\" user=\"app\""
        );
        assert_eq!(plain(&b), "id=2 peer=[::1]:6000");
        b.in_scope(|| record_names(None, "x\"y"));
        assert_eq!(plain(&b), "id=2 peer=[::1]:6000 user=\"x\\\"y\"");
        record_names(Some("nobody's"), "none");
        assert_eq!(current().map(|c| c.id), None);
        assert_eq!(b.in_scope(|| current().map(|c| c.id)), Some(2));
    }

    #[test]
    fn json_is_escaped() {
        let c = ClientLog::new(9, "10.0.0.1:1".parse().expect("address"));
        c.in_scope(|| record_names(Some("a\"b\\c\n\u{1}"), "é"));
        let mut s = String::new();
        c.write_json(&mut s).expect("formats");
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["id"], 9);
        assert_eq!(v["peer"], "10.0.0.1:1");
        assert_eq!(v["tenant"], "a\"b\\c\n\u{1}");
        assert_eq!(v["user"], "é");
        assert_eq!(v["name"], "client");
    }
}
