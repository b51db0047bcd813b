//! The `lotabots-agent` binary: output, exit codes and error messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lotabots-agent"))
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("LOTABOTS_BACKEND")
        .output()
        .expect("the agent binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn probe_shows_the_h100_record() {
    let o = agent(&[
        "probe",
        "--backend",
        "simulated:h100-80gb-hbm3",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("backend: simulated (h100-80gb-hbm3)"),
        "says which backend"
    );
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &e["gpus"][0];
    assert_eq!(
        g["uuid"]["value"],
        "GPU-38615fa5-f37e-2156-0ec9-5e05fd617e42"
    );
    assert_eq!(g["serial"]["value"], "1653723047442");
    assert_eq!(g["vbiosVersion"]["value"], "96.00.DA.00.0C");
    assert_eq!(g["eccMode"]["value"]["current"], true);
    assert_eq!(g["mig"]["mode"]["value"]["current"], false);
    let names: Vec<&str> = g["mig"]["gpuInstanceProfiles"]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "1g.10gb",
            "2g.20gb",
            "3g.40gb",
            "4g.40gb",
            "7g.80gb",
            "1g.10gb+me",
            "1g.20gb"
        ]
    );
    assert_eq!(e["schemaVersion"], "lotabots.io/gpu-evidence/v1alpha1");
    assert_eq!(e["nonceOrigin"], "agent");
}

#[test]
fn a_given_nonce_is_bound_into_the_evidence() {
    let nonce = "ab".repeat(32);
    let o = agent(&[
        "probe",
        "--backend",
        "simulated:faulty-node",
        "--nonce",
        &nonce,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["nonce"], nonce.as_str());
    assert_eq!(e["nonceOrigin"], "verifier");
}

#[test]
fn table_format_is_for_people() {
    let o = agent(&[
        "probe",
        "--backend",
        "simulated:a100-80gb-mig",
        "--format",
        "table",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = String::from_utf8(o.stdout).unwrap();
    assert!(t.contains("NVIDIA A100-SXM4-80GB"), "{t}");
    assert!(t.contains("MIG            on"), "{t}");
    assert!(t.contains("GI 2   3g.40gb"), "{t}");
    assert!(t.contains("CC report      n/a (NotSupported)"), "{t}");
}

#[test]
fn bad_nonces_are_usage_errors() {
    for (nonce, says) in [
        ("abc", "64 hex characters"),
        (&"zz".repeat(32)[..], "not hexadecimal"),
    ] {
        let o = agent(&["probe", "--backend", "simulated", "--nonce", nonce]);
        assert_eq!(o.status.code(), Some(2), "{nonce}");
        assert!(stderr(&o).contains(says), "{nonce}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "no evidence on a bad nonce");
    }
}

#[test]
fn unknown_and_malformed_profiles_are_input_errors() {
    let o = agent(&["probe", "--backend", "simulated:b300-sxm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown simulated profile \"b300-sxm\""),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("h100-sxm5-80gb-x8"),
        "lists the built-ins: {}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nhost: {}\ngpus: []\n").unwrap();
    let o = agent(&[
        "probe",
        "--backend",
        &format!("simulated:{}", bad.display()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad.yaml") && stderr(&o).contains("host: missing field"),
        "{}",
        stderr(&o)
    );

    let o = agent(&["probe", "--backend", "simulated:/nonexistent/profile.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot read simulated profile /nonexistent/profile.yaml"),
        "{}",
        stderr(&o)
    );

    let o = agent(&["probe", "--backend", "cuda"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown backend"), "{}", stderr(&o));
}

#[test]
fn missing_or_broken_nvml_fails_clearly() {
    let o = agent(&[
        "probe",
        "--backend",
        "nvml",
        "--nvml-lib",
        "/nonexistent/libnvidia-ml.so.1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("NVML is unavailable") && err.contains("/nonexistent/libnvidia-ml.so.1"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("libnvidia-ml.so.1");
    std::fs::write(&broken, b"not an ELF file").unwrap();
    let o = agent(&[
        "probe",
        "--backend",
        "nvml",
        "--nvml-lib",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot load the NVML library"),
        "{}",
        stderr(&o)
    );

    // `auto` falls back to the simulator only when the library is absent, and says so.
    let o = agent(&["probe", "--nvml-lib", "/nonexistent/libnvidia-ml.so.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("simulated (h100-80gb-hbm3) (auto: the NVML library could not be loaded"),
        "{}",
        stderr(&o)
    );
    // A library that is there but broken is a broken GPU host, not a reason to simulate.
    let o = agent(&["probe", "--nvml-lib", broken.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// A plain HTTP/1.1 GET on loopback.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let status = body[9..12].parse().unwrap();
    (status, body)
}

#[test]
fn serve_exposes_metrics_on_loopback() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lotabots-agent"))
        .args([
            "serve",
            "--backend",
            "simulated:h100-sxm5-80gb-x8",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
        ])
        .env("NODE_NAME", "gpu-node-7")
        .env("LOTABOTS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let child = Kill(child);
    // Read the log on a thread so that a missing line fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("addr=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the agent logs its address within 20 s");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&addr, "/readyz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(get(&addr, "/healthz").0, 200);
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("text/plain; version=0.0.4"), "{body}");
    assert_eq!(
        body.matches("lotabots_gpu_temperature_celsius{").count(),
        8,
        "{body}"
    );
    assert!(body.contains(r#"Hostname="gpu-node-7""#), "{body}");
    assert!(
        body.contains("lotabots_agent_probes_total{result=\"ok\"}"),
        "{body}"
    );
    drop(child);
}
