//! Evaluation cost per typical pod, printed as plain figures (no harness):
//!
//! - `evaluate`: the policy rules over an already decoded pod spec (what the ≤ 10 µs target
//!   is about);
//! - `review`: a whole AdmissionReview body as the server handles it: JSON decode, pod
//!   spec decode with the unknown-field check, evaluation, response encode.
//!
//! Each figure is the median and 99th percentile of per-batch means (batches of 1,000
//! calls, after a warm-up), so timer resolution does not matter.
//! Run: `cargo bench -p lotabots-webhook --bench evaluate`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use k8s_openapi::api::core::v1::PodSpec;
use lotabots_webhook::admission::review_body;
use lotabots_webhook::evaluate::evaluate_pod;

const BATCH: usize = 1_000;
const BATCHES: usize = 300;

fn measure(name: &str, mut f: impl FnMut()) {
    for _ in 0..BATCH * 20 {
        f();
    }
    let mut per_call_ns: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    per_call_ns.sort_by(f64::total_cmp);
    let p50 = per_call_ns[BATCHES / 2];
    let p99 = per_call_ns[BATCHES * 99 / 100];
    let mean = per_call_ns.iter().sum::<f64>() / BATCHES as f64;
    println!(
        "{name:<34} mean {:>8.2} µs   p50 {:>8.2} µs   p99 {:>8.2} µs   ({} calls)",
        mean / 1000.0,
        p50 / 1000.0,
        p99 / 1000.0,
        BATCH * BATCHES
    );
}

fn main() {
    let policy = lotabots_webhook::policy::Policy::from_yaml(common::TEST_POLICY).unwrap();
    let spec_json = common::typical_spec();
    let spec: PodSpec = serde_json::from_value(spec_json.clone()).unwrap();
    assert!(
        evaluate_pod(&policy, "apps", &spec, "spec").is_empty(),
        "typical pod must be compliant"
    );
    let bad: PodSpec = serde_json::from_value(serde_json::json!({
        "hostPID": true,
        "volumes": [{"name": "s", "hostPath": {"path": "/var/run/docker.sock"}}],
        "containers": [{"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}},
            "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
            "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]
    }))
    .unwrap();
    assert_eq!(evaluate_pod(&policy, "apps", &bad, "spec").len(), 5);
    let body = common::pod_review("bench", spec_json)
        .to_string()
        .into_bytes();

    println!(
        "typical pod: 1 init + 2 containers, 3 volumes (2 hostPath), env, resources; review body {} bytes",
        body.len()
    );
    measure("evaluate (typical, compliant)", || {
        black_box(evaluate_pod(
            black_box(&policy),
            "apps",
            black_box(&spec),
            "spec",
        ));
    });
    measure("evaluate (5 violations)", || {
        black_box(evaluate_pod(
            black_box(&policy),
            "apps",
            black_box(&bad),
            "spec",
        ));
    });
    measure("review (decode+evaluate+encode)", || {
        let r = review_body(black_box(&policy), black_box(&body)).unwrap();
        black_box(serde_json::to_vec(&r.response).unwrap());
    });
}
