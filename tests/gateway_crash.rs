//! `kill -9` under load: the gateway binary (`passerelle serve`) is killed while a dozen
//! clients are sending, then started again on the same configuration and data. Every message
//! that was answered `2xx` before the kill must be in the audit log (its receipt is served, with
//! an inclusion proof that verifies offline once a checkpoint covers it) and delivered to each of
//! its three recipients: once to each inbox (the ministry's and IOM Morocco's), and at least once
//! to the DGSN's webhook, which may see again only the few pushes that were under way at the
//! kill (a webhook drops repeats by event id). Messages in flight at the kill may or may not have
//! been accepted; none may appear twice in an inbox.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::{
    Client, ORIGIN, Receiver, RegistryChanges, ServedSetup, fixture_text, wait_for,
};
use passerelle::audit::merkle::{Hash, verify_inclusion};
use passerelle::audit::{Checkpoint, NoteSigner, NoteVerifier, Receipt, TlogProof};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent senders.
const CLIENTS: usize = 12;
/// How long they send before the kill.
const LOAD: Duration = Duration::from_secs(2);
/// The whole test's bound.
const LIMIT: Duration = Duration::from_secs(60);

/// What the gateway answered for one message.
#[derive(Debug, Clone)]
struct Acked {
    index: u64,
    leaf: String,
    receipt: String,
}

/// What the senders saw.
#[derive(Debug, Default)]
struct Outcomes {
    /// Reference -> what the gateway acknowledged, for every message answered `2xx`.
    accepted: Mutex<BTreeMap<String, Acked>>,
    /// Requests that got no answer (in flight at the kill).
    lost: AtomicUsize,
    /// Answers other than `2xx`, and requests that got no answer before the kill (there must be
    /// none).
    other: Mutex<Vec<String>>,
}

/// One sender: unique laissez-passer notices from the Senegalese consulate, one at a time, until
/// `stop`.
async fn sender(n: usize, gateway: SocketAddr, stop: Arc<AtomicBool>, out: Arc<Outcomes>) {
    let client = Client::new("sn.consulat.casablanca", gateway);
    let template = fixture_text("sn.consulat.casablanca", "in/lpc-issued.xml");
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        // The consulate's own reference is the event id, hence the deduplication key.
        let reference = format!("CGSN-CASA-2026-1{n:02}{seq:04}");
        let body = template.replace("CGSN-CASA-2026-00417", &reference);
        match client.try_send("application/xml", body).await {
            Ok(reply) if reply.status == 202 => {
                let ack = reply.json();
                assert_eq!(ack["event_id"], reference.as_str());
                let acked = Acked {
                    index: ack["log_index"].as_u64().expect("log_index"),
                    leaf: ack["leaf_hash"].as_str().expect("leaf_hash").to_owned(),
                    receipt: ack["receipt"].as_str().expect("receipt").to_owned(),
                };
                out.accepted
                    .lock()
                    .expect("outcomes")
                    .insert(reference, acked);
            }
            Ok(reply) => out.other.lock().expect("outcomes").push(format!(
                "{}: {}",
                reply.status,
                reply.text()
            )),
            // `stop` is set before the kill: an error seen before it is the gateway's own
            // failure, not the kill's.
            Err(e) if !stop.load(Ordering::SeqCst) => {
                out.other
                    .lock()
                    .expect("outcomes")
                    .push(format!("no answer before the kill: {e}"));
                return;
            }
            Err(_) => {
                out.lost.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Checks the receipt of `reference` as its sender sees it after the restart: the same log
/// entry as acknowledged before the kill, a receipt for it, and an inclusion proof in a signed
/// checkpoint. A message whose store record was not yet confirmed at the kill is settled at
/// start-up with a receipt issued again for its entry: the receipt served may then differ from
/// the one acknowledged, and is verified in full. Signatures are costly in a debug build: each
/// distinct checkpoint is verified once (`checkpoints`), and an unchanged receipt only when
/// `full`. Returns whether the receipt was issued again.
async fn check_receipt(
    client: &Client,
    reference: &str,
    acked: &Acked,
    verifier: &NoteVerifier,
    checkpoints: &mut HashMap<String, Checkpoint>,
    full: bool,
) -> bool {
    let reply = client.get(&format!("/v1/receipts/{reference}")).await;
    assert_eq!(
        reply.status,
        200,
        "{reference} after the restart: {}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["log_index"], acked.index, "{reference}");
    assert_eq!(body["leaf_hash"], acked.leaf.as_str(), "{reference}");
    let served = body["receipt"].as_str().expect("receipt");
    let reissued = served != acked.receipt;
    let mut texts = vec![];
    if full || reissued {
        texts.push(served);
    }
    if full && reissued {
        texts.push(acked.receipt.as_str());
    }
    for text in texts {
        let receipt = Receipt::verify(text, verifier)
            .unwrap_or_else(|e| panic!("{reference}: the receipt does not verify: {e}"));
        assert_eq!(receipt.index, acked.index);
        assert_eq!(hex::encode(receipt.leaf_hash.0), acked.leaf);
    }
    let proof = TlogProof::parse(
        body["proof"]
            .as_str()
            .unwrap_or_else(|| panic!("{reference}: no proof, though a checkpoint covers it")),
    )
    .expect("a tlog-proof");
    assert_eq!(proof.index, acked.index);
    let checkpoint = checkpoints
        .entry(proof.checkpoint.clone())
        .or_insert_with(|| {
            Checkpoint::open(proof.checkpoint.as_bytes(), verifier, Some(ORIGIN))
                .expect("a signed checkpoint")
        });
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&acked.leaf, &mut hash).expect("a hex leaf hash");
    verify_inclusion(
        acked.index,
        checkpoint.size,
        &Hash(hash),
        &proof.path,
        &checkpoint.root,
    )
    .unwrap_or_else(|e| panic!("{reference}: the inclusion proof fails: {e:?}"));
    reissued
}

async fn scenario() {
    let started = Instant::now();
    // The three recipients of a laissez-passer: the ministry and IOM Morocco read their inboxes,
    // the DGSN is pushed to its webhook.
    let dgsn = Receiver::start_on_own_thread();
    let setup = ServedSetup::new(&RegistryChanges::new().webhook("ma.dgsn", &dgsn.url("/notices")));
    let (addr, data) = (setup.addr, &setup.data);
    let mut gateway = setup.start("first.log", "warn").await;

    // Load, then kill -9 with requests in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Outcomes::default());
    let senders: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(sender(n, addr, stop.clone(), out.clone())))
        .collect();
    tokio::time::sleep(LOAD).await;
    let before_kill = out.accepted.lock().unwrap().len();
    stop.store(true, Ordering::SeqCst);
    gateway.kill();
    for s in senders {
        s.await.expect("a sender");
    }
    let accepted = std::mem::take(&mut *out.accepted.lock().unwrap());
    let lost = out.lost.load(Ordering::SeqCst);
    let other = out.other.lock().unwrap().clone();
    assert!(
        other.is_empty(),
        "answers other than 202, or none, before the kill: {other:?}"
    );
    assert!(
        accepted.len() >= 20,
        "too little load to mean anything: {} accepted",
        accepted.len()
    );
    assert!(accepted.len() >= before_kill);
    eprintln!(
        "{} messages accepted in {LOAD:?} by {CLIENTS} senders, {lost} in flight at the kill",
        accepted.len()
    );

    // Start again on the same configuration and data.
    let gateway = setup.start("second.log", "warn").await;
    let restarted = Instant::now();
    let key = std::fs::read_to_string(data.join("audit-signing.key")).expect("the signing key");
    let verifier = NoteSigner::parse(&key)
        .expect("a signing key")
        .verifier()
        .clone();

    // Every 2xx'd message is in the log, and a checkpoint soon covers it.
    let consulate = Client::new("sn.consulat.casablanca", addr);
    let last = accepted.values().map(|a| a.index).max().unwrap_or_default();
    wait_for(
        "a checkpoint covering every acknowledged message",
        Duration::from_secs(10),
        async || {
            let reply = consulate.get("/v1/audit/log/checkpoint").await;
            let cp = Checkpoint::open(&reply.body, &verifier, Some(ORIGIN)).expect("a checkpoint");
            (cp.size > last).then_some(())
        },
    )
    .await;
    let items: Vec<(String, Acked)> = accepted.clone().into_iter().collect();
    let chunks: Vec<Vec<(String, Acked)>> = items
        .chunks(items.len().div_ceil(4).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let checks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let client = Client::new("sn.consulat.casablanca", addr);
            let verifier = verifier.clone();
            tokio::spawn(async move {
                let mut checkpoints = HashMap::new();
                let mut reissued = 0;
                for (n, (reference, acked)) in chunk.iter().enumerate() {
                    let full = n % 16 == 0 || n + 1 == chunk.len();
                    if check_receipt(&client, reference, acked, &verifier, &mut checkpoints, full)
                        .await
                    {
                        reissued += 1;
                    }
                }
                reissued
            })
        })
        .collect();
    let mut reissued = 0;
    for c in checks {
        reissued += c.await.expect("the receipts check");
    }
    let receipts_checked = restarted.elapsed();

    // Every 2xx'd message is in each inbox, once.
    let mut inbox_messages = 0;
    for partner in ["ma.interieur", "iom.ma"] {
        inbox_messages += check_inbox(partner, addr, &accepted, lost).await;
    }

    // Every 2xx'd message reaches the DGSN's webhook; only pushes under way at the kill may come
    // again: at most a recipient's share of `delivery.concurrency` (a quarter of 16).
    let pushed = |dgsn: &Receiver| -> BTreeMap<String, usize> {
        let mut pushed = BTreeMap::new();
        for r in dgsn.accepted() {
            *pushed.entry(r.event_id).or_insert(0) += 1;
        }
        pushed
    };
    wait_for(
        "every acknowledged message pushed to the DGSN",
        Duration::from_secs(20),
        async || {
            let pushed = pushed(&dgsn);
            accepted
                .keys()
                .all(|r| pushed.contains_key(r))
                .then_some(())
        },
    )
    .await;
    let pushed = pushed(&dgsn);
    let repeated = pushed.values().map(|n| n - 1).sum::<usize>();
    assert!(
        repeated <= 4,
        "{repeated} pushes repeated after the restart: more than were under way at the kill"
    );
    assert!(
        pushed.len() <= accepted.len() + lost,
        "more events pushed ({}) than messages sent ({} + {lost})",
        pushed.len(),
        accepted.len()
    );
    eprintln!(
        "after the restart: {} receipts checked ({reissued} issued again) in \
         {receipts_checked:?}, {inbox_messages} inbox messages read, {} events pushed \
         ({repeated} again); {:?} in all",
        accepted.len(),
        pushed.len(),
        started.elapsed()
    );
    drop(gateway);
}

/// Checks that every acknowledged message is in `partner`'s inbox once, and that the inbox
/// holds no more than was sent; returns how many messages it holds.
async fn check_inbox(
    partner: &str,
    gateway: SocketAddr,
    accepted: &BTreeMap<String, Acked>,
    lost: usize,
) -> usize {
    let messages = Client::new(partner, gateway).inbox(500).await;
    let mut in_inbox = BTreeSet::new();
    for m in &messages {
        let id = m["event_id"].as_str().expect("an event id").to_owned();
        assert_eq!(m["event_type"], "ma.rva.lpc.issued");
        assert!(
            in_inbox.insert(id.clone()),
            "{id} delivered twice to {partner}"
        );
    }
    let missing: Vec<&String> = accepted.keys().filter(|r| !in_inbox.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are missing from {partner}'s inbox: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        in_inbox.len() <= accepted.len() + lost,
        "more deliveries to {partner} ({}) than messages sent ({} + {lost})",
        in_inbox.len(),
        accepted.len()
    );
    messages.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_survives_a_kill_9() {
    tokio::time::timeout(LIMIT, scenario())
        .await
        .unwrap_or_else(|_| panic!("the crash test took more than {LIMIT:?}"));
}
