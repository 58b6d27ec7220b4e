//! Bounded reads of a log folder's files.
//!
//! A log folder an auditor checks may come from anywhere: a file in it far larger than any the
//! log writes (or a link to an endless one, such as `/dev/zero`) must be refused, not read
//! until memory runs out. This module owns the largest size of each kind of file and the read
//! that stops one byte past it.

use std::io::Read;
use std::path::Path;

/// The largest checkpoint (a signed note: a few lines and its signatures).
pub const MAX_CHECKPOINT: u64 = 64 << 10;

/// The largest hash tile: 256 hashes of 32 bytes.
pub const MAX_TILE: u64 = 256 * 32;

/// The largest entry bundle: 256 entries of at most 65,535 bytes, each with its 2-byte length.
pub const MAX_ENTRY_BUNDLE: u64 = 256 * (2 + 65_535);

/// The largest key file or metadata file (`index.key`, `log.json`, a verifier key).
pub const MAX_SMALL_FILE: u64 = 64 << 10;

/// Reads the file at `path`, refusing one larger than `limit` bytes with an error of kind
/// [`std::io::ErrorKind::InvalidData`] that says so.
pub fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than any such file of the log ({limit} bytes)"),
        ));
    }
    Ok(data)
}

/// [`read_at_most`], as text.
pub fn read_text_at_most(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_at_most(path, limit)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_after_its_limit() {
        let refused = read_at_most(Path::new("/dev/zero"), MAX_TILE).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        assert!(refused.to_string().contains("8192 bytes"), "{refused}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tile");
        std::fs::write(&path, vec![7u8; MAX_TILE as usize]).unwrap();
        assert_eq!(read_at_most(&path, MAX_TILE).unwrap().len(), 8192);
    }
}
