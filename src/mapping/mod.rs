//! The mapping language: every partner's native messages to canonical events, and back.
//!
//! A partner is described by one TOML file in the mappings folder (see `docs/mapping.md`):
//! how each message kind it sends is recognised and read, and how each event it receives is
//! written in its own format. This module loads and lints those files ([`MappingSet::load`]),
//! decodes native bytes into validated canonical events ([`PartnerMapping::decode`]), and
//! encodes events for a recipient under the need-to-know policy ([`PartnerMapping::encode`]).
//! No partner has code of its own here: onboarding a partner is a file and its fixtures.

pub mod bcbp;
pub mod codelist;
pub mod dates;
pub mod diagnostics;
pub mod fixtures;
pub mod inbound;
pub mod json;
mod loader;
pub mod mrz;
pub mod path;
pub mod policy;
pub mod rule;
pub mod spec;
pub mod template;
pub mod xml;

pub use diagnostics::Diagnostic;
pub use loader::MappingSet;
pub use spec::Format;

use crate::canonical::{SchemaSet, Violation, jcs, text, type_name};
use inbound::{IgnoreRule, InboundMapping, NativeMessage};
use policy::Policy;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use template::Template;
use xml::{XmlDocument, XmlLimits};

/// The largest native message accepted, by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// One outbound message kind.
#[derive(Debug, Clone)]
pub struct OutboundMapping {
    /// The kind's name.
    pub name: String,
    /// The canonical type it is made from, without prefix.
    pub event_type: String,
    template: Template,
}

/// Everything known about one partner's messages.
#[derive(Debug, Clone)]
pub struct PartnerMapping {
    /// The partner id.
    pub partner: String,
    /// The partner's role, which selects the need-to-know policy.
    pub role: String,
    /// The native format of the messages the partner sends.
    pub format: Format,
    /// `sha256:<hex>` over the mapping file and the shared files it depends on.
    pub hash: String,
    /// The file the mapping was loaded from.
    pub file: PathBuf,
    /// The partner's CloudEvents `source`, `urn:partner:<id>`.
    pub source: String,
    inbound: Vec<InboundMapping>,
    ignore: Vec<IgnoreRule>,
    outbound: Vec<OutboundMapping>,
    schemas: Arc<SchemaSet>,
    policy: Arc<Policy>,
    max_message_bytes: usize,
}

/// The result of decoding a native message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A validated canonical event.
    Event(MappedEvent),
    /// A message the programme does not use, recognised as such.
    Ignored {
        /// `<partner>/<ignore rule name>`.
        mapping_id: String,
        /// The mapping's hash.
        mapping_hash: String,
        /// The message's own kind, when the rule names where to read it.
        kind: Option<String>,
        /// Why it is ignored.
        reason: String,
    },
}

/// A canonical event produced by a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    /// The event, envelope and data, validated.
    pub event: Value,
    /// `<partner>/<message kind>`.
    pub mapping_id: String,
}

impl MappedEvent {
    /// The event as RFC 8785 canonical JSON.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        jcs::to_vec(&self.event)
    }
}

/// Why a native message could not become a canonical event. Every variant is the sending
/// partner's fault (a 4xx, or a dead letter), and names the partner, the message kind and the
/// path. Messages never quote personal data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The message is larger than the limit.
    #[error("partner {partner}: the message is larger than {limit} bytes")]
    TooLarge {
        /// The sender.
        partner: String,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not well-formed in the partner's format, or are refused (DOCTYPE).
    #[error("partner {partner}: malformed {format}: {message}")]
    Malformed {
        /// The sender.
        partner: String,
        /// `XML` or `JSON`.
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No inbound or ignore rule recognises the message.
    #[error("partner {partner}: the message is none of the known kinds ({expected}): {seen}")]
    UnknownKind {
        /// The sender.
        partner: String,
        /// What the message has where the kinds are told apart (its root element, the values
        /// of the fields the kinds match on).
        seen: String,
        /// The kinds that were tried.
        expected: String,
    },
    /// A field rule failed.
    #[error("partner {partner}, message {kind}, field {field}: {message}")]
    Field {
        /// The sender.
        partner: String,
        /// The message kind.
        kind: String,
        /// The canonical field (or `id`, `time`, `$decoded`).
        field: String,
        /// What went wrong, naming the native path.
        message: String,
    },
    /// The mapped event breaks the canonical schema.
    #[error(
        "partner {partner}, message {kind}: the event breaks the canonical schema: {}",
        join(violations)
    )]
    Schema {
        /// The sender.
        partner: String,
        /// The message kind.
        kind: String,
        /// Each violation, with its path.
        violations: Vec<Violation>,
    },
    /// The message is of a kind whose mapping is not in force for its sender (see
    /// [`PartnerMapping::decode_in_force`]).
    #[error("mapping {mapping_id} is not in force for partner {partner}")]
    NotInForce {
        /// The sender.
        partner: String,
        /// The mapping id of the kind, `<partner>/<kind>`.
        mapping_id: String,
    },
}

impl DecodeError {
    /// A short machine-readable class: `too-large`, `malformed`, `unknown-kind`, `field`,
    /// `schema`, `not-in-force`.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::UnknownKind { .. } => "unknown-kind",
            DecodeError::Field { .. } => "field",
            DecodeError::Schema { .. } => "schema",
            DecodeError::NotInForce { .. } => "not-in-force",
        }
    }
}

/// Whether a message's bytes look like UTF-16: a UTF-16 byte order mark, or a zero byte in
/// either of the first two (XML and JSON begin with an ASCII character, which UTF-16 writes
/// beside a zero byte; UTF-8 text holds no zero byte there).
fn looks_like_utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\xFF\xFE")
        || bytes.starts_with(b"\xFE\xFF")
        || bytes.iter().take(2).any(|&byte| byte == 0)
}

fn join(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why an event could not be written for a recipient. These are the gateway's faults or
/// configuration gaps, never the sender's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The recipient has outbound templates, but none for this type.
    #[error("partner {partner} has no outbound mapping for {event_type}")]
    NoOutbound {
        /// The recipient.
        partner: String,
        /// The event type.
        event_type: String,
    },
    /// A template could not be rendered from the event.
    #[error("partner {partner}, outbound {kind}: {error}")]
    Render {
        /// The recipient.
        partner: String,
        /// The outbound kind.
        kind: String,
        /// What failed.
        error: template::RenderError,
    },
}

impl EncodeError {
    /// The error without the event's values, for logs: a rendering failure's message may
    /// quote the value it could not write (a code missing from a code list), which can be
    /// personal data; the placeholder names the field instead.
    pub fn without_values(&self) -> String {
        match self {
            EncodeError::NoOutbound { .. } => self.to_string(),
            EncodeError::Render {
                partner,
                kind,
                error,
            } => format!(
                "partner {partner}, outbound {kind}: {} cannot be written",
                error.placeholder
            ),
        }
    }
}

/// The kind name of canonical CloudEvents, sent or received as such: no kind of a mapping
/// file may take it.
pub const CANONICAL_KIND: &str = "cloudevents";

/// An event written for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The bytes to deliver.
    pub body: Vec<u8>,
    /// Their media type.
    pub content_type: &'static str,
    /// The data fields withheld from this recipient (`data.vulnerabilities`), by name.
    pub withheld: Vec<String>,
    /// `<partner>/<outbound kind>`, or `<partner>/cloudevents` for canonical recipients.
    pub mapping_id: String,
}

impl PartnerMapping {
    /// The inbound message kinds, in matching order.
    pub fn inbound(&self) -> &[InboundMapping] {
        &self.inbound
    }

    /// The outbound message kinds.
    pub fn outbound(&self) -> &[OutboundMapping] {
        &self.outbound
    }

    /// Whether the partner receives canonical CloudEvents rather than its own format.
    pub fn receives_canonical(&self) -> bool {
        self.outbound.is_empty()
    }

    /// The mapping id of one of the partner's kinds, `<partner>/<kind>`, as decoding,
    /// encoding, the audit log and the registry's `mappings` name it.
    pub fn mapping_id(&self, kind: &str) -> String {
        format!("{}/{kind}", self.partner)
    }

    /// Every mapping id this file defines ([`PartnerMapping::mapping_id`]): its inbound,
    /// ignored and outbound kinds, and [`CANONICAL_KIND`] when the partner sends or reads
    /// canonical events. Sorted.
    pub fn mapping_ids(&self) -> Vec<String> {
        let canonical = (self.format == Format::Cloudevents || self.receives_canonical())
            .then_some(CANONICAL_KIND);
        let kinds = self
            .inbound
            .iter()
            .map(|m| m.name.as_str())
            .chain(self.ignore.iter().map(|rule| rule.name.as_str()))
            .chain(self.outbound.iter().map(|m| m.name.as_str()))
            .chain(canonical);
        let ids: BTreeSet<String> = kinds.map(|kind| self.mapping_id(kind)).collect();
        ids.into_iter().collect()
    }

    /// The largest message this partner's mapping reads, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Decodes a native message into a validated canonical event.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        self.decode_in_force(bytes, bytes.len(), &|_| true)
    }

    /// Decodes a native message into a validated canonical event, provided that the mapping
    /// of its kind is in force (`in_force` is asked with the mapping id as soon as the kind
    /// is recognised, before any field is read): otherwise [`DecodeError::NotInForce`].
    ///
    /// `message_len` is the size of the sender's message, checked against the size limit:
    /// `bytes.len()`, but for a binary-mode CloudEvent, whose structured form (`bytes`) adds
    /// its attributes to the body the sender sent, the body's length.
    pub fn decode_in_force(
        &self,
        bytes: &[u8],
        message_len: usize,
        in_force: &dyn Fn(&str) -> bool,
    ) -> Result<Decoded, DecodeError> {
        let partner = || self.partner.clone();
        let require_in_force = |mapping_id: String| {
            if in_force(&mapping_id) {
                Ok(mapping_id)
            } else {
                Err(DecodeError::NotInForce {
                    partner: partner(),
                    mapping_id,
                })
            }
        };
        if message_len > self.max_message_bytes {
            return Err(DecodeError::TooLarge {
                partner: partner(),
                limit: self.max_message_bytes,
            });
        }
        let message = match self.format {
            Format::Xml => {
                NativeMessage::Xml(XmlDocument::parse(bytes, XmlLimits::default()).map_err(
                    |error| DecodeError::Malformed {
                        partner: partner(),
                        format: "XML",
                        message: error.to_string(),
                    },
                )?)
            }
            Format::Json | Format::Cloudevents => {
                NativeMessage::Json(json::from_slice(bytes).map_err(|error| {
                    // JSON is UTF-8 without a byte order mark (RFC 8259, section 8.1): said as
                    // such, rather than as a syntax error at its first byte.
                    let message = if looks_like_utf16(bytes) {
                        "the body is in UTF-16: send JSON in UTF-8 (RFC 8259, section 8.1)".into()
                    } else if bytes.starts_with(b"\xEF\xBB\xBF") {
                        "the body starts with a byte order mark (EF BB BF): send JSON without \
                         it (RFC 8259, section 8.1)"
                            .into()
                    } else {
                        error.to_string()
                    };
                    DecodeError::Malformed {
                        partner: partner(),
                        format: "JSON",
                        message,
                    }
                })?)
            }
        };
        if self.format == Format::Cloudevents {
            let NativeMessage::Json(event) = message else {
                unreachable!("parsed as JSON above")
            };
            require_in_force(self.mapping_id(CANONICAL_KIND))?;
            return self.accept_canonical(event);
        }
        // A native JSON message is one object: a list of them (even of one) is not a message.
        if let NativeMessage::Json(value) = &message
            && !value.is_object()
        {
            return Err(DecodeError::Malformed {
                partner: partner(),
                format: "JSON",
                message: "a message is one JSON object; send each message on its own".into(),
            });
        }
        let native = message.view();
        // A path the kinds look at that gives more values than a path may refuses the message,
        // rather than let it match no kind (and perhaps be ignored).
        let over_limit = |kind: &str, error: rule::RuleError| DecodeError::Field {
            partner: partner(),
            kind: kind.to_owned(),
            field: "match".to_owned(),
            message: error.message,
        };
        let mut chosen = None;
        for mapping in &self.inbound {
            if mapping
                .matcher
                .matches(native)
                .map_err(|error| over_limit(&mapping.name, error))?
            {
                chosen = Some(mapping);
                break;
            }
        }
        let Some(mapping) = chosen else {
            // A value that names a kind but for its case is a mistake to report, not a message
            // to ignore: an airline's `passenger_boarded` is boarding evidence.
            let mut near = None;
            for mapping in &self.inbound {
                if let Some((path, expected)) = mapping
                    .matcher
                    .near_miss(native)
                    .map_err(|error| over_limit(&mapping.name, error))?
                {
                    near = Some((mapping, path, expected));
                    break;
                }
            }
            if let Some((mapping, path, expected)) = near {
                let expected = expected
                    .iter()
                    .map(|value| format!("{value:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                return Err(DecodeError::Field {
                    partner: partner(),
                    kind: mapping.name.clone(),
                    field: path.to_owned(),
                    message: format!(
                        "{path} differs from {expected} only in case; the message is neither \
                         mapped nor ignored"
                    ),
                });
            }
            let mut ignored = None;
            for rule in &self.ignore {
                if rule
                    .matcher
                    .matches(native)
                    .map_err(|error| over_limit(&rule.name, error))?
                {
                    ignored = Some(rule);
                    break;
                }
            }
            if let Some(rule) = ignored {
                return Ok(Decoded::Ignored {
                    mapping_id: require_in_force(self.mapping_id(&rule.name))?,
                    mapping_hash: self.hash.clone(),
                    kind: rule.kind_of(native),
                    reason: rule.reason.clone(),
                });
            }
            let expected = self
                .inbound
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut seen = Vec::new();
            for mapping in &self.inbound {
                mapping.matcher.seen(native, &mut seen);
            }
            if seen.is_empty() {
                seen.push("nothing that tells its kind".into());
            }
            return Err(DecodeError::UnknownKind {
                partner: partner(),
                expected,
                seen: seen.join("; "),
            });
        };
        require_in_force(mapping.envelope.mapping_id.clone())?;
        let parts = mapping
            .apply(native)
            .map_err(|failure| DecodeError::Field {
                partner: partner(),
                kind: mapping.name.clone(),
                field: failure.field,
                message: failure.message,
            })?;
        let envelope = &mapping.envelope;
        let mapping_id = envelope.mapping_id.clone();
        let mut attributes = envelope.constant.clone();
        attributes.insert("id".into(), Value::String(parts.id));
        let subject = parts.data.get("case_id").cloned().unwrap_or(Value::Null);
        attributes.insert("subject".into(), subject);
        if let Some(time) = parts.time {
            attributes.insert("time".into(), Value::String(time));
        }
        attributes.insert("data".into(), Value::Object(parts.data));
        let event = Value::Object(attributes);
        if let Some(found) = text::find_refused(&event) {
            let (field, label) = mapping.locate(&found.path);
            return Err(DecodeError::Field {
                partner: partner(),
                kind: mapping.name.clone(),
                field,
                message: refused_message(&label, &found),
            });
        }
        self.schemas.validate(&event).map_err(|mut violations| {
            // The sender knows its own message, not the canonical one: each violation names
            // the native path its field was read from.
            for violation in &mut violations {
                if let Some(source) = mapping.source_of(&violation.path) {
                    violation.message = format!("{} (read from {source})", violation.message);
                }
            }
            DecodeError::Schema {
                partner: partner(),
                kind: mapping.name.clone(),
                violations,
            }
        })?;
        self.check_requester(&event, &mapping.name, "requested_by")?;
        Ok(Decoded::Event(MappedEvent { event, mapping_id }))
    }

    /// A request's `requested_by` names the partner that asks: the sender itself. Another
    /// partner's id there would put a request on that partner's name in the consulate's copy
    /// and in the evidence, and an id of no partner would leave the consulate a request it
    /// cannot be told of (its mapping names the requester).
    /// `field` is the field as the sender's errors name it (`data.requested_by` in a
    /// CloudEvent, `requested_by` in a native message).
    fn check_requester(&self, event: &Value, kind: &str, field: &str) -> Result<(), DecodeError> {
        match event["data"].get("requested_by").and_then(Value::as_str) {
            Some(requester) if requester != self.partner => Err(DecodeError::Field {
                partner: self.partner.clone(),
                kind: kind.to_owned(),
                field: field.to_owned(),
                message: format!(
                    "requested_by names the partner that asks, which is the sender: it must be \
                     {}, not another partner's id",
                    self.partner
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Accepts a canonical event sent as such: it is validated like any other, its `source`
    /// must be the sender, and the attributes the gateway sets must not be set already.
    fn accept_canonical(&self, mut event: Value) -> Result<Decoded, DecodeError> {
        let kind = CANONICAL_KIND.to_owned();
        let field = |field: &str, message: String| DecodeError::Field {
            partner: self.partner.clone(),
            kind: kind.clone(),
            field: field.into(),
            message,
        };
        // As a native JSON message, a CloudEvent is one object: a list (a batch) or a lone
        // value is no event.
        if !event.is_object() {
            return Err(DecodeError::Malformed {
                partner: self.partner.clone(),
                format: "JSON",
                message: "a CloudEvent is one JSON object; send each event on its own".into(),
            });
        }
        if let Some(found) = text::find_refused(&event) {
            // The member names are the sender's text: each is quoted cut short and escaped.
            let path = found
                .path
                .iter()
                .map(|step| json::quoted(step))
                .collect::<Vec<_>>()
                .join(".");
            return Err(field(&path, refused_message(&path, &found)));
        }
        let Some(object) = event.as_object_mut() else {
            unreachable!("checked to be an object above");
        };
        for gateway_set in ["mappingid", "mappinghash", "withheld"] {
            if object.contains_key(gateway_set) {
                return Err(field(
                    gateway_set,
                    format!("{gateway_set} is set by the gateway, not by a sender"),
                ));
            }
        }
        if object
            .get("data")
            .and_then(|data| data.get("anomalies"))
            .is_some()
        {
            return Err(field(
                "data.anomalies",
                "anomalies are raised by the gateway, not by a sender".into(),
            ));
        }
        // The canonical data is a JSON object: one sent as text, or as `data_base64`, is said as
        // such rather than as the missing members the checks below would find.
        if object.contains_key("data_base64") {
            return Err(field(
                "data_base64",
                "the data must be a JSON object in `data`, not base64 in `data_base64`".into(),
            ));
        }
        if let Some(data) = object.get("data")
            && !data.is_object()
        {
            return Err(field(
                "data",
                "the data must be a JSON object (the event's members), not text or another value"
                    .into(),
            ));
        }
        let source = &self.source;
        if object.get("source").and_then(Value::as_str) != Some(source.as_str()) {
            return Err(field(
                "source",
                format!("source must be {source}, the sender's own"),
            ));
        }
        if object.get("subject") != object.get("data").and_then(|data| data.get("case_id")) {
            let what = if object.get("subject").is_none() {
                "subject is missing: it must equal data.case_id"
            } else {
                "subject must equal data.case_id"
            };
            return Err(field("subject", what.into()));
        }
        let mapping_id = self.mapping_id(&kind);
        object.insert("mappingid".into(), Value::String(mapping_id.clone()));
        object.insert("mappinghash".into(), Value::String(self.hash.clone()));
        self.schemas
            .validate(&event)
            .map_err(|violations| DecodeError::Schema {
                partner: self.partner.clone(),
                kind: kind.clone(),
                violations,
            })?;
        self.check_requester(&event, &kind, "data.requested_by")?;
        Ok(Decoded::Event(MappedEvent { event, mapping_id }))
    }

    /// Writes a canonical event for this partner as recipient: its own format if it has an
    /// outbound template for the type, canonical JSON if it receives canonical events, after
    /// removing every field its role must not see.
    pub fn encode(&self, event: &Value) -> Result<Encoded, EncodeError> {
        // Only a recipient of canonical events reads the canonical form.
        let canonical = if self.receives_canonical() {
            jcs::to_vec(event)
        } else {
            Vec::new()
        };
        self.encode_with_canonical(event, &canonical)
    }

    /// As [`PartnerMapping::encode`], given the event's canonical form `canonical`
    /// ([`jcs::to_vec`]), which a recipient of canonical events gets as it is when its role
    /// withholds nothing the event holds: for a caller that has it already. A recipient with
    /// templates does not read it.
    pub fn encode_with_canonical(
        &self,
        event: &Value,
        canonical: &[u8],
    ) -> Result<Encoded, EncodeError> {
        // Most events hold nothing a recipient's role withholds: they are written from the
        // event itself, without the copy the policy would change.
        let (filtered, withheld) = if self.policy.changes(&self.role, event) {
            let mut filtered = event.clone();
            let withheld = self.policy.apply(&self.role, &mut filtered);
            (Cow::Owned(filtered), withheld)
        } else {
            (Cow::Borrowed(event), self.policy.withheld_from(&self.role))
        };
        if self.receives_canonical() {
            debug_assert_eq!(canonical, jcs::to_vec(event), "the event's canonical form");
            // The event itself says what its recipient did not get (names, never values).
            let said = (!withheld.is_empty()).then(|| Value::String(withheld.join(",")));
            let body = match (filtered, said) {
                (Cow::Borrowed(_), None) => canonical.to_vec(),
                (Cow::Borrowed(event), Some(said)) => jcs::with_last_member(
                    canonical, event, "withheld", &said,
                )
                .unwrap_or_else(|| {
                    let mut whole = event.clone();
                    whole["withheld"] = said;
                    jcs::to_vec(&whole)
                }),
                (Cow::Owned(mut filtered), said) => {
                    if let Some(said) = said {
                        filtered["withheld"] = said;
                    }
                    jcs::to_vec(&filtered)
                }
            };
            return Ok(Encoded {
                body,
                content_type: "application/cloudevents+json",
                withheld,
                mapping_id: self.mapping_id(CANONICAL_KIND),
            });
        }
        let event_type = type_name(event);
        let outbound = self
            .outbound
            .iter()
            .find(|o| o.event_type == event_type)
            .ok_or_else(|| EncodeError::NoOutbound {
                partner: self.partner.clone(),
                event_type: event_type.to_owned(),
            })?;
        let body = outbound
            .template
            .render(&filtered)
            .map_err(|error| EncodeError::Render {
                partner: self.partner.clone(),
                kind: outbound.name.clone(),
                error,
            })?;
        Ok(Encoded {
            body,
            content_type: outbound.template.content_type(),
            withheld,
            mapping_id: self.mapping_id(&outbound.name),
        })
    }
}

/// Why a string was refused: what the character is, never the text around it.
fn refused_message(path: &str, found: &text::RefusedCharacter) -> String {
    let place = if found.in_name {
        format!("a member name in {path}")
    } else {
        path.to_owned()
    };
    format!(
        "{place} contains {}, which no canonical value may hold",
        found.describe()
    )
}

/// JSON for humans and golden files: indented, keys sorted, a final newline.
pub fn pretty_json(value: &Value) -> String {
    // `serde_json::Map` keeps keys sorted, so this is deterministic.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encode_error_for_logs_names_the_field_not_its_value() {
        let error = EncodeError::Render {
            partner: "ma.dgsn".into(),
            kind: "lpc-notice".into(),
            error: template::RenderError {
                placeholder: "{{ data.holder.nationality | lookup('countries') }}".into(),
                message: "\"Atlante\" has no entry in code list countries".into(),
            },
        };
        assert!(
            error.to_string().contains("Atlante"),
            "the full error says it"
        );
        let logged = error.without_values();
        assert!(!logged.contains("Atlante"), "{logged}");
        assert!(logged.contains("data.holder.nationality"), "{logged}");
        assert!(logged.contains("ma.dgsn") && logged.contains("lpc-notice"));
    }
}
