//! Choosing listen ports for local clusters (drills, the demo, tests).
//!
//! A port found by binding port 0 and closing the socket comes from the
//! kernel's ephemeral range, which is also where every *outgoing*
//! connection gets its local port. Between choosing a port and the child
//! process binding it, a member's connection to a peer can take it, and the
//! child fails with "Address already in use" — about one start in twenty on
//! a busy 2-core machine. So ports are chosen below the ephemeral range,
//! where the kernel never assigns one on its own; each process starts at a
//! block chosen by its pid so concurrent drills and test binaries rarely
//! probe the same ports, and every port is checked free by binding it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
pub const LOCAL_PORT_LOW: u16 = 10_000;
/// Ports per process block: a process starts probing at its own block.
pub const LOCAL_PORT_BLOCK: u16 = 200;

/// The first port of the kernel's ephemeral range (32768 unless changed
/// through `net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port on 127.0.0.1 that is free now and outside the ephemeral range.
/// Successive calls in one process never return the same port until the
/// whole range has been walked.
pub fn free_local_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOCAL_PORT_LOW + LOCAL_PORT_BLOCK);
    let span = u32::from(high - LOCAL_PORT_LOW);
    let blocks = span / u32::from(LOCAL_PORT_BLOCK);
    let start = (std::process::id() % blocks) * u32::from(LOCAL_PORT_BLOCK);
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = LOCAL_PORT_LOW + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port from {LOCAL_PORT_LOW} to {high} on 127.0.0.1 is in use"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let p = free_local_port().unwrap();
            assert!(
                (LOCAL_PORT_LOW..low).contains(&p),
                "port {p} outside {LOCAL_PORT_LOW}..{low}"
            );
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }
}
