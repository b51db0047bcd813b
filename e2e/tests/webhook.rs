//! The admission webhook behind a real kube-apiserver: the production webhook
//! configuration of `config/webhook/`, registered by 127.0.0.1 URL, with the default
//! policy. The API server itself refuses the pods that break the policy, lets the
//! compliant ones and the exempt namespace through, warns on workload templates, and
//! refuses lotabots resources that the schema's CEL cannot judge.

use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{EnvVar, HostPathVolumeSource, Pod, Volume, VolumeMount};
use kube::Api;
use kube::api::PostParams;
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_e2e::agents::service_account;
use lotabots_e2e::stack::Webhook;
use lotabots_e2e::{ControlPlane, pods, resources, scenario, suite::Ctx};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "webhook",
        || {
            ControlPlane::builder()
                .with_crds()
                .without_kwok()
                .without_scheduler()
        },
        &[scenario!(
            the_api_server_enforces_the_mount_policy_through_the_webhook
        )],
    )
}

/// The ServiceAccount the test pods run as.
const SA: &str = "workload";

/// A pod mounting `host_path` as volume `host` into container `main`.
fn pod_with_host_path(name: &str, host_path: &str) -> Pod {
    let mut pod = pods::pod(name, SA, &[], None);
    let spec = pod.spec.as_mut().expect("pods::pod has a spec");
    spec.volumes = Some(vec![Volume {
        name: "host".into(),
        host_path: Some(HostPathVolumeSource {
            path: host_path.into(),
            type_: None,
        }),
        ..Default::default()
    }]);
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: "host".into(),
        mount_path: "/host".into(),
        ..Default::default()
    }]);
    pod
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
    webhook.register(&client).await?;
    let ns = ctx.namespace().await?;
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    service_account(&client, &ns, SA).await?;

    // The webhook configuration takes a moment to reach the API server's admission chain.
    let socket = pod_with_host_path("runtime-socket", "/var/run/containerd/containerd.sock");
    let why = lotabots_e2e::wait::until(
        "the webhook to refuse a runtime socket",
        std::time::Duration::from_secs(30),
        || {
            let (api, socket) = (api.clone(), socket.clone());
            async move {
                Ok(match api.create(&PostParams::default(), &socket).await {
                    Err(kube::Error::Api(s)) if s.message.contains("pods.webhook.lotabots.io") => {
                        Some(format!("{} {}", s.code, s.message))
                    }
                    Ok(_) => {
                        // Admitted before the configuration took effect: remove and retry.
                        api.delete("runtime-socket", &Default::default()).await?;
                        None
                    }
                    Err(_) => None,
                })
            }
        },
    )
    .await?;
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
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: socket-mounter, namespace: {ns}}}\n\
         spec:\n  selector: {{matchLabels: {{app: s}}}}\n  template:\n    metadata: {{labels: {{app: s}}}}\n    \
         spec:\n      serviceAccountName: workload
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "the Deployment was refused: {stderr}");
    ensure!(
        stderr.contains("Warning:") && stderr.contains("host"),
        "no warning for the Deployment: {stderr}"
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
    Ok(())
}
