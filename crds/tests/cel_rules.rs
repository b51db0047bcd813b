//! The CEL rules (`x-kubernetes-validations`) of the generated CRD schemas, evaluated
//! offline with kube-cel: every rule compiles, is cheap enough for the API server's cost
//! budget, has a message, and rejects exactly the bad specs it is meant to, with the
//! Rust-side `validate()` agreeing on every case.

use kube_cel::{Validator, compile_schema, estimate_rule_cost};
use lotabots_crds::{GpuAttestation, ModelAttestation, crdgen};
use serde_json::{Value, json};

fn schema(plural: &str) -> Value {
    let crd = crdgen::all_crds()
        .into_iter()
        .find(|c| c.spec.names.plural == plural)
        .unwrap();
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

/// The messages of the CEL rules `obj` breaks.
fn cel_errors(schema: &Value, obj: &Value) -> Vec<String> {
    match Validator::new().validate(schema, obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs.iter().map(|e| e.message.clone()).collect(),
    }
}

/// Sets `value` at the JSON pointer `ptr` (creating objects on the way), or removes the
/// field when `value` is null.
fn with(base: &Value, ptr: &str, value: Value) -> Value {
    let mut obj = base.clone();
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    let mut node = &mut obj;
    for seg in parent.split('/').skip(1) {
        node = match node {
            Value::Array(items) => &mut items[seg.parse::<usize>().unwrap()],
            _ => node
                .as_object_mut()
                .unwrap()
                .entry(seg)
                .or_insert_with(|| json!({})),
        };
    }
    match (node, value.is_null()) {
        (Value::Array(items), _) => items[key.parse::<usize>().unwrap()] = value,
        (node, true) => {
            node.as_object_mut().unwrap().remove(key);
        }
        (node, false) => node[key] = value,
    }
    obj
}

fn good_gpu() -> Value {
    json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "GpuAttestation",
        "metadata": {"name": "h100"},
        "spec": {
            "reattestationInterval": "10m",
            "policy": {
                "allowedProducts": ["NVIDIA H100 80GB HBM3"],
                "minDriverVersion": "550.54.15",
                "allowedVbiosVersions": ["96.00.DA.00.0C"],
                "eccRequired": true,
                "mig": {"mode": "Enabled", "profiles": [
                    {"profile": "3g.40gb", "count": 1},
                    {"profile": "2g.20gb", "count": 1},
                    {"profile": "1g.10gb", "count": 2}
                ]},
                "health": {"maxTemperatureCelsius": 85}
            },
            "workloadCheck": {"image": "ghcr.io/lotabots/gpu-selftest:v1"}
        }
    })
}

fn good_model() -> Value {
    json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "ModelAttestation",
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {
            "source": {"uri": "s3://models/llama/", "credentialsSecretRef": {"name": "reader"}},
            "integrity": {"algorithm": "sha256", "shardSizeBytes": 1000000000u64},
            "signature": {"bundle": "model.sig",
                          "publicKey": {"secretKeyRef": {"name": "signers", "key": "pub"}}},
            "policy": {"allowedFormats": ["safetensors"], "allowedLicenses": ["Apache-2.0"],
                       "maxSize": "20Gi"},
            "behaviour": {"image": "ghcr.io/lotabots/probe:v1",
                          "probes": {"name": "probes", "key": "probes.yaml"},
                          "gpuCount": 1}
        }
    })
}

fn rust_gpu(obj: &Value) -> Result<(), Vec<lotabots_crds::gpu_attestation::FieldError>> {
    let ga: GpuAttestation = serde_json::from_value(obj.clone()).expect("deserializes");
    ga.spec.validate()
}

fn rust_model(obj: &Value) -> Result<(), Vec<lotabots_crds::gpu_attestation::FieldError>> {
    let ma: ModelAttestation = serde_json::from_value(obj.clone()).expect("deserializes");
    ma.spec.validate()
}

/// Checks one case on both sides: CEL (with the message expected, or none) and Rust.
fn case(
    schema: &Value,
    obj: Value,
    expect: Option<&str>,
    rust: fn(&Value) -> Result<(), Vec<lotabots_crds::gpu_attestation::FieldError>>,
    label: &str,
) {
    let errs = cel_errors(schema, &obj);
    match expect {
        None => {
            assert!(
                errs.is_empty(),
                "{label}: CEL rejected a good spec: {errs:?}"
            );
            assert_eq!(
                rust(&obj),
                Ok(()),
                "{label}: validate() rejected a good spec"
            );
        }
        Some(msg) => {
            assert!(
                errs.iter().any(|e| e.contains(msg)),
                "{label}: expected CEL message containing {msg:?}, got {errs:?}"
            );
            assert!(
                rust(&obj).is_err(),
                "{label}: validate() accepted a bad spec"
            );
        }
    }
}

#[test]
fn every_rule_compiles_has_a_message_and_fits_the_cost_budget() {
    fn walk(node: &Value, path: &str, count: &mut usize) {
        if let Some(rules) = node["x-kubernetes-validations"].as_array() {
            let compiled = compile_schema(node);
            assert!(
                !compiled.has_errors(),
                "{path}: {:?}",
                compiled.compilation_errors()
            );
            for r in rules {
                *count += 1;
                let rule = r["rule"].as_str().unwrap();
                let msg = r["message"].as_str().unwrap_or_default();
                assert!(!msg.is_empty(), "{path}: rule {rule:?} has no message");
                let warnings = estimate_rule_cost(rule, &compiled);
                assert!(warnings.is_empty(), "{path}: {rule:?}: {warnings:?}");
            }
        }
        if let Some(props) = node["properties"].as_object() {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), count);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), count);
        }
    }
    let mut count = 0;
    walk(&schema("gpuattestations"), "GpuAttestation", &mut count);
    let gpu_rules = count;
    walk(&schema("modelattestations"), "ModelAttestation", &mut count);
    assert_eq!(
        (gpu_rules, count - gpu_rules),
        (8, 18),
        "rule counts changed"
    );
}

#[test]
fn gpu_attestation_rules() {
    let s = schema("gpuattestations");
    let g = good_gpu();
    case(&s, g.clone(), None, rust_gpu, "good");
    case(
        &s,
        with(&g, "/spec/reattestationInterval", Value::Null),
        None,
        rust_gpu,
        "defaulted interval",
    );
    case(
        &s,
        with(&g, "/spec/reattestationInterval", json!("1h30m")),
        None,
        rust_gpu,
        "1h30m",
    );
    case(
        &s,
        with(&g, "/spec/policy/minDriverVersion", json!("550")),
        None,
        rust_gpu,
        "550",
    );
    case(
        &s,
        with(
            &g,
            "/spec/policy/mig/profiles/0/profile",
            json!("1g.10gb+me"),
        ),
        None,
        rust_gpu,
        "+me",
    );
    case(
        &s,
        with(&g, "/spec/workloadCheck/timeout", json!("1h")),
        None,
        rust_gpu,
        "1h timeout",
    );
    case(
        &s,
        with(
            &with(&g, "/spec/workloadCheck/minBandwidthGbps", json!(1500.5)),
            "/spec/workloadCheck/required",
            json!(false),
        ),
        None,
        rust_gpu,
        "bandwidth floor, not required",
    );

    let interval = "spec.reattestationInterval must be a duration";
    for bad in ["30s", "169h", "10x", "", "1d", "10 m"] {
        case(
            &s,
            with(&g, "/spec/reattestationInterval", json!(bad)),
            Some(interval),
            rust_gpu,
            bad,
        );
    }
    let driver = "spec.policy.minDriverVersion must be a driver version";
    for bad in ["v550", "550.54.15.1", "550.", "55000.1"] {
        case(
            &s,
            with(&g, "/spec/policy/minDriverVersion", json!(bad)),
            Some(driver),
            rust_gpu,
            bad,
        );
    }
    case(
        &s,
        with(
            &g,
            "/spec/policy/allowedVbiosVersions",
            json!(["96.00.DA.00.0C", "96.00"]),
        ),
        Some("spec.policy.allowedVbiosVersions entries must be VBIOS versions"),
        rust_gpu,
        "vbios",
    );
    let mig_mode = "spec.policy.mig.profiles may only be set when spec.policy.mig.mode is Enabled";
    for mode in [json!("Disabled"), json!("Any"), Value::Null] {
        case(
            &s,
            with(&g, "/spec/policy/mig/mode", mode.clone()),
            Some(mig_mode),
            rust_gpu,
            "mode",
        );
    }
    let profile = "spec.policy.mig.profiles[].profile must be a MIG profile name";
    for bad in ["3g.40GB", "9g.10gb", "3g40gb", "1g.10gb+xx"] {
        case(
            &s,
            with(&g, "/spec/policy/mig/profiles/0/profile", json!(bad)),
            Some(profile),
            rust_gpu,
            bad,
        );
    }
    let count = "spec.policy.mig.profiles[].count must be between 1 and 7";
    for bad in [0, 8] {
        case(
            &s,
            with(&g, "/spec/policy/mig/profiles/2/count", json!(bad)),
            Some(count),
            rust_gpu,
            "count",
        );
    }
    let bandwidth = "spec.workloadCheck.minBandwidthGbps must be greater than 0";
    for bad in [json!(0.0), json!(-1.5)] {
        case(
            &s,
            with(&g, "/spec/workloadCheck/minBandwidthGbps", bad.clone()),
            Some(bandwidth),
            rust_gpu,
            "bandwidth",
        );
    }
    let timeout = "spec.workloadCheck.timeout must be a duration";
    for bad in ["0s", "2h", "5", ""] {
        case(
            &s,
            with(&g, "/spec/workloadCheck/timeout", json!(bad)),
            Some(timeout),
            rust_gpu,
            bad,
        );
    }
}

#[test]
fn model_attestation_rules() {
    let s = schema("modelattestations");
    let m = good_model();
    case(&s, m.clone(), None, rust_model, "good");
    let pvc = with(
        &with(
            &m,
            "/spec/source",
            json!({"pvc": {"claimName": "models", "path": "llama/8b"}}),
        ),
        "/spec/source/pvc/path",
        json!("llama/8b"),
    );
    case(&s, pvc.clone(), None, rust_model, "pvc");
    case(
        &s,
        with(&pvc, "/spec/source/pvc/path", json!("..weights")),
        None,
        rust_model,
        "..weights",
    );
    for ok in [
        "gs://bucket/path",
        "file:///models/llama",
        "s3://my.bucket-1",
    ] {
        let src = json!({"uri": ok});
        case(&s, with(&m, "/spec/source", src), None, rust_model, ok);
    }
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    case(
        &s,
        with(&m, "/spec/integrity/expectedDigest", json!(digest)),
        None,
        rust_model,
        "digest",
    );
    case(
        &s,
        with(&m, "/spec/integrity/algorithm", json!("blake3")),
        None,
        rust_model,
        "blake3",
    );
    for ok in [
        "sigs/model.sig",
        "s3://models/llama.sig",
        "file:///sigs/m.sig",
    ] {
        case(
            &s,
            with(&m, "/spec/signature/bundle", json!(ok)),
            None,
            rust_model,
            ok,
        );
    }
    case(
        &s,
        with(&m, "/spec/policy/maxSize", json!(21474836480u64)),
        None,
        rust_model,
        "int size",
    );
    let pytorch = with(
        &m,
        "/spec/policy/allowedFormats",
        json!(["safetensors", "pytorch"]),
    );
    case(
        &s,
        with(&pytorch, "/spec/policy/pickle", json!("AllowSafeGlobals")),
        None,
        rust_model,
        "pytorch+safe",
    );
    case(
        &s,
        with(&m, "/spec/behaviour/gpuCount", Value::Null),
        None,
        rust_model,
        "no gpuCount",
    );
    let mig = with(&m, "/spec/behaviour/gpuCount", Value::Null);
    case(
        &s,
        with(&mig, "/spec/behaviour/migProfile", json!("1g.10gb")),
        None,
        rust_model,
        "mig",
    );

    let one_source = "spec.source must set exactly one of uri or pvc";
    case(
        &s,
        with(&m, "/spec/source/pvc", json!({"claimName": "x"})),
        Some(one_source),
        rust_model,
        "both",
    );
    case(
        &s,
        with(&m, "/spec/source", json!({})),
        Some(one_source),
        rust_model,
        "neither",
    );
    let uri = "spec.source.uri must be";
    for bad in [
        "https://models/x",
        "s3://Bad/x",
        "s3://",
        "file://relative",
        "gs://-x/y",
    ] {
        case(
            &s,
            with(&m, "/spec/source/uri", json!(bad)),
            Some(uri),
            rust_model,
            bad,
        );
    }
    let creds = "spec.source.credentialsSecretRef may only be set";
    case(
        &s,
        with(&m, "/spec/source/uri", json!("file:///models/x")),
        Some(creds),
        rust_model,
        "creds+file",
    );
    let claim = "spec.source.pvc.claimName must be a DNS subdomain";
    case(
        &s,
        with(&pvc, "/spec/source/pvc/claimName", json!("Bad_Name")),
        Some(claim),
        rust_model,
        "claim",
    );
    let path = "spec.source.pvc.path must be relative";
    for bad in ["/abs", "a/../b", "..", "../x"] {
        case(
            &s,
            with(&pvc, "/spec/source/pvc/path", json!(bad)),
            Some(path),
            rust_model,
            bad,
        );
    }
    let hex = "spec.integrity.expectedDigest must be 64 lowercase hex";
    for bad in ["abc", &digest.to_uppercase(), &format!("{digest}00")] {
        case(
            &s,
            with(&m, "/spec/integrity/expectedDigest", json!(bad)),
            Some(hex),
            rust_model,
            bad,
        );
    }
    case(
        &s,
        with(&m, "/spec/integrity/shardSizeBytes", json!(0)),
        Some("spec.integrity.shardSizeBytes must be greater than 0"),
        rust_model,
        "shard",
    );
    let one_key = "spec.signature must set exactly one of publicKey or certificate";
    let cert = json!({"configMapKeyRef": {"name": "c", "key": "k"}});
    case(
        &s,
        with(&m, "/spec/signature/certificate", cert),
        Some(one_key),
        rust_model,
        "both keys",
    );
    case(
        &s,
        with(&m, "/spec/signature/publicKey", Value::Null),
        Some(one_key),
        rust_model,
        "no key",
    );
    let both_refs = json!({"secretKeyRef": {"name": "a", "key": "b"}, "configMapKeyRef": {"name": "a", "key": "b"}});
    case(
        &s,
        with(&m, "/spec/signature/publicKey", both_refs),
        Some("a key reference must set exactly one of secretKeyRef or configMapKeyRef"),
        rust_model,
        "both refs",
    );
    let bundle = "spec.signature.bundle must be";
    for bad in [
        "../model.sig",
        "/abs/model.sig",
        "https://x/model.sig",
        "sigs/../../x",
        "",
    ] {
        case(
            &s,
            with(&m, "/spec/signature/bundle", json!(bad)),
            Some(bundle),
            rust_model,
            bad,
        );
    }
    let pickle = "spec.policy.allowedFormats includes pickle or pytorch";
    case(&s, pytorch, Some(pickle), rust_model, "pytorch+deny");
    case(
        &s,
        with(&m, "/spec/policy/allowedFormats", json!(["pickle"])),
        Some(pickle),
        rust_model,
        "pickle+deny",
    );
    case(
        &s,
        with(
            &m,
            "/spec/policy/allowedLicenses",
            json!(["MIT", "not spdx"]),
        ),
        Some("spec.policy.allowedLicenses entries must be SPDX"),
        rust_model,
        "spdx",
    );
    let size = "spec.policy.maxSize must be a positive quantity";
    for bad in [json!("lots"), json!("0"), json!(0)] {
        case(
            &s,
            with(&m, "/spec/policy/maxSize", bad.clone()),
            Some(size),
            rust_model,
            "size",
        );
    }
    case(
        &s,
        with(&m, "/spec/behaviour/migProfile", json!("1g.10gb")),
        Some("spec.behaviour must set gpuCount or migProfile, not both"),
        rust_model,
        "gpu+mig",
    );
    let gpus = "spec.behaviour.gpuCount must be between 1 and 8";
    for bad in [0, 9] {
        case(
            &s,
            with(&m, "/spec/behaviour/gpuCount", json!(bad)),
            Some(gpus),
            rust_model,
            "gpus",
        );
    }
    case(
        &s,
        with(&mig, "/spec/behaviour/migProfile", json!("big")),
        Some("spec.behaviour.migProfile must be a MIG profile name"),
        rust_model,
        "migProfile",
    );
    let timeout = "spec.behaviour.timeout must be a duration";
    for bad in ["0s", "25h", "15"] {
        case(
            &s,
            with(&m, "/spec/behaviour/timeout", json!(bad)),
            Some(timeout),
            rust_model,
            bad,
        );
    }
}
