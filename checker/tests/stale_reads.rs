//! The list-append checker's bounded-staleness mode (issue 21, "Reads on
//! backups"): STALE(bound) reads, `rs <key> <bound_ns> <list>` in the text
//! format, must return a state the key held at some moment of
//! `[invoke − bound, complete]`, and hold their session's own writes.
//!
//! Histories are written in the text format, one operation per line:
//! `<process> <kind> <time_ns> <micro-ops>`. Transactions are numbered T0,
//! T1, … in the order they are invoked.

use std::collections::BTreeSet;

use trellis_checker::format;
use trellis_checker::list_append::{self, Model};
use trellis_checker::{AnomalyClass, CycleKind, CycleVia, HistoryError, Mop, Op, Report, Verdict};

fn check(history: &str) -> Report {
    let ops = format::parse::<Mop>(history).expect("test histories parse");
    list_append::check(&ops, Model::StrictSerializable).expect("test histories are well formed")
}

fn assert_valid(report: &Report) {
    assert_eq!(report.verdict, Verdict::Valid, "{report}");
    assert!(report.anomalies.is_empty(), "{report}");
}

/// Asserts the report is Invalid with exactly `class`.
fn assert_only(report: &Report, class: AnomalyClass) {
    assert_eq!(report.verdict, Verdict::Invalid, "{report}");
    assert_eq!(report.classes(), BTreeSet::from([class]), "{report}");
}

/// T0 appends 1 to key 1 (done at 10 ns), T1 appends 2 (invoked at 20,
/// done at 30): `[1]` was the key's value until some moment in [20, 30].
/// T2, on a backup, reads key 1 with STALE(`bound_ns`) over [100, 110] and
/// gets `[1]`. T3 then reads `[1,2]` strongly.
fn replica_history(bound_ns: u64) -> String {
    format!(
        "0 invoke 0 a 1 1
         0 ok 10 a 1 1
         0 invoke 20 a 1 2
         0 ok 30 a 1 2
         1 invoke 100 rs 1 {bound_ns} _
         1 ok 110 rs 1 {bound_ns} [1]
         2 invoke 120 r 1 _
         2 ok 130 r 1 [1,2]"
    )
}

#[test]
fn stale_reads_within_their_bound_are_valid() {
    // (a) With a bound of 80 ns T2's window opens at 20 ns, when T1 had not
    // finished appending 2: `[1]` was overwritten less than the bound
    // before T2 began, so a replica 80 ns behind may serve it. Other stale
    // reads return the latest value, and the empty list long ago.
    let report = check(&format!(
        "{}
         3 invoke 140 rs 1 0 _
         3 ok 150 rs 1 0 [1,2]
         4 invoke 5 rs 1 1000 _ rs 2 1000 _
         4 ok 200 rs 1 1000 [] rs 2 1000 []",
        replica_history(80)
    ));
    assert_valid(&report);
}

#[test]
fn a_deliberately_stale_replica_is_caught() {
    // (b) With a bound of 50 ns T2's window opens at 50 ns, but T1 had
    // appended 2 by 30 ns: the replica served a state 20 ns staler than
    // allowed.
    let report = check(&replica_history(50));
    assert_only(&report, AnomalyClass::StaleRead);
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.txns, vec![2, 1]);
    assert_eq!(
        anomaly.explanation,
        "T2 read key 1 with STALE(50 ns) = [1], but T1's append of 2, which that list lacks, \
         committed at 30 ns, before the read's window [50, 110] ns opened (invoked at 100 ns, \
         bound 50 ns): key 1 no longer held [1] by then"
    );
}

#[test]
fn the_bound_decides() {
    // (d) The same read of `[1]` at [100, 110]: T1's append of 2 completed
    // at 30 ns, so any bound reaching back to 30 ns allows it, and any
    // shorter one does not. Completing exactly when the window opens is not
    // "before" it.
    for (bound_ns, valid) in [
        (u64::MAX, true),
        (80, true),
        (70, true),
        (69, false),
        (0, false),
    ] {
        let report = check(&replica_history(bound_ns));
        if valid {
            assert_valid(&report);
        } else {
            assert_only(&report, AnomalyClass::StaleRead);
        }
    }
}

#[test]
fn a_session_reads_its_own_writes() {
    // (c) Process 1 appends 3 to key 1 (T2, done at 40 ns), then reads key
    // 1 from a replica that has not applied it. The bound (1000 ns) allows
    // any state, so only the session guarantee is broken. Process 2 reads
    // the same state with the same bound: it never wrote, so that is fine.
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 10 a 1 1
         0 invoke 20 a 1 2
         0 ok 30 a 1 2
         1 invoke 35 a 1 3
         1 ok 40 a 1 3
         1 invoke 50 rs 1 1000 _
         1 ok 60 rs 1 1000 [1,2]
         2 invoke 50 rs 1 1000 _
         2 ok 60 rs 1 1000 [1,2]
         3 invoke 70 r 1 _
         3 ok 80 r 1 [1,2,3]",
    );
    assert_only(&report, AnomalyClass::ReadYourWrites);
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.txns, vec![3, 2]);
    assert!(
        anomaly
            .explanation
            .contains("lacks 3, appended by T2 on the same process 1"),
        "{report}"
    );

    // Process 1 appending 3 with an unknown outcome (info) does not oblige
    // its later reads to show it.
    let unknown = check(
        "0 invoke 0 a 1 1
         0 ok 10 a 1 1
         1 invoke 35 a 1 3
         1 info 40 a 1 3
         2 invoke 50 rs 1 1000 _
         2 ok 60 rs 1 1000 [1]",
    );
    assert_valid(&unknown);
}

#[test]
fn a_stale_transaction_must_hold_only_stale_reads() {
    // (e) T1 mixes a stale read with a STRONG one (and T2 with an append):
    // the workload never does, and the checker refuses rather than guess.
    for mixed in ["r 2 _", "a 2 5"] {
        let history = format!(
            "0 invoke 0 a 1 1
             0 ok 10 a 1 1
             1 invoke 20 rs 1 50 _ {mixed}"
        );
        let ops = format::parse::<Mop>(&history).expect("parses");
        assert_eq!(
            list_append::check(&ops, Model::StrictSerializable),
            Err(HistoryError::MixedStaleRead { txn: 1, index: 2 })
        );
        let error = list_append::check(&ops, Model::Serializable).unwrap_err();
        assert!(
            error.to_string().contains("T1 mixes stale reads"),
            "{error}"
        );
    }
}

#[test]
fn stale_histories_round_trip_through_the_text_format() {
    // (f) `rs <key> <bound_ns> <list>` writes and parses back.
    let ops = vec![
        Op::invoke(
            1,
            100,
            vec![Mop::StaleRead {
                key: 1,
                bound_ns: 50,
                value: None,
            }],
        ),
        Op::ok(
            1,
            110,
            vec![Mop::StaleRead {
                key: 1,
                bound_ns: 50,
                value: Some(vec![1, 2]),
            }],
        ),
    ];
    let text = format::write(&ops);
    assert!(
        text.ends_with("1 invoke 100 rs 1 50 _\n1 ok 110 rs 1 50 [1,2]\n"),
        "{text}"
    );
    assert_eq!(format::parse::<Mop>(&text).unwrap(), ops);
    let parsed = format::parse::<Mop>(&replica_history(50)).unwrap();
    assert_eq!(
        format::parse::<Mop>(&format::write(&parsed)).unwrap(),
        parsed
    );
}

#[test]
fn stale_reads_stay_out_of_the_dependency_graph() {
    // T2 reads [1,2] strongly after T1's append of 2 completed; T3 then
    // reads only [1]. As a stale read with a bound reaching back to before
    // T1 this is allowed; as a STRONG read it closes T3 →rw T1 →realtime
    // T3, a G-single-realtime cycle. So stale reads add no edges.
    let history = |read: &str| {
        format!(
            "0 invoke 0 a 1 1
             0 ok 10 a 1 1
             0 invoke 20 a 1 2
             0 ok 30 a 1 2
             2 invoke 40 r 1 _
             2 ok 50 r 1 [1,2]
             1 invoke 60 {read} _
             1 ok 70 {read} [1]"
        )
    };
    assert_valid(&check(&history("rs 1 100")));
    assert_only(
        &check(&history("r 1")),
        AnomalyClass::Cycle(CycleKind::GSingle, CycleVia::Realtime),
    );
    // Too stale for its bound, it is a stale-read, still not a cycle.
    assert_only(&check(&history("rs 1 10")), AnomalyClass::StaleRead);
}

#[test]
fn indeterminate_appends_never_prove_staleness() {
    // T0 appends 1 and times out at 10 ns: it may take effect at any time
    // after 0 ns, or never. T1's stale read of [] over [90, 110] is
    // therefore allowed, even though T2 later sees the append. Had T0
    // committed at 10 ns, [] would have been overwritten before 90 ns.
    let history = |outcome: &str| {
        format!(
            "0 invoke 0 a 1 1
             0 {outcome} 10 a 1 1
             1 invoke 100 rs 1 10 _
             1 ok 110 rs 1 10 []
             2 invoke 200 r 1 _
             2 ok 210 r 1 [1]"
        )
    };
    assert_valid(&check(&history("info")));
    assert_only(&check(&history("ok")), AnomalyClass::StaleRead);
}

#[test]
fn a_read_from_the_future_is_impossible() {
    // T1's stale read, done at 30 ns, holds 2, which T2 only began to
    // append at 40 ns: no replica could have had it.
    let report = check(
        "0 invoke 0 a 1 1
         0 ok 10 a 1 1
         1 invoke 20 rs 1 5 _
         1 ok 30 rs 1 5 [1,2]
         2 invoke 40 a 1 2
         2 ok 50 a 1 2",
    );
    assert_only(&report, AnomalyClass::FutureRead);
    assert_eq!(report.anomalies[0].txns, vec![1, 2]);
    assert!(
        report.anomalies[0]
            .explanation
            .contains("completing at 30 ns, but 2 was appended by T2, invoked only at 40 ns"),
        "{report}"
    );
}

#[test]
fn stale_reads_must_still_be_states_of_the_key() {
    // The per-read classes apply to stale reads as to STRONG ones.
    let base = "0 invoke 0 a 1 1
                0 ok 10 a 1 1
                0 invoke 20 a 1 2
                0 ok 30 a 1 2
                1 invoke 40 a 1 9
                1 fail 50 a 1 9
                2 invoke 60 r 1 _
                2 ok 70 r 1 [1,2]";
    let with = |read: &str| {
        check(&format!(
            "{base}\n3 invoke 80 rs 1 100 _\n3 ok 90 rs 1 100 {read}"
        ))
    };
    assert_only(&with("[2]"), AnomalyClass::IncompatibleOrder);
    assert_only(&with("[1,3]"), AnomalyClass::UnwrittenValue);
    assert_only(&with("[1,1]"), AnomalyClass::DuplicateElements);
    assert_only(&with("[1,2,9]"), AnomalyClass::G1a);
    assert_valid(&with("[1]"));

    // A stale read may be longer than every STRONG read; two such must
    // agree with each other. T3 appends 3 and 4 together, so a read ending
    // at 3 is an intermediate one.
    let longer = "0 invoke 0 a 1 1
                  0 ok 10 a 1 1
                  2 invoke 12 r 1 _
                  2 ok 15 r 1 [1]
                  0 invoke 20 a 1 2
                  1 invoke 20 a 1 3 a 1 4
                  0 ok 30 a 1 2
                  1 ok 30 a 1 3 a 1 4";
    let with = |reads: &str| check(&format!("{longer}\n{reads}"));
    assert_valid(&with(
        "3 invoke 60 rs 1 100 _\n3 ok 70 rs 1 100 [1,2,3,4]\n\
         4 invoke 60 rs 1 100 _\n4 ok 70 rs 1 100 [1,2]",
    ));
    assert_only(
        &with(
            "3 invoke 60 rs 1 100 _\n3 ok 70 rs 1 100 [1,2,3,4]\n\
             4 invoke 60 rs 1 100 _\n4 ok 70 rs 1 100 [1,3,4]",
        ),
        AnomalyClass::IncompatibleOrder,
    );
    assert_only(
        &with("3 invoke 60 rs 1 100 _\n3 ok 70 rs 1 100 [1,2,3]"),
        AnomalyClass::G1b,
    );
}

#[test]
fn stale_reads_alone_are_judged() {
    // With no STRONG read, the stale reads still reveal the order: the
    // history is not Unknown, and a stale one is caught.
    let history = |bound_ns: u64| {
        format!(
            "0 invoke 0 a 1 1
             0 ok 10 a 1 1
             1 invoke 100 rs 1 {bound_ns} _
             1 ok 110 rs 1 {bound_ns} []"
        )
    };
    assert_valid(&check(&history(100)));
    assert_only(&check(&history(50)), AnomalyClass::StaleRead);
    // Nothing read at all is still Unknown.
    let report = check("0 invoke 0 a 1 1\n0 ok 10 a 1 1");
    assert_eq!(report.verdict, Verdict::Unknown, "{report}");
}
