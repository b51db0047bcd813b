//! Arbitrary bytes → policy loading and validation (`Policy::from_yaml`, and the reload
//! path `PolicyStore::apply`).
//!
//! Invariants: never panics; every error names a field (a non-empty path and a message);
//! an invalid policy leaves the last good one in force; a valid one evaluates a pod.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lotabots_webhook::admission::{WorkloadEnforcement, review_body_with};
use lotabots_webhook::policy::Policy;
use lotabots_webhook::reload::PolicyStore;

/// A pod touching most rules: a hostPath volume, privileges, capabilities, GPU variables.
const REVIEW: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
 "uid":"fuzz","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"team","operation":"CREATE",
 "object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"team"},"spec":{
  "hostPID":true,
  "volumes":[{"name":"logs","hostPath":{"path":"/var/log/../log/app"}},{"name":"sock","hostPath":{"path":"/run/containerd/containerd.sock"}}],
  "containers":[{"name":"c","image":"x","env":[{"name":"NVIDIA_VISIBLE_DEVICES","value":"all"}],
   "securityContext":{"privileged":true,"procMount":"Unmasked","capabilities":{"add":["NET_ADMIN","cap_sys_admin"]}},
   "volumeMounts":[{"name":"logs","mountPath":"/l","readOnly":true},{"name":"sock","mountPath":"/s"}]}]}}}}"#;

static FALLBACK: LazyLock<Policy> = LazyLock::new(Policy::default);

fuzz_target!(|data: &[u8]| {
    // The loader refuses non-UTF-8 files before parsing (`reload::load_policy_file`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store = PolicyStore::new(FALLBACK.clone());
    let applied = store.apply(text);
    match Policy::from_yaml(text) {
        Ok(policy) => {
            assert!(applied.is_ok(), "from_yaml and apply disagree");
            assert!(
                *store.get() == policy,
                "a valid policy was not put in force"
            );
            for workloads in [WorkloadEnforcement::Deny, WorkloadEnforcement::Warn] {
                let r = review_body_with(&policy, REVIEW, workloads).expect("the review decodes");
                assert_eq!(r.response.response.uid, "fuzz");
                for w in &r.response.response.warnings {
                    assert!(
                        w.chars().count() <= 120,
                        "warning over 120 characters: {w:?}"
                    );
                }
            }
        }
        Err(errors) => {
            assert_eq!(
                applied.as_ref().err(),
                Some(&errors),
                "from_yaml and apply disagree"
            );
            assert!(
                *store.get() == *FALLBACK,
                "an invalid policy replaced the good one"
            );
            assert!(!errors.0.is_empty(), "an error list without errors");
            for e in &errors.0 {
                assert!(!e.path.trim().is_empty(), "error names no field: {e:?}");
                assert!(
                    !e.message.trim().is_empty(),
                    "error without a message: {e:?}"
                );
            }
            let _ = errors.to_string();
        }
    }
});
