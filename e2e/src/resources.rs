//! The project's manifests, applied for real: the generated CRDs (`config/crd/bases`)
//! and the samples (`config/samples`, in the order its kustomization lists them), by
//! server-side apply under one field manager, as `kubectl apply --server-side` would.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{self, Scope},
};
use serde::Deserialize;
use serde_json::Value;

use crate::{repo_root, wait};

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "lotabots-e2e";

/// Where the generated CRD manifests are.
pub fn crd_dir() -> PathBuf {
    repo_root().join("config/crd/bases")
}

/// Where the samples are.
pub fn samples_dir() -> PathBuf {
    repo_root().join("config/samples")
}

/// Every YAML document of a file, as JSON values (empty documents skipped).
pub fn read_yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).with_context(|| format!("parsing {}", path.display())))
        .filter(|v| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// The CRDs in `config/crd/bases`, sorted by file name.
pub fn crds() -> Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crd_dir())
        .with_context(|| format!("listing {}", crd_dir().display()))?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for doc in read_yaml_docs(&f)? {
            out.push(serde_json::from_value(doc).with_context(|| format!("{}", f.display()))?);
        }
    }
    Ok(out)
}

/// Applies every CRD; returns their names.
pub async fn apply_crds(client: &kube::Client) -> Result<Vec<String>> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in crds()? {
        let name = crd.name_any();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// Whether a CRD's condition `type_` is `True`.
pub fn crd_condition(crd: &CustomResourceDefinition, type_: &str) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Waits until every named CRD is `Established` (its API is served).
pub async fn wait_established(
    client: &kube::Client,
    names: &[String],
    timeout: Duration,
) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    wait::until("the CRDs to be Established", timeout, || {
        let api = api.clone();
        async move {
            for n in names {
                if !crd_condition(&api.get(n).await?, "Established") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
}

/// The sample files, in the order `config/samples/kustomization.yaml` lists them.
pub fn sample_files() -> Result<Vec<PathBuf>> {
    let dir = samples_dir();
    let kustomization = read_yaml_docs(&dir.join("kustomization.yaml"))?;
    let Some(resources) = kustomization
        .first()
        .and_then(|k| k.get("resources"))
        .and_then(Value::as_array)
    else {
        bail!("{}/kustomization.yaml lists no resources", dir.display());
    };
    Ok(resources
        .iter()
        .filter_map(Value::as_str)
        .map(|r| dir.join(r))
        .collect())
}

/// Every sample object, in kustomization order.
pub fn samples() -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in sample_files()? {
        out.extend(read_yaml_docs(&f)?);
    }
    Ok(out)
}

/// Applies one object of any kind the server knows (found by discovery), creating its
/// namespace first if it names one that does not exist. Returns what the server stored.
pub async fn apply(client: &kube::Client, obj: &Value) -> Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(obj.clone())?;
    let types = obj
        .types
        .as_ref()
        .context("object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {}", types.kind))?;
    let name = obj.name_any();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => {
            let ns = obj.namespace().unwrap_or_else(|| "default".into());
            ensure_namespace(client, &ns).await?;
            Api::namespaced_with(client.clone(), &ns, &ar)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {} {name}", types.kind))
}

/// A copy of `obj` with the field at JSON pointer `pointer` set to `value` (objects on
/// the way are created), or removed when `value` is `None`: for deriving bad manifests
/// from good ones.
pub fn with_field(obj: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut out = obj.clone();
    let (parent, key) = pointer
        .rsplit_once('/')
        .expect("a JSON pointer starts with /");
    let mut node = &mut out;
    for seg in parent.split('/').skip(1) {
        node = match node {
            Value::Array(items) => &mut items[seg.parse::<usize>().expect("an array index")],
            _ => {
                if !node.is_object() {
                    *node = Value::Object(Default::default());
                }
                node.as_object_mut()
                    .expect("an object")
                    .entry(seg)
                    .or_insert_with(|| Value::Object(Default::default()))
            }
        };
    }
    match (node, value) {
        (Value::Array(items), Some(v)) => items[key.parse::<usize>().expect("an array index")] = v,
        (Value::Array(items), None) => {
            items.remove(key.parse::<usize>().expect("an array index"));
        }
        (node, Some(v)) => node[key] = v,
        (node, None) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(key);
            }
        }
    }
    out
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))?;
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns))
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_field_sets_creates_and_removes() {
        let v = serde_json::json!({"spec": {"a": [1, 2], "b": true}});
        assert_eq!(
            with_field(&v, "/spec/a/1", Some(5.into())),
            serde_json::json!({"spec": {"a": [1, 5], "b": true}})
        );
        assert_eq!(
            with_field(&v, "/spec/b", None),
            serde_json::json!({"spec": {"a": [1, 2]}})
        );
        assert_eq!(
            with_field(&v, "/spec/c/d", Some("x".into()))["spec"]["c"]["d"],
            "x"
        );
    }

    #[test]
    fn reads_both_crds_and_every_sample() {
        let names: Vec<String> = crds().unwrap().iter().map(|c| c.name_any()).collect();
        assert_eq!(
            names,
            [
                "gpuattestations.lotabots.io",
                "modelattestations.lotabots.io"
            ]
        );
        let kinds: Vec<String> = samples()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_string())
            .collect();
        assert!(kinds.iter().any(|k| k == "GpuAttestation"));
        assert!(kinds.iter().any(|k| k == "ModelAttestation"));
    }
}
