//! Object stores behind one trait: S3, Google Cloud Storage, a local directory.
//!
//! Every write is create-only and named by the content's SHA-256 ([`bundle_key`]), so a
//! retried upload writes the same object: a second `put` of the same bytes succeeds as
//! [`PutOutcome::AlreadyPresent`], one of other bytes under the same key is refused
//! ([`ObjectError::Conflict`]). Each backend uses the server's own create-only
//! precondition and, because some servers ignore it (fake-gcs-server, older S3
//! gateways), also looks before it writes; an existing object is compared by reading it
//! back and hashing it, the only check that works on every store.

mod gcs;
mod local;
mod s3;

use std::fmt;

use async_trait::async_trait;

/// The bytes type of [`ObjectStore`] (re-exported so callers need no `bytes` dependency).
pub use bytes::Bytes;
pub use gcs::{
    CustomerKey, GcsConfig, GcsStore, ServiceAccountKey, credentials as gcs_credentials,
    error_chain,
};
pub use local::LocalStore;
pub use s3::{ObjectLock, ObjectLockMode, S3Config, S3Credentials, S3Encryption, S3Store};

use crate::bundle::sha256_hex;

/// Makes ring the process's rustls crypto provider unless one is set: the GCS client's
/// HTTP stack (reqwest without a provider of its own) uses the process default.
pub(crate) fn install_crypto_provider() {
    // Err means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The object key of a bundle whose ciphertext has SHA-256 `digest` (hex).
pub fn bundle_key(digest: &str) -> String {
    format!("bundles/sha256/{digest}")
}

/// What a successful [`ObjectStore::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written now.
    Stored,
    /// The store already held these exact bytes under the key (a retry).
    AlreadyPresent,
}

impl PutOutcome {
    /// `stored` or `already_present`, the metric label.
    pub fn label(self) -> &'static str {
        match self {
            PutOutcome::Stored => "stored",
            PutOutcome::AlreadyPresent => "already_present",
        }
    }
}

/// A successful [`ObjectStore::put`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// Where the object is, e.g. `s3://bucket/key`.
    pub location: String,
    /// Whether it was written now.
    pub outcome: PutOutcome,
}

/// Why an object operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The key is not one this module writes.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The bytes handed to `put` do not hash to the digest given with them.
    #[error(
        "refusing to store {location}: the bytes have SHA-256 {actual}, not the {expected} given"
    )]
    BadInput {
        /// Where they were to go.
        location: String,
        /// The digest given.
        expected: String,
        /// Their digest.
        actual: String,
    },
    /// The key already holds other bytes.
    #[error(
        "{location} already exists with other content (SHA-256 {found}, not {expected}); create-only stores never overwrite"
    )]
    Conflict {
        /// The object.
        location: String,
        /// The digest of the bytes to store.
        expected: String,
        /// The digest of the stored bytes.
        found: String,
    },
    /// No object under the key.
    #[error("{location} does not exist")]
    NotFound {
        /// The object.
        location: String,
    },
    /// The stored bytes do not hash to the expected digest (truncated or corrupted).
    #[error("{location} is corrupt: its bytes have SHA-256 {actual}, expected {expected}")]
    Corrupt {
        /// The object.
        location: String,
        /// The digest expected.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },
    /// The store refused the request or could not be reached.
    #[error("{op} {location} failed: {message}")]
    Request {
        /// What was attempted (`put`, `get`, `head`).
        op: &'static str,
        /// The object.
        location: String,
        /// The store's or the transport's error.
        message: String,
    },
}

/// An object store holding evidence bundles. Object-safe: the outbox keeps stores as
/// `Arc<dyn ObjectStore>` by name.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The URL of `key` in this store (`s3://…`, `gs://…`, `file://…`).
    fn location(&self, key: &str) -> String;

    /// Stores `bytes` under `key` unless the key exists: `sha256` (hex) is the digest of
    /// `bytes`, checked before anything is sent and sent along where the store verifies
    /// it. Same bytes present: [`PutOutcome::AlreadyPresent`]; other bytes:
    /// [`ObjectError::Conflict`].
    async fn put(&self, key: &str, bytes: Bytes, sha256: &str) -> Result<Put, ObjectError>;

    /// The object's bytes.
    async fn get(&self, key: &str) -> Result<Bytes, ObjectError>;

    /// Whether an object exists under `key`.
    async fn exists(&self, key: &str) -> Result<bool, ObjectError>;
}

/// Reads `key` and checks that its bytes hash to `sha256` (hex): a truncated upload or
/// a corrupted object fails with [`ObjectError::Corrupt`].
pub async fn get_verified(
    store: &dyn ObjectStore,
    key: &str,
    sha256: &str,
) -> Result<Bytes, ObjectError> {
    let bytes = store.get(key).await?;
    let actual = sha256_hex(&bytes);
    if actual.eq_ignore_ascii_case(sha256) {
        Ok(bytes)
    } else {
        Err(ObjectError::Corrupt {
            location: store.location(key),
            expected: sha256.to_string(),
            actual,
        })
    }
}

/// The checks every `put` starts with: a key this module writes, and bytes that hash to
/// the digest given.
fn check_put(location: &str, key: &str, bytes: &[u8], sha256: &str) -> Result<(), ObjectError> {
    validate_key(key)?;
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(sha256) {
        Ok(())
    } else {
        Err(ObjectError::BadInput {
            location: location.to_string(),
            expected: sha256.to_string(),
            actual,
        })
    }
}

/// A key already exists: the same bytes mean the put already happened, other bytes are
/// a conflict. Compared by reading the object back, which every store supports.
async fn settle_existing(
    store: &dyn ObjectStore,
    key: &str,
    sha256: &str,
) -> Result<Put, ObjectError> {
    let location = store.location(key);
    let found = sha256_hex(&store.get(key).await?);
    if found.eq_ignore_ascii_case(sha256) {
        Ok(Put {
            location,
            outcome: PutOutcome::AlreadyPresent,
        })
    } else {
        Err(ObjectError::Conflict {
            location,
            expected: sha256.to_string(),
            found,
        })
    }
}

/// Keys are relative paths of `[A-Za-z0-9._-]` segments (no empty, `.` or `..`
/// segment): the same rules keep the local store inside its directory and S3 and GCS
/// names free of characters that need escaping.
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    let bad = |reason| {
        Err(ObjectError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1 to 512 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("has an empty, \".\" or \"..\" path segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("may only hold [A-Za-z0-9._-] and '/'");
        }
    }
    Ok(())
}

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL with a scheme and a host.
    #[error("endpoint {0:?} is not an http:// or https:// URL with a host")]
    Malformed(String),
    /// Plain HTTP to a host that is not loopback.
    #[error(
        "endpoint {0:?} is plain http:// to a host that is not loopback; use https:// or set the insecure flag"
    )]
    Insecure(String),
}

/// Checks a custom endpoint: `https://` anywhere; `http://` only to a loopback host
/// (`localhost`, 127.0.0.0/8, `::1`) unless `allow_insecure_http`, since the requests
/// carry credentials and evidence.
pub fn check_endpoint(endpoint: &str, allow_insecure_http: bool) -> Result<(), EndpointError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| EndpointError::Malformed(endpoint.to_string()))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| EndpointError::Malformed(endpoint.to_string()))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || allow_insecure_http {
                Ok(())
            } else {
                Err(EndpointError::Insecure(endpoint.to_string()))
            }
        }
        _ => Err(EndpointError::Malformed(endpoint.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_tls_unless_loopback_or_insecure() {
        for ok in [
            "https://s3.example.com",
            "http://127.0.0.1:9000",
            "http://127.8.0.1",
            "http://localhost:4443",
            "http://[::1]:80",
        ] {
            check_endpoint(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_endpoint("http://minio.internal:9000", false).unwrap_err();
        assert!(matches!(err, EndpointError::Insecure(_)), "{err}");
        assert!(err.to_string().contains("minio.internal"));
        check_endpoint("http://minio.internal:9000", true).unwrap();
        for bad in ["minio:9000", "ftp://x", "https://", "not a url"] {
            assert!(
                matches!(check_endpoint(bad, true), Err(EndpointError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_relative_paths_of_safe_segments() {
        validate_key(&bundle_key(&"ab".repeat(32))).unwrap();
        for bad in [
            "", "/abs", "a//b", "a/../b", "./a", "a/b/", "sp ace", "q?x", "ü",
        ] {
            assert!(
                matches!(validate_key(bad), Err(ObjectError::InvalidKey { .. })),
                "{bad:?}"
            );
        }
    }
}
