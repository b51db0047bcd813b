//! The ModelAttestation controller on a real control plane: models on local disk (a
//! `file://` URI, as a node path or a mounted volume would be) signed with the project's
//! signer, the public key in a ConfigMap, and the controller in-process judging them by
//! the stages of `attest-model`. The scenario checks the status it writes by server-side
//! apply — every stage condition, the manifest digest, the verdict, reasons naming files —
//! for a good model, a model modified after signing (re-attested on the resync), a pickle
//! that calls `os.system`, and a missing key ConfigMap; the same for models in buckets
//! (SeaweedFS as S3, fake-gcs-server as GCS) read with the credentials of the tenant's
//! Secret — a signed model, a tampered copy whose bundle is in another prefix, an unsafe
//! pickle, a `gs://` model, and one without credentials that the store refuses; and that
//! each verdict change is recorded in the evidence store (PostgreSQL, SeaweedFS,
//! fake-gcs-server) under the manifest digest, sealed with the operator's signed
//! statement of every stage's result.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::Reporter;
use lotabots_crds::model_attestation::{ModelAttestation, Verdict};
use lotabots_e2e::evidence::{self, Recording as Stores};
use lotabots_e2e::{ControlPlane, scenario, suite::Ctx, wait};
use lotabots_model::attest::{Inputs, default_signature, run_stages};
use lotabots_model::bundle::{Bundle, Trust};
use lotabots_model::hashing::HashOptions;
use lotabots_model::hashing::hash_model;
use lotabots_model::keys::SigningKey;
use lotabots_model::manifest::Serialization;
use lotabots_model::remote::{Access, ObjectSource};
use lotabots_model::source::{LocalSource, Location, Source};
use lotabots_operator::evidence_store::ModelLog;
use lotabots_operator::metrics::ModelMetrics;
use lotabots_operator::model_controller::{self, Recording, StatementKey};
use lotabots_operator::model_inputs::ModelSettings;
use lotabots_operator::model_status::PREDICATE_TYPE;
use lotabots_store::bundle;
use lotabots_store::bundle::sha256_hex;
use lotabots_store::db::{CopyState, Page, RecordFilter, RecordKind};
use lotabots_store::objects::{ObjectStore, bundle_key};
use serde_json::json;
use tempfile::TempDir;

#[path = "support/evidence_stores.rs"]
#[allow(dead_code)]
mod support;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "models",
        || ControlPlane::builder().with_crds().with_stores(),
        &[scenario!(models_are_judged_stage_by_stage_and_re_attested)],
    )
}

/// How long the controller may take to judge a small model.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// A safetensors file with one F32 tensor of `n` values.
fn safetensors(n: usize) -> Vec<u8> {
    let mut header = format!(
        r#"{{"weight":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
    out
}

/// A model the default policy accepts: a card with a licence, a config, weights.
fn write_model(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("README.md"),
        "---\nlicense: apache-2.0\n---\n# Tiny model\n",
    )?;
    std::fs::write(dir.join("config.json"), br#"{"layers": 2}"#)?;
    std::fs::write(dir.join("model.safetensors"), safetensors(1024))?;
    Ok(())
}

/// Signs the model at `dir` into `dir/model.sig`, as `model_signing sign key` does.
fn sign(dir: &Path, key: &SigningKey) -> Result<String> {
    let (manifest, bundle) = lotabots_model::sign_model(
        &LocalSource::new(dir)?,
        Serialization::files(lotabots_crds::model_attestation::HashAlgorithm::Sha256),
        Some("model.sig"),
        key,
        None,
        &HashOptions::default(),
    )?;
    std::fs::write(dir.join("model.sig"), bundle.to_json())?;
    Ok(manifest.digest_string())
}

/// The bucket models are uploaded to, in both object stores.
const MODEL_BUCKET: &str = "models";

/// Uploads the files of `dir` (flat) under `prefix/`, or only `only` when given.
async fn upload(store: &dyn ObjectStore, dir: &Path, prefix: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("file name")?;
        let bytes = std::fs::read(&path)?;
        let digest = sha256_hex(&bytes);
        store
            .put(&format!("{prefix}/{name}"), bytes.into(), &digest)
            .await
            .with_context(|| format!("uploading {name} under {prefix}"))?;
    }
    Ok(())
}

/// A Secret of string data.
fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn attestation(name: &str, spec: serde_json::Value) -> Result<ModelAttestation> {
    let mut att = ModelAttestation::new(name, serde_json::from_value(spec)?);
    att.metadata.name = Some(name.into());
    Ok(att)
}

fn condition<'a>(att: &'a ModelAttestation, type_: &str) -> Option<&'a Condition> {
    att.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Waits until `name`'s condition `type_` has `status`, and returns the object.
async fn wait_for(
    api: &Api<ModelAttestation>,
    name: &str,
    type_: &str,
    status: &str,
) -> Result<ModelAttestation> {
    wait::until(
        &format!("{name}: {type_}={status}"),
        VERDICT_TIMEOUT,
        || async {
            let att = api.get(name).await?;
            let seen = condition(&att, type_).map(|c| c.status.clone());
            if seen.as_deref() == Some(status) {
                Ok(Some(att))
            } else {
                anyhow::bail!("{type_} is {seen:?}; status {:?}", att.status)
            }
        },
    )
    .await
}

fn expect(att: &ModelAttestation, type_: &str, status: &str, reason: &str) -> Result<String> {
    let c = condition(att, type_).with_context(|| format!("no {type_} condition"))?;
    ensure!(
        c.status == status && c.reason == reason,
        "{type_}: expected {status}/{reason}, got {}/{}: {}",
        c.status,
        c.reason,
        c.message
    );
    ensure!(
        c.observed_generation == att.metadata.generation,
        "{type_} is for generation {:?}",
        c.observed_generation
    );
    Ok(c.message.clone())
}

async fn models_are_judged_stage_by_stage_and_re_attested(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let models = TempDir::new()?;
    let good_dir = models.path().join("good");
    let pickle_dir = models.path().join("pickled");

    // The signer's key: the public half in a ConfigMap, as a release team publishes it.
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
    let key = SigningKey::from_pem(&pem).map_err(|e| anyhow::anyhow!(e.0))?;
    write_model(&good_dir)?;
    let signed_digest = sign(&good_dir, &key)?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("signers".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "release.pub".into(),
                    key.public_key().to_pem(),
                )])),
                ..Default::default()
            },
        )
        .await?;
    // A model whose pickle calls os.system when loaded (protocol 0, GLOBAL opcode).
    write_model(&pickle_dir)?;
    std::fs::write(
        pickle_dir.join("extra.pkl"),
        b"cos\nsystem\n(S'echo pwned'\ntR.",
    )?;

    // The same models in buckets: the signed one with its bundle inside its prefix; a
    // copy with one file changed whose bundle is in another prefix; the pickled one. The
    // tenant's Secrets hold the credentials (the operator has none of its own for them).
    let servers = ctx.plane().stores()?;
    let s3_models = support::s3_store(&servers.s3, MODEL_BUCKET).await?;
    upload(&s3_models, &good_dir, "good").await?;
    upload(&s3_models, &pickle_dir, "pickled").await?;
    let tampered_dir = models.path().join("tampered");
    write_model(&tampered_dir)?;
    let mut weights = std::fs::read(tampered_dir.join("model.safetensors"))?;
    weights[100] ^= 0x01;
    std::fs::write(tampered_dir.join("model.safetensors"), weights)?;
    upload(&s3_models, &tampered_dir, "tampered").await?;
    let good_sig = std::fs::read(good_dir.join("model.sig"))?;
    let good_sig_digest = sha256_hex(&good_sig);
    s3_models
        .put("sigs/tampered.sig", good_sig.into(), &good_sig_digest)
        .await?;
    let gcs_models = support::gcs_store(&servers.gcs, MODEL_BUCKET).await?;
    upload(&gcs_models, &good_dir, "good").await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "s3-reader",
                &[
                    ("AWS_ACCESS_KEY_ID", servers.s3.access_key()),
                    ("AWS_SECRET_ACCESS_KEY", servers.s3.secret_key()),
                    ("AWS_REGION", servers.s3.region()),
                    ("AWS_ENDPOINT_URL", servers.s3.endpoint()),
                ],
            ),
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "gcs-reader",
                &[("GCS_ENDPOINT_URL", servers.gcs.endpoint())],
            ),
        )
        .await?;

    // The evidence store as `run` wires it, and the operator's statement key.
    let stores = Stores::start(client.clone(), ctx.plane().stores()?, &ns).await?;
    let statement_pem =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
    let statement_key = SigningKey::from_pem(&statement_pem).map_err(|e| anyhow::anyhow!(e.0))?;
    let statement_public = statement_key.public_key();
    let registry = prometheus::Registry::new();
    let metrics = ModelMetrics::register(&registry)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(model_controller::run(
        client.clone(),
        ModelSettings {
            model_root: models.path().to_owned(),
            // Short, so that the modified model is re-attested within the scenario.
            resync: Duration::from_secs(2),
        },
        Reporter {
            controller: "lotabots-operator".into(),
            instance: Some("e2e".into()),
        },
        Some(Recording {
            log: stores.store.clone() as Arc<dyn ModelLog>,
            key: StatementKey::Fixed(Arc::new(statement_key)),
        }),
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));

    let result = async {
        let api: Api<ModelAttestation> = Api::namespaced(client.clone(), &ns);
        let signature = json!({
            "publicKey": {"configMapKeyRef": {"name": "signers", "key": "release.pub"}}
        });
        let uri = |dir: &Path| format!("file://{}", dir.display());
        for att in [
            attestation(
                "good",
                json!({"source": {"uri": uri(&good_dir)}, "signature": signature}),
            )?,
            attestation(
                "pickled",
                json!({
                    "source": {"uri": uri(&pickle_dir)},
                    "policy": {"allowedFormats": ["safetensors", "pickle"], "pickle": "AllowSafeGlobals"}
                }),
            )?,
            attestation(
                "s3-good",
                json!({
                    "source": {"uri": "s3://models/good", "credentialsSecretRef": {"name": "s3-reader"}},
                    "signature": signature
                }),
            )?,
            attestation(
                "s3-tampered",
                json!({
                    "source": {"uri": "s3://models/tampered/", "credentialsSecretRef": {"name": "s3-reader"}},
                    "signature": {
                        "publicKey": {"configMapKeyRef": {"name": "signers", "key": "release.pub"}},
                        "bundle": "s3://models/sigs/tampered.sig"
                    }
                }),
            )?,
            attestation(
                "s3-pickled",
                json!({
                    "source": {"uri": "s3://models/pickled", "credentialsSecretRef": {"name": "s3-reader"}},
                    "policy": {"allowedFormats": ["safetensors", "pickle"], "pickle": "AllowSafeGlobals"}
                }),
            )?,
            attestation(
                "s3-anonymous",
                json!({"source": {"uri": "s3://models/good"}}),
            )?,
            attestation(
                "gs-good",
                json!({
                    "source": {"uri": "gs://models/good", "credentialsSecretRef": {"name": "gcs-reader"}},
                    "signature": signature
                }),
            )?,
            attestation(
                "no-key",
                json!({
                    "source": {"uri": uri(&good_dir)},
                    "signature": {"publicKey": {"configMapKeyRef": {"name": "absent", "key": "k"}}}
                }),
            )?,
        ] {
            api.create(&PostParams::default(), &att).await?;
        }

        // The signed, intact model: every stage passes.
        let good = wait_for(&api, "good", "Ready", "True").await?;
        expect(&good, "IntegrityVerified", "True", "DigestMatch")?;
        expect(&good, "SignatureVerified", "True", "SignatureValid")?;
        expect(&good, "SafetyScanned", "True", "ScanPassed")?;
        expect(&good, "Compliant", "True", "PolicySatisfied")?;
        expect(&good, "Behaviour", "True", "NotRequested")?;
        expect(&good, "Ready", "True", "AllStagesPassed")?;
        let status = good.status.clone().context("no status")?;
        ensure!(status.verdict == Some(Verdict::Attested), "{status:?}");
        ensure!(
            status.manifest_digest.as_deref() == Some(signed_digest.as_str()),
            "manifest digest {:?}, signed {signed_digest}",
            status.manifest_digest
        );
        ensure!(status.verified_at.is_some() && status.reasons.is_empty());

        // The pickle that runs os.system is caught, and named.
        let pickled = wait_for(&api, "pickled", "SafetyScanned", "False").await?;
        let message = expect(&pickled, "SafetyScanned", "False", "UnsafePickle")?;
        ensure!(message.contains("extra.pkl"), "{message}");
        expect(&pickled, "Ready", "False", "StageFailed")?;
        let reasons = pickled.status.as_ref().map(|s| s.reasons.clone()).unwrap_or_default();
        ensure!(
            reasons.iter().any(|r| r.contains("extra.pkl")),
            "reasons: {reasons:?}"
        );

        // The signed model in S3 and in GCS: the same manifest, every stage passed.
        for name in ["s3-good", "gs-good"] {
            let att = wait_for(&api, name, "Ready", "True").await?;
            expect(&att, "IntegrityVerified", "True", "DigestMatch")?;
            expect(&att, "SignatureVerified", "True", "SignatureValid")?;
            expect(&att, "SafetyScanned", "True", "ScanPassed")?;
            expect(&att, "Compliant", "True", "PolicySatisfied")?;
            let digest = att.status.as_ref().and_then(|s| s.manifest_digest.clone());
            ensure!(
                digest.as_deref() == Some(signed_digest.as_str()),
                "{name}: manifest digest {digest:?}, signed {signed_digest}"
            );
        }

        // attest-model's way: a source with a runtime of its own, settings from keys (the
        // environment there), the stages run directly; and a prefix naming one object.
        let (s3_keys, trust) = (
            [
                ("AWS_ACCESS_KEY_ID", servers.s3.access_key().to_owned()),
                ("AWS_SECRET_ACCESS_KEY", servers.s3.secret_key().to_owned()),
                ("AWS_REGION", servers.s3.region().to_owned()),
                ("AWS_ENDPOINT_URL", servers.s3.endpoint().to_owned()),
            ],
            Trust::PublicKey(key.public_key()),
        );
        let digest = signed_digest.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let access = Access::from_keys(
                |k| s3_keys.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
                true,
            )?;
            let source: Arc<dyn Source> = Arc::new(ObjectSource::connect_blocking(
                &Location::parse("s3://models/good").map_err(anyhow::Error::msg)?,
                &access,
            )?);
            let inputs = Inputs {
                signature: Some(default_signature(&source)),
                source,
                spec: None,
                trust: Some(trust),
                signature_explicit: false,
            };
            let report = run_stages("s3://models/good", &inputs, &HashOptions::default())?;
            ensure!(report.verdict == Verdict::Attested, "{}", report.render_table());
            ensure!(report.manifest_digest.as_deref() == Some(digest.as_str()));
            ensure!(report.files == 3, "model.sig is not part of the model");

            let single = ObjectSource::connect_blocking(
                &Location::parse("s3://models/good/model.safetensors").map_err(anyhow::Error::msg)?,
                &access,
            )?;
            let manifest = hash_model(
                &single,
                &Serialization::files(lotabots_crds::model_attestation::HashAlgorithm::Sha256),
                &HashOptions::default(),
            )?;
            let names: Vec<_> = manifest.resources.keys().map(|k| k.path.clone()).collect();
            ensure!(names == ["model.safetensors"], "{names:?}");
            ensure!(single.is_single_file());
            Ok(())
        })
        .await??;

        // The tampered copy (its bundle in another prefix) fails integrity, naming the file.
        let tampered = wait_for(&api, "s3-tampered", "IntegrityVerified", "False").await?;
        let message = expect(&tampered, "IntegrityVerified", "False", "DigestMismatch")?;
        ensure!(message.contains("model.safetensors"), "{message}");
        ensure!(
            !message.contains("README.md") && !message.contains("config.json"),
            "only the changed file is named: {message}"
        );
        expect(&tampered, "SignatureVerified", "True", "SignatureValid")?;
        expect(&tampered, "Ready", "False", "StageFailed")?;

        // The unsafe pickle in S3 is refused, naming the file and the global.
        let pickled = wait_for(&api, "s3-pickled", "SafetyScanned", "False").await?;
        let message = expect(&pickled, "SafetyScanned", "False", "UnsafePickle")?;
        ensure!(message.contains("extra.pkl"), "{message}");
        let reasons = pickled.status.as_ref().map(|s| s.reasons.clone()).unwrap_or_default();
        ensure!(
            reasons
                .iter()
                .any(|r| r.contains("extra.pkl") && r.contains("system")),
            "reasons: {reasons:?}"
        );

        // Without the tenant's credentials the model is not read with anybody else's:
        // SeaweedFS refuses the unsigned listing and the model stays unjudged.
        let anonymous = wait_for(&api, "s3-anonymous", "Ready", "False").await?;
        let message = expect(&anonymous, "IntegrityVerified", "False", "SourceUnavailable")?;
        ensure!(message.starts_with("s3://models/good"), "{message}");
        ensure!(anonymous.status.as_ref().and_then(|s| s.verdict) == Some(Verdict::Unknown));

        // A key ConfigMap that does not exist is named.
        let no_key = wait_for(&api, "no-key", "SignatureVerified", "False").await?;
        let message = expect(&no_key, "SignatureVerified", "False", "ReferenceNotFound")?;
        ensure!(message.contains(&format!("ConfigMap {ns}/absent")), "{message}");

        // One file changed after signing: the next resync fails integrity, naming it.
        let mut weights = std::fs::read(good_dir.join("model.safetensors"))?;
        let last = weights.len() - 1;
        weights[last] ^= 0xff;
        std::fs::write(good_dir.join("model.safetensors"), weights)?;
        let tampered = wait_for(&api, "good", "IntegrityVerified", "False").await?;
        let message = expect(&tampered, "IntegrityVerified", "False", "DigestMismatch")?;
        ensure!(message.contains("model.safetensors"), "{message}");
        expect(&tampered, "SignatureVerified", "True", "SignatureValid")?;
        expect(&tampered, "Ready", "False", "StageFailed")?;
        let status = tampered.status.clone().context("no status")?;
        ensure!(status.verdict == Some(Verdict::Failed), "{status:?}");
        ensure!(
            condition(&tampered, "SafetyScanned").map(|c| &c.last_transition_time)
                == condition(&good, "SafetyScanned").map(|c| &c.last_transition_time),
            "an unchanged condition keeps its transition time"
        );

        // The judgements are counted: verdicts, stage outcomes and times, bytes hashed.
        let gathered = registry.gather();
        let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
            gathered
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().iter())
                .filter(|m| {
                    labels.iter().all(|(k, v)| {
                        m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)
                    })
                })
                .map(|m| {
                    // A counter's histogram part is empty, and the reverse.
 m.get_histogram().get_sample_count() as f64 + m.get_counter().get_value()
                })
                .sum()
        };
        ensure!(total("lotabots_model_attestations_total", &[("verdict", "Attested")]) >= 3.0);
        ensure!(total("lotabots_model_attestations_total", &[("verdict", "Failed")]) >= 3.0);
        ensure!(total("lotabots_model_attestations_total", &[("verdict", "Unknown")]) >= 2.0);
        ensure!(
            total(
                "lotabots_model_stage_results_total",
                &[("stage", "SafetyScanned"), ("outcome", "failed")]
            ) >= 2.0
        );
        ensure!(
            total(
                "lotabots_model_stage_results_total",
                &[("stage", "IntegrityVerified"), ("outcome", "blocked")]
            ) >= 1.0
        );
        ensure!(
            total(
                "lotabots_model_stage_duration_seconds",
                &[("stage", "IntegrityVerified")]
            ) >= 6.0
        );
        // Three copies of the model (local, S3, GCS) at least, each over 4 KiB.
        ensure!(total("lotabots_model_bytes_hashed_total", &[]) >= 3.0 * 4096.0);

        // Each verdict change of the model is a record under its manifest digest, sealed
        // with the operator's statement, signed over that digest.
        let db = stores.store.database().clone();
        let filter = RecordFilter {
            kind: Some(RecordKind::Model),
            attestation: Some(format!("{ns}/good")),
            ..Default::default()
        };
        let records = db.list_records(&filter, Page::first(10)).await?.records;
        let mut seen: Vec<(String, Verdict)> = records
            .iter()
            .map(|r| (r.subject.clone(), r.verdict))
            .collect();
        seen.sort_by_key(|(_, v)| *v != Verdict::Attested);
        let tampered_digest = status.manifest_digest.clone().context("no digest")?;
        ensure!(
            seen == [
                (signed_digest.clone(), Verdict::Attested),
                (tampered_digest, Verdict::Failed)
            ],
            "records: {seen:?}"
        );
        let s3 = support::s3_store(&ctx.plane().stores()?.s3, evidence::S3_BUCKET).await?;
        let keys = stores.key_ring()?;
        for record in &records {
            let digest = record.bundle_digest.clone().context("a record without bundle")?;
            wait::until("the statement in S3", VERDICT_TIMEOUT, || {
                let (db, digest) = (db.clone(), digest.clone());
                async move {
                    let copies = db.bundle_locations(&digest).await?.unwrap_or_default();
                    Ok(copies
                        .iter()
                        .any(|c| c.store == "s3" && matches!(c.state, CopyState::Stored { .. }))
                        .then_some(()))
                }
            })
            .await?;
            let sealed = s3.get(&bundle_key(&digest)).await?;
            let plaintext = record
                .evidence_digest
                .strip_prefix("sha256:")
                .context("evidence digest without sha256:")?;
            let document = bundle::open(&sealed, &keys, plaintext)?;
            let signed = Bundle::from_json(&serde_json::to_vec(&document)?)?;
            let (payload, _) =
                signed.verify_payload(&Trust::PublicKey(statement_public.clone()))?;
            let statement: serde_json::Value = serde_json::from_slice(&payload)?;
            ensure!(statement["predicateType"] == PREDICATE_TYPE, "{statement}");
            let subject = statement["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap_or_default();
            ensure!(
                format!("sha256:{subject}") == record.subject,
                "statement subject {subject}, record {}",
                record.subject
            );
            ensure!(
                statement["predicate"]["verdict"] == serde_json::to_value(record.verdict)?,
                "{statement}"
            );
            ensure!(
                statement["predicate"]["report"]["stages"]
                    .as_array()
                    .is_some_and(|s| s.len() == 4),
                "{statement}"
            );
        }
        Ok(())
    }
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    let stopped = stores.stop().await;
    result.and(stopped)
}
