//! Two operator replicas on a real control plane, sharing PostgreSQL (issue 11's "Two
//! operator replicas" and "Forgery" scenarios).
//!
//! Each replica is `lotabots-operator run` as its command wires it
//! ([`lotabots_operator::run::run_with`], in this process: no container engine here),
//! with its own evidence API and probe ports, the evidence store on PostgreSQL,
//! SeaweedFS and fake-gcs-server, one Lease, and the challenge key Secret they create
//! between them. Agents present tokens bound to pods kwok runs on their nodes, reviewed
//! by the API server.
//!
//! - a challenge from one replica is accepted by the other, and refused when replayed at
//!   the first; evidence submitted only to the follower reaches the leader's verdict
//!   (`Ready`); killing the leader hands over within the Lease's time (measured), and a
//!   submission the follower accepted during the handover reaches the new leader's
//!   verdict, counted in PostgreSQL's records;
//! - forgeries (another node's identity, a replayed nonce, an expired challenge, a
//!   made-up nonce, a token for another audience) are refused with their codes, counted
//!   in `/metrics` by outcome, and leave every row count in PostgreSQL unchanged;
//! - the database half on its own: one consumer per nonce among concurrent ones, the
//!   announcement, newest evidence kept, expired nonces pruned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::operator_client::{ClientError, OperatorClient, Receipt};
use lotabots_crds::evidence::{NONCE_LEN, NodeEvidence, NonceOrigin};
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_e2e::agents::{AUDIENCE, pod_bound_token, service_account};
use lotabots_e2e::evidence::{self, Recording};
use lotabots_e2e::stack::backend;
use lotabots_e2e::{ControlPlane, SimNode, scenario, suite::Ctx, wait};
use lotabots_operator::evidence_store::{StoreArgs, StoreSecrets};
use lotabots_operator::leader::LeaseConfig;
use lotabots_operator::run::{RunConfig, run_with};
use lotabots_store::db::{Acceptance, Database, NodeEvidenceRow};
use lotabots_store::objects::S3Credentials;
use tempfile::TempDir;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "replicas",
        || {
            ControlPlane::builder()
                .with_crds()
                .nodes(SimNode::default_fleet())
                .with_stores()
        },
        &[
            scenario!(two_replicas_share_challenges_evidence_and_leadership),
            scenario!(forged_submissions_are_refused_counted_and_leave_no_row),
            scenario!(consumed_nonces_are_single_use_announced_and_pruned),
        ],
    )
}

/// The Lease of every replica of a scenario (in its own namespace).
const LEASE: &str = "lotabots-operator";
/// A short Lease, so that a takeover is quick to watch.
const LEASE_DURATION: Duration = Duration::from_secs(3);
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// How long the operator may take to reach a verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(90);

/// A database of this scenario's own (`<prefix>_<suffix>`), created empty; its URL.
async fn fresh_db(ctx: &Ctx, suffix: &str) -> Result<String> {
    let pg = &ctx.plane().stores()?.postgres;
    let name = format!("{}_{suffix}", ctx.prefix().replace('-', "_"));
    pg.query(&format!("CREATE DATABASE {name}")).await?;
    let url = pg.url();
    let (base, _) = url.rsplit_once('/').context("database URL")?;
    Ok(format!("{base}/{name}"))
}

/// `SELECT count(*) FROM table [WHERE …]` in the database at `url`.
async fn count(ctx: &Ctx, url: &str, from: &str) -> Result<i64> {
    let out = ctx
        .plane()
        .stores()?
        .postgres
        .psql()
        // The last --dbname wins.
        .arg(format!("--dbname={url}"))
        .args(["-tA", "-c", &format!("SELECT count(*) FROM {from}")])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "counting {from}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Row counts of every table a submission could write to.
async fn row_counts(ctx: &Ctx, url: &str) -> Result<BTreeMap<&'static str, i64>> {
    let mut counts = BTreeMap::new();
    for table in [
        "consumed_nonces",
        "node_evidence",
        "attestation_records",
        "audit_log",
        "bundles",
        "outbox",
    ] {
        counts.insert(table, count(ctx, url, table).await?);
    }
    Ok(counts)
}

/// What the replicas of a scenario share: the namespace (Lease, Secrets, agents), the
/// database, the serving certificate (files, as cert-manager mounts them).
struct Shared {
    ns: String,
    db_url: String,
    store: StoreArgs,
    certs: TempDir,
    ca_pem: String,
    tokens: TempDir,
}

impl Shared {
    /// The buckets and bundle key Secret (as a user creates them before installing), a
    /// fresh database, a certificate, and the agents' ServiceAccount `agent`.
    async fn prepare(ctx: &Ctx, db_suffix: &str) -> Result<Self> {
        let client = ctx.client();
        let ns = ctx.namespace().await?;
        let stores = ctx.plane().stores()?;
        Recording::start(client.clone(), stores, &ns)
            .await?
            .stop()
            .await?;
        let db_url = fresh_db(ctx, db_suffix).await?;
        let store = StoreArgs {
            s3_bucket: Some(evidence::S3_BUCKET.into()),
            s3_region: stores.s3.region().into(),
            s3_endpoint: Some(stores.s3.endpoint().into()),
            gcs_bucket: Some(evidence::GCS_BUCKET.into()),
            gcs_endpoint: Some(stores.gcs.endpoint().into()),
            gcs_anonymous: true,
            bundle_keys_secret: evidence::KEY_SECRET.into(),
            secrets: StoreSecrets {
                database_url: Some(db_url.clone()),
                s3: Some(S3Credentials {
                    access_key_id: stores.s3.access_key().into(),
                    secret_access_key: stores.s3.secret_key().into(),
                }),
            },
            ..Default::default()
        };
        let certs = TempDir::new()?;
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        std::fs::write(certs.path().join("tls.crt"), cert.cert.pem())?;
        std::fs::write(
            certs.path().join("tls.key"),
            cert.signing_key.serialize_pem(),
        )?;
        service_account(&client, &ns, "agent").await?;
        Ok(Self {
            ns,
            db_url,
            store,
            certs,
            ca_pem: cert.cert.pem(),
            tokens: TempDir::new()?,
        })
    }

    /// `run`'s configuration for replica `identity`, on free 127.0.0.1 ports.
    fn config(&self, identity: &str, nonce_ttl: Duration) -> Result<RunConfig> {
        let ports = lotabots_e2e::ports::free_ports(2)?;
        Ok(RunConfig {
            listen: ([127, 0, 0, 1], ports[0]).into(),
            manage_certificates: false,
            tls_cert: self.certs.path().join("tls.crt"),
            tls_key: self.certs.path().join("tls.key"),
            probe_addr: ([127, 0, 0, 1], ports[1]).into(),
            agents: vec![format!("{}/agent", self.ns)],
            nonce_ttl,
            settings: lotabots_operator::controller::Settings {
                grace: Duration::from_secs(60),
                allow_simulated: true,
                resync: Duration::from_secs(5),
                debounce: Duration::from_millis(200),
                reference_bundle: None,
            },
            lease: LeaseConfig {
                namespace: self.ns.clone(),
                name: LEASE.into(),
                identity: identity.into(),
                duration: LEASE_DURATION,
                retry: LEASE_RETRY,
            },
            client_api: None,
            store: self.store.clone(),
            models: Default::default(),
            workloads: Default::default(),
        })
    }

    /// A token for `audience` bound to a new agent pod `agent-<pod>` on `node`, in a file.
    async fn token(&self, ctx: &Ctx, pod: &str, node: &str, audience: &str) -> Result<PathBuf> {
        let (_, token) = pod_bound_token(
            &ctx.client(),
            &self.ns,
            "agent",
            &format!("agent-{pod}"),
            node,
            audience,
        )
        .await?;
        let file = self.tokens.path().join(pod);
        std::fs::write(&file, token)?;
        Ok(file)
    }
}

/// One replica: `run_with` in a task of its own.
struct Replica {
    identity: String,
    api: String,
    probe: String,
    task: JoinHandle<Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Replica {
    fn start(ctx: &Ctx, cfg: RunConfig) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let identity = cfg.lease.identity.clone();
        let (api, probe) = (
            format!("https://{}", cfg.listen),
            format!("http://{}", cfg.probe_addr),
        );
        let task = tokio::spawn(run_with(ctx.client(), cfg, async move {
            let _ = stopped.await;
        }));
        Self {
            identity,
            api,
            probe,
            task,
            stop: Some(stop),
        }
    }

    /// `/readyz`'s body when it answers 200.
    async fn ready(&self) -> Option<String> {
        let resp = reqwest::get(format!("{}/readyz", self.probe)).await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.text().await.ok()
    }

    /// Waits until `/readyz` answers 200; its body.
    async fn wait_ready(&self) -> Result<String> {
        wait::until(
            &format!("replica {} to be ready", self.identity),
            Duration::from_secs(60),
            || async {
                if self.task.is_finished() {
                    bail!("replica {} ended", self.identity);
                }
                Ok(self.ready().await)
            },
        )
        .await
    }

    async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.probe))
            .await?
            .text()
            .await?)
    }

    /// A client of its evidence API with the token in `token`.
    fn client(&self, shared: &Shared, token: &Path) -> Result<OperatorClient> {
        Ok(OperatorClient::new(
            &self.api,
            shared.ca_pem.as_bytes(),
            token.to_owned(),
        )?)
    }

    /// Asks it to stop and waits for a clean exit.
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .with_context(|| format!("replica {} did not stop when asked", self.identity))???;
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Evidence of the simulated `profile` for `node`, bound to `nonce` from the operator.
async fn evidence_for(profile: &str, node: &str, nonce: [u8; NONCE_LEN]) -> Result<NodeEvidence> {
    let backend = backend(profile, node)?;
    let req = ProbeRequest {
        nonce,
        nonce_origin: NonceOrigin::Verifier,
        node_name: node.to_owned(),
    };
    Ok(tokio::task::spawn_blocking(move || collect(backend.as_ref(), &req)).await??)
}

/// Challenge at `from`, evidence of `profile` for `node`, submitted to `to`.
async fn attest_across(
    from: &OperatorClient,
    to: &OperatorClient,
    profile: &str,
    node: &str,
) -> Result<(NodeEvidence, Receipt)> {
    let nonce = from.challenge().await?;
    let evidence = evidence_for(profile, node, nonce).await?;
    let receipt = to
        .submit(&evidence)
        .await
        .with_context(|| format!("submitting {node}'s evidence"))?;
    Ok((evidence, receipt))
}

/// The holder of the scenario's Lease.
async fn holder(ctx: &Ctx, ns: &str) -> Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(ctx.client(), ns)
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Whether the refusal is `status`/`code`; the error otherwise.
fn refused(
    r: Result<impl std::fmt::Debug, ClientError>,
    status: u16,
    code: &str,
) -> Result<String> {
    match r {
        Err(ClientError::Refused {
            status: s,
            code: c,
            message,
        }) if s == status && c == code => Ok(message),
        other => bail!("expected a refusal {status} {code}, got {other:?}"),
    }
}

/// The scenario of the two replicas: shared challenges and single use, the follower's
/// evidence in the leader's verdict, and a takeover that loses nothing.
async fn two_replicas_share_challenges_evidence_and_leadership(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let shared = Shared::prepare(&ctx, "two").await?;
    let ns = shared.ns.clone();

    // Started together: both race to create the challenge key and to take the Lease.
    let a = Replica::start(&ctx, shared.config("replica-a", Duration::from_secs(60))?);
    let b = Replica::start(&ctx, shared.config("replica-b", Duration::from_secs(60))?);
    tokio::try_join!(a.wait_ready(), b.wait_ready())?;
    let lead = holder(&ctx, &ns).await?.context("nobody holds the Lease")?;
    let (leader, follower) = if lead == a.identity { (a, b) } else { (b, a) };
    // Both serve at once; the leader says so once its controllers are wired too.
    wait::until(
        "the leader to report leading",
        Duration::from_secs(30),
        || async {
            Ok(leader
                .ready()
                .await
                .is_some_and(|s| s.starts_with("leader"))
                .then_some(()))
        },
    )
    .await?;
    let follower_says = follower.ready().await;
    ensure!(
        follower_says
            .as_deref()
            .is_some_and(|s| s.starts_with("follower")),
        "the follower's readyz: {follower_says:?}"
    );
    let key = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("lotabots-challenge-key")
        .await
        .context("the challenge key Secret")?;
    ensure!(
        key.data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(|k| k.0.len())
            == Some(32),
        "the challenge key Secret holds no 32-byte key"
    );

    let token0 = shared.token(&ctx, "h100-0", "gpu-h100-0", AUDIENCE).await?;
    let token1 = shared.token(&ctx, "h100-1", "gpu-h100-1", AUDIENCE).await?;
    let (leader0, follower0) = (
        leader.client(&shared, &token0)?,
        follower.client(&shared, &token0)?,
    );
    let (leader1, follower1) = (
        leader.client(&shared, &token1)?,
        follower.client(&shared, &token1)?,
    );

    // A challenge of the leader, submitted to the follower: accepted.
    let (evidence0, receipt0) =
        attest_across(&leader0, &follower0, "h100-80gb-hbm3", "gpu-h100-0").await?;
    // The same nonce again at the leader: a replay, refused.
    let message = refused(leader0.submit(&evidence0).await, 409, "replayed_nonce")?;
    ensure!(message.contains("already used"), "{message}");
    // And the other way: a challenge of the follower, submitted to the leader.
    let (_, receipt1) = attest_across(&follower1, &leader1, "h100-80gb-hbm3", "gpu-h100-1").await?;

    // Evidence that only the follower saw (gpu-h100-0's) reaches the leader's verdict.
    let atts = Api::<GpuAttestation>::all(client.clone());
    let name = ctx.name("h100");
    let path =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    att.metadata.name = Some(name.clone());
    att.spec.reattestation_interval = "1h".into();
    atts.create(&PostParams::default(), &att).await?;
    wait::until("the leader's verdict: Ready", VERDICT_TIMEOUT, || {
        let (atts, name) = (atts.clone(), name.clone());
        async move {
            let s = atts.get_status(&name).await?.status.unwrap_or_default();
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((ready && s.attested_nodes == 2).then_some(()))
        }
    })
    .await?;
    let status = atts.get_status(&name).await?.status.unwrap_or_default();
    for (node, receipt) in [("gpu-h100-0", &receipt0), ("gpu-h100-1", &receipt1)] {
        let entry = status
            .nodes
            .iter()
            .find(|n| n.node == node)
            .with_context(|| format!("{node} is not in the status"))?;
        ensure!(
            entry.evidence_digest.as_deref() == Some(receipt.digest.as_str()),
            "{node} was judged from {:?}, not the submission {}",
            entry.evidence_digest,
            receipt.digest
        );
    }
    let attested = |node: &str, verdict: &str| {
        format!(
            "attestation_records WHERE subject = '{node}' AND verdict = '{verdict}' \
             AND attestation = '{name}'"
        )
    };
    ensure!(
        count(&ctx, &shared.db_url, &attested("gpu-h100-0", "Attested")).await? >= 1,
        "no record of gpu-h100-0's verdict"
    );

    // Kill the leader (no graceful step-down: its task is dropped, its listeners close,
    // its Lease is no longer renewed) and submit to the follower while it takes over.
    let killed = Instant::now();
    let old_leader = leader.identity.clone();
    leader.task.abort();
    drop(leader);
    let (_, handover) = attest_across(&follower1, &follower1, "faulty-node", "gpu-h100-1").await?;
    let during = follower.ready().await;
    ensure!(
        during.as_deref().is_some_and(|s| s.starts_with("follower")),
        "the submission was not made during the handover: readyz {during:?}"
    );
    let took_over = wait::until("the follower to take over", LEASE_DURATION * 4, || async {
        let leads = holder(&ctx, &ns).await? == Some(follower.identity.clone())
            && follower
                .ready()
                .await
                .is_some_and(|s| s.starts_with("leader"));
        Ok(leads.then(|| killed.elapsed()))
    })
    .await?;
    // The follower notices an expired Lease at its next look: within the Lease's
    // duration after the last renewal, plus one retry, plus scheduling on a busy machine.
    let bound = LEASE_DURATION + LEASE_RETRY + Duration::from_secs(2);
    ensure!(
        took_over <= bound,
        "{} took over {took_over:?} after {old_leader} was killed (bound {bound:?})",
        follower.identity
    );
    // The handover's submission reaches the new leader's verdict and its record.
    wait::until(
        "the new leader's verdict on the handover's submission",
        VERDICT_TIMEOUT,
        || {
            let (atts, name) = (atts.clone(), name.clone());
            let digest = handover.digest.clone();
            async move {
                let s = atts.get_status(&name).await?.status.unwrap_or_default();
                Ok(s.nodes
                    .iter()
                    .any(|n| {
                        n.node == "gpu-h100-1" && n.evidence_digest.as_deref() == Some(&digest)
                    })
                    .then_some(()))
            }
        },
    )
    .await?;
    let failed = wait::until(
        "the record of the handover's verdict",
        VERDICT_TIMEOUT,
        || async {
            let n = count(&ctx, &shared.db_url, &attested("gpu-h100-1", "Failed")).await?;
            Ok((n >= 1).then_some(n))
        },
    )
    .await?;
    ensure!(failed == 1, "{failed} records of gpu-h100-1 failing");
    let stored = count(
        &ctx,
        &shared.db_url,
        &format!(
            "node_evidence WHERE node = 'gpu-h100-1' AND digest = '{}'",
            handover.digest
        ),
    )
    .await?;
    ensure!(stored == 1, "the handover's evidence is not the stored one");
    eprintln!(
        "replicas: {} took over {:.2} s after {old_leader} was killed (Lease {} s, retry {} s)",
        follower.identity,
        took_over.as_secs_f64(),
        LEASE_DURATION.as_secs(),
        LEASE_RETRY.as_secs()
    );
    atts.delete(&name, &Default::default()).await?;
    wait::until(
        "the GpuAttestation to be gone",
        Duration::from_secs(30),
        || {
            let (atts, name) = (atts.clone(), name.clone());
            async move { Ok(atts.get_opt(&name).await?.is_none().then_some(())) }
        },
    )
    .await?;
    follower.stop().await
}

/// Keeps the scenario's Lease held by someone else for an hour, so that its replica
/// stays a follower and runs no controller (the other scenario's leader judges every
/// GpuAttestation of the cluster; two controllers would fight over them).
async fn hold_lease_elsewhere(ctx: &Ctx, ns: &str) -> Result<()> {
    let now = MicroTime(jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("elsewhere".into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(ctx.client(), ns)
        .create(&PostParams::default(), &lease)
        .await?;
    Ok(())
}

/// The "Forgery" scenario: each forgery is refused with its code, counted by outcome in
/// `/metrics`, and writes nothing to PostgreSQL.
async fn forged_submissions_are_refused_counted_and_leave_no_row(ctx: Ctx) -> Result<()> {
    let shared = Shared::prepare(&ctx, "forgery").await?;
    hold_lease_elsewhere(&ctx, &shared.ns).await?;
    // A short challenge lifetime, so that one expires within the scenario.
    let ttl = Duration::from_secs(2);
    let replica = Replica::start(&ctx, shared.config("replica-f", ttl)?);
    let says = replica.wait_ready().await?;
    ensure!(says.starts_with("follower"), "readyz {says:?}");

    let token0 = shared.token(&ctx, "h100-0", "gpu-h100-0", AUDIENCE).await?;
    let other_audience = shared
        .token(&ctx, "h100-0-aud", "gpu-h100-0", "not-lotabots")
        .await?;
    let agent0 = replica.client(&shared, &token0)?;

    // The honest submission the forgeries are measured against.
    let (honest, receipt) = attest_across(&agent0, &agent0, "h100-80gb-hbm3", "gpu-h100-0").await?;
    let before = row_counts(&ctx, &shared.db_url).await?;
    ensure!(
        before["consumed_nonces"] == 1 && before["node_evidence"] == 1,
        "the honest submission left {before:?}"
    );

    // Another node's identity: the token is bound to gpu-h100-0, the evidence speaks for
    // gpu-h100-1 (with a live nonce of the token's node).
    let nonce = agent0.challenge().await?;
    let foreign = evidence_for("h100-80gb-hbm3", "gpu-h100-1", nonce).await?;
    let message = refused(agent0.submit(&foreign).await, 403, "wrong_node")?;
    ensure!(
        message.contains("bound to node \"gpu-h100-0\" but the evidence is for \"gpu-h100-1\""),
        "{message}"
    );
    // A replayed nonce.
    refused(agent0.submit(&honest).await, 409, "replayed_nonce")?;
    // An expired challenge.
    let nonce = agent0.challenge().await?;
    let late = evidence_for("h100-80gb-hbm3", "gpu-h100-0", nonce).await?;
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let message = refused(agent0.submit(&late).await, 409, "expired_nonce")?;
    ensure!(message.contains("expired"), "{message}");
    // A nonce no replica issued.
    let made_up = evidence_for("h100-80gb-hbm3", "gpu-h100-0", [0x5a; NONCE_LEN]).await?;
    refused(agent0.submit(&made_up).await, 409, "unknown_nonce")?;
    // A token for another audience: the API server's review refuses it for ours.
    let wrong_audience = replica.client(&shared, &other_audience)?;
    let message = refused(wrong_audience.submit(&late).await, 401, "token_rejected")?;
    ensure!(message.contains("audience"), "{message}");

    let metrics = replica.metrics().await?;
    for (outcome, n) in [
        ("accepted", 1),
        ("wrong_node", 1),
        ("replayed_nonce", 1),
        ("expired_nonce", 1),
        ("unknown_nonce", 1),
        ("token_rejected", 1),
    ] {
        let line = format!("lotabots_evidence_submissions_total{{outcome=\"{outcome}\"}} {n}");
        ensure!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    let after = row_counts(&ctx, &shared.db_url).await?;
    ensure!(
        before == after,
        "forgeries changed rows: {before:?} → {after:?}"
    );
    let stored = count(
        &ctx,
        &shared.db_url,
        &format!("node_evidence WHERE digest = '{}'", receipt.digest),
    )
    .await?;
    ensure!(
        stored == 1,
        "the stored evidence is no longer the honest one"
    );
    replica.stop().await
}

/// The database half: of concurrent consumers of one nonce exactly one stores its
/// evidence; the evidence is announced; older evidence never replaces newer; expired
/// nonces are pruned and live ones kept.
async fn consumed_nonces_are_single_use_announced_and_pruned(ctx: Ctx) -> Result<()> {
    let url = fresh_db(&ctx, "nonces").await?;
    let db = Database::connect(&url).await?;
    let mut listener = db.listen_evidence().await?;
    let now = jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond())?;
    let row = |node: &str, nonce: u8, at: jiff::Timestamp| NodeEvidenceRow {
        node: node.into(),
        nonce: vec![nonce; NONCE_LEN],
        digest: format!("sha256:{}", hex::encode([nonce; 32])),
        evidence: serde_json::json!({ "nodeName": node, "n": nonce }),
        received_at: at,
    };
    let expires = now + jiff::SignedDuration::from_secs(60);

    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (db, r) = (db.clone(), row("node-a", 1, now));
            tokio::spawn(async move { db.accept_evidence(&r, expires).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in racers {
        outcomes.push(r.await??);
    }
    let accepted = outcomes
        .iter()
        .filter(|o| **o == Acceptance::Accepted)
        .count();
    ensure!(
        accepted == 1,
        "{accepted} of 8 concurrent consumers won: {outcomes:?}"
    );
    let announced = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .context("no announcement")??;
    ensure!(announced.as_deref() == Some("node-a"), "{announced:?}");
    ensure!(db.node_evidence("node-a").await? == Some(row("node-a", 1, now)));

    // Newer evidence replaces it; older (a slow replica) does not, though its nonce is
    // consumed all the same.
    let later = now + jiff::SignedDuration::from_secs(1);
    ensure!(
        db.accept_evidence(&row("node-a", 2, later), expires)
            .await?
            == Acceptance::Accepted
    );
    ensure!(db.accept_evidence(&row("node-a", 3, now), expires).await? == Acceptance::Accepted);
    ensure!(db.node_evidence("node-a").await? == Some(row("node-a", 2, later)));
    ensure!(
        db.accept_evidence(&row("node-a", 3, later), expires)
            .await?
            == Acceptance::Replayed
    );
    ensure!(db.all_node_evidence().await?.len() == 1);

    // Pruning: expired nonces go, live ones stay.
    let past = now - jiff::SignedDuration::from_secs(1);
    ensure!(db.accept_evidence(&row("node-b", 4, now), past).await? == Acceptance::Accepted);
    ensure!(count(&ctx, &url, "consumed_nonces").await? == 4);
    ensure!(db.prune_consumed_nonces(now).await? == 1);
    ensure!(count(&ctx, &url, "consumed_nonces").await? == 3);
    db.close().await;
    Ok(())
}
