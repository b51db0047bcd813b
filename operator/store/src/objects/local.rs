//! A directory as an object store, for development: one file per object.

use std::{
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectError, ObjectStore, Put, PutOutcome, check_put, settle_existing, validate_key};

/// Objects as files under a root directory. A write goes to a temporary file in the
/// target's directory, is synced, then hard-linked to its name: the link fails if the
/// name exists (create-only, atomic, where a rename would replace), and a reader never
/// sees a partial file.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store under `root` (created if absent).
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root: std::fs::canonicalize(root)?,
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> ObjectError {
        ObjectError::Request {
            op,
            location: self.location(key),
            message: e.to_string(),
        }
    }
}

/// Writes `bytes` to `target` unless it exists: `Ok(false)` if it did.
fn create_only(target: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let dir = target
        .parent()
        .expect("keys are relative paths under the root");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    let linked = match std::fs::hard_link(tmp.path(), target) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    // The temporary name goes with `tmp`; the directory entry of the new name must
    // reach the disk too.
    drop(tmp);
    std::fs::File::open(dir)?.sync_all()?;
    Ok(linked)
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn location(&self, key: &str) -> String {
        format!("file://{}", self.path(key).display())
    }

    async fn put(&self, key: &str, bytes: Bytes, sha256: &str) -> Result<Put, ObjectError> {
        check_put(&self.location(key), key, &bytes, sha256)?;
        let target = self.path(key);
        let created = tokio::task::spawn_blocking(move || create_only(&target, &bytes))
            .await
            .map_err(|e| self.err("put", key, e))?
            .map_err(|e| self.err("put", key, e))?;
        if created {
            Ok(Put {
                location: self.location(key),
                outcome: PutOutcome::Stored,
            })
        } else {
            settle_existing(self, key, sha256).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        validate_key(key)?;
        match tokio::fs::read(self.path(key)).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ObjectError::NotFound {
                location: self.location(key),
            }),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, ObjectError> {
        validate_key(key)?;
        tokio::fs::try_exists(self.path(key))
            .await
            .map_err(|e| self.err("head", key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bundle::sha256_hex, objects::get_verified};

    #[tokio::test]
    async fn create_only_idempotent_and_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("objects")).unwrap();
        let (a, b) = (
            Bytes::from_static(b"bundle a"),
            Bytes::from_static(b"bundle b"),
        );
        let key = "bundles/sha256/aa";
        let put = store.put(key, a.clone(), &sha256_hex(&a)).await.unwrap();
        assert_eq!(put.outcome, PutOutcome::Stored);
        assert!(put.location.starts_with("file:///") && put.location.ends_with(key));
        let again = store.put(key, a.clone(), &sha256_hex(&a)).await.unwrap();
        assert_eq!(again.outcome, PutOutcome::AlreadyPresent);
        let err = store
            .put(key, b.clone(), &sha256_hex(&b))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectError::Conflict { .. }), "{err}");
        assert_eq!(store.get(key).await.unwrap(), a);
        assert!(store.exists(key).await.unwrap());
        assert!(!store.exists("bundles/sha256/bb").await.unwrap());
        let err = store.get("bundles/sha256/bb").await.unwrap_err();
        assert!(matches!(err, ObjectError::NotFound { .. }), "{err}");
        // Bytes that do not match their digest are refused before anything is written.
        let err = store
            .put("x", a.clone(), &sha256_hex(&b))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectError::BadInput { .. }), "{err}");
        assert!(!store.exists("x").await.unwrap());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("objects/bundles/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["aa"]);
        // A corrupted file is detected on read.
        std::fs::write(dir.path().join("objects").join(key), b"bundle A").unwrap();
        let err = get_verified(&store, key, &sha256_hex(&a))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectError::Corrupt { .. }), "{err}");
        let err = store.get("../escape").await.unwrap_err();
        assert!(matches!(err, ObjectError::InvalidKey { .. }), "{err}");
    }
}
