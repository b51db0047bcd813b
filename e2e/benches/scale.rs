//! Scale: one operator process, 1,000 kwok GPU nodes, ten GpuAttestations that each
//! select all of them, and a load generator playing the 1,000 agents — a token bound to
//! an agent pod on each node, a real challenge and a real (simulated-backend) submission
//! per node, 32 in flight.
//!
//! Reports: node start-up, the time from the first submission to all ten GpuAttestations
//! `Ready`, the operator's peak and current RSS and CPU seconds over that window, the
//! requests it made to the API server in that window by kind (the API server's own
//! `apiserver_request_total`), and the size of each GpuAttestation's status in etcd.
//!
//! `cargo build --release -p lotabots-operator && cargo bench -p lotabots-e2e --bench scale`
//! (`LOTABOTS_SCALE_NODES` changes the node count).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use lotabots_agent::attest::attest_once;
use lotabots_agent::operator_client::OperatorClient;
use lotabots_crds::conditions;
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_e2e::agents::{AUDIENCE, pod_bound_token, service_account};
use lotabots_e2e::operator_process::{OperatorProcess, OperatorSpec};
use lotabots_e2e::stack::backend;
use lotabots_e2e::webhook_process::WebhookPki;
use lotabots_e2e::{ControlPlane, Gpus, SimNode, procfs, resources, wait};

const NAMESPACE: &str = "lotabots-system";
const AGENT_SA: &str = "lotabots-agent";
const ATTESTATIONS: usize = 10;
const IN_FLIGHT: usize = 32;
const PROFILE: &str = "h100-sxm5-80gb-x8";

fn main() -> Result<()> {
    let nodes: usize = std::env::var("LOTABOTS_SCALE_NODES")
        .ok()
        .map(|n| n.parse())
        .transpose()
        .context("LOTABOTS_SCALE_NODES")?
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fleet: Vec<SimNode> = (0..nodes)
        .map(|i| SimNode::gpu(&format!("scale-{i:04}"), Gpus::h100_x8()))
        .collect();
    let started = Instant::now();
    let plane = rt.block_on(ControlPlane::builder().with_crds().nodes(fleet).start())?;
    println!(
        "{nodes} kwok nodes Ready, control plane up: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let outcome = rt.block_on(run(&plane));
    if outcome.is_err() {
        eprintln!("{}", plane.diagnostics());
    }
    eprintln!("{}", plane.shutdown());
    outcome
}

async fn run(plane: &ControlPlane) -> Result<()> {
    let client = plane.client();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = plane.run_dir().join("bench-scale");
    std::fs::create_dir_all(dir.join("tokens"))?;

    resources::ensure_namespace(&client, NAMESPACE).await?;
    wait::until(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let sas = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE);
            async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await?;
    service_account(&client, NAMESPACE, AGENT_SA).await?;

    // The agents' identities: a pod on each node and a token bound to it.
    let t = Instant::now();
    let names: Vec<String> = plane.nodes().iter().map(|n| n.name.clone()).collect();
    let token_dir = dir.join("tokens");
    let tokens: Vec<Result<()>> = futures::stream::iter(names.clone())
        .map(|node| {
            let (client, token_dir) = (client.clone(), token_dir.clone());
            async move {
                let pod = format!("agent-{node}");
                let (_, token) =
                    pod_bound_token(&client, NAMESPACE, AGENT_SA, &pod, &node, AUDIENCE).await?;
                std::fs::write(token_dir.join(&node), token)?;
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    tokens.into_iter().collect::<Result<Vec<_>>>()?;
    println!(
        "{} agent pods Running with bound tokens: {:.1} s",
        names.len(),
        t.elapsed().as_secs_f64()
    );

    let pki = WebhookPki::new()?;
    let (cert, key) = pki.issue()?;
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    let mut operator = OperatorProcess::start(
        &dir,
        OperatorSpec {
            kubeconfig: plane.kubeconfig().to_path_buf(),
            args: [
                format!("--tls-cert={}", cert_path.display()),
                format!("--tls-key={}", key_path.display()),
                format!("--agent-service-accounts={NAMESPACE}/{AGENT_SA}"),
                "--allow-simulated".into(),
                format!("--lease-namespace={NAMESPACE}"),
                "--identity=scale-operator".into(),
                format!("--model-root={}", dir.join("models").display()),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
            env: Vec::new(),
        },
    )
    .await?;
    let pid = operator.pid().context("the operator's pid")?;

    let attestations = Api::<GpuAttestation>::all(client.clone());
    let sample =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut names_ga = Vec::new();
    for i in 0..ATTESTATIONS {
        let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&sample)?)?;
        let name = format!("scale-{i}");
        att.metadata.name = Some(name.clone());
        attestations.create(&PostParams::default(), &att).await?;
        names_ga.push(name);
    }

    let requests_before = apiserver_requests(&client).await?;
    let cpu_before = cpu_seconds(pid)?;
    let start = Instant::now();
    let ca = pki.ca_pem().to_owned();
    let url = operator.url();
    let submissions: Vec<Result<()>> = futures::stream::iter(names.clone())
        .map(|node| {
            let (ca, url, token_dir) = (ca.clone(), url.clone(), token_dir.clone());
            async move {
                let op = OperatorClient::new(&url, ca.as_bytes(), token_dir.join(&node))?;
                attest_once(backend(PROFILE, &node)?, &op, &node)
                    .await
                    .with_context(|| format!("attesting {node}"))?;
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let submitted = start.elapsed();
    let failed: Vec<_> = submissions.into_iter().filter_map(Result::err).collect();
    ensure!(
        failed.is_empty(),
        "{} submissions failed, first: {:#}",
        failed.len(),
        failed[0]
    );

    wait::until(
        "every GpuAttestation Ready",
        Duration::from_secs(600),
        || {
            let attestations = attestations.clone();
            async move {
                let list = attestations.list(&Default::default()).await?.items;
                let ready = list
                    .iter()
                    .filter(|a| {
                        a.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("scale-"))
                    })
                    .filter(|a| is_ready(a))
                    .count();
                Ok((ready == ATTESTATIONS).then_some(()))
            }
        },
    )
    .await?;
    let all_ready = start.elapsed();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let requests_after = apiserver_requests(&client).await?;
    operator.check_running()?;

    println!(
        "{} submissions (challenge + evidence, {IN_FLIGHT} in flight): {:.1} s ({:.0}/s)",
        names.len(),
        submitted.as_secs_f64(),
        names.len() as f64 / submitted.as_secs_f64()
    );
    println!(
        "first submission to all {ATTESTATIONS} GpuAttestations Ready: {:.1} s",
        all_ready.as_secs_f64()
    );
    println!(
        "operator: RSS {} MiB now, {} MiB peak; CPU {:.1} s in that window ({:.0} % of one core)",
        procfs::rss_kib(pid).unwrap_or_default() / 1024,
        procfs::peak_rss_kib(pid).unwrap_or_default() / 1024,
        cpu,
        cpu / all_ready.as_secs_f64() * 100.0
    );
    println!("API server requests in that window (operator's kinds; kwok's heartbeats excluded):");
    for (key, after) in &requests_after {
        let delta = after - requests_before.get(key).copied().unwrap_or(0.0);
        if delta > 0.0 {
            println!(
                "  {key:<55} {delta:>7.0} ({:.1}/s)",
                delta / all_ready.as_secs_f64()
            );
        }
    }
    for name in &names_ga {
        let att = attestations.get(name).await?;
        let bytes = serde_json::to_vec(&att.status)?.len();
        println!("status of {name}: {bytes} bytes");
    }
    Ok(())
}

fn is_ready(att: &GpuAttestation) -> bool {
    att.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == conditions::READY && c.status == "True")
        })
        .unwrap_or(false)
}

/// User + system CPU seconds of `pid` so far (`/proc/PID/stat`, in clock ticks).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are space separated.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ, the unit of these fields, is 100 on every Linux ABI this runs on.
    Ok(ticks / 100.0)
}

/// `apiserver_request_total` by verb, resource and subresource, for the kinds the
/// operator writes or reads (kwok's node heartbeats would drown them, so only
/// node *patches without a subresource* — labels — count for nodes).
async fn apiserver_requests(client: &kube::Client) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let wanted = match resource.as_str() {
            "tokenreviews" | "gpuattestations" | "events" => true,
            "nodes" => sub.is_empty() && verb != "WATCH",
            _ => false,
        };
        if wanted {
            let key = format!(
                "{verb} {resource}{}{sub}",
                if sub.is_empty() { "" } else { "/" }
            );
            *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(out)
}
