//! The REST gateway end to end, over real mutual-TLS connections on loopback: a gateway started
//! in process with [`RunningGateway::start`], partners calling it with their development
//! certificates, webhook recipients played by HTTPS receivers that require the gateway's client
//! certificate, and the auditor checking every proof offline with the crate's own verifiers.
//!
//! - [`the_return_of_case_rva_2026_004211`]: the whole return, every partner in its own format;
//!   routing, native outbound formats, need-to-know, receipts, the inbox, webhooks, AMQP outbox,
//!   the auditors' trails and bundles.
//! - [`refusals_are_answered_with_problems_and_audited`]: TLS refusals, unknown certificate, wrong
//!   role, size, DOCTYPE, schema, media type, duplicates; the audit log's `rejected` entries.
//! - [`every_documented_route_is_served`]: the router serves every route of `ROUTES`, which
//!   `tests/openapi.rs` checks against the OpenAPI document.
//! - [`a_partner_over_its_rate_gets_429`]: the per-partner rate limit, and the one that
//!   unregistered certificates share.
//! - [`a_webhook_down_then_up_gets_each_delivery_exactly_once`]: retries on a refused connection,
//!   on `503` with `Retry-After`, and after the endpoint went away and came back.
//! - [`duplicates_sent_at_once_get_the_original_receipt`]: concurrent duplicates, and a
//!   message left unconfirmed by a failure, settled by the sender's next attempt.
//! - [`a_dead_letter_is_listed_and_redelivered`]: dead letters and the admin's redelivery.
//! - [`a_delivery_that_could_not_be_written_is_refused_redelivery`]: a dead letter that
//!   redelivery cannot mend (`409`), discarded instead.
//! - [`only_the_mappings_in_force_are_used`]: the registry's `mappings`, inbound (`403`) and
//!   outbound (a dead delivery).
//! - [`an_inbox_read_and_acknowledged_twice_at_once_is_audited_once`]: concurrent inbox reads
//!   and acknowledgements.
//! - [`a_body_that_does_not_arrive_is_answered_400_and_lets_the_next_in`]: bodies read a
//!   bounded number at a time, each within a time limit.
//!
//! The AMQP recipients: iom.sn is switched to the inbox in the test registry (so that its
//! deliveries can be read over REST); ci.ambassade.rabat stays on AMQP, and its deliveries are
//! checked as pending in the outbox (no broker runs here).

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/pki.rs"]
mod pki;

use gateway_support::{
    Admin, Answer, Client, Entry, Receiver, RegistryChanges, ServedGateway, ServedSetup,
    VerifiedTrail, anonymous_tls, client_tls, copy_dir, dev_dir, fixture, fixture_json,
    fixture_text, kind_of, mappings_unwritable_for_dgsn, test_config, verify_trail, wait_for,
    write_registry,
};
use passerelle::audit::merkle::leaf_hash;
use passerelle::audit::{
    AuditLog, Checkpoint, Fact, Kind, NoteSigner, NoteVerifier, Options, Query, Receipt, TlogProof,
    Transport,
};
use passerelle::config::Config;
use passerelle::server::routes::ROUTES;
use passerelle::service::RunningGateway;
use passerelle::store::{AcceptedRecord, Channel, DeliveryState, LogEntry, NewDelivery, Recorded};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CASE: &str = "RVA-2026-004211";
/// The other case of the fixtures (an Ivorian woman, a trafficking victim).
const OTHER_CASE: &str = "RVA-2026-004305";
const WAIT: Duration = Duration::from_secs(15);

/// A gateway with its data folder.
struct TestGateway {
    running: RunningGateway,
    dir: tempfile::TempDir,
}

impl TestGateway {
    async fn start(changes: &RegistryChanges, tune: impl FnOnce(&mut Config)) -> TestGateway {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let registry = write_registry(dir.path(), changes);
        let mut config = test_config(&dir.path().join("data"), &registry);
        tune(&mut config);
        let running = RunningGateway::start(&config)
            .await
            .expect("the gateway starts");
        TestGateway { running, dir }
    }

    fn client(&self, partner: &str) -> Client {
        Client::new(partner, self.running.addr)
    }

    fn admin(&self) -> Admin {
        Admin::new(self.running.admin_addr)
    }

    fn verifier(&self) -> NoteVerifier {
        self.running.gateway.log.verifier().clone()
    }

    async fn stop(self) {
        self.running.shutdown().await.expect("a clean shutdown");
    }

    /// Stops the gateway and starts it again on the same data, with the sample registry
    /// changed by `changes` (and the default settings).
    async fn restart(self, changes: &RegistryChanges) -> TestGateway {
        let dir = self.dir;
        self.running.shutdown().await.expect("a clean shutdown");
        let registry = write_registry(dir.path(), changes);
        let config = test_config(&dir.path().join("data"), &registry);
        let running = RunningGateway::start(&config)
            .await
            .expect("the gateway starts again");
        TestGateway { running, dir }
    }
}

/// Checks an acknowledgement: `status`, the event, and a receipt that verifies with the log's
/// key and names the acknowledged index and leaf hash.
fn check_ack(ack: &Value, status: &str, event_id: &str, verifier: &NoteVerifier) {
    assert_eq!(ack["status"], status, "{ack}");
    assert_eq!(ack["event_id"], event_id, "{ack}");
    let index = ack["log_index"].as_u64().expect("log_index");
    let leaf = ack["leaf_hash"].as_str().expect("leaf_hash");
    assert_eq!(leaf.len(), 64, "a hex SHA-256: {leaf}");
    let receipt = Receipt::verify(ack["receipt"].as_str().expect("receipt"), verifier)
        .expect("the receipt verifies with the log's key");
    assert_eq!(receipt.index, index);
    assert_eq!(hex::encode(receipt.leaf_hash.0), leaf);
    assert_eq!(receipt.origin, gateway_support::ORIGIN);
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What a recipient must get: exactly these bytes, or this JSON value.
#[derive(Debug, Clone)]
enum Expect {
    Exact(String),
    Json(Value),
}

impl Expect {
    fn check(&self, who: &str, event_id: &str, body: &[u8]) {
        match self {
            Expect::Exact(text) => assert_eq!(
                String::from_utf8_lossy(body),
                *text,
                "what {who} got for {event_id}"
            ),
            Expect::Json(value) => {
                let got: Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("{who} got no JSON for {event_id}: {e}"));
                assert_eq!(got, *value, "what {who} got for {event_id}");
            }
        }
    }
}

/// How a message is sent.
enum Body {
    /// The partner's native format, with its media type.
    Native(&'static str, Vec<u8>),
    /// A structured-mode CloudEvent.
    Structured(Value),
    /// The same, sent in binary mode (`ce-*` headers).
    Binary(Value),
}

struct Step {
    sender: &'static str,
    body: Body,
    /// The canonical event it becomes.
    event: Value,
    /// Who receives it.
    recipients: &'static [&'static str],
}

impl Step {
    fn id(&self) -> &str {
        self.event["id"].as_str().expect("an id")
    }
}

/// The recipients a step's acknowledgement names: all but the IOM mission of the destination
/// of a boarding (Senegal's), which the case's booking decides and its sender is not told of.
fn told_to_sender(step: &Step) -> BTreeSet<String> {
    let booking_decides = step.event["type"] == "ma.rva.boarding.confirmed";
    step.recipients
        .iter()
        .filter(|r| !(booking_decides && **r == "iom.sn"))
        .map(|r| (*r).to_owned())
        .collect()
}

/// The travel booking of case RVA-2026-004211, written from IOM Morocco's booking fixture (which
/// is for another case): flight AT 505 CMN-DSS on 2026-11-20, PNR K7Q2XM, as the DGSN's PV and the
/// airline's boarding message say. Returns the native message, the canonical event, and the
/// texts that the DGSN and the airline must receive.
fn travel_booking() -> (Vec<u8>, Value, String, Value) {
    const ID: &str = "IOM-MA-2026-11-10-6c3d88";
    const TICKET: &str = "147-2400012400";
    let mut native = fixture_json("iom.ma", "in/travel-booked.json");
    native["message_id"] = json!(ID);
    native["case"]["rva_case_id"] = json!(CASE);
    native["booking"]["pnr"] = json!("K7Q2XM");
    native["booking"]["ticket_number"] = json!(TICKET);
    let segment = &mut native["booking"]["segments"][0];
    segment["flight_number"] = json!("505");
    segment["to"] = json!("DSS");
    segment["date"] = json!("2026-11-20");

    let mut event = fixture_json("iom.ma", "in/travel-booked.expected.json");
    event["id"] = json!(ID);
    event["subject"] = json!(CASE);
    event["data"]["case_id"] = json!(CASE);
    event["data"]["pnr"] = json!("K7Q2XM");
    event["data"]["ticket_number"] = json!(TICKET);
    let segment = &mut event["data"]["segments"][0];
    segment["number"] = json!("505");
    segment["destination"] = json!("DSS");
    segment["date"] = json!("2026-11-20");

    let replace = |text: String| {
        text.replace("IOM-MA-2026-11-10-5b2c77", ID)
            .replace(OTHER_CASE, CASE)
            .replace("R4TT9B", "K7Q2XM")
            .replace("147-2400012399", TICKET)
            .replace("\"525\"", "\"505\"")
            .replace("2026-11-27", "2026-11-20")
            .replace("ABJ", "DSS")
    };
    let dgsn = replace(fixture_text("ma.dgsn", "out/travel-booked.expected.xml"));
    let airline: Value = serde_json::from_str(&replace(fixture_text(
        "airline.at",
        "out/travel-booked-without-names.expected.json",
    )))
    .expect("JSON");
    (
        serde_json::to_vec(&native).expect("JSON"),
        event,
        dgsn,
        airline,
    )
}

/// The ministry's LPC request for the other case, with the person's vulnerabilities and medical
/// needs: the consulate must get neither. Built from the consulate's outbound fixture.
fn vulnerable_lpc_request() -> (Value, Value) {
    let mut event = fixture_json(
        "ci.ambassade.rabat",
        "out/lpc-requested-vulnerable.event.json",
    );
    let object = event.as_object_mut().expect("an event");
    let mapping_hash =
        fixture_json("ma.interieur", "in/lpc-requested.expected.json")["mappinghash"].clone();
    object.remove("mappingid");
    object.remove("mappinghash");
    object.insert("id".into(), json!("MI-DMF-2026-000952"));
    object.insert("source".into(), json!("urn:partner:ma.interieur"));
    event["data"]["requested_by"] = json!("ma.interieur");
    let mut canonical = event.clone();
    canonical["mappingid"] = json!("ma.interieur/cloudevents");
    canonical["mappinghash"] = mapping_hash;
    (event, canonical)
}

#[actix_web::test]
async fn the_return_of_case_rva_2026_004211() {
    let started = Instant::now();
    let dgsn = Receiver::start();
    let airline = Receiver::start();
    let changes = RegistryChanges::new()
        .webhook("ma.dgsn", &dgsn.url("/notices"))
        .webhook("airline.at", &airline.url("/programme-notices"))
        .inbox("iom.sn");
    let gateway = TestGateway::start(&changes, |_| {}).await;
    let verifier = gateway.verifier();

    let (booking, booking_event, booking_for_dgsn, booking_for_airline) = travel_booking();
    let (vulnerable_request, vulnerable_event) = vulnerable_lpc_request();
    let expected =
        |partner: &str, name: &str| fixture_json(partner, &format!("in/{name}.expected.json"));
    let native = |partner: &str, name: &str| fixture(partner, &format!("in/{name}"));
    let steps = vec![
        // Phase 1: IOM Morocco registers the case; the ministry asks the consulate to identify.
        Step {
            sender: "iom.ma",
            body: Body::Native("application/json", native("iom.ma", "case-registered.json")),
            event: expected("iom.ma", "case-registered"),
            recipients: &["ma.interieur"],
        },
        Step {
            sender: "ma.interieur",
            body: Body::Structured(fixture_json(
                "ma.interieur",
                "in/identification-requested.json",
            )),
            event: expected("ma.interieur", "identification-requested"),
            recipients: &["sn.consulat.casablanca"],
        },
        // Phase 2: identification, LPC, ticket, exit authorisation, boarding, border exit.
        Step {
            sender: "sn.consulat.casablanca",
            body: Body::Native(
                "application/xml",
                native("sn.consulat.casablanca", "identification-result.xml"),
            ),
            event: expected("sn.consulat.casablanca", "identification-result"),
            recipients: &["ma.interieur", "iom.ma"],
        },
        Step {
            sender: "ma.interieur",
            body: Body::Binary(fixture_json("ma.interieur", "in/lpc-requested.json")),
            event: expected("ma.interieur", "lpc-requested"),
            recipients: &["sn.consulat.casablanca"],
        },
        Step {
            sender: "sn.consulat.casablanca",
            body: Body::Native(
                "application/xml; charset=UTF-8",
                native("sn.consulat.casablanca", "lpc-issued.xml"),
            ),
            event: expected("sn.consulat.casablanca", "lpc-issued"),
            recipients: &["ma.interieur", "iom.ma", "ma.dgsn"],
        },
        Step {
            sender: "iom.ma",
            body: Body::Native("application/json", booking),
            event: booking_event,
            recipients: &["ma.interieur", "ma.dgsn", "airline.at"],
        },
        Step {
            sender: "ma.dgsn",
            body: Body::Native(
                "application/xml",
                native("ma.dgsn", "exit-authorisation.xml"),
            ),
            event: expected("ma.dgsn", "exit-authorisation"),
            recipients: &["ma.interieur", "iom.ma", "airline.at"],
        },
        Step {
            sender: "airline.at",
            body: Body::Native(
                "application/json",
                native("airline.at", "passenger-boarded.json"),
            ),
            event: expected("airline.at", "passenger-boarded"),
            recipients: &["ma.interieur", "iom.ma", "ma.dgsn", "iom.sn"],
        },
        Step {
            sender: "ma.dgsn",
            body: Body::Native("text/xml", native("ma.dgsn", "border-exit.xml")),
            event: expected("ma.dgsn", "border-exit"),
            recipients: &["ma.interieur", "iom.ma"],
        },
        // IOM Morocco's pre-departure allowance, for the ministry's records.
        Step {
            sender: "iom.ma",
            body: Body::Native("application/json", native("iom.ma", "allowance-paid.json")),
            event: expected("iom.ma", "allowance-paid"),
            recipients: &["ma.interieur"],
        },
        // Phase 3: arrival in Dakar and reintegration.
        Step {
            sender: "iom.sn",
            body: Body::Native(
                "application/json",
                native("iom.sn", "arrival-confirmed.json"),
            ),
            event: expected("iom.sn", "arrival-confirmed"),
            recipients: &["ma.interieur", "iom.ma"],
        },
        Step {
            sender: "iom.sn",
            body: Body::Native(
                "application/json",
                native("iom.sn", "reintegration-update.json"),
            ),
            event: expected("iom.sn", "reintegration-update"),
            recipients: &["ma.interieur", "iom.ma"],
        },
        // The other case: a trafficking victim, whose LPC requests go to the Ivorian embassy
        // (on AMQP) without her vulnerabilities.
        Step {
            sender: "iom.ma",
            body: Body::Native(
                "application/json",
                native("iom.ma", "case-registered-vulnerable.json"),
            ),
            event: expected("iom.ma", "case-registered-vulnerable"),
            recipients: &["ma.interieur"],
        },
        Step {
            sender: "iom.ma",
            body: Body::Native("application/json", native("iom.ma", "lpc-request.json")),
            event: expected("iom.ma", "lpc-request"),
            // The ministry sees every message of every case, IOM's requests too.
            recipients: &["ci.ambassade.rabat", "ma.interieur"],
        },
        Step {
            sender: "ma.interieur",
            body: Body::Structured(vulnerable_request),
            event: vulnerable_event,
            recipients: &["ci.ambassade.rabat"],
        },
    ];
    let main_case_steps = 12;

    // The native texts each recipient must get, where they differ from the canonical event.
    let mut native_out: BTreeMap<(&str, &str), Expect> = BTreeMap::new();
    let out_text =
        |partner: &str, name: &str| Expect::Exact(fixture_text(partner, &format!("out/{name}")));
    native_out.insert(
        ("sn.consulat.casablanca", "MI-DMF-2026-000925"),
        out_text(
            "sn.consulat.casablanca",
            "identification-requested.expected.xml",
        ),
    );
    native_out.insert(
        ("sn.consulat.casablanca", "MI-DMF-2026-000931"),
        out_text("sn.consulat.casablanca", "lpc-requested.expected.xml"),
    );
    native_out.insert(
        ("ma.dgsn", "CGSN-CASA-2026-00417"),
        out_text("ma.dgsn", "lpc-issued.expected.xml"),
    );
    native_out.insert(
        ("ma.dgsn", "IOM-MA-2026-11-10-6c3d88"),
        Expect::Exact(booking_for_dgsn),
    );
    native_out.insert(
        ("ma.dgsn", "AT-DCS-20261120-0505-000112"),
        out_text("ma.dgsn", "boarding-confirmed.expected.xml"),
    );
    native_out.insert(
        ("airline.at", "8f0c2d8e-5a4b-4a57-9f43-0a8d2f6b1c11"),
        Expect::Json(fixture_json(
            "airline.at",
            "out/exit-authorized.expected.json",
        )),
    );
    native_out.insert(
        ("airline.at", "IOM-MA-2026-11-10-6c3d88"),
        Expect::Json(booking_for_airline),
    );
    let ci_request = fixture_text(
        "ci.ambassade.rabat",
        "out/lpc-requested-vulnerable.expected.xml",
    );
    native_out.insert(
        ("ci.ambassade.rabat", "IOM-MA-2026-11-02-19aa01"),
        Expect::Exact(ci_request.clone()),
    );
    native_out.insert(
        ("ci.ambassade.rabat", "MI-DMF-2026-000952"),
        Expect::Exact(ci_request.replace("IOM-MA-2026-11-02-19aa01", "MI-DMF-2026-000952")),
    );
    // The fields need-to-know withholds from each recipient's role, named alike in every
    // delivery to it whatever the event held: the vulnerable returnee's request to her embassy
    // names what the other's to his consulate names. IOM's missions are refused other
    // organisations' internal notes only; the ministry nothing.
    const IOM: &[&str] = &["data.observations"];
    const CONSULAR: &[&str] = &["data.*.biometrics", "data.medical", "data.vulnerabilities"];
    const BORDER_POLICE: &[&str] = &[
        "data.*.biometrics",
        "data.medical",
        "data.reason_text",
        "data.vulnerabilities",
    ];
    const AIRLINE: &[&str] = &[
        "data.*.biometrics",
        "data.holder",
        "data.medical",
        "data.person",
        "data.vulnerabilities",
    ];
    let withheld: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("airline.at", AIRLINE),
        ("ci.ambassade.rabat", CONSULAR),
        ("sn.consulat.casablanca", CONSULAR),
        ("ma.dgsn", BORDER_POLICE),
        ("iom.ma", IOM),
        ("iom.sn", IOM),
    ]);
    // The canonical recipients' outbound fixtures are the canonical event itself.
    assert_eq!(
        fixture_json("ma.interieur", "out/boarding-confirmed.expected.json"),
        steps[7].event
    );
    // IOM's gets the event with what its role never receives named (other organisations'
    // internal notes: none in a boarding).
    let mut for_iom = steps[7].event.clone();
    for_iom["withheld"] = json!("data.observations");
    assert_eq!(
        fixture_json("iom.sn", "out/boarding-confirmed.expected.json"),
        for_iom
    );

    // An auditor reads the case's trail all along, while the log grows: every answer must be
    // consistent (one checkpoint for the proofs, the bundle and the pending list).
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let auditor = gateway.client("audit.igat");
        let verifier = verifier.clone();
        let watching = watching.clone();
        actix_web::rt::spawn(async move {
            let mut reads = 0;
            while watching.load(Ordering::Relaxed) {
                verify_trail(&auditor, &format!("case={CASE}"), &verifier).await;
                reads += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        })
    };

    // ---------------------------------------------------------------- every partner sends
    let mut acks: Vec<Value> = Vec::new();
    for step in &steps {
        let client = gateway.client(step.sender);
        let reply = match &step.body {
            Body::Native(media, bytes) => client.send(media, bytes.clone()).await,
            Body::Structured(event) => {
                client
                    .send(
                        "application/cloudevents+json; charset=utf-8",
                        serde_json::to_vec(event).expect("JSON"),
                    )
                    .await
            }
            Body::Binary(event) => client.send_binary(event).await,
        };
        assert_eq!(
            reply.status,
            202,
            "{} sending {}: {}",
            step.sender,
            step.id(),
            reply.text()
        );
        let ack = reply.json();
        check_ack(&ack, "accepted", step.id(), &verifier);
        assert_eq!(ack["source"], format!("urn:partner:{}", step.sender));
        assert_eq!(ack["event_type"], step.event["type"]);
        assert_eq!(
            strings(&ack["recipients"])
                .into_iter()
                .collect::<BTreeSet<_>>(),
            told_to_sender(step),
            "recipients of {}",
            step.id()
        );
        assert_eq!(
            ack["anomalies"],
            json!([]),
            "{} arrived in order",
            step.id()
        );
        acks.push(ack);
    }
    let indices: BTreeSet<u64> = acks
        .iter()
        .map(|a| a["log_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices.len(), steps.len(), "one log entry per message");

    // Expected deliveries: (recipient, event id) -> the step.
    let mut deliveries: BTreeMap<(&str, &str), &Step> = BTreeMap::new();
    for step in &steps {
        for recipient in step.recipients {
            deliveries.insert((recipient, step.id()), step);
        }
    }
    let expect_withheld = |recipient: &str, _event_id: &str| -> Vec<String> {
        withheld
            .get(recipient)
            .map(|w| w.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default()
    };
    let expect_body = |recipient: &str, event_id: &str, body: &[u8]| {
        let step = deliveries[&(recipient, event_id)];
        match native_out.get(&(recipient, event_id)) {
            Some(expect) => expect.check(recipient, event_id, body),
            None => {
                // A canonical recipient: the canonical event without what its role is
                // refused, named in the `withheld` attribute when there is any (IOM's
                // missions: other organisations' notes, none in this case's events).
                let mut event = step.event.clone();
                let refused = expect_withheld(recipient, event_id);
                if !refused.is_empty() {
                    if let Some(data) = event["data"].as_object_mut() {
                        data.remove("observations");
                    }
                    event["withheld"] = json!(refused.join(","));
                }
                Expect::Json(event).check(recipient, event_id, body);
            }
        }
    };

    // ---------------------------------------------------------------- webhooks (DGSN, airline)
    for (receiver, partner, path, media) in [
        (&dgsn, "ma.dgsn", "/notices", "xml"),
        (&airline, "airline.at", "/programme-notices", "json"),
    ] {
        let want: BTreeSet<&str> = deliveries
            .keys()
            .filter(|(r, _)| *r == partner)
            .map(|(_, e)| *e)
            .collect();
        wait_for(&format!("the webhooks of {partner}"), WAIT, async || {
            (receiver.accepted().len() >= want.len()).then_some(())
        })
        .await;
        let got = receiver.received();
        assert_eq!(
            got.len(),
            want.len(),
            "{partner}: one request per delivery, no retry"
        );
        let mut ids = BTreeSet::new();
        for r in &got {
            assert!(r.accepted());
            assert_eq!(r.path, path);
            assert_eq!(
                r.client,
                vec!["urn:gateway:passerelle".to_owned()],
                "the gateway's certificate"
            );
            assert!(r.content_type.contains(media), "{}", r.content_type);
            assert!(
                r.delivery.parse::<u64>().is_ok(),
                "a delivery id: {:?}",
                r.delivery
            );
            assert!(
                ids.insert(r.delivery.clone()),
                "delivery {} twice",
                r.delivery
            );
            // The key by which the recipient drops repeats, whatever instance delivers.
            assert!(
                r.source.starts_with("urn:partner:"),
                "the event's source: {:?}",
                r.source
            );
            assert!(
                want.contains(r.event_id.as_str()),
                "{partner} got {}",
                r.event_id
            );
            expect_body(partner, &r.event_id, &r.body);
            let text = r.text().to_lowercase();
            for word in ["vulnerab", "trafficking", "medical", "biometric"] {
                assert!(!text.contains(word), "{partner} got {word}: {text}");
            }
            if partner == "airline.at" {
                // No identity detail of the PV or the LPC reaches the airline.
                assert!(
                    !text.contains("diop") && !text.contains("mamadou"),
                    "{text}"
                );
            }
        }
        let got_events: BTreeSet<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(got_events, want);
    }

    // ---------------------------------------------------------------- inboxes
    for partner in ["ma.interieur", "sn.consulat.casablanca", "iom.ma", "iom.sn"] {
        let client = gateway.client(partner);
        let messages = client.inbox(2).await;
        let want: BTreeSet<&str> = deliveries
            .keys()
            .filter(|(r, _)| *r == partner)
            .map(|(_, e)| *e)
            .collect();
        let got: BTreeSet<&str> = messages
            .iter()
            .map(|m| m["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "the inbox of {partner}");
        assert_eq!(messages.len(), want.len());
        for m in &messages {
            let event_id = m["event_id"].as_str().unwrap();
            let step = deliveries[&(partner, event_id)];
            assert_eq!(m["event_type"], step.event["type"]);
            assert_eq!(m["source"], format!("urn:partner:{}", step.sender));
            assert_eq!(strings(&m["withheld"]), expect_withheld(partner, event_id));
            let media = m["content_type"].as_str().unwrap();
            if native_out.contains_key(&(partner, event_id)) {
                assert!(media.contains("xml"), "{media}");
            } else {
                assert_eq!(media, "application/cloudevents+json");
            }
            expect_body(partner, event_id, m["body"].as_str().unwrap().as_bytes());
        }
        // Fetched again before the acknowledgement: still there, in the same order.
        let again = client.inbox(500).await;
        assert_eq!(
            again.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
            messages.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()
        );
        for m in &messages {
            client.ack(m["id"].as_u64().unwrap()).await;
        }
        assert!(
            client.inbox(500).await.is_empty(),
            "{partner}: acknowledged messages leave the inbox"
        );
        // Acknowledging twice is harmless; another partner's delivery is not found.
        client.ack(messages[0]["id"].as_u64().unwrap()).await;
        let other = if partner == "iom.sn" {
            "iom.ma"
        } else {
            "iom.sn"
        };
        let reply = gateway
            .client(other)
            .post(&format!("/v1/inbox/{}/ack", messages[0]["id"]))
            .await;
        reply.problem(404, "not-found");
    }

    watching.store(false, Ordering::Relaxed);
    let reads = watcher
        .await
        .expect("the watching auditor's trails are consistent");
    assert!(reads > 0);

    // ---------------------------------------------------------------- AMQP: pending in the outbox
    let store = &gateway.running.gateway.store;
    let amqp: Vec<_> = store
        .due(Channel::Amqp, u64::MAX, 100)
        .expect("the outbox")
        .into_iter()
        .filter(|d| d.recipient == "ci.ambassade.rabat")
        .collect();
    assert_eq!(amqp.len(), 2, "{amqp:?}");
    for d in &amqp {
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.case_id.as_deref(), Some(OTHER_CASE));
        assert_eq!(
            d.withheld,
            expect_withheld("ci.ambassade.rabat", &d.event_id)
        );
        expect_body("ci.ambassade.rabat", &d.event_id, &d.body);
        let text = String::from_utf8_lossy(&d.body).to_lowercase();
        assert!(
            !text.contains("trafficking") && !text.contains("vulnerab"),
            "{text}"
        );
    }
    assert!(
        store
            .due(Channel::Webhook, u64::MAX, 100)
            .expect("the outbox")
            .is_empty()
    );

    // ---------------------------------------------------------------- the auditors' trail
    let auditor = gateway.client("audit.igat");
    gateway
        .client("ma.interieur")
        .get(&format!("/v1/audit/trails?case={CASE}"))
        .await
        .problem(403, "forbidden");
    auditor
        .get(&format!("/v1/audit/trails?case={CASE}&lpc=LP0417263"))
        .await
        .problem(400, "malformed");

    let main_steps = &steps[..main_case_steps];
    let main_deliveries: Vec<(&str, &str)> = deliveries
        .keys()
        .filter(|(_, e)| main_steps.iter().any(|s| s.id() == *e))
        .copied()
        .collect();
    let inbox_deliveries = main_deliveries
        .iter()
        .filter(|(r, _)| !["ma.dgsn", "airline.at"].contains(r))
        .count();
    let trail: VerifiedTrail = wait_for("a checkpoint covering the whole case", WAIT, async || {
        let trail = verify_trail(&auditor, &format!("case={CASE}"), &verifier).await;
        let complete = trail.pending.is_empty()
            && trail.count("accepted") == main_case_steps
            && trail.count("delivered") == main_deliveries.len()
            && trail.count("acknowledged") == inbox_deliveries;
        complete.then_some(trail)
    })
    .await;
    assert_eq!(
        trail.entries.len(),
        main_case_steps + main_deliveries.len() + inbox_deliveries,
        "accepted, delivered and acknowledged only: no anomaly, failure or refusal"
    );
    for entry in &trail.entries {
        let leaf = &entry.leaf;
        let event_id = leaf.event_id.as_deref().expect("an event id");
        let text = String::from_utf8_lossy(&entry.bytes).into_owned();
        for secret in [CASE, "DIOP", "Mamadou", "LP0417263", "K7Q2XM"] {
            assert!(
                !text.contains(secret),
                "a leaf holds {secret} in clear: {text}"
            );
        }
        assert!(leaf.commitments.is_some(), "{text}");
        match kind_of(leaf).as_str() {
            "accepted" => {
                let step = main_steps
                    .iter()
                    .find(|s| s.id() == event_id)
                    .expect("a step");
                assert_eq!(leaf.sender.as_deref(), Some(step.sender));
                assert_eq!(
                    leaf.recipients.iter().cloned().collect::<BTreeSet<_>>(),
                    set(step.recipients)
                );
                let ack = &acks[steps.iter().position(|s| s.id() == event_id).unwrap()];
                assert_eq!(ack["log_index"], entry.index);
                assert_eq!(
                    hex::encode(leaf_hash(&entry.bytes).0),
                    ack["leaf_hash"].as_str().unwrap(),
                    "the acknowledged leaf hash is the logged entry's"
                );
            }
            kind @ ("delivered" | "acknowledged") => {
                let [recipient] = leaf.recipients.as_slice() else {
                    panic!("one recipient per delivery: {text}")
                };
                let step = deliveries
                    .get(&(recipient.as_str(), event_id))
                    .unwrap_or_else(|| panic!("{kind} to {recipient} of {event_id}"));
                assert_eq!(leaf.sender.as_deref(), Some(step.sender));
                assert_eq!(leaf.withheld, expect_withheld(recipient, event_id));
                if kind == "acknowledged" {
                    assert!(!["ma.dgsn", "airline.at"].contains(&recipient.as_str()));
                }
            }
            other => panic!("unexpected {other} entry: {text}"),
        }
    }
    // Each delivery once, and its acknowledgement after it.
    for (recipient, event_id) in &main_deliveries {
        let of = |kind: &str| -> Vec<u64> {
            trail
                .entries
                .iter()
                .filter(|e| {
                    kind_of(&e.leaf) == kind
                        && e.leaf.event_id.as_deref() == Some(event_id)
                        && e.leaf.recipients == [recipient.to_string()]
                })
                .map(|e| e.index)
                .collect()
        };
        let delivered = of("delivered");
        assert_eq!(delivered.len(), 1, "{recipient} {event_id}");
        let acknowledged = of("acknowledged");
        if ["ma.dgsn", "airline.at"].contains(recipient) {
            assert!(acknowledged.is_empty());
        } else {
            assert_eq!(acknowledged.len(), 1, "{recipient} {event_id}");
            assert!(acknowledged[0] > delivered[0]);
        }
    }
    // The other case's trail: the LPC requests went out to no embassy yet (AMQP pending); the
    // ministry fetched the registration and IOM's request.
    let other = wait_for("the other case's trail", WAIT, async || {
        let t = verify_trail(&auditor, &format!("case={OTHER_CASE}"), &verifier).await;
        (t.pending.is_empty() && t.count("accepted") == 3).then_some(t)
    })
    .await;
    assert_eq!(
        other.count("delivered"),
        2,
        "the ministry fetched the registration and IOM's request"
    );
    assert_eq!(other.count("acknowledged"), 2);
    // Auditors search by the partners' identifiers too.
    let lpc = verify_trail(&auditor, "lpc=LP0417263", &verifier).await;
    assert!(
        lpc.entries
            .iter()
            .any(|e| e.leaf.event_id.as_deref() == Some("CGSN-CASA-2026-00417")),
        "the LPC's issue is found by its number"
    );
    // With the whole story of the message that names it: who received it, and when they
    // acknowledged it, as in the case's trail.
    let of_the_issue = |entries: &[Entry]| -> BTreeSet<u64> {
        entries
            .iter()
            .filter(|e| e.leaf.event_id.as_deref() == Some("CGSN-CASA-2026-00417"))
            .map(|e| e.index)
            .collect()
    };
    assert_eq!(of_the_issue(&lpc.entries), of_the_issue(&trail.entries));
    let kinds: BTreeSet<String> = lpc.entries.iter().map(|e| kind_of(&e.leaf)).collect();
    assert!(
        kinds.contains("delivered") && kinds.contains("acknowledged"),
        "{kinds:?}"
    );
    let pnr = verify_trail(&auditor, "pnr=K7Q2XM", &verifier).await;
    let by_pnr: BTreeSet<&str> = pnr
        .entries
        .iter()
        .filter(|e| kind_of(&e.leaf) == "accepted")
        .filter_map(|e| e.leaf.event_id.as_deref())
        .collect();
    assert_eq!(
        by_pnr,
        set(&[
            "IOM-MA-2026-11-10-6c3d88",
            "8f0c2d8e-5a4b-4a57-9f43-0a8d2f6b1c11",
            "AT-DCS-20261120-0505-000112"
        ])
        .iter()
        .map(String::as_str)
        .collect()
    );

    // By the police's PV number, and by IOM's case number: the messages that name them, whole.
    let accepted_ids = |trail: &VerifiedTrail| -> BTreeSet<String> {
        trail
            .entries
            .iter()
            .filter(|e| kind_of(&e.leaf) == "accepted")
            .filter_map(|e| e.leaf.event_id.clone())
            .collect()
    };
    let pv = verify_trail(&auditor, "pv=DGSN/SE/CASA/2026/7741", &verifier).await;
    assert_eq!(
        accepted_ids(&pv),
        set(&[
            "8f0c2d8e-5a4b-4a57-9f43-0a8d2f6b1c11",
            "0b7f9b7e-2d1e-4b61-8f4e-6a3c2e9d4f02"
        ])
    );
    assert!(
        pv.count("delivered") > 0,
        "the PV's deliveries are in its trail"
    );
    let iom_case = verify_trail(&auditor, "iom_case=SN1-2026-01377", &verifier).await;
    assert_eq!(accepted_ids(&iom_case), set(&["IOM-SN-2026-11-20-a41b07"]));

    // ---------------------------------------------------------------- receipts
    let entries: BTreeMap<u64, Vec<u8>> = trail
        .entries
        .iter()
        .chain(&other.entries)
        .map(|e| (e.index, e.bytes.clone()))
        .collect();
    let mut receipts = Vec::new();
    for (step, ack) in steps.iter().zip(&acks) {
        let sender = gateway.client(step.sender);
        let path = format!("/v1/receipts/{}", step.id());
        let receipt = wait_for("a receipt with its proof", WAIT, async || {
            let reply = sender.get(&path).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body = reply.json();
            if body["proof"].is_null() {
                assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
                None
            } else {
                Some(body)
            }
        })
        .await;
        for field in [
            "event_id",
            "source",
            "event_type",
            "log_index",
            "leaf_hash",
            "receipt",
        ] {
            assert_eq!(receipt[field], ack[field], "{field} of {}", step.id());
        }
        let proof = TlogProof::parse(receipt["proof"].as_str().unwrap()).expect("a tlog-proof");
        let index = ack["log_index"].as_u64().unwrap();
        assert_eq!(proof.index, index);
        proof
            .verify(&entries[&index], &verifier, Some(gateway_support::ORIGIN))
            .expect("the receipt's proof verifies offline");
        receipts.push(receipt);
    }
    // A sender, or an auditor, checks a receipt and its proof with the command line too.
    let receipt = receipts.last().expect("a receipt");
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Saved as `jq -r` saves them, with a newline after the note's own.
    let receipt_file = write(
        "receipt",
        &format!("{}\n", receipt["receipt"].as_str().unwrap()),
    );
    let proof_file = write(
        "proof",
        &format!("{}\n", receipt["proof"].as_str().unwrap()),
    );
    let key = verifier.to_verifier_key();
    let checked = passerelle_cli(&[
        "audit",
        "verify-receipt",
        &receipt_file,
        "--key",
        &key,
        "--proof",
        &proof_file,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(stdout.contains("ok: receipt for entry"), "{stdout}");
    assert!(stdout.contains("is in"), "{stdout}");
    // A receipt whose index was changed, and a proof of another entry, are refused.
    let forged = write(
        "forged",
        &receipt["receipt"].as_str().unwrap().replacen(
            &format!("index {}", receipt["log_index"]),
            &format!("index {}", receipt["log_index"].as_u64().unwrap() + 1),
            1,
        ),
    );
    let other_proof = write("other", receipts[0]["proof"].as_str().unwrap());
    // What `jq .proof` saves of an answer given before a checkpoint covered the entry.
    let no_proof = write("null", "null\n");
    for (file, proof, why) in [
        (&forged, &proof_file, "FAILED: receipt"),
        (&receipt_file, &other_proof, "not of the receipt's entry"),
        (&receipt_file, &no_proof, "holds null, not a proof"),
    ] {
        let refused = passerelle_cli(&[
            "audit",
            "verify-receipt",
            file,
            "--key",
            &key,
            "--proof",
            proof,
        ])
        .await;
        let stdout = String::from_utf8_lossy(&refused.stdout);
        assert_eq!(refused.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(why), "{stdout}");
    }
    let first = steps[0].id();
    let reply = gateway
        .client("airline.at")
        .get(&format!("/v1/receipts/{first}?source=urn:partner:iom.ma"))
        .await;
    reply.problem(403, "forbidden");
    gateway
        .client("airline.at")
        .get(&format!("/v1/receipts/{first}"))
        .await
        .problem(404, "not-found");
    let by_auditor = auditor
        .get(&format!("/v1/receipts/{first}?source=urn:partner:iom.ma"))
        .await;
    assert_eq!(by_auditor.status, 200, "{}", by_auditor.text());
    assert_eq!(by_auditor.json()["log_index"], acks[0]["log_index"]);

    // ---------------------------------------------------------------- the public log
    let checkpoint = gateway
        .client("iom.sn")
        .get("/v1/audit/log/checkpoint")
        .await;
    assert_eq!(checkpoint.status, 200);
    assert!(
        checkpoint
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let cp = Checkpoint::open(&checkpoint.body, &verifier, Some(gateway_support::ORIGIN))
        .expect("a signed checkpoint");
    assert!(cp.size >= trail.size);
    // HEAD answers the GET's headers without the body.
    let head = gateway
        .client("iom.sn")
        .head("/v1/audit/log/checkpoint")
        .await;
    assert_eq!(head.status, 200);
    for name in ["content-type", "cache-control"] {
        assert_eq!(head.header(name), checkpoint.header(name), "{name}");
    }
    // The length of the file, which a checkpoint signed again meanwhile may have changed.
    let length: usize = head
        .header("content-length")
        .expect("a content length")
        .parse()
        .unwrap();
    let again = gateway
        .client("iom.sn")
        .get("/v1/audit/log/checkpoint")
        .await;
    assert!(
        [checkpoint.body.len(), again.body.len()].contains(&length),
        "HEAD says {length} bytes"
    );
    let missing = gateway
        .client("iom.sn")
        .head("/v1/audit/log/tile/9/999")
        .await;
    assert_eq!(missing.status, 404);
    // A partner reads the hash tiles its proofs need; the entries, which would let it follow
    // other partners' messages of the case, are the auditors' (a missing one too: the answer
    // does not say which exist).
    let partial = |tile: &str| {
        if cp.size >= 256 {
            format!("/v1/audit/log/tile/{tile}/000")
        } else {
            format!("/v1/audit/log/tile/{tile}/000.p/{}", cp.size)
        }
    };
    assert_eq!(
        gateway.client("iom.sn").get(&partial("0")).await.status,
        200
    );
    for entries in [
        partial("entries"),
        "/v1/audit/log/tile/entries/999".into(),
        "/v1/audit/log/tile/Entries/000".into(),
    ] {
        gateway
            .client("iom.sn")
            .get(&entries)
            .await
            .problem(403, "forbidden");
        let head = gateway.client("iom.sn").head(&entries).await;
        assert_eq!(head.status, 403, "HEAD {entries}");
    }
    let bundle = auditor.get(&partial("entries")).await;
    assert_eq!(bundle.status, 200, "{}", bundle.text());
    assert!(!bundle.body.is_empty());
    gateway
        .client("iom.sn")
        .get("/v1/audit/log/private/meta.json")
        .await
        .problem(404, "not-found");

    // ---------------------------------------------------------------- offline, after shutdown
    let log_dir = gateway.dir.path().join("data/audit-log");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("audit-log");
    gateway.stop_keep(&copy).await;
    let offline = passerelle::audit::bundle::trail(
        &copy,
        &passerelle::audit::Query::Case(CASE.into()),
        Some(&verifier),
    )
    .expect("the log folder verifies offline");
    assert!(offline.pending.is_empty());
    assert_eq!(
        offline.found.iter().map(|f| f.index).collect::<Vec<_>>(),
        trail.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        "the offline search of {} finds the same entries",
        log_dir.display()
    );
    // Offline too, a laissez-passer's trail holds every entry of the message that names it.
    let offline_lpc = passerelle::audit::bundle::trail(
        &copy,
        &passerelle::audit::Query::Lpc("LP0417263".into()),
        Some(&verifier),
    )
    .expect("the LPC's trail offline");
    let online_lpc: Vec<u64> = lpc.entries.iter().map(|e| e.index).collect();
    assert_eq!(
        offline_lpc
            .found
            .iter()
            .map(|f| f.index)
            .collect::<Vec<_>>(),
        online_lpc
    );
    eprintln!("the return of {CASE}: {:?}", started.elapsed());
}

impl TestGateway {
    /// Stops the gateway and copies its audit log folder to `to`.
    async fn stop_keep(self, to: &std::path::Path) {
        let from = self.dir.path().join("data/audit-log");
        self.running.shutdown().await.expect("a clean shutdown");
        copy_dir(&from, to);
    }
}

// ====================================================================================== refusals

/// Sends a body of `len` bytes with chunked transfer encoding (no `Content-Length`), on a
/// connection of its own; returns the status and the body of the answer.
async fn send_chunked(
    client_name: &str,
    gateway: std::net::SocketAddr,
    len: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connection_of(gateway, client_name).await;
    let mut request = b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let chunk = 4096;
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk);
        request.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'x', n));
        request.extend_from_slice(b"\r\n");
        left -= n;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    (status, text)
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(" <- ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[actix_web::test]
async fn refusals_are_answered_with_problems_and_audited() {
    const LIMIT: usize = 64 * 1024;
    let changes = RegistryChanges::new().sends("iom.sn", &["arrival.confirmed"]);
    let gateway = TestGateway::start(&changes, |c| {
        c.limits.max_body_bytes = LIMIT;
        // Refused certificates are summarised a second after the first, not a minute.
        c.limits.refused_certificate_summary_secs = 1;
    })
    .await;
    let verifier = gateway.verifier();
    let admin = gateway.admin();
    let addr = gateway.running.addr;
    let appends = async || admin.metric("passerelle_audit_appends_total", &[]).await as u64;
    assert_eq!(appends().await, 0);
    let lpc_issued = fixture("sn.consulat.casablanca", "in/lpc-issued.xml");

    // No certificate, a revoked one, an expired one: the handshake is refused, no answer.
    for (name, tls, alert) in [
        ("no certificate", anonymous_tls(), "CertificateRequired"),
        ("revoked", client_tls("revoked"), "CertificateRevoked"),
        ("expired", client_tls("expired"), "CertificateExpired"),
    ] {
        let client = Client::with_tls(name, tls, addr);
        let error = match client.try_send("application/xml", lpc_issued.clone()).await {
            Ok(reply) => panic!("{name}: answered {}", reply.status),
            Err(error) => error_chain(&error),
        };
        assert!(
            error.contains(&format!("received fatal alert: {alert}")),
            "{name}: {error}"
        );
    }
    // The refused certificates are audited in summaries under `refused/unverified`, one per
    // reason, committing to the certificates' digests; a handshake without a certificate is
    // refused before any certificate can be seen.
    let summaries = refused_certificates_summarised(&gateway, 2).await;
    for (reason, name) in [
        ("certificate-expired", "expired"),
        ("certificate-revoked", "revoked"),
    ] {
        let leaf = summaries
            .iter()
            .find(|leaf| leaf.reason.as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no summary of the {name} certificate: {summaries:?}"));
        assert_eq!(kind_of(leaf), "rejected");
        assert_eq!(
            leaf.sender.as_deref(),
            Some(passerelle::pipeline::UNVERIFIED)
        );
        assert_eq!(leaf.transport, Some(Transport::Rest));
        assert_eq!(leaf.count, Some(1));
        assert!(leaf.event_id.is_none());
        let commitments = leaf.commitments.as_ref().expect("commitments");
        assert!(commitments.native.is_some(), "{commitments:?}");
        let counted = admin
            .metric(
                "passerelle_tls_refused_certificates_total",
                &[("reason", reason)],
            )
            .await;
        assert_eq!(counted, 1.0, "{reason}");
    }
    // Counted once their appends return, a moment after the trail shows them.
    wait_for("the summaries' appends counted", WAIT, async || {
        (appends().await == 2).then_some(())
    })
    .await;
    // A valid certificate that names no partner: TLS accepts it, the registry does not. Its
    // message is refused and audited under the certificate's fingerprint; reading an inbox
    // is refused too, and is not a message.
    let unknown = Client::new("unknown", addr);
    unknown
        .send("application/xml", lpc_issued.clone())
        .await
        .problem(403, "forbidden");
    unknown.get("/v1/inbox").await.problem(403, "forbidden");
    assert_eq!(appends().await, 3);

    let consulate = gateway.client("sn.consulat.casablanca");
    let ministry = gateway.client("ma.interieur");
    let iom_sn = gateway.client("iom.sn");
    let mut refused: BTreeMap<&str, Vec<&str>> = BTreeMap::new();

    // The wrong role: the ministry may not issue an LPC; the auditor sends nothing; IOM
    // Senegal, narrowed to arrivals in this registry, may not report reintegration.
    let mut lpc_event = fixture_json("sn.consulat.casablanca", "in/lpc-issued.expected.json");
    let object = lpc_event.as_object_mut().unwrap();
    object.remove("mappingid");
    object.remove("mappinghash");
    object.insert("source".into(), json!("urn:partner:ma.interieur"));
    object.insert("id".into(), json!("MI-FORGED-LPC-1"));
    let problem = ministry
        .send(
            "application/cloudevents+json",
            serde_json::to_vec(&lpc_event).unwrap(),
        )
        .await
        .problem(403, "forbidden");
    assert!(
        problem["detail"].as_str().unwrap().contains("lpc.issued"),
        "{problem}"
    );
    refused.entry("ma.interieur").or_default().push("forbidden");
    gateway
        .client("audit.igat")
        .send("application/xml", lpc_issued.clone())
        .await
        .problem(403, "forbidden");
    refused.entry("audit.igat").or_default().push("forbidden");
    iom_sn
        .send(
            "application/json",
            fixture("iom.sn", "in/reintegration-update.json"),
        )
        .await
        .problem(403, "forbidden");
    refused.entry("iom.sn").or_default().push("forbidden");

    // Too large, with a Content-Length and without one (chunked).
    let mut big = b"<?xml version=\"1.0\"?><LaissezPasserDelivre>".to_vec();
    big.resize(LIMIT + 1, b' ');
    let problem = consulate
        .send("application/xml", big.clone())
        .await
        .problem(413, "too-large");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&LIMIT.to_string())
    );
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("too-large");
    let (status, text) = send_chunked("sn.consulat.casablanca", addr, 3 * LIMIT).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("urn:passerelle:problem:too-large"), "{text}");
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("too-large");
    // Just at the limit, the body is read and mapped (and this one is not XML).
    let mut at_limit = vec![b' '; LIMIT];
    at_limit[..5].copy_from_slice(b"<?xm?");
    consulate
        .send("application/xml", at_limit)
        .await
        .problem(400, "malformed");
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("malformed");

    // XML with a DOCTYPE.
    let problem = consulate
        .send(
            "application/xml",
            fixture("sn.consulat.casablanca", "in/error-doctype.xml"),
        )
        .await
        .problem(400, "malformed");
    assert!(
        problem["detail"].as_str().unwrap().contains("DOCTYPE"),
        "{problem}"
    );
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("malformed");

    // Mapping and schema failures: 422, with where.
    let problem = consulate
        .send(
            "application/xml",
            fixture("sn.consulat.casablanca", "in/error-bad-date.xml"),
        )
        .await
        .problem(422, "unprocessable");
    assert_eq!(problem["path"], "holder.birth_date");
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("unprocessable");
    let problem = ministry
        .send(
            "application/cloudevents+json",
            fixture("ma.interieur", "in/error-schema.json"),
        )
        .await
        .problem(422, "unprocessable");
    assert!(
        problem["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/data")),
        "{problem}"
    );
    refused
        .entry("ma.interieur")
        .or_default()
        .push("unprocessable");
    // An id the audit log cannot name the message by: 422 on `id`, not a 503 to send again.
    let request = fixture_json("ma.interieur", "in/lpc-requested.json");
    for id in ["MI-DMF\u{7}-2026-000932", &"é".repeat(120)] {
        let mut event = request.clone();
        event["id"] = json!(id);
        let problem = ministry
            .send(
                "application/cloudevents+json",
                serde_json::to_vec(&event).unwrap(),
            )
            .await
            .problem(422, "unprocessable");
        assert_eq!(problem["path"], "id", "{problem}");
        refused
            .entry("ma.interieur")
            .or_default()
            .push("unprocessable");
    }

    // The wrong media type.
    consulate
        .send("application/json", lpc_issued.clone())
        .await
        .problem(415, "unsupported-media-type");
    refused
        .entry("sn.consulat.casablanca")
        .or_default()
        .push("unsupported-media-type");
    ministry
        .send(
            "application/json",
            fixture("ma.interieur", "in/lpc-requested.json"),
        )
        .await
        .problem(415, "unsupported-media-type");
    refused
        .entry("ma.interieur")
        .or_default()
        .push("unsupported-media-type");

    // A known route with the wrong method, and an unknown route: problems too, not audited
    // (no message was submitted).
    let wrong_method = consulate.get("/v1/messages").await;
    wrong_method.problem(405, "method-not-allowed");
    assert_eq!(wrong_method.header("allow").as_deref(), Some("POST"));
    consulate.get("/v1/nowhere").await.problem(404, "not-found");

    // One `rejected` entry per refused message (and the unregistered certificate's), the two
    // summaries of refused certificates, and nothing else.
    let refusals: usize = refused.values().map(Vec::len).sum::<usize>() + 3;
    assert_eq!(appends().await, refusals as u64);
    outcomes_counted(
        &admin,
        &[
            ("forbidden", 4.0),
            ("too-large", 2.0),
            ("unprocessable", 4.0),
        ],
    )
    .await;

    // A message outside the programme is acknowledged, audited as received, not routed.
    let reply = gateway
        .client("airline.at")
        .send(
            "application/json",
            fixture("airline.at", "in/ignored-checked-in.json"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "ignored");
    assert_eq!(appends().await, refusals as u64 + 1);

    // A duplicate gets the first answer again, with the same receipt, and adds nothing.
    let arrival = fixture("iom.sn", "in/arrival-confirmed.json");
    let first = iom_sn.send("application/json", arrival.clone()).await;
    assert_eq!(first.status, 202, "{}", first.text());
    let first = first.json();
    check_ack(&first, "accepted", "IOM-SN-2026-11-20-a41b07", &verifier);
    // An arrival with no boarding on file is accepted, flagged, and delivered anyway. The flag
    // is for the ministry and the auditors: the sender's acknowledgement does not say what the
    // case's file holds.
    assert_eq!(first["anomalies"], json!([]));
    let before = appends().await;
    assert_eq!(before, refusals as u64 + 3, "accepted and its anomaly");
    wait_for("a checkpoint covering every entry", WAIT, async || {
        let size = admin.metric("passerelle_audit_log_size", &[]).await as u64;
        (size == before).then_some(())
    })
    .await;
    for _ in 0..2 {
        let again = iom_sn.send("application/json", arrival.clone()).await;
        assert_eq!(again.status, 200, "{}", again.text());
        let again = again.json();
        check_ack(&again, "duplicate", "IOM-SN-2026-11-20-a41b07", &verifier);
        for field in [
            "log_index",
            "leaf_hash",
            "receipt",
            "event_type",
            "source",
            "recipients",
        ] {
            assert_eq!(again[field], first[field], "{field}");
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        appends().await,
        before,
        "a duplicate writes nothing to the log"
    );
    let checkpoint = ministry.get("/v1/audit/log/checkpoint").await;
    let cp = Checkpoint::open(&checkpoint.body, &verifier, None).unwrap();
    assert_eq!(cp.size, before, "the log did not grow");
    assert_eq!(
        admin
            .metric(
                "passerelle_messages_total",
                &[("partner", "iom.sn"), ("outcome", "duplicate")]
            )
            .await,
        2.0
    );
    // The ministry and IOM Morocco got it once, the ministry with its flag.
    let delivered = ministry.inbox(500).await;
    assert_eq!(delivered.len(), 1);
    let event: Value = serde_json::from_str(delivered[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        event["data"]["anomalies"][0]["code"],
        "sequence.missing_boarding_confirmed"
    );
    assert_eq!(gateway.client("iom.ma").inbox(500).await.len(), 1);

    // The auditor finds each sender's refusals, with their reasons, under `refused/<partner>`.
    let auditor = gateway.client("audit.igat");
    for (partner, codes) in &refused {
        let query = format!("case=refused/{partner}");
        let trail = wait_for("the refusals' checkpoint", WAIT, async || {
            let t = verify_trail(&auditor, &query, &verifier).await;
            t.pending.is_empty().then_some(t)
        })
        .await;
        let mut got: Vec<String> = trail
            .entries
            .iter()
            .map(|e| {
                assert_eq!(kind_of(&e.leaf), "rejected");
                assert_eq!(e.leaf.sender.as_deref(), Some(*partner));
                assert!(e.leaf.event_id.is_none());
                e.leaf.reason.clone().unwrap()
            })
            .collect();
        let mut want: Vec<String> = codes.iter().map(|c| (*c).to_owned()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "the refusals of {partner}");
    }
    // The unregistered certificate's message, under its fingerprint, with a commitment to
    // the payload it sent.
    let unregistered = verify_trail(&auditor, "case=refused/unregistered", &verifier).await;
    assert_eq!(unregistered.entries.len(), 1);
    let leaf = &unregistered.entries[0].leaf;
    assert_eq!(kind_of(leaf), "rejected");
    assert_eq!(leaf.reason.as_deref(), Some("forbidden"));
    let sender = leaf.sender.as_deref().unwrap();
    assert!(
        sender.starts_with("sha256:") && sender.len() == 71,
        "{sender}"
    );
    assert!(leaf.commitments.is_some());
    let ignored = verify_trail(&auditor, "case=refused/airline.at", &verifier).await;
    assert_eq!(ignored.entries.len(), 1);
    assert_eq!(kind_of(&ignored.entries[0].leaf), "received");
    assert_eq!(ignored.entries[0].leaf.reason.as_deref(), Some("ignored"));
    gateway.stop().await;
}

/// A CA bundle of the development CA and another institution's CA, with the other CA's CRL,
/// in a folder of their own.
struct TwoCas {
    pki_dir: tempfile::TempDir,
    other: pki::OtherCa,
    bundle: std::path::PathBuf,
    other_crl: std::path::PathBuf,
}

impl TwoCas {
    fn new() -> TwoCas {
        let pki_dir = tempfile::tempdir().expect("a temporary folder");
        let other = pki::OtherCa::new("Another institution's CA");
        let bundle = pki_dir.path().join("bundle.pem");
        let dev_ca = std::fs::read_to_string(dev_dir().join("ca.pem")).expect("the dev CA");
        std::fs::write(&bundle, format!("{dev_ca}{}", other.cert_pem)).expect("the bundle");
        let other_crl = pki_dir.path().join("other.crl");
        std::fs::write(&other_crl, other.crl()).expect("the other CA's CRL");
        TwoCas {
            pki_dir,
            other,
            bundle,
            other_crl,
        }
    }

    /// Has `config` trust both CAs: the bundle of the two, and the other CA's CRL beside the
    /// CRLs it has.
    fn trusted_by(&self, config: &mut Config) {
        config.tls.ca = self.bundle.clone();
        config.tls.crls.push(self.other_crl.clone());
    }
}

/// With the CAs of two institutions in the bundle, each entry names the CA that issues its
/// partner's certificates. A certificate that another CA of the bundle issued in the ministry's
/// name, or the auditor's, is refused (its message audited under its fingerprint), and the
/// ministry's own goes on. Without the entries' issuers, such a bundle stops the start.
#[actix_web::test]
async fn a_certificate_naming_a_partner_from_another_ca_of_the_bundle_is_refused() {
    let cas = TwoCas::new();
    let two_cas = |config: &mut Config| cas.trusted_by(config);

    let unbound = tempfile::tempdir().expect("a temporary folder");
    let registry = write_registry(unbound.path(), &RegistryChanges::new());
    let mut config = test_config(&unbound.path().join("data"), &registry);
    two_cas(&mut config);
    let refused = format!(
        "{:#}",
        RunningGateway::start(&config).await.err().expect("refused")
    );
    assert!(
        refused.contains("partner ma.interieur: the CA bundle (tls.ca) holds 2 CA certificates")
            && refused.contains("issuer"),
        "{refused}"
    );
    assert!(!unbound.path().join("data").exists(), "{refused}");

    let dev_ca_name = "CN=Passerelle development CA, O=Passerelle (development only)";
    let gateway =
        TestGateway::start(&RegistryChanges::new().issuer_of_all(dev_ca_name), two_cas).await;
    let verifier = gateway.verifier();
    let impostor_of = |partner: &str| {
        let dir = cas.pki_dir.path().join(partner);
        std::fs::create_dir(&dir).expect("a folder");
        let files = cas
            .other
            .client_files(&dir, &format!("urn:partner:{partner}"));
        let tls = passerelle::tls::client_config(&files).expect("the impostor's TLS");
        let certs = passerelle::tls::load_certs(&files.cert).expect("its certificate");
        let fingerprint = passerelle::tls::fingerprint(&certs[0]);
        let client = Client::with_tls(partner, (*tls).clone(), gateway.running.addr);
        (client, fingerprint)
    };
    let (ministry_impostor, fingerprint) = impostor_of("ma.interieur");
    let inbox = ministry_impostor.get("/v1/inbox").await;
    let problem = inbox.problem(403, "forbidden");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("names ma.interieur, but was not issued by its CA")),
        "{problem}"
    );
    let sent = ministry_impostor
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00990"))
        .await;
    sent.problem(403, "forbidden");
    let (auditor_impostor, _) = impostor_of("audit.igat");
    let trail = auditor_impostor
        .get("/v1/audit/trails?case=RVA-2026-004211")
        .await;
    trail.problem(403, "forbidden");

    // The partners' own certificates go on.
    assert_eq!(
        gateway.client("ma.interieur").get("/v1/inbox").await.status,
        200
    );
    let auditor = gateway.client("audit.igat");
    let unregistered = wait_for("the refusal's checkpoint", WAIT, async || {
        let t = verify_trail(&auditor, "case=refused/unregistered", &verifier).await;
        (t.pending.is_empty() && !t.entries.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(unregistered.entries.len(), 1);
    let leaf = &unregistered.entries[0].leaf;
    assert_eq!(kind_of(leaf), "rejected");
    assert_eq!(leaf.sender.as_deref(), Some(fingerprint.as_str()));
    gateway.stop().await;
}

#[actix_web::test]
async fn every_documented_route_is_served() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    // Every route the OpenAPI document is checked against (`ROUTES`) is served by the router:
    // none falls through to the unknown-route problem or a 405.
    let auditor = gateway.client("audit.igat");
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "1")
            .replace("{event_id}", "no-such-event")
            .replace("{path}", "checkpoint");
        let reply = match *method {
            "get" => auditor.get(&concrete).await,
            "post" => auditor.post(&concrete).await,
            // No body to tell a route from the unknown-route problem: the file is there.
            "head" => {
                assert_eq!(auditor.head(&concrete).await.status, 200, "{path}");
                continue;
            }
            other => panic!("a method the test does not send: {other}"),
        };
        assert_ne!(reply.status, 405, "{method} {path}: {}", reply.text());
        assert!(
            !reply.text().contains("no such route"),
            "{method} {path} is not routed: {}",
            reply.text()
        );
    }

    gateway.stop().await;
}

#[actix_web::test]
async fn a_partner_over_its_rate_gets_429() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.rate_per_second = 1;
        c.limits.burst = 1;
    })
    .await;
    let admin = gateway.admin();
    let iom_sn = gateway.client("iom.sn");
    let arrival = fixture("iom.sn", "in/arrival-confirmed.json");
    let reintegration = fixture("iom.sn", "in/reintegration-update.json");
    assert_eq!(iom_sn.send("application/json", arrival).await.status, 202);
    let reply = iom_sn.send("application/json", reintegration.clone()).await;
    let problem = reply.problem(429, "rate-limited");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(problem["retry_after"], retry_after);
    // The limit is per partner.
    let iom_ma = gateway.client("iom.ma");
    assert_eq!(
        iom_ma
            .send(
                "application/json",
                fixture("iom.ma", "in/case-registered.json")
            )
            .await
            .status,
        202
    );
    // A rate-limited message is not looked at, and not audited on its own (that would let a
    // sender over its limit drive the log's synced appends): it is tallied, and the tally is
    // audited within about a second as one `rejected` summary with a count.
    assert_eq!(
        admin
            .metric(
                "passerelle_messages_total",
                &[("partner", "iom.sn"), ("outcome", "rate-limited")]
            )
            .await,
        1.0
    );
    // The log holds the arrival, its anomaly, the registration and the summary.
    one_refusal_summarised(&gateway, "refused/iom.sn", "iom.sn", 4.0).await;
    // Certificates the registry does not know share one limit: of two messages sent at once,
    // one is refused and audited, the other is over the limit, answered 429 and summarised
    // under `refused/unregistered`, with the certificate's fingerprint as its sender.
    let unknown = Client::new("unknown", gateway.running.addr);
    let message = fixture("iom.sn", "in/arrival-confirmed.json");
    let (first, second) = futures_util::join!(
        unknown.send("application/json", message.clone()),
        unknown.send("application/json", message),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [403, 429], "{first:?} {second:?}");
    for reply in [&first, &second] {
        let code = if reply.status == 403 {
            "forbidden"
        } else {
            "rate-limited"
        };
        reply.problem(reply.status, code);
    }
    let certificate = passerelle::tls::load_certs(
        &passerelle::tls::dev::files(
            &gateway_support::root().join(passerelle::tls::dev::DEFAULT_DIR),
            passerelle::tls::dev::UNKNOWN,
        )
        .cert,
    )
    .unwrap();
    let fingerprint = passerelle::tls::fingerprint(&certificate[0]);
    one_refusal_summarised(&gateway, "refused/unregistered", &fingerprint, 6.0).await;
    assert_eq!(
        admin
            .metric(
                "passerelle_messages_total",
                &[("partner", "unregistered"), ("outcome", "rate-limited")]
            )
            .await,
        1.0
    );
    // After the wait it asked for, the same message goes through.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let reply = iom_sn.send("application/json", reintegration.clone()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    // Refusals just before a stop are audited by the stop: two more, then stop at once.
    for _ in 0..2 {
        let reply = iom_sn.send("application/json", reintegration.clone()).await;
        reply.problem(429, "rate-limited");
    }
    let TestGateway { running, dir } = gateway;
    running.shutdown().await.expect("a clean shutdown");
    let data = dir.path().join("data");
    let signer = NoteSigner::parse(
        &std::fs::read_to_string(data.join("audit-signing.key")).expect("the signing key"),
    )
    .expect("a signing key");
    let log = AuditLog::open(
        &data.join("audit-log"),
        signer,
        gateway_support::ORIGIN,
        Options::default(),
    )
    .expect("the log opens again");
    let counts: Vec<Option<u64>> = log
        .search(&Query::Case("refused/iom.sn".into()))
        .expect("the sender's refusals")
        .into_iter()
        .filter(|found| found.leaf.reason.as_deref() == Some("rate-limited"))
        .map(|found| found.leaf.count)
        .collect();
    // The first summary, then the last two refusals (in one summary, or two if a round of
    // summaries fell between them).
    assert_eq!(counts.first(), Some(&Some(1)), "{counts:?}");
    let last: u64 = counts[1..].iter().map(|n| n.expect("a count")).sum();
    assert_eq!(last, 2, "{counts:?}");
    log.close().expect("the log closes");
}

/// The summaries of refused certificates in the trail `refused/unverified`, once there are
/// `count` of them and a checkpoint covers them all.
async fn refused_certificates_summarised(
    gateway: &TestGateway,
    count: usize,
) -> Vec<passerelle::audit::Leaf> {
    let (auditor, verifier) = (gateway.client("audit.igat"), gateway.verifier());
    let query = format!("case=refused/{}", passerelle::pipeline::UNVERIFIED);
    wait_for("the summaries of refused certificates", WAIT, async || {
        let trail = verify_trail(&auditor, &query, &verifier).await;
        (trail.entries.len() == count && trail.pending.is_empty())
            .then(|| trail.entries.into_iter().map(|e| e.leaf).collect())
    })
    .await
}

/// Checks that the trail of `case` holds one `rate-limited` summary, of `sender`'s refusals,
/// once a checkpoint covers it: a REST refusal of one message, with a commitment to its body and no
/// event; and that the log then counts `appends` appends in all (the summary is counted once
/// its append returns, a moment after the trail shows it).
async fn one_refusal_summarised(gateway: &TestGateway, case: &str, sender: &str, appends: f64) {
    let (auditor, verifier) = (gateway.client("audit.igat"), gateway.verifier());
    let query = format!("case={case}");
    let trail = wait_for("the rate-limited summary", WAIT, async || {
        let trail = verify_trail(&auditor, &query, &verifier).await;
        let found = trail
            .entries
            .iter()
            .any(|e| e.leaf.reason.as_deref() == Some("rate-limited"));
        (found && trail.pending.is_empty()).then_some(trail)
    })
    .await;
    let summaries: Vec<&passerelle::audit::Leaf> = trail
        .entries
        .iter()
        .map(|e| &e.leaf)
        .filter(|leaf| leaf.reason.as_deref() == Some("rate-limited"))
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let leaf = summaries[0];
    assert_eq!(kind_of(leaf), "rejected");
    assert_eq!(leaf.transport, Some(Transport::Rest));
    assert!(leaf.event_id.is_none());
    assert_eq!(leaf.sender.as_deref(), Some(sender));
    assert_eq!(leaf.count, Some(1));
    let commitments = leaf.commitments.as_ref().expect("commitments");
    assert!(commitments.native.is_some(), "{commitments:?}");
    let admin = gateway.admin();
    wait_for("the appends counted", WAIT, async || {
        (admin.metric("passerelle_audit_appends_total", &[]).await == appends).then_some(())
    })
    .await;
}

// ====================================================================================== webhooks

/// The trail entries about the delivery of `event_id` to `recipient`, as (kind, reason), in log
/// order, once a checkpoint covers them and the last is `last`.
async fn delivery_story(
    gateway: &TestGateway,
    event_id: &str,
    recipient: &str,
    last: &str,
) -> Vec<(String, Option<String>)> {
    let auditor = gateway.client("audit.igat");
    let verifier = gateway.verifier();
    wait_for(
        &format!("the delivery of {event_id} in the trail"),
        WAIT,
        async || {
            let trail = verify_trail(&auditor, &format!("case={CASE}"), &verifier).await;
            let story: Vec<(String, Option<String>)> = trail
                .entries
                .iter()
                .filter(|e| {
                    e.leaf.event_id.as_deref() == Some(event_id)
                        && e.leaf.recipients == [recipient.to_owned()]
                })
                .map(|e| (kind_of(&e.leaf), e.leaf.reason.clone()))
                .collect();
            (trail.pending.is_empty() && story.last().is_some_and(|(k, _)| k == last))
                .then_some(story)
        },
    )
    .await
}

/// Checks that a problem's detail says `words`.
fn says(problem: &Value, words: &str) {
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(words), "{problem}");
}

/// Checks `passerelle_messages_total` for each of `counts`' outcomes.
async fn outcomes_counted(admin: &Admin, counts: &[(&str, f64)]) {
    for (code, count) in counts {
        assert_eq!(
            admin
                .metric("passerelle_messages_total", &[("outcome", code)])
                .await,
            *count,
            "{code}"
        );
    }
}

/// The consulate's LPC fixture under another reference.
fn lpc_issued(reference: &str) -> Vec<u8> {
    fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml")
        .replace("CGSN-CASA-2026-00417", reference)
        .into_bytes()
}

/// An endpoint whose certificate the gateway does not accept (here an expired one) fails its
/// attempts as `webhook.tls`, not as an unreachable endpoint: the operator is sent to the
/// certificates, not to the network.
/// The consulate sends LPC `reference`, whose delivery to the DGSN's webhook fails at the TLS
/// handshake (`webhook.tls`).
async fn fails_as_tls(gateway: &TestGateway, reference: &str) {
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let story = delivery_story(gateway, reference, "ma.dgsn", "delivery_failed").await;
    assert_eq!(
        story.last().and_then(|(_, reason)| reason.as_deref()),
        Some("webhook.tls"),
        "{story:?}"
    );
}

/// With the CAs of two institutions in the bundle, a recipient bound to its CA (its entry's
/// `issuer`) is called only at an endpoint whose certificate that CA issued: another CA of the
/// bundle could otherwise issue one for its host and, with the network path redirected, receive
/// its deliveries. The same endpoint with a certificate of the recipient's CA gets them. The
/// CA is named by its subject or by its fingerprint.
#[actix_web::test]
async fn a_bound_recipients_endpoint_must_present_a_certificate_of_its_ca() {
    let cas = TwoCas::new();
    let dev_ca = passerelle::tls::load_certs(&dev_dir().join("ca.pem")).expect("the CA");
    let issuers = [
        (
            "CN=Passerelle development CA, O=Passerelle (development only)".to_owned(),
            "CGSN-CASA-2026-00992",
        ),
        (
            passerelle::tls::fingerprint(&dev_ca[0]),
            "CGSN-CASA-2026-00993",
        ),
    ];
    for (issuer, reference) in issuers {
        let mut dgsn =
            Receiver::reserve().presenting_files(cas.other.server_files(cas.pki_dir.path()));
        dgsn.up();
        let changes = RegistryChanges::new()
            .issuer_of_all(&issuer)
            .webhook("ma.dgsn", &dgsn.url("/notices"));
        let gateway = TestGateway::start(&changes, |config| {
            cas.trusted_by(config);
            config.delivery.max_attempts = 50;
        })
        .await;
        fails_as_tls(&gateway, reference).await;
        assert!(
            dgsn.received().is_empty(),
            "{issuer}: no request got through"
        );

        // The endpoint now presents a certificate of the development CA: the delivery arrives.
        dgsn.down().await;
        let mut dgsn = dgsn.presenting("server");
        dgsn.up();
        delivery_story(&gateway, reference, "ma.dgsn", "delivered").await;
        let received: Vec<String> = dgsn.received().into_iter().map(|r| r.event_id).collect();
        assert_eq!(received, [reference], "{issuer}");
        gateway.stop().await;
    }
}

#[actix_web::test]
async fn an_endpoint_with_a_certificate_refused_fails_as_tls() {
    let mut dgsn = Receiver::reserve().presenting("expired");
    dgsn.up();
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |c| c.delivery.max_attempts = 50).await;
    fails_as_tls(&gateway, "CGSN-CASA-2026-00418").await;
    assert!(dgsn.received().is_empty(), "no request got through");
}

/// A webhook endpoint's certificate is checked against the CRLs, read again while the gateway
/// runs: once its CA revokes it, the next delivery is refused at the handshake (`webhook.tls`),
/// also over a connection kept alive from before.
#[actix_web::test]
async fn an_endpoint_whose_certificate_is_revoked_is_refused() {
    let crls = tempfile::tempdir().expect("a temporary folder");
    let crl = crls.path().join("crl.pem");
    std::fs::write(&crl, pki::dev_crl(30, &["revoked"])).expect("the first CRL");
    let mut dgsn = Receiver::reserve();
    dgsn.up();
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |config| {
        config.tls.crls = vec![crl.clone()];
        config.tls.crl_refresh_secs = 1;
        config.delivery.max_attempts = 50;
    })
    .await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00960"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    delivery_story(&gateway, "CGSN-CASA-2026-00960", "ma.dgsn", "delivered").await;

    // The endpoint presents the development server certificate, which its CA now revokes.
    std::fs::write(&crl, pki::dev_crl(31, &["revoked", "server"])).expect("the new CRL");
    wait_for("the CRL read again", WAIT, async || {
        let reloads = gateway
            .admin()
            .metric("passerelle_crl_reloads_total", &[("outcome", "loaded")])
            .await;
        (reloads >= 1.0).then_some(())
    })
    .await;
    fails_as_tls(&gateway, "CGSN-CASA-2026-00961").await;
    let received: Vec<String> = dgsn.received().into_iter().map(|r| r.event_id).collect();
    assert_eq!(
        received,
        ["CGSN-CASA-2026-00960"],
        "nothing got through after the revocation"
    );
    gateway.stop().await;
}

#[actix_web::test]
async fn a_webhook_down_then_up_gets_each_delivery_exactly_once() {
    // The DGSN's endpoint: its port is chosen, but nothing listens yet.
    let mut dgsn = Receiver::reserve();
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |c| c.delivery.max_attempts = 50).await;
    let admin = gateway.admin();
    let consulate = gateway.client("sn.consulat.casablanca");
    let retries = async || {
        admin
            .metric(
                "passerelle_deliveries_total",
                &[("recipient", "ma.dgsn"), ("outcome", "retry")],
            )
            .await as u64
    };

    // 1. Connection refused, then the endpoint comes up.
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00417"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(strings(&reply.json()["recipients"]).contains(&"ma.dgsn".to_owned()));
    wait_for("two failed attempts", WAIT, async || {
        (retries().await >= 2).then_some(())
    })
    .await;
    dgsn.up();
    wait_for("the delivery", WAIT, async || {
        (!dgsn.accepted().is_empty()).then_some(())
    })
    .await;
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00417", "ma.dgsn", "delivered").await;
    let (last, failures) = story.split_last().unwrap();
    assert_eq!(last.0, "delivered");
    assert!(failures.len() >= 2, "{story:?}");
    for (kind, reason) in failures {
        assert_eq!(kind, "delivery_failed");
        assert_eq!(reason.as_deref(), Some("webhook.unreachable"));
    }

    // 2. 503 with Retry-After: 1, twice, then accepted: the gateway waits as asked.
    dgsn.script(&[
        Answer::Fail {
            status: 503,
            retry_after: Some(1),
        },
        Answer::Fail {
            status: 503,
            retry_after: Some(1),
        },
    ]);
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00418"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("the second delivery", WAIT, async || {
        dgsn.accepted()
            .iter()
            .any(|r| r.event_id == "CGSN-CASA-2026-00418")
            .then_some(())
    })
    .await;
    let attempts: Vec<_> = dgsn
        .received()
        .into_iter()
        .filter(|r| r.event_id == "CGSN-CASA-2026-00418")
        .collect();
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 204]
    );
    assert!(
        attempts.iter().all(|r| r.delivery == attempts[0].delivery),
        "one delivery id"
    );
    assert!(
        attempts
            .iter()
            .all(|r| r.source == "urn:partner:sn.consulat.casablanca"),
        "the source and event id, by which the recipient drops repeats"
    );
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "Retry-After honoured: {gap:?}"
        );
    }
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00418", "ma.dgsn", "delivered").await;
    let failed = (
        "delivery_failed".to_owned(),
        Some("webhook.http-503".to_owned()),
    );
    assert_eq!(
        story,
        [failed.clone(), failed, ("delivered".to_owned(), None)]
    );

    // 3. The endpoint goes away (its keep-alive connection with it) and comes back on the
    // same port.
    dgsn.down().await;
    let before = retries().await;
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00419"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("a failed attempt", WAIT, async || {
        (retries().await > before).then_some(())
    })
    .await;
    dgsn.up();
    wait_for("the third delivery", WAIT, async || {
        dgsn.accepted()
            .iter()
            .any(|r| r.event_id == "CGSN-CASA-2026-00419")
            .then_some(())
    })
    .await;
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00419", "ma.dgsn", "delivered").await;
    assert!(
        story.len() >= 2
            && story[..story.len() - 1]
                .iter()
                .all(|(k, _)| k == "delivery_failed"),
        "{story:?}"
    );

    // Exactly once: one 2xx per delivery id, and nothing left to push.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = dgsn.accepted();
    let ids: BTreeSet<&str> = accepted.iter().map(|r| r.delivery.as_str()).collect();
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    assert_eq!(ids.len(), 3);
    for r in &accepted {
        assert_eq!(r.client, vec!["urn:gateway:passerelle".to_owned()]);
        assert!(r.text().starts_with("<?xml"), "{}", r.text());
    }
    assert!(
        gateway
            .running
            .gateway
            .store
            .due(Channel::Webhook, u64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 0.0);
    gateway.stop().await;
    dgsn.down().await;
}

/// A request of `partner`'s whose headers announce a body of 1,000 bytes, of which it sends a
/// few and then nothing more.
async fn stalled_body(
    gateway: &TestGateway,
    partner: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut stalled = connection_of(gateway.running.addr, partner).await;
    stalled
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/xml\r\n\
              Content-Length: 1000\r\n\r\n<LaissezPasser",
        )
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    stalled
}

/// Bodies are read a bounded number at a time, each within a time limit: a client that sends
/// its headers and then stalls holds its turn only until its time is up, and is answered 400;
/// a message sent meanwhile waits its turn and is accepted.
#[actix_web::test]
async fn a_body_that_does_not_arrive_is_answered_400_and_lets_the_next_in() {
    use tokio::io::AsyncReadExt;
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.bodies_in_flight = 1;
        c.limits.body_read_secs = 2;
    })
    .await;
    let mut slow = stalled_body(&gateway, "sn.consulat.casablanca").await;
    // The slow body has the only turn (its headers are read within the half second); the next
    // message waits for it, a second and a half.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00980"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "accepted after {:?}, before the slow body's time was up",
        started.elapsed()
    );
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, slow.read_to_end(&mut answer))
        .await
        .expect("the slow client is answered")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within 2 s"), "{answer}");
    // It is refused like any message that cannot be read: counted, and audited with a
    // commitment to what came of it.
    let counted = messages_counted(&gateway, "sn.consulat.casablanca", "malformed").await;
    assert_eq!(counted, 1.0);
    refused_entries(&gateway, "sn.consulat.casablanca", "malformed", 1).await;
    gateway.stop().await;
}

/// `passerelle_messages_total` of `partner`'s REST messages with `outcome`.
async fn messages_counted(gateway: &TestGateway, partner: &str, outcome: &str) -> f64 {
    let labels = [
        ("partner", partner),
        ("transport", "rest"),
        ("outcome", outcome),
    ];
    gateway
        .admin()
        .metric("passerelle_messages_total", &labels)
        .await
}

/// A body whose client closes its connection before sending it whole (no TLS close_notify:
/// the TCP connection simply ends) is refused all the same once the gateway sees it end or its
/// time runs out: counted and audited, committing to the bytes that came; from a certificate
/// the registry does not know, refused for its certificate.
#[actix_web::test]
async fn a_body_cut_short_by_its_client_is_refused_and_audited() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.body_read_secs = 2;
    })
    .await;
    let partner = "sn.consulat.casablanca";
    let cut = stalled_body(&gateway, partner).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The TCP connection ends without a TLS close_notify.
    let (tcp, _) = cut.into_inner();
    drop(tcp);
    refused_entries(&gateway, partner, "malformed", 1).await;
    assert_eq!(messages_counted(&gateway, partner, "malformed").await, 1.0);
    // So is a certificate's that the registry does not know: refused for its certificate.
    let cut = stalled_body(&gateway, "unknown").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(cut.into_inner().0);
    refused_entries(&gateway, "unregistered", "forbidden", 1).await;
    gateway.stop().await;
}

/// A message whose client went away is still processed to its end when the gateway stops:
/// the shutdown waits for it, rather than letting an HTTP worker with no connection left stop
/// and drop it. Here the client of a body waiting for its turn to be read (the only turn is
/// held by a stalled body on the other worker) goes away; its refusal, made once the turn
/// comes, is in the log the restarted gateway reads.
#[actix_web::test]
async fn a_stop_waits_for_the_message_of_a_client_that_went_away() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.bodies_in_flight = 1;
        c.limits.body_read_secs = 2;
        c.server.shutdown_timeout_secs = 5;
    })
    .await;
    let partner = "sn.consulat.casablanca";
    // Two connections, one on each of the two workers: the first holds the turn, the second
    // waits for it.
    let holding = stalled_body(&gateway, partner).await;
    let waiting = stalled_body(&gateway, partner).await;
    // Both heads read: the second request waits for its turn.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(waiting.into_inner().0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gateway = gateway.restart(&RegistryChanges::new()).await;
    drop(holding);
    let refused = gateway
        .running
        .gateway
        .log
        .search(&Query::Case(format!("refused/{partner}")))
        .expect("the log is searchable")
        .into_iter()
        .filter(|found| found.leaf.reason.as_deref() == Some("malformed"))
        .count();
    assert_eq!(refused, 2, "both bodies' refusals are in the log");
    gateway.stop().await;
}

/// Waits for `count` `rejected` audit entries of `sender`'s messages for `reason`.
async fn refused_entries(gateway: &TestGateway, sender: &str, reason: &str, count: usize) {
    wait_for("the refusals' audit entries", WAIT, async || {
        let found = gateway
            .running
            .gateway
            .log
            .search(&Query::Case(format!("refused/{sender}")))
            .expect("the log is searchable")
            .into_iter()
            .filter(|found| {
                found.leaf.kind == Kind::Rejected && found.leaf.reason.as_deref() == Some(reason)
            })
            .count();
        (found == count).then_some(())
    })
    .await;
}

/// A message whose turn to have its body read does not come within twice the body time limit
/// is answered `503` with `Retry-After`, and counted `unavailable` (not audited: nothing of it
/// was read). Here its partner's only turn is held by three stalled bodies in a row, two
/// seconds each.
#[actix_web::test]
async fn a_message_whose_turn_does_not_come_is_answered_503_and_counted() {
    use tokio::io::AsyncReadExt;
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.bodies_in_flight = 2;
        c.limits.body_read_secs = 2;
    })
    .await;
    let partner = "sn.consulat.casablanca";
    // Each holds the turn two seconds in its turn (0-2, 2-4, 4-6 s): the message sent after
    // them, within two seconds of the first, waits for a turn until its four are up, before
    // the third is done.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_body(&gateway, partner).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = gateway
        .client(partner)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00979"))
        .await;
    let problem = reply.problem(503, "unavailable");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("this one's turn did not come within 4 s")),
        "{problem}"
    );
    assert!(reply.header("retry-after").is_some(), "{problem}");
    for mut slow in stalled {
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, slow.read_to_end(&mut answer))
            .await
            .expect("the slow client is answered")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(
        messages_counted(&gateway, partner, "unavailable").await,
        1.0
    );
    assert_eq!(messages_counted(&gateway, partner, "malformed").await, 3.0);
    refused_entries(&gateway, partner, "malformed", 3).await;
    gateway.stop().await;
}

/// A body whose declared length is over the limit is refused at once, `413`, from its headers:
/// it is not waited for, even when none of it comes, and takes no turn to be read.
#[actix_web::test]
async fn a_body_announced_over_the_limit_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.bodies_in_flight = 1;
    })
    .await;
    // The only turn to read a body is held by another message whose body stalls: a refusal
    // that waited for a turn would wait a minute.
    let _stalled = stalled_body(&gateway, "sn.consulat.casablanca").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut client = connection_of(gateway.running.addr, "sn.consulat.casablanca").await;
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/xml\r\n\
             {expect}Content-Length: 5000000000\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        client.flush().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = client.read(&mut buffer).await {
                answer.extend_from_slice(&buffer[..n]);
                if n == 0 || String::from_utf8_lossy(&answer).contains("too-large") {
                    break;
                }
            }
        })
        .await
        .expect("answered without waiting for the body");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("HTTP/1.1 413"), "{expect:?}: {answer}");
    }
    // Both refusals are audited, as any refusal is.
    let refused = wait_for("the refusals' entries", WAIT, async || {
        let found = gateway
            .running
            .gateway
            .log
            .search(&Query::Case("refused/sn.consulat.casablanca".into()))
            .expect("search");
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert!(
        refused
            .iter()
            .all(|f| f.leaf.reason.as_deref() == Some("too-large")),
        "{:?}",
        refused.iter().map(|f| &f.leaf.reason).collect::<Vec<_>>()
    );
    gateway.stop().await;
}

/// A connection of `partner`'s to the gateway at `addr`, set up (the TLS handshake done) and
/// idle.
async fn connection_of(
    addr: std::net::SocketAddr,
    partner: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(partner)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Sends `GET /v1/inbox` on `connection` and returns the whole answer (its head, and the body
/// its `Content-Length` announces), or what came before the connection closed.
async fn inbox_on(
    connection: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection
        .write_all(b"GET /v1/inbox HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    connection.flush().await.unwrap();
    let mut answer = Vec::new();
    let whole = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let length = text[..end]
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        answer.len() >= end + 4 + length
    };
    tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 4096];
        while !whole(&answer) {
            match connection.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that pipelines requests and never reads their answers holds its connection, and
/// the answers buffered for it, only until `server.stalled_write_secs` has passed: then the
/// connection is closed, and the answers not yet sent are dropped. (The HTTP library buffers
/// the answers of every request pipelined, and its keep-alive timer runs on idle connections
/// only.)
#[actix_web::test]
async fn a_connection_whose_answers_are_not_read_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers of about 300 bytes each: more than the kernel's buffers of both sides hold.
    const REQUESTS: usize = 50_000;
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.server.stalled_write_secs = 1;
    })
    .await;
    let connection = connection_of(gateway.running.addr, "sn.consulat.casablanca").await;
    let (mut reader, mut writer) = tokio::io::split(connection);
    let writing = tokio::spawn(async move {
        let request = b"GET /v1/no-such-resource HTTP/1.1\r\nHost: localhost\r\n\r\n";
        for _ in 0..REQUESTS {
            if writer.write_all(request).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
        // Kept open: the client does not close its side.
        tokio::time::sleep(WAIT * 2).await;
    });
    // Nothing read for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut answers = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answers.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    writing.abort();
    let answered = answers.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    assert!(
        ended.is_ok(),
        "the connection is still open ({answered} answers read)"
    );
    assert!(answered < REQUESTS, "{answered} answers");
    gateway.stop().await;
}

/// A client certificate holds at most `server.connections_per_certificate` connections: a
/// further one is answered `503` and closed, a place given back (a connection closed) is taken
/// again, and another certificate's connections are not counted against it.
#[actix_web::test]
async fn a_certificate_holds_a_bounded_number_of_connections() {
    let gateway = TestGateway::start(&RegistryChanges::new().inbox("ma.dgsn"), |c| {
        c.server.connections_per_certificate = 2;
    })
    .await;
    let mut first = connection_of(gateway.running.addr, "ma.dgsn").await;
    let mut second = connection_of(gateway.running.addr, "ma.dgsn").await;
    assert!(inbox_on(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(inbox_on(&mut second).await.starts_with("HTTP/1.1 200"));
    let mut third = connection_of(gateway.running.addr, "ma.dgsn").await;
    let answer = inbox_on(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains("server.connections_per_certificate"),
        "{answer}"
    );
    // A message sent on such a connection is counted as one whose turn did not come (the
    // inbox's request was not a message).
    {
        use tokio::io::AsyncReadExt;
        let mut fourth = stalled_body(&gateway, "ma.dgsn").await;
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, fourth.read_to_end(&mut answer))
            .await
            .expect("answered at once")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }
    assert_eq!(
        messages_counted(&gateway, "ma.dgsn", "unavailable").await,
        1.0
    );
    // Another partner's certificate has places of its own.
    let mut other = connection_of(gateway.running.addr, "ma.interieur").await;
    assert!(inbox_on(&mut other).await.starts_with("HTTP/1.1 "));
    assert!(!inbox_on(&mut other).await.starts_with("HTTP/1.1 503"));
    // A connection closed gives its place back.
    drop(first);
    drop(third);
    let mut again = wait_for("a place given back", WAIT, async || {
        let mut connection = connection_of(gateway.running.addr, "ma.dgsn").await;
        let answer = inbox_on(&mut connection).await;
        answer.starts_with("HTTP/1.1 200").then_some(connection)
    })
    .await;
    assert!(inbox_on(&mut again).await.starts_with("HTTP/1.1 200"));
    assert!(inbox_on(&mut second).await.starts_with("HTTP/1.1 200"));
    gateway.stop().await;
}

/// A partner reads at most half of the bodies at once: its stalled bodies cannot hold up
/// another partner's messages.
#[actix_web::test]
async fn a_partners_stalled_bodies_leave_room_for_the_others() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.bodies_in_flight = 2;
        c.limits.body_read_secs = 5;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_body(&gateway, "ma.dgsn").await);
    }
    // Their headers are read, and one of them holds its partner's turn, within the half second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00981"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the other partner's message waited {:?} for the stalled bodies",
        started.elapsed()
    );
    drop(stalled);
    gateway.stop().await;
}

/// A partner has a bounded number of messages in the gateway at once, from before their body
/// is read until they are answered: with its places taken (here by bodies that stall), its
/// next message waits for one to be given back, even while bodies could still be read.
#[actix_web::test]
async fn a_partners_messages_in_the_gateway_are_bounded() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |c| {
        c.limits.messages_in_flight = 4;
        c.limits.body_read_secs = 2;
    })
    .await;
    let partner = "sn.consulat.casablanca";
    // A partner holds half of the places (taken within the half second).
    let stalled = [
        stalled_body(&gateway, partner).await,
        stalled_body(&gateway, partner).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let reply = gateway
        .client(partner)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00982"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "accepted after {:?}, while the partner's places were all taken",
        started.elapsed()
    );
    drop(stalled);
    gateway.stop().await;
}

/// A laissez-passer issued by a consulate that the routing tables do not give the holder's
/// nationality is accepted and delivered, flagged, and does not put an LPC on its case's file.
#[actix_web::test]
async fn a_laissez_passer_from_another_nationalitys_consulate_is_flagged_and_not_on_file() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let case = "RVA-2026-008888";
    let body = fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml")
        .replace("CGSN-CASA-2026-00417", "CGSN-CASA-2026-00983")
        .replace("RVA-2026-004211", case)
        .replace("Sénégalaise", "Ivoirienne");
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", body.into_bytes())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let ack = reply.json();
    let anomalies: Vec<&str> = ack["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        anomalies.contains(&"scope.not_the_consulate_of_nationality"),
        "{ack}"
    );
    // The case has no request on file, but that is not the sender's to learn.
    assert!(
        !anomalies.iter().any(|code| code.starts_with("sequence.")),
        "{ack}"
    );
    assert!(
        !ack["recipients"].as_array().unwrap().is_empty(),
        "delivered"
    );
    let file = gateway.running.gateway.store.case_file(case).unwrap();
    assert!(file.facts.is_empty(), "{:?}", file.facts);
    // The consulate of the holder's nationality is not flagged.
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00984"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(!reply.text().contains("scope."), "{}", reply.text());
    gateway.stop().await;
}

/// The first leg of a connecting journey lands in another country than the person's. Its
/// boarding goes to the IOM mission where the booking on file ends, not to the mission of the
/// leg's arrival; without a booking on file, the leg's arrival is all there is to go by.
#[actix_web::test]
async fn the_first_leg_of_a_connecting_journey_reaches_the_mission_of_its_end() {
    let gateway = TestGateway::start(&RegistryChanges::new().inbox("iom.sn"), |_| {}).await;
    let case = "RVA-2026-008890";
    let mut booking = fixture_json("iom.ma", "in/travel-booked.json");
    booking["message_id"] = json!("IOM-MA-2026-11-10-connect");
    booking["case"]["rva_case_id"] = json!(case);
    booking["booking"]["pnr"] = json!("C0NN3X");
    booking["booking"]["segments"] = json!([
        {"carrier": "AT", "flight_number": "525", "from": "CMN", "to": "ABJ", "date": "2026-11-27"},
        {"carrier": "AT", "flight_number": "511", "from": "ABJ", "to": "DSS", "date": "2026-11-28"}
    ]);
    let reply = gateway
        .client("iom.ma")
        .send("application/json", serde_json::to_vec(&booking).unwrap())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    let boarded = |reference: &str, case: &str| {
        let mut message = fixture_json("airline.at", "in/passenger-boarded-without-bcbp.json");
        message["eventId"] = json!(reference);
        message["flight"]["number"] = json!("525");
        message["flight"]["destination"] = json!("ABJ");
        message["passenger"]["pnr"] = json!("C0NN3X");
        message["passenger"]["remarks"] = json!([format!("OSI AT {case}")]);
        serde_json::to_vec(&message).unwrap()
    };
    let airline = gateway.client("airline.at");
    let reply = airline
        .send("application/json", boarded("AT-DCS-CONNECT-1", case))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let booked = reply.json();

    // A case with no booking on file: the leg's arrival (Abidjan), whose country has no
    // mission in the tables, is flagged; Senegal's mission is not told.
    let reply = airline
        .send(
            "application/json",
            boarded("AT-DCS-CONNECT-2", "RVA-2026-008891"),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let unbooked = reply.json();

    // The airline is told the same of both: neither the mission the booking decides, nor that
    // none could be found. Otherwise any sender could learn whether a case is booked, and
    // where to.
    for ack in [&booked, &unbooked] {
        assert_eq!(
            strings(&ack["recipients"]),
            ["ma.interieur", "iom.ma", "ma.dgsn"],
            "{ack}"
        );
        assert_eq!(ack["anomalies"], json!([]), "{ack}");
    }
    let senegal: Vec<String> = gateway
        .client("iom.sn")
        .inbox(500)
        .await
        .iter()
        .filter_map(|d| d["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        senegal,
        ["AT-DCS-CONNECT-1"],
        "Senegal's mission gets the booked case's boarding"
    );
    let ministry = gateway.client("ma.interieur").inbox(500).await;
    let flagged: Value = ministry
        .iter()
        .find(|d| d["event_id"] == "AT-DCS-CONNECT-2")
        .and_then(|d| serde_json::from_str(d["body"].as_str()?).ok())
        .expect("the ministry's copy of the unbooked boarding");
    let codes: Vec<&str> = flagged["data"]["anomalies"]
        .as_array()
        .expect("its anomalies")
        .iter()
        .filter_map(|a| a["code"].as_str())
        .collect();
    assert!(
        codes.contains(&"routing.unresolved_iom_of_destination"),
        "{flagged}"
    );
    gateway.stop().await;
}

/// A message under a reference already used for another message is refused (`409`, audited),
/// not answered as a repeat: its sender would take it for accepted. A repeat sent again later,
/// even regenerated with another send time, is still a repeat.
#[actix_web::test]
async fn another_message_under_a_used_reference_is_refused_as_a_conflict() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reference = "CGSN-CASA-2026-00985";
    let first = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(first.status, 202, "{}", first.text());
    let again = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["log_index"], first.json()["log_index"]);
    // The same reference, another laissez-passer number.
    let other = String::from_utf8(lpc_issued(reference))
        .unwrap()
        .replace("<Numero>LP0417263</Numero>", "<Numero>LP0417264</Numero>");
    let conflict = consulate.send("application/xml", other.into_bytes()).await;
    let problem = conflict.problem(409, "conflict");
    assert!(
        problem["detail"].as_str().unwrap().contains(reference),
        "{problem}"
    );
    wait_for("the conflict's audit entry", WAIT, async || {
        gateway
            .running
            .gateway
            .log
            .search(&Query::Case("refused/sn.consulat.casablanca".into()))
            .expect("the log is searchable")
            .into_iter()
            .find(|found| {
                found.leaf.kind == Kind::Rejected
                    && found.leaf.reason.as_deref() == Some("conflict")
            })
    })
    .await;
    gateway.stop().await;
}

/// A case's trail longer than one answer is read in pages, each past the last entry of the one
/// before; a bundle, which holds a whole trail, is refused for it, with a pointer to the offline
/// tool, rather than read, proved and written out in the gateway.
#[actix_web::test]
async fn a_trail_longer_than_one_answer_is_read_in_pages() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let log = &gateway.running.gateway.log;
    let case = "RVA-2026-007777";
    let entry = |n: usize| {
        let mut fact = Fact::new(Kind::Accepted, chrono::Utc::now());
        fact.sender = Some("ma.interieur".into());
        fact.transport = Some(Transport::Rest);
        fact.event_type = Some("ma.rva.case.registered".into());
        fact.event_id = Some(format!("MI-LOAD-{n}"));
        fact.case_id = Some(case.into());
        fact
    };
    let facts: Vec<Fact> = (0..2001).map(entry).collect();
    let mut appended_at = Vec::new();
    for chunk in facts.chunks(250) {
        for appended in
            futures_util::future::join_all(chunk.iter().map(|f| log.append_async(f))).await
        {
            appended_at.push(appended.expect("appended").index);
        }
    }
    appended_at.sort_unstable();
    let auditor = gateway.client("audit.igat");
    // A page's indices, covered by its checkpoint or pending, and where the next one starts.
    let page = async |query: &str| {
        let reply = auditor.get(&format!("/v1/audit/trails?{query}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        let mut indices: Vec<u64> = body["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["index"].as_u64().expect("an index"))
            .chain(
                body["pending"]
                    .as_array()
                    .expect("pending")
                    .iter()
                    .map(|i| i.as_u64().expect("an index")),
            )
            .collect();
        indices.sort_unstable();
        (indices, body["next_after"].as_u64())
    };

    let (first, next) = page(&format!("case={case}")).await;
    assert_eq!(first, appended_at[..2000]);
    assert_eq!(next, Some(appended_at[1999]));
    let (rest, next) = page(&format!("case={case}&after={}", appended_at[1999])).await;
    assert_eq!(rest, appended_at[2000..]);
    assert_eq!(next, None);

    // Smaller pages, followed to the end, give the whole trail once, in order.
    let mut read = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let query = match after {
            Some(after) => format!("case={case}&limit=700&after={after}"),
            None => format!("case={case}&limit=700"),
        };
        let (indices, next) = page(&query).await;
        assert!(indices.len() <= 700, "{}", indices.len());
        read.extend(indices);
        pages += 1;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(read, appended_at);

    let problem = auditor
        .get(&format!("/v1/audit/trails?case={case}&format=bundle"))
        .await
        .problem(400, "malformed");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("2001 entries"), "{problem}");
    assert!(detail.contains("passerelle audit trail"), "{problem}");
    for query in [
        "limit=0",
        "limit=2001",
        "limit=many",
        "after=-1",
        "format=bundle&after=3",
        "format=bundle&limit=5",
        "format=xml",
    ] {
        auditor
            .get(&format!("/v1/audit/trails?case={case}&{query}"))
            .await
            .problem(400, "malformed");
    }
    gateway.stop().await;
}

/// Two reads of one inbox at once, and two acknowledgements of one delivery at once, audit
/// the delivery `delivered` once and `acknowledged` once.
#[actix_web::test]
async fn an_inbox_read_and_acknowledged_twice_at_once_is_audited_once() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reference = "CGSN-CASA-2026-00970";
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let ministry = gateway.client("ma.interieur");
    let reads =
        futures_util::future::join_all((0..4).map(|_| ministry.get("/v1/inbox?after=0"))).await;
    let mut ids = BTreeSet::new();
    for read in &reads {
        assert_eq!(read.status, 200, "{}", read.text());
        for message in read.json()["messages"].as_array().unwrap() {
            if message["event_id"] == reference {
                ids.insert(message["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = *ids.first().unwrap();
    let path = format!("/v1/inbox/{id}/ack");
    let acks = futures_util::future::join_all((0..4).map(|_| ministry.post(&path))).await;
    for ack in &acks {
        assert_eq!(ack.status, 200, "{}", ack.text());
    }
    let story = delivery_story(&gateway, reference, "ma.interieur", "acknowledged").await;
    let kinds: Vec<&str> = story.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["delivered", "acknowledged"]);
    gateway.stop().await;
}

/// A CRL that goes stale while a connection is kept alive: past its `nextUpdate` no
/// certificate of its CA has a known status, and the connection's next request is refused, as a
/// new handshake would be. Another CA's CRL, stale since before the start, does not hide it.
#[actix_web::test]
async fn a_crl_gone_stale_while_connected_refuses_the_open_connection() {
    let cas = TwoCas::new();
    let long_ago = rcgen::date_time_ymd(2021, 2, 1);
    std::fs::write(&cas.other_crl, cas.other.crl_until(long_ago))
        .expect("the other CA's stale CRL");
    let crl = cas.pki_dir.path().join("crl.pem");
    // Whole seconds, as a CRL says its times; long enough for the start and a first message.
    let stale_at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(12))
        .replace_nanosecond(0)
        .expect("a whole second");
    std::fs::write(&crl, pki::dev_crl_until(12, &["revoked"], stale_at)).expect("the CRL");
    let dev_ca_name = "CN=Passerelle development CA, O=Passerelle (development only)";
    let changes = RegistryChanges::new().issuer_of_all(dev_ca_name);
    let gateway = TestGateway::start(&changes, |config| {
        config.tls.crls = vec![crl.clone()];
        cas.trusted_by(config);
    })
    .await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00990"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    refused_on_its_connection(&consulate, 990).await;
    assert!(
        time::OffsetDateTime::now_utc() >= stale_at,
        "refused before the CRL went stale"
    );
    gateway.stop().await;
}

/// Sends the consulate's messages (references from `CGSN-CASA-2026-<first + 1>` on) on its
/// kept-alive connection until one is refused, and checks that the refusal is the `403` of a
/// certificate no longer valid.
async fn refused_on_its_connection(consulate: &Client, first: u32) {
    let mut attempt = 0;
    let refused = wait_for(
        "the consulate refused on its connection",
        WAIT,
        async || {
            attempt += 1;
            let reference = format!("CGSN-CASA-2026-{:05}", first + attempt);
            let reply = consulate
                .send("application/xml", lpc_issued(&reference))
                .await;
            (reply.status != 202).then_some(reply)
        },
    )
    .await;
    let problem = refused.problem(403, "forbidden");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no longer valid")),
        "{problem}"
    );
}

/// A certificate revoked while its connection is kept alive: once the gateway has read the new
/// CRL, that connection's next requests are refused (with an answer, which shows the connection
/// was kept: a new one would be refused at the handshake).
#[actix_web::test]
async fn a_certificate_revoked_while_connected_is_refused_on_its_open_connection() {
    let crls = tempfile::tempdir().expect("a temporary folder");
    let crl = crls.path().join("crl.pem");
    std::fs::write(&crl, pki::dev_crl(10, &["revoked"])).expect("the first CRL");
    let gateway = TestGateway::start(&RegistryChanges::new(), |config| {
        config.tls.crls = vec![crl.clone()];
        config.tls.crl_refresh_secs = 1;
    })
    .await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00980"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    // When the CRL in use stops being current (its nextUpdate, 2099-01-01), for an alert.
    let next_update = gateway
        .admin()
        .metric("passerelle_crl_next_update_timestamp_seconds", &[])
        .await;
    assert_eq!(next_update, 4_070_908_800.0);

    std::fs::write(
        &crl,
        pki::dev_crl(11, &["revoked", "sn.consulat.casablanca"]),
    )
    .expect("the CRL that revokes the consulate");
    refused_on_its_connection(&consulate, 981).await;
    let inbox = consulate.get("/v1/inbox").await;
    assert_eq!(inbox.status, 403, "{}", inbox.text());
    // The others go on.
    let ministry = gateway.client("ma.interieur");
    assert_eq!(ministry.get("/v1/inbox").await.status, 200);
    gateway.stop().await;
}

/// A delivery never listed cannot have been processed: its acknowledgement (an id taken for
/// another's, such as the same id at another instance) is refused, and nothing is audited. Once
/// listed, it is acknowledged: the trail says `delivered`, then `acknowledged`.
#[actix_web::test]
async fn an_inbox_delivery_never_listed_cannot_be_acknowledged() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reference = "CGSN-CASA-2026-00971";
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = wait_for("the ministry's delivery", WAIT, async || {
        gateway
            .running
            .gateway
            .store
            .waiting()
            .unwrap()
            .into_iter()
            .find(|d| d.event_id == reference && d.recipient == "ma.interieur")
            .map(|d| d.id)
    })
    .await;
    let ministry = gateway.client("ma.interieur");
    let unread = ministry.post(&format!("/v1/inbox/{id}/ack")).await;
    assert_eq!(unread.status, 409, "{}", unread.text());
    says(&unread.json(), "has not been listed to you yet");
    let still = gateway.running.gateway.store.delivery(id).unwrap().unwrap();
    assert_eq!(still.state, DeliveryState::Pending);
    assert!(!still.body.is_empty(), "its body is kept");
    let listed = ministry.get("/v1/inbox").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(
        listed.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id),
        "{}",
        listed.text()
    );
    let ack = ministry.post(&format!("/v1/inbox/{id}/ack")).await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    let story = delivery_story(&gateway, reference, "ma.interieur", "acknowledged").await;
    let kinds: Vec<&str> = story.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["delivered", "acknowledged"]);
    gateway.stop().await;
}

#[actix_web::test]
async fn duplicates_sent_at_once_get_the_original_receipt() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let verifier = gateway.verifier();
    let consulate = gateway.client("sn.consulat.casablanca");
    let message = lpc_issued("CGSN-CASA-2026-00950");
    let replies = futures_util::future::join_all(
        (0..12).map(|_| consulate.send("application/xml", message.clone())),
    )
    .await;
    let first: Vec<Value> = replies
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.json())
        .collect();
    assert_eq!(first.len(), 1, "one acceptance: {replies:?}");
    let first = &first[0];
    check_ack(first, "accepted", "CGSN-CASA-2026-00950", &verifier);
    for reply in replies.iter().filter(|r| r.status != 202) {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let again = reply.json();
        check_ack(&again, "duplicate", "CGSN-CASA-2026-00950", &verifier);
        for field in ["log_index", "leaf_hash", "receipt"] {
            assert_eq!(again[field], first[field], "{field}");
        }
    }
    // The receipt is served at once, for the same entry.
    let receipt = consulate.get("/v1/receipts/CGSN-CASA-2026-00950").await;
    assert_eq!(receipt.status, 200, "{}", receipt.text());
    assert_eq!(receipt.json()["log_index"], first["log_index"]);
    assert_eq!(receipt.json()["receipt"], first["receipt"]);

    // A message left recorded but unconfirmed (as when its audit append and its withdrawal
    // both failed, and it was answered 503): no receipt is served for it, and the sender's
    // next attempt settles it against the log (where it is not) and is accepted anew.
    let source = first["source"].as_str().unwrap().to_owned();
    let mut left = AcceptedRecord {
        event_id: "CGSN-CASA-2026-00951".into(),
        source: source.clone(),
        sender: "sn.consulat.casablanca".into(),
        event_type: first["event_type"].as_str().unwrap().into(),
        confirmed: false,
        log_index: 0,
        leaf_hash: String::new(),
        receipt: String::new(),
        deliveries: Vec::new(),
        case_id: None,
        case_facts: Vec::new(),
        recipients: Vec::new(),
        accepted_at: "2026-11-20T10:00:00.000Z".into(),
        content: String::new(),
        content_mapping: String::new(),
        anomalies: Vec::new(),
    };
    let store = &gateway.running.gateway.store;
    store
        .record_accepted(&mut left, Vec::new())
        .await
        .expect("recorded");
    // Records a message held (unconfirmed), with no deliveries.
    let hold = async |record: AcceptedRecord| {
        let mut record = AcceptedRecord {
            deliveries: Vec::new(),
            ..record
        };
        store
            .record_accepted(&mut record, Vec::new())
            .await
            .expect("recorded");
    };
    let unsettled = consulate.get("/v1/receipts/CGSN-CASA-2026-00951").await;
    assert_eq!(unsettled.status, 503, "{}", unsettled.text());
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00951"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let ack = reply.json();
    check_ack(&ack, "accepted", "CGSN-CASA-2026-00951", &verifier);
    let record = store
        .accepted(&source, "CGSN-CASA-2026-00951")
        .unwrap()
        .expect("the record");
    assert!(record.confirmed);
    assert_eq!(Some(record.log_index), ack["log_index"].as_u64());
    let recipients = ack["recipients"].as_array().unwrap().len();
    assert!(recipients > 0);
    assert_eq!(
        record.deliveries.len(),
        recipients,
        "the new acceptance's deliveries"
    );

    // A message whose acceptance the log holds, after an earlier acceptance the log voided,
    // while its record was left unconfirmed (a lost confirmation): the sender's next attempt
    // confirms it against the acceptance that stands, and is answered as a duplicate of it.
    let reference = "CGSN-CASA-2026-00952";
    let log = &gateway.running.gateway.log;
    let acceptance = || {
        let mut fact = Fact::new(Kind::Accepted, chrono::Utc::now());
        fact.sender = Some("sn.consulat.casablanca".into());
        fact.recipients = vec!["ma.interieur".into()];
        fact.transport = Some(Transport::Rest);
        fact.event_type = Some("ma.rva.lpc.issued".into());
        fact.event_id = Some(reference.into());
        fact.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), reference.into())];
        fact
    };
    let voided = log.append_async(&acceptance()).await.unwrap();
    let mut void = Fact::new(Kind::Rejected, chrono::Utc::now());
    void.sender = Some("sn.consulat.casablanca".into());
    void.event_type = Some("ma.rva.lpc.issued".into());
    void.event_id = Some(reference.into());
    void.reason = Some("store-unavailable".into());
    void.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), reference.into())];
    log.append_async(&void).await.unwrap();
    let standing = log.append_async(&acceptance()).await.unwrap();
    assert!(standing.index > voided.index);
    hold(AcceptedRecord {
        event_id: reference.into(),
        ..left.clone()
    })
    .await;
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ack = reply.json();
    check_ack(&ack, "duplicate", reference, &verifier);
    assert_eq!(
        ack["log_index"], standing.index,
        "the acceptance that stands"
    );
    assert_eq!(ack["leaf_hash"], hex::encode(standing.leaf_hash.0));
    let record = store
        .accepted(&source, reference)
        .unwrap()
        .expect("the record");
    assert!(record.confirmed);
    assert_eq!(record.log_index, standing.index);

    // A record that knows its own entry's leaf, while the acceptance that stands is another
    // attempt's (a crash lost that attempt's record, and then this attempt's entry): it is
    // withdrawn rather than confirmed against evidence of another body, and the message is
    // accepted anew.
    let reference = "CGSN-CASA-2026-00953";
    let acceptance = |case_id: Option<&str>| {
        let mut fact = Fact::new(Kind::Accepted, chrono::Utc::now());
        fact.sender = Some("sn.consulat.casablanca".into());
        fact.recipients = vec!["ma.interieur".into()];
        fact.transport = Some(Transport::Rest);
        fact.event_type = Some("ma.rva.lpc.issued".into());
        fact.event_id = Some(reference.into());
        fact.case_id = case_id.map(str::to_owned);
        fact.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), reference.into())];
        fact
    };
    let other_attempt = log.append_async(&acceptance(None)).await.unwrap();
    hold(AcceptedRecord {
        event_id: reference.into(),
        leaf_hash: "ab".repeat(32),
        ..left.clone()
    })
    .await;
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_ne!(reply.json()["log_index"], other_attempt.index);

    // A record whose acceptance is logged and its anomaly is not (a crash, or a failing
    // log, between the two): the anomaly entry is written before the message is confirmed.
    // And one whose anomaly an earlier settling wrote, after a later attempt's void, before
    // the confirmation failed: it is not written twice.
    for (reference, written_before) in [
        ("CGSN-CASA-2026-00954", false),
        ("CGSN-CASA-2026-00955", true),
    ] {
        let case = "RVA-2026-004211";
        let mut accepted = acceptance(Some(case));
        accepted.event_id = Some(reference.into());
        accepted.identifiers.partner_refs =
            vec![("sn.consulat.casablanca".into(), reference.into())];
        let logged = log.append_async(&accepted).await.unwrap();
        // A later attempt of the message, voided, with an anomaly entry of its own: that entry
        // does not stand, and is not the one the first acceptance owes.
        let mut later = acceptance(Some(case));
        later.event_id = accepted.event_id.clone();
        later.identifiers = accepted.identifiers.clone();
        log.append_async(&later).await.unwrap();
        let mut its_anomaly = Fact::new(Kind::Anomaly, chrono::Utc::now());
        its_anomaly.sender = Some("sn.consulat.casablanca".into());
        its_anomaly.event_type = Some("ma.rva.lpc.issued".into());
        its_anomaly.event_id = Some(reference.into());
        its_anomaly.case_id = Some(case.into());
        its_anomaly.reason = Some("sequence.missing_lpc_requested".into());
        log.append_async(&its_anomaly).await.unwrap();
        let mut void = Fact::new(Kind::Rejected, chrono::Utc::now());
        void.sender = Some("sn.consulat.casablanca".into());
        void.event_type = Some("ma.rva.lpc.issued".into());
        void.event_id = Some(reference.into());
        void.reason = Some("duplicate".into());
        void.identifiers = accepted.identifiers.clone();
        let voided = log.append_async(&void).await.unwrap();
        if written_before {
            its_anomaly.time = chrono::Utc::now();
            log.append_async(&its_anomaly).await.unwrap();
        }
        hold(AcceptedRecord {
            event_id: reference.into(),
            case_id: Some(case.into()),
            leaf_hash: hex::encode(logged.leaf_hash.0),
            anomalies: vec!["sequence.missing_lpc_requested".into()],
            ..left.clone()
        })
        .await;
        let anomalies_of = async || {
            let log = log.clone();
            tokio::task::spawn_blocking(move || {
                // A checkpoint over every durable entry, so that the search reads them all.
                log.sync().unwrap();
                log.search(&Query::Case(case.into()))
                    .unwrap()
                    .into_iter()
                    .filter(|f| {
                        f.leaf.kind == Kind::Anomaly
                            && f.leaf.event_id.as_deref() == Some(reference)
                    })
                    .map(|f| (f.index, f.leaf.reason.unwrap_or_default()))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap()
        };
        let before = anomalies_of().await.len();
        assert_eq!(
            before,
            1 + usize::from(written_before),
            "the voided attempt's"
        );
        let reply = consulate
            .send("application/xml", lpc_issued(reference))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["log_index"], logged.index);
        let written = anomalies_of().await;
        assert_eq!(written.len(), 2, "{written:?}");
        assert!(written[1].0 > voided.index);
        assert_eq!(written[1].1, "sequence.missing_lpc_requested");
    }
    gateway.stop().await;
}

#[actix_web::test]
async fn a_delivery_is_audited_with_the_mapping_that_wrote_it() {
    // The DGSN's mapping changes between the write of a notice and its delivery (a restart
    // with an edited mapping): the `delivered` entry names the mapping as it wrote the body.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mappings = dir.path().join("mappings");
    copy_dir(&gateway_support::root().join("mappings"), &mappings);
    let registry = write_registry(dir.path(), &RegistryChanges::new().inbox("ma.dgsn"));
    let mut config = test_config(&dir.path().join("data"), &registry);
    config.paths.mappings = mappings.clone();

    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts");
    let dgsn_mapping = |running: &RunningGateway| {
        let mapping = running.gateway.mappings.partner("ma.dgsn").unwrap();
        mapping.hash.clone()
    };
    let written_with = dgsn_mapping(&running);
    let reply = Client::new("sn.consulat.casablanca", running.addr)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00700"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    running.shutdown().await.expect("a clean shutdown");

    let file = mappings.join("ma.dgsn.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n# Edited after the notice was written.\n");
    std::fs::write(&file, text).unwrap();
    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts again");
    let now_loaded = dgsn_mapping(&running);
    assert_ne!(
        now_loaded, written_with,
        "the edit changes the mapping's hash"
    );
    let inbox = Client::new("ma.dgsn", running.addr).inbox(10).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    let delivered = wait_for("the delivered entry", WAIT, async || {
        let found = running
            .gateway
            .log
            .search(&Query::Case(CASE.into()))
            .expect("search");
        found
            .into_iter()
            .map(|f| f.leaf)
            .find(|leaf| leaf.kind == Kind::Delivered && leaf.recipients == ["ma.dgsn".to_owned()])
    })
    .await;
    let mapping = delivered.mapping.expect("the mapping that wrote it");
    assert_eq!(mapping.hash, written_with);
    running.shutdown().await.expect("a clean shutdown");
}

#[actix_web::test]
async fn a_dead_letter_whose_entry_is_owed_is_logged_at_the_next_start() {
    // The DGSN's mapping cannot write the consulate's notice: its delivery is created dead.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mappings = mappings_unwritable_for_dgsn(dir.path());
    let registry = write_registry(dir.path(), &RegistryChanges::new().inbox("ma.dgsn"));
    let mut config = test_config(&dir.path().join("data"), &registry);
    config.paths.mappings = mappings;
    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts");
    let store = running.gateway.store.clone();

    // Sent as usual: its dead_lettered entry is written, and nothing is owed.
    let reply = Client::new("sn.consulat.casablanca", running.addr)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00710"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("the dead letter's entry", WAIT, async || {
        store.owed_audits().unwrap().is_empty().then_some(())
    })
    .await;

    // A message confirmed in the store whose dead letter's entry was never written, as a
    // crash right after the confirmation leaves it.
    let mut record = AcceptedRecord {
        event_id: "CGSN-CASA-2026-00711".into(),
        source: "urn:partner:sn.consulat.casablanca".into(),
        sender: "sn.consulat.casablanca".into(),
        event_type: "ma.rva.lpc.issued".into(),
        confirmed: false,
        log_index: 0,
        leaf_hash: String::new(),
        receipt: String::new(),
        deliveries: Vec::new(),
        case_id: Some(CASE.into()),
        case_facts: Vec::new(),
        recipients: vec!["ma.dgsn".into()],
        accepted_at: "2026-11-30T05:00:00.000Z".into(),
        content: String::new(),
        content_mapping: String::new(),
        anomalies: Vec::new(),
    };
    let dead = created_dead("ma.dgsn");
    let Recorded::New(made) = store
        .record_accepted(&mut record, vec![dead])
        .await
        .unwrap()
    else {
        panic!("taken for a duplicate");
    };
    let entry = LogEntry {
        log_index: 0,
        leaf_hash: String::new(),
        receipt: String::new(),
    };
    store.confirm_later(&record, entry, &made).unwrap();
    let owed: Vec<u64> = store.owed_audits().unwrap().iter().map(|d| d.id).collect();
    assert_eq!(owed, [made[0].id]);
    running.shutdown().await.expect("a clean shutdown");
    drop(store);

    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts again");
    assert!(running.gateway.store.owed_audits().unwrap().is_empty());
    let logged = wait_for("the owed entry", WAIT, async || {
        let found = running
            .gateway
            .log
            .search(&Query::Case(CASE.into()))
            .expect("search");
        let leaves: Vec<_> = found
            .into_iter()
            .map(|f| f.leaf)
            .filter(|leaf| {
                leaf.kind == Kind::DeadLettered
                    && leaf.event_id.as_deref() == Some("CGSN-CASA-2026-00711")
            })
            .collect();
        (!leaves.is_empty()).then_some(leaves)
    })
    .await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].recipients, ["ma.dgsn".to_owned()]);
    assert_eq!(logged[0].reason.as_deref(), Some("encode-failed"));
    running.shutdown().await.expect("a clean shutdown");
}

#[actix_web::test]
async fn a_recipient_whose_endpoint_hangs_leaves_room_for_the_others() {
    // The DGSN's endpoint takes connections and never answers: each call runs into the 30 s
    // timeout. The ministry's answers at once. Four calls in flight at most, one a recipient.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let hanging_url = format!(
        "https://localhost:{}/notices",
        hanging.local_addr().unwrap().port()
    );
    let ministry = Receiver::start();
    let changes = RegistryChanges::new()
        .webhook("ma.dgsn", &hanging_url)
        .webhook("ma.interieur", &ministry.url("/notices"));
    let gateway = TestGateway::start(&changes, |c| {
        c.delivery.concurrency = 4;
        c.delivery.timeout_secs = 30;
    })
    .await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let sent = Instant::now();
    for n in 0..6 {
        let reply = consulate
            .send(
                "application/xml",
                lpc_issued(&format!("CGSN-CASA-2026-0060{n}")),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    // Each notice goes to both. Were the DGSN's calls to take every slot, the ministry's last
    // notices would wait for their timeouts.
    wait_for(
        "the ministry's six notices",
        Duration::from_secs(20),
        async || (ministry.accepted().len() == 6).then_some(()),
    )
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "{:?}",
        sent.elapsed()
    );
    drop(hanging);
    gateway.stop().await;
}

#[actix_web::test]
async fn a_dead_letter_is_listed_and_redelivered() {
    let dgsn = Receiver::start();
    dgsn.answer(Answer::Fail {
        status: 500,
        retry_after: None,
    });
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |c| c.delivery.max_attempts = 2).await;
    let admin = gateway.admin();
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00417"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    let dead = wait_for("a dead letter", WAIT, async || {
        let list = admin.get("/dead-letters").await.json();
        let list = list.as_array().unwrap().clone();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter["recipient"], "ma.dgsn");
    assert_eq!(letter["channel"], "webhook");
    assert_eq!(letter["event_id"], "CGSN-CASA-2026-00417");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["last_error"], "webhook.http-500");
    assert!(letter.get("body").is_none(), "metadata only");
    let id = letter["id"].as_u64().unwrap();
    assert_eq!(dgsn.received().len(), 2, "max_attempts = 2");
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 1.0);

    // Nor read the dead letters under a name of its own that resolves to this host (DNS
    // rebinding): the loopback listener answers loopback names only.
    let rebound = admin
        .get_for_host("/dead-letters", "rebound.example:9090")
        .await;
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    for host in ["localhost:9090", "127.0.0.1", "[::1]:9090", "LOCALHOST"] {
        let local = admin.get_for_host("/dead-letters", host).await;
        assert_eq!(local.status, 200, "{host}: {}", local.text());
    }
    // A web page in a browser on the operator's machine cannot redeliver it: the listener
    // takes no changes from pages.
    refused_from_a_web_page(&admin, &format!("/deliveries/{id}/redeliver")).await;
    assert_eq!(dgsn.received().len(), 2, "not redelivered");

    // Redelivering what is not a dead letter is refused, and leaves it where it was.
    let pending = gateway
        .running
        .gateway
        .store
        .inbox("iom.ma", 0, 10)
        .unwrap()
        .deliveries;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, DeliveryState::Pending);
    assert_eq!(
        admin
            .post(&format!("/deliveries/{}/redeliver", pending[0].id))
            .await
            .status,
        404
    );
    assert_eq!(admin.post("/deliveries/999999/redeliver").await.status, 404);
    let not_an_id = admin.post("/deliveries/abc/discard").await;
    assert_eq!(not_an_id.status, 404);
    assert!(
        not_an_id.text().contains("a delivery id is a whole number"),
        "{}",
        not_an_id.text()
    );
    // A change asked with the wrong method is told which one the route takes.
    let wrong_method = admin.get("/deliveries/999999/discard").await;
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());
    assert_eq!(wrong_method.header("allow").as_deref(), Some("POST"));
    assert_eq!(admin.post("/metrics").await.status, 405);
    let inbox = gateway.client("iom.ma").inbox(500).await;
    assert_eq!(inbox.len(), 1, "the delivery is still in the inbox");
    assert_eq!(inbox[0]["id"], pending[0].id);

    // The operator's command lists the same dead letter, and refuses to redeliver what is
    // not one.
    let admin_url = format!("http://{}", gateway.running.admin_addr);
    let listed = passerelle_cli(&["deliveries", "dead", "--admin", &admin_url]).await;
    assert!(listed.status.success(), "{listed:?}");
    let table = String::from_utf8(listed.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"));
    for column in [
        "ma.dgsn",
        "webhook",
        "webhook.http-500",
        "CGSN-CASA-2026-00417",
    ] {
        assert!(row.contains(column), "{column} in {row}");
    }
    assert!(table.contains("1 dead letter(s)"), "{table}");
    let pending_id = pending[0].id.to_string();
    redelivery_refused_by_cli(&admin_url, &pending_id, 404).await;

    // The endpoint is fixed; the operator puts the dead letter back in line.
    dgsn.answer(Answer::Accept);
    let redelivered = deliveries_cli("redeliver", id, &admin_url).await;
    assert!(redelivered.status.success(), "{redelivered:?}");
    assert_eq!(
        String::from_utf8(redelivered.stdout).unwrap(),
        format!("delivery {id}: back in line (webhook)\n")
    );
    wait_for("the redelivery", WAIT, async || {
        (!dgsn.accepted().is_empty()).then_some(())
    })
    .await;
    let received = dgsn.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    assert!(received.iter().all(|r| r.delivery == id.to_string()));
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00417", "ma.dgsn", "delivered").await;
    let failed = |reason: &str| Some(reason.to_owned());
    assert_eq!(
        story,
        [
            ("delivery_failed".to_owned(), failed("webhook.http-500")),
            ("dead_lettered".to_owned(), failed("webhook.http-500")),
            ("redelivered".to_owned(), Some("operator".to_owned())),
            ("delivered".to_owned(), None),
        ]
    );
    assert!(
        admin
            .get("/dead-letters")
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 0.0);
    // Delivered now: not a dead letter any more.
    assert_eq!(
        admin
            .post(&format!("/deliveries/{id}/redeliver"))
            .await
            .status,
        404
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dgsn.accepted().len(), 1, "delivered once");
    // The admin listener's other routes.
    assert_eq!(admin.get("/health").await.status, 200);
    let ready = admin.get("/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    gateway.stop().await;
}

/// A webhook recipient moved to the inbox in the registry: what died on its old endpoint
/// (`webhook.no-endpoint` for what still waited) is redelivered to its inbox, the mode it has
/// now, not dead-lettered again on the webhook.
#[actix_web::test]
async fn a_dead_letter_is_redelivered_on_the_recipients_delivery_mode_now() {
    let dgsn = Receiver::start();
    dgsn.answer(Answer::Fail {
        status: 500,
        retry_after: None,
    });
    let reference = "CGSN-CASA-2026-00418";
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |c| c.delivery.max_attempts = 1).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let admin = gateway.admin();
    let id = wait_for("a dead letter", WAIT, async || {
        let list = admin.get("/dead-letters").await.json();
        list.as_array()?.first()?["id"].as_u64()
    })
    .await;

    // The same data, the registry now giving the border police an inbox.
    let gateway = gateway
        .restart(&RegistryChanges::new().inbox("ma.dgsn"))
        .await;
    let admin = gateway.admin();
    let back = admin.post(&format!("/deliveries/{id}/redeliver")).await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(
        back.json(),
        json!({"id": id, "state": "pending", "channel": "inbox"})
    );
    let record = gateway.running.gateway.store.delivery(id).unwrap().unwrap();
    assert_eq!(record.channel, Channel::Inbox);
    assert_eq!(record.state, DeliveryState::Pending);

    let police = gateway.client("ma.dgsn");
    let inbox = police.get("/v1/inbox").await;
    assert_eq!(inbox.status, 200, "{}", inbox.text());
    let messages = inbox.json()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["id"], id);
    assert_eq!(messages[0]["event_id"], reference);
    let ack = police.post(&format!("/v1/inbox/{id}/ack")).await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    let story = delivery_story(&gateway, reference, "ma.dgsn", "acknowledged").await;
    let kinds: Vec<&str> = story.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["dead_lettered", "redelivered", "delivered", "acknowledged"]
    );
    assert_eq!(
        dgsn.received().len(),
        1,
        "the old endpoint is not called again"
    );
    gateway.stop().await;
}

/// An inbox recipient given another delivery mode: what waits in its inbox, listed or not, is
/// dead-lettered at the start (`inbox.not-an-inbox-recipient`), no longer listed to it, and
/// goes out by its new mode once redelivered.
#[actix_web::test]
async fn an_inbox_left_by_a_change_of_delivery_mode_becomes_dead_letters() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let listed = "CGSN-CASA-2026-00421";
    let unlisted = "CGSN-CASA-2026-00422";
    let reply = consulate.send("application/xml", lpc_issued(listed)).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let ministry = gateway.client("ma.interieur");
    let seen = ministry.inbox(50).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let reply = consulate
        .send("application/xml", lpc_issued(unlisted))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    let receiver = Receiver::start();
    let changes = RegistryChanges::new().webhook("ma.interieur", &receiver.url("/rva"));
    let gateway = gateway.restart(&changes).await;
    let ministry = gateway.client("ma.interieur");
    let refused = ministry.get("/v1/inbox").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    says(&refused.json(), "its messages are posted to its webhook");
    let admin = gateway.admin();
    let dead = admin.get("/dead-letters").await.json();
    let dead: Vec<&Value> = dead
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["recipient"] == "ma.interieur")
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let store = &gateway.running.gateway.store;
    let waiting = store.waiting().unwrap();
    assert!(
        waiting.iter().all(|d| d.recipient != "ma.interieur"),
        "{waiting:?}"
    );
    for letter in &dead {
        assert_eq!(letter["channel"], "inbox");
        assert_eq!(letter["last_error"], "inbox.not-an-inbox-recipient");
        let id = letter["id"].as_u64().unwrap();
        let back = admin.post(&format!("/deliveries/{id}/redeliver")).await;
        assert_eq!(back.status, 200, "{}", back.text());
        assert_eq!(back.json()["channel"], "webhook");
    }
    // Nothing is left in the inbox index for the ministry.
    assert!(
        !store
            .inbox_recipients()
            .unwrap()
            .contains(&"ma.interieur".to_owned())
    );
    let posted = wait_for("the two redeliveries", WAIT, async || {
        let accepted = receiver.accepted();
        (accepted.len() == 2).then_some(accepted)
    })
    .await;
    let mut events: Vec<&str> = posted.iter().map(|r| r.event_id.as_str()).collect();
    events.sort_unstable();
    assert_eq!(events, [listed, unlisted]);
    for (reference, before) in [(listed, &["delivered"][..]), (unlisted, &[][..])] {
        let story = delivery_story(&gateway, reference, "ma.interieur", "delivered").await;
        let kinds: Vec<&str> = story.iter().map(|(kind, _)| kind.as_str()).collect();
        let after = ["dead_lettered", "redelivered", "delivered"];
        assert_eq!(kinds, [before, &after[..]].concat(), "{reference}");
        let reason = story.iter().find(|(kind, _)| kind == "dead_lettered");
        assert_eq!(
            reason.and_then(|(_, r)| r.as_deref()),
            Some("inbox.not-an-inbox-recipient")
        );
    }
    gateway.stop().await;
}

/// A delivery for `recipient` that the gateway could not write (`encode-failed`): recorded
/// dead, its `dead_lettered` entry owed.
fn created_dead(recipient: &str) -> NewDelivery {
    NewDelivery {
        recipient: recipient.into(),
        channel: Channel::Inbox,
        body: Vec::new(),
        content_type: String::new(),
        mapping_id: String::new(),
        mapping_hash: String::new(),
        withheld: Vec::new(),
        unwritable: Some("encode-failed".into()),
    }
}

/// A case whose key the audit log's key file lost (restored from an older copy): the log
/// records the other cases and refuses this one's entries, so its deliveries, which could not
/// be audited, stay in line, unsent: the webhook is not called again and again, and the inbox
/// is read without them rather than refused whole.
#[actix_web::test]
async fn a_delivery_whose_case_cannot_be_recorded_stays_in_line_unsent() {
    let dgsn = Receiver::start();
    dgsn.answer(Answer::Fail {
        status: 500,
        retry_after: None,
    });
    let reference = "CGSN-CASA-2026-00424";
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |_| {}).await;
    // Another case's key first, so that losing this case's key leaves the key file not empty
    // (an emptied file is refused whole at start, as a missing one is).
    let mut other_case = Fact::new(Kind::Anomaly, chrono::Utc::now());
    other_case.case_id = Some("RVA-2026-000001".into());
    gateway
        .running
        .gateway
        .log
        .append_async(&other_case)
        .await
        .unwrap();
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("the border police's first attempt", WAIT, async || {
        (!dgsn.received().is_empty()).then_some(())
    })
    .await;
    // A message of the case left held, its acceptance logged and its anomaly owed (a crash
    // between the two): once the key is lost it cannot be settled, and it must not stop the
    // start.
    let source = reply.json()["source"].as_str().unwrap().to_owned();
    let held_reference = "CGSN-CASA-2026-00426";
    let mut accepted = Fact::new(Kind::Accepted, chrono::Utc::now());
    accepted.sender = Some("sn.consulat.casablanca".into());
    accepted.recipients = vec!["ma.interieur".into()];
    accepted.transport = Some(Transport::Rest);
    accepted.event_type = Some("ma.rva.lpc.issued".into());
    accepted.event_id = Some(held_reference.into());
    accepted.case_id = Some(CASE.into());
    accepted.identifiers.partner_refs =
        vec![("sn.consulat.casablanca".into(), held_reference.into())];
    let logged = gateway
        .running
        .gateway
        .log
        .append_async(&accepted)
        .await
        .unwrap();
    let mut held = AcceptedRecord {
        event_id: held_reference.into(),
        source: source.clone(),
        sender: "sn.consulat.casablanca".into(),
        event_type: "ma.rva.lpc.issued".into(),
        confirmed: false,
        log_index: 0,
        leaf_hash: hex::encode(logged.leaf_hash.0),
        receipt: String::new(),
        deliveries: Vec::new(),
        case_id: Some(CASE.into()),
        case_facts: Vec::new(),
        recipients: Vec::new(),
        accepted_at: "2026-11-20T10:00:00.000Z".into(),
        content: String::new(),
        content_mapping: String::new(),
        anomalies: vec!["sequence.missing_lpc_requested".into()],
    };
    // With a delivery created dead, whose `dead_lettered` entry is owed and, once the key is
    // lost, cannot be written: it stays owed, and does not stop the start either.
    let unwritable = created_dead("iom.ma");
    gateway
        .running
        .gateway
        .store
        .record_accepted(&mut held, vec![unwritable])
        .await
        .expect("recorded");
    let TestGateway { running, dir } = gateway;
    running.shutdown().await.expect("a clean shutdown");
    let calls_for = |reference: &str| {
        dgsn.received()
            .iter()
            .filter(|r| r.event_id == reference)
            .count()
    };
    let calls = calls_for(reference);
    // The key file as it was before the case's key was written: its last 128-byte record.
    let keys = dir.path().join("data/audit-log/private/keys/cases.keys");
    let length = std::fs::metadata(&keys).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&keys).unwrap();
    file.set_len(length - 128).unwrap();
    drop(file);
    dgsn.answer(Answer::Accept);
    let registry = write_registry(dir.path(), &changes);
    let config = test_config(&dir.path().join("data"), &registry);
    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts again");
    let gateway = TestGateway { running, dir };
    assert!(gateway.running.gateway.log.case_key_lost("RVA-2026-004211"));
    let owed = gateway.running.gateway.store.owed_audits().unwrap();
    assert!(
        owed.iter().any(|d| d.event_id == held_reference),
        "the dead letter's entry stays owed"
    );
    let still_held = gateway
        .running
        .gateway
        .store
        .accepted(&source, held_reference)
        .unwrap()
        .expect("the held record");
    assert!(!still_held.confirmed, "left held");

    let inbox = gateway.client("ma.interieur").get("/v1/inbox").await;
    assert_eq!(inbox.status, 200, "{}", inbox.text());
    assert_eq!(inbox.json()["messages"], serde_json::json!([]));
    // Another case goes on, and its delivery is listed even in a page of one: the one left
    // out takes no place in the page.
    let other = String::from_utf8(lpc_issued("CGSN-CASA-2026-00425"))
        .unwrap()
        .replace(CASE, OTHER_CASE);
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", other.into_bytes())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let listed = wait_for("the other case's delivery", WAIT, async || {
        let inbox = gateway
            .client("ma.interieur")
            .get("/v1/inbox?limit=1")
            .await;
        let messages = inbox.json()["messages"].as_array()?.clone();
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["event_id"], "CGSN-CASA-2026-00425");
    // The webhook delivery was due at once (the test backs off a second at most).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls_for(reference), calls, "called again");
    let waiting = gateway.running.gateway.store.waiting().unwrap();
    let states: Vec<(&str, DeliveryState)> = waiting
        .iter()
        .filter(|d| d.event_id == reference)
        .map(|d| (d.recipient.as_str(), d.state))
        .collect();
    for recipient in ["ma.interieur", "ma.dgsn"] {
        assert!(states.iter().any(|(r, _)| *r == recipient), "{states:?}");
    }
    assert!(
        states
            .iter()
            .all(|(_, state)| *state == DeliveryState::Pending),
        "{states:?}"
    );
    gateway.stop().await;
}

/// Recipients taken out of the registry: what waited in an inbox, and what waited out a
/// webhook's back-off (an hour, as the endpoint asked), become dead letters at the start,
/// before anything is tried; neither can be redelivered (there is no mode to redeliver by),
/// and both can be discarded.
#[actix_web::test]
async fn the_deliveries_of_a_partner_taken_out_of_the_registry_can_only_be_discarded() {
    let dgsn = Receiver::start();
    dgsn.answer(Answer::Fail {
        status: 503,
        retry_after: Some(3600),
    });
    let reference = "CGSN-CASA-2026-00423";
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("the border police's first attempt", WAIT, async || {
        (!dgsn.received().is_empty()).then_some(())
    })
    .await;

    let gone = RegistryChanges::new()
        .remove("ma.interieur")
        .remove("ma.dgsn");
    // The endpoint asked for an hour: nothing more is tried before the restart.
    let calls = dgsn.received().len();
    let gateway = gateway.restart(&gone).await;
    let admin = gateway.admin();
    let dead = wait_for("both dead letters", WAIT, async || {
        let list = admin.get("/dead-letters").await.json();
        let list: Vec<Value> = list
            .as_array()?
            .iter()
            .filter(|d| d["event_id"] == reference)
            .cloned()
            .collect();
        (list.len() == 2).then_some(list)
    })
    .await;
    assert_eq!(dgsn.received().len(), calls, "tried after the restart");
    for letter in &dead {
        // The webhook's one call is counted; finding that there is no endpoint is no attempt.
        let (expected, attempts) = if letter["recipient"] == "ma.interieur" {
            ("inbox.not-an-inbox-recipient", 0)
        } else {
            ("webhook.no-endpoint", 1)
        };
        assert_eq!(letter["last_error"], expected, "{letter}");
        assert_eq!(letter["attempts"], attempts, "{letter}");
        let id = letter["id"].as_u64().unwrap();
        let refused = admin.post(&format!("/deliveries/{id}/redeliver")).await;
        assert_eq!(refused.status, 409, "{}", refused.text());
        assert!(
            refused.text().contains("no delivery mode"),
            "{}",
            refused.text()
        );
        let discarded = admin.post(&format!("/deliveries/{id}/discard")).await;
        assert_eq!(discarded.status, 200, "{}", discarded.text());
    }
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 0.0);
    gateway.stop().await;
}

#[actix_web::test]
async fn a_delivery_that_could_not_be_written_is_refused_redelivery() {
    // The DGSN's mappings with a code list that lacks the issuing post of the consulate's
    // laissez-passer: the gateway accepts the message but cannot write it for the DGSN.
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let mappings = mappings_unwritable_for_dgsn(scratch.path());
    let changes = RegistryChanges::new().inbox("ma.dgsn");
    let gateway = TestGateway::start(&changes, |c| {
        c.paths.mappings = mappings.clone();
    })
    .await;
    let admin = gateway.admin();
    let dead = dead_for_the_dgsn(&gateway, "CGSN-CASA-2026-00901", "encode-failed").await;
    assert_eq!(dead["attempts"], 0);
    let id = dead["id"].as_u64().unwrap();

    // Putting it back in line would only fail again: the admin route answers 409 and says why,
    // the operator's command reports it, and the dead letter stays where it was.
    let refused = admin.post(&format!("/deliveries/{id}/redeliver")).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let why = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains("encode-failed"), "{why}");
    let admin_url = format!("http://{}", gateway.running.admin_addr);
    redelivery_refused_by_cli(&admin_url, &id.to_string(), 409).await;
    let still = admin.get("/dead-letters").await.json();
    assert_eq!(still.as_array().unwrap().len(), 1, "{still}");
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 1.0);
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00901", "ma.dgsn", "dead_lettered").await;
    assert_eq!(
        story,
        [("dead_lettered".to_owned(), Some("encode-failed".to_owned()))],
        "no redelivered entry for a refused redelivery"
    );
    // The other recipients got theirs.
    assert_eq!(gateway.client("iom.ma").inbox(500).await.len(), 1);

    // The list comes a page at a time, by delivery id.
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00902"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let ids = |path: &str| {
        let admin = admin.clone();
        let path = path.to_owned();
        async move {
            let reply = admin.get(&path).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
            reply
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    let both = ids("/dead-letters").await;
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0], id);
    assert!(both[1] > id);
    assert_eq!(ids("/dead-letters?limit=1").await, [id]);
    assert_eq!(
        ids(&format!("/dead-letters?after={id}&limit=1")).await,
        [both[1]]
    );
    assert!(
        ids(&format!("/dead-letters?after={}", both[1]))
            .await
            .is_empty()
    );
    for bad in ["limit=0", "limit=1001", "limit=many", "after=-1", "page=2"] {
        let reply = admin.get(&format!("/dead-letters?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert!(reply.json()["error"].is_string(), "{bad}");
    }
    // A delivery id that is not one, and a route that does not exist: JSON errors as well.
    for reply in [
        admin.post("/deliveries/abc/redeliver").await,
        admin.post("/deliveries/abc/discard").await,
        admin.get("/no-such-route").await,
    ] {
        assert_eq!(reply.status, 404, "{}", reply.text());
        assert!(reply.json()["error"].is_string(), "{}", reply.text());
    }

    // What cannot be redelivered can be discarded, and is: by the operator's command, and by
    // the admin route (not from a web page). Each is audited, then out of the dead letters.
    let second = both[1];
    delivery_story(&gateway, "CGSN-CASA-2026-00902", "ma.dgsn", "dead_lettered").await;
    refused_from_a_web_page(&admin, &format!("/deliveries/{second}/discard")).await;
    let discarded = deliveries_cli("discard", id, &admin_url).await;
    assert!(discarded.status.success(), "{discarded:?}");
    assert_eq!(
        String::from_utf8(discarded.stdout).unwrap(),
        format!("delivery {id}: discarded\n")
    );
    let reply = admin.post(&format!("/deliveries/{second}/discard")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "discarded");
    assert!(ids("/dead-letters").await.is_empty());
    assert_eq!(admin.metric("passerelle_outbox_dead", &[]).await, 0.0);
    let counted = [("recipient", "ma.dgsn"), ("outcome", "discarded")];
    assert_eq!(
        admin.metric("passerelle_deliveries_total", &counted).await,
        2.0
    );
    for reference in ["CGSN-CASA-2026-00901", "CGSN-CASA-2026-00902"] {
        let story = delivery_story(&gateway, reference, "ma.dgsn", "discarded").await;
        assert_eq!(
            story,
            [
                ("dead_lettered".to_owned(), Some("encode-failed".to_owned())),
                ("discarded".to_owned(), Some("operator".to_owned())),
            ],
            "{reference}"
        );
    }
    // Once discarded, it is no dead letter: neither discarded again nor redelivered.
    assert_eq!(
        admin
            .post(&format!("/deliveries/{id}/discard"))
            .await
            .status,
        404
    );
    assert_eq!(
        admin
            .post(&format!("/deliveries/{id}/redeliver"))
            .await
            .status,
        404
    );
    let again = deliveries_cli("discard", id, &admin_url).await;
    assert!(!again.status.success());
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(
        stderr.contains(&format!("delivery {id}: not discarded (404")),
        "{stderr}"
    );
    gateway.stop().await;
}

#[actix_web::test]
async fn only_the_mappings_in_force_are_used() {
    // IOM Senegal may send only arrivals, and the DGSN's laissez-passer notice is not in force.
    let changes = RegistryChanges::new()
        .inbox("ma.dgsn")
        .mappings(
            "iom.sn",
            &["iom.sn/arrival-confirmed", "iom.sn/cloudevents"],
        )
        .mappings(
            "ma.dgsn",
            &[
                "ma.dgsn/boarding-notice",
                "ma.dgsn/booking-notice",
                "ma.dgsn/border-exit",
                "ma.dgsn/exit-authorisation",
                "ma.dgsn/no-boarding-notice",
            ],
        );
    let gateway = TestGateway::start(&changes, |_| {}).await;
    let admin = gateway.admin();
    let iom_sn = gateway.client("iom.sn");
    let reply = iom_sn
        .send(
            "application/json",
            fixture("iom.sn", "in/reintegration-update.json"),
        )
        .await;
    let problem = reply.problem(403, "forbidden");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("mapping iom.sn/reintegration-update is not in force for partner iom.sn"),
        "{problem}"
    );
    // Refused before any field is read: a broken one of that kind gets the same answer.
    let broken = fixture_text("iom.sn", "in/reintegration-update.json").replace("SEWING", "??");
    let reply = iom_sn.send("application/json", broken).await;
    reply.problem(403, "forbidden");
    let reply = iom_sn
        .send(
            "application/json",
            fixture("iom.sn", "in/arrival-confirmed.json"),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    // The consulate's laissez-passer is accepted; the DGSN's copy cannot be written under a
    // mapping in force, so its delivery is created dead and audited, and the others get theirs.
    let dead = dead_for_the_dgsn(&gateway, "CGSN-CASA-2026-00902", "mapping-not-in-force").await;
    let story = delivery_story(&gateway, "CGSN-CASA-2026-00902", "ma.dgsn", "dead_lettered").await;
    assert_eq!(
        story,
        [(
            "dead_lettered".to_owned(),
            Some("mapping-not-in-force".to_owned())
        )]
    );
    // Nothing to put back in line: the registry has to change first.
    let id = dead["id"].as_u64().unwrap();
    let refused = admin.post(&format!("/deliveries/{id}/redeliver")).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let why = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(
        why.contains("mapping-not-in-force") && why.contains("in force in the registry"),
        "{why}"
    );
    assert!(gateway.client("ma.dgsn").inbox(500).await.is_empty());
    assert_eq!(gateway.client("iom.ma").inbox(500).await.len(), 2);

    // The refusal is audited like any other.
    let auditor = gateway.client("audit.igat");
    let verifier = gateway.verifier();
    let trail = wait_for("the refusal's checkpoint", WAIT, async || {
        let trail = verify_trail(&auditor, "case=refused/iom.sn", &verifier).await;
        (!trail.entries.is_empty() && trail.pending.is_empty()).then_some(trail)
    })
    .await;
    let reasons: Vec<Option<&str>> = trail
        .entries
        .iter()
        .map(|e| e.leaf.reason.as_deref())
        .collect();
    assert_eq!(reasons, [Some("forbidden"), Some("forbidden")]);
    gateway.stop().await;
}

/// Sends the consulate's laissez-passer `reference`, which is accepted, and returns the one
/// dead letter there then is: the DGSN's, created dead with `reason`.
async fn dead_for_the_dgsn(gateway: &TestGateway, reference: &str, reason: &str) -> Value {
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued(reference))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let dead = gateway.admin().get("/dead-letters").await.json();
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["recipient"], "ma.dgsn");
    assert_eq!(dead[0]["last_error"], reason);
    dead[0].clone()
}

/// Runs `passerelle deliveries redeliver ID` against the admin listener, and checks that it
/// fails and reports the listener's `status`.
async fn redelivery_refused_by_cli(admin_url: &str, id: &str, status: u16) {
    let refused = passerelle_cli(&["deliveries", "redeliver", id, "--admin", admin_url]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(
        stderr.contains(&format!("delivery {id}: not redelivered ({status}")),
        "{stderr}"
    );
}

/// Checks that the admin listener refuses a change asked by a web page (`POST path` with an
/// `Origin`), and so it does with an id that is not one (a page is told nothing of ids).
async fn refused_from_a_web_page(admin: &Admin, path: &str) {
    let from_a_page = admin.post_from(path, Some("http://example.org")).await;
    assert_eq!(from_a_page.status, 403, "{}", from_a_page.text());
    let no_id = admin
        .post_from("/deliveries/abc/redeliver", Some("null"))
        .await;
    assert_eq!(no_id.status, 403, "{}", no_id.text());
}

/// Runs `passerelle deliveries <change> <id>` against the admin listener at `admin_url`.
async fn deliveries_cli(change: &str, id: u64, admin_url: &str) -> std::process::Output {
    passerelle_cli(&["deliveries", change, &id.to_string(), "--admin", admin_url]).await
}

/// Runs the `passerelle` binary with `args`, off the test's runtime, and returns its output.
async fn passerelle_cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
            .args(&args)
            .output()
            .expect("the passerelle binary runs")
    })
    .await
    .unwrap()
}

/// A TLS file that cannot be used stops the start before anything is made in the data
/// folder, naming the setting as well as the file.
#[actix_web::test]
async fn a_tls_file_that_cannot_be_used_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = write_registry(dir.path(), &RegistryChanges::new());
    let data = dir.path().join("data");
    let mut config = test_config(&data, &registry);
    config.tls.ca = dir.path().join("missing-ca.pem");
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a missing CA bundle is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("tls.ca") && error.contains("missing-ca.pem"),
        "{error}"
    );
    assert!(!data.exists(), "nothing is made in the data folder");

    // A server certificate that cannot be read is named as such (not taken for one that the
    // development CA did not issue, beside the development CA's bundle).
    let mut config = test_config(&data, &registry);
    config.tls.cert = dir.path().join("missing-server.pem");
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a missing server certificate is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("tls.cert") && error.contains("missing-server.pem"),
        "{error}"
    );
    assert!(!error.contains("trusts the development CA"), "{error}");

    let mut config = test_config(&data, &registry);
    config.tls.client_cert = gateway_support::dev_dir().join("expired.pem");
    config.tls.client_key = gateway_support::dev_dir().join("expired.key");
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("an expired client certificate is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("tls.client_cert") && error.contains("renew it"),
        "{error}"
    );
    assert!(!data.exists(), "nothing is made in the data folder");

    // Nor an AMQP setting that cannot be used: no broker is asked, nothing is made.
    for (change, words) in [
        (
            (|a: &mut passerelle::amqp::AmqpSettings| a.prefetch = 0)
                as fn(&mut passerelle::amqp::AmqpSettings),
            "prefetch must be at least 1",
        ),
        (
            |a: &mut passerelle::amqp::AmqpSettings| a.senders = vec!["nobody.example".into()],
            "nobody.example is not a partner",
        ),
    ] {
        let mut config = test_config(&data, &registry);
        let mut amqp = passerelle::amqp::AmqpSettings {
            auth: passerelle::amqp::AmqpAuth::Plain {
                user: "gateway".into(),
                password: "not-asked".into(),
            },
            ..passerelle::amqp::AmqpSettings::new("amqp://127.0.0.1:9/%2f")
        };
        change(&mut amqp);
        config.amqp = Some(amqp);
        let Err(error) = RunningGateway::start(&config).await else {
            panic!("AMQP settings that cannot be used are refused");
        };
        let error = format!("{error:#}");
        assert!(error.contains(words), "{error}");
        assert!(
            !data.exists(),
            "nothing is made in the data folder: {error}"
        );
    }

    // Audit settings that cannot be used: an origin that is not a log name, a key named for
    // another origin, a key that must be there and is not.
    let key = dir.path().join("log-2.key");
    std::fs::write(
        &key,
        passerelle::audit::NoteSigner::generate("audit.example.ma/log-2")
            .unwrap()
            .to_signer_key(),
    )
    .unwrap();
    type AuditChange = fn(&mut passerelle::config::AuditSettings, &std::path::Path);
    let cases: [(AuditChange, &str); 3] = [
        (
            |audit, _| audit.origin = String::new(),
            "audit.origin is not a log name",
        ),
        (
            |audit, key| {
                audit.origin = "audit.example.ma/log-3".into();
                audit.signing_key = Some(key.to_owned());
            },
            "is named audit.example.ma/log-2, and audit.origin is audit.example.ma/log-3",
        ),
        (
            |audit, _| audit.create_key = false,
            "with audit.create_key = false it must be provisioned",
        ),
    ];
    for (change, words) in cases {
        let mut config = test_config(&data, &registry);
        change(&mut config.audit, &key);
        let Err(error) = RunningGateway::start(&config).await else {
            panic!("audit settings that cannot be used are refused ({words})");
        };
        let error = format!("{error:#}");
        assert!(error.contains(words), "{error}");
        assert!(
            !data.exists(),
            "nothing is made in the data folder: {error}"
        );
    }

    // An address in use, also with a data folder there already: nothing in it is changed.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = test_config(&data, &registry);
    config.admin.listen = taken.local_addr().unwrap();
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("an address in use is refused");
    };
    let error = format!("{error:#}");
    assert!(error.contains("(admin.listen)"), "{error}");
    assert!(
        !data.exists(),
        "nothing is made in the data folder: {error}"
    );
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = test_config(&data, &registry);
    config.server.listen = taken.local_addr().unwrap();
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("an address in use is refused");
    };
    let error = format!("{error:#}");
    assert!(error.contains("(server.listen)"), "{error}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "{error}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions())
            & 0o777,
        0o755,
        "the folder is left as it was"
    );
}

/// A start that fails says why in the JSON log like everything else (then once more in plain
/// text), so that a log pipeline does not lose the most important line.
#[actix_web::test]
async fn a_failed_start_is_logged_as_json() {
    let setup = ServedSetup::new(&RegistryChanges::new());
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let crl = gateway_support::dev_dir()
        .join("crl.pem")
        .display()
        .to_string();
    assert!(text.contains(&crl), "{text}");
    std::fs::write(
        &setup.config,
        text.replace(&crl, "/nonexistent/partners.crl"),
    )
    .unwrap();
    let mut gateway = ServedGateway::spawn(
        &setup.config,
        setup.data.with_file_name("failed.log"),
        "info",
    );
    let status = gateway.exited(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let logged = gateway.stderr();
    let line = logged
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "the gateway stopped on an error")
        .unwrap_or_else(|| panic!("no JSON line says why:\n{logged}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tls.crls") && error.contains("partners.crl"),
        "{line}"
    );
    assert!(
        logged
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ")),
        "{logged}"
    );
}

/// An audit log restored from an older copy than the store is refused at start: its next
/// entries would take the indices of receipts already handed out (the store answers duplicates
/// and `GET /v1/receipts` with them), or of entries that checkpoints already handed out
/// cover, along another history. So is a log whose signing key was lost. The log and the store of one backup start.
#[actix_web::test]
async fn a_log_older_than_the_store_is_refused_at_start() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let data = gateway.dir.path().join("data");
    let registry = gateway.dir.path().join("registry.toml");
    let config = test_config(&data, &registry);
    let backup = gateway.dir.path().join("backup");
    let consulate = gateway.client("sn.consulat.casablanca");
    let reply = consulate
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00990"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let TestGateway { running, dir } = gateway;
    running.shutdown().await.expect("a clean shutdown");
    copy_dir(&data, &backup);

    // A second message, then the log put back as it was before it, the store kept.
    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts");
    let reply = Client::new("sn.consulat.casablanca", running.addr)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00991"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    running.shutdown().await.expect("a clean shutdown");
    std::fs::remove_dir_all(data.join("audit-log")).unwrap();
    copy_dir(&backup.join("audit-log"), &data.join("audit-log"));
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a log older than the store is refused");
    };
    let error = format!("{error:#}");
    assert!(error.contains("older than the store"), "{error}");

    // So is a log that holds every entry the store's receipts name but not the entries signed
    // since (here a refusal's): checkpoints covering them may have been handed out.
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    let running = RunningGateway::start(&config)
        .await
        .expect("the backup starts");
    let reply = Client::new("sn.consulat.casablanca", running.addr)
        .send("application/xml", b"<not-xml".to_vec())
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    // Stopped at once: the checkpoint the stop signs last is noted too.
    running.shutdown().await.expect("a clean shutdown");
    std::fs::remove_dir_all(data.join("audit-log")).unwrap();
    copy_dir(&backup.join("audit-log"), &data.join("audit-log"));
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a log older than the store's note of its signed size is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("older than the store") && error.contains("signed a checkpoint of"),
        "{error}"
    );

    // A lost signing key is not replaced by a new one beside a log signed with it: the start
    // says to restore it, and leaves nothing where it must go.
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    std::fs::remove_file(data.join("audit-signing.key")).unwrap();
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a log without its signing key is refused");
    };
    let error = format!("{error:#}");
    assert!(error.contains("restore the key"), "{error}");
    assert!(!data.join("audit-signing.key").exists());

    // The store and the log of the same backup start, and serve the first receipt.
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    let running = RunningGateway::start(&config)
        .await
        .expect("the backup starts");
    let receipt = Client::new("sn.consulat.casablanca", running.addr)
        .get("/v1/receipts/CGSN-CASA-2026-00990")
        .await;
    assert_eq!(receipt.status, 200, "{}", receipt.text());
    running.shutdown().await.expect("a clean shutdown");
    drop(dir);
}

/// A store file damaged in its middle is refused at start, naming it: whether the database
/// library returns an error or stops with a panic on the damaged pages.
#[actix_web::test]
async fn a_damaged_store_is_refused_naming_it() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let data = gateway.dir.path().join("data");
    let registry = gateway.dir.path().join("registry.toml");
    let config = test_config(&data, &registry);
    for n in 0..20 {
        let reply = gateway
            .client("sn.consulat.casablanca")
            .send(
                "application/xml",
                lpc_issued(&format!("CGSN-CASA-2026-01{n:03}")),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let TestGateway { running, dir } = gateway;
    running.shutdown().await.expect("a clean shutdown");
    let path = data.join("store.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let third = bytes.len() / 3;
    for byte in &mut bytes[third..2 * third] {
        *byte ^= 0xa5;
    }
    std::fs::write(&path, bytes).unwrap();
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a damaged store is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!("opening the store {}", path.display())),
        "{error}"
    );
    drop(dir);
}

/// A store restored from an older copy than the audit log is refused at start: the log's
/// note of the store's mark is ahead of the store's own. `--accept-older-store` goes on with it
/// once, and the start after needs it no more.
#[actix_web::test]
async fn a_store_older_than_the_log_is_refused_at_start() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let data = gateway.dir.path().join("data");
    let registry = gateway.dir.path().join("registry.toml");
    let mut config = test_config(&data, &registry);
    let older_store = gateway.dir.path().join("older-store.redb");
    let reply = gateway
        .client("sn.consulat.casablanca")
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00992"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let TestGateway { running, dir } = gateway;
    running.shutdown().await.expect("a clean shutdown");
    std::fs::copy(data.join("store.redb"), &older_store).unwrap();

    let running = RunningGateway::start(&config)
        .await
        .expect("the gateway starts");
    let reply = Client::new("sn.consulat.casablanca", running.addr)
        .send("application/xml", lpc_issued("CGSN-CASA-2026-00993"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    running.shutdown().await.expect("a clean shutdown");
    std::fs::copy(&older_store, data.join("store.redb")).unwrap();
    let Err(error) = RunningGateway::start(&config).await else {
        panic!("a store older than the log is refused");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("the store is older than the audit log")
            && error.contains("--accept-older-store"),
        "{error}"
    );

    config.paths.accept_older_store = true;
    let running = RunningGateway::start(&config)
        .await
        .expect("the older store is taken when the operator says so");
    running.shutdown().await.expect("a clean shutdown");
    config.paths.accept_older_store = false;
    let running = RunningGateway::start(&config)
        .await
        .expect("and needs saying once");
    running.shutdown().await.expect("a clean shutdown");

    // A lost store: the new one's mark is noted beside the log as the start begins, so that a
    // crash before its first note does not have it refused as older at the next start.
    std::fs::remove_file(data.join("store.redb")).unwrap();
    let running = RunningGateway::start(&config)
        .await
        .expect("a new store starts, with a warning");
    let mark = std::fs::read_to_string(data.join("audit-log/private/store-mark")).unwrap();
    assert_eq!(mark, "0");
    running.shutdown().await.expect("a clean shutdown");
    drop(dir);
}

/// The data folder holds personal data: a new one is made for the gateway's user alone, and one
/// open to other users is closed to them at start. So is every file and folder the gateway
/// makes in it (the case keys, the index key, the journals, the store), so that a copy of it,
/// or of its audit log, is closed too.
#[actix_web::test]
async fn the_data_folder_is_closed_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = write_registry(dir.path(), &RegistryChanges::new());
    let data = dir.path().join("new/data");
    let running = RunningGateway::start(&test_config(&data, &registry))
        .await
        .expect("the gateway starts");
    assert_eq!(mode(&data), 0o700);
    running.shutdown().await.expect("a clean shutdown");
    let mut folders = vec![data.clone()];
    let mut seen = Vec::new();
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
            if path.is_dir() {
                folders.push(path.clone());
            }
            seen.push(path);
        }
    }
    for made in ["cases.keys", "index.key", "store.redb"] {
        assert!(
            seen.iter()
                .any(|p| p.file_name().is_some_and(|n| n == made)),
            "{made} among {seen:?}"
        );
    }

    // A folder, and files in it, left open to others (by a command run with another mask, or
    // restored from a copy) are closed at the next start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opened = [
        data.join("store.redb"),
        data.join("audit-log/public/checkpoint"),
        data.join("audit-log/private"),
    ];
    for path in &opened {
        let open = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(open)).unwrap();
    }
    let running = RunningGateway::start(&test_config(&data, &registry))
        .await
        .expect("the gateway starts again");
    assert_eq!(mode(&data), 0o700);
    for path in &opened {
        assert_eq!(
            mode(path) & 0o077,
            0,
            "{} is open to others",
            path.display()
        );
    }
    assert_eq!(mode(&data.join("audit-log/private")), 0o700);
    running.shutdown().await.expect("a clean shutdown");
}

/// A partner is told what to fix: binary-mode headers are read as the CloudEvents HTTP binding
/// says, a body sent with a content coding is refused, a missing member is named, a message of
/// no known kind is told what it has, and query and path parameters are named. Every refused
/// message is audited.
#[actix_web::test]
async fn refusals_say_what_to_fix() {
    let dgsn = Receiver::reserve();
    let changes = RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices"));
    let gateway = TestGateway::start(&changes, |_| {}).await;
    let admin = gateway.admin();
    let ministry = gateway.client("ma.interieur");
    let consulate = gateway.client("sn.consulat.casablanca");
    let event = fixture_json("ma.interieur", "in/identification-requested.json");
    let data = serde_json::to_vec(&event["data"]).unwrap();
    let attributes: Vec<(String, String)> = event
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| !["data", "datacontenttype", "id"].contains(&name.as_str()))
        .map(|(name, value)| (format!("ce-{name}"), value.as_str().unwrap().to_owned()))
        .collect();
    let binary = async |id: &str, extra: &[(&str, &str)]| {
        let mut headers: Vec<(&str, &str)> = attributes
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        headers.push(("ce-id", id));
        headers.extend_from_slice(extra);
        ministry
            .send_with_headers("application/json", &headers, data.clone())
            .await
    };

    // Header values are unquoted, then percent-decoded.
    let accepted = binary("MI-PCT%2D0001", &[]).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.json()["event_id"], "MI-PCT-0001");
    let accepted = binary("\"MI-PCT-0004\"", &[]).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.json()["event_id"], "MI-PCT-0004");
    // One that does not decode to UTF-8, and a datacontenttype that contradicts the content
    // type, are refused.
    let problem = binary("MI-PCT-%FF", &[]).await.problem(400, "malformed");
    says(&problem, "ce-id");
    // An id with a character that does not show as itself is refused, the character named:
    // it would make two references that read alike differ, or turn a log line around.
    for (id, named) in [
        (
            "MI-PCT-%E2%80%8B0005",
            "the invisible format character U+200B",
        ),
        (
            "MI-PCT-%E2%80%AE0006",
            "the invisible format character U+202E",
        ),
        ("MI-PCT-%0A0007", "the control character U+000A"),
        ("MI-PCT-%E2%80%A80008", "the line separator U+2028"),
    ] {
        let problem = binary(id, &[]).await.problem(422, "unprocessable");
        says(&problem, named);
    }
    let problem = binary("MI-PCT-0002", &[("ce-datacontenttype", "application/xml")])
        .await
        .problem(400, "malformed");
    says(&problem, "application/xml");
    // `ce-*` headers without `ce-specversion` are not read as another kind of message.
    let problem = ministry
        .send_with_headers(
            "application/json",
            &[("ce-id", "MI-PCT-0003")],
            data.clone(),
        )
        .await
        .problem(400, "malformed");
    says(&problem, "no ce-specversion");
    // A % that begins no escape is not taken as it is.
    let problem = binary("MI-PCT-%4", &[]).await.problem(400, "malformed");
    says(&problem, "ce-id");
    // Data sent as text rather than as an object is said to be so.
    let mut text_data = event.clone();
    text_data["id"] = json!("MI-PCT-0009");
    text_data["data"] = json!(text_data["data"].to_string());
    let problem = ministry
        .send(
            "application/cloudevents+json",
            serde_json::to_vec(&text_data).unwrap(),
        )
        .await
        .problem(422, "unprocessable");
    says(&problem, "the data must be a JSON object");
    // A missing attribute is named where it is missing.
    let mut without_id = event.clone();
    without_id.as_object_mut().unwrap().remove("id");
    let problem = ministry
        .send(
            "application/cloudevents+json",
            serde_json::to_vec(&without_id).unwrap(),
        )
        .await
        .problem(422, "unprocessable");
    assert_eq!(problem["path"], "/id", "{problem}");

    // A native partner sending binary-mode headers, or a compressed body.
    let lpc = lpc_issued("CGSN-CASA-2026-00419");
    let problem = consulate
        .send_with_headers(
            "application/json",
            &[("ce-specversion", "1.0"), ("ce-id", "X-1")],
            lpc.clone(),
        )
        .await
        .problem(415, "unsupported-media-type");
    says(&problem, "not binary-mode CloudEvents");
    let problem = consulate
        .send_with_headers(
            "application/xml",
            &[
                ("content-encoding", "identity"),
                ("content-encoding", "gzip"),
            ],
            lpc,
        )
        .await
        .problem(415, "unsupported-media-type");
    says(&problem, "Content-Encoding gzip");
    // A second media type, or a CloudEvents attribute given twice, is not chosen between.
    let problem = consulate
        .send_with_headers(
            "application/xml",
            &[("content-type", "application/json")],
            lpc_issued("CGSN-CASA-2026-00419"),
        )
        .await
        .problem(400, "malformed");
    says(&problem, "more than one content-type header");
    let problem = ministry
        .send_with_headers(
            "application/json",
            &[
                ("ce-specversion", "1.0"),
                ("ce-type", "ma.rva.case.registered"),
                ("ce-type", "ma.rva.lpc.requested"),
            ],
            b"{}".to_vec(),
        )
        .await
        .problem(400, "malformed");
    says(&problem, "more than one ce-type header");
    // A field that breaks the schema is named by the path of the sender's message it was read
    // from.
    let long_number = String::from_utf8(lpc_issued("CGSN-CASA-2026-00420"))
        .unwrap()
        .replace(
            "<Numero>LP0417263</Numero>",
            &format!("<Numero>{}</Numero>", "7".repeat(40)),
        );
    let problem = consulate
        .send("application/xml", long_number)
        .await
        .problem(422, "unprocessable");
    says(&problem, "(read from Document/Numero)");
    // A message of no known kind is told what it has.
    let problem = consulate
        .send("application/xml", "<LaissezPasserRefuse xmlns=\"urn:x\"/>")
        .await
        .problem(422, "unprocessable");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("the root element is LaissezPasserRefuse in namespace urn:x"),
        "{problem}"
    );

    // Every refused message is audited, with its reason, in its sender's refusal trail: five
    // malformed and six unprocessable from the ministry; one malformed, two of an unsupported
    // type and two unprocessable from the consulate.
    for (partner, expected) in [
        (
            "ma.interieur",
            [vec!["malformed"; 5], vec!["unprocessable"; 6]].concat(),
        ),
        (
            "sn.consulat.casablanca",
            vec![
                "malformed",
                "unprocessable",
                "unprocessable",
                "unsupported-media-type",
                "unsupported-media-type",
            ],
        ),
    ] {
        let reasons = wait_for("the refusals' entries", WAIT, async || {
            let found = gateway
                .running
                .gateway
                .log
                .search(&Query::Case(format!("refused/{partner}")))
                .expect("search");
            let mut reasons: Vec<String> = found
                .into_iter()
                .filter(|f| f.leaf.kind == Kind::Rejected)
                .filter_map(|f| f.leaf.reason)
                .collect();
            reasons.sort();
            (reasons.len() >= expected.len()).then_some(reasons)
        })
        .await;
        assert_eq!(reasons, expected, "{partner}");
    }
    outcomes_counted(
        &admin,
        &[
            ("malformed", 6.0),
            ("unprocessable", 8.0),
            ("unsupported-media-type", 2.0),
        ],
    )
    .await;

    // A partner that does not receive by inbox is told so, rather than polling an inbox that
    // stays empty: the auditor receives nothing, the DGSN receives by webhook here.
    // On every page, not the first alone.
    for (partner, how, page) in [
        ("audit.igat", "it receives no messages", "/v1/inbox"),
        ("ma.dgsn", "posted to its webhook", "/v1/inbox"),
        ("ma.dgsn", "posted to its webhook", "/v1/inbox?after=3"),
    ] {
        let problem = gateway
            .client(partner)
            .get(page)
            .await
            .problem(409, "conflict");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("has no inbox") && detail.contains(how),
            "{problem}"
        );
        assert_eq!(problem["title"], "The caller receives no messages by inbox");
    }

    // Query and path parameters are named.
    let problem = ministry
        .get("/v1/inbox?after=abc")
        .await
        .problem(400, "malformed");
    says(&problem, "after must be a whole number");
    let problem = ministry
        .get("/v1/inbox?after=99999999999999999999")
        .await
        .problem(400, "malformed");
    says(&problem, "after is too large");
    // A limit is clamped, however large.
    let page = ministry.get("/v1/inbox?limit=1000000000000000000000").await;
    assert_eq!(page.status, 200, "{}", page.text());
    let auditor = gateway.client("audit.igat");
    let problem = auditor
        .get("/v1/audit/trails?case=RVA-2026-004211&after=abc")
        .await
        .problem(400, "malformed");
    says(&problem, "after must be a whole number");
    let problem = auditor
        .get("/v1/audit/trails?case=RVA-2026-004211&limit=ten")
        .await
        .problem(400, "malformed");
    says(&problem, "limit must be a whole number");
    let problem = auditor
        .get("/v1/audit/trails?case=")
        .await
        .problem(400, "malformed");
    says(&problem, "case is empty");
    let long_id = "A".repeat(5000);
    let problem = ministry
        .get(&format!("/v1/receipts/{long_id}"))
        .await
        .problem(404, "not-found");
    says(&problem, "of that id (5000 bytes long)");
    let problem = ministry
        .post("/v1/inbox/abc/ack")
        .await
        .problem(404, "not-found");
    says(&problem, "/v1/inbox/abc/ack");
    gateway.stop().await;
}

/// The series that operators alert on are there, at zero, from the start: Prometheus sees no
/// increase in a series that appears with its first count.
#[actix_web::test]
async fn the_series_alerts_watch_start_at_zero() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let text = gateway.admin().get("/metrics").await.text();
    let at_zero = |name: &str, labels: &[(&str, &str)]| {
        text.lines().any(|line| {
            line.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{')
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                    && rest.ends_with("} 0")
            })
        })
    };
    for (name, labels) in [
        (
            "passerelle_messages_total",
            &[
                ("partner", "sn.consulat.casablanca"),
                ("transport", "rest"),
                ("outcome", "unavailable"),
            ][..],
        ),
        (
            "passerelle_messages_total",
            &[
                ("partner", "airline.at"),
                ("transport", "rest"),
                ("outcome", "rate-limited"),
            ],
        ),
        (
            "passerelle_deliveries_total",
            &[
                ("recipient", "ma.dgsn"),
                ("channel", "webhook"),
                ("outcome", "dead"),
            ],
        ),
        (
            "passerelle_deliveries_total",
            &[
                ("recipient", "ma.interieur"),
                ("channel", "inbox"),
                ("outcome", "acknowledged"),
            ],
        ),
        ("passerelle_crl_reloads_total", &[("outcome", "failed")]),
        (
            "passerelle_tls_refused_certificates_total",
            &[("reason", "certificate-revoked")],
        ),
    ] {
        assert!(
            at_zero(name, labels),
            "{name} {labels:?} is not at 0:\n{text}"
        );
    }
    // Only partners that send have message series, and only those that receive have
    // delivery series.
    assert!(
        !text.contains("passerelle_messages_total{partner=\"audit.igat\""),
        "{text}"
    );
    gateway.stop().await;
}

/// A reference the audit log cannot take is refused naming the native field it was read from,
/// as the mapping's own refusals are: the sender knows its message, not the canonical event.
#[actix_web::test]
async fn a_reference_too_long_is_named_as_the_sender_writes_it() {
    let gateway = TestGateway::start(&RegistryChanges::new(), |_| {}).await;
    let consulate = gateway.client("sn.consulat.casablanca");
    // 155 characters, which the schema takes, but 305 bytes, which the log does not.
    let long = format!("CGSN-{}", "é".repeat(150));
    let problem = consulate
        .send("application/xml", lpc_issued(&long))
        .await
        .problem(422, "unprocessable");
    says(
        &problem,
        "partner sn.consulat.casablanca, message lpc-issued, field id: Reference must be at \
         most 200 bytes long (UTF-8); it has 305 bytes",
    );
    gateway.stop().await;
}
