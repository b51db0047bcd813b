//! GCS buckets: reads through the evidence store's client (Google's
//! `google-cloud-storage`), listing through the JSON API with the same credentials,
//! because that client lists objects over gRPC only (which emulators such as
//! fake-gcs-server do not serve).

use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_storage::model_ext::ReadRange;
use lotabots_store::objects::{GcsConfig, GcsStore, error_chain, gcs_credentials};
use serde::Deserialize;

use super::body::Body;
use super::{GcsAccess, Listed, Version};
use crate::source::SourceError;

/// Google's endpoint, when none is configured.
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Objects per listing page (the API's maximum).
const PAGE_SIZE: &str = "1000";

/// One bucket's clients.
pub(super) struct GcsBucket {
    store: GcsStore,
    bucket_path: String,
    http: reqwest::Client,
    list_url: String,
    credentials: Credentials,
}

/// A page of `objects.list`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    items: Vec<Item>,
    next_page_token: Option<String>,
}

/// An object of a page (the JSON API sends 64-bit numbers as strings).
#[derive(Deserialize)]
struct Item {
    name: String,
    size: String,
    generation: Option<String>,
}

impl GcsBucket {
    pub(super) async fn new(bucket: &str, access: &GcsAccess) -> Result<Self, SourceError> {
        let err = |problem: String| SourceError {
            path: format!("gs://{bucket}"),
            problem,
        };
        let mut config = GcsConfig::new(bucket);
        config.endpoint = access.endpoint.clone();
        config.anonymous = access.anonymous;
        config.service_account = access.service_account.clone();
        config.allow_insecure_http = access.allow_insecure_http;
        config.timeout = super::READ_IDLE_TIMEOUT;
        let credentials = match gcs_credentials(&config).map_err(|e| err(format!("{e:#}")))? {
            Some(c) => c,
            None => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| err(format!("Application Default Credentials: {e}")))?,
        };
        // Also checks the endpoint (TLS unless loopback or allowed) and installs the
        // TLS provider the HTTP client below uses.
        let store = GcsStore::new(config)
            .await
            .map_err(|e| err(format!("{e:#}")))?;
        // The system's roots, as the GCS client's own transport uses.
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_native_certs(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(super::READ_IDLE_TIMEOUT)
            .build()
            .map_err(|e| err(format!("building the HTTP client: {e}")))?;
        let endpoint = access
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/');
        Ok(Self {
            store,
            bucket_path: format!("projects/_/buckets/{bucket}"),
            http,
            list_url: format!("{endpoint}/storage/v1/b/{bucket}/o"),
            credentials,
        })
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let headers = match self
                .credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|e| format!("credentials: {e}"))?
            {
                CacheableResource::New { data, .. } => data,
                CacheableResource::NotModified => http::HeaderMap::new(),
            };
            let mut query = vec![
                ("prefix", prefix),
                ("maxResults", PAGE_SIZE),
                ("fields", "items(name,size,generation),nextPageToken"),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t));
            }
            let resp = self
                .http
                .get(&self.list_url)
                .headers(headers)
                .query(&query)
                .send()
                .await
                .map_err(|e| format!("{}: {e}", self.list_url))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                return Err(format!("{}: {status}: {body}", self.list_url));
            }
            let page: Page = resp
                .json()
                .await
                .map_err(|e| format!("{}: not an object listing: {e}", self.list_url))?;
            for item in page.items {
                let size = item
                    .size
                    .parse()
                    .map_err(|_| format!("{}: size {:?} is not a number", item.name, item.size))?;
                out.push(Listed {
                    version: item
                        .generation
                        .and_then(|g| g.parse().ok())
                        .map_or(Version::Any, Version::Generation),
                    key: item.name,
                    size,
                });
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn get(
        &self,
        key: &str,
        version: &Version,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Body>, String> {
        let mut req = self.store.client().read_object(&self.bucket_path, key);
        if let Some((start, end)) = range {
            req = req.set_read_range(ReadRange::segment(start, end - start));
        }
        if let Version::Generation(g) = version {
            req = req.set_generation(*g);
        }
        match req.send().await {
            Ok(resp) => Ok(Some(Body::Gcs(resp))),
            Err(e) if e.http_status_code() == Some(404) => Ok(None),
            Err(e) => Err(error_chain(&e)),
        }
    }
}
