//! Durable append throughput and latency of the audit log, beside the raw
//! fdatasync rate of the same disk measured in the same run, and the speed of
//! the offline verifier.
//!
//! Run with `cargo bench --bench audit_append`. Settings (environment):
//! `AUDIT_BENCH_DIR` (folder on the disk to measure, default the temporary
//! folder), `AUDIT_BENCH_SECS` (seconds per append run, default 4),
//! `AUDIT_BENCH_ROUNDS` (default 3), `AUDIT_BENCH_APPENDERS` (default 64).
//! Every figure is the median over the rounds.

#[path = "support/figures.rs"]
mod figures;

use figures::{env_or, median};
use passerelle::audit::verify::verify_public;
use passerelle::audit::{AuditLog, Fact, Kind, NoteSigner, Options, Transport};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ORIGIN: &str = "audit.example.org/bench";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Appends of 200 bytes, each followed by fdatasync, for `secs` seconds.
fn raw_fsync_rate(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&[0x5a; 200]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    rate
}

fn fact(thread: u64, i: u64) -> Fact {
    let mut f = Fact::new(Kind::Delivered, chrono::Utc::now());
    f.sender = Some("sn.consulat.casablanca".into());
    f.recipients = vec!["ma.interieur".into(), "iom.ma".into(), "ma.dgsn".into()];
    f.transport = Some(Transport::Rest);
    f.event_type = Some("ma.rva.lpc.issued".into());
    f.event_id = Some(format!("bench-{thread}-{i}"));
    f.withheld = vec!["vulnerabilities".into(), "medical".into()];
    f.case_id = Some(format!("RVA-2026-{:06}", (thread * 7919 + i) % 2000));
    f.personal.native = Some(vec![b'n'; 600]);
    f.personal.canonical = Some(vec![b'c'; 450]);
    f.personal.documents = vec![format!("LPC{i:08}")];
    f.identifiers.lpc = vec![format!("LPC{i:08}")];
    f.identifiers.pnr = vec![format!("P{:05}", i % 99_999)];
    f
}

struct Run {
    appends_per_sec: f64,
    p50: Duration,
    p99: Duration,
    entries: u64,
}

/// How the appenders run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One OS thread per appender, blocking `append`.
    Threads,
    /// One tokio task per appender on a two-worker runtime, `append_async`.
    Tasks,
}

fn append_run(dir: &Path, appenders: u64, secs: f64, mode: Mode) -> Run {
    let signer = NoteSigner::from_seed(ORIGIN, &[3; 32]).unwrap();
    let log = Arc::new(AuditLog::open(dir, signer, ORIGIN, Options::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(warmup + Duration::from_secs_f64(secs));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut latencies: Vec<Duration> = match mode {
        Mode::Threads => std::thread::scope(|s| {
            let handles: Vec<_> = (0..appenders)
                .map(|t| {
                    let (log, stop) = (&log, &stop);
                    s.spawn(move || {
                        let mut lat = Vec::new();
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let f = fact(t, i);
                            let t0 = Instant::now();
                            log.append(&f).unwrap();
                            if t0.duration_since(start) >= warmup {
                                lat.push(t0.elapsed());
                            }
                            i += 1;
                        }
                        lat
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        }),
        Mode::Tasks => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            rt.block_on(async {
                let tasks: Vec<_> = (0..appenders)
                    .map(|t| {
                        let (log, stop) = (log.clone(), stop.clone());
                        tokio::spawn(async move {
                            let mut lat = Vec::new();
                            let mut i = 0;
                            while !stop.load(Ordering::Relaxed) {
                                let f = fact(t, i);
                                let t0 = Instant::now();
                                log.append_async(&f).await.unwrap();
                                if t0.duration_since(start) >= warmup {
                                    lat.push(t0.elapsed());
                                }
                                i += 1;
                            }
                            lat
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            })
        }
    };
    timer.join().unwrap();
    latencies.sort();
    log.sync().unwrap();
    let entries = log.latest_checkpoint().1.size;
    Arc::into_inner(log).unwrap().close().unwrap();
    Run {
        appends_per_sec: latencies.len() as f64 / secs,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        entries,
    }
}

/// CPU time of the work an append does on the caller's thread (leaf,
/// commitments, sealing, tags) and of signing its receipt, single-threaded.
fn cpu_costs() -> (Duration, Duration) {
    use passerelle::audit::Receipt;
    use passerelle::audit::keys::{CaseKeys, IndexKey, Opened, TagKind, seal};
    use passerelle::audit::leaf::{Commitments, Leaf};
    use passerelle::audit::merkle::leaf_hash;
    let dir = tempfile::tempdir().unwrap();
    let index_key = IndexKey::load_or_create(&dir.path().join("index.key")).unwrap();
    let keys = CaseKeys {
        commit: [1; 32].into(),
        data: [2; 32].into(),
    };
    let signer = NoteSigner::from_seed(ORIGIN, &[3; 32]).unwrap();
    let n = 3000;
    let t0 = Instant::now();
    let mut hashes = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let f = fact(0, i);
        let case = f.case_id.clone().unwrap();
        let tag = index_key.tag(TagKind::Case, &case);
        let c = Commitments::compute(&keys.commit, &case, &f.personal);
        let entry = Leaf::from_fact(&f, Some(c)).encode().unwrap();
        let h = leaf_hash(&entry);
        let opened = Opened {
            case_id: case,
            native: f.personal.native.clone(),
            canonical: f.personal.canonical.clone(),
            documents: f.personal.documents.clone(),
        };
        seal(&keys, tag, &h.0, &opened).unwrap();
        index_key.tag(TagKind::Lpc, &f.identifiers.lpc[0]);
        index_key.tag(TagKind::Pnr, &f.identifiers.pnr[0]);
        hashes.push(h);
    }
    let prepare = t0.elapsed() / n as u32;
    // Where it goes: building the fact, the leaf encoding, the sealing.
    let f = fact(0, 1);
    let c = Commitments::compute(&keys.commit, "RVA-2026-000001", &f.personal);
    let time = |what: &str, work: &dyn Fn()| {
        let t0 = Instant::now();
        for _ in 0..n {
            work();
        }
        println!("  {what}: {:?}", t0.elapsed() / n as u32);
    };
    time("build the fact", &|| drop(fact(0, 1)));
    time("commitments", &|| {
        drop(Commitments::compute(
            &keys.commit,
            "RVA-2026-000001",
            &f.personal,
        ))
    });
    time("leaf encoding (RFC 8785)", &|| {
        drop(Leaf::from_fact(&f, Some(c.clone())).encode().unwrap())
    });
    let opened = Opened {
        case_id: "RVA-2026-000001".into(),
        native: f.personal.native.clone(),
        canonical: f.personal.canonical.clone(),
        documents: f.personal.documents.clone(),
    };
    time("sealing", &|| {
        drop(seal(&keys, [0; 32], &[0; 32], &opened).unwrap())
    });
    // Receipts are signed once per group commit; 64 is a typical group here.
    let t0 = Instant::now();
    for (g, group) in hashes.chunks(64).enumerate() {
        Receipt::issue_group(
            &signer,
            ORIGIN,
            g as u64 * 64,
            group,
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
    }
    (prepare, t0.elapsed() / n as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    let base = std::env::var_os("AUDIT_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let secs = env_or("AUDIT_BENCH_SECS", 4) as f64;
    let rounds = env_or("AUDIT_BENCH_ROUNDS", 3).max(1);
    let appenders = env_or("AUDIT_BENCH_APPENDERS", 64);
    println!(
        "audit append benchmark: {appenders} appenders, {secs} s per run, {rounds} rounds, in {}",
        base.display()
    );
    let (prepare, sign) = cpu_costs();
    println!(
        "cpu per append on the caller's thread: prepare {prepare:?}, receipt (one signature per group of 64) {sign:?}"
    );

    let mut fsyncs = Vec::new();
    let mut verify_rates = Vec::new();
    let mut results: Vec<(Mode, &str, Vec<Run>)> = vec![
        (Mode::Threads, "threads", Vec::new()),
        (Mode::Tasks, "tokio tasks", Vec::new()),
    ];
    for round in 1..=rounds {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let before = raw_fsync_rate(dir.path(), 2.0);
        for (n, (mode, name, runs)) in results.iter_mut().enumerate() {
            let log = dir.path().join(format!("log{n}"));
            let run = append_run(&log, appenders, secs, *mode);
            println!(
                "round {round}, {appenders} {name}: durable appends {:.0}/s | p50 {:.2} ms p99 {:.2} ms | {} entries",
                run.appends_per_sec,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.entries,
            );
            runs.push(run);
        }
        let after = raw_fsync_rate(dir.path(), 2.0);
        let fsync = (before + after) / 2.0;
        fsyncs.push(fsync);

        let public = dir.path().join("log0/public");
        let verifier = NoteSigner::from_seed(ORIGIN, &[3; 32])
            .unwrap()
            .verifier()
            .clone();
        let t0 = Instant::now();
        let report = verify_public(&public, &verifier, None, &mut |_| {}).unwrap();
        let verify_rate = report.checkpoint.size as f64 / t0.elapsed().as_secs_f64();
        verify_rates.push(verify_rate);
        println!(
            "round {round}: raw fdatasync {fsync:.0}/s (before {before:.0}, after {after:.0}) | verify {:.2} M entries/s over {} entries",
            verify_rate / 1e6,
            report.checkpoint.size
        );
    }
    let fsync = median(&fsyncs);
    println!("median raw fdatasync rate (one writer, 200-byte appends): {fsync:.0}/s");
    for (_, name, runs) in &results {
        let rate = median(&runs.iter().map(|r| r.appends_per_sec).collect::<Vec<_>>());
        let p50 = median(
            &runs
                .iter()
                .map(|r| r.p50.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        );
        let p99 = median(
            &runs
                .iter()
                .map(|r| r.p99.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        );
        println!(
            "median with {appenders} {name}: {rate:.0} durable appends/s = {:.1} x the raw fsync rate; p50 {p50:.2} ms, p99 {p99:.2} ms; targets (>= 20000/s, p99 <= 20 ms): {}, {}",
            rate / fsync,
            if rate >= 20_000.0 { "met" } else { "NOT met" },
            if p99 <= 20.0 { "met" } else { "NOT met" },
        );
    }
    println!(
        "median offline verify rate: {:.2} M entries/s",
        median(&verify_rates) / 1e6
    );
}
