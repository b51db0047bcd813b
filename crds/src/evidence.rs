//! GPU evidence: what the node agent measured about its GPUs, as it sends it to the operator.
//!
//! Every fact that comes from a query that can fail is a [`Fact`]: either the value, or
//! why it is unavailable (the NVML error code and a message). A failed query never hides
//! the rest of the evidence, and never turns into a default value that a policy could
//! mistake for a measurement.
//!
//! The digest of a document is SHA-256 over its RFC 8785 (JCS) canonical JSON, the same
//! bytes wherever it is computed ([`NodeEvidence::digest`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Schema version carried by every evidence document; bump on incompatible changes.
pub const SCHEMA_VERSION: &str = "lotabots.io/gpu-evidence/v1alpha1";

/// Length in bytes of the freshness nonce bound into evidence and CC attestation reports.
pub const NONCE_LEN: usize = 32;

/// A fact the agent tried to measure: its value, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fact<T> {
    /// The query succeeded.
    Value(T),
    /// The query failed; the fact is unknown (never a silent default).
    Unavailable(Unavailable),
}

impl<T> Fact<T> {
    /// The value, if it was measured.
    pub fn value(&self) -> Option<&T> {
        match self {
            Fact::Value(v) => Some(v),
            Fact::Unavailable(_) => None,
        }
    }

    /// Why the fact is missing, if it is.
    pub fn unavailable(&self) -> Option<&Unavailable> {
        match self {
            Fact::Value(_) => None,
            Fact::Unavailable(u) => Some(u),
        }
    }

    /// A fact that could not be read.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Fact::Unavailable(Unavailable {
            code,
            message: message.into(),
        })
    }

    /// Applies `f` to a measured value, keeping the reason of a missing one.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Fact<U> {
        match self {
            Fact::Value(v) => Fact::Value(f(v)),
            Fact::Unavailable(u) => Fact::Unavailable(u),
        }
    }
}

impl<T, E: Into<Unavailable>> From<Result<T, E>> for Fact<T> {
    fn from(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Fact::Value(v),
            Err(e) => Fact::Unavailable(e.into()),
        }
    }
}

/// Why a fact is unavailable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unavailable {
    /// The failure class, named after NVML's return codes.
    pub code: ErrorCode,
    /// What failed, in words.
    pub message: String,
}

/// Failure classes of a GPU query, after NVML's `nvmlReturn_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The device or driver does not support the query (`NVML_ERROR_NOT_SUPPORTED`).
    NotSupported,
    /// The caller lacks the permission (`NVML_ERROR_NO_PERMISSION`).
    NoPermission,
    /// The GPU fell off the bus (`NVML_ERROR_GPU_IS_LOST`).
    GpuLost,
    /// The installed driver lacks the function (`NVML_ERROR_FUNCTION_NOT_FOUND`).
    FunctionNotFound,
    /// Nothing to report where something was asked for (`NVML_ERROR_NOT_FOUND`).
    NotFound,
    /// The query did not answer in time (`NVML_ERROR_TIMEOUT`).
    Timeout,
    /// The driver rejected the argument (`NVML_ERROR_INVALID_ARGUMENT`).
    InvalidArgument,
    /// Any other failure (`NVML_ERROR_UNKNOWN` and the rest).
    Unknown,
}

impl ErrorCode {
    /// The NVML return code this class stands for, where there is exactly one.
    pub fn nvml_return_code(self) -> Option<u32> {
        Some(match self {
            ErrorCode::InvalidArgument => 2,
            ErrorCode::NotSupported => 3,
            ErrorCode::NoPermission => 4,
            ErrorCode::NotFound => 6,
            ErrorCode::Timeout => 10,
            ErrorCode::FunctionNotFound => 13,
            ErrorCode::GpuLost => 15,
            ErrorCode::Unknown => 999,
        })
    }
}

/// Everything the agent measured on one node, at one time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEvidence {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: String,
    /// The Kubernetes node this was measured on (empty when probed outside a cluster).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The freshness nonce (64 hex characters) bound into this evidence and into CC reports.
    pub nonce: String,
    /// Who chose the nonce: the verifier (a challenge) or the agent itself.
    pub nonce_origin: NonceOrigin,
    /// When collection started.
    pub collected_at: Timestamp,
    /// How long the whole collection took, in microseconds.
    pub collection_micros: u64,
    /// The backend that produced the facts.
    pub backend: BackendInfo,
    /// Host-wide driver facts.
    pub host: HostFacts,
    /// One entry per physical GPU, by NVML index.
    pub gpus: Vec<GpuEvidence>,
}

impl NodeEvidence {
    /// The document's RFC 8785 (JCS) canonical JSON bytes.
    pub fn canonical_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json_canonicalizer::to_vec(self)
    }

    /// SHA-256 over the canonical JSON, as `sha256:<hex>`.
    pub fn digest(&self) -> Result<String, serde_json::Error> {
        Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(self.canonical_json()?))
        ))
    }

    /// The GPU with this UUID.
    pub fn gpu(&self, uuid: &str) -> Option<&GpuEvidence> {
        self.gpus
            .iter()
            .find(|g| g.uuid.value().is_some_and(|u| u == uuid))
    }
}

/// Who chose the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NonceOrigin {
    /// Issued by the verifier as a challenge: the evidence is fresh for that verifier.
    Verifier,
    /// Chosen by the agent (a local probe): it proves nothing about freshness to others.
    Agent,
}

/// Which backend measured the facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    /// `nvml` or `simulated`.
    pub kind: BackendKind,
    /// The simulated profile's name (simulated backend only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// The kinds of GPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    /// The NVIDIA driver's NVML library.
    Nvml,
    /// Replayed GPU profiles: for development and tests, never proof of real hardware.
    Simulated,
}

/// Host-wide facts from the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    /// Kernel driver version, e.g. `580.159.04`.
    pub driver_version: Fact<String>,
    /// Highest CUDA version the driver supports, e.g. `13.0`.
    pub cuda_driver_version: Fact<String>,
    /// NVML library version, e.g. `13.580.159.04`.
    pub nvml_version: Fact<String>,
    /// System-wide confidential-computing settings.
    pub confidential_computing: Fact<CcSystemState>,
}

/// System-wide confidential-computing settings (`nvmlSystemGetConfComputeSettings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CcSystemState {
    /// CC mode is on.
    pub enabled: bool,
    /// CC developer-tools mode is on (not production-safe).
    pub dev_tools_mode: bool,
}

/// Everything measured about one physical GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuEvidence {
    /// NVML device index.
    pub index: u32,
    /// GPU UUID, e.g. `GPU-38615fa5-f37e-2156-0ec9-5e05fd617e42`.
    pub uuid: Fact<String>,
    /// Board serial number.
    pub serial: Fact<String>,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub product_name: Fact<String>,
    /// Product brand, e.g. `Nvidia`.
    pub brand: Fact<String>,
    /// Architecture, e.g. `Hopper`.
    pub architecture: Fact<String>,
    /// Board part number.
    pub board_part_number: Fact<String>,
    /// PCI identity.
    pub pci: Fact<PciFacts>,
    /// CUDA compute capability, e.g. `9.0`.
    pub cuda_compute_capability: Fact<String>,
    /// VBIOS version, e.g. `96.00.DA.00.0C`.
    pub vbios_version: Fact<String>,
    /// InfoROM image version, e.g. `G520.0200.00.05`.
    pub inforom_image_version: Fact<String>,
    /// GSP firmware mode.
    pub gsp_firmware_mode: Fact<GspFirmwareMode>,
    /// GSP firmware version.
    pub gsp_firmware_version: Fact<String>,
    /// Compute mode, e.g. `Default`, `ExclusiveProcess`.
    pub compute_mode: Fact<String>,
    /// Frame-buffer memory.
    pub memory: Fact<MemoryFacts>,
    /// Core temperature in °C.
    pub temperature_celsius: Fact<u32>,
    /// Power draw in milliwatts.
    pub power_usage_milliwatts: Fact<u32>,
    /// Enforced power limit in milliwatts.
    pub power_limit_milliwatts: Fact<u32>,
    /// Number of compute processes running on the GPU.
    pub running_compute_processes: Fact<u32>,
    /// ECC mode, current and pending.
    pub ecc_mode: Fact<EccMode>,
    /// ECC error counts.
    pub ecc_errors: Fact<EccErrorCounts>,
    /// Retired pages (pre-Hopper; Hopper remaps rows instead and reports `NotSupported`).
    pub retired_pages: Fact<RetiredPages>,
    /// Remapped rows (Ampere and later).
    pub remapped_rows: Fact<RemappedRows>,
    /// MIG mode, profiles and instances.
    pub mig: MigFacts,
    /// Confidential-computing attestation material for this GPU.
    pub confidential_computing: CcGpuEvidence,
}

impl GpuEvidence {
    /// The UUID, or `gpu<index>` when the UUID itself could not be read.
    pub fn display_id(&self) -> String {
        self.uuid
            .value()
            .cloned()
            .unwrap_or_else(|| format!("gpu{}", self.index))
    }
}

/// PCI identity of a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PciFacts {
    /// Bus id, e.g. `00000000:00:06.0`.
    pub bus_id: String,
    /// Combined device and vendor id, e.g. `0x233010DE`.
    pub device_id: String,
    /// Combined subsystem id, e.g. `0x16C110DE`, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_id: Option<String>,
}

/// GSP firmware mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GspFirmwareMode {
    /// GSP firmware is in use.
    pub enabled: bool,
    /// GSP firmware is the default for this GPU.
    pub default_enabled: bool,
}

/// Frame-buffer memory, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFacts {
    /// Total installed memory.
    pub total_bytes: u64,
    /// Memory reserved by the driver.
    pub reserved_bytes: u64,
    /// Memory in use.
    pub used_bytes: u64,
    /// Memory free.
    pub free_bytes: u64,
}

/// ECC mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EccMode {
    /// ECC is on now.
    pub current: bool,
    /// ECC will be on after the next reset.
    pub pending: bool,
}

/// ECC error counts (device memory and SRAM together, as NVML totals them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EccErrorCounts {
    /// Corrected errors since the last driver load.
    pub volatile_corrected: u64,
    /// Uncorrected errors since the last driver load.
    pub volatile_uncorrected: u64,
    /// Corrected errors over the GPU's life.
    pub aggregate_corrected: u64,
    /// Uncorrected errors over the GPU's life.
    pub aggregate_uncorrected: u64,
}

/// Retired pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredPages {
    /// Pages retired for multiple single-bit errors.
    pub single_bit_ecc: u32,
    /// Pages retired for double-bit errors.
    pub double_bit_ecc: u32,
    /// Retirements waiting for the next reset.
    pub pending: bool,
}

/// Remapped rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub correctable: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrectable: u32,
    /// A remapping waits for the next reset.
    pub pending: bool,
    /// A remapping failed: the GPU should be serviced.
    pub failure_occurred: bool,
}

/// MIG facts of a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigFacts {
    /// MIG mode, current and pending.
    pub mode: Fact<MigMode>,
    /// The GPU-instance profiles this GPU offers, by NVML profile index; profile indices
    /// the GPU does not support are absent.
    pub gpu_instance_profiles: Fact<Vec<GpuInstanceProfile>>,
    /// The GPU instances that exist now, each with its compute instances (empty when MIG
    /// is disabled).
    pub gpu_instances: Fact<Vec<GpuInstance>>,
}

impl MigFacts {
    /// Whether MIG is enabled now (`None` when the mode could not be read).
    pub fn enabled(&self) -> Option<bool> {
        self.mode.value().map(|m| m.current)
    }
}

/// MIG mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigMode {
    /// MIG is enabled now.
    pub current: bool,
    /// MIG will be enabled after the next reset.
    pub pending: bool,
}

/// A GPU-instance profile the GPU offers (`nvmlGpuInstanceProfileInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInstanceProfile {
    /// Profile name, e.g. `1g.10gb`.
    pub name: String,
    /// The `NVML_GPU_INSTANCE_PROFILE_*` index it was queried with.
    pub profile_index: u32,
    /// The profile id on this GPU.
    pub id: u32,
    /// Memory slices.
    pub slices: u32,
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// How many instances of this profile the GPU can hold.
    pub max_instances: u32,
    /// Copy engines.
    pub copy_engines: u32,
    /// Video decoders.
    pub decoders: u32,
    /// Video encoders.
    pub encoders: u32,
    /// JPEG engines.
    pub jpeg_engines: u32,
    /// Optical-flow accelerators.
    pub ofa_engines: u32,
    /// Peer-to-peer supported.
    pub p2p_supported: bool,
}

/// A GPU instance that exists on a MIG-enabled GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInstance {
    /// GPU-instance id.
    pub id: u32,
    /// Profile id (see [`GpuInstanceProfile::id`]).
    pub profile_id: u32,
    /// Profile name, e.g. `3g.40gb`.
    pub profile_name: String,
    /// First memory slice of its placement.
    pub placement_start: u32,
    /// Slices of its placement.
    pub placement_size: u32,
    /// Its compute instances.
    pub compute_instances: Vec<ComputeInstance>,
}

/// A compute instance inside a GPU instance: what a container gets as a MIG device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputeInstance {
    /// Compute-instance id within its GPU instance.
    pub id: u32,
    /// Compute-instance profile id.
    pub profile_id: u32,
    /// Streaming multiprocessors of its profile, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiprocessors: Option<u32>,
    /// The MIG device UUID (`MIG-…`), as `NVIDIA_VISIBLE_DEVICES` names it.
    pub mig_device_uuid: Fact<String>,
}

/// Confidential-computing evidence of one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CcGpuEvidence {
    /// The SPDM attestation report bound to the evidence nonce.
    pub attestation_report: Fact<AttestationReport>,
    /// The device certificate chains.
    pub certificates: Fact<CcCertificates>,
}

/// An SPDM attestation report as the driver returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationReport {
    /// The nonce the report was requested with (hex).
    pub nonce: String,
    /// The report bytes (hex).
    pub report: String,
    /// The CEC attestation report (hex), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cec_report: Option<String>,
}

/// The device's certificate chains (DER bytes, hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CcCertificates {
    /// The GPU's certificate chain.
    pub cert_chain: String,
    /// The attestation certificate chain.
    pub attestation_cert_chain: String,
}

/// Parses a nonce given as 64 hex characters.
pub fn parse_nonce(hex_nonce: &str) -> Result<[u8; NONCE_LEN], NonceError> {
    let trimmed = hex_nonce.trim();
    if trimmed.len() != NONCE_LEN * 2 {
        return Err(NonceError::Length(trimmed.len()));
    }
    let mut out = [0u8; NONCE_LEN];
    hex::decode_to_slice(trimmed, &mut out).map_err(|e| NonceError::NotHex(e.to_string()))?;
    Ok(out)
}

/// Why a nonce was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    /// Wrong length.
    #[error("nonce must be 64 hex characters ({NONCE_LEN} bytes), got {0}")]
    Length(usize),
    /// Not hexadecimal.
    #[error("nonce is not hexadecimal: {0}")]
    NotHex(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_checked() {
        let good = "00".repeat(32);
        assert_eq!(parse_nonce(&good).unwrap(), [0u8; 32]);
        assert_eq!(parse_nonce("abcd"), Err(NonceError::Length(4)));
        assert!(matches!(
            parse_nonce(&"zz".repeat(32)),
            Err(NonceError::NotHex(_))
        ));
    }

    #[test]
    fn facts_serialize_as_value_or_reason() {
        let ok: Fact<u32> = Fact::Value(38);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"value":38}"#);
        let err: Fact<u32> = Fact::error(ErrorCode::NotSupported, "not on Hopper");
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"unavailable":{"code":"NotSupported","message":"not on Hopper"}}"#
        );
        let back: Fact<u32> = serde_json::from_str(r#"{"value":7}"#).unwrap();
        assert_eq!(back.value(), Some(&7));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        // JCS orders object members by key: the digest must not depend on field order.
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[true,null]}"#).unwrap();
        assert_eq!(
            serde_json_canonicalizer::to_string(&v).unwrap(),
            r#"{"a":[true,null],"b":1}"#
        );
    }
}
