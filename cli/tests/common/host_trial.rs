//! One engine-sim process and one real `legsync run` process, driven the
//! way an operator drives them: the admin endpoint with the host's token,
//! the `legsync` commands, the event log. For the tests of counting
//! policies, safe policy change and shadow plugins.

use super::world::WAIT;
use hyper::Method;
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

pub struct HostTrial {
    pub dir: tempfile::TempDir,
    pub sim: SimProcess,
    pub host: HostProcess,
    pub admin: SocketAddr,
}

impl HostTrial {
    /// The engine, preloaded with `preload` calls (1 % to premium numbers)
    /// and given `before` calls per NAP; then a host whose config begins
    /// with `top` (top-level keys) and whose plugins `setup` installs in
    /// the trial's directory, returning what the config says after
    /// `[policy]`'s `plugin_dir` (`plugins.d/`) and `cache_dir` (more
    /// policy keys, then other sections). Returns after the host's first
    /// resync.
    pub async fn start(
        preload: Option<u64>,
        before: &[(&str, usize)],
        top: &str,
        setup: impl FnOnce(&Path) -> String,
    ) -> HostTrial {
        Self::start_engine("engine-sim", preload, before, top, setup).await
    }

    /// [`HostTrial::start`] with an engine of its own name (the fleet's
    /// engines differ by name).
    pub async fn start_engine(
        engine: &str,
        preload: Option<u64>,
        before: &[(&str, usize)],
        top: &str,
        setup: impl FnOnce(&Path) -> String,
    ) -> HostTrial {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProcess::spawn(
            exe(),
            &dir.path().join("engine.state"),
            preload,
            &[
                "--heartbeat-ms",
                "100",
                "--heartbeat-timeout-ms",
                "1000",
                "--name",
                engine,
            ],
        )
        .await
        .unwrap();
        for &(nap, calls) in before {
            add_calls(&sim, nap, calls).await;
        }
        let plugins = dir.path().join("plugins.d");
        std::fs::create_dir(&plugins).unwrap();
        let extra = setup(dir.path());
        let config = dir.path().join("host.toml");
        std::fs::write(
            &config,
            format!(
                "engine = \"{}\"\nname = \"pri\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\n{top}\
                 [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
                 [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n{extra}",
                sim.listen,
                dir.path().join("cdr.jsonl").display(),
                dir.path().join("events.jsonl").display(),
                plugins.display(),
                PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("compile-cache")
                    .display(),
            ),
        )
        .unwrap();
        let host = HostProcess::spawn(exe(), &config, &dir.path().join("host.log")).unwrap();
        let admin = host.admin_addr().await.unwrap();
        let trial = HostTrial {
            dir,
            sim,
            host,
            admin,
        };
        trial.resyncs(1).await;
        trial
    }

    pub fn events(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// How many lines of the event log contain `needle`.
    pub fn event_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.events())
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    /// Waits until the host has finished `n` resyncs in all.
    pub async fn resyncs(&self, n: usize) {
        self.wait_events("\"kind\":\"resync-done\"", n).await;
    }

    /// Waits until `n` lines of the event log contain `needle`.
    pub async fn wait_events(&self, needle: &str, n: usize) {
        wait_for_count(&self.events(), needle, n, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.host.log()));
    }

    /// A control route, with the host's token; its body.
    pub async fn admin(&self, method: Method, path: &str) -> String {
        let token = AdminToken::read(&self.dir.path().join("admin.token")).unwrap();
        let (code, body) = request(&self.admin.to_string(), method, path, Some(&token))
            .await
            .unwrap();
        assert!(code.is_success(), "{path}: {code} {body}");
        body
    }

    /// A control route's JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.admin(Method::GET, path).await).unwrap_or_default()
    }

    /// The value of the metric series `series` (name and labels as
    /// rendered), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = self.admin(Method::GET, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `legsync COMMAND --admin .. --token-file .. [extra]`: exit code and
    /// what it printed.
    pub fn command(&self, command: &str, extra: &[&str]) -> (Option<i32>, String) {
        let token = self.dir.path().join("admin.token");
        let admin = self.admin.to_string();
        let mut args = vec![
            command,
            "--admin",
            &admin,
            "--token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = super::legsync(&args);
        (
            out.status.code(),
            super::text(&out.stdout) + &super::text(&out.stderr),
        )
    }

    /// Cuts the host off until `heal` has run at the engine, then lets it
    /// back; returns once the host has finished `resync` resyncs in all.
    /// Waits for the cut to show in the event log as the `cut`-th line of
    /// `cut_shows` first.
    pub async fn cut_off(
        &self,
        cut_shows: &str,
        heal: impl AsyncFnOnce(&SimProcess),
        resync: usize,
    ) {
        let cut = 1 + self.event_lines(cut_shows);
        self.sim.ok("partition 60000").await.unwrap();
        self.wait_events(cut_shows, cut).await;
        heal(&self.sim).await;
        self.sim.ok("partition 0").await.unwrap();
        self.resyncs(resync).await;
    }

    /// Starts the host again (after `self.host.stop()` or `crash()`), and
    /// waits until its admin endpoint listens.
    pub async fn start_again(&mut self) {
        self.host.start().unwrap();
        self.admin = self.host.admin_addr().await.unwrap();
    }

    pub async fn stop(self) {
        let mut host = self.host;
        host.stop().await.unwrap();
    }
}

/// `count` calls on `nap`, answered at the engine.
pub async fn add_calls(sim: &SimProcess, nap: &str, count: usize) {
    for n in 0..count {
        sim.ok_id(&format!("call {nap} 1514555{n:04} 1514556{n:04}"))
            .await
            .unwrap();
    }
}
