//! The in-toto Statement v1 that model_signing signs: the model's root digest as the
//! subject, the serialization parameters and every resource digest as the predicate.

use std::collections::BTreeMap;

use lotabots_crds::model_attestation::HashAlgorithm;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ignore::IgnoreSet;
use crate::manifest::{Manifest, Method, ResourceKey, Serialization, root_digest};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The OpenSSF model-signing v1.0 predicate type.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// DSSE `payloadType` of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A signed payload that is not a model-signing v1.0 statement.
#[derive(Debug, thiserror::Error)]
#[error("signed statement: {0}")]
pub struct StatementError(pub String);

#[derive(Serialize, Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Predicate {
    serialization: SerializationJson,
    resources: Vec<ResourceJson>,
}

#[derive(Serialize, Deserialize)]
struct SerializationJson {
    method: String,
    hash_type: String,
    // model_signing writes it through a protobuf Struct, i.e. as a float (`1000000000.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard_size: Option<Value>,
    allow_symlinks: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ignore_paths: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ResourceJson {
    name: String,
    algorithm: String,
    digest: String,
}

/// Serializes `manifest` as the model-signing statement (the DSSE payload).
pub fn to_payload(manifest: &Manifest) -> Vec<u8> {
    let s = &manifest.serialization;
    let (method, shard_size) = match s.method {
        Method::Files => ("files", None),
        Method::Shards { shard_size } => ("shards", Some(Value::from(shard_size))),
    };
    let statement = Statement {
        type_: STATEMENT_TYPE.into(),
        subject: vec![Subject {
            name: manifest.model_name.clone(),
            digest: BTreeMap::from([("sha256".into(), hex::encode(manifest.root_digest()))]),
        }],
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Predicate {
            serialization: SerializationJson {
                method: method.into(),
                hash_type: s.hash.as_str().into(),
                shard_size,
                allow_symlinks: s.allow_symlinks,
                ignore_paths: s.ignore.paths().map(str::to_owned).collect(),
            },
            resources: manifest
                .resources
                .iter()
                .map(|(k, d)| ResourceJson {
                    name: k.to_string(),
                    algorithm: s.algorithm_name().into(),
                    digest: hex::encode(d),
                })
                .collect(),
        },
    };
    serde_json::to_vec_pretty(&statement).expect("a statement serialises")
}

/// Parses a signed payload into the manifest it describes, checking the statement and
/// predicate types, the serialization parameters, every resource and the subject digest
/// (over the resource digests in the order they are listed, as model_signing does).
pub fn from_payload(payload: &[u8]) -> Result<Manifest, StatementError> {
    let err = |m: String| StatementError(m);
    let st: Statement = serde_json::from_slice(payload)
        .map_err(|e| err(format!("not a model-signing v1.0 in-toto statement: {e}")))?;
    if st.type_ != STATEMENT_TYPE {
        return Err(err(format!(
            "_type is {:?}, expected {STATEMENT_TYPE}",
            st.type_
        )));
    }
    if st.predicate_type != PREDICATE_TYPE {
        return Err(err(format!(
            "predicateType is {:?}, expected {PREDICATE_TYPE}",
            st.predicate_type
        )));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(err(format!(
            "expected exactly one subject, found {}",
            st.subject.len()
        )));
    };
    let serialization = parse_serialization(&st.predicate.serialization)?;
    let mut resources = BTreeMap::new();
    let mut listed = Vec::with_capacity(st.predicate.resources.len());
    for r in &st.predicate.resources {
        if !serialization.accepts_algorithm(&r.algorithm) {
            return Err(err(format!(
                "resource {:?} uses algorithm {:?}, but the serialization is {}",
                r.name,
                r.algorithm,
                serialization.hash.as_str()
            )));
        }
        let key = ResourceKey::parse(&r.name, serialization.method).map_err(err)?;
        let digest = hex::decode(&r.digest)
            .ok()
            .filter(|d| d.len() == 32)
            .ok_or_else(|| err(format!("resource {:?} has a malformed digest", r.name)))?;
        listed.push(digest.clone());
        if resources.insert(key, digest).is_some() {
            return Err(err(format!("resource {:?} is listed twice", r.name)));
        }
    }
    if resources.is_empty() {
        return Err(err("the manifest lists no resource".into()));
    }
    let claimed = subject
        .digest
        .get("sha256")
        .ok_or_else(|| err("the subject has no sha256 digest".into()))?;
    let computed = hex::encode(root_digest(listed.iter().map(Vec::as_slice)));
    if !claimed.eq_ignore_ascii_case(&computed) {
        return Err(err(format!(
            "the subject digest {claimed} does not match the resources, which hash to {computed}"
        )));
    }
    Ok(Manifest {
        model_name: subject.name.clone(),
        serialization,
        resources,
    })
}

fn parse_serialization(s: &SerializationJson) -> Result<Serialization, StatementError> {
    let err = |m: String| StatementError(m);
    let hash = match s.hash_type.as_str() {
        "sha256" => HashAlgorithm::Sha256,
        "blake3" => HashAlgorithm::Blake3,
        other => {
            return Err(err(format!(
                "hash_type {other:?} is not supported (sha256, blake3)"
            )));
        }
    };
    let method = match (s.method.as_str(), &s.shard_size) {
        ("files", _) => Method::Files,
        ("shards", Some(v)) => {
            let size = v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= 2f64.powi(53))
                        .map(|f| f as u64)
                })
                .filter(|n| *n > 0)
                .ok_or_else(|| err(format!("shard_size {v} is not a positive integer")))?;
            Method::Shards { shard_size: size }
        }
        ("shards", None) => return Err(err("method shards without shard_size".into())),
        (other, _) => {
            return Err(err(format!(
                "serialization method {other:?} is not supported (files, shards)"
            )));
        }
    };
    let ignore = IgnoreSet::with_defaults(&s.ignore_paths).map_err(err)?;
    Ok(Serialization {
        method,
        hash,
        allow_symlinks: s.allow_symlinks,
        ignore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(method: Method) -> Manifest {
        let mut ser = Serialization::files(HashAlgorithm::Sha256);
        ser.method = method;
        ser.ignore.insert("model.sig").unwrap();
        let range = matches!(method, Method::Shards { .. }).then_some((0, 5));
        Manifest {
            model_name: "m".into(),
            serialization: ser,
            resources: BTreeMap::from([(
                ResourceKey {
                    path: "a.txt".into(),
                    range,
                },
                vec![1u8; 32],
            )]),
        }
    }

    #[test]
    fn round_trips_files_and_shards() {
        for method in [Method::Files, Method::Shards { shard_size: 1000 }] {
            let m = manifest(method);
            let back = from_payload(&to_payload(&m)).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn accepts_the_reference_spelling_and_float_shard_size() {
        let payload = to_payload(&manifest(Method::Shards { shard_size: 1000 }));
        let text = String::from_utf8(payload)
            .unwrap()
            .replace("\"shard_size\": 1000", "\"shard_size\": 1000.0")
            .replace(
                "\"algorithm\": \"sha256\"",
                "\"algorithm\": \"sha256-sharded-1000\"",
            );
        assert!(text.contains("1000.0") && text.contains("sha256-sharded-1000"));
        let m = from_payload(text.as_bytes()).unwrap();
        assert_eq!(m.serialization.method, Method::Shards { shard_size: 1000 });
    }

    #[test]
    fn rejects_tampered_statements() {
        let good = String::from_utf8(to_payload(&manifest(Method::Files))).unwrap();
        let digest = hex::encode([1u8; 32]);
        for (from, to, why) in [
            (digest.as_str(), &*hex::encode([2u8; 32]), "does not match"),
            ("signature/v1.0", "signature/v9", "predicateType"),
            ("\"files\"", "\"tensors\"", "method"),
            ("\"sha256\",\n", "\"blake2\",\n", "hash_type"),
            ("model.sig", "../x", "must not contain"),
        ] {
            let bad = good.replacen(from, to, 1);
            assert_ne!(bad, good, "{from}");
            let e = from_payload(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{from}: {e}");
        }
    }
}
