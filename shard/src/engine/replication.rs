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
            let lsn = wal.append(kind, &r.payload)?;
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

    /// The whole state, for a backup that needs a snapshot.
    pub fn capture(&self) -> crate::state::Capture {
        self.state.lock().capture()
    }

    /// Backup: replaces everything with the primary's snapshot. The old log
    /// and snapshots are deleted first, then the new snapshot is written
    /// and the log restarts after it. (A crash in between leaves an empty
    /// replica, which catches up again; never a mix of old and new.)
    pub fn install_snapshot(&self, capture: crate::state::Capture) -> Result<(), ShardError> {
        // Not while a local snapshot is being written: it would delete the
        // installed one as older (or keep old segments). The backup retries.
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Err(ShardError::Unavailable(
                "a local snapshot is being written; installing the primary's later".into(),
            ));
        }
        let result = self.install_snapshot_inner(capture);
        self.snapshot_running.store(false, Ordering::Release);
        result
    }

    fn install_snapshot_inner(&self, capture: crate::state::Capture) -> Result<(), ShardError> {
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
        self.restored_at.store(lsn, Ordering::Relaxed);
        drop(guard);
        self.after_write();
        self.metrics.snapshot_installs.inc();
        tracing::info!(lsn, "installed a snapshot from the primary");
        Ok(())
    }
}
