//! `passerelle load`: drives a gateway over mutual TLS and measures it against a floor.
//!
//! Each round starts two gateways as child processes, one after the other, on loopback:
//! the full pipeline, and the floor (the same TLS server answering `202` without processing).
//! Concurrent keep-alive clients send the Senegal consulate's `LaissezPasserDelivre`, each
//! with its own reference, for a fixed time. Rounds alternate the two so that a noisy machine
//! affects both alike; the medians are printed, with the ratio of full to floor throughput.
//! The gateways' peak resident memory is read from `/proc/<pid>/status` (`VmHWM`), and the CPU
//! time that the gateway and this load generator spent during the measurement from
//! `/proc/<pid>/stat`, to give the CPU cost of one message on each side, and the gateway's by
//! the part of it that spent it (HTTP workers, store writer, audit log). It ends with the
//! targets: the full pipeline at 50 % of the floor or more, p99 under 25 ms, RSS under 200 MB.

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Arguments of `passerelle load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Concurrent clients, each on its own keep-alive connection (1 to 1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub clients: u16,
    /// Seconds of measurement per run, after one second of warm-up (1 to 3600).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Rounds; each runs the floor and the full pipeline once (1 to 100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
    /// Only the full pipeline, without the floor.
    #[arg(long)]
    pub skip_floor: bool,
    /// The sample message (Senegal consulate's `LaissezPasserDelivre`).
    #[arg(
        long,
        default_value = "mappings/fixtures/sn.consulat.casablanca/in/lpc-issued.xml"
    )]
    pub message: PathBuf,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct RunResult {
    rate: f64,
    p50: Duration,
    p99: Duration,
    peak_rss_kib: u64,
    errors: u64,
    /// CPU time of the gateway per message, in microseconds.
    gateway_cpu_us: f64,
    /// CPU time of the load generator per message, in microseconds.
    generator_cpu_us: f64,
    /// CPU time of the gateway per message, in microseconds, by the part of it that spent it.
    gateway_parts_us: BTreeMap<&'static str, f64>,
}

/// The targets the command checks.
const TARGET_RATIO: f64 = 0.50;
const TARGET_P99_MS: f64 = 25.0;
const TARGET_RSS_MB: f64 = 200.0;

struct Gateway {
    child: Child,
    https: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample registry with every partner on the inbox, so that the measured work is the
/// ingest path and nothing waits on unreachable endpoints.
fn inbox_registry(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("config/registry.toml")
        .context("reading config/registry.toml (run from the repository)")?;
    let re = regex::Regex::new(r#"delivery = \{[^}]*\}"#)?;
    let text = re.replace_all(&text, r#"delivery = { mode = "inbox" }"#);
    let path = dir.join("registry.toml");
    std::fs::write(&path, text.as_bytes())?;
    Ok(path)
}

fn start_gateway(floor: bool) -> anyhow::Result<Gateway> {
    let dir = tempfile::tempdir()?;
    let [https, admin] = passerelle::loopback::free_ports();
    let registry = inbox_registry(dir.path())?;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{https}"
[admin]
listen = "127.0.0.1:{admin}"
[paths]
registry = "{}"
data = "{}"
[limits]
rate_per_second = 1000000
burst = 1000000
"#,
        registry.display(),
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("passerelle.toml");
    std::fs::write(&config_path, config)?;
    let mut serve = Command::new(std::env::current_exe()?);
    serve.args(["serve", "--config"]).arg(&config_path);
    if floor {
        serve.arg("--measuring-floor");
    }
    let child = serve
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the gateway")?;
    let gateway = Gateway {
        child,
        https,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", https)).is_err() {
        if Instant::now() > deadline {
            bail!("the gateway did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(gateway)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sends the ministry's LPC request for the case first, so that the consulate's LPCs arrive
/// in order (as they would in production) rather than each raising a sequence anomaly.
async fn prepare_case(https: u16) -> anyhow::Result<()> {
    let body = std::fs::read("mappings/fixtures/ma.interieur/in/lpc-requested.json")?;
    let response = super::partner_client("ma.interieur")?
        .post(format!("https://localhost:{https}/v1/messages"))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the case could not be prepared: {}", response.status());
    }
    Ok(())
}

/// What [`drive`] measured: messages a second, the latencies, errors, and the CPU time the
/// gateway and the generator used during the measurement.
struct Driven {
    rate: u64,
    latencies: Vec<Duration>,
    errors: u64,
    gateway_cpu: Duration,
    generator_cpu: Duration,
    gateway_parts: BTreeMap<&'static str, Duration>,
}

async fn drive(
    https: u16,
    gateway_pid: u32,
    clients: usize,
    seconds: u64,
    template: Arc<String>,
    round: u16,
) -> anyhow::Result<Driven> {
    let url = format!("https://localhost:{https}/v1/messages");
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = super::partner_client("sn.consulat.casablanca")?;
        let (url, template, measuring, stop, errors) = (
            url.clone(),
            template.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let reference = format!("LOAD-{round}-{c}-{n}");
                let body = template.replace("CGSN-CASA-2026-00417", &reference);
                let started = Instant::now();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/xml")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 202)
                    .unwrap_or(false);
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(started.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let generator_pid = std::process::id();
    let cpu_before = (
        passerelle::cpu::cpu_time(gateway_pid)?,
        passerelle::cpu::cpu_time(generator_pid)?,
        passerelle::cpu::cpu_time_by_part(gateway_pid)?,
    );
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let gateway_cpu = passerelle::cpu::cpu_time(gateway_pid)?.saturating_sub(cpu_before.0);
    let generator_cpu = passerelle::cpu::cpu_time(generator_pid)?.saturating_sub(cpu_before.1);
    let mut gateway_parts = passerelle::cpu::cpu_time_by_part(gateway_pid)?;
    for (part, used) in &mut gateway_parts {
        *used = used.saturating_sub(cpu_before.2.get(part).copied().unwrap_or_default());
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let count = latencies.len() as u64;
    Ok(Driven {
        rate: (count as f64 / elapsed.as_secs_f64()) as u64,
        latencies,
        errors: errors.load(Ordering::Relaxed),
        gateway_cpu,
        generator_cpu,
        gateway_parts,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    floor: bool,
    args: &LoadArgs,
    template: &Arc<String>,
    round: u16,
) -> anyhow::Result<RunResult> {
    let gateway = start_gateway(floor)?;
    let pid = gateway.child.id();
    let https = gateway.https;
    let mut driven = runtime.block_on(async {
        if !floor {
            prepare_case(https).await?;
        }
        drive(
            https,
            pid,
            usize::from(args.clients),
            args.seconds,
            template.clone(),
            round,
        )
        .await
    })?;
    driven.latencies.sort_unstable();
    let messages = driven.latencies.len().max(1) as f64;
    let result = RunResult {
        rate: driven.rate as f64,
        p50: percentile(&driven.latencies, 0.50),
        p99: percentile(&driven.latencies, 0.99),
        peak_rss_kib: peak_rss_kib(pid),
        errors: driven.errors,
        gateway_cpu_us: driven.gateway_cpu.as_secs_f64() * 1e6 / messages,
        generator_cpu_us: driven.generator_cpu.as_secs_f64() * 1e6 / messages,
        gateway_parts_us: driven
            .gateway_parts
            .iter()
            .map(|(part, used)| (*part, used.as_secs_f64() * 1e6 / messages))
            .collect(),
    };
    drop(gateway);
    Ok(result)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The medians of a set of runs (the peak RSS is the highest), printed as one line.
struct Summary {
    rate: f64,
    p99_ms: f64,
    rss_mb: f64,
    gateway_cpu_us: f64,
    generator_cpu_us: f64,
}

fn report(name: &str, runs: &[RunResult]) -> Summary {
    let rate = median(runs.iter().map(|r| r.rate).collect());
    let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect());
    let p99 = median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect());
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    let gateway_cpu = median(runs.iter().map(|r| r.gateway_cpu_us).collect());
    let generator_cpu = median(runs.iter().map(|r| r.generator_cpu_us).collect());
    say!(
        "{name:<14} {rate:>10.0} msg/s   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   peak RSS {rss:>6.1} MB   errors {errors}"
    );
    say!(
        "{:<14} CPU per message: gateway {gateway_cpu:.0} µs, load generator {generator_cpu:.0} µs",
        ""
    );
    let parts: BTreeSet<&str> = runs
        .iter()
        .flat_map(|r| r.gateway_parts_us.keys().copied())
        .collect();
    let by_part: Vec<String> = parts
        .into_iter()
        .map(|part| {
            let used = median(
                runs.iter()
                    .map(|r| r.gateway_parts_us.get(part).copied().unwrap_or(0.0))
                    .collect(),
            );
            format!("{part} {used:.0}")
        })
        .collect();
    say!("{:<14} gateway threads (µs): {}", "", by_part.join(", "));
    Summary {
        rate,
        p99_ms: p99,
        rss_mb: rss,
        gateway_cpu_us: gateway_cpu,
        generator_cpu_us: generator_cpu,
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

impl LoadArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let template = Arc::new(
            std::fs::read_to_string(&self.message)
                .with_context(|| format!("reading {}", self.message.display()))?,
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let mut full = Vec::new();
        let mut floor = Vec::new();
        say!(
            "{} clients, {} s per run, {} rounds, message {}",
            self.clients,
            self.seconds,
            self.rounds,
            self.message.display()
        );
        for round in 0..self.rounds {
            if !self.skip_floor {
                let r = run_once(&runtime, true, &self, &template, round)?;
                say!(
                    "round {round} floor: {:.0} msg/s, p99 {:.2} ms",
                    r.rate,
                    r.p99.as_secs_f64() * 1e3
                );
                floor.push(r);
            }
            let r = run_once(&runtime, false, &self, &template, round)?;
            say!(
                "round {round} full:  {:.0} msg/s, p99 {:.2} ms, peak RSS {:.1} MB",
                r.rate,
                r.p99.as_secs_f64() * 1e3,
                r.peak_rss_kib as f64 / 1024.0
            );
            full.push(r);
        }
        say!("\nmedians over {} rounds:", self.rounds);
        let floor = (!floor.is_empty()).then(|| report("floor", &floor));
        let full = report("full pipeline", &full);
        say!("\ntargets:");
        if let Some(floor) = floor {
            let ratio = full.rate / floor.rate.max(1.0);
            say!(
                "  full pipeline at {:.0} % of the floor or more: {:.1} %, {}",
                TARGET_RATIO * 100.0,
                ratio * 100.0,
                verdict(ratio >= TARGET_RATIO)
            );
            // When the machine's cores are the limit, the target rate leaves this much CPU
            // per message to the gateway once the generator has taken its share.
            let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
            let budget = cores * 1e6 / (TARGET_RATIO * floor.rate).max(1.0) - full.generator_cpu_us;
            say!(
                "    on {cores} cores, that rate leaves about {budget:.0} µs of gateway CPU per \
                 message; the full pipeline uses {:.0} µs",
                full.gateway_cpu_us
            );
        }
        say!(
            "  p99 under {TARGET_P99_MS} ms: {:.2} ms, {}",
            full.p99_ms,
            verdict(full.p99_ms < TARGET_P99_MS)
        );
        say!(
            "  peak RSS under {TARGET_RSS_MB} MB: {:.1} MB, {}",
            full.rss_mb,
            verdict(full.rss_mb < TARGET_RSS_MB)
        );
        Ok(ExitCode::SUCCESS)
    }
}
