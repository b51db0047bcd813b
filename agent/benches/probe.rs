//! Agent figures: warm evidence collection, the whole `probe` process, and memory while
//! serving metrics. Prints figures; asserts nothing about time.
//!
//! `cargo bench -p lotabots-agent --bench probe` measures the simulated profiles. On a GPU
//! host, `LOTABOTS_BENCH_BACKEND=nvml` measures NVML instead, and `nvidia-smi -q` is timed
//! beside the probe process when it is on the PATH.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lotabots_agent::backend::{BackendChoice, ProbeRequest, collect, select};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {:>9.1?}  p99 {:>9.1?}  min {:>9.1?}  (n={})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[0],
        samples.len()
    )
}

fn bench_collect(choice: &BackendChoice, iterations: usize) {
    let selected = select(choice, None, None).expect("backend starts");
    let backend = selected.backend.as_ref();
    let req = ProbeRequest::local("bench");
    let gpus = collect(backend, &req).unwrap().gpus.len();
    for _ in 0..iterations / 10 {
        collect(backend, &req).unwrap(); // warm up
    }
    let mut per_node = Vec::with_capacity(iterations);
    let mut digest = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let e = collect(backend, &req).unwrap();
        per_node.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(e.digest().unwrap());
        digest.push(t.elapsed());
    }
    let per_gpu: Vec<Duration> = per_node.iter().map(|d| *d / gpus as u32).collect();
    println!("{}  ({gpus} GPU)", selected.note);
    println!("  warm collect, whole node : {}", summary(per_node));
    println!("  warm collect, per GPU    : {}", summary(per_gpu));
    println!("  JCS digest of evidence   : {}", summary(digest));
}

fn time_process(program: &str, args: &[&str], runs: usize) -> Option<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        out.push(t.elapsed());
    }
    Some(out)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn bench_serve_memory(backend: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lotabots-agent"))
        .args([
            "serve",
            "--backend",
            backend,
            "--listen",
            &addr,
            "--interval",
            "1s",
        ])
        .env("LOTABOTS_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() || !get(&addr, "/readyz").contains("200 OK") {
        assert!(Instant::now() < deadline, "agent not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let scrapes = 500;
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        bytes = get(&addr, "/metrics").len();
    }
    let per_scrape = t.elapsed() / scrapes;
    // Let a few probe intervals pass so that the refresher has run too.
    std::thread::sleep(Duration::from_millis(2500));
    let (rss, hwm) = (
        status_kib(child.id(), "VmRSS:"),
        status_kib(child.id(), "VmHWM:"),
    );
    let _ = child.kill();
    let _ = child.wait();
    println!("serve --backend {backend}");
    println!(
        "  /metrics: {per_scrape:.1?} per scrape ({bytes} bytes, {scrapes} sequential scrapes)"
    );
    println!(
        "  RSS {:.1} MiB, peak RSS {:.1} MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}

fn main() {
    let backend = std::env::var("LOTABOTS_BENCH_BACKEND").ok();
    let choices: Vec<String> = match &backend {
        Some(b) => vec![b.clone()],
        None => vec![
            "simulated:h100-80gb-hbm3".into(),
            "simulated:h100-sxm5-80gb-x8".into(),
        ],
    };
    for c in &choices {
        let choice: BackendChoice = c.parse().unwrap();
        let iterations = if c == "nvml" { 200 } else { 20_000 };
        bench_collect(&choice, iterations);
    }
    let exe = env!("CARGO_BIN_EXE_lotabots-agent");
    let probe_backend = choices[0].as_str();
    if let Some(p) = time_process(exe, &["probe", "--backend", probe_backend], 20) {
        println!(
            "probe process (--backend {probe_backend}), start to exit: {}",
            summary(p)
        );
    }
    if let Some(s) = time_process("nvidia-smi", &["-q"], 5) {
        println!("nvidia-smi -q, start to exit: {}", summary(s));
    }
    for c in &choices {
        bench_serve_memory(c);
    }
}
