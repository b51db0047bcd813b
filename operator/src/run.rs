//! `lotabots-operator run`: the long-running operator.
//!
//! Probes and metrics are served at once (liveness must not wait for leadership). With
//! the evidence store every replica then serves the evidence API over TLS (nonces carry
//! their own proof under the shared challenge key; single use and accepted evidence are
//! shared through PostgreSQL) and follows the evidence the others accept; the one holding
//! the Lease also issues the certificates, runs the controllers and records verdicts.
//! Without a store only the leader serves, as nothing would carry what a follower
//! accepted to the controller. Losing the Lease, or any of these tasks ending, ends the
//! process with an error so that the pod restarts cleanly; SIGTERM/Ctrl-C end it
//! gracefully.

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
use crate::challenges::{self, ChallengeKey};
use crate::client_api::audit::AuditTrail;
use crate::controller::{self, Settings};
use crate::evidence_api::{ApiMetrics, EvidenceApi, LatestEvidence, RateLimit, SharedAcceptance};
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
    /// Who may post GPU self-test results (`POST /v1/workload-results`), and whether
    /// simulated ones count.
    pub workloads: crate::workload_api::WorkloadSettings,
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
    let model_metrics = crate::metrics::ModelMetrics::register(&registry)?;
    let workload_metrics = crate::workload_api::WorkloadMetrics::register(&registry)?;
    let readiness = Readiness::default();

    let probes = tokio::net::TcpListener::bind(cfg.probe_addr)
        .await
        .with_context(|| format!("binding the probe address {}", cfg.probe_addr))?;
    let probe_router = probe_routes(registry.clone(), readiness.clone());
    let probe_server = tokio::spawn(async move { axum::serve(probes, probe_router).await });

    tokio::pin!(shutdown);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease.namespace);

    // Every replica: the store (where replicas share nonces and accepted evidence), the
    // challenge key all replicas share, and the evidence API.
    let wired =
        evidence_store::connect(&cfg.store, client.clone(), &cfg.lease.namespace, &registry)
            .await
            .context("connecting the evidence store")?;
    let shared_db = wired.as_ref().map(|w| w.store.database().clone());
    readiness
        .followers_serve
        .store(shared_db.is_some(), Ordering::SeqCst);
    let challenge_key = ChallengeKey::load_or_create(
        &Api::namespaced(client.clone(), &cfg.lease.namespace),
        challenges::key::SECRET_NAME,
    )
    .await?;
    let evidence = Arc::new(LatestEvidence::default());
    let auth = Arc::new(TokenReviewAuthenticator::new(
        client.clone(),
        cfg.agents.clone(),
    ));
    let mut api = EvidenceApi::new(
        auth,
        evidence.clone(),
        cfg.nonce_ttl,
        RateLimit::default(),
        api_metrics,
    )
    .with_key(challenge_key);
    if let Some(db) = &shared_db {
        api = api.with_shared(db.clone() as Arc<dyn SharedAcceptance>);
    }
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding the evidence API address {}", cfg.listen))?;
    // The workload pods post their self-test results on the same listener; the leader's
    // controller folds them in, so only the leader takes them.
    let workloads = Arc::new(crate::workload_results::WorkloadResults::default());
    // The behaviour requests the model controller makes and the probe pods fetch for.
    let behaviour_requests = Arc::new(crate::behaviour::BehaviourRequests::default());
    let kube_api = Arc::new(crate::workload_api::ApiServer(client.clone()));
    let workload_api = Arc::new(
        crate::workload_api::WorkloadApi::new(
            kube_api.clone(),
            kube_api,
            evidence.clone(),
            workloads.clone(),
            cfg.workloads.clone(),
            workload_metrics,
        )
        .leader_only(readiness.leading.clone())
        .with_behaviour(
            behaviour_requests.clone(),
            Arc::new(crate::workload_api::KubeModels {
                client: client.clone(),
                model_root: cfg.models.settings.model_root.clone(),
            }),
        ),
    );
    let handle = Handle::new();
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(None::<RustlsConfig>);
    let mut server = Box::pin(serve_evidence_api(
        EvidenceServer {
            listener,
            router: Arc::new(api).router().merge(workload_api.router()),
            handle: handle.clone(),
            tls: TlsSource::new(&cfg),
            client: client.clone(),
            serving: readiness.serving.clone(),
        },
        tls_tx,
    ));
    // Every replica with a store follows what the others accept, so that whichever leads
    // next already holds it.
    let mut follow: Pin<Box<dyn Future<Output = ()> + Send>> = match &shared_db {
        Some(db) => Box::pin(evidence_store::follow_evidence(
            db.clone(),
            evidence.clone(),
        )),
        None => Box::pin(std::future::pending()),
    };

    // Without a store a follower serves nothing: what it accepted would never reach the
    // leader, and single use would hold per replica only.
    let followers_serve = shared_db.is_some();
    tokio::select! {
        r = leader::acquire(&leases, &cfg.lease) => r.context("acquiring the leader Lease")?,
        r = &mut server, if followers_serve => return Err(r.err().unwrap_or_else(|| anyhow::anyhow!("the evidence API stopped"))),
        () = &mut follow => return Err(anyhow::anyhow!("following accepted evidence stopped")),
        () = &mut shutdown => {
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
            return Ok(());
        }
    }

    // Only the leader records and uploads: one writer of the audit chain's head, one
    // outbox worker (uploads are idempotent anyway).
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
            let prune = evidence_store::prune_nonces(w.store.database().clone());
            let task = async move {
                tokio::select! {
                    r = w.worker.run(async move { let _ = stopped.wait_for(|s| *s).await; }) => r,
                    () = w.key_reload => Ok(()),
                    () = prune => Ok(()),
                }
            };
            (Some(w.store as Arc<dyn VerdictLog>), Box::pin(task))
        }
        None => {
            tracing::warn!(
                "LOTABOTS_DATABASE_URL is unset: verdicts are not recorded, only shown in \
                 status, and only the leader serves the evidence API"
            );
            (None, Box::pin(std::future::pending()))
        }
    };
    tokio::pin!(store_task);
    // What any replica accepted up to now, in case the listener was reconnecting.
    if let Some(db) = &shared_db {
        for row in db
            .all_node_evidence()
            .await
            .context("loading accepted evidence")?
        {
            match evidence_store::accepted_from_row(row) {
                Ok(e) => {
                    evidence.load(e);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "skipping stored evidence"),
            }
        }
    }

    // The leader issues and renews the certificates every replica serves, and publishes
    // the CA to the workload namespace, whose pods verify the evidence API by it.
    let workload_namespace = cfg.workloads.namespace().to_owned();
    let keep_tls_current: Pin<Box<dyn Future<Output = ()> + Send>> = if cfg.manage_certificates {
        let pki = PkiConfig {
            ca_configmap_copies: vec![workload_namespace],
            ..PkiConfig::defaults(&cfg.lease.namespace)
        };
        let round = certs::reconcile_round(&client, &pki, Timestamp::now())
            .await
            .context("issuing the serving certificates")?;
        for change in &round.changes {
            tracing::info!(%change, "certificates");
        }
        for problem in &round.warnings {
            tracing::warn!(%problem, "certificates");
        }
        certificate_metrics.observe(&round.expiries);
        let (client, tls_rx) = (client.clone(), tls_rx.clone());
        Box::pin(async move {
            if let Some(tls) = loaded_tls(tls_rx).await {
                rotate(client, pki, tls, certificate_metrics).await;
            }
        })
    } else {
        Box::pin(certs::keep_ca_file_published(
            client.clone(),
            certs::ca_file_beside(&cfg.tls_cert),
            PkiConfig::defaults(&cfg.lease.namespace).ca_configmap,
            vec![workload_namespace],
        ))
    };

    // The client API: a listener of its own, with the same certificate.
    let client_api: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> =
        match cfg.client_api.clone() {
            Some(settings) => {
                let (client, ns, evidence) = (
                    client.clone(),
                    cfg.lease.namespace.clone(),
                    evidence.clone(),
                );
                let tls_rx = tls_rx.clone();
                Box::pin(async move {
                    let tls = loaded_tls(tls_rx)
                        .await
                        .context("the evidence API never loaded its certificate")?;
                    crate::client_api::serve::serve(
                        client,
                        ns,
                        settings,
                        tls,
                        Some(evidence),
                        audit,
                        client_api_metrics,
                    )
                    .await
                })
            }
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
    let model_controller = model_controller::run_with_behaviour(
        client.clone(),
        cfg.models.settings.clone(),
        reporter.clone(),
        model_recording,
        model_metrics,
        Some(model_controller::BehaviourWiring {
            evidence: evidence.clone(),
            requests: behaviour_requests.clone(),
        }),
        async move {
            let _ = model_stop_rx.await;
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = controller::run_with_workloads(
        client,
        evidence,
        workloads,
        cfg.settings,
        controller_metrics,
        reporter,
        verdict_log,
        async move {
            let _ = stop_rx.await;
        },
    );

    // Ready once it leads AND everything a client relies on exists: the certificates and
    // the CA ConfigMap issued, the store connected, the listeners about to be polled (a
    // follower with a store is ready once it serves, see `Readiness`).
    readiness.leading.store(true, Ordering::SeqCst);
    let outcome = tokio::select! {
        r = &mut server => Err(r.err().unwrap_or_else(|| anyhow::anyhow!("the evidence API stopped"))),
        () = &mut follow => Err(anyhow::anyhow!("following accepted evidence stopped")),
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
    readiness.leading.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(());
    let _ = model_stop_tx.send(());
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
    // Uploads under way finish and are marked; what is left stays in the outbox.
    let _ = store_stop.send(true);
    // Without a store there is no worker to wait for (its stand-in never ends).
    if shared_db.is_some()
        && tokio::time::timeout(Duration::from_secs(10), store_task)
            .await
            .is_err()
    {
        tracing::warn!(
            "the outbox worker did not stop within 10 s; its uploads resume on the next leader"
        );
    }
    outcome
}

/// What `/readyz` answers from. A replica is ready when it leads and serves; with the
/// evidence store, a follower is ready as soon as it serves the evidence API too (what it
/// accepts reaches the leader through the store). Without a store only the leader serves.
#[derive(Clone, Default)]
struct Readiness {
    leading: Arc<AtomicBool>,
    serving: Arc<AtomicBool>,
    followers_serve: Arc<AtomicBool>,
}

impl Readiness {
    fn ready(&self) -> Option<&'static str> {
        if !self.serving.load(Ordering::SeqCst) {
            return None;
        }
        if self.leading.load(Ordering::SeqCst) {
            Some("leader\n")
        } else if self.followers_serve.load(Ordering::SeqCst) {
            Some("follower, serving the evidence API\n")
        } else {
            None
        }
    }
}

/// Where the evidence API's certificate comes from.
enum TlsSource {
    /// Files (cert-manager), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// The Secret the leader issues ([`certs`]), read again when it changes.
    Managed(PkiConfig),
}

impl TlsSource {
    fn new(cfg: &RunConfig) -> Self {
        if cfg.manage_certificates {
            Self::Managed(PkiConfig::defaults(&cfg.lease.namespace))
        } else {
            Self::Files {
                cert: cfg.tls_cert.clone(),
                key: cfg.tls_key.clone(),
            }
        }
    }
}

/// The evidence API's listener (bound at start, so a taken port fails at once) and
/// what serving it needs.
struct EvidenceServer {
    listener: std::net::TcpListener,
    router: Router,
    handle: Handle,
    tls: TlsSource,
    client: Client,
    serving: Arc<AtomicBool>,
}

/// Loads the certificate (waiting for the leader to issue it, when managed), publishes
/// it on `tls_tx` for the leader's renewals and the client API, and serves until the
/// handle shuts it down; the certificate is kept current meanwhile.
async fn serve_evidence_api(
    s: EvidenceServer,
    tls_tx: tokio::sync::watch::Sender<Option<RustlsConfig>>,
) -> anyhow::Result<()> {
    let (tls, keep_current): (RustlsConfig, Pin<Box<dyn Future<Output = ()> + Send>>) = match s.tls
    {
        TlsSource::Files { cert, key } => {
            let tls = RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| {
                    format!(
                        "loading the TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            (tls.clone(), Box::pin(reload_tls(tls, cert, key)))
        }
        TlsSource::Managed(pki) => {
            let mut waited = false;
            let (tls, pem) = loop {
                match own_certificate(&s.client, &pki).await {
                    Ok(loaded) => break loaded,
                    Err(e) if !waited => {
                        tracing::info!(error = %format!("{e:#}"), "waiting for the leader to issue the serving certificate");
                        waited = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            (
                tls.clone(),
                Box::pin(follow_certificate(s.client.clone(), pki, tls, pem)),
            )
        }
    };
    s.listener
        .set_nonblocking(true)
        .context("configuring the evidence API listener")?;
    let local = s.listener.local_addr()?;
    let server = axum_server::from_tcp_rustls(s.listener, tls.clone())
        .handle(s.handle)
        .serve(s.router.into_make_service());
    let _ = tls_tx.send(Some(tls));
    s.serving.store(true, Ordering::SeqCst);
    tracing::info!(listen = %local, "evidence API serving");
    tokio::select! {
        r = server => r.context("the evidence API stopped"),
        () = keep_current => Err(anyhow::anyhow!("TLS certificate upkeep stopped")),
    }
}

/// The certificate once the evidence API loaded it; `None` if it never will.
async fn loaded_tls(
    mut rx: tokio::sync::watch::Receiver<Option<RustlsConfig>>,
) -> Option<RustlsConfig> {
    rx.wait_for(Option::is_some).await.ok()?.clone()
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

fn probe_routes(registry: Registry, readiness: Readiness) -> Router {
    async fn readyz(
        State((_, readiness)): State<(Arc<Registry>, Readiness)>,
    ) -> (StatusCode, &'static str) {
        match readiness.ready() {
            Some(what) => (StatusCode::OK, what),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not serving the evidence API (not the leader, or not set up yet)\n",
            ),
        }
    }
    async fn metrics(
        State((registry, _)): State<(Arc<Registry>, Readiness)>,
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
        .with_state((Arc::new(registry), readiness))
}

/// The certificate and key PEM of a serving Secret.
type PemPair = (Vec<u8>, Vec<u8>);

/// The evidence API's certificate as the operator issued it (the first serving
/// certificate of `pki`), and its PEM.
async fn own_certificate(
    client: &Client,
    pki: &PkiConfig,
) -> anyhow::Result<(RustlsConfig, PemPair)> {
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
    let pem = (field(certs::CERT_KEY)?, field(certs::KEY_KEY)?);
    let tls = RustlsConfig::from_pem(pem.0.clone(), pem.1.clone())
        .await
        .with_context(|| format!("loading the certificate of Secret {name}"))?;
    Ok((tls, pem))
}

/// Serves the certificate the leader renews: the Secret is read every minute and a
/// changed certificate is served from the next connection on (the leader reloads its own
/// at once in [`rotate`]; followers learn it here).
async fn follow_certificate(client: Client, pki: PkiConfig, tls: RustlsConfig, mut seen: PemPair) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match own_certificate(&client, &pki).await {
            Ok((new, pem)) if pem != seen => {
                tls.reload_from_config(new.get_inner());
                seen = pem;
                tracing::info!("serving the renewed certificate");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "keeping the previous certificate"),
        }
    }
}

/// Renews the certificates when due (checked hourly; a failed round is retried in a
/// minute) and serves the evidence API's new certificate from the next connection on.
async fn rotate(client: Client, pki: PkiConfig, tls: RustlsConfig, metrics: CertificateMetrics) {
    loop {
        let wait = match certs::reconcile_round(&client, &pki, Timestamp::now()).await {
            Ok(certs::Round {
                changes,
                expiries,
                warnings,
            }) => {
                metrics.observe(&expiries);
                for change in &changes {
                    tracing::info!(%change, "certificates");
                }
                for problem in &warnings {
                    tracing::warn!(%problem, "certificates");
                }
                if !changes.is_empty() {
                    match own_certificate(&client, &pki).await {
                        Ok((new, _)) => tls.reload_from_config(new.get_inner()),
                        Err(e) => tracing::warn!(error = %e, "keeping the previous certificate"),
                    }
                }
                // The CA not yet published to the workload namespace (created after the
                // operator, say): its pods cannot start without it, so try again soon.
                if warnings.is_empty() {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_secs(60)
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate round failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Reloads the certificate and key when either file changes (cert-manager rotates them
/// in place), keeping the old pair when the new one does not load.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_serving_replica_is_ready_and_a_follower_only_with_a_store() {
        let r = Readiness::default();
        let set = |flag: &Arc<AtomicBool>, v: bool| flag.store(v, Ordering::SeqCst);
        set(&r.leading, true);
        assert_eq!(r.ready(), None, "leading but not serving yet");
        set(&r.serving, true);
        assert_eq!(r.ready(), Some("leader\n"));
        set(&r.leading, false);
        assert_eq!(
            r.ready(),
            None,
            "a follower without a store takes no traffic"
        );
        set(&r.followers_serve, true);
        assert_eq!(r.ready(), Some("follower, serving the evidence API\n"));
    }
}
