//! Resharding under load and faults: a [`ReplicatedCluster`] on loopback
//! grows by an empty group, and a seeded schedule rebalances, moves random
//! slots between groups, drains one group, SIGKILLs primaries (one while
//! a batch copies, one while a batch cuts over: the kill waits for the
//! phase) and the coordinator that drives the jobs, while the clients of
//! [`crate::workload`] run bank or list-append transactions. Afterwards
//! every job must finish, the drained group is removed, every group serve,
//! nothing stay prepared, and the history go through the checker
//! ([`crate::workload::run_on`]).
//!
//! Same promises as [`crate::nemesis`]: loopback only, every process killed
//! by its PID on drop, every wait bounded, the seed picks the faults (what
//! a job is doing when one lands depends on timing).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trellis_coordinator::catalog::Catalog;
use trellis_proto::v1;

use crate::cluster::{Poll, Whose};
use crate::harness::alive;
use crate::nemesis::{NemesisCluster, Schedule};
use crate::replicated::{ReplicatedCluster, SETTLE_TIMEOUT};

/// Most slots one `Move` fault asks to move (a range the source owns).
const MOVE_SLOTS_MAX: u32 = 48;
/// Deadline of one admin call of the nemesis.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long every job may take to finish once the faults stop: a
/// coordinator killed last leaves its jobs to its successor only once
/// its heartbeat is old enough, and a batch then resumes from its phase.
pub const JOBS_SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two polls while waiting.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a kill step watches the jobs for a batch in the phase it aims
/// at (a copy, or a cutover) before it kills a random primary instead: a
/// job whose step failed backs off for seconds before its next batch.
const AIM_WAIT: Duration = Duration::from_secs(6);
/// Pause between two looks at the jobs while aiming: a cutover lasts tens
/// of milliseconds.
const AIM_POLL: Duration = Duration::from_millis(10);
/// The job phases a kill aimed at a copy, and at a cutover, waits for.
const COPY_PHASES: &[&str] = &["copy", "catch-up"];
const CUTOVER_PHASES: &[&str] = &["freeze", "drain", "flip"];
/// The group the schedule drains (and the run then removes).
pub const DRAINED_GROUP: u32 = 2;
/// The step that drains it (steps alternate: even ones reshard; the
/// second resharding step, so that the drain runs under the faults even
/// when the aimed kills wait long).
const DRAIN_AT_PICK: usize = 2;
/// How long the removal of the drained group may be refused because it
/// still anchors transaction records (the finalizer forgets them within
/// seconds) or its primary is between failovers.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Up to `count` slots that `from` owns in `slots` (the map), drawn
/// with `seed` (the ring scatters a group's slots, so they are rarely
/// adjacent), in ascending order. The simulator's operator draws its
/// moves with it too.
pub fn owned_sample(slots: &[u64], from: u64, count: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut owned: Vec<u32> = (0..slots.len() as u32)
        .filter(|s| slots[*s as usize] == from)
        .collect();
    let want = (count as usize).min(owned.len());
    // A partial Fisher-Yates shuffle: the first `want` are the sample.
    for i in 0..want {
        let j = rng.random_range(i..owned.len());
        owned.swap(i, j);
    }
    owned.truncate(want);
    owned.sort_unstable();
    owned
}

/// A fault (or a resharding step, which the schedule treats as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReshardFault {
    /// `Admin.Rebalance`: every group towards an even share of the ring.
    Rebalance,
    /// `Admin.MoveSlots` of up to `count` slots that `from` owns when the
    /// call is made, drawn with `seed`, to `to`.
    Move {
        from: u32,
        to: u32,
        count: u32,
        seed: u64,
    },
    /// `Admin.DrainGroup`: every slot of the group to the others.
    Drain(u32),
    /// SIGKILL of replica `.1` of group `.0` (its primary when picked);
    /// restarted on its data when healed.
    Kill(u32, u32),
    /// SIGKILL of the coordinator, which drives the jobs; restarted on its
    /// catalog and address when healed.
    KillCoordinator,
}

impl fmt::Display for ReshardFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReshardFault::Rebalance => write!(f, "rebalance"),
            ReshardFault::Move {
                from, to, count, ..
            } => write!(f, "move-slots: up to {count} slots from {from} to {to}"),
            ReshardFault::Drain(g) => write!(f, "drain-group {g}"),
            ReshardFault::Kill(g, r) => write!(f, "kill group {g} replica {r}"),
            ReshardFault::KillCoordinator => write!(f, "kill coordinator"),
        }
    }
}

/// The cluster the reshard nemesis works on.
pub struct ReshardCluster {
    pub cluster: ReplicatedCluster,
    /// Steps picked so far (they alternate between resharding and kills).
    picks: AtomicUsize,
    /// Whether [`DRAINED_GROUP`] was removed at the end.
    removed: AtomicBool,
    coordinator_killed: bool,
    /// Kills that landed on a batch's source or target while it copied
    /// (`.0`) or cut over (`.1`), one line each.
    pub aimed: Mutex<(Vec<String>, Vec<String>)>,
    /// Kills picked once both aimed kills had landed.
    kills_after_aims: AtomicUsize,
    /// What each admin call answered, in order (for the run's log).
    pub answers: Arc<Mutex<Vec<String>>>,
    exits: Vec<String>,
}

impl ReshardCluster {
    /// `groups` groups of `replicas` on loopback, plus one more added
    /// empty (no slots) before the workload starts.
    pub async fn start(groups: u32, replicas: u32) -> anyhow::Result<ReshardCluster> {
        // Each batch's base copy waits RESHARD_COPY_HOLD, so that a kill
        // aimed at a copy finds one.
        let mut cluster = ReplicatedCluster::start_with_coordinator_env(
            groups,
            replicas,
            &[],
            &[("TRELLIS_FAILPOINTS", "reshard_copy_hold")],
        )
        .await?;
        cluster.cluster.add_group().await?;
        Ok(ReshardCluster {
            cluster,
            picks: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            coordinator_killed: false,
            aimed: Mutex::default(),
            kills_after_aims: AtomicUsize::new(0),
            answers: Arc::new(Mutex::new(Vec::new())),
            exits: Vec::new(),
        })
    }

    /// The slot map as the catalog holds it (group of each slot).
    pub async fn slots(&self) -> anyhow::Result<Vec<u64>> {
        let catalog = Catalog::connect(self.cluster.cluster.catalog()).await?;
        Ok(catalog.load().await?.slots)
    }

    /// Every reshard job the coordinator lists.
    pub async fn jobs(&self) -> anyhow::Result<Vec<v1::ReshardJob>> {
        let mut admin = self.cluster.cluster.admin(0).await?;
        let call = admin.list_reshard_jobs(v1::ListReshardJobsRequest {});
        Ok(tokio::time::timeout(ADMIN_TIMEOUT, call)
            .await??
            .into_inner()
            .jobs)
    }

    /// Steps alternate: a resharding step, then a kill. Kills take turns:
    /// a primary aimed at a batch that cuts over, one aimed at a batch that
    /// copies ([`Self::aim`]; a random group's primary when no batch is in
    /// that phase within [`AIM_WAIT`]), then the coordinator. The
    /// resharding steps: first a rebalance onto the empty group; at
    /// [`DRAIN_AT_PICK`] a drain of [`DRAINED_GROUP`]; otherwise moves of
    /// random slots (and rebalances, until the drain; after it, moves leave
    /// the drained group alone so that it stays empty).
    async fn pick_fault(&self, rng: &mut StdRng) -> Option<ReshardFault> {
        let pick = self.picks.fetch_add(1, Ordering::Relaxed);
        if pick == 0 {
            return Some(ReshardFault::Rebalance);
        }
        let groups = self.cluster.groups();
        if pick % 2 == 1 {
            // Every run must have each kind: a primary aimed at a batch
            // that cuts over (first, while the rebalance's batches follow
            // each other without a failure's backoff), then one aimed at a
            // batch that copies — each aimed again at the next kill until
            // one lands — then the coordinator, and then they take turns.
            // (Drawn at random, one seed killed only the coordinator.)
            let (copies, cutovers) = {
                let aimed = self.aimed.lock().expect("aimed lock");
                (aimed.0.len(), aimed.1.len())
            };
            let aim = match (cutovers, copies) {
                (0, _) => Some(true),
                (_, 0) => Some(false),
                _ => match self.kills_after_aims.fetch_add(1, Ordering::Relaxed) % 3 {
                    0 => None,
                    1 => Some(true),
                    _ => Some(false),
                },
            };
            let Some(cutover) = aim else {
                return Some(ReshardFault::KillCoordinator);
            };
            if let Some(kill) = self.aim(cutover, pick > DRAIN_AT_PICK, rng).await {
                return Some(kill);
            }
            let group = rng.random_range(1..=groups);
            let replica = self.primary_now(group).await?;
            return Some(ReshardFault::Kill(group, replica));
        }
        if pick == DRAIN_AT_PICK {
            return Some(ReshardFault::Drain(DRAINED_GROUP));
        }
        let drained = pick > DRAIN_AT_PICK;
        if !drained && rng.random_range(0..4) == 0 {
            return Some(ReshardFault::Rebalance);
        }
        let mut candidates: Vec<u32> = (1..=groups).collect();
        if drained {
            candidates.retain(|g| *g != DRAINED_GROUP);
        }
        let from = candidates[rng.random_range(0..candidates.len())];
        candidates.retain(|g| *g != from);
        let to = candidates[rng.random_range(0..candidates.len())];
        Some(ReshardFault::Move {
            from,
            to,
            count: rng.random_range(1..=MOVE_SLOTS_MAX),
            seed: rng.random(),
        })
    }

    /// A kill of the primary of the source or the target (drawn) of a
    /// batch in a copy phase, or with `cutover` in a cutover phase, as soon
    /// as the jobs show one — for at most [`AIM_WAIT`]; noted in
    /// [`Self::aimed`]. If no job runs when it starts, or none reached the
    /// phase in half the wait, it asks for a move of [`MOVE_SLOTS_MAX`]
    /// slots (leaving the drained group alone once `drained`) to aim at.
    async fn aim(&self, cutover: bool, drained: bool, rng: &mut StdRng) -> Option<ReshardFault> {
        let phases = if cutover { CUTOVER_PHASES } else { COPY_PHASES };
        let deadline = tokio::time::Instant::now() + AIM_WAIT;
        let mut admin = self.cluster.cluster.admin(0).await.ok()?;
        let mut asked = false;
        while tokio::time::Instant::now() < deadline {
            let call = admin.list_reshard_jobs(v1::ListReshardJobsRequest {});
            let jobs = match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
                Ok(Ok(listed)) => listed.into_inner().jobs,
                // The coordinator is down or cut off: no aim now.
                _ => return None,
            };
            // No job, or none reaching the phase in half the wait (one
            // backing off after a failed step): a move of its own.
            let half = tokio::time::Instant::now() + AIM_WAIT / 2 >= deadline;
            if !asked && (half || !jobs.iter().any(|j| j.state == "running")) {
                asked = true;
                let mut groups: Vec<u32> = (1..=self.cluster.groups())
                    .filter(|g| !(drained && *g == DRAINED_GROUP))
                    .collect();
                let from = groups.remove(rng.random_range(0..groups.len()));
                let to = groups[rng.random_range(0..groups.len())];
                self.send(ReshardFault::Move {
                    from,
                    to,
                    count: MOVE_SLOTS_MAX,
                    seed: rng.random(),
                });
            }
            if let Some(job) = jobs
                .iter()
                .find(|j| j.state == "running" && phases.contains(&j.phase.as_str()))
            {
                let (group, end) = if rng.random_bool(0.5) {
                    (job.from_group, "source")
                } else {
                    (job.to_group, "target")
                };
                let group = u32::try_from(group).ok()?;
                let replica = self.primary_now(group).await?;
                let line = format!(
                    "kill group {group} replica {replica} ({end} of job {}) in {}",
                    job.id, job.phase
                );
                let mut aimed = self.aimed.lock().expect("aimed lock");
                if cutover { &mut aimed.1 } else { &mut aimed.0 }.push(line);
                return Some(ReshardFault::Kill(group, replica));
            }
            tokio::time::sleep(AIM_POLL).await;
        }
        None
    }

    /// The replica the coordinator names primary of `group` now.
    async fn primary_now(&self, group: u32) -> Option<u32> {
        let status = tokio::time::timeout(ADMIN_TIMEOUT, self.cluster.status())
            .await
            .ok()?
            .ok()?;
        let member = status
            .groups
            .iter()
            .find(|g| g.group_id == u64::from(group))?
            .members
            .iter()
            .find(|m| m.role == "primary")?;
        self.cluster.replica_at(group, &member.address)
    }

    /// Sends an admin call without waiting for it (faults are inflicted
    /// synchronously); its answer goes to [`Self::answers`]. Refusals
    /// (a slot another job moves, a coordinator that is down) are part of
    /// the run, not failures of it.
    fn send(&self, fault: ReshardFault) {
        let addr = self.cluster.cluster.client_addr(0);
        let catalog = self.cluster.cluster.catalog().to_string();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            let answer = async {
                let channel = crate::harness::channel(&addr).await?;
                let mut admin = v1::admin_client::AdminClient::new(channel);
                let created = match fault {
                    ReshardFault::Rebalance => admin.rebalance(v1::RebalanceRequest {}).await,
                    ReshardFault::Move {
                        from,
                        to,
                        count,
                        seed,
                    } => {
                        let map = Catalog::connect(&catalog).await?.load().await?.slots;
                        let slots = owned_sample(&map, u64::from(from), count, seed);
                        anyhow::ensure!(!slots.is_empty(), "group {from} owns no slot");
                        let slots: Vec<String> = slots.iter().map(u32::to_string).collect();
                        admin
                            .move_slots(v1::MoveSlotsRequest {
                                from_group: u64::from(from),
                                to_group: u64::from(to),
                                slots: slots.join(","),
                            })
                            .await
                    }
                    ReshardFault::Drain(group) => {
                        admin
                            .drain_group(v1::DrainGroupRequest {
                                group_id: u64::from(group),
                            })
                            .await
                    }
                    _ => unreachable!("only admin steps are sent"),
                };
                anyhow::Ok(created?.into_inner())
            };
            let text = match tokio::time::timeout(ADMIN_TIMEOUT, answer).await {
                Ok(Ok(created)) => format!(
                    "{fault}: job {} ({} slots in {} batches)",
                    created.job_id, created.slots, created.batches
                ),
                Ok(Err(err)) => format!("{fault}: refused: {err:#}"),
                Err(_) => format!("{fault}: no answer within {ADMIN_TIMEOUT:?}"),
            };
            answers.lock().expect("answers lock").push(text);
        });
    }

    /// Whether [`DRAINED_GROUP`] was removed at the end of the run.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Once every job finished: drains [`DRAINED_GROUP`] again if it still
    /// owns slots (its drain may have been refused while another job moved
    /// some of them), then removes it, retrying while it still anchors
    /// transaction records or no primary of it answers.
    async fn finish_drain(&self) -> anyhow::Result<()> {
        let group = u64::from(DRAINED_GROUP);
        if self.slots().await?.contains(&group) {
            let mut admin = self.cluster.cluster.admin(0).await?;
            let created = admin
                .drain_group(v1::DrainGroupRequest { group_id: group })
                .await?
                .into_inner();
            self.answers.lock().expect("answers lock").push(format!(
                "drain-group {group} again after the run: job {}",
                created.job_id
            ));
            self.jobs_finished().await?;
        }
        let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
        loop {
            let mut admin = self.cluster.cluster.admin(0).await?;
            let refused = match admin
                .remove_group(v1::RemoveGroupRequest { group_id: group })
                .await
            {
                Ok(_) => {
                    self.removed.store(true, Ordering::Relaxed);
                    self.answers
                        .lock()
                        .expect("answers lock")
                        .push(format!("remove-group {group}: removed"));
                    return Ok(());
                }
                Err(status) => status,
            };
            let retry = matches!(
                trellis_proto::error::error_info(&refused).map(|i| i.reason),
                Some(ref r) if r == "GROUP_HOLDS_TRANSACTIONS" || r == "UNAVAILABLE"
            );
            anyhow::ensure!(retry, "remove-group {group} refused: {refused:?}");
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "remove-group {group} still refused after {REMOVE_TIMEOUT:?}: {refused:?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn poll(timeout: Duration) -> Poll {
        Poll {
            timeout,
            every: POLL_EVERY,
            call_timeout: Some(ADMIN_TIMEOUT),
        }
    }

    /// Waits until no job is running (resuming any that paused itself,
    /// e.g. after cutovers that could not drain while a primary was down).
    async fn jobs_finished(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + JOBS_SETTLE_TIMEOUT;
        loop {
            let jobs = self.jobs().await.unwrap_or_default();
            let open: Vec<&v1::ReshardJob> = jobs
                .iter()
                .filter(|j| j.state == "running" || j.state == "paused")
                .collect();
            if open.is_empty() && !jobs.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "reshard jobs not finished within {JOBS_SETTLE_TIMEOUT:?}: {open:#?}"
                );
            }
            for job in open.iter().filter(|j| j.state == "paused") {
                if let Ok(mut admin) = self.cluster.cluster.admin(0).await {
                    let _ = admin
                        .control_reshard_job(v1::ControlReshardJobRequest {
                            job_id: job.id,
                            action: v1::control_reshard_job_request::Action::Resume as i32,
                        })
                        .await;
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl NemesisCluster for ReshardCluster {
    type Fault = ReshardFault;

    fn client_addr(&self, _i: usize) -> String {
        self.cluster.addr().to_string()
    }

    async fn pick(&self, schedule: &Schedule, rng: &mut StdRng) -> Option<ReshardFault> {
        if schedule.kinds.is_empty() {
            return None;
        }
        self.pick_fault(rng).await
    }

    fn inflict(&mut self, fault: ReshardFault) -> anyhow::Result<()> {
        match fault {
            ReshardFault::Rebalance | ReshardFault::Move { .. } | ReshardFault::Drain(_) => {
                self.send(fault)
            }
            ReshardFault::Kill(g, r) => self.cluster.kill9(g, r),
            ReshardFault::KillCoordinator => {
                self.cluster.kill_coordinator();
                self.coordinator_killed = true;
            }
        }
        Ok(())
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        let killed = std::mem::take(&mut self.coordinator_killed);
        if killed || !alive(self.cluster.coordinator().pid) {
            if !killed {
                self.exits.push("the coordinator exited by itself".into());
            }
            self.cluster.restart_coordinator()?;
        }
        for g in 1..=self.cluster.groups() {
            for r in 1..=self.cluster.replicas() {
                if self.cluster.shard(g, r).is_some_and(|p| !alive(p.pid)) {
                    self.exits
                        .push(format!("group {g} replica {r} exited by itself"));
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
        let every_group_serving = |s: &v1::StatusResponse| {
            s.groups.iter().all(|g| {
                g.members
                    .iter()
                    .any(|m| m.role == "primary" && m.lease_ms > 0)
            })
        };
        Self::poll(SETTLE_TIMEOUT)
            .until(|| self.cluster.status(), every_group_serving)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "some group has no serving primary {SETTLE_TIMEOUT:?} after healing"
                )
            })?;
        self.jobs_finished().await?;
        // Drained again (or for the first time, if the run ended before its
        // step) and removed: every run ends with the group gone.
        self.finish_drain().await?;
        Ok(())
    }

    async fn settle(&self) -> Result<(), u64> {
        Self::poll(SETTLE_TIMEOUT)
            .settle(|| self.cluster.status(), Whose::Primaries)
            .await
    }

    fn unexpected_exits(&self) -> Vec<String> {
        self.exits.clone()
    }
}
