//! What the log keeps: snapshots (on demand and from the snapshot loop),
//! the deletion of log segments a snapshot covers, and the [`LogPin`]s that
//! keep records a stream to a backup still needs (within
//! [`LOG_PINNED_BYTES_MAX`]). Never deletes a record a snapshot does not
//! cover.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use trellis_types::Lsn;

use super::{LOG_PINNED_BYTES_MAX, SNAPSHOT_CHECK_INTERVAL, Shard, ShardError};
use crate::fsio;
use crate::snapshot;

/// `feed_keep_from` before the coordinator first said what registered
/// feeds need (at start): keep the whole log, within the bound.
pub(super) const FEED_PIN_NOT_KNOWN: Lsn = Lsn::MAX;

#[derive(Default)]
pub(super) struct LogPins {
    next_id: u64,
    /// By pin: the first record it needs.
    from: std::collections::BTreeMap<u64, Lsn>,
}

/// Keeps the log on disk from a record on (within
/// [`LOG_PINNED_BYTES_MAX`]) while a stream to a backup may need it: a
/// backup sent a snapshot, or a backlog, must get the records after it even
/// when snapshots come meanwhile. Released when dropped.
pub struct LogPin {
    shard: Arc<Shard>,
    id: u64,
}

impl LogPin {
    /// The stream now needs records from `from` on.
    pub fn advance(&self, from: Lsn) {
        let mut pins = self.shard.log_pins.lock().expect("log pins lock poisoned");
        if let Some(at) = pins.from.get_mut(&self.id) {
            *at = from;
        }
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        self.shard
            .log_pins
            .lock()
            .expect("log pins lock poisoned")
            .from
            .remove(&self.id);
    }
}

impl Shard {
    /// Keeps the log from `from` on (see [`LogPin`]).
    pub fn pin_log(self: &Arc<Self>, from: Lsn) -> LogPin {
        let mut pins = self.log_pins.lock().expect("log pins lock poisoned");
        let id = pins.next_id;
        pins.next_id += 1;
        pins.from.insert(id, from);
        LogPin {
            shard: self.clone(),
            id,
        }
    }

    /// Registered change feeds need the log from `keep_from` on (0: none):
    /// kept like a stream's pin, within [`LOG_PINNED_BYTES_MAX`]; past it
    /// a feed that comes back finds its history gone and is told so. Until
    /// the first call (`FEED_PIN_NOT_KNOWN`) the whole log is kept, within
    /// the same bound: a replica that restarts while its coordinator is
    /// down must not cut what a registered feed still needs.
    pub fn pin_log_for_feeds(&self, keep_from: Lsn) {
        self.feed_keep_from.store(keep_from, Ordering::Relaxed);
    }

    /// The first record registered change feeds still need from disk
    /// (`None`: no feed is registered; the whole log while that is not
    /// known yet).
    pub fn feeds_need_from(&self) -> Option<Lsn> {
        match self.feed_keep_from.load(Ordering::Relaxed) {
            0 => None,
            FEED_PIN_NOT_KNOWN => Some(1),
            keep_from => Some(keep_from),
        }
    }

    /// The first record any stream or registered feed still needs from
    /// disk.
    fn lowest_log_pin(&self) -> Option<Lsn> {
        let feeds = self.feeds_need_from();
        let pins = self.log_pins.lock().expect("log pins lock poisoned");
        pins.from.values().copied().chain(feeds).min()
    }

    /// Writes a snapshot of the current state, then deletes older snapshots
    /// and the log segments it covers. Returns the snapshot's LSN, or
    /// `None` if one is already being written.
    pub async fn snapshot(self: &Arc<Self>) -> Result<Option<Lsn>, ShardError> {
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let result = self.snapshot_inner().await;
        self.snapshot_running.store(false, Ordering::Release);
        result.map(Some)
    }

    async fn snapshot_inner(self: &Arc<Self>) -> Result<Lsn, ShardError> {
        let mark = self.metrics.append_bytes.load(Ordering::Relaxed);
        // The change feed maps every record the log still holds to its
        // version: the points those need stay.
        let dir = self.config.data_dir.clone();
        let log_start = fsio::blocking(move || crate::wal::list_segments(&dir))
            .await
            .map_err(|e| ShardError::Invalid(format!("log listing task failed: {e}")))??
            .first()
            .map_or(Lsn::MAX, |s| s.first_lsn);
        let capture = {
            let mut guard = self.state.lock();
            // The version base's points below what the group holds at SYNC
            // (and below the log's start) are no reader's concern any more
            // (see VersionBase).
            let durable = self.repl.marks().sync.min(guard.core().applied_lsn);
            guard.prune_versions(durable.min(log_start));
            guard.capture()
        };
        let lsn = capture.lsn;
        // Never put in a snapshot what the log could still lose.
        self.wal().wait_durable(lsn).await?;
        let this = self.clone();
        fsio::blocking(move || -> Result<(), ShardError> {
            let dir = &this.config.data_dir;
            snapshot::write(dir, &capture)?;
            snapshot::delete_older(dir, lsn)?;
            let wal = this.wal();
            let retain = this.config.log.retain_bytes;
            match this.lowest_log_pin() {
                None => {
                    wal.delete_through(lsn, retain)?;
                }
                Some(pin) => {
                    // What streams still need stays, up to a bound.
                    wal.delete_through(lsn.min(pin.saturating_sub(1)), retain)?;
                    wal.delete_through(lsn, retain.saturating_add(LOG_PINNED_BYTES_MAX))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ShardError::Invalid(format!("snapshot task failed: {e}")))??;
        self.snapshot_mark_bytes.store(mark, Ordering::Relaxed);
        self.metrics.snapshots.inc();
        tracing::info!(lsn, "snapshot written");
        Ok(lsn)
    }

    /// Runs forever: takes a snapshot whenever
    /// [`LogConfig::snapshot_every_bytes`] were logged since the last one.
    ///
    /// [`LogConfig::snapshot_every_bytes`]: super::LogConfig::snapshot_every_bytes
    pub async fn snapshot_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            self.metrics.sample_read_rates(Instant::now());
            let purged = self.state.lock().purge_expired_holds(Instant::now());
            if purged > 0 {
                tracing::debug!(purged, "dropped expired read holds");
            }
            let logged = self.metrics.append_bytes.load(Ordering::Relaxed);
            if logged.saturating_sub(self.snapshot_mark_bytes.load(Ordering::Relaxed))
                >= self.config.log.snapshot_every_bytes
                && let Err(err) = self.snapshot().await
            {
                tracing::error!(%err, "snapshot failed; the log keeps growing until one succeeds");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_util::{config, put, txn};
    use super::super::{LogConfig, Shard};
    use crate::metrics::Metrics;
    use crate::repl::Level;

    #[tokio::test]
    async fn a_log_pin_keeps_what_a_stream_needs_through_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        // Small segments, no log kept after a snapshot.
        cfg.log = LogConfig {
            segment_bytes: 4096,
            snapshot_every_bytes: 4096,
            retain_bytes: 0,
        };
        let shard = Shard::open(cfg, Arc::new(Metrics::default())).expect("open");
        let mut i = 0u32;
        let mut write = async |n: u32| {
            for _ in 0..n {
                i += 1;
                shard
                    .commit_local(
                        1,
                        txn(i),
                        vec![],
                        vec![put(&format!("k{i}"), &"v".repeat(100))],
                        Level::Sync,
                    )
                    .await
                    .expect("commit");
            }
        };
        write(100).await;
        // Until its coordinator says which feeds are registered, a replica
        // keeps its whole log (within the bound).
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(1).await.expect("reader").is_some(),
            "a snapshot cut the log before the feeds' pin was known"
        );
        shard.pin_log_for_feeds(0);
        let pin = shard.pin_log(50);
        write(100).await;
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(50).await.expect("reader").is_some(),
            "a snapshot deleted records a pinned stream still needs"
        );
        assert!(
            shard.log_reader(10).await.expect("reader").is_none(),
            "records below every pin were kept"
        );
        pin.advance(150);
        shard.snapshot().await.expect("snapshot");
        assert!(shard.log_reader(150).await.expect("reader").is_some());
        assert!(shard.log_reader(50).await.expect("reader").is_none());
        // A registered feed's position pins the log like a stream does.
        shard.pin_log_for_feeds(160);
        drop(pin);
        write(50).await;
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(160).await.expect("reader").is_some(),
            "a snapshot deleted records a registered feed still needs"
        );
        shard.pin_log_for_feeds(0);
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(160).await.expect("reader").is_none(),
            "the log was kept after its pins were dropped"
        );
    }
}
