//! The shipped mappings against their fixtures, lint on broken mappings, the need-to-know
//! policy, and the `passerelle mapping` command line.

use passerelle::mapping::{DecodeError, Decoded, Diagnostic, MappingSet, fixtures};
use std::path::{Path, PathBuf};
use std::process::Command;

fn mappings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

fn shipped() -> MappingSet {
    MappingSet::load(&mappings_dir())
        .unwrap_or_else(|diagnostics| panic!("the shipped mappings do not lint: {diagnostics:#?}"))
}

fn fixture(partner: &str, name: &str) -> Vec<u8> {
    std::fs::read(mappings_dir().join("fixtures").join(partner).join(name)).expect("fixture")
}

#[test]
fn every_shipped_fixture_passes() {
    let set = shipped();
    let outcomes = fixtures::run_all(&set, false).unwrap();
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}\n{}", o.input.display(), o.failure.as_ref()?)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(outcomes.len() >= 50, "only {} fixtures ran", outcomes.len());
    for partner in [
        "ma.interieur",
        "sn.consulat.casablanca",
        "ci.ambassade.rabat",
        "ma.dgsn",
        "airline.at",
        "iom.ma",
        "iom.sn",
    ] {
        assert!(set.partner(partner).is_some(), "no mapping for {partner}");
    }
}

#[test]
fn the_same_bytes_give_the_same_canonical_bytes() {
    let set = shipped();
    let partner = set.partner("sn.consulat.casablanca").unwrap();
    let bytes = fixture("sn.consulat.casablanca", "in/lpc-issued.xml");
    let Decoded::Event(first) = partner.decode(&bytes).unwrap() else {
        panic!("an event")
    };
    let Decoded::Event(second) = partner.decode(&bytes).unwrap() else {
        panic!("an event")
    };
    assert_eq!(first.to_canonical_json(), second.to_canonical_json());
    assert_eq!(
        first.event["mappingid"],
        "sn.consulat.casablanca/lpc-issued"
    );
    assert_eq!(first.event["mappinghash"], partner.hash.as_str());
}

#[test]
fn latin1_and_utf8_messages_give_the_same_data() {
    let set = shipped();
    let partner = set.partner("sn.consulat.casablanca").unwrap();
    let decode = |name: &str| match partner.decode(&fixture("sn.consulat.casablanca", name)) {
        Ok(Decoded::Event(mapped)) => mapped.event["data"].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        decode("in/lpc-issued.xml"),
        decode("in/lpc-issued-latin1.xml")
    );
}

#[test]
fn a_consulate_never_receives_vulnerabilities() {
    let set = shipped();
    let event: serde_json::Value = serde_json::from_slice(&fixture(
        "ci.ambassade.rabat",
        "out/lpc-requested-vulnerable.event.json",
    ))
    .unwrap();
    assert_eq!(event["data"]["vulnerabilities"][0], "trafficking_victim");
    let encoded = set
        .partner("ci.ambassade.rabat")
        .unwrap()
        .encode(&event)
        .unwrap();
    assert_eq!(
        encoded.withheld,
        ["data.*.biometrics", "data.medical", "data.vulnerabilities"]
    );
    let body = String::from_utf8(encoded.body).unwrap();
    assert!(
        !body.contains("trafficking") && !body.contains("medical"),
        "{body}"
    );
    // IOM sees everything about its own cases, but another organisation's internal notes.
    let iom = set.partner("iom.ma").unwrap().encode(&event).unwrap();
    assert_eq!(iom.withheld, ["data.observations"]);
    assert!(
        String::from_utf8(iom.body)
            .unwrap()
            .contains("trafficking_victim")
    );
}

#[test]
fn errors_name_partner_kind_and_path_but_no_personal_data() {
    let set = shipped();
    let partner = set.partner("sn.consulat.casablanca").unwrap();
    let error = partner
        .decode(&fixture("sn.consulat.casablanca", "in/error-bad-date.xml"))
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("sn.consulat.casablanca"), "{message}");
    assert!(message.contains("lpc-issued"), "{message}");
    assert!(message.contains("Titulaire/DateNaissance"), "{message}");
    assert!(
        !message.contains("1998") && !message.contains("DIOP"),
        "{message}"
    );
}

/// A copy of the shipped mappings in a scratch folder, with one file replaced.
fn scratch_with(file: &str, text: &str) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    let source = mappings_dir();
    for name in [
        "policies.toml",
        "codelists/countries.csv",
        "codelists/aliases.toml",
    ] {
        let target = scratch.path().join(name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source.join(name), target).unwrap();
    }
    std::fs::write(scratch.path().join(file), text).unwrap();
    scratch
}

const BROKEN: &str = r#"partner = "xx.consulat.test"
role = "consulate"
format = "xml"

[[inbound]]
name = "lpc-issued"
type = "lpc.issued"
match = { root = "LP" }
id = { from = "Ref" }

[inbound.data]
case_id = { from = "Dossier" }
"holder.family_nam" = { from = "Nom" }
"holder.given_names" = { from = "Prenoms", split = " " }
"holder.nationality" = { from = "Nat", codelist = "demonymes" }
"lpc.number" = { from = "Num" }
"lpc.issued_on" = { from = "Le", date = "dd/mm/yyyy" }
"#;

#[test]
fn lint_names_file_line_and_problem() {
    let scratch = scratch_with("xx.consulat.test.toml", BROKEN);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let find = |needle: &str| {
        diagnostics
            .iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no diagnostic about {needle:?} in {text:#?}"))
    };
    let unknown = find("holder.family_nam is not a field of canonical lpc.issued");
    assert_eq!(unknown.line, 13);
    assert!(unknown.file.ends_with("xx.consulat.test.toml"));
    assert_eq!(find("code list \"demonymes\" is not defined").line, 15);
    find("nothing produces lpc.expires_on, which the schema requires");
    find("nothing produces holder.birth_date, which the schema requires");
    find("nothing produces holder.family_name, which the schema requires");
}

#[test]
fn lint_refuses_list_keys_that_are_one_key_once_folded() {
    // `PLANIFIE` beside `Planifié` with another value: neither could be read in a message.
    let text = format!(
        "{BROKEN}\n[codelists.statuses]\nPLANIFIE = \"planned\"\n\"Planifié\" = \"done\"\n"
    );
    let scratch = scratch_with("xx.consulat.test.toml", &text);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    assert!(
        diagnostics.iter().any(|d| d.message.contains(
            "code list statuses: keys \"PLANIFIE\" and \"Planifié\" are one key once accents, \
             case and punctuation are ignored"
        )),
        "{diagnostics:#?}"
    );
    // An alias that clashes with another, once folded, stops the whole folder.
    let scratch = scratch_with("xx.consulat.test.toml", BROKEN);
    let aliases = scratch.path().join("codelists/aliases.toml");
    let mut text = std::fs::read_to_string(&aliases).unwrap();
    text = text.replace("[country]\n", "[country]\n\"guinee conakry\" = \"GNB\"\n");
    std::fs::write(&aliases, text).unwrap();
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    assert!(
        diagnostics.iter().any(|d| d
            .message
            .contains("\"Guinée Conakry\" and \"guinee conakry\"")),
        "{diagnostics:#?}"
    );
}

#[test]
fn lint_refuses_a_check_that_reads_no_field() {
    // A check whose side names no field would be skipped on every message, without a word.
    let senegal = std::fs::read_to_string(mappings_dir().join("sn.consulat.casablanca.toml"))
        .unwrap()
        .replacen(
            r#"right = { from = "$event.data.lpc.number" }"#,
            r#"right = { from = "$event.data.lpc.numbr" }"#,
            1,
        )
        .replacen(
            r#"left = { from = "$mrz.surname" }"#,
            r#"left = { from = "$mrz.surnam" }"#,
            1,
        )
        .replacen(
            r#""lpc.mrz" = { from = "$mrz.lines", optional = true }"#,
            r#""lpc.mrz" = { from = "$mrz.lines.0.x", optional = true }"#,
            1,
        );
    let scratch = scratch_with("sn.consulat.casablanca.toml", &senegal);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    for needle in [
        "$event.data.lpc.numbr names no field of the event's canonical data",
        "$mrz.surnam names no field of the decoded document",
        "$mrz.lines.0.x names no field of the decoded document",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(needle)),
            "{needle}: {messages:#?}"
        );
    }
    assert_eq!(messages.len(), 3, "{messages:#?}");
}

#[test]
fn lint_refuses_a_truncation_outside_a_name_comparison_and_one_that_reads_no_field() {
    let senegal = std::fs::read_to_string(mappings_dir().join("sn.consulat.casablanca.toml"))
        .unwrap()
        .replacen(
            r#"right = { from = "$event.data.lpc.number" }"#,
            r#"right = { from = "$event.data.lpc.number" }
truncated = { from = "$mrz.surname_truncated" }"#,
            1,
        )
        .replacen(
            r#"truncated = { from = "$mrz.given_names_truncated" }"#,
            r#"truncated = { from = "$mrz.given_names_truncatd" }"#,
            1,
        );
    let scratch = scratch_with("sn.consulat.casablanca.toml", &senegal);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    for needle in [
        "`truncated` applies to names: it needs compare = \"name\"",
        "$mrz.given_names_truncatd names no field of the decoded document",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(needle)),
            "{needle}: {messages:#?}"
        );
    }
    assert_eq!(messages.len(), 2, "{messages:#?}");
}

#[test]
fn lint_refuses_paths_and_prefixes_that_would_match_nothing() {
    let text = BROKEN
        .replace(
            "format = \"xml\"\n",
            "format = \"xml\"\n\n[namespaces]\nm = \"\"\n\"m:x\" = \"urn:x\"\n",
        )
        .replace(
            r#"match = { root = "LP" }"#,
            r#"match = { root = "LP", fields = { "$event.id" = "x" } }"#,
        )
        .replace(r#"{ from = "Num" }"#, r#"{ from = "Num[1]" }"#)
        .replace(r#"from = "Prenoms""#, r#"from = "Prenoms/text()""#);
    let scratch = scratch_with("xx.consulat.test.toml", &text);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    for needle in [
        "[namespaces]: the namespace of \"m\" is empty",
        "[namespaces]: \"m:x\" is not a prefix",
        "$event.id reads a decoded document or the event: `match`, `[[ignore]]` and `each` read \
         the message as sent",
        "in path \"Num[1]\", \"Num[1]\" is not an XML name",
        "in path \"Prenoms/text()\", \"text()\" is not an XML name",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(needle)),
            "{needle}: {messages:#?}"
        );
    }
}

#[test]
fn lint_refuses_a_kind_that_can_never_be_chosen() {
    // Kinds are tried in order: one that an earlier kind always takes is never chosen.
    let shipped =
        std::fs::read_to_string(mappings_dir().join("sn.consulat.casablanca.toml")).unwrap();
    let load = |extra: &str| {
        let scratch = scratch_with(
            "sn.consulat.casablanca.toml",
            &format!("{shipped}\n{extra}"),
        );
        let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
        diagnostics
            .into_iter()
            .map(|d| d.message)
            .collect::<Vec<String>>()
    };
    let shadowed = load(
        "[[ignore]]\nname = \"old-lpc\"\nmatch = { root = \"LaissezPasserDelivre\", present = \
         [\"Ancien\"] }\nreason = \"an older form\"\n",
    );
    assert_eq!(
        shadowed,
        [
            "old-lpc can never be chosen: lpc-issued, tried before it, matches every message it \
          matches"
        ]
    );
    let empty = load(
        "[[ignore]]\nname = \"nothing\"\nmatch = { root = \"Autre\", fields = { \"@type\" = [] } \
         }\nreason = \"none\"\n",
    );
    assert_eq!(empty, ["@type: an empty list of values matches no message"]);
    let number = load(
        "[[ignore]]\nname = \"number\"\nmatch = { root = \"Autre\", fields = { \"@type\" = 5 } \
         }\nreason = \"none\"\n",
    );
    assert_eq!(number, ["a value to match is a text, or a list of texts"]);
}

#[test]
fn lint_reserves_the_kind_name_of_canonical_events() {
    // `<partner>/cloudevents` is the mapping id of canonical events, which the registry's
    // `mappings` name: no kind of a mapping file may take it.
    let text = BROKEN.replace(r#"name = "lpc-issued""#, r#"name = "cloudevents""#);
    let scratch = scratch_with("xx.consulat.test.toml", &text);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let reserved = diagnostics
        .iter()
        .find(|d| d.message.contains("reserved for canonical events"))
        .unwrap_or_else(|| panic!("no diagnostic about the reserved name in {diagnostics:#?}"));
    assert_eq!(reserved.line, 6);
}

#[test]
fn lint_refuses_a_template_that_uses_a_withheld_field() {
    let mapping = r#"partner = "xx.airline"
role = "airline"
format = "json"

[[inbound]]
name = "x"
type = "allowance.paid"
match = { fields = { t = "X" } }
id = { from = "id" }

[inbound.data]
case_id = { from = "c" }
"amount.amount" = { from = "a" }
"amount.currency" = { from = "cur" }
paid_at = { from = "at", datetime = "rfc3339" }

[[outbound]]
name = "booking"
type = "travel.booked"
template = '{"pnr": "{{ data.pnr }}"}'

[[outbound]]
name = "lpc"
type = "lpc.issued"
template = '{"holder": "{{ data.holder.family_name }}"}'

[[outbound]]
name = "exit"
type = "exit.authorized"
template = '{"pv": "{{ data.pv_number }}"}'
"#;
    let scratch = scratch_with("xx.airline.toml", mapping);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert!(
        diagnostics[0]
            .message
            .contains("withheld from this recipient's role"),
        "{diagnostics:#?}"
    );
    assert_eq!(diagnostics[0].line, 25);
    // A template the catalogue routes to the role, refused, is not also said to be missing.
    let routed = mapping.replace(
        "{{ data.pv_number }}",
        "{{ data.pv_number }} {{ data.person.family_name }}",
    );
    let scratch = scratch_with("xx.airline.toml", &routed);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(
        diagnostics
            .iter()
            .all(|d| d.message.contains("withheld from this recipient's role")),
        "{diagnostics:#?}"
    );
    // A mistyped placeholder would be written out as it stands, and an object as nothing;
    // in JSON, an object alone in its string is the value itself.
    let mistakes = mapping
        .replace(
            r#"'{"pnr": "{{ data.pnr }}"}'"#,
            r#"'{"legs": {"$each": "data.segments", "$item": "{{ item }}"}, "raw": "{\"a\":{\"b\":1}}", "said": {"$each": "data.segments", "$item": "leg {{ item }}"}}'"#,
        )
        .replace(
            r#"'{"pv": "{{ data.pv_number }}"}'"#,
            r#"'{"pv": "{ { data.pv_number }}"}'"#,
        );
    let scratch = scratch_with("xx.airline.toml", &mistakes);
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    let messages: Vec<&str> = diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("has a { { with a space between")),
        "{messages:#?}"
    );
    let objects = messages
        .iter()
        .filter(|m| {
            m.starts_with(
                "{{ item }}: this is an object, which has no text: name one of its fields",
            )
        })
        .count();
    assert_eq!(objects, 1, "{messages:#?}");
    // With the template withheld above.
    assert_eq!(messages.len(), 3, "{messages:#?}");
}

fn passerelle(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn cli_lint_and_test_pass_on_the_shipped_mappings() {
    let lint = passerelle(&["mapping", "lint", "--ids"]);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stderr)
    );
    // With `--ids`, each partner's mapping ids, as the registry names them.
    let listed = String::from_utf8_lossy(&lint.stdout);
    assert!(
        listed.lines().any(|line| line
            == "iom.sn: iom.sn/arrival-confirmed iom.sn/cloudevents iom.sn/reintegration-update"),
        "{listed}"
    );
    let test = passerelle(&["mapping", "test"]);
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(String::from_utf8_lossy(&test.stdout).contains("fixtures passed"));
}

#[test]
fn a_file_in_the_fixtures_that_is_no_fixture_fails_the_run() {
    // A fixture renamed by mistake would drop out of the count without a word.
    let scratch = tempfile::tempdir().unwrap();
    copy_tree(&mappings_dir(), scratch.path());
    let senegal = scratch.path().join("fixtures/sn.consulat.casablanca");
    std::fs::rename(
        senegal.join("in/lpc-issued.xml"),
        senegal.join("in/lpc-issued.XML"),
    )
    .unwrap();
    std::fs::write(senegal.join("in/notes.txt"), "to do").unwrap();
    std::fs::create_dir(senegal.join("inbound")).unwrap();
    std::fs::write(senegal.join("out/gone.withheld.json"), "[]").unwrap();
    std::fs::write(senegal.join("out/.gitkeep"), "").unwrap();
    std::fs::write(scratch.path().join("fixtures/.DS_Store"), "").unwrap();
    std::fs::write(senegal.join("in/._lpc-issued.xml"), "").unwrap();
    let set = MappingSet::load(scratch.path()).unwrap();
    let outcomes = fixtures::run_all(&set, false).unwrap();
    let failed: Vec<(String, String)> = outcomes
        .iter()
        .filter_map(|outcome| {
            let name = outcome.input.strip_prefix(&senegal).ok()?;
            Some((name.display().to_string(), outcome.failure.clone()?))
        })
        .collect();
    let said = |file: &str, why: &str| {
        failed
            .iter()
            .any(|(name, message)| name == file && message.contains(why))
    };
    assert!(
        said(
            "in/lpc-issued.XML",
            "an inbound message is NAME.xml or NAME.json"
        ),
        "{failed:#?}"
    );
    assert!(
        said(
            "in/lpc-issued.expected.json",
            "no lpc-issued.xml or lpc-issued.json beside"
        ),
        "{failed:#?}"
    );
    assert!(said("in/notes.txt", "not a fixture"), "{failed:#?}");
    assert!(
        said("inbound", "in its in/ and out/ folders"),
        "{failed:#?}"
    );
    assert!(
        said("out/gone.withheld.json", "no gone.event.json beside"),
        "{failed:#?}"
    );
    assert_eq!(failed.len(), 5, "{failed:#?}");
    // Hidden files are no fixtures and no failures.
    assert!(
        outcomes.iter().all(|outcome| {
            let inside = outcome.input.strip_prefix(scratch.path()).unwrap();
            !inside.to_string_lossy().contains("/.")
        }),
        "{outcomes:#?}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn cli_run_maps_both_ways_and_fails_loudly() {
    let from = passerelle(&[
        "mapping",
        "run",
        "--from",
        "airline.at",
        "mappings/fixtures/airline.at/in/passenger-boarded.json",
    ]);
    assert!(
        from.status.success(),
        "{}",
        String::from_utf8_lossy(&from.stderr)
    );
    let event: serde_json::Value = serde_json::from_slice(&from.stdout).unwrap();
    assert_eq!(event["type"], "ma.rva.boarding.confirmed");

    let to = passerelle(&[
        "mapping",
        "run",
        "--to",
        "ma.dgsn",
        "mappings/fixtures/ma.dgsn/out/boarding-confirmed.event.json",
    ]);
    assert!(
        to.status.success(),
        "{}",
        String::from_utf8_lossy(&to.stderr)
    );
    assert!(String::from_utf8_lossy(&to.stdout).contains("<AvisEmbarquement"));

    let bad = passerelle(&[
        "mapping",
        "run",
        "--from",
        "sn.consulat.casablanca",
        "mappings/fixtures/sn.consulat.casablanca/in/error-bad-date.xml",
    ]);
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("holder.birth_date"));

    let broken_dir = scratch_with("xx.consulat.test.toml", BROKEN);
    let lint = passerelle(&[
        "mapping",
        "lint",
        "--mappings",
        broken_dir.path().to_str().unwrap(),
    ]);
    assert!(!lint.status.success());
    assert!(String::from_utf8_lossy(&lint.stderr).contains("xx.consulat.test.toml:13:"));
}

#[test]
fn a_canonical_recipient_is_told_what_was_withheld() {
    let mapping = r#"partner = "xx.consulat.canonical"
role = "consulate"
format = "json"

[[inbound]]
name = "x"
type = "lpc.refused"
match = { fields = { t = "X" } }
id = { from = "id" }

[inbound.data]
case_id = { from = "c" }
reason = { const = "other" }
"#;
    let scratch = scratch_with("xx.consulat.canonical.toml", mapping);
    let set = MappingSet::load(scratch.path()).unwrap();
    let event: serde_json::Value = serde_json::from_slice(&fixture(
        "ci.ambassade.rabat",
        "out/lpc-requested-vulnerable.event.json",
    ))
    .unwrap();
    let encoded = set
        .partner("xx.consulat.canonical")
        .unwrap()
        .encode(&event)
        .unwrap();
    let delivered: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(
        delivered["withheld"],
        "data.*.biometrics,data.medical,data.vulnerabilities"
    );
    assert!(delivered["data"].get("vulnerabilities").is_none());
    shipped().schemas().validate(&delivered).unwrap();
}

/// The problems loading `scratch` finds (it must fail).
fn load_refused(scratch: &tempfile::TempDir) -> Vec<Diagnostic> {
    MappingSet::load(scratch.path()).unwrap_err()
}

/// The first problem whose message holds `needle`.
fn problem_about<'a>(diagnostics: &'a [Diagnostic], needle: &str) -> &'a Diagnostic {
    diagnostics
        .iter()
        .find(|d| d.message.contains(needle))
        .unwrap_or_else(|| panic!("nothing about {needle:?} in {diagnostics:#?}"))
}

/// The 1-based line of `text` that first holds `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?}"))
        + 1
}

/// Writes `line` at the end of `file` of `scratch`; returns its line number.
fn add_line(scratch: &tempfile::TempDir, file: &str, line: &str) -> usize {
    let path = scratch.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{line}\n")).unwrap();
    text.lines().count() + 1
}

#[test]
fn lint_locates_a_broken_shared_file_at_its_line() {
    let scratch = scratch_with(
        "policies.toml",
        "[roles.consulate]\nwithhold = []\n\n[roles.iom]\nwithhold = \"observations\"\n",
    );
    let diagnostics = load_refused(&scratch);
    assert!(
        diagnostics.iter().any(|d| d.file.ends_with("policies.toml")
            && (d.line, d.column) == (5, 12)
            && d.message.contains("expected a sequence")),
        "{diagnostics:#?}"
    );
    let shipped_policies = std::fs::read_to_string(mappings_dir().join("policies.toml")).unwrap();
    for (file, line) in [
        ("codelists/aliases.toml", "[country"),
        ("codelists/countries.csv", "not,a,country"),
    ] {
        let scratch = scratch_with("policies.toml", &shipped_policies);
        let at = add_line(&scratch, file, line);
        let diagnostics = load_refused(&scratch);
        assert!(
            diagnostics
                .iter()
                .any(|d| d.file.ends_with(file) && d.line == at),
            "{diagnostics:#?}"
        );
    }
}

#[test]
fn lint_locates_a_template_problem_at_its_line_in_the_template() {
    let shipped = std::fs::read_to_string(mappings_dir().join("ma.dgsn.toml")).unwrap();
    // An unknown field, on the line of the element that names it.
    let broken = shipped.replacen("{{ data.case_id }}", "{{ data.case_idd }}", 1);
    let diagnostics = load_refused(&scratch_with("ma.dgsn.toml", &broken));
    let unknown = problem_about(&diagnostics, "case_idd is not a field");
    assert_eq!(
        unknown.line,
        line_of(&shipped, "{{ data.case_id }}"),
        "{unknown}"
    );
    // An element left open, where the XML breaks: at the root's end tag.
    let broken = shipped.replacen(
        "poste=\"{{ data.lpc.issuing_post }}\"/>",
        "poste=\"{{ data.lpc.issuing_post }}\">",
        1,
    );
    let diagnostics = load_refused(&scratch_with("ma.dgsn.toml", &broken));
    let malformed = problem_about(&diagnostics, "the XML template is malformed");
    assert_eq!(
        malformed.line,
        line_of(&shipped, "</AvisLaissezPasser>"),
        "{malformed}"
    );
    // An unknown field in a JSON template, on the line that names it.
    let shipped = std::fs::read_to_string(mappings_dir().join("airline.at.toml")).unwrap();
    let broken = shipped.replacen("{{ data.pnr }}", "{{ data.pnrr }}", 1);
    let diagnostics = load_refused(&scratch_with("airline.at.toml", &broken));
    let unknown = problem_about(&diagnostics, "pnrr is not a field");
    assert_eq!(
        unknown.line,
        line_of(&shipped, "\"pnr\": \"{{ data.pnr }}\""),
        "{unknown}"
    );
}

#[test]
fn lint_refuses_a_policy_pattern_that_names_no_field() {
    let scratch = scratch_with(
        "policies.toml",
        "[roles.consulate]\nwithhold = [\"vulnerabilites\"]\n",
    );
    std::fs::copy(
        mappings_dir().join("iom.sn.toml"),
        scratch.path().join("iom.sn.toml"),
    )
    .unwrap();
    let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
    assert!(
        diagnostics.iter().any(|d| d.file.ends_with("policies.toml")
            && (d.line, d.column) == (2, 13)
            && d.message.contains("\"vulnerabilites\" is not a field")),
        "{diagnostics:#?}"
    );
}

#[test]
fn lint_refuses_a_neutral_form_outside_the_fields_values() {
    for (neutral, named) in [
        // A misspelt value would replace nothing.
        (
            "reason = { medicl = \"other\" }",
            "\"medicl\" is not a value of any event type's reason",
        ),
        // A neutral form the schema does not take would write events no one can read.
        (
            "reason = { medical = \"unspecified\" }",
            "\"unspecified\" is not a value of boarding.failed's reason",
        ),
        // A misspelt field.
        (
            "raison = { medical = \"other\" }",
            "\"raison\" is not a field",
        ),
    ] {
        let scratch = scratch_with(
            "policies.toml",
            &format!(
                "[roles.border-police]\nwithhold = []\n[roles.border-police.neutral]\n{neutral}\n"
            ),
        );
        let diagnostics = MappingSet::load(scratch.path()).unwrap_err();
        assert!(
            diagnostics
                .iter()
                .any(|d| d.file.ends_with("policies.toml") && d.message.contains(named)),
            "{neutral}: {diagnostics:#?}"
        );
    }
    let scratch = scratch_with(
        "policies.toml",
        "[roles.border-police]\nwithhold = []\n[roles.border-police.neutral]\nreason = { medical = \"other\" }\n",
    );
    if let Err(diagnostics) = MappingSet::load(scratch.path()) {
        assert!(
            diagnostics
                .iter()
                .all(|d| !d.file.ends_with("policies.toml")),
            "{diagnostics:#?}"
        );
    }
}

/// Decodes a shipped fixture, expecting a field error: (field, message).
fn field_error(partner: &str, name: &str) -> (String, String) {
    let set = shipped();
    match set
        .partner(partner)
        .unwrap()
        .decode(&fixture(partner, name))
    {
        Err(DecodeError::Field { field, message, .. }) => (field, message),
        other => panic!("{partner} {name}: expected a field error, got {other:?}"),
    }
}

/// Decodes a shipped fixture, expecting an event: its data.
fn event_data(partner: &str, name: &str) -> serde_json::Value {
    let set = shipped();
    match set
        .partner(partner)
        .unwrap()
        .decode(&fixture(partner, name))
    {
        Ok(Decoded::Event(mapped)) => mapped.event["data"].clone(),
        other => panic!("{partner} {name}: expected an event, got {other:?}"),
    }
}

#[test]
fn a_pnr_naming_two_cases_is_refused_rather_than_booked_to_the_first() {
    // A family on one PNR: the remarks are the PNR's, so the event cannot say whose it is.
    let (field, message) = field_error("airline.at", "in/error-two-cases-on-one-pnr.json");
    assert_eq!(field, "case_id");
    assert!(message.contains("passenger/remarks"), "{message}");
    assert!(message.contains("different results"), "{message}");
    assert!(!message.contains("RVA-2026"), "{message}");
    // The same case named twice is still one case.
    let data = event_data("airline.at", "in/passenger-boarded-case-remark-twice.json");
    assert_eq!(data["case_id"], "RVA-2026-004211");
}

#[test]
fn a_path_of_more_values_than_the_limit_is_refused_not_read_in_part() {
    // The second case's remark comes after the first thousand values: reading the first
    // thousand only would book the boarding to the first case without a word.
    let mut message: serde_json::Value =
        serde_json::from_slice(&fixture("airline.at", "in/passenger-boarded.json")).unwrap();
    let mut remarks = vec![serde_json::json!("OSI AT RVA-2026-004211")];
    remarks.extend((0..999).map(|_| serde_json::json!("SSR WCHR")));
    remarks.push(serde_json::json!("OSI AT RVA-2026-004212"));
    message["passenger"]["remarks"] = serde_json::Value::Array(remarks);
    let set = shipped();
    let airline = set.partner("airline.at").unwrap();
    match airline.decode(&serde_json::to_vec(&message).unwrap()) {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, "case_id");
            assert_eq!(message, "passenger/remarks gives more than 1000 values");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    // The same where the kinds are told apart: refused, not taken for no kind (or ignored).
    let mut kinds = message.clone();
    kinds["eventType"] =
        serde_json::Value::Array(vec![serde_json::json!("PASSENGER_BOARDED"); 1001]);
    match airline.decode(&serde_json::to_vec(&kinds).unwrap()) {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, "match");
            assert_eq!(message, "eventType gives more than 1000 values");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    // A thousand values are read whole.
    message["passenger"]["remarks"]
        .as_array_mut()
        .unwrap()
        .truncate(1000);
    assert!(matches!(
        airline.decode(&serde_json::to_vec(&message).unwrap()),
        Ok(Decoded::Event(_))
    ));
}

#[test]
fn a_zone_in_more_lines_than_a_path_gives_is_unreadable_not_refused() {
    let line = "      <Ligne><![CDATA[LP04172635SEN9803145M2612029<<<<<<<<<<<<<<<2]]></Ligne>\n";
    let lpc = String::from_utf8(fixture("sn.consulat.casablanca", "in/lpc-issued.xml"))
        .unwrap()
        .replace(line, &line.repeat(1000));
    let set = shipped();
    match set
        .partner("sn.consulat.casablanca")
        .unwrap()
        .decode(lpc.as_bytes())
    {
        Ok(Decoded::Event(mapped)) => {
            let data = &mapped.event["data"];
            assert_eq!(
                data["anomalies"],
                serde_json::json!([{
                    "code": "mrz.unreadable",
                    "message": "Document/ZLA/Ligne gives more than 1000 values",
                    "path": "Document/ZLA/Ligne"
                }])
            );
            assert!(data["lpc"].get("mrz").is_none(), "{data}");
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn a_spelling_of_two_countries_is_said_ambiguous() {
    let lpc = String::from_utf8(fixture("sn.consulat.casablanca", "in/lpc-issued.xml"))
        .unwrap()
        .replace("Sénégalaise", "Congolaise");
    let set = shipped();
    match set
        .partner("sn.consulat.casablanca")
        .unwrap()
        .decode(lpc.as_bytes())
    {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, "holder.nationality");
            assert_eq!(
                message,
                "\"Congolaise\" from Titulaire/Nationalite may be any of COD, COG in code list \
                 country"
            );
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_case_id_that_runs_on_is_not_read_as_a_shorter_one() {
    let (field, message) = field_error("airline.at", "in/error-case-id-runs-on.json");
    assert_eq!(field, "case_id");
    assert_eq!(message, "no value of passenger/remarks matches the pattern");
}

#[test]
fn no_recipient_without_a_need_for_health_data_learns_of_a_medical_offload() {
    // Every partner of a role the catalogue routes boarding.failed to (its routed recipients
    // stand for their roles): the recipients the registry's routing picks, and more.
    let catalogue = passerelle::canonical::Catalogue::embedded().unwrap();
    let roles: Vec<&str> = catalogue
        .get("boarding.failed")
        .unwrap()
        .recipients
        .iter()
        .map(|recipient| match recipient.as_str() {
            "consulate-of-nationality" => "consulate",
            "iom-morocco" | "iom-of-destination" => "iom",
            "operating-airline" => "airline",
            role => role,
        })
        .collect();
    let text = "Unwell at the gate, not fit to fly";
    let mut event: serde_json::Value =
        serde_json::from_slice(&fixture("ma.dgsn", "out/boarding-failed.event.json")).unwrap();
    event["data"]["reason"] = "medical".into();
    event["data"]["reason_text"] = text.into();
    let set = shipped();
    let (mut refused, mut entitled) = (Vec::new(), Vec::new());
    for partner in set.partners().filter(|p| roles.contains(&p.role.as_str())) {
        let encoded = partner.encode(&event).unwrap();
        let mut body = String::from_utf8(encoded.body).unwrap();
        if partner.receives_canonical() {
            // The `withheld` attribute names `data.medical` on every delivery to such a role;
            // that is the policy, not this person's health.
            let mut delivered: serde_json::Value = serde_json::from_str(&body).unwrap();
            delivered.as_object_mut().unwrap().remove("withheld");
            body = delivered.to_string();
        }
        let lower = body.to_lowercase();
        let told = lower.contains("medical") || lower.contains(&text.to_lowercase());
        if encoded.withheld.iter().any(|w| w == "data.medical") {
            assert!(
                !told,
                "{} learns of a medical offload: {body}",
                partner.partner
            );
            refused.push(partner.partner.clone());
        } else {
            assert!(
                body.contains("\"reason\":\"medical\"") && body.contains(text),
                "{} needs the reason: {body}",
                partner.partner
            );
            entitled.push(partner.partner.clone());
        }
    }
    assert_eq!(refused, ["ma.dgsn"]);
    assert_eq!(entitled, ["iom.ma", "iom.sn", "ma.interieur"]);

    // The policy itself, not the DGSN's template, keeps it from the role: a border-police
    // partner that received canonical events would get `other` and no text.
    let policy = passerelle::mapping::policy::Policy::parse(
        &std::fs::read_to_string(mappings_dir().join("policies.toml")).unwrap(),
    )
    .unwrap();
    let mut canonical = event.clone();
    let withheld = policy.apply("border-police", &mut canonical);
    assert_eq!(canonical["data"]["reason"], "other");
    assert!(canonical["data"].get("reason_text").is_none());
    assert!(withheld.contains(&"data.reason_text".to_owned()));
    let mut ministry = event.clone();
    policy.apply("ministry", &mut ministry);
    assert_eq!(ministry["data"]["reason"], "medical");
}

#[test]
fn control_characters_are_refused_at_decode_naming_the_field() {
    // A character reference in XML.
    let (field, message) = field_error("sn.consulat.casablanca", "in/error-control-reference.xml");
    assert_eq!(field, "holder.given_names");
    assert!(message.starts_with("Titulaire/Prenoms contains the control character U+0001"));
    // A C1 control from an ISO-8859-1 byte (0x92, a Windows-1252 apostrophe).
    let (field, message) = field_error("sn.consulat.casablanca", "in/error-latin1-c1-control.xml");
    assert_eq!(field, "holder.family_name");
    assert!(message.starts_with("Titulaire/Nom contains the control character U+0092"));
    // A JSON escape.
    let (field, message) = field_error("iom.ma", "in/error-nul-character.json");
    assert_eq!(field, "person.birth_place");
    assert!(message.starts_with("beneficiary/place_of_birth contains the control character"));
    // A canonical sender: the canonical path.
    let (field, message) = field_error("ma.interieur", "in/error-control-character.json");
    assert_eq!(field, "data.person.family_name");
    assert!(message.contains("U+001B"), "{message}");
    // Raw C0 bytes in XML, in an attribute (the DGSN).
    let set = shipped();
    let dgsn = String::from_utf8(fixture("ma.dgsn", "in/exit-authorisation.xml")).unwrap();
    let raw = dgsn.replace("nom=\"DIOP\"", "nom=\"DI\u{7}OP\"");
    match set.partner("ma.dgsn").unwrap().decode(raw.as_bytes()) {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, "person.family_name");
            assert!(message.starts_with("Etranger/@nom contains"), "{message}");
            assert!(!message.contains("DI"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Tab, line feed and carriage return are text.
    let spaced = dgsn.replace(
        "<Service>Préfecture",
        "<Service>\tPréfecture\r\n de police\n",
    );
    assert!(
        set.partner("ma.dgsn")
            .unwrap()
            .decode(spaced.as_bytes())
            .is_ok()
    );
}

#[test]
fn iom_vulnerabilities_must_be_sent_even_when_there_are_none() {
    // Refused, saying how the value is missing.
    for (name, how) in [
        ("in/error-vulnerabilities-missing.json", "is missing"),
        ("in/error-vulnerabilities-null.json", "is null"),
    ] {
        let (field, message) = field_error("iom.ma", name);
        assert_eq!(field, "vulnerabilities", "{name}");
        assert_eq!(message, format!("vulnerabilities {how}"), "{name}");
    }
    // `[]` says "none": a value, kept as such.
    let data = event_data("iom.ma", "in/case-registered.json");
    assert_eq!(data["vulnerabilities"], serde_json::json!([]));
}

#[test]
fn a_required_list_of_items_given_empty_is_said_empty() {
    let mut booking: serde_json::Value =
        serde_json::from_slice(&fixture("iom.ma", "in/travel-booked.json")).unwrap();
    booking["booking"]["segments"] = serde_json::json!([]);
    let set = shipped();
    match set
        .partner("iom.ma")
        .unwrap()
        .decode(&serde_json::to_vec(&booking).unwrap())
    {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, "segments");
            assert!(message.ends_with("is empty"), "{message}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn json_with_a_key_given_twice_is_malformed() {
    let set = shipped();
    let malformed = |partner: &str, bytes: &[u8]| match set.partner(partner).unwrap().decode(bytes)
    {
        Err(error @ DecodeError::Malformed { .. }) => error.to_string(),
        other => panic!("{partner}: expected malformed JSON, got {other:?}"),
    };
    let message = malformed("iom.ma", &fixture("iom.ma", "in/error-duplicate-key.json"));
    assert!(
        message.contains("the key vulnerabilities is given twice"),
        "{message}"
    );
    // At any depth, in any JSON partner's messages.
    let airline = String::from_utf8(fixture("airline.at", "in/passenger-boarded.json")).unwrap();
    let nested = airline.replace(r#""seat": "23C","#, r#""seat": "23C", "seat": "1A","#);
    let message = malformed("airline.at", nested.as_bytes());
    assert!(
        message.contains("the key passenger/seat is given twice"),
        "{message}"
    );
    // And in canonical events.
    let ministry =
        String::from_utf8(fixture("ma.interieur", "in/identification-requested.json")).unwrap();
    let twice = ministry.replace(r#""sex": "M","#, r#""sex": "M", "given_names": ["Awa"],"#);
    let message = malformed("ma.interieur", twice.as_bytes());
    assert!(
        message.contains("the key data/person/given_names is given twice"),
        "{message}"
    );
}

#[test]
fn an_optional_regex_rule_refuses_a_value_it_cannot_read() {
    // `vol="AT 505"` is there, but neither rule reading it can: the error names it, rather
    // than leaving the flight out and failing later on another path.
    let (field, message) = field_error("ma.dgsn", "in/error-flight-with-space.xml");
    assert_eq!(field, "booking.flight.carrier");
    assert_eq!(message, "no value of Billet/@vol matches the pattern");
}

#[test]
fn an_event_type_is_read_without_surrounding_space_and_never_ignored_for_its_case() {
    let data = event_data("airline.at", "in/passenger-boarded-type-with-space.json");
    assert_eq!(data["case_id"], "RVA-2026-004211");
    let (field, message) = field_error("airline.at", "in/error-event-type-case.json");
    assert_eq!(field, "eventType");
    assert!(message.contains("\"PASSENGER_BOARDED\""), "{message}");
    // Other departure-control events are still acknowledged and not routed.
    let set = shipped();
    let checked_in = set
        .partner("airline.at")
        .unwrap()
        .decode(&fixture("airline.at", "in/ignored-checked-in.json"))
        .unwrap();
    assert!(
        matches!(checked_in, Decoded::Ignored { .. }),
        "{checked_in:?}"
    );
}

#[test]
fn the_envelope_a_transport_adds_does_not_count_against_the_size_limit() {
    let set = shipped();
    let ministry = set.partner("ma.interieur").unwrap();
    let mut event = fixture("ma.interieur", "in/identification-requested.json");
    let limit = passerelle::mapping::DEFAULT_MAX_MESSAGE_BYTES;
    event.resize(limit + 100, b' ');
    assert!(matches!(
        ministry.decode_in_force(&event, event.len(), &|_| true),
        Err(DecodeError::TooLarge { .. })
    ));
    // The same bytes, of which 100 are a binary-mode event's attributes: the body the sender
    // sent is within the limit.
    assert!(matches!(
        ministry.decode_in_force(&event, limit, &|_| true),
        Ok(Decoded::Event(_))
    ));
}

#[test]
fn a_canonical_event_is_one_object_and_its_member_names_are_quoted_cut_short() {
    let set = shipped();
    let ministry = set.partner("ma.interieur").unwrap();
    for not_one_event in ["[]", "\"text\"", "[{}]"] {
        match ministry.decode(not_one_event.as_bytes()) {
            Err(DecodeError::Malformed { message, .. }) => {
                assert!(message.contains("one JSON object"), "{message}")
            }
            other => panic!("{not_one_event}: {other:?}"),
        }
    }
    // A member name is the sender's text: a long one with a control character is named
    // cut short, escaped, and not copied whole into the answer.
    let event =
        String::from_utf8(fixture("ma.interieur", "in/identification-requested.json")).unwrap();
    let name = format!("\u{202e}{}", "k".repeat(300_000));
    let broken = event.replacen(
        "\"data\": {",
        &format!("\"data\": {{\"{name}\": {{\"x\": \"\\u0001\"}},"),
        1,
    );
    assert_ne!(broken, event);
    match ministry.decode(broken.as_bytes()) {
        Err(DecodeError::Field { field, message, .. }) => {
            assert_eq!(field, format!("data.\\u{{202e}}{}….x", "k".repeat(39)));
            assert!(message.len() < 300, "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_consulate_is_never_written_a_sex_its_form_does_not_have() {
    let set = shipped();
    for (consulate, event) in [
        ("sn.consulat.casablanca", "out/lpc-requested.event.json"),
        (
            "ci.ambassade.rabat",
            "out/lpc-requested-vulnerable.event.json",
        ),
    ] {
        let mut event: serde_json::Value =
            serde_json::from_slice(&fixture(consulate, event)).unwrap();
        event["data"]["person"]["sex"] = "X".into();
        match set.partner(consulate).unwrap().encode(&event) {
            Err(error) => assert!(error.to_string().contains("sexes"), "{consulate}: {error}"),
            Ok(encoded) => panic!(
                "{consulate} was written {}",
                String::from_utf8_lossy(&encoded.body)
            ),
        }
    }
}
