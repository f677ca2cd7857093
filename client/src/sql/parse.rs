//! A small hand-written lexer and parser. Every error carries the character
//! position it is about, for a caret under the statement.

use std::time::Duration;

use crate::client::{Consistency, Durability};

/// Keywords the shell knows (for completion and for error messages).
pub const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "IN",
    "LIKE",
    "LIMIT",
    "INSERT",
    "UPSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "GET",
    "PUT",
    "DEL",
    "KV",
    "K",
    "V",
    "VERSION",
    "DURABILITY",
    "CONSISTENCY",
    "SYNC",
    "SEMI_SYNC",
    "ASYNC",
    "STRONG",
    "STALE",
    "TRANSACTION",
    "ABORT",
    "END",
    "START",
];

/// Words that may start a statement.
const STATEMENT_STARTS: &[&str] = &[
    "SELECT", "INSERT", "UPSERT", "UPDATE", "DELETE", "BEGIN", "START", "COMMIT", "END",
    "ROLLBACK", "ABORT", "SET", "GET", "PUT", "DEL",
];

/// A parse error: what is wrong and where (a character offset into the
/// statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub pos: usize,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at character {})", self.message, self.pos + 1)
    }
}

impl ParseError {
    fn new(message: impl Into<String>, pos: usize) -> ParseError {
        ParseError {
            message: message.into(),
            pos,
        }
    }

    /// The psql-like position lines: `LINE n: text` and a caret under the
    /// offending character.
    pub fn caret(&self, sql: &str) -> String {
        let mut line_no = 1;
        let mut line_start = 0; // in chars
        for (i, ch) in sql.chars().enumerate() {
            if i >= self.pos {
                break;
            }
            if ch == '\n' {
                line_no += 1;
                line_start = i + 1;
            }
        }
        let line: String = sql
            .chars()
            .skip(line_start)
            .take_while(|c| *c != '\n')
            .collect();
        let prefix = format!("LINE {line_no}: ");
        let col = self.pos - line_start;
        format!(
            "{prefix}{line}\n{}^",
            " ".repeat(prefix.chars().count() + col)
        )
    }
}

/// Columns of the table `kv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    K,
    V,
    Version,
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::K => "k",
            Column::V => "v",
            Column::Version => "version",
        }
    }
}

/// Which keys a statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `k = 'a'`
    Eq(Vec<u8>),
    /// `k IN ('a', 'b')`
    In(Vec<Vec<u8>>),
    /// `k LIKE 'user:%'` (or no WHERE: the empty prefix)
    Prefix(Vec<u8>),
}

/// The new value of an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    /// `v = 'x'`
    Literal(Vec<u8>),
    /// `v = v + n` (or `v - n`): integer arithmetic on the current value.
    Add(i64),
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Select {
        columns: Vec<Column>,
        filter: Filter,
        limit: Option<u32>,
    },
    /// `INSERT` (fails on an existing key) or `UPSERT`.
    Insert {
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        upsert: bool,
    },
    Update {
        value: NewValue,
        filter: Filter,
    },
    Delete {
        filter: Filter,
    },
    Begin,
    Commit,
    Rollback,
    SetDurability(Durability),
    SetConsistency(Consistency),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(Vec<u8>),
    Int(i64),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    /// The text of the token as written (for messages).
    text: String,
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | ':' | '.' | '/')
}

fn lex(sql: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if (c == 'x' || c == 'X') && chars.get(i + 1) == Some(&'\'') {
            i += 2;
            let mut hex = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(ParseError::new("unterminated byte string", start)),
                    Some('\'') => break,
                    Some(h) => hex.push(*h),
                }
                i += 1;
            }
            i += 1;
            let bytes = hex::decode(&hex)
                .map_err(|e| ParseError::new(format!("bad byte string x'{hex}': {e}"), start))?;
            tokens.push(Token {
                tok: Tok::Str(bytes),
                pos: start,
                text: chars[start..i].iter().collect(),
            });
        } else if c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(ParseError::new("unterminated quoted string", start)),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => break,
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            tokens.push(Token {
                tok: Tok::Str(s.into_bytes()),
                pos: start,
                text: chars[start..i].iter().collect(),
            });
        } else if c.is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            if i < chars.len() && is_word_char(chars[i]) {
                // e.g. a bare key like 1abc in `GET 1abc`.
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token {
                    tok: Tok::Word(text.clone()),
                    pos: start,
                    text,
                });
                continue;
            }
            let n = text
                .parse::<i64>()
                .map_err(|_| ParseError::new(format!("integer {text} is out of range"), start))?;
            tokens.push(Token {
                tok: Tok::Int(n),
                pos: start,
                text,
            });
        } else if is_word_start(c) {
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            tokens.push(Token {
                tok: Tok::Word(text.clone()),
                pos: start,
                text,
            });
        } else if matches!(c, '(' | ')' | ',' | '=' | ';' | '*' | '+' | '-') {
            i += 1;
            tokens.push(Token {
                tok: Tok::Punct(c),
                pos: start,
                text: c.to_string(),
            });
        } else if c == '"' {
            return Err(ParseError::new(
                "strings are single-quoted: use 'text', not \"text\"",
                start,
            ));
        } else {
            return Err(ParseError::new(
                format!("unexpected character {c:?}"),
                start,
            ));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    i: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.i)
    }

    fn pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.i).cloned();
        self.i += 1;
        t
    }

    fn near(&self) -> String {
        match self.peek() {
            Some(t) => format!("at or near \"{}\"", t.text),
            None => "at end of input".to_string(),
        }
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(word))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.is_word(word) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<(), ParseError> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(ParseError::new(
                format!("syntax error {}: expected {word}", self.near()),
                self.pos(),
            ))
        }
    }

    fn is_punct(&self, c: char) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Punct(p), .. }) if *p == c)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(ParseError::new(
                format!("syntax error {}: expected \"{c}\"", self.near()),
                self.pos(),
            ))
        }
    }

    /// A string, bytes or integer literal, as bytes.
    fn literal(&mut self, what: &str) -> Result<Vec<u8>, ParseError> {
        match self.peek().map(|t| t.tok.clone()) {
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(s)
            }
            Some(Tok::Int(n)) => {
                self.i += 1;
                Ok(n.to_string().into_bytes())
            }
            Some(Tok::Punct('-')) => {
                self.i += 1;
                match self.next().map(|t| t.tok) {
                    Some(Tok::Int(n)) => Ok((-n).to_string().into_bytes()),
                    _ => Err(ParseError::new(
                        format!("syntax error: expected {what}"),
                        self.pos(),
                    )),
                }
            }
            _ => Err(ParseError::new(
                format!(
                    "syntax error {}: expected {what} (a quoted string)",
                    self.near()
                ),
                self.pos(),
            )),
        }
    }

    /// A key in the short forms: a literal or a bare word.
    fn bare_key(&mut self, verb: &str) -> Result<Vec<u8>, ParseError> {
        match self.peek().map(|t| t.tok.clone()) {
            Some(Tok::Word(w)) => {
                self.i += 1;
                Ok(w.into_bytes())
            }
            Some(Tok::Str(_) | Tok::Int(_)) => self.literal("a key"),
            _ => Err(ParseError::new(
                format!(
                    "wrong number of arguments: {verb} needs a key ({})",
                    self.near()
                ),
                self.pos(),
            )),
        }
    }

    fn end_of_statement(&mut self) -> Result<(), ParseError> {
        self.eat_punct(';');
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(ParseError::new(
                format!(
                    "syntax error at or near \"{}\": expected end of statement",
                    t.text
                ),
                t.pos,
            )),
        }
    }

    fn table(&mut self) -> Result<(), ParseError> {
        if self.eat_word("kv") {
            return Ok(());
        }
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w),
                pos,
                ..
            }) => Err(ParseError::new(
                format!("relation \"{w}\" does not exist (the only table is kv)"),
                *pos,
            )),
            _ => Err(ParseError::new(
                format!("syntax error {}: expected the table name kv", self.near()),
                self.pos(),
            )),
        }
    }

    fn column_k(&mut self) -> Result<(), ParseError> {
        if self.eat_word("k") {
            return Ok(());
        }
        Err(ParseError::new(
            format!(
                "syntax error {}: only the key column k can be filtered",
                self.near()
            ),
            self.pos(),
        ))
    }

    fn filter(&mut self) -> Result<Filter, ParseError> {
        self.column_k()?;
        if self.eat_punct('=') {
            return Ok(Filter::Eq(self.literal("a key")?));
        }
        if self.eat_word("in") {
            self.expect_punct('(')?;
            let mut keys = vec![self.literal("a key")?];
            while self.eat_punct(',') {
                keys.push(self.literal("a key")?);
            }
            self.expect_punct(')')?;
            return Ok(Filter::In(keys));
        }
        if self.eat_word("like") {
            let pos = self.pos();
            let pattern = self.literal("a pattern")?;
            return like_prefix(&pattern, pos);
        }
        Err(ParseError::new(
            format!("syntax error {}: expected =, IN or LIKE", self.near()),
            self.pos(),
        ))
    }

    fn where_clause(&mut self, verb: &str) -> Result<Filter, ParseError> {
        if !self.eat_word("where") {
            return Err(ParseError::new(
                format!("{verb} needs a WHERE clause on k ({})", self.near()),
                self.pos(),
            ));
        }
        self.filter()
    }

    fn statement(&mut self) -> Result<Statement, ParseError> {
        let Some(first) = self.peek().cloned() else {
            return Err(ParseError::new("empty statement", 0));
        };
        let Tok::Word(word) = &first.tok else {
            return Err(ParseError::new(
                format!("syntax error at or near \"{}\"", first.text),
                first.pos,
            ));
        };
        let upper = word.to_ascii_uppercase();
        if !STATEMENT_STARTS.contains(&upper.as_str()) {
            return Err(ParseError::new(
                format!(
                    "unknown keyword \"{word}\": a statement starts with {}",
                    STATEMENT_STARTS.join(", ")
                ),
                first.pos,
            ));
        }
        self.i += 1;
        let stmt = match upper.as_str() {
            "SELECT" => self.select()?,
            "INSERT" | "UPSERT" => {
                self.expect_word("into")?;
                self.table()?;
                self.expect_word("values")?;
                let mut rows = vec![self.row()?];
                while self.eat_punct(',') {
                    rows.push(self.row()?);
                }
                Statement::Insert {
                    rows,
                    upsert: upper == "UPSERT",
                }
            }
            "UPDATE" => {
                self.table()?;
                self.expect_word("set")?;
                if !self.eat_word("v") {
                    return Err(ParseError::new(
                        format!("syntax error {}: only v can be SET", self.near()),
                        self.pos(),
                    ));
                }
                self.expect_punct('=')?;
                let value = if self.eat_word("v") {
                    let sign = if self.eat_punct('+') {
                        1
                    } else if self.eat_punct('-') {
                        -1
                    } else {
                        return Err(ParseError::new(
                            format!("syntax error {}: expected + or -", self.near()),
                            self.pos(),
                        ));
                    };
                    match self.peek().map(|t| t.tok.clone()) {
                        Some(Tok::Int(n)) => {
                            self.i += 1;
                            NewValue::Add(sign * n)
                        }
                        _ => {
                            return Err(ParseError::new(
                                format!("syntax error {}: expected an integer", self.near()),
                                self.pos(),
                            ));
                        }
                    }
                } else {
                    NewValue::Literal(self.literal("a value")?)
                };
                let filter = self.where_clause("UPDATE")?;
                Statement::Update { value, filter }
            }
            "DELETE" => {
                self.expect_word("from")?;
                self.table()?;
                let filter = self.where_clause("DELETE")?;
                Statement::Delete { filter }
            }
            "BEGIN" | "START" => {
                if upper == "START" {
                    self.expect_word("transaction")?;
                } else {
                    self.eat_word("transaction");
                }
                Statement::Begin
            }
            "COMMIT" | "END" => {
                self.eat_word("transaction");
                Statement::Commit
            }
            "ROLLBACK" | "ABORT" => {
                self.eat_word("transaction");
                Statement::Rollback
            }
            "SET" => self.set()?,
            "GET" => {
                let key = self.bare_key("GET")?;
                Statement::Select {
                    columns: vec![Column::V],
                    filter: Filter::Eq(key),
                    limit: None,
                }
            }
            "PUT" => {
                let key = self.bare_key("PUT")?;
                if self.peek().is_none() || self.is_punct(';') {
                    return Err(ParseError::new(
                        "wrong number of arguments: PUT needs a key and a value",
                        self.pos(),
                    ));
                }
                let value = self.literal("a value")?;
                Statement::Insert {
                    rows: vec![(key, value)],
                    upsert: true,
                }
            }
            "DEL" => {
                let key = self.bare_key("DEL")?;
                Statement::Delete {
                    filter: Filter::Eq(key),
                }
            }
            _ => unreachable!("checked against STATEMENT_STARTS"),
        };
        self.end_of_statement()?;
        Ok(stmt)
    }

    fn select(&mut self) -> Result<Statement, ParseError> {
        let mut columns = Vec::new();
        loop {
            if self.eat_punct('*') {
                columns.extend([Column::K, Column::V]);
            } else if self.eat_word("k") {
                columns.push(Column::K);
            } else if self.eat_word("v") {
                columns.push(Column::V);
            } else if self.eat_word("version") {
                columns.push(Column::Version);
            } else {
                let what = match self.peek() {
                    Some(Token {
                        tok: Tok::Word(w), ..
                    }) if !w.eq_ignore_ascii_case("from") => {
                        format!("column \"{w}\" does not exist (columns: k, v, version)")
                    }
                    _ => format!(
                        "syntax error {}: expected a column (k, v, version or *)",
                        self.near()
                    ),
                };
                return Err(ParseError::new(what, self.pos()));
            }
            if !self.eat_punct(',') {
                break;
            }
        }
        self.expect_word("from")?;
        self.table()?;
        let filter = if self.eat_word("where") {
            self.filter()?
        } else {
            Filter::Prefix(Vec::new())
        };
        let limit = if self.eat_word("limit") {
            match self.peek().map(|t| t.tok.clone()) {
                Some(Tok::Int(n)) if (0..=i64::from(u32::MAX)).contains(&n) => {
                    self.i += 1;
                    Some(n as u32)
                }
                _ => {
                    return Err(ParseError::new(
                        format!(
                            "syntax error {}: LIMIT needs a non-negative integer",
                            self.near()
                        ),
                        self.pos(),
                    ));
                }
            }
        } else {
            None
        };
        Ok(Statement::Select {
            columns,
            filter,
            limit,
        })
    }

    fn row(&mut self) -> Result<(Vec<u8>, Vec<u8>), ParseError> {
        let open = self.pos();
        self.expect_punct('(')?;
        let mut values = vec![self.literal("a value")?];
        while self.eat_punct(',') {
            values.push(self.literal("a value")?);
        }
        let close = self.pos();
        self.expect_punct(')')?;
        if values.len() != 2 {
            return Err(ParseError::new(
                format!(
                    "wrong number of values: a row of kv has 2 (k, v), this one has {}",
                    values.len()
                ),
                if values.len() > 2 { close } else { open },
            ));
        }
        let v = values.pop().unwrap_or_default();
        let k = values.pop().unwrap_or_default();
        Ok((k, v))
    }

    fn set(&mut self) -> Result<Statement, ParseError> {
        if self.eat_word("durability") {
            self.set_equals()?;
            let pos = self.pos();
            let d = match self.next().map(|t| t.tok) {
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("sync") => Durability::Sync,
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("semi_sync") => Durability::SemiSync,
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("async") => Durability::Async,
                _ => {
                    return Err(ParseError::new(
                        "durability is sync, semi_sync or async",
                        pos,
                    ));
                }
            };
            return Ok(Statement::SetDurability(d));
        }
        if self.eat_word("consistency") {
            self.set_equals()?;
            if self.eat_word("strong") {
                return Ok(Statement::SetConsistency(Consistency::Strong));
            }
            if self.eat_word("stale") {
                let pos = self.pos();
                let text = self.literal("a staleness bound like '500ms'")?;
                let d = parse_duration(&String::from_utf8_lossy(&text))
                    .map_err(|m| ParseError::new(m, pos))?;
                return Ok(Statement::SetConsistency(Consistency::Stale(d)));
            }
            return Err(ParseError::new(
                format!("consistency is strong or stale '500ms' ({})", self.near()),
                self.pos(),
            ));
        }
        Err(ParseError::new(
            format!(
                "unknown setting {}: SET durability or SET consistency",
                self.near()
            ),
            self.pos(),
        ))
    }

    fn set_equals(&mut self) -> Result<(), ParseError> {
        if self.eat_punct('=') || self.eat_word("to") {
            Ok(())
        } else {
            Err(ParseError::new(
                format!("syntax error {}: expected = or TO", self.near()),
                self.pos(),
            ))
        }
    }
}

/// `'abc%'` → prefix `abc`; no `%` → an exact key. `\%` and `\_` are the
/// characters themselves; any other wildcard is refused.
fn like_prefix(pattern: &[u8], pos: usize) -> Result<Filter, ParseError> {
    let mut prefix = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => {
                prefix.push(pattern[i + 1]);
                i += 2;
                continue;
            }
            b'%' if i + 1 == pattern.len() => return Ok(Filter::Prefix(prefix)),
            b'%' | b'_' => {
                return Err(ParseError::new(
                    "only prefix patterns like 'abc%' are supported (write \\_ or \\% for the character itself)",
                    pos,
                ));
            }
            b => prefix.push(b),
        }
        i += 1;
    }
    Ok(Filter::Eq(prefix))
}

/// `500ms`, `2s`, `1m`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use e.g. '500ms', '2s' or '1m'"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit {unit:?}: use ms, s or m")),
    }
}

/// Parses one statement (a trailing `;` is allowed).
pub fn parse(sql: &str) -> Result<Statement, ParseError> {
    let tokens = lex(sql)?;
    let mut parser = Parser {
        tokens,
        i: 0,
        end: sql.trim_end().chars().count(),
    };
    parser.statement()
}

/// Splits input into complete statements, each with its terminating `;`
/// removed, and returns the unfinished rest (text after the last `;`, which
/// may be only whitespace). Semicolons inside quoted strings and `--`
/// comments do not count.
pub fn split_statements(input: &str) -> (Vec<String>, String) {
    let mut done = Vec::new();
    let mut current = String::new();
    let mut chars = input.chars().peekable();
    let mut in_string = false;
    let mut in_comment = false;
    while let Some(c) = chars.next() {
        if in_comment {
            current.push(c);
            if c == '\n' {
                in_comment = false;
            }
            continue;
        }
        if in_string {
            current.push(c);
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    current.push('\'');
                    chars.next();
                } else {
                    in_string = false;
                }
            }
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                current.push(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                in_comment = true;
                current.push(c);
            }
            ';' => {
                let stmt = std::mem::take(&mut current);
                if !is_blank(&stmt) {
                    done.push(stmt.trim().to_string());
                }
            }
            _ => current.push(c),
        }
    }
    (done, current)
}

/// Only whitespace and `--` comments.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with("--")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Statement {
        parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}\n{}", e.caret(sql)))
    }

    fn err(sql: &str) -> ParseError {
        match parse(sql) {
            Ok(s) => panic!("{sql} parsed as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn selects() {
        assert_eq!(
            ok("SELECT v FROM kv WHERE k = 'a'"),
            Statement::Select {
                columns: vec![Column::V],
                filter: Filter::Eq(b"a".to_vec()),
                limit: None
            }
        );
        assert_eq!(
            ok("select k, v from KV where k in ('a','b');"),
            Statement::Select {
                columns: vec![Column::K, Column::V],
                filter: Filter::In(vec![b"a".to_vec(), b"b".to_vec()]),
                limit: None
            }
        );
        assert_eq!(
            ok("SELECT k, v FROM kv WHERE k LIKE 'user:%' LIMIT 10"),
            Statement::Select {
                columns: vec![Column::K, Column::V],
                filter: Filter::Prefix(b"user:".to_vec()),
                limit: Some(10)
            }
        );
        assert_eq!(
            ok("SELECT k, v, version FROM kv WHERE k = x'00ff'"),
            Statement::Select {
                columns: vec![Column::K, Column::V, Column::Version],
                filter: Filter::Eq(vec![0, 255]),
                limit: None
            }
        );
        assert_eq!(
            ok("SELECT * FROM kv"),
            Statement::Select {
                columns: vec![Column::K, Column::V],
                filter: Filter::Prefix(vec![]),
                limit: None
            }
        );
        assert_eq!(
            ok("SELECT v FROM kv WHERE k LIKE 'a\\_b'"),
            Statement::Select {
                columns: vec![Column::V],
                filter: Filter::Eq(b"a_b".to_vec()),
                limit: None
            }
        );
    }

    #[test]
    fn writes() {
        assert_eq!(
            ok("INSERT INTO kv VALUES ('a','1'), ('b','2')"),
            Statement::Insert {
                rows: vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"2".to_vec())
                ],
                upsert: false
            }
        );
        assert_eq!(
            ok("UPSERT INTO kv VALUES ('it''s', 100)"),
            Statement::Insert {
                rows: vec![(b"it's".to_vec(), b"100".to_vec())],
                upsert: true
            }
        );
        assert_eq!(
            ok("UPDATE kv SET v = 'x' WHERE k = 'a'"),
            Statement::Update {
                value: NewValue::Literal(b"x".to_vec()),
                filter: Filter::Eq(b"a".to_vec())
            }
        );
        assert_eq!(
            ok("UPDATE kv SET v = v + 10 WHERE k = 'acct:1'"),
            Statement::Update {
                value: NewValue::Add(10),
                filter: Filter::Eq(b"acct:1".to_vec())
            }
        );
        assert_eq!(
            ok("update kv set v = v - 7 where k like 'acct:%'"),
            Statement::Update {
                value: NewValue::Add(-7),
                filter: Filter::Prefix(b"acct:".to_vec())
            }
        );
        assert_eq!(
            ok("DELETE FROM kv WHERE k = 'a'"),
            Statement::Delete {
                filter: Filter::Eq(b"a".to_vec())
            }
        );
    }

    #[test]
    fn transactions_settings_and_short_forms() {
        assert_eq!(ok("BEGIN"), Statement::Begin);
        assert_eq!(ok("begin transaction;"), Statement::Begin);
        assert_eq!(ok("COMMIT"), Statement::Commit);
        assert_eq!(ok("ROLLBACK"), Statement::Rollback);
        assert_eq!(
            ok("SET durability = semi_sync"),
            Statement::SetDurability(Durability::SemiSync)
        );
        assert_eq!(
            ok("SET durability = async"),
            Statement::SetDurability(Durability::Async)
        );
        assert_eq!(
            ok("SET consistency = strong"),
            Statement::SetConsistency(Consistency::Strong)
        );
        assert_eq!(
            ok("SET consistency = stale '500ms'"),
            Statement::SetConsistency(Consistency::Stale(Duration::from_millis(500)))
        );
        assert_eq!(
            ok("GET user:1"),
            Statement::Select {
                columns: vec![Column::V],
                filter: Filter::Eq(b"user:1".to_vec()),
                limit: None
            }
        );
        assert_eq!(
            ok("PUT a 'x'"),
            Statement::Insert {
                rows: vec![(b"a".to_vec(), b"x".to_vec())],
                upsert: true
            }
        );
        assert_eq!(
            ok("DEL 'a b'"),
            Statement::Delete {
                filter: Filter::Eq(b"a b".to_vec())
            }
        );
    }

    #[test]
    fn unterminated_string_points_at_its_quote() {
        let sql = "SELECT v FROM kv WHERE k = 'abc";
        let e = err(sql);
        assert_eq!(e.pos, 27);
        assert!(e.message.contains("unterminated"), "{e}");
        assert_eq!(
            e.caret(sql),
            "LINE 1: SELECT v FROM kv WHERE k = 'abc\n                                   ^"
        );
    }

    #[test]
    fn unknown_keyword_points_at_it() {
        let e = err("  SELEC v FROM kv");
        assert_eq!(e.pos, 2);
        assert!(e.message.contains("unknown keyword \"SELEC\""), "{e}");
        let e = err("SELECT v FRM kv");
        assert_eq!(e.pos, 9);
        assert!(e.message.contains("expected from"), "{e}");
    }

    #[test]
    fn wrong_arity_points_at_the_row() {
        let sql = "INSERT INTO kv VALUES ('a','1'), ('b')";
        let e = err(sql);
        assert_eq!(e.pos, 33);
        assert!(e.message.contains("wrong number of values"), "{e}");
        let e = err("INSERT INTO kv VALUES ('a','1','2')");
        assert_eq!(e.pos, 34);
        let e = err("PUT a");
        assert_eq!(e.pos, 5);
        assert!(e.message.contains("PUT needs a key and a value"), "{e}");
        let e = err("GET");
        assert_eq!(e.pos, 3);
    }

    #[test]
    fn other_bad_input() {
        assert_eq!(err("SELECT v FROM users").pos, 14);
        assert_eq!(err("SELECT name FROM kv").pos, 7);
        assert_eq!(err("DELETE FROM kv").pos, 14);
        assert_eq!(err("SELECT v FROM kv WHERE k = 'a' extra").pos, 31);
        assert_eq!(err("SELECT v FROM kv WHERE k LIKE 'a%b'").pos, 30);
        assert_eq!(err("UPDATE kv SET v = v * 2 WHERE k = 'a'").pos, 20);
        assert_eq!(err("SET durability = fast").pos, 17);
        assert_eq!(err("SELECT v FROM kv WHERE k = x'zz'").pos, 27);
        assert_eq!(err("SELECT v FROM kv WHERE k = \"a\"").pos, 27);
    }

    #[test]
    fn caret_on_a_later_line() {
        let sql = "SELECT v\nFROM kv\nWHERE q = 'a'";
        let e = err(sql);
        assert_eq!(e.caret(sql), "LINE 3: WHERE q = 'a'\n              ^");
    }

    #[test]
    fn splitting_respects_quotes_and_comments() {
        let (done, rest) = split_statements("GET a; PUT b 'x;y'; -- c;\nSELECT v\nFROM kv");
        assert_eq!(done, vec!["GET a", "PUT b 'x;y'"]);
        assert_eq!(rest, " -- c;\nSELECT v\nFROM kv");
        let (done, rest) = split_statements("PUT a 'it''s;'; ");
        assert_eq!(done, vec!["PUT a 'it''s;'"]);
        assert!(is_blank(&rest));
        assert!(is_blank("  -- only a comment\n"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
    }
}
