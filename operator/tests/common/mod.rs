//! Evidence from the agent's simulated profiles, as the agent would submit it.

#![allow(dead_code)] // each test binary uses part of this

use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::{NodeEvidence, NonceOrigin};

/// Evidence of `profile` on `node`, bound to `nonce` as a verifier-issued challenge.
pub fn evidence(profile: &str, node: &str, nonce: [u8; 32]) -> NodeEvidence {
    let backend = SimulatedBackend::load(profile).expect("built-in profile");
    let req = ProbeRequest {
        nonce,
        nonce_origin: NonceOrigin::Verifier,
        node_name: node.into(),
    };
    collect(&backend, &req).expect("simulated probe")
}

use std::collections::HashMap;

use lotabots_operator::auth::{AgentIdentity, AuthError, AuthFuture, Authenticator};

/// Tokens known up front; the API server's TokenReview is exercised end to end.
pub struct StaticTokens(pub HashMap<&'static str, Result<AgentIdentity, AuthError>>);

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let r = self
            .0
            .get(token)
            .cloned()
            .unwrap_or_else(|| Err(AuthError::Rejected("unknown token".into())));
        Box::pin(async move { r })
    }
}

/// The identity of the agent on `node`.
pub fn agent(node: &str) -> Result<AgentIdentity, AuthError> {
    Ok(AgentIdentity {
        node: node.into(),
        service_account: "lotabots-system/lotabots-agent".into(),
    })
}

/// The policy of the H100 fleet sample in config/samples.
pub fn sample_policy() -> lotabots_crds::gpu_attestation::GpuPolicy {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml"
    );
    let att: lotabots_crds::gpu_attestation::GpuAttestation =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    att.spec.policy
}
