//! The signed, tamper-evident audit log.
//!
//! This module owns the gateway's evidence: an append-only RFC 6962 Merkle
//! log laid out as C2SP tlog-tiles, signed checkpoints (C2SP
//! tlog-checkpoint over signed-note, Ed25519), leaves that commit to personal
//! data instead of holding it, receipts, inclusion proofs (C2SP tlog-proof),
//! auditors' indexes, offline verification, evidence bundles and erasure.
//! It must not know about transports, partners' formats or routing: the
//! pipeline hands it [`Fact`]s.
//!
//! A log folder has two parts: `public/` (`checkpoint` and `tile/`), which can
//! be served as static files to any tlog-tiles client, and `private/`
//! (journal, keys, metadata), which never leaves the gateway and its
//! auditors.

#![warn(missing_docs)]

pub mod bundle;
pub mod checkpoint;
pub mod error;
pub mod files;
pub mod journal;
pub mod keys;
pub mod leaf;
pub mod log;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod publish;
pub mod tiles;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use error::{AuditError, Result};
pub use leaf::{Fact, Flight, Identifiers, Kind, Leaf, MappingRef, Personal, Transport};
pub use log::{AuditLog, Found, Options, Query, QueuedAppend};
pub use merkle::Hash;
pub use note::{NoteSigner, NoteVerifier};
pub use proof::{Receipt, TlogProof};
