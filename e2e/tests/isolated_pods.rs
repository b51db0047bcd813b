//! The pod launcher on a real control plane, with kwok GPU nodes, the scheduler, the
//! controller-manager's garbage collector, the workload namespace of `config/workloads`
//! (Pod Security `restricted`, enforced by the API server itself) and lotabots-webhook with
//! its default policy:
//!
//! - `launched_pods_run_on_their_node_hardened_and_go_with_their_owner`: the self-test the
//!   agent derives from a GpuAttestation's `workloadCheck` becomes a pod that the scheduler
//!   binds to the agent's node; the API server keeps every hardening field; the same pod
//!   without one of them is refused by Pod Security admission; launching twice is one
//!   pod; a third pod on a node with a limit of two is refused clearly; a Succeeded pod is
//!   reaped; deleting the GpuAttestation has the garbage collector remove its pods.
//! - `an_agent_token_launches_on_its_own_node_only`: the agent's ServiceAccount, with a
//!   token bound to its pod on node B (what the kubelet projects), launches a workload pod
//!   for node B; the same launcher asking for node A is refused by the webhook with both
//!   nodes named, and RBAC refuses it any other namespace. Deletes are bound the same way:
//!   the agent may not delete a workload pod on node A (refused, both nodes named), its
//!   reaper deletes its own node's finished pod, and the garbage collector (not an agent)
//!   still deletes pods there.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use lotabots_agent::attest::self_test_requests;
use lotabots_agent::launcher::{
    LaunchError, Launched, Launcher, LauncherConfig, PodSettings, ReapReason,
};
use lotabots_crds::evidence::NONCE_LEN;
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_crds::workload::{DEFAULT_NAMESPACE, WorkloadRequest};
use lotabots_e2e::agents::{pod_bound_token, service_account};
use lotabots_e2e::nodes::{Gpus, SimNode};
use lotabots_e2e::stack::{Webhook, until_webhook_refuses_a_runtime_socket, webhook_configuration};
use lotabots_e2e::{ControlPlane, pods, repo_root, resources, scenario, suite::Ctx, wait};
use serde_json::json;
use tokio::sync::OnceCell;

const NODE_A: &str = "gpu-node-a";
const NODE_B: &str = "gpu-node-b";
/// A namespace the webhook also sees, to tell when its configuration is in force.
const PROBE_NS: &str = "e2e-isolated-pods-probe";

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "isolated_pods",
        || {
            ControlPlane::builder().with_crds().nodes(vec![
                SimNode::gpu(NODE_A, Gpus::h100_x8()),
                SimNode::gpu(NODE_B, Gpus::h100_x8()),
                SimNode::cpu_only("cpu-node"),
            ])
        },
        &[
            scenario!(launched_pods_run_on_their_node_hardened_and_go_with_their_owner),
            scenario!(an_agent_token_launches_on_its_own_node_only),
        ],
    )
}

/// The workload namespace, its ServiceAccount, NetworkPolicy and the agent's Role, applied
/// from `config/workloads`; the operator CA ConfigMap the pods project; and the webhook,
/// registered for the workload namespace (pod creates and, by
/// `agent-pod-deletes.webhook.lotabots.io`, pod deletes) — once for the whole binary, since the webhook
/// fails closed and must outlive every scenario that creates pods there.
async fn setup(ctx: &Ctx) -> Result<()> {
    static ONCE: OnceCell<Result<Arc<Webhook>, String>> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        set_up(ctx)
            .await
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"))
    })
    .await
    .clone()
    .map(|_| ())
    .map_err(|e| anyhow::anyhow!("setting up the workload namespace and webhook: {e}"))
}

async fn set_up(ctx: &Ctx) -> Result<Webhook> {
    let client = ctx.client();
    let dir = repo_root().join("config/workloads").display().to_string();
    ctx.plane().kubectl_out(&["apply", "-k", &dir]).await?;
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "lotabots-operator-ca"},
        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(not used by kwok)\n-----END CERTIFICATE-----\n"}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), DEFAULT_NAMESPACE)
        .create(&PostParams::default(), &ca)
        .await
        .context("the operator CA ConfigMap")?;

    let webhook = Webhook::start().await?;
    resources::ensure_namespace(&client, PROBE_NS).await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &webhook_configuration(
                &webhook.url,
                &webhook.ca_pem,
                Some(("isolated-pods-webhook", &[DEFAULT_NAMESPACE, PROBE_NS])),
            )?,
        )
        .await?;
    // In force once it refuses a runtime socket in the probe namespace.
    service_account(&client, PROBE_NS, "probe").await?;
    let probe_api = Api::<Pod>::namespaced(client.clone(), PROBE_NS);
    until_webhook_refuses_a_runtime_socket(&probe_api, "probe").await?;
    Ok(webhook)
}

/// A cluster-scoped GpuAttestation with a workload check, selecting every GPU node.
async fn owner(client: &kube::Client, name: &str) -> Result<GpuAttestation> {
    let ga: GpuAttestation = serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "GpuAttestation",
        "metadata": {"name": name},
        "spec": {
            "workloadCheck": {"image": "ghcr.io/lotabots/selftest:0.1.0", "timeout": "5m"}
        }
    }))?;
    Api::<GpuAttestation>::all(client.clone())
        .create(&PostParams::default(), &ga)
        .await
        .with_context(|| format!("creating GpuAttestation {name}"))
}

/// The self-test the agent on `node` launches for `owner` after a round with `nonce`.
fn self_test(ctx: &Ctx, owner: &GpuAttestation, node: &str, nonce: u8) -> Result<WorkloadRequest> {
    let labels = ctx
        .plane()
        .nodes()
        .iter()
        .find(|n| n.name == node)
        .with_context(|| format!("no node {node}"))?
        .to_node()
        .metadata
        .labels
        .unwrap_or_default();
    let mut reqs = self_test_requests([owner], &labels, node, &[nonce; NONCE_LEN]);
    ensure!(reqs.len() == 1, "{} self-tests for {node}", reqs.len());
    Ok(reqs.remove(0))
}

fn launcher(client: kube::Client, node: &str, max_pods: usize) -> Launcher {
    let mut cfg = LauncherConfig::new(PodSettings::new("https://127.0.0.1:1"));
    cfg.max_pods = max_pods;
    cfg.first_backoff = Duration::from_millis(200);
    Launcher::new(client, node, cfg)
}

async fn wait_gone(api: &Api<Pod>, name: &str, why: &str) -> Result<()> {
    wait::until(
        &format!("pod {name} to be deleted ({why})"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let name = name.to_owned();
            async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
        },
    )
    .await
}

async fn launched_pods_run_on_their_node_hardened_and_go_with_their_owner(ctx: Ctx) -> Result<()> {
    setup(&ctx).await?;
    let client = ctx.client();
    let pods_api = Api::<Pod>::namespaced(client.clone(), DEFAULT_NAMESPACE);
    let ga = owner(&client, &ctx.name("selftest")).await?;
    let l = launcher(client.clone(), NODE_A, 2);

    // Launch, and launch again: one pod.
    let first = self_test(&ctx, &ga, NODE_A, 1)?;
    let name = first.pod_name();
    ensure!(l.launch(&first).await? == Launched::Created(name.clone()));
    ensure!(l.launch(&first).await? == Launched::AlreadyExists(name.clone()));

    // The scheduler binds it to its node (the required matchFields affinity), kwok runs it.
    let pod = pods::wait_running(&pods_api, &name, lotabots_e2e::agents::POD_TIMEOUT).await?;
    let spec = pod.spec.clone().context("a pod without spec")?;
    ensure!(
        spec.node_name.as_deref() == Some(NODE_A),
        "scheduled onto {:?}, not {NODE_A}",
        spec.node_name
    );
    // What the API server stored still carries the hardening.
    let c = &spec.containers[0];
    let sc = c
        .security_context
        .clone()
        .context("no container securityContext")?;
    ensure!(sc.run_as_non_root == Some(true) && sc.run_as_user == Some(65532));
    ensure!(sc.allow_privilege_escalation == Some(false));
    ensure!(sc.read_only_root_filesystem == Some(true));
    ensure!(sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".to_string()]));
    ensure!(sc.seccomp_profile.map(|p| p.type_).as_deref() == Some("RuntimeDefault"));
    ensure!(spec.automount_service_account_token == Some(false));
    ensure!(spec.service_account_name.as_deref() == Some("lotabots-workload"));
    ensure!(spec.restart_policy.as_deref() == Some("Never"));
    ensure!(spec.active_deadline_seconds == Some(300));
    ensure!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .map(|l| l.contains_key("nvidia.com/gpu"))
            == Some(true)
    );
    let owners = pod.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.len() == 1 && owners[0].uid == ga.metadata.uid.clone().unwrap_or_default(),
        "owner references {owners:?}"
    );
    // The API server holds the namespace to `restricted`: the same pod with privilege
    // escalation allowed is refused by Pod Security admission.
    let mut lax = pod.clone();
    lax.metadata = kube::api::ObjectMeta {
        name: Some(format!("{name}-lax")),
        ..Default::default()
    };
    lax.status = None;
    let lax_spec = lax.spec.as_mut().context("spec")?;
    lax_spec.node_name = None;
    if let Some(sc) = lax_spec.containers[0].security_context.as_mut() {
        sc.allow_privilege_escalation = None;
    }
    match pods_api.create(&PostParams::default(), &lax).await {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message
                    .contains("violates PodSecurity \"restricted:latest\"")
                && s.message.contains("allowPrivilegeEscalation"),
            "refused, but not by Pod Security: {} {}",
            s.code,
            s.message
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => bail!("a pod allowing privilege escalation was admitted in {DEFAULT_NAMESPACE}"),
    }

    // At most two per node: the third waits, with a message that says so.
    let second = self_test(&ctx, &ga, NODE_A, 2)?;
    ensure!(matches!(l.launch(&second).await?, Launched::Created(_)));
    match l.launch(&self_test(&ctx, &ga, NODE_A, 3)?).await {
        Err(e @ LaunchError::AtCapacity { .. }) => ensure!(
            e.to_string().contains(&format!(
                "node {NODE_A} already runs 2 workload pods (limit 2)"
            )),
            "{e}"
        ),
        other => bail!("a third pod on {NODE_A}: {other:?}"),
    }

    // A pod that succeeded has posted its result: the reaper deletes it.
    pods_api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    let reaped = l.reap().await?;
    ensure!(
        reaped == vec![(name.clone(), ReapReason::Succeeded)],
        "reaped {reaped:?}"
    );
    wait_gone(&pods_api, &name, "reaped").await?;

    // Deleting the GpuAttestation has the garbage collector delete its pods.
    Api::<GpuAttestation>::all(client.clone())
        .delete(&ctx.name("selftest"), &DeleteParams::background())
        .await?;
    wait_gone(
        &pods_api,
        &second.pod_name(),
        "garbage collected with its owner",
    )
    .await?;
    Ok(())
}

/// A client authenticating with `token` only (no client certificate).
async fn client_with_token(ctx: &Ctx, token: &str, file: &str) -> Result<kube::Client> {
    let admin = ctx.plane().kubeconfig();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin)?)?;
    let users = kc["users"]
        .as_sequence_mut()
        .context("kubeconfig without users")?;
    for u in users.iter_mut() {
        u["user"] = serde_yaml::to_value(BTreeMap::from([("token", token)]))?;
    }
    let path = ctx.plane().run_dir().join(file);
    std::fs::write(&path, serde_yaml::to_string(&kc)?)?;
    lotabots_e2e::kubeconfig::client(&path).await
}

async fn an_agent_token_launches_on_its_own_node_only(ctx: Ctx) -> Result<()> {
    setup(&ctx).await?;
    let client = ctx.client();
    // The agent as its DaemonSet pod on node B is: ServiceAccount lotabots-system/
    // lotabots-agent (bound to its Role by config/workloads), a pod on the node, a token
    // bound to that pod for the API server's audience.
    resources::ensure_namespace(&client, "lotabots-system").await?;
    service_account(&client, "lotabots-system", "lotabots-agent").await?;
    let (_pod, token) = pod_bound_token(
        &client,
        "lotabots-system",
        "lotabots-agent",
        "lotabots-agent-b",
        NODE_B,
        ctx.plane().issuer(),
    )
    .await?;
    let agent = client_with_token(&ctx, &token, "agent-b.kubeconfig").await?;
    let ga = owner(&client, &ctx.name("agent")).await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), DEFAULT_NAMESPACE);

    // Its own node: admitted, scheduled there.
    let own = self_test(&ctx, &ga, NODE_B, 9)?;
    let on_b = launcher(agent.clone(), NODE_B, 2);
    ensure!(on_b.launch(&own).await? == Launched::Created(own.pod_name()));
    let pod = pods::wait_running(
        &pods_api,
        &own.pod_name(),
        lotabots_e2e::agents::POD_TIMEOUT,
    )
    .await?;
    ensure!(pod.spec.and_then(|s| s.node_name).as_deref() == Some(NODE_B));

    // Another node: the webhook refuses, naming both nodes; the launcher does not retry.
    let other = self_test(&ctx, &ga, NODE_A, 9)?;
    let as_if_on_a = launcher(agent.clone(), NODE_A, 2);
    match as_if_on_a.launch(&other).await {
        Err(LaunchError::Refused { code, message, .. }) => ensure!(
            code == 403
                && message.contains("pods.webhook.lotabots.io")
                && message.contains(&format!("runs on node \"{NODE_B}\""))
                && message.contains(&format!("pinned to node \"{NODE_A}\"")),
            "refused, but not for its node: {code} {message}"
        ),
        res => bail!("the agent on {NODE_B} launching on {NODE_A}: {res:?}"),
    }
    ensure!(
        pods_api.get_opt(&other.pod_name()).await?.is_none(),
        "the pod for {NODE_A} exists"
    );

    // No pods anywhere else: RBAC.
    let elsewhere = {
        let mut p = lotabots_agent::launcher::spec::build(&own, &PodSettings::new("https://x"))?;
        p.metadata.namespace = Some("default".into());
        p
    };
    match Api::<Pod>::namespaced(agent.clone(), "default")
        .create(&PostParams::default(), &elsewhere)
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403 && s.message.contains("cannot create resource \"pods\""),
            "{} {}",
            s.code,
            s.message
        ),
        res => bail!("the agent created a pod in default: {res:?}"),
    }

    // Deletes are bound too: a workload pod on node A (created by an administrator) is
    // not the agent on node B's to delete; the webhook refuses, naming both nodes. It
    // carries no launcher labels, so that the other scenario's launcher on node A, running
    // at the same time, does not count it.
    let mut on_a = lotabots_agent::launcher::spec::build(&other, &PodSettings::new("https://x"))?;
    on_a.metadata.labels = None;
    pods_api.create(&PostParams::default(), &on_a).await?;
    pods::wait_running(
        &pods_api,
        &other.pod_name(),
        lotabots_e2e::agents::POD_TIMEOUT,
    )
    .await?;
    let agent_pods = Api::<Pod>::namespaced(agent.clone(), DEFAULT_NAMESPACE);
    match agent_pods
        .delete(&other.pod_name(), &DeleteParams::background())
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403
                && s.message.contains("agent-pod-deletes.webhook.lotabots.io")
                && s.message.contains(&format!("runs on node \"{NODE_B}\""))
                && s.message.contains(&format!("pinned to node \"{NODE_A}\"")),
            "refused, but not for its node: {} {}",
            s.code,
            s.message
        ),
        res => bail!("the agent on {NODE_B} deleting a pod on {NODE_A}: {res:?}"),
    }
    ensure!(
        pods_api.get_opt(&other.pod_name()).await?.is_some(),
        "the pod on {NODE_A} is gone"
    );

    // Its own node's pod, once it succeeded: the agent's reaper deletes it.
    pods_api
        .patch_status(
            &own.pod_name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    let reaped = on_b.reap().await?;
    ensure!(
        reaped == vec![(own.pod_name(), ReapReason::Succeeded)],
        "the agent on {NODE_B} reaped {reaped:?}"
    );
    wait_gone(&pods_api, &own.pod_name(), "reaped by its agent").await?;

    // Anyone else's deletes are not bound: the garbage collector removes the pod on
    // node A with its owner.
    Api::<GpuAttestation>::all(client.clone())
        .delete(&ctx.name("agent"), &DeleteParams::background())
        .await?;
    wait_gone(
        &pods_api,
        &other.pod_name(),
        "garbage collected with its owner",
    )
    .await?;
    Ok(())
}
