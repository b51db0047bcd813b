//! The fold of self-test results into node verdicts and `WorkloadChecked`.

use jiff::ToSpan;
use lotabots_crds::conditions::{self, reason};
use lotabots_crds::workload::{
    BandwidthCheck, DeviceSelfTest, MatmulCheck, MemoryCheck, RESULT_SCHEMA_VERSION,
    SelfTestReport, WorkloadKind,
};

use super::*;
use crate::status::build_status_with_workload;
use crate::workload_results::AttestationRef;

const NONCE: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
const OLD_NONCE: &str = "0b00000000000000000000000000000000000000000000000000000000000000";

fn check(min_bandwidth_gbps: Option<f64>, required: bool) -> WorkloadCheck {
    WorkloadCheck {
        image: "ghcr.io/lotabots/gpu-selftest@sha256:00".into(),
        timeout: "5m".into(),
        min_bandwidth_gbps,
        required,
    }
}

fn attested(node: &str) -> NodeResult {
    NodeResult {
        node: node.into(),
        verdict: Verdict::Attested,
        reasons: vec![],
        digest: Some("sha256:00".into()),
        pending: false,
    }
}

fn evidence(node: &str, received_at: Timestamp) -> AcceptedEvidence {
    crate::test_evidence::accepted(node, NONCE, received_at, 0, &[], "sha256:00")
}

fn device(ordinal: u32, gbps: f64) -> DeviceSelfTest {
    DeviceSelfTest {
        ordinal,
        uuid: format!("GPU-{ordinal}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        matmul: MatmulCheck {
            n: 4096,
            max_abs_error: 1e-4,
            tolerance: 1e-2,
            gflops: 45_000.0,
            passed: true,
        },
        memory: MemoryCheck {
            bytes_tested: 1 << 30,
            share: 0.5,
            errors: 0,
            passed: true,
        },
        bandwidth: BandwidthCheck {
            bytes: 1 << 28,
            gbps,
        },
    }
}

fn accepted(node: &str, nonce: &str, devices: Vec<DeviceSelfTest>, passed: bool) -> AcceptedResult {
    AcceptedResult {
        node: node.into(),
        attestation: AttestationRef {
            name: "fleet".into(),
            uid: "att-uid".into(),
        },
        pod: "lotabots-workloads/st".into(),
        result: WorkloadResult {
            schema_version: RESULT_SCHEMA_VERSION.into(),
            request_id: "aa01".into(),
            kind: WorkloadKind::GpuSelfTest,
            nonce: nonce.into(),
            node: node.into(),
            started_at: Timestamp::now(),
            finished_at: Timestamp::now(),
            passed,
            error: None,
            self_test: Some(SelfTestReport {
                simulated: false,
                driver_version: None,
                devices,
            }),
            probes: None,
        },
        received_at: Timestamp::now(),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn a_passing_self_test_keeps_the_node_attested_and_says_so() {
    let c = check(Some(1000.0), true);
    let ev = evidence("n", now());
    let r = accepted("n", NONCE, vec![device(0, 2500.0), device(1, 2400.0)], true);
    let outcome = judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&r), now());
    assert!(
        matches!(&outcome, Outcome::Passed(d) if d.contains("2 devices") && d.contains("2400.0 GB/s")),
        "{outcome:?}"
    );
    let folded = fold(&c, attested("n"), &outcome);
    assert_eq!(folded.verdict, Verdict::Attested);
    assert!(folded.reasons[0].starts_with("GPU self-test passed"));
    assert_eq!(
        condition(&[("n".into(), outcome)]).0,
        conditions::status::TRUE
    );
}

#[test]
fn a_failed_check_fails_the_node_with_the_device_named() {
    let c = check(None, true);
    let ev = evidence("n", now());
    let mut bad = device(1, 2400.0);
    bad.matmul.max_abs_error = 3.5;
    bad.matmul.passed = false;
    let mut memory = device(2, 2400.0);
    memory.memory.errors = 17;
    memory.memory.passed = false;
    let r = accepted("n", NONCE, vec![device(0, 2500.0), bad, memory], false);
    let outcome = judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&r), now());
    let folded = fold(&c, attested("n"), &outcome);
    assert_eq!(folded.verdict, Verdict::Failed);
    let why = &folded.reasons[0];
    assert!(
        why.contains("device 1 (GPU-1): matrix multiply differs from the CPU reference by 3.5"),
        "{why}"
    );
    assert!(why.contains("device 2 (GPU-2): 17 words"), "{why}");
    let (status, why, message) = condition(&[("n".into(), outcome)]);
    assert_eq!(
        (status, why),
        (conditions::status::FALSE, reason::WORKLOAD_FAILED)
    );
    assert!(message.contains("failed on 1 of 1 nodes"), "{message}");
}

#[test]
fn the_operator_does_not_take_passed_at_its_word() {
    // The pod says it passed, but a device's matmul is off and another's bandwidth is NaN.
    let c = check(Some(100.0), true);
    let mut off = device(0, 2500.0);
    off.matmul.max_abs_error = f64::NAN;
    let r = accepted("n", NONCE, vec![off, device(1, f64::NAN)], true);
    let outcome = evaluate(&r.result, c.min_bandwidth_gbps);
    let Outcome::Failed(d) = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        d.contains("device 0 (GPU-0): matrix multiply")
            && d.contains("device 1 (GPU-1): device-to-device bandwidth NaN"),
        "{d}"
    );
    // No device at all is no evidence of computing.
    let empty = accepted("n", NONCE, vec![], true);
    assert!(matches!(evaluate(&empty.result, None), Outcome::Failed(d) if d.contains("no device")));
    // A failure the pod could not attribute still fails.
    let vague = accepted("n", NONCE, vec![device(0, 2500.0)], false);
    assert!(
        matches!(evaluate(&vague.result, None), Outcome::Failed(d) if d.contains("without naming a check"))
    );
    let mut error = accepted("n", NONCE, vec![], false);
    error.result.error = Some("no CUDA driver (libcuda.so.1 not found)".into());
    assert!(
        matches!(evaluate(&error.result, None), Outcome::Failed(d) if d == "could not run: no CUDA driver (libcuda.so.1 not found)")
    );
}

#[test]
fn bandwidth_below_the_policy_minimum_fails() {
    let c = check(Some(2000.0), true);
    let ev = evidence("n", now());
    let r = accepted("n", NONCE, vec![device(0, 2500.0), device(1, 1200.0)], true);
    let outcome = judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&r), now());
    let folded = fold(&c, attested("n"), &outcome);
    assert_eq!(folded.verdict, Verdict::Failed);
    assert!(
        folded.reasons[0].contains("device 1 (GPU-1): device-to-device bandwidth 1200.0 GB/s is below the policy's minimum 2000 GB/s"),
        "{:?}",
        folded.reasons
    );
    // Without a minimum, the same result passes.
    assert!(matches!(
        judge(
            &check(None, true),
            "att-uid",
            &attested("n"),
            Some(&ev),
            Some(&r),
            now()
        ),
        Outcome::Passed(_)
    ));
}

#[test]
fn no_result_is_pending_until_the_timeout_then_a_failure() {
    let c = check(None, true);
    let accepted_at = now() - 2.minutes();
    let ev = evidence("n", accepted_at);
    let pending = judge(&c, "att-uid", &attested("n"), Some(&ev), None, now());
    assert!(matches!(pending, Outcome::Pending { .. }), "{pending:?}");
    let folded = fold(&c, attested("n"), &pending);
    assert_eq!((folded.verdict, folded.pending), (Verdict::Unknown, true));
    let (status, why, _) = condition(&[("n".into(), pending.clone())]);
    assert_eq!(
        (status, why),
        (conditions::status::UNKNOWN, reason::WORKLOAD_PENDING)
    );
    let wait = next_deadline(&[("n".into(), pending)], now()).unwrap();
    assert!(
        wait > Duration::from_secs(170) && wait <= Duration::from_secs(182),
        "{wait:?}"
    );

    let late = now() + 4.minutes();
    let timed_out = judge(&c, "att-uid", &attested("n"), Some(&ev), None, late);
    let Outcome::TimedOut(d) = &timed_out else {
        panic!("{timed_out:?}");
    };
    assert!(d.contains("no result within 5m"), "{d}");
    let folded = fold(&c, attested("n"), &timed_out);
    assert_eq!(folded.verdict, Verdict::Failed);
    assert!(folded.reasons[0].starts_with("GPU self-test timed out: "));
    let (status, why, message) = condition(&[("n".into(), timed_out)]);
    assert_eq!(
        (status, why),
        (conditions::status::FALSE, reason::WORKLOAD_FAILED)
    );
    assert!(message.contains("n (timed out)"), "{message}");
}

#[test]
fn the_previous_round_stands_until_this_rounds_result_is_due() {
    let c = check(None, true);
    let ev = evidence("n", now() - 1.minutes());
    let old = accepted("n", OLD_NONCE, vec![device(0, 2500.0)], true);
    let outcome = judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&old), now());
    assert!(
        matches!(&outcome, Outcome::Passed(d) if d.contains("previous attestation round")),
        "{outcome:?}"
    );
    // Past the deadline an old round's result no longer counts.
    let late = now() + 10.minutes();
    assert!(matches!(
        judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&old), late),
        Outcome::TimedOut(_)
    ));
    // A result of a GpuAttestation deleted and created again under the same name does
    // not count either.
    assert!(matches!(
        judge(&c, "new-uid", &attested("n"), Some(&ev), Some(&old), now()),
        Outcome::Pending { .. }
    ));
}

#[test]
fn a_self_test_that_is_not_required_is_reported_but_does_not_fail_the_node() {
    let c = check(Some(2000.0), false);
    let ev = evidence("n", now() - 10.minutes());
    let slow = accepted("n", NONCE, vec![device(0, 900.0)], true);
    let failed = judge(&c, "att-uid", &attested("n"), Some(&ev), Some(&slow), now());
    let folded = fold(&c, attested("n"), &failed);
    assert_eq!(folded.verdict, Verdict::Attested);
    assert!(
        folded.reasons[0].starts_with("GPU self-test failed (not required by the policy): "),
        "{:?}",
        folded.reasons
    );
    let timed_out = judge(&c, "att-uid", &attested("n"), Some(&ev), None, now());
    assert_eq!(
        fold(&c, attested("n"), &timed_out).verdict,
        Verdict::Attested
    );
    let pending = judge(
        &c,
        "att-uid",
        &attested("n"),
        Some(&evidence("n", now())),
        None,
        now(),
    );
    assert_eq!(
        fold(&c, attested("n"), &pending).verdict,
        Verdict::Attested,
        "an optional self-test does not hold the node back"
    );
    // The condition still tells.
    let (status, why, _) = condition(&[("n".into(), failed)]);
    assert_eq!(
        (status, why),
        (conditions::status::FALSE, reason::WORKLOAD_FAILED)
    );
    // …and Ready does not.
    let status = build_status_with_workload(
        Some(1),
        None,
        vec![folded],
        Some(condition(&[("n".into(), timed_out)])),
        now(),
    );
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap()
    };
    assert_eq!(cond(conditions::READY).0, "True");
    assert_eq!(
        cond(conditions::WORKLOAD_CHECKED),
        ("False".to_owned(), reason::WORKLOAD_FAILED.to_owned())
    );
}

#[test]
fn nodes_that_failed_the_policy_run_no_self_test() {
    let c = check(None, true);
    let mut failed = attested("n");
    failed.verdict = Verdict::Failed;
    failed.reasons = vec!["driver too old".into()];
    let outcome = judge(
        &c,
        "att-uid",
        &failed,
        Some(&evidence("n", now())),
        None,
        now(),
    );
    assert_eq!(outcome, Outcome::NotApplicable);
    assert_eq!(fold(&c, failed.clone(), &outcome), failed);
    let (status, why, message) = condition(&[("n".into(), outcome)]);
    assert_eq!(
        (status, why),
        (conditions::status::UNKNOWN, reason::WORKLOAD_PENDING)
    );
    assert!(
        message.contains("no node has passed the policy"),
        "{message}"
    );
}

#[test]
fn the_condition_names_failed_nodes_and_ready_follows_the_verdicts() {
    let c = check(None, true);
    let ev = evidence("a", now());
    let pass = accepted("a", NONCE, vec![device(0, 2500.0)], true);
    let outcomes: Vec<(String, Outcome)> = (0..8)
        .map(|i| {
            let node = format!("node-{i}");
            let o = if i < 2 {
                judge(
                    &c,
                    "att-uid",
                    &attested(&node),
                    Some(&ev),
                    Some(&pass),
                    now(),
                )
            } else {
                Outcome::Failed("matmul".into())
            };
            (node, o)
        })
        .collect();
    let (_, _, message) = condition(&outcomes);
    assert!(
        message.starts_with("the GPU self-test failed on 6 of 8 nodes that passed the policy: node-2, node-3, node-4, node-5, node-6, and 1 more"),
        "{message}"
    );
    let results: Vec<NodeResult> = outcomes
        .iter()
        .map(|(n, o)| fold(&c, attested(n), o))
        .collect();
    let status =
        build_status_with_workload(Some(1), None, results, Some(condition(&outcomes)), now());
    assert_eq!(status.failed_nodes, 6);
    assert_eq!(status.attested_nodes, 2);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::NODES_FAILED)
    );
}

#[test]
fn without_a_workload_check_the_status_has_no_workload_condition() {
    let status = crate::status::build_status(Some(1), None, vec![attested("n")], now());
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != conditions::WORKLOAD_CHECKED)
    );
}
