//! The client API through its in-process router: every authentication rule, roles and
//! namespaces per route, rate limits, body limits, problem details that name the field,
//! tokens checked with the `jsonwebtoken` crate directly (not through our verifier), the
//! audit chain, and the checked-in OpenAPI document.
//!
//! The OIDC issuer is a key pair made here with its JWKS in a file; the attestations are
//! reflector stores fed the objects a watch would deliver. The API server's TokenReview,
//! real ServiceAccount tokens and the live listener are exercised in
//! `e2e/tests/client_api.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use jiff::Timestamp;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use lotabots_crds::gpu_attestation::{GpuAttestation, GpuAttestationStatus, NodeSummary, Verdict};
use lotabots_crds::model_attestation::{ModelAttestation, ModelAttestationStatus};
use lotabots_operator::client_api::audit::MemoryAuditTrail;
use lotabots_operator::client_api::auth::{ClientAuthenticator, OidcConfig};
use lotabots_operator::client_api::limits::Limits;
use lotabots_operator::client_api::source::{Attestations, CreateFuture, ModelRequests};
use lotabots_operator::client_api::{ClientApi, ClientApiMetrics, ClientApiParts};
use lotabots_operator::evidence_api::{AcceptedEvidence, EvidenceSink, LatestEvidence, RateLimit};
use lotabots_operator::tokens::jwks::{CachedJwks, JwksSource};
use lotabots_operator::tokens::keys::{KeyRing, KeySet, SigningKey};
use lotabots_operator::tokens::{AttestationClaims, TokenSigner};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "lotabots-api";

/// An OIDC issuer's signing key and its JWK.
struct IdpKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    public_pem: String,
}

impl IdpKey {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Self {
            kid,
            encoding,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Claims of a valid token for `user` in `groups`.
fn claims(user: &str, groups: &[&str]) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": user, "groups": groups,
           "iat": now(), "nbf": now() - 5, "exp": now() + 600})
}

/// Creates ModelAttestations in the reflector store, as the watch would see them.
struct StoreModels(Mutex<Writer<ModelAttestation>>);

impl ModelRequests for StoreModels {
    fn create(&self, att: ModelAttestation) -> CreateFuture<'_> {
        let mut writer = self.0.lock().unwrap();
        let exists = writer
            .as_reader()
            .get(&reflector::ObjectRef::from(&att))
            .is_some();
        if !exists {
            writer.apply_watcher_event(&Event::Apply(att.clone()));
        }
        Box::pin(async move {
            if exists {
                Err(lotabots_operator::client_api::problem::ApiError::Conflict(
                    "exists".into(),
                ))
            } else {
                Ok(att)
            }
        })
    }
}

struct Fixture {
    router: Router,
    idp: IdpKey,
    jwks_file: std::path::PathBuf,
    audit: Arc<MemoryAuditTrail>,
    keys: Arc<KeyRing>,
    _dir: TempDir,
    // A dropped writer would leave the cache without its feed.
    _gpu_writer: Writer<GpuAttestation>,
}

fn gpu_attestation(name: &str, nodes: &[(&str, Verdict)]) -> GpuAttestation {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml"
    );
    let mut att: GpuAttestation =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    att.metadata.name = Some(name.into());
    att.metadata.generation = Some(1);
    let count = |v| nodes.iter().filter(|(_, x)| *x == v).count() as u32;
    att.status = Some(GpuAttestationStatus {
        observed_generation: Some(1),
        matched_nodes: nodes.len() as u32,
        attested_nodes: count(Verdict::Attested),
        failed_nodes: count(Verdict::Failed),
        unknown_nodes: count(Verdict::Unknown),
        nodes: nodes
            .iter()
            .map(|(n, v)| NodeSummary {
                node: (*n).into(),
                verdict: *v,
                reasons: vec![format!("{n} is {v}")],
                evidence_digest: Some(format!("sha256:{n}")),
                checked_at: None,
            })
            .collect(),
        ..Default::default()
    });
    att
}

fn model_attestation(ns: &str, name: &str, verdict: Option<Verdict>) -> ModelAttestation {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/lotabots_v1alpha1_modelattestation_s3.yaml"
    );
    let mut att: ModelAttestation =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    att.metadata.name = Some(name.into());
    att.metadata.namespace = Some(ns.into());
    att.metadata.generation = Some(1);
    att.status = Some(ModelAttestationStatus {
        observed_generation: Some(1),
        verdict,
        manifest_digest: verdict.map(|_| format!("sha256:{:064x}", 7)),
        reasons: vec!["every stage passed".into()],
        ..Default::default()
    });
    att
}

fn fixture_with(limits: Limits) -> Fixture {
    let dir = TempDir::new().unwrap();
    let idp = IdpKey::new();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::to_vec(&JwkSet {
            keys: vec![idp.jwk.clone()],
        })
        .unwrap(),
    )
    .unwrap();
    let oidc = OidcConfig {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        // No cool-down: a rotated-out key is looked up again at once.
        jwks: Arc::new(CachedJwks::new(
            JwksSource::File(jwks_file.clone()),
            lotabots_operator::tokens::jwks::http_client(None).unwrap(),
            Duration::from_secs(300),
            Duration::ZERO,
        )),
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        leeway: Duration::from_secs(5),
        username_claim: "sub".into(),
        groups_claim: "groups".into(),
        roles_claim: Some("lotabots_roles".into()),
    };
    let bindings = [
        "group:viewers=viewer",
        "group:team-a-requesters=requester/team-a",
        "group:team-a-viewers=viewer/team-a",
        "group:auditors=auditor",
        "user:root=admin",
    ]
    .iter()
    .map(|b| b.parse().unwrap())
    .collect();
    let auth = ClientAuthenticator::new(Some(oidc), None, bindings);

    let (gpu, mut gpu_w) = reflector::store();
    let (model, mut model_w) = reflector::store();
    gpu_w.apply_watcher_event(&Event::Init);
    for att in [
        gpu_attestation(
            "h100",
            &[("gpu-0", Verdict::Attested), ("gpu-1", Verdict::Failed)],
        ),
        gpu_attestation("a100", &[("gpu-0", Verdict::Attested)]),
        gpu_attestation("idle", &[]),
    ] {
        gpu_w.apply_watcher_event(&Event::InitApply(att));
    }
    gpu_w.apply_watcher_event(&Event::InitDone);
    model_w.apply_watcher_event(&Event::Init);
    for att in [
        model_attestation("team-a", "llama", Some(Verdict::Attested)),
        model_attestation("team-a", "pending", None),
        model_attestation("team-b", "secret-model", Some(Verdict::Failed)),
    ] {
        model_w.apply_watcher_event(&Event::InitApply(att));
    }
    model_w.apply_watcher_event(&Event::InitDone);

    let evidence = Arc::new(LatestEvidence::default());
    let mut ev = common::evidence("h100-sxm5-80gb-x8", "gpu-0", [1; 32]);
    ev.node_name = "gpu-0".into();
    evidence.accept(AcceptedEvidence {
        node: "gpu-0".into(),
        digest: "sha256:gpu-0".into(),
        evidence: ev,
        received_at: Timestamp::now(),
    });

    let audit = Arc::new(MemoryAuditTrail::default());
    for i in 0..3 {
        audit.append(
            "lotabots-operator",
            "record",
            &format!("gpu-{i}"),
            json!({"i": i}),
            Timestamp::now(),
        );
    }
    let keys = Arc::new(KeyRing::new(KeySet {
        current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
        previous: None,
    }));
    let api = Arc::new(ClientApi::new(ClientApiParts {
        auth,
        data: Attestations {
            gpu,
            model,
            evidence: Some(evidence),
        },
        models: Arc::new(StoreModels(Mutex::new(model_w))),
        audit: Some(audit.clone()),
        signer: TokenSigner::new(
            "https://lotabots-operator.test.svc",
            Duration::from_secs(120),
            keys.clone(),
        ),
        limits,
        metrics: ClientApiMetrics::register(&prometheus::Registry::new()).unwrap(),
    }));
    Fixture {
        router: api.router(),
        idp,
        jwks_file,
        audit,
        keys,
        _dir: dir,
        _gpu_writer: gpu_w,
    }
}

fn fixture() -> Fixture {
    fixture_with(Limits::default())
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Fixture {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_from(([10, 0, 0, 1], 5000).into(), method, uri, token, body)
            .await
    }

    async fn call_from(
        &self,
        from: SocketAddr,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&b).unwrap())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut().insert(ConnectInfo(from));
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    fn token(&self, user: &str, groups: &[&str]) -> String {
        self.idp.sign(&claims(user, groups))
    }
}

/// The reply is a problem document with `status` whose detail contains `needle`.
fn assert_problem(r: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{}",
        r.body
    );
    assert_eq!(r.body["status"], status.as_u16());
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "detail {detail:?} lacks {needle:?}"
    );
}

#[tokio::test]
async fn a_valid_oidc_token_with_a_role_lists_gpu_attestations() {
    let f = fixture();
    let t = f.token("alice", &["viewers"]);
    let r = f.call("GET", "/v1/gpu-attestations", Some(&t), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a100", "h100", "idle"]);
    let h100 = &r.body["items"][1];
    assert_eq!(h100["verdict"], "Failed");
    assert_eq!(h100["nodes"][1]["reasons"][0], "gpu-1 is Failed");
}

#[tokio::test]
async fn every_bad_oidc_token_is_refused_with_its_reason() {
    let f = fixture();
    let signed = |patch: Value| {
        let mut c = claims("alice", &["viewers"]);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        f.idp.sign(&c)
    };
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let body = b64(&claims("alice", &["viewers"]));
    let alg_none = format!("{}.{body}.", b64(&json!({"alg": "none", "kid": f.idp.kid})));
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(f.idp.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims("alice", &["viewers"]),
            &EncodingKey::from_secret(f.idp.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let unknown_kid = {
        let other = IdpKey::new();
        other.sign(&claims("alice", &["viewers"]))
    };
    let unknown_alg = format!(
        "{}.{body}.c2ln",
        b64(&json!({"alg": "XS999", "kid": f.idp.kid}))
    );
    let no_exp = {
        let mut c = claims("alice", &["viewers"]);
        c.as_object_mut().unwrap().remove("exp");
        f.idp.sign(&c)
    };
    let string_nbf = signed(json!({"nbf": (now() + 3600).to_string()}));
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", signed(json!({"exp": now() - 60})), "expired"),
        (
            "not yet valid",
            signed(json!({"nbf": now() + 600})),
            "not valid yet",
        ),
        (
            "wrong audience",
            signed(json!({"aud": "someone-else"})),
            "audience",
        ),
        (
            "wrong issuer",
            signed(json!({"iss": "https://evil.test"})),
            "not from the configured OIDC issuer",
        ),
        ("alg none", alg_none, "algorithm"),
        (
            "HS256 signed with the public key",
            hs256_with_public_key,
            "algorithm HS256 is not accepted",
        ),
        ("unknown alg", unknown_alg, "XS999"),
        ("unknown kid", unknown_kid, "unknown signing key"),
        ("no exp", no_exp, "exp"),
        ("nbf of the wrong type", string_nbf, "nbf"),
        // No readable issuer: not routed to OIDC at all, and no other method is on.
        (
            "garbage",
            "abc.def.ghi".into(),
            "not from the configured OIDC issuer",
        ),
    ];
    for (what, token, needle) in cases {
        let r = f
            .call("GET", "/v1/gpu-attestations", Some(&token), None)
            .await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, needle);
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE), "{what}");
    }
    // And the same claims, properly signed, pass: the refusals were about the token.
    let ok = f
        .call(
            "GET",
            "/v1/gpu-attestations",
            Some(&signed(json!({}))),
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let missing = f.call("GET", "/v1/gpu-attestations", None, None).await;
    assert_problem(&missing, StatusCode::UNAUTHORIZED, "missing bearer token");
}

#[tokio::test]
async fn a_token_of_a_rotated_out_issuer_key_is_refused_and_the_new_key_works() {
    let f = fixture();
    let old = f.token("alice", &["viewers"]);
    assert_eq!(
        f.call("GET", "/v1/gpu-attestations", Some(&old), None)
            .await
            .status,
        StatusCode::OK
    );
    // The issuer rotates: its JWKS now holds only a new key (the overlap is over).
    let new = IdpKey::new();
    std::fs::write(
        &f.jwks_file,
        serde_json::to_vec(&JwkSet {
            keys: vec![new.jwk.clone()],
        })
        .unwrap(),
    )
    .unwrap();
    let fresh = new.sign(&claims("alice", &["viewers"]));
    let r = f
        .call("GET", "/v1/gpu-attestations", Some(&fresh), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the new key is fetched on first sight: {}",
        r.body
    );
    let r = f
        .call("GET", "/v1/gpu-attestations", Some(&old), None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unknown signing key");
}

#[tokio::test]
async fn roles_are_checked_per_route() {
    let f = fixture();
    let viewer = f.token("vera", &["viewers"]);
    let requester = f.token("rita", &["team-a-requesters"]);
    let auditor = f.token("audrey", &["auditors"]);
    let admin = f.token("root", &[]);
    let nobody = f.token("nobody", &["strangers"]);
    let by_claim = f.idp.sign(&{
        let mut c = claims("claimed", &[]);
        c["lotabots_roles"] = json!(["auditor", "not-a-role"]);
        c
    });
    let spec = json!({"name": "new-model", "spec": {"source": {"uri": "s3://bucket-a/models/x/"}}});
    // (method, uri, body, [viewer, requester, auditor, admin, by_claim])
    let table: Vec<(&str, String, Option<Value>, [u16; 5])> = vec![
        (
            "GET",
            "/v1/gpu-attestations".into(),
            None,
            [200, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/gpu-attestations/h100".into(),
            None,
            [200, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/namespaces/team-a/model-attestations/llama".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/nodes/gpu-0/token".into(),
            None,
            [200, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/namespaces/team-a/model-attestations/llama/token".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        ("GET", "/v1/audit".into(), None, [403, 403, 200, 200, 200]),
        (
            "GET",
            "/v1/audit/verify".into(),
            None,
            [403, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/namespaces/team-a/model-attestations".into(),
            Some(spec),
            [403, 201, 403, 409, 403],
        ),
    ];
    for (method, uri, body, want) in table {
        for (who, token, want) in [
            ("viewer", &viewer, want[0]),
            ("requester", &requester, want[1]),
            ("auditor", &auditor, want[2]),
            ("admin", &admin, want[3]),
            ("roles claim", &by_claim, want[4]),
        ] {
            let r = f.call(method, &uri, Some(token), body.clone()).await;
            assert_eq!(r.status.as_u16(), want, "{who} {method} {uri}: {}", r.body);
        }
    }
    let r = f
        .call("GET", "/v1/gpu-attestations", Some(&nobody), None)
        .await;
    assert_problem(&r, StatusCode::FORBIDDEN, "no role");
}

#[tokio::test]
async fn a_namespaced_caller_sees_nothing_of_other_namespaces() {
    let f = fixture();
    let a = f.token("rita", &["team-a-requesters"]);
    let r = f
        .call("GET", "/v1/model-attestations", Some(&a), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["namespace"].as_str().unwrap(),
                i["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["team-a/llama", "team-a/pending"]);
    for (method, uri, body) in [
        (
            "GET",
            "/v1/namespaces/team-b/model-attestations/secret-model",
            None,
        ),
        ("GET", "/v1/model-attestations?namespace=team-b", None),
        (
            "POST",
            "/v1/namespaces/team-b/model-attestations/secret-model/token",
            None,
        ),
        (
            "POST",
            "/v1/namespaces/team-b/model-attestations",
            Some(json!({"name": "x", "spec": {"source": {"uri": "s3://bucket-b/m/"}}})),
        ),
    ] {
        let r = f.call(method, uri, Some(&a), body).await;
        assert_problem(&r, StatusCode::FORBIDDEN, "team-b");
    }
    // An admin sees both namespaces; a verdict filter narrows the list.
    let admin = f.token("root", &[]);
    let r = f
        .call(
            "GET",
            "/v1/model-attestations?verdict=Failed",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["name"], "secret-model");
}

#[tokio::test]
async fn requesting_a_model_attestation_creates_it_in_the_callers_namespace() {
    let f = fixture();
    let a = f.token("rita", &["team-a-requesters"]);
    let body = json!({"name": "mistral", "spec": {"source": {"uri": "s3://models-a/mistral/"}}});
    let r = f
        .call(
            "POST",
            "/v1/namespaces/team-a/model-attestations",
            Some(&a),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["requestedBy"], "rita");
    assert_eq!(r.body["verdict"], "Unknown");
    let again = f
        .call(
            "GET",
            "/v1/namespaces/team-a/model-attestations/mistral",
            Some(&a),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let dup = f
        .call(
            "POST",
            "/v1/namespaces/team-a/model-attestations",
            Some(&a),
            Some(body),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let f = fixture();
    let admin = f.token("root", &[]);
    let field = |r: &Reply| r.body["errors"][0]["field"].as_str().unwrap().to_owned();
    for (uri, want) in [
        ("/v1/gpu-attestations?limit=abc", "limit"),
        ("/v1/gpu-attestations?limit=0", "limit"),
        ("/v1/gpu-attestations?verdict=Great", "verdict"),
        ("/v1/gpu-attestations?colour=red", "colour"),
        ("/v1/gpu-attestations?continue=@@@", "continue"),
        ("/v1/gpu-attestations/Not_A_Name", "name"),
        ("/v1/model-attestations?namespace=UPPER", "namespace"),
        ("/v1/audit?limit=5000", "limit"),
    ] {
        let r = f.call("GET", uri, Some(&admin), None).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, want);
        assert_eq!(field(&r), want, "{uri}");
    }
    let create = "/v1/namespaces/team-a/model-attestations";
    for (body, want) in [
        (json!({"spec": {}}), "/"),
        (
            json!({"name": "ok", "spec": {"source": {"uri": 7}}}),
            "/spec/source/uri",
        ),
        (
            json!({"name": "ok", "spec": {"source": {}}}),
            "/spec/source",
        ),
        (
            json!({"name": "Bad Name", "spec": {"source": {"uri": "s3://b-1/x/"}}}),
            "/name",
        ),
        (json!({"name": "ok", "extra": 1, "spec": {}}), "/"),
    ] {
        let r = f
            .call("POST", create, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert!(
            field(&r).starts_with(want),
            "{body}: field {} is not {want}",
            field(&r)
        );
    }
    let nonce = f
        .call(
            "POST",
            "/v1/nodes/gpu-0/token",
            Some(&admin),
            Some(json!({"nonce": "short"})),
        )
        .await;
    assert_eq!(field(&nonce), "/nonce");
    // Paging walks every item once.
    let p1 = f
        .call("GET", "/v1/gpu-attestations?limit=2", Some(&admin), None)
        .await;
    let next = p1.body["continue"].as_str().unwrap().to_owned();
    let p2 = f
        .call(
            "GET",
            &format!("/v1/gpu-attestations?limit=2&continue={next}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(p2.body["items"][0]["name"], "idle");
    assert!(p2.body.get("continue").is_none());
    let missing = f
        .call("GET", "/v1/gpu-attestations/nope", Some(&admin), None)
        .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "nope");
}

#[tokio::test]
async fn a_big_body_is_413_and_a_non_json_body_415() {
    let f = fixture();
    let admin = f.token("root", &[]);
    let big = json!({"name": "x", "spec": {"pad": "x".repeat(100 * 1024)}});
    let r = f
        .call(
            "POST",
            "/v1/namespaces/team-a/model-attestations",
            Some(&admin),
            Some(big),
        )
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than 65536 bytes");
    let mut req = Request::post("/v1/namespaces/team-a/model-attestations")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("name: x"))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo::<SocketAddr>(([10, 0, 0, 1], 1).into()));
    assert_eq!(f.send(req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn rate_limits_per_identity_and_per_address_answer_429_then_reset() {
    let per_second = |burst| RateLimit {
        per_minute: std::num::NonZeroU32::new(60).unwrap(),
        burst: std::num::NonZeroU32::new(burst).unwrap(),
    };
    let f = fixture_with(Limits {
        per_identity: per_second(2),
        per_address: per_second(4),
        ..Limits::default()
    });
    let alice = f.token("alice", &["viewers"]);
    let bob = f.token("bob", &["viewers"]);
    let uri = "/v1/gpu-attestations";
    let ip = |last| SocketAddr::from(([10, 0, 0, last], 4000));
    // Per identity: alice's third request within the second is refused, from any address.
    for i in 1..=2 {
        assert_eq!(
            f.call_from(ip(i), "GET", uri, Some(&alice), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    let r = f.call_from(ip(3), "GET", uri, Some(&alice), None).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "for alice");
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // bob is not charged for alice.
    assert_eq!(
        f.call_from(ip(4), "GET", uri, Some(&bob), None)
            .await
            .status,
        StatusCode::OK
    );
    // Per address: four from one address, whoever they are, then 429 before authentication.
    let shared = ip(9);
    let garbage = "not-a-token";
    for _ in 0..4 {
        let r = f.call_from(shared, "GET", uri, Some(garbage), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = f.call_from(shared, "GET", uri, Some(&bob), None).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "from 10.0.0.9");
    // After the Retry-After the quota is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        f.call_from(ip(5), "GET", uri, Some(&alice), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        f.call_from(shared, "GET", uri, Some(&bob), None)
            .await
            .status,
        StatusCode::OK
    );
}

/// Verifies with the `jsonwebtoken` crate directly against the served JWKS: our own
/// verifier is not involved.
fn independently_verified(token: &str, jwks: &Value) -> AttestationClaims {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid in the JWKS");
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_issuer(&["https://lotabots-operator.test.svc"]);
    v.validate_aud = false;
    jsonwebtoken::decode::<AttestationClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims
}

#[tokio::test]
async fn node_and_model_tokens_verify_against_the_published_jwks() {
    let f = fixture();
    let viewer = f.token("vera", &["viewers"]);
    let jwks = f.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.body["keys"][0]["alg"], "ES256");
    assert!(
        jwks.body["keys"][0].get("d").is_none(),
        "a private key is published"
    );

    let r = f
        .call(
            "POST",
            "/v1/nodes/gpu-0/token",
            Some(&viewer),
            Some(json!({"nonce": "0123456789abcdef", "audience": "scheduler"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let claims = independently_verified(r.body["token"].as_str().unwrap(), &jwks.body);
    assert_eq!(claims.sub, "gpu-0");
    assert_eq!(
        claims.verdict,
        Verdict::Attested,
        "gpu-0 is attested by both policies"
    );
    assert_eq!(claims.attestations, ["a100", "h100"]);
    assert_eq!(claims.evidence_digest.as_deref(), Some("sha256:gpu-0"));
    assert_eq!(claims.gpus.len(), 8, "the GPU UUIDs of the evidence");
    assert_eq!(claims.eat_nonce.as_deref(), Some("0123456789abcdef"));
    assert_eq!(claims.aud.as_deref(), Some("scheduler"));
    assert_eq!(claims.exp - claims.iat, 120);

    let failed = f
        .call("POST", "/v1/nodes/gpu-1/token", Some(&viewer), None)
        .await;
    let claims = independently_verified(failed.body["token"].as_str().unwrap(), &jwks.body);
    assert_eq!(claims.verdict, Verdict::Failed);
    assert!(claims.gpus.is_empty(), "no evidence held for gpu-1");
    let none = f
        .call("POST", "/v1/nodes/gpu-9/token", Some(&viewer), None)
        .await;
    assert_problem(&none, StatusCode::NOT_FOUND, "gpu-9");

    let model = f
        .call(
            "POST",
            "/v1/namespaces/team-a/model-attestations/llama/token",
            Some(&viewer),
            None,
        )
        .await;
    let claims = independently_verified(model.body["token"].as_str().unwrap(), &jwks.body);
    assert_eq!(claims.sub, format!("sha256:{:064x}", 7));
    assert_eq!(claims.attestations, ["team-a/llama"]);
    let pending = f
        .call(
            "POST",
            "/v1/namespaces/team-a/model-attestations/pending/token",
            Some(&viewer),
            None,
        )
        .await;
    assert_problem(
        &pending,
        StatusCode::CONFLICT,
        "no verified manifest digest",
    );

    // After a rotation the JWKS publishes both keys; the old token still verifies.
    let old_token = r.body["token"].as_str().unwrap().to_owned();
    let old = f.keys.get();
    f.keys.set(KeySet {
        current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
        previous: Some((old.current.clone(), Timestamp::now())),
    });
    let both = f.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(both.body["keys"].as_array().unwrap().len(), 2);
    independently_verified(&old_token, &both.body);
}

#[tokio::test]
async fn the_audit_trail_pages_and_its_verification_finds_the_first_broken_link() {
    let f = fixture();
    let auditor = f.token("audrey", &["auditors"]);
    let r = f
        .call("GET", "/v1/audit?after=1&limit=1", Some(&auditor), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["entries"][0]["seq"], 2);
    assert_eq!(r.body["nextAfter"], 2);
    let ok = f
        .call("GET", "/v1/audit/verify", Some(&auditor), None)
        .await;
    assert_eq!(ok.body, json!({"intact": true, "rowsChecked": 3}));
    f.audit.tamper(2, |e| e.content = json!({"i": 99}));
    let broken = f
        .call("GET", "/v1/audit/verify", Some(&auditor), None)
        .await;
    assert_eq!(broken.body["intact"], false);
    assert_eq!(broken.body["rowsChecked"], 1);
    assert_eq!(broken.body["firstBroken"]["seq"], 2);
    assert_eq!(broken.body["firstBroken"]["reason"], "Modified");
}

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = lotabots_operator::client_api::openapi::pretty_json();
    assert!(
        checked_in == generated,
        "operator/openapi.json is out of date: regenerate it with\n  cargo run -p lotabots-operator -- openapi > operator/openapi.json"
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_route() {
    let f = fixture();
    let r = f.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let paths = r.body["paths"].as_object().unwrap();
    for p in [
        "/v1/gpu-attestations",
        "/v1/namespaces/{namespace}/model-attestations",
        "/v1/nodes/{node}/token",
        "/v1/audit/verify",
        "/.well-known/jwks.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    let unknown = f.call("GET", "/v2/nothing", None, None).await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "no such route");
}
