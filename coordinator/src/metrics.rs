//! Prometheus metrics of a coordinator, kept in atomics and read into a
//! [`Scrape`] at each scrape (encoded with prometheus-client by
//! `trellis-metrics`).
//!
//! This module owns every coordinator metric's name; the names are what the
//! alert rules and the dashboard (`deploy/`) read, so a rename is listed in
//! the README's "Renamed metrics".

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use trellis_metrics::{Histogram, Labels, SECONDS_BOUNDS, Scrape};

use crate::txn::{AbortReason, CommitOutcome, TxnError};

/// Which commit path a transaction took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    OnePhase,
    TwoPhase,
    ReadOnly,
}

impl Path {
    fn index(self) -> usize {
        match self {
            Path::OnePhase => 0,
            Path::TwoPhase => 1,
            Path::ReadOnly => 2,
        }
    }
    const NAMES: [&'static str; 3] = ["1pc", "2pc", "read_only"];
}

const OUTCOMES: [&str; 4] = ["committed", "aborted", "unknown", "error"];
const REASONS: [&str; 5] = [
    "conflict",
    "locked",
    "resolved_abort",
    "participant_unavailable",
    "slots_moved",
];

pub struct Metrics {
    /// [path][outcome]
    commits: [[AtomicU64; 4]; 3],
    aborts: [AtomicU64; REASONS.len()],
    latency: [Histogram; 3],
    pub map_refreshes: AtomicU64,
    pub read_lock_waits: AtomicU64,
    pub finalizes: AtomicU64,
    pub resolved_commit: AtomicU64,
    pub resolved_abort: AtomicU64,
    /// Prepared transactions older than the in-doubt age, as of the last sweep.
    pub in_doubt: AtomicU64,
    /// Catalog reads or heartbeats of the refresher that failed.
    pub catalog_errors: AtomicU64,
    /// When the shard map was last read from the catalog, in milliseconds
    /// since the Unix epoch (0: never).
    catalog_read_unix_ms: AtomicU64,
    /// Reshard jobs in the catalog by state ([`RESHARD_STATES`]), as of
    /// this coordinator's driver's last look.
    pub reshard_jobs: [AtomicU64; 4],
    /// Slots this coordinator's driver handed over (flips it stored).
    pub reshard_slots_moved: AtomicU64,
    /// Keys and bytes this coordinator's driver copied between groups.
    pub reshard_keys_copied: AtomicU64,
    pub reshard_bytes_copied: AtomicU64,
    /// Write pause per batch, freeze to flip.
    pub reshard_pause: Histogram,
    /// When a job this driver runs last saved progress, Unix ms (0: never).
    reshard_progress_unix_ms: AtomicU64,
}

/// Reshard job states, the `state` label of `trellis_reshard_jobs`.
pub const RESHARD_STATES: [&str; 4] = ["running", "paused", "cancelled", "done"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commits: Default::default(),
            aborts: Default::default(),
            latency: [
                Histogram::new(SECONDS_BOUNDS),
                Histogram::new(SECONDS_BOUNDS),
                Histogram::new(SECONDS_BOUNDS),
            ],
            map_refreshes: AtomicU64::new(0),
            read_lock_waits: AtomicU64::new(0),
            finalizes: AtomicU64::new(0),
            resolved_commit: AtomicU64::new(0),
            resolved_abort: AtomicU64::new(0),
            in_doubt: AtomicU64::new(0),
            catalog_errors: AtomicU64::new(0),
            catalog_read_unix_ms: AtomicU64::new(0),
            reshard_jobs: Default::default(),
            reshard_slots_moved: AtomicU64::new(0),
            reshard_keys_copied: AtomicU64::new(0),
            reshard_bytes_copied: AtomicU64::new(0),
            reshard_pause: Histogram::new(SECONDS_BOUNDS),
            reshard_progress_unix_ms: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record_commit(
        &self,
        path: Path,
        result: &Result<CommitOutcome, TxnError>,
        took: Duration,
    ) {
        let outcome = match result {
            Ok(CommitOutcome::Committed { .. }) => 0,
            Ok(CommitOutcome::Aborted(abort)) => {
                let reason = match abort.reason {
                    AbortReason::Conflict => 0,
                    AbortReason::Locked => 1,
                    AbortReason::ResolvedAbort => 2,
                    AbortReason::ParticipantUnavailable => 3,
                    AbortReason::SlotsMoved => 4,
                };
                self.aborts[reason].fetch_add(1, Relaxed);
                1
            }
            Err(TxnError::OutcomeUnknown { .. }) => 2,
            Err(_) => 3,
        };
        self.commits[path.index()][outcome].fetch_add(1, Relaxed);
        self.latency[path.index()].observe(took.as_secs_f64());
    }

    /// Notes that the shard map was read from the catalog just now: what
    /// tells an operator the coordinator still reaches its catalog.
    pub fn catalog_read(&self) {
        self.catalog_read_unix_ms.store(unix_ms(), Relaxed);
    }

    /// Notes that a reshard job this coordinator runs saved progress now.
    pub fn reshard_progress(&self) {
        self.reshard_progress_unix_ms.store(unix_ms(), Relaxed);
    }

    /// Commits of one path and outcome (for tests and status).
    pub fn commits(&self, path: Path, outcome: &str) -> u64 {
        let o = OUTCOMES
            .iter()
            .position(|n| *n == outcome)
            .expect("known outcome");
        self.commits[path.index()][o].load(Relaxed)
    }

    /// Every metric of this coordinator as of now, for one scrape.
    pub fn render(&self) -> Scrape {
        let mut out = Scrape::new();
        let label = |name: &str, value: &str| (name.to_string(), value.to_string());
        out.counter_family(
            "trellis_coordinator_commits_total",
            "Commit requests by path and outcome.",
            Path::NAMES
                .iter()
                .enumerate()
                .flat_map(|(p, path)| {
                    OUTCOMES.iter().enumerate().map(move |(o, outcome)| {
                        (
                            vec![label("path", path), label("outcome", outcome)],
                            self.commits[p][o].load(Relaxed),
                        )
                    })
                })
                .collect(),
        );
        out.counter_family(
            "trellis_coordinator_aborts_total",
            "Aborted commits by reason.",
            REASONS
                .iter()
                .enumerate()
                .map(|(r, reason)| (vec![label("reason", reason)], self.aborts[r].load(Relaxed)))
                .collect(),
        );
        // Was one family per path (trellis_coordinator_commit_seconds_1pc,
        // ...): the unit ends the name, the path is a label.
        let latency: Vec<(Labels, &Histogram)> = Path::NAMES
            .iter()
            .zip(&self.latency)
            .map(|(path, h)| (vec![label("path", path)], h))
            .collect();
        out.histogram_family(
            "trellis_coordinator_commit_seconds",
            "Commit latency by path.",
            &latency,
        );
        out.counter(
            "trellis_coordinator_map_refreshes_total",
            "Shard map reloads from the catalog.",
            self.map_refreshes.load(Relaxed),
        );
        out.counter(
            "trellis_coordinator_read_lock_waits_total",
            "Reads that waited on a prepared transaction's lock.",
            self.read_lock_waits.load(Relaxed),
        );
        out.counter(
            "trellis_coordinator_finalizes_total",
            "Participant finalizations sent.",
            self.finalizes.load(Relaxed),
        );
        out.counter(
            "trellis_coordinator_resolved_commit_total",
            "In-doubt transactions resolved as committed.",
            self.resolved_commit.load(Relaxed),
        );
        out.counter(
            "trellis_coordinator_resolved_abort_total",
            "In-doubt transactions resolved as aborted.",
            self.resolved_abort.load(Relaxed),
        );
        out.gauge(
            "trellis_coordinator_in_doubt",
            "Prepared transactions older than the in-doubt age at the last sweep.",
            self.in_doubt.load(Relaxed),
        );
        out.counter(
            "trellis_coordinator_catalog_errors_total",
            "Catalog reads of the shard map, or heartbeats, that failed.",
            self.catalog_errors.load(Relaxed),
        );
        out.gauge_family(
            "trellis_coordinator_catalog_last_read_timestamp_seconds",
            "When the shard map was last read from the catalog (Unix time; 0: never).",
            vec![(
                Vec::new(),
                self.catalog_read_unix_ms.load(Relaxed) as f64 / 1000.0,
            )],
        );
        out.gauge_family(
            "trellis_reshard_jobs",
            "Reshard jobs in the catalog by state (as this coordinator's driver last read them).",
            RESHARD_STATES
                .iter()
                .zip(&self.reshard_jobs)
                .map(|(state, n)| (vec![label("state", state)], n.load(Relaxed) as f64))
                .collect(),
        );
        out.counter(
            "trellis_reshard_slots_moved_total",
            "Slots handed over to another group by jobs this coordinator ran.",
            self.reshard_slots_moved.load(Relaxed),
        );
        out.counter(
            "trellis_reshard_keys_copied_total",
            "Keys (tombstones too) copied between groups by jobs this coordinator ran.",
            self.reshard_keys_copied.load(Relaxed),
        );
        out.counter(
            "trellis_reshard_bytes_copied_total",
            "Key and value bytes copied between groups by jobs this coordinator ran.",
            self.reshard_bytes_copied.load(Relaxed),
        );
        out.histogram(
            "trellis_reshard_pause_seconds",
            "Write pause of each cutover, from the source's freeze to the stored flip.",
            &self.reshard_pause,
        );
        out.gauge_family(
            "trellis_reshard_last_progress_timestamp_seconds",
            "When a reshard job this coordinator runs last saved progress (Unix time; 0: never).",
            vec![(
                Vec::new(),
                self.reshard_progress_unix_ms.load(Relaxed) as f64 / 1000.0,
            )],
        );
        out
    }
}

/// Now as Unix milliseconds ([`trellis_types::clock`]: the system clock,
/// or simulated time in the simulator, so that a reshard job's freeze
/// deadline follows the same clock as everything else there). A clock
/// before 1970 is not worth failing for: it reads as 0 ("never").
pub fn unix_ms() -> u64 {
    trellis_types::clock::unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The value of the series `name` (no labels) in a rendering.
    fn value(rendered: &str, name: &str) -> f64 {
        rendered
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} rendered: {rendered}"))
    }

    #[test]
    fn the_catalog_read_time_is_never_until_a_read_then_now() {
        let metrics = Metrics::default();
        let name = "trellis_coordinator_catalog_last_read_timestamp_seconds";
        assert_eq!(value(&metrics.render().text(), name), 0.0, "never read");
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        metrics.catalog_read();
        let read = value(&metrics.render().text(), name);
        assert!(
            read >= before.floor() && read < before + 60.0,
            "{read} vs {before}"
        );

        metrics.reshard_jobs[1].store(2, Relaxed);
        metrics.reshard_pause.observe(0.05);
        let rendered = metrics.render().text();
        assert!(
            rendered.contains("trellis_reshard_jobs{state=\"paused\"} 2"),
            "{rendered}"
        );
        assert!(
            rendered.contains("trellis_reshard_pause_seconds_count 1"),
            "{rendered}"
        );

        metrics.catalog_errors.fetch_add(2, Relaxed);
        assert_eq!(
            value(
                &metrics.render().text(),
                "trellis_coordinator_catalog_errors_total"
            ),
            2.0
        );
    }
}
