//! Validation of the project's own resources (GpuAttestation, ModelAttestation) beyond what
//! the CRD schema's CEL rules can express: driver version strings parsed as versions, MIG
//! profile names checked against the profiles NVIDIA ships, and everything else the types'
//! own `validate()` knows. The rules live with the types in `lotabots-crds`; this module
//! only decodes and reports, so the webhook, the operator and offline tools agree.

use lotabots_crds::gpu_attestation::FieldError;
use lotabots_crds::{GpuAttestationSpec, ModelAttestationSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A lotabots kind this webhook validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LotabotsKind {
    /// `lotabots.io GpuAttestation`.
    GpuAttestation,
    /// `lotabots.io ModelAttestation`.
    ModelAttestation,
}

impl LotabotsKind {
    /// The kind for an API group and kind name.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        match (group, kind) {
            (lotabots_crds::GROUP, "GpuAttestation") => Some(Self::GpuAttestation),
            (lotabots_crds::GROUP, "ModelAttestation") => Some(Self::ModelAttestation),
            _ => None,
        }
    }

    /// The kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GpuAttestation => "GpuAttestation",
            Self::ModelAttestation => "ModelAttestation",
        }
    }
}

/// Every problem with `object`, each naming its field (`spec.policy.minDriverVersion: ...`);
/// empty when it is valid.
pub fn validate(kind: LotabotsKind, object: &Value) -> Vec<FieldError> {
    let Some(spec) = object.get("spec") else {
        return vec![FieldError::new("spec", "missing")];
    };
    match kind {
        LotabotsKind::GpuAttestation => decode_then(spec, |s: GpuAttestationSpec| s.validate()),
        LotabotsKind::ModelAttestation => decode_then(spec, |s: ModelAttestationSpec| s.validate()),
    }
}

fn decode_then<T: DeserializeOwned>(
    spec: &Value,
    check: impl FnOnce(T) -> Result<(), Vec<FieldError>>,
) -> Vec<FieldError> {
    match serde_path_to_error::deserialize::<_, T>(spec) {
        Ok(s) => check(s).err().unwrap_or_default(),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                "spec".to_owned()
            } else {
                format!("spec.{inner}")
            };
            vec![FieldError::new(path, e.into_inner().to_string())]
        }
    }
}

/// The errors as one message, for an AdmissionResponse status.
pub fn message(kind: LotabotsKind, errs: &[FieldError]) -> String {
    let parts: Vec<String> = errs.iter().map(ToString::to_string).collect();
    format!("invalid {kind:?}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gpu(policy: Value) -> Value {
        json!({"apiVersion": "lotabots.io/v1alpha1", "kind": "GpuAttestation",
               "metadata": {"name": "x"}, "spec": {"policy": policy}})
    }

    fn paths(kind: LotabotsKind, obj: &Value) -> Vec<String> {
        validate(kind, obj).into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn gpu_attestation_fields() {
        let k = LotabotsKind::GpuAttestation;
        assert!(paths(k, &gpu(json!({"minDriverVersion": "550.54.15"}))).is_empty());
        let cases = [
            (
                json!({"minDriverVersion": "550.54.15-beta"}),
                "spec.policy.minDriverVersion",
            ),
            (
                json!({"minDriverVersion": "550..1"}),
                "spec.policy.minDriverVersion",
            ),
            (
                json!({"minDriverVersion": "1.2.3.4"}),
                "spec.policy.minDriverVersion",
            ),
            (
                json!({"minDriverVersion": 550}),
                "spec.policy.minDriverVersion",
            ),
            (
                json!({"mig": {"mode": "Enabled", "profiles": [{"profile": "3g.40gb", "count": 1},
                       {"profile": "5g.50gb", "count": 1}]}}),
                "spec.policy.mig.profiles[1].profile",
            ),
            (
                json!({"mig": {"mode": "Enabled", "profiles": [{"profile": "big", "count": 1}]}}),
                "spec.policy.mig.profiles[0].profile",
            ),
        ];
        for (policy, want) in cases {
            let got = paths(k, &gpu(policy.clone()));
            assert!(
                got.iter().any(|p| p == want),
                "{policy}: want {want}, got {got:?}"
            );
        }
        assert_eq!(paths(k, &json!({"metadata": {}})), vec!["spec"]);
    }

    #[test]
    fn model_attestation_mig_profile() {
        let k = LotabotsKind::ModelAttestation;
        let obj = |profile: &str| {
            json!({"spec": {"source": {"uri": "s3://models/llama/"},
                "behaviour": {"image": "ghcr.io/x/probe:1", "migProfile": profile,
                    "probes": {"name": "probes", "key": "probes.yaml"}}}})
        };
        let ok = validate(k, &obj("1g.10gb"));
        assert!(ok.is_empty(), "{ok:?}");
        let got = paths(k, &obj("1g.11gb"));
        assert!(
            got.iter().any(|p| p == "spec.behaviour.migProfile"),
            "{got:?}"
        );
    }
}
