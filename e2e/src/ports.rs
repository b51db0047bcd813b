//! Free TCP ports on 127.0.0.1, and the checks that a port is (no longer) listening.
//!
//! A port is picked by binding `127.0.0.1:0` and releasing it right away: the component
//! that gets it binds it a moment later. Another process could take it in between; the
//! window is small and the component then fails at once with "address already in use",
//! which the control plane reports with the component's log.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

/// The only address anything in the harness listens on or connects to.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Returns `n` distinct free ports on 127.0.0.1. All are held until every one is chosen,
/// so the same port is never handed out twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((LOOPBACK, 0)).context("binding 127.0.0.1:0"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn is_listening(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(LOOPBACK, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_free() {
        let ports = free_ports(5).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        for p in ports {
            assert!(!is_listening(p));
        }
    }

    #[test]
    fn is_listening_sees_a_listener() {
        let l = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(is_listening(port));
        drop(l);
        assert!(!is_listening(port));
    }
}
