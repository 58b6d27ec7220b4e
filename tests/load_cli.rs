//! `passerelle load` end to end, briefly: both gateways start, clients drive them over mutual
//! TLS, and the report names every figure and every target.

use std::process::Command;

#[test]
fn the_load_command_reports_every_figure_and_target() {
    let output = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["load", "--rounds", "1", "--seconds", "1", "--clients", "4"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the passerelle binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "round 0 floor:",
        "round 0 full:",
        "medians over 1 rounds:",
        "CPU per message: gateway",
        "gateway threads (µs): HTTP workers",
        "targets:",
        "full pipeline at 50 % of the floor or more:",
        "p99 under 25 ms:",
        "peak RSS under 200 MB:",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // Both runs measured messages. (Errors are counted, not failed on: a debug build on a busy
    // machine may time out a request, and the report's job is to say so.)
    for run in ["floor ", "full pipeline "] {
        let report = stdout
            .lines()
            .find(|l| l.starts_with(run) && l.contains("msg/s"))
            .unwrap_or_else(|| panic!("no {run:?} line in:\n{stdout}"));
        let rate: f64 = report
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {report:?}"));
        assert!(rate > 0.0, "{report}");
        let errors = report.rsplit_once("errors ").map(|(_, n)| n.parse::<u64>());
        assert!(
            matches!(errors, Some(Ok(_))),
            "no error count in {report:?}"
        );
    }
}
