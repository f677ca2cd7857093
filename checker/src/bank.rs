//! The bank checker: transfers between accounts never create or destroy
//! money, so every committed full read must sum to the same total.
//!
//! A transaction holds [`BankMop`]s: transfers, and reads of every account.
//! For each committed read the checker asks that it lists each expected
//! account once (**incomplete-read**), that its balances sum to the total
//! (**wrong-total**), and, if asked, that none is negative
//! (**negative-balance**). Transfers are not checked against anything: a
//! read that reflects part of a transfer shows up as a wrong total.
//!
//! # Verdict
//!
//! Invalid if any anomaly. Unknown if no committed transaction read the
//! accounts (nothing was observed). Valid otherwise.

use crate::history::{self, HistoryError, Micro, Op, Outcome};
use crate::report::{Anomaly, AnomalyClass, Report, ReportBuilder};

/// A bank micro-op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BankMop {
    /// Move `amount` from one account to another.
    Transfer { from: u64, to: u64, amount: u64 },
    /// Read every account: `None` in an invocation, `Some((account,
    /// balance) pairs)` in an `ok` completion.
    Read { balances: Option<Vec<(u64, i64)>> },
}

impl Micro for BankMop {
    fn has_result(&self) -> bool {
        match self {
            BankMop::Transfer { .. } => true,
            BankMop::Read { balances } => balances.is_some(),
        }
    }

    fn completes(&self, invoked: &Self) -> bool {
        match (self, invoked) {
            (BankMop::Transfer { .. }, BankMop::Transfer { .. }) => self == invoked,
            (BankMop::Read { .. }, BankMop::Read { .. }) => true,
            _ => false,
        }
    }
}

/// What the bank must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankOptions {
    /// The accounts a full read must list, each once. Empty: not checked.
    pub accounts: Vec<u64>,
    /// What every read must sum to.
    pub total: i64,
    /// Whether a negative balance is an anomaly (a bank that refuses
    /// overdrafts).
    pub forbid_negative: bool,
}

/// Checks a bank history.
pub fn check(ops: &[Op<BankMop>], options: &BankOptions) -> Result<Report, HistoryError> {
    let txns = history::pair(ops)?;
    let mut out = ReportBuilder::new();
    let mut expected = options.accounts.clone();
    expected.sort_unstable();
    let mut reads = 0usize;

    for txn in txns.iter().filter(|t| t.outcome == Outcome::Committed) {
        for mop in &txn.mops {
            let BankMop::Read {
                balances: Some(balances),
            } = mop
            else {
                continue;
            };
            reads += 1;
            let name = format!("T{}", txn.id);
            let anomaly = |class, explanation| Anomaly {
                class,
                txns: vec![txn.id],
                explanation,
                cycle: Vec::new(),
            };

            if !expected.is_empty() {
                let mut got: Vec<u64> = balances.iter().map(|&(a, _)| a).collect();
                got.sort_unstable();
                if got != expected {
                    let missing: Vec<u64> = expected
                        .iter()
                        .copied()
                        .filter(|a| got.binary_search(a).is_err())
                        .collect();
                    let mut repeated: Vec<u64> = got
                        .windows(2)
                        .filter(|w| w[0] == w[1])
                        .map(|w| w[0])
                        .collect();
                    repeated.dedup();
                    let unexpected: Vec<u64> = got
                        .iter()
                        .copied()
                        .filter(|a| expected.binary_search(a).is_err())
                        .collect();
                    out.push(anomaly(
                        AnomalyClass::IncompleteRead,
                        format!(
                            "{name} read accounts {got:?}: missing {missing:?}, repeated {repeated:?}, unexpected {unexpected:?}"
                        ),
                    ));
                }
            }

            // i128: a sum of i64 balances cannot overflow it.
            let sum: i128 = balances.iter().map(|&(_, b)| i128::from(b)).sum();
            if sum != i128::from(options.total) {
                out.push(anomaly(
                    AnomalyClass::WrongTotal,
                    format!(
                        "{name} read balances {balances:?}, which sum to {sum}, not {}",
                        options.total
                    ),
                ));
            }

            if options.forbid_negative {
                let negative: Vec<(u64, i64)> =
                    balances.iter().copied().filter(|&(_, b)| b < 0).collect();
                if !negative.is_empty() {
                    out.push(anomaly(
                        AnomalyClass::NegativeBalance,
                        format!("{name} read negative balances {negative:?}"),
                    ));
                }
            }
        }
    }
    if reads == 0 {
        out.undecided("no committed transaction read the accounts".to_string());
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;
    use std::collections::BTreeSet;

    fn transfer(from: u64, to: u64, amount: u64) -> Vec<BankMop> {
        vec![BankMop::Transfer { from, to, amount }]
    }

    fn read(balances: Option<&[(u64, i64)]>) -> Vec<BankMop> {
        vec![BankMop::Read {
            balances: balances.map(<[_]>::to_vec),
        }]
    }

    fn options(forbid_negative: bool) -> BankOptions {
        BankOptions {
            accounts: vec![0, 1, 2],
            total: 30,
            forbid_negative,
        }
    }

    /// Two transfers, one concurrent with a read, one timing out.
    fn history(read_balances: &[(u64, i64)]) -> Vec<Op<BankMop>> {
        vec![
            Op::invoke(0, 0, transfer(0, 1, 5)),
            Op::invoke(1, 1, read(None)),
            Op::ok(0, 2, transfer(0, 1, 5)),
            Op::ok(1, 3, read(Some(read_balances))),
            Op::invoke(0, 4, transfer(1, 2, 50)),
            Op::info(0, 5, vec![]),
        ]
    }

    fn classes(report: &Report) -> BTreeSet<AnomalyClass> {
        report.classes()
    }

    #[test]
    fn conserved_totals_are_valid() {
        let report = check(&history(&[(0, 5), (1, 15), (2, 10)]), &options(true)).unwrap();
        assert_eq!(report.verdict, Verdict::Valid, "{report}");
    }

    #[test]
    fn a_read_of_half_a_transfer_is_a_wrong_total() {
        // The debit of 0 → 1 is seen, its credit is not.
        let report = check(&history(&[(0, 5), (1, 10), (2, 10)]), &options(false)).unwrap();
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(classes(&report), BTreeSet::from([AnomalyClass::WrongTotal]));
    }

    #[test]
    fn negative_balances_only_when_forbidden() {
        let overdrawn = history(&[(0, -5), (1, 25), (2, 10)]);
        let report = check(&overdrawn, &options(true)).unwrap();
        assert_eq!(
            classes(&report),
            BTreeSet::from([AnomalyClass::NegativeBalance])
        );
        let report = check(&overdrawn, &options(false)).unwrap();
        assert_eq!(report.verdict, Verdict::Valid, "{report}");
    }

    #[test]
    fn a_read_must_list_every_account_once() {
        let report = check(&history(&[(0, 10), (1, 10), (1, 10)]), &options(false)).unwrap();
        assert_eq!(
            classes(&report),
            BTreeSet::from([AnomalyClass::IncompleteRead])
        );
    }

    #[test]
    fn no_committed_read_is_unknown() {
        let ops = vec![
            Op::invoke(0, 0, transfer(0, 1, 5)),
            Op::ok(0, 1, transfer(0, 1, 5)),
        ];
        assert_eq!(
            check(&ops, &options(false)).unwrap().verdict,
            Verdict::Unknown
        );
    }
}
