//! The error type of the audit log.
//!
//! This module owns [`AuditError`] and says whose fault each failure is. It
//! must not hold any logic beyond classification.

use super::checkpoint::CheckpointError;
use super::merkle::ProofError;
use super::note::NoteError;
use std::path::PathBuf;

/// Everything that can go wrong in the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file of the log could not be read or written (our fault; retry may help).
    #[error("audit log I/O on {path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The log on disk is damaged or inconsistent with what it signed (our fault; no retry).
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    /// The log stopped writing after a failure (a full disk, a failed sync or publication):
    /// it refuses every append until it is reopened, which runs its recovery (our fault; a
    /// retry after the restart may succeed).
    #[error("audit log stopped after a failure, until it is reopened: {0}")]
    Stopped(String),
    /// A bundle, receipt or proof handed in to be checked is malformed, does not check, or
    /// cannot be checked as asked (the evidence's fault, or a sign of its tampering; not the
    /// log's).
    #[error("{0}")]
    Evidence(String),
    /// The caller handed a fact that cannot be logged (caller's fault; no retry).
    #[error("invalid audit fact: {0}")]
    InvalidFact(String),
    /// The case was erased; its personal data can no longer be logged or opened.
    #[error("case was erased")]
    CaseErased,
    /// The case has no keys in this log.
    #[error("unknown case")]
    UnknownCase,
    /// The log has been shut down or its writer stopped.
    #[error("audit log is closed")]
    Closed,
    /// Another process has the log open for writing (a running gateway, or another command).
    #[error(
        "the audit log in {0} is open for writing in another process (a running gateway?); stop it first"
    )]
    InUse(PathBuf),
    /// The folder holds a log of another origin or key than the one it was opened with (a
    /// changed `audit.origin`, another instance's key, a key rotated without a new folder).
    #[error(
        "{folder} holds the log {found_origin} signed with key {found_key}, not the log \
         {origin} of key {key}: the origin and signing key are those the log was created with, \
         and a new origin or key starts a new log folder"
    )]
    OtherLog {
        /// The log's folder.
        folder: PathBuf,
        /// The origin the folder's log was created with.
        found_origin: String,
        /// Its verifier key.
        found_key: String,
        /// The origin it was opened with.
        origin: String,
        /// The verifier key of the signing key it was opened with.
        key: String,
    },
    /// The folder's index key is not the one its log's entries were indexed with (a key
    /// replaced or damaged): a search with it would find nothing.
    #[error(
        "{path} is not the index key this log's entries were indexed with (none of the first \
         {checked} entries that name a message carries that message's tag under it): a search \
         with it would find nothing; restore the log's own key (a backup of private/keys)"
    )]
    OtherIndexKey {
        /// The key file.
        path: PathBuf,
        /// How many entries were checked.
        checked: u64,
    },
    /// A key, note or checkpoint was rejected.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A checkpoint was rejected.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A checkpoint file was rejected (signed by another key, of another origin, malformed).
    #[error("{}: {source}", path.display())]
    CheckpointFile {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it was rejected.
        source: CheckpointError,
    },
    /// A proof could not be built or did not verify.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A cryptographic operation failed (decryption of a damaged payload, no randomness).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl AuditError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the failure is the caller's (bad input) rather than the log's.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            AuditError::InvalidFact(_)
                | AuditError::Evidence(_)
                | AuditError::CaseErased
                | AuditError::UnknownCase
        )
    }
}

/// The result type of the audit log.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
