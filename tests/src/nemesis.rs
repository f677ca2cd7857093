//! The nemesis: a cluster of real processes whose links run through fault
//! proxies, the faults it can inflict, and a seeded schedule that cycles
//! them while a workload runs.
//!
//! # The cluster
//!
//! [`FaultCluster`] starts `coordinators` coordinator processes over one
//! SQLite catalog and one shard process per group, each on `127.0.0.1:0`,
//! data and logs in the run directory. Every coordinator has a
//! client-facing [`Proxy`] (clients dial it, so a restarted coordinator on a
//! new port is found again, and clients can be cut off); every shard has a
//! [`Proxy`] that the coordinators dial: the shard *advertises* the proxy's
//! address when it registers (`--advertise`), so all coordinator→shard
//! traffic crosses it. Registration itself goes straight to a live
//! coordinator and is never faulted.
//!
//! ```text
//! client ──▶ proxy ──▶ coordinator ──▶ proxy ──▶ shard (group g)
//! ```
//!
//! # Faults
//!
//! [`Fault`]: SIGKILL a process and restart it on the same data directory
//! after the hold; SIGSTOP and SIGCONT; cut a proxy (partition), black-hole
//! one direction of it, or delay it; restart a coordinator with a
//! failpoint armed so it dies at a chosen step of the next two-phase
//! commit. One fault at a time; [`FaultCluster::heal_all`]
//! undoes everything.
//!
//! # What it never does
//!
//! - Send traffic anywhere but `127.0.0.0/8`.
//! - Leave a process behind: each is a [`Proc`](crate::harness::Proc), killed by its PID on drop,
//!   also when a test panics (a stopped process is killed too: SIGKILL needs
//!   no SIGCONT); each proxy stops on drop.
//! - Run unbounded: every wait has a deadline, the schedule a fixed length.
//! - Choose with an unseeded random source: the same seed picks the same
//!   faults in the same order (their timing against the workload is real
//!   time, so a run is reproducible in what it does, not to the microsecond).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{
    ClusterBuilder, CoordinatorStart, Poll, Slot, TestCluster, Whose, prepared, unserved_group,
};
use crate::harness::alive;
use crate::proxy::{Direction, Mode, Proxy};

/// How long the cluster may take to have every group served again.
pub const READY_TIMEOUT: Duration = crate::cluster::CLUSTER_READY_TIMEOUT;
/// How long the sweepers get to resolve every prepared transaction after
/// the last fault is healed (their in-doubt age is 2 s, their period 1 s).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two counts of what is prepared while settling.
const SETTLE_POLL_EVERY: Duration = Duration::from_millis(200);
/// Longest hold of one fault.
pub const HOLD_MAX: Duration = Duration::from_secs(10);
/// The delay a [`Fault::Delay`] adds to every chunk.
pub const DELAY: Duration = Duration::from_millis(150);

/// A process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Coordinator by index.
    Coordinator(usize),
    /// The shard of a group (from 1).
    Shard(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Coordinator(i) => write!(f, "coordinator-{i}"),
            Target::Shard(g) => write!(f, "shard-{g}"),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; restarted (same data, same catalog) when healed.
    Kill(Target),
    /// SIGSTOP; SIGCONT when healed.
    Pause(Target),
    /// The target's proxy cuts every connection and refuses new ones: a
    /// shard cut off from every coordinator, or a coordinator from its
    /// clients.
    Partition(Target),
    /// The target's proxy drops the bytes flowing one way.
    BlackHole(Target, Direction),
    /// The target's proxy delays every chunk by [`DELAY`].
    Delay(Target),
    /// The shard's disk (a small tmpfs of its own) is filled to the last
    /// byte: its next log write fails. Healed by freeing the space and
    /// restarting the shard (after a failed write its log refuses every
    /// append, by design).
    DiskFull(u32),
    /// Coordinator `i` is restarted with a failpoint armed
    /// (`TRELLIS_FAILPOINTS`): it aborts, as if SIGKILLed, the first time a
    /// two-phase commit reaches that step. Restarted clean when healed.
    Failpoint(usize, &'static str),
    /// Shard `g` is restarted with its log's `fdatasync` failing
    /// (`TRELLIS_FAILPOINTS=wal_sync_error`): its first write fails, its log
    /// refuses everything after, and the process exits (fail-stop).
    /// Restarted clean when healed.
    FsyncError(u32),
}

/// The coordinator's failpoints (see `coordinator/src/failpoint.rs`).
pub const FAILPOINTS: [&str; 4] = [
    "during_prepare",
    "after_prepare",
    "after_decide",
    "during_finalize",
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(t) => write!(f, "kill {t}"),
            Fault::Pause(t) => write!(f, "pause {t}"),
            Fault::Partition(t) => write!(f, "partition {t}"),
            Fault::BlackHole(t, Direction::ToUpstream) => write!(f, "black-hole requests to {t}"),
            Fault::BlackHole(t, Direction::FromUpstream) => {
                write!(f, "black-hole answers from {t}")
            }
            Fault::Delay(t) => write!(f, "delay {t} by {DELAY:?}"),
            Fault::Failpoint(i, name) => write!(f, "crash coordinator-{i} at {name}"),
            Fault::DiskFull(g) => write!(f, "fill the disk of shard-{g}"),
            Fault::FsyncError(g) => write!(f, "fail the fsyncs of shard-{g}"),
        }
    }
}

/// Which kinds of fault a schedule may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    BlackHole,
    Delay,
    Failpoint,
    FsyncError,
    /// Needs root (it mounts a tmpfs per shard); left out of
    /// [`FaultKind::ALL`].
    DiskFull,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::BlackHole,
        FaultKind::Delay,
        FaultKind::Failpoint,
        FaultKind::FsyncError,
    ];
}

/// The seeded schedule: every `interval` pick a fault, hold it `hold`, heal.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    /// Kinds to choose from; empty: no faults (a quiet run).
    pub kinds: Vec<FaultKind>,
    /// Time without a fault between two faults.
    pub interval: Duration,
    /// How long a fault lasts.
    pub hold: Duration,
}

impl Schedule {
    /// Picks the next fault for a cluster of `coordinators` and `groups`.
    pub fn pick(&self, rng: &mut StdRng, coordinators: usize, groups: u32) -> Option<Fault> {
        if self.kinds.is_empty() {
            return None;
        }
        let kind = self.kinds[rng.random_range(0..self.kinds.len())];
        if kind == FaultKind::DiskFull {
            return Some(Fault::DiskFull(rng.random_range(1..=groups)));
        }
        if kind == FaultKind::FsyncError {
            return Some(Fault::FsyncError(rng.random_range(1..=groups)));
        }
        if kind == FaultKind::Failpoint {
            return Some(Fault::Failpoint(
                rng.random_range(0..coordinators),
                FAILPOINTS[rng.random_range(0..FAILPOINTS.len())],
            ));
        }
        // Shards are hit twice as often as coordinators: they hold the state.
        let nodes = coordinators + 2 * groups as usize;
        let n = rng.random_range(0..nodes);
        let target = if n < coordinators {
            Target::Coordinator(n)
        } else {
            Target::Shard(((n - coordinators) / 2) as u32 + 1)
        };
        Some(match kind {
            FaultKind::Kill => Fault::Kill(target),
            FaultKind::Pause => Fault::Pause(target),
            FaultKind::Partition => Fault::Partition(target),
            FaultKind::BlackHole => Fault::BlackHole(
                target,
                if rng.random_bool(0.5) {
                    Direction::ToUpstream
                } else {
                    Direction::FromUpstream
                },
            ),
            FaultKind::Delay => Fault::Delay(target),
            FaultKind::Failpoint | FaultKind::DiskFull | FaultKind::FsyncError => {
                unreachable!("picked above")
            }
        })
    }
}

/// What the nemesis did to one process of the cluster.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    paused: bool,
    /// Started with a failpoint armed.
    armed: bool,
    /// Its disk is full (a ballast file fills its tmpfs).
    full: bool,
}

/// A cluster with every link behind a fault proxy (a [`TestCluster`] built
/// with proxies and logs). Dropping it kills every process (by PID) and
/// stops every proxy.
pub struct FaultCluster {
    cluster: TestCluster,
    /// Processes found dead that no fault killed: each is a finding.
    unexpected_exits: Vec<String>,
    /// `coordinator_flags[i]`: of coordinator `i`.
    coordinator_flags: Vec<Flags>,
    /// `shard_flags[g - 1]`: of the shard of group `g`.
    shard_flags: Vec<Flags>,
}

impl fmt::Debug for FaultCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultCluster")
            .field("dir", &self.dir())
            .field("groups", &self.groups())
            .field("coordinators", &self.coordinators())
            .finish()
    }
}

impl FaultCluster {
    /// Starts `coordinators` coordinators and `groups` shards under `dir`
    /// (data, catalog and one log file per process), and waits until every
    /// group is served.
    pub async fn start(dir: &Path, coordinators: usize, groups: u32) -> anyhow::Result<Self> {
        Self::start_with_disks(dir, coordinators, groups, false).await
    }

    /// Like [`FaultCluster::start`]; with `disks`, each shard's data lives
    /// on a tmpfs of [`DISK_BYTES`] of its own, for [`Fault::DiskFull`].
    /// Mounting needs root: if it fails, the cluster starts without disks
    /// ([`FaultCluster::has_disks`] says which).
    pub async fn start_with_disks(
        dir: &Path,
        coordinators: usize,
        groups: u32,
        disks: bool,
    ) -> anyhow::Result<Self> {
        let cluster = ClusterBuilder::new(dir)
            .coordinators(coordinators)
            .groups(groups)
            .disks(disks)
            .proxies()
            .logs()
            .start()
            .await?;
        Ok(FaultCluster {
            cluster,
            unexpected_exits: Vec::new(),
            coordinator_flags: vec![Flags::default(); coordinators],
            shard_flags: vec![Flags::default(); groups as usize],
        })
    }

    /// The client-facing (proxy) address of coordinator `i`.
    pub fn client_addr(&self, i: usize) -> String {
        self.cluster.client_addr(i)
    }

    /// How many coordinators.
    pub fn coordinators(&self) -> usize {
        self.cluster.coordinators.len()
    }

    /// How many groups.
    pub fn groups(&self) -> u32 {
        self.cluster.groups()
    }

    /// Where data and logs live.
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    fn start_coordinator(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.cluster
            .start_coordinator(i, CoordinatorStart::new(false, env))?;
        let flags = &mut self.coordinator_flags[i];
        flags.paused = false;
        flags.armed = !env.is_empty();
        Ok(())
    }

    /// The direct address of a running, unpaused coordinator, for a shard
    /// to register with.
    fn registrar(&self) -> anyhow::Result<String> {
        let running = |i: &usize| self.cluster.coordinators[*i].proc.is_some();
        (0..self.coordinators())
            .filter(running)
            .find(|i| !self.coordinator_flags[*i].paused)
            .or_else(|| (0..self.coordinators()).find(running))
            .map(|i| self.cluster.addr(i).to_string())
            .ok_or_else(|| anyhow::anyhow!("no coordinator is running"))
    }

    /// Processes that exited though no fault killed them (a crash of
    /// Trellis): the harness restarts them, and reports them here.
    pub fn unexpected_exits(&self) -> &[String] {
        &self.unexpected_exits
    }

    /// Whether every shard has a disk of its own to fill.
    pub fn has_disks(&self) -> bool {
        self.cluster.has_disks()
    }

    fn start_shard(&mut self, group: u32, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let registrar = self.registrar()?;
        self.cluster.start_shard(group, 1, &registrar, env)?;
        let flags = &mut self.shard_flags[group as usize - 1];
        flags.paused = false;
        flags.armed = !env.is_empty();
        Ok(())
    }

    /// The target's slot (process and proxy) and what was done to it.
    fn node(&mut self, target: Target) -> (&mut Slot, &mut Flags) {
        match target {
            Target::Coordinator(i) => (
                &mut self.cluster.coordinators[i],
                &mut self.coordinator_flags[i],
            ),
            Target::Shard(g) => (
                &mut self.cluster.shards[g as usize - 1][0],
                &mut self.shard_flags[g as usize - 1],
            ),
        }
    }

    fn proxy(&mut self, target: Target) -> &Proxy {
        self.node(target)
            .0
            .proxy
            .as_ref()
            .expect("a fault cluster has a proxy in front of every process")
    }

    fn restart(&mut self, target: Target) -> anyhow::Result<()> {
        match target {
            Target::Coordinator(i) => self.start_coordinator(i, &[]),
            Target::Shard(g) => self.start_shard(g, &[]),
        }
    }

    /// Inflicts `fault`.
    pub fn inflict(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(target) => {
                let (slot, flags) = self.node(target);
                if let Some(proc) = slot.proc.take() {
                    proc.kill9();
                }
                flags.paused = false;
            }
            Fault::Pause(target) => {
                let (slot, flags) = self.node(target);
                if let Some(proc) = &slot.proc
                    && !flags.paused
                {
                    proc.signal(libc::SIGSTOP);
                    flags.paused = true;
                }
            }
            Fault::Partition(target) => self.proxy(target).set_mode(Mode::Partition),
            Fault::BlackHole(target, direction) => {
                self.proxy(target).set_mode(Mode::BlackHole(direction))
            }
            Fault::Delay(target) => self.proxy(target).set_mode(Mode::Delay(DELAY)),
            Fault::DiskFull(group) => {
                let Some(disk) = self.cluster.disk(group) else {
                    anyhow::bail!("shard-{group} has no disk of its own to fill");
                };
                fill(&disk.join(BALLAST))?;
                self.shard_flags[group as usize - 1].full = true;
            }
            Fault::Failpoint(i, name) => {
                self.cluster.kill9_coordinator(i);
                self.start_coordinator(i, &[("TRELLIS_FAILPOINTS", name)])?;
            }
            Fault::FsyncError(group) => {
                self.cluster.kill9_shard(group, 1);
                self.start_shard(
                    group,
                    &[(
                        "TRELLIS_FAILPOINTS",
                        trellis_shard::failpoint::WAL_SYNC_ERROR,
                    )],
                )?;
            }
        }
        Ok(())
    }

    /// Undoes every fault: SIGCONT what is stopped, let every proxy pass,
    /// restart what is dead (coordinators first: restarted shards register
    /// with one).
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        let targets: Vec<Target> = (0..self.coordinators())
            .map(Target::Coordinator)
            .chain((1..=self.groups()).map(Target::Shard))
            .collect();
        for target in targets {
            self.proxy(target).set_mode(Mode::Pass);
            let (slot, flags) = self.node(target);
            if flags.paused {
                if let Some(proc) = &slot.proc {
                    proc.signal(libc::SIGCONT);
                }
                flags.paused = false;
            }
            // Died at a failpoint, or still armed, or its log saw a full
            // disk: restart it clean.
            let dead = slot.proc.as_ref().is_some_and(|p| !alive(p.pid));
            let (armed, full) = (flags.armed, flags.full);
            if dead || armed || full {
                if let Some(proc) = slot.proc.take() {
                    proc.kill9();
                }
                flags.armed = false;
            }
            flags.full = false;
            let down = slot.proc.is_none();
            if dead && !armed && !full {
                self.unexpected_exits
                    .push(format!("{target} exited by itself (see {target}.log)"));
            }
            if full && let Target::Shard(g) = target {
                let disk = self.cluster.disk(g).expect("a full shard has a disk");
                std::fs::remove_file(disk.join(BALLAST))?;
            }
            if down {
                self.restart(target)?;
            }
        }
        Ok(())
    }

    /// Waits until coordinator 0 sees every group's shard serving.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.cluster.wait_registered(0).await
    }

    /// Transactions prepared and not finalized, summed over every group, if
    /// every group answered.
    pub async fn prepared_total(&self) -> anyhow::Result<u64> {
        let status = self.cluster.status(0).await?;
        if let Some(group) = unserved_group(&status) {
            anyhow::bail!("group {group} is not served");
        }
        Ok(prepared(&status, Whose::EveryMember))
    }

    /// Waits (bounded by [`SETTLE_TIMEOUT`]) until no transaction is left
    /// prepared anywhere; returns how many still are if time runs out.
    pub async fn settle(&self) -> Result<(), u64> {
        let poll = Poll {
            timeout: SETTLE_TIMEOUT,
            every: SETTLE_POLL_EVERY,
            call_timeout: None,
        };
        poll.settle(|| self.cluster.status(0), Whose::EveryMember)
            .await
    }

    /// PIDs of the running processes (for checks that nothing is left).
    pub fn pids(&self) -> Vec<u32> {
        self.cluster.pids()
    }
}

pub use crate::cluster::DISK_BYTES;

/// The file that fills a disk.
const BALLAST: &str = "ballast";
/// Bytes written at once while filling a disk.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// Writes `path` until the disk is full (bounded by [`DISK_BYTES`]).
fn fill(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let zeros = vec![0u8; FILL_CHUNK_BYTES];
    // Big chunks, then ever smaller ones for what a refused chunk left,
    // down to the last byte. Each size stops at its first refusal, and no
    // size can write more than the disk holds.
    let mut size = FILL_CHUNK_BYTES;
    while size > 0 {
        for _ in 0..=DISK_BYTES as usize / size {
            if file.write_all(&zeros[..size]).is_err() {
                break;
            }
        }
        size /= 16;
    }
    Ok(())
}

/// A cluster a workload can run against while a nemesis of its own
/// (seeded by the [`Schedule`]) inflicts and heals faults.
#[allow(async_fn_in_trait)] // used by generic code in this crate only
pub trait NemesisCluster {
    /// A fault it can inflict.
    type Fault: fmt::Display + Copy;
    /// Address client `i` dials (clients are spread over coordinators).
    fn client_addr(&self, i: usize) -> String;
    /// The next fault, chosen with `rng`; `None`: no fault this time.
    async fn pick(&self, schedule: &Schedule, rng: &mut StdRng) -> Option<Self::Fault>;
    fn inflict(&mut self, fault: Self::Fault) -> anyhow::Result<()>;
    /// Undoes every fault.
    fn heal_all(&mut self) -> anyhow::Result<()>;
    /// Waits until every group is served again.
    async fn wait_ready(&self) -> anyhow::Result<()>;
    /// Waits until no transaction is left prepared; how many are if not.
    async fn settle(&self) -> Result<(), u64>;
    /// Processes that exited though no fault killed them.
    fn unexpected_exits(&self) -> Vec<String>;
}

impl NemesisCluster for FaultCluster {
    type Fault = Fault;

    fn client_addr(&self, i: usize) -> String {
        FaultCluster::client_addr(self, i % self.coordinators())
    }

    async fn pick(&self, schedule: &Schedule, rng: &mut StdRng) -> Option<Fault> {
        schedule.pick(rng, self.coordinators(), self.groups())
    }

    fn inflict(&mut self, fault: Fault) -> anyhow::Result<()> {
        FaultCluster::inflict(self, fault)
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        FaultCluster::heal_all(self)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        FaultCluster::wait_ready(self).await
    }

    async fn settle(&self) -> Result<(), u64> {
        FaultCluster::settle(self).await
    }

    fn unexpected_exits(&self) -> Vec<String> {
        FaultCluster::unexpected_exits(self).to_vec()
    }
}

/// Runs `schedule` against `cluster` until `until`: wait `interval`, pick a
/// fault, inflict it, hold it, heal. Every step goes to `log` with the time
/// since `start` (the history's clock). Heals everything before returning.
pub async fn run_schedule<C: NemesisCluster>(
    cluster: &mut C,
    schedule: &Schedule,
    start: std::time::Instant,
    until: std::time::Instant,
    log: &mut Vec<String>,
) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(schedule.seed);
    let hold = schedule.hold.min(HOLD_MAX);
    let mut inflicted = 0;
    let stamp = |what: String| format!("{} {what}", start.elapsed().as_nanos());
    loop {
        if std::time::Instant::now() + schedule.interval >= until {
            break;
        }
        tokio::time::sleep(schedule.interval).await;
        let Some(fault) = cluster.pick(schedule, &mut rng).await else {
            continue;
        };
        log.push(stamp(format!("inflict {fault}")));
        cluster.inflict(fault)?;
        inflicted += 1;
        tokio::time::sleep(hold).await;
        cluster.heal_all()?;
        log.push(stamp(format!("heal {fault}")));
    }
    let rest = until.saturating_duration_since(std::time::Instant::now());
    tokio::time::sleep(rest).await;
    cluster.heal_all()?;
    Ok(inflicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_picks_the_same_faults() {
        let schedule = Schedule {
            seed: 7,
            kinds: FaultKind::ALL.to_vec(),
            interval: Duration::from_secs(1),
            hold: Duration::from_secs(1),
        };
        let picks = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| schedule.pick(&mut rng, 2, 3).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        let quiet = Schedule {
            kinds: vec![],
            ..schedule.clone()
        };
        assert_eq!(quiet.pick(&mut StdRng::seed_from_u64(1), 2, 3), None);
    }
}
