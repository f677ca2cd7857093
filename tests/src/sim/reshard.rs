//! The simulator's resharding ([`super::SimConfig::reshard`]): the
//! operator who calls `Admin.Rebalance` and `Admin.MoveSlots` while the
//! workload runs and the nemesis strikes (`Resharder`), and the waiter
//! that, after healing, waits for every job to finish (`wait_for_jobs`).
//! It never touches the cluster but through the coordinator's admin API
//! and the catalog, as an operator would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trellis_coordinator::catalog::Catalog;

use super::{HostResult, admin_client};
use crate::reshard_nemesis::owned_sample;

/// With [`super::SimConfig::reshard`]: when the operator's first call
/// (`Admin.Rebalance` onto the added, empty group) is made.
pub const RESHARD_START: Duration = Duration::from_secs(4);
/// Pause between two of the operator's `Admin.MoveSlots` calls, drawn
/// from this range (milliseconds).
pub const RESHARD_GAP_MS: std::ops::Range<u64> = 1000..3000;
/// Most slots one `Admin.MoveSlots` call asks to move ("a few").
pub const MOVE_SLOTS_MAX: u32 = 16;
/// Pause between two tries of the first rebalance while the coordinator
/// does not answer (it may be crashed or cut off), and of the drain while
/// it is refused.
pub const REBALANCE_RETRY: Duration = Duration::from_millis(500);
/// Longest simulated time from healing every fault until every reshard
/// job has finished. A batch whose cutover could not drain pauses its job
/// (resumed by the waiter); a failed step backs off up to
/// `RETRY_BACKOFF_MAX` (10 s); a batch copies a few KiB here. A job still
/// open after this is stuck.
pub const JOBS_SETTLE_MAX: Duration = Duration::from_secs(90);
/// How often the waiter lists the jobs.
pub const JOBS_POLL: Duration = Duration::from_millis(250);
/// The group the operator drains mid-run and the waiter removes at the
/// end (as the real-process reshard test does), when the cluster has at
/// least [`DRAIN_GROUPS_MIN`] groups.
pub const DRAINED_GROUP: u64 = crate::reshard_nemesis::DRAINED_GROUP as u64;
/// Fewest groups (the added one included) for a run to drain one: two
/// must be left to move slots between.
pub const DRAIN_GROUPS_MIN: u32 = 3;
/// The operator's call (counted from 0: the rebalance, a move, then this)
/// that drains [`DRAINED_GROUP`]; later moves leave it alone.
pub const DRAIN_AT_CALL: usize = 2;
/// Longest simulated time, once every job has finished, for the drained
/// group to be emptied (drained again if its drain was refused while
/// another job moved some of its slots) and removed (refused while it
/// still anchors transaction records, which the sweeper forgets after two
/// sweeps).
pub const REMOVE_SETTLE_MAX: Duration = Duration::from_secs(60);

/// One call of the operator who reshards.
#[derive(Debug, Clone, Copy)]
enum ReshardCall {
    /// `Admin.Rebalance`: every group towards an even share, which first
    /// of all fills the added, empty group.
    Rebalance,
    /// `Admin.MoveSlots` of up to `count` slots that `from` owns when the
    /// call is made (drawn with `seed`) to `to`.
    Move {
        from: u64,
        to: u64,
        count: u32,
        seed: u64,
    },
    /// `Admin.DrainGroup`: every slot of `group` to the other groups.
    Drain { group: u64 },
}

/// The operator who reshards, with [`SimConfig::reshard`]: at
/// [`RESHARD_START`] a rebalance, then every [`RESHARD_GAP_MS`] a move of a
/// few random slots between two random groups — and, at [`DRAIN_AT_CALL`],
/// a drain of [`DRAINED_GROUP`] (which later moves leave alone) — each call
/// from a host of its own (`reshard-N`), while the workload runs and the
/// nemesis strikes.
/// Its schedule is drawn from an RNG of its own (seeded from the seed), so
/// that the nemesis and the clients draw what they drew before it existed.
pub(super) struct Resharder {
    rng: StdRng,
    /// Groups in the cluster, the added one included.
    groups: u32,
    next_at: Duration,
    /// Calls made so far.
    calls: usize,
    /// The group this run drains, if it has enough groups.
    drain: Option<u64>,
    catalog: Catalog,
    /// Set when the workload ends: the first rebalance stops retrying.
    stop: Arc<AtomicBool>,
    /// What the coordinator answered, with simulated times.
    pub(super) log: Arc<Mutex<Vec<String>>>,
}

impl Resharder {
    pub(super) fn new(seed: u64, groups: u32, catalog: Catalog, stop: Arc<AtomicBool>) -> Self {
        Resharder {
            rng: StdRng::seed_from_u64(seed ^ 0x7265_7368_6172_6421),
            groups,
            next_at: RESHARD_START,
            calls: 0,
            drain: (groups >= DRAIN_GROUPS_MIN).then_some(DRAINED_GROUP),
            catalog,
            stop,
            log: Arc::default(),
        }
    }

    /// The group this run drains (and removes at the end), if any.
    pub(super) fn drain(&self) -> Option<u64> {
        self.drain
    }

    /// Makes the next call when it is time.
    pub(super) fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        log: &mut Vec<String>,
    ) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + Duration::from_millis(self.rng.random_range(RESHARD_GAP_MS));
        let call = match self.drain {
            _ if self.calls == 0 => ReshardCall::Rebalance,
            Some(group) if self.calls == DRAIN_AT_CALL => ReshardCall::Drain { group },
            drain => {
                let drained = drain.filter(|_| self.calls > DRAIN_AT_CALL);
                let mut groups: Vec<u64> = (1..=u64::from(self.groups))
                    .filter(|g| Some(*g) != drained)
                    .collect();
                let from = groups.remove(self.rng.random_range(0..groups.len()));
                // Any group but `from` (and the drained one).
                let to = groups[self.rng.random_range(0..groups.len())];
                ReshardCall::Move {
                    from,
                    to,
                    count: self.rng.random_range(1..=MOVE_SLOTS_MAX),
                    seed: self.rng.random(),
                }
            }
        };
        self.calls += 1;
        log.push(format!("{now:?} reshard: {call:?}"));
        let (catalog, stop, answers) = (self.catalog.clone(), self.stop.clone(), self.log.clone());
        sim.client(format!("reshard-{}", self.calls).as_str(), async move {
            let answer = match reshard_call(call, &catalog, &stop).await {
                Ok(created) => created,
                Err(why) => format!("refused: {why}"),
            };
            let at = turmoil::sim_elapsed().unwrap_or_default();
            answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{at:?} reshard operator: {call:?}: {answer}"));
            Ok(())
        });
    }
}

/// Makes one call of the operator; the job it created, or why none was.
/// Refusals (slots another job moves, a coordinator down) are part of the
/// run, not failures of it — except that the first rebalance and the drain
/// are tried again until the coordinator takes them or the workload ends,
/// so that a run reshards at all and drains while the faults strike.
async fn reshard_call(
    call: ReshardCall,
    catalog: &Catalog,
    stop: &AtomicBool,
) -> Result<String, String> {
    use trellis_proto::v1;
    let mut admin = admin_client()?;
    let created = match call {
        ReshardCall::Rebalance => loop {
            match admin.rebalance(v1::RebalanceRequest {}).await {
                Ok(created) => break created,
                Err(status) if stop.load(Ordering::Relaxed) => {
                    return Err(format!("{:?}: {}", status.code(), status.message()));
                }
                Err(_) => tokio::time::sleep(REBALANCE_RETRY).await,
            }
        },
        ReshardCall::Move {
            from,
            to,
            count,
            seed,
        } => {
            let map = catalog
                .load()
                .await
                .map_err(|e| format!("reading the map: {e}"))?;
            let slots = owned_sample(&map.slots, from, count, seed);
            if slots.is_empty() {
                return Err(format!("group {from} owns no slot"));
            }
            let slots: Vec<String> = slots.iter().map(u32::to_string).collect();
            admin
                .move_slots(v1::MoveSlotsRequest {
                    from_group: from,
                    to_group: to,
                    slots: slots.join(","),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        }
        // Refused while a job still moves some of its slots (the
        // rebalance, mostly): asked again, as the rebalance is.
        ReshardCall::Drain { group } => loop {
            match admin
                .drain_group(v1::DrainGroupRequest { group_id: group })
                .await
            {
                Ok(created) => break created,
                Err(status) if stop.load(Ordering::Relaxed) => {
                    return Err(format!("{:?}: {}", status.code(), status.message()));
                }
                Err(_) => tokio::time::sleep(REBALANCE_RETRY).await,
            }
        },
    }
    .into_inner();
    Ok(format!(
        "job {} ({} slots in {} batches)",
        created.job_id, created.slots, created.batches
    ))
}

/// How the reshard jobs ended, as the waiter saw them.
pub(super) struct JobsOutcome {
    /// Simulated time the waiter stopped waiting.
    pub(super) at: Duration,
    /// Slots moved by finished jobs, or why the jobs did not all finish.
    pub(super) moved: Result<u64, String>,
    /// Every job, one line.
    pub(super) summary: String,
    /// With a drained group: whether it was removed, or why not.
    pub(super) removed: Option<Result<u64, String>>,
}

impl JobsOutcome {
    /// Why resharding failed: a job that never finished, none that moved a
    /// slot (a run that reshards nothing tested nothing), or a drained
    /// group that could not be removed.
    pub(super) fn error(&self) -> Option<String> {
        match (&self.moved, &self.removed) {
            (Ok(0), _) => Some(format!("no slot moved: {}", self.summary)),
            (Err(why), _) => Some(why.clone()),
            (Ok(_), Some(Err(why))) => Some(why.clone()),
            (Ok(_), _) => None,
        }
    }
}

/// Admin calls answer with this.
type Admin = trellis_proto::v1::admin_client::AdminClient<tonic::transport::Channel>;

/// Waits, after the faults are healed, until no reshard job is running
/// or paused — resuming each that paused itself (a cutover that could not
/// drain while a primary was down) — for at most [`JOBS_SETTLE_MAX`] of
/// simulated time; then, if the run drains a group, removes it (see
/// [`remove_drained`]).
pub(super) async fn wait_for_jobs(
    out: Arc<Mutex<Option<JobsOutcome>>>,
    drain: Option<u64>,
    catalog: Catalog,
) -> HostResult {
    let mut admin = admin_client()?;
    let (mut moved, mut summary) = settle_jobs(&mut admin).await;
    let removed = match (drain, &moved) {
        (Some(group), Ok(_)) => {
            let removed = remove_drained(group, &catalog, &mut admin).await;
            // A second drain's jobs count too.
            (moved, summary) = settle_jobs(&mut admin).await;
            Some(removed)
        }
        _ => None,
    };
    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(JobsOutcome {
        at: turmoil::sim_elapsed().unwrap_or_default(),
        moved,
        summary,
        removed,
    });
    Ok(())
}

/// Once every job finished: drains `group` again while it still owns
/// slots (its drain may have been refused while another job moved some of
/// them, or the operator's call may have found the coordinator down), then
/// removes it, retrying while it still anchors transaction records or no
/// primary of it answers — for at most [`REMOVE_SETTLE_MAX`] of simulated
/// time. The group's id when it is gone, or why it is not.
async fn remove_drained(group: u64, catalog: &Catalog, admin: &mut Admin) -> Result<u64, String> {
    use trellis_proto::v1;
    let deadline = tokio::time::Instant::now() + REMOVE_SETTLE_MAX;
    let mut last = String::from("not tried");
    while tokio::time::Instant::now() < deadline {
        let owns = match catalog.load().await {
            Ok(map) => map.slots.contains(&group),
            Err(e) => {
                last = format!("reading the map: {e}");
                tokio::time::sleep(JOBS_POLL).await;
                continue;
            }
        };
        if owns {
            last = match admin
                .drain_group(v1::DrainGroupRequest { group_id: group })
                .await
            {
                Ok(_) => format!("group {group} drained again"),
                Err(s) => format!("drain-group {group}: {:?}: {}", s.code(), s.message()),
            };
            settle_jobs(admin).await.0?;
            continue;
        }
        match admin
            .remove_group(v1::RemoveGroupRequest { group_id: group })
            .await
        {
            Ok(_) => return Ok(group),
            Err(status) => {
                let reason = trellis_proto::error::error_info(&status).map(|i| i.reason);
                last = format!(
                    "remove-group {group}: {:?}: {} ({reason:?})",
                    status.code(),
                    status.message()
                );
                // Refusals that time heals; any other is a failure.
                let retry = status.code() == tonic::Code::Unavailable
                    || matches!(
                        reason.as_deref(),
                        Some("GROUP_HOLDS_TRANSACTIONS" | "UNAVAILABLE")
                    );
                if !retry {
                    return Err(last);
                }
            }
        }
        tokio::time::sleep(JOBS_POLL).await;
    }
    Err(format!(
        "group {group} not removed {REMOVE_SETTLE_MAX:?} after the jobs finished: {last}"
    ))
}

/// Waits until no job is running or paused, resuming paused ones, for at
/// most [`JOBS_SETTLE_MAX`]: the slots the finished jobs moved (or why
/// they did not all finish) and a line per job.
async fn settle_jobs(admin: &mut Admin) -> (Result<u64, String>, String) {
    use trellis_proto::v1;
    let deadline = tokio::time::Instant::now() + JOBS_SETTLE_MAX;
    let summary = |jobs: &[&v1::ReshardJob]| {
        let lines: Vec<String> = jobs
            .iter()
            .map(|j| {
                let mut line = format!(
                    "job {} {} {}/{} slots",
                    j.id, j.state, j.slots_done, j.slots_total
                );
                if !j.phase.is_empty() {
                    line.push_str(&format!(
                        " (batch {}->{} slots {} in {})",
                        j.from_group, j.to_group, j.batch_slots, j.phase
                    ));
                }
                if !j.reason.is_empty() {
                    line.push_str(&format!(": {}", j.reason));
                }
                line
            })
            .collect();
        if lines.is_empty() {
            "no job".to_string()
        } else {
            lines.join("; ")
        }
    };
    loop {
        let late = tokio::time::Instant::now() >= deadline;
        match admin.list_reshard_jobs(v1::ListReshardJobsRequest {}).await {
            Ok(listed) => {
                let jobs = listed.into_inner().jobs;
                let all: Vec<&v1::ReshardJob> = jobs.iter().collect();
                let open: Vec<&v1::ReshardJob> = jobs
                    .iter()
                    .filter(|j| j.state == "running" || j.state == "paused")
                    .collect();
                if open.is_empty() {
                    let moved = jobs
                        .iter()
                        .filter(|j| j.state == "done")
                        .map(|j| u64::from(j.slots_done))
                        .sum();
                    return (Ok(moved), summary(&all));
                }
                if late {
                    return (
                        Err(format!(
                            "reshard jobs not finished {JOBS_SETTLE_MAX:?} after healing: {}",
                            summary(&open)
                        )),
                        summary(&all),
                    );
                }
                for job in open.iter().filter(|j| j.state == "paused") {
                    let _ = admin
                        .control_reshard_job(v1::ControlReshardJobRequest {
                            job_id: job.id,
                            action: v1::control_reshard_job_request::Action::Resume as i32,
                        })
                        .await;
                }
            }
            Err(status) if late => {
                let why = format!(
                    "the coordinator did not list the reshard jobs {JOBS_SETTLE_MAX:?} after healing: {}",
                    status.message()
                );
                return (Err(why.clone()), why);
            }
            Err(_) => {}
        }
        tokio::time::sleep(JOBS_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(moved: Result<u64, String>) -> JobsOutcome {
        JobsOutcome {
            at: Duration::from_secs(20),
            moved,
            summary: "job 1 done 0/0 slots".to_string(),
            removed: None,
        }
    }

    #[test]
    fn resharding_fails_when_a_job_never_finishes_or_no_slot_moved() {
        assert_eq!(outcome(Ok(12)).error(), None, "slots moved, every job done");
        let none = outcome(Ok(0)).error().expect("nothing moved is a failure");
        assert!(none.contains("no slot moved"), "{none}");
        let stuck = outcome(Err("reshard jobs not finished".to_string()))
            .error()
            .expect("a job still open is a failure");
        assert!(stuck.contains("not finished"), "{stuck}");
        let kept = JobsOutcome {
            removed: Some(Err("group 2 not removed".to_string())),
            ..outcome(Ok(12))
        }
        .error()
        .expect("a drained group left in place is a failure");
        assert!(kept.contains("not removed"), "{kept}");
        let gone = JobsOutcome {
            removed: Some(Ok(2)),
            ..outcome(Ok(12))
        };
        assert_eq!(gone.error(), None, "drained and removed");
    }

    #[test]
    fn an_owned_sample_takes_only_slots_the_group_owns() {
        let slots: Vec<u64> = (0..64).map(|s| 1 + s % 3).collect();
        let sample = owned_sample(&slots, 2, 5, 7);
        assert_eq!(sample.len(), 5);
        assert!(sample.iter().all(|s| slots[*s as usize] == 2), "{sample:?}");
        assert!(
            sample.windows(2).all(|w| w[0] < w[1]),
            "ascending: {sample:?}"
        );
        assert_eq!(sample, owned_sample(&slots, 2, 5, 7), "the seed decides");
        assert!(
            owned_sample(&slots, 4, 5, 7).is_empty(),
            "group 4 owns none"
        );
    }
}
