//! A simulator process, a plugin directory and files for one test.

use legsync::cdr::CdrWriter;
use legsync::cdr::record::CdrRecord;
use legsync::config::HostConfig;
use legsync::events::HostEvent;
use legsync::policy::{Decider, PolicyRuntime, loader};
use legsync_lab::demo::harness::RunningHost;
use legsync_lab::sim::process::SimProcess;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct World {
    pub dir: tempfile::TempDir,
    pub sim: SimProcess,
    pub plugins: PathBuf,
}

/// The reference calls of ARCHITECTURE.md: A ringing, B terminating (never
/// answered), C, D, E answered, C and D linked.
#[derive(Debug, Clone, Copy)]
pub struct Calls {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub e: u64,
    pub cd: u64,
}

impl World {
    pub async fn new(preload: Option<u64>, plugins: &[(&str, &str, Option<&str>)]) -> World {
        Self::with_sim_timeout(preload, plugins, 1000).await
    }

    /// Like `new`, with the engine's host-silence timeout in ms (large runs
    /// in debug builds need more than the default second).
    pub async fn with_sim_timeout(
        preload: Option<u64>,
        plugins: &[(&str, &str, Option<&str>)],
        timeout_ms: u64,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = dir.path().join("plugins.d");
        std::fs::create_dir(&plugin_dir).unwrap();
        for (stem, crate_name, rules) in plugins {
            super::install(&plugin_dir, stem, crate_name, *rules);
        }
        let sim = SimProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_legsync")),
            &dir.path().join("engine.state"),
            preload,
            &[
                "--heartbeat-ms",
                "100",
                "--heartbeat-timeout-ms",
                &timeout_ms.to_string(),
            ],
        )
        .await
        .unwrap();
        World {
            dir,
            sim,
            plugins: plugin_dir,
        }
    }

    pub fn cdr_path(&self) -> PathBuf {
        self.dir.path().join("cdr.jsonl")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// A host config for this world: fast heartbeats, short backoff.
    pub fn config(&self, grace_secs: f64) -> HostConfig {
        let mut config = HostConfig {
            engine: Some(self.sim.listen.to_string()),
            grace_secs,
            ..HostConfig::default()
        };
        config.cdr = self.cdr_path();
        config.events = Some(self.events_path());
        config.link.heartbeat_ms = 100;
        config.link.heartbeat_timeout_ms = 600;
        config.link.backoff_base_ms = 50;
        config.link.backoff_max_ms = 400;
        config.policy.plugin_dir = Some(self.plugins.clone());
        config.policy.cache_dir =
            Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"));
        config
    }

    pub fn decider(&self, config: &HostConfig) -> Decider {
        let runtime = PolicyRuntime::new(
            config
                .policy
                .cache_dir
                .clone()
                .map(legsync::policy::CompileCache::new),
        )
        .unwrap();
        Decider::Chain(Arc::new(
            loader::load_dir(&runtime, &self.plugins, &config.policy).unwrap(),
        ))
    }

    /// Starts a host and waits for its first resync.
    pub async fn host(&self, grace_secs: f64) -> (RunningHost, Vec<HostEvent>) {
        let config = self.config(grace_secs);
        let mut host = RunningHost::start(&config, self.decider(&config)).unwrap();
        let events = host.next_resync(WAIT).await.unwrap();
        (host, events)
    }

    /// The ledger's call records (START, END, RESUME).
    pub fn cdrs(&self) -> Vec<CdrRecord> {
        let mut records = self.ledger();
        records.retain(|r| r.kind.is_call());
        records
    }

    /// Every record of the ledger, CARRYs included.
    pub fn ledger(&self) -> Vec<CdrRecord> {
        if !self.cdr_path().exists() {
            return Vec::new();
        }
        CdrWriter::read_all(&self.cdr_path()).unwrap()
    }

    /// Creates the reference calls and waits until `host` holds them.
    pub async fn reference_calls(&self, host: &mut RunningHost) -> Calls {
        let sim = &self.sim;
        let a = sim
            .ok_id("ring SIP_CARRIER_A 15145550001 15145559001")
            .await
            .unwrap();
        let b = sim
            .ok_id("ring SIP_CARRIER_A 15145550002 15145559002 out")
            .await
            .unwrap();
        sim.ok(&format!("terminate {b}")).await.unwrap();
        let mut answered = Vec::new();
        for n in 3..=5 {
            let id = sim
                .ok_id(&format!(
                    "ring ISDN_SPAN_1 1514555000{n} 1514555900{n} in isdn"
                ))
                .await
                .unwrap();
            sim.ok(&format!("answer {id}")).await.unwrap();
            answered.push(id);
        }
        let (c, d, e) = (answered[0], answered[1], answered[2]);
        let cd = sim.ok_id(&format!("link {c} {d}")).await.unwrap();
        host.wait_status(WAIT, |s| s.legs == 5 && s.links == 1)
            .await
            .unwrap();
        Calls { a, b, c, d, e, cd }
    }
}
