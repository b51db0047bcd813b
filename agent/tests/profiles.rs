//! Each built-in simulated profile describes the hardware it claims to.

use std::collections::BTreeSet;

use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::{SimulatedBackend, builtin_names};
use lotabots_crds::evidence::{ErrorCode, GpuEvidence, NodeEvidence};
use lotabots_crds::mig::is_known_profile_name;

fn probe(profile: &str) -> NodeEvidence {
    let b = SimulatedBackend::load(profile).unwrap_or_else(|e| panic!("{profile}: {e}"));
    collect(&b, &ProbeRequest::local("node-a")).unwrap()
}

/// Everything but identity, for comparing copies of one GPU.
fn without_identity(g: &GpuEvidence) -> serde_json::Value {
    let mut v = serde_json::to_value(g).unwrap();
    for k in ["index", "uuid", "serial", "pci"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[test]
fn every_profile_is_simulated_and_names_known_mig_profiles() {
    for name in builtin_names() {
        let e = probe(name);
        assert_eq!(e.backend.profile.as_deref(), Some(name));
        assert!(!e.gpus.is_empty(), "{name}");
        for g in &e.gpus {
            for p in g.mig.gpu_instance_profiles.value().into_iter().flatten() {
                assert!(
                    is_known_profile_name(&p.name),
                    "{name}: {} is not a known MIG profile",
                    p.name
                );
            }
        }
        // The digest is stable for the same document and changes with it.
        let d = e.digest().unwrap();
        assert_eq!(d, e.digest().unwrap());
        let mut other = e.clone();
        other.nonce = "00".repeat(32);
        assert_ne!(d, other.digest().unwrap(), "{name}");
    }
}

#[test]
fn eight_gpu_node_is_eight_distinct_h100s() {
    let e = probe("h100-sxm5-80gb-x8");
    let single = probe("h100-80gb-hbm3");
    assert_eq!(e.gpus.len(), 8);
    let ids = |f: fn(&GpuEvidence) -> String| e.gpus.iter().map(f).collect::<BTreeSet<_>>().len();
    assert_eq!(ids(|g| g.uuid.value().unwrap().clone()), 8, "UUIDs");
    assert_eq!(ids(|g| g.serial.value().unwrap().clone()), 8, "serials");
    assert_eq!(
        ids(|g| g.pci.value().unwrap().bus_id.clone()),
        8,
        "PCI buses"
    );
    for (i, g) in e.gpus.iter().enumerate() {
        assert_eq!(g.index as usize, i);
        assert_eq!(
            without_identity(g),
            without_identity(&single.gpus[0]),
            "GPU {i} keeps the real record"
        );
        assert!(g.uuid.value().unwrap().starts_with("GPU-"));
    }
}

#[test]
fn a100_has_a_mixed_mig_layout() {
    let e = probe("a100-80gb-mig");
    let g = &e.gpus[0];
    assert_eq!(g.product_name.value().unwrap(), "NVIDIA A100-SXM4-80GB");
    assert!(g.mig.enabled().unwrap());
    let profiles = g.mig.gpu_instance_profiles.value().unwrap();
    let gis = g.mig.gpu_instances.value().unwrap();
    let names: Vec<&str> = gis.iter().map(|gi| gi.profile_name.as_str()).collect();
    assert_eq!(names, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]);
    let mut used = BTreeSet::new();
    for gi in gis {
        let p = profiles
            .iter()
            .find(|p| p.id == gi.profile_id)
            .expect("instance of an offered profile");
        assert_eq!(p.name, gi.profile_name);
        assert!(
            !gi.compute_instances.is_empty(),
            "GI {} has compute instances",
            gi.id
        );
        for s in gi.placement_start..gi.placement_start + gi.placement_size {
            assert!(
                s < 8 && used.insert(s),
                "GI {} placement overlaps or overflows at slice {s}",
                gi.id
            );
        }
    }
    let migs: Vec<&String> = gis
        .iter()
        .flat_map(|gi| &gi.compute_instances)
        .map(|ci| ci.mig_device_uuid.value().unwrap())
        .collect();
    assert_eq!(
        migs.len(),
        5,
        "the 3g.40gb instance holds two compute instances"
    );
    assert!(migs.iter().all(|u| u.starts_with("MIG-")));
    assert_eq!(migs.iter().collect::<BTreeSet<_>>().len(), 5);
}

#[test]
fn faulty_node_has_exactly_the_documented_faults() {
    let e = probe("faulty-node");
    let [good, bad] = e.gpus.as_slice() else {
        panic!("two GPUs")
    };
    assert!(good.ecc_mode.value().unwrap().current);
    assert_eq!(*good.temperature_celsius.value().unwrap(), 41);
    assert_eq!(good.retired_pages.value().unwrap().double_bit_ecc, 0);

    assert!(!bad.ecc_mode.value().unwrap().current, "ECC off");
    assert_eq!(
        bad.ecc_errors.unavailable().unwrap().code,
        ErrorCode::NotSupported
    );
    let r = bad.retired_pages.value().unwrap();
    assert_eq!(
        (r.single_bit_ecc, r.double_bit_ecc, r.pending),
        (3, 2, true)
    );
    assert_eq!(*bad.temperature_celsius.value().unwrap(), 92);
    assert_ne!(good.uuid, bad.uuid);
    // Volta has neither MIG nor row remapping.
    assert_eq!(
        bad.mig.mode.unavailable().unwrap().code,
        ErrorCode::NotSupported
    );
    assert_eq!(
        bad.remapped_rows.unavailable().unwrap().code,
        ErrorCode::NotSupported
    );
}

#[test]
fn node_names_give_simulated_nodes_their_own_gpus() {
    let b = SimulatedBackend::load("h100-80gb-hbm3").unwrap();
    let a = collect(
        &b.clone().with_identity_seed("gpu-node-1"),
        &ProbeRequest::local("gpu-node-1"),
    )
    .unwrap();
    let c = collect(
        &b.with_identity_seed("gpu-node-2"),
        &ProbeRequest::local("gpu-node-2"),
    )
    .unwrap();
    assert_ne!(a.gpus[0].uuid, c.gpus[0].uuid);
    assert_ne!(a.gpus[0].serial, c.gpus[0].serial);
    assert_eq!(without_identity(&a.gpus[0]), without_identity(&c.gpus[0]));
    assert_eq!(a.node_name, "gpu-node-1");
}
