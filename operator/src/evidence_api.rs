//! The evidence API node agents talk to:
//!
//! - `POST /v1/challenges` → a single-use nonce bound to the caller's node;
//! - `POST /v1/evidence/gpu` → evidence bound to that nonce, accepted for judging.
//!
//! Every replica may serve it. Nonces carry their own proof ([`crate::challenges`]), so a
//! challenge from one replica is checked by another; with the evidence store
//! ([`SharedAcceptance`], PostgreSQL) the nonce is consumed and the evidence stored in one
//! transaction that every replica sees, and the leader loads what any replica accepted.
//! Without it, single use and accepted evidence live in this process: one replica only.
//!
//! Every request carries the agent's projected ServiceAccount token; the node it speaks
//! for is the node the API server bound that token to, never a field the caller chose.
//! Bodies are size-limited and decoded strictly; each node is rate-limited; every refusal
//! has a clear message and is counted by outcome.
//!
//! The API does not judge evidence against policies: it establishes that the evidence is
//! fresh and comes from the node it names, and hands it to an [`EvidenceSink`] (the
//! controller), which applies each policy with the verifier.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use lotabots_crds::evidence::{NodeEvidence, NonceOrigin, SCHEMA_VERSION, parse_nonce};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use serde_json::json;

use crate::auth::{AgentIdentity, AuthError, Authenticator};
use crate::challenges::{ChallengeError, ChallengeKey, Challenges, Nonce, Verified};

/// Largest evidence document accepted. An 8-GPU node with MIG instances and CC reports
/// is well under 256 KiB; anything much larger is not evidence.
pub const MAX_EVIDENCE_BYTES: usize = 1024 * 1024;

/// Evidence that passed the API's checks: authenticated, for the token's node, bound to
/// a nonce this operator issued to that node and not used before.
#[derive(Clone, Debug)]
pub struct AcceptedEvidence {
    /// The node.
    pub node: String,
    /// The evidence.
    pub evidence: NodeEvidence,
    /// Its digest (`sha256:` over the canonical JSON).
    pub digest: String,
    /// When the operator received it.
    pub received_at: Timestamp,
}

/// Where replicas share what they accept (the evidence store's PostgreSQL).
pub trait SharedAcceptance: Send + Sync + 'static {
    /// Consumes `nonce` and stores `evidence` for every replica, in one step: `Ok(false)`
    /// when the nonce was used before (nothing is stored then). What it stores reaches
    /// the [`EvidenceSink`]s of all replicas through the store, not through the API.
    fn accept<'a>(
        &'a self,
        evidence: &'a AcceptedEvidence,
        nonce: &'a Verified,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// Where accepted evidence goes.
pub trait EvidenceSink: Send + Sync + 'static {
    /// Takes one accepted submission.
    fn accept(&self, evidence: AcceptedEvidence);
}

/// The latest accepted evidence per node: the sink the controller reads.
pub struct LatestEvidence {
    by_node: Mutex<HashMap<String, Arc<AcceptedEvidence>>>,
    /// Counts submissions, so that the controller wakes when evidence arrives.
    arrivals: tokio::sync::watch::Sender<u64>,
}

impl Default for LatestEvidence {
    fn default() -> Self {
        Self {
            by_node: Mutex::default(),
            arrivals: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl LatestEvidence {
    /// Changes on every accepted submission.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// The latest evidence of `node`.
    pub fn get(&self, node: &str) -> Option<Arc<AcceptedEvidence>> {
        self.by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    /// The latest evidence of every node.
    pub fn all(&self) -> Vec<Arc<AcceptedEvidence>> {
        self.by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// How many nodes have submitted.
    pub fn len(&self) -> usize {
        self.by_node.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no node has submitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `evidence` accepted by any replica (loaded from the store) unless what is
    /// held for its node is as new; returns whether it changed anything. Waking the
    /// controller only on a change keeps reloads (after a reconnect, on taking the lead)
    /// from judging again what it already judged.
    pub fn load(&self, evidence: AcceptedEvidence) -> bool {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get(&evidence.node)
            && held.received_at >= evidence.received_at
        {
            return false;
        }
        map.insert(evidence.node.clone(), Arc::new(evidence));
        drop(map);
        self.arrivals.send_modify(|n| *n = n.wrapping_add(1));
        true
    }
}

impl EvidenceSink for LatestEvidence {
    fn accept(&self, evidence: AcceptedEvidence) {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(evidence.node.clone(), Arc::new(evidence));
        drop(map);
        self.arrivals.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Requests per node: a steady rate and a burst.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Sustained requests per minute.
    pub per_minute: NonZeroU32,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    fn default() -> Self {
        // An agent needs two requests per attestation; a few policies re-attesting every
        // minute stay far below this.
        Self {
            per_minute: NonZeroU32::new(60).expect("non-zero"),
            burst: NonZeroU32::new(20).expect("non-zero"),
        }
    }
}

/// The API's counters.
#[derive(Clone)]
pub struct ApiMetrics {
    challenges: IntCounterVec,
    submissions: IntCounterVec,
}

impl ApiMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let challenges = IntCounterVec::new(
            Opts::new("lotabots_challenges_total", "Challenge requests by outcome"),
            &["outcome"],
        )?;
        let submissions = IntCounterVec::new(
            Opts::new(
                "lotabots_evidence_submissions_total",
                "GPU evidence submissions by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(challenges.clone()))?;
        registry.register(Box::new(submissions.clone()))?;
        Ok(Self {
            challenges,
            submissions,
        })
    }

    /// Submissions counted with `outcome` so far.
    pub fn submissions(&self, outcome: &str) -> u64 {
        self.submissions.with_label_values(&[outcome]).get()
    }

    /// Challenges counted with `outcome` so far.
    pub fn challenges(&self, outcome: &str) -> u64 {
        self.challenges.with_label_values(&[outcome]).get()
    }
}

/// Everything the handlers share.
pub struct EvidenceApi {
    challenges: Challenges,
    auth: Arc<dyn Authenticator>,
    limiter: DefaultKeyedRateLimiter<String>,
    sink: Arc<dyn EvidenceSink>,
    metrics: ApiMetrics,
    shared: Option<Arc<dyn SharedAcceptance>>,
}

impl EvidenceApi {
    /// An API issuing nonces valid for `nonce_ttl` under a random key of its own, with
    /// single use in this process: one replica. [`EvidenceApi::with_key`] and
    /// [`EvidenceApi::with_shared`] make it one of several.
    pub fn new(
        auth: Arc<dyn Authenticator>,
        sink: Arc<dyn EvidenceSink>,
        nonce_ttl: Duration,
        rate: RateLimit,
        metrics: ApiMetrics,
    ) -> Self {
        let quota = Quota::per_minute(rate.per_minute).allow_burst(rate.burst);
        Self {
            challenges: Challenges::new(ChallengeKey::random(), nonce_ttl),
            auth,
            limiter: RateLimiter::keyed(quota),
            sink,
            metrics,
            shared: None,
        }
    }

    /// Issues and checks nonces with `key`, the key every replica shares.
    pub fn with_key(mut self, key: ChallengeKey) -> Self {
        self.challenges = Challenges::new(key, self.challenges.ttl());
        self
    }

    /// Consumes nonces and stores accepted evidence in `shared`, so that single use
    /// holds across replicas and the leader sees what any replica accepted.
    pub fn with_shared(mut self, shared: Arc<dyn SharedAcceptance>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/challenges", post(challenge))
            .route("/v1/evidence/gpu", post(submit_gpu))
            // The handlers read the body as `Bytes` and turn an oversized one into a
            // clear JSON error themselves.
            .layer(DefaultBodyLimit::max(MAX_EVIDENCE_BYTES))
            .with_state(self)
    }

    /// Authenticates the caller and charges its node's rate limit.
    async fn caller(&self, headers: &HeaderMap) -> Result<AgentIdentity, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Auth(AuthError::MissingToken))?;
        let id = self
            .auth
            .authenticate(token)
            .await
            .map_err(ApiError::Auth)?;
        self.limiter
            .check_key(&id.node)
            .map_err(|_| ApiError::RateLimited(id.node.clone()))?;
        Ok(id)
    }

    /// Checks one evidence document from `caller` and consumes its nonce; on success it
    /// is handed to the sink.
    async fn accept_gpu(
        &self,
        caller: &AgentIdentity,
        body: &[u8],
    ) -> Result<AcceptedEvidence, ApiError> {
        let now = Timestamp::now();
        let (accepted, verified) = self.check_gpu(caller, body, now)?;
        match &self.shared {
            Some(shared) => match shared.accept(&accepted, &verified).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ApiError::Nonce(ChallengeError::Replayed(
                        verified.nonce.short(),
                    )));
                }
                Err(e) => return Err(ApiError::StoreUnavailable(format!("{e:#}"))),
            },
            None => self
                .challenges
                .consume_locally(verified, now)
                .map_err(ApiError::Nonce)?,
        }
        Ok(accepted)
    }

    /// The checks that need no state: the document, its node, its nonce's proof.
    fn check_gpu(
        &self,
        caller: &AgentIdentity,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(AcceptedEvidence, Verified), ApiError> {
        let evidence: NodeEvidence =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                .map_err(|e| {
                    ApiError::Malformed(format!("evidence at {}: {}", e.path(), e.inner()))
                })?;
        if evidence.schema_version != SCHEMA_VERSION {
            return Err(ApiError::Malformed(format!(
                "schemaVersion {:?} is not supported (expected {SCHEMA_VERSION})",
                evidence.schema_version
            )));
        }
        if evidence.node_name != caller.node {
            return Err(ApiError::WrongNode {
                token_node: caller.node.clone(),
                evidence_node: evidence.node_name,
            });
        }
        if evidence.nonce_origin != NonceOrigin::Verifier {
            return Err(ApiError::Malformed(
                "nonceOrigin must be \"verifier\": fetch a challenge first".into(),
            ));
        }
        let nonce =
            parse_nonce(&evidence.nonce).map_err(|e| ApiError::Malformed(format!("nonce: {e}")))?;
        let verified = self
            .challenges
            .verify(Nonce(nonce), &caller.node, now)
            .map_err(ApiError::Nonce)?;
        let digest = evidence
            .digest()
            .map_err(|e| ApiError::Malformed(format!("evidence does not canonicalise: {e}")))?;
        // PostgreSQL keeps microseconds: the same instant here and in the store, so that
        // a replica loading its own submission back sees nothing newer.
        let received_at = Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now);
        Ok((
            AcceptedEvidence {
                node: caller.node.clone(),
                evidence,
                digest,
                received_at,
            },
            verified,
        ))
    }
}

/// `POST /v1/challenges`
async fn challenge(State(api): State<Arc<EvidenceApi>>, headers: HeaderMap) -> Response {
    let result = async {
        let caller = api.caller(&headers).await?;
        let ttl = api.challenges.ttl();
        let (nonce, expires_at) = api.challenges.issue(&caller.node, Timestamp::now());
        tracing::debug!(node = %caller.node, ?nonce, "challenge issued");
        Ok::<_, ApiError>(Challenge {
            nonce: nonce.to_hex(),
            node: caller.node,
            expires_at,
            ttl_seconds: ttl.as_secs(),
        })
    }
    .await;
    match result {
        Ok(c) => {
            api.metrics.challenges.with_label_values(&["issued"]).inc();
            (StatusCode::CREATED, axum::Json(c)).into_response()
        }
        Err(e) => {
            api.metrics.challenges.with_label_values(&[e.label()]).inc();
            e.into_response()
        }
    }
}

/// `POST /v1/evidence/gpu`
async fn submit_gpu(
    State(api): State<Arc<EvidenceApi>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let caller = api.caller(&headers).await?;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            _ => ApiError::Malformed(format!("request body: {e}")),
        })?;
        api.accept_gpu(&caller, &body).await
    }
    .await;
    match result {
        Ok(accepted) => {
            api.metrics
                .submissions
                .with_label_values(&["accepted"])
                .inc();
            tracing::info!(node = %accepted.node, digest = %accepted.digest, gpus = accepted.evidence.gpus.len(), "evidence accepted");
            let receipt = Receipt {
                node: accepted.node.clone(),
                digest: accepted.digest.clone(),
            };
            // With a store, the store announces it to every replica, this one included
            // (`evidence_store::follow_evidence`), so that each replica's memory follows
            // the store's order rather than whichever request finished last here.
            if api.shared.is_none() {
                api.sink.accept(accepted);
            }
            (StatusCode::ACCEPTED, axum::Json(receipt)).into_response()
        }
        Err(e) => {
            api.metrics
                .submissions
                .with_label_values(&[e.label()])
                .inc();
            tracing::warn!(error = %e, "evidence refused");
            e.into_response()
        }
    }
}

/// A challenge as returned to the agent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Challenge {
    nonce: String,
    node: String,
    expires_at: Timestamp,
    ttl_seconds: u64,
}

/// What an accepted submission returns.
#[derive(Serialize)]
struct Receipt {
    node: String,
    digest: String,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The caller is not an agent of a node.
    #[error(transparent)]
    Auth(AuthError),
    /// Too many requests from one node.
    #[error("too many requests from node {0:?}; retry later")]
    RateLimited(String),
    /// Over [`MAX_EVIDENCE_BYTES`].
    #[error("evidence larger than {MAX_EVIDENCE_BYTES} bytes")]
    TooLarge,
    /// Not an evidence document.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// The evidence names another node than the token.
    #[error("the token is bound to node {token_node:?} but the evidence is for {evidence_node:?}")]
    WrongNode {
        /// The node of the token.
        token_node: String,
        /// The node named in the evidence.
        evidence_node: String,
    },
    /// The nonce is not a live challenge of this node.
    #[error(transparent)]
    Nonce(ChallengeError),
    /// The evidence store, where replicas share nonces and evidence, failed: nothing was
    /// accepted; the agent retries with a new challenge.
    #[error("the evidence store is unavailable, nothing was accepted: {0}")]
    StoreUnavailable(String),
}

impl ApiError {
    /// A short label for metrics and the error body.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Auth(e) => e.label(),
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::TooLarge => "too_large",
            ApiError::Malformed(_) => "malformed",
            ApiError::WrongNode { .. } => "wrong_node",
            ApiError::Nonce(e) => e.label(),
            ApiError::StoreUnavailable(_) => "store_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(AuthError::Unavailable(_)) | ApiError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Auth(AuthError::MissingToken | AuthError::Rejected(_)) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Auth(_) | ApiError::WrongNode { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Nonce(_) => StatusCode::CONFLICT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.label(), "message": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}
