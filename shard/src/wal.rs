//! The write-ahead log: segment files of framed records, one writer thread
//! doing group commit, and the reader recovery uses.
//!
//! # Frame
//! ```text
//! len: u32 LE | crc32: u32 LE | type: u8 | lsn: u64 LE | payload: len bytes
//! ```
//! `crc32` (crc32fast) covers `type | lsn | payload`. LSNs start at 1 and have
//! no gaps: record `n+1` follows record `n`, across segments too.
//!
//! # Group commit
//! [`Wal::append`] only copies a frame into the pending buffer and returns its
//! LSN; the writer thread takes everything pending, writes it with one
//! `write`, makes it durable with one `fdatasync`, and then publishes the new
//! durable LSN. Callers wait for it with [`Wal::wait_durable`]: an append is
//! acknowledged only after its bytes are durable. An IO error marks the log
//! failed: nothing more is acknowledged and every later append is refused.
//!
//! Inside a simulation (`sim` feature, [`crate::fsio::in_simulation`]) the
//! same rounds run on a task of the host's runtime instead of a thread, and
//! all file IO goes to the host's simulated filesystem ([`crate::fsio`]).
//!
//! # Torn tails and corruption
//! A crash can leave the last batch half written. When recovery meets a frame
//! that does not check out, it looks for any valid frame after it: if none
//! exists, the bad bytes are a torn tail, cut off, and the log continues from
//! there. If a valid frame follows (or the bad frame is not in the last
//! segment), the log is corrupt before its tail: recovery refuses to start
//! and names the file and offset.
//!
//! This module never interprets payloads: it knows record types only as
//! bytes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;
use trellis_types::Lsn;
use trellis_types::fail_stop::{FailStopCause, LogStep};

use crate::fsio::{self, File, OpenOptions};
use crate::metrics::Metrics;

/// Bytes of a frame header: len, crc, type, lsn.
pub const FRAME_HEADER_BYTES: usize = 4 + 4 + 1 + 8;
/// Largest record payload. A transaction at its limits fits with room.
pub const RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A segment is closed and a new one started once it grows past this.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Appends wait (before they are sequenced) while this many bytes are
/// pending and not yet written: the bound on the group-commit queue.
pub const PENDING_BYTES_MAX: usize = 32 * 1024 * 1024;

const _: () = assert!(trellis_types::limits::TXN_BYTES_MAX * 2 <= RECORD_BYTES_MAX);
const _: () = assert!(RECORD_BYTES_MAX <= PENDING_BYTES_MAX);
const _: () = assert!((RECORD_BYTES_MAX as u64) < SEGMENT_BYTES_MAX);

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";

/// Errors of the log. Recovery errors carry what an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "write-ahead log is corrupt in {path} at byte offset {offset}: {detail}. \
         Records after this point were acknowledged and cannot be skipped safely, so \
         the shard refuses to start. Restore this replica's data directory from a \
         backup (or re-seed it from a healthy replica), or, accepting the loss of every \
         record from this offset on, truncate the file at {offset} and delete later \
         segments, then start again."
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("the log writer failed earlier and accepts no more appends: {0}")]
    Failed(String),
    #[error("record of {got} bytes is over RECORD_BYTES_MAX ({RECORD_BYTES_MAX} bytes)")]
    RecordTooLarge { got: usize },
}

impl WalError {
    /// The kind of the IO error behind this one (`Other` for errors that
    /// are not IO errors).
    pub fn io_kind(&self) -> std::io::ErrorKind {
        match self {
            WalError::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record as read back from the log, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Encodes one frame onto `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, lsn: Lsn, payload: &[u8]) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    let crc = hasher.finalize();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why a frame at some offset could not be read.
#[derive(Debug, PartialEq, Eq)]
enum FrameFault {
    /// Fewer bytes remain than the frame needs.
    Short,
    /// The length field is beyond any record we would write.
    BadLength(u32),
    /// The checksum does not match.
    BadCrc,
}

/// Decodes the frame starting at `buf[0]`: the record and its total length.
fn decode_frame(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameFault> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameFault::Short);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if len as usize > RECORD_BYTES_MAX {
        return Err(FrameFault::BadLength(len));
    }
    let total = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < total {
        return Err(FrameFault::Short);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(&buf[8..total]);
    if crc != actual {
        return Err(FrameFault::BadCrc);
    }
    let kind = buf[8];
    let lsn = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes"));
    Ok((
        Frame {
            lsn,
            kind,
            payload: &buf[FRAME_HEADER_BYTES..total],
        },
        total,
    ))
}

/// A segment file on disk: `wal-<first lsn, 20 digits>.log`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// The path of the segment whose first record is `first_lsn`.
pub fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Lists the segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for entry in fsio::read_dir(dir).map_err(io_err(dir))? {
        let Some(name) = entry.file_name.to_str() else {
            continue;
        };
        let Some(number) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        let Ok(first_lsn) = number.parse::<Lsn>() else {
            continue;
        };
        segments.push(Segment {
            first_lsn,
            path: entry.path,
        });
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// One record read back by a [`LogReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Buffer of a [`LogReader`].
pub const LOG_READ_BUFFER_BYTES: usize = 256 * 1024;

/// Reads a live log from some LSN on, for a backup that catches up past
/// the primary's in-memory feed: record after record, across segments,
/// never past the LSN the caller says is durable (records up to it are
/// whole on disk; the writer may be appending after it). Read-only: a bad
/// frame is an error, never cut.
pub struct LogReader {
    dir: PathBuf,
    file: std::io::BufReader<File>,
    /// Path of the open segment (for errors).
    path: PathBuf,
    /// The LSN of the next frame in `file`.
    next: Lsn,
    /// A record read but not yet handed out (it did not fit a batch).
    held: Option<LogRecord>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("path", &self.path)
            .field("next", &self.next)
            .finish()
    }
}

impl LogReader {
    /// A reader positioned at `from`; `None` when the log on disk no longer
    /// starts at or before `from` (its segments were deleted after a
    /// snapshot) — the backup then needs a snapshot.
    pub fn open(dir: &Path, from: Lsn) -> Result<Option<LogReader>, WalError> {
        let segments = list_segments(dir)?;
        let Some(segment) = segments.iter().rev().find(|s| s.first_lsn <= from) else {
            return Ok(None);
        };
        let file = match File::open(&segment.path) {
            Ok(file) => file,
            // Deleted since the listing: gone for good.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_err(&segment.path)(err)),
        };
        let mut reader = LogReader {
            dir: dir.to_path_buf(),
            file: std::io::BufReader::with_capacity(LOG_READ_BUFFER_BYTES, file),
            path: segment.path.clone(),
            next: segment.first_lsn,
            held: None,
        };
        while reader.next < from {
            reader.read_frame()?;
        }
        Ok(Some(reader))
    }

    /// The LSN of the next record [`LogReader::read`] returns.
    pub fn next_lsn(&self) -> Lsn {
        self.held.as_ref().map_or(self.next, |r| r.lsn)
    }

    /// Records from [`LogReader::next_lsn`] through at most `upto` (a
    /// durable LSN), about `bytes_max` of payload (at least one record).
    pub fn read(&mut self, upto: Lsn, bytes_max: usize) -> Result<Vec<LogRecord>, WalError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let record = match self.held.take() {
                Some(record) => record,
                None if self.next <= upto => self.read_frame()?,
                None => break,
            };
            if !out.is_empty() && bytes + record.payload.len() > bytes_max {
                self.held = Some(record);
                break;
            }
            bytes += record.payload.len();
            out.push(record);
        }
        Ok(out)
    }

    /// The frame of `self.next`, moving on to the next segment at the end
    /// of this one.
    fn read_frame(&mut self) -> Result<LogRecord, WalError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        loop {
            match self.file.read_exact(&mut header) {
                Ok(()) => break,
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.open_next_segment()?;
                }
                Err(err) => return Err(io_err(&self.path)(err)),
            }
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let corrupt = |detail: String| WalError::Corrupt {
            path: self.path.clone(),
            offset: 0,
            detail,
        };
        if len > RECORD_BYTES_MAX {
            return Err(corrupt(format!(
                "record {} claims {len} bytes, more than any record",
                self.next
            )));
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + len);
        frame.extend_from_slice(&header);
        frame.resize(FRAME_HEADER_BYTES + len, 0);
        self.file
            .read_exact(&mut frame[FRAME_HEADER_BYTES..])
            .map_err(io_err(&self.path))?;
        let (decoded, _) = decode_frame(&frame)
            .map_err(|fault| corrupt(format!("record {}: {fault:?}", self.next)))?;
        if decoded.lsn != self.next {
            return Err(corrupt(format!(
                "expected record {}, found {}",
                self.next, decoded.lsn
            )));
        }
        let record = LogRecord {
            lsn: decoded.lsn,
            kind: decoded.kind,
            payload: decoded.payload.to_vec(),
        };
        self.next += 1;
        Ok(record)
    }

    /// The segment that starts at `self.next` (the current one ended).
    fn open_next_segment(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.next);
        let file = File::open(&path).map_err(|err| WalError::Corrupt {
            path: self.path.clone(),
            offset: 0,
            detail: format!(
                "the log ends before record {} (no segment {}: {err})",
                self.next,
                path.display()
            ),
        })?;
        self.file = std::io::BufReader::with_capacity(LOG_READ_BUFFER_BYTES, file);
        self.path = path;
        Ok(())
    }
}

/// What reading the whole log found.
#[derive(Debug, Default)]
pub struct Replay {
    /// LSN of the last valid record (or the `after` given, if none).
    pub last_lsn: Lsn,
    /// Records replayed (those with LSN > `after`).
    pub records: u64,
    /// Bytes cut off a torn tail, if any.
    pub torn_bytes: u64,
}

/// Bytes replay reads from a segment at a time: bounds its memory.
pub const REPLAY_READ_BYTES: usize = 4 * 1024 * 1024;

/// Reads every record with LSN > `after`, in order, and hands each to
/// `apply`. Cuts a torn tail off the last segment (truncating the file);
/// refuses corruption anywhere else. Reads segments in chunks of
/// [`REPLAY_READ_BYTES`], never whole.
pub fn replay(
    dir: &Path,
    after: Lsn,
    mut apply: impl FnMut(Frame<'_>) -> Result<(), String>,
) -> Result<Replay, WalError> {
    let segments = list_segments(dir)?;
    if let Some(first) = segments.first()
        && first.first_lsn > after + 1
    {
        return Err(WalError::Corrupt {
            path: first.path.clone(),
            offset: 0,
            detail: format!(
                "the oldest segment starts at LSN {} but the snapshot covers only up to {after} \
                 (records in between are missing)",
                first.first_lsn
            ),
        });
    }
    // Segments wholly at or below `after` (kept on disk for backups that
    // catch up from the log) are not read again.
    let skip = segments
        .windows(2)
        .take_while(|pair| pair[1].first_lsn <= after + 1)
        .count();
    let segments = &segments[skip..];
    let mut out = Replay {
        last_lsn: after,
        ..Replay::default()
    };
    // The LSN the next record must carry, once we have seen one.
    let mut expected: Option<Lsn> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(REPLAY_READ_BYTES + FRAME_HEADER_BYTES);
    for (index, segment) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let path = &segment.path;
        let mut file = File::open(path).map_err(io_err(path))?;
        let file_len = file.len_bytes().map_err(io_err(path))?;
        if let Some(want) = expected
            && segment.first_lsn != want
            && file_len > 0
        {
            return Err(WalError::Corrupt {
                path: path.clone(),
                offset: 0,
                detail: format!(
                    "segment starts at LSN {} but the previous one ended before LSN {want} \
                     (a segment is missing)",
                    segment.first_lsn
                ),
            });
        }
        buf.clear();
        // File offset of buf[0], and our position within buf.
        let mut buf_offset = 0u64;
        let mut pos = 0usize;
        let mut eof = false;
        loop {
            match decode_frame(&buf[pos..]) {
                Ok((frame, len)) => {
                    let offset = buf_offset + pos as u64;
                    let want = expected.unwrap_or(segment.first_lsn);
                    if frame.lsn != want {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset,
                            detail: format!(
                                "record has LSN {} where {want} was expected",
                                frame.lsn
                            ),
                        });
                    }
                    expected = Some(frame.lsn + 1);
                    if frame.lsn > after {
                        let lsn = frame.lsn;
                        apply(frame).map_err(|detail| WalError::Corrupt {
                            path: path.clone(),
                            offset,
                            detail: format!("record {lsn} cannot be applied: {detail}"),
                        })?;
                        out.records += 1;
                        out.last_lsn = lsn;
                    }
                    pos += len;
                }
                Err(FrameFault::Short) if !eof => {
                    // Keep the partial frame, read the next chunk after it.
                    buf.drain(..pos);
                    buf_offset += pos as u64;
                    pos = 0;
                    let want = REPLAY_READ_BYTES.max(frame_len_hint(&buf));
                    let read = (&mut file)
                        .take(want as u64)
                        .read_to_end(&mut buf)
                        .map_err(io_err(path))?;
                    eof = read == 0;
                }
                Err(FrameFault::Short) if pos == buf.len() => break,
                Err(fault) => {
                    let offset = buf_offset + pos as u64;
                    cut_torn_tail(
                        path,
                        offset,
                        fault,
                        is_last,
                        expected.unwrap_or(segment.first_lsn),
                    )?;
                    out.torn_bytes = file_len - offset;
                    break;
                }
            }
        }
        if expected.is_none() && file_len == 0 {
            // An empty segment (a crash right after it was created) names the
            // LSN the next record will carry.
            expected = Some(segment.first_lsn);
        }
    }
    if let Some(expected) = expected {
        out.last_lsn = out.last_lsn.max(expected - 1);
    }
    Ok(out)
}

/// Total length of the frame whose (possibly partial) bytes start `buf`, if
/// its header is there: replay reads at least that much next.
fn frame_len_hint(buf: &[u8]) -> usize {
    if buf.len() < 4 {
        return 0;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    FRAME_HEADER_BYTES + len.min(RECORD_BYTES_MAX)
}

/// A frame at `offset` of `path` does not check out. If it is in the last
/// segment and nothing valid follows it, it is a torn tail: cut it off.
/// Otherwise the log is corrupt.
fn cut_torn_tail(
    path: &Path,
    offset: u64,
    fault: FrameFault,
    is_last: bool,
    min_lsn: Lsn,
) -> Result<(), WalError> {
    let valid_after = is_last && {
        let mut rest = Vec::new();
        let mut file = File::open(path).map_err(io_err(path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset + 1))
            .map_err(io_err(path))?;
        file.read_to_end(&mut rest).map_err(io_err(path))?;
        find_valid_frame(&rest, min_lsn)
    };
    if !is_last || valid_after {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            detail: format!(
                "{} with valid records after it",
                match fault {
                    FrameFault::Short => "a truncated record".to_string(),
                    FrameFault::BadLength(len) => format!("a record length of {len} bytes"),
                    FrameFault::BadCrc => "a checksum mismatch".to_string(),
                }
            ),
        });
    }
    tracing::warn!(path = %path.display(), offset, "cutting off a torn record at the tail of the log");
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(offset).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Is there any valid frame at some offset of `bytes` with an LSN at least
/// `min_lsn`? Used to tell a torn tail (nothing valid after) from corruption.
fn find_valid_frame(bytes: &[u8], min_lsn: Lsn) -> bool {
    (0..bytes.len()).any(
        |start| matches!(decode_frame(&bytes[start..]), Ok((record, _)) if record.lsn >= min_lsn),
    )
}

/// What the writer publishes after each durable batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    pub lsn: Lsn,
    /// Set once an IO error stopped the writer; nothing more becomes durable.
    pub failed: Option<String>,
    /// Why, set with `failed`.
    pub failed_cause: Option<FailStopCause>,
}

/// Longest a record appended with [`Wal::append_lazy`] waits for an eager
/// record (or a waiter's urge) to share its `fdatasync` before the writer
/// syncs it on its own. Short: a replica's acknowledgements wait for it.
pub const LAZY_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

struct Pending {
    bytes: Vec<u8>,
    next_lsn: Lsn,
    records: u64,
    shutdown: bool,
    /// An eager record is pending, or a waiter urged: sync at once.
    eager: bool,
    /// When the first lazy record still pending was appended.
    lazy_since: Option<Instant>,
    /// [`LAZY_SYNC_DELAY`], except in tests.
    lazy_delay: std::time::Duration,
}

/// When the writer should take what is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Now: an eager record, an urge, or shutdown.
    Now,
    /// Only lazy records: at this instant, unless woken sooner.
    At(Instant),
    /// Nothing pending: when woken.
    Idle,
}

impl Pending {
    fn due(&self) -> Due {
        if self.shutdown || (self.eager && !self.bytes.is_empty()) {
            return Due::Now;
        }
        match self.lazy_since {
            Some(since) if !self.bytes.is_empty() => Due::At(since + self.lazy_delay),
            _ => Due::Idle,
        }
    }
}

struct Shared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    /// Wakes the writer thread.
    wake_writer: Condvar,
    /// Wakes the writer task instead, when the log runs in a simulation.
    #[cfg(feature = "sim")]
    wake_task: Option<tokio::sync::Notify>,
    durable: watch::Sender<Durable>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Tells the writer that something is pending (or to shut down).
    fn wake(&self) {
        #[cfg(feature = "sim")]
        if let Some(notify) = &self.wake_task {
            notify.notify_one();
            return;
        }
        self.wake_writer.notify_one();
    }
}

/// What drives group commit.
enum Writer {
    /// Production: a thread of its own, woken through a `Condvar`, so an
    /// `fdatasync` never blocks an async worker.
    Thread(Option<std::thread::JoinHandle<()>>),
    /// Inside a simulation: a task on the host's runtime, woken through a
    /// `Notify`. A thread would run outside simulated time and could not
    /// reach the host's simulated filesystem. The segment is shared so that
    /// [`Wal::shutdown`] can write the last batch itself, synchronously;
    /// `None` once the writer stopped.
    #[cfg(feature = "sim")]
    Task(Arc<Mutex<Option<TaskSegment>>>),
}

/// The log of one replica. Cheap to clone.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Writer>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Wal {
    /// Opens the log for appending after `last_lsn` (what [`replay`] found)
    /// and starts the writer thread (a task inside a simulation).
    pub fn open(dir: &Path, last_lsn: Lsn, metrics: Arc<Metrics>) -> Result<Wal, WalError> {
        Self::open_with(dir, last_lsn, metrics, SEGMENT_BYTES_MAX)
    }

    /// [`Wal::open`] with segments rolled once they pass
    /// `segment_bytes_max` bytes.
    pub fn open_with(
        dir: &Path,
        last_lsn: Lsn,
        metrics: Arc<Metrics>,
        segment_bytes_max: u64,
    ) -> Result<Wal, WalError> {
        let segments = list_segments(dir)?;
        let (file, path, size) = match segments.last() {
            Some(segment) if !misnamed_empty(segment, last_lsn)? => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_err(&segment.path))?;
                let size = file.len_bytes().map_err(io_err(&segment.path))?;
                (file, segment.path.clone(), size)
            }
            Some(segment) => {
                // An empty segment named for another first record (a roll
                // whose first write never landed, on a full disk, before the
                // replica was restored from a snapshot past it; simulator
                // seed 56). It holds nothing; writing the records after
                // `last_lsn` into it would misname them all, and the next
                // recovery would refuse the log.
                fsio::remove_file(&segment.path).map_err(io_err(&segment.path))?;
                let path = segment_path(dir, last_lsn + 1);
                let file = create_segment(dir, &path)?;
                (file, path, 0)
            }
            None => {
                let path = segment_path(dir, last_lsn + 1);
                let file = create_segment(dir, &path)?;
                (file, path, 0)
            }
        };
        let segment = SegmentWriter {
            file,
            path,
            size,
            segment_bytes_max,
        };
        let (durable, _) = watch::channel(Durable {
            lsn: last_lsn,
            failed: None,
            failed_cause: None,
        });
        let simulated = fsio::in_simulation();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                next_lsn: last_lsn + 1,
                records: 0,
                shutdown: false,
                eager: false,
                lazy_since: None,
                lazy_delay: LAZY_SYNC_DELAY,
            }),
            wake_writer: Condvar::new(),
            #[cfg(feature = "sim")]
            wake_task: simulated.then(tokio::sync::Notify::new),
            durable,
            metrics,
        });
        let writer = if simulated {
            Self::spawn_task(&shared, segment)?
        } else {
            let writer_shared = shared.clone();
            // The writer logs in the span it was started from (a process's
            // group and replica, with `trellis shard --log-format json`).
            let span = tracing::Span::current();
            let handle = std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || span.in_scope(|| writer_loop(&writer_shared, segment)))
                .map_err(io_err(dir))?;
            Writer::Thread(Some(handle))
        };
        Ok(Wal {
            shared,
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    /// Starts the writer as a task on the current runtime (simulation only).
    #[cfg(feature = "sim")]
    fn spawn_task(shared: &Arc<Shared>, segment: SegmentWriter) -> Result<Writer, WalError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| WalError::Io {
            path: shared.dir.clone(),
            source: std::io::Error::other(format!("no runtime for the log writer task: {e}")),
        })?;
        let segment = Arc::new(Mutex::new(Some(TaskSegment {
            writer: segment,
            unsynced: None,
        })));
        runtime.spawn(writer_task(shared.clone(), segment.clone()));
        Ok(Writer::Task(segment))
    }

    #[cfg(not(feature = "sim"))]
    fn spawn_task(_: &Arc<Shared>, _: SegmentWriter) -> Result<Writer, WalError> {
        unreachable!("fsio::in_simulation() is false without the sim feature")
    }

    /// Sequences one record: gives it the next LSN and queues its frame for
    /// the writer, which syncs at once. Returns at once; the record is
    /// durable only once [`Wal::wait_durable`] says so. Callers that need
    /// LSN order to match the order of their state changes call this under
    /// their own lock.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_as(kind, payload, false)
    }

    /// [`Wal::append`] for a record nobody waits on at once (a FINALIZE, a
    /// FORGET): the writer syncs it with the next eager record, when a
    /// waiter urges it ([`Wal::wait_durable`]), or after
    /// [`LAZY_SYNC_DELAY`] — so it does not take an `fdatasync` of its own
    /// just before the next commit's record needs one. Order and
    /// durability rules are [`Wal::append`]'s.
    pub fn append_lazy(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_as(kind, payload, true)
    }

    fn append_as(&self, kind: u8, payload: &[u8], lazy: bool) -> Result<Lsn, WalError> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge { got: payload.len() });
        }
        if let Some(failed) = self.shared.durable.borrow().failed.clone() {
            return Err(WalError::Failed(failed));
        }
        let mut pending = self
            .shared
            .pending
            .lock()
            .expect("wal pending lock poisoned");
        if pending.shutdown {
            return Err(WalError::Failed("the log is shut down".into()));
        }
        let lsn = pending.next_lsn;
        pending.next_lsn += 1;
        pending.records += 1;
        encode_frame(&mut pending.bytes, kind, lsn, payload);
        // The writer learns of an eager record at once, and of the first
        // lazy one too (to arm its deadline); later lazy ones change
        // nothing it waits for.
        let wake = if lazy {
            let first = pending.lazy_since.is_none();
            if first {
                pending.lazy_since = Some(Instant::now());
            }
            first && !pending.eager
        } else {
            let was = pending.eager;
            pending.eager = true;
            !was
        };
        drop(pending);
        if wake {
            self.shared.wake();
        }
        Ok(lsn)
    }

    /// Sets how long lazy records may wait (tests: a long delay makes
    /// "synced only with an eager record or an urge" deterministic).
    #[cfg(test)]
    fn set_lazy_delay(&self, delay: std::time::Duration) {
        self.shared
            .pending
            .lock()
            .expect("wal pending lock poisoned")
            .lazy_delay = delay;
    }

    /// Asks the writer to sync what is pending now (lazy records too).
    fn urge(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .expect("wal pending lock poisoned");
        if pending.bytes.is_empty() || pending.eager {
            return;
        }
        pending.eager = true;
        drop(pending);
        self.shared.wake();
    }

    /// Waits until fewer than [`PENDING_BYTES_MAX`] bytes wait for the
    /// writer: call before sequencing, so the queue stays bounded.
    pub async fn reserve(&self) -> Result<(), WalError> {
        let mut durable = self.shared.durable.subscribe();
        loop {
            if let Some(failed) = durable.borrow_and_update().failed.clone() {
                return Err(WalError::Failed(failed));
            }
            let pending = self
                .shared
                .pending
                .lock()
                .expect("wal pending lock poisoned")
                .bytes
                .len();
            if pending < PENDING_BYTES_MAX {
                return Ok(());
            }
            if durable.changed().await.is_err() {
                return Err(WalError::Failed("the log writer stopped".into()));
            }
        }
    }

    /// Waits until every record up to `lsn` is durable, urging the writer
    /// if `lsn` is still pending (a lazy record is then synced at once).
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        if self.durable_lsn() < lsn {
            self.urge();
        }
        self.wait_durable_unurged(lsn).await
    }

    /// [`Wal::wait_durable`] without urging: a lazy record becomes durable
    /// at its own pace ([`Wal::append_lazy`]).
    pub async fn wait_durable_unurged(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut durable = self.shared.durable.subscribe();
        let seen = durable
            .wait_for(|d| d.lsn >= lsn || d.failed.is_some())
            .await
            .map_err(|_| WalError::Failed("the log writer stopped".into()))?;
        if seen.lsn >= lsn {
            return Ok(());
        }
        Err(WalError::Failed(
            seen.failed
                .clone()
                .unwrap_or_else(|| "unknown failure".into()),
        ))
    }

    /// The highest durable LSN.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable.borrow().lsn
    }

    /// A receiver that sees every change of the durable LSN.
    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// The LSN the last sequenced record got.
    pub fn last_lsn(&self) -> Lsn {
        self.shared
            .pending
            .lock()
            .expect("wal pending lock poisoned")
            .next_lsn
            - 1
    }

    /// Deletes segments that hold only records at or below `lsn` (they are
    /// covered by a durable snapshot), oldest first, as long as at least
    /// `retain_bytes` of log stay on disk (for backups catching up from
    /// the log, [`LogReader`]). The segment being written is kept.
    pub fn delete_through(&self, lsn: Lsn, retain_bytes: u64) -> Result<usize, WalError> {
        let segments = list_segments(&self.shared.dir)?;
        let mut sizes = Vec::with_capacity(segments.len());
        for segment in &segments {
            let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
            sizes.push(file.len_bytes().map_err(io_err(&segment.path))?);
        }
        let mut left: u64 = sizes.iter().sum();
        let mut deleted = 0;
        for (pair, size) in segments.windows(2).zip(&sizes) {
            // Every record of pair[0] is below pair[1].first_lsn.
            if pair[1].first_lsn > lsn + 1 || left - size < retain_bytes {
                break;
            }
            fsio::remove_file(&pair[0].path).map_err(io_err(&pair[0].path))?;
            left -= size;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.shared.dir)?;
        }
        Ok(deleted)
    }

    /// Writes what is pending, stops the writer and waits for it. Once it
    /// returns, every record appended before it is durable (unless the log
    /// failed).
    pub fn shutdown(&self) {
        self.shared
            .pending
            .lock()
            .expect("wal pending lock poisoned")
            .shutdown = true;
        self.shared.wake();
        match &mut *self.writer.lock().expect("wal writer lock poisoned") {
            Writer::Thread(handle) => {
                if let Some(handle) = handle.take() {
                    let _ = handle.join();
                }
            }
            #[cfg(feature = "sim")]
            Writer::Task(segment) => {
                // The task cannot be waited for from synchronous code on the
                // simulation's only thread; sync its written batch and write
                // the last one here instead. The task never holds the
                // segment across an `.await`; it finds the segment gone and
                // ends.
                let mut slot = segment.lock().expect("wal segment lock poisoned");
                if let Some(mut task) = slot.take() {
                    // A failure is published to waiters by sync_round and
                    // write_round.
                    if task.sync(&self.shared).is_ok() {
                        let mut batch = Vec::new();
                        let round = take_pending(&self.shared, &mut batch);
                        let _ = write_round(&self.shared, &mut task.writer, &mut batch, round);
                    }
                }
            }
        }
    }
}

struct SegmentWriter {
    file: File,
    path: PathBuf,
    size: u64,
    segment_bytes_max: u64,
}

/// Whether `segment`, the log's last, is empty and named for a first
/// record other than the next one (`last_lsn + 1`).
fn misnamed_empty(segment: &Segment, last_lsn: Lsn) -> Result<bool, WalError> {
    if segment.first_lsn == last_lsn + 1 {
        return Ok(false);
    }
    let len = File::open(&segment.path)
        .and_then(|f| f.len_bytes())
        .map_err(io_err(&segment.path))?;
    Ok(len == 0)
}

fn create_segment(dir: &Path, path: &Path) -> Result<File, WalError> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    fsio::sync_dir(dir).map_err(io_err(dir))
}

/// What one round of group commit took from the pending queue (its bytes
/// are swapped into the writer's batch buffer, which is reused).
struct Round {
    /// LSN of the last record taken.
    last_lsn: Lsn,
    records: u64,
    shutdown: bool,
}

/// Takes everything pending (possibly nothing) into the empty `batch`.
#[cfg(feature = "sim")]
fn take_pending(shared: &Shared, batch: &mut Vec<u8>) -> Round {
    let mut pending = shared.pending.lock().expect("wal pending lock poisoned");
    take_locked(&mut pending, batch)
}

fn take_locked(pending: &mut Pending, batch: &mut Vec<u8>) -> Round {
    std::mem::swap(batch, &mut pending.bytes);
    pending.eager = false;
    pending.lazy_since = None;
    Round {
        last_lsn: pending.next_lsn - 1,
        records: std::mem::take(&mut pending.records),
        shutdown: pending.shutdown,
    }
}

/// The log failed: nothing more becomes durable.
struct Stopped;

/// One round of group commit, the same for the thread and the task: writes
/// the batch with one `write`, makes it durable with one `fdatasync`,
/// publishes the durable LSN, and starts a new segment once this one is
/// full. On any IO error marks the log failed (appends are refused from
/// then on) and returns [`Stopped`].
fn write_round(
    shared: &Shared,
    segment: &mut SegmentWriter,
    batch: &mut Vec<u8>,
    round: Round,
) -> Result<(), Stopped> {
    if batch.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    write_batch(shared, segment, batch)?;
    let bytes = batch.len() as u64;
    batch.clear();
    sync_round(shared, segment, bytes, round, started)
}

/// Marks the log failed with `message` (an IO error of kind `kind` at
/// `step`): nothing more becomes durable.
fn fail(shared: &Shared, step: LogStep, kind: std::io::ErrorKind, message: String) -> Stopped {
    let cause = FailStopCause::classify(step, kind);
    tracing::error!(%message, %cause, "write-ahead log failed; the shard stops acknowledging writes");
    shared.durable.send_modify(|d| {
        d.failed = Some(message);
        d.failed_cause = Some(cause);
    });
    Stopped
}

/// The first half of a round: one `write` of the whole batch.
fn write_batch(shared: &Shared, segment: &mut SegmentWriter, batch: &[u8]) -> Result<(), Stopped> {
    segment.file.write_all(batch).map_err(|err| {
        fail(
            shared,
            LogStep::Write,
            err.kind(),
            format!("write of {} failed: {err}", segment.path.display()),
        )
    })?;
    shared.metrics.batch_writes.inc();
    Ok(())
}

/// The second half: `fdatasync`, publish the durable LSN, roll the segment.
fn sync_round(
    shared: &Shared,
    segment: &mut SegmentWriter,
    bytes: u64,
    round: Round,
    started: Instant,
) -> Result<(), Stopped> {
    let synced = match crate::failpoint::io_error(crate::failpoint::WAL_SYNC_ERROR) {
        Some(injected) => Err(injected),
        None => segment.file.sync_data(),
    };
    if let Err(err) = synced {
        // After a failed fsync the page cache may hold bytes that
        // never reach the disk (fsyncgate): never retry, fail hard.
        return Err(fail(
            shared,
            LogStep::Sync,
            err.kind(),
            format!("fdatasync of {} failed: {err}", segment.path.display()),
        ));
    }
    shared
        .metrics
        .record_fsync(started.elapsed(), round.records, bytes);
    segment.size += bytes;
    shared.durable.send_modify(|d| d.lsn = round.last_lsn);
    if segment.size >= segment.segment_bytes_max {
        let path = segment_path(&shared.dir, round.last_lsn + 1);
        match create_segment(&shared.dir, &path) {
            Ok(file) => {
                *segment = SegmentWriter {
                    file,
                    path,
                    size: 0,
                    segment_bytes_max: segment.segment_bytes_max,
                };
            }
            Err(err) => {
                return Err(fail(
                    shared,
                    LogStep::NewSegment,
                    err.io_kind(),
                    format!("cannot start a new segment: {err}"),
                ));
            }
        }
    }
    Ok(())
}

/// The writer thread: sleeps on the `Condvar` until something is pending.
fn writer_loop(shared: &Shared, mut segment: SegmentWriter) {
    let mut batch = Vec::new();
    loop {
        let round = {
            let mut pending = shared.pending.lock().expect("wal pending lock poisoned");
            loop {
                match pending.due() {
                    Due::Now => break,
                    Due::At(at) => {
                        let now = Instant::now();
                        if at <= now {
                            break;
                        }
                        pending = shared
                            .wake_writer
                            .wait_timeout(pending, at - now)
                            .expect("wal pending lock poisoned")
                            .0;
                    }
                    Due::Idle => {
                        pending = shared
                            .wake_writer
                            .wait(pending)
                            .expect("wal pending lock poisoned");
                    }
                }
            }
            take_locked(&mut pending, &mut batch)
        };
        let shutdown = round.shutdown;
        if write_round(shared, &mut segment, &mut batch, round).is_err() || shutdown {
            return;
        }
    }
}

/// Simulated time between a batch's `write` and its `fdatasync` inside a
/// simulation: the disk's latency, and the window in which a crash loses
/// (or, with torn writes, tears) a written but unsynced batch. Without it
/// both happen in one step and a crash could never land between them. It
/// is longer than a simulation step (1 ms by default, 2 ms in the cluster
/// simulator): a write caused by a message runs at the start of a step, so
/// a shorter latency would sync within the same step and the batch would
/// never be unsynced when the simulator crashes a host.
#[cfg(feature = "sim")]
pub const SIM_SYNC_LATENCY: std::time::Duration = std::time::Duration::from_millis(3);

/// The writer task's segment, with the batch written but not yet synced.
#[cfg(feature = "sim")]
struct TaskSegment {
    writer: SegmentWriter,
    unsynced: Option<Unsynced>,
}

#[cfg(feature = "sim")]
struct Unsynced {
    round: Round,
    bytes: u64,
    started: Instant,
}

#[cfg(feature = "sim")]
impl TaskSegment {
    /// Syncs the written batch, if any. `Err` once the log failed.
    fn sync(&mut self, shared: &Shared) -> Result<bool, Stopped> {
        match self.unsynced.take() {
            Some(u) => {
                let shutdown = u.round.shutdown;
                sync_round(shared, &mut self.writer, u.bytes, u.round, u.started)?;
                Ok(shutdown)
            }
            None => Ok(false),
        }
    }
}

/// The writer task (simulation only): the same rounds as [`writer_loop`],
/// woken through a `Notify` (which keeps a wake-up that comes while a
/// round runs), with [`SIM_SYNC_LATENCY`] between write and sync. Ends when
/// the log fails, shuts down, or [`Wal::shutdown`] took the segment.
#[cfg(feature = "sim")]
async fn writer_task(shared: Arc<Shared>, segment: Arc<Mutex<Option<TaskSegment>>>) {
    let Some(notify) = shared.wake_task.as_ref() else {
        return;
    };
    let mut batch = Vec::new();
    loop {
        // Only lazy records pending: sleep until their deadline or a wake
        // (a `Notify` permit kept from an append in between ends it at once).
        let due = shared
            .pending
            .lock()
            .expect("wal pending lock poisoned")
            .due();
        if let Due::At(at) = due
            && at > Instant::now()
        {
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep_until(at) => {}
            }
            continue;
        }
        let written = {
            let mut slot = segment.lock().expect("wal segment lock poisoned");
            let Some(task) = slot.as_mut() else {
                return;
            };
            let round = take_pending(&shared, &mut batch);
            if batch.is_empty() {
                if round.shutdown {
                    *slot = None;
                    return;
                }
                false
            } else {
                let started = Instant::now();
                if write_batch(&shared, &mut task.writer, &batch).is_err() {
                    *slot = None;
                    return;
                }
                task.unsynced = Some(Unsynced {
                    round,
                    bytes: batch.len() as u64,
                    started,
                });
                batch.clear();
                true
            }
        };
        if !written {
            notify.notified().await;
            continue;
        }
        tokio::time::sleep(SIM_SYNC_LATENCY).await;
        let mut slot = segment.lock().expect("wal segment lock poisoned");
        let Some(task) = slot.as_mut() else {
            // Wal::shutdown took the segment and synced the batch itself.
            return;
        };
        match task.sync(&shared) {
            Ok(false) => {}
            Ok(true) | Err(Stopped) => {
                *slot = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write_records(dir: &Path, n: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for lsn in 1..=n {
            encode_frame(&mut bytes, 1, lsn, format!("payload-{lsn}").as_bytes());
        }
        fs::write(segment_path(dir, 1), &bytes).expect("write");
        bytes
    }

    type Records = Vec<(Lsn, Vec<u8>)>;

    fn read_all(dir: &Path) -> Result<(Records, Replay), WalError> {
        let mut records = Vec::new();
        let replay = replay(dir, 0, |r| {
            records.push((r.lsn, r.payload.to_vec()));
            Ok(())
        })?;
        Ok((records, replay))
    }

    #[test]
    fn frame_round_trips_and_crc_catches_flips() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 42, b"hello");
        let (record, len) = decode_frame(&buf).expect("valid");
        assert_eq!(len, buf.len());
        assert_eq!(
            record,
            Frame {
                lsn: 42,
                kind: 7,
                payload: b"hello"
            }
        );
        for i in 4..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode_frame(&bad), Err(FrameFault::BadCrc), "flip at {i}");
        }
        assert_eq!(decode_frame(&buf[..buf.len() - 1]), Err(FrameFault::Short));
    }

    #[test]
    fn torn_tail_at_every_offset_of_last_record_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = write_records(dir.path(), 5);
        let mut last = Vec::new();
        encode_frame(&mut last, 1, 5, b"payload-5");
        let last_start = full.len() - last.len();
        for cut in last_start..full.len() {
            fs::write(segment_path(dir.path(), 1), &full[..cut]).expect("write");
            let (records, replay) = read_all(dir.path()).expect("torn tail is not corruption");
            assert_eq!(records.len(), 4, "cut at {cut}");
            assert_eq!(replay.last_lsn, 4);
            assert_eq!(replay.torn_bytes, (cut - last_start) as u64);
            let len = fs::metadata(segment_path(dir.path(), 1))
                .expect("meta")
                .len();
            assert_eq!(len, last_start as u64, "torn bytes were cut off");
        }
    }

    #[test]
    fn garbage_tail_is_cut_but_middle_corruption_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut full = write_records(dir.path(), 10);
        // A half-written batch full of garbage after valid records.
        full.extend_from_slice(&[0xAB; 100]);
        fs::write(segment_path(dir.path(), 1), &full).expect("write");
        let (records, _) = read_all(dir.path()).expect("garbage tail is torn");
        assert_eq!(records.len(), 10);

        let full = write_records(dir.path(), 10);
        let mut third = Vec::new();
        encode_frame(&mut third, 1, 1, b"payload-1");
        let offset = third.len() * 2 + 20; // inside record 3's payload
        let mut bad = full.clone();
        bad[offset] ^= 0xFF;
        fs::write(segment_path(dir.path(), 1), &bad).expect("write");
        let err = read_all(dir.path()).expect_err("middle corruption");
        let text = err.to_string();
        assert!(text.contains("wal-00000000000000000001.log"), "{text}");
        assert!(
            text.contains(&format!("offset {}", third.len() * 2)),
            "{text}"
        );
        assert!(text.contains("truncate"), "says what to do: {text}");

        // A corrupted length field in the middle must not pass for a torn tail.
        let mut bad = full.clone();
        bad[third.len() * 2 + 3] = 0x7F;
        fs::write(segment_path(dir.path(), 1), &bad).expect("write");
        assert!(matches!(
            read_all(dir.path()),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[test]
    fn corruption_in_an_older_segment_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Vec::new();
        encode_frame(&mut first, 1, 1, b"a");
        encode_frame(&mut first, 1, 2, b"b");
        let mut second = Vec::new();
        encode_frame(&mut second, 1, 3, b"c");
        let truncated = &first[..first.len() - 1];
        fs::write(segment_path(dir.path(), 1), truncated).expect("write");
        fs::write(segment_path(dir.path(), 3), &second).expect("write");
        assert!(matches!(
            read_all(dir.path()),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn group_commit_acknowledges_after_durable_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let wal = Wal::open(dir.path(), 0, metrics.clone()).expect("open");
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                wal.reserve().await.expect("reserve");
                let lsn = wal.append(1, &i.to_le_bytes()).expect("append");
                wal.wait_durable(lsn).await.expect("durable");
                assert!(wal.durable_lsn() >= lsn);
                lsn
            }));
        }
        let mut lsns = Vec::new();
        for task in tasks {
            lsns.push(task.await.expect("task"));
        }
        lsns.sort();
        assert_eq!(lsns, (1..=64).collect::<Vec<_>>());
        let fsyncs = metrics.fsyncs.get();
        assert!((1..=64).contains(&fsyncs), "fsyncs {fsyncs}");
        wal.shutdown();

        let (records, replay) = read_all(dir.path()).expect("replay");
        assert_eq!(records.len(), 64);
        assert_eq!(replay.last_lsn, 64);
        let wal = Wal::open(dir.path(), replay.last_lsn, metrics).expect("reopen");
        assert_eq!(wal.append(1, b"next").expect("append"), 65);
        wal.wait_durable(65).await.expect("durable");
        wal.shutdown();
    }

    #[test]
    fn pending_records_are_due_at_once_if_eager_at_the_deadline_if_lazy() {
        let start = Instant::now();
        let delay = std::time::Duration::from_millis(7);
        let mut p = Pending {
            bytes: Vec::new(),
            next_lsn: 1,
            records: 0,
            shutdown: false,
            eager: false,
            lazy_since: None,
            lazy_delay: delay,
        };
        assert_eq!(p.due(), Due::Idle, "nothing pending");
        p.eager = true;
        assert_eq!(p.due(), Due::Idle, "an urge with nothing pending");
        p.eager = false;
        p.bytes.push(0);
        p.lazy_since = Some(start);
        assert_eq!(p.due(), Due::At(start + delay), "only lazy records");
        p.eager = true;
        assert_eq!(p.due(), Due::Now, "an eager record or an urge");
        p.eager = false;
        p.shutdown = true;
        assert_eq!(p.due(), Due::Now, "shutdown");
    }

    /// A lazy record waits for an eager one and both take one `fdatasync`;
    /// a waiter that urges gets a lazy record synced at once; alone, one
    /// is synced at its deadline.
    #[tokio::test]
    async fn lazy_records_ride_the_next_sync_or_are_urged_or_time_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let wal = Wal::open(dir.path(), 0, metrics.clone()).expect("open");
        // Far longer than the test: only an eager record or an urge syncs.
        wal.set_lazy_delay(std::time::Duration::from_secs(3600));
        let lazy = wal.append_lazy(1, b"finalize").expect("append");
        let unsynced = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            wal.wait_durable_unurged(lazy),
        )
        .await;
        assert!(unsynced.is_err(), "a lazy record alone is not synced early");
        assert_eq!(metrics.fsyncs.get(), 0);
        let eager = wal.append(1, b"prepare").expect("append");
        wal.wait_durable_unurged(eager).await.expect("durable");
        assert!(wal.durable_lsn() >= lazy);
        assert_eq!(metrics.fsyncs.get(), 1, "one fdatasync for both");

        let lazy = wal.append_lazy(1, b"forget").expect("append");
        wal.wait_durable(lazy).await.expect("urged");
        assert_eq!(metrics.fsyncs.get(), 2);

        wal.set_lazy_delay(std::time::Duration::from_millis(20));
        let lazy = wal.append_lazy(1, b"finalize").expect("append");
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            wal.wait_durable_unurged(lazy),
        )
        .await
        .expect("synced at its deadline")
        .expect("durable");
        wal.shutdown();
        let (records, _) = read_all(dir.path()).expect("replay");
        assert_eq!(records.len(), 4);
    }

    /// Simulator seed 56: a roll on a full disk left an empty segment named
    /// for LSN 46; the replica was then restored from a snapshot at 63. The
    /// log must go on in a segment named for 64, not write 64 into the
    /// segment named 46 (which the next recovery refuses as corrupt).
    #[tokio::test]
    async fn an_empty_segment_named_for_another_lsn_is_replaced_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(segment_path(dir.path(), 46), b"").expect("write");
        let wal = Wal::open(dir.path(), 63, Arc::new(Metrics::default())).expect("open");
        assert_eq!(wal.append(1, b"after the snapshot").expect("append"), 64);
        wal.wait_durable(64).await.expect("durable");
        wal.shutdown();
        assert!(!segment_path(dir.path(), 46).exists(), "the empty one went");
        let mut lsns = Vec::new();
        let replay = replay(dir.path(), 63, |r| {
            lsns.push(r.lsn);
            Ok(())
        })
        .expect("the log after the snapshot reads back");
        assert_eq!(lsns, vec![64]);
        assert_eq!(replay.last_lsn, 64);
    }

    #[tokio::test]
    async fn segments_roll_and_old_ones_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 0, Arc::new(Metrics::default())).expect("open");
        // Shrink the segment size through a private reopen of the writer is not
        // possible from outside; write enough large records instead.
        let payload = vec![7u8; 1024 * 1024];
        let mut last = 0;
        for _ in 0..70 {
            last = wal.append(1, &payload).expect("append");
            wal.wait_durable(last).await.expect("durable");
        }
        let segments = list_segments(dir.path()).expect("list");
        assert_eq!(segments.len(), 2, "{segments:?}");
        // Keeping more than the whole log deletes nothing.
        assert_eq!(wal.delete_through(last, u64::MAX).expect("delete"), 0);
        assert_eq!(wal.delete_through(last, 0).expect("delete"), 1);
        assert_eq!(list_segments(dir.path()).expect("list").len(), 1);
        wal.shutdown();
        // Without a snapshot covering the deleted records, replay refuses.
        assert!(matches!(
            replay(dir.path(), 0, |_| Ok(())),
            Err(WalError::Corrupt { .. })
        ));
        let first = list_segments(dir.path()).expect("list")[0].first_lsn;
        let mut count = 0;
        let replay = replay(dir.path(), first - 1, |_| {
            count += 1;
            Ok(())
        })
        .expect("replay");
        assert_eq!(replay.last_lsn, last);
        assert!(count < 70 && count > 0);
    }

    #[tokio::test]
    async fn a_log_reader_follows_the_log_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open_with(dir.path(), 0, Arc::new(Metrics::default()), 4096).expect("open");
        let payload = |lsn: Lsn| format!("record-{lsn}-").repeat(40).into_bytes();
        let mut last = 0;
        // A segment rolls after a group commit: one record per commit.
        for lsn in 1..=60 {
            last = wal.append(3, &payload(lsn)).expect("append");
            assert_eq!(last, lsn);
            wal.wait_durable(last).await.expect("durable");
        }
        assert!(list_segments(dir.path()).expect("list").len() > 3);

        // From the start, in batches, through every segment.
        let mut reader = LogReader::open(dir.path(), 1)
            .expect("open")
            .expect("on disk");
        let mut seen = Vec::new();
        loop {
            let batch = reader.read(last, 2000).expect("read");
            if batch.is_empty() {
                break;
            }
            seen.extend(batch);
        }
        assert_eq!(seen.len(), 60);
        for (i, r) in seen.iter().enumerate() {
            assert_eq!((r.lsn, r.kind), (i as u64 + 1, 3));
            assert_eq!(r.payload, payload(r.lsn));
        }

        // From the middle of a segment, never past `upto`.
        let mut reader = LogReader::open(dir.path(), 37)
            .expect("open")
            .expect("on disk");
        assert_eq!(reader.next_lsn(), 37);
        let batch = reader.read(40, usize::MAX).expect("read");
        assert_eq!(
            batch.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![37, 38, 39, 40]
        );
        assert!(reader.read(40, usize::MAX).expect("read").is_empty());
        // The writer goes on; the reader continues where it stopped.
        let more = wal.append(3, &payload(61)).expect("append");
        wal.wait_durable(more).await.expect("durable");
        let rest = reader.read(more, usize::MAX).expect("read");
        assert_eq!(rest.first().map(|r| r.lsn), Some(41));
        assert_eq!(rest.last().map(|r| r.lsn), Some(61));

        // After old segments go, their records are not on disk any more.
        assert!(wal.delete_through(50, 0).expect("delete") > 0);
        assert!(LogReader::open(dir.path(), 1).expect("open").is_none());
        let first = list_segments(dir.path()).expect("list")[0].first_lsn;
        let mut reader = LogReader::open(dir.path(), first)
            .expect("open")
            .expect("kept");
        assert_eq!(reader.read(first, 1).expect("read")[0].lsn, first);
        wal.shutdown();
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_bytes_of_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open_with(dir.path(), 0, Arc::new(Metrics::default()), 4096).expect("open");
        let payload = vec![1u8; 1000];
        let mut last = 0;
        for _ in 0..40 {
            last = wal.append(1, &payload).expect("append");
            wal.wait_durable(last).await.expect("durable");
        }
        let before = list_segments(dir.path()).expect("list").len();
        // Keep ~10 KB: the segments left hold at least that much.
        let deleted = wal.delete_through(last, 10_000).expect("delete");
        let left = list_segments(dir.path()).expect("list");
        assert!(deleted > 0 && deleted < before, "{deleted} of {before}");
        let bytes: u64 = left
            .iter()
            .map(|s| std::fs::metadata(&s.path).expect("meta").len())
            .sum();
        assert!(bytes >= 10_000, "{bytes}");
        // And recovery after a snapshot at `last` reads only what it needs.
        wal.shutdown();
        let replay = replay(dir.path(), last, |_| Ok(())).expect("replay");
        assert_eq!((replay.last_lsn, replay.records), (last, 0));
    }
}
