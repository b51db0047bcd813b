//! Arbitrary bytes → `serde_json::from_slice::<NodeEvidence>` → `verify_node`, against the
//! default `GpuPolicy` and the two sample GpuAttestation policies (config/samples), with a
//! fixed clock, and with a clock, nonce and backend setting under which the evidence is
//! fresh, bound and admissible (so that the GPU rules run).
//!
//! Invariants: never panics; the verdict is deterministic, and every finding has a message.
#![no_main]

use std::sync::LazyLock;

use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use lotabots_crds::evidence::NodeEvidence;
use lotabots_crds::gpu_attestation::GpuPolicy;
use lotabots_verifier::{Context, verify_node};

const SAMPLES: &[&str] = &[
    include_str!("../../../../config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml"),
    include_str!("../../../../config/samples/lotabots_v1alpha1_gpuattestation_a100_mig.yaml"),
];

static POLICIES: LazyLock<Vec<GpuPolicy>> = LazyLock::new(|| {
    let mut out = vec![GpuPolicy::default()];
    for text in SAMPLES {
        let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("sample is YAML");
        let policy = serde_yaml::from_value(doc["spec"]["policy"].clone()).expect("sample policy");
        out.push(policy);
    }
    out
});

static NOW: LazyLock<Timestamp> = LazyLock::new(|| "2026-11-29T10:33:00Z".parse().unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(evidence) = serde_json::from_slice::<NodeEvidence>(data) else {
        return;
    };
    let mut contexts = vec![Context::at(*NOW)];
    if let Ok(now) = evidence
        .collected_at
        .checked_add(SignedDuration::from_secs(1))
    {
        let mut fresh = Context::at(now);
        fresh.expected_nonce = Some(evidence.nonce.clone());
        fresh.allow_simulated = true;
        contexts.push(fresh);
    }
    for policy in POLICIES.iter() {
        for ctx in &contexts {
            let verdict = verify_node(&evidence, policy, ctx);
            for f in &verdict.findings {
                assert!(
                    !f.message.trim().is_empty(),
                    "a finding without a message: {f:?}"
                );
            }
            let again = verify_node(&evidence, policy, ctx);
            assert_eq!(verdict, again, "verification is not deterministic");
        }
    }
});
