//! The `GpuBackend` trait, backend selection, and the one place that assembles evidence.

use std::time::Instant;

use jiff::Timestamp;
use lotabots_crds::evidence::{
    BackendInfo, GpuEvidence, HostFacts, NONCE_LEN, NodeEvidence, NonceOrigin, SCHEMA_VERSION,
};

use crate::nvml::NvmlBackend;
use crate::simulated::SimulatedBackend;

/// A source of GPU facts: the real driver (NVML) or replayed profiles.
///
/// Implementations report every query that fails as an unavailable fact inside the
/// evidence; only failures that leave nothing to report (no driver, no device list) are
/// errors.
pub trait GpuBackend: Send + Sync {
    /// Which backend this is.
    fn info(&self) -> BackendInfo;
    /// Host-wide facts (driver, CUDA, NVML versions, CC system state).
    fn host_facts(&self) -> HostFacts;
    /// How many physical GPUs there are.
    fn gpu_count(&self) -> Result<u32, BackendError>;
    /// Every fact about one GPU; CC reports are requested with `nonce`.
    fn gpu(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence, BackendError>;
}

/// A failure that leaves no evidence to report.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The NVML library could not be loaded or initialised.
    #[error("NVML is unavailable: {0}")]
    NvmlUnavailable(String),
    /// A query that the whole probe depends on failed.
    #[error("{query} failed: {message}")]
    Query {
        /// The NVML function or step.
        query: &'static str,
        /// What it said.
        message: String,
    },
    /// A simulated profile could not be found or read.
    #[error(transparent)]
    Profile(#[from] crate::simulated::ProfileError),
    /// A command-line input is missing or unusable (node name, CA bundle, URL).
    #[error("{0}")]
    Input(String),
}

impl BackendError {
    /// Whether the problem lies in the user's input (a profile name or file) rather than
    /// in the machine: the CLI exits 2 for those and 1 otherwise.
    pub fn is_input_error(&self) -> bool {
        matches!(self, BackendError::Profile(_) | BackendError::Input(_))
    }
}

/// Which backend to use, as given on the command line: `auto`, `nvml`,
/// `simulated:<profile name or path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// NVML when `libnvidia-ml.so.1` loads, otherwise the default simulated profile.
    Auto,
    /// NVML only.
    Nvml,
    /// A simulated profile: a built-in name or a path to a profile file.
    Simulated(String),
}

/// The simulated profile `auto` falls back to.
pub const DEFAULT_SIMULATED_PROFILE: &str = "h100-80gb-hbm3";

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "nvml" => Ok(Self::Nvml),
            "simulated" => Ok(Self::Simulated(DEFAULT_SIMULATED_PROFILE.to_owned())),
            other => match other.strip_prefix("simulated:") {
                Some(p) if !p.is_empty() => Ok(Self::Simulated(p.to_owned())),
                _ => Err(format!(
                    "unknown backend {other:?}: use auto, nvml or simulated:<profile> (profiles: {})",
                    crate::simulated::builtin_names().join(", ")
                )),
            },
        }
    }
}

/// A started backend and, for `auto`, why it was chosen.
pub struct Selected {
    /// The backend.
    pub backend: Box<dyn GpuBackend>,
    /// One line saying which backend runs and why.
    pub note: String,
}

/// Starts the chosen backend. `nvml_lib` overrides where NVML is loaded from; a simulated
/// backend derives its GPU identities from `identity_seed` (the node name) when given.
pub fn select(
    choice: &BackendChoice,
    nvml_lib: Option<&str>,
    identity_seed: Option<&str>,
) -> Result<Selected, BackendError> {
    let simulated = |profile: &str| -> Result<SimulatedBackend, BackendError> {
        let backend = SimulatedBackend::load(profile)?;
        Ok(match identity_seed {
            Some(seed) => backend.with_identity_seed(seed),
            None => backend,
        })
    };
    match choice {
        BackendChoice::Nvml => {
            let backend = NvmlBackend::init(nvml_lib)?;
            let note = format!("backend: nvml (driver {})", backend.driver_summary());
            Ok(Selected {
                backend: Box::new(backend),
                note,
            })
        }
        BackendChoice::Simulated(profile) => {
            let backend = simulated(profile)?;
            let note = format!("backend: simulated ({})", backend.profile_name());
            Ok(Selected {
                backend: Box::new(backend),
                note,
            })
        }
        BackendChoice::Auto => match NvmlBackend::init(nvml_lib) {
            Ok(backend) => {
                let note = format!(
                    "backend: nvml (auto: the NVML library loaded; driver {})",
                    backend.driver_summary()
                );
                Ok(Selected {
                    backend: Box::new(backend),
                    note,
                })
            }
            // Only a library that is absent sends `auto` to the simulator: a library that
            // loads but fails to initialise means a broken GPU host, which must not pass
            // for a simulated one.
            Err(NvmlInitError::LibraryMissing(why)) => {
                let backend = simulated(DEFAULT_SIMULATED_PROFILE)?;
                let note = format!(
                    "backend: simulated ({DEFAULT_SIMULATED_PROFILE}) (auto: the NVML library could not be loaded: {why})"
                );
                Ok(Selected {
                    backend: Box::new(backend),
                    note,
                })
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Why NVML did not start.
#[derive(Debug, thiserror::Error)]
pub enum NvmlInitError {
    /// The shared library is not there.
    #[error("cannot load the NVML library: {0}")]
    LibraryMissing(String),
    /// The library is there but does not load (not a library, wrong architecture, a
    /// symbol missing).
    #[error("cannot load the NVML library: {0}")]
    LibraryBroken(String),
    /// The library loaded but `nvmlInit` failed (driver not loaded, no permission, …).
    #[error("the NVML library loaded but did not initialise: {0}")]
    InitFailed(String),
}

impl From<NvmlInitError> for BackendError {
    fn from(e: NvmlInitError) -> Self {
        BackendError::NvmlUnavailable(e.to_string())
    }
}

/// How a probe was asked for.
#[derive(Clone, Debug)]
pub struct ProbeRequest {
    /// The nonce bound into the evidence and the CC reports.
    pub nonce: [u8; NONCE_LEN],
    /// Who chose the nonce.
    pub nonce_origin: NonceOrigin,
    /// The Kubernetes node name, when known.
    pub node_name: String,
}

impl ProbeRequest {
    /// A request with a nonce of the agent's own choosing, for local probes.
    pub fn local(node_name: impl Into<String>) -> Self {
        Self {
            nonce: rand::random(),
            nonce_origin: NonceOrigin::Agent,
            node_name: node_name.into(),
        }
    }
}

/// Collects the whole node's evidence from a backend.
pub fn collect(backend: &dyn GpuBackend, req: &ProbeRequest) -> Result<NodeEvidence, BackendError> {
    let started = Instant::now();
    let collected_at = Timestamp::now();
    let host = backend.host_facts();
    let count = backend.gpu_count()?;
    let gpus = (0..count)
        .map(|i| backend.gpu(i, &req.nonce))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeEvidence {
        schema_version: SCHEMA_VERSION.to_owned(),
        node_name: req.node_name.clone(),
        nonce: hex::encode(req.nonce),
        nonce_origin: req.nonce_origin,
        collected_at,
        collection_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        backend: backend.info(),
        host,
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choices_parse() {
        assert_eq!("auto".parse(), Ok(BackendChoice::Auto));
        assert_eq!("nvml".parse(), Ok(BackendChoice::Nvml));
        assert_eq!(
            "simulated:a100-80gb-mig".parse(),
            Ok(BackendChoice::Simulated("a100-80gb-mig".into()))
        );
        let err = "simulated:".parse::<BackendChoice>().unwrap_err();
        assert!(err.contains("unknown backend"), "{err}");
        let err = "cuda".parse::<BackendChoice>().unwrap_err();
        assert!(
            err.contains("h100-80gb-hbm3"),
            "lists the built-in profiles: {err}"
        );
    }
}
