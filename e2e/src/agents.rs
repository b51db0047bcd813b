//! Node identities for agents: a ServiceAccount, a pod pinned to a node, and a token
//! bound to that pod — what the kubelet projects into a real agent pod.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::pods;

/// The audience agents' tokens are minted for.
pub const AUDIENCE: &str = "lotabots";

/// How long a pod may take to be scheduled and run.
pub const POD_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates ServiceAccount `name` in `ns` (pods must name one that exists).
pub async fn service_account(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .with_context(|| format!("creating ServiceAccount {ns}/{name}"))?;
    Ok(())
}

/// An agent pod `pod_name` of ServiceAccount `sa`, pinned to `node` and Running, and a
/// token for `audience` bound to it (valid for 10 minutes).
pub async fn pod_bound_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod_name: &str,
    node: &str,
    audience: &str,
) -> Result<(Pod, String)> {
    let pods_api = Api::<Pod>::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    pods_api
        .create(&pp, &pods::pod(pod_name, sa, &[], pods::on_node(node)))
        .await?;
    let pod = pods::wait_running(&pods_api, pod_name, POD_TIMEOUT).await?;
    ensure!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node),
        "{pod_name} is not on {node}"
    );
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name.into()),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &pp, &req)
        .await
        .context("TokenRequest")?
        .status
        .context("a TokenRequest without status")?
        .token
        .context("a TokenRequest without token")?;
    Ok((pod, token))
}
