//! The change feed as the engine serves it (DESIGN.md §11): where a feed
//! starts, and the loop that reads the log on disk up to the group's SYNC
//! mark (what every in-sync member holds, so no failover takes back a
//! transaction the feed gave out) through a [`feed::Assembler`], handing
//! out domain batches. The wire lives in [`crate::server`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use trellis_types::Lsn;

use super::{Shard, ShardError};
use crate::feed::{self, Assembler, FeedTxn, KeyRange};
use crate::fsio;
use crate::record::Record;
use crate::version_base::VersionBase;

/// At least this often a feed sends its resolved position, new
/// transactions or not (an idle group's feed says it is alive and current).
pub const FEED_RESOLVED_INTERVAL: Duration = Duration::from_millis(200);

/// About this many bytes of log are read per step (at least one record).
pub const FEED_READ_BYTES_MAX: usize = 256 * 1024;

/// Batches a feed has made that its stream has not sent yet.
pub const FEED_BATCHES_BUFFERED_MAX: usize = 4;

/// What a feed sends: transactions in position order, then the resolved
/// position after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedBatch {
    pub txns: Vec<FeedTxn>,
    pub resolved: Lsn,
    /// The last record in the log when the batch was made.
    pub head: Lsn,
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
    /// replica was restored from its primary's snapshot past `after`, so it
    /// never held those records (else retention cut them).
    fn history_gone(&self, after: Lsn) -> ShardError {
        let restored = self.restored_at.load(std::sync::atomic::Ordering::Relaxed);
        ShardError::FeedHistoryGone {
            group: self.config.group_id,
            after,
            restored: (after < restored).then_some(restored),
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
    /// last item is the error). Keeps the log it still needs from deletion
    /// meanwhile.
    pub async fn run_feed(
        self: Arc<Self>,
        range: KeyRange,
        start: FeedStart,
        out: mpsc::Sender<Result<FeedBatch, ShardError>>,
    ) {
        if let Err(err) = self.feed_loop(range, start, &out).await {
            let _ = out.send(Err(err)).await;
        }
    }

    async fn feed_loop(
        self: &Arc<Self>,
        range: KeyRange,
        start: FeedStart,
        out: &mpsc::Sender<Result<FeedBatch, ShardError>>,
    ) -> Result<(), ShardError> {
        let pin = self.pin_log(start.after + 1);
        let mut assembler = Assembler::new(range, start.after, start.versions);
        let mut marks = self.repl.subscribe_marks();
        let generation = marks.borrow().generation;
        let mut reader: Option<crate::wal::LogReader> = None;
        // The first batch says where the stream starts.
        let first = FeedBatch {
            txns: Vec::new(),
            resolved: start.after,
            head: self.last_lsn(),
        };
        if out.send(Ok(first)).await.is_err() {
            return Ok(());
        }
        let mut sent_at = Instant::now();
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
            }
            let caught_up = assembler.next_lsn() > mark.sync;
            if !txns.is_empty() || sent_at.elapsed() >= FEED_RESOLVED_INTERVAL {
                let batch = FeedBatch {
                    txns,
                    resolved: assembler.resolved(),
                    head: self.last_lsn(),
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

fn feed_error(err: feed::FeedError) -> ShardError {
    match err {
        feed::FeedError::HeldTooMuch { .. } => ShardError::Busy(err.to_string()),
        feed::FeedError::OutOfOrder { .. } | feed::FeedError::BadRecord(_) => {
            ShardError::Invalid(err.to_string())
        }
    }
}
