//! RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs.
//!
//! This module owns the tree arithmetic and nothing else: it knows how to hash
//! leaves and interior nodes, how to build proofs from any source of complete
//! subtree hashes ([`HashSource`]), and how to verify proofs. It must not read
//! files, know about tiles or entries, or allocate in proportion to the tree
//! size: every algorithm here runs in `O(log n)` hashes and memory.

use sha2::{Digest, Sha256};
use std::fmt;

/// A SHA-256 Merkle tree hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The number of bytes in a hash.
    pub const LEN: usize = 32;

    /// The root of the empty tree: SHA-256 of the empty string.
    pub fn empty() -> Hash {
        Hash(Sha256::digest([]).into())
    }

    /// Parses a hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    /// Standard base64 (RFC 4648 section 4), as used by checkpoints and proofs.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses standard base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Hash> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        Hash::from_slice(&bytes)
    }

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// The RFC 6962 leaf hash: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The Merkle tree hash of a list of leaf (or subtree) hashes, as RFC 6962
/// defines it: the list is split at the largest power of two smaller than its
/// length. Runs in `O(n)` hashes and `O(log n)` stack.
pub fn root_of(hashes: &[Hash]) -> Hash {
    match hashes.len() {
        0 => Hash::empty(),
        1 => hashes[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of(&hashes[..k]), &root_of(&hashes[k..]))
        }
    }
}

/// The largest power of two strictly smaller than `n` (`n` must be at least 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Why a proof could not be built or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index is not in the tree, or the sizes are not in order.
    #[error("invalid proof request: {0}")]
    Range(String),
    /// The proof has the wrong number of hashes for the sizes given.
    #[error("proof has the wrong length")]
    Length,
    /// The recomputed root does not match the expected one.
    #[error("recomputed root does not match")]
    Mismatch,
    /// The hash source could not produce a subtree hash.
    #[error("hash unavailable: {0}")]
    Source(String),
}

/// Gives the hash of a *complete* subtree: the `2^height` leaves starting at
/// leaf `index * 2^height`.
///
/// Proof generation only ever asks for complete subtrees that lie entirely
/// inside the tree it is proving against.
pub trait HashSource {
    /// Returns the hash of the complete subtree of the given height and index.
    fn subtree(&self, height: u8, index: u64) -> Result<Hash, ProofError>;
}

/// A fully materialised tree held in memory: every level is kept. Meant for
/// tests and small trees; the log itself reads hashes from tiles.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            hash = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The root hash at the given size (which must not exceed [`Self::size`]).
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        root_from(self, size)
    }
}

impl HashSource for MemoryTree {
    fn subtree(&self, height: u8, index: u64) -> Result<Hash, ProofError> {
        self.levels
            .get(usize::from(height))
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| {
                ProofError::Source(format!("no subtree at height {height} index {index}"))
            })
    }
}

/// The hash of the leaf range `[start, end)`, which must be a range that RFC
/// 6962's recursion produces (aligned on the left, possibly ragged on the
/// right). It is assembled from complete subtrees.
fn range_hash<S: HashSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, ProofError> {
    let n = end - start;
    if n == 0 {
        return Ok(Hash::empty());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.subtree(n.trailing_zeros() as u8, start / n);
    }
    if n == 1 {
        return src.subtree(0, start);
    }
    let k = split_point(n);
    let left = range_hash(src, start, start + k)?;
    let right = range_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves of the tree behind `src`.
pub fn root_from<S: HashSource + ?Sized>(src: &S, size: u64) -> Result<Hash, ProofError> {
    range_hash(src, 0, size)
}

/// Builds the RFC 6962 inclusion proof (audit path) of leaf `index` in the
/// tree of `size` leaves.
pub fn inclusion_proof<S: HashSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "index {index} is not below tree size {size}"
        )));
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: HashSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(src, m, start, start + k, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        path(src, m - k, start + k, end, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Builds the RFC 6962 consistency proof between the trees of `old_size` and
/// `new_size` leaves. Both sizes must be positive and in order.
pub fn consistency_proof<S: HashSource + ?Sized>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::Range(format!(
            "no consistency proof from size {old_size} to size {new_size}"
        )));
    }
    let mut proof = Vec::new();
    subproof(src, old_size, 0, new_size, true, &mut proof)?;
    Ok(proof)
}

fn subproof<S: HashSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, complete, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Recomputes the root from a leaf hash and its inclusion proof (RFC 9162,
/// section 2.1.3.2).
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "index {index} is not below tree size {size}"
        )));
    }
    let mut f = index;
    let mut s = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    Ok(r)
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves whose root
/// is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Verifies an RFC 9162 consistency proof (section 2.1.4.2) between the tree
/// of `old_size` leaves with root `old_root` and the tree of `new_size` leaves
/// with root `new_root`.
///
/// Roots are taken as byte strings so that malformed input is rejected here
/// rather than by the caller. A proof from the empty tree is meaningless and
/// is rejected; callers treat size 0 as trivially consistent themselves.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Range(format!(
            "old size {old_size} is larger than new size {new_size}"
        )));
    }
    if old_size == 0 {
        return Err(ProofError::Range(
            "consistency from the empty tree is meaningless".into(),
        ));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let (Some(old_root), Some(new_root)) = (Hash::from_slice(old_root), Hash::from_slice(new_root))
    else {
        return Err(ProofError::Mismatch);
    };
    let mut hashes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        hashes.push(old_root);
    }
    hashes.extend_from_slice(proof);
    let Some((first, rest)) = hashes.split_first() else {
        return Err(ProofError::Length);
    };
    let mut f = old_size - 1;
    let mut s = new_size - 1;
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if fr == old_root && sr == new_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// The RFC 6962 root of leaves taken one at a time, in memory of the logarithm of their
/// number: the roots of the perfect subtrees so far, the largest first. (A log of millions of
/// entries is read without holding a hash for each.)
#[derive(Debug, Default)]
pub struct RunningRoot(Vec<(Hash, u64)>);

impl RunningRoot {
    /// Takes the next leaf.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (leaf, 1u64);
        while let Some(&(top, size)) = self.0.last() {
            if size != node.1 {
                break;
            }
            self.0.pop();
            node = (node_hash(&top, &node.0), size * 2);
        }
        self.0.push(node);
    }

    /// The root of the leaves pushed so far: the subtrees folded from the smallest.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.0.iter().rev();
        let Some(&(mut root, _)) = subtrees.next() else {
            return Hash::empty();
        };
        for (left, _) in subtrees {
            root = node_hash(left, &root);
        }
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_running_root_is_the_trees_root() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut running = RunningRoot::default();
        assert_eq!(running.root(), root_of(&[]));
        for (n, leaf) in leaves.iter().enumerate() {
            running.push(*leaf);
            assert_eq!(running.root(), root_of(&leaves[..=n]), "{} leaves", n + 1);
        }
    }

    fn tree(n: u64) -> (MemoryTree, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let h = leaf_hash(&i.to_be_bytes());
            t.push(h);
            leaves.push(h);
        }
        (t, leaves)
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            Hash::empty().to_base64(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn memory_tree_root_matches_recursive_definition() {
        for n in 0..70 {
            let (t, leaves) = tree(n);
            assert_eq!(t.root(n).unwrap(), root_of(&leaves), "size {n}");
        }
    }

    /// A tree of the leaves `contents` (each hashed as a leaf).
    fn tree_of(contents: &[Vec<u8>]) -> (MemoryTree, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let leaves: Vec<Hash> = contents.iter().map(|c| leaf_hash(c)).collect();
        for leaf in &leaves {
            t.push(*leaf);
        }
        (t, leaves)
    }

    /// `hash` with one bit flipped, chosen by `seed`.
    fn flipped(hash: &Hash, seed: u64) -> Hash {
        let mut bad = *hash;
        bad.0[(seed % 32) as usize] ^= 1 << ((seed / 32) % 8);
        bad
    }

    proptest! {
        #[test]
        fn inclusion_round_trips(
            contents in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..300),
            seed in any::<u64>(),
        ) {
            let (t, leaves) = tree_of(&contents);
            let n = leaves.len() as u64;
            let i = seed % n;
            let leaf = &leaves[i as usize];
            let root = t.root(n).unwrap();
            let proof = inclusion_proof(&t, i, n).unwrap();
            prop_assert!(verify_inclusion(i, n, leaf, &proof, &root).is_ok());
            // The wrong leaf, index or root never verifies.
            prop_assert!(verify_inclusion(i, n, &flipped(leaf, seed), &proof, &root).is_err());
            prop_assert!(verify_inclusion(i, n, leaf, &proof, &flipped(&root, seed)).is_err());
            if n > 1 && leaves[((i + 1) % n) as usize] != *leaf {
                let j = (i + 1) % n;
                prop_assert!(verify_inclusion(j, n, leaf, &proof, &root).is_err());
            }
            // Nor does a proof with any one of its hashes changed, or one hash short or more.
            if !proof.is_empty() {
                let k = (seed % proof.len() as u64) as usize;
                let mut bad = proof.clone();
                bad[k] = flipped(&bad[k], seed / 7);
                prop_assert!(verify_inclusion(i, n, leaf, &bad, &root).is_err());
                prop_assert!(verify_inclusion(i, n, leaf, &proof[1..], &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(i, n, leaf, &longer, &root).is_err());
        }

        #[test]
        fn consistency_round_trips(
            contents in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..300),
            seed in any::<u64>(),
        ) {
            let (t, leaves) = tree_of(&contents);
            let n = leaves.len() as u64;
            let m = seed % n + 1;
            let proof = consistency_proof(&t, m, n).unwrap();
            let (r1, r2) = (t.root(m).unwrap(), t.root(n).unwrap());
            prop_assert!(verify_consistency(m, n, &r1.0, &r2.0, &proof).is_ok());
            // The wrong old or new root never verifies, nor a proof with one hash changed.
            prop_assert!(
                verify_consistency(m, n, &flipped(&r1, seed).0, &r2.0, &proof).is_err()
            );
            prop_assert!(
                verify_consistency(m, n, &r1.0, &flipped(&r2, seed).0, &proof).is_err()
            );
            if !proof.is_empty() {
                let k = (seed % proof.len() as u64) as usize;
                let mut bad = proof.clone();
                bad[k] = flipped(&bad[k], seed / 7);
                prop_assert!(verify_consistency(m, n, &r1.0, &r2.0, &bad).is_err());
            }
        }
    }
}
