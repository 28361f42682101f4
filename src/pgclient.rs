//! tokio-postgres connections of the proxy and the CLI's own (the catalog database, and the
//! servers for provisioning), secured by the same TLS negotiation as backend connections
//! ([`crate::pool::backend_tls`]): the catalog holds every backend password, so its connections
//! honour libpq's `sslmode` (disable, allow, prefer, require, verify-ca, verify-full) and
//! `sslrootcert`, and provisioning follows each server's `tls_mode` and `tls_ca_file`.
//!
//! tokio-postgres itself knows only disable, prefer and require, and no `sslrootcert`: those two
//! parameters are taken out of the connection string here, the socket is opened and secured
//! here, and tokio-postgres logs in over it (`connect_raw`).

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::pool::backend_tls::{self, BackendTls, BackendTlsError};

/// How long opening a connection may take when the connection string says nothing.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket tokio-postgres talks over: TCP (plain or TLS) or a Unix socket.
pub trait PgIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> PgIo for T {}

/// A connection to drive in a task of its own.
pub type PgConnection = Connection<Box<dyn PgIo>, NoTlsStream>;

/// Why a connection could not be made. The text never carries the connection string.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string could not be read.
    #[error("invalid connection string: {0}")]
    BadString(String),
    /// Nothing answered in time.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// No TCP connection.
    #[error("connecting to {0}: {1}")]
    Io(String, std::io::Error),
    /// TLS could not be set up as the settings demand.
    #[error("{0}")]
    Tls(#[from] BackendTlsError),
    /// The server refused the login or broke off.
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A connection string without `sslmode` and `sslrootcert` (which tokio-postgres cannot take),
/// and the TLS settings they made: libpq's default `prefer` when absent; `allow` is taken as
/// `prefer` (both end in plaintext only when the server offers no TLS).
pub fn split_tls(conninfo: &str) -> Result<(String, BackendTls), ConnectError> {
    let (rest, mode, root) = if let Some((base, query)) = conninfo
        .split_once('?')
        .filter(|_| conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        let (mut mode, mut root) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(percent_decode(v)?),
                Some(("sslrootcert", v)) => root = Some(percent_decode(v)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode, root)
    } else if conninfo.contains("://") {
        (conninfo.to_owned(), None, None)
    } else {
        split_keyword_tls(conninfo)?
    };
    let mode = match mode.as_deref() {
        Some("allow") => Some("prefer"),
        other => other,
    };
    let tls = BackendTls::from_settings(mode, root.as_deref(), ["sslmode", "sslrootcert"])
        .map_err(ConnectError::BadString)?;
    Ok((rest, tls))
}

/// [`split_tls`] for the `key=value` form: values bare or in single quotes, with `\` escaping
/// a quote or a backslash, as libpq reads them.
fn split_keyword_tls(
    conninfo: &str,
) -> Result<(String, Option<String>, Option<String>), ConnectError> {
    let bad = || ConnectError::BadString("a value is not closed or a key has no value".into());
    let mut kept = String::new();
    let (mut mode, mut root) = (None, None);
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next().ok_or_else(bad)? {
                    '\'' => break,
                    '\\' => {
                        let c = chars.next().ok_or_else(bad)?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    c => {
                        raw.push(c);
                        value.push(c);
                    }
                }
            }
            raw.push('\'');
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                // The escape stays in what is handed on; the value has the character alone.
                let c = if c == '\\' {
                    raw.push('\\');
                    chars.next().ok_or_else(bad)?
                } else {
                    c
                };
                raw.push(c);
                value.push(c);
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => {
                if !kept.is_empty() {
                    kept.push(' ');
                }
                kept.push_str(&key);
                kept.push('=');
                kept.push_str(&raw);
            }
        }
    }
    Ok((kept, mode, root))
}

fn percent_decode(value: &str) -> Result<String, ConnectError> {
    let bad = || ConnectError::BadString("bad percent-encoding".into());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Parses a connection string, TLS settings included.
pub fn parse(conninfo: &str) -> Result<(Config, BackendTls), ConnectError> {
    let (rest, tls) = split_tls(conninfo)?;
    let config = rest
        .parse::<Config>()
        .map_err(|e| ConnectError::BadString(e.to_string()))?;
    Ok((config, tls))
}

/// Logs in as `config` says over a connection secured as `tls` says, trying each host in turn
/// (a Unix socket needs no TLS). The connection must be driven (spawned) for the client to work.
pub async fn connect(
    config: &Config,
    tls: &BackendTls,
) -> Result<(Client, PgConnection), ConnectError> {
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let ports = config.get_ports();
    let mut last = ConnectError::BadString("no host".into());
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let attempt = async {
            let stream: Box<dyn PgIo> = match host {
                Host::Tcp(name) => {
                    // `hostaddr` names the address to connect to; `host` stays the name the
                    // certificate is checked against.
                    let tcp = match config.get_hostaddrs().get(i) {
                        Some(ip) => tokio::net::TcpStream::connect((*ip, port)).await,
                        None => tokio::net::TcpStream::connect((name.as_str(), port)).await,
                    }
                    .map_err(|e| ConnectError::Io(host_label(host, port), e))?;
                    let _ = tcp.set_nodelay(true);
                    Box::new(backend_tls::negotiate(tcp, name, tls).await?)
                }
                Host::Unix(_) => Box::new(
                    tokio::net::UnixStream::connect(host_label(host, port))
                        .await
                        .map_err(|e| ConnectError::Io(host_label(host, port), e))?,
                ),
            };
            let mut raw = config.clone();
            raw.ssl_mode(tokio_postgres::config::SslMode::Disable);
            Ok::<_, ConnectError>(raw.connect_raw(stream, NoTls).await?)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(e)) => last = e,
            Err(_) => last = ConnectError::Timeout(host_label(host, port)),
        }
    }
    Err(last)
}

fn host_label(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(name) => format!("{name}:{port}"),
        Host::Unix(dir) => dir.join(format!(".s.PGSQL.{port}")).display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::backend_tls::BackendTlsMode;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_urls_and_keyword_strings() {
        let cases = [
            (
                "postgresql://u:p@h:5/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
                "postgresql://u:p@h:5/db?application_name=x",
                BackendTlsMode::VerifyFull,
                Some("/etc/ca.pem"),
            ),
            (
                "postgres://h/db?sslmode=require",
                "postgres://h/db",
                BackendTlsMode::Require,
                None,
            ),
            (
                "postgresql://h/db",
                "postgresql://h/db",
                BackendTlsMode::Prefer,
                None,
            ),
            (
                "host=h sslmode = 'verify-ca' sslrootcert='/a b/c\\'d.pem' password='x y'",
                "host=h password='x y'",
                BackendTlsMode::VerifyCa,
                Some("/a b/c'd.pem"),
            ),
            (
                "host=h sslmode=disable",
                "host=h",
                BackendTlsMode::Disable,
                None,
            ),
            (
                "host=h sslmode=allow",
                "host=h",
                BackendTlsMode::Prefer,
                None,
            ),
        ];
        for (input, rest, mode, root) in cases {
            let (got, tls) = split_tls(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, rest, "{input}");
            assert_eq!(tls.mode, mode, "{input}");
            assert_eq!(tls.ca_file.as_deref(), root, "{input}");
            parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        }
        // What is handed on reads back as the same password.
        let (config, _) = parse("host=h password=a\\ b sslmode=require").expect("parse");
        assert_eq!(config.get_password(), Some(&b"a b"[..]));
    }

    #[test]
    fn bad_tls_settings_are_refused_without_echoing_the_string() {
        for input in [
            "postgresql://u:hunter2@h/db?sslmode=sometimes",
            "postgresql://u:hunter2@h/db?sslmode=verify-full",
            "host=h password=hunter2 sslmode=verify-ca",
            "host=h password='hunter2",
            "postgresql://u:hunter2@h/db?sslrootcert=%zz",
        ] {
            let e = split_tls(input).expect_err(input).to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
