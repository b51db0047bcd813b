//! Arbitrary bytes → `pickle::scan_pickle`, under tight budgets so that every input ends
//! quickly.
//!
//! Invariants: never panics; the walk is deterministic; every issue has a message; a stream
//! without issues is one or more complete pickles (it ends with STOP) that import only
//! allowlisted globals — the walk is never clean by accident.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lotabots_modelscan::{
    ScanLimits,
    pickle::{
        allowlist::{Classification, classify},
        scan_pickle,
    },
};

fuzz_target!(|data: &[u8]| {
    let limits = ScanLimits {
        pickle_max_opcodes: 100_000,
        pickle_max_stack: 10_000,
        pickle_max_memo: 10_000,
        pickle_max_retained: 1 << 20,
        pickle_max_duration: Duration::from_secs(5),
        ..ScanLimits::default()
    };
    let scan = scan_pickle(data, &limits);
    assert_eq!(
        scan,
        scan_pickle(data, &limits),
        "the walk is not deterministic"
    );
    for issue in &scan.issues {
        assert!(
            !issue.message.is_empty(),
            "issue without a message: {issue:?}"
        );
    }
    if scan.issues.is_empty() {
        assert!(scan.pickles >= 1, "clean without a complete pickle");
        assert_eq!(
            data.last(),
            Some(&b'.'),
            "clean stream that does not end with STOP"
        );
        for g in &scan.globals {
            let (module, name) = g.rsplit_once('.').expect("globals are module.name");
            // A module may contain dots; the allowlist is checked on some split of it.
            let allowed = g
                .match_indices('.')
                .any(|(i, _)| classify(&g[..i], &g[i + 1..]) == Classification::Safe);
            assert!(allowed, "clean pickle imports {module}.{name}");
        }
    }
});
