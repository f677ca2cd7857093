//! `trellis status`: the cluster as the coordinator sees it.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use trellis_proto::v1 as pb;

/// Deadline of the status call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
#[command(after_help = "\
Shows the slot-map epoch, the catalog backend, every shard group with its
members (address, process id, role, epoch, lease, last LSN, lag, keys,
in-doubt transactions) and the coordinators registered in the catalog.

A backup being brought up to date shows how and how far in the catch-up
column: `snapshot 40% (4.0 of 10.0 MiB)`, or `log 14% (2100 of 14140
records)` for a backlog read from the primary's log on disk (`feed` for one
from its memory).

Examples:
  trellis status
  trellis status --addr 10.0.0.5:50051 --format json")]
pub struct Args {
    /// Coordinator address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
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
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(STATUS_TIMEOUT)
        .timeout(STATUS_TIMEOUT)
        .connect()
        .await
        .with_context(|| {
            format!("connecting to the coordinator at {addr} (is `trellis dev` running?)")
        })?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    Ok(client
        .status(pb::StatusRequest {})
        .await
        .with_context(|| format!("asking {addr} for the cluster status"))?
        .into_inner())
}

/// The status as an aligned table.
pub fn table(status: &pb::StatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "map epoch {}   catalog {}",
        status.map_epoch, status.catalog
    );
    let header = [
        "group", "slots", "address", "pid", "role", "epoch", "lease", "last lsn", "lag", "keys",
        "in doubt", "catch-up",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for g in &status.groups {
        for m in &g.members {
            rows.push(vec![
                g.group_id.to_string(),
                g.slots_owned.to_string(),
                m.address.clone(),
                m.pid.to_string(),
                if m.in_sync || m.role == "primary" || m.role == "unregistered" {
                    m.role.clone()
                } else {
                    format!("{} (not in sync)", m.role)
                },
                m.epoch.to_string(),
                match (m.role.as_str(), m.lease_ms) {
                    ("primary", u64::MAX) => "-".into(),
                    ("primary", 0) => "LAPSED".into(),
                    ("primary", ms) => format!("{ms} ms"),
                    _ => String::new(),
                },
                m.last_lsn.to_string(),
                if m.role == "primary" {
                    String::new()
                } else {
                    format!("{} rec / {} ms", m.lag_records, m.lag_ms)
                },
                m.keys.to_string(),
                m.in_doubt.to_string(),
                catch_up(m),
            ]);
        }
    }
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
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    if !status.coordinators.is_empty() {
        let _ = writeln!(out, "coordinators:");
        for c in &status.coordinators {
            let _ = writeln!(
                out,
                "  {}  (heartbeat {} s ago)",
                c.address, c.heartbeat_age_s
            );
        }
    }
    out
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
                    format!(
                        "{{\"address\":{},\"pid\":{},\"role\":{},\"in_sync\":{},\"epoch\":{},\"lease_ms\":{},\"last_lsn\":{},\"lag_records\":{},\"lag_ms\":{},\"keys\":{},\"in_doubt\":{},\"map_epoch\":{},\"catch_up\":{},\"catch_up_done\":{},\"catch_up_total\":{}}}",
                        quote(&m.address),
                        m.pid,
                        quote(&m.role),
                        m.in_sync,
                        m.epoch,
                        m.lease_ms,
                        m.last_lsn,
                        m.lag_records,
                        m.lag_ms,
                        m.keys,
                        m.in_doubt,
                        m.map_epoch,
                        quote(&m.catch_up),
                        m.catch_up_done,
                        m.catch_up_total
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
                "{{\"id\":{},\"address\":{},\"heartbeat_age_s\":{}}}",
                quote(&c.id),
                quote(&c.address),
                c.heartbeat_age_s
            )
        })
        .collect();
    format!(
        "{{\"map_epoch\":{},\"catalog\":{},\"groups\":[{}],\"coordinators\":[{}]}}\n",
        status.map_epoch,
        quote(&status.catalog),
        groups.join(","),
        coordinators.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::StatusResponse {
        pb::StatusResponse {
            map_epoch: 1,
            catalog: "sqlite".into(),
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
                    ..Default::default()
                }],
            }],
            coordinators: vec![pb::CoordinatorStatus {
                id: "a\"b".into(),
                address: "x".into(),
                heartbeat_age_s: 1,
            }],
        }
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
