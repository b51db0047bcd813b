//! The retry policy of workload pods, for delivering results and fetching what they
//! check: retried with backoff on transport errors, 5xx, 408 and 429 answers (each
//! attempt reads the token again, as the kubelet rotates it); any other 4xx answer is
//! final: the operator looked at the request and refused it.

use std::time::Duration;

use crate::{Client, SendError};

/// Why the result was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Bad configuration: URL, CA bundle, token file.
    #[error("{0}")]
    Config(String),
    /// The operator refused the result (4xx); not retried.
    #[error("operator refused the result at {url} ({status}): {body}")]
    Refused {
        /// Where it was posted.
        url: String,
        /// HTTP status.
        status: u16,
        /// The operator's answer, as text (cut to 2000 characters).
        body: String,
    },
    /// Every attempt failed to get an answer, or got a server error.
    #[error("posting to {url} failed after {attempts} attempts; last: {last}")]
    Exhausted {
        /// Where to.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

impl From<crate::ConfigError> for PostError {
    fn from(e: crate::ConfigError) -> Self {
        PostError::Config(e.0)
    }
}

/// How often and how patiently to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (0 counts as 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl Retry {
    /// A single attempt.
    pub fn once() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `attempt` (1-based; none before the first).
    fn backoff(&self, attempt: u32) -> Duration {
        match attempt {
            0 | 1 => Duration::ZERO,
            n => self
                .first_backoff
                .saturating_mul(1u32.checked_shl(n - 2).unwrap_or(u32::MAX))
                .min(self.max_backoff),
        }
    }
}

/// Whether an answer with `status` is worth another attempt: server errors, and the two
/// 4xx that ask to come back later (408, 429). Other 4xx are the operator's verdict.
pub(crate) fn worth_retrying(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// What one attempt came to.
pub(crate) enum Attempt<T, E> {
    /// Finished: the value, or a failure another attempt would not mend.
    Done(Result<T, E>),
    /// Worth another attempt: why this one failed, and how long the operator asked to be
    /// left alone (`Retry-After`).
    Again {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// Why [`run`] stopped without a value.
pub(crate) enum Stopped<E> {
    /// An attempt failed for good.
    Final(E),
    /// Every attempt failed; the last one's reason.
    Exhausted { attempts: u32, last: String },
}

/// Runs `attempt` as `retry` says. The wait before each further attempt is the policy's
/// backoff, or the operator's `Retry-After` when that is longer, capped at
/// [`Retry::max_backoff`] so that one answer cannot stall the pod.
pub(crate) async fn run<T, E>(
    retry: Retry,
    url: &str,
    mut attempt: impl AsyncFnMut() -> Attempt<T, E>,
) -> Result<T, Stopped<E>> {
    let attempts = retry.attempts.max(1);
    let mut last = String::new();
    let mut asked = Duration::ZERO;
    for n in 1..=attempts {
        if n > 1 {
            let wait = retry.backoff(n).max(asked.min(retry.max_backoff));
            tokio::time::sleep(wait).await;
        }
        match attempt().await {
            Attempt::Done(done) => return done.map_err(Stopped::Final),
            Attempt::Again { why, retry_after } => {
                tracing::warn!(attempt = n, %url, %why, "request to the operator failed");
                asked = retry_after.unwrap_or_default();
                last = why;
            }
        }
    }
    Err(Stopped::Exhausted { attempts, last })
}

/// The wait an answer asks for in `Retry-After`, in seconds (the HTTP-date form is not
/// understood and reads as no wait).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Posts `body` to `path` as `retry` says; returns the answer body of the 2xx.
pub(crate) async fn post(
    client: &Client,
    path: &str,
    body: Vec<u8>,
    retry: Retry,
) -> Result<String, PostError> {
    let url = format!("{}{path}", client.base());
    let outcome = run(retry, &url, async || {
        match client.send(path, body.clone()).await {
            Err(SendError::Config(e)) => Attempt::Done(Err(e.into())),
            Err(SendError::Transport { message, .. }) => Attempt::Again {
                why: message,
                retry_after: None,
            },
            Ok(answer) if answer.status.is_success() => Attempt::Done(Ok(answer.body)),
            Ok(answer) => {
                let shown: String = answer.body.chars().take(2000).collect();
                if worth_retrying(answer.status) {
                    Attempt::Again {
                        why: format!("{}: {shown}", answer.status),
                        retry_after: None,
                    }
                } else {
                    Attempt::Done(Err(PostError::Refused {
                        url: url.clone(),
                        status: answer.status.as_u16(),
                        body: shown,
                    }))
                }
            }
        }
    })
    .await;
    outcome.map_err(|stopped| match stopped {
        Stopped::Final(e) => e,
        Stopped::Exhausted { attempts, last } => PostError::Exhausted {
            url,
            attempts,
            last,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry {
            attempts: 40,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        };
        let waits: Vec<_> = (1..=7).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(waits, [0, 500, 1000, 2000, 4000, 8000, 8000]);
        // No overflow however many attempts.
        assert_eq!(r.backoff(40), Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, " 7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_server_errors_and_come_back_later_are_retried() {
        for s in [500, 502, 503, 408, 429] {
            assert!(
                worth_retrying(reqwest::StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(
                !worth_retrying(reqwest::StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }
}
