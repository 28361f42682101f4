//! Builders for the messages the proxy writes itself. Each appends to the caller's buffer:
//! reserve the length word, write the body, fill the length in.

use bytes::{BufMut, BytesMut};

use crate::error::ClientError;

/// Appends one message with tag `tag`, whose body `body` writes.
pub fn write_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early on the peer's side; drop any.
    if memchr::memchr(0, s.as_bytes()).is_none() {
        buf.put_slice(s.as_bytes());
    } else {
        buf.extend(s.bytes().filter(|&b| b != 0));
    }
    buf.put_u8(0);
}

/// ErrorResponse ('E') for a client-facing error.
pub fn error_response(buf: &mut BytesMut, err: &ClientError) {
    write_message(buf, b'E', |b| {
        for (field, value) in [
            (b'S', err.severity.as_str()),
            (b'V', err.severity.as_str()),
            (b'C', err.code),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(b'M');
        put_cstr(b, &err.message);
        if let Some(d) = &err.detail {
            b.put_u8(b'D');
            put_cstr(b, d);
        }
        if let Some(h) = &err.hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    write_message(buf, b'R', |b| b.put_u32(0));
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    write_message(buf, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256 only (no channel binding: no TLS on this leg).
pub fn auth_sasl(buf: &mut BytesMut) {
    write_message(buf, b'R', |b| {
        b.put_u32(10);
        put_cstr(b, "SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    write_message(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    write_message(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    write_message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData with a proxy-minted key.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: [u8; 4]) {
    write_message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_slice(&secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    write_message(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: the newest minor version pgtenant speaks (0) and the `_pq_.` options
/// it does not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unrecognised: &[&str]) {
    write_message(buf, b'v', |b| {
        b.put_u32(crate::protocol::PROTOCOL_3_0);
        b.put_u32(unrecognised.len() as u32);
        for opt in unrecognised {
            put_cstr(b, opt);
        }
    });
}

/// Query ('Q'), for the proxy's own statements on backend connections.
pub fn query(buf: &mut BytesMut, sql: &str) {
    write_message(buf, b'Q', |b| put_cstr(b, sql));
}

/// CancelRequest to a backend (no tag byte: a startup-style packet).
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: &[u8]) {
    buf.put_u32(12 + secret.len() as u32);
    buf.put_u32(crate::protocol::CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_slice(secret);
}

/// Fields of an ErrorResponse or NoticeResponse body, for logging and for re-raising a backend
/// error unchanged: returns (code, message) if present.
pub fn error_fields(body: &[u8]) -> (Option<&str>, Option<&str>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(nul) = after.iter().position(|&c| c == 0) else {
            break;
        };
        let value = std::str::from_utf8(&after[..nul]).ok();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &after[nul + 1..];
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, &ClientError::unknown_tenant("a\0b"));
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let (code, msg) = error_fields(&buf[5..]);
        assert_eq!(code, Some("3D000"));
        assert_eq!(msg, Some("tenant \"ab\" does not exist"));
    }

    #[test]
    fn cancel_request_is_sixteen_bytes() {
        let mut buf = BytesMut::new();
        cancel_request(&mut buf, 42, &[1, 2, 3, 4]);
        assert_eq!(buf.len(), 16);
        assert_eq!(&buf[..4], &16u32.to_be_bytes());
    }
}
