//! The canonical event catalogue: the event types, who may send them, who receives them.
//!
//! This module owns reading `schemas/catalogue.toml` (embedded at build time). The catalogue is
//! data: adding a type or changing a default recipient is an edit to that file and a schema,
//! not to code. It does not resolve routed recipients; the gateway's routing tables do.

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

/// One catalogue entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    /// Roles allowed to send this type, by default.
    pub senders: Vec<String>,
    /// Default recipients: roles, or routed recipients such as `consulate-of-nationality`.
    pub recipients: Vec<String>,
    /// The phases that must come first: of each inner list, at least one fact must already be
    /// on the case's file (an event type seen, or `passport`).
    #[serde(default)]
    pub requires: Vec<Vec<String>>,
}

/// The catalogue: event type names (without the `ma.rva.` prefix) to their entries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    types: BTreeMap<String, EventType>,
}

impl Catalogue {
    /// The catalogue built into this binary.
    pub fn embedded() -> Result<Self, toml::de::Error> {
        toml::from_str(EMBEDDED)
    }

    /// The type names, without prefix, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The entry of a type name without prefix (`lpc.issued`).
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.types.get(name)
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
    }
}
