//! C2SP signed notes (`c2sp.org/signed-note`) with Ed25519 keys.
//!
//! This module owns the note text format, key ids, verifier-key strings and
//! the signer-key file format. It must not know what a note *says*
//! (checkpoints and receipts are parsed elsewhere) and must never log or print
//! private key material.
//!
//! The crate `signed_note` on crates.io implements the same specification, but
//! it pins older major versions of `sha2`, `base64` and `thiserror` than this
//! crate uses, and the format is small enough to implement and test against
//! the specification's own vector here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// The signature type byte of plain Ed25519 signed-note signatures.
pub const ALG_ED25519: u8 = 0x01;

/// The largest note this module will parse, in bytes. Notes written by this
/// crate are a few hundred bytes; the limit bounds the work done on input.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// The most signature lines accepted in one note (the specification asks
/// verifiers to accept at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Why a note, a key or a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The note is not well formed.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A key name is empty or contains a space or `+`.
    #[error("invalid key name")]
    KeyName,
    /// A verifier or signer key string is not well formed.
    #[error("malformed key: {0}")]
    Key(&'static str),
    /// No signature from the trusted key is present.
    #[error("note is not signed by {0}")]
    Unsigned(String),
    /// A signature from the trusted key does not verify.
    #[error("bad signature by {0}")]
    BadSignature(String),
}

/// Checks the key-name rules: non-empty, no Unicode space and no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key id recommended by the specification:
/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]`, big-endian.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A trusted Ed25519 note verifier: a key name and public key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_verifier_key())
    }
}

impl NoteVerifier {
    /// Builds a verifier from a key name and public key.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::KeyName);
        }
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, key.as_bytes()),
            key,
        })
    }

    /// Parses a verifier key string `name+hex(key id)+base64(0x01 || key)`.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected name+id+key"));
        };
        if !is_valid_key_name(name) {
            return Err(NoteError::KeyName);
        }
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NoteError::Key("key id must be 8 hex digits"));
        }
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| NoteError::Key("bad key id"))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| NoteError::Key("bad base64"))?;
        let (&alg, public) = raw.split_first().ok_or(NoteError::Key("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::Key("unsupported signature type"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::Key("Ed25519 keys are 32 bytes"))?;
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("bad Ed25519 key"))?;
        if key_id(name, &public) != id {
            return Err(NoteError::Key("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The verifier key string `name+hex(key id)+base64(0x01 || key)`.
    pub fn to_verifier_key(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Verifies a signature made by [`NoteSigner::sign_bytes`] over `msg`.
    pub fn verify_bytes(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }
}

/// An Ed25519 note signer: a key name and private key.
///
/// Key files hold one line in the same format as Go's `sumdb/note` signer
/// keys: `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte seed)>`.
pub struct NoteSigner {
    verifier: NoteVerifier,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Builds a signer from a key name and a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let key = SigningKey::from_bytes(seed);
        let verifier = NoteVerifier::new(name, key.verifying_key())?;
        Ok(Self { verifier, key })
    }

    /// Generates a fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|_| NoteError::Key("no randomness available"))?;
        Self::from_seed(name, &seed)
    }

    /// Parses a signer key string (see the type documentation).
    pub fn parse(skey: &str) -> Result<Self, NoteError> {
        let rest = skey
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("expected PRIVATE+KEY+ prefix"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected name+id+key"));
        };
        let raw = Zeroizing::new(
            B64.decode(key_b64)
                .map_err(|_| NoteError::Key("bad base64"))?,
        );
        let (&alg, seed) = raw.split_first().ok_or(NoteError::Key("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::Key("unsupported signature type"));
        }
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::Key("Ed25519 seeds are 32 bytes"))?;
        let signer = Self::from_seed(name, seed)?;
        if format!("{:08x}", signer.verifier.id) != id_hex.to_ascii_lowercase() {
            return Err(NoteError::Key("key id does not match the key"));
        }
        Ok(signer)
    }

    /// The signer key string. Treat it as a secret.
    pub fn to_signer_key(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(vec![ALG_ED25519]);
        raw.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.verifier.name,
            self.verifier.id,
            B64.encode(raw.as_slice())
        ))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Signs raw bytes (used for domain-separated messages such as receipts).
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Signs a note text (which must end in a newline and obey the note
    /// rules) and returns the complete signed note.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.sign_bytes(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.verifier.id.to_be_bytes());
        blob.extend_from_slice(&sig);
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.verifier.name,
            B64.encode(blob)
        ))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end with a newline"));
    }
    if text.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::Malformed("control character"));
    }
    Ok(())
}

/// One parsed (not yet verified) signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name on the line.
    pub name: String,
    /// The key id (first four bytes of the blob).
    pub id: u32,
    /// The signature bytes after the key id.
    pub sig: Vec<u8>,
}

/// A parsed signed note: the text (with its final newline) and the signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, including its final newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note without verifying it.
    pub fn parse(msg: &[u8]) -> Result<Note, NoteError> {
        if msg.len() > MAX_NOTE_LEN {
            return Err(NoteError::Malformed("note too large"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not UTF-8"))?;
        if msg.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(NoteError::Malformed("control character"));
        }
        let split = msg
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no signature block"))?;
        let text = &msg[..split + 1];
        let sigs = &msg[split + 2..];
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline",
            ));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Malformed("bad signature line"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("bad signature line"))?;
            if !is_valid_key_name(name) {
                return Err(NoteError::KeyName);
            }
            let blob = B64
                .decode(b64)
                .map_err(|_| NoteError::Malformed("bad signature base64"))?;
            if blob.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                id: u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]),
                sig: blob[4..].to_vec(),
            });
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Parses a note and verifies it against one trusted key: signatures by
    /// unknown keys are ignored, a bad signature by the trusted key rejects
    /// the note, and at least one good one is required. Returns the text.
    pub fn open(msg: &[u8], verifier: &NoteVerifier) -> Result<String, NoteError> {
        let note = Note::parse(msg)?;
        let mut good = false;
        for s in &note.signatures {
            if s.name != verifier.name || s.id != verifier.id {
                continue;
            }
            let sig: &[u8; 64] = s
                .sig
                .as_slice()
                .try_into()
                .map_err(|_| NoteError::BadSignature(verifier.name.clone()))?;
            if !verifier.verify_bytes(note.text.as_bytes(), sig) {
                return Err(NoteError::BadSignature(verifier.name.clone()));
            }
            good = true;
        }
        if good {
            return Ok(note.text);
        }
        // Say whose signatures the note does carry: another key of the same name is most often
        // a key given for the wrong log, or a log whose key was replaced.
        let signers: Vec<String> = note
            .signatures
            .iter()
            .map(|s| format!("{}+{:08x}", s.name, s.id))
            .collect();
        let found = if signers.is_empty() {
            "it carries no signature".to_owned()
        } else {
            format!("it is signed by {} only", signers.join(", "))
        };
        Err(NoteError::Unsigned(format!(
            "{}+{:08x} ({found})",
            verifier.name, verifier.id
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_key_round_trips_and_signs_verifiable_notes() {
        let s = NoteSigner::generate("example.org/log").unwrap();
        let parsed = NoteSigner::parse(&s.to_signer_key()).unwrap();
        assert_eq!(parsed.verifier(), s.verifier());
        let v = NoteVerifier::parse(&s.verifier().to_verifier_key()).unwrap();
        let note = s.sign_note("hello\nworld\n").unwrap();
        assert_eq!(Note::open(note.as_bytes(), &v).unwrap(), "hello\nworld\n");
        let tampered = note.replace("world", "wor1d");
        assert!(matches!(
            Note::open(tampered.as_bytes(), &v),
            Err(NoteError::BadSignature(_))
        ));
        let other = NoteSigner::generate("example.org/log").unwrap();
        let refused = Note::open(note.as_bytes(), other.verifier()).unwrap_err();
        assert!(matches!(refused, NoteError::Unsigned(_)));
        // Both key ids are named: the one asked for, and the one the note is signed by.
        let id = |key: &NoteVerifier| key.to_verifier_key().split('+').nth(1).unwrap().to_owned();
        let said = refused.to_string();
        assert!(
            said.contains(&format!(
                "not signed by example.org/log+{}",
                id(other.verifier())
            )) && said.contains(&format!("signed by example.org/log+{} only", id(&v))),
            "{said}"
        );
    }

    #[test]
    fn rejects_bad_key_names_and_control_characters() {
        assert!(NoteSigner::generate("a b").is_err());
        assert!(NoteSigner::generate("a+b").is_err());
        let s = NoteSigner::generate("x").unwrap();
        assert!(s.sign_note("a\tb\n").is_err());
        assert!(s.sign_note("no newline").is_err());
    }
}
