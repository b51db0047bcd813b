//! A streamed response body read synchronously: each chunk is awaited on the runtime
//! through [`Handle::block_on`] (the caller is a rayon or blocking thread, never a
//! runtime worker), with an idle timeout per chunk.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::runtime::Handle;

use super::READ_IDLE_TIMEOUT;

/// A response body of either client.
pub(super) enum Body {
    S3(aws_sdk_s3::primitives::ByteStream),
    Gcs(google_cloud_storage::read_object::ReadObjectResponse),
}

impl Body {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            Self::S3(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
            Self::Gcs(r) => r.next().await.map(|r| r.map_err(|e| e.to_string())),
        }
    }
}

/// [`Body`] as a [`Read`].
pub(super) struct BlockingBody {
    handle: Handle,
    body: Body,
    chunk: Bytes,
    /// The object, for errors.
    uri: String,
}

impl BlockingBody {
    pub(super) fn new(handle: Handle, body: Body, uri: String) -> Self {
        Self {
            handle,
            body,
            chunk: Bytes::new(),
            uri,
        }
    }
}

impl Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            // The timer is created inside the future: it needs the runtime's context,
            // which this (rayon or blocking) thread has only within block_on.
            let body = &mut self.body;
            let next = self.handle.block_on(async {
                tokio::time::timeout(READ_IDLE_TIMEOUT, body.next_chunk()).await
            });
            match next {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no data for {READ_IDLE_TIMEOUT:?}", self.uri),
                    ));
                }
                Ok(None) => return Ok(0),
                Ok(Some(Ok(chunk))) => self.chunk = chunk,
                Ok(Some(Err(e))) => {
                    return Err(io::Error::other(format!("{}: reading: {e}", self.uri)));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
