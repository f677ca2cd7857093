//! Hand-built list-append histories, one per anomaly class, each asserting
//! that the checker reports exactly that class; and valid histories,
//! asserting that it reports nothing.
//!
//! Histories are written in the text format (see `format`): one operation
//! per line, `<process> <kind> <time_ns> <micro-ops>`. Transactions are
//! numbered T0, T1, … in the order they are invoked.

use std::collections::BTreeSet;

use trellis_checker::format;
use trellis_checker::list_append::{self, Model};
use trellis_checker::{AnomalyClass, CycleKind, CycleVia, Mop, Relation, Report, Verdict};

fn check_with(history: &str, model: Model) -> Report {
    let ops = format::parse::<Mop>(history).expect("test histories parse");
    list_append::check(&ops, model).expect("test histories are well formed")
}

fn check(history: &str) -> Report {
    check_with(history, Model::StrictSerializable)
}

fn cycle(kind: CycleKind, via: CycleVia) -> AnomalyClass {
    AnomalyClass::Cycle(kind, via)
}

/// Asserts the report is Invalid with exactly `class`, and returns it.
fn assert_only(report: &Report, class: AnomalyClass) {
    assert_eq!(report.verdict, Verdict::Invalid, "{report}");
    assert_eq!(report.classes(), BTreeSet::from([class]), "{report}");
}

#[test]
fn g0_write_cycle() {
    // T0 and T1 each append to keys 1 and 2; T2 sees T0 first on key 1 and
    // T1 first on key 2: each write overwrote the other's.
    let report = check(
        "0 invoke 0 a 1 1 a 2 1
         1 invoke 1 a 1 2 a 2 2
         0 ok 2 a 1 1 a 2 1
         1 ok 3 a 1 2 a 2 2
         2 invoke 4 r 1 _ r 2 _
         2 ok 5 r 1 [1,2] r 2 [2,1]",
    );
    assert_only(&report, cycle(CycleKind::G0, CycleVia::Data));
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.cycle.len(), 2);
    assert!(anomaly.cycle.iter().all(|s| s.relation == Relation::Ww));
    let words: Vec<&str> = anomaly
        .cycle
        .iter()
        .map(|s| s.explanation.as_str())
        .collect();
    assert!(
        words.contains(&"T1 appended 2 to key 1 after T0's append of 1 (ww)"),
        "{words:?}"
    );
    assert!(
        words.contains(&"T0 appended 1 to key 2 after T1's append of 2 (ww)"),
        "{words:?}"
    );
}

#[test]
fn g1a_aborted_read() {
    // T0 failed, yet T1 reads its append.
    let report = check(
        "0 invoke 0 a 1 1
         0 fail 1 a 1 1
         1 invoke 2 r 1 _
         1 ok 3 r 1 [1]",
    );
    assert_only(&report, AnomalyClass::G1a);
    assert_eq!(report.anomalies[0].txns, vec![1, 0]);
}

#[test]
fn g1b_intermediate_read() {
    // T0 appends 1 then 2 to key 1; T1 sees the state between them.
    let report = check(
        "0 invoke 0 a 1 1 a 1 2
         0 ok 1 a 1 1 a 1 2
         1 invoke 2 r 1 _
         1 ok 3 r 1 [1]",
    );
    assert_only(&report, AnomalyClass::G1b);
}

#[test]
fn g1c_circular_information_flow() {
    // Concurrent T0 and T1 each read the other's append.
    let report = check(
        "0 invoke 0 a 1 1 r 2 _
         1 invoke 1 a 2 1 r 1 _
         0 ok 2 a 1 1 r 2 [1]
         1 ok 3 a 2 1 r 1 [1]",
    );
    assert_only(&report, cycle(CycleKind::G1c, CycleVia::Data));
    let words: Vec<&str> = report.anomalies[0]
        .cycle
        .iter()
        .map(|s| s.explanation.as_str())
        .collect();
    assert!(
        words.contains(&"T1 read T0's append of 1 to key 1 (wr)"),
        "{words:?}"
    );
}

#[test]
fn g_single_read_skew() {
    // T1 appends to keys 1 and 2; T0 sees its append to key 2 but not to
    // key 1.
    let report = check(
        "0 invoke 0 r 1 _ r 2 _
         1 invoke 1 a 1 1 a 2 1
         1 ok 2 a 1 1 a 2 1
         0 ok 3 r 1 [] r 2 [1]",
    );
    assert_only(&report, cycle(CycleKind::GSingle, CycleVia::Data));
    let steps = &report.anomalies[0].cycle;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].relation, Relation::Rw);
    assert_eq!(
        steps[0].explanation,
        "T0 read key 1 before T1 appended 1 (rw; the read was empty)"
    );
}

#[test]
fn g_nonadjacent() {
    // T0 →rw T1 →wr T2 →rw T3 →wr T0, all four concurrent.
    let report = check(
        "0 invoke 0 r 1 _ r 4 _
         1 invoke 1 a 1 1 a 2 1
         2 invoke 2 r 2 _ r 3 _
         3 invoke 3 a 3 1 a 4 1
         0 ok 4 r 1 [] r 4 [1]
         1 ok 5 a 1 1 a 2 1
         2 ok 6 r 2 [1] r 3 []
         3 ok 7 a 3 1 a 4 1",
    );
    assert_only(&report, cycle(CycleKind::GNonadjacent, CycleVia::Data));
    let relations: Vec<Relation> = report.anomalies[0]
        .cycle
        .iter()
        .map(|s| s.relation)
        .collect();
    assert_eq!(relations.len(), 4);
    assert_eq!(relations.iter().filter(|r| **r == Relation::Rw).count(), 2);
}

#[test]
fn g2_item_write_skew() {
    // Each reads both keys empty and appends to a different one.
    let report = check(
        "0 invoke 0 r 1 _ r 2 _ a 1 1
         1 invoke 1 r 1 _ r 2 _ a 2 1
         0 ok 2 r 1 [] r 2 [] a 1 1
         1 ok 3 r 1 [] r 2 [] a 2 1",
    );
    assert_only(&report, cycle(CycleKind::G2Item, CycleVia::Data));
    assert!(
        report.anomalies[0]
            .cycle
            .iter()
            .all(|s| s.relation == Relation::Rw)
    );
}

#[test]
fn internal_inconsistency() {
    // T0 appends 1 to key 1, then reads key 1 without it.
    let report = check(
        "0 invoke 0 a 1 1 r 1 _
         0 ok 1 a 1 1 r 1 []",
    );
    assert_only(&report, AnomalyClass::Internal);
    // A read after a read must repeat it exactly.
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 1 a 1 1
         1 invoke 2 r 1 _ r 1 _
         1 ok 3 r 1 [1] r 1 []",
    );
    assert_only(&report, AnomalyClass::Internal);
}

#[test]
fn incompatible_orders() {
    // T2 and T3 see the two appends in opposite orders.
    let report = check(
        "0 invoke 0 a 1 1
         1 invoke 0 a 1 2
         0 ok 1 a 1 1
         1 ok 1 a 1 2
         2 invoke 2 r 1 _
         3 invoke 2 r 1 _
         2 ok 3 r 1 [1,2]
         3 ok 3 r 1 [2,1]",
    );
    assert_only(&report, AnomalyClass::IncompatibleOrder);
    assert!(
        report.anomalies[0]
            .explanation
            .contains("differ at position 0"),
        "{report}"
    );
}

#[test]
fn duplicate_elements() {
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 1 a 1 1
         1 invoke 2 r 1 _
         1 ok 3 r 1 [1,1]",
    );
    assert_only(&report, AnomalyClass::DuplicateElements);
}

#[test]
fn unwritten_value() {
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 1 a 1 1
         1 invoke 2 r 1 _
         1 ok 3 r 1 [1,9]",
    );
    assert_only(&report, AnomalyClass::UnwrittenValue);
}

#[test]
fn lost_update() {
    // T0 and T1 both read key 1 empty and append to it; T2 sees both
    // appends, so each was made on a read that missed the other.
    let report = check(
        "0 invoke 0 r 1 _ a 1 1
         1 invoke 1 r 1 _ a 1 2
         0 ok 2 r 1 [] a 1 1
         1 ok 3 r 1 [] a 1 2
         2 invoke 4 r 1 _
         2 ok 5 r 1 [1,2]",
    );
    assert_only(&report, AnomalyClass::LostUpdate);
    assert_eq!(report.anomalies[0].txns, vec![0, 1]);
}

#[test]
fn g_single_process() {
    // Process 0 appends, then (its next transaction) reads key 1 empty:
    // its own committed write vanished. Only program order (or real time)
    // puts the read after the append.
    let history = "0 invoke 0 a 1 1
                   0 ok 1 a 1 1
                   0 invoke 2 r 1 _
                   0 ok 3 r 1 []";
    let report = check(history);
    assert_only(&report, cycle(CycleKind::GSingle, CycleVia::Process));
    let relations: Vec<Relation> = report.anomalies[0]
        .cycle
        .iter()
        .map(|s| s.relation)
        .collect();
    assert!(relations.contains(&Relation::Process), "{report}");
    // Serializability alone allows it: the read may be ordered first.
    assert_eq!(
        check_with(history, Model::Serializable).verdict,
        Verdict::Valid
    );
    assert_eq!(
        check_with(history, Model::StrongSessionSerializable).classes(),
        BTreeSet::from([cycle(CycleKind::GSingle, CycleVia::Process)])
    );
}

#[test]
fn g_single_realtime_stale_read() {
    // T0 commits an append; T1, on another process, begins afterwards and
    // does not see it.
    let history = "0 invoke 0 a 1 1
                   0 ok 10 a 1 1
                   1 invoke 20 r 1 _
                   1 ok 30 r 1 []";
    let report = check(history);
    assert_only(&report, cycle(CycleKind::GSingle, CycleVia::Realtime));
    let steps = &report.anomalies[0].cycle;
    assert!(
        steps
            .iter()
            .any(|s| s.explanation == "T0 completed before T1 began (realtime: 10 ns < 20 ns)"),
        "{report}"
    );
    // Without real-time order it is allowed, even with program order.
    assert_eq!(
        check_with(history, Model::StrongSessionSerializable).verdict,
        Verdict::Valid
    );
}

#[test]
fn g1c_realtime_future_read() {
    // T0 reads a value that T1 appends only after T0 completed.
    let report = check(
        "0 invoke 0 r 1 _
         0 ok 10 r 1 [1]
         1 invoke 20 a 1 1
         1 ok 30 a 1 1",
    );
    assert_only(&report, cycle(CycleKind::G1c, CycleVia::Realtime));
}

#[test]
fn realtime_cycles_go_through_the_reduction() {
    // T0 completes before T1 begins, T1 before T2: the real-time edge
    // T0 → T2 is implied, not stored, and the cycle goes through T1.
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 10 a 1 1
         1 invoke 20 a 2 1
         1 ok 30 a 2 1
         2 invoke 40 r 1 _
         2 ok 50 r 1 []",
    );
    assert_only(&report, cycle(CycleKind::GSingle, CycleVia::Realtime));
    assert_eq!(report.anomalies[0].txns.len(), 3, "{report}");
}

#[test]
fn valid_concurrent_history_with_info_and_fail() {
    // T0 and T1 overlap. T1 times out, but its append is observed by T2, so
    // it happened. T3 failed and is never seen. T4 times out and is never
    // seen: it may never have happened. T5 overlaps T4 and reads before it.
    let report = check(
        "0 invoke 0 a 1 1 r 2 _
         1 invoke 1 a 2 5
         0 ok 3 a 1 1 r 2 []
         1 info 4 a 2 5
         2 invoke 5 r 1 _ r 2 _
         2 ok 6 r 1 [1] r 2 [5]
         3 invoke 7 a 1 2
         3 fail 8 a 1 2
         4 invoke 9 a 3 7
         4 info 10
         5 invoke 9 r 3 _ r 1 _
         5 ok 12 r 3 [] r 1 [1]",
    );
    assert_eq!(report.verdict, Verdict::Valid, "{report}");
    assert!(report.anomalies.is_empty());
}

#[test]
fn info_that_happened_late_is_valid() {
    // T0 times out at 10, but its append takes effect later: T1, begun at
    // 20, does not see it and T2, begun at 40, does. An info transaction's
    // completion is no bound on when it took effect.
    let report = check(
        "0 invoke 0 a 1 1
         0 info 10 a 1 1
         1 invoke 20 r 1 _
         1 ok 30 r 1 []
         2 invoke 40 r 1 _
         2 ok 50 r 1 [1]",
    );
    assert_eq!(report.verdict, Verdict::Valid, "{report}");
}

#[test]
fn valid_serial_appends_and_reads_on_one_process() {
    let report = check(
        "0 invoke 0 r 1 _ a 1 1
         0 ok 1 r 1 [] a 1 1
         0 invoke 2 a 1 2 r 1 _
         0 ok 3 a 1 2 r 1 [1,2]
         0 invoke 4 r 1 _ a 1 3 r 1 _
         0 ok 5 r 1 [1,2] a 1 3 r 1 [1,2,3]",
    );
    assert_eq!(report.verdict, Verdict::Valid, "{report}");
}

#[test]
fn nothing_read_is_unknown() {
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 1 a 1 1
         1 invoke 2 a 1 2
         1 info 3",
    );
    assert_eq!(report.verdict, Verdict::Unknown, "{report}");
    assert!(!report.notes.is_empty());
}

#[test]
fn duplicate_appends_are_refused_not_judged() {
    let ops = format::parse::<Mop>(
        "0 invoke 0 a 1 1
         1 invoke 0 a 1 1",
    )
    .unwrap();
    assert!(list_append::check(&ops, Model::StrictSerializable).is_err());
}
