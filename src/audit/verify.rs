//! Offline verification of a copy of the public folder: every entry bundle,
//! every tile, the root, the checkpoint signature, and consistency with an
//! earlier checkpoint.
//!
//! This module owns the auditor's full check. It reads only the public
//! folder and trusts nothing in it but what the verifier key signs; on the
//! first discrepancy it names the first entry index concerned. It must not
//! write anything.

use super::checkpoint::Checkpoint;
use super::merkle::{
    Hash, RunningRoot, consistency_proof, leaf_hash, root_from, root_of, verify_consistency,
};
use super::note::NoteVerifier;
use super::tiles::{
    TILE_HEIGHT, TILE_WIDTH, TileReader, encode_index, entries_path, parse_bundle_prefix,
    tile_path, tile_width,
};
use std::fmt;
use std::path::Path;

/// The first discrepancy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first entry index concerned, when the damage is in a tile or bundle.
    pub index: Option<u64>,
    /// The file concerned, relative to the public folder.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "entry {i}: {} ({})", self.reason, self.file),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for Failure {}

fn fail(index: Option<u64>, file: &str, reason: impl Into<String>) -> Failure {
    Failure {
        index,
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The verified checkpoint.
    pub checkpoint: Checkpoint,
    /// The earlier checkpoint shown consistent with it, if one was given.
    pub since: Option<Checkpoint>,
}

/// The largest public file: a full entry bundle. Tiles and checkpoints are much smaller.
const MAX_PUBLIC_FILE: u64 = super::files::MAX_ENTRY_BUNDLE;

/// Reads a public file, refusing one larger than any the log writes: the folder may come from
/// anywhere, and a huge file (or a link to an endless one) must not exhaust memory.
fn read(public: &Path, rel: &str, index: Option<u64>) -> Result<Vec<u8>, Failure> {
    super::files::read_at_most(&public.join(rel), MAX_PUBLIC_FILE).map_err(|e| {
        // `read_at_most` says a file too large as invalid data; a read says nothing else so.
        let why = if e.kind() == std::io::ErrorKind::InvalidData {
            format!("larger than any file of the log ({MAX_PUBLIC_FILE} bytes)")
        } else {
            format!("cannot read: {e}")
        };
        fail(index, rel, why)
    })
}

/// The file that holds the first `width` hashes (or entries) of a tile: its partial file
/// `partial`, or, when that one is gone and the full file `full` is there, the full one, whose
/// first `width` are the same (the log removes a partial file once the full one is written,
/// and a copy taken while the log grew can hold a checkpoint older than its tiles). Says
/// whether it is the full one.
fn current_file(public: &Path, partial: String, full: String, width: u64) -> (String, bool) {
    if width < TILE_WIDTH && !public.join(&partial).exists() && public.join(&full).exists() {
        (full, true)
    } else {
        (partial, false)
    }
}

/// Older partial versions of a tile (`<path>.p/<w>`) still on disk; each must
/// be a prefix of the current tile.
fn stale_partials(public: &Path, base: &str) -> Vec<(u64, String)> {
    let dir = public.join(format!("{base}.p"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .map(|w: u64| (w, format!("{base}.p/{w}")))
        .collect();
    out.sort();
    out
}

fn check_tile(
    public: &Path,
    level: u8,
    n: u64,
    width: u64,
    expected: &[Hash],
    first_entry: impl Fn(u64) -> u64,
) -> Result<(), Failure> {
    let (current, of_full) = current_file(
        public,
        tile_path(level, n, width),
        tile_path(level, n, TILE_WIDTH),
        width,
    );
    let mut files = vec![(width, current)];
    files.extend(
        stale_partials(public, &format!("tile/{level}/{}", encode_index(n)))
            .into_iter()
            .filter(|(w, _)| *w != width),
    );
    for (i, (w, rel)) in files.into_iter().enumerate() {
        if w > width {
            // Written for entries that no checkpoint signs yet (tiles are written before the
            // checkpoint that covers them: a crash between the two, or a copy taken between
            // them, leaves such files). Nothing vouches for them, so nothing is checked.
            continue;
        }
        let mut data = read(public, &rel, Some(first_entry(0)))?;
        // The full file standing for the partial one holds a whole tile, of which the first
        // `w` hashes are checked.
        let stands_in = i == 0 && of_full;
        let file_width = if stands_in { TILE_WIDTH } else { w };
        if data.len() as u64 != file_width * 32 {
            let held = data.len() as u64 / 32;
            // A tile cut short names the first entry it lost; one that does not end where it
            // should names the last entry it covers, not one past it (which may not exist).
            let (at, how) = if held < w {
                (first_entry(held), "cut short at this entry")
            } else if w == 0 {
                // A partial file of no hashes (the log writes none): it covers no entry.
                (first_entry(0), "it should be empty")
            } else {
                (
                    first_entry(w).saturating_sub(1),
                    "it does not end where it should, after this entry, the last it covers",
                )
            };
            return Err(fail(
                Some(at),
                &rel,
                format!(
                    "tile has {} bytes, expected {}: {how}",
                    data.len(),
                    file_width * 32
                ),
            ));
        }
        data.truncate(w as usize * 32);
        let got: Vec<Hash> = data
            .chunks_exact(Hash::LEN)
            .filter_map(Hash::from_slice)
            .collect();
        let want = expected.get(..w as usize).unwrap_or(expected);
        if let Some(j) = (0..w as usize).find(|&j| got.get(j) != want.get(j)) {
            let below = if level == 0 {
                format!(
                    "the entry's hash in this tile differs from the hash of the entry in its \
                     entry bundle ({}): one of the two was changed",
                    entries_path(n, width)
                )
            } else {
                format!(
                    "a hash in this tile, the one over entries {} to {}, differs from the root \
                     of the tile below it: one of the two was changed",
                    first_entry(j as u64),
                    first_entry(j as u64 + 1) - 1
                )
            };
            return Err(fail(Some(first_entry(j as u64)), &rel, below));
        }
    }
    Ok(())
}

/// Checks entry bundle `k` (and any old partial versions of it) against its
/// level-0 tile. Returns the tile's root when the tile is full.
fn check_bundle(public: &Path, size: u64, k: u64) -> Result<Option<Hash>, Failure> {
    let base = k * TILE_WIDTH;
    let w = tile_width(size, 0, k);
    let (current, of_full) =
        current_file(public, entries_path(k, w), entries_path(k, TILE_WIDTH), w);
    let mut files = vec![(w, current)];
    files.extend(
        stale_partials(public, &format!("tile/entries/{}", encode_index(k)))
            .into_iter()
            .filter(|(fw, _)| *fw != w),
    );
    let mut leaves: Vec<Hash> = Vec::new();
    let mut malformed = None;
    for (i, (fw, rel)) in files.into_iter().enumerate() {
        if fw > w {
            // Beyond the signed tree, as for tiles above.
            continue;
        }
        let data = read(public, &rel, Some(base))?;
        let (entries, mut complete) = parse_bundle_prefix(&data);
        let mut hashes: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        if i == 0 && of_full && hashes.len() as u64 >= w {
            // The full bundle's first entries are those of the partial one it replaced.
            hashes.truncate(w as usize);
            complete = true;
        }
        if fw == w {
            // Damage is reported at the first entry whose hash differs
            // from the tile, which the tile comparison below finds.
            if !complete {
                malformed = Some((base + hashes.len() as u64, rel.clone()));
            } else if hashes.len() as u64 > w {
                return Err(fail(
                    Some((base + w).saturating_sub(1)),
                    &rel,
                    format!(
                        "bundle holds {} entries, expected {w}: entries follow this one, the \
                         last it covers",
                        hashes.len()
                    ),
                ));
            }
            leaves = hashes;
        } else if let Some(j) = (0..fw as usize).find(|&j| hashes.get(j) != leaves.get(j)) {
            return Err(fail(
                Some(base + j as u64),
                &rel,
                format!(
                    "this older partial bundle and the current one ({}) hold different entries \
                     here: one of the two was changed",
                    entries_path(k, w)
                ),
            ));
        } else if !complete || hashes.len() as u64 != fw {
            return Err(fail(
                Some(base + fw),
                &rel,
                "old partial bundle is malformed",
            ));
        }
    }
    if let Err(mut f) = check_tile(public, 0, k, w, &leaves, |j| base + j) {
        if let Some((at, rel)) = malformed.filter(|(at, _)| Some(*at) == f.index) {
            f = fail(Some(at), &rel, "entry bundle is malformed");
        }
        return Err(f);
    }
    if let Some((at, rel)) = malformed {
        return Err(fail(Some(at), &rel, "entry bundle is malformed"));
    }
    Ok((w == TILE_WIDTH).then(|| root_of(&leaves)))
}

/// Verifies the public folder against the verifier key. `since`, if given, is
/// an earlier signed checkpoint that the current one must be consistent with.
/// `progress` is called with the number of entries hashed so far.
pub fn verify_public(
    public: &Path,
    verifier: &NoteVerifier,
    since: Option<&[u8]>,
    progress: &mut dyn FnMut(u64),
) -> Result<Report, Failure> {
    let cp_data = read(public, "checkpoint", None)?;
    let cp = Checkpoint::open(&cp_data, verifier, None)
        .map_err(|e| fail(None, "checkpoint", e.to_string()))?;
    let size = cp.size;
    // An earlier checkpoint larger than this one is said before the tiles are read: those of
    // a log rolled back may be gone, and a missing file would hide what happened.
    let since = since
        .map(|data| {
            let old = Checkpoint::open(data, verifier, Some(&cp.origin))
                .map_err(|e| fail(None, "earlier checkpoint", e.to_string()))?;
            if old.size > size {
                return Err(fail(
                    None,
                    "earlier checkpoint",
                    format!(
                        "it signs {} entries, more than the current checkpoint's {size}: the log \
                         was rolled back (or forked)",
                        old.size
                    ),
                ));
            }
            Ok(old)
        })
        .transpose()?;

    // Level 0: entry bundles against leaf-hash tiles, hashed on every core,
    // in chunks whose results are taken in order (so the first failure
    // reported is the first in the log).
    let mut upper: Vec<Hash> = Vec::new();
    let bundles = size.div_ceil(TILE_WIDTH);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8) as u64;
    let chunk = 32 * threads;
    let mut k0 = 0;
    while k0 < bundles {
        let k1 = (k0 + chunk).min(bundles);
        let per = (k1 - k0).div_ceil(threads);
        let results: Vec<Result<Option<Hash>, Failure>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (a, b) = ((k0 + t * per).min(k1), (k0 + (t + 1) * per).min(k1));
                    s.spawn(move || {
                        (a..b)
                            .map(|k| check_bundle(public, size, k))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(fail(None, "tile/entries", "verifier thread failed"))]
                    })
                })
                .collect()
        });
        for r in results {
            if let Some(root) = r? {
                upper.push(root);
            }
        }
        k0 = k1;
        progress((k1 * TILE_WIDTH).min(size));
    }

    // Upper levels: each hash is the root of a full tile below.
    let mut level = 1u8;
    while !upper.is_empty() {
        let shift = TILE_HEIGHT * u32::from(level);
        let mut next = Vec::new();
        for k in 0..(upper.len() as u64).div_ceil(TILE_WIDTH) {
            let w = tile_width(size, level, k);
            let start = (k * TILE_WIDTH) as usize;
            let expected = upper.get(start..start + w as usize).unwrap_or_default();
            check_tile(public, level, k, w, expected, |j| {
                ((k * TILE_WIDTH) + j) << shift
            })?;
            if w == TILE_WIDTH {
                next.push(root_of(expected));
            }
        }
        upper = next;
        level += 1;
    }

    // The root, from the tiles just verified.
    let reader = TileReader::new(public, size);
    let root = root_from(&reader, size).map_err(|e| fail(None, "tile", e.to_string()))?;
    if root != cp.root {
        return Err(fail(
            None,
            "checkpoint",
            "the root of the tiles differs from the signed root",
        ));
    }

    if let Some(old) = &since {
        consistent(&reader, old, &cp).map_err(|reason| fail(None, "earlier checkpoint", reason))?;
    }
    Ok(Report {
        checkpoint: cp,
        since,
    })
}

/// Whether the tree `old` signs is the beginning of the one `current` signs, by a consistency
/// proof read from the tiles of `current`'s log (`reader`). The error says why not.
fn consistent(reader: &TileReader, old: &Checkpoint, current: &Checkpoint) -> Result<(), String> {
    if old.size > current.size {
        return Err(format!(
            "it signs {} entries, more than the current checkpoint's {}: the log was rolled back \
             (or forked)",
            old.size, current.size
        ));
    }
    if old.size == 0 {
        return if old.root == Hash::empty() {
            Ok(())
        } else {
            Err("bad empty-tree root".into())
        };
    }
    let proof = consistency_proof(reader, old.size, current.size).map_err(|e| e.to_string())?;
    verify_consistency(old.size, current.size, &old.root.0, &current.root.0, &proof)
        .map_err(|_| "not consistent with the current checkpoint: the log was rewritten".to_owned())
}

/// Checks that `older`, a checkpoint of the same log as `current` (which [`verify_public`] has
/// verified in `public`), signs the beginning of the same history: a consistency proof from
/// the public tiles. The error says why not.
pub fn check_consistent(
    public: &Path,
    older: &Checkpoint,
    current: &Checkpoint,
) -> Result<(), String> {
    consistent(&TileReader::new(public, current.size), older, current)
}

/// Reads the first `checkpoint.size` entries of a copy of the public folder, calling
/// `each(index, entry)` in order, and checks that their Merkle root is the checkpoint's, so that
/// they are the very entries it signs, whatever else the folder holds (it may be a later copy,
/// whose tiles have grown). `progress` is called with the number of entries read so far.
///
/// The entries are handed over before the root is checked: a caller must act on them only once
/// this returns `Ok`.
pub fn scan_signed_entries(
    public: &Path,
    checkpoint: &Checkpoint,
    each: &mut dyn FnMut(u64, &[u8]),
    progress: &mut dyn FnMut(u64),
) -> Result<(), Failure> {
    let size = checkpoint.size;
    let mut root = RunningRoot::default();
    for k in 0..size.div_ceil(TILE_WIDTH) {
        let base = k * TILE_WIDTH;
        let w = tile_width(size, 0, k);
        // The bundle as the checkpoint's size left it, or a wider one that has it as its
        // prefix: the full bundle, or a later partial one.
        let mut candidates = vec![entries_path(k, w), entries_path(k, TILE_WIDTH)];
        candidates.extend(
            stale_partials(public, &format!("tile/entries/{}", encode_index(k)))
                .into_iter()
                .filter(|(fw, _)| *fw > w)
                .map(|(_, rel)| rel),
        );
        let Some((rel, data)) = candidates.iter().find_map(|rel| {
            let data = read(public, rel, Some(base)).ok()?;
            Some((rel, data))
        }) else {
            return Err(fail(
                Some(base),
                &entries_path(k, w),
                "no entry bundle holds these entries",
            ));
        };
        let (entries, _) = parse_bundle_prefix(&data);
        if (entries.len() as u64) < w {
            return Err(fail(
                Some(base + entries.len() as u64),
                rel,
                "entry bundle is malformed or short",
            ));
        }
        for (j, entry) in entries.iter().take(w as usize).enumerate() {
            each(base + j as u64, entry);
            root.push(leaf_hash(entry));
        }
        progress(base + w);
    }
    if root.root() != checkpoint.root {
        return Err(fail(
            None,
            "tile/entries",
            "the entries' root differs from the signed root",
        ));
    }
    Ok(())
}
