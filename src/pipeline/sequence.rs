//! Sequence checks: does an event arrive in the order the programme's phases impose?
//!
//! This module owns the facts kept on a case's file (the event types seen, whether a passport is
//! on file, and where the case's bookings end) and the comparison of an incoming event with the catalogue's
//! `requires` lists. An event out of order is never refused: it gets a `sequence.*` anomaly,
//! and is delivered like any other. The rules are data in `schemas/catalogue.toml`.

use crate::canonical::{Catalogue, type_name};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The fact that a case has a passport on file.
pub const PASSPORT: &str = crate::canonical::catalogue::PASSPORT_FACT;

/// The prefix of the fact that a booking of the case ends at an airport: `journey-end:<IATA>`,
/// from the last segment of a `travel.booked`. A boarding names only the leg boarded, so
/// routing to the destination's IOM mission reads the journey's end here. The booking's
/// reference is not kept: the file, and the records of the messages that put facts on it, would
/// otherwise hold it after the case's erasure.
const JOURNEY_END: &str = "journey-end:";

/// What is known of a case's progress: the facts recorded so far.
///
/// A fact is put on file by an accepted message before that message is confirmed against the
/// audit log, since the next message may arrive at once. Until then it is provisional: it is
/// kept with the keys of the unconfirmed messages that put it there, and it is taken off again
/// if they are all withdrawn (their audit entry could not be written), so that a message that
/// was never accepted does not hide the `sequence.*` anomaly of an event checked after the
/// withdrawal. It is firm once one of them is confirmed. An event checked before the
/// withdrawal is checked against the file as it stood.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFile {
    /// Event types seen (without prefix), `passport` when one is on file, and where each of the
    /// case's bookings ends (`journey-end:<IATA>`): firm and provisional facts alike.
    pub facts: BTreeSet<String>,
    /// The provisional facts, each with the duplicate-detection keys of the unconfirmed
    /// messages that put it on file. (Case files written before this was kept have none.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provisional: BTreeMap<String, BTreeSet<String>>,
}

impl CaseFile {
    /// The anomalies an event raises against this file: one per unmet requirement, then one
    /// per fact on file that it excludes.
    pub fn check(&self, catalogue: &Catalogue, event: &Value) -> Vec<Value> {
        let name = type_name(event);
        let Some(entry) = catalogue.get(name) else {
            return Vec::new();
        };
        // A passport the event itself shows (the border police's PV, drawn up on sight of it)
        // meets a requirement for one as a passport on file does.
        let shows_passport = carries_passport(event);
        let on_file = |fact: &String| {
            self.facts.contains(fact) || (shows_passport && fact.as_str() == PASSPORT)
        };
        let missing = entry
            .requires
            .iter()
            .filter(|alternatives| !alternatives.iter().any(on_file))
            .map(|alternatives| {
                json!({
                    "code": format!("sequence.missing_{}", alternatives[0].replace('.', "_")),
                    "message": format!(
                        "{name} arrived before the case had {} on file",
                        alternatives.join(" or ")
                    ),
                })
            });
        let excluded = entry
            .excludes
            .iter()
            .filter(|fact| self.facts.contains(*fact))
            .map(|fact| {
                let written = fact.replace('.', "_");
                if fact == name {
                    json!({
                        "code": format!("sequence.repeated_{written}"),
                        "message": format!("{name} arrived when the case already had one on file"),
                    })
                } else {
                    json!({
                        "code": format!("sequence.after_{written}"),
                        "message": format!("{name} arrived when the case had {fact} on file"),
                    })
                }
            });
        missing.chain(excluded).collect()
    }

    /// The facts an event puts on its case's file: its type, `passport` when it carries one (a
    /// registration's `travel_documents`, a PV's `travel_document`), and where its booking's
    /// journey ends when it lists the booking's `segments` (in travel order).
    pub fn facts_of(event: &Value) -> Vec<String> {
        let data = &event["data"];
        let mut facts = vec![type_name(event).to_owned()];
        if carries_passport(event) {
            facts.push(PASSPORT.to_owned());
        }
        let journey_end = data["segments"]
            .as_array()
            .and_then(|segments| segments.last())
            .and_then(|last| last["destination"].as_str());
        if let Some(airport) = journey_end {
            facts.push(format!("{JOURNEY_END}{airport}"));
        }
        facts
    }

    /// The airports where the case's bookings end: one, unless a booking was changed to
    /// another destination; none when no booking is on file.
    pub fn journey_ends(&self) -> Vec<String> {
        self.facts
            .iter()
            .filter_map(|fact| fact.strip_prefix(JOURNEY_END))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `fact` is on file for good: recorded, and by a confirmed message.
    pub fn is_firm(&self, fact: &str) -> bool {
        self.facts.contains(fact) && !self.provisional.contains_key(fact)
    }

    /// Of `facts`, those not yet on file for good: what a message must record.
    pub fn not_firm(&self, facts: Vec<String>) -> Vec<String> {
        facts.into_iter().filter(|f| !self.is_firm(f)).collect()
    }

    /// Records `facts` for the unconfirmed message `key`: each one not yet firm becomes, or
    /// stays, provisional with `key` among its messages. Returns whether the file changed.
    pub fn record(&mut self, key: &str, facts: &[String]) -> bool {
        let mut changed = false;
        for fact in facts {
            if self.is_firm(fact) {
                continue;
            }
            self.facts.insert(fact.clone());
            changed |= self
                .provisional
                .entry(fact.clone())
                .or_default()
                .insert(key.to_owned());
        }
        changed
    }

    /// Message `key` is confirmed: the facts it put on file are firm. Returns whether the file
    /// changed.
    pub fn confirm(&mut self, key: &str) -> bool {
        let before = self.provisional.len();
        self.provisional.retain(|_, keys| !keys.contains(key));
        self.provisional.len() != before
    }

    /// Message `key` is withdrawn: it no longer stands for the facts it put on file, and a fact
    /// that no other unconfirmed message stands for is taken off. Returns whether the file
    /// changed.
    pub fn withdraw(&mut self, key: &str) -> bool {
        let mut changed = false;
        let facts = &mut self.facts;
        self.provisional.retain(|fact, keys| {
            if !keys.remove(key) {
                return true;
            }
            changed = true;
            if keys.is_empty() {
                facts.remove(fact);
                return false;
            }
            true
        });
        changed
    }
}

/// Whether the event names a passport the person holds: among a registration's
/// `travel_documents`, or as the `travel_document` a PV was drawn up on.
fn carries_passport(event: &Value) -> bool {
    let data = &event["data"];
    data["travel_documents"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&data["travel_document"]))
        .any(|d| d["type"] == PASSPORT)
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
            file.record(name, &CaseFile::facts_of(&event(name)));
            file.confirm(name);
        }
        assert!(
            file.check(&catalogue, &event("boarding.confirmed"))
                .is_empty()
        );
    }

    /// A second arrival is flagged; a second LPC, which may follow a new request after the
    /// first expired or was refused, and a booking changed, are not.
    #[test]
    fn a_step_that_happens_once_is_flagged_when_repeated() {
        let catalogue = Catalogue::embedded().unwrap();
        let codes = |file: &CaseFile, name: &str| -> Vec<String> {
            file.check(&catalogue, &event(name))
                .iter()
                .filter_map(|a| a["code"].as_str().map(str::to_owned))
                .collect()
        };
        let mut file = CaseFile::default();
        for name in [
            "case.registered",
            "lpc.requested",
            "lpc.refused",
            "lpc.issued",
            "travel.booked",
            "exit.authorized",
            "boarding.confirmed",
        ] {
            file.record(name, &CaseFile::facts_of(&event(name)));
        }
        for again in ["lpc.issued", "travel.booked", "exit.authorized"] {
            assert!(codes(&file, again).is_empty(), "{again}");
        }
        assert!(codes(&file, "arrival.confirmed").is_empty());
        file.record("arrived", &CaseFile::facts_of(&event("arrival.confirmed")));
        assert_eq!(
            codes(&file, "arrival.confirmed"),
            ["sequence.repeated_arrival_confirmed"]
        );
        // A withdrawn message no longer stands for its fact.
        file.withdraw("arrived");
        assert!(codes(&file, "arrival.confirmed").is_empty());
    }

    #[test]
    fn a_passport_on_file_stands_for_the_lpc() {
        let catalogue = Catalogue::embedded().unwrap();
        let mut file = CaseFile::default();
        let registered = json!({"type": "ma.rva.case.registered",
            "data": {"travel_documents": [{"type": "passport", "number": "A1234567"}]}});
        file.record("a", &CaseFile::facts_of(&registered));
        file.record("b", &CaseFile::facts_of(&event("exit.authorized")));
        assert!(
            file.check(&catalogue, &event("boarding.confirmed"))
                .is_empty()
        );
    }

    /// A passport first known from the border police's PV: the PV is not flagged for want of
    /// an LPC, and the boarding after it is not either.
    #[test]
    fn a_passport_shown_on_the_pv_stands_for_the_lpc() {
        let catalogue = Catalogue::embedded().unwrap();
        let mut file = CaseFile::default();
        for name in ["case.registered", "travel.booked"] {
            file.record(name, &CaseFile::facts_of(&event(name)));
        }
        let pv = json!({"type": "ma.rva.exit.authorized",
            "data": {"travel_document": {"type": "passport", "number": "A1234567"}}});
        assert_eq!(file.check(&catalogue, &pv), Vec::<Value>::new());
        file.record("pv", &CaseFile::facts_of(&pv));
        assert_eq!(
            file.check(&catalogue, &event("boarding.confirmed")),
            Vec::<Value>::new()
        );
        // A PV on an LPC that is not on file is still flagged.
        let on_lpc = json!({"type": "ma.rva.exit.authorized",
            "data": {"travel_document": {"type": "lpc", "number": "LP0417263"}}});
        let mut other = CaseFile::default();
        other.record("booked", &CaseFile::facts_of(&event("travel.booked")));
        assert_eq!(other.check(&catalogue, &on_lpc).len(), 1);
    }

    #[test]
    fn a_withdrawn_message_takes_off_only_the_facts_no_other_message_stands_for() {
        let catalogue = Catalogue::embedded().unwrap();
        let issued = CaseFile::facts_of(&event("lpc.issued"));
        let mut file = CaseFile::default();
        file.record("first", &issued);
        assert!(file.withdraw("first"));
        assert_eq!(file, CaseFile::default());

        // Two unconfirmed messages stand for the same fact: it stays while one of them does.
        file.record("first", &issued);
        file.record("second", &issued);
        assert!(file.withdraw("first"));
        assert!(file.facts.contains("lpc.issued"));
        assert!(!file.is_firm("lpc.issued"));
        assert!(file.confirm("second"));
        assert!(file.is_firm("lpc.issued"));
        assert!(
            !file.withdraw("second"),
            "a confirmed message is not withdrawn"
        );
        assert!(file.facts.contains("lpc.issued"));

        // A firm fact is not recorded again, and the sequence check sees both kinds alike.
        assert!(file.not_firm(issued.clone()).is_empty());
        file.record("third", &CaseFile::facts_of(&event("exit.authorized")));
        assert!(
            file.check(&catalogue, &event("boarding.confirmed"))
                .is_empty()
        );
        assert!(file.withdraw("third"));
        assert_eq!(
            file.check(&catalogue, &event("boarding.confirmed")).len(),
            1
        );
    }

    #[test]
    fn a_booking_puts_where_its_journey_ends_on_file() {
        let booked = json!({"type": "ma.rva.travel.booked", "data": {"pnr": "K7Q2XM", "segments": [
            {"carrier": "AT", "origin": "CMN", "destination": "ABJ"},
            {"carrier": "HF", "origin": "ABJ", "destination": "BZV"}]}});
        let mut file = CaseFile::default();
        file.record("registered", &CaseFile::facts_of(&event("case.registered")));
        file.record("booked", &CaseFile::facts_of(&booked));
        assert_eq!(file.journey_ends(), ["BZV"]);
        assert!(CaseFile::default().journey_ends().is_empty());
        assert!(
            file.facts.iter().all(|fact| !fact.contains("K7Q2XM")),
            "the booking's reference is not kept: {:?}",
            file.facts
        );
        // The journey's end is no event type: no requirement is met or missed by it.
        let catalogue = Catalogue::embedded().unwrap();
        assert!(file.check(&catalogue, &booked).is_empty());
    }

    #[test]
    fn a_case_file_written_before_provisional_facts_reads_as_firm() {
        let file: CaseFile = serde_json::from_str(r#"{"facts":["lpc.issued"]}"#).unwrap();
        assert!(file.is_firm("lpc.issued"));
        assert_eq!(
            serde_json::to_string(&file).unwrap(),
            r#"{"facts":["lpc.issued"]}"#
        );
    }
}
