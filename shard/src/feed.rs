//! The change feed's assembly (DESIGN.md §11): a group's log records, taken
//! in LSN order, become its committed transactions in *position* order,
//! with the resolved position after them. Pure: no IO, no clock; the
//! engine reads the log and the server streams what this gives.
//!
//! A transaction's **position** is the LSN that ordered it in this group:
//! its COMMIT_LOCAL record, or for a two-phase commit its PREPARE record
//! (which its version comes from), so positions follow versions. A prepared
//! transaction is known only at its FINALIZE, later in the log; until then
//! every transaction after its position is *held*, so the feed never sends
//! a position below one it sent. An abort drops the prepared transaction;
//! it never appears.
//!
//! The **resolved** position says that every transaction at or below it was
//! given out: the position before the oldest undecided prepare, or, with
//! none, the last record taken. A cursor resumes after it (or after the
//! last transaction handled): the records after that position hold every
//! transaction not yet given out, PREPARE included.

use std::collections::{BTreeMap, HashMap};

use trellis_types::{Lsn, TxnId, Version};

use crate::record::{Record, WriteRec};
use crate::version_base::VersionBase;

/// Most bytes of writes held behind an undecided prepare (the writes of
/// transactions decided after it, and of prepared ones). Past it the feed
/// stops with [`FeedError::HeldTooMuch`]; a reader that starts again later
/// finds the prepare decided (the in-doubt sweeper decides every one).
pub const FEED_HELD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The keys a feed watches: `[start, end)`, no end when `end` is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// One committed transaction's writes in the watched range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedTxn {
    pub position: Lsn,
    pub version: Version,
    pub txn: TxnId,
    /// The groups of a 2PC transaction; empty for a one-group commit.
    pub participants: Vec<u64>,
    pub writes: Vec<WriteRec>,
}

impl FeedTxn {
    fn bytes(&self) -> usize {
        writes_bytes(&self.writes)
    }
}

fn writes_bytes(writes: &[WriteRec]) -> usize {
    writes
        .iter()
        .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len))
        .sum()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    #[error("record {got} taken after {expected}: the feed reads the log in order")]
    OutOfOrder { expected: Lsn, got: Lsn },
    #[error(
        "more than {FEED_HELD_BYTES_MAX} bytes of transactions wait behind the undecided \
         prepare at position {position}; the feed starts again once it is decided"
    )]
    HeldTooMuch { position: Lsn },
    #[error("the log holds a record the feed cannot read: {0}")]
    BadRecord(String),
}

/// A prepared transaction not decided yet.
#[derive(Debug)]
struct Pending {
    txn: TxnId,
    version: Version,
    participants: Vec<u64>,
    writes: Vec<WriteRec>,
}

/// Turns log records into the feed (see the module doc).
#[derive(Debug)]
pub struct Assembler {
    range: KeyRange,
    versions: VersionBase,
    /// The last record taken.
    taken: Lsn,
    /// Undecided prepares with writes in range, by position.
    pending: BTreeMap<Lsn, Pending>,
    /// Their positions, by transaction.
    pending_at: HashMap<TxnId, Lsn>,
    /// Committed, but behind an undecided prepare: by position.
    held: BTreeMap<Lsn, FeedTxn>,
    held_bytes: usize,
    /// In position order, not yet taken by [`Assembler::drain`].
    out: Vec<FeedTxn>,
}

impl Assembler {
    /// A feed of `range` that gives out what comes after position `after`;
    /// `versions` must map every LSN above `after` (the group's version
    /// base; its points from `after` on are what it needs).
    pub fn new(range: KeyRange, after: Lsn, versions: VersionBase) -> Assembler {
        Assembler {
            range,
            versions,
            taken: after,
            pending: BTreeMap::new(),
            pending_at: HashMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            out: Vec::new(),
        }
    }

    /// The next LSN [`Assembler::take`] expects.
    pub fn next_lsn(&self) -> Lsn {
        self.taken + 1
    }

    /// Takes the record at `lsn` (the one after the last taken).
    pub fn take(&mut self, lsn: Lsn, record: &Record) -> Result<(), FeedError> {
        if lsn != self.taken + 1 {
            return Err(FeedError::OutOfOrder {
                expected: self.taken + 1,
                got: lsn,
            });
        }
        self.taken = lsn;
        match record {
            Record::CommitLocal(rec) => {
                let writes = self.in_range(&rec.writes);
                if !writes.is_empty() {
                    let txn = FeedTxn {
                        position: lsn,
                        version: self.versions.version(lsn),
                        txn: parse_txn(&rec.txn_id)?,
                        participants: Vec::new(),
                        writes,
                    };
                    self.commit(txn)?;
                }
            }
            Record::Prepare(rec) => {
                let writes = self.in_range(&rec.writes);
                if !writes.is_empty() {
                    let txn = parse_txn(&rec.txn_id)?;
                    let pending = Pending {
                        txn,
                        version: self.versions.version(lsn),
                        participants: rec.participants.clone(),
                        writes,
                    };
                    self.held_bytes += writes_bytes(&pending.writes);
                    self.pending_at.insert(txn, lsn);
                    self.pending.insert(lsn, pending);
                }
            }
            Record::Finalize(rec) => {
                let txn = parse_txn(&rec.txn_id)?;
                // A transaction prepared before the feed's start, or with no
                // write in range, is not pending: nothing to do.
                if let Some(position) = self.pending_at.remove(&txn) {
                    let pending = self.pending.remove(&position).expect("pending by position");
                    self.held_bytes -= writes_bytes(&pending.writes);
                    if rec.commit {
                        self.commit(FeedTxn {
                            position,
                            version: pending.version,
                            txn: pending.txn,
                            participants: pending.participants,
                            writes: pending.writes,
                        })?;
                    }
                    self.release();
                }
            }
            Record::Ingest(rec) => {
                let highest = rec.entries.iter().map(|e| e.version).max().unwrap_or(0);
                self.versions.raise(lsn, highest);
            }
            Record::Decide(_) | Record::Forget(_) | Record::NewEpoch(_) | Record::Slots(_) => {}
        }
        Ok(())
    }

    /// The transactions given out since the last call, in position order.
    pub fn drain(&mut self) -> Vec<FeedTxn> {
        std::mem::take(&mut self.out)
    }

    /// Every transaction at or below this position was given out by
    /// [`Assembler::drain`] (once the last drain's are handled).
    pub fn resolved(&self) -> Lsn {
        match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.taken,
        }
    }

    /// The position of the oldest undecided prepare in range, if any.
    pub fn oldest_pending(&self) -> Option<Lsn> {
        self.pending.keys().next().copied()
    }

    fn in_range(&self, writes: &[WriteRec]) -> Vec<WriteRec> {
        writes
            .iter()
            .filter(|w| self.range.contains(&w.key))
            .cloned()
            .collect()
    }

    fn commit(&mut self, txn: FeedTxn) -> Result<(), FeedError> {
        match self.pending.keys().next() {
            Some(&first) if first < txn.position => {
                self.held_bytes += txn.bytes();
                self.held.insert(txn.position, txn);
                if self.held_bytes > FEED_HELD_BYTES_MAX {
                    return Err(FeedError::HeldTooMuch { position: first });
                }
            }
            _ => self.out.push(txn),
        }
        Ok(())
    }

    /// Gives out the held transactions no undecided prepare precedes.
    fn release(&mut self) {
        let bound = self.pending.keys().next().copied().unwrap_or(Lsn::MAX);
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > bound {
                break;
            }
            let txn = entry.remove();
            self.held_bytes -= txn.bytes();
            self.out.push(txn);
        }
    }
}

fn parse_txn(bytes: &[u8]) -> Result<TxnId, FeedError> {
    TxnId::from_bytes(bytes).map_err(|e| FeedError::BadRecord(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CommitLocalRec, FinalizeRec, IngestRec, PrepareRec, SnapEntry};

    fn id(n: u8) -> TxnId {
        TxnId([n; 16])
    }

    fn put(key: &str, value: &str) -> WriteRec {
        WriteRec {
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn local(n: u8, writes: Vec<WriteRec>) -> Record {
        Record::CommitLocal(CommitLocalRec {
            txn_id: id(n).0.to_vec(),
            writes,
        })
    }

    fn prepare(n: u8, writes: Vec<WriteRec>) -> Record {
        Record::Prepare(PrepareRec {
            txn_id: id(n).0.to_vec(),
            reads: vec![],
            writes,
            anchor: 1,
            participants: vec![1, 2],
        })
    }

    fn finalize(n: u8, commit: bool) -> Record {
        Record::Finalize(FinalizeRec {
            txn_id: id(n).0.to_vec(),
            commit,
        })
    }

    fn all() -> KeyRange {
        KeyRange::default()
    }

    fn positions(txns: &[FeedTxn]) -> Vec<Lsn> {
        txns.iter().map(|t| t.position).collect()
    }

    #[test]
    fn one_phase_commits_go_out_at_once_in_log_order() {
        let mut a = Assembler::new(all(), 0, VersionBase::default());
        a.take(1, &local(1, vec![put("a", "1")])).unwrap();
        a.take(2, &local(2, vec![put("b", "2")])).unwrap();
        let out = a.drain();
        assert_eq!(positions(&out), vec![1, 2]);
        assert_eq!(out[0].version, 1, "versions are LSNs until a group imports");
        assert_eq!(out[0].txn, id(1));
        assert!(out[0].participants.is_empty());
        assert_eq!(a.resolved(), 2);
    }

    #[test]
    fn a_prepare_holds_what_follows_until_it_is_decided() {
        let mut a = Assembler::new(all(), 10, VersionBase::default());
        a.take(11, &prepare(1, vec![put("a", "1")])).unwrap();
        a.take(12, &local(2, vec![put("b", "2")])).unwrap();
        assert!(
            a.drain().is_empty(),
            "a commit after an undecided prepare waits"
        );
        assert_eq!(a.resolved(), 10, "resolved stops before the prepare");
        a.take(13, &finalize(1, true)).unwrap();
        let out = a.drain();
        assert_eq!(
            positions(&out),
            vec![11, 12],
            "the prepare's position, then the held one"
        );
        assert_eq!(
            out[0].version, 11,
            "a 2PC transaction's version is its prepare's"
        );
        assert_eq!(out[0].participants, vec![1, 2]);
        assert_eq!(a.resolved(), 13);
    }

    #[test]
    fn an_aborted_transaction_never_appears_and_releases_what_it_held() {
        let mut a = Assembler::new(all(), 0, VersionBase::default());
        a.take(1, &prepare(1, vec![put("a", "1")])).unwrap();
        a.take(2, &prepare(2, vec![put("b", "1")])).unwrap();
        a.take(3, &local(3, vec![put("c", "1")])).unwrap();
        a.take(4, &finalize(2, true)).unwrap();
        assert!(a.drain().is_empty(), "2 waits behind 1");
        assert_eq!(a.resolved(), 0);
        a.take(5, &finalize(1, false)).unwrap();
        assert_eq!(positions(&a.drain()), vec![2, 3]);
        assert_eq!(a.resolved(), 5);
    }

    #[test]
    fn positions_given_out_never_go_back() {
        // Interleaved prepares decided in any order: what comes out rises.
        let mut a = Assembler::new(all(), 0, VersionBase::default());
        let mut lsn = 0;
        let mut next = |a: &mut Assembler, r: Record| {
            lsn += 1;
            a.take(lsn, &r).unwrap();
        };
        for n in 1..=5u8 {
            next(&mut a, prepare(n, vec![put(&format!("p{n}"), "v")]));
            next(&mut a, local(100 + n, vec![put(&format!("l{n}"), "v")]));
        }
        for n in [3u8, 5, 1, 4, 2] {
            next(&mut a, finalize(n, n != 4));
        }
        let out = a.drain();
        let got = positions(&out);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted);
        assert_eq!(
            out.len(),
            9,
            "four committed prepares and five local commits"
        );
        assert!(
            !out.iter().any(|t| t.txn == id(4)),
            "the aborted one is missing"
        );
    }

    #[test]
    fn only_writes_in_range_and_no_empty_transactions() {
        let range = KeyRange {
            start: b"b".to_vec(),
            end: Some(b"d".to_vec()),
        };
        let mut a = Assembler::new(range, 0, VersionBase::default());
        a.take(
            1,
            &local(1, vec![put("a", "1"), put("b", "1"), put("d", "1")]),
        )
        .unwrap();
        a.take(2, &local(2, vec![put("e", "1")])).unwrap();
        // A prepare outside the range does not hold anything.
        a.take(3, &prepare(3, vec![put("z", "1")])).unwrap();
        a.take(4, &local(4, vec![put("c", "1")])).unwrap();
        let out = a.drain();
        assert_eq!(positions(&out), vec![1, 4]);
        assert_eq!(out[0].writes, vec![put("b", "1")]);
        assert_eq!(a.resolved(), 4);
    }

    #[test]
    fn a_finalize_of_a_transaction_prepared_before_the_start_is_ignored() {
        let mut a = Assembler::new(all(), 10, VersionBase::default());
        a.take(11, &finalize(9, true)).unwrap();
        assert!(a.drain().is_empty());
        assert_eq!(a.resolved(), 11);
    }

    #[test]
    fn versions_follow_the_imports_the_log_shows() {
        let mut a = Assembler::new(all(), 0, VersionBase::default());
        a.take(
            1,
            &Record::Ingest(IngestRec {
                from_group: 2,
                entries: vec![SnapEntry {
                    key: b"k".to_vec(),
                    value: Some(b"v".to_vec()),
                    version: 500,
                }],
            }),
        )
        .unwrap();
        a.take(2, &local(1, vec![put("k", "w")])).unwrap();
        assert_eq!(a.drain()[0].version, 501, "above the imported version");
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let mut a = Assembler::new(all(), 5, VersionBase::default());
        assert_eq!(
            a.take(7, &local(1, vec![])),
            Err(FeedError::OutOfOrder {
                expected: 6,
                got: 7
            })
        );
    }

    #[test]
    fn too_much_held_behind_one_prepare_stops_the_feed() {
        let mut a = Assembler::new(all(), 0, VersionBase::default());
        a.take(1, &prepare(1, vec![put("a", "1")])).unwrap();
        let big = "x".repeat(1024 * 1024);
        let mut result = Ok(());
        for lsn in 2..=(2 + (FEED_HELD_BYTES_MAX / big.len()) as u64) {
            result = a.take(lsn, &local(2, vec![put("b", &big)]));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FeedError::HeldTooMuch { position: 1 }));
    }
}
