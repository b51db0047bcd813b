//! What /proc tells about a running component: its peak memory and the TCP ports it
//! listens on. Read just before a component is stopped (afterwards /proc forgets it), for
//! the teardown report and the hygiene check.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// Peak resident set size ("high water mark", `VmHWM`) of `pid` in KiB, if it is alive.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmHWM:")
}

/// Current resident set size (`VmRSS`) of `pid` in KiB, if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmRSS:")
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// TCP ports `pid` listens on (IPv4 and IPv6), found through its socket file descriptors.
/// Empty when the process is gone or /proc cannot be read.
pub fn listening_ports(pid: u32) -> BTreeSet<u16> {
    listening_sockets(pid)
        .iter()
        .map(SocketAddr::port)
        .collect()
}

/// The addresses `pid` listens on (IPv4 and IPv6), with their ports: for the check that a
/// component binds 127.0.0.1 only. Empty when the process is gone.
pub fn listening_sockets(pid: u32) -> BTreeSet<SocketAddr> {
    sockets(pid, true)
}

/// The remote addresses of `pid`'s TCP connections (every socket not listening): for the
/// check that a component dials nothing outside 127.0.0.0/8.
pub fn tcp_peers(pid: u32) -> BTreeSet<SocketAddr> {
    sockets(pid, false)
}

/// Local addresses of `pid`'s listening sockets, or remote addresses of the others.
fn sockets(pid: u32, listening: bool) -> BTreeSet<SocketAddr> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    let inodes: BTreeSet<u64> = fds
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    if inodes.is_empty() {
        return BTreeSet::new();
    }
    // The process's own view of the table, in case it runs in another network namespace.
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| in_table(&table, &inodes, listening))
        .collect()
}

/// Parses a /proc/net/tcp{,6} table: of the rows whose inode is one of `inodes`, the
/// local addresses of LISTEN (`0A`) rows, or (`listening` false) the remote addresses of
/// the other rows.
fn in_table(table: &str, inodes: &BTreeSet<u64>, listening: bool) -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let (local, remote, state, inode) =
                (cols.get(1)?, cols.get(2)?, cols.get(3)?, cols.get(9)?);
            if (*state == LISTEN) != listening || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            let addr = if listening { local } else { remote };
            let (ip, port) = addr.rsplit_once(':')?;
            Some(SocketAddr::new(
                parse_ip(ip)?,
                u16::from_str_radix(port, 16).ok()?,
            ))
        })
        .collect()
}

/// An address as /proc/net/tcp{,6} writes it: 32-bit words in hex, each in host (little
/// endian) byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn reads_our_own_peak_rss() {
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
        assert_eq!(
            status_field_kib("Name:\tx\nVmHWM:\t  1234 kB\n", "VmHWM:"),
            Some(1234)
        );
    }

    #[test]
    fn finds_our_own_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        assert!(
            listening_sockets(std::process::id())
                .contains(&SocketAddr::from(([127, 0, 0, 1], port)))
        );
        drop(l);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn parses_a_table_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   1: 0100007F:1F91 00000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0 100 0 0 10 0\n";
        let inodes = BTreeSet::from([4242, 4243]);
        assert_eq!(
            in_table(table, &inodes, true),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            in_table(table, &inodes, false),
            vec!["0.0.0.0:0".parse().unwrap()]
        );
        assert_eq!(
            parse_ip("00000000000000000000000001000000"),
            Some("::1".parse().unwrap())
        );
    }
}
