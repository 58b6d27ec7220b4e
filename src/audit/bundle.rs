//! Auditors' trails and evidence bundles, offline.
//!
//! This module owns the search of a copy of a log folder (through the private
//! index key and journal) and the evidence bundle format: the matching
//! entries, each with its `c2sp.org/tlog-proof@v1` proof, the signed
//! checkpoint and the verifier key. It must not write to the log folder, and
//! a bundle must never carry the searched value or any personal data.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::journal;
use super::keys::IndexKey;
use super::leaf::Leaf;
use super::log::{Found, Layout, MessageName, Meta, Query, evidence};
use super::note::NoteVerifier;
use super::proof::TlogProof;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// The format tag of an evidence bundle.
pub const BUNDLE_FORMAT: &str = "passerelle.audit.bundle.v1";

/// The largest bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 256 << 20;

/// The result of a search in a copy of a log folder.
#[derive(Debug, Clone)]
pub struct Trail {
    /// The verified checkpoint the proofs are against.
    pub checkpoint: Checkpoint,
    /// Its signed text.
    pub signed: String,
    /// The verifier the checkpoint was checked with.
    pub verifier: NoteVerifier,
    /// The matching entries the checkpoint covers, with proofs.
    pub found: Vec<Found>,
    /// Matching entries not yet covered by a checkpoint.
    pub pending: Vec<u64>,
}

/// Searches a copy of a log folder. The checkpoint is checked with `verifier`
/// if given, otherwise with the key recorded in the folder's metadata.
pub fn trail(dir: &Path, query: &Query, verifier: Option<&NoteVerifier>) -> Result<Trail> {
    trail_with_progress(dir, query, verifier, &mut |_, _| {})
}

/// [`trail`], calling `progress(stage, entries)` as it goes: stage `scan` with the number of
/// journal records read so far, then stage `prove` with the number of entries proved.
pub fn trail_with_progress(
    dir: &Path,
    query: &Query,
    verifier: Option<&NoteVerifier>,
    progress: &mut dyn FnMut(&'static str, u64),
) -> Result<Trail> {
    let layout = Layout::new(dir);
    let meta = Meta::load(&layout.meta)?;
    let verifier = match verifier {
        Some(v) => v.clone(),
        None => NoteVerifier::parse(&meta.verifier_key)?,
    };
    let cp_path = layout.public.join("checkpoint");
    let signed = std::fs::read_to_string(&cp_path).map_err(|e| AuditError::io(&cp_path, e))?;
    let checkpoint = Checkpoint::open(signed.as_bytes(), &verifier, Some(&meta.origin))?;
    let key = IndexKey::load(&layout.keys.join("index.key"))?;
    let tag = query.tag(&key);
    // A partner reference is a message's tag: entries of earlier versions carry it on the
    // acceptance only, and the others are found by the message their leaf names.
    let by_message = match query {
        Query::PartnerRef(..) => Some(tag),
        _ => None,
    };
    let mut indices = Vec::new();
    let mut messages = BTreeSet::new();
    journal::scan(&layout.journal, |i, rec| {
        let named = rec.tags.contains(&tag)
            || by_message.is_some_and(|tag| {
                MessageName::of_entry(&rec.entry).is_some_and(|m| m.tag(&key) == tag)
            });
        if named {
            indices.push(i);
            // Widened from the entries the checkpoint covers, as the running gateway does.
            if query.widens() && i < checkpoint.size {
                messages.extend(MessageName::of_entry(&rec.entry));
            }
        }
        if i % 4096 == 0 {
            progress("scan", i);
        }
        Ok(())
    })?;
    // Every entry of the messages found (see [`Query::widens`]), exactly as named, in a second
    // pass: a message's deliveries and acknowledgements come after its acceptance, anywhere.
    if !messages.is_empty() {
        let found: BTreeSet<u64> = indices.iter().copied().collect();
        indices.clear();
        journal::scan(&layout.journal, |i, rec| {
            let of_a_message = || {
                i < checkpoint.size
                    && MessageName::of_entry(&rec.entry).is_some_and(|m| messages.contains(&m))
            };
            if found.contains(&i) || of_a_message() {
                indices.push(i);
            }
            if i % 4096 == 0 {
                progress("scan", i);
            }
            Ok(())
        })?;
    }
    let (covered, pending): (Vec<u64>, Vec<u64>) =
        indices.into_iter().partition(|&i| i < checkpoint.size);
    let found = evidence(&layout.public, &signed, checkpoint.size, &covered)?;
    for (n, f) in found.iter().enumerate() {
        f.proof.verify(&f.entry, &verifier, Some(&meta.origin))?;
        progress("prove", n as u64 + 1);
    }
    Ok(Trail {
        checkpoint,
        signed,
        verifier,
        found,
        pending,
    })
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    format: String,
    origin: String,
    verifier_key: String,
    checkpoint: String,
    entries: Vec<BundleEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleEntry {
    index: u64,
    entry: String,
    proof: String,
}

impl Trail {
    /// The evidence bundle of this trail, as JSON.
    pub fn to_bundle(&self) -> Result<Vec<u8>> {
        let b = BundleFile {
            format: BUNDLE_FORMAT.into(),
            origin: self.checkpoint.origin.clone(),
            verifier_key: self.verifier.to_verifier_key(),
            checkpoint: self.signed.clone(),
            entries: self
                .found
                .iter()
                .map(|f| BundleEntry {
                    index: f.index,
                    entry: B64.encode(&f.entry),
                    proof: f.proof.to_text(),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&b).map_err(|e| AuditError::Corrupt(e.to_string()))
    }
}

/// What a verified bundle shows.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The checkpoint every proof is against.
    pub checkpoint: Checkpoint,
    /// The verifier key used.
    pub verifier: NoteVerifier,
    /// Whether the key was pinned by the caller (rather than taken from the bundle).
    pub pinned: bool,
    /// The entries, in the bundle's order.
    pub entries: Vec<(u64, Leaf)>,
}

/// Verifies an evidence bundle on its own. With `pinned`, the bundle's key
/// must be that key; without, the key in the bundle is used, and the caller
/// must compare it with the log's published key.
pub fn verify_bundle(data: &[u8], pinned: Option<&NoteVerifier>) -> Result<VerifiedBundle> {
    if data.len() > MAX_BUNDLE_LEN {
        return Err(AuditError::Corrupt("bundle too large".into()));
    }
    let b: BundleFile = serde_json::from_slice(data)
        .map_err(|e| AuditError::Corrupt(format!("malformed bundle: {e}")))?;
    if b.format != BUNDLE_FORMAT {
        return Err(AuditError::Corrupt(format!(
            "unknown bundle format {:?}",
            b.format
        )));
    }
    let embedded = NoteVerifier::parse(&b.verifier_key)?;
    let verifier = match pinned {
        Some(p) if *p != embedded => {
            return Err(AuditError::Corrupt(format!(
                "the bundle is signed for key {}, not the one given",
                embedded.to_verifier_key()
            )));
        }
        Some(p) => p.clone(),
        None => embedded,
    };
    let checkpoint = Checkpoint::open(b.checkpoint.as_bytes(), &verifier, Some(&b.origin))?;
    let mut entries = Vec::new();
    let mut last: Option<u64> = None;
    for e in &b.entries {
        // A bundle lists its entries in the log's order, each once: one out of order would be
        // read as a timeline it is not.
        match last {
            Some(before) if e.index == before => {
                return Err(AuditError::Corrupt(format!(
                    "entry {}: given twice in the bundle",
                    e.index
                )));
            }
            Some(before) if e.index < before => {
                return Err(AuditError::Corrupt(format!(
                    "entry {}: out of order (after entry {before}); a bundle lists its entries \
                     in the log's order",
                    e.index
                )));
            }
            _ => last = Some(e.index),
        }
        let entry = B64
            .decode(&e.entry)
            .map_err(|_| AuditError::Corrupt(format!("entry {}: bad base64", e.index)))?;
        let proof = TlogProof::parse(&e.proof)?;
        if proof.index != e.index || proof.checkpoint != b.checkpoint {
            return Err(AuditError::Corrupt(format!(
                "entry {}: proof is for another entry or checkpoint",
                e.index
            )));
        }
        proof
            .verify(&entry, &verifier, Some(&b.origin))
            .map_err(|err| AuditError::Corrupt(format!("entry {}: {err}", e.index)))?;
        entries.push((e.index, Leaf::decode(&entry)?));
    }
    Ok(VerifiedBundle {
        checkpoint,
        verifier,
        pinned: pinned.is_some(),
        entries,
    })
}

/// What [`case_entries_missing`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseCompleteness {
    /// The case commitment the bundle's entries share.
    pub case: String,
    /// How many entries of the log, up to the bundle's checkpoint, carry it.
    pub in_log: u64,
    /// Those missing from the bundle, by index.
    pub missing: Vec<u64>,
}

/// Checks a verified case trail's bundle against a copy of the log's public folder: every
/// entry that the bundle's checkpoint signs and that carries the case commitment of the
/// bundle's entries must be in the bundle.
///
/// A bundle proves that its entries are in the log; only this shows that none of the case's
/// entries was left out (the trail is found through the gateway's private index, which an
/// auditor cannot see). It needs only public data: the case commitment is in clear in each of
/// the case's entries. The folder may be a later copy: the entries read are checked against the
/// bundle's own checkpoint. `progress` is called with the number of entries read so far.
///
/// Refused for a bundle whose entries carry no case commitment, or several: it is not one
/// case's trail (a trail by LPC number or PNR holds entries of its search, not all of a case's).
pub fn case_entries_missing(
    bundle: &VerifiedBundle,
    public: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<CaseCompleteness> {
    let cases: std::collections::BTreeSet<&str> = bundle
        .entries
        .iter()
        .filter_map(|(_, leaf)| leaf.commitments.as_ref().map(|c| c.case.as_str()))
        .collect();
    let case = match cases.len() {
        1 => cases.into_iter().next().unwrap_or_default().to_owned(),
        0 if bundle.entries.is_empty() => {
            return Err(AuditError::InvalidFact(
                "the bundle holds no entries, so it names no case whose completeness could be \
                 checked (the search that made it found nothing)"
                    .into(),
            ));
        }
        0 => {
            return Err(AuditError::InvalidFact(
                "no entry of the bundle names a case: completeness is checked for a case's trail"
                    .into(),
            ));
        }
        n => {
            return Err(AuditError::InvalidFact(format!(
                "the bundle's entries belong to {n} cases: completeness is checked for one case's trail"
            )));
        }
    };
    let given: std::collections::BTreeSet<u64> =
        bundle.entries.iter().map(|(index, _)| *index).collect();
    let mut in_log = 0u64;
    let mut missing = Vec::new();
    let mut undecodable = None;
    super::verify::scan_signed_entries(
        public,
        &bundle.checkpoint,
        &mut |index, entry| match Leaf::decode(entry) {
            Ok(leaf) => {
                if leaf.commitments.is_some_and(|c| c.case == case) {
                    in_log += 1;
                    if !given.contains(&index) {
                        missing.push(index);
                    }
                }
            }
            Err(error) => {
                undecodable.get_or_insert((index, error));
            }
        },
        progress,
    )
    .map_err(|failure| AuditError::Corrupt(failure.to_string()))?;
    if let Some((index, error)) = undecodable {
        return Err(AuditError::Corrupt(format!("entry {index}: {error}")));
    }
    Ok(CaseCompleteness {
        case,
        in_log,
        missing,
    })
}
