//! The workload pods' side of the evidence API's listener:
//!
//! - `POST /v1/workload-results`: GPU self-test and behavioural-probe results;
//! - `GET /v1/workload-models/{id}/suite`, `…/files`, `…/files/{path}`: what a probe pod
//!   checks, the probe suite and the model's files ([`crate::model_files`]).
//!
//! A request is believed only as far as what vouches for it:
//!
//! - the caller presents a projected token of the workload ServiceAccount
//!   (`lotabots-workloads/lotabots-workload` unless configured otherwise — never the
//!   agent's), for the audience `lotabots`, that the API server bound to a pod: its
//!   TokenReview names the pod (name and UID) and its node, and refuses tokens of pods
//!   that no longer exist;
//! - that pod still exists with that UID, runs on that node, carries the label
//!   `lotabots.io/workload-id` equal to the request id, and is owned by the
//!   GpuAttestation the result is filed under (a self-test) or labelled
//!   `lotabots.io/owner-uid` with the UID of the ModelAttestation whose current
//!   behaviour request it runs, on that request's node (a probe pod);
//! - a self-test result names the token's node and carries the nonce of that node's
//!   latest accepted evidence, so it cannot be replayed onto another round or another
//!   node; a probe result carries its request's nonce, manifest digest and suite digest;
//! - simulated self-tests are refused unless the operator runs with
//!   `--accept-simulated-workloads` (test clusters).
//!
//! Every refusal is an RFC 9457 problem document naming what was wrong, is counted in
//! `lotabots_workload_results_total{outcome}` (results) or
//! `lotabots_workload_model_fetches_total{outcome}` (fetches), and stores nothing.
//!
//! Results are held in the leader's memory, where its controllers read them (probe
//! results in [`BehaviourRequests`], which wakes the model controller): a replica that
//! does not lead (it may serve the evidence API with a shared store) answers `503` with
//! `Retry-After`, and the pod retries until the Service routes it to the leader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as AxumPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lotabots_crds::labels;
use lotabots_crds::workload::{
    self, MODEL_PATH, ModelFiles, RESULT_PATH, RESULT_SCHEMA_VERSION, WorkloadKind, WorkloadResult,
};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;

use crate::auth::{
    AUDIENCE, NODE_NAME_EXTRA, ReviewRefusal, bound_extra, reviewed_user, service_account_of,
};
use crate::behaviour::{AcceptedProbes, BehaviourRequests, CurrentRequest, NotStored};
use crate::client_api::problem::{PROBLEM_JSON, Problem};
use crate::evidence_api::LatestEvidence;
use crate::model_files::ModelView;
use crate::model_inputs::Gathered;
use crate::workload_results::{AcceptedResult, AttestationRef, WorkloadResults};

/// Largest result accepted. A self-test report of an 8-GPU node is a few KiB.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// The `extra` key under which the API server names the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key under which the API server names that pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who may post workload results, and whether simulated ones count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSettings {
    /// The workload pods' ServiceAccount, `namespace/name`; its namespace is where the
    /// pods run.
    pub service_account: String,
    /// Accept results of the self-test's simulated mode (tests and development only: it
    /// proves nothing about a GPU).
    pub accept_simulated: bool,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        Self {
            service_account: format!(
                "{}/{}",
                workload::DEFAULT_NAMESPACE,
                workload::SERVICE_ACCOUNT
            ),
            accept_simulated: false,
        }
    }
}

impl WorkloadSettings {
    /// The namespace of the workload pods (that of their ServiceAccount).
    pub fn namespace(&self) -> &str {
        self.service_account
            .split_once('/')
            .map_or("", |(ns, _)| ns)
    }
}

/// A caller the API server vouched for: a token bound to a pod of the workload
/// ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace (its ServiceAccount's).
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The node the pod runs on.
    pub node: String,
}

/// Asks the API server about a token (TokenReview for the audience `lotabots`).
pub trait TokenReviewer: Send + Sync + 'static {
    /// The review's status, or why the API server could not be asked.
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenReviewStatus, String>>;
}

/// Reads a pod.
pub trait PodSource: Send + Sync + 'static {
    /// The pod `namespace/name`; `None` when it does not exist.
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>>;
}

/// [`TokenReviewer`] and [`PodSource`] on the Kubernetes API.
#[derive(Clone)]
pub struct ApiServer(pub kube::Client);

impl TokenReviewer for ApiServer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![AUDIENCE.into()]),
                },
                ..Default::default()
            };
            let reviewed = Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            reviewed
                .status
                .ok_or_else(|| "the TokenReview came back without status".to_owned())
        })
    }
}

impl PodSource for ApiServer {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>> {
        Box::pin(async move {
            Api::<Pod>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Why a result was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token (Authorization: Bearer <the pod's projected token>)")]
    MissingToken,
    /// The API server did not accept the token (expired, or its pod was deleted).
    #[error("token rejected by the API server: {0}")]
    TokenRejected(String),
    /// Valid, but not for our audience.
    #[error("token is for audiences {0:?}, not {AUDIENCE:?}")]
    WrongAudience(Vec<String>),
    /// Valid, but not the workload ServiceAccount.
    #[error("{user} is not the workload ServiceAccount {expected}")]
    NotWorkloadAccount {
        /// Who the token is for.
        user: String,
        /// The ServiceAccount allowed.
        expected: String,
    },
    /// Valid, but not bound to a pod on a node.
    #[error("token is not bound to a pod: the review has no {0}")]
    NotPodBound(&'static str),
    /// The API server could not be asked.
    #[error("the API server could not be asked: {0}")]
    Unavailable(String),
    /// Over [`MAX_RESULT_BYTES`].
    #[error("result larger than {MAX_RESULT_BYTES} bytes")]
    TooLarge,
    /// Not a workload result.
    #[error("malformed workload result: {0}")]
    Malformed(String),
    /// Another schema version.
    #[error("schemaVersion {0:?} is not supported (expected {RESULT_SCHEMA_VERSION})")]
    UnsupportedSchema(String),
    /// A kind this endpoint does not fold.
    #[error(
        "kind {0:?} is not accepted here: this operator runs without the behavioural check, so it folds gpuSelfTest results only"
    )]
    UnsupportedKind(String),
    /// The result names another node than the token.
    #[error(
        "the token is bound to a pod on node {token_node:?} but the result is for {result_node:?}"
    )]
    WrongNode {
        /// The token's node.
        token_node: String,
        /// The result's node.
        result_node: String,
    },
    /// A simulated result without `--accept-simulated-workloads`.
    #[error(
        "simulated self-test results prove nothing about a GPU and are refused (the operator runs without --accept-simulated-workloads)"
    )]
    Simulated,
    /// The token's pod is gone or was replaced by one of the same name.
    #[error("pod {pod}: {why}")]
    PodMismatch {
        /// `namespace/name`.
        pod: String,
        /// What did not match.
        why: String,
    },
    /// The pod was not launched for this request.
    #[error("pod {pod} is labelled {label}={found:?}, not the result's requestId {request_id:?}")]
    WrongRequest {
        /// `namespace/name`.
        pod: String,
        /// The label key.
        label: &'static str,
        /// The label's value on the pod (`None`: no label).
        found: Option<String>,
        /// The result's request id.
        request_id: String,
    },
    /// The pod has no GpuAttestation owner to file the result under.
    #[error(
        "pod {0} is not owned by a GpuAttestation: there is no verdict to fold its result into"
    )]
    NoOwner(String),
    /// The node has no accepted evidence (nothing the result could be bound to).
    #[error("node {0:?} has no accepted evidence: no attestation round a result could belong to")]
    NoEvidence(String),
    /// The nonce is not the current round's.
    #[error(
        "nonce {result_nonce:?} is not the nonce of node {node:?}'s latest accepted evidence ({current}): the result belongs to another attestation round"
    )]
    StaleNonce {
        /// The node.
        node: String,
        /// The result's nonce.
        result_nonce: String,
        /// The current round's nonce.
        current: String,
    },
    /// A different result was already accepted for this request.
    #[error("a different result for request {0:?} was already accepted")]
    AlreadyReported(String),
    /// This replica does not lead: the leader's controller would never see the result.
    #[error("this operator replica does not lead: retry, the Service routes to another replica")]
    NotLeader,
    /// The id is not the current behaviour request of any ModelAttestation.
    #[error(
        "{0:?} is not the current behaviour request of any ModelAttestation (replaced, timed out, or never made)"
    )]
    NotCurrentRequest(String),
    /// The pod runs on another node than the request's.
    #[error(
        "behaviour request {request_id:?} is for node {request_node:?}, not the token's node {node:?}"
    )]
    NotRequestNode {
        /// The request id.
        request_id: String,
        /// The node the request names.
        request_node: String,
        /// The token's node.
        node: String,
    },
    /// The result carries another nonce than the request's.
    #[error(
        "nonce {nonce:?} is not the nonce {expected:?} behaviour request {request_id:?} is bound to"
    )]
    WrongNonce {
        /// The request id.
        request_id: String,
        /// The result's nonce.
        nonce: String,
        /// The request's.
        expected: String,
    },
    /// The probes checked another manifest or suite than the request's.
    #[error("probes.{field} {found:?} is not the request's {expected:?}")]
    DigestMismatch {
        /// `suiteDigest` or `manifestDigest`.
        field: &'static str,
        /// The result's digest.
        found: String,
        /// The request's.
        expected: String,
    },
    /// The pod was launched for another ModelAttestation.
    #[error(
        "pod {pod} is labelled {label}={found:?}, not the UID {expected:?} of the ModelAttestation the request is for"
    )]
    WrongOwner {
        /// `namespace/name`.
        pod: String,
        /// The label key.
        label: &'static str,
        /// The label's value (`None`: no label).
        found: Option<String>,
        /// The ModelAttestation's UID.
        expected: String,
    },
    /// The path is not a file of the model.
    #[error("{0:?} is not a file of the model (see the listing)")]
    NoSuchFile(String),
    /// The model's source could not be read.
    #[error("the model cannot be read: {0}")]
    ModelUnavailable(String),
}

impl WorkloadError {
    /// A short label for metrics and the problem's `code`.
    pub fn label(&self) -> &'static str {
        match self {
            WorkloadError::MissingToken => "missing_token",
            WorkloadError::TokenRejected(_) => "token_rejected",
            WorkloadError::WrongAudience(_) => "wrong_audience",
            WorkloadError::NotWorkloadAccount { .. } => "not_workload_account",
            WorkloadError::NotPodBound(_) => "not_pod_bound",
            WorkloadError::Unavailable(_) => "unavailable",
            WorkloadError::TooLarge => "too_large",
            WorkloadError::Malformed(_) => "malformed",
            WorkloadError::UnsupportedSchema(_) => "unsupported_schema",
            WorkloadError::UnsupportedKind(_) => "unsupported_kind",
            WorkloadError::WrongNode { .. } => "wrong_node",
            WorkloadError::Simulated => "simulated_refused",
            WorkloadError::PodMismatch { .. } => "pod_mismatch",
            WorkloadError::WrongRequest { .. } => "wrong_request",
            WorkloadError::NoOwner(_) => "no_owner",
            WorkloadError::NoEvidence(_) => "no_evidence",
            WorkloadError::StaleNonce { .. } => "stale_nonce",
            WorkloadError::AlreadyReported(_) => "already_reported",
            WorkloadError::NotLeader => "not_leader",
            WorkloadError::NotCurrentRequest(_) => "not_current_request",
            WorkloadError::NotRequestNode { .. } => "not_request_node",
            WorkloadError::WrongNonce { .. } => "wrong_nonce",
            WorkloadError::DigestMismatch {
                field: "suiteDigest",
                ..
            } => "wrong_suite_digest",
            WorkloadError::DigestMismatch { .. } => "wrong_manifest_digest",
            WorkloadError::WrongOwner { .. } => "wrong_owner",
            WorkloadError::NoSuchFile(_) => "no_such_file",
            WorkloadError::ModelUnavailable(_) => "model_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use WorkloadError::*;
        match self {
            MissingToken | TokenRejected(_) => StatusCode::UNAUTHORIZED,
            WrongAudience(_)
            | NotWorkloadAccount { .. }
            | NotPodBound(_)
            | WrongNode { .. }
            | Simulated
            | PodMismatch { .. }
            | WrongRequest { .. }
            | NoOwner(_)
            | NotRequestNode { .. }
            | WrongOwner { .. } => StatusCode::FORBIDDEN,
            Unavailable(_) | NotLeader | ModelUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NoSuchFile(_) => StatusCode::NOT_FOUND,
            NotCurrentRequest(_) | WrongNonce { .. } | DigestMismatch { .. } => {
                StatusCode::CONFLICT
            }
            TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Malformed(_) | UnsupportedSchema(_) => StatusCode::BAD_REQUEST,
            UnsupportedKind(_) => StatusCode::UNPROCESSABLE_ENTITY,
            NoEvidence(_) | StaleNonce { .. } | AlreadyReported(_) => StatusCode::CONFLICT,
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "Unauthenticated",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable result",
            StatusCode::NOT_FOUND => "Not found",
            _ => "Bad request",
        }
    }
}

impl IntoResponse for WorkloadError {
    fn into_response(self) -> Response {
        let status = self.status();
        let problem = Problem {
            type_: format!("https://lotabots.io/problems/{}", self.label()),
            title: self.title().into(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.label().into(),
            errors: Vec::new(),
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Reads the pod identity out of a TokenReview's status; pure, so every refusal is tested.
pub fn pod_identity_from_review(
    status: &TokenReviewStatus,
    service_account: &str,
) -> Result<PodIdentity, WorkloadError> {
    let user = reviewed_user(status).map_err(|r| match r {
        ReviewRefusal::Rejected(why) => WorkloadError::TokenRejected(why),
        ReviewRefusal::WrongAudience(a) => WorkloadError::WrongAudience(a),
    })?;
    let username = user.username.clone().unwrap_or_default();
    let (namespace, _) = service_account_of(&username)
        .filter(|(ns, name)| format!("{ns}/{name}") == service_account)
        .ok_or_else(|| WorkloadError::NotWorkloadAccount {
            user: username.clone(),
            expected: service_account.to_owned(),
        })?;
    let extra = |key: &'static str| bound_extra(user, key).ok_or(WorkloadError::NotPodBound(key));
    Ok(PodIdentity {
        namespace: namespace.to_owned(),
        pod: extra(POD_NAME_EXTRA)?,
        pod_uid: extra(POD_UID_EXTRA)?,
        node: extra(NODE_NAME_EXTRA)?,
    })
}

/// Checks the pod the token is bound to against the caller: it exists with the token's
/// UID, runs on the token's node and was launched for `request_id`. Pure.
pub fn check_pod<'p>(
    pod: Option<&'p Pod>,
    caller: &PodIdentity,
    request_id: &str,
) -> Result<&'p Pod, WorkloadError> {
    let name = format!("{}/{}", caller.namespace, caller.pod);
    let mismatch = |why: String| WorkloadError::PodMismatch {
        pod: name.clone(),
        why,
    };
    let pod = pod.ok_or_else(|| mismatch("does not exist (deleted?)".into()))?;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if uid != caller.pod_uid {
        return Err(mismatch(format!(
            "has UID {uid:?}, but the token was bound to UID {:?}: the pod was replaced",
            caller.pod_uid
        )));
    }
    let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if on != Some(caller.node.as_str()) {
        return Err(mismatch(format!(
            "runs on node {on:?}, not on the token's node {:?}",
            caller.node
        )));
    }
    let label = label_of(pod, labels::WORKLOAD_ID);
    if label != Some(request_id) {
        return Err(WorkloadError::WrongRequest {
            pod: name,
            label: labels::WORKLOAD_ID,
            found: label.map(str::to_owned),
            request_id: request_id.to_owned(),
        });
    }
    Ok(pod)
}

fn label_of<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// The GpuAttestation that owns a self-test pod. Pure.
pub fn gpu_owner(pod: &Pod, caller: &PodIdentity) -> Result<AttestationRef, WorkloadError> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "GpuAttestation" && o.api_version.starts_with("lotabots.io/"))
        .map(|o| AttestationRef {
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
        .ok_or_else(|| WorkloadError::NoOwner(format!("{}/{}", caller.namespace, caller.pod)))
}

/// Checks that a probe pod was launched for the ModelAttestation `request` is for (its
/// `lotabots.io/owner-uid` label: the owner lives in another namespace). Pure.
pub fn check_probe_owner(
    pod: &Pod,
    caller: &PodIdentity,
    request: &CurrentRequest,
) -> Result<(), WorkloadError> {
    let found = label_of(pod, labels::OWNER_UID);
    if found == Some(request.model.uid.as_str()) {
        return Ok(());
    }
    Err(WorkloadError::WrongOwner {
        pod: format!("{}/{}", caller.namespace, caller.pod),
        label: labels::OWNER_UID,
        found: found.map(str::to_owned),
        expected: request.model.uid.clone(),
    })
}

/// Checks a probe result against its request: the nonce, and the manifest and suite the
/// pod checked. Pure.
pub fn check_probe_result(
    result: &WorkloadResult,
    request: &CurrentRequest,
) -> Result<(), WorkloadError> {
    if !result.nonce.eq_ignore_ascii_case(&request.nonce) {
        return Err(WorkloadError::WrongNonce {
            request_id: request.id.clone(),
            nonce: result.nonce.clone(),
            expected: request.nonce.clone(),
        });
    }
    if let Some(report) = &result.probes {
        for (field, found, expected) in [
            (
                "manifestDigest",
                &report.manifest_digest,
                &request.manifest_digest,
            ),
            ("suiteDigest", &report.suite_digest, &request.suite_digest),
        ] {
            if found != expected {
                return Err(WorkloadError::DigestMismatch {
                    field,
                    found: found.clone(),
                    expected: expected.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Decodes and checks a result's own content against the caller; pure.
pub fn check_result(
    body: &[u8],
    caller: &PodIdentity,
    accept_simulated: bool,
    accepted_kinds: &[WorkloadKind],
) -> Result<WorkloadResult, WorkloadError> {
    // The schema version first, so that a newer client learns that rather than which
    // field it added.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WorkloadError::Malformed(format!("not JSON: {e}")))?;
    match value.get("schemaVersion").and_then(|v| v.as_str()) {
        Some(RESULT_SCHEMA_VERSION) => {}
        Some(other) => return Err(WorkloadError::UnsupportedSchema(other.to_owned())),
        None => {
            return Err(WorkloadError::Malformed(
                "schemaVersion is missing or not a string".into(),
            ));
        }
    }
    let result: WorkloadResult = serde_path_to_error::deserialize(value)
        .map_err(|e| WorkloadError::Malformed(format!("at {}: {}", e.path(), e.inner())))?;
    if !accepted_kinds.contains(&result.kind) {
        return Err(WorkloadError::UnsupportedKind(result.kind.as_str().into()));
    }
    if result.request_id.is_empty()
        || result.request_id.len() > 63
        || !result
            .request_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(WorkloadError::Malformed(format!(
            "requestId {:?} must be 1 to 63 lowercase hex characters",
            result.request_id
        )));
    }
    if result.finished_at < result.started_at {
        return Err(WorkloadError::Malformed(format!(
            "finishedAt {} is before startedAt {}",
            result.finished_at, result.started_at
        )));
    }
    match result.kind {
        WorkloadKind::GpuSelfTest if result.passed && result.self_test.is_none() => {
            return Err(WorkloadError::Malformed(
                "a passing self-test must carry selfTest".into(),
            ));
        }
        WorkloadKind::BehaviourProbes if result.probes.is_none() && result.error.is_none() => {
            return Err(WorkloadError::Malformed(
                "a probe result must carry probes, or an error saying why they could not run"
                    .into(),
            ));
        }
        _ => {}
    }
    if result.node != caller.node {
        return Err(WorkloadError::WrongNode {
            token_node: caller.node.clone(),
            result_node: result.node,
        });
    }
    if result.self_test.as_ref().is_some_and(|t| t.simulated) && !accept_simulated {
        return Err(WorkloadError::Simulated);
    }
    Ok(result)
}

/// The counter of results by outcome.
#[derive(Clone)]
pub struct WorkloadMetrics {
    results: IntCounterVec,
    fetches: IntCounterVec,
}

impl WorkloadMetrics {
    /// Registers `lotabots_workload_results_total` in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let results = IntCounterVec::new(
            Opts::new(
                "lotabots_workload_results_total",
                "Workload results posted by isolated pods, by outcome",
            ),
            &["outcome"],
        )?;
        let fetches = IntCounterVec::new(
            Opts::new(
                "lotabots_workload_model_fetches_total",
                "Model and probe-suite fetches by behavioural-probe pods, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(fetches.clone()))?;
        Ok(Self { results, fetches })
    }

    /// Model fetches counted with `outcome` so far.
    pub fn fetches(&self, outcome: &str) -> u64 {
        self.fetches.with_label_values(&[outcome]).get()
    }

    /// Results counted with `outcome` so far.
    pub fn results(&self, outcome: &str) -> u64 {
        self.results.with_label_values(&[outcome]).get()
    }
}

/// Everything the handler shares.
pub struct WorkloadApi {
    reviewer: Arc<dyn TokenReviewer>,
    pods: Arc<dyn PodSource>,
    evidence: Arc<LatestEvidence>,
    results: Arc<WorkloadResults>,
    settings: WorkloadSettings,
    metrics: WorkloadMetrics,
    /// Set while this replica leads; `None`: always (a single, in-process operator).
    leading: Option<Arc<AtomicBool>>,
    /// The behaviour requests probe pods fetch for and post to; `None`: probe results
    /// are refused.
    behaviour: Option<ProbeServing>,
}

/// What serving probe pods needs.
struct ProbeServing {
    requests: Arc<BehaviourRequests>,
    opener: Arc<dyn ModelOpener>,
    /// Opened models by request id (the current requests' only).
    views: Mutex<HashMap<String, Arc<ModelView>>>,
}

/// Opens the model a behaviour request is for.
pub trait ModelOpener: Send + Sync + 'static {
    /// The model's source and files, or why they cannot be read.
    fn open<'a>(&'a self, request: &'a CurrentRequest) -> BoxFuture<'a, Result<ModelView, String>>;
}

/// [`ModelOpener`] through the model controller's own inputs: the source and the
/// credentials `spec.source` names, in the ModelAttestation's namespace.
pub struct KubeModels {
    /// The API client (credentials Secrets, keys).
    pub client: kube::Client,
    /// Where PVC models are mounted.
    pub model_root: std::path::PathBuf,
}

impl ModelOpener for KubeModels {
    fn open<'a>(&'a self, request: &'a CurrentRequest) -> BoxFuture<'a, Result<ModelView, String>> {
        Box::pin(async move {
            let gathered = Gathered::read(&self.client, &request.model.namespace, &request.spec)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|b| b.message)?;
            let root = self.model_root.clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let (_, inputs) = gathered.inputs(&root, &handle).map_err(|b| b.message)?;
                ModelView::list(&inputs).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// What an accepted result returns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Receipt {
    node: String,
    request_id: String,
    /// The GpuAttestation's name, or the ModelAttestation's `namespace/name`.
    attestation: String,
    #[serde(skip)]
    passed: bool,
}

impl WorkloadApi {
    /// The API: tokens reviewed and pods read with `reviewer` and `pods`, results bound
    /// to `evidence` and stored in `results`.
    pub fn new(
        reviewer: Arc<dyn TokenReviewer>,
        pods: Arc<dyn PodSource>,
        evidence: Arc<LatestEvidence>,
        results: Arc<WorkloadResults>,
        settings: WorkloadSettings,
        metrics: WorkloadMetrics,
    ) -> Self {
        Self {
            reviewer,
            pods,
            evidence,
            results,
            settings,
            metrics,
            leading: None,
            behaviour: None,
        }
    }

    /// Serves behavioural-probe pods: the models and suites of the current `requests`
    /// (opened with `opener`), and their results, stored in `requests`.
    pub fn with_behaviour(
        mut self,
        requests: Arc<BehaviourRequests>,
        opener: Arc<dyn ModelOpener>,
    ) -> Self {
        self.behaviour = Some(ProbeServing {
            requests,
            opener,
            views: Mutex::default(),
        });
        self
    }

    /// Accepts results only while `leading` is set (the replica holds the Lease).
    pub fn leader_only(mut self, leading: Arc<AtomicBool>) -> Self {
        self.leading = Some(leading);
        self
    }

    /// The route, to be merged into the evidence API's router.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(RESULT_PATH, post(submit))
            .route(&format!("{MODEL_PATH}/{{id}}/suite"), get(suite))
            .route(&format!("{MODEL_PATH}/{{id}}/files"), get(files))
            .route(&format!("{MODEL_PATH}/{{id}}/files/{{*path}}"), get(file))
            // The handler reads the body as `Bytes` and answers an oversized one itself.
            .layer(DefaultBodyLimit::max(MAX_RESULT_BYTES))
            .with_state(self)
    }

    /// The pod-bound caller, as the API server vouches for it (only while leading).
    async fn caller(&self, headers: &HeaderMap) -> Result<PodIdentity, WorkloadError> {
        if self
            .leading
            .as_ref()
            .is_some_and(|l| !l.load(Ordering::SeqCst))
        {
            return Err(WorkloadError::NotLeader);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(WorkloadError::MissingToken)?;
        let review = self
            .reviewer
            .review(token)
            .await
            .map_err(WorkloadError::Unavailable)?;
        pod_identity_from_review(&review, &self.settings.service_account)
    }

    /// The caller's pod, checked against the caller and `request_id` ([`check_pod`]).
    async fn workload_pod(
        &self,
        caller: &PodIdentity,
        request_id: &str,
    ) -> Result<Pod, WorkloadError> {
        let pod = self
            .pods
            .pod(&caller.namespace, &caller.pod)
            .await
            .map_err(WorkloadError::Unavailable)?;
        check_pod(pod.as_ref(), caller, request_id).cloned()
    }

    /// The current behaviour request `id`, when it is for the caller's node.
    fn behaviour_request(
        &self,
        id: &str,
        caller: &PodIdentity,
    ) -> Result<(Arc<CurrentRequest>, &ProbeServing), WorkloadError> {
        let serving = self
            .behaviour
            .as_ref()
            .ok_or_else(|| WorkloadError::NotCurrentRequest(id.to_owned()))?;
        let request = serving
            .requests
            .get(id)
            .ok_or_else(|| WorkloadError::NotCurrentRequest(id.to_owned()))?;
        if request.node != caller.node {
            return Err(WorkloadError::NotRequestNode {
                request_id: id.to_owned(),
                request_node: request.node.clone(),
                node: caller.node.clone(),
            });
        }
        Ok((request, serving))
    }

    /// Authorises a probe pod's fetch for request `id`, exactly as its result would be:
    /// the caller, its pod, the request and the pod's owner.
    async fn authorise_fetch(
        &self,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<(Arc<CurrentRequest>, &ProbeServing), WorkloadError> {
        let caller = self.caller(headers).await?;
        let (request, serving) = self.behaviour_request(id, &caller)?;
        let pod = self.workload_pod(&caller, id).await?;
        check_probe_owner(&pod, &caller, &request)?;
        Ok((request, serving))
    }

    /// The model of `request`, opened once per request.
    async fn view(
        &self,
        serving: &ProbeServing,
        request: &CurrentRequest,
    ) -> Result<Arc<ModelView>, WorkloadError> {
        let cached = serving
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request.id)
            .cloned();
        if let Some(view) = cached {
            return Ok(view);
        }
        let view = Arc::new(
            serving
                .opener
                .open(request)
                .await
                .map_err(WorkloadError::ModelUnavailable)?,
        );
        let mut views = serving.views.lock().unwrap_or_else(|e| e.into_inner());
        views.retain(|id, _| serving.requests.get(id).is_some());
        views.insert(request.id.clone(), view.clone());
        Ok(view)
    }

    /// Runs every check; on success the result is stored (`true`: it was new).
    async fn accept(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<(Receipt, bool), WorkloadError> {
        let caller = self.caller(headers).await?;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => WorkloadError::TooLarge,
            _ => WorkloadError::Malformed(format!("request body: {e}")),
        })?;
        let kinds: &[WorkloadKind] = if self.behaviour.is_some() {
            &[WorkloadKind::GpuSelfTest, WorkloadKind::BehaviourProbes]
        } else {
            &[WorkloadKind::GpuSelfTest]
        };
        let result = check_result(&body, &caller, self.settings.accept_simulated, kinds)?;
        match result.kind {
            WorkloadKind::GpuSelfTest => self.accept_self_test(caller, result).await,
            WorkloadKind::BehaviourProbes => self.accept_probes(caller, result).await,
        }
    }

    async fn accept_self_test(
        &self,
        caller: PodIdentity,
        result: WorkloadResult,
    ) -> Result<(Receipt, bool), WorkloadError> {
        let evidence = self
            .evidence
            .get(&caller.node)
            .ok_or_else(|| WorkloadError::NoEvidence(caller.node.clone()))?;
        if !result.nonce.eq_ignore_ascii_case(&evidence.evidence.nonce) {
            return Err(WorkloadError::StaleNonce {
                node: caller.node.clone(),
                result_nonce: result.nonce,
                current: evidence.evidence.nonce.clone(),
            });
        }
        let pod = self.workload_pod(&caller, &result.request_id).await?;
        let attestation = gpu_owner(&pod, &caller)?;
        let accepted = AcceptedResult {
            node: caller.node.clone(),
            attestation,
            pod: format!("{}/{}", caller.namespace, caller.pod),
            result,
            received_at: Timestamp::now(),
        };
        let receipt = Receipt {
            node: accepted.node.clone(),
            request_id: accepted.result.request_id.clone(),
            attestation: accepted.attestation.name.clone(),
            passed: accepted.result.passed,
        };
        // A pod that retries after a lost response posts the same result again; a
        // different one for the same request would let it change its answer.
        if let Some(previous) = self.results.get(&accepted.node, &accepted.attestation.name)
            && previous.attestation == accepted.attestation
            && previous.result.request_id == accepted.result.request_id
        {
            return if previous.result == accepted.result {
                Ok((receipt, false))
            } else {
                Err(WorkloadError::AlreadyReported(
                    accepted.result.request_id.clone(),
                ))
            };
        }
        self.results.accept(accepted);
        Ok((receipt, true))
    }

    async fn accept_probes(
        &self,
        caller: PodIdentity,
        result: WorkloadResult,
    ) -> Result<(Receipt, bool), WorkloadError> {
        let (request, serving) = self.behaviour_request(&result.request_id, &caller)?;
        check_probe_result(&result, &request)?;
        let pod = self.workload_pod(&caller, &request.id).await?;
        check_probe_owner(&pod, &caller, &request)?;
        let receipt = Receipt {
            node: caller.node.clone(),
            request_id: request.id.clone(),
            attestation: format!("{}/{}", request.model.namespace, request.model.name),
            passed: result.passed,
        };
        let accepted = AcceptedProbes {
            pod: format!("{}/{}", caller.namespace, caller.pod),
            result,
            received_at: Timestamp::now(),
        };
        match serving.requests.accept(&request.id, accepted) {
            Ok(new) => Ok((receipt, new)),
            Err(NotStored::NotCurrent) => Err(WorkloadError::NotCurrentRequest(request.id.clone())),
            Err(NotStored::AlreadyReported) => {
                Err(WorkloadError::AlreadyReported(request.id.clone()))
            }
        }
    }
}

/// Counts a fetch and answers it (or its refusal).
fn fetched(
    api: &WorkloadApi,
    id: &str,
    what: &str,
    r: Result<Response, WorkloadError>,
) -> Response {
    match r {
        Ok(response) => {
            api.metrics.fetches.with_label_values(&["served"]).inc();
            tracing::debug!(request = %id, what, "model fetch served");
            response
        }
        Err(e) => {
            api.metrics.fetches.with_label_values(&[e.label()]).inc();
            tracing::warn!(request = %id, what, error = %e, "model fetch refused");
            e.into_response()
        }
    }
}

/// `GET /v1/workload-models/{id}/suite`
async fn suite(
    State(api): State<Arc<WorkloadApi>>,
    AxumPath(id): AxumPath<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (request, _) = api.authorise_fetch(&headers, &id).await?;
        Ok((
            [(header::CONTENT_TYPE, "application/yaml")],
            Bytes::copy_from_slice(&request.suite),
        )
            .into_response())
    }
    .await;
    fetched(&api, &id, "suite", r)
}

/// `GET /v1/workload-models/{id}/files`
async fn files(
    State(api): State<Arc<WorkloadApi>>,
    AxumPath(id): AxumPath<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (request, serving) = api.authorise_fetch(&headers, &id).await?;
        let view = api.view(serving, &request).await?;
        Ok(axum::Json(ModelFiles {
            manifest_digest: request.manifest_digest.clone(),
            files: view.files.clone(),
        })
        .into_response())
    }
    .await;
    fetched(&api, &id, "files", r)
}

/// `GET /v1/workload-models/{id}/files/{*path}`: one listed file, streamed.
async fn file(
    State(api): State<Arc<WorkloadApi>>,
    AxumPath((id, path)): AxumPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (request, serving) = api.authorise_fetch(&headers, &id).await?;
        if path.is_empty()
            || path.starts_with('/')
            || path.contains(['\\', '\0'])
            || path
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(WorkloadError::Malformed(format!(
                "{path:?} is not a model-relative path"
            )));
        }
        let view = api.view(serving, &request).await?;
        let listed = view
            .file(&path)
            .ok_or_else(|| WorkloadError::NoSuchFile(path.clone()))?;
        let mut response = view.stream(listed).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(listed.size));
        Ok(response)
    }
    .await;
    fetched(&api, &id, "file", r)
}

/// `POST /v1/workload-results`
async fn submit(
    State(api): State<Arc<WorkloadApi>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match api.accept(&headers, body).await {
        Ok((receipt, new)) => {
            let outcome = if new { "accepted" } else { "duplicate" };
            api.metrics.results.with_label_values(&[outcome]).inc();
            tracing::info!(
                node = %receipt.node,
                attestation = %receipt.attestation,
                request = %receipt.request_id,
                passed = receipt.passed,
                outcome,
                "workload result accepted"
            );
            let status = if new {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(receipt)).into_response()
        }
        Err(e) => {
            api.metrics.results.with_label_values(&[e.label()]).inc();
            tracing::warn!(error = %e, "workload result refused");
            e.into_response()
        }
    }
}

#[cfg(test)]
#[path = "workload_api_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "workload_probe_tests.rs"]
mod probe_tests;
