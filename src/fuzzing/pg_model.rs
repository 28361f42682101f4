//! A small stand-in for Postgres behind the transaction relay's fuzz targets. After a trust login
//! it keeps per connection what a Postgres backend keeps (named and unnamed statements, portals,
//! the transaction block, copy-in mode, skipping to the next Sync after an error) and answers a
//! fixed set of statement texts ([`TEXTS`], plus what the proxy sends itself) in the order and
//! with the SQLSTATEs Postgres 15 uses (`postgres.c`: `exec_parse_message`, `exec_bind_message`,
//! `SocketBackend`'s skip-till-Sync; `copyfromparse.c` for copy-in). It answers every message at
//! once, without waiting for a Flush or Sync, which a relay must cope with as well.
//!
//! Served straight and through the relay, the same client messages must get the same replies:
//! the relay renames, shares and replays statements and settings, but a client must not see it.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

/// The statement texts the fuzzed clients send.
pub const TEXTS: &[&str] = &[
    "select 1",
    "select 2, 3",
    "begin",
    "commit",
    "rollback",
    "select oops",
    "selec 1",
    "set work_mem = '8MB'",
    "reset all",
    "deallocate all",
    "deallocate s1",
    "deallocate s2",
    "discard all",
    "select 1; select 2",
    "insert into t values (1)",
    "copy t from stdin",
    "show work_mem",
];

/// What a statement text does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Returns one row of this many columns.
    Rows(usize),
    /// Names a column that does not exist: fails with 42703 when analysed (Parse) or run
    /// (Query).
    BadColumn,
    /// Fails when run with this SQLSTATE.
    Raise(&'static str),
    Begin,
    Commit,
    Rollback,
    /// Succeeds with this command tag.
    Utility(String),
    DeallocateAll,
    Deallocate(Vec<u8>),
    DiscardAll,
    CopyIn,
}

impl Kind {
    /// Runs in a failed transaction block.
    fn ends_transaction(&self) -> bool {
        matches!(self, Kind::Commit | Kind::Rollback)
    }
}

/// One statement text: a syntax error, or its statements.
fn analyse(text: &[u8]) -> Result<Vec<Kind>, ()> {
    let text = String::from_utf8_lossy(text).to_ascii_lowercase();
    // The proxy's own raising statements carry semicolons inside their body.
    if let Some(body) = text.strip_prefix("do $pgtenant$") {
        // The codes the proxy raises; RAISE without one is P0001.
        let code = ["0a000", "26000", "25p02"]
            .into_iter()
            .find(|code| body.contains(&format!("errcode = '{code}'")))
            .map_or("P0001", |code| match code {
                "0a000" => "0A000",
                "25p02" => "25P02",
                _ => "26000",
            });
        return Ok(vec![Kind::Raise(code)]);
    }
    let mut kinds = Vec::new();
    for stmt in text.split(';') {
        let stmt = stmt.trim();
        if stmt.is_empty() {
            continue;
        }
        let mut words = stmt.split_ascii_whitespace();
        let first = words.next().unwrap_or_default();
        let kind = match first {
            "select" if stmt == "select oops" => Kind::BadColumn,
            "select" => Kind::Rows(stmt.matches(',').count() + 1),
            "show" => Kind::Rows(1),
            "begin" | "start" => Kind::Begin,
            "commit" | "end" => Kind::Commit,
            "rollback" | "abort" => Kind::Rollback,
            "set" => Kind::Utility("SET".into()),
            "reset" => Kind::Utility("RESET".into()),
            "insert" => Kind::Utility("INSERT 0 1".into()),
            "discard" => Kind::DiscardAll,
            "copy" => Kind::CopyIn,
            "deallocate" => match words.next() {
                Some("all") => Kind::DeallocateAll,
                Some("prepare") => match words.next() {
                    Some("all") => Kind::DeallocateAll,
                    Some(name) => Kind::Deallocate(name.as_bytes().to_vec()),
                    None => return Err(()),
                },
                Some(name) => Kind::Deallocate(name.as_bytes().to_vec()),
                None => return Err(()),
            },
            _ => return Err(()),
        };
        kinds.push(kind);
    }
    Ok(kinds)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// No transaction block: each Query, or each batch up to a Sync, is its own transaction.
    None,
    Open,
    Failed,
}

#[derive(Debug, Clone)]
struct Portal {
    kind: Kind,
    done: bool,
}

/// Whether copy-in mode came from a simple Query (ends with ReadyForQuery) or an Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    Simple,
    Extended,
}

/// One backend connection's state.
#[derive(Debug)]
pub struct PgModel {
    statements: HashMap<Vec<u8>, Kind>,
    portals: HashMap<Vec<u8>, Portal>,
    block: Block,
    skipping: bool,
    copy: Option<Copy>,
    /// The connection ended (Terminate, or a FATAL error).
    pub closed: bool,
}

impl Default for PgModel {
    fn default() -> Self {
        PgModel {
            statements: HashMap::new(),
            portals: HashMap::new(),
            block: Block::None,
            skipping: false,
            copy: None,
            closed: false,
        }
    }
}

/// A NUL-terminated string at the front of `body`, and the rest.
fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

fn write(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

fn notice_or_error(out: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    write(out, tag, &body);
}

fn row_description(out: &mut BytesMut, columns: usize) {
    let mut body = (columns as u16).to_be_bytes().to_vec();
    for i in 0..columns {
        body.extend_from_slice(format!("c{i}\0").as_bytes());
        body.extend_from_slice(&0u32.to_be_bytes()); // table
        body.extend_from_slice(&0u16.to_be_bytes()); // column
        body.extend_from_slice(&23u32.to_be_bytes()); // int4
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    write(out, b'T', &body);
}

fn data_row(out: &mut BytesMut, columns: usize) {
    let mut body = (columns as u16).to_be_bytes().to_vec();
    for _ in 0..columns {
        body.extend_from_slice(&1u32.to_be_bytes());
        body.push(b'1');
    }
    write(out, b'D', &body);
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    write(out, b'C', &body);
}

impl PgModel {
    /// The login reply to a StartupMessage: trust, then ready.
    pub fn login(out: &mut BytesMut) {
        write(out, b'R', &0u32.to_be_bytes());
        write(out, b'S', b"server_version\x0015.0\x00");
        write(out, b'K', &[0, 0, 0, 42, 1, 2, 3, 4]);
        write(out, b'Z', b"I");
    }

    /// In copy-in mode: only copy messages (and Sync, Flush) are expected.
    pub fn in_copy(&self) -> bool {
        self.copy.is_some()
    }

    /// Inside a transaction block that failed: only its end is accepted.
    pub fn in_failed_block(&self) -> bool {
        self.block == Block::Failed
    }

    /// Handles one whole message (`tag`, then `body`), appending the replies to `out`.
    pub fn message(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) {
        if self.closed {
            return;
        }
        if let Some(copy) = self.copy {
            self.copy_message(copy, tag, out);
            return;
        }
        if !matches!(
            tag,
            b'Q' | b'P'
                | b'B'
                | b'E'
                | b'D'
                | b'C'
                | b'H'
                | b'S'
                | b'F'
                | b'd'
                | b'c'
                | b'f'
                | b'X'
        ) {
            notice_or_error(out, b'E', "FATAL", "08P01", "invalid frontend message type");
            self.closed = true;
            return;
        }
        // Everything up to the next Sync is skipped after an error, Terminate included.
        if tag == b'S' {
            self.skipping = false;
        }
        if self.skipping {
            return;
        }
        let extended = matches!(tag, b'P' | b'B' | b'E' | b'D' | b'C' | b'H');
        let result = match tag {
            b'Q' => {
                self.query(body, out);
                Ok(())
            }
            b'P' => self.parse(body, out),
            b'B' => self.bind(body, out),
            b'D' => self.describe(body, out),
            b'E' => self.execute(body, out),
            b'C' => self.close(body, out),
            b'S' => {
                self.end_implicit();
                self.ready(out);
                Ok(())
            }
            b'F' => {
                let code = if self.block == Block::Failed {
                    "25P02"
                } else {
                    "42883"
                };
                self.error(out, code);
                self.end_implicit();
                self.ready(out);
                Ok(())
            }
            b'X' => {
                self.closed = true;
                Ok(())
            }
            // Flush, and copy messages outside copy-in mode (ignored, as Postgres does).
            _ => Ok(()),
        };
        if let Err(code) = result {
            self.error(out, code);
            if extended {
                self.skipping = true;
            }
        }
    }

    fn copy_message(&mut self, copy: Copy, tag: u8, out: &mut BytesMut) {
        let failure = match tag {
            b'd' | b'S' | b'H' => return,
            b'c' => None,
            b'f' => Some("57014"),
            _ => Some("08P01"),
        };
        self.copy = None;
        match failure {
            None => command_complete(out, "COPY 0"),
            Some(code) => {
                self.error(out, code);
                if copy == Copy::Extended {
                    self.skipping = true;
                }
            }
        }
        if copy == Copy::Simple {
            self.end_implicit();
            self.ready(out);
        }
    }

    fn ready(&self, out: &mut BytesMut) {
        let status = match self.block {
            Block::None => b'I',
            Block::Open => b'T',
            Block::Failed => b'E',
        };
        write(out, b'Z', &[status]);
    }

    fn error(&mut self, out: &mut BytesMut, code: &str) {
        notice_or_error(out, b'E', "ERROR", code, "model error");
        if self.block == Block::Open {
            self.block = Block::Failed;
        }
    }

    /// The end of a transaction: its portals go.
    fn end_transaction(&mut self) {
        self.portals.clear();
    }

    /// The end of a Query or batch outside a transaction block ends its transaction.
    fn end_implicit(&mut self) {
        if self.block == Block::None {
            self.end_transaction();
        }
    }

    fn query(&mut self, body: &[u8], out: &mut BytesMut) {
        let text = body.strip_suffix(&[0]).unwrap_or(body);
        self.statements.remove(&b""[..]);
        self.portals.remove(&b""[..]);
        let kinds = match analyse(text) {
            Ok(kinds) => kinds,
            Err(()) => {
                self.error(out, "42601");
                self.end_implicit();
                self.ready(out);
                return;
            }
        };
        let multi = kinds.len() > 1;
        for kind in kinds {
            if self.block == Block::Failed && !kind.ends_transaction() {
                self.error(out, "25P02");
                break;
            }
            if kind == Kind::CopyIn && !multi {
                write(out, b'G', &[0, 0, 1, 0, 0]);
                self.copy = Some(Copy::Simple);
                return;
            }
            if let Kind::Rows(n) = kind {
                row_description(out, n);
            }
            if let Err(code) = self.run(&kind, multi, out) {
                self.error(out, code);
                break;
            }
        }
        self.end_implicit();
        self.ready(out);
    }

    /// Runs one statement (rows without their description).
    fn run(&mut self, kind: &Kind, multi: bool, out: &mut BytesMut) -> Result<(), &'static str> {
        match kind {
            Kind::Rows(n) => {
                data_row(out, *n);
                command_complete(out, "SELECT 1");
            }
            Kind::BadColumn => return Err("42703"),
            Kind::Raise(code) => return Err(code),
            Kind::Begin => {
                if self.block != Block::None {
                    notice_or_error(out, b'N', "WARNING", "25001", "already in a transaction");
                }
                self.block = Block::Open;
                command_complete(out, "BEGIN");
            }
            Kind::Commit | Kind::Rollback => {
                let tag = if *kind == Kind::Commit && self.block != Block::Failed {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                if self.block == Block::None {
                    notice_or_error(out, b'N', "WARNING", "25P01", "no transaction in progress");
                }
                self.block = Block::None;
                self.end_transaction();
                command_complete(out, tag);
            }
            Kind::Utility(tag) => command_complete(out, tag),
            Kind::DeallocateAll => {
                self.statements.retain(|name, _| name.is_empty());
                command_complete(out, "DEALLOCATE ALL");
            }
            Kind::Deallocate(name) => {
                if self.statements.remove(name).is_none() {
                    return Err("26000");
                }
                command_complete(out, "DEALLOCATE");
            }
            Kind::DiscardAll => {
                if self.block != Block::None || multi {
                    return Err("25001");
                }
                self.statements.clear();
                self.portals.clear();
                command_complete(out, "DISCARD ALL");
            }
            Kind::CopyIn => return Err("0A000"),
        }
        Ok(())
    }

    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), &'static str> {
        let (name, rest) = cstr(body).ok_or("08P01")?;
        let (text, _) = cstr(rest).ok_or("08P01")?;
        if name.is_empty() {
            self.statements.remove(name);
        }
        let kinds = analyse(text).map_err(|()| "42601")?;
        let kind = match &kinds[..] {
            [kind] => kind.clone(),
            [] => Kind::Utility("EMPTY".into()),
            _ => return Err("42601"),
        };
        if self.block == Block::Failed && !kind.ends_transaction() {
            return Err("25P02");
        }
        if kind == Kind::BadColumn {
            return Err("42703");
        }
        if !name.is_empty() && self.statements.contains_key(name) {
            return Err("42P05");
        }
        self.statements.insert(name.to_vec(), kind);
        write(out, b'1', &[]);
        Ok(())
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), &'static str> {
        let (portal, rest) = cstr(body).ok_or("08P01")?;
        let (name, rest) = cstr(rest).ok_or("08P01")?;
        let kind = self.statements.get(name).cloned().ok_or("26000")?;
        let count = |at: usize| -> Result<usize, &'static str> {
            let b = rest.get(at..at + 2).ok_or("08P01")?;
            Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let formats = count(0)?;
        let params = count(2 + 2 * formats)?;
        if params != 0 {
            return Err("08P01");
        }
        if self.block == Block::Failed && !kind.ends_transaction() {
            return Err("25P02");
        }
        if !portal.is_empty() && self.portals.contains_key(portal) {
            return Err("42P03");
        }
        self.portals
            .insert(portal.to_vec(), Portal { kind, done: false });
        write(out, b'2', &[]);
        Ok(())
    }

    fn describe(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), &'static str> {
        let (&what, rest) = body.split_first().ok_or("08P01")?;
        let (name, _) = cstr(rest).ok_or("08P01")?;
        let kind = match what {
            b'S' => self.statements.get(name).cloned().ok_or("26000")?,
            b'P' => self
                .portals
                .get(name)
                .map(|p| p.kind.clone())
                .ok_or("34000")?,
            _ => return Err("08P01"),
        };
        let columns = match kind {
            Kind::Rows(n) => Some(n),
            _ => None,
        };
        if self.block == Block::Failed && columns.is_some() {
            return Err("25P02");
        }
        if what == b'S' {
            write(out, b't', &[0, 0]);
        }
        match columns {
            Some(n) => row_description(out, n),
            None => write(out, b'n', &[]),
        }
        Ok(())
    }

    fn execute(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), &'static str> {
        let (name, _) = cstr(body).ok_or("08P01")?;
        let portal = self.portals.get_mut(name).ok_or("34000")?;
        let kind = portal.kind.clone();
        let done = std::mem::replace(&mut portal.done, true);
        if self.block == Block::Failed && !kind.ends_transaction() {
            return Err("25P02");
        }
        if done {
            return match kind {
                Kind::Rows(_) => {
                    command_complete(out, "SELECT 0");
                    Ok(())
                }
                _ => Err("55000"),
            };
        }
        if kind == Kind::CopyIn {
            write(out, b'G', &[0, 0, 1, 0, 0]);
            self.copy = Some(Copy::Extended);
            return Ok(());
        }
        self.run(&kind, false, out)
    }

    fn close(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), &'static str> {
        let (&what, rest) = body.split_first().ok_or("08P01")?;
        let (name, _) = cstr(rest).ok_or("08P01")?;
        match what {
            b'S' => {
                self.statements.remove(name);
            }
            b'P' => {
                self.portals.remove(name);
            }
            _ => return Err("08P01"),
        }
        write(out, b'3', &[]);
        Ok(())
    }
}

/// The first whole message of `bytes`: tag, body and what follows.
pub fn split_message(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..len.max(4))?;
    Some((tag, body, &rest[len.max(4)..]))
}
