//! `legsync cdr bill` and `legsync cdr check`: billing reads the ledger,
//! and only the ledger.

use clap::{Args, Subcommand};
use legsync::cdr::bill::{self, BilledCall, CallState};
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
    #[arg(required = true)]
    files: Vec<PathBuf>,
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
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(command: CdrCommand) -> anyhow::Result<ExitCode> {
    match command {
        CdrCommand::Bill(args) => {
            let ledgers = bill::read_ledgers(&args.files)?;
            if let Some(damaged) = bill::damaged_line(&ledgers) {
                anyhow::bail!("{damaged}: not billed (run `legsync cdr check` for every problem)");
            }
            let records = bill::records(&ledgers);
            let gaps = bill::gaps(&records);
            for gap in &gaps {
                eprintln!("legsync: {gap}");
            }
            if !gaps.is_empty() && !args.partial {
                anyhow::bail!(
                    "not billed: with records missing, calls whose END is in a missing piece would show as open. \
                     Give every piece of every host's ledger, or `--partial` to bill what is here"
                );
            }
            let calls = bill::bill(&records);
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
            let ledgers = bill::read_ledgers(&args.files)?;
            let lines: usize = ledgers.iter().map(|(_, lines)| lines.len()).sum();
            let hosts: std::collections::BTreeSet<_> = bill::records(&ledgers)
                .into_iter()
                .map(|r| r.host)
                .collect();
            let problems = bill::check(&ledgers);
            let summary = format!(
                "{lines} records of {} host(s) in {} file(s)",
                hosts.len(),
                ledgers.len()
            );
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
