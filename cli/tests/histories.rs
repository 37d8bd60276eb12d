//! Billing truth under faults, proven by random histories against the real
//! processes: an engine-sim process, a `legsync run` process with the
//! `rules` plugin, real TCP, real kills.
//!
//! Each history is a seeded random sequence of operations: ring, answer,
//! link, unlink, terminate, release; engine kill -9 (back at once, or past
//! the grace time); network cuts (short and past grace); host kill -9 and
//! restart (also in the middle of a grace purge and of a resync); rules
//! flips that refuse answered calls at the next resync; with a pair, the
//! active frozen, cut off alone, or killed and back at once while its
//! standby is cut off (the standby's grace ENDs then carry an older
//! epoch); the slot taken by a client that keeps no ledger past the grace
//! time (the hosts hand their calls over); a sidecar damaged at a kill (a
//! torn, deleted or stale checkpoint, a damaged or future `.alive`: the
//! restart must refuse, naming the file, and starts once it is repaired);
//! logrotate's
//! `copytruncate` (the restart must refuse; the copy put back, it starts).
//! Background traffic runs through all of it: 200 calls up at the start and
//! calls answered and released at 20 a second. Then everything is
//! healed, every call released, and the host's ledger is billed with
//! `legsync cdr bill`'s rule against the engine's own record of answers and
//! releases (`engine-sim --history`):
//!
//! - every answered call the host could have seen is billed exactly once,
//!   to its NAP and numbers, and no other call is billed;
//! - its billed end is within 1.5 s of the real release when the host was
//!   in sync, or within the disruption (±2 s) that hid the release (a call
//!   lost terminating in an engine restart ended between its terminate and
//!   that restart);
//! - `legsync cdr check` passes on the ledger.
//!
//! A call answered and gone from the answered state (terminating or
//! released) entirely while the host was cut off is never reported to any
//! host (a snapshot lists answered calls only, and the answer event went
//! to no host); such calls are counted, not billed.
//!
//! `LEGSYNC_HISTORIES` (default 3) and `LEGSYNC_HISTORY_OPS` (default 30)
//! size the run; `LEGSYNC_SEED` replays one history. A failure prints the
//! seed and the history. The soak: `LEGSYNC_HISTORIES=200 cargo test
//! --release --test histories -- --nocapture`.

mod common;

use common::world::WAIT;
use legsync::cdr::bill::{self, CallState};
use legsync::ship::config::ShipConfig;
use legsync::ship::stream::{StreamQuery, StreamRead};
use legsync_lab::demo::host_process::{HostProcess, count_lines, wait_for_count};
use legsync_lab::nats::{NatsCluster, nats_server};
use legsync_lab::sim::history::{History, HistoryKind};
use legsync_lab::sim::process::SimProcess;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GRACE_MS: u64 = 1_000;
/// How long after a disruption the host may take to be in sync again
/// (heartbeat timeout, reconnect backoff, resync, on a busy machine).
const SETTLE_MS: u64 = 2_500;
const NAPS: [&str; 3] = ["SIP_A", "SIP_B", "ISDN_1"];
/// The hosts' names: `pri` starts first and is active. It sorts after
/// `alt`, so a bill that took records in host order instead of by epoch
/// would take the deposed `pri`'s grace ENDs as the last word.
const HOST_NAMES: [&str; 2] = ["pri", "alt"];

/// splitmix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

fn now() -> u64 {
    legsync::model::now_ms()
}

/// A call's identity: leg, session, offered, answered.
type Key = legsync::cdr::record::CallKey;
/// What the engine's history says of a call.
struct Truth {
    nap: String,
    calling: String,
    called: String,
    /// When it last stopped being answered (terminate or release).
    left: Option<u64>,
    /// How it last ended (`None` while up).
    ended: Option<Ended>,
    /// The time of its last line in the engine's history.
    last_line: u64,
    /// When the engine recorded its answer (background traffic answers a
    /// little after the answer time it gives the call).
    answer_line: Option<u64>,
    /// Every release of it: an engine killed before it saved a release
    /// brings the call back from its state file (`up`), and it is
    /// released again, perhaps before any host saw it back.
    releases: Vec<u64>,
}

/// How a call ended in the engine.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// Released at this time.
    Released(u64),
    /// Started releasing at this time, and the engine restarted before the
    /// release: it ended somewhere between the two.
    LostTerminating(u64),
    /// Up at this time, then gone without a release: the engine was killed
    /// before it saved the call (background traffic saves in batches), and
    /// came back without it. It ended between the two.
    LostInRestart(u64),
}

/// One history's processes and files.
struct Run {
    dir: tempfile::TempDir,
    sim: SimProcess,
    sim_up: bool,
    /// One host, or an active/standby pair (`a` then `b`, each with its own
    /// ledger), billed together.
    hosts: Vec<HostProcess>,
    rules: PathBuf,
    legs: Vec<u64>,
    links: Vec<u64>,
    /// Conference mixers made (some freed since), and legs joined to them.
    mixers: Vec<u64>,
    joined: Vec<u64>,
    /// Periods in which the host may not see what the engine does.
    blind: Vec<(u64, u64)>,
    /// What was done, for the failure report.
    log: Vec<String>,
    /// When the engine was killed: a call it lost ended before one of them.
    engine_kills: Vec<u64>,
    refusing: bool,
    /// Calls answered and released in the background, through every fault.
    traffic: Option<Background>,
    /// A checkpoint kept from an earlier rotation, to put back as a stale one.
    old_checkpoint: Option<Vec<u8>>,
    /// With the fleet stream: the JetStream cluster every host ships to,
    /// and, once healed, what the stream holds.
    nats: Option<NatsCluster>,
    stream: Option<StreamRead>,
}

/// A task that keeps `engine-sim` generating calls (its `traffic` command,
/// over the control port) until stopped.
struct Background {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn write_rules(path: &Path, refuse_b: bool) {
    let legs = if refuse_b {
        "[[rule]]\nname = \"no B\"\naction = \"refuse\"\nnap = [\"SIP_B\"]\n"
    } else {
        "[[rule]]\nname = \"none\"\naction = \"refuse\"\ncalled_prefix = [\"0000000\"]\n"
    };
    // Conferences named test-* found at a resync are refused (freed at
    // the engine, their legs live on).
    let text = format!(
        "{legs}\n[[mixer_rule]]\nname = \"no test conferences\"\naction = \"refuse\"\nname_prefix = [\"test-\"]\n"
    );
    // Atomically, as docs/operations.md tells operators to.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Run {
    async fn start(hosts: usize, nats: Option<NatsCluster>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins.d");
        std::fs::create_dir(&plugins).unwrap();
        common::install(&plugins, "20-rules", "rules", None);
        let rules = plugins.join("20-rules.rules");
        write_rules(&rules, false);
        let exe = Path::new(env!("CARGO_BIN_EXE_legsync"));
        let history = dir.path().join("history.jsonl");
        let sim = SimProcess::spawn(
            exe,
            &dir.path().join("engine.state"),
            None,
            &[
                "--heartbeat-ms",
                "100",
                "--heartbeat-timeout-ms",
                "1000",
                "--history",
                history.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        let mut run = Run {
            dir,
            sim,
            sim_up: true,
            hosts: Vec::new(),
            rules,
            legs: Vec::new(),
            links: Vec::new(),
            mixers: Vec::new(),
            joined: Vec::new(),
            blind: Vec::new(),
            log: Vec::new(),
            engine_kills: Vec::new(),
            refusing: false,
            traffic: None,
            old_checkpoint: None,
            nats,
            stream: None,
        };
        for (i, name) in HOST_NAMES.iter().take(hosts).enumerate() {
            run.spawn_host(name, &plugins);
            if i == 0 {
                run.wait_in_sync().await;
            } else {
                // The first host is active: the next one finds it in control.
                run.wait_role(i, "standby", 1).await;
            }
        }
        run
    }

    /// Hundreds of calls up, and calls answered and released at `rate` a
    /// second in the background, whatever the operations do (the engine
    /// killed, the hosts killed): the history's faults meet live traffic.
    async fn start_traffic(&mut self, up: u64, rate: u64) {
        self.control(&format!("calls {up}")).await;
        self.log
            .push(format!("background: {up} calls up, {rate} calls a second"));
        let stop = tokio_util::sync::CancellationToken::new();
        let control = self.sim.control;
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    let command = format!("traffic {rate} 500");
                    let sent = legsync_lab::sim::process::control_at(
                        control,
                        &command,
                        Duration::from_secs(10),
                    );
                    // Each command runs to its end (half a second), so that
                    // no call is made after the task is stopped.
                    if sent.await.is_err() {
                        // The engine is down: try again shortly.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.traffic = Some(Background { stop, task });
    }

    async fn stop_traffic(&mut self) {
        if let Some(background) = self.traffic.take() {
            background.stop.cancel();
            background.task.await.unwrap();
        }
    }

    /// Waits until host `i`'s event log holds `count` role events `role`.
    async fn wait_role(&self, i: usize, role: &str, count: usize) {
        let (events, needle) = self.role_lines(i, role);
        wait_for_count(&events, &needle, count, WAIT)
            .await
            .unwrap_or_else(|e| panic!("host {}: {e:#}", HOST_NAMES[i]));
    }

    /// How many times host `i` has been `role` so far.
    fn roles(&self, i: usize, role: &str) -> usize {
        let (events, needle) = self.role_lines(i, role);
        count_lines(&events, &needle)
    }

    /// Host `i`'s event log, and how a role event for `role` reads in it.
    fn role_lines(&self, i: usize, role: &str) -> (PathBuf, String) {
        let events = self
            .dir
            .path()
            .join(format!("events-{}.jsonl", HOST_NAMES[i]));
        (events, format!("\"kind\":\"role\",\"role\":\"{role}\""))
    }

    /// Starts `legsync run` named `name`, with its own ledger and events.
    fn spawn_host(&mut self, name: &str, plugins: &Path) {
        let exe = Path::new(env!("CARGO_BIN_EXE_legsync"));
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache");
        let dir = self.dir.path();
        let config = dir.join(format!("legsync-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "engine = \"{}\"\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\ngrace_secs = {}\ncdr = \"{}\"\nevents = \"{}\"\n\
                 [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 400\nstandby_retry_ms = 100\n\
                 [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n{}",
                self.sim.listen,
                GRACE_MS as f64 / 1000.0,
                dir.join(format!("cdr-{name}.jsonl")).display(),
                dir.join(format!("events-{name}.jsonl")).display(),
                plugins.display(),
                cache.display(),
                self.nats.as_ref().map_or(String::new(), |nats| format!(
                    "[ship]\nservers = {}\n",
                    nats.servers_toml()
                )),
            ),
        )
        .unwrap();
        let log = dir.join(format!("host-{name}.log"));
        self.hosts
            .push(HostProcess::spawn(exe, &config, &log).unwrap());
    }

    /// Every host's ledger: billed together.
    /// Rotated pieces oldest first, then the current file, per host.
    fn ledgers(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for name in HOST_NAMES.iter().take(self.hosts.len()) {
            let current = self.dir.path().join(format!("cdr-{name}.jsonl"));
            for piece in 1.. {
                let rotated = current.with_extension(format!("jsonl.{piece}"));
                if !rotated.exists() {
                    break;
                }
                files.push(rotated);
            }
            files.push(current);
        }
        files.retain(|p| p.exists());
        files
    }

    /// logrotate on host `i`: the ledger moved to the next `.N`, then
    /// `legsync reopen` (the real command, through the admin endpoint).
    async fn rotate(&mut self, i: usize) {
        let current = self.dir.path().join(format!("cdr-{}.jsonl", HOST_NAMES[i]));
        let piece = (1..)
            .find(|n| !current.with_extension(format!("jsonl.{n}")).exists())
            .unwrap();
        if !self.hosts[i].is_running() {
            return;
        }
        let admin = self.hosts[i].admin_addr().await.unwrap();
        let rotated = current.with_extension(format!("jsonl.{piece}"));
        std::fs::rename(&current, &rotated).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_legsync"))
            .args(["reopen", "--admin", &admin.to_string(), "--token-file"])
            .arg(self.dir.path().join("admin.token"))
            .output()
            .await
            .unwrap();
        self.log.push(format!(
            "host {} ledger rotated to .{piece}: {}",
            HOST_NAMES[i],
            String::from_utf8_lossy(&out.stdout).trim()
        ));
        assert!(
            out.status.success(),
            "legsync reopen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The merged bill of every host's ledger.
    fn billed(&self) -> Vec<bill::BilledCall> {
        match bill::read_ledgers(&self.ledgers()) {
            Ok(ledgers) => bill::bill(&bill::records(&ledgers)),
            Err(_) => Vec::new(),
        }
    }

    /// The host the engine serves now (the first when none does).
    async fn active(&mut self) -> usize {
        let reply = self.control("controller").await;
        let name = reply.split_whitespace().nth(1).unwrap_or("none");
        HOST_NAMES
            .iter()
            .position(|n| *n == name)
            .filter(|&i| i < self.hosts.len())
            .unwrap_or(0)
    }

    /// A control command; its reply (errors are part of random histories:
    /// answering a leg a restart dropped, say).
    async fn control(&mut self, command: &str) -> String {
        let reply = if self.sim_up {
            self.sim
                .control(command)
                .await
                .unwrap_or_else(|e| format!("ERR {e}"))
        } else {
            "ERR engine down".into()
        };
        self.log.push(format!("{command} -> {reply}"));
        reply
    }

    /// Waits until the host is connected and handles live events: a probe
    /// call rung and answered gets its START in the ledger.
    async fn wait_in_sync(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::time::Instant::now() >= deadline {
                let tail: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| {
                        h.run_log()
                            .lines()
                            .rev()
                            .take(15)
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .collect();
                // Kept for a look (the run's own directory is dropped by the panic).
                let keep = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
                panic!(
                    "the host did not come back in sync within {WAIT:?}\nhistory:\n  {}\nhost logs (last lines, newest first):\n{}\nfiles kept in {}",
                    self.log
                        .iter()
                        .rev()
                        .filter(|l| !l.starts_with("ring PROBE"))
                        .take(30)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  "),
                    tail.join("\n---\n"),
                    keep.display()
                );
            }
            let reply = self.control("ring PROBE 0 0").await;
            if let Some(id) = reply.strip_prefix("OK ") {
                let id: u64 = id.parse().unwrap();
                self.legs.push(id);
                self.control(&format!("answer {id}")).await;
                if self.wait_open(id).await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the merged ledgers show leg `id` open within a few seconds.
    async fn wait_open(&self, id: u64) -> bool {
        for _ in 0..50 {
            if self
                .billed()
                .iter()
                .any(|c| c.leg == id && c.state == CallState::Open)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn blind_from(&mut self, start: u64) {
        self.blind.push((start, now() + SETTLE_MS));
    }

    async fn step(&mut self, rng: &mut Rng) {
        if self.nats.is_some() && rng.below(8) == 0 {
            return self.nats_fault(rng).await;
        }
        // Mostly recent legs: old ones are likely gone.
        let recent = &self.legs[self.legs.len().saturating_sub(8)..];
        let leg = rng.pick(recent);
        match rng.below(123) {
            0..=17 => {
                let nap = rng.pick(&NAPS).unwrap();
                let n = rng.below(10_000);
                let reply = self
                    .control(&format!("ring {nap} 1514555{n:04} 1438555{n:04}"))
                    .await;
                if let Some(id) = reply.strip_prefix("OK ") {
                    self.legs.push(id.parse().unwrap());
                    if rng.below(3) > 0 {
                        self.control(&format!("answer {id}")).await;
                    }
                }
            }
            18..=37 => {
                if let Some(leg) = leg {
                    self.control(&format!("answer {leg}")).await;
                }
            }
            38..=45 => {
                if let (Some(a), Some(b)) = (leg, rng.pick(&self.legs)) {
                    let reply = self.control(&format!("link {a} {b}")).await;
                    if let Some(id) = reply.strip_prefix("OK ") {
                        self.links.push(id.parse().unwrap());
                    }
                }
            }
            46..=49 => {
                if let Some(link) = rng.pick(&self.links) {
                    self.control(&format!("unlink {link}")).await;
                }
            }
            50..=53 => {
                if let Some(leg) = leg {
                    self.control(&format!("terminate {leg}")).await;
                }
            }
            54..=67 => {
                if let Some(leg) = leg {
                    self.control(&format!("release {leg}")).await;
                }
            }
            68..=71 => {
                // Events the engine sent just before it died may never
                // reach the host.
                let start = now() - 500;
                self.log.push("engine kill -9, back at once".into());
                self.crash_engine().await;
                self.sim.start_again().await.unwrap();
                self.blind_from(start);
            }
            72..=74 => {
                let start = now() - 500;
                self.log.push("engine kill -9, down past grace".into());
                self.crash_engine().await;
                self.sim_up = false;
                tokio::time::sleep(Duration::from_millis(GRACE_MS + 500)).await;
                self.sim.start_again().await.unwrap();
                self.sim_up = true;
                self.blind_from(start);
            }
            75..=78 => {
                let start = now();
                let ms = if rng.below(2) == 0 {
                    300
                } else {
                    GRACE_MS + 600
                };
                self.control(&format!("partition {ms}")).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.blind_from(start);
            }
            79..=83 => {
                let start = now() - 1_000; // its last sign of life
                let down = rng.below(1_500);
                let host = self.active().await;
                self.log.push(format!(
                    "host {} kill -9, restart after {down} ms",
                    HOST_NAMES[host]
                ));
                self.hosts[host].crash().await.unwrap();
                tokio::time::sleep(Duration::from_millis(down)).await;
                self.hosts[host].start().unwrap();
                self.blind_from(start);
            }
            84..=85 => {
                // Mid-purge: the host dies around its grace deadline.
                let start = now() - 1_000;
                let at = GRACE_MS + 600 + rng.below(200);
                self.log.push(format!(
                    "engine kill -9; host kill -9 at {at} ms (mid-purge); both back"
                ));
                let host = self.active().await;
                self.crash_engine().await;
                tokio::time::sleep(Duration::from_millis(at)).await;
                self.hosts[host].crash().await.unwrap();
                self.sim.start_again().await.unwrap();
                self.hosts[host].start().unwrap();
                self.blind_from(start);
            }
            86..=87 => {
                // Mid-resync: killed again shortly after it reconnects.
                let start = now() - 1_000;
                let at = rng.below(400);
                self.log.push(format!(
                    "host kill -9, restart, kill -9 at {at} ms (mid-resync), restart"
                ));
                let host = self.active().await;
                self.hosts[host].crash().await.unwrap();
                self.hosts[host].start().unwrap();
                tokio::time::sleep(Duration::from_millis(at)).await;
                self.hosts[host].crash().await.unwrap();
                self.hosts[host].start().unwrap();
                self.blind_from(start);
            }
            92..=95 if self.hosts.len() > 1 => {
                // The active hangs (SIGSTOP) past the engine's heartbeat
                // timeout: the standby takes over; thawed, the old active
                // finds its link dead, gets Busy and stands by.
                let start = now() - 1_000;
                let host = self.active().await;
                let ms = 1_200 + rng.below(800);
                self.log
                    .push(format!("host {} frozen for {ms} ms", HOST_NAMES[host]));
                self.hosts[host].freeze().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.hosts[host].thaw().unwrap();
                self.blind_from(start);
            }
            96..=98 if self.hosts.len() > 1 => {
                // Only the active is cut off (split brain): it stays alive
                // and writes its grace ENDs for calls the standby re-adopted.
                let start = now() - 1_000;
                let ms = 1_500 + rng.below(1_500);
                self.control(&format!("isolate {ms}")).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.blind_from(start);
            }
            88..=91 => {
                self.refusing = !self.refusing;
                self.log
                    .push(format!("rules: refuse SIP_B = {}", self.refusing));
                write_rules(&self.rules, self.refusing);
            }
            99 => {
                let host = self.active().await;
                self.rotate(host).await;
            }
            100..=101 if self.hosts.len() > 1 => self.fast_restart_racing_the_standby(rng).await,
            102..=103 => self.slot_taken_by_a_client_without_ledger(rng).await,
            104..=106 => self.damaged_sidecar_at_a_kill(rng).await,
            107..=108 => self.copytruncate_then_restart().await,
            // With a pair, a standby whose own ledger never saw the lost
            // epochs accepts the engine (it knows only its own ledger's
            // epochs; docs/operations.md): one host only.
            109 if self.hosts.len() == 1 => self.epoch_goes_back().await,
            110..=112 => {
                let name = if rng.below(3) == 0 { "test" } else { "conf" };
                let n = rng.below(1_000);
                let reply = self.control(&format!("mixer {name}-{n}")).await;
                if let Some(id) = reply.strip_prefix("OK ") {
                    self.mixers.push(id.parse().unwrap());
                }
            }
            113..=118 => {
                if let (Some(leg), Some(mixer)) = (leg, rng.pick(&self.mixers)) {
                    let role = ["speaker", "listener", "both"][rng.below(3) as usize];
                    let reply = self.control(&format!("join {leg} {mixer} {role}")).await;
                    if reply.starts_with("OK") {
                        self.joined.push(leg);
                    }
                }
            }
            119 => {
                if let (Some(leg), Some(mixer)) = (rng.pick(&self.joined), rng.pick(&self.mixers)) {
                    self.control(&format!("unjoin {leg} {mixer}")).await;
                }
            }
            120 => {
                if let Some(mixer) = rng.pick(&self.mixers) {
                    self.control(&format!("free-mixer {mixer}")).await;
                }
            }
            121..=122 => {
                // A leg released while joined: it leaves its mixers first.
                if let Some(leg) = rng.pick(&self.joined) {
                    self.control(&format!("release {leg}")).await;
                }
            }
            _ => {
                let ms = 20 + rng.below(300);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }

    /// A fault of the fleet stream, while hosts ship: a node killed and
    /// back, the whole cluster away and back, or the cluster away until a
    /// backlog builds and the active host killed in the middle of
    /// publishing it once the cluster is back. None of it blinds a host.
    async fn nats_fault(&mut self, rng: &mut Rng) {
        let nats = self.nats.as_mut().expect("with the stream");
        let ms = 200 + rng.below(1_500);
        match rng.below(3) {
            0 => {
                let node = rng.below(3) as usize;
                self.log
                    .push(format!("NATS node n{node} kill -9, back after {ms} ms"));
                nats.kill(node).await.unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                nats.restart(node).await.unwrap();
            }
            1 => {
                self.log.push(format!("NATS cluster away for {ms} ms"));
                nats.kill_all().await.unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                nats.restart_all().await.unwrap();
            }
            _ => {
                let at = rng.below(300);
                nats.kill_all().await.unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                nats.restart_all().await.unwrap();
                let host = self.active().await;
                self.log.push(format!(
                    "NATS cluster away for {ms} ms; back, host {} kill -9 at {at} ms (mid-publish), restart",
                    HOST_NAMES[host]
                ));
                let start = now() - 1_000;
                tokio::time::sleep(Duration::from_millis(at)).await;
                self.hosts[host].crash().await.unwrap();
                self.hosts[host].start().unwrap();
                self.blind_from(start);
            }
        }
    }

    /// kill -9 of the engine, remembered.
    async fn crash_engine(&mut self) {
        self.engine_kills.push(now());
        self.sim.crash().await.unwrap();
    }

    /// With the stream: waits until every host has shipped its whole
    /// ledger (its cursor at its last record), then reads the stream.
    async fn read_stream(&mut self) {
        let Some(nats) = &mut self.nats else { return };
        nats.restart_all().await.unwrap();
        let urls = nats.urls();
        let deadline = tokio::time::Instant::now() + WAIT;
        let records = bill::records(&bill::read_ledgers(&self.ledgers()).unwrap());
        for name in HOST_NAMES.iter().take(self.hosts.len()) {
            let ledger = self.dir.path().join(format!("cdr-{name}.jsonl"));
            let cursor = legsync::ship::cursor::cursor_path(&ledger);
            let last = records
                .iter()
                .filter(|r| r.host == *name)
                .map(|r| r.record)
                .max()
                .unwrap_or(0);
            loop {
                let shipped = legsync::ship::cursor::read(&cursor, name, u64::MAX)
                    .unwrap()
                    .record;
                if shipped >= last {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "host {name} shipped through record {shipped} of {last} only"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let ship = ShipConfig::for_servers(urls);
        let read = legsync::ship::stream::read(&ship, &StreamQuery::default())
            .await
            .unwrap();
        self.log.push(format!(
            "stream: {} messages, {} repeated past the duplicate window",
            read.messages, read.duplicates
        ));
        self.stream = Some(read);
    }

    /// Issue 28's F-a5: the active is killed, the standby takes over, the
    /// old active is back at once and gets the slot back while the standby
    /// is cut off (its grace ENDs are then under an older epoch).
    async fn fast_restart_racing_the_standby(&mut self, rng: &mut Rng) {
        let start = now() - 1_000;
        let active = self.active().await;
        let other = 1 - active;
        self.log.push(format!(
            "host {} kill -9, {} takes over, {} back at once and {} cut off",
            HOST_NAMES[active], HOST_NAMES[other], HOST_NAMES[active], HOST_NAMES[other]
        ));
        self.hosts[active].crash().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.active().await != other && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.hosts[active].start().unwrap();
        let ms = 1_500 + rng.below(1_500);
        self.control(&format!("isolate {ms}")).await;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.blind_from(start);
    }

    /// The controller is cut off for a moment and a client that keeps no
    /// ledger takes the slot, holding it past the hosts' grace time: they
    /// hand their calls over, and resume them when the client lets go.
    async fn slot_taken_by_a_client_without_ledger(&mut self, rng: &mut Rng) {
        use futures_util::{SinkExt, StreamExt};
        use legsync::protocol::{EngineMessage, FrameCodec, HostMessage, PROTOCOL_VERSION};
        let start = now() - 1_000;
        let hold = GRACE_MS + 600 + rng.below(600);
        self.control("isolate 300").await;
        let engine = self.sim.listen;
        let mut taken = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !taken && self.sim_up && tokio::time::Instant::now() < deadline {
            let Ok(stream) = tokio::net::TcpStream::connect(engine).await else {
                break;
            };
            let mut client = tokio_util::codec::Framed::new(
                stream,
                FrameCodec::<EngineMessage, HostMessage>::new(1 << 20),
            );
            let hello = HostMessage::Hello {
                protocol: PROTOCOL_VERSION,
                host: "rogue".into(),
            };
            if client.send(hello).await.is_err() {
                continue;
            }
            let answer = tokio::time::timeout(Duration::from_secs(2), client.next()).await;
            if !matches!(answer, Ok(Some(Ok(EngineMessage::Hello { .. })))) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            taken = true;
            let until = tokio::time::Instant::now() + Duration::from_millis(hold);
            let mut beat = tokio::time::interval(Duration::from_millis(100));
            while tokio::time::Instant::now() < until {
                beat.tick().await;
                if client.send(HostMessage::Heartbeat).await.is_err() {
                    break;
                }
            }
        }
        self.log.push(format!(
            "controller cut off 300 ms; a client without ledger {} for {hold} ms",
            if taken {
                "held the slot"
            } else {
                "never got the slot"
            }
        ));
        self.blind_from(start);
    }

    /// The active is killed and one of its ledger's sidecars damaged: the
    /// restart must refuse, naming the file; once repaired, it starts.
    async fn damaged_sidecar_at_a_kill(&mut self, rng: &mut Rng) {
        let damage = rng.below(5);
        let host = self.active().await;
        let ledger = self
            .dir
            .path()
            .join(format!("cdr-{}.jsonl", HOST_NAMES[host]));
        let alive = PathBuf::from(format!("{}.alive", ledger.display()));
        let checkpoint = PathBuf::from(format!("{}.checkpoint", ledger.display()));
        // The checkpoint's damages need one, and records after it: a
        // rotation (twice for a stale one), then a call in the new file.
        if damage >= 2 && self.hosts[host].is_running() {
            self.wait_in_sync().await;
            let rotations = if damage == 4 { 2 } else { 1 };
            for round in 0..rotations {
                self.rotate(host).await;
                if round + 1 < rotations {
                    // Records between the two, so that they differ.
                    self.old_checkpoint = std::fs::read(&checkpoint).ok();
                    self.wait_in_sync().await;
                }
            }
            self.wait_in_sync().await;
        }
        let start = now() - 1_000;
        self.hosts[host].crash().await.unwrap();
        let has_records = std::fs::metadata(&ledger).is_ok_and(|m| m.len() > 0);
        let old = self.old_checkpoint.take();
        // What is damaged, how, and what the refusal says (and names).
        let (file, damaged, expected): (&Path, Option<Vec<u8>>, &str) = match damage {
            0 if alive.exists() => (
                &alive,
                Some(b"4102444800000 1\n".to_vec()),
                "after this machine's clock",
            ),
            1 if alive.exists() => (&alive, Some(b"soon\n".to_vec()), "is damaged"),
            2 if checkpoint.exists() => {
                let whole = std::fs::read(&checkpoint).unwrap();
                (
                    &checkpoint,
                    Some(whole[..whole.len() / 2].to_vec()),
                    "is torn",
                )
            }
            3 if checkpoint.exists() && has_records => {
                (&checkpoint, None, "there is no checkpoint")
            }
            4 if checkpoint.exists() && has_records && old.is_some() => {
                (&checkpoint, old, "covers records up to")
            }
            _ => {
                self.log.push(format!(
                    "host {} kill -9, no sidecar to damage that way yet, restart",
                    HOST_NAMES[host]
                ));
                self.hosts[host].start().unwrap();
                return self.blind_from(start);
            }
        };
        let saved = std::fs::read(file).unwrap();
        match &damaged {
            Some(bytes) => std::fs::write(file, bytes).unwrap(),
            None => std::fs::remove_file(file).unwrap(),
        }
        self.hosts[host].start().unwrap();
        let status = self.hosts[host].wait_exit(WAIT).await.unwrap();
        let said = self.hosts[host].run_log();
        assert!(
            !status.success()
                && said.contains(expected)
                && said.contains(&file.display().to_string()),
            "host {} started on a damaged {} ({status}): {said}",
            HOST_NAMES[host],
            file.display()
        );
        self.log.push(format!(
            "host {} kill -9, {} damaged: the start refused ({expected}); repaired, restart",
            HOST_NAMES[host],
            file.display()
        ));
        std::fs::write(file, saved).unwrap();
        self.hosts[host].start().unwrap();
        self.blind_from(start);
    }

    /// The engine restarted without its epoch store, its epochs far behind
    /// what the hosts' ledgers hold: every host refuses it (naming both
    /// epochs) and its grace timer runs; once the store is back (ahead
    /// again), the hosts resync and the calls still up are resumed.
    async fn epoch_goes_back(&mut self) {
        let start = now() - 1_000;
        let store = legsync_lab::sim::controller::epoch_path(&self.dir.path().join("engine.state"));
        // A day ahead of the clock, and of any epoch an earlier round of
        // this step left in the store: the hosts' ledgers take it in.
        let stored: u64 = std::fs::read_to_string(&store)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let ahead = (legsync::model::now_us() + 86_400_000_000).max(stored + 1_000_000);
        self.crash_engine().await;
        std::fs::write(&store, format!("{ahead}\n")).unwrap();
        self.sim.start_again().await.unwrap();
        self.wait_in_sync().await;
        // Lost: the clock's epochs are a day behind the ledgers'.
        self.crash_engine().await;
        std::fs::remove_file(&store).unwrap();
        self.sim.start_again().await.unwrap();
        let refused = self.dir.path().join(format!("host-{}.log", HOST_NAMES[0]));
        let seen = wait_for_count(&refused, "offers controller epoch", 1, WAIT).await;
        self.log.push(format!(
            "engine restarted without its epoch store (a day behind): {}",
            if seen.is_ok() {
                "refused by name"
            } else {
                "NOT refused"
            }
        ));
        assert!(seen.is_ok(), "no host refused the epoch that went back");
        // Back, ahead of everything the ledgers hold.
        self.crash_engine().await;
        std::fs::write(&store, format!("{}\n", ahead + 1_000_000)).unwrap();
        self.sim.start_again().await.unwrap();
        self.blind_from(start);
    }

    /// logrotate's `copytruncate` on the active's ledger (copied, then cut
    /// in place while the host writes on): the next start refuses, naming
    /// the missing records; the copy put back in front, it starts.
    async fn copytruncate_then_restart(&mut self) {
        // A host in the middle of its start reads the file being cut (and
        // rightly refuses): cut the ledger of a host at work.
        self.wait_in_sync().await;
        let start = now() - 1_000;
        let host = self.active().await;
        if !self.hosts[host].is_running() {
            return;
        }
        let ledger = self
            .dir
            .path()
            .join(format!("cdr-{}.jsonl", HOST_NAMES[host]));
        let copy = ledger.with_extension("jsonl.copytruncated");
        // Frozen for the copy and the cut, so that no record falls between
        // them (the loss copytruncate risks, which no host can see).
        self.hosts[host].freeze().unwrap();
        std::fs::copy(&ledger, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ledger)
            .unwrap()
            .set_len(0)
            .unwrap();
        self.hosts[host].thaw().unwrap();
        // Records follow into the cut file (unless the host lost the slot
        // meanwhile: then there is nothing to see).
        self.wait_in_sync().await;
        let wrote_after_cut = std::fs::metadata(&ledger).is_ok_and(|m| m.len() > 0);
        let copied = std::fs::read(&copy).unwrap();
        self.hosts[host].crash().await.unwrap();
        if wrote_after_cut && !copied.is_empty() {
            self.hosts[host].start().unwrap();
            let status = self.hosts[host].wait_exit(WAIT).await;
            let said = self.hosts[host].run_log();
            assert!(
                status.as_ref().is_ok_and(|s| !s.success()) && said.contains("copytruncate"),
                "host {} started on a ledger cut in place ({status:?}): {said}",
                HOST_NAMES[host]
            );
            self.log.push(format!(
                "host {} ledger copytruncated, kill -9: the start refused; the copy put back, restart",
                HOST_NAMES[host]
            ));
        } else {
            self.log.push(format!(
                "host {} ledger copytruncated, nothing written after the cut; kill -9, the copy put back, restart",
                HOST_NAMES[host]
            ));
        }
        let mut whole = copied;
        whole.extend(std::fs::read(&ledger).unwrap());
        std::fs::write(&ledger, whole).unwrap();
        std::fs::remove_file(&copy).unwrap();
        if !self.hosts[host].is_running() {
            self.hosts[host].start().unwrap();
        }
        self.blind_from(start);
    }

    /// Brings everything back, releases every call, and waits until the
    /// ledger has closed every call it opened.
    async fn heal_and_release_all(&mut self) {
        self.stop_traffic().await;
        if !self.sim_up {
            self.sim.start_again().await.unwrap();
            self.sim_up = true;
        }
        self.control("partition 0").await;
        for host in &mut self.hosts {
            if !host.is_running() {
                host.start().unwrap();
            }
        }
        self.wait_in_sync().await;
        let list = self.control("list").await;
        for line in list.lines() {
            if let Some(rest) = line.strip_prefix("leg ") {
                let id = rest.split_whitespace().next().unwrap().to_string();
                self.control(&format!("release {id}")).await;
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.billed().iter().all(|c| c.state == CallState::Closed) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "calls still open in the ledger after every call was released"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.read_stream().await;
        for host in &mut self.hosts {
            host.stop().await.unwrap();
        }
    }

    /// The disruption around `t`: overlapping blind periods merged, since
    /// the host may have been out of sync through all of them (the ledger
    /// then proves a call up only until the first one began).
    fn in_blind(&self, t: u64) -> Option<(u64, u64)> {
        self.disruptions()
            .into_iter()
            .find(|&(a, b)| a <= t && t <= b)
    }

    /// The blind periods, overlapping ones merged, in time order.
    fn disruptions(&self) -> Vec<(u64, u64)> {
        let mut spans = self.blind.clone();
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// Bills the ledger against the engine's history; returns the problems.
    fn verify(&self) -> (Vec<String>, usize, usize) {
        let mut problems = Vec::new();
        let history = History::read(&self.dir.path().join("history.jsonl")).unwrap();
        // Per call: parties, answer time, last release.
        let mut truth: BTreeMap<Key, Truth> = BTreeMap::new();
        for line in &history {
            let key = line.key();
            let entry = truth.entry(key).or_insert_with(|| Truth {
                nap: line.nap.clone(),
                calling: line.calling.clone(),
                called: line.called.clone(),
                left: None,
                ended: None,
                last_line: line.time_ms,
                answer_line: None,
                releases: Vec::new(),
            });
            entry.last_line = line.time_ms;
            if line.event == HistoryKind::Answer {
                entry.answer_line.get_or_insert(line.time_ms);
            }
            if line.event == HistoryKind::Release {
                entry.releases.push(line.time_ms);
            }
            entry.ended = match line.event {
                HistoryKind::Release => Some(Ended::Released(line.time_ms)),
                HistoryKind::Terminate => Some(Ended::LostTerminating(line.time_ms)),
                HistoryKind::Answer | HistoryKind::Up => None,
            };
            entry.left = match line.event {
                HistoryKind::Answer | HistoryKind::Up => None,
                HistoryKind::Terminate | HistoryKind::Release => entry.left.or(Some(line.time_ms)),
            };
        }
        // How many calls each leg id named.
        let mut truth_ids: BTreeMap<u64, usize> = BTreeMap::new();
        for key in truth.keys() {
            *truth_ids.entry(key.leg).or_default() += 1;
        }
        let ledgers = bill::read_ledgers(&self.ledgers()).unwrap();
        problems.extend(bill::check(&ledgers));
        let billed = bill::bill(&bill::records(&ledgers));
        if let Some(stream) = &self.stream {
            // The stream holds every record of every host from the first:
            // checked as whole ledgers, and billed as the files are.
            problems.extend(
                bill::check(&stream.ledgers)
                    .into_iter()
                    .map(|p| format!("in the stream: {p}")),
            );
            let from_stream = bill::bill(&bill::records(&stream.ledgers));
            if from_stream != billed {
                problems.push(format!(
                    "the stream's bill ({} calls) differs from the files' ({} calls)",
                    from_stream.len(),
                    billed.len()
                ));
            }
        }
        let mut by_key: BTreeMap<Key, &bill::BilledCall> = BTreeMap::new();
        for call in &billed {
            let key = call.key();
            if by_key.insert(key, call).is_some() {
                problems.push(format!("leg {} billed twice", call.leg));
            }
        }
        let mut unseen = 0;
        for (key, truth) in &truth {
            let (nap, calling, called) = (&truth.nap, &truth.calling, &truth.called);
            let lost_in_restart = || {
                // Its id went to another call, or the engine restarted
                // after its last line: an engine crash took it.
                let reused = truth_ids.get(&key.leg).is_some_and(|&n| n > 1);
                let restarted = self
                    .disruptions()
                    .iter()
                    .any(|&(_, b)| b >= truth.last_line);
                (reused || restarted).then_some(Ended::LostInRestart(truth.last_line))
            };
            let Some(ended) = truth.ended.or_else(lost_in_restart) else {
                problems.push(format!(
                    "leg {} is still up in the engine at the end",
                    key.leg
                ));
                continue;
            };
            // When it ended, and the billed end times that are right for it.
            // The billed end times right for a release at `t`: within 1.5 s
            // in sync, or within the disruption that hid it (±2 s).
            let window = |t: u64| match self.in_blind(t) {
                Some((a, b)) => (a.saturating_sub(2_000), b + 2_000),
                None => (t.saturating_sub(1_500), t + 1_500),
            };
            let (released, low, high) = match ended {
                Ended::Released(t) => {
                    let (low, high) = window(t);
                    (t, low, high)
                }
                Ended::LostTerminating(t) | Ended::LostInRestart(t) => {
                    // The disruption of the first engine kill after its
                    // last line lost it (a call answered in the tail of an
                    // earlier disruption lives until the next kill).
                    let kill = self.engine_kills.iter().copied().find(|&k| k >= t);
                    let lost_in = self.disruptions().into_iter().find(|&(a, b)| match kill {
                        Some(k) => a <= k && k <= b,
                        None => b >= t,
                    });
                    let Some((a, b)) = lost_in else {
                        problems.push(format!(
                            "leg {} vanished while terminating with no engine restart after",
                            key.leg
                        ));
                        continue;
                    };
                    let low = t.saturating_sub(1_500).min(a.saturating_sub(2_000));
                    (t, low, b + 2_000)
                }
            };
            let Some(call) = by_key.remove(key) else {
                // Answered and gone from the answered state inside one
                // disruption: no host was told, no snapshot listed it.
                let answer = truth.answer_line.unwrap_or(key.answer_time_ms);
                let left = truth.left.unwrap_or(released);
                if self
                    .disruptions()
                    .iter()
                    .any(|&(a, b)| a <= answer && left <= b)
                {
                    unseen += 1;
                } else {
                    problems.push(format!(
                        "leg {} (answered {answer}, released {released}) was never billed",
                        key.leg
                    ));
                }
                continue;
            };
            if (&call.nap, &call.calling, &call.called) != (nap, calling, called) {
                problems.push(format!(
                    "leg {} billed to {} {} -> {}, but was {nap} {calling} -> {called}",
                    key.leg, call.nap, call.calling, call.called
                ));
            }
            let Some(end) = call.end_time_ms else {
                problems.push(format!("leg {} is open in the bill", key.leg));
                continue;
            };
            // An earlier release of a call brought back by an engine
            // restart is as real to the hosts that saw it.
            let earlier = truth.releases.iter().any(|&t| {
                let (low, high) = window(t);
                (low..=high).contains(&end)
            });
            if !(low..=high).contains(&end) && !earlier {
                problems.push(format!(
                    "leg {}: billed end {end} is {} ms from the real release {released} (allowed {low}..={high})",
                    key.leg,
                    end as i64 - released as i64
                ));
            }
        }
        for call in by_key.values() {
            problems.push(format!(
                "leg {} (session {}) billed, but the engine never answered such a call",
                call.leg, call.session
            ));
        }
        (problems, truth.len(), unseen)
    }
}

async fn one_history(seed: u64, ops: usize, hosts: usize, stream: bool) -> (usize, usize) {
    let mut rng = Rng(seed);
    let nats = match stream {
        true => Some(
            NatsCluster::start(&nats_server().unwrap(), 3)
                .await
                .unwrap(),
        ),
        false => None,
    };
    let mut run = Run::start(hosts, nats).await;
    run.start_traffic(200, 20).await;
    for _ in 0..ops {
        run.step(&mut rng).await;
    }
    run.heal_and_release_all().await;
    let shipping = if stream { ", shipping to NATS" } else { "" };
    run.finish(
        &format!("history with seed {seed} ({ops} operations, {hosts} host(s){shipping})"),
        &format!("LEGSYNC_SEED={seed} LEGSYNC_HISTORY_OPS={ops} cargo test --test histories"),
    )
}

impl Run {
    /// Verifies the bill; on a problem, keeps the files and panics with
    /// what was done and how to replay it.
    fn finish(self, what: &str, replay: &str) -> (usize, usize) {
        let run = self;
        let (problems, calls, unseen) = run.verify();
        if std::env::var_os("LEGSYNC_HISTORY_VERBOSE").is_some() {
            eprintln!("  {}", run.log.join("\n  "));
        }
        if !problems.is_empty() {
            let keep = run.dir.keep();
            panic!(
                "{what} broke billing truth:\n  {}\n\nhistory:\n  {}\n\n\
             files kept in {}\nreplay: {replay}",
                problems.join("\n  "),
                run.log.join("\n  "),
                keep.display(),
            );
        }
        (calls, unseen)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn random_histories(hosts: usize, stream: bool) {
    let ops = env_number("LEGSYNC_HISTORY_OPS", 30) as usize;
    let seeds: Vec<u64> = match std::env::var("LEGSYNC_SEED") {
        Ok(seed) => vec![seed.parse().expect("LEGSYNC_SEED is a number")],
        Err(_) => {
            let first = now();
            (0..env_number("LEGSYNC_HISTORIES", 3))
                .map(|i| first.wrapping_mul(31).wrapping_add(i))
                .collect()
        }
    };
    let (mut calls, mut unseen) = (0, 0);
    for &seed in &seeds {
        eprintln!("history seed {seed}, {ops} operations, {hosts} host(s)");
        let (c, u) = one_history(seed, ops, hosts, stream).await;
        calls += c;
        unseen += u;
    }
    eprintln!(
        "{} histories, {} operations, {calls} answered calls billed against the engine ({unseen} lived and died unseen inside a cut)",
        seeds.len(),
        seeds.len() * ops
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_bill_every_answered_call_exactly_once() {
    random_histories(1, false).await;
}

/// The same histories with an active/standby pair: kills, hangs and
/// partitions of the active in the mix, the two ledgers billed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_with_a_pair_bill_every_call_once_across_both_ledgers() {
    random_histories(2, false).await;
}

/// The pair's histories with both hosts shipping to a 3-node JetStream
/// cluster of real `nats-server` processes, NATS faults in the mix (a node
/// killed, the cluster away, a host killed mid-publish; takeovers as
/// above): at the end the stream holds every host's whole ledger, `cdr
/// check` passes on it, and it bills exactly as the files do (which are
/// billed against the engine's truth). Needs `nats-server` (SKIPPED
/// without it, except under `CI=true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_with_a_pair_shipping_to_nats_bill_every_call_once_from_the_stream() {
    if nats_server().is_none() {
        return common::unavailable(
            "nats-server is not installed (Debian package `nats-server`; .ci/run installs it)",
        );
    }
    random_histories(2, true).await;
}

/// How the active host of a pair is lost.
#[derive(Debug, Clone, Copy)]
enum Loss {
    Kill,
    Freeze,
    Isolate,
}

/// Calls answered, linked and released before, during and after the active
/// is lost; the standby takes over and keeps every call; the old active
/// rejoins as standby; the merged bill equals what the engine did.
async fn takeover(loss: Loss) {
    let mut run = Run::start(2, None).await;
    let call = async |run: &mut Run| {
        let id: u64 = run
            .control("call SIP_A 15145550100 14385550100")
            .await
            .strip_prefix("OK ")
            .unwrap()
            .parse()
            .unwrap();
        run.legs.push(id);
        id
    };
    // Before.
    let (x, y, z) = (
        call(&mut run).await,
        call(&mut run).await,
        call(&mut run).await,
    );
    assert!(
        run.control(&format!("link {x} {y}"))
            .await
            .starts_with("OK")
    );
    assert!(run.wait_open(z).await);
    run.control(&format!("release {z}")).await;
    assert_eq!(run.active().await, 0, "pri is active");
    let standby_before = run.roles(0, "standby");
    // The loss, and calls while it lasts.
    let start = now() - 1_000;
    run.log.push(format!("active lost: {loss:?}"));
    match loss {
        Loss::Kill => run.hosts[0].crash().await.unwrap(),
        Loss::Freeze => run.hosts[0].freeze().unwrap(),
        Loss::Isolate => assert_eq!(run.control("isolate 3000").await, "OK pri"),
    }
    let during = call(&mut run).await;
    run.control(&format!("release {y}")).await;
    // alt takes over and holds every live call.
    run.wait_role(1, "active", 1).await;
    run.wait_in_sync().await;
    assert_eq!(run.active().await, 1, "alt is active");
    assert!(run.wait_open(x).await && run.wait_open(during).await);
    // After.
    let after = call(&mut run).await;
    assert!(run.wait_open(after).await);
    run.control(&format!("release {during}")).await;
    // The old active rejoins as standby.
    match loss {
        Loss::Kill => run.hosts[0].start().unwrap(),
        Loss::Freeze => run.hosts[0].thaw().unwrap(),
        Loss::Isolate => {}
    }
    run.wait_role(0, "standby", standby_before + 1).await;
    // Past its grace time: its ENDs for calls b holds are superseded.
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 1_500)).await;
    assert_eq!(run.active().await, 1, "alt is still active");
    let open: Vec<u64> = run
        .billed()
        .iter()
        .filter(|c| c.state == CallState::Open)
        .map(|c| c.leg)
        .collect();
    for leg in [x, after] {
        assert!(
            open.contains(&leg),
            "leg {leg} is up, but the merged bill has it ended"
        );
    }
    run.blind_from(start);
    run.heal_and_release_all().await;
    run.finish(
        &format!("takeover after {loss:?}"),
        "cargo test --test histories takeover",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_the_active_is_killed() {
    takeover(Loss::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_the_active_hangs() {
    takeover(Loss::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_only_the_active_is_cut_off_bills_once_despite_the_split_brain() {
    takeover(Loss::Isolate).await;
}

/// The ledger rotated twice while calls are answered and released in
/// bursts, the host killed after the second rotation and restarted with
/// only the current file in place: every call billed once from the
/// rotated pieces and the current file, no record lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_and_doubles_nothing() {
    let mut run = Run::start(1, None).await;
    run.control("calls 300").await;
    run.rotate(0).await;
    let list = run.control("list").await;
    let ids: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("leg "))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect();
    for id in ids.iter().step_by(3) {
        run.control(&format!("release {id}")).await;
    }
    run.control("calls 200").await;
    run.rotate(0).await;
    for id in ids.iter().skip(1).step_by(3) {
        run.control(&format!("release {id}")).await;
    }
    let start = now() - 1_000;
    run.log
        .push("host kill -9 after the second rotation, restart".into());
    run.hosts[0].crash().await.unwrap();
    run.hosts[0].start().unwrap();
    run.blind_from(start);
    run.wait_in_sync().await;
    run.heal_and_release_all().await;
    let ledgers = run.ledgers();
    assert_eq!(
        ledgers.len(),
        3,
        "two rotated pieces and the current file: {ledgers:?}"
    );
    let (calls, _) = run.finish(
        "rotation under load",
        "cargo test --test histories rotation",
    );
    assert!(calls >= 500, "{calls} calls billed");
}

/// Issue 28's F-a5: the active is killed, the standby takes over (a second
/// epoch), the old active is restarted at once and gets the slot back (a
/// third epoch) while the standby is cut off. The restarted host finds its
/// calls open in its own ledger and writes nothing about them; the cut-off
/// standby's grace timer then ends them all under the second epoch. The
/// restarted host's CARRY (every open call carried under the third epoch)
/// is what keeps them open in the merged bill; at the end every call is
/// billed once, as the engine's history says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_active_that_restarts_fast_and_takes_the_slot_back_bills_every_call_once() {
    let mut run = Run::start(2, None).await;
    let mut up = Vec::new();
    for n in 0..6 {
        let reply = run
            .control(&format!("call SIP_A 151455501{n:02} 143855501{n:02}"))
            .await;
        let id: u64 = reply.strip_prefix("OK ").unwrap().parse().unwrap();
        run.legs.push(id);
        up.push(id);
    }
    for &id in &up {
        assert!(run.wait_open(id).await, "leg {id} never opened");
    }
    let start = now() - 1_000;
    let pri_active = run.roles(0, "active");
    run.log.push("active pri kill -9".into());
    run.hosts[0].crash().await.unwrap();
    run.wait_role(1, "active", 1).await;
    run.wait_in_sync().await;
    // pri is back at once; alt, the controller now, is cut off, so pri
    // takes the slot back with its calls open in its own ledger.
    run.hosts[0].start().unwrap();
    assert_eq!(run.control("isolate 3000").await, "OK alt");
    run.wait_role(0, "active", pri_active + 1).await;
    // alt's grace timer runs out while it is cut off: ENDs under epoch 2.
    let alt_events = run.dir.path().join("events-alt.jsonl");
    wait_for_count(&alt_events, "\"state\":\"purged\"", 1, WAIT)
        .await
        .unwrap();
    let billed = run.billed();
    for &id in &up {
        let row = billed.iter().find(|c| c.leg == id).unwrap();
        assert_eq!(
            row.state,
            CallState::Open,
            "leg {id} is up under pri, but the merged bill has it {:?} (alt's grace END won)",
            row.state
        );
    }
    run.blind_from(start);
    run.heal_and_release_all().await;
    run.finish(
        "a fast restart of a killed active",
        "cargo test --test histories a_killed_active_that_restarts_fast",
    );
}
