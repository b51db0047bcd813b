//! Files that are reloaded when they change: the policy (a mounted ConfigMap) and the TLS
//! certificate and key (a mounted Secret).
//!
//! Files are polled rather than watched with inotify: a mounted ConfigMap or Secret is
//! updated by swapping a `..data` symlink, which inotify on the file itself misses, and
//! reading a few kilobytes every few seconds costs nothing. A change is applied only when
//! the new content is valid; otherwise the last good content stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyErrors};

/// The policy in force, swapped whole on reload.
#[derive(Debug)]
pub struct PolicyStore {
    current: RwLock<Arc<Policy>>,
}

impl PolicyStore {
    /// A store holding `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
        }
    }

    /// The policy in force.
    pub fn get(&self) -> Arc<Policy> {
        // A poisoned lock still holds a whole policy (it is only ever replaced whole).
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy in force.
    pub fn set(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// Parses `text` and puts it in force if valid; otherwise the current policy stays and
    /// the errors (each naming its field) are returned.
    pub fn apply(&self, text: &str) -> Result<(), PolicyErrors> {
        let p = Policy::from_yaml(text)?;
        self.set(p);
        Ok(())
    }
}

/// Reads every file whole.
pub fn read_all(paths: &[PathBuf]) -> std::io::Result<Vec<Vec<u8>>> {
    paths.iter().map(std::fs::read).collect()
}

/// Polls `paths` every `interval` and calls `on_change` with their contents whenever they
/// differ from `last`. Runs until the task is dropped.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    mut last: Vec<Vec<u8>>,
    mut on_change: impl FnMut(&[Vec<u8>]) + Send,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut read_failed = false;
    loop {
        ticker.tick().await;
        let paths2 = paths.clone();
        let read = tokio::task::spawn_blocking(move || read_all(&paths2)).await;
        match read {
            Ok(Ok(now)) => {
                read_failed = false;
                if now != last {
                    on_change(&now);
                    last = now;
                }
            }
            Ok(Err(e)) => {
                // Mid-swap a mounted file can vanish for a moment; say so once per outage.
                if !read_failed {
                    tracing::warn!(error = %e, files = ?paths, "cannot read watched files; keeping what is in force");
                }
                read_failed = true;
            }
            Err(e) => tracing::error!(error = %e, "file read task failed"),
        }
    }
}

/// Watches the policy file and puts each valid new version in force.
pub async fn watch_policy(
    path: PathBuf,
    interval: Duration,
    initial: Vec<u8>,
    store: Arc<PolicyStore>,
    metrics: Metrics,
) {
    let shown = path.display().to_string();
    watch_files(vec![path], interval, vec![initial], move |now| {
        reload_policy(&store, &metrics, &shown, &now[0]);
    })
    .await;
}

/// Applies new policy file content, logging and counting the result.
pub fn reload_policy(store: &PolicyStore, metrics: &Metrics, shown: &str, content: &[u8]) {
    let result = match std::str::from_utf8(content) {
        Ok(text) => store.apply(text).map_err(|e| e.to_string()),
        Err(e) => Err(format!("not UTF-8: {e}")),
    };
    match result {
        Ok(()) => {
            tracing::info!(file = shown, "policy reloaded");
            metrics.reloads.with_label_values(&["policy", "ok"]).inc();
            metrics.policy_current.set(1);
        }
        Err(e) => {
            tracing::error!(file = shown, error = %e, "new policy is invalid; the last good policy stays in force");
            metrics
                .reloads
                .with_label_values(&["policy", "error"])
                .inc();
            metrics.policy_current.set(0);
        }
    }
}

/// Reads a policy file for startup (where an invalid file is fatal).
pub fn load_policy_file(path: &Path) -> anyhow::Result<(Policy, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| anyhow::anyhow!("policy {} is not UTF-8: {e}", path.display()))?;
    let policy = Policy::from_yaml(text)
        .map_err(|e| anyhow::anyhow!("policy {} is invalid: {e}", path.display()))?;
    Ok((policy, bytes))
}
