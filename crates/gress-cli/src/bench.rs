//! `gress bench memory|rocksdb|stream|rescale`: the benchmarks, a table,
//! `--json`, `--save FILE`, `--plot out.svg`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gress_bench::{BenchCmd, Outcome};
use plotters::prelude::*;

use crate::exit;
use crate::out::Out;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gress bench memory --sizes 10000 --threads 1
  gress bench rocksdb --only get,put --plot rocksdb.svg
  gress bench stream --workers 1,2 --rounds 3 --save stream.json
  gress bench rescale --mib 1024 --from 2 --to 4")]
pub(crate) struct Args {
    #[command(subcommand)]
    which: BenchCmd,
    /// Draw throughput and latency percentiles per measured row into this
    /// SVG file.
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long, global = true)]
    save: Option<PathBuf>,
}

pub(crate) fn run(args: &Args, out: &Out) -> Result<u8> {
    let bar = out.spinner("benchmarking");
    let status = bar.clone();
    gress_bench::set_status(move |msg| status.set_message(msg.to_string()));
    let outcome = gress_bench::run(&args.which);
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome.json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot(&outcome, path).with_context(|| format!("drawing {}", path.display()))?;
    }
    out.emit(&outcome.json, || {
        say_raw!("{}", outcome.table);
        if let Some(p) = &args.save {
            say!("wrote {}", p.display());
        }
        if let Some(p) = &args.plot {
            say!("plotted {}", p.display());
        }
    });
    Ok(exit::OK)
}

/// Two panels: throughput per row (bars) and latency percentiles per row
/// (points on a log scale).
fn plot(outcome: &Outcome, path: &Path) -> Result<()> {
    let rows = &outcome.plot;
    if rows.is_empty() {
        anyhow::bail!("nothing was measured");
    }
    let n = rows.len();
    let height = 260 + 22 * n as u32;
    let root = SVGBackend::new(path, (1100, height * 2)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(height);
    let label_of = |i: usize| rows.get(i).map_or(String::new(), |r| r.label.clone());
    // A panel: one band per row, labelled, along an x axis of `range`.
    macro_rules! panel {
        ($area:expr, $caption:expr, $range:expr) => {{
            let mut chart = ChartBuilder::on($area)
                .caption($caption, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(320)
                .build_cartesian_2d($range, (0..n).into_segmented())?;
            chart
                .configure_mesh()
                .y_labels(n)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => label_of(*i),
                    _ => String::new(),
                })
                .x_label_formatter(&|v| human(*v))
                .draw()?;
            chart
        }};
    }

    let max_tput = rows.iter().map(|r| r.throughput).fold(0.0, f64::max) * 1.1;
    let mut chart = panel!(
        &top,
        format!("throughput ({}/s)", outcome.throughput_unit),
        0.0..max_tput.max(1.0)
    );
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (r.throughput, SegmentValue::Exact(i + 1)),
            ],
            BLUE.mix(0.6).filled(),
        )
    }))?;

    let lat: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.latency_ns.iter().map(|(_, v)| *v))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = lat.iter().copied().fold(f64::MAX, f64::min).max(1.0) / 2.0;
    let hi = lat.iter().copied().fold(1.0, f64::max) * 2.0;
    let mut chart = panel!(
        &bottom,
        "latency percentiles (ns, log scale)",
        (lo.min(hi / 4.0)..hi).log_scale()
    );
    let names: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for r in rows {
            for (name, _) in &r.latency_ns {
                if !v.contains(name) {
                    v.push(name);
                }
            }
        }
        v
    };
    for (k, name) in names.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
                let v = r.latency_ns.iter().find(|(n, _)| n == name)?.1;
                (v > 0.0).then(|| Circle::new((v, SegmentValue::CenterOf(i)), 5, color.filled()))
            }))?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
