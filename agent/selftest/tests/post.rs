//! Delivery to a real HTTPS server on an ephemeral 127.0.0.1 port, with a test CA made on
//! the spot (`lotabots-operator-client`'s `testing`): the binary posts its result with the
//! pod-bound token, the body is the result bound to the nonce and node, 5xx and transport
//! errors are retried, the token is re-read per attempt, 4xx is final, and a server the CA
//! did not sign is refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use lotabots_crds::workload::{RESULT_PATH, WorkloadKind, WorkloadResult, env};
use lotabots_gpu_selftest::post::{PostError, Poster, Retry};
use lotabots_operator_client::testing::TestCa as Ca;

const NONCE: &str = "5f1e0c2ab39d4e7f8a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";
const NODE: &str = "gpu-node-7";
const REQUEST_ID: &str = "0a1b2c3d4e5f6789";

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

type Respond = dyn Fn(usize) -> (StatusCode, String) + Send + Sync;

#[derive(Clone)]
struct Operator {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Arc<Respond>,
}

async fn receive(
    State(op): State<Operator>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let n = {
        let mut seen = op.seen.lock().unwrap();
        seen.push(Seen {
            authorization: header("authorization"),
            content_type: header("content-type"),
            body,
        });
        seen.len()
    };
    (op.respond)(n)
}

/// Starts a fake operator signed by `ca`; `respond(n)` answers the n-th request (from 1).
fn start_operator(
    ca: &Ca,
    respond: impl Fn(usize) -> (StatusCode, String) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let op = Operator {
        seen: seen.clone(),
        respond: Arc::new(respond),
    };
    let app = Router::new()
        .route(RESULT_PATH, post(receive))
        .with_state(op);
    (ca.serve(app), seen)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The binary with exactly the launcher's environment (nothing inherited).
fn selftest(dir: &Path, url: &str, ca_pem: &str) -> Command {
    let mut cmd = Command::cargo_bin("lotabots-gpu-selftest").unwrap();
    cmd.env_clear()
        .env("RUST_LOG", "warn")
        .env(env::NONCE, NONCE)
        .env(env::NODE, NODE)
        .env(env::REQUEST_ID, REQUEST_ID)
        .env(env::OPERATOR_URL, url)
        .env(env::TOKEN_FILE, write(dir, "token", "pod-bound-token\n"))
        .env(env::CA_FILE, write(dir, "ca.crt", ca_pem))
        .env(env::PARAMS, r#"{"memoryShare":"0.05"}"#)
        .args(["--post-backoff-ms", "10"]);
    cmd
}

async fn output(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_posts_a_bound_result_with_the_token() {
    let ca = Ca::new("test operator CA");
    let (url, seen) = start_operator(&ca, |_| (StatusCode::OK, r#"{"accepted":true}"#.into()));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = selftest(dir.path(), &url, &ca.pem());
    cmd.args(["--simulated", "--matmul-n", "64"]);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer pod-bound-token")
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let posted: WorkloadResult = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(posted.nonce, NONCE);
    assert_eq!(posted.node, NODE);
    assert_eq!(posted.request_id, REQUEST_ID);
    assert_eq!(posted.kind, WorkloadKind::GpuSelfTest);
    assert!(posted.passed);
    let report = posted.self_test.as_ref().unwrap();
    assert!(report.simulated);
    assert_eq!(report.devices[0].memory.share, 0.05);
    // What was printed is what was posted.
    let printed: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, posted);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_simulation_is_posted_as_failed() {
    let ca = Ca::new("test operator CA");
    let (url, seen) = start_operator(&ca, |_| (StatusCode::OK, "{}".into()));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = selftest(dir.path(), &url, &ca.pem());
    cmd.args([
        "--simulated",
        "--simulate-fault",
        "memory",
        "--matmul-n",
        "32",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let posted: WorkloadResult = serde_json::from_str(&seen.lock().unwrap()[0].body).unwrap();
    assert!(!posted.passed);
    assert!(posted.self_test.unwrap().devices[0].memory.errors > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_gpu_the_refusal_is_posted_and_the_exit_code_is_2() {
    if lotabots_gpu_selftest::gpu::driver_present() {
        return; // a driver here: the refusal cannot be shown
    }
    let ca = Ca::new("test operator CA");
    let (url, seen) = start_operator(&ca, |_| (StatusCode::OK, "{}".into()));
    let dir = tempfile::tempdir().unwrap();
    let out = output(selftest(dir.path(), &url, &ca.pem())).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("libcuda.so.1 not found"), "{stderr}");
    let posted: WorkloadResult = serde_json::from_str(&seen.lock().unwrap()[0].body).unwrap();
    assert!(!posted.passed);
    assert!(posted.self_test.is_none());
    assert_eq!(posted.nonce, NONCE);
    assert!(
        posted
            .error
            .unwrap()
            .starts_with("libcuda.so.1 not found: this pod has no NVIDIA driver")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_is_final_and_its_body_is_shown() {
    let ca = Ca::new("test operator CA");
    let (url, seen) = start_operator(&ca, |_| {
        (
            StatusCode::FORBIDDEN,
            r#"{"error":"wrong_node","message":"token is bound to node gpu-node-2"}"#.into(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = selftest(dir.path(), &url, &ca.pem());
    cmd.args(["--simulated", "--matmul-n", "32"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("operator refused the result"), "{stderr}");
    assert!(stderr.contains("(403)"), "{stderr}");
    assert!(
        stderr.contains("token is bound to node gpu-node-2"),
        "{stderr}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "a 4xx must not be retried");
}

fn result() -> WorkloadResult {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lotabots-gpu-selftest"))
        .env_clear()
        .args([
            "--simulated",
            "--no-post",
            "--matmul-n",
            "16",
            "--memory-share",
            "0.01",
        ])
        .args(["--bandwidth-mib", "1", "--nonce", NONCE])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn retry(attempts: u32) -> Retry {
    Retry {
        attempts,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_with_a_fresh_token() {
    let ca = Ca::new("test operator CA");
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "first-token");
    let rotate = token.clone();
    let (url, seen) = start_operator(&ca, move |n| {
        if n == 1 {
            // The kubelet rotates the projected token between the attempts.
            std::fs::write(&rotate, "second-token").unwrap();
            (StatusCode::SERVICE_UNAVAILABLE, "starting".into())
        } else {
            (StatusCode::OK, "{}".into())
        }
    });
    let poster = Poster::new(&url, ca.pem().as_bytes(), token, retry(3)).unwrap();
    poster.post(&result()).await.unwrap();
    let seen = seen.lock().unwrap();
    let tokens: Vec<_> = seen
        .iter()
        .map(|s| s.authorization.clone().unwrap())
        .collect();
    assert_eq!(tokens, ["Bearer first-token", "Bearer second-token"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_errors_are_retried_then_reported() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = Ca::new("test operator CA");
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "t");
    let poster = Poster::new(
        &format!("https://127.0.0.1:{port}"),
        ca.pem().as_bytes(),
        token,
        retry(3),
    )
    .unwrap();
    match poster.post(&result()).await {
        Err(PostError::Exhausted { attempts, last, .. }) => {
            assert_eq!(attempts, 3);
            assert!(last.to_lowercase().contains("connect"), "{last}");
        }
        other => panic!("expected exhausted retries, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_outside_the_ca_is_not_trusted() {
    let real = Ca::new("operator CA");
    let other = Ca::new("some other CA");
    let (url, seen) = start_operator(&other, |_| (StatusCode::OK, "{}".into()));
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "secret");
    let poster = Poster::new(&url, real.pem().as_bytes(), token, retry(1)).unwrap();
    match poster.post(&result()).await {
        Err(PostError::Exhausted { last, .. }) => {
            assert!(last.to_lowercase().contains("certificate"), "{last}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the token must not reach it"
    );
}

#[test]
fn configuration_is_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "t");
    let e = Poster::new("http://operator", b"", token.clone(), retry(1)).unwrap_err();
    assert!(e.to_string().contains("must be https://"), "{e}");
    let e = Poster::new("https://operator", b"not a pem", token, retry(1)).unwrap_err();
    assert_eq!(e.to_string(), "operator CA bundle holds no certificate");
}
