//! What survives a fail-stop: the note a replica leaves in its data
//! directory when it stops because its log failed, read back when it
//! starts again (and exported as `trellis_shard_last_fail_stop_timestamp_seconds`).
//!
//! The note is one file of exactly [`NOTE_BYTES`], created (blank) and
//! synced when the replica starts, and overwritten in place when it
//! fail-stops: an overwrite inside a file's allocated size needs no new
//! space, so a note still fits on a disk that filled to the last byte. It
//! is written with a best effort — the disk may be failing — and a replica
//! that cannot write it still stops (its report to the coordinator and its
//! log say why). [`Note::encode`] and [`Note::decode`] are pure; [`prepare`]
//! and [`write()`] are the IO around them, called by the process edge (`trellis
//! shard`) alone.

use std::fmt;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use trellis_types::fail_stop::FailStopCause;

use crate::fsio;

/// The note's file name in the data directory.
pub const NOTE_FILE: &str = "fail-stop";
/// The note's size: its text, padded with spaces and ended by a newline.
pub const NOTE_BYTES: usize = 512;
/// The first word of a note: its format.
const NOTE_MAGIC: &str = "trellis-fail-stop-v1";
/// Longest detail kept (the rest of the error message is cut): the note's
/// other fields and padding fit in what is left.
pub const NOTE_DETAIL_BYTES_MAX: usize = 384;
const _: () = assert!(NOTE_DETAIL_BYTES_MAX + 96 < NOTE_BYTES);

/// Why the log failed, as the engine reports it: the classified cause
/// and the error message. Displays as the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFailure {
    pub cause: FailStopCause,
    pub message: String,
}

impl fmt::Display for LogFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One fail-stop, as noted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub cause: FailStopCause,
    /// When, in Unix milliseconds.
    pub unix_ms: u64,
    /// The error, on one line, cut to [`NOTE_DETAIL_BYTES_MAX`].
    pub detail: String,
}

impl Note {
    /// The note of `failure` at `unix_ms`.
    pub fn new(failure: &LogFailure, unix_ms: u64) -> Note {
        let mut detail: String = failure
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if detail.len() > NOTE_DETAIL_BYTES_MAX {
            let mut cut = NOTE_DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Note {
            cause: failure.cause,
            unix_ms,
            detail,
        }
    }

    /// Exactly [`NOTE_BYTES`]: `MAGIC cause unix_ms detail`, spaces, `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let text = format!(
            "{NOTE_MAGIC} {} {} {}",
            self.cause.name(),
            self.unix_ms,
            self.detail
        );
        padded(text.as_bytes())
    }

    /// The note in `bytes`, or `None` for a blank or unreadable one.
    pub fn decode(bytes: &[u8]) -> Option<Note> {
        let text = std::str::from_utf8(bytes).ok()?.trim_end();
        let mut words = text.splitn(4, ' ');
        if words.next()? != NOTE_MAGIC {
            return None;
        }
        let cause = FailStopCause::from_name(words.next()?)?;
        let unix_ms = words.next()?.parse().ok()?;
        Some(Note {
            cause,
            unix_ms,
            detail: words.next().unwrap_or_default().to_string(),
        })
    }
}

/// `text` padded with spaces to [`NOTE_BYTES`], a newline last.
fn padded(text: &[u8]) -> Vec<u8> {
    let mut out = text[..text.len().min(NOTE_BYTES - 1)].to_vec();
    out.resize(NOTE_BYTES - 1, b' ');
    out.push(b'\n');
    out
}

/// At start: the last fail-stop noted in `dir`, if any, and a note file of
/// [`NOTE_BYTES`] there, synced, ready to be overwritten in place (a blank
/// one is created if there was none or it was cut short).
pub fn prepare(dir: &Path) -> std::io::Result<Option<Note>> {
    let path = dir.join(NOTE_FILE);
    let existing = match fsio::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let last = existing.as_deref().and_then(Note::decode);
    if existing.is_some_and(|bytes| bytes.len() == NOTE_BYTES) {
        return Ok(last);
    }
    let bytes = match &last {
        Some(note) => note.encode(),
        None => padded(b""),
    };
    let mut file = fsio::File::create(&path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fsio::sync_dir(dir)?;
    Ok(last)
}

/// At a fail-stop: overwrites the note in `dir` in place and syncs it.
/// Best effort: the caller logs an error and stops anyway.
pub fn write(dir: &Path, note: &Note) -> std::io::Result<()> {
    let mut file = fsio::OpenOptions::new()
        .write(true)
        .create(true)
        .open(dir.join(NOTE_FILE))?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&note.encode())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(cause: FailStopCause, message: &str) -> LogFailure {
        LogFailure {
            cause,
            message: message.to_string(),
        }
    }

    #[test]
    fn a_note_round_trips_in_exactly_its_size() {
        let note = Note::new(
            &failure(
                FailStopCause::Fsync,
                "fdatasync of /d/000.log failed: Input/output error",
            ),
            1_700_000_000_123,
        );
        let bytes = note.encode();
        assert_eq!(bytes.len(), NOTE_BYTES);
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(Note::decode(&bytes), Some(note));
    }

    #[test]
    fn long_or_multi_line_details_are_cut_to_fit() {
        let message = format!("line one\nline two {}", "é".repeat(400));
        let note = Note::new(&failure(FailStopCause::DiskFull, &message), 1);
        assert!(note.detail.len() <= NOTE_DETAIL_BYTES_MAX);
        assert!(!note.detail.contains('\n'));
        let bytes = note.encode();
        assert_eq!(bytes.len(), NOTE_BYTES);
        assert_eq!(Note::decode(&bytes), Some(note));
    }

    #[test]
    fn blank_or_foreign_notes_read_as_none() {
        assert_eq!(Note::decode(&padded(b"")), None);
        assert_eq!(Note::decode(b"something else entirely"), None);
        assert_eq!(
            Note::decode(&padded(b"trellis-fail-stop-v1 melted 5 x")),
            None
        );
        assert_eq!(Note::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn prepare_creates_a_blank_note_and_keeps_a_written_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(prepare(dir.path()).expect("prepare"), None);
        let path = dir.path().join(NOTE_FILE);
        assert_eq!(
            std::fs::metadata(&path).expect("note").len(),
            NOTE_BYTES as u64
        );

        let note = Note::new(&failure(FailStopCause::DiskFull, "no space"), 42_000);
        write(dir.path(), &note).expect("write");
        assert_eq!(
            std::fs::metadata(&path).expect("note").len(),
            NOTE_BYTES as u64
        );
        assert_eq!(prepare(dir.path()).expect("prepare"), Some(note.clone()));
        // Started again: still there, until the next fail-stop replaces it.
        assert_eq!(prepare(dir.path()).expect("prepare"), Some(note));
    }
}
