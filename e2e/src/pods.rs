//! Pods for kwok nodes: kwok never runs their containers, it only plays their lifecycle
//! (scheduled -> Running), so the image is never pulled and nothing listens on their
//! (loopback) IPs.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use k8s_openapi::{
    api::core::v1::{
        Container, HostPathVolumeSource, Pod, PodSpec, ResourceRequirements, Toleration, Volume,
        VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::Api;

use crate::wait;

/// The image every simulated pod names (never pulled).
pub const IMAGE: &str = "registry.k8s.io/pause:3.10";

/// A pod running `IMAGE` as `service_account` (no token automounted), requesting
/// `resources` (extended resources such as `nvidia.com/gpu` as limits, which the API
/// server copies to requests), optionally restricted by `node_selector`.
pub fn pod(
    name: &str,
    service_account: &str,
    resources: &[(&str, u32)],
    node_selector: Option<BTreeMap<String, String>>,
) -> Pod {
    let limits: BTreeMap<String, Quantity> = resources
        .iter()
        .map(|(r, n)| (r.to_string(), Quantity(n.to_string())))
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(service_account.into()),
            automount_service_account_token: Some(false),
            node_selector,
            // kwok's own examples taint nothing; tolerate its taint anyway, so a fleet
            // that does taint its nodes keeps working.
            tolerations: Some(vec![Toleration {
                key: Some(crate::nodes::KWOK_ANNOTATION.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: "main".into(),
                image: Some(IMAGE.into()),
                resources: (!limits.is_empty()).then(|| ResourceRequirements {
                    limits: Some(limits),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// [`pod`] mounting the node's `host_path` as volume `host` at `/host` of its container:
/// what the webhook's mount policy judges.
pub fn with_host_path(name: &str, service_account: &str, host_path: &str) -> Pod {
    let mut p = pod(name, service_account, &[], None);
    if let Some(spec) = p.spec.as_mut() {
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
    }
    p
}

/// Selector pinning a pod to one node by its hostname label.
pub fn on_node(node: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        "kubernetes.io/hostname".to_string(),
        node.to_string(),
    )]))
}

/// The pod's phase.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Waits until pod `name` is Running and returns it.
pub async fn wait_running(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    wait::until(
        &format!("pod {name} to be Running"),
        timeout,
        || async move {
            let p = api.get(name).await?;
            Ok((phase(&p) == "Running").then_some(p))
        },
    )
    .await
}
