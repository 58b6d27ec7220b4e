//! Runs the BCBP and MRZ decoders over every vector in `tests/vectors/bcbp.txt` and
//! `tests/vectors/mrz.txt` (see `tests/vectors/README.md` for their sources).

use passerelle::mapping::{bcbp, mrz};
use std::collections::BTreeMap;

/// The text of a vector file.
fn vectors(name: &str) -> String {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `ID|string` lines, keyed by the first word of the ID; the string keeps its spaces.
fn bcbp_vectors() -> BTreeMap<String, String> {
    let text = vectors("bcbp.txt");
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    lines
        .map(|l| {
            let (id, pass) = l.split_once('|').expect("ID|string");
            (
                id.split_whitespace().next().expect("ID").to_owned(),
                pass.to_owned(),
            )
        })
        .collect()
}

/// Groups of MRZ lines, keyed by the first word of the comment line just above each group.
fn mrz_vectors() -> BTreeMap<String, Vec<String>> {
    let text = vectors("mrz.txt");
    let (mut groups, mut label) = (BTreeMap::<String, Vec<String>>::new(), String::new());
    let mut previous_was_comment = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            label = comment
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            previous_was_comment = true;
        } else {
            assert!(
                previous_was_comment || groups.contains_key(&label),
                "unlabelled {line}"
            );
            groups
                .entry(label.clone())
                .or_default()
                .push(line.to_owned());
            previous_was_comment = false;
        }
    }
    groups
}

/// A fully populated leg with passenger status `1`.
fn leg(
    pnr: &str,
    route: (&str, &str),
    (carrier, flight_number): (&str, &str),
    day_of_year: u16,
    compartment: &str,
    seat: &str,
    sequence: u32,
) -> bcbp::Leg {
    bcbp::Leg {
        pnr: pnr.into(),
        from: route.0.into(),
        to: route.1.into(),
        carrier: carrier.into(),
        flight_number: flight_number.into(),
        day_of_year,
        compartment: compartment.into(),
        seat: Some(seat.into()),
        sequence: Some(sequence),
        passenger_status: Some("1".into()),
    }
}

#[test]
fn bcbp_vectors_decode_or_are_rejected() {
    let all = bcbp_vectors();
    let ids: Vec<_> = all.keys().map(String::as_str).collect();
    assert_eq!(ids, ["A1", "A2", "B1", "C1", "E1", "E4", "X1", "X2"]);
    let decode = |id: &str| bcbp::decode(&all[id]).unwrap_or_else(|e| panic!("{id} rejected: {e}"));

    let a1 = decode("A1");
    let desmarais = |legs| bcbp::BoardingPass {
        legs_count: u8::try_from(Vec::len(&legs)).unwrap(),
        passenger_name: "DESMARAIS/LUC".into(),
        surname: "DESMARAIS".into(),
        given_names: "LUC".into(),
        electronic_ticket: true,
        legs,
    };
    let yul_fra = leg("ABC123", ("YUL", "FRA"), ("AC", "834"), 326, "J", "1A", 25);
    assert_eq!(a1, desmarais(vec![yul_fra.clone()]));

    let a2 = decode("A2");
    let first = bcbp::Leg {
        day_of_year: 226,
        compartment: "F".into(),
        ..yul_fra
    };
    let second = leg("DEF456", ("FRA", "GVA"), ("LH", "3664"), 227, "C", "12C", 2);
    assert_eq!(a2, desmarais(vec![first, second]));

    for id in ["B1", "C1"] {
        assert_eq!(decode(id).legs.len(), 1, "{id}");
    }
    let e1 = decode("E1");
    let routes: Vec<_> = e1
        .legs
        .iter()
        .map(|l| (l.from.as_str(), l.to.as_str()))
        .collect();
    assert_eq!(routes, [("YUL", "FRA"), ("FRA", "GVA")]);
    assert_eq!(
        (e1.legs[1].seat.as_deref(), e1.legs[1].sequence),
        (Some("12C"), Some(2))
    );

    let e4 = decode("E4");
    let e4_leg = &e4.legs[0];
    assert_eq!(
        (e4.surname.as_str(), e4.given_names.as_str()),
        ("DOE", "JOHN")
    );
    assert_eq!(
        (
            e4_leg.from.as_str(),
            e4_leg.to.as_str(),
            e4_leg.flight_number.as_str()
        ),
        ("TXL", "BRU", "2592")
    );
    assert_eq!(
        (e4_leg.day_of_year, e4_leg.compartment.as_str()),
        (110, "Y")
    );
    assert_eq!(
        (&e4_leg.seat, e4_leg.sequence, &e4_leg.passenger_status),
        (&None, None, &None)
    );

    for (id, pass) in all.iter().filter(|(id, _)| id.starts_with('X')) {
        assert!(bcbp::decode(pass).is_err(), "{id} accepted");
    }
    let x1 = bcbp::BcbpError::MissingLeg {
        declared: 2,
        found: 1,
        offset: 60,
    };
    assert_eq!(bcbp::decode(&all["X1"]), Err(x1));
    let x2 = bcbp::decode(&all["X2"]).unwrap_err().to_string();
    assert_eq!(
        x2,
        "input too short: electronic ticket indicator needs 1 byte(s) at offset 22, but the input ends at 22"
    );
}

#[test]
fn mrz_vectors_decode_with_their_checks() {
    let all = mrz_vectors();
    let ids: Vec<_> = all.keys().map(String::as_str).collect();
    assert_eq!(ids, ["LPC1", "LPC2", "LPC3", "T3a", "T3b", "TD1"]);
    let decode = |id: &str| {
        let lines: Vec<_> = all[id].iter().map(String::as_str).collect();
        mrz::decode(&lines).unwrap_or_else(|e| panic!("{id} rejected: {e}"))
    };

    for id in ["T3a", "T3b", "LPC1", "LPC2", "TD1"] {
        let decoded = decode(id);
        assert!(
            decoded.valid && decoded.checks.iter().all(|c| c.valid),
            "{id}: {:?}",
            decoded.checks
        );
    }

    let lpc3 = decode("LPC3");
    let failed: Vec<_> = lpc3
        .checks
        .iter()
        .filter(|c| !c.valid)
        .map(|c| c.field)
        .collect();
    assert_eq!(failed, ["birth_date", "composite"]);
    assert!(!lpc3.valid);

    let t3a = decode("T3a");
    assert_eq!(t3a.format, mrz::MrzFormat::Td3);
    assert_eq!(
        (t3a.document_code.as_str(), t3a.issuing_state.as_str()),
        ("P", "UTO")
    );
    assert_eq!(
        (t3a.surname.as_str(), t3a.given_names.join(" ")),
        ("ERIKSSON", "ANNA MARIA".into())
    );
    assert_eq!(
        (t3a.document_number.as_str(), t3a.nationality.as_str()),
        ("L898902C3", "UTO")
    );
    assert_eq!(t3a.birth_date_iso.as_deref(), Some("1974-08-12"));
    assert_eq!(
        (t3a.sex.as_str(), t3a.expiry_date_iso.as_deref()),
        ("F", Some("2012-04-15"))
    );
    assert_eq!(t3a.optional_data, "ZE184226B");

    let t3b = decode("T3b");
    assert_eq!(
        (t3b.issuing_state.as_str(), t3b.nationality.as_str()),
        ("D", "D")
    );
    assert_eq!(
        (t3b.surname.as_str(), t3b.optional_data.as_str()),
        ("MUSTERMANN", "")
    );

    let lpc1 = decode("LPC1");
    assert_eq!(
        (lpc1.document_code.as_str(), lpc1.surname.as_str()),
        ("PL", "DIOP")
    );
    assert_eq!(lpc1.given_names, ["MAMADOU", "LAMINE"]);
    assert_eq!(lpc1.birth_date_iso.as_deref(), Some("1998-03-14"));

    let td1 = decode("TD1");
    assert_eq!(td1.format, mrz::MrzFormat::Td1);
    assert_eq!(
        (td1.document_code.as_str(), td1.document_number.as_str()),
        ("I", "D23145890")
    );
    assert_eq!(
        (td1.surname.as_str(), td1.given_names.join(" ")),
        ("ERIKSSON", "ANNA MARIA".into())
    );
    assert_eq!(td1.birth_date_iso.as_deref(), Some("1974-08-12"));
    assert_eq!(td1.checks.len(), 4);
}

#[test]
fn mrz_check_digit_examples_of_doc_9303() {
    assert_eq!(mrz::check_digit("520727"), Some(3));
    assert_eq!(mrz::check_digit("AB2134<<<"), Some(5));
}
