//! Reloading a process's TLS files while it runs: on SIGHUP, and when a
//! poll every [`TLS_RELOAD_POLL`] finds them changed.
//!
//! The decisions are pure: [`Watch::plan`] says, from the files' contents
//! as just read, whether there is anything to load (a poll waits until the
//! contents have stayed the same for one poll, so that a certificate
//! written before its key is never loaded half-done), and
//! [`check_replacement`] whether a new identity may replace the installed
//! one (it loads — CA bundle, certificate and key parse, the key fits, the
//! certificate is signed by a CA of the bundle — and carries the same
//! role). [`Reloader::check`] is the IO around them: it reads the files,
//! installs the new identity ([`super::install`]) or keeps the old one,
//! logs, and counts ([`reloads`]).
//!
//! Swapping the installed identity is the whole reload: every handshake
//! the acceptor runs and every dial reads the identity installed at that
//! moment, so new connections use the new files and established ones keep
//! theirs. A CA bundle holding several CAs is trusted whole, which is how
//! a CA rotation overlaps the old and the new CA.
//!
//! This module never waits for signals nor sleeps: the caller (the CLI)
//! owns the SIGHUP handler and the poll's timer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::{Identity, PeerRole, PemFiles, TlsError, TlsFiles};

/// How often a process reads its TLS files to see whether they changed. A
/// change is loaded at the second poll that reads it unchanged, so 5 to 10
/// seconds after the files were written (at once on SIGHUP).
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(5);

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic poll.
    Poll,
    /// SIGHUP: the operator says the files are ready.
    Signal,
}

/// What to do with a reading of the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// They hold what the installed identity was loaded from.
    Unchanged,
    /// A poll read new contents that differ from the previous poll's:
    /// they may be half-written; wait for the next poll.
    Settling,
    /// They hold what a reload already refused (and logged): wait for
    /// them to change again, or for SIGHUP.
    AlreadyRefused,
    /// Load them and, if acceptable, install them.
    Load,
}

/// What the reload decisions remember: the contents behind the installed
/// identity, the last contents refused, the last poll's reading.
#[derive(Debug)]
pub struct Watch {
    installed: PemFiles,
    refused: Option<PemFiles>,
    last_poll: Option<PemFiles>,
}

impl Watch {
    /// Watching files whose contents `installed` the process runs with.
    pub fn new(installed: PemFiles) -> Watch {
        Watch {
            last_poll: Some(installed.clone()),
            installed,
            refused: None,
        }
    }

    /// What to do with `read`, the files as just read on `trigger`. Pure.
    pub fn plan(&self, trigger: Trigger, read: &PemFiles) -> Plan {
        if *read == self.installed {
            return Plan::Unchanged;
        }
        match trigger {
            Trigger::Signal => Plan::Load,
            Trigger::Poll if self.refused.as_ref() == Some(read) => Plan::AlreadyRefused,
            Trigger::Poll if self.last_poll.as_ref() != Some(read) => Plan::Settling,
            Trigger::Poll => Plan::Load,
        }
    }

    /// [`Watch::plan`], remembering `read` as the latest reading.
    pub fn observe(&mut self, trigger: Trigger, read: &PemFiles) -> Plan {
        let plan = self.plan(trigger, read);
        if trigger == Trigger::Poll {
            self.last_poll = Some(read.clone());
        }
        if plan == Plan::Unchanged {
            self.refused = None;
        }
        plan
    }

    /// Records the outcome of loading `read`: installed, or refused.
    pub fn loaded(&mut self, read: PemFiles, installed: bool) {
        if installed {
            self.installed = read;
            self.refused = None;
        } else {
            self.refused = Some(read);
        }
    }
}

/// Why a reload kept the installed identity. Each message names the file
/// and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] TlsError),
    #[error(
        "the certificate {path} carries the role of {new}, and this process runs as {installed}: \
         a reload keeps the role (restart the process to change it)"
    )]
    RoleChanged {
        path: std::path::PathBuf,
        installed: PeerRole,
        new: PeerRole,
    },
}

/// Whether `new`, loaded from `files`, may replace an identity carrying
/// `installed`: it loaded (see [`Identity::from_pem`]) and carries the
/// same role. Pure.
pub fn check_replacement(
    installed: &PeerRole,
    files: &TlsFiles,
    new: Result<Identity, TlsError>,
) -> Result<Identity, ReloadError> {
    let new = new?;
    if new.role() != installed {
        return Err(ReloadError::RoleChanged {
            path: files.cert.clone(),
            installed: installed.clone(),
            new: new.role().clone(),
        });
    }
    Ok(new)
}

/// Reloads that installed a new identity.
static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
/// Reloads that kept the old identity.
static RELOADS_ERROR: AtomicU64 = AtomicU64::new(0);

/// How many reloads this process made: `(installed, refused)`.
pub fn reloads() -> (u64, u64) {
    (RELOADS_OK.load(Relaxed), RELOADS_ERROR.load(Relaxed))
}

/// What one [`Reloader::check`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to load (see [`Plan`]).
    Nothing(Plan),
    /// A new identity is installed.
    Reloaded,
    /// The files were refused; the old identity stays.
    Refused(ReloadError),
}

/// The files of the installed identity, watched.
#[derive(Debug)]
pub struct Reloader {
    files: TlsFiles,
    watch: Watch,
}

impl Reloader {
    /// Watching `files`, whose contents `installed` are behind the
    /// identity installed now.
    pub fn new(files: TlsFiles, installed: PemFiles) -> Reloader {
        Reloader {
            files,
            watch: Watch::new(installed),
        }
    }

    /// Reads the files and, if the plan says so, loads them and installs
    /// the new identity or keeps the old one (one ERROR naming the file
    /// and why). Reads files: call it off the async workers.
    pub fn check(&mut self, trigger: Trigger) -> Outcome {
        let Some(current) = super::current() else {
            // Nothing installed: this process is plaintext, and stays so.
            return Outcome::Nothing(Plan::Unchanged);
        };
        let read = PemFiles::read(&self.files);
        let plan = self.watch.observe(trigger, &read);
        if plan != Plan::Load {
            if trigger == Trigger::Signal {
                tracing::info!("SIGHUP: the TLS files are unchanged; keeping the identity");
            }
            return Outcome::Nothing(plan);
        }
        let loaded = Identity::from_pem(&self.files, &read);
        match check_replacement(current.role(), &self.files, loaded) {
            Ok(identity) => {
                let expiry = identity.expiry();
                tracing::info!(
                    ?trigger,
                    role = %identity.role(),
                    cas = expiry.ca_count,
                    certificate = %expiry.cert_subject,
                    "reloaded the TLS files: new connections use them"
                );
                super::install(identity);
                self.watch.loaded(read, true);
                RELOADS_OK.fetch_add(1, Relaxed);
                Outcome::Reloaded
            }
            Err(why) => {
                tracing::error!(
                    ?trigger,
                    error = %why,
                    "refused to reload the TLS files; keeping the identity in use"
                );
                self.watch.loaded(read, false);
                RELOADS_ERROR.fetch_add(1, Relaxed);
                Outcome::Refused(why)
            }
        }
    }
}
