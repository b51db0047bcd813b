//! Conversions from the `ModelAttestation` CRD's policy (feature `crds`).

use lotabots_crds::model_attestation::{ModelFormat, ModelPolicy, PickleHandling as CrdPickle};

use crate::{Format, PickleHandling, compliance::CompliancePolicy};

impl From<ModelFormat> for Format {
    fn from(f: ModelFormat) -> Self {
        match f {
            ModelFormat::Safetensors => Self::Safetensors,
            ModelFormat::Gguf => Self::Gguf,
            ModelFormat::Pytorch => Self::Pytorch,
            ModelFormat::Pickle => Self::Pickle,
            ModelFormat::Onnx => Self::Onnx,
        }
    }
}

impl From<CrdPickle> for PickleHandling {
    fn from(p: CrdPickle) -> Self {
        match p {
            CrdPickle::Deny => Self::Deny,
            CrdPickle::AllowSafeGlobals => Self::AllowSafeGlobals,
            CrdPickle::Allow => Self::Allow,
        }
    }
}

impl From<&ModelPolicy> for CompliancePolicy {
    /// The CRD has no Annex XI switch yet: it stays off. A `maxSize` that does not parse
    /// (validation rejects it) becomes a limit of 0, failing closed rather than open.
    fn from(p: &ModelPolicy) -> Self {
        Self {
            allowed_formats: p
                .allowed_formats
                .iter()
                .copied()
                .map(Format::from)
                .collect(),
            allowed_licenses: p.allowed_licenses.clone(),
            required_model_card_fields: p.required_model_card_fields.clone(),
            annex_xi: false,
            max_size_bytes: p.max_size.as_ref().map(|_| p.max_size_bytes().unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_defaults_map_to_compliance_defaults() {
        assert_eq!(
            CompliancePolicy::from(&ModelPolicy::default()),
            CompliancePolicy::default()
        );
        assert_eq!(
            PickleHandling::from(CrdPickle::default()),
            PickleHandling::default()
        );
    }
}
