//! `lotabots-operator attest-model` as a process: output formats and the exit-code
//! contract (0 passed, 1 failed with every objected file named, 2 unusable input).

use std::path::Path;

use assert_cmd::Command;
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_model::hashing::HashOptions;
use lotabots_model::keys::SigningKey;
use lotabots_model::manifest::Serialization;
use lotabots_model::sign_model;
use lotabots_model::source::LocalSource;
use predicates::str::contains;

/// A safetensors file of one F32 tensor with `n` values, all `v`.
fn safetensors(n: usize, v: f32) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(v.to_le_bytes(), n).flatten());
    out
}

/// A two-file model with our signature inside it; returns the public key's path.
fn signed_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(model.join("weights")).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    std::fs::write(
        model.join("weights/model.safetensors"),
        safetensors(17_500, 3.0),
    )
    .unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = dir.join("signer.pub");
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    let key = SigningKey::from_pem(&kp.serialize_pem()).unwrap();
    let (_, bundle) = sign_model(
        &LocalSource::new(&model).unwrap(),
        Serialization::files(HashAlgorithm::Sha256),
        Some("model.sig"),
        &key,
        None,
        &HashOptions::default(),
    )
    .unwrap();
    std::fs::write(model.join("model.sig"), bundle.to_json()).unwrap();
    public
}

fn cmd() -> Command {
    let mut c = Command::cargo_bin("lotabots-operator").unwrap();
    c.env_remove("LOTABOTS_FORMAT")
        .env_remove("LOTABOTS_POLICY");
    c
}

#[test]
fn intact_model_exits_0_with_a_json_report() {
    let tmp = tempfile::tempdir().unwrap();
    let public = signed_model(tmp.path());
    let out = cmd()
        .arg("attest-model")
        .arg(tmp.path().join("model"))
        .arg("--public-key")
        .arg(&public)
        .args(["--format", "json"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["verdict"], "Attested");
    assert_eq!(report["files"], 2);
    assert_eq!(report["stages"][1]["stage"], "SignatureVerified");
    assert_eq!(report["stages"][1]["status"], "Passed");
}

#[test]
fn tampered_model_exits_1_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let public = signed_model(tmp.path());
    let model = tmp.path().join("model");
    std::fs::write(
        model.join("weights/model.safetensors"),
        safetensors(17_500, 4.0),
    )
    .unwrap();
    cmd()
        .arg("attest-model")
        .arg(format!("file://{}", model.display()))
        .arg("--public-key")
        .arg(&public)
        .assert()
        .code(1)
        .stdout(contains("DigestMismatch"))
        .stdout(contains("weights/model.safetensors: modified"));
}

#[test]
fn unusable_input_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    signed_model(tmp.path());
    let bad = tmp.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    cmd()
        .arg("attest-model")
        .arg(tmp.path().join("model"))
        .arg("--public-key")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(contains("bad.pem"))
        .stderr(contains("P-256 or P-384"));
    // Both trust flags at once is a usage error too.
    cmd()
        .arg("attest-model")
        .arg(tmp.path().join("model"))
        .arg("--public-key")
        .arg(&bad)
        .arg("--certificate-chain")
        .arg(&bad)
        .assert()
        .code(2);
}

/// Object-store models are read with the environment's settings; an unreachable store or
/// a half-given credential is unusable input naming the location or the variable.
#[test]
fn object_store_problems_exit_2_naming_them() {
    // Nothing listens on port 1: the listing is refused at once.
    for (uri, endpoint) in [
        ("s3://models/llama", "AWS_ENDPOINT_URL"),
        ("gs://models/llama", "GCS_ENDPOINT_URL"),
    ] {
        cmd()
            .args(["attest-model", uri])
            .env(endpoint, "http://127.0.0.1:1")
            .env("GCS_ANONYMOUS", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .assert()
            .code(2)
            .stderr(contains(uri));
    }
    cmd()
        .args(["attest-model", "s3://models/llama"])
        .env("AWS_ACCESS_KEY_ID", "AKID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .assert()
        .code(2)
        .stderr(contains("AWS_SECRET_ACCESS_KEY"));
}
