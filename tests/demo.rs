//! The README's main command, `passerelle demo`, run as a user runs it: the binary, in a folder
//! of its own holding the project's `mappings/`, `demo/`, `config/` and `certs/`. It plays the
//! return of case RVA-2026-004211 through a gateway on loopback, the AMQP partners through a
//! private RabbitMQ broker (the test fails when RabbitMQ is not installed, rather than let the
//! demo fall back to inboxes), then audits it. The test checks that every partner's message is
//! accepted, that each recipient gets its messages by its own transport and in its own format,
//! and that the evidence the demo writes passes the offline checks it prints.

use std::path::Path;
use std::process::Command;

/// Runs the binary in `dir` with `args`; returns its standard output, and panics, with both
/// outputs, unless it succeeds.
fn run(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running passerelle");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "passerelle {args:?}: {}\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// The command the demo prints after `Check …:`, its words as a shell would split them (the
/// demo quotes only the verifier key, in single quotes).
fn printed_command<'a>(output: &'a str, starting: &str) -> Vec<&'a str> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(starting))
        .unwrap_or_else(|| panic!("no `{starting}` command printed:\n{output}"));
    line.split(' ')
        .skip(1)
        .map(|word| word.trim_matches('\''))
        .collect()
}

/// A folder of its own holding (links to) the project's `mappings/`, `demo/`, `config/` and
/// `certs/`, as a user's checkout does.
fn project_folder() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    for folder in ["mappings", "demo", "config", "certs"] {
        std::os::unix::fs::symlink(root.join(folder), dir.path().join(folder))
            .expect("linking a project folder");
    }
    dir
}

#[test]
fn the_demo_plays_the_case_over_https_and_amqp_and_its_evidence_verifies() {
    let dir = project_folder();
    let output = run(dir.path(), &["demo"]);
    assert!(
        output.contains("RabbitMQ is up"),
        "the demo needs RabbitMQ (Debian package rabbitmq-server) for its AMQP partners:\n{output}"
    );
    // Twelve messages, each accepted: ten over HTTPS, IOM Senegal's two over AMQP.
    let accepted_https = output.lines().filter(|l| l.contains(" -> 202 (")).count();
    let accepted_amqp = output
        .lines()
        .filter(|l| l.contains("published on AMQP, accepted"))
        .count();
    assert_eq!((accepted_https, accepted_amqp), (10, 2), "{output}");
    // Each recipient by its own transport, in its own format, with what it must not see
    // withheld.
    for expected in [
        "ma.interieur             inbox: 9 message(s) (application/cloudevents+json), acknowledged",
        "sn.consulat.casablanca   inbox: 2 message(s) (application/xml), acknowledged; withheld \
         from it: data.*.biometrics, data.medical, data.vulnerabilities",
        "iom.ma                   inbox: 8 message(s) (application/cloudevents+json), \
         acknowledged; withheld from it: data.observations",
        "iom.sn                   AMQP queue passerelle.out.iom.sn: 1 message(s) \
         (application/cloudevents+json ma.rva.boarding.confirmed)",
        "ma.dgsn                  webhook: 3 message(s) pushed (application/xml \
         AvisEmbarquement; application/xml AvisLaissezPasser; application/xml AvisReservation)",
        "airline.at               webhook: 2 message(s) pushed (application/json \
         EXIT_AUTHORIZED; application/json PROGRAMME_BOOKING)",
    ] {
        assert!(output.contains(expected), "missing `{expected}`:\n{output}");
    }
    assert!(!output.contains("still waiting"), "{output}");
    assert!(
        output.contains("entries for the case, every one verified against the signed checkpoint"),
        "{output}"
    );
    // The evidence it wrote passes the checks it prints, offline.
    let bundle = run(
        dir.path(),
        &printed_command(&output, "passerelle audit verify-bundle"),
    );
    assert!(
        bundle.starts_with("ok: ") && bundle.contains("complete: the log holds"),
        "{bundle}"
    );
    let receipt = run(
        dir.path(),
        &printed_command(&output, "passerelle audit verify-receipt"),
    );
    assert!(
        receipt.starts_with("ok: ") && !receipt.contains("FAILED"),
        "{receipt}"
    );
}

/// Without RabbitMQ, the demo still plays the case: the AMQP partners send over HTTPS and
/// read an inbox, as it says.
#[test]
fn without_rabbitmq_the_demo_moves_the_amqp_partners_to_https() {
    let dir = project_folder();
    // A folder without RabbitMQ's programs: the demo finds no broker.
    let no_broker = tempfile::tempdir().expect("a temporary folder");
    let output = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .arg("demo")
        .env("PASSERELLE_RABBITMQ_BIN", no_broker.path())
        .current_dir(dir.path())
        .output()
        .expect("running passerelle");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("use REST instead"), "{stdout}");
    let accepted_https = stdout.lines().filter(|l| l.contains(" -> 202 (")).count();
    assert_eq!(accepted_https, 12, "{stdout}");
    assert!(
        stdout.contains(
            "iom.sn                   inbox: 1 message(s) (application/cloudevents+json), \
             acknowledged"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("entries for the case, every one verified against the signed checkpoint"),
        "{stdout}"
    );
}
