//! Sequence checks: does an event arrive in the order the programme's phases impose?
//!
//! This module owns the facts kept on a case's file (the event types seen, and whether a
//! passport is on file) and the comparison of an incoming event with the catalogue's
//! `requires` lists. An event out of order is never refused: it gets a `sequence.*` anomaly,
//! and is delivered like any other. The rules are data in `schemas/catalogue.toml`.

use crate::canonical::{Catalogue, TYPE_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The fact that a case has a passport on file.
pub const PASSPORT: &str = "passport";

/// What is known of a case's progress: the facts recorded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFile {
    /// Event types seen (without prefix), and `passport` when one is on file.
    pub facts: BTreeSet<String>,
}

impl CaseFile {
    /// The anomalies an event raises against this file, one per unmet requirement.
    pub fn check(&self, catalogue: &Catalogue, event: &Value) -> Vec<Value> {
        let name = event_name(event);
        let Some(entry) = catalogue.get(name) else {
            return Vec::new();
        };
        entry
            .requires
            .iter()
            .filter(|alternatives| !alternatives.iter().any(|fact| self.facts.contains(fact)))
            .map(|alternatives| {
                json!({
                    "code": format!("sequence.missing_{}", alternatives[0].replace('.', "_")),
                    "message": format!(
                        "{name} arrived before the case had {} on file",
                        alternatives.join(" or ")
                    ),
                })
            })
            .collect()
    }

    /// Records an accepted event's facts.
    pub fn record(&mut self, event: &Value) {
        let name = event_name(event);
        self.facts.insert(name.to_owned());
        let documents = event["data"]["travel_documents"].as_array();
        if documents
            .into_iter()
            .flatten()
            .any(|d| d["type"] == PASSPORT)
        {
            self.facts.insert(PASSPORT.to_owned());
        }
    }
}

fn event_name(event: &Value) -> &str {
    event["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(TYPE_PREFIX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> Value {
        json!({"type": format!("ma.rva.{name}"), "data": {}})
    }

    #[test]
    fn a_boarding_without_lpc_or_exit_authorisation_is_flagged() {
        let catalogue = Catalogue::embedded().unwrap();
        let mut file = CaseFile::default();
        let anomalies = file.check(&catalogue, &event("boarding.confirmed"));
        let codes: Vec<&str> = anomalies
            .iter()
            .filter_map(|a| a["code"].as_str())
            .collect();
        assert_eq!(
            codes,
            [
                "sequence.missing_lpc_issued",
                "sequence.missing_exit_authorized"
            ]
        );
        for name in [
            "case.registered",
            "lpc.requested",
            "lpc.issued",
            "travel.booked",
            "exit.authorized",
        ] {
            assert!(file.check(&catalogue, &event(name)).is_empty(), "{name}");
            file.record(&event(name));
        }
        assert!(
            file.check(&catalogue, &event("boarding.confirmed"))
                .is_empty()
        );
    }

    #[test]
    fn a_passport_on_file_stands_for_the_lpc() {
        let catalogue = Catalogue::embedded().unwrap();
        let mut file = CaseFile::default();
        file.record(&json!({"type": "ma.rva.case.registered",
            "data": {"travel_documents": [{"type": "passport", "number": "A1234567"}]}}));
        file.record(&event("exit.authorized"));
        assert!(
            file.check(&catalogue, &event("boarding.confirmed"))
                .is_empty()
        );
    }
}
