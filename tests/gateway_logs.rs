//! The gateway's logs: the `passerelle serve` binary, at `RUST_LOG=trace`, is taken through an
//! acceptance, a duplicate, refusals (a value outside a code list, a DOCTYPE, an unregistered
//! certificate), a recipient it cannot write for and a webhook that is down, then stopped
//! gracefully (closing what it holds itself). IOM Morocco's JSON (a vulnerable beneficiary, and
//! a refused copy) and the airline's boarding notice whose barcode disagrees with its fields (an
//! anomaly) take the JSON decoders' and the BCBP checks' paths too. Every line must be JSON;
//! each message's lines carry its span (partner, transport, event id and type); and no personal
//! value of the messages may appear anywhere.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{
    Admin, Client, Receiver, RegistryChanges, ServedGateway, ServedSetup, config_file,
    fixture_text, mappings_unwritable_for_dgsn, root, wait_for, write_registry,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// What the messages say of the people they are about, and what the refused copies add: none of
/// it may be logged.
const PERSONAL: &[&str] = &[
    // IOM Morocco's vulnerable beneficiary, and the vulnerability itself.
    "KOUASSI",
    "Aya",
    "Prisca",
    "1999-07-21",
    "victim",
    // The airline's passenger, as the barcode writes her name.
    "MAMADOU LAMINE",
    // The consulate's laissez-passer holder.
    "DIOP",
    "Mamadou",
    "MAMADOU",
    "Lamine",
    "14/03/1998",
    "1998-03-14",
    "Thiès",
    "Sénégalaise",
    "LP0417263",
    "PLSENDIOP",
    "9803145",
    "Atlantide",
];

#[actix_web::test]
async fn the_logs_are_json_carry_a_span_per_message_and_no_personal_data() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    // IOM Morocco's endpoint is down, so that attempts are retried and logged; the DGSN's
    // mapping lacks a code the laissez-passer needs, so that its delivery cannot be written.
    let iom = Receiver::reserve();
    let registry = write_registry(
        dir.path(),
        &RegistryChanges::new()
            .webhook("iom.ma", &iom.url("/rva"))
            .inbox("ma.dgsn"),
    );
    let mappings = mappings_unwritable_for_dgsn(dir.path());
    let [https, admin_port] = passerelle::loopback::free_ports();
    let config = config_file(
        dir.path(),
        &registry,
        &dir.path().join("data"),
        https,
        admin_port,
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let crate_mappings = toml::Value::from(root().join("mappings").display().to_string());
    let copied = toml::Value::from(mappings.display().to_string());
    std::fs::write(
        &config,
        text.replace(&crate_mappings.to_string(), &copied.to_string()),
    )
    .unwrap();
    let admin = Admin::new(SocketAddr::from(([127, 0, 0, 1], admin_port)));
    let log = dir.path().join("gateway.log");
    let mut gateway = ServedGateway::spawn(&config, log.clone(), "trace");
    gateway.ready(&admin).await;

    let addr = SocketAddr::from(([127, 0, 0, 1], https));
    let consulate = Client::new("sn.consulat.casablanca", addr);
    let lpc = fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml");
    let accepted = consulate.send("application/xml", lpc.clone()).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let again = consulate.send("application/xml", lpc.clone()).await;
    assert_eq!(again.status, 200, "{}", again.text());
    let outside = lpc
        .replace("CGSN-CASA-2026-00417", "CGSN-CASA-2026-00418")
        .replace("Sénégalaise", "Atlantide");
    let refused = consulate.send("application/xml", outside).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("Atlantide"),
        "the sender is told which value: {}",
        refused.text()
    );
    let doctype = lpc.replacen(
        "<LaissezPasserDelivre",
        "<!DOCTYPE x [<!ENTITY e \"DIOP\">]><LaissezPasserDelivre",
        1,
    );
    let refused = consulate.send("application/xml", doctype).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let unknown = Client::new("unknown", addr);
    assert_eq!(unknown.send("application/xml", lpc).await.status, 403);
    // A revoked certificate is refused at the handshake: no answer.
    let revoked = Client::new("revoked", addr);
    assert!(
        revoked
            .try_send("application/xml", "<x/>".to_owned())
            .await
            .is_err()
    );
    let iom_morocco = Client::new("iom.ma", addr);
    let vulnerable = fixture_text("iom.ma", "in/case-registered-vulnerable.json");
    let accepted = iom_morocco
        .send("application/json", vulnerable.clone())
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let refused = iom_morocco
        .send(
            "application/json",
            vulnerable
                .replace("IOM-MA-2026-10-30-91d0b4", "IOM-MA-2026-10-30-91d0b5")
                .replace("\"female\"", "\"Atlantide\""),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let airline = Client::new("airline.at", addr);
    let boarded = airline
        .send(
            "application/json",
            fixture_text("airline.at", "in/passenger-boarded-bcbp-disagrees.json"),
        )
        .await;
    assert_eq!(boarded.status, 202, "{}", boarded.text());
    assert!(
        boarded.text().contains("bcbp."),
        "the barcode's disagreement is an anomaly: {}",
        boarded.text()
    );
    // The ministry reads its inbox and acknowledges the laissez-passer.
    let ministry = Client::new("ma.interieur", addr);
    let inbox = ministry.inbox(100).await;
    let lpc_delivery = inbox
        .iter()
        .find(|m| m["event_id"] == "CGSN-CASA-2026-00417")
        .expect("the laissez-passer in the ministry's inbox");
    ministry
        .ack(lpc_delivery["id"].as_u64().expect("an id"))
        .await;
    wait_for(
        "two attempts at IOM Morocco's endpoint",
        Duration::from_secs(10),
        async || {
            let attempts = gateway
                .stderr()
                .lines()
                .filter(|l| l.contains("delivery attempt") && l.contains("iom.ma"))
                .count();
            (attempts >= 2).then_some(())
        },
    )
    .await;
    // SIGHUP, which service managers send for a reload, changes nothing and is said.
    gateway.signal(rustix::process::Signal::HUP);
    wait_for("the SIGHUP said", Duration::from_secs(10), async || {
        gateway.stderr().contains("SIGHUP ignored").then_some(())
    })
    .await;
    assert!(gateway.running(), "{}", gateway.stderr());
    assert_eq!(admin.get("/ready").await.status, 200);
    gateway.terminate();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    for value in PERSONAL {
        let found: Vec<&str> = text.lines().filter(|l| l.contains(value)).collect();
        assert!(found.is_empty(), "{value} is logged:\n{}", found.join("\n"));
    }
    // The beneficiary's vulnerability, a code: as a word of its own, wherever it is.
    let word = |line: &str, code: &str| {
        line.match_indices(code).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + code.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    };
    let found: Vec<&str> = text.lines().filter(|l| word(l, "VOT")).collect();
    assert!(found.is_empty(), "VOT is logged:\n{}", found.join("\n"));
    let message = |line: &Value| {
        line["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let accepted = lines
        .iter()
        .find(|l| message(l) == "message accepted")
        .expect("the acceptance is logged");
    let span = &accepted["span"];
    assert_eq!(span["name"], "message");
    assert_eq!(span["partner"], "sn.consulat.casablanca");
    assert_eq!(span["transport"], "rest");
    assert_eq!(span["event_id"], "CGSN-CASA-2026-00417");
    assert_eq!(span["event_type"], "ma.rva.lpc.issued");
    let duplicate = lines
        .iter()
        .find(|l| message(l) == "message duplicate")
        .expect("the duplicate is logged");
    assert_eq!(duplicate["span"]["event_id"], "CGSN-CASA-2026-00417");
    // The line that says an event could not be written names the field, inside the span.
    let unwritable = lines
        .iter()
        .find(|l| message(l) == "cannot write an event for its recipient")
        .expect("the unwritable delivery is logged");
    assert_eq!(unwritable["span"]["event_id"], "CGSN-CASA-2026-00417");
    assert!(
        unwritable["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("data.lpc.issuing_post")),
        "{unwritable}"
    );
    let attempt = lines
        .iter()
        .find(|l| message(l) == "delivery attempt")
        .expect("the delivery attempts are logged");
    assert_eq!(attempt["fields"]["recipient"], "iom.ma");
    assert_eq!(attempt["fields"]["outcome"], "retry");
    assert!(
        attempt["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("webhook.")),
        "{attempt}"
    );
    // Each inbox step is a line, naming the message by its source, id and type.
    for outcome in ["delivered", "acknowledged"] {
        let step = lines
            .iter()
            .find(|l| {
                message(l) == "delivery attempt"
                    && l["fields"]["channel"] == "inbox"
                    && l["fields"]["outcome"] == outcome
                    && l["fields"]["event_id"] == "CGSN-CASA-2026-00417"
            })
            .unwrap_or_else(|| panic!("the inbox delivery {outcome} is logged"));
        assert_eq!(step["fields"]["recipient"], "ma.interieur");
        assert_eq!(
            step["fields"]["source"],
            "urn:partner:sn.consulat.casablanca"
        );
        assert_eq!(step["fields"]["event_type"], "ma.rva.lpc.issued");
    }
    // A refusal names the field at fault (its name, not its value).
    assert!(
        lines.iter().any(|l| message(l) == "message refused"
            && l["fields"]["outcome"] == "unprocessable"
            && l["fields"]["path"] == "holder.nationality"),
        "the refusal names its field"
    );
    // The refused certificate is named, once its summary is audited (at the stop, here).
    let handshake = lines
        .iter()
        .find(|l| message(l) == "client certificates refused at the TLS handshake")
        .expect("the refused certificate is logged");
    assert_eq!(handshake["level"], "WARN");
    assert_eq!(handshake["fields"]["reason"], "certificate-revoked");
    assert_eq!(handshake["fields"]["count"], 1);
    assert!(
        handshake["fields"]["certificates"]
            .as_str()
            .is_some_and(|c| c.starts_with("sha256:") && c.len() == 71),
        "{handshake}"
    );
    for refusal in ["unprocessable", "malformed", "forbidden"] {
        assert!(
            lines.iter().any(|l| l["fields"]["outcome"] == refusal),
            "a {refusal} refusal is logged"
        );
    }
    // The graceful stop closed the store and the log itself: nothing held on to the gateway.
    assert!(lines.iter().any(|l| message(l) == "stopped"), "{text}");
    let held: Vec<String> = lines
        .iter()
        .map(message)
        .filter(|m| m.contains("still referenced"))
        .collect();
    assert!(held.is_empty(), "{held:?}");
}

/// A SIGTERM while the gateway starts (here: as soon as its first start-up line is written)
/// stops it once started, with a drain and a clean exit, rather than ending it mid-start.
#[test]
fn a_stop_asked_during_the_start_stops_the_gateway_once_started() {
    let setup = ServedSetup::new(&RegistryChanges::new());
    let log = setup.dir.path().join("gateway.log");
    let mut gateway = ServedGateway::spawn(&setup.config, log, "info");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The development CA's warning is written by the start itself, after the signals are
    // taken and before the listeners serve.
    while !gateway.stderr().contains("development CA") {
        assert!(std::time::Instant::now() < deadline, "{}", gateway.stderr());
        std::thread::sleep(Duration::from_millis(1));
    }
    gateway.signal(rustix::process::Signal::TERM);
    let status = gateway.exited(Duration::from_secs(30));
    let logged = gateway.stderr();
    assert_eq!(status.code(), Some(0), "{logged}");
    assert!(logged.contains("\"stopped\""), "{logged}");
}
