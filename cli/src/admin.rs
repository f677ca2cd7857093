//! `trellis admin`: operator commands on a running cluster: hand a group's
//! primary over (`transfer-primary`), add an empty shard group
//! (`add-group`), forget one that owns no slots (`remove-group`), and move
//! slots between groups (`rebalance`, `move-slots`, `drain-group`, watched
//! and controlled with `reshard list|pause|resume|cancel`), and forget a
//! registered change feed (`forget-feed`), and turn auth on or off
//! (`auth enable|disable|status`, in `user`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_coordinator::catalog::GROUPS_MAX;
use trellis_proto::shard::v1 as shard_pb;
use trellis_proto::v1 as pb;

/// Deadline of the hand-over call (the primary waits up to 5 s for its
/// target to catch up).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the new primary may take to start serving.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the coordinator's status is asked while waiting for the new
/// primary to serve; also the resolution of the time it reports.
const SERVING_POLL: Duration = Duration::from_millis(20);
/// Deadline of an `AddGroup` or `RemoveGroup` call, connecting included:
/// one conditional write to the catalog, a few retries if it races.
const GROUP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait` asks for the job's progress.
const WAIT_POLL: Duration = Duration::from_secs(1);
/// Failed progress calls in a row after which `--wait` gives up (the job
/// itself goes on).
const WAIT_ERRORS_MAX: u32 = 30;

/// What a resharding command's help says about jobs, batches and control.
const RESHARD_HELP: &str = "\
How slots move: the command creates a job and returns; a coordinator runs it
in the background. The job moves slots in batches of at most 64 slots
between one pair of groups. For each batch the target copies the slots' data
while the source keeps serving, catches up on what changed, then the source
freezes the batch (writes and reads on those slots pause), the last changes
are copied, and the slot map is switched to the target. The pause per batch
is bounded: if the source's prepared transactions do not finish within
200 ms, it thaws, catches up and tries again (after 5 tries the job pauses
and says why). Clients retry the pause by themselves.

Watch:   trellis admin reshard list        (or trellis status)
Pause:   trellis admin reshard pause --job N     (at the next safe point)
Resume:  trellis admin reshard resume --job N
Cancel:  trellis admin reshard cancel --job N    (batches already handed
         over stay moved; the batch in progress is abandoned)
With --wait the command prints progress about once a second until the job
is done (exit 0), or is paused or cancelled (exit 1, with the reason).";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Move a group's primary to one of its in-sync backups, with no lost
    /// write: the primary stops serving, waits until the backup has every
    /// record, and hands over at a new epoch. Clients see a short pause.
    #[command(after_help = "\
Examples:
  trellis admin transfer-primary --group 2
  trellis admin transfer-primary --group 2 --to 127.0.0.1:50071 --addr 127.0.0.1:50051")]
    TransferPrimary {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The group whose primary moves.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(trellis_coordinator::catalog::GROUPS_MAX)))]
        group: u64,
        /// The backup to make primary (default: the in-sync backup that is
        /// least behind), HOST:PORT as `trellis status` lists it.
        #[arg(long, value_parser = crate::flags::addr)]
        to: Option<String>,
    },
    /// Register a new, empty shard group (no members, no slots).
    ///
    /// Then start its replicas with `trellis shard --group N`; they
    /// register and show in `trellis status` with 0 slots; `trellis admin
    /// rebalance` then moves its share of slots to it.
    #[command(after_help = "\
Examples:
  trellis admin add-group --group 4
  trellis admin add-group --group 4 --addr 127.0.0.1:50051
  trellis shard --group 4 --coordinator 127.0.0.1:50051 --data-dir ./data/group-4

Fails (exit code 1) if the group exists already.")]
    AddGroup {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The id of the new group.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        group: u64,
    },
    /// Forget a shard group that owns no slots, and its members.
    ///
    /// Only a group that owns no slots can be removed (every slot must keep a group); its replicas,
    /// if still running, can then be stopped.
    #[command(after_help = "\
Examples:
  trellis admin remove-group --group 4
  trellis admin remove-group --group 4 --addr 127.0.0.1:50051

Fails (exit code 1) if the group does not exist or still owns slots (drain
it first: `trellis admin drain-group --group N --wait`).")]
    RemoveGroup {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The group to forget.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        group: u64,
    },
    /// Forget a registered change feed (`trellis cdc --feed NAME`): its
    /// saved cursor is deleted, and the groups no longer keep their logs
    /// for it. A `trellis cdc --feed NAME` started later begins anew.
    ForgetFeed {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The feed's name, as `trellis status` lists it.
        #[arg(long)]
        feed: String,
    },
    /// Move slots so that every group holds an even share (the ring's
    /// assignment over the groups the catalog holds).
    ///
    /// After `add-group` and starting the new group's replicas, this moves
    /// about 1/N of the slots to the new N-th group, all of them from the
    /// others. Prints how even the result is.
    #[command(after_help = RESHARD_HELP)]
    Rebalance {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// Print progress until the job ends.
        #[arg(long)]
        wait: bool,
    },
    /// Move chosen slots from one group to another.
    #[command(after_help = RESHARD_HELP)]
    MoveSlots {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The group that owns the slots now.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        from: u64,
        /// The group that takes them.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        to: u64,
        /// Slots and inclusive ranges, e.g. `0-99,200` (slots run 0 to
        /// 4095; every one must be owned by --from).
        #[arg(long)]
        slots: String,
        /// Print progress until the job ends.
        #[arg(long)]
        wait: bool,
    },
    /// Move every slot off a group, each where the ring over the other
    /// groups puts it; then `remove-group` can forget it.
    #[command(after_help = RESHARD_HELP)]
    DrainGroup {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The group to empty.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        group: u64,
        /// Print progress until the job ends.
        #[arg(long)]
        wait: bool,
    },
    /// Watch and control resharding jobs: list, pause, resume, cancel.
    #[command(subcommand)]
    Reshard(ReshardCommand),
    /// Turn authentication and authorization on or off, or see whether
    /// they are on (users and grants: `trellis user`).
    #[command(subcommand)]
    Auth(crate::user::AuthCommand),
}

#[derive(clap::Subcommand)]
enum ReshardCommand {
    /// Every job, newest first: state, phase, slots and batches done,
    /// keys and bytes copied, rate, ETA, the longest write pause.
    #[command(after_help = RESHARD_HELP)]
    List {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Pause a job at its next safe point (a frozen source is thawed
    /// first; a batch whose map switch may be stored finishes).
    #[command(after_help = RESHARD_HELP)]
    Pause(JobArgs),
    /// Resume a paused job.
    #[command(after_help = RESHARD_HELP)]
    Resume(JobArgs),
    /// Cancel a job: batches already handed over stay moved, the batch in
    /// progress is abandoned, later ones never start.
    #[command(after_help = RESHARD_HELP)]
    Cancel(JobArgs),
}

#[derive(clap::Args)]
struct JobArgs {
    /// Coordinator address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
    addr: String,
    /// The job (default: the only unfinished one).
    #[arg(long)]
    job: Option<u64>,
}

impl Args {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        match &self.command {
            AdminCommand::TransferPrimary { addr, .. }
            | AdminCommand::AddGroup { addr, .. }
            | AdminCommand::RemoveGroup { addr, .. }
            | AdminCommand::ForgetFeed { addr, .. }
            | AdminCommand::Rebalance { addr, .. }
            | AdminCommand::MoveSlots { addr, .. }
            | AdminCommand::DrainGroup { addr, .. }
            | AdminCommand::Reshard(ReshardCommand::List { addr, .. })
            | AdminCommand::Reshard(
                ReshardCommand::Pause(JobArgs { addr, .. })
                | ReshardCommand::Resume(JobArgs { addr, .. })
                | ReshardCommand::Cancel(JobArgs { addr, .. }),
            ) => addr,
            AdminCommand::Auth(command) => command.addr(),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        AdminCommand::TransferPrimary { addr, group, to } => {
            runtime.block_on(transfer_primary(&addr, group, to))
        }
        AdminCommand::AddGroup { addr, group } => runtime.block_on(add_group(&addr, group)),
        AdminCommand::RemoveGroup { addr, group } => runtime.block_on(remove_group(&addr, group)),
        AdminCommand::ForgetFeed { addr, feed } => runtime.block_on(async {
            let client = crate::login::coordinator_client(&addr)
                .await
                .with_context(|| format!("connecting to the coordinator at {addr}"))?;
            let existed = client
                .delete_cursor(&feed)
                .await
                .with_context(|| format!("forgetting feed {feed:?}"))?;
            if !existed {
                bail!("no feed named {feed:?}: `trellis status` lists the registered feeds");
            }
            println!("feed {feed:?} forgotten: its cursor is deleted and the logs are no longer kept for it");
            Ok(())
        }),
        AdminCommand::Rebalance { addr, wait } => runtime.block_on(async {
            let mut client = admin_client(&addr).await?;
            let created = client
                .rebalance(pb::RebalanceRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .context("planning a rebalance")?
                .into_inner();
            created_then_wait(&addr, &created, wait).await
        }),
        AdminCommand::MoveSlots {
            addr,
            from,
            to,
            slots,
            wait,
        } => runtime.block_on(async {
            let mut client = admin_client(&addr).await?;
            let created = client
                .move_slots(pb::MoveSlotsRequest {
                    from_group: from,
                    to_group: to,
                    slots,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .with_context(|| format!("moving slots from group {from} to group {to}"))?
                .into_inner();
            created_then_wait(&addr, &created, wait).await
        }),
        AdminCommand::DrainGroup { addr, group, wait } => runtime.block_on(async {
            let mut client = admin_client(&addr).await?;
            let created = client
                .drain_group(pb::DrainGroupRequest { group_id: group })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .with_context(|| format!("draining group {group}"))?
                .into_inner();
            created_then_wait(&addr, &created, wait).await
        }),
        AdminCommand::Reshard(command) => runtime.block_on(reshard(command)),
        AdminCommand::Auth(command) => runtime.block_on(crate::user::admin_auth(command)),
    }
}

/// Says what a new job will do, then follows it if asked.
async fn created_then_wait(
    addr: &str,
    created: &pb::ReshardJobCreated,
    wait: bool,
) -> anyhow::Result<()> {
    if created.job_id == 0 {
        println!(
            "nothing to move: the slots are already where the plan puts them \
             ({} to {} slots per group)",
            created.slots_min_after, created.slots_max_after
        );
        return Ok(());
    }
    println!(
        "job {}: moving {} slots in {} batches; afterwards groups hold {} to {} slots.\n\
         Watch it with `trellis admin reshard list --addr {addr}`; \
         pause or cancel with `trellis admin reshard pause|cancel --job {} --addr {addr}`.",
        created.job_id,
        created.slots,
        created.batches,
        created.slots_min_after,
        created.slots_max_after,
        created.job_id
    );
    if wait {
        wait_for(addr, created.job_id).await?;
    }
    Ok(())
}

/// Prints the job's progress about once a second until it ends; an error
/// if it paused or was cancelled.
async fn wait_for(addr: &str, id: u64) -> anyhow::Result<()> {
    let mut errors = 0;
    loop {
        let jobs = match list_jobs(addr).await {
            Ok(jobs) => {
                errors = 0;
                jobs
            }
            Err(err) => {
                errors += 1;
                if errors >= WAIT_ERRORS_MAX {
                    return Err(err.context(format!(
                        "giving up watching job {id} (it goes on; `trellis admin reshard list` shows it)"
                    )));
                }
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            }
        };
        let job = jobs
            .iter()
            .find(|j| j.id == id)
            .with_context(|| format!("job {id} is not in the catalog any more"))?;
        println!("{}", crate::status::job_line(job));
        match job.state.as_str() {
            "done" => return Ok(()),
            "cancelled" => bail!("job {id} was cancelled"),
            "paused" => bail!(
                "job {id} paused{}; resume it with `trellis admin reshard resume --job {id} --addr {addr}`",
                if job.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", job.reason)
                }
            ),
            _ => {}
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

async fn list_jobs(addr: &str) -> anyhow::Result<Vec<pb::ReshardJob>> {
    let mut client = admin_client(addr).await?;
    Ok(client
        .list_reshard_jobs(pb::ListReshardJobsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .context("listing the reshard jobs")?
        .into_inner()
        .jobs)
}

async fn reshard(command: ReshardCommand) -> anyhow::Result<()> {
    use pb::control_reshard_job_request::Action;
    let (args, action, verb) = match command {
        ReshardCommand::List { addr, format } => {
            let jobs = list_jobs(&addr).await?;
            if format == "json" {
                println!("{}", crate::status::jobs_json(&jobs));
            } else {
                print!("{}", crate::status::jobs_table(&jobs));
            }
            return Ok(());
        }
        ReshardCommand::Pause(args) => (args, Action::Pause, "pause"),
        ReshardCommand::Resume(args) => (args, Action::Resume, "resume"),
        ReshardCommand::Cancel(args) => (args, Action::Cancel, "cancel"),
    };
    let id = match args.job {
        Some(id) => id,
        None => {
            let unfinished: Vec<u64> = list_jobs(&args.addr)
                .await?
                .iter()
                .filter(|j| j.state == "running" || j.state == "paused")
                .map(|j| j.id)
                .collect();
            match unfinished.as_slice() {
                [id] => *id,
                [] => bail!(
                    "no job is running or paused; `trellis admin reshard list` shows them all"
                ),
                ids => bail!(
                    "{} jobs are unfinished ({}); say which with --job N",
                    ids.len(),
                    ids.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let mut client = admin_client(&args.addr).await?;
    let job = client
        .control_reshard_job(pb::ControlReshardJobRequest {
            job_id: id,
            action: action as i32,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("asking job {id} to {verb}"))?
        .into_inner();
    println!("{}", crate::status::job_line(&job));
    Ok(())
}

/// An Admin client of the coordinator at `addr`, every call bounded by
/// [`GROUP_CHANGE_TIMEOUT`].
pub(crate) async fn admin_client(
    addr: &str,
) -> anyhow::Result<pb::admin_client::AdminClient<trellis_client::auth::Authed>> {
    let channel = trellis_net::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(GROUP_CHANGE_TIMEOUT)
            .timeout(GROUP_CHANGE_TIMEOUT),
    )
    .await
    .with_context(|| format!("connecting to the coordinator at {addr}"))?;
    trellis_client::auth::login(&channel).await?;
    Ok(pb::admin_client::AdminClient::new(
        trellis_client::auth::authed(channel),
    ))
}

async fn add_group(addr: &str, group: u64) -> anyhow::Result<()> {
    let mut client = admin_client(addr).await?;
    let response = client
        .add_group(pb::AddGroupRequest { group_id: group })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("adding group {group}"))?
        .into_inner();
    println!(
        "added group {group}: no slots, no members ({} groups now, map epoch {}).\n\
         Start its replicas: trellis shard --group {group} --coordinator {addr} --data-dir DIR\n\
         (under `trellis dev`, the running dev starts them itself)",
        response.groups, response.map_epoch
    );
    Ok(())
}

async fn remove_group(addr: &str, group: u64) -> anyhow::Result<()> {
    let mut client = admin_client(addr).await?;
    let response = client
        .remove_group(pb::RemoveGroupRequest { group_id: group })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("removing group {group}"))?
        .into_inner();
    println!(
        "removed group {group} ({} groups now, map epoch {}); its replicas, if any still run, \
         can be stopped",
        response.groups, response.map_epoch
    );
    Ok(())
}

async fn transfer_primary(addr: &str, group: u64, to: Option<String>) -> anyhow::Result<()> {
    let status = crate::status::fetch(addr).await?;
    let Some(g) = status.groups.iter().find(|g| g.group_id == group) else {
        bail!(
            "group {group} does not exist; groups: {}",
            status
                .groups
                .iter()
                .map(|g| g.group_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let primary = g
        .members
        .iter()
        .find(|m| m.role == "primary")
        .with_context(|| format!("group {group} has no serving primary right now"))?;
    let to = match to {
        Some(to) => to,
        None => g
            .members
            .iter()
            .filter(|m| m.role == "backup" && m.in_sync)
            .min_by_key(|m| m.lag_records)
            .map(|m| m.address.clone())
            .with_context(|| format!("group {group} has no in-sync backup to hand over to"))?,
    };
    if to == primary.address {
        bail!("{to} is already the primary of group {group}");
    }
    let started = Instant::now();
    let channel = trellis_net::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{}", primary.address))?
            .connect_timeout(TRANSFER_TIMEOUT)
            .timeout(TRANSFER_TIMEOUT),
    )
    .await
    .with_context(|| format!("connecting to the primary {}", primary.address))?;
    let mut client = shard_pb::shard_client::ShardClient::new(channel);
    let epoch = client
        .transfer_primary(shard_pb::TransferPrimaryRequest { to: to.clone() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| {
            format!(
                "handing group {group} over from {} to {to}",
                primary.address
            )
        })?
        .into_inner()
        .epoch;
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        if let Ok(status) = crate::status::fetch(addr).await
            && let Some(g) = status.groups.iter().find(|g| g.group_id == group)
            && g.members
                .iter()
                .any(|m| m.address == to && m.role == "primary" && m.lease_ms > 0)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the catalog names {to} primary at epoch {epoch}, but it did not start serving within {SERVING_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(SERVING_POLL).await;
    }
    println!(
        "group {group}: primary moved from {} to {to} at epoch {epoch} ({} ms until it served)",
        primary.address,
        started.elapsed().as_millis()
    );
    Ok(())
}
