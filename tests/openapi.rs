//! The documents that describe the gateway stay true to the code:
//!
//! - `docs/openapi.yaml` lists exactly the routes the server exposes
//!   (`passerelle::server::routes::ROUTES`), both ways, says `openapi: 3.1.x`, and every local
//!   `$ref` in it resolves;
//! - `docs/admin-openapi.yaml` says `openapi: 3.1.x` and its local `$ref`s resolve;
//! - `docs/asyncapi.yaml` names the broker's exchanges and queues as `src/amqp/topology.rs`
//!   does;
//! - the audit log's kinds of fact (`passerelle::audit::Kind`) are each listed in
//!   `docs/openapi.yaml`, `docs/audit.md` and the kinds table of `docs/auditor.md`, and nothing
//!   else is listed there;
//! - `config/passerelle.toml` loads with `Config::load`, holds exactly the defaults, and mentions
//!   every setting of every section (as a key, or as a commented-out `# key = …` line).
//!
//! YAML is read with `serde_norway`, a maintained fork of `serde_yaml`.

use passerelle::audit::Kind;
use passerelle::config::Config;
use passerelle::server::routes::ROUTES;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_yaml(relative: &str) -> Value {
    let path = root().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn text_of<'a>(doc: &'a Value, key: &str) -> &'a str {
    doc.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the document has no string `{key}`"))
}

/// Follows a local JSON Pointer (`#/components/schemas/Ack`) in the document.
fn resolve<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    let path = pointer.strip_prefix("#/")?;
    path.split('/').try_fold(doc, |node, token| {
        let token = token.replace("~1", "/").replace("~0", "~");
        node.get(token.as_str())
    })
}

/// Every `$ref` value anywhere in the document.
fn refs(node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Mapping(map) => {
            for (key, value) in map {
                if key.as_str() == Some("$ref")
                    && let Some(target) = value.as_str()
                {
                    found.push(target.to_owned());
                }
                refs(value, found);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

fn assert_local_refs_resolve(doc: &Value, name: &str) {
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(
        !found.is_empty(),
        "{name} has no $ref at all: is it the right file?"
    );
    let broken: Vec<&String> = found
        .iter()
        .filter(|r| r.starts_with('#') && resolve(doc, r).is_none())
        .collect();
    assert!(
        broken.is_empty(),
        "{name}: $refs that resolve to nothing: {broken:?}"
    );
}

fn assert_openapi_31(doc: &Value, name: &str) {
    let version = text_of(doc, "openapi");
    assert!(
        version.starts_with("3.1.") && version[4..].bytes().all(|b| b.is_ascii_digit()),
        "{name} must say `openapi: 3.1.x`, not {version:?}"
    );
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The `(method, path)` pairs of a document's `paths`.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_mapping)
        .expect("the document has a `paths` object");
    let mut found = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("paths are strings");
        let item = item.as_mapping().expect("a path item is an object");
        for (key, _) in item {
            let key = key.as_str().expect("path item keys are strings");
            if METHODS.contains(&key) {
                found.insert((key.to_owned(), path.to_owned()));
            }
        }
    }
    found
}

#[test]
fn openapi_lists_exactly_the_server_routes() {
    let doc = load_yaml("docs/openapi.yaml");
    assert_openapi_31(&doc, "docs/openapi.yaml");
    let documented = operations(&doc);
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_ascii_lowercase(), (*path).to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "docs/openapi.yaml and ROUTES differ.\n  served but not documented: {undocumented:?}\n  documented but not served: {unserved:?}"
    );
}

#[test]
fn openapi_is_self_consistent() {
    let doc = load_yaml("docs/openapi.yaml");
    assert_local_refs_resolve(&doc, "docs/openapi.yaml");
    // Every route is behind the mutual-TLS scheme, declared once for the whole document.
    let schemes = doc
        .get("components")
        .and_then(|c| c.get("securitySchemes"))
        .and_then(Value::as_mapping)
        .expect("components.securitySchemes");
    let mtls: Vec<&str> = schemes
        .iter()
        .filter(|(_, scheme)| scheme.get("type").and_then(Value::as_str) == Some("mutualTLS"))
        .filter_map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(mtls.len(), 1, "exactly one mutualTLS security scheme");
    let global = doc
        .get("security")
        .and_then(Value::as_sequence)
        .expect("a document-wide `security` requirement");
    assert!(
        global.iter().any(|req| req.get(mtls[0]).is_some()),
        "the document-wide security requirement names {}",
        mtls[0]
    );
    // Every operation documents at least one answer, and path parameters match the template.
    let paths = doc.get("paths").and_then(Value::as_mapping).unwrap();
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !METHODS.contains(&method) {
                continue;
            }
            assert!(
                op.get("responses")
                    .and_then(Value::as_mapping)
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            let declared: BTreeSet<&str> = op
                .get("parameters")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .map(|p| match p.get("$ref").and_then(Value::as_str) {
                    Some(r) => resolve(&doc, r).unwrap_or_else(|| panic!("{r} resolves")),
                    None => p,
                })
                .filter(|p| p.get("in").and_then(Value::as_str) == Some("path"))
                .filter_map(|p| p.get("name").and_then(Value::as_str))
                .collect();
            assert_eq!(declared, in_template, "path parameters of {method} {path}");
        }
    }
}

#[test]
fn admin_openapi_is_a_valid_31_document() {
    let doc = load_yaml("docs/admin-openapi.yaml");
    assert_openapi_31(&doc, "docs/admin-openapi.yaml");
    assert_local_refs_resolve(&doc, "docs/admin-openapi.yaml");
    let documented = operations(&doc);
    for (method, path) in [
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/metrics"),
        ("get", "/dead-letters"),
        ("post", "/deliveries/{id}/redeliver"),
        ("post", "/deliveries/{id}/discard"),
    ] {
        assert!(
            documented.contains(&(method.to_owned(), path.to_owned())),
            "docs/admin-openapi.yaml lacks {method} {path}"
        );
    }
}

#[test]
fn asyncapi_names_the_topology_as_the_code_does() {
    use passerelle::amqp::{
        DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, INBOUND_EXCHANGE, OUTBOUND_EXCHANGE,
        inbound_queue, outbound_queue,
    };
    let doc = load_yaml("docs/asyncapi.yaml");
    let version = text_of(&doc, "asyncapi");
    assert!(
        version.starts_with("3.0."),
        "asyncapi: 3.0.x, not {version:?}"
    );
    let text = std::fs::read_to_string(root().join("docs/asyncapi.yaml")).unwrap();
    for name in [
        DEAD_LETTER_EXCHANGE,
        DEAD_LETTER_QUEUE,
        INBOUND_EXCHANGE,
        OUTBOUND_EXCHANGE,
        &inbound_queue("{partner}"),
        &outbound_queue("{partner}"),
    ] {
        assert!(
            text.contains(name),
            "docs/asyncapi.yaml does not name {name}"
        );
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    let broken: Vec<&String> = found
        .iter()
        .filter(|r| r.starts_with('#') && resolve(&doc, r).is_none())
        .collect();
    assert!(
        broken.is_empty(),
        "docs/asyncapi.yaml: broken $refs {broken:?}"
    );
}

/// The names serde expects in a table: deserializing a probe key that no struct has makes
/// `deny_unknown_fields` list them ("unknown field `…`, expected one of `a`, `b`").
fn expected_fields(toml_text: &str) -> Option<Vec<String>> {
    let error = match toml::from_str::<Config>(toml_text) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    let (_, list) = error.split_once("expected ")?;
    let list = list.lines().next().unwrap_or_default();
    let names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The keys each `[section]` of a TOML file sets or shows commented out (`# key = …`), with
/// commented-out section headers (`# [amqp]`) counted as sections.
fn mentioned_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        let bare = line.trim_start_matches('#').trim_start();
        if let Some(name) = bare.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if !name.contains(['"', ' ']) {
                current = name.to_owned();
                sections.entry(current.clone()).or_default();
            }
            continue;
        }
        if let Some((key, _)) = bare.split_once(" = ")
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            sections
                .entry(current.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    sections
}

#[test]
fn the_sample_configuration_loads_with_the_defaults_and_every_setting() {
    let path = root().join("config/passerelle.toml");
    let config = Config::load(&path).expect("config/passerelle.toml loads");
    assert_eq!(
        format!("{config:#?}"),
        format!("{:#?}", Config::default()),
        "config/passerelle.toml must hold exactly the defaults of src/config.rs"
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let mentioned = mentioned_keys(&text);
    let sections = expected_fields("__probe__ = 1")
        .expect("Config refuses unknown top-level keys and names its sections");
    for section in &sections {
        assert!(
            mentioned.contains_key(section),
            "config/passerelle.toml has no [{section}] section (even commented out)"
        );
        // A section whose type takes any table (none today but a placeholder) has no list.
        let Some(fields) = expected_fields(&format!("[{section}]\n__probe__ = 1")) else {
            continue;
        };
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| !mentioned[section].contains(*f))
            .collect();
        assert!(
            missing.is_empty(),
            "config/passerelle.toml does not mention [{section}] {missing:?}"
        );
    }
}

#[test]
fn the_sample_configuration_points_at_files_that_exist() {
    let config = Config::load(&root().join("config/passerelle.toml")).unwrap();
    let tls = &config.tls;
    let files: Vec<&Path> = [
        &tls.ca,
        &tls.cert,
        &tls.key,
        &tls.client_cert,
        &tls.client_key,
        &config.paths.registry,
        &config.paths.mappings,
    ]
    .into_iter()
    .map(PathBuf::as_path)
    .chain(tls.crls.iter().map(PathBuf::as_path))
    .collect();
    for file in files {
        assert!(
            root().join(file).exists(),
            "{} does not exist",
            file.display()
        );
    }
}

/// Every kind of fact, as the leaf spells it. The `match` makes this fail to compile when a
/// kind is added, so that the documents are checked for it too.
fn every_kind() -> BTreeSet<String> {
    let kinds = [
        Kind::Received,
        Kind::Accepted,
        Kind::Rejected,
        Kind::Delivered,
        Kind::Acknowledged,
        Kind::DeliveryFailed,
        Kind::DeadLettered,
        Kind::Redelivered,
        Kind::Discarded,
        Kind::Anomaly,
        Kind::Erased,
        Kind::ConfigurationChange,
    ];
    for kind in kinds {
        match kind {
            Kind::Received
            | Kind::Accepted
            | Kind::Rejected
            | Kind::Delivered
            | Kind::Acknowledged
            | Kind::DeliveryFailed
            | Kind::DeadLettered
            | Kind::Redelivered
            | Kind::Discarded
            | Kind::Anomaly
            | Kind::Erased
            | Kind::ConfigurationChange => {}
        }
    }
    kinds
        .iter()
        .map(|kind| {
            serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .expect("a kind serialises as a string")
        })
        .collect()
}

/// The back-quoted words of `line`.
fn quoted(line: &str) -> BTreeSet<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_documents_list_every_kind_of_audit_fact() {
    let kinds = every_kind();

    // The leaf schema of the REST API.
    let openapi = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    let listed: BTreeSet<String> = openapi
        .lines()
        .find(|l| l.trim_start().starts_with("enum: [received,"))
        .expect("the kind enum in docs/openapi.yaml")
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split(',').map(|k| k.trim().to_owned()).collect())
        .unwrap();
    assert_eq!(listed, kinds, "docs/openapi.yaml");

    // The leaf format's field table.
    let audit = std::fs::read_to_string(root().join("docs/audit.md")).unwrap();
    let row = audit
        .lines()
        .find(|l| l.starts_with("| `kind` |"))
        .expect("the `kind` row in docs/audit.md");
    let listed: BTreeSet<String> = quoted(row).into_iter().filter(|k| k != "kind").collect();
    assert_eq!(listed, kinds, "docs/audit.md");

    // The auditor's table of kinds: one row each.
    let auditor = std::fs::read_to_string(root().join("docs/auditor.md")).unwrap();
    let table: BTreeSet<String> = auditor
        .lines()
        .skip_while(|l| !l.starts_with("| `kind` | written when |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1).map(quoted))
        .flatten()
        .collect();
    assert_eq!(table, kinds, "docs/auditor.md");
}
