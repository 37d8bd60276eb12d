//! Changing policy safely, over real processes (engine-sim, `legsync run`,
//! the `legsync reload` command): every reload reports its blast radius; a
//! set that would refuse far more of the held calls than the guard allows
//! is held back, and the calls stay up through a following outage past the
//! grace time; accepting it takes its exact hash.

mod common;

use common::{legsync, text};
use hyper::Method;
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::world::WAIT;

/// Calls the engine carries before the host starts; 1 % go to premium
/// numbers (`1900...`), which the starting rules refuse.
const CALLS: u64 = 2_000;
const PREMIUM: u64 = CALLS / 100;
const REFUSE_PREMIUM: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

struct Trial {
    dir: tempfile::TempDir,
    sim: SimProcess,
    host: HostProcess,
    admin: std::net::SocketAddr,
}

impl Trial {
    async fn start() -> Trial {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProcess::spawn(
            exe(),
            &dir.path().join("engine.state"),
            Some(CALLS),
            &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
        )
        .await
        .unwrap();
        let plugins = dir.path().join("plugins.d");
        std::fs::create_dir(&plugins).unwrap();
        common::install(&plugins, "20-rules", "rules", Some(REFUSE_PREMIUM));
        let config = dir.path().join("host.toml");
        std::fs::write(
            &config,
            format!(
                "engine = \"{}\"\nname = \"pri\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\ngrace_secs = 1.0\n\
                 [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
                 [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
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
        let trial = Trial {
            dir,
            sim,
            host,
            admin,
        };
        trial.resyncs(1).await;
        trial
    }

    fn events(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    async fn resyncs(&self, n: usize) {
        wait_for_count(&self.events(), "\"kind\":\"resync-done\"", n, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.host.log()));
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let token = AdminToken::read(&self.dir.path().join("admin.token")).unwrap();
        let (code, body) = request(&self.admin.to_string(), Method::GET, path, Some(&token))
            .await
            .unwrap();
        assert!(code.is_success(), "{path}: {code} {body}");
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    async fn held(&self) -> u64 {
        self.get("/status").await["legs"].as_u64().unwrap()
    }

    fn write_rules(&self, rules: &str) {
        std::fs::write(self.dir.path().join("plugins.d/20-rules.rules"), rules).unwrap();
    }

    /// `legsync reload [extra]`: exit code and what it printed.
    fn reload(&self, extra: &[&str]) -> (Option<i32>, String) {
        let token = self.dir.path().join("admin.token");
        let admin = self.admin.to_string();
        let mut args = vec![
            "reload",
            "--admin",
            &admin,
            "--token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = legsync(&args);
        (out.status.code(), text(&out.stdout) + &text(&out.stderr))
    }

    /// The engine away past the grace time and back: every context is
    /// destroyed, and the next resync decides every call again with the
    /// set that is live.
    async fn outage_past_grace(&self, resync: usize) {
        let purged = 1 + std::fs::read_to_string(self.events())
            .unwrap_or_default()
            .matches("\"state\":\"purged\"")
            .count();
        self.sim.ok("partition 60000").await.unwrap();
        wait_for_count(&self.events(), "\"state\":\"purged\"", purged, WAIT)
            .await
            .unwrap();
        self.sim.ok("partition 0").await.unwrap();
        self.resyncs(resync).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_the_guard_is_held_back_until_accepted_by_its_hash() {
    let trial = Trial::start().await;
    let kept = CALLS - PREMIUM;
    assert_eq!(trial.held().await, kept);

    // Within the guard: a rule for one more destination applies, and says
    // what it would refuse (nothing held goes to 1901).
    trial.write_rules(&format!(
        "{REFUSE_PREMIUM}[[rule]]\nname = \"fraud\"\naction = \"refuse\"\ncalled_prefix = [\"1901\"]\n"
    ));
    let (code, said) = trial.reload(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("would refuse 0 of {kept} held legs")),
        "{said}"
    );

    // A typo that refuses everything: held back, loudly, with its hash.
    trial.write_rules("default = \"refuse\"\n");
    let (code, said) = trial.reload(&[]);
    assert_eq!(code, Some(2), "held back: exit 2\n{said}");
    assert!(said.contains("reload HELD BACK"), "{said}");
    assert!(
        said.contains(&format!("would refuse {kept} of {kept} held legs")),
        "{said}"
    );
    let hash = said
        .lines()
        .find_map(|l| l.strip_prefix("to apply this set anyway: legsync reload --accept "))
        .unwrap_or_else(|| panic!("no hash in: {said}"))
        .trim()
        .to_string();
    let status = trial.get("/status").await;
    assert_eq!(status["last_reload"]["outcome"], "held-back", "{status}");
    assert_eq!(
        status["last_reload"]["blast_radius"]["refused_legs"], kept,
        "{status}"
    );
    let metrics = {
        let (_, body) = request(&trial.admin.to_string(), Method::GET, "/metrics", None)
            .await
            .unwrap();
        body
    };
    assert!(
        metrics.contains(&format!("legsync_reload_blast_radius_legs {kept}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("legsync_reloads_total{outcome=\"held-back\"} 1"),
        "{metrics}"
    );

    // The running set stays: after an outage past the grace time, the
    // resync decides every call again, and keeps them.
    trial.outage_past_grace(2).await;
    assert_eq!(trial.held().await, kept, "{}", trial.host.log());

    // An acceptance names one set: another hash is refused.
    let (code, said) = trial.reload(&["--accept", "0123456789abcdef"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "the set on disk is {hash}, not the set 0123456789abcdef"
        )),
        "{said}"
    );
    let (code, said) = trial.reload(&["--accept", &hash]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reload applied"), "{said}");

    // Now the accepted set decides: the next full resync refuses all.
    trial.outage_past_grace(3).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while trial.held().await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "calls still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut host = trial.host;
    host.stop().await.unwrap();
}
