//! Loading and linting a mappings folder.
//!
//! This module owns reading `<dir>/*.toml` (one file per partner), the shared code lists in
//! `<dir>/codelists/` and the need-to-know policy `<dir>/policies.toml`; compiling each file;
//! and reporting every problem with its file, line and a clear message. A folder with a single
//! lint error does not load: the gateway refuses to start on it.

use super::codelist::{
    COUNTRY, COUNTRY_ALPHA2, COUNTRY_DEMONYM_FR_F, CodeList, CodeListError, CountryLists,
    fold_clashes,
};
use super::diagnostics::{Diagnostic, Issue};
use super::inbound::Matcher;
use super::inbound::{IgnoreRule, InboundMapping};
use super::policy::{Policy, PolicyError};
use super::rule::CompileScope;
use super::spec::{Format, MappingFile};
use super::template::{Template, TemplateScope};
use super::xml::is_ncname;
use super::{DEFAULT_MAX_MESSAGE_BYTES, OutboundMapping, PartnerMapping};
use crate::canonical::schema::FieldShape;
use crate::canonical::{Catalogue, SchemaSet};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The shared files every mapping depends on, relative to the mappings folder. Their bytes are
/// part of every mapping's hash, because they change what a mapping produces.
const SHARED_FILES: [&str; 3] = [
    "codelists/countries.csv",
    "codelists/aliases.toml",
    "policies.toml",
];

/// Every partner's mapping, compiled, with the schemas they were linted against.
#[derive(Debug, Clone)]
pub struct MappingSet {
    partners: BTreeMap<String, PartnerMapping>,
    schemas: Arc<SchemaSet>,
    dir: PathBuf,
}

impl MappingSet {
    /// Loads and lints every mapping in a folder. On any problem, returns them all.
    pub fn load(dir: &Path) -> Result<Self, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let file_error = |name: &str, message: String| Diagnostic::file(&dir.join(name), message);
        let catalogue =
            Catalogue::embedded().map_err(|e| vec![file_error("catalogue.toml", e.to_string())])?;
        let schemas = Arc::new(
            SchemaSet::embedded(&catalogue)
                .map_err(|e| vec![file_error("schemas", e.to_string())])?,
        );
        if !dir.is_dir() {
            return Err(vec![Diagnostic::file(
                dir,
                format!(
                    "{}: the mappings folder holds the mapping files, codelists/ and \
                     policies.toml",
                    if dir.exists() {
                        "not a folder"
                    } else {
                        "no such folder"
                    }
                ),
            )]);
        }
        let mut shared = Vec::new();
        for name in SHARED_FILES {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => shared.push(bytes),
                Err(error) => diagnostics.push(file_error(
                    name,
                    format!("cannot read the shared file: {error}"),
                )),
            }
        }
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let aliases_text = text(&shared[1]);
        let countries = CountryLists::build(&text(&shared[0]), &aliases_text).map_err(|e| {
            let aliases = dir.join(SHARED_FILES[1]);
            vec![match e {
                CodeListError::Csv { line, message } => Diagnostic {
                    file: dir.join(SHARED_FILES[0]),
                    line,
                    column: 1,
                    message,
                },
                CodeListError::AliasesSyntax { message, span } => {
                    located(&aliases, &aliases_text, message, span)
                }
                CodeListError::Aliases(message) => located(&aliases, &aliases_text, message, None),
            }]
        })?;
        let policy_file = dir.join("policies.toml");
        let policy_text = text(&shared[2]);
        let policy = Arc::new(Policy::parse(&policy_text).map_err(|e| {
            vec![match e {
                PolicyError::Parse { message, span } => {
                    located(&policy_file, &policy_text, message, span)
                }
                other => located(&policy_file, &policy_text, other.to_string(), None),
            }]
        })?);
        let policy_issues = lint_policy(&policy, &catalogue, &schemas);
        if !policy_issues.is_empty() {
            return Err(policy_issues
                .into_iter()
                .map(|m| located(&policy_file, &policy_text, m, None))
                .collect());
        }
        let mut shared_codelists: HashMap<String, Arc<CodeList>> = HashMap::new();
        shared_codelists.insert(COUNTRY.into(), Arc::new(countries.any_to_alpha3));
        shared_codelists.insert(COUNTRY_ALPHA2.into(), Arc::new(countries.alpha3_to_alpha2));
        shared_codelists.insert(
            COUNTRY_DEMONYM_FR_F.into(),
            Arc::new(countries.alpha3_to_demonym_fr_f),
        );

        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension().is_some_and(|e| e == "toml")
                        && path.file_name().is_some_and(|n| n != "policies.toml")
                })
                .collect(),
            Err(error) => {
                return Err(vec![Diagnostic::file(
                    dir,
                    format!("cannot read the mappings folder: {error}"),
                )]);
            }
        };
        files.sort();
        if files.is_empty() {
            return Err(vec![Diagnostic::file(
                dir,
                "the folder has no mapping file (*.toml)".into(),
            )]);
        }
        let mut partners = BTreeMap::new();
        for file in files {
            let context = FileContext {
                catalogue: &catalogue,
                schemas: &schemas,
                policy: &policy,
                shared: &shared,
                shared_codelists: &shared_codelists,
            };
            match load_file(&file, &context) {
                Ok(mapping) => {
                    if partners.contains_key(&mapping.partner) {
                        diagnostics.push(Diagnostic::file(
                            &file,
                            format!("partner {} has another mapping file", mapping.partner),
                        ));
                    } else {
                        partners.insert(mapping.partner.clone(), mapping);
                    }
                }
                Err(mut found) => diagnostics.append(&mut found),
            }
        }
        if diagnostics.is_empty() {
            Ok(Self {
                partners,
                schemas,
                dir: dir.to_path_buf(),
            })
        } else {
            Err(diagnostics)
        }
    }

    /// A partner's mapping.
    pub fn partner(&self, partner: &str) -> Option<&PartnerMapping> {
        self.partners.get(partner)
    }

    /// Every partner's mapping, by id.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerMapping> {
        self.partners.values()
    }

    /// The compiled canonical schemas.
    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// The folder the mappings were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Every withhold or neutral pattern must name a field of at least one event type: a misspelt
/// pattern would otherwise withhold nothing, in silence. A neutral form given for a field that
/// takes listed values must replace one of them with another: a misspelt value would replace
/// nothing, and a neutral form outside the list would write events their recipients cannot
/// read.
fn lint_policy(policy: &Policy, catalogue: &Catalogue, schemas: &SchemaSet) -> Vec<String> {
    let shapes: Vec<(&str, FieldShape)> = catalogue
        .names()
        .filter_map(|name| Some((name, FieldShape::Object(schemas.data_shape(name)?.clone()))))
        .collect();
    let mut issues: Vec<String> = policy
        .patterns()
        .filter(|(_, steps)| {
            !shapes
                .iter()
                .any(|(_, shape)| !fields_at(shape, steps).is_empty())
        })
        .map(|(role, steps)| {
            format!(
                "role {role}: {:?} is not a field of any event type's data",
                steps.join(".")
            )
        })
        .collect();
    for (role, steps, values) in policy.neutral_forms() {
        let path = steps.join(".");
        let fields: Vec<(&str, &FieldShape)> = shapes
            .iter()
            .flat_map(|(event_type, shape)| {
                fields_at(shape, steps)
                    .into_iter()
                    .map(move |field| (*event_type, field))
            })
            .collect();
        for (value, neutral) in values {
            // Where the field takes any value, nothing can be checked.
            let open = fields
                .iter()
                .any(|(_, field)| !matches!(field, FieldShape::Choice(_)));
            let taken_by: Vec<(&str, &BTreeSet<String>)> = fields
                .iter()
                .filter_map(|(event_type, field)| match field {
                    FieldShape::Choice(choices) if choices.contains(value) => {
                        Some((*event_type, choices))
                    }
                    _ => None,
                })
                .collect();
            if taken_by.is_empty() && !open && !fields.is_empty() {
                issues.push(format!(
                    "role {role}: neutral {path:?}: {value:?} is not a value of any event type's {path}"
                ));
            }
            for (event_type, choices) in taken_by {
                if !choices.contains(neutral) {
                    issues.push(format!(
                        "role {role}: neutral {path:?}: {neutral:?} is not a value of {event_type}'s {path}"
                    ));
                }
            }
        }
    }
    issues
}

/// The shapes of the fields a pattern (its dotted steps, `*` for any name) reaches below
/// `shape`, inside lists too.
fn fields_at<'s>(shape: &'s FieldShape, steps: &[String]) -> Vec<&'s FieldShape> {
    let Some((first, rest)) = steps.split_first() else {
        return vec![shape];
    };
    match shape {
        FieldShape::Object(object) => object
            .properties
            .iter()
            .filter(|(name, _)| first == "*" || first == *name)
            .flat_map(|(_, inner)| fields_at(inner, rest))
            .collect(),
        FieldShape::List(item) => fields_at(item, steps),
        FieldShape::Scalar | FieldShape::Choice(_) => Vec::new(),
    }
}

struct FileContext<'a> {
    catalogue: &'a Catalogue,
    schemas: &'a Arc<SchemaSet>,
    policy: &'a Arc<Policy>,
    shared: &'a [Vec<u8>],
    shared_codelists: &'a HashMap<String, Arc<CodeList>>,
}

/// A problem in a shared file, located at `span` when the TOML library gave one (a syntax or
/// type error); otherwise, a problem of meaning (a pattern that names no field, an alias of an
/// unknown code), at the first place the file writes the first string `message` quotes
/// (`"vulnerabilites"`), within the role's table when the message names a role (`role
/// consulate: …` in `[roles.consulate]`); at the file's start when it writes none.
fn located(
    file: &Path,
    text: &str,
    message: String,
    span: Option<std::ops::Range<usize>>,
) -> Diagnostic {
    if let Some(span) = span {
        return Diagnostic::locate(file, text, &Issue::at(span, message));
    }
    let quoted = message.find('"').and_then(|open| {
        let close = message[open + 1..].find('"')? + open + 1;
        Some(&message[open..=close])
    });
    let from = message
        .strip_prefix("role ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(role, _)| text.find(&format!("[roles.{role}]")))
        .unwrap_or(0);
    let found = quoted.and_then(|quoted| Some((from + text[from..].find(quoted)?, quoted.len())));
    match found {
        Some((at, len)) => Diagnostic::locate(file, text, &Issue::at(at..at + len, message)),
        None => Diagnostic::file(file, message),
    }
}

/// Where a string value's text starts in the file, when the file holds it verbatim: a literal
/// string (`'…'`, or `'''…'''`, whose first line end is not part of it). A basic string (`"…"`)
/// may hold escapes, so a place inside its value is not a place in the file.
fn verbatim_start(text: &str, span: std::ops::Range<usize>) -> Option<usize> {
    let raw = text.get(span.clone())?;
    if let Some(rest) = raw.strip_prefix("'''") {
        let newline = if rest.starts_with("\r\n") {
            2
        } else {
            usize::from(rest.starts_with('\n'))
        };
        Some(span.start + 3 + newline)
    } else if raw.starts_with('\'') {
        Some(span.start + 1)
    } else {
        None
    }
}

fn load_file(file: &Path, context: &FileContext<'_>) -> Result<PartnerMapping, Vec<Diagnostic>> {
    let bytes = std::fs::read(file)
        .map_err(|e| vec![Diagnostic::file(file, format!("cannot read: {e}"))])?;
    let text = String::from_utf8(bytes.clone())
        .map_err(|_| vec![Diagnostic::file(file, "the file is not UTF-8".into())])?;
    let locate = |issue: &Issue| Diagnostic::locate(file, &text, issue);
    let spec: MappingFile = toml::from_str(&text).map_err(|error| {
        vec![locate(&Issue::at(
            error.span().unwrap_or(0..0),
            error.message().to_owned(),
        ))]
    })?;
    let mut issues = Vec::new();
    let partner = spec.partner.get_ref().clone();
    let expected_name = format!("{partner}.toml");
    if file.file_name().and_then(|n| n.to_str()) != Some(expected_name.as_str()) {
        issues.push(Issue::at(
            spec.partner.span(),
            format!("the file for partner {partner} must be named {expected_name}"),
        ));
    }
    let role = spec.role.get_ref().clone();
    if !context.policy.knows(&role) {
        let roles = context.policy.roles().collect::<Vec<_>>().join(", ");
        issues.push(Issue::at(
            spec.role.span(),
            format!("role {role:?} has no need-to-know policy in policies.toml (roles: {roles})"),
        ));
    }
    let namespaces: BTreeMap<String, String> = spec
        .namespaces
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect();
    for (prefix, uri) in &spec.namespaces {
        // A prefix that no path can write, or an empty URI (no element is in it), would
        // leave the paths that use it matching nothing.
        if !(prefix.is_empty() || is_ncname(prefix)) || prefix == "xmlns" {
            issues.push(Issue::at(
                uri.span(),
                format!(
                    "[namespaces]: {prefix:?} is not a prefix (an XML name without a colon, not \
                     xmlns; \"\" for unprefixed names)"
                ),
            ));
        }
        if uri.get_ref().trim().is_empty() {
            issues.push(Issue::at(
                uri.span(),
                format!("[namespaces]: the namespace of {prefix:?} is empty"),
            ));
        }
    }
    let mut codelists = context.shared_codelists.clone();
    for (name, list) in &spec.codelists {
        if name.contains('.') || codelists.contains_key(name) {
            issues.push(Issue::at(
                list.span(),
                format!("code list name {name:?} is taken or contains a dot"),
            ));
            continue;
        }
        // A key that folds to another key's text with another value could never be read: the
        // look-up ignores accents, case and punctuation (3.3 of the mapping guide).
        for clash in fold_clashes(
            list.get_ref()
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        ) {
            issues.push(Issue::at(
                list.span(),
                format!(
                    "code list {name}: keys {:?} and {:?} are one key once accents, case and \
                     punctuation are ignored, with different values",
                    clash.first, clash.second
                ),
            ));
        }
        codelists.insert(
            name.clone(),
            Arc::new(CodeList::from_pairs(list.get_ref().clone())),
        );
    }
    let scope = CompileScope {
        format: spec.format,
        namespaces: &namespaces,
        codelists: &codelists,
        decoded: &[],
        event_data: None,
    };
    let known_type = |name: &toml::Spanned<String>, issues: &mut Vec<Issue>| {
        let known = context.catalogue.get(name.get_ref()).is_some();
        if !known {
            issues.push(Issue::at(
                name.span(),
                format!(
                    "{:?} is not a canonical event type (write it without ma.rva.)",
                    name.get_ref()
                ),
            ));
        }
        known
    };
    if spec.format == Format::Cloudevents && (!spec.inbound.is_empty() || !spec.ignore.is_empty()) {
        issues.push(Issue::at(
            spec.partner.span(),
            "a partner that sends canonical CloudEvents has no [[inbound]] or [[ignore]]".into(),
        ));
    }
    if spec.format != Format::Cloudevents && spec.inbound.is_empty() {
        issues.push(Issue::at(
            spec.partner.span(),
            "a partner with a native format needs at least one [[inbound]]".into(),
        ));
    }
    let mut inbound = Vec::new();
    for entry in &spec.inbound {
        if !known_type(&entry.get_ref().event_type, &mut issues) {
            continue;
        }
        let shape = context
            .schemas
            .data_shape(entry.get_ref().event_type.get_ref())
            .expect("every catalogue type has a shape");
        match InboundMapping::compile(entry, &scope, shape) {
            Ok(mut compiled) => {
                compiled.envelope.mapping_id = format!("{partner}/{}", compiled.name);
                inbound.push(compiled);
            }
            Err(mut found) => issues.append(&mut found),
        }
    }
    let mut ignore = Vec::new();
    for entry in &spec.ignore {
        match IgnoreRule::compile(entry, &scope) {
            Ok(compiled) => ignore.push(compiled),
            Err(mut found) => issues.append(&mut found),
        }
    }
    // Kinds are tried in order, the inbound ones first: one that an earlier one always takes
    // would never be chosen. (Checked once every kind has compiled, so that each is paired
    // with its own table.)
    if inbound.len() == spec.inbound.len() && ignore.len() == spec.ignore.len() {
        let tried: Vec<(&str, &Matcher, std::ops::Range<usize>)> = inbound
            .iter()
            .zip(&spec.inbound)
            .map(|(kind, entry)| (kind.name.as_str(), &kind.matcher, entry.span()))
            .chain(
                ignore
                    .iter()
                    .zip(&spec.ignore)
                    .map(|(kind, entry)| (kind.name.as_str(), &kind.matcher, entry.span())),
            )
            .collect();
        for (at, (name, matcher, span)) in tried.iter().enumerate() {
            if let Some((earlier, _, _)) = tried[..at]
                .iter()
                .find(|(_, before, _)| before.matches_all_of(matcher))
            {
                issues.push(Issue::at(
                    span.clone(),
                    format!(
                        "{name} can never be chosen: {earlier}, tried before it, matches every \
                         message it matches"
                    ),
                ));
            }
        }
    }
    let mut outbound = Vec::new();
    for entry in &spec.outbound {
        let body = entry.get_ref();
        if !known_type(&body.event_type, &mut issues) {
            continue;
        }
        let event_type = body.event_type.get_ref();
        if outbound
            .iter()
            .any(|o: &OutboundMapping| &o.event_type == event_type)
        {
            issues.push(Issue::at(
                body.event_type.span(),
                format!("{event_type} already has an outbound template"),
            ));
            continue;
        }
        let withheld = |path: &str| context.policy.withholds(&role, path);
        let template_scope = TemplateScope {
            envelope: context.schemas.envelope_shape(),
            data: context
                .schemas
                .data_shape(event_type)
                .expect("every catalogue type has a shape"),
            codelists: &codelists,
            withheld: &withheld,
        };
        let span = body.template.span();
        match Template::compile(
            body.template.get_ref(),
            span.start,
            verbatim_start(&text, span),
            &template_scope,
        ) {
            Ok(template) => outbound.push(OutboundMapping {
                name: body.name.get_ref().clone(),
                event_type: event_type.clone(),
                template,
            }),
            Err(mut found) => issues.append(&mut found),
        }
    }
    if !spec.outbound.is_empty() {
        // A partner that receives its own format needs a template for every type routed to it.
        for name in context.catalogue.names() {
            let routed = context.catalogue.get(name).is_some_and(|entry| {
                entry
                    .recipients
                    .iter()
                    .any(|r| context.catalogue.recipient_role(r) == role)
            });
            // A template that failed to compile has been reported already: its type is not
            // said to lack one as well.
            let declared = spec
                .outbound
                .iter()
                .any(|o| o.get_ref().event_type.get_ref() == name);
            if routed && !declared {
                issues.push(Issue::at(
                    spec.role.span(),
                    format!("the catalogue routes {name} to role {role}, but this file has no [[outbound]] for it"),
                ));
            }
        }
    }
    let mut names = BTreeMap::new();
    let all_names = spec
        .inbound
        .iter()
        .map(|e| &e.get_ref().name)
        .chain(spec.ignore.iter().map(|e| &e.get_ref().name))
        .chain(spec.outbound.iter().map(|e| &e.get_ref().name));
    for name in all_names {
        let valid = !name.get_ref().is_empty()
            && name.get_ref().chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
            });
        if !valid {
            issues.push(Issue::at(
                name.span(),
                format!(
                    "name {:?} must be lower case letters, digits, `-`, `.` or `_`",
                    name.get_ref()
                ),
            ));
        } else if name.get_ref() == super::CANONICAL_KIND {
            issues.push(Issue::at(
                name.span(),
                format!(
                    "name {:?} is reserved for canonical events",
                    super::CANONICAL_KIND
                ),
            ));
        } else if names.insert(name.get_ref().clone(), ()).is_some() {
            issues.push(Issue::at(
                name.span(),
                format!("name {:?} is used twice in this file", name.get_ref()),
            ));
        }
    }
    if !issues.is_empty() {
        return Err(issues.iter().map(locate).collect());
    }
    let mut hasher = Sha256::new();
    for part in std::iter::once(&bytes).chain(context.shared.iter()) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let hash = format!("sha256:{}", hex::encode(hasher.finalize()));
    let source = crate::canonical::partner_source(spec.partner.get_ref());
    for mapping in &mut inbound {
        let envelope = &mut mapping.envelope;
        envelope.constant = serde_json::json!({
            "specversion": "1.0",
            "source": source,
            "type": envelope.event_type,
            "datacontenttype": "application/json",
            "dataschema": envelope.dataschema,
            "mappingid": envelope.mapping_id,
            "mappinghash": hash,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
    }
    Ok(PartnerMapping {
        partner,
        role,
        format: spec.format,
        hash,
        file: file.to_path_buf(),
        source,
        inbound,
        ignore,
        outbound,
        schemas: context.schemas.clone(),
        policy: context.policy.clone(),
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    })
}
