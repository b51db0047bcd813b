//! The product as a user runs it (issue 11's "GPU attestation" and "Resilience"
//! scenarios, issue 12's behavioural probes): every lotabots component a process of its own binary with the credentials
//! its pod would have — the shipped RBAC of `config/rbac` applied with kustomize, the
//! operator's kubeconfig a token of its ServiceAccount bound to an operator pod, each
//! agent's two tokens (API server, operator) bound to an agent pod on its node — on the
//! real control plane with kwok GPU nodes and the real stores.
//!
//! - GPU attestation: healthy H100 nodes and a MIG A100 node reach `Ready` (`kubectl
//!   wait`), a node whose GPUs are not what its labels say is `Ready=False` with its
//!   reasons; node labels are set and removed with their GpuAttestation; every verdict
//!   is a PostgreSQL record with its audit row (the chain verifies), every bundle is in
//!   S3 and GCS (objects counted), and every simulated GPU has its own UUID and serial.
//! - Resilience: the operator SIGKILLed mid-reconcile and started again still reaches
//!   `Ready`, with no bundle lost or duplicated; SeaweedFS stopped while verdicts change:
//!   GCS gets every bundle, the outbox holds S3's, and once SeaweedFS is back every
//!   bundle reaches S3.
//! - Behavioural probes (issue 12, [`behaviour`]): a model's probe pod is launched by the
//!   agent of an attested node, its process fetches the model and suite from the operator
//!   with its pod-bound token, and the result becomes `Behaviour`, the verdict and the
//!   signed statement.
//!
//! Operators reconcile every GpuAttestation of the cluster, so the scenarios take turns
//! (one operator on the API server at a time) rather than running side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use lotabots_crds::gpu_attestation::{GpuAttestation, Verdict};
use lotabots_crds::labels;
use lotabots_e2e::agent_process::{AgentProcess, PodIdentity, pod_identity};
use lotabots_e2e::agents::AUDIENCE;
use lotabots_e2e::operator_process::{OperatorProcess, OperatorSpec};
use lotabots_e2e::stack::until_webhook_refuses_a_runtime_socket;
use lotabots_e2e::stores::{OwnSeaweed, S3};
use lotabots_e2e::webhook_process::{WebhookPki, WebhookProcess};
use lotabots_e2e::{ControlPlane, Gpus, SimNode, scenario, suite::Ctx, wait};
use lotabots_store::bundle::{self, KeyRing};
use lotabots_store::db::{Database, Page, Record, RecordFilter, RecordKind};
use lotabots_store::objects::{GcsStore, ObjectStore, bundle_key};
use rand::RngCore;
use serde_json::{Value, json};

#[path = "flows/behaviour.rs"]
mod behaviour;
#[path = "support/evidence_stores.rs"]
#[allow(dead_code)]
mod support;

use behaviour::model_behaviour_probed_in_a_pod_on_an_attested_node;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "flows",
        || {
            ControlPlane::builder()
                .with_crds()
                .nodes(fleet())
                .with_stores()
        },
        &[
            scenario!(gpu_attestation_with_every_component_a_process),
            scenario!(operator_killed_and_s3_down_lose_nothing),
            scenario!(model_behaviour_probed_in_a_pod_on_an_attested_node),
        ],
    )
}

/// Healthy H100 nodes (the resilience scenario selects them all).
const HEALTHY_H100: usize = 6;
/// An H100 node (by its labels) whose agent reports the `faulty-node` profile.
const FAULTY: &str = "gpu-h100-bad-0";
const MIG: &str = "gpu-a100-mig-0";
/// How long a verdict may take (agents attest as soon as they see a selection; the
/// operator debounces 200 ms).
const VERDICT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the outbox may take to copy a bundle once its store is reachable: its
/// circuit breaker cools down for 30 s after an outage, then backs off up to a few s.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn healthy(i: usize) -> String {
    format!("gpu-h100-{i}")
}

fn fleet() -> Vec<SimNode> {
    let mut nodes: Vec<SimNode> = (0..HEALTHY_H100)
        .map(|i| SimNode::gpu(&healthy(i), Gpus::h100_x8()))
        .collect();
    nodes.push(SimNode::gpu(FAULTY, Gpus::h100_x8()));
    nodes.push(SimNode::gpu(MIG, Gpus::a100_mig_x8()));
    nodes.push(SimNode::cpu_only("cpu-0"));
    nodes
}

/// The simulated profile each node's agent reports.
fn profile(node: &str) -> &'static str {
    match node {
        FAULTY => "faulty-node",
        MIG => "a100-80gb-mig",
        // Eight GPUs, as the nodes' labels and capacity say.
        _ => "h100-sxm5-80gb-x8",
    }
}

/// One operator on the API server at a time (see the module documentation).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scenario's installation: its namespace with the shipped RBAC, a database of its
/// own, buckets of its own, the bundle key Secret and the operator's TLS files.
struct Install {
    ns: String,
    prefix: String,
    dir: PathBuf,
    db_url: String,
    keys: KeyRing,
    s3_bucket: String,
    gcs_bucket: String,
    gcs_endpoint: String,
    tls_cert: PathBuf,
    tls_key: PathBuf,
}

impl Install {
    /// The agents' ServiceAccount, as the rendered RBAC names it.
    fn agent_sa(&self) -> String {
        format!("{}-lotabots-agent", self.prefix)
    }

    fn operator_sa(&self) -> String {
        format!("{}-lotabots-operator", self.prefix)
    }
}

/// Renders `config/rbac` into the scenario's namespace with a name prefix (so that the
/// cluster-scoped roles and bindings of the two scenarios do not collide) and applies it
/// with `kubectl apply -k`, as a user installs it; creates the database, the buckets on
/// `s3` and the shared fake-gcs-server (`flows-TAG`, `flows-TAG-backup`), the key Secret
/// and the operator's certificate.
async fn install(ctx: &Ctx, s3: &S3, tag: &str) -> Result<Install> {
    let plane = ctx.plane();
    let ns = ctx.namespace().await?;
    let prefix = ctx.prefix();
    let dir = plane.run_dir().join(&prefix);
    let rbac = dir.join("rbac");
    std::fs::create_dir_all(&rbac)?;
    // kustomize takes only relative paths to other kustomizations.
    let up = "../".repeat(rbac.components().count() - 1);
    let shipped = lotabots_e2e::repo_root().join("config/rbac");
    let shipped = shipped
        .strip_prefix("/")
        .context("an absolute repository path")?;
    std::fs::write(
        rbac.join("kustomization.yaml"),
        format!(
            "namespace: {ns}\nnamePrefix: {prefix}-\nresources:\n  - {up}{}\n",
            shipped.display()
        ),
    )?;
    plane
        .kubectl_out(&["apply", "-k", &rbac.display().to_string()])
        .await
        .context("applying the shipped RBAC")?;

    let stores = plane.stores()?;
    let db_name = prefix.replace('-', "_");
    stores
        .postgres
        .query(&format!("CREATE DATABASE {db_name}"))
        .await?;
    let url = stores.postgres.url();
    let (base, _) = url.rsplit_once('/').context("database URL")?;
    let db_url = format!("{base}/{db_name}");

    // Bucket names are 3–63 characters: a short tag per scenario.
    let (s3_bucket, gcs_bucket) = (format!("flows-{tag}"), format!("flows-{tag}-backup"));
    support::s3_store(s3, &s3_bucket).await?;
    support::gcs_store(&stores.gcs, &gcs_bucket).await?;
    let gcs_endpoint = stores.gcs.endpoint().to_string();

    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    Api::<Secret>::namespaced(ctx.client(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("lotabots-bundle-keys".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    ("active".to_string(), ByteString(b"k1".to_vec())),
                    ("k1".to_string(), ByteString(key.to_vec())),
                ])),
                ..Default::default()
            },
        )
        .await
        .context("creating the bundle key Secret")?;
    let keys = KeyRing::new("k1", [("k1", key.as_slice())])?;

    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (tls_cert, tls_key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&tls_cert, cert.cert.pem())?;
    std::fs::write(&tls_key, cert.signing_key.serialize_pem())?;
    Ok(Install {
        ns,
        prefix,
        dir,
        db_url,
        keys,
        s3_bucket,
        gcs_bucket,
        gcs_endpoint,
        tls_cert,
        tls_key,
    })
}

/// The scenario's GCS bucket, on the harness's fake-gcs-server.
async fn gcs_store(ctx: &Ctx, install: &Install) -> Result<GcsStore> {
    support::gcs_store(&ctx.plane().stores()?.gcs, &install.gcs_bucket).await
}

/// Starts `lotabots-operator run` with a token of its ServiceAccount bound to an
/// operator pod (on the CPU node), the evidence store on `s3` and fake-gcs-server.
async fn start_operator(ctx: &Ctx, install: &Install, s3: &S3) -> Result<OperatorProcess> {
    let plane = ctx.plane();
    let pod = format!("{}-operator", install.prefix);
    let identity = pod_identity(
        &ctx.client(),
        plane.kubeconfig(),
        &install.ns,
        &install.operator_sa(),
        &pod,
        "cpu-0",
        plane.issuer(),
        None,
        &install.dir.join("credentials"),
    )
    .await?;
    let args: Vec<String> = vec![
        format!("--tls-cert={}", install.tls_cert.display()),
        format!("--tls-key={}", install.tls_key.display()),
        format!(
            "--agent-service-accounts={}/{}",
            install.ns,
            install.agent_sa()
        ),
        "--allow-simulated".into(),
        format!("--lease-namespace={}", install.ns),
        format!("--identity={pod}"),
        "--lease-seconds=5".into(),
        "--resync-seconds=5".into(),
        "--debounce-millis=200".into(),
        format!("--s3-bucket={}", install.s3_bucket),
        format!("--s3-region={}", s3.region()),
        format!("--s3-endpoint={}", s3.endpoint()),
        format!("--gcs-bucket={}", install.gcs_bucket),
        format!("--gcs-endpoint={}", install.gcs_endpoint),
        "--gcs-anonymous".into(),
        format!("--model-root={}", install.dir.join("models").display()),
    ];
    OperatorProcess::start(
        &install.dir,
        OperatorSpec {
            kubeconfig: identity.kubeconfig,
            args: args.into_iter().map(Into::into).collect(),
            env: vec![
                ("LOTABOTS_DATABASE_URL".into(), install.db_url.clone()),
                ("AWS_ACCESS_KEY_ID".into(), s3.access_key().into()),
                ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into()),
            ],
        },
    )
    .await
}

/// One agent process per node in `nodes`, each with its pod-bound credentials.
async fn start_agents(
    ctx: &Ctx,
    install: &Install,
    operator: &OperatorProcess,
    nodes: &[String],
) -> Result<Vec<AgentProcess>> {
    let plane = ctx.plane();
    let mut agents = Vec::new();
    for node in nodes {
        let identity: PodIdentity = pod_identity(
            &ctx.client(),
            plane.kubeconfig(),
            &install.ns,
            &install.agent_sa(),
            &format!("agent-{node}"),
            node,
            plane.issuer(),
            Some(AUDIENCE),
            &install.dir.join("credentials"),
        )
        .await?;
        agents.push(
            AgentProcess::start(
                &install.dir,
                &identity,
                profile(node),
                &operator.url(),
                &install.tls_cert,
            )
            .await?,
        );
    }
    Ok(agents)
}

/// The H100 sample policy, named `name`, selecting the H100 nodes `matching` the
/// hostname expression (`In`/`NotIn`, values), without a workload check (no workload
/// pods can run here).
fn h100(name: &str, operator: &str, hosts: &[&str]) -> Result<GpuAttestation> {
    sample("lotabots_v1alpha1_gpuattestation_h100.yaml", name, |spec| {
        spec["nodeSelector"]["matchExpressions"] = json!([{
            "key": "kubernetes.io/hostname", "operator": operator, "values": hosts,
        }]);
    })
}

fn sample(file: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Result<GpuAttestation> {
    let path = lotabots_e2e::repo_root().join("config/samples").join(file);
    let mut doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    doc["metadata"]["name"] = name.into();
    doc["spec"]["reattestationInterval"] = "1m".into();
    if let Some(spec) = doc["spec"].as_object_mut() {
        spec.remove("workloadCheck");
    }
    edit(&mut doc["spec"]);
    serde_json::from_value(doc).with_context(|| format!("{} as edited", path.display()))
}

async fn create(ctx: &Ctx, att: &GpuAttestation) -> Result<()> {
    Api::<GpuAttestation>::all(ctx.client())
        .create(&PostParams::default(), att)
        .await
        .with_context(|| format!("creating GpuAttestation {:?}", att.metadata.name))?;
    Ok(())
}

/// `kubectl wait --for=condition=COND gpuattestation/NAME`, as a user waits.
async fn kubectl_wait(ctx: &Ctx, name: &str, condition: &str, timeout: Duration) -> Result<()> {
    ctx.plane()
        .kubectl_out(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("gpuattestation/{name}"),
            &format!("--timeout={}s", timeout.as_secs()),
        ])
        .await
        .map(drop)
}

fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Row counts of the tables a verdict writes to, and the outbox's rows per store, in
/// one query (the waits below poll it).
async fn counts(ctx: &Ctx, db_url: &str) -> Result<BTreeMap<&'static str, i64>> {
    const COUNTS: [(&str, &str); 8] = [
        ("records", "SELECT count(*) FROM attestation_records"),
        ("audit", "SELECT count(*) FROM audit_log"),
        ("bundles", "SELECT count(*) FROM bundles"),
        (
            "record_bundles",
            "SELECT count(DISTINCT bundle_digest) FROM attestation_records",
        ),
        ("s3_rows", "SELECT count(*) FROM outbox WHERE store = 's3'"),
        (
            "gcs_rows",
            "SELECT count(*) FROM outbox WHERE store = 'gcs'",
        ),
        (
            "s3_pending",
            "SELECT count(*) FROM outbox WHERE store = 's3' AND uploaded_at IS NULL",
        ),
        (
            "gcs_pending",
            "SELECT count(*) FROM outbox WHERE store = 'gcs' AND uploaded_at IS NULL",
        ),
    ];
    let sql = format!(
        "SELECT {}",
        COUNTS
            .iter()
            .map(|(_, q)| format!("({q})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let res = ctx
        .plane()
        .stores()?
        .postgres
        .psql()
        // The last --dbname wins.
        .arg(format!("--dbname={db_url}"))
        .args(["-tA", "-F", " ", "-c", &sql])
        .output()
        .await?;
    ensure!(
        res.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&res.stderr).trim()
    );
    let text = String::from_utf8_lossy(&res.stdout);
    let values: Vec<i64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("counts {text:?}"))?;
    ensure!(values.len() == COUNTS.len(), "counts {text:?}");
    let out: BTreeMap<_, _> = COUNTS.iter().map(|(n, _)| *n).zip(values).collect();
    // Every bundle is queued for both stores, so "nothing pending" means "all copied".
    ensure!(
        out["s3_rows"] == out["bundles"] && out["gcs_rows"] == out["bundles"],
        "outbox rows per store differ from the bundles: {out:?}"
    );
    Ok(out)
}

/// Objects under `bundles/` in the S3 bucket.
async fn s3_objects(s3: &S3, bucket: &str) -> Result<BTreeSet<String>> {
    let store = support::s3_client(s3, bucket)?;
    let out = store
        .client()
        .list_objects_v2()
        .bucket(bucket)
        .prefix("bundles/")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("listing s3://{bucket}: {e:?}"))?;
    ensure!(
        !out.is_truncated().unwrap_or(false),
        "more than one page of objects in {bucket}"
    );
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

/// Objects under `bundles/` in the GCS bucket (the JSON API's listing).
async fn gcs_objects(install: &Install) -> Result<BTreeSet<String>> {
    let page: Value = reqwest::get(format!(
        "{}/storage/v1/b/{}/o?prefix=bundles/&maxResults=1000",
        install.gcs_endpoint, install.gcs_bucket
    ))
    .await?
    .error_for_status()?
    .json()
    .await?;
    ensure!(
        page.get("nextPageToken").is_none(),
        "more than one page of objects"
    );
    Ok(page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Every bundle digest PostgreSQL holds, as object keys.
async fn bundle_keys(db: &Database, filter: &RecordFilter) -> Result<BTreeSet<String>> {
    Ok(records(db, filter)
        .await?
        .iter()
        .filter_map(|r| r.bundle_digest.as_deref().map(bundle_key))
        .collect())
}

async fn records(db: &Database, filter: &RecordFilter) -> Result<Vec<Record>> {
    let page = db.list_records(filter, Page::first(500)).await?;
    ensure!(page.records.len() < 500, "more records than one page");
    Ok(page.records)
}

/// The evidence document sealed in `record`'s bundle, read back from `store`.
async fn sealed_evidence(
    store: &dyn ObjectStore,
    keys: &KeyRing,
    record: &Record,
) -> Result<Value> {
    let digest = record
        .bundle_digest
        .as_deref()
        .with_context(|| format!("the record of {} has no bundle", record.subject))?;
    let stored = store.get(&bundle_key(digest)).await?;
    let plaintext = record
        .evidence_digest
        .strip_prefix("sha256:")
        .context("evidence digest without sha256:")?;
    let doc = bundle::open(&stored, keys, plaintext)?;
    ensure!(
        doc["node"] == record.subject.as_str(),
        "bundle {digest} is not {}'s: {doc}",
        record.subject
    );
    Ok(doc["evidence"]["document"].clone())
}

/// `(uuid, serial)` of every GPU in an evidence document.
fn gpu_ids(doc: &Value) -> Result<Vec<(String, String)>> {
    let fact = |gpu: &Value, name: &str| {
        gpu[name]["value"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("a GPU without a measured {name}: {gpu}"))
    };
    doc["gpus"]
        .as_array()
        .context("evidence without gpus")?
        .iter()
        .map(|g| Ok((fact(g, "uuid")?, fact(g, "serial")?)))
        .collect()
}

async fn gpu_attestation_with_every_component_a_process(ctx: Ctx) -> Result<()> {
    let _turn = TURN.lock().await;
    let began = Instant::now();
    let s3 = &ctx.plane().stores()?.s3;
    let install = install(&ctx, s3, "gpu").await?;
    let (mut webhook, vwc) = start_webhook(&ctx, &install).await?;
    let mut operator = start_operator(&ctx, &install, s3).await?;
    operator_has_the_shipped_rights_only(&ctx, &install, &operator).await?;
    let mut nodes: Vec<String> = (0..HEALTHY_H100).map(healthy).collect();
    nodes.extend([FAULTY.to_string(), MIG.to_string()]);
    let mut agents = start_agents(&ctx, &install, &operator, &nodes).await?;
    let up = began.elapsed();

    let names = Names {
        good: ctx.name("h100"),
        mig: ctx.name("mig"),
        bad: ctx.name("faulty"),
    };
    create(&ctx, &h100(&names.good, "NotIn", &[FAULTY])?).await?;
    let a100 = "lotabots_v1alpha1_gpuattestation_a100_mig.yaml";
    create(&ctx, &sample(a100, &names.mig, |_| {})?).await?;
    create(&ctx, &h100(&names.bad, "In", &[FAULTY])?).await?;
    let created = Instant::now();
    kubectl_wait(&ctx, &names.good, "Ready", VERDICT_TIMEOUT).await?;
    kubectl_wait(&ctx, &names.mig, "Ready", VERDICT_TIMEOUT).await?;
    kubectl_wait(&ctx, &names.bad, "Ready=False", VERDICT_TIMEOUT).await?;
    let verdicts_after = created.elapsed();
    operator.check_running()?;
    for agent in &mut agents {
        agent.check_running()?;
    }

    statuses_say_why(&ctx, &names).await?;
    nodes_are_labelled(&ctx, &names).await?;
    let stored = everything_is_stored(&ctx, &install, &nodes).await?;
    labels_go_with_their_gpu_attestation(&ctx, &names).await?;

    eprintln!(
        "gpu attestation: {} agents + operator + webhook up in {:.1} s, all verdicts in \
         {:.1} s; {} records, {} bundles in S3 and GCS, {} distinct GPUs, chain of {} rows",
        agents.len(),
        up.as_secs_f64(),
        verdicts_after.as_secs_f64(),
        stored.records,
        stored.bundles,
        stored.gpus,
        stored.chain_rows
    );
    drop(agents);
    operator.stop()?;
    Api::<ValidatingWebhookConfiguration>::all(ctx.client())
        .delete(&vwc, &DeleteParams::default())
        .await?;
    webhook.stop();
    Ok(())
}

/// The GpuAttestations of the first scenario: the healthy H100 nodes, the MIG A100
/// node, the faulty node.
struct Names {
    good: String,
    mig: String,
    bad: String,
}

/// The webhook process, registered by URL with the production configuration (scoped to
/// the scenario's namespace, so that the pods created next pass through it), refusing a
/// runtime socket; the configuration's name.
async fn start_webhook(ctx: &Ctx, install: &Install) -> Result<(WebhookProcess, String)> {
    let pki = WebhookPki::new()?;
    let webhook = WebhookProcess::start(&install.dir.join("webhook"), &pki.issue()?).await?;
    let name = ctx.name("webhook");
    Api::<ValidatingWebhookConfiguration>::all(ctx.client())
        .create(
            &PostParams::default(),
            &lotabots_e2e::stack::webhook_configuration(
                &webhook.url(),
                pki.ca_pem(),
                Some((&name, &[install.ns.as_str()])),
            )?,
        )
        .await?;
    let pods = Api::<Pod>::namespaced(ctx.client(), &install.ns);
    let refusal = until_webhook_refuses_a_runtime_socket(&pods, "default").await?;
    ensure!(refusal.starts_with("403"), "not a 403: {refusal}");
    Ok((webhook, name))
}

/// The operator's credentials are its ServiceAccount's: what the shipped roles grant
/// (patch nodes, create TokenReviews, read its key Secret) and nothing else (other
/// Secrets, deleting nodes), asked as `kubectl auth can-i` with its kubeconfig.
async fn operator_has_the_shipped_rights_only(
    ctx: &Ctx,
    install: &Install,
    operator: &OperatorProcess,
) -> Result<()> {
    let ns = install.ns.as_str();
    for (allowed, question) in [
        (true, vec!["patch", "nodes"]),
        (true, vec!["create", "tokenreviews.authentication.k8s.io"]),
        (true, vec!["get", "secret/lotabots-bundle-keys", "-n", ns]),
        (false, vec!["get", "secret/other", "-n", ns]),
        (false, vec!["list", "secrets", "-n", ns]),
        (false, vec!["delete", "nodes"]),
        (false, vec!["create", "pods", "-n", ns]),
    ] {
        let out = tokio::process::Command::new(ctx.plane().bins().bin("kubectl"))
            .arg(format!("--kubeconfig={}", operator.kubeconfig().display()))
            .args(["auth", "can-i"])
            .args(&question)
            .output()
            .await?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            answer == if allowed { "yes" } else { "no" },
            "the operator can-i {}: {answer:?} {}",
            question.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Counts, reasons and conditions of the three GpuAttestations.
async fn statuses_say_why(ctx: &Ctx, names: &Names) -> Result<()> {
    let atts = Api::<GpuAttestation>::all(ctx.client());
    let status = |a: GpuAttestation| a.status.context("no status");
    let good = status(atts.get(&names.good).await?)?;
    ensure!(
        (good.matched_nodes, good.attested_nodes) == (HEALTHY_H100 as u32, HEALTHY_H100 as u32),
        "{}: {good:?}",
        names.good
    );
    let mig = status(atts.get(&names.mig).await?)?;
    ensure!(
        (mig.matched_nodes, mig.attested_nodes) == (1, 1),
        "{}: {mig:?}",
        names.mig
    );
    let bad = status(atts.get(&names.bad).await?)?;
    let node = bad
        .nodes
        .iter()
        .find(|n| n.node == FAULTY)
        .with_context(|| format!("{} does not list {FAULTY}: {bad:?}", names.bad))?;
    ensure!(
        node.verdict == Verdict::Failed && !node.reasons.is_empty(),
        "{FAULTY}: {node:?}"
    );
    let ready = bad
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .context("no Ready condition")?;
    ensure!(
        ready.status == "False" && !ready.message.is_empty(),
        "{}'s Ready: {ready:?}",
        names.bad
    );
    Ok(())
}

/// Each node carries the verdict of the GpuAttestation selecting it.
async fn nodes_are_labelled(ctx: &Ctx, names: &Names) -> Result<()> {
    let node_api = Api::<Node>::all(ctx.client());
    let mut expected: Vec<(String, &str, &str)> = (0..HEALTHY_H100)
        .map(|i| (healthy(i), "true", names.good.as_str()))
        .collect();
    expected.push((MIG.into(), "true", &names.mig));
    expected.push((FAULTY.into(), "false", &names.bad));
    for (node, attested, by) in &expected {
        let l = node_labels(&node_api.get(node).await?);
        ensure!(
            l.get(labels::GPU_ATTESTED).map(String::as_str) == Some(*attested)
                && l.get(labels::GPU_ATTESTATION).map(String::as_str) == Some(*by),
            "{node}'s labels: {l:?}"
        );
    }
    Ok(())
}

/// What [`everything_is_stored`] found.
struct Stored {
    records: usize,
    bundles: i64,
    gpus: usize,
    chain_rows: u64,
}

/// One record per node with its audit row, the chain intact, every bundle in both
/// buckets (the objects counted), each opening to its node's own GPUs: no UUID or serial
/// on two GPUs.
async fn everything_is_stored(ctx: &Ctx, install: &Install, nodes: &[String]) -> Result<Stored> {
    let db = Database::connect(&install.db_url).await?;
    let all = RecordFilter {
        kind: Some(RecordKind::GpuNode),
        ..Default::default()
    };
    let recs = records(&db, &all).await?;
    let mut by_node = BTreeMap::<&str, Vec<&Record>>::new();
    for r in &recs {
        by_node.entry(r.subject.as_str()).or_default().push(r);
    }
    ensure!(
        by_node.keys().copied().collect::<BTreeSet<_>>()
            == nodes.iter().map(String::as_str).collect(),
        "records for {:?}, nodes {nodes:?}",
        by_node.keys()
    );
    for (node, rs) in &by_node {
        let want = if *node == FAULTY {
            Verdict::Failed
        } else {
            Verdict::Attested
        };
        // One verdict, one record: only changes are recorded.
        ensure!(
            rs.len() == 1 && rs[0].verdict == want,
            "{node}: {:?}",
            rs.iter().map(|r| r.verdict).collect::<Vec<_>>()
        );
    }
    let chain = db.verify_chain().await?;
    let c = counts(ctx, &install.db_url).await?;
    ensure!(
        chain.first_broken.is_none() && chain.rows_checked >= recs.len() as u64,
        "audit chain: {chain:?}, {} records",
        recs.len()
    );
    ensure!(
        c["audit"] >= c["records"] && c["bundles"] == c["record_bundles"],
        "row counts: {c:?}"
    );
    let s3 = &ctx.plane().stores()?.s3;
    let keys_in_db = bundle_keys(&db, &all).await?;
    let (s3_keys, gcs_keys) = wait::until("every bundle in S3 and GCS", UPLOAD_TIMEOUT, || async {
        let (s, g) = (
            s3_objects(s3, &install.s3_bucket).await?,
            gcs_objects(install).await?,
        );
        Ok((s == keys_in_db && g == keys_in_db).then_some((s, g)))
    })
    .await?;
    ensure!(
        s3_keys.len() as i64 == c["bundles"] && gcs_keys.len() as i64 == c["bundles"],
        "objects: S3 {}, GCS {}, bundle rows {}",
        s3_keys.len(),
        gcs_keys.len(),
        c["bundles"]
    );

    let s3_read = support::s3_client(s3, &install.s3_bucket)?;
    let gcs_read = gcs_store(ctx, install).await?;
    let mut uuids = BTreeMap::<String, String>::new();
    let mut serials = BTreeSet::new();
    for (node, rs) in &by_node {
        let r = rs[0];
        let doc = sealed_evidence(&s3_read, &install.keys, r).await?;
        ensure!(
            doc == sealed_evidence(&gcs_read, &install.keys, r).await?,
            "S3 and GCS hold different evidence for {node}"
        );
        ensure!(
            doc["nodeName"] == *node,
            "{node}'s evidence names {}",
            doc["nodeName"]
        );
        let ids = gpu_ids(&doc)?;
        ensure!(
            profile(node) != "h100-sxm5-80gb-x8" || ids.len() == 8,
            "{node} reported {} GPUs, not 8",
            ids.len()
        );
        for (uuid, serial) in ids {
            if let Some(other) = uuids.insert(uuid.clone(), node.to_string()) {
                bail!("GPU {uuid} of {node} is also {other}'s");
            }
            ensure!(serials.insert(serial.clone()), "serial {serial} twice");
        }
    }
    db.close().await;
    Ok(Stored {
        records: recs.len(),
        bundles: c["bundles"],
        gpus: uuids.len(),
        chain_rows: chain.rows_checked,
    })
}

/// Deleting a GpuAttestation removes its nodes' labels (its finalizer runs); then the
/// others are deleted too, while the operator still runs to remove their finalizers.
async fn labels_go_with_their_gpu_attestation(ctx: &Ctx, names: &Names) -> Result<()> {
    let atts = Api::<GpuAttestation>::all(ctx.client());
    let node_api = Api::<Node>::all(ctx.client());
    atts.delete(&names.good, &DeleteParams::default()).await?;
    wait::until(
        "the healthy nodes' labels to go",
        Duration::from_secs(60),
        || async {
            for i in 0..HEALTHY_H100 {
                let l = node_labels(&node_api.get(&healthy(i)).await?);
                if l.contains_key(labels::GPU_ATTESTED) || l.contains_key(labels::GPU_ATTESTATION) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let mig = node_labels(&node_api.get(MIG).await?);
    ensure!(
        mig.get(labels::GPU_ATTESTATION) == Some(&names.mig),
        "{MIG} lost the labels of a GpuAttestation that was not deleted: {mig:?}"
    );
    for name in [&names.good, &names.mig, &names.bad] {
        if atts.get_opt(name).await?.is_some() {
            atts.delete(name, &DeleteParams::default()).await?;
        }
    }
    wait::until(
        "the GpuAttestations to go",
        Duration::from_secs(60),
        || async {
            for name in [&names.good, &names.mig, &names.bad] {
                if atts.get_opt(name).await?.is_some() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

async fn operator_killed_and_s3_down_lose_nothing(ctx: Ctx) -> Result<()> {
    let _turn = TURN.lock().await;
    let client = ctx.client();
    let dir = ctx
        .plane()
        .run_dir()
        .join(format!("{}-seaweedfs", ctx.prefix()));
    let mut seaweed = OwnSeaweed::start(&dir).await?;
    let s3 = seaweed.s3().clone();
    let install = install(&ctx, &s3, "res").await?;
    let mut operator = start_operator(&ctx, &install, &s3).await?;
    let nodes: Vec<String> = (0..HEALTHY_H100).map(healthy).collect();
    let _agents = start_agents(&ctx, &install, &operator, &nodes).await?;
    let db = Database::connect(&install.db_url).await?;
    let name = ctx.name("fleet");
    let filter = RecordFilter {
        kind: Some(RecordKind::GpuNode),
        attestation: Some(name.clone()),
        ..Default::default()
    };

    // Killed mid-reconcile: as soon as the first verdict is recorded, before all are.
    create(&ctx, &h100(&name, "NotIn", &[FAULTY])?).await?;
    let first_seen = wait::until("the first record", VERDICT_TIMEOUT, || async {
        let n = records(&db, &filter).await?.len();
        Ok((n > 0).then_some(n))
    })
    .await?;
    let ready_at_kill = Api::<GpuAttestation>::all(client.clone())
        .get(&name)
        .await?
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map_or_else(
            || "no Ready condition".to_string(),
            |c| format!("Ready={}", c.status),
        );
    let killed = operator.kill().context("the operator was not running")?;
    ensure!(
        matches!(killed.ending, lotabots_e2e::process::Ending::Killed)
            || killed.ending.to_string().contains("SIGKILL"),
        "the operator ended otherwise: {}",
        killed.ending
    );
    // What it committed before it died (more than the wait saw, perhaps).
    let before_kill = records(&db, &filter).await?.len().max(first_seen);
    let restarted = Instant::now();
    operator.restart().await?;
    kubectl_wait(&ctx, &name, "Ready", VERDICT_TIMEOUT).await?;
    let recovered = restarted.elapsed();

    // Nothing lost: every node has an Attested record. Nothing duplicated beyond the
    // design: a verdict is recorded when it differs from the status, so a node recorded
    // before the kill whose status was not yet written is recorded once more by the new
    // process (the audit trail shows both) — at most once per record made before the
    // kill; bundles are content-addressed, one row and one object per digest.
    let recs = records(&db, &filter).await?;
    let mut per_node = BTreeMap::<&str, usize>::new();
    for r in &recs {
        ensure!(
            r.verdict == Verdict::Attested,
            "{}: {:?}",
            r.subject,
            r.verdict
        );
        *per_node.entry(r.subject.as_str()).or_default() += 1;
    }
    ensure!(
        per_node.keys().copied().collect::<BTreeSet<_>>()
            == nodes.iter().map(String::as_str).collect(),
        "records after the restart: {per_node:?}"
    );
    let twice = per_node.values().filter(|n| **n > 1).count();
    ensure!(
        per_node.values().all(|n| *n <= 2) && twice <= before_kill,
        "more records than the restart explains ({before_kill} made before the kill): {per_node:?}"
    );
    let c = wait::until("S3 and GCS to catch up", UPLOAD_TIMEOUT, || async {
        let c = counts(&ctx, &install.db_url).await?;
        Ok((c["s3_pending"] == 0 && c["gcs_pending"] == 0).then_some(c))
    })
    .await?;
    ensure!(c["bundles"] == c["record_bundles"], "row counts: {c:?}");
    let after_restart = c.clone();
    ensure!(
        s3_objects(&s3, &install.s3_bucket).await? == bundle_keys(&db, &filter).await?,
        "S3 does not hold exactly the recorded bundles"
    );

    // SeaweedFS down while every verdict changes: GCS gets the new bundles, the outbox
    // keeps S3's until it is back.
    let stopped = seaweed.stop().context("SeaweedFS was not running")?;
    let outage = Instant::now();
    Api::<GpuAttestation>::all(client.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"policy": {"allowedProducts": ["NVIDIA A100-SXM4-80GB"]}}}),
            ),
        )
        .await?;
    kubectl_wait(&ctx, &name, "Ready=False", VERDICT_TIMEOUT).await?;
    let during = wait::until(
        "the failed verdicts' bundles in GCS, S3's pending",
        UPLOAD_TIMEOUT,
        || async {
            let c = counts(&ctx, &install.db_url).await?;
            let gcs = gcs_objects(&install).await?.len() as i64;
            Ok(
                (c["bundles"] >= after_restart["bundles"] + HEALTHY_H100 as i64
                    && gcs == c["bundles"]
                    && c["gcs_pending"] == 0
                    && c["s3_pending"] > 0)
                    .then_some(c),
            )
        },
    )
    .await?;
    let failed = records(&db, &filter).await?;
    ensure!(
        nodes.iter().all(|n| failed
            .iter()
            .any(|r| r.subject == *n && r.verdict == Verdict::Failed)),
        "not every node has a Failed record: {failed:?}"
    );
    seaweed.restart().await?;
    let down_for = outage.elapsed();
    let back = Instant::now();
    let (s3_keys, final_counts) = wait::until(
        "every bundle in S3 after the outage",
        UPLOAD_TIMEOUT,
        || async {
            let c = counts(&ctx, &install.db_url).await?;
            let keys = s3_objects(&s3, &install.s3_bucket).await?;
            Ok((c["s3_pending"] == 0 && keys.len() as i64 == c["bundles"]).then_some((keys, c)))
        },
    )
    .await?;
    let caught_up = back.elapsed();
    ensure!(
        s3_keys == bundle_keys(&db, &filter).await? && gcs_objects(&install).await? == s3_keys,
        "S3 and GCS do not both hold exactly the recorded bundles"
    );
    let chain = db.verify_chain().await?;
    ensure!(chain.first_broken.is_none(), "audit chain: {chain:?}");
    operator.check_running()?;

    eprintln!(
        "resilience: killed after {before_kill} of {HEALTHY_H100} records ({ready_at_kill}), Ready {:.1} s \
         after the restart; SeaweedFS ({}) down {:.1} s with {} S3 uploads pending, all \
         {} bundles in S3 {:.1} s after it came back; counts after restart {after_restart:?}, \
         at the end {final_counts:?}",
        recovered.as_secs_f64(),
        stopped.ending,
        down_for.as_secs_f64(),
        during["s3_pending"],
        final_counts["bundles"],
        caught_up.as_secs_f64()
    );
    // Deleted while its operator still runs, so that its finalizer is removed.
    let atts = Api::<GpuAttestation>::all(client);
    atts.delete(&name, &DeleteParams::default()).await?;
    wait::until(
        "the GpuAttestation to go",
        Duration::from_secs(60),
        || async { Ok(atts.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await?;
    operator.stop()?;
    db.close().await;
    Ok(())
}
