//! The operator on a real control plane: its evidence API (with the API server's
//! TokenReview) and its controller run in-process against kube-apiserver; one agent loop
//! per kwok GPU node, each with a token bound to an agent pod on its node, attests
//! whenever a GpuAttestation selects that node. The scenarios check the verdicts, status,
//! node labels, Events and cleanup the operator writes, that an agent cannot speak for
//! another node, and that only one replica leads.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use lotabots_agent::attest::{AttestError, attest_once};
use lotabots_agent::operator_client::ClientError;
use lotabots_crds::gpu_attestation::{GpuAttestation, GpuAttestationStatus, Verdict};
use lotabots_crds::labels;
use lotabots_e2e::stack::{Operator, backend, start_agents};
use lotabots_e2e::{ControlPlane, SimNode, scenario, suite::Ctx, wait};
use lotabots_operator::leader::{self, LeaseConfig};
use serde_json::json;
use tempfile::TempDir;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "operator",
        || {
            ControlPlane::builder()
                .with_crds()
                .nodes(SimNode::default_fleet())
        },
        &[
            scenario!(agents_attest_selected_nodes_and_the_operator_labels_them),
            scenario!(one_replica_leads_and_another_takes_over_when_it_stops),
            scenario!(run_leads_then_serves_probes_metrics_and_the_evidence_api),
            scenario!(the_operator_issues_rotates_and_injects_its_certificates),
            scenario!(run_with_managed_certificates_serves_a_certificate_from_its_own_ca),
        ],
    )
}

/// How long the operator may take to reach a verdict (agents attest as soon as a
/// GpuAttestation selects their node; the controller debounces by 200 ms).
const VERDICT_TIMEOUT: Duration = Duration::from_secs(90);

/// The simulated profile each agent reports: one good H100, one node whose GPU is not
/// what its labels say (a V100 with failing health), one A100 node no policy selects.
fn agent_profile(node: &str) -> &'static str {
    match node {
        "gpu-h100-0" => "h100-80gb-hbm3",
        "gpu-h100-1" => "faulty-node",
        _ => "a100-80gb-mig",
    }
}

fn h100_fleet(name: &str) -> Result<GpuAttestation> {
    let path =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    att.metadata.name = Some(name.into());
    att.spec.reattestation_interval = "1m".into();
    Ok(att)
}

fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// The whole path: agents with pod-bound tokens attest through the evidence API (the API
/// server reviewing every token); the controller judges, writes status, labels the nodes
/// and records Events; an agent cannot submit for another node; deleting the
/// GpuAttestation removes its labels.
async fn agents_attest_selected_nodes_and_the_operator_labels_them(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let operator = Operator::start(client.clone(), vec![format!("{ns}/agent")]).await?;
    let tokens = TempDir::new()?;
    let fleet: Vec<(String, String)> = ctx
        .plane()
        .nodes()
        .iter()
        .filter(|n| n.gpus.is_some())
        .map(|n| (n.name.clone(), agent_profile(&n.name).to_owned()))
        .collect();
    let agents = start_agents(&client, &operator, &ns, "agent", &fleet, tokens.path()).await?;

    let name = ctx.name("h100");
    let atts = Api::<GpuAttestation>::all(client.clone());
    let started = Instant::now();
    atts.create(&PostParams::default(), &h100_fleet(&name)?)
        .await?;
    let status: GpuAttestationStatus =
        wait::until("a verdict on both H100 nodes", VERDICT_TIMEOUT, || {
            let atts = atts.clone();
            let name = name.clone();
            async move {
                let s = atts.get_status(&name).await?.status.unwrap_or_default();
                Ok((s.matched_nodes == 2 && s.attested_nodes + s.failed_nodes == 2).then_some(s))
            }
        })
        .await?;
    let verdict_after = started.elapsed();
    ensure!(
        (
            status.attested_nodes,
            status.failed_nodes,
            status.unknown_nodes
        ) == (1, 1, 0),
        "counts: {status:?}"
    );
    let first = status.nodes.first().context("no node entries")?;
    ensure!(
        first.node == "gpu-h100-1" && first.verdict == Verdict::Failed,
        "the failing node is not listed first: {:?}",
        status.nodes
    );
    ensure!(
        first
            .reasons
            .iter()
            .any(|r| r.contains("Tesla V100") && r.contains("not in allowlist")),
        "the failing node's reasons do not name its product: {:?}",
        first.reasons
    );
    ensure!(
        first
            .evidence_digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:")),
        "no evidence digest"
    );
    // A failed node: not Ready, and Stalled (kstatus Failed, Argo CD Degraded).
    for (type_, want) in [
        ("Ready", "False"),
        ("Stalled", "True"),
        ("Reconciling", "False"),
    ] {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .with_context(|| format!("no {type_} condition"))?;
        ensure!(
            (c.status.as_str(), c.reason.as_str()) == (want, "NodesFailed")
                && c.observed_generation == Some(1),
            "{type_}: {c:?}"
        );
    }
    ensure!(
        operator.evidence.get("gpu-a100-mig-0").is_none(),
        "the A100 agent attested though no GpuAttestation selects its node"
    );

    // Labels: the verdict on the H100 nodes, nothing on the A100 node.
    let nodes = Api::<Node>::all(client.clone());
    let labelled = wait::until(
        "the H100 nodes to carry their verdicts",
        VERDICT_TIMEOUT,
        || {
            let nodes = nodes.clone();
            async move {
                let good = node_labels(&nodes.get("gpu-h100-0").await?);
                let bad = node_labels(&nodes.get("gpu-h100-1").await?);
                Ok(
                    (good.get(labels::GPU_ATTESTED).map(String::as_str) == Some("true")
                        && bad.get(labels::GPU_ATTESTED).map(String::as_str) == Some("false"))
                    .then_some(good),
                )
            }
        },
    )
    .await?;
    ensure!(
        labelled.get(labels::GPU_ATTESTATION) == Some(&name),
        "gpu-attestation label: {labelled:?}"
    );
    ensure!(
        !node_labels(&nodes.get("gpu-a100-mig-0").await?).contains_key(labels::GPU_ATTESTED),
        "the A100 node was labelled"
    );

    // Events for the cluster-scoped GpuAttestation land in `default`.
    let events = Api::<Event>::namespaced(client.clone(), "default");
    let reasons = wait::until(
        "NodeAttested and NodeFailed events",
        VERDICT_TIMEOUT,
        || {
            let events = events.clone();
            let name = name.clone();
            async move {
                let list = events.list(&ListParams::default()).await?;
                let reasons: Vec<String> = list
                    .items
                    .iter()
                    .filter(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                    })
                    .filter_map(|e| e.reason.clone())
                    .collect();
                Ok((reasons.iter().any(|r| r == "NodeAttested")
                    && reasons.iter().any(|r| r == "NodeFailed"))
                .then_some(reasons))
            }
        },
    )
    .await?;

    // A genuine token of the agent on gpu-h100-0, used to speak for the A100 node.
    let liar = &agents
        .iter()
        .find(|a| a.node == "gpu-h100-0")
        .context("no agent on gpu-h100-0")?
        .client;
    match attest_once(
        backend("a100-80gb-mig", "gpu-a100-mig-0")?,
        liar,
        "gpu-a100-mig-0",
    )
    .await
    {
        Err(AttestError::Operator(ClientError::Refused {
            status: 403, code, ..
        })) if code == "wrong_node" => {}
        other => bail!("an agent spoke for another node: {other:?}"),
    }
    ensure!(
        operator.api_metrics.submissions("wrong_node") == 1,
        "the refusal was not counted"
    );

    // A node relabelled out of the selector leaves the status and loses its labels.
    let relabel = |product: &str| json!({"metadata": {"labels": {labels::GPU_PRODUCT: product}}});
    nodes
        .patch(
            "gpu-h100-1",
            &PatchParams::default(),
            &Patch::Merge(relabel("NVIDIA-H200")),
        )
        .await?;
    wait::until(
        "gpu-h100-1 to leave the GpuAttestation",
        VERDICT_TIMEOUT,
        || {
            let (atts, nodes, name) = (atts.clone(), nodes.clone(), name.clone());
            async move {
                let s = atts.get_status(&name).await?.status.unwrap_or_default();
                let l = node_labels(&nodes.get("gpu-h100-1").await?);
                Ok((s.matched_nodes == 1
                    && s.failed_nodes == 0
                    && !l.contains_key(labels::GPU_ATTESTED))
                .then_some(()))
            }
        },
    )
    .await?;
    nodes
        .patch(
            "gpu-h100-1",
            &PatchParams::default(),
            &Patch::Merge(relabel("NVIDIA-H100-80GB-HBM3")),
        )
        .await?;

    // Deleting the GpuAttestation removes its labels (finalizer), then the object.
    atts.delete(&name, &DeleteParams::default()).await?;
    wait::until(
        "the GpuAttestation and its node labels to be gone",
        VERDICT_TIMEOUT,
        || {
            let (atts, nodes, name) = (atts.clone(), nodes.clone(), name.clone());
            async move {
                let gone = atts.get_opt(&name).await?.is_none();
                let mut clean = true;
                for n in ["gpu-h100-0", "gpu-h100-1"] {
                    let l = node_labels(&nodes.get(n).await?);
                    clean &= !l.contains_key(labels::GPU_ATTESTED)
                        && !l.contains_key(labels::GPU_ATTESTATION);
                }
                Ok((gone && clean).then_some(()))
            }
        },
    )
    .await?;

    drop(agents);
    let accepted = operator.api_metrics.submissions("accepted");
    ensure!(accepted >= 2, "{accepted} submissions accepted");
    operator.stop().await;
    eprintln!(
        "operator: verdicts on 2 H100 nodes {:.1} s after the GpuAttestation was created; {accepted} submissions accepted; events {reasons:?}",
        verdict_after.as_secs_f64(),
    );
    Ok(())
}

/// Two replicas and one Lease: the first leads, the second waits while the first renews,
/// and takes over once the first stops renewing; the first then learns it lost.
async fn one_replica_leads_and_another_takes_over_when_it_stops(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace().await?;
    let leases = Api::<Lease>::namespaced(ctx.client(), &ns);
    let replica = |identity: &str| LeaseConfig {
        namespace: ns.clone(),
        name: "lotabots-operator".into(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        retry: Duration::from_secs(1),
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    leader::acquire(&leases, &a).await?;
    let holding = {
        let (leases, a) = (leases.clone(), a.clone());
        tokio::spawn(async move { leader::hold(&leases, &a).await })
    };
    if tokio::time::timeout(Duration::from_secs(6), leader::acquire(&leases, &b))
        .await
        .is_ok()
    {
        bail!("replica-b took the Lease while replica-a renewed it");
    }
    holding.abort();
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), leader::acquire(&leases, &b))
        .await
        .context("replica-b never took over")??;
    let takeover = stopped.elapsed();
    let lease = leases.get("lotabots-operator").await?;
    let spec = lease.spec.context("a Lease without spec")?;
    ensure!(
        spec.holder_identity.as_deref() == Some("replica-b"),
        "holder {:?}",
        spec.holder_identity
    );
    ensure!(
        spec.lease_transitions == Some(1),
        "transitions {:?}",
        spec.lease_transitions
    );
    let lost = tokio::time::timeout(Duration::from_secs(10), leader::hold(&leases, &a))
        .await
        .context("replica-a never noticed")?;
    ensure!(lost.contains("replica-b"), "replica-a's reason: {lost}");
    eprintln!(
        "operator: replica-b took over {:.1} s after replica-a stopped renewing a 3 s Lease",
        takeover.as_secs_f64()
    );
    Ok(())
}

/// A `run` configuration for a scenario's namespace, on free 127.0.0.1 ports.
fn run_config(
    ns: &str,
    ports: &[u16],
    manage_certificates: bool,
    dir: &std::path::Path,
) -> lotabots_operator::run::RunConfig {
    lotabots_operator::run::RunConfig {
        listen: ([127, 0, 0, 1], ports[0]).into(),
        manage_certificates,
        tls_cert: dir.join("tls.crt"),
        tls_key: dir.join("tls.key"),
        probe_addr: ([127, 0, 0, 1], ports[1]).into(),
        agents: vec![format!("{ns}/agent")],
        nonce_ttl: Duration::from_secs(60),
        settings: lotabots_operator::controller::Settings {
            grace: Duration::from_secs(60),
            allow_simulated: true,
            resync: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            reference_bundle: None,
        },
        lease: LeaseConfig {
            namespace: ns.into(),
            name: "lotabots-operator".into(),
            identity: "run-0".into(),
            duration: Duration::from_secs(3),
            retry: Duration::from_secs(1),
        },
        client_api: None,
        store: Default::default(),
        models: Default::default(),
        workloads: Default::default(),
    }
}

/// A running `run`: its task, how to stop it, its probe URL.
struct Running {
    task: JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    probe: String,
}

/// Starts `run` with the harness's client and waits until it leads and is ready.
async fn start_run(ctx: &Ctx, cfg: lotabots_operator::run::RunConfig) -> Result<Running> {
    let probe = format!("http://{}", cfg.probe_addr);
    let ns = cfg.lease.namespace.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lotabots_operator::run::run_with(
        ctx.client(),
        cfg,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    wait::until(
        "run to lead and report ready",
        Duration::from_secs(30),
        || {
            let (http, url) = (http.clone(), format!("{probe}/readyz"));
            async move {
                Ok(matches!(http.get(&url).send().await, Ok(r) if r.status() == 200).then_some(()))
            }
        },
    )
    .await?;
    let holder = Api::<Lease>::namespaced(ctx.client(), &ns)
        .get("lotabots-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref() == Some("run-0"),
        "Lease holder {holder:?}"
    );
    Ok(Running { task, stop, probe })
}

impl Running {
    /// The probe server's metrics.
    async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.probe))
            .await?
            .text()
            .await?)
    }

    /// Asks it to stop and waits for a clean exit.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .context("run did not stop when asked")???;
        Ok(())
    }
}

/// `lotabots-operator run` as its command wires it, with certificate files (the
/// cert-manager way): not ready until it leads; as leader it publishes the ca.crt beside
/// the certificate to the workload namespace; a forged token is refused by the API
/// server's review and counted; it stops cleanly when asked.
async fn run_leads_then_serves_probes_metrics_and_the_evidence_api(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace().await?;
    let dir = TempDir::new()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem())?;
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())?;
    // The CA beside the certificate (as in a cert-manager Secret): the leader publishes it
    // to the workload namespace.
    std::fs::write(dir.path().join("ca.crt"), cert.cert.pem())?;
    let workloads = ctx.name("workloads");
    lotabots_e2e::resources::ensure_namespace(&ctx.client(), &workloads).await?;
    let ports = lotabots_e2e::ports::free_ports(2)?;
    let mut cfg = run_config(&ns, &ports, false, dir.path());
    cfg.workloads.service_account = format!("{workloads}/workload");
    let running = start_run(&ctx, cfg).await?;
    published_ca(&ctx, &workloads, &cert.cert.pem()).await?;

    // A token the API server does not know: refused by its TokenReview, and counted.
    let token = dir.path().join("token");
    std::fs::write(&token, "not-a-token")?;
    let client = lotabots_agent::operator_client::OperatorClient::new(
        &format!("https://127.0.0.1:{}", ports[0]),
        cert.cert.pem().as_bytes(),
        token,
    )?;
    match client.challenge().await {
        Err(ClientError::Refused {
            status: 401, code, ..
        }) if code == "token_rejected" => {}
        other => bail!("a forged token was not refused: {other:?}"),
    }
    let metrics = running.metrics().await?;
    ensure!(
        metrics.contains("lotabots_challenges_total{outcome=\"token_rejected\"} 1"),
        "the refusal is not counted:\n{metrics}"
    );
    running.stop().await
}

/// `run --manage-certificates`: before serving it issues its CA and certificates; the
/// evidence API then presents a certificate for `lotabots-operator.NAMESPACE.svc` that
/// verifies against the CA it published in the ConfigMap for the agents (and, the same,
/// in the workload namespace).
async fn run_with_managed_certificates_serves_a_certificate_from_its_own_ca(
    ctx: Ctx,
) -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;

    let ns = ctx.namespace().await?;
    let dir = TempDir::new()?;
    let ports = lotabots_e2e::ports::free_ports(2)?;
    let workloads = ctx.name("workloads");
    lotabots_e2e::resources::ensure_namespace(&ctx.client(), &workloads).await?;
    let mut cfg = run_config(&ns, &ports, true, dir.path());
    cfg.workloads.service_account = format!("{workloads}/workload");
    let running = start_run(&ctx, cfg).await?;
    let ca = Api::<ConfigMap>::namespaced(ctx.client(), &ns)
        .get("lotabots-operator-ca")
        .await?
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("no ca.crt published")?;
    // The same CA for the workload pods, in their namespace.
    published_ca(&ctx, &workloads, &ca).await?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // The Service's name, resolved to the local listener: the certificate must name it.
    let host = format!("lotabots-operator.{ns}.svc");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(&host, ([127, 0, 0, 1], ports[0]).into())
        .build()?;
    let resp = http
        .post(format!("https://{host}:{}/v1/challenges", ports[0]))
        .bearer_auth("not-a-token")
        .send()
        .await?;
    ensure!(resp.status() == 401, "status {}", resp.status());
    let body: serde_json::Value = resp.json().await?;
    ensure!(body["error"] == "token_rejected", "{body}");
    running.stop().await
}

/// Waits until the ConfigMap lotabots-operator-ca of `namespace` publishes `pem`.
async fn published_ca(ctx: &Ctx, namespace: &str, pem: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;

    let configmaps = Api::<ConfigMap>::namespaced(ctx.client(), namespace);
    wait::until(
        &format!("the CA published in {namespace}"),
        Duration::from_secs(10),
        || {
            let configmaps = configmaps.clone();
            async move {
                let published = configmaps
                    .get_opt("lotabots-operator-ca")
                    .await?
                    .and_then(|c| c.data)
                    .and_then(|mut d| d.remove("ca.crt"));
                Ok((published.as_deref() == Some(pem)).then_some(()))
            }
        },
    )
    .await
}

/// The operator's own PKI on a real API server: the first round creates the CA, both
/// serving certificates, the CA ConfigMap (also in a workload namespace; a missing one is
/// a warning, not a failure) and the webhook `caBundle`; a second round at the same time
/// changes nothing; 61 days later (of 90) both certificates are renewed under the same
/// CA; a CA replaced behind its back makes it reissue, re-inject and republish.
async fn the_operator_issues_rotates_and_injects_its_certificates(ctx: Ctx) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use lotabots_operator::certs::{PkiConfig, reconcile, reconcile_round};

    let client = ctx.client();
    let ns = ctx.namespace().await?;
    // The production configuration under another name, sent nothing: no object carries
    // the selectors' label (the object selector also covers cluster-scoped kinds such as
    // GpuAttestation, which a namespace selector does not), and the Service reference is
    // replaced by a 127.0.0.1 URL, so that the API server could never dial a cluster IP.
    let path =
        lotabots_e2e::repo_root().join("config/webhook/validating-webhook-configuration.yaml");
    let mut hooks: ValidatingWebhookConfiguration =
        serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let hooks_name = ctx.name("hooks");
    hooks.metadata.name = Some(hooks_name.clone());
    let never = || serde_json::from_value(json!({"matchLabels": {"lotabots-e2e/never": "true"}}));
    for h in hooks.webhooks.iter_mut().flatten() {
        h.namespace_selector = Some(never()?);
        h.object_selector = Some(never()?);
        let service = h
            .client_config
            .service
            .take()
            .context("a webhook without a Service")?;
        h.client_config.url = Some(format!(
            "https://127.0.0.1:1{}",
            service.path.unwrap_or_default()
        ));
    }
    let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    configs.create(&PostParams::default(), &hooks).await?;

    // The workload pods' namespace gets a copy; one that does not exist is reported.
    let workloads = ctx.name("workloads");
    lotabots_e2e::resources::ensure_namespace(&client, &workloads).await?;
    let absent = ctx.name("absent");
    let cfg = PkiConfig {
        webhook_configuration: Some(hooks_name.clone()),
        ca_configmap_copies: vec![workloads.clone(), absent.clone()],
        ..PkiConfig::defaults(&ns)
    };
    let t0 = jiff::Timestamp::now();
    let round = reconcile_round(&client, &cfg, t0).await?;
    let first = round.changes;
    ensure!(first.len() == 6, "first round: {first:?}");
    ensure!(
        first.contains(&format!(
            "{workloads}/lotabots-operator-ca: CA certificate published"
        )),
        "first round did not publish the CA to {workloads}: {first:?}"
    );
    ensure!(
        round.warnings.len() == 1
            && round.warnings[0].contains(&format!("{absent}/lotabots-operator-ca"))
            && round.warnings[0].contains("not found"),
        "a missing namespace: {:?}",
        round.warnings
    );
    ensure!(
        reconcile(&client, &cfg, t0).await?.is_empty(),
        "a second round at the same time changed something"
    );

    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let pem = |s: &Secret, k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };
    let ca = pem(&secrets.get("lotabots-ca").await?, "tls.crt");
    let published_in = |namespace: String| {
        let client = client.clone();
        async move {
            let cm = Api::<ConfigMap>::namespaced(client, &namespace)
                .get("lotabots-operator-ca")
                .await?;
            anyhow::Ok(
                cm.data
                    .and_then(|mut d| d.remove("ca.crt"))
                    .unwrap_or_default()
                    .into_bytes(),
            )
        }
    };
    ensure!(
        published_in(ns.clone()).await? == ca,
        "the ConfigMap does not publish the CA"
    );
    ensure!(
        published_in(workloads.clone()).await? == ca,
        "the ConfigMap in {workloads} does not publish the CA"
    );
    let injected = |c: &ValidatingWebhookConfiguration| {
        c.webhooks
            .iter()
            .flatten()
            .all(|h| h.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
    };
    ensure!(
        injected(&configs.get(&hooks_name).await?),
        "caBundle not injected"
    );
    let webhook_cert = pem(&secrets.get("lotabots-webhook-tls").await?, "tls.crt");

    let later = t0 + jiff::SignedDuration::from_hours(61 * 24);
    let renewed = reconcile(&client, &cfg, later).await?;
    ensure!(
        renewed.len() == 2 && renewed.iter().all(|r| r.contains("less than a third")),
        "61 days later: {renewed:?}"
    );
    ensure!(
        pem(&secrets.get("lotabots-ca").await?, "tls.crt") == ca,
        "the CA changed on a leaf renewal"
    );
    ensure!(
        pem(&secrets.get("lotabots-webhook-tls").await?, "tls.crt") != webhook_cert,
        "the webhook certificate was not renewed"
    );

    // Someone replaces the CA: every certificate is reissued under it and re-injected.
    secrets.delete("lotabots-ca", &Default::default()).await?;
    let replaced = reconcile(&client, &cfg, later).await?;
    ensure!(
        replaced.iter().any(|r| r.contains("new CA"))
            && replaced
                .iter()
                .filter(|r| r.contains("new certificate"))
                .count()
                == 2
            && replaced.iter().any(|r| r.contains("caBundle injected"))
            && replaced
                .iter()
                .any(|r| r.starts_with(&format!("{workloads}/"))),
        "after the CA was deleted: {replaced:?}"
    );
    let new_ca = pem(&secrets.get("lotabots-ca").await?, "tls.crt");
    ensure!(new_ca != ca, "the CA was not replaced");
    ensure!(
        published_in(workloads.clone()).await? == new_ca,
        "the new CA is not published in {workloads}"
    );
    let current = configs.get(&hooks_name).await?;
    ensure!(
        current
            .webhooks
            .iter()
            .flatten()
            .all(|h| h.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&new_ca)),
        "caBundle not re-injected"
    );
    configs.delete(&hooks_name, &Default::default()).await?;
    eprintln!("operator: PKI first round {first:?}; 61 days later {renewed:?}");
    Ok(())
}
