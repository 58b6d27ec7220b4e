//! Mapping throughput: partner messages to validated canonical events, on one core.
//!
//! Three workloads, each single-threaded:
//!
//! 1. the mapping engine decoding the Senegal consulate's `LaissezPasserDelivre` XML
//!    (`sn.consulat.casablanca/lpc-issued`): XML parse, rules, MRZ decode and checks, envelope,
//!    schema validation;
//! 2. the baseline: a decoder hand-written for that one message with a quick-xml event loop
//!    (measured faster than `quick_xml::de::from_str` into the same structs, about 2.4x on the
//!    parse alone), producing the same event and validated with the same compiled schemas. For
//!    fairness it also decodes the MRZ with `mrz::decode` and runs the same six consistency
//!    checks, raising the same anomalies. It knows one partner and one message, so it reads
//!    UTF-8 only (the engine also reads ISO-8859-1) and maps the nationality with a one-line
//!    match instead of the country code list. When written, it agreed with the engine on the
//!    `lpc-issued`, `-mrz-disagrees`, `-invalid-mrz` and `-without-mrz` fixtures;
//! 3. the mapping engine decoding the airline's `PASSENGER_BOARDED` JSON, BCBP included.
//!
//! Before measuring, the bench asserts that the baseline's event equals the engine's event,
//! field for field, and that their RFC 8785 bytes are equal. The measured work ends at the
//! validated `serde_json::Value`; JCS serialisation, which costs the same on both sides, is
//! left out so that it does not flatten the ratio.
//!
//! The machine is shared and noisy, so after criterion's report the bench runs its own
//! interleaved measurement (the workloads alternate, round after round) and prints medians and
//! the baseline/engine ratio measured in the same run. Targets: at least 50,000 XML messages a
//! second on one core, schema validation included, and within 2x of the baseline.
//!
//! Run with `cargo bench --bench mapping`.

use criterion::{Criterion, Throughput};

/// The same allocator as the `passerelle` binary, so that the figures are the gateway's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use passerelle::canonical::{SchemaSet, jcs};
use passerelle::mapping::rule::{Native, same_name};
use passerelle::mapping::xml::{XmlDocument, XmlLimits};
use passerelle::mapping::{Decoded, MappingSet, PartnerMapping, mrz};
use quick_xml::events::Event;
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SENEGAL: &str = "sn.consulat.casablanca";
const AIRLINE: &str = "airline.at";
const SENEGAL_FIXTURE: &str = "mappings/fixtures/sn.consulat.casablanca/in/lpc-issued.xml";
const AIRLINE_FIXTURE: &str = "mappings/fixtures/airline.at/in/passenger-boarded.json";

/// The `PASSENGER_BOARDED` sample of the airline's interface spec, used while the fixture file
/// does not exist yet.
const AIRLINE_SAMPLE: &str = r#"{
  "eventType": "PASSENGER_BOARDED",
  "eventId": "AT-DCS-20261120-0505-000112",
  "eventTime": "2026-11-20T09:41:12Z",
  "flight": {"carrier": "AT", "number": "505", "date": "2026-11-20", "origin": "CMN", "destination": "DSS"},
  "passenger": {
    "surname": "DIOP",
    "givenName": "MAMADOU LAMINE",
    "pnr": "K7Q2XM",
    "seat": "23C",
    "checkinSequence": 112,
    "remarks": ["OSI AT RVA-2026-004211", "SSR WCHR"]
  },
  "bcbp": "M1DIOP/MAMADOU LAMINE EK7Q2XM CMNDSSAT 0505 324Y023C0112 100"
}
"#;

/// Interleaved summary: rounds, and the time each workload runs in each round.
const ROUNDS: usize = 15;
const ROUND_TIME: Duration = Duration::from_millis(200);
/// The breakdown of the engine's time on the Senegal message, measured the same way.
const PART_ROUNDS: usize = 9;
const PART_TIME: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------------------
// The hand-written baseline for the Senegal consulate's LaissezPasserDelivre.
// ------------------------------------------------------------------------------------------

/// `<LaissezPasserDelivre>`, as typed fields (the raw text of each element).
#[derive(Debug, Default)]
struct LaissezPasserDelivre {
    reference: String,
    dossier: String,
    nom: String,
    prenoms: String,
    sexe: String,
    date_naissance: String,
    lieu_naissance: String,
    nationalite: String,
    numero: String,
    date_delivrance: String,
    date_expiration: String,
    poste: String,
    lignes: Vec<String>,
}

/// Where the reader is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Root,
    Reference,
    Dossier,
    Titulaire,
    Nom,
    Prenoms,
    Sexe,
    DateNaissance,
    LieuNaissance,
    Nationalite,
    Document,
    Numero,
    DateDelivrance,
    DateExpiration,
    Poste,
    Zla,
    Ligne,
    Other,
}

/// The envelope values that the mapping engine derives from the mapping file; a decoder
/// written for one partner and one message has them as constants.
struct Baseline<'a> {
    schemas: &'a SchemaSet,
    mapping_hash: String,
}

impl Baseline<'_> {
    /// Bytes to a validated `ma.rva.lpc.issued` event, or why not.
    fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let message = read_xml(text)?;
        let event = self.event(&message)?;
        self.schemas
            .validate(&event)
            .map_err(|violations| format!("schema: {violations:?}"))?;
        Ok(event)
    }

    fn event(&self, m: &LaissezPasserDelivre) -> Result<Value, String> {
        let required = |name: &str, value: &str| -> Result<String, String> {
            let value = value.trim();
            if value.is_empty() {
                Err(format!("{name} is missing"))
            } else {
                Ok(value.to_owned())
            }
        };
        let family_name = required("Titulaire/Nom", &m.nom)?;
        let given_names: Vec<Value> = m
            .prenoms
            .split(' ')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| Value::String(name.to_owned()))
            .collect();
        if given_names.is_empty() {
            return Err("Titulaire/Prenoms is missing".into());
        }
        let birth_date =
            iso_date(&m.date_naissance).ok_or("Titulaire/DateNaissance is not dd/mm/yyyy")?;
        // Hand-written for this one partner: its one nationality, as a French demonym.
        let nationality = match m.nationalite.trim() {
            "Sénégalaise" | "Sénégalais" | "SEN" => "SEN",
            _ => return Err("Titulaire/Nationalite is not Senegalese".into()),
        };
        let number = required("Document/Numero", &m.numero)?;
        let issued_on =
            iso_date(&m.date_delivrance).ok_or("Document/DateDelivrance is not dd/mm/yyyy")?;
        let expires_on =
            iso_date(&m.date_expiration).ok_or("Document/DateExpiration is not dd/mm/yyyy")?;
        let lines: Vec<&str> = m
            .lignes
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();

        // The MRZ is decoded and checked against the fields, like the engine does, with the
        // same decoder and the same name comparison.
        let mut anomalies = Vec::new();
        if !lines.is_empty() {
            let anomaly = |code: &str, message: String, path: &str| json!({ "code": code, "message": message, "path": path });
            match mrz::decode(&lines) {
                Err(error) => anomalies.push(anomaly(
                    "mrz.unreadable",
                    error.to_string(),
                    "Document/ZLA/Ligne",
                )),
                Ok(zone) => {
                    let failed: Vec<&str> = zone
                        .checks
                        .iter()
                        .filter(|c| !c.valid)
                        .map(|c| c.field)
                        .collect();
                    if !failed.is_empty() {
                        let message =
                            format!("MRZ check digits do not verify: {}", failed.join(", "));
                        anomalies.push(anomaly("mrz.check_digit", message, "Document/ZLA/Ligne"));
                    }
                    let mut check =
                        |agree: bool, code: &str, message: &str, left: &str, right: &str| {
                            if !agree {
                                anomalies.push(anomaly(
                                    code,
                                    message.into(),
                                    &format!("{left} / {right}"),
                                ));
                            }
                        };
                    check(
                        zone.document_number == number,
                        "mrz.document_number_mismatch",
                        "the MRZ document number differs from the LPC number",
                        "$mrz.document_number",
                        "$event.data.lpc.number",
                    );
                    check(
                        same_name(
                            &Value::String(zone.surname.clone()),
                            &Value::String(family_name.clone()),
                        ),
                        "mrz.surname_mismatch",
                        "the MRZ surname differs from the holder's family name",
                        "$mrz.surname",
                        "$event.data.holder.family_name",
                    );
                    let mrz_given: Vec<Value> = zone
                        .given_names
                        .iter()
                        .cloned()
                        .map(Value::String)
                        .collect();
                    check(
                        same_name(&Value::Array(mrz_given), &Value::Array(given_names.clone())),
                        "mrz.given_names_mismatch",
                        "the MRZ given names differ from the holder's given names",
                        "$mrz.given_names",
                        "$event.data.holder.given_names",
                    );
                    check(
                        zone.birth_date_iso
                            .as_ref()
                            .is_none_or(|d| *d == birth_date),
                        "mrz.birth_date_mismatch",
                        "the MRZ birth date differs from the holder's birth date",
                        "$mrz.birth_date_iso",
                        "$event.data.holder.birth_date",
                    );
                    check(
                        zone.expiry_date_iso
                            .as_ref()
                            .is_none_or(|d| *d == expires_on),
                        "mrz.expiry_mismatch",
                        "the MRZ expiry date differs from the LPC expiry date",
                        "$mrz.expiry_date_iso",
                        "$event.data.lpc.expires_on",
                    );
                    check(
                        zone.nationality == nationality,
                        "mrz.nationality_mismatch",
                        "the MRZ nationality differs from the holder's nationality",
                        "$mrz.nationality",
                        "$event.data.holder.nationality",
                    );
                }
            }
        }

        let mut holder = Map::new();
        holder.insert("family_name".into(), Value::String(family_name));
        holder.insert("given_names".into(), Value::Array(given_names));
        optional(&mut holder, "sex", &m.sexe);
        holder.insert("birth_date".into(), Value::String(birth_date));
        optional(&mut holder, "birth_place", &m.lieu_naissance);
        holder.insert("nationality".into(), Value::String(nationality.into()));
        let mut lpc = Map::new();
        lpc.insert("number".into(), Value::String(number));
        lpc.insert("issued_on".into(), Value::String(issued_on));
        lpc.insert("expires_on".into(), Value::String(expires_on));
        optional(&mut lpc, "issuing_post", &m.poste);
        if !lines.is_empty() {
            lpc.insert(
                "mrz".into(),
                Value::Array(
                    lines
                        .iter()
                        .map(|l| Value::String((*l).to_owned()))
                        .collect(),
                ),
            );
        }
        let case_id = required("DossierRVA", &m.dossier)?;
        let mut data = Map::new();
        data.insert("case_id".into(), Value::String(case_id.clone()));
        data.insert("holder".into(), Value::Object(holder));
        data.insert("lpc".into(), Value::Object(lpc));
        if !anomalies.is_empty() {
            data.insert("anomalies".into(), Value::Array(anomalies));
        }
        Ok(json!({
            "specversion": "1.0",
            "id": required("Reference", &m.reference)?,
            "source": "urn:partner:sn.consulat.casablanca",
            "type": "ma.rva.lpc.issued",
            "subject": case_id,
            "datacontenttype": "application/json",
            "dataschema": "https://schemas.passerelle.ma/v1/events/lpc.issued.schema.json",
            "mappingid": "sn.consulat.casablanca/lpc-issued",
            "mappinghash": self.mapping_hash,
            "data": Value::Object(data),
        }))
    }
}

fn optional(object: &mut Map<String, Value>, name: &str, value: &str) {
    let value = value.trim();
    if !value.is_empty() {
        object.insert(name.into(), Value::String(value.to_owned()));
    }
}

/// `dd/mm/yyyy` to `yyyy-mm-dd`, refusing dates that do not exist.
fn iso_date(text: &str) -> Option<String> {
    let b = text.trim().as_bytes();
    if b.len() != 10 || b[2] != b'/' || b[5] != b'/' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (day, month, year) = (number(0..2)?, number(3..5)?, number(6..10)?);
    chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?;
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// A quick-xml event loop over the one message shape, refusing DOCTYPEs and unknown entities
/// as the engine does.
fn read_xml(text: &str) -> Result<LaissezPasserDelivre, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut message = LaissezPasserDelivre::default();
    let mut stack: Vec<Tag> = Vec::with_capacity(8);
    let mut seen_root = false;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(start) => {
                let tag = match (stack.last(), start.local_name().into_inner()) {
                    (None, "LaissezPasserDelivre") if !seen_root => Tag::Root,
                    (None, _) => return Err("not a LaissezPasserDelivre".into()),
                    (Some(Tag::Root), "Reference") => Tag::Reference,
                    (Some(Tag::Root), "DossierRVA") => Tag::Dossier,
                    (Some(Tag::Root), "Titulaire") => Tag::Titulaire,
                    (Some(Tag::Root), "Document") => Tag::Document,
                    (Some(Tag::Titulaire), "Nom") => Tag::Nom,
                    (Some(Tag::Titulaire), "Prenoms") => Tag::Prenoms,
                    (Some(Tag::Titulaire), "Sexe") => Tag::Sexe,
                    (Some(Tag::Titulaire), "DateNaissance") => Tag::DateNaissance,
                    (Some(Tag::Titulaire), "LieuNaissance") => Tag::LieuNaissance,
                    (Some(Tag::Titulaire), "Nationalite") => Tag::Nationalite,
                    (Some(Tag::Document), "Numero") => Tag::Numero,
                    (Some(Tag::Document), "DateDelivrance") => Tag::DateDelivrance,
                    (Some(Tag::Document), "DateExpiration") => Tag::DateExpiration,
                    (Some(Tag::Document), "Poste") => Tag::Poste,
                    (Some(Tag::Document), "ZLA") => Tag::Zla,
                    (Some(Tag::Zla), "Ligne") => {
                        message.lignes.push(String::new());
                        Tag::Ligne
                    }
                    _ => Tag::Other,
                };
                seen_root = true;
                if stack.len() >= 32 {
                    return Err("too deep".into());
                }
                stack.push(tag);
            }
            Event::Empty(_) if stack.is_empty() => return Err("not a LaissezPasserDelivre".into()),
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(text) => append(&mut message, stack.last(), &text.xml10_content()),
            Event::CData(data) => append(&mut message, stack.last(), &data.xml10_content()),
            Event::GeneralRef(reference) => {
                let character = match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(character) => character.to_string(),
                    None => {
                        let name = reference.xml10_content();
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("undefined entity &{name};"))?
                            .to_owned()
                    }
                };
                append(&mut message, stack.last(), &character);
            }
            Event::DocType(_) => return Err("DOCTYPE refused".into()),
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err("not a complete LaissezPasserDelivre".into());
    }
    Ok(message)
}

fn append(message: &mut LaissezPasserDelivre, tag: Option<&Tag>, content: &str) {
    let field = match tag {
        Some(Tag::Reference) => &mut message.reference,
        Some(Tag::Dossier) => &mut message.dossier,
        Some(Tag::Nom) => &mut message.nom,
        Some(Tag::Prenoms) => &mut message.prenoms,
        Some(Tag::Sexe) => &mut message.sexe,
        Some(Tag::DateNaissance) => &mut message.date_naissance,
        Some(Tag::LieuNaissance) => &mut message.lieu_naissance,
        Some(Tag::Nationalite) => &mut message.nationalite,
        Some(Tag::Numero) => &mut message.numero,
        Some(Tag::DateDelivrance) => &mut message.date_delivrance,
        Some(Tag::DateExpiration) => &mut message.date_expiration,
        Some(Tag::Poste) => &mut message.poste,
        Some(Tag::Ligne) => match message.lignes.last_mut() {
            Some(line) => line,
            None => return,
        },
        _ => return,
    };
    field.push_str(content);
}

// ------------------------------------------------------------------------------------------
// Workloads and measurement.
// ------------------------------------------------------------------------------------------

fn engine_event(partner: &PartnerMapping, bytes: &[u8]) -> Result<Value, String> {
    match partner.decode(bytes) {
        Ok(Decoded::Event(mapped)) => Ok(mapped.event),
        Ok(Decoded::Ignored {
            mapping_id, reason, ..
        }) => Err(format!("ignored by {mapping_id}: {reason}")),
        Err(error) => Err(error.to_string()),
    }
}

fn read_input(relative: &str) -> Option<Vec<u8>> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).ok()
}

/// One workload of the interleaved summary.
struct Workload<'a> {
    label: String,
    run: Box<dyn FnMut() + 'a>,
    rates: Vec<f64>,
}

impl<'a> Workload<'a> {
    fn new(label: String, run: impl FnMut() + 'a) -> Self {
        Self {
            label,
            run: Box::new(run),
            rates: Vec::new(),
        }
    }
}

/// Runs the workload for about `time`, returning messages per second.
fn measure(run: &mut dyn FnMut(), time: Duration) -> f64 {
    let start = Instant::now();
    let mut count = 0u64;
    loop {
        for _ in 0..32 {
            run();
        }
        count += 32;
        let elapsed = start.elapsed();
        if elapsed >= time {
            return count as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn main() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load(&dir).unwrap_or_else(|diagnostics| {
        panic!(
            "the mappings do not load: {}",
            diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let senegal = set
        .partner(SENEGAL)
        .expect("the Senegal consulate mapping is loaded");
    let xml = read_input(SENEGAL_FIXTURE).expect("the Senegal fixture is readable");
    let baseline = Baseline {
        schemas: set.schemas(),
        mapping_hash: senegal.hash.clone(),
    };

    // The comparison is only honest if both sides produce the same event.
    let engine = engine_event(senegal, &xml).expect("the engine maps the Senegal fixture");
    let hand_written = baseline
        .decode(&xml)
        .expect("the baseline decodes the Senegal fixture");
    assert_eq!(
        hand_written, engine,
        "the baseline's event must equal the mapping engine's event"
    );
    assert_eq!(
        jcs::to_vec(&hand_written),
        jcs::to_vec(&engine),
        "the canonical bytes must be equal"
    );

    // The airline: its mapping and fixture may not exist yet. Say so loudly; never skip quietly.
    let (json_input, json_origin) = match read_input(AIRLINE_FIXTURE) {
        Some(bytes) => (bytes, AIRLINE_FIXTURE),
        None => (
            AIRLINE_SAMPLE.as_bytes().to_vec(),
            "the sample of /work/shared/partners/airline.at.md (no fixture file yet)",
        ),
    };
    let airline = match set.partner(AIRLINE) {
        None => Err(format!("no {AIRLINE} mapping in {}", dir.display())),
        Some(partner) => match engine_event(partner, &json_input) {
            Ok(event) if event["type"] == "ma.rva.boarding.confirmed" => Ok(partner),
            Ok(event) => Err(format!(
                "PASSENGER_BOARDED mapped to {}, not boarding.confirmed",
                event["type"]
            )),
            Err(error) => Err(format!("PASSENGER_BOARDED does not map: {error}")),
        },
    };
    match &airline {
        Ok(_) => eprintln!("airline input: {json_origin}"),
        Err(why) => eprintln!("\n*** airline.at PASSENGER_BOARDED is NOT MEASURED: {why} ***\n"),
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    {
        let mut group =
            criterion.benchmark_group("engine sn.consulat.casablanca LaissezPasserDelivre xml");
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode+validate", |b| {
            b.iter(|| engine_event(senegal, black_box(&xml)).unwrap())
        });
        group.finish();
    }
    {
        let mut group =
            criterion.benchmark_group("baseline hand-written quick-xml LaissezPasserDelivre xml");
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode+validate", |b| {
            b.iter(|| baseline.decode(black_box(&xml)).unwrap())
        });
        group.finish();
    }
    if let Ok(partner) = airline {
        let mut group = criterion.benchmark_group("engine airline.at PASSENGER_BOARDED json+bcbp");
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode+validate", |b| {
            b.iter(|| engine_event(partner, black_box(&json_input)).unwrap())
        });
        group.finish();
    }
    criterion.final_summary();

    // `cargo test --benches` runs each benchmark once, as a test; the summary is for `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }

    let mut workloads = vec![
        Workload::new(format!("mapping {SENEGAL} LaissezPasserDelivre"), || {
            black_box(engine_event(senegal, black_box(&xml)).unwrap());
        }),
        Workload::new("baseline hand-written quick-xml".into(), || {
            black_box(baseline.decode(black_box(&xml)).unwrap());
        }),
    ];
    if let Ok(partner) = airline {
        let json_input = &json_input;
        workloads.push(Workload::new(
            format!("mapping {AIRLINE} PASSENGER_BOARDED"),
            move || {
                black_box(engine_event(partner, black_box(json_input)).unwrap());
            },
        ));
    }
    eprintln!(
        "\ninterleaved summary: {ROUNDS} rounds of {} ms per workload, one thread, order rotated each round...",
        ROUND_TIME.as_millis()
    );
    interleave(&mut workloads, ROUNDS, ROUND_TIME);
    let engine_rate = median(&workloads[0].rates);
    let baseline_rate = median(&workloads[1].rates);
    println!();
    println!(
        "{}: {engine_rate:.0} msg/s (median of {ROUNDS} rounds, one core; {}; {:.2} µs/msg)",
        workloads[0].label,
        spread(&workloads[0].rates),
        1e6 / engine_rate
    );
    println!(
        "{}: {baseline_rate:.0} msg/s ({}; {:.2} µs/msg)",
        workloads[1].label,
        spread(&workloads[1].rates),
        1e6 / baseline_rate
    );
    let ratio = baseline_rate / engine_rate;
    let ratios: Vec<f64> = workloads[1]
        .rates
        .iter()
        .zip(&workloads[0].rates)
        .map(|(b, e)| b / e)
        .collect();
    println!(
        "ratio baseline/mapping: {ratio:.2}x (target <= 2x; median of per-round ratios {:.2}x){}",
        median(&ratios),
        if ratio <= 2.0 { "" } else { "  MISSED" }
    );
    println!(
        "target >= 50000 msg/s for {SENEGAL}: {}",
        if engine_rate >= 50_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    match workloads.get(2) {
        Some(workload) => {
            let rate = median(&workload.rates);
            println!(
                "{}: {rate:.0} msg/s ({}; {:.2} µs/msg)",
                workload.label,
                spread(&workload.rates),
                1e6 / rate
            );
        }
        None => println!(
            "mapping {AIRLINE} PASSENGER_BOARDED: NOT MEASURED ({})",
            airline.err().unwrap_or_default()
        ),
    }
    drop(workloads);
    breakdown(senegal, &baseline, &xml, &engine);
}

/// Where the engine's time goes on the Senegal message, each stage alone on its own input,
/// interleaved like the summary. The stages do not add up exactly to the whole: the whole also
/// builds the envelope, clones a few strings and drops what it made.
fn breakdown(senegal: &PartnerMapping, baseline: &Baseline<'_>, xml: &[u8], event: &Value) {
    let document = XmlDocument::parse(xml, XmlLimits::default()).expect("the fixture parses");
    let native = Native::Xml(&document, document.root());
    let mapping = senegal
        .inbound()
        .iter()
        .find(|m| {
            m.matcher
                .matches(native)
                .expect("no path of the fixture gives too many values")
        })
        .expect("a kind matches the fixture");
    let message =
        read_xml(std::str::from_utf8(xml).expect("UTF-8")).expect("the baseline reads the fixture");
    let lines: Vec<&str> = message.lignes.iter().map(|l| l.trim()).collect();
    let schemas = baseline.schemas;
    let mut parts = vec![
        Workload::new("engine, whole decode".into(), || {
            black_box(engine_event(senegal, black_box(xml)).unwrap());
        }),
        Workload::new("engine: XML parse (XmlDocument::parse)".into(), || {
            black_box(XmlDocument::parse(black_box(xml), XmlLimits::default()).unwrap());
        }),
        Workload::new(
            "engine: match + rules + MRZ + checks (InboundMapping::apply)".into(),
            || {
                let native = Native::Xml(black_box(&document), document.root());
                let _ = black_box(mapping.matcher.matches(native));
                black_box(mapping.apply(native).unwrap());
            },
        ),
        Workload::new(
            "  of which MRZ decode + to_value (mrz::decode)".into(),
            || {
                let zone = mrz::decode(black_box(&lines)).unwrap();
                black_box(serde_json::to_value(zone).unwrap());
            },
        ),
        Workload::new(
            "both: schema validation (SchemaSet::validate)".into(),
            || {
                black_box(schemas.validate(black_box(event))).unwrap();
            },
        ),
        Workload::new("baseline: XML read (quick-xml event loop)".into(), || {
            black_box(read_xml(black_box(std::str::from_utf8(xml).unwrap())).unwrap());
        }),
        Workload::new("baseline: fields + MRZ + checks + event".into(), || {
            black_box(baseline.event(black_box(&message)).unwrap());
        }),
        Workload::new(
            "not measured above: JCS (MappedEvent::to_canonical_json)".into(),
            || {
                black_box(jcs::to_vec(black_box(event)));
            },
        ),
    ];
    eprintln!(
        "\nbreakdown of the Senegal message: {PART_ROUNDS} rounds of {} ms per stage...",
        PART_TIME.as_millis()
    );
    interleave(&mut parts, PART_ROUNDS, PART_TIME);
    println!();
    println!(
        "breakdown, {SENEGAL} LaissezPasserDelivre (median µs/msg over {PART_ROUNDS} rounds):"
    );
    for part in &parts {
        println!("  {:>7.2} µs  {}", 1e6 / median(&part.rates), part.label);
    }
}

/// Runs every workload for `time` per round, rotating the order each round.
fn interleave(workloads: &mut [Workload<'_>], rounds: usize, time: Duration) {
    let count = workloads.len();
    for round in 0..rounds {
        for offset in 0..count {
            let workload = &mut workloads[(round + offset) % count];
            let rate = measure(&mut workload.run, time);
            workload.rates.push(rate);
        }
    }
}

fn spread(rates: &[f64]) -> String {
    let (low, high) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    format!("min {low:.0}, max {high:.0}")
}
