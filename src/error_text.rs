//! How an error and its causes are said in one line: `outer: inner: …`.
//!
//! Many errors already end with their cause's text (`cannot read the file x: No such file or
//! directory`), and the cause then comes again as the error's source. Said once here, for the
//! command line's errors and for the causes of failed webhook calls in the log.

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

#[cfg(test)]
mod tests {
    use super::each_cause_once;

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let texts = ["reading x: not found", "not found", "deeper"].map(str::to_owned);
        assert_eq!(each_cause_once(texts), "reading x: not found: deeper");
    }
}
