//! Arbitrary bytes → the AdmissionReview handling the server runs on a request body
//! (`admission::review_body_with`), with the default policy (config/webhook/policy.yaml,
//! compiled into the crate as `cli::DEFAULT_POLICY`) loaded by `Policy::from_yaml`.
//!
//! Invariants: never panics; a body that decodes as a review answers with its uid, the
//! AdmissionReview apiVersion and kind, `allowed` exactly when there is no status, and
//! warnings of at most 120 characters; the response serialises; a body that does not decode
//! is refused by `review_body_with` too.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lotabots_webhook::admission::{
    ADMISSION_API_VERSION, ADMISSION_KIND, WorkloadEnforcement, decode, review_body_with,
};
use lotabots_webhook::cli::DEFAULT_POLICY;
use lotabots_webhook::policy::Policy;

static POLICY: LazyLock<Policy> =
    LazyLock::new(|| Policy::from_yaml(DEFAULT_POLICY).expect("the default policy is valid"));

fuzz_target!(|data: &[u8]| {
    let policy = &*POLICY;
    let decoded = decode(data);
    for workloads in [WorkloadEnforcement::Deny, WorkloadEnforcement::Warn] {
        match (review_body_with(policy, data, workloads), &decoded) {
            (Ok(r), Ok(req)) => {
                let resp = &r.response;
                assert_eq!(resp.api_version, ADMISSION_API_VERSION);
                assert_eq!(resp.kind, ADMISSION_KIND);
                assert_eq!(resp.response.uid, req.uid, "uid not echoed");
                // The uid as an independent JSON reader sees it (serde_json does not check
                // UTF-8 in the fields the review skips, so `Value` may refuse what decodes).
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                    assert_eq!(
                        v["request"]["uid"].as_str(),
                        Some(resp.response.uid.as_str())
                    );
                }
                assert_eq!(resp.response.allowed, resp.response.status.is_none());
                for w in &resp.response.warnings {
                    assert!(
                        w.chars().count() <= 120,
                        "warning over 120 characters: {w:?}"
                    );
                }
                if let Some(s) = &resp.response.status {
                    assert!(matches!(s.code, 400 | 403 | 422), "status code {}", s.code);
                    assert!(!s.message.is_empty());
                }
                let json = serde_json::to_vec(resp).expect("the response serialises");
                assert!(!json.is_empty());
                let _ = (r.verdict.decision(), r.verdict.audits(), r.kind_label);
            }
            (Err(e), Err(d)) => {
                assert_eq!(&e, d);
                let _ = e.to_string();
            }
            (Ok(_), Err(e)) => panic!("review_body accepted what decode refused: {e}"),
            (Err(e), Ok(_)) => panic!("review_body refused what decode accepted: {e}"),
        }
    }
});
