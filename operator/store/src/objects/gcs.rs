//! Google Cloud Storage through Google's official client (`google-cloud-storage`).

use std::{fmt, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::{
    client::Storage, model_ext::KeyAes256, model_ext::ReadRange, retry_policy::RetryableErrors,
};

use super::{
    ObjectError, ObjectStore, Put, PutOutcome, check_endpoint, check_put, settle_existing,
    validate_key,
};

/// A customer-supplied AES-256 key (CSEK): GCS encrypts the object with it and keeps
/// only its hash, so every read must present it too. `Debug` never shows it.
#[derive(Clone)]
pub struct CustomerKey([u8; 32]);

impl CustomerKey {
    /// The key from 32 raw bytes.
    pub fn new(bytes: &[u8]) -> anyhow::Result<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!(
                "a customer-supplied GCS key is 32 raw bytes, not {}",
                bytes.len()
            )
        })?;
        Ok(Self(key))
    }

    fn to_gcs(&self) -> KeyAes256 {
        KeyAes256::new(&self.0).expect("32 bytes")
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomerKey(<redacted>)")
    }
}

/// A service-account key (the JSON file `gcloud iam service-accounts keys create`
/// writes). `Debug` shows the account's e-mail only, never the private key.
#[derive(Clone)]
pub struct ServiceAccountKey(serde_json::Value);

impl ServiceAccountKey {
    /// The key from its JSON text; fails unless it is a `service_account` key.
    pub fn from_json(json: &[u8]) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| anyhow::anyhow!("the service-account key is not JSON: {e}"))?;
        anyhow::ensure!(
            value.get("type").and_then(|t| t.as_str()) == Some("service_account"),
            "the JSON is not a service-account key (its \"type\" is not \"service_account\")"
        );
        Ok(Self(value))
    }

    fn email(&self) -> &str {
        self.0
            .get("client_email")
            .and_then(|e| e.as_str())
            .unwrap_or("?")
    }
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceAccountKey({}, <redacted>)", self.email())
    }
}

/// How to reach a bucket.
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// The bucket (its name, not `projects/_/buckets/…`).
    pub bucket: String,
    /// A custom endpoint (`https://…`, or `http://` to loopback, e.g. an emulator);
    /// `https://storage.googleapis.com` when `None`.
    pub endpoint: Option<String>,
    /// Send no credentials (emulators); Application Default Credentials otherwise
    /// (workload identity, a mounted key file).
    pub anonymous: bool,
    /// This service account's key instead of Application Default Credentials (a
    /// tenant's own key, for reading its models); ignored when `anonymous`.
    pub service_account: Option<ServiceAccountKey>,
    /// CMEK: the Cloud KMS key that encrypts new objects
    /// (`projects/…/locations/…/keyRings/…/cryptoKeys/…`).
    pub kms_key: Option<String>,
    /// CSEK: a key of our own that encrypts the objects (exclusive with `kms_key`).
    pub customer_key: Option<CustomerKey>,
    /// Allow `http://` to hosts that are not loopback.
    pub allow_insecure_http: bool,
    /// Limit on one request's retry loop.
    pub timeout: Duration,
}

impl GcsConfig {
    /// A configuration for `bucket` with Application Default Credentials and Google's
    /// endpoint.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            anonymous: false,
            service_account: None,
            kms_key: None,
            customer_key: None,
            allow_insecure_http: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A GCS bucket. Writes are create-only with `ifGenerationMatch=0`, which GCS enforces
/// (412 if the object exists). fake-gcs-server ignores that precondition and overwrites
/// (the e2e suite `store_objects` shows it on the pinned version), so a write is
/// preceded by a read of the object's first byte: an existing object is compared
/// instead of replaced. The client checks the CRC32C of full reads itself.
#[derive(Clone)]
pub struct GcsStore {
    client: Storage,
    config: GcsConfig,
    bucket_path: String,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GcsStore {
    /// A client for `config`. The client's own retries are limited to 3 attempts within
    /// `config.timeout` (its default keeps retrying for 5 minutes; the outbox backs off
    /// and retries itself).
    pub async fn new(config: GcsConfig) -> anyhow::Result<Self> {
        if let Some(ep) = &config.endpoint {
            check_endpoint(ep, config.allow_insecure_http)?;
        }
        anyhow::ensure!(!config.bucket.is_empty(), "the GCS bucket name is empty");
        anyhow::ensure!(
            config.kms_key.is_none() || config.customer_key.is_none(),
            "a GCS object is encrypted with a KMS key or a customer-supplied key, not both"
        );
        super::install_crypto_provider();
        let mut b = Storage::builder().with_retry_policy(
            RetryableErrors
                .with_attempt_limit(3)
                .with_time_limit(config.timeout),
        );
        if let Some(ep) = &config.endpoint {
            b = b.with_endpoint(ep);
        }
        if let Some(credentials) = credentials(&config)? {
            b = b.with_credentials(credentials);
        }
        let client = b
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("building the GCS client: {e}"))?;
        Ok(Self {
            client,
            bucket_path: format!("projects/_/buckets/{}", config.bucket),
            config,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// The client, for reads the trait does not cover (ranged reads of model files).
    pub fn client(&self) -> &Storage {
        &self.client
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &GcsConfig {
        &self.config
    }

    fn request_error(
        &self,
        op: &'static str,
        key: &str,
        e: google_cloud_storage::Error,
    ) -> ObjectError {
        ObjectError::Request {
            op,
            location: self.location(key),
            message: error_chain(&e),
        }
    }
}

/// The credentials `config` asks for: anonymous, a service-account key, or `None` for
/// Application Default Credentials. Shared with callers that reach the JSON API
/// directly (listing objects, which this client only offers over gRPC).
pub fn credentials(
    config: &GcsConfig,
) -> anyhow::Result<Option<google_cloud_auth::credentials::Credentials>> {
    if config.anonymous {
        return Ok(Some(
            google_cloud_auth::credentials::anonymous::Builder::new().build(),
        ));
    }
    match &config.service_account {
        None => Ok(None),
        Some(key) => google_cloud_auth::credentials::service_account::Builder::new(key.0.clone())
            .build()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("the service-account key of {}: {e}", key.email())),
    }
}

/// An error with its sources: the client's top-level messages alone are terse.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl ObjectStore for GcsStore {
    fn location(&self, key: &str) -> String {
        format!("gs://{}/{key}", self.config.bucket)
    }

    async fn put(&self, key: &str, bytes: Bytes, sha256: &str) -> Result<Put, ObjectError> {
        check_put(&self.location(key), key, &bytes, sha256)?;
        if self.exists(key).await? {
            return settle_existing(self, key, sha256).await;
        }
        let len = bytes.len();
        let mut req = self
            .client
            .write_object(&self.bucket_path, key, bytes)
            .set_if_generation_match(0)
            .set_content_type("application/octet-stream")
            .set_metadata([("sha256", sha256)]);
        if let Some(kms) = &self.config.kms_key {
            req = req.set_kms_key(kms);
        }
        if let Some(k) = &self.config.customer_key {
            req = req.set_key(k.to_gcs());
        }
        match req.send_unbuffered().await {
            Ok(obj) if usize::try_from(obj.size).ok() == Some(len) => Ok(Put {
                location: self.location(key),
                outcome: PutOutcome::Stored,
            }),
            Ok(obj) => Err(ObjectError::Request {
                op: "put",
                location: self.location(key),
                message: format!(
                    "the store reports {} bytes stored, {len} were sent",
                    obj.size
                ),
            }),
            // Another writer created the object since the check (real GCS enforces
            // ifGenerationMatch=0).
            Err(e) if e.http_status_code() == Some(412) => settle_existing(self, key, sha256).await,
            Err(e) => Err(self.request_error("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        validate_key(key)?;
        let mut req = self.client.read_object(&self.bucket_path, key);
        if let Some(k) = &self.config.customer_key {
            req = req.set_key(k.to_gcs());
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.http_status_code() == Some(404) => {
                return Err(ObjectError::NotFound {
                    location: self.location(key),
                });
            }
            Err(e) => return Err(self.request_error("get", key, e)),
        };
        let mut out = Vec::new();
        while let Some(chunk) = resp.next().await {
            out.extend_from_slice(&chunk.map_err(|e| self.request_error("get", key, e))?);
        }
        Ok(Bytes::from(out))
    }

    async fn exists(&self, key: &str) -> Result<bool, ObjectError> {
        validate_key(key)?;
        // The JSON API's metadata GET is not exposed by this client (its metadata calls
        // go through gRPC); a one-byte ranged read answers the same question.
        let mut req = self
            .client
            .read_object(&self.bucket_path, key)
            .set_read_range(ReadRange::head(1));
        if let Some(k) = &self.config.customer_key {
            req = req.set_key(k.to_gcs());
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.http_status_code() == Some(404) => Ok(false),
            // An empty object has no first byte.
            Err(e) if e.http_status_code() == Some(416) => Ok(true),
            Err(e) => Err(self.request_error("head", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_hides_the_customer_key_and_options_are_checked() {
        let mut cfg = GcsConfig::new("evidence-backup");
        cfg.endpoint = Some("http://127.0.0.1:4443".into());
        cfg.anonymous = true;
        cfg.customer_key = Some(CustomerKey::new(&[0x5A; 32]).unwrap());
        let store = GcsStore::new(cfg.clone()).await.unwrap();
        let dbg = format!("{store:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains("90, 90"),
            "{dbg}"
        );
        assert_eq!(store.location("a/b"), "gs://evidence-backup/a/b");

        cfg.kms_key = Some("projects/p/locations/l/keyRings/r/cryptoKeys/k".into());
        let err = GcsStore::new(cfg.clone()).await.unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        cfg.kms_key = None;
        cfg.endpoint = Some("http://gcs.internal".into());
        let err = GcsStore::new(cfg).await.unwrap_err();
        assert!(err.to_string().contains("not loopback"), "{err}");
        assert!(CustomerKey::new(&[1; 16]).is_err());
    }

    #[test]
    fn a_service_account_key_is_checked_and_never_shown() {
        let json = br#"{"type":"service_account","client_email":"reader@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----secret"}"#;
        let key = ServiceAccountKey::from_json(json).unwrap();
        let dbg = format!("{key:?}");
        assert!(
            dbg.contains("reader@p.iam") && !dbg.contains("secret"),
            "{dbg}"
        );
        let err = ServiceAccountKey::from_json(br#"{"type":"authorized_user"}"#).unwrap_err();
        assert!(err.to_string().contains("service_account"), "{err}");
        assert!(ServiceAccountKey::from_json(b"not json").is_err());
    }
}
