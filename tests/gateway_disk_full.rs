//! A full disk: the `passerelle serve` binary runs with its audit log, or its store, on a small
//! filesystem of its own (a `tmpfs` the test mounts, so the test runs as root), which the test
//! then fills. A message the gateway cannot make durable must be answered `503`, never `2xx`,
//! and so must every message after it; the gateway must say it is not ready, and why; a
//! graceful stop exits with status 1, and says what it could not audit. A refused notice must
//! leave nothing on its case's file, so that a later event of the case is flagged for the want
//! of it. Once there is room again and the gateway has been restarted, every message it
//! acknowledged is still there with its entry, every message it refused is accepted when its
//! sender sends it again, once, and the log verifies offline. While the log cannot record a
//! delivery attempt, no webhook delivery is attempted; after the restart each arrives once.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{
    Admin, Client, Receiver, RegistryChanges, ServedGateway, SmallFs, client_tls, config_file,
    fixture_text, wait_for, write_registry,
};
use passerelle::audit::NoteSigner;
use passerelle::pipeline::sequence::CaseFile;
use passerelle::store::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The most messages sent against a full disk before one must be refused.
const MAX_AGAINST_FULL: usize = 200;
/// How many refusals are asked for (every message after the first refusal must be refused).
const AFTER_REFUSAL: usize = 4;

/// What lives on the small filesystem.
#[derive(Debug, Clone, Copy)]
enum OnSmallFs {
    AuditLog,
    Store,
}

/// One gateway's folder: the configuration, the data folder with the chosen part of it on a
/// small filesystem.
struct Setup {
    // Unmounted before the folder that holds the mount point is removed (fields drop in order).
    small: SmallFs,
    dir: tempfile::TempDir,
    config: PathBuf,
    https: u16,
    admin: u16,
}

impl Setup {
    /// The sample registry with every recipient on the inbox.
    fn new(part: OnSmallFs) -> Setup {
        Setup::with_registry(part, &RegistryChanges::new().inbox("ma.dgsn"))
    }

    fn with_registry(part: OnSmallFs, changes: &RegistryChanges) -> Setup {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let registry = write_registry(dir.path(), changes);
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

/// The consulate's laissez-passer notice under its own reference, for `case`.
fn notice(reference: &str, case: &str) -> String {
    fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml")
        .replace("CGSN-CASA-2026-00417", reference)
        .replace(CASE, case)
}

/// The border police's exit authorisation for `case`.
fn exit_authorisation(case: &str) -> String {
    fixture_text("ma.dgsn", "in/exit-authorisation.xml").replace(CASE, case)
}

/// The case file of `case` in the store of the stopped gateway.
fn case_file(data: &Path, case: &str) -> CaseFile {
    let store = Store::open(&data.join("store.redb")).expect("the store opens");
    let file = store.case_file(case).expect("the case file");
    store.close().expect("the store closes");
    file
}

/// A notice sent against the full disk: its reference, its own case, and what it was answered
/// (the acknowledgement of a `202`, or `None` for a `503`).
struct Sent {
    reference: String,
    case: String,
    ack: Option<Value>,
}

async fn scenario(part: OnSmallFs) {
    let setup = Setup::new(part);
    let (mut gateway, admin) = setup.start("first.log").await;
    let client = setup.client();
    let first = client
        .send("application/xml", notice("CGSN-CASA-2026-20000", CASE))
        .await;
    assert_eq!(first.status, 202, "{}", first.text());
    let mut sent = vec![Sent {
        reference: "CGSN-CASA-2026-20000".into(),
        case: CASE.into(),
        ack: Some(first.json()),
    }];

    // Space already allocated may take a few more messages: send until the first refusal, and
    // a few after it, each notice for a case of its own.
    let filler = setup.small.fill();
    let mut after_refusal = 0;
    for n in 1..=MAX_AGAINST_FULL {
        let reference = format!("CGSN-CASA-2026-2{n:04}");
        let case = format!("RVA-2026-09{n:04}");
        let reply = client
            .send("application/xml", notice(&reference, &case))
            .await;
        let ack = match reply.status {
            202 => {
                assert_eq!(
                    after_refusal,
                    0,
                    "{part:?}: a 202 after a 503: {}",
                    reply.text()
                );
                Some(reply.json())
            }
            503 => {
                let problem = reply.problem(503, "unavailable");
                assert!(
                    reply.header("retry-after").is_some(),
                    "a 503 says when to try again: {problem}"
                );
                after_refusal += 1;
                None
            }
            other => panic!("{part:?} full, {reference}: {other} {}", reply.text()),
        };
        sent.push(Sent {
            reference,
            case,
            ack,
        });
        if after_refusal == AFTER_REFUSAL {
            break;
        }
    }
    assert_eq!(
        after_refusal,
        AFTER_REFUSAL,
        "with the {part:?} on a full disk, {MAX_AGAINST_FULL} messages were accepted:\n{}",
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
    // Only a restart reopens the failed part: liveness says so, for a supervisor to act on.
    let health = admin.get("/health").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["status"], "failed", "{}", health.text());
    assert_eq!(health.json()["failed"], json!([check]), "{}", health.text());
    // The operator is told why, and not that anything is corrupt.
    let logged = gateway.stderr();
    assert!(
        logged.contains("No space left on device"),
        "the cause is logged:\n{logged}"
    );
    assert!(!logged.to_lowercase().contains("corrupt"), "{logged}");
    // Once, not at every retry of the failed part (several a second).
    let store_failures = logged
        .lines()
        .filter(|line| line.contains("store sync failed") || line.contains("store commit failed"))
        .count();
    assert!(store_failures <= 2, "{store_failures} lines:\n{logged}");
    if let OnSmallFs::AuditLog = part {
        assert!(
            logged.contains("the audit log failed"),
            "the log's failure is said when it happens:\n{logged}"
        );
        // Once: the messages refused after it are not an error line each.
        let append_errors = logged
            .lines()
            .filter(|line| line.contains("audit append failed"))
            .count();
        assert!(append_errors <= 1, "{append_errors} lines:\n{logged}");
        // A certificate the handshake refuses is tallied for a summary, which the full log
        // cannot take: kept for the next round, tried again at the stop, and reported then.
        let revoked = Client::with_tls(
            "revoked",
            client_tls("revoked"),
            SocketAddr::from(([127, 0, 0, 1], setup.https)),
        );
        let refused = revoked
            .try_send("application/xml", notice("CGSN-CASA-2026-29999", CASE))
            .await;
        assert!(refused.is_err(), "the revoked certificate was answered");
        let counted = admin
            .metric(
                "passerelle_tls_refused_certificates_total",
                &[("reason", "certificate-revoked")],
            )
            .await;
        assert_eq!(counted, 1.0);
    }
    // A graceful stop still stops, and says that not everything could be closed cleanly.
    let stopped = gateway.stop();
    assert_eq!(stopped.code(), Some(1), "{}", gateway.stderr());
    if let OnSmallFs::AuditLog = part {
        let logged = gateway.stderr();
        assert!(
            logged.contains("could not be audited: 1"),
            "the unaudited summary is reported at the stop:\n{logged}"
        );
    }

    std::fs::remove_file(filler).expect("making room");
    // A refused notice put nothing on its case's file; an acknowledged one did.
    let data = setup.dir.path().join("data");
    for s in &sent {
        let file = case_file(&data, &s.case);
        match s.ack {
            Some(_) => assert!(
                file.facts.contains("lpc.issued"),
                "{}: {file:?}",
                s.reference
            ),
            None => assert_eq!(file, CaseFile::default(), "{}", s.reference),
        }
    }

    let (mut gateway, _admin) = setup.start("second.log").await;
    // Every acknowledged notice kept its entry. Its receipt may have been issued again (its
    // confirmation in the store may have been lost with the disk), for the same entry.
    for s in sent.iter().filter(|s| s.ack.is_some()) {
        let acked = s.ack.as_ref().unwrap();
        let kept = client.get(&format!("/v1/receipts/{}", s.reference)).await;
        assert_eq!(kept.status, 200, "{}: {}", s.reference, kept.text());
        assert_eq!(
            kept.json()["log_index"],
            acked["log_index"],
            "{}",
            s.reference
        );
        assert_eq!(
            kept.json()["leaf_hash"],
            acked["leaf_hash"],
            "{}",
            s.reference
        );
    }
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.ack.is_none()).collect();
    // The laissez-passer a refused notice announced is not on file: the border police's exit
    // authorisation for its case is flagged for the want of one.
    let police = Client::new("ma.dgsn", SocketAddr::from(([127, 0, 0, 1], setup.https)));
    let exit = police
        .send("application/xml", exit_authorisation(&refused[0].case))
        .await;
    assert_eq!(exit.status, 202, "{}", exit.text());
    // The flag is for the ministry, which finds it on the event it is delivered.
    let exit_id = exit.json()["event_id"].clone();
    let ministry = Client::new(
        "ma.interieur",
        SocketAddr::from(([127, 0, 0, 1], setup.https)),
    );
    let exit_delivered = wait_for(
        "the exit authorisation in the ministry's inbox",
        Duration::from_secs(10),
        async || {
            let delivered = ministry.inbox(500).await;
            delivered.into_iter().find(|m| m["event_id"] == exit_id)
        },
    )
    .await;
    let event: Value = serde_json::from_str(exit_delivered["body"].as_str().unwrap()).unwrap();
    let anomalies = event["data"]["anomalies"].clone();
    assert!(
        anomalies
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["code"] == "sequence.missing_lpc_issued")),
        "{anomalies}"
    );
    for s in &refused {
        let unknown = client.get(&format!("/v1/receipts/{}", s.reference)).await;
        assert_eq!(
            unknown.status,
            404,
            "{} was refused, and has no receipt: {}",
            s.reference,
            unknown.text()
        );
        let again = client
            .send("application/xml", notice(&s.reference, &s.case))
            .await;
        assert_eq!(
            again.status,
            202,
            "{} sent again: {}",
            s.reference,
            again.text()
        );
        let twice = client
            .send("application/xml", notice(&s.reference, &s.case))
            .await;
        assert_eq!(
            twice.status,
            200,
            "{} a third time: {}",
            s.reference,
            twice.text()
        );
    }
    gateway.terminate();
    for s in &refused {
        assert!(
            case_file(&data, &s.case).is_firm("lpc.issued"),
            "{}",
            s.reference
        );
    }

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

/// While the audit log cannot record a delivery attempt, the webhook worker makes none: a
/// delivery that comes due then is neither pushed nor counted, however long it waits, and it
/// arrives once after a restart with room again. (An attempt that could not be recorded would
/// be made again, and the recipient would get the message in a loop.)
#[actix_web::test]
async fn a_webhook_delivery_waits_while_its_attempt_cannot_be_audited() {
    let mut dgsn = Receiver::reserve();
    let setup = Setup::with_registry(
        OnSmallFs::AuditLog,
        &RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices")),
    );
    let (mut gateway, admin) = setup.start("first.log").await;
    let client = setup.client();
    let attempts = async || {
        let failed = admin
            .metric(
                "passerelle_deliveries_total",
                &[("recipient", "ma.dgsn"), ("outcome", "retry")],
            )
            .await;
        let delivered = admin
            .metric(
                "passerelle_deliveries_total",
                &[("recipient", "ma.dgsn"), ("outcome", "delivered")],
            )
            .await;
        failed + delivered
    };

    // A notice for the police, whose endpoint is down: its delivery fails, and is due again
    // within a second (the test configuration's longest backoff).
    let first = "CGSN-CASA-2026-30000";
    let reply = client.send("application/xml", notice(first, CASE)).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_for("a failed attempt", Duration::from_secs(10), async || {
        (attempts().await >= 1.0).then_some(())
    })
    .await;

    // The disk fills; the first message the log cannot take stops it.
    let filler = setup.small.fill();
    let mut accepted = vec![first.to_owned()];
    let mut refused = Vec::new();
    for n in 1..=MAX_AGAINST_FULL {
        let reference = format!("CGSN-CASA-2026-3{n:04}");
        let reply = client
            .send(
                "application/xml",
                notice(&reference, &format!("RVA-2026-08{n:04}")),
            )
            .await;
        match reply.status {
            202 => accepted.push(reference),
            503 => {
                refused.push(reference);
                break;
            }
            other => panic!("{reference}: {other} {}", reply.text()),
        }
    }
    assert_eq!(refused.len(), 1, "the full log never refused a message");
    let ready = admin.get("/ready").await;
    assert_eq!(
        ready.json()["checks"]["audit_log"],
        false,
        "{}",
        ready.text()
    );

    // Attempts whose entries were queued before the log stopped may still be counted: wait
    // until the count holds. Then the endpoint comes up, and for three times the longest
    // backoff nothing is pushed to it and no attempt is counted.
    let mut counted = attempts().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = attempts().await;
        if now == counted {
            break;
        }
        counted = now;
    }
    dgsn.up();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pushed: Vec<String> = dgsn.received().into_iter().map(|r| r.event_id).collect();
    assert!(
        pushed.is_empty(),
        "pushed while the attempt could not be audited: {pushed:?}"
    );
    assert_eq!(attempts().await, counted);
    assert_eq!(gateway.stop().code(), Some(1), "{}", gateway.stderr());

    // With room again, after a restart, each accepted notice reaches the police once. The
    // refused one reaches it at most once: its acceptance may have been logged before the log
    // stopped, without the anomaly entry it owes, and is then settled at the restart.
    std::fs::remove_file(filler).expect("making room");
    let (mut gateway, _admin) = setup.start("second.log").await;
    wait_for("the deliveries", Duration::from_secs(20), async || {
        let got = dgsn.accepted();
        accepted
            .iter()
            .all(|reference| got.iter().any(|r| &r.event_id == reference))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = dgsn.accepted();
    for reference in &accepted {
        let times = got.iter().filter(|r| &r.event_id == reference).count();
        assert_eq!(times, 1, "{reference} was delivered {times} times");
    }
    let refused_times = got.iter().filter(|r| r.event_id == refused[0]).count();
    assert!(
        refused_times <= 1,
        "the refused notice was delivered {refused_times} times"
    );
    gateway.terminate();
    dgsn.down().await;
}
