//! Interoperability: a log written by this crate is checked by Go's
//! golang.org/x/mod/sumdb/note and sumdb/tlog (Debian packages `golang-go`
//! and `golang-golang-x-mod-dev`), which this project did not write. The
//! test fails, never skips, when Go or the package is missing.

use passerelle::audit::log::read_bundle;
use passerelle::audit::merkle::consistency_proof;
use passerelle::audit::note::Note;
use passerelle::audit::tiles::TileReader;
use passerelle::audit::{AuditLog, Fact, Kind, NoteSigner, Options, Transport};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ORIGIN: &str = "audit.example.org/interop";
const GOPATH: &str = "/usr/share/gocode";

fn fact(i: u64) -> Fact {
    let mut f = Fact::new(Kind::Accepted, "2026-06-01T12:00:00Z".parse().unwrap());
    f.sender = Some("airline.at".into());
    f.transport = Some(Transport::Amqp);
    f.event_type = Some("ma.rva.boarding.confirmed".into());
    f.event_id = Some(format!("interop-{i}"));
    f.case_id = Some(format!("RVA-2026-{:06}", i % 11));
    f.personal.native = Some(vec![b'x'; (i % 300) as usize]);
    f
}

/// Runs the Go verifier on `public` with `vkey` and the `old` checkpoint, and with the
/// evidence folder and the signer key file of the cross-checks (`rest`), if given.
fn run_go(public: &Path, vkey: &str, old: &Path, rest: &[&Path]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify.go");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache");
    assert!(
        Path::new(GOPATH)
            .join("src/golang.org/x/mod/sumdb/tlog")
            .is_dir(),
        "golang.org/x/mod is missing: apt-get install -y golang-go golang-golang-x-mod-dev"
    );
    Command::new("go")
        .arg("run")
        .arg(&script)
        .arg(public)
        .arg(vkey)
        .arg(old)
        .args(rest)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOCACHE", &cache)
        .output()
        .expect("`go` must be installed for this test: apt-get install -y golang-go golang-golang-x-mod-dev")
}

#[test]
fn go_sumdb_verifies_checkpoints_tiles_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let skey_file = dir.path().join("signer.key");
    std::fs::write(&skey_file, signer.to_signer_key().as_bytes()).unwrap();
    let vkey = signer.verifier().to_verifier_key();
    let log_dir = dir.path().join("log");
    let options = Options {
        checkpoint_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let log = AuditLog::open(&log_dir, signer, ORIGIN, options).unwrap();

    // Old checkpoint at a size that is not a tile boundary, then grow past a
    // full level-1 tile so that several levels and partial tiles are involved.
    for i in 0..300 {
        log.append(&fact(i)).unwrap();
    }
    log.sync().unwrap();
    let old = dir.path().join("old.checkpoint");
    std::fs::copy(log_dir.join("public/checkpoint"), &old).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let log = &log;
            s.spawn(move || {
                (300..1100u64)
                    .filter(|i| i % 4 == t)
                    .for_each(|i| drop(log.append(&fact(i)).unwrap()))
            });
        }
    });
    log.sync().unwrap();
    let (_, cp) = log.latest_checkpoint();
    let public = log.layout().public.clone();

    let evidence = dir.path().join("evidence");
    std::fs::create_dir(&evidence).unwrap();
    for index in [0u64, 1, 255, 256, 299, 777, cp.size - 1] {
        let proof = log.inclusion(index).unwrap().unwrap();
        let entry =
            read_bundle(&public, cp.size, index / 256).unwrap()[(index % 256) as usize].clone();
        std::fs::write(
            evidence.join(format!("{index}.tlog-proof")),
            proof.to_text(),
        )
        .unwrap();
        std::fs::write(evidence.join(format!("{index}.entry")), entry).unwrap();
    }
    let reader = TileReader::new(&public, cp.size);
    let cons: Vec<String> = consistency_proof(&reader, 300, cp.size)
        .unwrap()
        .iter()
        .map(|h| h.to_base64())
        .collect();
    std::fs::write(evidence.join("consistency.txt"), cons.join("\n")).unwrap();
    let verifier = log.verifier().clone();
    log.close().unwrap();

    // An auditor's check, with the log and a checkpoint kept from before only.
    let out = run_go(&public, &vkey, &old, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Go verifier failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok consistent with size 300"), "{stdout}");
    assert!(!stdout.contains("tlog-proof"), "{stdout}");

    let out = run_go(&public, &vkey, &old, &[&evidence, &skey_file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Go verifier failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ok checkpoint signature",
        "ok root recomputed from tiles",
        "ok 1100 entries included",
        "ok consistent with size 300",
        "ok 7 tlog-proof files",
        "ok consistency (Rust proof)",
        "ok signed a note",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // A note Go signed with our signer key file verifies here.
    let go_note = std::fs::read(evidence.join("go-signed.note")).unwrap();
    assert_eq!(
        Note::open(&go_note, &verifier).unwrap(),
        "signed by Go with the Rust key\n"
    );

    // And Go notices tampering too: one flipped bit in a level-0 tile.
    let tile = public.join("tile/0/001");
    let mut data = std::fs::read(&tile).unwrap();
    data[100] ^= 1;
    std::fs::write(&tile, &data).unwrap();
    let out = run_go(&public, &vkey, &old, &[&evidence, &skey_file]);
    assert!(
        !out.status.success(),
        "Go accepted a tampered tile:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
