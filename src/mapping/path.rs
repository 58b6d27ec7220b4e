//! Paths into native messages and decoded documents.
//!
//! This module owns the path syntax of the mapping language and its evaluation:
//! - XML: `Titulaire/Nom`, `ci:Dossier/@numero`, `@ref`, relative to the root element, with
//!   prefixes bound to namespace URIs by the mapping file (the message's own prefixes do not
//!   matter); `.` is the root itself;
//! - JSON: `flight/carrier`, `passenger/remarks`, relative to the top object; arrays met on the
//!   way are walked item by item, so a path may yield a list;
//! - decoded documents: `$bcbp.legs.0.pnr`, dotted, with numeric indexes.
//!
//! A path yields zero, one or several values. Empty strings and JSON `null` count as absent.

use super::xml::{Element, XmlDocument, is_ncname};
use serde_json::Value;
use std::collections::BTreeMap;

/// The largest number of values one path may yield, so that a message cannot blow up a list.
/// A path that gives more is an error ([`TooManyValues`]), never its first thousand values read
/// as if they were all: a case reference after the thousandth remark must not go unseen.
pub const MAX_VALUES: usize = 1_000;

/// A path that gives, or passes through, more than [`MAX_VALUES`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gives more than {MAX_VALUES} values")]
pub struct TooManyValues;

/// Why a path could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty or has an empty step.
    #[error("empty step in path {0:?}")]
    EmptyStep(String),
    /// A prefix is not declared in the file's `[namespaces]`.
    #[error("namespace prefix {prefix:?} in path {path:?} is not declared in [namespaces]")]
    UnknownPrefix {
        /// The prefix.
        prefix: String,
        /// The path.
        path: String,
    },
    /// An attribute step that is not last.
    #[error("in path {0:?}, an attribute (@name) can only be the last step")]
    AttributeNotLast(String),
    /// A step of an XML path that is not an XML name: a position, a function or a predicate,
    /// which the path language does not have and would otherwise match nothing.
    #[error(
        "in path {path:?}, {step:?} is not an XML name: a path is element names separated by /, \
         with @ before an attribute (no positions, functions or predicates)"
    )]
    NotAName {
        /// The step.
        step: String,
        /// The path.
        path: String,
    },
}

/// One step of an XML path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct XmlStep {
    namespace: Option<String>,
    local: String,
}

/// A compiled path into an XML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlPath {
    steps: Vec<XmlStep>,
    attribute: Option<XmlStep>,
}

impl XmlPath {
    /// Compiles a path, binding prefixes with the file's namespace table (key `""` is the
    /// namespace of unprefixed element names; unprefixed attributes are in no namespace).
    pub fn compile(path: &str, namespaces: &BTreeMap<String, String>) -> Result<Self, PathError> {
        let mut steps = Vec::new();
        let mut attribute = None;
        let parts: Vec<&str> = if path == "." {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let count = parts.len();
        for (index, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                return Err(PathError::EmptyStep(path.into()));
            }
            let (is_attribute, name) = match part.strip_prefix('@') {
                Some(name) => (true, name),
                None => (false, part),
            };
            let (namespace, local) = match name.split_once(':') {
                Some((prefix, local)) => {
                    let uri = namespaces
                        .get(prefix)
                        .ok_or_else(|| PathError::UnknownPrefix {
                            prefix: prefix.into(),
                            path: path.into(),
                        })?;
                    (Some(uri.clone()), local)
                }
                None if is_attribute => (None, name),
                None => (namespaces.get("").cloned(), name),
            };
            if local.is_empty() {
                return Err(PathError::EmptyStep(path.into()));
            }
            if !is_ncname(local) {
                return Err(PathError::NotAName {
                    step: part.into(),
                    path: path.into(),
                });
            }
            let step = XmlStep {
                namespace,
                local: local.into(),
            };
            if is_attribute {
                if index + 1 != count {
                    return Err(PathError::AttributeNotLast(path.into()));
                }
                attribute = Some(step);
            } else {
                steps.push(step);
            }
        }
        Ok(Self { steps, attribute })
    }

    /// The values at this path below the root: element texts (trimmed) or attribute values.
    pub fn eval<'d>(
        &self,
        document: &'d XmlDocument,
        from: &'d Element,
    ) -> Result<Vec<&'d str>, TooManyValues> {
        let mut found = Vec::new();
        self.each_value(document, from, &mut |text| found.push(text))?;
        Ok(found)
    }

    /// Calls `visit` with each value at this path (trimmed, empty ones skipped), in document
    /// order, without building intermediate lists; stops at the value past [`MAX_VALUES`].
    pub fn each_value<'d>(
        &self,
        document: &'d XmlDocument,
        from: &'d Element,
        visit: &mut dyn FnMut(&'d str),
    ) -> Result<(), TooManyValues> {
        let mut count = 0;
        let finished = descend(document, from, &self.steps, &mut |element| {
            let value = match &self.attribute {
                Some(attribute) => {
                    element.attribute(attribute.namespace.as_deref(), &attribute.local)
                }
                None => Some(element.text.as_str()),
            };
            if let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) {
                count += 1;
                if count > MAX_VALUES {
                    return false;
                }
                visit(value);
            }
            true
        });
        if finished { Ok(()) } else { Err(TooManyValues) }
    }

    /// The elements at this path (for `each`); an attribute step is ignored.
    pub fn elements<'d>(
        &self,
        document: &'d XmlDocument,
        from: &'d Element,
    ) -> Result<Vec<&'d Element>, TooManyValues> {
        let mut found = Vec::new();
        let finished = descend(document, from, &self.steps, &mut |element| {
            found.push(element);
            found.len() <= MAX_VALUES
        });
        if finished {
            Ok(found)
        } else {
            Err(TooManyValues)
        }
    }
}

/// Visits the elements below `element` that match `steps`, depth first, in document order,
/// without intermediate lists (paths are evaluated for every field of every message). Stops
/// as soon as `visit` returns false; returns false when it stopped.
fn descend<'d>(
    document: &'d XmlDocument,
    element: &'d Element,
    steps: &[XmlStep],
    visit: &mut dyn FnMut(&'d Element) -> bool,
) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return visit(element);
    };
    for &child in &element.children {
        let child = &document.elements[child];
        if child.name.is(step.namespace.as_deref(), &step.local)
            && !descend(document, child, rest, visit)
        {
            return false;
        }
    }
    true
}

/// A compiled path into a JSON value (`/`-separated keys) or a decoded document
/// (`.`-separated keys and indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    keys: Vec<String>,
}

impl JsonPath {
    /// Compiles a path whose steps are separated by `separator`; `.` alone is the value itself.
    pub fn compile(path: &str, separator: char) -> Result<Self, PathError> {
        if path == "." || path.is_empty() {
            return Ok(Self { keys: Vec::new() });
        }
        let keys: Vec<String> = path.split(separator).map(str::to_owned).collect();
        if keys.iter().any(String::is_empty) {
            return Err(PathError::EmptyStep(path.into()));
        }
        Ok(Self { keys })
    }

    /// The one value at this path, walking objects by key and arrays by index only.
    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.keys.iter().try_fold(value, |value, key| match value {
            Value::Object(map) => map.get(key),
            Value::Array(items) => items.get(key.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// The values at this path. Arrays met before the last key are walked item by item; an
    /// array at the end is returned whole as its items. Absent values are left out.
    pub fn eval<'v>(&self, value: &'v Value) -> Result<Vec<&'v Value>, TooManyValues> {
        Self::walk(&self.keys, value)
    }

    /// The values at this path inside an object (the event data being built, in checks).
    pub fn eval_in<'v>(
        &self,
        object: &'v serde_json::Map<String, Value>,
    ) -> Result<Vec<&'v Value>, TooManyValues> {
        match self.keys.split_first() {
            Some((first, rest)) => match object.get(first) {
                Some(value) => Self::walk(rest, value),
                None => Ok(Vec::new()),
            },
            None => Ok(Vec::new()),
        }
    }

    /// True when the path leads to an empty array (`[]`): the sender wrote an empty list,
    /// which is not the same as leaving the key out or sending `null`.
    pub fn ends_in_empty_array(&self, value: &Value) -> bool {
        Self::reach(&self.keys, value)
            .unwrap_or_default()
            .into_iter()
            .any(|found| found.as_array().is_some_and(Vec::is_empty))
    }

    fn walk<'v>(keys: &[String], value: &'v Value) -> Result<Vec<&'v Value>, TooManyValues> {
        let mut found = Vec::new();
        for reached in Self::reach(keys, value)? {
            let items = match reached {
                Value::Array(items) => items.as_slice(),
                other => std::slice::from_ref(other),
            };
            for item in items.iter().filter(|item| !is_absent(item)) {
                if found.len() == MAX_VALUES {
                    return Err(TooManyValues);
                }
                found.push(item);
            }
        }
        Ok(found)
    }

    /// What the path leads to as written, `null`s, blank strings and arrays at the end
    /// included: for telling a sender how a value it must give was missing.
    pub fn reached<'v>(&self, value: &'v Value) -> Vec<&'v Value> {
        Self::reach(&self.keys, value).unwrap_or_default()
    }

    /// The values the keys lead to, arrays at the end left whole. Each step may reach at most
    /// [`MAX_VALUES`] values, `null`s included, so that no value is left unread.
    fn reach<'v>(keys: &[String], value: &'v Value) -> Result<Vec<&'v Value>, TooManyValues> {
        let mut current: Vec<&Value> = vec![value];
        for key in keys {
            let mut next = Vec::new();
            for value in current {
                match value {
                    Value::Object(map) => next.extend(map.get(key)),
                    Value::Array(items) => match key.parse::<usize>() {
                        Ok(index) => next.extend(items.get(index)),
                        Err(_) => next.extend(items.iter().filter_map(|item| item.get(key))),
                    },
                    _ => {}
                }
                if next.len() > MAX_VALUES {
                    return Err(TooManyValues);
                }
            }
            current = next;
        }
        Ok(current)
    }
}

/// JSON `null` and empty strings count as absent.
pub fn is_absent(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::xml::XmlLimits;
    use serde_json::json;

    #[test]
    fn xml_paths_match_namespace_uris_not_prefixes() {
        let namespaces = BTreeMap::from([("x".to_owned(), "urn:ci".to_owned())]);
        let document = XmlDocument::parse(
            br#"<cons:A xmlns:cons="urn:ci" ref="R"><cons:B n="1"/><cons:B n="2"/><B n="3"/></cons:A>"#,
            XmlLimits::default(),
        )
        .unwrap();
        let root = document.root();
        let path = XmlPath::compile("x:B/@n", &namespaces).unwrap();
        assert_eq!(path.eval(&document, root).unwrap(), ["1", "2"]);
        assert_eq!(
            XmlPath::compile("B/@n", &namespaces)
                .unwrap()
                .eval(&document, root)
                .unwrap(),
            ["3"]
        );
        assert_eq!(
            XmlPath::compile("@ref", &namespaces)
                .unwrap()
                .eval(&document, root)
                .unwrap(),
            ["R"]
        );
        assert!(matches!(
            XmlPath::compile("y:B", &namespaces),
            Err(PathError::UnknownPrefix { .. })
        ));
        assert!(matches!(
            XmlPath::compile("@a/B", &namespaces),
            Err(PathError::AttributeNotLast(_))
        ));
        for path in ["x:B[1]", "B/text()", "x:B/0", "B/*", "x:B:C"] {
            assert!(
                matches!(
                    XmlPath::compile(path, &namespaces),
                    Err(PathError::NotAName { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn json_paths_walk_arrays() {
        let value = json!({"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "n": null, "e": ""});
        let path = JsonPath::compile("a/b/c", '/').unwrap();
        assert_eq!(path.eval(&value).unwrap(), [&json!(1), &json!(2)]);
        assert_eq!(
            JsonPath::compile("a/b/1/c", '/')
                .unwrap()
                .eval(&value)
                .unwrap(),
            [&json!(2)]
        );
        assert!(
            JsonPath::compile("n", '/')
                .unwrap()
                .eval(&value)
                .unwrap()
                .is_empty()
        );
        assert!(
            JsonPath::compile("e", '/')
                .unwrap()
                .eval(&value)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            JsonPath::compile("a.b.2.d", '.')
                .unwrap()
                .eval(&value)
                .unwrap(),
            [&json!(3)]
        );
    }

    #[test]
    fn a_path_of_more_values_than_the_limit_is_an_error_not_its_first_values() {
        let remarks: Vec<Value> = (0..=MAX_VALUES).map(|n| json!(format!("R{n}"))).collect();
        let path = JsonPath::compile("remarks", '/').unwrap();
        let exactly = json!({ "remarks": remarks[..MAX_VALUES] });
        assert_eq!(path.eval(&exactly).unwrap().len(), MAX_VALUES);
        let over = json!({ "remarks": remarks });
        assert_eq!(path.eval(&over), Err(TooManyValues));
        // Passing through too many places is the same error, nulls counted.
        let items: Vec<Value> = (0..=MAX_VALUES).map(|_| json!({"r": null})).collect();
        let through = json!({ "items": items });
        assert_eq!(
            JsonPath::compile("items/r", '/').unwrap().eval(&through),
            Err(TooManyValues)
        );

        let agents = |count: usize| {
            let mut xml = String::from("<M>");
            for n in 0..count {
                xml.push_str(&format!("<Agent>A{n}</Agent>"));
            }
            xml.push_str("</M>");
            XmlDocument::parse(xml.as_bytes(), XmlLimits::default()).unwrap()
        };
        let path = XmlPath::compile("Agent", &BTreeMap::new()).unwrap();
        let document = agents(MAX_VALUES);
        assert_eq!(
            path.eval(&document, document.root()).unwrap().len(),
            MAX_VALUES
        );
        assert_eq!(
            path.elements(&document, document.root()).unwrap().len(),
            MAX_VALUES
        );
        let document = agents(MAX_VALUES + 1);
        assert_eq!(path.eval(&document, document.root()), Err(TooManyValues));
        assert!(path.elements(&document, document.root()).is_err());
    }
}
