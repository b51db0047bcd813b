//! The client API of `lotabots-operator run` on a real control plane: callers present
//! ServiceAccount tokens minted by the API server (TokenRequest) and checked by its
//! TokenReview; GpuAttestations and ModelAttestations are listed from the watches;
//! a ModelAttestation is requested on a caller's behalf; the attestation tokens are
//! verified by PyJWT against the JWKS the API serves, not by our own code; and
//! schemathesis, with valid credentials, finds no server error and no response that
//! breaks the OpenAPI document.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use lotabots_crds::gpu_attestation::GpuAttestation;
use lotabots_crds::model_attestation::ModelAttestation;
use lotabots_e2e::agents::service_account;
use lotabots_e2e::stores::StoreBins;
use lotabots_e2e::{ControlPlane, SimNode, scenario, suite::Ctx, wait};
use lotabots_operator::client_api::ClientApiMetrics;
use lotabots_operator::client_api::config::{ClientApiSettings, TokenSettings};
use lotabots_operator::client_api::limits::Limits;
use lotabots_operator::client_api::serve::serve;
use lotabots_operator::evidence_api::RateLimit;
use lotabots_operator::leader::LeaseConfig;
use lotabots_operator::tokens::keys::Rotation;
use lotabots_store::db::{Database, NewAuditEvent};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "client_api",
        || {
            ControlPlane::builder()
                .with_crds()
                .without_scheduler()
                .nodes(SimNode::default_fleet())
                .with_stores()
        },
        &[
            scenario!(serviceaccount_callers_list_request_and_fetch_tokens_pyjwt_verifies),
            scenario!(schemathesis_finds_no_server_error_and_no_schema_violation),
        ],
    )
}

/// The audience client tokens are minted for.
const AUDIENCE: &str = "lotabots-api";

/// `run` with the client API, on 127.0.0.1 with a self-signed certificate.
struct Running {
    url: String,
    http: reqwest::Client,
    ns: String,
    task: JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    _dir: TempDir,
}

async fn start(ctx: &Ctx, limits: Limits) -> Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ns = ctx.namespace().await?;
    let dir = TempDir::new()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem())?;
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())?;
    let ports = lotabots_e2e::ports::free_ports(3)?;
    let bindings = [
        format!("group:system:serviceaccounts:{ns}=requester/{ns}"),
        format!("user:system:serviceaccount:{ns}:admin=admin"),
        format!("user:system:serviceaccount:{ns}:auditor=auditor"),
    ]
    .iter()
    .map(|b| b.parse().map_err(anyhow::Error::msg))
    .collect::<Result<Vec<_>>>()?;
    let cfg = lotabots_operator::run::RunConfig {
        listen: ([127, 0, 0, 1], ports[0]).into(),
        manage_certificates: false,
        tls_cert: dir.path().join("tls.crt"),
        tls_key: dir.path().join("tls.key"),
        probe_addr: ([127, 0, 0, 1], ports[1]).into(),
        agents: vec![format!("{ns}/agent")],
        nonce_ttl: Duration::from_secs(60),
        settings: lotabots_operator::controller::Settings {
            grace: Duration::from_secs(60),
            allow_simulated: true,
            resync: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            reference_bundle: None,
        },
        lease: LeaseConfig {
            namespace: ns.clone(),
            name: "lotabots-operator".into(),
            identity: "run-0".into(),
            duration: Duration::from_secs(3),
            retry: Duration::from_secs(1),
        },
        client_api: Some(ClientApiSettings {
            listen: ([127, 0, 0, 1], ports[2]).into(),
            oidc: None,
            service_account_audience: AUDIENCE.into(),
            bindings,
            tokens: TokenSettings {
                issuer: format!("https://lotabots-operator.{ns}.svc"),
                ttl: Duration::from_secs(300),
                secret: "lotabots-token-signing".into(),
                rotation: Rotation::default(),
            },
            limits,
        }),
        store: Default::default(),
        models: Default::default(),
        workloads: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lotabots_operator::run::run_with(
        ctx.client(),
        cfg,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes())?)
        .build()?;
    let url = format!("https://127.0.0.1:{}", ports[2]);
    wait::until("the client API to serve", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), format!("{url}/openapi.json"));
        async move {
            Ok(matches!(http.get(&url).send().await, Ok(r) if r.status() == 200).then_some(()))
        }
    })
    .await?;
    Ok(Running {
        url,
        http,
        ns,
        task,
        stop,
        _dir: dir,
    })
}

impl Running {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .context("run did not stop when asked")???;
        Ok(())
    }
}

/// A token of ServiceAccount `ns/sa` for `audience`, from the API server's TokenRequest.
async fn sa_token(client: &kube::Client, ns: &str, sa: &str, audience: &str) -> Result<String> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {ns}/{sa}"))?
        .status
        .and_then(|s| s.token)
        .context("a TokenRequest without token")
}

/// PyJWT's verdict on `token` with the keys in `jwks`: the claims, or its error.
async fn pyjwt(dir: &Path, token: &str, jwks: &Value, issuer: &str) -> Result<Value> {
    let python = StoreBins::locate()?.dir().join("python");
    std::fs::write(dir.join("jwks.json"), serde_json::to_vec(jwks)?)?;
    std::fs::write(dir.join("token"), token)?;
    let script = r#"
import json, sys, jwt
d = sys.argv[1]
token = open(d + "/token").read().strip()
kid = jwt.get_unverified_header(token)["kid"]
keys = {k["kid"]: k for k in json.load(open(d + "/jwks.json"))["keys"]}
key = jwt.PyJWK(keys[kid], algorithm="ES256")
claims = jwt.decode(token, key=key, algorithms=["ES256"], issuer=sys.argv[2],
                    options={"require": ["exp", "iat", "nbf", "iss", "sub", "jti"], "verify_aud": False})
print(json.dumps(claims))
"#;
    let out = tokio::process::Command::new(python)
        .args(["-c", script])
        .arg(dir)
        .arg(issuer)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "PyJWT refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn generous() -> Limits {
    let lots = RateLimit {
        per_minute: std::num::NonZeroU32::new(1_000_000).expect("non-zero"),
        burst: std::num::NonZeroU32::new(100_000).expect("non-zero"),
    };
    Limits {
        per_identity: lots,
        per_address: lots,
        ..Limits::default()
    }
}

async fn serviceaccount_callers_list_request_and_fetch_tokens_pyjwt_verifies(
    ctx: Ctx,
) -> Result<()> {
    let client = ctx.client();
    let api = start(&ctx, Limits::default()).await?;
    let ns = api.ns.clone();
    let other = format!("{ns}-other");
    lotabots_e2e::resources::ensure_namespace(&client, &other).await?;
    for sa in ["admin", "ci", "auditor"] {
        service_account(&client, &ns, sa).await?;
    }
    service_account(&client, &other, "intruder").await?;
    let admin = sa_token(&client, &ns, "admin", AUDIENCE).await?;
    let ci = sa_token(&client, &ns, "ci", AUDIENCE).await?;
    let auditor = sa_token(&client, &ns, "auditor", AUDIENCE).await?;
    let intruder = sa_token(&client, &other, "intruder", AUDIENCE).await?;
    let agent_audience = sa_token(&client, &ns, "admin", "lotabots").await?;

    // A GpuAttestation selecting the GPU nodes: no agent reports, so the controller lists
    // them as Unknown (first evidence pending).
    let gpu_name = ctx.name("fleet");
    let sample =
        lotabots_e2e::repo_root().join("config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml");
    let mut att: GpuAttestation = serde_yaml::from_str(&std::fs::read_to_string(sample)?)?;
    att.metadata.name = Some(gpu_name.clone());
    Api::<GpuAttestation>::all(client.clone())
        .create(&PostParams::default(), &att)
        .await?;
    let listed: Value = wait::until(
        "the GpuAttestation listed with its nodes",
        Duration::from_secs(60),
        || {
            let (api, admin, gpu_name) = (&api, &admin, &gpu_name);
            async move {
                let (status, body) = api
                    .call(
                        "GET",
                        &format!("/v1/gpu-attestations/{gpu_name}"),
                        admin,
                        None,
                    )
                    .await?;
                Ok(
                    (status == 200 && body["nodes"].as_array().is_some_and(|n| !n.is_empty()))
                        .then_some(body),
                )
            }
        },
    )
    .await?;
    let node = listed["nodes"][0]["node"]
        .as_str()
        .context("node name")?
        .to_owned();
    ensure!(listed["nodes"][0]["verdict"] == "Unknown", "{listed}");

    // Who may do what.
    let (s, b) = api.call("GET", "/v1/gpu-attestations", &ci, None).await?;
    ensure!(
        s == 403,
        "a namespaced requester read cluster-scoped attestations: {s} {b}"
    );
    let (s, b) = api
        .call("GET", "/v1/gpu-attestations", &agent_audience, None)
        .await?;
    ensure!(
        s == 401 && b["detail"].as_str().unwrap_or_default().contains(AUDIENCE),
        "a token for another audience: {s} {b}"
    );
    let (s, b) = api
        .call("GET", "/v1/gpu-attestations", &intruder, None)
        .await?;
    ensure!(
        s == 403 && b["detail"].as_str().unwrap_or_default().contains("no role"),
        "{s} {b}"
    );
    let (s, _) = api
        .call("GET", "/v1/gpu-attestations", "forged.token.value", None)
        .await?;
    ensure!(s == 401, "a forged token: {s}");

    // A requester asks for a model attestation in its namespace, not in another.
    let request = json!({"name": "mistral", "spec": {"source": {"uri": "s3://models/mistral/"}}});
    let (s, b) = api
        .call(
            "POST",
            &format!("/v1/namespaces/{ns}/model-attestations"),
            &ci,
            Some(request.clone()),
        )
        .await?;
    ensure!(s == 201, "create: {s} {b}");
    let created = Api::<ModelAttestation>::namespaced(client.clone(), &ns)
        .get("mistral")
        .await?;
    let by = created
        .metadata
        .annotations
        .unwrap_or_default()
        .remove("lotabots.io/requested-by");
    ensure!(
        by == Some(format!("system:serviceaccount:{ns}:ci")),
        "requested-by {by:?}"
    );
    let (s, b) = api
        .call(
            "POST",
            &format!("/v1/namespaces/{other}/model-attestations"),
            &ci,
            Some(request.clone()),
        )
        .await?;
    ensure!(s == 403, "created in another namespace: {s} {b}");
    let (s, b) = api
        .call(
            "POST",
            &format!("/v1/namespaces/{ns}/model-attestations"),
            &ci,
            Some(request),
        )
        .await?;
    ensure!(s == 409, "a duplicate: {s} {b}");
    let (s, b) = api
        .call(
            "POST",
            &format!("/v1/namespaces/{ns}/model-attestations"),
            &ci,
            Some(json!({"name": "bad", "spec": {"source": {"uri": "ftp://nope"}}})),
        )
        .await?;
    ensure!(
        s == 422
            && b["errors"][0]["field"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/spec/source"),
        "an invalid spec: {s} {b}"
    );
    // Another namespace's attestation exists, and the requester does not see it.
    let hidden: ModelAttestation = serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1", "kind": "ModelAttestation",
        "metadata": {"name": "hidden", "namespace": other},
        "spec": {"source": {"uri": "s3://models/hidden/"}}
    }))?;
    Api::<ModelAttestation>::namespaced(client.clone(), &other)
        .create(&PostParams::default(), &hidden)
        .await?;
    wait::until(
        "both ModelAttestations in the admin's list",
        Duration::from_secs(30),
        || {
            let (api, admin, ns, other) = (&api, &admin, &ns, &other);
            async move {
                // Other scenarios' attestations may be listed too: look for these two.
                let (_, b) = api
                    .call("GET", "/v1/model-attestations", admin, None)
                    .await?;
                let names: Vec<String> = b["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        format!(
                            "{}/{}",
                            i["namespace"].as_str().unwrap_or(""),
                            i["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                let want = [format!("{ns}/mistral"), format!("{other}/hidden")];
                Ok(want.iter().all(|w| names.contains(w)).then_some(()))
            }
        },
    )
    .await?;
    let (_, b) = api.call("GET", "/v1/model-attestations", &ci, None).await?;
    let seen: Vec<&str> = b["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["namespace"].as_str())
        .collect();
    ensure!(seen == [ns.as_str()], "the requester sees {seen:?}");

    // The model's verdict as its controller would write it; then tokens for both.
    let models = Api::<ModelAttestation>::namespaced(client.clone(), &ns);
    let digest = format!("sha256:{}", "ab".repeat(32));
    models
        .patch_status(
            "mistral",
            &PatchParams::apply("e2e-model-controller").force(),
            &Patch::Apply(json!({
                "apiVersion": "lotabots.io/v1alpha1", "kind": "ModelAttestation",
                "status": {"observedGeneration": 1, "verdict": "Attested", "manifestDigest": digest,
                           "reasons": ["every stage passed"]}
            })),
        )
        .await?;
    let model_token = wait::until("a model token", Duration::from_secs(30), || {
        let (api, ci, ns) = (&api, &ci, &ns);
        async move {
            let (s, b) = api
                .call(
                    "POST",
                    &format!("/v1/namespaces/{ns}/model-attestations/mistral/token"),
                    ci,
                    Some(json!({"nonce": "n0nce-from-the-relying-party"})),
                )
                .await?;
            Ok((s == 200).then_some(b))
        }
    })
    .await?;
    let (s, node_token) = api
        .call("POST", &format!("/v1/nodes/{node}/token"), &admin, None)
        .await?;
    ensure!(s == 200, "node token: {s} {node_token}");
    let (s, jwks) = api.call("GET", "/.well-known/jwks.json", "", None).await?;
    ensure!(
        s == 200 && jwks["keys"].as_array().map(Vec::len) == Some(1),
        "{jwks}"
    );

    let dir = TempDir::new()?;
    let issuer = format!("https://lotabots-operator.{ns}.svc");
    let claims = pyjwt(
        dir.path(),
        model_token["token"].as_str().context("token")?,
        &jwks,
        &issuer,
    )
    .await?;
    ensure!(
        claims["sub"] == digest.as_str()
            && claims["verdict"] == "Attested"
            && claims["eat_nonce"] == "n0nce-from-the-relying-party"
            && claims["attestations"][0] == format!("{ns}/mistral").as_str(),
        "model token claims {claims}"
    );
    let claims = pyjwt(
        dir.path(),
        node_token["token"].as_str().context("token")?,
        &jwks,
        &issuer,
    )
    .await?;
    ensure!(
        claims["sub"] == node.as_str()
            && claims["verdict"] == "Unknown"
            && claims["subject_kind"] == "node",
        "node token claims {claims}"
    );
    // PyJWT refuses it for another issuer: the check above is not vacuous.
    if pyjwt(
        dir.path(),
        node_token["token"].as_str().context("token")?,
        &jwks,
        "https://evil",
    )
    .await
    .is_ok()
    {
        bail!("PyJWT accepted the token for another issuer");
    }

    // The signing key lives in a Secret the operator created.
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("lotabots-token-signing")
        .await?;
    let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
    ensure!(
        keys.contains(&"current.pem".to_owned()),
        "Secret keys {keys:?}"
    );

    // The auditor reaches the audit routes; without a store they say so.
    let (s, b) = api.call("GET", "/v1/audit/verify", &auditor, None).await?;
    ensure!(
        s == 503 && b["detail"] == "no audit store is configured",
        "{s} {b}"
    );
    let (s, _) = api.call("GET", "/v1/audit/verify", &ci, None).await?;
    ensure!(s == 403, "a requester read the audit trail");

    Api::<GpuAttestation>::all(client.clone())
        .delete(&gpu_name, &Default::default())
        .await?;
    api.stop().await
}

/// The client API on its own (as `run` serves it), with the evidence store's PostgreSQL
/// audit log behind the audit routes, for schemathesis with admin credentials.
async fn schemathesis_finds_no_server_error_and_no_schema_violation(ctx: Ctx) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ctx.client();
    let ns = ctx.namespace().await?;
    service_account(&client, &ns, "admin").await?;
    let admin = sa_token(&client, &ns, "admin", AUDIENCE).await?;
    let model: ModelAttestation = serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1", "kind": "ModelAttestation",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {"source": {"uri": "s3://models/probe/"}}
    }))?;
    Api::<ModelAttestation>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &model)
        .await?;

    // The audit log in the harness's PostgreSQL, with a few rows.
    let db = Database::connect(&ctx.plane().stores()?.postgres.url()).await?;
    let events: Vec<NewAuditEvent> = (0..3)
        .map(|i| NewAuditEvent {
            actor: "lotabots-operator".into(),
            action: "record".into(),
            subject: format!("gpu-{i}"),
            record_id: None,
            content: json!({"verdict": "Attested"}),
        })
        .collect();
    db.audit(&events).await?;

    let dir = TempDir::new()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, cert.cert.pem())?;
    let tls = RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await?;
    let port = lotabots_e2e::ports::free_ports(1)?[0];
    let settings = ClientApiSettings {
        listen: ([127, 0, 0, 1], port).into(),
        oidc: None,
        service_account_audience: AUDIENCE.into(),
        bindings: vec![
            format!("user:system:serviceaccount:{ns}:admin=admin")
                .parse()
                .map_err(anyhow::Error::msg)?,
        ],
        tokens: TokenSettings {
            issuer: format!("https://lotabots-operator.{ns}.svc"),
            ttl: Duration::from_secs(300),
            secret: "lotabots-token-signing".into(),
            rotation: Rotation::default(),
        },
        limits: generous(),
    };
    let metrics = ClientApiMetrics::register(&prometheus::Registry::new())?;
    let server = tokio::spawn(serve(
        client.clone(),
        ns.clone(),
        settings,
        tls,
        None,
        Some(Arc::new(db.clone())),
        metrics,
    ));
    let url = format!("https://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes())?)
        .build()?;
    let result = async {
        wait::until("the client API to serve", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), format!("{url}/openapi.json"));
            async move { Ok(matches!(http.get(&url).send().await, Ok(r) if r.status() == 200).then_some(())) }
        })
        .await?;
        let verify = http
            .get(format!("{url}/v1/audit/verify"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json::<Value>()
            .await?;
        ensure!(verify["intact"] == true && verify["rowsChecked"] == 3, "audit verify {verify}");

        let st = StoreBins::locate()?.dir().join("st");
        let out = tokio::process::Command::new(&st)
            .current_dir(dir.path())
            .args(["run", &format!("{url}/openapi.json"), "--url", &url])
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .arg("--tls-verify")
            .arg(&ca)
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
                // One worker: CPython 3.11 compiling ASTs on two threads at once can fail
                // inside schemathesis ("AST constructor recursion depth mismatch"), a crash
                // of the tool, not a finding about the API.
                "--max-examples", "25", "--workers", "1", "--no-color", "--seed", "1",
                "--generation-database", "none",
            ])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "schemathesis found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", stdout.lines().filter(|l| l.contains("generated") || l.contains("passed")).collect::<Vec<_>>().join("\n"));
        // The API survived the fuzzing, and the audit chain is still whole.
        let after = http
            .get(format!("{url}/v1/audit/verify"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json::<Value>()
            .await?;
        ensure!(after["intact"] == true, "after fuzzing: {after}");
        Ok(())
    }
    .await;
    server.abort();
    result
}
