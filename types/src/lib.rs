//! The vocabulary of Trellis, shared by every crate: domain types (`Key`,
//! `Version`, `TxnId`, `Lsn`, `Slot`, `GroupId`, `MapEpoch`, `ClusterId`), the limits every
//! edge enforces, the key → slot hash and the slot → group ring.
//!
//! # Layout
//! - [`limits`]: every bound on user input, as named constants.
//! - [`slot_of`]: the stable hash that places a key in a slot; [`SlotSet`].
//! - [`placement`]: the consistent-hash ring that assigns slots to groups
//!   ([`placement::assign_slots`]).
//! - [`validate`]: input checks shared by the coordinator and the shard edge.
//! - [`failpoint`]: which failpoints `TRELLIS_FAILPOINTS` arms.
//! - [`fail_stop`]: why a shard fail-stopped (the `cause` of its note,
//!   its report and the metrics).
//! - [`rng`]: the randomness every process draws from, seedable per thread
//!   for the simulator.
//! - [`clock`]: the wall clock (Unix milliseconds), simulated per thread
//!   for the simulator.
//!
//! This crate never does IO and knows nothing of gRPC: wire types are
//! converted to these at the service edges.

pub mod clock;
pub mod fail_stop;
pub mod failpoint;
pub mod limits;
pub mod placement;
pub mod rng;
pub mod validate;

use std::fmt;

/// A key: opaque bytes, 1 to [`limits::KEY_BYTES_MAX`] long.
pub type Key = Vec<u8>;
/// A value: opaque bytes, 0 to [`limits::VALUE_BYTES_MAX`] long.
pub type Value = Vec<u8>;

/// A key's version. `0` means absent; every committed write gives the key a
/// strictly larger version. On a shard the version of a write is the LSN of
/// the log record that applied it.
pub type Version = u64;

/// Position of a record in a shard's write-ahead log; starts at 1.
pub type Lsn = u64;

/// Identifies a shard group.
pub type GroupId = u64;

/// Version of the slot → group map. Every request to a shard carries it.
pub type MapEpoch = u64;

/// A slot: `slot_of(key)`, in `0..SLOTS`.
pub type Slot = u32;

/// One replica of a group's configuration, as the catalog stores it and the
/// coordinator and the shards both read it (`members[0]` of a group is its
/// primary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `host:port` of its shard gRPC service.
    pub addr: String,
    /// Process id it reported when it registered (for `trellis status`).
    pub pid: u32,
    /// Part of the group's configuration: SYNC writes wait for it, the
    /// primary's lease needs it, it may be promoted. `false` for a learner
    /// still catching up.
    pub in_sync: bool,
}

/// Number of slots keys hash into. Fixed for the life of a cluster.
pub const SLOTS: u32 = 4096;

/// The slot that owns `key`. Stable across versions and machines: it must
/// never change, or data would be looked for in the wrong group.
pub fn slot_of(key: &[u8]) -> Slot {
    // xxh3 with the default seed is specified and portable.
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(SLOTS)) as Slot
}

/// A transaction id: 16 bytes chosen by the client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(pub [u8; limits::TXN_ID_BYTES]);

impl TxnId {
    /// Parses wire bytes; anything but exactly 16 bytes is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, validate::InputError> {
        let array: [u8; limits::TXN_ID_BYTES] = bytes
            .try_into()
            .map_err(|_| validate::InputError::TxnIdLength { got: bytes.len() })?;
        Ok(TxnId(array))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxnId({})", hex::encode(self.0))
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A cluster's identity: drawn at random once, when its catalog is
/// created, and never changed. Every change-feed cursor carries it, so a
/// cursor of one cluster is refused by another even when both have the
/// same groups. 1 to 2^63 - 1 (it is stored in a signed 64-bit column;
/// 0 on the wire means "no cluster"). Written as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(u64);

/// Hex digits of a [`ClusterId`]'s text form.
pub const CLUSTER_ID_HEX_DIGITS: usize = 16;

impl ClusterId {
    /// `None` for 0 and for values past `i64::MAX`, which no catalog draws.
    pub fn new(id: u64) -> Option<ClusterId> {
        (id != 0 && i64::try_from(id).is_ok()).then_some(ClusterId(id))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$x}", self.0, width = CLUSTER_ID_HEX_DIGITS)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = String;

    /// Exactly 16 hex digits, as [`Display`](fmt::Display) writes them and
    /// `trellis status` shows them.
    fn from_str(text: &str) -> Result<ClusterId, String> {
        if text.len() != CLUSTER_ID_HEX_DIGITS || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "cluster id {text:?} is not {CLUSTER_ID_HEX_DIGITS} hex digits \
                 (`trellis status` shows the cluster's)"
            ));
        }
        let id = u64::from_str_radix(text, 16).map_err(|e| format!("cluster id {text:?}: {e}"))?;
        ClusterId::new(id).ok_or_else(|| {
            format!("cluster id {text:?} is out of range: 0000000000000001 to 7fffffffffffffff")
        })
    }
}

/// A set of owned slots, as a bitmap over `0..SLOTS`.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Vec<u64>,
}

impl SlotSet {
    pub fn empty() -> Self {
        SlotSet {
            bits: vec![0; (SLOTS as usize).div_ceil(64)],
        }
    }

    pub fn all() -> Self {
        let mut set = Self::empty();
        for slot in 0..SLOTS {
            set.insert(slot);
        }
        set
    }

    pub fn insert(&mut self, slot: Slot) {
        assert!(slot < SLOTS, "slot {slot} out of range");
        self.bits[slot as usize / 64] |= 1 << (slot % 64);
    }

    pub fn contains(&self, slot: Slot) -> bool {
        slot < SLOTS && self.bits[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    pub fn len(&self) -> u32 {
        self.bits.iter().map(|word| word.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bitmap as bytes: bit `s % 8` of byte `s / 8` is slot `s`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }

    /// The inverse of [`SlotSet::to_bytes`]; refuses a bitmap of the wrong
    /// length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let want = (SLOTS as usize).div_ceil(8);
        if bytes.len() != want {
            return Err(format!(
                "slot bitmap of {} bytes, expected {want}",
                bytes.len()
            ));
        }
        Ok(SlotSet {
            bits: bytes
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
        })
    }

    /// Parses `all`, or a comma-separated list of slots and inclusive ranges
    /// such as `0-1023,2048,3000-3100`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "all" {
            return Ok(Self::all());
        }
        let mut set = Self::empty();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let parse = |s: &str| -> Result<Slot, String> {
                let slot: Slot = s
                    .parse()
                    .map_err(|_| format!("`{s}` is not a slot number"))?;
                if slot >= SLOTS {
                    return Err(format!("slot {slot} is out of range 0..{SLOTS}"));
                }
                Ok(slot)
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("slot range `{part}` runs backwards"));
            }
            for slot in lo..=hi {
                set.insert(slot);
            }
        }
        if set.is_empty() {
            return Err("no slots given (use `all` or ranges like 0-1023)".to_string());
        }
        Ok(set)
    }
}

impl fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotSet({} slots)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_prints_and_parses_back() {
        let id = ClusterId::new(0x1f).expect("in range");
        assert_eq!(id.to_string(), "000000000000001f");
        assert_eq!("000000000000001F".parse::<ClusterId>(), Ok(id));
        assert_eq!(ClusterId::new(0), None);
        assert_eq!(ClusterId::new(u64::MAX), None);
        assert!(
            "1f".parse::<ClusterId>()
                .unwrap_err()
                .contains("16 hex digits")
        );
        assert!(
            "0000000000000000"
                .parse::<ClusterId>()
                .unwrap_err()
                .contains("out of range")
        );
        assert!("8000000000000000".parse::<ClusterId>().is_err());
        assert!("00000000000000g1".parse::<ClusterId>().is_err());
    }

    #[test]
    fn slot_hash_is_stable() {
        // These values are part of the on-disk and on-wire contract: a change
        // here would route existing keys to the wrong group.
        assert_eq!(
            slot_of(b""),
            (xxhash_rust::xxh3::xxh3_64(b"") % 4096) as u32
        );
        let a = slot_of(b"user:1");
        assert_eq!(a, slot_of(b"user:1"));
        assert!(a < SLOTS);
    }

    #[test]
    fn slots_spread_evenly() {
        let mut counts = vec![0u32; SLOTS as usize];
        for i in 0..(SLOTS * 64) {
            counts[slot_of(format!("key:{i}").as_bytes()) as usize] += 1;
        }
        let max = *counts.iter().max().expect("non-empty");
        let min = *counts.iter().min().expect("non-empty");
        assert!(
            max < 64 * 2 && min > 64 / 3,
            "uneven spread: min {min} max {max}"
        );
    }

    #[test]
    fn slot_set_parses_ranges_and_rejects_nonsense() {
        let set = SlotSet::parse("0-9, 20,4095").expect("valid");
        assert_eq!(set.len(), 12);
        assert!(set.contains(20) && set.contains(4095) && !set.contains(10));
        assert_eq!(SlotSet::parse("all").expect("valid").len(), SLOTS);
        assert!(SlotSet::parse("9-1").is_err());
        assert!(SlotSet::parse("4096").is_err());
        assert!(SlotSet::parse("x").is_err());
        assert!(SlotSet::parse("").is_err());
    }

    #[test]
    fn slot_set_bytes_round_trip() {
        let set = SlotSet::parse("1,7,8,100-200,4095").expect("valid");
        let back = SlotSet::from_bytes(&set.to_bytes()).expect("round trip");
        assert_eq!(back, set);
        assert!(back.contains(8) && !back.contains(9));
        assert!(SlotSet::from_bytes(&[0; 3]).is_err());
    }

    #[test]
    fn txn_id_must_be_16_bytes() {
        assert!(TxnId::from_bytes(&[1; 16]).is_ok());
        let err = TxnId::from_bytes(&[1; 15]).expect_err("15 bytes");
        assert!(err.to_string().contains("16"), "{err}");
    }
}
