//! `trellis sql`: a psql-like shell over the table `kv(k, v)`, built on
//! `trellis-client` (which parses and runs the statements; see its docs for
//! the language). This file is the terminal: input sources, meta-commands,
//! prompt, history, completion, output and exit codes.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use trellis_client::sql::{self, Format, Session, SqlError, TxnStatus};

/// Exit code when a statement failed.
const EXIT_STATEMENT_FAILED: i32 = 1;
/// Exit code when the cluster cannot be reached.
const EXIT_CANNOT_CONNECT: i32 = 2;
/// File of the interactive history, in the home directory.
const HISTORY_FILE: &str = ".trellis_sql_history";
/// Environment variable naming another history file.
const HISTORY_ENV: &str = "TRELLIS_SQL_HISTORY";

#[derive(clap::Args)]
#[command(after_help = "\
Statements (end each with ;):
  SELECT v FROM kv WHERE k = 'a';      SELECT k, v, version FROM kv WHERE k LIKE 'user:%' LIMIT 10;
  INSERT INTO kv VALUES ('a','1');     UPSERT INTO kv VALUES ('a','2');
  UPDATE kv SET v = v + 10 WHERE k = 'acct:1';   DELETE FROM kv WHERE k = 'a';
  BEGIN; ... COMMIT; (or ROLLBACK)     SET durability = sync; SET consistency = stale '500ms';
  GET a;  PUT a 'x';  DEL a;
Meta-commands: \\? help, \\q quit, \\timing, \\x, \\format table|csv|tsv|json, \\status, \\i FILE.

Without -c or -f, statements are read from standard input when it is not a
terminal, and interactively otherwise. The first error stops a
non-interactive run: exit code 1 for a failed statement, 2 when the cluster
cannot be reached (at the start or when it goes away mid-session).

Rows are as in PostgreSQL: a key that does not exist gives no row, also in
IN (...) (select k, v to see which row is which; a NOTICE on stderr names
the absent keys). A scan without LIMIT returns at most 1,000 rows (LIMIT up
to 10,000); a NOTICE on stderr says when more keys match. Values are text
when UTF-8, else \\x and hex; a multi-line value continues with + in the
table, is quoted in CSV, and escaped in TSV as COPY does (\\n \\t \\r \\\\).

Examples:
  trellis sql
  trellis sql -c \"PUT a '1'; GET a\"
  trellis sql --addr 10.0.0.5:50051 -f transfer.sql
  trellis sql -c \"SELECT k, v FROM kv WHERE k IN ('a', 'b')\"
  echo \"SELECT k, v FROM kv WHERE k LIKE 'acct:%';\" | trellis sql --format csv")]
pub struct Args {
    /// Coordinator address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = crate::flags::addr)]
    addr: String,
    /// Run these statements (and meta-commands) and exit; may be repeated.
    #[arg(short = 'c', long = "command")]
    commands: Vec<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Output format (default: table on a terminal, tsv otherwise).
    #[arg(long, value_parser = ["table", "csv", "tsv", "json"])]
    format: Option<String>,
    /// How statements reach the shards. direct: the shell caches the shard
    /// map and sends reads and one-group commits straight to each group's
    /// primary (multi-group writes go to the coordinator); coordinator:
    /// everything through the coordinator (only its address need be
    /// reachable).
    #[arg(long, default_value = "direct", value_parser = clap::value_parser!(trellis_client::Route))]
    route: trellis_client::Route,
}

/// What to check when the coordinator cannot be reached, at start-up or
/// after it went away mid-session.
fn connection_hint(addr: &str) -> String {
    format!(
        "cannot reach the coordinator at {addr}; is `trellis dev` (or a coordinator) running there? {}",
        trellis_net::tls::hint()
    )
}

/// Why a run stops early: the exit code.
struct Stop(i32);

enum Flow {
    Continue,
    Quit,
}

struct Shell {
    runtime: tokio::runtime::Runtime,
    session: Session,
    addr: String,
    format: Format,
    expanded: bool,
    timing: bool,
    /// Errors are reported and the shell goes on (interactive); otherwise
    /// the first error stops the run.
    interactive: bool,
    /// The statement being typed (text after the last `;`).
    buffer: String,
}

impl Args {
    /// The coordinator address this command dials (for the TLS files a
    /// running `trellis dev` offers, `crate::dev::certs`).
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let code = match run_shell(args) {
        Ok(()) => return Ok(()),
        Err(Stop(code)) => code,
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn run_shell(args: Args) -> Result<(), Stop> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ERROR: cannot start the runtime: {e}");
            Stop(EXIT_STATEMENT_FAILED)
        })?;
    let options = trellis_client::Options {
        route: args.route,
        ..Default::default()
    };
    let connected = runtime.block_on(async {
        let client = trellis_client::Client::connect_with(&args.addr, options).await?;
        if client.route() == trellis_client::Route::Coordinator {
            client.ping().await?;
        }
        Ok::<_, trellis_client::Error>(client)
    });
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            // The same three lines as a connection lost mid-session.
            eprintln!("ERROR: {e}\nCODE: 08006 connection_failure");
            eprintln!("HINT: {}", connection_hint(&args.addr));
            return Err(Stop(EXIT_CANNOT_CONNECT));
        }
    };
    let stdin_tty = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let interactive = args.commands.is_empty() && args.file.is_none() && stdin_tty;
    let format = match &args.format {
        Some(f) => f.parse().unwrap_or(Format::Table),
        None if stdout_tty => Format::Table,
        None => Format::Tsv,
    };
    let mut shell = Shell {
        runtime,
        session: Session::new(client),
        addr: args.addr.clone(),
        format,
        expanded: false,
        timing: false,
        interactive,
        buffer: String::new(),
    };
    if interactive {
        return shell.interactive();
    }
    for command in &args.commands {
        if let Flow::Quit = shell.run_text(command)? {
            return Ok(());
        }
    }
    if let Some(path) = &args.file {
        shell.run_file(path)?;
    } else if args.commands.is_empty() {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| {
                eprintln!("ERROR: reading standard input: {e}");
                Stop(EXIT_STATEMENT_FAILED)
            })?;
            if let Flow::Quit = shell.feed_line(&line)? {
                return Ok(());
            }
        }
        shell.finish()?;
    }
    Ok(())
}

const HELP: &str = "\
Statements (end each with ;, may span lines):
  SELECT v FROM kv WHERE k = 'a'             SELECT k, v FROM kv WHERE k IN ('a','b')
  SELECT k, v, version FROM kv WHERE k LIKE 'user:%' LIMIT 10
  INSERT INTO kv VALUES ('a','1'), ('b','2')  (fails if a key exists)
  UPSERT INTO kv VALUES ('a','1')
  UPDATE kv SET v = 'x' WHERE k = 'a'        UPDATE kv SET v = v + 10 WHERE k = 'acct:1'
  DELETE FROM kv WHERE k = 'a'
  BEGIN / COMMIT / ROLLBACK                  (outside BEGIN each statement is its own transaction)
  SET durability = sync|semi_sync|async      SET consistency = strong | stale '500ms'
  GET a   PUT a 'x'   DEL a
  Strings: 'text' ('' is a quote), x'00ff' for bytes.
Meta-commands:
  \\?                help           \\q              quit
  \\timing [on|off]  time statements
  \\x [on|off]       expanded rows  \\format table|csv|tsv|json
  \\status           the cluster (as `trellis status`)
  \\i FILE           run the statements of FILE
";

/// Meta-commands, for completion.
const META_COMMANDS: &[&str] = &[
    "\\?", "\\q", "\\timing", "\\x", "\\format", "\\status", "\\i",
];

impl Shell {
    fn prompt(&self) -> String {
        let state = if !sql::is_blank(&self.buffer) {
            "-"
        } else {
            match self.session.status() {
                TxnStatus::Idle => "=",
                TxnStatus::Open => "=*",
                TxnStatus::Failed => "=!",
            }
        };
        format!("trellis@{}{state}> ", self.addr)
    }

    fn print(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Prints an error; stops the run unless interactive.
    fn report(&self, text: &str, code: i32) -> Result<(), Stop> {
        let _ = std::io::stdout().flush();
        eprintln!("{text}");
        if self.interactive {
            Ok(())
        } else {
            Err(Stop(code))
        }
    }

    /// Runs a whole text (a `-c` argument, a file): its lines, then what is
    /// left without a final `;`.
    fn run_text(&mut self, text: &str) -> Result<Flow, Stop> {
        for line in text.lines() {
            if let Flow::Quit = self.feed_line(line)? {
                return Ok(Flow::Quit);
            }
        }
        self.finish()?;
        Ok(Flow::Continue)
    }

    fn run_file(&mut self, path: &std::path::Path) -> Result<Flow, Stop> {
        match std::fs::read_to_string(path) {
            Ok(text) => self.run_text(&text),
            Err(e) => {
                self.report(
                    &format!("ERROR: cannot read {}: {e}", path.display()),
                    EXIT_STATEMENT_FAILED,
                )?;
                Ok(Flow::Continue)
            }
        }
    }

    /// Runs what is left in the buffer (input ended without a `;`).
    fn finish(&mut self) -> Result<(), Stop> {
        let rest = std::mem::take(&mut self.buffer);
        if !sql::is_blank(&rest) {
            self.statement(rest.trim())?;
        }
        Ok(())
    }

    /// One line of input: a meta-command (at the start of a statement), or
    /// text added to the statement being typed; every statement completed
    /// by a `;` runs.
    fn feed_line(&mut self, line: &str) -> Result<Flow, Stop> {
        if sql::is_blank(&self.buffer) && line.trim_start().starts_with('\\') {
            self.buffer.clear();
            return self.meta(line.trim());
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        let (done, rest) = sql::split_statements(&self.buffer);
        self.buffer = if sql::is_blank(&rest) {
            String::new()
        } else {
            rest
        };
        for stmt in done {
            self.statement(&stmt)?;
        }
        Ok(Flow::Continue)
    }

    fn statement(&mut self, text: &str) -> Result<(), Stop> {
        let started = Instant::now();
        let stmt = match sql::parse(text) {
            Ok(stmt) => stmt,
            Err(e) => {
                self.session.fail_transaction();
                return self.report(
                    &format!(
                        "ERROR: {}\nCODE: 42601 syntax_error\n{}",
                        e.message,
                        e.caret(text)
                    ),
                    EXIT_STATEMENT_FAILED,
                );
            }
        };
        let result = self.runtime.block_on(self.session.execute(&stmt));
        let elapsed = started.elapsed();
        match result {
            Ok(output) => {
                let mut text = sql::render(&output, self.format, self.expanded);
                if self.timing {
                    text.push_str(&format!("Time: {:.3} ms\n", elapsed.as_secs_f64() * 1000.0));
                }
                self.print(&text);
                // After the rows, on standard error, like psql's notices:
                // never mixed into output a script parses.
                for notice in sql::notices(&output) {
                    eprintln!("{notice}");
                }
                Ok(())
            }
            Err(e) => self.sql_error(&e),
        }
    }

    fn sql_error(&self, e: &SqlError) -> Result<(), Stop> {
        if e.connection {
            let mut e = e.clone();
            e.hint.get_or_insert_with(|| connection_hint(&self.addr));
            return self.report(&e.render(), EXIT_CANNOT_CONNECT);
        }
        self.report(&e.render(), EXIT_STATEMENT_FAILED)
    }

    fn meta(&mut self, line: &str) -> Result<Flow, Stop> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg = words.next();
        match command {
            "\\q" | "\\quit" => return Ok(Flow::Quit),
            "\\?" | "\\h" | "\\help" => self.print(HELP),
            "\\timing" => {
                self.timing = toggle(self.timing, arg);
                self.print(&format!("Timing is {}.\n", on_off(self.timing)));
            }
            "\\x" => {
                self.expanded = toggle(self.expanded, arg);
                self.print(&format!("Expanded display is {}.\n", on_off(self.expanded)));
            }
            "\\format" | "\\pset" => {
                let value = if command == "\\pset" {
                    words.next()
                } else {
                    arg
                };
                match value.map(str::parse::<Format>) {
                    Some(Ok(f)) => {
                        self.format = f;
                        self.print(&format!("Output format is {}.\n", format_name(f)));
                    }
                    Some(Err(m)) => self.report(&format!("ERROR: {m}"), EXIT_STATEMENT_FAILED)?,
                    None => {
                        self.print(&format!("Output format is {}.\n", format_name(self.format)))
                    }
                }
            }
            "\\status" => {
                let started = Instant::now();
                match self.runtime.block_on(crate::status::fetch(&self.addr)) {
                    Ok(status) => {
                        let mut text = crate::status::table(&status);
                        if self.timing {
                            text.push_str(&format!(
                                "Time: {:.3} ms\n",
                                started.elapsed().as_secs_f64() * 1000.0
                            ));
                        }
                        self.print(&text);
                    }
                    Err(e) => self.report(
                        &format!(
                            "ERROR: {e:#}\nCODE: 08006 connection_failure\nHINT: {}",
                            connection_hint(&self.addr)
                        ),
                        EXIT_CANNOT_CONNECT,
                    )?,
                }
            }
            "\\i" | "\\include" => match arg {
                Some(path) => return self.run_file(std::path::Path::new(path)),
                None => self.report("ERROR: \\i needs a file name", EXIT_STATEMENT_FAILED)?,
            },
            other => self.report(
                &format!("ERROR: invalid command {other}\nHINT: try \\? for help"),
                EXIT_STATEMENT_FAILED,
            )?,
        }
        Ok(Flow::Continue)
    }

    fn interactive(&mut self) -> Result<(), Stop> {
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .completion_type(rustyline::CompletionType::List)
            .build();
        let mut editor: rustyline::Editor<ShellHelper, rustyline::history::FileHistory> =
            rustyline::Editor::with_config(config).map_err(|e| {
                eprintln!("ERROR: cannot set up the terminal: {e}");
                Stop(EXIT_STATEMENT_FAILED)
            })?;
        editor.set_helper(Some(ShellHelper));
        let history = history_path();
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        self.print(&format!(
            "trellis sql: connected to {}. Type \\? for help, \\q to quit.\n",
            self.addr
        ));
        loop {
            let prompt = self.prompt();
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if let Flow::Quit = self.feed_line(&line)? {
                        break;
                    }
                }
                // Ctrl-C drops the statement being typed, like psql.
                Err(ReadlineError::Interrupted) => self.buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("ERROR: reading the terminal: {e}");
                    break;
                }
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        Ok(())
    }
}

fn toggle(current: bool, arg: Option<&str>) -> bool {
    match arg {
        Some("on") => true,
        Some("off") => false,
        _ => !current,
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Table => "table",
        Format::Csv => "csv",
        Format::Tsv => "tsv",
        Format::Json => "json",
    }
}

/// `$TRELLIS_SQL_HISTORY`, else `~/.trellis_sql_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(HISTORY_ENV) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE))
}

/// Completion of keywords and meta-commands.
struct ShellHelper;

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| c.is_whitespace() || matches!(c, '(' | ',' | ';'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        Ok((start, completions(word)))
    }
}

fn completions(word: &str) -> Vec<Pair> {
    let pair = |s: String| Pair {
        display: s.clone(),
        replacement: s,
    };
    if word.starts_with('\\') {
        return META_COMMANDS
            .iter()
            .filter(|m| m.starts_with(word))
            .map(|m| pair(m.to_string()))
            .collect();
    }
    if word.is_empty() {
        return Vec::new();
    }
    let lower = word.chars().all(|c| !c.is_ascii_uppercase());
    sql::KEYWORDS
        .iter()
        .filter(|k| k.len() > 1 && k.starts_with(&word.to_ascii_uppercase()))
        .map(|k| {
            pair(if lower {
                k.to_ascii_lowercase()
            } else {
                k.to_string()
            })
        })
        .collect()
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl rustyline::Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_keywords_in_the_case_typed_and_meta_commands() {
        let names = |w: &str| -> Vec<String> {
            completions(w).into_iter().map(|p| p.replacement).collect()
        };
        assert_eq!(names("SEL"), vec!["SELECT"]);
        assert_eq!(names("sel"), vec!["select"]);
        assert!(names("\\t").contains(&"\\timing".to_string()));
        assert!(names("").is_empty());
    }
}
