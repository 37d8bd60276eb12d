//! Hot reload of a 3-plugin set: the whole reload (build off to the side,
//! then swap) and, separately, the swap itself: the only time decisions
//! can wait.

use criterion::{Criterion, criterion_group, criterion_main};
use legsync::events::Events;
use legsync::policy::{CompileCache, Decider, PolicyConfig, PolicyHandle, PolicyRuntime};
use legsync::reload::{PolicySource, Reloader};
use legsync_benches::{RULES, chain, plugin_dir};
use std::sync::Arc;

fn reload(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PolicyRuntime::new(Some(CompileCache::new(cache.path()))).unwrap();
    let dir = plugin_dir(&[
        ("10-accept-all", "accept_all", None),
        ("20-rules", "rules", Some(RULES)),
        ("30-nap-cap", "nap_cap", Some("default_max = 1000\n")),
    ]);
    let handle = PolicyHandle::new(Decider::Chain(Arc::new(chain(&runtime, dir.path(), 1024))));
    let source = PolicySource {
        config_file: None,
        plugin_dir_override: Some(dir.path().to_path_buf()),
        fallback: PolicyConfig::default(),
        started: None,
    };
    let reloader = Reloader::new(runtime.clone(), source, handle.clone(), Events::new());

    let mut group = c.benchmark_group("reload-3-plugins");
    group.sample_size(20);
    group.bench_function("build-and-swap", |b| {
        b.iter(|| reloader.reload("bench", false))
    });
    let spare = Decider::Chain(Arc::new(chain(&runtime, dir.path(), 1024)));
    group.bench_function("swap-pause", |b| {
        b.iter_batched(
            || spare.clone(),
            |next| drop(handle.swap(next)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, reload);
criterion_main!(benches);
