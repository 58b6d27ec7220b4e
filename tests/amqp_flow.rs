//! The AMQP adapter end to end: gateways started in process with [`RunningGateway::start`] and an
//! `[amqp]` configuration, a real RabbitMQ broker (`tests/support/rabbit.rs`) with TLS and SASL
//! EXTERNAL, and partners connecting to it with their development certificates.
//!
//! - [`the_cote_divoire_flow_end_to_end`]: the embassy's XML over AMQP reaches the ministry's
//!   inbox; the ministry's LPC request reaches the embassy's queue in its XML dialect, without
//!   the person's vulnerabilities; a redelivered message is processed once; the airline's
//!   irregular-operations feed reaches IOM Senegal's queue as a structured-mode CloudEvent.
//! - [`refusals_are_dead_lettered_and_failed_publishes_retried`]: bad XML, an unknown message
//!   kind, a missing `user_id` and another partner's `user_id` are dead-lettered with reason
//!   headers and audited; a delivery nacked by a full queue, or returned for want of a queue, is
//!   retried and never counted delivered until the broker takes it.
//! - [`a_full_outbox_pauses_consumption`]: with the outbox over its bound, the gateway takes no
//!   more messages until it drains (backpressure).
//! - [`a_broker_restart_loses_nothing`]: messages in and out before, during and after a restart.
//! - [`two_instances_share_the_queues`]: competing consumers, nothing lost or doubled, one
//!   audit-log shard per instance, each verified.
//! - [`a_broker_alarm_holds_deliveries_until_it_clears`]: while a memory alarm blocks the
//!   gateway's connection, deliveries wait in the outbox, with no attempt counted, and go out
//!   once it clears.
//!
//! The tests that keep the broker running share one broker (started by the first of them), each
//! in a virtual host of its own, so that their gateways do not consume each other's messages.
//! The restart and alarm tests have a broker of their own. These tests need RabbitMQ
//! (`apt-get install rabbitmq-server`): without it they fail, saying so.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/rabbit.rs"]
mod rabbit;

use gateway_support::{
    Admin, Client, RegistryChanges, ServedSetup, SmallFs, fixture, fixture_json, fixture_text,
    metric, test_config, wait_for, write_registry,
};
use lapin::message::Delivery as Message;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use passerelle::amqp::{
    self, AmqpAuth, AmqpSettings, Backoff, DEAD_LETTER_QUEUE, INBOUND_EXCHANGE, inbound_queue,
    look_up_queue, outbound_queue, partner_permissions, partner_user,
};
use passerelle::audit::{Kind, Leaf, Query, Receipt, TlogProof, Transport, journal};
use passerelle::config::Config;
use passerelle::service::RunningGateway;
use passerelle::store::{Channel as StoreChannel, Delivery, DeliveryState};
use passerelle::tls::dev;
use rabbit::Broker;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const EMBASSY: &str = "ci.ambassade.rabat";
const EMBASSY_SOURCE: &str = "urn:partner:ci.ambassade.rabat";
/// The broker user of the gateway's client certificate.
const GATEWAY_USER: &str = "urn:gateway:passerelle";
/// The partners with a broker user in these tests.
const PARTNERS: [&str; 3] = [EMBASSY, "iom.sn", "airline.at"];
/// The virtual hosts of the tests that share the broker.
const SHARED_VHOSTS: [&str; 12] = [
    "erased",
    "isolation",
    "redeclare",
    "flow",
    "refusals",
    "backpressure",
    "giveback",
    "pair",
    "disk",
    "headers",
    "pace",
    "nesting",
];
const WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------ broker

/// The broker shared by every test but the restart and alarm tests, with its users and virtual
/// hosts.
fn shared() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let broker = Broker::start();
        define(&broker, &SHARED_VHOSTS);
        broker
    })
}

async fn broker() -> &'static Broker {
    blocking(shared).await
}

/// Runs a blocking harness call off the async runtime's threads.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(call).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Creates, in one `rabbitmqctl import_definitions`, the broker users of the gateway and the
/// partners (no password: they log in with their certificates) and `vhosts`, with the
/// gateway's permissions (everything), each partner's ([`partner_permissions`]) and the test
/// administrator's.
fn define(broker: &Broker, vhosts: &[&str]) {
    let mut users = vec![json!({"name": GATEWAY_USER, "password_hash": "", "tags": []})];
    for partner in PARTNERS {
        users.push(json!({"name": partner_user(partner), "password_hash": "", "tags": []}));
    }
    let mut permissions = Vec::new();
    for vhost in vhosts {
        for user in [GATEWAY_USER, broker.admin().0] {
            permissions.push(json!({"user": user, "vhost": vhost,
                "configure": ".*", "write": ".*", "read": ".*"}));
        }
        for partner in PARTNERS {
            let p = partner_permissions(partner);
            permissions.push(json!({"user": partner_user(partner), "vhost": vhost,
                "configure": p.configure, "write": p.write, "read": p.read}));
        }
    }
    let definitions = json!({
        "users": users,
        "vhosts": vhosts.iter().map(|name| json!({"name": name})).collect::<Vec<_>>(),
        "permissions": permissions,
    });
    let path = broker.dir().join("definitions.json");
    std::fs::write(&path, definitions.to_string()).expect("writing the definitions");
    broker.rabbitmqctl(&["import_definitions", &path.display().to_string()]);
}

fn vhost_path(vhost: &str) -> String {
    if vhost == "/" {
        "%2f".to_owned()
    } else {
        vhost.to_owned()
    }
}

/// The gateway's `[amqp]` settings: its client certificate (EXTERNAL), fast reconnection, and
/// the airline as an AMQP sender.
fn gateway_settings(broker: &Broker, vhost: &str) -> AmqpSettings {
    AmqpSettings {
        auth: AmqpAuth::External,
        tls: Some(dev::files(&rabbit::dev_certs_dir(), "gateway-client")),
        connection_name: "passerelle-test".to_owned(),
        prefetch: 16,
        backoff: Backoff {
            initial_ms: 100,
            max_ms: 1_000,
        },
        senders: vec!["airline.at".to_owned()],
        ..AmqpSettings::new(format!(
            "amqps://127.0.0.1:{}/{}",
            broker.amqps_port(),
            vhost_path(vhost)
        ))
    }
}

/// A partner's connection, with its certificate.
async fn partner_connection(broker: &Broker, vhost: &str, partner: &str) -> Connection {
    amqp::connect(&AmqpSettings {
        auth: AmqpAuth::External,
        tls: Some(dev::files(&rabbit::dev_certs_dir(), partner)),
        connection_name: format!("test-{partner}"),
        ..AmqpSettings::new(format!(
            "amqps://127.0.0.1:{}/{}",
            broker.amqps_port(),
            vhost_path(vhost)
        ))
    })
    .await
    .unwrap_or_else(|error| panic!("{partner} connects: {error}"))
}

/// The administrator's connection (PLAIN over plain AMQP).
async fn admin_connection(broker: &Broker, vhost: &str) -> Connection {
    let (user, password) = broker.admin();
    amqp::connect(&AmqpSettings {
        auth: AmqpAuth::Plain {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        connection_name: "test-admin".to_owned(),
        ..AmqpSettings::new(format!(
            "amqp://127.0.0.1:{}/{}",
            broker.amqp_port(),
            vhost_path(vhost)
        ))
    })
    .await
    .expect("the administrator connects")
}

/// Publishes persistently, `mandatory`, and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    channel
        .basic_publish(
            INBOUND_EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("the broker's confirm")
}

/// What a partner sets on a native message.
fn native(partner: &str, message_id: &str, content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_user_id(partner_user(partner).into())
        .with_message_id(message_id.into())
        .with_content_type(content_type.into())
}

/// Publishes a native message as `partner` into its own queue, and checks the confirm.
async fn send(channel: &Channel, partner: &str, message_id: &str, media: &str, body: &[u8]) {
    let confirmation = publish(channel, partner, body, native(partner, message_id, media)).await;
    assert_eq!(
        confirmation,
        Confirmation::Ack(None),
        "publishing {message_id}"
    );
}

/// Publishes the embassy's laissez-passer under each of `references`, each confirmed.
async fn send_lpcs(channel: &Channel, references: &[String]) {
    for reference in references {
        send(
            channel,
            EMBASSY,
            reference,
            "application/xml",
            &lpc_issued(reference),
        )
        .await;
    }
}

/// Takes one message from `queue` (acknowledged), if there is one.
async fn take(channel: &Channel, queue: &str) -> Option<Message> {
    let got = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|error| panic!("basic.get on {queue}: {error}"))?;
    got.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    Some(got.delivery)
}

/// Takes messages from `queue` until their `message_id`s cover `ids` (or panics after
/// [`WAIT`]), then for `grace` more, to catch any repeat; returns them all.
async fn take_until(
    channel: &Channel,
    queue: &str,
    ids: &BTreeSet<String>,
    grace: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + WAIT;
    let mut taken: Vec<Message> = Vec::new();
    let mut covered_at: Option<Instant> = None;
    loop {
        match take(channel, queue).await {
            Some(message) => taken.push(message),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        let seen: BTreeSet<String> = taken.iter().map(message_id).collect();
        if covered_at.is_none() && ids.is_subset(&seen) {
            covered_at = Some(Instant::now());
        }
        if covered_at.is_some_and(|at| at.elapsed() >= grace) {
            return taken;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: after {WAIT:?}, still missing {:?}",
            ids.difference(&seen).collect::<Vec<_>>()
        );
    }
}

/// Takes the embassy's requests `ids` from its queue, and for a second more any repeat, and
/// checks each; returns how many were repeats.
async fn take_requests(inbox: &Channel, ids: &BTreeSet<String>) -> usize {
    let got = take_until(inbox, &outbound_queue(EMBASSY), ids, Duration::from_secs(1)).await;
    for message in &got {
        check_demande(message);
    }
    got.len() - ids.len()
}

/// Takes the dead letters until their `message_id`s cover `ids`, and a little longer for any
/// repeat.
async fn take_dead_letters(channel: &Channel, ids: &BTreeSet<String>) -> Vec<Message> {
    take_until(channel, DEAD_LETTER_QUEUE, ids, Duration::from_millis(300)).await
}

fn message_id(message: &Message) -> String {
    message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

/// The text value of a message header.
fn header(message: &Message, name: &str) -> Option<String> {
    match message.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A queue as the broker has it, looked up on a channel of its own.
async fn look_up_queue_alone(
    connection: &Connection,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    look_up_queue(&connection.create_channel().await?, queue).await
}

/// The number of messages ready in a queue (not counting those a consumer holds).
async fn ready(channel: &Channel, queue: &str) -> u32 {
    look_up_queue(channel, queue)
        .await
        .unwrap_or_else(|error| panic!("passive declaration of {queue}: {error}"))
        .message_count()
}

// ----------------------------------------------------------------------------------- gateway

/// A gateway with its data folder.
struct TestGateway {
    running: RunningGateway,
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway on `vhost` with audit origin `origin` and waits until its AMQP transport
    /// is ready. The DGSN and the airline receive by inbox (no webhook receivers here).
    async fn start(
        broker: &Broker,
        vhost: &str,
        origin: &str,
        tune: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("a temporary folder");
        TestGateway::start_in(broker, vhost, origin, dir, tune).await
    }

    /// Starts a gateway as [`TestGateway::start`] does, in folder `dir` (which may hold the data
    /// of an earlier gateway).
    async fn start_in(
        broker: &Broker,
        vhost: &str,
        origin: &str,
        dir: tempfile::TempDir,
        tune: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let changes = RegistryChanges::new().inbox("ma.dgsn").inbox("airline.at");
        let registry = write_registry(dir.path(), &changes);
        let mut config = test_config(&dir.path().join("data"), &registry);
        config.audit.origin = origin.to_owned();
        config.amqp = Some(gateway_settings(broker, vhost));
        tune(&mut config);
        let running = RunningGateway::start(&config)
            .await
            .expect("the gateway starts");
        let gateway = TestGateway { running, dir };
        gateway.wait_ready(true).await;
        gateway
    }

    fn admin(&self) -> Admin {
        Admin::new(self.running.admin_addr)
    }

    /// The AMQP readiness flag as `/ready` reports it.
    async fn amqp_ready(&self) -> Option<bool> {
        let reply = self.admin().try_get("/ready").await.ok()?;
        reply.json()["checks"]["amqp"].as_bool()
    }

    async fn wait_ready(&self, ready: bool) {
        wait_for(&format!("amqp ready = {ready}"), WAIT, async || {
            (self.amqp_ready().await == Some(ready)).then_some(())
        })
        .await;
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let reply = self.admin().get("/metrics").await;
        metric(&reply.text(), name, labels)
    }

    /// POSTs a structured-mode CloudEvent as the ministry; expects `202`.
    async fn post_as_ministry(&self, event: &Value) {
        let reply = Client::new("ma.interieur", self.running.addr)
            .send(
                "application/cloudevents+json",
                serde_json::to_vec(event).expect("JSON"),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }

    /// The embassy sends `count` laissez-passer (references `ABJ-RBT-<tag>-0000`, …) to a
    /// gateway whose outbox takes two: returns once two are accepted, with the embassy's
    /// connection, its publishing channel and the references.
    async fn fill_the_outbox(
        &self,
        broker: &Broker,
        vhost: &str,
        tag: &str,
        count: usize,
    ) -> (Connection, Channel, Vec<String>) {
        let embassy = partner_connection(broker, vhost, EMBASSY).await;
        let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
        let references: Vec<String> = (0..count)
            .map(|i| format!("ABJ-RBT-{tag}-{i:04}"))
            .collect();
        send_lpcs(&channel, &references).await;
        wait_for("two acceptances", WAIT, async || {
            (references.iter().filter(|r| self.accepted(r)).count() >= 2).then_some(())
        })
        .await;
        (embassy, channel, references)
    }

    /// The recipients of the laissez-passer take and acknowledge their messages, again and
    /// again, until every one of `references` is accepted.
    async fn drain_inboxes_until_taken(&self, references: &[String]) {
        wait_for("every message taken", WAIT, async || {
            for partner in ["ma.interieur", "iom.ma", "ma.dgsn"] {
                let client = Client::new(partner, self.running.addr);
                for message in client.inbox(100).await {
                    client.ack(message["id"].as_u64().expect("an id")).await;
                }
            }
            references.iter().all(|r| self.accepted(r)).then_some(())
        })
        .await;
    }

    /// Whether this gateway accepted the embassy's message with reference `reference`.
    fn accepted(&self, reference: &str) -> bool {
        self.running
            .gateway
            .store
            .accepted(EMBASSY_SOURCE, reference)
            .expect("the store")
            .is_some()
    }

    /// Every delivery in the store.
    fn deliveries(&self) -> Vec<Delivery> {
        let store = &self.running.gateway.store;
        (1..)
            .map_while(|id| store.delivery(id).expect("the store"))
            .collect()
    }

    /// The delivery of `event_id` to `recipient`.
    fn delivery(&self, recipient: &str, event_id: &str) -> Delivery {
        self.deliveries()
            .into_iter()
            .find(|d| d.recipient == recipient && d.event_id == event_id)
            .unwrap_or_else(|| panic!("no delivery of {event_id} to {recipient}"))
    }

    /// The audit entries of a query, once those the latest checkpoint covers satisfy `done`.
    async fn audit(
        &self,
        query: Query,
        done: impl Fn(&[passerelle::audit::Leaf]) -> bool,
    ) -> Vec<passerelle::audit::Leaf> {
        wait_for(&format!("audit entries for {query:?}"), WAIT, async || {
            let found = self.running.gateway.log.search(&query).expect("search");
            let leaves: Vec<_> = found.into_iter().map(|f| f.leaf).collect();
            done(&leaves).then_some(leaves)
        })
        .await
    }

    async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await.expect("a clean shutdown");
        self.dir
    }

    /// Stops the gateway, whether or not it can flush what it holds; returns its folder, and
    /// how the stop went.
    async fn stop_anyhow(self) -> (tempfile::TempDir, anyhow::Result<()>) {
        let stopped = self.running.shutdown().await;
        (self.dir, stopped)
    }
}

// ---------------------------------------------------------------------------------- messages

/// The embassy's LaissezPasser DELIVRE with its own reference.
fn lpc_issued(reference: &str) -> Vec<u8> {
    fixture_text(EMBASSY, "in/lpc-issued.xml")
        .replace("ABJ-RBT-2026-0902", reference)
        .into_bytes()
}

/// The ministry's LPC request for the Ivorian trafficking victim of the fixtures (so routed to
/// the embassy, without her vulnerabilities and medical data), with event id `id`.
fn lpc_request(id: &str) -> Value {
    let mut event = fixture_json(EMBASSY, "out/lpc-requested-vulnerable.event.json");
    let object = event.as_object_mut().expect("an event");
    object.remove("mappingid");
    object.remove("mappinghash");
    event["id"] = json!(id);
    event["source"] = json!("urn:partner:ma.interieur");
    event["data"]["requested_by"] = json!("ma.interieur");
    event
}

/// What the embassy must receive for [`lpc_request`]`(id)`: its `<ci:Demande>`.
fn demande(id: &str) -> String {
    fixture_text(EMBASSY, "out/lpc-requested-vulnerable.expected.xml")
        .replace("IOM-MA-2026-11-02-19aa01", id)
}

/// A canonical event without the anomalies the gateway may add to its data.
fn without_anomalies(mut event: Value) -> Value {
    if let Some(data) = event["data"].as_object_mut() {
        data.remove("anomalies");
    }
    if let Some(data) = event.as_object_mut() {
        data.remove("anomalies");
    }
    event
}

/// Checks one delivery on the embassy's queue.
fn check_demande(message: &Message) {
    let id = message_id(message);
    assert_eq!(
        String::from_utf8_lossy(&message.data),
        demande(&id),
        "the embassy's Demande for {id}"
    );
    let text = String::from_utf8_lossy(&message.data).to_lowercase();
    assert!(!text.contains("trafficking") && !text.contains("vulnerab"));
    assert_eq!(
        message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/xml")
    );
    assert_eq!(message.properties.delivery_mode(), &Some(2));
    assert_eq!(
        header(message, "cloudEvents_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        header(message, "cloudEvents_type").as_deref(),
        Some("ma.rva.lpc.requested")
    );
    assert_eq!(
        header(message, "cloudEvents_source").as_deref(),
        Some("urn:partner:ma.interieur")
    );
    assert_eq!(
        header(message, "cloudEvents_specversion").as_deref(),
        Some("1.0")
    );
}

// ------------------------------------------------------------------------------------- tests

/// (a) The Côte d'Ivoire flow: the embassy publishes its XML with its certificate; the ministry
/// finds the canonical events in its inbox; the ministry's LPC request reaches the embassy's
/// queue in its dialect; a message published twice is processed once; the airline's AMQP feed
/// reaches IOM Senegal as a structured-mode CloudEvent, as its registry entry asks.
#[actix_web::test]
async fn the_cote_divoire_flow_end_to_end() {
    let broker = broker().await;
    let gateway = TestGateway::start(broker, "flow", gateway_support::ORIGIN, |_| {}).await;

    // The embassy publishes an identification and a laissez-passer.
    let embassy = partner_connection(broker, "flow", EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let identification = fixture(EMBASSY, "in/identification.xml");
    let issued = fixture(EMBASSY, "in/lpc-issued.xml");
    send(
        &channel,
        EMBASSY,
        "ABJ-RBT-2026-0871",
        "application/xml",
        &identification,
    )
    .await;
    send(
        &channel,
        EMBASSY,
        "ABJ-RBT-2026-0902",
        "application/xml; charset=UTF-8",
        &issued,
    )
    .await;

    // The ministry finds both canonical events in its inbox.
    let ministry = Client::new("ma.interieur", gateway.running.addr);
    let inbox = wait_for("the ministry's inbox", WAIT, async || {
        let messages = ministry.inbox(100).await;
        (messages.len() >= 2).then_some(messages)
    })
    .await;
    let by_id: BTreeMap<String, Value> = inbox
        .iter()
        .map(|m| (m["event_id"].as_str().unwrap().to_owned(), m.clone()))
        .collect();
    assert_eq!(by_id.len(), 2, "{inbox:?}");
    for (id, name) in [
        ("ABJ-RBT-2026-0871", "identification"),
        ("ABJ-RBT-2026-0902", "lpc-issued"),
    ] {
        let message = &by_id[id];
        assert_eq!(message["source"], EMBASSY_SOURCE);
        let event: Value =
            serde_json::from_str(message["body"].as_str().unwrap()).expect("a canonical event");
        assert_eq!(
            without_anomalies(event),
            fixture_json(EMBASSY, &format!("in/{name}.expected.json")),
            "the canonical event of {id}"
        );
    }
    // Audited as received over AMQP, from the embassy.
    let accepted: Vec<_> = gateway
        .audit(
            Query::PartnerRef(EMBASSY.into(), "ABJ-RBT-2026-0902".into()),
            |leaves| leaves.iter().any(|leaf| leaf.kind == Kind::Accepted),
        )
        .await
        .into_iter()
        .filter(|leaf| leaf.kind == Kind::Accepted)
        .collect();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].transport, Some(Transport::Amqp));
    assert_eq!(accepted[0].sender.as_deref(), Some(EMBASSY));

    // The embassy gets no receipt over AMQP; with the same certificate it reads its signed
    // receipt and the inclusion proof over HTTPS, and checks them offline.
    let found = gateway
        .running
        .gateway
        .log
        .search(&Query::PartnerRef(
            EMBASSY.into(),
            "ABJ-RBT-2026-0902".into(),
        ))
        .expect("search")
        .into_iter()
        .find(|f| f.leaf.kind == Kind::Accepted)
        .expect("the accepted entry, covered by a checkpoint");
    let embassy_rest = Client::new(EMBASSY, gateway.running.addr);
    let receipt = wait_for("the embassy's receipt with its proof", WAIT, async || {
        let reply = embassy_rest.get("/v1/receipts/ABJ-RBT-2026-0902").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        (!body["proof"].is_null()).then_some(body)
    })
    .await;
    assert_eq!(receipt["source"], EMBASSY_SOURCE);
    assert_eq!(receipt["log_index"], found.index);
    let verifier = gateway.running.gateway.log.verifier().clone();
    let signed = Receipt::verify(receipt["receipt"].as_str().unwrap(), &verifier)
        .expect("the signed receipt verifies");
    assert_eq!(signed.index, found.index);
    let proof = TlogProof::parse(receipt["proof"].as_str().unwrap()).expect("a tlog-proof");
    proof
        .verify(&found.entry, &verifier, Some(gateway_support::ORIGIN))
        .expect("the proof verifies offline");

    // The same message again (a partner's retry, or a redelivery): acknowledged, processed once.
    send(
        &channel,
        EMBASSY,
        "ABJ-RBT-2026-0902",
        "application/xml",
        &issued,
    )
    .await;
    let duplicate = [
        ("partner", EMBASSY),
        ("transport", "amqp"),
        ("outcome", "duplicate"),
    ];
    wait_for("the duplicate", WAIT, async || {
        (gateway
            .metric("passerelle_messages_total", &duplicate)
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    let accepted = [
        ("partner", EMBASSY),
        ("transport", "amqp"),
        ("outcome", "accepted"),
    ];
    assert_eq!(
        gateway.metric("passerelle_messages_total", &accepted).await,
        2.0
    );
    assert!(
        ministry.inbox(100).await.len() == 2,
        "the duplicate made no new delivery"
    );

    // The ministry asks the embassy for a laissez-passer; the embassy's queue gets its Demande.
    gateway
        .post_as_ministry(&lpc_request("MI-DMF-2026-000952"))
        .await;
    let embassy_in = embassy.create_channel().await.expect("a channel");
    let ids = BTreeSet::from(["MI-DMF-2026-000952".to_owned()]);
    let got = take_until(
        &embassy_in,
        &outbound_queue(EMBASSY),
        &ids,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(got.len(), 1);
    check_demande(&got[0]);
    let delivery = gateway.delivery(EMBASSY, "MI-DMF-2026-000952");
    assert_eq!(delivery.channel, StoreChannel::Amqp);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(
        delivery.withheld,
        ["data.*.biometrics", "data.medical", "data.vulnerabilities"]
    );
    let is_delivery = |leaf: &passerelle::audit::Leaf| {
        leaf.kind == Kind::Delivered && leaf.event_id.as_deref() == Some("MI-DMF-2026-000952")
    };
    let delivered: Vec<_> = gateway
        .audit(Query::Case("RVA-2026-004305".into()), |leaves| {
            leaves.iter().any(is_delivery)
        })
        .await
        .into_iter()
        .filter(is_delivery)
        .collect();
    assert_eq!(delivered.len(), 1, "one delivered entry");
    assert_eq!(delivered[0].recipients, [EMBASSY]);
    assert_eq!(delivered[0].transport, Some(Transport::Amqp));

    // The airline's departure control publishes a boarding over AMQP (irregular operations):
    // IOM Senegal gets the canonical event.
    let airline = partner_connection(broker, "flow", "airline.at").await;
    let airline_channel = amqp::publisher_channel(&airline).await.expect("a channel");
    send(
        &airline_channel,
        "airline.at",
        "AT-DCS-20261120-0505-000112",
        "application/json",
        &fixture("airline.at", "in/passenger-boarded.json"),
    )
    .await;
    let iom = partner_connection(broker, "flow", "iom.sn").await;
    let iom_channel = iom.create_channel().await.expect("a channel");
    let ids = BTreeSet::from(["AT-DCS-20261120-0505-000112".to_owned()]);
    let got = take_until(
        &iom_channel,
        &outbound_queue("iom.sn"),
        &ids,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(got.len(), 1);
    let message = &got[0];
    // IOM Senegal's registry entry asks for structured mode: the whole event is the body.
    let expected = fixture_json("iom.sn", "out/boarding-confirmed.expected.json");
    let event: Value = serde_json::from_slice(&message.data).expect("the whole event as the body");
    assert_eq!(without_anomalies(event), expected);
    assert_eq!(
        message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        message.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("AT-DCS-20261120-0505-000112")
    );
    for attribute in ["specversion", "id", "source", "type"] {
        assert_eq!(
            header(message, &format!("cloudEvents_{attribute}")),
            expected[attribute].as_str().map(str::to_owned),
            "cloudEvents_{attribute}"
        );
    }
    assert_eq!(
        gateway
            .metric(
                "passerelle_deliveries_total",
                &[("channel", "amqp"), ("outcome", "delivered")]
            )
            .await,
        2.0
    );

    gateway.stop().await;
    // Every message was acknowledged: none went back to its queue when the gateway left.
    for partner in [EMBASSY, "airline.at"] {
        assert_eq!(
            ready(&embassy_in, &inbound_queue(partner)).await,
            0,
            "{partner}"
        );
    }
    for connection in [embassy, airline, iom] {
        connection.close(200, "OK".into()).await.expect("close");
    }
}

/// A message of a case erased (`passerelle audit erase`) is refused for good, and its dead
/// letter keeps nothing of it: the gateway keeps an erased case's personal data nowhere, the
/// broker's dead-letter queue included.
#[actix_web::test]
async fn a_message_of_an_erased_case_is_dead_lettered_without_its_contents() {
    const VHOST: &str = "erased";
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |_| {}).await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let first = "ABJ-RBT-ER-0001".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&first)).await;
    wait_for("the first acceptance", WAIT, async || {
        gateway.accepted(&first).then_some(())
    })
    .await;
    let dir = gateway.stop().await;
    let data = dir.path().join("data");
    gateway_support::erase_case(&data, "RVA-2026-004305");

    // A later message of the case, with a header of its own, is refused for good: its dead
    // letter says why, and carries neither the message nor the sender's headers.
    let gateway = TestGateway::start_in(broker, VHOST, gateway_support::ORIGIN, dir, |_| {}).await;
    let late = "ABJ-RBT-ER-0002";
    let properties =
        native(EMBASSY, late, "application/xml").with_headers(FieldTable::from(BTreeMap::from([
            ("x-trace".into(), AMQPValue::LongString("t-9".into())),
        ])));
    assert_eq!(
        publish(&channel, EMBASSY, &lpc_issued(late), properties).await,
        Confirmation::Ack(None)
    );
    let admin = admin_connection(broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    // The virtual host is this test's own: its one dead letter is this message's.
    let dead = wait_for("the dead letter", WAIT, async || {
        take(&admin_channel, DEAD_LETTER_QUEUE).await
    })
    .await;
    assert!(dead.data.is_empty(), "the dead letter kept the message");
    assert_eq!(message_id(&dead), "", "the dead letter kept the message id");
    assert_eq!(
        header(&dead, "x-passerelle-reason").as_deref(),
        Some("unprocessable")
    );
    assert!(
        header(&dead, "x-passerelle-detail").is_some_and(|d| d.contains("erased")),
        "{:?}",
        header(&dead, "x-passerelle-detail")
    );
    assert_eq!(
        header(&dead, "x-trace"),
        None,
        "the sender's headers were kept"
    );
    assert!(!gateway.accepted(late));
    assert!(
        take(&admin_channel, DEAD_LETTER_QUEUE).await.is_none(),
        "a second dead letter"
    );
    gateway.stop().await;
}

/// (b) Refused messages are dead-lettered with their reason, and audited; failed publishes
/// (a nack from a full queue, a return for want of a queue) are retried, never counted
/// delivered, and delivered once the queue takes them.
#[actix_web::test]
async fn refusals_are_dead_lettered_and_failed_publishes_retried() {
    const VHOST: &str = "refusals";
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |config| {
        config.delivery.max_attempts = 1_000;
    })
    .await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");

    // Bad XML; a well-formed message of no known kind; no user_id.
    let bad_xml =
        b"<ci:LaissezPasser xmlns:ci=\"urn:ci:diplomatie:consulaire:2\" ref=\"X\"><ci:Dossier"
            .to_vec();
    send(&channel, EMBASSY, "bad-xml", "application/xml", &bad_xml).await;
    let unknown = fixture(EMBASSY, "in/error-wrong-namespace.xml");
    send(
        &channel,
        EMBASSY,
        "unknown-kind",
        "application/xml",
        &unknown,
    )
    .await;
    let anonymous = BasicProperties::default()
        .with_message_id("no-user-id".into())
        .with_content_type("application/xml".into());
    let issued = lpc_issued("ABJ-RBT-2026-7001");
    assert_eq!(
        publish(&channel, EMBASSY, &issued, anonymous).await,
        Confirmation::Ack(None)
    );
    // IOM Senegal may write to the inbound exchange, and the broker checks that user_id is its
    // own; but it routes into the embassy's queue: the gateway refuses to take it as the
    // embassy's.
    let iom = partner_connection(broker, VHOST, "iom.sn").await;
    let iom_channel = amqp::publisher_channel(&iom).await.expect("a channel");
    let forged = native("iom.sn", "not-the-embassy", "application/xml").with_headers(
        FieldTable::from(BTreeMap::from([(
            "x-passerelle-reason".into(),
            AMQPValue::LongString("forged".into()),
        )])),
    );
    assert_eq!(
        publish(
            &iom_channel,
            EMBASSY,
            &lpc_issued("ABJ-RBT-2026-7002"),
            forged
        )
        .await,
        Confirmation::Ack(None)
    );

    // The dead letters, with their reasons.
    let admin = admin_connection(broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    let expected = BTreeMap::from([
        (
            "bad-xml",
            ("malformed", bad_xml.clone(), Some(partner_user(EMBASSY))),
        ),
        (
            "unknown-kind",
            (
                "unprocessable",
                unknown.clone(),
                Some(partner_user(EMBASSY)),
            ),
        ),
        ("no-user-id", ("missing-user-id", issued.clone(), None)),
        (
            "not-the-embassy",
            (
                "user-id-mismatch",
                lpc_issued("ABJ-RBT-2026-7002"),
                Some(partner_user("iom.sn")),
            ),
        ),
    ]);
    let ids: BTreeSet<String> = expected.keys().map(|id| (*id).to_owned()).collect();
    let dead = take_dead_letters(&admin_channel, &ids).await;
    assert_eq!(
        dead.len(),
        4,
        "{:?}",
        dead.iter().map(message_id).collect::<Vec<_>>()
    );
    for message in &dead {
        let id = message_id(message);
        let (reason, body, user) = &expected[id.as_str()];
        assert_eq!(&message.data, body, "{id}: the original bytes");
        assert_eq!(
            header(message, "x-passerelle-reason").as_deref(),
            Some(*reason),
            "{id}"
        );
        assert!(
            header(message, "x-passerelle-detail").is_some_and(|d| !d.is_empty()),
            "{id}"
        );
        assert_eq!(
            header(message, "x-passerelle-partner").as_deref(),
            Some(EMBASSY)
        );
        assert_eq!(
            header(message, "x-passerelle-queue"),
            Some(inbound_queue(EMBASSY))
        );
        assert_eq!(
            header(message, "x-passerelle-user-id"),
            user.clone(),
            "{id}"
        );
        assert_eq!(
            header(message, "x-passerelle-instance").as_deref(),
            Some(gateway_support::ORIGIN)
        );
        assert_eq!(message.routing_key.as_str(), EMBASSY);
        assert_eq!(message.properties.user_id(), &None);
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/xml")
        );
    }
    // Every refusal is in the audit log, and nothing stayed in the queue.
    let rejected: BTreeSet<String> = gateway
        .audit(Query::Case(format!("refused/{EMBASSY}")), |leaves| {
            leaves
                .iter()
                .filter(|leaf| leaf.kind == Kind::Rejected)
                .count()
                >= 4
        })
        .await
        .into_iter()
        .filter(|leaf| leaf.kind == Kind::Rejected)
        .filter_map(|leaf| leaf.reason)
        .collect();
    assert_eq!(
        rejected,
        BTreeSet::from(
            [
                "malformed",
                "unprocessable",
                "missing-user-id",
                "user-id-mismatch"
            ]
            .map(str::to_owned)
        )
    );
    assert!(!gateway.accepted("ABJ-RBT-2026-7001") && !gateway.accepted("ABJ-RBT-2026-7002"));

    // A full outbound queue (one message, and a policy of one at most): the broker nacks; the
    // delivery is retried, not counted delivered.
    let out = outbound_queue(EMBASSY);
    let pattern = format!("^{}$", regex::escape(&out));
    blocking(move || {
        broker.rabbitmqctl(&[
            "set_policy",
            "-p",
            VHOST,
            "--apply-to",
            "queues",
            "full",
            &pattern,
            r#"{"max-length": 1}"#,
        ])
    })
    .await;
    let queue = out.clone();
    wait_for("the policy to apply", WAIT, async || {
        let queue = queue.clone();
        let policy = blocking(move || {
            let output = broker.rabbitmqctl(&[
                "list_queues",
                "-p",
                VHOST,
                "name",
                "policy",
                "--formatter",
                "json",
            ]);
            let queues: Vec<Value> = serde_json::from_str(&output).expect("JSON");
            queues
                .iter()
                .find(|q| q["name"] == queue.as_str())
                .map(|q| q["policy"].clone())
        })
        .await;
        (policy == Some(json!("full"))).then_some(())
    })
    .await;
    // Quorum queues check the limit asynchronously: fill the queue until the broker refuses.
    let filling = amqp::publisher_channel(&admin).await.expect("a channel");
    let mut fillers = BTreeSet::new();
    for i in 0..10 {
        let id = format!("filler-{i}");
        let confirmation = filling
            .basic_publish(
                passerelle::amqp::OUTBOUND_EXCHANGE.into(),
                EMBASSY.into(),
                BasicPublishOptions::default(),
                b"filler",
                BasicProperties::default().with_message_id(id.as_str().into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if confirmation.is_nack() {
            break;
        }
        fillers.insert(id);
    }
    assert!(fillers.len() < 10, "the queue never refused a message");
    let retries = |recipient: &'static str| {
        [
            ("recipient", recipient),
            ("channel", "amqp"),
            ("outcome", "retry"),
        ]
    };
    let delivered = [
        ("recipient", EMBASSY),
        ("channel", "amqp"),
        ("outcome", "delivered"),
    ];
    // The policy applies asynchronously: wait until a publish is refused.
    gateway
        .post_as_ministry(&lpc_request("MI-DMF-2026-800001"))
        .await;
    wait_for("nacked attempts", WAIT, async || {
        (gateway
            .metric("passerelle_deliveries_total", &retries(EMBASSY))
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    let failed = gateway.delivery(EMBASSY, "MI-DMF-2026-800001");
    assert_eq!(failed.state, DeliveryState::Pending);
    assert_eq!(failed.last_error.as_deref(), Some("amqp.nack"));
    assert!(failed.attempts >= 2);
    assert_eq!(
        gateway
            .metric("passerelle_deliveries_total", &delivered)
            .await,
        0.0
    );
    let embassy_in = embassy.create_channel().await.expect("a channel");
    assert_eq!(
        ready(&admin_channel, &out).await as usize,
        fillers.len(),
        "only the fillers are in the queue"
    );
    blocking(move || broker.rabbitmqctl(&["clear_policy", "-p", VHOST, "full"])).await;
    let mut ids = fillers.clone();
    ids.insert("MI-DMF-2026-800001".to_owned());
    let got = take_until(&embassy_in, &out, &ids, Duration::from_millis(500)).await;
    assert_eq!(got.len(), fillers.len() + 1, "delivered once");
    check_demande(got.last().expect("the request"));
    wait_for("the delivered record", WAIT, async || {
        (gateway.delivery(EMBASSY, "MI-DMF-2026-800001").state == DeliveryState::Delivered)
            .then_some(())
    })
    .await;
    assert_eq!(
        gateway
            .metric("passerelle_deliveries_total", &delivered)
            .await,
        1.0
    );
    let trail: Vec<_> = gateway
        .audit(Query::Case("RVA-2026-004305".into()), |leaves| {
            leaves.iter().any(|leaf| {
                leaf.kind == Kind::Delivered
                    && leaf.event_id.as_deref() == Some("MI-DMF-2026-800001")
            })
        })
        .await
        .into_iter()
        .filter(|leaf| leaf.event_id.as_deref() == Some("MI-DMF-2026-800001"))
        .collect();
    let failures = trail
        .iter()
        .filter(|l| l.kind == Kind::DeliveryFailed && l.reason.as_deref() == Some("amqp.nack"))
        .count();
    assert!(failures >= 2, "{trail:?}");
    assert_eq!(
        trail.iter().filter(|l| l.kind == Kind::Delivered).count(),
        1,
        "{trail:?}"
    );

    // No queue at all (deleted while the gateway stays connected): the message comes back
    // (mandatory, NO_ROUTE), the attempt is recorded as failed, and the gateway declares its
    // queues again itself; the next attempt reaches the embassy, once.
    admin_channel
        .queue_delete(out.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the embassy's queue");
    gateway
        .post_as_ministry(&lpc_request("MI-DMF-2026-800002"))
        .await;
    wait_for("the queue declared again", WAIT, async || {
        let found = look_up_queue_alone(&admin, &out).await.is_ok();
        found.then_some(())
    })
    .await;
    let ids = BTreeSet::from(["MI-DMF-2026-800002".to_owned()]);
    let got = take_until(&embassy_in, &out, &ids, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "delivered once");
    let trail: Vec<passerelle::audit::Leaf> = gateway
        .audit(Query::Case("RVA-2026-004305".into()), |leaves| {
            leaves.iter().any(|l| {
                l.kind == Kind::Delivered && l.event_id.as_deref() == Some("MI-DMF-2026-800002")
            })
        })
        .await
        .into_iter()
        .filter(|leaf| leaf.event_id.as_deref() == Some("MI-DMF-2026-800002"))
        .collect();
    assert!(
        trail.iter().any(|l| l.kind == Kind::DeliveryFailed
            && l.reason.as_deref() == Some("amqp.no-route")),
        "{trail:?}"
    );
    check_demande(&got[0]);

    gateway.stop().await;
    // The refused messages were all settled: none went back to the queue.
    assert_eq!(ready(&admin_channel, &inbound_queue(EMBASSY)).await, 0);
    for connection in [embassy, iom, admin] {
        connection.close(200, "OK".into()).await.expect("close");
    }
}

/// One partner's queues that the broker refuses, its inbound queue that the gateway may no
/// longer read (a permission taken away) and its outbound queue declared by hand with other
/// arguments, stop neither the transport nor the other partners: the embassy's messages are
/// accepted, and none is dead-lettered. Once mended by hand, both are taken up again while the
/// connection stays.
#[actix_web::test]
async fn one_partners_refused_queues_hold_back_no_other() {
    const VHOST: &str = "isolation";
    let broker = broker().await;
    let admin = admin_connection(broker, VHOST).await;
    let channel = admin.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            outbound_queue("iom.sn").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a classic queue declared by hand");
    let gateway_reads = move |queues: &'static str| {
        blocking(move || {
            broker.rabbitmqctl(&[
                "set_permissions",
                "-p",
                VHOST,
                "--",
                GATEWAY_USER,
                ".*",
                ".*",
                queues,
            ])
        })
    };
    gateway_reads("^(?!passerelle\\.in\\.iom\\.sn$).*").await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |_| {}).await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let publishing = amqp::publisher_channel(&embassy).await.expect("a channel");
    let references: Vec<String> = (0..5).map(|i| format!("ABJ-RBT-ISO-{i:04}")).collect();
    send_lpcs(&publishing, &references).await;
    wait_for("every message accepted", WAIT, async || {
        references.iter().all(|r| gateway.accepted(r)).then_some(())
    })
    .await;
    assert_eq!(
        ready(&channel, DEAD_LETTER_QUEUE).await,
        0,
        "none dead-lettered"
    );
    assert_eq!(gateway.metric("passerelle_amqp_connected", &[]).await, 1.0);
    assert_eq!(
        gateway.metric("passerelle_amqp_refused_queues", &[]).await,
        1.0
    );
    assert_eq!(
        gateway
            .metric("passerelle_amqp_refused_declarations", &[])
            .await,
        1.0
    );

    // Mended by hand, both are taken up within a few seconds, with no reconnection: the queue
    // declared by hand is deleted (and declared again by the gateway), the permission given back
    // (and the queue read).
    channel
        .queue_delete(
            outbound_queue("iom.sn").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("the queue declared by hand deleted");
    gateway_reads(".*").await;
    wait_for("both refusals mended", WAIT, async || {
        let declarations = gateway
            .metric("passerelle_amqp_refused_declarations", &[])
            .await;
        let queues = gateway.metric("passerelle_amqp_refused_queues", &[]).await;
        (declarations == 0.0 && queues == 0.0).then_some(())
    })
    .await;
    let declared_again = look_up_queue_alone(&admin, &outbound_queue("iom.sn")).await;
    assert!(
        declared_again.is_ok(),
        "the deleted queue was not declared again: {declared_again:?}"
    );
    let read = look_up_queue_alone(&admin, &inbound_queue("iom.sn"))
        .await
        .expect("the inbound queue");
    assert_eq!(
        read.consumer_count(),
        1,
        "the gateway reads the queue again"
    );
    assert_eq!(
        gateway.metric("passerelle_amqp_sessions_total", &[]).await,
        1.0,
        "mended with no reconnection"
    );
    embassy.close(200, "OK".into()).await.expect("close");
    gateway.stop().await;
}

/// `passerelle.inbound` deleted by hand while the gateway stays connected is declared again
/// within a few seconds (partners' publishes are refused meanwhile), and the embassy's next
/// message goes through; so is the embassy's inbound queue deleted while consumed, which the
/// gateway consumes again within the same session.
#[actix_web::test]
async fn a_shared_exchange_or_queue_deleted_by_hand_is_declared_again() {
    const VHOST: &str = "redeclare";
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |_| {}).await;
    let admin = admin_connection(broker, VHOST).await;
    admin
        .create_channel()
        .await
        .expect("a channel")
        .exchange_delete(
            INBOUND_EXCHANGE.into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .expect("the exchange deleted");
    wait_for("the exchange declared again", WAIT, async || {
        // A passive declaration of a missing exchange closes its channel: a new one each time.
        let channel = admin.create_channel().await.ok()?;
        channel
            .exchange_declare(
                INBOUND_EXCHANGE.into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
    })
    .await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let publishing = amqp::publisher_channel(&embassy).await.expect("a channel");
    let references = vec!["ABJ-RBT-RDC-0001".to_owned()];
    send_lpcs(&publishing, &references).await;
    wait_for("the message accepted", WAIT, async || {
        gateway.accepted(&references[0]).then_some(())
    })
    .await;

    // The embassy's inbound queue deleted while consumed: the broker cancels the consumer, and
    // the queue is declared and consumed again, with no reconnection.
    admin
        .create_channel()
        .await
        .expect("a channel")
        .queue_delete(
            inbound_queue(EMBASSY).as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("the inbound queue deleted");
    // At once: the topology is declared when the consumer is cancelled, and the queue consumed
    // again a second later.
    wait_for(
        "the inbound queue consumed again",
        Duration::from_secs(5),
        async || {
            let queue = look_up_queue_alone(&admin, &inbound_queue(EMBASSY))
                .await
                .ok()?;
            (queue.consumer_count() == 1).then_some(())
        },
    )
    .await;
    let references = vec!["ABJ-RBT-RDC-0002".to_owned()];
    send_lpcs(&publishing, &references).await;
    wait_for("the next message accepted", WAIT, async || {
        gateway.accepted(&references[0]).then_some(())
    })
    .await;
    assert_eq!(
        gateway.metric("passerelle_amqp_sessions_total", &[]).await,
        1.0,
        "the session went on"
    );
    assert_eq!(
        gateway.metric("passerelle_amqp_refused_queues", &[]).await,
        0.0
    );
    embassy.close(200, "OK".into()).await.expect("close");
    gateway.stop().await;
}

/// (e) Backpressure: with the outbox over its bound, the gateway stops taking messages, which
/// wait in their queue; once the deliveries are acknowledged, it takes them all.
#[actix_web::test]
async fn a_full_outbox_pauses_consumption() {
    const VHOST: &str = "backpressure";
    const COUNT: usize = 6;
    let broker = broker().await;
    // Each laissez-passer makes three inbox deliveries (ministry, IOM Morocco, DGSN).
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |config| {
        if let Some(amqp) = config.amqp.as_mut() {
            amqp.max_outbox = 6;
            amqp.prefetch = 1;
        }
    })
    .await;
    // Two messages fill the outbox; the rest wait.
    let (embassy, channel, references) = gateway.fill_the_outbox(broker, VHOST, "BP", COUNT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let taken_count = || references.iter().filter(|r| gateway.accepted(r)).count();
    let taken = taken_count();
    assert!(
        taken < COUNT,
        "the gateway kept consuming with a full outbox"
    );
    // Paused, not slow: nothing more is taken while the outbox stays full.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        taken_count(),
        taken,
        "the gateway took more messages with a full outbox"
    );
    assert!(gateway.running.gateway.store.pending_deliveries() >= 6);
    // The others wait in the queue (the consumer holds one, unprocessed).
    let waiting = ready(&channel, &inbound_queue(EMBASSY)).await as usize;
    assert!(
        (COUNT - taken - 1..=COUNT - taken).contains(&waiting),
        "{waiting} messages waiting, {taken} taken"
    );

    // The recipients take and acknowledge their messages: the outbox drains, consumption resumes.
    gateway.drain_inboxes_until_taken(&references).await;
    embassy.close(200, "OK".into()).await.expect("close");
    gateway.stop().await;
}

/// A pause that lasts: once intake has been paused for `held_return_secs`, the consumer is
/// cancelled and the message it held goes back to the queue (none waits in the gateway's hands
/// for the broker's `consumer_timeout`, and none is dead-lettered); once the outbox drains, the
/// queue is consumed again and every message is taken, once.
#[actix_web::test]
async fn a_long_pause_gives_the_held_messages_back_to_their_queue() {
    const VHOST: &str = "giveback";
    // Enough that some are left however late the outbox's depth catches up with acceptances
    // on a busy machine (the gate is a bound, not a count).
    const COUNT: usize = 10;
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |config| {
        if let Some(amqp) = config.amqp.as_mut() {
            amqp.max_outbox = 6;
            amqp.prefetch = 2;
            amqp.held_return_secs = 2;
        }
    })
    .await;
    let (embassy, channel, references) = gateway.fill_the_outbox(broker, VHOST, "GB", COUNT).await;
    // Every message not taken goes back to the queue: the consumer holds none.
    let queue = inbound_queue(EMBASSY);
    let taken = wait_for("the held messages given back", WAIT, async || {
        let taken = references.iter().filter(|r| gateway.accepted(r)).count();
        (ready(&channel, &queue).await as usize == COUNT - taken).then_some(taken)
    })
    .await;
    assert!(
        taken < COUNT,
        "the gateway kept consuming with a full outbox"
    );
    // Still paused: none comes back to the gateway, and none is dead-lettered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready(&channel, &queue).await as usize, COUNT - taken);
    assert_eq!(ready(&channel, DEAD_LETTER_QUEUE).await, 0);

    // The recipients drain the outbox: the queue is consumed again.
    gateway.drain_inboxes_until_taken(&references).await;
    for reference in &references {
        let made = gateway
            .deliveries()
            .iter()
            .filter(|d| &d.event_id == reference)
            .count();
        assert_eq!(made, 3, "{reference}: {made} deliveries");
    }
    assert_eq!(ready(&channel, &queue).await, 0);
    assert_eq!(ready(&channel, DEAD_LETTER_QUEUE).await, 0);
    embassy.close(200, "OK".into()).await.expect("close");
    gateway.stop().await;
}

/// Refusals before the pipeline (here, IOM Senegal publishing into the embassy's queue) count
/// against the sender's rate limit: over it, they are dead-lettered at once and audited in a
/// summary rather than one entry each, so that a sender can neither flood the audit log with
/// them nor hold up the embassy's queue.
#[actix_web::test]
async fn refusals_before_the_pipeline_count_against_the_senders_rate() {
    const VHOST: &str = "pace";
    const FLOOD: usize = 12;
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |config| {
        config.limits.rate_per_second = 1;
        config.limits.burst = 1;
    })
    .await;
    let iom = partner_connection(broker, VHOST, "iom.sn").await;
    let iom_channel = amqp::publisher_channel(&iom).await.expect("a channel");
    let ids: BTreeSet<String> = (0..FLOOD).map(|i| format!("forged-{i:02}")).collect();
    for id in &ids {
        let forged = native("iom.sn", id, "application/xml");
        assert_eq!(
            publish(&iom_channel, EMBASSY, b"<x/>", forged).await,
            Confirmation::Ack(None)
        );
    }
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let own = "ABJ-RBT-PC-0001".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&own)).await;

    let admin = admin_connection(broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    let dead = take_dead_letters(&admin_channel, &ids).await;
    assert_eq!(dead.len(), FLOOD);
    assert!(
        dead.iter()
            .all(|m| header(m, "x-passerelle-reason").as_deref() == Some("user-id-mismatch"))
    );
    wait_for("the embassy's own message accepted", WAIT, async || {
        gateway.accepted(&own).then_some(())
    })
    .await;
    for connection in [iom, embassy, admin] {
        connection.close(200, "OK".into()).await.expect("close");
    }
    // Every refusal is in the log, most of them in a summary (audited at the latest when the
    // gateway stops).
    let dir = gateway.stop().await;
    let (mut single, mut summarised) = (0, 0);
    journal::scan(
        &dir.path().join("data/audit-log/private/journal"),
        |_, record| {
            let leaf = Leaf::decode(&record.entry)?;
            if leaf.kind == Kind::Rejected && leaf.reason.as_deref() == Some("user-id-mismatch") {
                assert_eq!(leaf.transport, Some(Transport::Amqp));
                match leaf.count {
                    Some(count) => summarised += count,
                    None => single += 1,
                }
            }
            Ok(())
        },
    )
    .expect("reading the audit log's journal");
    assert_eq!(single + summarised, FLOOD as u64);
    assert!(
        summarised > 0,
        "{single} refusals audited one by one, none summarised"
    );
}

/// A refused message whose headers come close to the broker's frame size: its dead letter
/// leaves out the headers that do not fit, and says so, rather than making a frame the broker
/// refuses (which would close the gateway's connection, again at each redelivery).
#[actix_web::test]
async fn a_dead_letter_of_a_message_with_huge_headers_fits_its_frame() {
    // A dead letter the broker refuses closes the gateway's connection, and the scenario would
    // wait on it without end.
    tokio::time::timeout(Duration::from_secs(90), huge_headers())
        .await
        .expect("the scenario ends within 90 s");
}

async fn huge_headers() {
    const VHOST: &str = "headers";
    let broker = broker().await;
    let gateway = TestGateway::start(broker, VHOST, gateway_support::ORIGIN, |_| {}).await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    // Headers that just fit the broker's 128 KiB frames, so that the broker takes the message;
    // they would not with the gateway's own headers added.
    let huge = FieldTable::from(BTreeMap::from([(
        "x-huge".into(),
        AMQPValue::LongString("h".repeat(127 * 1024 + 512).into()),
    )]));
    let properties = native(EMBASSY, "huge-headers", "application/xml").with_headers(huge);
    assert_eq!(
        publish(&channel, EMBASSY, b"<not-xml", properties).await,
        Confirmation::Ack(None)
    );
    let admin = admin_connection(broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    let ids = BTreeSet::from(["huge-headers".to_owned()]);
    let dead = take_dead_letters(&admin_channel, &ids).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "x-passerelle-reason").as_deref(),
        Some("malformed")
    );
    assert_eq!(
        header(&dead[0], "x-passerelle-headers-dropped").as_deref(),
        Some("1")
    );
    assert_eq!(header(&dead[0], "x-huge"), None);
    assert_eq!(dead[0].data, b"<not-xml");
    // The connection stayed up: the next message goes through on it.
    assert_eq!(gateway.amqp_ready().await, Some(true));
    let next = "ABJ-RBT-HH-0001".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&next)).await;
    wait_for("the next message accepted", WAIT, async || {
        gateway.accepted(&next).then_some(())
    })
    .await;
    embassy.close(200, "OK".into()).await.expect("close");
    admin.close(200, "OK".into()).await.expect("close");
    gateway.stop().await;
}

/// A header nesting tables thousands deep (some 35 KB, which the broker takes) is parsed by the
/// AMQP client recursively, on a thread of its own: the gateway binary gives its threads a
/// stack deep enough for it, so the message is dead-lettered like any malformed one, and the
/// gateway goes on. (With the standard 2 MiB stack the gateway aborted on it, and again at
/// each restart.) The gateway logs at `trace`: none of the laissez-passer's personal data may
/// appear in its log.
#[actix_web::test]
async fn a_deeply_nested_header_is_refused_not_a_crash() {
    tokio::time::timeout(Duration::from_secs(90), deeply_nested_header())
        .await
        .expect("the scenario ends within 90 s");
}

async fn deeply_nested_header() {
    const VHOST: &str = "nesting";
    const DEPTH: usize = 5_000;
    let broker = broker().await;
    let setup = ServedSetup::new(&RegistryChanges::new());
    let tls = dev::files(&rabbit::dev_certs_dir(), "gateway-client");
    let path = |path: &std::path::Path| toml::Value::from(path.display().to_string());
    let mut text = std::fs::read_to_string(&setup.config).expect("the configuration");
    text.push_str(&format!(
        "\n[amqp]\nurl = \"amqps://127.0.0.1:{}/{}\"\nauth = {{ mechanism = \"external\" }}\n\
         tls = {{ ca = {}, cert = {}, key = {} }}\nconnection_name = \"passerelle-served\"\n\
         senders = [\"airline.at\"]\n",
        broker.amqps_port(),
        vhost_path(VHOST),
        path(&tls.ca),
        path(&tls.cert),
        path(&tls.key),
    ));
    std::fs::write(&setup.config, text).expect("the configuration");
    let mut gateway = setup.start("gateway.log", "trace").await;

    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let mut nested = FieldTable::default();
    for _ in 0..DEPTH {
        nested = FieldTable::from(BTreeMap::from([(
            "a".into(),
            AMQPValue::FieldTable(nested),
        )]));
    }
    let properties = native(EMBASSY, "nested-headers", "application/xml").with_headers(nested);
    assert_eq!(
        publish(&channel, EMBASSY, b"<not-xml", properties).await,
        Confirmation::Ack(None)
    );
    wait_for("the message refused", WAIT, async || {
        assert!(gateway.running(), "{}", gateway.stderr());
        gateway
            .stderr()
            .contains("message refused; dead-lettering it")
            .then_some(())
    })
    .await;
    let admin = admin_connection(broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    let ids = BTreeSet::from(["nested-headers".to_owned()]);
    let dead = take_dead_letters(&admin_channel, &ids).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "x-passerelle-reason").as_deref(),
        Some("malformed"),
        "{}",
        gateway.stderr()
    );
    assert!(gateway.running(), "{}", gateway.stderr());
    // It still takes messages.
    let next = "ABJ-RBT-NH-0001".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&next)).await;
    wait_for("the next message accepted", WAIT, async || {
        gateway.stderr().contains("ABJ-RBT-NH-0001").then_some(())
    })
    .await;
    embassy.close(200, "OK".into()).await.expect("close");
    admin.close(200, "OK".into()).await.expect("close");
    gateway.terminate();
    // Nothing the laissez-passer says of its holder is logged, even at `trace`.
    let log = gateway.stderr();
    for personal in [
        "KOUASSI",
        "Aya",
        "PRISCA",
        "1999-07-21",
        "CI2655120",
        "PLCIV",
        "9907216",
    ] {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(personal)).collect();
        assert!(
            found.is_empty(),
            "{personal} is logged:\n{}",
            found.join("\n")
        );
    }
}

/// A full disk under the audit log: while the log cannot make a message durable, the
/// embassy's messages wait in their queue, unacknowledged; none is returned to the queue again
/// and again until the broker's delivery limit dead-letters it. After a restart with room
/// again, each is accepted once.
#[actix_web::test]
async fn a_full_disk_holds_messages_rather_than_dead_lettering_them() {
    const VHOST: &str = "disk";
    const COUNT: usize = 4;
    // Longer than the broker's delivery limit (5) times the gateway's tries in place before it
    // returns a message (at most 3.5 s): had the gateway returned them, they would be
    // dead-lettered by now.
    const OUTAGE: Duration = Duration::from_secs(20);
    let broker = broker().await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let small = SmallFs::mount(&dir.path().join("small"));
    let data = dir.path().join("data");
    std::fs::create_dir_all(small.path.join("audit-log")).expect("the log's folder");
    std::fs::create_dir_all(&data).expect("the data folder");
    std::os::unix::fs::symlink(small.path.join("audit-log"), data.join("audit-log"))
        .expect("the log on the small filesystem");
    let tune = |config: &mut Config| {
        if let Some(amqp) = config.amqp.as_mut() {
            amqp.prefetch = 2;
        }
    };
    let gateway = TestGateway::start_in(broker, VHOST, gateway_support::ORIGIN, dir, tune).await;
    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let first = "ABJ-RBT-DF-0000".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&first)).await;
    wait_for("the first acceptance", WAIT, async || {
        gateway.accepted(&first).then_some(())
    })
    .await;

    // The log stops at its first write that finds no room. Its journal has room reserved
    // ahead, so that is the publication of a checkpoint: one more message makes one. Whether
    // that message is accepted before the log stops depends on timing; the others are sent
    // once it has stopped.
    let filler = small.fill();
    let trigger = "ABJ-RBT-DF-0099".to_owned();
    send_lpcs(&channel, std::slice::from_ref(&trigger)).await;
    wait_for("the log reported down", WAIT, async || {
        let reply = gateway.admin().try_get("/ready").await.ok()?;
        (reply.json()["checks"]["audit_log"] == false).then_some(())
    })
    .await;
    let references: Vec<String> = (1..=COUNT).map(|i| format!("ABJ-RBT-DF-{i:04}")).collect();
    send_lpcs(&channel, &references).await;
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        ready(&channel, DEAD_LETTER_QUEUE).await,
        0,
        "messages were dead-lettered during the outage"
    );
    assert!(references.iter().all(|r| !gateway.accepted(r)));
    let waiting = ready(&channel, &inbound_queue(EMBASSY)).await as usize;
    assert!(
        waiting >= COUNT - 2,
        "{waiting} messages in the queue: more than the prefetch taken out"
    );
    let (dir, stopped) = gateway.stop_anyhow().await;
    assert!(stopped.is_err(), "a stop with the log down said nothing");

    // Room again, and a restart: every message is accepted, once.
    std::fs::remove_file(filler).expect("removing the filler");
    let gateway = TestGateway::start_in(broker, VHOST, gateway_support::ORIGIN, dir, tune).await;
    wait_for("every message accepted", WAIT, async || {
        references.iter().all(|r| gateway.accepted(r)).then_some(())
    })
    .await;
    wait_for(
        "the message sent as the disk filled accepted",
        WAIT,
        async || gateway.accepted(&trigger).then_some(()),
    )
    .await;
    let deliveries = gateway.deliveries();
    for reference in references.iter().chain([&first, &trigger]) {
        let made = deliveries
            .iter()
            .filter(|d| &d.event_id == reference)
            .count();
        assert_eq!(made, 3, "{reference}: {made} deliveries");
    }
    assert_eq!(ready(&channel, DEAD_LETTER_QUEUE).await, 0);
    embassy.close(200, "OK".into()).await.expect("close");
    let dir = gateway.stop().await;
    // The small filesystem is unmounted before the folder that holds it is removed.
    drop(small);
    drop(dir);
}

/// (c) A broker restart in mid-stream: the embassy's messages before and after it, the
/// ministry's requests before, during and after it; every one accepted, every delivery on the
/// embassy's queue (a repeat only with the same `message_id` and body); readiness false while
/// the broker is away.
#[actix_web::test]
async fn a_broker_restart_loses_nothing() {
    const VHOST: &str = "restart";
    const BEFORE: usize = 80;
    const AFTER: usize = 20;
    const REQUESTS: usize = 10;
    let broker = blocking(|| {
        let broker = Broker::start();
        define(&broker, &[VHOST]);
        broker
    })
    .await;
    // The embassy's rate limit paces the gateway (20 a second after a burst of 10: 3.5 s for the
    // first 80), so that the restart comes while most of its messages are still queued or held,
    // even on a machine slowed by other tests.
    let gateway = TestGateway::start(&broker, VHOST, gateway_support::ORIGIN, |config| {
        config.limits.rate_per_second = 20;
        config.limits.burst = 10;
    })
    .await;
    let references: Vec<String> = (0..BEFORE + AFTER)
        .map(|i| format!("ABJ-RBT-RS-{i:04}"))
        .collect();
    let requests: Vec<String> = (0..3 * REQUESTS)
        .map(|i| format!("MI-DMF-2026-9{i:05}"))
        .collect();

    // Before: the embassy publishes, the ministry asks.
    let embassy = partner_connection(&broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    send_lpcs(&channel, &references[..BEFORE]).await;
    for id in &requests[..REQUESTS] {
        gateway.post_as_ministry(&lpc_request(id)).await;
    }
    drop(channel);
    let accepted_before = references[..BEFORE]
        .iter()
        .filter(|r| gateway.accepted(r))
        .count();
    assert!(
        accepted_before < BEFORE,
        "the restart comes in mid-stream ({accepted_before} of {BEFORE} accepted)"
    );

    // The broker restarts while the ministry keeps asking.
    let restart = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        broker.restart();
        broker
    });
    let mut saw_not_ready = false;
    let mut next = REQUESTS;
    while !restart.is_finished() {
        if next < 2 * REQUESTS {
            gateway
                .post_as_ministry(&lpc_request(&requests[next]))
                .await;
            next += 1;
        }
        saw_not_ready |= gateway.amqp_ready().await == Some(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let broker = match restart.await {
        Ok(broker) => broker,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    };
    assert!(
        saw_not_ready,
        "readiness went false while the broker was away"
    );
    for id in &requests[next..2 * REQUESTS] {
        gateway.post_as_ministry(&lpc_request(id)).await;
    }
    gateway.wait_ready(true).await;

    // After: the embassy reconnects and publishes the rest; the ministry asks again.
    let embassy = partner_connection(&broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    send_lpcs(&channel, &references[BEFORE..]).await;
    for id in &requests[2 * REQUESTS..] {
        gateway.post_as_ministry(&lpc_request(id)).await;
    }

    // Every message in was accepted.
    wait_for("every message accepted", WAIT, async || {
        references.iter().all(|r| gateway.accepted(r)).then_some(())
    })
    .await;
    // Every request reached the embassy's queue; a repeat is the same message.
    let inbox = embassy.create_channel().await.expect("a channel");
    let ids: BTreeSet<String> = requests.iter().cloned().collect();
    let repeats = take_requests(&inbox, &ids).await;
    eprintln!(
        "[amqp_flow] restart: {} messages in ({accepted_before} accepted before the restart), \
         {} deliveries out, {repeats} repeated",
        references.len(),
        ids.len()
    );
    // A message held over the rate limit is counted once, however many tries it waits: at
    // most once a delivery (the broker's restart delivers the held ones again).
    let limited = gateway
        .metric(
            "passerelle_messages_total",
            &[
                ("partner", EMBASSY),
                ("transport", "amqp"),
                ("outcome", "rate-limited"),
            ],
        )
        .await;
    assert!(
        limited >= 1.0 && limited <= 2.0 * references.len() as f64,
        "{limited} counted rate-limited for {} messages",
        references.len()
    );
    gateway.stop().await;
    assert_eq!(
        ready(&inbox, &inbound_queue(EMBASSY)).await,
        0,
        "nothing left behind"
    );
    let admin = admin_connection(&broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    assert_eq!(
        ready(&admin_channel, DEAD_LETTER_QUEUE).await,
        0,
        "no dead letter"
    );
    embassy.close(200, "OK".into()).await.expect("close");
    admin.close(200, "OK".into()).await.expect("close");
    drop(broker);
}

/// (d) Two gateway instances on one broker, each with its own store and audit-log shard, compete
/// for the same queues: each message is accepted by exactly one of them, each delivery is
/// published once, and each shard verifies against its own key.
#[actix_web::test]
async fn two_instances_share_the_queues() {
    const VHOST: &str = "pair";
    const MESSAGES: usize = 40;
    const REQUESTS: usize = 10;
    let broker = broker().await;
    let first = TestGateway::start(broker, VHOST, "passerelle.localhost/audit-1", |_| {}).await;
    let second = TestGateway::start(broker, VHOST, "passerelle.localhost/audit-2", |_| {}).await;
    let instances = [&first, &second];

    let embassy = partner_connection(broker, VHOST, EMBASSY).await;
    let channel = amqp::publisher_channel(&embassy).await.expect("a channel");
    let references: Vec<String> = (0..MESSAGES)
        .map(|i| format!("ABJ-RBT-PR-{i:04}"))
        .collect();
    send_lpcs(&channel, &references).await;
    let requests: Vec<String> = (0..REQUESTS)
        .map(|i| format!("MI-DMF-2026-7{i:05}"))
        .collect();
    for (i, id) in requests.iter().enumerate() {
        instances[i % 2].post_as_ministry(&lpc_request(id)).await;
    }

    // Each message accepted by exactly one instance.
    wait_for("every message accepted", WAIT, async || {
        references
            .iter()
            .all(|r| instances.iter().any(|g| g.accepted(r)))
            .then_some(())
    })
    .await;
    let mut per_instance = [0usize; 2];
    for reference in &references {
        let by: Vec<usize> = (0..2)
            .filter(|&i| instances[i].accepted(reference))
            .collect();
        assert_eq!(by.len(), 1, "{reference} accepted by instances {by:?}");
        per_instance[by[0]] += 1;
    }
    eprintln!("[amqp_flow] two instances: accepted {per_instance:?}");
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "both instances consumed: {per_instance:?}"
    );
    // The same in the audit logs: one `accepted` entry per reference, across both shards.
    for reference in &references {
        let mut entries = 0;
        for gateway in instances {
            if gateway.accepted(reference) {
                let query = Query::PartnerRef(EMBASSY.into(), reference.clone());
                entries += gateway
                    .audit(query, |leaves| {
                        leaves.iter().any(|leaf| leaf.kind == Kind::Accepted)
                    })
                    .await
                    .iter()
                    .filter(|leaf| leaf.kind == Kind::Accepted)
                    .count();
            } else {
                let query = Query::PartnerRef(EMBASSY.into(), reference.clone());
                let found = gateway.running.gateway.log.search(&query).expect("search");
                assert!(found.is_empty(), "{reference} in the other shard");
            }
        }
        assert_eq!(entries, 1, "{reference}");
    }

    // Each delivery published once.
    let inbox = embassy.create_channel().await.expect("a channel");
    let ids: BTreeSet<String> = requests.iter().cloned().collect();
    let got = take_until(
        &inbox,
        &outbound_queue(EMBASSY),
        &ids,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        got.len(),
        REQUESTS,
        "{:?}",
        got.iter().map(message_id).collect::<Vec<_>>()
    );
    for message in &got {
        check_demande(message);
    }
    embassy.close(200, "OK".into()).await.expect("close");

    // Each shard verifies against its own key and names its own origin.
    let verifiers = [
        first.running.gateway.log.verifier().clone(),
        second.running.gateway.log.verifier().clone(),
    ];
    let first_dir = first.stop().await;
    let second_dir = second.stop().await;
    for ((dir, verifier), origin) in [first_dir, second_dir].iter().zip(&verifiers).zip([
        "passerelle.localhost/audit-1",
        "passerelle.localhost/audit-2",
    ]) {
        let public = dir.path().join("data/audit-log/public");
        let report = passerelle::audit::verify::verify_public(&public, verifier, None, &mut |_| {})
            .unwrap_or_else(|failure| panic!("{origin}: {failure}"));
        assert_eq!(report.checkpoint.origin, origin);
        assert!(report.checkpoint.size > 0);
    }
}

/// (g) A memory alarm on the broker blocks the gateway's publishing connection. The gateway goes
/// on accepting messages over HTTPS, keeps their deliveries in its outbox while the alarm lasts,
/// and publishes every one once it clears: nothing lost, nothing dead-lettered, and no delivery
/// counted failed for the alarm.
#[actix_web::test]
async fn a_broker_alarm_holds_deliveries_until_it_clears() {
    const VHOST: &str = "alarm";
    const REQUESTS: usize = 12;
    let broker = std::sync::Arc::new(
        blocking(|| {
            let broker = Broker::start();
            define(&broker, &[VHOST]);
            broker
        })
        .await,
    );
    let set_watermark = |fraction: &'static str| {
        let broker = broker.clone();
        blocking(move || broker.rabbitmqctl(&["set_vm_memory_high_watermark", fraction]))
    };
    let gateway = TestGateway::start(&broker, VHOST, gateway_support::ORIGIN, |_| {}).await;
    let requests: Vec<String> = (0..REQUESTS)
        .map(|i| format!("MI-DMF-2026-6{i:05}"))
        .collect();
    let embassy = partner_connection(&broker, VHOST, EMBASSY).await;
    let inbox = embassy.create_channel().await.expect("a channel");

    // Before the alarm, a request reaches the embassy.
    gateway.post_as_ministry(&lpc_request(&requests[0])).await;
    let first: BTreeSet<String> = requests[..1].iter().cloned().collect();
    let before = take_until(&inbox, &outbound_queue(EMBASSY), &first, Duration::ZERO).await;
    assert_eq!(before.len(), 1);

    // A watermark of 0 raises the memory alarm at once: the broker blocks every connection that
    // publishes. The ministry's requests are still accepted, durably, over HTTPS. The alarm
    // lasts longer than a confirm's time limit: a delivery published meanwhile would be counted
    // a failed attempt.
    set_watermark("0").await;
    let raised = Instant::now();
    for id in &requests[1..] {
        gateway.post_as_ministry(&lpc_request(id)).await;
    }
    tokio::time::sleep(
        (amqp::egress::CONFIRM_TIMEOUT + Duration::from_secs(3)).saturating_sub(raised.elapsed()),
    )
    .await;
    assert_eq!(
        ready(&inbox, &outbound_queue(EMBASSY)).await,
        0,
        "nothing is published while the alarm lasts"
    );
    for id in &requests[1..] {
        let held = gateway.delivery(EMBASSY, id);
        assert_eq!(held.state, DeliveryState::Pending, "{held:?}");
    }
    assert_eq!(gateway.metric("passerelle_amqp_blocked", &[]).await, 1.0);

    // The alarm clears: every request reaches the embassy, none is counted a failed attempt, and
    // nothing is dead-lettered.
    set_watermark("0.4").await;
    let ids: BTreeSet<String> = requests[1..].iter().cloned().collect();
    let repeats = take_requests(&inbox, &ids).await;
    eprintln!(
        "[amqp_flow] alarm: {} requests held, {} published after it, {repeats} repeated",
        ids.len(),
        ids.len() + repeats
    );
    assert_eq!(repeats, 0, "each held delivery is published once");
    wait_for("every delivery confirmed", WAIT, async || {
        requests
            .iter()
            .all(|id| gateway.delivery(EMBASSY, id).state == DeliveryState::Delivered)
            .then_some(())
    })
    .await;
    for id in &requests {
        let delivery = gateway.delivery(EMBASSY, id);
        assert_eq!(
            (delivery.attempts, delivery.last_error.as_deref()),
            (1, None),
            "{delivery:?}"
        );
    }
    let admin = admin_connection(&broker, VHOST).await;
    let admin_channel = admin.create_channel().await.expect("a channel");
    assert_eq!(
        ready(&admin_channel, DEAD_LETTER_QUEUE).await,
        0,
        "no dead letter"
    );
    gateway.stop().await;
    embassy.close(200, "OK".into()).await.expect("close");
    admin.close(200, "OK".into()).await.expect("close");
}
