//! Every verifier rule, on evidence from the agent's simulated profiles: each test turns
//! one fact or one policy field and asserts the verdict and the reason it gives.

mod support;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::{
    AttestationReport, CcCertificates, CcSystemState, ErrorCode, Fact, GpuInstance, NodeEvidence,
    NonceOrigin,
};
use lotabots_crds::gpu_attestation::{
    GpuPolicy, HealthLimits, MigMode, MigPolicy, MigProfileRequirement, Verdict,
};
use lotabots_verifier::cc::rim::RimKind;
use lotabots_verifier::cc::{BundleOptions, CcCheck, ReferenceBundle};
use lotabots_verifier::{Context, NodeVerdict, Outcome, Rule, verify_node};

const NONCE: [u8; 32] = [0x5a; 32];

fn evidence(profile: &str) -> NodeEvidence {
    let b = SimulatedBackend::load(profile).unwrap();
    let req = ProbeRequest {
        nonce: NONCE,
        nonce_origin: NonceOrigin::Verifier,
        node_name: "node-1".into(),
    };
    collect(&b, &req).unwrap()
}

fn ctx(e: &NodeEvidence) -> Context {
    Context {
        expected_nonce: Some(hex(&NONCE)),
        allow_simulated: true,
        ..Context::at(e.collected_at)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The H100 fleet policy of config/samples, which the real H100 record meets.
fn h100_policy() -> GpuPolicy {
    GpuPolicy {
        allowed_products: vec!["NVIDIA H100 80GB HBM3".into()],
        min_driver_version: Some("550.0".into()),
        allowed_vbios_versions: vec!["96.00.DA.00.0C".into()],
        ecc_required: true,
        mig: Some(MigPolicy {
            mode: MigMode::Disabled,
            profiles: vec![],
        }),
        confidential_computing_required: false,
        health: Some(HealthLimits {
            max_temperature_celsius: Some(85),
            max_retired_pages: Some(0),
            max_remapped_row_failures: Some(0),
            max_uncorrectable_ecc_errors: Some(0),
        }),
    }
}

fn verify(e: &NodeEvidence, p: &GpuPolicy) -> NodeVerdict {
    verify_node(e, p, &ctx(e))
}

fn assert_reason(v: &NodeVerdict, rule: Rule, outcome: Outcome, contains: &str) {
    assert!(
        v.findings
            .iter()
            .any(|f| f.rule == rule && f.outcome == outcome && f.message.contains(contains)),
        "expected {outcome:?} {rule:?} containing {contains:?}, got {:#?}",
        v.findings
    );
}

#[test]
fn the_real_h100_record_is_attested_and_says_what_did_not_apply() {
    let v = verify(&evidence("h100-80gb-hbm3"), &h100_policy());
    assert_eq!(v.verdict, Verdict::Attested, "{:#?}", v.findings);
    // Hopper reports no retired pages: the limit is not applicable, and the reasons say so.
    assert_reason(
        &v,
        Rule::RetiredPages,
        Outcome::NotApplicable,
        "retired pages limit not applicable",
    );
    assert_eq!(v.findings.len(), 1);
}

#[test]
fn the_eight_gpu_node_is_attested() {
    let v = verify(&evidence("h100-sxm5-80gb-x8"), &h100_policy());
    assert_eq!(v.verdict, Verdict::Attested, "{:#?}", v.findings);
}

#[test]
fn product_outside_the_allowlist_fails() {
    let v = verify(
        &evidence("a100-80gb-mig"),
        &GpuPolicy {
            allowed_products: vec!["NVIDIA H100 80GB HBM3".into()],
            ..Default::default()
        },
    );
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(
        &v,
        Rule::Product,
        Outcome::Failed,
        "product \"NVIDIA A100-SXM4-80GB\" not in allowlist",
    );
}

#[test]
fn driver_versions_compare_numerically() {
    let e = evidence("h100-80gb-hbm3"); // driver 580.159.04
    for (min, verdict) in [
        ("580.159.04", Verdict::Attested),
        ("580.159.4", Verdict::Attested),
        ("580.65", Verdict::Attested),
        ("580.159.10", Verdict::Failed),
        ("1000", Verdict::Failed),
        ("99", Verdict::Attested),
    ] {
        let v = verify(
            &e,
            &GpuPolicy {
                min_driver_version: Some(min.into()),
                ..Default::default()
            },
        );
        assert_eq!(v.verdict, verdict, "min {min}: {:?}", v.reasons());
    }
    let v = verify(
        &e,
        &GpuPolicy {
            min_driver_version: Some("590".into()),
            ..Default::default()
        },
    );
    assert_reason(
        &v,
        Rule::Driver,
        Outcome::Failed,
        "driver 580.159.04 is older than the required 590",
    );
    let mut unknown = e.clone();
    unknown.host.driver_version = Fact::error(
        ErrorCode::Unknown,
        "nvmlSystemGetDriverVersion: Unknown Error",
    );
    let v = verify(
        &unknown,
        &GpuPolicy {
            min_driver_version: Some("550".into()),
            ..Default::default()
        },
    );
    assert_eq!(v.verdict, Verdict::Unknown);
    assert_reason(
        &v,
        Rule::Driver,
        Outcome::Unknown,
        "driver version could not be read",
    );
}

#[test]
fn vbios_outside_the_allowlist_fails_with_both_versions_named() {
    let mut e = evidence("h100-80gb-hbm3");
    e.gpus[0].vbios_version = Fact::Value("96.00.61.00.01".into());
    let v = verify(&e, &h100_policy());
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(
        &v,
        Rule::Vbios,
        Outcome::Failed,
        "GPU 0 (GPU-38615fa5…): VBIOS 96.00.61.00.01 not in allowlist [96.00.DA.00.0C]",
    );
    // Case does not matter.
    e.gpus[0].vbios_version = Fact::Value("96.00.da.00.0c".into());
    assert_eq!(verify(&e, &h100_policy()).verdict, Verdict::Attested);
}

#[test]
fn ecc_off_fails_and_unreadable_ecc_is_unknown() {
    let v = verify(
        &evidence("faulty-node"),
        &GpuPolicy {
            ecc_required: true,
            ..Default::default()
        },
    );
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(&v, Rule::Ecc, Outcome::Failed, "GPU 1");
    assert!(
        !v.findings.iter().any(|f| f.gpu == Some(0)),
        "GPU 0 is healthy: {:?}",
        v.reasons()
    );
    let mut e = evidence("h100-80gb-hbm3");
    e.gpus[0].ecc_mode = Fact::error(
        ErrorCode::NoPermission,
        "nvmlDeviceGetEccMode: Insufficient Permissions",
    );
    let v = verify(
        &e,
        &GpuPolicy {
            ecc_required: true,
            ..Default::default()
        },
    );
    assert_eq!(v.verdict, Verdict::Unknown);
    assert_reason(&v, Rule::Ecc, Outcome::Unknown, "NoPermission");
}

#[test]
fn mig_mode_is_enforced_both_ways() {
    let h100 = evidence("h100-80gb-hbm3");
    let a100 = evidence("a100-80gb-mig");
    let enabled = GpuPolicy {
        mig: Some(MigPolicy {
            mode: MigMode::Enabled,
            profiles: vec![],
        }),
        ..Default::default()
    };
    let disabled = GpuPolicy {
        mig: Some(MigPolicy {
            mode: MigMode::Disabled,
            profiles: vec![],
        }),
        ..Default::default()
    };
    assert_reason(
        &verify(&h100, &enabled),
        Rule::MigMode,
        Outcome::Failed,
        "MIG is disabled but the policy requires it enabled",
    );
    assert_reason(
        &verify(&a100, &disabled),
        Rule::MigMode,
        Outcome::Failed,
        "MIG is enabled but the policy requires it disabled",
    );
    assert_eq!(verify(&a100, &enabled).verdict, Verdict::Attested);
    // A GPU without MIG support cannot meet Enabled, and trivially meets Disabled.
    let v100 = evidence("faulty-node");
    assert_reason(
        &verify(&v100, &enabled),
        Rule::MigMode,
        Outcome::Failed,
        "does not support it",
    );
    assert!(!verify(&v100, &disabled).has(Rule::MigMode, Outcome::Failed));
}

#[test]
fn mig_layout_must_hold_the_required_profiles() {
    let a100 = evidence("a100-80gb-mig");
    let policy = |profiles: &[(&str, u32)]| GpuPolicy {
        mig: Some(MigPolicy {
            mode: MigMode::Enabled,
            profiles: profiles
                .iter()
                .map(|(p, c)| MigProfileRequirement {
                    profile: (*p).into(),
                    count: *c,
                })
                .collect(),
        }),
        ..Default::default()
    };
    assert_eq!(
        verify(
            &a100,
            &policy(&[("3g.40gb", 1), ("2g.20gb", 1), ("1g.10gb", 2)])
        )
        .verdict,
        Verdict::Attested
    );
    let v = verify(&a100, &policy(&[("1g.10gb", 3)]));
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(
        &v,
        Rule::MigProfiles,
        Outcome::Failed,
        "has 2 × 1g.10gb GPU instance(s), the policy requires 3",
    );
    let v = verify(&a100, &policy(&[("7g.80gb", 1)]));
    assert_reason(&v, Rule::MigProfiles, Outcome::Failed, "has 0 × 7g.80gb");
    let mut unreadable = a100.clone();
    unreadable.gpus[0].mig.gpu_instances = Fact::error(
        ErrorCode::Unknown,
        "nvmlDeviceGetGpuInstances: Unknown Error",
    );
    let v = verify(&unreadable, &policy(&[("3g.40gb", 1)]));
    assert_eq!(v.verdict, Verdict::Unknown);
    let _: Option<&GpuInstance> = None;
}

#[test]
fn confidential_computing_off_fails_and_reports_are_never_silently_accepted() {
    let cc = GpuPolicy {
        confidential_computing_required: true,
        ..Default::default()
    };
    let v = verify(&evidence("h100-80gb-hbm3"), &cc);
    assert_reason(
        &v,
        Rule::ConfidentialComputing,
        Outcome::Failed,
        "confidential computing is off",
    );

    let mut on = evidence("h100-80gb-hbm3");
    on.host.confidential_computing = Fact::Value(CcSystemState {
        enabled: true,
        dev_tools_mode: false,
    });
    on.gpus[0].confidential_computing.attestation_report = Fact::Value(AttestationReport {
        nonce: on.nonce.clone(),
        report: "11".repeat(64),
        cec_report: None,
    });
    let v = verify(&on, &cc);
    assert_eq!(
        v.verdict,
        Verdict::Unknown,
        "a report without its certificate chain is not a pass"
    );
    assert_reason(
        &v,
        Rule::ConfidentialComputing,
        Outcome::Unknown,
        "the device certificate chain could not be read",
    );

    let mut other_nonce = on.clone();
    if let Fact::Value(r) = &mut other_nonce.gpus[0]
        .confidential_computing
        .attestation_report
    {
        r.nonce = "00".repeat(32);
    }
    assert_reason(
        &verify(&other_nonce, &cc),
        Rule::ConfidentialComputing,
        Outcome::Failed,
        "another nonce",
    );

    let mut dev = on.clone();
    dev.host.confidential_computing = Fact::Value(CcSystemState {
        enabled: true,
        dev_tools_mode: true,
    });
    assert_reason(
        &verify(&dev, &cc),
        Rule::ConfidentialComputing,
        Outcome::Failed,
        "developer-tools mode",
    );
}

#[test]
fn health_limits_catch_the_faulty_gpu() {
    let policy = GpuPolicy {
        health: Some(HealthLimits {
            max_temperature_celsius: Some(85),
            max_retired_pages: Some(0),
            max_remapped_row_failures: Some(0),
            max_uncorrectable_ecc_errors: Some(0),
        }),
        ..Default::default()
    };
    let v = verify(&evidence("faulty-node"), &policy);
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(
        &v,
        Rule::Temperature,
        Outcome::Failed,
        "temperature 92 °C is above the limit of 85 °C",
    );
    assert_reason(
        &v,
        Rule::RetiredPages,
        Outcome::Failed,
        "5 retired pages (3 single-bit, 2 double-bit, more pending a reset) exceed the limit of 0",
    );
    // ECC is off on GPU 1, so its error counts are unknown — said, not hidden.
    assert_reason(&v, Rule::UncorrectableEcc, Outcome::Unknown, "GPU 1");
    // Volta does not remap rows: not applicable, on both GPUs.
    assert_reason(
        &v,
        Rule::RemappedRows,
        Outcome::NotApplicable,
        "remapped rows limit not applicable",
    );
    // Failures come first in the reasons.
    assert_eq!(v.findings[0].outcome, Outcome::Failed);
}

#[test]
fn remapping_failures_and_ecc_errors_fail() {
    let mut e = evidence("h100-80gb-hbm3");
    if let Fact::Value(r) = &mut e.gpus[0].remapped_rows {
        r.failure_occurred = true;
        r.uncorrectable = 3;
    }
    if let Fact::Value(c) = &mut e.gpus[0].ecc_errors {
        c.aggregate_uncorrected = 4;
    }
    let v = verify(&e, &h100_policy());
    assert_reason(
        &v,
        Rule::RemappedRows,
        Outcome::Failed,
        "a row remapping failed (3 uncorrectable rows remapped)",
    );
    assert_reason(
        &v,
        Rule::UncorrectableEcc,
        Outcome::Failed,
        "4 uncorrectable ECC errors",
    );
    let mut lenient = h100_policy();
    lenient
        .health
        .as_mut()
        .unwrap()
        .max_uncorrectable_ecc_errors = Some(4);
    lenient.health.as_mut().unwrap().max_remapped_row_failures = Some(1);
    assert_eq!(verify(&e, &lenient).verdict, Verdict::Attested);
}

#[test]
fn nonce_freshness_and_backend_guard_the_envelope() {
    let e = evidence("h100-80gb-hbm3");
    let mut c = ctx(&e);
    c.expected_nonce = Some("00".repeat(32));
    let v = verify_node(&e, &h100_policy(), &c);
    assert_reason(&v, Rule::Nonce, Outcome::Failed, "not to the one issued");

    let mut agent_nonce = e.clone();
    agent_nonce.nonce_origin = NonceOrigin::Agent;
    assert_reason(
        &verify(&agent_nonce, &h100_policy()),
        Rule::Nonce,
        Outcome::Failed,
        "not issued by a verifier",
    );

    let mut old = ctx(&e);
    old.now = e.collected_at + Duration::from_secs(301);
    assert_reason(
        &verify_node(&e, &h100_policy(), &old),
        Rule::Freshness,
        Outcome::Failed,
        "evidence is 301s old",
    );
    let mut future = ctx(&e);
    future.now = e.collected_at - Duration::from_secs(60);
    assert_reason(
        &verify_node(&e, &h100_policy(), &future),
        Rule::Freshness,
        Outcome::Failed,
        "in the future",
    );
    let mut skew = ctx(&e);
    skew.now = e.collected_at - Duration::from_secs(5);
    assert_eq!(
        verify_node(&e, &h100_policy(), &skew).verdict,
        Verdict::Attested
    );

    let mut strict = ctx(&e);
    strict.allow_simulated = false;
    assert_reason(
        &verify_node(&e, &h100_policy(), &strict),
        Rule::Backend,
        Outcome::Failed,
        "simulated backend (h100-80gb-hbm3)",
    );
    let _ = Timestamp::now();
}

#[test]
fn unknown_schemas_and_empty_nodes_fail() {
    let mut e = evidence("h100-80gb-hbm3");
    e.schema_version = "lotabots.io/gpu-evidence/v9".into();
    let v = verify(&e, &h100_policy());
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(&v, Rule::Schema, Outcome::Failed, "is not supported");
    let mut empty = evidence("h100-80gb-hbm3");
    empty.gpus.clear();
    assert_reason(
        &verify(&empty, &GpuPolicy::default()),
        Rule::Gpus,
        Outcome::Failed,
        "reports no GPU",
    );
}

/// Evidence carrying NVIDIA's recorded Hopper report and chain (tests/fixtures/hopper),
/// bound to the nonce the report was requested with.
fn hopper_cc_evidence() -> NodeEvidence {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hopper/");
    let report = std::fs::read_to_string(format!("{fixtures}hopperAttestationReport.txt")).unwrap();
    let chain = std::fs::read(format!("{fixtures}hopperCertChain.txt")).unwrap();
    let mut e = evidence("h100-80gb-hbm3");
    e.nonce = HOPPER_SAMPLE_NONCE.into();
    e.host.confidential_computing = Fact::Value(CcSystemState {
        enabled: true,
        dev_tools_mode: false,
    });
    let gpu = &mut e.gpus[0].confidential_computing;
    gpu.attestation_report = Fact::Value(AttestationReport {
        nonce: HOPPER_SAMPLE_NONCE.into(),
        report: report.trim().to_owned(),
        cec_report: None,
    });
    gpu.certificates = Fact::Value(CcCertificates {
        cert_chain: String::new(),
        attestation_cert_chain: hex(&chain),
    });
    e
}

/// The nonce NVIDIA's recorded Hopper report was requested with (see the fixture README).
const HOPPER_SAMPLE_NONCE: &str =
    "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

#[test]
fn a_genuine_hopper_report_attests_and_says_measurements_were_not_compared() {
    let cc = GpuPolicy {
        confidential_computing_required: true,
        ..Default::default()
    };
    let e = hopper_cc_evidence();
    let ctx = Context {
        expected_nonce: Some(HOPPER_SAMPLE_NONCE.into()),
        allow_simulated: true,
        ..Context::at(e.collected_at)
    };
    let v = verify_node(&e, &cc, &ctx);
    assert_eq!(v.verdict, Verdict::Attested, "{:#?}", v.findings);
    assert_reason(
        &v,
        Rule::ConfidentialComputing,
        Outcome::Note,
        "measurements not checked against reference values",
    );
}

/// The evidence path (the operator's controller) judges the GPU's report with the bundle in
/// its context, as `verify-gpu-evidence --reference-bundle` does.
#[test]
fn a_hopper_report_is_compared_with_the_context_reference_bundle() {
    let cc = GpuPolicy {
        confidential_computing_required: true,
        ..Default::default()
    };
    let e = hopper_cc_evidence();
    let pki = support::pki(2030);
    let load = |edit: &dyn Fn(RimKind, &mut support::Measurements)| {
        let json = support::bundle_json(
            &support::sample_rims(&pki, edit),
            &[],
            "note",
            Some(&pki.root_pem),
        );
        let options = BundleOptions {
            allow_rim_root_override: true,
        };
        Arc::new(ReferenceBundle::from_json(&json, options).unwrap())
    };
    let ctx = |bundle| Context {
        expected_nonce: Some(HOPPER_SAMPLE_NONCE.into()),
        allow_simulated: true,
        reference_bundle: Some(bundle),
        ..Context::at(e.collected_at)
    };

    let v = verify_node(&e, &cc, &ctx(load(&|_, _| {})));
    assert_eq!(v.verdict, Verdict::Attested, "{:#?}", v.findings);
    assert!(
        !v.reasons()
            .iter()
            .any(|r| r.contains("measurements not checked")),
        "{:#?}",
        v.findings
    );
    // The device chain's OCSP responses are missing; this bundle's policy notes it.
    assert!(
        v.findings
            .iter()
            .any(|f| f.check == Some(CcCheck::Revocation)
                && f.outcome == Outcome::Note
                && f.gpu == Some(0))
    );

    let v = verify_node(
        &e,
        &cc,
        &ctx(load(&|kind, ms| {
            if kind == RimKind::Vbios {
                ms[2].2 = vec!["00".repeat(48)];
            }
        })),
    );
    assert_eq!(v.verdict, Verdict::Failed);
    let f = v
        .findings
        .iter()
        .find(|f| f.outcome == Outcome::Failed)
        .unwrap();
    assert_eq!(f.check, Some(CcCheck::ReferenceValues));
    assert!(
        f.message
            .contains("measurement index 2 (Measurement_2) does not match"),
        "{}",
        f.message
    );
}

#[test]
fn a_tampered_hopper_report_fails_its_signature() {
    let cc = GpuPolicy {
        confidential_computing_required: true,
        ..Default::default()
    };
    let mut e = hopper_cc_evidence();
    if let Fact::Value(r) = &mut e.gpus[0].confidential_computing.attestation_report {
        // Flip one hex digit in the middle of the measurement record.
        let mid = r.report.len() / 2;
        let flipped = if &r.report[mid..=mid] == "0" {
            "1"
        } else {
            "0"
        };
        r.report.replace_range(mid..=mid, flipped);
    }
    let ctx = Context {
        expected_nonce: Some(HOPPER_SAMPLE_NONCE.into()),
        allow_simulated: true,
        ..Context::at(e.collected_at)
    };
    let v = verify_node(&e, &cc, &ctx);
    assert_eq!(v.verdict, Verdict::Failed);
    assert_reason(
        &v,
        Rule::ConfidentialComputing,
        Outcome::Failed,
        "report signature",
    );
}
