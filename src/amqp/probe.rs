//! The raw publish-with-confirm rate of the broker: the baseline of the gateway's AMQP throughput
//! benchmark.

use super::connection::{AmqpError, short_string};
use super::topology::quorum_arguments;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::{BasicProperties, Channel, Confirmation};
use std::collections::VecDeque;
use std::time::Instant;

/// The AMQP `delivery_mode` of a persistent message.
pub const PERSISTENT: u8 = 2;

/// Declares a durable quorum queue named `queue` for [`publish_confirm_rate`] (idempotent).
pub async fn declare_probe_queue(channel: &Channel, queue: &str) -> Result<(), AmqpError> {
    channel
        .queue_declare(
            short_string(queue)?,
            QueueDeclareOptions::durable(),
            quorum_arguments(),
        )
        .await?;
    Ok(())
}

/// Measures how many persistent messages per second the broker takes and confirms on `channel`:
/// `count` copies of `payload`, published to `queue` through the default exchange with
/// `delivery_mode = 2`, keeping at most `in_flight` messages unconfirmed (at least 1).
///
/// The clock runs from the first publish to the last confirm. Publisher confirms are enabled on
/// the channel (harmless if they already are). Afterwards the queue is purged, outside the
/// measurement, and the purge must find every message: a rate of messages confirmed but not
/// kept would be no baseline. A `count` of zero measures nothing and returns 0.
///
/// `queue` should be a quorum queue ([`declare_probe_queue`]) with no consumer, and `channel`
/// should carry nothing else meanwhile. Fails with [`AmqpError::NotConfirmed`] when the broker
/// negatively acknowledges a message, and with [`AmqpError::ConfirmedNotHeld`] when the queue
/// held fewer messages than were confirmed (a queue that does not exist fails its purge).
pub async fn publish_confirm_rate(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    count: usize,
    in_flight: usize,
) -> Result<f64, AmqpError> {
    let routing_key = short_string(queue)?;
    if count == 0 {
        return Ok(0.0);
    }
    let in_flight = in_flight.max(1);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    let mut pending = VecDeque::with_capacity(in_flight);
    let started = Instant::now();
    for _ in 0..count {
        if pending.len() >= in_flight
            && let Some(confirm) = pending.pop_front()
        {
            check(confirm, queue).await?;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                routing_key.clone(),
                BasicPublishOptions::default(),
                payload,
                properties.clone(),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        check(confirm, queue).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let held = channel
        .queue_purge(routing_key, QueuePurgeOptions::default())
        .await?;
    let held = usize::try_from(held).unwrap_or(usize::MAX);
    if held < count {
        return Err(AmqpError::ConfirmedNotHeld {
            queue: queue.to_owned(),
            confirmed: count,
            held,
        });
    }
    // A message count is far below 2^52: the conversion is exact.
    Ok(count as f64 / elapsed.max(f64::MIN_POSITIVE))
}

/// Waits for one confirm; anything but a plain `Ack` is an error.
async fn check(confirm: lapin::PublisherConfirm, queue: &str) -> Result<(), AmqpError> {
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        _ => Err(AmqpError::NotConfirmed(queue.to_owned())),
    }
}
