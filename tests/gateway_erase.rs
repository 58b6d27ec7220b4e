//! A case erased while the gateway is stopped (`passerelle audit erase`): at the next start its
//! deliveries still waiting, and its dead letters, are withdrawn without an attempt. They never
//! reach a recipient, stay as dead letters without their bodies, cannot be redelivered, and are
//! audited; the deliveries of other cases go on as before. Its completed deliveries held no
//! body already. A later message for the erased case is refused.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{
    Answer, Client, Receiver, RegistryChanges, ServedSetup, fixture_text, wait_for,
};
use passerelle::audit::{Kind, Leaf, journal};
use passerelle::store::{Delivery, DeliveryState, Store};
use serde_json::Value;
use std::time::Duration;

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

/// Every delivery in the store of the stopped gateway whose data folder is `data`.
fn stored_deliveries(data: &std::path::Path) -> Vec<Delivery> {
    let store = Store::open(&data.join("store.redb")).expect("the store");
    // Ids are handed out from 1; the test makes far fewer than this.
    let all = (1..=1000)
        .filter_map(|id| store.delivery(id).expect("a delivery"))
        .collect();
    store.close().expect("closing the store");
    all
}

#[actix_web::test]
async fn deliveries_of_an_erased_case_are_withdrawn_at_the_next_start() {
    // The recipients of laissez-passer notices: the DGSN reads its inbox; the ministry's
    // endpoint refuses them for good (410: dead letters); IOM Morocco's takes them.
    let ministry = Receiver::start();
    ministry.answer(Answer::Fail {
        status: 410,
        retry_after: None,
    });
    let iom = Receiver::start();
    let setup = ServedSetup::new(
        &RegistryChanges::new()
            .inbox("ma.dgsn")
            .webhook("ma.interieur", &ministry.url("/notices"))
            .webhook("iom.ma", &iom.url("/notices")),
    );
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
    wait_for(
        "IOM Morocco to take both notices",
        Duration::from_secs(20),
        async || (iom.accepted().len() == 2).then_some(()),
    )
    .await;
    wait_for(
        "the ministry's two dead letters",
        Duration::from_secs(20),
        async || {
            let dead = admin.get("/dead-letters").await.json();
            (dead.as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    let exit = gateway.stop();
    assert!(exit.success(), "the gateway's exit: {exit:?}");
    // What was delivered keeps no body; what waits or may be redelivered does.
    for d in stored_deliveries(data) {
        assert_eq!(d.body.is_empty(), !d.holds_body(), "{d:?}");
        let completed = d.recipient == "iom.ma";
        assert_eq!(d.holds_body(), !completed, "{d:?}");
    }

    gateway_support::erase_case(data, ERASED);

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

    // Every delivery of the erased case that held a body is a dead letter that cannot be
    // redelivered: the DGSN's waiting in its inbox, and the ministry's dead letter.
    let dead = admin.get("/dead-letters").await;
    assert_eq!(dead.status, 200, "{}", dead.text());
    let dead = dead.json();
    let erased: Vec<&Value> = dead
        .as_array()
        .expect("a list of dead letters")
        .iter()
        .filter(|d| d["event_id"] == "CGSN-CASA-2026-00501")
        .collect();
    let mut withdrawn: Vec<&str> = erased
        .iter()
        .filter_map(|d| d["recipient"].as_str())
        .collect();
    withdrawn.sort();
    assert_eq!(withdrawn, ["ma.dgsn", "ma.interieur"], "{dead}");
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
    // It can be discarded, and its entry names no case either.
    let discarded_id = erased[0]["id"].as_u64().expect("a delivery id");
    let discarded = admin
        .post(&format!("/deliveries/{discarded_id}/discard"))
        .await;
    assert_eq!(discarded.status, 200, "{}", discarded.text());

    // A repeat of the erased case's message is refused as a new message for the case: the
    // store no longer keeps what it said, to tell a repeat of it from another message.
    let repeat = consulate
        .send("application/xml", notice(ERASED, "CGSN-CASA-2026-00501"))
        .await;
    assert_eq!(repeat.status, 422, "{}", repeat.text());
    assert!(repeat.text().contains("erased"), "{}", repeat.text());
    // Its reference, sent again for another case, is not taken for a repeat of it either.
    let reused = consulate
        .send("application/xml", notice(KEPT, "CGSN-CASA-2026-00501"))
        .await;
    assert_eq!(reused.status, 409, "{}", reused.text());
    assert!(
        reused.text().contains("a case since erased"),
        "{}",
        reused.text()
    );

    // The withdrawal was audited, one entry a delivery, before the gateway served.
    let exit = gateway.stop();
    assert!(exit.success(), "the gateway's exit: {exit:?}");
    for d in stored_deliveries(data) {
        // The erased case's id is off its deliveries' records; the kept case's stays.
        let case = if d.event_id == "CGSN-CASA-2026-00501" {
            None
        } else {
            Some(KEPT.to_owned())
        };
        assert_eq!(d.case_id, case, "{d:?}");
        if d.event_id == "CGSN-CASA-2026-00501" {
            assert!(d.body.is_empty(), "{d:?}");
            assert!(!d.holds_body(), "{d:?}");
            let state = if d.recipient == "iom.ma" {
                DeliveryState::Delivered
            } else if d.id == discarded_id {
                DeliveryState::Discarded
            } else {
                DeliveryState::Dead
            };
            assert_eq!(d.state, state, "{d:?}");
        }
    }
    // Nor is anything of the erased case left in the store's file: what the start deleted
    // was in its free pages until the file was rewritten.
    let file = std::fs::read(data.join("store.redb")).expect("the store's file");
    let holds = |text: &str| file.windows(text.len()).any(|w| w == text.as_bytes());
    assert!(holds(KEPT), "the kept case is in the store");
    assert!(
        !holds(ERASED),
        "the erased case's id is still in the store's file"
    );
    assert!(!data.join("store.redb.rewrite").exists());
    let logged = gateway.stderr();
    let line = logged
        .lines()
        .find(|l| l.contains("the store's file rewritten without what the erasures deleted"))
        .unwrap_or_else(|| panic!("no rewrite logged: {logged}"));
    let line: Value = serde_json::from_str(line).expect("a JSON log line");
    assert!(line["fields"]["rows"].as_u64() > Some(0), "{line}");
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
    let mut discards = Vec::new();
    let mut refused = Vec::new();
    journal::scan(&data.join("audit-log/private/journal"), |_, record| {
        let leaf = Leaf::decode(&record.entry)?;
        if leaf.kind == Kind::DeadLettered && leaf.reason.as_deref() == Some("case-erased") {
            audited.push(leaf);
        } else if leaf.kind == Kind::Discarded {
            discards.push(leaf);
        } else if leaf.kind == Kind::Rejected && leaf.reason.as_deref() == Some("unprocessable") {
            refused.push(leaf);
        }
        Ok(())
    })
    .expect("reading the audit log's journal");
    // The two messages refused for the erased case (a new one and a repeat, with other bytes)
    // commit to no bytes: the log keeps nothing a guess of them could be tested against.
    let natives: Vec<_> = refused
        .iter()
        .map(|leaf| leaf.commitments.as_ref().and_then(|c| c.native.clone()))
        .collect();
    assert_eq!(natives.len(), 2, "{refused:?}");
    assert!(
        natives[0].is_some() && natives[0] == natives[1],
        "{natives:?}"
    );
    assert_eq!(discards.len(), 1, "{discards:?}");
    assert!(discards[0].commitments.is_none(), "{:?}", discards[0]);
    assert_eq!(discards[0].reason.as_deref(), Some("operator"));
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

    // The store remembers that one erased case was dealt with: the next starts read the
    // waiting deliveries again only once another case is erased.
    let store = Store::open(&data.join("store.redb")).expect("the store");
    assert_eq!(store.erasures_withdrawn().expect("the mark"), 1);
    // The erased case's file is gone with it; the kept case's stays.
    assert_eq!(store.cases_on_file().expect("the case files"), [KEPT]);
    assert_eq!(store.case_files_forgotten().expect("the mark"), 1);
    // So is the erased case's id, off the records of its message and its deliveries.
    let source = "urn:partner:sn.consulat.casablanca";
    let record = store
        .accepted(source, "CGSN-CASA-2026-00501")
        .expect("reading the record")
        .expect("the erased case's message is still on record");
    assert_eq!(record.case_id, None, "{record:?}");
    assert!(
        record.confirmed && record.case_facts.is_empty(),
        "{record:?}"
    );
    // Nor does it keep the digest of what the message said, which would confirm a guess.
    assert_eq!(record.content, passerelle::store::FORGOTTEN_CONTENT);
    assert!(record.content_mapping.is_empty(), "{record:?}");
    let kept = store
        .accepted(source, "CGSN-CASA-2026-00502")
        .expect("reading the record")
        .expect("the kept case's message");
    assert_eq!(kept.case_id.as_deref(), Some(KEPT));
    assert!(!kept.content.is_empty(), "{kept:?}");
    assert_eq!(store.case_ids_forgotten().expect("the mark"), 1);
    store.close().expect("closing the store");
    let line = logged
        .lines()
        .find(|l| l.contains("ids of erased cases taken off the store's records"))
        .unwrap_or_else(|| panic!("no forgetting logged: {logged}"));
    let line: Value = serde_json::from_str(line).expect("a JSON log line");
    // The message's record and its three deliveries.
    assert_eq!(line["fields"]["records"].as_u64(), Some(4), "{line}");
}
