//! GPU self-test results on a real control plane: the operator (evidence API, workload
//! API and controller, in-process) and one agent per H100 kwok node attest; the harness
//! then plays the launcher and the self-test pod — a pod of the workload ServiceAccount
//! pinned to the node, labelled with the request id and owned by the GpuAttestation, and
//! a token the API server binds to that pod (TokenRequest with `boundObjectRef`) — and
//! posts results as the pod's process would. The API server's TokenReview vouches for
//! every token; the scenario checks the fold into the verdicts and `WorkloadChecked`, and
//! that a deleted pod's token, a pod on another node, and the agent's own token are
//! refused.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use lotabots_crds::gpu_attestation::{
    GpuAttestation, GpuAttestationStatus, Verdict, WorkloadCheck,
};
use lotabots_crds::workload::{
    BandwidthCheck, DeviceSelfTest, MatmulCheck, MemoryCheck, RESULT_PATH, RESULT_SCHEMA_VERSION,
    SelfTestReport, WorkloadKind, WorkloadResult,
};
use lotabots_crds::{conditions, labels};
use lotabots_e2e::agent_process::bound_token;
use lotabots_e2e::agents::{AUDIENCE, POD_TIMEOUT, pod_bound_token, service_account};
use lotabots_e2e::stack::{Operator, backend};
use lotabots_e2e::{ControlPlane, SimNode, pods, scenario, suite::Ctx, wait};
use lotabots_operator::workload_api::WorkloadSettings;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "workloads",
        || {
            ControlPlane::builder()
                .with_crds()
                .nodes(SimNode::default_fleet())
        },
        &[scenario!(
            pod_bound_self_test_results_fold_into_the_verdict_and_forgeries_are_refused
        )],
    )
}

/// How long the operator may take to reach a verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(90);
/// The ServiceAccount the workload pods run as (in the scenario's namespace).
const WORKLOAD_SA: &str = "lotabots-workload";
const NODES: [&str; 2] = ["gpu-h100-0", "gpu-h100-1"];

/// A self-test pod as the launcher makes it: workload ServiceAccount, pinned to `node`,
/// labelled with the request id, owned by the GpuAttestation; Running (kwok), with a
/// token for the audience `lotabots` bound to it.
async fn self_test_pod(
    client: &kube::Client,
    ns: &str,
    att: &GpuAttestation,
    request: &str,
    node: &str,
) -> Result<(Pod, String)> {
    let name = format!("gpu-selftest-{request}");
    let mut pod = pods::pod(&name, WORKLOAD_SA, &[], pods::on_node(node));
    pod.metadata.labels = Some(
        [
            (labels::WORKLOAD_ID.to_owned(), request.to_owned()),
            (labels::WORKLOAD_KIND.to_owned(), "gpu-selftest".to_owned()),
        ]
        .into(),
    );
    pod.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "GpuAttestation",
        "name": att.metadata.name,
        "uid": att.metadata.uid,
    }))?]);
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let pod = pods::wait_running(&api, &name, POD_TIMEOUT).await?;
    ensure!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node),
        "{name} is not on {node}"
    );
    let token = bound_token(client, ns, WORKLOAD_SA, &pod, AUDIENCE).await?;
    Ok((pod, token))
}

/// A self-test result as the simulated self-test reports it; `matmul_error` above the
/// tolerance fails its matrix multiply.
fn self_test_result(request: &str, node: &str, nonce: &str, matmul_error: f64) -> WorkloadResult {
    let passed = matmul_error <= 1e-3;
    WorkloadResult {
        schema_version: RESULT_SCHEMA_VERSION.into(),
        request_id: request.into(),
        kind: WorkloadKind::GpuSelfTest,
        nonce: nonce.into(),
        node: node.into(),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        passed,
        error: None,
        self_test: Some(SelfTestReport {
            simulated: true,
            driver_version: Some(12080),
            devices: (0..8)
                .map(|i| DeviceSelfTest {
                    ordinal: i,
                    uuid: format!("GPU-sim-{node}-{i}"),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    matmul: MatmulCheck {
                        n: 1024,
                        max_abs_error: if i == 3 { matmul_error } else { 1e-5 },
                        tolerance: 1e-3,
                        gflops: 50_000.0,
                        passed: i != 3 || passed,
                    },
                    memory: MemoryCheck {
                        bytes_tested: 1 << 30,
                        share: 0.1,
                        errors: 0,
                        passed: true,
                    },
                    bandwidth: BandwidthCheck {
                        bytes: 1 << 28,
                        gbps: 2800.0,
                    },
                })
                .collect(),
        }),
        probes: None,
    }
}

/// Posts `result` with `token` as the pod's process does; the status and the body.
async fn post(
    http: &reqwest::Client,
    op: &Operator,
    token: &str,
    result: &WorkloadResult,
) -> Result<(u16, Value)> {
    let resp = http
        .post(format!("{}{RESULT_PATH}", op.url))
        .bearer_auth(token)
        .json(result)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

fn condition<'a>(
    s: &'a GpuAttestationStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

async fn pod_bound_self_test_results_fold_into_the_verdict_and_forgeries_are_refused(
    ctx: Ctx,
) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    service_account(&client, &ns, WORKLOAD_SA).await?;
    let op = Operator::start_with_workloads(
        client.clone(),
        vec![format!("{ns}/agent")],
        WorkloadSettings {
            service_account: format!("{ns}/{WORKLOAD_SA}"),
            // There is no GPU here: the pod's process posts simulated results.
            accept_simulated: true,
        },
    )
    .await?;
    let workload_metrics = op
        .workload_metrics
        .clone()
        .context("the operator serves the workload API")?;
    let tokens = TempDir::new()?;
    service_account(&client, &ns, "agent").await?;
    let mut agents = Vec::new();
    let mut agent_tokens = Vec::new();
    for node in NODES {
        let (_, token) = pod_bound_token(
            &client,
            &ns,
            "agent",
            &format!("agent-{node}"),
            node,
            AUDIENCE,
        )
        .await?;
        let file = tokens.path().join(node);
        std::fs::write(&file, &token)?;
        agent_tokens.push(token);
        let operator = lotabots_agent::operator_client::OperatorClient::new(
            &op.url,
            op.ca_pem.as_bytes(),
            file,
        )?;
        agents.push(AbortOnDrop(tokio::spawn(lotabots_agent::attest::run_loop(
            client.clone(),
            backend("h100-80gb-hbm3", node)?,
            operator,
            node.to_owned(),
            Arc::new(lotabots_agent::server::AgentState::default()),
        ))));
    }

    // The H100 policy with a required self-test and a bandwidth floor.
    let path =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let name = ctx.name("selftest");
    att.metadata.name = Some(name.clone());
    att.spec.workload_check = Some(WorkloadCheck {
        image: "ghcr.io/lotabots/gpu-selftest@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        timeout: "10m".into(),
        min_bandwidth_gbps: Some(1000.0),
        required: true,
    });
    let atts = Api::<GpuAttestation>::all(client.clone());
    let att = atts.create(&PostParams::default(), &att).await?;

    // Both nodes pass the policy; until their self-tests report they are pending.
    let status = wait::until(
        "both nodes attested by policy, awaiting their self-tests",
        VERDICT_TIMEOUT,
        || {
            let (atts, name) = (atts.clone(), name.clone());
            async move {
                let s = atts.get_status(&name).await?.status.unwrap_or_default();
                let pending = condition(&s, conditions::WORKLOAD_CHECKED)
                    .is_some_and(|c| c.reason == conditions::reason::WORKLOAD_PENDING);
                Ok((s.matched_nodes == 2
                    && s.unknown_nodes == 2
                    && pending
                    && s.nodes.iter().all(|n| {
                        n.reasons
                            .iter()
                            .any(|r| r.contains("GPU self-test result awaited"))
                    }))
                .then_some(s))
            }
        },
    )
    .await?;
    ensure!(
        condition(&status, conditions::READY).is_some_and(|c| c.status == "False"),
        "Ready before any self-test: {:?}",
        status.conditions
    );

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(op.ca_pem.as_bytes())?)
        .build()?;

    // Each node's pod posts a passing (simulated) self-test bound to its node's round.
    for (i, node) in NODES.iter().enumerate() {
        let request = format!("a{i}");
        let (_, token) = self_test_pod(&client, &ns, &att, &request, node).await?;
        let result = self_test_result(&request, node, &op.nonce(node)?, 1e-5);
        let (code, body) = post(&http, &op, &token, &result).await?;
        ensure!(code == 202, "{node}'s passing result: {code} {body}");
        ensure!(
            body == json!({"node": node, "requestId": request, "attestation": name}),
            "receipt: {body}"
        );
    }
    let status = wait::until("Ready with WorkloadChecked True", VERDICT_TIMEOUT, || {
        let (atts, name) = (atts.clone(), name.clone());
        async move {
            let s = atts.get_status(&name).await?.status.unwrap_or_default();
            let ok = |t| condition(&s, t).is_some_and(|c| c.status == "True");
            Ok((ok(conditions::READY) && ok(conditions::WORKLOAD_CHECKED)).then_some(s))
        }
    })
    .await?;
    ensure!(
        status.attested_nodes == 2
            && status.nodes.iter().all(|n| n.verdict == Verdict::Attested
                && n.reasons
                    .iter()
                    .any(|r| r.starts_with("GPU self-test passed: 8 devices"))),
        "nodes: {:?}",
        status.nodes
    );
    ensure!(
        condition(&status, conditions::WORKLOAD_CHECKED)
            .is_some_and(|c| c.reason == conditions::reason::WORKLOAD_PASSED),
        "{:?}",
        status.conditions
    );

    // A second self-test run on node 1 fails its matrix multiply: the node fails.
    let (_, token) = self_test_pod(&client, &ns, &att, "b1", NODES[1]).await?;
    let failing = self_test_result("b1", NODES[1], &op.nonce(NODES[1])?, 0.75);
    let (code, body) = post(&http, &op, &token, &failing).await?;
    ensure!(code == 202, "the failing result: {code} {body}");
    let status = wait::until("node 1 failed by its self-test", VERDICT_TIMEOUT, || {
        let (atts, name) = (atts.clone(), name.clone());
        async move {
            let s = atts.get_status(&name).await?.status.unwrap_or_default();
            Ok((s.failed_nodes == 1).then_some(s))
        }
    })
    .await?;
    let failed = &status.nodes[0];
    ensure!(
        failed.node == NODES[1]
            && failed.verdict == Verdict::Failed
            && failed.reasons[0].contains(
                "GPU self-test failed: device 3 (GPU-sim-gpu-h100-1-3): matrix multiply differs from the CPU reference by 0.75"
            ),
        "{failed:?}"
    );
    let workload = condition(&status, conditions::WORKLOAD_CHECKED).context("WorkloadChecked")?;
    ensure!(
        workload.status == "False"
            && workload.reason == conditions::reason::WORKLOAD_FAILED
            && workload.message.contains(NODES[1]),
        "{workload:?}"
    );
    ensure!(
        condition(&status, conditions::READY)
            .is_some_and(|c| c.status == "False" && c.reason == conditions::reason::NODES_FAILED),
        "{:?}",
        status.conditions
    );
    let accepted = workload_metrics.results("accepted");
    ensure!(accepted == 3, "accepted results: {accepted}");

    // A deleted pod's token: the API server stops vouching for it (and the operator's own
    // look-up of the pod refuses it while the API server's token cache still holds it).
    let (_, token) = self_test_pod(&client, &ns, &att, "c0", NODES[0]).await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    pods_api
        .delete(
            "gpu-selftest-c0",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    wait::until("the pod to be gone", POD_TIMEOUT, || {
        let pods_api = pods_api.clone();
        async move {
            Ok(pods_api
                .get_opt("gpu-selftest-c0")
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    let forged = self_test_result("c0", NODES[0], &op.nonce(NODES[0])?, 0.9);
    let (code, body) = post(&http, &op, &token, &forged).await?;
    ensure!(
        (code == 401 && body["code"] == "token_rejected")
            || (code == 403 && body["code"] == "pod_mismatch"),
        "a deleted pod's token: {code} {body}"
    );
    eprintln!(
        "workloads: a deleted pod's token was refused with {code} {}",
        body["code"]
    );
    // Once the API server's token cache (10 s) has expired, TokenReview itself refuses it.
    let rejected = wait::until(
        "TokenReview to refuse the deleted pod's token",
        Duration::from_secs(30),
        || {
            let (http, forged, token) = (http.clone(), forged.clone(), token.clone());
            let op = &op;
            async move {
                let (code, body) = post(&http, op, &token, &forged).await?;
                Ok((code == 401).then_some(body))
            }
        },
    )
    .await?;
    ensure!(
        rejected["code"] == "token_rejected"
            && rejected["type"] == "https://lotabots.io/problems/token_rejected",
        "{rejected}"
    );

    // A pod on node 1 cannot speak for node 0 (with node 0's nonce).
    let (_, token) = self_test_pod(&client, &ns, &att, "d1", NODES[1]).await?;
    let (code, body) = post(
        &http,
        &op,
        &token,
        &self_test_result("d1", NODES[0], &op.nonce(NODES[0])?, 0.9),
    )
    .await?;
    ensure!(
        code == 403 && body["code"] == "wrong_node",
        "a pod on another node: {code} {body}"
    );
    // Nor with its own node's name but node 0's round.
    let (code, body) = post(
        &http,
        &op,
        &token,
        &self_test_result("d1", NODES[1], &op.nonce(NODES[0])?, 0.9),
    )
    .await?;
    ensure!(
        code == 409 && body["code"] == "stale_nonce",
        "another node's nonce: {code} {body}"
    );
    // The agent's own (pod-bound) token is not a workload pod's.
    let (code, body) = post(
        &http,
        &op,
        &agent_tokens[0],
        &self_test_result("a0", NODES[0], &op.nonce(NODES[0])?, 0.9),
    )
    .await?;
    ensure!(
        code == 403 && body["code"] == "not_workload_account",
        "the agent's token: {code} {body}"
    );

    // None of the refusals changed anything: node 0 is still attested by its result.
    let s = atts.get_status(&name).await?.status.unwrap_or_default();
    ensure!(
        s.nodes
            .iter()
            .any(|n| n.node == NODES[0] && n.verdict == Verdict::Attested),
        "{:?}",
        s.nodes
    );
    ensure!(
        workload_metrics.results("accepted") == 3,
        "a refusal was stored"
    );

    // The self-test binary itself as node 0's pod process, in its simulated mode (the
    // checks on the CPU): it reads the pod-bound token and the operator's CA from files as
    // in the pod and posts. Its "bandwidth" is a host memory copy, far below the policy's
    // 1000 GB/s floor, so node 0 now fails on bandwidth although every check passed.
    let request = "5e1f7e57c0de0001";
    let (_, token) = self_test_pod(&client, &ns, &att, request, NODES[0]).await?;
    let files = TempDir::new()?;
    let path = |name: &str| files.path().join(name).display().to_string();
    std::fs::write(path("token"), &token)?;
    std::fs::write(path("ca.pem"), &op.ca_pem)?;
    let args = <lotabots_gpu_selftest::cli::Args as clap::Parser>::try_parse_from([
        "lotabots-gpu-selftest".to_owned(),
        "--simulated".into(),
        "--nonce".into(),
        op.nonce(NODES[0])?,
        "--node".into(),
        NODES[0].into(),
        "--request-id".into(),
        request.into(),
        "--operator-url".into(),
        op.url.clone(),
        "--token-file".into(),
        path("token"),
        "--ca-file".into(),
        path("ca.pem"),
        "--output".into(),
        path("result.json"),
        // Small, so that the unoptimised CPU checks take milliseconds.
        "--matmul-n".into(),
        "64".into(),
        "--matmul-runs".into(),
        "1".into(),
        "--bandwidth-mib".into(),
        "1".into(),
        "--bandwidth-runs".into(),
        "2".into(),
        "--post-attempts".into(),
        "1".into(),
    ])?;
    // It runs its own runtime to post: on a thread of its own, as in its own process.
    let code = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || lotabots_gpu_selftest::cli::run(&args)).join()
    })
    .await?
    .map_err(|_| anyhow::anyhow!("the self-test panicked"))?;
    let posted: WorkloadResult =
        serde_json::from_str(&std::fs::read_to_string(path("result.json"))?)?;
    ensure!(
        code == 0 && posted.passed && posted.self_test.as_ref().is_some_and(|t| t.simulated),
        "the self-test exited {code}: {posted:?}"
    );
    let gbps = posted
        .self_test
        .as_ref()
        .map_or(0.0, |t| t.devices[0].bandwidth.gbps);
    let status = wait::until("node 0 failed on bandwidth", VERDICT_TIMEOUT, || {
        let (atts, name) = (atts.clone(), name.clone());
        async move {
            let s = atts.get_status(&name).await?.status.unwrap_or_default();
            Ok((s.failed_nodes == 2).then_some(s))
        }
    })
    .await?;
    let node0 = status
        .nodes
        .iter()
        .find(|n| n.node == NODES[0])
        .context("node 0 not listed")?;
    ensure!(
        node0.reasons[0].contains("is below the policy's minimum 1000 GB/s"),
        "{node0:?}"
    );
    ensure!(
        workload_metrics.results("accepted") == 4,
        "the binary's result was not counted"
    );
    eprintln!(
        "workloads: lotabots-gpu-selftest --simulated posted through the pod-bound token; its host copy measured {gbps:.1} GB/s, below the 1000 GB/s floor: {}",
        node0.reasons[0]
    );

    // The controller removes its finalizer (and node labels) before it stops.
    atts.delete(&name, &DeleteParams::default()).await?;
    wait::until("the GpuAttestation to be gone", VERDICT_TIMEOUT, || {
        let (atts, name) = (atts.clone(), name.clone());
        async move { Ok(atts.get_opt(&name).await?.is_none().then_some(())) }
    })
    .await?;
    drop(agents);
    op.stop().await;
    Ok(())
}

/// Aborts the agent loop when the scenario ends (also on failure).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
