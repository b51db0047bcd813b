//! The simulated backend: replays GPU profiles from YAML files.
//!
//! A profile is written in the evidence format itself (every fact a `value` or an
//! `unavailable` reason), so that anything real hardware reports — errors included — can
//! be replayed exactly. The built-in `h100-80gb-hbm3` profile reproduces the real H100
//! record in `tests/fixtures/h100-80gb-hbm3/`, and a test holds it to that record field by
//! field.
//!
//! Simulated evidence is never proof of hardware: it says `backend: simulated`.

use std::path::Path;

use lotabots_crds::evidence::{BackendInfo, BackendKind, Fact, GpuEvidence, HostFacts, NONCE_LEN};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::{BackendError, GpuBackend};

/// Profiles compiled into the binary, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "h100-80gb-hbm3",
        include_str!("../profiles/h100-80gb-hbm3.yaml"),
    ),
    (
        "h100-sxm5-80gb-x8",
        include_str!("../profiles/h100-sxm5-80gb-x8.yaml"),
    ),
    (
        "a100-80gb-mig",
        include_str!("../profiles/a100-80gb-mig.yaml"),
    ),
    ("faulty-node", include_str!("../profiles/faulty-node.yaml")),
];

/// Names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a built-in name nor an existing file.
    #[error(
        "unknown simulated profile {name:?}: built-in profiles are {known}; or give a path to a profile file"
    )]
    Unknown {
        /// What was asked for.
        name: String,
        /// The built-in names.
        known: String,
    },
    /// The file could not be read.
    #[error("cannot read simulated profile {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid profile.
    #[error("invalid simulated profile {origin}: {message}")]
    Invalid {
        /// The built-in name or file path.
        origin: String,
        /// What is wrong, with the field path or line.
        message: String,
    },
}

/// A profile file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for people reading the file
    description: String,
    host: serde_yaml::Value,
    gpus: Vec<GpuGroup>,
}

/// One or more identical GPUs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GpuGroup {
    #[serde(default = "one")]
    count: u32,
    gpu: serde_yaml::Value,
}

fn one() -> u32 {
    1
}

/// The most GPUs a profile may describe (a node holds at most a few dozen).
const MAX_GPUS: u32 = 64;

/// Replays a profile.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    name: String,
    host: HostFacts,
    gpus: Vec<GpuEvidence>,
}

impl SimulatedBackend {
    /// Loads a built-in profile by name, or a profile file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        if name_or_path.contains('/') || name_or_path.ends_with(".yaml") || path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
                path: name_or_path.to_owned(),
                source,
            })?;
            return Self::parse(&text, name_or_path);
        }
        Err(ProfileError::Unknown {
            name: name_or_path.to_owned(),
            known: builtin_names().join(", "),
        })
    }

    /// Parses a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let file: ProfileFile = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let host: HostFacts = typed("host", file.host).map_err(invalid)?;
        let total: u32 = file.gpus.iter().map(|g| g.count).sum();
        if file.gpus.is_empty() || total == 0 {
            return Err(invalid("gpus: a profile needs at least one GPU".into()));
        }
        if total > MAX_GPUS {
            return Err(invalid(format!(
                "gpus: {total} GPUs, at most {MAX_GPUS} allowed"
            )));
        }
        let mut gpus = Vec::new();
        for (g, group) in file.gpus.into_iter().enumerate() {
            let mut value = group.gpu;
            // Profiles may share a GPU between groups with YAML anchors and `<<` merges.
            value
                .apply_merge()
                .map_err(|e| invalid(format!("gpus[{g}].gpu: {e}")))?;
            if let serde_yaml::Value::Mapping(m) = &mut value {
                // The index is the GPU's place in the node, not part of the template.
                m.insert("index".into(), 0.into());
            }
            let template: GpuEvidence = typed(&format!("gpus[{g}].gpu"), value).map_err(invalid)?;
            for copy in 0..group.count {
                let mut gpu = template.clone();
                gpu.index = u32::try_from(gpus.len()).expect("bounded by MAX_GPUS");
                if copy > 0 {
                    // Copies of one template are distinct GPUs: give each its own identity.
                    derive_identity(&mut gpu, &format!("{}#{copy}", template.display_id()));
                    shift_pci_bus(&mut gpu, copy);
                }
                gpus.push(gpu);
            }
        }
        Ok(Self {
            name: file.name,
            host,
            gpus,
        })
    }

    /// The profile's name.
    pub fn profile_name(&self) -> &str {
        &self.name
    }

    /// Gives every GPU a UUID, serial and MIG device UUIDs derived from `seed` (a node
    /// name), so that simulated nodes sharing a profile are still distinct machines; every
    /// other fact of the profile is kept.
    pub fn with_identity_seed(mut self, seed: &str) -> Self {
        for gpu in &mut self.gpus {
            let key = format!("{seed}/gpu{}", gpu.index);
            derive_identity(gpu, &key);
        }
        self
    }
}

/// Deserialises one part of the profile into its evidence type, refusing unknown fields
/// (a typo in a profile must not silently drop a fact).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    at: &str,
    value: serde_yaml::Value,
) -> Result<T, String> {
    // Through JSON's data model: serde_yaml reads enums from a `Value` only as YAML tags,
    // while profiles write facts as `{value: …}` maps, as the evidence JSON does.
    let input = serde_json::to_value(&value).map_err(|e| format!("{at}: {e}"))?;
    let parsed: T = serde_json::from_value(input.clone()).map_err(|e| format!("{at}: {e}"))?;
    let back = serde_json::to_value(&parsed).map_err(|e| format!("{at}: {e}"))?;
    if let Some(extra) = first_unknown_field(&input, &back, at) {
        return Err(format!("{extra}: unknown field"));
    }
    Ok(parsed)
}

/// The path of the first object key in `input` that did not survive a round trip.
fn first_unknown_field(
    input: &serde_json::Value,
    back: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => i.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{at}.{k}")),
            Some(bv) => first_unknown_field(v, bv, &format!("{at}.{k}")),
        }),
        (Value::Array(i), Value::Array(b)) => i
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(n, (iv, bv))| first_unknown_field(iv, bv, &format!("{at}[{n}]"))),
        _ => None,
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn uuid_like(prefix: &str, h: &[u8; 32]) -> String {
    let x = hex::encode(&h[..16]);
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Replaces the identity facts (UUID, serial, MIG device UUIDs) with ones derived from `key`.
fn derive_identity(gpu: &mut GpuEvidence, key: &str) {
    let h = hash(key);
    if gpu.uuid.value().is_some() {
        gpu.uuid = Fact::Value(uuid_like("GPU", &h));
    }
    if gpu.serial.value().is_some() {
        let n = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes")) % 10_000_000_000_000;
        gpu.serial = Fact::Value(format!("{n:013}"));
    }
    if let Fact::Value(instances) = &mut gpu.mig.gpu_instances {
        for gi in instances {
            for ci in &mut gi.compute_instances {
                if ci.mig_device_uuid.value().is_some() {
                    let mh = hash(&format!("{key}/gi{}/ci{}", gi.id, ci.id));
                    ci.mig_device_uuid = Fact::Value(uuid_like("MIG", &mh));
                }
            }
        }
    }
}

/// Moves copy `n` of a template to its own PCI bus.
fn shift_pci_bus(gpu: &mut GpuEvidence, n: u32) {
    if let Fact::Value(pci) = &mut gpu.pci {
        // Bus ids read DDDDDDDD:BB:DD.F.
        let parts: Vec<&str> = pci.bus_id.split(':').collect();
        if let [domain, bus, rest] = parts.as_slice()
            && let Ok(b) = u32::from_str_radix(bus, 16)
        {
            pci.bus_id = format!("{domain}:{:02X}:{rest}", (b + n * 0x10) & 0xff);
        }
    }
}

impl GpuBackend for SimulatedBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Simulated,
            profile: Some(self.name.clone()),
        }
    }

    fn host_facts(&self) -> HostFacts {
        self.host.clone()
    }

    fn gpu_count(&self) -> Result<u32, BackendError> {
        Ok(u32::try_from(self.gpus.len()).expect("bounded by MAX_GPUS"))
    }

    fn gpu(&self, index: u32, nonce: &[u8; NONCE_LEN]) -> Result<GpuEvidence, BackendError> {
        let mut gpu =
            self.gpus
                .get(index as usize)
                .cloned()
                .ok_or_else(|| BackendError::Query {
                    query: "device_by_index",
                    message: format!("no GPU at index {index}"),
                })?;
        // A report is bound to the nonce it was requested with.
        if let Fact::Value(report) = &mut gpu.confidential_computing.attestation_report {
            report.nonce = hex::encode(nonce);
        }
        Ok(gpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_loads() {
        for name in builtin_names() {
            let b = SimulatedBackend::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(b.profile_name(), name);
        }
    }

    #[test]
    fn unknown_names_list_the_builtins() {
        let err = SimulatedBackend::load("b300").unwrap_err().to_string();
        assert!(err.contains("unknown simulated profile \"b300\""), "{err}");
        assert!(err.contains("a100-80gb-mig"), "{err}");
    }

    #[test]
    fn misspelt_and_unknown_fields_are_named() {
        let h100 = include_str!("../profiles/h100-80gb-hbm3.yaml");
        let typo = h100.replacen("temperatureCelsius:", "temperatureCelcius:", 1);
        let err = SimulatedBackend::parse(&typo, "typo.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("typo.yaml"), "{err}");
        assert!(
            err.contains("gpus[0].gpu: missing field `temperatureCelsius`"),
            "{err}"
        );
        let extra = h100.replacen(
            "      temperatureCelsius:",
            "      fanSpeed: {value: 30}\n      temperatureCelsius:",
            1,
        );
        let err = SimulatedBackend::parse(&extra, "extra.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpus[0].gpu.fanSpeed: unknown field"), "{err}");
        let bad_code = h100.replacen("code: NotSupported", "code: Broken", 1);
        let err = SimulatedBackend::parse(&bad_code, "code.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `Broken`"), "{err}");
        let err = SimulatedBackend::parse("name: [", "broken.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.yaml") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn copies_get_distinct_identities() {
        let b = SimulatedBackend::load("h100-sxm5-80gb-x8").unwrap();
        let uuids: std::collections::BTreeSet<_> = b
            .gpus
            .iter()
            .map(|g| g.uuid.value().cloned().unwrap())
            .collect();
        let buses: std::collections::BTreeSet<_> = b
            .gpus
            .iter()
            .map(|g| g.pci.value().unwrap().bus_id.clone())
            .collect();
        assert_eq!((uuids.len(), buses.len()), (8, 8));
    }

    #[test]
    fn identity_seed_changes_identity_only() {
        let base = SimulatedBackend::load("a100-80gb-mig").unwrap();
        let a = base.clone().with_identity_seed("node-a");
        let b = base.clone().with_identity_seed("node-b");
        assert_ne!(a.gpus[0].uuid, b.gpus[0].uuid);
        assert_ne!(a.gpus[0].serial, base.gpus[0].serial);
        assert_eq!(a.gpus[0].vbios_version, base.gpus[0].vbios_version);
        assert_eq!(
            a.gpus[0].mig.gpu_instance_profiles,
            base.gpus[0].mig.gpu_instance_profiles
        );
        // Same seed, same identity: a restarted agent is the same machine.
        assert_eq!(
            a.gpus[0].uuid,
            base.with_identity_seed("node-a").gpus[0].uuid
        );
    }
}
