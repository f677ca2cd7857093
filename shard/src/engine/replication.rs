//! Replication as the engine sees it: becoming primary, and what a backup
//! takes from its primary (records in order, whole snapshots), plus the
//! state and log a primary reads to feed a backup. The streams themselves
//! live in [`crate::replica`]; this module takes domain records, never wire
//! types.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use trellis_types::Lsn;

use super::{Shard, ShardError, open_err};
use crate::fsio;
use crate::log_prefix::{self, PREFIX_BYTES_MAX, PrefixStage, StagedPrefix};
use crate::record::{NewEpochRec, Record};
use crate::repl::{FeedRecord, Role};
use crate::snapshot;
use crate::wal::{self, Wal};

impl Shard {
    /// A reader of this replica's log on disk from `from` on; `None` when
    /// the log no longer reaches back that far (a snapshot covered it and
    /// its segments were deleted).
    pub async fn log_reader(&self, from: Lsn) -> Result<Option<wal::LogReader>, ShardError> {
        let dir = self.config.data_dir.clone();
        fsio::blocking(move || wal::LogReader::open(&dir, from))
            .await
            .map_err(|e| ShardError::Invalid(format!("log reader task failed: {e}")))?
            .map_err(ShardError::from)
    }

    /// Where each primary epoch starts in this replica's log.
    pub fn epochs(&self) -> Vec<(u64, Lsn)> {
        self.state.lock().core().epochs.clone()
    }

    /// Becomes the group's primary at `epoch`: logs the epoch's start (so
    /// backups can tell where their logs part from this one) and starts
    /// serving once the backups grant a lease.
    pub fn become_primary(
        &self,
        epoch: u64,
        config: crate::role::GroupConfig,
    ) -> Result<(), ShardError> {
        let mut guard = self.state.lock();
        // The role first, under the state lock: from here no record of the
        // old primary is applied (see apply_replicated).
        self.repl.set_role(
            Role::Primary,
            epoch,
            Some(config),
            self.durable_lsn(),
            Instant::now(),
        );
        if guard.core().epochs.last().is_none_or(|(e, _)| *e < epoch) {
            self.log(&mut guard, &Record::NewEpoch(NewEpochRec { epoch }))?;
        }
        drop(guard);
        self.metrics.promotions.inc();
        Ok(())
    }

    /// Backup: appends and applies records streamed by the primary, in
    /// order (each as the primary's feed held it; the stream converts the
    /// wire's records at its edge). Returns the last LSN appended.
    pub fn apply_replicated(&self, records: &[FeedRecord]) -> Result<Lsn, ShardError> {
        let wal = self.wal();
        let mut guard = self.state.lock();
        // Under the state lock: a replica that became primary (which it
        // does under this lock) takes no more records from the old one.
        let (role, _) = self.repl.role();
        if !matches!(role, Role::Backup | Role::Learner) {
            return Err(ShardError::Invalid(format!(
                "a {} takes no replicated records",
                role.name()
            )));
        }
        let mut last = wal.last_lsn();
        for r in records {
            if r.lsn != last + 1 {
                return Err(ShardError::Invalid(format!(
                    "the primary sent record {} but this log ends at {last}",
                    r.lsn
                )));
            }
            let kind = r.kind;
            let record = Record::decode(kind, &r.payload).map_err(ShardError::Invalid)?;
            let lsn = if crate::record::is_lazy(kind) {
                wal.append_lazy(kind, &r.payload)?
            } else {
                wal.append(kind, &r.payload)?
            };
            debug_assert_eq!(lsn, r.lsn, "appends happen only under the state lock");
            if let Err(detail) = guard.apply(lsn, &record, Instant::now()) {
                panic!("state machine refused replicated record {lsn}: {detail}");
            }
            self.repl.feed.push(lsn, kind, r.payload.clone());
            last = lsn;
        }
        drop(guard);
        self.after_write();
        if trellis_metrics::recording() {
            self.metrics
                .prepared
                .set(self.state.lock().core().prepared.len() as u64);
        }
        Ok(last)
    }

    /// Backup: waits until `lsn` is durable here.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), ShardError> {
        Ok(self.wal().wait_durable(lsn).await?)
    }

    /// Backup: waits until `lsn` is durable here without urging the log
    /// writer, so lazily appended records (FINALIZE, FORGET) share the
    /// `fdatasync` of the next eager one, as on the primary.
    pub async fn wait_durable_unurged(&self, lsn: Lsn) -> Result<(), ShardError> {
        Ok(self.wal().wait_durable_unurged(lsn).await?)
    }

    /// The whole state, for a backup that needs a snapshot.
    pub fn capture(&self) -> crate::state::Capture {
        self.state.lock().capture()
    }

    /// Primary: the first record of the log prefix to send with a snapshot
    /// at `snapshot_lsn` (what registered feeds pin below it, within
    /// [`PREFIX_BYTES_MAX`]; see [`log_prefix::prefix_start`]), or `None`.
    /// The caller pins the log from the feeds' pin first.
    pub async fn snapshot_prefix_start(
        &self,
        snapshot_lsn: Lsn,
    ) -> Result<Option<Lsn>, ShardError> {
        let Some(feeds_from) = self.feeds_need_from() else {
            return Ok(None);
        };
        let dir = self.config.data_dir.clone();
        let segments = fsio::blocking(move || log_prefix::segment_sizes(&dir))
            .await
            .map_err(|e| ShardError::Invalid(format!("log listing task failed: {e}")))??;
        Ok(log_prefix::prefix_start(
            Some(feeds_from),
            &segments,
            snapshot_lsn,
            PREFIX_BYTES_MAX,
        ))
    }

    /// Backup: a stage for the log prefix a snapshot from the primary
    /// brings (deleting any staged before).
    pub fn stage_prefix(&self) -> Result<PrefixStage, ShardError> {
        Ok(PrefixStage::new(
            &self.config.data_dir,
            self.config.log.segment_bytes,
        )?)
    }

    /// Backup: replaces everything with the primary's snapshot, and its
    /// log with the snapshot's log `prefix` (if one came). The old log
    /// and snapshots are deleted first, then the new snapshot is written,
    /// then the prefix's segments take the log's names (newest first), and
    /// the log continues after the snapshot. (A crash before the snapshot
    /// is written leaves an empty replica, which catches up again; one
    /// during the renames a shorter prefix; never a mix of old and new,
    /// never a log with a gap.)
    pub fn install_snapshot(
        &self,
        capture: crate::state::Capture,
        prefix: Option<StagedPrefix>,
    ) -> Result<(), ShardError> {
        // Not while a local snapshot is being written: it would delete the
        // installed one as older (or keep old segments). The backup retries.
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Err(ShardError::Unavailable(
                "a local snapshot is being written; installing the primary's later".into(),
            ));
        }
        let result = self.install_snapshot_inner(capture, prefix);
        self.snapshot_running.store(false, Ordering::Release);
        result
    }

    fn install_snapshot_inner(
        &self,
        capture: crate::state::Capture,
        prefix: Option<StagedPrefix>,
    ) -> Result<(), ShardError> {
        let dir = self.config.data_dir.clone();
        let lsn = capture.lsn;
        let mut guard = self.state.lock();
        let mut wal_slot = self.wal.write().expect("wal lock poisoned");
        wal_slot.shutdown();
        for segment in wal::list_segments(&dir)? {
            fsio::remove_file(&segment.path).map_err(|e| open_err(&segment.path, e))?;
        }
        for (_, path) in snapshot::list(&dir)? {
            fsio::remove_file(&path).map_err(|e| open_err(&path, e))?;
        }
        wal::sync_dir(&dir)?;
        snapshot::write(&dir, &capture)?;
        let log_from = match prefix {
            Some(prefix) => {
                let first = prefix.first();
                prefix.commit()?;
                first
            }
            None => lsn + 1,
        };
        // With a prefix, the log appends to its newest segment (which ends
        // at the snapshot); without, it starts a segment after it.
        *wal_slot = Wal::open_with(
            &dir,
            lsn,
            self.metrics.clone(),
            self.config.log.segment_bytes,
        )?;
        drop(wal_slot);
        guard.reset();
        // What was proved fresh was about the data being replaced.
        self.repl.reset_freshness();
        guard
            .restore(capture, Instant::now())
            .map_err(|e| ShardError::Invalid(format!("snapshot from the primary: {e}")))?;
        self.repl.feed.reset(lsn);
        self.restored_log_from.store(log_from, Ordering::Relaxed);
        drop(guard);
        self.after_write();
        self.metrics.snapshot_installs.inc();
        tracing::info!(lsn, log_from, "installed a snapshot from the primary");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::super::test_util::{config, put, txn, value_of};
    use super::super::{LogConfig, Shard};
    use crate::feed::KeyRange;
    use crate::metrics::Metrics;
    use crate::repl::{FeedRecord, Level};

    fn small_log(dir: &std::path::Path) -> super::super::ShardConfig {
        let mut cfg = config(dir);
        cfg.log = LogConfig {
            segment_bytes: 4096,
            snapshot_every_bytes: 4096,
            retain_bytes: 0,
        };
        cfg
    }

    async fn commit(shard: &Shard, n: u32) {
        shard
            .commit_local(
                1,
                txn(n),
                vec![],
                vec![put(&format!("k{n}"), &"v".repeat(100))],
                Level::Sync,
            )
            .await
            .expect("commit");
    }

    /// The story: a registered feed pins the primary's log from its first
    /// record. A backup whose log diverged (it wrote what the primary never
    /// had) gets the primary's snapshot, and with it the log prefix from
    /// the feed's pin; it then serves as primary, and a feed from the pin
    /// reads every transaction, before the snapshot and after, also after
    /// the backup restarted. Without the prefix the feed finds its history
    /// gone.
    #[tokio::test]
    async fn a_backup_restored_by_snapshot_serves_a_feed_from_its_pin() {
        let primary_dir = tempfile::tempdir().expect("tempdir");
        let backup_dir = tempfile::tempdir().expect("tempdir");
        let primary =
            Shard::open(small_log(primary_dir.path()), Arc::new(Metrics::default())).expect("open");
        primary.pin_log_for_feeds(1);
        for n in 1..=60 {
            commit(&primary, n).await;
        }
        // Snapshots cut nothing the feed pins.
        primary.snapshot().await.expect("snapshot");
        let backup =
            Shard::open(small_log(backup_dir.path()), Arc::new(Metrics::default())).expect("open");
        for n in 1000..1010 {
            commit(&backup, n).await;
        }

        // What the primary's stream does for a backup that needs a
        // snapshot: the capture, then the prefix read back from its log.
        let capture = primary.capture();
        let snapshot_lsn = capture.lsn;
        let start = primary
            .snapshot_prefix_start(snapshot_lsn)
            .await
            .expect("start")
            .expect("a feed is registered");
        assert_eq!(start, 1);
        let mut reader = primary
            .log_reader(start)
            .await
            .expect("reader")
            .expect("pinned");
        let prefix: Vec<FeedRecord> = reader
            .read(snapshot_lsn, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| FeedRecord {
                lsn: r.lsn,
                kind: r.kind,
                payload: r.payload.into(),
            })
            .collect();
        let mut stage = backup.stage_prefix().expect("stage");
        for chunk in prefix.chunks(7) {
            stage.append(chunk).expect("append");
        }
        let staged = stage.finish(snapshot_lsn).expect("whole");
        assert!(staged.is_some());
        backup.install_snapshot(capture, staged).expect("install");
        // The diverged write is gone; the primary's are there.
        assert_eq!(value_of(&backup, "k1000").await, None);
        assert!(value_of(&backup, "k60").await.is_some());
        // Serving (a standalone replica serves), it commits on.
        commit(&backup, 61).await;
        assert_feed_reads_all(&backup, 61).await;

        // After a restart, recovery replays only what follows the
        // snapshot, and the feed still reads the prefix.
        backup.shutdown();
        drop(backup);
        let backup =
            Shard::open(small_log(backup_dir.path()), Arc::new(Metrics::default())).expect("open");
        assert_eq!(backup.recovery().snapshot_lsn, snapshot_lsn);
        assert_eq!(backup.recovery().replayed, 1);
        commit(&backup, 62).await;
        assert_feed_reads_all(&backup, 62).await;
    }

    /// The story: a crash in the middle of an install's renames (newest
    /// segment first) leaves the newest segments of the prefix in place
    /// and the rest still staged. The replica opens: the staged files are
    /// deleted, and the log is whole (no gap) from the oldest segment in
    /// place through what it appends after the snapshot.
    #[tokio::test]
    async fn a_crash_during_the_renames_leaves_a_whole_shorter_log() {
        let primary_dir = tempfile::tempdir().expect("tempdir");
        let backup_dir = tempfile::tempdir().expect("tempdir");
        let primary =
            Shard::open(small_log(primary_dir.path()), Arc::new(Metrics::default())).expect("open");
        primary.pin_log_for_feeds(1);
        for n in 1..=60 {
            commit(&primary, n).await;
        }
        let capture = primary.capture();
        let snapshot_lsn = capture.lsn;
        let mut reader = primary.log_reader(1).await.expect("reader").expect("kept");
        let prefix: Vec<FeedRecord> = reader
            .read(snapshot_lsn, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| FeedRecord {
                lsn: r.lsn,
                kind: r.kind,
                payload: r.payload.into(),
            })
            .collect();
        let backup =
            Shard::open(small_log(backup_dir.path()), Arc::new(Metrics::default())).expect("open");
        let mut stage = backup.stage_prefix().expect("stage");
        stage.append(&prefix).expect("append");
        let staged = stage.finish(snapshot_lsn).expect("whole").expect("some");
        backup
            .install_snapshot(capture, Some(staged))
            .expect("install");
        backup.shutdown();
        drop(backup);
        // What the crash left: the older segments not yet renamed (still
        // staged), the newer ones in place.
        let dir = backup_dir.path();
        let segments = crate::wal::list_segments(dir).expect("list");
        assert!(segments.len() >= 3, "{segments:?}");
        let kept_from = segments[segments.len() / 2].first_lsn;
        for s in &segments[..segments.len() / 2] {
            let staged = dir.join(format!("prefix-{:020}.tmp", s.first_lsn));
            std::fs::rename(&s.path, staged).expect("unrename");
        }
        let backup = Shard::open(small_log(dir), Arc::new(Metrics::default())).expect("open");
        assert_eq!(backup.recovery().snapshot_lsn, snapshot_lsn);
        assert!(
            std::fs::read_dir(dir).expect("dir").all(|e| !e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "staged files were left"
        );
        commit(&backup, 61).await;
        let mut reader = backup
            .log_reader(kept_from)
            .await
            .expect("reader")
            .expect("the log starts there");
        let read = reader.read(snapshot_lsn + 1, usize::MAX).expect("whole");
        assert_eq!(read.first().map(|r| r.lsn), Some(kept_from));
        assert_eq!(read.last().map(|r| r.lsn), Some(snapshot_lsn + 1));
        assert!(backup.log_reader(1).await.expect("reader").is_none());
    }

    /// A feed of everything from the log's beginning on `shard` yields
    /// transactions 1..=`last` (txn(n) wrote kn), in order.
    async fn assert_feed_reads_all(shard: &Arc<Shard>, last: u32) {
        let start = shard.feed_start(Some(0)).expect("the history is here");
        let (tx, mut rx) = mpsc::channel(4);
        let range = KeyRange {
            start: Vec::new(),
            end: None,
        };
        let feed = tokio::spawn(shard.clone().run_feed(range, start, false, tx));
        let mut seen = Vec::new();
        while seen.len() < last as usize {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("the feed went silent")
                .expect("the feed ended")
                .expect("the feed failed");
            for t in batch.txns {
                seen.push(t.txn);
            }
        }
        feed.abort();
        // The feed's task holds the replica: gone once it has ended.
        let _ = feed.await;
        let want: Vec<_> = (1..=last).map(txn).collect();
        assert_eq!(seen, want);
    }
}
