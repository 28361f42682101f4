//! Backend replies: each matched against the queue of expected replies, forwarded, swallowed
//! or answered in the proxy's place, and what a failed or skipped request changed undone.

use super::*;

impl TxnSession<'_> {
    /// Moves the approved backend bytes into `cout`, so something can be added after them or a
    /// message after them dropped.
    pub(super) fn spill_server(&mut self) {
        if self.sin_fwd > 0 {
            self.cout.put_slice(&self.sin[..self.sin_fwd]);
            self.sin.advance(self.sin_fwd);
            self.sin_fwd = 0;
        }
    }

    /// Passes `n` backend bytes after the approved ones on to the client, or drops them.
    pub(super) fn take_server_bytes(&mut self, n: usize, forward: bool) {
        if forward {
            self.sin_fwd += n;
        } else {
            self.spill_server();
            self.sin.advance(n);
        }
    }

    /// Handles backend messages (streaming large pass-through ones) until input runs out or the
    /// client's output is backed up. True when bytes moved.
    #[inline(always)]
    pub(super) fn process_server(&mut self) -> Result<bool, TxnEnd> {
        // Nothing unhandled is the common case of a relay pass: no call for it.
        if self.sin.len() == self.sin_fwd {
            return Ok(false);
        }
        self.server_messages()
    }

    pub(super) fn server_messages(&mut self) -> Result<bool, TxnEnd> {
        let mut moved = false;
        loop {
            if self.server_stream_left > 0 {
                let n = self.server_stream_left.min(self.sin.len() - self.sin_fwd);
                if n == 0 {
                    return Ok(moved);
                }
                self.take_server_bytes(n, self.server_stream_forward);
                self.server_stream_left -= n;
                if self.server_stream_left == 0 {
                    self.flush_locals();
                }
                moved = true;
                continue;
            }
            if self.cout.len() + self.sin_fwd >= HIGH_WATER {
                return Ok(moved);
            }
            let Some(&[tag, a, b, c, d]) = self.sin[self.sin_fwd..].first_chunk::<5>() else {
                return Ok(moved);
            };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len < 4 {
                return Err(TxnEnd::ServerProtocol(format!(
                    "invalid message length {len} for message type {tag:#04x}"
                )));
            }
            // Rows, most of a result's bytes, are taken in whole runs: a DataRow never changes
            // what the queue expects, so every row of a run goes where the first one goes.
            if tag == b'D' {
                let room = HIGH_WATER - (self.cout.len() + self.sin_fwd);
                let run = complete_run(&self.sin[self.sin_fwd..], b'D', room);
                if run > 0 {
                    let action = ServerAction::for_owner(self.front_reply().1);
                    self.take_server_bytes(run, matches!(action, ServerAction::Forward));
                    self.flush_locals();
                    moved = true;
                    continue;
                }
            }
            let decoded = matches!(tag, b'Z' | b'S' | b'C' | b'E');
            if decoded && len > MAX_DECODED_SERVER_MESSAGE {
                return Err(TxnEnd::ServerProtocol(format!(
                    "message {tag:#04x} of {len} bytes is too long"
                )));
            }
            let available = self.sin.len() - self.sin_fwd;
            if decoded && available <= len {
                self.sin.reserve(len + 1 - available);
                return Ok(moved);
            }
            let action = self.server_message(tag, len)?;
            let take = (len + 1).min(available);
            self.server_stream_left = len + 1 - take;
            self.server_stream_forward = matches!(action, ServerAction::Forward);
            self.take_server_bytes(take, self.server_stream_forward);
            if self.server_stream_left == 0 {
                // The proxy's own replies queued behind this one go out after it.
                self.flush_locals();
            }
            moved = true;
        }
    }

    /// The backend message being decided on: what follows the approved bytes.
    pub(super) fn server_msg(&self) -> &[u8] {
        &self.sin[self.sin_fwd..]
    }

    /// The reply the queue expects next and whose it is, when a reply is next.
    pub(super) fn front_reply(&self) -> (Option<Reply>, Option<Owner>) {
        match self.expect.front() {
            Some(Expect::Reply { reply, owner, .. }) => (Some(*reply), Some(*owner)),
            _ => (None, None),
        }
    }

    /// Decides what one backend message (header at the front of `sin`; whole if decoded) does
    /// to the queue and whether it reaches the client.
    pub(super) fn server_message(&mut self, tag: u8, len: usize) -> Result<ServerAction, TxnEnd> {
        let (front_reply, front_owner) = self.front_reply();
        match tag {
            // Asynchronous: notices and notifications always reach the client.
            b'N' | b'A' => Ok(ServerAction::Forward),
            b'S' => {
                let body = &self.server_msg()[5..len + 1];
                let (name, value) = prepared::cstr(body)
                    .and_then(|(n, r)| prepared::cstr(r).map(|(v, _)| (n, v)))
                    .ok_or_else(|| TxnEnd::ServerProtocol("malformed ParameterStatus".into()))?;
                let name = String::from_utf8_lossy(name).into_owned();
                let value = String::from_utf8_lossy(value).into_owned();
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().params.set(&name, &value);
                }
                if front_owner == Some(Owner::Proxy) {
                    return Ok(ServerAction::Swallow);
                }
                // A change the client made (SET, set_config, a rolled-back SET undone).
                if !UNSETTABLE_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                    self.settings.set_value(&name, &value);
                    if let Some(conn) = self.backend.as_mut() {
                        conn.conn().settings_fingerprint = self.settings.fingerprint();
                    }
                }
                Ok(ServerAction::Forward)
            }
            b'Z' => {
                if len != 5 {
                    return Err(TxnEnd::ServerProtocol(format!(
                        "ReadyForQuery of length {len}"
                    )));
                }
                let status = self.server_msg()[5];
                let Some(Expect::Reply { owner, .. }) = self.expect.pop_front() else {
                    return Err(self.lost_track(tag));
                };
                if !matches!(front_reply, Some(Reply::Sync | Reply::Query)) {
                    return Err(self.lost_track(tag));
                }
                self.last_status = status;
                if !self.portal_changes.is_empty() {
                    self.portals_at_ready(status);
                }
                // The proxy's own settings query ends no transaction of the client's.
                if status == b'I' && owner != Owner::Proxy {
                    self.end_of_transaction();
                    // A pinned client keeps its backend but is between transactions now.
                    if self.pinned.is_some() && self.expect.is_empty() {
                        self.in_txn = false;
                        self.kick.end_transaction();
                    }
                }
                Ok(if owner == Owner::Proxy {
                    ServerAction::Swallow
                } else {
                    ServerAction::Forward
                })
            }
            b'E' => {
                // Any error fails the transaction, one of the proxy's own messages too.
                self.txn_failed = true;
                if front_owner != Some(Owner::Proxy) {
                    self.stats
                        .record_backend_error(&self.server_msg()[5..len + 1]);
                }
                if front_owner == Some(Owner::DuplicateCheck) {
                    return Ok(self.duplicate_checked(len));
                }
                let action = ServerAction::for_owner(front_owner);
                if front_owner == Some(Owner::Proxy) && front_reply == Some(Reply::Query) {
                    tracing::warn!(tenant = %self.pool.tenant, "replaying client settings failed; the connection will be closed");
                    self.poisoned = true;
                }
                // A Query's error comes before its ReadyForQuery, and so does the error of the
                // commit at a Sync; any other is an extended-protocol message's.
                if !matches!(front_reply, Some(Reply::Query | Reply::Sync) | None) {
                    self.skip_to_sync();
                }
                // An injected Parse failing shows the client why its Bind cannot run.
                if front_owner == Some(Owner::Proxy) && front_reply == Some(Reply::Parse) {
                    return Ok(ServerAction::Forward);
                }
                Ok(action)
            }
            b'1' | b'2' | b'3' => {
                let want = match tag {
                    b'1' => Reply::Parse,
                    b'2' => Reply::Bind,
                    _ => Reply::Close,
                };
                // A duplicate check that succeeds changed a statement the connection shares.
                if front_reply != Some(want) || front_owner == Some(Owner::DuplicateCheck) {
                    return Err(self.lost_track(tag));
                }
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'T' | b'n'
                if matches!(
                    front_reply,
                    Some(Reply::DescribeStatement | Reply::DescribePortal)
                ) =>
            {
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'C' | b'I' | b's' if front_reply == Some(Reply::Execute) => {
                if tag == b'C' {
                    self.command_complete(len);
                }
                self.expect.pop_front();
                Ok(ServerAction::for_owner(front_owner))
            }
            b'C' => {
                self.command_complete(len);
                Ok(ServerAction::for_owner(front_owner))
            }
            b'G' => {
                self.enter_copy_in();
                Ok(ServerAction::for_owner(front_owner))
            }
            _ => Ok(ServerAction::for_owner(front_owner)),
        }
    }

    /// CommandComplete: a ROLLBACK undoes SETs of the transaction; DISCARD ALL and DEALLOCATE
    /// ALL (only ever the client's) wiped its and the connection's prepared statements.
    pub(super) fn command_complete(&mut self, len: usize) {
        // The command tag without its NUL; a malformed empty one matches nothing.
        let tag = self.server_msg().get(5..len).unwrap_or_default();
        match tag {
            b"ROLLBACK" => self.txn_failed = true,
            b"DISCARD ALL" => {
                self.statements.clear();
                self.unnamed_change = None;
                self.portal_changes.clear();
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.clear();
                }
            }
            b"DEALLOCATE ALL" => {
                self.statements.clear();
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.clear();
                }
            }
            _ => {}
        }
    }

    /// CopyInResponse: Syncs the client sent after the COPY and before its CopyDone (if it
    /// already sent one) never get a reply, so they leave the queue.
    pub(super) fn enter_copy_in(&mut self) {
        let mut i = 1;
        self.copy_in = true;
        let extended = self.front_reply().0 == Some(Reply::Execute);
        while i < self.expect.len() {
            match self.expect.get(i) {
                Some(Expect::CopyEnd) => {
                    self.expect.remove(i);
                    self.copy_in = false;
                    return;
                }
                // Ignored by the backend: an Execute's batch goes on past them.
                Some(Expect::Reply {
                    reply: Reply::Sync, ..
                }) => {
                    self.expect.remove(i);
                    self.unsynced |= extended;
                }
                _ => i += 1,
            }
        }
    }

    /// A ReadyForQuery with `status`: portals end with the transaction it ends, if it is
    /// theirs (those bound after the client's Sync or Query it answers are not).
    #[cold]
    pub(super) fn portals_at_ready(&mut self, status: u8) {
        self.portal_changes.retain_mut(|p| {
            if p.earlier_batches > 0 {
                p.earlier_batches -= 1;
                true
            } else {
                status != b'I'
            }
        });
    }

    /// A transaction ended: settings changed inside it stick unless it failed or rolled back.
    pub(super) fn end_of_transaction(&mut self) {
        let failed = std::mem::take(&mut self.txn_failed);
        let pending = std::mem::take(&mut self.pending);
        if failed || pending.is_empty() {
            return;
        }
        // A RESET of a startup parameter left the connection at its own startup value, not the
        // client's: the next transaction on it sets it again.
        let mut differs = false;
        for p in pending {
            match p {
                Pending::Set(name, sql) => self.settings.set_statement(name, &sql),
                Pending::Reset(name) => differs |= self.settings.reset(&name),
                Pending::ResetAll => differs |= self.settings.clear(),
            }
        }
        if let Some(conn) = self.backend.as_mut() {
            conn.conn().settings_fingerprint = if differs {
                UNKNOWN_SETTINGS
            } else {
                self.settings.fingerprint()
            };
        }
    }

    /// An extended-protocol message failed: the backend skips everything up to the next Sync,
    /// a Query or FunctionCall the client sent before that Sync too, so nothing it would have
    /// answered in between is awaited, and what the proxy did in advance for those messages is
    /// undone, latest first, as if they had never come.
    #[cold]
    pub(super) fn skip_to_sync(&mut self) {
        self.skip_to_sync_after(1);
    }

    /// Like [`TxnSession::skip_to_sync`], for a failure `certain` entries into the queue.
    pub(super) fn skip_to_sync_after(&mut self, certain: usize) {
        let skipped = certain
            + self
                .expect
                .iter()
                .skip(certain)
                .take_while(|e| {
                    !matches!(
                        e,
                        Expect::Reply {
                            reply: Reply::Sync,
                            ..
                        } | Expect::Reply {
                            reply: Reply::Query,
                            owner: Owner::Proxy,
                            ..
                        }
                    )
                })
                .count();
        // Nothing up to a Sync is left: the client has yet to send it, and the backend waits
        // for it whatever the client sent since (a Query too).
        if skipped == self.expect.len() {
            self.skip = Skip::Backend;
            self.unsynced = true;
        }
        let skipped: Vec<Expect> = self.expect.drain(..skipped).collect();
        for entry in skipped.into_iter().rev() {
            self.undo(entry);
        }
    }

    /// The backend's error for a duplicate check (see [`Owner::DuplicateCheck`]): an error in
    /// the text reaches the client as it is; the expected duplicate is replaced by the proxy's
    /// own, which names the client's statement. Either way the backend skips to the Sync.
    #[cold]
    pub(super) fn duplicate_checked(&mut self, len: usize) -> ServerAction {
        let body = &self.server_msg()[5..len + 1];
        if messages::error_fields(body).0
            != Some(crate::error::sqlstate::DUPLICATE_PREPARED_STATEMENT)
        {
            self.skip_to_sync();
            return ServerAction::Forward;
        }
        self.expect.pop_front();
        let own_error = self.expect.pop_front();
        self.skip_to_sync_after(0);
        if let Some(own_error) = own_error {
            self.expect.push_front(own_error);
        }
        ServerAction::Swallow
    }

    /// Undoes what the proxy did for a message the backend skipped: a Parse leaves no trace of
    /// its statement, and a Close it answered alone or a DEALLOCATE forgets nothing.
    pub(super) fn undo(&mut self, entry: Expect) {
        match entry {
            Expect::Reply {
                parse: Some(undo), ..
            } => {
                if let Some(conn) = self.backend.as_mut() {
                    conn.conn().statements.remove(&undo.stmt.backend_name);
                }
                if let Some(name) = undo.client_name {
                    self.forget_if_same(&name, &undo.stmt);
                }
            }
            Expect::UnnamedChange(before) => {
                let later_parse = self.expect.iter().any(|e| {
                    matches!(
                        e,
                        Expect::Reply {
                            reply: Reply::Parse,
                            owner: Owner::Client,
                            parse: None,
                        }
                    )
                });
                if !later_parse {
                    self.unnamed_change = before;
                }
            }
            Expect::Local(Local::CloseComplete(Some(named))) | Expect::Deallocated(named)
                if !self.statements.contains(&named.name) =>
            {
                self.statements.insert(&named.name, named.stmt);
            }
            _ => {}
        }
    }

    /// Forgets the client's `name` if it still stands for `stmt`.
    pub(super) fn forget_if_same(&mut self, name: &[u8], stmt: &Arc<Statement>) {
        if self
            .statements
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, stmt))
        {
            self.statements.remove(name);
        }
    }

    pub(super) fn lost_track(&self, tag: u8) -> TxnEnd {
        tracing::error!(tenant = %self.pool.tenant, tag = %char::from(tag), expected = ?self.expect.front(), "reply does not match the request queue");
        TxnEnd::ServerProtocol(format!("unexpected message {:?}", char::from(tag)))
    }
}
