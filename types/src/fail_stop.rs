//! Why a shard fail-stopped: the cause a replica notes in its data
//! directory and reports to its coordinator as it stops after its log
//! failed, and the `cause` label of the metrics that export it.
//!
//! Pure: the classification of an IO error is a function of where it
//! happened and its kind; nothing here does IO.

use std::fmt;
use std::io::ErrorKind;

/// The cause of a fail-stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailStopCause {
    /// `fdatasync` of the log failed (an IO error the disk reported; the
    /// page cache may have dropped the data, so it is never retried).
    Fsync,
    /// The disk, or the user's quota, is full: a write, a sync or a new
    /// segment found no space.
    DiskFull,
    /// Any other IO error of the log: a failed write, a segment that could
    /// not be created.
    Io,
}

/// Where in the log writer an IO error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStep {
    /// Writing a batch.
    Write,
    /// `fdatasync` of a written batch.
    Sync,
    /// Creating the next segment.
    NewSegment,
}

impl FailStopCause {
    /// Every cause, in label order.
    pub const ALL: [FailStopCause; 3] = [
        FailStopCause::Fsync,
        FailStopCause::DiskFull,
        FailStopCause::Io,
    ];

    /// Its name: the `cause` label, and what the note and the report carry.
    pub fn name(self) -> &'static str {
        match self {
            FailStopCause::Fsync => "fsync",
            FailStopCause::DiskFull => "disk_full",
            FailStopCause::Io => "io",
        }
    }

    /// The cause named `name`, if any.
    pub fn from_name(name: &str) -> Option<FailStopCause> {
        FailStopCause::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The cause of an IO error of kind `kind` at `step`: no space is a
    /// full disk wherever it shows (a sync can report it too, on thin or
    /// network storage); otherwise a failed sync is `Fsync`, anything else
    /// `Io`.
    pub fn classify(step: LogStep, kind: ErrorKind) -> FailStopCause {
        match (step, kind) {
            (_, ErrorKind::StorageFull | ErrorKind::QuotaExceeded) => FailStopCause::DiskFull,
            (LogStep::Sync, _) => FailStopCause::Fsync,
            (LogStep::Write | LogStep::NewSegment, _) => FailStopCause::Io,
        }
    }
}

impl fmt::Display for FailStopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_is_a_full_disk_at_every_step() {
        for step in [LogStep::Write, LogStep::Sync, LogStep::NewSegment] {
            for kind in [ErrorKind::StorageFull, ErrorKind::QuotaExceeded] {
                assert_eq!(
                    FailStopCause::classify(step, kind),
                    FailStopCause::DiskFull,
                    "{step:?} {kind:?}"
                );
            }
        }
        // What ENOSPC maps to, as the log writer sees it.
        let enospc = std::io::Error::from_raw_os_error(28);
        assert_eq!(
            FailStopCause::classify(LogStep::Write, enospc.kind()),
            FailStopCause::DiskFull
        );
    }

    #[test]
    fn a_failed_sync_is_fsync_and_other_errors_are_io() {
        assert_eq!(
            FailStopCause::classify(LogStep::Sync, ErrorKind::Other),
            FailStopCause::Fsync
        );
        // EIO
        let eio = std::io::Error::from_raw_os_error(5);
        assert_eq!(
            FailStopCause::classify(LogStep::Sync, eio.kind()),
            FailStopCause::Fsync
        );
        assert_eq!(
            FailStopCause::classify(LogStep::Write, eio.kind()),
            FailStopCause::Io
        );
        assert_eq!(
            FailStopCause::classify(LogStep::NewSegment, ErrorKind::PermissionDenied),
            FailStopCause::Io
        );
    }

    #[test]
    fn names_round_trip_and_are_label_safe() {
        for cause in FailStopCause::ALL {
            assert_eq!(FailStopCause::from_name(cause.name()), Some(cause));
            assert!(
                cause
                    .name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
        assert_eq!(FailStopCause::from_name("fsync "), None);
    }
}
