//! The lotabots API: custom resource types and the GPU evidence the agent sends.
//!
//! This crate holds types only (plus the pure helpers that belong to them, such as the
//! evidence digest and MIG profile names), so that everything else — agent, operator,
//! webhook, offline commands — shares one definition of each wire format.

pub mod conditions;
pub mod crdgen;
pub mod evidence;
pub mod gpu_attestation;
pub mod labels;
pub mod mig;
pub mod model_attestation;
pub mod workload;

/// API group of every lotabots custom resource.
pub const GROUP: &str = "lotabots.io";
/// API version served for every lotabots custom resource.
pub const VERSION: &str = "v1alpha1";

pub use gpu_attestation::{GpuAttestation, GpuAttestationSpec, GpuAttestationStatus};
pub use model_attestation::{ModelAttestation, ModelAttestationSpec, ModelAttestationStatus};
