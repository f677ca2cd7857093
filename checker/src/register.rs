//! The register checker: per-key linearizability of single-register reads,
//! writes and compare-and-set, with indeterminate operations.
//!
//! Each operation has one [`RegisterMop`]; keys are independent registers,
//! absent at first. A history is linearizable if, for every key, its
//! operations can be put in one order that respects real time (an operation
//! that completed before another was invoked comes first) and in which each
//! read returns the latest write.
//!
//! - `ok` operations must each take effect once, between invocation and
//!   completion.
//! - `fail` operations never took effect and are dropped (a failed
//!   compare-and-set did not write).
//! - `info` writes and compare-and-sets may take effect at any time after
//!   their invocation, or never; `info` reads are dropped (nothing was
//!   learned from them).
//!
//! The search is Wing and Gong's, with Lowe's memoization: walk the events
//! in time order, try to linearize each invoked operation, backtrack when an
//! operation completes before it could be placed, and never explore the
//! same (set of placed operations, register value) twice. It is exponential
//! in the worst case, so each key's search is bounded by
//! [`REGISTER_SEARCH_STEPS_MAX`].
//!
//! # Verdict
//!
//! Invalid if some key is not linearizable. Unknown if no key is proven
//! non-linearizable but some key's search hit the bound, or if there is no
//! `ok` operation at all. Valid otherwise.

use std::collections::{BTreeMap, HashSet};

use crate::history::{self, HistoryError, Micro, Op, Outcome};
use crate::report::{Anomaly, AnomalyClass, Report, ReportBuilder};

/// Search steps (events visited) per key before giving up with Unknown.
pub const REGISTER_SEARCH_STEPS_MAX: usize = 1_000_000;

/// A register micro-op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterMop {
    /// Read the register: `None` in an invocation; in an `ok` completion
    /// `Some(None)` for absent, `Some(Some(v))` for a value.
    Read {
        key: u64,
        value: Option<Option<u64>>,
    },
    /// Set the register to `value`.
    Write { key: u64, value: u64 },
    /// Set it to `new` if it holds `expected`; `ok` only if it did.
    Cas { key: u64, expected: u64, new: u64 },
}

impl RegisterMop {
    /// The register this micro-op touches.
    pub fn key(&self) -> u64 {
        match self {
            RegisterMop::Read { key, .. }
            | RegisterMop::Write { key, .. }
            | RegisterMop::Cas { key, .. } => *key,
        }
    }
}

impl Micro for RegisterMop {
    fn has_result(&self) -> bool {
        match self {
            RegisterMop::Read { value, .. } => value.is_some(),
            RegisterMop::Write { .. } | RegisterMop::Cas { .. } => true,
        }
    }

    fn completes(&self, invoked: &Self) -> bool {
        match (self, invoked) {
            (RegisterMop::Read { key: a, .. }, RegisterMop::Read { key: b, .. }) => a == b,
            _ => self == invoked,
        }
    }
}

/// What an operation does to the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read(Option<u64>),
    Write(u64),
    Cas(u64, u64),
}

impl Effect {
    /// The register after this effect, or `None` if it cannot happen now.
    fn apply(self, state: Option<u64>) -> Option<Option<u64>> {
        match self {
            Effect::Read(seen) => (seen == state).then_some(state),
            Effect::Write(value) => Some(Some(value)),
            Effect::Cas(expected, new) => (state == Some(expected)).then_some(Some(new)),
        }
    }

    fn describe(self) -> String {
        match self {
            Effect::Read(value) => format!("read {}", show(value)),
            Effect::Write(value) => format!("write {value}"),
            Effect::Cas(expected, new) => format!("cas {expected} → {new}"),
        }
    }
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

/// One operation on one key.
#[derive(Debug, Clone, Copy)]
struct KeyOp {
    txn: usize,
    effect: Effect,
    invoke_ns: u64,
    /// `None` for indeterminate: it need not be linearized at all.
    complete_ns: Option<u64>,
}

/// How one key's search ended.
enum KeyOutcome {
    Linearizable,
    NotLinearizable(String),
    GaveUp,
}

/// Checks a register history.
pub fn check(ops: &[Op<RegisterMop>]) -> Result<Report, HistoryError> {
    let txns = history::pair(ops)?;
    let mut by_key: BTreeMap<u64, Vec<KeyOp>> = BTreeMap::new();
    let mut committed = 0usize;
    for txn in &txns {
        let [mop] = txn.mops.as_slice() else {
            return Err(HistoryError::NotOneMop {
                index: txn.invoke_index,
            });
        };
        let effect = match (txn.outcome, mop) {
            (Outcome::Aborted, _) | (Outcome::Indeterminate, RegisterMop::Read { .. }) => continue,
            (_, RegisterMop::Read { value, .. }) => Effect::Read(value.flatten()),
            (_, RegisterMop::Write { value, .. }) => Effect::Write(*value),
            (_, RegisterMop::Cas { expected, new, .. }) => Effect::Cas(*expected, *new),
        };
        let complete_ns = match txn.outcome {
            Outcome::Committed => {
                committed += 1;
                txn.complete_ns
            }
            _ => None,
        };
        by_key.entry(mop.key()).or_default().push(KeyOp {
            txn: txn.id,
            effect,
            invoke_ns: txn.invoke_ns,
            complete_ns,
        });
    }

    let mut out = ReportBuilder::new();
    if committed == 0 {
        out.undecided("no operation completed ok".to_string());
    }
    for (key, key_ops) in &by_key {
        match check_key(key_ops) {
            KeyOutcome::Linearizable => {}
            KeyOutcome::NotLinearizable(why) => out.push(Anomaly {
                class: AnomalyClass::NonLinearizable,
                txns: key_ops.iter().map(|op| op.txn).collect(),
                explanation: format!("key {key}: {why}"),
                cycle: Vec::new(),
            }),
            KeyOutcome::GaveUp => out.undecided(format!(
                "key {key}: the linearizability search gave up after {REGISTER_SEARCH_STEPS_MAX} steps ({} operations)",
                key_ops.len()
            )),
        }
    }
    Ok(out.finish())
}

const NIL: usize = usize::MAX;

/// A set of operation indexes, as words so it can key the memo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing–Gong–Lowe over one key's operations.
fn check_key(ops: &[KeyOp]) -> KeyOutcome {
    // Events: (time, 0 = call | 1 = return, op). At equal times calls come
    // first: an operation invoked the instant another completes overlaps it.
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_ns, 0, i));
        if let Some(done) = op.complete_ns {
            events.push((done, 1, i));
        }
    }
    events.sort_unstable();

    // A doubly linked list over the events; `head` is a sentinel. Placing an
    // operation unlinks its call and return; backtracking relinks them, in
    // reverse order, from their untouched own pointers.
    let head = events.len();
    let mut next: Vec<usize> = (0..=head)
        .map(|i| if i + 1 < head { i + 1 } else { NIL })
        .collect();
    next[head] = if head > 0 { 0 } else { NIL };
    let mut prev: Vec<usize> = (0..=head)
        .map(|i| if i == 0 { head } else { i - 1 })
        .collect();
    prev[head] = NIL;
    let mut return_of: Vec<Option<usize>> = vec![None; ops.len()];
    for (pos, &(_, kind, i)) in events.iter().enumerate() {
        if kind == 1 {
            return_of[i] = Some(pos);
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    };

    let mut remaining = ops.iter().filter(|op| op.complete_ns.is_some()).count();
    let mut state: Option<u64> = None;
    let mut placed = Bits::new(ops.len());
    let mut memo: HashSet<(Bits, Option<u64>)> = HashSet::new();
    // (call position, register before it)
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    // The deepest dead end, to explain a failure.
    let mut deepest: Option<(usize, usize, Option<u64>)> = None;
    let mut entry = next[head];
    let mut steps = 0usize;

    while remaining > 0 {
        steps += 1;
        if steps > REGISTER_SEARCH_STEPS_MAX {
            return KeyOutcome::GaveUp;
        }
        let call = (entry != NIL)
            .then(|| events[entry])
            .filter(|&(_, kind, _)| kind == 0);
        if let Some((_, _, i)) = call {
            if let Some(after) = ops[i].effect.apply(state) {
                placed.set(i);
                if memo.insert((placed.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    if ops[i].complete_ns.is_some() {
                        remaining -= 1;
                    }
                    unlink(&mut next, &mut prev, entry);
                    if let Some(r) = return_of[i] {
                        unlink(&mut next, &mut prev, r);
                    }
                    entry = next[head];
                    continue;
                }
                placed.clear(i);
            }
            entry = next[entry];
            continue;
        }
        // A return of an operation not yet placed (or the end): every order
        // tried so far fails; undo the latest placement and try the next.
        if entry != NIL && deepest.is_none_or(|(depth, _, _)| stack.len() >= depth) {
            deepest = Some((stack.len(), events[entry].2, state));
        }
        let Some((call_pos, before)) = stack.pop() else {
            return KeyOutcome::NotLinearizable(explain_failure(ops, deepest));
        };
        let i = events[call_pos].2;
        if let Some(r) = return_of[i] {
            relink(&mut next, &mut prev, r);
        }
        relink(&mut next, &mut prev, call_pos);
        placed.clear(i);
        if ops[i].complete_ns.is_some() {
            remaining += 1;
        }
        state = before;
        entry = next[call_pos];
    }
    KeyOutcome::Linearizable
}

fn explain_failure(ops: &[KeyOp], deepest: Option<(usize, usize, Option<u64>)>) -> String {
    let total = ops.len();
    match deepest {
        Some((depth, i, state)) => {
            let op = ops[i];
            format!(
                "no linearization of its {total} operations exists; at best {depth} were placed, \
                 with the register holding {}, when T{} ({}, invoked at {} ns) completed at {} ns \
                 without any order of the operations still open explaining it",
                show(state),
                op.txn,
                op.effect.describe(),
                op.invoke_ns,
                op.complete_ns.unwrap_or_default()
            )
        }
        None => format!("no linearization of its {total} operations exists"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

    fn w(key: u64, value: u64) -> Vec<RegisterMop> {
        vec![RegisterMop::Write { key, value }]
    }

    fn r(key: u64, value: Option<Option<u64>>) -> Vec<RegisterMop> {
        vec![RegisterMop::Read { key, value }]
    }

    fn cas(key: u64, expected: u64, new: u64) -> Vec<RegisterMop> {
        vec![RegisterMop::Cas { key, expected, new }]
    }

    fn verdict(ops: &[Op<RegisterMop>]) -> Verdict {
        check(ops).unwrap().verdict
    }

    #[test]
    fn concurrent_write_and_reads_are_linearizable() {
        // A read overlapping a write may see old or new; once a read saw
        // the new value, later reads do too.
        let ops = vec![
            Op::invoke(0, 0, w(1, 1)),
            Op::invoke(1, 1, r(1, None)),
            Op::ok(1, 2, r(1, Some(None))),
            Op::invoke(2, 3, r(1, None)),
            Op::ok(2, 4, r(1, Some(Some(1)))),
            Op::ok(0, 5, w(1, 1)),
            Op::invoke(1, 6, r(1, None)),
            Op::ok(1, 7, r(1, Some(Some(1)))),
        ];
        assert_eq!(verdict(&ops), Verdict::Valid, "{}", check(&ops).unwrap());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let ops = vec![
            Op::invoke(0, 0, w(1, 1)),
            Op::ok(0, 1, w(1, 1)),
            Op::invoke(1, 2, w(1, 2)),
            Op::ok(1, 3, w(1, 2)),
            Op::invoke(2, 4, r(1, None)),
            Op::ok(2, 5, r(1, Some(Some(1)))),
        ];
        let report = check(&ops).unwrap();
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(report.anomalies.len(), 1);
        assert_eq!(report.anomalies[0].class, AnomalyClass::NonLinearizable);
        assert!(
            report.anomalies[0].explanation.contains("key 1"),
            "{report}"
        );
    }

    #[test]
    fn reads_flipping_back_are_not_linearizable() {
        // Two sequential reads see new then old while a write is open.
        let ops = vec![
            Op::invoke(0, 0, w(1, 1)),
            Op::invoke(1, 1, r(1, None)),
            Op::ok(1, 2, r(1, Some(Some(1)))),
            Op::invoke(1, 3, r(1, None)),
            Op::ok(1, 4, r(1, Some(None))),
            Op::ok(0, 5, w(1, 1)),
        ];
        assert_eq!(verdict(&ops), Verdict::Invalid);
    }

    #[test]
    fn info_writes_may_happen_late_or_never() {
        // The info write of 2 is seen long after its client gave up; the
        // info write of 3 is never seen.
        let ops = vec![
            Op::invoke(0, 0, w(1, 1)),
            Op::ok(0, 1, w(1, 1)),
            Op::invoke(1, 2, w(1, 2)),
            Op::info(1, 3, w(1, 2)),
            Op::invoke(2, 4, r(1, None)),
            Op::ok(2, 5, r(1, Some(Some(1)))),
            Op::invoke(2, 6, r(1, None)),
            Op::ok(2, 7, r(1, Some(Some(2)))),
            Op::invoke(3, 8, w(1, 3)),
            Op::info(3, 9, w(1, 3)),
        ];
        assert_eq!(verdict(&ops), Verdict::Valid);
        // A failed write never happened: reading its value is not allowed.
        let mut failed = ops.clone();
        failed[3] = Op::fail(1, 3, w(1, 2));
        assert_eq!(verdict(&failed), Verdict::Invalid);
    }

    #[test]
    fn compare_and_set_needs_its_expected_value() {
        let ops = vec![
            Op::invoke(0, 0, w(1, 1)),
            Op::ok(0, 1, w(1, 1)),
            Op::invoke(0, 2, cas(1, 1, 5)),
            Op::ok(0, 3, cas(1, 1, 5)),
            Op::invoke(1, 4, r(1, None)),
            Op::ok(1, 5, r(1, Some(Some(5)))),
        ];
        assert_eq!(verdict(&ops), Verdict::Valid);
        let mut wrong = ops.clone();
        wrong[2] = Op::invoke(0, 2, cas(1, 7, 5));
        wrong[3] = Op::ok(0, 3, cas(1, 7, 5));
        assert_eq!(verdict(&wrong), Verdict::Invalid);
    }

    #[test]
    fn keys_are_independent() {
        // Key 2's history is fine; key 1's is not.
        let ops = vec![
            Op::invoke(0, 0, w(2, 9)),
            Op::ok(0, 1, w(2, 9)),
            Op::invoke(1, 2, r(1, None)),
            Op::ok(1, 3, r(1, Some(Some(4)))),
            Op::invoke(0, 4, r(2, None)),
            Op::ok(0, 5, r(2, Some(Some(9)))),
        ];
        let report = check(&ops).unwrap();
        assert_eq!(report.anomalies.len(), 1);
        assert!(
            report.anomalies[0].explanation.starts_with("key 1:"),
            "{report}"
        );
    }

    #[test]
    fn many_concurrent_writes_stay_tractable() {
        // 12 writers overlap, then one read sees the value of one of them:
        // without memoization this is 12! orders.
        let mut ops = Vec::new();
        for p in 0..12u64 {
            ops.push(Op::invoke(p, p, w(1, p)));
        }
        for p in 0..12u64 {
            ops.push(Op::ok(p, 100 + p, w(1, p)));
        }
        ops.push(Op::invoke(99, 200, r(1, None)));
        ops.push(Op::ok(99, 201, r(1, Some(Some(7)))));
        assert_eq!(verdict(&ops), Verdict::Valid);
        let last = ops.len() - 1;
        ops[last] = Op::ok(99, 201, r(1, Some(Some(70))));
        assert_eq!(verdict(&ops), Verdict::Invalid);
    }

    #[test]
    fn refuses_multi_mop_operations() {
        let ops = vec![Op::invoke(0, 0, [w(1, 1), w(2, 2)].concat())];
        assert_eq!(check(&ops), Err(HistoryError::NotOneMop { index: 0 }));
    }
}
