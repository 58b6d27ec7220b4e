//! What the audit log is told about a canonical event: its case, the documents it mentions and
//! the identifiers auditors search by.
//!
//! This module owns reading those out of an event's data. It reads field names the canonical
//! schemas define (`pnr`, `pv_number`, `iom_case_number`, `flight`, `lpc.number`,
//! `travel_documents[].number`) wherever they appear, so that a new event type that uses them
//! is indexed without a change here.

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
            if matches!(key, Some("travel_documents" | "ticket"))
                && let Some(n) = map.get("number").and_then(Value::as_str)
            {
                documents.push(n.to_owned());
            }
            for (k, v) in map {
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
}
