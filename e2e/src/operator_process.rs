//! The operator as the production binary runs it: `lotabots-operator run` as its own
//! process, with a kubeconfig of its own (a ServiceAccount token, so it has exactly the
//! rights RBAC gives it), its evidence API and probes on 127.0.0.1, so that scenarios can
//! kill it (SIGKILL, as the kernel's OOM killer or a node loss would) and start it again
//! on the same ports, where agents keep finding it.
//!
//! Also here: locating the workspace's binaries next to the test executable, and
//! ServiceAccount kubeconfigs, which the agent processes use too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::config::Kubeconfig;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::kubeconfig::CONTEXT;
use crate::ports;
use crate::process::{DEFAULT_GRACE, Ending, Process, Stopped};

/// How long the operator may take to serve `/readyz` with 200 (leadership included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary `name` of package `package`, next to the running test's `deps/` directory,
/// where `cargo test --workspace` (or `cargo build -p PACKAGE`) puts it.
pub fn workspace_binary(name: &str, package: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary's directory")?
        .join(name);
    ensure!(
        binary.is_file(),
        "{} is not built: run `cargo build -p {package}` (with the same CARGO_TARGET_DIR and \
         profile as the tests), or `cargo test --workspace`, which builds it",
        binary.display()
    );
    Ok(binary)
}

/// Writes a kubeconfig at `path` that reaches the API server of `admin_kubeconfig` (same
/// URL and CA) with the bearer `token`: what a pod's projected ServiceAccount token gives
/// the in-cluster configuration.
pub fn write_token_kubeconfig(
    path: &Path,
    admin_kubeconfig: &Path,
    user: &str,
    token: &str,
) -> Result<()> {
    let admin = Kubeconfig::read_from(admin_kubeconfig)
        .with_context(|| format!("reading {}", admin_kubeconfig.display()))?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("the admin kubeconfig names no cluster")?;
    let server = cluster
        .server
        .as_deref()
        .context("the admin kubeconfig's cluster has no server")?;
    let ca = cluster
        .certificate_authority
        .as_deref()
        .context("the admin kubeconfig's cluster names no CA file")?;
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    });
    std::fs::write(path, serde_yaml::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// What to run: the flags and environment beyond the addresses, which the process picks.
#[derive(Clone, Debug, Default)]
pub struct OperatorSpec {
    /// The kubeconfig the operator uses (`KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// Flags after `run` (everything but `--listen` and `--probe-addr`).
    pub args: Vec<OsString>,
    /// Extra environment (the store's secrets, which never go into arguments).
    pub env: Vec<(String, String)>,
}

/// `lotabots-operator run` on fixed 127.0.0.1 ports (evidence API and probes), stopped
/// on drop.
pub struct OperatorProcess {
    binary: PathBuf,
    dir: PathBuf,
    spec: OperatorSpec,
    port: u16,
    probe_port: u16,
    starts: u32,
    process: Option<Process>,
}

impl OperatorProcess {
    /// Starts it with its log in `dir` (created) and waits until `/readyz` answers 200.
    pub async fn start(dir: &Path, spec: OperatorSpec) -> Result<Self> {
        let binary = workspace_binary("lotabots-operator", "lotabots-operator")?;
        std::fs::create_dir_all(dir)?;
        let p = ports::free_ports(2)?;
        let mut me = Self {
            binary,
            dir: dir.to_path_buf(),
            spec,
            port: p[0],
            probe_port: p[1],
            starts: 0,
            process: None,
        };
        me.restart().await?;
        Ok(me)
    }

    /// Its evidence API, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Its probes and metrics, `http://127.0.0.1:PORT`.
    pub fn probe_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.probe_port)
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// The kubeconfig it runs with.
    pub fn kubeconfig(&self) -> &Path {
        &self.spec.kubeconfig
    }

    /// The log of its current (or last) run.
    pub fn log(&self) -> PathBuf {
        self.dir
            .join(format!("operator-{}.log", self.starts.max(1)))
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(p) => p.check_running(),
            None => anyhow::bail!("lotabots-operator is stopped"),
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.probe_url()))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// SIGKILL to its process group: no graceful shutdown, nothing flushed, the Lease
    /// not released. Returns how it ended (always killed by the signal).
    pub fn kill(&mut self) -> Option<Stopped> {
        let mut p = self.process.take()?;
        let _ = killpg(Pid::from_raw(p.pid() as i32), Signal::SIGKILL);
        // Reaps it; the group is already gone, so no SIGTERM reaches anything.
        Some(p.stop(Duration::ZERO))
    }

    /// Stops it gracefully (SIGTERM, then SIGKILL after the grace period); nothing if
    /// stopped. An error when it did not exit cleanly on SIGTERM.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        let stopped = p.stop(DEFAULT_GRACE);
        ensure!(
            matches!(&stopped.ending, Ending::Terminated(s) if s == "exit code 0"),
            "lotabots-operator {}; log {}",
            stopped.ending,
            stopped.log.display()
        );
        Ok(())
    }

    /// Starts it (if stopped) on the same ports, with a new log file, and waits for
    /// `/readyz`.
    pub async fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg(format!("--listen=127.0.0.1:{}", self.port))
            .arg(format!("--probe-addr=127.0.0.1:{}", self.probe_port))
            .args(&self.spec.args)
            .env("KUBECONFIG", &self.spec.kubeconfig)
            .env("RUST_LOG", "info");
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let log = self.log();
        let p = self
            .process
            .insert(Process::spawn("lotabots-operator", cmd, &log)?);
        let ready = format!("http://127.0.0.1:{}/readyz", self.probe_port);
        p.wait_ready(&ready, READY_TIMEOUT).await
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(DEFAULT_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_kubeconfig_keeps_the_admin_cluster_and_carries_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.kubeconfig");
        std::fs::write(
            &admin,
            serde_yaml::to_string(&json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "/pki/ca.crt"}}],
                "users": [{"name": "admin", "user": {"client-certificate": "/a.crt", "client-key": "/a.key"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "admin"}}],
                "current-context": "c",
            }))
            .unwrap(),
        )
        .unwrap();
        let out = dir.path().join("sa.kubeconfig");
        write_token_kubeconfig(&out, &admin, "sa", "TOKEN").unwrap();
        // kube parses it as a client would (its token type hides the value)…
        let kc = Kubeconfig::read_from(&out).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/pki/ca.crt")
        );
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.client_certificate.is_none() && user.token.is_some());
        // …and the file carries exactly this token.
        let raw: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(raw["users"][0]["user"]["token"], "TOKEN");
    }
}
