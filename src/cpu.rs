//! CPU time of a process, and of its threads by part, read from `/proc`: the load generator
//! and the benchmarks measure what one message costs in CPU, beside what it costs in wall time.

use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;

/// The CPU time a process has used so far (user and system, every thread), from
/// `/proc/<pid>/stat`. Fails when the process is gone or the file cannot be read.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (has the process stopped?)"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no CPU times in {path}"))?;
    Ok(ticks_to_time(ticks))
}

/// Clock ticks as time.
fn ticks_to_time(ticks: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The CPU time each of a process's threads has used so far, added up by the part of the
/// program it belongs to (see [`thread_part`]), from `/proc/<pid>/task/*/stat`. A thread
/// that ends between the listing and the reading is left out.
pub fn cpu_time_by_part(pid: u32) -> anyhow::Result<BTreeMap<&'static str, Duration>> {
    let dir = format!("/proc/{pid}/task");
    let mut parts = BTreeMap::new();
    for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = task.with_context(|| format!("listing {dir}"))?.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(name), Some(ticks)) = (thread_name(&stat), cpu_ticks(&stat)) else {
            continue;
        };
        *parts.entry(thread_part(name)).or_default() += ticks_to_time(ticks);
    }
    Ok(parts)
}

/// The part of the gateway a thread belongs to, from its name.
pub fn thread_part(name: &str) -> &'static str {
    if name.starts_with("actix-rt") {
        "HTTP workers"
    } else if name.starts_with("store-") {
        "store writer"
    } else if name.starts_with("audit-") {
        "audit log"
    } else {
        "other"
    }
}

/// The thread name of a `/proc/<pid>/stat` line (field 2, without its parentheses).
fn thread_name(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// The user and system clock ticks of a `/proc/<pid>/stat` line (its fields 14 and 15).
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it,
    // where utime and stime are the 12th and 13th fields.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (passerelle serve) S 1 4242 4242 0 -1 4194560 2310 0 0 0 \
                    731 96 0 0 20 0 9 0 123456 1000000 5000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(731 + 96));
        assert_eq!(cpu_ticks("4242 (short"), None);
        assert_eq!(thread_name(stat), Some("passerelle serve"));
    }

    #[test]
    fn threads_are_grouped_by_the_part_they_belong_to() {
        assert_eq!(thread_part("actix-rt|system"), "HTTP workers");
        assert_eq!(thread_part("store-writer"), "store writer");
        assert_eq!(thread_part("audit-sync-0"), "audit log");
        assert_eq!(thread_part("passerelle"), "other");
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let parts = cpu_time_by_part(std::process::id()).unwrap();
        assert!(parts.values().any(|t| *t > Duration::ZERO), "{parts:?}");
    }

    #[test]
    fn this_process_has_used_cpu_time() {
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(std::process::id()).unwrap() > Duration::ZERO);
        assert!(cpu_time(u32::MAX).is_err(), "no such process");
    }
}
