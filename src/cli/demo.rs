//! `passerelle demo`: the complete return of case RVA-2026-004211, played by every partner
//! against a gateway started on loopback.
//!
//! The gateway runs in this process with the development PKI, the sample registry and its
//! storage under `var/demo`. Each partner is a real client: an HTTPS client with its own
//! certificate, a webhook endpoint that requires the gateway's client certificate, or an AMQP
//! client of a private RabbitMQ broker when one is installed. At the end the auditor's
//! certificate reads the case's trail, the evidence bundle is verified offline, and the
//! timeline is printed with each entry's verification status.

use anyhow::{Context, bail};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Confirmation};
use passerelle::amqp::broker::{self, Broker};
use passerelle::amqp::topology::{
    INBOUND_EXCHANGE, outbound_queue, partner_permissions, partner_user,
};
use passerelle::amqp::{AmqpAuth, AmqpSettings};
use passerelle::audit::bundle::verify_bundle;
use passerelle::config::Config;
use passerelle::service::RunningGateway;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `passerelle demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its gateway's data, registry and evidence (emptied first).
    #[arg(long, default_value = "var/demo")]
    pub dir: PathBuf,
}

/// The case the demo plays.
const CASE: &str = "RVA-2026-004211";

/// The marker that says a folder belongs to the demo and may be emptied.
const MARKER: &str = ".passerelle-demo";

/// One message of the story: who sends what.
struct Step {
    partner: &'static str,
    file: &'static str,
    content_type: &'static str,
    what: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        partner: "ma.interieur",
        file: "demo/ministry-case-registered.json",
        content_type: "application/cloudevents+json",
        what: "the ministry registers the case",
    },
    Step {
        partner: "ma.interieur",
        file: "mappings/fixtures/ma.interieur/in/identification-requested.json",
        content_type: "application/cloudevents+json",
        what: "the ministry asks the consulate to identify the person",
    },
    Step {
        partner: "ma.interieur",
        file: "mappings/fixtures/ma.interieur/in/lpc-requested.json",
        content_type: "application/cloudevents+json",
        what: "the ministry asks for a laissez-passer",
    },
    Step {
        partner: "sn.consulat.casablanca",
        file: "mappings/fixtures/sn.consulat.casablanca/in/identification-result.xml",
        content_type: "application/xml",
        what: "the consulate identifies the person (its XML)",
    },
    Step {
        partner: "sn.consulat.casablanca",
        file: "mappings/fixtures/sn.consulat.casablanca/in/lpc-issued.xml",
        content_type: "application/xml",
        what: "the consulate issues the laissez-passer (its XML, with MRZ)",
    },
    Step {
        partner: "iom.ma",
        file: "demo/iom-ma-travel-booked.json",
        content_type: "application/json",
        what: "IOM Morocco books the flight",
    },
    Step {
        partner: "ma.dgsn",
        file: "mappings/fixtures/ma.dgsn/in/exit-authorisation.xml",
        content_type: "application/xml",
        what: "the DGSN authorises the exit",
    },
    Step {
        partner: "airline.at",
        file: "mappings/fixtures/airline.at/in/passenger-boarded.json",
        content_type: "application/json",
        what: "the airline confirms boarding (with the boarding pass barcode)",
    },
    Step {
        partner: "ma.dgsn",
        file: "mappings/fixtures/ma.dgsn/in/border-exit.xml",
        content_type: "application/xml",
        what: "the border post records the exit",
    },
    Step {
        partner: "iom.ma",
        file: "mappings/fixtures/iom.ma/in/allowance-paid.json",
        content_type: "application/json",
        what: "IOM Morocco pays the pre-departure allowance",
    },
    Step {
        partner: "iom.sn",
        file: "mappings/fixtures/iom.sn/in/arrival-confirmed.json",
        content_type: "application/json",
        what: "IOM Senegal confirms the arrival",
    },
    Step {
        partner: "iom.sn",
        file: "mappings/fixtures/iom.sn/in/reintegration-update.json",
        content_type: "application/json",
        what: "IOM Senegal reports on reintegration",
    },
];

/// What a webhook endpoint received.
#[derive(Debug, Clone)]
struct Received {
    recipient: String,
    content_type: String,
    body: Vec<u8>,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

/// A partner's webhook endpoint: HTTPS on loopback, requiring the gateway's certificate.
fn start_webhook_endpoint(
    recipient: &'static str,
    received: Inbox,
) -> anyhow::Result<(u16, actix_web::dev::ServerHandle)> {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    let tls = passerelle::tls::server_config(&passerelle::tls::dev::files(
        Path::new("certs/dev"),
        "server",
    ))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        let received = received.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let received = received.clone();
            async move {
                let content_type = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Ok(mut r) = received.lock() {
                    r.push(Received {
                        recipient: recipient.to_owned(),
                        content_type,
                        body: body.to_vec(),
                    });
                }
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen_rustls_0_23(listener, (*tls).clone())?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok((port, handle))
}

/// The sample registry, with the webhook endpoints on loopback and, without a broker, the
/// AMQP partners on the inbox.
fn demo_registry(
    dir: &Path,
    webhooks: &[(&str, u16)],
    amqp_fallback: bool,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let text = std::fs::read_to_string("config/registry.toml")
        .context("reading config/registry.toml (run the demo from the repository)")?;
    let mut registry: toml::Table = toml::from_str(&text)?;
    let mut moved = Vec::new();
    if let Some(toml::Value::Array(partners)) = registry.get_mut("partner") {
        for partner in partners.iter_mut().filter_map(toml::Value::as_table_mut) {
            let id = partner
                .get("id")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let Some(delivery) = partner
                .get_mut("delivery")
                .and_then(toml::Value::as_table_mut)
            else {
                continue;
            };
            if let Some((_, port)) = webhooks.iter().find(|(p, _)| *p == id) {
                delivery.insert(
                    "url".into(),
                    toml::Value::String(format!("https://localhost:{port}/{id}")),
                );
            }
            if amqp_fallback && delivery.get("mode").and_then(toml::Value::as_str) == Some("amqp") {
                // An inbox serves canonical events in structured mode, always: it takes no
                // `cloudevents` choice.
                delivery.insert("mode".into(), toml::Value::String("inbox".into()));
                delivery.remove("cloudevents");
                moved.push(id);
            }
        }
    }
    let path = dir.join("registry.toml");
    std::fs::write(&path, toml::to_string(&registry)?)?;
    Ok((path, moved))
}

/// Starts a private RabbitMQ node with the broker users of the gateway and the AMQP
/// partners, if RabbitMQ is installed and starts.
async fn start_broker() -> Option<Broker> {
    if !broker::is_installed() {
        return None;
    }
    say!("Starting a private RabbitMQ broker on loopback for the AMQP partners...");
    let started = tokio::task::spawn_blocking(|| {
        let broker = Broker::try_start()?;
        define_users(&broker)?;
        Ok::<_, String>(broker)
    })
    .await;
    match started {
        Ok(Ok(broker)) => {
            say!(
                "RabbitMQ is up (amqps://127.0.0.1:{}), in {:.1} s.\n",
                broker.amqps_port(),
                broker.start_time().as_secs_f64()
            );
            Some(broker)
        }
        Ok(Err(why)) => {
            say!("RabbitMQ did not start: {}", why.trim());
            None
        }
        Err(_) => None,
    }
}

/// The broker users: the gateway, and each AMQP partner, named by their certificates' URI
/// (SASL EXTERNAL), with the permissions `docs/amqp.md` lists.
fn define_users(broker: &Broker) -> Result<(), String> {
    let gateway = "urn:gateway:passerelle";
    let mut users = vec![serde_json::json!({"name": gateway, "password_hash": "", "tags": []})];
    let mut permissions = vec![serde_json::json!({"user": gateway, "vhost": "/",
        "configure": ".*", "write": ".*", "read": ".*"})];
    for partner in ["ci.ambassade.rabat", "iom.sn"] {
        let p = partner_permissions(partner);
        users.push(
            serde_json::json!({"name": partner_user(partner), "password_hash": "", "tags": []}),
        );
        permissions.push(
            serde_json::json!({"user": partner_user(partner), "vhost": "/",
            "configure": p.configure, "write": p.write, "read": p.read}),
        );
    }
    let definitions = serde_json::json!({"users": users, "permissions": permissions});
    let path = broker.dir().join("definitions.json");
    std::fs::write(&path, definitions.to_string()).map_err(|e| e.to_string())?;
    std::panic::catch_unwind(|| {
        broker.rabbitmqctl(&["import_definitions", &path.display().to_string()])
    })
    .map(|_| ())
    .map_err(|_| "the broker users could not be defined".to_owned())
}

/// Waits until the gateway's AMQP connection is up.
async fn wait_until_ready(gateway: &RunningGateway) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if gateway.readiness.all_up() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway's AMQP connection did not come up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A partner's AMQP connection, with its certificate.
async fn partner_connection(broker: &Broker, partner: &str) -> anyhow::Result<lapin::Connection> {
    Ok(passerelle::amqp::connect(&AmqpSettings {
        auth: AmqpAuth::External,
        tls: Some(passerelle::tls::dev::files(Path::new("certs/dev"), partner)),
        connection_name: format!("demo-{partner}"),
        ..AmqpSettings::new(format!("amqps://127.0.0.1:{}/%2f", broker.amqps_port()))
    })
    .await?)
}

/// What the demo prints of an AMQP message's acceptance.
struct AmqpAck {
    event_type: String,
    log_index: u64,
    recipients: Vec<String>,
}

/// Publishes a partner's message on AMQP, as the partner, and waits until the gateway has
/// accepted it (AMQP senders get no answer: their message is acknowledged on the queue).
async fn send_over_amqp(
    broker: &Broker,
    gateway: &RunningGateway,
    step: &Step,
    body: &[u8],
) -> anyhow::Result<AmqpAck> {
    let g = &gateway.gateway;
    let event = match g
        .mappings
        .partner(step.partner)
        .context("no mapping for the partner")?
        .decode(body)?
    {
        passerelle::mapping::Decoded::Event(mapped) => mapped.event,
        passerelle::mapping::Decoded::Ignored { .. } => bail!("{} is ignored", step.file),
    };
    let (source, id) = (
        event["source"].as_str().unwrap_or_default().to_owned(),
        event["id"].as_str().unwrap_or_default().to_owned(),
    );
    let connection = partner_connection(broker, step.partner).await?;
    let channel = passerelle::amqp::publisher_channel(&connection).await?;
    let confirmation = channel
        .basic_publish(
            INBOUND_EXCHANGE.into(),
            step.partner.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default()
                .with_user_id(partner_user(step.partner).into())
                .with_message_id(id.clone().into())
                .with_content_type(step.content_type.into())
                .with_delivery_mode(2),
        )
        .await?
        .await?;
    if !matches!(confirmation, Confirmation::Ack(None)) {
        bail!("the broker did not take {}: {confirmation:?}", step.file);
    }
    let _ = connection.close(200, "done".into()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(record) = g.store.accepted(&source, &id)?
            && record.confirmed
        {
            return Ok(AmqpAck {
                event_type: record.event_type,
                log_index: record.log_index,
                recipients: record.recipients,
            });
        }
        if Instant::now() > deadline {
            bail!("the gateway did not accept {} within 30 s", step.file);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads what waits on a partner's outbound queue, as the partner: each message's content
/// type and CloudEvents type.
async fn read_queue(broker: &Broker, partner: &str) -> anyhow::Result<Vec<(String, String)>> {
    let connection = partner_connection(broker, partner).await?;
    let channel = connection.create_channel().await?;
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match channel
            .basic_get(
                outbound_queue(partner).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            Some(message) => {
                let props = &message.delivery.properties;
                let content_type = props
                    .content_type()
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let kind = props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("cloudEvents_type").cloned())
                    .map(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                taken.push((content_type, kind));
            }
            // Empty again after something came: that is all for now.
            None if !taken.is_empty() => break,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(taken)
}

/// What a pushed message is: its XML root element, or its JSON `noticeType`.
fn message_kind(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        return json["noticeType"].as_str().unwrap_or("JSON").to_owned();
    }
    String::from_utf8_lossy(body)
        .split('<')
        .find(|t| !t.is_empty() && !t.starts_with('?'))
        .and_then(|t| t.split([' ', '>']).next())
        .unwrap_or("?")
        .to_owned()
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a demo folder; choose another with --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "Passerelle demo data; emptied by every run.\n",
    )?;
    Ok(())
}

impl DemoArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        if !Path::new("config/registry.toml").exists() || !Path::new("certs/dev/ca.pem").exists() {
            bail!(
                "run the demo from the repository's root (it uses config/, certs/dev/, mappings/)"
            );
        }
        prepare_dir(&self.dir)?;
        // The gateway's errors (a broker it cannot reach, a file it cannot use) on standard
        // error, so that a demo that fails says why; RUST_LOG asks for more. (The AMQP client
        // library's own errors are left out: it reports the demo's orderly close as one.)
        super::serve::init_logging_from("error,lapin=off");
        actix_web::rt::System::new().block_on(play(self.dir))
    }
}

async fn play(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    say!("Passerelle demo: the return of case {CASE}\n");

    let received: Inbox = Arc::default();
    let (dgsn_port, dgsn) = start_webhook_endpoint("ma.dgsn", received.clone())?;
    let (airline_port, airline) = start_webhook_endpoint("airline.at", received.clone())?;

    // AMQP partners talk to a private broker when RabbitMQ is installed; otherwise they use
    // REST, and the demo says so.
    let broker = start_broker().await;
    let (registry, moved) = demo_registry(
        &dir,
        &[("ma.dgsn", dgsn_port), ("airline.at", airline_port)],
        broker.is_none(),
    )?;
    if !moved.is_empty() {
        say!(
            "RabbitMQ is not available here (Debian package rabbitmq-server): the AMQP partners \
             ({}) use REST instead.\n",
            moved.join(", ")
        );
    }
    let amqp_partners: Vec<&str> = if broker.is_some() {
        vec!["ci.ambassade.rabat", "iom.sn"]
    } else {
        Vec::new()
    };

    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.admin.listen = "127.0.0.1:0".parse()?;
    config.paths.registry = registry;
    config.paths.data = dir.join("data");
    config.delivery.initial_backoff_ms = 100;
    if let Some(broker) = &broker {
        config.amqp = Some(AmqpSettings {
            auth: AmqpAuth::External,
            tls: Some(passerelle::tls::dev::files(
                Path::new("certs/dev"),
                "gateway-client",
            )),
            connection_name: "passerelle-demo".to_owned(),
            ..AmqpSettings::new(format!("amqps://127.0.0.1:{}/%2f", broker.amqps_port()))
        });
    }
    let gateway = RunningGateway::start(&config).await?;
    if broker.is_some() {
        wait_until_ready(&gateway).await?;
    }
    let base = format!("https://localhost:{}", gateway.addr.port());
    say!(
        "gateway: https://{} (mutual TLS, development PKI), admin http://{}, data in {}\n",
        gateway.addr,
        gateway.admin_addr,
        dir.join("data").display()
    );

    // 1. Every partner sends its part of the story.
    say!("1. The partners send their messages");
    for (n, step) in STEPS.iter().enumerate() {
        let body = std::fs::read(step.file).with_context(|| format!("reading {}", step.file))?;
        if let Some(broker) = broker
            .as_ref()
            .filter(|_| amqp_partners.contains(&step.partner))
        {
            let ack = send_over_amqp(broker, &gateway, step, &body).await?;
            say!(
                "   {:>2}. {:<24} {} -> published on AMQP, accepted ({}), logged at index {}",
                n + 1,
                step.partner,
                step.what,
                ack.event_type,
                ack.log_index
            );
            say!("        routed to: {}", ack.recipients.join(", "));
            continue;
        }
        let response = super::partner_client(step.partner)?
            .post(format!("{base}/v1/messages"))
            .header("content-type", step.content_type)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let ack: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "step {}: {} answered {status}: {}",
                n + 1,
                step.partner,
                ack["detail"].as_str().unwrap_or_default()
            );
        }
        let recipients: Vec<&str> = ack["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        let anomalies: Vec<&str> = ack["anomalies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        say!(
            "   {:>2}. {:<24} {} -> {} ({}), logged at index {}{}",
            n + 1,
            step.partner,
            step.what,
            status.as_u16(),
            ack["event_type"].as_str().unwrap_or_default(),
            ack["log_index"],
            if anomalies.is_empty() {
                String::new()
            } else {
                format!(", anomalies: {}", anomalies.join(", "))
            }
        );
        say!("        routed to: {}", recipients.join(", "));
    }

    // 2. Every recipient gets its messages, in its own format.
    say!("\n2. The recipients receive them, each in its own format");
    let mut inbox_partners = vec!["ma.interieur", "sn.consulat.casablanca", "iom.ma"];
    inbox_partners.extend(moved.iter().map(String::as_str));
    for partner in &inbox_partners {
        if *partner == "ci.ambassade.rabat" {
            // Not part of a Senegalese national's return.
            continue;
        }
        let http = super::partner_client(partner)?;
        let inbox: serde_json::Value = http
            .get(format!("{base}/v1/inbox?limit=500"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let messages = inbox["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            http.post(format!("{base}/v1/inbox/{}/ack", m["id"]))
                .send()
                .await?
                .error_for_status()?;
        }
        let formats: std::collections::BTreeSet<&str> = messages
            .iter()
            .filter_map(|m| m["content_type"].as_str())
            .collect();
        let withheld: std::collections::BTreeSet<String> = messages
            .iter()
            .flat_map(|m| m["withheld"].as_array().cloned().unwrap_or_default())
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect();
        say!(
            "   {:<24} inbox: {} message(s) ({}), acknowledged{}",
            partner,
            messages.len(),
            formats.into_iter().collect::<Vec<_>>().join(", "),
            if withheld.is_empty() {
                String::new()
            } else {
                format!(
                    "; withheld from it: {}",
                    withheld.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        );
    }
    if let Some(broker) = &broker {
        // The Côte d'Ivoire embassy has no part in a Senegalese national's return.
        for partner in amqp_partners.iter().filter(|p| **p != "ci.ambassade.rabat") {
            let taken = read_queue(broker, partner).await?;
            let kinds: std::collections::BTreeSet<String> = taken
                .iter()
                .map(|(content_type, kind)| format!("{content_type} {kind}"))
                .collect();
            say!(
                "   {:<24} AMQP queue {}: {} message(s) ({})",
                partner,
                outbound_queue(partner),
                taken.len(),
                kinds.into_iter().collect::<Vec<_>>().join("; ")
            );
        }
    }
    // Webhook deliveries are pushed by the gateway; wait until the outbox is empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.gateway.store.pending_deliveries() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pushed = received.lock().map(|r| r.clone()).unwrap_or_default();
    for recipient in ["ma.dgsn", "airline.at"] {
        let mine: Vec<&Received> = pushed.iter().filter(|r| r.recipient == recipient).collect();
        let kinds: std::collections::BTreeSet<String> = mine
            .iter()
            .map(|r| format!("{} {}", r.content_type, message_kind(&r.body)))
            .collect();
        say!(
            "   {:<24} webhook: {} message(s) pushed ({})",
            recipient,
            mine.len(),
            kinds.into_iter().collect::<Vec<_>>().join("; ")
        );
    }
    let left = gateway.gateway.store.pending_deliveries();
    if left > 0 {
        say!("   {left} deliveries are still waiting");
    }

    // 3. The auditor reads the case's trail and verifies it offline.
    say!("\n3. The auditor reads the trail of case {CASE}");
    let log = gateway.gateway.log.clone();
    let verifier = log.verifier().clone();
    tokio::task::spawn_blocking(move || log.sync()).await??;
    let auditor = super::partner_client("audit.igat")?;
    let bundle = auditor
        .get(format!("{base}/v1/audit/trails?case={CASE}&format=bundle"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let bundle_path = dir.join(format!("evidence-{CASE}.json"));
    std::fs::write(&bundle_path, &bundle)?;
    let verified = verify_bundle(&bundle, Some(&verifier)).context("verifying the bundle")?;
    say!(
        "   checkpoint: {} entries, signed by {}",
        verified.checkpoint.size,
        verifier.to_verifier_key()
    );
    for (index, leaf) in &verified.entries {
        say!(
            "   {index:>5}  {}  {}  [inclusion proof and signature verified]",
            leaf.time,
            super::audit::describe(leaf)
        );
    }
    say!(
        "\n   {} entries for the case, every one verified against the signed checkpoint.",
        verified.entries.len()
    );
    say!("   Evidence bundle: {}", bundle_path.display());
    say!(
        "   Check it yourself, with that none of the case's entries is left out:\n   \
         passerelle audit verify-bundle {} --key '{}' --complete-in {}",
        bundle_path.display(),
        verifier.to_verifier_key(),
        dir.join("data/audit-log").display()
    );

    // 4. The receipt the consulate got for its laissez-passer, and its inclusion proof, as an
    // auditor reads them, to check that the entry the gateway acknowledged is in the log.
    let (sender, event_id) = ("sn.consulat.casablanca", "CGSN-CASA-2026-00417");
    let answer: serde_json::Value = auditor
        .get(format!(
            "{base}/v1/receipts/{event_id}?source=urn:partner:{sender}"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (Some(receipt), Some(proof)) = (answer["receipt"].as_str(), answer["proof"].as_str())
    else {
        bail!("the receipt of {event_id} came without its receipt or its proof: {answer}");
    };
    let receipt_path = dir.join(format!("receipt-{event_id}.txt"));
    let proof_path = dir.join(format!("proof-{event_id}.txt"));
    std::fs::write(&receipt_path, receipt)?;
    std::fs::write(&proof_path, proof)?;
    say!(
        "\n4. The receipt of the laissez-passer {event_id} (log index {}), and its inclusion \
         proof: {} and {}",
        answer["log_index"],
        receipt_path.display(),
        proof_path.display()
    );
    say!(
        "   Check them yourself:\n   passerelle audit verify-receipt {} --key '{}' --proof {}",
        receipt_path.display(),
        verifier.to_verifier_key(),
        proof_path.display()
    );

    gateway.shutdown().await?;
    dgsn.stop(true).await;
    airline.stop(true).await;
    if let Some(mut broker) = broker {
        tokio::task::spawn_blocking(move || broker.stop()).await?;
    }
    say!(
        "\nThe demo took {:.1} s. Run it again at will: it starts from an empty {}.",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
