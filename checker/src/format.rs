//! The history text format: how harnesses and load testers dump histories
//! and the checker reads them back. The only module that touches files.
//!
//! # Format (v1)
//!
//! UTF-8 text, one operation per line, in history order:
//!
//! ```text
//! <process> <kind> <time_ns> <micro-op>*
//! ```
//!
//! - Fields are separated by one or more spaces or tabs; no field contains
//!   whitespace.
//! - `process` and `time_ns` are unsigned decimal integers; `kind` is one of
//!   `invoke`, `ok`, `fail`, `info`.
//! - Each micro-op starts with a short tag (one or two letters) that fixes
//!   how many fields follow, so a line parses without lookahead.
//! - Empty lines and lines starting with `#` are ignored; [`write()`] starts
//!   with a `#` header naming the format.
//!
//! Micro-ops per workload (`_` = result not known, as in an invocation):
//!
//! | workload | micro-op | fields |
//! |---|---|---|
//! | list-append | append | `a <key> <value>` |
//! | list-append | read | `r <key> <list>`, list = `_`, `[]` or `[1,2,3]` (no spaces) |
//! | list-append | stale read | `rs <key> <bound_ns> <list>`, list as for `r`: a read with consistency STALE(`bound_ns`) |
//! | bank | transfer | `t <from> <to> <amount>` |
//! | bank | read | `r <balances>`, balances = `_`, `[]` or `[0=10,1=-5]` (account=balance) |
//! | register | write | `w <key> <value>` |
//! | register | read | `r <key> <value>`, value = `_`, `nil` (absent) or a number |
//! | register | compare-and-set | `c <key> <expected> <new>` |
//!
//! For example, a list-append transaction that appends 3 to key 7 and reads
//! key 2, then commits:
//!
//! ```text
//! 4 invoke 1000 a 7 3 r 2 _
//! 4 ok 1850 a 7 3 r 2 [1,5]
//! ```
//!
//! Parse errors name the line (from 1).

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::bank::BankMop;
use crate::history::{Mop, Op, OpKind};
use crate::register::RegisterMop;

/// The first line [`write()`] emits.
pub const HEADER: &str =
    "# trellis history v1: <process> <invoke|ok|fail|info> <time_ns> <micro-op>*";

/// A micro-op type with a text form.
pub trait TextMop: Sized {
    /// Appends the micro-op's fields, space-separated, to `out`.
    fn write(&self, out: &mut String);

    /// Reads one micro-op from the front of `fields`.
    fn parse(fields: &mut Fields<'_>) -> Result<Self, String>;
}

/// The fields of one line, consumed front to back.
#[derive(Debug)]
pub struct Fields<'a> {
    rest: std::iter::Peekable<std::str::SplitAsciiWhitespace<'a>>,
}

impl<'a> Fields<'a> {
    fn new(line: &'a str) -> Self {
        Fields {
            rest: line.split_ascii_whitespace().peekable(),
        }
    }

    /// The next field; `what` names it in the error.
    pub fn take(&mut self, what: &str) -> Result<&'a str, String> {
        self.rest
            .next()
            .ok_or_else(|| format!("expected {what}, found the end of the line"))
    }

    /// The next field as an unsigned integer.
    pub fn take_u64(&mut self, what: &str) -> Result<u64, String> {
        let field = self.take(what)?;
        parse_number(field, what)
    }

    /// Whether the line has no more fields.
    pub fn is_empty(&mut self) -> bool {
        self.rest.peek().is_none()
    }
}

fn parse_number<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, String> {
    field
        .parse()
        .map_err(|_| format!("expected {what} (an integer), found `{field}`"))
}

/// A line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Line number, from 1.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A history file that cannot be read.
#[derive(Debug)]
pub enum LoadError {
    /// Reading the file failed.
    Io(io::Error),
    /// Its text does not parse.
    Parse(ParseError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "reading the history: {e}"),
            LoadError::Parse(e) => write!(f, "parsing the history: {e}"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Io(e) => Some(e),
            LoadError::Parse(e) => Some(e),
        }
    }
}

/// Appends one operation's line (with its newline) to `out`; for
/// harnesses that write as they go.
pub fn write_line<M: TextMop>(op: &Op<M>, out: &mut String) {
    let _ = write!(out, "{} {} {}", op.process, op.kind.as_str(), op.time_ns);
    for mop in &op.txn {
        out.push(' ');
        mop.write(out);
    }
    out.push('\n');
}

/// The whole history as text, header first.
pub fn write<M: TextMop>(ops: &[Op<M>]) -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    out.push('\n');
    for op in ops {
        write_line(op, &mut out);
    }
    out
}

/// Parses a history.
pub fn parse<M: TextMop>(text: &str) -> Result<Vec<Op<M>>, ParseError> {
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let op = parse_line(trimmed).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

fn parse_line<M: TextMop>(line: &str) -> Result<Op<M>, String> {
    let mut fields = Fields::new(line);
    let process = fields.take_u64("a process")?;
    let kind = match fields.take("a kind")? {
        "invoke" => OpKind::Invoke,
        "ok" => OpKind::Ok,
        "fail" => OpKind::Fail,
        "info" => OpKind::Info,
        other => {
            return Err(format!(
                "expected invoke, ok, fail or info, found `{other}`"
            ));
        }
    };
    let time_ns = fields.take_u64("a time in ns")?;
    let mut txn = Vec::new();
    while !fields.is_empty() {
        txn.push(M::parse(&mut fields)?);
    }
    Ok(Op {
        process,
        kind,
        txn,
        time_ns,
    })
}

/// Writes a history file (replacing it).
pub fn save<M: TextMop>(path: &Path, ops: &[Op<M>]) -> io::Result<()> {
    std::fs::write(path, write(ops))
}

/// Reads a history file.
pub fn load<M: TextMop>(path: &Path) -> Result<Vec<Op<M>>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(LoadError::Io)?;
    parse(&text).map_err(LoadError::Parse)
}

/// `[a,b,c]` with each item written by `item`.
fn write_list<T>(out: &mut String, items: &[T], item: impl Fn(&mut String, &T)) {
    out.push('[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(out, x);
    }
    out.push(']');
}

/// `_` → `None`; `[…]` → the items parsed by `item`.
fn parse_list<T>(
    field: &str,
    what: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, String> {
    if field == "_" {
        return Ok(None);
    }
    let inner = field
        .strip_prefix('[')
        .and_then(|f| f.strip_suffix(']'))
        .ok_or_else(|| format!("expected {what} like `[1,2]`, `[]` or `_`, found `{field}`"))?;
    if inner.is_empty() {
        return Ok(Some(Vec::new()));
    }
    inner
        .split(',')
        .map(item)
        .collect::<Result<Vec<T>, String>>()
        .map(Some)
}

impl TextMop for Mop {
    fn write(&self, out: &mut String) {
        match self {
            Mop::Append { key, value } => {
                let _ = write!(out, "a {key} {value}");
            }
            Mop::Read { key, value } => {
                let _ = write!(out, "r {key} ");
                write_u64_list(out, value.as_deref());
            }
            Mop::StaleRead {
                key,
                bound_ns,
                value,
            } => {
                let _ = write!(out, "rs {key} {bound_ns} ");
                write_u64_list(out, value.as_deref());
            }
        }
    }

    fn parse(fields: &mut Fields<'_>) -> Result<Self, String> {
        match fields.take("a micro-op")? {
            "a" => Ok(Mop::Append {
                key: fields.take_u64("a key")?,
                value: fields.take_u64("a value")?,
            }),
            "r" => {
                let key = fields.take_u64("a key")?;
                let value = parse_u64_list(fields)?;
                Ok(Mop::Read { key, value })
            }
            "rs" => {
                let key = fields.take_u64("a key")?;
                let bound_ns = fields.take_u64("a staleness bound in ns")?;
                let value = parse_u64_list(fields)?;
                Ok(Mop::StaleRead {
                    key,
                    bound_ns,
                    value,
                })
            }
            other => Err(format!(
                "expected a list-append micro-op (a, r or rs), found `{other}`"
            )),
        }
    }
}

/// A list-append read's result: `_` or `[1,2,3]`.
fn write_u64_list(out: &mut String, value: Option<&[u64]>) {
    match value {
        None => out.push('_'),
        Some(list) => write_list(out, list, |o, v| {
            let _ = write!(o, "{v}");
        }),
    }
}

/// The next field as a list-append read's result.
fn parse_u64_list(fields: &mut Fields<'_>) -> Result<Option<Vec<u64>>, String> {
    parse_list(fields.take("a list")?, "a list", |v| {
        parse_number(v, "a list element")
    })
}

impl TextMop for BankMop {
    fn write(&self, out: &mut String) {
        match self {
            BankMop::Transfer { from, to, amount } => {
                let _ = write!(out, "t {from} {to} {amount}");
            }
            BankMop::Read { balances } => {
                out.push_str("r ");
                match balances {
                    None => out.push('_'),
                    Some(list) => write_list(out, list, |o, (account, balance)| {
                        let _ = write!(o, "{account}={balance}");
                    }),
                }
            }
        }
    }

    fn parse(fields: &mut Fields<'_>) -> Result<Self, String> {
        match fields.take("a micro-op")? {
            "t" => Ok(BankMop::Transfer {
                from: fields.take_u64("an account")?,
                to: fields.take_u64("an account")?,
                amount: fields.take_u64("an amount")?,
            }),
            "r" => {
                let balances = parse_list(fields.take("balances")?, "balances", |pair| {
                    let (account, balance) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("expected account=balance, found `{pair}`"))?;
                    Ok((
                        parse_number(account, "an account")?,
                        parse_number(balance, "a balance")?,
                    ))
                })?;
                Ok(BankMop::Read { balances })
            }
            other => Err(format!(
                "expected a bank micro-op (t or r), found `{other}`"
            )),
        }
    }
}

impl TextMop for RegisterMop {
    fn write(&self, out: &mut String) {
        let _ = match self {
            RegisterMop::Write { key, value } => write!(out, "w {key} {value}"),
            RegisterMop::Read { key, value: None } => write!(out, "r {key} _"),
            RegisterMop::Read {
                key,
                value: Some(None),
            } => write!(out, "r {key} nil"),
            RegisterMop::Read {
                key,
                value: Some(Some(v)),
            } => write!(out, "r {key} {v}"),
            RegisterMop::Cas { key, expected, new } => write!(out, "c {key} {expected} {new}"),
        };
    }

    fn parse(fields: &mut Fields<'_>) -> Result<Self, String> {
        match fields.take("a micro-op")? {
            "w" => Ok(RegisterMop::Write {
                key: fields.take_u64("a key")?,
                value: fields.take_u64("a value")?,
            }),
            "r" => {
                let key = fields.take_u64("a key")?;
                let value = match fields.take("a value")? {
                    "_" => None,
                    "nil" => Some(None),
                    v => Some(Some(parse_number(v, "a value, `nil` or `_`")?)),
                };
                Ok(RegisterMop::Read { key, value })
            }
            "c" => Ok(RegisterMop::Cas {
                key: fields.take_u64("a key")?,
                expected: fields.take_u64("an expected value")?,
                new: fields.take_u64("a new value")?,
            }),
            other => Err(format!(
                "expected a register micro-op (w, r or c), found `{other}`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_append_round_trips() {
        let ops: Vec<Op<Mop>> = vec![
            Op::invoke(
                4,
                1000,
                vec![
                    Mop::Append { key: 7, value: 3 },
                    Mop::Read {
                        key: 2,
                        value: None,
                    },
                ],
            ),
            Op::ok(
                4,
                1850,
                vec![
                    Mop::Append { key: 7, value: 3 },
                    Mop::Read {
                        key: 2,
                        value: Some(vec![1, 5]),
                    },
                ],
            ),
            Op::invoke(
                5,
                1900,
                vec![Mop::Read {
                    key: 9,
                    value: None,
                }],
            ),
            Op::ok(
                5,
                1901,
                vec![Mop::Read {
                    key: 9,
                    value: Some(vec![]),
                }],
            ),
            Op::invoke(6, 2000, vec![]),
            Op::info(6, u64::MAX, vec![]),
            Op::fail(
                7,
                0,
                vec![Mop::Append {
                    key: u64::MAX,
                    value: 0,
                }],
            ),
        ];
        let text = write(&ops);
        assert!(text.starts_with(HEADER));
        assert!(text.contains("\n4 ok 1850 a 7 3 r 2 [1,5]\n"), "{text}");
        assert!(text.contains("\n5 ok 1901 r 9 []\n"), "{text}");
        assert_eq!(parse::<Mop>(&text).unwrap(), ops);
    }

    #[test]
    fn stale_reads_round_trip() {
        let rs = |key: u64, bound_ns: u64, value: Option<Vec<u64>>| Mop::StaleRead {
            key,
            bound_ns,
            value,
        };
        let ops: Vec<Op<Mop>> = vec![
            Op::invoke(3, 10, vec![rs(7, 500, None), rs(2, 0, None)]),
            Op::ok(
                3,
                20,
                vec![rs(7, 500, Some(vec![1, 2, 3])), rs(2, 0, Some(vec![]))],
            ),
            Op::invoke(4, 30, vec![rs(u64::MAX, u64::MAX, None)]),
            Op::info(4, 40, vec![rs(u64::MAX, u64::MAX, None)]),
        ];
        let text = write(&ops);
        assert!(
            text.contains("\n3 invoke 10 rs 7 500 _ rs 2 0 _\n"),
            "{text}"
        );
        assert!(
            text.contains("\n3 ok 20 rs 7 500 [1,2,3] rs 2 0 []\n"),
            "{text}"
        );
        assert_eq!(parse::<Mop>(&text).unwrap(), ops);
        // A stale read and a strong read of the same list differ in text.
        let strong = write(&[Op::ok(
            3,
            20,
            vec![Mop::Read {
                key: 7,
                value: Some(vec![1, 2, 3]),
            }],
        )]);
        assert!(strong.contains("\n3 ok 20 r 7 [1,2,3]\n"), "{strong}");

        let bad = |text: &str| parse::<Mop>(text).unwrap_err().message;
        assert!(bad("1 ok 5 rs 1 [1]\n").contains("bound"));
        assert!(bad("1 ok 5 rs 1 100\n").contains("list"));
        assert!(bad("1 ok 5 rs 1 x [1]\n").contains("`x`"));
    }

    #[test]
    fn bank_and_register_round_trip() {
        let bank: Vec<Op<BankMop>> = vec![
            Op::invoke(
                0,
                1,
                vec![BankMop::Transfer {
                    from: 0,
                    to: 1,
                    amount: 5,
                }],
            ),
            Op::invoke(1, 2, vec![BankMop::Read { balances: None }]),
            Op::ok(
                1,
                3,
                vec![BankMop::Read {
                    balances: Some(vec![(0, -5), (1, 15)]),
                }],
            ),
            Op::ok(
                2,
                4,
                vec![BankMop::Read {
                    balances: Some(vec![]),
                }],
            ),
        ];
        assert_eq!(parse::<BankMop>(&write(&bank)).unwrap(), bank);

        let register: Vec<Op<RegisterMop>> = vec![
            Op::invoke(0, 1, vec![RegisterMop::Write { key: 1, value: 2 }]),
            Op::invoke(
                1,
                2,
                vec![RegisterMop::Read {
                    key: 1,
                    value: None,
                }],
            ),
            Op::ok(
                1,
                3,
                vec![RegisterMop::Read {
                    key: 1,
                    value: Some(None),
                }],
            ),
            Op::ok(
                1,
                4,
                vec![RegisterMop::Read {
                    key: 1,
                    value: Some(Some(2)),
                }],
            ),
            Op::fail(
                0,
                5,
                vec![RegisterMop::Cas {
                    key: 1,
                    expected: 2,
                    new: 3,
                }],
            ),
        ];
        assert_eq!(parse::<RegisterMop>(&write(&register)).unwrap(), register);
    }

    #[test]
    fn tolerates_comments_blank_lines_and_extra_spaces() {
        let text = "# a comment\n\n  1\tinvoke  5 a 1 2  \r\n1 ok 6 a 1 2\n";
        let ops = parse::<Mop>(text).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].txn, vec![Mop::Append { key: 1, value: 2 }]);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = |text: &str| parse::<Mop>(text).unwrap_err();
        let e = bad("# header\n1 invoke 5 a 1 2\n1 okay 6 a 1 2\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("`okay`"), "{e}");
        assert_eq!(e.to_string(), format!("line 3: {}", e.message));
        assert_eq!(bad("1 invoke 5 a 1\n").line, 1);
        assert!(bad("1 invoke 5 a 1\n").message.contains("value"));
        assert!(bad("x invoke 5\n").message.contains("process"));
        assert!(bad("1 ok 5 r 1 [1, 2]\n").message.contains("list"));
        assert!(bad("1 ok 5 r 1 [1,x]\n").message.contains("`x`"));
        assert!(bad("1 ok 5 w 1 2\n").message.contains("list-append"));
        assert!(
            parse::<BankMop>("1 ok 5 r [0:1]\n")
                .unwrap_err()
                .message
                .contains("account=balance")
        );
    }

    #[test]
    fn saves_and_loads_files() {
        let dir =
            std::env::temp_dir().join(format!("trellis-checker-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.txt");
        let ops: Vec<Op<Mop>> = vec![Op::invoke(1, 1, vec![Mop::Append { key: 1, value: 1 }])];
        save(&path, &ops).unwrap();
        assert_eq!(load::<Mop>(&path).unwrap(), ops);
        std::fs::write(&path, "1 invoke 1 a 1 1\nnonsense\n").unwrap();
        match load::<Mop>(&path) {
            Err(LoadError::Parse(e)) => assert_eq!(e.line, 2),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(matches!(
            load::<Mop>(&dir.join("missing")),
            Err(LoadError::Io(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
