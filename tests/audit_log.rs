//! The audit log end to end, on real files with real fsync: receipts, proofs,
//! reopening, search, trails and bundles, privacy of the public files,
//! erasure, tamper detection, and the auditor's command line.

use passerelle::audit::bundle::{CaseBinding, case_entries_missing, trail, verify_bundle};
use passerelle::audit::log::read_bundle;
use passerelle::audit::merkle::leaf_hash;
use passerelle::audit::verify::verify_public;
use passerelle::audit::{
    AuditError, AuditLog, Fact, Flight, Kind, MappingRef, NoteSigner, Options, Query, Receipt,
    Transport,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ORIGIN: &str = "audit.example.org/passerelle-test";

fn signer_seed() -> [u8; 32] {
    [42; 32]
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &signer_seed()).unwrap()
}

fn options() -> Options {
    Options {
        checkpoint_interval: Duration::from_millis(50),
        ..Options::default()
    }
}

fn case_id(i: u64) -> String {
    format!("RVA-2026-{:06}", 100 + i % 5)
}

/// A delivery fact with personal material and every searchable identifier.
fn fact(i: u64) -> Fact {
    let mut f = Fact::new(Kind::Delivered, "2026-05-02T08:30:00Z".parse().unwrap());
    f.sender = Some("sn.consulat.casablanca".into());
    f.recipients = vec!["ma.interieur".into(), "ma.dgsn".into()];
    f.transport = Some(if i.is_multiple_of(2) {
        Transport::Rest
    } else {
        Transport::Amqp
    });
    f.event_type = Some("ma.rva.lpc.issued".into());
    f.event_id = Some(format!("evt-{i}"));
    f.mapping = Some(MappingRef {
        id: "sn-consulat-fr".into(),
        hash: "sha256:abcd".into(),
    });
    f.withheld = vec!["vulnerabilities".into(), "medical".into()];
    f.case_id = Some(case_id(i));
    f.personal.native = Some(
        format!(
            "<lpc><nom>NDIAYE Fatou</nom><ne>1999-04-0{}</ne></lpc>",
            i % 9
        )
        .into_bytes(),
    );
    f.personal.canonical = Some(format!("{{\"name\":\"NDIAYE Fatou\",\"i\":{i}}}").into_bytes());
    f.personal.documents = vec![format!("LPCSN{:05}", i % 5), "A00998877".into()];
    f.identifiers.lpc = vec![format!("LPCSN{:05}", i % 5)];
    f.identifiers.pnr = vec![format!("PNR{}X", i % 3)];
    f.identifiers.flights = vec![Flight {
        carrier: "AT".into(),
        number: "0529".into(),
        date: "2026-05-03".parse().unwrap(),
    }];
    f.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), format!("evt-{i}"))];
    f
}

/// The flight every fact of [`fact`] names, as an auditor searches for it (the number without
/// its leading zero: searches normalise it).
fn searched_flight() -> Flight {
    Flight {
        carrier: "AT".into(),
        number: "529".into(),
        date: "2026-05-03".parse().unwrap(),
    }
}

const SECRETS: &[&str] = &[
    "NDIAYE",
    "Fatou",
    "1999-04",
    "RVA-2026",
    "LPCSN",
    "A00998877",
    "PNR0X",
];

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p))
        } else {
            out.push(p)
        }
    }
    out.sort();
    out
}

fn append_many(log: &AuditLog, range: std::ops::Range<u64>) -> Vec<Receipt> {
    let mut receipts: Vec<Receipt> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let r = range.clone();
                s.spawn(move || {
                    r.filter(|i| i % 4 == t)
                        .map(|i| log.append(&fact(i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    receipts.sort_by_key(|r| r.index);
    receipts
}

#[test]
fn receipts_proofs_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    let receipts = append_many(&log, 0..300);
    let indices: Vec<u64> = receipts.iter().map(|r| r.index).collect();
    assert_eq!(
        indices,
        (0..300).collect::<Vec<_>>(),
        "indices must be dense and unique"
    );
    for r in &receipts {
        assert_eq!(Receipt::verify(&r.to_text(), log.verifier()).unwrap(), *r);
    }
    assert!(
        log.wait_for(299, Duration::from_secs(5)),
        "a checkpoint must follow within the interval"
    );
    let (_, cp) = log.latest_checkpoint();
    let public = log.layout().public.clone();
    for r in receipts.iter().step_by(37) {
        let entry =
            read_bundle(&public, cp.size, r.index / 256).unwrap()[(r.index % 256) as usize].clone();
        assert_eq!(
            leaf_hash(&entry),
            r.leaf_hash,
            "receipt leaf hash must be the entry's"
        );
        let proof = log
            .inclusion(r.index)
            .unwrap()
            .expect("covered by the checkpoint");
        proof.verify(&entry, log.verifier(), Some(ORIGIN)).unwrap();
    }
    let first = std::fs::read(public.join("checkpoint")).unwrap();
    log.close().unwrap();

    // Reopen: same tree, then grow, and the new checkpoint is consistent with the old.
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 300);
    append_many(&log, 300..620);
    log.sync().unwrap();
    let report = verify_public(&public, log.verifier(), Some(&first), &mut |_| {}).unwrap();
    assert_eq!(report.checkpoint.size, 620);
    assert_eq!(report.since.unwrap().size, 300);

    // A different key or origin cannot take over the folder.
    drop(log);
    let other = NoteSigner::generate(ORIGIN).unwrap();
    assert!(AuditLog::open(dir.path(), other, ORIGIN, options()).is_err());
}

#[test]
fn one_process_at_a_time_writes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..3);
    // A second writer (another gateway, or an erasure beside a running one) is refused and
    // changes nothing.
    let journal = std::fs::read_dir(dir.path().join("private/journal"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    match AuditLog::open(dir.path(), signer(), ORIGIN, options()) {
        Err(AuditError::InUse(root)) => assert_eq!(root, dir.path()),
        other => panic!("a second writer was not refused: {other:?}"),
    }
    let after = std::fs::read_dir(dir.path().join("private/journal"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(journal, after);
    // Once the first is closed, the log opens again, with what it held.
    log.close().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 3);
    log.close().unwrap();
}

#[test]
fn a_lost_or_rolled_back_public_checkpoint_never_shrinks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cp_path = dir.path().join("public/checkpoint");
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..50);
    log.close().unwrap();
    let cp50 = std::fs::read(&cp_path).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 50..100);
    log.close().unwrap();
    let cp100 = std::fs::read(&cp_path).unwrap();

    // Rolled back to an older checkpoint: the private copy wins.
    std::fs::write(&cp_path, &cp50).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 100);
    assert_eq!(
        std::fs::read(&cp_path).unwrap(),
        cp100,
        "the public checkpoint is restored"
    );
    log.close().unwrap();

    // Removed, or damaged: the same.
    std::fs::remove_file(&cp_path).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 100);
    log.close().unwrap();
    let mut damaged = cp100.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&cp_path, &damaged).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 100);
    log.close().unwrap();
    assert_eq!(std::fs::read(&cp_path).unwrap(), cp100);
    verify_public(
        &dir.path().join("public"),
        signer().verifier(),
        Some(&cp50),
        &mut |_| {},
    )
    .unwrap();
}

/// Tiles and entry bundles written for entries that no checkpoint signs yet (a crash between
/// the tiles and their checkpoint, or a copy taken between the two) are not taken for
/// tampering: nothing vouches for them.
#[test]
fn files_beyond_the_signed_tree_do_not_fail_verification() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..10);
    log.close().unwrap();
    let public = dir.path().join("public");
    assert!(public.join("tile/0/000.p/10").exists());
    std::fs::write(public.join("tile/0/000.p/12"), [7u8; 12 * 32]).unwrap();
    std::fs::write(public.join("tile/entries/000.p/12"), b"not yet signed").unwrap();
    let report = verify_public(&public, signer().verifier(), None, &mut |_| {}).unwrap();
    assert_eq!(report.checkpoint.size, 10);
    // The signed part is still checked.
    std::fs::write(public.join("tile/0/000.p/10"), [7u8; 10 * 32]).unwrap();
    assert!(verify_public(&public, signer().verifier(), None, &mut |_| {}).is_err());
    // A file larger than any the log writes is refused without being read whole.
    std::fs::write(public.join("checkpoint"), vec![b'x'; 32 << 20]).unwrap();
    let failure = verify_public(&public, signer().verifier(), None, &mut |_| {}).unwrap_err();
    assert!(
        failure.to_string().contains("larger than any file"),
        "{failure}"
    );
}

/// An entry of no case filed under a case in the private index is refused: every entry of a
/// case carries its commitment.
#[test]
fn a_case_trail_refuses_an_entry_of_no_case_filed_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..10);
    let mut caseless = fact(10);
    caseless.case_id = None;
    caseless.personal = Default::default();
    log.append(&caseless).unwrap();
    let verifier = log.verifier().clone();
    log.close().unwrap();
    let query = Query::Case(case_id(3));
    assert_eq!(
        trail(dir.path(), &query, Some(&verifier))
            .unwrap()
            .found
            .len(),
        2
    );

    let key = passerelle::audit::keys::IndexKey::load(&dir.path().join("private/keys/index.key"))
        .unwrap();
    let journal_dir = dir.path().join("private/journal");
    let mut records = Vec::new();
    passerelle::audit::journal::scan(&journal_dir, |_, record| {
        records.push(record);
        Ok(())
    })
    .unwrap();
    records[10].tags.push(query.tag(&key));
    let mut data = Vec::new();
    for record in &records {
        record.encode_into(&mut data);
    }
    std::fs::write(journal_dir.join("00000000000000000000.journal"), &data).unwrap();
    let refused = trail(dir.path(), &query, Some(&verifier))
        .map(|t| t.found.len())
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("gives entry 10 for this case, but it carries no case commitment"),
        "{refused}"
    );
}

/// A copy of `public/` taken while the log grew can hold a checkpoint older than its tiles:
/// the partial files that checkpoint names were removed once the full ones were written. The
/// full files begin with the same hashes and entries, and the copy verifies.
#[test]
fn a_checkpoint_whose_partial_tiles_were_replaced_by_full_ones_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..10);
    log.sync().unwrap();
    let public = dir.path().join("public");
    let signed_at_10 = std::fs::read(public.join("checkpoint")).unwrap();
    append_many(&log, 10..300);
    log.close().unwrap();
    for gone in ["tile/0/000.p/10", "tile/entries/000.p/10"] {
        if public.join(gone).exists() {
            std::fs::remove_file(public.join(gone)).unwrap();
        }
    }
    assert!(public.join("tile/0/000").exists());
    let mirror = tempfile::tempdir().unwrap();
    let copy = mirror.path().join("public");
    let status = std::process::Command::new("cp")
        .args(["-r", public.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(copy.join("checkpoint"), &signed_at_10).unwrap();
    let report = verify_public(&copy, signer().verifier(), None, &mut |_| {}).unwrap();
    assert_eq!(report.checkpoint.size, 10);

    // The first ten entries of the full bundle are still checked against the signed tree.
    let bundle = copy.join("tile/entries/000");
    let mut data = std::fs::read(&bundle).unwrap();
    data[5] ^= 1;
    std::fs::write(&bundle, &data).unwrap();
    let failure = verify_public(&copy, signer().verifier(), None, &mut |_| {}).unwrap_err();
    assert!(failure.to_string().contains("entry 0"), "{failure}");
}

/// A partial entry bundle found damaged or missing at open is put back from the journal,
/// before it can be frozen into the full bundle.
#[test]
fn a_damaged_partial_bundle_is_put_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..10);
    log.close().unwrap();
    let bundle = dir.path().join("public/tile/entries/000.p/10");
    let sound = std::fs::read(&bundle).unwrap();
    let mut damaged = sound.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    for change in [Some(damaged), None] {
        match change {
            Some(bytes) => std::fs::write(&bundle, bytes).unwrap(),
            None => std::fs::remove_file(&bundle).unwrap(),
        }
        let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
        assert_eq!(std::fs::read(&bundle).unwrap(), sound);
        log.close().unwrap();
    }

    // After a crash, the journal holds entries that no checkpoint signs yet (here: the
    // checkpoints of size 10 put back after 5 more entries); the bundle is put back all the same.
    let checkpoints = ["public/checkpoint", "private/checkpoint"].map(|rel| dir.path().join(rel));
    let signed_at_10 = checkpoints.clone().map(|path| std::fs::read(path).unwrap());
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 10..15);
    log.close().unwrap();
    for (path, bytes) in checkpoints.iter().zip(&signed_at_10) {
        std::fs::write(path, bytes).unwrap();
    }
    std::fs::remove_file(&bundle).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(std::fs::read(&bundle).unwrap(), sound);
    append_many(&log, 15..300);
    log.close().unwrap();
    verify_public(
        &dir.path().join("public"),
        signer().verifier(),
        None,
        &mut |_| {},
    )
    .unwrap();
}

/// Keys lost from a log that holds entries are not silently made anew: the log refuses to
/// open until they are restored.
#[test]
fn a_log_with_entries_does_not_open_without_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..5);
    log.close().unwrap();
    for name in ["index.key", "cases.keys"] {
        let path = dir.path().join("private/keys").join(name);
        let kept = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        match AuditLog::open(dir.path(), signer(), ORIGIN, options()) {
            Err(AuditError::Corrupt(why)) => assert!(why.contains(name), "{why}"),
            other => panic!("opened without {name}: {:?}", other.map(|_| ())),
        }
        assert!(!path.exists(), "{name} was made anew");
        std::fs::write(&path, kept).unwrap();
    }
    // Another index key in place of the log's own: refused, not used to index new entries
    // that no search with the log's own key would find.
    let path = dir.path().join("private/keys/index.key");
    let kept = std::fs::read(&path).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    AuditLog::open(elsewhere.path(), signer(), ORIGIN, options())
        .unwrap()
        .close()
        .unwrap();
    std::fs::copy(elsewhere.path().join("private/keys/index.key"), &path).unwrap();
    match AuditLog::open(dir.path(), signer(), ORIGIN, options()) {
        Err(error @ AuditError::OtherIndexKey { .. }) => assert!(
            error.to_string().contains("restore the log's own key"),
            "{error}"
        ),
        other => panic!("opened with another index key: {:?}", other.map(|_| ())),
    }
    std::fs::write(&path, kept).unwrap();

    // `log.json` lost and another key offered: the checkpoints refuse it, and the folder is
    // not left naming that key as its own.
    let meta = dir.path().join("private/log.json");
    std::fs::remove_file(&meta).unwrap();
    let other_signer = NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap();
    assert!(AuditLog::open(dir.path(), other_signer, ORIGIN, options()).is_err());
    assert!(
        !meta.exists(),
        "log.json written for a key that was refused"
    );
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 5);
    // The time of the last entry, for the start's check of the clock.
    let last = log.last_entry_time().expect("a log with entries");
    assert!(last <= chrono::Utc::now(), "{last}");
    log.close().unwrap();
    assert!(meta.exists());
}

#[test]
fn async_appends_are_durable_before_they_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receipts = rt.block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(&fact(i)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    assert_eq!(receipts.len(), 64);
    drop(rt);
    let log = std::sync::Arc::into_inner(log).unwrap();
    log.close().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 64);
}

/// References that differ only in case are two messages: a search for one finds its entries
/// alone, on the running log and offline, though their tags (of normalised values) are alike.
#[test]
fn a_partner_reference_names_its_message_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    let mut other = fact(8);
    other.event_id = Some("EVT-7".into());
    other.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), "EVT-7".into())];
    // An id that ends with a space is found as written (the gateway's settling of a message a
    // crash interrupted searches for it so).
    let mut spaced = fact(9);
    spaced.event_id = Some("evt-9 ".into());
    spaced.identifiers.partner_refs = vec![("sn.consulat.casablanca".into(), "evt-9 ".into())];
    log.append(&fact(7)).unwrap();
    log.append(&other).unwrap();
    log.append(&spaced).unwrap();
    log.sync().unwrap();
    let query =
        |reference: &str| Query::PartnerRef("sn.consulat.casablanca".into(), reference.into());
    for (reference, want) in [
        ("evt-7", vec![0]),
        ("EVT-7", vec![1]),
        ("Evt-7", vec![]),
        ("evt-9 ", vec![2]),
    ] {
        let found: Vec<u64> = log
            .search(&query(reference))
            .unwrap()
            .iter()
            .map(|f| f.index)
            .collect();
        assert_eq!(found, want, "{reference} on the running log");
        let offline: Vec<u64> = trail(dir.path(), &query(reference), Some(log.verifier()))
            .unwrap()
            .found
            .iter()
            .map(|f| f.index)
            .collect();
        assert_eq!(offline, want, "{reference} offline");
    }
    log.close().unwrap();
}

#[test]
fn search_trail_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..40);
    log.sync().unwrap();
    let expect = |pred: &dyn Fn(u64) -> bool| -> Vec<String> {
        (0..40)
            .filter(|&i| pred(i))
            .map(|i| format!("evt-{i}"))
            .collect()
    };
    let ids = |q: &Query| -> Vec<String> {
        let mut v: Vec<String> = log
            .search(q)
            .unwrap()
            .into_iter()
            .map(|f| {
                f.proof
                    .verify(&f.entry, log.verifier(), Some(ORIGIN))
                    .unwrap();
                f.leaf.event_id.unwrap()
            })
            .collect();
        v.sort_by_key(|s| s[4..].parse::<u64>().unwrap());
        v
    };
    assert_eq!(ids(&Query::Case(case_id(3))), expect(&|i| i % 5 == 3));
    assert_eq!(
        ids(&Query::Case(" rva-2026-000103 ".into())),
        expect(&|i| i % 5 == 3),
        "values are normalised"
    );
    assert_eq!(
        ids(&Query::Lpc("LPCSN00002".into())),
        expect(&|i| i % 5 == 2)
    );
    assert_eq!(ids(&Query::Pnr("PNR1X".into())), expect(&|i| i % 3 == 1));
    let flight = searched_flight();
    assert_eq!(ids(&Query::Flight(flight)).len(), 40);
    assert_eq!(
        ids(&Query::PartnerRef(
            "sn.consulat.casablanca".into(),
            "evt-7".into()
        )),
        vec!["evt-7"]
    );
    assert!(ids(&Query::Lpc("LPCSN99999".into())).is_empty());

    // Offline, on the folder: the same trail, and a bundle that verifies alone.
    let t = trail(
        dir.path(),
        &Query::Lpc("LPCSN00004".into()),
        Some(log.verifier()),
    )
    .unwrap();
    assert_eq!(t.found.len(), 8);
    let bundle = t.to_bundle().unwrap();
    let text = String::from_utf8(bundle.clone()).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "bundle leaks {s}");
    }
    let ok = verify_bundle(&bundle, Some(log.verifier())).unwrap();
    assert_eq!(ok.entries.len(), 8);
    // Any change to an entry breaks the bundle.
    let mut v: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let e = v["entries"][3]["entry"].as_str().unwrap().to_owned();
    let flipped = if e.starts_with('A') {
        e.replacen('A', "B", 1)
    } else {
        format!("A{}", &e[1..])
    };
    v["entries"][3]["entry"] = serde_json::Value::String(flipped);
    assert!(verify_bundle(&serde_json::to_vec(&v).unwrap(), None).is_err());
    // A bundle signed by another key is refused when the key is pinned.
    let other = NoteSigner::generate(ORIGIN).unwrap();
    assert!(verify_bundle(&bundle, Some(other.verifier())).is_err());
}

/// An offline trail reads the private part, which no signature covers: a journal cut short,
/// damaged or rearranged, or an index key that is not the log's, is said, rather than giving a
/// short or empty trail; a public checkpoint behind the private copy is said, and the trail is
/// proven against the latter, as the gateway would restore it.
#[test]
fn an_offline_trail_checks_the_private_part_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..30);
    log.close().unwrap();
    let cp30 = std::fs::read(dir.path().join("public/checkpoint")).unwrap();
    let early = tempfile::tempdir().unwrap();
    let public30 = early.path().join("public");
    assert!(
        Command::new("cp")
            .args(["-r"])
            .arg(dir.path().join("public"))
            .arg(&public30)
            .status()
            .unwrap()
            .success()
    );
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 30..60);
    let verifier = log.verifier().clone();
    log.close().unwrap();
    let query = Query::Case(case_id(3));
    let whole = trail(dir.path(), &query, Some(&verifier)).unwrap();
    assert_eq!(whole.found.len(), 12);
    assert_eq!(whole.public_behind, None);

    let copies = tempfile::tempdir().unwrap();
    let copy = |name: &str| -> PathBuf {
        let to = copies.path().join(name);
        let status = Command::new("cp")
            .args(["-r", dir.path().to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let journal = |folder: &Path| folder.join("private/journal/00000000000000000000.journal");
    let fails = |folder: &Path, says: &str| {
        let error = trail(folder, &query, Some(&verifier))
            .map(|t| t.found.len())
            .expect_err("the trail is refused");
        assert!(error.to_string().contains(says), "{error}");
        error
    };

    // A byte flipped in an early record: the journal reads as cut short there.
    let flipped = copy("flipped");
    let mut data = std::fs::read(journal(&flipped)).unwrap();
    data[200] ^= 0x01;
    std::fs::write(journal(&flipped), &data).unwrap();
    let error = fails(&flipped, "but the checkpoint signs 60");
    assert!(matches!(error, AuditError::Corrupt(_)), "{error}");

    // Cut short.
    let cut = copy("cut");
    let data = std::fs::read(journal(&cut)).unwrap();
    std::fs::write(journal(&cut), &data[..data.len() / 2]).unwrap();
    fails(&cut, "but the checkpoint signs 60");

    // Its first two records swapped, each whole and checking: not the entries signed.
    let swapped = copy("swapped");
    let data = std::fs::read(journal(&swapped)).unwrap();
    let record_len =
        |at: usize| 36 + u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let (first, second) = (record_len(0), record_len(record_len(0)));
    let mut rearranged = data[first..first + second].to_vec();
    rearranged.extend_from_slice(&data[..first]);
    rearranged.extend_from_slice(&data[first + second..]);
    std::fs::write(journal(&swapped), &rearranged).unwrap();
    fails(&swapped, "are not those the checkpoint signs");

    // The index edited by someone who can write the journal's checksums: the entries
    // themselves carry the case's commitment, so a trail left short, or given another case's
    // entry, fails.
    let records = |folder: &Path| {
        let mut all = Vec::new();
        passerelle::audit::journal::scan(&folder.join("private/journal"), |_, record| {
            all.push(record);
            Ok(())
        })
        .unwrap();
        all
    };
    let rewrite = |folder: &Path, records: &[passerelle::audit::journal::Record]| {
        let mut data = Vec::new();
        for record in records {
            record.encode_into(&mut data);
        }
        std::fs::write(journal(folder), &data).unwrap();
    };
    let of_the_case: Vec<u64> = whole.found.iter().map(|f| f.index).collect();
    let case_tag = query.tag(
        &passerelle::audit::keys::IndexKey::load(&dir.path().join("private/keys/index.key"))
            .unwrap(),
    );
    let shortened = copy("shortened");
    let mut edited = records(&shortened);
    edited[of_the_case[1] as usize]
        .tags
        .retain(|tag| *tag != case_tag);
    rewrite(&shortened, &edited);
    fails(
        &shortened,
        &format!(
            "leaves out 1 signed entries that carry this case's commitment ({})",
            of_the_case[1]
        ),
    );
    let mixed = copy("mixed");
    let mut edited = records(&mixed);
    let other = (0..60u64).find(|i| !of_the_case.contains(i)).unwrap();
    edited[other as usize].tags.push(case_tag);
    rewrite(&mixed, &edited);
    fails(
        &mixed,
        &format!("gives entry {other} for this case, but it carries another case's commitment"),
    );
    // Every entry of the case taken out of the index: the case's key says what its entries
    // carry, so the trail is not read as empty.
    let hidden = copy("hidden");
    let mut edited = records(&hidden);
    for &index in &of_the_case {
        edited[index as usize].tags.retain(|tag| *tag != case_tag);
    }
    rewrite(&hidden, &edited);
    fails(
        &hidden,
        &format!(
            "leaves out {} signed entries that carry this case's commitment",
            of_the_case.len()
        ),
    );
    // And filed under another case's entry instead: not read as this case's trail.
    let swapped = copy("swapped-case");
    let mut edited = records(&swapped);
    for &index in &of_the_case {
        edited[index as usize].tags.retain(|tag| *tag != case_tag);
    }
    edited[other as usize].tags.push(case_tag);
    rewrite(&swapped, &edited);
    fails(&swapped, "carries another case's commitment");

    // Another log's index key in place of this one's: nothing would match.
    let other_key = copy("other-key");
    let elsewhere = tempfile::tempdir().unwrap();
    let other = AuditLog::open(elsewhere.path(), signer(), ORIGIN, options()).unwrap();
    other.close().unwrap();
    std::fs::copy(
        elsewhere.path().join("private/keys/index.key"),
        other_key.join("private/keys/index.key"),
    )
    .unwrap();
    let error = fails(
        &other_key,
        "is not the index key this log's entries were indexed with",
    );
    assert!(matches!(error, AuditError::OtherIndexKey { .. }), "{error}");

    // The public checkpoint rolled back: the private copy signs every entry, and says so.
    let behind = copy("behind");
    std::fs::write(behind.join("public/checkpoint"), &cp30).unwrap();
    let t = trail(&behind, &query, Some(&verifier)).unwrap();
    assert_eq!(t.public_behind, Some(30));
    assert_eq!(t.checkpoint.size, 60);
    assert_eq!(t.found.len(), 12);
    assert!(t.pending.is_empty());

    // A copy whose public part was taken before the log grew, and its private part after: the
    // public part cannot prove the private copy's tree, so the trail is proven against what it
    // can, and says so.
    let grew = copy("grew");
    std::fs::remove_dir_all(grew.join("public")).unwrap();
    assert!(
        Command::new("cp")
            .args(["-r"])
            .arg(&public30)
            .arg(grew.join("public"))
            .status()
            .unwrap()
            .success()
    );
    let t = trail(&grew, &query, Some(&verifier)).unwrap();
    assert_eq!((t.checkpoint.size, t.private_ahead), (30, Some(60)));
    assert_eq!((t.found.len(), t.pending.len()), (6, 6));

    // The command line says FAILED, and exits 1, as `verify` does.
    let out = bin()
        .args(["audit", "trail", "--log", cut.to_str().unwrap(), "--case"])
        .arg(case_id(3))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAILED: "), "{stdout}");
    let out = bin()
        .args([
            "audit",
            "trail",
            "--log",
            behind.to_str().unwrap(),
            "--case",
        ])
        .arg(case_id(3))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("public/checkpoint signs 30 entries only, private/checkpoint 60"),
        "{stdout}"
    );
    // `verify` of the whole folder fails on it, naming both sizes; of its public part alone, it
    // verifies what that part signs.
    let vkey = verifier.to_verifier_key();
    let verify = |folder: &Path| {
        let out = bin()
            .args([
                "audit",
                "verify",
                "--log",
                folder.to_str().unwrap(),
                "--key",
            ])
            .arg(&vkey)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = verify(&behind);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("public/checkpoint signs 30 entries, but the log signed 60"),
        "{stdout}"
    );
    let (code, stdout) = verify(&behind.join("public"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("size 30"), "{stdout}");
    std::fs::remove_file(behind.join("public/checkpoint")).unwrap();
    let (code, stdout) = verify(&behind);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("public/checkpoint is missing"), "{stdout}");
    // Both checkpoints gone: the tiles are there, but nothing says what the log signed.
    std::fs::remove_file(behind.join("private/checkpoint")).unwrap();
    for folder in [behind.clone(), behind.join("public")] {
        let out = bin()
            .args(["audit", "verify", "--log"])
            .arg(&folder)
            .arg("--key")
            .arg(&vkey)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.starts_with("FAILED: ")
                && stdout.contains("holds a log's tiles but no signed checkpoint"),
            "{stdout}"
        );
    }

    // The public part rolled back, and its later tiles gone (compacted): the rollback is said,
    // not the missing file.
    let compacted = copy("compacted");
    std::fs::remove_dir_all(compacted.join("public")).unwrap();
    assert!(
        Command::new("cp")
            .args(["-r"])
            .arg(&public30)
            .arg(compacted.join("public"))
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(compacted.join("public/checkpoint"), &cp30).unwrap();
    let tiles = compacted.join("public/tile");
    std::fs::remove_dir_all(&tiles).unwrap();
    let (code, stdout) = verify(&compacted);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("public/checkpoint signs 30 entries, but the log signed 60"),
        "{stdout}"
    );
    assert!(!stdout.contains("ok:"), "{stdout}");

    // A private copy behind the public checkpoint (a crash between their writes) is taken when
    // it signs the beginning of the same history, and refused when it signs another one, which
    // the same key signing two histories shows.
    let lagging = copy("lagging");
    std::fs::write(lagging.join("private/checkpoint"), &cp30).unwrap();
    let (code, stdout) = verify(&lagging);
    assert_eq!(code, Some(0), "{stdout}");
    // The private part given for the log is said to be one.
    let out = bin()
        .args(["audit", "verify", "--key", &vkey, "--log"])
        .arg(lagging.join("private"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is a log's private part"), "{stderr}");
    let fork_dir = tempfile::tempdir().unwrap();
    let fork = AuditLog::open(fork_dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&fork, 100..130);
    fork.close().unwrap();
    let forked = copy("forked");
    std::fs::copy(
        fork_dir.path().join("public/checkpoint"),
        forked.join("private/checkpoint"),
    )
    .unwrap();
    let (code, stdout) = verify(&forked);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("(size 30) and public/checkpoint (size 60) sign two different histories"),
        "{stdout}"
    );
    assert!(!stdout.contains("ok:"), "{stdout}");
}

/// A case's trail checked for completeness against the public log alone: complete as the log
/// gives it, even against a later copy of the folder; an entry left out is named; entries
/// given twice, or of several cases, are refused.
/// A trail by LPC number holds every entry of the message that names it (its deliveries and
/// acknowledgements, which do not name the number), and none of another message whose
/// reference differs only in case, online and offline alike.
#[test]
fn a_trail_by_identifier_holds_its_messages_whole_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    let entry = |kind: Kind, event_id: &str, lpc: Option<&str>| {
        let mut f = Fact::new(kind, "2026-05-02T08:30:00Z".parse().unwrap());
        f.sender = Some("sn.consulat.casablanca".into());
        f.event_type = Some("ma.rva.lpc.issued".into());
        f.event_id = Some(event_id.into());
        f.case_id = Some(case_id(1));
        if kind != Kind::Accepted {
            f.recipients = vec!["ma.dgsn".into()];
        }
        f.identifiers.lpc = lpc.into_iter().map(str::to_owned).collect();
        log.append(&f).unwrap().index
    };
    let accepted = entry(Kind::Accepted, "evt-7a", Some("LPCSN00777"));
    let other = entry(Kind::Accepted, "EVT-7A", Some("LPCSN00778"));
    let delivered = entry(Kind::Delivered, "evt-7a", None);
    let others_delivery = entry(Kind::Delivered, "EVT-7A", None);
    let acknowledged = entry(Kind::Acknowledged, "evt-7a", None);
    log.sync().unwrap();
    let query = Query::Lpc("LPCSN00777".into());
    let online: Vec<u64> = log
        .search(&query)
        .unwrap()
        .iter()
        .map(|f| f.index)
        .collect();
    assert_eq!(online, [accepted, delivered, acknowledged]);
    let offline = trail(dir.path(), &query, Some(log.verifier())).unwrap();
    let offline: Vec<u64> = offline.found.iter().map(|f| f.index).collect();
    assert_eq!(offline, online);
    let theirs: Vec<u64> = log
        .search(&Query::Lpc("LPCSN00778".into()))
        .unwrap()
        .iter()
        .map(|f| f.index)
        .collect();
    assert_eq!(theirs, [other, others_delivery]);
    // Reopened, the index is rebuilt from the journal alike.
    log.close().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    let reopened: Vec<u64> = log
        .search(&query)
        .unwrap()
        .iter()
        .map(|f| f.index)
        .collect();
    assert_eq!(reopened, [accepted, delivered, acknowledged]);
}

#[test]
fn a_case_bundle_is_checked_complete_against_the_public_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    // Over one full entry bundle (256 entries), and into a second, partial one.
    append_many(&log, 0..300);
    log.sync().unwrap();
    let public = dir.path().join("public");
    let t = trail(dir.path(), &Query::Case(case_id(3)), Some(log.verifier())).unwrap();
    assert_eq!(t.checkpoint.size, 300);
    assert_eq!(t.found.len(), 60);
    let bundle = t.to_bundle().unwrap();
    let verified = verify_bundle(&bundle, Some(log.verifier())).unwrap();
    let complete = case_entries_missing(&verified, &public, &mut |_| {}).unwrap();
    assert_eq!((complete.in_log, complete.missing.len()), (60, 0));
    let copies = tempfile::tempdir().unwrap();
    let old_copy = copies.path().join("public-300");
    assert!(
        Command::new("cp")
            .args(["-r", public.to_str().unwrap(), old_copy.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );

    // The log grows, and its copy no longer has the partial bundle the checkpoint left: the
    // bundle is still complete up to its own checkpoint.
    append_many(&log, 300..320);
    log.sync().unwrap();
    std::fs::remove_file(public.join("tile/entries/001.p/44")).unwrap();
    let complete = case_entries_missing(&verified, &public, &mut |_| {}).unwrap();
    assert_eq!((complete.in_log, complete.missing.len()), (60, 0));

    // An entry of the case left out of the bundle (the rest still proves its inclusion).
    let mut edited: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let left_out = edited["entries"][59]["index"].as_u64().unwrap();
    edited["entries"].as_array_mut().unwrap().remove(59);
    let partial = verify_bundle(&serde_json::to_vec(&edited).unwrap(), None).unwrap();
    let found = case_entries_missing(&partial, &public, &mut |_| {}).unwrap();
    assert_eq!(found.missing, [left_out]);

    // An entry given twice is refused.
    let mut doubled: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let first = doubled["entries"][0].clone();
    doubled["entries"].as_array_mut().unwrap().insert(1, first);
    let refused = verify_bundle(&serde_json::to_vec(&doubled).unwrap(), None).unwrap_err();
    assert!(refused.to_string().contains("twice"), "{refused}");

    // So is one out of the log's order: it would read as another timeline.
    let mut swapped: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    swapped["entries"].as_array_mut().unwrap().swap(0, 1);
    let refused = verify_bundle(&serde_json::to_vec(&swapped).unwrap(), None).unwrap_err();
    assert!(refused.to_string().contains("out of order"), "{refused}");

    // A trail of several cases (a flight's) is not one case's trail.
    let flight = searched_flight();
    let several = trail(dir.path(), &Query::Flight(flight), Some(log.verifier())).unwrap();
    let several = verify_bundle(&several.to_bundle().unwrap(), None).unwrap();
    let refused = case_entries_missing(&several, &public, &mut |_| {}).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("carry 5 different case commitments"),
        "{refused}"
    );

    // An empty bundle (a search that found nothing) names no case to check.
    let empty = trail(
        dir.path(),
        &Query::Case("RVA-NONE".into()),
        Some(log.verifier()),
    )
    .unwrap();
    let empty = verify_bundle(&empty.to_bundle().unwrap(), None).unwrap();
    let refused = case_entries_missing(&empty, &public, &mut |_| {}).unwrap_err();
    assert!(
        refused.to_string().contains("holds no entries"),
        "{refused}"
    );

    // A copy older than the bundle cannot tell, and says so; so does a folder with no log.
    let later = trail(dir.path(), &Query::Case(case_id(3)), Some(log.verifier())).unwrap();
    let later = verify_bundle(&later.to_bundle().unwrap(), None).unwrap();
    let refused = case_entries_missing(&later, &old_copy, &mut |_| {}).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("signs 300 entries, fewer than the bundle's checkpoint (320)"),
        "{refused}"
    );
    let refused = case_entries_missing(&later, copies.path(), &mut |_| {}).unwrap_err();
    assert!(refused.to_string().contains("holds no log"), "{refused}");

    // A copy whose entries are not those the checkpoint signs is refused.
    let damaged = public.join("tile/entries/000");
    let out = with_flip(&damaged, 100, || {
        case_entries_missing(&verified, &public, &mut |_| {}).map(|_| ())
    });
    assert!(out.is_err());
}

#[test]
fn no_personal_data_in_clear_anywhere_in_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..20);
    log.close().unwrap();
    let files = all_files(dir.path());
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("tile/entries"))
    );
    for p in files {
        let data = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&data);
        for s in SECRETS {
            assert!(!text.contains(s), "{} holds {s} in clear", p.display());
        }
    }
}

#[test]
fn erasure_keeps_the_log_verifiable_and_makes_the_case_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..20);
    let victim = case_id(1);
    let opened = log.open_case(&victim).unwrap();
    assert_eq!(opened.len(), 4);
    assert!(
        opened
            .iter()
            .all(|(_, o)| o.case_id == victim && o.native.is_some())
    );
    let before: Vec<_> = log.lookup(&Query::Case(victim.clone()));
    let keys_path = dir.path().join("private/keys/cases.keys");
    let keys_before_erasure = std::fs::read(&keys_path).unwrap();

    let receipt = log.erase_case(&victim).unwrap();
    assert!(matches!(
        log.open_case(&victim),
        Err(AuditError::CaseErased)
    ));
    assert!(
        matches!(log.append(&fact(1)), Err(AuditError::CaseErased)),
        "no new data for an erased case"
    );
    assert_eq!(
        log.open_case(&case_id(2)).unwrap().len(),
        4,
        "other cases are untouched"
    );
    log.sync().unwrap();
    verify_public(&log.layout().public, log.verifier(), None, &mut |_| {}).unwrap();

    // The key file restored from a copy older than the erasure: the log's `erased` entry
    // destroys the case's keys again when it opens.
    log.close().unwrap();
    std::fs::write(&keys_path, &keys_before_erasure).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert!(log.is_case_erased(&victim).unwrap());
    assert!(matches!(
        log.open_case(&victim),
        Err(AuditError::CaseErased)
    ));
    assert!(matches!(log.append(&fact(1)), Err(AuditError::CaseErased)));
    assert_eq!(log.open_case(&case_id(2)).unwrap().len(), 4);
    assert_ne!(std::fs::read(&keys_path).unwrap(), keys_before_erasure);

    // The key file emptied: refused, as a missing one is.
    log.close().unwrap();
    let kept = std::fs::read(&keys_path).unwrap();
    std::fs::write(&keys_path, b"").unwrap();
    match AuditLog::open(dir.path(), signer(), ORIGIN, options()) {
        Err(AuditError::Corrupt(why)) => assert!(why.contains("holds no key"), "{why}"),
        other => panic!("opened with an empty key file: {:?}", other.map(|_| ())),
    }
    std::fs::write(&keys_path, kept).unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();

    // The trail ends with the erasure leaf, which carries the case's commitment.
    let found = log.search(&Query::Case(victim.clone())).unwrap();
    assert_eq!(found.len(), before.len() + 1);
    let last = found.last().unwrap();
    assert_eq!(last.index, receipt.index);
    assert_eq!(last.leaf.kind, Kind::Erased);
    assert_eq!(
        last.leaf.commitments.as_ref().unwrap().case,
        found[0].leaf.commitments.as_ref().unwrap().case,
        "the erasure leaf names the case by its commitment"
    );
    log.close().unwrap();

    // After reopening, the case stays erased and the key bytes are gone from disk.
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert!(matches!(
        log.open_case(&victim),
        Err(AuditError::CaseErased)
    ));
    let keys = std::fs::read(dir.path().join("private/keys/cases.keys")).unwrap();
    let zeroed = keys
        .chunks(128)
        .filter(|r| r[32..].iter().all(|&b| b == 0))
        .count();
    assert_eq!(zeroed, 1, "exactly the erased case's record is zeroed");
    let verifier = log.verifier().clone();
    log.close().unwrap();

    // Offline, the erased case's trail is still whole, but only tied to one case, not to its
    // id; another case's is tied to its id by its key.
    let erased = trail(dir.path(), &Query::Case(victim.clone()), Some(&verifier)).unwrap();
    assert_eq!(erased.found.len(), before.len() + 1);
    assert_eq!(erased.case_binding, Some(CaseBinding::Erased));
    let other = trail(dir.path(), &Query::Case(case_id(2)), Some(&verifier)).unwrap();
    assert!(!other.found.is_empty());
    assert_eq!(other.case_binding, Some(CaseBinding::Bound));
    // Searched in small letters, as an auditor may type it: the same case.
    let typed = trail(
        dir.path(),
        &Query::Case(case_id(2).to_ascii_lowercase()),
        Some(&verifier),
    )
    .unwrap();
    assert_eq!(typed.found.len(), other.found.len());
    let unknown = trail(dir.path(), &Query::Case("RVA-NONE".into()), Some(&verifier)).unwrap();
    assert!(unknown.found.is_empty());
    assert_eq!(unknown.case_binding, None);

    // The erased case's tags taken out of the index: its zeroed key record says it was logged,
    // and its trail, with no `erased` entry, is refused rather than read as empty.
    let victim_tag = Query::Case(victim.clone()).tag(
        &passerelle::audit::keys::IndexKey::load(&dir.path().join("private/keys/index.key"))
            .unwrap(),
    );
    let journal = std::fs::read_dir(dir.path().join("private/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "journal"))
        .unwrap();
    let mut records = Vec::new();
    passerelle::audit::journal::scan(&dir.path().join("private/journal"), |_, record| {
        records.push(record);
        Ok(())
    })
    .unwrap();
    let mut data = Vec::new();
    for mut record in records {
        record.tags.retain(|tag| *tag != victim_tag);
        record.encode_into(&mut data);
    }
    std::fs::write(&journal, &data).unwrap();
    let hidden = trail(dir.path(), &Query::Case(victim), Some(&verifier))
        .map(|t| t.found.len())
        .unwrap_err();
    assert!(hidden.to_string().contains("no `erased` entry"), "{hidden}");
}

/// Flips one bit at `pos` of `path`, runs `check`, and flips it back.
fn with_flip<T>(path: &Path, pos: usize, check: impl FnOnce() -> T) -> T {
    let mut data = std::fs::read(path).unwrap();
    data[pos] ^= 0x01;
    std::fs::write(path, &data).unwrap();
    let out = check();
    data[pos] ^= 0x01;
    std::fs::write(path, &data).unwrap();
    out
}

#[test]
fn every_flipped_byte_is_caught_and_the_index_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..200);
    log.sync().unwrap();
    append_many(&log, 200..600); // leaves an old partial tile beside the full one
    log.sync().unwrap();
    append_many(&log, 600..610);
    log.sync().unwrap();
    let public = log.layout().public.clone();
    let verifier = log.verifier().clone();
    log.close().unwrap();
    verify_public(&public, &verifier, None, &mut |_| {}).unwrap();

    let mut checked = 0;
    for path in all_files(&public) {
        let rel = path
            .strip_prefix(&public)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let positions = [0, 1, len / 3, len / 2, len - 2, len - 1];
        for &pos in &positions {
            let err = with_flip(&path, pos, || {
                verify_public(&public, &verifier, None, &mut |_| {})
            })
            .expect_err(&format!("flip at {rel}:{pos} went unnoticed"));
            checked += 1;
            if rel == "checkpoint" {
                assert_eq!(err.index, None);
                continue;
            }
            let index = err
                .index
                .unwrap_or_else(|| panic!("{rel}:{pos}: no index named: {err}"));
            let parts: Vec<&str> = rel.split('/').collect();
            let tile: u64 = parts[2].trim_end_matches(".p").parse().unwrap();
            match parts[1] {
                "0" => assert_eq!(index, tile * 256 + pos as u64 / 32, "{rel}:{pos}: {err}"),
                "1" => assert_eq!(
                    index,
                    (tile * 256 + pos as u64 / 32) * 256,
                    "{rel}:{pos}: {err}"
                ),
                "entries" => {
                    // The entry that holds the byte (or its length prefix).
                    let data = std::fs::read(&path).unwrap();
                    let (mut off, mut j) = (0usize, 0u64);
                    loop {
                        let n = u16::from_be_bytes([data[off], data[off + 1]]) as usize;
                        if pos < off + 2 + n {
                            break;
                        }
                        off += 2 + n;
                        j += 1;
                    }
                    assert_eq!(index, tile * 256 + j, "{rel}:{pos}: {err}");
                }
                other => panic!("unexpected file {other}"),
            }
        }
    }
    assert!(checked >= 60, "only {checked} flips were tried");
}

/// A file that grew past what the checkpoint covers names the last entry it covers, never one
/// past the log's end; a hash of an upper tile says which entries it stands for.
#[test]
fn a_grown_file_names_the_last_entry_it_covers_and_an_upper_hash_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..600);
    log.sync().unwrap();
    let public = log.layout().public.clone();
    let verifier = log.verifier().clone();
    log.close().unwrap();
    verify_public(&public, &verifier, None, &mut |_| {}).unwrap();

    let with_bytes_added = |rel: &str, added: &[u8]| {
        let path = public.join(rel);
        let before = std::fs::read(&path).unwrap();
        let mut grown = before.clone();
        grown.extend_from_slice(added);
        std::fs::write(&path, &grown).unwrap();
        let failure = verify_public(&public, &verifier, None, &mut |_| {}).unwrap_err();
        std::fs::write(&path, &before).unwrap();
        failure
    };
    // The last tile and the last bundle, of entries 512 to 599.
    let grown_tile = with_bytes_added("tile/0/002.p/88", &[7; 32]);
    assert_eq!(grown_tile.index, Some(599), "{grown_tile}");
    assert!(
        grown_tile.reason.contains("after this entry"),
        "{grown_tile}"
    );
    let grown_bundle = with_bytes_added("tile/entries/002.p/88", &[0, 3, b'a', b'b', b'c']);
    assert_eq!(grown_bundle.index, Some(599), "{grown_bundle}");
    assert!(
        grown_bundle
            .reason
            .contains("holds 89 entries, expected 88"),
        "{grown_bundle}"
    );
    // A stale partial file of no hashes that holds some names the tile's first entry.
    let empty = public.join("tile/0/001.p/0");
    std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
    std::fs::write(&empty, [0; 32]).unwrap();
    let not_empty = verify_public(&public, &verifier, None, &mut |_| {}).unwrap_err();
    std::fs::remove_file(&empty).unwrap();
    assert_eq!(not_empty.index, Some(256), "{not_empty}");
    assert!(
        not_empty.reason.contains("it should be empty"),
        "{not_empty}"
    );
    // A tile cut short names the first entry it lost.
    let path = public.join("tile/0/002.p/88");
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 40]).unwrap();
    let cut = verify_public(&public, &verifier, None, &mut |_| {}).unwrap_err();
    std::fs::write(&path, &whole).unwrap();
    assert_eq!(cut.index, Some(512 + 86), "{cut}");
    assert!(cut.reason.contains("cut short at this entry"), "{cut}");

    // The second hash of the level-1 tile stands for entries 256 to 511.
    let upper = with_flip(&public.join("tile/1/000.p/2"), 40, || {
        verify_public(&public, &verifier, None, &mut |_| {}).unwrap_err()
    });
    assert_eq!(upper.index, Some(256), "{upper}");
    assert!(
        upper.reason.contains("the one over entries 256 to 511"),
        "{upper}"
    );
    verify_public(&public, &verifier, None, &mut |_| {}).unwrap();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
}

#[test]
fn auditor_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log, 0..30);
    log.sync().unwrap();
    let vkey = log.verifier().to_verifier_key();
    let old = dir.path().join("old-checkpoint");
    // Saved as a tool that adds a newline of its own would (`jq -r`): the note is read as is.
    let mut saved = std::fs::read(dir.path().join("public/checkpoint")).unwrap();
    saved.push(b'\n');
    std::fs::write(&old, saved).unwrap();
    append_many(&log, 30..40);
    log.close().unwrap();
    let d = dir.path().to_str().unwrap();

    let out = bin()
        .args([
            "audit",
            "verify",
            "--log",
            d,
            "--key",
            &vkey,
            "--since",
            old.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("size 40") && stdout.contains("consistent"),
        "{stdout}"
    );
    // An evidence bundle given for the earlier checkpoint is said to be one.
    let not_a_note = dir.path().join("a-bundle.json");
    std::fs::write(&not_a_note, br#"{"format":"passerelle.audit.bundle.v1"}"#).unwrap();
    let out = bin()
        .args(["audit", "verify", "--log", d, "--key", &vkey, "--since"])
        .arg(&not_a_note)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("jq -j .checkpoint"), "{stderr}");

    // The signing key given by mistake for the verifier key is named for what it is, and not
    // echoed.
    let private = signer().to_signer_key();
    let out = bin()
        .args(["audit", "verify", "--log", d, "--key", &private])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is a signing key"), "{stderr}");
    assert!(!stderr.contains(private.as_str()), "{stderr}");
    // A key file that does not exist, and the folder's metadata given as a key, are said for
    // what they are.
    let missing = dir.path().join("no-such.key");
    let metadata = dir.path().join("private/log.json");
    for (key, says) in [
        (missing.to_str().unwrap(), "no such file"),
        (
            metadata.to_str().unwrap(),
            "is a log folder's metadata, not a key",
        ),
    ] {
        let out = bin()
            .args(["audit", "verify", "--log", d, "--key", key])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }

    // A malformed search value is a usage error, as the guide says: exit status 2.
    for (option, value) in [("--flight", "AT505"), ("--partner-ref", "CGS/7")] {
        let out = bin()
            .args(["audit", "trail", "--log", d, option, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("takes "), "{stderr}");
    }

    let bundle = dir.path().join("lpc.bundle.json");
    let out = bin()
        .args([
            "audit",
            "trail",
            "--log",
            d,
            "--lpc",
            "LPCSN00003",
            "--bundle",
            bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("[proof ok]").count(), 8, "{stdout}");
    assert!(
        stdout.contains("withheld=vulnerabilities,medical"),
        "{stdout}"
    );
    for s in SECRETS {
        assert!(!stdout.contains(s), "trail prints {s}");
    }
    // A bundle is not written over another.
    let written = std::fs::read(&bundle).unwrap();
    let again = bin()
        .args(["audit", "trail", "--log", d, "--case"])
        .arg(case_id(1))
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(std::fs::read(&bundle).unwrap(), written);
    // Said before the search: no trail is printed first.
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    let out = bin()
        .args([
            "audit",
            "verify-bundle",
            bundle.to_str().unwrap(),
            "--key",
            &vkey,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The LPC's entries are all its case's: the bundle is complete in the log.
    let out = bin()
        .args([
            "audit",
            "verify-bundle",
            bundle.to_str().unwrap(),
            "--key",
            &vkey,
            "--complete-in",
            d,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("complete: the log holds 8 entries of the case up to size 40"),
        "{stdout}"
    );
    // A gateway's data folder given for its log: each command names the log below it.
    let data = tempfile::tempdir().unwrap();
    let below = data.path().join("audit-log");
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(dir.path())
            .arg(&below)
            .status()
            .unwrap()
            .success()
    );
    let hint = format!("(the log of that data folder is {})", below.display());
    let complete_in = bin()
        .args([
            "audit",
            "verify-bundle",
            bundle.to_str().unwrap(),
            "--key",
            &vkey,
        ])
        .arg("--complete-in")
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&complete_in.stdout);
    assert_eq!(complete_in.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: ") && stdout.contains(&hint),
        "{stdout}"
    );
    let trail = bin()
        .args(["audit", "trail", "--log"])
        .arg(data.path())
        .arg("--case")
        .arg(case_id(1))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&trail.stderr);
    assert_eq!(trail.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&hint), "{stderr}");

    let tile = dir.path().join("public/tile/0/000.p/40");
    let out = with_flip(&tile, 5 * 32 + 7, || {
        bin()
            .args(["audit", "verify", "--log", d, "--key", &vkey])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "tampering must fail the command");
    assert!(stdout.contains("entry 5"), "{stdout}");

    // Its folder is made when missing, closed to other users.
    let key_file = dir.path().join("keys/audit/new.key");
    let out = bin()
        .args([
            "audit",
            "keygen",
            "--name",
            "example.org/x",
            "--out",
            key_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("example.org/x+"));
    assert!(NoteSigner::parse(&std::fs::read_to_string(&key_file).unwrap()).is_ok());
    {
        use std::os::unix::fs::PermissionsExt;
        let folder = std::fs::metadata(key_file.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o077, 0);
    }
    let again = bin()
        .args([
            "audit",
            "keygen",
            "--name",
            "example.org/x",
            "--out",
            key_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success(), "keygen must not overwrite a key");
    let badly_named = bin()
        .args([
            "audit",
            "keygen",
            "--name",
            "bad name",
            "--out",
            dir.path().join("other.key").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!badly_named.status.success());
    assert!(
        String::from_utf8_lossy(&badly_named.stderr).contains("is not a log name"),
        "{}",
        String::from_utf8_lossy(&badly_named.stderr)
    );
}

#[test]
fn since_catches_a_forked_or_rolled_back_log() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log_a = AuditLog::open(a.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log_a, 0..30);
    log_a.close().unwrap();
    // The same key signs another history (a fork) of a larger size.
    let log_b = AuditLog::open(b.path(), signer(), ORIGIN, options()).unwrap();
    append_many(&log_b, 100..140);
    log_b.close().unwrap();
    let cp_a = std::fs::read(a.path().join("public/checkpoint")).unwrap();
    let cp_b = std::fs::read(b.path().join("public/checkpoint")).unwrap();
    let v = signer().verifier().clone();
    let forked = verify_public(&b.path().join("public"), &v, Some(&cp_a), &mut |_| {}).unwrap_err();
    assert!(forked.reason.contains("not consistent"), "{forked}");
    let rolled_back =
        verify_public(&a.path().join("public"), &v, Some(&cp_b), &mut |_| {}).unwrap_err();
    assert!(rolled_back.reason.contains("rolled back"), "{rolled_back}");
}

#[test]
fn journal_segments_rotate_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        segment_bytes: 8 * 1024,
        ..options()
    };
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, small.clone()).unwrap();
    append_many(&log, 0..120);
    log.close().unwrap();
    let segments = std::fs::read_dir(dir.path().join("private/journal"))
        .unwrap()
        .count();
    assert!(
        segments > 3,
        "expected several journal segments, found {segments}"
    );
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, small).unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 120);
    assert_eq!(log.lookup(&Query::Case(case_id(4))).len(), 24);
    assert_eq!(log.open_case(&case_id(4)).unwrap().len(), 24);
    append_many(&log, 120..130);
    log.sync().unwrap();
    assert_eq!(log.latest_checkpoint().1.size, 130);
}

/// A case key lost (its record gone from `cases.keys`) while the log holds entries of the case
/// is not made anew: the case's next entries would carry another commitment, splitting its
/// trail. The append is refused, saying to restore the file; other cases go on.
#[test]
fn a_lost_case_key_is_not_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    // Another case's key first, so that the file is not left empty (refused whole, as a
    // missing file is).
    log.append(&fact(2)).unwrap();
    log.append(&fact(0)).unwrap();
    log.close().unwrap();
    let keys = dir.path().join("private/keys/cases.keys");
    let length = std::fs::metadata(&keys).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&keys).unwrap();
    file.set_len(length - 128).unwrap();
    drop(file);

    let log = AuditLog::open(dir.path(), signer(), ORIGIN, options()).unwrap();
    assert!(log.case_key_lost(&case_id(0)));
    assert!(
        !log.case_key_lost(&case_id(1)),
        "a case with no entries yet"
    );
    let refused = log.append(&fact(5)).unwrap_err();
    assert_eq!(case_id(5), case_id(0));
    assert!(
        refused.to_string().contains("has no key for it"),
        "{refused}"
    );
    log.append(&fact(1)).unwrap();
    log.close().unwrap();
}
