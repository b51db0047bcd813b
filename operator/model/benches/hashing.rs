//! Manifest hashing throughput, ours beside the Python reference `model_signing`, on one
//! generated model directory (default 2.5 GiB: one 1.2 GiB file, several of 100–300 MiB,
//! small JSON files). Prints GiB/s per mode for 1 and all threads and the reference's rate
//! for the same mode, and checks both computed the same subject digest.
//!
//! `cargo bench -p lotabots-model --bench hashing`; `LOTABOTS_STORES` names the reference's
//! virtualenv bin directory (without it only our figures are printed);
//! `LOTABOTS_BENCH_DIR` where to generate (default the system temp dir; deleted after);
//! `LOTABOTS_BENCH_MIB` the total size in MiB.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_model::hashing::{HashOptions, hash_model};
use lotabots_model::manifest::{DEFAULT_SHARD_SIZE, Serialization};
use lotabots_model::source::LocalSource;

const MIB: u64 = 1 << 20;

/// Writes `size` bytes of cheap pseudo-random data (xorshift), 8 MiB at a time.
fn write_file(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// The model: sizes scale with `total_mib` (2560 gives 1228 MiB + 5 files + JSON).
fn generate(dir: &Path, total_mib: u64) -> (u64, usize) {
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let big = total_mib * 48 / 100;
    let mut sizes = vec![("model-00001.safetensors".to_owned(), big * MIB)];
    let rest = total_mib - big;
    for (i, part) in [30u64, 25, 20, 15, 10].iter().enumerate() {
        sizes.push((format!("shards/part-{i}.bin"), rest * part / 100 * MIB));
    }
    let mut total = 0;
    for (i, (name, size)) in sizes.iter().enumerate() {
        write_file(&dir.join(name), *size, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
        total += size;
    }
    for name in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::write(
            dir.join(name),
            br#"{"architectures": ["LlamaForCausalLM"]}"#,
        )
        .unwrap();
    }
    (total, sizes.len() + 3)
}

/// One timed run: wall seconds, CPU seconds (user + system, all threads) and the subject
/// digest. CPU time gives the per-core rate even while other work shares the machine.
struct Run {
    wall: f64,
    cpu: f64,
    digest: String,
}

/// This process's CPU time so far, from /proc/self/stat (utime + stime, in clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn ours(dir: &Path, ser: &Serialization, threads: usize) -> Run {
    let src = LocalSource::new(dir).unwrap();
    let (t, c) = (Instant::now(), cpu_seconds());
    let m = hash_model(
        &src,
        ser,
        &HashOptions {
            threads: Some(threads),
            ..Default::default()
        },
    )
    .unwrap();
    Run {
        wall: t.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c,
        digest: hex::encode(m.root_digest()),
    }
}

/// Times the reference's `hash()` inside Python (interpreter start-up excluded).
fn reference(python: &Path, dir: &Path, config: &str) -> Run {
    let code = format!(
        r#"
import os, time, model_signing
from model_signing._signing import signing
c = model_signing.hashing.Config(){config}
t, u = time.perf_counter(), os.times()
m = c.hash({dir:?})
d, v = time.perf_counter() - t, os.times()
print(d, (v.user - u.user) + (v.system - u.system), signing.Payload(m).statement.pb.subject[0].digest["sha256"])
"#,
        dir = dir.display().to_string()
    );
    let out = Command::new(python).args(["-c", &code]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    Run {
        wall: f[0].parse().unwrap(),
        cpu: f[1].parse().unwrap(),
        digest: f[2].to_owned(),
    }
}

/// The fastest of `runs` runs (by wall time).
fn best(runs: usize, mut f: impl FnMut() -> Run) -> Run {
    (0..runs)
        .map(|_| f())
        .min_by(|a, b| a.wall.total_cmp(&b.wall))
        .unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let total_mib: u64 = std::env::var("LOTABOTS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2560);
    let base = std::env::var_os("LOTABOTS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("lotabots-hash-bench")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().join("model");
    let (bytes, files) = generate(&dir, total_mib);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let python = std::env::var_os("LOTABOTS_STORES").map(|d| PathBuf::from(d).join("python"));
    println!(
        "model: {gib:.2} GiB in {files} files under {}; {cores} cores; load average {}",
        dir.display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // Warm the page cache so that every contender reads from memory.
    let _ = ours(&dir, &Serialization::files(HashAlgorithm::Blake3), cores);

    let modes = [
        (
            "files sha256",
            Serialization::files(HashAlgorithm::Sha256),
            "",
        ),
        (
            "shards sha256 (1 GB)",
            Serialization::shards(HashAlgorithm::Sha256, DEFAULT_SHARD_SIZE),
            ".use_shard_serialization()",
        ),
        (
            "files blake3",
            Serialization::files(HashAlgorithm::Blake3),
            ".use_file_serialization(hashing_algorithm='blake3')",
        ),
    ];
    println!(
        "wall-clock GiB/s (best of 3) and, in brackets, GiB per CPU-second (the per-core rate)"
    );
    println!(
        "{:<22} {:>22} {:>22} {:>22} {:>8}",
        "mode",
        "ours 1 thread",
        format!("ours {cores} threads"),
        "reference",
        "speed-up"
    );
    for (name, ser, config) in &modes {
        let one = best(3, || ours(&dir, ser, 1));
        let all = best(3, || ours(&dir, ser, cores));
        assert_eq!(one.digest, all.digest);
        let reference = python
            .as_deref()
            .map(|py| best(3, || reference(py, &dir, config)));
        let rate = |r: &Run| format!("{:.2} ({:.2} /cpu-s)", gib / r.wall, gib / r.cpu);
        let (ref_rate, ratio) = match &reference {
            Some(r) => {
                assert_eq!(
                    r.digest, all.digest,
                    "{name}: the reference's subject digest differs"
                );
                (rate(r), format!("{:.2}x", r.wall / all.wall))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<22} {:>22} {:>22} {:>22} {:>8}",
            rate(&one),
            rate(&all),
            ref_rate,
            ratio
        );
    }
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
