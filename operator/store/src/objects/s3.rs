//! S3 (and S3-compatible servers) through the AWS SDK.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::{DisplayErrorContext, SdkError},
    primitives::{ByteStream, DateTime},
    types::ServerSideEncryption,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine;
use bytes::Bytes;

use super::{
    ObjectError, ObjectStore, Put, PutOutcome, check_endpoint, check_put, settle_existing,
    validate_key,
};

/// Static S3 credentials (from a Kubernetes Secret). `Debug` shows the access key id
/// only.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Server-side encryption of the stored objects (on top of the bundle's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Encryption {
    /// SSE-S3: keys managed by the store (`AES256`).
    S3Managed,
    /// SSE-KMS with this key (id or ARN), or the bucket's default KMS key when `None`.
    Kms {
        /// The KMS key.
        key_id: Option<String>,
    },
}

/// S3 Object Lock retention mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectLockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody can delete or shorten the retention, root included.
    Compliance,
}

/// Object Lock retention applied to every object written (the bucket must have Object
/// Lock enabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    /// The mode.
    pub mode: ObjectLockMode,
    /// Days from the write until the object may be deleted.
    pub days: u32,
}

/// How to reach a bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The region to sign for.
    pub region: String,
    /// A custom endpoint (`https://…`, or `http://` to loopback); AWS's when `None`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need; virtual-hosted style otherwise.
    pub path_style: bool,
    /// Static credentials.
    pub credentials: S3Credentials,
    /// Send unsigned requests and ignore `credentials` (public buckets); a reader of
    /// other tenants' models must never fall back to ambient credentials instead.
    pub anonymous: bool,
    /// Server-side encryption, if any.
    pub encryption: Option<S3Encryption>,
    /// Object Lock retention, if any.
    pub object_lock: Option<ObjectLock>,
    /// Allow `http://` to hosts that are not loopback.
    pub allow_insecure_http: bool,
    /// Limit on one request, retries included.
    pub timeout: Duration,
}

impl S3Config {
    /// A configuration with the defaults: path style, no server-side encryption or
    /// Object Lock, 30 s per request.
    pub fn new(
        bucket: impl Into<String>,
        region: impl Into<String>,
        credentials: S3Credentials,
    ) -> Self {
        Self {
            bucket: bucket.into(),
            region: region.into(),
            endpoint: None,
            path_style: true,
            credentials,
            anonymous: false,
            encryption: None,
            object_lock: None,
            allow_insecure_http: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A bucket. Writes send `If-None-Match: *` (create-only: AWS S3 and SeaweedFS 4.48
/// answer 412 when the key exists, as the e2e suite shows) after a HEAD finds the key
/// free (for servers that ignore the header), and
/// `x-amz-checksum-sha256`, which the server verifies against the body it received: a
/// truncated or altered upload is refused rather than stored. SeaweedFS does not
/// compare the body with the signed `x-amz-content-sha256`, so the checksum header is
/// what guards the bytes there.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    config: S3Config,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A client for `config`: rustls with ring and the system's roots, the SDK's own
    /// retries limited to 2 attempts (the outbox retries with backoff), no checksum
    /// the SDK computes itself (the SHA-256 is known and sent).
    pub fn new(config: S3Config) -> anyhow::Result<Self> {
        if let Some(ep) = &config.endpoint {
            check_endpoint(ep, config.allow_insecure_http)?;
        }
        anyhow::ensure!(!config.bucket.is_empty(), "the S3 bucket name is empty");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let creds = Credentials::new(
            &config.credentials.access_key_id,
            &config.credentials.secret_access_key,
            None,
            None,
            "lotabots-static",
        );
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5).min(config.timeout))
                    .operation_timeout(config.timeout)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        // Anonymous: no identity at all, so the SDK falls back to unsigned requests
        // rather than looking for credentials in the environment.
        b = if config.anonymous {
            b.allow_no_auth()
        } else {
            b.credentials_provider(creds)
        };
        if let Some(ep) = &config.endpoint {
            b = b.endpoint_url(ep);
        }
        Ok(Self {
            client: Client::from_conf(b.build()),
            config,
        })
    }

    /// The SDK client, for what the trait does not cover (tests read raw objects).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// Creates the bucket if it does not exist (development and tests; production
    /// buckets are provisioned with their policies).
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        match self
            .client
            .create_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "creating bucket {}: {}",
                self.config.bucket,
                DisplayErrorContext(e)
            )),
        }
    }

    fn request_error<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> ObjectError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        ObjectError::Request {
            op,
            location: self.location(key),
            message: DisplayErrorContext(e).to_string(),
        }
    }
}

/// The HTTP status of a failed call, when the server answered.
fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[async_trait]
impl ObjectStore for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    async fn put(&self, key: &str, bytes: Bytes, sha256: &str) -> Result<Put, ObjectError> {
        check_put(&self.location(key), key, &bytes, sha256)?;
        if self.exists(key).await? {
            return settle_existing(self, key, sha256).await;
        }
        let digest = hex::decode(sha256).expect("check_put validated the hex digest");
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .content_length(bytes.len() as i64)
            .content_type("application/octet-stream")
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
            .metadata("sha256", sha256)
            .if_none_match("*")
            .body(ByteStream::from(bytes));
        match &self.config.encryption {
            Some(S3Encryption::S3Managed) => {
                req = req.server_side_encryption(ServerSideEncryption::Aes256);
            }
            Some(S3Encryption::Kms { key_id }) => {
                req = req.server_side_encryption(ServerSideEncryption::AwsKms);
                if let Some(id) = key_id {
                    req = req.ssekms_key_id(id);
                }
            }
            None => {}
        }
        if let Some(lock) = self.config.object_lock {
            let until = jiff::Timestamp::now().as_second() + i64::from(lock.days) * 86_400;
            req = req
                .object_lock_mode(match lock.mode {
                    ObjectLockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
                    ObjectLockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
                })
                .object_lock_retain_until_date(DateTime::from_secs(until));
        }
        match req.send().await {
            Ok(_) => Ok(Put {
                location: self.location(key),
                outcome: PutOutcome::Stored,
            }),
            // Another writer created the key between the HEAD and the PUT.
            Err(e) if status(&e) == Some(412) => settle_existing(self, key, sha256).await,
            Err(e) => Err(self.request_error("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        validate_key(key)?;
        let resp = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(ObjectError::NotFound {
                    location: self.location(key),
                });
            }
            Err(e) => return Err(self.request_error("get", key, e)),
        };
        let body = resp
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::Request {
                op: "get",
                location: self.location(key),
                message: format!("reading the body: {e}"),
            })?;
        Ok(body.into_bytes())
    }

    async fn exists(&self, key: &str) -> Result<bool, ObjectError> {
        validate_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.request_error("head", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_http_needs_loopback() {
        let creds = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI-very-secret".into(),
        };
        let mut cfg = S3Config::new("evidence", "us-east-1", creds);
        cfg.endpoint = Some("http://127.0.0.1:8333".into());
        let store = S3Store::new(cfg.clone()).unwrap();
        let dbg = format!("{store:?}");
        assert!(
            dbg.contains("AKIDEXAMPLE") && !dbg.contains("very-secret"),
            "{dbg}"
        );
        assert_eq!(store.location("bundles/x"), "s3://evidence/bundles/x");

        cfg.endpoint = Some("http://s3.internal:8333".into());
        let err = S3Store::new(cfg.clone()).unwrap_err();
        assert!(err.to_string().contains("not loopback"), "{err}");
        cfg.allow_insecure_http = true;
        S3Store::new(cfg.clone()).unwrap();
        cfg.anonymous = true;
        S3Store::new(cfg).unwrap();
    }
}
