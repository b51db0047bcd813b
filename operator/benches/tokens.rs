//! Attestation tokens and the client API under load.
//!
//! `cargo bench -p lotabots-operator --bench tokens` prints:
//! - ES256 attestation tokens issued per second and verified per second (our verifier:
//!   pinned algorithm, kid lookup, signature, times), on one thread;
//! - the latency of `GET /v1/gpu-attestations/{name}` over HTTPS on 127.0.0.1, with an
//!   OIDC bearer token checked on every request, while a second process (this binary,
//!   re-executed as the load generator) keeps `LOAD_CONNECTIONS` keep-alive connections
//!   busy for `LOAD_SECONDS`: requests per second and p50/p90/p99/max.
//!
//! Figures, not assertions: they are compared by a person, in the closing note.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_server::tls_rustls::RustlsConfig;
use jiff::Timestamp;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use lotabots_crds::gpu_attestation::{GpuAttestation, GpuAttestationStatus, NodeSummary, Verdict};
use lotabots_crds::model_attestation::ModelAttestation;
use lotabots_operator::client_api::auth::{ClientAuthenticator, OidcConfig};
use lotabots_operator::client_api::limits::Limits;
use lotabots_operator::client_api::problem::ApiError;
use lotabots_operator::client_api::source::{Attestations, CreateFuture, ModelRequests};
use lotabots_operator::client_api::{ClientApi, ClientApiMetrics, ClientApiParts};
use lotabots_operator::evidence_api::RateLimit;
use lotabots_operator::tokens::jwks::{CachedJwks, JwksSource, http_client};
use lotabots_operator::tokens::keys::{KeyRing, KeySet, SigningKey};
use lotabots_operator::tokens::{Expectations, Statement, SubjectKind, TokenSigner, verify};
use serde_json::json;

const LOAD_CONNECTIONS: usize = 16;
const LOAD_SECONDS: u64 = 10;
const LOADGEN_ENV: &str = "LOTABOTS_BENCH_LOADGEN";

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Ok(spec) = std::env::var(LOADGEN_ENV) {
        load_generator(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    tokens_per_second();
    api_latency_under_load();
}

fn statement() -> Statement {
    Statement {
        kind: SubjectKind::Node,
        subject: "gpu-h100-0".into(),
        verdict: Verdict::Attested,
        reasons: vec!["every rule of the policy holds".into()],
        gpus: (0..8)
            .map(|i| format!("GPU-{i:08x}-0000-0000-0000-000000000000"))
            .collect(),
        evidence_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        attestations: vec!["h100-fleet".into()],
    }
}

fn tokens_per_second() {
    let ring = Arc::new(KeyRing::new(KeySet {
        current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
        previous: None,
    }));
    let signer = TokenSigner::new(
        "https://lotabots-operator.bench.svc",
        Duration::from_secs(300),
        ring,
    );
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let mut tokens = Vec::new();
    while started.elapsed() < run {
        tokens.push(
            signer
                .issue(
                    statement(),
                    Some("rp".into()),
                    Some("0123456789abcdef".into()),
                    Timestamp::now(),
                )
                .unwrap()
                .token,
        );
    }
    let issued_per_s = tokens.len() as f64 / started.elapsed().as_secs_f64();
    let jwks = signer.jwks();
    let expect = Expectations {
        issuer: Some("https://lotabots-operator.bench.svc".into()),
        audience: Some("rp".into()),
        leeway: Duration::from_secs(30),
    };
    let started = Instant::now();
    let mut verified = 0usize;
    while started.elapsed() < run {
        for t in tokens.iter().take(500) {
            verify(t, &jwks, &expect).unwrap();
            verified += 1;
        }
    }
    let verified_per_s = verified as f64 / started.elapsed().as_secs_f64();
    println!(
        "attestation tokens (ES256, one thread, {} bytes each)",
        tokens[0].len()
    );
    println!("  issued    {issued_per_s:>10.0} /s");
    println!("  verified  {verified_per_s:>10.0} /s");
}

/// Never asked in this benchmark: it only reads.
struct NoRequests;

impl ModelRequests for NoRequests {
    fn create(&self, _: ModelAttestation) -> CreateFuture<'_> {
        Box::pin(async {
            Err(ApiError::Unavailable(
                "the benchmark takes no requests".into(),
            ))
        })
    }
}

fn gpu_attestation(name: &str, nodes: usize) -> GpuAttestation {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml"
    );
    let mut att: GpuAttestation =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    att.metadata.name = Some(name.into());
    att.metadata.generation = Some(1);
    att.status = Some(GpuAttestationStatus {
        observed_generation: Some(1),
        matched_nodes: nodes as u32,
        attested_nodes: nodes as u32,
        nodes: (0..nodes)
            .map(|i| NodeSummary {
                node: format!("gpu-{i}"),
                verdict: Verdict::Attested,
                reasons: vec!["every rule of the policy holds".into()],
                evidence_digest: Some(format!("sha256:{}", "ab".repeat(32))),
                checked_at: None,
            })
            .collect(),
        ..Default::default()
    });
    att
}

fn api_latency_under_load() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::TempDir::new().unwrap();
        // The OIDC issuer: a P-256 key whose JWKS is a file.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap()).unwrap();
        let now = Timestamp::now().as_second();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        let bearer = jsonwebtoken::encode(
            &header,
            &json!({"iss": "https://idp.bench", "aud": "lotabots-api", "sub": "bench", "groups": ["viewers"],
                    "iat": now, "exp": now + 3600}),
            &enc,
        )
        .unwrap();

        let (gpu, mut gpu_w) = reflector::store();
        let (model, mut model_w) = reflector::store::<ModelAttestation>();
        gpu_w.apply_watcher_event(&Event::Init);
        for i in 0..20 {
            gpu_w.apply_watcher_event(&Event::InitApply(gpu_attestation(&format!("fleet-{i}"), 100)));
        }
        gpu_w.apply_watcher_event(&Event::InitDone);
        model_w.apply_watcher_event(&Event::Init);
        model_w.apply_watcher_event(&Event::InitDone);
        let lots = RateLimit {
            per_minute: std::num::NonZeroU32::new(100_000_000).unwrap(),
            burst: std::num::NonZeroU32::new(1_000_000).unwrap(),
        };
        let api = Arc::new(ClientApi::new(ClientApiParts {
            auth: ClientAuthenticator::new(
                Some(OidcConfig {
                    issuer: "https://idp.bench".into(),
                    audiences: vec!["lotabots-api".into()],
                    jwks: Arc::new(CachedJwks::new(
                        JwksSource::File(jwks_file),
                        http_client(None).unwrap(),
                        Duration::from_secs(300),
                        Duration::from_secs(30),
                    )),
                    algorithms: vec![Algorithm::ES256],
                    leeway: Duration::from_secs(30),
                    username_claim: "sub".into(),
                    groups_claim: "groups".into(),
                    roles_claim: None,
                }),
                None,
                vec!["group:viewers=viewer".parse().unwrap()],
            ),
            data: Attestations { gpu, model, evidence: None },
            models: Arc::new(NoRequests),
            audit: None,
            signer: TokenSigner::new(
                "https://lotabots-operator.bench.svc",
                Duration::from_secs(300),
                Arc::new(KeyRing::new(KeySet {
                    current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
                    previous: None,
                })),
            ),
            limits: Limits { per_identity: lots, per_address: lots, ..Limits::default() },
            metrics: ClientApiMetrics::register(&prometheus::Registry::new()).unwrap(),
        }));
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let tls = RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        tokio::spawn(
            axum_server::from_tcp_rustls(listener, tls)
                .handle(handle.clone())
                .serve(api.router().into_make_service_with_connect_info::<SocketAddr>()),
        );
        let url = format!("https://{addr}/v1/gpu-attestations/fleet-7");
        let spec = serde_json::to_string(&json!({
            "url": url, "ca": ca, "token": bearer,
            "connections": LOAD_CONNECTIONS, "seconds": LOAD_SECONDS,
        }))
        .unwrap();
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(LOADGEN_ENV, spec)
            .output()
            .await
            .unwrap();
        handle.shutdown();
        assert!(out.status.success(), "load generator: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        println!(
            "GET /v1/gpu-attestations/{{name}} (HTTPS, OIDC bearer checked per request, 100-node status, {} bytes), load from a second process: {LOAD_CONNECTIONS} connections for {LOAD_SECONDS}s",
            r["bytes"]
        );
        println!("  requests  {:>10.0} /s ({} ok, {} other)", r["rps"].as_f64().unwrap(), r["ok"], r["errors"]);
        for q in ["p50", "p90", "p99", "max"] {
            println!("  {q:<8}  {:>10.2} ms", r[q].as_f64().unwrap());
        }
    });
}

/// The second process: keep-alive HTTPS connections issuing GETs as fast as answered.
fn load_generator(spec: &str) {
    let spec: serde_json::Value = serde_json::from_str(spec).unwrap();
    let url = spec["url"].as_str().unwrap().to_owned();
    let token = spec["token"].as_str().unwrap().to_owned();
    let ca = std::fs::read(spec["ca"].as_str().unwrap()).unwrap();
    let connections = spec["connections"].as_u64().unwrap() as usize;
    let seconds = spec["seconds"].as_u64().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            // One client per connection: each keeps its own keep-alive connection.
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (url, token) = (url.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut errors, mut bytes) = (0u64, 0usize);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status() == 200 => {
                            bytes = r.bytes().await.map(|b| b.len()).unwrap_or(0);
                            lat.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors, bytes)
            }));
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let (mut errors, mut bytes) = (0, 0);
        for t in tasks {
            let (lat, e, b) = t.await.unwrap();
            all.extend(lat);
            errors += e;
            bytes = bytes.max(b);
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
        println!(
            "{}",
            json!({"rps": all.len() as f64 / elapsed, "ok": all.len(), "errors": errors, "bytes": bytes,
                   "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": q(1.0)})
        );
    });
}
