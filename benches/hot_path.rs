//! Micro-benchmarks of the per-message and per-connection pure pieces: the relay's frame
//! scanner, startup packet parsing, tenant resolution and lookup in a 100k-tenant snapshot.

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgtenant::config::{PoolDefaults, ResolveStrategy, ServerConfig, TenantConfig};
use pgtenant::protocol::frame::FrameScanner;
use pgtenant::protocol::startup;
use pgtenant::tenant::resolve::resolve;
use pgtenant::tenant::snapshot::{Snapshot, SnapshotSource};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn frame_scanner(c: &mut Criterion) {
    // A typical `pgbench -S` reply, and a 64 KiB buffer of 100-byte rows.
    let mut small = msg(b'T', &[0; 27]);
    small.extend(msg(b'D', &[0; 14]));
    small.extend(msg(b'C', b"SELECT 1\0"));
    small.extend(msg(b'Z', b"I"));
    let mut rows = Vec::new();
    while rows.len() < 64 * 1024 - 110 {
        rows.extend(msg(b'D', &[1; 100]));
    }
    let mut g = c.benchmark_group("frame_scanner");
    for (name, buf) in [("select_reply", &small), ("64k_of_rows", &rows)] {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = FrameScanner::new(usize::MAX);
                let mut ready = 0u8;
                let r = s.scan(black_box(buf), |f| {
                    if f.tag == b'Z' {
                        ready = f.status;
                    }
                    ControlFlow::Continue(())
                });
                black_box((r.ok(), ready))
            })
        });
    }
    g.finish();
}

fn startup_parsing(c: &mut Criterion) {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(
        b"user\0app.acme\0database\0acme\0application_name\0psql\0client_encoding\0UTF8\0options\0-c pgtenant.tenant=acme\0\0",
    );
    let params = match startup::parse(&body) {
        Ok(startup::StartupPacket::Startup { params, .. }) => params,
        other => panic!("benchmark input does not parse: {other:?}"),
    };
    let strategies = [
        ResolveStrategy::Database,
        ResolveStrategy::UserSuffix,
        ResolveStrategy::Options,
    ];
    c.bench_function("startup_parse", |b| {
        b.iter(|| black_box(startup::parse(black_box(&body)).is_ok()))
    });
    c.bench_function("tenant_resolve", |b| {
        b.iter(|| black_box(resolve(black_box(&params), &strategies, None).is_ok()))
    });
}

fn snapshot_lookup(c: &mut Criterion) {
    let servers = vec![ServerConfig {
        name: "s".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        user: "u".into(),
        ..Default::default()
    }];
    let tenants: Vec<TenantConfig> = (0..100_000)
        .map(|i| TenantConfig {
            slug: format!("tenant-{i}"),
            server: "s".into(),
            status: "active".into(),
            ..Default::default()
        })
        .collect();
    let (snap, _) = Snapshot::build(
        &servers,
        &tenants,
        &PoolDefaults::default(),
        SnapshotSource::Catalog,
    );
    assert_eq!(snap.len(), 100_000);
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("tenant-{}", (i * 7919) % 100_000))
        .collect();
    c.bench_function("snapshot_lookup_100k", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(snap.tenant(black_box(&keys[i])).is_some())
        })
    });
    c.bench_function("snapshot_build_100k", |b| {
        b.iter(|| {
            black_box(
                Snapshot::build(
                    &servers,
                    &tenants,
                    &PoolDefaults::default(),
                    SnapshotSource::Catalog,
                )
                .0
                .len(),
            )
        })
    });
}

fn statement_classification(c: &mut Criterion) {
    use pgtenant::session::tracking::classify;
    let select = b"SELECT abalance FROM pgbench_accounts WHERE aid = 62316;";
    c.bench_function("classify/pgbench select", |b| {
        b.iter(|| black_box(classify(black_box(select))))
    });
    let update = b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 62316;";
    c.bench_function("classify/pgbench update", |b| {
        b.iter(|| black_box(classify(black_box(update))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = frame_scanner, startup_parsing, snapshot_lookup, statement_classification
}
criterion_main!(benches);
