//! Crash safety: the `passerelle` binary appends with several threads and is
//! killed with SIGKILL at many different moments (during recovery, between
//! group commits, while tiles or the checkpoint are being written). After
//! each kill the log must open, verify, stay consistent with the last
//! checkpoint signed before the kill, and hold every entry whose append
//! returned.

use passerelle::audit::log::read_bundle;
use passerelle::audit::verify::verify_public;
use passerelle::audit::{AuditLog, Leaf, NoteSigner, Options};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ORIGIN: &str = "audit.example.org/crash-test";
const ROUNDS: u64 = 24;

#[test]
fn kill_minus_nine_at_many_points_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let key_file = dir.path().join("signer.key");
    let signer = NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap();
    std::fs::File::create(&key_file)
        .unwrap()
        .write_all(signer.to_signer_key().as_bytes())
        .unwrap();
    let verifier = signer.verifier().clone();

    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut kills_with_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_passerelle"))
            .args(["audit", "stress-append", "--log"])
            .arg(&log_dir)
            .arg("--signer")
            .arg(&key_file)
            .args(["--count", "1000000", "--threads", "8", "--interval-ms", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the passerelle binary must start");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Every fourth round is killed on a timer, possibly during recovery;
        // the others after a varying number of acknowledgements.
        if round % 4 == 0 {
            std::thread::sleep(Duration::from_millis(round * 3));
        } else {
            let target = 1 + (round * 53) % 400;
            let start = Instant::now();
            let mut seen = 0;
            while seen < target && start.elapsed() < Duration::from_secs(30) {
                match lines.next() {
                    Some(Ok(l)) if l.starts_with("ack ") => {
                        seen += 1;
                        record(&mut acked, &l);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            assert!(seen > 0, "round {round}: the appender acknowledged nothing");
            kills_with_acks += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for l in lines.map_while(Result::ok) {
            if l.starts_with("ack ") {
                record(&mut acked, &l);
            }
        }

        // The last checkpoint signed before the kill, if any.
        let before = std::fs::read(log_dir.join("public/checkpoint")).ok();

        let log = AuditLog::open(
            &log_dir,
            NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap(),
            ORIGIN,
            Options::default(),
        )
        .unwrap_or_else(|e| panic!("round {round}: the log does not open after kill -9: {e}"));
        log.sync().unwrap();
        let (_, cp) = log.latest_checkpoint();
        let public = log.layout().public.clone();
        log.close().unwrap();
        let report = verify_public(&public, &verifier, before.as_deref(), &mut |_| {})
            .unwrap_or_else(|f| {
                panic!("round {round}: the log does not verify after kill -9: {f}")
            });
        assert_eq!(report.checkpoint, cp);
        for (index, _) in &acked {
            assert!(
                *index < cp.size,
                "round {round}: acknowledged entry {index} was lost (size {})",
                cp.size
            );
        }
        // Every acknowledged entry holds the fact that was acknowledged.
        for (index, id) in acked.iter().filter(|(i, _)| i % 7 == round % 7) {
            let bundle = read_bundle(&public, cp.size, index / 256).unwrap();
            let leaf = Leaf::decode(&bundle[(index % 256) as usize]).unwrap();
            assert_eq!(
                leaf.event_id.as_deref(),
                Some(id.as_str()),
                "round {round}: entry {index}"
            );
        }
    }
    assert!(kills_with_acks >= 18, "too few kills during appends");
    assert!(
        acked.len() > 1000,
        "too few acknowledged appends ({}) for the test to mean much",
        acked.len()
    );
}

fn record(acked: &mut Vec<(u64, String)>, line: &str) {
    let mut parts = line.split_whitespace().skip(1);
    let index = parts
        .next()
        .and_then(|i| i.parse().ok())
        .expect("ack line has an index");
    let id = parts.next().expect("ack line has an event id").to_owned();
    acked.push((index, id));
}
