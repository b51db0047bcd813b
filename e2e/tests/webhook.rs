//! The admission webhook behind a real kube-apiserver: the production webhook
//! configuration of `config/webhook/`, registered by 127.0.0.1 URL, with the default
//! policy. The API server itself refuses the pods that break the policy, lets the
//! compliant ones and the exempt namespace through, warns on workload templates, and
//! refuses lotabots resources that the schema's CEL cannot judge.
//!
//! The production binary as a process (`lotabots-webhook serve`): the ReplicaSet of a bad
//! Deployment gets `FailedCreate` Events carrying the webhook's refusal; replacing the
//! certificate files changes what it serves without a restart; stopped, it blocks pod
//! creation in user namespaces only (kube-system and lotabots-system still admit), and
//! started again it admits with the configuration untouched. Each scenario registers its
//! own configuration, scoped to its namespace, since they share one API server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{EnvVar, Event as CoreEvent, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_e2e::agents::service_account;
use lotabots_e2e::stack::{Webhook, until_webhook_refuses_a_runtime_socket, webhook_configuration};
use lotabots_e2e::webhook_process::{WebhookPki, WebhookProcess};
use lotabots_e2e::{ControlPlane, pods, resources, scenario, suite::Ctx, wait};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "webhook",
        || {
            ControlPlane::builder()
                .with_crds()
                .without_kwok()
                .without_scheduler()
        },
        &[
            scenario!(the_api_server_enforces_the_mount_policy_through_the_webhook),
            scenario!(a_bad_template_is_warned_and_the_pods_of_its_replica_set_are_refused),
            scenario!(admission_keeps_working_when_the_certificate_files_are_replaced),
            scenario!(a_stopped_webhook_blocks_only_user_namespaces_and_a_restart_recovers),
        ],
    )
}

/// The ServiceAccount the test pods run as.
const SA: &str = "workload";

/// A pod of the scenario's ServiceAccount mounting `host_path`.
fn pod_with_host_path(name: &str, host_path: &str) -> Pod {
    pods::with_host_path(name, SA, host_path)
}

/// The API server's refusal of `pod`, or an error if it was admitted.
async fn refusal(api: &Api<Pod>, pod: &Pod) -> Result<String> {
    match api.create(&PostParams::default(), pod).await {
        Err(kube::Error::Api(s)) => Ok(format!("{} {}", s.code, s.message)),
        Err(e) => Err(e.into()),
        Ok(p) => bail!("pod {:?} was admitted", p.metadata.name),
    }
}

async fn the_api_server_enforces_the_mount_policy_through_the_webhook(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let webhook = Webhook::start().await?;
    let ns = ctx.namespace().await?;
    // Scoped to this scenario's namespace (and the exempt ones), as the others are: they
    // share the API server, and stop their webhooks.
    let config_name = ctx.name("webhook");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &webhook_configuration(
                &webhook.url,
                &webhook.ca_pem,
                Some((
                    &config_name,
                    &[ns.as_str(), "kube-system", "lotabots-system"],
                )),
            )?,
        )
        .await?;
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    service_account(&client, &ns, SA).await?;

    // The webhook configuration takes a moment to reach the API server's admission chain.
    let why = until_webhook_refuses_a_runtime_socket(&api, SA).await?;
    ensure!(why.starts_with("403"), "not a 403: {why}");
    ensure!(
        why.contains("[protectedPaths]")
            && why.contains("volume \"host\"")
            && why.contains("spec.volumes[0].hostPath.path")
            && why.contains("mounted by container \"main\""),
        "the refusal does not name rule, volume, field and container: {why}"
    );

    // Whole path segments: /var/run/containerd-extra is not the protected directory, but
    // /etc is protected at any depth.
    let etc = refusal(&api, &pod_with_host_path("etc", "/etc/kubernetes")).await?;
    ensure!(etc.contains("denied"), "{etc}");

    // GPU isolation: a container that requests no GPU may not ask the runtime for all.
    let mut sneaky = pods::pod("sneaky", SA, &[], None);
    sneaky.spec.as_mut().context("spec")?.containers[0].env = Some(vec![EnvVar {
        name: "NVIDIA_VISIBLE_DEVICES".into(),
        value: Some("all".into()),
        ..Default::default()
    }]);
    let gpu = refusal(&api, &sneaky).await?;
    ensure!(gpu.contains("NVIDIA_VISIBLE_DEVICES"), "{gpu}");

    // A compliant pod is admitted.
    api.create(&PostParams::default(), &pods::pod("plain", SA, &[], None))
        .await
        .context("a compliant pod")?;

    // Workload templates: admitted with a warning (their pods are refused when created).
    let warning = apply_socket_deployment(&ctx, &ns).await?;
    ensure!(
        warning.contains("host"),
        "no warning for the Deployment: {warning}"
    );

    // The webhook's own namespace is never sent to it (so it can always start).
    resources::ensure_namespace(&client, "lotabots-system").await?;
    service_account(&client, "lotabots-system", SA).await?;
    Api::<Pod>::namespaced(client.clone(), "lotabots-system")
        .create(
            &PostParams::default(),
            &pod_with_host_path("exempt", "/var/run/containerd/containerd.sock"),
        )
        .await
        .context("a pod in the exempt namespace")?;

    // lotabots resources: an unknown MIG profile name passes the schema but not the webhook.
    let path = lotabots_e2e::repo_root()
        .join("config/samples/lotabots_v1alpha1_gpuattestation_a100_mig.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    att.metadata.name = Some(ctx.name("unknown-profile"));
    let profiles = &mut att
        .spec
        .policy
        .mig
        .as_mut()
        .context("the A100 sample has a MIG policy")?
        .profiles;
    profiles[0].profile = "5g.41gb".into();
    match Api::<GpuAttestation>::all(client.clone())
        .create(&PostParams::default(), &att)
        .await
    {
        Err(kube::Error::Api(s)) => ensure!(
            s.message.contains("resources.webhook.lotabots.io")
                && s.message.contains("spec.policy.mig.profiles[0].profile"),
            "refused, but not naming the field through the webhook: {}",
            s.message
        ),
        other => bail!("a GpuAttestation with an unknown MIG profile was not refused: {other:?}"),
    }
    eprintln!("webhook: refused by the API server: {why}");
    delete_configuration(&ctx, &config_name).await
}

/// `kubectl apply` of a Deployment whose template mounts the container runtime's
/// directory: it must be admitted, with a warning; returns kubectl's stderr.
async fn apply_socket_deployment(ctx: &Ctx, ns: &str) -> Result<String> {
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: socket-mounter, namespace: {ns}}}\n\
         spec:\n  selector: {{matchLabels: {{app: s}}}}\n  template:\n    metadata: {{labels: {{app: s}}}}\n    \
         spec:\n      serviceAccountName: {SA}\n      \
         containers: [{{name: main, image: {img}, volumeMounts: [{{name: host, mountPath: /host}}]}}]\n      \
         volumes: [{{name: host, hostPath: {{path: /run/containerd}}}}]\n",
        img = pods::IMAGE
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), deployment)?;
    let out = ctx
        .plane()
        .kubectl()
        .args(["apply", "-f"])
        .arg(file.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "the Deployment was refused: {stderr}");
    ensure!(
        stderr.contains("Warning:"),
        "no warning for the Deployment: {stderr}"
    );
    Ok(stderr)
}

/// `lotabots-webhook serve` as a process, registered for `ns` only (scenarios share the
/// API server) under a configuration named after the scenario; returns the process, its
/// CA and the configuration's name.
async fn webhook_for(ctx: &Ctx, ns: &str) -> Result<(WebhookProcess, WebhookPki, String)> {
    let pki = WebhookPki::new()?;
    let dir = ctx.plane().run_dir().join(ctx.name("webhook"));
    let webhook = WebhookProcess::start(&dir, &pki.issue()?).await?;
    let name = ctx.name("webhook");
    let config = webhook_configuration(
        &webhook.url(),
        pki.ca_pem(),
        Some((&name, &[ns, "kube-system", "lotabots-system"])),
    )?;
    Api::<ValidatingWebhookConfiguration>::all(ctx.client())
        .create(&PostParams::default(), &config)
        .await
        .context("registering the webhook configuration")?;
    Ok((webhook, pki, name))
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

async fn delete_configuration(ctx: &Ctx, name: &str) -> Result<()> {
    Api::<ValidatingWebhookConfiguration>::all(ctx.client())
        .delete(name, &Default::default())
        .await?;
    Ok(())
}

/// A Deployment whose template mounts the runtime socket is admitted (with the webhook's
/// warning); its ReplicaSet then cannot create a single pod, and says so in a
/// `FailedCreate` Event naming the webhook. kube-system is never sent to the webhook.
async fn a_bad_template_is_warned_and_the_pods_of_its_replica_set_are_refused(
    ctx: Ctx,
) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let (_webhook, _pki, config) = webhook_for(&ctx, &ns).await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    service_account(&client, &ns, SA).await?;
    until_webhook_refuses_a_runtime_socket(&pods_api, SA).await?;

    apply_socket_deployment(&ctx, &ns).await?;

    let events = Api::<CoreEvent>::namespaced(client.clone(), &ns);
    let failed = wait::until(
        "a FailedCreate Event from the ReplicaSet controller",
        Duration::from_secs(60),
        || {
            let events = events.clone();
            async move {
                Ok(events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("FailedCreate")
                            && e.involved_object.kind.as_deref() == Some("ReplicaSet")
                    }))
            }
        },
    )
    .await?;
    let message = failed.message.unwrap_or_default();
    ensure!(
        message.contains("pods.webhook.lotabots.io") && message.contains("protectedPaths"),
        "the FailedCreate Event does not carry the webhook's refusal: {message}"
    );
    let created = pods_api.list(&ListParams::default()).await?.items;
    ensure!(created.is_empty(), "pods were created: {}", created.len());

    // kube-system is excluded by the production configuration's own selector.
    let system = Api::<Pod>::namespaced(client.clone(), "kube-system");
    system
        .create(
            &dry_run(),
            &pods::with_host_path(
                "system-socket",
                "default",
                "/run/containerd/containerd.sock",
            ),
        )
        .await
        .context("kube-system was intercepted")?;
    delete_configuration(&ctx, &config).await
}

/// The certificate and key files are replaced (a renewed Secret): the running webhook
/// serves the new certificate within seconds, without a restart, and the API server keeps
/// calling it.
async fn admission_keeps_working_when_the_certificate_files_are_replaced(ctx: Ctx) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let (webhook, pki, config) = webhook_for(&ctx, &ns).await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    service_account(&client, &ns, SA).await?;
    until_webhook_refuses_a_runtime_socket(&pods_api, SA).await?;
    let pid = webhook.pid();
    let before = webhook.served_certificate(pki.ca_pem()).await?;

    webhook.replace_certificate(&pki.issue()?)?;
    let after = wait::until(
        "the webhook to serve the new certificate",
        Duration::from_secs(30),
        || {
            let (webhook, pki, before) = (&webhook, &pki, &before);
            async move {
                let now = webhook.served_certificate(pki.ca_pem()).await?;
                Ok((now != *before).then_some(now))
            }
        },
    )
    .await?;
    ensure!(after != before);
    ensure!(webhook.pid() == pid, "the webhook was restarted");

    // Fresh connections from the API server get the new certificate, and it still trusts it.
    let why = refusal(
        &pods_api,
        &pod_with_host_path("socket-after", "/var/run/docker.sock"),
    )
    .await?;
    ensure!(why.contains("pods.webhook.lotabots.io"), "{why}");
    pods_api
        .create(&dry_run(), &pods::pod("plain-after", SA, &[], None))
        .await
        .context("a compliant pod after the rotation")?;
    delete_configuration(&ctx, &config).await
}

/// With the webhook stopped, pods in the user namespace are refused (failurePolicy Fail:
/// no pod escapes the policy), while kube-system and the project's own namespace still
/// admit pods; starting the webhook again restores admission with the configuration
/// untouched.
async fn a_stopped_webhook_blocks_only_user_namespaces_and_a_restart_recovers(
    ctx: Ctx,
) -> Result<()> {
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    let (mut webhook, _pki, config) = webhook_for(&ctx, &ns).await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    service_account(&client, &ns, SA).await?;
    until_webhook_refuses_a_runtime_socket(&pods_api, SA).await?;
    let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let version = configs.get(&config).await?.metadata.resource_version;

    webhook.stop();
    let plain = pods::pod("plain", SA, &[], None);
    match pods_api.create(&dry_run(), &plain).await {
        Err(kube::Error::Api(s)) => ensure!(
            s.message.contains("failed calling webhook")
                && s.message.contains("pods.webhook.lotabots.io"),
            "refused, but not for the unreachable webhook: {}",
            s.message
        ),
        other => bail!("a pod was admitted with the webhook down: {other:?}"),
    }
    resources::ensure_namespace(&client, "lotabots-system").await?;
    for system_ns in ["kube-system", "lotabots-system"] {
        Api::<Pod>::namespaced(client.clone(), system_ns)
            .create(
                &dry_run(),
                &pods::with_host_path("while-down", "default", "/tmp"),
            )
            .await
            .with_context(|| format!("a pod in {system_ns} with the webhook down"))?;
    }

    webhook.restart().await?;
    wait::until("admission to work again", Duration::from_secs(30), || {
        let (api, plain) = (pods_api.clone(), plain.clone());
        async move { Ok(api.create(&dry_run(), &plain).await.ok().map(|_| ())) }
    })
    .await?;
    until_webhook_refuses_a_runtime_socket(&pods_api, SA).await?;
    ensure!(
        configs.get(&config).await?.metadata.resource_version == version,
        "the webhook configuration was changed"
    );
    delete_configuration(&ctx, &config).await
}
