//! The ledger: opening one that holds N open calls (the replay a host does
//! at every start), and handing a resync's worth of STARTs to the writer
//! until they are durable.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use legsync::cdr::CdrWriter;
use legsync::cdr::record::StartReason;
use legsync::model::{CallLeg, Direction, LegState, Protocol};

fn calls(n: u64) -> Vec<CallLeg> {
    (1..=n)
        .map(|id| CallLeg {
            id,
            session_id: id / 2 + 1,
            direction: Direction::Inbound,
            protocol: Protocol::Sip,
            nap: "SIP_CARRIER_A".into(),
            calling: compact_str::format_compact!("1438{:07}", id % 10_000_000),
            called: compact_str::format_compact!("1514{:07}", (id * 7919) % 10_000_000),
            offered_at_ms: 1_795_000_000_000 + id,
            answered_at_ms: Some(1_795_000_005_000 + id),
            linked_to: None,
            state: LegState::Answered,
        })
        .collect()
}

fn ledger(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("ledger");
    group.sample_size(10);
    for n in [100_000u64, 1_000_000] {
        let legs = calls(n);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        {
            let (writer, _) = CdrWriter::open(&path).unwrap();
            runtime
                .block_on(writer.open_calls(&legs, StartReason::Found).durable())
                .unwrap();
        }
        group.bench_with_input(
            BenchmarkId::new("open-with-open-calls", n),
            &path,
            |b, path| {
                b.iter(|| {
                    let (_, recovered) = CdrWriter::open(path).unwrap();
                    assert_eq!(recovered.len() as u64, n);
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("write-starts", n), &legs, |b, legs| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let (writer, _) = CdrWriter::open(&dir.path().join("cdr.jsonl")).unwrap();
                    (dir, writer)
                },
                |(_dir, writer)| {
                    runtime
                        .block_on(writer.open_calls(legs, StartReason::Found).durable())
                        .unwrap()
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, ledger);
criterion_main!(benches);
