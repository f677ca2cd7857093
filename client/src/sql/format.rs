//! Printing results: aligned table (psql-like), expanded rows, CSV, TSV,
//! JSON, and the notices that go with them on standard error.
//!
//! A value is text when it is UTF-8 whose only control characters are
//! newline, carriage return and tab; anything else prints as `\x` and hex
//! (like psql's bytea). Each format then writes text its own way: the table
//! spreads a multi-line value over lines with psql's `+` marks, CSV quotes
//! it, TSV escapes it as PostgreSQL's COPY text format does (`\n`, `\t`,
//! `\r`, `\\`), JSON as a JSON string.

use std::fmt::Write as _;

use crate::sql::exec::Output;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Tsv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "aligned" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            "json" => Ok(Format::Json),
            _ => Err(format!("unknown format {s:?}: table, csv, tsv or json")),
        }
    }
}

/// Control characters a text value may hold and still print as text.
const TEXT_CONTROLS: [char; 3] = ['\n', '\r', '\t'];

/// A cell as text: UTF-8 whose only control characters are newline,
/// carriage return and tab as is, anything else as `\x` and hex (like
/// psql's bytea).
pub fn cell(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !TEXT_CONTROLS.contains(&c)) =>
        {
            s.to_string()
        }
        _ => format!("\\x{}", hex::encode(bytes)),
    }
}

/// A cell's lines in the table formats: split at newlines, with carriage
/// returns and tabs shown as `\r` and `\t` so they cannot move the cursor.
fn table_lines(cell: &str) -> Vec<String> {
    cell.split('\n')
        .map(|line| line.replace('\r', "\\r").replace('\t', "\\t"))
        .collect()
}

/// A TSV field as PostgreSQL's COPY text format writes it: backslash,
/// newline, carriage return and tab escaped, so every row is one line.
fn tsv_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// What the shell says on standard error about `output` besides its rows:
/// a scan cut by a limit the statement did not choose, and the keys of
/// `IN (...)` that do not exist (they give no row, as in SQL).
pub fn notices(output: &Output) -> Vec<String> {
    let Output::Rows {
        rows,
        truncated,
        absent,
        ..
    } = output
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(limit) = truncated {
        out.push(format!(
            "NOTICE: more keys match than the {} row(s) shown: a scan returns at most {limit} rows \
             without LIMIT, and at most {} with it; add LIMIT n or narrow the prefix",
            rows.len(),
            trellis_types::limits::SCAN_LIMIT_MAX
        ));
    }
    if !absent.is_empty() {
        out.push(format!(
            "NOTICE: {} key(s) of IN (...) do not exist and give no row: {}",
            absent.len(),
            absent
                .iter()
                .map(|k| crate::error::quote_key(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn json_string(s: &str) -> String {
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

/// Renders one statement's output. `expanded` shows each row as a record
/// (table format only). Command tags are printed in every format but JSON.
pub fn render(output: &Output, format: Format, expanded: bool) -> String {
    let mut out = String::new();
    let (columns, rows, truncated) = match output {
        Output::Tag(tag) => {
            if format != Format::Json {
                out.push_str(tag);
                out.push('\n');
            }
            return out;
        }
        Output::Rows {
            columns,
            rows,
            truncated,
            ..
        } => (columns, rows, truncated.is_some()),
    };
    let text: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    match format {
        Format::Table if expanded => {
            let w = columns.iter().map(|c| width(c)).max().unwrap_or(0);
            if text.is_empty() {
                out.push_str("(0 rows)\n");
            }
            for (i, row) in text.iter().enumerate() {
                let _ = writeln!(out, "-[ RECORD {} ]{}", i + 1, "-".repeat(w.max(3)));
                for (c, v) in columns.iter().zip(row) {
                    // Lines of a multi-line value end in `+`, as in psql.
                    let lines = table_lines(v);
                    for (i, line) in lines.iter().enumerate() {
                        let name = if i == 0 { c.as_str() } else { "" };
                        let more = if i + 1 < lines.len() { "+" } else { "" };
                        let _ = writeln!(out, "{name:<w$} | {line}{more}");
                    }
                }
            }
        }
        Format::Table => {
            let cells: Vec<Vec<Vec<String>>> = text
                .iter()
                .map(|r| r.iter().map(|c| table_lines(c)).collect())
                .collect();
            let widths: Vec<usize> = (0..columns.len())
                .map(|i| {
                    cells
                        .iter()
                        .flat_map(|r| r[i].iter().map(|l| width(l)))
                        .chain([width(&columns[i])])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let header: Vec<String> = columns
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let pad = w - width(c);
                    format!("{}{c}{}", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
                })
                .collect();
            let _ = writeln!(out, " {}", header.join(" | ").trim_end());
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            let _ = writeln!(out, "{}", rule.join("+"));
            for row in &cells {
                // A multi-line value takes several lines; each line but its
                // last ends in `+` where the column's space would be (psql).
                let height = row.iter().map(Vec::len).max().unwrap_or(1);
                for i in 0..height {
                    let mut line = String::new();
                    for (j, (lines, w)) in row.iter().zip(&widths).enumerate() {
                        let v = lines.get(i).map_or("", String::as_str);
                        let more = if i + 1 < lines.len() { '+' } else { ' ' };
                        let sep = if j == 0 { "" } else { "|" };
                        let _ = write!(line, "{sep} {v}{}{more}", " ".repeat(w - width(v)));
                    }
                    let _ = writeln!(out, "{}", line.trim_end());
                }
            }
            let n = text.len();
            let _ = writeln!(
                out,
                "({n} {}{})",
                if n == 1 { "row" } else { "rows" },
                if truncated {
                    ", truncated: more keys match (see the notice)"
                } else {
                    ""
                }
            );
        }
        Format::Csv => {
            let _ = writeln!(
                out,
                "{}",
                columns
                    .iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            for row in &text {
                let _ = writeln!(
                    out,
                    "{}",
                    row.iter()
                        .map(|c| csv_field(c))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        Format::Tsv => {
            let _ = writeln!(out, "{}", columns.join("\t"));
            for row in &text {
                let fields: Vec<String> = row.iter().map(|c| tsv_field(c)).collect();
                let _ = writeln!(out, "{}", fields.join("\t"));
            }
        }
        Format::Json => {
            let objects: Vec<String> = text
                .iter()
                .map(|row| {
                    let fields: Vec<String> = columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| {
                            let value = if c == "version" {
                                v.clone()
                            } else {
                                json_string(v)
                            };
                            format!("{}:{value}", json_string(c))
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                })
                .collect();
            let _ = writeln!(out, "[{}]", objects.join(","));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Output {
        Output::Rows {
            columns: vec!["k".into(), "v".into()],
            rows: vec![
                vec![b"a".to_vec(), b"hello".to_vec()],
                vec![b"bb".to_vec(), vec![0, 1]],
            ],
            truncated: None,
            absent: Vec::new(),
        }
    }

    fn multi_line() -> Output {
        Output::Rows {
            columns: vec!["k".into(), "v".into()],
            rows: vec![
                vec![b"a".to_vec(), b"line 1\nline 2".to_vec()],
                vec![b"b".to_vec(), b"tab\there \\ back".to_vec()],
            ],
            truncated: None,
            absent: Vec::new(),
        }
    }

    #[test]
    fn table_is_aligned_like_psql() {
        assert_eq!(
            render(&sample(), Format::Table, false),
            " k  |   v\n----+--------\n a  | hello\n bb | \\x0001\n(2 rows)\n"
        );
    }

    #[test]
    fn other_formats() {
        // TSV escapes backslashes as COPY does, hex included.
        assert_eq!(
            render(&sample(), Format::Tsv, false),
            "k\tv\na\thello\nbb\t\\\\x0001\n"
        );
        assert_eq!(
            render(&sample(), Format::Csv, false),
            "k,v\na,hello\nbb,\\x0001\n"
        );
        assert_eq!(
            render(&sample(), Format::Json, false),
            "[{\"k\":\"a\",\"v\":\"hello\"},{\"k\":\"bb\",\"v\":\"\\\\x0001\"}]\n"
        );
        assert!(render(&sample(), Format::Table, true).starts_with("-[ RECORD 1 ]"));
        assert_eq!(
            render(&Output::Tag("INSERT 0 1".into()), Format::Tsv, false),
            "INSERT 0 1\n"
        );
    }

    #[test]
    fn text_with_newlines_and_tabs_is_text_in_every_format() {
        assert_eq!(cell(b"a\nb"), "a\nb");
        assert_eq!(cell(&[0xff, 0x00]), "\\xff00", "not UTF-8: hex");
        assert_eq!(cell(b"bell\x07"), "\\x62656c6c07", "other controls: hex");
        assert_eq!(
            render(&multi_line(), Format::Table, false),
            " k |        v\n---+------------------\n a | line 1          +\n   | line 2\n b | tab\\there \\ back\n(2 rows)\n"
        );
        assert_eq!(
            render(&multi_line(), Format::Tsv, false),
            "k\tv\na\tline 1\\nline 2\nb\ttab\\there \\\\ back\n"
        );
        assert_eq!(
            render(&multi_line(), Format::Csv, false),
            "k,v\na,\"line 1\nline 2\"\nb,tab\there \\ back\n"
        );
        assert_eq!(
            render(&multi_line(), Format::Json, false),
            "[{\"k\":\"a\",\"v\":\"line 1\\u000aline 2\"},{\"k\":\"b\",\"v\":\"tab\\u0009here \\\\ back\"}]\n"
        );
        let expanded = render(&multi_line(), Format::Table, true);
        assert!(expanded.contains("v | line 1+\n  | line 2\n"), "{expanded}");
    }

    #[test]
    fn notices_name_the_cut_and_the_absent_keys() {
        assert!(notices(&sample()).is_empty());
        let output = Output::Rows {
            columns: vec!["k".into()],
            rows: vec![vec![b"a".to_vec()]],
            truncated: Some(1000),
            absent: vec![b"zz".to_vec()],
        };
        let n = notices(&output);
        assert_eq!(n.len(), 2, "{n:?}");
        assert!(n[0].contains("at most 1000 rows without LIMIT"), "{n:?}");
        assert!(n[1].contains("'zz'"), "{n:?}");
        assert!(
            render(&output, Format::Table, false).contains("(1 row, truncated"),
            "the table says so too"
        );
    }
}
