//! The list-append checker, after Jepsen's Elle.
//!
//! Every key holds a list of `u64`; transactions append values (unique per
//! key) and read whole lists. Because lists only grow and every value names
//! its appender, reads reveal the order in which appends took effect — the
//! *list order* of a key (Elle's "version order"; this project's glossary
//! keeps "version" for a key's LSN). From it the checker derives which
//! transaction must precede which, and looks for cycles.
//!
//! # Checks, in order
//!
//! 1. **internal**: within a committed transaction, a read of a key agrees
//!    with its own earlier reads and appends of that key.
//! 2. Per committed read, STRONG or stale: **duplicate-elements**,
//!    **unwritten-value** (a value nobody appended), **G1a** (a value
//!    appended by a failed transaction), **G1b** (the read ends at an append
//!    its transaction followed with another append to the key).
//! 3. Per key, the list order is the longest STRONG read; every other
//!    STRONG read must be a prefix of it (**incompatible-order**).
//! 4. **lost-update**: two committed transactions read the same list of a
//!    key and then both appended to it.
//! 5. The dependency graph over committed transactions, and indeterminate
//!    (`info`) ones whose appends some committed read observed:
//!    - ww: consecutive elements of a list order, appender to appender;
//!    - wr: the appender of a read's last element to the reader;
//!    - rw: a reader to the appender of the element right after its read
//!      in the list order. A committed append seen by no read belongs after
//!      every read (lists only grow), so readers of the whole list order get
//!      an rw edge, and its last element's appender a ww edge, to it;
//!    - process: from a process's last committed transaction to its next one;
//!    - realtime: T1 → T2 when T1 committed before T2 was invoked, built as a
//!      transitive reduction by a sweep over time (each invocation links
//!      only from the *frontier* of latest completions), so the edge count
//!      is about transactions × concurrency, not transactions squared.
//!      An `info` transaction is never a source: its completion time does
//!      not bound when it took effect.
//! 6. Cycles (the private `graph` module): per strongly connected component the
//!    shortest G0, G1c, G-single, G-nonadjacent and G2-item cycle, each with
//!    data edges alone, else with process edges (`-process`), else with
//!    real-time edges (`-realtime`), as the [`Model`] allows.
//! 7. Stale reads (below): **incompatible-order**, **stale-read**,
//!    **future-read**, **read-your-writes**.
//!
//! A read found anomalous by checks 1–4 adds no edges: the fault is reported
//! once, by its own class, and not again as the cycle it implies (an
//! intermediate or lost-update read always closes one). Likewise a stale
//! read found anomalous by checks 2 or 7a is not judged by time.
//!
//! # Stale reads: the bounded-staleness mode
//!
//! A [`Mop::StaleRead`] is a read with consistency STALE(`bound_ns`), as a
//! backup replica serves it. Its promise is weaker than strict
//! serializability: the list it returns was the key's committed value at
//! some moment in `[invoke − bound_ns, complete]` (the *window*; the
//! subtraction saturates at 0), and it holds every append its own session
//! (process) committed before the read began. A transaction holding a stale
//! read holds nothing else (else [`HistoryError::MixedStaleRead`]): the
//! workload never mixes them.
//!
//! Stale transactions stay out of the dependency graph — no ww, wr, rw,
//! process or real-time edges, so no cycle runs through them: a stale read
//! is *allowed* to return a state older than one a transaction that
//! finished before it already saw, which in the graph would close a
//! `-realtime` cycle. They are checked on their own instead:
//!
//! - Check 2 applies unchanged: a stale read must still be a state some
//!   committed or indeterminate transactions made (no duplicates, unwritten
//!   values, failed appends or intermediate states).
//! - 7a, order: the list orders of check 3 come from STRONG reads alone, so
//!   the graph is exactly what it would be without the stale reads. Each
//!   stale read must be a prefix of its key's order or extend it
//!   (**incompatible-order** otherwise), and stale reads that extend it
//!   must be prefixes of the longest of them, which then serves as the
//!   key's order for the checks below (never for the graph): a state any
//!   replica committed is a state of the one list order.
//! - 7b, **stale-read**: some committed append missing from the list (the
//!   rest of the order, or an append no read saw, which lists growing puts
//!   after every read) completed before the window opened. From its
//!   completion on, the key held it, so the list was not the key's value at
//!   any moment of the window. Only a committed (`ok`) append proves this:
//!   an indeterminate (`info`) one may take effect at any time after its
//!   invocation, or never, so its completion bounds nothing.
//! - 7c, **future-read**: an element of the list was appended by a
//!   transaction invoked only after the read completed. (A STRONG read
//!   doing so closes a `-realtime` cycle instead.)
//! - 7d, **read-your-writes**: an earlier committed transaction of the same
//!   process appended to the key, and the list lacks that append. The
//!   session's indeterminate appends are not required.
//!
//! Stale checks run under every [`Model`]: they are not graph relations.
//!
//! # Verdict
//!
//! Invalid if any anomaly is found. Unknown if none is found and no
//! committed transaction read anything (STRONG or stale): then nothing
//! about the order of the appends was observed and every history passes
//! trivially. Valid otherwise.
//!
//! # Not checked
//!
//! Elle's G2 over predicates and its inference from non-list data types;
//! whether a transaction's appends to one key sit together in the list
//! order (only intermediate *reads* are caught). Reads of failed and
//! indeterminate transactions are ignored: their results are not known.
//! Stale reads: whether the reads of one stale transaction form one
//! snapshot (or agree with each other at all), monotonic reads within a
//! session, and the ww edges the order a stale read extends would give the
//! graph.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use crate::graph::{self, Graph};
use crate::history::{self, HistoryError, Mop, Op, Outcome, Txn};
use crate::report::{Anomaly, AnomalyClass, CycleStep, CycleVia, Relation, Report, ReportBuilder};

/// Lists longer than this are abbreviated in explanations: reads can hold
/// thousands of elements.
const LIST_SHOWN_MAX: usize = 8;

/// Cycles longer than this are abbreviated in an anomaly's one-line
/// summary (its steps are always all listed).
const CYCLE_SHOWN_MAX: usize = 12;

/// The consistency model to check, i.e. which order relations join the
/// data dependencies in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// Data dependencies only: some serial order explains the history.
    Serializable,
    /// Also each process's program order.
    StrongSessionSerializable,
    /// Also real-time order: what Trellis claims.
    #[default]
    StrictSerializable,
}

impl Model {
    fn vias(self) -> &'static [CycleVia] {
        match self {
            Model::Serializable => &[CycleVia::Data],
            Model::StrongSessionSerializable => &[CycleVia::Data, CycleVia::Process],
            Model::StrictSerializable => &[CycleVia::Data, CycleVia::Process, CycleVia::Realtime],
        }
    }
}

/// Checks a list-append history under `model`.
pub fn check(ops: &[Op<Mop>], model: Model) -> Result<Report, HistoryError> {
    let txns = history::pair(ops)?;
    check_txns(&txns, model)
}

/// Checks already paired transactions (see [`history::pair`]); reports name
/// them by their `id`. Fails only if a value is appended twice to one key,
/// or a transaction mixes stale reads with other micro-ops.
pub fn check_txns(txns: &[Txn<Mop>], model: Model) -> Result<Report, HistoryError> {
    let stale_txn = stale_txns(txns)?;
    let writers = index_writers(txns)?;
    let (reads, stale) = committed_reads(txns);
    let mut checker = Checker {
        txns,
        writers,
        reads,
        stale,
        stale_txn,
        tainted: HashSet::new(),
        orders: BTreeMap::new(),
        order_readers: BTreeMap::new(),
        out: ReportBuilder::new(),
    };
    if checker.reads.is_empty() && checker.stale.is_empty() {
        checker.out.undecided(
            "no committed transaction read anything, so the order of appends was never observed"
                .to_string(),
        );
    }
    checker.check_internal();
    checker.check_reads();
    checker.infer_orders();
    checker.check_lost_updates();
    checker.check_cycles(model);
    checker.check_stale_reads();
    Ok(checker.out.finish())
}

/// A read's place: (transaction position, micro-op position).
type ReadAt = (usize, usize);

/// A key and a list read from it.
type KeyList<'h> = (u64, &'h [u64]);

/// Who appended a value to a key.
#[derive(Debug, Clone, Copy)]
struct Writer {
    /// Position in the transaction slice.
    txn: usize,
    /// Whether this is the transaction's last append to the key.
    last_for_key: bool,
}

/// A read of a committed transaction.
#[derive(Debug, Clone, Copy)]
struct ReadRef<'h> {
    txn: usize,
    mop: usize,
    key: u64,
    list: &'h [u64],
    /// `None` for a STRONG read ([`Mop::Read`]); the bound of a
    /// [`Mop::StaleRead`].
    bound_ns: Option<u64>,
}

/// An append as evidence about time: `(time_ns, value, transaction)`. The
/// time is a completion or an invocation, depending on use; tuples compare
/// by time first, so `min`/`max` pick the earliest or latest deterministically.
type Stamped = (u64, u64, usize);

/// What the stale-read checks know of one key.
#[derive(Debug)]
struct Timeline<'h> {
    /// The list order, extended by stale reads longer than every STRONG read.
    order: &'h [u64],
    /// Element → its position in `order`.
    position: HashMap<u64, usize>,
    /// `first_committed_after[n]`: of the committed appends not in
    /// `order[..n]` (the rest of `order`, and appends no read saw), the one
    /// that completed first, stamped with its completion.
    first_committed_after: Vec<Option<Stamped>>,
    /// `last_invoked_in[n]`: of the appenders of `order[..n]`, the one
    /// invoked last, stamped with its invocation.
    last_invoked_in: Vec<Option<Stamped>>,
}

/// Why an edge exists; turned into words by [`explain`].
#[derive(Debug)]
enum Why {
    Ww {
        key: u64,
        before: u64,
        after: u64,
    },
    Wr {
        key: u64,
        value: u64,
    },
    Rw {
        key: u64,
        last: Option<u64>,
        appended: u64,
    },
    Process {
        process: u64,
    },
    Realtime {
        completed_ns: u64,
        invoked_ns: u64,
    },
}

struct Checker<'h> {
    txns: &'h [Txn<Mop>],
    writers: HashMap<(u64, u64), Writer>,
    /// Committed STRONG reads.
    reads: Vec<ReadRef<'h>>,
    /// Committed stale reads.
    stale: Vec<ReadRef<'h>>,
    /// Per transaction: whether it holds stale reads (then only those).
    stale_txn: Vec<bool>,
    /// Reads (txn, mop) already reported; they add no edges.
    tainted: HashSet<ReadAt>,
    /// Key → list order, from STRONG reads.
    orders: BTreeMap<u64, &'h [u64]>,
    /// Key → the transaction whose read is its list order.
    order_readers: BTreeMap<u64, usize>,
    out: ReportBuilder,
}

/// Per transaction, whether it is a stale one; refuses a transaction that
/// mixes stale reads with anything else.
fn stale_txns(txns: &[Txn<Mop>]) -> Result<Vec<bool>, HistoryError> {
    txns.iter()
        .map(|txn| {
            let stale = txn
                .mops
                .iter()
                .filter(|m| matches!(m, Mop::StaleRead { .. }))
                .count();
            if stale > 0 && stale < txn.mops.len() {
                return Err(HistoryError::MixedStaleRead {
                    txn: txn.id,
                    index: txn.invoke_index,
                });
            }
            Ok(stale > 0)
        })
        .collect()
}

fn index_writers(txns: &[Txn<Mop>]) -> Result<HashMap<(u64, u64), Writer>, HistoryError> {
    let mut writers = HashMap::new();
    for (t, txn) in txns.iter().enumerate() {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for mop in &txn.mops {
            if let Mop::Append { key, value } = *mop {
                if writers
                    .insert(
                        (key, value),
                        Writer {
                            txn: t,
                            last_for_key: false,
                        },
                    )
                    .is_some()
                {
                    return Err(HistoryError::DuplicateAppend { key, value });
                }
                last.insert(key, value);
            }
        }
        for (key, value) in last {
            writers
                .get_mut(&(key, value))
                .expect("inserted just above")
                .last_for_key = true;
        }
    }
    Ok(writers)
}

/// The reads of committed transactions: STRONG ones, then STALE ones
/// (with their bound).
fn committed_reads(txns: &[Txn<Mop>]) -> (Vec<ReadRef<'_>>, Vec<ReadRef<'_>>) {
    let (mut strong, mut stale) = (Vec::new(), Vec::new());
    for (t, txn) in txns.iter().enumerate() {
        if txn.outcome != Outcome::Committed {
            continue;
        }
        for (m, mop) in txn.mops.iter().enumerate() {
            let (key, list, bound_ns, into) = match mop {
                Mop::Read {
                    key,
                    value: Some(list),
                } => (key, list, None, &mut strong),
                Mop::StaleRead {
                    key,
                    bound_ns,
                    value: Some(list),
                } => (key, list, Some(*bound_ns), &mut stale),
                _ => continue,
            };
            into.push(ReadRef {
                txn: t,
                mop: m,
                key: *key,
                list,
                bound_ns,
            });
        }
    }
    (strong, stale)
}

impl<'h> Checker<'h> {
    fn name(&self, t: usize) -> String {
        format!("T{}", self.txns[t].id)
    }

    /// "T3 read key 1", or "T3 read key 1 with STALE(100 ns)".
    fn what_read(&self, read: &ReadRef<'_>) -> String {
        match read.bound_ns {
            None => format!("{} read key {}", self.name(read.txn), read.key),
            Some(bound) => format!(
                "{} read key {} with STALE({bound} ns)",
                self.name(read.txn),
                read.key
            ),
        }
    }

    fn report(&mut self, class: AnomalyClass, txns: &[usize], explanation: String) {
        let txns = txns.iter().map(|&t| self.txns[t].id).collect();
        self.out.push(Anomaly {
            class,
            txns,
            explanation,
            cycle: Vec::new(),
        });
    }

    /// Check 1: each committed transaction agrees with itself.
    fn check_internal(&mut self) {
        /// What a transaction knows of a key's list so far.
        enum Known {
            /// Its own appends, to be found at the end of any later read.
            Suffix(Vec<u64>),
            /// The whole list: it read the key (then maybe appended).
            Exact(Vec<u64>),
        }
        for (t, txn) in self.txns.iter().enumerate() {
            if txn.outcome != Outcome::Committed {
                continue;
            }
            let mut known: HashMap<u64, Known> = HashMap::new();
            for (m, mop) in txn.mops.iter().enumerate() {
                match mop {
                    Mop::Append { key, value } => match known.get_mut(key) {
                        Some(Known::Suffix(list) | Known::Exact(list)) => list.push(*value),
                        None => {
                            known.insert(*key, Known::Suffix(vec![*value]));
                        }
                    },
                    Mop::Read {
                        key,
                        value: Some(list),
                    } => {
                        let expected = match known.get(key) {
                            None => None,
                            Some(Known::Exact(e)) if e != list => Some(show(e)),
                            Some(Known::Suffix(s)) if !list.ends_with(s) => {
                                Some(format!("a list ending in {}", show(s)))
                            }
                            Some(_) => None,
                        };
                        if let Some(expected) = expected {
                            let explanation = format!(
                                "{} read key {key} = {}, but its own earlier reads and appends imply {expected}",
                                self.name(t),
                                show(list)
                            );
                            self.tainted.insert((t, m));
                            self.report(AnomalyClass::Internal, &[t], explanation);
                        }
                        known.insert(*key, Known::Exact(list.clone()));
                    }
                    // Stale transactions are checked on their own (check 7).
                    Mop::Read { value: None, .. } | Mop::StaleRead { .. } => {}
                }
            }
        }
    }

    /// Check 2: each committed read on its own, STRONG and stale alike.
    fn check_reads(&mut self) {
        let reads: Vec<ReadRef<'h>> = self.reads.iter().chain(&self.stale).copied().collect();
        for read in reads {
            if self.check_read(&read) {
                self.tainted.insert((read.txn, read.mop));
            }
        }
    }

    /// Check 2 for one read; whether it found anything.
    fn check_read(&mut self, read: &ReadRef<'h>) -> bool {
        let ReadRef {
            txn: t, key, list, ..
        } = *read;
        let what = self.what_read(read);
        let mut bad = false;

        let mut seen = HashSet::new();
        let mut repeated: Vec<u64> = list.iter().copied().filter(|v| !seen.insert(*v)).collect();
        repeated.dedup();
        if !repeated.is_empty() {
            bad = true;
            let explanation = format!(
                "{what} = {}, in which {} appear more than once",
                show(list),
                show(&repeated)
            );
            self.report(AnomalyClass::DuplicateElements, &[t], explanation);
        }

        let unwritten: Vec<u64> = list
            .iter()
            .copied()
            .filter(|v| !self.writers.contains_key(&(key, *v)))
            .collect();
        if !unwritten.is_empty() {
            bad = true;
            let explanation = format!(
                "{what} = {}, but no transaction appended {} to it",
                show(list),
                show(&unwritten)
            );
            self.report(AnomalyClass::UnwrittenValue, &[t], explanation);
        }

        let aborted: Vec<(u64, usize)> = list
            .iter()
            .filter_map(|v| self.writers.get(&(key, *v)).map(|w| (*v, w.txn)))
            .filter(|&(_, w)| self.txns[w].outcome == Outcome::Aborted)
            .collect();
        if !aborted.is_empty() {
            bad = true;
            let mut explanation = format!("{what} = {}, but", show(list));
            for (n, &(value, w)) in aborted.iter().enumerate() {
                let sep = if n == 0 { "" } else { ";" };
                let _ = write!(
                    explanation,
                    "{sep} {value} was appended by {}, which failed",
                    self.name(w)
                );
            }
            explanation.push_str(" (aborted read)");
            let mut involved = vec![t];
            involved.extend(aborted.iter().map(|&(_, w)| w));
            self.report(AnomalyClass::G1a, &involved, explanation);
        }

        if let Some(&last) = list.last()
            && let Some(w) = self.writers.get(&(key, last)).copied()
            && w.txn != t
            && !w.last_for_key
            && self.txns[w.txn].outcome != Outcome::Aborted
        {
            bad = true;
            let later: Vec<u64> = self.txns[w.txn]
                .mops
                .iter()
                .filter_map(|mop| match *mop {
                    Mop::Append { key: k, value } if k == key => Some(value),
                    _ => None,
                })
                .skip_while(|&v| v != last)
                .skip(1)
                .collect();
            let explanation = format!(
                "{what} = {}, which ends at {}'s append of {last}, but {} then appended {} to key {key} (intermediate read)",
                show(list),
                self.name(w.txn),
                self.name(w.txn),
                show(&later)
            );
            self.report(AnomalyClass::G1b, &[t, w.txn], explanation);
        }
        bad
    }

    /// Check 3: per key, the longest untainted read is the list order and
    /// every other read is a prefix of it.
    fn infer_orders(&mut self) {
        let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, read) in self.reads.iter().enumerate() {
            if !self.tainted.contains(&(read.txn, read.mop)) {
                by_key.entry(read.key).or_default().push(i);
            }
        }
        for (key, reads) in by_key {
            // The first of the longest: ties keep history order.
            let longest = reads
                .iter()
                .copied()
                .reduce(|best, i| {
                    if self.reads[i].list.len() > self.reads[best].list.len() {
                        i
                    } else {
                        best
                    }
                })
                .expect("keys come from at least one read");
            let order = self.reads[longest].list;
            let longest_txn = self.reads[longest].txn;
            for i in reads {
                let ReadRef {
                    txn: t,
                    mop: m,
                    list,
                    ..
                } = self.reads[i];
                if order.starts_with(list) {
                    continue;
                }
                let at = list
                    .iter()
                    .zip(order)
                    .position(|(a, b)| a != b)
                    .unwrap_or(order.len());
                let explanation = format!(
                    "{} read key {key} = {}, which is not a prefix of {}'s read {} (they differ at position {at})",
                    self.name(t),
                    show(list),
                    self.name(longest_txn),
                    show(order)
                );
                self.tainted.insert((t, m));
                self.report(
                    AnomalyClass::IncompatibleOrder,
                    &[t, longest_txn],
                    explanation,
                );
            }
            self.orders.insert(key, order);
            self.order_readers.insert(key, longest_txn);
        }
    }

    /// Check 4: two committed transactions that read the same list of a key
    /// before appending to it.
    fn check_lost_updates(&mut self) {
        // (key, list read) → (txn, mop) of each read-then-append
        let txns = self.txns;
        let mut groups: HashMap<KeyList<'h>, Vec<ReadAt>> = HashMap::new();
        for (t, txn) in txns.iter().enumerate() {
            if txn.outcome != Outcome::Committed {
                continue;
            }
            // key → first micro-op on it, if a read
            let mut first: BTreeMap<u64, Option<(usize, &'h [u64])>> = BTreeMap::new();
            let mut appended: HashSet<u64> = HashSet::new();
            for (m, mop) in txn.mops.iter().enumerate() {
                match mop {
                    Mop::Read {
                        key,
                        value: Some(list),
                    } => {
                        first.entry(*key).or_insert(Some((m, list.as_slice())));
                    }
                    Mop::Read { value: None, .. } | Mop::StaleRead { .. } => {}
                    Mop::Append { key, .. } => {
                        first.entry(*key).or_insert(None);
                        appended.insert(*key);
                    }
                }
            }
            for (key, read) in first {
                if let Some((m, list)) = read
                    && appended.contains(&key)
                    && !self.tainted.contains(&(t, m))
                {
                    groups.entry((key, list)).or_default().push((t, m));
                }
            }
        }
        let mut lost: Vec<(KeyList<'h>, Vec<ReadAt>)> =
            groups.into_iter().filter(|(_, g)| g.len() > 1).collect();
        lost.sort_by_key(|((key, _), g)| (*key, g[0]));
        for ((key, list), group) in lost {
            let mut names: Vec<String> = group.iter().map(|&(t, _)| self.name(t)).collect();
            let last = names.pop().expect("groups have at least two members");
            let all = if names.len() == 1 { "both" } else { "all" };
            let explanation = format!(
                "{} and {last} {all} read key {key} = {} and then appended to it: each append was made without seeing the others",
                names.join(", "),
                show(list)
            );
            self.tainted.extend(group.iter().copied());
            let involved: Vec<usize> = group.iter().map(|&(t, _)| t).collect();
            self.report(AnomalyClass::LostUpdate, &involved, explanation);
        }
    }

    /// Checks 5 and 6: the dependency graph and its cycles.
    fn check_cycles(&mut self, model: Model) {
        let txns = self.txns;
        let n = txns.len();
        // Indeterminate transactions join once a committed read saw an append.
        // Stale transactions never join: check 7 judges them by time instead.
        let mut in_graph: Vec<bool> = txns
            .iter()
            .zip(&self.stale_txn)
            .map(|(t, &stale)| t.outcome == Outcome::Committed && !stale)
            .collect();
        for read in &self.reads {
            for value in read.list {
                if let Some(w) = self.writers.get(&(read.key, *value))
                    && txns[w.txn].outcome == Outcome::Indeterminate
                {
                    in_graph[w.txn] = true;
                }
            }
        }

        let mut graph: Graph<Why> = Graph::new(n);
        self.add_data_edges(&mut graph, &in_graph);
        if model != Model::Serializable {
            add_process_edges(&mut graph, txns, &in_graph);
        }
        if model == Model::StrictSerializable {
            add_realtime_edges(&mut graph, txns, &in_graph);
        }

        let found = graph::find_cycles(&graph, model.vias());
        if found.exhausted {
            self.out.note(format!(
                "a cycle search stopped after {} steps: a reported cycle may not be the shortest of its class",
                graph::CYCLE_SEARCH_STEPS_MAX
            ));
        }
        for cycle in found.cycles {
            let mut steps = Vec::new();
            for &(e, relation) in &cycle.steps {
                let edge = graph.edge(e);
                let why = edge
                    .witness(relation)
                    .expect("a step's relation is one of its edge's");
                steps.push(CycleStep {
                    from: txns[edge.from].id,
                    to: txns[edge.to].id,
                    relation,
                    explanation: explain(why, &self.name(edge.from), &self.name(edge.to)),
                });
            }
            let txn_ids: Vec<usize> = steps.iter().map(|s| s.from).collect();
            let class = AnomalyClass::Cycle(cycle.kind, cycle.via);
            self.out.push(Anomaly {
                class,
                explanation: show_cycle(&txn_ids),
                txns: txn_ids,
                cycle: steps,
            });
        }
    }

    /// ww, wr and rw edges from the list orders and the untainted reads.
    fn add_data_edges(&self, graph: &mut Graph<Why>, in_graph: &[bool]) {
        let writer = |key: u64, value: u64| self.writers.get(&(key, value)).map(|w| w.txn);
        // Appends no read saw, per key: (value, appender), in history order.
        let mut unseen: BTreeMap<u64, Vec<(u64, usize)>> = BTreeMap::new();
        for (&key, order) in &self.orders {
            let seen: HashSet<u64> = order.iter().copied().collect();
            for (t, txn) in self.txns.iter().enumerate() {
                if !in_graph[t] {
                    continue;
                }
                for mop in &txn.mops {
                    if let Mop::Append { key: k, value } = *mop
                        && k == key
                        && !seen.contains(&value)
                    {
                        unseen.entry(key).or_default().push((value, t));
                    }
                }
            }
        }
        let no_unseen = Vec::new();

        for (&key, order) in &self.orders {
            let unseen = unseen.get(&key).unwrap_or(&no_unseen);
            for pair in order.windows(2) {
                if let (Some(a), Some(b)) = (writer(key, pair[0]), writer(key, pair[1])) {
                    graph.add(
                        a,
                        b,
                        Relation::Ww,
                        Why::Ww {
                            key,
                            before: pair[0],
                            after: pair[1],
                        },
                    );
                }
            }
            if let Some(&last) = order.last()
                && let Some(a) = writer(key, last)
            {
                for &(value, u) in unseen {
                    graph.add(
                        a,
                        u,
                        Relation::Ww,
                        Why::Ww {
                            key,
                            before: last,
                            after: value,
                        },
                    );
                }
            }
        }

        for read in &self.reads {
            if self.tainted.contains(&(read.txn, read.mop)) {
                continue;
            }
            let Some(order) = self.orders.get(&read.key) else {
                continue;
            };
            let (key, t, last) = (read.key, read.txn, read.list.last().copied());
            if let Some(value) = last
                && let Some(w) = writer(key, value)
            {
                graph.add(w, t, Relation::Wr, Why::Wr { key, value });
            }
            if let Some(&next) = order.get(read.list.len()) {
                if let Some(w) = writer(key, next) {
                    graph.add(
                        t,
                        w,
                        Relation::Rw,
                        Why::Rw {
                            key,
                            last,
                            appended: next,
                        },
                    );
                }
            } else if let Some(unseen) = unseen.get(&key) {
                for &(value, u) in unseen {
                    graph.add(
                        t,
                        u,
                        Relation::Rw,
                        Why::Rw {
                            key,
                            last,
                            appended: value,
                        },
                    );
                }
            }
        }
    }
}

/// Check 7: stale reads, judged by time rather than by the graph.
impl<'h> Checker<'h> {
    fn check_stale_reads(&mut self) {
        if self.stale.is_empty() {
            return;
        }
        let timelines = self.stale_orders();
        let timelines = self.timelines(timelines);
        for i in 0..self.stale.len() {
            let read = self.stale[i];
            if self.tainted.contains(&(read.txn, read.mop)) {
                continue;
            }
            let timeline = timelines
                .get(&read.key)
                .expect("every untainted stale read's key has a timeline");
            self.check_window(&read, timeline);
        }
        self.check_read_your_writes(&timelines);
    }

    /// Check 7a: each untainted stale read must be compatible with the
    /// key's STRONG list order, and the stale reads with each other. Returns
    /// per key the order the stale checks use: the STRONG order, or the
    /// first longest stale read where that extends it.
    fn stale_orders(&mut self) -> BTreeMap<u64, &'h [u64]> {
        let mut by_key: BTreeMap<u64, Vec<ReadRef<'h>>> = BTreeMap::new();
        for read in &self.stale {
            if !self.tainted.contains(&(read.txn, read.mop)) {
                by_key.entry(read.key).or_default().push(*read);
            }
        }
        let mut orders = BTreeMap::new();
        for (key, reads) in by_key {
            let strong = self
                .orders
                .get(&key)
                .copied()
                .zip(self.order_readers.get(&key).copied());
            let mut compatible = Vec::new();
            for read in reads {
                match strong {
                    Some((order, reader)) if !prefix_compatible(read.list, order) => {
                        self.report_incompatible(&read, reader, order);
                    }
                    _ => compatible.push(read),
                }
            }
            let strong_len = strong.map_or(0, |(order, _)| order.len());
            // The first of the longest: ties keep history order.
            let longest = compatible.iter().copied().reduce(|best, read| {
                if read.list.len() > best.list.len() {
                    read
                } else {
                    best
                }
            });
            let order = match (longest, strong) {
                (Some(longest), _) if longest.list.len() > strong_len => {
                    for read in &compatible {
                        if !longest.list.starts_with(read.list) {
                            self.report_incompatible(read, longest.txn, longest.list);
                        }
                    }
                    longest.list
                }
                (_, Some((order, _))) => order,
                // Every stale read of the key was incompatible: none needs
                // a timeline.
                (None, None) => continue,
                (Some(longest), None) => longest.list,
            };
            orders.insert(key, order);
        }
        orders
    }

    fn report_incompatible(&mut self, read: &ReadRef<'h>, other_txn: usize, other: &[u64]) {
        let at = read
            .list
            .iter()
            .zip(other)
            .position(|(a, b)| a != b)
            .unwrap_or(other.len().min(read.list.len()));
        let explanation = format!(
            "{} = {}, which is incompatible with {}'s read {} (neither is a prefix of the other; they differ at position {at})",
            self.what_read(read),
            show(read.list),
            self.name(other_txn),
            show(other)
        );
        self.tainted.insert((read.txn, read.mop));
        self.report(
            AnomalyClass::IncompatibleOrder,
            &[read.txn, other_txn],
            explanation,
        );
    }

    /// Per key with stale reads: positions, and the times of the appends
    /// before and after each prefix of its order.
    fn timelines(&self, orders: BTreeMap<u64, &'h [u64]>) -> BTreeMap<u64, Timeline<'h>> {
        let mut timelines: BTreeMap<u64, Timeline<'h>> = orders
            .into_iter()
            .map(|(key, order)| {
                let position = order.iter().enumerate().map(|(i, v)| (*v, i)).collect();
                let timeline = Timeline {
                    order,
                    position,
                    first_committed_after: vec![None; order.len() + 1],
                    last_invoked_in: vec![None; order.len() + 1],
                };
                (key, timeline)
            })
            .collect();
        for (&(key, value), writer) in &self.writers {
            let Some(timeline) = timelines.get_mut(&key) else {
                continue;
            };
            let txn = &self.txns[writer.txn];
            // Only a committed append is known to have taken effect by its
            // completion; an indeterminate one may take effect at any time
            // after its invocation, or never, and proves nothing here.
            let done = match (txn.outcome, txn.complete_ns) {
                (Outcome::Committed, Some(done)) => Some((done, value, writer.txn)),
                _ => None,
            };
            match timeline.position.get(&value) {
                Some(&i) => {
                    timeline.first_committed_after[i] = done;
                    timeline.last_invoked_in[i + 1] = Some((txn.invoke_ns, value, writer.txn));
                }
                // Seen by no read used here: it comes after the whole order.
                None => {
                    let unseen = &mut timeline.first_committed_after[timeline.order.len()];
                    *unseen = earliest(*unseen, done);
                }
            }
        }
        for timeline in timelines.values_mut() {
            // Suffix minimum of completions, prefix maximum of invocations.
            let after = &mut timeline.first_committed_after;
            for i in (0..after.len() - 1).rev() {
                after[i] = earliest(after[i], after[i + 1]);
            }
            let within = &mut timeline.last_invoked_in;
            for i in 1..within.len() {
                within[i] = within[i].max(within[i - 1]);
            }
        }
        timelines
    }

    /// Checks 7b and 7c: a stale read's list must be a committed state at
    /// some moment of its window `[invoke − bound, complete]`.
    fn check_window(&mut self, read: &ReadRef<'h>, timeline: &Timeline<'h>) {
        let txn = &self.txns[read.txn];
        let bound_ns = read.bound_ns.unwrap_or_default();
        let opens_ns = txn.invoke_ns.saturating_sub(bound_ns);
        let n = read.list.len();
        // 7b, too stale: a committed append missing from the list completed
        // before the window opened, so from then on the key held it.
        if let Some((done_ns, value, w)) = timeline.first_committed_after[n]
            && done_ns < opens_ns
        {
            let explanation = format!(
                "{} = {}, but {}'s append of {value}, which that list lacks, committed at {done_ns} ns, before the read's window [{opens_ns}, {}] ns opened (invoked at {} ns, bound {bound_ns} ns): key {} no longer held {} by then",
                self.what_read(read),
                show(read.list),
                self.name(w),
                show_ns(txn.complete_ns),
                txn.invoke_ns,
                read.key,
                show(read.list),
            );
            self.report(AnomalyClass::StaleRead, &[read.txn, w], explanation);
        }
        // 7c, from the future: an element whose appender began only after
        // the read completed.
        if let Some(complete_ns) = txn.complete_ns
            && let Some((invoked_ns, value, w)) = timeline.last_invoked_in[n]
            && invoked_ns > complete_ns
        {
            let explanation = format!(
                "{} = {}, completing at {complete_ns} ns, but {value} was appended by {}, invoked only at {invoked_ns} ns",
                self.what_read(read),
                show(read.list),
                self.name(w)
            );
            self.report(AnomalyClass::FutureRead, &[read.txn, w], explanation);
        }
    }

    /// Check 7d, read-your-writes: sweeping each process's transactions in
    /// program order, a stale read must hold every append to its key that
    /// an earlier committed transaction of the same process made.
    fn check_read_your_writes(&mut self, timelines: &BTreeMap<u64, Timeline<'h>>) {
        // (process, key) → the own append the furthest into the key's order
        // (`usize::MAX` if in no read used here): (rank, value, txn).
        let mut own: HashMap<(u64, u64), (usize, u64, usize)> = HashMap::new();
        let txns = self.txns;
        // Transactions are in invocation order, and a process runs one at a
        // time: each one's earlier transactions completed before it began.
        for (t, txn) in txns.iter().enumerate() {
            if txn.outcome != Outcome::Committed {
                // An indeterminate append may never take effect: no read
                // has to show it, not even its own session's.
                continue;
            }
            for (m, mop) in txn.mops.iter().enumerate() {
                match mop {
                    Mop::Append { key, value } => {
                        let Some(timeline) = timelines.get(key) else {
                            continue;
                        };
                        let rank = timeline.position.get(value).copied().unwrap_or(usize::MAX);
                        let entry = own.entry((txn.process, *key)).or_insert((rank, *value, t));
                        if rank > entry.0 {
                            *entry = (rank, *value, t);
                        }
                    }
                    Mop::StaleRead {
                        key,
                        bound_ns,
                        value: Some(list),
                    } => {
                        if self.tainted.contains(&(t, m)) {
                            continue;
                        }
                        let Some(&(rank, value, w)) = own.get(&(txn.process, *key)) else {
                            continue;
                        };
                        if rank < list.len() {
                            continue;
                        }
                        let read = ReadRef {
                            txn: t,
                            mop: m,
                            key: *key,
                            list,
                            bound_ns: Some(*bound_ns),
                        };
                        let explanation = format!(
                            "{} = {}, which lacks {value}, appended by {} on the same process {}, committed at {} ns, before {} began at {} ns (read-your-writes)",
                            self.what_read(&read),
                            show(list),
                            self.name(w),
                            txn.process,
                            show_ns(txns[w].complete_ns),
                            self.name(t),
                            txn.invoke_ns
                        );
                        self.report(AnomalyClass::ReadYourWrites, &[t, w], explanation);
                    }
                    Mop::Read { .. } | Mop::StaleRead { value: None, .. } => {}
                }
            }
        }
    }
}

/// Whether one list is a prefix of the other.
fn prefix_compatible(a: &[u64], b: &[u64]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The earlier of two stamped appends, either possibly absent.
fn earliest(a: Option<Stamped>, b: Option<Stamped>) -> Option<Stamped> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A completion time in explanations.
fn show_ns(ns: Option<u64>) -> String {
    ns.map_or_else(|| "?".to_string(), |ns| ns.to_string())
}

/// Program order: each process's last committed transaction precedes its
/// next transaction in the graph. An indeterminate one is never a source: it
/// may have taken effect after its successor began.
fn add_process_edges(graph: &mut Graph<Why>, txns: &[Txn<Mop>], in_graph: &[bool]) {
    let mut last_committed: HashMap<u64, usize> = HashMap::new();
    // Transactions are in invocation order, and a process runs one at a time.
    for (t, txn) in txns.iter().enumerate() {
        if !in_graph[t] {
            continue;
        }
        if let Some(&p) = last_committed.get(&txn.process) {
            graph.add(
                p,
                t,
                Relation::Process,
                Why::Process {
                    process: txn.process,
                },
            );
        }
        if txn.outcome == Outcome::Committed {
            last_committed.insert(txn.process, t);
        }
    }
}

/// Real-time order, transitively reduced: sweeping events by time, an
/// invocation links from the *frontier* (committed completions not already
/// implied by a later one); a completion replaces in the frontier what was
/// there when its transaction began, since those now precede it.
fn add_realtime_edges(graph: &mut Graph<Why>, txns: &[Txn<Mop>], in_graph: &[bool]) {
    // (time, 0 = invoke | 1 = complete, txn). At equal times invocations go
    // first: completing at the very moment another begins is not "before".
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (t, txn) in txns.iter().enumerate() {
        if !in_graph[t] {
            continue;
        }
        events.push((txn.invoke_ns, 0, t));
        if txn.outcome == Outcome::Committed
            && let Some(done) = txn.complete_ns
        {
            events.push((done, 1, t));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<usize> = Vec::new();
    let mut before: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, event, t) in events {
        if event == 0 {
            for &f in &frontier {
                let why = Why::Realtime {
                    completed_ns: txns[f].complete_ns.unwrap_or_default(),
                    invoked_ns: txns[t].invoke_ns,
                };
                graph.add(f, t, Relation::Realtime, why);
            }
            before.insert(t, frontier.clone());
        } else {
            let implied = before.remove(&t).unwrap_or_default();
            frontier.retain(|f| !implied.contains(f));
            frontier.push(t);
        }
    }
}

fn explain(why: &Why, from: &str, to: &str) -> String {
    match *why {
        Why::Ww { key, before, after } => {
            format!("{to} appended {after} to key {key} after {from}'s append of {before} (ww)")
        }
        Why::Wr { key, value } => format!("{to} read {from}'s append of {value} to key {key} (wr)"),
        Why::Rw {
            key,
            last,
            appended,
        } => {
            let read = match last {
                Some(v) => format!("the read ended at {v}"),
                None => "the read was empty".to_string(),
            };
            format!("{from} read key {key} before {to} appended {appended} (rw; {read})")
        }
        Why::Process { process } => {
            format!("{from} completed before {to} began, on process {process} (process)")
        }
        Why::Realtime {
            completed_ns,
            invoked_ns,
        } => format!(
            "{from} completed before {to} began (realtime: {completed_ns} ns < {invoked_ns} ns)"
        ),
    }
}

/// `cycle T1 → T2 → T1`, abbreviated past [`CYCLE_SHOWN_MAX`] transactions.
fn show_cycle(txns: &[usize]) -> String {
    let name = |t: &usize| format!("T{t}");
    let mut names: Vec<String> = if txns.len() <= CYCLE_SHOWN_MAX {
        txns.iter().map(name).collect()
    } else {
        let half = CYCLE_SHOWN_MAX / 2;
        let mut names: Vec<String> = txns[..half].iter().map(name).collect();
        names.push("…".to_string());
        names.extend(txns[txns.len() - half..].iter().map(name));
        names
    };
    names.push(name(&txns[0]));
    if txns.len() <= CYCLE_SHOWN_MAX {
        format!("cycle {}", names.join(" → "))
    } else {
        format!(
            "cycle of {} transactions: {}",
            txns.len(),
            names.join(" → ")
        )
    }
}

/// A list in explanations, abbreviated past [`LIST_SHOWN_MAX`] elements.
fn show(list: &[u64]) -> String {
    let join = |l: &[u64]| l.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    if list.len() <= LIST_SHOWN_MAX {
        format!("[{}]", join(list))
    } else {
        let half = LIST_SHOWN_MAX / 2;
        format!(
            "[{},…,{}] ({} elements)",
            join(&list[..half]),
            join(&list[list.len() - half..]),
            list.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: usize, outcome: Outcome, invoke_ns: u64, complete_ns: u64) -> Txn<Mop> {
        Txn {
            id,
            process: id as u64,
            outcome,
            mops: vec![Mop::Append {
                key: 1,
                value: id as u64,
            }],
            invoke_ns,
            complete_ns: Some(complete_ns),
            invoke_index: 0,
            complete_index: None,
        }
    }

    #[test]
    fn realtime_edges_are_a_transitive_reduction() {
        // A serial run of 50 transactions needs 49 edges, not 1225.
        let txns: Vec<Txn<Mop>> = (0..50)
            .map(|i| txn(i, Outcome::Committed, 10 * i as u64, 10 * i as u64 + 5))
            .collect();
        let mut graph = Graph::new(txns.len());
        add_realtime_edges(&mut graph, &txns, &vec![true; txns.len()]);
        for i in 0..49 {
            assert!(graph.edge_between(i, i + 1).is_some());
            assert!(graph.edge_between(i, i + 2).is_none());
        }
    }

    #[test]
    fn realtime_edges_respect_concurrency_and_info() {
        // T0 [0,10] and T1 [5,15] overlap; T2 [20,30] follows both; T3 is
        // info, invoked at 1 and "completed" at 2: never a source.
        let txns = vec![
            txn(0, Outcome::Committed, 0, 10),
            txn(1, Outcome::Committed, 5, 15),
            txn(2, Outcome::Committed, 20, 30),
            txn(3, Outcome::Indeterminate, 1, 2),
            txn(4, Outcome::Committed, 10, 40),
        ];
        let mut graph = Graph::new(txns.len());
        add_realtime_edges(&mut graph, &txns, &[true; 5]);
        assert!(graph.edge_between(0, 1).is_none() && graph.edge_between(1, 0).is_none());
        assert!(graph.edge_between(0, 2).is_some() && graph.edge_between(1, 2).is_some());
        assert!(graph.edge_between(3, 2).is_none() && graph.edge_between(3, 4).is_none());
        // T0 completes at 10, exactly when T4 begins: not before it.
        assert!(graph.edge_between(0, 4).is_none());
    }

    #[test]
    fn shows_long_lists_and_cycles_abbreviated() {
        assert_eq!(show(&[]), "[]");
        assert_eq!(show(&[1, 2, 3]), "[1,2,3]");
        let long: Vec<u64> = (1..=20).collect();
        assert_eq!(show(&long), "[1,2,3,4,…,17,18,19,20] (20 elements)");
        assert_eq!(show_cycle(&[3, 1]), "cycle T3 → T1 → T3");
        let long: Vec<usize> = (0..20).collect();
        assert_eq!(
            show_cycle(&long),
            "cycle of 20 transactions: T0 → T1 → T2 → T3 → T4 → T5 → … → T14 → T15 → T16 → T17 → T18 → T19 → T0"
        );
    }
}
