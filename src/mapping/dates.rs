//! Date notations of the mapping language.
//!
//! This module owns the date patterns partners use (`dd/mm/yyyy`, `yyyy-mm-dd`, `yymmdd`, …),
//! read into and written from ISO 8601 calendar dates, and the BCBP day of year resolved
//! against a reference date. Canonical dates are always ISO 8601 (`yyyy-mm-dd`).

use chrono::NaiveDate;

/// A date pattern made of `dd`, `mm`, `yyyy`, and separators. Two-digit years are refused:
/// no pivot year is right for both birth dates and travel dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePattern {
    chrono_format: String,
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
        let (mut day, mut month, mut year) = (false, false, false);
        let mut rest = source;
        while !rest.is_empty() {
            let (token, length) = if rest.starts_with("yyyy") {
                year = true;
                ("%Y", 4)
            } else if rest.starts_with("dd") {
                day = true;
                ("%d", 2)
            } else if rest.starts_with("mm") {
                month = true;
                ("%m", 2)
            } else {
                let separator = rest.chars().next().unwrap_or_default();
                if separator.is_alphanumeric() || separator == '%' {
                    return Err(DatePatternError(pattern.into()));
                }
                chrono_format.push(separator);
                rest = &rest[separator.len_utf8()..];
                continue;
            };
            chrono_format.push_str(token);
            rest = &rest[length..];
        }
        if !(day && month && year) {
            return Err(DatePatternError(pattern.into()));
        }
        Ok(Self { chrono_format })
    }

    /// Reads a date written in this pattern.
    pub fn read(&self, text: &str) -> Option<NaiveDate> {
        NaiveDate::parse_from_str(text.trim(), &self.chrono_format).ok()
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

/// True when the text is an RFC 3339 date-time.
pub fn is_rfc3339(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text).is_ok()
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
        assert_eq!(pattern.read("31/02/1998"), None);
        assert_eq!(pattern.read("1998-03-14"), None);
        assert_eq!(
            DatePattern::compile("iso").unwrap().read("1998-03-14"),
            Some(date)
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
    }
}
