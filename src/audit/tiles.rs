//! The `c2sp.org/tlog-tiles` layout: tile paths, tile widths, entry bundles,
//! and a [`HashSource`] that reads hashes from tiles on disk.
//!
//! This module owns the mapping between tree coordinates and files in the
//! public folder. It reads tiles but must not write them (the publisher in
//! `publish` does), and it must not trust what it reads: callers that need
//! assurance verify roots against a signed checkpoint.

use super::files::{MAX_TILE, read_at_most};
use super::merkle::{Hash, HashSource, ProofError, root_of};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The tile height: each tile holds up to 256 hashes.
pub const TILE_HEIGHT: u32 = 8;
/// The width of a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// The largest entry an entry bundle can carry (uint16 length prefix).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// Encodes a tile index as zero-padded 3-digit path elements, all but the
/// last prefixed with `x` (1234067 becomes `x001/x234/067`).
pub fn encode_index(mut n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

fn with_width(base: String, width: u64) -> String {
    if width == TILE_WIDTH {
        base
    } else {
        format!("{base}.p/{width}")
    }
}

/// The path, relative to the public folder, of the hash tile at `level` and
/// `index` with `width` hashes (256 for a full tile).
pub fn tile_path(level: u8, index: u64, width: u64) -> String {
    with_width(format!("tile/{level}/{}", encode_index(index)), width)
}

/// The path, relative to the public folder, of the entry bundle `index` with
/// `width` entries (256 for a full bundle).
pub fn entries_path(index: u64, width: u64) -> String {
    with_width(format!("tile/entries/{}", encode_index(index)), width)
}

/// The width of tile `index` at `level` in a tree of `size` entries: 256 for a
/// full tile, 1 to 255 for the rightmost partial tile, 0 when it does not exist.
pub fn tile_width(size: u64, level: u8, index: u64) -> u64 {
    let shift = TILE_HEIGHT * u32::from(level);
    let hashes = if shift >= 64 { 0 } else { size >> shift };
    let full = hashes / TILE_WIDTH;
    if index < full {
        TILE_WIDTH
    } else if index == full {
        hashes % TILE_WIDTH
    } else {
        0
    }
}

/// The number of tile levels that hold at least one hash for a tree of `size`.
pub fn levels(size: u64) -> u8 {
    let mut l = 0u8;
    while l < 8 && (size >> (TILE_HEIGHT * u32::from(l))) > 0 {
        l += 1;
    }
    l
}

/// Why an entry bundle could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry bundle truncated after {parsed} entries")]
pub struct BundleError {
    /// How many entries were read before the damage.
    pub parsed: usize,
}

/// Encodes entries as an entry bundle: each entry prefixed with its length as
/// a big-endian uint16. Entries must be at most [`MAX_ENTRY_LEN`] bytes.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&e[..usize::from(len)]);
    }
    out
}

/// Splits an entry bundle into its entries.
pub fn parse_bundle(mut data: &[u8]) -> Result<Vec<&[u8]>, BundleError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 2 {
            return Err(BundleError { parsed: out.len() });
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        if data.len() < 2 + len {
            return Err(BundleError { parsed: out.len() });
        }
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    Ok(out)
}

/// Splits as much of an entry bundle as is well formed: the entries read, and
/// whether the whole bundle was read.
pub fn parse_bundle_prefix(data: &[u8]) -> (Vec<&[u8]>, bool) {
    match parse_bundle(data) {
        Ok(entries) => (entries, true),
        Err(BundleError { parsed }) => {
            let mut out = Vec::with_capacity(parsed);
            let mut rest = data;
            for _ in 0..parsed {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                out.push(&rest[2..2 + len]);
                rest = &rest[2 + len..];
            }
            (out, false)
        }
    }
}

/// Splits a tile into hashes. Returns `None` if its length is not a multiple of 32.
pub fn parse_tile(data: &[u8]) -> Option<Vec<Hash>> {
    if !data.len().is_multiple_of(Hash::LEN) {
        return None;
    }
    Some(
        data.chunks_exact(Hash::LEN)
            .filter_map(Hash::from_slice)
            .collect(),
    )
}

/// Tiles already read, by (level, index).
type TileCache = Mutex<HashMap<(u8, u64), std::sync::Arc<Vec<Hash>>>>;

/// A [`HashSource`] that reads tiles from a public folder, for a tree of a
/// given size. Tiles are read once and cached.
#[derive(Debug)]
pub struct TileReader {
    root: PathBuf,
    size: u64,
    cache: TileCache,
}

impl TileReader {
    /// A reader of the tiles under `public` for a tree of `size` entries.
    pub fn new(public: &Path, size: u64) -> Self {
        Self {
            root: public.to_owned(),
            size,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tree size this reader serves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads the hashes of tile `index` at `level`, full or partial as the
    /// tree size requires.
    pub fn tile(&self, level: u8, index: u64) -> Result<std::sync::Arc<Vec<Hash>>, ProofError> {
        if let Some(t) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&(level, index)).cloned())
        {
            return Ok(t);
        }
        let width = tile_width(self.size, level, index);
        if width == 0 {
            return Err(ProofError::Source(format!(
                "tile {level}/{index} is beyond the tree"
            )));
        }
        let rel = tile_path(level, index, width);
        let data = match read_at_most(&self.root.join(&rel), MAX_TILE) {
            Ok(d) => d,
            // A partial tile is removed once the full tile exists; the
            // full tile starts with the same hashes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && width < TILE_WIDTH => {
                let full = tile_path(level, index, TILE_WIDTH);
                let mut d = read_at_most(&self.root.join(&full), MAX_TILE)
                    .map_err(|e| ProofError::Source(format!("{rel}: {e}")))?;
                d.truncate(width as usize * Hash::LEN);
                d
            }
            Err(e) => return Err(ProofError::Source(format!("{rel}: {e}"))),
        };
        let hashes = parse_tile(&data)
            .filter(|h| h.len() as u64 == width)
            .ok_or_else(|| ProofError::Source(format!("{rel}: wrong length {}", data.len())))?;
        let hashes = std::sync::Arc::new(hashes);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 4096 {
                c.clear();
            }
            c.insert((level, index), hashes.clone());
        }
        Ok(hashes)
    }
}

impl HashSource for TileReader {
    fn subtree(&self, height: u8, index: u64) -> Result<Hash, ProofError> {
        let level = height / TILE_HEIGHT as u8;
        let r = u32::from(height % TILE_HEIGHT as u8);
        let first = index << r;
        let count = 1u64 << r;
        let tile = self.tile(level, first / TILE_WIDTH)?;
        let off = (first % TILE_WIDTH) as usize;
        let slice = tile
            .get(off..off + count as usize)
            .ok_or_else(|| ProofError::Source(format!("subtree {height}/{index} not in tiles")))?;
        Ok(root_of(slice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_spec() {
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(1000), "x001/000");
        assert_eq!(tile_path(0, 5, 256), "tile/0/005");
        assert_eq!(tile_path(1, 5, 17), "tile/1/005.p/17");
        assert_eq!(entries_path(1234067, 3), "tile/entries/x001/x234/067.p/3");
    }

    #[test]
    fn widths_match_the_spec_example() {
        // A tree of 70,000 entries: 273 full level-0 tiles, a partial of 112,
        // one full level-1 tile, a partial of 17 and a level-2 partial of 1.
        assert_eq!(tile_width(70_000, 0, 272), 256);
        assert_eq!(tile_width(70_000, 0, 273), 112);
        assert_eq!(tile_width(70_000, 1, 0), 256);
        assert_eq!(tile_width(70_000, 1, 1), 17);
        assert_eq!(tile_width(70_000, 2, 0), 1);
        assert_eq!(tile_width(70_000, 3, 0), 0);
        assert_eq!(tile_width(256, 1, 0), 1);
        assert_eq!(levels(70_000), 3);
    }

    #[test]
    fn bundles_round_trip_and_reject_truncation() {
        let b = encode_bundle([b"a".as_slice(), b"".as_slice(), b"xyz".as_slice()]);
        assert_eq!(
            parse_bundle(&b).unwrap(),
            vec![b"a".as_slice(), b"", b"xyz"]
        );
        assert_eq!(
            parse_bundle(&b[..b.len() - 1]),
            Err(BundleError { parsed: 2 })
        );
    }
}
