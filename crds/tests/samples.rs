//! Every sample in `config/samples/` parses into its Rust type, passes the Rust-side
//! validation and the CRD's CEL rules, and the H100 sample agrees with the real H100
//! record in `shared/fixtures/gpu/h100-80gb-hbm3` (its copy under agent/tests/fixtures).

use std::path::{Path, PathBuf};

use kube_cel::Validator;
use lotabots_crds::{
    GpuAttestation, ModelAttestation, crdgen,
    gpu_attestation::{DriverVersion, MigMode, is_vbios_version},
};
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn samples() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("config/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", p.display()));
            (p, v)
        })
        .collect()
}

fn schema_for(kind: &str) -> Value {
    let crd = crdgen::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"));
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

fn sample(name: &str) -> Value {
    samples()
        .into_iter()
        .find(|(p, _)| p.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("sample {name} missing"))
        .1
}

#[test]
fn every_sample_parses_validates_and_passes_cel() {
    let all = samples();
    assert!(
        all.len() >= 3,
        "expected at least 3 samples, found {}",
        all.len()
    );
    for (path, value) in all {
        let p = path.display();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        assert_eq!(value["apiVersion"], "lotabots.io/v1alpha1", "{p}");
        let res = match kind.as_str() {
            "GpuAttestation" => serde_json::from_value::<GpuAttestation>(value.clone())
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .spec
                .validate(),
            "ModelAttestation" => serde_json::from_value::<ModelAttestation>(value.clone())
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .spec
                .validate(),
            other => panic!("{p}: unexpected kind {other:?}"),
        };
        assert_eq!(res, Ok(()), "{p}");
        if let Err(errs) = Validator::new().validate(&schema_for(&kind), &value, None) {
            panic!("{p}: CEL rejected the sample: {errs}");
        }
    }
}

/// Strips NVML-wrapper Debug formatting: `Ok("x")` / `"x"` → `x`.
fn unwrap_debug(v: &Value) -> String {
    let s = v.as_str().unwrap_or_default();
    let s = s
        .strip_prefix("Ok(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    s.trim_matches('"').to_owned()
}

#[test]
fn h100_sample_admits_the_real_h100_record() {
    // The repository's copy of shared/fixtures/gpu (agent/tests/h100_fidelity.rs checks
    // that the copy equals the original wherever both exist).
    let fixture: &Path = &repo_root().join("agent/tests/fixtures/h100-80gb-hbm3/nvml-probe.json");
    let probe: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture).unwrap_or_else(|e| panic!("{}: {e}", fixture.display())),
    )
    .unwrap();
    let dev = &probe["devices"][0];
    let (product, vbios, driver) = (
        unwrap_debug(&dev["name"]),
        unwrap_debug(&dev["vbios_version"]),
        unwrap_debug(&probe["driver"]),
    );
    assert_eq!(product, "NVIDIA H100 80GB HBM3");

    let ga: GpuAttestation =
        serde_json::from_value(sample("lotabots_v1alpha1_gpuattestation_h100.yaml")).unwrap();
    let policy = &ga.spec.policy;
    assert!(policy.allowed_products.contains(&product));
    assert!(is_vbios_version(&vbios));
    assert!(
        policy
            .allowed_vbios_versions
            .iter()
            .any(|v| v.eq_ignore_ascii_case(&vbios))
    );
    let min = policy.min_driver().unwrap().unwrap();
    assert_eq!(min, "550.0".parse::<DriverVersion>().unwrap());
    assert!(
        driver.parse::<DriverVersion>().unwrap() >= min,
        "driver {driver}"
    );
    assert!(policy.ecc_required);
    assert!(!policy.confidential_computing_required);
    assert_eq!(policy.mig.as_ref().unwrap().mode, MigMode::Disabled);
    assert_eq!(
        policy.health.as_ref().unwrap().max_temperature_celsius,
        Some(85)
    );
}

#[test]
fn a100_sample_fills_the_gpu_with_mig_instances() {
    let ga: GpuAttestation =
        serde_json::from_value(sample("lotabots_v1alpha1_gpuattestation_a100_mig.yaml")).unwrap();
    let mig = ga.spec.policy.mig.unwrap();
    assert_eq!(mig.mode, MigMode::Enabled);
    let layout: Vec<(&str, u32)> = mig
        .profiles
        .iter()
        .map(|p| (p.profile.as_str(), p.count))
        .collect();
    assert_eq!(layout, [("3g.40gb", 1), ("2g.20gb", 1), ("1g.10gb", 2)]);
}

#[test]
fn model_sample_reads_s3_and_round_trips() {
    let v = sample("lotabots_v1alpha1_modelattestation_s3.yaml");
    let ma: ModelAttestation = serde_json::from_value(v.clone()).unwrap();
    assert!(ma.spec.source.uri.as_deref().unwrap().starts_with("s3://"));
    assert_eq!(ma.spec.policy.max_size_bytes(), Some(20 << 30));
    // What the types write back is what the sample says (no field lost or renamed).
    assert_eq!(serde_json::to_value(&ma).unwrap()["spec"], v["spec"]);
}

#[test]
fn node_selection_defaults_to_gpu_nodes_and_follows_the_selector() {
    use std::collections::BTreeMap;

    use lotabots_crds::gpu_attestation::GpuAttestationSpec;

    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let default = GpuAttestationSpec::default();
    assert!(default.selects(&labels(&[("nvidia.com/gpu.present", "true")])));
    assert!(!default.selects(&labels(&[("nvidia.com/gpu.present", "false")])));
    assert!(!default.selects(&labels(&[])));

    let spec: GpuAttestationSpec = serde_json::from_value(serde_json::json!({
        "nodeSelector": {"matchExpressions": [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
        ]}
    }))
    .unwrap();
    assert!(spec.selects(&labels(&[(
        "nvidia.com/gpu.product",
        "NVIDIA-H100-80GB-HBM3"
    )])));
    assert!(!spec.selects(&labels(&[(
        "nvidia.com/gpu.product",
        "NVIDIA-A100-SXM4-80GB"
    )])));

    let broken: GpuAttestationSpec = serde_json::from_value(serde_json::json!({
        "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Sideways", "values": ["v"]}]}
    }))
    .unwrap();
    assert!(
        !broken.selects(&labels(&[("k", "v")])),
        "an invalid selector selects nothing"
    );
}
