//! The evidence API through its in-process router: what an honest agent does, and every
//! way a dishonest or broken one is refused (and counted).

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{StaticTokens, agent};
use http_body_util::BodyExt;
use lotabots_crds::evidence::NonceOrigin;
use lotabots_operator::auth::AuthError;
use lotabots_operator::evidence_api::{
    ApiMetrics, EvidenceApi, LatestEvidence, MAX_EVIDENCE_BYTES, RateLimit,
};
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    router: Router,
    sink: Arc<LatestEvidence>,
    metrics: ApiMetrics,
}

fn fixture_with(rate: RateLimit, ttl: Duration) -> Fixture {
    let tokens = StaticTokens(HashMap::from([
        ("tok-a", agent("node-a")),
        ("tok-b", agent("node-b")),
        (
            "tok-wrong-aud",
            Err(AuthError::WrongAudience(vec![
                "https://kubernetes.default.svc".into(),
            ])),
        ),
    ]));
    let sink = Arc::new(LatestEvidence::default());
    let metrics = ApiMetrics::register(&prometheus::Registry::new()).unwrap();
    let api = Arc::new(EvidenceApi::new(
        Arc::new(tokens),
        sink.clone(),
        ttl,
        rate,
        metrics.clone(),
    ));
    Fixture {
        router: api.router(),
        sink,
        metrics,
    }
}

fn fixture() -> Fixture {
    fixture_with(RateLimit::default(), Duration::from_secs(60))
}

async fn call(
    router: &Router,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::post(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn challenge(f: &Fixture, token: &str) -> [u8; 32] {
    let (status, body) = call(&f.router, "/v1/challenges", Some(token), vec![]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(body["nonce"].as_str().unwrap(), &mut nonce).unwrap();
    nonce
}

fn evidence_body(node: &str, nonce: [u8; 32]) -> Vec<u8> {
    serde_json::to_vec(&common::evidence("h100-80gb-hbm3", node, nonce)).unwrap()
}

#[tokio::test]
async fn an_agent_fetches_a_challenge_and_its_evidence_is_accepted_once() {
    let f = fixture();
    let nonce = challenge(&f, "tok-a").await;
    let body = evidence_body("node-a", nonce);
    let (status, receipt) = call(&f.router, "/v1/evidence/gpu", Some("tok-a"), body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    let stored = f.sink.get("node-a").expect("handed to the sink");
    assert_eq!(receipt["digest"], stored.digest.as_str());
    assert_eq!(stored.evidence.nonce, hex::encode(nonce));

    // The same submission again: the nonce is spent.
    let (status, err) = call(&f.router, "/v1/evidence/gpu", Some("tok-a"), body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"], "replayed_nonce");
    assert_eq!(f.metrics.submissions("accepted"), 1);
    assert_eq!(f.metrics.submissions("replayed_nonce"), 1);
    assert_eq!(f.metrics.challenges("issued"), 1);
}

#[tokio::test]
async fn an_agent_cannot_speak_for_another_node() {
    let f = fixture();
    let nonce = challenge(&f, "tok-a").await;
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        evidence_body("node-b", nonce),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["error"], "wrong_node");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("bound to node \"node-a\" but the evidence is for \"node-b\"")
    );
    assert!(f.sink.get("node-b").is_none() && f.sink.get("node-a").is_none());
}

#[tokio::test]
async fn a_nonce_issued_to_another_node_is_refused() {
    let f = fixture();
    let stolen = challenge(&f, "tok-a").await;
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-b"),
        evidence_body("node-b", stolen),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"], "unknown_nonce");
    assert!(f.sink.is_empty());
}

#[tokio::test]
async fn an_expired_nonce_is_refused() {
    let f = fixture_with(RateLimit::default(), Duration::from_millis(1));
    let nonce = challenge(&f, "tok-a").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        evidence_body("node-a", nonce),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"], "expired_nonce");
}

#[tokio::test]
async fn a_nonce_never_issued_is_refused() {
    let f = fixture();
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        evidence_body("node-a", [9; 32]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"], "unknown_nonce");
}

#[tokio::test]
async fn callers_without_a_valid_agent_token_are_refused() {
    let f = fixture();
    let (status, err) = call(&f.router, "/v1/challenges", None, vec![]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_token"))
    );
    let (status, err) = call(&f.router, "/v1/challenges", Some("forged"), vec![]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_rejected"))
    );
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-wrong-aud"),
        evidence_body("node-a", [1; 32]),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_audience"))
    );
    assert_eq!(f.metrics.challenges("missing_token"), 1);
    assert_eq!(f.metrics.submissions("wrong_audience"), 1);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let f = fixture();
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed"))
    );

    let nonce = challenge(&f, "tok-a").await;
    let mut doc: Value = serde_json::from_slice(&evidence_body("node-a", nonce)).unwrap();
    doc["gpus"][0]["index"] = Value::String("zero".into());
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        serde_json::to_vec(&doc).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["message"].as_str().unwrap().contains("gpus[0].index"),
        "{err}"
    );

    doc = serde_json::from_slice(&evidence_body("node-a", nonce)).unwrap();
    doc["schemaVersion"] = Value::String("lotabots.io/gpu-evidence/v9".into());
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        serde_json::to_vec(&doc).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["message"].as_str().unwrap().contains("v9"), "{err}");

    let huge = vec![b' '; MAX_EVIDENCE_BYTES + 1];
    let (status, err) = call(&f.router, "/v1/evidence/gpu", Some("tok-a"), huge).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    // None of that consumed the nonce or stored anything.
    assert!(f.sink.is_empty());
    let (status, _) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        evidence_body("node-a", nonce),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn evidence_with_an_agent_chosen_nonce_is_refused() {
    let f = fixture();
    let nonce = challenge(&f, "tok-a").await;
    let mut e = common::evidence("h100-80gb-hbm3", "node-a", nonce);
    e.nonce_origin = NonceOrigin::Agent;
    let (status, err) = call(
        &f.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        serde_json::to_vec(&e).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["message"].as_str().unwrap().contains("nonceOrigin"),
        "{err}"
    );
}

#[tokio::test]
async fn each_node_is_rate_limited_on_its_own() {
    let one = NonZeroU32::new(1).unwrap();
    let f = fixture_with(
        RateLimit {
            per_minute: one,
            burst: NonZeroU32::new(2).unwrap(),
        },
        Duration::from_secs(60),
    );
    challenge(&f, "tok-a").await;
    challenge(&f, "tok-a").await;
    let (status, err) = call(&f.router, "/v1/challenges", Some("tok-a"), vec![]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    challenge(&f, "tok-b").await;
    assert_eq!(f.metrics.challenges("rate_limited"), 1);
}

/// A store shared by replicas, in memory: the nonces it has consumed, failing on demand.
#[derive(Default)]
struct SharedNonces {
    consumed: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    down: std::sync::atomic::AtomicBool,
}

impl lotabots_operator::evidence_api::SharedAcceptance for SharedNonces {
    fn accept<'a>(
        &'a self,
        _evidence: &'a lotabots_operator::evidence_api::AcceptedEvidence,
        nonce: &'a lotabots_operator::challenges::Verified,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            anyhow::ensure!(
                !self.down.load(std::sync::atomic::Ordering::SeqCst),
                "connection refused"
            );
            Ok(self.consumed.lock().unwrap().insert(nonce.nonce.0))
        })
    }
}

/// Two replicas sharing the challenge key and the store: a challenge of one is accepted
/// by the other, once; a store failure accepts nothing.
#[tokio::test]
async fn replicas_sharing_key_and_store_accept_each_others_challenges_once() {
    let key = lotabots_operator::challenges::ChallengeKey::from_bytes(&[5; 32]).unwrap();
    let shared = Arc::new(SharedNonces::default());
    let replica = || {
        let tokens = StaticTokens(HashMap::from([("tok-a", agent("node-a"))]));
        let sink = Arc::new(LatestEvidence::default());
        let metrics = ApiMetrics::register(&prometheus::Registry::new()).unwrap();
        let api = EvidenceApi::new(
            Arc::new(tokens),
            sink.clone(),
            Duration::from_secs(60),
            RateLimit::default(),
            metrics.clone(),
        )
        .with_key(key.clone())
        .with_shared(shared.clone());
        Fixture {
            router: Arc::new(api).router(),
            sink,
            metrics,
        }
    };
    let (a, b) = (replica(), replica());
    let nonce = challenge(&a, "tok-a").await;
    let body = evidence_body("node-a", nonce);
    let (status, receipt) = call(&b.router, "/v1/evidence/gpu", Some("tok-a"), body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    // The store, not the API, hands it to the replicas' controllers.
    assert!(b.sink.is_empty() && a.sink.is_empty());
    assert_eq!(shared.consumed.lock().unwrap().len(), 1);
    let (status, err) = call(&a.router, "/v1/evidence/gpu", Some("tok-a"), body).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::CONFLICT, Some("replayed_nonce"))
    );
    assert_eq!(a.metrics.submissions("replayed_nonce"), 1);

    shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let nonce = challenge(&a, "tok-a").await;
    let (status, err) = call(
        &a.router,
        "/v1/evidence/gpu",
        Some("tok-a"),
        evidence_body("node-a", nonce),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{err}"
    );
    assert!(a.sink.is_empty());
}
