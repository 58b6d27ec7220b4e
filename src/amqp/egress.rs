//! The outbound side of the AMQP transport: publish the store's due deliveries for AMQP
//! recipients to their queues, and record each attempt.
//!
//! This module owns how a [`Delivery`] becomes an AMQP message ([`outbound_message`]) and what
//! the broker's answer means for it. It follows the webhook worker
//! ([`crate::delivery::webhook`]): the same [`RetryPolicy`], each attempt audited before the
//! store records it, so that the evidence is never behind the state.
//!
//! # Publishing
//!
//! A delivery is published to the exchange `passerelle.outbound` with the recipient's partner
//! id as routing key (the broker routes it to `passerelle.out.<id>`), persistent
//! (`delivery_mode = 2`), `mandatory`, on a channel with publisher confirms. It counts as
//! delivered only when the broker confirms it (`basic.ack`) without returning it, and is then
//! audited `delivered`. A returned message (`basic.return`: no queue bound, reply 312
//! `NO_ROUTE`), a `basic.nack` (a full queue with `reject-publish`, or a broker failure), a
//! confirm that does not come within 30 s (not counting the time the broker blocks the
//! connection) and a connection lost before the confirm are failed
//! attempts: audited `delivery_failed` and retried under the [`RetryPolicy`], then
//! dead-lettered in the store (audited `dead_lettered`) after its last attempt, for an operator
//! to redeliver.
//!
//! # The message
//!
//! - `message_id` is the **event id** (the CloudEvents `id`), the same in every attempt and in
//!   every gateway instance: the key (with `cloudEvents_source`) by which a recipient drops a
//!   message it already has. The delivery id, which is local to one instance's store, travels
//!   as the header [`DELIVERY_HEADER`], for support.
//! - For a recipient that reads the canonical model (its body is a structured-mode CloudEvent,
//!   `application/cloudevents+json`), the event goes in **binary mode** by default, as the AMQP
//!   binding of CloudEvents describes it: the event's `data` is the body, `content_type` is its
//!   `datacontenttype`, and every other attribute is a `cloudEvents_<attr>` header. A recipient
//!   whose registry entry says `cloudevents = "structured"` gets it in **structured mode**: the
//!   whole event is the body, `content_type` is `application/cloudevents+json`, and the headers
//!   are those of a native message below.
//! - For a recipient with its own format, the body is its native message (`content_type` as its
//!   mapping writes it), and the headers `cloudEvents_specversion`, `cloudEvents_id`,
//!   `cloudEvents_source` and `cloudEvents_type` identify the event it carries.
//!
//! A crash (or a lost store write) between the broker's confirm and the store's record makes
//! the delivery go out again: recipients drop such repeats by `message_id`.

use super::backpressure::Backpressure;
use super::confirms::{Answer, Confirms, Outcome, Returned};
use super::connection::{bounded, channel_lost, publisher_channel, short_string};
use super::declarations::Declarations;
use super::probe::PERSISTENT;
use super::topology::{OUTBOUND_EXCHANGE, Topology};
use crate::delivery::{self, KeyedTasks, RetryPolicy, due_in, record_attempt};
use crate::pipeline::Gateway;
use crate::pipeline::media_essence;
use crate::registry::{CloudEventsMode, Delivery as DeliveryMode};
use crate::store::{Channel as StoreChannel, Delivery};
use base64::Engine;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The header carrying the delivery id (local to the instance's store, stable across retries).
pub const DELIVERY_HEADER: &str = "x-passerelle-delivery";
/// The prefix of CloudEvents attribute headers (binary mode, AMQP binding of CloudEvents).
pub const CLOUDEVENTS_PREFIX: &str = "cloudEvents_";
/// The `app_id` property of every delivery.
pub const APP_ID: &str = "passerelle";
/// How long the gateway waits for the broker's confirm of a delivery.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The failure code of a delivery the broker nacked.
const NACKED: &str = "amqp.nack";
/// The failure code of a delivery the broker returned: no queue is bound for its recipient.
const NO_ROUTE: &str = "amqp.no-route";
/// The failure code of a publish the broker did not confirm within [`CONFIRM_TIMEOUT`].
const CONFIRM_TIMED_OUT: &str = "amqp.confirm-timeout";

/// The body and the properties of the AMQP message that carries `delivery`, a canonical event
/// in `mode`, published at `now` (seconds since the epoch, the `timestamp` property). See the
/// [module documentation](self).
pub fn outbound_message(
    delivery: &Delivery,
    mode: CloudEventsMode,
    now: u64,
) -> (Vec<u8>, BasicProperties) {
    let mut headers: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    let mut put = |name: String, value: &str| {
        if let Ok(name) = ShortString::try_new(name) {
            headers.insert(name, AMQPValue::LongString(value.into()));
        }
    };
    put(DELIVERY_HEADER.to_owned(), &delivery.id.to_string());
    let binary = (mode == CloudEventsMode::Binary
        && is_structured_cloudevent(&delivery.content_type))
    .then(|| binary_mode(&delivery.body))
    .flatten();
    let (body, content_type) = match binary {
        Some(event) => {
            for (name, value) in &event.attributes {
                put(format!("{CLOUDEVENTS_PREFIX}{name}"), value);
            }
            (event.data, event.content_type)
        }
        None => {
            for (name, value) in [
                ("specversion", "1.0"),
                ("id", &delivery.event_id),
                ("source", &delivery.source),
                ("type", &delivery.event_type),
            ] {
                put(format!("{CLOUDEVENTS_PREFIX}{name}"), value);
            }
            (delivery.body.clone(), delivery.content_type.clone())
        }
    };
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(FieldTable::from(headers))
        .with_timestamp(now)
        .with_app_id(APP_ID.into());
    if let Ok(media) = ShortString::try_new(content_type) {
        properties = properties.with_content_type(media);
    }
    if let Ok(id) = ShortString::try_new(delivery.event_id.as_str()) {
        properties = properties.with_message_id(id);
    }
    (body, properties)
}

fn is_structured_cloudevent(content_type: &str) -> bool {
    media_essence(content_type) == "application/cloudevents+json"
}

/// A structured-mode event taken apart for binary mode.
#[derive(Debug, PartialEq, Eq)]
struct BinaryEvent {
    data: Vec<u8>,
    content_type: String,
    attributes: Vec<(String, String)>,
}

/// Takes a structured-mode CloudEvent (JSON) apart: `data` (or `data_base64`), its media type
/// and the other attributes as text. `None` if the body is not a JSON object or its
/// `data_base64` is not base64.
fn binary_mode(body: &[u8]) -> Option<BinaryEvent> {
    let Value::Object(mut event) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    let content_type = match event.remove("datacontenttype") {
        Some(Value::String(media)) => media,
        _ => "application/json".to_owned(),
    };
    let data = match (event.remove("data_base64"), event.remove("data")) {
        (Some(Value::String(encoded)), _) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
        (_, Some(Value::String(text))) if !is_json(&content_type) => text.into_bytes(),
        (_, Some(data)) => serde_json::to_vec(&data).ok()?,
        (_, None) => Vec::new(),
    };
    let attributes = event
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            (name, text)
        })
        .collect();
    Some(BinaryEvent {
        data,
        content_type,
        attributes,
    })
}

fn is_json(media: &str) -> bool {
    let essence = media_essence(media);
    essence == "application/json" || essence.ends_with("+json")
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Delivered,
    Retry(String),
    /// The recipient is not an AMQP recipient: nothing was published.
    Unsendable(String),
}

/// What the broker's answer to a publish on `channel` says. A confirm cannot come once the
/// channel is gone: the attempt is then a failed one at once (`amqp.connection-lost`), so that
/// the session ends and the transport reconnects without waiting for the confirm timeout.
/// A returned message that comes with the confirm may be another publish's; [`Confirms`]
/// matches it to its delivery.
///
/// The time limit counts only the time the connection was not blocked, until the session stops
/// (see [`confirmed_within`]).
async fn settle(
    confirm: PublisherConfirm,
    channel: &Channel,
    gate: &Backpressure,
    stopping: &watch::Receiver<bool>,
) -> Answer {
    let answered = tokio::select! {
        biased;
        answered = confirmed_within(CONFIRM_TIMEOUT, confirm, gate, stopping) => answered,
        () = channel_lost(channel) => return Answer::Failed("amqp.connection-lost".into(), None),
    };
    match answered {
        Some(Ok(Confirmation::Ack(returned))) => Answer::Acked(returned.map(|r| returned_of(&r))),
        Some(Ok(Confirmation::Nack(returned))) => {
            Answer::Failed(NACKED.into(), returned.map(|r| returned_of(&r)))
        }
        Some(Ok(_)) => Answer::Failed("amqp.unconfirmed".into(), None),
        Some(Err(_)) => Answer::Failed("amqp.connection-lost".into(), None),
        None => Answer::Failed(CONFIRM_TIMED_OUT.into(), None),
    }
}

/// How often a confirm wait looks whether the broker still blocks the connection.
const BLOCKED_LOOK: Duration = Duration::from_millis(250);

/// Waits for `confirm` until it has waited `limit` while the connection was not blocked (then
/// `None`). RabbitMQ tells a connection that it blocks it (a memory or disk alarm) only when the
/// connection publishes: the publish that learns of it is held unread until the alarm clears,
/// and is then routed and confirmed. Counted against the limit, an alarm longer than it would
/// make that publish a failed attempt, published again after the alarm: a repeat. The time the
/// connection is blocked is therefore not counted, unless the session is stopping (`stopping`
/// true), whose end must not wait for an alarm; a connection lost meanwhile ends the wait (see
/// [`settle`]).
async fn confirmed_within<F: std::future::Future>(
    limit: Duration,
    confirm: F,
    gate: &Backpressure,
    stopping: &watch::Receiver<bool>,
) -> Option<F::Output> {
    let mut confirm = std::pin::pin!(confirm);
    let mut unblocked = Duration::ZERO;
    loop {
        let look = BLOCKED_LOOK.min(limit.saturating_sub(unblocked));
        if let Ok(answered) = tokio::time::timeout(look, &mut confirm).await {
            return Some(answered);
        }
        if !gate.is_blocked() || *stopping.borrow() {
            unblocked += look;
            if unblocked >= limit {
                return None;
            }
        }
    }
}

/// The delivery a returned message names, and the broker's reason.
fn returned_of(message: &BasicReturnMessage) -> Returned {
    let delivery = message
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(DELIVERY_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongString(text) => text.to_string().parse().ok(),
            _ => None,
        });
    Returned {
        delivery,
        code: message.reply_code,
    }
}

/// Publishes AMQP deliveries, one session (connection) at a time.
pub(crate) struct Egress {
    gateway: Arc<Gateway>,
    policy: RetryPolicy,
    in_flight: usize,
    /// The inbound gate, for whether the broker has blocked the connection.
    gate: Arc<Backpressure>,
    /// The exchanges and queues, declared again when a delivery finds no queue.
    topology: Topology,
    /// Set when a delivery to an AMQP recipient found no queue (`amqp.no-route`).
    no_route: AtomicBool,
    /// What the last declaration of the topology refused (recorded here too).
    declarations: Arc<Declarations>,
}

/// How long after declaring the topology again egress waits before it may do so again.
const REDECLARE_EVERY: Duration = Duration::from_secs(5);

impl Egress {
    /// A publisher keeping at most `in_flight` deliveries unconfirmed, and publishing nothing
    /// while `gate` says the broker has blocked the connection.
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        policy: RetryPolicy,
        in_flight: usize,
        gate: Arc<Backpressure>,
        topology: Topology,
        declarations: Arc<Declarations>,
    ) -> Egress {
        Egress {
            gateway,
            policy,
            in_flight: in_flight.max(1),
            gate,
            topology,
            no_route: AtomicBool::new(false),
            declarations,
        }
    }

    /// Declares the topology again on a channel of its own, after a delivery found no queue:
    /// a recipient's queue deleted while the connection stays up would otherwise be declared
    /// again only at the next reconnection, and each delivery to it would spend its attempts
    /// meanwhile. Idempotent; a failure is logged, and tried again after the next miss.
    async fn redeclare(&self, connection: &Connection) {
        match bounded(self.topology.declare_each(connection)).await {
            Ok(refused) => {
                tracing::warn!(
                    "a delivery found no queue for its recipient; the exchanges and queues are declared again"
                );
                self.declarations.record(refused);
            }
            Err(error) => tracing::error!(
                %error,
                "a delivery found no queue for its recipient, and declaring the queues again failed"
            ),
        }
    }

    /// Publishes due deliveries on a confirm-mode channel of `connection` until `stop` turns
    /// true or a publish fails (then turns `stop` true for the whole session and returns why); in
    /// both cases the attempts in flight are settled and recorded before it returns.
    ///
    /// After a `basic.nack`, the channel is replaced by a new one as soon as nothing is in flight
    /// on it: a RabbitMQ quorum queue over its length limit tells each publishing channel to
    /// reject, and a channel told so keeps rejecting if the limit is then lifted (the queue only
    /// lifts the rejection when it drains below a limit it still has). So is a channel that
    /// left a confirm unanswered for [`CONFIRM_TIMEOUT`]: the late answer, and a returned
    /// message with it, could no longer be matched. Nothing more is published on a channel to
    /// replace.
    pub(crate) async fn run(
        self: Arc<Self>,
        connection: Arc<Connection>,
        stop_session: Arc<watch::Sender<bool>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut in_flight: HashSet<u64> = HashSet::new();
        // Confirms being awaited, answers held until certain, and attempts being recorded.
        let mut settling: KeyedTasks<(u64, u64), (Delivery, Answer)> = KeyedTasks::default();
        let mut confirms: Confirms<Option<Delivery>> = Confirms::default();
        let mut recording: KeyedTasks<u64, bool> = KeyedTasks::default();
        let mut held = delivery::HeldBack::default();
        // The recipient the last look ended with: the next starts after it.
        let mut turn = String::new();
        let to_replace = Arc::new(AtomicBool::new(false));
        let mut failure = None;
        let mut channel = match bounded(publisher_channel(&connection)).await {
            Ok(channel) => channel,
            Err(error) => {
                stop_session.send_replace(true);
                return Err(format!("opening the publisher channel: {error}"));
            }
        };
        let mut declared_at: Option<std::time::Instant> = None;
        'session: loop {
            if *stop.borrow_and_update() {
                break;
            }
            // Not while the broker blocks the connection: it would read nothing of it.
            if declared_at.is_none_or(|at| at.elapsed() >= REDECLARE_EVERY)
                && !self.gate.is_blocked()
                && self.no_route.swap(false, Ordering::Relaxed)
            {
                self.redeclare(&connection).await;
                declared_at = Some(std::time::Instant::now());
            }
            // A channel the broker closed (a refusal on it: an exchange deleted by hand, say)
            // while the connection stays: replaced like one that nacked, once what was in
            // flight on it is settled (as lost), rather than published on and failed.
            if !channel.status().connected() {
                to_replace.store(true, Ordering::Relaxed);
            }
            if in_flight.is_empty() && to_replace.swap(false, Ordering::Relaxed) {
                let _ = bounded(channel.close(200, "OK".into())).await;
                channel = match bounded(publisher_channel(&connection)).await {
                    Ok(channel) => channel,
                    Err(error) => {
                        failure = Some(format!("reopening the publisher channel: {error}"));
                        stop_session.send_replace(true);
                        break;
                    }
                };
                tracing::debug!(
                    "AMQP publisher channel replaced after a nack, an unanswered confirm or its \
                     closing by the broker"
                );
            }
            let changed = self.gateway.outbox_changed.clone();
            let mut released = delivery::listen(&changed);
            let now = due_in(Duration::ZERO);
            // Every read of the outbox also reads the deliveries in flight (they stay due until
            // recorded): refill the window in batches, not one delivery at a time.
            let room = self.in_flight.saturating_sub(in_flight.len());
            // Nothing is published while an attempt could not be recorded; what could not be
            // recorded all the same is held back a while (see `delivery::HeldBack`).
            let skip = held.and(&in_flight);
            let recordable = delivery::can_record(&self.gateway);
            // Nothing more goes on a channel to replace (see above): it is replaced once its
            // publishes are answered. Nor on a connection the broker has blocked (a memory or
            // disk alarm): it reads nothing more until the alarm clears, so each publish would
            // wait out its confirm's time limit, be counted a failed attempt, and perhaps be
            // routed all the same once the alarm clears, and then again.
            let usable = !to_replace.load(Ordering::Relaxed) && !self.gate.is_blocked();
            let mut next_ms = None;
            if recordable
                && usable
                && room > 0
                && (in_flight.is_empty() || room >= self.refill_at())
            {
                // The broker takes every recipient's messages alike: no recipient's share is
                // bounded here (a recipient without a queue answers at once).
                let due = delivery::look_at_line(
                    &self.gateway,
                    StoreChannel::Amqp,
                    now,
                    skip,
                    room,
                    turn.clone(),
                    |_| usize::MAX,
                );
                match due.await {
                    Ok(look) => {
                        let taken;
                        (taken, next_ms) =
                            held.sort_look(look, &self.gateway, StoreChannel::Amqp, &mut turn);
                        for delivery in taken {
                            in_flight.insert(delivery.id);
                            let Some(mode) = self.cloudevents_mode(&delivery.recipient) else {
                                let attempt = Attempt::Unsendable(
                                    crate::delivery::NOT_AN_AMQP_RECIPIENT.into(),
                                );
                                recording
                                    .spawn(delivery.id, self.clone().record(delivery, attempt));
                                continue;
                            };
                            match self.publish(&channel, &delivery, mode).await {
                                Ok(confirm) => {
                                    let number = confirms.published(delivery.id);
                                    let to_replace = to_replace.clone();
                                    let channel = channel.clone();
                                    let gate = self.gate.clone();
                                    let stopping = stop.clone();
                                    settling.spawn((number, delivery.id), async move {
                                        let answer =
                                            settle(confirm, &channel, &gate, &stopping).await;
                                        // A channel that nacked, or left a confirm
                                        // unanswered (its late answer, and any return with
                                        // it, would go astray), is replaced.
                                        if matches!(&answer, Answer::Failed(code, _) if code == NACKED || code == CONFIRM_TIMED_OUT) {
                                            to_replace.store(true, Ordering::Relaxed);
                                        }
                                        (delivery, answer)
                                    });
                                }
                                Err(error) => {
                                    let attempt = Attempt::Retry("amqp.publish-failed".into());
                                    recording
                                        .spawn(delivery.id, self.clone().record(delivery, attempt));
                                    failure =
                                        Some(format!("publishing to {OUTBOUND_EXCHANGE}: {error}"));
                                    stop_session.send_replace(true);
                                    break 'session;
                                }
                            }
                        }
                    }
                    Err(error) => tracing::error!(error = %error, "reading the AMQP outbox"),
                }
            }
            // Counted after the publishes, which take their time.
            let wait = held.until_next_look(next_ms, recordable);
            tokio::select! {
                Some(done) = settling.join_next(), if !settling.is_empty() => {
                    for answered in std::iter::once(done)
                        .chain(std::iter::from_fn(|| settling.try_join_next()))
                    {
                        self.count(&mut confirms, &mut recording, &mut in_flight, &mut held, answered);
                    }
                }
                Some(done) = recording.join_next(), if !recording.is_empty() => {
                    for (id, recorded) in std::iter::once(done)
                        .chain(std::iter::from_fn(|| recording.try_join_next()))
                    {
                        held.settle(&mut in_flight, id, recorded);
                    }
                }
                () = &mut released => {}
                () = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        while let Some(answered) = settling.join_next().await {
            self.count(
                &mut confirms,
                &mut recording,
                &mut in_flight,
                &mut held,
                answered,
            );
        }
        debug_assert!(
            confirms.is_empty(),
            "every answer is counted once all are collected"
        );
        while recording.join_next().await.is_some() {}
        failure.map_or(Ok(()), Err)
    }

    /// Takes a confirm's answer, and records the attempts it makes certain.
    fn count(
        self: &Arc<Self>,
        confirms: &mut Confirms<Option<Delivery>>,
        recording: &mut KeyedTasks<u64, bool>,
        in_flight: &mut HashSet<u64>,
        held: &mut delivery::HeldBack,
        ((number, id), answered): ((u64, u64), Option<(Delivery, Answer)>),
    ) {
        let certain = match answered {
            Some((delivery, answer)) => confirms.answered(number, id, Some(delivery), answer),
            // The task awaiting the confirm failed: nothing is known of the publish, and its
            // delivery is let go, held back a while before it is published again.
            None => {
                held.settle(in_flight, id, None);
                confirms.answered(
                    number,
                    id,
                    None,
                    Answer::Failed("amqp.unknown".into(), None),
                )
            }
        };
        for (delivery, outcome) in certain {
            let Some(delivery) = delivery else { continue };
            if matches!(&outcome, Outcome::Failed(code) if code == NO_ROUTE) {
                self.no_route.store(true, Ordering::Relaxed);
            }
            let attempt = match outcome {
                Outcome::Delivered => Attempt::Delivered,
                Outcome::Failed(code) => Attempt::Retry(code),
            };
            recording.spawn(delivery.id, self.clone().record(delivery, attempt));
        }
    }

    /// The free room in the window at which it is refilled: half of it.
    fn refill_at(&self) -> usize {
        (self.in_flight / 2).max(1)
    }

    /// How the registry has an AMQP recipient's canonical events put in a message; `None`
    /// when the registry does not give the recipient AMQP delivery (any more).
    fn cloudevents_mode(&self, recipient: &str) -> Option<CloudEventsMode> {
        match self
            .gateway
            .registry
            .partner(recipient)
            .and_then(|partner| partner.delivery.as_ref())
        {
            Some(DeliveryMode::Amqp { cloudevents }) => Some(*cloudevents),
            _ => None,
        }
    }

    /// Sends one delivery; the confirm comes later.
    async fn publish(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        mode: CloudEventsMode,
    ) -> Result<PublisherConfirm, super::AmqpError> {
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let (body, properties) = outbound_message(delivery, mode, now);
        let publish = channel.basic_publish(
            OUTBOUND_EXCHANGE.into(),
            short_string(&delivery.recipient)?,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        );
        match tokio::time::timeout(super::connection::BROKER_CALL_TIMEOUT, publish).await {
            Ok(confirm) => Ok(confirm?),
            Err(_) => Err(super::AmqpError::Lost),
        }
    }

    /// Audits the attempt, then records it in the store; returns whether the attempt is on
    /// record.
    async fn record(self: Arc<Self>, delivery: Delivery, attempt: Attempt) -> bool {
        let attempt = match attempt {
            Attempt::Delivered => delivery::Attempt::Delivered,
            Attempt::Retry(code) => delivery::Attempt::Retry { code, asked: None },
            Attempt::Unsendable(code) => delivery::Attempt::Unsendable { code },
        };
        record_attempt(
            &self.gateway,
            &self.policy,
            &delivery,
            attempt,
            StoreChannel::Amqp.name(),
        )
        .await
        .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryState;
    use serde_json::json;

    fn delivery(content_type: &str, body: Vec<u8>) -> Delivery {
        Delivery {
            id: 42,
            event_id: "AT-DCS-20261120-0505-000112".into(),
            event_type: "ma.rva.boarding.confirmed".into(),
            source: "urn:partner:airline.at".into(),
            case_id: Some("RVA-2026-004211".into()),
            recipient: "iom.sn".into(),
            channel: StoreChannel::Amqp,
            body,
            content_type: content_type.into(),
            mapping_id: "iom.sn/cloudevents".into(),
            mapping_hash: String::new(),
            withheld: Vec::new(),
            state: DeliveryState::Pending,
            attempts: 0,
            due_ms: 0,
            last_error: None,
            created_at: "2026-11-20T09:41:13.000Z".into(),
        }
    }

    fn headers(properties: &BasicProperties) -> BTreeMap<String, String> {
        properties
            .headers()
            .iter()
            .flat_map(|table| table.inner())
            .map(|(name, value)| {
                let AMQPValue::LongString(text) = value else {
                    panic!("{name}: not a long string")
                };
                (name.to_string(), text.to_string())
            })
            .collect()
    }

    /// A canonical event, as a recipient of the canonical model is written it.
    fn boarding_event() -> Value {
        json!({
            "specversion": "1.0",
            "id": "AT-DCS-20261120-0505-000112",
            "source": "urn:partner:airline.at",
            "type": "ma.rva.boarding.confirmed",
            "subject": "RVA-2026-004211",
            "time": "2026-11-20T09:41:12Z",
            "datacontenttype": "application/json",
            "withheld": "data.vulnerabilities",
            "data": {"case_id": "RVA-2026-004211", "seat": "23C"}
        })
    }

    #[test]
    fn canonical_recipients_get_binary_mode() {
        let event = boarding_event();
        let d = delivery(
            "application/cloudevents+json",
            serde_json::to_vec(&event).unwrap(),
        );
        let (body, properties) = outbound_message(&d, CloudEventsMode::Binary, 1_794_000_000);
        let data: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(data, event["data"]);
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            "AT-DCS-20261120-0505-000112"
        );
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(properties.timestamp(), &Some(1_794_000_000));
        let headers = headers(&properties);
        assert_eq!(headers["cloudEvents_specversion"], "1.0");
        assert_eq!(headers["cloudEvents_id"], "AT-DCS-20261120-0505-000112");
        assert_eq!(headers["cloudEvents_source"], "urn:partner:airline.at");
        assert_eq!(headers["cloudEvents_type"], "ma.rva.boarding.confirmed");
        assert_eq!(headers["cloudEvents_subject"], "RVA-2026-004211");
        assert_eq!(headers["cloudEvents_time"], "2026-11-20T09:41:12Z");
        assert_eq!(headers["cloudEvents_withheld"], "data.vulnerabilities");
        assert_eq!(headers[DELIVERY_HEADER], "42");
        assert!(!headers.contains_key("cloudEvents_data"));
        assert!(!headers.contains_key("cloudEvents_datacontenttype"));
    }

    #[test]
    fn a_recipient_that_reads_structured_mode_gets_the_whole_event() {
        let body = serde_json::to_vec(&boarding_event()).unwrap();
        let d = delivery("application/cloudevents+json", body.clone());
        let (sent, properties) = outbound_message(&d, CloudEventsMode::Structured, 0);
        assert_eq!(sent, body);
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/cloudevents+json"
        );
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            d.event_id
        );
        // The event's identity, as for a native message, and no other attribute: the body
        // holds them.
        let headers = headers(&properties);
        assert_eq!(headers.len(), 5, "{headers:?}");
        assert_eq!(headers["cloudEvents_id"], d.event_id);
        assert!(!headers.contains_key("cloudEvents_subject"));

        // A native message is sent as it is in either mode.
        let xml = b"<ci:Demande xmlns:ci=\"urn:ci:diplomatie:consulaire:2\"/>".to_vec();
        let native = delivery("application/xml", xml.clone());
        for mode in [CloudEventsMode::Binary, CloudEventsMode::Structured] {
            assert_eq!(outbound_message(&native, mode, 0).0, xml);
        }
    }

    #[test]
    fn native_recipients_get_their_body_and_the_event_identity() {
        let xml = b"<ci:Demande xmlns:ci=\"urn:ci:diplomatie:consulaire:2\"/>".to_vec();
        let d = delivery("application/xml", xml.clone());
        let (body, properties) = outbound_message(&d, CloudEventsMode::Binary, 0);
        assert_eq!(body, xml);
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/xml"
        );
        let headers = headers(&properties);
        assert_eq!(headers.len(), 5, "{headers:?}");
        assert_eq!(headers["cloudEvents_id"], d.event_id);
        assert_eq!(headers["cloudEvents_source"], d.source);
        assert_eq!(headers["cloudEvents_type"], d.event_type);
        assert_eq!(headers["cloudEvents_specversion"], "1.0");
    }

    #[test]
    fn binary_mode_reads_base64_data_and_falls_back_on_garbage() {
        let event =
            json!({"id": "x", "datacontenttype": "application/pdf", "data_base64": "JVBERg=="});
        let parts = binary_mode(&serde_json::to_vec(&event).unwrap()).unwrap();
        assert_eq!(parts.data, b"%PDF");
        assert_eq!(parts.content_type, "application/pdf");
        assert_eq!(parts.attributes, [("id".to_owned(), "x".to_owned())]);
        // Not JSON: sent as it is.
        let d = delivery("application/cloudevents+json", b"not json".to_vec());
        let (body, properties) = outbound_message(&d, CloudEventsMode::Binary, 0);
        assert_eq!(body, b"not json");
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/cloudevents+json"
        );
        assert_eq!(headers(&properties)["cloudEvents_id"], d.event_id);
    }
}
