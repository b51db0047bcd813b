//! The model's files as loaded: read into memory once, and those very bytes hashed again
//! and compared with the verified manifest before anything parses them.
//!
//! Hashing the directory and then opening the files leaves a window in which a file
//! could be swapped (a writable volume, a shared cache); checking the bytes in memory
//! closes it, so the model that runs is the model that was attested whatever happens on
//! disk after the check.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use lotabots_model::hashing::{HashOptions, hash_files};
use lotabots_model::manifest::Manifest;
use lotabots_model::source::{Source, SourceError, SourceFile, WalkOptions};

use crate::embed::ModelError;

/// Why a file the model needs could not be loaded as attested.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A required file is not in the model.
    #[error("{0}: required to load the model, but not in the model directory")]
    Missing(String),
    /// A file is in the model but outside the manifest (an ignored path).
    #[error("{0}: not covered by the attested manifest, so it cannot be trusted")]
    NotCovered(String),
    /// The bytes read differ from the attested digest.
    #[error(
        "{0}: the bytes loaded differ from the attested digest (changed after the model was checked)"
    )]
    Changed(String),
    /// Reading failed.
    #[error("{file}: {problem}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        problem: String,
    },
}

/// Files read from a model, by manifest name.
#[derive(Clone, Default)]
pub struct LoadedFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for LoadedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and sizes: the bytes are the model's weights.
        f.debug_map()
            .entries(self.files.iter().map(|(n, b)| (n, b.len())))
            .finish()
    }
}

impl LoadedFiles {
    /// Files given directly (tests; sources that are not directories).
    pub fn from_map(files: BTreeMap<String, Vec<u8>>) -> Self {
        Self { files }
    }

    /// Reads `required` (each must exist) and whichever of `optional` exist from
    /// `model_dir`, then checks every byte read against `manifest`.
    pub fn read_checked(
        model_dir: &Path,
        required: &[String],
        optional: &[String],
        manifest: &Manifest,
        opts: &HashOptions,
    ) -> Result<Self, LoadError> {
        let mut files = BTreeMap::new();
        let wanted = required.iter().map(|n| (n, true));
        for (name, needed) in wanted.chain(optional.iter().map(|n| (n, false))) {
            match std::fs::read(model_dir.join(name)) {
                Ok(bytes) => {
                    files.insert(name.clone(), bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if needed {
                        return Err(LoadError::Missing(name.clone()));
                    }
                }
                Err(e) => {
                    return Err(LoadError::Read {
                        file: name.clone(),
                        problem: e.to_string(),
                    });
                }
            }
        }
        let loaded = Self { files };
        loaded.check(manifest, opts)?;
        Ok(loaded)
    }

    /// Hashes the bytes held with the manifest's serialization and compares every
    /// resource (whole file or shard) with the manifest's digest for it.
    pub fn check(&self, manifest: &Manifest, opts: &HashOptions) -> Result<(), LoadError> {
        for name in self.files.keys() {
            if !manifest.resources.keys().any(|k| &k.path == name) {
                return Err(LoadError::NotCovered(name.clone()));
            }
        }
        let listed: Vec<SourceFile> = self
            .files
            .iter()
            .map(|(name, bytes)| SourceFile {
                name: name.clone(),
                size: bytes.len() as u64,
            })
            .collect();
        let hashed = hash_files(self, &listed, &manifest.serialization, opts).map_err(|e| {
            LoadError::Read {
                file: "(memory)".into(),
                problem: e.to_string(),
            }
        })?;
        for name in self.files.keys() {
            let ours: Vec<_> = hashed.iter().filter(|(k, _)| &k.path == name).collect();
            let theirs: Vec<_> = manifest
                .resources
                .iter()
                .filter(|(k, _)| &k.path == name)
                .collect();
            if ours != theirs {
                return Err(LoadError::Changed(name.clone()));
            }
        }
        Ok(())
    }

    /// A file's bytes, if it was loaded.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// A file's bytes; an error naming it when it was not loaded.
    pub fn require(&self, name: &str) -> Result<&[u8], ModelError> {
        self.get(name).ok_or_else(|| ModelError::File {
            file: name.to_owned(),
            problem: "not loaded".into(),
        })
    }

    /// Total bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }
}

/// The loaded bytes seen as a model source, so that `lotabots-model` hashes them exactly
/// as it hashed the directory (same serialization, same shards).
impl Source for LoadedFiles {
    fn location(&self) -> String {
        "(model files in memory)".into()
    }

    fn model_name(&self) -> String {
        String::new()
    }

    fn list(&self, _opts: &WalkOptions) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self
            .files
            .iter()
            .map(|(name, bytes)| SourceFile {
                name: name.clone(),
                size: bytes.len() as u64,
            })
            .collect())
    }

    fn open_range(
        &self,
        name: &str,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let bytes = self.files.get(name).ok_or_else(|| SourceError {
            path: name.to_owned(),
            problem: "not loaded".into(),
        })?;
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| SourceError {
                path: name.to_owned(),
                problem: format!("range {start}..{end} is outside its {} bytes", bytes.len()),
            })?;
        Ok(Box::new(range))
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
        match self.files.get(name) {
            None => Ok(None),
            Some(b) if b.len() as u64 > max => Err(SourceError {
                path: name.to_owned(),
                problem: format!("larger than {max} bytes"),
            }),
            Some(b) => Ok(Some(b.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use lotabots_crds::model_attestation::HashAlgorithm;
    use lotabots_model::hashing::hash_model;
    use lotabots_model::manifest::Serialization;
    use lotabots_model::source::LocalSource;

    use super::*;

    fn setup(ser: &Serialization) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), b"{\"a\":1}").unwrap();
        std::fs::write(dir.path().join("w.bin"), vec![3u8; 2500]).unwrap();
        let src = LocalSource::new(dir.path()).unwrap();
        let m = hash_model(&src, ser, &HashOptions::default()).unwrap();
        (dir, m)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bytes_are_checked_against_the_manifest_in_every_serialization() {
        for ser in [
            Serialization::files(HashAlgorithm::Sha256),
            Serialization::files(HashAlgorithm::Blake3),
            Serialization::shards(HashAlgorithm::Sha256, 1000),
        ] {
            let (dir, m) = setup(&ser);
            let opts = HashOptions::default();
            let l = LoadedFiles::read_checked(
                dir.path(),
                &names(&["w.bin"]),
                &names(&["a.json", "absent.json"]),
                &m,
                &opts,
            )
            .unwrap();
            assert_eq!(l.get("a.json"), Some(&b"{\"a\":1}"[..]));
            assert_eq!(l.total_bytes(), 2507);
            assert!(l.get("absent.json").is_none());

            // The same bytes changed after hashing are caught (one shard of three).
            let mut files = BTreeMap::new();
            let mut w = vec![3u8; 2500];
            w[1500] = 4;
            files.insert("w.bin".to_owned(), w);
            let e = LoadedFiles::from_map(files).check(&m, &opts).unwrap_err();
            assert_eq!(
                e.to_string(),
                "w.bin: the bytes loaded differ from the attested digest (changed after the model was checked)"
            );
        }
    }

    #[test]
    fn missing_and_uncovered_files_are_named() {
        let ser = Serialization::files(HashAlgorithm::Sha256);
        let (dir, m) = setup(&ser);
        let opts = HashOptions::default();
        let e = LoadedFiles::read_checked(dir.path(), &names(&["gone.bin"]), &[], &m, &opts)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "gone.bin: required to load the model, but not in the model directory"
        );
        std::fs::write(dir.path().join("late.json"), b"{}").unwrap();
        let e = LoadedFiles::read_checked(dir.path(), &names(&["late.json"]), &[], &m, &opts)
            .unwrap_err();
        assert!(
            matches!(e, LoadError::NotCovered(ref f) if f == "late.json"),
            "{e}"
        );
    }
}
