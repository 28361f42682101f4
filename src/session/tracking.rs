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
use std::sync::Arc;

use bytes::Bytes;

use super::params::push_set;

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
    /// Several statements; see [`statements`] for each.
    Multi,
}

/// The settings change a prepared statement makes each time it runs: noted at Parse, queued
/// only when a portal of the statement is executed (a statement prepared and never run
/// changes nothing).
#[derive(Debug)]
pub struct SettingsChange {
    /// Set, Reset, ResetAll, DiscardAll, or Deallocate (of the client's statement names).
    pub class: Classified,
    /// The statement's text, replayed for a Set.
    pub text: Bytes,
}

impl SettingsChange {
    /// The change running `sql` (classified as `class`) makes, if any.
    pub fn of(class: &Classified, sql: &[u8]) -> Option<Arc<SettingsChange>> {
        matches!(
            class,
            Classified::Set { .. }
                | Classified::Reset { .. }
                | Classified::ResetAll
                | Classified::DiscardAll
                | Classified::Deallocate(_)
        )
        .then(|| {
            Arc::new(SettingsChange {
                class: class.clone(),
                text: Bytes::copy_from_slice(sql),
            })
        })
    }
}

/// Classifies the SQL of a Query or Parse message as a whole: its one statement, or `Multi`
/// for several (see [`statements`]). Runs on every query, so the common case costs one pass over
/// the text (sixteen bytes at a time) and a look at the first word.
pub fn classify(sql: &[u8]) -> Classified {
    let trimmed = sql.trim_ascii_end();
    let trimmed = trimmed.strip_suffix(b";").unwrap_or(trimmed);
    let stmt = skip_space_and_comments(trimmed);
    let marks = Marks::scan(trimmed, trimmed.len() - stmt.len());
    if marks.call
        && let Some(what) = pins_in_calls(trimmed)
    {
        return Classified::Pins(what);
    }
    if marks.multi {
        let mut all = split_statements(trimmed);
        return match (all.next(), all.next()) {
            (Some(one), None) => classify_one(one, || into_temp(one)),
            (None, _) => Classified::Plain,
            (Some(_), Some(_)) => Classified::Multi,
        };
    }
    classify_one(stmt, || marks.into_temp)
}

/// What one pass over a query's text finds, for the checks that need more than its first words.
#[derive(Debug, Default, PartialEq)]
struct Marks {
    /// A `(`: maybe a function call.
    call: bool,
    /// A `;`: maybe several statements.
    multi: bool,
    /// The words `INTO TEMP...` at or after the statement's first word.
    into_temp: bool,
}

impl Marks {
    /// Scans `sql` sixteen bytes at a time, straight from the text; a last partial block is the
    /// text's final sixteen bytes (a padded copy only for texts shorter than a block).
    /// `INTO TEMP` counts only from `stmt_start` on, as the statement's own words.
    fn scan(sql: &[u8], stmt_start: usize) -> Marks {
        let (blocks, tail) = sql.as_chunks::<16>();
        let (mut calls, mut semicolons, mut into_temp) = (0, 0, false);
        for (k, block) in blocks.iter().enumerate() {
            let [c, s, i] = block_masks(block);
            calls |= c;
            semicolons |= s;
            into_temp = into_temp || (i != 0 && into_temp_in(sql, k * 16, i, stmt_start));
        }
        if !tail.is_empty() {
            // Bytes seen in the last whole block are seen again: the same answers, in place.
            let (block, base) = match sql.last_chunk::<16>() {
                Some(last) => (*last, sql.len() - 16),
                None => {
                    let mut padded = [0u8; 16];
                    padded[..tail.len()].copy_from_slice(tail);
                    (padded, 0)
                }
            };
            let [c, s, i] = block_masks(&block);
            calls |= c;
            semicolons |= s;
            into_temp = into_temp || (i != 0 && into_temp_in(sql, base, i, stmt_start));
        }
        Marks {
            call: calls != 0,
            multi: semicolons != 0,
            into_temp,
        }
    }
}

/// Whether `INTO TEMP` starts at one of the `i` positions (bit j: `base + j`) at or after
/// `stmt_start`.
#[inline(always)]
fn into_temp_in(sql: &[u8], base: usize, mut i_bits: u32, stmt_start: usize) -> bool {
    while i_bits != 0 {
        let at = base + i_bits.trailing_zeros() as usize;
        i_bits &= i_bits - 1;
        if at >= stmt_start && into_temp_at(sql, at) {
            return true;
        }
    }
    false
}

/// Bit j of each mask: byte j of the block is `(`, `;`, or `i`/`I` (zero padding is none).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_masks(block: &[u8; 16]) -> [u32; 3] {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 CPU (the intrinsics are unsafe only for their
    // target feature); the load reads 16 bytes, unaligned, from a 16-byte array.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        let lower = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
        let equal =
            |v, byte: u8| _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8))) as u32;
        [equal(bytes, b'('), equal(bytes, b';'), equal(lower, b'i')]
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn block_masks(block: &[u8; 16]) -> [u32; 3] {
    block_masks_bytewise(block)
}

/// [`block_masks`] a byte at a time: the other architectures' version and the SSE2 one's
/// reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn block_masks_bytewise(block: &[u8; 16]) -> [u32; 3] {
    let mut masks = [0u32; 3];
    for (j, &b) in block.iter().enumerate() {
        masks[0] |= u32::from(b == b'(') << j;
        masks[1] |= u32::from(b == b';') << j;
        masks[2] |= u32::from(b | 0x20 == b'i') << j;
    }
    masks
}

/// Session-level advisory locks and `set_config`, which only appear as function calls; found
/// where their names end ('y' of advisory, 'g' of set_config).
fn pins_in_calls(sql: &[u8]) -> Option<&'static str> {
    let lower = memchr::memchr2_iter(b'y', b'g', sql);
    let upper = memchr::memchr2_iter(b'Y', b'G', sql);
    for i in lower.chain(upper) {
        let (head, tail) = sql.split_at(i + 1);
        match sql[i] | 0x20 {
            // pg_[try_]advisory_lock*, pg_advisory_unlock*; the _xact_ ones end with the
            // transaction and are harmless.
            b'y' if ends_with_ci(head, b"advisory")
                && (starts_with_ci(tail, b"_lock") || starts_with_ci(tail, b"_unlock")) =>
            {
                return Some("a session-level advisory lock");
            }
            b'g' if ends_with_ci(head, b"set_config") => return Some("set_config()"),
            _ => {}
        }
    }
    None
}

/// `SELECT ... INTO TEMP[ORARY]` in one statement of several (a single one has its scan).
fn into_temp(stmt: &[u8]) -> bool {
    Marks::scan(stmt, 0).into_temp
}

/// Whether the word "into", followed by a word starting with "temp", starts at `i`. The byte
/// before a statement's first word is never a word byte, so a whole query's text gives the same
/// answer as the statement's own.
fn into_temp_at(sql: &[u8], i: usize) -> bool {
    let word_start = i == 0 || !is_word_byte(sql[i - 1]);
    let rest = &sql[i..];
    word_start
        && starts_with_ci(rest, b"into")
        && rest.get(4).is_some_and(|b| b.is_ascii_whitespace())
        && starts_with_ci(rest[4..].trim_ascii_start(), b"temp")
}

fn ends_with_ci(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Each statement of a (possibly multi-statement) query with its classification.
pub fn statements(sql: &[u8]) -> impl Iterator<Item = (Classified, &[u8])> {
    split_statements(sql).map(|s| (classify_one(s, || into_temp(s)), s))
}

/// Splits on `;` (quotes ignored: a false split only errs towards pinning) and drops empties.
fn split_statements(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
    sql.split(|&b| b == b';')
        .map(skip_space_and_comments)
        .filter(|s| !s.is_empty())
}

// Called for every keyword comparison of every statement: a call per comparison showed up
// in callgrind whenever the compiler chose not to inline it. `keyword` is lower-case letters
// only, so setting each byte's 0x20 bit is the whole case fold: it makes an upper-case letter
// lower case and no other byte into a letter.
#[inline(always)]
fn is(word: &[u8], keyword: &[u8]) -> bool {
    debug_assert!(keyword.iter().all(u8::is_ascii_lowercase));
    word.len() == keyword.len() && word.iter().zip(keyword).all(|(&w, &k)| w | 0x20 == k)
}

fn lower(word: &[u8]) -> String {
    String::from_utf8_lossy(word).to_ascii_lowercase()
}

/// One statement, starting at its first word; `into_temp` is asked only of SELECT and WITH.
fn classify_one(stmt: &[u8], into_temp: impl FnOnce() -> bool) -> Classified {
    let mut words = Words(stmt);
    let Some(first) = words.next_keyword() else {
        return Classified::Plain;
    };
    if is(first, b"select") || is(first, b"with") {
        return if into_temp() {
            Classified::Pins("a temporary table")
        } else {
            Classified::Plain
        };
    }
    // Most statements start with none of the keywords below; word length rules out most.
    let candidates: &[&[u8]] = match first.len() {
        3 => &[b"set"],
        4 => &[b"load"],
        5 => &[b"reset"],
        6 => &[b"listen", b"create"],
        7 => &[b"discard", b"prepare", b"declare"],
        10 => &[b"deallocate"],
        _ => &[],
    };
    if !candidates.iter().any(|k| is(first, k)) {
        return Classified::Plain;
    }
    let second = words.next_keyword();
    if is(first, b"set") {
        let Some(second) = second else {
            return Classified::Plain;
        };
        return match second.to_ascii_lowercase().as_slice() {
            b"local" | b"transaction" | b"constraints" => Classified::Plain,
            b"role" => Classified::Pins("SET ROLE"),
            b"time" => Classified::Set {
                name: "timezone".into(),
            },
            b"session" => match words
                .next_keyword()
                .map(<[u8]>::to_ascii_lowercase)
                .as_deref()
            {
                Some(b"authorization") => Classified::Pins("SET SESSION AUTHORIZATION"),
                Some(b"characteristics") => Classified::Pins("SET SESSION CHARACTERISTICS"),
                Some(b"role") => Classified::Pins("SET ROLE"),
                Some(b"time") => Classified::Set {
                    name: "timezone".into(),
                },
                Some(name) => Classified::Set { name: lower(name) },
                None => Classified::Plain,
            },
            name => Classified::Set { name: lower(name) },
        };
    }
    if is(first, b"reset") {
        return match second {
            Some(w) if is(w, b"all") => Classified::ResetAll,
            Some(w) if is(w, b"role") || is(w, b"session") => Classified::Pins("RESET ROLE"),
            Some(w) if is(w, b"time") => Classified::Reset {
                name: "timezone".into(),
            },
            Some(w) => Classified::Reset { name: lower(w) },
            None => Classified::Plain,
        };
    }
    if is(first, b"deallocate") {
        let mut words = Words(stmt);
        words.next_keyword();
        let mut name = words.next_name();
        if name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case("prepare"))
        {
            name = words.next_name();
        }
        return match name {
            Some(n) if n.eq_ignore_ascii_case("all") => Classified::Deallocate(None),
            Some(n) => Classified::Deallocate(Some(n)),
            None => Classified::Plain,
        };
    }
    if is(first, b"discard") {
        return match second {
            Some(w) if is(w, b"all") => Classified::DiscardAll,
            _ => Classified::Plain,
        };
    }
    if is(first, b"listen") {
        return Classified::Pins("LISTEN");
    }
    if is(first, b"prepare") {
        return Classified::Pins("SQL-level PREPARE");
    }
    if is(first, b"load") {
        return Classified::Pins("LOAD");
    }
    if is(first, b"declare") {
        let mut rest = Words(stmt);
        let mut prev_with = false;
        while let Some(w) = rest.next_any() {
            if prev_with && is(w, b"hold") {
                return Classified::Pins("a WITH HOLD cursor");
            }
            prev_with = is(w, b"with");
        }
        return Classified::Plain;
    }
    if is(first, b"create") {
        let temp = |w: Option<&[u8]>| w.is_some_and(|w| is(w, b"temp") || is(w, b"temporary"));
        if temp(second)
            || (second.is_some_and(|w| is(w, b"local") || is(w, b"global"))
                && temp(words.next_keyword()))
        {
            return Classified::Pins("a temporary table");
        }
        return Classified::Plain;
    }
    Classified::Plain
}

/// Words of a statement: identifier characters, skipping space and comments before each.
struct Words<'a>(&'a [u8]);

impl<'a> Words<'a> {
    /// The next unquoted word at the current position, or none if something else comes first.
    fn next_keyword(&mut self) -> Option<&'a [u8]> {
        let s = skip_space_and_comments(self.0);
        let end = s.iter().position(|&b| !is_word_byte(b)).unwrap_or(s.len());
        self.0 = &s[end..];
        (end > 0).then_some(&s[..end])
    }

    /// The next word anywhere in the text (anything else is skipped).
    fn next_any(&mut self) -> Option<&'a [u8]> {
        let start = self.0.iter().position(|&b| is_word_byte(b))?;
        let s = &self.0[start..];
        let end = s.iter().position(|&b| !is_word_byte(b)).unwrap_or(s.len());
        self.0 = &s[end..];
        Some(&s[..end])
    }

    /// The next name, quoted ("S_1", kept as written) or not (kept as written too).
    fn next_name(&mut self) -> Option<String> {
        let s = skip_space_and_comments(self.0);
        if let Some(quoted) = s.strip_prefix(b"\"") {
            let end = quoted.iter().position(|&b| b == b'"')?;
            self.0 = &quoted[end + 1..];
            return Some(String::from_utf8_lossy(&quoted[..end]).into_owned());
        }
        let end = s.iter().position(|&b| !is_word_byte(b)).unwrap_or(s.len());
        self.0 = &s[end..];
        (end > 0).then(|| String::from_utf8_lossy(&s[..end]).into_owned())
    }
}

/// Bytes of an unquoted word: letters, digits, `_`, `.` and every non-ASCII byte.
const WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80;
        b += 1;
    }
    table
};

// A table look-up: the first word of every query is read a byte at a time, and the range
// checks cost about four times as much (callgrind).
#[inline(always)]
fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

fn skip_space_and_comments(mut s: &[u8]) -> &[u8] {
    // Most statements start with their first word.
    if s.first().is_some_and(|&b| is_word_byte(b)) {
        return s;
    }
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

/// The settings fingerprint of a connection known to carry no client's settings exactly (a
/// client's fingerprint is zero or odd).
pub const UNKNOWN_SETTINGS: u64 = 2;

/// The settings a client wants on every backend connection it uses, as SQL to replay, with a
/// fingerprint so a connection already carrying them is recognised by one comparison.
///
/// Startup parameters are kept apart from later changes: RESET and RESET ALL return a
/// setting to the client's startup value, as Postgres does, never to the backend
/// connection's own.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// (lower-cased name, statement) from the startup packet.
    startup: Vec<(String, String)>,
    /// (lower-cased name, statement) set since, in the order first set.
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
        s.startup = std::mem::take(&mut s.entries);
        s.refresh();
        s
    }

    /// Fingerprint of the current settings; zero for none.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.startup.is_empty() && self.entries.is_empty()
    }

    /// Records `SET name TO value`.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let mut sql = String::with_capacity(name.len() + value.len() + 12);
        push_set(&mut sql, name, value);
        self.put(name.to_ascii_lowercase(), sql);
    }

    /// Records a SET statement the client ran, verbatim.
    pub fn set_statement(&mut self, name: String, sql: &[u8]) {
        let text = String::from_utf8_lossy(sql.trim_ascii());
        let text = text.trim_end_matches(';').to_owned();
        self.put(name, text);
    }

    /// Returns one setting to its startup value (RESET name). True when that is a value the
    /// backend connection's own RESET did not give it.
    pub fn reset(&mut self, name: &str) -> bool {
        self.entries.retain(|(n, _)| n != name);
        self.refresh();
        self.startup.iter().any(|(n, _)| n == name)
    }

    /// Returns all settings to their startup values (RESET ALL, DISCARD ALL). True when the
    /// backend connection's own RESET ALL did not give it those.
    pub fn clear(&mut self) -> bool {
        self.entries.clear();
        self.refresh();
        !self.startup.is_empty()
    }

    fn put(&mut self, name: String, sql: String) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = sql,
            None => self.entries.push((name, sql)),
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        self.fingerprint = if self.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.startup.hash(&mut h);
            self.entries.hash(&mut h);
            h.finish() | 1
        };
    }

    /// One SQL string that makes a connection carry exactly these settings.
    pub fn apply_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for (_, stmt) in self.startup.iter().chain(&self.entries) {
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
    fn the_one_pass_scan_finds_marks_at_every_offset() {
        // Each mark on both sides of a sixteen-byte block boundary and in the padded last block.
        for pad in 0..20 {
            let spaces = " ".repeat(pad);
            let into = format!("SELECT 1{spaces} INTO TEMP t");
            assert_eq!(c(&into), Classified::Pins("a temporary table"), "{into}");
            let upper = format!("select{spaces} x iNtO\ttemporary t from y");
            assert_eq!(c(&upper), Classified::Pins("a temporary table"), "{upper}");
            let lock = format!("SELECT {spaces}pg_advisory_lock(1)");
            assert_eq!(
                c(&lock),
                Classified::Pins("a session-level advisory lock"),
                "{lock}"
            );
            let multi = format!("SELECT 1{spaces};SET a.b = 1");
            assert_eq!(c(&multi), Classified::Multi, "{multi}");
            let plain = format!("SELECT {spaces}point FROM into_temperature");
            assert_eq!(c(&plain), Classified::Plain, "{plain}");
            let sql = format!("/* (; into temp */{spaces}SELECT 1");
            let stmt_start = sql.find("SELECT").unwrap_or(0);
            let marks = Marks::scan(sql.as_bytes(), stmt_start);
            let expected = Marks {
                call: true,
                multi: true,
                into_temp: false,
            };
            assert_eq!(marks, expected, "{sql}");
        }
    }

    #[test]
    fn the_scan_matches_a_bytewise_reading_at_every_length_and_offset() {
        // Texts shorter than, equal to and longer than whole blocks, each mark at each offset
        // (the last partial block overlaps bytes already seen, which must keep their places).
        let reference = |sql: &[u8], stmt_start: usize| Marks {
            call: sql.contains(&b'('),
            multi: sql.contains(&b';'),
            into_temp: (stmt_start..sql.len()).any(|i| into_temp_at(sql, i)),
        };
        for len in 0..=50 {
            for mark in [&b"("[..], b";", b" into temp", b"INTO TEMP", b"i"] {
                for at in 0..=len {
                    let mut sql = vec![b'x'; len];
                    sql.splice(at..at, mark.iter().copied());
                    for stmt_start in [0, at, at + 1] {
                        let stmt_start = stmt_start.min(sql.len());
                        assert_eq!(
                            Marks::scan(&sql, stmt_start),
                            reference(&sql, stmt_start),
                            "{:?} from {stmt_start}",
                            String::from_utf8_lossy(&sql)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn block_masks_match_the_bytewise_reference() {
        // Every byte value at every position, over a background of each interesting byte.
        for background in [b' ', b'(', b';', b'i', b'I', 0x08, 0x49 | 0x80] {
            for value in 0..=255u8 {
                for at in 0..16 {
                    let mut block = [background; 16];
                    block[at] = value;
                    let (fast, bytewise) = (block_masks(&block), block_masks_bytewise(&block));
                    assert_eq!(fast, bytewise, "{block:?}");
                }
            }
        }
    }

    #[test]
    fn plain_statements_stay_plain() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "begin",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "SET LOCAL work_mem = '1MB'",
            "set transaction isolation level serializable",
            "SELECT pg_advisory_xact_lock(1)",
            "select pg_try_ADVISORY_xact_lock(1)",
            "SELECT 'advisory' AS word, temperature FROM t",
            "SELECT * FROM into_temp_t",
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
            "SELECT * INTO\n  TEMPORARY t FROM u",
            "SELECT pg_AdViSoRy_LoCk(1)",
            "select pg_advisory_unlock_all()",
            "SELECT SET_CONFIG('x', 'y', false)",
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
        assert_eq!(c("SELECT 1; SET search_path TO x"), Classified::Multi);
        let temp: Vec<_> = statements(b"SELECT 1; SELECT * INTO TEMP t FROM u").collect();
        assert_eq!(temp[1].0, Classified::Pins("a temporary table"));
        assert_eq!(c("INSERT INTO t VALUES (1); SELECT 1"), Classified::Multi);
        assert_eq!(c("SELECT 1;"), Classified::Plain);
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
        // RESET ALL returns to the startup values, not to nothing.
        assert!(a.clear(), "the backend's RESET ALL lost the startup value");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.apply_sql(), "RESET ALL;SET application_name TO E'x'");
        a.set_value("application_name", "y");
        assert!(a.reset("application_name"));
        assert_eq!(a.fingerprint(), b.fingerprint());
        a.set_value("TimeZone", "UTC");
        assert!(!a.reset("timezone"), "not a startup parameter");
        let mut none = Settings::from_startup(&[]);
        assert_eq!(none.fingerprint(), 0);
        assert!(!none.clear());
    }
}
