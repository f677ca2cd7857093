//! The flags of `trellis load` and their checking into a [`Config`].
//!
//! Everything a person can get wrong is rejected here, before anything
//! connects, with a message naming the flag and the bad part.

use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::{self, Ramp, VuSchedule};
use crate::target;
use crate::threshold::{self, Threshold};
use crate::workload::{self, Kind, Workload};

/// Most VUs (closed model) or `--max-vus` (open model).
pub const VUS_MAX: u64 = 10_000;
/// Highest `--rate`, arrivals per second.
pub const RATE_MAX: f64 = 1_000_000.0;
/// Most `--connections`.
pub const CONNECTIONS_MAX: usize = 1024;
/// Connections to Trellis or etcd when `--connections` is not given:
/// gRPC channels multiplex many calls each.
pub const GRPC_CONNECTIONS_DEFAULT: usize = 4;
/// Most PostgreSQL sessions or Redis connections opened when
/// `--connections` is not given (one per VU up to this: each runs one
/// transaction at a time; PostgreSQL's default `max_connections` is 100).
pub const SESSION_CONNECTIONS_DEFAULT_MAX: usize = 64;
/// Default `--max-vus` of the open model.
pub const MAX_VUS_DEFAULT: u64 = 100;
/// Default deadline of each call.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Longest `--timeout`.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Most `--attempts`.
pub const ATTEMPTS_MAX: u32 = 100;

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = crate::HELP_EXAMPLES)]
pub struct Args {
    /// What to measure: a Trellis coordinator as HOST:PORT (as for every
    /// other command), or a URL whose scheme picks the system:
    /// trellis://HOST:PORT, etcd://HOST:PORT[,HOST:PORT...],
    /// postgres://USER@HOST:PORT/DB, redis://HOST:PORT.
    #[arg(
        long,
        visible_alias = "target",
        value_name = "ADDR|URL",
        default_value = "127.0.0.1:50051",
        value_parser = target_url
    )]
    pub addr: String,
    /// w1-rmw, w2-transfer, w3-read, ycsb-a, ycsb-b, ycsb-c, ycsb-f, append
    /// or bank (see below).
    #[arg(long, default_value = "w1-rmw")]
    pub workload: String,

    /// Closed model: this many VUs, each running one iteration after
    /// another (with --stage: the VUs at the start).
    #[arg(long)]
    pub vus: Option<u64>,
    /// How long to run (e.g. 30s, 1m30s). With --iterations: the most it
    /// may take.
    #[arg(long)]
    pub duration: Option<String>,
    /// Closed model: run this many iterations in all, shared by the VUs.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Ramp in stages, DURATION:TARGET,...: VUs (closed model) or arrivals
    /// per second (with --rate), e.g. 10s:50,30s:50,10s:0.
    #[arg(long)]
    pub stage: Option<String>,
    /// Open model: start this many iterations per second whether or not
    /// earlier ones finished (with --stage: the rate at the start).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open model: most iterations in flight; an arrival that finds them
    /// all busy is dropped and counted in dropped_iterations.
    #[arg(long)]
    pub max_vus: Option<u64>,
    /// Connections to the target, shared by the VUs round robin (default:
    /// 4 gRPC channels; for PostgreSQL and Redis one per VU, at most 64).
    #[arg(long)]
    pub connections: Option<usize>,

    /// Keys the workload spreads over (default 100,000; bank: 8 accounts;
    /// append: 64).
    #[arg(long)]
    pub keys: Option<u64>,
    /// Bytes per value (counters and balances are padded to it).
    #[arg(long, default_value_t = workload::VALUE_SIZE_DEFAULT)]
    pub value_size: usize,
    /// Pick keys from a Zipfian distribution with this exponent (0 < θ < 1,
    /// e.g. 0.99) instead of uniformly.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Keys are PREFIX:0000000042 (default: the workload's name).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Commit durability: sync, semi_sync or async.
    #[arg(long, default_value = "sync")]
    pub durability: String,
    /// Read consistency: strong, or stale:DURATION (e.g. stale:500ms).
    #[arg(long, default_value = "strong")]
    pub consistency: String,
    /// Trellis target: how requests reach the shards. direct: the client
    /// caches the shard map and sends reads and one-group commits straight
    /// to each group's primary (multi-group commits go to the
    /// coordinator); coordinator: every call through the coordinator.
    #[arg(long, default_value = "direct")]
    pub route: String,
    /// Deadline of each call to the target.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Attempts per iteration when transactions conflict.
    #[arg(long, default_value_t = trellis_client::TXN_ATTEMPTS_MAX)]
    pub attempts: u32,
    /// Seed of the VUs' random choices (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// PostgreSQL target: the table to use (created if missing).
    #[arg(long, default_value = "kv")]
    pub pg_table: String,
    /// PostgreSQL target: how transactions run. serializable: BEGIN,
    /// SELECT, upsert, COMMIT at SERIALIZABLE. occ: READ COMMITTED, the
    /// reads in autocommit, then writes conditional on the version read
    /// (w1-rmw: SELECT then one UPDATE; w2-transfer: one transaction of two
    /// UPDATEs); a write that finds the version changed is a conflict.
    #[arg(long, default_value = "serializable", value_name = "serializable|occ")]
    pub pg_mode: String,

    /// Pass/fail criterion, e.g. 'txn_duration:p(99)<50ms' or
    /// 'txn_failed:rate<0.01'; repeatable. Exit code 99 when one fails.
    #[arg(long = "threshold")]
    pub thresholds: Vec<String>,
    /// Write every sample as a JSON line: json=FILE.
    #[arg(long)]
    pub out: Option<String>,
    /// Write the end-of-test summary as JSON to FILE.
    #[arg(long)]
    pub summary_export: Option<PathBuf>,
    /// Write a self-contained HTML report (charts per second, summary) to
    /// FILE.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// append and bank: write the history in the checker's format to FILE.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// No progress line and no header (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// How iterations are started.
#[derive(Debug, Clone)]
pub enum Model {
    Closed {
        schedule: VuSchedule,
        iterations: Option<u64>,
        /// With `iterations`: the most the run may take.
        max_duration: Duration,
    },
    Open {
        ramp: Ramp,
        max_vus: u64,
    },
}

/// The workload's settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub kind: Kind,
    pub keys: u64,
    pub value_size: usize,
    pub zipf: Option<f64>,
    pub prefix: String,
}

impl WorkloadConfig {
    pub fn build(&self) -> Workload {
        Workload::new(
            self.kind,
            self.keys,
            self.value_size,
            self.zipf,
            self.prefix.clone(),
        )
    }
}

/// A checked run.
#[derive(Debug, Clone)]
pub struct Config {
    pub target_url: String,
    pub target_options: target::Options,
    pub workload: WorkloadConfig,
    pub model: Model,
    pub thresholds: Vec<Threshold>,
    pub out_json: Option<PathBuf>,
    pub summary_export: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub history: Option<PathBuf>,
    pub quiet: bool,
    pub attempts_max: u32,
    pub seed: u64,
    /// The command line of the run, for the report and the JSON export
    /// (set by [`crate::main`]; empty when the run is made in code).
    pub command_line: String,
}

/// Checks a `HOST:PORT`: a host, and a port from 1 to 65535.
fn host_port(text: &str) -> Result<(), String> {
    match text.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(())
        }
        _ => Err(format!("`{text}` is not HOST:PORT (e.g. 127.0.0.1:50051)")),
    }
}

/// `--addr`/`--target`, checked while clap parses it (a bad one is a usage
/// error, exit code 2): a bare `HOST:PORT` is a Trellis coordinator and
/// becomes `trellis://HOST:PORT`; otherwise the scheme picks the system.
pub fn target_url(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "use HOST:PORT (Trellis), trellis://HOST:PORT, etcd://HOST:PORT[,HOST:PORT...], postgres://USER@HOST:PORT/DB or redis://HOST:PORT";
    let Some((scheme, rest)) = text.split_once("://") else {
        host_port(text).map_err(|e| format!("{e}; {EXPECTED}"))?;
        return Ok(format!("trellis://{text}"));
    };
    match scheme {
        "trellis" | "redis" => host_port(rest)?,
        "etcd" => {
            for endpoint in rest.split(',') {
                host_port(endpoint)?;
            }
        }
        "postgres" | "postgresql" => {
            if rest.is_empty() {
                return Err(format!("`{text}` names no server; {EXPECTED}"));
            }
        }
        // Test-only: see `target::BrokenBank`.
        "broken-bank" => {
            target_url(rest)?;
        }
        _ => return Err(format!("unknown scheme `{scheme}://`; {EXPECTED}")),
    }
    Ok(text.to_string())
}

fn duration_flag(flag: &str, text: &str) -> Result<Duration, String> {
    schedule::parse_duration(text).map_err(|e| format!("--{flag}: {e}"))
}

fn parse_consistency(text: &str) -> Result<trellis_client::Consistency, String> {
    match text {
        "strong" => Ok(trellis_client::Consistency::Strong),
        _ => match text.strip_prefix("stale:") {
            Some(d) => Ok(trellis_client::Consistency::Stale(duration_flag(
                "consistency",
                d,
            )?)),
            None => Err(format!(
                "--consistency `{text}`: use strong or stale:DURATION (e.g. stale:500ms)"
            )),
        },
    }
}

impl Config {
    /// Checks `args`; the error names the flag and what is wrong.
    pub fn from_args(args: &Args) -> Result<Config, String> {
        let kind = Kind::parse(&args.workload).map_err(|e| format!("--workload: {e}"))?;
        let keys = args.keys.unwrap_or(kind.default_keys());
        if keys == 0 || keys > workload::KEYS_MAX {
            return Err(format!(
                "--keys {keys}: use 1 to {} (KEYS_MAX)",
                workload::KEYS_MAX
            ));
        }
        if matches!(kind, Kind::W2Transfer | Kind::Bank) && keys < 2 {
            return Err(format!(
                "--keys {keys}: {} needs 2 keys or more",
                kind.name()
            ));
        }
        if kind == Kind::Bank && keys > workload::BANK_ACCOUNTS_MAX {
            return Err(format!(
                "--keys {keys}: bank reads every account at once; use at most {} (BANK_ACCOUNTS_MAX)",
                workload::BANK_ACCOUNTS_MAX
            ));
        }
        if !(workload::VALUE_SIZE_MIN..=workload::VALUE_SIZE_MAX).contains(&args.value_size) {
            return Err(format!(
                "--value-size {}: use {} to {} bytes",
                args.value_size,
                workload::VALUE_SIZE_MIN,
                workload::VALUE_SIZE_MAX
            ));
        }
        if let Some(theta) = args.zipf
            && !(theta > 0.0 && theta < 1.0)
        {
            return Err(format!(
                "--zipf {theta}: the exponent must be above 0 and below 1 (e.g. 0.99)"
            ));
        }
        let prefix = args
            .key_prefix
            .clone()
            .unwrap_or_else(|| kind.name().to_string());
        if prefix.is_empty() || prefix.len() > 256 || prefix.chars().any(char::is_whitespace) {
            return Err(format!(
                "--key-prefix `{prefix}`: use 1 to 256 characters, no spaces"
            ));
        }
        if args.history.is_some() && !kind.has_history() {
            return Err(format!(
                "--history: only append and bank record histories, not {}",
                kind.name()
            ));
        }

        let duration = args
            .duration
            .as_deref()
            .map(|d| duration_flag("duration", d))
            .transpose()?;
        let stages = args
            .stage
            .as_deref()
            .map(|s| schedule::parse_stages(s).map_err(|e| format!("--stage: {e}")))
            .transpose()?;
        let model = if let Some(rate) = args.rate {
            if !(0.0..=RATE_MAX).contains(&rate) {
                return Err(format!("--rate {rate}: use 0 to {RATE_MAX} per second"));
            }
            if args.vus.is_some() || args.iterations.is_some() {
                return Err(
                    "--rate is the open model: it starts iterations on a clock; --vus and --iterations belong to the closed model (use --max-vus to bound iterations in flight)".into(),
                );
            }
            let ramp = match (duration, stages) {
                (Some(_), Some(_)) => {
                    return Err(
                        "give --duration or --stage, not both: the stages set the length".into(),
                    );
                }
                (Some(d), None) => Ramp::constant(rate, d),
                (None, Some(stages)) => Ramp {
                    start: rate,
                    stages,
                },
                (None, None) => {
                    return Err(
                        "--rate needs --duration (constant rate) or --stage (ramping rate)".into(),
                    );
                }
            };
            if ramp.peak() > RATE_MAX {
                return Err(format!("--stage: a rate above {RATE_MAX} per second"));
            }
            let max_vus = args.max_vus.unwrap_or(MAX_VUS_DEFAULT);
            if max_vus == 0 || max_vus > VUS_MAX {
                return Err(format!("--max-vus {max_vus}: use 1 to {VUS_MAX}"));
            }
            Model::Open { ramp, max_vus }
        } else {
            if args.max_vus.is_some() {
                return Err(
                    "--max-vus belongs to the open model (--rate); the closed model runs --vus VUs"
                        .into(),
                );
            }
            let vus = args.vus.unwrap_or(if stages.is_some() { 0 } else { 1 });
            if vus > VUS_MAX {
                return Err(format!("--vus {vus}: use at most {VUS_MAX}"));
            }
            match (stages, args.iterations) {
                (Some(_), Some(_)) => {
                    return Err("give --stage or --iterations, not both".into());
                }
                (Some(stages), None) => {
                    if duration.is_some() {
                        return Err(
                            "give --duration or --stage, not both: the stages set the length"
                                .into(),
                        );
                    }
                    let schedule = VuSchedule {
                        ramp: Ramp {
                            start: vus as f64,
                            stages,
                        },
                    };
                    if schedule.peak() == 0 || schedule.peak() > VUS_MAX {
                        return Err(format!(
                            "--stage: the VUs must reach 1 to {VUS_MAX} at some point"
                        ));
                    }
                    Model::Closed {
                        max_duration: schedule.ramp.total(),
                        schedule,
                        iterations: None,
                    }
                }
                (None, Some(iterations)) => {
                    if vus == 0 {
                        return Err("--vus 0: --iterations needs 1 VU or more".into());
                    }
                    Model::Closed {
                        schedule: VuSchedule {
                            ramp: Ramp::constant(vus as f64, Duration::MAX / 4),
                        },
                        iterations: Some(iterations),
                        max_duration: duration.unwrap_or(crate::runner::ITERATIONS_DURATION_MAX),
                    }
                }
                (None, None) => {
                    let Some(d) = duration else {
                        return Err(
                            "say how long to run: --duration, --iterations or --stage".into()
                        );
                    };
                    if vus == 0 {
                        return Err("--vus 0: use 1 VU or more".into());
                    }
                    Model::Closed {
                        schedule: VuSchedule {
                            ramp: Ramp::constant(vus as f64, d),
                        },
                        iterations: None,
                        max_duration: d,
                    }
                }
            }
        };

        let peak_vus = match &model {
            Model::Closed { schedule, .. } => schedule.peak(),
            Model::Open { max_vus, .. } => *max_vus,
        } as usize;
        let is_pg = args.addr.starts_with("postgres://") || args.addr.starts_with("postgresql://");
        let is_session = is_pg || args.addr.starts_with("redis://");
        let connections = args.connections.unwrap_or(if is_session {
            peak_vus.clamp(1, SESSION_CONNECTIONS_DEFAULT_MAX)
        } else {
            GRPC_CONNECTIONS_DEFAULT
        });
        if connections == 0 || connections > CONNECTIONS_MAX {
            return Err(format!(
                "--connections {connections}: use 1 to {CONNECTIONS_MAX}"
            ));
        }
        let timeout = duration_flag("timeout", &args.timeout)?;
        if timeout.is_zero() || timeout > TIMEOUT_MAX {
            return Err(format!(
                "--timeout {}: use more than 0 and at most {} s",
                args.timeout,
                TIMEOUT_MAX.as_secs()
            ));
        }
        let durability = match args.durability.as_str() {
            "sync" => trellis_client::Durability::Sync,
            "semi_sync" => trellis_client::Durability::SemiSync,
            "async" => trellis_client::Durability::Async,
            other => {
                return Err(format!(
                    "--durability `{other}`: use sync, semi_sync or async"
                ));
            }
        };
        let consistency = parse_consistency(&args.consistency)?;
        let route: trellis_client::Route = args
            .route
            .parse()
            .map_err(|e| format!("--route `{}`: {e}", args.route))?;
        if args.attempts == 0 || args.attempts > ATTEMPTS_MAX {
            return Err(format!(
                "--attempts {}: use 1 to {ATTEMPTS_MAX}",
                args.attempts
            ));
        }
        if is_pg {
            target::postgres::check_table(&args.pg_table)?;
        }
        let pg_mode = target::postgres::PgMode::parse(&args.pg_mode)?;
        let thresholds = args
            .thresholds
            .iter()
            .map(|t| threshold::parse(t).map_err(|e| format!("--threshold: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let out_json = match &args.out {
            None => None,
            Some(out) => match out.strip_prefix("json=") {
                Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
                _ => {
                    return Err(format!("--out `{out}`: the one output is json=FILE"));
                }
            },
        };
        Ok(Config {
            target_url: args.addr.clone(),
            target_options: target::Options {
                connections,
                timeout,
                durability,
                consistency,
                route,
                pg_table: args.pg_table.clone(),
                pg_mode,
            },
            workload: WorkloadConfig {
                kind,
                keys,
                value_size: args.value_size,
                zipf: args.zipf,
                prefix,
            },
            model,
            thresholds,
            out_json,
            summary_export: args.summary_export.clone(),
            report: args.report.clone(),
            history: args.history.clone(),
            quiet: args.quiet,
            attempts_max: args.attempts,
            seed: args.seed.unwrap_or_else(rand::random),
            command_line: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn config(flags: &str) -> Result<Config, String> {
        let argv = std::iter::once("load").chain(flags.split_whitespace());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_args(&cli.args)
    }

    #[test]
    fn models_from_flags() {
        let c = config("--vus 8 --duration 30s").expect("closed");
        assert!(
            matches!(&c.model, Model::Closed { schedule, iterations: None, .. } if schedule.peak() == 8)
        );
        let c = config("--iterations 100 --vus 4").expect("iterations");
        assert!(matches!(
            c.model,
            Model::Closed {
                iterations: Some(100),
                ..
            }
        ));
        let c = config("--stage 10s:50,30s:50,10s:0").expect("stages");
        assert!(
            matches!(&c.model, Model::Closed { schedule, .. } if schedule.peak() == 50 && schedule.ramp.start == 0.0)
        );
        let c = config("--rate 2000 --duration 30s --max-vus 500").expect("open");
        assert!(matches!(&c.model, Model::Open { max_vus: 500, ramp } if ramp.peak() == 2000.0));
        let c = config("--rate 0 --stage 10s:100").expect("ramping rate");
        assert!(
            matches!(&c.model, Model::Open { ramp, .. } if ramp.total() == Duration::from_secs(10))
        );
        assert_eq!(c.target_options.connections, GRPC_CONNECTIONS_DEFAULT);
        let c = config("--target postgres://u@h/db --vus 200 --duration 1s").expect("pg");
        assert_eq!(
            c.target_options.connections,
            SESSION_CONNECTIONS_DEFAULT_MAX
        );
        assert_eq!(
            c.target_options.pg_mode,
            target::postgres::PgMode::Serializable
        );
        let c = config("--target postgres://u@h/db --pg-mode occ --vus 8 --duration 1s")
            .expect("pg occ");
        assert_eq!(c.target_options.pg_mode, target::postgres::PgMode::Occ);
        assert_eq!(c.target_options.connections, 8);
        let c = config("--target redis://127.0.0.1:6379 --vus 200 --duration 1s").expect("redis");
        assert_eq!(
            c.target_options.connections,
            SESSION_CONNECTIONS_DEFAULT_MAX
        );
        let c = config("--workload bank --duration 1s").expect("bank");
        assert_eq!(c.workload.keys, workload::BANK_ACCOUNTS_DEFAULT);
    }

    #[test]
    fn addr_and_target_name_one_thing() {
        let c = config("--addr 127.0.0.1:7 --duration 1s").expect("bare addr");
        assert_eq!(c.target_url, "trellis://127.0.0.1:7");
        let c = config("--target 127.0.0.1:7 --duration 1s").expect("alias, bare");
        assert_eq!(c.target_url, "trellis://127.0.0.1:7");
        let c = config("--target etcd://a:1,b:2 --duration 1s").expect("etcd");
        assert_eq!(c.target_url, "etcd://a:1,b:2");
        let c = config("--duration 1s").expect("default");
        assert_eq!(c.target_url, "trellis://127.0.0.1:50051");
        for bad in [
            "127.0.0.1",
            "127.0.0.1:x",
            "http://127.0.0.1:1",
            "trellis://127.0.0.1",
            "etcd://a:1,b",
            "postgres://",
            "redis://127.0.0.1",
        ] {
            let err = config(&format!("--addr {bad} --duration 1s")).expect_err(bad);
            assert!(err.contains("--addr"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_flags_name_the_problem() {
        let cases = [
            ("--vus 5 --stage 10x:5", "`10x`"),
            ("--vus 5", "how long"),
            ("--rate 10", "--rate needs"),
            ("--rate 10 --vus 3 --duration 1s", "open model"),
            ("--vus 3 --duration 1s --max-vus 9", "--max-vus"),
            ("--duration 1s --workload w9", "unknown workload `w9`"),
            ("--duration 1s --zipf 1.5", "--zipf 1.5"),
            (
                "--duration 1s --threshold txn_duration:p(99)<5xs",
                "bound `5xs`",
            ),
            ("--duration 1s --out csv=x", "json=FILE"),
            ("--duration 1s --durability maybe", "`maybe`"),
            ("--duration 1s --pg-mode snapshot", "--pg-mode `snapshot`"),
            ("--duration 1s --consistency stale:5q", "`5q`"),
            ("--duration 1s --route shards", "--route `shards`"),
            (
                "--duration 1s --workload bank --keys 1000",
                "BANK_ACCOUNTS_MAX",
            ),
            ("--duration 1s --history h.txt", "only append and bank"),
            ("--duration 1s --value-size 4", "--value-size 4"),
            ("--duration 10s --stage 1s:1", "not both"),
        ];
        for (flags, needle) in cases {
            let err = config(flags).expect_err(flags);
            assert!(err.contains(needle), "{flags}: {err}");
        }
    }
}
