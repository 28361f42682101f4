//! Session state in transaction mode. A client's settings (startup parameters, SET outside a
//! rolled-back transaction, reported ParameterStatus changes) follow it onto every backend
//! connection it gets; statements whose state cannot follow it (temporary tables, LISTEN, session
//! advisory locks, WITH HOLD cursors, SQL-level PREPARE, SET ROLE, ...) are recognised here so
//! the session can pin the client to its connection or refuse them.
//!
//! Recognition reads only the leading keywords of each statement and a few function names. What
//! it cannot read with certainty it reports as pinning: a client is never silently moved away
//! from state it made.

use std::hash::{Hash, Hasher};

use super::params::push_literal;

/// What a statement means for pooling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Nothing the pooler must act on.
    Plain,
    /// A session-level `SET name ...`; the text is replayed on other connections.
    Set {
        /// Lower-cased parameter name.
        name: String,
    },
    /// `RESET name`.
    Reset {
        /// Lower-cased parameter name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE [PREPARE] name`, or `ALL` when `None`.
    Deallocate(Option<String>),
    /// `DISCARD ALL`.
    DiscardAll,
    /// Creates state bound to the backend connection; the text says what.
    Pins(&'static str),
}

/// Classifies the SQL of a Query or Parse message as a whole: its one statement, or `Plain`
/// for several (see [`statements`]).
pub fn classify(sql: &[u8]) -> Classified {
    if let Some(what) = pins_anywhere(sql) {
        return Classified::Pins(what);
    }
    let mut all = split_statements(sql);
    match (all.next(), all.next()) {
        (Some(one), None) => classify_one(one),
        _ => Classified::Plain,
    }
}

/// Function calls and clauses that make backend-bound state wherever they appear.
pub fn pins_anywhere(sql: &[u8]) -> Option<&'static str> {
    if contains_ci(sql, b"advisory_lock") || contains_ci(sql, b"advisory_unlock") {
        return Some("a session-level advisory lock");
    }
    if contains_ci(sql, b"set_config") {
        return Some("set_config()");
    }
    if contains_ci(sql, b"into temp") {
        return Some("a temporary table");
    }
    None
}

/// Each statement of a (possibly multi-statement) query with its classification.
pub fn statements(sql: &[u8]) -> impl Iterator<Item = (Classified, &[u8])> {
    split_statements(sql).map(|s| (classify_one(s), s))
}

/// Splits on `;` (quotes ignored: a false split only errs towards pinning) and drops empties.
fn split_statements(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
    sql.split(|&b| b == b';')
        .map(skip_space_and_comments)
        .filter(|s| !s.is_empty())
}

fn classify_one(stmt: &[u8]) -> Classified {
    let mut words = Words(stmt);
    let Some(first) = words.next() else {
        return Classified::Plain;
    };
    match first.as_str() {
        "set" => match words.next().as_deref() {
            Some("local" | "transaction" | "constraints") | None => Classified::Plain,
            Some("role") => Classified::Pins("SET ROLE"),
            Some("session") => match words.next().as_deref() {
                Some("authorization") => Classified::Pins("SET SESSION AUTHORIZATION"),
                Some("characteristics") => Classified::Pins("SET SESSION CHARACTERISTICS"),
                Some("role") => Classified::Pins("SET ROLE"),
                Some("time") => Classified::Set {
                    name: "timezone".into(),
                },
                Some(name) => Classified::Set { name: name.into() },
                None => Classified::Plain,
            },
            Some("time") => Classified::Set {
                name: "timezone".into(),
            },
            Some(name) => Classified::Set { name: name.into() },
        },
        "reset" => match words.next().as_deref() {
            Some("all") => Classified::ResetAll,
            Some("role" | "session") => Classified::Pins("RESET ROLE"),
            Some(name) => Classified::Reset { name: name.into() },
            None => Classified::Plain,
        },
        "deallocate" => {
            let mut name = words.next_raw();
            if name.as_deref().map(str::to_ascii_lowercase).as_deref() == Some("prepare") {
                name = words.next_raw();
            }
            match name {
                Some(n) if n.eq_ignore_ascii_case("all") => Classified::Deallocate(None),
                Some(n) => Classified::Deallocate(Some(n)),
                None => Classified::Plain,
            }
        }
        "discard" => match words.next().as_deref() {
            Some("all") => Classified::DiscardAll,
            Some("temp" | "temporary") => Classified::Plain,
            _ => Classified::Plain,
        },
        "listen" => Classified::Pins("LISTEN"),
        "prepare" => Classified::Pins("SQL-level PREPARE"),
        "load" => Classified::Pins("LOAD"),
        "declare" if contains_ci(stmt, b"with hold") => Classified::Pins("a WITH HOLD cursor"),
        "create" => match words.next().as_deref() {
            Some("temp" | "temporary") => Classified::Pins("a temporary table"),
            Some("local" | "global") => match words.next().as_deref() {
                Some("temp" | "temporary") => Classified::Pins("a temporary table"),
                _ => Classified::Plain,
            },
            _ => Classified::Plain,
        },
        _ => Classified::Plain,
    }
}

/// Lower-cased words (identifier characters) from the start of a statement.
struct Words<'a>(&'a [u8]);

impl Words<'_> {
    fn next_raw(&mut self) -> Option<String> {
        let s = skip_space_and_comments(self.0);
        let quoted = s.first() == Some(&b'"');
        let body = if quoted { &s[1..] } else { s };
        let end = body
            .iter()
            .position(|&b| {
                if quoted {
                    b == b'"'
                } else {
                    !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b >= 0x80)
                }
            })
            .unwrap_or(body.len());
        if end == 0 {
            return None;
        }
        self.0 = &body[(end + usize::from(quoted)).min(body.len())..];
        Some(String::from_utf8_lossy(&body[..end]).into_owned())
    }
}

impl Iterator for Words<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.next_raw().map(|w| w.to_ascii_lowercase())
    }
}

fn skip_space_and_comments(mut s: &[u8]) -> &[u8] {
    loop {
        let trimmed = s.trim_ascii_start();
        if let Some(rest) = trimmed.strip_prefix(b"--") {
            s = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(&[][..], |i| &rest[i + 1..]);
        } else if let Some(rest) = trimmed.strip_prefix(b"/*") {
            s = rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(&[][..], |i| &rest[i + 2..]);
        } else {
            return trimmed;
        }
    }
}

/// ASCII case-insensitive substring test; `needle` is lower case.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| {
        hay[i].to_ascii_lowercase() == first
            && hay[i + 1..i + needle.len()]
                .iter()
                .zip(rest)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

/// The settings a client wants on every backend connection it uses, as SQL to replay, with a
/// fingerprint so a connection already carrying them is recognised by one comparison.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// (lower-cased name, statement) in the order first set.
    entries: Vec<(String, String)>,
    fingerprint: u64,
}

impl Settings {
    /// Settings from startup parameters (already validated names).
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut s = Settings::default();
        for (name, value) in params {
            s.set_value(name, value);
        }
        s
    }

    /// Fingerprint of the current settings; zero for none.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `SET name TO value`.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let mut sql = String::with_capacity(name.len() + value.len() + 12);
        sql.push_str("SET ");
        sql.push_str(name);
        sql.push_str(" TO ");
        push_literal(&mut sql, value);
        self.put(name.to_ascii_lowercase(), sql);
    }

    /// Records a SET statement the client ran, verbatim.
    pub fn set_statement(&mut self, name: String, sql: &[u8]) {
        let text = String::from_utf8_lossy(sql.trim_ascii());
        let text = text.trim_end_matches(';').to_owned();
        self.put(name, text);
    }

    /// Forgets one setting (RESET name).
    pub fn reset(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
        self.refresh();
    }

    /// Forgets all settings (RESET ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.refresh();
    }

    fn put(&mut self, name: String, sql: String) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = sql,
            None => self.entries.push((name, sql)),
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        self.fingerprint = if self.entries.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.entries.hash(&mut h);
            h.finish() | 1
        };
    }

    /// One SQL string that makes a connection carry exactly these settings.
    pub fn apply_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for (_, stmt) in &self.entries {
            sql.push(';');
            sql.push_str(stmt);
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Classified {
        classify(sql.as_bytes())
    }

    #[test]
    fn plain_statements_stay_plain() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "begin",
            "INSERT INTO t VALUES (1); SELECT 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "SET LOCAL work_mem = '1MB'",
            "set transaction isolation level serializable",
            "SELECT pg_advisory_xact_lock(1)",
            "discard temp",
            "declare c cursor for select 1",
            "CREATE TABLE t (a int)",
            "",
        ] {
            assert_eq!(c(sql), Classified::Plain, "{sql}");
        }
    }

    #[test]
    fn settings_are_recognised() {
        assert_eq!(
            c("  SET search_path TO app, public;"),
            Classified::Set {
                name: "search_path".into()
            }
        );
        assert_eq!(
            c("/* hi */ set SESSION statement_timeout = 5"),
            Classified::Set {
                name: "statement_timeout".into()
            }
        );
        assert_eq!(
            c("SET TIME ZONE 'UTC'"),
            Classified::Set {
                name: "timezone".into()
            }
        );
        assert_eq!(
            c("reset Work_Mem"),
            Classified::Reset {
                name: "work_mem".into()
            }
        );
        assert_eq!(c("RESET ALL"), Classified::ResetAll);
        assert_eq!(c("discard all"), Classified::DiscardAll);
        assert_eq!(
            c("DEALLOCATE PREPARE \"S_1\""),
            Classified::Deallocate(Some("S_1".into()))
        );
        assert_eq!(c("deallocate all"), Classified::Deallocate(None));
    }

    #[test]
    fn state_that_cannot_follow_pins() {
        for sql in [
            "CREATE TEMP TABLE x (a int)",
            "create local temporary table x (a int)",
            "select * into temp t from u",
            "LISTEN chan",
            "SELECT pg_advisory_lock(42)",
            "select pg_try_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "SET ROLE other",
            "SET SESSION AUTHORIZATION other",
            "select set_config('search_path', 'x', false)",
        ] {
            assert!(matches!(c(sql), Classified::Pins(_)), "{sql}");
        }
    }

    #[test]
    fn multi_statement_queries_are_read_statement_by_statement() {
        let sql = b"SET search_path TO a; SELECT 1; LISTEN x;";
        let all: Vec<_> = statements(sql).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            (
                Classified::Set {
                    name: "search_path".into()
                },
                &b"SET search_path TO a"[..]
            )
        );
        assert_eq!(all[1].0, Classified::Plain);
        assert_eq!(all[2].0, Classified::Pins("LISTEN"));
        assert_eq!(c("SELECT 1; SET search_path TO x"), Classified::Plain);
    }

    #[test]
    fn settings_fingerprint_tracks_content() {
        let mut a = Settings::from_startup(&[("application_name".into(), "x".into())]);
        let b = Settings::from_startup(&[("application_name".into(), "x".into())]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), 0);
        a.set_statement("search_path".into(), b"SET search_path TO app;");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.apply_sql(),
            "RESET ALL;SET application_name TO E'x';SET search_path TO app"
        );
        a.clear();
        assert_eq!(a.fingerprint(), 0);
    }
}
