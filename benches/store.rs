//! What the store costs to make one accepted message durable, beside an append-only journal
//! of the same bytes measured in the same run.
//!
//! Each message is what the load test's laissez-passer makes: its accepted record (with a
//! receipt) and one delivery for each recipient the registry routes it to, with the body the
//! mappings write for that recipient (the Senegal consulate's `LaissezPasserDelivre` fixture,
//! encoded once at start). It is recorded with [`Store::record_accepted`] (one synced,
//! group-committed transaction) and confirmed with [`Store::confirm_later`] (unsynced), by
//! many concurrent writers. The baseline writes the same serialised values to an append-only
//! file (the record with its delivery ids, each delivery's metadata and body) as one synced
//! group-committed append, then the confirmed record unsynced: the least any durable store
//! of these messages must write. The difference of the two CPU costs per message is what the
//! store spends beyond the bytes and the syncs: its B-tree writes, and the bookkeeping around
//! them (the duplicate lookup, the copies it hands back, the queued confirmation).
//!
//! Run with `cargo bench --bench store`. Settings (environment): `STORE_BENCH_DIR` (folder on
//! the disk to measure, default the temporary folder), `STORE_BENCH_SECS` (seconds per run,
//! default 4), `STORE_BENCH_ROUNDS` (default 3), `STORE_BENCH_WRITERS` (default 64). Every
//! figure is the median over the rounds, which alternate which of the two runs first.

#[path = "support/figures.rs"]
mod figures;

use figures::{env_or, median};
use passerelle::canonical::Catalogue;
use passerelle::mapping::{Decoded, MappingSet};
use passerelle::registry::Registry;
use passerelle::store::{
    AcceptedRecord, Channel, Delivery, DeliveryState, LogEntry, NewDelivery, Recorded, Store,
};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The load test's message, and who sends it.
const MESSAGE: &str = "mappings/fixtures/sn.consulat.casablanca/in/lpc-issued.xml";
const SENDER: &str = "sn.consulat.casablanca";
/// The most writes in one group, as in the store.
const MAX_GROUP: usize = 512;

/// The deliveries the gateway writes for the load test's message: one per recipient the
/// sample registry routes it to, in that recipient's format.
fn load_test_deliveries() -> Vec<NewDelivery> {
    let catalogue = Catalogue::embedded().expect("the catalogue");
    let mappings = MappingSet::load(Path::new("mappings")).expect("the mappings");
    let registry = Registry::load(Path::new("config/registry.toml"), &catalogue, &mappings)
        .expect("the sample registry");
    let bytes = std::fs::read(MESSAGE).expect("the load test's message");
    let sender = mappings.partner(SENDER).expect("the sender's mappings");
    let Decoded::Event(mapped) = sender.decode(&bytes).expect("the message decodes") else {
        panic!("the load test's message is ignored")
    };
    let (recipients, _) = registry.recipients(SENDER, &mapped.event, &[]);
    recipients
        .iter()
        .map(|recipient| {
            let mapping = mappings
                .partner(recipient)
                .expect("the recipient's mappings");
            let encoded = mapping.encode(&mapped.event).expect("the event encodes");
            NewDelivery {
                recipient: recipient.clone(),
                channel: Channel::Inbox,
                body: encoded.body,
                content_type: encoded.content_type.to_owned(),
                mapping_id: encoded.mapping_id,
                mapping_hash: mapping.hash.clone(),
                withheld: encoded.withheld,
                unwritable: None,
            }
        })
        .collect()
}

fn record(writer: u64, n: u64, recipients: &[NewDelivery]) -> AcceptedRecord {
    AcceptedRecord {
        event_id: format!("BENCH-{writer}-{n}"),
        source: format!("urn:partner:{SENDER}"),
        sender: SENDER.into(),
        event_type: "ma.rva.lpc.issued".into(),
        confirmed: false,
        log_index: 0,
        leaf_hash: String::new(),
        receipt: String::new(),
        deliveries: Vec::new(),
        case_id: Some("RVA-2026-004211".into()),
        case_facts: Vec::new(),
        recipients: recipients.iter().map(|d| d.recipient.clone()).collect(),
        accepted_at: "2026-11-29T10:00:00.000Z".into(),
        // What the pipeline keeps: a SHA-256, hex.
        content: "0".repeat(64),
        content_mapping: format!("sha256:{}", "0".repeat(64)),
        anomalies: Vec::new(),
    }
}

/// A receipt-sized log entry.
fn entry(n: u64) -> LogEntry {
    LogEntry {
        log_index: n,
        leaf_hash: "ab".repeat(32),
        receipt: "r".repeat(640),
    }
}

/// Messages a second and process CPU per message of one run.
struct Run {
    rate: f64,
    cpu_us: f64,
}

/// Runs `writers` tasks, each repeating `write_one_message` with its own writer number and
/// message number, for `secs` seconds (after half a second of warm-up), and measures.
fn drive<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    writers: u64,
    secs: f64,
    write_one_message: F,
) -> Run
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(write_one_message);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (one, done, stop) = (one.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        one(w, n).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = std::process::id();
        let (count_before, cpu_before) = (
            done.load(Ordering::Relaxed),
            passerelle::cpu::cpu_time(pid).expect("this process's CPU time"),
        );
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let count = done.load(Ordering::Relaxed) - count_before;
        let cpu = passerelle::cpu::cpu_time(pid).expect("this process's CPU time") - cpu_before;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("a writer task");
        }
        Run {
            rate: count as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / count.max(1) as f64,
        }
    })
}

/// The settings of one run.
struct Setting<'a> {
    dir: &'a Path,
    writers: u64,
    secs: f64,
    deliveries: Arc<Vec<NewDelivery>>,
}

fn run_store(runtime: &tokio::runtime::Runtime, setting: &Setting<'_>) -> Run {
    let path = setting.dir.join("bench-store.redb");
    let store = Arc::new(Store::open(&path).expect("the store opens"));
    let writer_store = store.clone();
    let deliveries = setting.deliveries.clone();
    let run = drive(runtime, setting.writers, setting.secs, move |w, n| {
        let (store, deliveries) = (writer_store.clone(), deliveries.clone());
        async move {
            let mut record = record(w, n, &deliveries);
            let Recorded::New(made) = store
                .record_accepted(&mut record, deliveries.to_vec())
                .await
                .expect("recorded")
            else {
                panic!("a duplicate in the benchmark")
            };
            store
                .confirm_later(&record, entry(n), &made)
                .expect("confirmed");
        }
    });
    Arc::into_inner(store)
        .expect("the only reference")
        .close()
        .expect("the store closes");
    std::fs::remove_file(&path).expect("removing the benchmark store");
    run
}

/// One append to the journal: its bytes, and whom to tell once they are synced (no one for
/// an unsynced confirmation).
type Append = (Vec<u8>, Option<oneshot::Sender<()>>);

/// The baseline's writer thread: appends each group of writes at once, and syncs it when one
/// of them waits for it, like the store's writer.
fn journal_writer(path: &Path, rx: mpsc::Receiver<Append>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the journal opens");
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(append) => group.push(append),
                Err(_) => break,
            }
        }
        buf.clear();
        for (bytes, _) in &group {
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        file.write_all(&buf).expect("a journal write");
        if group.iter().any(|(_, reply)| reply.is_some()) {
            file.sync_data().expect("a journal sync");
        }
        for (_, reply) in group {
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
        }
    }
}

fn run_journal(runtime: &tokio::runtime::Runtime, setting: &Setting<'_>) -> Run {
    let path = setting.dir.join("bench-journal");
    let (tx, rx) = mpsc::sync_channel::<Append>(4096);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || journal_writer(&path, rx))
    };
    let sender = tx.clone();
    let deliveries = setting.deliveries.clone();
    let next_id = Arc::new(AtomicU64::new(1));
    let run = drive(runtime, setting.writers, setting.secs, move |w, n| {
        let (tx, deliveries, next_id) = (sender.clone(), deliveries.clone(), next_id.clone());
        async move {
            // What the store is given, as it serialises it: the record with its delivery ids,
            // and each delivery's metadata and body, in one synced append; then the
            // confirmed record, unsynced.
            let mut record = record(w, n, &deliveries);
            let made: Vec<Delivery> = deliveries
                .iter()
                .map(|d| Delivery {
                    id: next_id.fetch_add(1, Ordering::Relaxed),
                    event_id: record.event_id.clone(),
                    event_type: record.event_type.clone(),
                    source: record.source.clone(),
                    case_id: record.case_id.clone(),
                    recipient: d.recipient.clone(),
                    channel: d.channel,
                    body: Vec::new(),
                    content_type: d.content_type.clone(),
                    mapping_id: d.mapping_id.clone(),
                    mapping_hash: d.mapping_hash.clone(),
                    withheld: d.withheld.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    due_ms: 1_795_000_000_000,
                    last_error: None,
                    created_at: record.accepted_at.clone(),
                })
                .collect();
            record.deliveries = made.iter().map(|d| d.id).collect();
            let mut bytes = serde_json::to_vec(&record).expect("a record");
            for (metadata, d) in made.iter().zip(deliveries.iter()) {
                serde_json::to_writer(&mut bytes, metadata).expect("a delivery");
                bytes.extend_from_slice(&d.body);
            }
            let (reply, synced) = oneshot::channel();
            tx.send((bytes, Some(reply))).expect("the journal writer");
            synced.await.expect("the journal writer");
            let entry = entry(n);
            record.confirmed = true;
            record.log_index = entry.log_index;
            record.leaf_hash = entry.leaf_hash;
            record.receipt = entry.receipt;
            let confirmation = serde_json::to_vec(&record).expect("a record");
            tx.send((confirmation, None)).expect("the journal writer");
        }
    });
    drop(tx);
    writer.join().expect("the journal writer");
    std::fs::remove_file(&path).expect("removing the benchmark journal");
    run
}

fn main() {
    let dir = std::env::var_os("STORE_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&dir).expect("a scratch folder");
    let secs = env_or("STORE_BENCH_SECS", 4) as f64;
    let rounds = env_or("STORE_BENCH_ROUNDS", 3).max(1);
    let writers = env_or("STORE_BENCH_WRITERS", 64).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let deliveries = load_test_deliveries();
    let sizes: Vec<String> = deliveries
        .iter()
        .map(|d| format!("{} {} bytes", d.recipient, d.body.len()))
        .collect();
    println!(
        "{writers} writers, {secs} s per run, {rounds} rounds, in {}; each message: {} deliveries ({})",
        scratch.path().display(),
        deliveries.len(),
        sizes.join(", ")
    );
    let setting = Setting {
        dir: scratch.path(),
        writers,
        secs,
        deliveries: Arc::new(deliveries),
    };
    let (mut store_rate, mut store_cpu, mut journal_rate, mut journal_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (store, journal) = if round % 2 == 0 {
            let journal = run_journal(&runtime, &setting);
            (run_store(&runtime, &setting), journal)
        } else {
            let store = run_store(&runtime, &setting);
            (store, run_journal(&runtime, &setting))
        };
        println!(
            "round {round}: store {:.0} msg/s, {:.0} µs CPU a message; journal {:.0} msg/s, {:.0} µs",
            store.rate, store.cpu_us, journal.rate, journal.cpu_us
        );
        store_rate.push(store.rate);
        store_cpu.push(store.cpu_us);
        journal_rate.push(journal.rate);
        journal_cpu.push(journal.cpu_us);
    }
    let (sr, sc) = (median(&store_rate), median(&store_cpu));
    let (jr, jc) = (median(&journal_rate), median(&journal_cpu));
    println!("medians over {rounds} rounds:");
    println!("store    {sr:>8.0} msg/s   CPU a message {sc:>6.0} µs");
    println!("journal  {jr:>8.0} msg/s   CPU a message {jc:>6.0} µs");
    println!(
        "the store costs {:.1} times the CPU of the journal a message ({:.0} µs more), and makes {:.0} % of its rate",
        sc / jc.max(f64::MIN_POSITIVE),
        sc - jc,
        100.0 * sr / jr.max(f64::MIN_POSITIVE)
    );
}
