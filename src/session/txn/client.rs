//! The client's side of the relay: its messages taken one at a time, each forwarded, rewritten
//! or answered, a backend asked for when one is needed, and the transaction gates passed.

use super::*;

impl TxnSession<'_> {
    /// Handles whole client messages (streaming large pass-through ones) until input runs out,
    /// a backend is needed and not yet held, or output is backed up. True when bytes moved.
    #[inline(always)]
    pub(super) fn process_client(&mut self) -> Result<bool, TxnEnd> {
        // Nothing to handle is the common case of a relay pass: no call for it.
        if self.cin.is_empty() {
            return Ok(false);
        }
        let moved = self.client_messages();
        rewind(&mut self.cin);
        if self.cin.capacity() > MAX_IDLE_CAPACITY && self.cin_whole == 0 {
            self.shrink_input();
        }
        moved
    }

    /// Moves what is left of the client's input out of a buffer a long message made large.
    #[cold]
    pub(super) fn shrink_input(&mut self) {
        if self.cin.len() < READ_CHUNK {
            let mut fresh = spare::take(READ_CHUNK);
            fresh.extend_from_slice(&self.cin);
            self.cin = fresh;
        }
    }

    pub(super) fn client_messages(&mut self) -> Result<bool, TxnEnd> {
        let mut moved = false;
        loop {
            if self.client_stream_left > 0 {
                let n = self.client_stream_left.min(self.cin.len());
                if n == 0 {
                    return Ok(moved);
                }
                if !self.client_stream_dropped {
                    self.sout.put_slice(&self.cin[..n]);
                }
                self.cin.advance(n);
                self.client_stream_left -= n;
                if self.client_stream_left == 0 {
                    self.client_stream_dropped = false;
                }
                moved = true;
                continue;
            }
            if self.client_done
                || self.sout.len() >= HIGH_WATER
                || self.expect.len() >= MAX_EXPECTED
                || self.acquiring.is_some()
                || self.held.is_some()
                || (self.barrier != Barrier::None && !self.settled())
            {
                return Ok(moved);
            }
            let Some(&[tag, a, b, c, d]) = self.cin.first_chunk::<5>() else {
                return Ok(moved);
            };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if !(4..=MAX_CLIENT_MESSAGE_LENGTH).contains(&len) {
                return Err(TxnEnd::Refused(ClientError::protocol(format!(
                    "invalid message length {len} for message type {tag:#04x}"
                ))));
            }
            let whole = self.cin.len() > len;
            if tag == b'X' {
                self.client_done = true;
                return Ok(true);
            }
            if self.skip != Skip::None {
                if tag != b'S' {
                    self.cin_whole = 0;
                    // A Query that waited for a barrier may be skipped after all.
                    self.waiting_query = None;
                    if whole {
                        self.cin.advance(len + 1);
                    } else {
                        self.client_stream_left = len + 1 - self.cin.len();
                        self.client_stream_dropped = true;
                        self.cin.clear();
                    }
                    moved = true;
                    continue;
                }
                if !whole {
                    return Ok(moved);
                }
                if std::mem::replace(&mut self.skip, Skip::None) == Skip::Refused {
                    self.cin.advance(len + 1);
                    self.sync_after_refusal();
                    moved = true;
                    continue;
                }
                // After the backend's own error the Sync goes on as usual.
            }
            // A client pinned to its backend starts its next transaction here.
            if !self.in_txn && self.backend.is_some() && !self.pass_gate()? {
                return Ok(true);
            }
            match self.client_message(tag, len, whole)? {
                Step::Done => {
                    moved = true;
                    self.cin_whole = 0;
                    self.counts.queries += u64::from(tag == b'Q' || tag == b'E');
                    if self.backend.is_some() {
                        self.note_batch(tag);
                    }
                }
                Step::NeedMore => {
                    // A Bind waits only for its names, which fit under HIGH_WATER.
                    if tag != b'B' {
                        self.await_whole(len + 1);
                    }
                    return Ok(moved);
                }
                Step::Wait => return Ok(moved),
                Step::NeedBackend => {
                    if !self.pass_gate()? {
                        return Ok(true);
                    }
                    if let Some(conn) = self.pool.try_checkout() {
                        self.attach(conn);
                        moved = true;
                        continue;
                    }
                    // The new checkout must be polled before this poll returns.
                    self.acquire();
                    return Ok(true);
                }
            }
        }
    }

    /// The message at the front of `cin`, `size` bytes with its tag, is needed whole: room is
    /// made for all of it at once, and the client is read until it has come.
    #[cold]
    pub(super) fn await_whole(&mut self, size: usize) {
        if self.cin_whole != size {
            self.cin_whole = size;
            self.cin.reserve(size.saturating_sub(self.cin.len()));
        }
    }

    /// Lets a transaction start: a draining proxy lets transactions finish but starts none, and
    /// a PAUSE holds them until RESUME (false: held). The client is busy from here.
    #[inline]
    pub(super) fn pass_gate(&mut self) -> Result<bool, TxnEnd> {
        match self.kick.begin_transaction() {
            Gate::Open => {
                self.in_txn = true;
                Ok(true)
            }
            Gate::Draining => Err(TxnEnd::Refused(ClientError::shutting_down())),
            Gate::Paused => {
                self.held = Some(self.kick.until_resumed(self.pause_limit));
                Ok(false)
            }
        }
    }

    /// True once what the barrier waits for has come (see [`Barrier`]), which lifts it: the
    /// proxy must know which statements exist, for the client and on the connection, before
    /// it maps the names in the client's next messages.
    #[cold]
    pub(super) fn settled(&mut self) -> bool {
        let settled = match self.barrier {
            Barrier::None => true,
            Barrier::Undoable => !self.expect.iter().any(Expect::may_be_undone),
            Barrier::Drained => self.expect.is_empty() || self.skip == Skip::Backend,
        };
        if settled {
            self.barrier = Barrier::None;
        }
        settled
    }

    /// Keeps [`TxnSession::unsynced`] for a client message handled while a backend is held:
    /// a Query, a FunctionCall or a Sync the backend will act on ends a batch with a
    /// ReadyForQuery; Flush and copy data change nothing; anything else opens a batch.
    #[inline]
    pub(super) fn note_batch(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.unsynced = false,
            // In copy-in mode the backend ignores a Sync.
            b'S' if !self.copy_in => self.unsynced = false,
            b'S' | b'H' | b'd' | b'c' | b'f' => {}
            _ => self.unsynced = true,
        }
    }

    /// The Sync that ends a refused batch: a held backend must fail its transaction too, so a
    /// statement that raises stands in for the Sync; without one, the proxy answers alone.
    ///
    /// The stand-in goes by the extended protocol, ending in a Sync of its own: a backend
    /// already skipping to the next Sync after an earlier error in the batch skips it whole and
    /// answers the Sync, one that is not runs it, fails and answers the Sync. Either way one
    /// ReadyForQuery ends the batch, as the client's Sync would have.
    pub(super) fn sync_after_refusal(&mut self) {
        if self.backend.is_none() {
            self.last_status = b'I';
            self.local(Local::ReadyForQuery);
            return;
        }
        // The stand-in replaces the unnamed statement, which is then nobody's.
        self.unnamed_in_batch = false;
        if let Some(conn) = self.backend.as_mut() {
            conn.conn().unnamed_owner = 0;
        }
        let out = &mut self.sout;
        messages::write_message(out, b'P', |b| {
            b.put_u8(0);
            b.put_slice(REFUSAL_STAND_IN.as_bytes());
            b.put_u8(0);
            b.put_u16(0);
        });
        // Unnamed portal and statement; no parameters, no result columns.
        messages::write_message(out, b'B', |b| b.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]));
        messages::write_message(out, b'E', |b| b.put_slice(&[0, 0, 0, 0, 0]));
        messages::write_message(out, b'S', |_| {});
        self.unsynced = false;
        for reply in [Reply::Parse, Reply::Bind, Reply::Execute, Reply::Sync] {
            self.expect.push_back(Expect::Reply {
                reply,
                owner: Owner::SyncStandIn,
                parse: None,
            });
        }
    }

    /// Handles one client message whose header is at the front of `cin`.
    // Once per client message; out of line (it grew past the inlining threshold) it cost
    // about 100 instructions a transaction.
    #[inline(always)]
    pub(super) fn client_message(
        &mut self,
        tag: u8,
        len: usize,
        whole: bool,
    ) -> Result<Step, TxnEnd> {
        let held = self.backend.is_some();
        match tag {
            b'S' if !held => {
                self.unnamed_in_batch = false;
                self.cin.advance(len + 1);
                self.last_status = b'I';
                self.local(Local::ReadyForQuery);
                Ok(Step::Done)
            }
            b'H' if !held => {
                self.cin.advance(len + 1);
                Ok(Step::Done)
            }
            b'P' | b'Q' | b'D' | b'C' => {
                if !whole {
                    return Ok(Step::NeedMore);
                }
                // Borrow the message in place while `self` changes; it is consumed only when
                // handled, so a message that needs a backend first is simply looked at again.
                let cin = std::mem::take(&mut self.cin);
                let msg = &cin[..len + 1];
                let step = match tag {
                    b'P' => self.parse(msg),
                    b'Q' => Ok(self.query(msg)),
                    b'D' => self.describe(msg),
                    _ => self.close(msg),
                };
                self.cin = cin;
                if matches!(step, Ok(Step::Done)) {
                    self.cin.advance(len + 1);
                }
                step
            }
            _ if !held => Ok(Step::NeedBackend),
            b'B' => self.bind(len),
            _ => {
                let mut flush_after = false;
                let mut deallocated = None;
                if tag == b'E' && !self.portal_changes.is_empty() {
                    if !whole {
                        return Ok(Step::NeedMore);
                    }
                    (flush_after, deallocated) = self.execute_portal(len);
                }
                let take = (len + 1).min(self.cin.len());
                self.sout.put_slice(&self.cin[..take]);
                self.cin.advance(take);
                self.client_stream_left = len + 1 - take;
                match tag {
                    b'E' => {
                        self.expect_reply(Reply::Execute);
                        if let Some(named) = deallocated {
                            self.expect.push_back(Expect::Deallocated(named));
                        }
                        // A barrier mid-batch waits for replies the backend keeps until a
                        // Flush.
                        if flush_after {
                            messages::write_message(&mut self.sout, b'H', |_| {});
                        }
                    }
                    // In copy-in mode the backend ignores Sync.
                    b'S' if !self.copy_in => {
                        self.unnamed_in_batch = false;
                        if std::mem::take(&mut self.undoable_queued) {
                            self.barrier = Barrier::Undoable;
                        }
                        self.expect_reply(Reply::Sync);
                    }
                    b'F' => self.expect_reply(Reply::Query),
                    b'c' | b'f' if self.copy_in => self.copy_in = false,
                    // The backend has not said CopyInResponse yet (or this is no COPY): mark
                    // the spot, so Syncs before it can be told from those after.
                    b'c' | b'f' if !self.expect.is_empty() => {
                        self.expect.push_back(Expect::CopyEnd)
                    }
                    // Flush, CopyData: no reply of their own.
                    _ => {}
                }
                Ok(Step::Done)
            }
        }
    }
}
