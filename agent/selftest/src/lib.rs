//! The GPU self-test of a lotabots workload pod.
//!
//! Proves that each visible GPU computes: a matrix multiply checked against a CPU reference,
//! a memory pattern test over a share of free memory, and device-to-device copy bandwidth,
//! all through the CUDA driver API loaded at run time ([`gpu`]). The matrices and patterns
//! are drawn from the node attestation's nonce and the result, bound to that nonce and the
//! node, is posted to the operator with the pod-bound token ([`post`]). [`simulated`] runs
//! the same checks on the CPU for tests.

pub mod cli;
pub mod config;
pub mod gpu;
pub mod pattern;
pub mod post;
pub mod ptx;
pub mod reference;
pub mod report;
pub mod simulated;
pub mod table;

/// What the checks are asked to do; the same for the GPU and the simulated mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Side of the square matrices.
    pub matmul_n: u32,
    /// Timed repetitions of the product (after one checked, untimed run).
    pub matmul_runs: u32,
    /// Share of free device memory the pattern test covers (0 < share ≤ [`MAX_MEMORY_SHARE`]).
    pub memory_share: f64,
    /// Largest buffer copied by the bandwidth check.
    pub bandwidth_bytes: u64,
    /// Timed copies of the bandwidth check.
    pub bandwidth_runs: u32,
    /// The node attestation's nonce: seeds the matrices and patterns.
    pub nonce: [u8; 32],
}

/// Default matrix side.
pub const DEFAULT_MATMUL_N: u32 = 1024;
/// Default share of free memory under the pattern test.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.25;
/// Largest share of free memory the pattern test may take: the driver, the JIT and the
/// test's own bookkeeping need the rest, and an allocation that fails proves nothing.
pub const MAX_MEMORY_SHARE: f64 = 0.9;
/// Default size of the bandwidth check's buffers (each of two).
pub const DEFAULT_BANDWIDTH_BYTES: u64 = 1 << 30;

/// Why the self-test could not produce measurements.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// There is no usable GPU here: no driver library, no device, a driver that cannot
    /// initialise. The pod was scheduled or configured wrongly; exit code 2.
    #[error("{0}")]
    NoGpu(String),
    /// A GPU was found but a check could not run (allocation, launch, a driver error).
    #[error("{0}")]
    Failed(String),
}
