//! Free loopback ports for the servers that tests, benchmarks and `passerelle load` start: the
//! gateway's own listeners, the test brokers and the webhook endpoints that play partners.
//!
//! Such a server is told its port before it binds it (a child process's configuration, a
//! broker's, an endpoint that goes down and comes back on the same port), so the port is
//! chosen free and released first. A port of the kernel's ephemeral range
//! (`ip_local_port_range`) can then be handed to any outgoing connection of the machine before
//! the server binds it (`EADDRINUSE`), and a busy test machine opens many. The ports are
//! therefore drawn at random below that range when there is room, where the kernel never
//! hands out ports on its own; without room there, the kernel picks them.

use std::net::TcpListener;

/// The lowest port drawn from.
const LOWEST_PORT: u16 = 10_000;

/// How many random draws are tried before the kernel is asked instead.
const DRAWS: usize = 1000;

/// `N` distinct ports that were free on 127.0.0.1 when chosen. Each is held until all are
/// chosen, then released.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(N);
    if let Some(below) = ephemeral_floor().filter(|&low| low > LOWEST_PORT + 1024) {
        let span = u32::from(below - LOWEST_PORT);
        for _ in 0..DRAWS {
            if listeners.len() == N {
                break;
            }
            let mut draw = [0u8; 4];
            getrandom::fill(&mut draw).expect("the system's random number generator");
            let offset = u32::from_le_bytes(draw) % span;
            let port = LOWEST_PORT + u16::try_from(offset).unwrap_or(0);
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(listener);
            }
        }
    }
    while listeners.len() < N {
        listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1"));
    }
    std::array::from_fn(|i| listeners[i].local_addr().expect("a local address").port())
}

/// One port that was free on 127.0.0.1 when chosen.
pub fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_floor() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports = free_ports::<8>();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 8, "{ports:?}");
        if let Some(low) = ephemeral_floor().filter(|&low| low > LOWEST_PORT + 1024) {
            assert!(
                ports.iter().all(|&p| (LOWEST_PORT..low).contains(&p)),
                "{ports:?} should be below {low}"
            );
        }
    }

    #[test]
    fn a_single_port_can_be_bound_again() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("the chosen port is free again");
    }
}
