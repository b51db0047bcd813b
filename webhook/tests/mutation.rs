//! Bounded random-mutation testing of AdmissionReview decoding and policy evaluation, in
//! place of a cargo-fuzz target: seeded, so a failure reproduces, and fast enough for every
//! test run. Set LOTABOTS_MUTATION_ITERS for a longer run.
//!
//! Properties: nothing panics; every body is either answered (uid echoed, denial with a
//! message, warnings within 120 characters) or refused with a non-empty reason.

mod common;

use common::*;
use lotabots_webhook::admission::review_body;
use lotabots_webhook::policy::Policy;
use lotabots_webhook::workloads::PodBearingKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn iterations() -> usize {
    std::env::var("LOTABOTS_MUTATION_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn corpus() -> Vec<Value> {
    let mut c = vec![
        pod_review("p1", typical_spec()),
        pod_review(
            "p2",
            json!({"hostPID": true, "volumes": [{"name": "v", "hostPath": {"path": "/var/run/docker.sock"}}],
                   "containers": [container("a", json!({"securityContext": {"privileged": true, "procMount": "Unmasked",
                   "capabilities": {"add": ["SYS_ADMIN"]}}, "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
                   "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]}))]}),
        ),
        review(
            "d1",
            "DELETE",
            "",
            "v1",
            "Pod",
            None,
            Some(wrap(PodBearingKind::Pod, typical_spec())),
        ),
        review(
            "g1",
            "CREATE",
            "lotabots.io",
            "v1alpha1",
            "GpuAttestation",
            Some(json!({"spec": {"policy": {"minDriverVersion": "550.54.15",
                "mig": {"mode": "Enabled", "profiles": [{"profile": "1g.10gb", "count": 2}]}}}})),
            None,
        ),
    ];
    for kind in PodBearingKind::ALL {
        let (g, v) = match kind.api_version().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", kind.api_version()),
        };
        c.push(review(
            "w",
            "UPDATE",
            g,
            v,
            kind.as_str(),
            Some(wrap(kind, typical_spec())),
            Some(wrap(kind, json!({"containers": []}))),
        ));
    }
    c
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!(
            [
                "",
                "/",
                "/..",
                "//etc//",
                "\u{0}",
                "Enabled",
                "all",
                "é",
                "9".repeat(40).as_str()
            ][rng.random_range(0..9)]
        ),
        5 => json!("x".repeat(rng.random_range(0..300))),
        6 if depth < 4 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        7 if depth < 4 => {
            let keys = [
                "name",
                "path",
                "hostPath",
                "readOnly",
                "containers",
                "privileged",
                "add",
                "env",
                "value",
                "kind",
                "spec",
            ];
            Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_string(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
        _ => json!({}),
    }
}

/// Replaces, deletes or adds at a random node.
fn mutate_tree(rng: &mut StdRng, v: &mut Value) {
    let go_deeper = rng.random_range(0..4) != 0;
    match v {
        Value::Object(m) if !m.is_empty() && go_deeper => {
            let k = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
            match rng.random_range(0..6) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    m.insert(k, random_value(rng, 0));
                }
                _ => mutate_tree(rng, m.get_mut(&k).unwrap()),
            }
        }
        Value::Array(a) if !a.is_empty() && go_deeper => {
            let i = rng.random_range(0..a.len());
            match rng.random_range(0..6) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let x = a[i].clone();
                    a.push(x);
                }
                _ => mutate_tree(rng, &mut a[i]),
            }
        }
        _ => *v = random_value(rng, 0),
    }
}

fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            return;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..4) {
            0 => b[i] = rng.random(),
            1 => b.insert(
                i,
                [b'{', b'}', b'"', b',', b'[', b'\\', 0xff][rng.random_range(0..7)],
            ),
            2 => {
                let end = (i + rng.random_range(1..16)).min(b.len());
                b.drain(i..end);
            }
            _ => b.truncate(i),
        }
    }
}

fn check(policy: &Policy, body: &[u8]) {
    match review_body(policy, body) {
        Ok(r) => {
            let resp = &r.response.response;
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                assert_eq!(
                    Some(resp.uid.as_str()),
                    v["request"]["uid"].as_str(),
                    "uid echoed"
                );
            }
            assert_eq!(resp.allowed, resp.status.is_none());
            if let Some(s) = &resp.status {
                assert!(
                    !s.message.is_empty() && [400, 403, 422].contains(&s.code),
                    "{s:?}"
                );
            }
            assert!(
                resp.warnings.iter().all(|w| w.chars().count() <= 120),
                "{:?}",
                resp.warnings
            );
            serde_json::to_vec(&r.response).expect("response encodes");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[test]
fn mutated_reviews_never_panic() {
    let p = policy();
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(0x107A_B075);
    let n = iterations();
    let (mut answered, mut refused) = (0usize, 0usize);
    for i in 0..n {
        let mut doc = corpus[i % corpus.len()].clone();
        let body = if i % 2 == 0 {
            for _ in 0..rng.random_range(1..5) {
                // Mostly inside the object, where the evaluator works; now and then in the
                // envelope, where decoding must refuse cleanly.
                let in_object = rng.random_range(0..5) != 0 && doc["request"]["object"].is_object();
                if in_object {
                    mutate_tree(&mut rng, &mut doc["request"]["object"]);
                } else {
                    mutate_tree(&mut rng, &mut doc);
                }
            }
            doc.to_string().into_bytes()
        } else {
            let mut b = doc.to_string().into_bytes();
            mutate_bytes(&mut rng, &mut b);
            b
        };
        check(&p, &body);
        match review_body(&p, &body) {
            Ok(_) => answered += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes must be exercised, or the mutations are not reaching the evaluator.
    assert!(
        answered > n / 10 && refused > n / 10,
        "answered {answered}, refused {refused}"
    );
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let p = policy();
    let deep = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"x","kind":{{"kind":"Pod"}},"operation":"CREATE","object":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = review_body(&p, deep.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
    let mut spec = typical_spec();
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({"x": nested});
    }
    spec["containers"][0]["futureField"] = nested;
    check(&p, pod_review("deep", spec).to_string().as_bytes());
}
