//! Two-way interoperability with the Python reference `model_signing` 1.x: bundles it
//! signs verify with ours, bundles we sign verify with it, for keys (P-256, P-384) and
//! certificate chains; and our manifests equal its manifests byte for byte (files and
//! shards, SHA-256 and BLAKE3). Needs `LOTABOTS_STORES` (fails without it).

mod common;

use std::ffi::OsStr;
use std::path::Path;

use jiff::Timestamp;
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_model::bundle::{Bundle, Trust};
use lotabots_model::chain::certificates_from_pem;
use lotabots_model::hashing::{HashOptions, hash_model};
use lotabots_model::keys::{PublicKey, SigningKey};
use lotabots_model::manifest::{Problem, Serialization};
use lotabots_model::source::LocalSource;
use lotabots_model::{sign_model, verify_model};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn key_trust(public: &Path) -> Trust {
    Trust::PublicKey(PublicKey::from_pem(&std::fs::read_to_string(public).unwrap()).unwrap())
}

fn ca_trust(ca: &Path) -> Trust {
    Trust::CertificateAuthorities {
        anchors: certificates_from_pem(&std::fs::read(ca).unwrap()).unwrap(),
        at: Timestamp::now(),
    }
}

fn read_bundle(path: &Path) -> Bundle {
    Bundle::from_json(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn reference_key_signatures_verify_with_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let (keys, _) = common::write_key(tmp.path(), name, alg);
        // The signature inside the model, as model_signing's default puts it.
        let sig = model.join("model.sig");
        let (ok, out) = common::model_signing(&[
            os("sign"),
            os("key"),
            model.as_os_str(),
            os("--private_key"),
            keys.private.as_os_str(),
            os("--signature"),
            sig.as_os_str(),
        ]);
        assert!(ok, "{out}");
        let src = LocalSource::new(&model).unwrap();
        let v = verify_model(
            &src,
            &read_bundle(&sig),
            &key_trust(&keys.public),
            Some("model.sig"),
            &HashOptions::default(),
        )
        .unwrap();
        assert!(v.problems.is_empty(), "{name}: {:?}", v.problems);
        assert_eq!(v.signer.method, "key");
        assert_eq!(
            v.signed.file_count(),
            6,
            "{name}: git files and the signature are left out"
        );
    }

    // A key that did not sign is refused, naming both keys' hints.
    let (other, _) = common::write_key(tmp.path(), "other", &rcgen::PKCS_ECDSA_P256_SHA256);
    let e = verify_model(
        &LocalSource::new(&model).unwrap(),
        &read_bundle(&model.join("model.sig")),
        &key_trust(&other.public),
        Some("model.sig"),
        &HashOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("signed by another key"), "{e}");
}

#[test]
fn tampered_files_are_named_missing_extra_or_modified() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    let (keys, _) = common::write_key(tmp.path(), "k", &rcgen::PKCS_ECDSA_P256_SHA256);
    let sig = tmp.path().join("model.sig");
    let (ok, out) = common::model_signing(&[
        os("sign"),
        os("key"),
        model.as_os_str(),
        os("--private_key"),
        keys.private.as_os_str(),
        os("--signature"),
        sig.as_os_str(),
    ]);
    assert!(ok, "{out}");
    std::fs::write(model.join("config.json"), br#"{"layers": 3}"#).unwrap();
    std::fs::write(model.join("weights/extra.pkl"), b"\x80\x04").unwrap();
    std::fs::remove_file(model.join("a/b")).unwrap();
    let v = verify_model(
        &LocalSource::new(&model).unwrap(),
        &read_bundle(&sig),
        &key_trust(&keys.public),
        None,
        &HashOptions::default(),
    )
    .unwrap();
    let got: Vec<(&str, Problem)> = v
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.problem))
        .collect();
    assert_eq!(
        got,
        [
            ("a/b", Problem::Missing),
            ("config.json", Problem::Mismatch),
            ("weights/extra.pkl", Problem::Extra),
        ]
    );
}

#[test]
fn our_key_signatures_verify_with_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let (keys, _) = common::write_key(tmp.path(), name, alg);
        let key = SigningKey::from_pem(&std::fs::read_to_string(&keys.private).unwrap()).unwrap();
        let src = LocalSource::new(&model).unwrap();
        let (_, bundle) = sign_model(
            &src,
            Serialization::files(HashAlgorithm::Sha256),
            Some("model.sig"),
            &key,
            None,
            &HashOptions::default(),
        )
        .unwrap();
        let sig = model.join("model.sig");
        std::fs::write(&sig, bundle.to_json()).unwrap();
        let (ok, out) = common::model_signing(&[
            os("verify"),
            os("key"),
            model.as_os_str(),
            os("--public_key"),
            keys.public.as_os_str(),
            os("--signature"),
            sig.as_os_str(),
        ]);
        assert!(
            ok && out.contains("Verification succeeded"),
            "{name}: {out}"
        );
        assert!(
            !out.contains("WARNING"),
            "{name}: our key hint must match the reference's: {out}"
        );

        // And the reference rejects it once a file changes: it checks, not just parses.
        std::fs::write(model.join("empty"), b"now not empty").unwrap();
        let (ok, out) = common::model_signing(&[
            os("verify"),
            os("key"),
            model.as_os_str(),
            os("--public_key"),
            keys.public.as_os_str(),
            os("--signature"),
            sig.as_os_str(),
        ]);
        assert!(!ok && out.contains("empty"), "{name}: {out}");
        std::fs::write(model.join("empty"), b"").unwrap();
    }
}

#[test]
fn certificate_chains_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    let pki = common::write_pki(tmp.path(), rcgen::KeyUsagePurpose::DigitalSignature);

    // Reference signs with the certificate; ours verifies against the CA.
    let sig = tmp.path().join("ref-cert.sig");
    let (ok, out) = common::model_signing(&[
        os("sign"),
        os("certificate"),
        model.as_os_str(),
        os("--private_key"),
        pki.leaf_key.as_os_str(),
        os("--signing_certificate"),
        pki.leaf_cert.as_os_str(),
        os("--certificate_chain"),
        pki.ca_cert.as_os_str(),
        os("--signature"),
        sig.as_os_str(),
    ]);
    assert!(ok, "{out}");
    let src = LocalSource::new(&model).unwrap();
    let v = verify_model(
        &src,
        &read_bundle(&sig),
        &ca_trust(&pki.ca_cert),
        None,
        &HashOptions::default(),
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.signer.method, "certificate");
    assert!(
        v.signer.identity.contains("model release signer"),
        "{}",
        v.signer.identity
    );

    // A different CA is refused.
    let other = tempfile::tempdir().unwrap();
    let other_pki = common::write_pki(other.path(), rcgen::KeyUsagePurpose::DigitalSignature);
    let e = verify_model(
        &src,
        &read_bundle(&sig),
        &ca_trust(&other_pki.ca_cert),
        None,
        &HashOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not issued by a trusted CA"), "{e}");
    // A public key is not a CA: the bundle says certificate, so it is refused clearly.
    let (keys, _) = common::write_key(tmp.path(), "k", &rcgen::PKCS_ECDSA_P256_SHA256);
    let e = read_bundle(&sig)
        .verify(&key_trust(&keys.public))
        .unwrap_err();
    assert!(e.to_string().contains("certificate chain"), "{e}");

    // Ours signs with the certificate (+ CA in the chain); the reference verifies.
    let key = SigningKey::from_pem(&std::fs::read_to_string(&pki.leaf_key).unwrap()).unwrap();
    let ca_der = certificates_from_pem(&std::fs::read(&pki.ca_cert).unwrap()).unwrap();
    let chain = [pki.leaf_der.clone(), ca_der[0].clone()];
    let (_, bundle) = sign_model(
        &src,
        Serialization::files(HashAlgorithm::Sha256),
        None,
        &key,
        Some(&chain),
        &HashOptions::default(),
    )
    .unwrap();
    let ours = tmp.path().join("ours-cert.sig");
    std::fs::write(&ours, bundle.to_json()).unwrap();
    let (ok, out) = common::model_signing(&[
        os("verify"),
        os("certificate"),
        model.as_os_str(),
        os("--signature"),
        ours.as_os_str(),
        os("--certificate_chain"),
        pki.ca_cert.as_os_str(),
    ]);
    assert!(ok && out.contains("Verification succeeded"), "{out}");
}

#[test]
fn a_leaf_that_may_not_sign_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    let pki = common::write_pki(tmp.path(), rcgen::KeyUsagePurpose::KeyEncipherment);
    let key = SigningKey::from_pem(&std::fs::read_to_string(&pki.leaf_key).unwrap()).unwrap();
    let src = LocalSource::new(&model).unwrap();
    let chain = [pki.leaf_der.clone()];
    let (_, bundle) = sign_model(
        &src,
        Serialization::files(HashAlgorithm::Sha256),
        None,
        &key,
        Some(&chain),
        &HashOptions::default(),
    )
    .unwrap();
    let e = bundle.verify(&ca_trust(&pki.ca_cert)).unwrap_err();
    assert!(e.to_string().contains("may not sign"), "{e}");
}

/// The reference's own manifest of the same directory (its hashing API), as
/// `name algorithm digest` lines plus the subject digest it would sign.
fn reference_manifest(model: &Path, config: &str) -> String {
    let code = format!(
        r#"
import hashlib, model_signing
from model_signing._signing import signing
m = model_signing.hashing.Config(){config}.hash({model:?})
p = signing.Payload(m).statement.pb
for r in p.predicate["resources"]:
    print(r["name"], r["algorithm"], r["digest"])
print("subject", p.subject[0].digest["sha256"])
"#,
        model = model.display().to_string(),
    );
    let (ok, out) = common::python(&code);
    assert!(ok, "{out}");
    out
}

fn our_manifest(model: &Path, ser: Serialization, reference_algorithm: &str) -> String {
    let m = hash_model(
        &LocalSource::new(model).unwrap(),
        &ser,
        &HashOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = String::new();
    for (k, d) in &m.resources {
        out.push_str(&format!("{k} {reference_algorithm} {}\n", hex::encode(d)));
    }
    out.push_str(&format!("subject {}\n", hex::encode(m.root_digest())));
    out
}

#[test]
fn manifests_equal_the_reference_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    assert_eq!(
        our_manifest(
            &model,
            Serialization::files(HashAlgorithm::Sha256),
            "sha256"
        ),
        reference_manifest(&model, ""),
    );
    assert_eq!(
        our_manifest(
            &model,
            Serialization::files(HashAlgorithm::Blake3),
            "blake3"
        ),
        reference_manifest(
            &model,
            ".use_file_serialization(hashing_algorithm='blake3')"
        ),
    );
    // Shards: the reference spells the algorithm `sha256-sharded-SIZE`; names, digests
    // and the subject digest are identical.
    assert_eq!(
        our_manifest(
            &model,
            Serialization::shards(HashAlgorithm::Sha256, 4096),
            "sha256-sharded-4096"
        ),
        reference_manifest(&model, ".use_shard_serialization(shard_size=4096)"),
    );
}

#[test]
fn reference_shard_and_blake3_bundles_verify_with_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_model(&model);
    let (keys, _) = common::write_key(tmp.path(), "k", &rcgen::PKCS_ECDSA_P256_SHA256);
    for (name, config) in [
        ("shards", ".use_shard_serialization(shard_size=100000)"),
        (
            "blake3",
            ".use_file_serialization(hashing_algorithm='blake3')",
        ),
    ] {
        let sig = tmp.path().join(format!("{name}.sig"));
        let code = format!(
            r#"
import model_signing
hc = model_signing.hashing.Config(){config}
model_signing.signing.Config().use_elliptic_key_signer(private_key={key:?}).set_hashing_config(hc).sign({model:?}, {sig:?})
"#,
            key = keys.private.display().to_string(),
            model = model.display().to_string(),
            sig = sig.display().to_string(),
        );
        let (ok, out) = common::python(&code);
        assert!(ok, "{out}");
        let v = verify_model(
            &LocalSource::new(&model).unwrap(),
            &read_bundle(&sig),
            &key_trust(&keys.public),
            None,
            &HashOptions::default(),
        )
        .unwrap();
        assert!(v.problems.is_empty(), "{name}: {:?}", v.problems);
        if name == "shards" {
            // model.safetensors (300,000 bytes) has three shards; the empty file has none.
            assert_eq!(v.signed.resources.len(), 7, "{name}");
        }
    }
}

#[test]
fn single_file_models_verify_in_the_reference_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    std::fs::write(&file, b"GGUF\x03\x00\x00\x00 tiny").unwrap();
    let (keys, _) = common::write_key(tmp.path(), "k", &rcgen::PKCS_ECDSA_P256_SHA256);
    let sig = tmp.path().join("model.sig");
    let (ok, out) = common::model_signing(&[
        os("sign"),
        os("key"),
        file.as_os_str(),
        os("--private_key"),
        keys.private.as_os_str(),
        os("--signature"),
        sig.as_os_str(),
    ]);
    assert!(ok, "{out}");
    let src = LocalSource::new(&file).unwrap();
    let v = verify_model(
        &src,
        &read_bundle(&sig),
        &key_trust(&keys.public),
        None,
        &HashOptions::default(),
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    std::fs::write(&file, b"GGUF\x03\x00\x00\x00 swapped").unwrap();
    let v = verify_model(
        &src,
        &read_bundle(&sig),
        &key_trust(&keys.public),
        None,
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!(v.problems[0].problem, Problem::Mismatch);
}
