//! Simulated GPU nodes on a real control plane: kwok keeps the nodes Ready with the GPU
//! capacity and GPU Feature Discovery labels they were created with; the real
//! kube-scheduler places GPU pods by those resources and kwok runs them; and a
//! ServiceAccount token bound to a pod on a node names that node in a TokenReview — the
//! identity the agents will present to the operator.
//!
//! One control plane for the whole binary (see `lotabots_e2e::suite`), with the default
//! fleet: two H100 nodes, one A100 node partitioned with MIG, one CPU-only node.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::{Node, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use lotabots_crds::labels;
use lotabots_e2e::{ControlPlane, SimNode, nodes, pods, scenario, suite::Ctx, wait};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "nodes",
        || ControlPlane::builder().nodes(SimNode::default_fleet()),
        &[
            scenario!(gpu_nodes_carry_gpu_capacity_and_gfd_labels),
            scenario!(gpu_pods_are_scheduled_by_their_gpu_resources_and_run),
            scenario!(a_pod_bound_token_names_its_node_in_a_token_review),
        ],
    )
}

use lotabots_e2e::agents::{AUDIENCE, POD_TIMEOUT, pod_bound_token, service_account};

/// Every node of the fleet is Ready under kwok, advertises exactly the GPU resources it
/// was given (capacity and allocatable) and carries the GFD labels; the CPU node has
/// neither.
async fn gpu_nodes_carry_gpu_capacity_and_gfd_labels(ctx: Ctx) -> Result<()> {
    let api = Api::<Node>::all(ctx.client());
    let fleet = ctx.plane().nodes();
    ensure!(!fleet.is_empty(), "the plane was started without nodes");
    for sim in fleet {
        let node = api.get(&sim.name).await?;
        ensure!(nodes::is_ready(&node), "node {} is not Ready", sim.name);
        let status = node.status.as_ref().context("a node without status")?;
        for (what, resources) in [
            ("capacity", status.capacity.as_ref()),
            ("allocatable", status.allocatable.as_ref()),
        ] {
            let gpu: BTreeMap<String, String> = resources
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("nvidia.com/"))
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            let expected: BTreeMap<String, String> = sim
                .gpu_resources()
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            ensure!(
                gpu == expected,
                "node {} {what}: GPU resources {gpu:?}, expected {expected:?}",
                sim.name
            );
        }
        let node_labels = node.labels();
        match &sim.gpus {
            Some(g) => {
                for (k, v) in g.gfd_labels() {
                    ensure!(
                        node_labels.get(&k) == Some(&v),
                        "node {}: label {k} is {:?}, expected {v:?}",
                        sim.name,
                        node_labels.get(&k)
                    );
                }
                ensure!(
                    node_labels.get(labels::GPU_PRODUCT).map(String::as_str)
                        == Some(labels::gfd_label_value(&g.product).as_str()),
                    "node {}: no {} label",
                    sim.name,
                    labels::GPU_PRODUCT
                );
            }
            None => ensure!(
                !node_labels.keys().any(|k| k.starts_with("nvidia.com/")),
                "CPU node {} carries GPU labels",
                sim.name
            ),
        }
    }
    // The H100 fleet as a GpuAttestation would select it: by its GFD labels.
    let selected = api
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}=true,{}=NVIDIA-H100-80GB-HBM3",
            labels::GPU_PRESENT,
            labels::GPU_PRODUCT
        )))
        .await?;
    let mut names: Vec<String> = selected.items.iter().map(|n| n.name_any()).collect();
    names.sort();
    ensure!(
        names == ["gpu-h100-0", "gpu-h100-1"],
        "the H100 label selector matched {names:?}"
    );
    Ok(())
}

/// A pod asking for `nvidia.com/gpu` lands on an H100 node (never the MIG or CPU node)
/// and reaches Running; one asking for a MIG device lands on the A100 node; one asking
/// for more GPUs than any node has stays Pending, the scheduler saying why.
async fn gpu_pods_are_scheduled_by_their_gpu_resources_and_run(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace().await?;
    service_account(&ctx.client(), &ns, "workload").await?;
    let api = Api::<Pod>::namespaced(ctx.client(), &ns);
    let pp = PostParams::default();

    api.create(
        &pp,
        &pods::pod("gpu-1", "workload", &[(labels::GPU_RESOURCE, 1)], None),
    )
    .await?;
    api.create(
        &pp,
        &pods::pod("mig-1", "workload", &[("nvidia.com/mig-1g.10gb", 1)], None),
    )
    .await?;
    api.create(
        &pp,
        &pods::pod(
            "gpu-too-many",
            "workload",
            &[(labels::GPU_RESOURCE, 9)],
            None,
        ),
    )
    .await?;

    let gpu = pods::wait_running(&api, "gpu-1", POD_TIMEOUT).await?;
    let node = gpu.spec.as_ref().and_then(|s| s.node_name.clone());
    ensure!(
        matches!(node.as_deref(), Some("gpu-h100-0" | "gpu-h100-1")),
        "the GPU pod was placed on {node:?}"
    );
    let mig = pods::wait_running(&api, "mig-1", POD_TIMEOUT).await?;
    let node = mig.spec.as_ref().and_then(|s| s.node_name.clone());
    ensure!(
        node.as_deref() == Some("gpu-a100-mig-0"),
        "the MIG pod was placed on {node:?}"
    );

    let why = wait::until("the scheduler to reject gpu-too-many", POD_TIMEOUT, || {
        let api = api.clone();
        async move {
            let p = api.get("gpu-too-many").await?;
            let cond = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
                .filter(|c| c.status == "False")
                .map(|c| c.message.clone().unwrap_or_default());
            Ok(cond)
        }
    })
    .await?;
    ensure!(
        why.contains("Insufficient nvidia.com/gpu"),
        "gpu-too-many unschedulable for another reason: {why}"
    );
    let p = api.get("gpu-too-many").await?;
    ensure!(
        pods::phase(&p) == "Pending"
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none(),
        "gpu-too-many was placed: {:?}",
        p.spec.and_then(|s| s.node_name)
    );
    Ok(())
}

fn token_review(token: &str, audience: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: Some(vec![audience.into()]),
        },
        ..Default::default()
    }
}

/// For each GPU node: an agent pod pinned there, a token from the TokenRequest API bound
/// to that pod with audience `lotabots`, and a TokenReview that authenticates it as the
/// ServiceAccount with the pod and node named in `extra`. The token is refused for
/// another audience, and once its pod is deleted.
async fn a_pod_bound_token_names_its_node_in_a_token_review(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace().await?;
    service_account(&ctx.client(), &ns, "agent").await?;
    let pods_api = Api::<Pod>::namespaced(ctx.client(), &ns);
    let reviews = Api::<TokenReview>::all(ctx.client());
    let pp = PostParams::default();
    let gpu_nodes: Vec<&SimNode> = ctx
        .plane()
        .nodes()
        .iter()
        .filter(|n| n.gpus.is_some())
        .collect();
    ensure!(!gpu_nodes.is_empty(), "no GPU nodes");

    let mut tokens = Vec::new();
    for node in &gpu_nodes {
        let pod_name = format!("agent-{}", node.name);
        let (pod, token) =
            pod_bound_token(&ctx.client(), &ns, "agent", &pod_name, &node.name, AUDIENCE).await?;

        let review = reviews.create(&pp, &token_review(&token, AUDIENCE)).await?;
        let st = review.status.context("a TokenReview without status")?;
        ensure!(
            st.authenticated == Some(true),
            "the token for {pod_name} was not authenticated: {:?}",
            st.error
        );
        ensure!(
            st.audiences.as_deref() == Some(&[AUDIENCE.to_string()][..]),
            "audiences {:?}",
            st.audiences
        );
        let user = st.user.context("an authenticated review without user")?;
        let expected_user = format!("system:serviceaccount:{ns}:agent");
        ensure!(
            user.username.as_deref() == Some(expected_user.as_str()),
            "username {:?}",
            user.username
        );
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        ensure!(
            one("authentication.kubernetes.io/node-name").as_deref() == Some(node.name.as_str()),
            "extra node-name {:?} for a pod on {} (extra: {extra:?})",
            one("authentication.kubernetes.io/node-name"),
            node.name
        );
        ensure!(
            one("authentication.kubernetes.io/pod-name").as_deref() == Some(pod_name.as_str())
                && one("authentication.kubernetes.io/pod-uid") == pod.metadata.uid,
            "extra pod-name/pod-uid do not name {pod_name}: {extra:?}"
        );
        ensure!(
            one("authentication.kubernetes.io/node-uid").is_some(),
            "no node-uid in {extra:?}"
        );

        let other = reviews
            .create(&pp, &token_review(&token, "someone-else"))
            .await?;
        if other.status.and_then(|s| s.authenticated) == Some(true) {
            bail!("the {AUDIENCE} token was accepted for another audience");
        }
        tokens.push((pod_name, token));
    }

    // A bound token dies with its pod.
    let (pod_name, token) = tokens.first().context("no token")?;
    pods_api
        .delete(pod_name, &DeleteParams::default().grace_period(0))
        .await?;
    wait::until("the agent pod to be gone", POD_TIMEOUT, || {
        let pods_api = pods_api.clone();
        async move { Ok(pods_api.get_opt(pod_name).await?.is_none().then_some(())) }
    })
    .await?;
    // kube-apiserver caches successful token authentications for 10 s
    // (TokenSuccessCacheTTL), so the refusal may take that long.
    let deleted = std::time::Instant::now();
    wait::until(
        &format!("the token of deleted pod {pod_name} to be refused"),
        Duration::from_secs(30),
        || {
            let reviews = reviews.clone();
            let review = token_review(token, AUDIENCE);
            async move {
                let r = reviews.create(&PostParams::default(), &review).await?;
                Ok((r.status.and_then(|s| s.authenticated) != Some(true)).then_some(()))
            }
        },
    )
    .await?;
    eprintln!(
        "nodes: {} node-bound tokens reviewed (node-name in extra); one refused {:.1} s after its pod was deleted",
        tokens.len(),
        deleted.elapsed().as_secs_f64()
    );
    Ok(())
}
