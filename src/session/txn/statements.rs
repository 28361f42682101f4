//! Client messages that name statements or change session state: Parse, Bind, Describe,
//! Close, Execute of a portal that changes settings, and simple Queries, each mapped to the
//! backend's names and tracked.

use super::*;

impl TxnSession<'_> {
    pub(super) fn parse(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let body = &msg[5..];
        let Some((name, rest)) = prepared::cstr(body) else {
            return Err(malformed("Parse"));
        };
        let Some((sql, _)) = prepared::cstr(rest) else {
            return Err(malformed("Parse"));
        };
        if self.backend.is_none() {
            return Ok(Step::NeedBackend);
        }
        let class = self.classify_parse(sql);
        // DEALLOCATE of a statement the client has: the backend knows it by another name.
        let stand_in;
        let (msg, rest) = match &class {
            Classified::Deallocate(Some(_)) if self.pinned.is_none() => {
                stand_in = self.deallocate_stand_in(name, rest, sql.len());
                (&stand_in[..], &stand_in[5 + name.len() + 1..])
            }
            _ => (msg, rest),
        };
        let change = match class {
            Classified::Plain => None,
            // Postgres refuses several statements in one Parse.
            Classified::Multi => None,
            _ if self.pinned.is_some() => None,
            _ => SettingsChange::of(&class, sql),
        };
        if change.is_none() && class != Classified::Multi && self.watch_statement(sql, class, true)
        {
            return Ok(Step::Done);
        }
        if name.is_empty() {
            let before = std::mem::replace(&mut self.unnamed_change, change);
            self.unnamed_in_batch = true;
            self.sout.put_slice(msg);
            self.expect_reply(Reply::Parse);
            if self.expect.len() > 1 && (before.is_some() || self.unnamed_change.is_some()) {
                self.expect.push_back(Expect::UnnamedChange(before));
            }
            self.set_unnamed_owner();
            return Ok(Step::Done);
        }
        if self.statements.contains(name) {
            self.parse_duplicate(name, rest);
            return Ok(Step::Done);
        }
        let stmt = Arc::new(Statement::from_parse(rest).with_change(change));
        if !self.statements.insert(name, stmt.clone()) {
            self.refuse(ClientError::too_many_statements(MAX_STATEMENTS_PER_CLIENT));
            return Ok(Step::Done);
        }
        // Prepared again even where the connection has it: its copy may predate a schema
        // change this client's Parse comes after (see `prepared`).
        self.prepare_on_backend(&stmt, Owner::Client, Some(name.into()));
        Ok(Step::Done)
    }

    /// A Parse of a name the client already has fails, but Postgres checks the text first (its
    /// syntax, a failed transaction, the objects it names) and reports what it finds before
    /// the duplicate. The backend makes the same checks in the same order when the text is
    /// parsed twice under the scratch name: the first Parse fails as Postgres would, or the
    /// second fails with 42P05 (see [`Owner::DuplicateCheck`]). The scratch statement may be
    /// left behind; every use of the scratch name closes it first.
    pub(super) fn parse_duplicate(&mut self, name: &[u8], rest: &[u8]) {
        self.close_probe();
        for owner in [Owner::Proxy, Owner::DuplicateCheck] {
            write_probe_parse(&mut self.sout, rest);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Parse,
                owner,
                parse: None,
            });
        }
        let err = ClientError::duplicate_statement(&String::from_utf8_lossy(name));
        self.expect
            .push_back(Expect::Local(Local::Error(Box::new(err))));
    }

    /// A Parse of `DEALLOCATE name` goes to the backend as `DEALLOCATE` of the scratch
    /// statement: when it runs, the scratch statement exists if the client has `name` then (see
    /// `execute_portal`), so it answers as Postgres would (`26000` when the client has no such
    /// statement, `25P02` in a failed transaction). `rest` is the client's text (`sql_len`
    /// bytes, then a NUL) and parameter types; returns the whole Parse message to send in its
    /// place.
    #[cold]
    pub(super) fn deallocate_stand_in(&self, name: &[u8], rest: &[u8], sql_len: usize) -> Vec<u8> {
        let sql = format!("DEALLOCATE {PROBE_STATEMENT}");
        let types = rest.get(sql_len + 1..).unwrap_or_default();
        let mut out = BytesMut::new();
        messages::write_message(&mut out, b'P', |b| {
            b.put_slice(name);
            b.put_u8(0);
            b.put_slice(sql.as_bytes());
            b.put_u8(0);
            b.put_slice(types);
        });
        out.to_vec()
    }

    /// Closes the scratch statement, which a duplicate check may have left.
    pub(super) fn close_probe(&mut self) {
        prepared::write_statement_target(&mut self.sout, b'C', PROBE_STATEMENT);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Close,
            owner: Owner::Proxy,
            parse: None,
        });
    }

    /// True when the backend has `stmt`, prepared after the client's Parse; marks it used.
    pub(super) fn on_backend(&mut self, stmt: &Statement) -> bool {
        self.backend
            .as_mut()
            .is_some_and(|b| b.conn().statements.touch(stmt))
    }

    /// Sends `stmt`'s Parse to the backend, closing its least recently used statement first if
    /// the connection is at its bound. A Close of the same name goes first: an older copy may
    /// be there (see `prepared`), or one whose Close a failed batch skipped after the proxy
    /// had forgotten it; Postgres answers a Close of no statement all the same.
    pub(super) fn prepare_on_backend(
        &mut self,
        stmt: &Arc<Statement>,
        owner: Owner,
        client_name: Option<Box<[u8]>>,
    ) {
        let capacity = self.pool.settings.prepared_statements_per_connection as usize;
        let Some(conn) = self.backend.as_mut() else {
            return;
        };
        self.undoable_queued = true;
        if let Some(evicted) = conn.conn().statements.add(&stmt.backend_name, capacity) {
            prepared::write_statement_target(&mut self.sout, b'C', &evicted);
            self.expect.push_back(Expect::Reply {
                reply: Reply::Close,
                owner: Owner::Proxy,
                parse: None,
            });
        }
        prepared::write_statement_target(&mut self.sout, b'C', &stmt.backend_name);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Close,
            owner: Owner::Proxy,
            parse: None,
        });
        self.sout.put_slice(&stmt.parse);
        self.expect.push_back(Expect::Reply {
            reply: Reply::Parse,
            owner,
            parse: Some(ParseUndo {
                client_name,
                stmt: stmt.clone(),
            }),
        });
    }

    /// What a Parse's statement text means for pooling; the same text as the last plain one is
    /// plain without another look. (Query texts carry their literals and seldom repeat: there
    /// the comparison and copy would cost more than they save.)
    pub(super) fn classify_parse(&mut self, sql: &[u8]) -> Classified {
        if self.plain_sql == sql {
            return Classified::Plain;
        }
        let class = classify(sql);
        if class == Classified::Plain && sql.len() <= MAX_REMEMBERED_SQL {
            self.plain_sql.clear();
            self.plain_sql.extend_from_slice(sql);
        }
        class
    }

    /// Looks at the SQL of a Query or Parse (classified as `class`) for session state. True
    /// when the message was refused (error policy) and must not go on.
    pub(super) fn watch_statement(
        &mut self,
        sql: &[u8],
        class: Classified,
        is_parse: bool,
    ) -> bool {
        if self.pinned.is_some() {
            return false;
        }
        let pins = match class {
            Classified::Plain | Classified::Deallocate(_) => return false,
            Classified::Pins(what) => Some(what),
            Classified::Multi => {
                let mut pins = None;
                for (class, text) in statements(sql) {
                    if let Classified::Pins(what) = class {
                        pins = Some(what);
                        break;
                    }
                    self.track(class, text);
                }
                pins
            }
            single => {
                self.track(single, sql);
                None
            }
        };
        let Some(what) = pins else {
            return false;
        };
        match self.policy {
            SessionStatePolicy::Pin => {
                tracing::info!(tenant = %self.pool.tenant, reason = what, "client pinned to its backend connection");
                self.pinned = Some(what);
                false
            }
            SessionStatePolicy::Error => {
                // Changes queued by earlier statements of the refused query never happen.
                self.pending.clear();
                let err = ClientError::session_state_refused(what);
                if is_parse {
                    self.refuse(err);
                } else {
                    // A raising statement in its place keeps the backend's transaction state
                    // the same as the client's.
                    let sql = refusal_sql(err.code, &err.message);
                    messages::query(&mut self.sout, &sql);
                    self.expect_reply(Reply::Query);
                }
                true
            }
        }
    }

    /// Queues a settings change of one statement, applied if its transaction commits.
    pub(super) fn track(&mut self, class: Classified, text: &[u8]) {
        match class {
            Classified::Set { name } => self.pend(Pending::Set(name, Bytes::copy_from_slice(text))),
            Classified::Reset { name } => self.pend(Pending::Reset(name)),
            Classified::ResetAll => self.pend(Pending::ResetAll),
            Classified::DiscardAll => {
                self.pend(Pending::ResetAll);
                // Which statements exist afterwards is known when it has run (see
                // `command_complete`); the client's next messages wait for that.
                self.barrier = Barrier::Drained;
            }
            Classified::Plain
            | Classified::Deallocate(_)
            | Classified::Pins(_)
            | Classified::Multi => {}
        }
    }

    /// A settings change of the statement being sent. It belongs to that statement's
    /// transaction, so it waits in the queue behind the replies still due for earlier ones
    /// (whose transaction may end first), and is dropped if the backend skips the statement.
    pub(super) fn pend(&mut self, change: Pending) {
        if self.expect.is_empty() {
            self.pending.push(change);
        } else {
            self.expect.push_back(Expect::Pending(change));
        }
    }

    pub(super) fn query(&mut self, msg: &[u8]) -> Step {
        // The text ends at the message's final NUL; one inside it makes the backend refuse the
        // message anyway.
        let body = &msg[5..];
        let sql = body.strip_suffix(&[0]).unwrap_or(body);
        let class = self.waiting_query.take().unwrap_or_else(|| classify(sql));
        // It drops the unnamed statement: a Bind of it after this must check whose it is.
        self.unnamed_in_batch = false;
        // DEALLOCATE names the client's statements, which the backend knows by other names.
        if let Classified::Deallocate(target) = &class
            && self.pinned.is_none()
        {
            // What Postgres would answer depends on the transaction state (a failed one
            // refuses it) and on statements the replies still due may undo: wait for them.
            // Inside a batch, with nothing due (so the backend is not skipping), a Sync
            // reports the state; it ends the batch's implicit transaction, as the Query would
            // before DEALLOCATE, which is not transactional, runs.
            if !self.expect.is_empty() || (self.unsynced && !self.copy_in) {
                if self.expect.is_empty() {
                    messages::write_message(&mut self.sout, b'S', |_| {});
                    self.expect.push_back(Expect::Reply {
                        reply: Reply::Sync,
                        owner: Owner::Proxy,
                        parse: None,
                    });
                    self.unsynced = false;
                }
                self.waiting_query = Some(class);
                return self.wait_for_replies(Barrier::Drained);
            }
            return self.deallocate(target.as_deref());
        }
        if self.backend.is_none() {
            self.waiting_query = Some(class);
            return Step::NeedBackend;
        }
        if self.watch_statement(sql, class, false) {
            return Step::Done;
        }
        self.query_drops_unnamed();
        self.sout.put_slice(msg);
        self.expect_reply(Reply::Query);
        Step::Done
    }

    /// A Query of `DEALLOCATE name` (or `ALL`, `None`), with no replies due. Between
    /// transactions the proxy answers alone. In one, the backend runs a statement in its place,
    /// so that its transaction state and the unnamed statement and portal a Query drops follow
    /// the client's: `DEALLOCATE` of the scratch statement, prepared just before, for a
    /// statement the client has; one that raises what Postgres would otherwise (25P02 in a
    /// failed transaction, 26000 for a name the client lacks); `DEALLOCATE ALL` itself, whose
    /// completion forgets every statement (see `command_complete`).
    #[cold]
    pub(super) fn deallocate(&mut self, target: Option<&str>) -> Step {
        let has = target.is_none_or(|name| self.statements.contains(name.as_bytes()));
        if self.backend.is_none() {
            // The Query drops the unnamed statement the client left on a connection.
            self.unnamed_id = unnamed_id();
            if !has {
                let err = ClientError::unknown_statement(target.unwrap_or_default());
                self.local(Local::Error(Box::new(err)));
            } else {
                match target {
                    Some(name) => {
                        self.statements.remove(name.as_bytes());
                        self.local(Local::CommandComplete("DEALLOCATE"));
                    }
                    None => {
                        self.statements.clear();
                        self.local(Local::CommandComplete("DEALLOCATE ALL"));
                    }
                }
            }
            self.local(Local::ReadyForQuery);
            return Step::Done;
        }
        self.query_drops_unnamed();
        match target {
            Some(name) if has && self.last_status != b'E' => {
                self.statements.remove(name.as_bytes());
                self.close_probe();
                self.prepare_probe();
                messages::query(&mut self.sout, &format!("DEALLOCATE {PROBE_STATEMENT}"));
            }
            None if self.last_status != b'E' => {
                messages::query(&mut self.sout, "DEALLOCATE ALL");
                self.barrier = Barrier::Drained;
            }
            _ => {
                let err = if self.last_status == b'E' {
                    ClientError::failed_transaction()
                } else {
                    ClientError::unknown_statement(target.unwrap_or_default())
                };
                messages::query(&mut self.sout, &refusal_sql(err.code, &err.message));
            }
        }
        self.expect_reply(Reply::Query);
        Step::Done
    }

    /// A simple Query drops the unnamed statement and portal.
    pub(super) fn query_drops_unnamed(&mut self) {
        if self.unnamed_change.is_some() || !self.portal_changes.is_empty() {
            self.unnamed_change = None;
            self.portal_changes.retain(|p| !p.portal.is_empty());
        }
    }

    /// A use of the unnamed statement with no unnamed Parse before it in its batch must know
    /// whose the connection's unnamed statement is, which an earlier batch the backend may
    /// still skip leaves open: true when the use must wait for that (a barrier is set).
    #[inline]
    pub(super) fn unnamed_unsettled(&mut self) -> bool {
        if self.unnamed_in_batch
            || !self
                .expect
                .iter()
                .any(|e| matches!(e, Expect::UnnamedOwner(_)))
        {
            return false;
        }
        self.wait_for_replies(Barrier::Undoable);
        true
    }

    /// The client's message waits behind `barrier` for replies due: a Flush makes the backend
    /// send those it keeps (to extended-protocol messages, the client's or the proxy's own)
    /// until a Flush or Sync.
    #[cold]
    pub(super) fn wait_for_replies(&mut self, barrier: Barrier) -> Step {
        self.barrier = barrier;
        if !self.copy_in {
            messages::write_message(&mut self.sout, b'H', |_| {});
        }
        Step::Wait
    }

    /// Before a use of the unnamed statement: the connection's unnamed statement, if another
    /// session's Parse made it, is closed, so the use fails as it would on a connection of the
    /// client's own instead of running another client's statement.
    #[inline]
    pub(super) fn own_unnamed(&mut self) {
        let id = self.unnamed_id;
        if self
            .backend
            .as_mut()
            .is_some_and(|conn| conn.conn().unnamed_owner != id)
        {
            self.close_unnamed();
        }
    }

    #[cold]
    fn close_unnamed(&mut self) {
        prepared::write_statement_target(&mut self.sout, b'C', "");
        self.expect.push_back(Expect::Reply {
            reply: Reply::Close,
            owner: Owner::Proxy,
            parse: None,
        });
        self.set_unnamed_owner();
    }

    /// The client's unnamed Parse, or the proxy's Close of the unnamed statement, was just
    /// queued: the connection's unnamed statement is this session's once it has run, and is
    /// now if nothing due before it could make the backend skip it (a failed Parse leaves no
    /// unnamed statement to own).
    #[inline]
    fn set_unnamed_owner(&mut self) {
        let id = self.unnamed_id;
        if self.expect.len() > 1 {
            self.expect.push_back(Expect::UnnamedOwner(id));
        } else if let Some(conn) = self.backend.as_mut() {
            conn.conn().unnamed_owner = id;
        }
    }

    /// Parses a statement under the scratch name, which must be free.
    pub(super) fn prepare_probe(&mut self) {
        write_probe_parse(&mut self.sout, b"SELECT 1\0\0\0");
        self.expect.push_back(Expect::Reply {
            reply: Reply::Parse,
            owner: Owner::Proxy,
            parse: None,
        });
    }

    pub(super) fn describe(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let Some((&kind, rest)) = msg[5..].split_first() else {
            return Err(malformed("Describe"));
        };
        let name = prepared::cstr(rest).map_or(rest, |(n, _)| n);
        if self.backend.is_none() {
            return Ok(Step::NeedBackend);
        }
        if kind == b'S'
            && !name.is_empty()
            && let Some(stmt) = self.statements.get(name).cloned()
        {
            if !self.on_backend(&stmt) {
                self.prepare_on_backend(&stmt, Owner::Proxy, None);
            }
            prepared::write_statement_target(&mut self.sout, b'D', &stmt.backend_name);
            self.expect_reply(Reply::DescribeStatement);
            return Ok(Step::Done);
        }
        if kind == b'S' && name.is_empty() && !self.unnamed_in_batch {
            if self.unnamed_unsettled() {
                return Ok(Step::Wait);
            }
            self.own_unnamed();
        }
        self.sout.put_slice(msg);
        self.expect_reply(if kind == b'S' {
            Reply::DescribeStatement
        } else {
            Reply::DescribePortal
        });
        Ok(Step::Done)
    }

    pub(super) fn close(&mut self, msg: &[u8]) -> Result<Step, TxnEnd> {
        let Some((&kind, rest)) = msg[5..].split_first() else {
            return Err(malformed("Close"));
        };
        let name = prepared::cstr(rest).map_or(rest, |(n, _)| n);
        // A named statement is the client's alone; the backend copy may serve others.
        if kind == b'S'
            && !name.is_empty()
            && (self.pinned.is_none() || self.statements.contains(name))
        {
            let closed = self.statements.remove(name).map(|stmt| NamedStatement {
                name: name.into(),
                stmt,
            });
            self.undoable_queued = true;
            self.local(Local::CloseComplete(closed));
            return Ok(Step::Done);
        }
        if kind == b'P' && !self.portal_changes.is_empty() {
            self.portal_changes.retain(|p| *p.portal != *name);
        }
        if self.backend.is_none() {
            // Outside a transaction there are no portals; the unnamed statement the client may
            // have left on a connection is closed when it next uses one (see `own_unnamed`).
            if kind == b'S' {
                self.unnamed_id = unnamed_id();
            }
            self.local(Local::CloseComplete(None));
            return Ok(Step::Done);
        }
        self.sout.put_slice(msg);
        self.expect_reply(Reply::Close);
        Ok(Step::Done)
    }

    /// Bind: only the two names at its front are read; the parameters stream through.
    pub(super) fn bind(&mut self, len: usize) -> Result<Step, TxnEnd> {
        let avail = self.cin.len().min(len + 1);
        let head = &self.cin[5..avail];
        let names = prepared::cstr(head).and_then(|(portal, rest)| {
            prepared::cstr(rest).map(|(stmt, _)| (portal.len(), stmt.len()))
        });
        let Some((portal_len, stmt_len)) = names else {
            if avail > len || avail >= MAX_BIND_NAMES {
                return Err(malformed("Bind"));
            }
            return Ok(Step::NeedMore);
        };
        if stmt_len == 0 && self.unnamed_unsettled() {
            return Ok(Step::Wait);
        }
        let names_end = 5 + portal_len + 1 + stmt_len + 1;
        let stmt_name = &self.cin[5 + portal_len + 1..names_end - 1];
        let stmt = if stmt_name.is_empty() {
            None
        } else {
            self.statements.get(stmt_name).cloned()
        };
        let change = match &stmt {
            Some(stmt) => stmt.change.as_ref(),
            None if stmt_name.is_empty() => self.unnamed_change.as_ref(),
            None => None,
        };
        if change.is_some() || !self.portal_changes.is_empty() {
            let change = change.cloned();
            let portal: Box<[u8]> = self.cin[5..5 + portal_len].into();
            self.bind_portal(portal, change);
        }
        match stmt {
            None => {
                // Unnamed, or unknown to the proxy: the backend answers as it would.
                if stmt_len == 0 && !self.unnamed_in_batch {
                    self.own_unnamed();
                }
                self.sout.put_slice(&self.cin[..avail]);
                self.cin.advance(avail);
                self.client_stream_left = len + 1 - avail;
            }
            Some(stmt) => {
                if !self.on_backend(&stmt) {
                    self.prepare_on_backend(&stmt, Owner::Proxy, None);
                }
                let head = &self.cin[..avail];
                let rest_total = len + 1 - names_end;
                let portal = &head[5..5 + portal_len];
                self.sout.put_u8(b'B');
                let new_len = 4 + portal_len + 1 + stmt.backend_name.len() + 1 + rest_total;
                self.sout
                    .put_u32(u32::try_from(new_len).map_err(|_| malformed("Bind"))?);
                self.sout.put_slice(portal);
                self.sout.put_u8(0);
                self.sout.put_slice(stmt.backend_name.as_bytes());
                self.sout.put_u8(0);
                self.sout.put_slice(&head[names_end..]);
                self.cin.advance(avail);
                self.client_stream_left = len + 1 - avail;
            }
        }
        self.expect_reply(Reply::Bind);
        Ok(Step::Done)
    }

    /// Notes what executing `portal` will do to the client's settings (a Bind replaces the
    /// portal of the same name).
    #[cold]
    pub(super) fn bind_portal(&mut self, portal: Box<[u8]>, change: Option<Arc<SettingsChange>>) {
        self.portal_changes.retain(|p| p.portal != portal);
        let Some(change) = change else {
            return;
        };
        if self.portal_changes.len() >= MAX_PORTAL_CHANGES {
            tracing::info!(tenant = %self.pool.tenant, reason = "many open portals that change settings", "client pinned to its backend connection");
            self.pinned = Some("many open portals that change settings");
            self.portal_changes.clear();
            return;
        }
        let earlier_batches = self
            .expect
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expect::Reply {
                        reply: Reply::Sync | Reply::Query,
                        ..
                    }
                )
            })
            .count();
        self.portal_changes.push(PortalChange {
            portal,
            change,
            earlier_batches,
        });
    }

    /// Execute of a portal whose statement changes settings (queued, to stick if the
    /// transaction commits) or deallocates client statements (gone now: DEALLOCATE is not
    /// transactional). `cin` holds the whole message. True when the client's next messages wait
    /// for this one's reply (DISCARD ALL).
    #[cold]
    pub(super) fn execute_portal(&mut self, len: usize) -> (bool, Option<NamedStatement>) {
        let portal = prepared::cstr(&self.cin[5..len + 1]).map_or(&[][..], |(n, _)| n);
        let change = self
            .portal_changes
            .iter()
            .find(|p| *p.portal == *portal)
            .map(|p| p.change.clone());
        if let Some(change) = change {
            match &change.class {
                Classified::Deallocate(Some(name)) => {
                    // The stand-in deallocates the scratch statement (see
                    // `deallocate_stand_in`): there if the client has the statement.
                    let had = self.statements.remove(name.as_bytes());
                    self.close_probe();
                    if let Some(stmt) = had {
                        self.prepare_probe();
                        self.undoable_queued = true;
                        let name = name.as_bytes().into();
                        let flush_after = self.barrier == Barrier::Drained;
                        return (flush_after, Some(NamedStatement { name, stmt }));
                    }
                }
                // Which statements exist afterwards is known once it has run (see
                // `command_complete`); the client's next messages wait for that.
                Classified::Deallocate(None) => self.barrier = Barrier::Drained,
                class => self.track(class.clone(), &change.text),
            }
        }
        (self.barrier == Barrier::Drained, None)
    }
}
