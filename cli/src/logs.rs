//! How every `trellis` process logs: the `--log-format` flag (`text` or
//! `json`), the subscriber that writes stderr in that format, and the root
//! span that gives a long-running process's every line its identity (a
//! shard's `group` and `replica`, a coordinator's `coordinator` id).
//!
//! The root span exists only with `json`: the text format looks as it did
//! before the flag (no span prefix), and `trellis dev` labels text lines
//! with the process that wrote them instead. This module never decides
//! *what* is logged, only how it is written.

use std::cell::RefCell;
use std::sync::OnceLock;

use tracing::field;
use tracing::span::{EnteredSpan, Span};

/// Environment variable naming the log level filter (`info`, `warn`,
/// `trellis_shard=debug`, ...).
pub const LOG_FILTER_ENV: &str = "TRELLIS_LOG";
/// Level filter when [`LOG_FILTER_ENV`] is unset or unreadable.
const LOG_FILTER_DEFAULT: &str = "info";
/// Target of the root spans (which are at ERROR level). Always enabled
/// at ERROR whatever [`LOG_FILTER_ENV`] says (a span enables no event by
/// itself), so that a line at any level and from any target carries the
/// process's fields.
const PROCESS_TARGET: &str = "trellis::process";

/// The shape of log lines on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, message, the
    /// event's fields, and the fields of the spans it is in.
    Json,
}

impl LogFormat {
    /// The flag's value for this format, as a child is given it.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format chosen at start-up (set once by [`init`]).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format this process logs in: what `--log-format` said, or `text`
/// before [`init`] ran.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Does this process log JSON lines?
pub fn json() -> bool {
    format() == LogFormat::Json
}

/// Installs the global subscriber: stderr, filtered by [`LOG_FILTER_ENV`],
/// in `format`. Call once, before anything logs.
pub fn init(format: LogFormat) {
    FORMAT
        .set(format)
        .expect("the log format is set once, at start-up");
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER_DEFAULT))
        .add_directive(
            format!("{PROCESS_TARGET}=error")
                .parse()
                .expect("a target=level directive parses"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(log_colour()).init(),
        // Event fields at the top level beside `message`; the spans' fields
        // (group, replica, coordinator) under `spans`, outermost first.
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// Colour log lines only where a person reads them: stderr is a terminal
/// (or `CLICOLOR_FORCE` says so, as `trellis dev` does for the children
/// whose logs it relays to a terminal), and never with `NO_COLOR` set
/// (<https://no-color.org>). Redirected logs stay plain text.
fn log_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let force = std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0");
    !no_color && (force || std::io::stderr().is_terminal())
}

/// The root span of `trellis shard`: its `group`, and its `replica`
/// address once known ([`tracing::Span::record`] it). A disabled span
/// with the text format, whose look stays as before.
pub fn shard_span(group: u64) -> Span {
    if !json() {
        return Span::none();
    }
    // At ERROR, which the filter always enables for PROCESS_TARGET: a
    // higher level would raise the filter's maximum level for everything.
    tracing::error_span!(target: PROCESS_TARGET, "shard", group, replica = field::Empty)
}

/// The root span of `trellis coordinator`: its `coordinator` id once known
/// ([`tracing::Span::record`] it). A disabled span with the text format.
pub fn coordinator_span() -> Span {
    if !json() {
        return Span::none();
    }
    tracing::error_span!(target: PROCESS_TARGET, "coordinator", coordinator = field::Empty)
}

thread_local! {
    /// The process's root span, entered on this runtime thread for as long
    /// as the thread lives.
    static ROOT: RefCell<Option<EnteredSpan>> = const { RefCell::new(None) };
}

/// A multi-threaded runtime whose every thread (workers and the blocking
/// pool) runs inside `root`, so that tasks spawned anywhere — the shard's
/// replication loops, the gRPC connections — log with its fields. The
/// caller enters `root` on its own thread for `block_on`.
pub fn runtime(root: &Span) -> std::io::Result<tokio::runtime::Runtime> {
    let start = root.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || ROOT.set(Some(start.clone().entered())))
        .on_thread_stop(|| drop(ROOT.take()))
        .build()
}
