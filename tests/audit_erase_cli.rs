//! `passerelle audit erase`: the operator's command that erases a case, with the gateway
//! stopped (it is refused while another process writes the log).

use std::path::Path;
use std::process::{Command, Output};

fn passerelle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `passerelle audit erase` of `case` on the log in `log`, signed with `key`.
fn erase_case(log: &Path, key: &Path, case: &str) -> Output {
    passerelle(&[
        "audit",
        "erase",
        "--log",
        path(log),
        "--signer",
        path(key),
        "--case",
        case,
    ])
}

/// A new signing key of log `erase.test/log` in `out`; returns its verifier key.
fn keygen(out: &Path) -> String {
    let made = passerelle(&[
        "audit",
        "keygen",
        "--name",
        "erase.test/log",
        "--out",
        path(out),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    String::from_utf8(made.stdout).unwrap().trim().to_owned()
}

#[test]
fn erasing_a_case_keeps_the_log_verifiable_and_cannot_be_repeated() {
    let scratch = tempfile::tempdir().unwrap();
    let (log, key) = (scratch.path().join("log"), scratch.path().join("log.key"));
    let verifier = keygen(&key);
    let append = passerelle(&[
        "audit",
        "stress-append",
        "--log",
        path(&log),
        "--signer",
        path(&key),
        "--count",
        "40",
    ]);
    assert!(
        append.status.success(),
        "{}",
        String::from_utf8_lossy(&append.stderr)
    );

    // While another process writes the log (here, this test holds its writer lock as a running
    // gateway would), the erasure is refused and says why.
    let held = std::fs::File::options()
        .write(true)
        .open(log.join("private/writer.lock"))
        .unwrap();
    held.lock().unwrap();
    let refused = erase_case(&log, &key, "RVA-2026-000005");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("open for writing in another process") && why.contains("stop it first"),
        "{why}"
    );
    drop(held);

    let erase = erase_case(&log, &key, "RVA-2026-000005");
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
    let said = String::from_utf8_lossy(&erase.stdout);
    assert!(
        said.contains("index 40") && !said.contains("RVA-2026-000005"),
        "{said}"
    );
    // What it wrote is closed to other users, whatever the shell's file mode creation mask:
    // the entry bundle names events, senders and recipients.
    {
        use std::os::unix::fs::PermissionsExt;
        for made in ["public/tile/entries/000.p/41", "public/checkpoint"] {
            let mode = std::fs::metadata(log.join(made))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{made}: {mode:o}");
        }
    }

    let verify = passerelle(&["audit", "verify", "--log", path(&log), "--key", &verifier]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("size 41"));

    let again = erase_case(&log, &key, "RVA-2026-000005");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already erased"));
    // Typed in lower case, it is the same case (written back in capitals, as every message
    // writes it).
    let lower = erase_case(&log, &key, "rva-2026-000005");
    assert!(!lower.status.success());
    assert!(String::from_utf8_lossy(&lower.stderr).contains("already erased"));

    // A mistyped id erases nothing, says so, and appends nothing: one of no case, ones not
    // written as a case id, and the gateway's trail of a partner's refusals, which is no case.
    let unknown = erase_case(&log, &key, "RVA-2026-999999");
    assert!(!unknown.status.success());
    let why = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        why.contains("no case with that id") && why.contains("nothing"),
        "{why}"
    );
    for not_a_case in [
        "RVA-2026-00005",
        "RVA_2026-000006",
        " RVA-2026-000006",
        "refused/sn.consulat.casablanca",
    ] {
        let refused = erase_case(&log, &key, not_a_case);
        assert!(!refused.status.success(), "{not_a_case}");
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(
            why.contains("is not a case id") && why.contains("nothing erased"),
            "{why}"
        );
    }
    let verify = passerelle(&["audit", "verify", "--log", path(&log), "--key", &verifier]);
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("size 41"));

    // A folder that holds no log (here the log's parent) is refused, naming the log below it,
    // and no log is started there.
    let wrong = erase_case(scratch.path(), &key, "RVA-2026-000006");
    assert!(!wrong.status.success());
    let why = String::from_utf8_lossy(&wrong.stderr);
    assert!(why.contains("holds no audit log"), "{why}");
    assert!(!scratch.path().join("private").exists());
    assert!(!scratch.path().join("public").exists());

    // A key of another log is refused, naming both logs.
    let other_key = scratch.path().join("other.key");
    keygen(&other_key);
    let other = erase_case(&log, &other_key, "RVA-2026-000006");
    assert!(!other.status.success());
    let why = String::from_utf8_lossy(&other.stderr);
    assert!(
        why.contains("holds the log erase.test/log signed with key") && why.contains("not the log"),
        "{why}"
    );
}
