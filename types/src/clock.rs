//! The wall clock Trellis processes read as Unix milliseconds (reshard
//! jobs' freeze deadlines and progress times, metrics' timestamps).
//!
//! By default it is the system clock. The deterministic simulator runs a
//! whole cluster on one thread and calls [`simulate_thread`] first: from
//! then on every reading on that thread comes from the function it gives
//! (the simulated time plus a fixed epoch), so a job's deadlines follow
//! simulated time and the same seed makes the same run. Without it a
//! simulated freeze would be bounded by how fast the host machine runs the
//! simulation, and no seed would replay.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static SIMULATED: Cell<Option<fn() -> u64>> = const { Cell::new(None) };
}

/// Makes this thread's readings come from `now_ms` (Unix milliseconds).
pub fn simulate_thread(now_ms: fn() -> u64) {
    SIMULATED.with(|cell| cell.set(Some(now_ms)));
}

/// Returns this thread to the system clock.
pub fn unsimulate_thread() {
    SIMULATED.with(|cell| cell.set(None));
}

/// Now as Unix milliseconds. A system clock before 1970 is not worth
/// failing for: it reads as 0 ("never").
pub fn unix_ms() -> u64 {
    match SIMULATED.with(Cell::get) {
        Some(now_ms) => now_ms(),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_thread_reads_its_clock_and_an_unsimulated_one_the_system() {
        simulate_thread(|| 42);
        assert_eq!(unix_ms(), 42, "the simulated clock is read");
        let other = std::thread::spawn(unix_ms).join().expect("thread");
        assert!(
            other > 1_600_000_000_000,
            "another thread reads the system clock"
        );
        unsimulate_thread();
        assert!(unix_ms() > 1_600_000_000_000, "back on the system clock");
    }
}
