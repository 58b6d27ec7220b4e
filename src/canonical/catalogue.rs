//! The canonical event catalogue: the event types, who may send them, who receives them.
//!
//! This module owns reading `schemas/catalogue.toml` (embedded at build time). The catalogue is
//! data: changing who sends a type, who receives it or what it requires is an edit to that
//! file. A new type also needs its schema in `schemas/events/`, its name in the CloudEvent
//! schema's list of types, and a line in the schemas the binary embeds
//! ([`super::schema`]); a build then carries it. It does not resolve routed recipients; the
//! gateway's routing tables do.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The prefix of every canonical event type.
pub const TYPE_PREFIX: &str = "ma.rva.";

/// The catalogue name of an event's type (`lpc.issued` for `ma.rva.lpc.issued`); empty when
/// the event has no type of the catalogue's form.
pub fn type_name(event: &serde_json::Value) -> &str {
    event["type"]
        .as_str()
        .and_then(|t| t.strip_prefix(TYPE_PREFIX))
        .unwrap_or_default()
}

const EMBEDDED: &str = include_str!("../../schemas/catalogue.toml");

/// The fact a case's file holds once a passport is known (see [`EventType::requires`]).
pub const PASSPORT_FACT: &str = "passport";

/// One catalogue entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    /// Roles allowed to send this type, by default.
    pub senders: Vec<String>,
    /// Default recipients: roles, or routed recipients such as `consulate-of-nationality`.
    pub recipients: Vec<String>,
    /// The phases that must come first: of each inner list, at least one fact must already be
    /// on the case's file (an event type seen, or [`PASSPORT_FACT`]).
    #[serde(default)]
    pub requires: Vec<Vec<String>>,
    /// Facts that must not be on the case's file yet: the type itself for a step that happens
    /// once (a second arrival), another for a step that contradicts it. An event that finds one
    /// is flagged, not refused.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// A routed recipient that the sender must be for this event (the consulate of the
    /// holder's nationality issues its laissez-passer): an event whose sender it is not is
    /// flagged `scope.not_the_<routed recipient>`.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A routed recipient: a partner that the registry's routing tables choose for each event.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoutedRecipient {
    /// The role of the partners it names.
    pub role: String,
    /// The routing table that names them (of the registry's `[routing]`).
    pub table: String,
    /// The fields of the event's `data` that give the table's key, dotted (`flight.carrier`;
    /// `segments[].carrier` for each item of a list). None: the table names one partner.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Whether every key found is looked up (each carrier of a journey), rather than the first.
    #[serde(default)]
    pub every: bool,
    /// A routing table that the key goes through first (an airport to its country).
    #[serde(default)]
    pub through: Option<String>,
    /// Whether the end of the journey booked on the case's file, when there is one, stands for
    /// the event's own key.
    #[serde(default)]
    pub journey_end: bool,
}

impl RoutedRecipient {
    /// The keys `data` gives, in order and without repeats: the first found, or every one.
    pub fn keys_of(&self, data: &serde_json::Value) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for path in &self.keys {
            for value in texts_at(data, path) {
                if !found.contains(&value) {
                    found.push(value);
                }
            }
            if !self.every && !found.is_empty() {
                break;
            }
        }
        found
    }
}

/// The texts at a dotted path, where `name[]` steps into each item of a list.
fn texts_at(data: &serde_json::Value, path: &str) -> Vec<String> {
    let mut values = vec![data];
    for step in path.split('.') {
        let (name, each) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        values = values
            .into_iter()
            .filter_map(|value| value.get(name))
            .flat_map(|value| match (each, value.as_array()) {
                (true, Some(items)) => items.iter().collect(),
                (true, None) => Vec::new(),
                (false, _) => vec![value],
            })
            .collect();
    }
    values
        .into_iter()
        .filter_map(serde_json::Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Why the catalogue cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// It is not the catalogue's TOML.
    #[error("catalogue.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// It names what it does not define.
    #[error("catalogue.toml: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The catalogue: the roles, the event type names (without the `ma.rva.` prefix) to their
/// entries, and the routed recipients.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    roles: Vec<String>,
    types: BTreeMap<String, EventType>,
    #[serde(default)]
    routed: BTreeMap<String, RoutedRecipient>,
}

impl Catalogue {
    /// The catalogue built into this binary.
    pub fn embedded() -> Result<Self, CatalogueError> {
        Self::parse(EMBEDDED)
    }

    /// Parses catalogue text and checks that it names only what it defines: roles, types,
    /// routed recipients and facts; that every phase it requires has at least one fact; and
    /// that a type's scope is a routed recipient an event gives a key for.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let catalogue: Catalogue = toml::from_str(text)?;
        let problems = catalogue.problems();
        if problems.is_empty() {
            Ok(catalogue)
        } else {
            Err(CatalogueError::Invalid(problems))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let role = |name: &str| self.roles.iter().any(|r| r == name);
        for (name, routed) in &self.routed {
            if !role(&routed.role) {
                problems.push(format!("routed.{name}: unknown role {}", routed.role));
            }
            if routed
                .keys
                .iter()
                .any(|k| k.is_empty() || k.split('.').any(str::is_empty))
            {
                problems.push(format!(
                    "routed.{name}: a key path is empty or has an empty step"
                ));
            }
        }
        for (name, entry) in &self.types {
            for sender in &entry.senders {
                if !role(sender) {
                    problems.push(format!("types.{name}: sender {sender} is no role"));
                }
            }
            for recipient in &entry.recipients {
                if !role(recipient) && !self.routed.contains_key(recipient) {
                    problems.push(format!(
                        "types.{name}: recipient {recipient} is neither a role nor a routed recipient"
                    ));
                }
            }
            for phase in &entry.requires {
                if phase.is_empty() {
                    problems.push(format!("types.{name}: a required phase names no fact"));
                }
                for fact in phase {
                    if fact != PASSPORT_FACT && !self.types.contains_key(fact) {
                        problems.push(format!("types.{name}: requires {fact}, no type or fact"));
                    }
                }
            }
            for fact in &entry.excludes {
                if fact != PASSPORT_FACT && !self.types.contains_key(fact) {
                    problems.push(format!("types.{name}: excludes {fact}, no type or fact"));
                }
            }
            if let Some(scope) = &entry.scope {
                match self.routed.get(scope) {
                    Some(routed) if !routed.keys.is_empty() => {}
                    _ => problems.push(format!(
                        "types.{name}: scope {scope} is no routed recipient with keys"
                    )),
                }
            }
        }
        problems
    }

    /// The roles a partner may have.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(String::as_str)
    }

    /// The type names, without prefix, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The entry of a type name without prefix (`lpc.issued`).
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.types.get(name)
    }

    /// A routed recipient, by its name (`consulate-of-nationality`).
    pub fn routed(&self, name: &str) -> Option<&RoutedRecipient> {
        self.routed.get(name)
    }

    /// Every routed recipient, by name.
    pub fn routed_recipients(&self) -> impl Iterator<Item = (&str, &RoutedRecipient)> {
        self.routed
            .iter()
            .map(|(name, routed)| (name.as_str(), routed))
    }

    /// The role a recipient stands for: its own name for a role, the role of the partners a
    /// routed recipient names (`consulate-of-nationality` is a consulate).
    pub fn recipient_role<'a>(&'a self, recipient: &'a str) -> &'a str {
        self.routed
            .get(recipient)
            .map_or(recipient, |routed| routed.role.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_the_fourteen_types() {
        let catalogue = Catalogue::embedded().unwrap();
        assert_eq!(catalogue.names().count(), 14);
        assert_eq!(catalogue.get("lpc.issued").unwrap().senders, ["consulate"]);
        assert_eq!(catalogue.recipient_role("operating-airline"), "airline");
        assert_eq!(catalogue.recipient_role("ministry"), "ministry");
    }

    #[test]
    fn a_catalogue_that_names_what_it_does_not_define_is_refused() {
        let text = EMBEDDED
            .replacen("senders = [\"consulate\"]", "senders = [\"consul\"]", 1)
            .replacen(
                "recipients = [\"consulate-of-nationality\", \"ministry\"]",
                "recipients = [\"consulate-of-birth\", \"ministry\"]",
                1,
            )
            .replacen("requires = [[\"case.registered\"]]", "requires = [[]]", 1)
            .replacen(
                "[\"lpc.issued\", \"passport\"]",
                "[\"lpc.issued\", \"visa\"]",
                1,
            )
            .replacen(
                "scope = \"operating-airline\"",
                "scope = \"iom-morocco\"",
                1,
            )
            .replacen(
                "excludes = [\"arrival.confirmed\"]",
                "excludes = [\"arrival.lost\"]",
                1,
            );
        let Err(CatalogueError::Invalid(problems)) = Catalogue::parse(&text) else {
            panic!("the changed catalogue is refused");
        };
        for expected in [
            "sender consul is no role",
            "recipient consulate-of-birth is neither a role nor a routed recipient",
            "a required phase names no fact",
            "requires visa, no type or fact",
            "scope iom-morocco is no routed recipient with keys",
            "excludes arrival.lost, no type or fact",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_routed_recipient_reads_the_first_key_or_every_one() {
        let catalogue = Catalogue::embedded().unwrap();
        let data = serde_json::json!({
            "flight": {"carrier": "AT"},
            "segments": [{"carrier": "AT"}, {"carrier": "HF"}, {"other": 1}],
            "holder": {"nationality": "SEN"},
            "nationality": "CIV",
        });
        let airline = catalogue.routed("operating-airline").unwrap();
        assert_eq!(airline.keys_of(&data), ["AT", "HF"]);
        let consulate = catalogue.routed("consulate-of-nationality").unwrap();
        assert_eq!(consulate.keys_of(&data), ["SEN"]);
        assert!(
            consulate
                .keys_of(&serde_json::json!({"holder": {}}))
                .is_empty()
        );
    }
}
