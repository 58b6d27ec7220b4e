//! Lint findings, located by file and line.
//!
//! This module owns how a problem found while loading a mapping is reported: the file, the
//! line and column where the offending key was written, and a sentence an integration engineer
//! can act on.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem found in a file, located by byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Bytes of the file the problem is about.
    pub span: Range<usize>,
    /// What is wrong, and if possible how to mend it.
    pub message: String,
}

impl Issue {
    /// An issue at a byte range.
    pub fn at(span: Range<usize>, message: String) -> Self {
        Self { span, message }
    }
}

/// A problem found in a file, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    /// Locates an issue in the text of `file`.
    pub fn locate(file: &Path, text: &str, issue: &Issue) -> Self {
        let start = issue.span.start.min(text.len());
        let before = &text[..text.floor_char_boundary(start)];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        Self {
            file: file.to_path_buf(),
            line,
            column,
            message: issue.message.clone(),
        }
    }

    /// A problem with a whole file.
    pub fn file(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            message,
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let text = "a = 1\nbé = 2\n";
        let at = Diagnostic::locate(Path::new("f.toml"), text, &Issue::at(11..12, "x".into()));
        assert_eq!((at.line, at.column), (2, 5));
        assert_eq!(at.to_string(), "f.toml:2:5: x");
    }
}
