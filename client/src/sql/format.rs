//! Printing results: aligned table (psql-like), expanded rows, CSV, TSV,
//! JSON.

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

/// A cell as text: UTF-8 without control characters as is, anything else
/// as `\x` and hex (like psql's bytea).
pub fn cell(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("\\x{}", hex::encode(bytes)),
    }
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
        } => (columns, rows, *truncated),
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
                    let _ = writeln!(out, "{c:<w$} | {v}");
                }
            }
        }
        Format::Table => {
            let widths: Vec<usize> = (0..columns.len())
                .map(|i| {
                    text.iter()
                        .map(|r| width(&r[i]))
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
            for row in &text {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v}{}", " ".repeat(w - width(v))))
                    .collect();
                let _ = writeln!(out, " {}", cells.join(" | ").trim_end());
            }
            let n = text.len();
            let _ = writeln!(
                out,
                "({n} {}{})",
                if n == 1 { "row" } else { "rows" },
                if truncated {
                    ", truncated: more keys match"
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
            // Cells hold no tab or newline: control characters print as hex.
            for row in &text {
                let _ = writeln!(out, "{}", row.join("\t"));
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
            truncated: false,
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
        assert_eq!(
            render(&sample(), Format::Tsv, false),
            "k\tv\na\thello\nbb\t\\x0001\n"
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
}
