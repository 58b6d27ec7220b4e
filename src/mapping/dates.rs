//! Date notations of the mapping language.
//!
//! This module owns the date patterns partners use (`dd/mm/yyyy`, `yyyy-mm-dd`, …), read into
//! and written from ISO 8601 calendar dates. Canonical dates are always ISO 8601
//! (`yyyy-mm-dd`). It refuses two-digit years: the MRZ's `YYMMDD` and the BCBP's day of year
//! are read by their own modules (`mrz`, `bcbp`), which know what each date may be.

use chrono::NaiveDate;

/// A date pattern made of `dd`, `mm`, `yyyy`, and separators. Two-digit years are refused:
/// no pivot year is right for both birth dates and travel dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePattern {
    chrono_format: String,
    parts: Vec<Part>,
    /// The pattern as written (`iso` as `yyyy-mm-dd`), for messages.
    source: String,
}

/// Why a text is not a date in a pattern. Neither says the text: it may be a birth date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateReadError {
    /// The text is not written in the pattern (other digits, other separators).
    #[error("is not a date in the pattern {0}")]
    NotInPattern(String),
    /// The text is written in the pattern, but names no day of the calendar (31/02).
    #[error("is written in the pattern {0} but is no day of the calendar")]
    NoSuchDay(String),
}

/// One element of a pattern, read by hand: a fixed number of digits, or a separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Day,
    Month,
    Year,
    Separator(char),
}

/// Why a date pattern is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "date pattern {0:?} must use dd, mm and yyyy with separators, or be \"iso\" (two-digit years are ambiguous)"
)]
pub struct DatePatternError(pub String);

impl DatePattern {
    /// Compiles a pattern; `iso` is `yyyy-mm-dd`.
    pub fn compile(pattern: &str) -> Result<Self, DatePatternError> {
        let source = if pattern == "iso" {
            "yyyy-mm-dd"
        } else {
            pattern
        };
        let mut chrono_format = String::new();
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            let (part, token, length) = if rest.starts_with("yyyy") {
                (Part::Year, "%Y", 4)
            } else if rest.starts_with("dd") {
                (Part::Day, "%d", 2)
            } else if rest.starts_with("mm") {
                (Part::Month, "%m", 2)
            } else {
                let separator = rest.chars().next().unwrap_or_default();
                if separator.is_alphanumeric() || separator == '%' {
                    return Err(DatePatternError(pattern.into()));
                }
                chrono_format.push(separator);
                parts.push(Part::Separator(separator));
                rest = &rest[separator.len_utf8()..];
                continue;
            };
            if parts.contains(&part) {
                return Err(DatePatternError(pattern.into()));
            }
            parts.push(part);
            chrono_format.push_str(token);
            rest = &rest[length..];
        }
        if ![Part::Day, Part::Month, Part::Year]
            .iter()
            .all(|p| parts.contains(p))
        {
            return Err(DatePatternError(pattern.into()));
        }
        Ok(Self {
            chrono_format,
            parts,
            source: source.to_owned(),
        })
    }

    /// The pattern as written (`iso` as `yyyy-mm-dd`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Reads a date written in this pattern, saying why it cannot.
    pub fn read(&self, text: &str) -> Result<NaiveDate, DateReadError> {
        let (year, month, day) = self
            .fields(text)
            .ok_or_else(|| DateReadError::NotInPattern(self.source.clone()))?;
        i32::try_from(year)
            .ok()
            .and_then(|year| NaiveDate::from_ymd_opt(year, month, day))
            .ok_or_else(|| DateReadError::NoSuchDay(self.source.clone()))
    }

    /// The year, month and day a text written in this pattern gives, whether or not they
    /// name a day of the calendar.
    fn fields(&self, text: &str) -> Option<(u32, u32, u32)> {
        // Read by hand rather than with `parse_from_str`, which re-reads the format string on
        // every call and accepts one-digit days; every field here has its exact width.
        let mut rest = text.trim();
        let (mut day, mut month, mut year) = (0, 0, 0);
        for part in &self.parts {
            let width = match part {
                Part::Separator(separator) => {
                    rest = rest.strip_prefix(*separator)?;
                    continue;
                }
                Part::Year => 4,
                Part::Day | Part::Month => 2,
            };
            let digits = rest
                .get(..width)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
            let number: u32 = digits.parse().ok()?;
            rest = &rest[width..];
            match part {
                Part::Day => day = number,
                Part::Month => month = number,
                _ => year = number,
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some((year, month, day))
    }

    /// Writes a date in this pattern.
    pub fn write(&self, date: NaiveDate) -> String {
        date.format(&self.chrono_format).to_string()
    }
}

/// Reads the calendar date at the start of an ISO date or date-time (`2026-11-20T09:41:12Z`).
pub fn leading_iso_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()
}

/// True when the text is an RFC 3339 date-time in the form the canonical schema takes: `T`
/// and `Z` in upper case, no space for the `T`, at most nine decimals of a second. RFC 3339
/// allows the others too, but a value is kept as written, and the schema would refuse it
/// later under the canonical field's name rather than the sender's.
pub fn is_rfc3339(text: &str) -> bool {
    let decimals = text.split_once('.').map_or(0, |(_, rest)| {
        rest.bytes().take_while(u8::is_ascii_digit).count()
    });
    text.get(10..11) == Some("T")
        && !text.contains(['t', 'z'])
        && decimals <= 9
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_patterns() {
        let pattern = DatePattern::compile("dd/mm/yyyy").unwrap();
        let date = pattern.read("14/03/1998").unwrap();
        assert_eq!(date.to_string(), "1998-03-14");
        assert_eq!(pattern.write(date), "14/03/1998");
        assert!(pattern.read("31/02/1998").is_err());
        assert_eq!(
            pattern.read("31/02/1998").unwrap_err().to_string(),
            "is written in the pattern dd/mm/yyyy but is no day of the calendar"
        );
        assert_eq!(
            DatePattern::compile("iso")
                .unwrap()
                .read("14/03/1998")
                .unwrap_err()
                .to_string(),
            "is not a date in the pattern yyyy-mm-dd"
        );
        assert!(pattern.read("4/03/1998").is_err());
        assert!(pattern.read("14/03/19989").is_err());
        assert!(pattern.read("1998-03-14").is_err());
        assert_eq!(
            DatePattern::compile("iso").unwrap().read("1998-03-14"),
            Ok(date)
        );
        assert_eq!(
            DatePattern::compile("dd.mm.yyyy").unwrap().write(date),
            "14.03.1998"
        );
    }

    #[test]
    fn refuses_bad_patterns() {
        assert!(DatePattern::compile("dd/mm").is_err());
        assert!(DatePattern::compile("yymmdd").is_err());
        assert!(DatePattern::compile("dd/mm/yyyy/dd").is_err());
        assert!(DatePattern::compile("dd/mm/yyyy %H").is_err());
        assert!(DatePattern::compile("ddxmmxyyyy").is_err());
    }

    #[test]
    fn reads_leading_dates() {
        assert_eq!(
            leading_iso_date("2026-11-20T09:41:12Z")
                .unwrap()
                .to_string(),
            "2026-11-20"
        );
        assert_eq!(leading_iso_date("2026-11"), None);
        assert!(is_rfc3339("2026-11-20T09:41:12+01:00"));
        assert!(!is_rfc3339("2026-11-20 09:41"));
        assert!(is_rfc3339("2026-11-20T09:41:12.123456789Z"));
        // RFC 3339 forms the canonical schema does not take.
        for other in [
            "2026-11-20t09:41:12Z",
            "2026-11-20T09:41:12z",
            "2026-11-20 09:41:12Z",
            "2026-11-20T09:41:12.1234567891Z",
        ] {
            assert!(!is_rfc3339(other), "{other}");
        }
    }
}
