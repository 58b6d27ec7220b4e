//! The mapping file format, as written by a partner's integration engineer.
//!
//! This module owns the TOML structure of a mapping file and nothing else: every key, with the
//! position it was written at so that lint can name the line. Meaning is given to these values
//! when a file is compiled (see `compile`). `docs/mapping.md` is the reference for this format.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The native format a partner sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// XML, in UTF-8 or ISO-8859-1.
    Xml,
    /// JSON.
    Json,
    /// Canonical CloudEvents, structured JSON mode.
    Cloudevents,
}

/// A whole mapping file: one partner, all its messages in and out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The partner id, e.g. `sn.consulat.casablanca`.
    pub partner: Spanned<String>,
    /// The partner's role, e.g. `consulate`; it selects the need-to-know policy.
    pub role: Spanned<String>,
    /// The native format of the messages the partner sends.
    pub format: Format,
    /// A sentence for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// Namespace prefixes used in this file's XML paths; the key `""` is the namespace of
    /// unprefixed element names.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Spanned<String>>,
    /// The partner's own code lists: partner code to canonical value.
    #[serde(default)]
    pub codelists: BTreeMap<String, Spanned<BTreeMap<String, String>>>,
    /// The messages the partner sends.
    #[serde(default)]
    pub inbound: Vec<Spanned<InboundSpec>>,
    /// Messages the partner sends that the programme does not use.
    #[serde(default)]
    pub ignore: Vec<Spanned<IgnoreSpec>>,
    /// The messages the partner receives in its own format. A partner with none receives
    /// canonical CloudEvents.
    #[serde(default)]
    pub outbound: Vec<Spanned<OutboundSpec>>,
}

/// How a message kind is recognised.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The root element's local name (XML).
    #[serde(default)]
    pub root: Option<Spanned<String>>,
    /// The root element's namespace URI (XML); the prefix does not matter.
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    /// Paths that must hold one of these values (a string, or a list of accepted strings).
    #[serde(default)]
    pub fields: BTreeMap<String, Spanned<OneOrMany>>,
    /// Paths that must be present, with any value.
    #[serde(default)]
    pub present: Vec<Spanned<String>>,
}

/// One accepted value, or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a value to match is a text, or a list of texts")]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Any of these values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The accepted values.
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

/// One inbound message kind: native to canonical.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    /// The kind's name; the mapping id is `<partner>/<name>`.
    pub name: Spanned<String>,
    /// How the kind is recognised.
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// The canonical type it becomes, without the `ma.rva.` prefix.
    #[serde(rename = "type")]
    pub event_type: Spanned<String>,
    /// The CloudEvents `id`: the partner's own message reference.
    pub id: Spanned<RuleSpec>,
    /// The CloudEvents `time`, when the message carries one.
    #[serde(default)]
    pub time: Option<Spanned<RuleSpec>>,
    /// Embedded documents to decode (BCBP, MRZ) before the fields are read.
    #[serde(default)]
    pub decode: Vec<Spanned<DecodeSpec>>,
    /// The canonical data fields, by dotted path.
    pub data: BTreeMap<String, Spanned<RuleSpec>>,
    /// Consistency checks that raise anomalies.
    #[serde(default)]
    pub check: Vec<Spanned<CheckSpec>>,
}

/// How one value is produced: a source, then transforms in a fixed order.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A path in the native message, or `$name.path` into a decoded document, or (in checks
    /// only) `$event.path` into the canonical event.
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    /// A constant.
    #[serde(default, rename = "const")]
    pub constant: Option<toml::Value>,
    /// A path to repeated elements or an array; `fields` maps each item.
    #[serde(default)]
    pub each: Option<Spanned<String>>,
    /// The fields of each item, relative to the item.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, Spanned<RuleSpec>>>,
    /// A regular expression that picks one value: group 1 of each match if any, else the match.
    /// Items that do not match are dropped; none matching, or several different results, fail.
    #[serde(default)]
    pub regex: Option<Spanned<String>>,
    /// `upper`, `lower` or `title`.
    #[serde(default)]
    pub case: Option<Spanned<String>>,
    /// Split a string into a list on this separator.
    #[serde(default)]
    pub split: Option<String>,
    /// Join a list into a string with this separator.
    #[serde(default)]
    pub join: Option<String>,
    /// Look the value up in a code list.
    #[serde(default)]
    pub codelist: Option<Spanned<String>>,
    /// Read a date: `iso`, `day-of-year`, or a pattern of `dd`, `mm` and `yyyy`.
    #[serde(default)]
    pub date: Option<Spanned<String>>,
    /// For `date = "day-of-year"`: where the reference date (or date-time) is read.
    #[serde(default)]
    pub reference: Option<Spanned<String>>,
    /// Check a date-time: `rfc3339`.
    #[serde(default)]
    pub datetime: Option<Spanned<String>>,
    /// Convert: `string`, `integer`, `number` or `boolean`.
    #[serde(default, rename = "type")]
    pub convert: Option<Spanned<String>>,
    /// The value when the source is absent.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// Whether the source may be absent (the field is then left out).
    #[serde(default)]
    pub optional: bool,
}

/// An embedded document to decode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSpec {
    /// The name the decoded document is referred to by (`$name.field`).
    pub name: Spanned<String>,
    /// Where the encoded text is read.
    pub from: Spanned<String>,
    /// `bcbp` or `mrz`.
    pub decoder: Spanned<String>,
    /// Whether the document may be absent.
    #[serde(default)]
    pub optional: bool,
}

/// A consistency check: when both sides are present and differ, an anomaly is attached.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// The anomaly code.
    pub anomaly: Spanned<String>,
    /// The anomaly's message; it must not contain personal data.
    pub message: String,
    /// One side.
    pub left: RuleSpec,
    /// The other side.
    pub right: RuleSpec,
    /// `exact` (the default) or `name` (accents, case and punctuation ignored).
    #[serde(default)]
    pub compare: Option<Spanned<String>>,
    /// With `compare = "name"`: a rule whose value, when `true`, says the left side may have
    /// been cut to fit a field (an MRZ's names: `$mrz.surname_truncated`,
    /// `$mrz.given_names_truncated`).
    #[serde(default)]
    pub truncated: Option<Spanned<RuleSpec>>,
}

/// A message kind that is recognised and deliberately not used.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreSpec {
    /// The kind's name.
    pub name: Spanned<String>,
    /// How it is recognised.
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Why it is ignored, for the audit trail.
    pub reason: String,
    /// A path whose value names the kind in the result (e.g. `eventType`).
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
}

/// One outbound message kind: canonical to native.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    /// The kind's name.
    pub name: Spanned<String>,
    /// The canonical type it is made from, without the `ma.rva.` prefix.
    #[serde(rename = "type")]
    pub event_type: Spanned<String>,
    /// The native document with `{{ … }}` placeholders.
    pub template: Spanned<String>,
}
