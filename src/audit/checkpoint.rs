//! Checkpoints (`c2sp.org/tlog-checkpoint`): the signed head of the log.
//!
//! This module owns the checkpoint body (origin, tree size, root hash) and its
//! signing as a signed note. It must not compute roots or touch files.

use super::merkle::Hash;
use super::note::{Note, NoteError, NoteSigner, NoteVerifier};

/// Why a checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note around the checkpoint is malformed or not signed by the trusted key.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The body is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The origin is not the expected one.
    #[error("checkpoint origin {found:?} is not {expected:?}")]
    Origin {
        /// The origin the caller expected.
        expected: String,
        /// The origin found in the checkpoint.
        found: String,
    },
}

/// A tree head: origin, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The RFC 6962 root hash of the first `size` entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: three lines, each ending with a newline. No extension lines.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        )
    }

    /// Parses a checkpoint body (the note text).
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty());
        let size = lines.next();
        let root = lines.next();
        let (Some(origin), Some(size), Some(root)) = (origin, size, root) else {
            return Err(CheckpointError::Malformed("fewer than three lines"));
        };
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(CheckpointError::Malformed("bad tree size"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| CheckpointError::Malformed("bad tree size"))?;
        let root = Hash::from_base64(root).ok_or(CheckpointError::Malformed("bad root hash"))?;
        // Extension lines must be non-empty; the text ends with exactly one newline.
        let rest: Vec<&str> = lines.collect();
        match rest.split_last() {
            Some((last, ext)) if last.is_empty() && ext.iter().all(|l| !l.is_empty()) => {}
            _ => return Err(CheckpointError::Malformed("bad line structure")),
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs the checkpoint and returns the signed note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, CheckpointError> {
        Ok(signer.sign_note(&self.body())?)
    }

    /// Verifies a signed checkpoint against the trusted key and returns it.
    ///
    /// Its origin must be the key's name, as this log names its key (tlog-checkpoint lets the
    /// two differ, but a checkpoint the log's key signed under another origin is not the
    /// log's), and `origin` as well when given.
    pub fn open(
        signed: &[u8],
        verifier: &NoteVerifier,
        origin: Option<&str>,
    ) -> Result<Checkpoint, CheckpointError> {
        let text = Note::open(signed, verifier)?;
        let cp = Checkpoint::parse_body(&text)?;
        for expected in [Some(verifier.name()), origin].into_iter().flatten() {
            if cp.origin != expected {
                return Err(CheckpointError::Origin {
                    expected: expected.to_owned(),
                    found: cp.origin,
                });
            }
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_parsing() {
        let s = NoteSigner::generate("example.org/log").unwrap();
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 42,
            root: Hash([7; 32]),
        };
        let signed = cp.sign(&s).unwrap();
        assert_eq!(
            Checkpoint::open(signed.as_bytes(), s.verifier(), Some("example.org/log")),
            Ok(cp)
        );
        assert!(
            Checkpoint::parse_body("o\n042\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n")
                .is_err()
        );
        assert!(Checkpoint::parse_body("o\n1\nBwcH\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\n").is_err());
    }

    #[test]
    fn a_checkpoint_under_another_origin_than_the_keys_name_is_refused() {
        let s = NoteSigner::generate("example.org/log").unwrap();
        let elsewhere = Checkpoint {
            origin: "example.org/other".into(),
            size: 42,
            root: Hash([7; 32]),
        };
        let signed = s.sign_note(&elsewhere.body()).unwrap();
        for expected in [None, Some("example.org/other")] {
            assert!(matches!(
                Checkpoint::open(signed.as_bytes(), s.verifier(), expected),
                Err(CheckpointError::Origin { .. })
            ));
        }
    }
}
