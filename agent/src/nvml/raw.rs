//! NVML queries the safe `nvml-wrapper` API lacks, made through its raw symbols.
//!
//! Every function here follows one pattern: look the symbol up (an older driver may lack
//! it: that is an error, not a crash), call it with pointers to stack values or to
//! buffers sized by the caller-visible count, and convert the C structs into owned Rust
//! values before returning. No pointer outlives the call that filled it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem;
use std::os::raw::c_uint;

use lotabots_crds::evidence::{
    ComputeInstance, Fact, GpuInstance, GpuInstanceProfile, RemappedRows,
};
use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_COMPUTE_INSTANCE_PROFILE_COUNT, NvmlLib,
    nvmlComputeInstance_t, nvmlComputeInstanceInfo_t, nvmlComputeInstanceProfileInfo_v2_t,
    nvmlDevice_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstanceProfileInfo_v2_t,
};

/// `NVML_STRUCT_VERSION(name, ver)` from nvml.h: the struct size with the version in the top byte.
fn struct_version<T>(version: u32) -> c_uint {
    (mem::size_of::<T>() as c_uint) | (version << 24)
}

/// The raw handle of a device.
fn handle(d: &Device) -> nvmlDevice_t {
    // SAFETY: `handle` only copies the opaque pointer out; it stays valid while `d`
    // (and the `Nvml` it borrows) lives, which outlasts every use in this module.
    unsafe { d.handle() }
}

/// `nvmlDeviceGetRemappedRows`: rows remapped for correctable and uncorrectable errors.
pub fn remapped_rows(lib: &NvmlLib, d: &Device) -> Result<RemappedRows, NvmlError> {
    let sym = nvml_sym(lib.nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut corr, mut unc, mut pending, mut failed): (c_uint, c_uint, c_uint, c_uint) =
        (0, 0, 0, 0);
    // SAFETY: the four out-pointers point to live stack integers of the C type the
    // function writes; the device handle is valid (see `handle`).
    nvml_try(unsafe { sym(handle(d), &mut corr, &mut unc, &mut pending, &mut failed) })?;
    Ok(RemappedRows {
        correctable: corr,
        uncorrectable: unc,
        pending: pending != 0,
        failure_occurred: failed != 0,
    })
}

/// The driver's own name of a GPU-instance profile (`nvmlDeviceGetGpuInstanceProfileInfoV`,
/// e.g. `MIG 1g.10gb`), or `None` where the driver has no v2 call.
pub fn gpu_instance_profile_name(lib: &NvmlLib, d: &Device, profile_index: u32) -> Option<String> {
    let sym = lib.nvmlDeviceGetGpuInstanceProfileInfoV.as_ref().ok()?;
    // SAFETY: the struct is plain C data (integers and a char array): all-zero is valid.
    let mut info: nvmlGpuInstanceProfileInfo_v2_t = unsafe { mem::zeroed() };
    info.version = struct_version::<nvmlGpuInstanceProfileInfo_v2_t>(2);
    // SAFETY: `info` is a live, correctly versioned v2 struct the function fills.
    nvml_try(unsafe { sym(handle(d), profile_index, &mut info) }).ok()?;
    c_name(&info.name)
}

/// Reads a NUL-terminated name out of a fixed C char array, refusing an unterminated one.
fn c_name(chars: &[std::os::raw::c_char]) -> Option<String> {
    // SAFETY: c_char and u8 have the same size and alignment; the slice is borrowed only
    // for this call.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(chars.as_ptr().cast(), chars.len()) };
    let name = CStr::from_bytes_until_nul(bytes)
        .ok()?
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

/// The GPU instances that exist on a MIG-enabled GPU, each with its compute instances and
/// their MIG device UUIDs.
pub fn gpu_instances(
    lib: &NvmlLib,
    d: &Device,
    profiles: &[GpuInstanceProfile],
) -> Result<Vec<GpuInstance>, NvmlError> {
    let get_instances = nvml_sym(lib.nvmlDeviceGetGpuInstances.as_ref())?;
    let get_info = nvml_sym(lib.nvmlGpuInstanceGetInfo.as_ref())?;
    let mig_uuids = mig_device_uuids(lib, d)?;
    let mut out = Vec::new();
    for profile in profiles {
        let mut handles: Vec<nvmlGpuInstance_t> =
            vec![std::ptr::null_mut(); profile.max_instances.max(1) as usize];
        let mut count: c_uint = 0;
        // SAFETY: `handles` has room for `max_instances` handles, the most this profile can
        // have; NVML writes at most that many and sets `count`.
        nvml_try(unsafe {
            get_instances(handle(d), profile.id, handles.as_mut_ptr(), &mut count)
        })?;
        handles.truncate(count as usize);
        for gi in handles {
            // SAFETY: all-zero is a valid value of this plain C struct; `gi` is a handle NVML
            // just returned for this device.
            let mut info: nvmlGpuInstanceInfo_t = unsafe { mem::zeroed() };
            nvml_try(unsafe { get_info(gi, &mut info) })?;
            out.push(GpuInstance {
                id: info.id,
                profile_id: info.profileId,
                profile_name: profile.name.clone(),
                placement_start: info.placement.start,
                placement_size: info.placement.size,
                compute_instances: compute_instances(lib, gi, info.id, &mig_uuids)?,
            });
        }
    }
    out.sort_by_key(|gi| gi.id);
    Ok(out)
}

/// The compute instances of one GPU instance.
fn compute_instances(
    lib: &NvmlLib,
    gi: nvmlGpuInstance_t,
    gi_id: u32,
    mig_uuids: &HashMap<(u32, u32), String>,
) -> Result<Vec<ComputeInstance>, NvmlError> {
    let profile_info = nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceProfileInfoV.as_ref())?;
    let get_cis = nvml_sym(lib.nvmlGpuInstanceGetComputeInstances.as_ref())?;
    let get_ci_info = nvml_sym(lib.nvmlComputeInstanceGetInfo_v2.as_ref())?;
    let mut out = Vec::new();
    for ci_profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        // SAFETY: plain C struct, all-zero valid; versioned before the call.
        let mut pinfo: nvmlComputeInstanceProfileInfo_v2_t = unsafe { mem::zeroed() };
        pinfo.version = struct_version::<nvmlComputeInstanceProfileInfo_v2_t>(2);
        // SAFETY: `gi` is a live GPU-instance handle; `pinfo` is a live out-struct.
        let r = unsafe {
            profile_info(
                gi,
                ci_profile,
                NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                &mut pinfo,
            )
        };
        match nvml_try(r) {
            Ok(()) => {}
            // Profiles this GPU instance cannot hold are simply not there.
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) => continue,
            Err(e) => return Err(e),
        }
        let mut cis: Vec<nvmlComputeInstance_t> =
            vec![std::ptr::null_mut(); pinfo.instanceCount.max(1) as usize];
        let mut count: c_uint = 0;
        // SAFETY: `cis` has room for `instanceCount` handles, the most NVML can return.
        nvml_try(unsafe { get_cis(gi, pinfo.id, cis.as_mut_ptr(), &mut count) })?;
        cis.truncate(count as usize);
        for ci in cis {
            // SAFETY: plain C struct, all-zero valid; `ci` was just returned by NVML.
            let mut info: nvmlComputeInstanceInfo_t = unsafe { mem::zeroed() };
            nvml_try(unsafe { get_ci_info(ci, &mut info) })?;
            out.push(ComputeInstance {
                id: info.id,
                profile_id: info.profileId,
                multiprocessors: Some(pinfo.multiprocessorCount),
                mig_device_uuid: match mig_uuids.get(&(gi_id, info.id)) {
                    Some(u) => Fact::Value(u.clone()),
                    None => Fact::error(
                        lotabots_crds::evidence::ErrorCode::NotFound,
                        format!(
                            "no MIG device handle for GPU instance {gi_id}, compute instance {}",
                            info.id
                        ),
                    ),
                },
            });
        }
    }
    out.sort_by_key(|ci| ci.id);
    Ok(out)
}

/// MIG device UUIDs by (GPU-instance id, compute-instance id).
fn mig_device_uuids(lib: &NvmlLib, d: &Device) -> Result<HashMap<(u32, u32), String>, NvmlError> {
    let gi_id = nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?;
    let ci_id = nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?;
    let mut out = HashMap::new();
    for i in 0..d.mig_device_count()? {
        let mig = match d.mig_device_by_index(i) {
            Ok(m) => m,
            // Slots without a compute instance have no handle.
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(e) => return Err(e),
        };
        let (mut g, mut c): (c_uint, c_uint) = (0, 0);
        // SAFETY: `mig` is a live MIG device handle; the out-pointers are stack integers.
        nvml_try(unsafe { gi_id(handle(&mig), &mut g) })?;
        nvml_try(unsafe { ci_id(handle(&mig), &mut c) })?;
        out.insert((g, c), mig.uuid()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_a_terminator() {
        let mut buf = [0 as std::os::raw::c_char; 8];
        for (i, b) in b"MIG 1g".iter().enumerate() {
            buf[i] = *b as std::os::raw::c_char;
        }
        assert_eq!(c_name(&buf).as_deref(), Some("MIG 1g"));
        let full = [b'x' as std::os::raw::c_char; 4];
        assert_eq!(c_name(&full), None);
        assert_eq!(c_name(&[0; 4]), None);
    }

    #[test]
    fn struct_versions_match_nvml_h() {
        // NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2): sizeof | 2 << 24.
        let v = struct_version::<nvmlGpuInstanceProfileInfo_v2_t>(2);
        assert_eq!(v >> 24, 2);
        assert_eq!(
            v & 0xff_ffff,
            mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32
        );
    }
}
