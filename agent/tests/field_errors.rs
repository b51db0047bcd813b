//! A query that fails marks that one fact unavailable, with its reason, and the rest of the
//! evidence still comes back — for every fact of a GPU and of the host.

use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::NodeEvidence;
use serde_json::{Value, json};

/// The h100 profile as a document, in profile-file form.
fn h100_profile() -> Value {
    let text = include_str!("../profiles/h100-80gb-hbm3.yaml");
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// JSON-pointer paths of every `{value: …}` fact in `v`.
fn fact_paths(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("value") => {
            out.push(at.clone());
            fact_paths(&m["value"], format!("{at}/value"), out);
        }
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| fact_paths(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| fact_paths(v, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn probe(profile: &Value) -> NodeEvidence {
    let text = serde_yaml::to_string(profile).unwrap();
    let b = SimulatedBackend::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
    let mut req = ProbeRequest::local("n");
    req.nonce = [7; 32];
    collect(&b, &req).unwrap()
}

/// The evidence without what changes between two probes.
fn stable(e: &NodeEvidence) -> Value {
    let mut v = serde_json::to_value(e).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("collectedAt");
    m.remove("collectionMicros");
    v
}

#[test]
fn each_failed_query_affects_only_its_own_fact() {
    let base = h100_profile();
    let mut paths = Vec::new();
    fact_paths(&base["host"], "/host".into(), &mut paths);
    fact_paths(&base["gpus"][0]["gpu"], "/gpus/0/gpu".into(), &mut paths);
    assert!(
        paths.len() >= 28,
        "found only {} facts: {paths:?}",
        paths.len()
    );
    let healthy = stable(&probe(&base));
    for path in &paths {
        let mut broken = base.clone();
        let reason = format!("injected failure at {path}");
        *broken.pointer_mut(path).unwrap() =
            json!({"unavailable": {"code": "GpuLost", "message": reason}});
        let got = stable(&probe(&broken));
        // Map the profile path to the evidence path.
        let evidence_path = path.replacen("/gpus/0/gpu", "/gpus/0", 1);
        let fact = got
            .pointer(&evidence_path)
            .unwrap_or_else(|| panic!("{evidence_path} missing"));
        assert_eq!(fact["unavailable"]["code"], "GpuLost", "{path}");
        assert_eq!(fact["unavailable"]["message"], reason.as_str(), "{path}");
        // Everything else is as healthy.
        let mut restored = got.clone();
        *restored.pointer_mut(&evidence_path).unwrap() =
            healthy.pointer(&evidence_path).unwrap().clone();
        assert_eq!(restored, healthy, "a failure at {path} changed other facts");
    }
}
