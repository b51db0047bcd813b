//! The pinned Kubernetes binaries, built (or found in the cache) by
//! `e2e/testbins/build.sh`, which prints the cache directory as its last stdout line and
//! its progress on stderr.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// Environment variable naming a directory laid out like the cache
/// (`bin/<binary>`, `kwok-stages.yaml`), to use instead of running build.sh.
pub const TESTBINS_ENV: &str = "LOTABOTS_TESTBINS";

/// The binaries every environment needs.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
];

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct TestBins {
    dir: PathBuf,
    /// How long finding (or building) them took.
    pub took: Duration,
}

impl TestBins {
    /// Runs build.sh once per process (it builds nothing when the cache is warm; cold, its
    /// progress goes to our stderr as it happens) and checks every binary is there.
    pub fn locate() -> Result<Self> {
        static FOUND: OnceLock<Result<TestBins, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| Self::find().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn find() -> Result<Self> {
        let began = Instant::now();
        let dir = dir_from_env_or_script(TESTBINS_ENV, "e2e/testbins/build.sh")?;
        let bins = Self {
            dir,
            took: began.elapsed(),
        };
        for name in BINARIES {
            let p = bins.bin(name);
            ensure!(p.is_file(), "missing test binary {}", p.display());
        }
        ensure!(
            bins.kwok_stages().is_file(),
            "missing {}",
            bins.kwok_stages().display()
        );
        Ok(bins)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of binary `name` (one of [`BINARIES`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// kwok's node and pod stages (kwok 0.8 does nothing without them).
    pub fn kwok_stages(&self) -> PathBuf {
        self.dir.join("kwok-stages.yaml")
    }
}

/// The directory `env` names (unset or empty: none), else the one the repository's `script` prints last (the
/// script installs or builds what is missing, and nothing when the cache is warm).
pub(crate) fn dir_from_env_or_script(env: &str, script: &str) -> Result<PathBuf> {
    match std::env::var_os(env).filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => run_build_script(&crate::repo_root().join(script)),
    }
}

fn run_build_script(script: &Path) -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .context("build.sh printed no cache directory")?;
    Ok(PathBuf::from(last.trim()))
}
