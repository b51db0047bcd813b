//! Helpers shared by the modelscan test suites.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lotabots_modelscan::{FileReport, FindingKind, ScanLimits, Verdict, scan_file};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes `bytes` to `name` in a fresh directory and scans it.
pub fn scan_bytes(name: &str, bytes: &[u8], limits: &ScanLimits) -> FileReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    scan_file(&path, limits).unwrap()
}

/// Asserts the verdict and that some finding has `kind` and a message containing `text`;
/// returns that finding's offset.
#[track_caller]
pub fn assert_finding(
    r: &FileReport,
    verdict: Verdict,
    kind: FindingKind,
    text: &str,
) -> Option<u64> {
    assert_eq!(r.verdict, verdict, "{r:#?}");
    let f = r
        .findings
        .iter()
        .find(|i| i.kind == kind && i.message.contains(text))
        .unwrap_or_else(|| panic!("no {kind:?} finding containing {text:?} in {r:#?}"));
    f.offset
}
