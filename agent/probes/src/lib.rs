//! lotabots behavioural probes: a probe-suite format ([`suite`]) and a runner that loads
//! a model only after its files match the attested manifest digest ([`integrity`],
//! [`loaded`]), runs the suite on it ([`embed`], [`eval`]) and reports a
//! [`ProbeReport`] that the pod posts to the operator ([`result`], [`cli`]).
//!
//! The library is what the operator and tests use:
//! [`Suite::parse`](suite::Suite::parse) and [`run`].

pub mod cli;
pub mod embed;
pub mod eval;
pub mod fetch;
pub mod integrity;
pub mod loaded;
pub mod result;
pub mod suite;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use lotabots_crds::workload::ProbeReport;
use lotabots_model::hashing::{HashError, HashOptions};
use lotabots_model::source::SourceError;

use crate::embed::{Embedder, ModelError};
use crate::fetch::FetchError;
use crate::integrity::{Expectation, IntegrityError};
use crate::loaded::{LoadError, LoadedFiles};
use crate::suite::{Suite, Task};

/// Why a suite could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The arguments are unusable (a malformed digest, a device that is not there).
    #[error("{0}")]
    Usage(String),
    /// The suite asks for a task this runner does not run.
    #[error("the suite's task is {0}; this runner runs embedding suites only")]
    UnsupportedTask(Task),
    /// The suite or the model could not be fetched from the operator, or what it served
    /// was refused before anything was loaded.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The suite is not the one the launcher named (its digest differs).
    #[error("suite refused: {0}")]
    SuiteDigest(String),
    /// The model's files do not match the attested manifest: it was not loaded.
    #[error("model refused: {0}")]
    Refused(#[from] IntegrityError),
    /// A file the model needs is missing, outside the manifest, or changed after the check.
    #[error("model refused: {0}")]
    Load(#[from] LoadError),
    /// The verified model could not be built or run.
    #[error("model failed: {0}")]
    Model(#[from] ModelError),
}

impl ProbeError {
    /// The runner's exit code for it: 2 for unusable input, 1 when the model is refused
    /// or fails (as when a probe fails).
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::Usage(_) | ProbeError::UnsupportedTask(_) => 2,
            ProbeError::Fetch(_)
            | ProbeError::SuiteDigest(_)
            | ProbeError::Refused(_)
            | ProbeError::Load(_)
            | ProbeError::Model(_) => 1,
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The first CUDA device when built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device; an error when there is none.
    Cuda,
}

impl DeviceChoice {
    /// The candle device.
    pub fn device(self) -> Result<Device, ProbeError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if cfg!(feature = "cuda") => Device::cuda_if_available(0)
                .map_err(|e| ProbeError::Usage(format!("CUDA device 0: {e}"))),
            DeviceChoice::Auto => Ok(Device::Cpu),
            DeviceChoice::Cuda if cfg!(feature = "cuda") => {
                Device::new_cuda(0).map_err(|e| ProbeError::Usage(format!("CUDA device 0: {e}")))
            }
            DeviceChoice::Cuda => Err(ProbeError::Usage(
                "--device cuda: this runner was built without the `cuda` feature".into(),
            )),
        }
    }
}

/// The name a report gives a device.
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What the model's files must match.
    pub expectation: Expectation,
    /// Where to run the model.
    pub device: DeviceChoice,
    /// Threads for hashing.
    pub hash: HashOptions,
}

/// How long each step took (the `--report` figures).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Hashing the model directory and comparing with the attested manifest.
    pub verify: Duration,
    /// Reading, re-checking and building the model.
    pub load: Duration,
    /// Running every probe.
    pub probes: Duration,
    /// Bytes of model files loaded.
    pub model_bytes: u64,
    /// Distinct texts embedded.
    pub texts: usize,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The outcomes.
    pub report: ProbeReport,
    /// Step timings.
    pub timings: Timings,
}

/// Checks the model at `model_dir` against `expected_manifest_digest` (SHA-256 whole
/// files, or as `model.sig` inside the model says), and only then loads it on the CPU
/// (or CUDA, when built for it) and runs `suite`.
pub fn run(
    model_dir: &Path,
    suite: &Suite,
    expected_manifest_digest: &str,
) -> Result<ProbeReport, ProbeError> {
    let expectation = Expectation::new(expected_manifest_digest).map_err(ProbeError::Usage)?;
    let opts = RunOptions {
        expectation,
        device: DeviceChoice::Auto,
        hash: HashOptions::default(),
    };
    Ok(run_with(model_dir, suite, &opts)?.report)
}

/// [`run`] with every option.
pub fn run_with(
    model_dir: &Path,
    suite: &Suite,
    opts: &RunOptions,
) -> Result<RunOutput, ProbeError> {
    if suite.task != Task::Embedding {
        return Err(ProbeError::UnsupportedTask(suite.task));
    }
    let device = opts.device.device()?;
    let mut timings = Timings::default();
    // The directory's own path may be a link (a cache entry, a volume mount); links
    // *inside* the model are still refused by hashing.
    let model_dir = &std::fs::canonicalize(model_dir).map_err(|e| {
        IntegrityError::Unhashable(HashError::Source(SourceError {
            path: model_dir.display().to_string(),
            problem: e.to_string(),
        }))
    })?;

    let began = Instant::now();
    let verified = integrity::verify(model_dir, &opts.expectation, &opts.hash)?;
    timings.verify = began.elapsed();

    let began = Instant::now();
    let (required, optional) = embed::needed_files(model_dir)?;
    let files = LoadedFiles::read_checked(
        model_dir,
        &required,
        &optional,
        &verified.manifest,
        &opts.hash,
    )?;
    timings.model_bytes = files.total_bytes();
    let model = Embedder::load(&files, &device)?;
    drop(files);
    timings.load = began.elapsed();

    let began = Instant::now();
    timings.texts = eval::distinct_texts(suite).len();
    let probes = eval::evaluate_embedding(suite, &model)?;
    timings.probes = began.elapsed();

    Ok(RunOutput {
        report: ProbeReport {
            suite_digest: suite.digest.clone(),
            manifest_digest: opts.expectation.manifest_digest.clone(),
            device: device_name(model.device()).to_owned(),
            probes,
        },
        timings,
    })
}
