//! What /proc tells about a running component: its peak memory and the TCP ports it
//! listens on. Read just before a component is stopped (afterwards /proc forgets it), for
//! the teardown report and the hygiene check.

use std::{collections::BTreeSet, fs};

/// Peak resident set size ("high water mark", `VmHWM`) of `pid` in KiB, if it is alive.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmHWM:")
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
        .flat_map(|table| listening_in_table(&table, &inodes))
        .collect()
}

/// Parses a /proc/net/tcp{,6} table: ports of LISTEN (`0A`) rows whose inode is one of
/// `inodes`.
fn listening_in_table(table: &str, inodes: &BTreeSet<u64>) -> Vec<u16> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state != LISTEN || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
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
        drop(l);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn parses_a_table_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   1: 0100007F:1F91 00000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0 100 0 0 10 0\n";
        let inodes = BTreeSet::from([4242, 4243]);
        assert_eq!(listening_in_table(table, &inodes), vec![8080]);
    }
}
