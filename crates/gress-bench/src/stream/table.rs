//! The report as a table.

use super::StreamReport;

pub(crate) fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub(super) fn write_table(out: &mut String, report: &StreamReport) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "keyed count: {} events per run, keys {:?} ({:?}); epochs: {}; rocksdb: {}",
        report.events, report.keys, report.distribution, report.epoch_policy, report.rocksdb
    );
    let _ = writeln!(
        out,
        "load average before/after: {}/{} on {} cpus",
        opt(report.load_before, 2),
        opt(report.load_after, 2),
        report.machine.cpus
    );
    let _ = writeln!(
        out,
        "{:<15} {:>5} {:>3} {:>10} {:>11} {:>7} {:>7} {:>6} {:>5} {:>6} {:>17} {:>13} {:>8} {:>13} {:>13} {:>13} {:>6}",
        "subject",
        "ckpt",
        "wrk",
        "keys",
        "events/s",
        "cpu/ev",
        "rss MiB",
        "hit %",
        "ckpts",
        "wr/ev",
        "stall p50/99/max",
        "ckpt p50/max",
        "ckpt MiB",
        "lat@50% p50/99",
        "lat@80% p50/99",
        "lat@sat p50/99",
        "ratio"
    );
    for r in &report.rows {
        let pair = |a: Option<f64>, b: Option<f64>, d: usize| match (a, b) {
            (None, None) => "-".to_string(),
            _ => format!("{}/{}", opt(a, d), opt(b, d)),
        };
        let at = |p: u32| {
            r.offered
                .iter()
                .find(|o| o.percent == p)
                .map_or("-".to_string(), |o| {
                    pair(o.latency_ms_p50, o.latency_ms_p99, 0)
                })
        };
        let _ = writeln!(
            out,
            "{:<15} {:>5} {:>3} {:>10} {:>11.0} {:>7} {:>7} {:>6} {:>5} {:>6} {:>17} {:>13} {:>8} {:>13} {:>13} {:>13} {:>6}",
            r.subject,
            r.checkpoints,
            r.workers,
            r.keys,
            r.events_per_sec,
            r.cpu_ns_per_event
                .map_or("-".into(), |ns| format!("{ns:.0}ns")),
            opt(r.peak_rss_mib, 0),
            opt(r.cache_hit_rate.map(|h| h * 100.0), 1),
            r.checkpoints_committed
                .map_or("-".into(), |e| e.to_string()),
            opt(r.written_per_event, 2),
            match (r.stall_ms_p50, r.stall_ms_p99, r.stall_ms_max) {
                (Some(a), Some(b), Some(c)) => format!("{a:.1}/{b:.1}/{c:.1}"),
                _ => "-".into(),
            },
            pair(r.checkpoint_ms_p50, r.checkpoint_ms_max, 0),
            opt(r.checkpoint_mib_mean, 1),
            at(50),
            at(80),
            pair(r.latency_ms_p50, r.latency_ms_p99, 0),
            r.ratio_to_baseline
                .map_or(String::new(), |x| format!("{x:.2}x")),
        );
    }
    let _ = writeln!(
        out,
        "stall: a worker's pause per cut; lat@N%: source-to-commit latency at N% of the row's \
         peak events/s offered, ms"
    );
}
