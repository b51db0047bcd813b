//! The agent's client against the operator's evidence API over real TLS on 127.0.0.1:
//! challenge, probe bound to it, submit — and the refusals an agent sees.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use common::{StaticTokens, agent};
use lotabots_agent::attest::{AttestError, attest_once};
use lotabots_agent::backend::GpuBackend;
use lotabots_agent::operator_client::{ClientError, OperatorClient};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_operator::evidence_api::{ApiMetrics, EvidenceApi, LatestEvidence, RateLimit};
use tempfile::TempDir;

struct Server {
    url: String,
    ca_pem: String,
    sink: Arc<LatestEvidence>,
    handle: Handle,
    dir: TempDir,
}

impl Server {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let tls = RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let tokens = StaticTokens(HashMap::from([
            ("tok-a", agent("node-a")),
            ("tok-b", agent("node-b")),
        ]));
        let sink = Arc::new(LatestEvidence::default());
        let metrics = ApiMetrics::register(&prometheus::Registry::new()).unwrap();
        let api = Arc::new(EvidenceApi::new(
            Arc::new(tokens),
            sink.clone(),
            Duration::from_secs(60),
            RateLimit::default(),
            metrics,
        ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        tokio::spawn(server.serve(api.router().into_make_service()));
        Server {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: cert.cert.pem(),
            sink,
            handle,
            dir: TempDir::new().unwrap(),
        }
    }

    fn client(&self, token: &str) -> OperatorClient {
        let path = self.dir.path().join(format!("{token}.jwt"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        OperatorClient::new(&self.url, self.ca_pem.as_bytes(), path).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn h100() -> Arc<dyn GpuBackend> {
    Arc::new(SimulatedBackend::load("h100-80gb-hbm3").unwrap())
}

#[tokio::test]
async fn an_agent_attests_its_node_over_tls() {
    let server = Server::start().await;
    let receipt = attest_once(h100(), &server.client("tok-a"), "node-a")
        .await
        .unwrap();
    let stored = server.sink.get("node-a").expect("accepted");
    assert_eq!(receipt.node, "node-a");
    assert_eq!(receipt.digest, stored.digest);
    assert_eq!(stored.evidence.gpus.len(), 1);
}

#[tokio::test]
async fn an_agent_claiming_another_node_is_refused_with_the_reason() {
    let server = Server::start().await;
    let err = attest_once(h100(), &server.client("tok-b"), "node-a")
        .await
        .unwrap_err();
    match &err {
        AttestError::Operator(ClientError::Refused {
            status,
            code,
            message,
        }) => {
            assert_eq!((*status, code.as_str()), (403, "wrong_node"));
            assert!(message.contains("\"node-b\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(err.label(), "wrong_node");
    assert!(server.sink.is_empty());
}

#[tokio::test]
async fn an_agent_does_not_trust_an_operator_outside_its_ca() {
    let server = Server::start().await;
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
        .unwrap()
        .cert
        .pem();
    let token = server.dir.path().join("t");
    std::fs::write(&token, "tok-a").unwrap();
    let client = OperatorClient::new(&server.url, other_ca.as_bytes(), token).unwrap();
    let err = attest_once(h100(), &client, "node-a").await.unwrap_err();
    assert_eq!(err.label(), "unreachable", "{err}");
    assert!(server.sink.is_empty());
}

#[test]
fn the_client_refuses_plain_http_and_empty_ca_bundles() {
    let err = OperatorClient::new("http://127.0.0.1:1", b"", "/nonexistent".into()).unwrap_err();
    assert!(err.to_string().contains("must be https://"), "{err}");
    let err =
        OperatorClient::new("https://127.0.0.1:1", b"not pem", "/nonexistent".into()).unwrap_err();
    assert!(err.to_string().contains("CA bundle"), "{err}");
}

#[tokio::test]
async fn a_missing_token_file_is_named() {
    let server = Server::start().await;
    let client = OperatorClient::new(
        &server.url,
        server.ca_pem.as_bytes(),
        "/nonexistent/token".into(),
    )
    .unwrap();
    let err = attest_once(h100(), &client, "node-a").await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/token"), "{err}");
}
