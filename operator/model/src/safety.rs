//! The `SafetyScanned` and `Compliant` stages of `attest-model`, through
//! lotabots-modelscan: every file scanned without being loaded (failing closed), then the
//! policy's compliance rules. Paths the manifest leaves out (git files, the signature) are
//! not part of the model and are left out here too.

use std::path::Path;

use rayon::prelude::*;

use lotabots_crds::conditions::{self, reason};
use lotabots_crds::model_attestation::ModelPolicy;
use lotabots_modelscan::compliance::{self, CompliancePolicy, Rule};
use lotabots_modelscan::{
    FileReport, FindingKind, PickleHandling, ScanLimits, ScanReport, Verdict,
};

use crate::attest::{Objection, StageResult, StageStatus};
use crate::ignore::IgnoreSet;
use crate::source::{SeekableFile, Source, WalkOptions};

/// Scans the model at `root` and judges it against `policy`: (SafetyScanned, Compliant).
pub fn scan_and_comply(root: &Path, policy: &ModelPolicy, ignore: &IgnoreSet) -> [StageResult; 2] {
    let scan = match lotabots_modelscan::scan_path(root, &ScanLimits::default()) {
        Ok(mut scan) => {
            scan.files.retain(|f| !ignore.is_ignored(&f.path));
            scan
        }
        Err(e) => return unscannable(&e.to_string()),
    };
    let rules = CompliancePolicy::from(policy);
    let report = compliance::evaluate_path(root, &scan, &rules)
        .map_err(|e| format!("the model card could not be read: {e}"));
    [
        safety(&scan, policy.pickle.into()),
        compliance(report, &scan, rules),
    ]
}

/// [`scan_and_comply`] for a model that is not on a local filesystem (an object store):
/// each listed file is scanned through range requests, several at once, and the model
/// card is read from the source.
pub fn scan_and_comply_source(
    source: &dyn Source,
    policy: &ModelPolicy,
    ignore: &IgnoreSet,
) -> [StageResult; 2] {
    let limits = ScanLimits::default();
    let walk = WalkOptions {
        allow_symlinks: false,
        ignore: ignore.clone(),
    };
    let files = match source.list(&walk) {
        Ok(files) if files.len() > limits.max_files => {
            return unscannable(&format!(
                "{}: more than {} files",
                source.location(),
                limits.max_files
            ));
        }
        Ok(files) => files,
        Err(e) => return unscannable(&e.to_string()),
    };
    let scan_all = || {
        files
            .par_iter()
            .map(|f| {
                lotabots_modelscan::scan_reader(
                    &f.name,
                    f.size,
                    || Ok(SeekableFile::new(source, &f.name, f.size)),
                    &limits,
                )
            })
            .collect::<Vec<_>>()
    };
    let reports = match source.read_parallelism() {
        Some(n) => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
            Ok(pool) => pool.install(scan_all),
            Err(e) => return unscannable(&format!("cannot start scanning threads: {e}")),
        },
        None => scan_all(),
    };
    let scan = ScanReport::from_files(reports);
    let rules = CompliancePolicy::from(policy);
    let card = if source.is_single_file() {
        Ok(None)
    } else {
        source
            .read_small(compliance::MODEL_CARD, compliance::MAX_CARD_BYTES)
            .map_err(|e| format!("the model card could not be read: {e}"))
    };
    let report = card.map(|card| {
        // A card that is not UTF-8 is an unusable card, as for a local model.
        let text = card.map(|b| String::from_utf8(b).unwrap_or_default());
        let facts = compliance::ModelFacts::from_parts(text.as_deref(), &scan);
        compliance::evaluate(&facts, &rules)
    });
    [
        safety(&scan, policy.pickle.into()),
        compliance(report, &scan, rules),
    ]
}

/// Both stages failed: the model could not be scanned at all.
fn unscannable(why: &str) -> [StageResult; 2] {
    let msg = format!("the model could not be scanned: {why}");
    [
        StageResult::new(
            conditions::SAFETY_SCANNED,
            StageStatus::Failed,
            reason::MALFORMED_FILE,
            msg.clone(),
        ),
        StageResult::new(
            conditions::COMPLIANT,
            StageStatus::Failed,
            reason::STAGE_FAILED,
            msg,
        ),
    ]
}

fn safety(scan: &ScanReport, handling: PickleHandling) -> StageResult {
    let stage = conditions::SAFETY_SCANNED;
    let flagged: Vec<&FileReport> = scan
        .files
        .iter()
        .filter(|f| f.verdict_under(handling) != Verdict::Safe)
        .collect();
    if scan.files.is_empty() {
        return StageResult::new(
            stage,
            StageStatus::Failed,
            reason::MALFORMED_FILE,
            "the model has no file to scan",
        );
    }
    if flagged.is_empty() {
        return StageResult::new(
            stage,
            StageStatus::Passed,
            reason::SCAN_PASSED,
            format!("{} file(s) scanned, nothing unsafe", scan.files.len()),
        );
    }
    let pickled = |f: &FileReport| {
        f.findings.iter().any(|i| {
            matches!(
                i.kind,
                FindingKind::ForbiddenGlobal | FindingKind::UnresolvedImport
            )
        }) || (handling == PickleHandling::Deny && f.verdict_under(handling) != f.verdict)
    };
    let reason = if flagged.iter().any(|f| pickled(f)) {
        reason::UNSAFE_PICKLE
    } else {
        reason::MALFORMED_FILE
    };
    let mut r = StageResult::new(
        stage,
        StageStatus::Failed,
        reason,
        format!(
            "{} of {} file(s) are not safe to load (unsafe or not analysable; the scan fails closed)",
            flagged.len(),
            scan.files.len()
        ),
    );
    for f in flagged {
        if f.findings.is_empty() {
            r.files.push(Objection {
                path: f.path.clone(),
                problem: format!(
                    "{} content, which spec.policy.pickle {handling:?} refuses",
                    f.format
                ),
            });
        }
        for i in &f.findings {
            let mut at = String::new();
            if let Some(m) = &i.member {
                at.push_str(&format!("in {m} "));
            }
            if let Some(o) = i.offset {
                at.push_str(&format!("at byte {o} "));
            }
            r.files.push(Objection {
                path: f.path.clone(),
                problem: format!("{at}{}", i.message),
            });
        }
    }
    r
}

fn compliance(
    report: Result<compliance::ComplianceReport, String>,
    scan: &ScanReport,
    rules: CompliancePolicy,
) -> StageResult {
    let stage = conditions::COMPLIANT;
    let report = match report {
        Ok(r) => r,
        Err(message) => {
            return StageResult::new(stage, StageStatus::Failed, reason::STAGE_FAILED, message);
        }
    };
    let failures: Vec<_> = report.failures().collect();
    let Some(first) = failures.first() else {
        return StageResult::new(
            stage,
            StageStatus::Passed,
            reason::POLICY_SATISFIED,
            "every rule of the policy holds",
        );
    };
    let reason = match first.rule {
        Rule::License => reason::LICENSE_NOT_ALLOWED,
        Rule::ModelCardFields | Rule::AnnexXi => reason::MODEL_CARD_INCOMPLETE,
        Rule::MaxSize => reason::TOO_LARGE,
        Rule::AllowedFormats => reason::FORMAT_NOT_ALLOWED,
    };
    let mut r = StageResult::new(
        stage,
        StageStatus::Failed,
        reason,
        failures
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.reasons.join("; ")))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    if failures.iter().any(|f| f.rule == Rule::AllowedFormats) {
        let allowed = &rules.allowed_formats;
        for f in &scan.files {
            if !allowed.contains(&f.format)
                && (f.format.is_weights()
                    || matches!(
                        f.format,
                        lotabots_modelscan::Format::Code | lotabots_modelscan::Format::Unknown
                    ))
            {
                r.files.push(Objection {
                    path: f.path.clone(),
                    problem: format!("format {} is not allowed", f.format),
                });
            }
        }
    }
    r
}
