//! The per-GPU rules of a `GpuPolicy`.

use lotabots_crds::evidence::{
    AttestationReport, ErrorCode, Fact, GpuEvidence, NodeEvidence, parse_nonce,
};
use lotabots_crds::gpu_attestation::{DriverVersion, GpuPolicy, HealthLimits, MigMode, MigPolicy};

use crate::cc::{self, CcInput};
use crate::{Context, Finding, Outcome, Rule};

/// The reporting function each rule calls: outcome, rule, GPU index, message.
type Add<'a> = dyn FnMut(Outcome, Rule, Option<u32>, String) + 'a;

/// How a GPU is named in reasons: its index and a UUID prefix long enough to find it.
fn gpu_name(gpu: &GpuEvidence) -> String {
    match gpu.uuid.value() {
        Some(u) if u.len() > 12 => format!("GPU {} ({}…)", gpu.index, &u[..12]),
        Some(u) => format!("GPU {} ({u})", gpu.index),
        None => format!("GPU {}", gpu.index),
    }
}

/// Reports a fact the rule needs but could not be read.
fn unknown<T>(add: &mut Add, rule: Rule, gpu: &GpuEvidence, what: &str, f: &Fact<T>) {
    if let Some(u) = f.unavailable() {
        add(
            Outcome::Unknown,
            rule,
            Some(gpu.index),
            format!(
                "{}: {what} could not be read ({:?}: {})",
                gpu_name(gpu),
                u.code,
                u.message
            ),
        );
    }
}

/// Applies every rule of `policy` to one GPU. The confidential-computing report's findings
/// go to `cc_findings` whole (they name the report check they come from).
pub(crate) fn check_gpu(
    evidence: &NodeEvidence,
    gpu: &GpuEvidence,
    policy: &GpuPolicy,
    ctx: &Context,
    add: &mut Add,
    cc_findings: &mut Vec<Finding>,
) {
    let name = gpu_name(gpu);
    let fail = |add: &mut Add, rule, message: String| {
        add(
            Outcome::Failed,
            rule,
            Some(gpu.index),
            format!("{name}: {message}"),
        )
    };

    if !policy.allowed_products.is_empty() {
        match gpu.product_name.value() {
            Some(p) if policy.allowed_products.iter().any(|a| a == p) => {}
            Some(p) => fail(
                add,
                Rule::Product,
                format!(
                    "product {p:?} not in allowlist {:?}",
                    policy.allowed_products
                ),
            ),
            None => unknown(
                add,
                Rule::Product,
                gpu,
                "the product name",
                &gpu.product_name,
            ),
        }
    }

    if let Some(min) = &policy.min_driver_version {
        check_driver(evidence, gpu, min, add);
    }

    if !policy.allowed_vbios_versions.is_empty() {
        match gpu.vbios_version.value() {
            Some(v)
                if policy
                    .allowed_vbios_versions
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(v)) => {}
            Some(v) => fail(
                add,
                Rule::Vbios,
                format!(
                    "VBIOS {v} not in allowlist [{}]",
                    policy.allowed_vbios_versions.join(", ")
                ),
            ),
            None => unknown(
                add,
                Rule::Vbios,
                gpu,
                "the VBIOS version",
                &gpu.vbios_version,
            ),
        }
    }

    if policy.ecc_required {
        match gpu.ecc_mode.value() {
            Some(m) if m.current => {}
            Some(m) => fail(
                add,
                Rule::Ecc,
                format!(
                    "ECC is off but the policy requires it (pending after reset: {})",
                    if m.pending { "on" } else { "off" }
                ),
            ),
            None => unknown(add, Rule::Ecc, gpu, "the ECC mode", &gpu.ecc_mode),
        }
    }

    if let Some(mig) = &policy.mig {
        check_mig(gpu, mig, add);
    }

    if policy.confidential_computing_required {
        check_cc(evidence, gpu, ctx, add, cc_findings);
    }

    if let Some(limits) = &policy.health {
        check_health(gpu, limits, add);
    }
}

fn check_driver(evidence: &NodeEvidence, gpu: &GpuEvidence, min: &str, add: &mut Add) {
    // The driver is host-wide; report it once, on the first GPU.
    if gpu.index != evidence.gpus[0].index {
        return;
    }
    let Ok(min_v) = min.parse::<DriverVersion>() else {
        // The API server's CEL rule and the webhook reject such policies; never pass one.
        add(
            Outcome::Unknown,
            Rule::Driver,
            None,
            format!("policy minDriverVersion {min:?} is not a driver version"),
        );
        return;
    };
    match evidence.host.driver_version.value() {
        Some(v) => match v.parse::<DriverVersion>() {
            Ok(have) if have >= min_v => {}
            Ok(_) => add(
                Outcome::Failed,
                Rule::Driver,
                None,
                format!("driver {v} is older than the required {min}"),
            ),
            Err(_) => add(
                Outcome::Unknown,
                Rule::Driver,
                None,
                format!("driver version {v:?} reported by the node does not parse"),
            ),
        },
        None => {
            let u = evidence
                .host
                .driver_version
                .unavailable()
                .expect("not a value");
            add(
                Outcome::Unknown,
                Rule::Driver,
                None,
                format!(
                    "driver version could not be read ({:?}: {})",
                    u.code, u.message
                ),
            );
        }
    }
}

fn check_mig(gpu: &GpuEvidence, mig: &MigPolicy, add: &mut Add) {
    let name = gpu_name(gpu);
    let Some(mode) = gpu.mig.mode.value() else {
        match (&mig.mode, gpu.mig.mode.unavailable().map(|u| u.code)) {
            // A GPU without MIG is trivially not in MIG mode.
            (MigMode::Disabled | MigMode::Any, Some(ErrorCode::NotSupported)) => {}
            (MigMode::Enabled, Some(ErrorCode::NotSupported)) => add(
                Outcome::Failed,
                Rule::MigMode,
                Some(gpu.index),
                format!("{name}: MIG is required but this GPU does not support it"),
            ),
            _ => unknown(add, Rule::MigMode, gpu, "the MIG mode", &gpu.mig.mode),
        }
        return;
    };
    let state = |b: bool| if b { "enabled" } else { "disabled" };
    match mig.mode {
        MigMode::Enabled if !mode.current => add(
            Outcome::Failed,
            Rule::MigMode,
            Some(gpu.index),
            format!(
                "{name}: MIG is disabled but the policy requires it enabled (pending after reset: {})",
                state(mode.pending)
            ),
        ),
        MigMode::Disabled if mode.current => add(
            Outcome::Failed,
            Rule::MigMode,
            Some(gpu.index),
            format!("{name}: MIG is enabled but the policy requires it disabled"),
        ),
        _ => {}
    }
    if mig.profiles.is_empty() || !mode.current {
        return;
    }
    let Some(instances) = gpu.mig.gpu_instances.value() else {
        unknown(
            add,
            Rule::MigProfiles,
            gpu,
            "the GPU instances",
            &gpu.mig.gpu_instances,
        );
        return;
    };
    for req in &mig.profiles {
        let have = instances
            .iter()
            .filter(|gi| gi.profile_name == req.profile)
            .count();
        if have < req.count as usize {
            add(
                Outcome::Failed,
                Rule::MigProfiles,
                Some(gpu.index),
                format!(
                    "{name}: has {have} × {} GPU instance(s), the policy requires {}",
                    req.profile, req.count
                ),
            );
        }
    }
}

fn check_cc(
    evidence: &NodeEvidence,
    gpu: &GpuEvidence,
    ctx: &Context,
    add: &mut Add,
    cc_findings: &mut Vec<Finding>,
) {
    let name = gpu_name(gpu);
    let cc = &evidence.host.confidential_computing;
    match cc.value() {
        Some(s) if !s.enabled => {
            add(
                Outcome::Failed,
                Rule::ConfidentialComputing,
                Some(gpu.index),
                format!("{name}: confidential computing is off"),
            );
            return;
        }
        Some(s) if s.dev_tools_mode => {
            add(
                Outcome::Failed,
                Rule::ConfidentialComputing,
                Some(gpu.index),
                format!(
                    "{name}: confidential computing runs in developer-tools mode, which is not protected"
                ),
            );
            return;
        }
        Some(_) => {}
        None => {
            unknown(
                add,
                Rule::ConfidentialComputing,
                gpu,
                "the confidential-computing state",
                cc,
            );
            return;
        }
    }
    match gpu.confidential_computing.attestation_report.value() {
        Some(r) if !r.nonce.eq_ignore_ascii_case(&evidence.nonce) => add(
            Outcome::Failed,
            Rule::ConfidentialComputing,
            Some(gpu.index),
            format!(
                "{name}: the attestation report was requested with another nonce than the evidence's"
            ),
        ),
        Some(report) => check_cc_report(evidence, gpu, report, ctx, add, cc_findings),
        None => unknown(
            add,
            Rule::ConfidentialComputing,
            gpu,
            "the attestation report",
            &gpu.confidential_computing.attestation_report,
        ),
    }
}

/// The SPDM report: nonce, certificate chain to the pinned NVIDIA root, signature, FWID.
fn check_cc_report(
    evidence: &NodeEvidence,
    gpu: &GpuEvidence,
    report: &AttestationReport,
    ctx: &Context,
    add: &mut Add,
    cc_findings: &mut Vec<Finding>,
) {
    let name = gpu_name(gpu);
    let fail = |add: &mut Add, message: String| {
        add(
            Outcome::Failed,
            Rule::ConfidentialComputing,
            Some(gpu.index),
            format!("{name}: {message}"),
        )
    };
    let Some(certs) = gpu.confidential_computing.certificates.value() else {
        return unknown(
            add,
            Rule::ConfidentialComputing,
            gpu,
            "the device certificate chain",
            &gpu.confidential_computing.certificates,
        );
    };
    let Ok(nonce) = parse_nonce(&evidence.nonce) else {
        return fail(add, "the evidence nonce is not 64 hex characters".into());
    };
    let Ok(report_bytes) = hex::decode(report.report.trim()) else {
        return fail(add, "the attestation report is not hex".into());
    };
    // NVML returns the attestation chain as PEM text; the evidence carries its bytes as hex.
    let Ok(chain) = hex::decode(certs.attestation_cert_chain.trim()) else {
        return fail(add, "the attestation certificate chain is not hex".into());
    };
    let mut input = CcInput::new(&report_bytes, &chain, &nonce, ctx.now);
    if let Some(bundle) = &ctx.reference_bundle {
        input = input.with_reference_bundle(bundle);
    }
    let outcome = cc::verify_report(&input);
    cc_findings.extend(crate::cc_findings(&outcome, Some(gpu.index), &name));
}

fn check_health(gpu: &GpuEvidence, limits: &HealthLimits, add: &mut Add) {
    let name = gpu_name(gpu);
    // A limit on a fact the GPU does not report at all is not applicable; any other failure
    // to read it leaves the limit unchecked: Unknown.
    let missing = |add: &mut Add,
                   rule: Rule,
                   what: &str,
                   f: &dyn Fn() -> Option<(ErrorCode, String)>| {
        if let Some((code, message)) = f() {
            let (outcome, text) = if code == ErrorCode::NotSupported {
                (
                    Outcome::NotApplicable,
                    format!(
                        "{name}: {what} limit not applicable: the GPU does not report {what} ({message})"
                    ),
                )
            } else {
                (
                    Outcome::Unknown,
                    format!("{name}: {what} could not be read ({code:?}: {message})"),
                )
            };
            add(outcome, rule, Some(gpu.index), text);
        }
    };
    let why =
        |u: Option<&lotabots_crds::evidence::Unavailable>| u.map(|u| (u.code, u.message.clone()));

    if let Some(max) = limits.max_temperature_celsius {
        match gpu.temperature_celsius.value() {
            Some(t) if *t > max => add(
                Outcome::Failed,
                Rule::Temperature,
                Some(gpu.index),
                format!("{name}: temperature {t} °C is above the limit of {max} °C"),
            ),
            Some(_) => {}
            None => unknown(
                add,
                Rule::Temperature,
                gpu,
                "the temperature",
                &gpu.temperature_celsius,
            ),
        }
    }
    if let Some(max) = limits.max_retired_pages {
        match gpu.retired_pages.value() {
            Some(r) => {
                let total = r.single_bit_ecc + r.double_bit_ecc;
                if total > max {
                    add(
                        Outcome::Failed,
                        Rule::RetiredPages,
                        Some(gpu.index),
                        format!(
                            "{name}: {total} retired pages ({} single-bit, {} double-bit{}) exceed the limit of {max}",
                            r.single_bit_ecc,
                            r.double_bit_ecc,
                            if r.pending {
                                ", more pending a reset"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
            None => missing(add, Rule::RetiredPages, "retired pages", &|| {
                why(gpu.retired_pages.unavailable())
            }),
        }
    }
    if let Some(max) = limits.max_remapped_row_failures {
        match gpu.remapped_rows.value() {
            Some(r) => {
                let failures = u32::from(r.failure_occurred);
                if failures > max {
                    add(
                        Outcome::Failed,
                        Rule::RemappedRows,
                        Some(gpu.index),
                        format!(
                            "{name}: a row remapping failed ({} uncorrectable rows remapped); the GPU needs service",
                            r.uncorrectable
                        ),
                    );
                }
            }
            None => missing(add, Rule::RemappedRows, "remapped rows", &|| {
                why(gpu.remapped_rows.unavailable())
            }),
        }
    }
    if let Some(max) = limits.max_uncorrectable_ecc_errors {
        match gpu.ecc_errors.value() {
            Some(e) if e.aggregate_uncorrected > max => add(
                Outcome::Failed,
                Rule::UncorrectableEcc,
                Some(gpu.index),
                format!(
                    "{name}: {} uncorrectable ECC errors over its life, above the limit of {max}",
                    e.aggregate_uncorrected
                ),
            ),
            Some(_) => {}
            // With ECC off NVML cannot count errors: unknown, not "no errors".
            None => unknown(
                add,
                Rule::UncorrectableEcc,
                gpu,
                "the ECC error counts",
                &gpu.ecc_errors,
            ),
        }
    }
}
