//! Kubeconfig files for the admin user and each component, pointing at the PKI files
//! (not embedding them, so the files stay readable and `kubectl config view` short).

use std::path::Path;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::pki::CertFiles;

/// Name of the cluster and context in every kubeconfig the harness writes.
pub const CONTEXT: &str = "lotabots-e2e";

/// Writes a kubeconfig for `user` (authenticated by `cert`) at `path`.
pub fn write(path: &Path, server: &str, ca: &Path, user: &str, cert: &CertFiles) -> Result<()> {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": {"server": server, "certificate-authority": ca},
        }],
        "users": [{
            "name": user,
            "user": {"client-certificate": cert.cert, "client-key": cert.key},
        }],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    });
    std::fs::write(path, serde_yaml::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A kube client for a kubeconfig file. Must be called inside the tokio runtime that
/// will drive the client (it spawns its connection task there).
pub async fn client(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
