//! Keeping the topology declared while the transport runs.
//!
//! This module owns what the transport knows of its last declaration of the topology, which
//! partners' queues the broker refused ([`Declarations`]), and the task that declares the
//! topology again during a session ([`keep_topology`]): when a refused queue may have been
//! mended by hand, when a partner's inbound queue is not consumed (its consumer cancelled by the
//! broker, say, because the queue was deleted), or when an exchange or the dead-letter queue
//! that all partners share is missing. A refusal is said once, when first seen, and its mending
//! once; whichever declares (the session's setup, this task, or the publisher after a delivery
//! found no queue) records its outcome here, so that the three agree.

use super::backpressure::Backpressure;
use super::connection::AmqpError;
use super::ingress::Ingress;
use super::topology::Topology;
use crate::metrics::Metrics;
use lapin::Connection;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often a session looks for the exchanges and the dead-letter queue all partners share,
/// and tries again the partners' queues the broker refused.
const TOPOLOGY_LOOK: Duration = Duration::from_secs(10);

/// The partners whose queues the broker refused at the last declaration of the topology, and a
/// wish for the next declaration to come now.
#[derive(Debug)]
pub(crate) struct Declarations {
    metrics: Arc<Metrics>,
    refused: Mutex<Vec<String>>,
    wanted: Notify,
}

impl Declarations {
    /// None refused yet; `passerelle_amqp_refused_declarations` follows the record.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Declarations {
            metrics,
            refused: Mutex::new(Vec::new()),
            wanted: Notify::new(),
        })
    }

    /// Records which partners' queues a declaration of the topology had refused: a partner
    /// refused now but not at the last declaration gets an ERROR line, one refused then but
    /// no longer an INFO line, and one refused at both nothing more; the count goes to
    /// `passerelle_amqp_refused_declarations`.
    pub(crate) fn record(&self, refused: Vec<(String, AmqpError)>) {
        let mut before = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        self.metrics
            .amqp_refused_declarations
            .set(i64::try_from(refused.len()).unwrap_or(i64::MAX));
        for partner in before.iter() {
            if !refused.iter().any(|(now, _)| now == partner) {
                tracing::info!(
                    partner = %partner,
                    "the partner's queues the broker refused before are declared now"
                );
            }
        }
        let mut now = Vec::with_capacity(refused.len());
        for (partner, error) in refused {
            if !before.contains(&partner) {
                tracing::error!(
                    partner = %partner,
                    error = %error,
                    "the broker refused to declare the partner's queues (one re-created by hand \
                     with other arguments, or a permission taken away?): what the refused queue \
                     carries waits (its messages unconsumed, or its deliveries unrouted) until \
                     it is mended; the declaration is tried again every 10 s; the other \
                     partners' queues are served"
                );
            }
            now.push(partner);
        }
        *before = now;
    }

    /// Whether the last declaration had a partner's queues refused.
    pub(crate) fn any_refused(&self) -> bool {
        !self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Asks the session's [`keep_topology`] to declare the topology now rather than at its
    /// next look (a consumer the broker cancelled, whose queue may be gone).
    pub(crate) fn want_now(&self) {
        self.wanted.notify_one();
    }
}

/// Keeps the topology declared while the session lasts. At each [`TOPOLOGY_LOOK`], or at once
/// when [`Declarations::want_now`] asks, it declares the topology again when the broker refused
/// a partner's queues at the last declaration (so that a queue mended by hand is declared and
/// read without waiting for a reconnection), when a partner's inbound queue is not consumed (its
/// consumer cancelled by the broker: the consumer's next try finds it declared again), or when
/// an exchange or the dead-letter queue that all partners share is missing (deleted by hand):
/// nothing else would notice a deleted `passerelle.inbound`, whose partners' publishes the
/// broker refuses meanwhile, nor a deleted `passerelle.dead`, which holds refused messages in
/// their queues. Not while the broker blocks the connection (it would read nothing of it). Its
/// failures end nothing: the connection's own are seen by the session.
pub(crate) async fn keep_topology(
    connection: Arc<Connection>,
    declarations: Arc<Declarations>,
    topology: Topology,
    gate: Arc<Backpressure>,
    ingress: Arc<Ingress>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TOPOLOGY_LOOK) => {}
            () = declarations.wanted.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
        if gate.is_blocked() {
            continue;
        }
        let looked = tokio::time::timeout(TOPOLOGY_LOOK, async {
            let shared_present = topology.shared_present(&connection).await?;
            if shared_present && !declarations.any_refused() && !ingress.has_unconsumed_queues() {
                return Ok(None);
            }
            let refused = topology.declare_each(&connection).await?;
            Ok::<_, AmqpError>(Some((shared_present, refused)))
        })
        .await;
        match looked {
            Ok(Ok(None)) => {}
            Ok(Ok(Some((shared_present, refused)))) => {
                if !shared_present {
                    tracing::warn!(
                        "an exchange or the dead-letter queue all partners share was missing on \
                         the broker (deleted by hand?); the topology is declared again"
                    );
                }
                declarations.record(refused);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "looking at the topology on the broker failed");
            }
            Err(_) => {}
        }
    }
}
