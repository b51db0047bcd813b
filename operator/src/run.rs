//! `lotabots-operator run`: the long-running operator.
//!
//! Probes and metrics are served at once (liveness must not wait for leadership); the
//! replica then waits for the Lease, and as leader serves the evidence API over TLS and
//! runs the controller. Losing the Lease, or any of these tasks ending, ends the process
//! with an error so that the pod restarts cleanly; SIGTERM/Ctrl-C end it gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::auth::TokenReviewAuthenticator;
use crate::certs::{self, PkiConfig};
use crate::client_api::audit::AuditTrail;
use crate::controller::{self, Settings};
use crate::evidence_api::{ApiMetrics, EvidenceApi, LatestEvidence, RateLimit};
use crate::evidence_store::{self, VerdictLog};
use crate::leader::{self, LeaseConfig};
use crate::metrics::{CertificateMetrics, ControllerMetrics};
use crate::model_controller::{self, Recording, StatementKey};
use crate::model_inputs::ModelSettings;
use crate::tokens::keys::KeyStore;

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Evidence API address (HTTPS).
    pub listen: SocketAddr,
    /// Issue and rotate the serving certificates (evidence API, webhook) with the
    /// operator's own CA instead of reading `tls_cert`/`tls_key` (e.g. from cert-manager).
    pub manage_certificates: bool,
    /// PEM certificate chain of the evidence API.
    pub tls_cert: PathBuf,
    /// PEM private key of the evidence API.
    pub tls_key: PathBuf,
    /// Probes and metrics address (plain HTTP, inside the pod network).
    pub probe_addr: SocketAddr,
    /// Agent ServiceAccounts (`namespace/name`) allowed to submit evidence.
    pub agents: Vec<String>,
    /// How long a challenge nonce stays valid.
    pub nonce_ttl: Duration,
    /// Controller settings.
    pub settings: Settings,
    /// Leader election.
    pub lease: LeaseConfig,
    /// The client API, if it is served.
    pub client_api: Option<crate::client_api::config::ClientApiSettings>,
    /// The evidence store (PostgreSQL, S3, GCS), if verdicts are recorded.
    pub store: crate::evidence_store::StoreArgs,
    /// The ModelAttestation controller.
    pub models: ModelConfig,
}

/// The ModelAttestation controller's configuration.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Where models are found, how often they are judged again.
    pub settings: ModelSettings,
    /// A PEM P-256 key file the model statements are signed with; `None`: the current
    /// attestation-token signing key (Secret `token_secret`).
    pub statement_key: Option<PathBuf>,
    /// The attestation-token signing Secret in the operator's namespace.
    pub token_secret: String,
    /// Its rotation, when the client API does not keep it (it is not served).
    pub token_rotation: crate::tokens::keys::Rotation,
}

impl Default for ModelConfig {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            settings: ModelSettings {
                model_root: crate::model_inputs::DEFAULT_MODEL_ROOT.into(),
                resync: Duration::from_secs(3600),
            },
            statement_key: None,
            // As `--token-secret` defaults.
            token_secret: "lotabots-token-signing".into(),
            token_rotation: crate::tokens::keys::Rotation::default(),
        }
    }
}

/// The outbox worker and the key reload, until shutdown.
type StoreTask = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs the operator until SIGTERM/Ctrl-C (Ok) or a failure (Err).
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    // Only the ring provider is compiled in; make it the process default for kube's
    // client and the evidence API alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    run_with(client, cfg, shutdown_signal()).await
}

/// Runs the operator with `client` until `shutdown` resolves (Ok) or a failure (Err).
pub async fn run_with(
    client: Client,
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::new();
    let api_metrics = ApiMetrics::register(&registry)?;
    let controller_metrics = ControllerMetrics::register(&registry)?;
    let client_api_metrics = crate::client_api::ClientApiMetrics::register(&registry)?;
    let certificate_metrics = CertificateMetrics::register(&registry)?;
    let leading = Arc::new(AtomicBool::new(false));

    let probes = tokio::net::TcpListener::bind(cfg.probe_addr)
        .await
        .with_context(|| format!("binding the probe address {}", cfg.probe_addr))?;
    let probe_router = probe_routes(registry.clone(), leading.clone());
    let probe_server = tokio::spawn(async move { axum::serve(probes, probe_router).await });

    tokio::pin!(shutdown);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease.namespace);
    tokio::select! {
        r = leader::acquire(&leases, &cfg.lease) => r.context("acquiring the leader Lease")?,
        () = &mut shutdown => return Ok(()),
    }

    // Only the leader records and uploads: one writer of the audit chain's head, one
    // outbox worker (uploads are idempotent anyway).
    let wired =
        evidence_store::connect(&cfg.store, client.clone(), &cfg.lease.namespace, &registry)
            .await
            .context("connecting the evidence store")?;
    let (store_stop, store_stopped) = tokio::sync::watch::channel(false);
    let audit: Option<Arc<dyn AuditTrail>> = wired
        .as_ref()
        .map(|w| w.store.database().clone() as Arc<dyn AuditTrail>);
    let model_log = wired
        .as_ref()
        .map(|w| w.store.clone() as Arc<dyn crate::evidence_store::ModelLog>);
    let (verdict_log, store_task): (Option<Arc<dyn VerdictLog>>, StoreTask) = match wired {
        Some(w) => {
            tracing::info!(database = %w.store.database().target(), "evidence store connected");
            let mut stopped = store_stopped;
            let task = async move {
                tokio::select! {
                    r = w.worker.run(async move { let _ = stopped.wait_for(|s| *s).await; }) => r,
                    () = w.key_reload => Ok(()),
                }
            };
            (Some(w.store as Arc<dyn VerdictLog>), Box::pin(task))
        }
        None => {
            tracing::warn!(
                "LOTABOTS_DATABASE_URL is unset: verdicts are not recorded, only shown in status"
            );
            (None, Box::pin(std::future::pending()))
        }
    };
    tokio::pin!(store_task);

    let (tls, keep_tls_current): (RustlsConfig, Pin<Box<dyn Future<Output = ()> + Send>>) =
        if cfg.manage_certificates {
            let pki = PkiConfig::defaults(&cfg.lease.namespace);
            let round = certs::reconcile_round(&client, &pki, Timestamp::now())
                .await
                .context("issuing the serving certificates")?;
            for change in &round.changes {
                tracing::info!(%change, "certificates");
            }
            certificate_metrics.observe(&round.expiries);
            let tls = own_certificate(&client, &pki).await?;
            (
                tls.clone(),
                Box::pin(rotate(client.clone(), pki, tls, certificate_metrics)),
            )
        } else {
            let tls = RustlsConfig::from_pem_file(&cfg.tls_cert, &cfg.tls_key)
                .await
                .with_context(|| {
                    format!(
                        "loading the TLS certificate {} and key {}",
                        cfg.tls_cert.display(),
                        cfg.tls_key.display()
                    )
                })?;
            let reload = reload_tls(tls.clone(), cfg.tls_cert.clone(), cfg.tls_key.clone());
            (tls, Box::pin(reload))
        };
    let evidence = Arc::new(LatestEvidence::default());
    let auth = Arc::new(TokenReviewAuthenticator::new(
        client.clone(),
        cfg.agents.clone(),
    ));
    let api = Arc::new(EvidenceApi::new(
        auth,
        evidence.clone(),
        cfg.nonce_ttl,
        RateLimit::default(),
        api_metrics,
    ));
    let handle = Handle::new();
    let server = axum_server::bind_rustls(cfg.listen, tls.clone())
        .handle(handle.clone())
        .serve(api.router().into_make_service());
    tracing::info!(listen = %cfg.listen, "evidence API serving");

    // The client API: a listener of its own, with the same certificate.
    let client_api: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> =
        match cfg.client_api.clone() {
            Some(settings) => Box::pin(crate::client_api::serve::serve(
                client.clone(),
                cfg.lease.namespace.clone(),
                settings,
                tls.clone(),
                Some(evidence.clone()),
                audit,
                client_api_metrics,
            )),
            None => Box::pin(std::future::pending()),
        };

    let reporter = Reporter {
        controller: "lotabots-operator".into(),
        instance: Some(cfg.lease.identity.clone()),
    };
    let (model_recording, token_keys) = model_recording(
        &client,
        &cfg.models,
        &cfg.lease.namespace,
        cfg.client_api.is_some(),
        model_log,
    )
    .await?;
    let (model_stop_tx, model_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let model_controller = model_controller::run(
        client.clone(),
        cfg.models.settings.clone(),
        reporter.clone(),
        model_recording,
        async move {
            let _ = model_stop_rx.await;
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = controller::run(
        client,
        evidence,
        cfg.settings,
        controller_metrics,
        reporter,
        verdict_log,
        async move {
            let _ = stop_rx.await;
        },
    );

    // Ready once it leads AND everything a client relies on exists: the certificates and
    // the CA ConfigMap issued, the store connected, the listeners about to be polled.
    leading.store(true, Ordering::SeqCst);
    let outcome = tokio::select! {
        r = server => Err(anyhow::anyhow!("the evidence API stopped: {r:?}")),
        () = controller => Err(anyhow::anyhow!("the controller stopped")),
        () = model_controller => Err(anyhow::anyhow!("the ModelAttestation controller stopped")),
        () = token_keys => Err(anyhow::anyhow!("token signing key upkeep stopped")),
        lost = leader::hold(&leases, &cfg.lease) => Err(anyhow::anyhow!("leadership lost: {lost}")),
        r = probe_server => Err(anyhow::anyhow!("the probe server stopped: {r:?}")),
        () = keep_tls_current => Err(anyhow::anyhow!("TLS certificate upkeep stopped")),
        r = &mut store_task => Err(anyhow::anyhow!("the outbox worker stopped: {r:?}")),
        r = client_api => Err(r.err().unwrap_or_else(|| anyhow::anyhow!("the client API stopped"))),
        () = &mut shutdown => Ok(()),
    };
    leading.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(());
    let _ = model_stop_tx.send(());
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
    // Uploads under way finish and are marked; what is left stays in the outbox.
    let _ = store_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(10), store_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "the outbox worker did not stop within 10 s; its uploads resume on the next leader"
        );
    }
    outcome
}

/// How model verdicts are recorded: with the evidence store, the statement key (a file,
/// or the token signing Secret); and, when the client API does not keep that Secret, the
/// task that creates and rotates it.
async fn model_recording(
    client: &Client,
    cfg: &ModelConfig,
    namespace: &str,
    client_api_served: bool,
    log: Option<Arc<dyn crate::evidence_store::ModelLog>>,
) -> anyhow::Result<(Option<Recording>, Pin<Box<dyn Future<Output = ()> + Send>>)> {
    let idle: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(std::future::pending());
    let Some(log) = log else {
        return Ok((None, idle));
    };
    if let Some(path) = &cfg.statement_key {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --model-statement-key {}", path.display()))?;
        let key = lotabots_model::keys::SigningKey::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("--model-statement-key {}: {}", path.display(), e.0))?;
        let key = StatementKey::Fixed(Arc::new(key));
        return Ok((Some(Recording { log, key }), idle));
    }
    let key = StatementKey::TokenSecret {
        secrets: Api::namespaced(client.clone(), namespace),
        name: cfg.token_secret.clone(),
    };
    // The client API creates and rotates the token keys; without it, this does.
    let upkeep: Pin<Box<dyn Future<Output = ()> + Send>> = if client_api_served {
        idle
    } else {
        let store = KeyStore {
            namespace: namespace.to_owned(),
            secret: cfg.token_secret.clone(),
            rotation: cfg.token_rotation,
        };
        // Created (or rotated) now, so that the first statement finds it.
        let (keys, changes) = store
            .reconcile(client, Timestamp::now())
            .await
            .with_context(|| {
                format!(
                    "loading the token signing keys from Secret {}",
                    store.secret
                )
            })?;
        for change in changes {
            tracing::info!(%change, "token signing keys");
        }
        let ring = Arc::new(crate::tokens::keys::KeyRing::new(keys));
        Box::pin(store.keep_current(client.clone(), ring, Duration::from_secs(600)))
    };
    Ok((Some(Recording { log, key }), upkeep))
}

fn probe_routes(registry: Registry, leading: Arc<AtomicBool>) -> Router {
    async fn readyz(
        State((_, leading)): State<(Arc<Registry>, Arc<AtomicBool>)>,
    ) -> (StatusCode, &'static str) {
        // Only the leader holds the nonces and evidence: followers take no traffic.
        if leading.load(Ordering::SeqCst) {
            (StatusCode::OK, "leader\n")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n")
        }
    }
    async fn metrics(
        State((registry, _)): State<(Arc<Registry>, Arc<AtomicBool>)>,
    ) -> (StatusCode, String) {
        let mut buf = Vec::new();
        match TextEncoder::new().encode(&registry.gather(), &mut buf) {
            Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buf).into_owned()),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state((Arc::new(registry), leading))
}

/// Reloads the certificate and key when either file changes (cert-manager rotates them
/// in place), keeping the old pair when the new one does not load.
/// The evidence API's certificate as the operator issued it (the first serving
/// certificate of `pki`).
async fn own_certificate(client: &Client, pki: &PkiConfig) -> anyhow::Result<RustlsConfig> {
    let name = &pki
        .serving
        .first()
        .context("no serving certificate configured")?
        .secret;
    let secret = Api::<Secret>::namespaced(client.clone(), &pki.namespace)
        .get(name)
        .await
        .with_context(|| format!("reading the Secret {name}"))?;
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|b| b.0.clone())
            .with_context(|| format!("Secret {name} has no {k}"))
    };
    RustlsConfig::from_pem(field(certs::CERT_KEY)?, field(certs::KEY_KEY)?)
        .await
        .with_context(|| format!("loading the certificate of Secret {name}"))
}

/// Renews the certificates when due (checked hourly; a failed round is retried in a
/// minute) and serves the evidence API's new certificate from the next connection on.
async fn rotate(client: Client, pki: PkiConfig, tls: RustlsConfig, metrics: CertificateMetrics) {
    loop {
        let wait = match certs::reconcile_round(&client, &pki, Timestamp::now()).await {
            Ok(certs::Round { changes, expiries }) => {
                metrics.observe(&expiries);
                for change in &changes {
                    tracing::info!(%change, "certificates");
                }
                if !changes.is_empty() {
                    match own_certificate(&client, &pki).await {
                        Ok(new) => tls.reload_from_config(new.get_inner()),
                        Err(e) => tracing::warn!(error = %e, "keeping the previous certificate"),
                    }
                }
                Duration::from_secs(3600)
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate round failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn reload_tls(tls: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let mtime = |p: &PathBuf| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let mut seen = (mtime(&cert), mtime(&key));
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = (mtime(&cert), mtime(&key));
        if now == seen {
            continue;
        }
        seen = now;
        match tls.reload_from_pem_file(&cert, &key).await {
            Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate does not load; keeping the previous one")
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Parses `namespace/name` ServiceAccount references.
pub fn parse_agents(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match item.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                out.push(item.to_owned())
            }
            _ => bail!("agent ServiceAccount {item:?} must be namespace/name"),
        }
    }
    if out.is_empty() {
        bail!("at least one agent ServiceAccount (namespace/name) is required");
    }
    Ok(out)
}
