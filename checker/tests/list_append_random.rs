//! Random list-append histories from a simulated strictly serializable
//! store must check Valid; the same histories with two reads' results
//! swapped, or two elements of one read swapped, must not. Histories with
//! stale reads served within their bound and with the session's own
//! writes must check Valid too; made staler than the bound, they must not.
//!
//! The simulator runs a few processes against one in-memory map of lists.
//! Each transaction is invoked, later applied atomically (or not: failed,
//! or timed out either way), later completed; the scheduler picks which
//! process moves next with a seeded SplitMix64, so every seed replays
//! exactly. Applying each transaction at one instant between its invocation
//! and completion makes the history strictly serializable by construction.
//! A stale transaction, applied at one instant `a`, returns for each key a
//! state the key held at some moment in `[invoke − bound, a]` that holds
//! the process's own applied appends: bounded-stale by construction.

use std::collections::{BTreeMap, BTreeSet};

use trellis_checker::history::{self, Outcome};
use trellis_checker::list_append::{self, Model};
use trellis_checker::{AnomalyClass, Mop, Op, OpKind, Verdict};

/// Transactions per generated history.
const TXNS: usize = 400;
/// Keys the transactions touch; few, so they conflict.
const KEYS: u64 = 6;
/// Micro-ops per transaction, at most.
const MOPS_MAX: u64 = 4;
/// Seeds tried per test.
const SEEDS: [u64; 4] = [1, 2, 0xdead_beef, 42];
/// Share of transactions that are stale when stale reads are on, percent.
const STALE_PERCENT: u64 = 30;
/// Largest staleness bound a stale read asks for; time advances 1–5 ns a
/// step, so this spans several transactions.
const STALE_BOUND_NS_MAX: u64 = 60;

/// SplitMix64 (Steele, Lea and Flood): tiny, seedable, good enough to
/// schedule a simulation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `percent`%.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Where a process is in its current transaction.
enum Stage {
    Idle,
    Invoked(Vec<Mop>),
    /// Applied (or not); the completion to record.
    Decided(OpKind, Vec<Mop>),
}

/// Generates a strictly serializable history. `processes == 1` gives a
/// serial history; more interleave invocation, application and completion.
fn generate(seed: u64, processes: u64) -> Vec<Op<Mop>> {
    generate_with(seed, processes, 0)
}

/// As [`generate`], with `stale_percent`% of transactions stale ones (0
/// draws no extra random numbers, so it gives [`generate`]'s histories).
fn generate_with(seed: u64, processes: u64, stale_percent: u64) -> Vec<Op<Mop>> {
    let mut rng = SplitMix64(seed);
    let mut lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // key → (time applied, length after) per transaction that appended to it
    let mut states: BTreeMap<u64, Vec<(u64, usize)>> = BTreeMap::new();
    // (process, key) → the key's length right after the process's last
    // applied transaction that appended to it
    let mut own_len: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    let mut invoked_ns: Vec<u64> = vec![0; processes as usize];
    let mut next_value = 1u64;
    let mut stages: Vec<Stage> = (0..processes).map(|_| Stage::Idle).collect();
    let mut invoked = 0usize;
    let mut time_ns = 0u64;
    let mut ops = Vec::new();

    loop {
        let busy = stages.iter().any(|s| !matches!(s, Stage::Idle));
        if invoked == TXNS && !busy {
            return ops;
        }
        time_ns += 1 + rng.below(5);
        let p = rng.below(processes) as usize;
        let stage = std::mem::replace(&mut stages[p], Stage::Idle);
        stages[p] = match stage {
            Stage::Idle if invoked < TXNS && stale_percent > 0 && rng.percent(stale_percent) => {
                invoked += 1;
                invoked_ns[p] = time_ns;
                let mops: Vec<Mop> = (0..=rng.below(2))
                    .map(|_| Mop::StaleRead {
                        key: rng.below(KEYS),
                        bound_ns: rng.below(STALE_BOUND_NS_MAX + 1),
                        value: None,
                    })
                    .collect();
                ops.push(Op::invoke(p as u64, time_ns, mops.clone()));
                Stage::Invoked(mops)
            }
            Stage::Idle if invoked < TXNS => {
                invoked += 1;
                invoked_ns[p] = time_ns;
                let mops: Vec<Mop> = (0..=rng.below(MOPS_MAX))
                    .map(|_| {
                        let key = rng.below(KEYS);
                        if rng.percent(50) {
                            Mop::Read { key, value: None }
                        } else {
                            next_value += 1;
                            Mop::Append {
                                key,
                                value: next_value,
                            }
                        }
                    })
                    .collect();
                ops.push(Op::invoke(p as u64, time_ns, mops.clone()));
                Stage::Invoked(mops)
            }
            Stage::Idle => Stage::Idle,
            Stage::Invoked(mops) => {
                // 10% fail, 5% time out without effect, 5% time out after
                // taking effect, the rest commit.
                let roll = rng.below(100);
                if roll < 15 {
                    let kind = if roll < 10 {
                        OpKind::Fail
                    } else {
                        OpKind::Info
                    };
                    Stage::Decided(kind, mops)
                } else {
                    let applied: Vec<Mop> = mops
                        .iter()
                        .map(|mop| match *mop {
                            Mop::Append { key, value } => {
                                lists.entry(key).or_default().push(value);
                                mop.clone()
                            }
                            Mop::Read { key, .. } => Mop::Read {
                                key,
                                value: Some(lists.get(&key).cloned().unwrap_or_default()),
                            },
                            Mop::StaleRead { key, bound_ns, .. } => {
                                let opens_ns = invoked_ns[p].saturating_sub(bound_ns);
                                let history = states.get(&key).map_or(&[][..], Vec::as_slice);
                                // The state at the window's opening, and every
                                // later one; none without the process's own
                                // appends.
                                let at_open = history
                                    .iter()
                                    .take_while(|&&(t, _)| t <= opens_ns)
                                    .last()
                                    .map_or(0, |&(_, len)| len);
                                let own = own_len.get(&(p, key)).copied().unwrap_or(0);
                                let mut choices: Vec<usize> = vec![at_open];
                                choices.extend(
                                    history
                                        .iter()
                                        .filter(|&&(t, _)| t > opens_ns)
                                        .map(|&(_, len)| len),
                                );
                                choices.retain(|&len| len >= own);
                                let len = choices[rng.below(choices.len() as u64) as usize];
                                let list = lists.get(&key).map_or(&[][..], Vec::as_slice);
                                Mop::StaleRead {
                                    key,
                                    bound_ns,
                                    value: Some(list[..len].to_vec()),
                                }
                            }
                        })
                        .collect();
                    let touched: BTreeSet<u64> = mops
                        .iter()
                        .filter_map(|mop| match *mop {
                            Mop::Append { key, .. } => Some(key),
                            _ => None,
                        })
                        .collect();
                    for key in touched {
                        let len = lists.get(&key).map_or(0, Vec::len);
                        states.entry(key).or_default().push((time_ns, len));
                        own_len.insert((p, key), len);
                    }
                    if roll < 20 {
                        Stage::Decided(OpKind::Info, mops)
                    } else {
                        Stage::Decided(OpKind::Ok, applied)
                    }
                }
            }
            Stage::Decided(kind, mops) => {
                ops.push(Op {
                    process: p as u64,
                    kind,
                    txn: mops,
                    time_ns,
                });
                Stage::Idle
            }
        };
    }
}

fn check(ops: &[Op<Mop>]) -> trellis_checker::Report {
    list_append::check(ops, Model::StrictSerializable).expect("generated histories are well formed")
}

#[test]
fn serial_histories_are_valid() {
    for seed in SEEDS {
        let ops = generate(seed, 1);
        assert!(ops.len() >= 2 * TXNS - 1, "every transaction completes");
        let report = check(&ops);
        assert_eq!(report.verdict, Verdict::Valid, "seed {seed}:\n{report}");
    }
}

#[test]
fn concurrent_histories_are_valid() {
    for seed in SEEDS {
        let ops = generate(seed, 5);
        let report = check(&ops);
        assert_eq!(report.verdict, Verdict::Valid, "seed {seed}:\n{report}");
    }
}

#[test]
fn generated_histories_round_trip_through_the_text_format() {
    let ops = generate(7, 5);
    let text = trellis_checker::format::write(&ops);
    assert_eq!(trellis_checker::format::parse::<Mop>(&text).unwrap(), ops);
}

/// Where a committed read sits: (index of its op in the history, index of
/// the micro-op).
type ReadAt = (usize, usize);

/// A committed read as the history recorded it.
struct SeenRead {
    at: ReadAt,
    list: Vec<u64>,
    invoke_ns: u64,
    complete_ns: u64,
}

/// Committed reads per key.
fn committed_reads(ops: &[Op<Mop>]) -> BTreeMap<u64, Vec<SeenRead>> {
    let txns = history::pair(ops).expect("generated histories pair");
    let mut reads: BTreeMap<u64, Vec<SeenRead>> = BTreeMap::new();
    for txn in txns.iter().filter(|t| t.outcome == Outcome::Committed) {
        let complete_index = txn
            .complete_index
            .expect("committed transactions completed");
        let complete_ns = txn.complete_ns.expect("committed transactions completed");
        for (m, mop) in txn.mops.iter().enumerate() {
            if let Mop::Read {
                key,
                value: Some(list),
            } = mop
            {
                reads.entry(*key).or_default().push(SeenRead {
                    at: (complete_index, m),
                    list: list.clone(),
                    invoke_ns: txn.invoke_ns,
                    complete_ns,
                });
            }
        }
    }
    reads
}

fn set_read(ops: &mut [Op<Mop>], (op, m): ReadAt, list: Vec<u64>) {
    let Mop::Read { value, .. } = &mut ops[op].txn[m] else {
        panic!("not a read")
    };
    *value = Some(list);
}

/// The transaction (completion op index) that appended `value` to `key`.
fn appender(ops: &[Op<Mop>], key: u64, value: u64) -> usize {
    let txns = history::pair(ops).expect("generated histories pair");
    let txn = txns
        .iter()
        .find(|t| t.mops.contains(&Mop::Append { key, value }))
        .expect("every read value was appended");
    txn.complete_index.unwrap_or(txn.invoke_index)
}

#[test]
fn swapping_two_reads_is_detected() {
    // Pick reads A and B of one key, A completed before B began, A's list a
    // strict prefix of B's, and the element right after A's list appended
    // by a third transaction W. Swapped, A sees W's append (W →wr A), A
    // precedes B in real time, and B misses it (B →rw W): a cycle.
    for seed in SEEDS {
        let mut ops = generate(seed, 5);
        let reads = committed_reads(&ops);
        let mut choice = None;
        'search: for (&key, rs) in &reads {
            for a in rs {
                for b in rs {
                    if a.complete_ns < b.invoke_ns
                        && a.list.len() < b.list.len()
                        && b.list.starts_with(&a.list)
                    {
                        let w = appender(&ops, key, b.list[a.list.len()]);
                        if w != a.at.0 && w != b.at.0 {
                            choice = Some((a.at, a.list.clone(), b.at, b.list.clone()));
                            break 'search;
                        }
                    }
                }
            }
        }
        let (a_at, a_list, b_at, b_list) = choice.expect("a long history has such a pair");
        set_read(&mut ops, a_at, b_list);
        set_read(&mut ops, b_at, a_list);
        let report = check(&ops);
        assert_eq!(report.verdict, Verdict::Invalid, "seed {seed}:\n{report}");
        assert!(
            report
                .classes()
                .iter()
                .any(|c| matches!(c, AnomalyClass::Cycle(..))),
            "seed {seed}: expected a cycle:\n{report}"
        );
    }
}

#[test]
fn swapping_two_elements_of_a_read_is_detected() {
    // Swap the first two elements of one read of a key that another read
    // also saw at least two elements of: the two can no longer agree.
    for seed in SEEDS {
        let mut ops = generate(seed, 5);
        let reads = committed_reads(&ops);
        let (at, mut list) = reads
            .values()
            .find_map(|rs| {
                let long: Vec<&SeenRead> = rs.iter().filter(|r| r.list.len() >= 2).collect();
                (long.len() >= 2).then(|| (long[0].at, long[0].list.clone()))
            })
            .expect("a long history has two reads of two elements on one key");
        list.swap(0, 1);
        set_read(&mut ops, at, list);
        let report = check(&ops);
        assert_eq!(report.verdict, Verdict::Invalid, "seed {seed}:\n{report}");
        assert_eq!(
            report.classes(),
            BTreeSet::from([AnomalyClass::IncompatibleOrder]),
            "seed {seed}:\n{report}"
        );
    }
}

/// Committed stale reads, per key, with their bounds.
fn committed_stale_reads(ops: &[Op<Mop>]) -> Vec<(SeenRead, u64, u64)> {
    let txns = history::pair(ops).expect("generated histories pair");
    let mut reads = Vec::new();
    for txn in txns.iter().filter(|t| t.outcome == Outcome::Committed) {
        for (m, mop) in txn.mops.iter().enumerate() {
            if let Mop::StaleRead {
                key,
                bound_ns,
                value: Some(list),
            } = mop
            {
                let read = SeenRead {
                    at: (txn.complete_index.expect("committed"), m),
                    list: list.clone(),
                    invoke_ns: txn.invoke_ns,
                    complete_ns: txn.complete_ns.expect("committed"),
                };
                reads.push((read, *key, *bound_ns));
            }
        }
    }
    reads
}

#[test]
fn histories_with_bounded_stale_reads_are_valid() {
    // Stale reads served within their bound, never missing the session's
    // own writes, give no anomaly; and they do return old states, or this
    // test would prove nothing about staleness.
    for seed in SEEDS {
        for processes in [1, 5] {
            let ops = generate_with(seed, processes, STALE_PERCENT);
            let report = check(&ops);
            assert_eq!(report.verdict, Verdict::Valid, "seed {seed}:\n{report}");
            let stale = committed_stale_reads(&ops);
            assert!(
                stale.len() >= 50,
                "seed {seed}: {} stale reads",
                stale.len()
            );
            if processes > 1 {
                // Some stale read lacks an append another read saw completed
                // before it began: as a STRONG read it would be too old.
                let strong = committed_reads(&ops);
                let old = stale.iter().any(|(read, key, _)| {
                    strong.get(key).is_some_and(|rs| {
                        rs.iter().any(|r| {
                            r.complete_ns < read.invoke_ns && r.list.len() > read.list.len()
                        })
                    })
                });
                assert!(old, "seed {seed}: no stale read returned an old state");
            }
        }
    }
}

#[test]
fn stale_histories_round_trip_through_the_text_format() {
    let ops = generate_with(3, 5, STALE_PERCENT);
    let text = trellis_checker::format::write(&ops);
    assert!(text.contains(" rs "), "the history has stale reads");
    assert_eq!(trellis_checker::format::parse::<Mop>(&text).unwrap(), ops);
}

#[test]
fn stale_reads_staler_than_their_bound_are_detected() {
    // Cut one stale read short, just before an element whose appender
    // committed before the read's window opened (and at the start of that
    // appender's elements, so the cut list is still a state, not an
    // intermediate read): the replica served a state older than allowed.
    for seed in SEEDS {
        let mut ops = generate_with(seed, 5, STALE_PERCENT);
        let txns = history::pair(&ops).expect("generated histories pair");
        let appender = |key: u64, value: u64| {
            txns.iter()
                .find(|t| t.mops.contains(&Mop::Append { key, value }))
                .expect("every read value was appended")
        };
        let (at, cut) = committed_stale_reads(&ops)
            .into_iter()
            .find_map(|(read, key, bound_ns)| {
                let opens_ns = read.invoke_ns.saturating_sub(bound_ns);
                (0..read.list.len()).find_map(|j| {
                    let w = appender(key, read.list[j]);
                    let starts = j == 0 || appender(key, read.list[j - 1]).id != w.id;
                    let old = w.outcome == Outcome::Committed
                        && w.complete_ns.is_some_and(|done| done < opens_ns);
                    (starts && old).then(|| (read.at, read.list[..j].to_vec()))
                })
            })
            .expect("a long history has a stale read with an old enough element");
        let Mop::StaleRead { value, .. } = &mut ops[at.0].txn[at.1] else {
            panic!("not a stale read")
        };
        *value = Some(cut);
        let report = check(&ops);
        assert_eq!(report.verdict, Verdict::Invalid, "seed {seed}:\n{report}");
        assert!(
            report.classes().contains(&AnomalyClass::StaleRead),
            "seed {seed}:\n{report}"
        );
        let allowed = BTreeSet::from([AnomalyClass::StaleRead, AnomalyClass::ReadYourWrites]);
        assert!(
            report.classes().is_subset(&allowed),
            "seed {seed}: only staleness may be reported:\n{report}"
        );
    }
}
