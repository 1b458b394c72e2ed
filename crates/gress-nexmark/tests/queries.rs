//! Every query against its reference: 200,000 events on 2 workers, and
//! 40,000 events with a failure part-way, recovered on 2 workers and
//! rescaled to 3, on the memory backend and on RocksDB.

mod common;

use std::path::Path;

use common::{Build, read, reference, rows, settings, table};
use gress_nexmark::Event;
use gress_nexmark::queries::stateless::{Q10, SideInput};
use gress_nexmark::queries::{joins, stateless, updating, windows};
use gress_stream::{DataStream, FileSink, PartitionedFileSink, Result};

const EVENTS: u64 = 200_000;

/// Two tests per query: `$name` against the reference, and
/// `$name_recovers` under failures and a rescale. `$build` sinks the
/// query's output into a `FileSink`, `$out` reads it back as sorted text,
/// `$reference` computes the same from the events.
macro_rules! query_tests {
    ($name:ident, $recovers:ident, $query:expr, $out:expr, $reference:expr) => {
        fn $name(events: DataStream<'_, Event>, out: &Path) -> Result<()> {
            ($query)(events).sink("out", FileSink::new(out))
        }

        mod $name {
            use super::*;

            #[test]
            fn matches_its_reference() {
                common::matches_reference(
                    &settings(EVENTS),
                    super::$name as Build,
                    $out,
                    $reference,
                );
            }

            #[test]
            fn survives_a_failure_and_a_rescale_on_both_backends() {
                common::survives_failures(super::$name as Build, $out, $reference);
            }
        }
    };
}

query_tests!(
    q0,
    q0_recovers,
    stateless::q0,
    |o: &Path| rows(read::<stateless::Q0>(o)),
    |e: &[Event]| rows(reference::q0(e))
);
query_tests!(
    q1,
    q1_recovers,
    stateless::q1,
    |o: &Path| rows(read::<stateless::Q1>(o)),
    |e: &[Event]| rows(reference::q1(e))
);
query_tests!(
    q2,
    q2_recovers,
    stateless::q2,
    |o: &Path| rows(read::<(u64, u64)>(o)),
    |e: &[Event]| rows(reference::q2(e))
);
query_tests!(
    q3,
    q3_recovers,
    joins::q3,
    |o: &Path| rows(read::<joins::Q3>(o)),
    |e: &[Event]| rows(reference::q3(e))
);
query_tests!(
    q4,
    q4_recovers,
    joins::q4,
    |o: &Path| table(read::<gress_stream::Change<(u64, u64)>>(o)),
    |e: &[Event]| rows(reference::q4(e))
);
query_tests!(
    q5,
    q5_recovers,
    windows::q5,
    |o: &Path| rows(read::<windows::Q5>(o)),
    |e: &[Event]| rows(reference::q5(e))
);
query_tests!(
    q6,
    q6_recovers,
    joins::q6,
    |o: &Path| table(read::<gress_stream::Change<(u64, u64)>>(o)),
    |e: &[Event]| rows(reference::q6(e))
);
query_tests!(
    q7,
    q7_recovers,
    windows::q7,
    |o: &Path| rows(read::<windows::Q7>(o)),
    |e: &[Event]| rows(reference::q7(e))
);
query_tests!(
    q8,
    q8_recovers,
    windows::q8,
    |o: &Path| rows(read::<windows::Q8>(o)),
    |e: &[Event]| rows(reference::q8(e))
);
query_tests!(
    q9,
    q9_recovers,
    joins::q9,
    |o: &Path| table(read::<gress_stream::Change<joins::Q9>>(o)),
    |e: &[Event]| rows(reference::q9(e))
);
query_tests!(
    q11,
    q11_recovers,
    windows::q11,
    |o: &Path| rows(read::<windows::BidderCount>(o)),
    |e: &[Event]| rows(reference::q11(e))
);
query_tests!(
    q14,
    q14_recovers,
    stateless::q14,
    |o: &Path| rows(read::<stateless::Q14>(o)),
    |e: &[Event]| rows(reference::q14(e))
);
query_tests!(
    q15,
    q15_recovers,
    updating::q15,
    |o: &Path| table(read::<gress_stream::Change<(String, updating::BidStats)>>(
        o
    )),
    |e: &[Event]| rows(reference::q15(e))
);
query_tests!(
    q16,
    q16_recovers,
    updating::q16,
    |o: &Path| table(read::<
        gress_stream::Change<((String, String), updating::BidStats)>,
    >(o)),
    |e: &[Event]| rows(reference::q16(e))
);
query_tests!(
    q17,
    q17_recovers,
    updating::q17,
    |o: &Path| table(read::<
        gress_stream::Change<((u64, String), updating::AuctionStats)>,
    >(o)),
    |e: &[Event]| rows(reference::q17(e))
);
query_tests!(
    q18,
    q18_recovers,
    updating::q18,
    |o: &Path| table(read::<gress_stream::Change<gress_nexmark::Bid>>(o)),
    |e: &[Event]| rows(reference::q18(e))
);
query_tests!(
    q19,
    q19_recovers,
    updating::q19,
    |o: &Path| table(read::<
        gress_stream::Change<gress_stream::Ranked<gress_nexmark::Bid>>,
    >(o)),
    |e: &[Event]| rows(reference::q19(e))
);
query_tests!(
    q20,
    q20_recovers,
    joins::q20,
    |o: &Path| rows(read::<joins::Q20>(o)),
    |e: &[Event]| rows(reference::q20(e))
);
query_tests!(
    q21,
    q21_recovers,
    stateless::q21,
    |o: &Path| rows(read::<stateless::Q21>(o)),
    |e: &[Event]| rows(reference::q21(e))
);
query_tests!(
    q22,
    q22_recovers,
    stateless::q22,
    |o: &Path| rows(read::<stateless::Q22>(o)),
    |e: &[Event]| rows(reference::q22(e))
);

/// q12 counts in windows of the job's clock: the windows depend on when
/// records are processed, so the counts per bidder over all windows are
/// checked, and that every window is 10 s on a 10 s boundary.
fn q12_output(out: &Path) -> Vec<String> {
    let rows: Vec<windows::BidderCount> = read(out);
    let mut totals = std::collections::BTreeMap::new();
    for r in rows {
        assert_eq!(r.end - r.start, 10_000, "a window of 10 s");
        assert_eq!(r.start % 10_000, 0, "on a 10 s boundary");
        *totals.entry(r.bidder).or_insert(0u64) += r.bid_count;
    }
    totals.into_iter().map(|t| format!("{t:?}")).collect()
}

fn q12_reference(events: &[Event]) -> Vec<String> {
    reference::q12(events)
        .into_iter()
        .map(|t| format!("{t:?}"))
        .collect()
}

query_tests!(q12, q12_recovers, windows::q12, q12_output, q12_reference);

/// q13's side input: keys 0..5000 (half of the auctions' `% 10000` find
/// a value), in a file beside the test's data.
fn side_input() -> SideInput {
    let path = std::env::temp_dir().join(format!("gress-nexmark-side-{}.csv", std::process::id()));
    if !path.exists() {
        SideInput::write(&path, 5_000).expect("writing the side input");
    }
    SideInput::load(&path).expect("reading the side input")
}

fn q13_query(events: DataStream<'_, Event>) -> DataStream<'_, stateless::Q13> {
    stateless::q13(events, side_input())
}

query_tests!(
    q13,
    q13_recovers,
    q13_query,
    |o: &Path| rows(read::<stateless::Q13>(o)),
    |e: &[Event]| rows(reference::q13(e, &side_input()))
);

/// q10 writes partitions; its output is read per partition.
fn q10(events: DataStream<'_, Event>, out: &Path) -> Result<()> {
    stateless::q10(events).sink("out", PartitionedFileSink::new(out, Q10::partition))
}

fn q10_output(out: &Path) -> Vec<String> {
    let parts = PartitionedFileSink::<Q10>::read_committed(out).expect("committed partitions");
    parts
        .into_iter()
        .flat_map(|(part, rows)| {
            assert!(
                rows.iter().all(|r| r.partition() == part),
                "rows in their partition"
            );
            let mut rows = rows;
            rows.sort();
            rows.into_iter().map(move |r| format!("{part} {r:?}"))
        })
        .collect()
}

fn q10_reference(events: &[Event]) -> Vec<String> {
    reference::q10(events)
        .into_iter()
        .flat_map(|(part, rows)| rows.into_iter().map(move |r| format!("{part} {r:?}")))
        .collect()
}

mod q10 {
    use super::*;

    #[test]
    fn matches_its_reference() {
        common::matches_reference(
            &settings(EVENTS),
            super::q10 as Build,
            q10_output,
            q10_reference,
        );
    }

    #[test]
    fn survives_a_failure_and_a_rescale_on_both_backends() {
        common::survives_failures(super::q10 as Build, q10_output, q10_reference);
    }
}
