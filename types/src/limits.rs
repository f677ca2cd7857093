//! Every bound on user input, in one place. Each is checked at the edge that
//! receives input and named in the error that refuses it; nothing is ever
//! silently truncated.

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Longest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most keys one transaction may read plus write.
pub const TXN_KEYS_MAX: usize = 1024;
/// Most bytes of keys and values one transaction may carry.
pub const TXN_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Length of a transaction id, exactly.
pub const TXN_ID_BYTES: usize = 16;
/// Most keys one Get may ask for.
pub const GET_KEYS_MAX: usize = TXN_KEYS_MAX;
/// Most items one Scan may return.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// How long a shard keeps the in-memory read hold a read-only transaction
/// over several groups takes while it is validated. A hold older than this
/// no longer blocks writers.
pub const READ_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// The largest staleness bound a STALE read may ask for; past it (and at
/// zero) the read is refused as INVALID_ARGUMENT: a bound this loose is a
/// mistake, not a policy.
pub const STALENESS_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest gRPC message either side accepts.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

// A transaction at its limits must fit in one message, with room for framing.
const _: () = assert!(TXN_BYTES_MAX + TXN_KEYS_MAX * 64 < MESSAGE_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX <= TXN_BYTES_MAX);
const _: () = assert!(GET_KEYS_MAX * KEY_BYTES_MAX < MESSAGE_BYTES_MAX);
