//! Shared fixtures: a generated model directory, keys and a CA made with rcgen, and the
//! Python reference `model_signing` found through `LOTABOTS_STORES`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small model: nested directories, an empty file, names that sort differently
/// component-wise (`a/b` before `a.b`), git files that must be ignored.
pub fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("weights/deep")).unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join("a/b"), b"z").unwrap();
    std::fs::write(dir.join("a.b"), b"q").unwrap();
    std::fs::write(dir.join("config.json"), br#"{"layers": 2}"#).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("weights/model.safetensors"), &big).unwrap();
    std::fs::write(dir.join("weights/deep/shard.bin"), &big[..12_345]).unwrap();
    std::fs::write(dir.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    std::fs::write(dir.join(".gitignore"), b"*.tmp\n").unwrap();
}

/// An EC key pair as PEM (private PKCS#8, public SPKI).
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
}

pub fn write_key(
    dir: &Path,
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (KeyFiles, rcgen::KeyPair) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, kp.serialize_pem()).unwrap();
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    (KeyFiles { private, public }, kp)
}

/// A CA and a leaf it issued for signing, as PEM files.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub leaf_cert: PathBuf,
    pub leaf_key: PathBuf,
    pub leaf_der: Vec<u8>,
}

pub fn write_pki(dir: &Path, leaf_usage: rcgen::KeyUsagePurpose) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lotabots test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "model release signer");
    leaf_params.key_usages = vec![leaf_usage];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let pki = Pki {
        ca_cert: dir.join("ca.pem"),
        leaf_cert: dir.join("leaf.pem"),
        leaf_key: dir.join("leaf.key"),
        leaf_der: leaf.der().to_vec(),
    };
    std::fs::write(&pki.ca_cert, ca.pem()).unwrap();
    std::fs::write(&pki.leaf_cert, leaf.pem()).unwrap();
    std::fs::write(&pki.leaf_key, leaf_key.serialize_pem()).unwrap();
    pki
}

/// The reference implementation's Python; fails (does not skip) without `LOTABOTS_STORES`,
/// which e2e/test.sh exports.
pub fn reference_python() -> PathBuf {
    let dir = std::env::var_os("LOTABOTS_STORES").expect(
        "LOTABOTS_STORES must name the stores virtualenv's bin directory (with model_signing); e2e/test.sh exports it",
    );
    let python = PathBuf::from(dir).join("python");
    assert!(python.exists(), "{} does not exist", python.display());
    python
}

/// Runs `python -m model_signing ARGS…`, returning (success, combined output).
pub fn model_signing(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(reference_python())
        .args(["-m", "model_signing"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a Python snippet with the reference library, returning (success, output).
pub fn python(code: &str) -> (bool, String) {
    let out = Command::new(reference_python())
        .args(["-c", code])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A safetensors file with one F32 tensor of `n` values.
pub fn safetensors(n: usize) -> Vec<u8> {
    let mut header = format!(
        r#"{{"weight":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
    out
}

/// A model the safety scan and the default policy accept: a card with a licence, JSON
/// configs, safetensors weights (one nested), git files that are not part of it.
pub fn write_clean_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(
        dir.join("README.md"),
        "---\nlicense: apache-2.0\nlanguage: en\n---\n# Tiny model\n\nFor tests.\n",
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), br#"{"layers": 2}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), br#"{"vocab": {"a": 0}}"#).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors(2048)).unwrap();
    std::fs::write(dir.join("weights/extra.safetensors"), safetensors(16)).unwrap();
    std::fs::write(dir.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
}
