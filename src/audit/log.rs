//! The live audit log: open and recover, append with group commit, publish
//! checkpoints on a cadence, issue receipts and proofs, search, and erase.
//!
//! This module owns the writer and publisher threads and the recovery rules.
//! Callers prepare their own leaves (hashing, commitments, sealing) on their
//! own threads; the writer thread only frames, writes and syncs, once per
//! group, and acknowledges a group only after it is durable. The publisher
//! thread turns durable entries into tiles and a signed checkpoint at most
//! one checkpoint interval later. Nothing here may block an async worker:
//! [`AuditLog::append_async`] awaits a channel, never a file.

use super::checkpoint::Checkpoint;
use super::error::{AuditError, Result};
use super::journal::{self, JournalWriter, Record};
use super::keys::{IndexKey, KeyStore, KeySync, Opened, Tag, TagKind, seal, unseal, write_durably};
use super::leaf::{Commitments, Fact, Kind, Leaf};
use super::merkle::{Hash, inclusion_proof, leaf_hash};
use super::note::{NoteSigner, NoteVerifier};
use super::proof::{Receipt, TlogProof};
use super::publish::{Edge, publish};
use super::tiles::{TILE_WIDTH, TileReader, entries_path, parse_bundle, tile_width};
use crate::durable_folders::Readers;
use crate::write_queue::{WriteQueue, WriteQueueReceiver, write_queue};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Tuning of a log.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a checkpoint is signed when the log has grown (at most one second).
    pub checkpoint_interval: Duration,
    /// The most appends in one group commit.
    pub max_batch: usize,
    /// How long the writer waits for more appends before committing a group
    /// that is not full. Zero commits whatever is queued at once.
    pub max_delay: Duration,
    /// Size at which a journal segment is closed and a new one started.
    pub segment_bytes: u64,
    /// The most appends waiting for the writer: beyond it, `append` blocks its thread and
    /// `append_async` waits without blocking it.
    pub queue: usize,
    /// How many journal syncs may run at once. Overlapping syncs let one
    /// group be written while earlier ones reach the disk, but each sync costs
    /// CPU in the kernel: with one, every sync covers all that was written
    /// while the previous one ran, so a busy log makes fewer, larger syncs.
    /// On a machine whose cores are shared with the rest of the gateway, one
    /// gave about a third more messages a second through the whole pipeline
    /// than four (`passerelle load`).
    pub sync_threads: usize,
    /// The least time between the starts of two syncs of one sync thread. A sync costs the
    /// kernel about the same CPU however few entries it covers, and each synced group gets a
    /// signature of its own: spacing them out makes fewer, larger groups. It adds up to this
    /// to an append's wait (an acceptance waits for the store's commit meanwhile; a delivery
    /// attempt's record does not), so keep it to a few milliseconds.
    pub sync_spacing: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            checkpoint_interval: Duration::from_millis(500),
            max_batch: 1024,
            max_delay: Duration::ZERO,
            segment_bytes: 64 << 20,
            queue: 8192,
            sync_threads: 1,
            sync_spacing: Duration::from_millis(2),
        }
    }
}

/// The folders of a log: `public/` is served as static files; `private/`
/// holds the journal, the keys and the log's metadata.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The log folder.
    pub root: PathBuf,
    /// `public/`: `checkpoint` and `tile/`.
    pub public: PathBuf,
    /// `private/journal/`.
    pub journal: PathBuf,
    /// `private/keys/`.
    pub keys: PathBuf,
    /// `private/log.json`.
    pub meta: PathBuf,
    /// `private/checkpoint`: a copy of the last signed checkpoint.
    pub last_checkpoint: PathBuf,
}

impl Layout {
    /// The layout of the log folder `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
            public: root.join("public"),
            journal: root.join("private/journal"),
            keys: root.join("private/keys"),
            meta: root.join("private/log.json"),
            last_checkpoint: root.join("private/checkpoint"),
        }
    }
}

/// `private/log.json`: what identifies the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// Format version of the folder (1).
    pub format: u32,
    /// The checkpoint origin.
    pub origin: String,
    /// The verifier key of the log's signing key.
    pub verifier_key: String,
}

impl Meta {
    /// Reads `private/log.json`.
    pub fn load(path: &Path) -> Result<Meta> {
        let data = super::files::read_at_most(path, super::files::MAX_SMALL_FILE)
            .map_err(|e| AuditError::io(path, e))?;
        serde_json::from_slice(&data)
            .map_err(|e| AuditError::Corrupt(format!("{}: {e}", path.display())))
    }
}

/// What an auditor can search by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A case id.
    Case(String),
    /// A laissez-passer number.
    Lpc(String),
    /// A booking reference.
    Pnr(String),
    /// A flight: carrier, number and departure date.
    Flight(super::leaf::Flight),
    /// A partner's own message reference: partner id and reference.
    PartnerRef(String, String),
    /// A police PV number.
    Pv(String),
    /// An IOM case number.
    IomCase(String),
}

/// The normalised text of a flight, as indexed.
pub fn flight_key(f: &super::leaf::Flight) -> String {
    format!(
        "{}|{}|{}",
        f.carrier.trim(),
        f.number.trim().trim_start_matches('0'),
        f.date
    )
}

impl Query {
    /// Whether a trail of this query is widened to every entry of the messages it finds (see
    /// [`MessageName`]): a laissez-passer number, a booking reference or a flight is named by a
    /// message's `accepted` entry only, and its deliveries, acknowledgements and anomalies
    /// belong to the same trail. A case's entries all name the case, and a partner's reference
    /// is the message itself.
    pub fn widens(&self) -> bool {
        matches!(
            self,
            Query::Lpc(_) | Query::Pnr(_) | Query::Flight(_) | Query::Pv(_) | Query::IomCase(_)
        )
    }

    /// The one message a partner reference names: the entries whose leaf names exactly that
    /// sender and id, byte for byte (an id may begin or end with a space, and is compared as
    /// the sender wrote it). Its tag, like the others, is of the normalised (upper-cased,
    /// trimmed) value, so it also finds the entries of a reference that differs only in case,
    /// which is another message: searches keep those that name this one. `None` for the other
    /// queries.
    pub fn message(&self) -> Option<MessageName> {
        match self {
            Query::PartnerRef(partner, reference) => Some(MessageName {
                sender: partner.clone(),
                event_id: reference.clone(),
            }),
            _ => None,
        }
    }

    /// The search tag of the query under the log's index key.
    pub fn tag(&self, key: &IndexKey) -> Tag {
        match self {
            Query::Case(c) => key.tag(TagKind::Case, c),
            Query::Lpc(n) => key.tag(TagKind::Lpc, n),
            Query::Pnr(p) => key.tag(TagKind::Pnr, p),
            Query::Flight(f) => key.tag(TagKind::Flight, &flight_key(f)),
            Query::PartnerRef(p, r) => {
                key.tag(TagKind::PartnerRef, &format!("{}|{}", p.trim(), r.trim()))
            }
            Query::Pv(n) => key.tag(TagKind::Pv, n),
            Query::IomCase(n) => key.tag(TagKind::IomCase, n),
        }
    }
}

/// The message an entry concerns, as its leaf names it: its sender and event id, exactly.
/// A message's acceptance (and the `rejected` entry that voids one), its anomalies, and each
/// of its deliveries' attempts, outcomes and acknowledgements name it; refusals of messages
/// that were never read, summaries and erasures do not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageName {
    /// The sending partner's id.
    pub sender: String,
    /// The event id (the sender's reference).
    pub event_id: String,
}

/// The bytes of an `erased` leaf's kind, looked for before a leaf is decoded in the journal's
/// replay, which reads every entry.
const ERASED_KIND: &[u8] = b"\"erased\"";

impl MessageName {
    /// The message an entry's bytes name, read without decoding the rest of the leaf (the
    /// journal's replay reads every entry).
    pub fn of_entry(entry: &[u8]) -> Option<MessageName> {
        #[derive(Deserialize)]
        struct Names<'a> {
            #[serde(borrow)]
            sender: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            event_id: Option<std::borrow::Cow<'a, str>>,
        }
        let names: Names<'_> = serde_json::from_slice(entry.get(1..)?).ok()?;
        Some(MessageName {
            sender: names.sender?.into_owned(),
            event_id: names.event_id?.into_owned(),
        })
    }

    /// Its search tag: its sender's reference, as [`Query::PartnerRef`]. Every entry that
    /// names the message carries it; entries written by earlier versions carry it on the
    /// acceptance only, and it is derived from the leaf where the journal lacks it.
    pub fn tag(&self, key: &IndexKey) -> Tag {
        Query::PartnerRef(self.sender.clone(), self.event_id.clone()).tag(key)
    }
}

/// One entry found by a search, with its proof against the latest checkpoint.
#[derive(Debug, Clone)]
pub struct Found {
    /// The entry's index.
    pub index: u64,
    /// The entry bytes.
    pub entry: Vec<u8>,
    /// The decoded leaf.
    pub leaf: Leaf,
    /// The inclusion proof against the latest checkpoint.
    pub proof: TlogProof,
}

/// What the sync threads hand back to an appender: its signed receipt.
type Committed = Receipt;

/// An append queued by [`AuditLog::queue_append`].
#[must_use = "the entry is not known to be durable until `durable` answers"]
pub struct QueuedAppend {
    leaf: Hash,
    rx: oneshot::Receiver<Result<Committed>>,
}

impl QueuedAppend {
    /// The RFC 6962 leaf hash the entry will have, known before it is durable.
    pub fn leaf_hash(&self) -> Hash {
        self.leaf
    }

    /// Waits until the entry is durable, and returns its signed receipt.
    pub async fn durable(self) -> Result<Receipt> {
        receipt_for(self.leaf, self.rx.await.map_err(|_| AuditError::Closed)?)
    }
}

/// The receipt of the entry whose leaf hash is `leaf`, from the writer's answer.
fn receipt_for(leaf: Hash, done: Result<Committed>) -> Result<Receipt> {
    let r = done?;
    if r.leaf_hash != leaf {
        return Err(AuditError::Corrupt("receipt for another entry".into()));
    }
    Ok(r)
}

struct Pending {
    record: Record,
    leaf: Hash,
    reply: oneshot::Sender<Result<Committed>>,
}

enum Msg {
    Append(Box<Pending>),
    Publish(oneshot::Sender<Result<()>>),
}

enum PubMsg {
    Batch(Vec<(Vec<u8>, Hash)>),
    Publish(oneshot::Sender<Result<()>>),
}

struct Latest {
    checkpoint: Checkpoint,
    signed: String,
}

struct Shared {
    origin: String,
    signer: NoteSigner,
    layout: Layout,
    index_key: IndexKey,
    keys: Mutex<KeyStore>,
    index: RwLock<HashMap<Tag, Vec<u64>>>,
    latest: Mutex<Latest>,
    published: Condvar,
    failure: Mutex<Option<String>>,
}

impl Shared {
    /// Records the log's first failure, after which it takes no more appends, and says it in
    /// the gateway's log once (the later ones follow from it).
    fn fail(&self, why: String) {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            tracing::error!(
                cause = %why,
                "the audit log failed: it takes no more appends until the gateway is restarted"
            );
            *f = Some(why);
        }
    }
}

/// The audit log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct AuditLog {
    shared: Arc<Shared>,
    tx: Option<WriteQueue<Msg>>,
    threads: Vec<JoinHandle<()>>,
    /// `private/writer.lock`, locked for the log's life (released after the threads stop).
    _writer_lock: std::fs::File,
    /// How many entries the journal held when the log was opened.
    entries_at_open: u64,
    /// The time its last entry then gave, if it held any.
    last_entry_time: Option<chrono::DateTime<Utc>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.shared.origin)
            .field("root", &self.shared.layout.root)
            .finish()
    }
}

/// Takes the log's writer lock (`private/writer.lock`), so that one process at a time writes
/// the journal, the keys and the tiles: a second gateway, or `passerelle audit erase` beside a
/// running one, is refused instead of writing beside it. The kernel releases the lock when the
/// process ends, however it ends.
fn lock_for_writing(layout: &Layout) -> Result<std::fs::File> {
    let path = layout.root.join("private/writer.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::InUse(layout.root.clone())),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::io(&path, e)),
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| AuditError::Closed)
}

impl AuditLog {
    /// Opens the log in folder `dir`, creating it if it does not exist, and
    /// recovers from any crash: the journal's torn tail is cut off, the
    /// public tiles are checked against the last signed checkpoint, and
    /// entries the checkpoint does not cover yet are published again.
    ///
    /// The signer's key name must equal `origin`.
    pub fn open(
        dir: &Path,
        signer: NoteSigner,
        origin: &str,
        options: Options,
    ) -> Result<AuditLog> {
        if signer.verifier().name() != origin {
            return Err(AuditError::InvalidFact(format!(
                "the signing key is named {}, and the log's origin is {origin}: a log's key \
                 bears its origin's name",
                signer.verifier().name()
            )));
        }
        let layout = Layout::new(dir);
        for d in [&layout.public, &layout.journal, &layout.keys] {
            crate::durable_folders::create_folders(d).map_err(|e| AuditError::io(d, e))?;
        }
        let writer_lock = lock_for_writing(&layout)?;
        let meta = Meta {
            format: 1,
            origin: origin.to_owned(),
            verifier_key: signer.verifier().to_verifier_key(),
        };
        // A missing `log.json` is written once the checkpoints found are known to be this
        // key's: a start refused for another key's checkpoints must not leave the folder
        // naming that key as its own.
        let mut meta_missing = false;
        match Meta::load(&layout.meta) {
            Ok(found) if found == meta => {}
            Ok(found) => {
                return Err(AuditError::OtherLog {
                    folder: dir.to_owned(),
                    found_origin: found.origin,
                    found_key: found.verifier_key,
                    origin: meta.origin,
                    key: meta.verifier_key,
                });
            }
            Err(AuditError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                meta_missing = true;
            }
            Err(e) => return Err(e),
        }

        // The last signed checkpoint: the larger of the public one and the
        // private copy (the public file may have been removed or replaced by
        // an older one). The other must be consistent with it.
        let read_cp = |path: &Path| read_signed_checkpoint(path, signer.verifier(), origin);
        let private_cp = read_cp(&layout.last_checkpoint)?;
        // A public checkpoint that cannot be read (damaged, or another key's) is put back from
        // the private copy below, when there is one.
        let public_cp = match read_cp(&layout.public.join("checkpoint")) {
            Err(AuditError::CheckpointFile { .. }) if private_cp.is_some() => None,
            read => read?,
        };
        let (mut older, newer) = match (public_cp, private_cp) {
            (Some(a), Some(b)) if a.0.size >= b.0.size => (Some(b), Some(a)),
            (Some(a), Some(b)) => (Some(a), Some(b)),
            (a, b) => (None, a.or(b)),
        };
        if meta_missing {
            let json =
                serde_json::to_vec_pretty(&meta).map_err(|e| AuditError::Corrupt(e.to_string()))?;
            write_durably(&layout.meta, &json, Readers::Owner)?;
        }
        let (last, signed) = newer.unwrap_or_else(|| {
            let empty = Checkpoint {
                origin: origin.to_owned(),
                size: 0,
                root: Hash::empty(),
            };
            (empty, String::new())
        });
        // A log that has signed entries made its keys before them: new keys in place of lost
        // ones would open none of its sealed payloads, give its cases new tags, and leave the
        // old keys of a case erased later wherever a copy of them is. (A log with a signed
        // size of 0 may have lost a `cases.keys` whose folder earlier versions did not sync;
        // it has nothing sealed under it.)
        if last.size > 0 {
            for name in ["index.key", "cases.keys"] {
                let path = layout.keys.join(name);
                if !path.exists() {
                    return Err(AuditError::Corrupt(format!(
                        "{} is missing, and the log holds entries made under it: restore it \
                         (a backup of private/keys) before opening the log",
                        path.display()
                    )));
                }
            }
        }
        let index_key = IndexKey::load_or_create(&layout.keys.join("index.key"))?;
        let mut keys = KeyStore::open(&layout.keys.join("cases.keys"), true)?;
        if let Some((old, _)) = older.take().filter(|(o, _)| o.size > 0) {
            let reader = TileReader::new(&layout.public, last.size);
            if super::merkle::root_from(&reader, old.size)? != old.root {
                return Err(AuditError::Corrupt(format!(
                    "the checkpoints of size {} and {} are not consistent",
                    old.size, last.size
                )));
            }
        }
        let public_path = layout.public.join("checkpoint");
        if !signed.is_empty()
            && std::fs::read(&public_path).ok().as_deref() != Some(signed.as_bytes())
        {
            tracing::warn!(
                size = last.size,
                "the public checkpoint was missing, damaged or older than the private copy; put \
                 back from the private copy"
            );
            write_durably(&public_path, signed.as_bytes(), Readers::AsTheUmaskSays)?;
        }
        let mut edge = Edge::load(&layout.public, last.size)?;
        if edge.root()? != last.root {
            return Err(AuditError::Corrupt(
                "public tiles do not match the signed checkpoint".into(),
            ));
        }

        // Replay the journal: rebuild the index, and re-publish what the
        // checkpoint does not cover yet.
        let mut index: HashMap<Tag, Vec<u64>> = HashMap::new();
        // A partial entry bundle found damaged is put back from the journal, whose records
        // are checked on their own; the public files are copies.
        // The entries past the signed size are added to the edge after that.
        let restore_from = edge.bundle_to_restore();
        let mut restored = Vec::new();
        let mut unsigned = Vec::new();
        // A wrong index key (replaced, damaged) would index the entries written from now on
        // under tags no search with the log's own key finds: refused, as the audit tools do.
        let mut key_check = super::bundle::KeyCheck::default();
        // Whether any entry holds a payload sealed under a case's keys, and the cases the log
        // erased: checked against the key file below.
        let mut sealed_entries = false;
        let mut erased_cases = Vec::new();
        let mut last_entry = Vec::new();
        let scan = journal::scan(&layout.journal, |i, rec| {
            last_entry.clone_from(&rec.entry);
            key_check.check(&rec, &index_key);
            sealed_entries |= rec.sealed.is_some();
            if let [case_tag] = rec.tags[..]
                && rec.sealed.is_none()
                && rec
                    .entry
                    .windows(ERASED_KIND.len())
                    .any(|w| w == ERASED_KIND)
                && Leaf::decode(&rec.entry).is_ok_and(|leaf| leaf.kind == Kind::Erased)
            {
                erased_cases.push(case_tag);
            }
            for t in &rec.tags {
                index.entry(*t).or_default().push(i);
            }
            // The message's tag on entries written before every entry carried it.
            if let Some(message) = MessageName::of_entry(&rec.entry) {
                let tag = message.tag(&index_key);
                if !rec.tags.contains(&tag) {
                    index.entry(tag).or_default().push(i);
                }
            }
            if i >= last.size {
                unsigned.push(rec.entry);
            } else if restore_from.is_some_and(|from| i >= from) {
                restored.push(rec.entry);
            }
            Ok(())
        })?;
        if scan.next < last.size {
            return Err(AuditError::Corrupt(format!(
                "the journal holds {} entries but size {} was signed: private/journal is damaged \
                 or older than the signed checkpoint (its records from entry {} on do not read \
                 back); restore the whole log folder from one backup",
                scan.next, last.size, scan.next
            )));
        }
        if key_check.wrong_key() {
            return Err(AuditError::OtherIndexKey {
                path: layout.keys.join("index.key"),
                checked: key_check.naming,
            });
        }
        if let Some(from) = restore_from {
            tracing::warn!(
                first_entry = from,
                "the public partial entry bundle was missing or damaged; put back from the journal"
            );
            edge.restore_bundle(&layout.public, restored)?;
        }
        for entry in unsigned {
            let h = leaf_hash(&entry);
            edge.push(entry, h);
        }
        keys.cut_damaged_tail(|tag| index.contains_key(tag))?;
        if sealed_entries && keys.is_empty() {
            return Err(AuditError::Corrupt(format!(
                "{} holds no key, and the log holds payloads sealed under case keys: restore \
                 it (a backup of private/keys) before opening the log",
                layout.keys.join("cases.keys").display()
            )));
        }
        // The log's `erased` entries are the erasures' record: a key file restored from a copy
        // older than one of them holds that case's keys again, which would open its sealed
        // payloads and take new personal data for it. They are destroyed again.
        let mut erased_again = 0;
        for case_tag in &erased_cases {
            if keys.is_live(case_tag) {
                keys.erase(case_tag)?;
                erased_again += 1;
            }
        }
        if erased_again > 0 {
            tracing::warn!(
                cases = erased_again,
                "the case key file held the keys of cases the log records as erased (a copy \
                 older than their erasure?); destroyed again"
            );
        }
        let writer = JournalWriter::open(&layout.journal, &scan, options.segment_bytes)?;
        let last_size = last.size;

        let shared = Arc::new(Shared {
            origin: origin.to_owned(),
            signer,
            layout,
            index_key,
            keys: Mutex::new(keys),
            index: RwLock::new(index),
            latest: Mutex::new(Latest {
                checkpoint: last,
                signed,
            }),
            published: Condvar::new(),
            failure: Mutex::new(None),
        });
        let (tx, rx) = write_queue(options.queue);
        let (ptx, prx) = mpsc::channel();
        let interval = options.checkpoint_interval.min(Duration::from_secs(1));
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("audit-publisher".into())
                .spawn(move || publisher(s, edge, prx, interval))
                .map_err(|e| AuditError::io("audit-publisher thread", e))?,
        );
        let s = shared.clone();
        let (next, opts) = (scan.next, options.clone());
        threads.push(
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || writer_loop(s, writer, next, rx, ptx, opts))
                .map_err(|e| AuditError::io("audit-writer thread", e))?,
        );
        let log = AuditLog {
            shared,
            tx: Some(tx),
            threads,
            _writer_lock: writer_lock,
            entries_at_open: next,
            last_entry_time: Leaf::decode(&last_entry).ok().and_then(|leaf| {
                chrono::DateTime::parse_from_rfc3339(&leaf.time)
                    .ok()
                    .map(|time| time.with_timezone(&Utc))
            }),
        };
        if log.latest_checkpoint().0.is_empty() || scan.next > last_size {
            log.sync()?;
        }
        Ok(log)
    }

    /// How many entries the log held when it was opened (signed or not yet): the index of its
    /// first append.
    pub fn entries_at_open(&self) -> u64 {
        self.entries_at_open
    }

    /// The gateway time of the last entry the log held when it was opened; `None` for an
    /// empty log.
    pub fn last_entry_time(&self) -> Option<chrono::DateTime<Utc>> {
        self.last_entry_time
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The verifier of the log's key.
    pub fn verifier(&self) -> &NoteVerifier {
        self.shared.signer.verifier()
    }

    /// The folders of the log.
    pub fn layout(&self) -> &Layout {
        &self.shared.layout
    }

    /// Issues a new receipt, signed now, for an entry already in the log (for an acceptance
    /// whose first receipt was lost in a crash). The entry's leaf hash is checked against the
    /// tiles, so a receipt is never issued for an entry the log does not hold.
    pub fn reissue_receipt(&self, index: u64, leaf: Hash) -> Result<Receipt> {
        let (_, cp) = self.latest_checkpoint();
        if index >= cp.size {
            return Err(AuditError::Corrupt(format!(
                "entry {index} is not covered by a checkpoint"
            )));
        }
        let entries = read_bundle(&self.shared.layout.public, cp.size, index / TILE_WIDTH)?;
        let entry = entries
            .get(usize::try_from(index % TILE_WIDTH).unwrap_or(usize::MAX))
            .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is missing")))?;
        if leaf_hash(entry) != leaf {
            return Err(AuditError::Corrupt(format!(
                "entry {index} does not have that leaf hash"
            )));
        }
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        Receipt::issue(&self.shared.signer, &self.shared.origin, index, leaf, &time)
    }

    /// Whether the log takes appends: open, and no writer or publisher has failed.
    pub fn is_healthy(&self) -> bool {
        self.tx.is_some()
            && self
                .shared
                .failure
                .lock()
                .map(|f| f.is_none())
                .unwrap_or(false)
    }

    /// The latest signed checkpoint: its signed text and the parsed head.
    pub fn latest_checkpoint(&self) -> (String, Checkpoint) {
        match self.shared.latest.lock() {
            Ok(l) => (l.signed.clone(), l.checkpoint.clone()),
            Err(p) => (p.get_ref().signed.clone(), p.get_ref().checkpoint.clone()),
        }
    }

    /// `Stopped` once the log has failed: it takes no more appends until it is reopened.
    fn refuse_if_stopped(&self) -> Result<()> {
        match lock(&self.shared.failure)?.as_ref() {
            Some(why) => Err(AuditError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether the index holds entries under `tag` (read before the key store is locked).
    fn has_entries_under(&self, tag: &Tag) -> bool {
        self.shared
            .index
            .read()
            .is_ok_and(|index| index.get(tag).is_some_and(|found| !found.is_empty()))
    }

    /// Whether entries of `case_id` are refused because its key was lost from
    /// `private/keys/cases.keys` (the log holds entries of the case and the file no key for
    /// it): nothing about the case can be recorded until the file is restored, while the log
    /// records the other cases. A caller that must record what it does (a delivery) asks first.
    pub fn case_key_lost(&self, case_id: &str) -> bool {
        let tag = self.shared.index_key.tag(TagKind::Case, case_id);
        self.has_entries_under(&tag)
            && lock(&self.shared.keys)
                .is_ok_and(|store| matches!(store.get(&tag), Err(AuditError::UnknownCase)))
    }

    /// Turns a fact into a journal record: validates it, computes the leaf
    /// with its commitments, seals the personal material. Runs on the
    /// caller's thread.
    fn prepare(&self, fact: &Fact) -> Result<(Record, Hash)> {
        fact.validate()?;
        // A stopped log writes nothing more, not even a new case's key: each append is
        // refused as the log's, not as a failed write of its own.
        self.refuse_if_stopped()?;
        let key = &self.shared.index_key;
        let case = fact
            .case_id
            .as_deref()
            .map(|c| (c, key.tag(TagKind::Case, c)));
        let keys = match &case {
            Some((_, tag)) => {
                // Entries under the case's tag and no key for it: the key was lost (the file
                // restored from an older copy, or a record removed). A new key would give the
                // case's next entries another commitment, splitting its trail, and leave its
                // sealed data unopenable without an `erased` entry: refused until the file is
                // restored.
                let has_entries = self.has_entries_under(tag);
                let mut store = lock(&self.shared.keys)?;
                if has_entries && matches!(store.get(tag), Err(AuditError::UnknownCase)) {
                    return Err(AuditError::Corrupt(
                        "the log holds entries of this case, but private/keys/cases.keys has \
                         no key for it: the key was lost; restore the file from its backup (a \
                         new key would split the case's trail)"
                            .into(),
                    ));
                }
                let created = store.get_or_create(tag);
                drop(store);
                // A key the store could not write stops the log, as a failed journal write
                // does: the disk is full or failing, and readiness must say so. Appends
                // already queued are still written.
                if let Err(e @ AuditError::Io { .. }) = &created {
                    self.shared.fail(e.to_string());
                }
                Some(created?)
            }
            None => None,
        };
        let commitments = match (&case, &keys) {
            (Some((id, _)), Some(k)) => Some(Commitments::compute(&k.commit, id, &fact.personal)),
            _ => None,
        };
        let entry = Leaf::from_fact(fact, commitments).encode()?;
        let leaf = leaf_hash(&entry);
        let sealed = match (&case, &keys) {
            _ if fact.personal.commit_only => None,
            (Some((id, tag)), Some(k)) => {
                let p = &fact.personal;
                let opened = Opened {
                    case_id: (*id).to_owned(),
                    native: p.native.clone(),
                    canonical: p.canonical.clone(),
                    documents: p.documents.clone(),
                };
                Some(seal(k, *tag, &leaf.0, &opened)?)
            }
            _ => None,
        };
        let ids = &fact.identifiers;
        let mut tags: Vec<Tag> = case.iter().map(|(_, t)| *t).collect();
        tags.extend(ids.lpc.iter().map(|v| key.tag(TagKind::Lpc, v)));
        tags.extend(ids.pnr.iter().map(|v| key.tag(TagKind::Pnr, v)));
        tags.extend(ids.pv.iter().map(|v| key.tag(TagKind::Pv, v)));
        tags.extend(ids.iom_case.iter().map(|v| key.tag(TagKind::IomCase, v)));
        tags.extend(
            ids.flights
                .iter()
                .map(|f| Query::Flight(f.clone()).tag(key)),
        );
        tags.extend(
            ids.partner_refs
                .iter()
                .map(|(p, r)| Query::PartnerRef(p.clone(), r.clone()).tag(key)),
        );
        if let (Some(sender), Some(event_id)) = (&fact.sender, &fact.event_id) {
            let message = MessageName {
                sender: sender.clone(),
                event_id: event_id.clone(),
            };
            tags.push(message.tag(key));
        }
        tags.sort_unstable();
        tags.dedup();
        Ok((
            Record {
                entry,
                tags,
                sealed,
            },
            leaf,
        ))
    }

    /// The append of `record`, and where its outcome comes, once the log is known to take it.
    fn pending(
        &self,
        record: Record,
        leaf: Hash,
    ) -> Result<(Msg, oneshot::Receiver<Result<Committed>>)> {
        self.refuse_if_stopped()?;
        if !record.fits() {
            return Err(AuditError::InvalidFact(
                "the entry and its sealed payloads are larger than a journal record".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        let append = Msg::Append(Box::new(Pending {
            record,
            leaf,
            reply,
        }));
        Ok((append, rx))
    }

    /// Queues an append from a thread that may block.
    fn submit_blocking(
        &self,
        record: Record,
        leaf: Hash,
    ) -> Result<oneshot::Receiver<Result<Committed>>> {
        let (append, rx) = self.pending(record, leaf)?;
        self.queue()?
            .send_blocking(append)
            .map_err(|_| AuditError::Closed)?;
        Ok(rx)
    }

    fn queue(&self) -> Result<&WriteQueue<Msg>> {
        self.tx.as_ref().ok_or(AuditError::Closed)
    }

    /// Appends a fact and returns its signed receipt once the entry is
    /// durable. Blocks the calling thread: do not call from an async worker
    /// (use [`AuditLog::append_async`]).
    pub fn append(&self, fact: &Fact) -> Result<Receipt> {
        let (record, leaf) = self.prepare(fact)?;
        let rx = self.submit_blocking(record, leaf)?;
        receipt_for(leaf, rx.blocking_recv().map_err(|_| AuditError::Closed)?)
    }

    /// Appends a fact; the future resolves once the entry is durable. The
    /// preparation (hashing, sealing) runs inline and is short; no file I/O
    /// happens on the calling task, except that the first fact of a new case
    /// may wait for the key store lock.
    pub async fn append_async(&self, fact: &Fact) -> Result<Receipt> {
        self.queue_append(fact).await?.durable().await
    }

    /// Queues a fact for appending, as [`AuditLog::append_async`] does, and returns once it
    /// is in the writer's queue: entries are written in the order they were queued.
    pub async fn queue_append(&self, fact: &Fact) -> Result<QueuedAppend> {
        let (record, leaf) = self.prepare(fact)?;
        let (append, rx) = self.pending(record, leaf)?;
        // Waits for room in the queue without blocking the task's thread.
        self.queue()?
            .send(append)
            .await
            .map_err(|_| AuditError::Closed)?;
        Ok(QueuedAppend { leaf, rx })
    }

    /// Publishes a checkpoint covering every entry acknowledged so far, and
    /// waits until it is written.
    pub fn sync(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.queue()?
            .send_blocking(Msg::Publish(reply))
            .map_err(|_| AuditError::Closed)?;
        rx.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Waits until a checkpoint covers entry `index`, for at most `timeout`.
    /// Returns whether it does.
    pub fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut latest) = self.shared.latest.lock() else {
            return false;
        };
        while latest.checkpoint.size <= index {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            latest = match self.shared.published.wait_timeout(latest, left) {
                Ok((l, _)) => l,
                Err(_) => return false,
            };
        }
        true
    }

    /// The `c2sp.org/tlog-proof@v1` inclusion proof of entry `index` against
    /// the latest checkpoint, or `None` if no checkpoint covers it yet.
    pub fn inclusion(&self, index: u64) -> Result<Option<TlogProof>> {
        let (signed, cp) = self.latest_checkpoint();
        if index >= cp.size {
            return Ok(None);
        }
        let reader = TileReader::new(&self.shared.layout.public, cp.size);
        let path = inclusion_proof(&reader, index, cp.size)?;
        Ok(Some(TlogProof {
            index,
            path,
            checkpoint: signed,
        }))
    }

    /// Indices of the entries matching a query, in order (including entries
    /// that no checkpoint covers yet).
    pub fn lookup(&self, query: &Query) -> Vec<u64> {
        self.lookup_tag(&query.tag(&self.shared.index_key))
    }

    /// The leaves of the entries indexed under `query` after entry `after` that the latest
    /// checkpoint covers, without proofs: for the gateway's own checks (the settling of a
    /// message), where a search would compute an inclusion proof for every entry of the
    /// query, a case's thousands among them.
    pub fn leaves_after(&self, query: &Query, after: u64) -> Result<Vec<(u64, Leaf)>> {
        let (_, cp) = self.latest_checkpoint();
        let indices: Vec<u64> = self
            .lookup(query)
            .into_iter()
            .filter(|&i| i > after && i < cp.size)
            .collect();
        read_entries(&self.shared.layout.public, cp.size, &indices)?
            .into_iter()
            .zip(indices)
            .map(|(entry, index)| Ok((index, Leaf::decode(&entry)?)))
            .collect()
    }

    /// The entries matching a query that the latest checkpoint covers, each
    /// with its inclusion proof.
    ///
    /// A query that [`Query::widens`] finds every entry of the messages it names, in order.
    pub fn search(&self, query: &Query) -> Result<Vec<Found>> {
        let (signed, cp) = self.latest_checkpoint();
        let indices: Vec<u64> = self
            .trail_indices(query, cp.size)?
            .into_iter()
            .filter(|&i| i < cp.size)
            .collect();
        evidence(&self.shared.layout.public, &signed, cp.size, &indices)
    }

    /// The entries of a query's trail, in order: those indexed under its tag and, for a query
    /// that [`Query::widens`], every entry of the messages that those of them covered by the
    /// checkpoint of `size` name (read from the public tiles: an entry past it names its
    /// message only once a checkpoint covers it).
    ///
    /// Entries are added only when they name one of those messages exactly: tags are of
    /// normalised values, and `evt-7a` and `EVT-7A` from one sender are two messages.
    pub fn trail_indices(&self, query: &Query, size: u64) -> Result<Vec<u64>> {
        let matched = self.lookup(query);
        if let Some(message) = query.message() {
            // An entry past `size` is kept, as pending: it cannot be read before a checkpoint
            // covers it.
            let mut entries = EntryReader::new(&self.shared.layout.public, size);
            let mut exact = Vec::with_capacity(matched.len());
            for index in matched {
                if index >= size
                    || MessageName::of_entry(entries.get(index)?).as_ref() == Some(&message)
                {
                    exact.push(index);
                }
            }
            return Ok(exact);
        }
        if !query.widens() {
            return Ok(matched);
        }
        let mut entries = EntryReader::new(&self.shared.layout.public, size);
        let mut messages = BTreeSet::new();
        for &index in matched.iter().filter(|&&i| i < size) {
            messages.extend(MessageName::of_entry(entries.get(index)?));
        }
        let mut candidates = BTreeSet::new();
        for message in &messages {
            candidates.extend(
                self.lookup_tag(&message.tag(&self.shared.index_key))
                    .into_iter()
                    .filter(|&i| i < size),
            );
        }
        let mut indices: BTreeSet<u64> = matched.into_iter().collect();
        for index in candidates {
            if !indices.contains(&index)
                && MessageName::of_entry(entries.get(index)?).is_some_and(|m| messages.contains(&m))
            {
                indices.insert(index);
            }
        }
        Ok(indices.into_iter().collect())
    }

    /// How many entries are indexed under a query's tag (see [`AuditLog::lookup`]), without
    /// copying them.
    pub fn lookup_count(&self, query: &Query) -> usize {
        let tag = query.tag(&self.shared.index_key);
        self.shared
            .index
            .read()
            .map(|index| index.get(&tag).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// At most `take` of the entries indexed under a query's tag, in order, past the index
    /// `after` (from the first without it): a page of a long list, copied alone.
    pub fn lookup_page(&self, query: &Query, after: Option<u64>, take: usize) -> Vec<u64> {
        let tag = query.tag(&self.shared.index_key);
        let Ok(index) = self.shared.index.read() else {
            return Vec::new();
        };
        let Some(entries) = index.get(&tag) else {
            return Vec::new();
        };
        // The entries of a tag are indexed in the log's order.
        let start = after.map_or(0, |after| entries.partition_point(|&i| i <= after));
        entries[start..].iter().copied().take(take).collect()
    }

    /// The entries indexed under a search tag.
    fn lookup_tag(&self, tag: &Tag) -> Vec<u64> {
        self.shared
            .index
            .read()
            .ok()
            .and_then(|i| i.get(tag).cloned())
            .unwrap_or_default()
    }

    /// Opens the personal material of a case: every sealed record of the
    /// case, decrypted, with its commitments checked against the leaf.
    /// Fails with [`AuditError::CaseErased`] once the case is erased.
    pub fn open_case(&self, case_id: &str) -> Result<Vec<(u64, Opened)>> {
        let keys = lock(&self.shared.keys)?;
        open_case(&self.shared.layout, &self.shared.index_key, &keys, case_id)
    }

    /// Whether `case_id` was erased (see [`AuditLog::erase_case`]).
    pub fn is_case_erased(&self, case_id: &str) -> Result<bool> {
        let tag = self.shared.index_key.tag(TagKind::Case, case_id);
        Ok(lock(&self.shared.keys)?.is_erased(&tag))
    }

    /// How many cases were erased (see [`AuditLog::erase_case`]).
    pub fn erased_cases(&self) -> Result<u64> {
        Ok(lock(&self.shared.keys)?.erased())
    }

    /// Erases a case: appends an `erased` leaf carrying the case's commitment, so that
    /// auditors see where its trail ends, then destroys its keys (overwritten in place and
    /// synced). The log still verifies afterwards; the case's sealed payloads and commitments
    /// can no longer be opened. Blocks the calling thread (it waits for the erasure leaf to be
    /// durable, and syncs the key store).
    ///
    /// The leaf comes first because it needs the keys: an erasure cut short between the two
    /// (a crash, a failed sync) leaves the keys in place, and running it again appends a second
    /// `erased` leaf and destroys them. The other way round, the leaf could never be written.
    ///
    /// A case this log has no keys for (never logged, or a mistyped id) is refused with
    /// [`AuditError::UnknownCase`], and one already erased with [`AuditError::CaseErased`]:
    /// nothing is appended.
    pub fn erase_case(&self, case_id: &str) -> Result<Receipt> {
        let tag = self.shared.index_key.tag(TagKind::Case, case_id);
        let keys = lock(&self.shared.keys)?.get(&tag)?;
        let commitment = Some(Commitments::compute(
            &keys.commit,
            case_id,
            &Default::default(),
        ));
        let fact = Fact::new(Kind::Erased, Utc::now());
        let entry = Leaf::from_fact(&fact, commitment).encode()?;
        let leaf = leaf_hash(&entry);
        let rx = self.submit_blocking(
            Record {
                entry,
                tags: vec![tag],
                sealed: None,
            },
            leaf,
        )?;
        let receipt = receipt_for(leaf, rx.blocking_recv().map_err(|_| AuditError::Closed)?)?;
        lock(&self.shared.keys)?.erase(&tag)?;
        Ok(receipt)
    }

    /// Stops accepting appends, commits what is queued, publishes a final
    /// checkpoint and stops the threads.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match lock(&self.shared.failure)?.as_ref() {
            Some(why) => Err(AuditError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads entries from the public entry bundles of a log of `size` entries, keeping the last
/// bundle read (entries read in order read each bundle once).
struct EntryReader<'p> {
    public: &'p Path,
    size: u64,
    bundle: Option<(u64, Vec<Vec<u8>>)>,
}

impl<'p> EntryReader<'p> {
    fn new(public: &'p Path, size: u64) -> Self {
        EntryReader {
            public,
            size,
            bundle: None,
        }
    }

    /// The bytes of entry `index`.
    fn get(&mut self, index: u64) -> Result<&[u8]> {
        let n = index / TILE_WIDTH;
        if self.bundle.as_ref().is_none_or(|(read, _)| *read != n) {
            self.bundle = Some((n, read_bundle(self.public, self.size, n)?));
        }
        self.bundle
            .as_ref()
            .and_then(|(_, entries)| entries.get(usize::try_from(index % TILE_WIDTH).ok()?))
            .map(Vec::as_slice)
            .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is missing")))
    }
}

/// Reads the signed checkpoint at `path` (the public one, or the private copy), verified
/// against the log's key and origin, with its signed text; `None` when there is no file.
pub fn read_signed_checkpoint(
    path: &Path,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Option<(Checkpoint, String)>> {
    match super::files::read_at_most(path, super::files::MAX_CHECKPOINT) {
        Ok(data) => {
            let checkpoint = Checkpoint::open(&data, verifier, Some(origin)).map_err(|source| {
                AuditError::CheckpointFile {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Ok(Some((
                checkpoint,
                String::from_utf8_lossy(&data).into_owned(),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io(path, e)),
    }
}

/// Reads the entries at `indices` from the public folder and proves each
/// against the checkpoint of `size` (whose signed text is `signed`).
pub fn evidence(public: &Path, signed: &str, size: u64, indices: &[u64]) -> Result<Vec<Found>> {
    let reader = TileReader::new(public, size);
    let mut out = Vec::new();
    for (entry, &index) in read_entries(public, size, indices)?
        .into_iter()
        .zip(indices)
    {
        let leaf = Leaf::decode(&entry)?;
        let path = inclusion_proof(&reader, index, size)?;
        out.push(Found {
            index,
            entry,
            leaf,
            proof: TlogProof {
                index,
                path,
                checkpoint: signed.to_owned(),
            },
        });
    }
    Ok(out)
}

/// Reads the entries at `indices` of the tree of `size` entries from the public entry
/// bundles, each bundle once, in the order of `indices`.
fn read_entries(public: &Path, size: u64, indices: &[u64]) -> Result<Vec<Vec<u8>>> {
    let mut bundles: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut entries = Vec::with_capacity(indices.len());
    for &index in indices {
        let n = index / TILE_WIDTH;
        if let std::collections::hash_map::Entry::Vacant(v) = bundles.entry(n) {
            v.insert(read_bundle(public, size, n)?);
        }
        let entry = bundles
            .get(&n)
            .and_then(|e| e.get((index % TILE_WIDTH) as usize))
            .cloned()
            .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is missing")))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads entry bundle `n` of the tree of `size` entries (falling back to the
/// full bundle when an old partial one was removed).
pub fn read_bundle(public: &Path, size: u64, n: u64) -> Result<Vec<Vec<u8>>> {
    let w = tile_width(size, 0, n);
    let try_read = |width: u64| {
        super::files::read_at_most(
            &public.join(entries_path(n, width)),
            super::files::MAX_ENTRY_BUNDLE,
        )
    };
    let data = match try_read(w) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && w < TILE_WIDTH => {
            try_read(TILE_WIDTH).map_err(|e| AuditError::io(public.join(entries_path(n, w)), e))?
        }
        Err(e) => return Err(AuditError::io(public.join(entries_path(n, w)), e)),
    };
    let entries =
        parse_bundle(&data).map_err(|e| AuditError::Corrupt(format!("bundle {n}: {e}")))?;
    Ok(entries
        .into_iter()
        .take(w as usize)
        .map(<[u8]>::to_vec)
        .collect())
}

/// Opens a case's sealed records from the journal (see [`AuditLog::open_case`]).
pub fn open_case(
    layout: &Layout,
    index_key: &IndexKey,
    keys: &KeyStore,
    case_id: &str,
) -> Result<Vec<(u64, Opened)>> {
    let tag = index_key.tag(TagKind::Case, case_id);
    let k = keys.get(&tag)?;
    let mut out = Vec::new();
    journal::scan(&layout.journal, |i, rec| {
        let Some(sealed) = rec.sealed.as_ref().filter(|s| s.case == tag) else {
            return Ok(());
        };
        let opened = unseal(&k, &leaf_hash(&rec.entry).0, sealed)?;
        let leaf = Leaf::decode(&rec.entry)?;
        let expect = Commitments::compute(
            &k.commit,
            &opened.case_id,
            &super::leaf::Personal {
                native: opened.native.clone(),
                canonical: opened.canonical.clone(),
                documents: opened.documents.clone(),
                commit_only: false,
            },
        );
        if leaf.commitments.as_ref() != Some(&expect) {
            return Err(AuditError::Corrupt(format!(
                "entry {i}: commitments do not match the sealed payload"
            )));
        }
        out.push((i, opened));
        Ok(())
    })?;
    Ok(out)
}

/// One group written to the journal and waiting to be synced.
struct Group {
    seq: u64,
    first: u64,
    appends: Vec<Pending>,
    publishes: Vec<oneshot::Sender<Result<()>>>,
}

/// The state shared by the writer and the sync threads.
struct SyncState {
    /// The file the latest group was written to.
    file: Arc<std::fs::File>,
    /// Sequence number of the latest group written.
    written: u64,
    /// Highest group a sync was started for.
    started: u64,
    /// Groups written and not yet known durable, in order.
    inflight: std::collections::VecDeque<Group>,
    /// The writer has stopped (no more groups will come).
    closed: bool,
    /// A write or sync failed: nothing more is acknowledged.
    failed: bool,
    /// A sync failed (of a sync thread, or the cut of a finished segment): what a sync under
    /// way at the same time made durable is not acknowledged either.
    sync_failed: bool,
    /// Syncs of the journal under way: the sync threads', and the one that cuts a finished
    /// segment (see [`sync_loop`] for why a sync that succeeded waits for the others).
    syncing: usize,
}

struct Syncer {
    state: Mutex<SyncState>,
    work: Condvar,
    space: Condvar,
    /// Notified each time a sync ends.
    settled: Condvar,
}

fn writer_loop(
    shared: Arc<Shared>,
    mut journal: JournalWriter,
    mut next: u64,
    rx: WriteQueueReceiver<Msg>,
    ptx: Sender<PubMsg>,
    opts: Options,
) {
    let syncer = Arc::new(Syncer {
        state: Mutex::new(SyncState {
            file: journal.file(),
            written: 0,
            started: 0,
            inflight: Default::default(),
            closed: false,
            failed: false,
            sync_failed: false,
            syncing: 0,
        }),
        work: Condvar::new(),
        space: Condvar::new(),
        settled: Condvar::new(),
    });
    let ptx = Arc::new(Mutex::new(ptx));
    let mut syncers = Vec::new();
    for n in 0..opts.sync_threads.max(1) {
        let (sh, syncer, ptx) = (shared.clone(), syncer.clone(), ptx.clone());
        let spacing = opts.sync_spacing;
        match std::thread::Builder::new()
            .name(format!("audit-sync-{n}"))
            .spawn(move || sync_loop(&sh, &syncer, &ptx, spacing))
        {
            Ok(h) => syncers.push(h),
            Err(e) => shared.fail(format!("cannot start a sync thread: {e}")),
        }
    }
    let max_inflight = 2 * opts.sync_threads.max(1);
    let max_batch = opts.max_batch.max(1);
    let mut buf = Vec::new();
    let mut seq = 0u64;
    while let Some(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut publishes = Vec::new();
        let mut take = |m: Msg, batch: &mut Vec<Pending>| match m {
            Msg::Append(p) => batch.push(*p),
            Msg::Publish(r) => publishes.push(r),
        };
        take(first, &mut batch);
        let deadline = Instant::now() + opts.max_delay;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch),
                Err(TryRecvError::Empty) if !opts.max_delay.is_zero() => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(m) => take(m, &mut batch),
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        // Facts for cases erased after they were prepared are refused here;
        // keys created for this group are synced before the group is, outside the key store's
        // lock, which the HTTP workers take for every message with a case.
        let Ok(mut keys) = shared.keys.lock() else {
            break;
        };
        let mut appends = Vec::with_capacity(batch.len());
        for p in batch {
            match p.record.sealed.as_ref() {
                Some(s) if keys.is_erased(&s.case) => {
                    let _ = p.reply.send(Err(AuditError::CaseErased));
                }
                _ => appends.push(p),
            }
        }
        let key_sync = keys.unsynced();
        drop(keys);
        let synced_keys = key_sync.and_then(|pending| pending.map_or(Ok(()), KeySync::sync));
        buf.clear();
        for p in &appends {
            p.record.encode_into(&mut buf);
        }
        let written = synced_keys.and_then(|()| journal.write(&buf));
        let Ok(mut st) = syncer.state.lock() else {
            break;
        };
        while st.inflight.len() >= max_inflight && !st.failed {
            st = match syncer.space.wait(st) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
        if let Err(e) = written {
            shared.fail(e.to_string());
            st.failed = true;
        }
        if st.failed {
            for p in appends {
                let _ = p.reply.send(Err(AuditError::Stopped(
                    "the journal could not be written".into(),
                )));
            }
            break;
        }
        seq += 1;
        let count = appends.len() as u64;
        st.inflight.push_back(Group {
            seq,
            first: next,
            appends,
            publishes,
        });
        st.written = seq;
        next += count;
        syncer.work.notify_one();
        drop(st);
        if journal.is_full() {
            // The old segment is synced by the rotation, so a sync of the new
            // one covers every group written before it.
            match syncer.state.lock() {
                Ok(mut st) => st.syncing += 1,
                Err(_) => break,
            }
            let finished = journal.finish_segment();
            match syncer.state.lock() {
                Ok(mut st) => {
                    st.syncing -= 1;
                    if finished.is_err() {
                        st.sync_failed = true;
                    }
                }
                Err(_) => break,
            }
            syncer.settled.notify_all();
            let rotated = finished.and_then(|()| journal.start_segment(next));
            let Ok(mut st) = syncer.state.lock() else {
                break;
            };
            match rotated {
                Ok(()) => st.file = journal.file(),
                Err(e) => {
                    shared.fail(e.to_string());
                    st.failed = true;
                    break;
                }
            }
        }
    }
    if let Ok(mut st) = syncer.state.lock() {
        st.closed = true;
    }
    syncer.work.notify_all();
    for h in syncers {
        let _ = h.join();
    }
    // Groups that could not be synced are answered with an error.
    let mut failed = true;
    if let Ok(mut st) = syncer.state.lock() {
        failed = st.failed;
        for g in st.inflight.drain(..) {
            for p in g.appends {
                let _ = p.reply.send(Err(AuditError::Closed));
            }
        }
    }
    // A log closed in good order leaves its last segment without the zeros
    // reserved after its records; after a failure, the next open cuts them.
    if !failed && let Err(e) = journal.finish() {
        shared.fail(e.to_string());
    }
}

/// Syncs the journal, several at a time: a sync started after group `k` was
/// written makes groups up to `k` durable. Groups are acknowledged, indexed
/// and handed to the publisher strictly in order, under the state lock.
fn sync_loop(shared: &Shared, syncer: &Syncer, ptx: &Mutex<Sender<PubMsg>>, spacing: Duration) {
    let mut last_start: Option<Instant> = None;
    loop {
        if let Some(started) = last_start {
            let wait = spacing.saturating_sub(started.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        let (target, file) = {
            let Ok(mut st) = syncer.state.lock() else {
                return;
            };
            while st.written == st.started && !st.closed && !st.failed {
                st = match syncer.work.wait(st) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if st.failed || st.written == st.started {
                return;
            }
            st.started = st.written;
            st.syncing += 1;
            (st.written, st.file.clone())
        };
        last_start = Some(Instant::now());
        let synced = file.sync_data();
        let Ok(mut st) = syncer.state.lock() else {
            return;
        };
        st.syncing -= 1;
        syncer.settled.notify_all();
        // Syncs of one open file share its error report: when two overlap (two sync threads,
        // or one and the cut of a segment), the kernel tells the write-back error to one of
        // them only, and the other succeeds. So a sync that succeeded acknowledges nothing
        // until every sync under way has ended, and then only if none failed.
        // (A failed write stops the log too, but what this sync made durable is acknowledged.)
        if synced.is_ok() {
            while st.syncing > 0 && !st.sync_failed {
                st = match syncer.settled.wait(st) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if st.sync_failed {
                return;
            }
        }
        if let Err(e) = synced {
            shared.fail(format!("journal sync failed: {e}"));
            st.failed = true;
            st.sync_failed = true;
            for g in st.inflight.drain(..) {
                for p in g.appends {
                    let _ = p.reply.send(Err(AuditError::Stopped(
                        "the journal could not be synced".into(),
                    )));
                }
            }
            syncer.space.notify_all();
            syncer.work.notify_all();
            return;
        }
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut done = Vec::new();
        while st.inflight.front().is_some_and(|g| g.seq <= target) {
            let Some(g) = st.inflight.pop_front() else {
                break;
            };
            if let Ok(mut index) = shared.index.write() {
                for (i, p) in g.appends.iter().enumerate() {
                    for t in &p.record.tags {
                        index.entry(*t).or_default().push(g.first + i as u64);
                    }
                }
            }
            let mut entries = Vec::with_capacity(g.appends.len());
            let mut replies = Vec::with_capacity(g.appends.len());
            for p in g.appends {
                entries.push((p.record.entry, p.leaf));
                replies.push(p.reply);
            }
            let leaves: Vec<Hash> = entries.iter().map(|(_, h)| *h).collect();
            if let Ok(ptx) = ptx.lock() {
                if !entries.is_empty() {
                    let _ = ptx.send(PubMsg::Batch(entries));
                }
                for r in g.publishes {
                    let _ = ptx.send(PubMsg::Publish(r));
                }
            }
            done.push((g.first, leaves, replies));
        }
        syncer.space.notify_all();
        drop(st);
        // One signature per group, outside the lock.
        for (first, leaves, replies) in done {
            if leaves.is_empty() {
                continue;
            }
            match Receipt::issue_group(&shared.signer, &shared.origin, first, &leaves, &time) {
                Ok(receipts) => {
                    for (reply, r) in replies.into_iter().zip(receipts) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(AuditError::Corrupt(format!("receipt: {why}"))));
                    }
                }
            }
        }
    }
}

fn publisher(shared: Arc<Shared>, mut edge: Edge, rx: Receiver<PubMsg>, interval: Duration) {
    let mut next_tick = Instant::now() + interval;
    let do_publish = |edge: &mut Edge| -> Result<()> {
        let last = lock(&shared.latest)?.checkpoint.clone();
        if edge.size() == last.size && !lock(&shared.latest)?.signed.is_empty() {
            return Ok(());
        }
        let (cp, signed) = publish(
            &shared.layout.public,
            edge,
            &shared.signer,
            &shared.origin,
            &last,
            Some(&shared.layout.last_checkpoint),
        )?;
        let mut l = lock(&shared.latest)?;
        *l = Latest {
            checkpoint: cp,
            signed,
        };
        shared.published.notify_all();
        Ok(())
    };
    loop {
        let msg = rx.recv_timeout(next_tick.saturating_duration_since(Instant::now()));
        let result = match msg {
            Ok(PubMsg::Batch(entries)) => {
                for (e, h) in entries {
                    edge.push(e, h);
                }
                Ok(())
            }
            Ok(PubMsg::Publish(reply)) => {
                // Take everything already queued first, so the checkpoint covers it.
                let mut replies = vec![reply];
                while let Ok(m) = rx.try_recv() {
                    match m {
                        PubMsg::Batch(entries) => {
                            entries.into_iter().for_each(|(e, h)| edge.push(e, h))
                        }
                        PubMsg::Publish(r) => replies.push(r),
                    }
                }
                let r = do_publish(&mut edge);
                let failed = r.as_ref().err().map(ToString::to_string);
                for reply in replies {
                    let _ = reply.send(match &failed {
                        None => Ok(()),
                        Some(f) => Err(AuditError::Stopped(f.clone())),
                    });
                }
                failed.map_or(Ok(()), |f| Err(AuditError::Stopped(f)))
            }
            Err(RecvTimeoutError::Timeout) => {
                next_tick = Instant::now() + interval;
                do_publish(&mut edge)
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(e) = do_publish(&mut edge) {
                    shared.fail(e.to_string());
                }
                return;
            }
        };
        if let Err(e) = result {
            shared.fail(format!("publishing failed: {e}"));
            return;
        }
    }
}
