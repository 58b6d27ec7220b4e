//! Private key material of the log: the index key and the per-case keys, and
//! the sealing (AEAD) of payloads under a case's data key.
//!
//! This module owns the files under `private/keys/` and the erasure of a
//! case's keys. It must never write key material anywhere else, log it, or
//! let it reach the public folder.
//!
//! `cases.keys` is a sequence of fixed 128-byte records:
//! `tag (32) || commitment key (32) || data key (32) || SHA-256 of the first 96 bytes (32)`.
//! The tag is `HMAC-SHA-256(index key, 0x01 || 0x00 || case id)` (the [`TagKind::Case`]
//! byte, then the id normalised as [`IndexKey::tag`] does), so the file never names a case.
//! Erasure overwrites the last 96 bytes of the record with zeros in place and syncs the file.

use super::error::{AuditError, Result};
use crate::durable_folders::Readers;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::Mac;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const RECORD: usize = 128;

/// A 32-byte keyed-hash tag naming a searchable value without revealing it.
pub type Tag = [u8; 32];

/// What a search tag is computed over; each kind has its own domain byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// A case id.
    Case = 1,
    /// A laissez-passer number.
    Lpc = 2,
    /// A booking reference.
    Pnr = 3,
    /// A flight (carrier, number, date).
    Flight = 4,
    /// A partner's own message reference.
    PartnerRef = 5,
    /// A police PV number (an exit authorisation's, or a border exit record's).
    Pv = 6,
    /// An IOM case number.
    IomCase = 7,
}

/// The log-wide key that turns searchable values into tags.
#[derive(Clone)]
pub struct IndexKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

/// Normalises a searchable value: surrounding spaces removed, ASCII upper case.
pub fn normalise(value: &str) -> String {
    value.trim().to_ascii_uppercase()
}

impl IndexKey {
    /// Loads the index key from `path`, or creates it (durably) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match super::files::read_text_at_most(path, super::files::MAX_SMALL_FILE) {
            Ok(text) => {
                let bytes = Zeroizing::new(
                    hex::decode(text.trim())
                        .map_err(|_| AuditError::Corrupt("index key is not hex".into()))?,
                );
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| AuditError::Corrupt("index key is not 32 bytes".into()))?;
                Ok(IndexKey(Zeroizing::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(key.as_mut()).map_err(|_| AuditError::Crypto("no randomness"))?;
                write_durably(path, hex::encode(key.as_ref()).as_bytes(), Readers::Owner)?;
                Ok(IndexKey(key))
            }
            Err(e) => Err(AuditError::io(path, e)),
        }
    }

    /// Loads an existing index key (offline tools never create one).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(AuditError::io(path, std::io::ErrorKind::NotFound.into()));
        }
        Self::load_or_create(path)
    }

    /// The tag of a searchable value of the given kind.
    pub fn tag(&self, kind: TagKind, value: &str) -> Tag {
        let mut mac = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.0.as_ref())
            .expect("HMAC accepts keys of any length");
        mac.update(&[kind as u8, 0]);
        mac.update(normalise(value).as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Writes a small file whole, durably, for `readers` (see
/// [`crate::durable_folders::replace_file`]).
pub fn write_durably(path: &Path, data: &[u8], readers: Readers) -> Result<()> {
    crate::durable_folders::replace_file(path, data, readers).map_err(|e| AuditError::io(path, e))
}

/// Syncs a folder so that renames and new files in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    crate::durable_folders::sync_folder(dir).map_err(|e| AuditError::io(dir, e))
}

/// The sync of keys written to the key file (see [`KeyStore::unsynced`]).
pub struct KeySync {
    file: File,
    path: PathBuf,
}

impl KeySync {
    /// Syncs the key file's data to disk.
    pub fn sync(self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| AuditError::io(&self.path, e))
    }
}

/// The two keys of one case.
#[derive(Clone)]
pub struct CaseKeys {
    /// The HMAC key of the case's commitments.
    pub commit: Zeroizing<[u8; 32]>,
    /// The AEAD key of the case's sealed payloads.
    pub data: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for CaseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaseKeys(..)")
    }
}

enum Slot {
    Live { offset: u64, keys: CaseKeys },
    Erased,
}

/// A last record of the key store that does not check.
#[derive(Debug, Clone, Copy)]
struct DamagedTail {
    /// The tag it names, when its tag bytes are there (they may be damaged too).
    tag: Option<Tag>,
    /// Whether it has all its bytes.
    whole: bool,
}

/// The per-case key store.
pub struct KeyStore {
    path: PathBuf,
    file: File,
    len: u64,
    slots: HashMap<Tag, Slot>,
    dirty: bool,
    /// A last record that does not check, found at open and not yet cut off (see
    /// [`KeyStore::cut_damaged_tail`]).
    damaged_tail: Option<DamagedTail>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("cases", &self.slots.len())
            .finish()
    }
}

fn check(record: &[u8]) -> [u8; 32] {
    Sha256::digest(&record[..96]).into()
}

impl KeyStore {
    /// Opens (or creates) the key store at `path`. A last record that does not check (torn
    /// by a crash before it was synced) is left out; [`KeyStore::cut_damaged_tail`] decides
    /// whether it may be cut off.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let io = |e| AuditError::io(path, e);
        let created = writable && !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .create(writable)
            .open(path)
            .map_err(io)?;
        if created {
            // The file's name must outlast a power cut, as the keys written into it do.
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let mut slots = HashMap::new();
        let mut len = 0u64;
        let mut damaged_tail = None;
        let records: Vec<&[u8]> = data.chunks(RECORD).collect();
        for (i, rec) in records.iter().enumerate() {
            let last = i + 1 == records.len();
            let whole_tag: Option<Tag> = rec.get(..32).and_then(|t| t.try_into().ok());
            let tag: Tag = match whole_tag {
                Some(t) if rec.len() == RECORD => t,
                _ if last => {
                    damaged_tail = Some(DamagedTail {
                        tag: whole_tag,
                        whole: false,
                    });
                    break;
                }
                _ => return Err(AuditError::Corrupt("key store record torn".into())),
            };
            let slot = if rec[32..].iter().all(|&b| b == 0) {
                Slot::Erased
            } else if check(rec) == rec[96..] {
                let mut commit = Zeroizing::new([0u8; 32]);
                let mut dkey = Zeroizing::new([0u8; 32]);
                commit.copy_from_slice(&rec[32..64]);
                dkey.copy_from_slice(&rec[64..96]);
                Slot::Live {
                    offset: len,
                    keys: CaseKeys { commit, data: dkey },
                }
            } else if last {
                damaged_tail = Some(DamagedTail {
                    tag: Some(tag),
                    whole: true,
                });
                break;
            } else {
                return Err(AuditError::Corrupt(format!(
                    "key store record {i} is damaged"
                )));
            };
            slots.insert(tag, slot);
            len += RECORD as u64;
        }
        if len == data.len() as u64 {
            damaged_tail = None;
        }
        Ok(KeyStore {
            path: path.to_owned(),
            file,
            len,
            slots,
            dirty: false,
            damaged_tail,
        })
    }

    /// Cuts off a last record that does not check, found at open: one a crash cut short.
    ///
    /// A crash can tear only a record that was never synced, and new keys are synced before
    /// any entry made under them is written; a crash leaves such a record short (the file
    /// grows only once its bytes are written). A record with all its bytes that does not check,
    /// or one whose case `in_journal` says has entries, is damage on the disk instead: cut off,
    /// its keys would be made anew, with other commitments, and the case's sealed payloads
    /// could never be opened. The store is refused then, to be restored from a backup.
    pub fn cut_damaged_tail(&mut self, in_journal: impl Fn(&Tag) -> bool) -> Result<()> {
        let Some(tail) = self.damaged_tail else {
            return Ok(());
        };
        if tail.whole || tail.tag.as_ref().is_some_and(in_journal) {
            return Err(AuditError::Corrupt(format!(
                "the last record of {} is damaged on the disk (not cut short by a crash): the \
                 keys of a case would be lost; restore the file from a backup of private/keys",
                self.path.display()
            )));
        }
        let io = |e| AuditError::io(&self.path, e);
        self.file.set_len(self.len).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.damaged_tail = None;
        Ok(())
    }

    /// The keys of a case, if it has some.
    pub fn get(&self, tag: &Tag) -> Result<CaseKeys> {
        match self.slots.get(tag) {
            Some(Slot::Live { keys, .. }) => Ok(keys.clone()),
            Some(Slot::Erased) => Err(AuditError::CaseErased),
            None => Err(AuditError::UnknownCase),
        }
    }

    /// Whether the case was erased.
    pub fn is_erased(&self, tag: &Tag) -> bool {
        matches!(self.slots.get(tag), Some(Slot::Erased))
    }

    /// How many cases were erased.
    pub fn erased(&self) -> u64 {
        self.slots
            .values()
            .filter(|slot| matches!(slot, Slot::Erased))
            .count() as u64
    }

    /// The keys of a case, created if needed. New keys are written but not
    /// synced: [`KeyStore::sync`] must run before anything that uses them is
    /// acknowledged (the writer does it in the same group commit).
    pub fn get_or_create(&mut self, tag: &Tag) -> Result<CaseKeys> {
        match self.get(tag) {
            Err(AuditError::UnknownCase) => {}
            other => return other,
        }
        let mut rec = Zeroizing::new([0u8; RECORD]);
        rec[..32].copy_from_slice(tag);
        getrandom::fill(&mut rec[32..96]).map_err(|_| AuditError::Crypto("no randomness"))?;
        let c = check(rec.as_ref());
        rec[96..].copy_from_slice(&c);
        self.file
            .write_all_at(rec.as_ref(), self.len)
            .map_err(|e| AuditError::io(&self.path, e))?;
        let mut commit = Zeroizing::new([0u8; 32]);
        let mut data = Zeroizing::new([0u8; 32]);
        commit.copy_from_slice(&rec[32..64]);
        data.copy_from_slice(&rec[64..96]);
        let keys = CaseKeys { commit, data };
        self.slots.insert(
            *tag,
            Slot::Live {
                offset: self.len,
                keys: keys.clone(),
            },
        );
        self.len += RECORD as u64;
        self.dirty = true;
        Ok(keys)
    }

    /// What syncing the keys created since the last sync takes, to be done without holding
    /// the store (and so its lock): `None` when there are none. The keys count as synced from
    /// here on; a failure of the sync must stop whatever relies on them (the writer fails the
    /// log).
    pub fn unsynced(&mut self) -> Result<Option<KeySync>> {
        if !self.dirty {
            return Ok(None);
        }
        let file = self
            .file
            .try_clone()
            .map_err(|e| AuditError::io(&self.path, e))?;
        self.dirty = false;
        Ok(Some(KeySync {
            file,
            path: self.path.clone(),
        }))
    }

    /// Syncs new keys to disk, if any were created since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| AuditError::io(&self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether the file holds no record at all, not even an erased case's.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the file holds live keys for the case of `tag`.
    pub fn is_live(&self, tag: &Tag) -> bool {
        matches!(self.slots.get(tag), Some(Slot::Live { .. }))
    }

    /// Destroys a case's keys: the record's key bytes are overwritten with
    /// zeros in place and the file is synced. Later calls for the case fail
    /// with [`AuditError::CaseErased`].
    pub fn erase(&mut self, tag: &Tag) -> Result<()> {
        let offset = match self.slots.get(tag) {
            Some(Slot::Live { offset, .. }) => Some(*offset),
            Some(Slot::Erased) => return Ok(()),
            None => None,
        };
        let io = |e| AuditError::io(&self.path, e);
        match offset {
            Some(off) => self
                .file
                .write_all_at(&[0u8; RECORD - 32], off + 32)
                .map_err(io)?,
            None => {
                // A tombstone, so that the case cannot be given new keys.
                let mut rec = [0u8; RECORD];
                rec[..32].copy_from_slice(tag);
                self.file.write_all_at(&rec, self.len).map_err(io)?;
                self.len += RECORD as u64;
            }
        }
        self.file.sync_data().map_err(io)?;
        self.slots.insert(*tag, Slot::Erased);
        Ok(())
    }
}

/// A payload sealed under a case's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The case tag (names the key).
    pub case: Tag,
    /// The random 24-byte XChaCha20-Poly1305 nonce.
    pub nonce: [u8; 24],
    /// The ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

/// The personal material of one entry, once opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opened {
    /// The case id.
    pub case_id: String,
    /// The native payload.
    pub native: Option<Vec<u8>>,
    /// The canonical payload.
    pub canonical: Option<Vec<u8>>,
    /// Document numbers.
    pub documents: Vec<String>,
}

fn put(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn take<'a>(data: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (&flag, rest) = data.split_first()?;
    if flag == 0 {
        *data = rest;
        return Some(None);
    }
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let field = rest.get(4..4 + len)?;
    *data = &rest[4 + len..];
    Some(Some(field))
}

impl Opened {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        put(&mut out, Some(self.case_id.as_bytes()));
        put(&mut out, self.native.as_deref());
        put(&mut out, self.canonical.as_deref());
        for d in &self.documents {
            put(&mut out, Some(d.as_bytes()));
        }
        out
    }

    fn decode(mut data: &[u8]) -> Option<Opened> {
        let case_id = String::from_utf8(take(&mut data)??.to_vec()).ok()?;
        let native = take(&mut data)?.map(<[u8]>::to_vec);
        let canonical = take(&mut data)?.map(<[u8]>::to_vec);
        let mut documents = Vec::new();
        while !data.is_empty() {
            documents.push(String::from_utf8(take(&mut data)??.to_vec()).ok()?);
        }
        Some(Opened {
            case_id,
            native,
            canonical,
            documents,
        })
    }
}

/// Seals personal material under the case's data key, bound to the leaf hash.
pub fn seal(keys: &CaseKeys, case: Tag, aad: &[u8], opened: &Opened) -> Result<Sealed> {
    let cipher = XChaCha20Poly1305::new_from_slice(keys.data.as_ref())
        .map_err(|_| AuditError::Crypto("key"))?;
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|_| AuditError::Crypto("no randomness"))?;
    let plain = opened.encode();
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain.as_slice(),
                aad,
            },
        )
        .map_err(|_| AuditError::Crypto("encryption failed"))?;
    Ok(Sealed {
        case,
        nonce,
        ciphertext,
    })
}

/// Opens sealed material with the case's data key.
pub fn unseal(keys: &CaseKeys, aad: &[u8], sealed: &Sealed) -> Result<Opened> {
    let cipher = XChaCha20Poly1305::new_from_slice(keys.data.as_ref())
        .map_err(|_| AuditError::Crypto("key"))?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                &XNonce::from(sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| AuditError::Crypto("sealed payload does not open"))?,
    );
    Opened::decode(&plain).ok_or(AuditError::Crypto("sealed payload is malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_and_erasure_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.keys");
        let tag = [1u8; 32];
        let mut ks = KeyStore::open(&path, true).unwrap();
        let k = ks.get_or_create(&tag).unwrap();
        ks.sync().unwrap();
        let opened = Opened {
            case_id: "RVA-2026-000001".into(),
            native: Some(b"x".to_vec()),
            ..Default::default()
        };
        let sealed = seal(&k, tag, b"aad", &opened).unwrap();
        drop(ks);
        let mut ks = KeyStore::open(&path, true).unwrap();
        let k2 = ks.get(&tag).unwrap();
        assert_eq!(unseal(&k2, b"aad", &sealed).unwrap(), opened);
        assert!(unseal(&k2, b"other", &sealed).is_err());
        assert_eq!(ks.erased(), 0);
        ks.erase(&tag).unwrap();
        assert!(matches!(
            ks.get_or_create(&tag),
            Err(AuditError::CaseErased)
        ));
        drop(ks);
        let raw = std::fs::read(&path).unwrap();
        assert!(
            raw[32..].iter().all(|&b| b == 0),
            "key bytes remain after erasure"
        );
        let ks = KeyStore::open(&path, false).unwrap();
        assert!(ks.is_erased(&tag));
        assert_eq!(ks.erased(), 1);
    }

    #[test]
    fn only_a_last_record_cut_short_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.keys");
        let (first, last) = ([1u8; 32], [2u8; 32]);
        let mut ks = KeyStore::open(&path, true).unwrap();
        ks.get_or_create(&first).unwrap();
        ks.get_or_create(&last).unwrap();
        ks.sync().unwrap();
        drop(ks);
        let written = std::fs::read(&path).unwrap();

        // A whole record damaged (in its keys, or in its tag): damage on the disk, refused
        // whatever the journal holds, and the file left untouched.
        for at in [RECORD + 40, RECORD + 3] {
            let mut damaged = written.clone();
            damaged[at] ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            let mut ks = KeyStore::open(&path, true).unwrap();
            let refused = ks.cut_damaged_tail(|_| false).unwrap_err();
            assert!(refused.to_string().contains("restore"), "{refused}");
            assert_eq!(std::fs::read(&path).unwrap(), damaged);
        }

        // A record cut short whose case has entries: refused too.
        std::fs::write(&path, &written[..RECORD + 60]).unwrap();
        let mut ks = KeyStore::open(&path, true).unwrap();
        assert!(ks.cut_damaged_tail(|tag| *tag == last).is_err());
        drop(ks);

        // Cut short, no entry made under it (a crash tore keys never used): cut off.
        let mut ks = KeyStore::open(&path, true).unwrap();
        ks.cut_damaged_tail(|tag| *tag == first).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        assert!(ks.get(&first).is_ok());
        assert!(matches!(ks.get(&last), Err(AuditError::UnknownCase)));
    }
}
