//! The [`WorkloadResult`] a run produces, and the exit code that goes with it.

use jiff::Timestamp;
use lotabots_crds::workload::{
    RESULT_SCHEMA_VERSION, SelfTestReport, WorkloadKind, WorkloadResult,
};

use crate::RunError;
use crate::config::Identity;

/// Every check passed.
pub const EXIT_PASS: u8 = 0;
/// A check failed, or a check could not run on a GPU that was found.
pub const EXIT_FAIL: u8 = 1;
/// Bad usage or configuration, or no GPU to test.
pub const EXIT_USAGE_OR_NO_GPU: u8 = 2;
/// The result was produced but the operator could not be reached or refused it.
pub const EXIT_NOT_DELIVERED: u8 = 3;

/// Whether a report passes: at least one device, each with a matching product and clean
/// memory. Bandwidth is a measurement; the operator's policy holds it to a minimum.
pub fn passed(report: &SelfTestReport) -> bool {
    !report.devices.is_empty()
        && report
            .devices
            .iter()
            .all(|d| d.matmul.passed && d.memory.passed)
}

/// The result of a run, bound to the request, node and nonce of `identity`.
pub fn build(
    identity: &Identity,
    started_at: Timestamp,
    finished_at: Timestamp,
    outcome: Result<SelfTestReport, RunError>,
) -> WorkloadResult {
    let (passed, error, self_test) = match outcome {
        Ok(report) => (passed(&report), None, Some(report)),
        Err(e) => (false, Some(e.to_string()), None),
    };
    WorkloadResult {
        schema_version: RESULT_SCHEMA_VERSION.to_owned(),
        request_id: identity.request_id.clone(),
        kind: WorkloadKind::GpuSelfTest,
        nonce: identity.nonce_hex.clone(),
        node: identity.node.clone(),
        started_at,
        finished_at,
        passed,
        error,
        self_test,
        probes: None,
    }
}

/// The exit code for a result: [`EXIT_PASS`], [`EXIT_FAIL`], or [`EXIT_USAGE_OR_NO_GPU`]
/// when `no_gpu` (the run was refused for want of a GPU).
pub fn exit_code(result: &WorkloadResult, no_gpu: bool) -> u8 {
    if no_gpu {
        EXIT_USAGE_OR_NO_GPU
    } else if result.passed {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use crate::simulated::{self, Fault};

    fn identity() -> Identity {
        Identity {
            request_id: "00aa11bb22cc".into(),
            node: "gpu-node-1".into(),
            nonce_hex: "ab".repeat(32),
        }
    }

    fn settings() -> Settings {
        Settings {
            matmul_n: 32,
            matmul_runs: 1,
            memory_share: 0.05,
            bandwidth_bytes: 1 << 20,
            bandwidth_runs: 1,
            nonce: [0xab; 32],
        }
    }

    #[test]
    fn a_passing_report_is_bound_to_its_identity() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:05Z".parse().unwrap();
        let report = simulated::run(&settings(), "gpu-node-1", 1, None);
        let r = build(&identity(), t0, t1, Ok(report));
        assert!(r.passed);
        assert_eq!(exit_code(&r, false), EXIT_PASS);
        assert_eq!(r.schema_version, RESULT_SCHEMA_VERSION);
        assert_eq!(r.kind, WorkloadKind::GpuSelfTest);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nonce"], "ab".repeat(32));
        assert_eq!(json["node"], "gpu-node-1");
        assert_eq!(json["requestId"], "00aa11bb22cc");
        assert_eq!(json["kind"], "gpuSelfTest");
        assert_eq!(json["startedAt"], "2026-01-01T00:00:00Z");
        assert_eq!(json["selfTest"]["simulated"], true);
        assert!(json.get("error").is_none());
        assert!(json.get("probes").is_none());
        // What the operator parses back is what was built.
        let back: WorkloadResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn any_failing_device_fails_the_result() {
        let t = Timestamp::now();
        for fault in [Fault::Memory, Fault::Matmul] {
            let report = simulated::run(&settings(), "n", 1, Some(fault));
            let r = build(&identity(), t, t, Ok(report));
            assert!(!r.passed, "{fault:?}");
            assert_eq!(exit_code(&r, false), EXIT_FAIL);
        }
        let empty = SelfTestReport {
            simulated: true,
            driver_version: None,
            devices: vec![],
        };
        assert!(!passed(&empty));
    }

    #[test]
    fn a_refusal_carries_its_reason() {
        let t = Timestamp::now();
        let r = build(
            &identity(),
            t,
            t,
            Err(RunError::NoGpu("libcuda.so.1 not found: …".into())),
        );
        assert!(!r.passed);
        assert_eq!(r.error.as_deref(), Some("libcuda.so.1 not found: …"));
        assert!(r.self_test.is_none());
        assert_eq!(exit_code(&r, true), EXIT_USAGE_OR_NO_GPU);
    }
}
