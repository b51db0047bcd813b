//! Installing lotabots on a real kube-apiserver, as users do:
//!
//! - `kubectl apply --dry-run=server -k config/default` (the production configuration,
//!   webhook registered through its Service) and `helm template | kubectl apply
//!   --dry-run=server -f -` are accepted by the API server, with no Pod Security warning;
//! - the e2e overlay (`e2e/overlays/install`: config/default with the webhook registered
//!   by 127.0.0.1 URL) is applied for real: every object exists; the namespace is held to
//!   Pod Security `restricted` and the ReplicaSet and DaemonSet controllers' pods are
//!   admitted under it — two operators, two webhooks, one agent on each GPU node and none
//!   on the CPU node; the webhook configuration is live (a pod elsewhere fails calling
//!   it, since nothing serves that URL) and leaves lotabots-system alone;
//! - RBAC, asked of the API server (`kubectl auth can-i`, impersonating each
//!   ServiceAccount): each has exactly its rules beyond what every ServiceAccount gets;
//!   the agent cannot read Secrets, write GpuAttestations or patch nodes; the webhook can
//!   read nothing; the operator can do what it needs and no more.
//!
//! One control plane for the whole binary (everything, default fleet); the install is
//! applied once, by whichever scenario needs it first. The nvidia RuntimeClass is created
//! first, as the GPU Operator would.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use lotabots_e2e::{
    ControlPlane, SimNode,
    packaging::{self, NAMESPACE, Output},
    scenario,
    suite::Ctx,
    wait,
};
use serde_json::Value;
use tokio::sync::OnceCell;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "install",
        || ControlPlane::builder().nodes(SimNode::default_fleet()),
        &[
            scenario!(config_default_and_the_chart_pass_server_side_dry_run),
            scenario!(the_e2e_overlay_installs_and_its_pods_are_admitted),
            scenario!(rbac_gives_each_service_account_its_rules_and_nothing_more),
        ],
    )
}

const URL: &str = "https://127.0.0.1:9443/validate/";

/// The isolated workload pods' namespace (config/workloads).
const WORKLOADS: &str = lotabots_crds::workload::DEFAULT_NAMESPACE;

const RUNTIME_CLASS: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: nvidia
handler: nvidia
"#;

/// Fails if kubectl printed a Pod Security warning (the namespace warns at `restricted`).
fn no_pod_security_warning(out: &Output) -> Result<()> {
    ensure!(
        !out.stderr.contains("PodSecurity"),
        "{}: Pod Security warnings:\n{}",
        out.shown,
        out.stderr
    );
    Ok(())
}

/// The e2e overlay, applied for real once per binary.
async fn installed(ctx: &Ctx) -> Result<()> {
    static ONCE: OnceCell<Result<(), String>> = OnceCell::const_new();
    ONCE.get_or_init(|| async { install(ctx).await.map_err(|e| format!("{e:#}")) })
        .await
        .clone()
        .map_err(|e| anyhow::anyhow!("installing e2e/overlays/install: {e}"))
}

async fn install(ctx: &Ctx) -> Result<()> {
    packaging::kubectl(ctx.plane(), &["apply", "-f", "-"], Some(RUNTIME_CLASS))
        .await?
        .ok()?;
    let overlay = packaging::e2e_overlay().display().to_string();
    let out = packaging::kubectl(ctx.plane(), &["apply", "-k", &overlay], None).await?;
    no_pod_security_warning(&out)?;
    out.ok()?;
    Ok(())
}

// --- scenarios -------------------------------------------------------------------------

/// The production configuration (Service-based webhook) and the chart pass the API
/// server's validation and admission (server-side dry run), with no Pod Security warning.
async fn config_default_and_the_chart_pass_server_side_dry_run(ctx: Ctx) -> Result<()> {
    // A server dry run cannot create the namespace the other objects go into, so this
    // runs against the installed overlay: every object is validated as an update.
    installed(&ctx).await?;
    let rendered = packaging::kustomize(&packaging::config_default())?;
    let chart = packaging::helm_template(&[])?.ok()?;
    let default_dir = packaging::config_default().display().to_string();
    for (what, args, input, count) in [
        (
            "config/default",
            vec!["apply", "--dry-run=server", "-k", default_dir.as_str()],
            None,
            packaging::documents(&rendered)?.len(),
        ),
        (
            "helm template",
            vec!["apply", "--dry-run=server", "-f", "-"],
            Some(chart.as_str()),
            packaging::documents(&chart)?.len(),
        ),
    ] {
        let out = packaging::kubectl(ctx.plane(), &args, input).await?;
        no_pod_security_warning(&out)?;
        let stdout = out.clone().ok().with_context(|| what.to_string())?;
        let lines = stdout
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        ensure!(
            lines == count,
            "{what}: {count} objects, {lines} server dry-run results:\n{stdout}"
        );
    }
    // The production webhook configuration is the Service-based one.
    let prod = packaging::documents(&rendered)?;
    let vwc = prod
        .iter()
        .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
        .context("config/default has no ValidatingWebhookConfiguration")?;
    for w in vwc["webhooks"].as_array().into_iter().flatten() {
        ensure!(
            w["clientConfig"]["service"]["name"] == "lotabots-webhook"
                && w["clientConfig"]["service"]["namespace"] == NAMESPACE,
            "{}: not registered through the Service: {}",
            w["name"],
            w["clientConfig"]
        );
    }
    Ok(())
}

/// The overlay is installed: every object exists, the webhooks point at 127.0.0.1, the
/// namespace enforces `restricted`, and the controllers' pods were admitted under it.
async fn the_e2e_overlay_installs_and_its_pods_are_admitted(ctx: Ctx) -> Result<()> {
    installed(&ctx).await?;
    let rendered = packaging::kustomize(&packaging::e2e_overlay())?;
    let expected: BTreeSet<String> = packaging::documents(&rendered)?
        .iter()
        .map(packaging::key)
        .collect();
    ensure!(expected.len() >= 20, "the overlay renders {expected:?}");
    let got = packaging::kubectl(
        ctx.plane(),
        &["get", "-f", "-", "-o", "json"],
        Some(&rendered),
    )
    .await?
    .ok()?;
    let got: Value = serde_json::from_str(&got)?;
    let existing: BTreeSet<String> = got["items"]
        .as_array()
        .context("kubectl get -o json without items")?
        .iter()
        .map(packaging::key)
        .collect();
    ensure!(
        existing == expected,
        "missing: {:?}, unexpected: {:?}",
        expected.difference(&existing).collect::<Vec<_>>(),
        existing.difference(&expected).collect::<Vec<_>>()
    );

    // Webhooks by 127.0.0.1 URL, everything else as in config/default.
    let vwc: Value = serde_json::from_str(
        &ctx.plane()
            .kubectl_out(&[
                "get",
                "validatingwebhookconfiguration",
                "lotabots-webhook",
                "-o",
                "json",
            ])
            .await?,
    )?;
    let webhooks = vwc["webhooks"].as_array().context("no webhooks")?;
    ensure!(webhooks.len() == 4, "{} webhooks", webhooks.len());
    for w in webhooks {
        let url = w["clientConfig"]["url"].as_str().unwrap_or_default();
        ensure!(
            url.starts_with(URL) && w["clientConfig"]["service"].is_null(),
            "{}: clientConfig {}",
            w["name"],
            w["clientConfig"]
        );
    }

    let ns: Value = serde_json::from_str(
        &ctx.plane()
            .kubectl_out(&["get", "namespace", NAMESPACE, "-o", "json"])
            .await?,
    )?;
    ensure!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted",
        "{NAMESPACE} labels: {}",
        ns["metadata"]["labels"]
    );

    // The controllers' pods, admitted by Pod Security `restricted` (enforced), and, for
    // the agent, exactly one per GPU node.
    let gpu_nodes: BTreeSet<String> = ctx
        .plane()
        .nodes()
        .iter()
        .filter(|n| !n.gpu_resources().is_empty())
        .map(|n| n.name.clone())
        .collect();
    ensure!(
        gpu_nodes.len() == 3,
        "GPU nodes of the fleet: {gpu_nodes:?}"
    );
    let pods = wait::until("the lotabots pods", Duration::from_secs(90), || async {
        let out = ctx
            .plane()
            .kubectl_out(&["get", "pods", "-n", NAMESPACE, "-o", "json"])
            .await?;
        let list: Value = serde_json::from_str(&out)?;
        let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in list["items"].as_array().into_iter().flatten() {
            let app = p["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let node = p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            by_app.entry(app).or_default().push(node);
        }
        let count = |a: &str| by_app.get(a).map_or(0, Vec::len);
        let scheduled = by_app.values().flatten().all(|n| !n.is_empty());
        if count("lotabots-operator") == 2
            && count("lotabots-webhook") == 2
            && count("lotabots-agent") == gpu_nodes.len()
            && scheduled
        {
            Ok(Some(by_app))
        } else {
            bail!("pods by app and node so far: {by_app:?}")
        }
    })
    .await?;
    let agent_nodes: BTreeSet<String> = pods["lotabots-agent"].iter().cloned().collect();
    ensure!(
        agent_nodes == gpu_nodes,
        "agents on {agent_nodes:?}, GPU nodes {gpu_nodes:?}"
    );
    let ds: Value = serde_json::from_str(
        &ctx.plane()
            .kubectl_out(&[
                "get",
                "daemonset",
                "lotabots-agent",
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ])
            .await?,
    )?;
    ensure!(
        ds["status"]["desiredNumberScheduled"] == 3,
        "DaemonSet status: {}",
        ds["status"]
    );
    let events = ctx
        .plane()
        .kubectl_out(&[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector=reason=FailedCreate",
            "-o",
            "name",
        ])
        .await?;
    ensure!(events.trim().is_empty(), "FailedCreate events: {events}");

    // The registration is live: outside the excluded namespaces a pod must pass the
    // webhook (failurePolicy Fail), and nothing answers at the 127.0.0.1 URL.
    let ns = ctx.namespace().await?;
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"probe","namespace":"{ns}"}},
        "spec":{{"containers":[{{"name":"c","image":"registry.invalid/none:1"}}]}}}}"#
    );
    let out = packaging::kubectl(ctx.plane(), &["create", "-f", "-"], Some(&pod)).await?;
    ensure!(
        !out.success
            && out
                .stderr
                .contains(r#"failed calling webhook "pods.webhook.lotabots.io""#),
        "a pod in {ns} was not sent to the webhook: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// One line of `kubectl auth can-i --list`: resource (or non-resource URL), resource
/// names, verbs (sorted).
type Permission = (String, String, Vec<String>);

/// What `sa` (of lotabots-system) may do in `namespace` (and cluster-wide).
async fn permissions(ctx: &Ctx, sa: &str, namespace: &str) -> Result<BTreeSet<Permission>> {
    let user = format!("--as=system:serviceaccount:{NAMESPACE}:{sa}");
    let out = ctx
        .plane()
        .kubectl_out(&["auth", "can-i", "--list", "-n", namespace, &user])
        .await?;
    let mut perms = BTreeSet::new();
    for line in out.lines().skip(1) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        // `[get list watch]` is several tokens: the verbs start at the last '['.
        let from = tokens.iter().rposition(|t| t.starts_with('[')).unwrap_or(0);
        let mut verbs: Vec<String> = tokens[from..]
            .iter()
            .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        verbs.sort();
        let resource = if line.starts_with(char::is_whitespace) {
            format!("url:{}", tokens[0])
        } else {
            tokens[0].to_owned()
        };
        // Resource names are a bracketed, space-separated list like the verbs.
        let names = if line.starts_with(char::is_whitespace) {
            String::new()
        } else {
            tokens.get(2..from).map(|t| t.join(" ")).unwrap_or_default()
        };
        perms.insert((resource, names, verbs));
    }
    Ok(perms)
}

/// What `sa` may do in `namespace` beyond an unbound ServiceAccount (`baseline`, listed
/// for the same namespace).
async fn granted(
    ctx: &Ctx,
    sa: &str,
    namespace: &str,
    baseline: &BTreeSet<Permission>,
) -> Result<BTreeSet<Permission>> {
    Ok(permissions(ctx, sa, namespace)
        .await?
        .difference(baseline)
        .cloned()
        .collect())
}

fn perm(resource: &str, verbs: &[&str]) -> Permission {
    perm_named(resource, "[]", verbs)
}

/// A permission on the named objects only (`names` as kubectl prints them: `[a b]`).
fn perm_named(resource: &str, names: &str, verbs: &[&str]) -> Permission {
    let mut v: Vec<String> = verbs.iter().map(|s| s.to_string()).collect();
    v.sort();
    (resource.into(), names.into(), v)
}

/// `kubectl auth can-i VERB RESOURCE ARGS` as `sa`: true for yes. `sa` is a
/// ServiceAccount of lotabots-system, or `namespace:name` of another one.
async fn can(ctx: &Ctx, sa: &str, verb: &str, resource: &str, args: &[&str]) -> Result<bool> {
    let user = if sa.contains(':') {
        format!("--as=system:serviceaccount:{sa}")
    } else {
        format!("--as=system:serviceaccount:{NAMESPACE}:{sa}")
    };
    let mut all = vec!["auth", "can-i", verb, resource, user.as_str()];
    all.extend_from_slice(args);
    let out = packaging::kubectl(ctx.plane(), &all, None).await?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("{}: {other:?} {}", out.shown, out.stderr),
    }
}

async fn rbac_gives_each_service_account_its_rules_and_nothing_more(ctx: Ctx) -> Result<()> {
    installed(&ctx).await?;
    let baseline = permissions(&ctx, "lotabots-e2e-unbound", NAMESPACE).await?;
    ensure!(!baseline.is_empty(), "no baseline permissions listed");

    let agent = granted(&ctx, "lotabots-agent", NAMESPACE, &baseline).await?;
    let want: BTreeSet<Permission> = [
        perm("gpuattestations.lotabots.io", &["get", "list", "watch"]),
        // The behaviour requests for its node (status.behaviour), and whether the
        // ModelAttestation behind a probe pod still exists (the pod cannot carry an owner
        // reference across namespaces; config/rbac/agent_role.yaml).
        perm("modelattestations.lotabots.io", &["get", "list", "watch"]),
        perm("nodes", &["get"]),
    ]
    .into();
    ensure!(
        agent == want,
        "the agent's permissions: {agent:?}, want {want:?}"
    );

    let webhook = granted(&ctx, "lotabots-webhook", NAMESPACE, &baseline).await?;
    ensure!(
        webhook.is_empty(),
        "the webhook may do more than an unbound ServiceAccount: {webhook:?}"
    );

    let operator = granted(&ctx, "lotabots-operator", NAMESPACE, &baseline).await?;
    // Its ClusterRole, which every namespace's listing shows.
    let cluster_wide: BTreeSet<Permission> = [
        perm(
            "gpuattestations.lotabots.io",
            &["get", "list", "watch", "patch"],
        ),
        // The client API creates ModelAttestations on callers' behalf.
        perm(
            "modelattestations.lotabots.io",
            &["create", "get", "list", "watch", "patch"],
        ),
        perm("gpuattestations.lotabots.io/status", &["patch"]),
        perm("modelattestations.lotabots.io/status", &["patch"]),
        perm("nodes", &["get", "list", "watch", "patch"]),
        perm("events.events.k8s.io", &["create", "patch"]),
        perm("tokenreviews.authentication.k8s.io", &["create"]),
        perm_named(
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "[lotabots-webhook]",
            &["get", "update"],
        ),
    ]
    .into();
    let want: BTreeSet<Permission> = cluster_wide
        .iter()
        .cloned()
        .chain([
            perm("leases.coordination.k8s.io", &["get", "create", "update"]),
            // The certificates it issues (README, "Certificates").
            // (kubectl lists a rule's resource names one per line)
            perm_named("secrets", "[lotabots-ca]", &["get", "patch"]),
            perm_named("secrets", "[lotabots-operator-tls]", &["get", "patch"]),
            perm_named("secrets", "[lotabots-webhook-tls]", &["get", "patch"]),
            // The evidence store's key-encryption keys (read only) and the attestation
            // token signing keys (its own).
            perm_named("secrets", "[lotabots-bundle-keys]", &["get"]),
            perm_named("secrets", "[lotabots-token-signing]", &["get", "patch"]),
            // The challenge key the replicas share (created once, then only read).
            perm_named("secrets", "[lotabots-challenge-key]", &["get"]),
            perm_named("configmaps", "[lotabots-operator-ca]", &["get", "patch"]),
            perm("secrets", &["create"]),
            // Public keys of ModelAttestations (any namespace) and the CA ConfigMap it creates.
            perm("configmaps", &["create", "get"]),
        ])
        .collect();
    ensure!(
        operator == want,
        "the operator's permissions (in {NAMESPACE}): {operator:?}, want {want:?}"
    );
    // In the workload namespace (config/workloads/operator_role.yaml): read a pod that
    // posts a result, and publish its CA for the pods there; nothing else.
    let baseline_workloads = permissions(&ctx, "lotabots-e2e-unbound", WORKLOADS).await?;
    let operator_workloads =
        granted(&ctx, "lotabots-operator", WORKLOADS, &baseline_workloads).await?;
    let want: BTreeSet<Permission> = cluster_wide
        .iter()
        .cloned()
        .chain([
            perm("pods", &["get"]),
            perm_named("configmaps", "[lotabots-operator-ca]", &["get", "patch"]),
            // `create` for that ConfigMap; `get` of any from the ClusterRole.
            perm("configmaps", &["create", "get"]),
        ])
        .collect();
    ensure!(
        operator_workloads == want,
        "the operator's permissions (in {WORKLOADS}): {operator_workloads:?}, want {want:?}"
    );

    let all = ["--all-namespaces"];
    let here = ["-n", NAMESPACE];
    let workloads = ["-n", WORKLOADS];
    let workloads_exec = ["-n", "lotabots-workloads", "--subresource=exec"];
    let workloads_log = ["-n", "lotabots-workloads", "--subresource=log"];
    let status = ["--subresource=status"];
    // (ServiceAccount, verb, resource, args, allowed)
    let checks: &[(&str, &str, &str, &[&str], bool)] = &[
        // The agent: reads policies and (its) node, nothing else.
        (
            "lotabots-agent",
            "watch",
            "gpuattestations.lotabots.io",
            &[],
            true,
        ),
        ("lotabots-agent", "get", "nodes", &[], true),
        ("lotabots-agent", "get", "secrets", &here, false),
        ("lotabots-agent", "list", "secrets", &all, false),
        (
            "lotabots-agent",
            "create",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-agent",
            "update",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-agent",
            "patch",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-agent",
            "delete",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-agent",
            "patch",
            "gpuattestations.lotabots.io",
            &status,
            false,
        ),
        ("lotabots-agent", "patch", "nodes", &[], false),
        ("lotabots-agent", "update", "nodes", &[], false),
        ("lotabots-agent", "list", "nodes", &[], false),
        (
            "lotabots-agent",
            "list",
            "modelattestations.lotabots.io",
            &all,
            true,
        ),
        (
            "lotabots-agent",
            "update",
            "modelattestations.lotabots.io",
            &all,
            false,
        ),
        ("lotabots-agent", "get", "configmaps", &here, false),
        // Its workload pods: create, watch and delete them in the workload namespace only
        // (config/workloads/agent_role.yaml); nothing else there, no pods elsewhere.
        ("lotabots-agent", "create", "pods", &workloads, true),
        ("lotabots-agent", "delete", "pods", &workloads, true),
        ("lotabots-agent", "watch", "pods", &workloads, true),
        ("lotabots-agent", "update", "pods", &workloads, false),
        ("lotabots-agent", "patch", "pods", &workloads, false),
        ("lotabots-agent", "create", "pods", &workloads_exec, false),
        ("lotabots-agent", "get", "pods", &workloads_log, false),
        (
            "lotabots-agent",
            "create",
            "deployments.apps",
            &workloads,
            false,
        ),
        ("lotabots-agent", "create", "jobs.batch", &workloads, false),
        ("lotabots-agent", "get", "secrets", &workloads, false),
        ("lotabots-agent", "create", "pods", &here, false),
        (
            "lotabots-agent",
            "create",
            "pods",
            &["-n", "default"],
            false,
        ),
        // The workload pods' own ServiceAccount: nothing at all.
        (
            "lotabots-workloads:lotabots-workload",
            "get",
            "pods",
            &workloads,
            false,
        ),
        (
            "lotabots-workloads:lotabots-workload",
            "create",
            "pods",
            &workloads,
            false,
        ),
        (
            "lotabots-workloads:lotabots-workload",
            "get",
            "configmaps",
            &workloads,
            false,
        ),
        (
            "lotabots-workloads:lotabots-workload",
            "get",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        ("lotabots-agent", "list", "pods", &all, false),
        (
            "lotabots-agent",
            "create",
            "tokenreviews.authentication.k8s.io",
            &[],
            false,
        ),
        (
            "lotabots-agent",
            "create",
            "serviceaccounts/token",
            &here,
            false,
        ),
        (
            "lotabots-agent",
            "create",
            "events.events.k8s.io",
            &here,
            false,
        ),
        // The webhook: nothing at all.
        ("lotabots-webhook", "get", "secrets", &here, false),
        ("lotabots-webhook", "get", "configmaps", &here, false),
        ("lotabots-webhook", "list", "pods", &all, false),
        ("lotabots-webhook", "get", "nodes", &[], false),
        ("lotabots-webhook", "get", "namespaces", &[], false),
        (
            "lotabots-webhook",
            "get",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        // The operator: what it needs...
        (
            "lotabots-operator",
            "list",
            "gpuattestations.lotabots.io",
            &[],
            true,
        ),
        (
            "lotabots-operator",
            "patch",
            "gpuattestations.lotabots.io",
            &status,
            true,
        ),
        (
            "lotabots-operator",
            "patch",
            "gpuattestations.lotabots.io",
            &[],
            true,
        ),
        ("lotabots-operator", "watch", "nodes", &[], true),
        ("lotabots-operator", "patch", "nodes", &[], true),
        (
            "lotabots-operator",
            "create",
            "tokenreviews.authentication.k8s.io",
            &[],
            true,
        ),
        (
            "lotabots-operator",
            "create",
            "events.events.k8s.io",
            &["-n", "default"],
            true,
        ),
        (
            "lotabots-operator",
            "patch",
            "events.events.k8s.io",
            &["-n", "default"],
            true,
        ),
        (
            "lotabots-operator",
            "get",
            "leases.coordination.k8s.io",
            &here,
            true,
        ),
        (
            "lotabots-operator",
            "create",
            "leases.coordination.k8s.io",
            &here,
            true,
        ),
        (
            "lotabots-operator",
            "update",
            "leases.coordination.k8s.io",
            &here,
            true,
        ),
        // ...and no more.
        (
            "lotabots-operator",
            "create",
            "leases.coordination.k8s.io",
            &["-n", "default"],
            false,
        ),
        (
            "lotabots-operator",
            "delete",
            "leases.coordination.k8s.io",
            &here,
            false,
        ),
        ("lotabots-operator", "get", "secrets", &here, false),
        (
            "lotabots-operator",
            "get",
            "secrets/lotabots-ca",
            &here,
            true,
        ),
        (
            "lotabots-operator",
            "get",
            "secrets/some-app-password",
            &here,
            false,
        ),
        (
            "lotabots-operator",
            "patch",
            "secrets/lotabots-bundle-keys",
            &here,
            false,
        ),
        (
            "lotabots-operator",
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/lotabots-webhook",
            &[],
            true,
        ),
        (
            "lotabots-operator",
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses",
            &[],
            false,
        ),
        ("lotabots-operator", "list", "secrets", &all, false),
        (
            "lotabots-operator",
            "create",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-operator",
            "update",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        (
            "lotabots-operator",
            "delete",
            "gpuattestations.lotabots.io",
            &[],
            false,
        ),
        ("lotabots-operator", "update", "nodes", &[], false),
        ("lotabots-operator", "delete", "nodes", &[], false),
        (
            "lotabots-operator",
            "patch",
            "nodes",
            &["--subresource=status"],
            false,
        ),
        ("lotabots-operator", "list", "pods", &all, false),
        ("lotabots-operator", "create", "pods", &here, false),
        ("lotabots-operator", "get", "pods", &here, false),
        // In the workload namespace: get a pod, publish its CA; no more.
        ("lotabots-operator", "get", "pods", &workloads, true),
        ("lotabots-operator", "list", "pods", &workloads, false),
        ("lotabots-operator", "watch", "pods", &workloads, false),
        ("lotabots-operator", "create", "pods", &workloads, false),
        ("lotabots-operator", "patch", "pods", &workloads, false),
        ("lotabots-operator", "delete", "pods", &workloads, false),
        ("lotabots-operator", "get", "pods", &workloads_log, false),
        (
            "lotabots-operator",
            "create",
            "pods",
            &workloads_exec,
            false,
        ),
        (
            "lotabots-operator",
            "patch",
            "configmaps/lotabots-operator-ca",
            &workloads,
            true,
        ),
        (
            "lotabots-operator",
            "create",
            "configmaps",
            &workloads,
            true,
        ),
        (
            "lotabots-operator",
            "patch",
            "configmaps/someone-elses",
            &workloads,
            false,
        ),
        (
            "lotabots-operator",
            "delete",
            "configmaps",
            &workloads,
            false,
        ),
        ("lotabots-operator", "get", "secrets", &workloads, false),
        // ConfigMaps it may read (public keys of ModelAttestations), never list.
        ("lotabots-operator", "get", "configmaps", &here, true),
        ("lotabots-operator", "list", "configmaps", &all, false),
        (
            "lotabots-operator",
            "create",
            "serviceaccounts/token",
            &here,
            false,
        ),
        (
            "lotabots-operator",
            "create",
            "events",
            &["-n", "default"],
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (sa, verb, resource, args, allowed) in checks {
        if can(&ctx, sa, verb, resource, args).await? != *allowed {
            wrong.push(format!(
                "{sa} {} {verb} {resource} {}",
                if *allowed { "cannot" } else { "can" },
                args.join(" ")
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "RBAC is not as intended:\n{}",
        wrong.join("\n")
    );
    Ok(())
}
