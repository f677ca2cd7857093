//! The SQL-ish language of `trellis sql`: parser ([`parse`]), session and
//! executor ([`Session`]), output formats ([`mod@format`]).

mod exec;
pub mod format;
mod parse;

pub use exec::{Output, Session, SqlError, TxnStatus};
pub use format::{Format, notices, render};
pub use parse::{
    Column, Filter, KEYWORDS, NewValue, ParseError, Statement, is_blank, parse, parse_duration,
    split_statements,
};
