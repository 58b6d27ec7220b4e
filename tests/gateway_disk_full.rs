//! A full disk: the `passerelle serve` binary runs with its audit log, or its store, on a small
//! filesystem of its own (a `tmpfs` the test mounts, so the test runs as root), which the test
//! then fills. A message the gateway cannot make durable must be answered `503`, never `2xx`;
//! the gateway must say it is not ready; and once there is room again and the gateway has been
//! restarted, every message it acknowledged is still there with its receipt, and every message
//! it refused is accepted when its sender sends it again, once.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{
    Admin, Client, RegistryChanges, ServedGateway, config_file, fixture_text, write_registry,
};
use passerelle::audit::NoteSigner;
use passerelle::pipeline::sequence::CaseFile;
use passerelle::store::Store;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The size of the small filesystem.
const SMALL_FS: &str = "size=8m";
/// How many messages are sent against a full disk.
const AGAINST_FULL: usize = 6;

/// A `tmpfs` mounted on a folder for the life of the value; unmounted when dropped.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// Mounts a fresh `tmpfs` of [`SMALL_FS`] on `path` (created if missing).
    fn mount(path: &Path) -> SmallFs {
        std::fs::create_dir_all(path).expect("the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", SMALL_FS, "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}): this test fills a small filesystem of its \
             own, and must run as root",
            path.display()
        );
        SmallFs {
            path: path.to_owned(),
        }
    }

    /// Writes a file that takes every byte left; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("the filler file");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Whatever is left is less than a chunk: take it a byte at a time.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// What lives on the small filesystem.
#[derive(Debug, Clone, Copy)]
enum OnSmallFs {
    AuditLog,
    Store,
}

/// One gateway's folder: the configuration, the data folder with the chosen part of it on a
/// small filesystem.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    https: u16,
    admin: u16,
    small: SmallFs,
}

impl Setup {
    fn new(part: OnSmallFs) -> Setup {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let registry = write_registry(dir.path(), &RegistryChanges::new().inbox("ma.dgsn"));
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let small = SmallFs::mount(&dir.path().join("small"));
        match part {
            OnSmallFs::AuditLog => {
                let log = small.path.join("audit-log");
                std::fs::create_dir_all(&log).unwrap();
                std::os::unix::fs::symlink(&log, data.join("audit-log")).unwrap();
            }
            OnSmallFs::Store => {
                std::os::unix::fs::symlink(small.path.join("store.redb"), data.join("store.redb"))
                    .unwrap();
            }
        }
        let [https, admin] = passerelle::loopback::free_ports();
        let config = config_file(dir.path(), &registry, &data, https, admin);
        Setup {
            dir,
            config,
            https,
            admin,
            small,
        }
    }

    async fn start(&self, name: &str) -> (ServedGateway, Admin) {
        let admin = Admin::new(SocketAddr::from(([127, 0, 0, 1], self.admin)));
        let mut gateway = ServedGateway::spawn(&self.config, self.dir.path().join(name), "info");
        gateway.ready(&admin).await;
        (gateway, admin)
    }

    fn client(&self) -> Client {
        Client::new(
            "sn.consulat.casablanca",
            SocketAddr::from(([127, 0, 0, 1], self.https)),
        )
    }
}

/// The case of the sample notice.
const CASE: &str = "RVA-2026-004211";
/// The case of the notices sent against a full disk.
const OTHER_CASE: &str = "RVA-2026-009001";

/// The consulate's laissez-passer notice under its own reference, for `case`.
fn notice(reference: &str, case: &str) -> String {
    fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml")
        .replace("CGSN-CASA-2026-00417", reference)
        .replace(CASE, case)
}

/// The case file of `case` in the store of the stopped gateway.
fn case_file(data: &Path, case: &str) -> CaseFile {
    let store = Store::open(&data.join("store.redb")).expect("the store opens");
    let file = store.case_file(case).expect("the case file");
    store.close().expect("the store closes");
    file
}

async fn scenario(part: OnSmallFs) {
    let setup = Setup::new(part);
    let (mut gateway, admin) = setup.start("first.log").await;
    let client = setup.client();
    let before = "CGSN-CASA-2026-20001";
    let first = client.send("application/xml", notice(before, CASE)).await;
    assert_eq!(first.status, 202, "{}", first.text());
    let acked = first.json();

    let filler = setup.small.fill();
    let mut refused = Vec::new();
    for n in 0..AGAINST_FULL {
        let reference = format!("CGSN-CASA-2026-2100{n}");
        let reply = client
            .send("application/xml", notice(&reference, OTHER_CASE))
            .await;
        assert!(
            reply.status == 503 || reply.status == 202,
            "{part:?} full, {reference}: {} {}",
            reply.status,
            reply.text()
        );
        if reply.status == 503 {
            let problem = reply.problem(503, "unavailable");
            assert!(
                reply.header("retry-after").is_some(),
                "a 503 says when to try again: {problem}"
            );
            refused.push(reference);
        }
    }
    assert!(
        !refused.is_empty(),
        "with the {part:?} on a full disk, some message must be refused:\n{}",
        gateway.stderr()
    );
    let ready = admin.get("/ready").await;
    assert_eq!(
        ready.status,
        503,
        "not ready with the {part:?} full: {}",
        ready.text()
    );
    let check = match part {
        OnSmallFs::AuditLog => "audit_log",
        OnSmallFs::Store => "store",
    };
    assert_eq!(ready.json()["checks"][check], false, "{}", ready.text());
    // The operator is told why, and not that anything is corrupt.
    let logged = gateway.stderr();
    assert!(
        logged.contains("No space left on device"),
        "the cause is logged:\n{logged}"
    );
    assert!(!logged.contains("corrupt"), "{logged}");
    // A graceful stop still stops, and says that not everything could be closed cleanly.
    let stopped = gateway.stop();
    assert_eq!(stopped.code(), Some(1), "{}", gateway.stderr());

    std::fs::remove_file(filler).expect("making room");
    // The refused notices put nothing on their case's file: the laissez-passer they announced
    // is not on file, and cannot hide the anomaly of a boarding without one.
    let data = setup.dir.path().join("data");
    assert_eq!(case_file(&data, OTHER_CASE), CaseFile::default());
    let (mut gateway, _admin) = setup.start("second.log").await;
    let kept = client.get(&format!("/v1/receipts/{before}")).await;
    assert_eq!(kept.status, 200, "{}", kept.text());
    // Its receipt may have been issued again (its confirmation in the store may have been
    // lost with the disk), for the same entry.
    assert_eq!(kept.json()["log_index"], acked["log_index"]);
    assert_eq!(kept.json()["leaf_hash"], acked["leaf_hash"]);
    for reference in &refused {
        let unknown = client.get(&format!("/v1/receipts/{reference}")).await;
        assert_eq!(
            unknown.status,
            404,
            "{reference} was refused, and has no receipt: {}",
            unknown.text()
        );
        let again = client
            .send("application/xml", notice(reference, OTHER_CASE))
            .await;
        assert_eq!(
            again.status,
            202,
            "{reference} sent again: {}",
            again.text()
        );
        let twice = client
            .send("application/xml", notice(reference, OTHER_CASE))
            .await;
        assert_eq!(
            twice.status,
            200,
            "{reference} a third time: {}",
            twice.text()
        );
    }
    gateway.terminate();
    assert!(case_file(&data, OTHER_CASE).is_firm("lpc.issued"));

    // The log, torn or not by the full disk, still verifies offline, entry by entry.
    let signer = std::fs::read_to_string(data.join("audit-signing.key")).unwrap();
    let verifier = NoteSigner::parse(&signer)
        .unwrap()
        .verifier()
        .to_verifier_key();
    let verify = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["audit", "verify", "--log"])
        .arg(data.join("audit-log"))
        .args(["--key", &verifier])
        .output()
        .expect("running passerelle audit verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[actix_web::test]
async fn a_full_disk_under_the_audit_log_refuses_with_503_and_loses_nothing() {
    scenario(OnSmallFs::AuditLog).await;
}

#[actix_web::test]
async fn a_full_disk_under_the_store_refuses_with_503_and_loses_nothing() {
    scenario(OnSmallFs::Store).await;
}
