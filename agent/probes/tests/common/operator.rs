//! A stand-in operator (HTTPS on an ephemeral 127.0.0.1 port, a CA made by the test, from
//! `lotabots-operator-client`'s `testing` feature): it serves a suite and a model's files
//! on the probe pod's fetch contract (`crds::workload::MODEL_PATH`), takes results at
//! `RESULT_PATH`, refuses any other bearer token than the pod's with a 401 problem
//! document, and records every request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lotabots_crds::workload::{MODEL_PATH, ModelFile, ModelFiles, RESULT_PATH, WorkloadResult};
use lotabots_operator_client::testing::TestCa;

/// The pod's token, as [`pod_env`] writes it.
pub const TOKEN: &str = "pod-bound-token";
/// The workload request id [`pod_env`] sets, and the only `{id}` served.
pub const REQUEST_ID: &str = "c0ffee";
/// The detail of the stand-in's 401.
pub const REJECTED: &str = "the bearer token is not the token of the probe pod c0ffee";

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, as sent (percent-encoded).
    pub path: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// What the stand-in serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// The model's files, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The file list served; `None`: `files` with their sizes.
    pub list: Option<ModelFiles>,
    /// The manifest digest the list names.
    pub manifest_digest: String,
    /// The suite's bytes.
    pub suite: Vec<u8>,
    /// The status results are answered with.
    pub result_status: u16,
}

impl Served {
    /// `files`, listed as they are, with `suite`; results accepted (202).
    pub fn new(files: BTreeMap<String, Vec<u8>>, manifest_digest: &str, suite: Vec<u8>) -> Self {
        Self {
            files,
            list: None,
            manifest_digest: manifest_digest.to_owned(),
            suite,
            result_status: 202,
        }
    }

    /// Every file under `dir` (links followed), by its `/`-separated relative path.
    pub fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, into);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                    into.insert(rel.replace('\\', "/"), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(dir, dir, &mut files);
        files
    }

    /// The list served.
    pub fn model_files(&self) -> ModelFiles {
        self.list.clone().unwrap_or_else(|| ModelFiles {
            manifest_digest: self.manifest_digest.clone(),
            files: self
                .files
                .iter()
                .map(|(path, bytes)| ModelFile {
                    path: path.clone(),
                    size: bytes.len() as u64,
                })
                .collect(),
        })
    }
}

/// A running stand-in.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Its base URL.
    pub url: String,
    /// The CA that issued its certificate (PEM).
    pub ca_pem: String,
    /// Every request so far.
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Operator {
    /// Starts one serving `served`; it lives as long as the test process.
    pub fn start(served: Served) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = Stand {
            served: Arc::new(served),
            received: received.clone(),
        };
        let app = Router::new()
            .route(&format!("{MODEL_PATH}/{{id}}/suite"), get(suite))
            .route(&format!("{MODEL_PATH}/{{id}}/files"), get(list))
            .route(&format!("{MODEL_PATH}/{{id}}/files/{{*path}}"), get(file))
            .route(RESULT_PATH, post(result))
            .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such endpoint") })
            .with_state(state);
        let ca = TestCa::new("stand-in operator CA");
        Self {
            url: ca.serve(app),
            ca_pem: ca.pem(),
            received,
        }
    }

    /// A stand-in that serves nothing to fetch and answers results with `status`.
    pub fn taking_results(status: u16) -> Self {
        let mut served = Served::new(BTreeMap::new(), "", Vec::new());
        served.result_status = status;
        Self::start(served)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The results posted so far.
    pub fn results(&self) -> Vec<WorkloadResult> {
        self.received()
            .iter()
            .filter(|r| r.path == RESULT_PATH)
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// The paths of the model files asked for.
    pub fn file_downloads(&self) -> Vec<String> {
        let prefix = format!("{MODEL_PATH}/{REQUEST_ID}/files/");
        self.received()
            .iter()
            .filter_map(|r| r.path.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }
}

#[derive(Clone)]
struct Stand {
    served: Arc<Served>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Stand {
    /// Records the request; the answer when its token or id is not the pod's.
    fn refusal(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        id: Option<&str>,
    ) -> Option<Response> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        self.received.lock().unwrap().push(Received {
            method: method.to_string(),
            path: uri.path().to_owned(),
            authorization: authorization.clone(),
            body: body.to_vec(),
        });
        if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return Some(problem(StatusCode::UNAUTHORIZED, REJECTED));
        }
        match id {
            Some(id) if id != REQUEST_ID => Some(problem(
                StatusCode::NOT_FOUND,
                &format!("no probe workload {id}"),
            )),
            _ => None,
        }
    }
}

/// An RFC 9457 problem document.
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "https://lotabots.io/problems/stand-in",
        "title": status.canonical_reason(),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn suite(
    State(s): State<Stand>,
    UrlPath(id): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = s.refusal(&method, &uri, &headers, &[], Some(&id)) {
        return refusal;
    }
    s.served.suite.clone().into_response()
}

async fn list(
    State(s): State<Stand>,
    UrlPath(id): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = s.refusal(&method, &uri, &headers, &[], Some(&id)) {
        return refusal;
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&s.served.model_files()).unwrap(),
    )
        .into_response()
}

async fn file(
    State(s): State<Stand>,
    UrlPath((id, path)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = s.refusal(&method, &uri, &headers, &[], Some(&id)) {
        return refusal;
    }
    match s.served.files.get(&path) {
        Some(bytes) => bytes.clone().into_response(),
        None => problem(StatusCode::NOT_FOUND, &format!("no model file {path}")),
    }
}

async fn result(
    State(s): State<Stand>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = s.refusal(&method, &uri, &headers, &body, None) {
        return refusal;
    }
    let status = StatusCode::from_u16(s.served.result_status).unwrap();
    if status.is_success() {
        (status, "{}").into_response()
    } else {
        problem(status, "the stand-in refuses results")
    }
}

/// The pod's environment as the launcher sets it, with the token and CA written in `dir`.
pub fn pod_env(
    cmd: &mut assert_cmd::Command,
    dir: &Path,
    operator: &Operator,
    params: &serde_json::Value,
) {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("ca.pem"), &operator.ca_pem).unwrap();
    cmd.env("LOTABOTS_OPERATOR_URL", &operator.url)
        .env("LOTABOTS_TOKEN_FILE", dir.join("token"))
        .env("LOTABOTS_CA_FILE", dir.join("ca.pem"))
        .env("LOTABOTS_WORKLOAD_ID", REQUEST_ID)
        .env("LOTABOTS_NONCE", "ab".repeat(32))
        .env("LOTABOTS_NODE", "gpu-node-7")
        .env("LOTABOTS_WORKLOAD_PARAMS", params.to_string());
}
