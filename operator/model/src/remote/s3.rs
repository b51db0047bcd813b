//! S3 buckets, through the evidence store's S3 client construction.

use aws_sdk_s3::error::DisplayErrorContext;
use lotabots_store::objects::{S3Config, S3Store};

use super::body::Body;
use super::{Listed, S3Access, Version};
use crate::source::SourceError;

/// One bucket's client.
pub(super) struct S3Bucket {
    store: S3Store,
}

impl S3Bucket {
    pub(super) fn new(bucket: &str, access: &S3Access) -> Result<Self, SourceError> {
        let mut config = S3Config::new(
            bucket,
            &access.region,
            access
                .credentials
                .clone()
                .unwrap_or_else(|| lotabots_store::objects::S3Credentials {
                    access_key_id: String::new(),
                    secret_access_key: String::new(),
                }),
        );
        config.anonymous = access.credentials.is_none();
        config.endpoint = access.endpoint.clone();
        config.path_style = access.path_style;
        config.allow_insecure_http = access.allow_insecure_http;
        // The SDK's operation timeout ends when the response headers arrive; the body is
        // bounded by the reader's idle timeout instead.
        config.timeout = super::READ_IDLE_TIMEOUT;
        let store = S3Store::new(config).map_err(|e| SourceError {
            path: format!("s3://{bucket}"),
            problem: format!("{e:#}"),
        })?;
        Ok(Self { store })
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        let mut out = Vec::new();
        let mut pages = self
            .store
            .client()
            .list_objects_v2()
            .bucket(self.store.bucket())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| DisplayErrorContext(e).to_string())?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                out.push(Listed {
                    key: key.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    version: o
                        .e_tag()
                        .map_or(Version::Any, |t| Version::ETag(t.to_owned())),
                });
            }
        }
        Ok(out)
    }

    pub(super) async fn get(
        &self,
        key: &str,
        version: &Version,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Body>, String> {
        let mut req = self
            .store
            .client()
            .get_object()
            .bucket(self.store.bucket())
            .key(key);
        if let Some((start, end)) = range {
            req = req.range(format!("bytes={start}-{}", end - 1));
        }
        if let Version::ETag(tag) = version {
            req = req.if_match(tag);
        }
        match req.send().await {
            Ok(resp) => Ok(Some(Body::S3(resp.body))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 404 | 412)) =>
            {
                Ok(None)
            }
            Err(e) => Err(DisplayErrorContext(e).to_string()),
        }
    }
}
