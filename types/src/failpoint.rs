//! Which failpoints are armed: `TRELLIS_FAILPOINTS` (comma-separated
//! names), read once per process. Each crate decides what its failpoints do
//! (the coordinator aborts, the shard injects an IO error); without the
//! variable a check is one load of an initialised `OnceLock`.

use std::sync::OnceLock;

/// Whether failpoint `name` is armed in this process.
pub fn armed(name: &str) -> bool {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("TRELLIS_FAILPOINTS")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        })
        .iter()
        .any(|n| n == name)
}
