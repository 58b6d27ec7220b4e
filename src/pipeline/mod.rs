//! The one ingest path every transport shares: identify, decode, validate, authorise, check
//! the domain, make durable, acknowledge.
//!
//! This module owns the order of those steps. Transports (REST, AMQP) are thin adapters
//! around it: they establish who the sender is (from its certificate, or the broker's
//! validated user id), hand over the bytes and their media type, and turn the [`Outcome`] or
//! the [`Refusal`] into their own kind of answer. They must not decide anything a message
//! means.
//!
//! What makes a message durable is two writes, queued together and each synced to disk: the
//! audit log's `accepted` entry, and the store's record of the message with its deliveries
//! (each recipient's body already encoded); only once both are durable is the sender told
//! `accepted`. A message whose audit entry or store record failed gets a
//! "try again later" answer, and nothing that was not made durable is ever acknowledged.

pub mod facts;
pub mod refusal_summaries;
pub mod sequence;
pub mod shares;

use crate::audit::{self, AuditLog, Fact, Kind, MappingRef, Personal, Transport};
use crate::canonical::{Catalogue, jcs};
use crate::mapping::{DecodeError, Decoded, Format, MappingSet};
use crate::metrics::Metrics;
use crate::registry::{Delivery as DeliveryMode, Registry};
use crate::store::{
    AcceptedRecord, Channel, Delivery, DeliveryState, DeliveryUpdate, LogEntry, NewDelivery,
    Recorded, Store,
};
use chrono::{SecondsFormat, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use refusal_summaries::RefusalSummaries;
use sequence::CaseFile;
use serde::Serialize;
use serde_json::{Value, json};
use shares::{FairShares, SharePermit};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Limits applied to every sender: the configuration's `[limits]` (every setting has a
/// default).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest message body accepted, in bytes. Default 1 MiB, which is also the mappings'
    /// own limit: a larger value lets bigger bodies through the transport, but the mappings
    /// still refuse messages over 1 MiB.
    pub max_body_bytes: usize,
    /// Messages a second each partner may send, sustained.
    pub rate_per_second: u32,
    /// Messages a partner may send in a burst above the sustained rate.
    pub burst: u32,
    /// How long the refusals of client certificates at the TLS handshake are tallied before
    /// their summaries are audited, in seconds (see [`refusal_summaries`]): anyone who can
    /// connect can have a certificate refused, so they are summarised less often than
    /// rate-limited messages.
    pub refused_certificate_summary_secs: u64,
    /// How many request bodies may be read at once, over every connection: with the size
    /// limit, this bounds the memory that bodies arriving slowly can hold. One partner reads
    /// at most half of them at once, the unregistered certificates one eighth.
    pub bodies_in_flight: usize,
    /// How long a request body may take to arrive, in seconds, once its headers have.
    pub body_read_secs: u64,
    /// How many REST messages may be in the gateway at once, over every connection, from
    /// before their body is read until they are answered (or, when their client went away,
    /// until they are made durable or given up). With the size limit, this bounds the memory
    /// the messages hold while a slow disk holds up their writes. One partner holds at most
    /// half of them, the unregistered certificates one eighth between them.
    pub messages_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: crate::mapping::DEFAULT_MAX_MESSAGE_BYTES,
            rate_per_second: 200,
            burst: 400,
            refused_certificate_summary_secs: 60,
            bodies_in_flight: 64,
            body_read_secs: 30,
            messages_in_flight: 128,
        }
    }
}

/// How a message's bytes are to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The partner's native format, or a structured-mode CloudEvent, with its media type
    /// (parameters such as `charset` may follow it).
    Typed(String),
    /// A binary-mode CloudEvent: the attributes from the transport's headers (`ce-*` in
    /// HTTP, `cloudEvents_*` in AMQP, names without prefix) and the data's media type.
    BinaryCloudEvent {
        /// Attribute name (`id`, `source`, `type`, …) and value.
        attributes: Vec<(String, String)>,
        /// The data's media type (`application/json`).
        content_type: String,
    },
    /// The transport could already tell that the message cannot be read (a header that does
    /// not decode, a content coding the gateway does not read). It is refused as any other
    /// message that cannot be read: counted against the sender's rate, and audited.
    Unreadable(Refusal),
}

/// One message handed over by a transport.
#[derive(Debug)]
pub struct Submission<'a> {
    /// The sender, as the transport authenticated it.
    pub partner: &'a str,
    /// The transport.
    pub transport: Transport,
    /// The bytes received.
    pub body: &'a [u8],
    /// How to read them.
    pub content: Content,
}

/// The gateway's acknowledgement of a message: what a sender keeps as proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// `accepted` or `duplicate`.
    pub status: &'static str,
    /// The event's CloudEvents `id`.
    pub event_id: String,
    /// Its `source`.
    pub source: String,
    /// Its type.
    pub event_type: String,
    /// The audit log entry recording the acceptance.
    pub log_index: u64,
    /// That entry's RFC 6962 leaf hash, hex.
    pub leaf_hash: String,
    /// The log's signed receipt for the entry, in its text form.
    pub receipt: String,
    /// Who the event is routed to, as far as the event alone decides: the IOM mission of the
    /// destination, which follows the case's booking, is not named.
    pub recipients: Vec<String>,
    /// The codes of the anomalies the gateway found (the event is delivered anyway).
    pub anomalies: Vec<String>,
}

/// What became of a message that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted now, durably.
    Accepted(Ack),
    /// Accepted earlier: the original acknowledgement, nothing written again.
    Duplicate(Ack),
    /// A message the programme does not use, recognised as such and audited.
    Ignored {
        /// Why.
        reason: String,
    },
}

/// Why a message was refused. Each kind maps to one HTTP status and one dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The bytes cannot be read (400).
    #[error("{0}")]
    Malformed(String),
    /// The sender may not send this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is too large (413).
    #[error("the message is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The media type is not one the sender uses (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The message does not map, or the event breaks the schema (422).
    #[error("{message}")]
    Unprocessable {
        /// What failed.
        message: String,
        /// Where: a canonical field or a JSON Pointer.
        path: Option<String>,
    },
    /// Over the sender's rate limit (429).
    #[error("over the rate limit of partner {partner}")]
    RateLimited {
        /// The sender.
        partner: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The event's case was erased (422, code `unprocessable`, path `/subject`): the gateway
    /// takes no more messages for it. Its refusal is audited with no commitment to the bytes,
    /// which would let whoever holds the log's private part test a guess of what a message of
    /// the erased case said.
    #[error(
        "the event's case was erased from the audit log; the gateway takes no more messages for \
         it, repeats of its messages among them"
    )]
    CaseErased,
    /// The source and reference name a message already accepted that says something else
    /// (409): the sender reused a reference.
    #[error("{0}")]
    Conflict(String),
    /// The message could not be made durable (503): nothing was accepted.
    #[error("the gateway cannot make the message durable now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// Every code [`Refusal::code`] gives.
    pub const CODES: [&'static str; 8] = [
        "malformed",
        "forbidden",
        "too-large",
        "unsupported-media-type",
        "unprocessable",
        "rate-limited",
        "conflict",
        "unavailable",
    ];

    /// The short code used in audit leaves, metrics and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::TooLarge { .. } => "too-large",
            Refusal::UnsupportedMediaType(_) => "unsupported-media-type",
            Refusal::Unprocessable { .. } | Refusal::CaseErased => "unprocessable",
            Refusal::RateLimited { .. } => "rate-limited",
            Refusal::Conflict(_) => "conflict",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    /// Where in the message the refusal lies, when it is known: a canonical field (dotted,
    /// below `data`), a JSON Pointer, or `/subject` for a case erased. A field's name, never
    /// its value: the transports may log it.
    pub fn path(&self) -> Option<&str> {
        match self {
            Refusal::Unprocessable { path, .. } => path.as_deref(),
            Refusal::CaseErased => Some("/subject"),
            _ => None,
        }
    }

    /// Whether the same message may succeed later (rate limit, durability), so that a
    /// transport should ask for it again rather than dead-letter it.
    pub fn is_transient(&self) -> bool {
        matches!(self, Refusal::RateLimited { .. } | Refusal::Unavailable(_))
    }
}

/// The shared state of one gateway: configuration, audit log, store, and the ingest path.
pub struct Gateway {
    /// The event catalogue.
    pub catalogue: Catalogue,
    /// The partners' mappings.
    pub mappings: MappingSet,
    /// The partner registry.
    pub registry: Registry,
    /// The audit log.
    pub log: Arc<AuditLog>,
    /// The durable store.
    pub store: Arc<Store>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Woken whenever push deliveries are added or put back in line.
    pub outbox_changed: Arc<Notify>,
    /// Held while an operator's change to a dead letter is audited and recorded (see
    /// [`crate::delivery::redeliver`] and [`crate::delivery::discard`]).
    pub(crate) dead_letter_changes: tokio::sync::Mutex<()>,
    limits: Limits,
    rate: DefaultKeyedRateLimiter<String>,
    refusal_summaries: Arc<RefusalSummaries>,
    /// One queue per source and reference of the messages being accepted.
    in_flight: TurnQueues,
    /// One queue per case: a message's case file is read, and its writes queued, in turn.
    cases_in_turn: TurnQueues,
    /// One permit per request body being read (see [`Gateway::body_permit`]).
    bodies: FairShares,
    /// One permit per REST message in the gateway (see [`Gateway::message_permit`]).
    messages: FairShares,
    /// One queue per recipient, whose turn is held while its inbox is read or acknowledged
    /// (see [`Gateway::inbox_turn`]).
    inbox_turns: TurnQueues,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// The name under which messages from certificates the registry does not know are counted
/// and their refusals kept (`refused/unregistered`).
pub const UNREGISTERED: &str = "unregistered";

/// The outcomes of a message that was not refused, as `passerelle_messages_total` counts
/// them (a refusal counts as its [`Refusal::code`]).
pub const MESSAGE_OUTCOMES: [&str; 3] = ["accepted", "duplicate", "ignored"];

/// The name under which client certificates that the TLS handshake refused are counted and
/// their refusals kept (`refused/unverified`): a refused certificate proves no identity.
pub const UNVERIFIED: &str = "unverified";

/// The reason recorded on the entries of an operator's changes to dead letters (`redelivered`,
/// `discarded`).
const OPERATOR: &str = "operator";

/// The synthetic case under which a refused message's commitments are kept, per sender: a
/// refused message may have no readable case id.
fn refusal_case(partner: &str) -> String {
    format!("refused/{partner}")
}

/// The case of a summary of `sender`'s refusals: the sender's refusal case, except that the
/// refusals of an unregistered certificate (whose sender is its fingerprint) are kept with
/// its other refusals, under `refused/unregistered`. No partner id has the fingerprint's
/// `sha256:` prefix, since a partner id has no `:`.
fn summary_case(sender: &str) -> String {
    if sender.starts_with(crate::tls::FINGERPRINT_PREFIX) {
        refusal_case(UNREGISTERED)
    } else {
        refusal_case(sender)
    }
}

impl Gateway {
    /// Puts the parts together.
    pub fn new(
        catalogue: Catalogue,
        mappings: MappingSet,
        registry: Registry,
        log: Arc<AuditLog>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Gateway {
        let per_second = NonZeroU32::new(limits.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let outbox_changed = store.released();
        for partner in registry.partners() {
            if mappings.partner(&partner.id).is_some() {
                metrics.messages_start_at_zero(
                    &partner.id,
                    "rest",
                    MESSAGE_OUTCOMES.iter().chain(&Refusal::CODES),
                );
            }
            if let Some(mode) = &partner.delivery {
                let channel = channel_of(mode);
                let outcomes: &[&str] = if channel == Channel::Inbox {
                    &["delivered", "acknowledged"]
                } else {
                    &["delivered", "retry", "dead", "discarded"]
                };
                metrics.deliveries_start_at_zero(&partner.id, channel.name(), outcomes);
            }
        }
        Gateway {
            catalogue,
            mappings,
            registry,
            log,
            store,
            metrics,
            outbox_changed,
            dead_letter_changes: tokio::sync::Mutex::new(()),
            rate: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            refusal_summaries: Arc::default(),
            bodies: FairShares::new(limits.bodies_in_flight),
            messages: FairShares::new(limits.messages_in_flight),
            limits,
            in_flight: Mutex::new(HashMap::new()),
            cases_in_turn: Mutex::new(HashMap::new()),
            inbox_turns: Mutex::new(HashMap::new()),
        }
    }

    /// Puts `store` in the place of the gateway's store, which it returns: for the start, once
    /// the store's file was rewritten (see [`Store::rewrite_file`]), before anything else uses
    /// the gateway.
    pub fn replace_store(&mut self, store: Arc<Store>) -> Arc<Store> {
        self.outbox_changed = store.released();
        std::mem::replace(&mut self.store, store)
    }

    /// The channel `recipient`'s deliveries go out on, from its delivery mode in the registry:
    /// `None` when the registry gives it none (an auditor, or a partner it no longer holds).
    pub fn channel_of(&self, recipient: &str) -> Option<Channel> {
        let mode = self.registry.partner(recipient)?.delivery.as_ref()?;
        Some(channel_of(mode))
    }

    /// Takes one message from `key`'s rate limit (a partner id, or [`UNREGISTERED`]).
    pub(crate) fn check_rate(&self, key: &str) -> Result<(), Refusal> {
        let Err(not_until) = self.rate.check_key(&key.to_owned()) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        Err(Refusal::RateLimited {
            partner: key.to_owned(),
            retry_after: wait,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs one message through the pipeline. Every refusal for good is audited (metadata
    /// and a commitment to the payload only) before it is returned; a rate-limited one is
    /// tallied for its sender's next summary ([`Gateway::audit_refusal_summaries`]); one that
    /// could not be made durable is not audited.
    pub async fn ingest(&self, submission: Submission<'_>) -> Result<Outcome, Refusal> {
        let started = Instant::now();
        let transport = transport_name(submission.transport);
        let partner = submission.partner;
        let result = self.process(&submission).await;
        match &result {
            Ok(Outcome::Accepted(_)) => {
                self.metrics.message(partner, transport, "accepted");
                self.metrics
                    .ingest_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(Outcome::Duplicate(_)) => self.metrics.message(partner, transport, "duplicate"),
            Ok(Outcome::Ignored { .. }) => self.metrics.message(partner, transport, "ignored"),
            Err(refusal) => {
                // Over AMQP a rate-limited message waits in its queue and is tried again: the
                // transport counts it once (see `amqp::ingress`), not at each try.
                let waits = matches!(refusal, Refusal::RateLimited { .. })
                    && submission.transport == Transport::Amqp;
                if !waits {
                    self.metrics.message(partner, transport, refusal.code());
                }
                match refusal {
                    // Tallied, and audited in a summary (see `refusal_summaries`). Over AMQP the
                    // message is not refused: it waits in its queue for the limit.
                    Refusal::RateLimited { .. } if submission.transport == Transport::Rest => {
                        self.refusal_summaries.record(
                            partner,
                            refusal_summaries::RATE_LIMITED,
                            Transport::Rest,
                            submission.body,
                            Utc::now(),
                        );
                    }
                    // A message that could not be made durable is not audited: the log or
                    // the store is what failed (a store failure after the log's entry voids
                    // that entry, see `accept`).
                    _ if refusal.is_transient() => {}
                    _ => self.audit_refusal(&submission, refusal).await?,
                }
            }
        }
        result
    }

    async fn process(&self, submission: &Submission<'_>) -> Result<Outcome, Refusal> {
        let partner = submission.partner;
        self.check_rate(partner)?;
        if submission.body.len() > self.limits.max_body_bytes {
            return Err(Refusal::TooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        let mapping = self.mappings.partner(partner).ok_or_else(|| {
            Refusal::Forbidden(format!(
                "partner {partner} sends no messages to the gateway"
            ))
        })?;
        let structured;
        let bytes: &[u8] = match &submission.content {
            Content::Typed(media) => {
                check_media_type(mapping.format, media)?;
                submission.body
            }
            Content::BinaryCloudEvent {
                attributes,
                content_type,
            } => {
                if mapping.format != Format::Cloudevents {
                    return Err(Refusal::UnsupportedMediaType(format!(
                        "this partner sends {}, not binary-mode CloudEvents (CloudEvents \
                         attribute headers)",
                        media_types(mapping.format).join(" or ")
                    )));
                }
                // The body is the sender's message: bounded before it is read.
                if submission.body.len() > mapping.max_message_bytes() {
                    return Err(Refusal::TooLarge {
                        limit: mapping.max_message_bytes(),
                    });
                }
                structured = binary_to_structured(attributes, content_type, submission.body)?;
                &structured
            }
            Content::Unreadable(refusal) => return Err(refusal.clone()),
        };
        // A kind whose mapping the registry does not put in force is refused before any of
        // its fields is read.
        let in_force = |mapping_id: &str| self.registry.mapping_in_force(partner, mapping_id);
        // In binary mode the body is the event's data: the attributes that the structured
        // form adds (bounded in `binary_to_structured`) do not count against the size limit.
        let decoded = mapping
            .decode_in_force(bytes, submission.body.len(), &in_force)
            .map_err(refusal_of)?;
        let (mut event, kind) = match decoded {
            Decoded::Event(mapped) => {
                let kind = mapped
                    .mapping_id
                    .rsplit_once('/')
                    .map_or(String::new(), |(_, kind)| kind.to_owned());
                (mapped.event, kind)
            }
            Decoded::Ignored {
                mapping_id,
                mapping_hash,
                reason,
                ..
            } => {
                let mut fact = Fact::new(Kind::Received, Utc::now());
                fact.sender = Some(partner.to_owned());
                fact.transport = Some(submission.transport);
                fact.mapping = Some(MappingRef {
                    id: mapping_id,
                    hash: mapping_hash,
                });
                fact.reason = Some("ignored".into());
                fact.case_id = Some(refusal_case(partner));
                fact.personal = Personal {
                    native: Some(submission.body.to_vec()),
                    commit_only: true,
                    ..Personal::default()
                };
                self.append(&fact).await?;
                return Ok(Outcome::Ignored { reason });
            }
        };
        let event_type = text(&event, "type");
        let event_id = text(&event, "id");
        let source = text(&event, "source");
        // The id names the message in the audit log, the duplicate index and the gateway's
        // log lines, which take short identifiers that show as themselves: a longer one, or one
        // with a character that does not show (which would make two references that read alike
        // differ, or turn a log line around), is the sender's to mend (the schema counts
        // characters, the log bytes). References are compared exactly, byte for byte.
        // Said as the mapping's other refusals are, naming the native field the id was read
        // from (a native partner knows its own message, not the canonical one).
        let read_from = mapping
            .inbound()
            .iter()
            .find(|inbound| inbound.name == kind)
            .and_then(|inbound| inbound.source_of("/id"))
            .unwrap_or("the id");
        let id_refused = |what: String| Refusal::Unprocessable {
            message: format!("partner {partner}, message {kind}, field id: {read_from} {what}"),
            path: Some("id".into()),
        };
        if event_id.len() > audit::leaf::limits::ID_LEN {
            return Err(id_refused(format!(
                "must be at most {} bytes long (UTF-8); it has {} bytes",
                audit::leaf::limits::ID_LEN,
                event_id.len()
            )));
        }
        if let Some(character) = crate::canonical::text::first_unprintable(&event_id) {
            return Err(id_refused(format!(
                "holds {} U+{:04X}: a reference must be text that shows as itself",
                crate::canonical::text::kind_of(character),
                u32::from(character)
            )));
        }
        if !audit::leaf::limits::fits_identifier(&event_id) {
            return Err(id_refused("is empty".into()));
        }
        // The transport's span for this message (see `server::routes` and `amqp::ingress`)
        // names the event from here on, for every line logged while it is processed.
        let span = tracing::Span::current();
        span.record("event_id", event_id.as_str());
        span.record("event_type", event_type.as_str());
        self.registry
            .authorise(partner, &event_type)
            .map_err(|e| Refusal::Forbidden(e.to_string()))?;

        // One message per source and reference at a time, so that a duplicate sent while the
        // first is being made durable waits for it and gets its receipt.
        // The turn is released and the place left when `place` drops, also when this future
        // is dropped.
        let mut place = Turn::join(&self.in_flight, AcceptedRecord::key(&source, &event_id))?;
        place.wait_turn().await;
        self.accept(submission, &mut event, &event_type, &event_id, &source)
            .await
    }

    async fn accept(
        &self,
        submission: &Submission<'_>,
        event: &mut Value,
        event_type: &str,
        event_id: &str,
        source: &str,
    ) -> Result<Outcome, Refusal> {
        let partner = submission.partner;
        let content = Said {
            digest: content_digest(event),
            mapping: text(event, "mappinghash"),
        };
        let case_id = facts::case_id(event);
        // An erased case takes no more messages: the log can write nothing more under it (its
        // keys are gone), so this is the sender's to know, not an outage to retry. Checked
        // before the duplicates: the store no longer keeps what an erased case's messages
        // said, to tell a repeat of one from another message.
        if let Some(case) = &case_id
            && self
                .log
                .is_case_erased(case)
                .map_err(|e| unavailable(&e.to_string()))?
        {
            return Err(Refusal::CaseErased);
        }
        if let Some(record) = self
            .store
            .accepted(source, event_id)
            .map_err(|e| unavailable(&e.to_string()))?
        {
            if record.confirmed {
                return repeat_of(record, &content);
            }
            // An earlier attempt of this message stopped between its two writes (its audit
            // append failed, and so did its withdrawal); it was answered 503. Settle it now,
            // as at start-up: a duplicate of what the log holds, or else withdrawn and
            // accepted anew below.
            if let Some(confirmed) = self.settle_now(record).await? {
                return repeat_of(confirmed, &content);
            }
        }
        // The messages of one case are checked in turn, each against the case's file with
        // the facts of every message of the case queued before it (whose audit entries come
        // before its own in the log), not only those already committed. The turn is held until
        // the message's audit entry and store record are queued, not until they are durable: a
        // message checked meanwhile counts an earlier one's facts even if that one is then
        // withdrawn (see `CaseFile`).
        let mut case_turn = match &case_id {
            Some(case) => Some(Turn::join(&self.cases_in_turn, case.clone())?),
            None => None,
        };
        if let Some(turn) = &mut case_turn {
            turn.wait_turn().await;
        }
        let case_file = match &case_id {
            Some(case) => Some(
                self.store
                    .case_file(case)
                    .map_err(|e| unavailable(&e.to_string()))?,
            ),
            None => None,
        };
        // Domain checks raise anomalies on the event; they never refuse it.
        let mut anomalies = case_file
            .as_ref()
            .map(|file| file.check(&self.catalogue, event))
            .unwrap_or_default();
        let journey_ends = case_file
            .as_ref()
            .map(CaseFile::journey_ends)
            .unwrap_or_default();
        let (recipients, unresolved) = self.registry.recipients(partner, event, &journey_ends);
        let unresolved_anomaly = |role: &String| {
            json!({
                "code": format!("routing.unresolved_{}", role.replace('-', "_")),
                "message": format!("no partner is configured as the {role} of this event"),
            })
        };
        let mut raised_by_routing: Vec<Value> = unresolved.iter().map(unresolved_anomaly).collect();
        let out_of_scope = self.registry.out_of_scope(partner, event);
        let scope_anomaly = out_of_scope
            .as_ref()
            .map(|(code, message)| json!({ "code": code, "message": message }));
        raised_by_routing.extend(scope_anomaly.clone());
        // The sender's acknowledgement tells what its message alone decides: the anomalies of
        // the mapping's checks, the routing and the scope, and the recipients, but not the
        // case file's sequence checks, nor a recipient that the case's booking decides (the IOM
        // mission of the destination), nor that it cannot be resolved. The event carries every
        // anomaly to its recipients, and each is audited, as is every recipient. In an
        // acknowledgement they would tell any sender whether a case it has no part in exists,
        // how far it has gone, and where it is booked to.
        let (told_recipients, told_unresolved) =
            self.registry.recipients_told_to_sender(partner, event);
        let mut told_to_sender = codes_of(listed_anomalies(event));
        told_to_sender.extend(codes_of(
            &told_unresolved
                .iter()
                .map(unresolved_anomaly)
                .chain(scope_anomaly)
                .collect::<Vec<_>>(),
        ));
        anomalies.append(&mut raised_by_routing);
        if !anomalies.is_empty() {
            let list = event["data"]
                .as_object_mut()
                .map(|data| data.entry("anomalies").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = list {
                list.extend(anomalies);
            }
        }
        let anomaly_codes = codes_of(listed_anomalies(event));
        // The case file is written only when the event records a fact not yet firm on it, and
        // never by a sender speaking outside its scope.
        let case_facts = case_file
            .filter(|_| out_of_scope.is_none())
            .map(|file| file.not_firm(CaseFile::facts_of(event)))
            .unwrap_or_default();

        let canonical = jcs::to_vec(event);
        let deliveries = self.write_for_recipients(event, &canonical, &recipients);
        let (documents, identifiers) = facts::identifiers(event, partner);
        let mapping = mapping_ref(event);

        let mut accepted = Fact::new(Kind::Accepted, Utc::now());
        accepted.sender = Some(partner.to_owned());
        accepted.recipients = recipients.clone();
        accepted.transport = Some(submission.transport);
        accepted.event_type = Some(event_type.to_owned());
        accepted.event_id = Some(event_id.to_owned());
        accepted.mapping = mapping.clone();
        accepted.case_id = case_id.clone();
        accepted.personal = Personal {
            native: Some(submission.body.to_vec()),
            canonical: Some(canonical),
            documents,
            commit_only: false,
        };
        accepted.identifiers = identifiers;
        // What the event puts in its audit entry (its case id, its identifiers) must fit the
        // log's bounds: an event that does not is refused as the sender's to mend, before
        // anything is written, rather than failing the append as if the log were down.
        if let Err(error) = accepted.validate() {
            return Err(Refusal::Unprocessable {
                message: format!("the event cannot be recorded in the audit log: {error}"),
                path: None,
            });
        }
        let anomaly_reasons: Vec<String> = anomaly_codes.iter().map(|c| reason_code(c)).collect();
        let mut record = AcceptedRecord {
            event_id: event_id.to_owned(),
            source: source.to_owned(),
            sender: partner.to_owned(),
            event_type: event_type.to_owned(),
            confirmed: false,
            log_index: 0,
            leaf_hash: String::new(),
            receipt: String::new(),
            deliveries: Vec::new(),
            case_id: case_id.clone(),
            case_facts,
            recipients: told_recipients,
            accepted_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            content: content.digest.clone(),
            content_mapping: content.mapping.clone(),
            anomalies: anomaly_reasons,
        };
        let anomaly_facts: Vec<Fact> = record
            .anomalies
            .iter()
            .map(|reason| anomaly_fact(&record, reason))
            .collect();

        // The audit entry and the store record are written at once, each synced to disk; the
        // deliveries are held until both are known to be durable. See `settle_unconfirmed`
        // for a crash between the two. Both are queued before the case's turn passes on.
        // The record is queued with no wait after the acceptance entry is: a request dropped
        // in between would leave that entry with no record to settle it against.
        let logged = self.queue_append(&accepted).await?;
        record.leaf_hash = hex::encode(logged.leaf_hash().0);
        let recorded = self.store.queue_accepted(&mut record, deliveries);
        let mut anomalies_queued = Vec::with_capacity(anomaly_facts.len());
        for fact in &anomaly_facts {
            anomalies_queued.push(self.queue_append(fact).await);
        }
        drop(case_turn);
        let recorded = async {
            match recorded {
                Ok(queued) => queued.recorded().await,
                Err(error) => Err(error),
            }
        };
        let (logged, anomalies_logged, recorded) = tokio::join!(
            self.appended(Ok(logged)),
            futures_util::future::join_all(
                anomalies_queued
                    .into_iter()
                    .map(|queued| self.appended(queued))
            ),
            recorded,
        );
        let made = match (logged, recorded) {
            (Ok(_), Ok(Recorded::New(_))) if anomalies_logged.iter().any(Result::is_err) => {
                // The acceptance is logged, and an anomaly it owes is not: the record stays
                // held, and no `2xx` goes out before the evidence is whole. An append fails
                // once the log has stopped, and a stopped log takes no appends until the
                // gateway restarts: the next start settles it (the anomaly entries the log
                // lacks are written, then the message is confirmed).
                tracing::error!(
                    "an anomaly entry was not logged; the message is settled at the next start"
                );
                return Err(unavailable(
                    "the message's anomaly entries could not be logged",
                ));
            }
            (Ok(receipt), Ok(Recorded::New(made))) => {
                let entry = LogEntry {
                    log_index: receipt.index,
                    leaf_hash: hex::encode(receipt.leaf_hash.0),
                    receipt: receipt.to_text(),
                };
                self.store
                    .confirm_later(&record, entry.clone(), &made)
                    .map_err(|e| unavailable(&e.to_string()))?;
                let mut ack = ack_of("accepted", record);
                ack.log_index = entry.log_index;
                ack.leaf_hash = entry.leaf_hash;
                ack.receipt = entry.receipt;
                ack.anomalies = told_to_sender;
                (ack, made)
            }
            (Ok(_), Ok(Recorded::Duplicate(first))) => {
                // Only reachable when another instance shares the store (one instance holds
                // the message's turn until its attempt is settled): the first record stands,
                // and this second acceptance entry is voided in the log.
                self.void_acceptance(partner, &accepted, "duplicate").await;
                if !first.confirmed {
                    // That attempt is still being made durable, and has no receipt yet.
                    return Err(unavailable(
                        "another attempt of this message is being recorded",
                    ));
                }
                return repeat_of(*first, &content);
            }
            (Err(refusal), Ok(Recorded::New(_))) => {
                if let Err(e) = self.store.abandon(&record).await {
                    tracing::error!(error = %e, "an unlogged message could not be withdrawn; it is settled at its next attempt or the next start");
                }
                return Err(refusal);
            }
            (Err(refusal), _) => return Err(refusal),
            (Ok(_), Err(error)) => {
                self.void_acceptance(partner, &accepted, "store-unavailable")
                    .await;
                return Err(unavailable(&error.to_string()));
            }
        };
        // The push workers are woken by the store once the confirmation is committed.
        let (ack, made) = made;
        for dead in made.iter().filter(|d| d.state == DeliveryState::Dead) {
            self.audit_created_dead(dead).await;
        }
        Ok(Outcome::Accepted(ack))
    }

    /// Records in the log that an acceptance entry does not stand (the message was not kept),
    /// so that auditors do not count it.
    async fn void_acceptance(&self, partner: &str, accepted: &Fact, reason: &str) {
        let mut fact = Fact::new(Kind::Rejected, Utc::now());
        fact.sender = Some(partner.to_owned());
        fact.transport = accepted.transport;
        fact.event_type = accepted.event_type.clone();
        fact.event_id = accepted.event_id.clone();
        fact.case_id = accepted.case_id.clone();
        fact.reason = Some(reason.to_owned());
        // Indexed like the acceptance it voids, so that a search by the sender's reference
        // (the settling of unconfirmed messages, the auditors' trails) finds both.
        fact.identifiers = accepted.identifiers.clone();
        if let Err(e) = self.append(&fact).await {
            tracing::error!(error = %e, "a voided acceptance could not be logged");
        }
    }

    /// Settles, before serving, the messages a crash left between their store record and
    /// their audit entry: a message whose `accepted` entry is in the log is confirmed (with a
    /// receipt issued again for that entry) and its deliveries released; any other was never
    /// acknowledged to its sender, and is withdrawn. Blocking.
    pub fn settle_unconfirmed(&self) -> anyhow::Result<(usize, usize)> {
        let pending = self.store.unconfirmed()?;
        if pending.is_empty() {
            return Ok((0, 0));
        }
        // A checkpoint covering every durable entry, so that they can be read and proved.
        self.log.sync()?;
        let (mut confirmed, mut withdrawn) = (0, 0);
        for record in pending {
            // The dead letters of a confirmed message are audited next, with those owed from
            // before ([`Gateway::audit_owed_dead_letters`]).
            match settle(&self.log, &self.store, &record)? {
                Settled::Confirmed(_) => confirmed += 1,
                Settled::Withdrawn => withdrawn += 1,
                // One case's lost key does not stop the others: the message stays held, its
                // sender answered 503 until the key file is restored.
                Settled::Held(why) => tracing::error!(
                    event_id = %record.event_id,
                    partner = %record.sender,
                    "an accepted message is left unconfirmed: {why}"
                ),
            }
        }
        Ok((confirmed, withdrawn))
    }

    /// The deliveries of an accepted message that were dead letters from the start (the
    /// gateway could not write them) and are still owed their `dead_lettered` entries, which
    /// follow the confirmation: one an earlier settlement of the message audited is not
    /// audited again.
    fn dead_letters_of(&self, record: &AcceptedRecord) -> Vec<Delivery> {
        record
            .deliveries
            .iter()
            .filter(|id| self.store.dead_letter_audit_owed(**id).unwrap_or(true))
            .filter_map(|id| self.store.delivery_metadata(*id).ok().flatten())
            .filter(|d| d.state == DeliveryState::Dead)
            .collect()
    }

    /// Settles one unconfirmed message while serving (see [`Gateway::settle_unconfirmed`]),
    /// off the async workers: its confirmed record (its push deliveries woken, its dead
    /// letters audited), or `None` once it is withdrawn.
    async fn settle_now(&self, record: AcceptedRecord) -> Result<Option<AcceptedRecord>, Refusal> {
        let (log, store) = (self.log.clone(), self.store.clone());
        let settled = tokio::task::spawn_blocking(move || {
            log.sync()?;
            settle(&log, &store, &record)
        })
        .await
        .map_err(|e| unavailable(crate::error_text::task_failure(&e)))?
        .map_err(|e| {
            tracing::error!(error = %e, "an unconfirmed message could not be settled");
            unavailable("an earlier attempt of this message is not settled yet")
        })?;
        let settled = match settled {
            Settled::Confirmed(record) => Some(*record),
            Settled::Withdrawn => None,
            Settled::Held(why) => {
                tracing::error!("an accepted message is left unconfirmed: {why}");
                return Err(unavailable(
                    "an earlier attempt of this message is not settled yet",
                ));
            }
        };
        if let Some(record) = &settled {
            self.outbox_changed.notify_waiters();
            for dead in self.dead_letters_of(record) {
                self.audit_created_dead(&dead).await;
            }
        }
        Ok(settled)
    }

    /// Writes the event for each recipient, in its format and under its need-to-know
    /// policy. A recipient the gateway cannot write for (its mapping fails, or the registry
    /// does not put that mapping in force for it) still gets a delivery record, already
    /// dead-lettered by the delivery workers, so that nothing disappears unnoticed.
    fn write_for_recipients(
        &self,
        event: &Value,
        canonical: &[u8],
        recipients: &[String],
    ) -> Vec<NewDelivery> {
        recipients
            .iter()
            .map(|recipient| {
                // A recipient without a delivery mode keeps its deliveries in an inbox.
                let channel = self.channel_of(recipient).unwrap_or(Channel::Inbox);
                let mapping = self.mappings.partner(recipient);
                let written = match mapping.map(|m| m.encode_with_canonical(event, canonical)) {
                    Some(Ok(encoded))
                        if !self
                            .registry
                            .mapping_in_force(recipient, &encoded.mapping_id) =>
                    {
                        Err((
                            crate::store::NOT_IN_FORCE,
                            format!(
                                "mapping {} is not in force for partner {recipient}",
                                encoded.mapping_id
                            ),
                        ))
                    }
                    Some(Ok(encoded)) => Ok(encoded),
                    Some(Err(e)) => Err((crate::store::UNWRITABLE, e.without_values())),
                    None => Err((
                        crate::store::UNWRITABLE,
                        format!("partner {recipient} has no mapping"),
                    )),
                };
                match written {
                    Ok(encoded) => NewDelivery {
                        recipient: recipient.clone(),
                        channel,
                        body: encoded.body,
                        content_type: encoded.content_type.to_owned(),
                        mapping_id: encoded.mapping_id,
                        mapping_hash: mapping.map(|m| m.hash.clone()).unwrap_or_default(),
                        withheld: encoded.withheld,
                        unwritable: None,
                    },
                    Err((code, why)) => {
                        tracing::error!(recipient = %recipient, error = %why, "cannot write an event for its recipient");
                        NewDelivery {
                            recipient: recipient.clone(),
                            channel,
                            body: Vec::new(),
                            content_type: String::new(),
                            mapping_id: String::new(),
                            mapping_hash: String::new(),
                            withheld: Vec::new(),
                            unwritable: Some(code.into()),
                        }
                    }
                }
            })
            .collect()
    }

    /// Appends a fact to the audit log, counting it; a failure is a 503.
    pub async fn append(&self, fact: &Fact) -> Result<audit::Receipt, Refusal> {
        let queued = self.queue_append(fact).await;
        self.appended(queued).await
    }

    /// Queues an audit append ([`AuditLog::queue_append`]); a failure is counted and logged
    /// as a failed append.
    async fn queue_append(&self, fact: &Fact) -> Result<audit::QueuedAppend, Refusal> {
        self.log
            .queue_append(fact)
            .await
            .map_err(|error| self.append_failed(&error))
    }

    /// The receipt of a queued append, once it is durable.
    async fn appended(
        &self,
        queued: Result<audit::QueuedAppend, Refusal>,
    ) -> Result<audit::Receipt, Refusal> {
        match queued?.durable().await {
            Ok(receipt) => {
                self.metrics.audit_appends.inc();
                Ok(receipt)
            }
            Err(error) => Err(self.append_failed(&error)),
        }
    }

    fn append_failed(&self, error: &audit::AuditError) -> Refusal {
        self.metrics.audit_failures.inc();
        match error {
            // The log said its failure once, when it stopped; each message it refuses after
            // that is not an error line of its own (a full disk would take one a message).
            audit::AuditError::Stopped(_) => {
                tracing::debug!(error = %error, "audit append refused: the audit log has stopped");
            }
            _ => tracing::error!(error = %error, "audit append failed"),
        }
        unavailable(&error.to_string())
    }

    /// Audits what became of a delivery: delivered, acknowledged, failed or dead-lettered.
    pub async fn audit_delivery(
        &self,
        delivery: &Delivery,
        kind: Kind,
        reason: Option<String>,
    ) -> Result<audit::Receipt, Refusal> {
        let fact = self.delivery_fact(delivery, kind, reason);
        self.append(&fact).await
    }

    /// Audits an operator's change to a dead letter (`kind`, reason `operator`). The entry
    /// names the case unless it was erased: nothing more is written under an erased case.
    pub async fn audit_operator_change(
        &self,
        delivery: &Delivery,
        kind: Kind,
    ) -> Result<audit::Receipt, Refusal> {
        let mut fact = self.delivery_fact(delivery, kind, Some(OPERATOR.into()));
        if let Some(case) = &delivery.case_id
            && self
                .log
                .is_case_erased(case)
                .map_err(|error| unavailable(&error.to_string()))?
        {
            fact.case_id = None;
        }
        self.append(&fact).await
    }

    /// Audits that a delivery of an erased case was withdrawn without an attempt
    /// (`dead_lettered`, reason [`crate::store::CASE_ERASED`]). The entry does not name the
    /// case: the log writes nothing more under an erased case.
    pub async fn audit_erased_delivery(
        &self,
        delivery: &Delivery,
    ) -> Result<audit::Receipt, Refusal> {
        self.audit_dead_without_case(delivery, crate::store::CASE_ERASED.into())
            .await
    }

    /// Audits a delivery of an erased case as `dead_lettered` with `reason`, naming no case:
    /// nothing more is written under an erased case.
    async fn audit_dead_without_case(
        &self,
        delivery: &Delivery,
        reason: String,
    ) -> Result<audit::Receipt, Refusal> {
        let mut fact = self.delivery_fact(delivery, Kind::DeadLettered, Some(reason));
        fact.case_id = None;
        self.append(&fact).await
    }

    /// Audits a delivery created dead, and logs a failure: it is then still owed, and the next
    /// start audits it ([`Gateway::audit_owed_dead_letters`]).
    async fn audit_created_dead(&self, dead: &Delivery) {
        // The ERROR line that says why the event could not be written came before the
        // delivery had an id; this one gives the operator the id to act on.
        tracing::warn!(
            delivery = dead.id,
            recipient = %dead.recipient,
            reason = dead.last_error.as_deref().unwrap_or_default(),
            "a delivery was created dead; see `passerelle deliveries dead`"
        );
        if let Err(e) = self.audit_owed(dead).await {
            tracing::error!(error = %e, delivery = dead.id, "a dead letter's entry is still owed; the next start logs it");
        }
    }

    /// Audits a delivery created dead (`dead_lettered`, with its reason; without its case if
    /// the case was erased), then records in the store that its entry is no longer owed.
    async fn audit_owed(&self, dead: &Delivery) -> anyhow::Result<()> {
        let erased = match &dead.case_id {
            Some(case) => self.log.is_case_erased(case)?,
            None => false,
        };
        let reason = dead.last_error.clone();
        let logged = if erased {
            self.audit_dead_without_case(dead, reason.unwrap_or_default())
                .await
        } else {
            self.audit_delivery(dead, Kind::DeadLettered, reason).await
        };
        logged.map_err(|refusal| anyhow::anyhow!("auditing a dead letter: {refusal}"))?;
        self.store
            .update(dead.id, DeliveryUpdate::DeadLetterAudited)
            .await?;
        Ok(())
    }

    /// Audits, before serving, the deliveries created dead whose `dead_lettered` entries are
    /// owed: the append after their message's confirmation failed, or a crash came first (or
    /// the crash settled by [`Gateway::settle_unconfirmed`], which runs before). Returns how
    /// many. A delivery of an erased case is audited without its case. A delivery may be
    /// audited twice, when a crash came between its entry and the store's record of it. One
    /// whose case's key was lost stays owed, reported, and does not stop the others.
    pub async fn audit_owed_dead_letters(&self) -> anyhow::Result<usize> {
        let owed = self.store.owed_audits()?;
        let mut audited = 0;
        for dead in &owed {
            if crate::delivery::case_key_lost(&self.log, dead) {
                tracing::error!(
                    delivery = dead.id,
                    event_id = %dead.event_id,
                    recipient = %dead.recipient,
                    "a dead letter's audit entry is owed and cannot be written: its case has \
                     entries in the audit log but no key in its key file, \
                     private/keys/cases.keys; it stays owed until the key file is restored"
                );
                continue;
            }
            self.audit_owed(dead).await?;
            audited += 1;
        }
        Ok(audited)
    }

    /// The audit fact of a delivery event.
    fn delivery_fact(&self, delivery: &Delivery, kind: Kind, reason: Option<String>) -> Fact {
        let mut fact = Fact::new(kind, Utc::now());
        fact.sender = self
            .registry
            .partners()
            .find(|p| crate::canonical::partner_source(&p.id) == delivery.source)
            .map(|p| p.id.clone());
        fact.recipients = vec![delivery.recipient.clone()];
        fact.transport = Some(match delivery.channel {
            Channel::Amqp => Transport::Amqp,
            Channel::Inbox | Channel::Webhook => Transport::Rest,
        });
        fact.event_type = Some(delivery.event_type.clone());
        fact.event_id = Some(delivery.event_id.clone());
        // The mapping that wrote the body, as it was then. A delivery recorded without its
        // mapping's hash (by an earlier version) is audited with the mapping now loaded.
        fact.mapping = if delivery.mapping_id.is_empty() {
            None
        } else if !delivery.mapping_hash.is_empty() {
            Some(MappingRef {
                id: delivery.mapping_id.clone(),
                hash: delivery.mapping_hash.clone(),
            })
        } else {
            self.mappings
                .partner(&delivery.recipient)
                .map(|m| MappingRef {
                    id: delivery.mapping_id.clone(),
                    hash: m.hash.clone(),
                })
        };
        fact.withheld = delivery.withheld.clone();
        fact.reason = reason.map(|r| reason_code(&r));
        fact.case_id = delivery.case_id.clone();
        // The body is committed to under its case's keys (every accepted event names its case,
        // the schema requires a `subject`).
        if kind == Kind::Delivered && !delivery.body.is_empty() && delivery.case_id.is_some() {
            fact.personal = Personal {
                native: Some(delivery.body.clone()),
                // A body larger than the log seals (a recipient's encoding can be larger than
                // what the sender sent) is kept as its commitment only: the delivery is still
                // on record, and the recipient's copy can be checked against it.
                commit_only: delivery.body.len() > audit::leaf::limits::PAYLOAD_LEN,
                ..Personal::default()
            };
        }
        fact
    }

    async fn audit_refusal(
        &self,
        submission: &Submission<'_>,
        refusal: &Refusal,
    ) -> Result<(), Refusal> {
        self.audit_refusal_in(submission, refusal, refusal_case(submission.partner))
            .await
    }

    /// Refuses a message sent with a certificate that the partner CA signed but the registry
    /// does not know, and audits the refusal like any other. The sender is recorded by the
    /// certificate's fingerprint, never by a partner id the certificate merely claims, and
    /// the refusal goes in the trail `refused/unregistered`. Returns what to answer: the
    /// refusal, or a 503 if it could not be audited.
    ///
    /// Every unregistered certificate shares one rate limit (a partner's), so that
    /// certificates the CA signed for others cannot drive the log's synced appends beyond
    /// what one partner may: over it, the answer is `429`, audited in a summary per
    /// certificate (its sender the fingerprint, as above) under `refused/unregistered` (see
    /// [`Gateway::audit_refusal_summaries`]).
    pub async fn refuse_unregistered(
        &self,
        fingerprint: &str,
        body: &[u8],
        why: String,
    ) -> Refusal {
        let transport = transport_name(Transport::Rest);
        if let Err(limited) = self.check_rate(UNREGISTERED) {
            self.metrics
                .message(UNREGISTERED, transport, limited.code());
            self.refusal_summaries.record_for_certificate(
                fingerprint,
                UNREGISTERED,
                refusal_summaries::RATE_LIMITED,
                Transport::Rest,
                body,
                Utc::now(),
            );
            return limited;
        }
        let refusal = Refusal::Forbidden(why);
        self.metrics
            .message(UNREGISTERED, transport, refusal.code());
        let submission = Submission {
            partner: fingerprint,
            transport: Transport::Rest,
            body,
            content: Content::Typed(String::new()),
        };
        match self
            .audit_refusal_in(&submission, &refusal, refusal_case(UNREGISTERED))
            .await
        {
            Ok(()) => refusal,
            Err(failure) => failure,
        }
    }

    async fn audit_refusal_in(
        &self,
        submission: &Submission<'_>,
        refusal: &Refusal,
        case_id: String,
    ) -> Result<(), Refusal> {
        let mut fact = Fact::new(Kind::Rejected, Utc::now());
        fact.sender = Some(submission.partner.to_owned());
        fact.transport = Some(submission.transport);
        fact.reason = Some(refusal.code().to_owned());
        fact.case_id = Some(case_id);
        let committed = if *refusal == Refusal::CaseErased {
            &[][..]
        } else {
            &submission.body[..submission.body.len().min(audit::leaf::limits::PAYLOAD_LEN)]
        };
        fact.personal = Personal {
            native: Some(committed.to_vec()),
            commit_only: true,
            ..Personal::default()
        };
        self.append(&fact).await.map(|_| ())
    }

    /// Waits for a permit to read one request body of `sender`'s (a partner id, or
    /// [`UNREGISTERED`]), held until it drops (see [`Limits::bodies_in_flight`]).
    ///
    /// A sender holds at most half of the permits, and the certificates the registry does not
    /// know one eighth between them, so that one client sending its bodies slowly (or many
    /// such connections) cannot stop every other partner's messages. The wait is bounded by
    /// twice [`Limits::body_read_secs`]; `None` when it ran out (or the gateway is stopping).
    /// A wait that runs out is counted as a REST message of `sender`'s refused `unavailable`
    /// (it is not audited: nothing of the message was read).
    pub async fn body_permit(&self, sender: &str) -> Option<SharePermit> {
        let permit = self.bodies.acquire(sender, self.permit_wait()).await;
        self.count_no_turn(sender, permit.is_none());
        permit
    }

    /// Waits for a permit to bring one REST message of `sender`'s into the gateway, to be held
    /// until it is answered and its processing is over (see [`Limits::messages_in_flight`]).
    /// Shared, bounded in time and counted like [`Gateway::body_permit`].
    pub async fn message_permit(&self, sender: &str) -> Option<SharePermit> {
        let permit = self.messages.acquire(sender, self.permit_wait()).await;
        self.count_no_turn(sender, permit.is_none());
        permit
    }

    fn count_no_turn(&self, sender: &str, refused: bool) {
        if refused {
            self.metrics
                .message(sender, transport_name(Transport::Rest), "unavailable");
        }
    }

    /// How long a request waits for a permit before it is answered `503`.
    pub fn permit_wait(&self) -> Duration {
        Duration::from_secs(self.limits.body_read_secs.max(1) * 2)
    }

    /// Waits for `recipient`'s turn at its inbox, held until it drops: reading the inbox and
    /// acknowledging audit a delivery's change before they record it, so that two requests at
    /// once must not both audit the same change.
    pub(crate) async fn inbox_turn(&self, recipient: &str) -> Result<Turn<'_>, Refusal> {
        let mut turn = Turn::join(&self.inbox_turns, recipient.to_owned())?;
        turn.wait_turn().await;
        Ok(turn)
    }

    /// The refusals waiting for their summaries: where the server's certificate verifier
    /// tallies the certificates it refuses.
    pub fn refusal_summaries(&self) -> Arc<RefusalSummaries> {
        self.refusal_summaries.clone()
    }

    /// Audits the refusals tallied (rate-limited messages, refused certificates), one
    /// `rejected` summary per sender and reason (see [`refusal_summaries`]): those that are
    /// due, or all of them. Rate-limited messages are due at once; refused certificates once
    /// the first of a tally is [`Limits::refused_certificate_summary_secs`] old. Returns how
    /// many refusals the summaries stand for. On a failed append, that summary and the ones
    /// after it are kept for the next call.
    pub async fn audit_refusal_summaries(&self, which: Summaries) -> Result<u64, Refusal> {
        let now = Utc::now();
        let hold = chrono::Duration::seconds(
            i64::try_from(self.limits.refused_certificate_summary_secs).unwrap_or(i64::MAX),
        );
        let due = |tally: &refusal_summaries::Tally| match which {
            Summaries::All => true,
            Summaries::Due => {
                tally.sender != UNVERIFIED || now.signed_duration_since(tally.since) >= hold
            }
        };
        let mut tallies = self.refusal_summaries.take_due(due).into_iter();
        let mut audited = 0;
        while let Some(tally) = tallies.next() {
            let fact = tally.fact(summary_case(&tally.sender), Utc::now());
            if let Err(failure) = self.append(&fact).await {
                self.refusal_summaries
                    .restore(std::iter::once(tally).chain(tallies).collect());
                return Err(failure);
            }
            log_summary(&tally);
            audited += tally.count;
        }
        Ok(audited)
    }

    /// Closes the store (committing what is queued) and the audit log (a final checkpoint),
    /// both even when one fails; fails when either does, or when summarised refusals are
    /// left unaudited (the caller audits the last ones first, see
    /// [`Gateway::audit_refusal_summaries`]). Parts still shared elsewhere are closed when their
    /// last user drops them; this fails if one of them has already failed.
    pub fn close(self) -> anyhow::Result<()> {
        let summaries = self.unaudited_refusals();
        let store = match Arc::try_unwrap(self.store) {
            Ok(store) => store.close().map_err(anyhow::Error::from),
            Err(store) => still_shared("store", store.is_open()),
        };
        let log = match Arc::try_unwrap(self.log) {
            Ok(log) => log.close().map_err(anyhow::Error::from),
            Err(log) => still_shared("audit log", log.is_healthy()),
        };
        either_failed(either_failed(store, log), summaries)
    }

    /// While parts of the gateway are still in use elsewhere: fails if the store or the audit
    /// log has failed (they will then be dropped without being closed cleanly), or if
    /// summarised refusals are still waiting to be audited.
    pub fn check_still_shared(&self) -> anyhow::Result<()> {
        either_failed(
            either_failed(
                still_shared("store", self.store.is_open()),
                still_shared("audit log", self.log.is_healthy()),
            ),
            self.unaudited_refusals(),
        )
    }

    /// Fails with their number when summarised refusals are still waiting to be audited.
    fn unaudited_refusals(&self) -> anyhow::Result<()> {
        match self.refusal_summaries.pending() {
            0 => Ok(()),
            pending => Err(anyhow::anyhow!(
                "summarised refusals (rate-limited messages, refused certificates) could not be audited: {pending}"
            )),
        }
    }
}

/// One-at-a-time queues, one per key: the messages with one source and reference, the
/// messages of one case, or the requests at one recipient's inbox.
type TurnQueues = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A place in the queue of one key (see [`TurnQueues`]). When the last one waiting there
/// leaves, the queue is removed, also when its request was dropped half-way (a client gone, a
/// stop), so that the map does not grow.
pub(crate) struct Turn<'g> {
    map: &'g TurnQueues,
    key: String,
    slot: Arc<tokio::sync::Mutex<()>>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'g> Turn<'g> {
    /// Joins the queue of `key`, creating it if it is the first.
    fn join(map: &'g TurnQueues, key: String) -> Result<Turn<'g>, Refusal> {
        let slot = map
            .lock()
            .map_err(|_| unavailable("lock"))?
            .entry(key.clone())
            .or_default()
            .clone();
        Ok(Turn {
            map,
            key,
            slot,
            turn: None,
        })
    }

    /// Waits until the messages ahead in the queue are done; the turn is held until this drops.
    async fn wait_turn(&mut self) {
        self.turn = Some(self.slot.clone().lock_owned().await);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // The turn goes first, with its reference to the queue. Then, under the map's lock,
        // where every other place is taken: the map's own reference and this one are all
        // that is left when no one else waits.
        self.turn = None;
        if let Ok(mut map) = self.map.lock()
            && Arc::strong_count(&self.slot) == 2
        {
            map.remove(&self.key);
        }
    }
}

/// Which summarised refusals [`Gateway::audit_refusal_summaries`] audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summaries {
    /// Those that are due.
    Due,
    /// All of them, as when the gateway stops.
    All,
}

/// The outcome of two closing steps (the store, the log, the last summaries): both failures
/// when both failed.
fn either_failed(first: anyhow::Result<()>, second: anyhow::Result<()>) -> anyhow::Result<()> {
    match (first, second) {
        (Err(first), Err(second)) => Err(anyhow::anyhow!("{first:#}; {second:#}")),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// What closing a part that is still shared elsewhere says: nothing if it is sound, an error
/// if it has failed (it is then dropped by its last user without being closed cleanly).
fn still_shared(part: &str, sound: bool) -> anyhow::Result<()> {
    if sound {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "the {part} had failed, and is still in use elsewhere: it was not closed cleanly"
    ))
}

/// Settles one message left between its store record and its audit entry, against the log
/// (which must have a checkpoint covering its durable entries): confirmed with a receipt
/// issued again when the log holds its `accepted` entry, withdrawn otherwise. Blocking.
fn settle(log: &AuditLog, store: &Store, record: &AcceptedRecord) -> anyhow::Result<Settled> {
    let query = audit::Query::PartnerRef(record.sender.clone(), record.event_id.clone());
    let mut found = log.search(&query)?;
    found.sort_by_key(|f| f.index);
    found.retain(|f| {
        f.leaf.event_id.as_deref() == Some(record.event_id.as_str())
            && f.leaf.sender.as_deref() == Some(record.sender.as_str())
    });
    // The acceptances of this message that still stand: a `rejected` entry with reason
    // `duplicate` or `store-unavailable` voids the acceptance just before it. The latest that
    // stands is this record's.
    let mut standing = Vec::new();
    // Each voided acceptance, from its entry to the entry that voids it: the anomaly entries
    // logged in between are that attempt's.
    let mut voided = Vec::new();
    for f in found {
        match (f.leaf.kind, f.leaf.reason.as_deref()) {
            (Kind::Accepted, _) => standing.push(f),
            (Kind::Rejected, Some("duplicate" | "store-unavailable")) => {
                if let Some(acceptance) = standing.pop() {
                    voided.push(acceptance.index..=f.index);
                }
            }
            _ => {}
        }
    }
    let leaf = standing
        .last()
        .map(|found| audit::merkle::leaf_hash(&found.entry));
    // A record that knows its entry's leaf is confirmed against that entry only: the latest
    // acceptance that stands may be another attempt's (one whose record a crash lost), which
    // commits to another body.
    let Some((found, leaf)) = standing
        .pop()
        .zip(leaf)
        .filter(|(_, leaf)| record.leaf_hash.is_empty() || record.leaf_hash == hex::encode(leaf.0))
    else {
        store.abandon_blocking(record)?;
        return Ok(Settled::Withdrawn);
    };
    // Its anomaly entries follow it, outside the spans of the later attempts voided since
    // (the latest that stands is this one: every later acceptance was voided). One written by
    // an earlier settling can follow those spans.
    voided.retain(|span| *span.start() > found.index);
    if !log_owed_anomalies(log, record, found.index, &voided)? {
        return Ok(Settled::Held(
            "its case's key is lost from the audit log's key file (private/keys/cases.keys): \
             its anomaly entries cannot be written until the file is restored",
        ));
    }
    let receipt = log.reissue_receipt(found.index, leaf)?;
    let confirmed = store.confirm_blocking(
        record,
        LogEntry {
            log_index: found.index,
            leaf_hash: hex::encode(leaf.0),
            receipt: receipt.to_text(),
        },
    )?;
    Ok(Settled::Confirmed(Box::new(confirmed)))
}

/// How a held record was settled (see [`Gateway::settle_unconfirmed`]).
enum Settled {
    /// Confirmed against its acceptance in the log: the record as it now stands.
    Confirmed(Box<AcceptedRecord>),
    /// Withdrawn: the log holds no acceptance of its own.
    Withdrawn,
    /// Left held: its acceptance stands, and what it owes the log cannot be written now.
    Held(&'static str),
}

/// The `anomaly` entry of reason `reason` that the acceptance of `record`'s message is logged
/// with.
fn anomaly_fact(record: &AcceptedRecord, reason: &str) -> Fact {
    let mut fact = Fact::new(Kind::Anomaly, Utc::now());
    fact.sender = Some(record.sender.clone());
    fact.event_type = Some(record.event_type.clone());
    fact.event_id = Some(record.event_id.clone());
    fact.case_id = record.case_id.clone();
    fact.reason = Some(reason.to_owned());
    fact
}

/// Writes the `anomaly` entries that `record`'s acceptance (the entry at `accepted`) owes and
/// the log does not hold after it, outside the spans of later attempts voided since (`voided`:
/// the anomaly entries there are theirs): a crash, or a failing log, can fall between the two
/// writes. `false` when some are owed and cannot be written now: the case's key was lost.
/// Nothing is owed once the case is erased (its `erased` entry stands for it). Blocking.
fn log_owed_anomalies(
    log: &AuditLog,
    record: &AcceptedRecord,
    accepted: u64,
    voided: &[std::ops::RangeInclusive<u64>],
) -> audit::Result<bool> {
    let Some(case_id) = record
        .case_id
        .as_ref()
        .filter(|_| !record.anomalies.is_empty())
    else {
        return Ok(true);
    };
    if log.is_case_erased(case_id)? {
        return Ok(true);
    }
    let mut logged: Vec<String> = log
        .leaves_after(&audit::Query::Case(case_id.clone()), accepted)?
        .into_iter()
        .filter(|(index, leaf)| {
            !voided.iter().any(|span| span.contains(index))
                && leaf.kind == Kind::Anomaly
                && leaf.event_id.as_deref() == Some(record.event_id.as_str())
                && leaf.sender.as_deref() == Some(record.sender.as_str())
        })
        .filter_map(|(_, leaf)| leaf.reason)
        .collect();
    let mut owed = Vec::new();
    for reason in &record.anomalies {
        // Each reason once: an entry the log holds accounts for one owed.
        match logged.iter().position(|r| r == reason) {
            Some(at) => {
                logged.swap_remove(at);
            }
            None => owed.push(reason),
        }
    }
    if !owed.is_empty() && log.case_key_lost(case_id) {
        return Ok(false);
    }
    for reason in owed {
        log.append(&anomaly_fact(record, reason))?;
    }
    Ok(true)
}

/// Logs a summary of refusals once audited: who, why and how many. For certificates the TLS
/// handshake refused, it names the first few (by their SHA-256 fingerprints, as `passerelle
/// certs identity` prints them), so that an operator can tell whose certificate expired or was
/// revoked.
fn log_summary(tally: &refusal_summaries::Tally) {
    if tally.sender == UNVERIFIED {
        const NAMED: usize = 3;
        let mut certificates: Vec<String> = Vec::new();
        for digest in &tally.digests {
            let fingerprint = format!("{}{}", crate::tls::FINGERPRINT_PREFIX, hex::encode(digest));
            if !certificates.contains(&fingerprint) {
                certificates.push(fingerprint);
            }
            if certificates.len() == NAMED {
                break;
            }
        }
        tracing::warn!(
            reason = tally.reason,
            count = tally.count,
            certificates = certificates.join(", "),
            "client certificates refused at the TLS handshake"
        );
    } else {
        tracing::info!(
            sender = %tally.sender,
            reason = tally.reason,
            count = tally.count,
            "refusals summarised"
        );
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Rest => "rest",
        Transport::Amqp => "amqp",
    }
}

fn unavailable(why: &str) -> Refusal {
    Refusal::Unavailable(why.to_owned())
}

fn text(event: &Value, attribute: &str) -> String {
    event[attribute].as_str().unwrap_or_default().to_owned()
}

fn mapping_ref(event: &Value) -> Option<MappingRef> {
    Some(MappingRef {
        id: event["mappingid"].as_str()?.to_owned(),
        hash: event["mappinghash"].as_str()?.to_owned(),
    })
}

/// The channel of a delivery mode's deliveries.
fn channel_of(mode: &DeliveryMode) -> Channel {
    match mode {
        DeliveryMode::Webhook { .. } => Channel::Webhook,
        DeliveryMode::Amqp { .. } => Channel::Amqp,
        DeliveryMode::Inbox => Channel::Inbox,
    }
}

/// The anomalies an event's data lists (none when it has no `anomalies`).
fn listed_anomalies(event: &Value) -> &[Value] {
    event["data"]["anomalies"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// The codes of the anomalies a list (an event's `data.anomalies`) holds, in order.
fn codes_of(anomalies: &[Value]) -> Vec<String> {
    anomalies
        .iter()
        .filter_map(|a| a["code"].as_str().map(str::to_owned))
        .collect()
}

/// A code as an audit reason code (`[a-z0-9._-]`, at most 64 bytes): anomaly codes keep
/// their spelling; any other character becomes `-`.
fn reason_code(code: &str) -> String {
    let mut reason: String = code
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '-',
        })
        .collect();
    reason.truncate(64);
    if reason.is_empty() {
        reason.push_str("anomaly");
    }
    reason
}

/// A digest of what an event says: its type and its data as the sender's message gave them
/// (before the gateway adds its anomalies), hex SHA-256 of their canonical JSON. The envelope's
/// other attributes are left out: a sender's retry may carry a new `time`, and the mapping's
/// id and hash change with a new version of the mapping, without being another message.
pub fn content_digest(event: &Value) -> String {
    use sha2::{Digest, Sha256};
    // The two canonical texts one after the other: the first (a JSON value) ends where it
    // ends, so no separator is needed, and the data is not copied.
    let mut digest = Sha256::new();
    digest.update(jcs::to_vec(&event["type"]));
    digest.update(jcs::to_vec(&event["data"]));
    hex::encode(digest.finalize())
}

/// What a message says, to tell a repeat from another message under the same reference.
struct Said {
    /// [`content_digest`] of the event.
    digest: String,
    /// The hash of the mapping that read it.
    mapping: String,
}

/// The answer to a message whose source and reference were accepted before: a repeat gets
/// the first answer; another message under a reference already used is refused, since
/// answering it as a repeat would tell its sender it was accepted when it was not. Only
/// messages read by the same version of their mapping are compared (another version may write
/// the same message otherwise), and records from before digests were kept are not.
fn repeat_of(first: AcceptedRecord, content: &Said) -> Result<Outcome, Refusal> {
    if first.content == crate::store::FORGOTTEN_CONTENT {
        // The message under this reference was of a case since erased (a repeat of it is
        // refused before, for its case): this one, of another case, cannot be told from it.
        return Err(Refusal::Conflict(format!(
            "the reference {} was used for a message of a case since erased, accepted on {}; \
             send this one under a reference of its own",
            first.event_id, first.accepted_at
        )));
    }
    let comparable = !first.content.is_empty() && first.content_mapping == content.mapping;
    if comparable && first.content != content.digest {
        return Err(Refusal::Conflict(format!(
            "the reference {} was used for another message, accepted on {} (log index {}); \
             send this one under a reference of its own",
            first.event_id, first.accepted_at, first.log_index
        )));
    }
    Ok(Outcome::Duplicate(ack_of("duplicate", first)))
}

fn ack_of(status: &'static str, record: AcceptedRecord) -> Ack {
    Ack {
        status,
        event_id: record.event_id,
        source: record.source,
        event_type: record.event_type,
        log_index: record.log_index,
        leaf_hash: record.leaf_hash,
        receipt: record.receipt,
        recipients: record.recipients,
        anomalies: Vec::new(),
    }
}

/// The media types each format is sent with.
pub fn media_types(format: Format) -> &'static [&'static str] {
    match format {
        Format::Xml => &["application/xml", "text/xml"],
        Format::Json => &["application/json"],
        Format::Cloudevents => &["application/cloudevents+json"],
    }
}

/// A media type's essence: the type and subtype, without parameters, in lower case
/// (`Application/XML; charset=utf-8` is `application/xml`).
pub fn media_essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn check_media_type(format: Format, media: &str) -> Result<(), Refusal> {
    let essence = media_essence(media);
    let accepted = media_types(format);
    if accepted.contains(&essence.as_str()) {
        return Ok(());
    }
    let given = match essence.as_str() {
        "" => "an untyped body".to_owned(),
        // application/json is taken in binary mode: what is missing is the headers.
        "application/json" if format == Format::Cloudevents => {
            "application/json without the CloudEvents attributes (ce-* headers over HTTPS, \
             cloudEvents_* properties over AMQP)"
                .to_owned()
        }
        _ => essence.clone(),
    };
    Err(Refusal::UnsupportedMediaType(match format {
        Format::Cloudevents => format!(
            "this partner sends CloudEvents: application/cloudevents+json (structured mode), \
             or the event's data as application/json with its attributes in headers, \
             ce-specversion among them (binary mode); not {given}"
        ),
        _ => format!("this partner sends {}, not {given}", accepted.join(" or ")),
    }))
}

/// The most CloudEvents attributes a binary-mode event may carry (`ce-*` headers over HTTPS,
/// `cloudEvents_*` headers over AMQP).
pub const MAX_CLOUDEVENT_ATTRIBUTES: usize = 64;
/// The longest value of a binary-mode CloudEvents attribute, in bytes (once decoded).
pub const MAX_CLOUDEVENT_ATTRIBUTE_BYTES: usize = 4096;

/// Builds the structured form of a binary-mode CloudEvent (CloudEvents HTTP and AMQP
/// bindings): the attributes become members, the body becomes `data`.
///
/// The size limit is the body's, checked before; the attributes, which the structured form
/// adds to it, are bounded here in number and length.
fn binary_to_structured(
    attributes: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> Result<Vec<u8>, Refusal> {
    // Media types are case-insensitive (RFC 9110, 8.3.1): the event carries the lower-case
    // essence, the one form the schema takes.
    let essence = media_essence(content_type);
    if essence != "application/json" {
        let given = if essence.is_empty() {
            "an untyped body (no content type)"
        } else {
            essence.as_str()
        };
        return Err(Refusal::UnsupportedMediaType(format!(
            "a binary-mode CloudEvent carries application/json data, not {given}"
        )));
    }
    // Read as every JSON message is, refusing a key given twice (which would otherwise keep
    // its last value without a word).
    if attributes.len() > MAX_CLOUDEVENT_ATTRIBUTES {
        return Err(Refusal::Malformed(format!(
            "a binary-mode CloudEvent carries at most {MAX_CLOUDEVENT_ATTRIBUTES} attributes, \
             not {}",
            attributes.len()
        )));
    }
    let data: Value = crate::mapping::json::from_slice(body)
        .map_err(|e| Refusal::Malformed(format!("the CloudEvent's data is not JSON: {e}")))?;
    let mut event = serde_json::Map::new();
    for (name, value) in attributes {
        let name = name.to_ascii_lowercase();
        // The attribute's name as a refusal quotes it: over AMQP it is any header name.
        let named = crate::mapping::json::quoted(&name);
        if value.len() > MAX_CLOUDEVENT_ATTRIBUTE_BYTES {
            return Err(Refusal::Malformed(format!(
                "the CloudEvents attribute {named} is longer than \
                 {MAX_CLOUDEVENT_ATTRIBUTE_BYTES} bytes"
            )));
        }
        if event.contains_key(&name) {
            return Err(Refusal::Malformed(format!(
                "the CloudEvents attribute {named} is given twice"
            )));
        }
        // In binary mode the body is the data: a header that carries data too would be
        // overwritten by it without a word.
        if name == "data" || name == "data_base64" {
            return Err(Refusal::Malformed(format!(
                "a binary-mode CloudEvent carries its data in the body, not in a ce-{named} \
                 header: send the data as the body, or the whole event in structured mode"
            )));
        }
        // In binary mode the data's media type is the message's content type; an attribute
        // that says otherwise is a contradiction, not a detail to overwrite.
        if name == "datacontenttype" && media_essence(value) != essence {
            return Err(Refusal::Malformed(format!(
                "the datacontenttype attribute says {}, but the data is sent as {}: in \
                 binary mode the content type is the data's media type",
                crate::error_text::quoted_cut(&media_essence(value), 60),
                crate::error_text::quoted_cut(&essence, 60)
            )));
        }
        event.insert(name, Value::String(value.clone()));
    }
    event.insert("datacontenttype".into(), Value::String(essence));
    event.insert("data".into(), data);
    Ok(serde_json::to_vec(&Value::Object(event)).unwrap_or_default())
}

fn refusal_of(error: DecodeError) -> Refusal {
    match &error {
        DecodeError::TooLarge { limit, .. } => Refusal::TooLarge { limit: *limit },
        DecodeError::Malformed { .. } => Refusal::Malformed(error.to_string()),
        DecodeError::UnknownKind { .. } => Refusal::Unprocessable {
            message: error.to_string(),
            path: None,
        },
        DecodeError::Field { field, .. } => Refusal::Unprocessable {
            path: Some(field.clone()),
            message: error.to_string(),
        },
        DecodeError::Schema { violations, .. } => Refusal::Unprocessable {
            path: violations.first().map(|v| v.path.clone()),
            message: error.to_string(),
        },
        DecodeError::NotInForce { .. } => Refusal::Forbidden(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request dropped while it waits its turn, or while it holds it, leaves no queue behind.
    #[tokio::test]
    async fn a_dropped_request_leaves_no_queue_behind() {
        let map = TurnQueues::default();
        let mut first = Turn::join(&map, "k".into()).unwrap();
        first.wait_turn().await;
        let waiting = async {
            let mut second = Turn::join(&map, "k".into()).unwrap();
            second.wait_turn().await;
            unreachable!("the first holds the turn");
        };
        // The second waits, and is dropped (as a request whose client went away).
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        assert_eq!(map.lock().unwrap().len(), 1, "the first still holds it");
        drop(first);
        assert!(map.lock().unwrap().is_empty());
        // Dropped while holding its turn, the same.
        let request = async {
            let mut third = Turn::join(&map, "k".into()).unwrap();
            third.wait_turn().await;
            std::future::pending::<()>().await;
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(20), request)
                .await
                .is_err()
        );
        assert!(map.lock().unwrap().is_empty());
    }

    #[test]
    fn binary_mode_becomes_structured() {
        let attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "X-1".to_owned()),
        ];
        let bytes =
            binary_to_structured(&attributes, "application/json; charset=utf-8", b"{\"a\":1}")
                .unwrap();
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(event["id"], "X-1");
        assert_eq!(event["data"]["a"], 1);
        assert_eq!(event["datacontenttype"], "application/json");
        // Media types are case-insensitive: the event carries the form the schema takes.
        let mut typed = attributes.clone();
        typed.push(("datacontenttype".to_owned(), "application/JSON".to_owned()));
        let bytes = binary_to_structured(&typed, "Application/Json", b"{}").unwrap();
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(event["datacontenttype"], "application/json");
        // The attributes are bounded in number and length.
        let mut long = attributes.clone();
        long.push((
            "subject".to_owned(),
            "x".repeat(MAX_CLOUDEVENT_ATTRIBUTE_BYTES + 1),
        ));
        match binary_to_structured(&long, "application/json", b"{}") {
            Err(Refusal::Malformed(why)) => assert!(why.contains("subject is longer"), "{why}"),
            other => panic!("{other:?}"),
        }
        let many: Vec<_> = (0..=MAX_CLOUDEVENT_ATTRIBUTES)
            .map(|n| (format!("x{n}"), String::new()))
            .collect();
        match binary_to_structured(&many, "application/json", b"{}") {
            Err(Refusal::Malformed(why)) => assert!(why.contains("at most 64"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            binary_to_structured(&attributes, "text/plain", b"x"),
            Err(Refusal::UnsupportedMediaType(_))
        ));
        match binary_to_structured(&attributes, "", b"{}") {
            Err(Refusal::UnsupportedMediaType(why)) => {
                assert!(
                    why.ends_with("not an untyped body (no content type)"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Data in a header is refused, not overwritten by the body.
        for name in ["data", "DATA", "data_base64"] {
            let mut with_data = attributes.clone();
            with_data.push((name.to_owned(), r#"{"x":1}"#.to_owned()));
            match binary_to_structured(&with_data, "application/json", b"{}") {
                Err(Refusal::Malformed(why)) => assert!(why.contains("in the body"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        // A key given twice is refused, not read as its last value.
        match binary_to_structured(
            &attributes,
            "application/json",
            br#"{"vulnerabilities":["VOT"],"vulnerabilities":[]}"#,
        ) {
            Err(Refusal::Malformed(why)) => assert!(why.contains("vulnerabilities"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn media_types_are_checked_by_essence() {
        assert!(check_media_type(Format::Xml, "application/xml; charset=ISO-8859-1").is_ok());
        assert!(check_media_type(Format::Xml, "Text/XML").is_ok());
        assert!(check_media_type(Format::Xml, "application/json").is_err());
        assert!(check_media_type(Format::Json, "").is_err());
    }

    #[test]
    fn every_refusal_code_is_listed() {
        let refusals = [
            Refusal::Malformed(String::new()),
            Refusal::Forbidden(String::new()),
            Refusal::TooLarge { limit: 1 },
            Refusal::UnsupportedMediaType(String::new()),
            Refusal::Unprocessable {
                message: String::new(),
                path: None,
            },
            Refusal::CaseErased,
            Refusal::RateLimited {
                partner: String::new(),
                retry_after: Duration::ZERO,
            },
            Refusal::Conflict(String::new()),
            Refusal::Unavailable(String::new()),
        ];
        for refusal in &refusals {
            // A variant added to the enum must be added here too.
            match refusal {
                Refusal::Malformed(_)
                | Refusal::Forbidden(_)
                | Refusal::TooLarge { .. }
                | Refusal::UnsupportedMediaType(_)
                | Refusal::Unprocessable { .. }
                | Refusal::CaseErased
                | Refusal::RateLimited { .. }
                | Refusal::Conflict(_)
                | Refusal::Unavailable(_) => {}
            }
            assert!(Refusal::CODES.contains(&refusal.code()), "{refusal:?}");
        }
    }

    #[test]
    fn anomaly_codes_become_reason_codes() {
        assert_eq!(
            reason_code("sequence.missing_lpc_requested"),
            "sequence.missing_lpc_requested"
        );
        assert_eq!(reason_code("webhook.http 503"), "webhook.http-503");
    }
}
