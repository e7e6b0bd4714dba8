//! The life of an upload as a state machine: every change of an upload's stored state goes
//! through [`apply`], which takes the record as stored and a [`Step`] (what happened, or
//! what a client asked), and gives back the new record and the [`Effect`]s the service
//! must carry out once the new record is stored. It does no I/O, so its table of legal
//! moves is tested exhaustively here.
//!
//! ```text
//!             ask completion              verified
//! Uploading ─────────────────> Completing ─────────> Completed
//!    ^  │ ^                      │ │ │                  │
//!    │  │ └──── assembly missing ┘ │ └─ mismatch, ─> Failed
//!    │  │                          │    corrupt        │
//!    │  │ expire                   │ cancel            │ cancel
//!    │  v                          v                   v
//!    └─ Expired (undo)          Cancelled <────────────┘
//! ```
//!
//! `Cancelled` and `Expired` are tombstones: the bytes are gone; only an expiry that a
//! concurrent chunk write overtook is undone. An upload whose bytes all came in its
//! creating request goes from `Uploading` (never stored) straight to `Completed`, its
//! bytes hashed as they were written.

use common::Sha256Digest;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::record::{StoredState, UploadMode, UploadRecord};

/// What happened to an upload, or what a client asked of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes are about to be stored the `mode` way (a chunk, or an in-order append):
    /// allowed only while uploading, in the upload's own mode. Changes nothing.
    StoreBytes(UploadMode),
    /// The length of an upload created without one is said; `stored` bytes are there.
    DeclareLength {
        /// The length said.
        length: u64,
        /// Bytes stored contiguously from the start.
        stored: u64,
    },
    /// A client asks for completion, maybe saying the file's SHA-256.
    AskCompletion {
        /// The SHA-256 the request declares, if any.
        sha256: Option<Sha256Digest>,
    },
    /// A verification that went silent (its server died) is taken over.
    TakeOverVerification,
    /// The whole-file hash is known and matches what was declared (if anything was).
    Verified {
        /// The file's SHA-256.
        sha256: Sha256Digest,
    },
    /// Every byte of an upload created with them in one request is written and hashed
    /// (and matches what was declared, if anything was): it is stored completed at once.
    StoredWhole {
        /// The file's SHA-256.
        sha256: Sha256Digest,
    },
    /// The whole-file hash differs from the declared one.
    Mismatched {
        /// The file's SHA-256.
        actual: Sha256Digest,
    },
    /// Chunks acknowledged earlier were found missing from storage while joining them.
    AssemblyMissing,
    /// Storage holds other bytes than the acknowledged ones and cannot join them.
    AssemblyCorrupt {
        /// What was found.
        reason: String,
    },
    /// A client cancels the upload.
    Cancel,
    /// The upload stayed idle past its time to live.
    Expire,
    /// An expiry that a chunk write overtook is taken back.
    UndoExpiry,
}

/// What the service must do once the new record is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Finish the whole-file hash and settle the upload (inline or in the background).
    Verify,
    /// Make the verified bytes the upload's content.
    Publish,
    /// Free the upload's bytes and receipts.
    Discard,
    /// Record the event in the outbox and announce it.
    Emit(EventKind),
}

/// The outcome of a legal step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The record to store; the same as before when the step changes nothing.
    pub record: UploadRecord,
    /// Whether the record changed and must be stored.
    pub changed: bool,
    /// What to do once it is stored, in order.
    pub effects: Vec<Effect>,
}

/// Applies `step` to the upload stored as `record`, at `now`.
pub fn apply(record: &UploadRecord, step: Step, now: OffsetDateTime) -> Result<Transition> {
    use StoredState as S;
    let mut next = record.clone();
    let effects = match (record.state, step) {
        (S::Uploading, Step::StoreBytes(mode)) => {
            check_mode(record.mode, mode)?;
            return Ok(unchanged(record));
        }
        (S::Uploading, Step::DeclareLength { length, stored }) => {
            if !record.length_deferred {
                return record.same_length(length).map(|()| unchanged(record));
            }
            if length < stored {
                return Err(Error::InconsistentLength(format!(
                    "a length of {length} bytes is less than the {stored} bytes already stored"
                )));
            }
            if length > record.size {
                return Err(Error::TooLarge {
                    size: length,
                    max: record.size,
                });
            }
            next.size = length;
            next.length_deferred = false;
            vec![]
        }
        (S::Uploading, Step::AskCompletion { sha256 }) => {
            next.declared_sha256 = match (record.declared_sha256, sha256) {
                (Some(a), Some(b)) if a != b => {
                    return Err(Error::Invalid(format!(
                        "sha256 {b} differs from the {a} declared at creation"
                    )))
                }
                (a, b) => a.or(b),
            };
            next.state = S::Completing;
            vec![Effect::Verify]
        }
        (S::Completing, Step::TakeOverVerification) => vec![Effect::Verify],
        (S::Completing, Step::Verified { sha256 }) => {
            if let Some(expected) = record.declared_sha256.filter(|e| *e != sha256) {
                return Err(Error::Sha256Mismatch {
                    expected,
                    actual: sha256,
                });
            }
            next.state = S::Completed;
            next.sha256 = Some(sha256);
            vec![Effect::Publish, Effect::Emit(EventKind::Completed)]
        }
        (S::Uploading, Step::StoredWhole { sha256 }) => {
            if let Some(expected) = record.declared_sha256.filter(|e| *e != sha256) {
                return Err(Error::Sha256Mismatch {
                    expected,
                    actual: sha256,
                });
            }
            next.state = S::Completed;
            next.sha256 = Some(sha256);
            // Published by the write that stores the record.
            vec![Effect::Emit(EventKind::Completed)]
        }
        (S::Completing, Step::Mismatched { actual }) => {
            let expected = record
                .declared_sha256
                .ok_or_else(|| Error::Corrupt("a mismatch without a declared SHA-256".into()))?;
            next.state = S::Failed;
            next.sha256 = Some(actual);
            next.failure = Some(format!("SHA-256 {actual} does not match {expected}"));
            vec![Effect::Discard, Effect::Emit(EventKind::Failed)]
        }
        (S::Completing, Step::AssemblyMissing) => {
            next.state = S::Uploading;
            vec![]
        }
        (S::Completing, Step::AssemblyCorrupt { reason }) => {
            next.state = S::Failed;
            next.failure = Some(reason);
            vec![Effect::Discard, Effect::Emit(EventKind::Failed)]
        }
        (s, Step::Cancel) if !s.is_tombstone() => {
            next.state = S::Cancelled;
            vec![Effect::Discard, Effect::Emit(EventKind::Cancelled)]
        }
        (S::Uploading, Step::Expire) => {
            next.state = S::Expired;
            vec![Effect::Discard, Effect::Emit(EventKind::Expired)]
        }
        (S::Expired, Step::UndoExpiry) => {
            next.state = S::Uploading;
            vec![]
        }
        (s, _) if s.is_tombstone() => return Err(Error::Gone(s.name())),
        (s, _) => return Err(Error::WrongState(s.name())),
    };
    next.updated_at = now;
    Ok(Transition {
        record: next,
        changed: true,
        effects,
    })
}

fn unchanged(record: &UploadRecord) -> Transition {
    Transition {
        record: record.clone(),
        changed: false,
        effects: Vec::new(),
    }
}

fn check_mode(upload: UploadMode, write: UploadMode) -> Result<()> {
    match (upload, write) {
        (a, b) if a == b => Ok(()),
        (UploadMode::Stream, _) => Err(Error::WrongMode(
            "this upload takes in-order appends (tus, IETF), not chunks",
        )),
        (UploadMode::Chunks, _) => Err(Error::WrongMode(
            "this upload takes chunks (native API), not in-order appends",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use common::UploadId;

    use super::*;
    use StoredState as S;

    const A: Sha256Digest = Sha256Digest([1; 32]);
    const B: Sha256Digest = Sha256Digest([2; 32]);

    fn record(state: StoredState) -> UploadRecord {
        UploadRecord {
            id: UploadId::new_random(),
            size: 100,
            chunk_size: 10,
            mode: UploadMode::Chunks,
            declared_sha256: None,
            sha256: None,
            filename: None,
            metadata: BTreeMap::new(),
            state,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            version: None,
        }
    }

    const STATES: [StoredState; 6] = [
        S::Uploading,
        S::Completing,
        S::Completed,
        S::Failed,
        S::Cancelled,
        S::Expired,
    ];

    /// One representative of every step.
    fn steps() -> Vec<Step> {
        vec![
            Step::StoreBytes(UploadMode::Chunks),
            Step::DeclareLength {
                length: 100,
                stored: 0,
            },
            Step::AskCompletion { sha256: None },
            Step::TakeOverVerification,
            Step::Verified { sha256: A },
            Step::StoredWhole { sha256: A },
            Step::Mismatched { actual: B },
            Step::AssemblyMissing,
            Step::AssemblyCorrupt { reason: "x".into() },
            Step::Cancel,
            Step::Expire,
            Step::UndoExpiry,
        ]
    }

    /// The table of legal moves: the state a step leads to from each state, and what it
    /// sets off; every pair not listed is refused.
    fn legal(from: StoredState, step: &Step) -> Option<(StoredState, Vec<Effect>)> {
        use Effect::*;
        Some(match (from, step) {
            (S::Uploading, Step::StoreBytes(_)) => (S::Uploading, vec![]),
            (S::Uploading, Step::DeclareLength { .. }) => (S::Uploading, vec![]),
            (S::Uploading, Step::AskCompletion { .. }) => (S::Completing, vec![Verify]),
            (S::Uploading, Step::Expire) => (S::Expired, vec![Discard, Emit(EventKind::Expired)]),
            (S::Uploading, Step::StoredWhole { .. }) => {
                (S::Completed, vec![Emit(EventKind::Completed)])
            }
            (S::Completing, Step::TakeOverVerification) => (S::Completing, vec![Verify]),
            (S::Completing, Step::Verified { .. }) => {
                (S::Completed, vec![Publish, Emit(EventKind::Completed)])
            }
            (S::Completing, Step::Mismatched { .. }) => {
                (S::Failed, vec![Discard, Emit(EventKind::Failed)])
            }
            (S::Completing, Step::AssemblyMissing) => (S::Uploading, vec![]),
            (S::Completing, Step::AssemblyCorrupt { .. }) => {
                (S::Failed, vec![Discard, Emit(EventKind::Failed)])
            }
            (S::Uploading | S::Completing | S::Completed | S::Failed, Step::Cancel) => {
                (S::Cancelled, vec![Discard, Emit(EventKind::Cancelled)])
            }
            (S::Expired, Step::UndoExpiry) => (S::Uploading, vec![]),
            _ => return None,
        })
    }

    #[test]
    fn every_state_and_step_follows_the_table() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        for from in STATES {
            for step in steps() {
                let mut r = record(from);
                // A mismatch needs a declared hash to differ from.
                r.declared_sha256 = Some(B).filter(|_| matches!(step, Step::Mismatched { .. }));
                r.length_deferred = matches!(step, Step::DeclareLength { .. });
                r.size = if r.length_deferred { 1000 } else { 100 };
                let got = apply(&r, step.clone(), now);
                match (legal(from, &step), got) {
                    (Some((to, effects)), Ok(t)) => {
                        assert_eq!(t.record.state, to, "{from:?} + {step:?}");
                        assert_eq!(t.effects, effects, "{from:?} + {step:?}");
                        if t.changed {
                            assert_eq!(t.record.updated_at, now, "{from:?} + {step:?}");
                        }
                    }
                    (None, Err(Error::Gone(name))) => {
                        assert!(from.is_tombstone(), "{from:?} + {step:?}: gone");
                        assert_eq!(name, from.name());
                    }
                    (None, Err(Error::WrongState(name))) => {
                        assert!(!from.is_tombstone(), "{from:?} + {step:?}");
                        assert_eq!(name, from.name());
                    }
                    (want, got) => panic!("{from:?} + {step:?}: want {want:?}, got {got:?}"),
                }
            }
        }
    }

    #[test]
    fn a_write_in_the_other_mode_is_refused() {
        let r = record(S::Uploading);
        assert!(apply(
            &r,
            Step::StoreBytes(UploadMode::Chunks),
            OffsetDateTime::UNIX_EPOCH
        )
        .is_ok());
        assert!(matches!(
            apply(
                &r,
                Step::StoreBytes(UploadMode::Stream),
                OffsetDateTime::UNIX_EPOCH
            ),
            Err(Error::WrongMode(_))
        ));
    }

    #[test]
    fn a_length_is_said_once_within_the_ceiling_and_the_stored_bytes() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut r = record(S::Uploading);
        r.length_deferred = true;
        r.size = 1000;
        let declare = |length, stored| Step::DeclareLength { length, stored };
        assert!(matches!(
            apply(&r, declare(40, 50), now),
            Err(Error::InconsistentLength(_))
        ));
        assert!(matches!(
            apply(&r, declare(1001, 50), now),
            Err(Error::TooLarge {
                size: 1001,
                max: 1000
            })
        ));
        let t = apply(&r, declare(50, 50), now).unwrap();
        assert_eq!((t.record.size, t.record.length_deferred), (50, false));
        // Said again: the same length changes nothing, another is refused.
        assert!(!apply(&t.record, declare(50, 50), now).unwrap().changed);
        assert!(matches!(
            apply(&t.record, declare(60, 50), now),
            Err(Error::InconsistentLength(_))
        ));
    }

    #[test]
    fn completion_keeps_one_declared_hash() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut r = record(S::Uploading);
        let t = apply(&r, Step::AskCompletion { sha256: Some(A) }, now).unwrap();
        assert_eq!(t.record.declared_sha256, Some(A));
        r.declared_sha256 = Some(A);
        assert!(matches!(
            apply(&r, Step::AskCompletion { sha256: Some(B) }, now),
            Err(Error::Invalid(_))
        ));
        let t = apply(&r, Step::AskCompletion { sha256: None }, now).unwrap();
        assert_eq!(t.record.declared_sha256, Some(A));
        // A verified hash must be the declared one.
        assert!(matches!(
            apply(&t.record, Step::Verified { sha256: B }, now),
            Err(Error::Sha256Mismatch { .. })
        ));
        let done = apply(&t.record, Step::Verified { sha256: A }, now).unwrap();
        assert_eq!(done.record.sha256, Some(A));
        let failed = apply(&t.record, Step::Mismatched { actual: B }, now).unwrap();
        assert_eq!(failed.record.sha256, Some(B));
        assert!(failed.record.failure.is_some());
    }
}
