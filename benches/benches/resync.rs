//! The parts of a resync at 10,000, 100,000 and 1,000,000 legs: the diff of
//! the table against a snapshot, batched decisions (native, WASM chain of 1
//! and of 3 plugins), and snapshot decode; and a cold resync's in-memory
//! work at 1M and 4M legs (`adopt-cold`).

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use legsync::cdr::index::LedgerIndex;
use legsync::cdr::record::StartReason;
use legsync::internals::LegTable;
use legsync::internals::SnapshotDiff;
use legsync::model::CallLeg;
use legsync::policy::PolicyRuntime;
use legsync::policy::native::NativePolicy;
use legsync::protocol::{EngineMessage, FrameCodec, HostMessage, SNAPSHOT_CHUNK};
use legsync_benches::{RULES, chain, legs, plugin_dir};
use legsync_lab::native_rules::NativeRules;
use std::time::Duration;
use tokio_util::codec::{Decoder, Encoder};

const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];

/// `legs` as the engine streams them: a fresh copy, by snapshot chunks.
fn snapshot_chunks(legs: &[CallLeg]) -> Vec<Vec<CallLeg>> {
    legs.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec).collect()
}

fn diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("diff");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let (legs, _) = legs(n);
        // The host knows 99 % of the legs (a warm resync).
        let mut table = LegTable::new();
        for leg in legs.iter().skip(legs.len() / 100) {
            table.insert(leg.clone(), "live".into());
        }
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &legs, |b, legs| {
            b.iter_batched(
                || snapshot_chunks(legs),
                |chunks| {
                    let mut diff = SnapshotDiff::begin(&mut table, 0);
                    let mut unknown = 0;
                    for chunk in chunks {
                        unknown += diff.legs(&mut table, chunk).len();
                    }
                    (unknown, SnapshotDiff::absent(&table).len())
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn decisions(c: &mut Criterion) {
    let runtime = PolicyRuntime::new(None).unwrap();
    let one = plugin_dir(&[("10-rules", "rules", Some(RULES))]);
    let three = plugin_dir(&[
        ("10-accept-all", "accept_all", None),
        ("20-rules", "rules", Some(RULES)),
        ("30-nap-cap", "nap_cap", Some("default_max = 100000000\n")),
    ]);
    let chain1 = chain(&runtime, one.path(), 1024);
    let chain3 = chain(&runtime, three.path(), 1024);
    let native = NativeRules::new(legsync_rules::RuleSet::parse(RULES).unwrap());
    let mut group = c.benchmark_group("resync-decisions");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let (legs, _) = legs(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("native", n), &legs, |b, l| {
            b.iter(|| native.decide_legs(l))
        });
        group.bench_with_input(BenchmarkId::new("wasm-chain-1", n), &legs, |b, l| {
            b.iter(|| chain1.decide_legs(l))
        });
        group.bench_with_input(BenchmarkId::new("wasm-chain-3", n), &legs, |b, l| {
            b.iter(|| chain3.decide_legs(l))
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot-decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let (legs, _) = legs(n);
        let mut wire = BytesMut::new();
        let mut encoder = FrameCodec::<HostMessage, EngineMessage>::new(1 << 20);
        for chunk in legs.chunks(SNAPSHOT_CHUNK) {
            encoder
                .encode(EngineMessage::SnapshotLegs(chunk.to_vec()), &mut wire)
                .unwrap();
        }
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &wire, |b, wire| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut decoder = FrameCodec::<EngineMessage, HostMessage>::new(1 << 20);
                    let mut count = 0;
                    while let Some(EngineMessage::SnapshotLegs(chunk)) =
                        decoder.decode(&mut buf).unwrap()
                    {
                        count += chunk.len();
                    }
                    count
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A cold resync's in-memory work as the table grows, without engine-sim,
/// plugins or disk: the diff's duplicate check, the ledger index's STARTs,
/// the table's inserts, the link plan and the links' inserts, by the same
/// calls the supervisor makes, chunk by chunk. Time per leg at 4M against
/// 1M is what issue 15 asks to keep flat.
fn adopt_cold(c: &mut Criterion) {
    let mut group = c.benchmark_group("adopt-cold");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for n in [1_000_000, 4_000_000] {
        let (legs, links) = legs(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &legs, |b, legs| {
            b.iter_batched(
                || snapshot_chunks(legs),
                |chunks| {
                    let mut table = LegTable::new();
                    let mut ledger = LedgerIndex::default();
                    table.reserve_total(legs.len());
                    ledger.reserve_total(legs.len());
                    let mut diff = SnapshotDiff::begin(&mut table, legs.len());
                    let mut starts = 0;
                    for chunk in chunks {
                        let unknown = diff.legs(&mut table, chunk);
                        starts += ledger.open_all(&unknown, StartReason::Found, 0).len();
                        table
                            .insert_all(unknown.into_iter().map(|l| (l, "bench".into())).collect());
                    }
                    diff.legs_done();
                    diff.links(&mut table, links.clone());
                    let plan = diff.plan_links(&mut table, &Default::default());
                    let linked = table.insert_links_at(&plan.offer, &plan.offer_at);
                    (starts, linked)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, diff, decisions, decode, adopt_cold);
criterion_main!(benches);
