//! MIG (Multi-Instance GPU) profile names: the one list the CRDs, the agent, the
//! verifier and the webhook share.
//!
//! NVML identifies a GPU-instance profile by an index (`NVML_GPU_INSTANCE_PROFILE_*`) and,
//! per GPU, by an id; people and the device plugin (`nvidia.com/mig-1g.10gb`) use names
//! such as `1g.10gb`: compute slices, then memory rounded up to whole GB, then an optional
//! media-engine suffix.

/// Every GPU-instance profile name NVIDIA documents for MIG-capable products
/// (A30, A100 40/80 GB, H100 80/94/96 GB, H200 141 GB, GH200, B200).
pub const KNOWN_PROFILE_NAMES: &[&str] = &[
    // A30 24GB
    "1g.6gb",
    "1g.6gb+me",
    "2g.12gb",
    "2g.12gb+me",
    "4g.24gb",
    // A100 40GB
    "1g.5gb",
    "1g.5gb+me",
    "1g.10gb",
    "2g.10gb",
    "3g.20gb",
    "4g.20gb",
    "7g.40gb",
    // A100 80GB, H100 80GB
    "1g.10gb+me",
    "1g.20gb",
    "2g.20gb",
    "3g.40gb",
    "4g.40gb",
    "7g.80gb",
    // H100 94GB (NVL)
    "1g.12gb",
    "1g.12gb+me",
    "1g.24gb",
    "2g.24gb",
    "3g.47gb",
    "4g.47gb",
    "7g.94gb",
    // H100 96GB, GH200 96GB
    "3g.48gb",
    "4g.48gb",
    "7g.96gb",
    // H200 141GB, GH200 144GB
    "1g.18gb",
    "1g.18gb+me",
    "1g.35gb",
    "2g.35gb",
    "3g.71gb",
    "4g.71gb",
    "7g.141gb",
    "1g.36gb",
    "2g.36gb",
    "3g.72gb",
    "4g.72gb",
    "7g.144gb",
    // B200 180GB
    "1g.23gb",
    "1g.23gb+me",
    "1g.45gb",
    "2g.45gb",
    "3g.90gb",
    "4g.90gb",
    "7g.180gb",
];

/// Whether `name` is a GPU-instance profile name NVIDIA ships (see [`KNOWN_PROFILE_NAMES`]).
pub fn is_known_profile_name(name: &str) -> bool {
    KNOWN_PROFILE_NAMES.contains(&name)
}

/// The name of a GPU-instance profile from what NVML reports about it.
///
/// `profile_index` is the `NVML_GPU_INSTANCE_PROFILE_*` constant the profile was queried
/// with (it carries the media-engine variant), `slices` and `memory_mib` come from
/// `nvmlGpuInstanceProfileInfo_t`. Memory is rounded up to whole GiB, as `nvidia-smi mig
/// -lgip` prints it (9984 MiB → `1g.10gb`).
pub fn profile_name(profile_index: u32, slices: u32, memory_mib: u64) -> String {
    let gb = memory_mib.div_ceil(1024);
    let suffix = match profile_index {
        // NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1 / 2_SLICE_REV1: with the media extensions.
        7 | 8 => "+me",
        // NVML_GPU_INSTANCE_PROFILE_*_SLICE_GFX: graphics-capable profiles.
        10..=12 => "+gfx",
        // NVML_GPU_INSTANCE_PROFILE_*_SLICE_NO_ME: without media engines.
        13 | 14 => "-me",
        // NVML_GPU_INSTANCE_PROFILE_*_SLICE_ALL_ME: all media engines.
        15 | 16 => "+me.all",
        _ => "",
    };
    format!("{slices}g.{gb}gb{suffix}")
}

/// Strips the `MIG ` prefix NVML puts on profile names (`"MIG 1g.10gb"` → `"1g.10gb"`).
pub fn strip_nvml_prefix(nvml_name: &str) -> &str {
    nvml_name
        .trim()
        .strip_prefix("MIG ")
        .unwrap_or(nvml_name.trim())
}

/// The extended resource the NVIDIA device plugin advertises for a profile under the
/// `mixed` MIG strategy, e.g. `nvidia.com/mig-1g.10gb`.
pub fn resource_name(profile: &str) -> String {
    format!("nvidia.com/mig-{profile}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nvidia_smi_rounding() {
        // The H100 80GB HBM3 record (mig-lgip.txt): index, slices, MiB → name.
        let h100 = [
            (0, 1, 9984, "1g.10gb"),
            (1, 2, 20096, "2g.20gb"),
            (2, 3, 40448, "3g.40gb"),
            (3, 4, 40448, "4g.40gb"),
            (4, 7, 81152, "7g.80gb"),
            (7, 1, 9984, "1g.10gb+me"),
            (9, 1, 20096, "1g.20gb"),
        ];
        for (index, slices, mib, want) in h100 {
            assert_eq!(profile_name(index, slices, mib), want);
            assert!(
                is_known_profile_name(want),
                "{want} missing from the known list"
            );
        }
        // A100 40GB: 4864 MiB rounds up to 5 GB.
        assert_eq!(profile_name(0, 1, 4864), "1g.5gb");
    }

    #[test]
    fn unknown_names_are_rejected() {
        for bad in ["", "1g", "1g.10GB", "9g.10gb", "mig-1g.10gb", "MIG 1g.10gb"] {
            assert!(!is_known_profile_name(bad), "{bad:?} accepted");
        }
        assert_eq!(strip_nvml_prefix("MIG 1g.10gb"), "1g.10gb");
        assert_eq!(resource_name("3g.40gb"), "nvidia.com/mig-3g.40gb");
    }
}
