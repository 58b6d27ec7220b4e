//! Deterministic JSON: the RFC 8785 JSON Canonicalization Scheme.
//!
//! Every canonical event the gateway stores, signs or hands to an auditor is serialised here,
//! so that re-running a mapping on the same native bytes yields the same bytes out.

use serde_json::Value;

/// Serialises a value as RFC 8785 canonical JSON.
pub fn to_vec(value: &Value) -> Vec<u8> {
    // Serialising a `serde_json::Value` cannot fail: its keys are strings and its numbers finite.
    serde_json_canonicalizer::to_vec(value).unwrap_or_default()
}

/// Serialises a value as RFC 8785 canonical JSON text.
pub fn to_string(value: &Value) -> String {
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_numbers_canonical() {
        let value = json!({"b": 1.0, "a": [1e21, "é"], "A": null});
        assert_eq!(
            super::to_string(&value),
            r#"{"A":null,"a":[1e+21,"é"],"b":1}"#
        );
    }
}
