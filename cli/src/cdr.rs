//! `legsync cdr bill` and `legsync cdr check`: billing reads the ledger,
//! and only the ledger: its files, or the fleet stream the hosts ship it
//! to (`--nats`, `--config`).

use anyhow::Context;
use clap::{Args, Subcommand};
use legsync::cdr::bill::{self, BilledCall, CallState};
use legsync::ship::config::ShipConfig;
use legsync::ship::stream::StreamQuery;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum CdrCommand {
    /// Apply the billing rule: one row per answered call (open or closed).
    Bill(BillArgs),
    /// Verify the ledger's rules; exit non-zero naming each violation.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct BillArgs {
    /// Ledger files (rotated pieces, oldest first; order does not matter).
    #[arg(required_unless_present_any = ["nats", "config"])]
    files: Vec<PathBuf>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Only calls answered at or after this time (Unix ms, or RFC 3339 such
    /// as 2026-12-06T00:00:00Z); from the stream, only what was stored
    /// since then is read.
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// Only calls answered before this time (Unix ms, or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// One JSON object per line.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Comma-separated values with a header line.
    #[arg(long)]
    csv: bool,
    /// Bill even if record numbers are missing (a piece left out): calls
    /// whose END is in the missing piece show as open.
    #[arg(long)]
    partial: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(required_unless_present_any = ["nats", "config"])]
    files: Vec<PathBuf>,
    #[command(flatten)]
    stream: StreamArgs,
    /// From the stream, only what was stored since this time (Unix ms, or
    /// RFC 3339): each host's numbering is checked from its first record read.
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
}

/// Reading the fleet stream instead of files (see `[ship]`).
#[derive(Debug, Args)]
struct StreamArgs {
    /// Read the fleet stream at this NATS server (repeat for a cluster)
    /// instead of files.
    #[arg(long, value_name = "URL", conflicts_with = "files")]
    nats: Vec<String>,
    /// Take the servers, stream, credentials and TLS from this host
    /// config's `[ship]` (`--nats` and `--stream` override).
    #[arg(long, value_name = "FILE", conflicts_with = "files")]
    config: Option<PathBuf>,
    /// The stream's name (default: `[ship]`'s, else LEGSYNC_CDR).
    #[arg(long = "stream", value_name = "NAME")]
    stream_name: Option<String>,
    /// Only this engine's records (repeat for a set; default: the fleet).
    #[arg(long, value_name = "NAME")]
    engine: Vec<String>,
}

impl StreamArgs {
    /// The `[ship]` settings to read the stream with, if asked to.
    fn ship(&self) -> anyhow::Result<Option<ShipConfig>> {
        let mut ship = match &self.config {
            Some(path) => {
                let config = legsync::config::HostConfig::load(path)?;
                Some(config.ship.with_context(|| {
                    format!("{} has no [ship] section: pass --nats", path.display())
                })?)
            }
            None if self.nats.is_empty() => return Ok(None),
            None => Some(ShipConfig::for_servers(self.nats.clone())),
        };
        if let Some(ship) = &mut ship {
            if !self.nats.is_empty() {
                ship.servers = self.nats.clone();
            }
            if let Some(stream) = &self.stream_name {
                ship.stream = stream.clone();
            }
            ship.validate()?;
        }
        Ok(ship)
    }
}

/// What billing reads: files, or the stream.
struct Source {
    ledgers: Vec<(String, Vec<bill::Line>)>,
    numbering: bill::Numbering,
    /// What its pieces are, for the summary.
    pieces: &'static str,
    /// Said after the summary (what the stream held twice).
    note: Option<String>,
}

fn load(files: &[PathBuf], stream: &StreamArgs, since: Option<u64>) -> anyhow::Result<Source> {
    let Some(ship) = stream.ship()? else {
        anyhow::ensure!(
            stream.engine.is_empty() && stream.stream_name.is_none(),
            "--engine and --stream read the fleet stream: pass --nats or --config too"
        );
        return Ok(Source {
            ledgers: bill::read_ledgers(files)?,
            numbering: bill::Numbering::FromOne,
            pieces: "file(s)",
            note: None,
        });
    };
    let query = StreamQuery {
        engines: stream.engine.clone(),
        since_ms: since,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let read = runtime.block_on(legsync::ship::stream::read(&ship, &query))?;
    let note = (read.duplicates > 0).then(|| {
        format!(
            "{} record(s) came twice, byte for byte (sent again past the stream's duplicate window), and were taken once",
            read.duplicates
        )
    });
    Ok(Source {
        ledgers: read.ledgers,
        // A stream read from a time on, or one whose limits drop its
        // oldest records, begins each host's records where it begins.
        numbering: match read.whole {
            true => bill::Numbering::FromOne,
            false => bill::Numbering::FromFirstRead,
        },
        pieces: "stream subject(s)",
        note,
    })
}

/// A time given as Unix ms or RFC 3339.
fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("not Unix ms nor an RFC 3339 time such as 2026-12-06T00:00:00Z: {e}")
        })?;
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000).map_err(|_| "before 1970".to_string())
}

pub fn run(command: CdrCommand) -> anyhow::Result<ExitCode> {
    match command {
        CdrCommand::Bill(args) => {
            let source = load(&args.files, &args.stream, args.since)?;
            let ledgers = source.ledgers;
            if let Some(damaged) = bill::damaged_line(&ledgers) {
                anyhow::bail!("{damaged}: not billed (run `legsync cdr check` for every problem)");
            }
            if let Some(note) = &source.note {
                eprintln!("legsync: {note}");
            }
            let records = bill::records(&ledgers);
            let gaps = bill::gaps_numbered(&records, source.numbering);
            for gap in &gaps {
                eprintln!("legsync: {gap}");
            }
            if !gaps.is_empty() && !args.partial {
                anyhow::bail!(
                    "not billed: with records missing, calls whose END is in a missing piece would show as open. \
                     Give every piece of every host's ledger, or `--partial` to bill what is here"
                );
            }
            let window = args.since.unwrap_or(0)..args.until.unwrap_or(u64::MAX);
            let calls: Vec<BilledCall> = bill::bill(&records)
                .into_iter()
                .filter(|call| window.contains(&call.answer_time_ms))
                .collect();
            let mut out = std::io::stdout().lock();
            let written = if args.json {
                calls.iter().try_for_each(|call| {
                    serde_json::to_writer(&mut out, call)?;
                    writeln!(out).map_err(Into::into)
                })
            } else {
                write_table(&mut out, &calls, args.csv).map_err(Into::into)
            };
            match written {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e),
            }
        }
        CdrCommand::Check(args) => {
            let source = load(&args.files, &args.stream, args.since)?;
            let ledgers = source.ledgers;
            let lines: usize = ledgers.iter().map(|(_, lines)| lines.len()).sum();
            let hosts: std::collections::BTreeSet<_> = bill::records(&ledgers)
                .into_iter()
                .map(|r| r.host)
                .collect();
            let problems = bill::check_numbered(&ledgers, source.numbering);
            let summary = format!(
                "{lines} records of {} host(s) in {} {}",
                hosts.len(),
                ledgers.len(),
                source.pieces
            );
            if let Some(note) = &source.note {
                eprintln!("legsync: {note}");
            }
            if problems.is_empty() {
                println!("ok: {summary}, every rule holds");
                return Ok(ExitCode::SUCCESS);
            }
            // The summary first: a long list of violations is read from the top.
            eprintln!("{} violation(s) in {summary}:", problems.len());
            for problem in &problems {
                eprintln!("{problem}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn write_table(out: &mut impl Write, calls: &[BilledCall], csv: bool) -> std::io::Result<()> {
    let header = [
        "leg",
        "session",
        "nap",
        "calling",
        "called",
        "answer_ms",
        "end_ms",
        "duration_s",
        "state",
    ];
    let rows = calls.iter().map(|c| {
        [
            c.leg.to_string(),
            c.session.to_string(),
            c.nap.clone(),
            c.calling.clone(),
            c.called.clone(),
            c.answer_time_ms.to_string(),
            c.end_time_ms.map_or(String::new(), |e| e.to_string()),
            c.duration_ms
                .map_or(String::new(), |d| format!("{}.{:03}", d / 1000, d % 1000)),
            match c.state {
                CallState::Open => "open".to_string(),
                CallState::Closed => "closed".to_string(),
            },
        ]
    });
    if csv {
        writeln!(out, "{}", header.join(","))?;
        for row in rows {
            let cells: Vec<String> = row.iter().map(|cell| csv_cell(cell)).collect();
            writeln!(out, "{}", cells.join(","))?;
        }
        return Ok(());
    }
    let rows: Vec<[String; 9]> = rows.collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

/// Quotes a CSV cell when it needs it (RFC 4180).
fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}
