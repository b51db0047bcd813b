//! The HTTP side: the admission router (served over TLS), the operations router
//! (`/healthz`, `/readyz`, `/metrics`, plain HTTP on its own port), and the TLS accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Reviewed, WorkloadEnforcement, review_body_with};
use crate::metrics::Metrics;
use crate::reload::PolicyStore;
use crate::tls::TlsStore;

/// Default request body limit. The API server caps a request at 3 MiB and an UPDATE carries
/// the object twice, so 8 MiB leaves room for the largest objects with margin.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Admission paths. All run the same code; separate paths let the webhook configuration
/// give pods, workloads and the lotabots resources different failure policies, as Pod
/// Security Admission's own layout does.
///
/// Pods (and `pods/ephemeralcontainers`): enforced violations deny. Also the path of the
/// pod deletes in the workload namespace (`agent-pod-deletes.webhook.lotabots.io`), where
/// an agent's delete is bound to its node ([`crate::node_binding`]).
pub const PODS_PATH: &str = "/validate/pods";
/// Workloads: enforced violations come back as warnings (the pods they create are denied
/// at the pods path).
pub const WORKLOADS_PATH: &str = "/validate/workloads";
/// The lotabots custom resources.
pub const LOTABOTS_PATH: &str = "/validate/lotabots";

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request body. The API server sends the whole
/// review at once and gives up after `timeoutSeconds` (at most 30 s) anyway.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further ones wait in the listen backlog, so a flood of
/// idle connections cannot exhaust memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 4096;

/// What the handlers share.
pub struct AppState {
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Set once the admission listener is serving.
    pub ready: Arc<AtomicBool>,
}

/// The admission router: `POST /validate/pods`, `/validate/workloads`,
/// `/validate/lotabots`.
pub fn admission_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            PODS_PATH,
            post(|s, r| validate(s, r, WorkloadEnforcement::Deny)),
        )
        .route(
            WORKLOADS_PATH,
            post(|s, r| validate(s, r, WorkloadEnforcement::Warn)),
        )
        .route(
            LOTABOTS_PATH,
            post(|s, r| validate(s, r, WorkloadEnforcement::Deny)),
        )
        .with_state(state)
}

/// The operations router: `/healthz`, `/readyz`, `/metrics`.
pub fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving yet").into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn too_large(s: &AppState) -> Response {
    s.metrics
        .request_errors
        .with_label_values(&["body_too_large"])
        .inc();
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body exceeds the {}-byte limit of lotabots-webhook (--max-body-bytes)",
            s.max_body_bytes
        ),
    )
        .into_response()
}

async fn validate(
    State(s): State<Arc<AppState>>,
    req: Request<Body>,
    workloads: WorkloadEnforcement,
) -> Response {
    // Refuse early when the client declares a body that is too large.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body_bytes as u64) {
        return too_large(&s);
    }
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), s.max_body_bytes).collect(),
    );
    let body = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(&s),
        Err(_) => {
            s.metrics
                .request_errors
                .with_label_values(&["body_timeout"])
                .inc();
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
                .into_response();
        }
        Ok(Err(e)) => {
            s.metrics
                .request_errors
                .with_label_values(&["body_read"])
                .inc();
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
                .into_response();
        }
    };
    let start = Instant::now();
    let policy = s.policy.get();
    match review_body_with(&policy, &body, workloads) {
        Ok(r) => {
            s.metrics.record(&r, start.elapsed().as_secs_f64());
            log(&r);
            match serde_json::to_vec(&r.response) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        Err(e) => {
            s.metrics
                .request_errors
                .with_label_values(&["bad_review"])
                .inc();
            tracing::warn!(error = %e, "undecodable AdmissionReview");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

fn log(r: &Reviewed) {
    let decision = r.verdict.decision();
    let audits = r.verdict.audits();
    if !audits.is_empty() {
        tracing::info!(object = %r.object, dry_run = r.dry_run, violations = ?audits, "audit-mode violations");
    }
    match r.verdict.denial() {
        Some(d) => {
            tracing::info!(object = %r.object, operation = ?r.operation, dry_run = r.dry_run, %decision, reason = %d.message, "admission")
        }
        None => {
            tracing::debug!(object = %r.object, operation = ?r.operation, dry_run = r.dry_run, %decision, "admission")
        }
    }
}

/// Serves `app` over TLS on `listener`, taking the TLS configuration in force at each new
/// connection (so a reloaded certificate applies from the next connection on). Runs until
/// accepting fails.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<TlsStore>,
    app: Router,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            // Out of file descriptors and the like: wait a moment rather than spin.
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.get());
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, tcp, peer, app).await;
            drop(slot);
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24) // ENFILE, EMFILE
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
