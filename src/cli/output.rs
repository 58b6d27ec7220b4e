//! The commands' standard output.
//!
//! `println!` panics when standard output cannot be written (a reader that closed the pipe, as
//! `| head -1` does; a full disk behind a redirection), and a write whose error is ignored lets
//! a command report success with its output lost (a trail, a verdict, a verifier key that is
//! printed only once). Every command writes through here instead: the first failure is kept,
//! later output is skipped, and `main` turns the failure into the exit status (see
//! [`failure`]).

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

/// The first write to standard output that failed, if one did.
static FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes `bytes` to standard output and flushes them, so that a failure is seen at the write
/// that met it; nothing once a write has failed.
pub fn write(bytes: &[u8]) {
    let mut failure = FAILURE.lock().unwrap_or_else(PoisonError::into_inner);
    if failure.is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(error) = out.write_all(bytes).and_then(|()| out.flush()) {
        *failure = Some(error);
    }
}

/// Writes `text` and a line end to standard output (see [`write`]).
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut text = text.to_string();
    text.push('\n');
    write(text.as_bytes());
}

/// Whether a write to standard output has failed (the failure stays for [`failure`]).
pub fn has_failed() -> bool {
    FAILURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// The failure of a write to standard output, if one failed.
pub fn failure() -> Option<io::Error> {
    FAILURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}
