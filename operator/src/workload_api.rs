//! `POST /v1/workload-results`: where the isolated workload pods post their GPU self-test
//! results, on the evidence API's listener.
//!
//! A result is believed only as far as what vouches for it:
//!
//! - the caller presents a projected token of the workload ServiceAccount
//!   (`lotabots-workloads/lotabots-workload` unless configured otherwise — never the
//!   agent's), for the audience `lotabots`, that the API server bound to a pod: its
//!   TokenReview names the pod (name and UID) and its node, and refuses tokens of pods
//!   that no longer exist;
//! - that pod still exists with that UID, runs on that node, carries the label
//!   `lotabots.io/workload-id` equal to the result's `requestId`, and is owned by the
//!   GpuAttestation the result is filed under;
//! - the result names the token's node and carries the nonce of that node's latest
//!   accepted evidence, so it cannot be replayed onto another round or another node;
//! - simulated self-tests are refused unless the operator runs with
//!   `--accept-simulated-workloads` (test clusters).
//!
//! Every refusal is an RFC 9457 problem document naming what was wrong, is counted in
//! `lotabots_workload_results_total{outcome}`, and stores nothing.
//!
//! Results are held in the leader's memory, where its controller reads them: a replica
//! that does not lead (it may serve the evidence API with a shared store) answers `503`
//! with `Retry-After`, and the pod retries until the Service routes it to the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lotabots_crds::labels;
use lotabots_crds::workload::{
    self, RESULT_PATH, RESULT_SCHEMA_VERSION, WorkloadKind, WorkloadResult,
};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;

use crate::auth::{
    AUDIENCE, NODE_NAME_EXTRA, ReviewRefusal, bound_extra, reviewed_user, service_account_of,
};
use crate::client_api::problem::{PROBLEM_JSON, Problem};
use crate::evidence_api::LatestEvidence;
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
    #[error("kind {0:?} is not accepted here: only gpuSelfTest results are folded into a verdict")]
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
            | NoOwner(_) => StatusCode::FORBIDDEN,
            Unavailable(_) | NotLeader => StatusCode::SERVICE_UNAVAILABLE,
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

/// Checks the pod the token is bound to against the caller and the result; returns the
/// GpuAttestation that owns it. Pure.
pub fn check_pod(
    pod: Option<&Pod>,
    caller: &PodIdentity,
    result: &WorkloadResult,
) -> Result<AttestationRef, WorkloadError> {
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
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::WORKLOAD_ID));
    if label.map(String::as_str) != Some(result.request_id.as_str()) {
        return Err(WorkloadError::WrongRequest {
            pod: name,
            label: labels::WORKLOAD_ID,
            found: label.cloned(),
            request_id: result.request_id.clone(),
        });
    }
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "GpuAttestation" && o.api_version.starts_with("lotabots.io/"))
        .map(|o| AttestationRef {
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
        .ok_or(WorkloadError::NoOwner(name))
}

/// Decodes and checks a result's own content against the caller; pure.
pub fn check_result(
    body: &[u8],
    caller: &PodIdentity,
    accept_simulated: bool,
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
    if result.kind != WorkloadKind::GpuSelfTest {
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
    if result.passed && result.self_test.is_none() {
        return Err(WorkloadError::Malformed(
            "a passing self-test must carry selfTest".into(),
        ));
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
        registry.register(Box::new(results.clone()))?;
        Ok(Self { results })
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
}

/// What an accepted result returns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Receipt {
    node: String,
    request_id: String,
    attestation: String,
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
        }
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
            // The handler reads the body as `Bytes` and answers an oversized one itself.
            .layer(DefaultBodyLimit::max(MAX_RESULT_BYTES))
            .with_state(self)
    }

    /// Runs every check; on success the result is stored (`true`: it was new).
    async fn accept(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<(AcceptedResult, bool), WorkloadError> {
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
        let caller = pod_identity_from_review(&review, &self.settings.service_account)?;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => WorkloadError::TooLarge,
            _ => WorkloadError::Malformed(format!("request body: {e}")),
        })?;
        let result = check_result(&body, &caller, self.settings.accept_simulated)?;
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
        let pod = self
            .pods
            .pod(&caller.namespace, &caller.pod)
            .await
            .map_err(WorkloadError::Unavailable)?;
        let attestation = check_pod(pod.as_ref(), &caller, &result)?;
        let accepted = AcceptedResult {
            node: caller.node.clone(),
            attestation,
            pod: format!("{}/{}", caller.namespace, caller.pod),
            result,
            received_at: Timestamp::now(),
        };
        // A pod that retries after a lost response posts the same result again; a
        // different one for the same request would let it change its answer.
        if let Some(previous) = self.results.get(&accepted.node, &accepted.attestation.name)
            && previous.attestation == accepted.attestation
            && previous.result.request_id == accepted.result.request_id
        {
            return if previous.result == accepted.result {
                Ok(((*previous).clone(), false))
            } else {
                Err(WorkloadError::AlreadyReported(
                    accepted.result.request_id.clone(),
                ))
            };
        }
        self.results.accept(accepted.clone());
        Ok((accepted, true))
    }
}

/// `POST /v1/workload-results`
async fn submit(
    State(api): State<Arc<WorkloadApi>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match api.accept(&headers, body).await {
        Ok((accepted, new)) => {
            let outcome = if new { "accepted" } else { "duplicate" };
            api.metrics.results.with_label_values(&[outcome]).inc();
            tracing::info!(
                node = %accepted.node,
                attestation = %accepted.attestation.name,
                pod = %accepted.pod,
                request = %accepted.result.request_id,
                passed = accepted.result.passed,
                outcome,
                "workload result accepted"
            );
            let receipt = Receipt {
                node: accepted.node,
                request_id: accepted.result.request_id,
                attestation: accepted.attestation.name,
            };
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
