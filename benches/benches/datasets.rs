//! Reference data: a look-up's cost per key in the host (`contains`,
//! `longest-prefix` over a 1M-number set and a 100k-prefix table), and the
//! `rules` plugin deciding 10,000 legs with rules that consult both
//! datasets against the same legs with rules that do not.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use legsync::policy::datasets::DatasetStore;
use legsync::policy::{PolicyConfig, PolicyRuntime, loader};
use legsync_benches::{legs, plugin_dir};
use std::fmt::Write;
use std::time::Duration;

const WITH_DATASETS: &str = "[[rule]]\nname = \"blocked\"\naction = \"refuse\"\ncalled_in = [\"blocked\"]\n\
[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_value = { dataset = \"rates\", one_of = [\"premium\"] }\n";

/// `n` numbers spread over the 11-digit space starting with 1.
fn numbers(n: u64) -> String {
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(
            text,
            "1{:010}",
            1_000_000_000 + (i * 2_654_435_761) % 9_000_000_000
        );
    }
    text
}

fn prefixes(n: u64) -> String {
    let mut text = String::from("1900,premium\n");
    for i in 0..n {
        let _ = writeln!(text, "1{:06},standard", (i * 7919) % 1_000_000);
    }
    text
}

fn datasets(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("blocked.set"), numbers(1_000_000)).unwrap();
    std::fs::write(data.path().join("rates.prefix"), prefixes(100_000)).unwrap();
    let store = DatasetStore::default();
    let granted = store
        .grant(data.path(), "bench", &["blocked".into(), "rates".into()])
        .unwrap();
    let (blocked, rates) = (granted.get(0).unwrap(), granted.get(1).unwrap());
    let (legs, _) = legs(10_000);
    let keys: Vec<&str> = legs.iter().map(|leg| leg.called.as_str()).collect();

    let mut group = c.benchmark_group("datasets");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("host-contains", |b| {
        b.iter(|| {
            keys.iter()
                .filter(|k| blocked.contains(k.as_bytes()))
                .count()
        })
    });
    group.bench_function("host-longest-prefix", |b| {
        b.iter(|| {
            keys.iter()
                .filter(|k| rates.longest_prefix(k.as_bytes()).is_some())
                .count()
        })
    });
    let runtime = PolicyRuntime::new(None).unwrap();
    for (name, rules, granted) in [
        ("wasm-rules-with-datasets", WITH_DATASETS, true),
        ("wasm-rules-without", legsync_benches::RULES, false),
    ] {
        let dir = plugin_dir(&[("10-rules", "rules", Some(rules))]);
        let mut config = PolicyConfig::default();
        if granted {
            config.dataset_dir = Some(data.path().to_path_buf());
            config.plugins.insert(
                "10-rules".into(),
                legsync::policy::config::PluginConfig {
                    datasets: Some(vec!["blocked".into(), "rates".into()]),
                    ..Default::default()
                },
            );
        }
        let chain = loader::load_dir(&runtime, dir.path(), &config).unwrap();
        group.bench_with_input(BenchmarkId::new(name, legs.len()), &legs, |b, legs| {
            b.iter(|| chain.decide_legs(legs))
        });
    }
    group.finish();
}

criterion_group!(benches, datasets);
criterion_main!(benches);
