//! Auditors' trails and evidence bundles, offline.
//!
//! This module owns the search of a copy of a log folder (through the private
//! index key and journal) and the evidence bundle format: the matching
//! entries, each with its `c2sp.org/tlog-proof@v1` proof, the signed
//! checkpoint and the verifier key. It must not write to the log folder, and
//! a bundle must never carry the searched value or any personal data.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::files::{MAX_CHECKPOINT, read_at_most};
use super::journal;
use super::keys::{IndexKey, KeyStore, TagKind, normalise};
use super::leaf::{Kind, Leaf, Purpose, commit};
use super::log::{Found, Layout, MessageName, Meta, Query, evidence, read_signed_checkpoint};
use super::merkle::{RunningRoot, consistency_proof, leaf_hash, root_from, verify_consistency};
use super::note::NoteVerifier;
use super::proof::TlogProof;
use super::tiles::TileReader;
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
    /// The size `public/checkpoint` signs, when `private/checkpoint` signs more (the proofs are
    /// then against the latter).
    pub public_behind: Option<u64>,
    /// The size `private/checkpoint` signs, when it signs more than the public part has the
    /// tiles for (the proofs are then against `public/checkpoint`).
    pub private_ahead: Option<u64>,
    /// For a case's trail, how its entries were tied to the case id searched for; `None` for
    /// other trails, and for a case the log holds no key and no entries for.
    pub case_binding: Option<CaseBinding>,
}

/// How a case's trail is tied to the case id searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseBinding {
    /// Every entry found carries the commitment that the case's key gives its id, and every
    /// signed entry that carries it was found.
    Bound,
    /// The case was erased, and its key with it: the entries found are of one and the same
    /// case, and all of that case's, but nothing ties that case to the id searched for.
    Erased,
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
    let latest = latest_signed(&layout, &verifier, &meta.origin)?;
    let (checkpoint, signed) = (latest.checkpoint, latest.signed);
    let key_path = layout.keys.join("index.key");
    let key = IndexKey::load(&key_path)?;
    let tag = query.tag(&key);
    // A partner reference names one message (see `Query::message`): its entries are found by
    // the names their leaves hold, also those of earlier versions, which carry its tag on the
    // acceptance only.
    let by_message = query.message();
    let mut indices = Vec::new();
    let mut messages = BTreeSet::new();
    // The search reads the private journal, which no signature covers: its entries are
    // checked to be the ones the checkpoint signs, and its tags to be made with this key, so
    // that a damaged journal or a wrong key is said rather than giving a short trail.
    let mut journal_root = RunningRoot::default();
    let mut key_check = KeyCheck::default();
    let scan = journal::scan(&layout.journal, |i, rec| {
        if i < checkpoint.size {
            journal_root.push(leaf_hash(&rec.entry));
        }
        key_check.check(&rec, &key);
        let named = match &by_message {
            Some(message) => MessageName::of_entry(&rec.entry).as_ref() == Some(message),
            None => rec.tags.contains(&tag),
        };
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
    if scan.next < checkpoint.size {
        return Err(AuditError::Corrupt(format!(
            "the private journal ({}) holds {} entries, but the checkpoint signs {}: it is \
             damaged or cut short at entry {}, and a trail read from it would leave entries out",
            layout.journal.display(),
            scan.next,
            checkpoint.size,
            scan.next
        )));
    }
    if journal_root.root() != checkpoint.root {
        return Err(AuditError::Corrupt(format!(
            "the first {} entries of the private journal ({}) are not those the checkpoint \
             signs (their root differs): it was altered, and a trail read from it cannot be \
             trusted",
            checkpoint.size,
            layout.journal.display()
        )));
    }
    if key_check.wrong_key() {
        return Err(AuditError::OtherIndexKey {
            path: key_path,
            checked: key_check.naming,
        });
    }
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
    let altered = |what: String, e: AuditError| {
        AuditError::Corrupt(format!(
            "{what}: {e}; the public part (its tiles or entry bundles) does not match the signed \
             checkpoint: `passerelle audit verify` names the file"
        ))
    };
    let found = evidence(&layout.public, &signed, checkpoint.size, &covered)
        .map_err(|e| altered("proving the entries found".into(), e))?;
    for (n, f) in found.iter().enumerate() {
        f.proof
            .verify(&f.entry, &verifier, Some(&meta.origin))
            .map_err(|e| altered(format!("entry {}", f.index), e))?;
        progress("prove", n as u64 + 1);
    }
    let case_binding = match query {
        Query::Case(case) => {
            let case_key = case_key(&layout.keys.join("cases.keys"), &key, case)?;
            check_case_index(
                &layout.journal,
                checkpoint.size,
                &found,
                !pending.is_empty(),
                &case_key,
                progress,
            )?
        }
        _ => None,
    };
    Ok(Trail {
        checkpoint,
        signed,
        verifier,
        found,
        pending,
        public_behind: latest.public_behind,
        private_ahead: latest.private_ahead,
        case_binding,
    })
}

/// What the key store holds for a case searched for.
enum CaseKey {
    /// Its key: the commitments its entries can carry. An entry commits to the case id as
    /// its message wrote it, and the search finds it by the id trimmed and in capitals: the
    /// id as searched, trimmed, in capitals and in small letters.
    Live(BTreeSet<String>),
    /// It was erased.
    Erased,
    /// None.
    Unknown,
}

/// Reads the key of the case `case` from the key store at `path`.
fn case_key(path: &Path, index_key: &IndexKey, case: &str) -> Result<CaseKey> {
    let store = KeyStore::open(path, false)?;
    match store.get(&index_key.tag(TagKind::Case, case)) {
        Ok(keys) => {
            let trimmed = case.trim();
            let spellings = [
                trimmed.to_owned(),
                normalise(case),
                trimmed.to_ascii_lowercase(),
            ];
            Ok(CaseKey::Live(
                spellings
                    .iter()
                    .map(|id| commit(&keys.commit, Purpose::Case, id.as_bytes()))
                    .collect(),
            ))
        }
        Err(AuditError::CaseErased) => Ok(CaseKey::Erased),
        Err(AuditError::UnknownCase) => Ok(CaseKey::Unknown),
        Err(e) => Err(e),
    }
}

/// Checks the entries the private index gave for a case against the signed entries
/// themselves and the case's key. The index's tags are the operator's, and no signature covers
/// them: one altered to leave entries of the case out, or to file another case's entries under
/// it, would give a short, mixed or swapped trail. But every entry of a case carries the case's
/// commitment in clear, which its key computes from the case id: those found must carry that
/// one, and every signed entry that carries it must have been found, even when the index gives
/// none. An erased case has no key left: its entries must carry one and the same commitment,
/// and every entry that carries it must have been found. (Trails by anything but a case have
/// no such check: an auditor checks the case's trail.)
fn check_case_index(
    journal_dir: &Path,
    size: u64,
    found: &[Found],
    pending: bool,
    case_key: &CaseKey,
    progress: &mut dyn FnMut(&'static str, u64),
) -> Result<Option<CaseBinding>> {
    // Every entry the log writes under a case's tag carries the case's commitment.
    if let Some(bare) = found.iter().find(|f| f.leaf.commitments.is_none()) {
        return Err(AuditError::Corrupt(format!(
            "the private index gives entry {} for this case, but it carries no case \
             commitment, as every entry of a case does: the index was altered; the trail cannot \
             be trusted",
            bare.index
        )));
    }
    let commitments: BTreeSet<&str> = found
        .iter()
        .filter_map(|f| f.leaf.commitments.as_ref().map(|c| c.case.as_str()))
        .collect();
    let (case, binding): (BTreeSet<String>, CaseBinding) = match case_key {
        CaseKey::Live(expected) => {
            if let Some(other) = found.iter().find(|f| {
                f.leaf
                    .commitments
                    .as_ref()
                    .is_some_and(|c| !expected.contains(&c.case))
            }) {
                return Err(AuditError::Corrupt(format!(
                    "the private index gives entry {} for this case, but it carries another \
                     case's commitment than the one the case's key gives its id: the index was \
                     altered, or the case's key was lost and made anew; the trail cannot be \
                     trusted",
                    other.index
                )));
            }
            (expected.clone(), CaseBinding::Bound)
        }
        // The key store keeps an erased case's record, zeroed: the case was logged, and its
        // trail ends with its `erased` entry (unless that one is not yet signed).
        CaseKey::Erased if !pending && !found.iter().any(|f| f.leaf.kind == Kind::Erased) => {
            return Err(AuditError::Corrupt(
                "the key store says this case was erased, but the private index gives no \
                 `erased` entry for it: the index was altered (to hide the case, or to give \
                 another case's entries for it); the trail cannot be trusted"
                    .into(),
            ));
        }
        CaseKey::Erased => match commitments.len() {
            0 => return Ok(Some(CaseBinding::Erased)),
            1 => (
                commitments.iter().map(|c| (*c).to_owned()).collect(),
                CaseBinding::Erased,
            ),
            n => {
                return Err(AuditError::Corrupt(format!(
                    "the entries the private index gives for this erased case carry {n} \
                     different case commitments, where every entry of a case carries the same \
                     one: the index was altered; the trail cannot be trusted"
                )));
            }
        },
        CaseKey::Unknown if found.is_empty() => return Ok(None),
        CaseKey::Unknown => {
            return Err(AuditError::Corrupt(
                "the private index gives entries for this case, but private/keys/cases.keys \
                 holds no key for it: the key was lost, or the index altered; the entries cannot \
                 be tied to the case id, and the trail cannot be trusted"
                    .into(),
            ));
        }
    };
    let listed: BTreeSet<u64> = found.iter().map(|f| f.index).collect();
    let mut left_out = Vec::new();
    let mut undecodable = None;
    journal::scan(journal_dir, |i, rec| {
        // The commitment is a string of the leaf's JSON: only the entries that hold it are
        // decoded.
        if i < size
            && !listed.contains(&i)
            && case.iter().any(|commitment| {
                rec.entry
                    .windows(commitment.len())
                    .any(|w| w == commitment.as_bytes())
            })
        {
            match Leaf::decode(&rec.entry) {
                Ok(leaf)
                    if leaf
                        .commitments
                        .as_ref()
                        .is_some_and(|c| case.contains(&c.case)) =>
                {
                    left_out.push(i)
                }
                Ok(_) => {}
                Err(error) => {
                    undecodable.get_or_insert((i, error));
                }
            }
        }
        if i % 4096 == 0 {
            progress("scan", i);
        }
        Ok(())
    })?;
    if let Some((index, error)) = undecodable {
        return Err(AuditError::Corrupt(format!("entry {index}: {error}")));
    }
    if !left_out.is_empty() {
        let shown: Vec<String> = left_out.iter().take(20).map(u64::to_string).collect();
        return Err(AuditError::Corrupt(format!(
            "the private index leaves out {} signed entries that carry this case's commitment \
             ({}{}): it was altered, and the trail cannot be trusted",
            left_out.len(),
            shown.join(", "),
            if left_out.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    Ok(Some(binding))
}

/// The last tree a log folder signed that its public part can prove, and what to say of its
/// two checkpoints.
struct LatestSigned {
    checkpoint: Checkpoint,
    signed: String,
    /// The size the public checkpoint signs, when the private copy signs more and the proofs
    /// are against the latter.
    public_behind: Option<u64>,
    /// The size the private copy signs, when it signs more than the public part has the tiles
    /// for (a copy taken while the log grew, its public part first): the proofs are then
    /// against the public checkpoint.
    private_ahead: Option<u64>,
}

/// The larger of the folder's two signed checkpoints, as the gateway takes it when it opens
/// the log (see audit.md, "Checkpoints and their cadence"): `public/checkpoint`, and its copy
/// `private/checkpoint`, which the log writes after it. The private copy is read first, so
/// that on a folder the gateway is writing, the public checkpoint read after it is never
/// behind it. A public checkpoint behind the private copy (a rolled-back file) must be
/// consistent with it, and the entries it does not cover are still signed, by the private
/// copy; when the public part lacks the tiles of the private copy's tree (a copy taken while
/// the log grew), the public checkpoint is taken, and the difference said.
fn latest_signed(layout: &Layout, verifier: &NoteVerifier, origin: &str) -> Result<LatestSigned> {
    let read = |path: &Path| read_signed_checkpoint(path, verifier, origin);
    let private = read(&layout.last_checkpoint)?;
    let public_path = layout.public.join("checkpoint");
    let Some((public, public_signed)) = read(&public_path)? else {
        return Err(AuditError::Corrupt(format!(
            "{} is missing: the log's public part holds no signed checkpoint",
            public_path.display()
        )));
    };
    let as_public = |private_ahead| LatestSigned {
        checkpoint: public.clone(),
        signed: public_signed.clone(),
        public_behind: None,
        private_ahead,
    };
    let Some((private, private_signed)) = private else {
        return Ok(as_public(None));
    };
    let two_histories = || {
        AuditError::Corrupt(format!(
            "{} (size {}) and {} (size {}) sign two different histories",
            public_path.display(),
            public.size,
            layout.last_checkpoint.display(),
            private.size
        ))
    };
    let (older, newer) = if public.size >= private.size {
        (&private, &public)
    } else {
        (&public, &private)
    };
    if older.size == newer.size {
        return if older.root == newer.root {
            Ok(as_public(None))
        } else {
            Err(two_histories())
        };
    }
    // The public part must hold the tiles of the larger tree (a copy taken while the log grew
    // may not hold the private copy's), and they prove the smaller tree consistent with it.
    let tiles = TileReader::new(&layout.public, newer.size);
    match root_from(&tiles, newer.size) {
        Ok(root) if root == newer.root => {}
        Ok(_) => return Err(two_histories()),
        Err(_) if newer.size == private.size => return Ok(as_public(Some(private.size))),
        Err(e) => {
            return Err(AuditError::Corrupt(format!(
                "{}: the public part's tiles for it cannot be read: {e}",
                public_path.display()
            )));
        }
    }
    if older.size > 0 {
        let consistent = consistency_proof(&tiles, older.size, newer.size).map_err(|e| {
            AuditError::Corrupt(format!("proving the two checkpoints consistent: {e}"))
        })?;
        if verify_consistency(
            older.size,
            newer.size,
            &older.root.0,
            &newer.root.0,
            &consistent,
        )
        .is_err()
        {
            return Err(two_histories());
        }
    }
    if public.size >= private.size {
        return Ok(as_public(None));
    }
    Ok(LatestSigned {
        checkpoint: private,
        signed: private_signed,
        public_behind: Some(public.size),
        private_ahead: None,
    })
}

/// Whether a folder's index key is the one its entries were indexed with. Every entry that
/// names a message carries that message's tag, except the non-acceptance entries of early
/// versions: a key under which none of the first entries naming a message carries its tag
/// is another key. A key under which any does is this log's.
#[derive(Debug, Default)]
pub(super) struct KeyCheck {
    /// Entries naming a message checked so far.
    pub(super) naming: u64,
    /// Whether one of them carried its tag.
    matched: bool,
}

impl KeyCheck {
    /// Enough entries to tell: early versions tagged every acceptance.
    const ENOUGH: u64 = 256;

    pub(super) fn check(&mut self, record: &journal::Record, key: &IndexKey) {
        if self.matched || self.naming >= Self::ENOUGH {
            return;
        }
        if let Some(message) = MessageName::of_entry(&record.entry) {
            self.naming += 1;
            self.matched = record.tags.contains(&message.tag(key));
        }
    }

    pub(super) fn wrong_key(&self) -> bool {
        self.naming > 0 && !self.matched
    }
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
        return Err(AuditError::Evidence("bundle too large".into()));
    }
    let b: BundleFile = serde_json::from_slice(data)
        .map_err(|e| AuditError::Evidence(format!("malformed bundle: {e}")))?;
    if b.format != BUNDLE_FORMAT {
        return Err(AuditError::Evidence(format!(
            "unknown bundle format {:?}",
            b.format
        )));
    }
    let embedded = NoteVerifier::parse(&b.verifier_key)?;
    let verifier = match pinned {
        Some(p) if *p != embedded => {
            return Err(AuditError::Evidence(format!(
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
                return Err(AuditError::Evidence(format!(
                    "entry {}: given twice in the bundle",
                    e.index
                )));
            }
            Some(before) if e.index < before => {
                return Err(AuditError::Evidence(format!(
                    "entry {}: out of order (after entry {before}); a bundle lists its entries \
                     in the log's order",
                    e.index
                )));
            }
            _ => last = Some(e.index),
        }
        let entry = B64
            .decode(&e.entry)
            .map_err(|_| AuditError::Evidence(format!("entry {}: bad base64", e.index)))?;
        let proof = TlogProof::parse(&e.proof)?;
        if proof.index != e.index || proof.checkpoint != b.checkpoint {
            return Err(AuditError::Evidence(format!(
                "entry {}: proof is for another entry or checkpoint",
                e.index
            )));
        }
        proof
            .verify(&entry, &verifier, Some(&b.origin))
            .map_err(|err| AuditError::Evidence(format!("entry {}: {err}", e.index)))?;
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
            return Err(AuditError::Evidence(
                "the bundle holds no entries, so it names no case whose completeness could be \
                 checked (the search that made it found nothing)"
                    .into(),
            ));
        }
        0 => {
            return Err(AuditError::Evidence(
                "no entry of the bundle names a case: completeness is checked for a case's trail"
                    .into(),
            ));
        }
        n => {
            return Err(AuditError::Evidence(format!(
                "the bundle's entries carry {n} different case commitments: completeness is \
                 checked for one case's trail, and every entry of a case carries the same one \
                 (a trail by LPC, PNR or another search can hold several cases' entries; a \
                 case's trail that holds several was altered, or its case key was made anew)"
            )));
        }
    };
    copy_covers_bundle(public, bundle)?;
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
    .map_err(|failure| {
        AuditError::Corrupt(format!(
            "reading the copy's first {} entries, which the bundle's checkpoint signs: \
             {failure}; the copy is incomplete or altered, or the log signed two histories",
            bundle.checkpoint.size
        ))
    })?;
    if let Some((index, error)) = undecodable {
        return Err(AuditError::Corrupt(format!("entry {index}: {error}")));
    }
    Ok(CaseCompleteness {
        case,
        in_log,
        missing,
    })
}

/// Whether a copy of a log's public folder can tell a bundle's completeness: it must be a copy
/// of the bundle's log (its checkpoint signed with the bundle's key) that signs at least the
/// entries the bundle's checkpoint does. Said plainly, rather than as a missing entry bundle.
fn copy_covers_bundle(public: &Path, bundle: &VerifiedBundle) -> Result<()> {
    // In a whole folder, the private copy of the checkpoint may sign more than the public one
    // (a public part rolled back): a trail is proven against the larger, and so is checked
    // here. It is read first, as the log writes it second.
    let private = public
        .parent()
        .map(|folder| folder.join("private/checkpoint"))
        .and_then(|path| read_at_most(&path, MAX_CHECKPOINT).ok())
        .and_then(|signed| {
            Checkpoint::open(&signed, &bundle.verifier, Some(&bundle.checkpoint.origin)).ok()
        });
    let path = public.join("checkpoint");
    let signed = match read_at_most(&path, MAX_CHECKPOINT) {
        Ok(signed) => signed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuditError::Evidence(format!(
                "{} holds no log (no checkpoint file): give a copy of the log's public/ folder, \
                 or of the whole log folder",
                public.display()
            )));
        }
        Err(e) => return Err(AuditError::io(&path, e)),
    };
    let copy = Checkpoint::open(&signed, &bundle.verifier, Some(&bundle.checkpoint.origin))
        .map_err(|e| {
            AuditError::Evidence(format!(
                "{}: not a checkpoint of the bundle's log ({}, key {}): {e}; it is a copy of \
                 another log, or altered",
                path.display(),
                bundle.checkpoint.origin,
                bundle.verifier.to_verifier_key()
            ))
        })?;
    let copy = match private {
        Some(private) if private.size > copy.size => private,
        _ => copy,
    };
    if copy.size == bundle.checkpoint.size && copy.root != bundle.checkpoint.root {
        return Err(AuditError::Evidence(format!(
            "the copy of the log in {} and the bundle's checkpoint sign two different trees of \
             {} entries with the same key: the log signed two histories",
            public.display(),
            copy.size
        )));
    }
    if copy.size < bundle.checkpoint.size {
        return Err(AuditError::Evidence(format!(
            "the copy of the log in {} signs {} entries, fewer than the bundle's checkpoint \
             ({}): check the bundle against a copy at least as recent as it",
            public.display(),
            copy.size,
            bundle.checkpoint.size
        )));
    }
    Ok(())
}
