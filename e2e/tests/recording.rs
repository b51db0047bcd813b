//! Verdicts become durable proof: the operator's controller, wired to the evidence store
//! as `lotabots-operator run` wires it (`evidence_store::connect`: PostgreSQL, SeaweedFS
//! as S3, fake-gcs-server as GCS, the key-encryption keys from a Secret on the real API
//! server), records every node's verdict change with its audit row, and the outbox worker
//! copies each sealed evidence bundle to both object stores. The wiring is
//! [`lotabots_e2e::evidence::Recording`], which `lotabots-e2e up --stores` uses too.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::Api;
use kube::api::PostParams;
use lotabots_crds::gpu_attestation::{GpuAttestation, Verdict};
use lotabots_e2e::evidence::{self, Recording};
use lotabots_e2e::stack::{Operator, start_agents};
use lotabots_e2e::{ControlPlane, SimNode, scenario, suite::Ctx, wait};
use lotabots_operator::evidence_store::VerdictLog;
use lotabots_store::bundle;
use lotabots_store::db::{CopyState, Page, RecordFilter, RecordKind};
use lotabots_store::objects::{ObjectStore, bundle_key};
use tempfile::TempDir;

#[path = "support/evidence_stores.rs"]
#[allow(dead_code)]
mod support;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "recording",
        || {
            ControlPlane::builder()
                .with_crds()
                .nodes(SimNode::default_fleet())
                .with_stores()
        },
        &[scenario!(
            verdict_changes_are_recorded_audited_and_their_evidence_lands_in_both_stores
        )],
    )
}

async fn verdict_changes_are_recorded_audited_and_their_evidence_lands_in_both_stores(
    ctx: Ctx,
) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let stores = ctx.plane().stores()?;
    let recording = Recording::start(client.clone(), stores, &ns).await?;
    let db = recording.store.database().clone();
    // To read back what the stores hold.
    let s3 = support::s3_store(&stores.s3, evidence::S3_BUCKET).await?;
    let gcs = support::gcs_store(&stores.gcs, evidence::GCS_BUCKET).await?;

    let log: Arc<dyn VerdictLog> = recording.store.clone();
    let operator =
        Operator::start_recording(client.clone(), vec![format!("{ns}/agent")], Some(log)).await?;
    let tokens = TempDir::new()?;
    let fleet: Vec<(String, String)> = [
        ("gpu-h100-0", "h100-80gb-hbm3"),
        ("gpu-h100-1", "faulty-node"),
    ]
    .iter()
    .map(|(n, p)| (n.to_string(), p.to_string()))
    .collect();
    let agents = start_agents(&client, &operator, &ns, "agent", &fleet, tokens.path()).await?;

    let path =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let name = ctx.name("h100");
    att.metadata.name = Some(name.clone());
    att.spec.reattestation_interval = "1m".into();
    Api::<GpuAttestation>::all(client.clone())
        .create(&PostParams::default(), &att)
        .await?;

    // One record per node's first verdict, with its audit row.
    let filter = RecordFilter {
        kind: Some(RecordKind::GpuNode),
        attestation: Some(name.clone()),
        ..Default::default()
    };
    let records = wait::until("a record per H100 node", Duration::from_secs(90), || {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            let page = db.list_records(&filter, Page::first(50)).await?;
            Ok((page.records.len() >= 2).then_some(page.records))
        }
    })
    .await?;
    let verdicts: BTreeMap<_, _> = records
        .iter()
        .map(|r| (r.subject.as_str(), r.verdict))
        .collect();
    ensure!(
        verdicts
            == BTreeMap::from([
                ("gpu-h100-0", Verdict::Attested),
                ("gpu-h100-1", Verdict::Failed)
            ]),
        "recorded verdicts: {verdicts:?}"
    );
    let chain = db.verify_chain().await?;
    ensure!(
        chain.first_broken.is_none() && chain.rows_checked >= 2,
        "audit chain: {chain:?}"
    );

    // Each record's bundle reaches both stores; what they hold is ciphertext that opens
    // with the Secret's key to the judgement the record names.
    let keys = recording.key_ring()?;
    for record in &records {
        let digest = record
            .bundle_digest
            .clone()
            .context("a GPU verdict was recorded without its evidence bundle")?;
        let copies = wait::until("the bundle in S3 and GCS", Duration::from_secs(60), || {
            let (db, digest) = (db.clone(), digest.clone());
            async move {
                let copies = db.bundle_locations(&digest).await?.unwrap_or_default();
                let done = copies
                    .iter()
                    .filter(|c| matches!(c.state, CopyState::Stored { .. }))
                    .count();
                Ok((done == 2).then_some(copies))
            }
        })
        .await?;
        ensure!(copies.len() == 2, "copies: {copies:?}");
        for store in [&s3 as &dyn ObjectStore, &gcs] {
            let stored = store.get(&bundle_key(&digest)).await?;
            ensure!(
                bundle::sha256_hex(&stored) == digest,
                "{}: stored bytes are not the bundle {digest}",
                store.location(&bundle_key(&digest))
            );
            ensure!(
                !contains(&stored, record.subject.as_bytes()),
                "the stored bundle shows the node name in clear"
            );
            let doc = bundle::open(&stored, &keys, &record_plaintext_digest(record)?)?;
            ensure!(
                doc["node"] == record.subject.as_str()
                    && doc["verdict"] == serde_json::to_value(record.verdict)?,
                "the bundle does not hold the recorded judgement: {doc}"
            );
            ensure!(
                doc["evidence"]["document"]["nodeName"] == record.subject.as_str(),
                "the bundle lacks the agent's evidence: {doc}"
            );
        }
    }

    drop(agents);
    operator.stop().await;
    recording.stop().await
}

/// The record's evidence digest is the SHA-256 of the bundle's plaintext.
fn record_plaintext_digest(record: &lotabots_store::db::Record) -> Result<String> {
    record
        .evidence_digest
        .strip_prefix("sha256:")
        .map(str::to_owned)
        .context("evidence digest without sha256: prefix")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
