//! `trellis status`: the cluster as the coordinator sees it.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use trellis_proto::v1 as pb;

/// Deadline of the status call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// What `trellis status --help` adds below the flags. Its numbers are the
/// coordinator's bounds; `help_states_the_bounds` keeps them in step.
const HELP: &str = "\
Shows the cluster's id (16 hex digits, drawn once when its catalog was
created: every change-feed cursor starts with it), the slot-map epoch, the
catalog backend, every shard group with its members, and the coordinators
registered in the catalog. The coordinator
you ask calls every member itself (2 s deadline each).

Member columns:
  address   the member's gRPC address (its identity in the group)
  pid       its process id (for a member that is down: the last one known)
  role      primary, backup, learner (catching up, not yet in the
            configuration), idle (waiting for its configuration), or:
              unreachable  this coordinator cannot reach it, but its group
                           heard from it within 2 s (a network problem)
              down         its address refuses connections (the process
                           is gone), or nobody heard from it for 2 s: not
                           the coordinator, not its primary (for a
                           backup), not its backups (for a primary).
            A member that did not answer shows `-` for what only it knows
            (epoch, last lsn, keys, in doubt, up); one that is down also
            for lag and lease.
            `(not in sync)` marks a backup outside the configuration.
  epoch     the primary epoch it is at
  lease     primary only: time its lease has left; LAPSED when it ran out
            (it serves nothing until a backup acknowledges); `none` when no
            in-sync backup exists, so no lease is needed (nobody could be
            promoted over it)
  last lsn  the last log record it has
  lag       backups: records behind the primary / ms since the primary
            last heard from it
  reads/s   read requests it served per second over the last second, and
            how many were STALE (`120 (80 stale)`): backups serve STALE
            reads only
  heard     when this coordinator or the group last heard from it (`now`:
            it answered this call; `never`: nobody here ever did)
  up        how long its process has had its data open (a restarted member
            shows a small one and a new pid)
  metrics   where it serves Prometheus metrics (http://ADDR/metrics)
  catch-up  how and how far a backup is being brought up to date:
            `snapshot 40% (4.0 of 10.0 MiB)`, or `log 14% (2100 of 14140
            records)` for a backlog read from the primary's log on disk
            (`feed` for one from its memory)

Resharding jobs that are running or paused are listed below the groups:
slots and batches done, phase, keys and bytes copied, rate, ETA, the
longest write pause so far (`trellis admin reshard list` shows every job).

Coordinators are listed with `alive`, or `DEAD` when their last heartbeat
in the catalog is older than 6 s (they heartbeat every 2 s). A coordinator
that starts on an address replaces the rows of earlier runs there, and
rows silent for 10 minutes are deleted.

--format json prints the same as one object: a member has `alive`
(false: down), `last_heard_ms` (null: never), `metrics_addr`, `uptime_s`;
`lease_ms` is null unless the member is a live primary with a lease,
`lag_records`/`lag_ms` are null for a member that is down, and its own
numbers (epoch, last_lsn, keys, in_doubt, map_epoch, uptime_s,
reads_per_second, stale_reads_per_second) are null when it did not
answer.

Examples:
  trellis status
  trellis status --addr 10.0.0.5:50051 --format json";

#[derive(clap::Args)]
#[command(after_help = HELP)]
pub struct Args {
    /// Coordinator address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

impl Args {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(fetch(&args.addr))?;
    let text = match args.format.as_str() {
        "json" => json(&status),
        _ => table(&status),
    };
    print!("{text}");
    Ok(())
}

/// Asks the coordinator at `addr` for the cluster status.
pub async fn fetch(addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let channel = trellis_net::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(STATUS_TIMEOUT)
            .timeout(STATUS_TIMEOUT),
    )
    .await
    .with_context(|| {
        format!(
            "connecting to the coordinator at {addr} (is `trellis dev` running? {})",
            trellis_net::tls::hint()
        )
    })?;
    trellis_client::auth::login(&channel).await?;
    let mut client = pb::admin_client::AdminClient::new(trellis_client::auth::authed(channel));
    Ok(client
        .status(pb::StatusRequest {})
        .await
        .with_context(|| {
            format!(
                "asking {addr} for the cluster status ({})",
                trellis_net::tls::hint()
            )
        })?
        .into_inner())
}

/// A primary's lease for people: `None` when it has none to show (not a
/// live primary, or no in-sync backup so it needs none: `u64::MAX` on the
/// wire).
fn lease_ms(m: &pb::MemberStatus) -> Option<u64> {
    (m.alive && m.role == "primary" && m.lease_ms != u64::MAX).then_some(m.lease_ms)
}

/// `12 s`, `3 min`, `2 h`, `4 d`: an age or uptime at a glance.
fn duration_s(s: u64) -> String {
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// When a member was last heard from: `now`, `300 ms ago`, `1.5 s ago`,
/// `never`.
fn heard(m: &pb::MemberStatus) -> String {
    match m.last_heard_ms {
        Some(0) => "now".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms ago"),
        Some(ms) if ms < 10_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{} ago", duration_s(ms / 1000)),
        None => "never".into(),
    }
}

/// Whether the member answered this status call itself: only then are its
/// own numbers (epoch, LSN, keys, in doubt, uptime) known.
fn answered(m: &pb::MemberStatus) -> bool {
    m.alive && m.role != "unreachable"
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// A member's reads per second (and how many of them STALE), `-` when it
/// did not answer.
fn reads(m: &pb::MemberStatus) -> String {
    if !answered(m) {
        return "-".into();
    }
    if m.stale_reads_per_second > 0.0 {
        format!(
            "{:.0} ({:.0} stale)",
            m.reads_per_second, m.stale_reads_per_second
        )
    } else {
        format!("{:.0}", m.reads_per_second)
    }
}

/// The status as an aligned table.
pub fn table(status: &pb::StatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}   map epoch {}   catalog {}",
        cluster_text(status).unwrap_or_else(|| "unknown".into()),
        status.map_epoch,
        status.catalog
    );
    let header = [
        "group", "slots", "address", "pid", "role", "epoch", "lease", "last lsn", "lag", "reads/s",
        "keys", "in doubt", "heard", "up", "metrics", "catch-up",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for g in &status.groups {
        for m in &g.members {
            let unregistered = m.role == "unregistered";
            let down = !m.alive && !unregistered;
            // Its own numbers, `-` when it did not answer.
            let own = |n: u64| {
                if answered(m) || unregistered {
                    n.to_string()
                } else {
                    "-".into()
                }
            };
            rows.push(vec![
                g.group_id.to_string(),
                g.slots_owned.to_string(),
                m.address.clone(),
                m.pid.to_string(),
                if m.in_sync || down || m.role == "primary" || unregistered {
                    m.role.clone()
                } else {
                    format!("{} (not in sync)", m.role)
                },
                own(m.epoch),
                match (m.role.as_str(), lease_ms(m)) {
                    (_, Some(0)) => "LAPSED".into(),
                    (_, Some(ms)) => format!("{ms} ms"),
                    ("primary", None) => "none".into(),
                    _ if down => "-".into(),
                    _ => String::new(),
                },
                own(m.last_lsn),
                if down {
                    "-".into()
                } else if m.role == "primary" || unregistered {
                    String::new()
                } else {
                    format!("{} rec / {} ms", m.lag_records, m.lag_ms)
                },
                reads(m),
                own(m.keys),
                own(m.in_doubt),
                if unregistered {
                    String::new()
                } else {
                    heard(m)
                },
                if answered(m) {
                    duration_s(m.uptime_s)
                } else {
                    "-".into()
                },
                if unregistered {
                    String::new()
                } else {
                    or_dash(&m.metrics_addr)
                },
                catch_up(m),
            ]);
        }
    }
    write_aligned(&mut out, "", &header, &rows);
    if !status.reshard_jobs.is_empty() {
        let _ = writeln!(out, "reshard jobs:");
        let _ = write!(out, "{}", indent(&jobs_table(&status.reshard_jobs), "  "));
    }
    if !status.feeds.is_empty() {
        let _ = writeln!(out, "feeds:");
        let header = ["feed", "saved", "lag (records by group)", "cursor"];
        let rows: Vec<Vec<String>> = status
            .feeds
            .iter()
            .map(|f| {
                vec![
                    f.feed.clone(),
                    format!("{}s ago", f.saved_age_s),
                    feed_lag_text(f),
                    feed_cursor_text(f),
                ]
            })
            .collect();
        write_aligned(&mut out, "  ", &header, &rows);
    }
    if !status.coordinators.is_empty() {
        let _ = writeln!(out, "coordinators:");
        let header = ["id", "address", "state", "heartbeat", "up", "metrics"];
        let rows: Vec<Vec<String>> = status
            .coordinators
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.address.clone(),
                    if c.alive { "alive" } else { "DEAD" }.into(),
                    format!("{} ago", duration_s(c.heartbeat_age_s)),
                    if c.alive {
                        duration_s(c.uptime_s)
                    } else {
                        "-".into()
                    },
                    or_dash(&c.metrics_addr),
                ]
            })
            .collect();
        write_aligned(&mut out, "  ", &header, &rows);
    }
    out
}

/// Writes `header` and `rows` as left-aligned columns, each line prefixed
/// by `indent`.
fn write_aligned(out: &mut String, indent: &str, header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{indent}{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(
            out,
            "{indent}{}",
            line(row.iter().map(String::as_str).collect())
        );
    }
}

/// A backup's catch-up progress, e.g. `log 14% (2100 of 14140 records)`
/// or `snapshot 40% (4.0 of 10.0 MiB)`; empty when it streams live.
pub fn catch_up(m: &pb::MemberStatus) -> String {
    if m.catch_up.is_empty() {
        return String::new();
    }
    let percent = (m.catch_up_done * 100)
        .checked_div(m.catch_up_total)
        .unwrap_or(100);
    if m.catch_up == "snapshot" {
        const MIB: f64 = 1024.0 * 1024.0;
        format!(
            "snapshot {percent}% ({:.1} of {:.1} MiB)",
            m.catch_up_done as f64 / MIB,
            m.catch_up_total as f64 / MIB
        )
    } else {
        format!(
            "{} {percent}% ({} of {} records)",
            m.catch_up, m.catch_up_done, m.catch_up_total
        )
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `Some(n)` as a number, `None` as `null`.
fn number_or_null(n: Option<u64>) -> String {
    n.map_or_else(|| "null".into(), |n| n.to_string())
}

/// A rate with two decimals, `null` for a member that did not answer.
fn rate(answered: bool, per_second: f64) -> String {
    if answered {
        format!("{per_second:.2}")
    } else {
        "null".into()
    }
}

/// The status as one JSON object.
pub fn json(status: &pb::StatusResponse) -> String {
    let groups: Vec<String> = status
        .groups
        .iter()
        .map(|g| {
            let members: Vec<String> = g
                .members
                .iter()
                .map(|m| {
                    let lag = |n: u64| number_or_null(m.alive.then_some(n));
                    let own = |n: u64| number_or_null(answered(m).then_some(n));
                    format!(
                        "{{\"address\":{},\"pid\":{},\"role\":{},\"alive\":{},\"last_heard_ms\":{},\"uptime_s\":{},\"metrics_addr\":{},\"in_sync\":{},\"epoch\":{},\"lease_ms\":{},\"last_lsn\":{},\"lag_records\":{},\"lag_ms\":{},\"keys\":{},\"in_doubt\":{},\"map_epoch\":{},\"catch_up\":{},\"catch_up_done\":{},\"catch_up_total\":{},\"reads_per_second\":{},\"stale_reads_per_second\":{}}}",
                        quote(&m.address),
                        m.pid,
                        quote(&m.role),
                        m.alive,
                        number_or_null(m.last_heard_ms),
                        own(m.uptime_s),
                        quote(&m.metrics_addr),
                        m.in_sync,
                        own(m.epoch),
                        number_or_null(lease_ms(m)),
                        own(m.last_lsn),
                        lag(m.lag_records),
                        lag(m.lag_ms),
                        own(m.keys),
                        own(m.in_doubt),
                        own(m.map_epoch),
                        quote(&m.catch_up),
                        m.catch_up_done,
                        m.catch_up_total,
                        rate(answered(m), m.reads_per_second),
                        rate(answered(m), m.stale_reads_per_second)
                    )
                })
                .collect();
            format!(
                "{{\"group\":{},\"slots\":{},\"members\":[{}]}}",
                g.group_id,
                g.slots_owned,
                members.join(",")
            )
        })
        .collect();
    let coordinators: Vec<String> = status
        .coordinators
        .iter()
        .map(|c| {
            format!(
                "{{\"id\":{},\"address\":{},\"alive\":{},\"heartbeat_age_s\":{},\"uptime_s\":{},\"metrics_addr\":{}}}",
                quote(&c.id),
                quote(&c.address),
                c.alive,
                c.heartbeat_age_s,
                c.uptime_s,
                quote(&c.metrics_addr)
            )
        })
        .collect();
    let feeds: Vec<String> = status
        .feeds
        .iter()
        .map(|f| {
            let lag: Vec<String> = f
                .lag
                .iter()
                .map(|l| format!("\"{}\":{}", l.group, l.records))
                .collect();
            format!(
                "{{\"feed\":{},\"saved_age_s\":{},\"cursor\":{},\"lag_records\":{{{}}}}}",
                quote(&f.feed),
                f.saved_age_s,
                quote(&feed_cursor_text(f)),
                lag.join(",")
            )
        })
        .collect();
    format!(
        "{{\"cluster\":{},\"map_epoch\":{},\"catalog\":{},\"groups\":[{}],\"coordinators\":[{}],\"reshard_jobs\":{},\"feeds\":[{}]}}\n",
        cluster_text(status).map_or_else(|| "null".into(), |c| quote(&c)),
        status.map_epoch,
        quote(&status.catalog),
        groups.join(","),
        coordinators.join(","),
        jobs_json(&status.reshard_jobs),
        feeds.join(",")
    )
}

/// `1:0 2:15`: a feed's lag in records, by group.
fn feed_lag_text(f: &pb::FeedStatus) -> String {
    if f.lag.is_empty() {
        return "-".into();
    }
    f.lag
        .iter()
        .map(|l| format!("{}:{}", l.group, l.records))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cluster's id as 16 hex digits; `None` if the coordinator could not
/// read it (0).
fn cluster_text(status: &pb::StatusResponse) -> Option<String> {
    trellis_client::ClusterId::new(status.cluster).map(|c| c.to_string())
}

/// `1f0c3a9e5b7d2468/1:120,2:88`: a feed's cursor as `trellis cdc --from`
/// takes it.
fn feed_cursor_text(f: &pb::FeedStatus) -> String {
    f.cursor
        .as_ref()
        .map(|c| trellis_client::Cursor::from_pb(c).to_string())
        .unwrap_or_default()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// `12.3 MiB`, `512 B`: bytes at a glance.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The ETA for people: `-` when unknown.
fn eta_text(job: &pb::ReshardJob) -> String {
    if job.eta_s == 0 {
        "-".into()
    } else {
        duration_s(job.eta_s)
    }
}

/// Most characters of a batch's slot list in a table cell or a progress
/// line (a batch of scattered slots lists up to 64 of them); the JSON has
/// the whole list.
const BATCH_SLOTS_SHOWN: usize = 40;

/// `slots` (ranges like `1,7-8,16`) cut after a whole item so that it fits
/// [`BATCH_SLOTS_SHOWN`], with `,…` where it was cut.
fn slots_short(slots: &str) -> String {
    if slots.len() <= BATCH_SLOTS_SHOWN {
        return slots.to_string();
    }
    let cut = slots[..BATCH_SLOTS_SHOWN].rfind(',').unwrap_or(0);
    format!("{},…", &slots[..cut])
}

/// One line of a job's progress, as `--wait` prints it.
pub fn job_line(job: &pb::ReshardJob) -> String {
    let mut line = format!(
        "job {}: {}, {}/{} slots ({}/{} batches)",
        job.id, job.state, job.slots_done, job.slots_total, job.batches_done, job.batches_total
    );
    if !job.phase.is_empty() {
        let _ = write!(
            line,
            ", {} of slots {} (group {} -> {})",
            job.phase,
            slots_short(&job.batch_slots),
            job.from_group,
            job.to_group
        );
    }
    let _ = write!(
        line,
        ", {} copied, {}/s, ETA {}",
        bytes_text(job.bytes_copied),
        bytes_text(job.bytes_per_second),
        eta_text(job)
    );
    if !job.reason.is_empty() {
        let _ = write!(line, " ({})", job.reason);
    }
    line
}

/// Jobs as an aligned table.
pub fn jobs_table(jobs: &[pb::ReshardJob]) -> String {
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str("no reshard jobs\n");
        return out;
    }
    let header = [
        "job",
        "state",
        "phase",
        "batch",
        "slots",
        "batches",
        "keys",
        "copied",
        "rate",
        "eta",
        "pause max",
        "reason",
    ];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.state.clone(),
                or_dash(&j.phase),
                if j.batch_slots.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{} ({} -> {})",
                        slots_short(&j.batch_slots),
                        j.from_group,
                        j.to_group
                    )
                },
                format!("{}/{}", j.slots_done, j.slots_total),
                format!("{}/{}", j.batches_done, j.batches_total),
                j.keys_copied.to_string(),
                bytes_text(j.bytes_copied),
                format!("{}/s", bytes_text(j.bytes_per_second)),
                eta_text(j),
                format!("{} ms", j.pause_max_ms),
                j.reason.clone(),
            ]
        })
        .collect();
    write_aligned(&mut out, "", &header, &rows);
    out
}

/// Jobs as a JSON array.
pub fn jobs_json(jobs: &[pb::ReshardJob]) -> String {
    let items: Vec<String> = jobs
        .iter()
        .map(|j| {
            format!(
                "{{\"id\":{},\"state\":{},\"reason\":{},\"phase\":{},\"slots_done\":{},\"slots_total\":{},\"batches_done\":{},\"batches_total\":{},\"keys_copied\":{},\"bytes_copied\":{},\"from_group\":{},\"to_group\":{},\"batch_slots\":{},\"bytes_per_second\":{},\"eta_s\":{},\"pause_max_ms\":{}}}",
                j.id,
                quote(&j.state),
                quote(&j.reason),
                quote(&j.phase),
                j.slots_done,
                j.slots_total,
                j.batches_done,
                j.batches_total,
                j.keys_copied,
                j.bytes_copied,
                j.from_group,
                j.to_group,
                quote(&j.batch_slots),
                j.bytes_per_second,
                j.eta_s,
                j.pause_max_ms
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_slot_lists_are_cut_after_a_whole_item() {
        assert_eq!(slots_short("0-63"), "0-63");
        let long = (0..64)
            .map(|s| (s * 3).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let short = slots_short(&long);
        assert!(short.len() <= BATCH_SLOTS_SHOWN + ",…".len(), "{short}");
        assert!(short.ends_with(",…"), "{short}");
        let shown = short.trim_end_matches(",…");
        assert!(
            long.starts_with(&format!("{shown},")),
            "{short} is a prefix of whole items"
        );
    }

    fn sample() -> pb::StatusResponse {
        pb::StatusResponse {
            cluster: 0x1f0c_3a9e_5b7d_2468,
            map_epoch: 1,
            catalog: "sqlite".into(),
            reshard_jobs: Vec::new(),
            feeds: Vec::new(),
            groups: vec![pb::GroupStatus {
                group_id: 1,
                slots_owned: 1365,
                members: vec![pb::MemberStatus {
                    address: "127.0.0.1:4000".into(),
                    pid: 42,
                    role: "primary".into(),
                    last_lsn: 7,
                    in_doubt: 0,
                    keys: 3,
                    map_epoch: 1,
                    alive: true,
                    last_heard_ms: Some(0),
                    lease_ms: 640,
                    uptime_s: 130,
                    metrics_addr: "127.0.0.1:9100".into(),
                    ..Default::default()
                }],
            }],
            coordinators: vec![pb::CoordinatorStatus {
                id: "a\"b".into(),
                address: "x".into(),
                heartbeat_age_s: 1,
                alive: true,
                metrics_addr: "127.0.0.1:9101".into(),
                uptime_s: 7,
            }],
        }
    }

    /// The help text states the coordinator's actual bounds.
    #[test]
    fn help_states_the_bounds() {
        use trellis_coordinator::catalog::COORDINATOR_ROW_EXPIRY;
        use trellis_coordinator::service::{MEMBER_SILENCE_MAX, STATUS_RPC_TIMEOUT};
        use trellis_coordinator::{COORDINATOR_SILENCE_MAX, MAP_REFRESH_INTERVAL};
        let secs = |d: Duration| format!("{} s", d.as_secs());
        for (what, text) in [
            (
                "STATUS_RPC_TIMEOUT",
                format!("({} deadline", secs(STATUS_RPC_TIMEOUT)),
            ),
            (
                "MEMBER_SILENCE_MAX",
                format!("within {}", secs(MEMBER_SILENCE_MAX)),
            ),
            (
                "MEMBER_SILENCE_MAX",
                format!("for {}:", secs(MEMBER_SILENCE_MAX)),
            ),
            (
                "COORDINATOR_SILENCE_MAX",
                format!("older than {}", secs(COORDINATOR_SILENCE_MAX)),
            ),
            (
                "MAP_REFRESH_INTERVAL",
                format!("every {}", secs(MAP_REFRESH_INTERVAL)),
            ),
            (
                "COORDINATOR_ROW_EXPIRY",
                format!(
                    "silent for {} minutes",
                    COORDINATOR_ROW_EXPIRY.as_secs() / 60
                ),
            ),
        ] {
            let flat = HELP.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains(&text),
                "{what}: no `{text}` in the help:\n{HELP}"
            );
        }
    }

    /// A member nobody heard from shows as down, with no lag or lease
    /// (which would be stale or made up), in the table and in JSON.
    #[test]
    fn down_members_show_no_numbers() {
        let mut status = sample();
        status.groups[0].members.push(pb::MemberStatus {
            address: "127.0.0.1:4001".into(),
            pid: 43,
            role: "down".into(),
            in_sync: true,
            alive: false,
            last_heard_ms: Some(2500),
            // What a primary reported before it dropped the backup: must
            // not show.
            lag_records: 7,
            lag_ms: 2500,
            ..Default::default()
        });
        let text = table(&status);
        let row = text
            .lines()
            .find(|l| l.contains("127.0.0.1:4001"))
            .expect("down row");
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells[4].trim(), "down", "{text}");
        assert!(!row.contains("rec /"), "no lag for a down member: {text}");
        assert_eq!(
            &cells[5..8],
            ["-", "-", "-"],
            "epoch, lease, last lsn: {text}"
        );
        assert!(row.contains("2.5 s ago"), "{text}");
        let json = json(&status);
        assert!(
            json.contains(
                "\"role\":\"down\",\"alive\":false,\"last_heard_ms\":2500,\"uptime_s\":null"
            ),
            "{json}"
        );
        assert!(
            json.contains("\"lease_ms\":null,\"last_lsn\":null,\"lag_records\":null,\"lag_ms\":null,\"keys\":null"),
            "{json}"
        );
    }

    /// A primary with no in-sync backup needs no lease (`u64::MAX` on the
    /// wire): `none` in the table, `null` in JSON, never the raw number.
    #[test]
    fn lease_without_backups_is_none() {
        let mut status = sample();
        status.groups[0].members[0].lease_ms = u64::MAX;
        let text = table(&status);
        let json = json(&status);
        for out in [&text, &json] {
            assert!(!out.contains(&u64::MAX.to_string()), "{out}");
        }
        assert!(
            text.lines().nth(2).expect("row").contains(" none "),
            "{text}"
        );
        assert!(json.contains("\"lease_ms\":null"), "{json}");
        status.groups[0].members[0].lease_ms = 0;
        assert!(table(&status).contains("LAPSED"));
        assert!(super::json(&status).contains("\"lease_ms\":0"));
    }

    #[test]
    fn the_cluster_id_is_shown_or_said_unknown() {
        let mut status = sample();
        assert!(
            table(&status).starts_with("cluster 1f0c3a9e5b7d2468   map epoch 1"),
            "{}",
            table(&status)
        );
        assert!(
            json(&status).starts_with("{\"cluster\":\"1f0c3a9e5b7d2468\",\"map_epoch\":1,"),
            "{}",
            json(&status)
        );
        status.cluster = 0;
        assert!(
            table(&status).starts_with("cluster unknown   "),
            "{}",
            table(&status)
        );
        assert!(
            json(&status).starts_with("{\"cluster\":null,"),
            "{}",
            json(&status)
        );
    }

    #[test]
    fn feeds_show_their_lag_and_cursor() {
        let mut status = sample();
        assert!(!table(&status).contains("feeds:"));
        assert!(json(&status).contains("\"feeds\":[]"));
        status.feeds.push(pb::FeedStatus {
            feed: "orders".into(),
            cursor: Some(pb::FeedCursor {
                groups: vec![
                    pb::GroupPosition {
                        group: 1,
                        position: 120,
                    },
                    pb::GroupPosition {
                        group: 2,
                        position: 88,
                    },
                ],
                cluster: 0x1f0c_3a9e_5b7d_2468,
            }),
            saved_age_s: 3,
            lag: vec![
                pb::FeedLag {
                    group: 1,
                    records: 0,
                },
                pb::FeedLag {
                    group: 2,
                    records: 15,
                },
            ],
        });
        let text = table(&status);
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("orders"))
            .expect("a feed row");
        assert!(row.contains("3s ago"), "{text}");
        assert!(row.contains("1:0 2:15"), "{text}");
        assert!(row.contains("1f0c3a9e5b7d2468/1:120,2:88"), "{text}");
        assert!(
            json(&status).contains(
                "\"feeds\":[{\"feed\":\"orders\",\"saved_age_s\":3,\"cursor\":\"1f0c3a9e5b7d2468/1:120,2:88\",\"lag_records\":{\"1\":0,\"2\":15}}]"
            ),
            "{}",
            json(&status)
        );
    }

    #[test]
    fn coordinators_show_state_and_metrics() {
        let mut status = sample();
        status.coordinators.push(pb::CoordinatorStatus {
            id: "127.0.0.1:50051/9".into(),
            address: "127.0.0.1:50051".into(),
            heartbeat_age_s: 106,
            alive: false,
            metrics_addr: "127.0.0.1:9102".into(),
            uptime_s: 200,
        });
        let text = table(&status);
        let dead = text
            .lines()
            .find(|l| l.contains("50051/9"))
            .expect("dead row");
        assert!(
            dead.contains("DEAD") && dead.contains("106 s ago"),
            "{text}"
        );
        assert!(
            text.contains("alive") && text.contains("127.0.0.1:9101"),
            "{text}"
        );
        let json = json(&status);
        assert!(
            json.contains("\"alive\":false,\"heartbeat_age_s\":106,\"uptime_s\":200,\"metrics_addr\":\"127.0.0.1:9102\""),
            "{json}"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("group  slots  address"), "{text}");
        assert!(
            lines[2].starts_with("1      1365   127.0.0.1:4000  42   primary"),
            "{text}"
        );
    }

    #[test]
    fn json_escapes_and_nests() {
        let text = json(&sample());
        assert!(text.contains("\"groups\":[{\"group\":1,\"slots\":1365,\"members\":[{\"address\":\"127.0.0.1:4000\""), "{text}");
        assert!(text.contains("\"id\":\"a\\\"b\""), "{text}");
    }

    #[test]
    fn unfinished_jobs_show_in_table_and_json() {
        let mut status = sample();
        assert!(json(&status).contains("\"reshard_jobs\":[]"));
        assert!(!table(&status).contains("reshard jobs:"));
        status.reshard_jobs.push(pb::ReshardJob {
            id: 3,
            state: "paused".into(),
            reason: "did not \"drain\"".into(),
            phase: String::new(),
            slots_done: 64,
            slots_total: 300,
            batches_done: 1,
            batches_total: 5,
            bytes_copied: 3 * 1024 * 1024,
            bytes_per_second: 2048,
            eta_s: 150,
            pause_max_ms: 41,
            ..Default::default()
        });
        let text = table(&status);
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with('3'))
            .unwrap_or_else(|| panic!("no job row:\n{text}"));
        for cell in [
            "paused",
            "64/300",
            "1/5",
            "3.0 MiB",
            "2.0 KiB/s",
            "2 min",
            "41 ms",
        ] {
            assert!(row.contains(cell), "`{cell}` in {row}");
        }
        let text = json(&status);
        assert!(
            text.contains("\"reshard_jobs\":[{\"id\":3,\"state\":\"paused\",\"reason\":\"did not \\\"drain\\\"\""),
            "{text}"
        );
        let line = job_line(&status.reshard_jobs[0]);
        assert!(
            line.starts_with("job 3: paused, 64/300 slots (1/5 batches)")
                && line.contains("ETA 2 min"),
            "{line}"
        );
    }

    #[test]
    fn catch_up_shows_how_and_how_far() {
        let mut status = sample();
        let backup = pb::MemberStatus {
            address: "127.0.0.1:4001".into(),
            role: "learner".into(),
            catch_up: "log".into(),
            catch_up_done: 2100,
            catch_up_total: 14000,
            ..Default::default()
        };
        status.groups[0].members.push(backup.clone());
        let text = table(&status);
        let row = text
            .lines()
            .find(|l| l.contains("127.0.0.1:4001"))
            .expect("backup row");
        assert!(row.ends_with("log 15% (2100 of 14000 records)"), "{text}");
        assert!(json(&status).contains("\"catch_up\":\"log\",\"catch_up_done\":2100"));

        let snapshot = pb::MemberStatus {
            catch_up: "snapshot".into(),
            catch_up_done: 3 * 1024 * 1024,
            catch_up_total: 12 * 1024 * 1024,
            ..backup
        };
        assert_eq!(catch_up(&snapshot), "snapshot 25% (3.0 of 12.0 MiB)");
        let live = pb::MemberStatus::default();
        assert_eq!(catch_up(&live), "");
    }
}
