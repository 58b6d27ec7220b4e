//! Portable evidence: `c2sp.org/tlog-proof@v1` inclusion proofs and append
//! receipts.
//!
//! This module owns the text formats of proofs and receipts and their offline
//! verification. It must not read the log's files: everything it checks is
//! handed to it.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::merkle::{Hash, MemoryTree, inclusion_proof, leaf_hash, verify_inclusion};
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
        let bad = |m: &str| AuditError::Evidence(format!("malformed tlog-proof: {m}"));
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
        self.verify_leaf(&leaf_hash(entry), verifier, origin)
    }

    /// Verifies the checkpoint's signature and that the entry whose RFC 6962 leaf hash is
    /// `leaf` (a receipt's) is at the proof's index in it. Returns the checkpoint.
    pub fn verify_leaf(
        &self,
        leaf: &Hash,
        verifier: &NoteVerifier,
        origin: Option<&str>,
    ) -> Result<Checkpoint> {
        let cp = Checkpoint::open(self.checkpoint.as_bytes(), verifier, origin)?;
        verify_inclusion(self.index, cp.size, leaf, &self.path, &cp.root)?;
        Ok(cp)
    }
}

/// A receipt: the log's signed statement that an entry was durably appended.
///
/// The log signs once per group commit, not once per entry: the signed note
/// (first line [`RECEIPT_HEADER`]) states the group's first index, its entry
/// count, the RFC 6962 root of the group's leaf hashes and the time the group
/// became durable; the receipt adds the entry's index, leaf hash and audit
/// path inside the group. Its text form is
///
/// ```text
/// passerelle.audit.receipt.v1
/// index <n>
/// leaf <base64 leaf hash>
/// <base64 path hash, one a line>
///
/// <signed group note>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The log's origin.
    pub origin: String,
    /// The entry's index.
    pub index: u64,
    /// The RFC 6962 leaf hash of the entry.
    pub leaf_hash: Hash,
    /// When the entry's group became durable, RFC 3339 UTC.
    pub time: String,
    /// The index of the first entry of the group.
    pub first: u64,
    /// The number of entries in the group.
    pub count: u64,
    /// The audit path of the entry within the group's tree.
    pub path: Vec<Hash>,
    /// The signed group note.
    pub signed: String,
}

fn group_body(origin: &str, first: u64, count: u64, root: &Hash, time: &str) -> String {
    format!(
        "{RECEIPT_HEADER}\n{origin}\nfirst {first}\ncount {count}\nroot {}\ntime {time}\n",
        root.to_base64()
    )
}

fn number(line: &str, key: &str) -> Option<u64> {
    let v = line.strip_prefix(key)?.strip_prefix(' ')?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0'))
    {
        return None;
    }
    v.parse().ok()
}

impl Receipt {
    /// Issues the receipts of a group of consecutive entries starting at
    /// `first`, with one signature by the log's key.
    pub fn issue_group(
        signer: &NoteSigner,
        origin: &str,
        first: u64,
        leaves: &[Hash],
        time: &str,
    ) -> Result<Vec<Receipt>> {
        let mut tree = MemoryTree::new();
        for h in leaves {
            tree.push(*h);
        }
        let count = leaves.len() as u64;
        let root = tree.root(count)?;
        let signed = signer.sign_note(&group_body(origin, first, count, &root, time))?;
        let mut out = Vec::with_capacity(leaves.len());
        for (i, leaf) in leaves.iter().enumerate() {
            out.push(Receipt {
                origin: origin.to_owned(),
                index: first + i as u64,
                leaf_hash: *leaf,
                time: time.to_owned(),
                first,
                count,
                path: inclusion_proof(&tree, i as u64, count)?,
                signed: signed.clone(),
            });
        }
        Ok(out)
    }

    /// Issues the receipt of a single entry.
    pub fn issue(
        signer: &NoteSigner,
        origin: &str,
        index: u64,
        leaf: Hash,
        time: &str,
    ) -> Result<Receipt> {
        let mut r = Self::issue_group(signer, origin, index, &[leaf], time)?;
        r.pop()
            .ok_or_else(|| AuditError::Corrupt("no receipt".into()))
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{RECEIPT_HEADER}\nindex {}\nleaf {}\n",
            self.index,
            self.leaf_hash.to_base64()
        );
        for h in &self.path {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.signed);
        s
    }

    /// Parses a receipt's text form and verifies it: the group note's
    /// signature, and the entry's path to the group root.
    pub fn verify(text: &str, verifier: &NoteVerifier) -> Result<Receipt> {
        let bad = |m: &str| AuditError::Evidence(format!("malformed receipt: {m}"));
        let (head, signed) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no group note"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(RECEIPT_HEADER) {
            return Err(bad("header"));
        }
        let index = lines
            .next()
            .and_then(|l| number(l, "index"))
            .ok_or_else(|| bad("index"))?;
        let leaf_hash = lines
            .next()
            .and_then(|l| l.strip_prefix("leaf "))
            .and_then(Hash::from_base64)
            .ok_or_else(|| bad("leaf"))?;
        let path = lines
            .take(64)
            .map(|l| Hash::from_base64(l).ok_or_else(|| bad("path")))
            .collect::<Result<Vec<_>>>()?;
        let body = Note::open(signed.as_bytes(), verifier)?;
        let g: Vec<&str> = body.trim_end_matches('\n').split('\n').collect();
        let [header, origin, first, count, root, time] = g.as_slice() else {
            return Err(bad("group note"));
        };
        if *header != RECEIPT_HEADER {
            return Err(bad("group note header"));
        }
        // The log names its key after its origin: a group note of the key under another
        // origin is not the log's.
        if *origin != verifier.name() {
            return Err(bad("group note origin is not the key's name"));
        }
        let first = number(first, "first").ok_or_else(|| bad("first"))?;
        let count = number(count, "count").ok_or_else(|| bad("count"))?;
        let root = root
            .strip_prefix("root ")
            .and_then(Hash::from_base64)
            .ok_or_else(|| bad("root"))?;
        let time = time
            .strip_prefix("time ")
            .ok_or_else(|| bad("time"))?
            .to_owned();
        let pos = index
            .checked_sub(first)
            .filter(|p| *p < count)
            .ok_or_else(|| bad("index outside the group"))?;
        verify_inclusion(pos, count, &leaf_hash, &path, &root)?;
        Ok(Receipt {
            origin: (*origin).to_owned(),
            index,
            leaf_hash,
            time,
            first,
            count,
            path,
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
        let leaves: Vec<Hash> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
        let rs = Receipt::issue_group(&s, "example.org/log", 40, &leaves, "2026-01-01T00:00:00Z")
            .unwrap();
        for r in &rs {
            assert_eq!(Receipt::verify(&r.to_text(), s.verifier()).unwrap(), *r);
            assert!(Checkpoint::open(r.signed.as_bytes(), s.verifier(), None).is_err());
        }
        // Another entry's leaf, or another index, does not verify.
        let forged = rs[1]
            .to_text()
            .replace(&rs[1].leaf_hash.to_base64(), &rs[2].leaf_hash.to_base64());
        assert!(Receipt::verify(&forged, s.verifier()).is_err());
        let moved = rs[1].to_text().replacen("index 41", "index 42", 1);
        assert!(Receipt::verify(&moved, s.verifier()).is_err());
        // A group the key signed under another origin is not the log's.
        let elsewhere =
            Receipt::issue_group(&s, "example.org/other", 40, &leaves, "2026-01-01T00:00:00Z")
                .unwrap();
        let refused = Receipt::verify(&elsewhere[0].to_text(), s.verifier()).unwrap_err();
        assert!(refused.to_string().contains("origin"), "{refused}");
    }
}
