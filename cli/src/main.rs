//! The single `trellis` binary: one module per subcommand. The protocols
//! live in the library crates; what is here is flags, wiring, the terminal
//! side of the tools, the `dev` supervisor and the benchmarks.
//!
//! # Layout
//! - `dev`: `trellis dev`, a whole local cluster as child processes, and
//!   their supervisor (restarts, log relay, stop, the catalog's groups
//!   followed); `dev add-group` grows a running one.
//! - `coordinator`: `trellis coordinator`, one coordinator over a catalog.
//! - `shard`: `trellis shard`, one shard replica.
//! - `status`: `trellis status`, the cluster table (also `\status` in sql).
//! - `sql`: `trellis sql`, the shell's terminal (the language is in
//!   `trellis-client`).
//! - `admin`: `trellis admin`, operator commands (transfer-primary,
//!   add-group, remove-group, rebalance, move-slots, drain-group, reshard
//!   list|pause|resume|cancel).
//! - `cdc`: `trellis cdc`, a change feed into a sink (`trellis-cdc`),
//!   its cursor kept in the catalog.
//! - `bench`: `trellis bench storage|txn|replication`, a module tree of its
//!   own.
//! - `cert`: `trellis cert create-ca|create-node|create-client`, the files
//!   of a TLS cluster.
//! - `tls`: `--tls-ca`, `--tls-cert`, `--tls-key` (global: one set for every
//!   subcommand that serves or connects), installed before the command runs;
//!   the thread that reloads them (SIGHUP, a poll); `--metrics-tls`.
//! - `user`: `trellis user add|passwd|rm|grant|revoke|list` and `trellis
//!   admin auth enable|disable|status`.
//! - `login`: `--user` and `--password-stdin` (global), a password login
//!   for the commands that talk to a coordinator.
//! - `flags`: value checks shared by the subcommands' flags.
//! - `logs`: `--log-format` (text or JSON lines), the log subscriber, and
//!   the root spans that put a process's identity on its every line.
//! - `signals`: how long-running subcommands learn they should stop.
//! - `trellis load` is `trellis-loadtest` itself, with its own exit codes.
//!
//! # Exit codes
//! A bad flag, or a flag's value of the wrong shape, is exit code 2 for
//! every subcommand (clap's usage error; values are checked by the
//! parsers in `flags` while parsing). A command that fails at run time
//! exits 1, except where its help says otherwise (`sql`: 2 when the
//! cluster cannot be reached; `load`: 98 and 99).

mod admin;
mod bench;
mod cdc;
mod cert;
mod coordinator;
mod dev;
mod flags;
mod login;
mod logs;
mod shard;
mod signals;
mod sql;
mod status;
mod tls;
mod user;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Trellis: a sharded, replicated key-value store with serializable
/// multi-key transactions.
#[derive(Parser)]
#[command(name = "trellis", version, about, long_about = None)]
struct Cli {
    /// Log lines on stderr: `text`, or `json` (one JSON object per line
    /// with timestamp, level, target, message and fields; a shard's lines
    /// carry its group and replica, a coordinator's its id).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TRELLIS_LOG_FORMAT",
        default_value_t = logs::LogFormat::Text
    )]
    log_format: logs::LogFormat,
    /// Whether this process records its metrics on the hot paths: `on`, or
    /// `off` to measure what recording costs (bench/metrics-cost.sh); off,
    /// counters and histograms stay at zero and `/metrics` still answers.
    /// `trellis dev` passes it to every process it starts.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TRELLIS_METRICS_RECORDING",
        default_value_t = MetricsRecording::On
    )]
    metrics_recording: MetricsRecording,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(flatten)]
    login: login::LoginArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole local cluster (a coordinator and every shard) with one
    /// command.
    Dev(dev::Args),
    /// Run a coordinator: the public transaction service.
    Coordinator(coordinator::Args),
    /// Show the cluster: groups, members, roles, LSNs, in-doubt transactions.
    Status(status::Args),
    /// Run one shard replica: its storage engine and gRPC server.
    Shard(shard::Args),
    /// Measure this machine: the storage engine on its disk (storage),
    /// 1PC vs 2PC commits on a running cluster (txn), the change feed's
    /// commit-to-emit latency on a running cluster (feed), or replication
    /// and failover on clusters it starts (replication).
    Bench(bench::Args),
    /// A psql-like SQL shell over the table kv(k, v): interactive, or
    /// statements from -c, -f or standard input.
    Sql(sql::Args),
    /// Operator commands on a running cluster (transfer-primary, add-group,
    /// remove-group, rebalance, move-slots, drain-group, reshard,
    /// forget-feed).
    Admin(admin::Args),
    /// Run a change feed into a sink (stdout, NATS JetStream, RabbitMQ, a
    /// Redis cache), resuming from a cursor kept in the catalog.
    Cdc(cdc::Args),
    /// A k6-style load tester: closed and open models, workloads,
    /// thresholds, summaries and reports, against Trellis, etcd or
    /// PostgreSQL.
    Load(Box<trellis_loadtest::Args>),
    /// Make the certificates of a TLS cluster: a CA, node certificates for
    /// coordinators and shards, client certificates for users.
    ///
    /// A cluster has one CA (`create-ca`); every coordinator and shard gets
    /// a node certificate signed by it (`create-node`, naming the hosts and
    /// IP addresses peers dial it by) and every user or tool a client
    /// certificate (`create-client`). Each process then runs with
    /// `--tls-ca ca.pem --tls-cert NAME.pem --tls-key NAME-key.pem`.
    ///
    /// Example, one machine:
    ///
    ///   trellis cert create-ca --dir certs
    ///
    ///   trellis cert create-node --dir certs --name node1 --host 127.0.0.1 --host localhost
    ///
    ///   trellis cert create-client --dir certs --name alice
    ///
    /// writes certs/ca.pem, certs/ca-key.pem, certs/node1.pem,
    /// certs/node1-key.pem, certs/alice.pem and certs/alice-key.pem (keys
    /// mode 0600; an existing file is kept unless --force). Keep ca-key.pem
    /// off the cluster's machines: only `trellis cert` needs it.
    Cert(cert::Args),
    User(user::Args),
}

/// The values of `--metrics-recording`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MetricsRecording {
    On,
    Off,
}

/// `--metrics-recording`'s value for a process that records (`on`) or not
/// (what `trellis dev` passes to its children).
pub(crate) fn metrics_recording_arg(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logs::init(cli.log_format);
    // Once, before any traffic: the hot paths read it with a relaxed load.
    trellis_metrics::set_recording(cli.metrics_recording == MetricsRecording::On);
    let misuse = |message: String| -> ! {
        use clap::CommandFactory as _;
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit()
    };
    if let (Command::Dev(args), Ok(Some(_))) = (&cli.command, cli.tls.files())
        && args.insecure()
    {
        misuse(
            "--insecure runs dev in plaintext: give it no --tls-* flag (nor TRELLIS_TLS_* \
             variable)"
                .to_string(),
        );
    }
    match (cli.tls.files(), &cli.command) {
        (Err(message), _) => misuse(message),
        (Ok(Some(_)), Command::Cert(_)) => misuse(
            "`trellis cert` makes the TLS files and takes no --tls-* flag (nor TRELLIS_TLS_* \
             variable)"
                .to_string(),
        ),
        (Ok(Some(files)), _) => {
            tls::set_metrics_tls(cli.tls.metrics_tls);
            if let Err(err) = tls::install(files) {
                eprintln!("error: {err:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
        (Ok(None), command) => {
            // No --tls-* flag: the files of a `trellis dev` serving the
            // very address this command dials, if one runs (dev::certs).
            if let Some(dialled) = dialled(command) {
                let choice = dev::certs::for_tool(false, Some(&dialled));
                if choice.about_the_dev() {
                    tracing::info!("TLS: {choice}");
                } else {
                    tracing::debug!("TLS: {choice}");
                }
                if let dev::certs::Choice::Dev(files) = choice
                    && let Err(err) = tls::install(files)
                {
                    eprintln!("error: using the TLS files of the running trellis dev: {err:#}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    if let Some(message) = cli.login.misuse() {
        misuse(message);
    }
    if cli.login.user.is_some() {
        if !matches!(
            cli.command,
            Command::Sql(_)
                | Command::Status(_)
                | Command::Admin(_)
                | Command::Cdc(_)
                | Command::User(_)
                | Command::Load(_)
        ) {
            misuse(
                "--user logs in to a coordinator: only `trellis sql`, `status`, `admin`, `cdc`, \
                 `user` and `load` take it"
                    .to_string(),
            );
        }
        if let Err(err) = cli.login.install() {
            eprintln!("error: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Coordinator(args) => coordinator::run(args),
        Command::Status(args) => status::run(args),
        Command::Shard(args) => shard::run(args),
        Command::Bench(args) => {
            if let Some(message) = args.misuse() {
                misuse(message);
            }
            bench::run(args)
        }
        Command::Sql(args) => sql::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Cdc(args) => cdc::run(args),
        Command::Cert(args) => cert::run(args),
        Command::User(args) => user::run(args),
        // Its own exit codes (99: a threshold was crossed).
        Command::Load(args) => return trellis_loadtest::main(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The coordinator address a command dials, if it dials one: what a
/// running `trellis dev`'s TLS files are offered for (`dev::certs`).
/// `trellis dev add-group` reads its dev's address itself.
fn dialled(command: &Command) -> Option<String> {
    match command {
        Command::Status(args) => Some(args.addr().to_string()),
        Command::Sql(args) => Some(args.addr().to_string()),
        Command::Admin(args) => Some(args.addr().to_string()),
        Command::Cdc(args) => Some(args.addr().to_string()),
        Command::User(args) => Some(args.addr().to_string()),
        Command::Bench(args) => args.addr().map(str::to_string),
        // A bare HOST:PORT is parsed into trellis://HOST:PORT; other
        // schemes are other systems.
        Command::Load(args) => args.addr.strip_prefix("trellis://").map(str::to_string),
        Command::Dev(_) | Command::Coordinator(_) | Command::Shard(_) | Command::Cert(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every subcommand's flags fit together: a global flag (`--user`,
    /// `--password-stdin`, `--tls-*`) never clashes with a subcommand's.
    #[test]
    fn the_flags_of_every_subcommand_fit_together() {
        Cli::command().debug_assert();
    }

    #[test]
    fn password_stdin_without_user_is_a_usage_error() {
        let cli = Cli::try_parse_from(["trellis", "status", "--password-stdin"]).expect("parses");
        let message = cli.login.misuse().expect("misuse");
        assert!(message.contains("give --user too"), "{message}");
        let cli = Cli::try_parse_from(["trellis", "sql", "--user", "bob", "--password-stdin"])
            .expect("parses");
        assert_eq!(cli.login.misuse(), None);
        assert_eq!(cli.login.user.as_deref(), Some("bob"));
    }
}
