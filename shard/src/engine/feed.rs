//! The change feed as the engine serves it (DESIGN.md §11): where a feed
//! starts, and the loop that reads the log on disk up to the group's SYNC
//! mark (what every in-sync member holds, so no failover takes back a
//! transaction the feed gave out) through a [`feed::Assembler`], handing
//! out domain batches. The wire lives in [`crate::server`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use trellis_types::{Lsn, MapEpoch};

use trellis_types::slot_of;

use super::{Shard, ShardError};
use crate::feed::{self, Assembler, FeedTxn, KeyRange, Scan, ScanRow};
use crate::fsio;
use crate::ownership::{Ownership, SlotState};
use crate::record::Record;
use crate::repl::Marks;
use crate::version_base::VersionBase;

/// At least this often a feed sends its resolved position, new
/// transactions or not (an idle group's feed says it is alive and current).
pub const FEED_RESOLVED_INTERVAL: Duration = Duration::from_millis(200);

/// About this many bytes of log are read per step (at least one record).
pub const FEED_READ_BYTES_MAX: usize = 256 * 1024;

/// Least time between two reads of the log by one feed. Under load the
/// SYNC mark moves with about every commit; reading at each move made the
/// feed's cost per commit (a blocking-pool hop, a log read, a batch on the
/// wire). Waiting out the rest of this interval after a read gathers the
/// commits of the interval into one read and one batch; an idle group's
/// first commit is read at once, so only a loaded group's events wait (at
/// most this long).
pub const FEED_READ_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Batches a feed has made that its stream has not sent yet.
pub const FEED_BATCHES_BUFFERED_MAX: usize = 4;

/// What a feed sends: transactions in position order, then the resolved
/// position after them; or, first, an initial scan's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedBatch {
    pub txns: Vec<FeedTxn>,
    pub resolved: Lsn,
    /// The last record in the log when the batch was made.
    pub head: Lsn,
    /// `Some` for a batch of the initial scan (no txns; `resolved` is the
    /// position the tail starts after).
    pub scan: Option<ScanBatch>,
}

/// A chunk of an initial scan: rows in key order, after the previous
/// chunk's; `done` on the last, which also says by which map epochs'
/// slot ownership the whole scan chose its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanBatch {
    pub rows: Vec<ScanRow>,
    pub done: bool,
    /// On the last chunk only.
    pub epochs: Option<EpochSpan>,
}

/// The lowest and highest of the map epochs seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochSpan {
    pub min: MapEpoch,
    pub max: MapEpoch,
}

impl EpochSpan {
    fn at(epoch: MapEpoch) -> EpochSpan {
        EpochSpan {
            min: epoch,
            max: epoch,
        }
    }

    /// `span` widened to take in `epoch` (`None`: just `epoch`).
    fn with(span: Option<EpochSpan>, epoch: MapEpoch) -> EpochSpan {
        span.map_or(EpochSpan::at(epoch), |s| EpochSpan {
            min: s.min.min(epoch),
            max: s.max.max(epoch),
        })
    }
}

/// Where a feed starts: after `after`, with the version base that maps
/// the records from there.
#[derive(Debug)]
pub struct FeedStart {
    pub after: Lsn,
    versions: VersionBase,
}

impl Shard {
    /// FEED_HISTORY_GONE for a feed after `after`: `restored` when this
    /// replica was restored from its primary's snapshot and its log
    /// started past `after + 1` then, so it never held those records (else
    /// retention cut them).
    fn history_gone(&self, after: Lsn) -> ShardError {
        let log_from = self
            .restored_log_from
            .load(std::sync::atomic::Ordering::Relaxed);
        ShardError::FeedHistoryGone {
            group: self.config.group_id,
            after,
            restored: (after + 1 < log_from).then_some(log_from),
        }
    }

    /// Where a feed starts: after `after`, or (`None`) from now: the
    /// group's SYNC mark, or just before the oldest prepare still
    /// undecided (so a transaction decided later is not missed). Only the
    /// serving primary feeds.
    pub fn feed_start(&self, after: Option<Lsn>) -> Result<FeedStart, ShardError> {
        self.check_serving()?;
        let last = self.last_lsn();
        let after = match after {
            Some(after) if after > last => {
                return Err(ShardError::Invalid(format!(
                    "feed position {after} is past the end of group {}'s log (it ends at {last})",
                    self.config.group_id
                )));
            }
            Some(after) => after,
            None => {
                let guard = self.state.lock();
                let oldest = guard.core().prepared.values().map(|p| p.lsn).min();
                let sync = self.repl.marks().sync;
                oldest.map_or(sync, |lsn| sync.min(lsn.saturating_sub(1)))
            }
        };
        let versions = self.state.version_base();
        let known_from = versions.points().first().map_or(0, |p| p.0);
        if after + 1 < known_from {
            return Err(self.history_gone(after));
        }
        Ok(FeedStart { after, versions })
    }

    /// Runs a feed of `range` from `start` into `out` until the receiver
    /// goes away or this replica stops being the serving primary (then the
    /// last item is the error). With `initial_scan`, the range's committed
    /// state comes first (`Shard::feed_scan`). Keeps the log it still
    /// needs from deletion meanwhile.
    pub async fn run_feed(
        self: Arc<Self>,
        range: KeyRange,
        start: FeedStart,
        initial_scan: bool,
        out: mpsc::Sender<Result<FeedBatch, ShardError>>,
    ) {
        if let Err(err) = self.feed_loop(range, start, initial_scan, &out).await {
            let _ = out.send(Err(err)).await;
        }
    }

    async fn feed_loop(
        self: &Arc<Self>,
        range: KeyRange,
        start: FeedStart,
        initial_scan: bool,
        out: &mpsc::Sender<Result<FeedBatch, ShardError>>,
    ) -> Result<(), ShardError> {
        // Pinned before the scan: the tail after `start.after` stays.
        let pin = self.pin_log(start.after + 1);
        let mut marks = self.repl.subscribe_marks();
        let generation = marks.borrow().generation;
        if initial_scan
            && !self
                .feed_scan(&range, start.after, &mut marks, generation, out)
                .await?
        {
            return Ok(());
        }
        let mut assembler = Assembler::new(range, start.after, start.versions);
        let mut reader: Option<crate::wal::LogReader> = None;
        // The first batch says where the stream starts.
        let first = FeedBatch {
            txns: Vec::new(),
            resolved: start.after,
            head: self.last_lsn(),
            scan: None,
        };
        if out.send(Ok(first)).await.is_err() {
            return Ok(());
        }
        let mut sent_at = Instant::now();
        let mut read_at: Option<Instant> = None;
        loop {
            let mark = *marks.borrow_and_update();
            if mark.generation != generation {
                self.check_serving()?;
                return Err(ShardError::Unavailable(format!(
                    "group {}'s primary changed role or epoch; follow the feed at its primary",
                    self.config.group_id
                )));
            }
            self.check_serving()?;
            let mut txns = Vec::new();
            if assembler.next_lsn() <= mark.sync {
                if let Some(wait) = read_at.and_then(|at| read_wait(at, Instant::now())) {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = out.closed() => return Ok(()),
                    }
                    // Take the mark as it is after the wait.
                    continue;
                }
                let started = Instant::now();
                let next = assembler.next_lsn();
                let open = match reader.take() {
                    Some(r) if r.next_lsn() == next => r,
                    _ => self
                        .log_reader(next)
                        .await?
                        .ok_or_else(|| self.history_gone(next - 1))?,
                };
                let upto = mark.sync;
                let (open, read) = fsio::blocking(move || {
                    let mut open = open;
                    let read = open.read(upto, FEED_READ_BYTES_MAX);
                    (open, read)
                })
                .await
                .map_err(|e| ShardError::Invalid(format!("feed log read task failed: {e}")))?;
                reader = Some(open);
                for rec in read? {
                    let record =
                        Record::decode(rec.kind, &rec.payload).map_err(ShardError::Invalid)?;
                    assembler.take(rec.lsn, &record).map_err(feed_error)?;
                }
                // A stream started again resumes after the resolved position.
                pin.advance(assembler.resolved() + 1);
                txns = assembler.drain();
                // Only a read that caught up makes the next one wait: a
                // feed behind reads on at full speed.
                read_at = (assembler.next_lsn() > mark.sync).then_some(started);
            }
            let caught_up = assembler.next_lsn() > mark.sync;
            if !txns.is_empty() || sent_at.elapsed() >= FEED_RESOLVED_INTERVAL {
                let batch = FeedBatch {
                    txns,
                    resolved: assembler.resolved(),
                    head: self.last_lsn(),
                    scan: None,
                };
                if out.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
                sent_at = Instant::now();
            }
            if caught_up {
                let wait = FEED_RESOLVED_INTERVAL.saturating_sub(sent_at.elapsed());
                tokio::select! {
                    changed = marks.changed() => {
                        if changed.is_err() {
                            return Err(ShardError::Unavailable("the replica is stopping".into()));
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = out.closed() => return Ok(()),
                }
            }
        }
    }
}

/// How much longer a feed waits before reading the log again, having last
/// read it at `last` (`None`: read now). See [`FEED_READ_INTERVAL_MIN`].
fn read_wait(last: Instant, now: Instant) -> Option<Duration> {
    let since = now.saturating_duration_since(last);
    (since < FEED_READ_INTERVAL_MIN).then(|| FEED_READ_INTERVAL_MIN - since)
}

impl Shard {
    /// The initial scan of `range` (the rules: [`Scan`]), sent before the
    /// tail that starts after `tail_after`: a window of keys listed by a
    /// walk of the index (outside the state lock), then chunk by chunk,
    /// each read under the state lock and sent once the SYNC mark covers
    /// the last record applied when it was read
    /// ([`feed::scan_chunk_durable`]). Only slots this group serves (or
    /// holds frozen for a move) are read. Returns `false` if the receiver
    /// went away.
    async fn feed_scan(
        &self,
        range: &KeyRange,
        tail_after: Lsn,
        marks: &mut tokio::sync::watch::Receiver<Marks>,
        generation: u64,
        out: &mpsc::Sender<Result<FeedBatch, ShardError>>,
    ) -> Result<bool, ShardError> {
        let mut scan = Scan::new(range.clone());
        let mut sent_at = Instant::now();
        // The epochs of the ownership every key choice was made by.
        let mut epochs: Option<EpochSpan> = None;
        let batch = |rows: Vec<ScanRow>, done: Option<EpochSpan>| FeedBatch {
            txns: Vec::new(),
            resolved: tail_after,
            head: self.last_lsn(),
            scan: Some(ScanBatch {
                rows,
                done: done.is_some(),
                epochs: done,
            }),
        };
        loop {
            if scan.needs_window() {
                let (keys, more) = {
                    let ownership = self.state.serving();
                    epochs = Some(EpochSpan::with(epochs, ownership.map_epoch()));
                    let mut window = scan.window();
                    for entry in self.state.index.iter() {
                        if entry.value().value().is_some() && scanned(&ownership, entry.key()) {
                            window.offer(entry.key());
                        }
                    }
                    window.finish()
                };
                scan.set_window(keys, more);
            }
            if scan.done() {
                break;
            }
            let (rows, read_at) = {
                let guard = self.state.lock();
                let ownership = self.state.serving();
                epochs = Some(EpochSpan::with(epochs, ownership.map_epoch()));
                let rows = scan.next_chunk(|key| {
                    let entry = self.state.index.get(key)?.value().clone();
                    let value = entry.value()?;
                    scanned(&ownership, key).then(|| (entry.version(), value.to_vec()))
                });
                (rows, guard.core().applied_lsn)
            };
            // The sync-wait: what the chunk read must be durable on every
            // in-sync member first. Keep-alives meanwhile.
            loop {
                let mark = *marks.borrow_and_update();
                if mark.generation != generation {
                    self.check_serving()?;
                    return Err(ShardError::Unavailable(format!(
                        "group {}'s primary changed role or epoch during a feed's scan; \
                         scan again at its primary",
                        self.config.group_id
                    )));
                }
                self.check_serving()?;
                if feed::scan_chunk_durable(read_at, mark.sync) {
                    break;
                }
                if sent_at.elapsed() >= FEED_RESOLVED_INTERVAL {
                    if out.send(Ok(batch(Vec::new(), None))).await.is_err() {
                        return Ok(false);
                    }
                    sent_at = Instant::now();
                }
                let wait = FEED_RESOLVED_INTERVAL.saturating_sub(sent_at.elapsed());
                tokio::select! {
                    changed = marks.changed() => {
                        if changed.is_err() {
                            return Err(ShardError::Unavailable("the replica is stopping".into()));
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = out.closed() => return Ok(false),
                }
            }
            if !rows.is_empty() {
                if out.send(Ok(batch(rows, None))).await.is_err() {
                    return Ok(false);
                }
                sent_at = Instant::now();
                if trellis_types::failpoint::armed(crate::failpoint::FEED_SCAN_LAG_NAME) {
                    tokio::time::sleep(crate::failpoint::FEED_SCAN_LAG).await;
                }
            }
        }
        // A scan of nothing chose by the ownership it has now.
        let epochs = epochs.unwrap_or_else(|| EpochSpan::at(self.state.serving().map_epoch()));
        Ok(out.send(Ok(batch(Vec::new(), Some(epochs)))).await.is_ok())
    }
}

/// Whether the scan reads `key`: its slot is this group's (owned, or
/// frozen while it moves away; an importing slot's entries are the
/// source's until the flip).
fn scanned(ownership: &Ownership, key: &[u8]) -> bool {
    matches!(
        ownership.state(slot_of(key)),
        SlotState::Owned | SlotState::Frozen { .. }
    )
}

fn feed_error(err: feed::FeedError) -> ShardError {
    match err {
        feed::FeedError::HeldTooMuch { .. } => ShardError::Busy(err.to_string()),
        feed::FeedError::OutOfOrder { .. } | feed::FeedError::BadRecord(_) => {
            ShardError::Invalid(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_at_least_the_interval_apart() {
        let start = Instant::now();
        assert_eq!(read_wait(start, start), Some(FEED_READ_INTERVAL_MIN));
        let half = FEED_READ_INTERVAL_MIN / 2;
        assert_eq!(
            read_wait(start, start + half),
            Some(FEED_READ_INTERVAL_MIN - half)
        );
        assert_eq!(read_wait(start, start + FEED_READ_INTERVAL_MIN), None);
        assert_eq!(read_wait(start + half, start), Some(FEED_READ_INTERVAL_MIN));
    }
}
