//! The project's API on a real kube-apiserver: the generated CRDs apply and are served,
//! every CEL rule rejects its bad spec with its own message, the printer columns show in
//! `kubectl get`, status is written only through the status subresource, and
//! `kubectl wait --for=condition=Ready` works on what a controller would write.
//!
//! One control plane for the whole binary (see `lotabots_e2e::suite`); no scheduler,
//! controller-manager or kwok, which none of these scenarios needs.

use std::{collections::BTreeSet, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use lotabots_e2e::{ControlPlane, resources, scenario, suite::Ctx};
use serde_json::{Value, json};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "api",
        || {
            ControlPlane::builder()
                .with_crds()
                .without_controller_manager()
                .without_scheduler()
                .without_kwok()
        },
        &[
            scenario!(crds_are_established_and_served),
            scenario!(every_cel_rule_rejects_its_bad_spec_with_its_message),
            scenario!(printer_columns_show_in_kubectl_get),
            scenario!(status_is_written_only_through_the_status_subresource),
            scenario!(kubectl_wait_returns_when_ready_is_written),
        ],
    )
}

const GROUP: &str = "lotabots.io";
const VERSION: &str = "v1alpha1";

fn gpu_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "GpuAttestation"),
        "gpuattestations",
    )
}

fn model_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "ModelAttestation"),
        "modelattestations",
    )
}

/// The sample of `kind` named `name` from config/samples.
fn sample(kind: &str, name: &str) -> Result<Value> {
    resources::samples()?
        .into_iter()
        .find(|s| s["kind"] == kind && s["metadata"]["name"] == name)
        .with_context(|| format!("config/samples has no {kind} {name}"))
}

/// `obj` renamed (and moved to `namespace`, if given).
fn renamed(obj: &Value, name: &str, namespace: Option<&str>) -> Value {
    let mut o = resources::with_field(obj, "/metadata/name", Some(name.into()));
    if let Some(ns) = namespace {
        o = resources::with_field(&o, "/metadata/namespace", Some(ns.into()));
    }
    o
}

fn dynamic(obj: &Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(obj.clone())?)
}

/// The server's message for a rejected request, or an error if it was accepted.
async fn rejection(api: &Api<DynamicObject>, obj: &Value) -> Result<String> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&dry, &dynamic(obj)?).await {
        Ok(_) => bail!("the API server accepted it"),
        Err(kube::Error::Api(s)) if s.code == 422 => Ok(s.message),
        Err(e) => Err(e).context("expected 422 Invalid"),
    }
}

/// A Ready condition as a controller would write it.
fn ready(status: &str, reason: &str) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": format!("written by the e2e test ({reason})"),
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    })
}

async fn patch_status(
    api: &Api<DynamicObject>,
    name: &str,
    status: Value,
) -> Result<DynamicObject> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .with_context(|| format!("patching the status of {name}"))
}

// --- scenarios -------------------------------------------------------------------------

/// Both CRDs from config/crd/bases are Established with their names accepted, and the
/// API server serves their kinds (discovery) with the status subresource.
async fn crds_are_established_and_served(ctx: Ctx) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(ctx.client());
    let expected: Vec<String> = resources::crds()?.iter().map(|c| c.name_any()).collect();
    ensure!(
        expected
            == [
                "gpuattestations.lotabots.io",
                "modelattestations.lotabots.io"
            ],
        "config/crd/bases holds {expected:?}"
    );
    for name in &expected {
        let crd = api.get(name).await?;
        for cond in ["Established", "NamesAccepted"] {
            ensure!(
                resources::crd_condition(&crd, cond),
                "CRD {name} is not {cond}: {:?}",
                crd.status
            );
        }
    }
    let out = ctx
        .plane()
        .kubectl_out(&["api-resources", "--api-group=lotabots.io", "-o", "wide"])
        .await?;
    for (plural, short, namespaced, kind) in [
        ("gpuattestations", "gpuatt", "false", "GpuAttestation"),
        ("modelattestations", "modelatt", "true", "ModelAttestation"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(plural))
            .with_context(|| format!("kubectl api-resources does not list {plural}:\n{out}"))?;
        let cols: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            cols[..5] == [plural, short, "lotabots.io/v1alpha1", namespaced, kind],
            "unexpected api-resources line {line:?}"
        );
    }
    Ok(())
}

/// One bad spec per CEL rule: the edits that break it (JSON pointer, value or removal),
/// the schema path of the rule, the field path the server names, and its message.
struct CelCase {
    kind: &'static str,
    edits: Vec<(&'static str, Option<Value>)>,
    rule_path: &'static str,
    field: &'static str,
    message: &'static str,
}

fn cel_cases() -> Vec<CelCase> {
    let c = |kind, edits: Vec<(&'static str, Option<Value>)>, rule_path, field, message| CelCase {
        kind,
        edits,
        rule_path,
        field,
        message,
    };
    const G: &str = "GpuAttestation";
    const M: &str = "ModelAttestation";
    let both_refs = json!({"secretKeyRef": {"name": "a", "key": "b"},
                           "configMapKeyRef": {"name": "a", "key": "b"}});
    vec![
        c(
            G,
            vec![(
                "/spec/policy/allowedVbiosVersions",
                Some(json!(["96.00.DA.00.0C", "96.00"])),
            )],
            "spec.policy.allowedVbiosVersions",
            "spec.policy.allowedVbiosVersions",
            "spec.policy.allowedVbiosVersions entries must be VBIOS versions such as 96.00.DA.00.0C",
        ),
        c(
            G,
            vec![("/spec/policy/mig/mode", Some(json!("Disabled")))],
            "spec.policy.mig",
            "spec.policy.mig",
            "spec.policy.mig.profiles may only be set when spec.policy.mig.mode is Enabled",
        ),
        c(
            G,
            vec![("/spec/policy/mig/profiles/2/count", Some(json!(8)))],
            "spec.policy.mig.profiles[].count",
            "spec.policy.mig.profiles[2].count",
            "spec.policy.mig.profiles[].count must be between 1 and 7",
        ),
        c(
            G,
            vec![(
                "/spec/policy/mig/profiles/0/profile",
                Some(json!("3g.40GB")),
            )],
            "spec.policy.mig.profiles[].profile",
            "spec.policy.mig.profiles[0].profile",
            "spec.policy.mig.profiles[].profile must be a MIG profile name such as 1g.10gb or 3g.40gb",
        ),
        c(
            G,
            vec![("/spec/policy/minDriverVersion", Some(json!("v550")))],
            "spec.policy.minDriverVersion",
            "spec.policy.minDriverVersion",
            "spec.policy.minDriverVersion must be a driver version such as 550.54.15 or 550.0",
        ),
        c(
            G,
            vec![("/spec/reattestationInterval", Some(json!("30s")))],
            "spec.reattestationInterval",
            "spec.reattestationInterval",
            "spec.reattestationInterval must be a duration such as 10m or 1h30m, between 1m and 168h",
        ),
        c(
            G,
            vec![("/spec/workloadCheck/timeout", Some(json!("2h")))],
            "spec.workloadCheck.timeout",
            "spec.workloadCheck.timeout",
            "spec.workloadCheck.timeout must be a duration such as 5m, greater than 0s and at most 1h",
        ),
        c(
            G,
            vec![("/spec/workloadCheck/minBandwidthGbps", Some(json!(-1.5)))],
            "spec.workloadCheck.minBandwidthGbps",
            "spec.workloadCheck.minBandwidthGbps",
            "spec.workloadCheck.minBandwidthGbps must be greater than 0",
        ),
        c(
            M,
            vec![("/spec/behaviour/migProfile", Some(json!("1g.10gb")))],
            "spec.behaviour",
            "spec.behaviour",
            "spec.behaviour must set gpuCount or migProfile, not both",
        ),
        c(
            M,
            vec![("/spec/behaviour/gpuCount", Some(json!(9)))],
            "spec.behaviour.gpuCount",
            "spec.behaviour.gpuCount",
            "spec.behaviour.gpuCount must be between 1 and 8",
        ),
        c(
            M,
            vec![
                ("/spec/behaviour/gpuCount", None),
                ("/spec/behaviour/migProfile", Some(json!("big"))),
            ],
            "spec.behaviour.migProfile",
            "spec.behaviour.migProfile",
            "spec.behaviour.migProfile must be a MIG profile name such as 1g.10gb",
        ),
        c(
            M,
            vec![("/spec/behaviour/timeout", Some(json!("25h")))],
            "spec.behaviour.timeout",
            "spec.behaviour.timeout",
            "spec.behaviour.timeout must be a duration such as 15m, greater than 0s and at most 24h",
        ),
        c(
            M,
            vec![("/spec/integrity/expectedDigest", Some(json!("abc")))],
            "spec.integrity",
            "spec.integrity",
            "spec.integrity.expectedDigest must be 64 lowercase hex characters for sha256 and blake3",
        ),
        c(
            M,
            vec![("/spec/integrity/shardSizeBytes", Some(json!(0)))],
            "spec.integrity.shardSizeBytes",
            "spec.integrity.shardSizeBytes",
            "spec.integrity.shardSizeBytes must be greater than 0",
        ),
        c(
            M,
            vec![(
                "/spec/policy/allowedFormats",
                Some(json!(["safetensors", "pytorch"])),
            )],
            "spec.policy",
            "spec.policy",
            "spec.policy.allowedFormats includes pickle or pytorch, which spec.policy.pickle: Deny would always reject; set pickle to AllowSafeGlobals or drop those formats",
        ),
        c(
            M,
            vec![(
                "/spec/policy/allowedLicenses",
                Some(json!(["MIT", "not spdx"])),
            )],
            "spec.policy.allowedLicenses",
            "spec.policy.allowedLicenses",
            "spec.policy.allowedLicenses entries must be SPDX licence identifiers such as Apache-2.0",
        ),
        c(
            M,
            vec![("/spec/policy/maxSize", Some(json!("lots")))],
            "spec.policy.maxSize",
            "spec.policy.maxSize",
            "spec.policy.maxSize must be a positive quantity such as 20Gi, or a number of bytes",
        ),
        c(
            M,
            vec![(
                "/spec/signature/certificate",
                Some(json!({"secretKeyRef": {"name": "c", "key": "k"}})),
            )],
            "spec.signature",
            "spec.signature",
            "spec.signature must set exactly one of publicKey or certificate",
        ),
        c(
            M,
            vec![("/spec/signature/bundle", Some(json!("../model.sig")))],
            "spec.signature.bundle",
            "spec.signature.bundle",
            "spec.signature.bundle must be a path relative to the model source without '..', or an s3://, gs:// or file:/// URI",
        ),
        c(
            M,
            vec![
                ("/spec/signature/publicKey", None),
                ("/spec/signature/certificate", Some(both_refs.clone())),
            ],
            "spec.signature.certificate",
            "spec.signature.certificate",
            "a key reference must set exactly one of secretKeyRef or configMapKeyRef",
        ),
        c(
            M,
            vec![("/spec/signature/publicKey", Some(both_refs))],
            "spec.signature.publicKey",
            "spec.signature.publicKey",
            "a key reference must set exactly one of secretKeyRef or configMapKeyRef",
        ),
        c(
            M,
            vec![("/spec/source/pvc", Some(json!({"claimName": "models"})))],
            "spec.source",
            "spec.source",
            "spec.source must set exactly one of uri or pvc",
        ),
        c(
            M,
            vec![("/spec/source/uri", Some(json!("file:///models/x")))],
            "spec.source",
            "spec.source",
            "spec.source.credentialsSecretRef may only be set with an s3:// or gs:// uri",
        ),
        c(
            M,
            vec![(
                "/spec/source",
                Some(json!({"pvc": {"claimName": "Bad_Name", "path": "m"}})),
            )],
            "spec.source.pvc.claimName",
            "spec.source.pvc.claimName",
            "spec.source.pvc.claimName must be a DNS subdomain name (lowercase letters, digits, '-', '.')",
        ),
        c(
            M,
            vec![(
                "/spec/source",
                Some(json!({"pvc": {"claimName": "models", "path": "/abs"}})),
            )],
            "spec.source.pvc.path",
            "spec.source.pvc.path",
            "spec.source.pvc.path must be relative to the volume root, without '..'",
        ),
        c(
            M,
            vec![("/spec/source/uri", Some(json!("https://models/x")))],
            "spec.source.uri",
            "spec.source.uri",
            "spec.source.uri must be s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or file:///PATH",
        ),
    ]
}

/// Every `(schema path, message)` of the `x-kubernetes-validations` in a CRD's schema.
fn cel_rules(crd: &CustomResourceDefinition) -> Result<BTreeSet<(String, String)>> {
    fn walk(node: &Value, path: &str, out: &mut BTreeSet<(String, String)>) {
        for r in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.insert((
                path.to_string(),
                r["message"].as_str().unwrap_or_default().to_string(),
            ));
        }
        for (k, v) in node["properties"].as_object().into_iter().flatten() {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk(v, &p, out);
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), out);
        }
    }
    let schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .context("a CRD without schema")?
            .open_api_v3_schema,
    )?;
    let mut out = BTreeSet::new();
    walk(&schema, "", &mut out);
    Ok(out)
}

/// Every CEL rule of the CRDs as the API server holds them is broken by exactly one case
/// here; each case's object is rejected (422) naming the rule's field and its message,
/// and the unbroken samples the cases derive from are accepted.
async fn every_cel_rule_rejects_its_bad_spec_with_its_message(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace().await?;
    let gpu_api = Api::<DynamicObject>::all_with(ctx.client(), &gpu_resource());
    let model_api = Api::<DynamicObject>::namespaced_with(ctx.client(), &ns, &model_resource());
    // The bases: the A100 MIG sample (MIG profiles, a workload check) with a VBIOS list,
    // and the S3 model sample.
    let gpu_base = resources::with_field(
        &renamed(
            &sample("GpuAttestation", "a100-mig")?,
            &ctx.name("cel"),
            None,
        ),
        "/spec/policy/allowedVbiosVersions",
        Some(json!(["96.00.DA.00.0C"])),
    );
    let model_base = renamed(
        &sample("ModelAttestation", "mistral-7b-instruct")?,
        "cel",
        Some(&ns),
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    gpu_api
        .create(&dry, &dynamic(&gpu_base)?)
        .await
        .context("the GpuAttestation base was rejected")?;
    model_api
        .create(&dry, &dynamic(&model_base)?)
        .await
        .context("the ModelAttestation base was rejected")?;

    // Coverage: the cases break every rule the served CRDs carry, no more, no less.
    let crds = Api::<CustomResourceDefinition>::all(ctx.client());
    let cases = cel_cases();
    for (kind, crd) in [
        ("GpuAttestation", "gpuattestations.lotabots.io"),
        ("ModelAttestation", "modelattestations.lotabots.io"),
    ] {
        let served = cel_rules(&crds.get(crd).await?)?;
        let covered: BTreeSet<(String, String)> = cases
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| (c.rule_path.to_string(), c.message.to_string()))
            .collect();
        ensure!(
            served == covered,
            "{kind}: rules without a case: {:?}; cases without a rule: {:?}",
            served.difference(&covered).collect::<Vec<_>>(),
            covered.difference(&served).collect::<Vec<_>>()
        );
    }

    let mut failures = Vec::new();
    for case in &cases {
        let (api, base) = match case.kind {
            "GpuAttestation" => (&gpu_api, &gpu_base),
            _ => (&model_api, &model_base),
        };
        let bad = case.edits.iter().fold(base.clone(), |o, (ptr, v)| {
            resources::with_field(&o, ptr, v.clone())
        });
        match rejection(api, &bad).await {
            Ok(msg) if msg.contains(&format!("{}: ", case.field)) && msg.contains(case.message) => {
            }
            Ok(msg) => failures.push(format!(
                "{} {}: expected {:?} on {}, got: {msg}",
                case.kind, case.rule_path, case.message, case.field
            )),
            Err(e) => failures.push(format!("{} {}: {e:#}", case.kind, case.rule_path)),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} CEL cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "api: {} CEL rules each rejected their bad spec",
        cases.len()
    );
    Ok(())
}

/// Splits `kubectl get` output into rows of cells (columns are separated by 2+ spaces
/// and no cell here contains two spaces).
fn kubectl_table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// `kubectl get` shows the CRDs' printer columns, filled from status.
async fn printer_columns_show_in_kubectl_get(ctx: Ctx) -> Result<()> {
    let plane = ctx.plane();
    let gpu_api = Api::<DynamicObject>::all_with(ctx.client(), &gpu_resource());
    let name = ctx.name("h100");
    let obj = renamed(&sample("GpuAttestation", "h100-fleet")?, &name, None);
    gpu_api
        .create(&PostParams::default(), &dynamic(&obj)?)
        .await?;
    patch_status(
        &gpu_api,
        &name,
        json!({
            "conditions": [ready("True", "AllNodesAttested")],
            "matchedNodes": 3, "attestedNodes": 2, "failedNodes": 1, "unknownNodes": 0,
        }),
    )
    .await?;
    let out = plane.kubectl_out(&["get", "gpuatt", &name]).await?;
    let rows = kubectl_table(&out);
    ensure!(
        rows.len() == 2
            && rows[0]
                == [
                    "NAME", "READY", "MATCHED", "ATTESTED", "FAILED", "UNKNOWN", "AGE"
                ]
            && rows[1][..6] == [name.as_str(), "True", "3", "2", "1", "0"],
        "unexpected kubectl get gpuatt output:\n{out}"
    );

    let ns = ctx.namespace().await?;
    let model_api = Api::<DynamicObject>::namespaced_with(ctx.client(), &ns, &model_resource());
    let obj = renamed(
        &sample("ModelAttestation", "mistral-7b-instruct")?,
        "mistral",
        Some(&ns),
    );
    model_api
        .create(&PostParams::default(), &dynamic(&obj)?)
        .await?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    patch_status(
        &model_api,
        "mistral",
        json!({"conditions": [ready("False", "NodesFailed")], "verdict": "Failed",
               "manifestDigest": digest}),
    )
    .await?;
    let out = plane.kubectl_out(&["get", "modelatt", "-n", &ns]).await?;
    let rows = kubectl_table(&out);
    ensure!(
        rows.len() == 2
            && rows[0] == ["NAME", "READY", "VERDICT", "AGE"]
            && rows[1][..3] == ["mistral", "False", "Failed"],
        "unexpected kubectl get modelatt output:\n{out}"
    );
    // The digest column has priority 1: only in the wide view.
    let out = plane
        .kubectl_out(&["get", "modelatt", "-n", &ns, "-o", "wide"])
        .await?;
    let rows = kubectl_table(&out);
    ensure!(
        rows.len() == 2
            && rows[0] == ["NAME", "READY", "VERDICT", "DIGEST", "AGE"]
            && rows[1][..4] == ["mistral", "False", "Failed", digest.as_str()],
        "unexpected kubectl get modelatt -o wide output:\n{out}"
    );
    Ok(())
}

fn status_of(o: &DynamicObject) -> Value {
    o.data.get("status").cloned().unwrap_or(Value::Null)
}

/// Status sent to the main resource is dropped (create, update, patch); the status
/// subresource writes it, and ignores spec changes sent through it.
async fn status_is_written_only_through_the_status_subresource(ctx: Ctx) -> Result<()> {
    let api = Api::<DynamicObject>::all_with(ctx.client(), &gpu_resource());
    let name = ctx.name("status");
    let base = renamed(&sample("GpuAttestation", "h100-fleet")?, &name, None);
    let with_status = resources::with_field(&base, "/status", Some(json!({"matchedNodes": 5})));

    let created = api
        .create(&PostParams::default(), &dynamic(&with_status)?)
        .await?;
    ensure!(
        status_of(&created).is_null() || status_of(&created)["matchedNodes"].is_null(),
        "create stored status {}",
        status_of(&created)
    );

    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"matchedNodes": 7}})),
        )
        .await?;
    ensure!(
        status_of(&patched)["matchedNodes"].is_null(),
        "a merge patch of the main resource wrote status {}",
        status_of(&patched)
    );

    let mut current = api.get(&name).await?;
    current.data["status"] = json!({"matchedNodes": 9});
    let replaced = api.replace(&name, &PostParams::default(), &current).await?;
    ensure!(
        status_of(&replaced)["matchedNodes"].is_null(),
        "an update of the main resource wrote status {}",
        status_of(&replaced)
    );

    let spec_before = api.get(&name).await?.data["spec"].clone();
    let via_status = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "status": {"matchedNodes": 3},
                "spec": {"reattestationInterval": "42m"},
            })),
        )
        .await?;
    ensure!(
        status_of(&via_status)["matchedNodes"] == 3,
        "the status subresource did not write status: {}",
        status_of(&via_status)
    );
    let stored = api.get(&name).await?;
    ensure!(
        status_of(&stored)["matchedNodes"] == 3 && stored.data["spec"] == spec_before,
        "after the status write: status {}, spec {} (was {spec_before})",
        status_of(&stored),
        stored.data["spec"]
    );
    Ok(())
}

/// `kubectl wait --for=condition=Ready` keeps waiting while there is no Ready condition
/// or it is False, and returns (exit 0) once the test writes Ready=True to status.
async fn kubectl_wait_returns_when_ready_is_written(ctx: Ctx) -> Result<()> {
    let plane = ctx.plane();
    let api = Api::<DynamicObject>::all_with(ctx.client(), &gpu_resource());
    let name = ctx.name("wait");
    let obj = renamed(&sample("GpuAttestation", "h100-fleet")?, &name, None);
    api.create(&PostParams::default(), &dynamic(&obj)?).await?;

    let mut wait = plane.kubectl();
    wait.args([
        "wait",
        "--for=condition=Ready",
        &format!("gpuattestation/{name}"),
        "--timeout=120s",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = wait.spawn().context("starting kubectl wait")?;

    let still_waiting = |child: &mut tokio::process::Child, when: &str| -> Result<()> {
        if let Some(status) = child.try_wait()? {
            bail!("kubectl wait returned ({status}) {when}");
        }
        Ok(())
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    still_waiting(&mut child, "before any condition was written")?;
    patch_status(
        &api,
        &name,
        json!({"conditions": [ready("False", "Pending")]}),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    still_waiting(&mut child, "on Ready=False")?;

    let written = std::time::Instant::now();
    patch_status(
        &api,
        &name,
        json!({"conditions": [ready("True", "AllNodesAttested")]}),
    )
    .await?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("kubectl wait did not return within 30 s of Ready=True")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("condition met"),
        "kubectl wait: {} stdout {stdout:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "api: kubectl wait returned {:.2} s after Ready=True was written",
        written.elapsed().as_secs_f64()
    );
    Ok(())
}
