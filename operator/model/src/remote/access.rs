//! How a model's object store is reached, from the keys of a tenant's Secret
//! (`spec.source.credentialsSecretRef`) or, for `attest-model`, the environment. The
//! keys are the AWS CLI's names where there is one:
//!
//! | key | meaning |
//! |---|---|
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | S3 static credentials (both or neither; neither: unsigned requests) |
//! | `AWS_REGION` | region to sign for (default `us-east-1`) |
//! | `AWS_ENDPOINT_URL` | an S3-compatible server (`https://…`; `http://` to loopback only, unless allowed below) |
//! | `AWS_S3_FORCE_PATH_STYLE` | `true`/`false`: path-style addressing (default: `true` with an endpoint, else `false`) |
//! | `GCS_SERVICE_ACCOUNT_KEY` | a GCS service-account key (its JSON); without it: anonymous (operator) or Application Default Credentials (command) |
//! | `GCS_ENDPOINT_URL` | a GCS-compatible server (same rule on `http://`) |
//! | `GCS_ANONYMOUS` | `true`: no credentials at all (the command's way to skip ADC) |
//! | `LOTABOTS_ALLOW_INSECURE_HTTP` | `true`: allow `http://` endpoints that are not loopback |

use std::fmt;

use lotabots_store::objects::{S3Credentials, ServiceAccountKey};

/// Secret keys (and environment variables) read.
pub mod keys {
    /// S3 access key id.
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// S3 secret access key.
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// S3 region.
    pub const AWS_REGION: &str = "AWS_REGION";
    /// S3 endpoint.
    pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
    /// S3 path-style addressing.
    pub const AWS_S3_FORCE_PATH_STYLE: &str = "AWS_S3_FORCE_PATH_STYLE";
    /// GCS service-account key JSON.
    pub const GCS_SERVICE_ACCOUNT_KEY: &str = "GCS_SERVICE_ACCOUNT_KEY";
    /// GCS endpoint.
    pub const GCS_ENDPOINT_URL: &str = "GCS_ENDPOINT_URL";
    /// GCS without credentials.
    pub const GCS_ANONYMOUS: &str = "GCS_ANONYMOUS";
    /// Plain HTTP to hosts that are not loopback.
    pub const ALLOW_INSECURE_HTTP: &str = "LOTABOTS_ALLOW_INSECURE_HTTP";
}

/// Default S3 region.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A key with an unusable value; names the key, never the value.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct AccessError {
    /// The key at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// S3 settings.
#[derive(Clone, Debug)]
pub struct S3Access {
    /// Region to sign for.
    pub region: String,
    /// Custom endpoint.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub path_style: bool,
    /// Static credentials; `None`: unsigned requests (public buckets).
    pub credentials: Option<S3Credentials>,
    /// Plain HTTP to hosts that are not loopback.
    pub allow_insecure_http: bool,
}

/// GCS settings.
#[derive(Clone, Debug)]
pub struct GcsAccess {
    /// Custom endpoint.
    pub endpoint: Option<String>,
    /// No credentials at all.
    pub anonymous: bool,
    /// A service-account key; with neither it nor `anonymous`, Application Default
    /// Credentials (only ever for the command, not for tenants' models).
    pub service_account: Option<ServiceAccountKey>,
    /// Plain HTTP to hosts that are not loopback.
    pub allow_insecure_http: bool,
}

/// Both stores' settings, as one Secret or environment gives them.
#[derive(Clone)]
pub struct Access {
    s3: S3Access,
    gcs: GcsAccess,
}

impl fmt::Debug for Access {
    // S3Credentials and ServiceAccountKey redact their secrets themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("s3", &self.s3)
            .field("gcs", &self.gcs)
            .finish()
    }
}

impl Access {
    /// No credentials: unsigned S3 requests, anonymous GCS (public buckets).
    pub fn anonymous() -> Self {
        Self::from_keys(|_| None, false).expect("no keys are valid keys")
    }

    /// From a tenant's Secret data: a GCS model without a key is read anonymously, never
    /// with the operator's own identity.
    pub fn from_secret_data(
        data: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, AccessError> {
        Self::from_keys(
            |k| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            },
            false,
        )
    }

    /// From the environment (`attest-model`): a GCS model without a key is read with
    /// Application Default Credentials unless `GCS_ANONYMOUS=true`.
    pub fn from_env() -> Result<Self, AccessError> {
        Self::from_keys(|k| std::env::var(k).ok().filter(|v| !v.is_empty()), true)
    }

    /// From `get` (a key's value, `None` when absent); `ambient_gcs`: a GCS model without
    /// a key uses Application Default Credentials rather than none.
    pub fn from_keys(
        get: impl Fn(&str) -> Option<String>,
        ambient_gcs: bool,
    ) -> Result<Self, AccessError> {
        let flag = |key: &'static str| -> Result<Option<bool>, AccessError> {
            match get(key).as_deref() {
                None => Ok(None),
                Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
                Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
                Some(_) => Err(AccessError {
                    key,
                    problem: "must be true or false".into(),
                }),
            }
        };
        let allow_insecure_http = flag(keys::ALLOW_INSECURE_HTTP)?.unwrap_or(false);
        let credentials = match (
            get(keys::AWS_ACCESS_KEY_ID),
            get(keys::AWS_SECRET_ACCESS_KEY),
        ) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(AccessError {
                    key: keys::AWS_SECRET_ACCESS_KEY,
                    problem: format!("missing while {} is set", keys::AWS_ACCESS_KEY_ID),
                });
            }
            (None, Some(_)) => {
                return Err(AccessError {
                    key: keys::AWS_ACCESS_KEY_ID,
                    problem: format!("missing while {} is set", keys::AWS_SECRET_ACCESS_KEY),
                });
            }
        };
        let s3_endpoint = get(keys::AWS_ENDPOINT_URL);
        let s3 = S3Access {
            region: get(keys::AWS_REGION).unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            path_style: flag(keys::AWS_S3_FORCE_PATH_STYLE)?.unwrap_or(s3_endpoint.is_some()),
            endpoint: s3_endpoint,
            credentials,
            allow_insecure_http,
        };
        let service_account = get(keys::GCS_SERVICE_ACCOUNT_KEY)
            .map(|json| {
                ServiceAccountKey::from_json(json.as_bytes()).map_err(|e| AccessError {
                    key: keys::GCS_SERVICE_ACCOUNT_KEY,
                    problem: e.to_string(),
                })
            })
            .transpose()?;
        let anonymous =
            flag(keys::GCS_ANONYMOUS)?.unwrap_or(!ambient_gcs && service_account.is_none());
        if anonymous && service_account.is_some() {
            return Err(AccessError {
                key: keys::GCS_ANONYMOUS,
                problem: format!("true while {} is set", keys::GCS_SERVICE_ACCOUNT_KEY),
            });
        }
        let gcs = GcsAccess {
            endpoint: get(keys::GCS_ENDPOINT_URL),
            anonymous,
            service_account,
            allow_insecure_http,
        };
        Ok(Self { s3, gcs })
    }

    /// The S3 settings.
    pub fn s3(&self) -> &S3Access {
        &self.s3
    }

    /// The GCS settings.
    pub fn gcs(&self) -> &GcsAccess {
        &self.gcs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn secret_keys_are_read_and_checked() {
        let a = Access::from_secret_data(&secret(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret\n"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
        ]))
        .unwrap();
        assert_eq!(a.s3().region, DEFAULT_REGION);
        assert!(a.s3().path_style, "an endpoint means path style by default");
        let creds = a.s3().credentials.as_ref().unwrap();
        assert_eq!(creds.secret_access_key, "very-secret");
        assert!(!format!("{a:?}").contains("very-secret"));
        // A tenant without a GCS key is anonymous, never the operator's identity.
        assert!(a.gcs().anonymous && a.gcs().service_account.is_none());

        let half = Access::from_secret_data(&secret(&[("AWS_ACCESS_KEY_ID", "AKID")]));
        assert_eq!(half.unwrap_err().key, keys::AWS_SECRET_ACCESS_KEY);
        let bad = Access::from_secret_data(&secret(&[("AWS_S3_FORCE_PATH_STYLE", "yes")]));
        assert_eq!(bad.unwrap_err().key, keys::AWS_S3_FORCE_PATH_STYLE);
        let bad = Access::from_secret_data(&secret(&[("GCS_SERVICE_ACCOUNT_KEY", "{}")]));
        assert_eq!(bad.unwrap_err().key, keys::GCS_SERVICE_ACCOUNT_KEY);

        let anon = Access::anonymous();
        assert!(anon.s3().credentials.is_none() && !anon.s3().path_style);
        let ambient = Access::from_keys(|_| None, true).unwrap();
        assert!(!ambient.gcs().anonymous, "the command falls back to ADC");
    }
}
