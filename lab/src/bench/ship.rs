//! `legsync bench --ship`: the fleet stream's figures against a real
//! JetStream cluster of `nats-server` processes on loopback (3 nodes,
//! replicas 3, unless `--ship-nodes` says otherwise).
//!
//! - With `--mode cold`: the host ships while it resyncs; the figure is the
//!   time from the host's start until the stream has acknowledged every
//!   START of the resync, and the records shipped per second after the
//!   resync was done.
//! - With `--mode live`: the stream's lag under the live traffic: for every
//!   durable mark of the ledger (its record and when it became durable),
//!   the time until the stream acknowledged that record.
//! - `--mode ship-fleet`: `--hosts` shippers in this process (each its own
//!   connection, ledger and cursor, as `legsync run` would run them), each
//!   on a ledger of `--fleet-records` records already written, publishing
//!   into the one cluster at once: the fleet's records per second, and the
//!   slowest host's time. A simulation of many hosts on one machine: the
//!   shipping code is the host's, the ledgers are written by the bench.

use super::BenchArgs;
use crate::nats::NatsCluster;
use legsync::cdr::{CdrWriter, DurableMark};
use legsync::ship::config::ShipConfig;
use legsync::ship::shipper::{ShipStatus, Shipper};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the bench waits for the stream to catch up.
const CATCH_UP: Duration = Duration::from_secs(600);

/// The cluster, for `args`.
pub async fn cluster(args: &BenchArgs) -> anyhow::Result<NatsCluster> {
    let exe = crate::nats::nats_server().ok_or_else(|| {
        anyhow::anyhow!("--ship needs nats-server (Debian package `nats-server`)")
    })?;
    eprintln!(
        "starting a {}-node NATS JetStream cluster...",
        args.ship_nodes
    );
    NatsCluster::start(&exe, usize::from(args.ship_nodes)).await
}

fn ship_config(cluster: &NatsCluster, replicas: usize) -> ShipConfig {
    let mut config = ShipConfig::for_servers(cluster.urls());
    config.replicas = replicas;
    config
}

/// One shipper following a ledger, watched.
pub struct ShipProbe {
    status: watch::Receiver<ShipStatus>,
    /// (shipped record, when, µs) at every change seen.
    acks: Arc<Mutex<Vec<(u64, u64)>>>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl ShipProbe {
    /// With a cluster (`--ship`): ships the in-process host's ledger.
    pub fn for_host(
        cluster: Option<&NatsCluster>,
        linger_ms: Option<u64>,
        host: &crate::demo::harness::RunningHost,
        config: &legsync::config::HostConfig,
    ) -> anyhow::Result<Option<ShipProbe>> {
        cluster
            .map(|cluster| {
                ShipProbe::start(
                    cluster,
                    &config.cdr,
                    &config.name,
                    host.ledger.durable_marks(),
                    Some(host.status_receiver()),
                    linger_ms,
                )
            })
            .transpose()
    }

    /// Ships the ledger at `ledger` (written by `name`) to `cluster`.
    pub fn start(
        cluster: &NatsCluster,
        ledger: &Path,
        name: &str,
        marks: watch::Receiver<DurableMark>,
        host: Option<watch::Receiver<legsync::supervisor::HostStatus>>,
        linger_ms: Option<u64>,
    ) -> anyhow::Result<ShipProbe> {
        let mut config = ship_config(cluster, cluster.urls().len());
        if let Some(linger_ms) = linger_ms {
            config.linger_ms = linger_ms;
        }
        let mut shipper = Shipper::new(config, ledger, name, marks)?;
        if let Some(host) = host {
            shipper = shipper.yield_to_resyncs(host);
        }
        let status = shipper.status();
        let (shutdown, tasks) = (
            CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        tasks.spawn(shipper.run(shutdown.clone()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (collect, mut follow, stop) = (acks.clone(), status.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = follow.changed() => if changed.is_err() { return },
                }
                let shipped = follow.borrow_and_update().shipped;
                let mut acks = collect.lock().unwrap_or_else(|e| e.into_inner());
                if acks.last().is_none_or(|&(r, _)| r < shipped) {
                    acks.push((shipped, legsync::model::now_us()));
                }
            }
        });
        Ok(ShipProbe {
            status,
            acks,
            shutdown,
            tasks,
        })
    }

    /// Waits until the stream has acknowledged `record`.
    pub async fn wait_shipped(&mut self, record: u64) -> anyhow::Result<()> {
        let mut status = self.status.clone();
        tokio::time::timeout(CATCH_UP, status.wait_for(|s| s.shipped >= record))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the stream did not catch up within {} s",
                    CATCH_UP.as_secs()
                )
            })?
            .map_err(|_| anyhow::anyhow!("the shipper stopped"))?;
        Ok(())
    }

    /// For each of `marks` (durable at), the time until the stream
    /// acknowledged its record: p50, p99, max in ms.
    pub fn lag(&self, marks: &[DurableMark]) -> super::live::Latency {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let lags = marks
            .iter()
            .filter_map(|mark| {
                let at = acks.partition_point(|&(r, _)| r < mark.record);
                acks.get(at).map(|&(_, us)| us.saturating_sub(mark.at_us))
            })
            .collect();
        super::live::Latency::of(lags)
    }

    pub fn status(&self) -> ShipStatus {
        self.status.borrow().clone()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What `--ship` adds to a cold resync's report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShipFigures {
    pub nodes: usize,
    pub records: u64,
    /// From the host's start to the last record of the resync acknowledged.
    pub shipped_seconds: f64,
    /// From the resync done to the last record acknowledged.
    pub after_resync_seconds: f64,
    /// Records acknowledged per second, from the host's start.
    pub records_per_second: f64,
}

/// `--mode ship-fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub mode: &'static str,
    pub nodes: usize,
    pub hosts: usize,
    pub records_per_host: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    /// Each host's time to ship its whole ledger: p50, max.
    pub host_seconds_p50: f64,
    pub host_seconds_max: f64,
    /// The stream's size on one replica, and per record.
    pub stream_bytes: u64,
    pub stream_bytes_per_record: f64,
}

impl std::fmt::Display for FleetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode ship-fleet: {} hosts x {} records into a {}-node cluster in {:.2} s ({:.0} records/s); per host p50 {:.2} s, slowest {:.2} s; stream {:.1} MB per replica ({:.0} bytes a record)",
            self.hosts,
            self.records_per_host,
            self.nodes,
            self.seconds,
            self.records_per_second,
            self.host_seconds_p50,
            self.host_seconds_max,
            self.stream_bytes as f64 / 1e6,
            self.stream_bytes_per_record
        )
    }
}

/// `--hosts` ledgers of `--fleet-records` START records each, shipped at
/// once.
pub async fn fleet(args: &BenchArgs, dir: &Path) -> anyhow::Result<FleetReport> {
    let cluster = cluster(args).await?;
    eprintln!(
        "writing {} ledgers of {} records...",
        args.hosts, args.fleet_records
    );
    let mut probes = Vec::new();
    let mut marks = Vec::new();
    // Kept: a closed mark channel tells a shipper its host stopped.
    let mut senders = Vec::new();
    for host in 0..args.hosts {
        let ledger = dir.join(format!("cdr-{host}.jsonl"));
        write_ledger(&ledger, host, args.fleet_records)?;
        let (keep, mark) = watch::channel(DurableMark {
            record: args.fleet_records,
            at_us: legsync::model::now_us(),
        });
        marks.push(mark);
        senders.push(keep);
    }
    eprintln!("shipping...");
    let started_us = legsync::model::now_us();
    for (host, mark) in marks.iter().enumerate() {
        let ledger = dir.join(format!("cdr-{host}.jsonl"));
        probes.push(ShipProbe::start(
            &cluster,
            &ledger,
            &format!("host-{host}"),
            mark.clone(),
            None,
            args.ship_linger_ms,
        )?);
    }
    // Each host was done at its last acknowledgement.
    let mut per_host = Vec::new();
    for probe in &mut probes {
        probe.wait_shipped(args.fleet_records).await?;
        let acks = probe.acks.lock().unwrap_or_else(|e| e.into_inner());
        let done_us = acks.last().map_or(started_us, |&(_, us)| us);
        per_host.push(done_us.saturating_sub(started_us) as f64 / 1e6);
    }
    per_host.sort_by(f64::total_cmp);
    let seconds = per_host.last().copied().unwrap_or(0.0);
    for probe in probes {
        probe.stop().await;
    }
    drop(senders);
    let total = args.hosts as u64 * args.fleet_records;
    let stream_bytes = stream_bytes(&cluster).await?;
    Ok(FleetReport {
        mode: "ship-fleet",
        nodes: usize::from(args.ship_nodes),
        hosts: args.hosts,
        records_per_host: args.fleet_records,
        seconds,
        records_per_second: total as f64 / seconds,
        host_seconds_p50: per_host.get(per_host.len() / 2).copied().unwrap_or(0.0),
        host_seconds_max: seconds,
        stream_bytes,
        stream_bytes_per_record: stream_bytes as f64 / total as f64,
    })
}

/// The size of the stream (on one replica), as the servers report it.
async fn stream_bytes(cluster: &NatsCluster) -> anyhow::Result<u64> {
    let client = async_nats::connect(cluster.urls()[0].as_str()).await?;
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(legsync::ship::config::DEFAULT_STREAM)
        .await?;
    Ok(stream.info().await?.state.bytes)
}

/// A ledger of `records` STARTs of host `host-N` on engine `gw-N`, as the
/// host writes them (its own writer: the lines are the host's).
fn write_ledger(path: &Path, host: usize, records: u64) -> anyhow::Result<()> {
    use legsync::model::{CallLeg, Direction, LegState, Protocol};
    let (writer, _) = CdrWriter::open(path)?;
    writer.set_host(&format!("host-{host}"))?;
    writer.set_epoch(&format!("gw-{host}"), 1);
    let now = legsync::model::now_ms();
    let legs: Vec<CallLeg> = (1..=records)
        .map(|id| CallLeg {
            id,
            session_id: id,
            nap: "SIP_A".into(),
            calling: format!("1514555{:04}", id % 10_000).into(),
            called: format!("1438555{:04}", id % 10_000).into(),
            protocol: Protocol::Sip,
            direction: Direction::Inbound,
            state: LegState::Answered,
            offered_at_ms: now - 2_000,
            answered_at_ms: Some(now - 1_000),
            linked_to: None,
        })
        .collect();
    let runtime = tokio::runtime::Handle::current();
    let pending = writer.open_calls(&legs, legsync::cdr::record::StartReason::Found);
    tokio::task::block_in_place(|| runtime.block_on(pending.durable()))?;
    Ok(())
}
