//! A reshard job as the catalog stores it ([`JobRecord`]: the pure
//! [`Job`] plus what the driver keeps beside it), its encoding, and the
//! pure rules the driver and the Admin service decide by: who may run a
//! job ([`claim`]), when a driver must stop acting ([`may_act`]), how an
//! operator's pause/resume/cancel reaches a running job ([`ask`],
//! [`take_asked`]), and the progress figures ([`rate_and_eta`]).
//!
//! # Encoding
//!
//! A prost message ([`JobState`]), versioned by its `format` field
//! ([`JOB_FORMAT`]). A decode of anything else (garbage, a newer format, a
//! field out of range) is a [`DecodeError`], never a guess: the driver
//! leaves such a job alone and says so. Slots are stored as slot numbers
//! (packed varints, at most two bytes each), not bitmaps: a job moves at
//! most every slot once, so a state stays far under
//! [`JOB_STATE_BYTES_MAX`](crate::catalog::JOB_STATE_BYTES_MAX).
//!
//! # What this module never does
//!
//! No IO and no clock: `now` is passed in.

use prost::Message;
use trellis_types::{SLOTS, Slot, SlotSet};

use crate::reshard::{Batch, Control, Job, JobError, Phase, Stop};

/// The encoding's version; [`decode`] refuses any other.
pub const JOB_FORMAT: u32 = 1;

/// Most jobs that one encoded job may hold batches of: every slot in its
/// own batch. Checked on decode, so a corrupt row cannot make a huge job.
pub const BATCHES_MAX: usize = SLOTS as usize;

/// An operator's request to a job that a driver may be acting on, kept in
/// the record until the job's owner applies it between two actions
/// ([`take_asked`]). Applying it to the stored job directly could pause
/// a job whose source the driver is freezing at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Pause,
    Resume,
    Cancel,
}

/// A job and what the driver keeps with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub job: Job,
    /// The coordinator id that claimed the job (empty: nobody yet). Only
    /// the owner acts on a job; see [`claim`].
    pub owner: String,
    /// When the job was created, Unix milliseconds (for its rate).
    pub started_at_ms: u64,
    /// Longest write pause of a cutover so far (freeze to flip), in ms.
    pub pause_max_ms: u64,
    /// A request waiting for the owner (only while the job runs).
    pub asked: Option<Asked>,
}

impl JobRecord {
    pub fn new(job: Job, started_at_ms: u64) -> JobRecord {
        JobRecord {
            job,
            owner: String::new(),
            started_at_ms,
            pause_max_ms: 0,
            asked: None,
        }
    }

    /// Whether a driver has something to do for this job.
    pub fn active(&self) -> bool {
        self.job.control == Control::Running
    }
}

/// Why a stored job could not be read. The row is left as it is.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("reshard job {id}: not a job state: {source}")]
    Malformed {
        id: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "reshard job {id}: stored in format {found}, this coordinator reads {JOB_FORMAT} (a newer coordinator wrote it?)"
    )]
    Format { id: u64, found: u32 },
    #[error("reshard job {id}: {what}")]
    Invalid { id: u64, what: String },
}

/// The stored form of a [`JobRecord`] (see the module doc).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobState {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(message, repeated, tag = "2")]
    pub batches: Vec<BatchState>,
    #[prost(uint64, tag = "3")]
    pub batch: u64,
    /// The phase as `phase_code` numbers it.
    #[prost(uint32, tag = "4")]
    pub phase: u32,
    /// 0 running, 1 paused, 2 cancelled, 3 done.
    #[prost(uint32, tag = "5")]
    pub control: u32,
    #[prost(string, optional, tag = "6")]
    pub reason: Option<String>,
    /// 0 none, 1 pause, 2 cancel.
    #[prost(uint32, tag = "7")]
    pub stop: u32,
    #[prost(uint64, tag = "8")]
    pub copied_version: u64,
    #[prost(uint64, tag = "9")]
    pub behind: u64,
    #[prost(uint64, optional, tag = "10")]
    pub frozen_at_ms: Option<u64>,
    #[prost(uint32, tag = "11")]
    pub freeze_attempts: u32,
    #[prost(uint64, tag = "12")]
    pub keys_copied: u64,
    #[prost(uint64, tag = "13")]
    pub bytes_copied: u64,
    #[prost(string, tag = "14")]
    pub owner: String,
    #[prost(uint64, tag = "15")]
    pub started_at_ms: u64,
    #[prost(uint64, tag = "16")]
    pub pause_max_ms: u64,
    /// 0 none, 1 pause, 2 resume, 3 cancel.
    #[prost(uint32, tag = "17")]
    pub asked: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchState {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    #[prost(uint32, repeated, tag = "3")]
    pub slots: Vec<u32>,
}

const PHASES: [Phase; 7] = [
    Phase::Import,
    Phase::CopyBase,
    Phase::CatchUp,
    Phase::Freeze,
    Phase::Drain,
    Phase::Flip,
    Phase::Release,
];

fn phase_code(phase: Phase) -> u32 {
    PHASES
        .iter()
        .position(|p| *p == phase)
        .expect("every phase is in PHASES") as u32
}

/// Encodes a record (its job's id is the catalog row's, not stored).
pub fn encode(record: &JobRecord) -> Vec<u8> {
    let job = &record.job;
    let (control, reason) = match &job.control {
        Control::Running => (0, None),
        Control::Paused { reason } => (1, reason.clone()),
        Control::Cancelled => (2, None),
        Control::Done => (3, None),
    };
    JobState {
        format: JOB_FORMAT,
        batches: job
            .batches
            .iter()
            .map(|b| BatchState {
                from: b.from,
                to: b.to,
                slots: (0..SLOTS).filter(|s| b.slots.contains(*s)).collect(),
            })
            .collect(),
        batch: job.batch as u64,
        phase: phase_code(job.phase),
        control,
        reason,
        stop: match job.stop {
            None => 0,
            Some(Stop::Pause) => 1,
            Some(Stop::Cancel) => 2,
        },
        copied_version: job.copied_version,
        behind: job.behind,
        frozen_at_ms: job.frozen_at_ms,
        freeze_attempts: job.freeze_attempts,
        keys_copied: job.keys_copied,
        bytes_copied: job.bytes_copied,
        owner: record.owner.clone(),
        started_at_ms: record.started_at_ms,
        pause_max_ms: record.pause_max_ms,
        asked: match record.asked {
            None => 0,
            Some(Asked::Pause) => 1,
            Some(Asked::Resume) => 2,
            Some(Asked::Cancel) => 3,
        },
    }
    .encode_to_vec()
}

/// Decodes the state of job `id` (the row's id), checking every field.
pub fn decode(id: u64, bytes: &[u8]) -> Result<JobRecord, DecodeError> {
    let state = JobState::decode(bytes).map_err(|source| DecodeError::Malformed { id, source })?;
    if state.format != JOB_FORMAT {
        return Err(DecodeError::Format {
            id,
            found: state.format,
        });
    }
    let invalid = |what: String| DecodeError::Invalid { id, what };
    if state.batches.len() > BATCHES_MAX {
        return Err(invalid(format!("{} batches", state.batches.len())));
    }
    let mut batches = Vec::with_capacity(state.batches.len());
    for (i, b) in state.batches.iter().enumerate() {
        if b.from == b.to || b.slots.is_empty() {
            return Err(invalid(format!(
                "batch {i} moves {} slots from group {} to group {}",
                b.slots.len(),
                b.from,
                b.to
            )));
        }
        let mut slots = SlotSet::empty();
        for slot in &b.slots {
            if *slot >= SLOTS {
                return Err(invalid(format!("batch {i} names slot {slot}")));
            }
            slots.insert(*slot);
        }
        batches.push(Batch {
            from: b.from,
            to: b.to,
            slots,
        });
    }
    let batch = usize::try_from(state.batch)
        .ok()
        .filter(|b| *b <= batches.len())
        .ok_or_else(|| invalid(format!("at batch {} of {}", state.batch, batches.len())))?;
    let phase = *PHASES
        .get(state.phase as usize)
        .ok_or_else(|| invalid(format!("phase {}", state.phase)))?;
    let control = match state.control {
        0 => Control::Running,
        1 => Control::Paused {
            reason: state.reason,
        },
        2 => Control::Cancelled,
        3 => Control::Done,
        other => return Err(invalid(format!("control {other}"))),
    };
    if control == Control::Running && batch == batches.len() {
        return Err(invalid("running with every batch moved".into()));
    }
    let stop = match state.stop {
        0 => None,
        1 => Some(Stop::Pause),
        2 => Some(Stop::Cancel),
        other => return Err(invalid(format!("stop {other}"))),
    };
    let asked = match state.asked {
        0 => None,
        1 => Some(Asked::Pause),
        2 => Some(Asked::Resume),
        3 => Some(Asked::Cancel),
        other => return Err(invalid(format!("asked {other}"))),
    };
    Ok(JobRecord {
        job: Job {
            id,
            batches,
            batch,
            phase,
            control,
            stop,
            copied_version: state.copied_version,
            behind: state.behind,
            frozen_at_ms: state.frozen_at_ms,
            freeze_attempts: state.freeze_attempts,
            keys_copied: state.keys_copied,
            bytes_copied: state.bytes_copied,
        },
        owner: state.owner,
        started_at_ms: state.started_at_ms,
        pause_max_ms: state.pause_max_ms,
        asked,
    })
}

/// What a driver does about a job that has something to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This coordinator owns it: run it.
    Mine,
    /// Nobody owns it, or its owner is dead: claim it (a CAS), then run it.
    Take,
    /// A live coordinator owns it: leave it.
    Leave,
}

/// Who runs a job. `owner_heartbeat_age_ms` is the age of the owner's
/// heartbeat in the catalog (`None`: no row, so it is gone for good). A
/// job is taken over only once its owner's heartbeat is older than
/// `silence_max_ms` — the bound past which the status calls a coordinator
/// dead ([`crate::COORDINATOR_SILENCE_MAX`]). An owner stops acting before
/// that ([`may_act`]), so two drivers never act on one job at once.
pub fn claim(
    owner: &str,
    me: &str,
    owner_heartbeat_age_ms: Option<u64>,
    silence_max_ms: u64,
) -> Claim {
    if owner == me {
        Claim::Mine
    } else if owner.is_empty() {
        Claim::Take
    } else {
        match owner_heartbeat_age_ms {
            Some(age) if age <= silence_max_ms => Claim::Leave,
            _ => Claim::Take,
        }
    }
}

/// Self-fencing: whether a driver may start an action that takes at most
/// `action_max_ms` at `now_ms`. `alive_at_ms` is the latest instant (same
/// clock as `now_ms`) by which its heartbeat is known to be stored: the
/// start of a catalog read minus the age that read reported for its own
/// row (`None`: never proven). Others may take its jobs
/// `silence_max_ms` after that heartbeat, so the action must end, with
/// `slack_ms` to spare for clock drift, before then. A driver that cannot
/// reach the catalog therefore stops acting on its own.
pub fn may_act(
    alive_at_ms: Option<u64>,
    now_ms: u64,
    action_max_ms: u64,
    silence_max_ms: u64,
    slack_ms: u64,
) -> bool {
    alive_at_ms.is_some_and(|alive| {
        now_ms
            .saturating_add(action_max_ms)
            .saturating_add(slack_ms)
            <= alive.saturating_add(silence_max_ms)
    })
}

/// An operator's pause, resume or cancel. A job that is not running has no
/// driver acting on it, so the request is applied at once; a running
/// job's request waits in `asked` for its owner, after checking now that
/// it could be applied (so a refusal is answered at once). A later request
/// replaces an earlier one, except that nothing takes a cancel back.
pub fn ask(record: &mut JobRecord, asked: Asked) -> Result<(), JobError> {
    if !record.active() {
        return apply(&mut record.job, asked);
    }
    let mut probe = record.job.clone();
    if let Some(earlier) = record.asked {
        apply(&mut probe, earlier)?;
    }
    apply(&mut probe, asked)?;
    record.asked = match (record.asked, asked) {
        (Some(Asked::Cancel), _) => Some(Asked::Cancel),
        (Some(Asked::Pause), Asked::Resume) => None,
        (_, asked) => Some(asked),
    };
    Ok(())
}

/// Applies a waiting request to the job (by its owner, between actions).
/// A request that no longer applies (the job finished meanwhile) is
/// dropped with the error, for the log.
pub fn take_asked(record: &mut JobRecord) -> Option<Result<Asked, JobError>> {
    let asked = record.asked.take()?;
    Some(apply(&mut record.job, asked).map(|()| asked))
}

fn apply(job: &mut Job, asked: Asked) -> Result<(), JobError> {
    match asked {
        Asked::Pause => job.request(Stop::Pause),
        Asked::Cancel => job.request(Stop::Cancel),
        Asked::Resume => job.resume(),
    }
}

/// The job's state as the Admin API names it.
pub fn state_name(control: &Control) -> &'static str {
    match control {
        Control::Running => "running",
        Control::Paused { .. } => "paused",
        Control::Cancelled => "cancelled",
        Control::Done => "done",
    }
}

/// The phase as the Admin API names it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Import => "import",
        Phase::CopyBase => "copy",
        Phase::CatchUp => "catch-up",
        Phase::Freeze => "freeze",
        Phase::Drain => "drain",
        Phase::Flip => "flip",
        Phase::Release => "release",
    }
}

/// Copy rate (bytes per second over `running_ms`) and the estimated
/// seconds left, from the bytes copied per slot moved so far. Either is 0
/// when unknown (nothing copied or moved yet) or, for the ETA, done.
pub fn rate_and_eta(
    bytes_copied: u64,
    slots_done: u32,
    slots_total: u32,
    running_ms: u64,
) -> (u64, u64) {
    let rate = (bytes_copied.saturating_mul(1000))
        .checked_div(running_ms)
        .unwrap_or(0);
    let left = u64::from(slots_total.saturating_sub(slots_done));
    if left == 0 || slots_done == 0 || rate == 0 {
        return (rate, 0);
    }
    let bytes_left = (bytes_copied / u64::from(slots_done)).saturating_mul(left);
    (rate, bytes_left.div_ceil(rate))
}

/// Slots as ranges, `0-63,100`, the way `--slots` takes them.
pub fn slot_ranges(slots: &SlotSet) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(Slot, Slot)> = None;
    for s in (0..SLOTS).filter(|s| slots.contains(*s)) {
        run = match run {
            Some((lo, hi)) if hi + 1 == s => Some((lo, s)),
            Some(done) => {
                parts.push(range_text(done));
                Some((s, s))
            }
            None => Some((s, s)),
        };
    }
    parts.extend(run.map(range_text));
    parts.join(",")
}

fn range_text((lo, hi): (Slot, Slot)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::{Action, Done};

    fn set(text: &str) -> SlotSet {
        SlotSet::parse(text).expect("slots")
    }

    fn sample() -> JobRecord {
        let mut job = Job::new(
            7,
            vec![
                Batch {
                    from: 1,
                    to: 4,
                    slots: set("0-63"),
                },
                Batch {
                    from: 2,
                    to: 4,
                    slots: set("100,200-201"),
                },
            ],
        );
        job.done(&Action::BeginImport, 5, Done::Ok).expect("import");
        job.done(
            &Action::CopyBase,
            5,
            Done::Copied {
                version: 90,
                keys: 3,
                bytes: 300,
                behind: 0,
            },
        )
        .expect("copy");
        job.done(&Action::Freeze, 1_000, Done::Ok).expect("freeze");
        let mut record = JobRecord::new(job, 1_700_000_000_000);
        record.owner = "127.0.0.1:50051/42".into();
        record.pause_max_ms = 12;
        record.asked = Some(Asked::Pause);
        record
    }

    #[test]
    fn a_record_survives_encoding_exactly() {
        let record = sample();
        let back = decode(7, &encode(&record)).expect("decode");
        assert_eq!(back, record);
        assert_eq!(back.job.frozen_at_ms, Some(1_000));
        let mut paused = sample();
        paused.job.control = Control::Paused {
            reason: Some("did not drain".into()),
        };
        assert_eq!(decode(7, &encode(&paused)).expect("decode"), paused);
        // Every slot in its own batch still fits the catalog's bound.
        let all = Job::new(
            1,
            (0..SLOTS)
                .map(|s| Batch {
                    from: 1,
                    to: 2,
                    slots: set(&s.to_string()),
                })
                .collect(),
        );
        let bytes = encode(&JobRecord::new(all, 0));
        assert!(
            bytes.len() <= crate::catalog::JOB_STATE_BYTES_MAX,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn garbage_and_other_formats_are_typed_errors() {
        assert!(matches!(
            decode(3, &[0xff, 0xff, 0xff]),
            Err(DecodeError::Malformed { id: 3, .. })
        ));
        let mut state = JobState::decode(encode(&sample()).as_slice()).expect("state");
        state.format = 2;
        assert_eq!(
            decode(3, &state.encode_to_vec()),
            Err(DecodeError::Format { id: 3, found: 2 })
        );
        assert!(
            matches!(decode(3, &[]), Err(DecodeError::Format { found: 0, .. })),
            "an empty row has no format"
        );
        for broken in [
            JobState {
                phase: 9,
                ..JobState::decode(encode(&sample()).as_slice()).expect("state")
            },
            JobState {
                batch: 5,
                ..JobState::decode(encode(&sample()).as_slice()).expect("state")
            },
            JobState {
                batches: vec![BatchState {
                    from: 1,
                    to: 2,
                    slots: vec![SLOTS],
                }],
                ..JobState::decode(encode(&sample()).as_slice()).expect("state")
            },
        ] {
            assert!(
                matches!(
                    decode(3, &broken.encode_to_vec()),
                    Err(DecodeError::Invalid { id: 3, .. })
                ),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn a_job_is_taken_over_only_from_a_silent_owner() {
        let silence = 6_000;
        assert_eq!(claim("me", "me", Some(0), silence), Claim::Mine);
        assert_eq!(claim("", "me", None, silence), Claim::Take);
        assert_eq!(claim("other", "me", Some(silence), silence), Claim::Leave);
        assert_eq!(
            claim("other", "me", Some(silence + 1), silence),
            Claim::Take
        );
        assert_eq!(claim("other", "me", None, silence), Claim::Take, "row gone");
    }

    #[test]
    fn a_driver_stops_acting_before_others_may_take_over() {
        let (silence, action, slack) = (6_000, 2_000, 1_000);
        assert!(!may_act(None, 0, action, silence, slack), "never proven");
        assert!(may_act(Some(10_000), 13_000, action, silence, slack));
        assert!(!may_act(Some(10_000), 13_001, action, silence, slack));
        // More slack asked: refused where it was allowed.
        assert!(!may_act(Some(10_000), 13_000, action, silence, slack + 1));
    }

    #[test]
    fn requests_to_a_running_job_wait_for_its_owner() {
        let mut record = sample();
        record.asked = None;
        ask(&mut record, Asked::Pause).expect("pause");
        assert_eq!(record.job.control, Control::Running, "not applied yet");
        assert_eq!(record.asked, Some(Asked::Pause));
        ask(&mut record, Asked::Resume).expect("resume");
        assert_eq!(record.asked, None, "a resume takes the pause back");
        ask(&mut record, Asked::Cancel).expect("cancel");
        assert!(ask(&mut record, Asked::Resume).is_err(), "a cancel stays");
        ask(&mut record, Asked::Pause).expect("a pause after a cancel");
        assert_eq!(record.asked, Some(Asked::Cancel));
        assert_eq!(take_asked(&mut record), Some(Ok(Asked::Cancel)));
        assert_eq!(record.job.stop, Some(Stop::Cancel), "frozen: thaw first");
        assert_eq!(take_asked(&mut record), None);

        // Not running: applied at once, refusals answered at once.
        let mut done = JobRecord::new(Job::new(1, vec![]), 0);
        assert!(ask(&mut done, Asked::Pause).is_err());
        let mut paused = sample();
        paused.asked = None;
        paused.job.control = Control::Paused { reason: None };
        ask(&mut paused, Asked::Resume).expect("resume");
        assert_eq!(paused.job.control, Control::Running);
    }

    #[test]
    fn rate_and_eta_come_from_bytes_per_slot() {
        assert_eq!(rate_and_eta(0, 0, 10, 0), (0, 0));
        assert_eq!(rate_and_eta(1_000, 0, 10, 1_000), (1_000, 0), "no slot yet");
        // 100 bytes per slot, 8 slots left, 100 bytes/s: 8 s.
        assert_eq!(rate_and_eta(200, 2, 10, 2_000), (100, 8));
        assert_eq!(rate_and_eta(200, 10, 10, 2_000), (100, 0), "done");
    }

    #[test]
    fn slots_print_as_ranges() {
        assert_eq!(slot_ranges(&set("0-63,100,102-103")), "0-63,100,102-103");
        assert_eq!(slot_ranges(&set("4095")), "4095");
        assert_eq!(slot_ranges(&SlotSet::empty()), "");
    }
}
