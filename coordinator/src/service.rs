//! The coordinator's gRPC edge: the public `trellis.v1.Txn` service (from
//! `trellis_txn::service`, re-exported here), the `Auth` service
//! ([`crate::auth_service`]), and the `Admin` and
//! shard-facing `Membership` services. Wire types become domain types here,
//! input is checked against the limits here, and every gRPC `Status` is
//! built here or by the Txn service's helpers ([`status_of`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use trellis_proto::error;
use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::v1 as pb;
use trellis_types::fail_stop::FailStopCause;
use trellis_types::limits::MESSAGE_BYTES_MAX;
use trellis_types::{ClusterId, GroupId};

pub use trellis_txn::service::{
    REQUEST_DEADLINE_DEFAULT, REQUEST_DEADLINE_MAX, SCAN_LIMIT_DEFAULT, TxnApi, deadline_of,
    invalid, status_of,
};

use trellis_txn::gate::Gate;

pub use crate::auth_service::AuthApi;
use crate::catalog::{CatalogError, JobRow};
pub use crate::changefeed::ChangefeedApi;
use crate::map::{ClusterMap, Member};
use crate::metrics::{FAIL_STOP_SERIES_MAX, unix_ms};
use crate::reshard::{self, Batch, Job, PlanError};
use crate::reshard_driver::map_after;
use crate::reshard_job::{self, Asked, JobRecord};
use crate::router::CatalogRouter;
use crate::txn::{TxnError, TxnManager};

/// Deadline of each shard status call behind Admin.Status.
pub const STATUS_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Silence after which the status shows a member as down: nobody (the
/// coordinator asking now, the primary for a backup, the backups for their
/// primary) heard from it for this long. Twenty replication heartbeats
/// (100 ms apart), so a late one never shows a live member down; about
/// when the group acts on the silence itself (a primary drops a silent
/// backup after 500 ms, backups elect a new primary after 1.2 s).
pub const MEMBER_SILENCE_MAX: Duration = Duration::from_secs(2);

/// What this coordinator last heard from a member itself, so that a member
/// that stops answering still shows its last pid and metrics address and
/// how long ago it answered.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    pid: u32,
    metrics_addr: String,
}

/// The public admin service.
#[derive(Clone)]
pub struct AdminApi {
    txns: Arc<TxnManager>,
    /// By member address, for the members of the current map only (so it
    /// is bounded by the map). A std lock: held only while building a
    /// group's status, never across an `.await`.
    seen: Arc<std::sync::Mutex<BTreeMap<String, Seen>>>,
    /// Wakes this coordinator's reshard driver when a job is created or
    /// resumed, so it starts without waiting for its tick.
    reshard_wake: Arc<Notify>,
}

impl AdminApi {
    pub fn new(txns: Arc<TxnManager>, reshard_wake: Arc<Notify>) -> Self {
        AdminApi {
            txns,
            seen: Arc::default(),
            reshard_wake,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.seen.lock().expect("seen lock poisoned")
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let router = self.txns.router();
        let map = router.map();
        let groups = map.groups.values().map(|group| {
            let map = map.clone();
            async move {
                // Every member is asked itself: the one source that knows
                // its role, pid and LSN, and an answer proves it alive.
                let answers = join_all(group.members.iter().map(|m| async move {
                    let answer = match router.client_at(&m.addr) {
                        Ok(mut client) => {
                            let call = client.shard_status(shard_pb::ShardStatusRequest {});
                            match tokio::time::timeout(STATUS_RPC_TIMEOUT, call).await {
                                Ok(Ok(answer)) => Answer::Status(Box::new(answer.into_inner())),
                                Ok(Err(status)) if refused(&status) => Answer::Refused,
                                _ => Answer::Silent,
                            }
                        }
                        Err(_) => Answer::Silent,
                    };
                    (m, answer)
                }))
                .await;
                let mut members = member_statuses(&answers, Instant::now(), &mut self.seen());
                if members.is_empty() {
                    members.push(pb::MemberStatus {
                        role: "unregistered".into(),
                        ..Default::default()
                    });
                }
                pb::GroupStatus {
                    group_id: group.id,
                    slots_owned: map.slots_of(group.id).len(),
                    members,
                }
            }
        });
        let groups = join_all(groups).await;
        self.seen().retain(|addr, _| {
            map.groups
                .values()
                .any(|g| g.members.iter().any(|m| &m.addr == addr))
        });
        let silence_max_ms = crate::COORDINATOR_SILENCE_MAX.as_millis() as u64;
        let coordinators = router
            .catalog()
            .coordinators()
            .await
            .map(|list| {
                list.into_iter()
                    .map(|c| pb::CoordinatorStatus {
                        id: c.id,
                        address: c.addr,
                        heartbeat_age_s: c.heartbeat_age_ms / 1000,
                        alive: c.heartbeat_age_ms <= silence_max_ms,
                        metrics_addr: c.metrics_addr,
                        uptime_s: c.uptime_ms.unwrap_or(0) / 1000,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // 0 (unknown) if the catalog cannot be read, like the lists below.
        let cluster = router.catalog().cluster_id().await.ok();
        Ok(Response::new(pb::StatusResponse {
            map_epoch: map.map_epoch,
            cluster: cluster.map_or(0, ClusterId::get),
            coordinators,
            catalog: router.catalog().backend().to_string(),
            // Unfinished jobs, oldest first; none if the catalog cannot
            // be read (the coordinators list is empty then too).
            reshard_jobs: match router.catalog().jobs().await {
                Ok(rows) => {
                    let now_ms = unix_ms();
                    rows.iter()
                        .filter_map(|row| {
                            let job = job_pb(row, now_ms);
                            matches!(job.state.as_str(), "running" | "paused").then_some(job)
                        })
                        .collect()
                }
                Err(_) => Vec::new(),
            },
            feeds: match router.catalog().feed_cursors().await {
                Ok(rows) => feed_statuses(rows, &groups, cluster),
                Err(_) => Vec::new(),
            },
            groups,
        }))
    }

    async fn rebalance(
        &self,
        request: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::ReshardJobCreated>, Status> {
        let deadline = deadline_of(&request);
        self.create_job(deadline, |map, groups| {
            reshard::plan_rebalance(&map.slots, groups)
        })
        .await
    }

    async fn move_slots(
        &self,
        request: Request<pb::MoveSlotsRequest>,
    ) -> Result<Response<pb::ReshardJobCreated>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let slots = trellis_types::SlotSet::parse(&req.slots)
            .map_err(|e| invalid(format!("--slots `{}`: {e}", req.slots)))?;
        self.create_job(deadline, |map, groups| {
            reshard::plan_move(&map.slots, groups, req.from_group, req.to_group, &slots)
        })
        .await
    }

    async fn drain_group(
        &self,
        request: Request<pb::DrainGroupRequest>,
    ) -> Result<Response<pb::ReshardJobCreated>, Status> {
        let deadline = deadline_of(&request);
        let group = request.into_inner().group_id;
        self.create_job(deadline, |map, groups| {
            reshard::plan_drain(&map.slots, groups, group)
        })
        .await
    }

    async fn list_reshard_jobs(
        &self,
        request: Request<pb::ListReshardJobsRequest>,
    ) -> Result<Response<pb::ListReshardJobsResponse>, Status> {
        let deadline = deadline_of(&request);
        let rows = catalog_read(deadline, self.txns.router().catalog().jobs()).await?;
        let now_ms = unix_ms();
        Ok(Response::new(pb::ListReshardJobsResponse {
            jobs: rows.iter().rev().map(|row| job_pb(row, now_ms)).collect(),
        }))
    }

    async fn control_reshard_job(
        &self,
        request: Request<pb::ControlReshardJobRequest>,
    ) -> Result<Response<pb::ReshardJob>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let asked = match pb::control_reshard_job_request::Action::try_from(req.action) {
            Ok(pb::control_reshard_job_request::Action::Pause) => Asked::Pause,
            Ok(pb::control_reshard_job_request::Action::Resume) => Asked::Resume,
            Ok(pb::control_reshard_job_request::Action::Cancel) => Asked::Cancel,
            _ => {
                return Err(invalid(format!(
                    "unknown action {}: PAUSE (1), RESUME (2) or CANCEL (3)",
                    req.action
                )));
            }
        };
        let catalog = self.txns.router().catalog();
        for _ in 0..CONTROL_ATTEMPTS_MAX {
            let rows = catalog_read(deadline, catalog.jobs()).await?;
            let Some(row) = rows.iter().find(|r| r.id == req.job_id) else {
                return Err(unknown_job(req.job_id));
            };
            let mut record = reshard_job::decode(row.id, &row.state)
                .map_err(|e| status_of(TxnError::Internal(e.to_string())))?;
            reshard_job::ask(&mut record, asked).map_err(|e| {
                error::status(
                    tonic::Code::InvalidArgument,
                    e.to_string(),
                    pb::ErrorReason::InvalidInput.as_str_name(),
                    [(error::key::JOB, req.job_id.to_string())],
                )
            })?;
            let state = reshard_job::encode(&record);
            let won = catalog_read(deadline, catalog.save_job(row.id, row.version, &state)).await?;
            if won {
                tracing::info!(job = row.id, ?asked, "reshard job control");
                self.reshard_wake.notify_one();
                let saved = JobRow {
                    version: row.version + 1,
                    state,
                    ..row.clone()
                };
                return Ok(Response::new(job_pb(&saved, unix_ms())));
            }
        }
        Err(admin_status(CatalogError::Conflict))
    }

    async fn add_group(
        &self,
        request: Request<pb::AddGroupRequest>,
    ) -> Result<Response<pb::AddGroupResponse>, Status> {
        let deadline = deadline_of(&request);
        let group = request.into_inner().group_id;
        let router = self.txns.router();
        let map = catalog_change(deadline, router.catalog().add_group(group)).await?;
        let response = pb::AddGroupResponse {
            map_epoch: map.map_epoch,
            groups: map.groups.len() as u32,
        };
        router.install(map);
        Ok(Response::new(response))
    }

    async fn remove_group(
        &self,
        request: Request<pb::RemoveGroupRequest>,
    ) -> Result<Response<pb::RemoveGroupResponse>, Status> {
        let deadline = deadline_of(&request);
        let group = request.into_inner().group_id;
        let router = self.txns.router();
        // A group that still owns slots is refused by the catalog below;
        // one that owns none must also anchor and hold no transaction.
        if !router.map().slots.contains(&group) {
            let holdings = self.holdings(group).await;
            reshard::check_drained(group, holdings).map_err(|refused| {
                let code = match refused {
                    reshard::RemoveRefused::HoldsTransactions { .. } => {
                        tonic::Code::FailedPrecondition
                    }
                    reshard::RemoveRefused::Unreachable { .. } => tonic::Code::Unavailable,
                };
                let reason = match refused {
                    reshard::RemoveRefused::HoldsTransactions { .. } => {
                        pb::ErrorReason::GroupHoldsTransactions
                    }
                    reshard::RemoveRefused::Unreachable { .. } => pb::ErrorReason::Unavailable,
                };
                error::status(
                    code,
                    refused.to_string(),
                    reason.as_str_name(),
                    Some((error::key::GROUP, group.to_string())),
                )
            })?;
        }
        let map = catalog_change(deadline, router.catalog().remove_group(group)).await?;
        let response = pb::RemoveGroupResponse {
            map_epoch: map.map_epoch,
            groups: map.groups.len() as u32,
        };
        router.install(map);
        Ok(Response::new(response))
    }
}

impl AdminApi {
    /// What `group`'s primary holds of transactions (asked of every member
    /// the map lists, within [`STATUS_RPC_TIMEOUT`]; the one that answers
    /// as primary counts).
    async fn holdings(&self, group: GroupId) -> reshard::Holdings {
        let router = self.txns.router();
        let map = router.map();
        let Some(members) = map.groups.get(&group).map(|g| g.members.clone()) else {
            return reshard::Holdings::NoMembers;
        };
        if members.is_empty() {
            return reshard::Holdings::NoMembers;
        }
        let answers = join_all(members.iter().map(|m| async move {
            let mut client = router.client_at(&m.addr).ok()?;
            let call = client.shard_status(shard_pb::ShardStatusRequest {});
            let status = tokio::time::timeout(STATUS_RPC_TIMEOUT, call)
                .await
                .ok()?
                .ok()?
                .into_inner();
            (status.role == "PRIMARY").then_some(reshard::Holdings::Primary {
                records: status.txn_records,
                prepared: status.prepared,
            })
        }))
        .await;
        answers
            .into_iter()
            .flatten()
            .next()
            .unwrap_or(reshard::Holdings::NoAnswer)
    }
}

/// Runs an Admin change of the catalog within the request's deadline. The
/// change runs to completion in a task of its own even when the deadline
/// passes first, so then its outcome is unknown, which the error says.
async fn catalog_change(
    deadline: Instant,
    change: impl std::future::Future<Output = Result<ClusterMap, CatalogError>>,
) -> Result<ClusterMap, Status> {
    match tokio::time::timeout_at(deadline, change).await {
        Ok(result) => result.map_err(admin_status),
        Err(_) => Err(error::status(
            tonic::Code::DeadlineExceeded,
            "the catalog did not answer before the deadline; the change may or may not \
             have been made: `trellis status` shows the groups",
            pb::ErrorReason::Unavailable.as_str_name(),
            None,
        )),
    }
}

/// Most tries of a job control against drivers saving the job meanwhile.
pub const CONTROL_ATTEMPTS_MAX: u32 = 8;

impl AdminApi {
    /// Plans with `plan` over the current map and the catalog's groups,
    /// refuses slots that a running job moves, and stores the job.
    async fn create_job(
        &self,
        deadline: Instant,
        plan: impl FnOnce(&ClusterMap, &[GroupId]) -> Result<Vec<Batch>, PlanError>,
    ) -> Result<Response<pb::ReshardJobCreated>, Status> {
        let router = self.txns.router();
        let catalog = router.catalog();
        let map = catalog_read(deadline, catalog.load()).await?;
        let groups: Vec<GroupId> = map.groups.keys().copied().collect();
        let batches = plan(&map, &groups).map_err(plan_status)?;
        // A group with no replica yet can neither send nor take slots.
        if let Some(group) = batches
            .iter()
            .flat_map(|b| [b.from, b.to])
            .find(|g| map.primary(*g).is_none())
        {
            return Err(error::status(
                tonic::Code::FailedPrecondition,
                format!(
                    "group {group} has no registered replica, so it cannot take part in a move: \
                     start its replicas first (`trellis shard --group {group} --coordinator ADDR \
                     --data-dir DIR`)"
                ),
                pb::ErrorReason::InvalidInput.as_str_name(),
                [(error::key::GROUP, group.to_string())],
            ));
        }
        let (slots_min_after, slots_max_after) =
            reshard::spread(&map_after(&map.slots, &batches), &groups);
        let slots: u32 = batches.iter().map(|b| b.slots.len()).sum();
        let created = |job_id| pb::ReshardJobCreated {
            job_id,
            slots,
            batches: batches.len() as u32,
            slots_min_after,
            slots_max_after,
        };
        if batches.is_empty() {
            return Ok(Response::new(created(0)));
        }
        let active = |rows: &[JobRow], below: u64| -> Vec<(u64, Vec<Batch>)> {
            rows.iter()
                .filter(|r| r.id < below)
                .filter_map(|r| reshard_job::decode(r.id, &r.state).ok())
                .map(|r| (r.job.id, r.job.pending().to_vec()))
                .collect()
        };
        let rows = catalog_read(deadline, catalog.jobs()).await?;
        reshard::check_overlap(&batches, &active(&rows, u64::MAX)).map_err(plan_status)?;
        let record = JobRecord::new(Job::new(0, batches.clone()), unix_ms());
        let id = catalog_read(deadline, catalog.create_job(&reshard_job::encode(&record))).await?;
        // Two jobs created at once may both have passed the check: the
        // younger one gives way (cancelled before it did anything).
        let rows = catalog_read(deadline, catalog.jobs()).await?;
        if let Err(err) = reshard::check_overlap(&batches, &active(&rows, id)) {
            let mut mine = record;
            mine.job.control = reshard::Control::Cancelled;
            let _ = catalog.save_job(id, 1, &reshard_job::encode(&mine)).await;
            return Err(plan_status(err));
        }
        tracing::info!(
            job = id,
            slots,
            batches = batches.len(),
            "reshard job created"
        );
        self.reshard_wake.notify_one();
        Ok(Response::new(created(id)))
    }
}

/// A catalog read (or a single CAS) within the request's deadline.
pub(crate) async fn catalog_read<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, Status> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result.map_err(admin_status),
        Err(_) => Err(error::status(
            tonic::Code::DeadlineExceeded,
            "the catalog did not answer before the deadline: `trellis admin reshard list` shows \
             the jobs",
            pb::ErrorReason::Unavailable.as_str_name(),
            None,
        )),
    }
}

fn unknown_job(id: u64) -> Status {
    error::status(
        tonic::Code::NotFound,
        format!("reshard job {id} does not exist: `trellis admin reshard list` shows the jobs"),
        pb::ErrorReason::UnknownJob.as_str_name(),
        [(error::key::JOB, id.to_string())],
    )
}

/// The status of a refused plan: an unknown group is UNKNOWN_GROUP, a
/// busy slot SLOTS_BUSY (with the job), anything else INVALID_INPUT.
fn plan_status(err: PlanError) -> Status {
    let (code, reason, metadata) = match &err {
        PlanError::UnknownGroup(group) => (
            tonic::Code::NotFound,
            pb::ErrorReason::UnknownGroup,
            Some((error::key::GROUP, group.to_string())),
        ),
        PlanError::Overlaps { job, .. } => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::SlotsBusy,
            Some((error::key::JOB, job.to_string())),
        ),
        PlanError::SameGroup(_)
        | PlanError::NotOwned { .. }
        | PlanError::LastGroup { .. }
        | PlanError::StillOwns { .. } => (
            tonic::Code::InvalidArgument,
            pb::ErrorReason::InvalidInput,
            None,
        ),
    };
    error::status(code, err.to_string(), reason.as_str_name(), metadata)
}

/// A stored job as the Admin API shows it; one whose state cannot be read
/// shows as `unreadable`, with the reason.
fn job_pb(row: &JobRow, now_ms: u64) -> pb::ReshardJob {
    let record = match reshard_job::decode(row.id, &row.state) {
        Ok(record) => record,
        Err(err) => {
            return pb::ReshardJob {
                id: row.id,
                state: "unreadable".into(),
                reason: err.to_string(),
                ..Default::default()
            };
        }
    };
    let job = &record.job;
    let (slots_done, slots_total) = job.slots_progress();
    let running_ms = now_ms.saturating_sub(record.started_at_ms);
    let (bytes_per_second, eta_s) =
        reshard_job::rate_and_eta(job.bytes_copied, slots_done, slots_total, running_ms);
    let running = job.control == reshard::Control::Running;
    let reason = match (&job.control, record.asked) {
        (reshard::Control::Paused { reason }, _) => reason.clone().unwrap_or_default(),
        (_, Some(asked)) => format!(
            "{} asked; it takes effect at the next safe point",
            match asked {
                Asked::Pause => "pause",
                Asked::Resume => "resume",
                Asked::Cancel => "cancel",
            }
        ),
        _ => String::new(),
    };
    let batch = job.current().filter(|_| running);
    pb::ReshardJob {
        id: row.id,
        state: reshard_job::state_name(&job.control).into(),
        reason,
        phase: if running {
            reshard_job::phase_name(job.phase).into()
        } else {
            String::new()
        },
        slots_done,
        slots_total,
        batches_done: job.batch.min(job.batches.len()) as u32,
        batches_total: job.batches.len() as u32,
        keys_copied: job.keys_copied,
        bytes_copied: job.bytes_copied,
        from_group: batch.map_or(0, |b| b.from),
        to_group: batch.map_or(0, |b| b.to),
        batch_slots: batch.map_or_else(String::new, |b| reshard_job::slot_ranges(&b.slots)),
        bytes_per_second,
        eta_s: if running { eta_s } else { 0 },
        pause_max_ms: record.pause_max_ms,
    }
}

/// Builds the status of a failed Admin change of the catalog, in the error
/// model of the public services (an `ErrorInfo` whose reason is a
/// `trellis.v1.ErrorReason` name; the group in its metadata where the
/// reason is about one).
pub fn admin_status(err: CatalogError) -> Status {
    let (code, reason, group) = match &err {
        CatalogError::GroupExists { group } => (
            tonic::Code::AlreadyExists,
            pb::ErrorReason::GroupExists,
            Some(*group),
        ),
        CatalogError::UnknownGroup { group, .. } => (
            tonic::Code::NotFound,
            pb::ErrorReason::UnknownGroup,
            Some(*group),
        ),
        CatalogError::GroupOwnsSlots { group, .. } => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::GroupOwnsSlots,
            Some(*group),
        ),
        // The change would lock everyone out: the message says what to
        // do first.
        CatalogError::LockOut(_) => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::InvalidInput,
            None,
        ),
        CatalogError::Invalid(_) => (
            tonic::Code::InvalidArgument,
            pb::ErrorReason::InvalidInput,
            None,
        ),
        // Lost to other writers every time: retrying later can win.
        CatalogError::Conflict => (tonic::Code::Aborted, pb::ErrorReason::Unavailable, None),
        CatalogError::Database { .. } | CatalogError::Io { .. } => {
            (tonic::Code::Unavailable, pb::ErrorReason::Unavailable, None)
        }
        CatalogError::UnknownJob { id } => {
            return unknown_job(*id);
        }
        CatalogError::BadUrl { .. }
        | CatalogError::Migrate { .. }
        | CatalogError::NotBootstrapped
        | CatalogError::Mismatch(_)
        | CatalogError::Corrupt(_) => (tonic::Code::Internal, pb::ErrorReason::Internal, None),
    };
    error::status(
        code,
        err.to_string(),
        reason.as_str_name(),
        group.map(|g| (error::key::GROUP, g.to_string())),
    )
}

/// What a member said when asked for its status.
enum Answer {
    Status(Box<shard_pb::ShardStatusResponse>),
    /// Its address refused the connection: nothing listens there, so the
    /// process is gone (or not yet back), whatever its group last heard.
    Refused,
    /// No answer in time, or another failure: it may be alive behind a
    /// network problem.
    Silent,
}

impl Answer {
    fn status(&self) -> Option<&shard_pb::ShardStatusResponse> {
        match self {
            Answer::Status(s) => Some(s),
            Answer::Refused | Answer::Silent => None,
        }
    }
}

/// Whether a failed call's cause is a refused TCP connection.
fn refused(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(err) = cause {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// The status of a group's members from what each answered, in
/// configuration order (the first is the configured primary). A member
/// that did not answer is down if its address refused the connection;
/// else alive if its group heard from it within [`MEMBER_SILENCE_MAX`]
/// ("unreachable": only this coordinator cannot reach it), else down.
/// Either way lag and catch-up come only from the primary's view of a live
/// member, never a stale or made-up number.
fn member_statuses(
    answers: &[(&Member, Answer)],
    now: Instant,
    seen: &mut BTreeMap<String, Seen>,
) -> Vec<pb::MemberStatus> {
    let is = |a: &shard_pb::ShardStatusResponse, role: &str| a.role.eq_ignore_ascii_case(role);
    let primary = answers
        .iter()
        .find_map(|(_, a)| a.status().filter(|a| is(a, "primary")));
    let primary_lsn = primary.map_or(0, |p| p.last_lsn);
    // How long ago the backups last heard from their primary (the freshest).
    let primary_heard_ms = answers
        .iter()
        .filter_map(|(_, a)| a.status())
        .filter(|a| is(a, "backup") || is(a, "learner"))
        .map(|a| a.primary_silent_ms)
        .min();
    let silence_max_ms = MEMBER_SILENCE_MAX.as_millis() as u64;
    answers
        .iter()
        .enumerate()
        .map(|(ordinal, (m, answer))| {
            let progress = primary.and_then(|p| p.replicas.iter().find(|r| r.addr == m.addr));
            let mut member = pb::MemberStatus {
                address: m.addr.clone(),
                pid: m.pid,
                in_sync: m.in_sync,
                ..Default::default()
            };
            match answer {
                Answer::Status(s) => {
                    seen.insert(
                        m.addr.clone(),
                        Seen {
                            at: now,
                            pid: s.pid,
                            metrics_addr: s.metrics_addr.clone(),
                        },
                    );
                    member.role = s.role.to_lowercase();
                    member.pid = s.pid;
                    member.last_lsn = s.last_lsn;
                    member.in_doubt = s.prepared;
                    member.keys = s.keys;
                    member.map_epoch = s.map_epoch;
                    member.epoch = s.epoch;
                    member.lease_ms = s.lease_ms;
                    member.alive = true;
                    member.last_heard_ms = Some(0);
                    member.metrics_addr = s.metrics_addr.clone();
                    member.uptime_s = s.uptime_ms / 1000;
                    member.reads_per_second = s.reads_per_second;
                    member.stale_reads_per_second = s.stale_reads_per_second;
                }
                Answer::Refused | Answer::Silent => {
                    // A primary that never heard from it since tracking it
                    // (a new primary, after a failover) cannot vouch for it.
                    let by_group = match progress {
                        Some(p) => p.heard.then_some(p.silent_ms),
                        None if ordinal == 0 => primary_heard_ms,
                        None => None,
                    };
                    let remembered = seen.get(&m.addr);
                    let by_me =
                        remembered.map(|s| now.saturating_duration_since(s.at).as_millis() as u64);
                    member.last_heard_ms = by_group.into_iter().chain(by_me).min();
                    member.alive = matches!(answer, Answer::Silent)
                        && by_group.is_some_and(|ms| ms <= silence_max_ms);
                    member.role = if member.alive { "unreachable" } else { "down" }.into();
                    if let Some(s) = remembered {
                        member.pid = s.pid;
                        member.metrics_addr = s.metrics_addr.clone();
                    }
                }
            }
            if member.alive
                && let Some(p) = progress
            {
                member.lag_records = primary_lsn.saturating_sub(p.acked_lsn);
                member.lag_ms = p.silent_ms;
                member.catch_up = p.catch_up.clone();
                member.catch_up_done = p.catch_up_done;
                member.catch_up_total = p.catch_up_total;
            }
            member
        })
        .collect()
}

#[cfg(test)]
mod status_tests {
    use super::*;

    /// GetGroup carries the registered feeds' pin; when the cursors cannot
    /// be read it says "not known", never "no feed" (which would let the
    /// replicas' next snapshot cut what a feed still needs).
    #[tokio::test]
    async fn get_group_says_when_the_feed_pin_is_not_known() {
        use prost::Message as _;
        use shard_pb::membership_server::Membership as _;
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let catalog = crate::catalog::Catalog::connect(&url)
            .await
            .expect("catalog");
        let map = catalog.bootstrap(1).await.expect("bootstrap");
        let cursor = pb::FeedCursor {
            groups: vec![pb::GroupPosition {
                group: 1,
                position: 41,
            }],
            cluster: catalog.cluster_id().await.expect("cluster id").get(),
        };
        catalog
            .save_feed_cursor("f", &cursor.encode_to_vec())
            .await
            .expect("save");
        let router = <crate::router::Router as CatalogRouter>::new(catalog, map);
        let txns = TxnManager::new(Arc::new(router), Arc::default());
        let api = MembershipApi::new(txns, Arc::new(Gate::new(Arc::default())));
        let ask = || shard_pb::GetGroupRequest { group_id: 1 };
        let config = api.get_group(Request::new(ask())).await.expect("get group");
        assert_eq!(config.get_ref().feed_keep_from, Some(42));
        // Behind the catalog's back, the cursors become unreadable.
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("DROP TABLE feed_cursors")
            .execute(&mut conn)
            .await
            .expect("drop");
        let config = api.get_group(Request::new(ask())).await.expect("get group");
        assert_eq!(config.get_ref().feed_keep_from, None, "not known, not 0");
    }

    #[test]
    fn registered_feeds_pin_each_group_from_their_slowest_position() {
        use prost::Message as _;
        let row = |feed: &str, positions: &[(u64, u64)]| crate::catalog::FeedCursorRow {
            feed: feed.into(),
            cursor: pb::FeedCursor {
                groups: positions
                    .iter()
                    .map(|&(group, position)| pb::GroupPosition { group, position })
                    .collect(),
                // "b" was saved before cursors named their cluster.
                cluster: if feed == "b" { 0 } else { 9 },
            }
            .encode_to_vec(),
            updated_age_ms: 0,
        };
        assert_eq!(feed_keep_from(&[], 1), 0, "no feed, no pin");
        let rows = [row("a", &[(1, 50), (2, 9)]), row("b", &[(1, 70)])];
        assert_eq!(
            feed_keep_from(&rows, 1),
            51,
            "the slowest feed's next record"
        );
        assert_eq!(
            feed_keep_from(&rows, 2),
            1,
            "a feed without the group needs its whole log"
        );
        let statuses = feed_statuses(rows.to_vec(), &[], ClusterId::new(9));
        assert_eq!(statuses.len(), 2);
        assert!(
            statuses
                .iter()
                .all(|s| s.cursor.as_ref().map(|c| c.cluster) == Some(9)),
            "a cursor saved without its cluster is shown as this cluster's: {statuses:?}"
        );
        assert!(statuses[0].lag.is_empty(), "no group answered: no lag");
    }

    /// Each refusal of an Admin group change has its code, its reason and
    /// the group in the `ErrorInfo`, and keeps the catalog's message.
    #[test]
    fn admin_refusals_carry_reason_and_group() {
        let cases = [
            (
                CatalogError::GroupExists { group: 3 },
                tonic::Code::AlreadyExists,
                pb::ErrorReason::GroupExists,
                Some("3"),
            ),
            (
                CatalogError::UnknownGroup {
                    group: 9,
                    count: 3,
                    first: 1,
                    last: 3,
                },
                tonic::Code::NotFound,
                pb::ErrorReason::UnknownGroup,
                Some("9"),
            ),
            (
                CatalogError::GroupOwnsSlots {
                    group: 2,
                    slots: 1365,
                },
                tonic::Code::FailedPrecondition,
                pb::ErrorReason::GroupOwnsSlots,
                Some("2"),
            ),
            (
                CatalogError::Invalid("out of range".into()),
                tonic::Code::InvalidArgument,
                pb::ErrorReason::InvalidInput,
                None,
            ),
            (
                CatalogError::Conflict,
                tonic::Code::Aborted,
                pb::ErrorReason::Unavailable,
                None,
            ),
        ];
        for (err, code, reason, group) in cases {
            let message = err.to_string();
            let status = admin_status(err);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
            let info = error::error_info(&status).expect("an ErrorInfo");
            assert_eq!(info.reason, reason.as_str_name());
            assert_eq!(
                info.metadata.get(error::key::GROUP).map(String::as_str),
                group
            );
        }
    }

    /// A call to a port nobody listens on fails as refused, through
    /// tonic's and hyper's error wrapping, on the coordinator's own lazy
    /// channel (what the status handler sees when a member was killed).
    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(STATUS_RPC_TIMEOUT)
            .timeout(STATUS_RPC_TIMEOUT);
        let mut client = shard_pb::shard_client::ShardClient::new(trellis_net::lazy(endpoint));
        let err = client
            .shard_status(shard_pb::ShardStatusRequest {})
            .await
            .expect_err("nobody listens");
        assert!(refused(&err), "{err:?}");
        assert!(!refused(&Status::unavailable("no route")));
    }
}

/// Where shards register.
#[derive(Clone)]
pub struct MembershipApi {
    txns: Arc<TxnManager>,
    /// What `GetAuth` hands to shards.
    gate: Arc<Gate>,
}

impl MembershipApi {
    pub fn new(txns: Arc<TxnManager>, gate: Arc<Gate>) -> Self {
        MembershipApi { txns, gate }
    }
}

#[tonic::async_trait]
impl shard_pb::membership_server::Membership for MembershipApi {
    async fn get_auth(
        &self,
        request: Request<shard_pb::GetAuthRequest>,
    ) -> Result<Response<shard_pb::GetAuthResponse>, Status> {
        // The gate was read from the catalog before this coordinator
        // served its first request, so a shard never hears "auth off"
        // from a coordinator that has not looked.
        let known = request.into_inner().known;
        let (state, fingerprint) = self.gate.state_and_fingerprint();
        if known == *fingerprint {
            return Ok(Response::new(shard_pb::GetAuthResponse {
                fingerprint: known,
                unchanged: true,
                ..Default::default()
            }));
        }
        Ok(Response::new(state.to_pb(fingerprint.to_vec())))
    }

    async fn register(
        &self,
        request: Request<shard_pb::RegisterRequest>,
    ) -> Result<Response<shard_pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.addr.is_empty() {
            return Err(invalid("register needs the shard's address"));
        }
        let router = self.txns.router();
        let map = router
            .catalog()
            .register_member(req.group_id, &req.addr, req.pid)
            .await
            .map_err(|e| match e {
                CatalogError::Conflict => Status::aborted(e.to_string()),
                // What the shard logs: say how to make its group known.
                CatalogError::UnknownGroup { group, .. } => {
                    Status::failed_precondition(format!("{e}; {}", add_group_hint(group)))
                }
                other => Status::failed_precondition(other.to_string()),
            })?;
        let slots = map.slots_of(req.group_id);
        let map_epoch = map.map_epoch;
        router.install(map);
        tracing::info!(group = req.group_id, addr = %req.addr, pid = req.pid, slots = slots.len(), "shard registered");
        Ok(Response::new(shard_pb::RegisterResponse {
            map_epoch,
            slots: slots.to_bytes(),
        }))
    }

    async fn report_fail_stop(
        &self,
        request: Request<shard_pb::FailStopReport>,
    ) -> Result<Response<shard_pb::FailStopAck>, Status> {
        let req = request.into_inner();
        if req.addr.is_empty() {
            return Err(invalid("a fail-stop report needs the shard's address"));
        }
        let Some(cause) = FailStopCause::from_name(&req.cause) else {
            return Err(invalid(format!(
                "unknown fail-stop cause {:?} (known: fsync, disk_full, io)",
                req.cause
            )));
        };
        if !self
            .txns
            .metrics()
            .fail_stop(req.group_id, &req.addr, cause)
        {
            return Err(Status::resource_exhausted(format!(
                "this coordinator keeps at most {FAIL_STOP_SERIES_MAX} fail-stop series"
            )));
        }
        tracing::error!(group = req.group_id, addr = %req.addr, %cause, detail = %req.detail, "a shard replica fail-stopped: its log failed");
        Ok(Response::new(shard_pb::FailStopAck {}))
    }

    async fn get_group(
        &self,
        request: Request<shard_pb::GetGroupRequest>,
    ) -> Result<Response<shard_pb::GroupConfig>, Status> {
        let group = request.into_inner().group_id;
        let router = self.txns.router();
        let map = router.catalog().load().await.map_err(catalog_status)?;
        let mut config = group_config(&map, group)?;
        // Registered feeds' pin: the catalog's cursors decide what the
        // group's logs keep. A read that fails says "not known", never
        // "no feed": the replicas keep the pin they had (0 would let their
        // next snapshot cut a registered feed's history).
        config.feed_keep_from = match router.catalog().feed_cursors().await {
            Ok(rows) => Some(feed_keep_from(&rows, group)),
            Err(err) => {
                tracing::warn!(%err, "cannot read the feed cursors for the log pin");
                None
            }
        };
        router.install(map);
        Ok(Response::new(config))
    }

    async fn cas_group(
        &self,
        request: Request<shard_pb::CasGroupRequest>,
    ) -> Result<Response<shard_pb::CasGroupResponse>, Status> {
        let req = request.into_inner();
        let members: Vec<Member> = req
            .members
            .iter()
            .map(|m| Member {
                addr: m.addr.clone(),
                pid: m.pid,
                in_sync: m.in_sync,
            })
            .collect();
        let router = self.txns.router();
        let won = router
            .catalog()
            .cas_group(req.group_id, req.expected_version, req.epoch, &members)
            .await
            .map_err(catalog_status)?;
        let map = router.catalog().load().await.map_err(catalog_status)?;
        let config = group_config(&map, req.group_id)?;
        if won {
            tracing::info!(
                group = req.group_id,
                epoch = config.epoch,
                primary = %members[0].addr,
                members = members.len(),
                reason = %req.reason,
                "group configuration changed"
            );
        }
        router.install(map);
        Ok(Response::new(shard_pb::CasGroupResponse {
            won,
            config: Some(config),
        }))
    }
}

/// What a replica of an unknown group is told: the group must be added
/// first (or, if it was removed, added again).
pub fn add_group_hint(group: GroupId) -> String {
    format!(
        "a new group must be added before its replicas start: run \
         `trellis admin add-group --group {group}` first"
    )
}

fn catalog_status(e: crate::catalog::CatalogError) -> Status {
    match e {
        crate::catalog::CatalogError::Conflict => Status::aborted(e.to_string()),
        crate::catalog::CatalogError::Invalid(_) => Status::invalid_argument(e.to_string()),
        crate::catalog::CatalogError::Database { .. } => Status::unavailable(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

/// The registered feeds with their lag: by group, the records its primary
/// (as the status found it) holds past the feed's position.
fn feed_statuses(
    rows: Vec<crate::catalog::FeedCursorRow>,
    groups: &[pb::GroupStatus],
    cluster: Option<ClusterId>,
) -> Vec<pb::FeedStatus> {
    use prost::Message as _;
    rows.into_iter()
        .map(|row| {
            let mut cursor = pb::FeedCursor::decode(row.cursor.as_slice()).unwrap_or_default();
            if let Some(cluster) = cluster {
                cursor = crate::changefeed::stored_cursor(cursor, cluster);
            }
            let lag = groups
                .iter()
                .filter_map(|g| {
                    let head = g.members.iter().find(|m| m.role == "primary")?.last_lsn;
                    let position = cursor
                        .groups
                        .iter()
                        .find(|p| p.group == g.group_id)
                        .map_or(0, |p| p.position);
                    Some(pb::FeedLag {
                        group: g.group_id,
                        records: head.saturating_sub(position),
                    })
                })
                .collect();
            pb::FeedStatus {
                feed: row.feed,
                cursor: Some(cursor),
                saved_age_s: row.updated_age_ms / 1000,
                lag,
            }
        })
        .collect()
}

/// The first record of `group` the registered feeds still need: the
/// lowest position any cursor holds for it, plus one (a cursor without the
/// group needs its log from the start); 0 with no feed.
fn feed_keep_from(rows: &[crate::catalog::FeedCursorRow], group: GroupId) -> u64 {
    use prost::Message as _;
    rows.iter()
        .map(|row| {
            pb::FeedCursor::decode(row.cursor.as_slice())
                .ok()
                .and_then(|c| {
                    c.groups
                        .iter()
                        .find(|p| p.group == group)
                        .map(|p| p.position)
                })
                .unwrap_or(0)
                + 1
        })
        .min()
        .unwrap_or(0)
}

/// A group's configuration as the shard-internal message.
fn group_config(map: &ClusterMap, group: GroupId) -> Result<shard_pb::GroupConfig, Status> {
    let g = map
        .groups
        .get(&group)
        .ok_or_else(|| Status::not_found(format!("group {group} does not exist")))?;
    Ok(shard_pb::GroupConfig {
        group_id: g.id,
        version: g.version,
        epoch: g.epoch,
        members: g
            .members
            .iter()
            .map(|m| shard_pb::MemberConfig {
                addr: m.addr.clone(),
                pid: m.pid,
                in_sync: m.in_sync,
            })
            .collect(),
        map_epoch: map.map_epoch,
        slots: map.slots_of(group).to_bytes(),
        // Filled by GetGroup from the catalog's feed cursors.
        feed_keep_from: None,
    })
}

/// The services a coordinator serves, with message limits set.
pub struct Services {
    pub txn: pb::txn_server::TxnServer<TxnApi>,
    pub auth: pb::auth_server::AuthServer<AuthApi>,
    pub admin: pb::admin_server::AdminServer<AdminApi>,
    pub membership: shard_pb::membership_server::MembershipServer<MembershipApi>,
    pub changefeed: pb::changefeed_server::ChangefeedServer<ChangefeedApi>,
}

/// The services with message limits set, behind `gate`.
pub fn services(txns: Arc<TxnManager>, reshard_wake: Arc<Notify>, gate: Arc<Gate>) -> Services {
    Services {
        auth: pb::auth_server::AuthServer::new(AuthApi::new(txns.clone(), gate.clone())),
        txn: pb::txn_server::TxnServer::new(TxnApi::with_gate(txns.clone(), gate.clone()))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        admin: pb::admin_server::AdminServer::new(AdminApi::new(txns.clone(), reshard_wake)),
        membership: shard_pb::membership_server::MembershipServer::new(MembershipApi::new(
            txns.clone(),
            gate.clone(),
        )),
        changefeed: pb::changefeed_server::ChangefeedServer::new(ChangefeedApi::new(txns, gate))
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
    }
}

/// HTTP/2 keep-alive towards clients and shards.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most concurrent requests per client connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Serves the `Txn`, `Admin`, `Membership` and `Changefeed` services, and gRPC server
/// reflection (v1 and v1alpha) describing them, on already accepted
/// connections (real sockets, or the simulator's) until `shutdown`
/// resolves. `reshard_wake` wakes the reshard driver (if one runs) when a
/// job is created or controlled. `gate` decides who may call what (the
/// Admin service: admins only); its caller keeps it in step with the
/// catalog ([`crate::auth_service::gate_refresher`]).
pub async fn serve_incoming<IO>(
    txns: Arc<TxnManager>,
    reshard_wake: Arc<Notify>,
    gate: Arc<Gate>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let admin_only = trellis_txn::gate::admin_only(gate.clone());
    let services = services(txns, reshard_wake, gate);
    // Reflection lets tools (`grpcurl`, Postman) call Trellis without its
    // `.proto` files; it lists only the services served here.
    let (reflection_v1, reflection_v1alpha) = trellis_proto::reflection::services(&[
        pb::txn_server::SERVICE_NAME,
        pb::auth_server::SERVICE_NAME,
        pb::admin_server::SERVICE_NAME,
        shard_pb::membership_server::SERVICE_NAME,
        pb::changefeed_server::SERVICE_NAME,
    ]);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .add_service(services.txn)
        .add_service(services.auth)
        // With auth on, the Admin service is for admins.
        .add_service(tonic::service::interceptor::InterceptedService::new(
            services.admin,
            admin_only,
        ))
        // Registration and fail-stop reports come from shards: node
        // certificates only (when TLS is on).
        .add_service(tonic::service::interceptor::InterceptedService::new(
            services.membership,
            trellis_net::tls::node_only,
        ))
        .add_service(services.changefeed)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
