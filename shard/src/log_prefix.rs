//! The log prefix a snapshot carries to a backup (ARCHITECTURE.md,
//! "Change feed"): when a primary sends a backup its snapshot at `L`, it
//! first sends the records of its log that registered feeds still pin,
//! from their pin up to `L`, oldest first. The backup stages them in files
//! of its own and, inside the snapshot install, makes them its log below
//! the snapshot: never applied (recovery replays only what follows a
//! snapshot), but read like any other record by the change feed, by
//! retention and by a backup of its own. A backup restored by snapshot and
//! then promoted therefore still serves a feed from its pin.
//!
//! Here are the rules (pure: [`prefix_start`] on the primary,
//! [`PrefixIntake`] on the backup) and the backup's staging files
//! ([`PrefixStage`], [`StagedPrefix`]). Nothing here applies a record,
//! decides a role, or touches the live log: the engine commits a staged
//! prefix only inside a snapshot install, with the log shut.
//!
//! # Crash safety
//! Staged segments are written as `prefix-<first LSN>.tmp` (never a log
//! segment's name) and fsynced. The install deletes the old log and
//! snapshots, writes the snapshot (the commit point), then renames the
//! staged segments into place **newest first**, and fsyncs the directory.
//! At every point the log segments on disk are one contiguous run that
//! ends at or after the snapshot, so recovery never sees a gap: a crash
//! mid-rename leaves a shorter prefix (the feed may then find part of its
//! history gone, and is told so), never a broken log. Recovery deletes
//! staged files left over ([`discard_staged`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use trellis_types::Lsn;

use crate::engine::LOG_PINNED_BYTES_MAX;
use crate::fsio::{self, File};
use crate::repl::FeedRecord;
use crate::wal::{self, WalError};

/// Most bytes (whole frames, as on disk) of log a snapshot carries: the
/// bound registered feeds' pin already has on the primary.
pub const PREFIX_BYTES_MAX: u64 = LOG_PINNED_BYTES_MAX;
const _: () = assert!(wal::SEGMENT_BYTES_MAX < PREFIX_BYTES_MAX);

const STAGE_PREFIX: &str = "prefix-";
const STAGE_SUFFIX: &str = ".tmp";

/// Primary: the first record of the log prefix to send with a snapshot at
/// `snapshot_lsn`, or `None` when none is sent. `feeds_from` is the first
/// record registered feeds still need (`None`: no feed is registered);
/// `segments` are the primary's log segments on disk, oldest first, as
/// (first LSN, bytes). The prefix starts at the feeds' pin, or at the
/// log's start if the log no longer reaches back that far, and takes only
/// whole segments back from the one holding `snapshot_lsn` while their
/// bytes stay within `bytes_max` (counting the records after the snapshot
/// in its segment too, so the frames sent are within the bound).
pub fn prefix_start(
    feeds_from: Option<Lsn>,
    segments: &[(Lsn, u64)],
    snapshot_lsn: Lsn,
    bytes_max: u64,
) -> Option<Lsn> {
    let from = feeds_from?.max(1);
    if from > snapshot_lsn {
        // The feeds need nothing below the snapshot: the records after it
        // follow as for any backup.
        return None;
    }
    // The segment holding the snapshot's record.
    let holding = segments
        .iter()
        .rposition(|&(first, _)| first <= snapshot_lsn)?;
    let mut bytes = 0u64;
    let mut start = None;
    for &(first, size) in segments[..=holding].iter().rev() {
        bytes = bytes.saturating_add(size);
        if bytes > bytes_max {
            break;
        }
        start = Some(first);
        if first <= from {
            break;
        }
    }
    start.map(|first| first.max(from))
}

/// Why a backup refused a log prefix (the stream breaks; the primary
/// sends the snapshot again when the backup reconnects).
#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    /// A record that does not follow the one before it.
    #[error("the snapshot's log prefix skips from record {expected} to {got}")]
    Gap { expected: Lsn, got: Lsn },
    /// More than [`PREFIX_BYTES_MAX`].
    #[error("the snapshot's log prefix is over {max} bytes")]
    TooLarge { max: u64 },
    /// The prefix does not end where the snapshot is.
    #[error("the snapshot's log prefix ends at record {last}, but the snapshot is at {snapshot}")]
    Mismatch { last: Lsn, snapshot: Lsn },
    /// Staging it on disk failed.
    #[error("staging the snapshot's log prefix: {0}")]
    Wal(#[from] WalError),
}

/// Backup: what it accepts as a log prefix (pure). Records come oldest
/// first without a gap, within a byte bound, and the last one must be the
/// snapshot's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixIntake {
    /// The first record (0: none yet).
    first: Lsn,
    /// The last record taken.
    last: Lsn,
    bytes: u64,
    bytes_max: u64,
}

impl PrefixIntake {
    pub fn new(bytes_max: u64) -> PrefixIntake {
        PrefixIntake {
            first: 0,
            last: 0,
            bytes: 0,
            bytes_max,
        }
    }

    /// Takes record `lsn` of `frame_bytes` (as framed on disk).
    pub fn take(&mut self, lsn: Lsn, frame_bytes: u64) -> Result<(), PrefixError> {
        if self.first != 0 && lsn != self.last + 1 {
            return Err(PrefixError::Gap {
                expected: self.last + 1,
                got: lsn,
            });
        }
        if lsn == 0 {
            return Err(PrefixError::Gap {
                expected: 1,
                got: 0,
            });
        }
        let bytes = self.bytes.saturating_add(frame_bytes);
        if bytes > self.bytes_max {
            return Err(PrefixError::TooLarge {
                max: self.bytes_max,
            });
        }
        if self.first == 0 {
            self.first = lsn;
        }
        self.last = lsn;
        self.bytes = bytes;
        Ok(())
    }

    /// The prefix is whole for a snapshot at `snapshot_lsn`: returns its
    /// first record (`None`: nothing was taken).
    pub fn finish(&self, snapshot_lsn: Lsn) -> Result<Option<Lsn>, PrefixError> {
        if self.first == 0 {
            return Ok(None);
        }
        if self.last != snapshot_lsn {
            return Err(PrefixError::Mismatch {
                last: self.last,
                snapshot: snapshot_lsn,
            });
        }
        Ok(Some(self.first))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn stage_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{STAGE_PREFIX}{first:020}{STAGE_SUFFIX}"))
}

/// Deletes staged prefix files in `dir` (left by a crash or a broken
/// stream before their install).
pub fn discard_staged(dir: &Path) -> Result<(), WalError> {
    for entry in fsio::read_dir(dir).map_err(io_err(dir))? {
        if entry
            .file_name
            .to_str()
            .is_some_and(|n| n.starts_with(STAGE_PREFIX) && n.ends_with(STAGE_SUFFIX))
        {
            fsio::remove_file(&entry.path).map_err(io_err(&entry.path))?;
        }
    }
    Ok(())
}

/// The primary's log segments on disk, oldest first, as (first LSN,
/// bytes), for [`prefix_start`]. A segment deleted since the listing
/// counts as empty.
pub fn segment_sizes(dir: &Path) -> Result<Vec<(Lsn, u64)>, WalError> {
    let mut out = Vec::new();
    for segment in wal::list_segments(dir)? {
        let size = match File::open(&segment.path) {
            Ok(file) => file.len_bytes().map_err(io_err(&segment.path))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(io_err(&segment.path)(err)),
        };
        out.push((segment.first_lsn, size));
    }
    Ok(out)
}

/// Backup: a log prefix being received, written to staging segments as
/// it comes (rolled like the log's, at `segment_bytes_max`). Dropped
/// unfinished, it deletes its files.
pub struct PrefixStage {
    dir: PathBuf,
    segment_bytes_max: u64,
    intake: PrefixIntake,
    /// Staged segments, oldest first: (first LSN, path); the last is open.
    files: Vec<(Lsn, PathBuf)>,
    /// The open segment and its size.
    current: Option<(File, u64)>,
}

impl PrefixStage {
    /// A new stage in `dir`; staged files an earlier one left are deleted.
    pub fn new(dir: &Path, segment_bytes_max: u64) -> Result<PrefixStage, WalError> {
        discard_staged(dir)?;
        Ok(PrefixStage {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            intake: PrefixIntake::new(PREFIX_BYTES_MAX),
            files: Vec::new(),
            current: None,
        })
    }

    /// Writes `records` (the next ones of the prefix) to the staging
    /// segments; not yet durable.
    pub fn append(&mut self, records: &[FeedRecord]) -> Result<(), PrefixError> {
        let mut frame = Vec::new();
        for r in records {
            frame.clear();
            wal::encode_frame(&mut frame, r.kind, r.lsn, &r.payload);
            self.intake.take(r.lsn, frame.len() as u64)?;
            if self
                .current
                .as_ref()
                .is_some_and(|(_, size)| *size >= self.segment_bytes_max)
            {
                self.close_current()?;
            }
            if self.current.is_none() {
                let path = stage_path(&self.dir, r.lsn);
                let file = File::create(&path).map_err(io_err(&path))?;
                self.files.push((r.lsn, path));
                self.current = Some((file, 0));
            }
            let (file, size) = self.current.as_mut().expect("opened above");
            let path = &self.files.last().expect("pushed with the file").1;
            file.write_all(&frame).map_err(io_err(path))?;
            *size += frame.len() as u64;
        }
        Ok(())
    }

    /// Makes the open segment durable and closes it.
    fn close_current(&mut self) -> Result<(), WalError> {
        if let Some((file, _)) = self.current.take() {
            let path = &self.files.last().expect("an open file was pushed").1;
            file.sync_all().map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Every record came: checks the prefix ends at the snapshot's
    /// `snapshot_lsn` and makes the staged segments durable. `None` when
    /// no record came.
    pub fn finish(mut self, snapshot_lsn: Lsn) -> Result<Option<StagedPrefix>, PrefixError> {
        let Some(first) = self.intake.finish(snapshot_lsn)? else {
            return Ok(None);
        };
        self.close_current()?;
        wal::sync_dir(&self.dir)?;
        Ok(Some(StagedPrefix {
            dir: self.dir.clone(),
            first,
            files: std::mem::take(&mut self.files),
        }))
    }
}

impl Drop for PrefixStage {
    fn drop(&mut self) {
        self.current = None;
        for (_, path) in self.files.drain(..) {
            let _ = fsio::remove_file(&path);
        }
    }
}

/// Backup: a whole, durable log prefix, ready to become the log below the
/// snapshot it came with. Dropped uncommitted, it deletes its files.
pub struct StagedPrefix {
    dir: PathBuf,
    first: Lsn,
    files: Vec<(Lsn, PathBuf)>,
}

impl std::fmt::Debug for StagedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedPrefix")
            .field("first", &self.first)
            .field("segments", &self.files.len())
            .finish()
    }
}

impl StagedPrefix {
    /// Its first record.
    pub fn first(&self) -> Lsn {
        self.first
    }

    /// Renames the staged segments into the log's names, newest first
    /// (see the module's "Crash safety"), and fsyncs the directory. Only
    /// once the snapshot the prefix ends at is written, and the log holds
    /// no segment.
    pub fn commit(mut self) -> Result<(), WalError> {
        while let Some((first, path)) = self.files.pop() {
            let to = wal::segment_path(&self.dir, first);
            fsio::rename(&path, &to).map_err(io_err(&to))?;
        }
        wal::sync_dir(&self.dir)
    }
}

impl Drop for StagedPrefix {
    fn drop(&mut self) {
        for (_, path) in self.files.drain(..) {
            let _ = fsio::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_starts_at_the_feeds_pin_within_the_log_and_the_bound() {
        let segments = [(1, 100), (40, 100), (80, 100), (120, 50)];
        // No registered feed, or a pin past the snapshot: nothing.
        assert_eq!(prefix_start(None, &segments, 100, 1000), None);
        assert_eq!(prefix_start(Some(101), &segments, 100, 1000), None);
        // The pin inside the log: from the pin.
        assert_eq!(prefix_start(Some(50), &segments, 100, 1000), Some(50));
        assert_eq!(prefix_start(Some(100), &segments, 100, 1000), Some(100));
        // The pin before the log's start: from the start.
        assert_eq!(prefix_start(Some(1), &segments[1..], 100, 1000), Some(40));
        // FEED_PIN_NOT_KNOWN's "whole log" is a pin at 1 (0 too).
        assert_eq!(prefix_start(Some(0), &segments, 100, 1000), Some(1));
        // The bound counts whole segments back from the snapshot's.
        assert_eq!(prefix_start(Some(1), &segments, 100, 200), Some(40));
        assert_eq!(prefix_start(Some(1), &segments, 100, 199), Some(80));
        assert_eq!(prefix_start(Some(90), &segments, 100, 100), Some(90));
        // The snapshot's segment alone over the bound: nothing.
        assert_eq!(prefix_start(Some(1), &segments, 100, 99), None);
        // The snapshot in the newest segment counts that one too.
        assert_eq!(prefix_start(Some(1), &segments, 130, 150), Some(80));
        // No log on disk reaching the snapshot: nothing.
        assert_eq!(prefix_start(Some(1), &[], 100, 1000), None);
        assert_eq!(prefix_start(Some(1), &[(200, 10)], 100, 1000), None);
    }

    #[test]
    fn a_backup_takes_a_prefix_only_whole_and_ending_at_the_snapshot() {
        let mut intake = PrefixIntake::new(100);
        assert_eq!(intake.finish(7).expect("empty"), None);
        intake.take(5, 10).expect("first");
        intake.take(6, 10).expect("next");
        assert!(matches!(
            intake.clone().take(8, 10),
            Err(PrefixError::Gap {
                expected: 7,
                got: 8
            })
        ));
        assert!(matches!(
            intake.clone().take(6, 10),
            Err(PrefixError::Gap { .. })
        ));
        assert!(matches!(
            intake.finish(7),
            Err(PrefixError::Mismatch {
                last: 6,
                snapshot: 7
            })
        ));
        intake.take(7, 10).expect("next");
        assert_eq!(intake.finish(7).expect("whole"), Some(5));
        assert!(matches!(
            intake.clone().take(8, 71),
            Err(PrefixError::TooLarge { max: 100 })
        ));
        intake.take(8, 70).expect("within the bound");
        assert!(matches!(
            PrefixIntake::new(100).take(0, 1),
            Err(PrefixError::Gap { .. })
        ));
    }

    fn record(lsn: Lsn) -> FeedRecord {
        FeedRecord {
            lsn,
            kind: 3,
            payload: format!("record-{lsn}-").repeat(20).into_bytes().into(),
        }
    }

    #[test]
    fn a_staged_prefix_becomes_log_segments_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stage = PrefixStage::new(dir.path(), 1000).expect("stage");
        let records: Vec<_> = (10..=40).map(record).collect();
        stage.append(&records[..5]).expect("append");
        stage.append(&records[5..]).expect("append");
        let staged = stage.finish(40).expect("finish").expect("some");
        assert_eq!(staged.first(), 10);
        assert!(wal::list_segments(dir.path()).expect("list").is_empty());
        staged.commit().expect("commit");
        let segments = wal::list_segments(dir.path()).expect("list");
        assert!(segments.len() > 1, "rolled at the segment size");
        assert_eq!(segments[0].first_lsn, 10);
        let mut reader = wal::LogReader::open(dir.path(), 10)
            .expect("open")
            .expect("on disk");
        let read = reader.read(40, usize::MAX).expect("read");
        assert_eq!(read.len(), 31);
        for (r, want) in read.iter().zip(&records) {
            assert_eq!((r.lsn, r.kind), (want.lsn, want.kind));
            assert_eq!(r.payload, want.payload.to_vec());
        }
        // Replay after a snapshot at 40 reads the prefix, applies nothing.
        let replay = wal::replay(dir.path(), 40, |_| Err("applied".into())).expect("replay");
        assert_eq!((replay.last_lsn, replay.records), (40, 0));

        // Broken off, or ending short of the snapshot: nothing is left.
        let other = tempfile::tempdir().expect("tempdir");
        let mut stage = PrefixStage::new(other.path(), 1000).expect("stage");
        stage.append(&records).expect("append");
        drop(stage);
        let mut stage = PrefixStage::new(other.path(), 1000).expect("stage");
        stage.append(&records).expect("append");
        assert!(matches!(
            stage.finish(41),
            Err(PrefixError::Mismatch { .. })
        ));
        assert!(
            std::fs::read_dir(other.path())
                .expect("dir")
                .next()
                .is_none(),
            "staged files were left"
        );
    }
}
