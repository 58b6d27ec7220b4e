//! The AMQP transport as one worker of the gateway: connect, declare the topology, consume and
//! publish; after a lost connection, reconnect with backoff and do it all again.
//!
//! This module owns the life cycle of the broker connection and of the session that runs on
//! it: which queues are consumed, when the transport counts as ready, how it stops. What a
//! message becomes is the [`ingress`](super::ingress) and [`egress`](super::egress) modules'
//! work; whether to pause is [`backpressure`](super::backpressure)'s.
//!
//! # One session per connection
//!
//! After each (re)connection ([`connect_with_backoff`]) the transport declares the whole
//! topology (idempotently: a broker restarted from nothing, or a queue deleted by mistake, is
//! put back), opens a confirm-mode channel for dead letters and one for deliveries, and one
//! consumer channel (with the settings' prefetch) per inbound queue. The queues consumed are
//! those of the registry's partners whose delivery mode is `amqp`, and of the partners listed in
//! [`AmqpSettings::senders`]. The readiness flag (`amqp` in the admin listener's `/ready`) is
//! true from then until the session ends.
//!
//! A session ends when the connection reports an error (a broker restart closes it with
//! `CONNECTION_FORCED`; a dead peer is found by heartbeats), when a channel fails but for a
//! broker's refusal that closed one channel only, or at shutdown. A consumer the broker cancels
//! (its queue deleted) ends nothing: its queue is declared again and consumed again (see
//! [`declarations`](super::declarations)). The messages being
//! processed then finish (their acknowledgements fail with the channel, and the broker delivers
//! them again, to be answered `duplicate`), the deliveries awaiting a confirm are recorded as
//! failed attempts, and the transport connects again. Nothing is lost: an inbound message is
//! acknowledged only once durable, and a delivery counts only on its confirm.
//!
//! At shutdown the consumers are cancelled first, the messages in hand are finished and
//! acknowledged, the deliveries in flight are confirmed and recorded, and the connection is
//! closed; the messages the consumers held but had not started go back to their queues.

use super::backpressure::Backpressure;
use super::connection::{AmqpError, AmqpSettings, connect_with_backoff, publisher_channel};
use super::declarations::{Declarations, keep_topology};
use super::egress::Egress;
use super::ingress::Ingress;
use super::topology::{Topology, partner_user};
use crate::delivery::RetryPolicy;
use crate::pipeline::Gateway;
use crate::registry::{Delivery as DeliveryMode, Registry};
use futures_util::{Stream, StreamExt};
use lapin::{Connection, Event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a session's tasks get to finish once it ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);
/// How long closing the connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the reconnection backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Why a session ended.
enum SessionEnd {
    /// The gateway is stopping.
    Shutdown,
    /// The connection or a channel failed.
    Lost(String),
}

/// The AMQP transport: run it with [`AmqpTransport::run`] as a worker of the gateway.
pub struct AmqpTransport {
    gateway: Arc<Gateway>,
    /// Shared with each session's consumers.
    settings: Arc<AmqpSettings>,
    topology: Topology,
    ready: Arc<AtomicBool>,
    gate: Arc<Backpressure>,
    egress: Arc<Egress>,
    /// What the last declaration of the topology refused, shared with the publisher.
    declarations: Arc<Declarations>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("settings", &self.settings)
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

/// Checks the AMQP settings against the registry, and returns the topology they give: the
/// start calls it before it makes anything in the data folder, so that a mistake there stops
/// the start with nothing made.
pub fn check_settings(settings: &AmqpSettings, registry: &Registry) -> Result<Topology, AmqpError> {
    settings.validate()?;
    for sender in &settings.senders {
        if registry.partner(sender).is_none() {
            return Err(AmqpError::Settings(format!(
                "amqp.senders: {sender} is not a partner of the registry"
            )));
        }
    }
    let receivers: Vec<String> = registry
        .partners()
        .filter(|partner| partner.delivery.as_ref().is_some_and(DeliveryMode::is_amqp))
        .map(|partner| partner.id.clone())
        .collect();
    // The broker names a partner by the first URI name of its certificate, and the gateway
    // knows its AMQP partners by `urn:partner:<id>` (their queues' permissions, the `user_id`
    // of their messages): an entry that gives its partner another identity could neither
    // publish nor read there.
    for id in receivers.iter().chain(&settings.senders) {
        let identity = registry.partner(id).map(|p| p.identity());
        if let Some(identity) = identity.filter(|identity| *identity != partner_user(id)) {
            return Err(AmqpError::Settings(format!(
                "partner {id} sends or receives over AMQP, where its broker user (the first URI \
                 name of its certificate) must be {}; its registry entry gives it the identity \
                 {identity}: give it that one, or have it use HTTPS",
                partner_user(id)
            )));
        }
    }
    Topology::new(
        receivers
            .into_iter()
            .chain(settings.senders.iter().cloned()),
    )
}

impl AmqpTransport {
    /// A transport for `gateway` with `settings`; deliveries are retried under `policy`, and
    /// `ready` tells whether the transport is connected and consuming.
    ///
    /// Fails when the settings are invalid, or name a sender that is not in the registry.
    pub fn new(
        gateway: Arc<Gateway>,
        settings: AmqpSettings,
        policy: RetryPolicy,
        ready: Arc<AtomicBool>,
    ) -> Result<AmqpTransport, AmqpError> {
        let topology = check_settings(&settings, &gateway.registry)?;
        for partner in topology.partners() {
            gateway.metrics.messages_start_at_zero(
                partner,
                "amqp",
                crate::pipeline::MESSAGE_OUTCOMES
                    .iter()
                    .chain(&crate::pipeline::Refusal::CODES)
                    .chain(&[
                        super::ingress::MISSING_USER_ID,
                        super::ingress::USER_ID_MISMATCH,
                    ]),
            );
        }
        let store = gateway.store.clone();
        let sound = gateway.clone();
        let gate = Backpressure::new(
            move || store.pending_deliveries(),
            settings.max_outbox,
            move || crate::delivery::can_record(&sound),
            gateway.metrics.amqp_blocked.clone(),
        );
        let declarations = Declarations::new(gateway.metrics.clone());
        let egress = Arc::new(Egress::new(
            gateway.clone(),
            policy,
            settings.publish_in_flight,
            gate.clone(),
            topology.clone(),
            declarations.clone(),
        ));
        ready.store(false, Ordering::Relaxed);
        Ok(AmqpTransport {
            gateway,
            settings: Arc::new(settings),
            topology,
            ready,
            gate,
            egress,
            declarations,
        })
    }

    /// The exchanges and queues the transport declares; its partners' inbound queues are the
    /// ones it consumes.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The inbound gate (backpressure).
    pub fn backpressure(&self) -> Arc<Backpressure> {
        self.gate.clone()
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): connects, runs a session,
    /// and reconnects with backoff whenever the session is lost.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let endpoint = self
            .settings
            .endpoint()
            .map(|endpoint| endpoint.to_string())
            .unwrap_or_default();
        let mut failures: u32 = 0;
        loop {
            let connection = match connect_with_backoff(&self.settings, &mut shutdown).await {
                Ok(connection) => connection,
                Err(AmqpError::Shutdown) => break,
                Err(error) => {
                    // Only a change of settings or files mends this; keep trying, slowly, so
                    // that a fixed file is picked up, and say so at every attempt.
                    failures = failures.saturating_add(1);
                    tracing::error!(broker = %endpoint, error = %error, "the AMQP transport cannot connect");
                    let wait = self.settings.backoff.delay(failures.max(8));
                    if !sleep_or_shutdown(wait, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let connection = Arc::new(connection);
            let started = Instant::now();
            let end = self.session(&connection, &mut shutdown).await;
            self.set_ready(false);
            // A connection that ended is blocked no more (and `passerelle_amqp_blocked` says so).
            self.gate.reset();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "OK".into())).await;
            match end {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Lost(why)) => {
                    tracing::warn!(broker = %endpoint, reason = %why, "the AMQP session was lost; reconnecting");
                }
                Err(error) => {
                    tracing::error!(broker = %endpoint, error = %error, "the AMQP session could not start; reconnecting");
                }
            }
            failures = if started.elapsed() >= STABLE_SESSION {
                1
            } else {
                failures.saturating_add(1)
            };
            if !sleep_or_shutdown(self.settings.backoff.delay(failures), &mut shutdown).await {
                break;
            }
        }
        self.set_ready(false);
        tracing::info!(broker = %endpoint, "the AMQP transport stopped");
    }

    /// Says whether a session runs: to `/ready` and to `passerelle_amqp_connected`.
    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.gateway.metrics.amqp_connected.set(i64::from(ready));
    }

    /// One session on `connection`: declare, consume, publish, until shutdown or a failure.
    async fn session(
        &self,
        connection: &Arc<Connection>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, AmqpError> {
        let events = connection.events_listener();
        self.gate.reset();
        // A `connection.blocked` that came before the listener above was taken is not among its
        // events; the connection's status has it.
        let blocked = connection.status().blocked();
        if blocked {
            self.gate
                .set_blocked(Some("blocked before the session started"));
        }
        // A broker that accepted the connection can still leave a declaration or a consumer
        // unanswered (while it is starting or stopping, or under a partition): each step of the
        // setup gets the connection's time limit, so that readiness never waits on one forever,
        // and a larger topology does not shorten the time each step gets. Shutdown cuts it short.
        let limit = Duration::from_secs(self.settings.connect_timeout_secs.max(1));
        let setup = async {
            let refused = within(
                limit,
                "declaring the topology",
                self.topology.declare_each(connection),
            )
            .await?;
            self.declarations.record(refused);
            let dead_letters = within(
                limit,
                "opening the dead-letter channel",
                publisher_channel(connection),
            )
            .await?;
            Ok::<_, AmqpError>(dead_letters)
        };
        let dead_letters = tokio::select! {
            setup = setup => setup?,
            () = wait_for_shutdown(shutdown) => return Ok(SessionEnd::Shutdown),
        };

        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let dead_letter_channel = dead_letters.clone();
        let ingress = Arc::new(Ingress::new(
            self.gateway.clone(),
            self.gate.clone(),
            dead_letters,
            self.settings.backoff,
            Duration::from_secs(self.settings.held_return_secs),
            self.declarations.clone(),
        ));
        let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
        // Each partner's consumer starts in its own task, once the setup is done: a consumer
        // started during the setup would hold messages unread were a later step to fail.
        for partner in self.topology.partners() {
            tasks.spawn(ingress.clone().consume(
                partner.to_owned(),
                connection.clone(),
                self.settings.clone(),
                stop_tx.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(
            self.egress
                .clone()
                .run(connection.clone(), stop_tx.clone(), stop_rx.clone()),
        );
        tasks.spawn(keep_topology(
            connection.clone(),
            self.declarations.clone(),
            self.topology.clone(),
            self.gate.clone(),
            ingress.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(watch_connection(
            events,
            dead_letter_channel,
            self.gate.clone(),
            stop_tx.clone(),
            stop_rx.clone(),
        ));
        self.set_ready(true);
        self.gateway.metrics.amqp_sessions.inc();
        tracing::info!(
            queues = self.topology.partners().count(),
            "the AMQP transport is consuming and publishing"
        );

        let mut stopped = stop_rx.clone();
        let graceful = tokio::select! {
            () = wait_for_shutdown(shutdown) => true,
            _ = stopped.wait_for(|stop| *stop) => false,
        };
        self.set_ready(false);
        stop_tx.send_replace(true);
        let drain = async {
            let mut first_error = None;
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => {
                        first_error.get_or_insert(why);
                    }
                    Err(join) => {
                        first_error.get_or_insert(format!(
                            "an AMQP task failed: {}",
                            crate::error_text::task_failure(&join)
                        ));
                    }
                }
            }
            first_error
        };
        let first_error = match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
            Ok(first_error) => first_error,
            Err(_) => {
                // Left to finish rather than aborted: a message in the pipeline, or a confirmed
                // delivery being recorded, cut at an await would leave its writes half made (a
                // leaf without its record, a delivery confirmed by the broker but still due,
                // published again). Their channel is gone, so what they settle with the broker
                // fails, and the broker delivers those messages again.
                tasks.detach_all();
                tracing::warn!(
                    "the AMQP session's tasks did not finish in time; they are left to finish \
                     on their own"
                );
                Some("the session's tasks did not finish in time".to_owned())
            }
        };
        Ok(if graceful {
            SessionEnd::Shutdown
        } else {
            SessionEnd::Lost(first_error.unwrap_or_else(|| "the session stopped".to_owned()))
        })
    }
}

/// Follows the connection's events: blocked and unblocked go to the gate; an error ends the
/// session, but for a broker's refusal that closed one channel only (a soft error) while the
/// dead-letter channel, which no task watches, stays open: the channel's own task meets it (a
/// consumer, the publisher) and decides, so that one partner's queue the broker refuses does
/// not end the session for all.
async fn watch_connection(
    events: impl Stream<Item = Event> + Send + 'static,
    dead_letters: lapin::Channel,
    gate: Arc<Backpressure>,
    stop_session: Arc<watch::Sender<bool>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::ConnectionBlocked(reason)) => {
                    gate.set_blocked(Some(&reason));
                }
                Some(Event::ConnectionUnblocked) => {
                    gate.set_blocked(None);
                }
                Some(Event::Error(error))
                    if closed_one_channel(&error) && dead_letters.status().connected() =>
                {
                    tracing::debug!(%error, "the broker closed a channel");
                }
                Some(Event::Error(error)) => {
                    stop_session.send_replace(true);
                    return Err(format!("connection error: {error}"));
                }
                Some(_) => {}
                None => {
                    stop_session.send_replace(true);
                    return Err("the connection's events ended".to_owned());
                }
            },
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

/// Whether `error` is the broker's refusal of a call on one channel, which closes that channel
/// only (an AMQP soft error).
fn closed_one_channel(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(refusal)
            if matches!(refusal.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}

/// Runs `step` of a session's setup within `limit`.
async fn within<T>(
    limit: Duration,
    step: &'static str,
    work: impl Future<Output = Result<T, AmqpError>>,
) -> Result<T, AmqpError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| AmqpError::SetupTimeout { step, limit })?
}

/// Resolves when `true` is sent or the sender is dropped.
async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleeps for `wait`; `false` if shutdown came first.
async fn sleep_or_shutdown(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let stopped = tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = wait_for_shutdown(shutdown) => true,
    };
    !stopped && !*shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Catalogue;
    use crate::mapping::MappingSet;
    use std::path::Path;

    /// The sample registry, with `change` made to its text.
    fn registry(change: impl FnOnce(String) -> String) -> Registry {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        let text = std::fs::read_to_string(root.join("config/registry.toml")).unwrap();
        Registry::parse(&change(text), &catalogue, &mappings).unwrap()
    }

    #[test]
    fn an_amqp_partner_must_be_known_by_its_broker_user() {
        let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev");
        let settings = AmqpSettings {
            senders: vec!["airline.at".into()],
            tls: Some(crate::tls::dev::files(&dev, "gateway-client")),
            ..AmqpSettings::default()
        };
        check_settings(&settings, &registry(|text| text)).unwrap();
        // A sender over AMQP (the airline), and a recipient (the embassy), given another
        // identity.
        for (partner, after) in [
            ("airline.at", "id = \"airline.at\"\n"),
            ("ci.ambassade.rabat", "id = \"ci.ambassade.rabat\"\n"),
        ] {
            let registry = registry(|text| {
                text.replacen(after, &format!("{after}identity = \"urn:x:other\"\n"), 1)
            });
            assert_eq!(registry.partner(partner).unwrap().identity(), "urn:x:other");
            let error = check_settings(&settings, &registry).unwrap_err();
            assert!(
                error.to_string().contains(&format!(
                    "partner {partner} sends or receives over AMQP, where its broker user"
                )) && error.to_string().contains("urn:x:other"),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn a_setup_step_that_never_ends_fails_with_its_name() {
        let limit = Duration::from_millis(20);
        let stuck = within(
            limit,
            "declaring the topology",
            std::future::pending::<Result<(), AmqpError>>(),
        );
        match stuck.await {
            Err(AmqpError::SetupTimeout { step, limit: l }) => {
                assert_eq!(step, "declaring the topology");
                assert_eq!(l, limit);
            }
            other => panic!("{other:?}"),
        }
        // A step that ends in time gives its own result, error or not.
        assert_eq!(within(limit, "a step", async { Ok(7) }).await.unwrap(), 7);
        let failed = within(limit, "a step", async {
            Err::<(), _>(AmqpError::Topology("bad".into()))
        });
        assert!(matches!(failed.await, Err(AmqpError::Topology(_))));
    }
}
