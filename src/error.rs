//! Errors a client may see. Each carries its SQLSTATE and only text chosen for clients; the
//! underlying cause (I/O errors, backend internals) goes to the log, never onto the wire.

use std::fmt;

/// SQLSTATE codes pgtenant itself sends.
pub mod sqlstate {
    /// The named tenant (database) does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// Wrong password or unknown user.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Authorization problem that is not a wrong password (e.g. missing user name).
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// A pool, a tenant or the proxy is full.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// The client broke the wire protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The connection was refused for a reason that is not the client's fault.
    pub const CONNECTION_REJECTED: &str = "08004";
    /// The backend could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// The proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The tenant is paused and did not resume in time.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// The tenant is disabled.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// A feature pgtenant does not offer (replication connections, protocol 2).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Something went wrong inside the proxy.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// config_file_error (RELOAD of an invalid file).
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    /// syntax_error (an admin command pgtenant does not know).
    pub const SYNTAX_ERROR: &str = "42601";
    /// A prepared statement by that name already exists.
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    /// A limit of the proxy's was reached.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// invalid_sql_statement_name
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// in_failed_sql_transaction
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    /// A wait the proxy gave up on (PAUSE that running transactions outlasted).
    pub const QUERY_CANCELED: &str = "57014";
}

/// How bad it is; FATAL ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed, the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    /// The word Postgres puts in the `S`/`V` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error destined for a client as an ErrorResponse. Its text is client-safe by construction:
/// only the named constructors below build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional DETAIL.
    pub detail: Option<String>,
    /// Optional HINT.
    pub hint: Option<String>,
}

/// How a client names its tenant; shown as the hint when resolution fails.
pub const TENANT_HINT: &str = "Name the tenant as the database (postgresql://user@host:6432/TENANT), \
as a user suffix (user.TENANT), or with options=-c pgtenant.tenant=TENANT.";

impl ClientError {
    /// A FATAL error with a code and message.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a HINT.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a DETAIL.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The tenant named by the client is not in the catalog.
    pub fn unknown_tenant(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("tenant \"{tenant}\" does not exist"),
        )
        .with_hint(TENANT_HINT)
    }

    /// The startup packet named no tenant at all.
    pub fn no_tenant() -> Self {
        Self::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            "no tenant named in the connection",
        )
        .with_hint(TENANT_HINT)
    }

    /// Two resolution strategies named different tenants.
    pub fn conflicting_tenants(first: (&str, &str), second: (&str, &str)) -> Self {
        Self::fatal(
            sqlstate::CONNECTION_REJECTED,
            format!(
                "conflicting tenants: the {} names \"{}\" but the {} names \"{}\"",
                first.0, first.1, second.0, second.1
            ),
        )
        .with_hint(TENANT_HINT)
    }

    /// Wrong password or unknown user: deliberately the same text for both.
    pub fn password_failed(user: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    /// The client broke the protocol.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, message)
    }

    /// The tenant is disabled in the catalog.
    pub fn tenant_disabled(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{tenant}\" is disabled and not accepting connections"),
        )
    }

    /// The tenant was disabled or removed while this client was connected.
    pub fn tenant_closed(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            format!("terminating connection because tenant \"{tenant}\" was disabled or removed"),
        )
    }

    /// An admin ran KILL on the client's tenant.
    pub fn killed_by_admin(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            format!(
                "terminating connection: an administrator killed the clients of tenant \"{tenant}\""
            ),
        )
    }

    /// The tenant stayed paused longer than the client may wait.
    pub fn tenant_paused(tenant: &str, waited_ms: u64) -> Self {
        Self::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("tenant \"{tenant}\" is paused (waited {waited_ms} ms for it to resume)"),
        )
    }

    /// An ERROR (the session goes on) with a code and message.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }

    /// No pool connection became free in time.
    pub fn pool_exhausted(tenant: &str, limits: &str, waited_ms: u64) -> Self {
        Self::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "tenant \"{tenant}\": no server connection became free within {waited_ms} ms ({limits})"
            ),
        )
    }

    /// The tenant already has as many clients as it may.
    pub fn tenant_client_limit(tenant: &str, limit: u32) -> Self {
        Self::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("tenant \"{tenant}\" has too many clients already (limit {limit})"),
        )
    }

    /// The backend connection went away without a word.
    pub fn server_lost(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("the server connection of tenant \"{tenant}\" was lost"),
        )
    }

    /// The tenant's server owed replies and sent nothing for `[pool] reply_timeout_ms`.
    pub fn server_silent(tenant: &str, limit_ms: u64) -> Self {
        Self::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "the server of tenant \"{tenant}\" sent nothing for {limit_ms} ms while a reply was due; the connection was closed"
            ),
        )
        .with_hint("The server or the network to it may be hung; see [pool] reply_timeout_ms.")
    }

    /// Transaction mode refuses a statement whose state could not follow the client.
    pub fn session_state_refused(what: &str) -> Self {
        Self::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} is not supported in transaction pooling mode"),
        )
        .with_hint("Use session pooling for this tenant, or set pool.session_state = \"pin\".")
    }

    /// A client reused a prepared statement name.
    pub fn duplicate_statement(name: &str) -> Self {
        Self::error(
            sqlstate::DUPLICATE_PREPARED_STATEMENT,
            format!("prepared statement \"{name}\" already exists"),
        )
    }

    /// A client deallocated a prepared statement it does not have.
    pub fn unknown_statement(name: &str) -> Self {
        Self::error(
            sqlstate::INVALID_SQL_STATEMENT_NAME,
            format!("prepared statement \"{name}\" does not exist"),
        )
    }

    /// A statement other than the end of a failed transaction, as Postgres refuses it.
    pub fn failed_transaction() -> Self {
        Self::error(
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    }

    /// A client prepared more statements than the proxy keeps for one client.
    pub fn too_many_statements(limit: usize) -> Self {
        Self::error(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("too many prepared statements in this session (limit {limit})"),
        )
    }

    /// The proxy's own client limit is reached.
    pub fn too_many_clients(limit: usize) -> Self {
        Self::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("too many clients already (limit {limit})"),
        )
    }

    /// The tenant's server could not be reached or refused the proxy's login.
    pub fn backend_unavailable(tenant: &str) -> Self {
        Self::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("could not connect to the server of tenant \"{tenant}\""),
        )
        .with_hint("The server may be down; the proxy's log has the cause.")
    }

    /// The proxy is shutting down.
    pub fn shutting_down() -> Self {
        Self::fatal(sqlstate::ADMIN_SHUTDOWN, "pgtenant is shutting down")
    }

    /// Something pgtenant does not do.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::fatal(sqlstate::FEATURE_NOT_SUPPORTED, message)
    }

    /// A failure inside the proxy; the cause is logged, not shown.
    pub fn internal() -> Self {
        Self::fatal(sqlstate::INTERNAL_ERROR, "internal error in pgtenant")
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ClientError {}

/// A secret string (password, connection URL with password): never printed by Debug or Display.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn unknown_tenant_names_tenant_and_hints() {
        let e = ClientError::unknown_tenant("acme");
        assert_eq!(e.code, "3D000");
        assert!(e.message.contains("\"acme\""));
        assert!(
            e.hint
                .as_deref()
                .unwrap_or_default()
                .contains("user.TENANT")
        );
    }
}
