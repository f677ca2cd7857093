//! Failpoints: named places where a test makes the shard fail as a sick
//! disk would, to check that the failure is handled (fail-stop) and that a
//! restart loses nothing acknowledged.
//!
//! `TRELLIS_FAILPOINTS=wal_sync_error` (comma-separated names, the same
//! variable as the coordinator's) arms them. Names in use: `wal_sync_error`
//! (the log's next `fdatasync` fails with EIO), `backup_apply_lag` (a
//! backup applies each batch of records [`BACKUP_APPLY_LAG`] late, so that
//! it lags its primary as a loaded or distant one would), `feed_scan_lag` (a
//! change feed's initial scan waits [`FEED_SCAN_LAG`] after each chunk it
//! sends, so that a test can kill its primary mid-scan). Without the variable a
//! failpoint costs one load of an initialised `OnceLock`
//! (`trellis_types::failpoint`).

/// The log's `fdatasync` fails with EIO.
pub const WAL_SYNC_ERROR: &str = "wal_sync_error";

/// A backup applies each batch of records [`BACKUP_APPLY_LAG`] late.
pub const BACKUP_APPLY_LAG_NAME: &str = "backup_apply_lag";

/// How late a backup applies each batch under `backup_apply_lag`.
pub const BACKUP_APPLY_LAG: std::time::Duration = std::time::Duration::from_millis(30);

/// A feed's initial scan waits [`FEED_SCAN_LAG`] after each chunk.
pub const FEED_SCAN_LAG_NAME: &str = "feed_scan_lag";

/// How long a scan waits after each chunk under `feed_scan_lag`.
pub const FEED_SCAN_LAG: std::time::Duration = std::time::Duration::from_millis(100);

/// An injected EIO if `name` is armed.
pub fn io_error(name: &str) -> Option<std::io::Error> {
    trellis_types::failpoint::armed(name).then(|| {
        std::io::Error::other(format!("Input/output error (injected by failpoint {name})"))
    })
}
