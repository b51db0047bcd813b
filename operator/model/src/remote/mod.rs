//! Models in object stores: `s3://BUCKET/PREFIX` (AWS S3 and S3-compatible servers) and
//! `gs://BUCKET/PREFIX` (Google Cloud Storage), read through the evidence store's
//! clients (`lotabots_store::objects`: the same endpoint checks, TLS and addressing).
//!
//! [`ObjectSource`] implements the synchronous [`Source`] the hashing and the scan use:
//! every `open_range` is one ranged GET, streamed, so shards are read in parallel and
//! never held whole. The clients are async; each blocking call runs its future on a
//! Tokio runtime through [`Handle::block_on`], which is only legal outside async
//! execution — callers run the stages on rayon threads or in `spawn_blocking`, never on
//! a runtime worker (the constructor takes the handle for that reason).
//!
//! Every file is read at the version it was listed with (an S3 ETag with `If-Match`, a
//! GCS generation), so a model overwritten while it is hashed fails as changed instead
//! of mixing two versions into one manifest.
//!
//! The credentials are those of the model's owner ([`Access`], from a tenant's Secret
//! or the command's environment), never the operator's own.

mod access;
mod body;
mod gcs;
mod s3;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

pub use access::{Access, AccessError, GcsAccess, S3Access};
use body::BlockingBody;

use crate::source::{Location, Source, SourceError, SourceFile, WalkOptions};

/// Parallel ranged GETs while hashing: object stores answer each request after a round
/// trip, so more requests than cores are in flight to keep the cores hashing.
pub const PARALLEL_READS: usize = 8;
/// A read that receives nothing for this long fails (a stalled connection must not hold
/// a reconcile for ever).
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The version of an object as listed, which every later read of it must match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// S3 ETag (sent as `If-Match`).
    ETag(String),
    /// GCS generation.
    Generation(i64),
    /// Not known (the store did not say): read whatever is current.
    Any,
}

/// One object found under the prefix.
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    size: u64,
    version: Version,
}

/// The client of one bucket (boxed: one per source, and the GCS clients are large).
enum Backend {
    S3(Box<s3::S3Bucket>),
    Gcs(Box<gcs::GcsBucket>),
}

impl Backend {
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        match self {
            Self::S3(b) => b.list(prefix).await,
            Self::Gcs(b) => b.list(prefix).await,
        }
    }

    /// Bytes `start..end` (`end > start`) of `key` at `version`; `Ok(None)` when there is
    /// no such object (or no longer that version).
    async fn get(
        &self,
        key: &str,
        version: &Version,
        range: Option<(u64, u64)>,
    ) -> Result<Option<body::Body>, String> {
        match self {
            Self::S3(b) => b.get(key, version, range).await,
            Self::Gcs(b) => b.get(key, version, range).await,
        }
    }
}

/// The runtime the blocking calls run on: the caller's (the operator's), or one of its
/// own for a command that has none.
#[derive(Clone)]
enum Runner {
    Handle(Handle),
    Owned(Arc<Runtime>),
}

impl Runner {
    fn handle(&self) -> &Handle {
        match self {
            Self::Handle(h) => h,
            Self::Owned(rt) => rt.handle(),
        }
    }
}

/// A model under `s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX`: every object below
/// `PREFIX/` (keys are split at `/` into the manifest's paths), or the single object
/// named `PREFIX` when there is nothing below it.
pub struct ObjectSource {
    backend: Backend,
    location: Location,
    /// The key prefix without a trailing `/` (empty: the whole bucket).
    prefix: String,
    runner: Runner,
    /// Filled by [`Source::list`]: each file's key and the version first listed.
    listed: Mutex<HashMap<String, Listed>>,
    /// Whether the prefix named one object (known once listed).
    single: OnceLock<bool>,
}

impl fmt::Debug for ObjectSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectSource")
            .field("location", &self.location.to_string())
            .finish_non_exhaustive()
    }
}

impl ObjectSource {
    /// A source for `location` (`s3://` or `gs://`) with `access`, whose blocking calls
    /// run on `handle` (the caller's multi-threaded runtime). Async because building a
    /// GCS client is.
    pub async fn connect(
        location: &Location,
        access: &Access,
        handle: Handle,
    ) -> Result<Self, SourceError> {
        let (bucket, prefix) = match location {
            Location::S3 { bucket, prefix } | Location::Gcs { bucket, prefix } => {
                (bucket.clone(), prefix.trim_end_matches('/').to_owned())
            }
            Location::Local(p) => {
                return Err(SourceError {
                    path: p.display().to_string(),
                    problem: "is a local path, not an s3:// or gs:// location".into(),
                });
            }
        };
        let backend = match location {
            Location::S3 { .. } => Backend::S3(Box::new(s3::S3Bucket::new(&bucket, access.s3())?)),
            _ => Backend::Gcs(Box::new(gcs::GcsBucket::new(&bucket, access.gcs()).await?)),
        };
        Ok(Self {
            backend,
            location: location.clone(),
            prefix,
            runner: Runner::Handle(handle),
            listed: Mutex::new(HashMap::new()),
            single: OnceLock::new(),
        })
    }

    /// A source with a runtime of its own, for a command without one (`attest-model`).
    pub fn connect_blocking(location: &Location, access: &Access) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lotabots-objects")
            .enable_all()
            .build()
            .map_err(|e| SourceError {
                path: location.to_string(),
                problem: format!("cannot start the I/O runtime: {e}"),
            })?;
        let runtime = Arc::new(runtime);
        let mut source =
            runtime.block_on(Self::connect(location, access, runtime.handle().clone()))?;
        source.runner = Runner::Owned(runtime);
        Ok(source)
    }

    /// Lists the model once, so that an unreachable bucket, refused credentials or an
    /// empty prefix is reported as such before any stage runs.
    pub fn check_reachable(&self) -> Result<(), SourceError> {
        if self.list(&WalkOptions::default())?.is_empty() {
            return Err(self.error("", "no object under this prefix"));
        }
        Ok(())
    }

    fn error(&self, name: &str, problem: impl Into<String>) -> SourceError {
        SourceError {
            path: if name.is_empty() {
                self.location()
            } else {
                self.uri_of(name)
            },
            problem: problem.into(),
        }
    }

    /// The URI of the model file `name` (`s3://bucket/prefix/name`).
    pub fn uri_of(&self, name: &str) -> String {
        format!("{}{}", self.scheme_and_bucket(), self.key_of(name))
    }

    fn scheme_and_bucket(&self) -> String {
        match &self.location {
            Location::S3 { bucket, .. } => format!("s3://{bucket}/"),
            Location::Gcs { bucket, .. } => format!("gs://{bucket}/"),
            Location::Local(_) => String::new(),
        }
    }

    /// The object key of `name`: the prefix itself for a single-object model.
    fn key_of(&self, name: &str) -> String {
        if let Some(l) = self.listed().get(name) {
            return l.key.clone();
        }
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    fn listed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listed>> {
        self.listed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest name of `key` (relative to the prefix), `None` for keys that are not
    /// under `prefix/`; an error for a key no manifest can name.
    fn name_of(&self, key: &str) -> Option<Result<String, String>> {
        let rel = if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        if rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Some(Err(
                "the key has an empty, \".\" or \"..\" path segment, which a manifest cannot name"
                    .into(),
            ));
        }
        Some(Ok(rel.to_owned()))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runner.handle().block_on(f)
    }

    /// Opens `key` at `version`, bytes `start..end`, as a blocking reader.
    fn open_key(
        &self,
        name: &str,
        key: &str,
        version: &Version,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlockingBody>, SourceError> {
        let uri = self.uri_of(name);
        let body = self
            .block_on(async {
                tokio::time::timeout(READ_IDLE_TIMEOUT, self.backend.get(key, version, range))
                    .await
                    .map_err(|_| format!("no answer within {READ_IDLE_TIMEOUT:?}"))?
            })
            .map_err(|e| self.error(name, e))?;
        Ok(body.map(|b| BlockingBody::new(self.runner.handle().clone(), b, uri)))
    }
}

impl Source for ObjectSource {
    fn location(&self) -> String {
        let base = self.scheme_and_bucket();
        format!("{base}{}", self.prefix)
    }

    fn model_name(&self) -> String {
        match &self.location {
            Location::S3 { bucket, .. } | Location::Gcs { bucket, .. } => self
                .prefix
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or(bucket)
                .to_owned(),
            Location::Local(_) => String::new(),
        }
    }

    fn list(&self, opts: &WalkOptions) -> Result<Vec<SourceFile>, SourceError> {
        // Without the trailing `/`, so that an object named exactly PREFIX is seen too;
        // its siblings (PREFIX-2/…) are left out below.
        let objects = self
            .block_on(self.backend.list(&self.prefix))
            .map_err(|e| self.error("", format!("listing: {e}")))?;
        let single = !self.prefix.is_empty()
            && objects.len() == 1
            && objects[0].key == self.prefix
            && !objects[0].key.ends_with('/');
        let _ = self.single.set(single);
        // Every stage must judge the same bytes: an object listed before keeps the
        // version (and size) first seen, and its reads fail if that version is gone.
        let mut listed = self.listed();
        let mut out = Vec::new();
        for o in objects {
            let name = if single {
                self.model_name()
            } else {
                // A zero-byte key ending in `/` is a console's "folder", not a file.
                if o.key.ends_with('/') && o.size == 0 {
                    continue;
                }
                match self.name_of(&o.key) {
                    None => continue,
                    Some(Err(problem)) => {
                        return Err(SourceError {
                            path: format!("{}{}", self.scheme_and_bucket(), o.key),
                            problem,
                        });
                    }
                    Some(Ok(name)) => name,
                }
            };
            if opts.ignore.is_ignored(&name) {
                continue;
            }
            let pinned = listed.entry(name.clone()).or_insert(o);
            out.push(SourceFile {
                name,
                size: pinned.size,
            });
        }
        Ok(out)
    }

    fn open_range(
        &self,
        name: &str,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        if end <= start {
            return Ok(Box::new(io::empty()));
        }
        let (key, version) = match self.listed().get(name) {
            Some(l) => (l.key.clone(), l.version.clone()),
            None => (self.key_of(name), Version::Any),
        };
        match self.open_key(name, &key, &version, Some((start, end)))? {
            Some(body) => Ok(Box::new(body)),
            None if version == Version::Any => Err(self.error(name, "no such object")),
            None => Err(self.error(
                name,
                "no such object at the version listed: it was replaced or deleted while read",
            )),
        }
    }

    fn is_single_file(&self) -> bool {
        self.single.get().copied().unwrap_or(false)
    }

    fn read_parallelism(&self) -> Option<usize> {
        Some(PARALLEL_READS)
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let key = self.key_of(name);
        let Some(body) = self.open_key(name, &key, &Version::Any, None)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        body.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(name, e.to_string()))?;
        if bytes.len() as u64 > max {
            return Err(self.error(name, format!("larger than {max} bytes")));
        }
        Ok(Some(bytes))
    }

    fn display_name(&self, name: &str) -> String {
        self.uri_of(name)
    }
}
