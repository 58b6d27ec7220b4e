//! The AMQP transport against a real RabbitMQ broker (see `tests/support/rabbit.rs`).
//!
//! The tests that leave the broker running share one broker, started by the first of them
//! ([`shared`]): a broker takes seconds to boot, and the tests use distinct partners and queues so
//! that they can run in parallel on it. It is never dropped (it is a static), and its watchdog
//! kills it and deletes its files when the test process exits. The restart test has a broker of
//! its own, dropped (killed) at its end.
//!
//! These tests need RabbitMQ (`apt-get install rabbitmq-server`): without it they fail, saying so.

#[path = "support/rabbit.rs"]
mod rabbit;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ErrorKind};
use passerelle::amqp::{
    self, AmqpAuth, AmqpError, AmqpSettings, DEAD_LETTER_QUEUE, INBOUND_EXCHANGE,
    OUTBOUND_EXCHANGE, Topology, inbound_queue, look_up_queue, outbound_queue, partner_permissions,
    partner_user,
};
use passerelle::tls::dev;
use rabbit::Broker;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The broker shared by every test but the restart test, started on first use.
fn shared() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(Broker::start)
}

/// The shared broker, started off the async runtime's threads.
async fn broker() -> &'static Broker {
    match tokio::task::spawn_blocking(shared).await {
        Ok(broker) => broker,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Runs a blocking harness call (a `rabbitmqctl` call) off the async runtime's threads.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(call).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Plain AMQP as the broker's administrator.
fn admin_settings(broker: &Broker, name: &str) -> AmqpSettings {
    let (user, password) = broker.admin();
    AmqpSettings {
        auth: AmqpAuth::Plain {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        connection_name: name.to_owned(),
        ..AmqpSettings::new(format!("amqp://127.0.0.1:{}/%2f", broker.amqp_port()))
    }
}

/// AMQPS with SASL EXTERNAL and the development certificate `cert` (a partner id, or
/// `gateway-client`).
fn external_settings(broker: &Broker, cert: &str, name: &str) -> AmqpSettings {
    AmqpSettings {
        auth: AmqpAuth::External,
        tls: Some(dev::files(&rabbit::dev_certs_dir(), cert)),
        connection_name: name.to_owned(),
        ..AmqpSettings::new(broker.amqps_url())
    }
}

async fn admin_connection(broker: &Broker, name: &str) -> Connection {
    amqp::connect(&admin_settings(broker, name))
        .await
        .expect("connect as the administrator")
}

/// Creates the broker user of `partner` with its least privileges (EXTERNAL ignores the
/// password).
async fn add_partner_user(broker: &'static Broker, partner: &'static str) {
    blocking(move || {
        let user = partner_user(partner);
        broker.add_user(&user, &random_password());
        let permissions = partner_permissions(partner);
        broker.set_permissions(
            &user,
            &permissions.configure,
            &permissions.write,
            &permissions.read,
        );
    })
    .await;
}

fn random_password() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random password");
    hex::encode(bytes)
}

/// Publishes persistently, `mandatory`, and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> lapin::Result<Confirmation> {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties.with_delivery_mode(2),
        )
        .await?
        .await
}

/// The queues of the broker, from `rabbitmqctl list_queues` as JSON.
fn list_queues(broker: &Broker) -> Vec<Value> {
    let output = broker.rabbitmqctl(&[
        "list_queues",
        "name",
        "type",
        "durable",
        "arguments",
        "--formatter",
        "json",
    ]);
    serde_json::from_str(&output).unwrap_or_else(|error| panic!("{error}: {output}"))
}

/// The value of a queue argument in `list_queues` JSON, where arguments are
/// `[name, type, value]` triples; `null` when absent.
fn argument(queue: &Value, name: &str) -> Value {
    queue["arguments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|triple| triple[0] == name)
        .map_or(Value::Null, |triple| triple[2].clone())
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp_error)
            if amqp_error.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// (a) The broker starts, and `connect` works with a user name and password (SASL PLAIN); a wrong
/// password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_user_and_password() {
    let broker = broker().await;
    let connection = admin_connection(broker, "test-plain").await;
    assert!(connection.status().connected());
    let channel = connection.create_channel().await.expect("open a channel");
    assert!(channel.status().connected());
    connection.close(200, "OK".into()).await.expect("close");

    let (user, _) = broker.admin();
    let wrong = AmqpSettings {
        auth: AmqpAuth::Plain {
            user: user.to_owned(),
            password: "not the password".to_owned(),
        },
        ..admin_settings(broker, "test-plain-wrong")
    };
    let error = amqp::connect(&wrong).await.expect_err("a wrong password");
    assert!(matches!(error, AmqpError::Connect { .. }), "{error}");
    assert!(
        !error.to_string().contains("not the password"),
        "the error shows the password: {error}"
    );
}

/// (b) `connect` works over AMQPS with SASL EXTERNAL and a partner's development certificate: the
/// broker names the connection's user after the certificate's URI name, `urn:partner:<id>`. A
/// certificate whose user does not exist on the broker is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_amqps_with_external() {
    const PARTNER: &str = "ci.ambassade.rabat";
    let broker = broker().await;
    add_partner_user(broker, PARTNER).await;

    let connection = amqp::connect(&external_settings(broker, PARTNER, "test-external"))
        .await
        .expect("connect with the partner's certificate");
    let channel = connection.create_channel().await.expect("open a channel");
    assert!(channel.status().connected());

    let connections: Vec<Value> = blocking(move || {
        let output = broker.rabbitmqctl(&[
            "list_connections",
            "client_properties",
            "user",
            "auth_mechanism",
            "ssl",
            "peer_cert_subject",
            "--formatter",
            "json",
        ]);
        serde_json::from_str(&output).unwrap_or_else(|error| panic!("{error}: {output}"))
    })
    .await;
    let ours = connections
        .iter()
        .find(|connection| connection.to_string().contains("test-external"))
        .unwrap_or_else(|| panic!("no connection named test-external in {connections:?}"));
    assert_eq!(ours["user"], partner_user(PARTNER), "{ours}");
    assert_eq!(ours["auth_mechanism"], "EXTERNAL", "{ours}");
    assert_eq!(ours["ssl"], true, "{ours}");
    connection.close(200, "OK".into()).await.expect("close");

    // iom.ma has a valid certificate, but no broker user.
    let error = amqp::connect(&external_settings(
        broker,
        "iom.ma",
        "test-external-unknown",
    ))
    .await
    .expect_err("a certificate without a broker user");
    assert!(matches!(error, AmqpError::Connect { .. }), "{error}");
}

/// (c) Declaring the topology twice changes nothing; the queues are durable quorum queues that
/// dead-letter to `passerelle.dlx` at least once, with `reject-publish` overflow and a delivery
/// limit; a rejected message reaches `passerelle.dead`; a queue declared with other arguments is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_idempotent_and_dead_letters() {
    const PARTNER: &str = "test.topology";
    let broker = broker().await;
    let connection = admin_connection(broker, "test-topology").await;
    let channel = connection.create_channel().await.expect("open a channel");
    let topology = Topology::new([PARTNER]).expect("topology");
    topology.declare(&channel).await.expect("first declaration");
    topology
        .declare(&channel)
        .await
        .expect("second declaration");
    assert!(channel.status().connected());

    // The declared queues, as the broker reports them.
    let queues = blocking(move || list_queues(broker)).await;
    for name in [inbound_queue(PARTNER), outbound_queue(PARTNER)] {
        let queue = queues
            .iter()
            .find(|queue| queue["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no queue {name} in {queues:?}"));
        assert_eq!(queue["type"], "quorum", "{queue}");
        assert_eq!(queue["durable"], true, "{queue}");
        let argument = |key: &str| argument(queue, key);
        assert_eq!(argument("x-queue-type"), "quorum", "{queue}");
        assert_eq!(
            argument("x-dead-letter-exchange"),
            "passerelle.dlx",
            "{queue}"
        );
        assert_eq!(
            argument("x-dead-letter-strategy"),
            "at-least-once",
            "{queue}"
        );
        assert_eq!(argument("x-overflow"), "reject-publish", "{queue}");
        assert_eq!(argument("x-delivery-limit"), 5, "{queue}");
    }
    let dead = queues
        .iter()
        .find(|queue| queue["name"] == DEAD_LETTER_QUEUE)
        .unwrap_or_else(|| panic!("no queue {DEAD_LETTER_QUEUE} in {queues:?}"));
    assert_eq!(dead["type"], "quorum", "{dead}");

    // A passive declaration finds each queue.
    for name in [inbound_queue(PARTNER), outbound_queue(PARTNER)] {
        look_up_queue(&channel, &name)
            .await
            .unwrap_or_else(|error| panic!("passive declaration of {name}: {error}"));
    }

    // A message rejected without requeue goes to the dead-letter queue, with its origin.
    let publisher = amqp::publisher_channel(&connection).await.expect("channel");
    let confirmation = publish(
        &publisher,
        INBOUND_EXCHANGE,
        PARTNER,
        b"to be rejected",
        BasicProperties::default().with_message_id("dead-letter-me".into()),
    )
    .await
    .expect("publish");
    assert_eq!(confirmation, Confirmation::Ack(None));
    let message = channel
        .basic_get(
            inbound_queue(PARTNER).as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .expect("basic.get")
        .expect("the message is in the inbound queue");
    message
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let dead_letter = wait_for_message(&channel, DEAD_LETTER_QUEUE, "dead-letter-me").await;
    assert_eq!(dead_letter.data, b"to be rejected");
    let headers = dead_letter
        .properties
        .headers()
        .clone()
        .expect("dead letters carry headers");
    assert_eq!(
        headers.inner().get("x-first-death-queue"),
        Some(&AMQPValue::LongString(inbound_queue(PARTNER).into())),
        "{headers:?}"
    );

    // The same queue with other arguments is refused, and the refusal closes the channel.
    let conflicting = connection.create_channel().await.expect("open a channel");
    let error = conflicting
        .queue_declare(
            inbound_queue(PARTNER).as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect_err("a classic queue under a quorum queue's name");
    assert!(is_precondition_failed(&error), "{error}");
    connection.close(200, "OK".into()).await.expect("close");
}

/// Takes messages from `queue` until the one with `message_id` (others go back), waiting up to
/// 10 s: dead-lettering at least once is asynchronous.
async fn wait_for_message(
    channel: &Channel,
    queue: &str,
    message_id: &str,
) -> lapin::message::Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get");
        match got {
            Some(message)
                if message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str())
                    == Some(message_id) =>
            {
                message
                    .delivery
                    .acker
                    .ack(Default::default())
                    .await
                    .expect("ack");
                return message.delivery;
            }
            Some(other) => {
                other
                    .delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                    .expect("requeue");
            }
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "no message {message_id} in {queue} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (d) The broker enforces `user_id`: a partner authenticated by its certificate can publish with
/// its own user as `user_id`, and the message carries it; a message claiming another user is
/// refused with a channel error PRECONDITION_FAILED and never reaches the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_enforces_user_id() {
    const PARTNER: &str = "iom.sn";
    let broker = broker().await;
    let admin = admin_connection(broker, "test-user-id-admin").await;
    let admin_channel = admin.create_channel().await.expect("open a channel");
    Topology::new([PARTNER])
        .expect("topology")
        .declare(&admin_channel)
        .await
        .expect("declare");
    add_partner_user(broker, PARTNER).await;

    let partner = amqp::connect(&external_settings(broker, PARTNER, "test-user-id"))
        .await
        .expect("connect with the partner's certificate");
    let channel = amqp::publisher_channel(&partner).await.expect("channel");
    let own = BasicProperties::default()
        .with_user_id(partner_user(PARTNER).into())
        .with_message_id("own-user-id".into());
    let confirmation = publish(&channel, INBOUND_EXCHANGE, PARTNER, b"mine", own)
        .await
        .expect("publish with the partner's own user_id");
    assert_eq!(confirmation, Confirmation::Ack(None));
    let received = wait_for_message(&admin_channel, &inbound_queue(PARTNER), "own-user-id").await;
    assert_eq!(
        received.properties.user_id().as_ref().map(|id| id.as_str()),
        Some("urn:partner:iom.sn")
    );

    let forged = BasicProperties::default()
        .with_user_id(partner_user("ma.dgsn").into())
        .with_message_id("forged-user-id".into());
    // lapin sends the message; the broker's refusal (channel.close 406) fails the confirm.
    let confirm = channel
        .basic_publish(
            INBOUND_EXCHANGE.into(),
            PARTNER.into(),
            BasicPublishOptions::default(),
            b"forged",
            forged.with_delivery_mode(2),
        )
        .await
        .expect("the message is sent");
    let error = confirm
        .await
        .expect_err("a message claiming another partner's user");
    assert!(is_precondition_failed(&error), "{error}");
    assert!(!channel.status().connected(), "the channel is closed");

    // Nothing arrived: the inbound queue is empty.
    let queue = look_up_queue(&admin_channel, &inbound_queue(PARTNER))
        .await
        .expect("passive declaration");
    assert_eq!(queue.message_count(), 0);
    partner.close(200, "OK".into()).await.expect("close");
    admin.close(200, "OK".into()).await.expect("close");
}

/// (e) With publisher confirms and `mandatory`, a message the outbound exchange cannot route comes
/// back with its confirm: `Confirmation::Ack(Some(returned))`, reply 312 NO_ROUTE. A routable one
/// is confirmed with nothing returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_messages_are_returned() {
    const PARTNER: &str = "test.returns";
    let broker = broker().await;
    let connection = admin_connection(broker, "test-returns").await;
    let channel = amqp::publisher_channel(&connection).await.expect("channel");
    Topology::new([PARTNER])
        .expect("topology")
        .declare(&channel)
        .await
        .expect("declare");

    let confirmation = publish(
        &channel,
        OUTBOUND_EXCHANGE,
        "nobody.example",
        b"for nobody",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected Ack(Some(returned message)), got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(
        returned.error().map(|error| error.kind().clone()),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOROUTE))
    );
    assert_eq!(returned.delivery.exchange.as_str(), OUTBOUND_EXCHANGE);
    assert_eq!(returned.delivery.routing_key.as_str(), "nobody.example");
    assert_eq!(returned.delivery.data, b"for nobody");

    let confirmation = publish(
        &channel,
        OUTBOUND_EXCHANGE,
        PARTNER,
        b"for a partner",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert_eq!(confirmation, Confirmation::Ack(None));
    connection.close(200, "OK".into()).await.expect("close");
}

/// The raw publish-with-confirm probe (the AMQP benchmark's baseline) finds in its quorum queue
/// every message the broker confirmed, and leaves the queue empty; a probe of a queue that does
/// not exist fails rather than measuring messages that went nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_publish_confirm_probe_counts_only_messages_the_queue_held() {
    const QUEUE: &str = "passerelle.test.probe";
    let broker = broker().await;
    let connection = admin_connection(broker, "test-probe").await;
    let channel = connection.create_channel().await.expect("open a channel");
    amqp::declare_probe_queue(&channel, QUEUE)
        .await
        .expect("declare");
    let payload = vec![b'x'; 1024];
    let rate = amqp::publish_confirm_rate(&channel, QUEUE, &payload, 2_000, 64)
        .await
        .expect("measure");
    eprintln!("[rabbit] raw publish-confirm rate: {rate:.0} msg/s (1 KiB, 64 in flight)");
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
    let queue = look_up_queue(&channel, QUEUE)
        .await
        .expect("passive declaration");
    assert_eq!(queue.message_count(), 0, "the probe purges its queue");
    // Messages to a queue that does not exist are confirmed by the broker and dropped.
    let lost = connection.create_channel().await.expect("open a channel");
    let error = amqp::publish_confirm_rate(&lost, "passerelle.test.nowhere", &payload, 10, 4)
        .await
        .expect_err("a probe of no queue");
    assert!(
        error.to_string().contains("NOT_FOUND"),
        "the probe of no queue fails at its purge: {error}"
    );
    // A queue that keeps two messages and drops the older ones confirms them all: the probe
    // finds fewer than it published, and says so rather than measure them.
    let short = connection.create_channel().await.expect("open a channel");
    let arguments = FieldTable::from(std::collections::BTreeMap::from([
        (
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        ),
        ("x-max-length".into(), AMQPValue::LongLongInt(2)),
        (
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        ),
    ]));
    short
        .queue_declare(
            "passerelle.test.probe-short".into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .expect("declaring a queue of two messages");
    let error = amqp::publish_confirm_rate(&short, "passerelle.test.probe-short", &payload, 10, 4)
        .await
        .expect_err("a probe of a queue that drops messages");
    assert!(
        matches!(
            error,
            AmqpError::ConfirmedNotHeld {
                confirmed: 10,
                held: 2,
                ..
            }
        ),
        "{error}"
    );
    connection.close(200, "OK".into()).await.expect("close");
}

/// (f) Persistent messages confirmed by a quorum queue survive a broker restart. This test has a
/// broker of its own, since it stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_broker_restart() {
    const PARTNER: &str = "test.restart";
    const COUNT: usize = 50;
    let mut broker = blocking(Broker::start).await;
    let settings = admin_settings(&broker, "test-restart");
    let connection = amqp::connect(&settings).await.expect("connect");
    let channel = amqp::publisher_channel(&connection).await.expect("channel");
    Topology::new([PARTNER])
        .expect("topology")
        .declare(&channel)
        .await
        .expect("declare");
    for i in 0..COUNT {
        let confirmation = publish(
            &channel,
            OUTBOUND_EXCHANGE,
            PARTNER,
            format!("message {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        assert_eq!(confirmation, Confirmation::Ack(None));
    }
    connection.close(200, "OK".into()).await.expect("close");

    let mut broker = blocking(move || {
        broker.restart();
        broker
    })
    .await;
    eprintln!(
        "[rabbit] restart: stop {:.2?}, start {:.2?}",
        broker.stop_time().unwrap_or_default(),
        broker.start_time()
    );

    let connection = amqp::connect(&settings).await.expect("reconnect");
    let channel = connection.create_channel().await.expect("open a channel");
    let queue = outbound_queue(PARTNER);
    for i in 0..COUNT {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("message {i} was lost in the restart"));
        assert_eq!(message.delivery.data, format!("message {i}").as_bytes());
        assert_eq!(message.delivery.properties.delivery_mode(), &Some(2));
    }
    assert!(
        channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .is_none()
    );
    connection.close(200, "OK".into()).await.expect("close");
    broker = blocking(move || {
        broker.stop();
        broker
    })
    .await;
    drop(broker);
}
