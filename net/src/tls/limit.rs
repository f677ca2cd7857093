//! The rate limit on failed TLS handshakes, per peer IP address: after
//! [`HANDSHAKE_FAILURES_MAX`] failures within [`HANDSHAKE_FAILURE_WINDOW`],
//! new connections from that address are closed at once, before any
//! handshake work, for [`HANDSHAKE_FAILURE_BACKOFF`]. The same machine,
//! with [`Bounds`] of its own, limits failed password logins per address
//! (the coordinator's `Auth.Login`).
//!
//! A pure state machine: the caller passes `now`; no clock and no IO here.
//! The table is bounded ([`HANDSHAKE_FAILURE_PEERS_MAX`] addresses); when
//! full, the address whose last failure is oldest is forgotten.
//!
//! Loopback is not exempt. The bounds leave room for a process retrying a
//! wrong certificate every few hundred milliseconds, as the tests', the
//! tools' and the replicas' retries do (every process on one machine
//! shares its address's budget); they stop a peer that handshakes as fast
//! as it can.
//! Successful handshakes are not counted and do not clear failures (a peer
//! with one good certificate cannot launder a stream of bad ones).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed handshakes from one address, within
/// [`HANDSHAKE_FAILURE_WINDOW`], that start its backoff: 10 a second,
/// above what a misconfigured process retrying does (a replica with a
/// wrong certificate fails about 5 a second: its configuration poll and
/// its registrations; the shard crate checks that at compile time), far
/// below a peer handshaking as fast as it can.
pub const HANDSHAKE_FAILURES_MAX: u32 = 100;
/// The window failures are counted in (from the first failure of a run).
pub const HANDSHAKE_FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// How long an address over the limit has its connections closed at once.
pub const HANDSHAKE_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// Most addresses the limiter remembers.
pub const HANDSHAKE_FAILURE_PEERS_MAX: usize = 4096;

const _: () = assert!(HANDSHAKE_FAILURES_MAX >= 2);
const _: () = assert!(HANDSHAKE_FAILURE_PEERS_MAX >= 1);

/// The limits of one [`Limiter`]: `failures_max` failures from one address
/// within `window` close it for `backoff`; at most `peers_max` addresses
/// are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub failures_max: u32,
    pub window: Duration,
    pub backoff: Duration,
    pub peers_max: usize,
}

/// The failed-handshake limits (the acceptor's).
pub const HANDSHAKES: Bounds = Bounds {
    failures_max: HANDSHAKE_FAILURES_MAX,
    window: HANDSHAKE_FAILURE_WINDOW,
    backoff: HANDSHAKE_FAILURE_BACKOFF,
    peers_max: HANDSHAKE_FAILURE_PEERS_MAX,
};

/// One address's failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    /// The first failure of the current window.
    window_start: Instant,
    /// Failures since `window_start`.
    failures: u32,
    /// Connections are refused until then.
    blocked_until: Option<Instant>,
    /// The latest failure (what eviction orders by).
    last_failure: Instant,
}

/// What to do with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the handshake.
    Admit,
    /// Close it at once: its address failed too often lately.
    Refuse,
}

/// Failures per address, bounded.
#[derive(Debug)]
pub struct Limiter {
    bounds: Bounds,
    peers: HashMap<IpAddr, Peer>,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new()
    }
}

impl Limiter {
    /// A limiter of failed handshakes ([`HANDSHAKES`]).
    pub fn new() -> Limiter {
        Limiter::with_bounds(HANDSHAKES)
    }

    /// A limiter of other failures, with `bounds` (at least 2 failures, at
    /// least one address).
    pub fn with_bounds(bounds: Bounds) -> Limiter {
        assert!(bounds.failures_max >= 2, "one failure never blocks");
        assert!(bounds.peers_max >= 1, "a limiter remembers an address");
        Limiter {
            bounds,
            peers: HashMap::new(),
        }
    }

    /// Its limits.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Whether a connection from `ip` at `now` may handshake.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let Some(peer) = self.peers.get_mut(&ip) else {
            return Verdict::Admit;
        };
        match peer.blocked_until {
            Some(until) if now < until => Verdict::Refuse,
            Some(_) => {
                // The backoff is over: a fresh start.
                self.peers.remove(&ip);
                Verdict::Admit
            }
            None => Verdict::Admit,
        }
    }

    /// Records a failed handshake from `ip` at `now`; returns whether
    /// this failure started a backoff.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.peers.contains_key(&ip) && self.peers.len() >= self.bounds.peers_max {
            self.evict_oldest();
        }
        let peer = self.peers.entry(ip).or_insert(Peer {
            window_start: now,
            failures: 0,
            blocked_until: None,
            last_failure: now,
        });
        peer.last_failure = now;
        if peer.blocked_until.is_some() {
            // A handshake admitted before the backoff began, failing late.
            return false;
        }
        if now.saturating_duration_since(peer.window_start) >= self.bounds.window {
            peer.window_start = now;
            peer.failures = 0;
        }
        peer.failures += 1;
        if peer.failures >= self.bounds.failures_max {
            peer.blocked_until = Some(now + self.bounds.backoff);
            return true;
        }
        false
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .peers
            .iter()
            .min_by_key(|(_, peer)| peer.last_failure)
            .map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.peers.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Fails `n` handshakes from `ip`, one millisecond apart from `at`.
    fn fail(limiter: &mut Limiter, ip: IpAddr, at: Instant, n: u32) -> Instant {
        let mut now = at;
        for _ in 0..n {
            limiter.failed(ip, now);
            now += Duration::from_millis(1);
        }
        now
    }

    #[test]
    fn too_many_failures_close_an_address_for_the_backoff_only() {
        let mut limiter = Limiter::new();
        let t0 = Instant::now();
        let now = fail(&mut limiter, ip(1), t0, HANDSHAKE_FAILURES_MAX - 1);
        assert_eq!(limiter.check(ip(1), now), Verdict::Admit, "one short");
        assert!(limiter.failed(ip(1), now), "the last failure starts it");
        assert_eq!(limiter.check(ip(1), now), Verdict::Refuse);
        assert_eq!(limiter.check(ip(2), now), Verdict::Admit, "others go on");
        let almost = now + HANDSHAKE_FAILURE_BACKOFF - Duration::from_millis(1);
        assert_eq!(limiter.check(ip(1), almost), Verdict::Refuse);
        let after = now + HANDSHAKE_FAILURE_BACKOFF;
        assert_eq!(limiter.check(ip(1), after), Verdict::Admit);
        // And its count starts again from nothing.
        assert!(limiter.is_empty());
        assert!(!limiter.failed(ip(1), after));
        assert_eq!(limiter.check(ip(1), after), Verdict::Admit);
    }

    #[test]
    fn other_bounds_are_kept() {
        let bounds = Bounds {
            failures_max: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(30),
            peers_max: 2,
        };
        let mut limiter = Limiter::with_bounds(bounds);
        assert_eq!(limiter.bounds(), bounds);
        let t0 = Instant::now();
        // Spread over most of a minute, three failures still count together.
        assert!(!limiter.failed(ip(1), t0));
        assert!(!limiter.failed(ip(1), t0 + Duration::from_secs(50)));
        assert!(limiter.failed(ip(1), t0 + Duration::from_secs(59)));
        let blocked = t0 + Duration::from_secs(59);
        assert_eq!(
            limiter.check(ip(1), blocked + Duration::from_secs(29)),
            Verdict::Refuse
        );
        assert_eq!(
            limiter.check(ip(1), blocked + Duration::from_secs(30)),
            Verdict::Admit
        );
        // Two addresses at most.
        limiter.failed(ip(2), t0);
        limiter.failed(ip(3), t0 + Duration::from_secs(1));
        limiter.failed(ip(4), t0 + Duration::from_secs(2));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn failures_spread_over_windows_never_block() {
        let mut limiter = Limiter::new();
        let mut now = Instant::now();
        for _ in 0..10 {
            now = fail(&mut limiter, ip(1), now, HANDSHAKE_FAILURES_MAX - 1);
            assert_eq!(limiter.check(ip(1), now), Verdict::Admit);
            now += HANDSHAKE_FAILURE_WINDOW;
        }
    }

    #[test]
    fn late_failures_of_a_blocked_address_do_not_extend_its_backoff() {
        let mut limiter = Limiter::new();
        let t0 = Instant::now();
        let now = fail(&mut limiter, ip(1), t0, HANDSHAKE_FAILURES_MAX);
        assert_eq!(limiter.check(ip(1), now), Verdict::Refuse);
        let later = now + HANDSHAKE_FAILURE_BACKOFF / 2;
        assert!(!limiter.failed(ip(1), later));
        let end = t0
            + Duration::from_millis(u64::from(HANDSHAKE_FAILURES_MAX) - 1)
            + HANDSHAKE_FAILURE_BACKOFF;
        assert_eq!(limiter.check(ip(1), end), Verdict::Admit);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let mut limiter = Limiter::new();
        let t0 = Instant::now();
        // The first address is one failure short of its backoff...
        fail(&mut limiter, ip(0), t0, HANDSHAKE_FAILURES_MAX - 1);
        let mut now = t0 + Duration::from_secs(1);
        for i in 1..=HANDSHAKE_FAILURE_PEERS_MAX as u32 {
            let other = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            limiter.failed(other, now);
            now += Duration::from_micros(1);
            assert!(limiter.len() <= HANDSHAKE_FAILURE_PEERS_MAX);
        }
        assert_eq!(limiter.len(), HANDSHAKE_FAILURE_PEERS_MAX);
        // ...and was forgotten to make room: one more failure is its first.
        assert!(!limiter.failed(ip(0), now));
        assert_eq!(limiter.check(ip(0), now), Verdict::Admit);
        assert_eq!(limiter.len(), HANDSHAKE_FAILURE_PEERS_MAX);
    }
}
