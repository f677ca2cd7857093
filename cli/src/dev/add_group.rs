//! `trellis dev add-group`: one more shard group for the `trellis dev`
//! running on a data directory. It finds that dev by its lock
//! (`dev.lock`, held while dev runs) and its ready file (`dev.ready`:
//! the coordinator's address and `--replicas`), registers the group through
//! the coordinator's `Admin.AddGroup`, and waits until the group's primary
//! serves. It starts no process itself: the running dev sees the new group
//! in the catalog and starts its replicas (see the parent module).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_proto::v1 as pb;

use super::{DEV_GROUPS_MAX, READY_FILE, parse_ready, running_dev};

/// How long the whole command may take: dev finishing its own start,
/// noticing the group (two polls), its replicas starting and registering.
const ADD_GROUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the ready file and the coordinator's status are looked at
/// while waiting.
const ADD_GROUP_POLL: Duration = Duration::from_millis(200);
// dev's own limits fit in the wait: its poll, and a child's start.
const _: () = assert!(super::GROUP_POLL_INTERVAL.as_millis() * 4 < ADD_GROUP_TIMEOUT.as_millis());
const _: () = assert!(super::CHILD_READY_TIMEOUT.as_millis() < ADD_GROUP_TIMEOUT.as_millis());

#[derive(clap::Args)]
#[command(after_help = "\
Run it in another terminal while `trellis dev` runs on the same --data-dir.
It registers the group in the catalog (as `trellis admin add-group` does);
dev notices within about 2 s and starts the group's replicas as it starts
the others: --replicas of them, data in DIR/group-G-replica-R, metrics
ports laid out as for the first groups, supervised, logs labelled [gGrR],
listed in DIR/prometheus-targets.json. The new group owns no slots (slots
do not move between groups yet). A later `trellis dev` on DIR starts it
again; `trellis admin remove-group --group G` makes dev stop it.

Waits (at most 90 s) until the group's primary serves and its backups
have joined it, then prints its members with their roles. Fails (exit code 1) if no dev runs on DIR, if the group exists,
or if its primary does not serve in time (dev's log says why).

Examples:
  trellis dev add-group
  trellis dev add-group --data-dir /tmp/trellis
  trellis dev add-group --group 7")]
pub struct Args {
    /// The data directory of the running `trellis dev`.
    #[arg(long, env = super::certs::DATA_DIR_ENV, default_value = super::certs::DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// The id of the new group (default: one more than the highest the
    /// cluster has).
    #[arg(long, value_parser = crate::flags::u64_in(1, u64::from(DEV_GROUPS_MAX)))]
    group: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir.canonicalize().map_err(|_| {
        anyhow::anyhow!(
            "no trellis dev is running on {} (the directory does not exist; start one: \
             trellis dev --data-dir {})",
            args.data_dir.display(),
            args.data_dir.display()
        )
    })?;
    let pid = running_dev(&dir)?;
    let deadline = Instant::now() + ADD_GROUP_TIMEOUT;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // dev writes the file once its cluster is up; it may be starting.
        let ready_path = dir.join(READY_FILE);
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_path) {
                break parse_ready(&text);
            }
            if Instant::now() > deadline {
                bail!(
                    "trellis dev (pid {pid}) on {} did not say it is up ({} missing) within \
                     {ADD_GROUP_TIMEOUT:?}",
                    dir.display(),
                    ready_path.display()
                );
            }
            tokio::time::sleep(ADD_GROUP_POLL).await;
        };
        let field = |key: &str| {
            ready
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .with_context(|| format!("{} has no {key}=", ready_path.display()))
        };
        let addr = field("grpc")?;
        // The dev's own certificates, unless --tls-* flags were given
        // (main installed them then).
        let seen = super::certs::Seen {
            dir: dir.clone(),
            running: true,
            ready: Some(ready.clone()),
        };
        let flags = trellis_net::tls::current().is_some();
        if let super::certs::Choice::Dev(files) = super::certs::decide(flags, Some(&addr), &seen) {
            crate::tls::install(files)?;
        }
        let replicas: usize = field("replicas")?
            .parse()
            .with_context(|| format!("reading replicas= in {}", ready_path.display()))?;

        // dev restarts a coordinator that exited: give it the wait.
        let status = loop {
            match crate::status::fetch(&addr).await {
                Ok(status) => break status,
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => tokio::time::sleep(ADD_GROUP_POLL).await,
            }
        };
        let group = match args.group {
            Some(group) => group,
            None => status.groups.iter().map(|g| g.group_id).max().unwrap_or(0) + 1,
        };
        if group > u64::from(DEV_GROUPS_MAX) {
            bail!("dev runs groups 1 to {DEV_GROUPS_MAX}; group {group} would be beyond them");
        }
        let mut client = crate::admin::admin_client(&addr).await?;
        let added = client
            .add_group(pb::AddGroupRequest { group_id: group })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
            .with_context(|| format!("adding group {group}"))?
            .into_inner();
        eprintln!(
            "added group {group} to the catalog ({} groups now); waiting for trellis dev \
             (pid {pid}) to start its {replicas} replica(s)",
            added.groups
        );

        // Served: its primary serves. Then give the backups the rest of
        // the wait to join its configuration (learners until then), so
        // that the group is printed whole.
        let mut served: Option<pb::GroupStatus> = None;
        loop {
            if let Ok(status) = crate::status::fetch(&addr).await
                && let Some(g) = status.groups.into_iter().find(|g| g.group_id == group)
                && g.members.iter().any(|m| m.role == "primary" && m.alive)
            {
                let in_config = g
                    .members
                    .iter()
                    .filter(|m| m.alive && (m.role == "primary" || m.role == "backup"))
                    .count();
                let all = in_config >= replicas;
                served = Some(g);
                if all {
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(ADD_GROUP_POLL).await;
        }
        let Some(g) = served else {
            bail!(
                "group {group} is in the catalog, but its primary did not serve within \
                 {ADD_GROUP_TIMEOUT:?}; the log of trellis dev (pid {pid}), lines labelled \
                 [g{group}r1], says why"
            );
        };
        println!(
            "group {group} is served: {} of {replicas} replica(s) registered, {} slots",
            g.members.len(),
            g.slots_owned
        );
        for m in &g.members {
            println!(
                "  {:<8} pid {:<7} grpc {}  metrics http://{}/metrics",
                m.role, m.pid, m.address, m.metrics_addr
            );
        }
        Ok(())
    })
}
