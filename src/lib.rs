//! pgtenant: a tenant-routing Postgres proxy.
//!
//! An unmodified client connects with an ordinary URL; pgtenant reads the startup packet, resolves
//! the tenant through the catalog, authenticates the client with that tenant's own credentials and
//! relays the connection to a pooled backend connection that belongs to that tenant.
//!
//! ```text
//! listener ─► handshake (SSLRequest ─► TLS when configured, StartupMessage or CancelRequest)
//!          ─► resolve (database name | user.tenant | options  ─►  catalog snapshot)
//!          ─► auth (SCRAM-SHA-256 / md5 / trust against the tenant user's stored verifier)
//!          ─► pool.checkout(tenant) ─► relay (raw frames both ways) ─► reset ─► pool   (session)
//!          ─► per transaction: checkout ─► relay with statement/settings tracking ─► pool (transaction)
//! ```
//!
//! Module map (one responsibility each):
//! - [`config`]: the TOML file, its defaults and validation.
//! - [`error`]: client-facing errors with their SQLSTATE; internals stay in logs.
//! - [`fuzzing`]: the fuzz targets' entry points, one per parser of outside bytes.
//! - [`protocol`]: I/O-free wire pieces: startup parsing, frame scanning, message builders.
//! - [`handshake`]: the pre-authentication leg of a client connection.
//! - [`auth`]: SCRAM-SHA-256 / md5 / trust for clients, and the proxy's own backend login.
//! - [`tenant`]: pure tenant resolution, the routing snapshot and the catalog sources.
//! - [`pool`]: backend connections (plain or TLS per server), per-tenant pools with a guard that
//!   returns on drop, each server's shared connection budget with fair hand-off between tenants,
//!   and the PAUSE gates that hold new transactions.
//! - [`session`]: a client's life after login: parameter sync, the session relay, the
//!   transaction-mode session (prepared statements, tracked settings, pinning), cancel routing.
//! - [`server`]: the accept loop, connection permits and shutdown.
//! - [`metrics`]: the Prometheus endpoint, rendered from live state at scrape time.
//! - [`pgclient`]: the proxy's own tokio-postgres connections (catalog, provisioning), over
//!   the backend TLS negotiation, with libpq's `sslmode` and `sslrootcert`.
//! - [`stats`]: per-tenant usage counters, added once per transaction.
//! - [`usage`]: per-tenant usage flushed to the catalog database.
//! - [`tls`]: client-facing TLS acceptors per listener, reloadable; the TLS client stream.
//! - [`reload`]: re-reading the config file on SIGHUP or RELOAD.
//! - [`admin`]: the admin console reached with psql through the reserved database name.
//! - [`localpg`]: throwaway local Postgres clusters (quickstart and tests).
//! - [`quickstart`]: a throwaway local cluster with two demo tenants.
//! - [`wire`]: bounded whole-message reads for the login legs.
//! - [`provision`]: the tenant lifecycle: servers, tenants in three isolation modes, logins,
//!   tenant migrations, all as catalog rows.
//! - [`cli`]: the command-line surface of the `pgtenant` binary.
//! - [`logging`]: the log subscriber and the plain-text line format.

#![deny(
    clippy::unwrap_used,
    clippy::todo,
    clippy::unimplemented,
    clippy::dbg_macro
)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod handshake;
pub mod localpg;
pub mod logging;
pub mod metrics;
pub mod pgclient;
pub mod pool;
pub mod protocol;
pub mod provision;
pub mod quickstart;
pub mod reload;
pub mod server;
pub mod session;
pub mod stats;
pub mod tenant;
pub mod tls;
pub mod usage;
pub mod wire;
