//! The `attest-model` stages driven as a library: which stage passes or fails, the files
//! named, the exit codes, and what counts as unusable input.

mod common;

use std::path::{Path, PathBuf};

use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_model::attest::{AttestArgs, Format, Report, StageStatus, attest};
use lotabots_model::hashing::HashOptions;
use lotabots_model::keys::SigningKey;
use lotabots_model::manifest::Serialization;
use lotabots_model::sign_model;
use lotabots_model::source::LocalSource;

struct Fixture {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    public: PathBuf,
    dir: PathBuf,
}

/// A model signed by us with model.sig inside it.
fn signed_model() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::write_clean_model(&model);
    let (keys, _) = common::write_key(tmp.path(), "k", &rcgen::PKCS_ECDSA_P256_SHA256);
    let key = SigningKey::from_pem(&std::fs::read_to_string(&keys.private).unwrap()).unwrap();
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
    Fixture {
        dir: tmp.path().to_owned(),
        _tmp: tmp,
        model,
        public: keys.public,
    }
}

fn args(model: &Path) -> AttestArgs {
    AttestArgs {
        model: model.display().to_string(),
        signature: None,
        public_key: None,
        certificate_chain: None,
        policy: None,
        format: Format::Json,
    }
}

fn stage<'a>(r: &'a Report, name: &str) -> &'a lotabots_model::attest::StageResult {
    r.stages.iter().find(|s| s.stage == name).unwrap()
}

#[test]
fn a_signed_intact_model_passes_with_the_default_signature() {
    let f = signed_model();
    let report = attest(
        &AttestArgs {
            public_key: Some(f.public.clone()),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 0, "{}", report.render_table());
    assert_eq!(
        stage(&report, "SignatureVerified").status,
        StageStatus::Passed
    );
    assert_eq!(stage(&report, "IntegrityVerified").reason, "DigestMatch");
    assert_eq!(report.files, 5);
    assert!(
        report
            .manifest_digest
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(stage(&report, "SafetyScanned").reason, "ScanPassed");
    assert_eq!(stage(&report, "Compliant").reason, "PolicySatisfied");
}

#[test]
fn changed_files_fail_integrity_and_are_named() {
    let f = signed_model();
    std::fs::write(
        f.model.join("weights/extra.safetensors"),
        common::safetensors(17),
    )
    .unwrap();
    // A pickle that runs `os.system("id")` when loaded.
    std::fs::write(f.model.join("evil.pkl"), b"cos\nsystem\n(S'id'\ntR.").unwrap();
    let report = attest(
        &AttestArgs {
            public_key: Some(f.public.clone()),
            signature: Some(f.model.join("model.sig").display().to_string()),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 1);
    let integrity = stage(&report, "IntegrityVerified");
    assert_eq!(integrity.status, StageStatus::Failed);
    assert_eq!(integrity.reason, "DigestMismatch");
    let files: Vec<_> = integrity.files.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(files, ["evil.pkl", "weights/extra.safetensors"]);
    let table = report.render_table();
    assert!(table.contains("evil.pkl: extra"), "{table}");
    // The scan names the pickle too, and the default policy refuses its format.
    let safety = stage(&report, "SafetyScanned");
    assert_eq!(safety.reason, "UnsafePickle");
    assert!(
        safety.files.iter().any(|o| o.path == "evil.pkl"),
        "{:?}",
        safety.files
    );
    let compliant = stage(&report, "Compliant");
    assert_eq!(compliant.reason, "FormatNotAllowed");
    assert!(
        compliant.files.iter().any(|o| o.path == "evil.pkl"),
        "{:?}",
        compliant.files
    );
}

#[test]
fn a_wrong_key_fails_the_signature_stage() {
    let f = signed_model();
    let (other, _) = common::write_key(&f.dir, "other", &rcgen::PKCS_ECDSA_P384_SHA384);
    let report = attest(
        &AttestArgs {
            public_key: Some(other.public),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 1);
    let sig = stage(&report, "SignatureVerified");
    assert_eq!(sig.reason, "SignatureInvalid");
    assert!(sig.message.contains("another key"), "{}", sig.message);
    assert_eq!(
        stage(&report, "IntegrityVerified").status,
        StageStatus::Skipped
    );
}

#[test]
fn a_missing_default_signature_fails_but_a_missing_named_one_is_unusable_input() {
    let f = signed_model();
    std::fs::remove_file(f.model.join("model.sig")).unwrap();
    let report = attest(
        &AttestArgs {
            public_key: Some(f.public.clone()),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(
        stage(&report, "SignatureVerified").reason,
        "SignatureMissing"
    );
    assert_eq!(report.exit_code(), 1);

    let e = attest(
        &AttestArgs {
            public_key: Some(f.public.clone()),
            signature: Some(f.dir.join("nope.sig").display().to_string()),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap_err();
    assert!(e.path.ends_with("nope.sig"), "{e}");
}

#[test]
fn a_policy_pins_the_manifest_digest() {
    let f = signed_model();
    let unsigned = attest(&args(&f.model), &HashOptions::default()).unwrap();
    // Nothing to compare with: reported, not passed as a check.
    assert_eq!(stage(&unsigned, "IntegrityVerified").reason, "NotRequested");
    assert_eq!(unsigned.exit_code(), 0);
    let digest = unsigned.manifest_digest.clone().unwrap();
    // model.sig is part of the model when nothing says it is a signature.
    assert_eq!(unsigned.files, 6);

    let policy = |expected: &str| {
        let path = f.dir.join("policy.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: lotabots.io/v1alpha1\nkind: ModelAttestation\nmetadata:\n  name: m\nspec:\n  source:\n    uri: file:///models/m\n  integrity:\n    expectedDigest: {expected}\n"
            ),
        )
        .unwrap();
        path
    };
    let good = attest(
        &AttestArgs {
            policy: Some(policy(digest.trim_start_matches("sha256:"))),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(stage(&good, "IntegrityVerified").reason, "DigestMatch");
    assert_eq!(good.exit_code(), 0);

    let bad = attest(
        &AttestArgs {
            policy: Some(policy(&"0".repeat(64))),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    let i = stage(&bad, "IntegrityVerified");
    assert_eq!(i.status, StageStatus::Failed);
    assert!(i.message.contains("is not the expected"), "{}", i.message);
}

#[test]
fn unusable_inputs_name_the_file() {
    let f = signed_model();
    let garbage = f.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let cases: Vec<(AttestArgs, &str)> = vec![
        (
            AttestArgs {
                public_key: Some(garbage.clone()),
                ..args(&f.model)
            },
            "garbage.pem",
        ),
        (
            AttestArgs {
                certificate_chain: Some(garbage.clone()),
                ..args(&f.model)
            },
            "garbage.pem",
        ),
        (
            AttestArgs {
                policy: Some(garbage.clone()),
                ..args(&f.model)
            },
            "garbage.pem",
        ),
        (
            AttestArgs {
                public_key: Some(f.public.clone()),
                signature: Some(garbage.display().to_string()),
                ..args(&f.model)
            },
            "garbage.pem",
        ),
        (
            AttestArgs {
                signature: Some(f.model.join("model.sig").display().to_string()),
                ..args(&f.model)
            },
            "--public-key",
        ),
        (args(&f.dir.join("absent")), "absent"),
        (
            AttestArgs {
                model: "s3://bucket/model".into(),
                ..args(&f.model)
            },
            "s3://bucket/model",
        ),
    ];
    for (a, what) in cases {
        let e = attest(&a, &HashOptions::default()).unwrap_err();
        assert!(e.path.contains(what), "{what}: {e}");
    }
}

#[test]
fn a_planted_symlink_fails_integrity_naming_it() {
    let f = signed_model();
    std::os::unix::fs::symlink("/etc/hostname", f.model.join("weights/link")).unwrap();
    let report = attest(
        &AttestArgs {
            public_key: Some(f.public.clone()),
            ..args(&f.model)
        },
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 1);
    let i = stage(&report, "IntegrityVerified");
    assert_eq!(i.status, StageStatus::Failed);
    assert_eq!(i.files[0].path, "weights/link");
    assert!(
        i.files[0].problem.contains("symbolic link"),
        "{:?}",
        i.files
    );
}
