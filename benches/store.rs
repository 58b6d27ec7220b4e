//! What the store costs to make one accepted message durable, beside an append-only journal
//! of the same bytes measured in the same run.
//!
//! Each message is what the load test's laissez-passer makes: its accepted record (with a
//! receipt) and four deliveries with their bodies, recorded with [`Store::record_accepted`]
//! (one synced, group-committed transaction) and confirmed with [`Store::confirm_later`]
//! (unsynced), by many concurrent writers. The baseline writes the same serialised bytes to
//! an append-only file: the record and its deliveries as one synced group-committed append,
//! then a small unsynced confirmation, the least any durable store of these messages must
//! do. The ratio of the two CPU costs per message says how much of the store's cost is its
//! B-tree bookkeeping rather than the bytes and the syncs.
//!
//! Run with `cargo bench --bench store`. Settings (environment): `STORE_BENCH_DIR` (folder on
//! the disk to measure, default the temporary folder), `STORE_BENCH_SECS` (seconds per run,
//! default 4), `STORE_BENCH_ROUNDS` (default 3), `STORE_BENCH_WRITERS` (default 64). Every
//! figure is the median over the rounds, which alternate the two.

use passerelle::store::{AcceptedRecord, Channel, LogEntry, NewDelivery, Recorded, Store};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Recipients and body sizes of the load test's message.
const RECIPIENTS: [&str; 4] = ["ma.interieur", "iom.ma", "ma.dgsn", "iom.sn"];
const BODY_BYTES: usize = 1_200;
/// The most writes in one group, as in the store.
const MAX_GROUP: usize = 512;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn record(writer: u64, n: u64) -> AcceptedRecord {
    AcceptedRecord {
        event_id: format!("BENCH-{writer}-{n}"),
        source: "urn:partner:sn.consulat.casablanca".into(),
        sender: "sn.consulat.casablanca".into(),
        event_type: "ma.rva.lpc.issued".into(),
        confirmed: false,
        log_index: 0,
        leaf_hash: String::new(),
        receipt: String::new(),
        deliveries: Vec::new(),
        case_id: Some("RVA-2026-004211".into()),
        case_facts: Vec::new(),
        recipients: RECIPIENTS.iter().map(|r| (*r).to_owned()).collect(),
        accepted_at: "2026-11-29T10:00:00.000Z".into(),
    }
}

fn deliveries() -> Vec<NewDelivery> {
    RECIPIENTS
        .iter()
        .map(|recipient| NewDelivery {
            recipient: (*recipient).to_owned(),
            channel: Channel::Inbox,
            body: vec![b'x'; BODY_BYTES],
            content_type: "application/xml".into(),
            mapping_id: format!("{recipient}/lpc-notice"),
            withheld: vec!["data.vulnerabilities".into()],
            unwritable: None,
        })
        .collect()
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

/// Runs `writers` tasks, each repeating `one` with its own numbers, for `secs` seconds (after
/// half a second of warm-up), and measures.
fn drive<F, Fut>(runtime: &tokio::runtime::Runtime, writers: u64, secs: f64, one: F) -> Run
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
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

fn run_store(runtime: &tokio::runtime::Runtime, dir: &Path, writers: u64, secs: f64) -> Run {
    let path = dir.join("bench-store.redb");
    let store = Arc::new(Store::open(&path).expect("the store opens"));
    let writer_store = store.clone();
    let run = drive(runtime, writers, secs, move |w, n| {
        let store = writer_store.clone();
        async move {
            let mut record = record(w, n);
            let Recorded::New(made) = store
                .record_accepted(&mut record, deliveries())
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

fn run_journal(runtime: &tokio::runtime::Runtime, dir: &Path, writers: u64, secs: f64) -> Run {
    let path = dir.join("bench-journal");
    let (tx, rx) = mpsc::sync_channel::<Append>(4096);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || journal_writer(&path, rx))
    };
    let sender = tx.clone();
    let run = drive(runtime, writers, secs, move |w, n| {
        let tx = sender.clone();
        async move {
            // The same bytes the store is given: the record and each delivery's metadata and
            // body, serialised, in one synced append; then the confirmed record, unsynced.
            let mut record = record(w, n);
            let mut bytes = serde_json::to_vec(&record).expect("a record");
            for d in deliveries() {
                let metadata = serde_json::json!({
                    "recipient": d.recipient,
                    "channel": d.channel,
                    "content_type": d.content_type,
                    "mapping_id": d.mapping_id,
                    "withheld": d.withheld,
                });
                serde_json::to_writer(&mut bytes, &metadata).expect("a delivery");
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
    println!(
        "{writers} writers, {secs} s per run, {rounds} rounds, {} deliveries of {BODY_BYTES} bytes a message, in {}",
        RECIPIENTS.len(),
        scratch.path().display()
    );
    let (mut store_rate, mut store_cpu, mut journal_rate, mut journal_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let journal = run_journal(&runtime, scratch.path(), writers, secs);
        let store = run_store(&runtime, scratch.path(), writers, secs);
        println!(
            "round {round}: store {:.0} msg/s, {:.0} µs CPU a message; journal {:.0} msg/s, {:.0} µs",
            store.rate, store.cpu_us, journal.rate, journal.cpu_us
        );
        store_rate.push(store.rate);
        store_cpu.push(store.cpu_us);
        journal_rate.push(journal.rate);
        journal_cpu.push(journal.cpu_us);
    }
    let (sr, sc) = (median(&mut store_rate), median(&mut store_cpu));
    let (jr, jc) = (median(&mut journal_rate), median(&mut journal_cpu));
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
