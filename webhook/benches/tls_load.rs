//! End-to-end load over TLS on loopback: the real accept loop, rustls, hyper and the
//! admission router in this process, and an open-loop load generator in the same process
//! sending typical-pod AdmissionReviews over keep-alive TLS 1.3 connections at a fixed
//! rate. Two latencies are printed: from the actual send (the server's response time),
//! and from the scheduled send time (which also counts any wait for the previous response
//! on the connection and the generator's own wake-up jitter, so a server stall is not
//! hidden). The process RSS is read from /proc.
//!
//! Run: `cargo bench -p lotabots-webhook --bench tls_load` (optionally
//! `LOTABOTS_LOAD_RPS=1000 LOTABOTS_LOAD_SECS=10 LOTABOTS_LOAD_CONNS=8`). RSS includes the
//! generator, so it overstates the server alone.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lotabots_webhook::server::{PODS_PATH, admission_router, serve_tls};
use lotabots_webhook::tls::{TlsStore, server_config};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpListener;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the body.
fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(head));
            }
            let total = end + 4 + len;
            while buf.len() < total {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok(body);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() {
    let rps = env("LOTABOTS_LOAD_RPS", 1000);
    let secs = env("LOTABOTS_LOAD_SECS", 10);
    let conns = env("LOTABOTS_LOAD_CONNS", 8).max(1);
    let threads = env("LOTABOTS_LOAD_THREADS", 2) as usize;
    // The server: the real accept loop on its own runtime with `threads` workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = server_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let state =
        common::state(lotabots_webhook::policy::Policy::from_yaml(common::TEST_POLICY).unwrap());
    let server = rt.spawn(serve_tls(
        listener,
        Arc::new(TlsStore::new(config)),
        admission_router(state),
    ));

    // The generator: one blocking thread per keep-alive connection, paced with the OS
    // sleep (tens of microseconds of jitter, where tokio's timer rounds to a millisecond).
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let body = common::pod_review("load", common::typical_spec()).to_string();
    let request = Arc::new(
        format!(
            "POST {PODS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let rss_before = rss_kib("VmRSS:");
    let per_conn = rps as f64 / conns as f64;
    let period = Duration::from_secs_f64(1.0 / per_conn);
    let n_per_conn = (per_conn * secs as f64) as usize;
    let start = Instant::now() + Duration::from_millis(300);
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            let client = client.clone();
            let request = request.clone();
            std::thread::spawn(move || {
                let tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.set_nodelay(true).unwrap();
                let conn = rustls::ClientConnection::new(
                    client,
                    ServerName::try_from("localhost").unwrap(),
                )
                .unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut lat = Vec::with_capacity(n_per_conn);
                // Stagger connections across one period so sends are spread evenly.
                let offset = period.mul_f64(c as f64 / conns as f64);
                for i in 0..n_per_conn {
                    let due = start + offset + period.mul_f64(i as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    tls.write_all(&request).unwrap();
                    let resp = read_response(&mut tls, &mut buf).unwrap();
                    assert!(resp.windows(14).any(|w| w == b"\"allowed\":true"));
                    lat.push((sent.elapsed(), due.elapsed()));
                }
                lat
            })
        })
        .collect();
    let mut both: Vec<(Duration, Duration)> = Vec::new();
    for w in workers {
        both.extend(w.join().unwrap());
    }
    let elapsed = start.elapsed();
    server.abort();
    let mut lat: Vec<Duration> = both.iter().map(|x| x.0).collect();
    let mut sched: Vec<Duration> = both.iter().map(|x| x.1).collect();
    lat.sort();
    sched.sort();
    let at = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!(
        "TLS keep-alive, {conns} connections, target {rps} req/s for {secs} s, server on {threads} runtime threads"
    );
    println!(
        "requests {}  achieved {:.0} req/s",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency from send:           p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        at(&lat, 0.5),
        at(&lat, 0.9),
        at(&lat, 0.99),
        lat[lat.len() - 1]
    );
    println!(
        "latency from scheduled time: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        at(&sched, 0.5),
        at(&sched, 0.9),
        at(&sched, 0.99),
        sched[sched.len() - 1]
    );
    println!(
        "process RSS: before load {} KiB, after {} KiB, peak {} KiB (includes the generator)",
        rss_before,
        rss_kib("VmRSS:"),
        rss_kib("VmHWM:")
    );
}
