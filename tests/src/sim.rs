//! The deterministic simulator: a whole Trellis cluster — a coordinator,
//! every replica of every shard group, the catalog and the clients — in one
//! thread under turmoil, from one seed.
//!
//! The nodes run the real code: the coordinator's and the shards' tonic
//! services over turmoil's simulated TCP (`trellis-net`), the shards' logs
//! and snapshots on turmoil's simulated disks (`trellis_shard::fsio`), the
//! client library for the workload, simulated time for every lease, timer
//! and deadline. What the simulator swaps: the catalog is the in-memory
//! backend (`Catalog::in_memory`; sqlx drivers run threads of their own,
//! which a single-threaded simulation cannot schedule). Its data survives
//! coordinator crashes, as a database would.
//!
//! # A run
//! 1. Hosts: `coord`, `g{G}r{R}` for every replica, `client-{N}`.
//! 2. Clients run the list-append (or bank) workload for
//!    [`SimConfig::time`] of simulated time while the nemesis, driven by
//!    the seed, crashes and restarts shard replicas and the coordinator
//!    (unsynced disk writes are lost), cuts replicas from their group
//!    (a primary from its backups among them), cuts the coordinator from
//!    a replica (between prepare and decide, sometimes), cuts two replicas
//!    of a group from each other, holds a client's or replica's messages to
//!    the coordinator, cuts a link one way (`trellis_net::sim::cut_oneway`:
//!    a replica's way to or from the rest of its group, the coordinator's
//!    to or from a replica, a client's to or from the coordinator), lets an operator move a group's primary
//!    (transfer-primary), fills a replica's disk, and fails disks (torn
//!    and lost writes, EIO: [`DiskFaults`]). Cuts hold messages and release
//!    them when healed, as TCP would deliver them (see `Fault`).
//! 3. Everything is healed and restarted; a final read of every key
//!    commits; the checker judges the history.
//! 4. All along, a feed consumer (host `feed`, [`feed`]) watches every
//!    group's change feed through the coordinator from the logs'
//!    beginning, resuming from its cursor whenever its stream breaks;
//!    after the final read it catches up, and its record is judged against
//!    the history (`trellis_checker::feed`): every committed transaction's
//!    writes once per group, none of a failed one, positions and versions
//!    rising per group. The consumer registers its feed and saves its
//!    cursor every second, so every replica keeps its log from there: a
//!    group that no longer keeps its log after the consumer's cursor
//!    (FEED_HISTORY_GONE) fails the seed (`SimResult::feed_gaps`; the
//!    consumer watches again from now so that the other rules are judged).
//!
//! With [`SimConfig::reshard`] (`trellis-sim --reshard`) the cluster has
//! one more group, `g{groups+1}r{R}`, added empty by the coordinator
//! (`Catalog::add_group`); the coordinator host runs the reshard driver
//! (`trellis_coordinator::reshard_driver::Driver`) as `trellis
//! coordinator` does; and an operator (`reshard::Resharder`, from hosts
//! `reshard-N`, on an RNG of its own) calls `Admin.Rebalance` and then
//! `Admin.MoveSlots` of a few random slots between random groups, with one
//! `Admin.DrainGroup` of group 2 among them, while the nemesis strikes (the
//! added group's replicas included). After healing, the run waits (at most
//! [`reshard::JOBS_SETTLE_MAX`] of simulated time, resuming jobs that
//! paused themselves) for every job to finish, then empties group 2 (drained
//! again if it still owns slots) and removes it (`Admin.RemoveGroup`) before
//! the final read; it fails if a job never finishes, no slot moved, or
//! group 2 could not be removed. The jobs' freeze deadlines read
//! `trellis_types::clock`, simulated here.
//!
//! Same seed, same run: the fault schedule, the clients' choices, the
//! transaction ids and the retry jitter all come from the seed (see
//! `trellis_types::rng`), turmoil orders every message from it, and
//! [`SimResult::fingerprint`] hashes the whole history and fault log so a
//! test can check that two runs agree bit for bit.
//!
//! One condition: each run in a fresh process. Tokio numbers tasks from a
//! process-wide counter, and a crashed host's runtime drops its tasks (and
//! so closes their sockets) in an order that follows those numbers; a
//! second run in the same process closes them in another order, and the
//! simulated network diverges from there. The `trellis-sim` binary runs
//! every seed in a process of its own; [`replay_command`] points at it.

// Without `--cfg tokio_unstable` turmoil cannot seed each simulated host's
// tokio runtime, so a seed would no longer replay bit for bit. Cargo reads
// that flag from `.cargo/config.toml` in the directory it is started from
// (not the manifest's), so a build started elsewhere (`--manifest-path`)
// lacks it: refuse to build the simulator then, rather than
// run seeds that mean nothing. The `trellis` binary needs no such flag.
#[cfg(not(tokio_unstable))]
compile_error!(
    "the deterministic simulator needs `--cfg tokio_unstable`: run cargo from the \
     repository root (which reads .cargo/config.toml) or set \
     RUSTFLAGS=\"--cfg tokio_unstable\""
);

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trellis_checker::bank::BankMop;
use trellis_checker::format::{self};
use trellis_checker::{Mop, OpKind, Report, Verdict};
use trellis_coordinator::catalog::Catalog;
use trellis_shard::wal::WalError;
use trellis_shard::{Shard, ShardConfig, ShardError};
use trellis_types::SlotSet;

pub mod feed;
pub mod reshard;

use trellis_client::Route;

use self::feed::{FEED_HOST, Feed, FeedCheck};
use self::reshard::{JobsOutcome, Resharder, wait_for_jobs};
use crate::workload::{
    ClientMode, Clock, Keys, Recorder, Workload, WorkloadMop, client_loop, connect, final_read,
    open_accounts, route_of,
};

/// The port every simulated node serves gRPC on.
pub const PORT: u16 = 7000;
/// The coordinator's host name.
pub const COORDINATOR: &str = "coord";
/// One simulation step.
pub const TICK: Duration = Duration::from_millis(2);
/// Longest simulated time a run may take before it counts as stuck.
pub const SIM_TIME_MAX: Duration = Duration::from_secs(600);
/// Longest one-way message latency the network draws (the shortest is
/// [`LATENCY_MIN`]).
pub const LATENCY_MAX: Duration = Duration::from_millis(25);
pub const LATENCY_MIN: Duration = Duration::from_micros(200);
/// Bytes of log a primary keeps in memory for backups in the simulator:
/// tiny (a replica logs a few hundred bytes a second here), so that a
/// backup down for a second or two catches up past the feed.
pub const SIM_FEED_BYTES_MAX: usize = 512;
/// Replicas' logs in the simulator: small segments, frequent snapshots
/// and little kept after them, so that within one run backups catch up
/// from the feed, from the log on disk, and by snapshot.
pub const SIM_LOG: trellis_shard::engine::LogConfig = trellis_shard::engine::LogConfig {
    segment_bytes: 1024,
    snapshot_every_bytes: 2 * 1024,
    retain_bytes: 1024,
};
/// Catch-up rate in the simulator: slow enough that a snapshot or backlog
/// takes several simulated steps, so faults land in the middle of one.
pub const SIM_CATCH_UP_BYTES_PER_SEC: u64 = 256 * 1024;
/// Pause between faults is drawn from this range.
pub const FAULT_GAP_MS: std::ops::Range<u64> = 200..1500;
/// A fault lasts a time drawn from this range.
pub const FAULT_HOLD_MS: std::ops::Range<u64> = 300..3000;
/// Most faults in force at once.
pub const FAULTS_AT_ONCE_MAX: usize = 2;
/// Times the final read is tried (each with the workload's attempts).
pub const FINAL_READ_ROUNDS: u32 = 3;
/// Longest simulated time from healing every fault to the end of the run
/// (clients drain, the final read commits). Leases, failover and
/// keep-alives each take a second or two; a run that needs longer is
/// stuck, which is a failure even when nothing was lost.
pub const SETTLE_MAX: Duration = Duration::from_secs(15);
/// Simulated time the cluster gets to come up before clients start.
pub const STARTUP: Duration = Duration::from_secs(3);
/// Block size of torn writes: a crash keeps a random prefix of blocks of
/// each unsynced write (in seeds that tear writes). Turmoil counts blocks
/// from the start of each write, not from aligned offsets, so this stands
/// for a write cut at any page boundary; smaller than most log records,
/// so that a crash can keep part of one (a batch of one short record in a
/// single block is either kept whole or lost, never torn).
pub const TORN_BLOCK_BYTES: u64 = 16;
/// Chance that the simulated disk flushes an unsynced write by itself (in
/// seeds that flush at random), so a crash keeps some of them.
pub const RANDOM_SYNC_PROBABILITY: f64 = 0.1;
/// Chance that a disk read or write fails with EIO (in seeds with failing
/// disks). A shard whose log fails stops (fail-stop) and is restarted.
pub const IO_ERROR_PROBABILITY: f64 = 0.002;
/// Deadline of each call an operator makes (status, transfer-primary).
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(5);
/// Share of seeds with each disk fault, drawn from the seed.
pub const DISK_FAULT_SHARE: f64 = 0.4;
/// Share of replica crashes that wait for the replica to have a log batch
/// written but not synced, so the crash loses (or, with torn writes,
/// tears) it. A crash at a random moment almost never lands there: the
/// write-to-sync window is [`trellis_shard::wal::SIM_SYNC_LATENCY`] and a
/// replica writes a few batches a second.
pub const MID_WRITE_CRASH_SHARE: f64 = 0.5;
/// Longest such a crash waits for a batch in flight before it crashes
/// the replica anyway.
pub const MID_WRITE_WAIT_MAX: Duration = Duration::from_millis(500);
/// Size of every simulated disk. A replica uses a few tens of KiB here; a
/// disk-full fault fills the rest with a ballast file.
pub const SIM_DISK_BYTES: u64 = 1024 * 1024;
/// The file a disk-full fault fills a replica's disk with, in chunks, each
/// synced: turmoil counts an unsynced append as if it began at the synced
/// length, so many unsynced chunks would look far bigger than they are.
const BALLAST: &str = "/ballast";
const BALLAST_CHUNK: usize = 4096;
/// How often a replica host looks whether its disk is to be full.
const BALLAST_POLL: Duration = Duration::from_millis(10);
/// The simulated wall clock (`trellis_types::clock`) reads this many Unix
/// milliseconds at the start of every run: fixed, so that a reshard job's
/// times replay.
pub const SIM_EPOCH_UNIX_MS: u64 = 1_800_000_000_000;
/// How long the supervisor waits before it restarts a replica whose disk
/// failed (systemd's RestartSec): a disk still full would otherwise make
/// it restart at every step.
pub const SUPERVISOR_RESTART_DELAY: Duration = Duration::from_millis(200);

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub workload: Workload,
    pub groups: u32,
    pub replicas: u32,
    pub clients: usize,
    /// Simulated time the clients run for, faults included.
    pub time: Duration,
    /// Whether the nemesis runs.
    pub faults: bool,
    /// How clients use the library ([`ClientMode::BlindWrites`] only to
    /// show that the checker catches what a broken client does).
    pub mode: ClientMode,
    /// What the simulated disks do wrong (drawn from the seed).
    pub disk: DiskFaults,
    /// Resharding under the workload: one more group, added empty, and
    /// an operator who rebalances onto it and then moves random slots
    /// between random groups, drains group 2 and removes it at the end,
    /// while the coordinator's reshard driver runs the jobs (see
    /// `reshard::Resharder`). Its draws come from an RNG of its own, so
    /// runs without it are the same as before it existed.
    pub reshard: bool,
}

/// Disk faults of one run, for every shard host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskFaults {
    /// A crash tears unsynced writes at this block size.
    pub torn_block: Option<u64>,
    /// Chance that an unsynced write becomes durable by itself.
    pub random_sync: f64,
    /// Chance that a read or write fails with EIO.
    pub io_error: f64,
}

impl DiskFaults {
    /// None: a crash loses exactly the unsynced writes.
    pub const NONE: DiskFaults = DiskFaults {
        torn_block: None,
        random_sync: 0.0,
        io_error: 0.0,
    };

    /// Each fault in [`DISK_FAULT_SHARE`] of seeds, independently.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6469_736b_6661_756c);
        DiskFaults {
            torn_block: rng
                .random_bool(DISK_FAULT_SHARE)
                .then_some(TORN_BLOCK_BYTES),
            random_sync: if rng.random_bool(DISK_FAULT_SHARE) {
                RANDOM_SYNC_PROBABILITY
            } else {
                0.0
            },
            io_error: if rng.random_bool(DISK_FAULT_SHARE) {
                IO_ERROR_PROBABILITY
            } else {
                0.0
            },
        }
    }
}

impl SimConfig {
    /// The CI configuration: list-append, 2 groups of 3 replicas, 3
    /// clients, 10 simulated seconds of faults, disk faults drawn from the
    /// seed.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            workload: Workload::ListAppend,
            groups: 2,
            replicas: 3,
            clients: 3,
            time: Duration::from_secs(10),
            faults: true,
            mode: ClientMode::Correct,
            disk: DiskFaults::for_seed(seed),
            reshard: false,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct SimResult {
    pub seed: u64,
    pub report: Report,
    /// Completions: ok, fail, info.
    pub counts: [usize; 3],
    /// Why operations did not commit, one line per completion and reason
    /// (OUTCOME_UNKNOWN ones with what TxnStatus then said).
    pub reasons: String,
    /// What the nemesis did, with simulated times.
    pub faults: Vec<String>,
    pub final_read_error: Option<String>,
    /// The history in the checker's text form.
    pub history: String,
    /// Hosts whose software stopped though no fault stopped it.
    pub unexpected_exits: Vec<String>,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// Simulated time from healing every fault to the end of the run.
    pub settle_time: Duration,
    /// Hash of history, fault log and simulated time: equal for two runs of
    /// the same seed, each in a fresh process.
    pub fingerprint: u64,
    /// The command that replays this run.
    pub replay: String,
    /// Recoveries that cut a torn or unsynced tail off a shard's log.
    pub torn_tails: u64,
    /// Shards restarted because their disk failed.
    pub disk_restarts: u64,
    /// Of those, restarts after a full disk (ENOSPC).
    pub full_disk_restarts: u64,
    /// Records primaries sent to backups from their logs on disk (past the
    /// in-memory feed), all boots of all replicas.
    pub log_catch_up_records: u64,
    /// Snapshots backups installed from their primaries.
    pub snapshot_installs: u64,
    /// Reads, writes and dials held by one-way cuts.
    pub one_way_holds: u64,
    /// With [`SimConfig::reshard`]: slots moved by the jobs that finished.
    pub slots_moved: u64,
    /// With [`SimConfig::reshard`]: why resharding failed (a job that
    /// never finished, no slot moved).
    pub reshard_error: Option<String>,
    /// The feed consumer's record judged against the history.
    pub feed: trellis_checker::feed::FeedReport,
    /// Watches the feed consumer opened (one more after each break).
    pub feed_watches: u64,
    /// Why the consumer's watches broke, with simulated times.
    pub feed_breaks: Vec<String>,
    /// History a group no longer kept for the consumer (see
    /// `feed::HISTORY_GONE`): completeness was not judged, and each is a
    /// problem of `feed`.
    pub feed_gaps: Vec<String>,
}

impl SimResult {
    /// No anomaly, a final read, no host stopped by itself.
    pub fn passed(&self) -> bool {
        self.report.verdict == Verdict::Valid
            && self.final_read_error.is_none()
            && self.reshard_error.is_none()
            && self.unexpected_exits.is_empty()
            && self.feed.valid()
            && self.settle_time <= SETTLE_MAX
    }

    /// A summary for a failing seed: what went wrong and how to replay it.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "seed {} FAILED after {:?} of simulated time (ok={} fail={} info={})\n",
            self.seed, self.sim_time, self.counts[0], self.counts[1], self.counts[2]
        );
        if self.settle_time > SETTLE_MAX {
            out.push_str(&format!(
                "stuck: {:?} from healing every fault to the end of the run (at most {SETTLE_MAX:?})\n",
                self.settle_time
            ));
        }
        if let Some(err) = &self.final_read_error {
            out.push_str(&format!("final read failed: {err}\n"));
        }
        if let Some(err) = &self.reshard_error {
            out.push_str(&format!("resharding failed: {err}\n"));
        }
        for exit in &self.unexpected_exits {
            out.push_str(&format!("host stopped by itself: {exit}\n"));
        }
        if !self.feed.valid() {
            out.push_str(&format!(
                "the change feed disagrees with the history ({} events, {} transactions, {} watches):\n",
                self.feed.events, self.feed.txns_seen, self.feed_watches
            ));
            for problem in &self.feed.problems {
                out.push_str(&format!("  {problem}\n"));
            }
            for gap in &self.feed_gaps {
                out.push_str(&format!("  (a gap: completeness not judged) {gap}\n"));
            }
            out.push_str("feed breaks:\n");
            for why in &self.feed_breaks {
                out.push_str(&format!("  {why}\n"));
            }
        }
        out.push_str("faults:\n");
        for fault in &self.faults {
            out.push_str(&format!("  {fault}\n"));
        }
        out.push_str(&self.report.to_string());
        out.push_str(&format!("\nreplay: {}\n", self.replay));
        out
    }
}

/// The command that replays one seed.
///
/// Replays are exact in a fresh process only, so this runs the
/// `trellis-sim` binary, never [`run`] a second time in the same process
/// (see `tests/src/bin/trellis-sim.rs`).
pub fn replay_command(config: &SimConfig) -> String {
    let mut command = format!(
        "cargo run -p trellis-tests --bin trellis-sim -- --seed {}",
        config.seed
    );
    if config.workload == Workload::Bank {
        command.push_str(" --workload bank");
    }
    if config.time != SimConfig::new(config.seed).time {
        command.push_str(&format!(" --time {}", config.time.as_secs()));
    }
    if !config.faults {
        command.push_str(" --no-faults");
    }
    if config.reshard {
        command.push_str(" --reshard");
    }
    command
}

fn shard_host(group: u32, replica: u32) -> String {
    format!("g{group}r{replica}")
}

fn client_host(client: usize) -> String {
    format!("client-{client}")
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Runs one seed to the end.
pub fn run(config: &SimConfig) -> anyhow::Result<SimResult> {
    match config.workload {
        Workload::ListAppend => run_workload::<Mop>(config),
        Workload::Bank => run_workload::<BankMop>(config),
    }
}

/// Why a host's software ended, by host (set by the host itself).
type Exits = Arc<Mutex<BTreeMap<String, String>>>;

fn run_workload<M: WorkloadMop + FeedCheck>(config: &SimConfig) -> anyhow::Result<SimResult> {
    trellis_types::rng::seed_thread(config.seed);
    trellis_types::clock::simulate_thread(simulated_unix_ms);
    // One-way cuts live with the thread; an earlier run that ended early
    // (an error) may have left some.
    trellis_net::sim::heal_all_oneway();
    let disk = if config.faults {
        config.disk
    } else {
        DiskFaults::NONE
    };
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(config.seed)
        .simulation_duration(SIM_TIME_MAX)
        .tick_duration(TICK)
        .min_message_latency(LATENCY_MIN)
        .max_message_latency(LATENCY_MAX);
    let fs = builder.fs();
    fs.capacity(SIM_DISK_BYTES)
        .sync_probability(disk.random_sync)
        .io_error_probability(disk.io_error);
    if let Some(block) = disk.torn_block {
        fs.block_size(block);
    }
    let mut sim = builder.build();
    // Named from the seed, not drawn: a draw would shift every later one.
    let cluster = trellis_types::ClusterId::new((config.seed >> 1).max(1))
        .expect("a positive 63-bit id is in range");
    let catalog = Catalog::in_memory_of(cluster);
    let exits: Exits = Arc::default();
    let disk_exits: Exits = Arc::default();
    let torn_tails = Arc::new(AtomicU64::new(0));
    let probes = LogProbes::default();
    let fills = DiskFills::default();

    // With resharding, one more group: added empty to the catalog by the
    // coordinator, its replicas started like the others.
    let added_group = config.reshard.then_some(config.groups + 1);
    let all_groups = added_group.unwrap_or(config.groups);

    // The coordinator.
    {
        let catalog = catalog.clone();
        let groups = config.groups;
        let exits = exits.clone();
        sim.host(COORDINATOR, move || {
            let catalog = catalog.clone();
            let exits = exits.clone();
            async move {
                if let Err(err) = coordinator(catalog, groups, added_group).await {
                    note_exit(&exits, COORDINATOR, &err.to_string());
                }
                Ok(())
            }
        });
    }
    // Every replica of every group.
    let mut shard_hosts = Vec::new();
    for group in 1..=all_groups {
        let mut members = Vec::new();
        for replica in 0..config.replicas {
            let name = shard_host(group, replica);
            let (exits, disk_exits, torn) = (exits.clone(), disk_exits.clone(), torn_tails.clone());
            let (probes, fills) = (probes.clone(), fills.clone());
            let host = name.clone();
            sim.host(name.as_str(), move || {
                let name = host.clone();
                let (exits, disk_exits, torn) = (exits.clone(), disk_exits.clone(), torn.clone());
                let (probes, fills) = (probes.clone(), fills.clone());
                async move {
                    // A node that stops by itself is reported, not fatal to
                    // the simulation: the run goes on and fails at the end.
                    // One that stops because its disk failed is restarted
                    // (when the seed's disks fail), as a supervisor would.
                    match shard(name.clone(), u64::from(group), torn, probes, fills.clone()).await {
                        Ok(()) => {}
                        Err(Stop::Disk(why))
                            if disk.io_error > 0.0
                                || (why.contains(NO_SPACE) && fills.ever_filled(&name)) =>
                        {
                            disk_exits
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(name.clone(), why);
                        }
                        Err(Stop::Disk(why) | Stop::Other(why)) => {
                            note_exit(&exits, &name, &why);
                        }
                    }
                    Ok(())
                }
            });
            members.push(name);
        }
        shard_hosts.push(members);
    }

    // The feed consumer, from the start: before any write.
    let feed = Feed::default();
    {
        let feed = feed.clone();
        sim.host(FEED_HOST, move || feed::consume(feed.clone()));
    }

    // The clients.
    let recorder = Arc::new(Recorder::<M>::new(Clock::Simulated));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(config.workload != Workload::Bank));
    let keys = Arc::new(Mutex::new(Keys::new()));
    let values = Arc::new(AtomicU64::new(0));
    let coordinator_addr = format!("{COORDINATOR}:{PORT}");
    // Every client is kept until the run is over. Dropping a client that
    // routes itself drops its channels to the shards and its transaction
    // manager while the simulation still runs; that made two runs of a
    // reshard seed differ after the workload ended (seen with seed 20000
    // --reshard: the operator's drain retried at 13.06 s in one run,
    // 13.07 s in the other). Not explained yet; kept, they replay bit for
    // bit.
    let kept: Arc<Mutex<Vec<trellis_client::Client>>> = Arc::default();
    for c in 0..config.clients {
        let mut rng = StdRng::seed_from_u64(config.seed ^ ((c as u64 + 1) << 32));
        let (recorder, stop, ready, keys, values) = (
            recorder.clone(),
            stop.clone(),
            ready.clone(),
            keys.clone(),
            values.clone(),
        );
        let addr = coordinator_addr.clone();
        let kept = kept.clone();
        let workers = config.clients;
        let mode = config.mode;
        sim.client(client_host(c).as_str(), async move {
            tokio::time::sleep(STARTUP).await;
            let client = connect(&addr, route_of(c)).await?;
            let keep = client.clone();
            if c == 0 && !ready.load(Ordering::Relaxed) {
                open_accounts(&client).await?;
                ready.store(true, Ordering::Relaxed);
            }
            while !ready.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client_loop(
                c,
                workers,
                client,
                recorder,
                stop,
                move || M::generate(&mut rng, &keys, &values),
                move |client, mops| async move { M::run(&client, mode, &mops).await },
            )
            .await;
            kept.lock().unwrap_or_else(|p| p.into_inner()).push(keep);
            Ok(())
        });
    }

    let mut nemesis = Nemesis::new(
        config.seed,
        &shard_hosts,
        config.clients,
        probes.clone(),
        fills.clone(),
    );
    let mut supervisor = Supervisor::default();
    let mut log = vec![format!("disks: {disk:?}")];
    let workload_end = STARTUP + config.time;
    let mut resharder = config
        .reshard
        .then(|| Resharder::new(config.seed, all_groups, catalog.clone(), stop.clone()));
    let jobs_outcome: Arc<Mutex<Option<JobsOutcome>>> = Arc::default();
    let mut healed = false;
    let mut final_started = false;
    let final_error: Arc<Mutex<Option<String>>> = Arc::default();
    loop {
        let done = sim
            .step()
            .map_err(|e| anyhow::anyhow!("seed {}: the simulation failed: {e}", config.seed))?;
        let now = sim.elapsed();
        supervisor.step(&mut sim, &disk_exits, now, &mut log);
        if !healed {
            if now >= workload_end {
                stop.store(true, Ordering::Relaxed);
                nemesis.heal_all(&mut sim, now, &mut log);
                healed = true;
                if config.reshard {
                    // A client host, so the run's end (and the final
                    // read) waits for it.
                    let drain = resharder.as_ref().and_then(|r| r.drain());
                    sim.client(
                        "reshard-wait",
                        wait_for_jobs(jobs_outcome.clone(), drain, catalog.clone()),
                    );
                }
            } else {
                if config.faults && now >= STARTUP {
                    nemesis.step(&mut sim, now, &mut log);
                }
                if let Some(resharder) = resharder.as_mut() {
                    resharder.step(&mut sim, now, &mut log);
                }
            }
        }
        if done {
            if !healed {
                anyhow::bail!(
                    "seed {}: every client stopped before the workload ended",
                    config.seed
                );
            }
            if final_started {
                break;
            }
            final_started = true;
            let (recorder, keys, addr, final_error, feed) = (
                recorder.clone(),
                keys.clone(),
                coordinator_addr.clone(),
                final_error.clone(),
                feed.clone(),
            );
            sim.client("final", async move {
                let client = connect(&addr, Route::Coordinator).await?;
                let mut last = None;
                for _ in 0..FINAL_READ_ROUNDS {
                    match final_read::<M>(&client, &recorder, &keys).await {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(err) => last = Some(err),
                    }
                }
                *final_error.lock().unwrap_or_else(|p| p.into_inner()) = last;
                feed.final_done().await;
                Ok(())
            });
        }
    }
    let sim_time = sim.elapsed();
    supervisor.restart_all(&mut sim);
    log.append(
        &mut nemesis
            .operator_log
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    if let Some(resharder) = &resharder {
        log.append(&mut resharder.log.lock().unwrap_or_else(|p| p.into_inner()));
    }
    // With resharding the settling is timed from the jobs' end: the jobs
    // get JOBS_SETTLE_MAX of their own, the rest SETTLE_MAX as always.
    let (settle_from, slots_moved, reshard_error) = match (
        config.reshard,
        jobs_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    ) {
        (false, _) => (workload_end, 0, None),
        (true, None) => (
            workload_end,
            0,
            Some("the reshard jobs were never waited for (the run ended first)".to_string()),
        ),
        (true, Some(outcome)) => {
            log.push(format!("{:?} reshard: {}", outcome.at, outcome.summary));
            if let Some(removed) = &outcome.removed {
                log.push(format!(
                    "{:?} reshard: remove-group: {removed:?}",
                    outcome.at
                ));
            }
            let error = outcome.error();
            (
                outcome.at.max(workload_end),
                outcome.moved.unwrap_or(0),
                error,
            )
        }
    };
    let mut unexpected_exits: Vec<String> = exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(host, why)| format!("{host}: {why}"))
        .collect();
    for host in nemesis.all_nodes() {
        if !sim.is_host_running(host.as_str())
            && !unexpected_exits.iter().any(|e| e.starts_with(&host))
        {
            unexpected_exits.push(format!("{host}: not running at the end"));
        }
    }
    trellis_types::rng::unseed_thread();
    trellis_types::clock::unsimulate_thread();
    let one_way_holds = trellis_net::sim::one_way_holds();
    trellis_net::sim::heal_all_oneway();

    let reasons = recorder.reasons();
    let ops = recorder.take();
    let report = M::check(&ops)?;
    let counts = [OpKind::Ok, OpKind::Fail, OpKind::Info]
        .map(|k| ops.iter().filter(|op| op.kind == k).count());
    let history = format::write(&ops);
    let (feed_report, feed_breaks, feed_gaps) = feed::judge(&ops, &feed);
    let (feed_watches, final_done_at) = {
        let state = feed.lock();
        (state.watches, state.final_done_at)
    };
    let mut hasher = std::hash::DefaultHasher::new();
    history.hash(&mut hasher);
    log.hash(&mut hasher);
    sim_time.hash(&mut hasher);
    for message in &feed.lock().messages {
        format!("{message:?}").hash(&mut hasher);
    }
    // (The gaps are among the breaks.)
    feed_breaks.hash(&mut hasher);
    let final_read_error = final_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    let disk_restarts = log.iter().filter(|l| l.contains(" restart ")).count() as u64;
    let full_disk_restarts = log
        .iter()
        .filter(|l| l.contains(" restart ") && l.contains(NO_SPACE))
        .count() as u64;
    Ok(SimResult {
        seed: config.seed,
        report,
        counts,
        reasons,
        faults: log,
        final_read_error,
        // Up to the final read's end: the feed's catch-up after it has a
        // bound of its own (`feed::FEED_CATCH_UP_MAX`).
        settle_time: final_done_at
            .unwrap_or(sim_time)
            .saturating_sub(settle_from),
        history,
        unexpected_exits,
        sim_time,
        fingerprint: hasher.finish(),
        replay: replay_command(config),
        torn_tails: torn_tails.load(Ordering::Relaxed),
        disk_restarts,
        full_disk_restarts,
        log_catch_up_records: probes.total(|m| &m.catch_up_log_records),
        snapshot_installs: probes.total(|m| &m.snapshot_installs),
        one_way_holds,
        slots_moved,
        reshard_error,
        feed: feed_report,
        feed_watches,
        feed_breaks,
        feed_gaps,
    })
}

fn note_exit(exits: &Exits, host: &str, why: &str) {
    exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(host.to_string(), why.to_string());
}

/// The supervisor: a shard that stopped because its disk failed is
/// crashed (the unsynced writes of a failed disk are not to be trusted) and
/// started again at once, its orphaned tasks cancelled.
/// Restarts replicas whose disk failed, [`SUPERVISOR_RESTART_DELAY`]
/// after they stopped, as a supervisor would.
#[derive(Default)]
struct Supervisor {
    /// Hosts stopped (crashed) and when to start them again.
    due: Vec<(Duration, String)>,
}

impl Supervisor {
    fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disk_exits: &Exits,
        now: Duration,
        log: &mut Vec<String>,
    ) {
        let stopped = std::mem::take(&mut *disk_exits.lock().unwrap_or_else(|p| p.into_inner()));
        for (host, why) in stopped {
            // Its unsynced writes are lost with the process.
            sim.crash(host.as_str());
            log.push(format!(
                "{now:?} restart {host} after its disk failed: {why}"
            ));
            self.due.push((now + SUPERVISOR_RESTART_DELAY, host));
        }
        let (ready, waiting) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.due = waiting;
        for (_, host) in ready {
            sim.bounce(host.as_str());
        }
    }

    /// Starts every stopped replica now (the run is over).
    fn restart_all(&mut self, sim: &mut turmoil::Sim<'_>) {
        for (_, host) in std::mem::take(&mut self.due) {
            sim.bounce(host.as_str());
        }
    }
}

/// What the simulated filesystem says when a write does not fit.
const NO_SPACE: &str = "No space left on device";

/// Replica disks the nemesis has filled: those to be full now, and every
/// one ever filled (a replica stopping for want of space is expected only
/// there).
#[derive(Clone, Default)]
struct DiskFills(Arc<Mutex<(BTreeSet<String>, BTreeSet<String>)>>);

impl DiskFills {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeSet<String>, BTreeSet<String>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, host: &str) {
        let mut sets = self.lock();
        sets.0.insert(host.to_string());
        sets.1.insert(host.to_string());
    }

    fn free(&self, host: &str) {
        self.lock().0.remove(host);
    }

    fn is_full(&self, host: &str) -> bool {
        self.lock().0.contains(host)
    }

    fn ever_filled(&self, host: &str) -> bool {
        self.lock().1.contains(host)
    }
}

/// Makes this host's disk full (a ballast file taking every free byte,
/// synced chunk by chunk) or frees it, as the nemesis wants; `present` is
/// whether the ballast is there now.
fn ballast(full: bool, present: &mut bool) {
    use std::io::Write;
    use trellis_shard::fsio;
    if full && !*present {
        let Ok(mut file) = fsio::OpenOptions::new()
            .create(true)
            .write(true)
            .open(BALLAST)
        else {
            return;
        };
        let _ = fsio::sync_dir("/");
        // Big chunks, then ever smaller ones, until not one byte fits.
        let chunk = [0u8; BALLAST_CHUNK];
        let mut size = BALLAST_CHUNK;
        for _ in 0..SIM_DISK_BYTES as usize / BALLAST_CHUNK + 2 * BALLAST_CHUNK.ilog2() as usize {
            if file.write_all(&chunk[..size]).is_ok() && file.sync_all().is_ok() {
                continue;
            }
            if size == 1 {
                break;
            }
            size /= 2;
        }
        *present = true;
    } else if !full && *present {
        if fsio::remove_file(BALLAST).is_ok() {
            let _ = fsio::sync_dir("/");
        }
        *present = false;
    }
}

/// Why a shard host's software stopped.
enum Stop {
    /// Its disk failed: the log (fail-stop) or recovery hit an IO error.
    Disk(String),
    /// Anything else: a bug, for the simulator.
    Other(String),
}

impl From<std::io::Error> for Stop {
    fn from(err: std::io::Error) -> Self {
        Stop::Other(err.to_string())
    }
}

impl From<tonic::transport::Error> for Stop {
    fn from(err: tonic::transport::Error) -> Self {
        Stop::Other(err.to_string())
    }
}

/// The simulated wall clock: [`SIM_EPOCH_UNIX_MS`] plus simulated time.
fn simulated_unix_ms() -> u64 {
    SIM_EPOCH_UNIX_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// The coordinator host's software: catalog, router, sweeper, refresher,
/// the gRPC services on the simulated network; with `added_group`, that
/// group added empty to the catalog (once: a restart finds it there) and
/// the reshard driver, as `trellis coordinator` runs it.
async fn coordinator(catalog: Catalog, groups: u32, added_group: Option<u32>) -> HostResult {
    use trellis_coordinator::catalog::CatalogError;
    use trellis_coordinator::metrics::Metrics;
    use trellis_coordinator::reshard_driver::Driver;
    use trellis_coordinator::router::{CatalogRouter, Router};
    use trellis_coordinator::txn::TxnManager;

    let mut map = catalog.bootstrap(groups).await?;
    if let Some(group) = added_group {
        map = match catalog.add_group(u64::from(group)).await {
            Ok(map) => map,
            Err(CatalogError::GroupExists { .. }) => catalog.load().await?,
            Err(err) => return Err(err.into()),
        };
    }
    let addr = format!("{COORDINATOR}:{PORT}");
    // The simulated coordinator serves no metrics.
    catalog.register_coordinator(COORDINATOR, &addr, "").await?;
    let router = Arc::new(Router::new(catalog, map));
    let txns = TxnManager::new(router, Arc::new(Metrics::default()));
    let reshard_wake = Arc::new(tokio::sync::Notify::new());
    if added_group.is_some() {
        let driver = Driver::new(COORDINATOR.to_string(), txns.clone(), reshard_wake.clone());
        tokio::spawn(driver.run());
    }
    tokio::spawn(trellis_coordinator::sweeper(txns.clone()));
    tokio::spawn(trellis_coordinator::refresher(
        txns.clone(),
        COORDINATOR.to_string(),
        addr,
        String::new(),
    ));
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    // Without resharding no driver runs: no job is ever created.
    // The simulator runs without auth: the gate stays open (never
    // refreshed from the catalog).
    let gate = Arc::new(trellis_coordinator::gate::Gate::new(txns.metrics().clone()));
    trellis_coordinator::service::serve_incoming(
        txns,
        reshard_wake,
        gate,
        trellis_net::sim::incoming(listener),
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// A shard replica host's software: recovery from its simulated disk,
/// registration, replication, the gRPC service.
async fn shard(
    name: String,
    group: u64,
    torn_tails: Arc<AtomicU64>,
    probes: LogProbes,
    fills: DiskFills,
) -> Result<(), Stop> {
    // The disk as the nemesis wants it, before recovery and while running.
    let mut present = trellis_shard::fsio::File::open(BALLAST).is_ok();
    ballast(fills.is_full(&name), &mut present);
    {
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(BALLAST_POLL).await;
                ballast(fills.is_full(&name), &mut present);
            }
        });
    }
    let config = ShardConfig {
        data_dir: "/data".into(),
        group_id: group,
        map_epoch: 0,
        slots: SlotSet::empty(),
        replicated: true,
        feed_bytes_max: SIM_FEED_BYTES_MAX,
        catch_up_bytes_per_sec: SIM_CATCH_UP_BYTES_PER_SEC,
        log: SIM_LOG,
    };
    let metrics = Arc::new(trellis_shard::metrics::Metrics::default());
    probes
        .lock()
        .entry(name.clone())
        .or_default()
        .push(metrics.clone());
    let shard = Shard::open(config, metrics).map_err(|err| match err {
        ShardError::Open { .. } | ShardError::Wal(WalError::Io { .. }) => {
            Stop::Disk(format!("recovery failed: {err}"))
        }
        other => Stop::Other(format!("recovery failed: {other}")),
    })?;
    if shard.recovery().torn_bytes > 0 {
        torn_tails.fetch_add(1, Ordering::Relaxed);
    }
    let me = format!("{name}:{PORT}");
    let coordinator = format!("{COORDINATOR}:{PORT}");
    shard.repl.set_me(&me);
    shard.repl.set_coordinator(&coordinator);
    tokio::spawn(shard.clone().snapshot_loop());
    {
        let shard = shard.clone();
        tokio::spawn(async move {
            trellis_shard::membership::register(shard.clone(), coordinator.clone(), group, me)
                .await;
            trellis_shard::replica::run(shard, coordinator).await;
        });
    }
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    tokio::select! {
        served = trellis_shard::server::serve_incoming(
            shard.clone(),
            trellis_net::sim::incoming(listener),
            std::future::pending(),
        ) => Ok(served?),
        why = shard.log_failed() => Err(Stop::Disk(format!("the log failed: {why}"))),
    }
}

/// A fault in force and how to undo it.
///
/// Network cuts *hold* messages and release them when healed, never drop
/// them: turmoil drops the bytes of an established TCP stream under a
/// partition, which real TCP never does (it retransmits, or the connection
/// fails), and a stream that silently lost bytes leaks HTTP/2
/// flow-control window until the connection stalls for good while its
/// keep-alive pings still pass — a hang of the simulator's making. A cut
/// that outlasts the keep-alive timeout still closes connections, as it
/// would over real TCP.
#[derive(Debug)]
enum Fault {
    Crashed(String),
    /// The replica's disk is full (see [`ballast`]).
    DiskFull(String),
    Cut(Vec<(String, String)>),
    Held(String, String),
    /// Bytes from the first host of each pair to the second are held;
    /// the other way still flows (see `trellis_net::sim::cut_oneway`).
    OneWay(Vec<(String, String)>),
}

/// Each shard replica's metrics, by host name, one per boot (the last is
/// current), so the nemesis can see when a replica has a log batch written
/// but not synced, and a run can count what its replicas did.
#[derive(Clone, Default)]
struct LogProbes(Arc<Mutex<BTreeMap<String, Vec<Arc<trellis_shard::metrics::Metrics>>>>>);

impl LogProbes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Arc<trellis_shard::metrics::Metrics>>>>
    {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `host`'s current boot has a log batch written, not synced.
    fn unsynced(&self, host: &str) -> bool {
        self.lock()
            .get(host)
            .and_then(|boots| boots.last())
            .is_some_and(|m| m.log_batch_unsynced())
    }

    /// A counter summed over every boot of every replica.
    fn total(
        &self,
        counter: impl Fn(&trellis_shard::metrics::Metrics) -> &trellis_shard::metrics::Counter,
    ) -> u64 {
        self.lock()
            .values()
            .flatten()
            .map(|m| counter(m).get())
            .sum()
    }
}

/// The seeded fault schedule.
struct Nemesis {
    rng: StdRng,
    groups: Vec<Vec<String>>,
    clients: usize,
    next_at: Duration,
    active: Vec<(Duration, Fault)>,
    /// Planned primary transfers started so far (each runs on a host of
    /// its own, `operator-N`).
    transfers: usize,
    /// What the operators' transfers did, with simulated times.
    operator_log: Arc<Mutex<Vec<String>>>,
    probes: LogProbes,
    /// A replica to crash once it has a log batch in flight, and the time
    /// it is crashed anyway.
    mid_write: Option<(String, Duration)>,
    fills: DiskFills,
}

impl Nemesis {
    fn new(
        seed: u64,
        groups: &[Vec<String>],
        clients: usize,
        probes: LogProbes,
        fills: DiskFills,
    ) -> Self {
        Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            groups: groups.to_vec(),
            clients,
            next_at: STARTUP,
            active: Vec::new(),
            transfers: 0,
            operator_log: Arc::default(),
            probes,
            mid_write: None,
            fills,
        }
    }

    /// An operator moves group `g`'s primary on purpose, as
    /// `trellis admin transfer-primary` does, from a host of its own.
    fn transfer(&mut self, sim: &mut turmoil::Sim<'_>, group: u64) {
        self.transfers += 1;
        let log = self.operator_log.clone();
        sim.client(
            format!("operator-{}", self.transfers).as_str(),
            async move {
                let what = match transfer_primary(group).await {
                    Ok(done) => done,
                    Err(why) => format!("group {group}: no transfer: {why}"),
                };
                let at = turmoil::sim_elapsed().unwrap_or_default();
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{at:?} operator: {what}"));
                Ok(())
            },
        );
    }

    fn all_nodes(&self) -> Vec<String> {
        let mut all = vec![COORDINATOR.to_string()];
        all.extend(self.groups.iter().flatten().cloned());
        all
    }

    fn ms(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    fn pick_replica(&mut self) -> (usize, String) {
        let g = self.rng.random_range(0..self.groups.len());
        let r = self.rng.random_range(0..self.groups[g].len());
        (g, self.groups[g][r].clone())
    }

    /// Ends faults whose time is up; starts a new one when it is time.
    fn step(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, log: &mut Vec<String>) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].0 <= now {
                let (_, fault) = self.active.remove(i);
                undo(sim, &self.fills, &fault, now, log);
            } else {
                i += 1;
            }
        }
        if let Some((host, deadline)) = self.mid_write.clone() {
            let writing = self.probes.unsynced(&host);
            if writing || now >= deadline {
                self.mid_write = None;
                sim.crash(host.as_str());
                let until = now + self.ms(FAULT_HOLD_MS);
                let when = if writing {
                    "with a log batch written, not synced"
                } else {
                    "(no log batch came in flight)"
                };
                log.push(format!(
                    "{now:?} start Crashed({host:?}) {when} until {until:?}"
                ));
                self.active.push((until, Fault::Crashed(host)));
            }
        }
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.ms(FAULT_GAP_MS);
        if self.active.len() >= FAULTS_AT_ONCE_MAX {
            return;
        }
        // One network fault at a time, so that ending one never heals a
        // link another still cuts.
        let network_fault = self
            .active
            .iter()
            .any(|(_, f)| !matches!(f, Fault::Crashed(_) | Fault::DiskFull(_)));
        let until = now + self.ms(FAULT_HOLD_MS);
        // One-way cuts get two draws of eleven: they come in three shapes,
        // each either way.
        let fault = match self.rng.random_range(0..11) {
            8 => {
                // A replica's disk fills up (every free byte taken): its
                // next log write fails and it stops; its supervisor
                // restarts it, and it stops again, until space is freed.
                let (_, host) = self.pick_replica();
                if self.is_crashed(&host) || self.fills.is_full(&host) {
                    return;
                }
                self.fills.fill(&host);
                Fault::DiskFull(host)
            }
            7 => {
                let group = self.rng.random_range(0..self.groups.len()) as u64 + 1;
                log.push(format!("{now:?} transfer the primary of group {group}"));
                self.transfer(sim, group);
                return;
            }
            0 | 1 => {
                let (_, host) = self.pick_replica();
                if self.is_crashed(&host) {
                    return;
                }
                if self.rng.random_bool(MID_WRITE_CRASH_SHARE) {
                    if self.mid_write.is_some() {
                        return;
                    }
                    self.mid_write = Some((host, now + MID_WRITE_WAIT_MAX));
                    return;
                }
                sim.crash(host.as_str());
                Fault::Crashed(host)
            }
            2 => {
                if self.is_crashed(COORDINATOR) {
                    return;
                }
                sim.crash(COORDINATOR);
                Fault::Crashed(COORDINATOR.to_string())
            }
            3..=6 | 9 | 10 if network_fault => return,
            9 | 10 => {
                let pairs = self.one_way_pairs();
                for (from, to) in &pairs {
                    trellis_net::sim::cut_oneway(
                        sim.lookup(from.as_str()),
                        sim.lookup(to.as_str()),
                    );
                }
                Fault::OneWay(pairs)
            }
            3 => {
                // One replica cut from the rest of its group (the primary
                // from its backups, a third of the time): clients and the
                // coordinator still reach it.
                let (g, host) = self.pick_replica();
                let pairs: Vec<(String, String)> = self.groups[g]
                    .iter()
                    .filter(|o| **o != host)
                    .map(|o| (host.clone(), o.clone()))
                    .collect();
                for (a, b) in &pairs {
                    sim.hold(a.as_str(), b.as_str());
                }
                Fault::Cut(pairs)
            }
            4 => {
                let (_, host) = self.pick_replica();
                sim.hold(COORDINATOR, host.as_str());
                Fault::Cut(vec![(COORDINATOR.to_string(), host)])
            }
            5 => {
                // Two replicas of a group cut from each other, both still
                // reaching the third: their views of the group differ.
                let (g, host) = self.pick_replica();
                let others: Vec<String> = self.groups[g]
                    .iter()
                    .filter(|o| **o != host)
                    .cloned()
                    .collect();
                let other = others[self.rng.random_range(0..others.len())].clone();
                sim.hold(host.as_str(), other.as_str());
                Fault::Cut(vec![(host, other)])
            }
            _ => {
                let a = if self.rng.random_bool(0.5) {
                    client_host(self.rng.random_range(0..self.clients))
                } else {
                    self.pick_replica().1
                };
                let b = COORDINATOR.to_string();
                sim.hold(a.as_str(), b.as_str());
                Fault::Held(a, b)
            }
        };
        log.push(format!("{now:?} start {fault:?} until {until:?}"));
        self.active.push((until, fault));
    }

    /// Where a one-way cut falls, as (from, to) pairs: one replica's way
    /// out to the rest of its group or its way in from them (a primary
    /// whose backups hear nothing while it hears their acknowledgements,
    /// or the reverse); the coordinator's way to a replica or back; a
    /// client's way to the coordinator or back.
    fn one_way_pairs(&mut self) -> Vec<(String, String)> {
        let outward = self.rng.random_bool(0.5);
        let orient = |a: String, b: String| if outward { (a, b) } else { (b, a) };
        match self.rng.random_range(0..3) {
            0 => {
                let (g, host) = self.pick_replica();
                self.groups[g]
                    .iter()
                    .filter(|o| **o != host)
                    .map(|o| orient(host.clone(), o.clone()))
                    .collect()
            }
            1 => {
                let (_, host) = self.pick_replica();
                vec![orient(COORDINATOR.to_string(), host)]
            }
            _ => {
                let client = client_host(self.rng.random_range(0..self.clients));
                vec![orient(client, COORDINATOR.to_string())]
            }
        }
    }

    /// Whether `host` is crashed, or about to be (mid-write).
    fn is_crashed(&self, host: &str) -> bool {
        self.mid_write.as_ref().is_some_and(|(h, _)| h == host)
            || self
                .active
                .iter()
                .any(|(_, f)| matches!(f, Fault::Crashed(h) if h == host))
    }

    /// Ends every fault.
    fn heal_all(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, log: &mut Vec<String>) {
        self.mid_write = None;
        for (_, fault) in std::mem::take(&mut self.active) {
            undo(sim, &self.fills, &fault, now, log);
        }
    }
}

/// Moves `group`'s primary to its most up-to-date in-sync backup, as
/// `trellis admin transfer-primary` does.
async fn transfer_primary(group: u64) -> Result<String, String> {
    use trellis_proto::shard::v1 as shard_pb;
    use trellis_proto::v1;
    let endpoint = |addr: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map(|e| {
                e.timeout(OPERATOR_TIMEOUT)
                    .connect_timeout(OPERATOR_TIMEOUT)
            })
            .map_err(|e| e.to_string())
    };
    let mut admin = v1::admin_client::AdminClient::new(trellis_net::lazy(endpoint(&format!(
        "{COORDINATOR}:{PORT}"
    ))?));
    let status = admin
        .status(v1::StatusRequest {})
        .await
        .map_err(|s| format!("status: {}", s.message()))?
        .into_inner();
    let members = &status
        .groups
        .iter()
        .find(|g| g.group_id == group)
        .ok_or("no such group")?
        .members;
    let primary = members
        .iter()
        .find(|m| m.role == "primary")
        .ok_or("no serving primary")?;
    let to = members
        .iter()
        .filter(|m| m.role == "backup" && m.in_sync)
        .min_by_key(|m| m.lag_records)
        .ok_or("no in-sync backup")?;
    let mut shard =
        shard_pb::shard_client::ShardClient::new(trellis_net::lazy(endpoint(&primary.address)?));
    let epoch = shard
        .transfer_primary(shard_pb::TransferPrimaryRequest {
            to: to.address.clone(),
        })
        .await
        .map_err(|s| format!("{} refused: {}", primary.address, s.message()))?
        .into_inner()
        .epoch;
    Ok(format!(
        "group {group}: primary moved from {} to {} at epoch {epoch}",
        primary.address, to.address
    ))
}

/// An Admin client of the coordinator, each call bounded by
/// [`OPERATOR_TIMEOUT`].
fn admin_client()
-> Result<trellis_proto::v1::admin_client::AdminClient<tonic::transport::Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{COORDINATOR}:{PORT}"))
        .map_err(|e| e.to_string())?
        .timeout(OPERATOR_TIMEOUT)
        .connect_timeout(OPERATOR_TIMEOUT);
    Ok(trellis_proto::v1::admin_client::AdminClient::new(
        trellis_net::lazy(endpoint),
    ))
}

fn undo(
    sim: &mut turmoil::Sim<'_>,
    fills: &DiskFills,
    fault: &Fault,
    now: Duration,
    log: &mut Vec<String>,
) {
    match fault {
        Fault::Crashed(host) => sim.bounce(host.as_str()),
        Fault::DiskFull(host) => fills.free(host),
        Fault::Cut(pairs) => {
            for (a, b) in pairs {
                sim.release(a.as_str(), b.as_str());
            }
        }
        Fault::Held(a, b) => sim.release(a.as_str(), b.as_str()),
        Fault::OneWay(pairs) => {
            for (from, to) in pairs {
                trellis_net::sim::heal_oneway(sim.lookup(from.as_str()), sim.lookup(to.as_str()));
            }
        }
    }
    log.push(format!("{now:?} end {fault:?}"));
}
