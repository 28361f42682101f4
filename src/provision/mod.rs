//! The tenant lifecycle a DBA drives from the CLI: servers in the catalog, tenants provisioned
//! on them (database, schema or shared isolation, each enforced by Postgres roles and
//! privileges), tenant logins, and tenant migrations. Everything here ends as rows in the
//! catalog database, so a DBA who writes those rows with psql gets the same routing.

pub mod migrations;
pub mod servers;
pub mod sql;
pub mod tenants;

/// Why a lifecycle command failed. The text is for the DBA at the terminal: it names the step
/// and the object, never a password.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Bad input (slug, isolation, option value).
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something to be made already exists.
    #[error("{0}")]
    Exists(String),
    /// The command would break something that depends on the object.
    #[error("{0}")]
    Refused(String),
    /// A statement on a server or on the catalog failed.
    #[error("{step}: {source}")]
    Db {
        /// What was being done.
        step: String,
        /// The database's error (its message and SQLSTATE).
        source: tokio_postgres::Error,
    },
    /// A migrations directory could not be read.
    #[error("{0}")]
    Io(String),
    /// No connection to a server (TCP, or TLS as its tls_mode demands).
    #[error("{0}")]
    Connect(String),
}

impl ProvisionError {
    /// Wraps a database error with the step it broke.
    pub fn db(step: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
        let step = step.into();
        move |source| ProvisionError::Db { step, source }
    }
}

/// Result of a lifecycle step.
pub type Result<T> = std::result::Result<T, ProvisionError>;

/// How a tenant's data is kept apart from other tenants'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Its own database, owned by its own role.
    Database,
    /// Its own schema in a shared database; its role reaches only that schema.
    Schema,
    /// Rows in shared tables, filtered by row-level security keyed on its role.
    Shared,
}

impl Isolation {
    /// Parses the catalog's and the CLI's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "database" => Some(Isolation::Database),
            "schema" => Some(Isolation::Schema),
            "shared" => Some(Isolation::Shared),
            _ => None,
        }
    }

    /// The text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Database => "database",
            Isolation::Schema => "schema",
            Isolation::Shared => "shared",
        }
    }

    /// The database schema- and shared-mode tenants of a server live in unless told otherwise.
    pub fn default_shared_database(self) -> Option<&'static str> {
        match self {
            Isolation::Database => None,
            Isolation::Schema => Some("pgtenant_schemas"),
            Isolation::Shared => Some("pgtenant_shared"),
        }
    }
}
