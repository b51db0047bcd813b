//! The client REST API: for CI pipelines, schedulers, relying parties and auditors, on a
//! TLS listener of its own, apart from the agents' evidence API.
//!
//! - `GET /v1/gpu-attestations[/{name}]`, `GET /v1/model-attestations`,
//!   `GET /v1/namespaces/{ns}/model-attestations/{name}`: verdicts and reasons, paged
//!   and filtered;
//! - `POST /v1/namespaces/{ns}/model-attestations`: request a model attestation;
//! - `POST /v1/nodes/{node}/token`, `POST /v1/namespaces/{ns}/model-attestations/{name}/token`:
//!   a signed attestation token ([`crate::tokens`]);
//! - `GET /v1/audit`, `GET /v1/audit/verify`: the audit trail and its chain;
//! - `GET /.well-known/jwks.json`, `GET /openapi.json`: public.
//!
//! Callers authenticate with OIDC or ServiceAccount tokens ([`auth`]); roles and
//! namespaces are checked per route ([`roles`]); rate, size and time are limited
//! ([`limits`]); errors are RFC 9457 problem details ([`problem`]).

pub mod audit;
pub mod auth;
pub mod config;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod roles;
pub mod routes;
pub mod serve;
pub mod source;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use self::audit::AuditTrail;
use self::auth::ClientAuthenticator;
use self::limits::{Limits, RateLimiters};
use self::problem::ApiError;
use self::source::{Attestations, ModelRequests};
use crate::tokens::TokenSigner;

/// The client API's metrics.
#[derive(Clone)]
pub struct ClientApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    tokens: IntCounterVec,
}

impl ClientApiMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "lotabots_client_api_requests_total",
                "Client API requests by route and status",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lotabots_client_api_request_duration_seconds",
                "Client API request durations by route",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["route"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "lotabots_attestation_tokens_issued_total",
                "Attestation tokens issued by subject kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Self {
            requests,
            duration,
            tokens,
        })
    }

    /// Requests counted for `route` with `status`.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .get()
    }
}

/// Everything the handlers share.
pub struct ClientApi {
    auth: ClientAuthenticator,
    data: Attestations,
    models: Arc<dyn ModelRequests>,
    audit: Option<Arc<dyn AuditTrail>>,
    signer: TokenSigner,
    limits: Limits,
    limiters: RateLimiters,
    metrics: ClientApiMetrics,
}

/// What the API is built from.
pub struct ClientApiParts {
    /// Authenticates callers.
    pub auth: ClientAuthenticator,
    /// The attestations.
    pub data: Attestations,
    /// Creates ModelAttestations.
    pub models: Arc<dyn ModelRequests>,
    /// The audit trail, when a store is configured.
    pub audit: Option<Arc<dyn AuditTrail>>,
    /// Signs attestation tokens.
    pub signer: TokenSigner,
    /// Limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: ClientApiMetrics,
}

impl ClientApi {
    /// The API.
    pub fn new(parts: ClientApiParts) -> Self {
        Self {
            limiters: RateLimiters::new(&parts.limits),
            auth: parts.auth,
            data: parts.data,
            models: parts.models,
            audit: parts.audit,
            signer: parts.signer,
            limits: parts.limits,
            metrics: parts.metrics,
        }
    }

    /// The routes, with the body limit, the deadline and the metrics around them.
    /// Serve with `into_make_service_with_connect_info::<SocketAddr>()` so that the
    /// per-address rate limit sees the client's address.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/gpu-attestations", get(routes::list_gpu))
            .route("/v1/gpu-attestations/{name}", get(routes::get_gpu))
            .route("/v1/model-attestations", get(routes::list_models))
            .route(
                "/v1/namespaces/{namespace}/model-attestations",
                post(routes::create_model),
            )
            .route(
                "/v1/namespaces/{namespace}/model-attestations/{name}",
                get(routes::get_model),
            )
            .route(
                "/v1/namespaces/{namespace}/model-attestations/{name}/token",
                post(routes::model_token),
            )
            .route("/v1/nodes/{node}/token", post(routes::node_token))
            .route("/v1/audit", get(routes::audit))
            .route("/v1/audit/verify", get(routes::audit_verify))
            .route("/.well-known/jwks.json", get(routes::jwks))
            .route("/openapi.json", get(routes::openapi))
            .fallback(|| async { ApiError::NotFound("no such route".into()) })
            .method_not_allowed_fallback(|| async {
                ApiError::NotFound("no such method on this route".into())
            })
            .layer(DefaultBodyLimit::max(self.limits.body_bytes))
            .layer(middleware::from_fn_with_state(
                self.clone(),
                deadline_and_metrics,
            ))
            .with_state(self)
    }

    /// Drops rate-limiter state of clients that went quiet; call now and then.
    pub fn housekeep(&self) {
        self.limiters.housekeep();
    }
}

/// Times out slow requests with a problem body, and counts and times every request by
/// its route template (never by the raw path: names would explode the label set).
async fn deadline_and_metrics(
    State(api): State<Arc<ClientApi>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = match tokio::time::timeout(api.limits.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(api.limits.timeout).into_response(),
    };
    api.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    api.metrics
        .duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Runs [`ClientApi::housekeep`] every `every`, forever.
pub async fn housekeeping(api: Arc<ClientApi>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        api.housekeep();
    }
}
