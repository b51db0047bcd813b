//! The NVML backend: real facts from the NVIDIA driver through `nvml-wrapper`.
//!
//! Each query is made on its own; one that fails becomes an unavailable fact naming the
//! NVML function and its error, and the rest of the evidence still comes back. Queries the
//! safe wrapper lacks (remapped rows, profile names, GPU and compute instances, MIG device
//! ids) go through the raw symbols in [`raw`].

mod raw;

use lotabots_crds::evidence::{
    AttestationReport, BackendInfo, BackendKind, CcCertificates, CcGpuEvidence, CcSystemState,
    EccErrorCounts, EccMode, ErrorCode, Fact, GpuEvidence, GpuInstanceProfile, GspFirmwareMode,
    HostFacts, MemoryFacts, MigFacts, MigMode, NONCE_LEN, PciFacts, RetiredPages, Unavailable,
};
use lotabots_crds::mig;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use crate::backend::{BackendError, GpuBackend, NvmlInitError};

/// The file name the driver installs NVML under.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// The highest `NVML_GPU_INSTANCE_PROFILE_*` index queried (NVML 12.x/13.x define 0..=16).
const MAX_PROFILE_INDEX: u32 = 16;

/// The driver's NVML, initialised.
pub struct NvmlBackend {
    nvml: Nvml,
}

impl NvmlBackend {
    /// Loads NVML (from `lib_path` when given) and initialises it.
    pub fn init(lib_path: Option<&str>) -> Result<Self, NvmlInitError> {
        let mut builder = Nvml::builder();
        if let Some(p) = lib_path {
            builder.lib_path(std::ffi::OsStr::new(p));
        }
        let nvml = builder.init().map_err(|e| match e {
            // libloading's message already names the file. A file that is there but does
            // not load (wrong architecture, truncated) is broken, not missing.
            NvmlError::LibloadingError(le) => {
                let present = match lib_path {
                    Some(p) => std::path::Path::new(p).exists(),
                    None => !le.to_string().contains("No such file or directory"),
                };
                if present {
                    NvmlInitError::LibraryBroken(le.to_string())
                } else {
                    NvmlInitError::LibraryMissing(le.to_string())
                }
            }
            NvmlError::FailedToLoadSymbol(s) => NvmlInitError::LibraryBroken(format!(
                "{} is not a usable NVML library (missing symbol: {s})",
                lib_path.unwrap_or(NVML_LIBRARY)
            )),
            NvmlError::LibraryNotFound => {
                NvmlInitError::LibraryMissing(lib_path.unwrap_or(NVML_LIBRARY).to_owned())
            }
            other => NvmlInitError::InitFailed(other.to_string()),
        })?;
        Ok(Self { nvml })
    }

    /// The driver version, for the line that says which backend runs.
    pub fn driver_summary(&self) -> String {
        self.nvml
            .sys_driver_version()
            .unwrap_or_else(|e| format!("unknown: {e}"))
    }
}

/// Maps an NVML error to a failure class.
fn code(e: &NvmlError) -> ErrorCode {
    match e {
        NvmlError::NotSupported => ErrorCode::NotSupported,
        NvmlError::NoPermission => ErrorCode::NoPermission,
        NvmlError::GpuLost => ErrorCode::GpuLost,
        NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_) => {
            ErrorCode::FunctionNotFound
        }
        NvmlError::NotFound => ErrorCode::NotFound,
        NvmlError::Timeout => ErrorCode::Timeout,
        NvmlError::InvalidArg => ErrorCode::InvalidArgument,
        _ => ErrorCode::Unknown,
    }
}

/// One query's result as a fact; `query` names the NVML function for the reason.
fn fact<T>(query: &str, r: Result<T, NvmlError>) -> Fact<T> {
    match r {
        Ok(v) => Fact::Value(v),
        Err(e) => Fact::Unavailable(Unavailable {
            code: code(&e),
            message: format!("{query}: {e}"),
        }),
    }
}

impl GpuBackend for NvmlBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Nvml,
            profile: None,
        }
    }

    fn host_facts(&self) -> HostFacts {
        let cuda = self.nvml.sys_cuda_driver_version().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let cc = self.nvml.device_by_index(0).and_then(|d| {
            Ok(CcSystemState {
                enabled: d.is_cc_enabled()?,
                dev_tools_mode: d.is_cc_dev_mode_enabled()?,
            })
        });
        HostFacts {
            driver_version: fact("nvmlSystemGetDriverVersion", self.nvml.sys_driver_version()),
            cuda_driver_version: fact("nvmlSystemGetCudaDriverVersion", cuda),
            nvml_version: fact("nvmlSystemGetNVMLVersion", self.nvml.sys_nvml_version()),
            confidential_computing: fact("nvmlSystemGetConfComputeSettings", cc),
        }
    }

    fn gpu_count(&self) -> Result<u32, BackendError> {
        self.nvml.device_count().map_err(|e| BackendError::Query {
            query: "nvmlDeviceGetCount",
            message: e.to_string(),
        })
    }

    fn gpu(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence, BackendError> {
        let d = self
            .nvml
            .device_by_index(index)
            .map_err(|e| BackendError::Query {
                query: "nvmlDeviceGetHandleByIndex",
                message: format!("GPU {index}: {e}"),
            })?;
        let lib = self.nvml.lib();
        Ok(GpuEvidence {
            index,
            uuid: fact("nvmlDeviceGetUUID", d.uuid()),
            serial: fact("nvmlDeviceGetSerial", d.serial()),
            product_name: fact("nvmlDeviceGetName", d.name()),
            brand: fact("nvmlDeviceGetBrand", d.brand().map(|b| format!("{b:?}"))),
            architecture: fact(
                "nvmlDeviceGetArchitecture",
                d.architecture().map(|a| format!("{a:?}")),
            ),
            board_part_number: fact("nvmlDeviceGetBoardPartNumber", d.board_part_number()),
            pci: fact(
                "nvmlDeviceGetPciInfo",
                d.pci_info().map(|p| PciFacts {
                    bus_id: p.bus_id,
                    device_id: format!("0x{:08X}", p.pci_device_id),
                    subsystem_id: p.pci_sub_system_id.map(|s| format!("0x{s:08X}")),
                }),
            ),
            cuda_compute_capability: fact(
                "nvmlDeviceGetCudaComputeCapability",
                d.cuda_compute_capability()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
            ),
            vbios_version: fact("nvmlDeviceGetVbiosVersion", d.vbios_version()),
            inforom_image_version: fact(
                "nvmlDeviceGetInforomImageVersion",
                d.info_rom_image_version(),
            ),
            gsp_firmware_mode: fact(
                "nvmlDeviceGetGspFirmwareMode",
                d.gsp_firmware_mode().map(|m| GspFirmwareMode {
                    enabled: m.enabled,
                    default_enabled: m.default,
                }),
            ),
            gsp_firmware_version: fact("nvmlDeviceGetGspFirmwareVersion", d.gsp_firmware_version()),
            compute_mode: fact(
                "nvmlDeviceGetComputeMode",
                d.compute_mode().map(|m| format!("{m:?}")),
            ),
            memory: fact(
                "nvmlDeviceGetMemoryInfo",
                d.memory_info().map(|m| MemoryFacts {
                    total_bytes: m.total,
                    reserved_bytes: m.reserved,
                    used_bytes: m.used,
                    free_bytes: m.free,
                }),
            ),
            temperature_celsius: fact(
                "nvmlDeviceGetTemperature",
                d.temperature(TemperatureSensor::Gpu),
            ),
            power_usage_milliwatts: fact("nvmlDeviceGetPowerUsage", d.power_usage()),
            power_limit_milliwatts: fact(
                "nvmlDeviceGetEnforcedPowerLimit",
                d.enforced_power_limit(),
            ),
            running_compute_processes: fact(
                "nvmlDeviceGetComputeRunningProcesses",
                d.running_compute_processes_count(),
            ),
            ecc_mode: fact(
                "nvmlDeviceGetEccMode",
                d.is_ecc_enabled().map(|m| EccMode {
                    current: m.currently_enabled,
                    pending: m.pending_enabled,
                }),
            ),
            ecc_errors: fact("nvmlDeviceGetTotalEccErrors", ecc_errors(&d)),
            retired_pages: fact("nvmlDeviceGetRetiredPages", retired_pages(&d)),
            remapped_rows: fact("nvmlDeviceGetRemappedRows", raw::remapped_rows(lib, &d)),
            mig: mig_facts(lib, &d),
            confidential_computing: cc_evidence(&d, nonce),
        })
    }
}

fn ecc_errors(d: &Device) -> Result<EccErrorCounts, NvmlError> {
    Ok(EccErrorCounts {
        volatile_corrected: d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)?,
        volatile_uncorrected: d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)?,
        aggregate_corrected: d.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)?,
        aggregate_uncorrected: d
            .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)?,
    })
}

fn retired_pages(d: &Device) -> Result<RetiredPages, NvmlError> {
    let count = |cause| {
        d.retired_pages(cause)
            .map(|p| u32::try_from(p.len()).unwrap_or(u32::MAX))
    };
    Ok(RetiredPages {
        single_bit_ecc: count(RetirementCause::MultipleSingleBitEccErrors)?,
        double_bit_ecc: count(RetirementCause::DoubleBitEccError)?,
        pending: d.are_pages_pending_retired()?,
    })
}

fn mig_facts(lib: &nvml_wrapper_sys::bindings::NvmlLib, d: &Device) -> MigFacts {
    let mode = fact(
        "nvmlDeviceGetMigMode",
        d.mig_mode().map(|m| MigMode {
            current: m.current == 1,
            pending: m.pending == 1,
        }),
    );
    let profiles = gpu_instance_profiles(lib, d);
    let gpu_instances = match (&mode, &profiles) {
        (Fact::Value(MigMode { current: true, .. }), Fact::Value(profiles)) => fact(
            "nvmlDeviceGetGpuInstances",
            raw::gpu_instances(lib, d, profiles),
        ),
        (Fact::Value(MigMode { current: false, .. }), _) => Fact::Value(Vec::new()),
        (Fact::Unavailable(u), _) | (_, Fact::Unavailable(u)) => Fact::Unavailable(u.clone()),
    };
    MigFacts {
        mode,
        gpu_instance_profiles: profiles,
        gpu_instances,
    }
}

/// Every GPU-instance profile the GPU offers: profile indices it does not support
/// (`NOT_SUPPORTED`, `INVALID_ARGUMENT` on older drivers) are left out; any other failure
/// makes the whole list unavailable, since a partial list could hide a profile.
fn gpu_instance_profiles(
    lib: &nvml_wrapper_sys::bindings::NvmlLib,
    d: &Device,
) -> Fact<Vec<GpuInstanceProfile>> {
    let mut out = Vec::new();
    for index in 0..=MAX_PROFILE_INDEX {
        match d.profile_info(index) {
            Ok(p) => {
                let name = raw::gpu_instance_profile_name(lib, d, index)
                    .map(|n| mig::strip_nvml_prefix(&n).to_owned())
                    .unwrap_or_else(|| mig::profile_name(index, p.slice_count, p.memory_size_mb));
                out.push(GpuInstanceProfile {
                    name,
                    profile_index: index,
                    id: p.id,
                    slices: p.slice_count,
                    multiprocessors: p.multiprocessor_count,
                    memory_mib: p.memory_size_mb,
                    max_instances: p.instance_count,
                    copy_engines: p.copy_engine_count,
                    decoders: p.decoder_count,
                    encoders: p.encoder_count,
                    jpeg_engines: p.jpeg_count,
                    ofa_engines: p.ofa_count,
                    p2p_supported: p.is_p2p_supported,
                });
            }
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) => {}
            Err(e) if out.is_empty() && index == 0 => {
                return fact("nvmlDeviceGetGpuInstanceProfileInfo", Err(e));
            }
            Err(e) => {
                return fact(
                    &format!("nvmlDeviceGetGpuInstanceProfileInfo({index})"),
                    Err(e),
                );
            }
        }
    }
    if out.is_empty() {
        return Fact::error(
            ErrorCode::NotSupported,
            "nvmlDeviceGetGpuInstanceProfileInfo: no GPU-instance profile is supported (GPU without MIG)",
        );
    }
    Fact::Value(out)
}

fn cc_evidence(d: &Device, nonce: &[u8; NONCE_LEN]) -> CcGpuEvidence {
    let report = d
        .confidential_compute_gpu_attestation_report(*nonce)
        .map(|r| AttestationReport {
            nonce: hex::encode(nonce),
            report: hex::encode(&r.attestation_report),
            cec_report: r
                .is_cec_attestation_report_present
                .then(|| hex::encode(&r.cec_attestation_report)),
        });
    let certs = d
        .confidential_compute_gpu_certificate()
        .map(|c| CcCertificates {
            cert_chain: hex::encode(&c.cert_chain),
            attestation_cert_chain: hex::encode(&c.attestation_cert_chain),
        });
    CcGpuEvidence {
        attestation_report: fact("nvmlDeviceGetConfComputeGpuAttestationReport", report),
        certificates: fact("nvmlDeviceGetConfComputeGpuCertificate", certs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named() {
        let Err(err) = NvmlBackend::init(Some("/nonexistent/libnvidia-ml.so.1")) else {
            panic!("loaded a library that does not exist");
        };
        assert!(matches!(err, NvmlInitError::LibraryMissing(_)), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/libnvidia-ml.so.1"),
            "{err}"
        );
    }

    #[test]
    fn errors_keep_their_nvml_class() {
        let f: Fact<u32> = fact("nvmlDeviceGetRetiredPages", Err(NvmlError::NotSupported));
        let u = f.unavailable().unwrap();
        assert_eq!(u.code, ErrorCode::NotSupported);
        assert!(
            u.message.starts_with("nvmlDeviceGetRetiredPages: "),
            "{}",
            u.message
        );
        assert_eq!(code(&NvmlError::Unknown), ErrorCode::Unknown);
        assert_eq!(code(&NvmlError::GpuLost), ErrorCode::GpuLost);
    }
}
