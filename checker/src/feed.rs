//! The change-feed check: what a feed consumer received, judged against
//! the history of the same run.
//!
//! A consumer's record is every message its watches handed out, in the
//! order it handled them, across reconnects (each watch resumed from the
//! cursor of the messages handled before). Two kinds of rule:
//!
//! - **Order** (any workload, [`check_order`]): per group, event positions
//!   strictly rise, versions strictly rise, and no event comes at or below
//!   a resolved position already received for its group.
//! - **List-append** ([`check_list_append`]): each event's writes are
//!   decoded by the harness into (key, list); a list's last element names
//!   the transaction that wrote it (appended values are unique). Every
//!   `ok` transaction with appends appears, each of its keys written
//!   exactly once over its events, in distinct groups, with a list ending
//!   in its appends to that key (in order) and equal to the longest
//!   committed read of the key up to there; no event comes from a `fail`
//!   transaction; an `info` one may appear or not, but whole if at all.
//! - **Bank** ([`check_bank`]): a transfer's values do not name it, so
//!   each account's writes are replayed in version order into deltas, and
//!   a transaction's deltas (over its events) must be one transfer: two
//!   accounts, `-a` and `+a`. The transfers the feed holds, as a multiset
//!   of (from, to, amount), must hold every `ok` transfer and nothing
//!   beyond the `ok` and `info` ones (a failed transfer, or one twice,
//!   would be); a transaction raising every account is the opening one.
//!
//! Why here and not in the harness: the rules need only the history's
//! micro-ops and a decoded feed, so they are pure and tested beside the
//! other checks; the harness owns the byte encoding of keys and lists and
//! hands over decoded writes (a key it cannot decode is its problem).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::bank::BankMop;
use crate::history::{self, HistoryError, Mop, Op, Outcome};

/// One transaction's writes in one group, as the feed sent it, its writes
/// decoded by the harness: `W` is a list-append write `(key, list)` in
/// [`check_list_append`], anything in [`check_order`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEvent<W> {
    pub group: u64,
    pub position: u64,
    pub version: u64,
    pub txn_id: Vec<u8>,
    pub writes: Vec<W>,
}

/// A list-append write: the key and the list written (`None`: a delete,
/// which the workload never does).
pub type ListWrite = (u64, Option<Vec<u64>>);

/// A bank write: the account and the balance written (`None`: a delete,
/// which the workload never does).
pub type BankWrite = (u64, Option<i64>);

/// One message a consumer handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedMessage<W> {
    Event(FeedEvent<W>),
    /// Every event of `group` at or below `position` was sent.
    Resolved {
        group: u64,
        position: u64,
    },
}

/// What the feed check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedReport {
    /// Each problem explained in words; empty when the feed agrees with
    /// the history.
    pub problems: Vec<String>,
    /// Events received.
    pub events: usize,
    /// History transactions found in the feed.
    pub txns_seen: usize,
}

impl FeedReport {
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Most problems a report lists; past it they are counted.
pub const PROBLEMS_MAX: usize = 20;

fn push(problems: &mut Vec<String>, omitted: &mut usize, problem: String) {
    if problems.len() < PROBLEMS_MAX {
        problems.push(problem);
    } else {
        *omitted += 1;
    }
}

/// The order rules (see the module doc), for any workload.
pub fn check_order<W>(feed: &[FeedMessage<W>]) -> FeedReport {
    let mut problems = Vec::new();
    let mut omitted = 0;
    // group → (last event position, its version)
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    // group → highest resolved position received
    let mut resolved: HashMap<u64, u64> = HashMap::new();
    let mut events = 0;
    for (index, message) in feed.iter().enumerate() {
        match message {
            FeedMessage::Resolved { group, position } => {
                let at = resolved.entry(*group).or_insert(*position);
                *at = (*at).max(*position);
            }
            FeedMessage::Event(e) => {
                events += 1;
                if let Some(&(position, version)) = last.get(&e.group) {
                    if e.position <= position {
                        push(
                            &mut problems,
                            &mut omitted,
                            format!(
                                "message {index}: group {}'s event at position {} comes after one at position {position} (positions must strictly rise)",
                                e.group, e.position
                            ),
                        );
                    }
                    if e.version <= version {
                        push(
                            &mut problems,
                            &mut omitted,
                            format!(
                                "message {index}: group {}'s event at position {} has version {}, not above the previous event's {version}",
                                e.group, e.position, e.version
                            ),
                        );
                    }
                }
                if let Some(&r) = resolved.get(&e.group)
                    && e.position <= r
                {
                    push(
                        &mut problems,
                        &mut omitted,
                        format!(
                            "message {index}: group {}'s event at position {} comes after the group was resolved up to {r}",
                            e.group, e.position
                        ),
                    );
                }
                last.insert(e.group, (e.position, e.version));
            }
        }
    }
    if omitted > 0 {
        problems.push(format!("… and {omitted} more order problems"));
    }
    FeedReport {
        problems,
        events,
        txns_seen: 0,
    }
}

/// What the feed has of one history transaction.
#[derive(Default)]
struct Seen {
    /// Groups of its events.
    groups: BTreeSet<u64>,
    /// Key → how many times its write came.
    keys: BTreeMap<u64, usize>,
    /// Transaction ids its events carry.
    ids: BTreeSet<Vec<u8>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The order rules and the list-append rules (see the module doc) for
/// `feed` against the history `ops`.
///
/// `complete`: the record has no gap (the consumer never lost history), so
/// every committed transaction must be there, each whole; without it only
/// the rules a gap cannot break are judged (order, no failed transaction,
/// no duplicate, each write's list).
pub fn check_list_append(
    ops: &[Op<Mop>],
    feed: &[FeedMessage<ListWrite>],
    complete: bool,
) -> Result<FeedReport, HistoryError> {
    let txns = history::pair(ops)?;
    let mut report = check_order(feed);
    let mut problems = std::mem::take(&mut report.problems);
    let mut omitted = 0;

    // (key, value) → the transaction appending it; transaction → its
    // appends to each key, in order.
    let mut writer: HashMap<(u64, u64), usize> = HashMap::new();
    let mut appends: Vec<BTreeMap<u64, Vec<u64>>> = vec![BTreeMap::new(); txns.len()];
    // key → the longest list a committed transaction read.
    let mut longest: HashMap<u64, Vec<u64>> = HashMap::new();
    for txn in &txns {
        for mop in &txn.mops {
            match mop {
                Mop::Append { key, value } => {
                    if writer.insert((*key, *value), txn.id).is_some() {
                        return Err(HistoryError::DuplicateAppend {
                            key: *key,
                            value: *value,
                        });
                    }
                    appends[txn.id].entry(*key).or_default().push(*value);
                }
                Mop::Read {
                    key,
                    value: Some(list),
                } if txn.outcome == Outcome::Committed => {
                    let at = longest.entry(*key).or_default();
                    if list.len() > at.len() {
                        *at = list.clone();
                    }
                }
                _ => {}
            }
        }
    }

    // transaction → what the feed has of it
    let mut seen: BTreeMap<usize, Seen> = BTreeMap::new();
    for (index, message) in feed.iter().enumerate() {
        let FeedMessage::Event(e) = message else {
            continue;
        };
        let what = format!(
            "message {index} (group {}, position {}, txn {})",
            e.group,
            e.position,
            hex(&e.txn_id)
        );
        let mut owners = BTreeSet::new();
        for (key, list) in &e.writes {
            let Some(list) = list else {
                push(
                    &mut problems,
                    &mut omitted,
                    format!("{what} deletes key {key}; the workload never deletes"),
                );
                continue;
            };
            let Some(&last) = list.last() else {
                push(
                    &mut problems,
                    &mut omitted,
                    format!("{what} writes an empty list to key {key}; every write appends"),
                );
                continue;
            };
            let Some(&t) = writer.get(&(*key, last)) else {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "{what} writes key {key} ending in {last}, which no transaction of the history appended"
                    ),
                );
                continue;
            };
            owners.insert(t);
            let mine = &appends[t][key];
            if !list.ends_with(mine) {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "{what} writes key {key} = {list:?}, which does not end in T{t}'s appends {mine:?}"
                    ),
                );
            }
            if let Some(read) = longest.get(key)
                && read.contains(&last)
                && !read.starts_with(list)
            {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "{what} writes key {key} = {list:?}, not the committed list up to {last}: a committed read saw {read:?}"
                    ),
                );
            }
            let entry = seen.entry(t).or_default();
            *entry.keys.entry(*key).or_insert(0) += 1;
            entry.ids.insert(e.txn_id.clone());
        }
        if owners.len() > 1 {
            push(
                &mut problems,
                &mut omitted,
                format!(
                    "{what} mixes the writes of transactions {owners:?}: an event is one transaction's"
                ),
            );
        }
        for &t in &owners {
            let entry = seen.entry(t).or_default();
            if !entry.groups.insert(e.group) {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "{what}: T{t} appears twice in group {} (duplicate event)",
                        e.group
                    ),
                );
            }
            if txns[t].outcome == Outcome::Aborted {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "{what} is T{t}'s, which the history says failed (aborted writes in the feed)"
                    ),
                );
            }
        }
    }

    for (t, Seen { keys, ids, .. }) in &seen {
        if ids.len() > 1 {
            push(
                &mut problems,
                &mut omitted,
                format!("T{t}'s writes come under {} transaction ids", ids.len()),
            );
        }
        let wanted: BTreeSet<u64> = appends[*t].keys().copied().collect();
        let got: BTreeSet<u64> = keys.keys().copied().collect();
        if complete && wanted != got {
            push(
                &mut problems,
                &mut omitted,
                format!("T{t} appended to keys {wanted:?} but the feed has its writes to {got:?}"),
            );
        }
        for (key, n) in keys {
            if *n > 1 {
                push(
                    &mut problems,
                    &mut omitted,
                    format!("the feed has T{t}'s write to key {key} {n} times"),
                );
            }
        }
    }
    for txn in &txns {
        if complete
            && txn.outcome == Outcome::Committed
            && !appends[txn.id].is_empty()
            && !seen.contains_key(&txn.id)
        {
            push(
                &mut problems,
                &mut omitted,
                format!(
                    "T{} (process {}, appends {:?}) committed but never appeared in the feed",
                    txn.id, txn.process, appends[txn.id]
                ),
            );
        }
    }
    if omitted > 0 {
        problems.push(format!("… and {omitted} more feed problems"));
    }
    report.problems = problems;
    report.txns_seen = seen.len();
    Ok(report)
}

/// A transfer as the feed shows it, or as the history asked for it.
type Transfer = (u64, u64, u64);

/// The order rules and the bank rules (see the module doc) for `feed`
/// against the history `ops` of transfers among `accounts`.
pub fn check_bank(
    ops: &[Op<BankMop>],
    feed: &[FeedMessage<BankWrite>],
    accounts: &BTreeSet<u64>,
) -> Result<FeedReport, HistoryError> {
    let txns = history::pair(ops)?;
    let mut report = check_order(feed);
    let mut problems = std::mem::take(&mut report.problems);
    let mut omitted = 0;

    // account → (version, balance, txn id), then replayed in version order
    // into txn id → account → delta.
    let mut writes: BTreeMap<u64, Vec<(u64, i64, Vec<u8>)>> = BTreeMap::new();
    for message in feed {
        let FeedMessage::Event(e) = message else {
            continue;
        };
        for (account, balance) in &e.writes {
            let Some(balance) = balance else {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "group {} position {} deletes account {account}; the workload never deletes",
                        e.group, e.position
                    ),
                );
                continue;
            };
            writes
                .entry(*account)
                .or_default()
                .push((e.version, *balance, e.txn_id.clone()));
        }
    }
    let mut deltas: BTreeMap<Vec<u8>, BTreeMap<u64, i64>> = BTreeMap::new();
    for (account, mut list) in writes {
        list.sort_by_key(|w| w.0);
        let mut before = 0;
        let mut last_version = None;
        for (version, balance, txn_id) in list {
            if last_version == Some(version) {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "account {account} is written twice at version {version} (duplicate event)"
                    ),
                );
                continue;
            }
            last_version = Some(version);
            if deltas
                .entry(txn_id.clone())
                .or_default()
                .insert(account, balance - before)
                .is_some()
            {
                push(
                    &mut problems,
                    &mut omitted,
                    format!(
                        "txn {} writes account {account} twice (a duplicate event)",
                        hex(&txn_id)
                    ),
                );
            }
            before = balance;
        }
    }

    let mut feed_transfers: BTreeMap<Transfer, usize> = BTreeMap::new();
    for (txn_id, moved) in &deltas {
        let touched: BTreeSet<u64> = moved.keys().copied().collect();
        if &touched == accounts && moved.values().all(|&d| d > 0) {
            continue; // the opening balances
        }
        let pairs: Vec<(u64, i64)> = moved.iter().map(|(&a, &d)| (a, d)).collect();
        let transfer = match *pairs.as_slice() {
            [(a, da), (b, db)] if da == -db && da != 0 => {
                let (from, to, amount) = if da < 0 { (a, b, db) } else { (b, a, da) };
                Some((from, to, amount.unsigned_abs()))
            }
            _ => None,
        };
        match transfer {
            Some(t) => *feed_transfers.entry(t).or_insert(0) += 1,
            None => push(
                &mut problems,
                &mut omitted,
                format!(
                    "txn {}'s writes move {moved:?} (account → change): not one transfer (a part missing, or not the transaction's writes)",
                    hex(txn_id)
                ),
            ),
        }
    }

    let mut committed: BTreeMap<Transfer, usize> = BTreeMap::new();
    let mut unknown: BTreeMap<Transfer, usize> = BTreeMap::new();
    for txn in &txns {
        let into = match txn.outcome {
            Outcome::Committed => &mut committed,
            Outcome::Indeterminate => &mut unknown,
            Outcome::Aborted => continue,
        };
        for mop in &txn.mops {
            if let BankMop::Transfer { from, to, amount } = *mop {
                *into.entry((from, to, amount)).or_insert(0) += 1;
            }
        }
    }
    let all: BTreeSet<&Transfer> = committed.keys().chain(feed_transfers.keys()).collect();
    for t in all {
        let ok = committed.get(t).copied().unwrap_or(0);
        let info = unknown.get(t).copied().unwrap_or(0);
        let got = feed_transfers.get(t).copied().unwrap_or(0);
        let (from, to, amount) = t;
        if got < ok {
            push(
                &mut problems,
                &mut omitted,
                format!(
                    "{ok} transfers of {amount} from {from} to {to} committed, the feed has {got}"
                ),
            );
        } else if got > ok + info {
            push(
                &mut problems,
                &mut omitted,
                format!(
                    "the feed has {got} transfers of {amount} from {from} to {to}; only {ok} committed and {info} may have (a failed transfer, or one twice)"
                ),
            );
        }
    }
    if omitted > 0 {
        problems.push(format!("… and {omitted} more feed problems"));
    }
    report.problems = problems;
    report.txns_seen = deltas.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(key: u64, value: u64) -> Mop {
        Mop::Append { key, value }
    }

    /// T0 appends 1 to key 1 and 2 to key 2 (ok); T1 appends 3 to key 1
    /// (fail); T2 appends 4 to key 1 (info); T3 reads key 1 = [1, 4].
    fn history() -> Vec<Op<Mop>> {
        vec![
            Op::invoke(0, 0, vec![append(1, 1), append(2, 2)]),
            Op::ok(0, 1, vec![append(1, 1), append(2, 2)]),
            Op::invoke(1, 2, vec![append(1, 3)]),
            Op::fail(1, 3, vec![]),
            Op::invoke(2, 4, vec![append(1, 4)]),
            Op::info(2, 5, vec![]),
            Op::invoke(
                3,
                6,
                vec![Mop::Read {
                    key: 1,
                    value: None,
                }],
            ),
            Op::ok(
                3,
                7,
                vec![Mop::Read {
                    key: 1,
                    value: Some(vec![1, 4]),
                }],
            ),
        ]
    }

    fn event(group: u64, position: u64, txn: u8, writes: Vec<ListWrite>) -> FeedMessage<ListWrite> {
        FeedMessage::Event(FeedEvent {
            group,
            position,
            version: position * 10,
            txn_id: vec![txn; 16],
            writes,
        })
    }

    fn good_feed() -> Vec<FeedMessage<ListWrite>> {
        vec![
            FeedMessage::Resolved {
                group: 1,
                position: 0,
            },
            FeedMessage::Resolved {
                group: 2,
                position: 0,
            },
            event(1, 3, 0, vec![(1, Some(vec![1]))]),
            event(2, 2, 0, vec![(2, Some(vec![2]))]),
            FeedMessage::Resolved {
                group: 1,
                position: 5,
            },
            event(1, 7, 2, vec![(1, Some(vec![1, 4]))]),
        ]
    }

    fn problems(feed: &[FeedMessage<ListWrite>]) -> Vec<String> {
        check_list_append(&history(), feed, true)
            .expect("history")
            .problems
    }

    #[test]
    fn a_complete_ordered_feed_passes() {
        let report = check_list_append(&history(), &good_feed(), true).expect("history");
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!((report.events, report.txns_seen), (3, 2));
        // The info transaction may be missing.
        let mut feed = good_feed();
        feed.pop();
        assert!(problems(&feed).is_empty());
    }

    #[test]
    fn a_missing_event_fails() {
        let mut feed = good_feed();
        feed.remove(3);
        let found = problems(&feed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("appended to keys {1, 2}"), "{found:?}");
        feed.remove(2);
        let found = problems(&feed);
        assert!(
            found[0].contains("T0") && found[0].contains("never appeared"),
            "{found:?}"
        );
    }

    #[test]
    fn with_a_gap_only_completeness_is_not_judged() {
        let mut feed = good_feed();
        feed.remove(3);
        let report = check_list_append(&history(), &feed, false).expect("history");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        feed.push(event(1, 9, 1, vec![(1, Some(vec![1, 3]))]));
        let report = check_list_append(&history(), &feed, false).expect("history");
        assert!(
            report.problems.iter().any(|p| p.contains("says failed")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_duplicate_event_fails() {
        let mut feed = good_feed();
        feed.push(event(2, 9, 0, vec![(2, Some(vec![2]))]));
        let found = problems(&feed);
        assert!(
            found.iter().any(|p| p.contains("appears twice in group 2")),
            "{found:?}"
        );
        assert!(found.iter().any(|p| p.contains("2 times")), "{found:?}");
    }

    #[test]
    fn an_aborted_transactions_event_fails() {
        let mut feed = good_feed();
        feed.push(event(1, 9, 1, vec![(1, Some(vec![1, 3]))]));
        let found = problems(&feed);
        assert!(
            found
                .iter()
                .any(|p| p.contains("T1's, which the history says failed")),
            "{found:?}"
        );
    }

    #[test]
    fn out_of_order_positions_and_versions_fail() {
        let mut feed = good_feed();
        feed.swap(2, 5);
        let found = problems(&feed);
        assert!(
            found
                .iter()
                .any(|p| p.contains("positions must strictly rise")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("not above the previous event's")),
            "{found:?}"
        );
    }

    #[test]
    fn an_event_at_or_below_a_resolved_position_fails() {
        let mut feed = good_feed();
        feed[5] = event(1, 5, 2, vec![(1, Some(vec![1, 4]))]);
        let found = problems(&feed);
        assert!(
            found.iter().any(|p| p.contains("resolved up to 5")),
            "{found:?}"
        );
    }

    #[test]
    fn wrong_writes_fail() {
        // A list that misses the element before.
        let mut feed = good_feed();
        feed[5] = event(1, 7, 2, vec![(1, Some(vec![4]))]);
        let found = problems(&feed);
        assert!(
            found.iter().any(|p| p.contains("not the committed list")),
            "{found:?}"
        );
        // A value no one appended, a delete, two transactions in one event.
        let mut feed = good_feed();
        feed.push(event(1, 9, 7, vec![(1, Some(vec![1, 4, 99]))]));
        feed.push(event(1, 10, 8, vec![(3, None)]));
        feed.push(event(
            2,
            11,
            9,
            vec![(2, Some(vec![2])), (1, Some(vec![1, 4]))],
        ));
        let found = problems(&feed);
        assert!(
            found
                .iter()
                .any(|p| p.contains("no transaction of the history appended")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("never deletes")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("mixes the writes")),
            "{found:?}"
        );
    }

    fn bank_event(
        group: u64,
        position: u64,
        txn: u8,
        writes: Vec<BankWrite>,
    ) -> FeedMessage<BankWrite> {
        FeedMessage::Event(FeedEvent {
            group,
            position,
            version: position * 10,
            txn_id: vec![txn; 16],
            writes,
        })
    }

    /// Accounts 0 and 1 open at 10 (group 1 holds 0, group 2 holds 1);
    /// T0 moves 3 from 0 to 1 (ok), T1 moves 2 from 1 to 0 (fail), T2
    /// moves 1 from 0 to 1 (info).
    fn bank_history() -> Vec<Op<BankMop>> {
        let t = |from, to, amount| vec![BankMop::Transfer { from, to, amount }];
        vec![
            Op::invoke(0, 0, t(0, 1, 3)),
            Op::ok(0, 1, t(0, 1, 3)),
            Op::invoke(1, 2, t(1, 0, 2)),
            Op::fail(1, 3, vec![]),
            Op::invoke(2, 4, t(0, 1, 1)),
            Op::info(2, 5, vec![]),
        ]
    }

    fn bank_feed() -> Vec<FeedMessage<BankWrite>> {
        vec![
            bank_event(1, 1, 9, vec![(0, Some(10))]),
            bank_event(2, 1, 9, vec![(1, Some(10))]),
            bank_event(1, 2, 0, vec![(0, Some(7))]),
            bank_event(2, 2, 0, vec![(1, Some(13))]),
        ]
    }

    fn bank_problems(feed: &[FeedMessage<BankWrite>]) -> Vec<String> {
        let accounts = BTreeSet::from([0, 1]);
        check_bank(&bank_history(), feed, &accounts)
            .expect("history")
            .problems
    }

    #[test]
    fn a_bank_feed_with_every_committed_transfer_passes() {
        assert_eq!(bank_problems(&bank_feed()), Vec::<String>::new());
        // The info transfer may be there.
        let mut feed = bank_feed();
        feed.push(bank_event(1, 3, 2, vec![(0, Some(6))]));
        feed.push(bank_event(2, 3, 2, vec![(1, Some(14))]));
        assert_eq!(bank_problems(&feed), Vec::<String>::new());
    }

    #[test]
    fn a_bank_feed_missing_a_transfer_or_half_of_one_fails() {
        let mut feed = bank_feed();
        feed.truncate(3);
        let found = bank_problems(&feed);
        assert!(
            found.iter().any(|p| p.contains("not one transfer")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("committed, the feed has 0")),
            "{found:?}"
        );
    }

    #[test]
    fn a_bank_feed_with_a_failed_transfer_fails() {
        let mut feed = bank_feed();
        feed.push(bank_event(1, 3, 1, vec![(0, Some(9))]));
        feed.push(bank_event(2, 3, 1, vec![(1, Some(11))]));
        let found = bank_problems(&feed);
        assert!(
            found
                .iter()
                .any(|p| p.contains("only 0 committed and 0 may have")),
            "{found:?}"
        );
    }

    #[test]
    fn a_bank_feed_with_a_duplicate_event_fails() {
        let mut feed = bank_feed();
        feed.push(bank_event(2, 5, 0, vec![(1, Some(13))]));
        let found = bank_problems(&feed);
        assert!(found.iter().any(|p| p.contains("twice")), "{found:?}");
    }
}
