//! End-to-end throughput of the AMQP adapter, beside the raw publish-confirm rate of the same
//! broker measured in the same run.
//!
//! Run with `cargo bench --bench amqp` (it needs RabbitMQ installed: it starts a private broker
//! with `tests/support/rabbit.rs`, TLS and SASL EXTERNAL, and a gateway in process).
//!
//! - **flow**: the Côte d'Ivoire embassy publishes `N` laissez-passer messages (its native XML,
//!   distinct references, publisher confirms, 256 in flight) to its inbound queue; the gateway
//!   consumes them, maps, validates, audits and records each (durably: audit log and store both
//!   fsync'd, in groups), and writes each for its recipients: the ministry and IOM Morocco
//!   (inboxes) and the border police, switched to AMQP for the benchmark, whose XML the gateway
//!   publishes to `passerelle.out.ma.dgsn` with confirms, auditing and recording each delivery.
//!   The clock runs from the first publish to the last delivery recorded as confirmed.
//! - **raw**: [`passerelle::amqp::publish_confirm_rate`]: the same XML published persistently to
//!   a quorum queue with confirms, 64 in flight, over the same kind of connection (TLS,
//!   EXTERNAL), with nothing else running.
//!
//! Settings (environment): `AMQP_BENCH_MESSAGES` (messages per round, default 2000),
//! `AMQP_BENCH_ROUNDS` (default 3), `AMQP_BENCH_PREFETCH` and `AMQP_BENCH_IN_FLIGHT` (the
//! gateway's `amqp.prefetch` and `amqp.publish_in_flight`, default 64 each, the defaults of the
//! settings). Every figure is the median over the rounds.

#[path = "../tests/support/gateway.rs"]
mod gateway_support;
#[path = "../tests/support/rabbit.rs"]
mod rabbit;

#[path = "support/figures.rs"]
mod figures;

use figures::{env_or, median};
use lapin::options::{BasicPublishOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use passerelle::amqp::{
    self, AmqpAuth, AmqpSettings, INBOUND_EXCHANGE, inbound_queue, outbound_queue,
    partner_permissions, partner_user,
};
use passerelle::metrics::{DeliveryLabels, MessageLabels};
use passerelle::service::RunningGateway;
use passerelle::tls::dev;
use rabbit::Broker;
use serde_json::json;
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

const EMBASSY: &str = "ci.ambassade.rabat";
const BORDER_POLICE: &str = "ma.dgsn";
const GATEWAY_USER: &str = "urn:gateway:passerelle";
const PROBE_QUEUE: &str = "passerelle.bench.probe";

/// The broker users (certificate logins) of the gateway and the embassy, with their permissions
/// on the default virtual host.
fn define(broker: &Broker) {
    let embassy = partner_permissions(EMBASSY);
    let definitions = json!({
        "users": [
            {"name": GATEWAY_USER, "password_hash": "", "tags": []},
            {"name": partner_user(EMBASSY), "password_hash": "", "tags": []},
        ],
        "permissions": [
            {"user": GATEWAY_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": partner_user(EMBASSY), "vhost": "/", "configure": embassy.configure,
             "write": embassy.write, "read": embassy.read},
        ],
    });
    let path = broker.dir().join("definitions.json");
    std::fs::write(&path, definitions.to_string()).expect("writing the definitions");
    broker.rabbitmqctl(&["import_definitions", &path.display().to_string()]);
}

/// The sample registry with the border police receiving over AMQP and the airline by inbox.
fn registry(dir: &Path) -> std::path::PathBuf {
    let path = gateway_support::write_registry(
        dir,
        &gateway_support::RegistryChanges::new().inbox("airline.at"),
    );
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&path).expect("the registry")).expect("TOML");
    for partner in table["partner"].as_array_mut().expect("partners") {
        let entry = partner.as_table_mut().expect("a partner");
        if entry["id"].as_str() == Some(BORDER_POLICE) {
            let mut delivery = toml::Table::new();
            delivery.insert("mode".into(), "amqp".into());
            entry.insert("delivery".into(), delivery.into());
        }
    }
    std::fs::write(&path, toml::to_string(&table).expect("TOML")).expect("writing the registry");
    path
}

fn settings(broker: &Broker, certificate: &str, name: &str) -> AmqpSettings {
    AmqpSettings {
        auth: AmqpAuth::External,
        tls: Some(dev::files(&rabbit::dev_certs_dir(), certificate)),
        connection_name: name.to_owned(),
        ..AmqpSettings::new(broker.amqps_url())
    }
}

fn laissez_passer(reference: &str) -> Vec<u8> {
    gateway_support::fixture_text(EMBASSY, "in/lpc-issued.xml")
        .replace("ABJ-RBT-2026-0902", reference)
        .into_bytes()
}

/// Publishes `count` messages as the embassy, with at most `window` unconfirmed.
async fn publish_all(channel: &Channel, round: usize, count: usize, window: usize) {
    let mut pending = VecDeque::with_capacity(window);
    for i in 0..count {
        if pending.len() >= window {
            let confirm: lapin::PublisherConfirm = pending.pop_front().expect("a confirm");
            assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None));
        }
        let reference = format!("ABJ-BENCH-{round:02}-{i:06}");
        let properties = BasicProperties::default()
            .with_user_id(partner_user(EMBASSY).into())
            .with_message_id(reference.as_str().into())
            .with_content_type("application/xml".into())
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                INBOUND_EXCHANGE.into(),
                EMBASSY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &laissez_passer(&reference),
                properties,
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
    }
    for confirm in pending {
        assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None));
    }
}

fn delivered(running: &RunningGateway) -> u64 {
    running
        .gateway
        .metrics
        .deliveries
        .get_or_create(&DeliveryLabels {
            recipient: BORDER_POLICE.to_owned(),
            channel: "amqp",
            outcome: "delivered",
        })
        .get()
}

fn accepted(running: &RunningGateway) -> u64 {
    running
        .gateway
        .metrics
        .messages
        .get_or_create(&MessageLabels {
            partner: EMBASSY.to_owned(),
            transport: "amqp",
            outcome: "accepted",
        })
        .get()
}

fn main() {
    let messages = env_or("AMQP_BENCH_MESSAGES", 2000);
    let rounds = env_or("AMQP_BENCH_ROUNDS", 3).max(1);
    let broker = Broker::start();
    define(&broker);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = registry(dir.path());
    let mut config = gateway_support::test_config(&dir.path().join("data"), &registry);
    let mut gateway_settings = settings(&broker, "gateway-client", "passerelle-bench");
    gateway_settings.prefetch = u16::try_from(env_or("AMQP_BENCH_PREFETCH", 64)).unwrap_or(64);
    gateway_settings.publish_in_flight = env_or("AMQP_BENCH_IN_FLIGHT", 64);
    config.amqp = Some(gateway_settings);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (flow, raw) = runtime.block_on(async {
        let running = RunningGateway::start(&config)
            .await
            .expect("the gateway starts");
        // Wait until the transport consumes.
        let admin = gateway_support::Admin::new(running.admin_addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while admin.get("/ready").await.status != 200 {
            assert!(
                Instant::now() < deadline,
                "the AMQP transport never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let embassy = amqp::connect(&settings(&broker, EMBASSY, "bench-embassy"))
            .await
            .expect("the embassy connects");
        let embassy_channel = amqp::publisher_channel(&embassy).await.expect("a channel");
        let probe = amqp::connect(&settings(&broker, "gateway-client", "bench-probe"))
            .await
            .expect("the probe connects");
        let probe_channel = probe.create_channel().await.expect("a channel");
        amqp::declare_probe_queue(&probe_channel, PROBE_QUEUE)
            .await
            .expect("the probe queue");
        let payload = laissez_passer("ABJ-BENCH-PROBE");

        let mut flow = Vec::new();
        let mut raw = Vec::new();
        for round in 0..rounds {
            let rate =
                amqp::publish_confirm_rate(&probe_channel, PROBE_QUEUE, &payload, messages, 64)
                    .await
                    .expect("the raw rate");
            raw.push(rate);

            let before = delivered(&running);
            let accepted_before = accepted(&running);
            let started = Instant::now();
            publish_all(&embassy_channel, round, messages, 256).await;
            let published = started.elapsed();
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut all_accepted = None;
            while delivered(&running) < before + messages as u64 {
                if all_accepted.is_none() && accepted(&running) >= accepted_before + messages as u64
                {
                    all_accepted = Some(started.elapsed());
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: only {} of {messages} delivered",
                    delivered(&running) - before
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let rate = messages as f64 / elapsed;
            flow.push(rate);
            let all_accepted = all_accepted.unwrap_or_else(|| started.elapsed());
            eprintln!(
                "round {round}: flow {rate:.0} msg/s ({messages} in {elapsed:.2} s: published in \
                 {:.2} s, all accepted after {:.2} s); raw publish-confirm {:.0} msg/s",
                published.as_secs_f64(),
                all_accepted.as_secs_f64(),
                raw[round]
            );
            // Empty the queues the benchmark fills, outside the measurement.
            for queue in [outbound_queue(BORDER_POLICE), inbound_queue(EMBASSY)] {
                probe_channel
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .expect("purge");
            }
        }
        let _ = embassy.close(200, "OK".into()).await;
        let _ = probe.close(200, "OK".into()).await;
        running.shutdown().await.expect("a clean shutdown");
        (flow, raw)
    });
    let flow_median = median(&flow);
    let raw_median = median(&raw);
    println!(
        "amqp flow: CI XML in -> map, validate, audit, record -> DGSN XML out, confirmed and recorded"
    );
    println!(
        "  {messages} messages x {rounds} rounds: median {flow_median:.0} msg/s (rounds: {})",
        flow.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "raw publish-confirm, same broker (quorum queue, {} B XML, 64 in flight): median {raw_median:.0} msg/s (rounds: {})",
        laissez_passer("ABJ-BENCH-PROBE").len(),
        raw.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ratio flow / raw: {:.2} (each flow message is one publish in and one publish out, plus \
         the audit entries and store records of its acceptance and of its delivery)",
        flow_median / raw_median
    );
    drop(broker);
}
