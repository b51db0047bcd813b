//! Arbitrary bytes → `Suite::parse`, what the probe runner does with a suite it was mounted or
//! fetched (a ConfigMap's bytes, up to `MAX_SUITE_BYTES`).
//!
//! Invariants: never panics; parsing is deterministic; an error is `probe suite: ` and a
//! non-empty reason; a parsed suite has what suite.rs promises: the digest of the bytes as
//! given, 1 to `MAX_PROBES` probes with unique, non-blank names of at most `MAX_NAME_BYTES`,
//! each property of the suite's task, non-blank input texts of at most `MAX_TEXT_BYTES`, and
//! bounds that can hold (cosines in [-1, 1], a margin in [0, 2], finite `min` ≤ `max`).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use lotabots_probes::suite::{
    MAX_NAME_BYTES, MAX_PROBES, MAX_TEXT_BYTES, Property, Suite, SuiteError, digest_of,
};

fuzz_target!(|data: &[u8]| {
    let suite = match Suite::parse(data) {
        Ok(suite) => suite,
        Err(e) => return check_error(data, &e),
    };
    assert_eq!(
        suite.digest,
        digest_of(data),
        "the digest is not of the bytes given"
    );
    let hex = suite
        .digest
        .strip_prefix("sha256:")
        .expect("sha256: prefix");
    assert!(hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert!(
        (1..=MAX_PROBES).contains(&suite.probes.len()),
        "{} probes",
        suite.probes.len()
    );
    let mut names = HashSet::new();
    for probe in &suite.probes {
        let name = &probe.name;
        assert!(
            names.insert(name.as_str()),
            "probe name {name:?} used twice"
        );
        assert!(!name.trim().is_empty(), "blank probe name");
        assert!(
            name.len() <= MAX_NAME_BYTES,
            "probe name of {} bytes",
            name.len()
        );
        let property = &probe.property;
        assert_eq!(
            property.task(),
            suite.task,
            "probe {name:?}: property of another task"
        );
        for text in inputs(property) {
            assert!(!text.trim().is_empty(), "probe {name:?}: blank input");
            assert!(
                text.len() <= MAX_TEXT_BYTES,
                "probe {name:?}: input of {} bytes",
                text.len()
            );
        }
        check_bounds(name, property);
    }
    let again = Suite::parse(data).expect("a suite that parsed once parses again");
    assert_eq!(again.digest, suite.digest);
    assert_eq!(again.probes.len(), suite.probes.len());
});

/// A refusal says what was wrong, after the `probe suite: ` every message starts with; the
/// same bytes are refused with the same message.
fn check_error(data: &[u8], e: &SuiteError) {
    assert!(!e.0.trim().is_empty(), "empty reason");
    let shown = e.to_string();
    assert!(shown.starts_with("probe suite: "), "{shown}");
    let again = Suite::parse(data).expect_err("refused once, accepted the second time");
    assert_eq!(again, *e, "two parses of the same bytes disagree");
}

/// Every text the model is run on (the expected outputs and labels are not inputs).
fn inputs(property: &Property) -> Vec<&str> {
    match property {
        Property::SimilarityOrder(o) => vec![&o.anchor, &o.closer, &o.farther],
        Property::SimilarityAtLeast(b) | Property::SimilarityAtMost(b) => vec![&b.a, &b.b],
        Property::Exact(e) => vec![&e.input],
        Property::Pattern(p, _) => vec![&p.input],
        Property::Label(l) => vec![&l.input],
        Property::NumericBound(n) => vec![&n.input],
    }
}

/// Bounds a model could satisfy: anything else is a mistake the parser must refuse.
fn check_bounds(name: &str, property: &Property) {
    match property {
        Property::SimilarityOrder(o) => {
            assert!(
                (0.0..=2.0).contains(&o.margin),
                "probe {name:?}: margin {}",
                o.margin
            );
        }
        Property::SimilarityAtLeast(b) | Property::SimilarityAtMost(b) => {
            assert!(
                (-1.0..=1.0).contains(&b.bound),
                "probe {name:?}: bound {}",
                b.bound
            );
        }
        Property::NumericBound(n) => {
            assert!(
                n.min.is_some() || n.max.is_some(),
                "probe {name:?}: no bound"
            );
            for v in [n.min, n.max].into_iter().flatten() {
                assert!(v.is_finite(), "probe {name:?}: bound {v}");
            }
            if let (Some(lo), Some(hi)) = (n.min, n.max) {
                assert!(lo <= hi, "probe {name:?}: min {lo} > max {hi}");
            }
        }
        Property::Pattern(p, re) => {
            assert_eq!(
                re.as_str(),
                p.regex,
                "probe {name:?}: another expression compiled"
            );
        }
        Property::Exact(_) | Property::Label(_) => {}
    }
}
