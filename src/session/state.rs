//! Where a client's backend link stands, driven by the frames the relay sees: which requests
//! still await a ReadyForQuery, and the transaction status the last one reported. Release
//! decisions (reuse, roll back, or close) come from this alone.

use crate::protocol::TxStatus;

/// The link between a client and its backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Nothing outstanding; the backend reported this status last.
    Ready(TxStatus),
    /// Messages were sent since the last ReadyForQuery; `awaiting` of them (Query, Sync,
    /// FunctionCall) will each be answered by one. Zero means an unsynced extended-protocol batch.
    Busy {
        /// ReadyForQuery messages still due.
        awaiting: u32,
    },
}

impl LinkState {
    /// A client frame with this tag went to the backend.
    pub fn on_client_frame(&mut self, tag: u8) {
        let syncs = u32::from(matches!(tag, b'Q' | b'S' | b'F'));
        *self = match *self {
            LinkState::Ready(_) => LinkState::Busy { awaiting: syncs },
            LinkState::Busy { awaiting } => LinkState::Busy {
                awaiting: awaiting.saturating_add(syncs),
            },
        };
    }

    /// The backend sent ReadyForQuery with this status byte.
    pub fn on_ready_for_query(&mut self, status: u8) {
        let status = TxStatus::from_byte(status);
        *self = match *self {
            LinkState::Busy { awaiting } if awaiting > 1 => LinkState::Busy {
                awaiting: awaiting - 1,
            },
            _ => LinkState::Ready(status),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(client_then_server: &[(&[u8], &[u8])]) -> LinkState {
        let mut s = LinkState::Ready(TxStatus::Idle);
        for (client, server) in client_then_server {
            client.iter().for_each(|&t| s.on_client_frame(t));
            server.iter().for_each(|&z| s.on_ready_for_query(z));
        }
        s
    }

    #[test]
    fn transitions() {
        assert_eq!(run(&[(b"Q", b"I")]), LinkState::Ready(TxStatus::Idle));
        assert_eq!(run(&[(b"Q", b"T")]), LinkState::Ready(TxStatus::InBlock));
        assert_eq!(run(&[(b"PBDES", b"E")]), LinkState::Ready(TxStatus::Failed));
        // Pipelined: two syncs, one answer so far.
        assert_eq!(run(&[(b"PBESPBES", b"I")]), LinkState::Busy { awaiting: 1 });
        assert_eq!(
            run(&[(b"PBESPBES", b"II")]),
            LinkState::Ready(TxStatus::Idle)
        );
        // Parse without Sync: busy with nothing due.
        assert_eq!(
            run(&[(b"Q", b"I"), (b"PH", b"")]),
            LinkState::Busy { awaiting: 0 }
        );
        // COPY data frames add no awaited reply.
        assert_eq!(run(&[(b"Qddc", b"I")]), LinkState::Ready(TxStatus::Idle));
    }
}
