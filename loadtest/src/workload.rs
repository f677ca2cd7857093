//! Workloads: what one iteration asks the target to do.
//!
//! Every iteration is one [`TxnSpec`]: the keys to read, then what to write
//! given the values read ([`TxnSpec::writes`], a pure function). Every
//! target runs a spec the same way — read the keys, compute the writes,
//! commit them only if nothing read has changed — so the targets are
//! measured on the same work. A spec that must be retried is run again from
//! its reads, never by re-sending old writes.
//!
//! Values: counters and balances are an `i64` (little-endian) padded with
//! zeros to `--value-size`; list-append lists are text (`1,2,3`); YCSB
//! updates are random bytes of `--value-size`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use trellis_checker::Mop;
use trellis_checker::bank::BankMop;

/// Most keys a run may spread over (the Zipfian constant is computed over
/// all of them at start-up).
pub const KEYS_MAX: u64 = 100_000_000;
/// Keys when `--keys` is not given (bank and append use their own).
pub const KEYS_DEFAULT: u64 = 100_000;
/// Default `--value-size`, bytes.
pub const VALUE_SIZE_DEFAULT: usize = 100;
/// Smallest `--value-size`: a counter or balance is 8 bytes.
pub const VALUE_SIZE_MIN: usize = 8;
/// Largest `--value-size` (Trellis's VALUE_BYTES_MAX).
pub const VALUE_SIZE_MAX: usize = trellis_types::limits::VALUE_BYTES_MAX;
/// Accounts of the bank workload when `--keys` is not given.
pub const BANK_ACCOUNTS_DEFAULT: u64 = 8;
/// Most accounts of the bank workload: a full read reads them all.
pub const BANK_ACCOUNTS_MAX: u64 = 256;
/// Balance each account starts with.
pub const BANK_BALANCE_INITIAL: i64 = 100;
/// Largest amount one transfer moves.
pub const TRANSFER_AMOUNT_MAX: i64 = 5;
/// Keys of the append workload when `--keys` is not given: few, so that
/// transactions meet and the checker has orders to compare.
pub const APPEND_KEYS_DEFAULT: u64 = 64;
/// Most micro-ops in one list-append transaction.
pub const APPEND_MOPS_MAX: usize = 4;
/// Percent of bank iterations that read every account (the rest transfer).
pub const BANK_READ_PERCENT: u32 = 10;

/// The workloads of `--workload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Single-key read-modify-write (increment a counter), version-checked.
    W1Rmw,
    /// Move an amount between two accounts (two keys; usually two groups).
    W2Transfer,
    /// Strong single-key read.
    W3Read,
    /// YCSB A: 50% read, 50% update (blind write).
    YcsbA,
    /// YCSB B: 95% read, 5% update.
    YcsbB,
    /// YCSB C: 100% read.
    YcsbC,
    /// YCSB F: 50% read, 50% read-modify-write.
    YcsbF,
    /// Elle-style list-append: appends of unique values and whole-list reads.
    Append,
    /// Transfers between a few accounts and full reads; the total must hold.
    Bank,
}

/// Every workload with its name, in `--help` order.
pub const KINDS: &[(&str, Kind)] = &[
    ("w1-rmw", Kind::W1Rmw),
    ("w2-transfer", Kind::W2Transfer),
    ("w3-read", Kind::W3Read),
    ("ycsb-a", Kind::YcsbA),
    ("ycsb-b", Kind::YcsbB),
    ("ycsb-c", Kind::YcsbC),
    ("ycsb-f", Kind::YcsbF),
    ("append", Kind::Append),
    ("bank", Kind::Bank),
];

impl Kind {
    pub fn parse(name: &str) -> Result<Kind, String> {
        KINDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown workload `{name}`; choose one of {}",
                    names.join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .expect("every kind is in KINDS")
    }

    /// Keys when `--keys` is not given.
    pub fn default_keys(self) -> u64 {
        match self {
            Kind::Bank => BANK_ACCOUNTS_DEFAULT,
            Kind::Append => APPEND_KEYS_DEFAULT,
            _ => KEYS_DEFAULT,
        }
    }

    /// Whether its histories go to the checker (`--history`).
    pub fn has_history(self) -> bool {
        matches!(self, Kind::Append | Kind::Bank)
    }
}

/// YCSB's Zipfian generator (Gray et al., "Quickly generating billion-record
/// synthetic databases"): rank 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// Over `n` items with exponent `theta` in (0, 1).
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let zeta = |count: u64| {
            (1..=count)
                .map(|i| 1.0 / (i as f64).powf(theta))
                .sum::<f64>()
        };
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let eta = if n <= 2 {
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// A rank in `0..n`.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

/// Picks key indexes: uniform, or Zipfian with the popular ranks scattered
/// over the key space (a bijection, so hot keys land on different groups).
#[derive(Debug, Clone)]
pub struct KeyChooser {
    n: u64,
    zipf: Option<Zipfian>,
}

/// Multiplier of the rank scattering: a prime above [`KEYS_MAX`], so it is
/// coprime with every key count and `rank × P mod n` is a bijection.
const SCATTER_PRIME: u64 = 2_654_435_761;
const _: () = assert!(SCATTER_PRIME > KEYS_MAX);

impl KeyChooser {
    pub fn new(n: u64, zipf: Option<f64>) -> KeyChooser {
        KeyChooser {
            n,
            zipf: zipf.map(|theta| Zipfian::new(n, theta)),
        }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.n),
            Some(z) => {
                let rank = z.sample(rng);
                ((u128::from(rank) * u128::from(SCATTER_PRIME)) % u128::from(self.n)) as u64
            }
        }
    }

    /// Two different keys (`n` must be 2 or more).
    pub fn pick_two(&self, rng: &mut impl Rng) -> (u64, u64) {
        let a = self.pick(rng);
        let mut b = self.pick(rng);
        // Bounded: after a few Zipfian collisions take a uniform other key.
        for _ in 0..8 {
            if b != a {
                return (a, b);
            }
            b = self.pick(rng);
        }
        (a, (a + 1 + rng.random_range(0..self.n - 1)) % self.n)
    }
}

/// What a transaction writes, given what it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Reads only.
    Read,
    /// `reads[0]`'s counter + 1.
    Increment,
    /// `reads[0]` − amount, `reads[1]` + amount.
    Transfer { amount: i64 },
    /// Blind writes (no reads).
    Put { writes: Writes },
    /// List-append micro-ops; `keys[i]` is the index of `reads[i]`.
    ListAppend { mops: Vec<Mop>, keys: Vec<u64> },
    /// Bank transfer between accounts `reads[0]` and `reads[1]`.
    BankTransfer { from: u64, to: u64, amount: i64 },
    /// Bank read of every account (`reads` in account order).
    BankRead,
    /// Test-only (the `broken-bank://` target): a transfer that debits and
    /// never credits, to prove the bank check catches a lost write.
    BankLeak { from: u64, to: u64, amount: i64 },
}

/// One iteration's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnSpec {
    /// Keys to read, in order, before writing.
    pub reads: Vec<Vec<u8>>,
    pub op: Op,
    /// Counters and balances are padded to this many bytes.
    pub value_size: usize,
}

/// A spec whose writes cannot be computed from what was read (a value of
/// the wrong shape: the key space is shared with something else).
pub type SpecError = String;

/// Keys and the values to write to them.
pub type Writes = Vec<(Vec<u8>, Vec<u8>)>;

/// List-append micro-ops run over the lists read.
#[derive(Debug, Default)]
struct Appended {
    /// The micro-ops with their read results.
    done: Vec<Mop>,
    /// Every list (in `reads` order) after them.
    lists: Vec<Vec<u64>>,
    /// Which lists changed.
    dirty: Vec<usize>,
}

/// The micro-ops of one history line.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryMops {
    Append(Vec<Mop>),
    Bank(Vec<BankMop>),
}

/// Encodes a counter or balance, padded to `size`.
pub fn encode_i64(n: i64, size: usize) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.resize(size.max(8), 0);
    v
}

fn decode_i64(key: &[u8], value: Option<&Vec<u8>>) -> Result<i64, SpecError> {
    match value {
        None => Ok(0),
        Some(v) if v.len() >= 8 => Ok(i64::from_le_bytes(
            v[..8].try_into().expect("8 bytes checked above"),
        )),
        Some(v) => Err(format!(
            "value of {} is {} bytes, not a counter (use a fresh --key-prefix)",
            String::from_utf8_lossy(key),
            v.len()
        )),
    }
}

fn decode_list(key: &[u8], value: Option<&Vec<u8>>) -> Result<Vec<u64>, SpecError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    if v.is_empty() {
        return Ok(Vec::new());
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.split(',').map(|x| x.parse().ok()).collect())
        .ok_or_else(|| {
            format!(
                "value of {} is not a list (use a fresh --key-prefix)",
                String::from_utf8_lossy(key)
            )
        })
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

impl TxnSpec {
    /// Whether the transaction writes nothing whatever it reads.
    pub fn is_read_only(&self) -> bool {
        match &self.op {
            Op::Read | Op::BankRead => true,
            Op::ListAppend { mops, .. } => !mops.iter().any(|m| matches!(m, Mop::Append { .. })),
            _ => false,
        }
    }

    /// The keys it writes (known before reading).
    pub fn write_keys(&self) -> Vec<&[u8]> {
        match &self.op {
            Op::Read | Op::BankRead => Vec::new(),
            Op::Increment => self.reads.iter().take(1).map(Vec::as_slice).collect(),
            Op::Transfer { .. } | Op::BankTransfer { .. } => {
                self.reads.iter().map(Vec::as_slice).collect()
            }
            Op::BankLeak { .. } => self.reads.iter().take(1).map(Vec::as_slice).collect(),
            Op::Put { writes } => writes.iter().map(|(k, _)| k.as_slice()).collect(),
            Op::ListAppend { mops, keys } => keys
                .iter()
                .zip(&self.reads)
                .filter(|(k, _)| {
                    mops.iter()
                        .any(|m| matches!(m, Mop::Append { key, .. } if key == *k))
                })
                .map(|(_, r)| r.as_slice())
                .collect(),
        }
    }

    /// The writes, given `values[i]` read for `reads[i]` (`None`: absent).
    pub fn writes(&self, values: &[Option<Vec<u8>>]) -> Result<Writes, SpecError> {
        let value = |i: usize| values.get(i).and_then(Option::as_ref);
        let key = |i: usize| self.reads[i].clone();
        Ok(match &self.op {
            Op::Read | Op::BankRead => Vec::new(),
            Op::Increment => {
                let n = decode_i64(&self.reads[0], value(0))?;
                vec![(key(0), encode_i64(n.wrapping_add(1), self.value_size))]
            }
            Op::Transfer { amount } | Op::BankTransfer { amount, .. } => {
                let a = decode_i64(&self.reads[0], value(0))?;
                let b = decode_i64(&self.reads[1], value(1))?;
                vec![
                    (key(0), encode_i64(a.wrapping_sub(*amount), self.value_size)),
                    (key(1), encode_i64(b.wrapping_add(*amount), self.value_size)),
                ]
            }
            Op::BankLeak { amount, .. } => {
                let a = decode_i64(&self.reads[0], value(0))?;
                vec![(key(0), encode_i64(a.wrapping_sub(*amount), self.value_size))]
            }
            Op::Put { writes } => writes.clone(),
            Op::ListAppend { .. } => {
                let Appended { lists, dirty, .. } = self.run_appends(values)?;
                dirty
                    .into_iter()
                    .map(|i| (key(i), encode_list(&lists[i])))
                    .collect()
            }
        })
    }

    /// Runs list-append micro-ops over the lists read.
    fn run_appends(&self, values: &[Option<Vec<u8>>]) -> Result<Appended, SpecError> {
        let Op::ListAppend { mops, keys } = &self.op else {
            return Ok(Default::default());
        };
        let index: HashMap<u64, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let mut lists = self
            .reads
            .iter()
            .enumerate()
            .map(|(i, k)| decode_list(k, values.get(i).and_then(Option::as_ref)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut dirty = Vec::new();
        let mut done = Vec::with_capacity(mops.len());
        for mop in mops {
            let i = index[&mop.key()];
            match mop {
                Mop::Append { value, .. } => {
                    lists[i].push(*value);
                    if !dirty.contains(&i) {
                        dirty.push(i);
                    }
                    done.push(mop.clone());
                }
                Mop::Read { key, .. } => done.push(Mop::Read {
                    key: *key,
                    value: Some(lists[i].clone()),
                }),
                // Not generated by the load tester; recorded as read.
                Mop::StaleRead { key, bound_ns, .. } => done.push(Mop::StaleRead {
                    key: *key,
                    bound_ns: *bound_ns,
                    value: Some(lists[i].clone()),
                }),
            }
        }
        Ok(Appended { done, lists, dirty })
    }

    /// The history micro-ops: of the invocation (`values` None), or of the
    /// committed completion with what was read.
    pub fn history(&self, values: Option<&[Option<Vec<u8>>]>) -> Option<HistoryMops> {
        match &self.op {
            Op::ListAppend { mops, .. } => Some(HistoryMops::Append(match values {
                None => mops.clone(),
                Some(values) => self.run_appends(values).ok()?.done,
            })),
            Op::BankTransfer { from, to, amount } | Op::BankLeak { from, to, amount } => {
                Some(HistoryMops::Bank(vec![BankMop::Transfer {
                    from: *from,
                    to: *to,
                    amount: u64::try_from(*amount).unwrap_or(0),
                }]))
            }
            Op::BankRead => Some(HistoryMops::Bank(vec![BankMop::Read {
                balances: match values {
                    None => None,
                    Some(values) => Some(
                        self.reads
                            .iter()
                            .enumerate()
                            .map(|(i, k)| {
                                decode_i64(k, values.get(i).and_then(Option::as_ref))
                                    .map(|b| (i as u64, b))
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .ok()?,
                    ),
                },
            }])),
            _ => None,
        }
    }
}

/// A workload with its key space.
#[derive(Debug)]
pub struct Workload {
    pub kind: Kind,
    pub keys: u64,
    pub value_size: usize,
    pub prefix: String,
    chooser: KeyChooser,
    /// The next list-append value: unique over the run.
    next_value: AtomicU64,
}

impl Workload {
    pub fn new(
        kind: Kind,
        keys: u64,
        value_size: usize,
        zipf: Option<f64>,
        prefix: String,
    ) -> Workload {
        Workload {
            kind,
            keys,
            value_size,
            prefix,
            chooser: KeyChooser::new(keys, zipf),
            next_value: AtomicU64::new(1),
        }
    }

    /// The key of index `i`: `PREFIX:0000000042`.
    pub fn key(&self, i: u64) -> Vec<u8> {
        format!("{}:{i:010}", self.prefix).into_bytes()
    }

    fn spec(&self, reads: Vec<Vec<u8>>, op: Op) -> TxnSpec {
        TxnSpec {
            reads,
            op,
            value_size: self.value_size,
        }
    }

    fn random_value(&self, rng: &mut impl Rng) -> Vec<u8> {
        let mut v = vec![0u8; self.value_size];
        rng.fill(&mut v[..]);
        v
    }

    /// The next iteration's transaction.
    pub fn next(&self, rng: &mut impl Rng) -> TxnSpec {
        let read = |rng: &mut _| {
            let k = self.key(self.chooser.pick(rng));
            self.spec(vec![k], Op::Read)
        };
        let update = |rng: &mut _| {
            let k = self.key(self.chooser.pick(rng));
            let v = self.random_value(rng);
            self.spec(
                Vec::new(),
                Op::Put {
                    writes: vec![(k, v)],
                },
            )
        };
        let rmw = |rng: &mut _| self.spec(vec![self.key(self.chooser.pick(rng))], Op::Increment);
        match self.kind {
            Kind::W1Rmw => rmw(rng),
            Kind::W2Transfer => {
                let (a, b) = self.chooser.pick_two(rng);
                let amount = rng.random_range(1..=TRANSFER_AMOUNT_MAX);
                self.spec(vec![self.key(a), self.key(b)], Op::Transfer { amount })
            }
            Kind::W3Read | Kind::YcsbC => read(rng),
            Kind::YcsbA => {
                if rng.random_bool(0.5) {
                    read(rng)
                } else {
                    update(rng)
                }
            }
            Kind::YcsbB => {
                if rng.random_bool(0.95) {
                    read(rng)
                } else {
                    update(rng)
                }
            }
            Kind::YcsbF => {
                if rng.random_bool(0.5) {
                    read(rng)
                } else {
                    rmw(rng)
                }
            }
            Kind::Append => {
                let count = rng.random_range(1..=APPEND_MOPS_MAX);
                let mut mops = Vec::with_capacity(count);
                let mut keys: Vec<u64> = Vec::new();
                for _ in 0..count {
                    let key = self.chooser.pick(rng);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                    mops.push(if rng.random_bool(0.5) {
                        Mop::Append {
                            key,
                            value: self.next_value.fetch_add(1, Ordering::Relaxed),
                        }
                    } else {
                        Mop::Read { key, value: None }
                    });
                }
                let reads = keys.iter().map(|k| self.key(*k)).collect();
                self.spec(reads, Op::ListAppend { mops, keys })
            }
            Kind::Bank => {
                if rng.random_range(0..100) < BANK_READ_PERCENT {
                    self.bank_read()
                } else {
                    let (from, to) = self.chooser.pick_two(rng);
                    let amount = rng.random_range(1..=TRANSFER_AMOUNT_MAX);
                    self.spec(
                        vec![self.key(from), self.key(to)],
                        Op::BankTransfer { from, to, amount },
                    )
                }
            }
        }
    }

    /// Prepares `spec` for another attempt: list-append values must be
    /// unique over the whole history, failed attempts included, so appends
    /// get fresh values. Other specs are run again as they are.
    pub fn refresh(&self, spec: &mut TxnSpec) {
        if let Op::ListAppend { mops, .. } = &mut spec.op {
            for mop in mops {
                if let Mop::Append { value, .. } = mop {
                    *value = self.next_value.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A read of every bank account.
    pub fn bank_read(&self) -> TxnSpec {
        self.spec((0..self.keys).map(|i| self.key(i)).collect(), Op::BankRead)
    }

    /// What must be written before the run: the bank's opening balances.
    pub fn setup(&self) -> Option<TxnSpec> {
        (self.kind == Kind::Bank).then(|| {
            let writes = (0..self.keys)
                .map(|i| {
                    (
                        self.key(i),
                        encode_i64(BANK_BALANCE_INITIAL, self.value_size),
                    )
                })
                .collect();
            self.spec(Vec::new(), Op::Put { writes })
        })
    }

    /// What every bank read must sum to.
    pub fn bank_total(&self) -> i64 {
        BANK_BALANCE_INITIAL * self.keys as i64
    }
}

/// The sum of a bank read's balances.
pub fn bank_sum(values: &[Option<Vec<u8>>]) -> Result<i64, SpecError> {
    values
        .iter()
        .map(|v| decode_i64(b"account", v.as_ref()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let z = Zipfian::new(1000, 0.99);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts[0] > counts[10] && counts[10] > counts[500],
            "{:?}",
            &counts[..12]
        );
        assert!(counts[0] > 10_000, "rank 0 gets over 10%: {}", counts[0]);
        // Scattering is a bijection: every index is reachable exactly once.
        let chooser = KeyChooser::new(1000, None);
        let mut seen: Vec<u64> = (0..1000u64)
            .map(|r| ((u128::from(r) * u128::from(SCATTER_PRIME)) % 1000) as u64)
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
        let (a, b) = chooser.pick_two(&mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn rmw_and_transfer_compute_from_what_was_read() {
        let w = Workload::new(Kind::W2Transfer, 10, 16, None, "t".into());
        let mut rng = StdRng::seed_from_u64(1);
        let spec = w.next(&mut rng);
        let Op::Transfer { amount } = spec.op else {
            panic!("{spec:?}")
        };
        let writes = spec
            .writes(&[Some(encode_i64(50, 16)), None])
            .expect("computes");
        assert_eq!(writes[0].1, encode_i64(50 - amount, 16));
        assert_eq!(writes[1].1, encode_i64(amount, 16));
        assert_eq!(writes[0].1.len(), 16, "padded to the value size");
        let rmw = TxnSpec {
            reads: vec![b"k".to_vec()],
            op: Op::Increment,
            value_size: 8,
        };
        assert_eq!(
            rmw.writes(&[Some(encode_i64(41, 8))]).expect("computes")[0].1,
            encode_i64(42, 8)
        );
        let err = rmw
            .writes(&[Some(b"abc".to_vec())])
            .expect_err("not a counter");
        assert!(err.contains("not a counter"), "{err}");
    }

    #[test]
    fn list_append_reads_its_own_appends() {
        let spec = TxnSpec {
            reads: vec![b"a".to_vec(), b"b".to_vec()],
            op: Op::ListAppend {
                mops: vec![
                    Mop::Append { key: 1, value: 9 },
                    Mop::Read {
                        key: 1,
                        value: None,
                    },
                    Mop::Read {
                        key: 2,
                        value: None,
                    },
                ],
                keys: vec![1, 2],
            },
            value_size: 8,
        };
        let values = [Some(b"3,4".to_vec()), None];
        assert_eq!(
            spec.writes(&values).expect("computes"),
            vec![(b"a".to_vec(), b"3,4,9".to_vec())]
        );
        assert_eq!(spec.write_keys(), vec![b"a".as_slice()]);
        assert_eq!(
            spec.history(Some(&values)),
            Some(HistoryMops::Append(vec![
                Mop::Append { key: 1, value: 9 },
                Mop::Read {
                    key: 1,
                    value: Some(vec![3, 4, 9])
                },
                Mop::Read {
                    key: 2,
                    value: Some(vec![])
                },
            ]))
        );
        assert!(!spec.is_read_only());
        let w = Workload::new(Kind::Append, 4, 8, None, "a".into());
        let mut again = spec.clone();
        w.refresh(&mut again);
        let Op::ListAppend { mops, .. } = &again.op else {
            panic!("{again:?}")
        };
        assert!(
            matches!(mops[0], Mop::Append { key: 1, value } if value != 9),
            "a retried append gets a fresh value: {mops:?}"
        );
    }

    #[test]
    fn bank_setup_sums_to_the_total() {
        let w = Workload::new(Kind::Bank, 8, 8, None, "bank".into());
        let setup = w.setup().expect("bank has a setup");
        let Op::Put { writes } = &setup.op else {
            panic!("{setup:?}")
        };
        let values: Vec<Option<Vec<u8>>> = writes.iter().map(|(_, v)| Some(v.clone())).collect();
        assert_eq!(bank_sum(&values), Ok(w.bank_total()));
        assert_eq!(w.bank_read().reads.len(), 8);
    }
}
