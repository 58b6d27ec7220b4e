//! Deterministic JSON: the RFC 8785 JSON Canonicalization Scheme.
//!
//! Every canonical event the gateway stores, signs or hands to an auditor is serialised here,
//! so that re-running a mapping on the same native bytes yields the same bytes out.

use serde_json::Value;

/// Serialises a value as RFC 8785 canonical JSON.
pub fn to_vec(value: &Value) -> Vec<u8> {
    if is_plain(value) {
        // serde_json writes exactly the RFC 8785 form for such values, several times faster:
        // its maps are sorted by code point, which for characters below U+10000 is the UTF-16
        // order RFC 8785 asks for; it escapes strings as ECMAScript does (lower-case \u00xx);
        // and integers print the same in both.
        return serde_json::to_vec(value).unwrap_or_default();
    }
    // Serialising a `serde_json::Value` cannot fail: its keys are strings and its numbers finite.
    serde_json_canonicalizer::to_vec(value).unwrap_or_default()
}

/// The canonical form of `object` with one more member, `key` (which it must not have), set
/// to `value`, made from `canonical`, the canonical form of `object`, when the new member sorts
/// after every member of the object, so that it goes last; `None` otherwise (or when `object`
/// is no object). It spares serialising a whole event again to add one member at its end.
pub fn with_last_member(
    canonical: &[u8],
    object: &Value,
    key: &str,
    value: &Value,
) -> Option<Vec<u8>> {
    let members = object.as_object()?;
    // RFC 8785 orders members by their names' UTF-16 code units.
    let goes_last = members
        .keys()
        .all(|name| name.encode_utf16().lt(key.encode_utf16()));
    let body = canonical.strip_suffix(b"}")?;
    if !goes_last || !body.starts_with(b"{") {
        return None;
    }
    let mut out = Vec::with_capacity(canonical.len() + key.len() + 64);
    out.extend_from_slice(body);
    if !members.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(&to_vec(&Value::String(key.to_owned())));
    out.push(b':');
    out.extend_from_slice(&to_vec(value));
    out.push(b'}');
    Some(out)
}

/// Serialises a value as RFC 8785 canonical JSON text.
pub fn to_string(value: &Value) -> String {
    String::from_utf8(to_vec(value)).unwrap_or_default()
}

/// True when the value has no floating-point number, no integer beyond 2^53, and no key with a character at or above
/// U+10000, the two places where serde_json's output and RFC 8785 can differ.
fn is_plain(value: &Value) -> bool {
    match value {
        // Integers that a double holds exactly print the same; larger ones print as doubles.
        Value::Number(number) => {
            number.as_i64().is_some_and(|n| n.unsigned_abs() <= 1 << 53)
                || number.as_u64().is_some_and(|n| n <= 1 << 53)
        }
        Value::Array(items) => items.iter().all(is_plain),
        Value::Object(map) => map
            .iter()
            .all(|(key, item)| key.chars().all(|c| (c as u32) < 0x1_0000) && is_plain(item)),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_fast_path_agrees_with_the_reference_implementation() {
        let samples = [
            json!({"z": 1, "a": {"é": "x\u{1}\u{7f}\u{2028}\"\\/", "b": [true, null, -3, 9007199254740992u64]}}),
            json!({"\u{e000}": 1, "a": "\u{1F600}", "€": "\t\n\r\u{8}\u{c}"}),
            json!([]),
        ];
        for sample in samples {
            assert!(super::is_plain(&sample));
            assert_eq!(
                super::to_vec(&sample),
                serde_json_canonicalizer::to_vec(&sample).unwrap(),
                "{sample}"
            );
        }
        assert!(!super::is_plain(&json!({"\u{1F600}": 1})));
        assert!(!super::is_plain(&json!([1.5])));
        let big = json!([18446744073709551615u64]);
        assert!(!super::is_plain(&big));
        assert_eq!(super::to_string(&big), "[18446744073709552000]");
    }

    #[test]
    fn a_last_member_is_added_as_a_whole_serialisation_would() {
        use super::{to_vec, with_last_member};
        let value = json!("data.observations");
        for object in [
            json!({"data": {"b": 1, "a": [1.5, "é"]}, "type": "t", "id": "x"}),
            json!({}),
        ] {
            let canonical = to_vec(&object);
            let mut whole = object.clone();
            whole["withheld"] = value.clone();
            assert_eq!(
                with_last_member(&canonical, &object, "withheld", &value),
                Some(to_vec(&whole))
            );
        }
        // A member that would not go last is not added so: after an ASCII key, a non-ASCII
        // one, or one beyond U+FFFF (compared by UTF-16 code units).
        for object in [
            json!({"zeta": 1}),
            json!({"wöx": 1}),
            json!({"w\u{1F600}": 1}),
        ] {
            assert_eq!(
                with_last_member(&to_vec(&object), &object, "withheld", &value),
                None,
                "{object}"
            );
        }
        // A key that begins the new one sorts before it.
        let object = json!({"with": 1});
        let mut whole = object.clone();
        whole["withheld"] = value.clone();
        assert_eq!(
            with_last_member(&to_vec(&object), &object, "withheld", &value),
            Some(to_vec(&whole))
        );
    }

    #[test]
    fn keys_are_sorted_and_numbers_canonical() {
        let value = json!({"b": 1.0, "a": [1e21, "é"], "A": null});
        assert_eq!(
            super::to_string(&value),
            r#"{"A":null,"a":[1e+21,"é"],"b":1}"#
        );
    }
}
