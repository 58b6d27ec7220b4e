//! The command line's standard output: a command whose report cannot be written (a full disk
//! behind a redirection, a reader that stops reading) fails, says so, and leaves no file of its
//! own behind; it never panics.

use std::io::Read;
use std::process::{Command, Stdio};

/// Runs `passerelle` with `args` from the project folder, its standard output going to
/// `/dev/full` (every write fails with "no space left on device").
fn into_a_full_disk(args: &[&str]) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("the command runs")
}

#[test]
fn a_report_that_cannot_be_written_fails_the_command() {
    let lint = into_a_full_disk(&["mapping", "lint"]);
    let said = String::from_utf8_lossy(&lint.stderr);
    assert_eq!(lint.status.code(), Some(1), "{said}");
    assert!(said.contains("error: writing standard output"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn a_key_whose_verifier_key_cannot_be_printed_is_not_kept() {
    let folder = tempfile::tempdir().unwrap();
    let key = folder.path().join("log.key");
    let keygen = into_a_full_disk(&[
        "audit",
        "keygen",
        "--name",
        "output.test/log",
        "--out",
        key.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&keygen.stderr);
    assert_eq!(keygen.status.code(), Some(1), "{said}");
    assert!(said.contains("is removed again"), "{said}");
    let left: Vec<_> = std::fs::read_dir(folder.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let mut lint = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["mapping", "lint", "--ids"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    // The reader goes away before reading a byte.
    drop(lint.stdout.take());
    let status = lint.wait().unwrap();
    let mut said = String::new();
    lint.stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(!said.contains("error"), "{said}");
}
