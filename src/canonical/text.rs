//! The characters a canonical string may hold.
//!
//! Every string of a canonical event is written out again, into partners' XML and JSON. XML 1.0
//! cannot carry most C0 control characters even as character references, nor U+FFFE and
//! U+FFFF, and the C1 controls (U+0080 to U+009F) are almost always Windows-1252 bytes sent
//! under an ISO-8859-1 label. This module owns the rule, and finding the first string (or
//! member name) of an event that breaks it. It knows no partner and no native format.

use serde_json::Value;

/// True for a character no canonical string may hold: a C0 control other than tab, line feed
/// and carriage return, a C1 control, or the noncharacters U+FFFE and U+FFFF.
pub fn is_refused(character: char) -> bool {
    matches!(
        character,
        '\u{0}'..='\u{8}'
            | '\u{B}'
            | '\u{C}'
            | '\u{E}'..='\u{1F}'
            | '\u{80}'..='\u{9F}'
            | '\u{FFFE}'
            | '\u{FFFF}'
    )
}

/// The first character of a text that [`is_refused`].
pub fn first_refused(text: &str) -> Option<char> {
    // Printable ASCII is nearly every string: one pass over the bytes settles it.
    if text.bytes().all(|byte| (0x20..0x7F).contains(&byte)) {
        return None;
    }
    text.chars().find(|character| is_refused(*character))
}

/// The first character of a reference (an event id) that does not show as itself: a control
/// character, a format character (zero-width spaces, bidirectional marks and overrides, the
/// byte order mark, soft hyphens; not the zero-width non-joiner and joiner, which some scripts
/// need) or a line or paragraph separator. Such a character makes two
/// references that read alike differ, or turns a line of the gateway's log around.
pub fn first_unprintable(reference: &str) -> Option<char> {
    use unicode_general_category::{GeneralCategory, get_general_category};
    if reference.bytes().all(|byte| (0x20..0x7F).contains(&byte)) {
        return None;
    }
    reference.chars().find(|&character| {
        // The zero-width non-joiner and joiner shape Arabic, Persian and Indic text: they are
        // part of how such a reference is written.
        !matches!(character, '\u{200C}' | '\u{200D}')
            && matches!(
                get_general_category(character),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            )
    })
}

/// What kind of character [`first_unprintable`] found, to name it.
pub fn kind_of(character: char) -> &'static str {
    use unicode_general_category::{GeneralCategory, get_general_category};
    match get_general_category(character) {
        GeneralCategory::Control => "the control character",
        GeneralCategory::Format => "the invisible format character",
        GeneralCategory::LineSeparator => "the line separator",
        GeneralCategory::ParagraphSeparator => "the paragraph separator",
        _ => "the character",
    }
}

/// Where a refused character was found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCharacter {
    /// The path to the string (member names, and item numbers for arrays), from the top.
    pub path: Vec<String>,
    /// True when the character is in the last member name of `path` rather than in a value.
    pub in_name: bool,
    /// The character.
    pub character: char,
}

impl RefusedCharacter {
    /// What the character is, without quoting the text around it: `the control character
    /// U+0001`, `the noncharacter U+FFFE`.
    pub fn describe(&self) -> String {
        let kind = if matches!(self.character, '\u{FFFE}' | '\u{FFFF}') {
            "noncharacter"
        } else {
            "control character"
        };
        format!("the {kind} U+{:04X}", u32::from(self.character))
    }
}

/// Finds the first string or member name, in document order, that holds a refused character.
pub fn find_refused(value: &Value) -> Option<RefusedCharacter> {
    let mut path = Vec::new();
    walk(value, &mut path)
}

/// One step of the path being walked, borrowed from the value: nothing is copied unless a
/// refused character is found.
enum Step<'v> {
    Name(&'v str),
    Index(usize),
}

fn owned(path: &[Step<'_>]) -> Vec<String> {
    path.iter()
        .map(|step| match step {
            Step::Name(name) => (*name).to_owned(),
            Step::Index(index) => index.to_string(),
        })
        .collect()
}

fn walk<'v>(value: &'v Value, path: &mut Vec<Step<'v>>) -> Option<RefusedCharacter> {
    match value {
        Value::String(text) => first_refused(text).map(|character| RefusedCharacter {
            path: owned(path),
            in_name: false,
            character,
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            path.push(Step::Index(index));
            let found = walk(item, path);
            path.pop();
            found
        }),
        Value::Object(members) => members.iter().find_map(|(name, member)| {
            if let Some(character) = first_refused(name) {
                // The name itself is not given: it holds the character.
                return Some(RefusedCharacter {
                    path: owned(path),
                    in_name: true,
                    character,
                });
            }
            path.push(Step::Name(name));
            let found = walk(member, path);
            path.pop();
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_with_characters_that_do_not_show_are_found() {
        assert_eq!(first_unprintable("CGSN-CASA-2026-00417"), None);
        assert_eq!(first_unprintable("RÉF-2026/ü"), None);
        assert_eq!(first_unprintable("می\u{200C}خواهم-1"), None);
        for (reference, found) in [
            ("A\nB", '\n'),
            ("A\u{200B}B", '\u{200B}'),
            ("A\u{202E}B", '\u{202E}'),
            ("\u{FEFF}AB", '\u{FEFF}'),
            ("A\u{2028}B", '\u{2028}'),
            ("A\u{AD}B", '\u{AD}'),
        ] {
            assert_eq!(first_unprintable(reference), Some(found), "{reference:?}");
        }
        assert_eq!(kind_of('\u{202E}'), "the invisible format character");
    }

    #[test]
    fn refuses_c0_c1_and_the_two_noncharacters_only() {
        for refused in [
            '\u{0}', '\u{1}', '\u{B}', '\u{1F}', '\u{80}', '\u{92}', '\u{9F}',
        ] {
            assert!(is_refused(refused), "{refused:?}");
        }
        assert!(is_refused('\u{FFFE}') && is_refused('\u{FFFF}'));
        for allowed in [
            '\t', '\n', '\r', ' ', '~', '\u{7F}', '\u{A0}', 'é', '’', '\u{FFFD}',
        ] {
            assert!(!is_refused(allowed), "{allowed:?}");
        }
    }

    #[test]
    fn finds_the_path_of_the_first_refused_string() {
        let event = json!({"data": {"case_id": "RVA-2026-004211",
            "holder": {"given_names": ["Mamadou", "La\u{1}mine"]}}, "id": "x"});
        let found = find_refused(&event).unwrap();
        assert_eq!(found.path, ["data", "holder", "given_names", "1"]);
        assert!(!found.in_name);
        assert_eq!(found.describe(), "the control character U+0001");
        assert_eq!(find_refused(&json!({"a": ["ok\tok\r\n", 1, null]})), None);
        let name = find_refused(&json!({"data": {"x\u{92}": 1}})).unwrap();
        assert_eq!((name.path, name.in_name), (vec!["data".to_owned()], true));
        let non = find_refused(&json!(["\u{FFFF}"])).unwrap();
        assert_eq!(non.describe(), "the noncharacter U+FFFF");
    }
}
