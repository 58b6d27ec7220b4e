//! Portable evidence: `c2sp.org/tlog-proof@v1` inclusion proofs and append
//! receipts.
//!
//! This module owns the text formats of proofs and receipts and their offline
//! verification. It must not read the log's files: everything it checks is
//! handed to it.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::merkle::{Hash, leaf_hash, verify_inclusion};
use super::note::{Note, NoteSigner, NoteVerifier};

/// The first line of a tlog-proof.
pub const PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// The first line of a receipt note.
pub const RECEIPT_HEADER: &str = "passerelle.audit.receipt.v1";

/// An inclusion proof of one entry in a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// The entry's index.
    pub index: u64,
    /// The RFC 6962 audit path, from the leaf's sibling up.
    pub path: Vec<Hash>,
    /// The signed checkpoint, verbatim.
    pub checkpoint: String,
}

impl TlogProof {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = format!("{PROOF_HEADER}\nindex {}\n", self.index);
        for h in &self.path {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    /// Parses the text form (an `extra` line, if present, is ignored: it is not authenticated).
    pub fn parse(text: &str) -> Result<TlogProof> {
        let bad = |m: &str| AuditError::Corrupt(format!("malformed tlog-proof: {m}"));
        let rest = text
            .strip_prefix(PROOF_HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| bad("header"))?;
        let rest = match rest.strip_prefix("extra ") {
            Some(r) => r.split_once('\n').ok_or_else(|| bad("extra"))?.1,
            None => rest,
        };
        let (line, mut rest) = rest.split_once('\n').ok_or_else(|| bad("index"))?;
        let idx = line.strip_prefix("index ").ok_or_else(|| bad("index"))?;
        if idx.is_empty()
            || !idx.bytes().all(|b| b.is_ascii_digit())
            || (idx.len() > 1 && idx.starts_with('0'))
        {
            return Err(bad("index"));
        }
        let index = idx.parse().map_err(|_| bad("index"))?;
        let mut path = Vec::new();
        loop {
            let (line, r) = rest.split_once('\n').ok_or_else(|| bad("proof"))?;
            rest = r;
            if line.is_empty() {
                break;
            }
            if path.len() == 64 {
                return Err(bad("proof too long"));
            }
            path.push(Hash::from_base64(line).ok_or_else(|| bad("proof hash"))?);
        }
        Ok(TlogProof {
            index,
            path,
            checkpoint: rest.to_owned(),
        })
    }

    /// Verifies the checkpoint's signature and that `entry` is at the proof's
    /// index in it. Returns the checkpoint.
    pub fn verify(
        &self,
        entry: &[u8],
        verifier: &NoteVerifier,
        origin: Option<&str>,
    ) -> Result<Checkpoint> {
        let cp = Checkpoint::open(self.checkpoint.as_bytes(), verifier, origin)?;
        verify_inclusion(self.index, cp.size, &leaf_hash(entry), &self.path, &cp.root)?;
        Ok(cp)
    }
}

/// A receipt: the log's signed statement that an entry was durably appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The log's origin.
    pub origin: String,
    /// The entry's index.
    pub index: u64,
    /// The RFC 6962 leaf hash of the entry.
    pub leaf_hash: Hash,
    /// When the entry became durable, RFC 3339 UTC.
    pub time: String,
    /// The receipt as a signed note.
    pub signed: String,
}

impl Receipt {
    fn body(origin: &str, index: u64, leaf: &Hash, time: &str) -> String {
        format!(
            "{RECEIPT_HEADER}\n{origin}\nindex {index}\nleaf {}\ntime {time}\n",
            leaf.to_base64()
        )
    }

    /// Issues a receipt signed by the log's key.
    pub fn issue(
        signer: &NoteSigner,
        origin: &str,
        index: u64,
        leaf: Hash,
        time: String,
    ) -> Result<Receipt> {
        let signed = signer.sign_note(&Self::body(origin, index, &leaf, &time))?;
        Ok(Receipt {
            origin: origin.to_owned(),
            index,
            leaf_hash: leaf,
            time,
            signed,
        })
    }

    /// Verifies a signed receipt and returns it.
    pub fn verify(signed: &str, verifier: &NoteVerifier) -> Result<Receipt> {
        let text = Note::open(signed.as_bytes(), verifier)?;
        let bad = || AuditError::Corrupt("malformed receipt".into());
        let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        let [header, origin, index, leaf, time] = lines.as_slice() else {
            return Err(bad());
        };
        if *header != RECEIPT_HEADER {
            return Err(bad());
        }
        let index = index
            .strip_prefix("index ")
            .and_then(|i| i.parse().ok())
            .ok_or_else(bad)?;
        let leaf_hash = leaf
            .strip_prefix("leaf ")
            .and_then(Hash::from_base64)
            .ok_or_else(bad)?;
        let time = time.strip_prefix("time ").ok_or_else(bad)?.to_owned();
        Ok(Receipt {
            origin: (*origin).to_owned(),
            index,
            leaf_hash,
            time,
            signed: signed.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{MemoryTree, inclusion_proof};

    #[test]
    fn proof_text_round_trips_and_verifies() {
        let s = NoteSigner::generate("example.org/log").unwrap();
        let mut t = MemoryTree::new();
        for i in 0..5u8 {
            t.push(leaf_hash(&[i]));
        }
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 5,
            root: t.root(5).unwrap(),
        };
        let p = TlogProof {
            index: 3,
            path: inclusion_proof(&t, 3, 5).unwrap(),
            checkpoint: cp.sign(&s).unwrap(),
        };
        let parsed = TlogProof::parse(&p.to_text()).unwrap();
        assert_eq!(parsed, p);
        assert!(
            parsed
                .verify(&[3], s.verifier(), Some("example.org/log"))
                .is_ok()
        );
        assert!(parsed.verify(&[4], s.verifier(), None).is_err());
    }

    #[test]
    fn receipts_verify_and_are_not_checkpoints() {
        let s = NoteSigner::generate("example.org/log").unwrap();
        let r = Receipt::issue(
            &s,
            "example.org/log",
            7,
            Hash([1; 32]),
            "2026-01-01T00:00:00Z".into(),
        )
        .unwrap();
        assert_eq!(Receipt::verify(&r.signed, s.verifier()).unwrap(), r);
        assert!(Checkpoint::open(r.signed.as_bytes(), s.verifier(), None).is_err());
    }
}
