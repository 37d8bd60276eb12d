//! `legsync bench --sweep 10000,100000,1000000 [--repeat N] [--plot FILE.svg]`:
//! how the cost of a cold resync grows with the number of legs, native and
//! WASM side by side, each run in its own process (peak RSS is per process),
//! drawn as two charts: time per leg and peak memory per leg. With
//! `--repeat`, rounds go through every size in turn (so each size sees the
//! machine's slow and fast spells alike) and each point is the median run.

use super::report::BenchReport;
use super::series::run_child;
use super::{BenchArgs, PolicyKind};
use plotters::prelude::*;
use std::path::Path;
use std::process::ExitCode;

/// What a chart shows of a run.
type Measure = fn(&BenchReport) -> f64;

/// One point of the sweep.
struct Point {
    legs: u64,
    native: BenchReport,
    wasm: BenchReport,
}

pub async fn run(args: &BenchArgs, sizes: &[u64]) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!sizes.is_empty(), "--sweep needs at least one size");
    anyhow::ensure!(
        sizes.iter().all(|&legs| legs >= 2),
        "--sweep sizes must be at least 2 legs"
    );
    let rounds = args.repeat;
    // Per size: its native runs, then its WASM runs.
    let mut runs: Vec<[Vec<BenchReport>; 2]> = sizes.iter().map(|_| Default::default()).collect();
    for round in 1..=rounds {
        for (&legs, size_runs) in sizes.iter().zip(&mut runs) {
            eprintln!("sweep: round {round}/{rounds}, {legs} legs, native then wasm");
            for (policy, into) in [PolicyKind::Native, PolicyKind::Wasm]
                .into_iter()
                .zip(size_runs.iter_mut())
            {
                let report = run_child(args, policy, legs).await?;
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                into.push(report);
            }
        }
    }
    let points: Vec<Point> = sizes
        .iter()
        .zip(runs)
        .map(|(&legs, [native, wasm])| Point {
            legs,
            native: median_run(native),
            wasm: median_run(wasm),
        })
        .collect();
    if !args.json {
        print_table(&points, rounds);
    }
    if let Some(path) = &args.plot {
        draw(path, &points)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The run of median wall time (the lower middle of an even count).
fn median_run(mut reports: Vec<BenchReport>) -> BenchReport {
    reports.sort_by(|a, b| a.wall_seconds.total_cmp(&b.wall_seconds));
    reports.swap_remove((reports.len() - 1) / 2)
}

/// Time and memory per leg at each size, and time per leg against the
/// smallest size's: how far from linear the resync is.
fn print_table(points: &[Point], rounds: u32) {
    if rounds > 1 {
        println!("medians of {rounds} rounds");
    }
    println!(
        "{:>10}  {:>14} {:>14}  {:>12} {:>12}  {:>12}",
        "legs", "native ns/leg", "wasm ns/leg", "native B/leg", "wasm B/leg", "wasm vs first"
    );
    let first = points.first().map_or(1.0, |p| ns_per_leg(&p.wasm));
    for p in points {
        println!(
            "{:>10}  {:>14.0} {:>14.0}  {:>12.0} {:>12.0}  {:>11.2}x",
            p.legs,
            ns_per_leg(&p.native),
            ns_per_leg(&p.wasm),
            p.native.rss_bytes_per_leg,
            p.wasm.rss_bytes_per_leg,
            ns_per_leg(&p.wasm) / first
        );
    }
}

fn ns_per_leg(report: &BenchReport) -> f64 {
    report.wall_seconds * 1e9 / report.legs.max(1) as f64
}

/// Two charts side by side, legs on a log axis.
fn draw(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let lowest = points.iter().map(|p| p.legs).min().unwrap_or(1) as f64;
    let highest = points.iter().map(|p| p.legs).max().unwrap_or(1) as f64;
    let range = (lowest / 1.5)..(highest * 1.5);
    let charts: [(&DrawingArea<_, _>, &str, Measure); 2] = [
        (&left, "resync: time per leg (ns)", ns_per_leg),
        (&right, "resync: peak RSS per leg (bytes)", |r| {
            r.rss_bytes_per_leg
        }),
    ];
    for (area, title, value) in charts {
        let top = points
            .iter()
            .flat_map(|p| [value(&p.native), value(&p.wasm)])
            .fold(0.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(range.clone().log_scale(), 0.0..top.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("legs")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (name, colour, pick) in [
            (
                "native",
                BLUE,
                (|p: &Point| &p.native) as fn(&Point) -> &BenchReport,
            ),
            ("wasm", RED, |p: &Point| &p.wasm),
        ] {
            let series: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.legs as f64, value(pick(p))))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour));
            chart.draw_series(
                series
                    .into_iter()
                    .map(|xy| Circle::new(xy, 4, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
