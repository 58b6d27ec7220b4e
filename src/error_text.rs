//! How an error and its causes are said in one line: `outer: inner: …`.
//!
//! Many errors already end with their cause's text (`cannot read the file x: No such file or
//! directory`), and the cause then comes again as the error's source. Said once here, for the
//! command line's errors and for the causes of failed webhook calls in the log. A sender's text
//! quoted in an answer is cut short and escaped ([`quoted_cut`]), and a failed task is said
//! without its panic's message ([`task_failure`]).

/// Joins the texts of an error and its causes with `: `, leaving out a text that the line so
/// far already ends with.
pub fn each_cause_once(texts: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for text in texts {
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Why a TOML text could not be read into the type asked for: the key at fault, when there is
/// one (`limits.burst`, `partner[3].delivery.url`), and the problem, by line and column and
/// without the value (see [`toml_error_unquoted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlRefusal {
    /// The key's path, as serde gives it (entries of an array counted from 0).
    pub key: Option<String>,
    /// What is wrong, and where.
    pub problem: String,
}

impl std::fmt::Display for TomlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

/// Reads a TOML text into `T`; a refusal names the key at fault (see [`TomlRefusal`]), never
/// the value: a settings file may hold a password, a registry a webhook URL with a token.
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlRefusal> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| TomlRefusal {
        key: None,
        problem: toml_error_unquoted(text, &error),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let key = error.path().to_string();
        TomlRefusal {
            // The path is `.` when no key is at fault.
            key: (key != ".").then_some(key),
            problem: toml_error_unquoted(text, error.inner()),
        }
    })
}

/// A TOML file's error, said by its line and column, without what the file holds there: the
/// `toml` crate quotes the line, and serde quotes a string of the wrong type, where a webhook
/// URL or a password may stand. `text` is the file's text.
pub fn toml_error_unquoted(text: &str, error: &toml::de::Error) -> String {
    let message = without_quoted_strings(error.message().trim_end());
    let Some(at) = error.span().map(|span| span.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

/// `message` with each value serde quotes said by its kind only: `string "…"` (escaped as
/// Rust's `Debug` writes it) as `a string`, and `integer `…``, `floating point `…``, `boolean
/// `…`` and `character `…`` likewise; `unknown variant `…`` (a string that is none of an
/// enumeration's names) as `an unknown value`. Field names and the names expected, also
/// between backticks, stay.
fn without_quoted_strings(message: &str) -> String {
    const VALUES: [(&str, char, &str); 6] = [
        ("unknown variant `", '`', "an unknown value"),
        ("string \"", '"', "a string"),
        ("integer `", '`', "an integer"),
        ("floating point `", '`', "a number"),
        ("boolean `", '`', "a boolean"),
        ("character `", '`', "a character"),
    ];
    let mut said = String::new();
    let mut rest = message;
    loop {
        let first = VALUES
            .iter()
            .filter_map(|value| rest.find(value.0).map(|at| (at, value)))
            .min_by_key(|(at, _)| *at);
        let Some((start, (opening, closing, kind))) = first else {
            break;
        };
        said.push_str(&rest[..start]);
        said.push_str(kind);
        let value = &rest[start + opening.len()..];
        // serde does not escape a backtick inside a variant's value: it ends where serde's own
        // words resume (the last "`, expected" or "`, there are"), not at its first backtick.
        let words_resume = (opening.starts_with("unknown variant"))
            .then(|| {
                ["`, expected", "`, there are"]
                    .iter()
                    .filter_map(|words| value.rfind(words))
                    .max()
            })
            .flatten();
        let mut escaped = false;
        let end = words_resume.map(|at| at + 1).or_else(|| {
            value.char_indices().find_map(|(i, c)| {
                let closes = c == *closing && !escaped;
                escaped = *closing == '"' && c == '\\' && !escaped;
                closes.then_some(i + c.len_utf8())
            })
        });
        rest = end.map_or("", |end| &value[end..]);
    }
    said.push_str(rest);
    said
}

/// A sender's text as an error quotes it back: at most `most` characters, with what cannot be
/// printed (controls, bidirectional overrides) escaped (`\u{202e}`), and `…` when cut.
pub fn quoted_cut(text: &str, most: usize) -> String {
    let mut shown: String = text
        .chars()
        .take(most)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > most {
        shown.push('…');
    }
    shown
}

/// What became of a task that did not end with a value, said without its panic's message: that
/// message is written by whatever code panicked, a library's among them, and may quote the
/// data it was given, which no log may hold.
pub fn task_failure(error: &tokio::task::JoinError) -> &'static str {
    if error.is_panic() {
        "the task panicked"
    } else {
        "the task was cancelled"
    }
}

#[cfg(test)]
mod tests {
    use super::{each_cause_once, toml_error_unquoted};

    #[test]
    fn a_toml_error_says_where_without_what_the_file_holds() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // read by serde only
        struct Entry {
            delivery: std::collections::BTreeMap<String, String>,
        }
        let text = "\n# a comment\ndelivery = \"https://u:pw@x.example/?t=\\\"tok\\\"\"\n";
        let error = toml::from_str::<Entry>(text).unwrap_err();
        let said = toml_error_unquoted(text, &error);
        assert!(
            said.starts_with("line 3, column 12: invalid type: a string"),
            "{said}"
        );
        for secret in ["pw", "x.example", "tok"] {
            assert!(!said.contains(secret), "{said}");
        }

        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // read by serde only
        struct Auth {
            password: String,
        }
        for (text, kind) in [
            ("password = 12345678\n", "an integer"),
            ("password = 1234.5\n", "a number"),
            ("password = true\n", "a boolean"),
        ] {
            let error = toml::from_str::<Auth>(text).unwrap_err();
            let said = toml_error_unquoted(text, &error);
            assert!(said.contains(&format!("invalid type: {kind}")), "{said}");
            for secret in ["12345678", "1234.5", "true"] {
                assert!(!said.contains(secret), "{said}");
            }
        }
        // Field names stay.
        let error = toml::from_str::<Auth>("passwrd = \"x\"\n").unwrap_err();
        let said = toml_error_unquoted("passwrd = \"x\"\n", &error);
        assert!(
            said.contains("unknown field `passwrd`, expected `password`"),
            "{said}"
        );
        // A value that is none of an enumeration's names is left out, backticks and all.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // read by serde only
        enum Mechanism {
            #[serde(rename = "plain")]
            Plain,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // read by serde only
        struct Chosen {
            mechanism: Mechanism,
        }
        let text = "mechanism = \"hun`ter2`s\"\n";
        let error = toml::from_str::<Chosen>(text).unwrap_err();
        let said = toml_error_unquoted(text, &error);
        assert!(
            said.contains("an unknown value, expected `plain`"),
            "{said}"
        );
        assert!(!said.contains("ter2"), "{said}");
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let texts = ["reading x: not found", "not found", "deeper"].map(str::to_owned);
        assert_eq!(each_cause_once(texts), "reading x: not found: deeper");
    }
}
