//! Condition types, statuses and reasons of the lotabots custom resources, in one place.
//!
//! Both resources follow the Kubernetes API conventions: a `Ready` condition that
//! `kubectl wait --for=condition=Ready` and GitOps health checks read, the kstatus
//! conditions `Reconciling` and `Stalled`, and specific conditions per stage. Reasons are
//! CamelCase words (they must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`); the
//! message carries the detail a person can act on.

// ---- Condition types shared by both resources ----

/// The resource's overall verdict is known and positive: every selected node is attested
/// (GpuAttestation), or every stage passed (ModelAttestation).
pub const READY: &str = "Ready";
/// The controller is working towards the desired state (kstatus convention); `True`
/// while evidence is being gathered or a stage is running.
pub const RECONCILING: &str = "Reconciling";
/// The controller cannot make progress without a change to the spec or the cluster
/// (kstatus convention), e.g. an invalid spec or a missing Secret.
pub const STALLED: &str = "Stalled";
/// The resource works but not fully: some nodes failed or are unknown, or an optional
/// stage could not run.
pub const DEGRADED: &str = "Degraded";

// ---- GpuAttestation condition types ----

/// Every node the selector matches has been evaluated against the policy (whatever the
/// verdicts); `False` while some nodes have no fresh evidence.
pub const NODES_EVALUATED: &str = "NodesEvaluated";
/// The optional GPU workload self-test passed on every attested node.
pub const WORKLOAD_CHECKED: &str = "WorkloadChecked";

// ---- ModelAttestation stage condition types, in pipeline order ----

/// The model's files hash to the manifest (and to `spec.integrity.expectedDigest` when set).
pub const INTEGRITY_VERIFIED: &str = "IntegrityVerified";
/// The manifest's signature verifies against the configured key or certificate.
pub const SIGNATURE_VERIFIED: &str = "SignatureVerified";
/// The files are safe to load: no code-executing pickles beyond the policy, valid
/// safetensors/GGUF headers.
pub const SAFETY_SCANNED: &str = "SafetyScanned";
/// The model complies with the policy: format, licence, model-card fields, size.
pub const COMPLIANT: &str = "Compliant";
/// The behavioural probes passed in an isolated GPU pod.
pub const BEHAVIOUR: &str = "Behaviour";

/// The ModelAttestation stage conditions in the order the pipeline runs them.
pub const MODEL_STAGES: &[&str] = &[
    INTEGRITY_VERIFIED,
    SIGNATURE_VERIFIED,
    SAFETY_SCANNED,
    COMPLIANT,
    BEHAVIOUR,
];

/// Condition status values (`metav1.ConditionStatus`).
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// The controller cannot tell (yet); never read as a pass.
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition reasons, CamelCase, shared by the operator, the webhook and the tests.
pub mod reason {
    // -- lifecycle --
    /// The controller is working on the current generation.
    pub const RECONCILING: &str = "Reconciling";
    /// The spec is invalid in a way the API server could not reject; the message names the
    /// field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or ConfigMap (or key in it) does not exist.
    pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
    /// The stage is not configured in the spec and was skipped (counts as passed).
    pub const NOT_REQUESTED: &str = "NotRequested";
    /// The stage waits for an earlier stage.
    pub const PENDING: &str = "Pending";

    // -- GpuAttestation --
    /// Every selected node is attested.
    pub const ALL_NODES_ATTESTED: &str = "AllNodesAttested";
    /// At least one selected node failed the policy.
    pub const NODES_FAILED: &str = "NodesFailed";
    /// At least one selected node has no usable evidence (agent silent, query failed).
    pub const NODES_UNKNOWN: &str = "NodesUnknown";
    /// The node selector matches no node.
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    /// The GPU workload self-test passed.
    pub const WORKLOAD_PASSED: &str = "WorkloadPassed";
    /// The GPU workload self-test failed or timed out.
    pub const WORKLOAD_FAILED: &str = "WorkloadFailed";
    /// The GPU workload self-test's result is awaited (its pod has not reported within
    /// `spec.workloadCheck.timeout` yet), or no node has passed the policy to run it on.
    pub const WORKLOAD_PENDING: &str = "WorkloadPending";

    // -- ModelAttestation --
    /// Every stage passed.
    pub const ALL_STAGES_PASSED: &str = "AllStagesPassed";
    /// A stage failed; the message names it.
    pub const STAGE_FAILED: &str = "StageFailed";
    /// The model source could not be read (credentials, network, missing object).
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    /// The files hash to the manifest.
    pub const DIGEST_MATCH: &str = "DigestMatch";
    /// A file or the manifest does not hash to what was expected.
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    /// The signature verifies.
    pub const SIGNATURE_VALID: &str = "SignatureValid";
    /// The signature does not verify, or was made by an untrusted key.
    pub const SIGNATURE_INVALID: &str = "SignatureInvalid";
    /// No signature bundle was found where `spec.signature.bundle` points.
    pub const SIGNATURE_MISSING: &str = "SignatureMissing";
    /// No unsafe content was found.
    pub const SCAN_PASSED: &str = "ScanPassed";
    /// A pickle imports globals the policy does not allow.
    pub const UNSAFE_PICKLE: &str = "UnsafePickle";
    /// A file's header is malformed (safetensors, GGUF).
    pub const MALFORMED_FILE: &str = "MalformedFile";
    /// Everything the policy asks for is there.
    pub const POLICY_SATISFIED: &str = "PolicySatisfied";
    /// A file's format is not in `spec.policy.allowedFormats`.
    pub const FORMAT_NOT_ALLOWED: &str = "FormatNotAllowed";
    /// The model's licence is not in `spec.policy.allowedLicenses`.
    pub const LICENSE_NOT_ALLOWED: &str = "LicenseNotAllowed";
    /// The model card lacks a field that `spec.policy.requiredModelCardFields` names.
    pub const MODEL_CARD_INCOMPLETE: &str = "ModelCardIncomplete";
    /// The model is larger than `spec.policy.maxSize`.
    pub const TOO_LARGE: &str = "TooLarge";
    /// The behavioural probes passed.
    pub const PROBES_PASSED: &str = "ProbesPassed";
    /// A behavioural probe failed.
    pub const PROBES_FAILED: &str = "ProbesFailed";
    /// The behavioural check did not finish within its timeout.
    pub const TIMED_OUT: &str = "TimedOut";
    /// No attested node can run the behavioural check.
    pub const NO_ATTESTED_NODE: &str = "NoAttestedNode";

    /// Every reason above, for tests and for callers that check a reason is known.
    pub const ALL: &[&str] = &[
        RECONCILING,
        INVALID_SPEC,
        REFERENCE_NOT_FOUND,
        NOT_REQUESTED,
        PENDING,
        ALL_NODES_ATTESTED,
        NODES_FAILED,
        NODES_UNKNOWN,
        NO_MATCHING_NODES,
        WORKLOAD_PASSED,
        WORKLOAD_FAILED,
        WORKLOAD_PENDING,
        ALL_STAGES_PASSED,
        STAGE_FAILED,
        SOURCE_UNAVAILABLE,
        DIGEST_MATCH,
        DIGEST_MISMATCH,
        SIGNATURE_VALID,
        SIGNATURE_INVALID,
        SIGNATURE_MISSING,
        SCAN_PASSED,
        UNSAFE_PICKLE,
        MALFORMED_FILE,
        POLICY_SATISFIED,
        FORMAT_NOT_ALLOWED,
        LICENSE_NOT_ALLOWED,
        MODEL_CARD_INCOMPLETE,
        TOO_LARGE,
        PROBES_PASSED,
        PROBES_FAILED,
        TIMED_OUT,
        NO_ATTESTED_NODE,
    ];
}

/// Every condition type above.
pub const ALL_TYPES: &[&str] = &[
    READY,
    RECONCILING,
    STALLED,
    DEGRADED,
    NODES_EVALUATED,
    WORKLOAD_CHECKED,
    INTEGRITY_VERIFIED,
    SIGNATURE_VERIFIED,
    SAFETY_SCANNED,
    COMPLIANT,
    BEHAVIOUR,
];

/// Whether `reason` has the shape the API server accepts for `Condition.reason`:
/// `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, at most 1024 characters.
pub fn is_valid_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    reason.len() <= 1024
        && first.is_ascii_alphabetic()
        && (last.is_ascii_alphanumeric() || *last == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn reasons_have_the_api_server_shape_and_are_unique() {
        for r in reason::ALL {
            assert!(is_valid_reason(r), "{r}");
        }
        assert_eq!(
            reason::ALL.iter().collect::<BTreeSet<_>>().len(),
            reason::ALL.len()
        );
    }

    #[test]
    fn types_are_camel_case_and_unique() {
        for t in ALL_TYPES {
            assert!(
                is_valid_reason(t) && t.chars().next().unwrap().is_ascii_uppercase(),
                "{t}"
            );
        }
        assert_eq!(
            ALL_TYPES.iter().collect::<BTreeSet<_>>().len(),
            ALL_TYPES.len()
        );
        assert!(MODEL_STAGES.iter().all(|s| ALL_TYPES.contains(s)));
    }

    #[test]
    fn reason_shape_rejects_bad_values() {
        for bad in ["", "1Bad", "has space", "trailing,", "dash-ed"] {
            assert!(!is_valid_reason(bad), "{bad}");
        }
        assert!(is_valid_reason("A"));
        assert!(is_valid_reason("Nodes_Failed:x"));
    }
}
