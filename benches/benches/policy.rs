//! Decisions per second for the same rules: (a) native, (b) the `rules`
//! plugin with batched calls, (c) the plugin called one leg at a time.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use legsync::policy::PolicyRuntime;
use legsync::policy::native::NativePolicy;
use legsync_benches::{RULES, chain, legs, plugin_dir};
use legsync_lab::native_rules::NativeRules;
use std::time::Duration;

fn decisions(c: &mut Criterion) {
    let runtime = PolicyRuntime::new(None).unwrap();
    let dir = plugin_dir(&[("10-rules", "rules", Some(RULES))]);
    let batched = chain(&runtime, dir.path(), 1024);
    let per_leg = chain(&runtime, dir.path(), 1);
    let native = NativeRules::new(legsync_rules::RuleSet::parse(RULES).unwrap());

    let mut group = c.benchmark_group("decisions");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in [10_000u64, 1_000_000] {
        let (legs, _) = legs(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("native", n), &legs, |b, legs| {
            b.iter(|| native.decide_legs(legs))
        });
        group.bench_with_input(BenchmarkId::new("wasm-batched", n), &legs, |b, legs| {
            b.iter(|| batched.decide_legs(legs))
        });
        group.bench_with_input(BenchmarkId::new("wasm-per-leg", n), &legs, |b, legs| {
            b.iter_batched(
                || (),
                |()| per_leg.decide_legs(legs),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
