//! The need-to-know policy: which canonical fields each recipient role never receives, and which
//! values it receives only in a neutral form.
//!
//! This module owns reading `policies.toml` and applying it to an event before it is encoded
//! for a recipient. Applying it returns the names of the fields the recipient's role is refused,
//! never their values, so that the audit trail can show what a recipient did not get.
//!
//! A value made neutral (a medical offload told to the border police as `other`) is applied to
//! the canonical event itself, so that it holds for every format the role is written in:
//! canonical events and every partner's template alike.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why the policy file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid TOML of the expected shape.
    #[error("{message}")]
    Parse {
        /// What is wrong, without the line the TOML library would quote.
        message: String,
        /// Where in the text, when the TOML library says.
        span: Option<std::ops::Range<usize>>,
    },
    /// A pattern is malformed, or longer than one delivery's audit entry can name.
    #[error(
        "role {role}: pattern {pattern:?} must be dotted field names (a-z, 0-9, _) or `*`, of at \
         most {} bytes with its `data.`",
        crate::audit::leaf::limits::ID_LEN
    )]
    Pattern {
        /// The role.
        role: String,
        /// The pattern.
        pattern: String,
    },
    /// A role's list is longer than a delivery's audit entry or canonical event can name.
    #[error(
        "role {role}: {count} patterns of {bytes} bytes in all; a delivery names them all, and \
         can name at most {MOST_PATTERNS} in {MOST_LISTED_BYTES} bytes (its audit entry, its \
         event's `withheld` attribute)"
    )]
    TooLong {
        /// The role.
        role: String,
        /// How many patterns it has.
        count: usize,
        /// Their length, written as the `withheld` attribute.
        bytes: usize,
    },
}

/// The most withheld names one delivery's audit entry holds
/// ([`crate::audit::leaf::limits::WITHHELD`]).
const MOST_PATTERNS: usize = crate::audit::leaf::limits::WITHHELD;
/// The longest `withheld` attribute of a canonical event (its schema's `maxLength`).
const MOST_LISTED_BYTES: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    roles: BTreeMap<String, RoleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    withhold: Vec<String>,
    /// Dotted field path to the values the role receives in a neutral form (value to its
    /// neutral form).
    #[serde(default)]
    neutral: BTreeMap<String, BTreeMap<String, String>>,
}

/// What one role is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RolePolicy {
    /// Field patterns withheld, as dotted steps.
    withhold: Vec<Vec<String>>,
    /// Field patterns, as dotted steps, whose listed values are replaced by a neutral one.
    neutral: Vec<(Vec<String>, BTreeMap<String, String>)>,
}

/// The policy of every role: data field patterns withheld from it, and values it gets only in
/// a neutral form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    roles: BTreeMap<String, RolePolicy>,
}

/// The dotted steps of a pattern, if each is a field name as the canonical `withheld`
/// attribute's schema and the audit entry's identifiers take them (a-z, 0-9, `_`), or `*`, and
/// the whole fits a delivery's audit entry.
fn pattern_steps(pattern: &str) -> Option<Vec<String>> {
    let field_name = |step: &str| {
        step == "*"
            || (!step.is_empty()
                && step
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    };
    let steps: Vec<String> = pattern.split('.').map(str::to_owned).collect();
    (steps.iter().all(|step| field_name(step))
        && "data.".len() + pattern.len() <= crate::audit::leaf::limits::ID_LEN)
        .then_some(steps)
}

impl Policy {
    /// Parses `policies.toml`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|error: toml::de::Error| PolicyError::Parse {
                message: error.message().trim_end().to_owned(),
                span: error.span(),
            })?;
        let mut roles = BTreeMap::new();
        for (role, spec) in file.roles {
            let mut patterns = Vec::new();
            for pattern in spec.withhold {
                match pattern_steps(&pattern) {
                    Some(steps) => patterns.push(steps),
                    None => return Err(PolicyError::Pattern { role, pattern }),
                }
            }
            let mut neutral = Vec::new();
            for (pattern, values) in spec.neutral {
                match pattern_steps(&pattern) {
                    Some(steps) => neutral.push((steps, values)),
                    None => return Err(PolicyError::Pattern { role, pattern }),
                }
            }
            let bytes = patterns
                .iter()
                .map(|steps| "data.".len() + steps.join(".").len())
                .sum::<usize>()
                + patterns.len().saturating_sub(1);
            if patterns.len() > MOST_PATTERNS || bytes > MOST_LISTED_BYTES {
                return Err(PolicyError::TooLong {
                    role,
                    count: patterns.len(),
                    bytes,
                });
            }
            roles.insert(
                role,
                RolePolicy {
                    withhold: patterns,
                    neutral,
                },
            );
        }
        Ok(Self { roles })
    }

    /// True when the policy names the role.
    pub fn knows(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// The roles the policy names.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// Every (role, pattern) pair, withheld and neutral alike, patterns as their dotted steps.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.roles.iter().flat_map(|(role, policy)| {
            let neutral = policy.neutral.iter().map(|(steps, _)| steps);
            policy
                .withhold
                .iter()
                .chain(neutral)
                .map(move |p| (role.as_str(), p.as_slice()))
        })
    }

    /// Every role's neutral forms: (role, pattern as its dotted steps, value to its neutral
    /// form).
    pub fn neutral_forms(
        &self,
    ) -> impl Iterator<Item = (&str, &[String], &BTreeMap<String, String>)> {
        self.roles.iter().flat_map(|(role, policy)| {
            policy
                .neutral
                .iter()
                .map(move |(steps, values)| (role.as_str(), steps.as_slice(), values))
        })
    }

    /// True when a dotted data path (`person.biometrics.photo_sha256`) is withheld from the
    /// role, or lies below a withheld field.
    pub fn withholds(&self, role: &str, dotted: &str) -> bool {
        let steps: Vec<&str> = dotted.split('.').collect();
        self.roles
            .get(role)
            .into_iter()
            .flat_map(|policy| &policy.withhold)
            .any(|pattern| {
                pattern.len() <= steps.len()
                    && pattern.iter().zip(&steps).all(|(p, s)| p == "*" || p == s)
            })
    }

    /// Removes from an event's `data` every field withheld from the role, puts the neutral
    /// form in place of each value the role gets only in that form, and returns the role's
    /// withheld paths ([`Policy::withheld_from`]). An unknown role gets nothing withheld here;
    /// the loader refuses mappings whose role the policy does not name.
    pub fn apply(&self, role: &str, event: &mut Value) -> Vec<String> {
        if let (Some(policy), Some(data)) = (
            self.roles.get(role),
            event.get_mut("data").and_then(Value::as_object_mut),
        ) {
            for pattern in &policy.withhold {
                remove(data, pattern);
            }
            for (pattern, values) in &policy.neutral {
                neutralise(data, pattern, values);
            }
        }
        self.withheld_from(role)
    }

    /// Whether [`Policy::apply`] would change the event for the role: a withheld field is
    /// there, or a value the role gets only in a neutral form. When it would not, a recipient's
    /// body is written from the event itself, without a copy.
    pub fn changes(&self, role: &str, event: &Value) -> bool {
        let (Some(policy), Some(data)) = (
            self.roles.get(role),
            event.get("data").and_then(Value::as_object),
        ) else {
            return false;
        };
        policy
            .withhold
            .iter()
            .any(|pattern| reaches(data, pattern, &mut |parent, key| parent.contains_key(key)))
            || policy.neutral.iter().any(|(pattern, values)| {
                reaches(data, pattern, &mut |parent, key| match parent.get(key) {
                    Some(Value::Array(items)) => items.iter().any(|item| has_neutral(item, values)),
                    Some(item) => has_neutral(item, values),
                    None => false,
                })
            })
    }

    /// The paths withheld from the role (`data.*.biometrics`, `data.medical`), as the policy
    /// writes them, sorted: what a delivery to the role records, and its canonical event's
    /// `withheld` attribute says.
    ///
    /// They are the same for every event, whatever it holds. Naming only the fields an event
    /// had would tell the recipient, and every reader of the public log, what it was meant not
    /// to learn: that the person has a medical record, or a vulnerability.
    pub fn withheld_from(&self, role: &str) -> Vec<String> {
        let mut withheld: Vec<String> = self
            .roles
            .get(role)
            .into_iter()
            .flat_map(|policy| &policy.withhold)
            .map(|steps| format!("data.{}", steps.join(".")))
            .collect();
        withheld.sort();
        withheld.dedup();
        withheld
    }
}

/// Removes the fields a pattern (its dotted steps) reaches in `object`, inside lists of objects
/// too.
fn remove(object: &mut Map<String, Value>, pattern: &[String]) {
    reach(object, pattern, &mut |parent, key| {
        parent.remove(key);
    });
}

/// Replaces each value a pattern reaches, inside lists too, that `values` gives a neutral form.
fn neutralise(
    object: &mut Map<String, Value>,
    pattern: &[String],
    values: &BTreeMap<String, String>,
) {
    reach(
        object,
        pattern,
        &mut |parent, key| match parent.get_mut(key) {
            Some(Value::Array(items)) => items
                .iter_mut()
                .for_each(|item| neutral_value(item, values)),
            Some(item) => neutral_value(item, values),
            None => {}
        },
    );
}

/// Whether [`neutral_value`] would replace `value`.
fn has_neutral(value: &Value, values: &BTreeMap<String, String>) -> bool {
    value.as_str().is_some_and(|text| values.contains_key(text))
}

fn neutral_value(value: &mut Value, values: &BTreeMap<String, String>) {
    if let Some(neutral) = value.as_str().and_then(|text| values.get(text)) {
        *value = Value::String(neutral.clone());
    }
}

/// Whether `found` holds for one of the places a pattern reaches in `object`, as [`reach`]
/// walks them (the object holding the field, and the field's name), without changing anything.
fn reaches(
    object: &Map<String, Value>,
    pattern: &[String],
    found: &mut dyn FnMut(&Map<String, Value>, &str) -> bool,
) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return false;
    };
    let mut each = |key: &str| {
        if rest.is_empty() {
            return found(object, key);
        }
        match object.get(key) {
            Some(Value::Object(inner)) => reaches(inner, rest, found),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_object)
                .any(|item| reaches(item, rest, found)),
            _ => false,
        }
    };
    if first == "*" {
        object.keys().any(|key| each(key))
    } else {
        each(first)
    }
}

/// Calls `last` with the object holding each field a pattern (its dotted steps) reaches in
/// `object`, and the field's name; the steps before the last go into objects, and into lists
/// of objects.
fn reach(
    object: &mut Map<String, Value>,
    pattern: &[String],
    last: &mut dyn FnMut(&mut Map<String, Value>, &str),
) {
    let Some((first, rest)) = pattern.split_first() else {
        return;
    };
    let keys: Vec<String> = if first == "*" {
        object.keys().cloned().collect()
    } else {
        vec![first.clone()]
    };
    for key in keys {
        if rest.is_empty() {
            last(object, &key);
            continue;
        }
        match object.get_mut(&key) {
            Some(Value::Object(inner)) => reach(inner, rest, last),
            Some(Value::Array(items)) => {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    reach(item, rest, last);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn withholds_fields_and_names_them() {
        let policy = Policy::parse("[roles.consulate]\nwithhold = [\"vulnerabilities\", \"*.biometrics\", \"medical\"]\n[roles.ministry]\nwithhold = []\n").unwrap();
        let mut event = json!({"data": {"case_id": "x", "vulnerabilities": ["trafficking_victim"],
            "person": {"family_name": "A", "biometrics": {"photo_sha256": "00"}}}});
        let original = event.clone();
        let refused = ["data.*.biometrics", "data.medical", "data.vulnerabilities"];
        assert_eq!(policy.apply("consulate", &mut event), refused);
        assert_eq!(
            event,
            json!({"data": {"case_id": "x", "person": {"family_name": "A"}}})
        );
        // An event without any of them names the same: what it lacked is not told either.
        let mut bare = json!({"data": {"case_id": "y"}});
        assert_eq!(policy.apply("consulate", &mut bare), refused);
        assert_eq!(bare, json!({"data": {"case_id": "y"}}));
        let mut unchanged = original.clone();
        assert!(policy.apply("ministry", &mut unchanged).is_empty());
        assert_eq!(unchanged, original);
        assert!(policy.withholds("consulate", "person.biometrics.photo_sha256"));
        assert!(!policy.withholds("consulate", "person.family_name"));
    }

    #[test]
    fn gives_listed_values_in_their_neutral_form_only() {
        let policy = Policy::parse(
            "[roles.border-police]\nwithhold = [\"reason_text\"]\n\
             [roles.border-police.neutral]\nreason = { medical = \"other\" }\n\
             \"*.codes\" = { b = \"z\" }\n",
        )
        .unwrap();
        let mut event = json!({"data": {"reason": "medical", "reason_text": "unwell",
            "person": {"codes": ["a", "b"]}}});
        assert_eq!(
            policy.apply("border-police", &mut event),
            ["data.reason_text"],
            "a neutral value is no withheld field"
        );
        assert_eq!(
            event,
            json!({"data": {"reason": "other", "person": {"codes": ["a", "z"]}}})
        );
        let mut other = json!({"data": {"reason": "documents"}});
        policy.apply("border-police", &mut other);
        assert_eq!(other, json!({"data": {"reason": "documents"}}));
        assert!(
            Policy::parse("[roles.x]\nwithhold = []\nneutral = { \"Reason\" = { a = \"b\" } }\n")
                .is_err()
        );
    }

    /// `changes` says whether `apply` would change an event, for the shipped policies and every
    /// event of the fixtures, and for events made to hold each kind of change.
    #[test]
    fn says_whether_applying_would_change_an_event() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let policy =
            Policy::parse(&std::fs::read_to_string(root.join("policies.toml")).unwrap()).unwrap();
        let mut events = vec![
            json!({"data": {"holder": {"biometrics": {"photo": "x"}}}}),
            json!({"data": {"people": [{"biometrics": 1}, {"name": "A"}]}}),
            json!({"data": {"medical": null, "vulnerabilities": []}}),
            json!({"data": {"observations": "x", "reason": "medical"}}),
            json!({"data": {}}),
            json!({"type": "no data"}),
        ];
        let mut folders = vec![root.join("fixtures")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.to_string_lossy().ends_with(".event.json") {
                    events.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
                }
            }
        }
        let (mut changed, mut unchanged) = (0, 0);
        for event in &events {
            for role in policy.roles() {
                let mut applied = event.clone();
                policy.apply(role, &mut applied);
                let differs = applied != *event;
                assert_eq!(policy.changes(role, event), differs, "{role}: {event}");
                if differs {
                    changed += 1;
                } else {
                    unchanged += 1;
                }
            }
        }
        assert!(changed > 10 && unchanged > 10, "{changed} {unchanged}");
    }

    #[test]
    fn refuses_partial_wildcards() {
        assert!(Policy::parse("[roles.x]\nwithhold = [\"per*\"]\n").is_err());
    }

    #[test]
    fn refuses_names_a_delivery_could_not_carry() {
        let long = "f".repeat(196);
        for pattern in ["Medical", "person.Name", "a-b", "a..b", long.as_str()] {
            let text = format!("[roles.x]\nwithhold = [\"{pattern}\"]\n");
            assert!(
                matches!(Policy::parse(&text), Err(PolicyError::Pattern { .. })),
                "{pattern}"
            );
        }
        let longest = "f".repeat(195);
        assert!(Policy::parse(&format!("[roles.x]\nwithhold = [\"{longest}\"]\n")).is_ok());
    }

    #[test]
    fn refuses_a_list_longer_than_a_delivery_can_name() {
        let list = |n: usize, name: &str| {
            let patterns: Vec<String> = (0..n).map(|i| format!("\"{name}{i}\"")).collect();
            format!("[roles.x]\nwithhold = [{}]\n", patterns.join(", "))
        };
        assert!(Policy::parse(&list(MOST_PATTERNS, "f")).is_ok());
        let many = Policy::parse(&list(MOST_PATTERNS + 1, "f")).unwrap_err();
        assert!(
            matches!(many, PolicyError::TooLong { count: 65, .. }),
            "{many}"
        );
        let long = Policy::parse(&list(20, &"f".repeat(100))).unwrap_err();
        assert!(
            matches!(long, PolicyError::TooLong { count: 20, .. }),
            "{long}"
        );
    }
}
