//! Workloads that record histories for `trellis-checker`, and the run that
//! puts cluster, nemesis, workload and checker together.
//!
//! # Workloads
//!
//! - **list-append**: a key's value is its list, as decimal numbers joined
//!   by commas. A transaction is 1 to [`MOPS_MAX`] micro-ops over a few
//!   keys: a read returns the list, an append reads the list and writes it
//!   back with one more value (unique over the run). Keys land in different
//!   groups, so most multi-key transactions take two-phase commit. A key is
//!   retired after [`APPENDS_PER_KEY_MAX`] appends so values stay small in a
//!   long run.
//! - **bank**: [`ACCOUNTS`] accounts; a transfer reads two and moves 1–5
//!   (refused, as `fail`, if the payer has too little); a read reads all.
//!
//! Each client task is a *process* in the checker's terms and runs one
//! transaction at a time through the client library
//! ([`trellis_client::Transaction`]).
//!
//! # How an outcome is recorded
//!
//! - `ok`: Commit answered committed.
//! - `fail`: an error before Commit was sent (a read failed, an overdraft),
//!   or a definite abort (CONFLICT, LOCKED, RESOLVED_ABORT,
//!   PARTICIPANT_UNAVAILABLE, SLOTS_MOVED, invalid input).
//! - `info`: everything else once Commit was sent — OUTCOME_UNKNOWN, an
//!   unavailable or timed-out Commit, an operation that overran its
//!   deadline. The process then takes a new id (as in Jepsen), since its
//!   old transaction may still take effect.
//! - An OUTCOME_UNKNOWN is followed by a `TxnStatus` of its id (which
//!   settles a transaction found prepared and undecided): ABORTED makes
//!   the operation `fail`, so the checker holds the cluster to it (a value
//!   of it read later is an aborted read, G1a); COMMITTED or UNKNOWN leave
//!   it `info` (a committed operation's reads are not known).
//!
//! # Client modes
//!
//! [`ClientMode::Correct`] uses the library as documented.
//! [`ClientMode::BlindWrites`] is deliberately broken *client usage*: it
//! reads outside the transaction and commits the read-modify-write with no
//! read versions, so Trellis cannot detect conflicts. It exists to show
//! that this pipeline catches real anomalies (lost updates, wrong totals).
//!
//! # After the faults
//!
//! The run heals everything, waits until no transaction is left prepared
//! (the sweepers resolved what was in doubt; if some stay, that is reported
//! as stuck locks), then reads every key in one transaction (the *final
//! read*, a committed operation of its own process): an acknowledged append
//! missing from it is a lost write, which the checker reports as a cycle
//! through real time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trellis_checker::bank::{self, BankMop, BankOptions};
use trellis_checker::format::{self, TextMop};
use trellis_checker::list_append::{self, Model};
use trellis_checker::{Mop, Op, OpKind, Report, Verdict};
use trellis_client::{
    Client, CommitRequest, Consistency, Durability, Error, Options, Route, TxnState, Write,
};

use crate::nemesis::{FaultCluster, FaultKind, NemesisCluster, Schedule, run_schedule};

/// Most micro-ops in one list-append transaction.
pub const MOPS_MAX: usize = 4;
/// Share of list-append transactions that are STALE reads instead.
pub const STALE_READ_SHARE: f64 = 0.15;
/// The bound of those STALE reads.
pub const STALE_READ_BOUND: Duration = Duration::from_millis(300);
/// Keys in use at once by list-append.
pub const ACTIVE_KEYS: usize = 6;
/// Appends to one key before it is retired for a fresh one.
pub const APPENDS_PER_KEY_MAX: u32 = 200;
/// Bank accounts.
pub const ACCOUNTS: u64 = 6;
/// Opening balance of each account.
pub const BALANCE_START: i64 = 100;
/// Deadline of one RPC of a client.
pub const CLIENT_RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one whole operation (its reads, its Commit and the client's
/// resends of it); past it the operation is `info`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping clients may take to finish their operations.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at the setup write and at the final read.
pub const FINAL_ATTEMPTS_MAX: u32 = 20;
/// Pause of a client after an operation that did not commit.
pub const FAIL_PAUSE: Duration = Duration::from_millis(20);
/// Deadline of the TxnStatus asked after an OUTCOME_UNKNOWN.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The process id of the final read.
pub const FINAL_PROCESS: u64 = 1_000_000;

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    ListAppend,
    Bank,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ListAppend => "list-append",
            Workload::Bank => "bank",
        }
    }
}

/// How the clients use the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// As documented: reads inside the transaction, versions sent at Commit.
    Correct,
    /// Broken on purpose: Commit carries no read versions.
    BlindWrites,
}

/// One run: a cluster, a workload, a schedule of faults.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub workload: Workload,
    pub mode: ClientMode,
    /// Seeds the schedule and every client's choices.
    pub seed: u64,
    /// How long clients run (faults stop a little before).
    pub time: Duration,
    pub clients: usize,
    pub coordinators: usize,
    pub groups: u32,
    /// Fault kinds to cycle; empty: no faults.
    pub kinds: Vec<FaultKind>,
    pub interval: Duration,
    pub hold: Duration,
}

impl RunConfig {
    /// A run of `workload` with every fault kind, ~1 s apart, held ~1 s.
    pub fn new(workload: Workload, seed: u64, time: Duration) -> Self {
        RunConfig {
            workload,
            mode: ClientMode::Correct,
            seed,
            time,
            clients: 6,
            coordinators: 2,
            groups: 3,
            kinds: FaultKind::ALL.to_vec(),
            interval: Duration::from_secs(1),
            hold: Duration::from_secs(1),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunResult {
    /// The seed the run used.
    pub seed: u64,
    /// The checker's report.
    pub report: Report,
    /// Prepared transactions still there after [`crate::nemesis::SETTLE_TIMEOUT`]
    /// (stuck locks), if any.
    pub stuck: Option<u64>,
    /// Why the final read could not be done, if it could not.
    pub final_read_error: Option<String>,
    /// Processes that exited though no fault killed them.
    pub unexpected_exits: Vec<String>,
    /// Faults inflicted.
    pub faults: usize,
    /// Completions by kind: ok, fail, info.
    pub counts: [usize; 3],
    /// History (`history.txt`), verdict (`verdict.txt`), nemesis log and
    /// process logs.
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl RunResult {
    /// No anomaly, no stuck lock, a final read, no process crashed by
    /// itself.
    pub fn passed(&self) -> bool {
        self.report.verdict == Verdict::Valid
            && self.stuck.is_none()
            && self.final_read_error.is_none()
            && self.unexpected_exits.is_empty()
    }

    /// Copies the history, verdict and logs (not the data) to
    /// `target/nemesis/<name>/` so they outlive the temporary directory;
    /// returns where.
    pub fn keep(&self, name: &str) -> std::io::Result<PathBuf> {
        let to = target_dir().join("nemesis").join(name);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && !entry.file_name().to_string_lossy().contains(".db")
            {
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
        Ok(to)
    }
}

/// `target/` of this build: `CARGO_TARGET_DIR`, else the one holding the
/// running executable.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// Where a history's times come from.
pub(crate) enum Clock {
    /// Real time since this instant.
    Real(Instant),
    /// The simulator's virtual time since the simulation started (one clock
    /// for every simulated host).
    Simulated,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        match self {
            Clock::Real(start) => start.elapsed().as_nanos() as u64,
            Clock::Simulated => turmoil::sim_elapsed().unwrap_or_default().as_nanos() as u64,
        }
    }
}

/// The history as it is recorded: one clock for every process, read under
/// the lock so times never go backwards.
pub(crate) struct Recorder<M> {
    clock: Clock,
    ops: Mutex<Vec<Op<M>>>,
    /// Why operations did not commit: `fail` / `info` and a short reason.
    reasons: Mutex<BTreeMap<String, usize>>,
}

impl<M> Recorder<M> {
    pub(crate) fn new(clock: Clock) -> Self {
        Recorder {
            clock,
            ops: Mutex::new(Vec::new()),
            reasons: Mutex::new(BTreeMap::new()),
        }
    }

    fn push(&self, process: u64, kind: OpKind, txn: Vec<M>) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let time_ns = self.clock.now_ns();
        ops.push(Op {
            process,
            kind,
            txn,
            time_ns,
        });
    }

    fn count(&self, kind: OpKind, why: &str) {
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        *reasons
            .entry(format!("{} {why}", kind.as_str()))
            .or_insert(0) += 1;
    }

    pub(crate) fn reasons(&self) -> String {
        let reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        reasons
            .iter()
            .map(|(why, n)| format!("  {why}: {n}\n"))
            .collect()
    }

    pub(crate) fn take(&self) -> Vec<Op<M>> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Where an operation failed: before its Commit was sent (certainly no
/// effect) or at the Commit.
pub(crate) enum Failure {
    BeforeCommit(Error),
    AtCommit(Error),
}

/// A short name for why an operation did not commit.
fn reason(failure: &Failure) -> String {
    let (err, stage) = match failure {
        Failure::BeforeCommit(err) => (err, " (before commit)"),
        Failure::AtCommit(err) => (err, ""),
    };
    let what = match err {
        Error::Conflict { .. } => "conflict",
        Error::Locked { .. } => "locked",
        Error::ResolvedAbort { .. } => "resolved-abort",
        Error::ParticipantUnavailable { .. } => "participant-unavailable",
        Error::SlotsMoved { .. } => "slots-moved",
        Error::OutcomeUnknown { .. } => "outcome-unknown",
        Error::Unavailable(_) => "unavailable",
        Error::InvalidArgument(_) => "invalid-argument",
        Error::Application(_) => "refused by the workload",
        Error::FeedHistoryGone { .. } => "feed-history-gone",
        Error::Server { code, .. } => return format!("server error {code:?}{stage}"),
    };
    format!("{what}{stage}")
}

/// The completion an error gets (see the module doc).
fn completion(failure: &Failure) -> OpKind {
    match failure {
        Failure::BeforeCommit(_) => OpKind::Fail,
        Failure::AtCommit(err) => match err {
            Error::Conflict { .. }
            | Error::Locked { .. }
            | Error::ResolvedAbort { .. }
            | Error::ParticipantUnavailable { .. }
            | Error::SlotsMoved { .. }
            | Error::InvalidArgument(_)
            | Error::Application(_)
            // Only a feed answers it, never a commit.
            | Error::FeedHistoryGone { .. } => OpKind::Fail,
            Error::OutcomeUnknown { .. } | Error::Unavailable(_) | Error::Server { .. } => {
                OpKind::Info
            }
        },
    }
}

/// A transaction as a workload uses it: the library's, or the broken blind
/// one.
enum Tx {
    Real(trellis_client::Transaction),
    Blind {
        client: Client,
        seen: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        writes: BTreeMap<Vec<u8>, Vec<u8>>,
    },
}

impl Tx {
    fn begin(client: &Client, mode: ClientMode) -> Tx {
        match mode {
            ClientMode::Correct => Tx::Real(client.begin()),
            ClientMode::BlindWrites => Tx::Blind {
                client: client.clone(),
                seen: BTreeMap::new(),
                writes: BTreeMap::new(),
            },
        }
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Tx::Real(txn) => txn.get(key).await.map_err(Failure::BeforeCommit),
            Tx::Blind {
                client,
                seen,
                writes,
            } => {
                if let Some(value) = writes.get(key) {
                    return Ok(Some(value.clone()));
                }
                if let Some(value) = seen.get(key) {
                    return Ok(value.clone());
                }
                let items = client
                    .get(&[key.to_vec()], Consistency::Strong)
                    .await
                    .map_err(Failure::BeforeCommit)?;
                let value = items
                    .into_iter()
                    .next()
                    .and_then(|i| i.value().map(<[u8]>::to_vec));
                seen.insert(key.to_vec(), value.clone());
                Ok(value)
            }
        }
    }

    /// Reads several keys at once (one Get).
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        match self {
            Tx::Real(txn) => Ok(txn
                .get_many(keys)
                .await
                .map_err(Failure::BeforeCommit)?
                .iter()
                .map(|i| i.value().map(<[u8]>::to_vec))
                .collect()),
            Tx::Blind { .. } => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(self.get(key).await?);
                }
                Ok(out)
            }
        }
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), Failure> {
        match self {
            Tx::Real(txn) => txn.put(key, &value).map_err(Failure::BeforeCommit),
            Tx::Blind { writes, .. } => {
                writes.insert(key.to_vec(), value);
                Ok(())
            }
        }
    }

    async fn commit(self) -> Result<(), Failure> {
        match self {
            Tx::Real(txn) => txn.commit().await.map(|_| ()).map_err(Failure::AtCommit),
            Tx::Blind { client, writes, .. } => {
                if writes.is_empty() {
                    return Ok(()); // the broken client validates nothing
                }
                let request = CommitRequest {
                    txn_id: trellis_client::new_txn_id(),
                    reads: Vec::new(),
                    writes: writes
                        .into_iter()
                        .map(|(k, v)| (k, Write::Put(v)))
                        .collect(),
                    durability: Durability::default(),
                };
                client
                    .commit(request)
                    .await
                    .map(|_| ())
                    .map_err(Failure::AtCommit)
            }
        }
    }
}

// ------------------------------------------------------------ list-append

fn list_key(key: u64) -> Vec<u8> {
    format!("la:{key}").into_bytes()
}

fn decode_list(value: Option<&[u8]>) -> Vec<u64> {
    match value {
        None => Vec::new(),
        Some(bytes) => String::from_utf8_lossy(bytes)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("list elements are numbers we wrote"))
            .collect(),
    }
}

/// The list-append key `key` names (`la:{key}`), if it is one.
pub(crate) fn parse_list_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("la:")?
        .parse()
        .ok()
}

/// A list-append value as the workload writes it, or `None` if it is not
/// one (for values that did not come from the workload, e.g. a feed's).
pub(crate) fn decode_list_value(value: &[u8]) -> Option<Vec<u64>> {
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// The keys list-append uses: a few active ones; each is retired after
/// [`APPENDS_PER_KEY_MAX`] appends.
pub(crate) struct Keys {
    active: Vec<u64>,
    appends: BTreeMap<u64, u32>,
    next: u64,
}

impl Keys {
    pub(crate) fn new() -> Self {
        Keys {
            active: (0..ACTIVE_KEYS as u64).collect(),
            appends: BTreeMap::new(),
            next: ACTIVE_KEYS as u64,
        }
    }

    fn pick(&mut self, rng: &mut StdRng, append: bool) -> u64 {
        let slot = rng.random_range(0..self.active.len());
        let key = self.active[slot];
        if append {
            let n = self.appends.entry(key).or_insert(0);
            *n += 1;
            if *n >= APPENDS_PER_KEY_MAX {
                self.active[slot] = self.next;
                self.next += 1;
            }
        }
        key
    }

    /// Every key ever used.
    fn all(&self) -> Vec<u64> {
        (0..self.next).collect()
    }
}

fn random_list_txn(rng: &mut StdRng, keys: &Mutex<Keys>, values: &AtomicU64) -> Vec<Mop> {
    let n = rng.random_range(1..=MOPS_MAX);
    let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
    if rng.random_bool(STALE_READ_SHARE) {
        // A STALE read of a few keys, in a transaction of its own: any
        // in-sync replica may answer (checked for its bound and for the
        // session's own writes, outside the serializability graph).
        return (0..n)
            .map(|_| Mop::StaleRead {
                key: keys.pick(rng, false),
                bound_ns: STALE_READ_BOUND.as_nanos() as u64,
                value: None,
            })
            .collect();
    }
    (0..n)
        .map(|_| {
            let append = rng.random_bool(0.5);
            let key = keys.pick(rng, append);
            if append {
                Mop::Append {
                    key,
                    value: values.fetch_add(1, Ordering::Relaxed),
                }
            } else {
                Mop::Read { key, value: None }
            }
        })
        .collect()
}

/// Runs one list-append transaction; returns its micro-ops with the reads
/// filled in.
async fn run_list_txn(
    client: &Client,
    mode: ClientMode,
    mops: &[Mop],
) -> Result<Vec<Mop>, Failure> {
    if let Some(Mop::StaleRead { bound_ns, .. }) = mops.first() {
        return run_stale_reads(client, mops, Duration::from_nanos(*bound_ns)).await;
    }
    let mut tx = Tx::begin(client, mode);
    let mut done = Vec::with_capacity(mops.len());
    for mop in mops {
        match *mop {
            Mop::StaleRead { .. } => {
                unreachable!("STALE reads run in transactions of their own")
            }
            Mop::Read { key, .. } => {
                let list = decode_list(tx.get(&list_key(key)).await?.as_deref());
                done.push(Mop::Read {
                    key,
                    value: Some(list),
                });
            }
            Mop::Append { key, value } => {
                let mut list = decode_list(tx.get(&list_key(key)).await?.as_deref());
                list.push(value);
                tx.put(&list_key(key), encode_list(&list))?;
                done.push(mop.clone());
            }
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// Runs a transaction of STALE reads (bound `bound`) as one Get.
async fn run_stale_reads(
    client: &Client,
    mops: &[Mop],
    bound: Duration,
) -> Result<Vec<Mop>, Failure> {
    let keys: Vec<Vec<u8>> = mops.iter().map(|m| list_key(m.key())).collect();
    let items = client
        .get(&keys, Consistency::Stale(bound))
        .await
        .map_err(Failure::BeforeCommit)?;
    Ok(mops
        .iter()
        .zip(items)
        .map(|(mop, item)| Mop::StaleRead {
            key: mop.key(),
            bound_ns: bound.as_nanos() as u64,
            value: Some(decode_list(item.value())),
        })
        .collect())
}

// ------------------------------------------------------------------- bank

fn account_key(account: u64) -> Vec<u8> {
    format!("bank:{account}").into_bytes()
}

/// The account a bank key names (`bank:{account}`), if it is one.
pub(crate) fn parse_account_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("bank:")?
        .parse()
        .ok()
}

/// A balance as the workload writes it, or `None` if it is not one.
pub(crate) fn parse_balance(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn balance(value: Option<&[u8]>) -> i64 {
    value
        .map(|v| {
            String::from_utf8_lossy(v)
                .parse()
                .expect("balances are numbers we wrote")
        })
        .unwrap_or(0)
}

fn random_bank_txn(rng: &mut StdRng) -> Vec<BankMop> {
    if rng.random_bool(0.3) {
        return vec![BankMop::Read { balances: None }];
    }
    let from = rng.random_range(0..ACCOUNTS);
    let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
    vec![BankMop::Transfer {
        from,
        to,
        amount: rng.random_range(1..=5),
    }]
}

async fn run_bank_txn(
    client: &Client,
    mode: ClientMode,
    mops: &[BankMop],
) -> Result<Vec<BankMop>, Failure> {
    let mut tx = Tx::begin(client, mode);
    let mut done = Vec::with_capacity(mops.len());
    for mop in mops {
        match *mop {
            BankMop::Read { .. } => {
                let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account_key).collect();
                let values = tx.get_many(&keys).await?;
                done.push(BankMop::Read {
                    balances: Some(
                        values
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (i as u64, balance(v.as_deref())))
                            .collect(),
                    ),
                });
            }
            BankMop::Transfer { from, to, amount } => {
                let values = tx.get_many(&[account_key(from), account_key(to)]).await?;
                let (a, b) = (balance(values[0].as_deref()), balance(values[1].as_deref()));
                let amount_signed = amount as i64;
                if a < amount_signed {
                    return Err(Failure::BeforeCommit(Error::Application(format!(
                        "account {from} has {a}, less than {amount}"
                    ))));
                }
                tx.put(
                    &account_key(from),
                    (a - amount_signed).to_string().into_bytes(),
                )?;
                tx.put(
                    &account_key(to),
                    (b + amount_signed).to_string().into_bytes(),
                )?;
                done.push(mop.clone());
            }
        }
    }
    tx.commit().await?;
    Ok(done)
}

// -------------------------------------------------------------------- run

/// How client `worker` routes: even workers route to the shards
/// themselves, odd ones through the coordinator, so that every history
/// mixes both paths.
pub(crate) fn route_of(worker: usize) -> Route {
    if worker.is_multiple_of(2) {
        Route::Direct
    } else {
        Route::Coordinator
    }
}

pub(crate) async fn connect(addr: &str, route: Route) -> anyhow::Result<Client> {
    let options = Options {
        rpc_timeout: CLIENT_RPC_TIMEOUT,
        connect_timeout: Duration::from_secs(2),
        route,
    };
    let mut last = None;
    for _ in 0..FINAL_ATTEMPTS_MAX {
        match Client::connect_with(addr, options.clone()).await {
            Ok(client) => return Ok(client),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("cannot connect to {addr}: {last:?}")
}

/// One client task: runs transactions until `stop`, recording each.
pub(crate) async fn client_loop<M, G, R, Fut>(
    worker: usize,
    workers: usize,
    client: Client,
    recorder: Arc<Recorder<M>>,
    stop: Arc<AtomicBool>,
    mut generate: G,
    run: R,
) where
    M: Clone + Send + 'static,
    G: FnMut() -> Vec<M>,
    R: Fn(Client, Vec<M>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<M>, Failure>>,
{
    let mut process = worker as u64;
    while !stop.load(Ordering::Relaxed) {
        let mops = generate();
        recorder.push(process, OpKind::Invoke, mops.clone());
        let result = tokio::time::timeout(OP_TIMEOUT, run(client.clone(), mops)).await;
        let kind = match result {
            Ok(Ok(done)) => {
                recorder.push(process, OpKind::Ok, done);
                continue;
            }
            Ok(Err(failure)) => {
                let (kind, why) = match &failure {
                    Failure::AtCommit(Error::OutcomeUnknown { txn_id, .. }) => {
                        let asked =
                            tokio::time::timeout(STATUS_TIMEOUT, client.txn_status(*txn_id)).await;
                        match asked {
                            Ok(Ok(TxnState::Aborted)) => {
                                (OpKind::Fail, "outcome-unknown, then TxnStatus aborted")
                            }
                            Ok(Ok(TxnState::Committed)) => {
                                (OpKind::Info, "outcome-unknown, then TxnStatus committed")
                            }
                            _ => (OpKind::Info, "outcome-unknown, TxnStatus not known"),
                        }
                    }
                    _ => (completion(&failure), ""),
                };
                if why.is_empty() {
                    recorder.count(kind, &reason(&failure));
                } else {
                    recorder.count(kind, why);
                }
                kind
            }
            Err(_) => {
                recorder.count(OpKind::Info, "operation timed out");
                OpKind::Info
            }
        };
        recorder.push(process, kind, Vec::new());
        if kind == OpKind::Info {
            process += workers as u64;
        } else {
            // A short pause after a failure spreads out conflicting clients
            // and keeps a client of a dead coordinator from spinning.
            tokio::time::sleep(FAIL_PAUSE).await;
        }
    }
}

/// Starts clients of `workload` against `cluster`; they stop when `stop`
/// is set. Returns their tasks.
fn spawn_clients<M>(
    config: &RunConfig,
    clients: Vec<Client>,
    recorder: &Arc<Recorder<M>>,
    stop: &Arc<AtomicBool>,
    keys: &Arc<Mutex<Keys>>,
    values: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    M: WorkloadMop,
{
    let workers = clients.len();
    clients
        .into_iter()
        .enumerate()
        .map(|(worker, client)| {
            let mut rng = StdRng::seed_from_u64(config.seed ^ ((worker as u64 + 1) << 32));
            let keys = keys.clone();
            let values = values.clone();
            let mode = config.mode;
            tokio::spawn(client_loop(
                worker,
                workers,
                client,
                recorder.clone(),
                stop.clone(),
                move || M::generate(&mut rng, &keys, &values),
                move |client, mops| async move { M::run(&client, mode, &mops).await },
            ))
        })
        .collect()
}

/// What differs between workloads' micro-ops.
pub(crate) trait WorkloadMop: Clone + Send + Sync + TextMop + 'static {
    fn generate(rng: &mut StdRng, keys: &Mutex<Keys>, values: &AtomicU64) -> Vec<Self>;
    fn run(
        client: &Client,
        mode: ClientMode,
        mops: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, Failure>> + Send;
    /// The micro-ops of a read of every key in `keys` (list-append) or of
    /// every account (bank).
    fn final_read(keys: &[u64]) -> Vec<Self>;
    /// The checker of this workload, for strict serializability.
    fn check(ops: &[Op<Self>]) -> anyhow::Result<Report>;
}

impl WorkloadMop for Mop {
    fn generate(rng: &mut StdRng, keys: &Mutex<Keys>, values: &AtomicU64) -> Vec<Self> {
        random_list_txn(rng, keys, values)
    }

    fn run(
        client: &Client,
        mode: ClientMode,
        mops: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, Failure>> + Send {
        run_list_txn(client, mode, mops)
    }

    fn final_read(keys: &[u64]) -> Vec<Self> {
        keys.iter()
            .map(|&key| Mop::Read { key, value: None })
            .collect()
    }

    fn check(ops: &[Op<Self>]) -> anyhow::Result<Report> {
        Ok(list_append::check(ops, Model::StrictSerializable)?)
    }
}

impl WorkloadMop for BankMop {
    fn generate(rng: &mut StdRng, _keys: &Mutex<Keys>, _values: &AtomicU64) -> Vec<Self> {
        random_bank_txn(rng)
    }

    fn run(
        client: &Client,
        mode: ClientMode,
        mops: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, Failure>> + Send {
        run_bank_txn(client, mode, mops)
    }

    fn final_read(_keys: &[u64]) -> Vec<Self> {
        vec![BankMop::Read { balances: None }]
    }

    fn check(ops: &[Op<Self>]) -> anyhow::Result<Report> {
        let options = BankOptions {
            accounts: (0..ACCOUNTS).collect(),
            total: ACCOUNTS as i64 * BALANCE_START,
            forbid_negative: true,
        };
        Ok(bank::check(ops, &options)?)
    }
}

/// Runs `config`: cluster, workload under the nemesis, heal, settle, final
/// read, check. Writes `history.txt`, `nemesis.txt` and `verdict.txt` to
/// the run directory (printed). Errors only when the harness itself
/// cannot go on (a process that will not start).
pub async fn run(config: &RunConfig) -> anyhow::Result<RunResult> {
    match config.workload {
        Workload::ListAppend => run_workload::<Mop>(config).await,
        Workload::Bank => run_workload::<BankMop>(config).await,
    }
}

async fn run_workload<M: WorkloadMop>(config: &RunConfig) -> anyhow::Result<RunResult> {
    let temp = tempfile::Builder::new()
        .prefix(&format!("trellis-nemesis-{}-", config.workload.name()))
        .tempdir()?;
    let dir = temp.path().to_path_buf();
    eprintln!(
        "nemesis: {} seed={} time={:?} mode={:?}: writing to {}",
        config.workload.name(),
        config.seed,
        config.time,
        config.mode,
        dir.display()
    );
    let wants_disks = config.kinds.contains(&FaultKind::DiskFull);
    let mut cluster =
        FaultCluster::start_with_disks(&dir, config.coordinators, config.groups, wants_disks)
            .await?;
    let mut kinds = config.kinds.clone();
    let mut nemesis_log = Vec::new();
    if wants_disks && !cluster.has_disks() {
        kinds.retain(|k| *k != FaultKind::DiskFull);
        let note = "disk-full faults skipped: cannot mount a tmpfs per shard (not root?)";
        eprintln!("nemesis: {note}");
        nemesis_log.push(format!("# {note}"));
    }
    let config = RunConfig {
        kinds,
        ..config.clone()
    };
    run_workload_on::<M, _>(&config, &mut cluster, temp, nemesis_log).await
}

/// Runs `config`'s workload against `cluster` (already started, its files
/// in `temp`) under its own nemesis, then heals, settles, reads every key
/// once more and checks the history. See [`run`].
pub async fn run_on<C: NemesisCluster>(
    config: &RunConfig,
    cluster: &mut C,
    temp: tempfile::TempDir,
) -> anyhow::Result<RunResult> {
    match config.workload {
        Workload::ListAppend => run_workload_on::<Mop, C>(config, cluster, temp, Vec::new()).await,
        Workload::Bank => run_workload_on::<BankMop, C>(config, cluster, temp, Vec::new()).await,
    }
}

async fn run_workload_on<M: WorkloadMop, C: NemesisCluster>(
    config: &RunConfig,
    cluster: &mut C,
    temp: tempfile::TempDir,
    mut nemesis_log: Vec<String>,
) -> anyhow::Result<RunResult> {
    let dir = temp.path().to_path_buf();
    let mut clients = Vec::new();
    for c in 0..config.clients {
        clients.push(connect(&cluster.client_addr(c), route_of(c)).await?);
    }
    if config.workload == Workload::Bank {
        open_accounts(&clients[0]).await?;
    }

    let start = Instant::now();
    let recorder = Arc::new(Recorder::<M>::new(Clock::Real(start)));
    let stop = Arc::new(AtomicBool::new(false));
    let keys = Arc::new(Mutex::new(Keys::new()));
    let values = Arc::new(AtomicU64::new(0));
    let tasks = spawn_clients(config, clients.clone(), &recorder, &stop, &keys, &values);

    let schedule = Schedule {
        seed: config.seed,
        kinds: config.kinds.clone(),
        interval: config.interval,
        hold: config.hold,
    };
    let faults = run_schedule(
        cluster,
        &schedule,
        start,
        start + config.time,
        &mut nemesis_log,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, futures_join(tasks)).await;
    // A client still running now is stopped where it is: its open
    // operation stays open in the history, which counts it as info.
    aborts.iter().for_each(tokio::task::AbortHandle::abort);
    let faults = faults?;
    if drained.is_err() {
        nemesis_log.push(format!(
            "clients did not stop within {DRAIN_TIMEOUT:?}; their open operations count as info"
        ));
    }

    cluster.heal_all()?;
    cluster.wait_ready().await?;
    let stuck = cluster.settle().await.err();
    let final_read_error = final_read::<M>(&clients[0], &recorder, &keys).await.err();

    let ops = recorder.take();
    let report = M::check(&ops)?;
    let counts = [OpKind::Ok, OpKind::Fail, OpKind::Info]
        .map(|k| ops.iter().filter(|op| op.kind == k).count());

    format::save(&dir.join("history.txt"), &ops)?;
    std::fs::write(dir.join("nemesis.txt"), nemesis_log.join("\n") + "\n")?;
    let mut verdict = format!(
        "workload: {}\nmode: {:?}\nseed: {}\ntime: {:?}\nclients: {}\ncoordinators: {}\ngroups: {}\n\
         faults inflicted: {faults}\nok: {}\nfail: {}\ninfo: {}\n",
        config.workload.name(),
        config.mode,
        config.seed,
        config.time,
        config.clients,
        config.coordinators,
        config.groups,
        counts[0],
        counts[1],
        counts[2],
    );
    if let Some(n) = stuck {
        verdict.push_str(&format!(
            "STUCK LOCKS: {n} transactions still prepared {:?} after healing\n",
            crate::nemesis::SETTLE_TIMEOUT
        ));
    }
    let unexpected_exits = cluster.unexpected_exits();
    for exit in &unexpected_exits {
        verdict.push_str(&format!("UNEXPECTED EXIT: {exit}\n"));
    }
    if let Some(err) = &final_read_error {
        verdict.push_str(&format!("FINAL READ FAILED: {err}\n"));
    }
    verdict.push_str("why operations did not commit:\n");
    verdict.push_str(&recorder.reasons());
    verdict.push_str(&report.to_string());
    std::fs::write(dir.join("verdict.txt"), &verdict)?;
    eprintln!(
        "nemesis: {} seed={}: {} faults, ok={} fail={} info={}, verdict {}: {}",
        config.workload.name(),
        config.seed,
        faults,
        counts[0],
        counts[1],
        counts[2],
        report.verdict,
        dir.join("verdict.txt").display()
    );
    Ok(RunResult {
        seed: config.seed,
        report,
        stuck,
        final_read_error,
        unexpected_exits,
        faults,
        counts,
        dir,
        _temp: temp,
    })
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// Writes the opening balances (not part of the history: every read sees
/// them or what transfers made of them).
pub(crate) async fn open_accounts(client: &Client) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..FINAL_ATTEMPTS_MAX {
        let txn = client.begin();
        for a in 0..ACCOUNTS {
            txn.put(&account_key(a), BALANCE_START.to_string().as_bytes())?;
        }
        match txn.commit().await {
            Ok(_) => return Ok(()),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("cannot open the accounts: {last:?}")
}

/// Reads every key in one transaction, recorded as process
/// [`FINAL_PROCESS`]; retried (each attempt recorded) until it commits.
pub(crate) async fn final_read<M: WorkloadMop>(
    client: &Client,
    recorder: &Recorder<M>,
    keys: &Mutex<Keys>,
) -> Result<(), String> {
    let all = keys.lock().unwrap_or_else(|p| p.into_inner()).all();
    let mut last = String::new();
    for attempt in 0..FINAL_ATTEMPTS_MAX {
        let process = FINAL_PROCESS + u64::from(attempt);
        let mops = M::final_read(&all);
        recorder.push(process, OpKind::Invoke, mops.clone());
        match tokio::time::timeout(OP_TIMEOUT, M::run(client, ClientMode::Correct, &mops)).await {
            Ok(Ok(done)) => {
                recorder.push(process, OpKind::Ok, done);
                return Ok(());
            }
            Ok(Err(Failure::BeforeCommit(err) | Failure::AtCommit(err))) => {
                last = err.to_string();
            }
            Err(_) => last = "timed out".to_string(),
        }
        // Read-only: a failed attempt changed nothing, whatever it was told.
        recorder.push(process, OpKind::Fail, Vec::new());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}
