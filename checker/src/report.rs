//! What a checker found: a verdict, the anomalies behind it, and notes on
//! what it could not decide. Shared by every workload.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Anomalies of one class kept in a report; the rest are only counted (in
/// [`Report::omitted`]), so a badly broken history gives a readable report
/// of bounded size.
pub const ANOMALIES_PER_CLASS_MAX: usize = 64;

/// The checker's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// No anomaly found, and the history said enough to look for them.
    Valid,
    /// At least one anomaly: the history is not allowed by the model.
    Invalid,
    /// No anomaly found, but the checker could not decide; the notes say why
    /// (each workload documents when).
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        })
    }
}

/// The dependency cycle classes of Adya's hierarchy, as Elle names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CycleKind {
    /// Only write-write edges: dirty write.
    G0,
    /// Write-write and write-read edges, at least one write-read: circular
    /// information flow.
    G1c,
    /// Exactly one read-write (anti-dependency) edge: read skew.
    GSingle,
    /// Several read-write edges, no two adjacent.
    GNonadjacent,
    /// Any other cycle with read-write edges (two adjacent): write skew.
    G2Item,
}

impl fmt::Display for CycleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CycleKind::G0 => "G0",
            CycleKind::G1c => "G1c",
            CycleKind::GSingle => "G-single",
            CycleKind::GNonadjacent => "G-nonadjacent",
            CycleKind::G2Item => "G2-item",
        })
    }
}

/// What a cycle needs besides data dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CycleVia {
    /// Data dependencies alone (ww, wr, rw): not serializable.
    Data,
    /// Also program order within a process: not strong session serializable.
    Process,
    /// Also real-time order: not strictly serializable.
    Realtime,
}

/// Why one transaction must precede another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// The later one overwrote (appended after) the earlier one's write.
    Ww,
    /// The later one read the earlier one's write.
    Wr,
    /// The earlier one read a state the later one's write changed
    /// (anti-dependency).
    Rw,
    /// Same process, earlier in program order.
    Process,
    /// The earlier one completed before the later one was invoked.
    Realtime,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::Ww => "ww",
            Relation::Wr => "wr",
            Relation::Rw => "rw",
            Relation::Process => "process",
            Relation::Realtime => "realtime",
        })
    }
}

/// The class of an anomaly. `Display` gives its name (e.g. `G-single-realtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyClass {
    /// A transaction's read disagrees with its own earlier reads and appends.
    Internal,
    /// Aborted read: a committed read saw a failed transaction's append.
    G1a,
    /// Intermediate read: a read ends at an append that its transaction
    /// followed with another append to the same key.
    G1b,
    /// The same element twice in one read.
    DuplicateElements,
    /// A read saw a value that nobody appended.
    UnwrittenValue,
    /// Two reads of a key, neither a prefix of the other.
    IncompatibleOrder,
    /// Two committed transactions read the same state of a key and both
    /// appended to it: one of the appends was made on a stale read.
    LostUpdate,
    /// A STALE(bound) read returned a list that had already been overwritten
    /// by a committed append completed before the read's window
    /// `[invoke − bound, complete]` opened.
    StaleRead,
    /// A STALE read returned a list an append could not yet have reached:
    /// its appender was invoked only after the read completed.
    FutureRead,
    /// A STALE read missed an append that its own session (process)
    /// committed before the read began.
    ReadYourWrites,
    /// A dependency cycle.
    Cycle(CycleKind, CycleVia),
    /// Bank: a read whose balances do not sum to the total.
    WrongTotal,
    /// Bank: a read with a negative balance (when forbidden).
    NegativeBalance,
    /// Bank: a read that misses or repeats an account.
    IncompleteRead,
    /// Register: no linearization of a key's operations exists.
    NonLinearizable,
}

impl fmt::Display for AnomalyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            AnomalyClass::Internal => "internal",
            AnomalyClass::G1a => "G1a",
            AnomalyClass::G1b => "G1b",
            AnomalyClass::DuplicateElements => "duplicate-elements",
            AnomalyClass::UnwrittenValue => "unwritten-value",
            AnomalyClass::IncompatibleOrder => "incompatible-order",
            AnomalyClass::LostUpdate => "lost-update",
            AnomalyClass::StaleRead => "stale-read",
            AnomalyClass::FutureRead => "future-read",
            AnomalyClass::ReadYourWrites => "read-your-writes",
            AnomalyClass::Cycle(kind, via) => {
                return match via {
                    CycleVia::Data => write!(f, "{kind}"),
                    CycleVia::Process => write!(f, "{kind}-process"),
                    CycleVia::Realtime => write!(f, "{kind}-realtime"),
                };
            }
            AnomalyClass::WrongTotal => "wrong-total",
            AnomalyClass::NegativeBalance => "negative-balance",
            AnomalyClass::IncompleteRead => "incomplete-read",
            AnomalyClass::NonLinearizable => "nonlinearizable",
        };
        f.write_str(name)
    }
}

/// One edge of a reported cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleStep {
    /// Transaction id (`T<from>`).
    pub from: usize,
    /// Transaction id (`T<to>`).
    pub to: usize,
    /// The relation this step stands for.
    pub relation: Relation,
    /// The step in words, e.g. "T2 read T1's append of 3 to key 7 (wr)".
    pub explanation: String,
}

/// One anomaly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// What kind.
    pub class: AnomalyClass,
    /// The transactions involved (ids), in the order the explanation names
    /// them; for a cycle, its nodes in cycle order.
    pub txns: Vec<usize>,
    /// The anomaly in words.
    pub explanation: String,
    /// For a cycle, its edges in order (the last one returns to the first
    /// transaction); empty otherwise.
    pub cycle: Vec<CycleStep>,
}

/// A checker's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The conclusion.
    pub verdict: Verdict,
    /// The anomalies found, at most [`ANOMALIES_PER_CLASS_MAX`] per class.
    pub anomalies: Vec<Anomaly>,
    /// Per class, how many more anomalies were found but not listed.
    pub omitted: BTreeMap<AnomalyClass, usize>,
    /// What the checker could not decide or chose to skip, in words.
    pub notes: Vec<String>,
}

impl Report {
    /// Every anomaly class found.
    pub fn classes(&self) -> BTreeSet<AnomalyClass> {
        self.anomalies.iter().map(|a| a.class).collect()
    }

    /// The anomalies of one class.
    pub fn of(&self, class: AnomalyClass) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.class == class)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verdict: {}", self.verdict)?;
        for anomaly in &self.anomalies {
            writeln!(f, "{}: {}", anomaly.class, anomaly.explanation)?;
            for step in &anomaly.cycle {
                writeln!(f, "  {}", step.explanation)?;
            }
        }
        for (class, count) in &self.omitted {
            writeln!(f, "({count} more {class} anomalies not listed)")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// Collects anomalies, capping each class, and settles the verdict.
#[derive(Debug, Default)]
pub(crate) struct ReportBuilder {
    anomalies: Vec<Anomaly>,
    found: BTreeMap<AnomalyClass, usize>,
    notes: Vec<String>,
    undecided: bool,
}

impl ReportBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&mut self, anomaly: Anomaly) {
        let count = self.found.entry(anomaly.class).or_insert(0);
        *count += 1;
        if *count <= ANOMALIES_PER_CLASS_MAX {
            self.anomalies.push(anomaly);
        }
    }

    /// Records something worth knowing that does not change the verdict.
    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Records why the history cannot be judged; the verdict is Unknown
    /// unless an anomaly is found anyway.
    pub(crate) fn undecided(&mut self, reason: String) {
        self.undecided = true;
        self.notes.push(reason);
    }

    pub(crate) fn finish(self) -> Report {
        let verdict = if !self.found.is_empty() {
            Verdict::Invalid
        } else if self.undecided {
            Verdict::Unknown
        } else {
            Verdict::Valid
        };
        let omitted = self
            .found
            .into_iter()
            .filter(|&(_, n)| n > ANOMALIES_PER_CLASS_MAX)
            .map(|(class, n)| (class, n - ANOMALIES_PER_CLASS_MAX))
            .collect();
        Report {
            verdict,
            anomalies: self.anomalies,
            omitted,
            notes: self.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_follow_elle() {
        let name = |c: AnomalyClass| c.to_string();
        assert_eq!(
            name(AnomalyClass::Cycle(CycleKind::G0, CycleVia::Data)),
            "G0"
        );
        assert_eq!(
            name(AnomalyClass::Cycle(CycleKind::GSingle, CycleVia::Realtime)),
            "G-single-realtime"
        );
        assert_eq!(
            name(AnomalyClass::Cycle(CycleKind::G2Item, CycleVia::Process)),
            "G2-item-process"
        );
        assert_eq!(name(AnomalyClass::LostUpdate), "lost-update");
        assert_eq!(name(AnomalyClass::StaleRead), "stale-read");
        assert_eq!(name(AnomalyClass::FutureRead), "future-read");
        assert_eq!(name(AnomalyClass::ReadYourWrites), "read-your-writes");
    }

    #[test]
    fn caps_each_class_and_counts_the_rest() {
        let mut builder = ReportBuilder::new();
        for _ in 0..ANOMALIES_PER_CLASS_MAX + 3 {
            builder.push(Anomaly {
                class: AnomalyClass::G1a,
                txns: vec![],
                explanation: String::new(),
                cycle: vec![],
            });
        }
        builder.undecided("ignored once an anomaly is found".to_string());
        let report = builder.finish();
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(report.anomalies.len(), ANOMALIES_PER_CLASS_MAX);
        assert_eq!(report.omitted.get(&AnomalyClass::G1a), Some(&3));
    }

    #[test]
    fn undecided_without_anomalies_is_unknown() {
        let mut builder = ReportBuilder::new();
        assert_eq!(ReportBuilder::new().finish().verdict, Verdict::Valid);
        builder.undecided("nothing was read".to_string());
        assert_eq!(builder.finish().verdict, Verdict::Unknown);
    }
}
