//! The node agent as the DaemonSet runs it: `lotabots-agent run` as its own process per
//! simulated node, with the two credentials its pod would have — a kubeconfig holding a
//! ServiceAccount token for the API server (the in-cluster configuration) and a token
//! file for the operator's evidence API (audience `lotabots`) — both bound to an agent
//! pod that kwok runs on its node, so every TokenReview names that node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

use crate::agents::pod_bound_token;
use crate::operator_process::{workspace_binary, write_token_kubeconfig};
use crate::ports;
use crate::process::{DEFAULT_GRACE, Process};

/// How long the operator token stays valid: longer than any scenario. (The API-server
/// token comes from [`pod_bound_token`], valid 10 minutes; a kubelet would refresh both,
/// nothing does here.)
const TOKEN_SECONDS: i64 = 3600;

/// A pod of ServiceAccount `sa` on `node` and the credentials bound to it, in `dir`: a
/// kubeconfig for the API server (`api_audience`: the API server's own, its issuer here)
/// and, when `operator_audience` is given, a token file for that audience.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    /// The pod the tokens are bound to.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Kubeconfig with the API-server token.
    pub kubeconfig: PathBuf,
    /// The token for the operator, if one was asked for.
    pub operator_token: Option<PathBuf>,
}

/// Creates pod `pod` (ServiceAccount `sa`, namespace `ns`) on `node`, waits until kwok
/// runs it, and writes the credentials bound to it into `dir` (see [`PodIdentity`]).
#[allow(clippy::too_many_arguments)]
pub async fn pod_identity(
    client: &kube::Client,
    admin_kubeconfig: &Path,
    ns: &str,
    sa: &str,
    pod: &str,
    node: &str,
    api_audience: &str,
    operator_audience: Option<&str>,
    dir: &Path,
) -> Result<PodIdentity> {
    std::fs::create_dir_all(dir)?;
    let (created, api_token) = pod_bound_token(client, ns, sa, pod, node, api_audience).await?;
    let kubeconfig = dir.join(format!("{pod}.kubeconfig"));
    write_token_kubeconfig(
        &kubeconfig,
        admin_kubeconfig,
        &format!("system:serviceaccount:{ns}:{sa}"),
        &api_token,
    )?;
    let operator_token = match operator_audience {
        None => None,
        Some(audience) => {
            let token = bound_token(client, ns, sa, &created, audience).await?;
            let file = dir.join(format!("{pod}.token"));
            std::fs::write(&file, token).with_context(|| format!("writing {}", file.display()))?;
            Some(file)
        }
    };
    Ok(PodIdentity {
        pod: pod.into(),
        node: node.into(),
        kubeconfig,
        operator_token,
    })
}

/// A further token of `sa` for `audience`, bound to the existing `pod`.
pub async fn bound_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
    audience: &str,
) -> Result<String> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {ns}/{sa}, audience {audience}"))?
        .status
        .context("a TokenRequest without status")?
        .token
        .context("a TokenRequest without token")
}

/// `lotabots-agent run` for one node, with the simulated backend, stopped on drop.
pub struct AgentProcess {
    /// Its node.
    pub node: String,
    /// The simulated profile it reports.
    pub profile: String,
    metrics_port: u16,
    process: Process,
}

impl AgentProcess {
    /// Starts the agent of `identity.node` reporting simulated `profile` (its GPUs'
    /// UUIDs and serials derived from the node name, `NODE_NAME` as the downward API sets
    /// it) to the operator at `operator_url` (trusting `operator_ca`), with no workload
    /// pods; waits until it is ready.
    pub async fn start(
        dir: &Path,
        identity: &PodIdentity,
        profile: &str,
        operator_url: &str,
        operator_ca: &Path,
    ) -> Result<Self> {
        Self::spawn(dir, identity, profile, operator_url, operator_ca, false).await
    }

    /// As [`Self::start`], with the pod launcher on: the agent launches workload pods in
    /// the default workload namespace (kwok runs them as far as `Running`; the test plays
    /// their processes).
    pub async fn start_launching(
        dir: &Path,
        identity: &PodIdentity,
        profile: &str,
        operator_url: &str,
        operator_ca: &Path,
    ) -> Result<Self> {
        Self::spawn(dir, identity, profile, operator_url, operator_ca, true).await
    }

    async fn spawn(
        dir: &Path,
        identity: &PodIdentity,
        profile: &str,
        operator_url: &str,
        operator_ca: &Path,
        launching: bool,
    ) -> Result<Self> {
        let binary = workspace_binary("lotabots-agent", "lotabots-agent")?;
        let token = identity
            .operator_token
            .as_ref()
            .context("the agent's identity has no token for the operator")?;
        let metrics_port = ports::free_ports(1)?[0];
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .arg(format!("--backend=simulated:{profile}"))
            .arg(format!("--listen=127.0.0.1:{metrics_port}"))
            .arg(format!("--operator-url={operator_url}"))
            .arg("--operator-ca")
            .arg(operator_ca)
            .arg("--token-file")
            .arg(token)
            .env("NODE_NAME", &identity.node)
            .env("KUBECONFIG", &identity.kubeconfig)
            .env("LOTABOTS_LOG", "info");
        if !launching {
            cmd.arg("--no-workloads");
        }
        let log = dir.join(format!("agent-{}.log", identity.node));
        let mut me = Self {
            node: identity.node.clone(),
            profile: profile.into(),
            metrics_port,
            process: Process::spawn(&format!("lotabots-agent {}", identity.node), cmd, &log)?,
        };
        me.wait_ready().await?;
        Ok(me)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Fails with the log tail if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
                .await?
                .error_for_status()?
                .text()
                .await?,
        )
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.metrics_port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.process.check_running()?;
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the agent of {} did not serve /healthz within 30 s; log {}",
                self.node,
                self.process.log().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.process.stop(DEFAULT_GRACE);
    }
}
