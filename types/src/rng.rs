//! The randomness Trellis processes use (transaction ids, retry jitter).
//!
//! By default it is the thread's OS-seeded generator. The deterministic
//! simulator runs a whole cluster on one thread and calls [`seed_thread`]
//! first: from then on every draw on that thread comes from one generator
//! seeded with the run's seed, so the same seed makes the same ids and the
//! same backoffs, in the same order.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes this thread's draws come from a generator seeded with `seed`.
pub fn seed_thread(seed: u64) {
    SEEDED.with(|cell| *cell.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Returns this thread to OS-seeded randomness.
pub fn unseed_thread() {
    SEEDED.with(|cell| *cell.borrow_mut() = None);
}

fn with<T>(draw: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
    SEEDED.with(|cell| match cell.borrow_mut().as_mut() {
        Some(rng) => draw(rng),
        None => draw(&mut rand::rng()),
    })
}

/// A uniformly random `u64`.
pub fn u64() -> u64 {
    with(|rng| rng.next_u64())
}

/// A uniformly random float in `[0, 1)`.
pub fn unit() -> f64 {
    with(|rng| rng.random::<f64>())
}

/// Fills `out` with random bytes.
pub fn fill(out: &mut [u8]) {
    with(|rng| rng.fill_bytes(out));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_repeats_and_an_unseeded_one_does_not() {
        seed_thread(7);
        let first: Vec<u64> = (0..4).map(|_| u64()).collect();
        seed_thread(7);
        let again: Vec<u64> = (0..4).map(|_| u64()).collect();
        assert_eq!(first, again, "the same seed draws the same values");
        seed_thread(8);
        let other: Vec<u64> = (0..4).map(|_| u64()).collect();
        assert_ne!(first, other, "another seed draws other values");
        unseed_thread();
        let free: Vec<u64> = (0..4).map(|_| u64()).collect();
        assert_ne!(first, free, "unseeded draws do not follow the last seed");
        let x = unit();
        assert!((0.0..1.0).contains(&x));
    }
}
