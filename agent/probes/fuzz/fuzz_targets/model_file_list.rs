//! Arbitrary bytes → the operator's file list as fetch mode reads it (JSON `ModelFiles`) →
//! `fetch::check_list`, the only guard between that untrusted list and the paths the runner
//! writes under its model directory.
//!
//! Invariants: never panics; the same list gets the same answer; an accepted list names the
//! attested manifest, holds 1 to `MAX_FILES` files, each path relative and `/`-separated with
//! no empty, `.` or `..` segment, no backslash, NUL or control character, none listed twice nor
//! the folder of another, and the returned total is the exact sum of the sizes, within the
//! room given; a refused list's message names the offending path or what is wrong.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use lotabots_crds::workload::ModelFiles;
use lotabots_probes::fetch::{MAX_FILES, MAX_MODEL_BYTES, check_list, check_path};

/// The attested digest the seeds list (any case and with or without `sha256:` normalise to it).
const ATTESTED: &str = "sha256:8a36265b0b7aa0d00dce7ed1f5db75f01433046b4518e00f63248b2d0c866cb2";

fuzz_target!(|data: &[u8]| {
    // fetch() refuses a body that is not a ModelFiles document before check_list sees it.
    let Ok(list) = serde_json::from_slice::<ModelFiles>(data) else {
        return;
    };
    let answer = check_list(&list, ATTESTED, MAX_MODEL_BYTES);
    assert_eq!(
        answer,
        check_list(&list, ATTESTED, MAX_MODEL_BYTES),
        "not deterministic"
    );
    match answer {
        Ok(total) => check_accepted(&list, total),
        Err(why) => check_refused(&list, &why),
    }
});

fn check_accepted(list: &ModelFiles, total: u64) {
    assert!(
        (1..=MAX_FILES).contains(&list.files.len()),
        "{} files accepted",
        list.files.len()
    );
    let digest = list.manifest_digest.to_ascii_lowercase();
    assert_eq!(
        digest.strip_prefix("sha256:").unwrap_or(&digest),
        &ATTESTED[7..]
    );
    let mut paths = HashSet::new();
    let mut sum = 0u64;
    for file in &list.files {
        let path = file.path.as_str();
        assert!(
            !path.is_empty() && !path.starts_with('/'),
            "{path:?} accepted"
        );
        assert!(
            !path.chars().any(|c| c == '\\' || c.is_control()),
            "{path:?} accepted"
        );
        assert!(
            path.split('/').all(|s| !matches!(s, "" | "." | "..")),
            "{path:?} accepted"
        );
        assert!(
            std::path::Path::new(path).is_relative(),
            "{path:?} accepted"
        );
        assert!(paths.insert(path), "{path:?} accepted twice");
        sum = sum
            .checked_add(file.size)
            .expect("the accepted sizes overflow u64");
    }
    for path in &paths {
        let mut folder = *path;
        while let Some((parent, _)) = folder.rsplit_once('/') {
            assert!(
                !paths.contains(parent),
                "{parent:?} is a file and the folder of {path:?}"
            );
            folder = parent;
        }
    }
    assert_eq!(total, sum, "the total is not the sum of the sizes");
    assert!(total <= MAX_MODEL_BYTES, "{total} bytes accepted");
}

/// The message says what is wrong: the digest, the list's length, its weight, or a path it
/// lists (the first unsafe or repeated one, or a file that is also a folder); a list with an
/// unsafe path is never refused for its weight alone.
fn check_refused(list: &ModelFiles, why: &str) {
    assert!(!why.trim().is_empty(), "empty reason");
    let names_a_path = list
        .files
        .iter()
        .any(|f| why.contains(&format!("path {:?}", f.path)));
    let whole_list = [
        "manifestDigest",
        "files of manifest",
        "lists no file",
        "files, more than",
    ]
    .iter()
    .any(|w| why.contains(w));
    let weight = why.contains("bytes there is room for");
    assert!(names_a_path || whole_list || weight, "refused for {why:?}");
    if let Some(bad) = list.files.iter().find(|f| check_path(&f.path).is_err()) {
        assert!(
            names_a_path || whole_list,
            "refused for {why:?}, not for the unsafe path {:?}",
            bad.path
        );
    }
}
