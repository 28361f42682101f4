//! Parsing the first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest. The caller has already read the length word and checked it against
//! [`MAX_STARTUP_PACKET_LENGTH`](super::MAX_STARTUP_PACKET_LENGTH); this module sees the rest.

use super::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};

/// The largest cancel secret protocol 3.2 allows.
pub const MAX_CANCEL_SECRET_LENGTH: usize = 256;

/// What the first packet asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client wants TLS.
    SslRequest,
    /// The client wants GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the session with this key.
    Cancel {
        /// BackendKeyData process id.
        pid: i32,
        /// BackendKeyData secret (4 bytes in protocol 3.0, up to 256 in 3.2).
        secret: Vec<u8>,
    },
    /// A normal session start.
    Startup {
        /// Major protocol version (3).
        major: u16,
        /// Minor protocol version requested (0 in practice; higher gets NegotiateProtocolVersion).
        minor: u16,
        /// Parameters in the order sent; `user` is guaranteed present.
        params: Vec<(String, String)>,
    },
}

/// Why a first packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Shorter than a version word.
    #[error("startup packet is too short")]
    TooShort,
    /// A protocol version pgtenant does not speak.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedVersion(u16, u16),
    /// Parameters not NUL-terminated, odd in number, or not UTF-8.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    /// The same parameter twice.
    #[error("duplicate startup parameter \"{0}\"")]
    Duplicate(String),
    /// No `user` parameter.
    #[error("no user name specified in startup packet")]
    NoUser,
}

/// Parses a first packet's body (everything after the length word).
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((version, rest)) = split_u32(body) else {
        return Err(StartupError::TooShort);
    };
    match version {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("request carries a body"))
        }
        CANCEL_REQUEST_CODE => parse_cancel(rest),
        _ => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedVersion(major, minor));
            }
            let params = parse_params(rest)?;
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

fn parse_cancel(rest: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((pid, secret)) = split_u32(rest) else {
        return Err(StartupError::Malformed("cancel request without a key"));
    };
    if secret.len() < 4 || secret.len() > MAX_CANCEL_SECRET_LENGTH {
        return Err(StartupError::Malformed(
            "cancel request secret has a bad length",
        ));
    }
    Ok(StartupPacket::Cancel {
        pid: pid as i32,
        secret: secret.to_vec(),
    })
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (name, after) = split_cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            break;
        }
        let (value, after) = split_cstr(after)?;
        if params.iter().any(|(n, _)| n == name) {
            return Err(StartupError::Duplicate(name.to_owned()));
        }
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
    if !params.iter().any(|(n, v)| n == "user" && !v.is_empty()) {
        return Err(StartupError::NoUser);
    }
    Ok(params)
}

fn split_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

fn split_cstr(b: &[u8]) -> Result<(&str, &[u8]), StartupError> {
    let nul = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(StartupError::Malformed("missing NUL terminator"))?;
    let s = std::str::from_utf8(&b[..nul])
        .map_err(|_| StartupError::Malformed("parameter is not UTF-8"))?;
    Ok((s, &b[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(version: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = version.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn parses_every_kind_and_rejects_bad_ones() {
        let cases: Vec<(Vec<u8>, Result<StartupPacket, StartupError>)> = vec![
            (body(SSL_REQUEST_CODE, b""), Ok(StartupPacket::SslRequest)),
            (
                body(GSSENC_REQUEST_CODE, b""),
                Ok(StartupPacket::GssEncRequest),
            ),
            (
                body(SSL_REQUEST_CODE, b"x"),
                Err(StartupError::Malformed("request carries a body")),
            ),
            (
                body(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]),
                Ok(StartupPacket::Cancel {
                    pid: 7,
                    secret: vec![1, 2, 3, 4],
                }),
            ),
            (
                body(CANCEL_REQUEST_CODE, &[0, 0, 0, 7]),
                Err(StartupError::Malformed(
                    "cancel request secret has a bad length",
                )),
            ),
            (
                body(0x0003_0000, b"user\0app\0database\0acme\0\0"),
                Ok(StartupPacket::Startup {
                    major: 3,
                    minor: 0,
                    params: vec![
                        ("user".into(), "app".into()),
                        ("database".into(), "acme".into()),
                    ],
                }),
            ),
            (
                body(0x0003_0002, b"user\0app\0\0"),
                Ok(StartupPacket::Startup {
                    major: 3,
                    minor: 2,
                    params: vec![("user".into(), "app".into())],
                }),
            ),
            (
                body(0x0002_0000, b"user\0app\0\0"),
                Err(StartupError::UnsupportedVersion(2, 0)),
            ),
            (
                body(0x0003_0000, b"database\0acme\0\0"),
                Err(StartupError::NoUser),
            ),
            (body(0x0003_0000, b"user\0\0\0"), Err(StartupError::NoUser)),
            (
                body(0x0003_0000, b"user\0app"),
                Err(StartupError::Malformed("missing NUL terminator")),
            ),
            (
                body(0x0003_0000, b"user\0app\0"),
                Err(StartupError::Malformed("missing NUL terminator")),
            ),
            (
                body(0x0003_0000, b"user\0app\0\0junk"),
                Err(StartupError::Malformed("bytes after the terminator")),
            ),
            (
                body(0x0003_0000, b"user\0a\0user\0b\0\0"),
                Err(StartupError::Duplicate("user".into())),
            ),
            (
                body(0x0003_0000, b"user\0\xff\0\0"),
                Err(StartupError::Malformed("parameter is not UTF-8")),
            ),
            (vec![0, 3], Err(StartupError::TooShort)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), want, "input {input:?}");
        }
    }
}
