//! The checks a reference bundle adds to a report's verification: choosing the RIMs for the
//! report's driver and VBIOS versions, their signatures and signing chains, the measurement
//! comparison, and the revocation of the device and RIM certificates.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;

use super::bundle::{MissingOcsp, ReferenceBundle};
use super::ocsp::{self, Revocation};
use super::rim::{GoldenMeasurement, Rim, RimKind};
use super::spdm::{MeasurementBlock, ParsedReport};
use super::{CcCheck, Findings, NVIDIA_RIM_ROOT_PEM, Severity, chain};

/// How findings name the RIM root.
pub(crate) const PINNED_ROOT_LABEL: &str = "pinned NVIDIA RIM root";
pub(crate) const OVERRIDE_ROOT_LABEL: &str =
    "RIM root given explicitly in the bundle instead of the pinned NVIDIA RIM root";

/// NVIDIA's opaque-data field NVDEC0_STATUS, and its value when NVDEC0 is disabled: then
/// measurement index 35 is not comparable (NVIDIA's verifier skips it too).
const OPAQUE_NVDEC0_STATUS: u16 = 11;
const NVDEC0_DISABLED: u8 = 0x55;
const NVDEC0_INDEX: u32 = 35;

/// Runs the bundle's checks. `device_path` is the device chain from the leaf up to and
/// including its root, when it parsed.
pub(crate) fn check(
    f: &mut Findings,
    bundle: &ReferenceBundle,
    report: Option<&ParsedReport>,
    device_path: Option<&[&X509Certificate<'_>]>,
    at: Timestamp,
) {
    let rim_root_label = if bundle.rim_root_override.is_some() {
        OVERRIDE_ROOT_LABEL
    } else {
        PINNED_ROOT_LABEL
    };
    let rim_root_pem = bundle
        .rim_root_override
        .as_deref()
        .unwrap_or(NVIDIA_RIM_ROOT_PEM.as_bytes());
    let rim_root_der = chain::read_pem_certs(rim_root_pem, rim_root_label);

    // Which RIMs describe this report.
    let mut chosen: Vec<&Rim> = Vec::new();
    match report {
        None => f.push(
            Severity::Unknown,
            CcCheck::RimVersion,
            "RIMs not chosen: the report did not parse",
        ),
        Some(p) => {
            for kind in [RimKind::Driver, RimKind::Vbios] {
                if let Some(rim) = choose(f, bundle, p, kind) {
                    chosen.push(rim);
                }
            }
        }
    }

    // Each chosen RIM: signature, then its signing chain up to the RIM root. Measurements
    // are compared with every RIM whose signature verified; a chain that fails already
    // fails the report, and the comparison still says what differs.
    let mut signed_rims: Vec<&Rim> = Vec::new();
    let mut rim_revocations = Vec::new();
    // Driver and VBIOS RIMs usually share their signer: each certificate is judged once.
    let mut judged: HashSet<Vec<u8>> = HashSet::new();
    for rim in &chosen {
        let signed = match &rim.signature {
            Ok(sig) => {
                f.push(
                    Severity::Passed,
                    CcCheck::RimSignature,
                    format!("{}: {}", rim.label(), sig.summary),
                );
                sig
            }
            Err(e) => {
                f.push(
                    Severity::Failed,
                    CcCheck::RimSignature,
                    format!("{}: signature not valid: {e}", rim.label()),
                );
                continue;
            }
        };
        signed_rims.push(rim);
        let root_der = match &rim_root_der {
            Ok(d) => d,
            Err(e) => {
                f.push(Severity::Failed, CcCheck::RimChain, e.clone());
                continue;
            }
        };
        let (certs, root) = match rim_path(rim, &signed.chain, root_der, rim_root_label) {
            Ok(p) => p,
            Err(e) => {
                f.push(Severity::Failed, CcCheck::RimChain, e);
                continue;
            }
        };
        match judge_rim_path(rim, &certs, &root, rim_root_label, at) {
            Ok(summary) => f.push(Severity::Passed, CcCheck::RimChain, summary),
            Err(problems) => {
                for p in problems {
                    f.push(Severity::Failed, CcCheck::RimChain, p);
                }
            }
        }
        let mut path: Vec<&X509Certificate<'_>> = certs.iter().collect();
        if path.last().map(|c| c.as_raw()) != Some(root.as_raw()) {
            path.push(&root);
        }
        // The RIM signer has a status of its own: every certificate but the root.
        rim_revocations.extend(revocations(
            bundle,
            &path,
            0,
            &format!("{} signing chain", rim.label()),
            at,
            &mut judged,
        ));
    }

    // The measurements.
    match report {
        None => f.push(
            Severity::Unknown,
            CcCheck::ReferenceValues,
            "measurements not compared: the report did not parse",
        ),
        Some(_) if signed_rims.len() < 2 => f.push(
            Severity::Unknown,
            CcCheck::ReferenceValues,
            format!(
                "measurements not compared with reference values: {} (a driver RIM and a \
                 VBIOS RIM with valid signatures are needed)",
                if signed_rims.is_empty() {
                    "no usable RIM".to_string()
                } else {
                    format!("only the {} is usable", signed_rims[0].label())
                }
            ),
        ),
        Some(p) => compare(f, p, &signed_rims),
    }

    // Revocation: the device chain (its leaf is made by the GPU and has no OCSP status; its
    // root is the trust anchor), then the RIM chains.
    let mut all = match device_path {
        Some(path) => revocations(
            bundle,
            path,
            1,
            "device certificate chain",
            at,
            &mut HashSet::new(),
        ),
        None => vec![(
            Severity::Unknown,
            "device certificates' revocation not checked: the chain did not parse".to_string(),
        )],
    };
    all.extend(rim_revocations);
    let good: Vec<String> = all
        .iter()
        .filter(|(s, _)| *s == Severity::Passed)
        .map(|(_, m)| m.clone())
        .collect();
    if !good.is_empty() {
        f.push(
            Severity::Passed,
            CcCheck::Revocation,
            format!(
                "{} certificates good by OCSP: {}",
                good.len(),
                good.join("; ")
            ),
        );
    }
    for (severity, message) in all.into_iter().filter(|(s, _)| *s != Severity::Passed) {
        f.push(severity, CcCheck::Revocation, message);
    }
}

/// Judges a RIM's signing chain (from its verified signature) up to `rim_root_pem` at `at`:
/// a summary of the path, or every problem found. The RIM's signature must have verified.
pub fn rim_chain(
    rim: &Rim,
    rim_root_pem: &[u8],
    rim_root_label: &str,
    at: Timestamp,
) -> Result<String, Vec<String>> {
    let signed = rim
        .signature
        .as_ref()
        .map_err(|e| vec![format!("{}: signature not valid: {e}", rim.label())])?;
    let root_der = chain::read_pem_certs(rim_root_pem, rim_root_label).map_err(|e| vec![e])?;
    let (certs, root) =
        rim_path(rim, &signed.chain, &root_der, rim_root_label).map_err(|e| vec![e])?;
    // A root given here may not be the one the bundle cached its link checks with.
    let uncached = Rim {
        links: None,
        ..rim.clone()
    };
    judge_rim_path(&uncached, &certs, &root, rim_root_label, at)
}

/// The signature checks of a RIM's signing chain up to `rim_root_pem`, which do not depend
/// on time: the path's summary, or why it does not lead there.
pub(crate) fn rim_links(
    rim: &Rim,
    rim_root_pem: &[u8],
    rim_root_label: &str,
) -> Result<String, String> {
    let signed = rim
        .signature
        .as_ref()
        .map_err(|e| format!("{}: signature not valid: {e}", rim.label()))?;
    let root_der = chain::read_pem_certs(rim_root_pem, rim_root_label)?;
    let (certs, root) = rim_path(rim, &signed.chain, &root_der, rim_root_label)?;
    chain::verify_chain(&certs, &root, rim_root_label)
}

/// The RIM's signing certificates (its embedded root dropped) and the RIM root, parsed.
fn rim_path<'c>(
    rim: &Rim,
    ders: &'c [Vec<u8>],
    root_der: &'c [Vec<u8>],
    rim_root_label: &str,
) -> Result<(Vec<X509Certificate<'c>>, X509Certificate<'c>), String> {
    let what = format!("{} signing chain", rim.label());
    let mut certs = chain::parse_certs(ders, &what)?;
    let mut roots = chain::parse_certs(root_der, rim_root_label)?;
    if roots.len() != 1 {
        return Err(format!(
            "{rim_root_label}: {} certificates, expected exactly one",
            roots.len()
        ));
    }
    // The RIM embeds NVIDIA's root as its last certificate; like NVIDIA's verifier, the
    // embedded one is not trusted: the chain below it must lead to the RIM root given.
    if certs.len() > 1
        && certs
            .last()
            .is_some_and(|c| c.subject().as_raw() == c.issuer().as_raw())
    {
        certs.pop();
    }
    Ok((certs, roots.remove(0)))
}

fn judge_rim_path(
    rim: &Rim,
    certs: &[X509Certificate<'_>],
    root: &X509Certificate<'_>,
    rim_root_label: &str,
    at: Timestamp,
) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    // The signatures of the links do not depend on time: the bundle checked them once when
    // it was loaded (with its RIM root); only a RIM parsed on its own is checked here.
    let links = match &rim.links {
        Some(cached) => cached.clone(),
        None => chain::verify_chain(certs, root, rim_root_label),
    };
    let summary = links
        .map_err(|e| problems.push(format!("{}: {e}", rim.label())))
        .ok();
    let n = certs.len();
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = chain::check_validity(c, &chain::describe(c, i, n), at) {
            problems.push(format!("{} signing chain: {e}", rim.label()));
        }
    }
    if let Err(e) = chain::check_validity(root, &format!("the {rim_root_label}"), at) {
        problems.push(e);
    }
    match summary {
        Some(s) if problems.is_empty() => Ok(format!("{}: {s}; all valid at {at}", rim.label())),
        _ => Err(problems),
    }
}

/// Picks the RIM of `kind` whose version is the report's, recording the finding.
fn choose<'b>(
    f: &mut Findings,
    bundle: &'b ReferenceBundle,
    p: &ParsedReport,
    kind: RimKind,
) -> Option<&'b Rim> {
    let (version, field) = match kind {
        RimKind::Driver => (p.driver_version(), "DRIVER_VERSION"),
        RimKind::Vbios => (p.vbios_version(), "VBIOS_VERSION"),
    };
    let Some(version) = version.filter(|v| !v.is_empty()) else {
        f.push(
            Severity::Failed,
            CcCheck::RimVersion,
            format!(
                "the report carries no {} version (opaque field {field}), so no {} RIM applies",
                kind.name(),
                kind.name()
            ),
        );
        return None;
    };
    let of_kind: Vec<&Rim> = bundle.rims.iter().filter(|r| r.kind == kind).collect();
    match of_kind
        .iter()
        .find(|r| r.version.eq_ignore_ascii_case(&version))
    {
        Some(rim) => {
            f.push(
                Severity::Passed,
                CcCheck::RimVersion,
                format!(
                    "{} describes the report's {} version {version}",
                    rim.label(),
                    kind.name()
                ),
            );
            Some(*rim)
        }
        None => {
            f.push(
                Severity::Failed,
                CcCheck::RimVersion,
                format!(
                    "no {} RIM for the report's {} version {version} in the reference bundle \
                     (it has {} RIMs for: {})",
                    kind.name(),
                    kind.name(),
                    kind.name(),
                    if of_kind.is_empty() {
                        "none".to_string()
                    } else {
                        of_kind
                            .iter()
                            .map(|r| r.version.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
            None
        }
    }
}

/// Compares every measurement block with the active reference measurements.
fn compare(f: &mut Findings, p: &ParsedReport, rims: &[&Rim]) {
    let nvdec_disabled =
        p.opaque_field(OPAQUE_NVDEC0_STATUS).and_then(|v| v.first()) == Some(&NVDEC0_DISABLED);
    let mut golden: BTreeMap<u32, (&GoldenMeasurement, &Rim)> = BTreeMap::new();
    let mut failed = false;
    for rim in rims {
        for m in rim.active() {
            if let Some((_, other)) = golden.insert(m.index, (m, rim)) {
                failed = true;
                f.push(
                    Severity::Failed,
                    CcCheck::ReferenceValues,
                    format!(
                        "measurement index {} is active in both the {} and the {}: the RIMs \
                         do not belong together",
                        m.index,
                        other.label(),
                        rim.label()
                    ),
                );
            }
        }
    }
    let blocks: BTreeMap<u32, &MeasurementBlock> = p
        .response
        .blocks
        .iter()
        .filter(|b| b.index > 0)
        .map(|b| (u32::from(b.index) - 1, b))
        .collect();
    let mut matched = 0usize;
    let mut skipped = Vec::new();
    for (&index, (m, rim)) in &golden {
        if index == NVDEC0_INDEX && nvdec_disabled {
            skipped.push(index);
            continue;
        }
        let name = if m.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", m.name)
        };
        match blocks.get(&index) {
            None => {
                failed = true;
                f.push(
                    Severity::Failed,
                    CcCheck::ReferenceValues,
                    format!(
                        "measurement index {index}{name}: the {} expects {}, but the report \
                         has no measurement block {} (index {index})",
                        rim.label(),
                        expected(m),
                        index + 1
                    ),
                );
            }
            Some(b)
                if m.alternatives
                    .iter()
                    .any(|a| a == &b.value && b.value.len() == m.size) =>
            {
                matched += 1;
            }
            Some(b) => {
                failed = true;
                f.push(
                    Severity::Failed,
                    CcCheck::ReferenceValues,
                    format!(
                        "measurement index {index}{name} does not match the {}: expected {}, \
                         found {}",
                        rim.label(),
                        expected(m),
                        hex::encode(&b.value)
                    ),
                );
            }
        }
    }
    // A block neither RIM describes at all (not even as inactive) is unaccounted firmware.
    for (&index, b) in &blocks {
        if !rims.iter().any(|r| r.measurements.contains_key(&index)) {
            failed = true;
            f.push(
                Severity::Failed,
                CcCheck::ReferenceValues,
                format!(
                    "measurement block {} (index {index}, {}) is not described by the driver \
                     or the VBIOS RIM",
                    u32::from(b.index),
                    hex::encode(&b.value)
                ),
            );
        }
    }
    if !failed {
        let per_rim: Vec<String> = rims
            .iter()
            .map(|r| {
                let n = golden
                    .values()
                    .filter(|(_, g)| std::ptr::eq(*g, *r))
                    .count();
                format!("{n} from the {}", r.label())
            })
            .collect();
        f.push(
            Severity::Passed,
            CcCheck::ReferenceValues,
            format!(
                "all {matched} active reference measurements match the report ({}){}",
                per_rim.join(", "),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; index {NVDEC0_INDEX} not compared: the report says NVDEC0 is disabled"
                    )
                }
            ),
        );
    }
}

fn expected(m: &GoldenMeasurement) -> String {
    m.alternatives
        .iter()
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The OCSP status of `path[from..len-1]` (each certificate with the next as its issuer; the
/// last, the root, has none), as (severity, message) pairs.
fn revocations(
    bundle: &ReferenceBundle,
    path: &[&X509Certificate<'_>],
    from: usize,
    what: &str,
    at: Timestamp,
    judged: &mut HashSet<Vec<u8>>,
) -> Vec<(Severity, String)> {
    let n = path.len();
    (from..n.saturating_sub(1))
        .filter(|&i| judged.insert(path[i].as_raw().to_vec()))
        .map(|i| {
            let name = format!("{what}: {}", chain::describe(path[i], i, n));
            match ocsp::status(&bundle.ocsp, path[i], path[i + 1], &name, at) {
                Revocation::Good(m) => (Severity::Passed, m),
                Revocation::Revoked(m) | Revocation::Invalid(m) => (Severity::Failed, m),
                Revocation::Missing(m) => match bundle.missing_ocsp {
                    MissingOcsp::Fail => (Severity::Failed, m),
                    MissingOcsp::Note => (Severity::Note, m),
                },
            }
        })
        .collect()
}
