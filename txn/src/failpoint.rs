//! Failpoints of the transaction manager: named places where a test can
//! make the process die as if SIGKILLed, to check that no crash point loses
//! or half-applies anything.
//!
//! `TRELLIS_FAILPOINTS=after_prepare` (comma-separated names) makes the
//! process abort the first time it reaches that point. Names in use here:
//! `during_prepare` (one participant prepared, the others not yet),
//! `after_prepare` (every vote in; with all YES that is the commit point
//! of a parallel commit), `after_decide` (the outcome decided, not yet
//! answered), `during_finalize` (the coordinator has more). Without the variable a failpoint is one relaxed load
//! (`trellis_types::failpoint`).

/// Aborts the process here if `name` is armed.
pub fn failpoint(name: &str) {
    if trellis_types::failpoint::armed(name) {
        eprintln!("failpoint {name} hit: aborting the process");
        std::process::abort();
    }
}
