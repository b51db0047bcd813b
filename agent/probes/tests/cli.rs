//! The runner as the launcher starts it: settings from the environment and the JSON
//! parameters, malformed suites refused with exit 2, a model that does not match refused
//! with exit 1, and the result posted over HTTPS with the pod's token to a local
//! operator stand-in (127.0.0.1, a CA made here).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{MINILM_MANIFEST_DIGEST, minilm_dir, runner, suite_path};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use lotabots_crds::workload::{RESULT_PATH, WorkloadResult};

/// A small model that the runner hashes but never loads (the digest given is not its).
fn fake_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not weights").unwrap();
}

const OTHER_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn malformed_suites_exit_2_naming_probe_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let header =
        "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: embedding\nprobes:\n";
    let cases = [
        (
            format!(
                "{header}  - name: typo\n    similarityOrdr: {{anchor: a, closer: b, farther: c}}\n"
            ),
            "probe \"typo\" (probes[0]): unknown field `similarityOrdr`",
        ),
        (
            format!("{header}  - name: short\n    similarityAtLeast: {{a: x, bound: 0.5}}\n"),
            "probe \"short\" (probes[0]): similarityAtLeast: missing field `b`",
        ),
        (
            header.replace("probes/v1alpha1", "probes/v1"),
            "apiVersion is \"lotabots.io/probes/v1\", expected lotabots.io/probes/v1alpha1",
        ),
        (
            format!("{header}  - name: gen\n    pattern: {{input: hi, regex: 'h.*'}}\n"),
            "probe \"gen\" (probes[0]): pattern applies to generation models, but the suite's task is embedding",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let suite = tmp.path().join(format!("suite{i}.yaml"));
        std::fs::write(&suite, yaml).unwrap();
        let out = runner()
            .args(["--no-post", "--model"])
            .arg(tmp.path().join("m"))
            .arg("--suite")
            .arg(&suite)
            .args(["--manifest-digest", OTHER_DIGEST])
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "case {i}: {stderr}");
        assert!(stderr.contains(&suite.display().to_string()), "{stderr}");
        // The result says so too (the operator learns the suite is broken).
        let result: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!result.passed);
        assert!(result.error.unwrap().contains(want));
    }
}

#[test]
fn a_generation_suite_is_refused_as_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let suite = tmp.path().join("gen.yaml");
    std::fs::write(
        &suite,
        "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: generation\nprobes:\n  - name: hi\n    exact: {input: hi, output: hello}\n",
    )
    .unwrap();
    runner()
        .args(["--no-post", "--model"])
        .arg(tmp.path().join("m"))
        .arg("--suite")
        .arg(&suite)
        .args(["--manifest-digest", OTHER_DIGEST])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "the suite's task is generation; this runner runs embedding suites only",
        ));
}

#[test]
fn usage_errors_exit_2() {
    runner()
        .args(["--no-post", "--suite", "s.yaml"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--model is required"));
    runner()
        .args(["--model", "m", "--suite", "s.yaml", "--manifest-digest"])
        .arg(MINILM_MANIFEST_DIGEST)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--operator-url (or LOTABOTS_OPERATOR_URL) is required to post the result",
        ));
}

/// What the stand-in operator received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// An HTTPS server on 127.0.0.1 answering every request with `status`; returns its URL,
/// the CA that issued its certificate (PEM) and what it receives.
fn operator_stand_in(status: u16) -> (String, String, Arc<Mutex<Vec<Received>>>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let received = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let seen = received.clone();
    // The server lives as long as the test process; each test starts its own.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let seen = seen.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let authorization = req
                                .headers()
                                .get(hyper::header::AUTHORIZATION)
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            seen.lock().unwrap().push(Received {
                                path,
                                authorization,
                                body,
                            });
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"error\":\"x\",\"message\":\"stand-in\"}",
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
    });
    (format!("https://{addr}"), ca.pem(), received)
}

/// The pod's environment as the launcher sets it.
fn pod_env(
    cmd: &mut assert_cmd::Command,
    dir: &Path,
    url: &str,
    ca_pem: &str,
    params: &serde_json::Value,
) {
    std::fs::write(dir.join("token"), "pod-bound-token\n").unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    cmd.env("LOTABOTS_OPERATOR_URL", url)
        .env("LOTABOTS_TOKEN_FILE", dir.join("token"))
        .env("LOTABOTS_CA_FILE", dir.join("ca.pem"))
        .env("LOTABOTS_WORKLOAD_ID", "c0ffee")
        .env("LOTABOTS_NONCE", "ab".repeat(32))
        .env("LOTABOTS_NODE", "gpu-node-7")
        .env("LOTABOTS_WORKLOAD_PARAMS", params.to_string());
}

#[test]
fn a_refused_model_is_posted_with_the_pod_token() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let (url, ca, received) = operator_stand_in(202);
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &url,
        &ca,
        &serde_json::json!({
            "modelDir": tmp.path().join("m"),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": OTHER_DIGEST,
        }),
    );
    cmd.assert()
        .code(1)
        .stderr(predicates::str::contains("result posted to"));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, RESULT_PATH);
    assert_eq!(
        got[0].authorization.as_deref(),
        Some("Bearer pod-bound-token")
    );
    let result: WorkloadResult = serde_json::from_slice(&got[0].body).unwrap();
    assert!(!result.passed);
    assert_eq!(result.node, "gpu-node-7");
    assert_eq!(result.nonce, "ab".repeat(32));
    assert_eq!(result.request_id, "c0ffee");
    assert!(result.error.unwrap().contains(&format!(
        "do not match the attested manifest {OTHER_DIGEST}"
    )));
}

#[test]
fn a_refusal_by_the_operator_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let (url, ca, received) = operator_stand_in(403);
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &url,
        &ca,
        &serde_json::json!({
            "modelDir": tmp.path().join("m"),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": OTHER_DIGEST,
        }),
    );
    cmd.assert().code(3).stderr(predicates::str::contains(
        "the operator refused the result (403)",
    ));
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[test]
fn an_operator_with_another_ca_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let (url, _, received) = operator_stand_in(202);
    let (_, other_ca, _) = operator_stand_in(202);
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &url,
        &other_ca,
        &serde_json::json!({
            "modelDir": tmp.path().join("m"),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": OTHER_DIGEST,
        }),
    );
    cmd.assert()
        .code(3)
        .stderr(predicates::str::contains("posting to"));
    assert!(received.lock().unwrap().is_empty());
}

#[test]
fn the_minilm_suite_result_is_posted() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, ca, received) = operator_stand_in(202);
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &url,
        &ca,
        &serde_json::json!({
            "modelDir": minilm_dir(),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": MINILM_MANIFEST_DIGEST,
        }),
    );
    cmd.assert().code(0);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let result: WorkloadResult = serde_json::from_slice(&got[0].body).unwrap();
    assert!(result.passed);
    let probes = result.probes.unwrap();
    assert_eq!(probes.manifest_digest, MINILM_MANIFEST_DIGEST);
    let suite_bytes = std::fs::read(suite_path("minilm-semantic.yaml")).unwrap();
    assert_eq!(
        probes.suite_digest,
        lotabots_probes::suite::Suite::parse(&suite_bytes)
            .unwrap()
            .digest
    );
    assert_eq!(probes.device, "cpu");
}
