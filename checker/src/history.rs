//! The history model: what clients asked for and what they were told, and
//! the pairing of those operations into transactions.
//!
//! A history is a `Vec<Op<M>>` in the order the harness recorded it. A
//! *process* is one client session that runs one operation at a time: its
//! [`OpKind::Invoke`] is followed, later in the history, by exactly one
//! completion from the same process:
//!
//! - `ok`: the transaction committed, and the completion carries what its
//!   reads returned;
//! - `fail`: it certainly did not take effect (aborted or refused);
//! - `info`: nobody knows — a timeout, a lost reply, a crash. It may have
//!   taken effect at any moment after its invocation, even after the
//!   completion was recorded, or never. Checkers treat it as neither
//!   committed nor aborted.
//!
//! An invocation still open when the history ends is treated as `info`.
//!
//! Times are nanoseconds on one clock shared by every process of the harness
//! (real-time order compares them across processes); only their order
//! matters. Within a process they must not go backwards.

use std::collections::HashMap;
use std::fmt;

/// What one history line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A process asks for a transaction.
    Invoke,
    /// The transaction committed; reads carry their results.
    Ok,
    /// The transaction certainly did not take effect.
    Fail,
    /// The outcome is unknown: it may or may not have taken effect.
    Info,
}

impl OpKind {
    /// The word used in the text format.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Invoke => "invoke",
            OpKind::Ok => "ok",
            OpKind::Fail => "fail",
            OpKind::Info => "info",
        }
    }
}

/// One event of a history: a process invoking a transaction, or learning
/// its outcome. `M` is the workload's micro-op; list-append's by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op<M = Mop> {
    /// The client session; runs one operation at a time.
    pub process: u64,
    /// Invocation or which completion.
    pub kind: OpKind,
    /// The micro-ops, in the order the transaction ran them. In an `ok`
    /// completion reads carry their results; in an invocation they do not.
    /// A `fail` or `info` completion may repeat the invocation's micro-ops
    /// or leave them out (empty).
    pub txn: Vec<M>,
    /// When this was recorded, on the harness's one clock.
    pub time_ns: u64,
}

impl<M> Op<M> {
    /// An invocation.
    pub fn invoke(process: u64, time_ns: u64, txn: Vec<M>) -> Self {
        Op {
            process,
            kind: OpKind::Invoke,
            txn,
            time_ns,
        }
    }

    /// A committed completion, with read results filled in.
    pub fn ok(process: u64, time_ns: u64, txn: Vec<M>) -> Self {
        Op {
            process,
            kind: OpKind::Ok,
            txn,
            time_ns,
        }
    }

    /// A completion that certainly did not take effect.
    pub fn fail(process: u64, time_ns: u64, txn: Vec<M>) -> Self {
        Op {
            process,
            kind: OpKind::Fail,
            txn,
            time_ns,
        }
    }

    /// A completion whose outcome is unknown.
    pub fn info(process: u64, time_ns: u64, txn: Vec<M>) -> Self {
        Op {
            process,
            kind: OpKind::Info,
            txn,
            time_ns,
        }
    }
}

/// A list-append micro-op. Every key holds a list of `u64`, empty at first.
///
/// "Append" is the workload's word (as in Elle): adding a value to the end
/// of a key's list. It has nothing to do with appending to a replica's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mop {
    /// Add `value` to the end of `key`'s list. A workload never appends the
    /// same value twice to one key: that uniqueness is what lets a read name
    /// the transaction behind each element.
    Append { key: u64, value: u64 },
    /// Read `key`'s whole list: `None` in an invocation (not known yet),
    /// `Some(list)` in an `ok` completion. Consistency STRONG: the read
    /// belongs to the transaction's strictly serializable snapshot.
    Read { key: u64, value: Option<Vec<u64>> },
    /// Read `key`'s whole list with consistency STALE(`bound_ns`), as a
    /// backup replica may serve it: the list must have been the key's
    /// committed value at some moment in `[invoke − bound_ns, complete]`,
    /// and must hold the session's own committed appends. `value` as in
    /// [`Mop::Read`]. A transaction holding one holds only stale reads
    /// (see [`crate::list_append`]).
    StaleRead {
        key: u64,
        bound_ns: u64,
        value: Option<Vec<u64>>,
    },
}

impl Mop {
    /// The key this micro-op touches.
    pub fn key(&self) -> u64 {
        match self {
            Mop::Append { key, .. } | Mop::Read { key, .. } | Mop::StaleRead { key, .. } => *key,
        }
    }
}

/// What pairing needs to know of a workload's micro-op.
pub trait Micro: Clone {
    /// Whether this micro-op carries its result (every micro-op of an `ok`
    /// completion must).
    fn has_result(&self) -> bool;

    /// Whether `self`, found in a completion, can be the result of `invoked`
    /// (same operation and arguments; a read may have gained its value).
    fn completes(&self, invoked: &Self) -> bool;
}

impl Micro for Mop {
    fn has_result(&self) -> bool {
        match self {
            Mop::Append { .. } => true,
            Mop::Read { value, .. } | Mop::StaleRead { value, .. } => value.is_some(),
        }
    }

    fn completes(&self, invoked: &Self) -> bool {
        match (self, invoked) {
            (Mop::Append { key: k1, value: v1 }, Mop::Append { key: k2, value: v2 }) => {
                k1 == k2 && v1 == v2
            }
            (Mop::Read { key: k1, .. }, Mop::Read { key: k2, .. }) => k1 == k2,
            (
                Mop::StaleRead {
                    key: k1,
                    bound_ns: b1,
                    ..
                },
                Mop::StaleRead {
                    key: k2,
                    bound_ns: b2,
                    ..
                },
            ) => k1 == k2 && b1 == b2,
            _ => false,
        }
    }
}

/// How a transaction ended, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `ok`: it took effect, once, between its invocation and completion.
    Committed,
    /// `fail`: it never took effect.
    Aborted,
    /// `info`, or no completion: it may have taken effect, at any time after
    /// its invocation, or never.
    Indeterminate,
}

/// One transaction: an invocation paired with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn<M = Mop> {
    /// Position among the history's transactions, in invocation order;
    /// reports name it `T<id>`.
    pub id: usize,
    /// The process that ran it.
    pub process: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The completion's micro-ops if it had any, else the invocation's.
    pub mops: Vec<M>,
    /// When it was invoked.
    pub invoke_ns: u64,
    /// When its completion was recorded; `None` if the history ended first.
    /// For an indeterminate transaction this is not a bound on when it took
    /// effect.
    pub complete_ns: Option<u64>,
    /// Index of the invocation in the history.
    pub invoke_index: usize,
    /// Index of the completion in the history, if any.
    pub complete_index: Option<usize>,
}

/// A history that breaks the rules above, or a workload's precondition.
/// Indexes are positions in the history (from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// A process invoked while its previous operation was still open.
    InvokeWhileOpen { index: usize, process: u64 },
    /// A completion from a process with nothing open.
    CompletionWithoutInvoke { index: usize, process: u64 },
    /// Time went backwards within a process.
    TimeWentBack { index: usize, process: u64 },
    /// A completion's micro-ops do not match its invocation's.
    CompletionMismatch { index: usize },
    /// An `ok` completion with a micro-op that carries no result.
    MissingResult { index: usize },
    /// Two appends of one value to one key: list-append needs them unique.
    DuplicateAppend { key: u64, value: u64 },
    /// A register operation with other than exactly one micro-op.
    NotOneMop { index: usize },
    /// A list-append transaction (`txn` = its id, `T<txn>`; `index` = its
    /// invocation's position) mixes stale reads with other micro-ops: a
    /// transaction with a [`Mop::StaleRead`] must hold only stale reads.
    MixedStaleRead { txn: usize, index: usize },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::InvokeWhileOpen { index, process } => write!(
                f,
                "op {index}: process {process} invoked while its previous operation was open"
            ),
            HistoryError::CompletionWithoutInvoke { index, process } => write!(
                f,
                "op {index}: completion for process {process}, which has nothing open"
            ),
            HistoryError::TimeWentBack { index, process } => {
                write!(f, "op {index}: time went backwards on process {process}")
            }
            HistoryError::CompletionMismatch { index } => write!(
                f,
                "op {index}: the completion's micro-ops do not match its invocation's"
            ),
            HistoryError::MissingResult { index } => {
                write!(
                    f,
                    "op {index}: an ok completion has a micro-op without its result"
                )
            }
            HistoryError::DuplicateAppend { key, value } => write!(
                f,
                "value {value} is appended to key {key} more than once; list-append needs unique values"
            ),
            HistoryError::NotOneMop { index } => {
                write!(
                    f,
                    "op {index}: a register operation must have exactly one micro-op"
                )
            }
            HistoryError::MixedStaleRead { txn, index } => write!(
                f,
                "op {index}: T{txn} mixes stale reads with other micro-ops; a transaction with a stale read must hold only stale reads"
            ),
        }
    }
}

impl std::error::Error for HistoryError {}

/// Pairs each invocation with its completion. Transactions come out in
/// invocation order, `id` = position.
pub fn pair<M: Micro>(ops: &[Op<M>]) -> Result<Vec<Txn<M>>, HistoryError> {
    let mut txns: Vec<Txn<M>> = Vec::new();
    // process → the transaction it has open
    let mut open: HashMap<u64, usize> = HashMap::new();
    // process → time of its last event, to refuse time going backwards
    let mut last_ns: HashMap<u64, u64> = HashMap::new();

    for (index, op) in ops.iter().enumerate() {
        let process = op.process;
        if last_ns.get(&process).is_some_and(|&t| op.time_ns < t) {
            return Err(HistoryError::TimeWentBack { index, process });
        }
        last_ns.insert(process, op.time_ns);
        match op.kind {
            OpKind::Invoke => {
                if open.contains_key(&process) {
                    return Err(HistoryError::InvokeWhileOpen { index, process });
                }
                let id = txns.len();
                open.insert(process, id);
                txns.push(Txn {
                    id,
                    process,
                    outcome: Outcome::Indeterminate,
                    mops: op.txn.clone(),
                    invoke_ns: op.time_ns,
                    complete_ns: None,
                    invoke_index: index,
                    complete_index: None,
                });
            }
            OpKind::Ok | OpKind::Fail | OpKind::Info => {
                let id = open
                    .remove(&process)
                    .ok_or(HistoryError::CompletionWithoutInvoke { index, process })?;
                let txn = &mut txns[id];
                // A fail or info completion may leave its micro-ops out; an ok
                // one must report every read, so it must repeat them all.
                if op.kind == OpKind::Ok || !op.txn.is_empty() {
                    let matches = op.txn.len() == txn.mops.len()
                        && op.txn.iter().zip(&txn.mops).all(|(c, i)| c.completes(i));
                    if !matches {
                        return Err(HistoryError::CompletionMismatch { index });
                    }
                    txn.mops = op.txn.clone();
                }
                if op.kind == OpKind::Ok && !txn.mops.iter().all(Micro::has_result) {
                    return Err(HistoryError::MissingResult { index });
                }
                txn.outcome = match op.kind {
                    OpKind::Ok => Outcome::Committed,
                    OpKind::Fail => Outcome::Aborted,
                    _ => Outcome::Indeterminate,
                };
                txn.complete_ns = Some(op.time_ns);
                txn.complete_index = Some(index);
            }
        }
    }
    Ok(txns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(key: u64, value: u64) -> Mop {
        Mop::Append { key, value }
    }

    fn r(key: u64, value: Option<Vec<u64>>) -> Mop {
        Mop::Read { key, value }
    }

    #[test]
    fn pairs_by_process_and_keeps_invocation_order() {
        // Two processes interleave; an open invocation at the end is info.
        let ops = vec![
            Op::invoke(1, 0, vec![a(1, 1)]),
            Op::invoke(2, 1, vec![r(1, None)]),
            Op::ok(2, 2, vec![r(1, Some(vec![]))]),
            Op::fail(1, 3, vec![]),
            Op::invoke(2, 4, vec![a(1, 2)]),
        ];
        let txns = pair(&ops).unwrap();
        assert_eq!(txns.len(), 3);
        assert_eq!(txns[0].outcome, Outcome::Aborted);
        assert_eq!(
            txns[0].mops,
            vec![a(1, 1)],
            "a bare fail keeps the invocation's micro-ops"
        );
        assert_eq!(txns[1].outcome, Outcome::Committed);
        assert_eq!(txns[1].mops, vec![r(1, Some(vec![]))]);
        assert_eq!(txns[2].outcome, Outcome::Indeterminate);
        assert_eq!(txns[2].complete_ns, None);
    }

    #[test]
    fn refuses_malformed_histories() {
        let double = vec![
            Op::invoke(1, 0, vec![a(1, 1)]),
            Op::invoke(1, 1, vec![a(1, 2)]),
        ];
        assert_eq!(
            pair(&double),
            Err(HistoryError::InvokeWhileOpen {
                index: 1,
                process: 1
            })
        );
        let orphan: Vec<Op> = vec![Op::ok(1, 0, vec![])];
        assert_eq!(
            pair(&orphan),
            Err(HistoryError::CompletionWithoutInvoke {
                index: 0,
                process: 1
            })
        );
        let no_result = vec![
            Op::invoke(1, 0, vec![r(1, None)]),
            Op::ok(1, 1, vec![r(1, None)]),
        ];
        assert_eq!(
            pair(&no_result),
            Err(HistoryError::MissingResult { index: 1 })
        );
        let mismatch = vec![Op::invoke(1, 0, vec![a(1, 1)]), Op::ok(1, 1, vec![a(1, 2)])];
        assert_eq!(
            pair(&mismatch),
            Err(HistoryError::CompletionMismatch { index: 1 })
        );
        let backwards = vec![Op::invoke(1, 5, vec![a(1, 1)]), Op::ok(1, 4, vec![a(1, 1)])];
        assert_eq!(
            pair(&backwards),
            Err(HistoryError::TimeWentBack {
                index: 1,
                process: 1
            })
        );
    }

    #[test]
    fn stale_reads_pair_on_key_and_bound() {
        let rs = |key: u64, bound_ns: u64, value: Option<Vec<u64>>| Mop::StaleRead {
            key,
            bound_ns,
            value,
        };
        let ok = vec![
            Op::invoke(1, 0, vec![rs(1, 50, None)]),
            Op::ok(1, 1, vec![rs(1, 50, Some(vec![2]))]),
        ];
        let txns = pair(&ok).unwrap();
        assert_eq!(txns[0].outcome, Outcome::Committed);
        assert_eq!(txns[0].mops, vec![rs(1, 50, Some(vec![2]))]);
        assert_eq!(txns[0].mops[0].key(), 1);

        let other_bound = vec![
            Op::invoke(1, 0, vec![rs(1, 50, None)]),
            Op::ok(1, 1, vec![rs(1, 60, Some(vec![]))]),
        ];
        assert_eq!(
            pair(&other_bound),
            Err(HistoryError::CompletionMismatch { index: 1 })
        );
        let strong_for_stale = vec![
            Op::invoke(1, 0, vec![rs(1, 50, None)]),
            Op::ok(1, 1, vec![r(1, Some(vec![]))]),
        ];
        assert_eq!(
            pair(&strong_for_stale),
            Err(HistoryError::CompletionMismatch { index: 1 })
        );
        let no_result = vec![
            Op::invoke(1, 0, vec![rs(1, 50, None)]),
            Op::ok(1, 1, vec![rs(1, 50, None)]),
        ];
        assert_eq!(
            pair(&no_result),
            Err(HistoryError::MissingResult { index: 1 })
        );
    }
}
