//! Pacing of catch-up traffic: a backup that returns after a while (or a
//! new one) is sent a snapshot and a backlog of records, and without a
//! bound that transfer would take the primary's disk, CPU and network from
//! the foreground writes — which, at SYNC, wait on the *other* backups'
//! streams. One [`Pacer`] per replica is shared by every catch-up it
//! serves; steady-state streaming to an up-to-date backup is never paced.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default catch-up rate of one primary, all backups together.
pub const CATCH_UP_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

/// A byte rate: each [`Pacer::take`] books its bytes' share of time after
/// the previous booking and waits until its slot starts.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

impl Pacer {
    /// `bytes_per_sec == 0` means unpaced.
    pub fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec,
            next_free: Mutex::new(None),
        }
    }

    /// Waits for the right to send `bytes`; returns how long it waited.
    pub async fn take(&self, bytes: usize) -> Duration {
        if self.bytes_per_sec == 0 || bytes == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        if start > now {
            tokio::time::sleep_until(start).await;
        }
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[tokio::test(start_paused = true)]
    async fn pieces_go_out_at_the_rate() {
        let pacer = Pacer::new(4 * MIB as u64);
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        for _ in 0..9 {
            waited += pacer.take(MIB).await;
        }
        // Nine 1 MiB pieces at 4 MiB/s: the first goes at once, the ninth
        // after 8 × 0.25 s of (virtual) time.
        let elapsed = started.elapsed();
        assert_eq!(elapsed, Duration::from_secs(2), "{elapsed:?}");
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_does_not_bank_credit_forever_and_zero_is_unpaced() {
        let pacer = Pacer::new(MIB as u64);
        pacer.take(MIB).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        // After a pause the next piece goes at once, but the one after it
        // waits its full share: no burst of ten seconds' worth.
        assert_eq!(pacer.take(MIB).await, Duration::ZERO);
        assert_eq!(pacer.take(MIB).await, Duration::from_secs(1));
        let unpaced = Pacer::new(0);
        for _ in 0..100 {
            assert_eq!(unpaced.take(64 * MIB).await, Duration::ZERO);
        }
    }
}
