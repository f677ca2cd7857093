//! Prometheus metrics of a coordinator, kept in atomics and read into a
//! [`Scrape`] at each scrape (encoded with prometheus-client by
//! `trellis-metrics`).
//!
//! This module owns every coordinator metric's name; the names are what the
//! alert rules and the dashboard (`deploy/`) read, so a rename is listed in
//! the README's "Renamed metrics".

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use trellis_metrics::{Counter, Histogram, Labels, SECONDS_BOUNDS, Scrape};
use trellis_types::GroupId;
use trellis_types::fail_stop::FailStopCause;

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
    commits: [[Counter; 4]; 3],
    aborts: [Counter; REASONS.len()],
    latency: [Histogram; 3],
    pub map_refreshes: Counter,
    /// STALE reads (or a group's part of one) a backup declined or did not
    /// answer in time, so the primary answered.
    pub stale_fallbacks: Counter,
    pub read_lock_waits: Counter,
    pub finalizes: Counter,
    /// Two-phase commits answered COMMITTED once every participant voted
    /// YES, without waiting for the anchor's record (parallel commit).
    pub parallel_commits: Counter,
    /// Participants fenced by a resolver or a second execution of a
    /// pending parallel commit.
    pub fences: Counter,
    pub resolved_commit: Counter,
    pub resolved_abort: Counter,
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
    pub reshard_slots_moved: Counter,
    /// Keys and bytes this coordinator's driver copied between groups.
    pub reshard_keys_copied: Counter,
    pub reshard_bytes_copied: Counter,
    /// Prepared transactions this coordinator's driver settled at their
    /// anchors because they held a frozen batch's keys.
    pub reshard_drain_settled: Counter,
    /// Write pause per batch, freeze to flip.
    pub reshard_pause: Histogram,
    /// Parts of that pause by step ([`CUTOVER_STEPS`]): the freeze call,
    /// the drained copy (all its tries), the flip.
    pub reshard_cutover_steps: [Histogram; 3],
    /// When a job this driver runs last saved progress, Unix ms (0: never).
    reshard_progress_unix_ms: AtomicU64,
    /// Fail-stops shards reported to this coordinator, by (group, replica
    /// address, cause); at most [`FAIL_STOP_SERIES_MAX`] entries. Not on a
    /// hot path: counted whether or not recording is on.
    fail_stops: Mutex<BTreeMap<(GroupId, String, FailStopCause), u64>>,
    /// Authorization checks made (one per request or transaction, never
    /// per key), and those refused.
    pub auth_checks: Counter,
    pub auth_denied: Counter,
    /// Failed password logins, and requests refused as unauthenticated
    /// (bad, expired or foreign tokens; no credentials; unknown users).
    pub login_failures: Counter,
    pub unauthenticated: Counter,
    /// Logins refused unheard because their address failed too often.
    pub logins_refused: Counter,
}

/// Most (group, replica, cause) series of `trellis_shard_fail_stops_total`
/// a coordinator keeps beyond the members of the current map; a report
/// past it is logged and refused.
pub const FAIL_STOP_SERIES_MAX: usize = 4096;

/// Steps of a cutover, the `step` label of
/// `trellis_reshard_cutover_step_seconds`.
pub const CUTOVER_STEPS: [&str; 3] = ["freeze", "drain", "flip"];

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
            map_refreshes: Counter::new(),
            stale_fallbacks: Counter::new(),
            read_lock_waits: Counter::new(),
            finalizes: Counter::new(),
            parallel_commits: Counter::new(),
            fences: Counter::new(),
            resolved_commit: Counter::new(),
            resolved_abort: Counter::new(),
            in_doubt: AtomicU64::new(0),
            catalog_errors: AtomicU64::new(0),
            catalog_read_unix_ms: AtomicU64::new(0),
            reshard_jobs: Default::default(),
            reshard_slots_moved: Counter::new(),
            reshard_keys_copied: Counter::new(),
            reshard_bytes_copied: Counter::new(),
            reshard_drain_settled: Counter::new(),
            reshard_pause: Histogram::new(SECONDS_BOUNDS),
            reshard_cutover_steps: [
                Histogram::new(SECONDS_BOUNDS),
                Histogram::new(SECONDS_BOUNDS),
                Histogram::new(SECONDS_BOUNDS),
            ],
            reshard_progress_unix_ms: AtomicU64::new(0),
            fail_stops: Mutex::new(BTreeMap::new()),
            auth_checks: Counter::new(),
            auth_denied: Counter::new(),
            login_failures: Counter::new(),
            unauthenticated: Counter::new(),
            logins_refused: Counter::new(),
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
        if !trellis_metrics::recording() {
            return;
        }
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
                self.aborts[reason].inc();
                1
            }
            Err(TxnError::OutcomeUnknown { .. }) => 2,
            Err(_) => 3,
        };
        self.commits[path.index()][outcome].inc();
        self.latency[path.index()].observe(took.as_secs_f64());
    }

    /// Notes that the shard map was read from the catalog just now: what
    /// tells an operator the coordinator still reaches its catalog.
    pub fn catalog_read(&self) {
        self.catalog_read_unix_ms.store(unix_ms(), Relaxed);
    }

    /// Counts a fail-stop that replica `addr` of `group` reported; false
    /// (not counted) if [`FAIL_STOP_SERIES_MAX`] series are kept already.
    pub fn fail_stop(&self, group: GroupId, addr: &str, cause: FailStopCause) -> bool {
        let mut counts = self
            .fail_stops
            .lock()
            .expect("fail-stop counts lock poisoned");
        let key = (group, addr.to_string(), cause);
        if !counts.contains_key(&key) && counts.len() >= FAIL_STOP_SERIES_MAX {
            return false;
        }
        *counts.entry(key).or_default() += 1;
        true
    }

    /// Adds `trellis_shard_fail_stops_total`: a series per cause for every
    /// replica in `members` (group, address), at 0 until one is reported
    /// (so that `increase()` sees the first one), and for every replica
    /// that reported one.
    pub fn render_fail_stops<'a>(
        &self,
        out: &mut Scrape,
        members: impl IntoIterator<Item = (GroupId, &'a str)>,
    ) {
        let mut series = self
            .fail_stops
            .lock()
            .expect("fail-stop counts lock poisoned")
            .clone();
        for (group, addr) in members {
            for cause in FailStopCause::ALL {
                series.entry((group, addr.to_string(), cause)).or_default();
            }
        }
        out.counter_family(
            "trellis_shard_fail_stops_total",
            "Times a shard replica stopped because its log failed, as it reported to this coordinator, by group, replica (its address) and cause (fsync, disk_full, io).",
            series
                .into_iter()
                .map(|((group, addr, cause), n)| {
                    (
                        vec![
                            ("group".to_string(), group.to_string()),
                            ("replica".to_string(), addr),
                            ("cause".to_string(), cause.name().to_string()),
                        ],
                        n,
                    )
                })
                .collect(),
        );
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
        self.commits[path.index()][o].get()
    }

    /// Every metric of this coordinator as of now, for one scrape.
    pub fn render(&self) -> Scrape {
        let mut out = Scrape::new();
        let label = |name: &str, value: &str| (name.to_string(), value.to_string());
        out.counter(
            "trellis_auth_checks_total",
            "Authorization checks made: one per request or transaction, never per key.",
            self.auth_checks.get(),
        );
        out.counter(
            "trellis_auth_denied_total",
            "Requests refused with PERMISSION_DENIED by a user's grants.",
            self.auth_denied.get(),
        );
        out.counter(
            "trellis_auth_login_failures_total",
            "Password logins refused (unknown user or wrong password).",
            self.login_failures.get(),
        );
        out.counter(
            "trellis_auth_logins_refused_total",
            "Password logins refused without checking the password: their address failed too many logins lately.",
            self.logins_refused.get(),
        );
        out.counter(
            "trellis_auth_unauthenticated_total",
            "Requests refused with UNAUTHENTICATED (no, bad, expired or foreign credentials).",
            self.unauthenticated.get(),
        );
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
                            self.commits[p][o].get(),
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
                .map(|(r, reason)| (vec![label("reason", reason)], self.aborts[r].get()))
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
            self.map_refreshes.get(),
        );
        out.counter(
            "trellis_stale_read_fallbacks_total",
            "STALE reads of a group a backup declined or did not answer in time, answered by the primary instead.",
            self.stale_fallbacks.get(),
        );
        out.counter(
            "trellis_coordinator_read_lock_waits_total",
            "Reads that waited on a prepared transaction's lock.",
            self.read_lock_waits.get(),
        );
        out.counter(
            "trellis_coordinator_finalizes_total",
            "Participant finalizations sent.",
            self.finalizes.get(),
        );
        out.counter(
            "trellis_coordinator_parallel_commits_total",
            "Two-phase commits answered once every participant voted YES, before the anchor's record (parallel commit).",
            self.parallel_commits.get(),
        );
        out.counter(
            "trellis_coordinator_fences_total",
            "Participants fenced while resolving a pending parallel commit.",
            self.fences.get(),
        );
        out.counter(
            "trellis_coordinator_resolved_commit_total",
            "In-doubt transactions resolved as committed.",
            self.resolved_commit.get(),
        );
        out.counter(
            "trellis_coordinator_resolved_abort_total",
            "In-doubt transactions resolved as aborted.",
            self.resolved_abort.get(),
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
            self.reshard_slots_moved.get(),
        );
        out.counter(
            "trellis_reshard_keys_copied_total",
            "Keys (tombstones too) copied between groups by jobs this coordinator ran.",
            self.reshard_keys_copied.get(),
        );
        out.counter(
            "trellis_reshard_bytes_copied_total",
            "Key and value bytes copied between groups by jobs this coordinator ran.",
            self.reshard_bytes_copied.get(),
        );
        out.counter(
            "trellis_reshard_drain_settled_total",
            "Prepared transactions settled at their anchors (finalized, or aborted if undecided) because they held the keys of a batch frozen for its cutover.",
            self.reshard_drain_settled.get(),
        );
        out.histogram(
            "trellis_reshard_pause_seconds",
            "Write pause of each cutover, from the source's freeze to the stored flip.",
            &self.reshard_pause,
        );
        let steps: Vec<(Labels, &Histogram)> = CUTOVER_STEPS
            .iter()
            .zip(&self.reshard_cutover_steps)
            .map(|(step, h)| (vec![label("step", step)], h))
            .collect();
        out.histogram_family(
            "trellis_reshard_cutover_step_seconds",
            "Parts of each cutover's pause: the freeze call, the drained copy (every try), the flip (map compare-and-set, telling both groups).",
            &steps,
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

    /// Every member's series is there at 0 before any report (what
    /// `increase()` needs to see the first); a report counts under its
    /// cause, and a replica no longer in the map keeps its count.
    #[test]
    fn fail_stops_are_zero_per_member_until_reported() {
        let metrics = Metrics::default();
        let mut out = Scrape::new();
        metrics.render_fail_stops(&mut out, [(1, "a:1"), (2, "b:2")]);
        let text = out.text();
        assert_eq!(
            text.matches("trellis_shard_fail_stops_total{").count(),
            6,
            "{text}"
        );
        assert!(
            text.contains(
                "trellis_shard_fail_stops_total{group=\"1\",replica=\"a:1\",cause=\"fsync\"} 0\n"
            ),
            "{text}"
        );

        assert!(metrics.fail_stop(1, "a:1", FailStopCause::Fsync));
        assert!(metrics.fail_stop(3, "gone:3", FailStopCause::DiskFull));
        let mut out = Scrape::new();
        metrics.render_fail_stops(&mut out, [(1, "a:1"), (2, "b:2")]);
        let text = out.text();
        assert!(
            text.contains(
                "trellis_shard_fail_stops_total{group=\"1\",replica=\"a:1\",cause=\"fsync\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("trellis_shard_fail_stops_total{group=\"1\",replica=\"a:1\",cause=\"disk_full\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("trellis_shard_fail_stops_total{group=\"3\",replica=\"gone:3\",cause=\"disk_full\"} 1\n"),
            "{text}"
        );
    }
}
