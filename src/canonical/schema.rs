//! Schema validation of canonical events, and the field catalogue that mappings are linted
//! against.
//!
//! This module owns the JSON Schemas in `schemas/` (embedded in the binary when it is built,
//! so that a gateway always validates against the schemas it was built and tested with), their
//! compilation (once, at start), validation with error paths and masked values, and the
//! derivation of each event type's field tree for lint. It must not change an event.

use jsonschema::{Draft, Retrieve, Uri, Validator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::catalogue::{Catalogue, TYPE_PREFIX};

/// The base URI of every canonical schema `$id`.
pub const SCHEMA_BASE: &str = "https://schemas.passerelle.ma/v1/";

/// The schema files, relative to `schemas/`, embedded at build time.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "cloudevent.schema.json",
        include_str!("../../schemas/cloudevent.schema.json"),
    ),
    (
        "defs.schema.json",
        include_str!("../../schemas/defs.schema.json"),
    ),
    (
        "codes.schema.json",
        include_str!("../../schemas/codes.schema.json"),
    ),
    (
        "events/case.registered.schema.json",
        include_str!("../../schemas/events/case.registered.schema.json"),
    ),
    (
        "events/identification.requested.schema.json",
        include_str!("../../schemas/events/identification.requested.schema.json"),
    ),
    (
        "events/identification.completed.schema.json",
        include_str!("../../schemas/events/identification.completed.schema.json"),
    ),
    (
        "events/lpc.requested.schema.json",
        include_str!("../../schemas/events/lpc.requested.schema.json"),
    ),
    (
        "events/lpc.issued.schema.json",
        include_str!("../../schemas/events/lpc.issued.schema.json"),
    ),
    (
        "events/lpc.refused.schema.json",
        include_str!("../../schemas/events/lpc.refused.schema.json"),
    ),
    (
        "events/travel.booked.schema.json",
        include_str!("../../schemas/events/travel.booked.schema.json"),
    ),
    (
        "events/exit.authorized.schema.json",
        include_str!("../../schemas/events/exit.authorized.schema.json"),
    ),
    (
        "events/boarding.confirmed.schema.json",
        include_str!("../../schemas/events/boarding.confirmed.schema.json"),
    ),
    (
        "events/boarding.failed.schema.json",
        include_str!("../../schemas/events/boarding.failed.schema.json"),
    ),
    (
        "events/border.exit.recorded.schema.json",
        include_str!("../../schemas/events/border.exit.recorded.schema.json"),
    ),
    (
        "events/allowance.paid.schema.json",
        include_str!("../../schemas/events/allowance.paid.schema.json"),
    ),
    (
        "events/arrival.confirmed.schema.json",
        include_str!("../../schemas/events/arrival.confirmed.schema.json"),
    ),
    (
        "events/reintegration.updated.schema.json",
        include_str!("../../schemas/events/reintegration.updated.schema.json"),
    ),
];

/// Why the schemas could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file is not JSON.
    #[error("schema {file}: {message}")]
    Invalid {
        /// The file, relative to `schemas/`.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A catalogue type has no data schema.
    #[error("event type {0} has no schema events/{0}.schema.json")]
    MissingType(String),
}

/// One way in which an event breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON Pointer to the offending value in the event, e.g. `/data/holder/birth_date`.
    pub path: String,
    /// What is wrong, with the offending value masked (it may be personal data).
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            },
            self.message
        )
    }
}

/// What a field of the canonical model is, as far as a mapping needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldShape {
    /// A string, number or boolean.
    Scalar,
    /// A string that takes one of the listed values (the schema's `enum`).
    Choice(BTreeSet<String>),
    /// A list of values of one shape.
    List(Box<FieldShape>),
    /// An object with named properties.
    Object(ObjectShape),
}

/// The properties of an object, and which of them are required.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectShape {
    /// Each property's shape.
    pub properties: BTreeMap<String, FieldShape>,
    /// The required property names.
    pub required: BTreeSet<String>,
}

impl ObjectShape {
    /// Finds the shape at a dotted path below this object (`holder.family_name`).
    pub fn find(&self, dotted: &str) -> Option<&FieldShape> {
        let mut parts = dotted.split('.');
        let mut shape = self.properties.get(parts.next()?)?;
        for part in parts {
            shape = match shape {
                FieldShape::Object(object) => object.properties.get(part)?,
                _ => return None,
            };
        }
        Some(shape)
    }
}

/// The compiled canonical schemas: the envelope, and the data schema of every catalogue type.
pub struct SchemaSet {
    envelope: Validator,
    data: HashMap<String, Validator>,
    shapes: HashMap<String, ObjectShape>,
    envelope_shape: ObjectShape,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaSet")
            .field("types", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Serves the embedded schemas to the validator by `$id`; nothing is fetched from a network.
struct EmbeddedRetriever(HashMap<String, Value>);

impl Retrieve for EmbeddedRetriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        self.0.get(uri.as_str()).cloned().ok_or_else(|| {
            format!("unknown schema {uri}: only the canonical schemas are available").into()
        })
    }
}

impl SchemaSet {
    /// Compiles the embedded schemas for every type of the catalogue.
    pub fn embedded(catalogue: &Catalogue) -> Result<Self, SchemaError> {
        let mut documents = HashMap::new();
        for (file, text) in EMBEDDED {
            let value: Value =
                serde_json::from_str(text).map_err(|error| SchemaError::Invalid {
                    file: (*file).into(),
                    message: error.to_string(),
                })?;
            documents.insert(format!("{SCHEMA_BASE}{file}"), value);
        }
        let compile = |file: &str| -> Result<Validator, SchemaError> {
            let schema = &documents[&format!("{SCHEMA_BASE}{file}")];
            jsonschema::options()
                .with_draft(Draft::Draft202012)
                .should_validate_formats(true)
                .with_retriever(EmbeddedRetriever(documents.clone()))
                .build(schema)
                .map_err(|error| SchemaError::Invalid {
                    file: file.into(),
                    message: error.to_string(),
                })
        };
        let envelope = compile("cloudevent.schema.json")?;
        let envelope_shape =
            shape_of_document(&documents, &format!("{SCHEMA_BASE}cloudevent.schema.json"))?;
        let mut data = HashMap::new();
        let mut shapes = HashMap::new();
        for name in catalogue.names() {
            let file = format!("events/{name}.schema.json");
            let id = format!("{SCHEMA_BASE}{file}");
            if !documents.contains_key(&id) {
                return Err(SchemaError::MissingType(name.to_owned()));
            }
            data.insert(name.to_owned(), compile(&file)?);
            shapes.insert(name.to_owned(), shape_of_document(&documents, &id)?);
        }
        Ok(Self {
            envelope,
            data,
            shapes,
            envelope_shape,
        })
    }

    /// Validates a whole event: the envelope, then its data against its type's schema.
    pub fn validate(&self, event: &Value) -> Result<(), Vec<Violation>> {
        // The common case first: a yes/no check is about twice as fast as collecting errors.
        let type_name = event["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(TYPE_PREFIX));
        if let Some(validator) = type_name.and_then(|name| self.data.get(name))
            && self.envelope.is_valid(event)
            && validator.is_valid(&event["data"])
        {
            return Ok(());
        }
        // The validator builds every error of a value before it hands out the first, each with
        // its own path: an event that holds more values than any canonical event does is
        // refused as such, before it is asked for them.
        if let Some(excess) = too_many_values(event) {
            return Err(vec![excess]);
        }
        let mut violations = first_violations(self.envelope.iter_errors(event), "");
        if !violations.is_empty() {
            return Err(violations);
        }
        let Some(validator) = self.data.get(super::catalogue::type_name(event)) else {
            return Err(vec![Violation {
                path: "/type".into(),
                message: "not a catalogue type".into(),
            }]);
        };
        violations = first_violations(validator.iter_errors(&event["data"]), "/data");
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    /// The field tree of a type's data (`lpc.issued`), for lint.
    pub fn data_shape(&self, type_name: &str) -> Option<&ObjectShape> {
        self.shapes.get(type_name)
    }

    /// The field tree of the envelope.
    pub fn envelope_shape(&self) -> &ObjectShape {
        &self.envelope_shape
    }
}

/// At most this many violations are told of an event: the answer, the log line and the
/// audited reason stay small whatever the sender sent (an array of half a million wrong items
/// would otherwise be half a million lines, and hundreds of megabytes to say them).
pub const MAX_VIOLATIONS: usize = 20;

/// At most this many bytes of one violation's message (one `additionalProperties` violation
/// names every unexpected member).
const MAX_VIOLATION_MESSAGE: usize = 400;

/// The most JSON values (members, items and scalars, nested ones included) an event may hold
/// for its violations to be listed: the largest canonical events hold a few hundred.
pub const MAX_VALUES: usize = 10_000;

/// A violation that says `event` holds more than [`MAX_VALUES`] values, or `None`. The count
/// stops at the bound.
fn too_many_values(event: &Value) -> Option<Violation> {
    let mut seen = 0_usize;
    let mut pending = vec![event];
    while let Some(value) = pending.pop() {
        seen += 1;
        if seen > MAX_VALUES {
            return Some(Violation {
                path: String::new(),
                message: format!(
                    "the event holds more than {MAX_VALUES} values, more than any event of the \
                     canonical model"
                ),
            });
        }
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(members) => pending.extend(members.values()),
            _ => {}
        }
    }
    None
}

/// The first [`MAX_VIOLATIONS`] of `errors`, and, when there are more, a last one that says so.
/// (The validator has built them all by then: [`too_many_values`] bounds how many.)
fn first_violations<'a>(
    errors: impl Iterator<Item = jsonschema::ValidationError<'a>>,
    prefix: &str,
) -> Vec<Violation> {
    let mut errors = errors.peekable();
    let mut violations: Vec<Violation> = errors
        .by_ref()
        .take(MAX_VIOLATIONS)
        .map(|e| violation(&e, prefix))
        .collect();
    if errors.peek().is_some() {
        violations.push(Violation {
            path: prefix.to_owned(),
            message: format!("and more violations: only the first {MAX_VIOLATIONS} are told"),
        });
    }
    violations
}

fn violation(error: &jsonschema::ValidationError<'_>, prefix: &str) -> Violation {
    let mut path = format!("{prefix}{}", error.instance_path());
    // A missing member is where the sender must look, not the object that lacks it. (A
    // property name is schema text, not the sender's data.)
    if let jsonschema::error::ValidationErrorKind::Required {
        property: Value::String(name),
    } = error.kind()
    {
        path.push('/');
        path.push_str(&name.replace('~', "~0").replace('/', "~1"));
    }
    let mut message = error.masked().to_string();
    if message.len() > MAX_VIOLATION_MESSAGE {
        let mut end = MAX_VIOLATION_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" … (cut short)");
    }
    Violation { path, message }
}

/// Derives the field tree of a schema document, following `$ref` and `allOf`.
fn shape_of_document(
    documents: &HashMap<String, Value>,
    id: &str,
) -> Result<ObjectShape, SchemaError> {
    match shape_of(documents, id, &documents[id], 0)? {
        FieldShape::Object(object) => Ok(object),
        _ => Err(SchemaError::Invalid {
            file: id.into(),
            message: "the schema does not describe an object".into(),
        }),
    }
}

fn shape_of(
    documents: &HashMap<String, Value>,
    base: &str,
    schema: &Value,
    depth: usize,
) -> Result<FieldShape, SchemaError> {
    let invalid = |message: String| SchemaError::Invalid {
        file: base.into(),
        message,
    };
    if depth > 32 {
        return Err(invalid("$ref nesting is too deep".into()));
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let (document, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let target_id = if document.is_empty() {
            base.to_owned()
        } else {
            resolve_relative(base, document)
        };
        let target_document = documents
            .get(&target_id)
            .ok_or_else(|| invalid(format!("unresolved $ref {reference}")))?;
        let target = target_document
            .pointer(pointer)
            .ok_or_else(|| invalid(format!("unresolved $ref {reference}")))?;
        return shape_of(documents, &target_id, target, depth + 1);
    }
    let mut object = ObjectShape::default();
    let mut is_object = schema.get("type").and_then(Value::as_str) == Some("object");
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match shape_of(documents, base, part, depth + 1)? {
            FieldShape::Object(inner) => {
                is_object = true;
                object.properties.extend(inner.properties);
                object.required.extend(inner.required);
            }
            other if part.get("$ref").is_some() => return Ok(other),
            _ => {}
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        let items = schema
            .get("items")
            .ok_or_else(|| invalid("an array without items".into()))?;
        return Ok(FieldShape::List(Box::new(shape_of(
            documents,
            base,
            items,
            depth + 1,
        )?)));
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        is_object = true;
        for (name, property) in properties {
            object.properties.insert(
                name.clone(),
                shape_of(documents, base, property, depth + 1)?,
            );
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        is_object = true;
        object
            .required
            .extend(required.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    let choices = schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|values| values.iter().filter_map(Value::as_str).map(str::to_owned));
    Ok(match (is_object, choices) {
        (true, _) => FieldShape::Object(object),
        (false, Some(choices)) => FieldShape::Choice(choices.collect()),
        (false, None) => FieldShape::Scalar,
    })
}

/// Resolves a relative reference such as `../defs.schema.json` against a schema's `$id`.
fn resolve_relative(base: &str, relative: &str) -> String {
    let mut segments: Vec<&str> = base.split('/').collect();
    segments.pop();
    for part in relative.split('/') {
        match part {
            ".." => {
                segments.pop();
            }
            "." => {}
            other => segments.push(other),
        }
    }
    segments.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> SchemaSet {
        SchemaSet::embedded(&Catalogue::embedded().unwrap()).unwrap()
    }

    /// A canonical event of the fixtures, valid.
    fn valid_event() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/mappings/fixtures/sn.consulat.casablanca/out/lpc-requested.event.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn an_event_is_told_its_first_violations_only() {
        let schemas = schemas();
        assert_eq!(schemas.validate(&valid_event()), Ok(()));
        let mut event = valid_event();
        event["data"]["person"]["given_names"] = json!(vec![0; 5_000]);
        let violations = schemas.validate(&event).unwrap_err();
        assert_eq!(
            violations.len(),
            MAX_VIOLATIONS + 1,
            "{:?}",
            &violations[..3]
        );
        assert!(
            violations[..MAX_VIOLATIONS]
                .iter()
                .all(|v| v.path.starts_with("/data/person/given_names")),
            "{violations:?}"
        );
        assert!(
            violations[MAX_VIOLATIONS]
                .message
                .contains("only the first 20")
        );

        // An event of more values than the model's is refused as such, before its violations
        // are computed.
        let mut event = valid_event();
        event["data"]["person"]["given_names"] = json!(vec![0; 500_000]);
        let violations = schemas.validate(&event).unwrap_err();
        assert_eq!(violations.len(), 1);
        assert!(violations[0].message.contains("more than 10000 values"));

        // One violation naming five thousand unexpected members is cut short.
        let mut event = valid_event();
        for n in 0..5_000 {
            event["data"]["person"][format!("member{n}")] = json!(1);
        }
        let violations = schemas.validate(&event).unwrap_err();
        let longest = violations.iter().map(|v| v.message.len()).max().unwrap();
        assert!(longest < 500, "{longest}");
        assert!(
            violations
                .iter()
                .any(|v| v.message.ends_with("(cut short)"))
        );
    }

    #[test]
    fn resolves_relative_references() {
        assert_eq!(
            resolve_relative("https://x/v1/events/a.json", "../defs.schema.json"),
            "https://x/v1/defs.schema.json"
        );
    }

    #[test]
    fn derives_field_shapes_through_refs_and_all_of() {
        let schemas = schemas();
        let shape = schemas.data_shape("lpc.issued").unwrap();
        assert!(shape.required.contains("holder"));
        assert_eq!(shape.find("holder.family_name"), Some(&FieldShape::Scalar));
        let failed = schemas.data_shape("boarding.failed").unwrap();
        let Some(FieldShape::Choice(reasons)) = failed.find("reason") else {
            panic!("the reason is a choice: {:?}", failed.find("reason"));
        };
        assert!(reasons.contains("medical") && reasons.contains("other"));
        assert!(matches!(
            shape.find("holder.given_names"),
            Some(FieldShape::List(_))
        ));
        let Some(FieldShape::Object(holder)) = shape.find("holder") else {
            panic!("holder is an object")
        };
        assert!(holder.required.contains("birth_date") && holder.required.contains("family_name"));
        assert_eq!(shape.find("holder.nope"), None);
    }

    #[test]
    fn validation_masks_values_and_names_paths() {
        let schemas = schemas();
        let event = json!({
            "specversion": "1.0", "id": "x", "source": "urn:partner:sn.consulat.casablanca",
            "type": "ma.rva.lpc.refused", "subject": "RVA-2026-004230",
            "data": {"case_id": "RVA-2026-004230", "reason": "SECRET-VALUE", "extra": 1}
        });
        let violations = schemas.validate(&event).unwrap_err();
        assert!(
            violations.iter().any(|v| v.path == "/data/reason"),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.path == "/data"),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .all(|v| !v.message.contains("SECRET-VALUE")),
            "{violations:?}"
        );
    }
}
