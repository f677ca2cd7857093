//! Failpoints: named places where a test can make the coordinator die as if
//! SIGKILLed, to check that no crash point loses or half-applies anything.
//!
//! `TRELLIS_FAILPOINTS=after_prepare` (comma-separated names) makes the
//! process abort the first time it reaches that point. Names in use:
//! `after_prepare`, `after_decide`, `during_finalize`. Without the variable a
//! failpoint is one relaxed load (`trellis_types::failpoint`).
//!
//! One name does not abort: `stale_map` makes the periodic refresher skip
//! re-reading the shard map (it still heartbeats), so the coordinator
//! learns a newer map only when a shard refuses a request under the old
//! one: how a test drives the re-routing of moved keys.

/// Aborts the process here if `name` is armed.
pub fn failpoint(name: &str) {
    if trellis_types::failpoint::armed(name) {
        eprintln!("failpoint {name} hit: aborting the process");
        std::process::abort();
    }
}
