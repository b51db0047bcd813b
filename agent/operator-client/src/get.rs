//! `GET` from the operator, for workload pods that fetch what they check: a small body
//! into memory ([`Client::get_bytes`]) or a large one streamed into a file
//! ([`Client::download`]), each with a byte cap so that an answer cannot fill the pod's
//! memory or disk. Same client, CA pinning and per-attempt token read as every other
//! request, and the [`Retry`] policy of result delivery; a `Retry-After` is honoured.

use std::path::Path;
use std::time::Duration;

use reqwest::Response;
use tokio::io::AsyncWriteExt as _;

use crate::retry::{self, Attempt, Stopped, worth_retrying};
use crate::{Client, ConfigError, Retry, error_chain, read_token};

/// How long one download may take in all. Progress is guarded by the client's read
/// timeout (a stalled transfer fails within seconds); this only bounds a transfer that
/// crawls, and the pod's own deadline is usually shorter.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The most of a refusal's body kept to explain it.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// Why a `GET` brought nothing back.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Bad configuration: URL, CA bundle, token file.
    #[error("{0}")]
    Config(String),
    /// The operator refused (4xx other than 408 and 429); not retried.
    #[error("the operator refused GET {url} ({status}): {detail}")]
    Refused {
        /// What was asked for.
        url: String,
        /// HTTP status.
        status: u16,
        /// The problem document's `detail` (RFC 9457), else the start of the body.
        detail: String,
    },
    /// Every attempt failed to get an answer, or got a server error.
    #[error("GET {url} failed after {attempts} attempts; last: {last}")]
    Exhausted {
        /// What was asked for.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The answer is larger than the caller allows; not retried.
    #[error("GET {url}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// What was asked for.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// The file downloaded into could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

impl From<ConfigError> for GetError {
    fn from(e: ConfigError) -> Self {
        GetError::Config(e.0)
    }
}

impl Client {
    /// `GET path` (`/v1/…`), retried as `retry` says; the body of the 2xx answer, at
    /// most `max_bytes` of it (a longer one is [`GetError::TooLarge`]).
    pub async fn get_bytes(
        &self,
        path: &str,
        max_bytes: u64,
        retry: Retry,
    ) -> Result<Vec<u8>, GetError> {
        let url = format!("{}{path}", self.base);
        let outcome = retry::run(retry, &url, async || {
            let mut resp = match self.get_once(&url, None).await {
                Attempt::Done(Ok(resp)) => resp,
                Attempt::Done(Err(e)) => return Attempt::Done(Err(e)),
                Attempt::Again { why, retry_after } => return Attempt::Again { why, retry_after },
            };
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(None) => return Attempt::Done(Ok(body)),
                    Ok(Some(chunk)) => {
                        if (body.len() + chunk.len()) as u64 > max_bytes {
                            return Attempt::Done(Err(too_large(&url, max_bytes)));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Err(e) => return cut_short(&e),
                }
            }
        })
        .await;
        finish(url, outcome)
    }

    /// `GET path` streamed into the file `dest` (created or truncated; its folder must
    /// exist), retried from the start as `retry` says; the bytes written, at most
    /// `max_bytes` (a longer answer is [`GetError::TooLarge`], and what was written of it
    /// stays in the file). The caller checks the size it expected.
    pub async fn download(
        &self,
        path: &str,
        dest: &Path,
        max_bytes: u64,
        retry: Retry,
    ) -> Result<u64, GetError> {
        let url = format!("{}{path}", self.base);
        let write_error = |e: std::io::Error| GetError::Write {
            path: dest.display().to_string(),
            message: e.to_string(),
        };
        let outcome = retry::run(retry, &url, async || {
            let mut resp = match self.get_once(&url, Some(DOWNLOAD_TIMEOUT)).await {
                Attempt::Done(Ok(resp)) => resp,
                Attempt::Done(Err(e)) => return Attempt::Done(Err(e)),
                Attempt::Again { why, retry_after } => return Attempt::Again { why, retry_after },
            };
            let mut file = match tokio::fs::File::create(dest).await {
                Ok(f) => f,
                Err(e) => return Attempt::Done(Err(write_error(e))),
            };
            let mut written = 0u64;
            loop {
                match resp.chunk().await {
                    Ok(None) => break,
                    Ok(Some(chunk)) => {
                        written += chunk.len() as u64;
                        if written > max_bytes {
                            return Attempt::Done(Err(too_large(&url, max_bytes)));
                        }
                        if let Err(e) = file.write_all(&chunk).await {
                            return Attempt::Done(Err(write_error(e)));
                        }
                    }
                    Err(e) => return cut_short(&e),
                }
            }
            Attempt::Done(file.flush().await.map(|()| written).map_err(write_error))
        })
        .await;
        finish(url, outcome)
    }

    /// One `GET` up to the answer's head: a 2xx response whose body is still to be read,
    /// a refusal, or a reason to try again. A `Content-Length` over the cap is left to
    /// the body reading, which stops at the cap whatever the header says.
    async fn get_once(&self, url: &str, timeout: Option<Duration>) -> Attempt<Response, GetError> {
        let token = match read_token(&self.token_file) {
            Ok(t) => t,
            Err(e) => return Attempt::Done(Err(e.into())),
        };
        let mut request = self.http.get(url).bearer_auth(token);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => {
                return Attempt::Again {
                    why: error_chain(&e),
                    retry_after: None,
                };
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Done(Ok(resp));
        }
        let retry_after = retry::retry_after(resp.headers());
        let detail = problem_detail(&read_some(resp, MAX_PROBLEM_BYTES).await);
        if worth_retrying(status) {
            Attempt::Again {
                why: format!("{status}: {detail}"),
                retry_after,
            }
        } else {
            Attempt::Done(Err(GetError::Refused {
                url: url.to_owned(),
                status: status.as_u16(),
                detail,
            }))
        }
    }
}

fn too_large(url: &str, limit: u64) -> GetError {
    GetError::TooLarge {
        url: url.to_owned(),
        limit,
    }
}

/// A body cut short (connection reset, read timeout): worth another attempt.
fn cut_short<T>(e: &reqwest::Error) -> Attempt<T, GetError> {
    Attempt::Again {
        why: format!("the answer was cut short: {}", error_chain(e)),
        retry_after: None,
    }
}

fn finish<T>(url: String, outcome: Result<T, Stopped<GetError>>) -> Result<T, GetError> {
    outcome.map_err(|stopped| match stopped {
        Stopped::Final(e) => e,
        Stopped::Exhausted { attempts, last } => GetError::Exhausted {
            url,
            attempts,
            last,
        },
    })
}

/// The first `limit` bytes of a body (a refusal's explanation), as far as it arrives.
async fn read_some(mut resp: Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(limit);
    body
}

/// What a refusal says: the `detail` of an RFC 9457 problem document (or its `title`
/// when it has none), else the body's first 300 characters.
pub fn problem_detail(body: &[u8]) -> String {
    let problem = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    field("detail")
        .or_else(|| field("title"))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};

    use super::*;
    use crate::testing::TestCa;

    /// What the stand-in saw of one request: its path and bearer token.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A stand-in that answers the n-th request (from 1) with `respond(n)`; returns a
    /// client of it (token `t1` in a file `respond` may rewrite) and what it saw.
    fn operator(
        respond: impl Fn(usize, &Path) -> Response + Clone + Send + Sync + 'static,
    ) -> (Client, Seen, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t1\n").unwrap();
        let seen: Seen = Arc::default();
        let (log, file) = (seen.clone(), token.clone());
        let app = Router::new().fallback(async move |uri: Uri, headers: HeaderMap| {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let n = {
                let mut log = log.lock().unwrap();
                log.push((uri.path().to_owned(), bearer));
                log.len()
            };
            respond(n, &file)
        });
        let ca = TestCa::new("test operator CA");
        let url = ca.serve(app);
        let client = Client::new(&url, ca.pem().as_bytes(), token).unwrap();
        (client, seen, dir)
    }

    fn quick(attempts: u32) -> Retry {
        Retry {
            attempts,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }
    }

    fn unavailable(retry_after: &'static str) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, retry_after)],
            r#"{"title":"Service Unavailable","status":503,"detail":"not the leader"}"#,
        )
            .into_response()
    }

    #[tokio::test]
    async fn a_503_is_retried_after_retry_after_with_the_token_read_again() {
        let (client, seen, _dir) = operator(|n, token| {
            if n == 1 {
                // The kubelet rotates the token meanwhile.
                std::fs::write(token, "t2").unwrap();
                unavailable("1")
            } else {
                "suite bytes".into_response()
            }
        });
        let retry = Retry {
            max_backoff: Duration::from_secs(5),
            ..quick(3)
        };
        let began = Instant::now();
        let body = client.get_bytes("/v1/x/suite", 1024, retry).await.unwrap();
        assert_eq!(body, b"suite bytes");
        assert!(
            began.elapsed() >= Duration::from_secs(1),
            "{:?}",
            began.elapsed()
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                ("/v1/x/suite".to_owned(), "Bearer t1".to_owned()),
                ("/v1/x/suite".to_owned(), "Bearer t2".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn retry_after_is_capped_by_the_policy_and_server_errors_exhaust_it() {
        let (client, seen, _dir) = operator(|n, _| {
            if n == 1 {
                unavailable("3600")
            } else {
                (StatusCode::BAD_GATEWAY, "upstream gone").into_response()
            }
        });
        let began = Instant::now();
        let e = client.get_bytes("/v1/x", 1024, quick(3)).await.unwrap_err();
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        let GetError::Exhausted { attempts, last, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*attempts, 3);
        assert_eq!(last, "502 Bad Gateway: upstream gone");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_4xx_is_final_and_shows_the_problem_detail() {
        let (client, seen, _dir) = operator(|_, _| {
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "application/problem+json")],
                r#"{"title":"Unauthorized","status":401,"detail":"the token was rejected: it names another pod"}"#,
            )
                .into_response()
        });
        let e = client.get_bytes("/v1/x", 1024, quick(5)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the operator refused GET {}/v1/x (401): the token was rejected: it names another pod",
                client.base()
            )
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let e = client
            .download("/v1/y", &dir.path().join("f"), 1024, quick(5))
            .await
            .unwrap_err();
        assert!(matches!(e, GetError::Refused { status: 401, .. }), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn answers_over_the_cap_are_refused_and_not_retried() {
        let (client, seen, dir) = operator(|_, _| vec![7u8; 100_000].into_response());
        let e = client
            .get_bytes("/v1/x", 99_999, quick(3))
            .await
            .unwrap_err();
        assert!(matches!(e, GetError::TooLarge { limit: 99_999, .. }), "{e}");
        let dest = dir.path().join("big");
        let e = client
            .download("/v1/x", &dest, 1000, quick(3))
            .await
            .unwrap_err();
        assert!(e.to_string().ends_with("is larger than 1000 bytes"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(
            client
                .get_bytes("/v1/x", 100_000, quick(1))
                .await
                .unwrap()
                .len(),
            100_000
        );
    }

    #[tokio::test]
    async fn a_download_starts_over_after_a_server_error() {
        let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let served = body.clone();
        let (client, seen, dir) = operator(move |n, _| {
            if n == 1 {
                (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response()
            } else {
                served.clone().into_response()
            }
        });
        let dest = dir.path().join("model.safetensors");
        std::fs::write(&dest, vec![1u8; 400_000]).unwrap();
        let n = client
            .download("/v1/m/files/model.safetensors", &dest, 300_000, quick(2))
            .await
            .unwrap();
        assert_eq!(n, 300_000);
        // Truncated, not appended to nor left longer.
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(seen.lock().unwrap().len(), 2);
        let e = client
            .download(
                "/v1/m",
                &dir.path().join("no/such/dir/f"),
                300_000,
                quick(1),
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "writing {}",
                dir.path().join("no/such/dir/f").display()
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_operator_another_ca_issued_is_not_trusted() {
        let (client, seen, dir) = operator(|_, _| "secret".into_response());
        let other = Client::new(
            client.base(),
            TestCa::new("another CA").pem().as_bytes(),
            dir.path().join("token"),
        )
        .unwrap();
        let e = other.get_bytes("/v1/x", 1024, quick(2)).await.unwrap_err();
        let GetError::Exhausted { last, .. } = &e else {
            panic!("{e}");
        };
        assert!(last.contains("certificate"), "{last}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
