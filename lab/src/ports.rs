//! Loopback ports for processes the lab restarts on the same port
//! (engine-sim, `nats-server` nodes).
//!
//! A port the kernel picks for `bind(0)` comes from its ephemeral range,
//! the range it also takes the source ports of outgoing connections from:
//! while such a process is down, any connection made meanwhile (a host
//! reconnecting, NATS routes and clients coming back) may take its port,
//! and the restart cannot bind it. These ports come from below that range.

use std::net::{SocketAddr, TcpListener};

/// Where the kernel's ephemeral range begins (Linux's default if unread).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// `count` different loopback ports, free now, below the ephemeral range.
pub fn stable_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let high = ephemeral_start();
    let low = 10_000.min(high / 2);
    anyhow::ensure!(
        high > low,
        "no port range below the ephemeral ports ({high})"
    );
    // Tried from a random place, so that tests running at once differ.
    let seed = legsync::model::now_us() ^ u64::from(std::process::id()).rotate_left(32);
    let span = u64::from(high - low);
    let mut held = Vec::new();
    for step in 0..span {
        if held.len() == count {
            break;
        }
        let port = low + ((seed.wrapping_add(step.wrapping_mul(7919))) % span) as u16;
        if let Ok(listener) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
            held.push(listener);
        }
    }
    anyhow::ensure!(
        held.len() == count,
        "fewer than {count} free ports below {high}"
    );
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
