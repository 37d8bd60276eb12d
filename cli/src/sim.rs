//! `legsync engine-sim`.

use clap::Args;
use legsync_lab::sim::{SimOptions, run as run_sim};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Where hosts connect (one at a time).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// The media-unit state file (active calls survive restarts through it).
    #[arg(long)]
    state: PathBuf,
    /// The line-based control port (see docs/protocol.md).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Start with N answered legs in N/2 links when the state file is empty.
    #[arg(long)]
    preload: Option<u64>,
    /// Heartbeat interval, ms.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Host silence after which it is dropped, ms.
    #[arg(long, default_value_t = 3000)]
    heartbeat_timeout_ms: u64,
    /// Append every answer and release of an answered call to this file,
    /// one JSON line each (the ground truth to bill a host's ledger against).
    #[arg(long)]
    history: Option<PathBuf>,
    /// The engine's name, in its hello and so in every ledger record
    /// written under it (one name per engine when hosts serve several).
    #[arg(long, default_value = "engine-sim")]
    name: String,
    /// Test only: give new legs the ids of legs a restart dropped, as a
    /// buggy engine or a wrapped counter would.
    #[arg(long, hide = true)]
    reuse_ids: bool,
    /// Bench only: preloaded legs get ids that collide under FxHash (a
    /// hostile engine), to measure the host's tables against them.
    #[arg(long, hide = true)]
    crafted_ids: bool,
    /// Bench only: with `--preload`, this many mixers, each with 5 of the
    /// preloaded legs joined.
    #[arg(long, hide = true, requires = "preload")]
    preload_mixers: Option<u64>,
    /// Stream snapshots in ascending leg id order, as an engine walking its
    /// leg array would, instead of the table's own hash order.
    #[arg(long)]
    ascending: bool,
    /// The newest protocol version to speak: 4 (mixers), or 3 to act as an
    /// engine without mixers (it closes on a version 4 hello).
    #[arg(long, default_value_t = legsync::protocol::PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u8).range(3..=4))]
    protocol: u8,
    /// Log the generated traffic (`traffic`, `burst` control commands)
    /// here: one line per event with the time it was meant to be sent.
    #[arg(long)]
    traffic_log: Option<PathBuf>,
    /// Serve hosts over TLS with this certificate chain (PEM); with
    /// `--tls-key` and `--tls-client-ca`.
    #[arg(long, requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Only hosts with a certificate signed by this CA (PEM) may connect.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

pub async fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::stop_signals();
    let options = SimOptions {
        listen: args.listen,
        control: args.control,
        state_file: args.state,
        preload: args.preload,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        max_frame: legsync::protocol::DEFAULT_MAX_FRAME,
        history: args.history,
        reuse_ids: args.reuse_ids,
        crafted_ids: args.crafted_ids,
        preload_mixers: args.preload_mixers,
        ascending: args.ascending,
        protocol: args.protocol,
        name: args.name,
        traffic_log: args.traffic_log,
        tls: match (args.tls_cert, args.tls_key, args.tls_client_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(legsync::tls::TlsFiles { ca, cert, key }),
            _ => None,
        },
    };
    // SIGHUP's default is to die: an operator's `kill -HUP $(pidof legsync)`
    // meant for a host would take the engine down with every call's context.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = shutdown.clone();
    let ignoring = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                signal = hangup.recv() => match signal {
                    Some(()) => tracing::info!("SIGHUP ignored (engine-sim has nothing to reload)"),
                    None => return,
                },
            }
        }
    });
    let ran = run_sim(options, shutdown.clone()).await;
    shutdown.cancel();
    let _ = ignoring.await;
    ran?;
    Ok(ExitCode::SUCCESS)
}
