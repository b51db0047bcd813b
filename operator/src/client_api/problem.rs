//! Errors of the client API as RFC 9457 problem details (`application/problem+json`):
//! a stable `type` per kind of problem, the HTTP status, a `detail` for people, and for
//! bad input the offending fields by name.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem details document.
#[derive(Serialize, Debug, Clone, PartialEq, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (stable; the last segment matches `code`).
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for this request.
    pub detail: String,
    /// The problem kind as a short machine-readable code.
    pub code: String,
    /// For bad input: each offending field and what is wrong with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// One offending field.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, ToSchema)]
pub struct FieldProblem {
    /// The field: a query or path parameter's name, or a JSON pointer into the body
    /// (`/spec/source/uri`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No usable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there (or nothing the caller may see).
    #[error("{0}")]
    NotFound(String),
    /// A query or path parameter is invalid.
    #[error("invalid parameter {field}: {message}")]
    InvalidParameter {
        /// The parameter.
        field: String,
        /// Why.
        message: String,
    },
    /// The body is not what the operation takes.
    #[error("invalid request body: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    InvalidBody(Vec<FieldProblem>),
    /// The body is not JSON.
    #[error("unsupported media type: send application/json")]
    UnsupportedMediaType,
    /// The resource exists already, or is not in a state for this.
    #[error("{0}")]
    Conflict(String),
    /// Over the body size limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Over a rate limit.
    #[error("too many requests {scope}; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        /// Which limit (per identity, per client address).
        scope: String,
        /// When the next request is allowed.
        retry_after: Duration,
    },
    /// A dependency (the Kubernetes API, the audit store) is not available now.
    #[error("{0}")]
    Unavailable(String),
    /// The request took longer than the limit.
    #[error("the request took longer than {0:?}")]
    Timeout(Duration),
}

impl ApiError {
    /// A bad parameter.
    pub fn param(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A bad body field.
    pub fn body(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidBody(vec![FieldProblem {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code (last segment of `type`, metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::InvalidParameter { .. } => "invalid-parameter",
            ApiError::InvalidBody(_) => "invalid-body",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "body-too-large",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "Authentication required",
            ApiError::Forbidden(_) => "Not allowed",
            ApiError::NotFound(_) => "Not found",
            ApiError::InvalidParameter { .. } => "Invalid parameter",
            ApiError::InvalidBody(_) => "Invalid request body",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::Conflict(_) => "Conflict",
            ApiError::TooLarge(_) => "Request body too large",
            ApiError::RateLimited { .. } => "Too many requests",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Timeout(_) => "Request timed out",
        }
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        let errors = match self {
            ApiError::InvalidParameter { field, message } => vec![FieldProblem {
                field: field.clone(),
                message: message.clone(),
            }],
            ApiError::InvalidBody(fields) => fields.clone(),
            _ => Vec::new(),
        };
        Problem {
            type_: format!("https://lotabots.io/problems/{}", self.code()),
            title: self.title().into(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            code: self.code().into(),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status(), body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            ApiError::RateLimited { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits this long gets through.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            ApiError::Unavailable(_) | ApiError::Timeout(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            ApiError::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lotabots\""),
                );
            }
            _ => {}
        }
        resp
    }
}
