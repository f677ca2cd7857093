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
//!
//! An **initial scan** ([`Scan`]) gives a range's committed state before
//! the tail: keys in key order, a window of them at a time, in chunks; the
//! engine reads each chunk under the state lock and sends it once the
//! group's SYNC mark covers what it read ([`scan_chunk_durable`]).

use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

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

/// Most keys an initial scan lists at once (one walk of the index per
/// window: the index is a hash map, so key order costs a walk).
pub const FEED_SCAN_WINDOW_KEYS: usize = 64 * 1024;
/// Most rows in one scan chunk (one read under the state lock, one batch).
pub const FEED_SCAN_CHUNK_ROWS: usize = 512;
/// About this many bytes of keys and values per scan chunk (a chunk may
/// pass it by one row, which is within the key and value limits).
pub const FEED_SCAN_CHUNK_BYTES: usize = 1024 * 1024;
const _: () = assert!(
    FEED_SCAN_CHUNK_BYTES
        + trellis_types::limits::KEY_BYTES_MAX
        + trellis_types::limits::VALUE_BYTES_MAX
        < trellis_types::limits::MESSAGE_BYTES_MAX / 2
);
const _: () = assert!(FEED_SCAN_CHUNK_ROWS <= FEED_SCAN_WINDOW_KEYS);

/// A key's committed value as the scan read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRow {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: Version,
}

/// The smallest keys of a range after a key, gathered from keys offered in
/// any order (a walk of the index): at most `max`, and whether more remain.
#[derive(Debug)]
pub struct ScanWindow<'r> {
    range: &'r KeyRange,
    after: Option<&'r [u8]>,
    max: usize,
    /// A max-heap: its top is the key to drop when a smaller one comes.
    keys: BinaryHeap<Vec<u8>>,
    more: bool,
}

impl ScanWindow<'_> {
    pub fn offer(&mut self, key: &[u8]) {
        if !self.range.contains(key) || self.after.is_some_and(|after| key <= after) {
            return;
        }
        if self.keys.len() < self.max {
            self.keys.push(key.to_vec());
            return;
        }
        self.more = true;
        if self.keys.peek().is_some_and(|top| key < top.as_slice()) {
            self.keys.pop();
            self.keys.push(key.to_vec());
        }
    }
}

/// An initial scan's progress through its range: windows of keys (listed
/// by a walk of the index, [`Scan::window`]), each given out in chunks
/// ([`Scan::next_chunk`]) read from the index at the time of the chunk.
///
/// Why no key is missed: the window lists every key in range that was
/// live when walked; a key that was not (absent, or deleted) and is live
/// later was written after the walk, so after the tail's start position,
/// and its write comes in the tail. A listed key deleted before its chunk
/// is read is skipped: its delete, too, is after the walk and in the tail.
#[derive(Debug)]
pub struct Scan {
    range: KeyRange,
    /// The last key given out (or skipped) by a chunk.
    after: Option<Vec<u8>>,
    window: VecDeque<Vec<u8>>,
    /// Keys in range after the window remain (or no window was walked yet).
    more: bool,
}

impl Scan {
    pub fn new(range: KeyRange) -> Scan {
        Scan {
            range,
            after: None,
            window: VecDeque::new(),
            more: true,
        }
    }

    /// Whether every key was given out: the scan's last chunk was taken.
    pub fn done(&self) -> bool {
        self.window.is_empty() && !self.more
    }

    /// Whether the next chunk needs a new window walked first.
    pub fn needs_window(&self) -> bool {
        self.window.is_empty() && self.more
    }

    /// A window to offer every live key of the index to, then
    /// [`Scan::set_window`].
    pub fn window(&self) -> ScanWindow<'_> {
        ScanWindow {
            range: &self.range,
            after: self.after.as_deref(),
            max: FEED_SCAN_WINDOW_KEYS,
            keys: BinaryHeap::new(),
            more: false,
        }
    }

    /// Takes a walked window's keys.
    pub fn set_window(&mut self, keys: Vec<Vec<u8>>, more: bool) {
        debug_assert!(self.window.is_empty());
        let mut keys = keys;
        keys.sort_unstable();
        self.window = keys.into();
        self.more = more;
    }

    /// The next chunk: the window's next keys, as `lookup` finds them now
    /// (`None`: deleted, or no longer this group's: skipped), up to
    /// [`FEED_SCAN_CHUNK_ROWS`] rows and about [`FEED_SCAN_CHUNK_BYTES`].
    pub fn next_chunk(
        &mut self,
        mut lookup: impl FnMut(&[u8]) -> Option<(Version, Vec<u8>)>,
    ) -> Vec<ScanRow> {
        let mut rows = Vec::new();
        let mut bytes = 0;
        while rows.len() < FEED_SCAN_CHUNK_ROWS && bytes < FEED_SCAN_CHUNK_BYTES {
            let Some(key) = self.window.pop_front() else {
                break;
            };
            if let Some((version, value)) = lookup(&key) {
                bytes += key.len() + value.len();
                rows.push(ScanRow {
                    key: key.clone(),
                    value,
                    version,
                });
            }
            self.after = Some(key);
        }
        rows
    }
}

impl ScanWindow<'_> {
    /// The window's keys (unsorted) and whether keys in range remain after
    /// them.
    pub fn finish(self) -> (Vec<Vec<u8>>, bool) {
        (self.keys.into_vec(), self.more)
    }
}

/// The sync-wait rule: a chunk read under the state lock when the last
/// applied record was `read_at` may be sent once the SYNC mark reaches
/// it. Every row it holds was then durable on every in-sync member, so no
/// failover takes back a value the scan gave out (a row read from a record
/// above the mark could be one a new primary never had).
pub fn scan_chunk_durable(read_at: Lsn, sync: Lsn) -> bool {
    read_at <= sync
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
            exec: 7,
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

    fn range(start: &str, end: &str) -> KeyRange {
        KeyRange {
            start: start.as_bytes().to_vec(),
            end: (!end.is_empty()).then(|| end.as_bytes().to_vec()),
        }
    }

    /// Runs a whole scan over `index` (a live key's value is its name)
    /// with windows of `window_max` keys: the keys in order.
    fn scan_all(range: KeyRange, index: &[&str], window_max: usize) -> (Vec<String>, usize) {
        let mut scan = Scan::new(range);
        let mut got = Vec::new();
        let mut chunks = 0;
        while !scan.done() {
            if scan.needs_window() {
                let mut window = scan.window();
                window.max = window_max;
                // Offered in an order unlike key order.
                for key in index.iter().rev() {
                    window.offer(key.as_bytes());
                }
                let (keys, more) = window.finish();
                scan.set_window(keys, more);
                continue;
            }
            let rows = scan.next_chunk(|k| Some((7, k.to_vec())));
            chunks += 1;
            got.extend(
                rows.into_iter()
                    .map(|r| String::from_utf8(r.value).expect("utf-8")),
            );
        }
        (got, chunks)
    }

    #[test]
    fn a_scan_gives_every_key_in_range_once_in_key_order_across_windows() {
        let index = ["d", "a", "c", "e", "b", "ca", "z"];
        for window_max in [1, 2, 3, 100] {
            let (got, _) = scan_all(range("b", "e"), &index, window_max);
            assert_eq!(got, ["b", "c", "ca", "d"], "windows of {window_max}");
        }
        let (got, _) = scan_all(range("", ""), &index, 2);
        assert_eq!(got, ["a", "b", "c", "ca", "d", "e", "z"]);
        let (got, chunks) = scan_all(range("x", "y"), &index, 2);
        assert!(got.is_empty());
        assert_eq!(chunks, 0, "an empty range has no chunk");
    }

    #[test]
    fn a_window_keeps_the_smallest_keys_after_the_last_and_says_more_remain() {
        let r = range("", "");
        let mut window = ScanWindow {
            range: &r,
            after: Some(b"b"),
            max: 2,
            keys: BinaryHeap::new(),
            more: false,
        };
        for key in ["e", "a", "d", "b", "c"] {
            window.offer(key.as_bytes());
        }
        let (mut keys, more) = window.finish();
        keys.sort();
        assert_eq!(keys, [b"c".to_vec(), b"d".to_vec()]);
        assert!(more, "e remains");
        let mut window = ScanWindow {
            range: &r,
            after: Some(b"c"),
            max: 2,
            keys: BinaryHeap::new(),
            more: false,
        };
        for key in ["e", "d"] {
            window.offer(key.as_bytes());
        }
        assert!(!window.finish().1, "exactly full is not more");
    }

    #[test]
    fn chunks_are_bounded_and_skip_deleted_keys() {
        let mut scan = Scan::new(KeyRange::default());
        let keys: Vec<Vec<u8>> = (0..2 * FEED_SCAN_CHUNK_ROWS + 10)
            .map(|i| format!("k{i:05}").into_bytes())
            .collect();
        scan.set_window(keys, false);
        // Every other key deleted.
        let first = scan.next_chunk(|k| (k[5] % 2 == 0).then(|| (1, vec![])));
        assert_eq!(first.len(), FEED_SCAN_CHUNK_ROWS);
        assert!(first.iter().all(|r| r.key[5] % 2 == 0));
        assert!(first.windows(2).all(|w| w[0].key < w[1].key));
        let rest = scan.next_chunk(|k| (k[5] % 2 == 0).then(|| (1, vec![])));
        assert!(rest.len() < FEED_SCAN_CHUNK_ROWS);
        assert!(first.last().expect("rows").key < rest[0].key);
        assert!(scan.done());

        let mut scan = Scan::new(KeyRange::default());
        scan.set_window((0..8).map(|i| vec![i]).collect(), false);
        let big = vec![0u8; FEED_SCAN_CHUNK_BYTES / 3];
        let chunk = scan.next_chunk(|_| Some((1, big.clone())));
        assert_eq!(chunk.len(), 3, "the row past the byte bound ends the chunk");
    }

    #[test]
    fn a_chunk_waits_for_the_sync_mark_to_cover_what_it_read() {
        assert!(!scan_chunk_durable(10, 9));
        assert!(scan_chunk_durable(10, 10));
        assert!(scan_chunk_durable(10, 11));
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
