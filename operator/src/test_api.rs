//! A scripted API server for the controllers' tests: which requests they make, and what
//! they do when those fail.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::json;

/// Every request made: method, path, body.
pub type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// Answers every request: `fail(method, path)` may give an error status; otherwise the
/// request body is echoed (status patches get `object` back).
pub fn api_server(
    object: serde_json::Value,
    fail: fn(&str, &str) -> Option<u16>,
) -> (Client, Seen) {
    api_server_answering(object, fail, |_, _| None)
}

/// As [`api_server`], and `answer(method, path)` may give the object a request gets
/// (a ConfigMap read, a node list).
pub fn api_server_answering(
    object: serde_json::Value,
    fail: fn(&str, &str) -> Option<u16>,
    answer: fn(&str, &str) -> Option<serde_json::Value>,
) -> (Client, Seen) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
            log.lock()
                .unwrap()
                .push((method.clone(), path.clone(), body.clone()));
            let response = match fail(&method, &path) {
                Some(code) => Response::builder()
                    .status(code)
                    .body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "scripted failure", "code": code,
                            // As the API server says it, so that `get_opt` reads it.
                            "reason": if code == 404 { "NotFound" } else { "InternalError" }
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
                None if answer(&method, &path).is_some() => Response::new(Body::from(
                    serde_json::to_vec(&answer(&method, &path)).unwrap(),
                )),
                None if path.ends_with("/status") => {
                    Response::new(Body::from(serde_json::to_vec(&object).unwrap()))
                }
                None => Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            };
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), seen)
}

/// The bodies of the requests with `method` whose path contains `path_part`.
pub fn requests(seen: &Seen, method: &str, path_part: &str) -> Vec<serde_json::Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == method && p.contains(path_part))
        .map(|(_, _, b)| b.clone())
        .collect()
}
