//! The nemesis for replicated groups: a [`ReplicatedCluster`] whose every
//! process has a network namespace of its own ([`NetLab`]), and faults that
//! a proxy cannot make — any replica cut from the rest of its group, from
//! the coordinator, or from everyone; one-way cuts where a replica hears
//! its group but is not heard, or the reverse — next to SIGKILL and
//! SIGSTOP of any replica and SIGKILL of the coordinator (restarted on its
//! catalog and address). Faults aim at the group's current primary half
//! of the time (that is where failover, fencing and reconciliation are).
//!
//! The workload, the history and the checker are those of
//! [`crate::workload`] ([`crate::workload::run_on`]); the whole run happens
//! inside the lab's [`CLIENT_NODE`] ([`NetLab::run_in`]), since the lab's
//! addresses are reachable from its namespaces only.
//!
//! Same promises as [`crate::nemesis`]: traffic stays inside namespaces the
//! test made, every process is killed by its PID on drop, every wait is
//! bounded, the seed picks the faults (which replica is primary when a
//! fault is picked depends on timing, so a run is reproducible in what it
//! aims at, not to the microsecond).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use crate::cluster::{Poll, Whose};
use crate::harness::alive;
use crate::nemesis::{NemesisCluster, Schedule};
use crate::netns::NetLab;
use crate::replicated::{
    CLIENT_NODE, COORD_NODE, ReplicatedCluster, SETTLE_TIMEOUT, lab_nodes, replica_node,
};
use crate::workload::{RunConfig, RunResult, run_on};

/// Replicas per group of a replicated run.
pub const LAB_REPLICAS: u32 = 3;
/// How long a fault of a replicated run lasts by default: longer than a
/// backup's grace period (1.2 s), so a primary that is cut, stopped or
/// killed is replaced while the fault lasts.
pub const LAB_HOLD: Duration = Duration::from_secs(2);
/// Deadline of one status call of the nemesis (picking a primary, waiting
/// for the cluster to heal).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two status polls while waiting.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Runs `config` (its workload, seed, time, clients, interval and hold; its
/// `groups` groups of [`LAB_REPLICAS`]; one coordinator) against a
/// replicated cluster in a lab of network namespaces named after `tag`,
/// under the faults of [`LabFault`] (any non-empty `config.kinds` turns
/// them on; empty: a quiet run). Needs root.
pub fn run_replicated(config: &RunConfig, tag: &str) -> anyhow::Result<RunResult> {
    let nodes = lab_nodes(config.groups, LAB_REPLICAS);
    let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let lab = NetLab::create(tag, &refs)?;
    let config = RunConfig {
        coordinators: 1,
        ..config.clone()
    };
    lab.run_in(CLIENT_NODE, || async {
        let cluster = ReplicatedCluster::start_in(&lab, config.groups, LAB_REPLICAS, &[]).await?;
        let temp = tempfile::Builder::new()
            .prefix(&format!("trellis-lab-nemesis-{}-", config.workload.name()))
            .tempdir()?;
        let mut cluster = LabCluster::new(&lab, cluster);
        run_on(&config, &mut cluster, temp).await
    })?
}

/// A fault of a replicated cluster in a lab; `(group, replica)` from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabFault {
    /// SIGKILL; restarted on the same data directory and address when
    /// healed.
    Kill(u32, u32),
    /// SIGSTOP; SIGCONT when healed.
    Pause(u32, u32),
    /// Cut from the other replicas of its group, both ways (it still
    /// reaches the coordinator and the catalog).
    CutFromGroup(u32, u32),
    /// Its group hears nothing from it (its records, or its
    /// acknowledgements, are dropped); it hears its group.
    Muted(u32, u32),
    /// It hears nothing from its group; its group hears it.
    Deafened(u32, u32),
    /// Cut from the coordinator (and so from the catalog and clients), not
    /// from its group.
    CutFromCoordinator(u32, u32),
    /// Cut from everyone: its group and the coordinator.
    Isolated(u32, u32),
    /// SIGKILL of the coordinator (mid two-phase commit, as it happens);
    /// restarted on its catalog and address when healed.
    KillCoordinator,
}

/// Every kind of [`LabFault`], for picking.
const KINDS: usize = 8;

impl LabFault {
    /// The replica the fault is aimed at, if any.
    fn target(self) -> Option<(u32, u32)> {
        match self {
            LabFault::Kill(g, r)
            | LabFault::Pause(g, r)
            | LabFault::CutFromGroup(g, r)
            | LabFault::Muted(g, r)
            | LabFault::Deafened(g, r)
            | LabFault::CutFromCoordinator(g, r)
            | LabFault::Isolated(g, r) => Some((g, r)),
            LabFault::KillCoordinator => None,
        }
    }
}

impl fmt::Display for LabFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((g, r)) = self.target() else {
            return write!(f, "kill the coordinator");
        };
        let who = replica_node(g, r);
        match self {
            LabFault::Kill(..) => write!(f, "kill {who}"),
            LabFault::Pause(..) => write!(f, "pause {who}"),
            LabFault::CutFromGroup(..) => write!(f, "cut {who} from its group"),
            LabFault::Muted(..) => write!(f, "mute {who} (its group hears nothing from it)"),
            LabFault::Deafened(..) => write!(f, "deafen {who} (it hears nothing from its group)"),
            LabFault::CutFromCoordinator(..) => write!(f, "cut {who} from the coordinator"),
            LabFault::Isolated(..) => write!(f, "isolate {who} from everyone"),
            LabFault::KillCoordinator => unreachable!("aimed at no replica"),
        }
    }
}

/// A [`ReplicatedCluster`] in `lab`, with its faults.
pub struct LabCluster<'a> {
    lab: &'a NetLab,
    pub cluster: ReplicatedCluster,
    /// Replicas stopped with SIGSTOP.
    paused: BTreeSet<(u32, u32)>,
    /// Whether the coordinator was killed (and not yet restarted).
    coordinator_killed: bool,
    /// Processes that exited though no fault killed them.
    exits: Vec<String>,
}

impl<'a> LabCluster<'a> {
    /// Wraps a cluster started with [`ReplicatedCluster::start_in`]`(lab, ..)`.
    pub fn new(lab: &'a NetLab, cluster: ReplicatedCluster) -> Self {
        LabCluster {
            lab,
            cluster,
            paused: BTreeSet::new(),
            coordinator_killed: false,
            exits: Vec::new(),
        }
    }

    /// The other replicas of `group`.
    fn others(&self, group: u32, replica: u32) -> Vec<String> {
        (1..=self.cluster.replicas())
            .filter(|r| *r != replica)
            .map(|r| replica_node(group, r))
            .collect()
    }

    /// Picks a fault: its kind and group from `rng`; the target is the
    /// group's primary when `rng` says so and the status names one, else a
    /// replica drawn from `rng`.
    async fn pick_fault(&self, rng: &mut StdRng) -> LabFault {
        let kind = rng.random_range(0..KINDS);
        let group = rng.random_range(1..=self.cluster.groups());
        let drawn = rng.random_range(1..=self.cluster.replicas());
        let at_primary = rng.random_bool(0.5);
        let replica = if at_primary {
            self.primary_now(group).await.unwrap_or(drawn)
        } else {
            drawn
        };
        match kind {
            0 => LabFault::Kill(group, replica),
            1 => LabFault::Pause(group, replica),
            2 => LabFault::CutFromGroup(group, replica),
            3 => LabFault::Muted(group, replica),
            4 => LabFault::Deafened(group, replica),
            5 => LabFault::CutFromCoordinator(group, replica),
            6 => LabFault::Isolated(group, replica),
            _ => LabFault::KillCoordinator,
        }
    }

    /// The replica the coordinator's status names primary of `group` now,
    /// if it answers at once.
    async fn primary_now(&self, group: u32) -> Option<u32> {
        let status = tokio::time::timeout(STATUS_TIMEOUT, self.cluster.status())
            .await
            .ok()?
            .ok()?;
        let member = status
            .groups
            .get(group as usize - 1)?
            .members
            .iter()
            .find(|m| m.role == "primary")?;
        self.cluster.replica_at(group, &member.address)
    }

    fn inflict_fault(&mut self, fault: LabFault) -> anyhow::Result<()> {
        let Some((g, r)) = fault.target() else {
            self.cluster.kill_coordinator();
            self.coordinator_killed = true;
            return Ok(());
        };
        let me = replica_node(g, r);
        match fault {
            LabFault::Kill(..) => {
                self.paused.remove(&(g, r));
                self.cluster.kill9(g, r);
            }
            LabFault::Pause(..) => {
                if let Some(proc) = self.cluster.shard(g, r)
                    && self.paused.insert((g, r))
                {
                    proc.signal(libc::SIGSTOP);
                }
            }
            LabFault::CutFromGroup(..) => {
                for other in self.others(g, r) {
                    self.lab.cut(&me, &other)?;
                }
            }
            LabFault::Muted(..) => {
                for other in self.others(g, r) {
                    self.lab.cut_oneway(&me, &other)?;
                }
            }
            LabFault::Deafened(..) => {
                for other in self.others(g, r) {
                    self.lab.cut_oneway(&other, &me)?;
                }
            }
            LabFault::CutFromCoordinator(..) => self.lab.cut(&me, COORD_NODE)?,
            LabFault::Isolated(..) => {
                for other in self.others(g, r) {
                    self.lab.cut(&me, &other)?;
                }
                self.lab.cut(&me, COORD_NODE)?;
            }
            LabFault::KillCoordinator => unreachable!("aimed at no replica"),
        }
        Ok(())
    }

    /// How the nemesis polls the coordinator's status: each call bounded
    /// by [`STATUS_TIMEOUT`], every [`POLL_EVERY`], for [`SETTLE_TIMEOUT`].
    fn poll() -> Poll {
        Poll {
            timeout: SETTLE_TIMEOUT,
            every: POLL_EVERY,
            call_timeout: Some(STATUS_TIMEOUT),
        }
    }
}

impl NemesisCluster for LabCluster<'_> {
    type Fault = LabFault;

    fn client_addr(&self, _i: usize) -> String {
        self.cluster.addr().to_string()
    }

    async fn pick(&self, schedule: &Schedule, rng: &mut StdRng) -> Option<LabFault> {
        if schedule.kinds.is_empty() {
            return None;
        }
        Some(self.pick_fault(rng).await)
    }

    fn inflict(&mut self, fault: LabFault) -> anyhow::Result<()> {
        self.inflict_fault(fault)
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        self.lab.heal_all()?;
        let killed = std::mem::take(&mut self.coordinator_killed);
        if killed || !alive(self.cluster.coordinator().pid) {
            if !killed {
                self.exits.push("the coordinator exited by itself".into());
            }
            self.cluster.restart_coordinator()?;
        }
        for (g, r) in std::mem::take(&mut self.paused) {
            if let Some(proc) = self.cluster.shard(g, r) {
                proc.signal(libc::SIGCONT);
            }
        }
        for g in 1..=self.cluster.groups() {
            for r in 1..=self.cluster.replicas() {
                if self.cluster.shard(g, r).is_some_and(|p| !alive(p.pid)) {
                    self.exits
                        .push(format!("{} exited by itself", replica_node(g, r)));
                    self.cluster.kill9(g, r);
                }
                if self.cluster.shard(g, r).is_none() {
                    self.cluster.restart(g, r)?;
                }
            }
        }
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let every_group_serving = |s: &trellis_proto::v1::StatusResponse| {
            s.groups.iter().all(|g| {
                g.members
                    .iter()
                    .any(|m| m.role == "primary" && m.lease_ms > 0)
            })
        };
        Self::poll()
            .until(|| self.cluster.status(), every_group_serving)
            .await
            .map(drop)
            .map_err(|_| {
                anyhow::anyhow!(
                    "some group has no serving primary {SETTLE_TIMEOUT:?} after healing"
                )
            })
    }

    async fn settle(&self) -> Result<(), u64> {
        // Backups hold what their primary holds; count primaries.
        Self::poll()
            .settle(|| self.cluster.status(), Whose::Primaries)
            .await
    }

    fn unexpected_exits(&self) -> Vec<String> {
        self.exits.clone()
    }
}
