//! Integration tests: real Postgres clusters, real clients, the proxy in-process or as the
//! `pgtenant` binary. One test binary so the clusters are started once per run.

mod support;

mod admin;
mod auth;
mod budgets;
mod cancel;
mod catalog;
mod cli;
mod clients;
mod drivers;
mod faults;
mod hostile;
mod large_messages;
mod lifecycle;
mod metrics;
mod pipelines;
mod pooling;
mod routing;
mod schema_changes;
mod shutdown;
mod tls;
mod transaction;
