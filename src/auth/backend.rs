//! The proxy's own login to a backend: startup message, then whatever the server asks for
//! (trust, cleartext, md5 or SCRAM-SHA-256 via postgres-protocol), up to ReadyForQuery.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::protocol::messages::error_fields;
use crate::tenant::BackendTarget;
use crate::wire::{self, take_cstr};

/// Largest message accepted from a backend during login.
const MAX_LOGIN_MESSAGE_LENGTH: usize = 1 << 20;

/// What a successful login leaves behind.
#[derive(Debug, Default)]
pub struct BackendLogin {
    /// ParameterStatus values reported by the backend.
    pub params: ServerParams,
    /// BackendKeyData process id.
    pub pid: i32,
    /// BackendKeyData secret.
    pub secret: Vec<u8>,
}

/// Why a backend login failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendLoginError {
    /// The socket failed.
    #[error("backend connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The backend sent an ErrorResponse.
    #[error("backend refused login: {code} {message}")]
    Rejected {
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// The backend broke the protocol or asked for something unsupported.
    #[error("backend login failed: {0}")]
    Protocol(String),
}

impl From<wire::WireError> for BackendLoginError {
    fn from(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Io(io) => BackendLoginError::Io(io),
            other => BackendLoginError::Protocol(other.to_string()),
        }
    }
}

fn io_err(e: std::io::Error) -> BackendLoginError {
    BackendLoginError::Protocol(e.to_string())
}

/// Logs in as `target.user` to `target.database`.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &BackendTarget,
) -> Result<BackendLogin, BackendLoginError> {
    let mut out = BytesMut::with_capacity(256);
    // No application_name: a client that sets none sees the server's default, as on a direct
    // connection, and so does its RESET.
    let params = [
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
        ("client_encoding", "UTF8"),
    ];
    frontend::startup_message(params.iter().copied(), &mut out).map_err(io_err)?;
    stream.write_all(&out).await?;
    let password = target.password.expose().as_bytes();
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut scram: Option<ScramSha256> = None;
    let mut login = BackendLogin::default();
    loop {
        let (tag, body) = wire::read_message(stream, &mut rbuf, MAX_LOGIN_MESSAGE_LENGTH).await?;
        out.clear();
        match tag {
            b'R' => {
                let Some((code, data)) = body.split_first_chunk::<4>() else {
                    return Err(BackendLoginError::Protocol(
                        "short authentication request".into(),
                    ));
                };
                match u32::from_be_bytes(*code) {
                    0 => continue,
                    3 => frontend::password_message(password, &mut out).map_err(io_err)?,
                    5 => {
                        let salt: [u8; 4] = data
                            .try_into()
                            .map_err(|_| BackendLoginError::Protocol("bad md5 salt".into()))?;
                        let hash = md5_hash(target.user.as_bytes(), password, salt);
                        frontend::password_message(hash.as_bytes(), &mut out).map_err(io_err)?;
                    }
                    10 => {
                        if !sasl_mechanisms(data).any(|m| m == "SCRAM-SHA-256") {
                            return Err(BackendLoginError::Protocol(
                                "server offers no SCRAM-SHA-256".into(),
                            ));
                        }
                        let s = ScramSha256::new(password, ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                            .map_err(io_err)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| BackendLoginError::Protocol("unexpected SASL".into()))?;
                        s.update(data).map_err(io_err)?;
                        frontend::sasl_response(s.message(), &mut out).map_err(io_err)?;
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| BackendLoginError::Protocol("unexpected SASL".into()))?;
                        s.finish(data).map_err(io_err)?;
                        continue;
                    }
                    other => {
                        return Err(BackendLoginError::Protocol(format!(
                            "unsupported authentication request {other}"
                        )));
                    }
                }
                stream.write_all(&out).await?;
            }
            b'S' => {
                if let Some((name, rest)) = take_cstr(&body)
                    && let Some((value, _)) = take_cstr(rest)
                {
                    login.params.set(name, value);
                }
            }
            b'K' => {
                let Some((pid, secret)) = body.split_first_chunk::<4>() else {
                    return Err(BackendLoginError::Protocol("short BackendKeyData".into()));
                };
                login.pid = i32::from_be_bytes(*pid);
                login.secret = secret.to_vec();
            }
            b'Z' => return Ok(login),
            b'E' => {
                let (code, message) = error_fields(&body);
                return Err(BackendLoginError::Rejected {
                    code: code.unwrap_or("XX000").to_owned(),
                    message: message.unwrap_or("").to_owned(),
                });
            }
            // NoticeResponse, NegotiateProtocolVersion: nothing to do.
            _ => {}
        }
    }
}

/// A backend's ParameterStatus values, with the messages that report them to a client kept
/// beside them: every login a connection serves sends the same dozen messages, and copying one
/// block costs less than encoding each again.
#[derive(Debug, Default)]
pub struct ServerParams {
    values: Vec<(String, String)>,
    /// ParameterStatus messages for `values`, encoded on first use after a change.
    encoded: Option<BytesMut>,
}

impl ServerParams {
    /// Records a value, replacing an earlier one of the same name.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.values.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if v == value => return,
            Some((_, v)) => {
                v.clear();
                v.push_str(value);
            }
            None => self.values.push((name.to_owned(), value.to_owned())),
        }
        self.encoded = None;
    }

    /// The value last reported for a parameter (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends one ParameterStatus message per value, in the order the backend reported them.
    pub fn put_status_messages(&mut self, out: &mut BytesMut) {
        let values = &self.values;
        let encoded = self.encoded.get_or_insert_with(|| {
            let mut buf = BytesMut::new();
            for (name, value) in values {
                crate::protocol::messages::parameter_status(&mut buf, name, value);
            }
            buf
        });
        out.extend_from_slice(encoded);
    }
}

fn sasl_mechanisms(mut data: &[u8]) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let (m, rest) = take_cstr(data)?;
        data = rest;
        (!m.is_empty()).then_some(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::parameter_status;

    fn encoded_fresh(values: &[(&str, &str)]) -> BytesMut {
        let mut out = BytesMut::new();
        for (name, value) in values {
            parameter_status(&mut out, name, value);
        }
        out
    }

    fn status_messages(params: &mut ServerParams) -> BytesMut {
        let mut out = BytesMut::from(&b"before"[..]);
        params.put_status_messages(&mut out);
        assert_eq!(&out[..6], b"before", "appends, never replaces");
        out.split_off(6)
    }

    #[test]
    fn status_messages_follow_every_change() {
        let mut params = ServerParams::default();
        assert!(status_messages(&mut params).is_empty());
        params.set("server_version", "15.18");
        params.set("application_name", "");
        params.set("TimeZone", "UTC");
        let first = status_messages(&mut params);
        assert_eq!(
            first,
            encoded_fresh(&[
                ("server_version", "15.18"),
                ("application_name", ""),
                ("TimeZone", "UTC")
            ])
        );
        // Served again from the kept block, unchanged.
        assert_eq!(status_messages(&mut params), first);
        // A change of value keeps the backend's order; a new name goes last.
        params.set("application_name", "billing");
        params.set("DateStyle", "ISO, DMY");
        assert_eq!(
            status_messages(&mut params),
            encoded_fresh(&[
                ("server_version", "15.18"),
                ("application_name", "billing"),
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO, DMY")
            ])
        );
        // Setting the value it already has changes nothing.
        params.set("TimeZone", "UTC");
        assert_eq!(params.get("timezone"), Some("UTC"));
        assert_eq!(params.get("application_name"), Some("billing"));
        assert_eq!(params.get("search_path"), None);
    }
}
