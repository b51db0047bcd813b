//! GitOps health on live objects: GpuAttestations on a real kube-apiserver carry the
//! status the operator's own code computes for each situation, and Flux's kstatus and
//! Argo CD's Lua health check (`config/argocd/health.lua`, run as Argo CD runs it) read
//! them as the packaging issue's table says:
//!
//! | situation | kstatus | Argo CD |
//! |---|---|---|
//! | every matched node attested | Current | Healthy |
//! | first evidence pending | InProgress | Progressing |
//! | a node failed | Failed | Degraded |
//! | agents silent past the grace period | Failed | Degraded |
//! | selector matches no node | Current | Healthy |
//! | new generation not yet observed | InProgress | Progressing |
//!
//! The judging is done by `e2e/gitops` (Go: sigs.k8s.io/cli-utils kstatus, gopher-lua).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use lotabots_crds::gpu_attestation::{GpuAttestation, Verdict};
use lotabots_e2e::{ControlPlane, repo_root, scenario, suite::Ctx};
use lotabots_operator::status::{NodeResult, build_status};
use serde_json::json;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "gitops",
        || {
            ControlPlane::builder()
                .with_crds()
                .without_kwok()
                .without_scheduler()
        },
        &[scenario!(
            kstatus_and_argo_cd_read_the_operators_conditions_alike
        )],
    )
}

fn node(name: &str, verdict: Verdict, pending: bool) -> NodeResult {
    NodeResult {
        node: name.into(),
        verdict,
        reasons: vec![format!("{name}: {verdict}")],
        digest: None,
        pending,
    }
}

/// Builds `e2e/gitops` into `dir` (the Go build cache makes later runs quick).
async fn build_judge(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let bin = dir.join("gitops-health");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(repo_root().join("e2e/gitops"))
            .env("CGO_ENABLED", "0")
            .output(),
    )
    .await
    .context("building e2e/gitops took over 10 minutes")??;
    ensure!(
        out.status.success(),
        "go build e2e/gitops: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}

async fn kstatus_and_argo_cd_read_the_operators_conditions_alike(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let atts = Api::<GpuAttestation>::all(client.clone());
    let sample = repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let template: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&sample)?)?;
    let now = Timestamp::now();
    let cases: Vec<(&str, Vec<NodeResult>, (&str, &str))> = vec![
        (
            "attested",
            vec![node("a", Verdict::Attested, false)],
            ("Current", "Healthy"),
        ),
        (
            "pending",
            vec![
                node("a", Verdict::Attested, false),
                node("b", Verdict::Unknown, true),
            ],
            ("InProgress", "Progressing"),
        ),
        (
            "failed",
            vec![
                node("a", Verdict::Failed, false),
                node("b", Verdict::Attested, false),
            ],
            ("Failed", "Degraded"),
        ),
        (
            "silent",
            vec![node("a", Verdict::Unknown, false)],
            ("Failed", "Degraded"),
        ),
        ("no-match", vec![], ("Current", "Healthy")),
        (
            "new-generation",
            vec![node("a", Verdict::Attested, false)],
            ("InProgress", "Progressing"),
        ),
    ];
    let mut expected = BTreeMap::new();
    for (case, results, want) in cases {
        let name = ctx.name(case);
        let mut att = template.clone();
        att.metadata.name = Some(name.clone());
        let created = atts.create(&PostParams::default(), &att).await?;
        let status = build_status(created.metadata.generation, None, results, now);
        atts.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .with_context(|| format!("writing the status of {name}"))?;
        if case == "new-generation" {
            // A spec change the operator has not judged yet.
            atts.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"reattestationInterval": "20m"}})),
            )
            .await?;
        }
        expected.insert(name, want);
    }

    let live: Vec<GpuAttestation> = atts
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|a| {
            a.metadata
                .name
                .as_ref()
                .is_some_and(|n| expected.contains_key(n))
        })
        .collect();
    ensure!(
        live.len() == expected.len(),
        "{} of {} objects listed",
        live.len(),
        expected.len()
    );
    let dir = tempfile::TempDir::new()?;
    let objects = dir.path().join("objects.json");
    std::fs::write(&objects, serde_json::to_vec(&live)?)?;
    let judge = build_judge(dir.path()).await?;
    let out = tokio::process::Command::new(&judge)
        .arg(repo_root().join("config/argocd/health.lua"))
        .arg(&objects)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "gitops-health: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut seen = 0;
    for line in String::from_utf8(out.stdout)?.lines() {
        let r: serde_json::Value = serde_json::from_str(line)?;
        let name = r["name"].as_str().context("a result without name")?;
        let (kstatus, argo) = expected
            .get(name)
            .with_context(|| format!("unexpected object {name}"))?;
        ensure!(
            r["kstatus"] == *kstatus && r["argo"] == *argo,
            "{name}: kstatus {} ({}) and Argo CD {} ({}), expected {kstatus} and {argo}",
            r["kstatus"],
            r["kstatusMessage"],
            r["argo"],
            r["argoMessage"]
        );
        eprintln!(
            "gitops: {name}: kstatus {kstatus}, Argo CD {argo} — {}",
            r["argoMessage"]
        );
        seen += 1;
    }
    ensure!(
        seen == expected.len(),
        "judged {seen} of {} objects",
        expected.len()
    );
    Ok(())
}
