//! The public folder: the right edge of the tree, the tiles and entry bundles
//! written for each checkpoint, and the signed checkpoint itself.
//!
//! This module owns everything under `public/`. It turns durable entries into
//! tiles and signs a checkpoint only after every file the checkpoint needs is
//! synced. It must never sign a tree smaller than, or inconsistent with, the
//! last one it signed, and must never hold private data.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::keys::{sync_dir, write_durably};
use super::merkle::{Hash, HashSource, ProofError, leaf_hash, root_from, root_of};
use super::note::NoteSigner;
use super::tiles::{
    TILE_HEIGHT, TILE_WIDTH, encode_bundle, entries_path, parse_bundle, parse_tile, tile_path,
    tile_width,
};
use crate::durable_folders::Readers;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The right edge of the tree: the partial tile at every level, the partial
/// entry bundle, and the full tiles completed since the last checkpoint.
#[derive(Debug, Default)]
pub struct Edge {
    size: u64,
    /// `levels[l]`: hashes of the partial tile at level `l`.
    levels: Vec<Vec<Hash>>,
    /// `full[l]`: how many full tiles level `l` has.
    full: Vec<u64>,
    bundle: Vec<Vec<u8>>,
    /// Full tiles and bundles not yet written: path and bytes.
    pending: Vec<(String, Vec<u8>)>,
}

impl Edge {
    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Loads the edge of the tree of `size` entries from the tiles of a public folder.
    pub fn load(public: &Path, size: u64) -> Result<Edge> {
        let mut e = Edge {
            size,
            levels: vec![Vec::new(); 8],
            full: vec![0; 8],
            ..Default::default()
        };
        for l in 0..8u8 {
            let shift = TILE_HEIGHT * (u32::from(l) + 1);
            e.full[usize::from(l)] = if shift >= 64 { 0 } else { size >> shift };
            let idx = e.full[usize::from(l)];
            let w = tile_width(size, l, idx);
            if w == 0 {
                continue;
            }
            let rel = tile_path(l, idx, w);
            let data = std::fs::read(public.join(&rel))
                .map_err(|e| AuditError::io(public.join(&rel), e))?;
            let hashes = parse_tile(&data)
                .filter(|h| h.len() as u64 == w)
                .ok_or_else(|| AuditError::Corrupt(format!("{rel} has the wrong length")))?;
            e.levels[usize::from(l)] = hashes;
        }
        let w = size % TILE_WIDTH;
        if w > 0 {
            // A partial bundle that is missing, unreadable, or not the entries its tile hashes
            // is left empty here: the log puts it back from its journal (see
            // [`Edge::restore_bundle`]). Tiles are checked against the signed root instead.
            let rel = entries_path(size / TILE_WIDTH, w);
            if let Ok(data) = std::fs::read(public.join(&rel))
                && let Ok(entries) = parse_bundle(&data)
                && e.is_partial_bundle(&entries)
            {
                e.bundle = entries.into_iter().map(<[u8]>::to_vec).collect();
            }
        }
        Ok(e)
    }

    /// Whether `entries` are those the partial level-0 tile hashes, all of them.
    fn is_partial_bundle(&self, entries: &[impl AsRef<[u8]>]) -> bool {
        entries.len() as u64 == self.size % TILE_WIDTH
            && entries
                .iter()
                .zip(&self.levels[0])
                .all(|(entry, hash)| leaf_hash(entry.as_ref()) == *hash)
    }

    /// The index of the first entry of the partial entry bundle, when its file must be put
    /// back (it was missing, unreadable, or held other entries than its tile hashes).
    pub fn bundle_to_restore(&self) -> Option<u64> {
        let w = self.size % TILE_WIDTH;
        (w > 0 && self.bundle.len() as u64 != w).then_some(self.size - w)
    }

    /// Puts back the partial entry bundle from `entries` (read from the journal, from
    /// [`Edge::bundle_to_restore`] on), after checking them against its tile, and writes its
    /// file durably.
    pub fn restore_bundle(&mut self, public: &Path, entries: Vec<Vec<u8>>) -> Result<()> {
        let w = self.size % TILE_WIDTH;
        let rel = entries_path(self.size / TILE_WIDTH, w);
        if !self.is_partial_bundle(&entries) {
            return Err(AuditError::Corrupt(format!(
                "{rel} cannot be put back: the journal's entries do not match its tile"
            )));
        }
        let path = public.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        }
        write_durably(
            &path,
            &encode_bundle(entries.iter().map(Vec::as_slice)),
            Readers::AsTheUmaskSays,
        )?;
        self.bundle = entries;
        Ok(())
    }

    /// Appends one entry and its leaf hash.
    pub fn push(&mut self, entry: Vec<u8>, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels = vec![Vec::new(); 8];
            self.full = vec![0; 8];
        }
        self.bundle.push(entry);
        if self.bundle.len() as u64 == TILE_WIDTH {
            let data = encode_bundle(self.bundle.iter().map(Vec::as_slice));
            self.pending
                .push((entries_path(self.full[0], TILE_WIDTH), data));
            self.bundle.clear();
        }
        let mut hash = leaf;
        for l in 0..8 {
            self.levels[l].push(hash);
            if self.levels[l].len() as u64 != TILE_WIDTH {
                break;
            }
            let bytes: Vec<u8> = self.levels[l].iter().flat_map(|h| h.0).collect();
            self.pending
                .push((tile_path(l as u8, self.full[l], TILE_WIDTH), bytes));
            hash = root_of(&self.levels[l]);
            self.levels[l].clear();
            self.full[l] += 1;
        }
        self.size += 1;
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Result<Hash> {
        Ok(root_from(self, self.size)?)
    }

    /// Every file the checkpoint of the current size needs that is not yet
    /// written: the pending full tiles and bundles, and the partial ones.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = self.pending.clone();
        for (l, hashes) in self.levels.iter().enumerate() {
            if !hashes.is_empty() {
                let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
                out.push((tile_path(l as u8, self.full[l], hashes.len() as u64), bytes));
            }
        }
        if !self.bundle.is_empty() {
            let data = encode_bundle(self.bundle.iter().map(Vec::as_slice));
            out.push((entries_path(self.full[0], self.bundle.len() as u64), data));
        }
        out
    }
}

impl HashSource for Edge {
    fn subtree(&self, height: u8, index: u64) -> Result<Hash, ProofError> {
        let l = usize::from(height / TILE_HEIGHT as u8);
        let r = u32::from(height % TILE_HEIGHT as u8);
        let first = index << r;
        let base = self.full.get(l).copied().unwrap_or(0) * TILE_WIDTH;
        let off = first.checked_sub(base).ok_or_else(|| {
            ProofError::Source(format!("subtree {height}/{index} is left of the edge"))
        })?;
        self.levels
            .get(l)
            .and_then(|h| h.get(off as usize..(off + (1 << r)) as usize))
            .map(root_of)
            .ok_or_else(|| {
                ProofError::Source(format!("subtree {height}/{index} is not on the edge"))
            })
    }
}

/// Writes a file atomically (temporary name, sync, rename). The folder is
/// synced later, once for many files.
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tile")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| AuditError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| AuditError::io(&tmp, e))?;
    f.sync_data().map_err(|e| AuditError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AuditError::io(path, e))
}

/// Writes the tiles for the edge's current size, then signs and writes the
/// checkpoint. `last` is the checkpoint signed before; the new one must not
/// be smaller. The signed checkpoint is also written to `private_copy`, if
/// given, so that losing the public file cannot make the log sign a smaller
/// tree. Returns the new checkpoint and its signed text.
pub fn publish(
    public: &Path,
    edge: &mut Edge,
    signer: &NoteSigner,
    origin: &str,
    last: &Checkpoint,
    private_copy: Option<&Path>,
) -> Result<(Checkpoint, String)> {
    if edge.size < last.size {
        return Err(AuditError::Corrupt(format!(
            "refusing to sign size {} after size {}",
            edge.size, last.size
        )));
    }
    let files = edge.files();
    let mut dirs = BTreeSet::new();
    for (rel, data) in &files {
        let path = public.join(rel);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(|e| AuditError::io(parent, e))?;
                // New folders must be made durable in their own parents too.
                let mut p = parent.to_path_buf();
                while p.starts_with(public) && p != public {
                    dirs.insert(p.clone());
                    if !p.pop() {
                        break;
                    }
                }
            }
            dirs.insert(parent.to_path_buf());
        }
        write_file(&path, data)?;
    }
    dirs.insert(public.to_path_buf());
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size: edge.size,
        root: edge.root()?,
    };
    if cp.size == last.size && cp.root != last.root {
        return Err(AuditError::Corrupt(
            "tree differs from the last checkpoint".into(),
        ));
    }
    let signed = cp.sign(signer)?;
    write_durably(
        &public.join("checkpoint"),
        signed.as_bytes(),
        Readers::AsTheUmaskSays,
    )?;
    if let Some(copy) = private_copy {
        write_durably(copy, signed.as_bytes(), Readers::Owner)?;
    }
    // Partial versions of tiles that are now full are no longer needed.
    for (rel, _) in edge.pending.drain(..) {
        let _ = std::fs::remove_dir_all(public.join(format!("{rel}.p")));
    }
    Ok((cp, signed))
}

/// The public folder of a log folder.
pub fn public_dir(log: &Path) -> PathBuf {
    log.join("public")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{MemoryTree, leaf_hash};

    #[test]
    fn edge_root_matches_full_tree_and_reloads_from_tiles() {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("t").unwrap();
        let mut edge = Edge::default();
        let mut tree = MemoryTree::new();
        let mut last = Checkpoint {
            origin: "t".into(),
            size: 0,
            root: Hash::empty(),
        };
        for n in [1u64, 255, 256, 257, 600, 65_536 + 3] {
            while edge.size() < n {
                let e = edge.size().to_be_bytes().to_vec();
                let h = leaf_hash(&e);
                tree.push(h);
                edge.push(e, h);
            }
            assert_eq!(edge.root().unwrap(), tree.root(n).unwrap(), "size {n}");
            let (cp, _) = publish(dir.path(), &mut edge, &signer, "t", &last, None).unwrap();
            last = cp;
            let reloaded = Edge::load(dir.path(), n).unwrap();
            assert_eq!(reloaded.root().unwrap(), last.root);
        }
        assert!(dir.path().join("tile/0/255").exists());
        // Old partial tiles are gone, and readers fall back to the full tile.
        assert!(!dir.path().join("tile/0/000.p").exists());
        let old = crate::audit::tiles::TileReader::new(dir.path(), 255);
        assert_eq!(root_from(&old, 255).unwrap(), tree.root(255).unwrap());
        assert!(dir.path().join("tile/2/000.p/1").exists());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(16))]

        /// The tiles a log publishes, read back at its last checkpoint, give the same root and
        /// the same inclusion and consistency proofs as the whole tree in memory, whatever the
        /// sizes it was published at (partial tiles, full ones, and tiles of upper levels).
        #[test]
        fn the_published_tiles_prove_what_the_tree_proves(
            mut sizes in proptest::collection::vec(1u64..1200, 1..4),
            seed in proptest::prelude::any::<u64>(),
        ) {
            use crate::audit::merkle::{consistency_proof, inclusion_proof};
            sizes.sort_unstable();
            sizes.dedup();
            let dir = tempfile::tempdir().unwrap();
            let signer = NoteSigner::generate("t").unwrap();
            let mut edge = Edge::default();
            let mut tree = MemoryTree::new();
            let mut last = Checkpoint { origin: "t".into(), size: 0, root: Hash::empty() };
            for &n in &sizes {
                while edge.size() < n {
                    let entry = (edge.size() ^ seed).to_be_bytes().to_vec();
                    let hash = leaf_hash(&entry);
                    tree.push(hash);
                    edge.push(entry, hash);
                }
                last = publish(dir.path(), &mut edge, &signer, "t", &last, None).unwrap().0;
            }
            let n = last.size;
            let reader = crate::audit::tiles::TileReader::new(dir.path(), n);
            proptest::prop_assert_eq!(root_from(&reader, n).unwrap(), tree.root(n).unwrap());
            for index in [0, seed % n, n - 1] {
                proptest::prop_assert_eq!(
                    inclusion_proof(&reader, index, n).unwrap(),
                    inclusion_proof(&tree, index, n).unwrap()
                );
            }
            for &m in &sizes {
                proptest::prop_assert_eq!(
                    consistency_proof(&reader, m, n).unwrap(),
                    consistency_proof(&tree, m, n).unwrap()
                );
            }
        }
    }
}
