//! The binary as a person or the launcher runs it, without an operator: printed results,
//! the simulated mode and its faults, the refusal without a GPU, and usage errors (exit 2).

use assert_cmd::Command;
use lotabots_crds::workload::{WorkloadResult, env};
use predicates::prelude::*;

const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The binary with a clean environment (no LOTABOTS_* leaking in from the caller).
fn selftest() -> Command {
    let mut cmd = Command::cargo_bin("lotabots-gpu-selftest").unwrap();
    cmd.env_clear().env("RUST_LOG", "warn");
    cmd
}

fn small() -> [&'static str; 6] {
    [
        "--matmul-n",
        "32",
        "--memory-share",
        "0.02",
        "--bandwidth-mib",
        "4",
    ]
}

#[test]
fn simulated_run_prints_a_passing_bound_result() {
    let out = selftest()
        .args(["--simulated", "--no-post", "--nonce", NONCE, "--node", "n1"])
        .args(small())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.passed);
    assert_eq!(r.nonce, NONCE);
    assert_eq!(r.node, "n1");
    let st = r.self_test.unwrap();
    assert!(st.simulated);
    let d = &st.devices[0];
    assert_eq!(d.matmul.n, 32);
    assert!(d.matmul.passed && d.memory.passed);
    assert!(d.bandwidth.gbps > 0.0);
}

#[test]
fn output_file_gets_the_json_and_table_goes_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("result.json");
    selftest()
        .args([
            "--simulated",
            "--no-post",
            "--format",
            "table",
            "--simulated-devices",
            "2",
        ])
        .args(small())
        .arg("--output")
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "lotabots GPU self-test: PASSED",
        ))
        .stdout(predicate::str::contains("SIMULATED on the CPU"))
        .stdout(predicate::str::contains("D2D GB/s"));
    let r: WorkloadResult = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(r.self_test.unwrap().devices.len(), 2);
    // No nonce given by hand: one was drawn.
    assert_eq!(r.nonce.len(), 64);
}

#[test]
fn injected_faults_fail_with_exit_code_1() {
    for (fault, check) in [("memory", "memory FAIL"), ("matmul", "matmul FAIL")] {
        selftest()
            .args([
                "--simulated",
                "--no-post",
                "--format",
                "table",
                "--simulate-fault",
                fault,
            ])
            .args(small())
            .assert()
            .code(1)
            .stdout(predicate::str::contains("FAILED"))
            .stdout(predicate::str::contains(check));
    }
}

#[test]
fn without_a_gpu_it_refuses_with_exit_code_2() {
    if lotabots_gpu_selftest::gpu::driver_present() {
        return; // a driver here: the refusal cannot be shown
    }
    let out = selftest()
        .args(["--no-post", "--nonce", NONCE])
        .args(small())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "libcuda.so.1 not found: this pod has no NVIDIA driver; was the nvidia runtime \
             class / device plugin used?"
        ),
        "{stderr}"
    );
    let r: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!r.passed);
    assert!(r.self_test.is_none());
    assert!(r.error.unwrap().starts_with("libcuda.so.1 not found"));
}

#[test]
fn usage_errors_exit_2_naming_what_is_wrong() {
    // (flags, environment, what stderr must say)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["--no-post", "--nonce", "abcd"],
            &[],
            "LOTABOTS_NONCE: nonce must be 64 hex",
        ),
        (
            &["--no-post", "--memory-share", "1.5"],
            &[],
            "memory share 1.5 is outside",
        ),
        (&[], &[], "LOTABOTS_NONCE is not set"),
        (&[], &[(env::NONCE, NONCE)], "is not set"),
        (
            &["--no-post"],
            &[(env::PARAMS, r#"{"memoryShare":"most"}"#)],
            "memoryShare \"most\" is not a number",
        ),
    ];
    for (args, envs, msg) in cases {
        let mut cmd = selftest();
        cmd.arg("--simulated").args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.assert()
            .code(2)
            .stderr(predicate::str::contains(msg))
            .stdout(predicate::str::is_empty());
    }
}

#[test]
fn a_fault_without_the_simulated_mode_is_a_usage_error() {
    selftest()
        .args(["--no-post", "--simulate-fault", "memory"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--simulated"));
}

#[test]
fn an_unreadable_ca_bundle_stops_before_the_checks() {
    selftest()
        .args(["--simulated"])
        .env(env::NONCE, NONCE)
        .env(env::NODE, "n1")
        .env(env::REQUEST_ID, "0123456789abcdef")
        .env(env::OPERATOR_URL, "https://127.0.0.1:1")
        .env(env::TOKEN_FILE, "/nonexistent/token")
        .env(env::CA_FILE, "/nonexistent/ca.crt")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "LOTABOTS_CA_FILE /nonexistent/ca.crt",
        ))
        .stdout(predicate::str::is_empty());
}
