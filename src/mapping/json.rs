//! Strict JSON parsing for partner messages: one pass, duplicate keys refused.
//!
//! RFC 8259 leaves the meaning of an object with a repeated key to the parser, and
//! `serde_json` keeps the last value, so `{"vulnerabilities": ["VOT"], "vulnerabilities": []}`
//! would read as "no vulnerabilities" here and perhaps as the opposite in the sender's own
//! system. This module owns parsing a JSON message into a [`Value`] while refusing any key
//! repeated in one object, at any depth, naming the key's path. It builds the value in the same
//! pass as `serde_json::from_slice` would (no second parse), and must not know any partner.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};
use std::fmt;

/// The longest key quoted in an error, in characters: a key is the partner's text, and a
/// message should stay readable.
const MOST_QUOTED: usize = 40;

/// Parses a JSON document into a value, refusing a key that appears twice in one object. The
/// error names the key's path, as mapping paths write it (`passenger/remarks`, with item
/// numbers for arrays: `booking/segments/0/carrier`), with the line and column.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut path = Vec::new();
    let value = Strict { path: &mut path }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// One step of the path to the value being read.
enum Step {
    Key(String),
    Index(usize),
}

/// Reads one value; `path` leads to it. Keys are moved into the path while their value is read
/// and moved back out, so that naming the path costs nothing until an error.
struct Strict<'p> {
    path: &'p mut Vec<Step>,
}

fn describe(path: &[Step], key: &str) -> String {
    let mut steps: Vec<String> = path
        .iter()
        .map(|step| match step {
            Step::Key(key) => quoted(key),
            Step::Index(index) => index.to_string(),
        })
        .collect();
    steps.push(quoted(key));
    steps.join("/")
}

/// A member name as an error quotes it: at most 40 characters, escaped (`\u{202e}`), with `…`
/// when cut.
pub(crate) fn quoted(key: &str) -> String {
    crate::error_text::quoted_cut(key, MOST_QUOTED)
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(64));
        loop {
            self.path.push(Step::Index(values.len()));
            let item = items.next_element_seed(Strict {
                path: &mut *self.path,
            });
            self.path.pop();
            match item? {
                Some(value) => values.push(value),
                None => return Ok(Value::Array(values)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            self.path.push(Step::Key(key));
            let value = entries.next_value_seed(Strict {
                path: &mut *self.path,
            });
            let Some(Step::Key(key)) = self.path.pop() else {
                unreachable!("the key pushed above")
            };
            let value = value?;
            match object.entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                Entry::Occupied(occupied) => {
                    return Err(de::Error::custom(format_args!(
                        "the key {} is given twice",
                        describe(self.path, occupied.key())
                    )));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_like_serde_json() {
        let text = br#"{"a": [1, -2, 3.5, true, null, "x\u00e9"], "b": {"c": {}}, "d": []}"#;
        assert_eq!(
            from_slice(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert_eq!(from_slice(b" 12 ").unwrap(), json!(12));
        assert!(from_slice(b"{} x").is_err());
        assert!(from_slice(b"{\"a\": }").is_err());
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth_naming_its_path() {
        let top = from_slice(br#"{"vulnerabilities":["VOT"],"vulnerabilities":[]}"#).unwrap_err();
        assert!(
            top.to_string()
                .starts_with("the key vulnerabilities is given twice"),
            "{top}"
        );
        let deep = from_slice(
            br#"{"booking": {"segments": [{"carrier": "AT"}, {"carrier": "AT", "carrier": "XX"}]}}"#,
        )
        .unwrap_err();
        assert!(
            deep.to_string()
                .contains("the key booking/segments/1/carrier is given twice"),
            "{deep}"
        );
        // The same key in two different objects is no repetition.
        assert!(from_slice(br#"{"a": {"k": 1}, "b": {"k": 2}, "k": 3}"#).is_ok());
    }

    #[test]
    fn a_long_or_strange_key_is_quoted_short_and_escaped() {
        let key = format!("{}\n", "k".repeat(100));
        let text = format!("{{{0:?}: 1, {0:?}: 2}}", key);
        let error = from_slice(text.as_bytes()).unwrap_err().to_string();
        assert!(error.contains(&format!("{}…", "k".repeat(40))), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn depth_stays_bounded() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(from_slice(deep.as_bytes()).is_err());
    }
}
