//! `trellis admin`: operator commands on a running cluster: hand a group's
//! primary over (`transfer-primary`), add an empty shard group
//! (`add-group`) and forget one that owns no slots (`remove-group`).
//! Moving slots between groups (rebalance, move-slots, drain-group) is not
//! built yet.

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
    /// register and show in `trellis status` with 0 slots. Slots do not
    /// move to it yet (rebalance is not built).
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
it first; drain-group is not built yet).")]
    RemoveGroup {
        /// Coordinator address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
        addr: String,
        /// The group to forget.
        #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(GROUPS_MAX)))]
        group: u64,
    },
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
    }
}

/// An Admin client of the coordinator at `addr`, every call bounded by
/// [`GROUP_CHANGE_TIMEOUT`].
pub(crate) async fn admin_client(
    addr: &str,
) -> anyhow::Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(GROUP_CHANGE_TIMEOUT)
        .timeout(GROUP_CHANGE_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator at {addr}"))?;
    Ok(pb::admin_client::AdminClient::new(channel))
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
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", primary.address))?
        .connect_timeout(TRANSFER_TIMEOUT)
        .timeout(TRANSFER_TIMEOUT)
        .connect()
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
