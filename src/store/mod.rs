//! The gateway's durable store: accepted messages, the duplicate index, case files and the
//! delivery outbox.
//!
//! This module owns what the gateway must remember between restarts, apart from the audit log:
//! which partner references it has already accepted (and the receipts it answered), what each
//! recipient still has to receive, and what is known of each case's progress. It is an
//! embedded [`redb`] database written by one thread that commits in groups: every write waits
//! until the transaction holding it is durable (`fsync`), and many concurrent writes share one
//! transaction, so durability costs one sync per group rather than one per message. The one
//! exception is the confirmation of an accepted message, which rides on the next synced commit
//! (and is settled again at start-up if a crash loses it).
//!
//! A delivery's body, which holds the message's personal data, is kept only while it may still
//! be needed: it is deleted once the delivery completes (pushed and confirmed, or acknowledged
//! from an inbox); the audit log holds the evidence of what was delivered.
//!
//! It knows nothing of transports, mappings or the audit log: the pipeline decides, the store
//! remembers.

mod rewrite;

pub use rewrite::{RewriteError, Rewritten};

use crate::pipeline::sequence::CaseFile;
use crate::write_queue::{WriteQueue, WriteQueueReceiver, write_queue};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// Accepted messages, by event id (`source` + `\n` + `id`).
const ACCEPTED: TableDefinition<&str, &[u8]> = TableDefinition::new("accepted");
/// Case files, by case id.
const CASES: TableDefinition<&str, &[u8]> = TableDefinition::new("cases");
/// Every delivery's metadata (JSON), by delivery id.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Every delivery's body, raw, by delivery id.
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Deliveries waiting in a pull inbox: (recipient, delivery id).
const INBOX: TableDefinition<(&str, u64), ()> = TableDefinition::new("inbox");
/// Push deliveries waiting for an attempt: (channel code, recipient, due time in ms since the
/// epoch, delivery id), so that each channel's worker finds its own without reading the
/// other's, and takes each recipient's in turn: a recipient with a backlog does not hold up
/// the others (see [`Store::due_for`]).
const DUE: TableDefinition<(u8, &str, u64, u64), ()> = TableDefinition::new("due_by_recipient");
/// The due index of earlier versions, keyed without the recipient: moved into [`DUE`] at open.
const DUE_BY_CHANNEL: TableDefinition<(u8, u64, u64), ()> = TableDefinition::new("due_by_channel");
/// The due index of still earlier versions, keyed without the channel: moved into [`DUE`] at
/// open.
const DUE_UNKEYED: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
/// Dead-lettered deliveries, by delivery id.
const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead");
/// Accepted messages not yet confirmed against the audit log, by key.
const UNCONFIRMED: TableDefinition<&str, ()> = TableDefinition::new("unconfirmed");
/// Deliveries created dead (the gateway could not write the event for their recipient) whose
/// `dead_lettered` audit entry is not yet known to be in the log: the start audits them.
const OWED: TableDefinition<u64, ()> = TableDefinition::new("dead_letter_audit_owed");
/// Changes of format made to the store at open, by name, each made once.
const FORMAT: TableDefinition<&str, ()> = TableDefinition::new("format");
/// Counts the start keeps between runs (see [`Store::erasures_withdrawn`]).
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");
/// The number of erased cases whose deliveries the start has withdrawn.
const ERASURES_WITHDRAWN: &str = "erasures-withdrawn";
/// The number of erased cases whose case files the start has deleted.
const CASE_FILES_FORGOTTEN: &str = "case-files-forgotten";
/// The number of erased cases whose ids the start has taken off the store's records.
const CASE_IDS_FORGOTTEN: &str = "case-ids-forgotten";
/// The `marks` key of the highest audit log index a confirmed record names.
const HIGHEST_LOG_INDEX: &str = "highest-log-index";
/// The `marks` key of the size of the largest checkpoint the audit log had signed, as the
/// gateway last noted it (see [`Store::note_signed_log_size`]).
const SIGNED_LOG_SIZE: &str = "signed-log-size";
/// The change of [`FORMAT`] that deleted the bodies earlier versions kept of completed
/// deliveries (see [`delete_completed_bodies`]).
const COMPLETED_BODIES_DELETED: &str = "completed-bodies-deleted";
/// The change of [`FORMAT`] that forgot what the messages of cases erased under earlier
/// versions said (see [`forget_erased_content`]).
const ERASED_CONTENT_FORGOTTEN: &str = "erased-content-forgotten";

/// The [`AcceptedRecord::content`] of a message whose case was erased, in place of its
/// digest (see [`Store::forget_case_ids`]).
pub const FORGOTTEN_CONTENT: &str = "forgotten";

/// The store failed: the message or change it was asked to keep is not durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("store: {0}")]
    Database(String),
    /// The store is shut down.
    #[error("store: closed")]
    Closed,
    /// The record asked for does not exist.
    #[error("store: no such {0}")]
    NotFound(&'static str),
    /// The change asked for cannot be made to this record; the reason says why.
    #[error("{0}")]
    Refused(String),
    /// A stored record could not be read back (damaged, or not in this version's format).
    /// Only the writes that read it fail; the others of their group are committed.
    #[error("store: a stored record could not be read: {0}")]
    Unreadable(String),
}

fn db_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

fn unreadable(error: serde_json::Error) -> StoreError {
    StoreError::Unreadable(why_unreadable(&error))
}

/// Why a stored record could not be read, without its content: serde_json's own message may
/// quote a value of the record (`invalid type: string "…"`), records hold personal data, and
/// the reason goes to the log and into `503` answers.
fn why_unreadable(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Io => "it could not be read",
        Category::Syntax => "it is not well-formed JSON",
        Category::Data => "its fields are not those of a record of this version",
        Category::Eof => "it is cut short",
    };
    format!("{what} (line {}, column {})", error.line(), error.column())
}

/// A store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// What [`Store::forget_case_ids`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForgottenCaseIds {
    /// Accepted messages' records whose case id was taken off.
    pub records: usize,
    /// Deliveries' records whose case id was taken off.
    pub deliveries: usize,
    /// Accepted messages' records that could not be read back, passed over.
    pub unreadable_records: usize,
    /// Deliveries whose record could not be read back, passed over.
    pub unreadable_deliveries: Vec<u64>,
}

/// What the gateway answered when it accepted a message: kept so that a duplicate gets the
/// same answer (the same log index and leaf hash; after a crash that lost the confirmation,
/// a receipt issued again for the same entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedRecord {
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The CloudEvents `source`.
    pub source: String,
    /// The sending partner.
    pub sender: String,
    /// The event type.
    pub event_type: String,
    /// Whether the audit log's `accepted` entry is known to be durable, and the fields below
    /// filled. A record is written before that is known (the two writes run at once), and
    /// confirmed after; a record left unconfirmed by a crash is settled at start-up against
    /// the audit log (see [`Store::unconfirmed`]).
    pub confirmed: bool,
    /// The audit log entry of the acceptance.
    pub log_index: u64,
    /// Its RFC 6962 leaf hash, hex: known before the entry is durable, so that an
    /// unconfirmed record is settled against its own attempt's entry and no other. Empty in
    /// unconfirmed records written before it was kept.
    pub leaf_hash: String,
    /// The signed receipt, in its text form.
    pub receipt: String,
    /// The deliveries made for it.
    #[serde(default)]
    pub deliveries: Vec<u64>,
    /// The case the event concerns.
    pub case_id: Option<String>,
    /// The facts this message put on its case's file that were not yet firm there: they are
    /// provisional until it is confirmed, and taken off again if it is withdrawn (see
    /// [`CaseFile`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub case_facts: Vec<String>,
    /// The recipients the sender's acknowledgement names: those the event alone routes it to
    /// (see [`crate::registry::Registry::recipients_told_to_sender`]). The audit entry names
    /// every recipient.
    pub recipients: Vec<String>,
    /// When it was accepted, RFC 3339.
    pub accepted_at: String,
    /// A digest of what the message says (its type and data, see
    /// [`crate::pipeline::content_digest`]), by which a later message under the same source
    /// and reference is told a repeat from another message. Empty in records written before
    /// it was kept: those are taken for repeats. [`FORGOTTEN_CONTENT`] once the case was
    /// erased: no later message is taken for a repeat of it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    /// The hash of the mapping that read the message: a message read by another version of
    /// its mapping may say the same in other words, and is not compared.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_mapping: String,
    /// The reason codes of the `anomaly` entries its acceptance is logged with (they follow
    /// the `accepted` entry): a settlement writes those the log does not hold before it
    /// confirms the message, so that no message is confirmed without its anomalies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
}

impl AcceptedRecord {
    /// Replaces the digest of what the message said with [`FORGOTTEN_CONTENT`], once its case
    /// is erased: the digest, unkeyed, would confirm a guess of it (an allowance of one of a few
    /// amounts, a refusal of one of a few reasons).
    fn forget_content(&mut self) {
        self.content = FORGOTTEN_CONTENT.into();
        self.content_mapping.clear();
    }

    /// The duplicate-detection key: the sender's source and its own reference.
    pub fn key(source: &str, event_id: &str) -> String {
        format!("{source}\n{event_id}")
    }
}

/// How a delivery reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The recipient pulls it from `GET /v1/inbox`.
    Inbox,
    /// The gateway POSTs it to the recipient's endpoint.
    Webhook,
    /// The gateway publishes it on the recipient's queue.
    Amqp,
}

impl Channel {
    /// The channel's name, as the metrics and the admin listener write it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Inbox => "inbox",
            Channel::Webhook => "webhook",
            Channel::Amqp => "amqp",
        }
    }

    /// The channel's code in the due index (stable: it is on disk).
    fn due_code(self) -> u8 {
        match self {
            Channel::Inbox => 0,
            Channel::Webhook => 1,
            Channel::Amqp => 2,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting: in the inbox, or due for a push attempt.
    Pending,
    /// Handed to the recipient (pushed and confirmed, or fetched from the inbox).
    Delivered,
    /// Acknowledged by the recipient (inbox only).
    Acknowledged,
    /// Given up after too many attempts, or refused for good by the recipient.
    Dead,
    /// A dead letter an operator discarded: it will not be delivered. Its body is deleted.
    Discarded,
}

/// One message for one recipient, in the recipient's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The delivery id, unique in the store.
    pub id: u64,
    /// The event it carries.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The event's source.
    pub source: String,
    /// The case, for the audit trail of the delivery.
    pub case_id: Option<String>,
    /// The recipient partner id.
    pub recipient: String,
    /// How it is delivered.
    pub channel: Channel,
    /// The body, in the recipient's format. Kept in its own table, raw.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// The outbound mapping that wrote it.
    pub mapping_id: String,
    /// That mapping's hash when it wrote the body (`sha256:<hex>`; empty when the delivery
    /// has no body from a mapping, and in records of earlier versions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mapping_hash: String,
    /// The fields withheld from the recipient.
    pub withheld: Vec<String>,
    /// Where it stands.
    pub state: DeliveryState,
    /// Push attempts made so far.
    pub attempts: u32,
    /// When the next push attempt is due, in ms since the epoch.
    pub due_ms: u64,
    /// The last failure, as a short code.
    pub last_error: Option<String>,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

impl Delivery {
    /// Whether the store holds its body: it is waiting, or a dead letter that can be put back
    /// in line. The bodies of completed deliveries are deleted, and some dead letters never
    /// had one (see [`DeliveryUpdate::Redeliver`]).
    pub fn holds_body(&self) -> bool {
        match self.state {
            DeliveryState::Pending => true,
            DeliveryState::Dead => check_redeliverable(self).is_ok(),
            DeliveryState::Delivered | DeliveryState::Acknowledged => !completed(self),
            DeliveryState::Discarded => false,
        }
    }
}

/// The largest page of dead letters read at once: the admin listener's `GET /dead-letters`
/// (and its default), and the start's withdrawal of erased cases' deliveries.
pub const DEAD_LETTER_PAGE: usize = 1000;

/// The most body bytes one inbox page holds, unless its first message alone is larger: a page
/// of the most messages (500) of the largest bodies would otherwise be hundreds of MiB, held
/// in memory, in several copies, until the client has read it.
pub const INBOX_PAGE_BYTES: usize = 8 << 20;

/// One page of an inbox (see [`Store::inbox`]).
#[derive(Debug, Default)]
pub struct InboxPage {
    /// The deliveries, oldest first, with their bodies.
    pub deliveries: Vec<Delivery>,
    /// The last delivery id the page looked at, read or not: where the next page starts after.
    pub last_seen: Option<u64>,
    /// Deliveries whose records cannot be read back (damaged), with why: passed over, so that
    /// one does not stop the inbox, and left in it, for the caller to report.
    pub unreadable: Vec<(u64, String)>,
    /// Deliveries the caller asked to leave out (see [`Store::inbox_leaving_out`]): passed
    /// over without counting against the page, and left in the inbox.
    pub left_out: Vec<u64>,
}

/// What a push worker should attempt, and when to look again (see [`Store::due_for`]).
#[derive(Debug, Default)]
pub struct DueLook {
    /// The deliveries to attempt now, with their bodies.
    pub taken: Vec<Delivery>,
    /// The earliest time, in ms since the epoch, at which a delivery of a recipient with
    /// allowance left falls due, if one is waiting. Until then, only an attempt's outcome, a
    /// delivery held back let go, or a new delivery changes what there is to attempt.
    pub next_ms: Option<u64>,
    /// Due deliveries whose records cannot be read back (damaged), with why: left in line,
    /// for the worker to set aside and report, so that they do not stop the others.
    pub unreadable: Vec<(u64, String)>,
    /// The recipient of the last delivery taken, if any: where the next look's turn starts
    /// after.
    pub last: Option<String>,
}

/// The error code of a delivery created dead because the gateway could not write the event
/// for its recipient: it has no body, and cannot be redelivered.
pub const UNWRITABLE: &str = "encode-failed";

/// The error code of a delivery created dead because the registry does not put in force the
/// recipient's mapping for the event: it has no body, and cannot be redelivered.
pub const NOT_IN_FORCE: &str = "mapping-not-in-force";

/// The error code of a delivery withdrawn because its case was erased: its body is deleted,
/// and it cannot be redelivered.
pub const CASE_ERASED: &str = "case-erased";

/// A delivery to create, before the store gives it an id.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The recipient.
    pub recipient: String,
    /// How it is delivered.
    pub channel: Channel,
    /// The body.
    pub body: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// The outbound mapping.
    pub mapping_id: String,
    /// Its hash.
    pub mapping_hash: String,
    /// The withheld fields.
    pub withheld: Vec<String>,
    /// Set when the gateway could not write the event for this recipient: the delivery is
    /// recorded straight away as a dead letter with this error code.
    pub unwritable: Option<String>,
}

/// The outcome of recording an accepted message.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// Recorded now, with these deliveries.
    New(Vec<Delivery>),
    /// The same source and reference were already accepted: nothing was written.
    Duplicate(Box<AcceptedRecord>),
}

/// A change to a delivery.
#[derive(Debug, Clone)]
pub enum DeliveryUpdate {
    /// The recipient has it (push confirmed, or fetched from the inbox).
    Delivered,
    /// The recipient acknowledged it.
    Acknowledged,
    /// An attempt failed; try again at `due_ms`.
    Retry {
        /// The failure, a short code.
        error: String,
        /// When to try again, ms since the epoch.
        due_ms: u64,
    },
    /// Give up: move it to the dead letters.
    Dead {
        /// Why, a short code.
        error: String,
        /// Whether an attempt to send it ended here (counted in `attempts`), rather than a
        /// finding that it cannot be sent at all (its recipient has no endpoint on its
        /// channel).
        attempted: bool,
    },
    /// Put a dead letter back in line, due now, on `channel`: the recipient's delivery mode
    /// as the registry gives it now, which may not be the one its message was accepted under
    /// (its body, written through the recipient's mapping, is the same on every channel).
    Redeliver {
        /// The channel it waits on from now.
        channel: Channel,
    },
    /// Give a dead letter up for good, at an operator's request: out of the dead letters,
    /// its body deleted ([`DeliveryState::Discarded`]). Refused while its `dead_lettered`
    /// entry is owed (see [`Store::owed_audits`]), so that the log says it died first.
    Discard,
    /// Its case was erased: take it out of line without an attempt, delete its body, and keep
    /// it as a dead letter that cannot be redelivered ([`CASE_ERASED`]).
    Erased,
    /// An attempt was made but could not be recorded (the audit log refused it): try again
    /// at `due_ms`, without counting the attempt or changing anything else. Only a delivery
    /// still waiting is moved.
    Postpone {
        /// When to try again, ms since the epoch.
        due_ms: u64,
    },
    /// The `dead_lettered` entry of a delivery created dead is in the audit log: nothing is
    /// owed for it any more (see [`Store::owed_audits`]). Changes nothing else.
    DeadLetterAudited,
}

/// The audit log entry that records an acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its index.
    pub log_index: u64,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
    /// The signed receipt, text form.
    pub receipt: String,
}

enum Write {
    Confirm {
        key: String,
        /// When set, the unconfirmed record of the attempt to confirm: a settlement may outlive
        /// its request (see [`Store::abandon`]), and confirms nothing if another attempt of the
        /// message was recorded since. The pipeline's own confirmation holds the message's
        /// turn, and needs no such check.
        attempt: Option<Box<AcceptedRecord>>,
        record: Vec<u8>,
        /// The audit log index of the message's acceptance entry, which the record names.
        log_index: u64,
        /// The case whose provisional facts this message stands for, if any.
        case: Option<String>,
        release: Vec<Release>,
        durable: bool,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Deletes a case's file.
    ForgetCase {
        case_id: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Raises the mark of the audit log's signed size.
    SignedLogSize {
        size: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Abandon {
        /// The record of the attempt to withdraw, as it was written.
        attempt: Box<AcceptedRecord>,
        reply: oneshot::Sender<Result<()>>,
    },
    Accept {
        key: String,
        record: Vec<u8>,
        /// The case, and the facts to record on its file.
        case: Option<(String, Vec<String>)>,
        deliveries: Vec<Prepared>,
        made: Vec<Delivery>,
        reply: oneshot::Sender<Result<Recorded>>,
    },
    Update {
        id: u64,
        update: DeliveryUpdate,
        reply: oneshot::Sender<Result<Delivery>>,
    },
}

/// A delivery serialised by its caller, ready for the writer.
struct Prepared {
    id: u64,
    metadata: Vec<u8>,
    body: Vec<u8>,
    dead: bool,
}

/// Where a waiting delivery sits in its channel's index: put there when its message is
/// confirmed (or it is due again), taken out when it leaves the line.
#[derive(Clone)]
struct Release {
    id: u64,
    channel: Channel,
    recipient: String,
    due_ms: u64,
}

impl Release {
    fn of(d: &Delivery) -> Release {
        Release {
            id: d.id,
            channel: d.channel,
            recipient: d.recipient.clone(),
            due_ms: d.due_ms,
        }
    }
}

/// The store. Cheap to share behind an `Arc`.
///
/// Callers serialise what they write on their own threads; the single writer thread only
/// checks duplicates, inserts and commits, so that it does not become the bottleneck.
pub struct Store {
    db: Arc<Database>,
    /// The file it was opened from.
    path: std::path::PathBuf,
    /// Whether [`Store::open`] created the file.
    created: bool,
    tx: Option<WriteQueue<Write>>,
    writer: Option<JoinHandle<()>>,
    pending_deliveries: Arc<AtomicU64>,
    next_id: AtomicU64,
    confirming: Confirming,
    queued_facts: QueuedFacts,
    /// Set while the writer's commits fail, cleared by the next that succeeds.
    failing: Arc<AtomicBool>,
    /// Notified once a commit has put push deliveries in line (see [`Store::released`]).
    released: Arc<Notify>,
    /// Held by a test to stop the writer before it applies its next group.
    #[cfg(test)]
    hold: Arc<Mutex<()>>,
    /// Set by a test to make the writer's next group fail as a database error would.
    #[cfg(test)]
    fail_next_group: Arc<AtomicBool>,
}

/// Confirmations queued by [`Store::confirm_later`] and not committed yet, by key: until the
/// writer commits one, [`Store::accepted`] answers from here, so that a duplicate or a receipt
/// asked for in the meantime gets the confirmed record (with its log entry), never the
/// unconfirmed one on disk.
type Confirming = Arc<Mutex<HashMap<String, AcceptedRecord>>>;

/// The facts that accepted messages queued with [`Store::queue_accepted`] put on their case's
/// file, by case, each with its message's key, until the writer has committed them (or failed
/// to): [`Store::case_file`] adds them to the file on disk, so that the next message of a case
/// is checked against every message of the case queued before it, not only those committed.
type QueuedFacts = Arc<Mutex<FactsByCase>>;

/// Per case, each queued message's key and the facts it puts on the file.
type FactsByCase = HashMap<String, Vec<(String, Vec<String>)>>;

fn lock_queued(queued: &QueuedFacts) -> std::sync::MutexGuard<'_, FactsByCase> {
    // Entries are only pushed and taken out whole; a panic elsewhere cannot leave one
    // half-written, so a poisoned lock is still sound.
    queued.lock().unwrap_or_else(|p| p.into_inner())
}

/// An accepted message queued for the writer ([`Store::queue_accepted`]).
#[must_use = "the record is not known to be written until `recorded` answers"]
pub struct QueuedRecord(oneshot::Receiver<Result<Recorded>>);

impl QueuedRecord {
    /// Waits until the record is committed, or refused.
    pub async fn recorded(self) -> Result<Recorded> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The case whose file holds facts that `record`'s message put there provisionally.
fn provisional_case(record: &AcceptedRecord) -> Option<String> {
    record
        .case_id
        .clone()
        .filter(|_| !record.case_facts.is_empty())
}

fn confirmed(record: &AcceptedRecord, entry: LogEntry) -> AcceptedRecord {
    AcceptedRecord {
        confirmed: true,
        log_index: entry.log_index,
        leaf_hash: entry.leaf_hash,
        receipt: entry.receipt,
        ..record.clone()
    }
}

/// The write that withdraws the attempt `record` records, and where its outcome comes.
fn abandoning(record: &AcceptedRecord) -> (Write, oneshot::Receiver<Result<()>>) {
    let (reply, rx) = oneshot::channel();
    let write = Write::Abandon {
        attempt: Box::new(record.clone()),
        reply,
    };
    (write, rx)
}

/// The most writes committed in one transaction.
const MAX_GROUP: usize = 512;

/// The most writes queued for the writer. The HTTP workers' tasks wait for room without
/// blocking their thread (see [`crate::write_queue`]).
const WRITE_QUEUE: usize = 4096;

/// The page cache of the database.
const CACHE_BYTES: usize = 32 << 20;

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens (or creates) the store in file `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent() {
            crate::durable_folders::create_folders(parent).map_err(db_error)?;
        }
        // An empty file (emptied, or a copy cut short) is made into a new store as a missing
        // one is, and said to be new, so that the start warns of it beside a log with entries.
        let created = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        // A small page cache: the working set is the recent outbox, and memory is bounded.
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(db_error)?,
        );
        let (next_id, pending) = {
            let w = db.begin_write().map_err(db_error)?;
            let mut next = 1;
            let mut pending = 0;
            migrate_due(&w)?;
            delete_completed_bodies(&w)?;
            forget_erased_content(&w)?;
            {
                for table in [ACCEPTED, CASES] {
                    w.open_table(table).map_err(db_error)?;
                }
                w.open_table(UNCONFIRMED).map_err(db_error)?;
                w.open_table(BODIES).map_err(db_error)?;
                let deliveries = w.open_table(DELIVERIES).map_err(db_error)?;
                if let Some((last, _)) = deliveries.last().map_err(db_error)? {
                    next = last.value() + 1;
                }
                pending += w
                    .open_table(INBOX)
                    .map_err(db_error)?
                    .len()
                    .map_err(db_error)?;
                pending += w
                    .open_table(DUE)
                    .map_err(db_error)?
                    .len()
                    .map_err(db_error)?;
                w.open_table(DEAD).map_err(db_error)?;
                w.open_table(OWED).map_err(db_error)?;
            }
            w.commit().map_err(db_error)?;
            (next, pending)
        };
        // A new file's name is durable once its folder is synced: a store lost in a crash
        // would take every message answered since with it.
        if created {
            crate::durable_folders::sync_parent(path).map_err(db_error)?;
        }
        let pending_deliveries = Arc::new(AtomicU64::new(pending));
        let confirming = Confirming::default();
        let queued_facts = QueuedFacts::default();
        let failing = Arc::new(AtomicBool::new(false));
        let released = Arc::new(Notify::new());
        #[cfg(test)]
        let hold = Arc::new(Mutex::new(()));
        #[cfg(test)]
        let fail_next_group = Arc::new(AtomicBool::new(false));
        let (tx, rx) = write_queue(WRITE_QUEUE);
        let writer = Writer {
            db: db.clone(),
            pending: pending_deliveries.clone(),
            confirming: confirming.clone(),
            queued_facts: queued_facts.clone(),
            failing: failing.clone(),
            released: released.clone(),
            failures: Mutex::new(RepeatedFailures::default()),
            #[cfg(test)]
            hold: hold.clone(),
            #[cfg(test)]
            fail_next_group: fail_next_group.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(db_error)?;
        Ok(Store {
            db,
            path: path.to_owned(),
            created,
            tx: Some(tx),
            writer: Some(writer),
            pending_deliveries,
            next_id: AtomicU64::new(next_id),
            confirming,
            queued_facts,
            failing,
            released,
            #[cfg(test)]
            hold,
            #[cfg(test)]
            fail_next_group,
        })
    }

    /// Whether [`Store::open`] created the store's file, rather than opening one there.
    pub fn created_now(&self) -> bool {
        self.created
    }

    /// Notified (`notify_waiters`) each time a commit has put push deliveries in line: the
    /// confirmation of an accepted message, which [`Store::confirm_later`] only queues. The
    /// push workers wait on it, so that they find those deliveries due when they wake.
    pub fn released(&self) -> Arc<Notify> {
        self.released.clone()
    }

    /// Queues a write, waiting without blocking the thread while the queue is full.
    async fn send(&self, write: Write) -> Result<()> {
        self.queue()?
            .send(write)
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a write that nobody waits for, without waiting for room: one that finds the
    /// queue full is handed to a task of its own (see [`WriteQueue::send_detached`]), so that
    /// dropping the caller's future cannot lose it.
    fn send_detached(&self, write: Write) -> Result<()> {
        self.queue()?
            .send_detached(write)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a write from a thread that may block.
    fn send_blocking(&self, write: Write) -> Result<()> {
        self.queue()?
            .send_blocking(write)
            .map_err(|_| StoreError::Closed)
    }

    fn queue(&self) -> Result<&WriteQueue<Write>> {
        self.tx.as_ref().ok_or(StoreError::Closed)
    }

    /// The record of an accepted message, if its source and reference were seen: confirmed
    /// (with its audit log entry) once its confirmation is queued, even before the writer has
    /// committed it.
    pub fn accepted(&self, source: &str, event_id: &str) -> Result<Option<AcceptedRecord>> {
        let key = AcceptedRecord::key(source, event_id);
        if let Some(record) = self.confirming().get(&key) {
            return Ok(Some(record.clone()));
        }
        let r = self.db.begin_read().map_err(db_error)?;
        let table = r.open_table(ACCEPTED).map_err(db_error)?;
        table
            .get(key.as_str())
            .map_err(db_error)?
            .map(|v| serde_json::from_slice(v.value()).map_err(unreadable))
            .transpose()
    }

    /// Accepted messages whose audit entry was not confirmed (a crash came between the two
    /// writes). The caller settles each against the audit log, with [`Store::confirm`] or
    /// [`Store::abandon`], before serving.
    pub fn unconfirmed(&self) -> Result<Vec<AcceptedRecord>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let unconfirmed = r.open_table(UNCONFIRMED).map_err(db_error)?;
        let accepted = r.open_table(ACCEPTED).map_err(db_error)?;
        let mut found = Vec::new();
        for item in unconfirmed.iter().map_err(db_error)? {
            let (key, _) = item.map_err(db_error)?;
            if let Some(v) = accepted.get(key.value()).map_err(db_error)? {
                // Named, so that the operator can find the record the start stopped at.
                let (source, event_id) = key.value().split_once('\n').unwrap_or(("", ""));
                found.push(serde_json::from_slice(v.value()).map_err(|e| {
                    StoreError::Unreadable(format!(
                        "the accepted record of event {event_id:?} from {source}: {}",
                        why_unreadable(&e)
                    ))
                })?);
            }
        }
        Ok(found)
    }

    /// Confirms an accepted message once its audit entry is durable: fills in the entry and
    /// releases its deliveries. The change is committed without a sync of its own (it rides
    /// on the next synced commit, or is settled again at start-up after a crash), and the call
    /// does not wait for it. Until it is committed, [`Store::accepted`] answers with the
    /// confirmed record; if its commit fails, the store reports itself not ready
    /// ([`Store::is_open`]) and the record is settled at the next start.
    pub fn confirm_later(
        &self,
        record: &AcceptedRecord,
        entry: LogEntry,
        deliveries: &[Delivery],
    ) -> Result<()> {
        let log_index = entry.log_index;
        let record = confirmed(record, entry);
        let key = AcceptedRecord::key(&record.source, &record.event_id);
        let bytes = serde_json::to_vec(&record).map_err(db_error)?;
        let case = provisional_case(&record);
        self.confirming().insert(key.clone(), record);
        let sent = self.send_detached(Write::Confirm {
            key: key.clone(),
            attempt: None,
            record: bytes,
            log_index,
            case,
            release: deliveries
                .iter()
                .filter(|d| d.state == DeliveryState::Pending)
                .map(Release::of)
                .collect(),
            durable: false,
            reply: None,
        });
        if sent.is_err() {
            self.confirming().remove(&key);
        }
        sent
    }

    fn confirming(&self) -> std::sync::MutexGuard<'_, HashMap<String, AcceptedRecord>> {
        // The map is only inserted into and removed from; a panic elsewhere cannot leave it
        // half-changed, so a poisoned lock is still sound.
        self.confirming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Confirms an accepted message durably and waits (the settling of unconfirmed messages);
    /// returns the confirmed record.
    pub fn confirm_blocking(
        &self,
        record: &AcceptedRecord,
        entry: LogEntry,
    ) -> Result<AcceptedRecord> {
        let mut release = Vec::new();
        for id in &record.deliveries {
            if let Some(d) = self.delivery_metadata(*id)?
                && d.state == DeliveryState::Pending
            {
                release.push(Release::of(&d));
            }
        }
        let attempt = Box::new(record.clone());
        let record = confirmed(record, entry);
        let (reply, rx) = oneshot::channel();
        self.send_blocking(Write::Confirm {
            key: AcceptedRecord::key(&record.source, &record.event_id),
            attempt: Some(attempt),
            record: serde_json::to_vec(&record).map_err(db_error)?,
            log_index: record.log_index,
            case: provisional_case(&record),
            release,
            durable: true,
            reply: Some(reply),
        })?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)??;
        Ok(record)
    }

    /// Removes an accepted message that never reached the audit log, with its held
    /// deliveries, durably: the attempt `record` records, and only it. When the store holds
    /// another attempt of the same message by then, nothing is removed and the answer is
    /// [`StoreError::Refused`].
    ///
    /// A settlement runs on a blocking thread and outlives a request that is dropped while it
    /// waits; a later attempt of the same message may meanwhile have settled the first and
    /// recorded itself anew. Withdrawing by key alone would then remove the later attempt's
    /// record and deliveries while its acceptance goes on to the log and is answered `202`.
    pub async fn abandon(&self, record: &AcceptedRecord) -> Result<()> {
        let (write, rx) = abandoning(record);
        self.send(write).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Blocking form of [`Store::abandon`].
    pub fn abandon_blocking(&self, record: &AcceptedRecord) -> Result<()> {
        let (write, rx) = abandoning(record);
        self.send_blocking(write)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// The case file of a case (empty if the case is new), with the provisional facts of the
    /// accepted messages queued for it and not committed yet.
    pub fn case_file(&self, case_id: &str) -> Result<CaseFile> {
        // The queued facts are read first: the writer takes them out only once their commit
        // is visible, so a fact is in one or the other (or both) whenever it is read.
        let queued = lock_queued(&self.queued_facts)
            .get(case_id)
            .cloned()
            .unwrap_or_default();
        let r = self.db.begin_read().map_err(db_error)?;
        let mut file = read_case_file(&r.open_table(CASES).map_err(db_error)?, case_id)?;
        for (key, facts) in &queued {
            file.record(key, facts);
        }
        Ok(file)
    }

    /// Records an accepted message, the facts it puts on its case's file
    /// (`record.case_facts`, provisional until it is confirmed) and its deliveries, durably.
    /// If the same source and reference were recorded meanwhile, writes nothing and returns
    /// the first record.
    ///
    /// The deliveries are written but not released to their channels until the message is
    /// confirmed ([`Store::confirm_later`]). `record.deliveries` is filled in. The deliveries
    /// returned carry no body.
    pub async fn record_accepted(
        &self,
        record: &mut AcceptedRecord,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Recorded> {
        self.queue_accepted(record, deliveries)?.recorded().await
    }

    /// Queues what [`Store::record_accepted`] writes, without waiting: the facts it puts on
    /// its case's file are in [`Store::case_file`] from now on.
    pub fn queue_accepted(
        &self,
        record: &mut AcceptedRecord,
        deliveries: Vec<NewDelivery>,
    ) -> Result<QueuedRecord> {
        let now = now_ms();
        let created_at = now_rfc3339();
        let mut prepared = Vec::with_capacity(deliveries.len());
        let mut made = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let dead = d.unwritable.is_some();
            let delivery = Delivery {
                id,
                event_id: record.event_id.clone(),
                event_type: record.event_type.clone(),
                source: record.source.clone(),
                case_id: record.case_id.clone(),
                recipient: d.recipient,
                channel: d.channel,
                body: Vec::new(),
                content_type: d.content_type,
                mapping_id: d.mapping_id,
                mapping_hash: d.mapping_hash,
                withheld: d.withheld,
                state: if dead {
                    DeliveryState::Dead
                } else {
                    DeliveryState::Pending
                },
                attempts: 0,
                due_ms: now,
                last_error: d.unwritable,
                created_at: created_at.clone(),
            };
            prepared.push(Prepared {
                id,
                metadata: serde_json::to_vec(&delivery).map_err(db_error)?,
                body: d.body,
                dead,
            });
            made.push(delivery);
        }
        record.confirmed = false;
        record.deliveries = made.iter().map(|d| d.id).collect();
        let (reply, rx) = oneshot::channel();
        let key = AcceptedRecord::key(&record.source, &record.event_id);
        let case = provisional_case(record).map(|case| (case, record.case_facts.clone()));
        let bytes = serde_json::to_vec(&*record).map_err(db_error)?;
        if let Some((case_id, facts)) = &case {
            lock_queued(&self.queued_facts)
                .entry(case_id.clone())
                .or_default()
                .push((key.clone(), facts.clone()));
        }
        // Queued at once even when the queue is full (then by a task of its own): the audit
        // log's entry for the message is written beside this record, and a caller dropped
        // while it waited for room would leave that entry with no record to settle it against.
        let sent = self.send_detached(Write::Accept {
            key: key.clone(),
            record: bytes,
            case: case.clone(),
            deliveries: prepared,
            made,
            reply,
        });
        if sent.is_err()
            && let Some((case_id, _)) = &case
        {
            forget_queued(&self.queued_facts, case_id, &key);
        }
        sent.map(|()| QueuedRecord(rx))
    }

    /// Whether delivery `id` is waiting in `recipient`'s inbox (fetched or not, not yet
    /// acknowledged).
    pub fn in_inbox(&self, recipient: &str, id: u64) -> Result<bool> {
        let r = self.db.begin_read().map_err(db_error)?;
        let inbox = r.open_table(INBOX).map_err(db_error)?;
        Ok(inbox.get((recipient, id)).map_err(db_error)?.is_some())
    }

    /// Changes a delivery, durably, and returns it as it now stands (without its body).
    pub async fn update(&self, id: u64, update: DeliveryUpdate) -> Result<Delivery> {
        let (reply, rx) = oneshot::channel();
        self.send(Write::Update { id, update, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A delivery, with its body.
    pub fn delivery(&self, id: u64) -> Result<Option<Delivery>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let bodies = r.open_table(BODIES).map_err(db_error)?;
        read_delivery(&deliveries, Some(&bodies), id)
    }

    /// The dead letter `id`, without its body, if [`DeliveryUpdate::Redeliver`] would take it:
    /// `NotFound` when it is not a dead letter, `Refused` when it has no body. The update checks
    /// again, so a redelivery raced by another stays refused.
    pub fn redeliverable(&self, id: u64) -> Result<Delivery> {
        let d = self
            .delivery_metadata(id)?
            .ok_or(StoreError::NotFound("delivery"))?;
        check_redeliverable(&d)?;
        Ok(d)
    }

    /// The dead letter `id`, without its body, if [`DeliveryUpdate::Discard`] would take it:
    /// `NotFound` when it is not a dead letter, `Refused` while its `dead_lettered` entry is
    /// owed. The update checks again.
    pub fn discardable(&self, id: u64) -> Result<Delivery> {
        let r = self.db.begin_read().map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let owed = r.open_table(OWED).map_err(db_error)?;
        let d = read_delivery(&deliveries, None, id)?.ok_or(StoreError::NotFound("delivery"))?;
        check_discardable(&d, owed.get(id).map_err(db_error)?.is_some())?;
        Ok(d)
    }

    /// A delivery, without its body.
    pub fn delivery_metadata(&self, id: u64) -> Result<Option<Delivery>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        read_delivery(&deliveries, None, id)
    }

    /// The recipients with deliveries in their inbox (listed or not, not acknowledged), in
    /// order, whether or not the registry still gives them an inbox.
    pub fn inbox_recipients(&self) -> Result<Vec<String>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let inbox = r.open_table(INBOX).map_err(db_error)?;
        let mut recipients: Vec<String> = Vec::new();
        loop {
            // From past the last recipient found: one look a recipient, however full its inbox.
            let next = match recipients.last() {
                None => inbox.first().map_err(db_error)?,
                Some(last) => inbox
                    .range::<(&str, u64)>((
                        std::ops::Bound::Excluded((last.as_str(), u64::MAX)),
                        std::ops::Bound::Unbounded,
                    ))
                    .map_err(db_error)?
                    .next()
                    .transpose()
                    .map_err(db_error)?,
            };
            let Some((key, _)) = next else { break };
            recipients.push(key.value().0.to_owned());
        }
        Ok(recipients)
    }

    /// Up to `limit` deliveries waiting in a recipient's inbox, oldest first, starting after
    /// delivery id `after`, with their bodies: no more than [`INBOX_PAGE_BYTES`] of bodies,
    /// unless the first alone is larger. A delivery whose record cannot be read is passed over
    /// and named in [`InboxPage::unreadable`].
    pub fn inbox(&self, recipient: &str, after: u64, limit: usize) -> Result<InboxPage> {
        self.inbox_leaving_out(recipient, after, limit, |_| false)
    }

    /// [`Store::inbox`], passing over the deliveries for which `leave_out` is true (named in
    /// [`InboxPage::left_out`]): they count neither against `limit` nor against the bodies'
    /// budget, so that however many there are, the page lists the others.
    pub fn inbox_leaving_out(
        &self,
        recipient: &str,
        after: u64,
        limit: usize,
        leave_out: impl Fn(&Delivery) -> bool,
    ) -> Result<InboxPage> {
        let r = self.db.begin_read().map_err(db_error)?;
        let inbox = r.open_table(INBOX).map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let bodies = r.open_table(BODIES).map_err(db_error)?;
        let mut page = InboxPage::default();
        let mut bytes = 0usize;
        let start = after.saturating_add(1);
        for item in inbox
            .range((recipient, start)..=(recipient, u64::MAX))
            .map_err(db_error)?
        {
            if page.deliveries.len() >= limit {
                break;
            }
            let id = item.map_err(db_error)?.0.value().1;
            // Decided on the record alone: the body of one left out is not read.
            let left_out = match read_delivery(&deliveries, None, id) {
                Ok(Some(d)) => leave_out(&d),
                _ => false,
            };
            if left_out {
                page.left_out.push(id);
                page.last_seen = Some(id);
                continue;
            }
            match read_delivery(&deliveries, Some(&bodies), id) {
                Ok(Some(d)) => {
                    bytes = bytes.saturating_add(d.body.len());
                    if bytes > INBOX_PAGE_BYTES && !page.deliveries.is_empty() {
                        break;
                    }
                    page.deliveries.push(d);
                }
                Ok(None) => {}
                Err(StoreError::Unreadable(why)) => page.unreadable.push((id, why)),
                Err(error) => return Err(error),
            }
            page.last_seen = Some(id);
        }
        Ok(page)
    }

    /// Up to `limit` push deliveries on `channel` due at or before `now_ms`, with their bodies,
    /// each recipient's earliest first (see [`Store::due_for`]).
    pub fn due(&self, channel: Channel, now_ms: u64, limit: usize) -> Result<Vec<Delivery>> {
        Ok(self
            .due_for(channel, now_ms, &HashSet::new(), limit, "", |_| usize::MAX)?
            .taken)
    }

    /// What a push worker on `channel` should attempt now: up to `room` deliveries due at or
    /// before `now_ms`, with their bodies, leaving out those in `skip` (attempts under way,
    /// which stay due until their outcome is recorded, and deliveries held back).
    ///
    /// The recipients are taken in turn, starting with the one after `start_after` (the
    /// [`DueLook::last`] of the worker's previous look, so that every recipient gets its turn
    /// at the room) and coming round; each gives its earliest first, and at most
    /// `allowance(recipient)` of them (what it may have in flight besides those it has), so
    /// that a recipient with a backlog, or one whose attempts hang, leaves room for the others.
    /// A recipient with no allowance costs one look in the index, whatever its backlog.
    pub fn due_for(
        &self,
        channel: Channel,
        now_ms: u64,
        skip: &HashSet<u64>,
        room: usize,
        start_after: &str,
        mut allowance: impl FnMut(&str) -> usize,
    ) -> Result<DueLook> {
        let r = self.db.begin_read().map_err(db_error)?;
        let due = r.open_table(DUE).map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let bodies = r.open_table(BODIES).map_err(db_error)?;
        let code = channel.due_code();
        let mut look = DueLook::default();
        // The least recipient id above `start_after`: the turn starts there, runs to the last
        // recipient, then comes round from the first up to `start_after` included.
        let first_turn = format!("{start_after}\0");
        let mut next_recipient = first_turn.clone();
        let mut came_round = false;
        while look.taken.len() < room {
            let recipient = match first_recipient_from(&due, code, &next_recipient)? {
                Some(r) if came_round && r >= first_turn => break,
                Some(r) => r,
                None if !came_round => {
                    came_round = true;
                    next_recipient.clear();
                    continue;
                }
                None => break,
            };
            let mut left = allowance(&recipient);
            if left > 0 {
                for item in due
                    .range(
                        (code, recipient.as_str(), 0, 0)
                            ..=(code, recipient.as_str(), u64::MAX, u64::MAX),
                    )
                    .map_err(db_error)?
                {
                    let (_, _, at, id) = item.map_err(db_error)?.0.value();
                    if at > now_ms {
                        look.next_ms = Some(look.next_ms.map_or(at, |next| next.min(at)));
                        break;
                    }
                    if skip.contains(&id) {
                        continue;
                    }
                    if left == 0 || look.taken.len() >= room {
                        break;
                    }
                    match read_delivery(&deliveries, Some(&bodies), id) {
                        Ok(Some(d)) => {
                            look.taken.push(d);
                            look.last = Some(recipient.clone());
                            left -= 1;
                        }
                        Ok(None) => {}
                        Err(StoreError::Unreadable(why)) => look.unreadable.push((id, why)),
                        Err(error) => return Err(error),
                    }
                }
            }
            // The least recipient above this one.
            next_recipient = recipient;
            next_recipient.push('\0');
        }
        Ok(look)
    }

    /// When the next push delivery on `channel` is due, if any is waiting: the store's tests
    /// look at the line with it. A look as of the epoch's start finds nothing due yet, and
    /// gives the earliest due time of every recipient's line.
    #[cfg(test)]
    fn next_due(&self, channel: Channel) -> Result<Option<u64>> {
        let look = self.due_for(channel, 0, &HashSet::new(), usize::MAX, "", |_| usize::MAX)?;
        Ok(look.next_ms)
    }

    /// The recipients with push deliveries waiting on `channel` (due now or later), in order.
    pub fn push_recipients(&self, channel: Channel) -> Result<Vec<String>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let due = r.open_table(DUE).map_err(db_error)?;
        let mut recipients = Vec::new();
        let mut from = String::new();
        // One look a recipient, however long its line.
        while let Some(recipient) = first_recipient_from(&due, channel.due_code(), &from)? {
            from = format!("{recipient}\0");
            recipients.push(recipient);
        }
        Ok(recipients)
    }

    /// Every push delivery waiting on `channel` for `recipient`, due now or later, without
    /// its body.
    pub fn waiting_on(&self, channel: Channel, recipient: &str) -> Result<Vec<Delivery>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let due = r.open_table(DUE).map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let code = channel.due_code();
        let mut found = Vec::new();
        for item in due
            .range((code, recipient, 0, 0)..=(code, recipient, u64::MAX, u64::MAX))
            .map_err(db_error)?
        {
            let (_, _, _, id) = item.map_err(db_error)?.0.value();
            found.extend(read_listed(&deliveries, id)?);
        }
        Ok(found)
    }

    /// Every delivery waiting to go out, in an inbox or due to be pushed (without bodies).
    pub fn waiting(&self) -> Result<Vec<Delivery>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let mut found = Vec::new();
        for id in waiting_ids(&r)? {
            found.extend(read_listed(&deliveries, id)?);
        }
        Ok(found)
    }

    /// The ids of the waiting deliveries and dead letters whose record cannot be read back
    /// (damaged): [`Store::waiting`] and [`Store::dead_letters`] pass them over, and a sweep
    /// that must see every one of them (the withdrawal of erased cases' deliveries) is not
    /// done while any is left.
    pub fn unreadable_listed(&self) -> Result<Vec<u64>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let dead = r.open_table(DEAD).map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let mut ids = waiting_ids(&r)?;
        for item in dead.iter().map_err(db_error)? {
            ids.push(item.map_err(db_error)?.0.value());
        }
        let mut unreadable = Vec::new();
        for id in ids {
            if let Err(StoreError::Unreadable(_)) = read_delivery(&deliveries, None, id) {
                unreadable.push(id);
            }
        }
        Ok(unreadable)
    }

    /// Up to `limit` dead-lettered deliveries (without bodies), by delivery id, starting after
    /// delivery id `after` (a page is [`DEAD_LETTER_PAGE`] at most where they are listed).
    pub fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<Delivery>> {
        self.listed(DEAD, after, limit)
    }

    /// Up to `limit` of the deliveries whose ids `list` holds (without bodies), by delivery
    /// id, starting after delivery id `after`.
    fn listed(
        &self,
        list: TableDefinition<u64, ()>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let ids = r.open_table(list).map_err(db_error)?;
        let deliveries = r.open_table(DELIVERIES).map_err(db_error)?;
        let mut found = Vec::new();
        for item in ids.range(after.saturating_add(1)..).map_err(db_error)? {
            if found.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(db_error)?;
            found.extend(read_listed(&deliveries, key.value())?);
        }
        Ok(found)
    }

    /// The deliveries created dead whose `dead_lettered` audit entry is not known to be in the
    /// log (without bodies): the append that follows their message's confirmation failed, or
    /// a crash came first. The start audits them.
    pub fn owed_audits(&self) -> Result<Vec<Delivery>> {
        self.listed(OWED, 0, usize::MAX)
    }

    /// Whether delivery `id`, created dead, is still owed its `dead_lettered` audit entry.
    pub fn dead_letter_audit_owed(&self, id: u64) -> Result<bool> {
        let r = self.db.begin_read().map_err(db_error)?;
        let owed = r.open_table(OWED).map_err(db_error)?;
        Ok(owed.get(id).map_err(db_error)?.is_some())
    }

    /// How many deliveries are dead letters, without reading them (the metrics' gauge).
    pub fn dead_letter_count(&self) -> Result<u64> {
        let r = self.db.begin_read().map_err(db_error)?;
        let dead = r.open_table(DEAD).map_err(db_error)?;
        dead.len().map_err(db_error)
    }

    /// The ids of the cases that have a case file, in order.
    pub fn cases_on_file(&self) -> Result<Vec<String>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let cases = r.open_table(CASES).map_err(db_error)?;
        let mut ids = Vec::new();
        for item in cases.iter().map_err(db_error)? {
            let (case_id, _) = item.map_err(db_error)?;
            ids.push(case_id.value().to_owned());
        }
        Ok(ids)
    }

    /// Deletes a case's file, durably: an erased case's, which takes no more messages, so
    /// that what it recorded (the steps seen, its bookings' references and destinations)
    /// does not outlive the erasure.
    pub async fn forget_case_file(&self, case_id: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Write::ForgetCase {
            case_id: case_id.to_owned(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Notes, durably, that the audit log has signed a checkpoint of `size` entries (the
    /// mark only rises). Such a checkpoint may have been handed out: a log with fewer entries
    /// is older than this store, and refused at start (see [`Store::signed_log_size`]).
    pub async fn note_signed_log_size(&self, size: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Write::SignedLogSize { size, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The size of the largest checkpoint the audit log had signed when the gateway last
    /// noted it ([`Store::note_signed_log_size`]); 0 if it never did. Acceptances are not the
    /// only entries: the deliveries', the acknowledgements' and the refusals' entries grow the
    /// log too, and a log restored from before them would be signed again along another
    /// history, though it holds every entry the store's receipts name.
    pub fn signed_log_size(&self) -> Result<u64> {
        self.mark(SIGNED_LOG_SIZE)
    }

    /// How many erased cases the start had withdrawn the deliveries of, when it last did
    /// (see [`Store::mark_erasures_withdrawn`]); 0 if it never did.
    pub fn erasures_withdrawn(&self) -> Result<u64> {
        self.mark(ERASURES_WITHDRAWN)
    }

    /// How many erased cases the start had deleted the case files of, when it last did (see
    /// [`Store::mark_case_files_forgotten`]); 0 if it never did.
    pub fn case_files_forgotten(&self) -> Result<u64> {
        self.mark(CASE_FILES_FORGOTTEN)
    }

    /// Records, synced, that the case files of `erased` erased cases are deleted, as
    /// [`Store::mark_erasures_withdrawn`] does for their deliveries.
    pub fn mark_case_files_forgotten(&self, erased: u64) -> Result<()> {
        self.set_mark(CASE_FILES_FORGOTTEN, erased)
    }

    /// How many erased cases the start had taken the ids of off the records, when it last
    /// did (see [`Store::forget_case_ids`]); 0 if it never did.
    pub fn case_ids_forgotten(&self) -> Result<u64> {
        self.mark(CASE_IDS_FORGOTTEN)
    }

    /// Records, synced, that the ids of `erased` erased cases are off the records, as
    /// [`Store::mark_erasures_withdrawn`] does for their deliveries.
    pub fn mark_case_ids_forgotten(&self, erased: u64) -> Result<()> {
        self.set_mark(CASE_IDS_FORGOTTEN, erased)
    }

    /// The case ids on the accepted messages' and deliveries' records (those that can be read
    /// back), each once.
    pub fn recorded_case_ids(&self) -> Result<HashSet<String>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let mut cases = HashSet::new();
        each_record(&r, ACCEPTED, |_, record: Option<AcceptedRecord>| {
            cases.extend(record.and_then(|r| r.case_id));
        })?;
        each_record(&r, DELIVERIES, |_, delivery: Option<Delivery>| {
            cases.extend(delivery.and_then(|d| d.case_id));
        })?;
        Ok(cases)
    }

    /// Takes the case id (and the case's provisional facts, and the digest of each message's
    /// content) off every accepted message's and delivery's record of the `erased` cases,
    /// durably, and says how many records of each were
    /// changed. Once a case is erased, the log can no longer tie its entries to the case id:
    /// the store's records would still list, under it, which partners sent and received what
    /// and when. Nothing needs the id afterwards (an erased case takes no more messages, its
    /// deliveries are withdrawn first, and a repeat of one of its messages is answered from the
    /// rest of the record).
    ///
    /// It reads every record, so the start runs it only once a further case is erased, and
    /// after the withdrawal of the erased cases' deliveries, which finds them by case id.
    /// Written in transactions of its own, outside the writer thread, by the start, before the
    /// workers. A record that cannot be read back is passed over, and counted.
    pub fn forget_case_ids(&self, erased: &HashSet<String>) -> Result<ForgottenCaseIds> {
        let mut records = Vec::new();
        let mut deliveries = Vec::new();
        let mut forgotten = ForgottenCaseIds::default();
        {
            let r = self.db.begin_read().map_err(db_error)?;
            let of_erased =
                |case_id: &Option<String>| case_id.as_ref().is_some_and(|c| erased.contains(c));
            each_record(
                &r,
                ACCEPTED,
                |key, record: Option<AcceptedRecord>| match record {
                    Some(record) if of_erased(&record.case_id) => records.push(key.to_owned()),
                    Some(_) => {}
                    None => forgotten.unreadable_records += 1,
                },
            )?;
            each_record(
                &r,
                DELIVERIES,
                |id, delivery: Option<Delivery>| match delivery {
                    Some(delivery) if of_erased(&delivery.case_id) => deliveries.push(id),
                    Some(_) => {}
                    None => forgotten.unreadable_deliveries.push(id),
                },
            )?;
        }
        forgotten.records = self.rewrite_records(
            ACCEPTED,
            &records,
            String::as_str,
            |record: &mut AcceptedRecord| {
                record.case_id = None;
                record.case_facts.clear();
                record.forget_content();
            },
        )?;
        forgotten.deliveries = self.rewrite_records(
            DELIVERIES,
            &deliveries,
            |&id| id,
            |delivery: &mut Delivery| {
                delivery.case_id = None;
            },
        )?;
        Ok(forgotten)
    }

    /// Rewrites the records of `table` under `keys` with `change`, synced, in transactions of
    /// a bounded size (a store of many records to change is not rewritten in one), and says
    /// how many it changed; a key with no record any more is passed over. For the start's
    /// own passes, outside the writer thread (redb runs write transactions one at a time).
    fn rewrite_records<K, O, T>(
        &self,
        table: TableDefinition<K, &[u8]>,
        keys: &[O],
        key_of: impl for<'k> Fn(&'k O) -> K::SelfType<'k>,
        change: impl Fn(&mut T),
    ) -> Result<usize>
    where
        K: redb::Key + 'static,
        T: Serialize + serde::de::DeserializeOwned,
    {
        const BATCH: usize = 1024;
        let mut changed = 0;
        for batch in keys.chunks(BATCH) {
            let mut w = self.db.begin_write().map_err(db_error)?;
            w.set_durability(Durability::Immediate).map_err(db_error)?;
            {
                let mut records = w.open_table(table).map_err(db_error)?;
                for key in batch {
                    let Some(value) = records.get(key_of(key)).map_err(db_error)? else {
                        continue;
                    };
                    let mut record: T =
                        serde_json::from_slice(value.value()).map_err(unreadable)?;
                    drop(value);
                    change(&mut record);
                    let bytes = serde_json::to_vec(&record).map_err(db_error)?;
                    records
                        .insert(key_of(key), bytes.as_slice())
                        .map_err(db_error)?;
                    changed += 1;
                }
            }
            w.commit().map_err(db_error)?;
        }
        Ok(changed)
    }

    /// The highest audit log index that a confirmed message's record names (its acceptance
    /// entry), or `None` when no message is confirmed. The audit log must hold that entry:
    /// one with fewer entries was restored from an older copy than the store, and would give
    /// the indices of the receipts the store serves to other entries. Kept as a mark by each
    /// commit that confirms messages; a store written before the mark was kept is read
    /// through once, and the mark set.
    pub fn highest_log_index(&self) -> Result<Option<u64>> {
        if let Some(index) = self.mark_if_set(HIGHEST_LOG_INDEX)? {
            return Ok(Some(index));
        }
        let r = self.db.begin_read().map_err(db_error)?;
        let mut highest = None;
        each_record(&r, ACCEPTED, |_, record: Option<AcceptedRecord>| {
            if let Some(record) = record.filter(|r| r.confirmed) {
                highest = highest.max(Some(record.log_index));
            }
        })?;
        drop(r);
        if let Some(index) = highest {
            self.set_mark(HIGHEST_LOG_INDEX, index)?;
        }
        Ok(highest)
    }

    /// A mark's value; 0 if it was never set.
    fn mark(&self, name: &str) -> Result<u64> {
        Ok(self.mark_if_set(name)?.unwrap_or(0))
    }

    /// A mark's value, if it was ever set.
    fn mark_if_set(&self, name: &str) -> Result<Option<u64>> {
        let r = self.db.begin_read().map_err(db_error)?;
        let marks = match r.open_table(MARKS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(db_error(error)),
        };
        Ok(marks.get(name).map_err(db_error)?.map(|v| v.value()))
    }

    /// Records, synced, that the deliveries of `erased` erased cases are withdrawn, so that
    /// the next starts look for them again only once a further case is erased. Written in a
    /// transaction of its own, outside the writer thread (redb runs write transactions one at
    /// a time), by the start, before the workers.
    pub fn mark_erasures_withdrawn(&self, erased: u64) -> Result<()> {
        self.set_mark(ERASURES_WITHDRAWN, erased)
    }

    fn set_mark(&self, name: &str, value: u64) -> Result<()> {
        let mut w = self.db.begin_write().map_err(db_error)?;
        w.set_durability(Durability::Immediate).map_err(db_error)?;
        w.open_table(MARKS)
            .map_err(db_error)?
            .insert(name, value)
            .map_err(db_error)?;
        w.commit().map_err(db_error)
    }

    /// Deliveries not yet delivered, acknowledged or dead (the outbox's depth).
    pub fn pending_deliveries(&self) -> u64 {
        self.pending_deliveries.load(Ordering::Relaxed)
    }

    /// Whether the store accepts writes: its writer runs, and its last commit succeeded.
    pub fn is_open(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.is_finished())
            && !self.failing.load(Ordering::Relaxed)
    }

    /// Commits what is queued and stops the writer. Fails when the store was failing when it
    /// stopped (its last commit or sync failed, or its writer panicked): what the failed
    /// commits held is settled at the next start (see [`Store::unconfirmed`]).
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Database(
                "the store's last commit or sync failed; what it held is settled at the next start"
                    .into(),
            ));
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            // The writer panicked: what it held may not be committed.
            self.failing.store(true, Ordering::Relaxed);
        }
    }
}

/// The recipient of the first entry on channel `code` of the due index at or after recipient
/// `from`, if any.
fn first_recipient_from(
    due: &redb::ReadOnlyTable<(u8, &'static str, u64, u64), ()>,
    code: u8,
    from: &str,
) -> Result<Option<String>> {
    let first = due
        .range((code, from, 0, 0)..)
        .map_err(db_error)?
        .next()
        .transpose()
        .map_err(db_error)?;
    Ok(first.and_then(|(key, _)| {
        let (channel, recipient, _, _) = key.value();
        (channel == code).then(|| recipient.to_owned())
    }))
}

/// Moves the entries of the due indexes of earlier versions (keyed without the channel, or
/// without the recipient) into [`DUE`], and removes the old tables.
fn migrate_due(w: &redb::WriteTransaction) -> Result<()> {
    let names: Vec<String> = w
        .list_tables()
        .map_err(db_error)?
        .map(|t| t.name().to_owned())
        .collect();
    let has = |name: &str| names.iter().any(|n| n == name);
    let (unkeyed, by_channel) = (has(DUE_UNKEYED.name()), has(DUE_BY_CHANNEL.name()));
    if !unkeyed && !by_channel {
        return Ok(());
    }
    // (due time, delivery id) of every old entry.
    let mut old: Vec<(u64, u64)> = Vec::new();
    if unkeyed {
        let table = w.open_table(DUE_UNKEYED).map_err(db_error)?;
        for item in table.iter().map_err(db_error)? {
            old.push(item.map_err(db_error)?.0.value());
        }
    }
    if by_channel {
        let table = w.open_table(DUE_BY_CHANNEL).map_err(db_error)?;
        for item in table.iter().map_err(db_error)? {
            let (_, at, id) = item.map_err(db_error)?.0.value();
            old.push((at, id));
        }
    }
    {
        let deliveries = w.open_table(DELIVERIES).map_err(db_error)?;
        let mut due = w.open_table(DUE).map_err(db_error)?;
        for (at, id) in old {
            let named = |error| match error {
                StoreError::Unreadable(why) => StoreError::Unreadable(format!(
                    "delivery {id}, while moving the due index of an earlier version: {why}"
                )),
                other => other,
            };
            if let Some(d) = read_delivery(&deliveries, None, id).map_err(named)? {
                due.insert((d.channel.due_code(), d.recipient.as_str(), at, id), ())
                    .map_err(db_error)?;
            }
        }
    }
    for (there, table) in [
        (unkeyed, DUE_UNKEYED.name()),
        (by_channel, DUE_BY_CHANNEL.name()),
    ] {
        if there {
            let definition: TableDefinition<(), ()> = TableDefinition::new(table);
            w.delete_table(definition).map_err(db_error)?;
        }
    }
    Ok(())
}

/// Whether a delivery is done with: pushed and confirmed, or acknowledged from an inbox. Its
/// body then serves nothing (the audit log holds the evidence of what was delivered), and
/// the store deletes it: the bodies hold the personal data of the message.
fn completed(d: &Delivery) -> bool {
    match d.state {
        DeliveryState::Acknowledged => true,
        DeliveryState::Delivered => d.channel != Channel::Inbox,
        DeliveryState::Discarded => true,
        DeliveryState::Pending | DeliveryState::Dead => false,
    }
}

/// Deletes, once, the bodies that earlier versions kept of completed deliveries (see
/// [`completed`]). A delivery whose record cannot be read keeps its body.
fn delete_completed_bodies(w: &redb::WriteTransaction) -> Result<()> {
    once(w, COMPLETED_BODIES_DELETED, || {
        let deliveries = w.open_table(DELIVERIES).map_err(db_error)?;
        let mut bodies = w.open_table(BODIES).map_err(db_error)?;
        let mut done = Vec::new();
        let mut unreadable = 0_u64;
        for item in bodies.iter().map_err(db_error)? {
            let id = item.map_err(db_error)?.0.value();
            match read_delivery(&deliveries, None, id) {
                Ok(Some(d)) if completed(&d) => done.push(id),
                Ok(_) => {}
                Err(StoreError::Unreadable(_)) => unreadable += 1,
                Err(error) => return Err(error),
            }
        }
        for id in &done {
            bodies.remove(*id).map_err(db_error)?;
        }
        if !done.is_empty() || unreadable > 0 {
            tracing::info!(
                deleted = done.len(),
                kept_unreadable = unreadable,
                "bodies of completed deliveries deleted"
            );
        }
        Ok(())
    })
}

/// Makes the change of [`FORMAT`] named `change` with `make`, in `w`, unless an earlier open
/// made it, and records it as made.
fn once(w: &redb::WriteTransaction, change: &str, make: impl FnOnce() -> Result<()>) -> Result<()> {
    let made = w
        .open_table(FORMAT)
        .map_err(db_error)?
        .get(change)
        .map_err(db_error)?
        .is_some();
    if made {
        return Ok(());
    }
    make()?;
    w.open_table(FORMAT)
        .map_err(db_error)?
        .insert(change, ())
        .map_err(db_error)?;
    Ok(())
}

/// Forgets, once, the digests of content that earlier versions kept on the records of
/// erased cases' messages (see [`Store::forget_case_ids`]): those are the records without a
/// case id, since every accepted event names its case. A record that cannot be read is left.
fn forget_erased_content(w: &redb::WriteTransaction) -> Result<()> {
    once(w, ERASED_CONTENT_FORGOTTEN, || {
        let mut accepted = w.open_table(ACCEPTED).map_err(db_error)?;
        let mut changed = Vec::new();
        for item in accepted.iter().map_err(db_error)? {
            let (key, value) = item.map_err(db_error)?;
            let Ok(mut record) = serde_json::from_slice::<AcceptedRecord>(value.value()) else {
                continue;
            };
            if record.case_id.is_none()
                && !record.content.is_empty()
                && record.content != FORGOTTEN_CONTENT
            {
                record.forget_content();
                let value = serde_json::to_vec(&record).map_err(db_error)?;
                changed.push((key.value().to_owned(), value));
            }
        }
        for (key, value) in &changed {
            accepted
                .insert(key.as_str(), value.as_slice())
                .map_err(db_error)?;
        }
        Ok(())
    })
}

/// A case's file in `cases` (empty if the case is new), in a read or a write transaction.
fn read_case_file(
    cases: &impl ReadableTable<&'static str, &'static [u8]>,
    case_id: &str,
) -> Result<CaseFile> {
    let Some(stored) = cases.get(case_id).map_err(db_error)? else {
        return Ok(CaseFile::default());
    };
    // A case file only feeds the sequence checks: one that cannot be read starts afresh (the
    // next change writes a new one), so that it holds back neither the case's messages nor
    // their deliveries. The checks may then flag steps the lost file had seen.
    Ok(
        serde_json::from_slice(stored.value()).unwrap_or_else(|error| {
            tracing::error!(
                error = %why_unreadable(&error),
                "a case file could not be read; the case's sequence checks start afresh"
            );
            CaseFile::default()
        }),
    )
}

fn read_delivery(
    deliveries: &impl ReadableTable<u64, &'static [u8]>,
    bodies: Option<&redb::ReadOnlyTable<u64, &'static [u8]>>,
    id: u64,
) -> Result<Option<Delivery>> {
    let Some(v) = deliveries.get(id).map_err(db_error)? else {
        return Ok(None);
    };
    let mut d: Delivery = serde_json::from_slice(v.value()).map_err(unreadable)?;
    if let Some(bodies) = bodies
        && let Some(b) = bodies.get(id).map_err(db_error)?
    {
        d.body = b.value().to_vec();
    }
    Ok(Some(d))
}

/// The ids of the deliveries waiting to go out: in the inboxes, then in the push line.
fn waiting_ids(r: &redb::ReadTransaction) -> Result<Vec<u64>> {
    let inbox = r.open_table(INBOX).map_err(db_error)?;
    let due = r.open_table(DUE).map_err(db_error)?;
    let mut ids = Vec::new();
    for item in inbox.iter().map_err(db_error)? {
        ids.push(item.map_err(db_error)?.0.value().1);
    }
    for item in due.iter().map_err(db_error)? {
        ids.push(item.map_err(db_error)?.0.value().3);
    }
    Ok(ids)
}

/// A delivery of a list (waiting, dead letters, owed audits), without its body: one whose
/// record cannot be read back (damaged) is reported and passed over, so that the others are
/// still listed (the lists feed the start, the operators' listing and the erasures).
fn read_listed(
    deliveries: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<Delivery>> {
    match read_delivery(deliveries, None, id) {
        Err(StoreError::Unreadable(why)) => {
            tracing::error!(
                delivery = id,
                error = %why,
                "a delivery's record cannot be read back; passed over, the others are listed"
            );
            Ok(None)
        }
        read => read,
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A reply owed to a writer, sent once its group's commit is known. Replies live only for
/// one group, so their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Accept(oneshot::Sender<Result<Recorded>>, Result<Recorded>),
    Update(oneshot::Sender<Result<Delivery>>, Result<Delivery>),
    Unit(Option<oneshot::Sender<Result<()>>>, Result<()>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Accept(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Update(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Unit(Some(tx), r) => {
                let _ = tx.send(r);
            }
            Reply::Unit(None, Ok(())) => {}
            // A queued confirmation that could not be written: its message stays unconfirmed
            // and is settled against the audit log at the next start.
            Reply::Unit(None, Err(error)) => tracing::error!(
                error = %error,
                "a confirmation could not be written; its message is settled at the next start"
            ),
        }
    }

    /// The database's own error this write met, if any: one that leaves the transaction's
    /// state unknown (a write may have been half made), unlike a refusal or an unreadable
    /// record, which each write meets before it changes anything.
    fn database_error(&self) -> Option<&StoreError> {
        let error = match self {
            Reply::Accept(_, Err(e)) | Reply::Update(_, Err(e)) | Reply::Unit(_, Err(e)) => e,
            _ => return None,
        };
        matches!(error, StoreError::Database(_)).then_some(error)
    }

    fn fail(self, error: &StoreError) {
        match self {
            Reply::Accept(tx, _) => {
                let _ = tx.send(Err(error.clone()));
            }
            Reply::Update(tx, _) => {
                let _ = tx.send(Err(error.clone()));
            }
            Reply::Unit(Some(tx), _) => {
                let _ = tx.send(Err(error.clone()));
            }
            // A confirmation nobody waits for: the group's failure is logged once, above.
            Reply::Unit(None, _) => {}
        }
    }
}

impl Write {
    /// Whether the writer waits for this write to be on disk.
    fn needs_sync(&self) -> bool {
        !matches!(self, Write::Confirm { durable: false, .. })
    }

    /// A copy of a queued confirmation (one nobody waits for), to be written again should its
    /// group fail; `None` for any other write, whose waiter is told of the failure instead.
    fn carried(&self) -> Option<Write> {
        match self {
            Write::Confirm {
                key,
                attempt,
                record,
                log_index,
                case,
                release,
                reply: None,
                ..
            } => Some(Write::Confirm {
                key: key.clone(),
                attempt: attempt.clone(),
                record: record.clone(),
                log_index: *log_index,
                case: case.clone(),
                release: release.clone(),
                durable: true,
                reply: None,
            }),
            _ => None,
        }
    }
}

/// How long the queued confirmations of a failed group wait before they are written again.
const CARRIED_RETRY: Duration = Duration::from_secs(1);

/// How long unsynced confirmations may wait for a synced commit before the writer syncs.
const IDLE_SYNC: Duration = Duration::from_millis(200);

/// The writer thread's side of the store.
struct Writer {
    db: Arc<Database>,
    pending: Arc<AtomicU64>,
    confirming: Confirming,
    queued_facts: QueuedFacts,
    failing: Arc<AtomicBool>,
    released: Arc<Notify>,
    /// The failed commits and syncs, so that a failing disk is said once a minute, not at
    /// every retry.
    failures: Mutex<RepeatedFailures>,
    #[cfg(test)]
    hold: Arc<Mutex<()>>,
    #[cfg(test)]
    fail_next_group: Arc<AtomicBool>,
}

/// How often a store that keeps failing is said again in the log.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The writer's failures since the last one logged: a disk that stays full or broken fails
/// every commit and every retry (several a second), and the log says so once a minute, with
/// the count of those it did not say, rather than at each.
#[derive(Debug, Default)]
struct RepeatedFailures {
    last_logged: Option<std::time::Instant>,
    unsaid: u64,
}

impl RepeatedFailures {
    /// Counts one failure; `Some(unsaid)` when it is to be logged, with the number of failures
    /// left unsaid since the last line.
    fn failed(&mut self) -> Option<u64> {
        match self.last_logged {
            Some(at) if at.elapsed() < FAILURE_LOG_EVERY => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.last_logged = Some(std::time::Instant::now());
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }

    /// Whether the store had failed since it last succeeded (and now succeeds again).
    fn recovered(&mut self) -> bool {
        let had_failed = self.last_logged.is_some();
        *self = RepeatedFailures::default();
        had_failed
    }
}

impl Writer {
    fn failures(&self) -> std::sync::MutexGuard<'_, RepeatedFailures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs a commit or sync failure, unless one was logged less than a minute ago.
    fn report_failure(&self, error: &dyn std::fmt::Display, what: &str) {
        if let Some(unsaid) = self.failures().failed() {
            tracing::error!(
                error = %error,
                failures_not_logged_since_the_last = unsaid,
                "{what}; the store is said failing again in a minute if it still is"
            );
        }
    }

    /// Says in the log that the store writes again, if it had failed: called once every write
    /// it failed is made.
    fn report_success(&self) {
        if self.failures().recovered() {
            tracing::warn!("the store commits and syncs again");
        }
    }

    fn run(self, rx: WriteQueueReceiver<Write>) {
        let db = &*self.db;
        let mut unsynced = false;
        // The queued confirmations of a failed group: nobody waits for them, and their messages
        // were answered already, so they are written again, each in a group of its own (should
        // one of them be what fails, it fails neither the others nor new writes), until they
        // are on disk. Until then the store reports itself failing.
        let mut carried: Vec<Write> = Vec::new();
        let mut carried_since = std::time::Instant::now();
        loop {
            if !carried.is_empty() && carried_since.elapsed() >= CARRIED_RETRY {
                let mut still = Vec::new();
                for write in std::mem::take(&mut carried) {
                    if let Err(again) = self.commit(db, vec![write], true) {
                        still.extend(again);
                    }
                }
                carried = still;
                carried_since = std::time::Instant::now();
                self.failing.store(!carried.is_empty(), Ordering::Relaxed);
                if carried.is_empty() {
                    self.report_success();
                }
            }
            let wait = if carried.is_empty() {
                IDLE_SYNC
            } else {
                IDLE_SYNC.min(CARRIED_RETRY.saturating_sub(carried_since.elapsed()))
            };
            let first = match rx.recv_timeout(wait) {
                Ok(w) => w,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if unsynced {
                        match sync_empty(db) {
                            Ok(()) => {
                                unsynced = false;
                                if carried.is_empty() {
                                    self.report_success();
                                }
                            }
                            Err(e) => {
                                self.failing.store(true, Ordering::Relaxed);
                                self.report_failure(&e, "store sync failed");
                            }
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(w) => group.push(w),
                    Err(_) => break,
                }
            }
            let sync = group.iter().any(Write::needs_sync);
            let failed = match self.commit(db, group, sync) {
                Ok(()) => {
                    unsynced = !sync;
                    // Recovered only once the confirmations carried from a failed group are
                    // written too.
                    if carried.is_empty() {
                        self.report_success();
                    }
                    false
                }
                Err(again) => {
                    if carried.is_empty() {
                        carried_since = std::time::Instant::now();
                    }
                    carried.extend(again);
                    true
                }
            };
            self.failing
                .store(failed || !carried.is_empty(), Ordering::Relaxed);
        }
        // Stopping: one last try for the confirmations still carried (the next start settles
        // them otherwise).
        if !carried.is_empty() && self.commit(db, carried, true).is_ok() {
            unsynced = false;
        }
        if unsynced && let Err(e) = sync_empty(db) {
            self.failing.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "the store's last sync failed");
        }
    }

    /// Applies one group and answers its writes. On a failure, returns copies of its queued
    /// confirmations, to be written again (see [`Write::carried`]).
    fn commit(
        &self,
        db: &Database,
        group: Vec<Write>,
        sync: bool,
    ) -> std::result::Result<(), Vec<Write>> {
        let releases_push = group.iter().any(|w| {
            matches!(w, Write::Confirm { release, .. }
                if release.iter().any(|r| r.channel != Channel::Inbox))
        });
        let confirmed_keys: Vec<String> = group
            .iter()
            .filter_map(|w| match w {
                Write::Confirm { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let carried: Vec<Write> = group.iter().filter_map(Write::carried).collect();
        let accepted: Vec<(String, String)> = group
            .iter()
            .filter_map(|w| match w {
                Write::Accept {
                    key,
                    case: Some((case_id, _)),
                    ..
                } => Some((case_id.clone(), key.clone())),
                _ => None,
            })
            .collect();
        #[cfg(test)]
        let held = self.hold.lock();
        let mut delta: i64 = 0;
        #[cfg(test)]
        let applied = if self.fail_next_group.swap(false, Ordering::Relaxed) {
            fail(StoreError::Database("failed by a test".into()), group)
        } else {
            apply_group(db, group, sync, &mut delta)
        };
        #[cfg(not(test))]
        let applied = apply_group(db, group, sync, &mut delta);
        #[cfg(test)]
        drop(held);
        match applied {
            Ok(replies) => {
                if delta >= 0 {
                    self.pending
                        .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
                } else {
                    self.pending
                        .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
                }
                self.committed(&confirmed_keys);
                self.settled_facts(&accepted);
                replies.into_iter().for_each(Reply::send);
                if releases_push {
                    self.released.notify_waiters();
                }
                Ok(())
            }
            Err((error, replies)) => {
                // After an I/O failure the database refuses every later write until it is
                // reopened: the store reports itself not ready, the queued confirmations stay
                // answered from memory (see `Confirming`), are written again while the
                // gateway runs, and are settled against the audit log at the next start
                // otherwise. After another failure (a damaged page met on the way, say), they
                // are written again on their own, and the other writes are refused to their
                // callers. The store reports itself failing before they hear of it.
                self.failing.store(true, Ordering::Relaxed);
                self.report_failure(
                    &error,
                    "a store commit failed; its confirmations are written again, its other \
                     writes refused",
                );
                self.settled_facts(&accepted);
                replies.into_iter().for_each(|r| r.fail(&error));
                std::thread::sleep(Duration::from_millis(50));
                Err(carried)
            }
        }
    }

    /// Forgets the queued facts of the accepted messages of a group that was committed, or
    /// failed: readers find them on disk, or they were never written.
    fn settled_facts(&self, accepted: &[(String, String)]) {
        for (case_id, key) in accepted {
            forget_queued(&self.queued_facts, case_id, key);
        }
    }

    /// Forgets the queued confirmations that are now committed: readers find them on disk.
    fn committed(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut map = self.confirming.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.remove(key);
        }
    }
}

/// Takes the queued facts of message `key` off its case's list.
fn forget_queued(queued: &QueuedFacts, case_id: &str, key: &str) {
    let mut map = lock_queued(queued);
    if let Some(list) = map.get_mut(case_id) {
        if let Some(at) = list.iter().position(|(k, _)| k == key) {
            list.remove(at);
        }
        if list.is_empty() {
            map.remove(case_id);
        }
    }
}

/// Makes every earlier unsynced commit durable.
fn sync_empty(db: &Database) -> Result<()> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(db_error)?;
    txn.commit().map_err(db_error)
}

type GroupResult = std::result::Result<Vec<Reply>, (StoreError, Vec<Reply>)>;

/// The tables, open in one write transaction.
struct Tables<'t> {
    accepted: redb::Table<'t, &'static str, &'static [u8]>,
    cases: redb::Table<'t, &'static str, &'static [u8]>,
    deliveries: redb::Table<'t, u64, &'static [u8]>,
    bodies: redb::Table<'t, u64, &'static [u8]>,
    inbox: redb::Table<'t, (&'static str, u64), ()>,
    due: redb::Table<'t, (u8, &'static str, u64, u64), ()>,
    dead: redb::Table<'t, u64, ()>,
    owed: redb::Table<'t, u64, ()>,
    unconfirmed: redb::Table<'t, &'static str, ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(Tables {
            accepted: txn.open_table(ACCEPTED).map_err(db_error)?,
            cases: txn.open_table(CASES).map_err(db_error)?,
            deliveries: txn.open_table(DELIVERIES).map_err(db_error)?,
            bodies: txn.open_table(BODIES).map_err(db_error)?,
            inbox: txn.open_table(INBOX).map_err(db_error)?,
            due: txn.open_table(DUE).map_err(db_error)?,
            dead: txn.open_table(DEAD).map_err(db_error)?,
            owed: txn.open_table(OWED).map_err(db_error)?,
            unconfirmed: txn.open_table(UNCONFIRMED).map_err(db_error)?,
        })
    }

    fn delivery(&self, id: u64) -> Result<Option<Delivery>> {
        let Some(v) = self.deliveries.get(id).map_err(db_error)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(v.value()).map_err(unreadable)?))
    }

    fn put_delivery(&mut self, d: &Delivery) -> Result<()> {
        let bytes = serde_json::to_vec(d).map_err(db_error)?;
        self.deliveries
            .insert(d.id, bytes.as_slice())
            .map_err(db_error)?;
        Ok(())
    }

    /// Applies `change` to a case's file as it stands in this transaction, and writes the file
    /// back when `change` says it changed it.
    fn change_case_file(
        &mut self,
        case_id: &str,
        change: impl FnOnce(&mut CaseFile) -> bool,
    ) -> Result<()> {
        let mut file = read_case_file(&self.cases, case_id)?;
        if change(&mut file) {
            let bytes = serde_json::to_vec(&file).map_err(db_error)?;
            self.cases
                .insert(case_id, bytes.as_slice())
                .map_err(db_error)?;
        }
        Ok(())
    }

    fn record(&self, key: &str) -> Result<Option<AcceptedRecord>> {
        self.accepted
            .get(key)
            .map_err(db_error)?
            .map(|v| serde_json::from_slice(v.value()).map_err(unreadable))
            .transpose()
    }

    /// Puts a waiting delivery where its channel looks for it.
    fn enqueue(&mut self, d: &Release) -> Result<()> {
        match d.channel {
            Channel::Inbox => {
                self.inbox
                    .insert((d.recipient.as_str(), d.id), ())
                    .map_err(db_error)?;
            }
            Channel::Webhook | Channel::Amqp => {
                self.due
                    .insert(
                        (d.channel.due_code(), d.recipient.as_str(), d.due_ms, d.id),
                        (),
                    )
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// Takes a waiting delivery out of its channel's index.
    fn dequeue(&mut self, d: &Release) -> Result<()> {
        match d.channel {
            Channel::Inbox => {
                self.inbox
                    .remove((d.recipient.as_str(), d.id))
                    .map_err(db_error)?;
            }
            Channel::Webhook | Channel::Amqp => {
                self.due
                    .remove((d.channel.due_code(), d.recipient.as_str(), d.due_ms, d.id))
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }
}

struct Counters<'a> {
    delta: &'a mut i64,
    /// The highest audit log index the group's confirmations name.
    highest_log_index: Option<u64>,
    /// The largest signed size of the audit log the group notes.
    signed_log_size: Option<u64>,
}

/// Calls `each` with every record of `table` in key order, read back (`None` for one that
/// cannot be).
fn each_record<K, T>(
    r: &redb::ReadTransaction,
    table: TableDefinition<K, &[u8]>,
    mut each: impl FnMut(K::SelfType<'_>, Option<T>),
) -> Result<()>
where
    K: redb::Key + 'static,
    T: serde::de::DeserializeOwned,
{
    for item in r
        .open_table(table)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (key, value) = item.map_err(db_error)?;
        each(key.value(), serde_json::from_slice(value.value()).ok());
    }
    Ok(())
}

/// Raises mark `name` to `value`, if it is lower or not set: the marks of the audit log that
/// the store knows of ([`Store::highest_log_index`], [`Store::signed_log_size`]) only rise.
fn raise_mark(txn: &redb::WriteTransaction, name: &str, value: u64) -> Result<()> {
    let mut marks = txn.open_table(MARKS).map_err(db_error)?;
    let marked = marks.get(name).map_err(db_error)?.map(|v| v.value());
    if marked.is_none_or(|marked| marked < value) {
        marks.insert(name, value).map_err(db_error)?;
    }
    Ok(())
}

fn apply_group(db: &Database, group: Vec<Write>, sync: bool, delta: &mut i64) -> GroupResult {
    let mut replies = Vec::with_capacity(group.len());
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return fail(db_error(e), group),
    };
    let durability = if sync {
        Durability::Immediate
    } else {
        Durability::None
    };
    if let Err(e) = txn.set_durability(durability) {
        return fail(db_error(e), group);
    }
    {
        let mut tables = match Tables::open(&txn) {
            Ok(t) => t,
            Err(e) => return fail(e, group),
        };
        let mut counters = Counters {
            delta,
            highest_log_index: None,
            signed_log_size: None,
        };
        let mut writes = group.into_iter();
        while let Some(write) = writes.next() {
            let reply = apply(&mut tables, &mut counters, write);
            // A database error can come after part of its write was made: committing the
            // group would keep that part (a delivery in no line, a message neither confirmed
            // nor waiting to be). The whole group is dropped instead, uncommitted.
            if let Some(error) = reply.database_error().cloned() {
                replies.push(reply);
                drop(tables);
                let _ = txn.abort();
                replies.extend(failed(&error, writes));
                return Err((error, replies));
            }
            replies.push(reply);
        }
        let raised = [
            (HIGHEST_LOG_INDEX, counters.highest_log_index),
            (SIGNED_LOG_SIZE, counters.signed_log_size),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .try_for_each(|(name, value)| raise_mark(&txn, name, value));
        if let Err(error) = raised {
            drop(tables);
            let _ = txn.abort();
            return Err((error, replies));
        }
    }
    match txn.commit() {
        Ok(()) => Ok(replies),
        Err(e) => Err((db_error(e), replies)),
    }
}

fn apply(t: &mut Tables<'_>, c: &mut Counters<'_>, write: Write) -> Reply {
    match write {
        Write::Accept {
            key,
            record,
            case,
            deliveries,
            made,
            reply,
        } => Reply::Accept(reply, accept(t, &key, &record, case, deliveries, made)),
        Write::Update { id, update, reply } => {
            Reply::Update(reply, update_delivery(t, c, id, update))
        }
        Write::Confirm {
            key,
            attempt,
            record,
            log_index,
            case,
            release,
            reply,
            ..
        } => {
            let confirmed = confirm(t, c, &key, attempt.as_deref(), &record, case, release);
            if confirmed.is_ok() {
                c.highest_log_index = c.highest_log_index.max(Some(log_index));
            }
            Reply::Unit(reply, confirmed)
        }
        Write::Abandon { attempt, reply } => Reply::Unit(Some(reply), abandon(t, &attempt)),
        Write::ForgetCase { case_id, reply } => Reply::Unit(
            Some(reply),
            t.cases
                .remove(case_id.as_str())
                .map(|_| ())
                .map_err(db_error),
        ),
        Write::SignedLogSize { size, reply } => {
            c.signed_log_size = c.signed_log_size.max(Some(size));
            Reply::Unit(Some(reply), Ok(()))
        }
    }
}

fn accept(
    t: &mut Tables<'_>,
    key: &str,
    record: &[u8],
    case: Option<(String, Vec<String>)>,
    deliveries: Vec<Prepared>,
    made: Vec<Delivery>,
) -> Result<Recorded> {
    if let Some(first) = t.record(key)? {
        return Ok(Recorded::Duplicate(Box::new(first)));
    }
    if let Some((case_id, facts)) = case {
        // Recorded on the file as it stands now, with what earlier messages of the group put
        // there.
        t.change_case_file(&case_id, |file| file.record(key, &facts))?;
    }
    for d in deliveries {
        t.deliveries
            .insert(d.id, d.metadata.as_slice())
            .map_err(db_error)?;
        t.bodies.insert(d.id, d.body.as_slice()).map_err(db_error)?;
        if d.dead {
            t.dead.insert(d.id, ()).map_err(db_error)?;
            t.owed.insert(d.id, ()).map_err(db_error)?;
        }
    }
    t.accepted.insert(key, record).map_err(db_error)?;
    t.unconfirmed.insert(key, ()).map_err(db_error)?;
    Ok(Recorded::New(made))
}

/// Refuses a change meant for `attempt` when the store holds another attempt of its message
/// (`stored`, the record the store holds under its key).
fn same_attempt(stored: Option<&AcceptedRecord>, attempt: &AcceptedRecord) -> Result<()> {
    match stored {
        Some(stored) if stored != attempt && !stored.confirmed => Err(StoreError::Refused(
            "another attempt of this message was recorded since".into(),
        )),
        _ => Ok(()),
    }
}

fn confirm(
    t: &mut Tables<'_>,
    c: &mut Counters<'_>,
    key: &str,
    attempt: Option<&AcceptedRecord>,
    record: &[u8],
    case: Option<String>,
    release: Vec<Release>,
) -> Result<()> {
    if let Some(attempt) = attempt {
        same_attempt(t.record(key)?.as_ref(), attempt)?;
    }
    if t.unconfirmed.get(key).map_err(db_error)?.is_none() {
        // Confirmed already, or withdrawn.
        return Ok(());
    }
    // Everything is read before anything is changed: the message leaves the unconfirmed list
    // last.
    if let Some(case_id) = case {
        t.change_case_file(&case_id, |file| file.confirm(key))?;
    }
    t.unconfirmed.remove(key).map_err(db_error)?;
    for r in &release {
        t.enqueue(r)?;
        *c.delta += 1;
    }
    t.accepted.insert(key, record).map_err(db_error)?;
    Ok(())
}

fn abandon(t: &mut Tables<'_>, attempt: &AcceptedRecord) -> Result<()> {
    let key = AcceptedRecord::key(&attempt.source, &attempt.event_id);
    let key = key.as_str();
    let Some(record) = t.record(key)? else {
        return Ok(());
    };
    same_attempt(Some(&record), attempt)?;
    if record.confirmed {
        return Err(StoreError::Refused(
            "refusing to abandon a confirmed message".into(),
        ));
    }
    if let Some(case_id) = provisional_case(&record) {
        t.change_case_file(&case_id, |file| file.withdraw(key))?;
    }
    for id in &record.deliveries {
        t.deliveries.remove(*id).map_err(db_error)?;
        t.bodies.remove(*id).map_err(db_error)?;
        t.dead.remove(*id).map_err(db_error)?;
        t.owed.remove(*id).map_err(db_error)?;
    }
    t.accepted.remove(key).map_err(db_error)?;
    t.unconfirmed.remove(key).map_err(db_error)?;
    Ok(())
}

fn update_delivery(
    t: &mut Tables<'_>,
    c: &mut Counters<'_>,
    id: u64,
    update: DeliveryUpdate,
) -> Result<Delivery> {
    let mut d = t.delivery(id)?.ok_or(StoreError::NotFound("delivery"))?;
    let waiting = d.state == DeliveryState::Pending;
    if !applies(&d, &update) {
        return Ok(d);
    }
    match update {
        DeliveryUpdate::Delivered => match d.channel {
            // Fetched: it stays in the inbox until acknowledged.
            Channel::Inbox => {
                if waiting {
                    d.state = DeliveryState::Delivered;
                }
            }
            Channel::Webhook | Channel::Amqp => {
                if waiting {
                    t.dequeue(&Release::of(&d))?;
                    *c.delta -= 1;
                }
                d.state = DeliveryState::Delivered;
                d.attempts += 1;
            }
        },
        DeliveryUpdate::Acknowledged => {
            if d.channel == Channel::Inbox
                && matches!(d.state, DeliveryState::Pending | DeliveryState::Delivered)
            {
                t.dequeue(&Release::of(&d))?;
                *c.delta -= 1;
            }
            d.state = DeliveryState::Acknowledged;
        }
        DeliveryUpdate::Retry { error, due_ms } => {
            if waiting {
                t.dequeue(&Release::of(&d))?;
            } else {
                *c.delta += 1;
            }
            d.attempts += 1;
            d.last_error = Some(error);
            d.due_ms = due_ms;
            d.state = DeliveryState::Pending;
            t.enqueue(&Release::of(&d))?;
        }
        DeliveryUpdate::Dead { error, attempted } => {
            if attempted {
                d.attempts += 1;
            }
            bury(t, c, &mut d, waiting, error)?;
        }
        DeliveryUpdate::Erased => {
            bury(t, c, &mut d, waiting, CASE_ERASED.into())?;
            t.bodies.remove(id).map_err(db_error)?;
        }
        DeliveryUpdate::DeadLetterAudited => {
            t.owed.remove(id).map_err(db_error)?;
            return Ok(d);
        }
        DeliveryUpdate::Postpone { due_ms } => {
            if !waiting || d.channel == Channel::Inbox {
                return Ok(d);
            }
            t.dequeue(&Release::of(&d))?;
            d.due_ms = due_ms;
            t.enqueue(&Release::of(&d))?;
        }
        DeliveryUpdate::Redeliver { channel } => {
            check_redeliverable(&d)?;
            t.dead.remove(id).map_err(db_error)?;
            d.channel = channel;
            d.state = DeliveryState::Pending;
            d.attempts = 0;
            d.due_ms = now_ms();
            t.enqueue(&Release::of(&d))?;
            *c.delta += 1;
        }
        DeliveryUpdate::Discard => {
            check_discardable(&d, t.owed.get(id).map_err(db_error)?.is_some())?;
            t.dead.remove(id).map_err(db_error)?;
            d.state = DeliveryState::Discarded;
        }
    }
    if completed(&d) {
        t.bodies.remove(id).map_err(db_error)?;
    }
    t.put_delivery(&d)?;
    Ok(d)
}

/// Whether `update` applies to the delivery as it stands. A push attempt's outcome applies to a
/// delivery still waiting; an acknowledgement to an inbox delivery not yet acknowledged; an
/// erasure to one that still holds its body or is a dead letter. Anything else comes too late
/// (the delivery left the line meanwhile: delivered, dead-lettered, withdrawn, put back by a
/// redelivery under a new attempt) and changes nothing: a stale outcome must not move a
/// delivery back into a line it left, nor bury one that was delivered.
fn applies(d: &Delivery, update: &DeliveryUpdate) -> bool {
    let waiting = d.state == DeliveryState::Pending;
    let fetched = d.channel == Channel::Inbox && d.state == DeliveryState::Delivered;
    match update {
        DeliveryUpdate::Delivered => waiting,
        DeliveryUpdate::Retry { .. } => waiting && d.channel != Channel::Inbox,
        DeliveryUpdate::Dead { .. } => waiting || fetched,
        DeliveryUpdate::Acknowledged => d.channel == Channel::Inbox && (waiting || fetched),
        DeliveryUpdate::Erased => waiting || fetched || d.state == DeliveryState::Dead,
        DeliveryUpdate::Redeliver { .. }
        | DeliveryUpdate::Discard
        | DeliveryUpdate::Postpone { .. }
        | DeliveryUpdate::DeadLetterAudited => true,
    }
}

/// Moves a delivery to the dead letters with `error`, out of the line it waits in (`waiting`:
/// it was pending when read).
fn bury(
    t: &mut Tables<'_>,
    c: &mut Counters<'_>,
    d: &mut Delivery,
    waiting: bool,
    error: String,
) -> Result<()> {
    if matches!(d.state, DeliveryState::Pending | DeliveryState::Delivered)
        && (waiting || d.channel == Channel::Inbox)
    {
        t.dequeue(&Release::of(d))?;
        *c.delta -= 1;
    }
    d.last_error = Some(error);
    d.state = DeliveryState::Dead;
    t.dead.insert(d.id, ()).map_err(db_error)?;
    Ok(())
}

/// Whether a delivery can be put back in line: only a dead letter, and only one with a body.
fn check_redeliverable(d: &Delivery) -> Result<()> {
    if d.state != DeliveryState::Dead {
        return Err(StoreError::NotFound("dead letter"));
    }
    let fix = match d.last_error.as_deref() {
        Some(UNWRITABLE) => "fix the mapping",
        Some(NOT_IN_FORCE) => "put the mapping in force in the registry",
        Some(CASE_ERASED) => {
            return Err(StoreError::Refused(format!(
                "delivery {} has no body: its case was erased",
                d.id
            )));
        }
        _ => return Ok(()),
    };
    Err(StoreError::Refused(format!(
        "delivery {} has no body: the gateway did not write the event for {} ({}); {fix} \
         and ask the sender for a new message",
        d.id,
        d.recipient,
        d.last_error.as_deref().unwrap_or_default()
    )))
}

/// Whether [`DeliveryUpdate::Discard`] takes `d`: a dead letter (any, with a body or not)
/// whose `dead_lettered` entry is not `owed`.
fn check_discardable(d: &Delivery, owed: bool) -> Result<()> {
    if d.state != DeliveryState::Dead {
        return Err(StoreError::NotFound("dead letter"));
    }
    if owed {
        return Err(StoreError::Refused(format!(
            "the dead_lettered entry of delivery {} is not yet in the audit log (it is written \
             moments after the delivery is created dead, or at the next start if the log failed \
             then); ask again once it is",
            d.id
        )));
    }
    Ok(())
}

fn fail(error: StoreError, group: Vec<Write>) -> GroupResult {
    let replies = failed(&error, group);
    Err((error, replies))
}

/// The replies of writes that failed with `error` before they were applied.
fn failed(error: &StoreError, writes: impl IntoIterator<Item = Write>) -> Vec<Reply> {
    writes
        .into_iter()
        .map(|w| match w {
            Write::Accept { reply, .. } => Reply::Accept(reply, Err(error.clone())),
            Write::Update { reply, .. } => Reply::Update(reply, Err(error.clone())),
            Write::Confirm { reply, .. } => Reply::Unit(reply, Err(error.clone())),
            Write::Abandon { reply, .. }
            | Write::ForgetCase { reply, .. }
            | Write::SignedLogSize { reply, .. } => Reply::Unit(Some(reply), Err(error.clone())),
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_failing_store_is_said_once_a_minute_and_its_recovery_once() {
        let mut failures = RepeatedFailures::default();
        assert!(!failures.recovered(), "nothing had failed");
        assert_eq!(failures.failed(), Some(0), "the first failure is said");
        for _ in 0..5 {
            assert_eq!(
                failures.failed(),
                None,
                "the next ones within a minute are not"
            );
        }
        // A minute on, the next one is said, with those that were not.
        failures.last_logged = Some(Instant::now() - FAILURE_LOG_EVERY);
        assert_eq!(failures.failed(), Some(5));
        assert!(failures.recovered(), "the recovery is said");
        assert!(!failures.recovered(), "once");
        assert_eq!(failures.failed(), Some(0), "a new failure is said at once");
    }

    pub(super) fn new_delivery(recipient: &str, channel: Channel) -> NewDelivery {
        NewDelivery {
            recipient: recipient.into(),
            channel,
            body: b"{}".to_vec(),
            content_type: "application/json".into(),
            mapping_id: format!("{recipient}/test"),
            mapping_hash: "sha256:00".into(),
            withheld: Vec::new(),
            unwritable: None,
        }
    }

    pub(super) fn record(event_id: &str) -> AcceptedRecord {
        AcceptedRecord {
            event_id: event_id.into(),
            source: "urn:partner:test".into(),
            sender: "test".into(),
            event_type: "test".into(),
            confirmed: false,
            log_index: 0,
            leaf_hash: String::new(),
            receipt: String::new(),
            deliveries: Vec::new(),
            case_id: None,
            case_facts: Vec::new(),
            recipients: Vec::new(),
            accepted_at: now_rfc3339(),
            content: String::new(),
            content_mapping: String::new(),
            anomalies: Vec::new(),
        }
    }

    /// Waits until the writer has committed every queued confirmation.
    async fn until_confirmations_committed(store: &Store) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.confirming().is_empty() {
            assert!(Instant::now() < deadline, "never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Overwrites delivery `id`'s record with bytes that cannot be read back.
    fn damage_delivery(store: &Store, id: u64) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(DELIVERIES)
            .unwrap()
            .insert(id, b"not a delivery".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    /// Records and confirms one message with the given deliveries; returns them.
    pub(super) async fn accept(
        store: &Store,
        event_id: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Vec<Delivery> {
        let mut record = record(event_id);
        let Recorded::New(made) = store
            .record_accepted(&mut record, deliveries)
            .await
            .unwrap()
        else {
            panic!("{event_id} was taken for a duplicate");
        };
        let entry = LogEntry {
            log_index: 0,
            leaf_hash: String::new(),
            receipt: String::new(),
        };
        store.confirm_later(&record, entry, &made).unwrap();
        made
    }

    #[test]
    fn a_store_says_whether_it_was_made_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/store.redb");
        let store = Store::open(&path).unwrap();
        assert!(store.created_now());
        store.close().unwrap();
        let store = Store::open(&path).unwrap();
        assert!(!store.created_now());
        store.close().unwrap();
        // An emptied file is a new store too.
        std::fs::write(&path, b"").unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.created_now());
        store.close().unwrap();
    }

    #[tokio::test]
    async fn each_push_channel_reads_only_its_own_due_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        // A backlog on AMQP, then one webhook delivery due later than all of it.
        for n in 0..50 {
            accept(
                &store,
                &format!("a{n}"),
                vec![new_delivery("q", Channel::Amqp)],
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let webhook = accept(&store, "w", vec![new_delivery("h", Channel::Webhook)]).await;
        // The confirmations are written in order after the records: wait for the last.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.next_due(Channel::Webhook).unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the webhook delivery was never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        assert_eq!(
            store.next_due(Channel::Webhook).unwrap(),
            Some(webhook[0].due_ms)
        );
        let due = store.due(Channel::Webhook, now_ms(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, webhook[0].id);
        assert_eq!(due[0].body, b"{}");
        let amqp = store.due(Channel::Amqp, now_ms(), 10).unwrap();
        assert_eq!(amqp.len(), 10, "limited to 10");
        assert!(amqp.iter().all(|d| d.channel == Channel::Amqp));
        // Deliveries in flight are left out, and the room is filled from the ones after them.
        let in_flight: HashSet<u64> = amqp[..3].iter().map(|d| d.id).collect();
        let fresh = store
            .due_for(Channel::Amqp, now_ms(), &in_flight, 5, "", |_| usize::MAX)
            .unwrap()
            .taken;
        assert_eq!(
            fresh.iter().map(|d| d.id).collect::<Vec<_>>(),
            amqp[3..8].iter().map(|d| d.id).collect::<Vec<_>>()
        );
        assert!(store.next_due(Channel::Amqp).unwrap().unwrap() <= webhook[0].due_ms);
        // Nothing on the inbox channel is in the due index.
        assert_eq!(store.next_due(Channel::Inbox).unwrap(), None);
    }

    #[tokio::test]
    async fn a_recipients_backlog_leaves_room_for_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        // A backlog for one recipient, due first, then one delivery for each of two others.
        let mut backlog = Vec::new();
        for n in 0..20 {
            let made = accept(
                &store,
                &format!("b{n}"),
                vec![new_delivery("slow", Channel::Webhook)],
            )
            .await;
            backlog.push(made[0].id);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let other = accept(
            &store,
            "o",
            vec![
                new_delivery("fast", Channel::Webhook),
                new_delivery("quick", Channel::Webhook),
            ],
        )
        .await;
        until_confirmations_committed(&store).await;
        let now = now_ms();
        let ids = |look: &DueLook| look.taken.iter().map(|d| d.id).collect::<Vec<_>>();

        // Without a bound, every due delivery, each recipient's earliest first.
        let look = store
            .due_for(Channel::Webhook, now, &HashSet::new(), 100, "", |_| {
                usize::MAX
            })
            .unwrap();
        assert_eq!(look.taken.len(), 22);
        let slow: Vec<u64> = look
            .taken
            .iter()
            .filter(|d| d.recipient == "slow")
            .map(|d| d.id)
            .collect();
        assert_eq!(slow, backlog);
        assert_eq!(look.next_ms, None, "nothing is due later");

        // Two each at most: the backlog takes two, the others theirs, within the room.
        let look = store
            .due_for(Channel::Webhook, now, &HashSet::new(), 5, "", |_| 2)
            .unwrap();
        let mut taken = ids(&look);
        taken.sort();
        let mut expected = vec![backlog[0], backlog[1], other[0].id, other[1].id];
        expected.sort();
        assert_eq!(taken, expected);

        // The backlog's first two in flight, and no allowance left for it: only the others
        // are taken.
        let in_flight: HashSet<u64> = backlog[..2].iter().copied().collect();
        let look = store
            .due_for(Channel::Webhook, now, &in_flight, 16, "", |r| {
                if r == "slow" { 0 } else { 4 }
            })
            .unwrap();
        let mut taken = ids(&look);
        taken.sort();
        assert_eq!(taken, [other[0].id, other[1].id]);
        // With room for one, each look starts after the recipient the last one ended with,
        // and comes round.
        let mut turn = String::new();
        let mut served = Vec::new();
        for _ in 0..4 {
            let look = store
                .due_for(Channel::Webhook, now, &in_flight, 1, &turn, |_| 4)
                .unwrap();
            assert_eq!(look.taken.len(), 1);
            turn = look.last.expect("the recipient served");
            assert_eq!(look.taken[0].recipient, turn);
            served.push(turn.clone());
        }
        assert_eq!(served, ["fast", "quick", "slow", "fast"]);

        // A delivery due later tells when to look again, unless its recipient has no
        // allowance left.
        store
            .update(
                other[0].id,
                DeliveryUpdate::Retry {
                    error: "webhook.http-503".into(),
                    due_ms: now + 60_000,
                },
            )
            .await
            .unwrap();
        let look = store
            .due_for(Channel::Webhook, now, &HashSet::new(), 100, "", |_| 100)
            .unwrap();
        assert_eq!(look.next_ms, Some(now + 60_000));
        assert!(!ids(&look).contains(&other[0].id));
        let look = store
            .due_for(Channel::Webhook, now, &HashSet::new(), 100, "", |r| {
                usize::from(r != "fast")
            })
            .unwrap();
        assert_eq!(look.next_ms, None);
        let first = store.delivery_metadata(backlog[0]).unwrap().unwrap();
        assert_eq!(
            store.next_due(Channel::Webhook).unwrap(),
            Some(first.due_ms)
        );
    }

    #[tokio::test]
    async fn an_unreadable_due_delivery_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let made = accept(
            &store,
            "e",
            vec![
                new_delivery("a", Channel::Webhook),
                new_delivery("b", Channel::Webhook),
            ],
        )
        .await;
        until_confirmations_committed(&store).await;
        damage_delivery(&store, made[0].id);
        let look = store
            .due_for(Channel::Webhook, now_ms(), &HashSet::new(), 10, "", |_| 10)
            .unwrap();
        assert_eq!(
            look.taken.iter().map(|d| d.id).collect::<Vec<_>>(),
            [made[1].id]
        );
        assert_eq!(look.unreadable.len(), 1);
        assert_eq!(look.unreadable[0].0, made[0].id);
        // It stays in line, for a repaired store.
        assert_eq!(store.pending_deliveries(), 2);
    }

    #[tokio::test]
    async fn an_inbox_page_holds_a_bounded_weight_and_passes_over_an_unreadable_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        // Five messages of 3 MiB each, and one whose record is damaged.
        let mut made = Vec::new();
        for n in 0..6 {
            let mut delivery = new_delivery("inbox", Channel::Inbox);
            delivery.body = vec![b'x'; 3 << 20];
            made.extend(accept(&store, &format!("e{n}"), vec![delivery]).await);
        }
        until_confirmations_committed(&store).await;
        damage_delivery(&store, made[1].id);
        let ids = |page: &InboxPage| page.deliveries.iter().map(|d| d.id).collect::<Vec<_>>();
        // 8 MiB a page: two bodies, the damaged record passed over and named.
        let first = store.inbox("inbox", 0, 500).unwrap();
        assert_eq!(ids(&first), [made[0].id, made[2].id]);
        assert_eq!(first.unreadable.len(), 1);
        assert_eq!(first.unreadable[0].0, made[1].id);
        assert_eq!(first.last_seen, Some(made[2].id));
        let second = store.inbox("inbox", made[2].id, 500).unwrap();
        assert_eq!(ids(&second), [made[3].id, made[4].id]);
        // A page always holds one message, however large.
        let one = store.inbox("inbox", made[4].id, 1).unwrap();
        assert_eq!(ids(&one), [made[5].id]);
        let mut huge = new_delivery("big", Channel::Inbox);
        huge.body = vec![b'y'; INBOX_PAGE_BYTES + 1];
        let big = accept(&store, "huge", vec![huge]).await;
        until_confirmations_committed(&store).await;
        assert_eq!(ids(&store.inbox("big", 0, 500).unwrap()), [big[0].id]);
    }

    #[tokio::test]
    async fn an_outcome_that_comes_too_late_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let made = accept(
            &store,
            "e",
            vec![
                new_delivery("delivered", Channel::Webhook),
                new_delivery("dead", Channel::Webhook),
                new_delivery("inbox", Channel::Inbox),
            ],
        )
        .await;
        until_confirmations_committed(&store).await;
        let (delivered, dead, inbox) = (made[0].id, made[1].id, made[2].id);
        let retry = || DeliveryUpdate::Retry {
            error: "webhook.timeout".into(),
            due_ms: 0,
        };
        let bury = || DeliveryUpdate::Dead {
            error: "webhook.gone".into(),
            attempted: true,
        };
        store
            .update(delivered, DeliveryUpdate::Delivered)
            .await
            .unwrap();
        store.update(dead, bury()).await.unwrap();
        store
            .update(inbox, DeliveryUpdate::Acknowledged)
            .await
            .unwrap();
        assert_eq!(store.pending_deliveries(), 0);

        // A delivered push is not put back in line, nor buried.
        for late in [retry(), bury()] {
            let d = store.update(delivered, late).await.unwrap();
            assert_eq!((d.state, d.attempts), (DeliveryState::Delivered, 1));
        }
        // A dead letter is not delivered, nor put back in line, by a late outcome; it stays
        // a dead letter that can be redelivered.
        for late in [DeliveryUpdate::Delivered, retry()] {
            let d = store.update(dead, late).await.unwrap();
            assert_eq!(d.state, DeliveryState::Dead);
        }
        store.redeliverable(dead).unwrap();
        // An acknowledged inbox delivery stays acknowledged.
        for late in [bury(), DeliveryUpdate::Delivered] {
            let d = store.update(inbox, late).await.unwrap();
            assert_eq!(d.state, DeliveryState::Acknowledged);
        }
        assert_eq!(store.pending_deliveries(), 0);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), None);
        assert_eq!(
            store
                .dead_letters(0, DEAD_LETTER_PAGE)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            [dead]
        );
    }

    #[tokio::test]
    async fn a_confirmation_whose_group_failed_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut record = record("e");
        let Recorded::New(made) = store
            .record_accepted(&mut record, vec![new_delivery("hook", Channel::Webhook)])
            .await
            .unwrap()
        else {
            panic!("taken for a duplicate");
        };
        store.fail_next_group.store(true, Ordering::Relaxed);
        let entry = LogEntry {
            log_index: 7,
            leaf_hash: String::new(),
            receipt: String::new(),
        };
        store.confirm_later(&record, entry, &made).unwrap();
        // The group fails: the store says so, and the message is answered from memory.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.is_open() {
            assert!(Instant::now() < deadline, "the failure was not reported");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            store
                .accepted(&record.source, "e")
                .unwrap()
                .unwrap()
                .confirmed
        );
        // Written again a second later: on disk, the delivery in line, the store sound.
        until_confirmations_committed(&store).await;
        assert!(store.is_open());
        assert_eq!(store.pending_deliveries(), 1);
        let due = store.due(Channel::Webhook, now_ms(), 10).unwrap();
        assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), [made[0].id]);
        let r = store.db.begin_read().unwrap();
        assert!(r.open_table(UNCONFIRMED).unwrap().is_empty().unwrap());
    }

    #[tokio::test]
    async fn an_erased_delivery_leaves_its_line_and_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let made = accept(
            &store,
            "e",
            vec![
                new_delivery("inbox", Channel::Inbox),
                new_delivery("hook", Channel::Webhook),
            ],
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.waiting().unwrap().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the deliveries were never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.pending_deliveries(), 2);
        for d in &made {
            let erased = store.update(d.id, DeliveryUpdate::Erased).await.unwrap();
            assert_eq!(erased.state, DeliveryState::Dead);
            assert_eq!(erased.last_error.as_deref(), Some(CASE_ERASED));
            assert_eq!(erased.attempts, 0, "no attempt was made");
            assert!(store.delivery(d.id).unwrap().unwrap().body.is_empty());
            assert!(matches!(
                store.redeliverable(d.id),
                Err(StoreError::Refused(_))
            ));
        }
        assert!(store.waiting().unwrap().is_empty());
        assert!(store.inbox("inbox", 0, 10).unwrap().deliveries.is_empty());
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), None);
        assert_eq!(store.pending_deliveries(), 0);
        assert_eq!(store.dead_letters(0, 10).unwrap().len(), 2);
        assert_eq!(store.dead_letter_count().unwrap(), 2);
        let page = |after, limit| -> Vec<u64> {
            let dead = store.dead_letters(after, limit).unwrap();
            dead.iter().map(|d| d.id).collect()
        };
        let (first, second) = (made[0].id, made[1].id);
        assert_eq!(page(0, 1), [first]);
        assert_eq!(page(first, 1), [second]);
        assert_eq!(page(first, 10), [second]);
        assert!(page(second, 10).is_empty());
        assert!(page(0, 0).is_empty());
    }

    #[tokio::test]
    async fn a_completed_delivery_keeps_no_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let made = accept(
            &store,
            "e",
            vec![
                new_delivery("inbox", Channel::Inbox),
                new_delivery("hook", Channel::Webhook),
                new_delivery("broker", Channel::Amqp),
                new_delivery("gone", Channel::Webhook),
            ],
        )
        .await;
        until_confirmations_committed(&store).await;
        let body = |id: u64| store.delivery(id).unwrap().unwrap().body;
        let [inbox, hook, broker, gone] = [made[0].id, made[1].id, made[2].id, made[3].id];

        // Fetched from the inbox: it may be fetched again until acknowledged.
        let fetched = store
            .update(inbox, DeliveryUpdate::Delivered)
            .await
            .unwrap();
        assert!(fetched.holds_body());
        assert_eq!(body(inbox), b"{}");
        let acked = store
            .update(inbox, DeliveryUpdate::Acknowledged)
            .await
            .unwrap();
        assert!(!acked.holds_body());
        assert!(body(inbox).is_empty());

        for id in [hook, broker] {
            let pushed = store.update(id, DeliveryUpdate::Delivered).await.unwrap();
            assert_eq!(pushed.state, DeliveryState::Delivered);
            assert!(!pushed.holds_body());
            assert!(body(id).is_empty());
        }

        // A dead letter keeps its body, to be put back in line.
        let dead = DeliveryUpdate::Dead {
            error: "http-410".into(),
            attempted: true,
        };
        let dead = store.update(gone, dead).await.unwrap();
        assert!(dead.holds_body());
        assert_eq!(body(gone), b"{}");
        store.redeliverable(gone).unwrap();
    }

    /// The highest log index the confirmed records name is kept as a mark by the commits that
    /// confirm; a store written before the mark was kept is read through once, and the mark set.
    #[tokio::test]
    async fn the_highest_log_index_of_the_confirmed_records_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.highest_log_index().unwrap(), None);
        for (event_id, log_index) in [("a", 7), ("b", 41), ("c", 12)] {
            let mut record = record(event_id);
            let Recorded::New(made) = store
                .record_accepted(&mut record, Vec::new())
                .await
                .unwrap()
            else {
                panic!("{event_id} was taken for a duplicate");
            };
            let entry = LogEntry {
                log_index,
                leaf_hash: String::new(),
                receipt: String::new(),
            };
            store.confirm_later(&record, entry, &made).unwrap();
        }
        until_confirmations_committed(&store).await;
        assert_eq!(store.highest_log_index().unwrap(), Some(41));
        // The log's signed size, as the gateway notes it, only rises too.
        assert_eq!(store.signed_log_size().unwrap(), 0);
        for size in [50, 120, 80] {
            store.note_signed_log_size(size).await.unwrap();
        }
        assert_eq!(store.signed_log_size().unwrap(), 120);
        // An unconfirmed record names no entry yet.
        let mut unconfirmed = record("d");
        unconfirmed.log_index = 99;
        store
            .record_accepted(&mut unconfirmed, Vec::new())
            .await
            .unwrap();
        store.close().unwrap();
        // As an earlier version left it: no mark.
        {
            let db = Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(MARKS)
                .unwrap()
                .remove(HIGHEST_LOG_INDEX)
                .unwrap();
            w.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.highest_log_index().unwrap(), Some(41));
        assert_eq!(
            store.mark(HIGHEST_LOG_INDEX).unwrap(),
            41,
            "the mark is set again"
        );
    }

    #[tokio::test]
    async fn bodies_earlier_versions_kept_of_completed_deliveries_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        let made = accept(
            &store,
            "e",
            vec![
                new_delivery("inbox", Channel::Inbox),
                new_delivery("hook", Channel::Webhook),
                new_delivery("waiting", Channel::Webhook),
            ],
        )
        .await;
        until_confirmations_committed(&store).await;
        store
            .update(made[0].id, DeliveryUpdate::Acknowledged)
            .await
            .unwrap();
        store
            .update(made[1].id, DeliveryUpdate::Delivered)
            .await
            .unwrap();
        store.close().unwrap();
        // As an earlier version left it: every body kept, and no record of the change.
        {
            let db = Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut bodies = w.open_table(BODIES).unwrap();
                for d in &made {
                    bodies.insert(d.id, b"old".as_slice()).unwrap();
                }
                w.open_table(FORMAT)
                    .unwrap()
                    .remove(COMPLETED_BODIES_DELETED)
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let body = |id: u64| store.delivery(id).unwrap().unwrap().body;
        assert!(body(made[0].id).is_empty(), "acknowledged");
        assert!(body(made[1].id).is_empty(), "pushed");
        assert_eq!(body(made[2].id), b"old", "still waiting");
        assert_eq!(store.pending_deliveries(), 1);
    }

    #[tokio::test]
    async fn a_withdrawn_message_takes_its_provisional_facts_off_the_case_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let case = "RVA-2026-000001";
        let with_fact = |event_id: &str| {
            let mut r = record(event_id);
            r.case_id = Some(case.into());
            r.case_facts = vec!["lpc.issued".into()];
            r
        };
        let mut withdrawn = with_fact("e1");
        store
            .record_accepted(&mut withdrawn, Vec::new())
            .await
            .unwrap();
        assert!(store.case_file(case).unwrap().facts.contains("lpc.issued"));
        store.abandon(&withdrawn).await.unwrap();
        assert_eq!(store.case_file(case).unwrap(), CaseFile::default());

        let mut kept = with_fact("e2");
        store.record_accepted(&mut kept, Vec::new()).await.unwrap();
        let entry = LogEntry {
            log_index: 3,
            leaf_hash: "cd".repeat(32),
            receipt: "receipt".into(),
        };
        store.confirm_later(&kept, entry, &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.case_file(case).unwrap().is_firm("lpc.issued") {
            assert!(Instant::now() < deadline, "the confirmation is committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kept = store.accepted("urn:partner:test", "e2").unwrap().unwrap();
        // Withdrawing a confirmed message is refused, and its facts stay.
        assert!(store.abandon(&kept).await.is_err());
        assert!(store.case_file(case).unwrap().is_firm("lpc.issued"));
    }

    /// The facts of a message queued for the writer are on its case's file before they are
    /// committed, so that the next message of the case is checked against it; a group that
    /// fails takes them off again.
    #[tokio::test]
    async fn a_queued_message_is_on_its_case_file_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let case = "RVA-2026-000002";
        let mut issued = record("e1");
        issued.case_id = Some(case.into());
        issued.case_facts = vec!["lpc.issued".into()];
        let held = store.hold.lock().unwrap();
        let queued = store.queue_accepted(&mut issued, Vec::new()).unwrap();
        let file = store.case_file(case).unwrap();
        assert!(file.facts.contains("lpc.issued"), "{file:?}");
        assert!(!file.is_firm("lpc.issued"));
        drop(held);
        assert!(matches!(queued.recorded().await, Ok(Recorded::New(_))));
        assert!(store.case_file(case).unwrap().facts.contains("lpc.issued"));
        assert!(
            lock_queued(&store.queued_facts).is_empty(),
            "forgotten once committed"
        );

        // A group that fails: its facts were never written, and are no longer read.
        let other = "RVA-2026-000003";
        let mut failed = record("e2");
        failed.case_id = Some(other.into());
        failed.case_facts = vec!["lpc.issued".into()];
        store.fail_next_group.store(true, Ordering::Relaxed);
        let queued = store.queue_accepted(&mut failed, Vec::new()).unwrap();
        assert!(queued.recorded().await.is_err());
        assert_eq!(store.case_file(other).unwrap(), CaseFile::default());
        assert!(lock_queued(&store.queued_facts).is_empty());
    }

    /// A settlement that outlived its request withdraws or confirms the attempt it read, never
    /// a later attempt of the same message recorded meanwhile.
    #[tokio::test]
    async fn withdrawing_an_attempt_leaves_a_later_attempt_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let inbox = || vec![new_delivery("ma.dgsn", Channel::Inbox)];
        let mut first = record("e1");
        store.record_accepted(&mut first, inbox()).await.unwrap();
        // Settled by a later request: withdrawn, then recorded anew.
        store.abandon(&first).await.unwrap();
        assert_eq!(store.accepted("urn:partner:test", "e1").unwrap(), None);
        assert_eq!(store.delivery(first.deliveries[0]).unwrap(), None);
        let mut second = record("e1");
        second.accepted_at = "2026-11-29T21:00:00.000Z".into();
        store.record_accepted(&mut second, inbox()).await.unwrap();

        // The first settlement's withdrawal, late: refused, and the second attempt stays with
        // its delivery; so does a late confirmation of the first.
        assert!(matches!(
            store.abandon(&first).await,
            Err(StoreError::Refused(_))
        ));
        let entry = LogEntry {
            log_index: 7,
            leaf_hash: "ab".repeat(32),
            receipt: "receipt".into(),
        };
        let late = {
            let (store, first) = (store.clone(), first.clone());
            tokio::task::spawn_blocking(move || store.confirm_blocking(&first, entry))
        };
        assert!(matches!(late.await.unwrap(), Err(StoreError::Refused(_))));
        let kept = store.accepted("urn:partner:test", "e1").unwrap();
        assert_eq!(kept.as_ref(), Some(&second));
        assert!(store.delivery(second.deliveries[0]).unwrap().is_some());
        // Its own withdrawal still works.
        store.abandon(&second).await.unwrap();
        assert_eq!(store.accepted("urn:partner:test", "e1").unwrap(), None);
        assert_eq!(store.delivery(second.deliveries[0]).unwrap(), None);
    }

    /// A case file that cannot be read holds nothing back: the case's next message is recorded
    /// and confirmed, its deliveries released, and its file written afresh.
    #[tokio::test]
    async fn a_damaged_case_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let case = "RVA-2026-000002";
        let txn = store.db.begin_write().unwrap();
        txn.open_table(CASES)
            .unwrap()
            .insert(case, b"not a case file".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(store.case_file(case).unwrap(), CaseFile::default());

        let mut next = record("e1");
        next.case_id = Some(case.into());
        next.case_facts = vec!["lpc.issued".into()];
        let Recorded::New(made) = store
            .record_accepted(&mut next, vec![new_delivery("iom.ma", Channel::Inbox)])
            .await
            .unwrap()
        else {
            panic!("taken for a duplicate");
        };
        let entry = LogEntry {
            log_index: 1,
            leaf_hash: "ab".repeat(32),
            receipt: "receipt".into(),
        };
        store.confirm_later(&next, entry, &made).unwrap();
        until_confirmations_committed(&store).await;
        assert!(store.unconfirmed().unwrap().is_empty());
        assert_eq!(store.inbox("iom.ma", 0, 10).unwrap().deliveries.len(), 1);
        assert!(store.case_file(case).unwrap().is_firm("lpc.issued"));
    }

    /// A held record the start cannot read stops it, named for the operator.
    #[tokio::test]
    async fn an_unreadable_unconfirmed_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut held = record("REF-0042");
        store.record_accepted(&mut held, Vec::new()).await.unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(ACCEPTED)
            .unwrap()
            .insert(
                AcceptedRecord::key(&held.source, &held.event_id).as_str(),
                b"not a record".as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        let error = store.unconfirmed().unwrap_err();
        assert!(matches!(error, StoreError::Unreadable(_)), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("\"REF-0042\"") && text.contains("urn:partner:test"),
            "{text}"
        );
    }

    /// A write that fails on a record it cannot read changes nothing, and the other writes of
    /// its group are committed: only the database's own errors drop a whole group.
    // The test holds the writer on purpose while the update's task queues its write.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn an_unreadable_record_fails_its_own_write_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let damaged = accept(&store, "e0", vec![new_delivery("iom.ma", Channel::Inbox)]).await;
        let mut sound = record("e2");
        let Recorded::New(made) = store
            .record_accepted(&mut sound, vec![new_delivery("iom.ma", Channel::Inbox)])
            .await
            .unwrap()
        else {
            panic!("taken for a duplicate");
        };
        damage_delivery(&store, damaged[0].id);

        // The writer is held on a first write; the update and the confirmation queued meanwhile
        // make its next group together.
        let mut first = record("e1");
        let Recorded::New(first_made) =
            store.record_accepted(&mut first, Vec::new()).await.unwrap()
        else {
            panic!("taken for a duplicate");
        };
        let held = store.hold.lock().unwrap();
        let entry = LogEntry {
            log_index: 1,
            leaf_hash: "ab".repeat(32),
            receipt: "receipt".into(),
        };
        store.confirm_later(&first, entry, &first_made).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let update = {
            let store = store.clone();
            let id = damaged[0].id;
            tokio::spawn(async move { store.update(id, DeliveryUpdate::Delivered).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let entry = LogEntry {
            log_index: 2,
            leaf_hash: "cd".repeat(32),
            receipt: "receipt".into(),
        };
        store.confirm_later(&sound, entry, &made).unwrap();
        drop(held);
        assert!(matches!(
            update.await.unwrap(),
            Err(StoreError::Unreadable(_))
        ));
        until_confirmations_committed(&store).await;
        assert!(
            store
                .accepted("urn:partner:test", "e2")
                .unwrap()
                .unwrap()
                .confirmed
        );
        assert!(store.is_open(), "an unreadable record fails its write only");
    }

    /// The push workers are woken once the deliveries are in line, not when their release is
    /// only queued: a worker that looked before the commit would find nothing and sleep.
    #[tokio::test]
    async fn push_deliveries_are_due_when_their_release_is_notified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let released = store.released();
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut record = record("e1");
        let Recorded::New(made) = store
            .record_accepted(&mut record, vec![new_delivery("h", Channel::Webhook)])
            .await
            .unwrap()
        else {
            panic!("e1 was taken for a duplicate");
        };
        let held = store.hold.lock().unwrap();
        let entry = LogEntry {
            log_index: 0,
            leaf_hash: String::new(),
            receipt: String::new(),
        };
        store.confirm_later(&record, entry, &made).unwrap();
        assert!(
            store
                .due(Channel::Webhook, u64::MAX, 10)
                .unwrap()
                .is_empty()
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("the release was never notified");
        assert_eq!(store.due(Channel::Webhook, u64::MAX, 10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_queued_confirmation_is_read_before_it_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut first = record("e1");
        let Recorded::New(made) = store
            .record_accepted(&mut first, vec![new_delivery("iom.ma", Channel::Inbox)])
            .await
            .unwrap()
        else {
            panic!("e1 was taken for a duplicate");
        };
        let unconfirmed = store.accepted("urn:partner:test", "e1").unwrap().unwrap();
        assert!(!unconfirmed.confirmed);
        let entry = LogEntry {
            log_index: 7,
            leaf_hash: "ab".repeat(32),
            receipt: "receipt".into(),
        };
        // The writer is held before it can commit the confirmation: the record on disk is
        // still unconfirmed, and the store answers with the confirmation it has queued.
        let held = store.hold.lock().unwrap();
        store.confirm_later(&first, entry, &made).unwrap();
        let read = store.accepted("urn:partner:test", "e1").unwrap().unwrap();
        assert!(read.confirmed);
        assert_eq!(read.log_index, 7);
        assert_eq!(read.receipt, "receipt");
        assert_eq!(store.unconfirmed().unwrap().len(), 1, "not committed yet");
        drop(held);
        // Once committed, the map forgets it and the disk says the same; the delivery is
        // released.
        until_confirmations_committed(&store).await;
        assert!(store.unconfirmed().unwrap().is_empty());
        let read = store.accepted("urn:partner:test", "e1").unwrap().unwrap();
        assert!(read.confirmed);
        assert_eq!(read.log_index, 7);
        assert_eq!(store.inbox("iom.ma", 0, 10).unwrap().deliveries.len(), 1);
        assert!(store.is_open());
    }

    /// A damaged record is passed over by the lists the start, the erasures and the operators
    /// read (waiting deliveries, dead letters), which still list the others.
    #[tokio::test]
    async fn the_lists_pass_over_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let waiting = accept(
            &store,
            "waiting",
            vec![
                new_delivery("iom.ma", Channel::Inbox),
                new_delivery("ma.dgsn", Channel::Webhook),
            ],
        )
        .await;
        let mut dead = Vec::new();
        for n in 0..2 {
            let mut unwritable = new_delivery("ma.dgsn", Channel::Webhook);
            unwritable.unwritable = Some(UNWRITABLE.into());
            dead.extend(accept(&store, &format!("dead{n}"), vec![unwritable]).await);
        }
        until_confirmations_committed(&store).await;
        damage_delivery(&store, waiting[0].id);
        damage_delivery(&store, dead[0].id);
        let ids = |list: Vec<Delivery>| list.iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(store.waiting().unwrap()), [waiting[1].id]);
        assert_eq!(ids(store.dead_letters(0, 10).unwrap()), [dead[1].id]);
        assert_eq!(ids(store.dead_letters(0, 1).unwrap()), [dead[1].id]);
        // And they are named, for the sweeps that must see every delivery.
        let mut unreadable = store.unreadable_listed().unwrap();
        unreadable.sort_unstable();
        assert_eq!(unreadable, [waiting[0].id, dead[0].id]);
    }

    #[tokio::test]
    async fn a_delivery_that_could_not_be_written_is_not_redelivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut unwritable = new_delivery("ma.dgsn", Channel::Webhook);
        unwritable.body = Vec::new();
        unwritable.unwritable = Some(UNWRITABLE.into());
        let made = accept(&store, "e1", vec![unwritable]).await;
        assert_eq!(made[0].state, DeliveryState::Dead);
        assert_eq!(store.dead_letters(0, 10).unwrap().len(), 1);
        // The check made before the redelivery is audited refuses it as the update does.
        match store.redeliverable(made[0].id) {
            Err(StoreError::Refused(why)) => assert!(why.contains("no body"), "{why}"),
            other => panic!("redeliverable: {other:?}"),
        }
        assert!(matches!(
            store.redeliverable(made[0].id + 1),
            Err(StoreError::NotFound(_))
        ));
        let back_on = DeliveryUpdate::Redeliver {
            channel: Channel::Webhook,
        };
        match store.update(made[0].id, back_on).await {
            Err(StoreError::Refused(why)) => assert!(why.contains("no body"), "{why}"),
            other => panic!("redelivered: {other:?}"),
        }
        // It stays a dead letter, out of the due index.
        assert_eq!(store.dead_letters(0, 10).unwrap().len(), 1);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), None);
    }

    /// Records of erased cases' messages written by earlier versions, without a case id but
    /// with the digest of their content, lose the digest once, at open.
    #[tokio::test]
    async fn an_erased_cases_digest_kept_by_an_earlier_version_is_forgotten_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        accept(&store, "erased", Vec::new()).await;
        accept(&store, "kept", Vec::new()).await;
        store.close().unwrap();
        {
            // As an earlier version left it: the case id taken off, the digest kept.
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut accepted = w.open_table(ACCEPTED).unwrap();
                for (event_id, case_id) in [("erased", None), ("kept", Some("RVA-1"))] {
                    let key = AcceptedRecord::key("urn:partner:test", event_id);
                    let mut record: AcceptedRecord = serde_json::from_slice(
                        accepted.get(key.as_str()).unwrap().unwrap().value(),
                    )
                    .unwrap();
                    record.case_id = case_id.map(str::to_owned);
                    record.content = "sha256:00".into();
                    let value = serde_json::to_vec(&record).unwrap();
                    accepted.insert(key.as_str(), value.as_slice()).unwrap();
                }
                w.open_table(FORMAT)
                    .unwrap()
                    .remove(ERASED_CONTENT_FORGOTTEN)
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let erased = store
            .accepted("urn:partner:test", "erased")
            .unwrap()
            .unwrap();
        assert_eq!(erased.content, FORGOTTEN_CONTENT);
        let kept = store.accepted("urn:partner:test", "kept").unwrap().unwrap();
        assert_eq!(kept.content, "sha256:00");
        store.close().unwrap();
    }

    /// A record that cannot be read is said without its values: serde_json's message would
    /// quote the one it stopped at.
    #[test]
    fn an_unreadable_record_is_said_without_its_values() {
        let damaged = br#"{"id":1,"event_id":"E","attempts":"DIOP Awa"}"#;
        let error = serde_json::from_slice::<Delivery>(damaged).unwrap_err();
        assert!(
            error.to_string().contains("DIOP"),
            "serde_json quotes it: {error}"
        );
        let said = unreadable(error).to_string();
        assert!(!said.contains("DIOP"), "{said}");
        assert!(
            said.contains("not those of a record") && said.contains("line 1"),
            "{said}"
        );
        let cut = serde_json::from_slice::<Delivery>(br#"{"id":1,"event_id":"DI"#).unwrap_err();
        assert!(unreadable(cut).to_string().contains("cut short"));
    }

    /// Any dead letter can be discarded, one without a body once its `dead_lettered` entry is
    /// logged: it leaves the dead letters, its body is deleted, and nothing moves it again.
    #[tokio::test]
    async fn a_dead_letter_is_discarded_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut unwritable = new_delivery("ma.dgsn", Channel::Webhook);
        unwritable.body = Vec::new();
        unwritable.unwritable = Some(UNWRITABLE.into());
        let made = accept(
            &store,
            "e1",
            vec![unwritable, new_delivery("iom.ma", Channel::Webhook)],
        )
        .await;
        let (bodiless, pushed) = (made[0].id, made[1].id);
        // Not a dead letter yet.
        assert!(matches!(
            store.discardable(pushed),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.update(pushed, DeliveryUpdate::Discard).await,
            Err(StoreError::NotFound(_))
        ));
        // Created dead, its entry still owed: the log must say it died before it is discarded.
        for refused in [
            store.discardable(bodiless).map(drop),
            store
                .update(bodiless, DeliveryUpdate::Discard)
                .await
                .map(drop),
        ] {
            match refused {
                Err(StoreError::Refused(why)) => assert!(why.contains("not yet"), "{why}"),
                other => panic!("discarded while owed: {other:?}"),
            }
        }
        store
            .update(bodiless, DeliveryUpdate::DeadLetterAudited)
            .await
            .unwrap();
        let dead = DeliveryUpdate::Dead {
            error: "webhook.gone".into(),
            attempted: true,
        };
        store.update(pushed, dead).await.unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 2);
        assert!(!store.delivery(pushed).unwrap().unwrap().body.is_empty());

        for id in [bodiless, pushed] {
            assert_eq!(store.discardable(id).unwrap().id, id);
            let gone = store.update(id, DeliveryUpdate::Discard).await.unwrap();
            assert_eq!(gone.state, DeliveryState::Discarded);
            assert!(!gone.holds_body());
        }
        assert_eq!(store.dead_letter_count().unwrap(), 0);
        assert!(store.dead_letters(0, 10).unwrap().is_empty());
        let kept = store.delivery(pushed).unwrap().unwrap();
        assert_eq!(kept.state, DeliveryState::Discarded);
        assert!(
            kept.body.is_empty(),
            "the body of a discarded delivery is deleted"
        );
        // Nothing brings it back: not a second discard, a redelivery or an erasure.
        assert!(matches!(
            store.update(pushed, DeliveryUpdate::Discard).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.redeliverable(pushed),
            Err(StoreError::NotFound(_))
        ));
        let erased = store.update(pushed, DeliveryUpdate::Erased).await.unwrap();
        assert_eq!(erased.state, DeliveryState::Discarded);
        assert_eq!(store.dead_letter_count().unwrap(), 0);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), None);
    }

    /// An attempt that could not be recorded moves a waiting delivery later, and nothing else:
    /// no attempt is counted, no error kept; a delivery no longer waiting is left alone.
    #[tokio::test]
    async fn a_postponed_delivery_counts_no_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let made = accept(&store, "e1", vec![new_delivery("iom.ma", Channel::Webhook)]).await;
        let id = made[0].id;
        let failed = store
            .update(
                id,
                DeliveryUpdate::Retry {
                    error: "webhook.http-503".into(),
                    due_ms: 1_000,
                },
            )
            .await
            .unwrap();
        assert_eq!(failed.attempts, 1);
        let later = now_ms() + 60_000;
        let postponed = store
            .update(id, DeliveryUpdate::Postpone { due_ms: later })
            .await
            .unwrap();
        assert_eq!(postponed.attempts, 1);
        assert_eq!(postponed.last_error.as_deref(), Some("webhook.http-503"));
        assert_eq!(postponed.state, DeliveryState::Pending);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), Some(later));
        assert!(
            store
                .due(Channel::Webhook, now_ms(), 10)
                .unwrap()
                .is_empty()
        );
        // Delivered meanwhile: a late postponement changes nothing.
        store.update(id, DeliveryUpdate::Delivered).await.unwrap();
        let after = store
            .update(id, DeliveryUpdate::Postpone { due_ms: 5 })
            .await
            .unwrap();
        assert_eq!(after.state, DeliveryState::Delivered);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), None);
    }

    #[test]
    fn the_due_indexes_of_earlier_versions_are_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let delivery = |id: u64, channel: Channel| Delivery {
            id,
            event_id: format!("e{id}"),
            event_type: "test".into(),
            source: "urn:partner:test".into(),
            case_id: None,
            recipient: "r".into(),
            channel,
            body: Vec::new(),
            content_type: "application/json".into(),
            mapping_id: "r/test".into(),
            mapping_hash: String::new(),
            withheld: Vec::new(),
            state: DeliveryState::Pending,
            attempts: 0,
            due_ms: 1000 + id,
            last_error: None,
            created_at: now_rfc3339(),
        };
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut deliveries = w.open_table(DELIVERIES).unwrap();
                let mut unkeyed = w.open_table(DUE_UNKEYED).unwrap();
                let mut by_channel = w.open_table(DUE_BY_CHANNEL).unwrap();
                for (id, channel) in [(1, Channel::Webhook), (2, Channel::Amqp)] {
                    let d = delivery(id, channel);
                    let json = serde_json::to_vec(&d).unwrap();
                    deliveries.insert(id, json.as_slice()).unwrap();
                    unkeyed.insert((d.due_ms, id), ()).unwrap();
                }
                // The index of the version in between, keyed by channel.
                let d = delivery(3, Channel::Webhook);
                let json = serde_json::to_vec(&d).unwrap();
                deliveries.insert(3, json.as_slice()).unwrap();
                by_channel
                    .insert((Channel::Webhook.due_code(), d.due_ms, 3), ())
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.pending_deliveries(), 3);
        assert_eq!(store.next_due(Channel::Webhook).unwrap(), Some(1001));
        assert_eq!(store.next_due(Channel::Amqp).unwrap(), Some(1002));
        let webhook = store.due(Channel::Webhook, u64::MAX, 10).unwrap();
        assert_eq!(webhook.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 3]);
        store.close().unwrap();
        let db = Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        assert!(
            r.list_tables()
                .unwrap()
                .all(|t| t.name() != DUE_UNKEYED.name() && t.name() != DUE_BY_CHANNEL.name()),
            "the old tables are gone"
        );
    }
}
