//! The queue of expected replies: what each entry stands for, whose reply it is, and what the
//! proxy undoes or applies when the backend answers, fails or skips it.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::ClientError;
use crate::session::prepared::Statement;
use crate::session::tracking::SettingsChange;

/// The backend message that completes a forwarded client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// Query or FunctionCall: everything up to ReadyForQuery.
    Query,
}

/// Whose reply it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// The client's: forwarded.
    Client,
    /// The proxy's own message: swallowed.
    Proxy,
    /// The proxy's replacement for a Sync after a refused message: only its ReadyForQuery is
    /// forwarded.
    SyncStandIn,
    /// The second of two Parses of the same text under the scratch name, for a client's Parse
    /// of a name it already has (see `TxnSession::parse_duplicate`): it fails with "already
    /// exists", which the proxy words with the client's name.
    DuplicateCheck,
}

/// A reply the proxy writes itself, in order with the backend's.
#[derive(Debug)]
pub(super) enum Local {
    /// A Close the proxy answers alone; of a named statement, the one it forgot.
    CloseComplete(Option<NamedStatement>),
    Error(Box<ClientError>),
    CommandComplete(&'static str),
    /// ReadyForQuery with the transaction status the backend last reported.
    ReadyForQuery,
}

#[derive(Debug)]
pub(super) enum Expect {
    Reply {
        reply: Reply,
        owner: Owner,
        /// A named Parse the client or proxy sent: undone if it fails.
        parse: Option<ParseUndo>,
    },
    Local(Local),
    /// Where the client ended a COPY FROM STDIN (CopyDone or CopyFail): Syncs it sent before
    /// this point, while the backend was in copy-in mode, are ignored by the backend.
    CopyEnd,
    /// A settings change of the statement whose reply follows (see `TxnSession::pend`).
    Pending(Pending),
    /// A statement of the client's that the Execute before it deallocates: forgotten already,
    /// and known again if the backend fails or skips that Execute.
    Deallocated(NamedStatement),
    /// Follows a client's unnamed Parse (or the proxy's Close of the unnamed statement) that
    /// replies due before it could make the backend skip: when reached, whose the connection's
    /// unnamed statement now is (see `TxnSession::own_unnamed`); dropped if skipped.
    UnnamedOwner(u64),
    /// Follows a client's unnamed Parse that replies due before it could make the backend
    /// skip: the settings change of the unnamed statement it replaces, which is the unnamed
    /// statement's again if it is skipped (and no later unnamed Parse is queued).
    UnnamedChange(Option<Arc<SettingsChange>>),
}

/// Why the client's messages up to its next Sync are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    None,
    /// The proxy refused one: the Sync is replaced (see `TxnSession::sync_after_refusal`).
    Refused,
    /// The backend is skipping to the Sync after an error, which the client has not sent
    /// yet: it would skip them and answer none. The Sync goes on.
    Backend,
}

/// What the client's next message must wait for before the proxy handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Barrier {
    None,
    /// A Sync went out while statements the proxy created or forgot in advance could still be
    /// undone (a failed or skipped Parse or Close): messages after the Sync run on the backend
    /// whatever happened, so the proxy must know which statements exist before it maps names.
    Undoable,
    /// Everything due must have been answered: after DISCARD ALL or DEALLOCATE ALL (which
    /// statements exist is known then), and before a DEALLOCATE the proxy decides on.
    Drained,
}

impl Expect {
    /// Not a backend reply: taken off the queue (written, applied or dropped) as soon as
    /// everything before it has been answered.
    #[inline(always)]
    pub(super) fn is_marker(&self) -> bool {
        !matches!(self, Expect::Reply { .. })
    }

    /// A reply whose failure, or whose request the backend skips, changes which statements
    /// the client or the connection has (see `TxnSession::undo`).
    pub(super) fn may_be_undone(&self) -> bool {
        matches!(
            self,
            Expect::Reply { parse: Some(_), .. }
                | Expect::Local(Local::CloseComplete(Some(_)))
                | Expect::Deallocated(_)
                | Expect::UnnamedOwner(_)
                | Expect::UnnamedChange(_)
        )
    }
}

#[derive(Debug)]
pub(super) struct ParseUndo {
    pub(super) client_name: Option<Box<[u8]>>,
    pub(super) stmt: Arc<Statement>,
}

/// A client's statement name and the statement it stood for: what a Close the proxy answered
/// alone changed, undone if the backend skips the batch before it.
#[derive(Debug)]
pub(super) struct NamedStatement {
    pub(super) name: Box<[u8]>,
    pub(super) stmt: Arc<Statement>,
}

/// An open portal whose execution changes settings.
#[derive(Debug)]
pub(super) struct PortalChange {
    /// Its name; "" the unnamed portal.
    pub(super) portal: Box<[u8]>,
    pub(super) change: Arc<SettingsChange>,
    /// ReadyForQuery replies due, when it was bound, for batches sent before it: the next one
    /// after those ends its transaction if it says idle.
    pub(super) earlier_batches: usize,
}

/// Changes to the client's settings made inside the current transaction, applied when it ends
/// without error or rollback.
#[derive(Debug)]
pub(super) enum Pending {
    Set(String, Bytes),
    Reset(String),
    ResetAll,
}

/// What a server message means for the queue.
pub(super) enum ServerAction {
    Forward,
    Swallow,
}

impl ServerAction {
    /// Replies the client asked for (or nobody, on a desynchronised queue) reach it; the
    /// proxy's own are swallowed.
    pub(super) fn for_owner(owner: Option<Owner>) -> ServerAction {
        if owner == Some(Owner::Client) || owner.is_none() {
            ServerAction::Forward
        } else {
            ServerAction::Swallow
        }
    }
}
