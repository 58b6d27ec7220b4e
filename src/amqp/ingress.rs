//! The inbound side of the AMQP transport: consume each partner's queue `passerelle.in.<id>`,
//! hand every message to the pipeline, and settle it with the broker according to the outcome.
//!
//! This module owns how an AMQP message becomes a [`Submission`] (the sender from the
//! broker-validated `user_id`, the media type from `content_type`, a binary-mode CloudEvent
//! from `cloudEvents_*` headers) and what the broker is told afterwards. It decides nothing a
//! message means: that is the pipeline's work.
//!
//! # Settling a message
//!
//! | what happened | what the broker is told |
//! |---|---|
//! | accepted, duplicate or ignored: the audit entry and the store record are durable | `basic.ack` |
//! | no `user_id`, or a `user_id` that is not the queue's partner (`urn:partner:<id>`) | dead-lettered, reason `missing-user-id` / `user-id-mismatch` |
//! | unreadable `cloudEvents_*` headers | dead-lettered, reason `malformed` |
//! | refused for good by the pipeline (mapping, schema, authorisation, media type, size) | dead-lettered, reason [`Refusal::code`] |
//! | over the sender's rate limit | held (unacknowledged) and tried again after the limiter's delay |
//! | the gateway could not make it durable ([`Refusal::Unavailable`]) | tried three times in all (`IN_PLACE_ATTEMPTS`), in place, with backoff, then returned with `basic.reject` and requeue |
//!
//! **Dead letters carry their reason.** The gateway publishes the original bytes and
//! properties (with publisher confirms) to the dead-letter exchange `passerelle.dlx`, routing
//! key the partner id, with the headers [`REASON_HEADER`], [`DETAIL_HEADER`] and the others
//! listed below, and acknowledges the original only once the broker has confirmed the dead
//! letter. The `user_id` property cannot be kept (the broker refuses a `user_id` other than
//! the publishing connection's user), so it travels as [`USER_ID_HEADER`]. Should that publish
//! fail, the message is rejected without requeue and the queue's own dead-lettering takes it,
//! with the broker's `x-death` headers but without the gateway's reason. Nothing is ever
//! acknowledged silently, nor requeued forever: a message returned too often is dead-lettered by
//! the quorum queue's `x-delivery-limit`.
//!
//! **Duplicates.** The pipeline deduplicates by the event's `source` and `id`; for a native
//! message the id is the partner's own reference, read from the body by its mapping, which the
//! partners also send as the AMQP `message_id`. A message delivered again (a redelivery after a
//! lost acknowledgement, or the partner publishing it twice) is therefore answered `duplicate`,
//! acknowledged, and processed once. The `message_id` property itself is only logged and kept
//! on dead letters: two messages with the same `message_id` but different references in their
//! bodies are two messages.
//!
//! **Concurrency and order.** Each queue has its own channel with the prefetch of the settings;
//! the messages a consumer holds are processed concurrently (the pipeline commits them in
//! groups) and acknowledged one by one, so their order within a prefetch window is not kept.

use super::backpressure::Backpressure;
use super::connection::{
    AmqpError, AmqpSettings, Backoff, bounded, channel_lost, consumer_channel, let_go_of_refused,
    random_below, short_string,
};
use super::declarations::Declarations;
use super::probe::PERSISTENT;
use super::topology::{DEAD_LETTER_EXCHANGE, inbound_queue, partner_user};
use crate::audit::{Fact, Kind, Personal, Transport};
use crate::pipeline::{
    Content, Gateway, MAX_CLOUDEVENT_ATTRIBUTE_BYTES, MAX_CLOUDEVENT_ATTRIBUTES, Outcome, Refusal,
    Submission,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// The prefix of the headers the gateway sets on a dead letter.
pub const HEADER_PREFIX: &str = "x-passerelle-";
/// Dead-letter header: the refusal's code (`malformed`, `unprocessable`, `missing-user-id`…).
pub const REASON_HEADER: &str = "x-passerelle-reason";
/// Dead-letter header: what was wrong, in words (at most 1 KiB).
pub const DETAIL_HEADER: &str = "x-passerelle-detail";
/// Dead-letter header: where, for a mapping or schema failure (a canonical field or a JSON
/// Pointer), when known.
pub const PATH_HEADER: &str = "x-passerelle-path";
/// Dead-letter header: the partner whose inbound queue held the message.
pub const PARTNER_HEADER: &str = "x-passerelle-partner";
/// Dead-letter header: the inbound queue that held the message.
pub const QUEUE_HEADER: &str = "x-passerelle-queue";
/// Dead-letter header: the message's original `user_id` property, if it had one.
pub const USER_ID_HEADER: &str = "x-passerelle-user-id";
/// Dead-letter header: the gateway instance that refused it (its audit log's origin).
pub const INSTANCE_HEADER: &str = "x-passerelle-instance";
/// Dead-letter header: when it was refused, RFC 3339 UTC.
pub const TIME_HEADER: &str = "x-passerelle-time";
/// How many of the sender's headers a dead letter leaves out for want of room (see
/// [`MAX_COPIED_HEADERS_BYTES`]); absent when none is.
pub const DROPPED_HEADERS_HEADER: &str = "x-passerelle-headers-dropped";

/// The most bytes of the sender's own headers (as encoded in a field table) that a dead letter
/// carries. A message's properties travel in one frame, which the broker's `frame_max` bounds
/// (128 KiB by default), and the dead letter adds the gateway's headers (up to about 2.5 KiB):
/// a sender's headers close to the bound would make a frame the broker refuses, and it closes
/// the gateway's whole connection for it.
const MAX_COPIED_HEADERS_BYTES: usize = 64 * 1024;

/// The reason code of a message without `user_id`.
pub const MISSING_USER_ID: &str = "missing-user-id";
/// The reason code of a message whose `user_id` is not the queue's partner.
pub const USER_ID_MISMATCH: &str = "user-id-mismatch";

/// The longest [`DETAIL_HEADER`], in bytes.
const MAX_DETAIL_BYTES: usize = 1024;
/// How many times a message the gateway could not make durable is tried again in place
/// before it is returned to its queue.
const IN_PLACE_ATTEMPTS: u32 = 3;
/// How long the gateway waits for the broker to confirm a dead letter.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a message goes to the dead letters: the short code and the words for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The reason code ([`REASON_HEADER`]): a [`Refusal::code`], [`MISSING_USER_ID`] or
    /// [`USER_ID_MISMATCH`].
    pub code: &'static str,
    /// What was wrong ([`DETAIL_HEADER`]).
    pub detail: String,
    /// Where, when known ([`PATH_HEADER`]).
    pub path: Option<String>,
    /// Whether the dead letter carries the message (its body and its own headers): not for a
    /// message of an erased case, whose personal data the gateway keeps nowhere, the broker's
    /// dead-letter queue included.
    pub keeps_message: bool,
}

impl DeadLetter {
    /// The dead letter of a pipeline refusal.
    pub fn of(refusal: &Refusal) -> DeadLetter {
        DeadLetter {
            code: refusal.code(),
            detail: refusal.to_string(),
            path: refusal.path().map(str::to_owned),
            keeps_message: *refusal != Refusal::CaseErased,
        }
    }

    fn malformed(detail: String) -> DeadLetter {
        DeadLetter::of(&Refusal::Malformed(detail))
    }
}

/// Checks that a message taken from `partner`'s inbound queue was sent by `partner`: its
/// `user_id` (which the broker has checked against the publishing connection's user) must be
/// [`partner_user`]`(partner)`.
pub fn check_sender(partner: &str, user_id: Option<&str>) -> Result<(), DeadLetter> {
    let expected = partner_user(partner);
    match user_id {
        None => Err(DeadLetter {
            code: MISSING_USER_ID,
            detail: format!(
                "the message has no user_id property: a message in the queue of {partner} must carry user_id {expected}"
            ),
            path: None,
            keeps_message: true,
        }),
        Some(user) if user == expected => Ok(()),
        Some(user) => Err(DeadLetter {
            code: USER_ID_MISMATCH,
            detail: format!(
                "the message was published by broker user {user} into the queue of {partner}, whose user is {expected}"
            ),
            path: None,
            keeps_message: true,
        }),
    }
}

/// How to read a message's body, from its AMQP properties: `content_type` gives the media
/// type; `cloudEvents_<attr>` (or `cloudEvents:<attr>`, as in the AMQP binding of CloudEvents)
/// headers make it a binary-mode CloudEvent, unless `content_type` is
/// `application/cloudevents+json` (structured mode, where such headers are ignored).
pub fn content_of(properties: &BasicProperties) -> Result<Content, DeadLetter> {
    // A body sent with a content coding (gzip, …) is refused as on HTTPS, not read as if it
    // were plain: the gateway decodes none.
    if let Some(coding) = properties
        .content_encoding()
        .as_ref()
        .map(|coding| coding.as_str().trim())
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
    {
        return Ok(Content::Unreadable(Refusal::UnsupportedMediaType(format!(
            "the body is sent with content_encoding {coding:?}, which the gateway does not \
                 decode: send it without a content coding"
        ))));
    }
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|media| media.as_str().to_owned())
        .unwrap_or_default();
    let essence = crate::pipeline::media_essence(&content_type);
    if essence.starts_with("application/cloudevents") {
        return Ok(Content::Typed(content_type));
    }
    let mut attributes = Vec::new();
    for (name, value) in properties.headers().iter().flat_map(|h| h.inner()) {
        let Some(attribute) = cloudevents_attribute(name.as_str()) else {
            continue;
        };
        if attributes.len() == MAX_CLOUDEVENT_ATTRIBUTES {
            return Err(DeadLetter::malformed(format!(
                "more than {MAX_CLOUDEVENT_ATTRIBUTES} cloudEvents_* headers"
            )));
        }
        let text = header_text(value).ok_or_else(|| {
            DeadLetter::malformed(format!(
                "the header {name} is not a UTF-8 string, a timestamp, a boolean or an integer"
            ))
        })?;
        if text.len() > MAX_CLOUDEVENT_ATTRIBUTE_BYTES {
            return Err(DeadLetter::malformed(format!(
                "the header {name} is longer than {MAX_CLOUDEVENT_ATTRIBUTE_BYTES} bytes"
            )));
        }
        attributes.push((attribute.to_owned(), text));
    }
    if attributes.is_empty() {
        Ok(Content::Typed(content_type))
    } else {
        Ok(Content::BinaryCloudEvent {
            attributes,
            content_type,
        })
    }
}

/// The attribute name of a `cloudEvents_<attr>` or `cloudEvents:<attr>` header (the prefix in
/// any case), or `None` for another header.
fn cloudevents_attribute(header: &str) -> Option<&str> {
    ["cloudEvents_", "cloudEvents:"].iter().find_map(|prefix| {
        let head = header.get(..prefix.len())?;
        let name = &header[prefix.len()..];
        (head.eq_ignore_ascii_case(prefix) && !name.is_empty()).then_some(name)
    })
}

/// A header value as CloudEvents attribute text: strings as they are, an AMQP timestamp as
/// RFC 3339, booleans and integers in their usual form; `None` for anything else.
fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Timestamp(seconds) => {
            DateTime::<Utc>::from_timestamp(i64::try_from(*seconds).ok()?, 0)?
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        }
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        _ => return None,
    })
}

/// The size of a value in an AMQP 0-9-1 field table: its type octet and its payload. Written
/// here because lapin encodes values but does not say how long an encoding is.
fn encoded_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(text) => 1 + text.as_str().len(),
        AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
        AMQPValue::ByteArray(bytes) => 4 + bytes.as_slice().len(),
        AMQPValue::FieldArray(values) => {
            4 + values.as_slice().iter().map(encoded_len).sum::<usize>()
        }
        AMQPValue::FieldTable(table) => {
            4 + table
                .inner()
                .iter()
                .map(|(name, value)| 1 + name.as_str().len() + encoded_len(value))
                .sum::<usize>()
        }
    }
}

/// The properties of the dead letter of `original`, refused for `why` by gateway `instance`
/// at `now`: the original's properties and headers (without `user_id`, which moves to
/// [`USER_ID_HEADER`]), persistent, with the gateway's reason headers (which replace any the
/// sender may have set).
pub fn dead_letter_properties(
    original: &BasicProperties,
    partner: &str,
    why: &DeadLetter,
    instance: &str,
    now: DateTime<Utc>,
) -> BasicProperties {
    // The sender's own `x-passerelle-*` headers are dropped: only the gateway writes them. The
    // others are copied, in name order, as far as the budget goes.
    let mut headers: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    let mut room = MAX_COPIED_HEADERS_BYTES;
    let mut dropped = 0usize;
    let copied = original
        .headers()
        .iter()
        .filter(|_| why.keeps_message)
        .flat_map(|table| table.inner());
    for (name, value) in copied {
        if name.as_str().starts_with(HEADER_PREFIX) {
            continue;
        }
        let size = 1 + name.as_str().len() + encoded_len(value);
        if size > room {
            dropped += 1;
            continue;
        }
        room -= size;
        headers.insert(name.clone(), value.clone());
    }
    let mut put = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    if dropped > 0 {
        put(DROPPED_HEADERS_HEADER, &dropped.to_string());
    }
    put(REASON_HEADER, why.code);
    put(DETAIL_HEADER, truncate(&why.detail, MAX_DETAIL_BYTES));
    if let Some(path) = &why.path {
        put(PATH_HEADER, truncate(path, MAX_DETAIL_BYTES));
    }
    put(PARTNER_HEADER, partner);
    put(QUEUE_HEADER, &inbound_queue(partner));
    put(INSTANCE_HEADER, instance);
    put(
        TIME_HEADER,
        &now.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    if let Some(user) = original.user_id() {
        put(USER_ID_HEADER, user.as_str());
    }
    let headers = FieldTable::from(headers);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if !why.keeps_message {
        // Nothing of the sender's: its message id, correlation id or type may name the case.
        return properties;
    }
    if let Some(value) = original.content_type() {
        properties = properties.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        properties = properties.with_content_encoding(value.clone());
    }
    if let Some(value) = original.message_id() {
        properties = properties.with_message_id(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        properties = properties.with_correlation_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        properties = properties.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        properties = properties.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        properties = properties.with_app_id(value.clone());
    }
    properties
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What to tell the broker about one message.
enum Settle {
    /// Processed (accepted, duplicate or ignored): acknowledge.
    Ack(Outcome),
    /// Refused for good: dead-letter with the reason, then acknowledge.
    DeadLetter(DeadLetter),
    /// Could not be made durable now: return it to its queue.
    Requeue,
    /// Held at the closed gate until its consumer was cancelled: return it to its queue, where
    /// it waits until intake resumes.
    GiveBack,
    /// The transport is stopping: leave it unacknowledged; the broker requeues it when the
    /// channel closes.
    Leave,
}

/// The inbound side of one session (one connection): the consumers' shared state.
pub(crate) struct Ingress {
    gateway: Arc<Gateway>,
    gate: Arc<Backpressure>,
    /// A channel in confirm mode for dead letters.
    dead_letters: Channel,
    backoff: Backoff,
    /// How long the gate may stay closed before a consumer is cancelled and gives back what it
    /// holds ([`super::AmqpSettings::held_return_secs`]).
    held_return: Duration,
    /// The gateway instance, for [`INSTANCE_HEADER`]: its audit log's origin.
    instance: String,
    /// The partners' inbound queues the broker will not let be consumed now, or whose consumer
    /// it cancelled (as in `passerelle_amqp_refused_queues`, which counts every session's).
    unconsumed: AtomicUsize,
    /// Asked to declare the topology at once when the broker cancels a consumer.
    declarations: Arc<Declarations>,
}

/// The longest a message held over its partner's rate limit sleeps between two tries.
const RATE_WAIT_CEILING: Duration = Duration::from_secs(1);

/// How long a message held over its partner's rate limit sleeps before it tries again, after
/// `tries` tries (from 1) that found no room: a draw between half and all of the limiter's
/// `retry_after` (at least 5 ms) doubled `tries` times, up to [`RATE_WAIT_CEILING`], and never
/// less than `retry_after` itself (there is no room before). The messages a queue's consumer
/// holds (up to `prefetch`) wait together: were each to try again at the next free slot, all
/// but one would be refused again, and a message would take about `prefetch` tries of the
/// pipeline.
fn rate_wait(retry_after: Duration, tries: u32) -> Duration {
    let first = retry_after.max(Duration::from_millis(5));
    let ceiling = first
        .saturating_mul(1 << tries.min(16))
        .min(RATE_WAIT_CEILING)
        .max(first);
    let as_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (low, high) = (as_ms(first).max(as_ms(ceiling) / 2), as_ms(ceiling));
    Duration::from_millis(low + random_below(high - low + 1))
}

/// How long after the broker cancelled a consumer it is started again: time for the topology,
/// declared at once, to put a deleted queue back.
const AFTER_CANCEL: Duration = Duration::from_secs(1);

/// How often a consumer looks at the gate, to cancel itself when it has been closed for
/// [`Ingress::held_return`] and to consume again once it opens.
const GATE_LOOK: Duration = Duration::from_millis(250);

/// How a wait at the gate ended.
enum AtGate {
    /// The gate is open: go on.
    Open,
    /// The transport is stopping.
    Stopping,
    /// The consumer was cancelled while the gate stayed closed: give the message back.
    GiveBack,
}

impl Ingress {
    /// The inbound side of a session; `dead_letters` must be in confirm mode.
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        gate: Arc<Backpressure>,
        dead_letters: Channel,
        backoff: Backoff,
        held_return: Duration,
        declarations: Arc<Declarations>,
    ) -> Ingress {
        let instance = gateway.log.origin().to_owned();
        Ingress {
            gateway,
            gate,
            dead_letters,
            backoff,
            held_return,
            instance,
            unconsumed: AtomicUsize::new(0),
            declarations,
        }
    }

    /// Whether a partner's inbound queue is not consumed now for the broker's sake (refused, or
    /// its consumer cancelled): the topology is then declared again, should the queue be gone.
    pub(crate) fn has_unconsumed_queues(&self) -> bool {
        self.unconsumed.load(Ordering::Relaxed) > 0
    }

    /// Counts a partner's queue that the broker no longer lets be consumed (once, until
    /// [`Self::count_consumed_again`]).
    fn count_unconsumed(&self) {
        self.unconsumed.fetch_add(1, Ordering::Relaxed);
        self.gateway.metrics.amqp_refused_queues.inc();
    }

    /// Counts a queue counted by [`Self::count_unconsumed`] as consumed again, or as done with
    /// when its consumer's task ends with the session.
    fn count_consumed_again(&self) {
        self.unconsumed.fetch_sub(1, Ordering::Relaxed);
        self.gateway.metrics.amqp_refused_queues.dec();
    }

    /// Takes `partner`'s messages, on a channel of `connection` with the settings' prefetch
    /// and manual acknowledgements, until `stop` turns true (then cancels the consumer and
    /// finishes the messages in hand) or the consumer fails (then turns `stop` true for the
    /// whole session and returns why).
    ///
    /// The consumer starts once the gate is open, not before: a session that starts while
    /// intake is paused takes nothing, so that a reconnection during a long pause does not take
    /// messages only to give them back. A queue that cannot be consumed (the broker refuses
    /// it: a permission taken away) is said at ERROR and tried again, with the
    /// transport's backoff, on a new channel, while the other partners' queues are consumed:
    /// ending the session for it would give back, at each try, the messages the others' consumers
    /// hold, each time counting towards their delivery limit, until the broker dead-letters
    /// them unread. So is a queue whose consumer the broker cancels while the connection stays
    /// (the queue deleted by hand): said at WARN, the topology declared again at once, and the
    /// queue consumed again a second later.
    ///
    /// While the gate is closed, the messages in hand wait at it, unacknowledged. Once it has
    /// been closed for [`Ingress::held_return`], the consumer is cancelled, so that the broker
    /// sends no more, and the messages in hand are given back to the queue: held longer, they
    /// would meet the broker's `consumer_timeout`, which closes the channel and hands them back
    /// anyway, again every half hour, each time counting towards their delivery limit. Once the
    /// gate opens, the queue is consumed again.
    pub(crate) async fn consume(
        self: Arc<Self>,
        partner: String,
        connection: Arc<Connection>,
        settings: Arc<AmqpSettings>,
        stop_session: Arc<watch::Sender<bool>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let queue = inbound_queue(&partner);
        let mut channel: Option<Channel> = None;
        // `None` until the gate first opens, while intake is paused (cancelled for a closed gate
        // and ended), and while the broker refuses the queue or has cancelled its consumer.
        let mut consumer: Option<Consumer> = None;
        // Whether the queue was consumed in this session before: its start again is said.
        let mut consumed_before = false;
        // The tries of a queue the broker will not let be consumed, and when the next is due.
        let mut refused_tries: u32 = 0;
        let mut next_try: Option<std::time::Instant> = None;
        let mut handling: JoinSet<()> = JoinSet::new();
        // Whether the consumer was cancelled for a closed gate and has not ended yet.
        let mut cancelling = false;
        let mut closed_since: Option<std::time::Instant> = None;
        let (give_back, given_back) = watch::channel(false);
        let mut gate_look = tokio::time::interval(GATE_LOOK);
        gate_look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if *stop.borrow_and_update() {
                if let (Some(consumer), Some(channel)) =
                    (consumer.as_ref().filter(|_| !cancelling), channel.as_ref())
                {
                    let _ = bounded(
                        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
                    )
                    .await;
                }
                break Ok(());
            }
            let next_delivery = async {
                match consumer.as_mut() {
                    Some(consumer) => consumer.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = next_delivery => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        let partner = partner.clone();
                        let stop = stop.clone();
                        let given_back = given_back.clone();
                        // One span per message, as on REST; the pipeline records the event's
                        // id and type on it once decoded.
                        let span = tracing::info_span!(
                            "message",
                            partner = %partner,
                            transport = "amqp",
                            event_id = tracing::field::Empty,
                            event_type = tracing::field::Empty,
                        );
                        // Should the handling panic, the message is returned to its queue
                        // rather than held unsettled until the session ends (the broker's
                        // delivery limit ends a message that makes it panic every time).
                        let acker = delivery.acker.clone();
                        handling.spawn(
                            async move {
                                let handled = AssertUnwindSafe(this.handle(&partner, delivery, stop, given_back))
                                    .catch_unwind()
                                    .await;
                                if handled.is_err() {
                                    tracing::error!("handling an AMQP message failed; it is returned to its queue");
                                    return_failed(&acker).await;
                                }
                            }
                            .instrument(span),
                        );
                    }
                    Some(Err(error)) => break Err(format!("consuming {queue}: {error}")),
                    // The end of the consumer cancelled for a closed gate: what it delivered is
                    // in hand, and goes back.
                    None if cancelling => {
                        consumer = None;
                        cancelling = false;
                        give_back.send_replace(true);
                        tracing::warn!(
                            partner = %partner,
                            held_secs = self.held_return.as_secs(),
                            "intake paused this long: the messages held from this partner's queue are returned to it until intake resumes"
                        );
                    }
                    // Cancelled by the broker while the connection stays (its queue deleted, or
                    // a consumer timeout of the broker's): consumed again once it can be, as a
                    // refused queue is, while the other partners' queues are consumed. The
                    // topology is declared at once (a deleted queue is put back), and the next
                    // try comes a second later, on the same channel, where the messages in hand
                    // finish.
                    None if connection.status().connected() => {
                        consumer = None;
                        if refused_tries == 0 {
                            self.count_unconsumed();
                        }
                        refused_tries = refused_tries.saturating_add(1);
                        self.declarations.want_now();
                        next_try = Some(std::time::Instant::now() + AFTER_CANCEL);
                        tracing::warn!(
                            partner = %partner,
                            queue = %queue,
                            "the broker cancelled the consumer of the partner's queue (the queue deleted, or a consumer timeout?): the topology is declared again and the queue consumed again; the other partners' queues are consumed"
                        );
                    }
                    None => break Err(format!("the consumer of {queue} was cancelled")),
                },
                Some(_) = handling.join_next(), if !handling.is_empty() => {}
                _ = gate_look.tick() => {
                    if self.gate.is_open() {
                        closed_since = None;
                        let due = next_try.is_none_or(|at| std::time::Instant::now() >= at);
                        if consumer.is_none() && due {
                            match bounded(start_consuming(&connection, &settings, &mut channel, &partner)).await {
                                Ok(started) => {
                                    consumer = Some(started);
                                    give_back.send_replace(false);
                                    if refused_tries > 0 {
                                        self.count_consumed_again();
                                        tracing::info!(partner = %partner, queue = %queue, "the partner's queue is consumed again");
                                    } else if consumed_before {
                                        tracing::info!(partner = %partner, "intake resumed: consuming the partner's queue again");
                                    }
                                    consumed_before = true;
                                    refused_tries = 0;
                                    next_try = None;
                                }
                                Err(error) => {
                                    if refused_tries == 0 {
                                        self.count_unconsumed();
                                    }
                                    refused_tries = refused_tries.saturating_add(1);
                                    let wait = self.backoff.delay(refused_tries);
                                    next_try = Some(std::time::Instant::now() + wait);
                                    // Its channel is closed by the broker's refusal: a new one
                                    // for the next try.
                                    if let Some(refused) = channel.take() {
                                        let_go_of_refused(refused).await;
                                    }
                                    tracing::error!(
                                        partner = %partner,
                                        queue = %queue,
                                        error = %error,
                                        retry_secs = wait.as_secs(),
                                        "the partner's queue cannot be consumed: its messages wait in it, and the other partners' queues are consumed"
                                    );
                                }
                            }
                        }
                    } else {
                        let since = *closed_since.get_or_insert_with(std::time::Instant::now);
                        // A broker that blocks the connection reads nothing from it, a cancel
                        // included, until its alarm clears: the messages stay held meanwhile
                        // (its own `consumer_timeout` hands them back should the alarm last).
                        if let Some(held) = consumer.as_ref().filter(|_| !cancelling)
                            && let Some(held_on) = channel.as_ref()
                            && since.elapsed() >= self.held_return
                            && !self.gate.is_blocked()
                        {
                            if let Err(error) = bounded(
                                held_on.basic_cancel(held.tag(), BasicCancelOptions::default()),
                            )
                            .await
                            {
                                break Err(format!("cancelling the consumer of {queue}: {error}"));
                            }
                            cancelling = true;
                        }
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The session is gone: nothing can be acknowledged any more.
                        break Ok(());
                    }
                }
            }
        };
        if refused_tries > 0 {
            self.count_consumed_again();
        }
        if result.is_err() {
            stop_session.send_replace(true);
        }
        while handling.join_next().await.is_some() {}
        result
    }

    /// Processes one message and settles it with the broker. `given_back` turns true when the
    /// consumer was cancelled for a closed gate: the message, if it waits at the gate, goes back.
    async fn handle(
        &self,
        partner: &str,
        delivery: Delivery,
        mut stop: watch::Receiver<bool>,
        mut given_back: watch::Receiver<bool>,
    ) {
        let properties = &delivery.properties;
        let user_id = properties.user_id().as_ref().map(ShortString::as_str);
        let checked = check_sender(partner, user_id).and_then(|()| content_of(properties));
        let settle = match checked {
            Ok(content) => {
                self.ingest(partner, &delivery.data, content, &mut stop, &mut given_back)
                    .await
            }
            Err(why) => {
                self.refuse(
                    partner,
                    user_id,
                    why,
                    &delivery.data,
                    &mut stop,
                    &mut given_back,
                )
                .await
            }
        };
        self.settle(partner, delivery, settle).await;
    }

    /// Waits until the gate is open, the transport stops, or the consumer is cancelled for a
    /// closed gate.
    async fn wait_at_gate(
        &self,
        stop: &mut watch::Receiver<bool>,
        given_back: &mut watch::Receiver<bool>,
    ) -> AtGate {
        if *given_back.borrow_and_update() {
            return AtGate::GiveBack;
        }
        tokio::select! {
            open = self.gate.wait_open(stop) => if open { AtGate::Open } else { AtGate::Stopping },
            returned = given_back.wait_for(|given| *given) => match returned {
                Ok(_) => AtGate::GiveBack,
                // The consumer's loop is gone, so is the session: leave the message.
                Err(_) => AtGate::Stopping,
            },
        }
    }

    /// Runs the pipeline, waiting while the gate is closed and trying again after transient
    /// refusals.
    async fn ingest(
        &self,
        partner: &str,
        body: &[u8],
        content: Content,
        stop: &mut watch::Receiver<bool>,
        given_back: &mut watch::Receiver<bool>,
    ) -> Settle {
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        loop {
            match self.wait_at_gate(stop, given_back).await {
                AtGate::Open => {}
                AtGate::Stopping => return Settle::Leave,
                AtGate::GiveBack => return Settle::GiveBack,
            }
            let submission = Submission {
                partner,
                transport: Transport::Amqp,
                body,
                content: content.clone(),
            };
            match self.gateway.ingest(submission).await {
                Ok(outcome) => return Settle::Ack(outcome),
                Err(refusal) if !refusal.is_transient() => {
                    return Settle::DeadLetter(DeadLetter::of(&refusal));
                }
                // The limiter paces this partner: the message waits for its turn, unacknowledged,
                // and it does not count as a delivery attempt. It is counted once as
                // `rate-limited`, however many tries it waits (the pipeline leaves it to us).
                Err(Refusal::RateLimited { retry_after, .. }) => {
                    rate_limited += 1;
                    if rate_limited == 1 {
                        self.gateway
                            .metrics
                            .message(partner, "amqp", "rate-limited");
                    }
                    if !pause(rate_wait(retry_after, rate_limited), stop).await {
                        return Settle::Leave;
                    }
                }
                Err(refusal) => {
                    failures += 1;
                    tracing::warn!(
                        partner,
                        attempt = failures,
                        error = %refusal,
                        "an AMQP message could not be made durable; trying again"
                    );
                    if !pause(self.backoff.delay(failures), stop).await {
                        return Settle::Leave;
                    }
                    if failures >= IN_PLACE_ATTEMPTS {
                        return Settle::Requeue;
                    }
                }
            }
        }
    }

    /// Tells the broker.
    async fn settle(&self, partner: &str, delivery: Delivery, settle: Settle) {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| loggable_message_id(id.as_str()))
            .unwrap_or_default();
        match settle {
            Settle::Ack(outcome) => {
                let (status, event_id) = match &outcome {
                    Outcome::Accepted(ack) => ("accepted", ack.event_id.as_str()),
                    Outcome::Duplicate(ack) => ("duplicate", ack.event_id.as_str()),
                    Outcome::Ignored { .. } => ("ignored", ""),
                };
                match bounded(delivery.acker.ack(BasicAckOptions::default())).await {
                    // At INFO, as the REST routes log each message they take; by its event id,
                    // the partner's reference, which the pipeline has read.
                    Ok(true) => {
                        tracing::info!(partner, event_id, status, "AMQP message acknowledged")
                    }
                    // Durable already: a redelivery will be answered `duplicate`.
                    failed => tracing::warn!(
                        partner,
                        message_id = %message_id,
                        event_id,
                        status,
                        error = %failed.err().unwrap_or_else(|| {
                            "the delivery was settled already, or its channel was lost".to_owned()
                        }),
                        "could not acknowledge a processed AMQP message; it will come back as a duplicate"
                    ),
                }
            }
            Settle::DeadLetter(why) => {
                // As a REST refusal is logged: the sender's fault, an INFO line.
                tracing::info!(
                    partner,
                    message_id = %message_id,
                    outcome = why.code,
                    path = why.path.as_deref(),
                    "message refused; dead-lettering it"
                );
                self.dead_letter(partner, delivery, &why).await;
            }
            Settle::Requeue => {
                let returned = return_failed(&delivery.acker).await;
                tracing::warn!(
                    partner,
                    message_id = %message_id,
                    returned,
                    "AMQP message returned to its queue: the gateway cannot make it durable now"
                );
            }
            Settle::GiveBack => {
                let returned = return_unprocessed(&delivery.acker).await;
                tracing::debug!(
                    partner,
                    message_id = %message_id,
                    returned,
                    "AMQP message held at the closed gate returned to its queue"
                );
            }
            Settle::Leave => {}
        }
    }

    /// Publishes the dead letter with its reason and acknowledges the original once the broker
    /// confirms it; if that fails, rejects the original without requeue, so that the queue's own
    /// dead-lettering takes it.
    async fn dead_letter(&self, partner: &str, delivery: Delivery, why: &DeadLetter) {
        let properties = dead_letter_properties(
            &delivery.properties,
            partner,
            why,
            &self.instance,
            Utc::now(),
        );
        let published = async {
            let confirm = self
                .dead_letters
                .basic_publish(
                    DEAD_LETTER_EXCHANGE.into(),
                    short_string(partner)?,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    if why.keeps_message {
                        &delivery.data
                    } else {
                        &[]
                    },
                    properties,
                )
                .await?;
            Ok::<_, AmqpError>(confirm.await?)
        };
        // A confirm cannot come once the channel is gone: stop waiting for it then.
        let confirmed = tokio::select! {
            biased;
            confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, published) => confirmed,
            () = channel_lost(&self.dead_letters) => Ok(Err(AmqpError::Lost)),
        };
        if matches!(confirmed, Ok(Ok(Confirmation::Ack(None)))) {
            if let Err(error) = bounded(delivery.acker.ack(BasicAckOptions::default())).await {
                // The dead letter is stored; the message comes back and is dead-lettered again.
                tracing::warn!(partner, error = %error, "could not acknowledge a dead-lettered AMQP message");
            }
            return;
        }
        let outcome = match &confirmed {
            Err(_) => format!("no confirm within {} s", CONFIRM_TIMEOUT.as_secs()),
            Ok(Err(error)) => format!("the publish failed: {error}"),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => format!(
                "returned by the broker ({} {}): no queue is bound to {DEAD_LETTER_EXCHANGE} \
                 (was passerelle.dead deleted?)",
                returned.reply_code, returned.reply_text
            ),
            Ok(Ok(Confirmation::Nack(_))) => {
                "refused by the broker (nack): is passerelle.dead full?".to_owned()
            }
            Ok(Ok(_)) => "not confirmed".to_owned(),
        };
        if !why.keeps_message {
            // The queue's own dead-lettering would keep the message whole: acknowledged
            // instead. Its refusal is audited; the partner is told nothing more over AMQP.
            tracing::warn!(
                partner,
                outcome,
                "publishing the dead letter of a message of an erased case failed; acknowledging the message"
            );
            if let Err(error) = bounded(delivery.acker.ack(BasicAckOptions::default())).await {
                tracing::warn!(partner, error = %error, "could not acknowledge a refused AMQP message; it will come back");
            }
            return;
        }
        tracing::warn!(
            partner,
            outcome,
            "publishing a dead letter failed; rejecting the message to the queue's own dead-lettering"
        );
        if let Err(error) =
            bounded(delivery.acker.reject(BasicRejectOptions { requeue: false })).await
        {
            tracing::warn!(partner, error = %error, "could not reject a refused AMQP message; it will come back");
        }
    }

    /// Refuses a message before the pipeline (no `user_id`, another partner's, unreadable
    /// headers): audits the refusal, then dead-letters the message.
    ///
    /// Such refusals count against the rate limit of the partner the broker user names (or of
    /// all unregistered senders together), as its messages do. Over it, the message is
    /// dead-lettered at once and tallied in a summary that is audited later, instead of one
    /// audit entry each: a sender cannot flood the audit log with refusals on another partner's
    /// queue, nor hold up that queue by waiting there for its own limit. While the store or the
    /// log is down, the message waits at the gate like any other.
    async fn refuse(
        &self,
        partner: &str,
        user_id: Option<&str>,
        why: DeadLetter,
        body: &[u8],
        stop: &mut watch::Receiver<bool>,
        given_back: &mut watch::Receiver<bool>,
    ) -> Settle {
        let sender = self
            .known_sender(user_id)
            .unwrap_or_else(|| crate::pipeline::UNREGISTERED.to_owned());
        loop {
            match self.wait_at_gate(stop, given_back).await {
                AtGate::Open => {}
                AtGate::Stopping => return Settle::Leave,
                AtGate::GiveBack => return Settle::GiveBack,
            }
            if self.gateway.check_rate(&sender).is_err() {
                self.gateway.metrics.message(partner, "amqp", why.code);
                self.gateway.refusal_summaries().record(
                    &sender,
                    why.code,
                    Transport::Amqp,
                    body,
                    Utc::now(),
                );
                return Settle::DeadLetter(why);
            }
            match self.audit_refusal(partner, user_id, &why, body).await {
                Ok(()) => return Settle::DeadLetter(why),
                // The log went down meanwhile: wait at the gate.
                Err(_) if self.gate.is_down() => {}
                Err(_) if pause(self.backoff.delay(1), stop).await => return Settle::Requeue,
                Err(_) => return Settle::Leave,
            }
        }
    }

    /// The registry partner that broker user `user_id` names, if any.
    fn known_sender(&self, user_id: Option<&str>) -> Option<String> {
        user_id
            .and_then(|user| user.strip_prefix(crate::tls::PARTNER_URI_PREFIX))
            .filter(|id| self.gateway.registry.partner(id).is_some())
            .map(str::to_owned)
    }

    /// Audits (and counts) a refusal made here, before the pipeline: the evidence that a
    /// message was refused, committing to its bytes without keeping them.
    async fn audit_refusal(
        &self,
        partner: &str,
        user_id: Option<&str>,
        why: &DeadLetter,
        body: &[u8],
    ) -> Result<(), Refusal> {
        self.gateway.metrics.message(partner, "amqp", why.code);
        // A broker user names a partner only through the broker's check; record who it was when
        // that partner is known, nobody otherwise.
        let sender = self.known_sender(user_id);
        let mut fact = Fact::new(Kind::Rejected, Utc::now());
        fact.sender = sender;
        fact.transport = Some(Transport::Amqp);
        fact.reason = Some(why.code.to_owned());
        fact.case_id = Some(format!("refused/{partner}"));
        fact.personal = Personal {
            native: Some(body[..body.len().min(crate::audit::leaf::limits::PAYLOAD_LEN)].to_vec()),
            commit_only: true,
            ..Personal::default()
        };
        self.gateway.append(&fact).await.map(|_| ())
    }
}

/// Returns a message to its queue, its processing failed (`basic.reject` with requeue);
/// whether the broker took it. RabbitMQ counts each such return towards the queue's
/// `x-delivery-limit`, so that a message that fails every time ends in the dead letters.
async fn return_failed(acker: &lapin::Acker) -> bool {
    let rejected = bounded(acker.reject(BasicRejectOptions { requeue: true })).await;
    matches!(rejected, Ok(true))
}

/// Gives a message back to its queue unprocessed (`basic.nack` with requeue), as the gate held
/// it; whether the broker took it. RabbitMQ 4.3 and later do not count it towards the queue's
/// `x-delivery-limit` (earlier versions count every return alike).
async fn return_unprocessed(acker: &lapin::Acker) -> bool {
    let nacked = bounded(acker.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    }))
    .await;
    matches!(nacked, Ok(true))
}

/// Starts consuming `partner`'s inbound queue on `channel`, with manual acknowledgements.
/// Starts consuming `partner`'s inbound queue on `channel`, opened first on `connection` (with
/// the settings' prefetch) when there is none.
async fn start_consuming(
    connection: &Connection,
    settings: &AmqpSettings,
    channel: &mut Option<Channel>,
    partner: &str,
) -> Result<Consumer, AmqpError> {
    let channel = match channel {
        Some(channel) => channel,
        None => channel.insert(consumer_channel(connection, settings).await?),
    };
    Ok(channel
        .basic_consume(
            short_string(&inbound_queue(partner))?,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Sleeps for `wait`; `false` if `stop` turned true first.
async fn pause(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    let stopped = tokio::select! {
        () = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|stop| *stop) => true,
    };
    !stopped && !*stop.borrow()
}

/// A message's `message_id` as the log may show it. The sender sets it, and the gateway logs it
/// when it cannot say more of the message (a refusal, a return): one that does not look like a
/// reference (letters, digits and `.` `_` `-` `:` `/` `#` only, at most 200 bytes), such as a
/// name and a birth date put there with spaces, is logged by its length alone. A rough guard
/// only: `DIOP_Awa` looks like a reference.
fn loggable_message_id(id: &str) -> String {
    let reference_like = id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/#".contains(&b));
    if reference_like {
        id.to_owned()
    } else {
        format!("(not logged: {} bytes that are not a reference)", id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn header(name: &str, value: AMQPValue) -> (ShortString, AMQPValue) {
        (name.into(), value)
    }

    /// A message held over the rate limit waits longer at each try that found no room, up to
    /// a second, so that the messages waiting together do not all try at each free slot.
    #[test]
    fn a_rate_limited_message_waits_longer_at_each_try() {
        let ms = |d: Duration| d.as_millis();
        for _ in 0..50 {
            let first = rate_wait(Duration::from_millis(5), 1);
            assert!((5..=10).contains(&ms(first)), "{first:?}");
            let fourth = rate_wait(Duration::from_millis(5), 4);
            assert!((40..=80).contains(&ms(fourth)), "{fourth:?}");
            let late = rate_wait(Duration::from_millis(5), 30);
            assert!((500..=1000).contains(&ms(late)), "{late:?}");
            // Never shorter than the limiter's own wait, even past the ceiling.
            let long = rate_wait(Duration::from_secs(3), 1);
            assert_eq!(ms(long), 3000);
            let over = rate_wait(Duration::from_millis(700), 1);
            assert!((700..=1000).contains(&ms(over)), "{over:?}");
        }
        // A zero wait from the limiter still sleeps.
        assert!(rate_wait(Duration::ZERO, 1) >= Duration::from_millis(5));
    }

    fn with_headers(entries: Vec<(ShortString, AMQPValue)>) -> BasicProperties {
        let table: BTreeMap<_, _> = entries.into_iter().collect();
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(FieldTable::from(table))
    }

    #[test]
    fn a_message_id_that_is_not_a_reference_is_not_logged() {
        for reference in ["ABJ-RBT-2026-0902", "urn:x/1#2", "IOM_MA.2026"] {
            assert_eq!(loggable_message_id(reference), reference);
        }
        for mistake in [
            "KOUASSI Aya 1999-07-21 CI2655120",
            "Kouassi\u{e9}",
            &"A".repeat(201),
        ] {
            let logged = loggable_message_id(mistake);
            assert!(logged.starts_with("(not logged: "), "{logged}");
            assert!(
                !logged.contains("KOUASSI") && !logged.contains("AAAA"),
                "{logged}"
            );
        }
    }

    #[test]
    fn the_sender_is_the_queues_partner() {
        assert_eq!(
            check_sender("ci.ambassade.rabat", Some("urn:partner:ci.ambassade.rabat")),
            Ok(())
        );
        assert_eq!(
            check_sender("ci.ambassade.rabat", None).unwrap_err().code,
            MISSING_USER_ID
        );
        let mismatch = check_sender("ci.ambassade.rabat", Some("urn:partner:iom.sn")).unwrap_err();
        assert_eq!(mismatch.code, USER_ID_MISMATCH);
        assert!(
            mismatch.detail.contains("urn:partner:iom.sn"),
            "{mismatch:?}"
        );
        // The bare partner id is not the broker user.
        assert!(check_sender("iom.sn", Some("iom.sn")).is_err());
    }

    #[test]
    fn native_messages_are_typed_by_content_type() {
        let properties = BasicProperties::default().with_content_type("application/xml".into());
        assert_eq!(
            content_of(&properties),
            Ok(Content::Typed("application/xml".into()))
        );
        assert_eq!(
            content_of(&BasicProperties::default()),
            Ok(Content::Typed(String::new()))
        );
        // Other headers do not make a CloudEvent.
        let properties = with_headers(vec![header(
            "x-trace",
            AMQPValue::LongString(LongString::from("abc")),
        )]);
        assert_eq!(
            content_of(&properties),
            Ok(Content::Typed("application/json".into()))
        );
    }

    #[test]
    fn cloudevents_headers_make_a_binary_mode_event() {
        let properties = with_headers(vec![
            header(
                "cloudEvents_specversion",
                AMQPValue::LongString("1.0".into()),
            ),
            header("cloudEvents:id", AMQPValue::ShortString("MI-1".into())),
            header("CLOUDEVENTS_type", AMQPValue::LongString("ma.rva.x".into())),
            header("cloudEvents_time", AMQPValue::Timestamp(1_794_000_000)),
            header("x-other", AMQPValue::LongString("ignored".into())),
        ]);
        let Ok(Content::BinaryCloudEvent {
            mut attributes,
            content_type,
        }) = content_of(&properties)
        else {
            panic!("not a binary-mode event")
        };
        attributes.sort();
        assert_eq!(content_type, "application/json");
        assert_eq!(
            attributes,
            [
                ("id".to_owned(), "MI-1".to_owned()),
                ("specversion".to_owned(), "1.0".to_owned()),
                ("time".to_owned(), "2026-11-06T21:20:00Z".to_owned()),
                ("type".to_owned(), "ma.rva.x".to_owned()),
            ]
        );
        // Structured mode wins over headers.
        let structured = properties.with_content_type("application/cloudevents+json".into());
        assert!(matches!(content_of(&structured), Ok(Content::Typed(_))));
    }

    #[test]
    fn a_content_coding_is_refused_as_on_https() {
        for coding in ["gzip", "GZIP", "br"] {
            let properties = BasicProperties::default()
                .with_content_type("application/xml".into())
                .with_content_encoding(coding.into());
            assert!(
                matches!(
                    content_of(&properties),
                    Ok(Content::Unreadable(Refusal::UnsupportedMediaType(_)))
                ),
                "{coding}"
            );
        }
        let identity = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_content_encoding("identity".into());
        assert!(matches!(content_of(&identity), Ok(Content::Typed(_))));
    }

    #[test]
    fn unreadable_cloudevents_headers_are_malformed() {
        let properties = with_headers(vec![header(
            "cloudEvents_id",
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        )]);
        assert_eq!(content_of(&properties).unwrap_err().code, "malformed");
        let properties = with_headers(vec![header(
            "cloudEvents_data",
            AMQPValue::FieldTable(FieldTable::default()),
        )]);
        assert_eq!(content_of(&properties).unwrap_err().code, "malformed");
        let long = "x".repeat(MAX_CLOUDEVENT_ATTRIBUTE_BYTES + 1);
        let properties = with_headers(vec![header(
            "cloudEvents_id",
            AMQPValue::LongString(long.into()),
        )]);
        assert_eq!(content_of(&properties).unwrap_err().code, "malformed");
        let many = (0..=MAX_CLOUDEVENT_ATTRIBUTES)
            .map(|i| {
                header(
                    &format!("cloudEvents_x{i}"),
                    AMQPValue::LongString("v".into()),
                )
            })
            .collect();
        assert_eq!(
            content_of(&with_headers(many)).unwrap_err().code,
            "malformed"
        );
    }

    #[test]
    fn dead_letters_keep_the_message_and_say_why() {
        let original = with_headers(vec![
            header("x-trace", AMQPValue::LongString("t-1".into())),
            header(REASON_HEADER, AMQPValue::LongString("forged".into())),
            header(PATH_HEADER, AMQPValue::LongString("forged".into())),
        ])
        .with_content_type("application/xml".into())
        .with_message_id("ABJ-RBT-2026-0902".into())
        .with_user_id("urn:partner:iom.sn".into())
        .with_delivery_mode(1);
        let why = DeadLetter {
            code: "malformed",
            detail: "é".repeat(MAX_DETAIL_BYTES),
            path: None,
            keeps_message: true,
        };
        let now = DateTime::<Utc>::from_timestamp(1_794_000_000, 0).unwrap();
        let dead = dead_letter_properties(
            &original,
            "ci.ambassade.rabat",
            &why,
            "passerelle.localhost/audit-1",
            now,
        );
        assert_eq!(
            dead.user_id(),
            &None,
            "the broker would refuse another user's id"
        );
        assert_eq!(dead.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            dead.message_id().as_ref().unwrap().as_str(),
            "ABJ-RBT-2026-0902"
        );
        assert_eq!(
            dead.content_type().as_ref().unwrap().as_str(),
            "application/xml"
        );
        let headers = dead.headers().clone().unwrap();
        let get = |name: &str| {
            headers
                .inner()
                .get(name)
                .and_then(header_text)
                .unwrap_or_else(|| panic!("no header {name}"))
        };
        assert_eq!(get("x-trace"), "t-1");
        assert_eq!(get(REASON_HEADER), "malformed");
        assert!(get(DETAIL_HEADER).len() <= MAX_DETAIL_BYTES);
        assert!(!headers.inner().contains_key(PATH_HEADER));
        assert_eq!(get(PARTNER_HEADER), "ci.ambassade.rabat");
        assert_eq!(get(QUEUE_HEADER), "passerelle.in.ci.ambassade.rabat");
        assert_eq!(get(USER_ID_HEADER), "urn:partner:iom.sn");
        assert_eq!(get(INSTANCE_HEADER), "passerelle.localhost/audit-1");
        assert_eq!(get(TIME_HEADER), "2026-11-06T21:20:00.000Z");
    }

    #[test]
    fn a_dead_letter_carries_the_senders_headers_up_to_its_budget() {
        let big = |n: usize| AMQPValue::LongString("h".repeat(n).into());
        let original = with_headers(vec![
            header("a-first", big(40 * 1024)),
            header("b-second", big(40 * 1024)),
            header("c-small", AMQPValue::LongString("kept".into())),
            header(
                "d-nested",
                AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), big(10)].into()),
            ),
        ]);
        let why = DeadLetter {
            code: "malformed",
            detail: "no".into(),
            path: None,
            keeps_message: true,
        };
        let now = DateTime::<Utc>::from_timestamp(1_794_000_000, 0).unwrap();
        let dead = dead_letter_properties(&original, "ci.ambassade.rabat", &why, "i", now);
        let headers = dead.headers().clone().unwrap();
        let names: Vec<&str> = headers
            .inner()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !k.starts_with(HEADER_PREFIX))
            .collect();
        assert_eq!(names, ["a-first", "c-small", "d-nested"]);
        assert_eq!(
            headers
                .inner()
                .get(DROPPED_HEADERS_HEADER)
                .and_then(header_text),
            Some("1".into())
        );
        // The encoded sizes the budget counts: type octet, then the payload.
        assert_eq!(
            encoded_len(&AMQPValue::LongString("kept".into())),
            1 + 4 + 4
        );
        assert_eq!(
            encoded_len(&AMQPValue::FieldArray(
                vec![AMQPValue::LongInt(1), AMQPValue::Boolean(true)].into()
            )),
            1 + 4 + (1 + 4) + (1 + 1)
        );
        // Without anything left out, no count is added.
        let dead = dead_letter_properties(&with_headers(vec![]), "p", &why, "i", now);
        assert!(
            !dead
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .contains_key(DROPPED_HEADERS_HEADER)
        );
    }

    #[test]
    fn refusals_become_dead_letter_reasons() {
        let why = DeadLetter::of(&Refusal::Unprocessable {
            message: "no".into(),
            path: Some("data.case_id".into()),
        });
        assert_eq!(why.code, "unprocessable");
        assert_eq!(why.path.as_deref(), Some("data.case_id"));
        assert!(why.keeps_message);
        // A message of an erased case: its dead letter keeps neither it nor its headers.
        let erased = DeadLetter::of(&Refusal::CaseErased);
        assert!(!erased.keeps_message);
        let original = with_headers(vec![header("x-trace", AMQPValue::LongString("t-1".into()))]);
        let now = DateTime::<Utc>::from_timestamp(1_794_000_000, 0).unwrap();
        let original = original
            .with_message_id("ABJ-RBT-2026-0902".into())
            .with_correlation_id("c-1".into())
            .with_content_type("application/xml".into());
        let dead = dead_letter_properties(&original, "ci.ambassade.rabat", &erased, "i", now);
        assert_eq!(dead.message_id(), &None);
        assert_eq!(dead.correlation_id(), &None);
        assert_eq!(dead.content_type(), &None);
        let headers = dead.headers().clone().unwrap();
        assert!(!headers.inner().contains_key("x-trace"));
        assert!(headers.inner().contains_key(REASON_HEADER));
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("éé", 3), "é");
    }
}
