//! Key sets (JWKS) from a file or an HTTPS URL: ours for `token verify`, an OIDC
//! issuer's for the client API. A cached set is refreshed periodically and, when a token
//! names a key it does not hold (the issuer rotated), at most once per cool-down — so a
//! flood of tokens with made-up `kid`s cannot turn into a flood of fetches.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

/// Where a key set comes from: `http(s)://…` is fetched, anything else is a file path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTP(S).
    Url(String),
    /// Read from a file.
    File(PathBuf),
}

impl std::str::FromStr for JwksSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a JWKS URL or file path is required".into());
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            Ok(Self::Url(s.into()))
        } else {
            Ok(Self::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(u) => f.write_str(u),
            JwksSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a key set could not be had.
#[derive(Debug, thiserror::Error)]
#[error("JWKS {source_name}: {problem}")]
pub struct JwksError {
    /// The URL or file.
    pub source_name: String,
    /// What went wrong.
    pub problem: String,
}

/// Parses a JWKS document; keys of types this library cannot use are skipped rather
/// than failing the whole set (an issuer may publish encryption keys beside signing keys).
pub fn parse(bytes: &[u8]) -> Result<JwkSet, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("not a JWK set (no \"keys\" array)")?;
    let keys = keys
        .iter()
        .filter_map(|k| serde_json::from_value(k.clone()).ok())
        .collect();
    Ok(JwkSet { keys })
}

impl JwksSource {
    /// Reads or fetches the set once.
    pub async fn load(&self, http: &reqwest::Client) -> Result<JwkSet, JwksError> {
        let err = |problem: String| JwksError {
            source_name: self.to_string(),
            problem,
        };
        let bytes = match self {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| err(format!("cannot read: {e}")))?,
            JwksSource::Url(url) => {
                let resp = http
                    .get(url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| err(format!("cannot fetch: {e}")))?;
                if !resp.status().is_success() {
                    return Err(err(format!("HTTP {}", resp.status())));
                }
                resp.bytes()
                    .await
                    .map_err(|e| err(format!("cannot fetch: {e}")))?
                    .to_vec()
            }
        };
        parse(&bytes).map_err(err)
    }
}

/// A key set kept fresh from its source.
pub struct CachedJwks {
    source: JwksSource,
    http: reqwest::Client,
    refresh: Duration,
    cool_down: Duration,
    state: RwLock<CacheState>,
    fetch: tokio::sync::Mutex<()>,
}

struct CacheState {
    keys: JwkSet,
    fetched: Option<Instant>,
}

impl CachedJwks {
    /// A cache of `source`, refreshed every `refresh`, and on an unknown `kid` at most
    /// once per `cool_down`.
    pub fn new(
        source: JwksSource,
        http: reqwest::Client,
        refresh: Duration,
        cool_down: Duration,
    ) -> Self {
        Self {
            source,
            http,
            refresh,
            cool_down,
            state: RwLock::new(CacheState {
                keys: JwkSet { keys: Vec::new() },
                fetched: None,
            }),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The source.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys, refreshed first when they are older than `refresh`, or when
    /// `wanted_kid` is missing and the last fetch is older than the cool-down. A failed
    /// refresh keeps the keys held (an issuer outage must not lock every caller out).
    pub async fn keys(&self, wanted_kid: Option<&str>) -> Result<JwkSet, JwksError> {
        let stale = |s: &CacheState| match s.fetched {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                age >= self.refresh
                    || (age >= self.cool_down
                        && wanted_kid.is_some_and(|kid| s.keys.find(kid).is_none()))
            }
        };
        {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            if !stale(&s) {
                return Ok(s.keys.clone());
            }
        }
        let _one_fetch = self.fetch.lock().await;
        {
            // Another request may have fetched while this one waited.
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            if !stale(&s) {
                return Ok(s.keys.clone());
            }
        }
        match self.source.load(&self.http).await {
            Ok(keys) => {
                let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                s.keys = keys.clone();
                s.fetched = Some(Instant::now());
                Ok(keys)
            }
            Err(e) => {
                let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                if s.fetched.is_none() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "keeping the previous JWKS");
                // Count the failure as a fetch so that the cool-down applies to retries.
                s.fetched = Some(Instant::now());
                Ok(s.keys.clone())
            }
        }
    }
}

/// An HTTP client for JWKS URLs: the system's roots, plus `extra_ca` (PEM) when given.
pub fn http_client(extra_ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .https_only(false)
        .timeout(Duration::from_secs(10));
    if let Some(pem) = extra_ca {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("CA bundle is not PEM: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_urls_or_files() {
        assert_eq!(
            "https://idp.example/jwks".parse::<JwksSource>().unwrap(),
            JwksSource::Url("https://idp.example/jwks".into())
        );
        assert_eq!(
            "/etc/jwks.json".parse::<JwksSource>().unwrap(),
            JwksSource::File("/etc/jwks.json".into())
        );
        assert!("".parse::<JwksSource>().is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_and_a_non_set_is_refused() {
        let set = parse(
            br#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"a"},{"kty":"weird"}]}"#,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(parse(b"{}").unwrap_err().contains("keys"));
        assert!(parse(b"nope").unwrap_err().contains("not JSON"));
    }
}
