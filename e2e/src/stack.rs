//! lotabots itself on the local control plane: the operator (evidence API over TLS on
//! 127.0.0.1 with the API server's TokenReview, and the controller) and one agent per
//! simulated GPU node, in this process.
//!
//! Each agent presents a token bound to an agent pod that kwok runs on its node — the
//! identity a DaemonSet pod has — so the operator's node binding is checked for real.
//! Container images cannot run here (no container engine), which is why the operator and
//! agents run in-process rather than as the pods of `config/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::Reporter;
use lotabots_agent::backend::{BackendChoice, GpuBackend, select};
use lotabots_agent::operator_client::OperatorClient;
use lotabots_agent::server::AgentState;
use lotabots_operator::auth::TokenReviewAuthenticator;
use lotabots_operator::controller::{self, Settings};
use lotabots_operator::evidence_api::{ApiMetrics, EvidenceApi, LatestEvidence, RateLimit};
use lotabots_operator::evidence_store::VerdictLog;
use lotabots_operator::metrics::ControllerMetrics;
use lotabots_operator::workload_api::{ApiServer, WorkloadApi, WorkloadMetrics, WorkloadSettings};
use lotabots_operator::workload_results::WorkloadResults;
use tokio::task::JoinHandle;

use crate::agents::{AUDIENCE, pod_bound_token, service_account};
use crate::nodes::SimNode;

/// The operator, in-process.
pub struct Operator {
    /// Its evidence API, `https://127.0.0.1:PORT`.
    pub url: String,
    /// The PEM certificate of its (self-signed) TLS key, for agents to trust.
    pub ca_pem: String,
    /// The evidence it accepted.
    pub evidence: Arc<LatestEvidence>,
    /// Its evidence API counters.
    pub api_metrics: ApiMetrics,
    /// Its workload API counters, when it serves the workload API
    /// ([`Operator::start_with_workloads`]).
    pub workload_metrics: Option<WorkloadMetrics>,
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: JoinHandle<()>,
}

impl Operator {
    /// Starts the evidence API and the controller; agents of the ServiceAccounts `agents`
    /// (`namespace/name`) may submit. Simulated evidence is accepted: there is no GPU here.
    pub async fn start(client: kube::Client, agents: Vec<String>) -> Result<Self> {
        Self::start_recording(client, agents, None).await
    }

    /// [`Operator::start`], recording every verdict change in `verdict_log` (the
    /// evidence store) when one is given.
    pub async fn start_recording(
        client: kube::Client,
        agents: Vec<String>,
        verdict_log: Option<Arc<dyn VerdictLog>>,
    ) -> Result<Self> {
        Self::launch(client, agents, verdict_log, None).await
    }

    /// [`Operator::start`], also serving the workload API (`POST /v1/workload-results`)
    /// on the same listener, as `run` wires it, and folding the GPU self-test results it
    /// accepts into the verdicts.
    pub async fn start_with_workloads(
        client: kube::Client,
        agents: Vec<String>,
        workloads: WorkloadSettings,
    ) -> Result<Self> {
        Self::launch(client, agents, None, Some(workloads)).await
    }

    async fn launch(
        client: kube::Client,
        agents: Vec<String>,
        verdict_log: Option<Arc<dyn VerdictLog>>,
        workloads: Option<WorkloadSettings>,
    ) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let tls = RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await?;
        let registry = prometheus::Registry::new();
        let api_metrics = ApiMetrics::register(&registry)?;
        let evidence = Arc::new(LatestEvidence::default());
        let auth = Arc::new(TokenReviewAuthenticator::new(client.clone(), agents));
        let api = Arc::new(EvidenceApi::new(
            auth,
            evidence.clone(),
            Duration::from_secs(60),
            RateLimit::default(),
            api_metrics.clone(),
        ));
        let results = Arc::new(WorkloadResults::default());
        let mut router = api.router();
        let mut workload_metrics = None;
        if let Some(settings) = workloads {
            let metrics = WorkloadMetrics::register(&registry)?;
            let kube_api = Arc::new(ApiServer(client.clone()));
            let workload_api = Arc::new(WorkloadApi::new(
                kube_api.clone(),
                kube_api,
                evidence.clone(),
                results.clone(),
                settings,
                metrics.clone(),
            ));
            router = router.merge(workload_api.router());
            workload_metrics = Some(metrics);
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let handle = Handle::new();
        tokio::spawn(
            axum_server::from_tcp_rustls(listener, tls)
                .handle(handle.clone())
                .serve(router.into_make_service()),
        );

        let settings = Settings {
            grace: Duration::from_secs(60),
            allow_simulated: true,
            resync: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            reference_bundle: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let reporter = Reporter {
            controller: "lotabots-operator".into(),
            instance: Some("e2e".into()),
        };
        let controller = tokio::spawn(controller::run_with_workloads(
            client,
            evidence.clone(),
            results,
            settings,
            ControllerMetrics::register(&registry)?,
            reporter,
            verdict_log,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: cert.cert.pem(),
            evidence,
            api_metrics,
            workload_metrics,
            handle,
            stop: Some(stop),
            controller,
        })
    }

    /// The nonce of `node`'s latest accepted evidence: what the launcher hands a
    /// workload pod.
    pub fn nonce(&self, node: &str) -> Result<String> {
        Ok(self
            .evidence
            .get(node)
            .with_context(|| format!("no evidence of {node}"))?
            .evidence
            .nonce
            .clone())
    }

    /// A client of its evidence API presenting the token in `token_file`.
    pub fn client(&self, token_file: PathBuf) -> Result<OperatorClient> {
        Ok(OperatorClient::new(
            &self.url,
            self.ca_pem.as_bytes(),
            token_file,
        )?)
    }

    /// Stops the controller (gracefully) and the evidence API.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.controller).await;
        self.handle.shutdown();
    }
}

/// One running agent.
pub struct Agent {
    /// Its node.
    pub node: String,
    /// Its client of the operator (with its node-bound token).
    pub client: OperatorClient,
    /// The simulated profile it reports.
    pub profile: String,
    task: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The simulated profile an agent on `node` reports by default: what its GPUs are.
pub fn default_profile(node: &SimNode) -> Option<&'static str> {
    let gpus = node.gpus.as_ref()?;
    Some(if gpus.product.contains("A100") {
        "a100-80gb-mig"
    } else {
        "h100-sxm5-80gb-x8"
    })
}

/// The simulated backend of `profile`, with GPU identities derived from `node`.
pub fn backend(profile: &str, node: &str) -> Result<Arc<dyn GpuBackend>> {
    let selected = select(&BackendChoice::Simulated(profile.into()), None, Some(node))?;
    Ok(Arc::from(selected.backend))
}

/// Starts one agent per `(node, profile)`: ServiceAccount `sa` in `ns` (created), an agent
/// pod on each node with a token bound to it (written under `token_dir`), and the agent
/// loop, which attests whenever a GpuAttestation selects its node.
pub async fn start_agents(
    client: &kube::Client,
    operator: &Operator,
    ns: &str,
    sa: &str,
    nodes: &[(String, String)],
    token_dir: &std::path::Path,
) -> Result<Vec<Agent>> {
    service_account(client, ns, sa).await?;
    let mut agents = Vec::new();
    for (node, profile) in nodes {
        let (_, token) =
            pod_bound_token(client, ns, sa, &format!("{sa}-{node}"), node, AUDIENCE).await?;
        let token_file = token_dir.join(node);
        std::fs::write(&token_file, token)
            .with_context(|| format!("writing {}", token_file.display()))?;
        let op = operator.client(token_file)?;
        let task = tokio::spawn(lotabots_agent::attest::run_loop(
            client.clone(),
            backend(profile, node)?,
            op.clone(),
            node.clone(),
            Arc::new(AgentState::default()),
        ));
        agents.push(Agent {
            node: node.clone(),
            client: op,
            profile: profile.clone(),
            task,
        });
    }
    Ok(agents)
}

/// The admission webhook, in-process, registered with the API server by
/// `https://127.0.0.1:PORT` URL (no Service: nothing may dial a cluster IP here).
pub struct Webhook {
    /// Its admission endpoint, `https://127.0.0.1:PORT`.
    pub url: String,
    /// The PEM certificate of its (self-signed) TLS key: the `caBundle`.
    pub ca_pem: String,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    /// Serves the default policy of `config/webhook/policy.yaml`.
    pub async fn start() -> Result<Self> {
        use lotabots_webhook::{cli::DEFAULT_POLICY, metrics::Metrics, policy::Policy};
        use lotabots_webhook::{reload::PolicyStore, server, tls};

        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let config = tls::server_config(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )?;
        let policy = Policy::from_yaml(DEFAULT_POLICY)
            .map_err(|e| anyhow::anyhow!("default policy: {e}"))?;
        let state = Arc::new(server::AppState {
            policy: Arc::new(PolicyStore::new(policy)),
            metrics: Metrics::new(),
            max_body_bytes: 8 * 1024 * 1024,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(server::serve_tls(
            listener,
            Arc::new(tls::TlsStore::new(config)),
            server::admission_router(state),
        ));
        Ok(Self {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: cert.cert.pem(),
            task,
        })
    }

    /// Registers the production webhook configuration of `config/webhook/`, each
    /// webhook's Service reference replaced by this server's URL and CA.
    pub async fn register(&self, client: &kube::Client) -> Result<()> {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;

        kube::Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(
                &kube::api::PostParams::default(),
                &webhook_configuration(&self.url, &self.ca_pem, None)?,
            )
            .await
            .context("registering the webhook configuration")?;
        Ok(())
    }
}

/// Waits until lotabots-webhook refuses, in `api`'s namespace, a pod of
/// `service_account` mounting the container runtime's socket: its configuration has
/// reached the API server's admission chain. Each try is a server-side dry run, so nothing
/// is created. Returns the refusal, `"<code> <message>"`.
pub async fn until_webhook_refuses_a_runtime_socket(
    api: &Api<Pod>,
    service_account: &str,
) -> Result<String> {
    let socket = crate::pods::with_host_path(
        "runtime-socket",
        service_account,
        "/var/run/containerd/containerd.sock",
    );
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    crate::wait::until(
        "the webhook to refuse a runtime socket",
        Duration::from_secs(30),
        || {
            let (api, socket, dry_run) = (api.clone(), socket.clone(), dry_run.clone());
            async move {
                Ok(match api.create(&dry_run, &socket).await {
                    Err(kube::Error::Api(s)) if s.message.contains("pods.webhook.lotabots.io") => {
                        Some(format!("{} {}", s.code, s.message))
                    }
                    _ => None,
                })
            }
        },
    )
    .await
}

/// The production webhook configuration of `config/webhook/`, each webhook's Service
/// reference replaced by `url` (`https://127.0.0.1:PORT`) and its `caBundle` by `ca_pem`.
/// With `scope` (a name and namespaces) it is renamed and, on top of its own selectors,
/// sent only the requests of those namespaces: so that scenarios running side by side on
/// one API server each see only their own webhook. The selectors add up, so a webhook
/// limited to the workload namespace (`agent-pod-deletes.webhook.lotabots.io`) is sent
/// nothing unless `namespaces` holds it.
pub fn webhook_configuration(
    url: &str,
    ca_pem: &str,
    scope: Option<(&str, &[&str])>,
) -> Result<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    let path = crate::repo_root().join("config/webhook/validating-webhook-configuration.yaml");
    let mut config: ValidatingWebhookConfiguration =
        serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
    for hook in config.webhooks.iter_mut().flatten() {
        let service = hook
            .client_config
            .service
            .take()
            .context("a webhook without a Service")?;
        hook.client_config.url = Some(format!("{url}{}", service.path.unwrap_or_default()));
        hook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
        if let Some((_, namespaces)) = scope {
            hook.namespace_selector
                .get_or_insert_with(Default::default)
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "In".into(),
                    values: Some(namespaces.iter().map(|n| n.to_string()).collect()),
                });
        }
    }
    if let Some((name, _)) = scope {
        config.metadata.name = Some(name.into());
    }
    config.metadata.annotations = None;
    Ok(config)
}
