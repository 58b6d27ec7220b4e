//! Decoder for the machine-readable zone (MRZ) of travel documents, as specified by ICAO
//! Doc 9303 (8th edition): Part 3 (check digits), Part 4 (TD3: passports and laissez-passer,
//! 2 lines of 44) and Part 5 (TD1: identity cards, 3 lines of 30).
//!
//! This module owns the decoding of MRZ lines into an [`Mrz`]. It is a pure decoder: no I/O,
//! no logging, and it never panics on input. Structural problems (line count or length,
//! characters outside `A-Z0-9<`, non-numeric dates, unknown sex) are [`MrzError`]s; bad check
//! digits are not errors but are reported in [`Mrz::checks`].

use chrono::NaiveDate;
use serde::Serialize;

/// The document layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MrzFormat {
    /// Size-1 card: 3 lines of 30 characters.
    Td1,
    /// Passport size: 2 lines of 44 characters.
    Td3,
}

/// A decoded MRZ. Filler characters `<` are stripped from the text fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mrz {
    /// The layout the lines were decoded as.
    pub format: MrzFormat,
    /// Document code, e.g. `P`, `PL`, `I`.
    pub document_code: String,
    /// Issuing state or organisation, e.g. `SEN`, `D`.
    pub issuing_state: String,
    /// Primary identifier, with `<` between its components replaced by spaces.
    pub surname: String,
    /// Secondary identifier, split into its components.
    pub given_names: Vec<String>,
    /// Whether [`Self::given_names`] may be the beginnings of the holder's given names: the
    /// name field is filled to its last position with a letter and holds given names. ICAO
    /// 9303 cuts the given names first when the names do not fit, and then ends the field
    /// with a letter; names that fit the field exactly read the same way.
    pub given_names_truncated: bool,
    /// Whether [`Self::surname`] may be the beginning of the holder's surname: the field is
    /// full, and either its given names are initials or absent, or the surname fills half of
    /// it or more. ICAO 9303 leaves the way of cutting to the issuing State, whose examples
    /// cut a long surname while keeping given names; a short surname before whole given names
    /// (`BA<<MOUHAMADOU<…`) was not cut.
    pub surname_truncated: bool,
    /// Document number, including the overflow of long TD1 numbers.
    pub document_number: String,
    /// Nationality, e.g. `SEN`, `D`.
    pub nationality: String,
    /// Date of birth as encoded, `YYMMDD`.
    pub birth_date: String,
    /// Date of birth as `YYYY-MM-DD`, in the latest century not after the expiry year;
    /// `None` if the digits are not a real date.
    pub birth_date_iso: Option<String>,
    /// `M`, `F`, or `X` when unspecified (`<`).
    pub sex: String,
    /// Date of expiry as encoded, `YYMMDD`.
    pub expiry_date: String,
    /// Date of expiry as `YYYY-MM-DD` (always 20YY); `None` if the digits are not a real date.
    pub expiry_date_iso: Option<String>,
    /// Optional data. For TD1, the line-1 and line-2 elements joined by a space when both
    /// are present.
    pub optional_data: String,
    /// The outcome of every check digit of the layout.
    pub checks: Vec<MrzCheck>,
    /// Whether every check digit is valid.
    pub valid: bool,
}

/// The outcome of one check digit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MrzCheck {
    /// The field checked: `document_number`, `birth_date`, `expiry_date`, `optional_data`
    /// (TD3 only) or `composite`.
    pub field: &'static str,
    /// Whether the check digit matches the field.
    pub valid: bool,
}

/// Why MRZ lines could not be decoded. Lines and columns count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MrzError {
    /// Neither 2 lines (TD3) nor 3 lines (TD1).
    #[error("expected 2 lines (TD3) or 3 lines (TD1), got {found}")]
    LineCount {
        /// Number of lines given.
        found: usize,
    },
    /// A line does not have the length of its layout.
    #[error("line {line} has {found} characters, expected {expected}")]
    LineLength {
        /// The line.
        line: usize,
        /// Length required by the layout.
        expected: usize,
        /// Length found, in characters.
        found: usize,
    },
    /// A character outside `A-Z`, `0-9` and `<`.
    // The character is not quoted, like the fields' values: it is a letter of the holder's data.
    #[error("line {line}, column {column}: only A-Z, 0-9 and < are allowed in an MRZ")]
    InvalidChar {
        /// The line.
        line: usize,
        /// The column.
        column: usize,
        /// The character found.
        found: char,
    },
    /// A field whose value the layout does not allow.
    // The value is not quoted: an MRZ holds personal data, and messages reach logs and anomalies.
    #[error("line {line}, column {column}: {field} is not {expected}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// The line.
        line: usize,
        /// The column where the field starts.
        column: usize,
        /// The raw value found.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
}

/// Computes the Doc 9303 check digit of `s`: weights 7, 3, 1 repeating, digits count their
/// value, `A`-`Z` count 10 to 35, `<` counts 0; the sum modulo 10. `None` for any other
/// character.
pub fn check_digit(s: &str) -> Option<u8> {
    let sum = s
        .chars()
        .zip([7, 3, 1].iter().cycle())
        .try_fold(0, |sum, (c, w)| {
            let value = match c {
                '<' => 0,
                '0'..='9' | 'A'..='Z' => c.to_digit(36)?,
                _ => return None,
            };
            Some((sum + value * w) % 10)
        })?;
    u8::try_from(sum).ok()
}

/// Decodes TD3 (2 lines of 44) or TD1 (3 lines of 30) MRZ lines; surrounding whitespace of
/// each line is ignored. Check digits are verified and reported in [`Mrz::checks`].
///
/// # Errors
///
/// A [`MrzError`] when there are not 2 or 3 lines, a line has the wrong length or a character
/// outside `A-Z0-9<`, a date is not six digits, or the sex is not `M`, `F`, `X` or `<`.
pub fn decode(lines: &[&str]) -> Result<Mrz, MrzError> {
    let lines: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
    let width = match lines.len() {
        2 => 44,
        3 => 30,
        found => return Err(MrzError::LineCount { found }),
    };
    for (i, l) in lines.iter().enumerate() {
        let bad = l
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, 'A'..='Z' | '0'..='9' | '<'));
        if let Some((column, found)) = bad {
            return Err(MrzError::InvalidChar {
                line: i + 1,
                column: column + 1,
                found,
            });
        }
        if l.len() != width {
            return Err(MrzError::LineLength {
                line: i + 1,
                expected: width,
                found: l.len(),
            });
        }
    }
    match lines[..] {
        [l1, l2] => td3(l1, l2),
        [l1, l2, l3] => td1(l1, l2, l3),
        _ => Err(MrzError::LineCount { found: lines.len() }),
    }
}

/// TD3, Doc 9303 Part 4 §4.2.2.
fn td3(l1: &str, l2: &str) -> Result<Mrz, MrzError> {
    let composite = [at(l2, 0, 10), at(l2, 13, 20), at(l2, 21, 43)].concat();
    let checks = vec![
        check("document_number", at(l2, 0, 9), char_at(l2, 9), false),
        check("birth_date", at(l2, 13, 19), char_at(l2, 19), false),
        check("expiry_date", at(l2, 21, 27), char_at(l2, 27), false),
        check("optional_data", at(l2, 28, 42), char_at(l2, 42), true),
        check("composite", &composite, char_at(l2, 43), false),
    ];
    build(Fields {
        format: MrzFormat::Td3,
        document_code: at(l1, 0, 2),
        issuing_state: at(l1, 2, 5),
        names: at(l1, 5, 44),
        document_number: fill(at(l2, 0, 9)).to_owned(),
        nationality: at(l2, 10, 13),
        birth: (at(l2, 13, 19), 2, 14),
        sex: (char_at(l2, 20), 2, 21),
        expiry: (at(l2, 21, 27), 2, 22),
        optional_data: fill(at(l2, 28, 42)).to_owned(),
        checks,
    })
}

/// TD1, Doc 9303 Part 5 §4.2.2, including the overflow of document numbers longer than 9
/// characters into the optional data (check digit position holding `<`, note j).
fn td1(l1: &str, l2: &str, l3: &str) -> Result<Mrz, MrzError> {
    let (mut number, mut number_check) = (at(l1, 5, 14).to_owned(), char_at(l1, 14));
    let mut optional = at(l1, 15, 30);
    let overflow = optional.find('<').unwrap_or(optional.len());
    if number_check == '<' && overflow > 0 {
        number.push_str(at(optional, 0, overflow - 1));
        number_check = char_at(optional, overflow - 1);
        optional = at(optional, overflow, optional.len());
    }
    let composite = [at(l1, 5, 30), at(l2, 0, 7), at(l2, 8, 15), at(l2, 18, 29)].concat();
    let checks = vec![
        check("document_number", &number, number_check, false),
        check("birth_date", at(l2, 0, 6), char_at(l2, 6), false),
        check("expiry_date", at(l2, 8, 14), char_at(l2, 14), false),
        check("composite", &composite, char_at(l2, 29), false),
    ];
    let optional_data = [fill(optional), fill(at(l2, 18, 29))]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    build(Fields {
        format: MrzFormat::Td1,
        document_code: at(l1, 0, 2),
        issuing_state: at(l1, 2, 5),
        names: l3,
        document_number: fill(&number).to_owned(),
        nationality: at(l2, 15, 18),
        birth: (at(l2, 0, 6), 2, 1),
        sex: (char_at(l2, 7), 2, 8),
        expiry: (at(l2, 8, 14), 2, 9),
        optional_data,
        checks,
    })
}

/// The fields of either layout; dates and sex carry their (line, column) for errors.
struct Fields<'a> {
    format: MrzFormat,
    document_code: &'a str,
    issuing_state: &'a str,
    names: &'a str,
    document_number: String,
    nationality: &'a str,
    birth: (&'a str, usize, usize),
    sex: (char, usize, usize),
    expiry: (&'a str, usize, usize),
    optional_data: String,
    checks: Vec<MrzCheck>,
}

/// Validates dates and sex, resolves the dates and splits the names.
fn build(f: Fields<'_>) -> Result<Mrz, MrzError> {
    let expiry_year = 2000 + date_part(f.expiry, "expiry_date")?;
    let birth_year = 2000 + date_part(f.birth, "birth_date")?;
    let birth_year = if birth_year > expiry_year {
        birth_year - 100
    } else {
        birth_year
    };
    let sex = match f.sex.0 {
        'M' | 'F' | 'X' => f.sex.0.to_string(),
        '<' => "X".to_owned(),
        other => {
            return Err(MrzError::InvalidField {
                field: "sex",
                line: f.sex.1,
                column: f.sex.2,
                value: other.to_string(),
                expected: "M, F, X or <",
            });
        }
    };
    let (primary, secondary) = f.names.split_once("<<").unwrap_or((f.names, ""));
    // A field that ends with a letter is full: the names may have been cut to fit it.
    let full = f.names.ends_with(|c: char| c.is_ascii_alphabetic());
    Ok(Mrz {
        format: f.format,
        document_code: fill(f.document_code).to_owned(),
        issuing_state: fill(f.issuing_state).to_owned(),
        surname: words(primary).collect::<Vec<_>>().join(" "),
        given_names: words(secondary).map(str::to_owned).collect(),
        given_names_truncated: full && words(secondary).next().is_some(),
        surname_truncated: full
            && (words(secondary).all(|name| name.len() <= 1) || primary.len() * 2 >= f.names.len()),
        document_number: f.document_number,
        nationality: fill(f.nationality).to_owned(),
        birth_date: f.birth.0.to_owned(),
        birth_date_iso: iso(birth_year, f.birth.0),
        sex,
        expiry_date: f.expiry.0.to_owned(),
        expiry_date_iso: iso(expiry_year, f.expiry.0),
        optional_data: f.optional_data,
        valid: f.checks.iter().all(|c| c.valid),
        checks: f.checks,
    })
}

/// The components of a name field, separated by one or more `<`.
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split('<').filter(|w| !w.is_empty())
}

/// Validates a `YYMMDD` field and returns its two-digit year.
fn date_part(
    (raw, line, column): (&str, usize, usize),
    field: &'static str,
) -> Result<i32, MrzError> {
    let year = raw
        .get(..2)
        .filter(|_| raw.len() == 6 && raw.bytes().all(|b| b.is_ascii_digit()));
    year.and_then(|y| y.parse().ok())
        .ok_or_else(|| MrzError::InvalidField {
            field,
            line,
            column,
            value: raw.to_owned(),
            expected: "a YYMMDD date",
        })
}

/// Formats `YYMMDD` in the given full year as `YYYY-MM-DD`, if it is a real date.
fn iso(year: i32, raw: &str) -> Option<String> {
    let part = |r: std::ops::Range<usize>| raw.get(r)?.parse().ok();
    let date = NaiveDate::from_ymd_opt(year, part(2..4)?, part(4..6)?)?;
    Some(date.format("%Y-%m-%d").to_string())
}

/// Compares a check digit with the one computed over `data`; `<` counts as 0 if `filler_is_zero`.
fn check(field: &'static str, data: &str, digit: char, filler_is_zero: bool) -> MrzCheck {
    let found = match digit {
        '<' if filler_is_zero => Some(0),
        d => d.to_digit(10),
    };
    let valid = found.is_some() && found == check_digit(data).map(u32::from);
    MrzCheck { field, valid }
}

/// The characters `start..end` of a validated ASCII line.
fn at(line: &str, start: usize, end: usize) -> &str {
    line.get(start..end).unwrap_or_default()
}

/// The character at `index` of a validated ASCII line (`<` if out of range).
fn char_at(line: &str, index: usize) -> char {
    line.as_bytes().get(index).map_or('<', |&b| char::from(b))
}

/// Strips the filler `<` around a field.
fn fill(s: &str) -> &str {
    s.trim_matches('<')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LPC1: [&str; 2] = [
        "PLSENDIOP<<MAMADOU<LAMINE<<<<<<<<<<<<<<<<<<<",
        "LP04172635SEN9803145M2612029<<<<<<<<<<<<<<<2",
    ];

    #[test]
    fn check_digits_of_doc_9303() {
        assert_eq!(check_digit("520727"), Some(3));
        assert_eq!(check_digit("AB2134<<<"), Some(5));
        assert_eq!(check_digit("L898902C3"), Some(6));
        assert_eq!(check_digit("ab"), None);
        assert_eq!(check_digit("1 2"), None);
    }

    #[test]
    fn decodes_a_laissez_passer() {
        let mrz = decode(
            &LPC1
                .map(|l| format!("  {l}\n"))
                .each_ref()
                .map(String::as_str),
        )
        .unwrap();
        assert_eq!(mrz.format, MrzFormat::Td3);
        assert_eq!(
            (mrz.document_code.as_str(), mrz.issuing_state.as_str()),
            ("PL", "SEN")
        );
        assert_eq!(
            (mrz.surname.as_str(), mrz.given_names.join(",")),
            ("DIOP", "MAMADOU,LAMINE".into())
        );
        assert_eq!(
            (mrz.document_number.as_str(), mrz.nationality.as_str()),
            ("LP0417263", "SEN")
        );
        assert_eq!(mrz.birth_date_iso.as_deref(), Some("1998-03-14"));
        assert_eq!(mrz.expiry_date_iso.as_deref(), Some("2026-12-02"));
        assert_eq!((mrz.sex.as_str(), mrz.optional_data.as_str()), ("M", ""));
        assert!(mrz.valid && mrz.checks.len() == 5);
        let json = serde_json::to_value(&mrz).unwrap();
        assert_eq!(json["format"], "TD3");
        assert_eq!(
            json["checks"][0],
            serde_json::json!({"field": "document_number", "valid": true})
        );
    }

    #[test]
    fn bad_check_digits_are_reported_not_errors() {
        let line2 = LPC1[1].replace("LP04172635", "LP04172636");
        let mrz = decode(&[LPC1[0], &line2]).unwrap();
        let failed: Vec<_> = mrz
            .checks
            .iter()
            .filter(|c| !c.valid)
            .map(|c| c.field)
            .collect();
        assert_eq!(failed, ["document_number", "composite"]);
        assert!(!mrz.valid);
    }

    #[test]
    fn birth_century_and_unreal_dates() {
        let with = |birth: &str, expiry: &str| {
            let line2 = format!(
                "{}{birth}{}{expiry}{}",
                &LPC1[1][..13],
                &LPC1[1][19..21],
                &LPC1[1][27..]
            );
            decode(&[LPC1[0], &line2]).unwrap()
        };
        assert_eq!(
            with("260101", "261202").birth_date_iso.as_deref(),
            Some("2026-01-01")
        );
        assert_eq!(
            with("270101", "261202").birth_date_iso.as_deref(),
            Some("1927-01-01")
        );
        assert_eq!(with("001301", "261202").birth_date_iso, None);
        assert_eq!(
            with("000229", "261202").birth_date_iso.as_deref(),
            Some("2000-02-29")
        );
        assert_eq!(with("980314", "260230").expiry_date_iso, None);
    }

    #[test]
    fn td1_document_number_overflow() {
        // Doc 9303 Part 5: a 12-character number, its check digit after the overflow.
        let line1 = "I<UTOD23145890<7349<<<<<<<<<<<";
        let mut line2 = "7408122F1204159UTO<<<<<<<<<<<".to_owned();
        let composite = [&line1[5..30], &line2[..7], &line2[8..15], &line2[18..29]].concat();
        line2.push(char::from(b'0' + check_digit(&composite).unwrap()));
        let mrz = decode(&[line1, &line2, "ERIKSSON<<ANNA<MARIA<<<<<<<<<<"]).unwrap();
        assert_eq!(mrz.document_number, "D23145890734");
        assert_eq!(mrz.optional_data, "");
        assert!(mrz.valid, "{:?}", mrz.checks);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(decode(&[LPC1[0]]), Err(MrzError::LineCount { found: 1 }));
        let short = decode(&[LPC1[0], &LPC1[1][1..]]);
        assert_eq!(
            short,
            Err(MrzError::LineLength {
                line: 2,
                expected: 44,
                found: 43
            })
        );
        let lower = LPC1[0].replace("DIOP", "DiOP");
        assert_eq!(
            decode(&[&lower, LPC1[1]]),
            Err(MrzError::InvalidChar {
                line: 1,
                column: 7,
                found: 'i'
            })
        );
        let said = decode(&[&lower, LPC1[1]]).unwrap_err().to_string();
        assert_eq!(
            said,
            "line 1, column 7: only A-Z, 0-9 and < are allowed in an MRZ"
        );
        let accent = LPC1[0].replace("DIOP", "DIÖP");
        assert!(matches!(
            decode(&[&accent, LPC1[1]]),
            Err(MrzError::InvalidChar { column: 8, .. })
        ));
        let date = LPC1[1].replace("980314", "98O314");
        let err = decode(&[LPC1[0], &date]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2, column 14: birth_date is not a YYMMDD date"
        );
        let sex = LPC1[1].replace("5M26", "5Q26");
        assert!(matches!(
            decode(&[LPC1[0], &sex]),
            Err(MrzError::InvalidField { field: "sex", .. })
        ));
    }

    #[test]
    fn never_panics_on_mutations() {
        for at in 0..44 {
            for b in [b'<', b'0', b'A', b'Z', b' ', b'a'] {
                let mut bytes = LPC1[1].as_bytes().to_vec();
                bytes[at] = b;
                let _ = decode(&[LPC1[0], &String::from_utf8(bytes).unwrap()]);
            }
        }
    }
}
