//! The checked-in CRD manifests are exactly what the Rust types generate, and the generated
//! CRDs have the shape the project relies on (names, scope, columns, list-maps, bounds).

use std::path::PathBuf;

use lotabots_crds::crdgen;
use serde_json::Value;

fn bases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd/bases")
}

fn crd_json(plural: &str) -> Value {
    let crd = crdgen::all_crds()
        .into_iter()
        .find(|c| c.spec.names.plural == plural)
        .expect("CRD exists");
    serde_json::to_value(crd).unwrap()
}

fn schema_at<'a>(crd: &'a Value, path: &[&str]) -> &'a Value {
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for p in path {
        node = if *p == "[]" {
            &node["items"]
        } else {
            &node["properties"][*p]
        };
    }
    assert!(!node.is_null(), "no schema at {path:?}");
    node
}

#[test]
fn checked_in_manifests_match_the_types() {
    let drifts = crdgen::check_all(&bases_dir());
    assert!(
        drifts.is_empty(),
        "config/crd/bases is out of date; run `{}`:\n{}",
        crdgen::REGENERATE_COMMAND,
        drifts
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn checked_in_manifests_parse_back_to_the_crds() {
    for crd in crdgen::all_crds() {
        let path = bases_dir().join(crdgen::crd_file_name(&crd));
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::to_value(&crd).unwrap(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn names_scope_columns_and_subresources() {
    let gpu = crd_json("gpuattestations");
    assert_eq!(gpu["spec"]["group"], "lotabots.io");
    assert_eq!(gpu["spec"]["scope"], "Cluster");
    assert_eq!(
        gpu["spec"]["names"]["shortNames"],
        serde_json::json!(["gpuatt"])
    );
    assert_eq!(
        gpu["spec"]["names"]["categories"],
        serde_json::json!(["lotabots"])
    );
    let v = &gpu["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        ["Ready", "Matched", "Attested", "Failed", "Unknown", "Age"]
    );

    let model = crd_json("modelattestations");
    assert_eq!(model["spec"]["scope"], "Namespaced");
    assert_eq!(
        model["spec"]["names"]["shortNames"],
        serde_json::json!(["modelatt"])
    );
    assert_eq!(
        model["spec"]["names"]["categories"],
        serde_json::json!(["lotabots"])
    );
    let v = &model["spec"]["versions"][0];
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let cols = v["additionalPrinterColumns"].as_array().unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Ready", "Verdict", "Digest", "Age"]);
    assert_eq!(cols[2]["priority"], 1);
}

#[test]
fn shared_lists_are_list_maps_and_status_is_bounded() {
    let gpu = crd_json("gpuattestations");
    let nodes = schema_at(&gpu, &["status", "nodes"]);
    assert_eq!(nodes["x-kubernetes-list-type"], "map");
    assert_eq!(
        nodes["x-kubernetes-list-map-keys"],
        serde_json::json!(["node"])
    );
    assert_eq!(nodes["maxItems"], 100);
    assert!(
        nodes["description"]
            .as_str()
            .unwrap()
            .contains("failing nodes first")
    );
    assert_eq!(
        schema_at(&gpu, &["status", "nodes", "[]", "reasons"])["maxItems"],
        8
    );
    let profiles = schema_at(&gpu, &["spec", "policy", "mig", "profiles"]);
    assert_eq!(
        profiles["x-kubernetes-list-map-keys"],
        serde_json::json!(["profile"])
    );
    for crd in [&gpu, &crd_json("modelattestations")] {
        let conds = schema_at(crd, &["status", "conditions"]);
        assert_eq!(conds["x-kubernetes-list-type"], "map");
        assert_eq!(
            conds["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

/// Every field a user sees in `kubectl explain` has a description.
#[test]
fn every_field_is_described() {
    fn walk(node: &Value, path: String, missing: &mut Vec<String>) {
        if let Some(props) = node["properties"].as_object() {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                if v["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(p.clone());
                }
                walk(v, p, missing);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], format!("{path}[]"), missing);
        }
    }
    for plural in ["gpuattestations", "modelattestations"] {
        let crd = crd_json(plural);
        let mut missing = Vec::new();
        walk(schema_at(&crd, &["spec"]), "spec".into(), &mut missing);
        walk(schema_at(&crd, &["status"]), "status".into(), &mut missing);
        assert!(
            missing.is_empty(),
            "{plural}: undocumented fields {missing:?}"
        );
    }
}
