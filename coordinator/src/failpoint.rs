//! Failpoints: named places where a test can make the coordinator die as if
//! SIGKILLed, to check that no crash point loses or half-applies anything.
//!
//! `TRELLIS_FAILPOINTS=after_prepare` (comma-separated names) makes the
//! process abort the first time it reaches that point. Names in use:
//! `after_prepare`, `after_decide`, `during_finalize`. Without the variable a
//! failpoint is one relaxed load.

use std::sync::OnceLock;

fn armed() -> &'static Vec<String> {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("TRELLIS_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process here if `name` is armed.
pub fn failpoint(name: &str) {
    if armed().iter().any(|n| n == name) {
        eprintln!("failpoint {name} hit: aborting the process");
        std::process::abort();
    }
}
