//! Watermarks after recovery: a record replayed after a failure sees the
//! watermark it saw in a run without failure (the sources' event-time high
//! marks and the operators' watermarks are part of each checkpoint).

use gress_stream::*;
use std::path::Path;
use std::time::Duration;

/// Emits (record, the watermark it was processed under); fails at record
/// `fail_at`.
struct SeenWatermark {
    fail_at: Option<u64>,
}

impl KeyedProcessFunction<u64, u64> for SeenWatermark {
    type Out = (u64, u64);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64), ()>,
        i: u64,
    ) -> Result<()> {
        if self.fail_at == Some(i) {
            return Err(Error::Worker("injected failure".into()));
        }
        let wm = ctx.watermark();
        ctx.output((i, wm));
        Ok(())
    }
}

fn run_job(dir: &Path, workers: usize, fail_at: Option<u64>) -> Result<JobReport> {
    let out = dir.join("out");
    let config = JobConfig::new("watermarks")
        .with_workers(workers)
        .with_checkpoint_dir(dir)
        .with_epochs(EpochPolicy::Records(100));
    run(config, move |job| {
        job.source_with_event_time(
            "numbers",
            GeneratorSource::new(2, Some(1_000), |_, i| i),
            |i| 1_000 + i * 10,
            Duration::from_millis(5),
        )?
        .key_by(|i| *i % 3)
        .process("seen", SeenWatermark { fail_at })
        .sink("out", FileSink::new(out.clone()))
    })
}

/// The committed output, sorted.
fn committed(dir: &Path) -> Vec<(u64, u64)> {
    let mut all: Vec<_> = FileSink::read_committed(&dir.join("out")).expect("committed output");
    all.sort_unstable();
    all
}

#[test]
fn watermarks_seen_by_records_repeat_after_recovery() -> Result<()> {
    for workers in [1, 2] {
        let clean = tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()))?;
        run_job(clean.path(), workers, None)?;

        let dir = tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()))?;
        let first = run_job(dir.path(), workers, Some(550));
        assert!(first.is_err(), "the injected failure stops the job");
        let report = run_job(dir.path(), workers, None)?;
        assert!(report.recovered_from.is_some(), "the second run recovers");

        let (a, b) = (committed(clean.path()), committed(dir.path()));
        assert!(
            a.iter().any(|(_, wm)| *wm > 0),
            "watermarks advance during the run"
        );
        let first_difference = a.iter().zip(&b).find(|(x, y)| x != y);
        assert_eq!(
            a.len(),
            b.len(),
            "{workers} workers: committed output differs in length"
        );
        assert!(
            first_difference.is_none(),
            "{workers} workers, recovered from {:?}: first difference (clean, recovered) {first_difference:?}",
            report.recovered_from
        );
    }
    Ok(())
}
