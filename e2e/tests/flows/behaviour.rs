//! Issue 12's behavioural probes, every lotabots component a process: a GpuAttestation
//! attests one H100 node (it gets `lotabots.io/gpu-attested=true`); two ModelAttestations
//! of all-MiniLM-L6-v2 ask for a behavioural check, one with a suite the model passes and
//! one with a suite it must fail. The operator picks the attested node and writes each
//! request into `status.behaviour`; that node's agent (launcher on) creates the probe pod
//! in the workload namespace of `config/workloads`; kwok runs it as far as `Running`, and
//! the harness plays its process: the real `lotabots-probe-runner`, with the environment
//! the launcher put in the pod and a token the API server bound to that pod. The runner
//! fetches the suite and the model from the operator, checks both against the digests in
//! its parameters, runs the suite and posts the result.
//!
//! Checked: `Behaviour` and `Ready` of both, the verdicts and reasons, the request's node
//! and node attestation, the signed statement's `behaviour` in the evidence store, that
//! a pod's token fetches nothing of another request, and that the agent deletes the
//! probe pods once they succeeded or their ModelAttestation is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use lotabots_crds::conditions;
use lotabots_crds::model_attestation::{BehaviourStatus, ModelAttestation, Verdict};
use lotabots_crds::workload::{self, DEFAULT_NAMESPACE, MODEL_PATH, SERVICE_ACCOUNT};
use lotabots_e2e::agent_process::{AgentProcess, bound_token, pod_identity};
use lotabots_e2e::agents::AUDIENCE;
use lotabots_e2e::operator_process::workspace_binary;
use lotabots_e2e::packaging::kubectl;
use lotabots_e2e::{repo_root, suite::Ctx, wait};
use lotabots_model::bundle::{Bundle, Trust};
use lotabots_model::keys::SigningKey;
use lotabots_store::bundle;
use lotabots_store::db::{Database, RecordFilter, RecordKind};
use lotabots_store::objects::bundle_key;
use serde_json::{Value, json};

use super::{
    Install, TURN, VERDICT_TIMEOUT, create, gcs_store, h100, install, kubectl_wait, records,
    start_operator,
};

/// The node the GpuAttestation attests, and so the only one probes may run on.
const NODE: &str = "gpu-h100-0";
/// How long the agent may take to delete a finished probe pod: it reaps every 30 s when
/// no ModelAttestation changes, and after each attestation round.
const REAP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the runner may take on two CPU cores (hash 90 MB, load, embed a few texts).
const RUNNER_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn model_behaviour_probed_in_a_pod_on_an_attested_node(ctx: Ctx) -> Result<()> {
    let _turn = TURN.lock().await;
    let model = minilm()?;
    let s3 = &ctx.plane().stores()?.s3;
    let install = install(&ctx, s3, "beh").await?;
    workload_namespace(&ctx, &install).await?;
    let mut operator = start_operator(&ctx, &install, s3).await?;
    let identity = pod_identity(
        &ctx.client(),
        ctx.plane().kubeconfig(),
        &install.ns,
        &install.agent_sa(),
        &format!("agent-{NODE}"),
        NODE,
        ctx.plane().issuer(),
        Some(AUDIENCE),
        &install.dir.join("credentials"),
    )
    .await?;
    let mut agent = AgentProcess::start_launching(
        &install.dir,
        &identity,
        "h100-sxm5-80gb-x8",
        &operator.url(),
        &install.tls_cert,
    )
    .await?;
    let gpus = ctx.name("h100");
    create(&ctx, &h100(&gpus, "In", &[NODE])?).await?;
    kubectl_wait(&ctx, &gpus, "Ready", VERDICT_TIMEOUT).await?;

    // The model on the claim `minilm` under the operator's model root; the suites in a
    // ConfigMap of the tenant's namespace.
    copy_dir(
        &model,
        &install.dir.join("models").join(&install.ns).join("minilm"),
    )?;
    let suites = repo_root().join("agent/probes/suites");
    let probes: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "probes"},
        "data": {
            "semantic.yaml": std::fs::read_to_string(suites.join("minilm-semantic.yaml"))?,
            "must-fail.yaml": std::fs::read_to_string(suites.join("minilm-must-fail.yaml"))?,
        },
    }))?;
    Api::<ConfigMap>::namespaced(ctx.client(), &install.ns)
        .create(&PostParams::default(), &probes)
        .await?;
    let mas = Api::<ModelAttestation>::namespaced(ctx.client(), &install.ns);
    for (name, key) in [("passes", "semantic.yaml"), ("fails", "must-fail.yaml")] {
        mas.create(&PostParams::default(), &model_attestation(name, key)?)
            .await
            .with_context(|| format!("creating ModelAttestation {name}"))?;
    }

    let began = Instant::now();
    let passes = requested(&mas, "passes").await?;
    let fails = requested(&mas, "fails").await?;
    let requested_after = began.elapsed();
    for r in [&passes, &fails] {
        ensure!(r.node == NODE, "probes requested on {}, not {NODE}", r.node);
        ensure!(
            r.evidence_digest.starts_with("sha256:") && r.model_bytes > 80_000_000,
            "{r:?}"
        );
    }
    ensure!(
        passes.suite_digest != fails.suite_digest && passes.request_id != fails.request_id,
        "two suites, two requests: {passes:?} {fails:?}"
    );
    let pod_api = Api::<Pod>::namespaced(ctx.client(), DEFAULT_NAMESPACE);
    let good_pod = launched(&pod_api, &passes).await?;
    let bad_pod = launched(&pod_api, &fails).await?;
    // Tokens of the workload ServiceAccount bound to each pod, as the kubelet projects.
    let client = ctx.client();
    let token = |pod| {
        bound_token(
            &client,
            DEFAULT_NAMESPACE,
            SERVICE_ACCOUNT,
            pod,
            workload::TOKEN_AUDIENCE,
        )
    };
    let good_token = token(&good_pod).await?;
    let bad_token = token(&bad_pod).await?;

    // A pod's token fetches nothing of another pod's request.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            &install.tls_cert,
        )?)?)
        .build()?;
    let url = format!("{}{MODEL_PATH}/{}/files", operator.url(), passes.request_id);
    let refused = http.get(&url).bearer_auth(&bad_token).send().await?;
    ensure!(
        refused.status() == reqwest::StatusCode::FORBIDDEN,
        "the other pod's token got {} for {url}",
        refused.status()
    );

    let ran = Instant::now();
    let good_run = play(&install, &good_pod, &good_token, "passes").await?;
    let run_secs = ran.elapsed().as_secs_f64();
    ensure!(
        good_run.0 == Some(0),
        "runner of the passing suite: {good_run:?}"
    );
    let bad_run = play(&install, &bad_pod, &bad_token, "fails").await?;
    ensure!(
        bad_run.0 == Some(1),
        "runner of the failing suite: {bad_run:?}"
    );

    kubectl_wait_model(&ctx, &install.ns, "passes", "Ready").await?;
    kubectl_wait_model(&ctx, &install.ns, "fails", "Behaviour=False").await?;
    let good = mas.get_status("passes").await?;
    let s = good.status.as_ref().context("passes has no status")?;
    ensure!(s.verdict == Some(Verdict::Attested), "{s:?}");
    let behaviour = condition(s, conditions::BEHAVIOUR)?;
    ensure!(
        behaviour.status == "True" && behaviour.reason == conditions::reason::PROBES_PASSED,
        "{behaviour:?}"
    );
    let result = s
        .behaviour
        .as_ref()
        .and_then(|b| b.result.as_ref())
        .context("no behaviour result on passes")?;
    ensure!(
        result.passed && result.probes.len() >= 3 && result.probes.iter().all(|p| p.passed),
        "{result:?}"
    );
    let bad = mas.get_status("fails").await?;
    let s = bad.status.as_ref().context("fails has no status")?;
    ensure!(s.verdict == Some(Verdict::Failed), "{s:?}");
    ensure!(
        s.reasons
            .iter()
            .any(|r| r.contains("drums-closer-to-food-than-pasta")),
        "the failing probe is not named: {:?}",
        s.reasons
    );
    let failed: Vec<&str> = s
        .behaviour
        .as_ref()
        .and_then(|b| b.result.as_ref())
        .map(|r| {
            r.probes
                .iter()
                .filter(|p| !p.passed)
                .map(|p| p.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        failed == ["drums-closer-to-food-than-pasta"],
        "failed probes: {failed:?}"
    );

    statement_carries_the_behaviour(&ctx, &install, &passes).await?;

    // Clean-up by the agent: the passing pod's process exited 0 (the kubelet would mark
    // it Succeeded; kwok does not), the failing one's ModelAttestation is deleted (its
    // pod carries the owner by label, in another namespace).
    let cleanup = Instant::now();
    pod_api
        .patch_status(
            &name_of(&good_pod),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    mas.delete("fails", &DeleteParams::default()).await?;
    for (pod, why) in [(&good_pod, "it succeeded"), (&bad_pod, "its owner is gone")] {
        let name = name_of(pod);
        wait::until(
            &format!("the agent to delete {name}: {why}"),
            REAP_TIMEOUT,
            || {
                let (api, name) = (pod_api.clone(), name.clone());
                async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
            },
        )
        .await?;
    }
    let reaped_after = cleanup.elapsed();

    eprintln!(
        "behaviour: requests written {:.1} s after creation; probe run of the passing suite \
         (fetch {} MB from the operator, verify, load, {} probes) {run_secs:.1} s; both \
         probe pods deleted by the agent {:.1} s after they were done",
        requested_after.as_secs_f64(),
        passes.model_bytes / 1_000_000,
        result.probes.len(),
        reaped_after.as_secs_f64(),
    );
    agent.check_running()?;
    operator.check_running()?;
    drop(agent);
    operator.stop()?;
    Ok(())
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The MiniLM model `e2e/setup-stores.sh` fetched.
fn minilm() -> Result<PathBuf> {
    let stores = std::env::var_os("LOTABOTS_STORES")
        .context("LOTABOTS_STORES is unset: run e2e/setup-stores.sh (e2e/test.sh does)")?;
    let dir = PathBuf::from(stores).join("minilm");
    ensure!(
        dir.join("model.safetensors").is_file(),
        "{} has no model.safetensors: run e2e/setup-stores.sh",
        dir.display()
    );
    Ok(dir)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The workload namespace as `config/workloads` ships it, its Roles bound also to this
/// scenario's agent and operator ServiceAccounts (the shipped bindings name those of
/// `lotabots-system`).
async fn workload_namespace(ctx: &Ctx, install: &Install) -> Result<()> {
    let dir = repo_root().join("config/workloads").display().to_string();
    ctx.plane().kubectl_out(&["apply", "-k", &dir]).await?;
    let binding = |role: &str, sa: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": format!("{sa}-{role}"), "namespace": DEFAULT_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": install.ns}],
        })
    };
    let bindings = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            binding("lotabots-agent-workloads", &install.agent_sa()),
            binding("lotabots-operator-workloads", &install.operator_sa()),
        ],
    });
    let out = kubectl(
        ctx.plane(),
        &["apply", "-f", "-"],
        Some(&serde_json::to_string(&bindings)?),
    )
    .await?;
    ensure!(out.success, "{}: {}", out.shown, out.stderr);
    Ok(())
}

fn model_attestation(name: &str, suite_key: &str) -> Result<ModelAttestation> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "ModelAttestation",
        "metadata": {"name": name},
        "spec": {
            "source": {"pvc": {"claimName": "minilm"}},
            "behaviour": {
                "image": "ghcr.io/lotabots/lotabots-probe-runner:dev",
                "probes": {"name": "probes", "key": suite_key},
                "gpuCount": 1,
                "timeout": "15m",
            },
        },
    }))?)
}

/// The behaviour request the operator wrote for `name`.
async fn requested(api: &Api<ModelAttestation>, name: &str) -> Result<BehaviourStatus> {
    wait::until(
        &format!("a behaviour request for {name}"),
        VERDICT_TIMEOUT,
        || {
            let api = api.clone();
            async move {
                let ma = api.get_status(name).await?;
                Ok(ma.status.and_then(|s| s.behaviour))
            }
        },
    )
    .await
}

/// The probe pod the agent launched for `request`, once kwok runs it on the node.
async fn launched(api: &Api<Pod>, request: &BehaviourStatus) -> Result<Pod> {
    let name = format!("behaviour-probes-{}", request.request_id);
    let pod = wait::until(&format!("pod {name}"), VERDICT_TIMEOUT, || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            let pod = api.get_opt(&name).await?;
            Ok(pod
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        }
    })
    .await?;
    let spec = pod.spec.as_ref().context("a pod without spec")?;
    ensure!(
        spec.node_name.as_deref() == Some(NODE),
        "{name} runs on {:?}",
        spec.node_name
    );
    ensure!(
        spec.service_account_name.as_deref() == Some(SERVICE_ACCOUNT)
            && spec.automount_service_account_token == Some(false),
        "{name} is not the workload ServiceAccount's without an automounted token"
    );
    Ok(pod)
}

/// Runs the probe runner as the pod would: the container's environment, with the
/// projected token and CA at paths of this machine and the scratch volume in a
/// directory of the scenario. Its exit code and log tail.
async fn play(
    install: &Install,
    pod: &Pod,
    token: &str,
    tag: &str,
) -> Result<(Option<i32>, String)> {
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .context("a pod without container")?;
    let dir = install.dir.join(format!("pod-{tag}"));
    let scratch = dir.join("work");
    std::fs::create_dir_all(&scratch)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let mut cmd = tokio::process::Command::new(workspace_binary(
        "lotabots-probe-runner",
        "lotabots-probes",
    )?);
    cmd.env_clear();
    for var in container.env.iter().flatten() {
        let value = var.value.clone().unwrap_or_default();
        let value = match var.name.as_str() {
            workload::env::TOKEN_FILE => token_file.display().to_string(),
            workload::env::CA_FILE => install.tls_cert.display().to_string(),
            // The scratch volume's mount point, moved to the scenario's directory.
            workload::env::PARAMS => value.replace(
                &format!("\"{}/", workload::SCRATCH_DIR),
                &format!("\"{}/", scratch.display()),
            ),
            _ => value,
        };
        cmd.env(&var.name, value);
    }
    cmd.args(container.args.iter().flatten());
    let log = dir.join("runner.log");
    let out = tokio::time::timeout(RUNNER_TIMEOUT, cmd.output())
        .await
        .context("the probe runner timed out")??;
    std::fs::write(
        &log,
        [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
    )?;
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    Ok((
        out.status.code(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    ))
}

async fn kubectl_wait_model(ctx: &Ctx, ns: &str, name: &str, condition: &str) -> Result<()> {
    ctx.plane()
        .kubectl_out(&[
            "wait",
            "-n",
            ns,
            &format!("--for=condition={condition}"),
            &format!("modelattestation/{name}"),
            &format!("--timeout={}s", VERDICT_TIMEOUT.as_secs()),
        ])
        .await
        .map(drop)
}

fn condition<'a>(
    s: &'a lotabots_crds::model_attestation::ModelAttestationStatus,
    type_: &str,
) -> Result<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .with_context(|| format!("no {type_} condition"))
}

/// The Attested record of the passing model is sealed in GCS with the operator's
/// statement, signed by its token key, whose `behaviour` is the request's.
async fn statement_carries_the_behaviour(
    ctx: &Ctx,
    install: &Install,
    request: &BehaviourStatus,
) -> Result<()> {
    let db = Database::connect(&install.db_url).await?;
    let filter = RecordFilter {
        kind: Some(RecordKind::Model),
        attestation: Some(format!("{}/passes", install.ns)),
        ..Default::default()
    };
    let record = wait::until("the Attested model record", VERDICT_TIMEOUT, || {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            Ok(records(&db, &filter)
                .await?
                .into_iter()
                .find(|r| r.verdict == Verdict::Attested))
        }
    })
    .await?;
    let digest = record
        .bundle_digest
        .clone()
        .context("a record without bundle")?;
    let gcs = gcs_store(ctx, install).await?;
    let sealed = wait::until("the statement in GCS", VERDICT_TIMEOUT, || {
        let (gcs, key) = (&gcs, bundle_key(&digest));
        async move {
            Ok(lotabots_store::objects::ObjectStore::get(gcs, &key)
                .await
                .ok())
        }
    })
    .await?;
    let plaintext = record
        .evidence_digest
        .strip_prefix("sha256:")
        .context("evidence digest without sha256:")?;
    let document = bundle::open(&sealed, &install.keys, plaintext)?;
    let signed = Bundle::from_json(&serde_json::to_vec(&document)?)?;
    let secret = Api::<Secret>::namespaced(ctx.client(), &install.ns)
        .get("lotabots-token-signing")
        .await?;
    let pem = secret
        .data
        .unwrap_or_default()
        .remove("current.pem")
        .context("the token Secret has no current.pem")?;
    let key =
        SigningKey::from_pem(std::str::from_utf8(&pem.0)?).map_err(|e| anyhow::anyhow!(e.0))?;
    let (payload, _) = signed.verify_payload(&Trust::PublicKey(key.public_key()))?;
    let statement: Value = serde_json::from_slice(&payload)?;
    let behaviour = &statement["predicate"]["behaviour"];
    for (field, want) in [
        ("requestId", &request.request_id),
        ("node", &request.node),
        ("suiteDigest", &request.suite_digest),
        ("evidenceDigest", &request.evidence_digest),
    ] {
        ensure!(
            behaviour[field].as_str() == Some(want.as_str()),
            "statement behaviour.{field} is {}, want {want}: {behaviour}",
            behaviour[field]
        );
    }
    ensure!(behaviour["passed"] == true, "{behaviour}");
    Ok(())
}
