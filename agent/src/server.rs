//! `serve`: measures the GPUs on an interval and serves `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::backend::{BackendError, GpuBackend, ProbeRequest, collect};
use crate::metrics::GpuMetrics;

/// What `serve` needs besides the backend.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Time between probes.
    pub interval: Duration,
    /// The `Hostname` label (the node name).
    pub hostname: String,
}

/// State shared by the refresher and the handlers.
pub struct AgentState {
    metrics: GpuMetrics,
    ready: AtomicBool,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            metrics: GpuMetrics::new(),
            ready: AtomicBool::new(false),
        }
    }
}

impl AgentState {
    /// The metrics.
    pub fn metrics(&self) -> &GpuMetrics {
        &self.metrics
    }

    /// Marks the agent ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// In `run` mode: how to reach the API server and the operator.
pub struct AttestTo {
    /// The Kubernetes client (GpuAttestations and this node's labels).
    pub kube: kube::Client,
    /// The operator's evidence API.
    pub operator: crate::operator_client::OperatorClient,
    /// How to launch the workload pods GpuAttestations (self-tests) and ModelAttestations
    /// (behavioural probes) ask for; none: launch none.
    pub workloads: Option<crate::launcher::LauncherConfig>,
}

/// The HTTP routes, for tests and for `serve`.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AgentState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Arc<AgentState>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no GPU probe has succeeded yet",
        )
    }
}

/// Probes once into `state`; NVML calls block, so they run off the async thread.
pub async fn refresh(
    backend: Arc<dyn GpuBackend>,
    state: &AgentState,
    hostname: &str,
) -> Result<(), BackendError> {
    let node = hostname.to_owned();
    let result =
        tokio::task::spawn_blocking(move || collect(backend.as_ref(), &ProbeRequest::local(node)))
            .await
            .map_err(|e| BackendError::Query {
                query: "probe task",
                message: e.to_string(),
            })?;
    match result {
        Ok(evidence) => {
            state.metrics.update(&evidence, hostname);
            state.ready.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            state.metrics.probe_failed();
            Err(e)
        }
    }
}

/// Serves until the server fails or the process is interrupted; a failed probe is logged
/// and retried on the next tick rather than ending the agent.
pub async fn serve(
    backend: Box<dyn GpuBackend>,
    cfg: ServeConfig,
    attest: Option<AttestTo>,
) -> Result<(), BackendError> {
    let io = |e: std::io::Error| BackendError::Query {
        query: "metrics server",
        message: e.to_string(),
    };
    let backend: Arc<dyn GpuBackend> = Arc::from(backend);
    let state = Arc::new(AgentState::default());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(io)?;
    tracing::info!(addr = %listener.local_addr().map_err(io)?, "serving /metrics, /healthz, /readyz");
    let attesting = {
        let (backend, state, node) = (backend.clone(), state.clone(), cfg.hostname.clone());
        async move {
            match attest {
                Some(to) => {
                    let launcher = to.workloads.map(|cfg| {
                        Arc::new(crate::launcher::Launcher::new(
                            to.kube.clone(),
                            node.clone(),
                            cfg,
                        ))
                    });
                    let probes = {
                        let (kube, launcher) = (to.kube.clone(), launcher.clone());
                        async move {
                            match launcher {
                                Some(l) => crate::behaviour::run(kube, l).await,
                                None => std::future::pending().await,
                            }
                        }
                    };
                    let attesting = crate::attest::run_loop_launching(
                        to.kube,
                        backend,
                        to.operator,
                        node,
                        state,
                        launcher,
                    );
                    // Either loop ending ends the agent (see the select below).
                    tokio::select! {
                        () = attesting => {}
                        () = probes => {}
                    }
                }
                None => std::future::pending().await,
            }
        }
    };
    let refresher = {
        let state = state.clone();
        async move {
            let mut tick = tokio::time::interval(cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = refresh(backend.clone(), &state, &cfg.hostname).await {
                    tracing::warn!(error = %e, "GPU probe failed");
                }
            }
        }
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    // Supervise both: if the server stops, the agent stops (and Kubernetes restarts it).
    tokio::select! {
        r = server => r.map_err(io),
        () = refresher => Ok(()),
        () = attesting => Ok(()),
    }
}
