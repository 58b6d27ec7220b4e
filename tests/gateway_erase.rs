//! A case erased while the gateway is stopped (`passerelle audit erase`): at the next start its
//! deliveries still waiting are withdrawn without an attempt. They never reach a recipient,
//! stay as dead letters without their bodies, cannot be redelivered, and are audited; the
//! deliveries of other cases go on as before. A later message for the erased case is refused.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{Client, RegistryChanges, ServedSetup, fixture_text};
use passerelle::audit::{Kind, Leaf, journal};
use serde_json::Value;
use std::process::Command;

/// The case of the consulate's sample, erased by the test.
const ERASED: &str = "RVA-2026-004211";
/// Another case, kept.
const KEPT: &str = "RVA-2026-004299";

/// The consulate's laissez-passer notice for `case`, under its own reference.
fn notice(case: &str, reference: &str) -> String {
    fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml")
        .replace("CGSN-CASA-2026-00417", reference)
        .replace(ERASED, case)
}

/// The inbox messages of `dgsn`, by case.
async fn inbox_cases(dgsn: &Client) -> Vec<String> {
    let mut cases: Vec<String> = dgsn
        .inbox(50)
        .await
        .iter()
        .map(|m| m.to_string())
        .map(|text| {
            if text.contains(ERASED) {
                ERASED.to_owned()
            } else if text.contains(KEPT) {
                KEPT.to_owned()
            } else {
                panic!("an inbox message of neither case: {text}")
            }
        })
        .collect();
    cases.sort();
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_an_erased_case_are_withdrawn_at_the_next_start() {
    // The DGSN, a recipient of laissez-passer notices, reads its inbox; the other recipients
    // keep the sample registry's delivery (their endpoints are down: their deliveries wait).
    let setup = ServedSetup::new(&RegistryChanges::new().inbox("ma.dgsn"));
    let (addr, data, admin) = (setup.addr, &setup.data, &setup.admin);
    let mut gateway = setup.start("first.log", "warn").await;
    let consulate = Client::new("sn.consulat.casablanca", addr);
    for (case, reference) in [
        (ERASED, "CGSN-CASA-2026-00501"),
        (KEPT, "CGSN-CASA-2026-00502"),
    ] {
        let reply = consulate
            .send("application/xml", notice(case, reference))
            .await;
        assert_eq!(reply.status, 202, "{case}: {}", reply.text());
    }
    let dgsn = Client::new("ma.dgsn", addr);
    assert_eq!(inbox_cases(&dgsn).await, [ERASED, KEPT]);
    let exit = gateway.stop();
    assert!(exit.success(), "the gateway's exit: {exit:?}");

    let erase = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["audit", "erase", "--log"])
        .arg(data.join("audit-log"))
        .arg("--signer")
        .arg(data.join("audit-signing.key"))
        .args(["--case", ERASED])
        .output()
        .expect("running passerelle audit erase");
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );

    let mut gateway = setup.start("second.log", "info").await;
    // The erased case's notice is gone from the inbox; the other case's stays.
    assert_eq!(inbox_cases(&dgsn).await, [KEPT]);

    // A new message for the erased case is refused for good (not a 503 to retry forever); the
    // other case still takes messages.
    let late = consulate
        .send("application/xml", notice(ERASED, "CGSN-CASA-2026-00503"))
        .await;
    assert_eq!(late.status, 422, "{}", late.text());
    assert!(late.text().contains("erased"), "{}", late.text());
    let kept = consulate
        .send("application/xml", notice(KEPT, "CGSN-CASA-2026-00504"))
        .await;
    assert_eq!(kept.status, 202, "{}", kept.text());

    // Every delivery of the erased case is a dead letter that cannot be redelivered.
    let dead = admin.get("/dead-letters").await;
    assert_eq!(dead.status, 200, "{}", dead.text());
    let dead = dead.json();
    let erased: Vec<&Value> = dead
        .as_array()
        .expect("a list of dead letters")
        .iter()
        .filter(|d| d["event_id"] == "CGSN-CASA-2026-00501")
        .collect();
    assert!(
        erased.iter().any(|d| d["recipient"] == "ma.dgsn"),
        "the DGSN's delivery of the erased case is not a dead letter: {dead}"
    );
    for d in &erased {
        assert_eq!(d["last_error"], "case-erased", "{d}");
        let id = d["id"].as_u64().expect("a delivery id");
        let again = admin.post(&format!("/deliveries/{id}/redeliver")).await;
        assert_ne!(again.status, 200, "redelivered: {}", again.text());
        assert!(again.text().contains("erased"), "{}", again.text());
    }
    assert!(
        dead.as_array()
            .unwrap()
            .iter()
            .all(|d| d["event_id"] != "CGSN-CASA-2026-00502" || d["last_error"] != "case-erased"),
        "a delivery of the kept case was withdrawn: {dead}"
    );

    // The withdrawal was audited, one entry a delivery, before the gateway served.
    let exit = gateway.stop();
    assert!(exit.success(), "the gateway's exit: {exit:?}");
    let logged = gateway.stderr();
    let line = logged
        .lines()
        .find(|l| l.contains("deliveries of erased cases withdrawn"))
        .unwrap_or_else(|| panic!("no withdrawal logged: {logged}"));
    let line: Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(
        line["fields"]["withdrawn"].as_u64(),
        Some(erased.len() as u64),
        "{line}"
    );
    let mut audited = Vec::new();
    journal::scan(&data.join("audit-log/private/journal"), |_, record| {
        let leaf = Leaf::decode(&record.entry)?;
        if leaf.kind == Kind::DeadLettered && leaf.reason.as_deref() == Some("case-erased") {
            audited.push(leaf);
        }
        Ok(())
    })
    .expect("reading the audit log's journal");
    let mut audited: Vec<(String, String)> = audited
        .into_iter()
        .map(|leaf| {
            // The entry names no case: nothing more is written under an erased case.
            assert!(leaf.commitments.is_none(), "{leaf:?}");
            (
                leaf.event_id.expect("an event id"),
                leaf.recipients.concat(),
            )
        })
        .collect();
    audited.sort();
    let mut expected: Vec<(String, String)> = erased
        .iter()
        .map(|d| {
            (
                d["event_id"].as_str().unwrap().to_owned(),
                d["recipient"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(audited, expected);
}
