//! The file operations this crate uses, behind one small facade, so the
//! same code runs on the real filesystem and inside a deterministic
//! simulation.
//!
//! With the `sim` feature and inside a turmoil simulation
//! ([`in_simulation`]) every call goes to the simulated host's filesystem
//! (`turmoil::fs::shim::std::fs`), which loses unsynced data when the host
//! crashes. Otherwise — always in production, and in every test that does
//! not start a simulation — every call is the `std::fs` call it replaces.
//! The choice is made at run time, per call: feature unification can
//! compile `sim` into the real binary, which must keep using `std`.
//!
//! This module never changes what a caller asked for (no retries, no extra
//! syncs): it only picks the filesystem.

use std::ffi::OsString;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[cfg(feature = "sim")]
use turmoil::fs::shim::std::fs as sim_fs;

/// Whether this call runs inside a turmoil simulation. Always false
/// without the `sim` feature.
pub fn in_simulation() -> bool {
    #[cfg(feature = "sim")]
    {
        turmoil::in_simulation()
    }
    #[cfg(not(feature = "sim"))]
    {
        false
    }
}

/// Runs blocking work (file IO) off the async workers: on a blocking-pool
/// thread normally (`spawn_blocking`), inline on the current task inside a
/// simulation, where another thread would be nondeterministic and could
/// not reach the host's simulated filesystem.
pub async fn blocking<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if in_simulation() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}

/// An open file on the real or the simulated filesystem.
#[derive(Debug)]
pub enum File {
    Std(std::fs::File),
    #[cfg(feature = "sim")]
    Sim(sim_fs::File),
}

impl File {
    /// Opens a file read-only.
    pub fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    /// Creates (or truncates) a file for writing.
    pub fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// The file's length in bytes.
    pub fn len_bytes(&self) -> io::Result<u64> {
        match self {
            File::Std(f) => Ok(f.metadata()?.len()),
            #[cfg(feature = "sim")]
            File::Sim(f) => Ok(f.metadata()?.len()),
        }
    }

    pub fn set_len(&self, size: u64) -> io::Result<()> {
        match self {
            File::Std(f) => f.set_len(size),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.set_len(size),
        }
    }

    /// `fdatasync`.
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            File::Std(f) => f.sync_data(),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.sync_data(),
        }
    }

    /// `fsync`.
    pub fn sync_all(&self) -> io::Result<()> {
        match self {
            File::Std(f) => f.sync_all(),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.sync_all(),
        }
    }

    /// Takes an exclusive advisory lock (`flock`), without waiting; held
    /// until the file is closed. Inside a simulation this does nothing:
    /// turmoil's filesystem has no locks, and each simulated host has a
    /// filesystem of its own, so no other process can share the directory.
    pub fn try_lock(&self) -> Result<(), std::fs::TryLockError> {
        match self {
            File::Std(f) => f.try_lock(),
            #[cfg(feature = "sim")]
            File::Sim(_) => Ok(()),
        }
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            File::Std(f) => f.read(buf),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.read(buf),
        }
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            File::Std(f) => f.write(buf),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            File::Std(f) => f.flush(),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.flush(),
        }
    }
}

impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            File::Std(f) => f.seek(pos),
            #[cfg(feature = "sim")]
            File::Sim(f) => f.seek(pos),
        }
    }
}

/// `std::fs::OpenOptions` for the flags this crate uses; the filesystem is
/// picked when [`OpenOptions::open`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    pub fn read(&mut self, read: bool) -> &mut OpenOptions {
        self.read = read;
        self
    }

    pub fn write(&mut self, write: bool) -> &mut OpenOptions {
        self.write = write;
        self
    }

    pub fn append(&mut self, append: bool) -> &mut OpenOptions {
        self.append = append;
        self
    }

    pub fn truncate(&mut self, truncate: bool) -> &mut OpenOptions {
        self.truncate = truncate;
        self
    }

    pub fn create(&mut self, create: bool) -> &mut OpenOptions {
        self.create = create;
        self
    }

    pub fn create_new(&mut self, create_new: bool) -> &mut OpenOptions {
        self.create_new = create_new;
        self
    }

    pub fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        #[cfg(feature = "sim")]
        if in_simulation() {
            return sim_fs::OpenOptions::new()
                .read(self.read)
                .write(self.write)
                .append(self.append)
                .truncate(self.truncate)
                .create(self.create)
                .create_new(self.create_new)
                .open(path)
                .map(File::Sim);
        }
        std::fs::OpenOptions::new()
            .read(self.read)
            .write(self.write)
            .append(self.append)
            .truncate(self.truncate)
            .create(self.create)
            .create_new(self.create_new)
            .open(path)
            .map(File::Std)
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub file_name: OsString,
    pub path: PathBuf,
}

/// The entries of `dir`, sorted by name (so every listing comes out in the
/// same order on every filesystem).
pub fn read_dir(dir: impl AsRef<Path>) -> io::Result<Vec<DirEntry>> {
    let dir = dir.as_ref();
    let mut entries = Vec::new();
    #[cfg(feature = "sim")]
    if in_simulation() {
        for entry in sim_fs::read_dir(dir)? {
            let entry = entry?;
            entries.push(DirEntry {
                file_name: entry.file_name(),
                path: entry.path(),
            });
        }
        entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        return Ok(entries);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        entries.push(DirEntry {
            file_name: entry.file_name(),
            path: entry.path(),
        });
    }
    entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(entries)
}

/// Makes a directory's entries (created, renamed, removed files) durable:
/// `fsync` of the directory.
pub fn sync_dir(dir: impl AsRef<Path>) -> io::Result<()> {
    #[cfg(feature = "sim")]
    if in_simulation() {
        return sim_fs::sync_dir(dir);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Expands to the `std::fs` call, or to the same call on the simulated
/// filesystem inside a simulation.
macro_rules! dispatch {
    ($name:ident($($arg:expr),*)) => {{
        #[cfg(feature = "sim")]
        if in_simulation() {
            return sim_fs::$name($($arg),*);
        }
        std::fs::$name($($arg),*)
    }};
}

pub fn create_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    dispatch!(create_dir_all(path))
}

pub fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    dispatch!(remove_file(path))
}

pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    dispatch!(rename(from, to))
}

pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    dispatch!(read(path))
}

pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    dispatch!(read_to_string(path))
}

pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> io::Result<()> {
    dispatch!(write(path, contents))
}
