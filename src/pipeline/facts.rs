//! What the audit log is told about a canonical event: its case, the documents it mentions and
//! the identifiers auditors search by.
//!
//! This module owns reading those out of an event's data. It reads field names the canonical
//! schemas define (`pnr`, `pv_number`, `iom_case_number`, `flight`, the `number` of an `lpc`,
//! a `travel_document` or the items of `travel_documents` (searched as an LPC's when its `type`
//! is `lpc`), and `ticket_number`) wherever they
//! appear, so that a new event type that uses them is indexed without a change here. A test
//! checks that every document number the schemas define is under one of these names.

use crate::audit::{Flight, Identifiers};
use chrono::NaiveDate;
use serde_json::Value;

/// The case an event concerns: its `subject`, or `data.case_id`.
pub fn case_id(event: &Value) -> Option<String> {
    event["subject"]
        .as_str()
        .or_else(|| event["data"]["case_id"].as_str())
        .map(str::to_owned)
}

/// The document numbers an event mentions (passports, laissez-passer, tickets), and the
/// identifiers auditors search by.
pub fn identifiers(event: &Value, sender: &str) -> (Vec<String>, Identifiers) {
    let mut documents = Vec::new();
    let mut ids = Identifiers::default();
    walk(&event["data"], None, &mut documents, &mut ids);
    if let Some(id) = event["id"].as_str() {
        ids.partner_refs.push((sender.to_owned(), id.to_owned()));
    }
    for list in [
        &mut documents,
        &mut ids.lpc,
        &mut ids.pnr,
        &mut ids.pv,
        &mut ids.iom_case,
    ] {
        list.sort();
        list.dedup();
        list.truncate(crate::audit::leaf::limits::IDENTIFIERS);
    }
    ids.flights.dedup();
    ids.flights
        .truncate(crate::audit::leaf::limits::IDENTIFIERS);
    (documents, ids)
}

/// The members whose object's `number` is a document number: a passport or laissez-passer the
/// person travels on (an `lpc`'s number is read with the identifiers, above).
const DOCUMENT_OBJECTS: &[&str] = &["travel_document", "travel_documents"];

/// The `type` of a travel document that is a consular laissez-passer.
const LPC_DOCUMENT: &str = "lpc";

/// The members that are document numbers themselves (an e-ticket).
const DOCUMENT_NUMBERS: &[&str] = &["ticket_number"];

fn walk(value: &Value, key: Option<&str>, documents: &mut Vec<String>, ids: &mut Identifiers) {
    match value {
        Value::Object(map) => {
            if let Some(flight) = flight(map) {
                ids.flights.push(flight);
            }
            if matches!(key, Some("lpc"))
                && let Some(n) = map.get("number").and_then(Value::as_str)
            {
                ids.lpc.push(n.to_owned());
                documents.push(n.to_owned());
            }
            if key.is_some_and(|key| DOCUMENT_OBJECTS.contains(&key))
                && let Some(n) = map.get("number").and_then(Value::as_str)
            {
                documents.push(n.to_owned());
                // A laissez-passer the person travels on (a PV's, a border stamp's) is searched
                // by its number as the consulate's `lpc` is, so that its trail runs from the
                // issue to the exit.
                if map.get("type").and_then(Value::as_str) == Some(LPC_DOCUMENT) {
                    ids.lpc.push(n.to_owned());
                }
            }
            for (k, v) in map {
                if DOCUMENT_NUMBERS.contains(&k.as_str())
                    && let Some(n) = v.as_str()
                {
                    documents.push(n.to_owned());
                }
                let list = match k.as_str() {
                    "pnr" => Some(&mut ids.pnr),
                    "pv_number" => Some(&mut ids.pv),
                    "iom_case_number" => Some(&mut ids.iom_case),
                    _ => None,
                };
                if let (Some(list), Some(value)) = (list, v.as_str()) {
                    list.push(value.to_owned());
                }
                walk(v, Some(k), documents, ids);
            }
        }
        // Items of a list keep the list's name, so that `travel_documents[i]` is known.
        Value::Array(items) => items.iter().for_each(|v| walk(v, key, documents, ids)),
        _ => {}
    }
}

fn flight(map: &serde_json::Map<String, Value>) -> Option<Flight> {
    let carrier = map.get("carrier")?.as_str()?;
    let number = map.get("number")?.as_str()?;
    let date = NaiveDate::parse_from_str(map.get("date")?.as_str()?, "%Y-%m-%d").ok()?;
    Some(Flight {
        carrier: carrier.to_owned(),
        number: number.to_owned(),
        date,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_documents_and_identifiers_wherever_they_are() {
        let event = json!({
            "id": "REF-1", "subject": "RVA-2026-000001",
            "data": {
                "lpc": {"number": "LP1"},
                "travel_documents": [{"type": "passport", "number": "P1"}],
                "pv_number": "DGSN/SE/CASA/2026/7741", "iom_case_number": "MA-2026-0042",
                "booking": {"pnr": "ABC123", "flights": [
                    {"carrier": "AT", "number": "529", "date": "2026-11-20"}]}
            }
        });
        let (documents, ids) = identifiers(&event, "iom.ma");
        assert_eq!(case_id(&event).as_deref(), Some("RVA-2026-000001"));
        assert_eq!(documents, ["LP1", "P1"]);
        assert_eq!(ids.lpc, ["LP1"]);
        assert_eq!(ids.pnr, ["ABC123"]);
        assert_eq!(ids.pv, ["DGSN/SE/CASA/2026/7741"]);
        assert_eq!(ids.iom_case, ["MA-2026-0042"]);
        assert_eq!(ids.flights.len(), 1);
        assert_eq!(ids.partner_refs, [("iom.ma".into(), "REF-1".into())]);
    }

    #[test]
    fn a_travel_document_and_a_ticket_are_documents() {
        let event = json!({
            "data": {
                "travel_document": {"type": "passport", "number": "A00998877"},
                "ticket_number": "147-2400012345"
            }
        });
        let (documents, ids) = identifiers(&event, "airline.at");
        assert_eq!(documents, ["147-2400012345", "A00998877"]);
        assert!(ids.lpc.is_empty(), "a passport is no laissez-passer");
    }

    /// A PV or a border stamp on a laissez-passer is found by the LPC's number, as the
    /// consulate's issue is.
    #[test]
    fn a_laissez_passer_travelled_on_is_searched_by_its_number() {
        let pv = json!({"data": {
            "pv_number": "DGSN/SE/CASA/2026/7741",
            "travel_document": {"type": "lpc", "number": "LP0417263"}
        }});
        let (documents, ids) = identifiers(&pv, "ma.dgsn");
        assert_eq!(documents, ["LP0417263"]);
        assert_eq!(ids.lpc, ["LP0417263"]);
        let registered = json!({"data": {"travel_documents": [
            {"type": "passport", "number": "A1"}, {"type": "lpc", "number": "LP2"}]}});
        assert_eq!(identifiers(&registered, "iom.ma").1.lpc, ["LP2"]);
    }

    /// Every document number the canonical schemas define is found: each member whose schema
    /// is a `travel_document` (or a list of them), each object holding a `document_number`, and
    /// each ticket number is under a name [`walk`] reads.
    #[test]
    fn every_document_number_of_the_schemas_is_read() {
        fn visit(name: Option<&str>, schema: &Value, found: &mut Vec<(String, &'static str)>) {
            let refers = |s: &Value, to: &str| {
                [s, &s["items"]]
                    .iter()
                    .any(|s| s["$ref"].as_str().is_some_and(|r| r.ends_with(to)))
            };
            if let Some(name) = name {
                if refers(schema, "/travel_document") {
                    found.push((name.to_owned(), "object"));
                }
                if schema["properties"]["number"]["$ref"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("/document_number"))
                {
                    found.push((name.to_owned(), "object"));
                }
                if name.contains("ticket") {
                    found.push((name.to_owned(), "number"));
                }
            }
            match schema {
                Value::Object(map) => {
                    for (k, v) in map {
                        if k == "properties" {
                            for (p, s) in v.as_object().into_iter().flatten() {
                                visit(Some(p), s, found);
                            }
                        } else {
                            visit(None, v, found);
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| visit(None, v, found)),
                _ => {}
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/events");
        let mut found = Vec::new();
        let mut schemas = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            schemas.push(serde_json::from_str::<Value>(&text).unwrap());
        }
        for schema in &schemas {
            visit(None, schema, &mut found);
        }
        assert!(found.len() >= 4, "{found:?}");
        for (name, kind) in found {
            let known = match kind {
                "object" => name == "lpc" || DOCUMENT_OBJECTS.contains(&name.as_str()),
                _ => DOCUMENT_NUMBERS.contains(&name.as_str()),
            };
            assert!(known, "{name} holds a document number that is not read");
        }
    }
}
