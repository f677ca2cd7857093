//! Snapshots: the whole state of a replica as of one LSN, so recovery reads
//! the snapshot and only the log after it.
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place
//! and the directory fsynced; only then are older snapshots and the log
//! segments it covers deleted. A file without its trailer chunk is never a
//! snapshot.
//!
//! ```text
//! "TRSNAP01" | { len: u32 LE | crc32: u32 LE | SnapChunk (prost) }*
//! ```

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use trellis_types::Lsn;

use crate::fsio::{self, File};
use crate::record::*;
use crate::state::{Capture, Entry};
use crate::wal::{WalError, sync_dir};

const MAGIC: &[u8; 8] = b"TRSNAP01";
const PREFIX: &str = "snap-";
const SUFFIX: &str = ".snap";
/// Entries per chunk: bounds the memory one chunk takes to encode or decode.
pub const SNAPSHOT_CHUNK_ENTRIES: usize = 4096;
/// Largest chunk a reader accepts.
const CHUNK_BYTES_MAX: usize = 512 * 1024 * 1024;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn snapshot_path(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(format!("{PREFIX}{lsn:020}{SUFFIX}"))
}

/// Snapshots in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fsio::read_dir(dir).map_err(io_err(dir))? {
        let Some(name) = entry.file_name.to_str() else {
            continue;
        };
        if let Some(lsn) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<Lsn>().ok())
        {
            out.push((lsn, entry.path));
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.0));
    Ok(out)
}

fn write_chunk(out: &mut impl Write, chunk: &SnapChunk) -> std::io::Result<()> {
    let bytes = chunk.encode_to_vec();
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&crc32fast::hash(&bytes).to_le_bytes())?;
    out.write_all(&bytes)
}

/// Writes `capture` as the newest snapshot and returns its path. Does not
/// delete anything.
pub fn write(dir: &Path, capture: &Capture) -> Result<PathBuf, WalError> {
    let final_path = snapshot_path(dir, capture.lsn);
    let tmp_path = dir.join(format!("{PREFIX}{:020}.tmp", capture.lsn));
    let file = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let result = (|| -> std::io::Result<()> {
        encode(&mut out, capture)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    result.map_err(io_err(&tmp_path))?;
    fsio::rename(&tmp_path, &final_path).map_err(io_err(&final_path))?;
    sync_dir(dir)?;
    Ok(final_path)
}

/// Writes the bytes of a snapshot of `capture` (the file format, also sent
/// to a backup that needs a snapshot).
pub fn encode(out: &mut impl Write, capture: &Capture) -> std::io::Result<()> {
    {
        out.write_all(MAGIC)?;
        for batch in capture.entries.chunks(SNAPSHOT_CHUNK_ENTRIES) {
            let chunk = SnapChunk {
                entries: batch
                    .iter()
                    .map(|(key, entry)| SnapEntry {
                        key: key.to_vec(),
                        value: entry.value().map(<[u8]>::to_vec),
                        version: entry.version(),
                    })
                    .collect(),
                ..SnapChunk::default()
            };
            write_chunk(out, &chunk)?;
        }
        write_chunk(
            out,
            &SnapChunk {
                prepared: capture.prepared.clone(),
                decisions: capture.decisions.clone(),
                outcomes: capture.outcomes.clone(),
                ..SnapChunk::default()
            },
        )?;
        write_chunk(
            out,
            &SnapChunk {
                trailer: Some(SnapTrailer {
                    lsn: capture.lsn,
                    entries: capture.entries.len() as u64,
                    epochs: capture
                        .epochs
                        .iter()
                        .map(|(epoch, lsn)| crate::record::SnapEpoch {
                            epoch: *epoch,
                            lsn: *lsn,
                        })
                        .collect(),
                    moving: capture.moving.clone(),
                    version_points: capture
                        .version_points
                        .iter()
                        .map(|(lsn, offset)| SnapVersionPoint {
                            lsn: *lsn,
                            offset: *offset,
                        })
                        .collect(),
                }),
                ..SnapChunk::default()
            },
        )?;
    }
    Ok(())
}

/// Deletes every snapshot older than `keep_lsn`, and stray temporary files.
pub fn delete_older(dir: &Path, keep_lsn: Lsn) -> Result<(), WalError> {
    for (lsn, path) in list(dir)? {
        if lsn < keep_lsn {
            fsio::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    for entry in fsio::read_dir(dir).map_err(io_err(dir))? {
        if entry
            .file_name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".tmp"))
        {
            fsio::remove_file(&entry.path).map_err(io_err(dir))?;
        }
    }
    Ok(())
}

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail: format!(
            "{} (a snapshot is renamed into place only once complete, so this is \
             damage on disk; the log it replaced is gone)",
            detail.into()
        ),
    }
}

/// Reads the snapshot at `path`.
pub fn read(path: &Path) -> Result<Capture, WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    decode(&bytes, path)
}

/// Decodes snapshot bytes; `path` names them in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Capture, WalError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(path, 0, "not a Trellis snapshot (bad magic)"));
    }
    let mut offset = MAGIC.len();
    let mut capture = Capture::default();
    let mut trailer = None;
    while offset < bytes.len() {
        if bytes.len() - offset < 8 {
            return Err(corrupt(path, offset as u64, "truncated chunk header"));
        }
        let len =
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
        if len > CHUNK_BYTES_MAX || bytes.len() - offset - 8 < len {
            return Err(corrupt(path, offset as u64, "truncated or oversized chunk"));
        }
        let body = &bytes[offset + 8..offset + 8 + len];
        if crc32fast::hash(body) != crc {
            return Err(corrupt(path, offset as u64, "chunk checksum mismatch"));
        }
        let chunk = SnapChunk::decode(body)
            .map_err(|e| corrupt(path, offset as u64, format!("undecodable chunk: {e}")))?;
        if trailer.is_some() {
            return Err(corrupt(path, offset as u64, "data after the trailer"));
        }
        for e in chunk.entries {
            capture.entries.push((
                e.key.into_boxed_slice(),
                Entry::new(e.version, e.value.as_deref()),
            ));
        }
        capture.prepared.extend(chunk.prepared);
        capture.decisions.extend(chunk.decisions);
        capture.outcomes.extend(chunk.outcomes);
        trailer = chunk.trailer;
        offset += 8 + len;
    }
    let trailer =
        trailer.ok_or_else(|| corrupt(path, offset as u64, "no trailer: incomplete snapshot"))?;
    if trailer.entries != capture.entries.len() as u64 {
        return Err(corrupt(
            path,
            offset as u64,
            format!(
                "trailer counts {} entries, found {}",
                trailer.entries,
                capture.entries.len()
            ),
        ));
    }
    capture.lsn = trailer.lsn;
    capture.epochs = trailer.epochs.iter().map(|e| (e.epoch, e.lsn)).collect();
    capture.moving = trailer.moving;
    capture.version_points = trailer
        .version_points
        .iter()
        .map(|p| (p.lsn, p.offset))
        .collect();
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sample(lsn: Lsn, n: usize) -> Capture {
        Capture {
            lsn,
            entries: (0..n)
                .map(|i| {
                    (
                        format!("k{i:05}").into_bytes().into_boxed_slice(),
                        Entry::new(
                            i as u64 + 1,
                            (i % 7 != 0).then_some(format!("v{i}").as_bytes()),
                        ),
                    )
                })
                .collect(),
            ..Capture::default()
        }
    }

    #[test]
    fn round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capture = sample(99, 10_000);
        let path = write(dir.path(), &capture).expect("write");
        let back = read(&path).expect("read");
        assert_eq!(back.lsn, 99);
        assert_eq!(back.entries, capture.entries);

        let mut bytes = fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let err = read(&path).expect_err("damaged");
        assert!(
            err.to_string().contains("snap-00000000000000000099.snap"),
            "{err}"
        );

        let bytes = fs::read(write(dir.path(), &capture).expect("write")).expect("read");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        assert!(
            read(&path).is_err(),
            "a snapshot without its trailer is refused"
        );
    }

    #[test]
    fn newest_first_and_old_ones_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &sample(5, 1)).expect("write");
        write(dir.path(), &sample(50, 1)).expect("write");
        fs::write(dir.path().join("snap-00000000000000000060.tmp"), b"partial").expect("write");
        assert_eq!(list(dir.path()).expect("list")[0].0, 50);
        delete_older(dir.path(), 50).expect("delete");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
