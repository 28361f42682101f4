//! The Postgres wire protocol, without I/O: what the proxy must parse (startup packets, frame
//! headers) and what it must write (errors, authentication requests, parameter status).
//! Everything here works on caller-owned buffers and is covered by table tests.

pub mod frame;
pub mod messages;
pub mod startup;

/// The largest startup packet Postgres accepts (`MAX_STARTUP_PACKET_LENGTH` in libpq-be).
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;

/// The largest message a client may send while authenticating (SASL responses, passwords).
pub const MAX_AUTH_MESSAGE_LENGTH: usize = 8_192;

/// The largest message Postgres itself accepts from a client (1 GiB, `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_CLIENT_MESSAGE_LENGTH: usize = 1 << 30;

/// Protocol version 3.0, the only one pgtenant speaks.
pub const PROTOCOL_3_0: u32 = 196_608;
/// The magic version of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The magic version of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The magic version of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': inside a transaction block.
    InBlock,
    /// 'E': inside a failed transaction block.
    Failed,
}

impl TxStatus {
    /// Decodes the ReadyForQuery status byte; unknown bytes count as failed (the safe side).
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InBlock,
            _ => TxStatus::Failed,
        }
    }
}
