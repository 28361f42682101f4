//! Entry points for the fuzz targets of `fuzz/` (`cargo fuzz run NAME`), one per parser that takes
//! bytes from the network or from a file: each takes arbitrary input and checks what must hold
//! whatever it is, panicking only when that breaks. `cargo test` replays the corpus kept in
//! `fuzz/corpus/NAME/` through the same functions, with a bounded number of seeded mutations of
//! it (see the tests below); the long runs are `cargo fuzz`'s (fuzz/README.md).

use std::ops::ControlFlow;

use crate::protocol::frame::FrameScanner;
use crate::protocol::{MAX_CLIENT_MESSAGE_LENGTH, startup};

mod pg_model;
mod relay;

pub use relay::{txn_pipeline, txn_replies};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("startup_packet", startup_packet),
    ("frames", frames),
    ("scram_client", scram_client),
    ("statement_classifier", statement_classifier),
    ("startup_options", startup_options),
    ("config_toml", config_toml),
    ("connection_string", connection_string),
    ("metrics_request", metrics_request),
    ("admin_command", admin_command),
    ("catalog_rows", catalog_rows),
    ("txn_pipeline", txn_pipeline),
    ("txn_replies", txn_replies),
];

/// A first packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest): parsed or
/// refused, and a startup's parameters resolve to a tenant or an error.
pub fn startup_packet(data: &[u8]) {
    if let Ok(startup::StartupPacket::Startup { params, .. }) = startup::parse(data) {
        let _ = crate::tenant::resolve::resolve(
            &params,
            &crate::config::ProxyConfig::default().resolve,
            None,
        );
    }
}

/// A stream of frames cut at an arbitrary point (the first byte picks it) scans to the same
/// frames as the whole stream, or fails the same way.
pub fn frames(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = scan_all(&[stream]);
    let at = usize::from(cut) * stream.len() / 256;
    let (a, b) = stream.split_at(at);
    assert_eq!(scan_all(&[a, b]), whole, "cut at {at}");
}

/// Tags and lengths of every frame header in `parts`, fed one after the other as a relay gets
/// them, each unconsumed rest carried over; or the error.
fn scan_all(parts: &[&[u8]]) -> Result<Vec<(u8, u32)>, (u8, u32)> {
    let mut scanner = FrameScanner::new(MAX_CLIENT_MESSAGE_LENGTH);
    let mut seen = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for part in parts {
        pending.extend_from_slice(part);
        let scanned = scanner
            .scan(&pending, |f| {
                seen.push((f.tag, f.len));
                ControlFlow::Continue(())
            })
            .map_err(|e| (e.tag, e.len))?;
        assert!(scanned.forward <= pending.len());
        pending.drain(..scanned.forward);
    }
    Ok(seen)
}

/// SCRAM client-first and client-final (split at the first 0xFF) against a verifier: they
/// fail or, for a made-up verifier, never succeed.
pub fn scram_client(data: &[u8]) {
    use crate::auth::scram::{ScramServer, ScramVerifier};
    let (first, last) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let verifier = ScramVerifier::decoy("fuzz", &[7; 32]);
    if let Ok((exchange, server_first)) = ScramServer::start(&verifier, first) {
        assert!(server_first.starts_with("r="));
        assert!(
            exchange.finish(last).is_err(),
            "a proof for a made-up verifier"
        );
    }
}

/// Statement text as a Query or Parse carries it: classified, split into statements.
pub fn statement_classifier(data: &[u8]) {
    let _ = crate::session::tracking::classify(data);
    let mut total = 0;
    for (_, text) in crate::session::tracking::statements(data) {
        total += text.len();
    }
    assert!(total <= data.len());
}

/// The `options` startup parameter (`-c name=value …`, escapes included).
pub fn startup_options(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::tenant::resolve::parse_options(text);
    }
}

/// A configuration file.
pub fn config_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_toml(text);
    }
}

/// A catalog connection string (URL or `key=value`), its TLS settings taken out.
pub fn connection_string(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::pgclient::parse(text);
    }
}

/// Catalog rows as the proxy loads them (a server and two tenants whose text columns, user
/// names and password hashes come from `data`, split at 0xFF bytes), and a change
/// notification's payload: every tenant is routed or reported as skipped.
pub fn catalog_rows(data: &[u8]) {
    use crate::config::{PoolDefaults, ServerConfig, TenantConfig, TenantUserConfig};
    use crate::error::Secret;
    use crate::tenant::snapshot::{Snapshot, SnapshotSource};
    let fields: Vec<String> = data
        .split(|&b| b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
    let _ = crate::tenant::catalog::postgres::change_time(&field(0));
    let servers = [ServerConfig {
        name: "s".into(),
        host: field(1),
        port: 5432,
        user: field(2),
        password: Secret::default(),
        max_connections: None,
        tls_mode: Some(field(3)).filter(|m| !m.is_empty()),
        tls_ca_file: None,
    }];
    let tenant = |slug: &str, at: usize| TenantConfig {
        slug: slug.into(),
        server: Some(field(at))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "s".into()),
        database: Some(field(at + 1)),
        status: field(at + 2),
        pool_mode: Some(field(at + 3)).filter(|m| !m.is_empty()),
        users: vec![TenantUserConfig {
            name: field(at + 4),
            password_hash: Secret::new(field(at + 5)),
        }],
        ..TenantConfig::default()
    };
    let tenants = [tenant("a", 4), tenant("b", 10)];
    let (snapshot, skipped) = Snapshot::build(
        &servers,
        &tenants,
        &PoolDefaults::default(),
        SnapshotSource::Catalog,
    );
    assert_eq!(snapshot.len() + skipped.len(), tenants.len());
}

/// A simple query to the admin console: each `;`-separated command read.
pub fn admin_command(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for command in text.split(';') {
            let _ = crate::admin::commands::parse(command.trim());
        }
    }
}

/// The head of an HTTP request to the metrics endpoint.
pub fn metrics_request(data: &[u8]) {
    let _ = crate::metrics::route(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Mutations of the corpus each target gets in `cargo test`, on top of the corpus itself.
    const MUTATIONS: usize = 2_000;

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
            .collect();
        inputs.sort();
        inputs
    }

    /// A corpus input with a few random edits: bytes flipped, cut, inserted or duplicated.
    fn mutate(rng: &mut rand::rngs::StdRng, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=out.len());
            match rng.random_range(0..4) {
                0 if at < out.len() => out[at] ^= 1 << rng.random_range(0..8),
                1 => out.truncate(at),
                2 => out.insert(at, rng.random()),
                _ => {
                    let end = rng.random_range(at..=out.len());
                    let copy = out[at..end].to_vec();
                    out.splice(at..at, copy);
                }
            }
        }
        out
    }

    #[test]
    fn every_target_takes_its_corpus_and_mutations_of_it() {
        for (name, target) in TARGETS {
            let inputs = corpus(name);
            assert!(!inputs.is_empty(), "{name}: empty corpus");
            for input in &inputs {
                target(input);
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
            for _ in 0..MUTATIONS {
                let base = &inputs[rng.random_range(0..inputs.len())];
                target(&mutate(&mut rng, base));
            }
        }
    }

    #[test]
    fn every_target_has_a_fuzz_target_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            assert!(dir.join(format!("{name}.rs")).is_file(), "{name}");
        }
    }
}
