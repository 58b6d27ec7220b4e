//! Backpressure on the inbound side of the AMQP transport: when to stop taking messages from
//! the partners' queues.
//!
//! This module owns one decision, whether the consumers may hand the next message to the
//! pipeline. They may not while the broker has blocked the gateway's connection
//! (`connection.blocked`: a memory or disk alarm, so that the deliveries the message would
//! create could not be published either), nor while the store's outbox is deeper than
//! [`AmqpSettings::max_outbox`](super::AmqpSettings::max_outbox), nor while the store or the
//! audit log cannot make a message durable (after an I/O failure they stay so until a
//! restart: a message handed over would only be returned to its queue, again and again, until
//! the broker's delivery limit dead-letters it). It resumes once the connection is unblocked,
//! the outbox has drained below nine tenths of the bound (so that it does not flap around one
//! value), and the store and the log are sound.
//!
//! Pausing costs no memory: a paused consumer simply does not process (nor acknowledge) the
//! deliveries it holds, and the broker sends no more than the channel's prefetch. The messages
//! wait in their quorum queues, replicated and on disk. This module does not consume, publish
//! or acknowledge anything itself.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often a paused consumer looks again.
const POLL: Duration = Duration::from_millis(50);

/// The inbound gate: open, or closed by a blocked connection, a deep outbox, or a store or log
/// that cannot make a message durable.
pub struct Backpressure {
    depth: Box<dyn Fn() -> u64 + Send + Sync>,
    durable: Box<dyn Fn() -> bool + Send + Sync>,
    high: u64,
    low: u64,
    blocked: AtomicBool,
    /// `passerelle_amqp_blocked`, which follows `blocked`.
    blocked_gauge: Gauge,
    over: AtomicBool,
    down: AtomicBool,
}

impl std::fmt::Debug for Backpressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backpressure")
            .field("high", &self.high)
            .field("low", &self.low)
            .field("blocked", &self.blocked.load(Ordering::Relaxed))
            .field("over", &self.over.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Backpressure {
    /// A gate that closes when `depth()` (the outbox's depth) reaches `max` (at least 1), and
    /// opens again below nine tenths of it; it is also closed while `durable()` (whether the
    /// store and the log can make a message durable) is false. `blocked_gauge` is set to 1
    /// while the broker blocks the connection, else 0.
    pub fn new(
        depth: impl Fn() -> u64 + Send + Sync + 'static,
        max: u64,
        durable: impl Fn() -> bool + Send + Sync + 'static,
        blocked_gauge: Gauge,
    ) -> Arc<Self> {
        blocked_gauge.set(0);
        let high = max.max(1);
        let low = (high - high / 10).max(1);
        Arc::new(Backpressure {
            depth: Box::new(depth),
            durable: Box::new(durable),
            high,
            low,
            blocked: AtomicBool::new(false),
            blocked_gauge,
            over: AtomicBool::new(false),
            down: AtomicBool::new(false),
        })
    }

    /// Whether the store or the log cannot make a message durable now.
    pub fn is_down(&self) -> bool {
        let down = !(self.durable)();
        if self.down.swap(down, Ordering::Relaxed) != down {
            if down {
                tracing::warn!(
                    "the store or the audit log cannot make a message durable; inbound consumption paused"
                );
            } else {
                tracing::info!(
                    "the store and the audit log are sound; inbound consumption resumed"
                );
            }
        }
        down
    }

    /// Records that the broker blocked (`Some(reason)`) or unblocked (`None`) the connection.
    pub fn set_blocked(&self, reason: Option<&str>) {
        let blocked = reason.is_some();
        self.blocked_gauge.set(i64::from(blocked));
        if self.blocked.swap(blocked, Ordering::Relaxed) != blocked {
            match reason {
                Some(reason) => tracing::warn!(
                    reason,
                    "the broker blocked the gateway's connection; inbound consumption paused"
                ),
                None => tracing::info!("the broker unblocked the gateway's connection"),
            }
        }
    }

    /// Whether the broker has blocked the connection.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Whether the outbox is over its bound (with hysteresis).
    pub fn is_over(&self) -> bool {
        let depth = (self.depth)();
        let was = self.over.load(Ordering::Relaxed);
        let over = if was {
            depth >= self.low
        } else {
            depth >= self.high
        };
        if over != was {
            self.over.store(over, Ordering::Relaxed);
            if over {
                tracing::warn!(
                    depth,
                    bound = self.high,
                    "the outbox is full; inbound consumption paused"
                );
            } else {
                tracing::info!(depth, "the outbox drained; inbound consumption resumed");
            }
        }
        over
    }

    /// Whether a consumer may process its next message now.
    pub fn is_open(&self) -> bool {
        // All are evaluated, so that the states and their log lines stay current.
        let over = self.is_over();
        let down = self.is_down();
        !over && !down && !self.is_blocked()
    }

    /// Waits until the gate is open; `false` if `stop` turned true first.
    pub async fn wait_open(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            if self.is_open() {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Clears the blocked state (a new connection starts unblocked, and a connection ended
    /// blocks nothing).
    pub fn reset(&self) {
        self.blocked.store(false, Ordering::Relaxed);
        self.blocked_gauge.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn closes_at_the_bound_and_opens_below_nine_tenths() {
        let depth = Arc::new(AtomicU64::new(0));
        let reader = depth.clone();
        let gate = Backpressure::new(
            move || reader.load(Ordering::Relaxed),
            100,
            || true,
            Gauge::default(),
        );
        assert!(gate.is_open());
        depth.store(99, Ordering::Relaxed);
        assert!(gate.is_open());
        depth.store(100, Ordering::Relaxed);
        assert!(!gate.is_open());
        depth.store(91, Ordering::Relaxed);
        assert!(!gate.is_open(), "hysteresis: still closed above 90");
        depth.store(89, Ordering::Relaxed);
        assert!(gate.is_open());
        gate.set_blocked(Some("low on memory"));
        assert!(!gate.is_open());
        gate.set_blocked(None);
        assert!(gate.is_open());
    }

    #[test]
    fn closes_while_nothing_can_be_made_durable() {
        let sound = Arc::new(AtomicBool::new(true));
        let reader = sound.clone();
        let gate = Backpressure::new(
            || 0,
            100,
            move || reader.load(Ordering::Relaxed),
            Gauge::default(),
        );
        assert!(gate.is_open());
        sound.store(false, Ordering::Relaxed);
        assert!(!gate.is_open());
        assert!(gate.is_down());
        sound.store(true, Ordering::Relaxed);
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn a_closed_gate_gives_way_to_shutdown() {
        let gate = Backpressure::new(|| 10, 1, || true, Gauge::default());
        let (stop_tx, mut stop) = watch::channel(false);
        let waiter = tokio::spawn(async move { gate.wait_open(&mut stop).await });
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!waiter.is_finished());
        stop_tx.send(true).unwrap();
        assert!(!waiter.await.unwrap());
    }
}
