//! Golden fixtures for mappings: sample messages and what each must become.
//!
//! This module owns the fixture layout and running it. For a partner `P`:
//! - `fixtures/P/in/NAME.xml` (or `.json`) is a native message, and `NAME.expected.json` is
//!   the canonical event it must become, or `{"ignored": …}`, or `{"error": …}`;
//! - `fixtures/P/out/NAME.event.json` is a canonical event, `NAME.expected.xml` (or `.json`)
//!   the native message P must receive, and `NAME.withheld.json` the fields withheld from P.
//!
//! Every inbound fixture is decoded twice, and the two canonical serialisations must be
//! byte for byte the same. Running with `bless` writes the expectations instead of checking.

use super::{Decoded, MappingSet, PartnerMapping, pretty_json};
use crate::canonical::jcs;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The outcome of one fixture.
#[derive(Debug, Clone)]
pub struct FixtureOutcome {
    /// The fixture's input file.
    pub input: PathBuf,
    /// `None` when it passed; a unified diff or an explanation when it did not.
    pub failure: Option<String>,
}

/// Runs every fixture of every partner in the set. With `bless`, writes the expected files
/// from what the mappings produce now.
pub fn run_all(set: &MappingSet, bless: bool) -> Result<Vec<FixtureOutcome>, std::io::Error> {
    let mut outcomes = Vec::new();
    let root = set.dir().join("fixtures");
    for partner in set.partners() {
        let folder = root.join(&partner.partner);
        for input in list(&folder.join("in"), |name| !name.contains(".expected."))? {
            outcomes.push(run_inbound(partner, &input, bless)?);
        }
        for input in list(&folder.join("out"), |name| name.ends_with(".event.json"))? {
            outcomes.push(run_outbound(partner, &input, bless)?);
        }
        outcomes.extend(strays(&folder)?);
    }
    if root.is_dir() {
        for entry in sorted_entries(&root)? {
            let name = file_name(&entry);
            if set.partner(&name).is_none() {
                outcomes.push(FixtureOutcome {
                    input: root.join(&name),
                    failure: Some(format!("fixtures for {name}, which has no mapping file")),
                });
            }
        }
    }
    Ok(outcomes)
}

/// The files and folders of a partner's fixtures that are no fixture, each as a failure: a
/// fixture renamed by mistake (`Upper.XML`, `inbound/`), or an expectation left behind by its
/// input, would otherwise drop out of the count without a word.
fn strays(folder: &Path) -> Result<Vec<FixtureOutcome>, std::io::Error> {
    let mut found = Vec::new();
    if !folder.is_dir() {
        return Ok(found);
    }
    let stray = |path: PathBuf, why: String| FixtureOutcome {
        input: path,
        failure: Some(why),
    };
    for entry in sorted_entries(folder)? {
        let name = file_name(&entry);
        if !(entry.is_dir() && (name == "in" || name == "out")) {
            found.push(stray(
                entry,
                "not a fixture: a partner's fixtures are in its in/ and out/ folders".into(),
            ));
        }
    }
    let inputs = folder.join("in");
    if inputs.is_dir() {
        for entry in sorted_entries(&inputs)? {
            let name = file_name(&entry);
            let why = if entry.is_dir() {
                Some("not a fixture: in/ holds files only".to_owned())
            } else if let Some(stem) = name.strip_suffix(".expected.json") {
                (!inputs.join(format!("{stem}.xml")).is_file()
                    && !inputs.join(format!("{stem}.json")).is_file())
                .then(|| format!("no {stem}.xml or {stem}.json beside this expectation"))
            } else if name.contains(".expected.") {
                Some("not a fixture: an inbound expectation is NAME.expected.json".into())
            } else {
                (!(name.ends_with(".xml") || name.ends_with(".json"))).then(|| {
                    "not a fixture: an inbound message is NAME.xml or NAME.json".to_owned()
                })
            };
            found.extend(why.map(|why| stray(entry, why)));
        }
    }
    let outputs = folder.join("out");
    if outputs.is_dir() {
        for entry in sorted_entries(&outputs)? {
            let name = file_name(&entry);
            let stem = [".expected.xml", ".expected.json", ".withheld.json"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix));
            let why = if entry.is_dir() {
                Some("not a fixture: out/ holds files only".to_owned())
            } else if name.ends_with(".event.json") {
                None
            } else if let Some(stem) = stem {
                (!outputs.join(format!("{stem}.event.json")).is_file())
                    .then(|| format!("no {stem}.event.json beside this expectation"))
            } else {
                Some(
                    "not a fixture: out/ holds NAME.event.json, NAME.expected.xml or .json, and \
                     NAME.withheld.json"
                        .into(),
                )
            };
            found.extend(why.map(|why| stray(entry, why)));
        }
    }
    Ok(found)
}

/// An I/O error that names what was being done, and to which file or folder.
fn at(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error {
    let path = path.to_owned();
    move |error| std::io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

/// Writes an expectation whole (see [`crate::durable_folders::replace_file`]): a write cut
/// short would leave a fixture that fails for a reason of its own.
fn write_whole(path: &Path, text: &str) -> Result<(), std::io::Error> {
    crate::durable_folders::replace_file(
        path,
        text.as_bytes(),
        crate::durable_folders::Readers::AsTheUmaskSays,
    )
    .map_err(at("writing", path))
}

/// The entries of a folder, sorted, but hidden ones (`.gitkeep`, `.DS_Store`).
fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut entries = std::fs::read_dir(folder)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(at("reading", folder))?;
    entries.retain(|path| !file_name(path).starts_with('.'));
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list(folder: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, std::io::Error> {
    if !folder.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = sorted_entries(folder)?;
    files.retain(|path| {
        keep(&file_name(path)) && path.extension().is_some_and(|e| e == "xml" || e == "json")
    });
    Ok(files)
}

/// What decoding a native message gives, as JSON: the event, `{"ignored": …}` or `{"error": …}`.
pub fn inbound_outcome(partner: &PartnerMapping, bytes: &[u8]) -> Value {
    match partner.decode(bytes) {
        Ok(Decoded::Event(mapped)) => mapped.event,
        Ok(Decoded::Ignored {
            mapping_id,
            kind,
            reason,
            ..
        }) => {
            json!({ "ignored": { "mapping": mapping_id, "kind": kind, "reason": reason } })
        }
        Err(error) => json!({ "error": { "class": error.class(), "message": error.to_string() } }),
    }
}

fn stem(input: &Path, suffix: &str) -> PathBuf {
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let base = name.strip_suffix(suffix).unwrap_or(name);
    input.with_file_name(base)
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = stem.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn run_inbound(
    partner: &PartnerMapping,
    input: &Path,
    bless: bool,
) -> Result<FixtureOutcome, std::io::Error> {
    let bytes = std::fs::read(input).map_err(at("reading", input))?;
    let extension = input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let expected_path = with_suffix(&stem(input, &format!(".{extension}")), ".expected.json");
    let actual = inbound_outcome(partner, &bytes);
    let again = inbound_outcome(partner, &bytes);
    if jcs::to_vec(&actual) != jcs::to_vec(&again) {
        return Ok(FixtureOutcome {
            input: input.into(),
            failure: Some("two runs gave different bytes".into()),
        });
    }
    let actual_text = pretty_json(&actual);
    if bless {
        write_whole(&expected_path, &actual_text)?;
        return Ok(FixtureOutcome {
            input: input.into(),
            failure: None,
        });
    }
    let failure = match std::fs::read_to_string(&expected_path) {
        Err(_) => Some(format!("missing {}", expected_path.display())),
        Ok(expected_text) => match serde_json::from_str::<Value>(&expected_text) {
            Err(error) => Some(format!("{} is not JSON: {error}", expected_path.display())),
            Ok(expected) if expected == actual => None,
            Ok(expected) => Some(diff(&pretty_json(&expected), &actual_text)),
        },
    };
    Ok(FixtureOutcome {
        input: input.into(),
        failure,
    })
}

fn run_outbound(
    partner: &PartnerMapping,
    input: &Path,
    bless: bool,
) -> Result<FixtureOutcome, std::io::Error> {
    let failed = |message: String| {
        Ok(FixtureOutcome {
            input: input.into(),
            failure: Some(message),
        })
    };
    let event: Value =
        match serde_json::from_slice(&std::fs::read(input).map_err(at("reading", input))?) {
            Ok(event) => event,
            Err(error) => return failed(format!("not JSON: {error}")),
        };
    let base = stem(input, ".event.json");
    let withheld_path = with_suffix(&base, ".withheld.json");
    let encoded = match partner.encode(&event) {
        Ok(encoded) => encoded,
        Err(error) => return failed(error.to_string()),
    };
    let extension = if encoded.content_type.ends_with("xml") {
        "xml"
    } else {
        "json"
    };
    let expected_path = with_suffix(&base, &format!(".expected.{extension}"));
    let actual_text = if extension == "json" {
        serde_json::from_slice::<Value>(&encoded.body)
            .map(|v| pretty_json(&v))
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(&encoded.body).into_owned()
    };
    let withheld_text = pretty_json(&json!(encoded.withheld));
    if bless {
        write_whole(&expected_path, &actual_text)?;
        write_whole(&withheld_path, &withheld_text)?;
        return Ok(FixtureOutcome {
            input: input.into(),
            failure: None,
        });
    }
    let mut failures = Vec::new();
    match std::fs::read_to_string(&expected_path) {
        Err(_) => failures.push(format!("missing {}", expected_path.display())),
        Ok(expected) if extension == "json" => {
            let same = serde_json::from_str::<Value>(&expected)
                .ok()
                .map(|v| pretty_json(&v));
            if same.as_deref() != Some(actual_text.as_str()) {
                failures.push(diff(&expected, &actual_text));
            }
        }
        Ok(expected) if expected != actual_text => failures.push(diff(&expected, &actual_text)),
        Ok(_) => {}
    }
    match std::fs::read_to_string(&withheld_path) {
        Err(_) => failures.push(format!("missing {}", withheld_path.display())),
        Ok(expected) => {
            let same =
                serde_json::from_str::<Value>(&expected).ok() == Some(json!(encoded.withheld));
            if !same {
                failures.push(format!(
                    "withheld fields differ:\n{}",
                    diff(&expected, &withheld_text)
                ));
            }
        }
    }
    Ok(FixtureOutcome {
        input: input.into(),
        failure: (!failures.is_empty()).then(|| failures.join("\n")),
    })
}

/// A unified diff, expected first.
fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .header("expected", "actual")
        .to_string()
}
