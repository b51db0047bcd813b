//! `kubectl get`-style tables of what matters in the environment: the nodes with their
//! GPUs, and the attestations with the columns their CRDs print.

use anyhow::Result;
use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use lotabots_crds::{GpuAttestation, ModelAttestation, conditions, labels};

use crate::{nodes, table};

/// Age as kubectl prints it (`42s`, `5m`, `3h`, `2d`).
fn age(created: Option<Timestamp>) -> String {
    let Some(created) = created else {
        return String::new();
    };
    let s = Timestamp::now().duration_since(created).as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn ready(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> String {
    conds
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Nodes: name, status, GPU resources, product, driver.
pub async fn nodes(client: &kube::Client) -> Result<String> {
    let list = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|n| {
            let l = n.labels();
            let label = |k: &str| l.get(k).cloned().unwrap_or_default();
            let gpus = n
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .map(|a| {
                    a.iter()
                        .filter(|(k, _)| k.starts_with("nvidia.com/"))
                        .map(|(k, v)| format!("{}={}", k.trim_start_matches("nvidia.com/"), v.0))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                n.name_any(),
                if nodes::is_ready(n) {
                    "Ready"
                } else {
                    "NotReady"
                }
                .into(),
                gpus,
                label(labels::GPU_PRODUCT),
                label(labels::CUDA_DRIVER_VERSION_FULL),
                age(n.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            ]
        })
        .collect();
    Ok(table::render(
        &["NAME", "STATUS", "GPUS", "PRODUCT", "DRIVER", "AGE"],
        &rows,
    ))
}

/// GpuAttestations with their CRD's printer columns.
pub async fn gpu_attestations(client: &kube::Client) -> Result<String> {
    let list = Api::<GpuAttestation>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|g| {
            let st = g.status.as_ref();
            let num = |f: fn(&lotabots_crds::GpuAttestationStatus) -> u32| {
                st.map(|s| f(s).to_string()).unwrap_or_default()
            };
            vec![
                g.name_any(),
                st.map(|s| ready(&s.conditions)).unwrap_or_default(),
                num(|s| s.matched_nodes),
                num(|s| s.attested_nodes),
                num(|s| s.failed_nodes),
                num(|s| s.unknown_nodes),
                age(g.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            ]
        })
        .collect();
    Ok(table::render(
        &[
            "NAME", "READY", "MATCHED", "ATTESTED", "FAILED", "UNKNOWN", "AGE",
        ],
        &rows,
    ))
}

/// ModelAttestations in every namespace.
pub async fn model_attestations(client: &kube::Client) -> Result<String> {
    let list = Api::<ModelAttestation>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|m| {
            let st = m.status.as_ref();
            vec![
                m.namespace().unwrap_or_default(),
                m.name_any(),
                st.map(|s| ready(&s.conditions)).unwrap_or_default(),
                st.and_then(|s| s.verdict.as_ref())
                    .and_then(|v| serde_json::to_value(v).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                age(m.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            ]
        })
        .collect();
    Ok(table::render(
        &["NAMESPACE", "NAME", "READY", "VERDICT", "AGE"],
        &rows,
    ))
}
