//! Protocol-level prepared statements in transaction mode. A client's statement names are its
//! own; on the backend every statement is named after a hash of its text and parameter types, so
//! two clients preparing the same name never collide, clients preparing the same text share one
//! backend statement, and a statement can be prepared again on whichever backend connection the
//! client gets next. Each backend connection keeps a bounded, least-recently-used set of what it
//! has prepared.
//!
//! A backend's copy serves a client's statement only if it was prepared after the client's
//! Parse. Postgres fixes a named statement's result columns when it is prepared: after a schema
//! change (`ALTER TABLE … ADD COLUMN` under `SELECT *`) a statement prepared before it fails with
//! "cached plan must not change result type", while one prepared after it works. A client that
//! prepares after the change must get the latter, as on a direct connection, so an older copy is
//! closed and prepared again for it; a copy newer than the client's Parse is one the client's
//! own statement would match on a direct connection, unless the schema changed in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::tracking::SettingsChange;

/// Named statements one client may hold at once (54000 beyond).
pub const MAX_STATEMENTS_PER_CLIENT: usize = 10_000;

/// Prefix of backend-side statement names.
const BACKEND_PREFIX: &str = "pgtenant_";

/// One distinct statement: its backend name and the Parse message that creates it there.
#[derive(Debug)]
pub struct Statement {
    /// Name on every backend connection.
    pub backend_name: Box<str>,
    /// A whole Parse message (tag included) under `backend_name`.
    pub parse: Bytes,
    /// What running it does to the client's settings.
    pub change: Option<Arc<SettingsChange>>,
    /// When the client's Parse came (see [`stamp`]).
    pub parsed_at: u64,
}

/// Orders client Parses and backend prepares, across all connections.
static PREPARE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A moment later than every earlier stamp.
fn stamp() -> u64 {
    PREPARE_CLOCK.fetch_add(1, Ordering::Relaxed)
}

impl Statement {
    /// Builds the backend statement for a Parse body whose name field is `client_name` and whose
    /// remainder (query, parameter types) is `rest`.
    pub fn from_parse(rest: &[u8]) -> Statement {
        let digest = Sha256::digest(rest);
        let mut name = String::with_capacity(BACKEND_PREFIX.len() + 32);
        name.push_str(BACKEND_PREFIX);
        for b in &digest[..16] {
            name.push(char::from(HEX[usize::from(b >> 4)]));
            name.push(char::from(HEX[usize::from(b & 15)]));
        }
        let mut parse = BytesMut::with_capacity(6 + name.len() + rest.len());
        parse.put_u8(b'P');
        put_len(&mut parse, 4 + name.len() + 1 + rest.len());
        parse.put_slice(name.as_bytes());
        parse.put_u8(0);
        parse.put_slice(rest);
        Statement {
            backend_name: name.into_boxed_str(),
            parse: parse.freeze(),
            change: None,
            parsed_at: stamp(),
        }
    }

    /// The statement, noting the settings change running it makes.
    pub fn with_change(self, change: Option<Arc<SettingsChange>>) -> Statement {
        Statement { change, ..self }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_len(out: &mut BytesMut, len: usize) {
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// How many clients of a tenant hold each backend statement, so that copies no client holds any
/// more are closed on the connections that have them (see [`BackendStatements::unheld`]).
#[derive(Debug, Default)]
pub struct StatementHolders {
    counts: std::sync::Mutex<HashMap<Box<str>, u32>>,
    /// Bumped whenever a count falls to zero: a connection that looked at an older value may
    /// have statements to close.
    released: AtomicU64,
}

impl StatementHolders {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u32>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self, name: &str) {
        *self.counts().entry(name.into()).or_default() += 1;
    }

    fn release(&self, name: &str) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                counts.remove(name);
                self.released.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Changes when a statement stops being held by anyone.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }
}

/// The statements a client has prepared, by the names it gave them, each counted as held in
/// the tenant's [`StatementHolders`] while the client has it.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<Statement>>,
    holders: Arc<StatementHolders>,
}

impl ClientStatements {
    /// No statements yet, counted in `holders`.
    pub fn held_in(holders: Arc<StatementHolders>) -> Self {
        ClientStatements {
            by_name: HashMap::new(),
            holders,
        }
    }

    /// Where this client's statements are counted.
    pub fn holders(&self) -> &Arc<StatementHolders> {
        &self.holders
    }

    /// The statement the client calls `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Records a statement under the client's name; false (and nothing recorded) when the client
    /// already has [`MAX_STATEMENTS_PER_CLIENT`].
    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) -> bool {
        if self.by_name.len() >= MAX_STATEMENTS_PER_CLIENT && !self.by_name.contains_key(name) {
            return false;
        }
        self.holders.hold(&stmt.backend_name);
        if let Some(old) = self.by_name.insert(name.into(), stmt) {
            self.holders.release(&old.backend_name);
        }
        true
    }

    /// Forgets a name; returns what it stood for.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let stmt = self.by_name.remove(name)?;
        self.holders.release(&stmt.backend_name);
        Some(stmt)
    }

    /// Forgets every name (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        for (_, stmt) in self.by_name.drain() {
            self.holders.release(&stmt.backend_name);
        }
    }

    /// True when the client has a statement by this name.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }
}

impl Drop for ClientStatements {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What one backend connection has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct BackendStatements {
    by_name: HashMap<Box<str>, Prepared>,
    /// The [`StatementHolders::generation`] at the last look for statements no one holds.
    swept: u64,
    clock: u64,
}

#[derive(Debug)]
struct Prepared {
    last_used: u64,
    prepared_at: u64,
}

impl BackendStatements {
    /// True when `stmt` is prepared here, no earlier than the client's Parse of it; marks it
    /// used. An older copy stays listed until [`BackendStatements::add`] replaces it.
    pub fn touch(&mut self, stmt: &Statement) -> bool {
        self.clock += 1;
        match self.by_name.get_mut(&*stmt.backend_name) {
            Some(p) if p.prepared_at >= stmt.parsed_at => {
                p.last_used = self.clock;
                true
            }
            _ => false,
        }
    }

    /// Records `name` as prepared now (in place of an older copy); returns the least recently
    /// used name to close first when that keeps the set within `capacity`.
    pub fn add(&mut self, name: &str, capacity: usize) -> Option<Box<str>> {
        self.clock += 1;
        let evicted = if self.by_name.len() >= capacity.max(1) && !self.by_name.contains_key(name) {
            let oldest = self
                .by_name
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(n, _)| n.clone());
            if let Some(n) = &oldest {
                self.by_name.remove(n);
            }
            oldest
        } else {
            None
        };
        let prepared = Prepared {
            last_used: self.clock,
            prepared_at: stamp(),
        };
        self.by_name.insert(name.into(), prepared);
        evicted
    }

    /// Forgets `name` (its Parse failed).
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// True when a statement may have stopped being held since the last [`Self::unheld`].
    #[inline]
    pub fn may_have_unheld(&self, holders: &StatementHolders) -> bool {
        self.swept != holders.generation()
    }

    /// Forgets and returns the statements no client of the tenant holds, to be closed.
    pub fn unheld(&mut self, holders: &StatementHolders) -> Vec<Box<str>> {
        self.swept = holders.generation();
        let counts = holders.counts();
        let gone: Vec<Box<str>> = self
            .by_name
            .keys()
            .filter(|name| !counts.contains_key(&***name))
            .cloned()
            .collect();
        drop(counts);
        for name in &gone {
            self.by_name.remove(name);
        }
        gone
    }

    /// Forgets everything (DISCARD ALL or DEALLOCATE ALL ran on the backend).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// Statements prepared here.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when nothing is prepared here.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Splits a NUL-terminated string off the front of `body`. The empty string (unnamed statements
/// and portals, most of the extended protocol's names) is told by its first byte, without a
/// search.
pub fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some((&0, rest)) = body.split_first() {
        return Some((&[], rest));
    }
    let end = memchr::memchr(0, body)?;
    Some((&body[..end], &body[end + 1..]))
}

/// Writes a Bind message like `body` (portal, statement, rest) but naming `statement`.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], statement: &str, rest: &[u8]) {
    out.put_u8(b'B');
    put_len(out, 4 + portal.len() + 1 + statement.len() + 1 + rest.len());
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(statement.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
}

/// Writes a Describe or Close (`tag`) of statement `name`.
pub fn write_statement_target(out: &mut BytesMut, tag: u8, name: &str) {
    out.put_u8(tag);
    put_len(out, 4 + 1 + name.len() + 1);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_statement_is_unheld_once_its_last_client_lets_go() {
        let holders = Arc::new(StatementHolders::default());
        let stmt = Arc::new(Statement::from_parse(b"SELECT 1\0\0\0"));
        let mut a = ClientStatements::held_in(holders.clone());
        let mut b = ClientStatements::held_in(holders.clone());
        assert!(a.insert(b"s1", stmt.clone()));
        assert!(b.insert(b"other_name", stmt.clone()));
        let mut conn = BackendStatements::default();
        assert_eq!(conn.add(&stmt.backend_name, 10), None);
        // Nothing released yet: nothing to look at.
        assert!(!conn.may_have_unheld(&holders));
        a.remove(b"s1");
        assert!(!conn.may_have_unheld(&holders), "b still holds it");
        assert!(conn.unheld(&holders).is_empty());
        drop(b);
        assert!(conn.may_have_unheld(&holders));
        assert_eq!(conn.unheld(&holders), vec![stmt.backend_name.clone()]);
        assert!(conn.is_empty());
        assert!(!conn.may_have_unheld(&holders));
    }

    #[test]
    fn cstr_splits_empty_named_and_unterminated_strings() {
        assert_eq!(cstr(b"\0rest"), Some((&b""[..], &b"rest"[..])));
        assert_eq!(cstr(b"S_1\0\0x"), Some((&b"S_1"[..], &b"\0x"[..])));
        assert_eq!(cstr(b"\0"), Some((&b""[..], &b""[..])));
        assert_eq!(cstr(b"no end"), None);
        assert_eq!(cstr(b""), None);
    }

    #[test]
    fn same_text_same_backend_name_and_types_matter() {
        let a = Statement::from_parse(b"select $1\0\0\x01\0\0\0\x17");
        let b = Statement::from_parse(b"select $1\0\0\x01\0\0\0\x17");
        let c = Statement::from_parse(b"select $1\0\0\x01\0\0\0\x19");
        assert_eq!(a.backend_name, b.backend_name);
        assert_ne!(a.backend_name, c.backend_name);
        assert!(a.backend_name.starts_with(BACKEND_PREFIX));
        // The Parse message is well formed: tag, length, name, rest.
        let len = u32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize;
        assert_eq!(len + 1, a.parse.len());
        let (name, rest) = cstr(&a.parse[5..]).expect("name");
        assert_eq!(name, a.backend_name.as_bytes());
        assert_eq!(rest, b"select $1\0\0\x01\0\0\0\x17");
    }

    /// Statements of distinct texts, parsed in the order given.
    fn parsed(texts: &[&str]) -> Vec<Statement> {
        texts
            .iter()
            .map(|t| Statement::from_parse(format!("{t}\0\0\0").as_bytes()))
            .collect()
    }

    #[test]
    fn backend_set_evicts_least_recently_used() {
        let [a, b, c] = <[Statement; 3]>::try_from(parsed(&["a", "b", "c"])).expect("three");
        let mut s = BackendStatements::default();
        assert_eq!(s.add(&a.backend_name, 2), None);
        assert_eq!(s.add(&b.backend_name, 2), None);
        assert!(s.touch(&a));
        assert_eq!(s.add(&c.backend_name, 2), Some(b.backend_name.clone()));
        assert!(s.touch(&a) && s.touch(&c) && !s.touch(&b));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_copy_older_than_the_clients_parse_does_not_serve_it_until_replaced() {
        let mut s = BackendStatements::default();
        let [old] = <[Statement; 1]>::try_from(parsed(&["select * from t"])).expect("one");
        s.add(&old.backend_name, 2);
        assert!(s.touch(&old), "prepared after the Parse it serves");
        // Another client prepares the same text later: the copy predates its Parse.
        let [new] = <[Statement; 1]>::try_from(parsed(&["select * from t"])).expect("one");
        assert_eq!(new.backend_name, old.backend_name);
        assert!(!s.touch(&new));
        // Replaced in place, without evicting anything, it serves both.
        s.add(&new.backend_name, 1);
        assert!(s.touch(&new) && s.touch(&old));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn client_statements_are_bounded() {
        let mut c = ClientStatements::default();
        let stmt = Arc::new(Statement::from_parse(b"select 1\0\0\0"));
        for i in 0..MAX_STATEMENTS_PER_CLIENT {
            assert!(c.insert(format!("s{i}").as_bytes(), stmt.clone()));
        }
        assert!(!c.insert(b"one more", stmt.clone()));
        assert!(c.insert(b"s1", stmt), "replacing an existing name is fine");
    }

    #[test]
    fn rewritten_bind_and_describe_are_well_formed() {
        let mut out = BytesMut::new();
        write_bind(&mut out, b"", "pgtenant_x", b"\0\0\0\0\0\0");
        assert_eq!(&out[..], b"B\0\0\0\x16\0pgtenant_x\0\0\0\0\0\0\0");
        out.clear();
        write_statement_target(&mut out, b'D', "n");
        assert_eq!(&out[..], b"D\0\0\0\x07Sn\0");
    }
}
