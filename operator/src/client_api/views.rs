//! What the client API returns and takes: the attestations as clients need them (verdict,
//! reasons, digests; not the whole resource), pages, and the request bodies.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use lotabots_crds::conditions;
use lotabots_crds::gpu_attestation::{GpuAttestation, Verdict};
use lotabots_crds::model_attestation::ModelAttestation;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::audit::AuditEntry;
use crate::tokens::AttestationClaims;

/// Annotation naming who requested a ModelAttestation through the API.
pub const REQUESTED_BY: &str = "lotabots.io/requested-by";

/// A verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
pub enum VerdictName {
    /// Met the policy with fresh evidence.
    Attested,
    /// Failed the policy.
    Failed,
    /// Not (yet) known.
    Unknown,
}

impl From<Verdict> for VerdictName {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Attested => VerdictName::Attested,
            Verdict::Failed => VerdictName::Failed,
            Verdict::Unknown => VerdictName::Unknown,
        }
    }
}

/// A status condition.
#[derive(Serialize, Clone, Debug, PartialEq, ToSchema)]
pub struct ConditionView {
    /// `Ready`, `Stalled`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: String,
    /// For people.
    pub message: String,
}

fn conditions_of(conds: &[Condition]) -> Vec<ConditionView> {
    conds
        .iter()
        .map(|c| ConditionView {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

/// One node's verdict under a GpuAttestation.
#[derive(Serialize, Clone, Debug, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdictView {
    /// The node.
    pub node: String,
    /// Its verdict.
    pub verdict: VerdictName,
    /// Why.
    pub reasons: Vec<String>,
    /// Digest of the evidence it rests on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    /// When the evidence was checked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
}

/// A GpuAttestation's verdicts.
#[derive(Serialize, Clone, Debug, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuAttestationView {
    /// Its name.
    pub name: String,
    /// Overall: `Attested` when Ready, `Failed` when a node failed, `Unknown` otherwise.
    pub verdict: VerdictName,
    /// Nodes its selector matches.
    pub matched_nodes: u32,
    /// Of those, attested.
    pub attested_nodes: u32,
    /// Failed.
    pub failed_nodes: u32,
    /// Unknown.
    pub unknown_nodes: u32,
    /// Matched nodes not listed in `nodes`.
    pub omitted_nodes: u32,
    /// Per-node verdicts, failing first.
    pub nodes: Vec<NodeVerdictView>,
    /// Its conditions.
    pub conditions: Vec<ConditionView>,
    /// Whether the status describes the current spec.
    pub up_to_date: bool,
}

impl From<&GpuAttestation> for GpuAttestationView {
    fn from(att: &GpuAttestation) -> Self {
        let status = att.status.clone().unwrap_or_default();
        let up_to_date = status.observed_generation.is_some()
            && status.observed_generation == att.metadata.generation;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.status == conditions::status::TRUE);
        let verdict = if !up_to_date {
            VerdictName::Unknown
        } else if status.failed_nodes > 0 {
            VerdictName::Failed
        } else if ready {
            VerdictName::Attested
        } else {
            VerdictName::Unknown
        };
        Self {
            name: att.metadata.name.clone().unwrap_or_default(),
            verdict,
            matched_nodes: status.matched_nodes,
            attested_nodes: status.attested_nodes,
            failed_nodes: status.failed_nodes,
            unknown_nodes: status.unknown_nodes,
            omitted_nodes: status.omitted_nodes,
            nodes: status
                .nodes
                .iter()
                .map(|n| NodeVerdictView {
                    node: n.node.clone(),
                    verdict: n.verdict.into(),
                    reasons: n.reasons.clone(),
                    evidence_digest: n.evidence_digest.clone(),
                    checked_at: n.checked_at.as_ref().map(|t| t.0.to_string()),
                })
                .collect(),
            conditions: conditions_of(&status.conditions),
            up_to_date,
        }
    }
}

/// A ModelAttestation's verdict.
#[derive(Serialize, Clone, Debug, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelAttestationView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `Unknown` until every stage has run.
    pub verdict: VerdictName,
    /// The verified manifest digest (`sha256:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Why.
    pub reasons: Vec<String>,
    /// When the verdict was reached (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// Where the model is (`s3://…`, `gs://…`, `file://…` or `pvc:CLAIM/PATH`).
    pub source: String,
    /// Its conditions.
    pub conditions: Vec<ConditionView>,
    /// Who requested it through this API, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl From<&ModelAttestation> for ModelAttestationView {
    fn from(att: &ModelAttestation) -> Self {
        let status = att.status.clone().unwrap_or_default();
        let up_to_date = status.observed_generation.is_some()
            && status.observed_generation == att.metadata.generation;
        let source = match (&att.spec.source.uri, &att.spec.source.pvc) {
            (Some(uri), _) => uri.clone(),
            (None, Some(pvc)) => format!("pvc:{}/{}", pvc.claim_name, pvc.path),
            (None, None) => String::new(),
        };
        Self {
            namespace: att.metadata.namespace.clone().unwrap_or_default(),
            name: att.metadata.name.clone().unwrap_or_default(),
            verdict: status
                .verdict
                .filter(|_| up_to_date)
                .map(VerdictName::from)
                .unwrap_or(VerdictName::Unknown),
            manifest_digest: status.manifest_digest.clone(),
            reasons: status.reasons.clone(),
            verified_at: status.verified_at.as_ref().map(|t| t.0.to_string()),
            source,
            conditions: conditions_of(&status.conditions),
            requested_by: att
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REQUESTED_BY))
                .cloned(),
        }
    }
}

/// A page of GpuAttestations.
#[derive(Serialize, Debug, ToSchema)]
pub struct GpuAttestationList {
    /// This page, by name.
    pub items: Vec<GpuAttestationView>,
    /// Pass as `continue` for the next page; absent on the last.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

/// A page of ModelAttestations.
#[derive(Serialize, Debug, ToSchema)]
pub struct ModelAttestationList {
    /// This page, by namespace and name.
    pub items: Vec<ModelAttestationView>,
    /// Pass as `continue` for the next page; absent on the last.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

/// Query of `GET /v1/gpu-attestations`.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GpuListQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(max_length = 1024)]
    pub continue_: Option<String>,
    /// Only attestations with this overall verdict.
    pub verdict: Option<VerdictName>,
    /// Only attestations that list this node.
    #[param(
        max_length = 253,
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    )]
    pub node: Option<String>,
}

/// Query of `GET /v1/model-attestations`.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelListQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(max_length = 1024)]
    pub continue_: Option<String>,
    /// Only this namespace.
    #[param(max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    pub namespace: Option<String>,
    /// Only attestations with this verdict.
    pub verdict: Option<VerdictName>,
}

/// Query of `GET /v1/audit`.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries after this sequence number (default 0: from the start).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of the audit trail.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The entries, in order.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// The result of `GET /v1/audit/verify`.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainVerification {
    /// Whether every link holds.
    pub intact: bool,
    /// Entries verified intact before the first broken link.
    pub rows_checked: u64,
    /// The first link that does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<super::audit::BrokenLink>,
}

/// Body of `POST /v1/namespaces/{namespace}/model-attestations`.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelAttestationRequest {
    /// Name of the new ModelAttestation (a DNS subdomain).
    #[schema(max_length = 253, min_length = 1)]
    pub name: String,
    /// Its spec, as in the ModelAttestation CRD (`kubectl explain modelattestation.spec`).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

/// Body of the token requests (optional).
#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequestBody {
    /// A nonce of the relying party, echoed as `eat_nonce` (8 to 88 characters of
    /// base64url or hex).
    #[schema(min_length = 8, max_length = 88, pattern = "^[A-Za-z0-9_-]{8,88}$")]
    pub nonce: Option<String>,
    /// The relying party the token is for, set as `aud`.
    #[schema(min_length = 1, max_length = 256)]
    pub audience: Option<String>,
}

/// A signed attestation token.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// The JWT (ES256), verifiable against `/.well-known/jwks.json`.
    pub token: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
    /// Its claims, decoded for convenience.
    pub claims: AttestationClaims,
}

impl TokenResponse {
    /// The response for a signed token.
    pub fn new(issued: crate::tokens::IssuedToken) -> Self {
        let expires_at = Timestamp::from_second(issued.claims.exp)
            .map(|t| t.to_string())
            .unwrap_or_default();
        Self {
            token: issued.token,
            expires_at,
            claims: issued.claims,
        }
    }
}
