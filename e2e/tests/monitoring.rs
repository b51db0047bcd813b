//! The Prometheus Operator objects (`config/prometheus`, and the chart with
//! `metrics.serviceMonitor.enabled` and `metrics.prometheusRule.enabled`) on a real
//! kube-apiserver with the Prometheus Operator's own CRDs (vendored from its Go module,
//! see `e2e/testbins/prometheus-operator/`):
//!
//! - without those CRDs the objects are refused (why config/default leaves them out);
//! - with them, the ServiceMonitor, the PrometheusRule and the agents' metrics Service of
//!   both renderers pass `kubectl apply --dry-run=server`;
//! - the CRDs' schemas are really applied: a ServiceMonitor with an invalid interval and a
//!   PrometheusRule with an invalid `for` are refused, naming the field.

use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use lotabots_e2e::{
    ControlPlane,
    packaging::{self, NAMESPACE, Output},
    scenario,
    suite::Ctx,
};
use serde_json::Value;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "monitoring",
        || ControlPlane::builder().without_kwok().without_scheduler(),
        &[scenario!(
            the_monitoring_objects_need_and_pass_the_prometheus_operator_crds
        )],
    )
}

const MONITORING_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// What the monitoring overlay or option adds: the ServiceMonitor, the PrometheusRule and
/// the agents' metrics Service, as one YAML stream.
fn monitoring_objects(rendered: &str) -> Result<(String, usize)> {
    let objs: Vec<Value> = packaging::documents(rendered)?
        .into_iter()
        .filter(|o| {
            MONITORING_KINDS.iter().any(|k| o["kind"] == *k)
                || o["metadata"]["name"] == "lotabots-agent-metrics"
        })
        .collect();
    ensure!(
        objs.len() == 3,
        "expected 3 monitoring objects, got {}",
        objs.len()
    );
    let text = objs
        .iter()
        .map(|o| Ok(format!("---\n{}", serde_yaml::to_string(o)?)))
        .collect::<Result<String>>()?;
    Ok((text, objs.len()))
}

async fn dry_run(ctx: &Ctx, yaml: &str) -> Result<Output> {
    packaging::kubectl(
        ctx.plane(),
        &["apply", "--dry-run=server", "-f", "-"],
        Some(yaml),
    )
    .await
}

async fn the_monitoring_objects_need_and_pass_the_prometheus_operator_crds(ctx: Ctx) -> Result<()> {
    let overlay = packaging::kustomize(&packaging::prometheus_overlay())?;
    let chart = packaging::helm_template(packaging::HELM_PROMETHEUS)?.ok()?;
    let (from_kustomize, n) = monitoring_objects(&overlay)?;
    let (from_helm, _) = monitoring_objects(&chart)?;
    packaging::kubectl(ctx.plane(), &["create", "namespace", NAMESPACE], None)
        .await?
        .ok()?;

    // No Prometheus Operator: refused, which is why config/default does not include them.
    let refused = dry_run(&ctx, &from_kustomize).await?;
    ensure!(
        !refused.success && refused.stderr.contains("monitoring.coreos.com"),
        "accepted without the Prometheus Operator CRDs: {refused:?}"
    );

    for crd in packaging::prometheus_operator_crds() {
        packaging::kubectl(
            ctx.plane(),
            &["apply", "--server-side", "-f", &crd.display().to_string()],
            None,
        )
        .await?
        .ok()?;
    }
    packaging::kubectl(
        ctx.plane(),
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
        None,
    )
    .await?
    .ok()?;

    for (what, yaml) in [("config/prometheus", &from_kustomize), ("helm", &from_helm)] {
        let stdout = dry_run(&ctx, yaml)
            .await?
            .ok()
            .with_context(|| format!("{what}: server dry run"))?;
        let accepted = stdout
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        ensure!(
            accepted == n,
            "{what}: {n} objects, {accepted} accepted:\n{stdout}"
        );
    }

    // The schemas are enforced: what Prometheus could not load is refused.
    for (from, to, field) in [
        ("interval: 30s", "interval: 30 seconds", "interval"),
        ("for: 5m", "for: five minutes", "rules[0].for"),
    ] {
        ensure!(from_kustomize.contains(from), "no {from:?} to break");
        let broken = from_kustomize.replacen(from, to, 1);
        let out = dry_run(&ctx, &broken).await?;
        ensure!(
            !out.success && out.stderr.contains(field),
            "{to:?} was not refused naming {field}: {out:?}"
        );
    }
    Ok(())
}
