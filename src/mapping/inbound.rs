//! Inbound mappings: recognising a native message's kind and turning it into a canonical event.
//!
//! This module owns message-kind matching, embedded-document decoding (BCBP, MRZ), field rules
//! placed at their canonical paths, consistency checks that raise anomalies, and the lint that
//! holds each inbound mapping against the canonical schema of its type. It does not validate
//! the finished event (the caller does, with the compiled schemas) and knows no partner.

use super::diagnostics::Issue;
use super::path::XmlPath;
use super::rule::{
    CheckSide, CompileScope, EVENT, EvalScope, Native, NativePath, Rule, RuleError, Shape, Source,
    as_text, names_cut_from, same_names, text_of,
};
use super::spec::{CheckSpec, DecodeSpec, Format, IgnoreSpec, InboundSpec, MatchSpec, RuleSpec};
use super::xml::XmlDocument;
use super::{bcbp, mrz};
use crate::canonical::TYPE_PREFIX;
use crate::canonical::schema::{FieldShape, ObjectShape, SCHEMA_BASE};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use toml::Spanned;

/// How a message kind is recognised.
#[derive(Debug, Clone)]
pub struct Matcher {
    root: Option<(Option<String>, String)>,
    /// (the path as written, the path, the values accepted there).
    fields: Vec<(String, NativePath, Vec<String>)>,
    /// (the path as written, the path).
    present: Vec<(String, NativePath)>,
}

/// How a matcher compares a value with the values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Equal once surrounding white space is removed (XML values are trimmed when read).
    Trimmed,
    /// Equal once surrounding white space is removed and case is ignored.
    AnyCase,
}

impl Compare {
    fn accepts(self, value: &Value, expected: &[String]) -> bool {
        let Some(text) = text_of(value) else {
            return false;
        };
        let text = text.trim();
        match self {
            Compare::Trimmed => expected.iter().any(|e| e == text),
            Compare::AnyCase => {
                let folded = text.to_lowercase();
                expected.iter().any(|e| e.to_lowercase() == folded)
            }
        }
    }
}

impl Matcher {
    /// Compiles a `match` table.
    pub fn compile(
        spec: &MatchSpec,
        scope: &CompileScope<'_>,
        span: std::ops::Range<usize>,
    ) -> Result<Self, Vec<Issue>> {
        let mut issues = Vec::new();
        let root = match (&spec.root, scope.format) {
            (Some(root), Format::Xml) => match XmlPath::compile(root.get_ref(), scope.namespaces) {
                Ok(_) => {
                    let (prefix, local) = match root.get_ref().split_once(':') {
                        Some((prefix, local)) => (Some(prefix), local),
                        None => (None, root.get_ref().as_str()),
                    };
                    let namespace = match (&spec.namespace, prefix) {
                        (Some(namespace), _) => Some(namespace.get_ref().clone()),
                        (None, Some(prefix)) => scope.namespaces.get(prefix).cloned(),
                        (None, None) => scope.namespaces.get("").cloned(),
                    };
                    Some((namespace, local.to_owned()))
                }
                Err(error) => {
                    issues.push(Issue::at(root.span(), error.to_string()));
                    None
                }
            },
            (Some(root), _) => {
                issues.push(Issue::at(
                    root.span(),
                    "`root` only applies to XML; match JSON with `fields`".into(),
                ));
                None
            }
            (None, _) => None,
        };
        if spec.namespace.is_some() && spec.root.is_none() {
            issues.push(Issue::at(
                span.clone(),
                "`namespace` goes with `root`".into(),
            ));
        }
        let mut fields = Vec::new();
        for (path, value) in &spec.fields {
            let located = Spanned::new(value.span(), path.clone());
            if value.get_ref().values().is_empty() {
                issues.push(Issue::at(
                    value.span(),
                    format!("{path}: an empty list of values matches no message"),
                ));
                continue;
            }
            match scope.native(&located) {
                Ok(compiled) => fields.push((path.clone(), compiled, value.get_ref().values())),
                Err(issue) => issues.push(issue),
            }
        }
        let mut present = Vec::new();
        for path in &spec.present {
            match scope.native(path) {
                Ok(compiled) => present.push((path.get_ref().clone(), compiled)),
                Err(issue) => issues.push(issue),
            }
        }
        if root.is_none() && fields.is_empty() && present.is_empty() && issues.is_empty() {
            issues.push(Issue::at(
                span,
                "a `match` needs a `root`, `fields` or `present`".into(),
            ));
        }
        if issues.is_empty() {
            Ok(Self {
                root,
                fields,
                present,
            })
        } else {
            Err(issues)
        }
    }

    /// True when every message that `later` matches, this matcher matches too: a kind tried
    /// after this one with such a matcher could never be chosen. Paths are compared as written,
    /// so two spellings of one path are taken for two paths (the check errs on the side of
    /// saying nothing).
    pub fn matches_all_of(&self, later: &Matcher) -> bool {
        let root = self.root.is_none() || self.root == later.root;
        let fields = self.fields.iter().all(|(label, _, accepted)| {
            later.fields.iter().any(|(other, _, values)| {
                other == label && values.iter().all(|value| accepted.contains(value))
            })
        });
        let present = self.present.iter().all(|(label, _)| {
            later.present.iter().any(|(other, _)| other == label)
                || later.fields.iter().any(|(other, _, _)| other == label)
        });
        root && fields && present
    }

    /// True when the message is of this kind. Values are compared without their surrounding
    /// white space, and case matters. An error when a path it looks at gives more values than a
    /// path may.
    pub fn matches(&self, native: Native<'_>) -> Result<bool, RuleError> {
        self.test(native, Compare::Trimmed)
    }

    /// When the message is not of this kind, but would be if case were ignored: the path (as
    /// the mapping writes it) of the first value that differs only in case, and the values
    /// accepted there. Such a message is refused rather than ignored, so that a partner's
    /// `passenger_boarded` is not taken for an event outside the programme.
    pub fn near_miss(&self, native: Native<'_>) -> Result<Option<(&str, &[String])>, RuleError> {
        if self.test(native, Compare::Trimmed)? || !self.test(native, Compare::AnyCase)? {
            return Ok(None);
        }
        let values = Self::values_at(native);
        for (label, path, expected) in &self.fields {
            if !values(label, path)?
                .iter()
                .any(|value| Compare::Trimmed.accepts(value, expected))
            {
                return Ok(Some((label.as_str(), expected.as_slice())));
            }
        }
        Ok(None)
    }

    /// What the message has where this kind looks: its root element (XML), and the values of
    /// the fields it matches on, for a sender told that its message is of no known kind. The
    /// values are the sender's own, sent back to it only.
    pub fn seen(&self, native: Native<'_>, said: &mut Vec<String>) {
        if self.root.is_some()
            && let Native::Xml(document, _) = native
        {
            let name = &document.root().name;
            let local = shown_name(&name.local);
            let root = match &name.namespace {
                Some(namespace) => format!(
                    "the root element is {local} in namespace {}",
                    shown_name(namespace)
                ),
                None => format!("the root element is {local} (in no namespace)"),
            };
            if !said.contains(&root) {
                said.push(root);
            }
        }
        let values = Self::values_at(native);
        for (label, path, _) in &self.fields {
            if said.iter().any(|s| s.starts_with(&format!("{label} "))) {
                continue;
            }
            said.push(match values(label, path) {
                Err(error) => error.message,
                Ok(found) => match found.as_slice() {
                    [] => format!("{label} is missing"),
                    [one] => format!("{label} is {}", shown(one)),
                    many if many.len() > SHOWN_VALUES => format!(
                        "{label} is {} and {} more",
                        many[..SHOWN_VALUES]
                            .iter()
                            .map(shown)
                            .collect::<Vec<_>>()
                            .join(", "),
                        many.len() - SHOWN_VALUES
                    ),
                    many => format!(
                        "{label} is {}",
                        many.iter().map(shown).collect::<Vec<_>>().join(", ")
                    ),
                },
            });
        }
    }

    /// The values of a field the kinds are told apart by; an error when the path gives more
    /// than a path may (no kind matches such a message).
    fn values_at(
        native: Native<'_>,
    ) -> impl Fn(&str, &NativePath) -> Result<Vec<Value>, RuleError> + '_ {
        move |label: &str, path: &NativePath| {
            let named = BTreeMap::new();
            let scope = EvalScope {
                native,
                named: &named,
                event_data: None,
            };
            Source::Native(path.clone()).values(label, &scope)
        }
    }

    /// Whether the message is of this kind; an error when a path it looks at gives more
    /// values than a path may (the message is refused rather than taken for no kind, and
    /// perhaps ignored).
    fn test(&self, native: Native<'_>, compare: Compare) -> Result<bool, RuleError> {
        if let Some((namespace, local)) = &self.root {
            match native {
                Native::Xml(document, _)
                    if document.root().name.is(namespace.as_deref(), local) => {}
                _ => return Ok(false),
            }
        }
        let values = Self::values_at(native);
        for (label, path, expected) in &self.fields {
            if !values(label, path)?
                .iter()
                .any(|value| compare.accepts(value, expected))
            {
                return Ok(false);
            }
        }
        for (label, path) in &self.present {
            if values(label, path)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// How many of a field's values a sender is told, when its message matched no kind.
const SHOWN_VALUES: usize = 5;

/// How many characters of a value a sender is told, when its message matched no kind.
const SHOWN_CHARACTERS: usize = 60;

/// A value as a sender is told it was read: text quoted, at most 60 characters of it. An
/// object or a list is named by its shape only: it may hold anything the sender wrote
/// (names, document numbers), and the answer must not quote it back.
fn shown(value: &Value) -> String {
    let text = match value {
        Value::Object(_) => return "an object".to_owned(),
        Value::Array(_) => return "a list".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if value.is_string() {
        let cut = text.chars().count() > SHOWN_CHARACTERS;
        let kept: String = text.chars().take(SHOWN_CHARACTERS).collect();
        if cut {
            format!("{kept:?}…")
        } else {
            format!("{kept:?}")
        }
    } else {
        shown_name(&text)
    }
}

/// A name or number as a sender is told it: at most 60 characters of it, with what cannot be
/// printed (controls, bidirectional overrides) escaped.
fn shown_name(text: &str) -> String {
    crate::error_text::quoted_cut(text, SHOWN_CHARACTERS)
}

/// An embedded document decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Bcbp,
    Mrz,
}

/// The shape of a decoded MRZ (`$mrz.…`), as [`mrz_document`] writes it.
static MRZ_SHAPE: LazyLock<ObjectShape> = LazyLock::new(|| {
    document_shape(vec![
        ("format", FieldShape::Scalar),
        ("document_code", FieldShape::Scalar),
        ("issuing_state", FieldShape::Scalar),
        ("surname", FieldShape::Scalar),
        ("given_names", texts()),
        ("given_names_truncated", FieldShape::Scalar),
        ("surname_truncated", FieldShape::Scalar),
        ("document_number", FieldShape::Scalar),
        ("nationality", FieldShape::Scalar),
        ("birth_date", FieldShape::Scalar),
        ("birth_date_iso", FieldShape::Scalar),
        ("sex", FieldShape::Scalar),
        ("expiry_date", FieldShape::Scalar),
        ("expiry_date_iso", FieldShape::Scalar),
        ("optional_data", FieldShape::Scalar),
        ("checks", objects(&["field", "valid"])),
        ("valid", FieldShape::Scalar),
        ("lines", texts()),
    ])
});

/// The shape of a decoded boarding pass (`$bcbp.…`), as [`bcbp::BoardingPass`] serialises.
static BCBP_SHAPE: LazyLock<ObjectShape> = LazyLock::new(|| {
    document_shape(vec![
        ("legs_count", FieldShape::Scalar),
        ("passenger_name", FieldShape::Scalar),
        ("surname", FieldShape::Scalar),
        ("given_names", FieldShape::Scalar),
        ("electronic_ticket", FieldShape::Scalar),
        (
            "legs",
            objects(&[
                "pnr",
                "from",
                "to",
                "carrier",
                "flight_number",
                "day_of_year",
                "compartment",
                "seat",
                "sequence",
                "passenger_status",
            ]),
        ),
    ])
});

fn document_shape(fields: Vec<(&str, FieldShape)>) -> ObjectShape {
    ObjectShape {
        properties: fields
            .into_iter()
            .map(|(name, shape)| (name.to_owned(), shape))
            .collect(),
        required: Default::default(),
    }
}

fn texts() -> FieldShape {
    FieldShape::List(Box::new(FieldShape::Scalar))
}

fn objects(names: &[&str]) -> FieldShape {
    let fields = names
        .iter()
        .map(|name| (*name, FieldShape::Scalar))
        .collect();
    FieldShape::List(Box::new(FieldShape::Object(document_shape(fields))))
}

impl Decoder {
    /// The decoder's name, as mappings write it and anomaly codes begin.
    fn name(self) -> &'static str {
        match self {
            Decoder::Bcbp => "bcbp",
            Decoder::Mrz => "mrz",
        }
    }

    /// The shape of the documents this decoder makes.
    fn shape(self) -> &'static ObjectShape {
        match self {
            Decoder::Bcbp => &BCBP_SHAPE,
            Decoder::Mrz => &MRZ_SHAPE,
        }
    }
}

#[derive(Debug, Clone)]
struct DecodeStep {
    name: String,
    source: Source,
    label: String,
    decoder: Decoder,
    optional: bool,
}

#[derive(Debug, Clone)]
struct Check {
    anomaly: String,
    message: String,
    left: Rule,
    right: Rule,
    by_name: bool,
    /// With `by_name`: when this rule gives `true`, the left side may be the right side cut
    /// short ([`names_cut_from`]).
    truncated: Option<Rule>,
    /// Where the anomaly points: the event field compared (a JSON Pointer) when a side reads
    /// the event, else the first side's reference.
    path: String,
}

/// The envelope attributes a mapping sets the same way on every event.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) event_type: String,
    pub(crate) dataschema: String,
    /// `<partner>/<name>`; the loader prefixes the partner.
    pub(crate) mapping_id: String,
    /// The attributes every event of this kind has, built once by the loader and copied for
    /// each message.
    pub(crate) constant: Map<String, Value>,
}

/// One compiled inbound message kind.
#[derive(Debug, Clone)]
pub struct InboundMapping {
    /// The kind's name.
    pub name: String,
    /// The canonical type, without prefix.
    pub event_type: String,
    /// The envelope strings, computed once: `type`, `dataschema` and `mappingid`.
    pub(crate) envelope: Envelope,
    /// How the kind is recognised.
    pub matcher: Matcher,
    id: Rule,
    time: Option<Rule>,
    decode: Vec<DecodeStep>,
    data: Vec<(Vec<String>, Rule)>,
    checks: Vec<Check>,
}

/// A message kind that is recognised and deliberately not used.
#[derive(Debug, Clone)]
pub struct IgnoreRule {
    /// The kind's name.
    pub name: String,
    /// How it is recognised.
    pub matcher: Matcher,
    /// Why it is ignored.
    pub reason: String,
    kind: Option<NativePath>,
}

impl IgnoreRule {
    /// Compiles an `[[ignore]]` table.
    pub fn compile(
        spec: &Spanned<IgnoreSpec>,
        scope: &CompileScope<'_>,
    ) -> Result<Self, Vec<Issue>> {
        let body = spec.get_ref();
        let matcher = Matcher::compile(&body.matcher, scope, spec.span())?;
        let kind = match &body.kind {
            Some(path) => Some(scope.native(path).map_err(|e| vec![e])?),
            None => None,
        };
        Ok(Self {
            name: body.name.get_ref().clone(),
            matcher,
            reason: body.reason.clone(),
            kind,
        })
    }

    /// The value naming the ignored message's kind (e.g. its `eventType`), if configured.
    pub fn kind_of(&self, native: Native<'_>) -> Option<String> {
        let named = BTreeMap::new();
        let scope = EvalScope {
            native,
            named: &named,
            event_data: None,
        };
        let values = Source::Native(self.kind.clone()?)
            .values("kind", &scope)
            .ok()?;
        values
            .first()
            .and_then(as_text)
            .map(|text| text.trim().to_owned())
    }
}

/// Why a message failed its mapping: the path and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldFailure {
    /// The canonical field, or `id`/`time`, being produced.
    pub field: String,
    /// What went wrong, naming the native path.
    pub message: String,
}

impl InboundMapping {
    /// Compiles an `[[inbound]]` table against the data shape of its canonical type.
    pub fn compile(
        spec: &Spanned<InboundSpec>,
        scope: &CompileScope<'_>,
        shape: &ObjectShape,
    ) -> Result<Self, Vec<Issue>> {
        let body = spec.get_ref();
        let mut issues = Vec::new();
        let matcher = Matcher::compile(&body.matcher, scope, spec.span())
            .map_err(|e| issues.extend(e))
            .ok();
        let mut decoded_names = Vec::new();
        let mut decode = Vec::new();
        for step in &body.decode {
            let step_scope = CompileScope {
                decoded: &decoded_names,
                ..*scope
            };
            match compile_decode(step, &step_scope) {
                Ok(compiled) => {
                    decoded_names.push((compiled.name.clone(), compiled.decoder.shape()));
                    decode.push(compiled);
                }
                Err(issue) => issues.push(issue),
            }
        }
        let scope = CompileScope {
            decoded: &decoded_names,
            ..*scope
        };
        let scalar = |_: &str| Ok(Shape::One);
        let id = scope
            .rule(&body.id, Shape::One, &scalar)
            .map_err(|e| issues.extend(e))
            .ok();
        let time = match &body.time {
            Some(time) => scope
                .rule(time, Shape::One, &scalar)
                .map_err(|e| issues.extend(e))
                .ok(),
            None => None,
        };
        let mut data = Vec::new();
        for (target, rule) in &body.data {
            match shape.find(target) {
                None => issues.push(Issue::at(
                    rule.span(),
                    format!(
                        "{target} is not a field of canonical {} data",
                        body.event_type.get_ref()
                    ),
                )),
                Some(field_shape) => {
                    let rule_shape = if matches!(field_shape, FieldShape::List(_)) {
                        Shape::List
                    } else {
                        Shape::One
                    };
                    let item_shape = |name: &str| match field_shape {
                        FieldShape::List(item) => match item.as_ref() {
                            FieldShape::Object(object) => match object.properties.get(name) {
                                Some(FieldShape::List(_)) => Ok(Shape::List),
                                Some(_) => Ok(Shape::One),
                                None => {
                                    Err(format!("{name} is not a field of the items of {target}"))
                                }
                            },
                            _ => Err(format!("the items of {target} have no fields")),
                        },
                        _ => Err(format!("{target} is not a list")),
                    };
                    match scope.rule(rule, rule_shape, &item_shape) {
                        Ok(compiled) => {
                            data.push((target.split('.').map(str::to_owned).collect(), compiled))
                        }
                        Err(more) => issues.extend(more),
                    }
                    if let (FieldShape::List(item), Some(fields)) =
                        (field_shape, &rule.get_ref().fields)
                        && let FieldShape::Object(object) = item.as_ref()
                    {
                        for required in object.required.iter().filter(|r| !fields.contains_key(*r))
                        {
                            issues.push(Issue::at(
                                rule.span(),
                                format!("the items of {target} need {required}, which the schema requires"),
                            ));
                        }
                    }
                }
            }
        }
        issues.extend(missing_required(shape, "", &body.data, spec.span(), true));
        if body.data.contains_key("anomalies") {
            issues.push(Issue::at(
                spec.span(),
                "anomalies are raised by [[inbound.check]], not mapped".into(),
            ));
        }
        let event_scope = CompileScope {
            event_data: Some(shape),
            ..scope
        };
        let mut checks = Vec::new();
        for check in &body.check {
            match compile_check(check, &event_scope) {
                Ok(compiled) => checks.push(compiled),
                Err(more) => issues.extend(more),
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Self {
            name: body.name.get_ref().clone(),
            event_type: body.event_type.get_ref().clone(),
            envelope: Envelope {
                event_type: format!("{TYPE_PREFIX}{}", body.event_type.get_ref()),
                dataschema: format!(
                    "{SCHEMA_BASE}events/{}.schema.json",
                    body.event_type.get_ref()
                ),
                mapping_id: body.name.get_ref().clone(),
                constant: Map::new(),
            },
            matcher: matcher.expect("no issues"),
            id: id.expect("no issues"),
            time,
            decode,
            data,
            checks,
        })
    }

    /// The native path (as the mapping writes it) that a field of the mapped event was read
    /// from, for a schema violation at JSON Pointer `pointer` (`/id`, `/subject`,
    /// `/data/holder/birth_date`, `/data/segments/0/date`): the rule of that field, or of the
    /// nearest field that holds it. `None` for what no rule of this kind wrote.
    pub fn source_of(&self, pointer: &str) -> Option<&str> {
        let mut segments = pointer.split('/').skip(1);
        match segments.next()? {
            "id" => Some(self.id.label.as_str()),
            "time" => self.time.as_ref().map(|rule| rule.label.as_str()),
            "subject" => self.data_rule(&["case_id".to_owned()]),
            "data" => {
                let path: Vec<String> = segments
                    .filter(|segment| segment.parse::<usize>().is_err())
                    .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
                    .collect();
                (1..=path.len())
                    .rev()
                    .find_map(|len| self.data_rule(&path[..len]))
            }
            _ => None,
        }
    }

    fn data_rule(&self, path: &[String]) -> Option<&str> {
        self.data
            .iter()
            .find(|(target, _)| target.as_slice() == path)
            .map(|(_, rule)| rule.label.as_str())
    }

    /// Builds the event's `id`, `time` and `data` (with anomalies) from a native message.
    pub fn apply(&self, native: Native<'_>) -> Result<MappedParts, FieldFailure> {
        let mut named = BTreeMap::new();
        let mut anomalies = Vec::new();
        for step in &self.decode {
            let scope = EvalScope {
                native,
                named: &named,
                event_data: None,
            };
            let values = match step.source.values(&step.label, &scope) {
                Ok(values) => values,
                // A document in more pieces than a path may give cannot be read: like any
                // unreadable document, an anomaly, not a refusal.
                Err(error) if error.over_limit => {
                    anomalies.push(json!({
                        "code": format!("{}.unreadable", step.decoder.name()),
                        "message": error.message,
                        "path": step.label,
                    }));
                    continue;
                }
                Err(error) => {
                    return Err(FieldFailure {
                        field: format!("${}", step.name),
                        message: error.message,
                    });
                }
            };
            let texts: Vec<&str> = values
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| !t.trim().is_empty())
                .collect();
            if texts.is_empty() {
                if !step.optional {
                    return Err(FieldFailure {
                        field: format!("${}", step.name),
                        message: format!("{} is missing", step.label),
                    });
                }
                continue;
            }
            match run_decoder(step, &texts) {
                Ok((document, mut found)) => {
                    named.insert(step.name.clone(), document);
                    anomalies.append(&mut found);
                }
                Err(anomaly) => anomalies.push(anomaly),
            }
        }
        let scope = EvalScope {
            native,
            named: &named,
            event_data: None,
        };
        let failure = |field: &'static str| {
            move |e: super::rule::RuleError| FieldFailure {
                field: field.to_owned(),
                message: e.message,
            }
        };
        let id = self.id.eval(&scope).map_err(failure("id"))?;
        let id = id.as_ref().and_then(as_text).unwrap_or_default();
        let time = match &self.time {
            Some(rule) => rule
                .eval(&scope)
                .map_err(failure("time"))?
                .as_ref()
                .and_then(as_text),
            None => None,
        };
        let mut data = Map::new();
        for (target, rule) in &self.data {
            if let Some(value) = rule.eval(&scope).map_err(|e| FieldFailure {
                field: target.join("."),
                message: e.message,
            })? {
                insert_at(&mut data, target, value);
            }
        }
        if !self.checks.is_empty() {
            let scope = EvalScope {
                native,
                named: &named,
                event_data: Some(&data),
            };
            for check in &self.checks {
                let compared = |rule: &Rule| {
                    rule.check_values(&scope).map_err(|e| FieldFailure {
                        field: check.anomaly.clone(),
                        message: e.message,
                    })
                };
                let left = compared(&check.left)?;
                let right = compared(&check.right)?;
                let (left_values, right_values) = (left.values(), right.values());
                let unreadable =
                    matches!(left, CheckSide::Unreadable) || matches!(right, CheckSide::Unreadable);
                // A side absent skips the check; a side unreadable beside a value (or beside
                // another unreadable side) cannot agree with it.
                let agree = if !left_values.is_empty() && !right_values.is_empty() {
                    Some(if check.by_name {
                        // A side that may be cut short is tried as such only when the whole
                        // names differ.
                        same_names(left_values, right_values)
                            || (match &check.truncated {
                                Some(rule) => is_true(compared(rule)?.values()),
                                None => false,
                            } && names_cut_from(left_values, right_values))
                    } else {
                        left_values == right_values
                    })
                } else if unreadable && (!left_values.is_empty() || !right_values.is_empty())
                    || matches!(
                        (&left, &right),
                        (CheckSide::Unreadable, CheckSide::Unreadable)
                    )
                {
                    Some(false)
                } else {
                    None
                };
                if agree == Some(false) {
                    let message = if unreadable {
                        format!("{}: a value compared could not be read", check.message)
                    } else {
                        check.message.clone()
                    };
                    anomalies.push(json!({
                        "code": check.anomaly,
                        "message": message,
                        "path": check.path,
                    }));
                }
            }
        }
        if !anomalies.is_empty() {
            data.insert("anomalies".into(), Value::Array(anomalies));
        }
        Ok(MappedParts { id, time, data })
    }

    /// Names a place in the events this kind makes, given as the path from the top of the
    /// event (`["data", "holder", "given_names", "1"]`): the canonical field (dotted, from the
    /// top of `data`, or `id`, `time`), and the native path its rule reads, as the mapping
    /// writes it. A place no rule fills (an anomaly) is named by its canonical path only.
    pub fn locate(&self, path: &[String]) -> (String, String) {
        let dotted = |steps: &[String]| steps.join(".");
        match path {
            [first] if first == "id" => ("id".into(), self.id.label.clone()),
            [first] if first == "time" => match &self.time {
                Some(rule) => ("time".into(), rule.label.clone()),
                None => ("time".into(), "time".into()),
            },
            [first, rest @ ..] if first == "data" => {
                let found = self
                    .data
                    .iter()
                    .find(|(target, _)| rest.starts_with(target));
                match found {
                    Some((target, rule)) => {
                        let label = match (&rule.source, rest.get(target.len() + 1)) {
                            (Source::Each(_, fields), Some(name)) => {
                                fields.iter().find(|(field, _)| field == name).map_or_else(
                                    || rule.label.clone(),
                                    |(_, field)| format!("{}/{}", rule.label, field.label),
                                )
                            }
                            _ => rule.label.clone(),
                        };
                        (dotted(target), label)
                    }
                    None => (dotted(rest), format!("data.{}", dotted(rest))),
                }
            }
            other => (dotted(other), dotted(other)),
        }
    }
}

/// What an inbound mapping produces before the envelope is put around it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedParts {
    /// The CloudEvents `id`.
    pub id: String,
    /// The CloudEvents `time`, if the message has one.
    pub time: Option<String>,
    /// The event data, anomalies included.
    pub data: Map<String, Value>,
}

fn insert_at(data: &mut Map<String, Value>, target: &[String], value: Value) {
    let Some((last, parents)) = target.split_last() else {
        return;
    };
    let mut object = data;
    for parent in parents {
        // Look up before inserting, so that the key is only copied the first time.
        if !object.get(parent).is_some_and(Value::is_object) {
            object.insert(parent.clone(), Value::Object(Map::new()));
        }
        object = object
            .get_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("made an object above");
    }
    object.insert(last.clone(), value);
}

/// Finds the fields the schema requires that no rule produces (or that a rule may leave out).
fn missing_required(
    shape: &ObjectShape,
    prefix: &str,
    data: &BTreeMap<String, Spanned<RuleSpec>>,
    span: std::ops::Range<usize>,
    parent_required: bool,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (name, field) in &shape.properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let required = shape.required.contains(name);
        let sub_prefix = format!("{path}.");
        let mapped_below = data.keys().any(|key| key.starts_with(&sub_prefix));
        match data.get(&path) {
            Some(rule)
                if required
                    && parent_required
                    && rule.get_ref().optional
                    && rule.get_ref().default.is_none() =>
            {
                issues.push(Issue::at(rule.span(), format!("{path} is required by the schema, so it cannot be optional without a default")));
            }
            Some(_) => {}
            None if mapped_below => {
                if let FieldShape::Object(object) = field {
                    issues.extend(missing_required(
                        object,
                        &path,
                        data,
                        span.clone(),
                        parent_required && required,
                    ));
                }
            }
            None if required && name != "anomalies" => {
                issues.push(Issue::at(
                    span.clone(),
                    format!("nothing produces {path}, which the schema requires"),
                ));
            }
            None => {}
        }
    }
    issues
}

fn compile_decode(
    spec: &Spanned<DecodeSpec>,
    scope: &CompileScope<'_>,
) -> Result<DecodeStep, Issue> {
    let body = spec.get_ref();
    let decoder = match body.decoder.get_ref().as_str() {
        "bcbp" => Decoder::Bcbp,
        "mrz" => Decoder::Mrz,
        other => {
            return Err(Issue::at(
                body.decoder.span(),
                format!("decoder {other:?} must be bcbp or mrz"),
            ));
        }
    };
    let name = body.name.get_ref();
    if name == EVENT
        || name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Issue::at(
            body.name.span(),
            format!("{name:?} cannot name a decoded document"),
        ));
    }
    Ok(DecodeStep {
        name: name.clone(),
        source: scope.source(&body.from)?,
        label: body.from.get_ref().clone(),
        decoder,
        optional: body.optional,
    })
}

fn compile_check(spec: &Spanned<CheckSpec>, scope: &CompileScope<'_>) -> Result<Check, Vec<Issue>> {
    let body = spec.get_ref();
    if !body
        .anomaly
        .get_ref()
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
    {
        return Err(vec![Issue::at(
            body.anomaly.span(),
            "an anomaly code is lower case, digits, `.` and `_`".into(),
        )]);
    }
    let by_name = match body.compare.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("exact") => false,
        Some("name") => true,
        Some(other) => {
            let span = body.compare.as_ref().map_or(spec.span(), |c| c.span());
            return Err(vec![Issue::at(
                span,
                format!("compare {other:?} must be exact or name"),
            )]);
        }
    };
    let side = |rule: &RuleSpec| {
        let rule = RuleSpec {
            optional: true,
            ..rule.clone()
        };
        scope.rule(&Spanned::new(spec.span(), rule), Shape::List, &|_| {
            Err("checks cannot use `each`".into())
        })
    };
    let left = side(&body.left)?;
    let right = side(&body.right)?;
    let truncated = match &body.truncated {
        None => None,
        Some(rule) if by_name => Some(side(rule.get_ref())?),
        Some(rule) => {
            return Err(vec![Issue::at(
                rule.span(),
                "`truncated` applies to names: it needs compare = \"name\"".into(),
            )]);
        }
    };
    let event_prefix = format!("${EVENT}.");
    let path = [&left.label, &right.label]
        .into_iter()
        .find_map(|label| label.strip_prefix(&event_prefix))
        .map(|dotted| format!("/{}", dotted.replace('.', "/")))
        .unwrap_or_else(|| left.label.clone());
    Ok(Check {
        anomaly: body.anomaly.get_ref().clone(),
        message: body.message.clone(),
        left,
        right,
        by_name,
        truncated,
        path,
    })
}

/// Whether a rule's values are the one value `true`.
fn is_true(values: &[std::borrow::Cow<'_, Value>]) -> bool {
    matches!(values, [value] if **value == Value::Bool(true))
}

/// Runs a decoder; a document that cannot be read becomes an anomaly, not a failure.
fn run_decoder(step: &DecodeStep, texts: &[&str]) -> Result<(Value, Vec<Value>), Value> {
    let unreadable = |decoder: &str, error: String| json!({ "code": format!("{decoder}.unreadable"), "message": error, "path": step.label });
    match step.decoder {
        Decoder::Bcbp => {
            let [text] = texts else {
                return Err(unreadable(
                    "bcbp",
                    format!("expected one boarding pass, found {}", texts.len()),
                ));
            };
            let pass = bcbp::decode(text).map_err(|error| unreadable("bcbp", error.to_string()))?;
            Ok((
                serde_json::to_value(pass).unwrap_or(Value::Null),
                Vec::new(),
            ))
        }
        Decoder::Mrz => {
            let lines = texts;
            let zone = mrz::decode(lines).map_err(|error| unreadable("mrz", error.to_string()))?;
            let failed: Vec<&str> = zone
                .checks
                .iter()
                .filter(|check| !check.valid)
                .map(|check| check.field)
                .collect();
            let mut anomalies = Vec::new();
            if !failed.is_empty() {
                anomalies.push(json!({
                    "code": "mrz.check_digit",
                    "message": format!("MRZ check digits do not verify: {}", failed.join(", ")),
                    "path": step.label,
                }));
            }
            // Digits that are no calendar date (`980231`) leave `birth_date_iso` or
            // `expiry_date_iso` empty, which would skip the checks that compare them.
            let not_dates: Vec<&str> = [
                ("birth_date", zone.birth_date_iso.is_none()),
                ("expiry_date", zone.expiry_date_iso.is_none()),
            ]
            .into_iter()
            .filter_map(|(field, missing)| missing.then_some(field))
            .collect();
            if !not_dates.is_empty() {
                anomalies.push(json!({
                    "code": "mrz.invalid_date",
                    "message": format!("MRZ dates that are not calendar dates: {}", not_dates.join(", ")),
                    "path": step.label,
                }));
            }
            let mut document = mrz_document(zone);
            // The lines as read, so that a mapping copies an MRZ only once it has decoded.
            document.insert(
                "lines".into(),
                lines
                    .iter()
                    .map(|line| Value::String(line.trim().to_owned()))
                    .collect(),
            );
            Ok((Value::Object(document), anomalies))
        }
    }
}

/// The decoded MRZ as the document mappings read (`$mrz.…`), its strings moved rather than
/// copied: this runs for every laissez-passer. The field names are those of [`mrz::Mrz`].
fn mrz_document(zone: mrz::Mrz) -> Map<String, Value> {
    let text = |value: String| Value::String(value);
    let optional = |value: Option<String>| value.map_or(Value::Null, Value::String);
    let checks = zone
        .checks
        .iter()
        .map(|check| json!({ "field": check.field, "valid": check.valid }))
        .collect();
    let format = match zone.format {
        mrz::MrzFormat::Td1 => "TD1",
        mrz::MrzFormat::Td3 => "TD3",
    };
    Map::from_iter([
        ("format".to_owned(), Value::String(format.to_owned())),
        ("document_code".to_owned(), text(zone.document_code)),
        ("issuing_state".to_owned(), text(zone.issuing_state)),
        ("surname".to_owned(), text(zone.surname)),
        (
            "given_names".to_owned(),
            zone.given_names.into_iter().map(Value::String).collect(),
        ),
        (
            "given_names_truncated".to_owned(),
            Value::Bool(zone.given_names_truncated),
        ),
        (
            "surname_truncated".to_owned(),
            Value::Bool(zone.surname_truncated),
        ),
        ("document_number".to_owned(), text(zone.document_number)),
        ("nationality".to_owned(), text(zone.nationality)),
        ("birth_date".to_owned(), text(zone.birth_date)),
        ("birth_date_iso".to_owned(), optional(zone.birth_date_iso)),
        ("sex".to_owned(), text(zone.sex)),
        ("expiry_date".to_owned(), text(zone.expiry_date)),
        ("expiry_date_iso".to_owned(), optional(zone.expiry_date_iso)),
        ("optional_data".to_owned(), text(zone.optional_data)),
        ("checks".to_owned(), Value::Array(checks)),
        ("valid".to_owned(), Value::Bool(zone.valid)),
    ])
}

/// Parses native bytes for matching and mapping.
pub enum NativeMessage {
    /// A parsed XML document.
    Xml(XmlDocument),
    /// A parsed JSON value.
    Json(Value),
}

impl NativeMessage {
    /// The view rules read.
    pub fn view(&self) -> Native<'_> {
        match self {
            NativeMessage::Xml(document) => Native::Xml(document, document.root()),
            NativeMessage::Json(value) => Native::Json(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_is_told_the_shape_of_an_object_or_a_list_and_at_most_60_characters() {
        let passenger = serde_json::json!({"surname": "DIOP", "passport": "A01234567"});
        assert_eq!(shown(&passenger), "an object");
        assert_eq!(shown(&serde_json::json!([passenger])), "a list");
        assert_eq!(shown(&serde_json::json!("BOARDED")), "\"BOARDED\"");
        assert_eq!(
            shown(&serde_json::json!("x".repeat(61))),
            format!("{:?}…", "x".repeat(60))
        );
        assert_eq!(shown(&serde_json::json!(12)), "12");
        assert_eq!(shown_name(&"n".repeat(70)), format!("{}…", "n".repeat(60)));
        assert_eq!(shown_name("urn:x\u{202e}y"), "urn:x\\u{202e}y");
    }

    #[test]
    fn the_mrz_document_has_the_decoders_own_fields() {
        let lines = [
            "PLSENDIOP<<MAMADOU<LAMINE<<<<<<<<<<<<<<<<<<<",
            "LP04172635SEN9803155M2612029<<<<<<<<<<<<<<<2",
        ];
        let zone = mrz::decode(&lines).unwrap();
        let expected = serde_json::to_value(&zone).unwrap();
        assert_eq!(Value::Object(mrz_document(zone)), expected);
    }

    /// The shape of a decoded document as it is: each list's shape is its first item's.
    fn shape_of(value: &Value) -> FieldShape {
        match value {
            Value::Object(map) => FieldShape::Object(ObjectShape {
                properties: map
                    .iter()
                    .map(|(name, value)| (name.clone(), shape_of(value)))
                    .collect(),
                required: Default::default(),
            }),
            Value::Array(items) => {
                FieldShape::List(Box::new(items.first().map_or(FieldShape::Scalar, shape_of)))
            }
            _ => FieldShape::Scalar,
        }
    }

    #[test]
    fn the_fields_lint_knows_are_those_the_decoders_write() {
        let step = |decoder| DecodeStep {
            name: "d".into(),
            source: Source::Const(Value::Null),
            label: "d".into(),
            decoder,
            optional: false,
        };
        let lines = [
            "PLSENDIOP<<MAMADOU<LAMINE<<<<<<<<<<<<<<<<<<<",
            "LP04172635SEN9803145M2612029<<<<<<<<<<<<<<<2",
        ];
        let (zone, _) = run_decoder(&step(Decoder::Mrz), &lines).unwrap();
        assert_eq!(shape_of(&zone), FieldShape::Object(MRZ_SHAPE.clone()));
        let pass = "M1DIOP/MAMADOU LAMINE EK7Q2XM CMNDSSAT 0505 324Y023C0112 100";
        let (pass, _) = run_decoder(&step(Decoder::Bcbp), &[pass]).unwrap();
        assert_eq!(shape_of(&pass), FieldShape::Object(BCBP_SHAPE.clone()));
    }
}
