//! Decoder for IATA Bar Coded Boarding Passes (BCBP), format code `M`, as specified by
//! IATA Resolution 792 (BCBP Implementation Guide, version 6 and earlier).
//!
//! This module owns the decoding of a boarding-pass string into a [`BoardingPass`]. It is a
//! pure decoder: no I/O, no logging, and it never panics on input; malformed data yields a
//! [`BcbpError`] naming the field and its byte offset.
//!
//! Only the mandatory items are decoded. The conditional items of each leg (its variable-size
//! field) are skipped by their declared length, and the security data after the last leg
//! (introduced by `^`) is accepted without being interpreted.

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

/// Longest input accepted, in bytes.
const MAX_LEN: usize = 4096;

/// A decoded boarding pass: the mandatory unique items and one [`Leg`] per flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoardingPass {
    /// Number of legs encoded (1 to 4); equals `legs.len()`.
    pub legs_count: u8,
    /// Passenger name as printed, trimmed, e.g. `DIOP/MAMADOU LAMINE`.
    pub passenger_name: String,
    /// The part of the name before `/` (the whole name when there is no `/`).
    pub surname: String,
    /// The part of the name after `/`; may be empty.
    pub given_names: String,
    /// Whether the electronic ticket indicator is `E`.
    pub electronic_ticket: bool,
    /// The flight legs, in encoded order.
    pub legs: Vec<Leg>,
}

/// The mandatory repeated items of one flight leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leg {
    /// Operating carrier PNR code, trimmed.
    pub pnr: String,
    /// IATA code of the departure airport.
    pub from: String,
    /// IATA code of the arrival airport.
    pub to: String,
    /// Operating carrier designator, trimmed.
    pub carrier: String,
    /// Flight number, trimmed, leading zeros removed (`0505 ` becomes `505`).
    pub flight_number: String,
    /// Julian date of the flight (1 to 366); see [`resolve_day_of_year`].
    pub day_of_year: u16,
    /// Compartment code, e.g. `Y`.
    pub compartment: String,
    /// Seat, leading zeros removed (`023C` becomes `23C`); `None` when blank or truncated.
    pub seat: Option<String>,
    /// Check-in sequence number (`0112 ` becomes 112; one trailing letter is ignored);
    /// `None` when not numeric or truncated.
    pub sequence: Option<u32>,
    /// Passenger status code; `None` when blank or truncated.
    pub passenger_status: Option<String>,
}

/// Why a boarding-pass string was rejected. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BcbpError {
    /// The input is longer than 4096 bytes.
    #[error("input is {len} bytes long; at most {MAX_LEN} are accepted")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input contains a non-ASCII byte.
    #[error("non-ASCII byte at offset {offset}")]
    NonAscii {
        /// Offset of the first non-ASCII byte.
        offset: usize,
    },
    /// The input ends inside a mandatory field.
    #[error(
        "input too short: {field} needs {len} byte(s) at offset {offset}, but the input ends at {end}"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Offset where the field starts.
        offset: usize,
        /// Length of the field.
        len: usize,
        /// Length of the input.
        end: usize,
    },
    /// A field holds a value its definition does not allow.
    // The value is not quoted: a boarding pass holds personal data.
    #[error("invalid {field} at offset {offset}: {reason}")]
    Invalid {
        /// The field holding the value.
        field: &'static str,
        /// Offset where the field starts.
        offset: usize,
        /// The raw value found.
        value: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// The number of legs encoded does not match the legs present in the data.
    #[error(
        "number of legs encoded is {declared}, but the data ends after leg {found} at offset {offset}"
    )]
    MissingLeg {
        /// Number of legs declared at offset 1.
        declared: u8,
        /// Number of complete legs found.
        found: u8,
        /// Offset where the next leg should start.
        offset: usize,
    },
    /// Data that is not security data (`^`) follows the last declared leg.
    #[error("unexpected data at offset {offset} after the {declared} declared leg(s)")]
    TrailingData {
        /// Number of legs declared at offset 1.
        declared: u8,
        /// Offset of the unexpected data.
        offset: usize,
    },
}

/// Decodes a BCBP string in format `M` (IATA Resolution 792).
///
/// A pass whose last leg ends right after the compartment code is accepted, with seat,
/// sequence and passenger status set to `None`.
///
/// # Errors
///
/// A [`BcbpError`] when the input is longer than 4096 bytes, is not ASCII, ends inside a
/// mandatory item, holds an invalid format code, leg count, day of year or field size, or
/// holds fewer or more legs than it declares.
pub fn decode(input: &str) -> Result<BoardingPass, BcbpError> {
    if input.len() > MAX_LEN {
        return Err(BcbpError::TooLong { len: input.len() });
    }
    if let Some(offset) = input.bytes().position(|b| !b.is_ascii()) {
        return Err(BcbpError::NonAscii { offset });
    }
    let mut c = Cursor { s: input, pos: 0 };
    let format = c.take("format code", 1)?;
    if format != "M" {
        return Err(invalid("format code", 0, format, "expected 'M'"));
    }
    let legs_count: u8 = match c.take("number of legs encoded", 1)? {
        n @ ("1" | "2" | "3" | "4") => n.parse().unwrap_or_default(),
        n => return Err(invalid("number of legs encoded", 1, n, "expected 1 to 4")),
    };
    let passenger_name = c.take("passenger name", 20)?.trim().to_owned();
    let electronic_ticket = c.take("electronic ticket indicator", 1)? == "E";
    let (surname, given_names) = passenger_name
        .split_once('/')
        .unwrap_or((&passenger_name, ""));
    let (surname, given_names) = (surname.trim().to_owned(), given_names.trim().to_owned());

    let mut legs = Vec::with_capacity(legs_count.into());
    for found in 0..legs_count {
        if found > 0 && (c.rest().is_empty() || c.rest().starts_with('^')) {
            let offset = c.pos;
            return Err(BcbpError::MissingLeg {
                declared: legs_count,
                found,
                offset,
            });
        }
        legs.push(leg(&mut c, found + 1 == legs_count)?);
    }
    if !c.rest().is_empty() && !c.rest().starts_with('^') {
        return Err(BcbpError::TrailingData {
            declared: legs_count,
            offset: c.pos,
        });
    }
    Ok(BoardingPass {
        legs_count,
        passenger_name,
        surname,
        given_names,
        electronic_ticket,
        legs,
    })
}

/// Resolves a BCBP day of year, which carries no year, to the date with that day of year
/// (in the reference year, the year before or the year after) closest to `reference`.
///
/// Day 366 only exists in leap years; ties go to the earlier date. Returns `None` when no
/// candidate year has that day (0, 367 and above, or 366 far from a leap year).
pub fn resolve_day_of_year(day: u16, reference: NaiveDate) -> Option<NaiveDate> {
    let year = reference.year();
    (year - 1..=year + 1)
        .filter_map(|y| NaiveDate::from_yo_opt(y, day.into()))
        .min_by_key(|d| d.signed_duration_since(reference).num_days().abs())
}

/// Reads the mandatory repeated items of one leg and skips its conditional items.
fn leg(c: &mut Cursor<'_>, last: bool) -> Result<Leg, BcbpError> {
    let pnr = c.take("PNR code", 7)?.trim().to_owned();
    let from = c.take("from city airport code", 3)?.trim().to_owned();
    let to = c.take("to city airport code", 3)?.trim().to_owned();
    let carrier = c.take("operating carrier designator", 3)?.trim().to_owned();
    let flight_number = strip_zeros(c.take("flight number", 5)?.trim());
    let (field, offset) = ("date of flight", c.pos);
    let raw = c.take(field, 3)?;
    let day_of_year = match number(raw) {
        Some(day @ 1..=366) => day as u16,
        Some(_) => return Err(invalid(field, offset, raw, "expected 001 to 366")),
        None => return Err(invalid(field, offset, raw, "expected 3 digits")),
    };
    let compartment = c.take("compartment code", 1)?.to_owned();
    let mut leg = Leg {
        pnr,
        from,
        to,
        carrier,
        flight_number,
        day_of_year,
        compartment,
        seat: None,
        sequence: None,
        passenger_status: None,
    };
    if last && c.rest().is_empty() {
        return Ok(leg);
    }
    leg.seat = Some(strip_zeros(c.take("seat number", 4)?.trim())).filter(|s| !s.is_empty());
    let seq = c.take("check-in sequence number", 5)?.trim_end();
    leg.sequence =
        number(seq).or_else(|| number(seq.strip_suffix(|ch: char| ch.is_ascii_alphabetic())?));
    leg.passenger_status =
        Some(c.take("passenger status", 1)?.trim().to_owned()).filter(|s| !s.is_empty());
    let (field, offset) = ("field size of variable size field", c.pos);
    let raw = c.take(field, 2)?;
    let size = Some(raw)
        .filter(|r| r.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|r| usize::from_str_radix(r, 16).ok())
        .ok_or_else(|| invalid(field, offset, raw, "expected 2 hex digits"))?;
    c.take("conditional items", size)?;
    Ok(leg)
}

/// A read position in an ASCII input.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Takes the next `len` bytes as `field`, or fails if the input ends first.
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a str, BcbpError> {
        let end = self.s.len();
        let value = self
            .pos
            .checked_add(len)
            .and_then(|stop| self.s.get(self.pos..stop));
        let value = value.ok_or(BcbpError::Truncated {
            field,
            offset: self.pos,
            len,
            end,
        })?;
        self.pos += len;
        Ok(value)
    }

    /// The input not read yet.
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or_default()
    }
}

/// Builds a [`BcbpError::Invalid`].
fn invalid(field: &'static str, offset: usize, value: &str, reason: &'static str) -> BcbpError {
    BcbpError::Invalid {
        field,
        offset,
        value: value.to_owned(),
        reason,
    }
}

/// Parses a non-empty run of ASCII digits (no sign, no spaces).
fn number(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

/// Removes leading zeros, keeping a single `0` for an all-zero value.
fn strip_zeros(s: &str) -> String {
    match s.trim_start_matches('0') {
        "" if !s.is_empty() => "0".to_owned(),
        t => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "M1DIOP/MAMADOU LAMINE EK7Q2XM CMNDSSAT 0505 324Y023C0112 100";

    #[test]
    fn decodes_the_project_sample() {
        let pass = decode(SAMPLE).unwrap();
        assert_eq!(pass.legs_count, 1);
        assert_eq!(pass.passenger_name, "DIOP/MAMADOU LAMINE");
        assert_eq!(pass.surname, "DIOP");
        assert_eq!(pass.given_names, "MAMADOU LAMINE");
        assert!(pass.electronic_ticket);
        let expected = Leg {
            pnr: "K7Q2XM".into(),
            from: "CMN".into(),
            to: "DSS".into(),
            carrier: "AT".into(),
            flight_number: "505".into(),
            day_of_year: 324,
            compartment: "Y".into(),
            seat: Some("23C".into()),
            sequence: Some(112),
            passenger_status: Some("1".into()),
        };
        assert_eq!(pass.legs, [expected]);
    }

    #[test]
    fn name_without_slash_and_lettered_sequence() {
        let pass = decode("M1DIOP                 K7Q2XM CMNDSSAT 0505 324Y    0112A100").unwrap();
        assert_eq!(
            (pass.surname.as_str(), pass.given_names.as_str()),
            ("DIOP", "")
        );
        assert!(!pass.electronic_ticket);
        assert_eq!(
            (pass.legs[0].seat.as_ref(), pass.legs[0].sequence),
            (None, Some(112))
        );
    }

    #[test]
    fn rejects_malformed_input() {
        let with = |at: usize, s: &str| format!("{}{s}{}", &SAMPLE[..at], &SAMPLE[at + s.len()..]);
        let field = |r: Result<BoardingPass, BcbpError>| match r {
            Err(BcbpError::Invalid { field, offset, .. }) => (field, offset),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(field(decode(&with(0, "S"))), ("format code", 0));
        assert_eq!(field(decode(&with(1, "5"))), ("number of legs encoded", 1));
        assert_eq!(field(decode(&with(44, "000"))), ("date of flight", 44));
        assert_eq!(field(decode(&with(44, "367"))), ("date of flight", 44));
        assert_eq!(field(decode(&with(44, "+12"))), ("date of flight", 44));
        assert_eq!(
            field(decode(&with(58, "0G"))),
            ("field size of variable size field", 58)
        );
        assert_eq!(decode("M1DIOP/É"), Err(BcbpError::NonAscii { offset: 7 }));
        assert_eq!(
            decode(&"M".repeat(4097)),
            Err(BcbpError::TooLong { len: 4097 })
        );
        assert!(matches!(
            decode(""),
            Err(BcbpError::Truncated {
                field: "format code",
                ..
            })
        ));
        assert!(matches!(
            decode(&with(58, "05")),
            Err(BcbpError::Truncated { offset: 60, .. })
        ));
        assert!(matches!(
            decode(&format!("{SAMPLE}X")),
            Err(BcbpError::TrailingData { offset: 60, .. })
        ));
        let two = with(1, "2");
        assert_eq!(
            decode(&two),
            Err(BcbpError::MissingLeg {
                declared: 2,
                found: 1,
                offset: 60
            })
        );
        let message = decode(&with(44, "ABC")).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid date of flight at offset 44: expected 3 digits"
        );
    }

    #[test]
    fn accepts_truncation_after_compartment_only() {
        let leg = &decode(&SAMPLE[..48]).unwrap().legs[0];
        assert_eq!(
            (leg.seat.clone(), leg.sequence, leg.passenger_status.clone()),
            (None, None, None)
        );
        for len in (0..SAMPLE.len()).filter(|&len| len != 48) {
            assert!(
                decode(&SAMPLE[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn never_panics_on_mutations() {
        for at in 0..SAMPLE.len() {
            for b in [b'\0', b' ', b'0', b'9', b'F', b'^', b'>', b'/', 0x7f] {
                let mut bytes = SAMPLE.as_bytes().to_vec();
                bytes[at] = b;
                let _ = decode(&String::from_utf8(bytes).unwrap());
            }
        }
    }

    #[test]
    fn resolves_day_of_year_nearest_to_reference() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(
            resolve_day_of_year(324, date(2026, 11, 20)),
            Some(date(2026, 11, 20))
        );
        assert_eq!(
            resolve_day_of_year(2, date(2026, 12, 30)),
            Some(date(2027, 1, 2))
        );
        assert_eq!(
            resolve_day_of_year(360, date(2027, 1, 3)),
            Some(date(2026, 12, 26))
        );
        assert_eq!(
            resolve_day_of_year(366, date(2025, 1, 5)),
            Some(date(2024, 12, 31))
        );
        assert_eq!(resolve_day_of_year(366, date(2026, 6, 1)), None);
        assert_eq!(resolve_day_of_year(0, date(2026, 6, 1)), None);
    }
}
