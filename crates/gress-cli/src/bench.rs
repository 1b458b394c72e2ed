//! `gress bench memory|rocksdb|stream|nexmark|rescale|savepoint`: the benchmarks, a table,
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
  gress bench rescale --mib 1024 --from 2 --to 4
  gress bench savepoint --keys 1000000,10000000 --from 2 --to 3")]
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
        ($area:expr, $caption:expr, $range:expr, $format:expr) => {{
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
                .x_label_formatter($format)
                .draw()?;
            chart
        }};
    }

    let max_tput = rows.iter().map(|r| r.throughput).fold(0.0, f64::max) * 1.1;
    let mut chart = panel!(
        &top,
        format!("throughput ({}/s)", outcome.throughput_unit),
        0.0..max_tput.max(1.0),
        &|v: &f64| human(*v)
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

    // Milliseconds, on an axis of whole decades, each labelled.
    let lat: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.latency_ns.iter().map(|(_, v)| *v / 1e6))
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = decades(&lat);
    let ticks: Vec<f64> = (lo.log10().round() as i32..=hi.log10().round() as i32)
        .map(decade)
        .collect();
    let mut chart = panel!(
        &bottom,
        "latency percentiles (ms, log scale)",
        (lo..hi).log_scale().with_key_points(ticks),
        &|v: &f64| ms(*v)
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
                let v = r.latency_ns.iter().find(|(n, _)| n == name)?.1 / 1e6;
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

/// The whole decades around `values` (ms): at least one decade wide.
fn decades(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    if values.is_empty() || !min.is_finite() || max <= 0.0 {
        return (0.001, 1000.0);
    }
    let lo = min.log10().floor() as i32;
    let hi = (max.log10().ceil() as i32).max(lo + 1);
    (decade(lo), decade(hi))
}

/// `10^e`, exact for the decades an axis uses.
fn decade(e: i32) -> f64 {
    if e < 0 {
        1.0 / 10f64.powi(-e)
    } else {
        10f64.powi(e)
    }
}

/// A decade of milliseconds as a label: `0.01 ms`, `1 ms`, `100 ms`, `10 s`.
fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0} ms")
    } else {
        // 0.1, 0.01, ... as written, without float noise.
        let digits = (-v.log10()).ceil().max(1.0) as usize;
        format!("{v:.digits$} ms")
    }
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

#[cfg(test)]
mod plot_tests {
    use super::*;

    #[test]
    fn latency_axes_span_whole_labelled_decades() {
        assert_eq!(decades(&[0.003, 42.0]), (0.001, 100.0));
        assert_eq!(decades(&[5.0]), (1.0, 10.0));
        assert_eq!(decades(&[]), (0.001, 1000.0));
        assert_eq!(ms(0.01), "0.01 ms");
        assert_eq!(ms(1.0), "1 ms");
        assert_eq!(ms(100.0), "100 ms");
        assert_eq!(ms(10_000.0), "10 s");
    }
}
