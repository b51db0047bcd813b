//! Hashing a model into a [`Manifest`]: every file (or shard) is streamed through a
//! bounded buffer, in parallel across files and shards on a rayon pool, largest first so
//! that a big file does not start last and stretch the run.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lotabots_crds::model_attestation::HashAlgorithm;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::manifest::{Manifest, Method, ResourceKey, Serialization};
use crate::source::{Source, SourceError, SourceFile, WalkOptions};

/// Bytes read per call: small enough to stay in a core's L2 cache, so the hash reads what
/// the copy from the page cache just wrote, large enough that syscalls do not dominate.
/// Memory stays bounded by threads × 2 buffers.
const READ_BUFFER: usize = 256 << 10;
/// BLAKE3 hashes each buffer on several threads (its tree allows it), so a single large
/// file still uses every core; 1 MiB splits well and still mostly stays in cache.
const BLAKE3_PARALLEL_BUFFER: usize = 1 << 20;

/// How to hash.
#[derive(Debug, Clone, Default)]
pub struct HashOptions {
    /// Worker threads; `None`: what the source prefers (object stores read more ranges
    /// at once than there are cores), else rayon's default (one per core).
    pub threads: Option<usize>,
    /// Bytes hashed are added here, when given (the controller's metrics).
    pub bytes_read: Option<Arc<AtomicU64>>,
}

/// Why a model could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Listing or reading the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A file changed size while it was read.
    #[error("{path}: changed while being hashed (expected {expected} bytes, read {read})")]
    Changed {
        /// The file.
        path: String,
        /// Bytes listed.
        expected: u64,
        /// Bytes read.
        read: u64,
    },
    /// The model has no file to sign.
    #[error("{0}: the model has no regular file (after ignored paths)")]
    Empty(String),
    /// The thread pool could not start.
    #[error("cannot start hashing threads: {0}")]
    Pool(String),
}

/// Lists `source` and hashes it with `serialization`.
pub fn hash_model(
    source: &dyn Source,
    serialization: &Serialization,
    opts: &HashOptions,
) -> Result<Manifest, HashError> {
    let walk = WalkOptions {
        allow_symlinks: serialization.allow_symlinks,
        ignore: serialization.ignore.clone(),
    };
    let files = source.list(&walk)?;
    if files.is_empty() {
        return Err(HashError::Empty(source.location()));
    }
    let resources = hash_files(source, &files, serialization, opts)?;
    Ok(Manifest {
        model_name: source.model_name(),
        serialization: serialization.clone(),
        resources,
    })
}

/// Hashes the given files of `source` (already listed) into manifest resources.
pub fn hash_files(
    source: &dyn Source,
    files: &[SourceFile],
    serialization: &Serialization,
    opts: &HashOptions,
) -> Result<BTreeMap<ResourceKey, Vec<u8>>, HashError> {
    let mut work: Vec<(ResourceKey, u64)> = Vec::new();
    for f in files {
        match serialization.method {
            Method::Files => work.push((
                ResourceKey {
                    path: f.name.clone(),
                    range: None,
                },
                f.size,
            )),
            Method::Shards { shard_size } => {
                let mut start = 0;
                while start < f.size {
                    let end = f.size.min(start.saturating_add(shard_size));
                    work.push((
                        ResourceKey {
                            path: f.name.clone(),
                            range: Some((start, end)),
                        },
                        end - start,
                    ));
                    start = end;
                }
            }
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.1));
    let hash = serialization.hash;
    let run = || {
        work.into_par_iter()
            .map(|(key, len)| {
                let (start, end) = key.range.unwrap_or((0, len));
                let digest = hash_range(source, &key.path, start, end, hash)?;
                if let Some(counter) = &opts.bytes_read {
                    counter.fetch_add(end - start, Ordering::Relaxed);
                }
                Ok((key, digest))
            })
            .collect::<Result<BTreeMap<_, _>, HashError>>()
    };
    match opts.threads.or_else(|| source.read_parallelism()) {
        None => run(),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| HashError::Pool(e.to_string()))?
            .install(run),
    }
}

/// Streams bytes `start..end` of one file through the hash.
fn hash_range(
    source: &dyn Source,
    path: &str,
    start: u64,
    end: u64,
    hash: HashAlgorithm,
) -> Result<Vec<u8>, HashError> {
    let mut reader = source.open_range(path, start, end)?;
    let reader: &mut (dyn Read + Send) = &mut *reader;
    let read_err = |e: std::io::Error| SourceError {
        path: path.to_owned(),
        problem: e.to_string(),
    };
    let (digest, read) = match hash {
        HashAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            let read = pump(reader, READ_BUFFER, |b| h.update(b)).map_err(read_err)?;
            (h.finalize().to_vec(), read)
        }
        HashAlgorithm::Blake3 => {
            let mut h = blake3::Hasher::new();
            let read = pump(reader, BLAKE3_PARALLEL_BUFFER, |b| {
                h.update_rayon(b);
            })
            .map_err(read_err)?;
            (h.finalize().as_bytes().to_vec(), read)
        }
    };
    if read != end - start {
        return Err(HashError::Changed {
            path: path.to_owned(),
            expected: end - start,
            read,
        });
    }
    Ok(digest)
}

/// Reads `reader` to its end in `buf_len`-byte pieces, feeding each to `sink`, and
/// returns the bytes read. Two buffers alternate: while one is hashed the next is read,
/// on another core when rayon has an idle one (so the last large file is not bound by
/// copy plus hash on one core), inline otherwise.
fn pump(
    reader: &mut (dyn Read + Send),
    buf_len: usize,
    mut sink: impl FnMut(&[u8]) + Send,
) -> std::io::Result<u64> {
    let mut current = vec![0u8; buf_len];
    let mut next = vec![0u8; buf_len];
    let mut filled = fill(reader, &mut current)?;
    let mut total = 0u64;
    while filled > 0 {
        let at_end = filled < buf_len;
        let (_, next_filled) = rayon::join(
            || sink(&current[..filled]),
            || {
                if at_end {
                    Ok(0)
                } else {
                    fill(reader, &mut next)
                }
            },
        );
        total += filled as u64;
        filled = next_filled?;
        std::mem::swap(&mut current, &mut next);
    }
    Ok(total)
}

/// Fills `buf` as far as the reader allows (short only at the end of the data), so that
/// BLAKE3 gets whole buffers to split across threads.
fn fill(reader: &mut (dyn Read + Send), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::LocalSource;

    fn model() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("sub/w.bin"), vec![7u8; 2500]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        dir
    }

    #[test]
    fn files_and_shards_digests() {
        let dir = model();
        let src = LocalSource::new(dir.path()).unwrap();
        let m = hash_model(
            &src,
            &Serialization::files(HashAlgorithm::Sha256),
            &HashOptions::default(),
        )
        .unwrap();
        let names: Vec<_> = m.resources.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["a.txt", "empty", "sub/w.bin"]);
        let hello = m.resources.values().next().unwrap();
        assert_eq!(
            hex::encode(hello),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );

        let sharded = hash_model(
            &src,
            &Serialization::shards(HashAlgorithm::Sha256, 1000),
            &HashOptions {
                threads: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<_> = sharded.resources.keys().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "a.txt:0:5",
                "sub/w.bin:0:1000",
                "sub/w.bin:1000:2000",
                "sub/w.bin:2000:2500"
            ]
        );
        let last = &sharded.resources.values().last().unwrap();
        assert_eq!(last.as_slice(), Sha256::digest([7u8; 500]).as_slice());
    }

    #[test]
    fn blake3_matches_the_plain_hash() {
        let dir = model();
        let src = LocalSource::new(dir.path()).unwrap();
        let m = hash_model(
            &src,
            &Serialization::files(HashAlgorithm::Blake3),
            &HashOptions::default(),
        )
        .unwrap();
        let w = &m.resources[&ResourceKey {
            path: "sub/w.bin".into(),
            range: None,
        }];
        assert_eq!(w.as_slice(), blake3::hash(&[7u8; 2500]).as_bytes());
    }

    #[test]
    fn pump_streams_every_byte_through_alternating_buffers() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        for buf_len in [1, 7, 100, 999, 1000, 4096] {
            let mut seen = Vec::new();
            let mut reader: &[u8] = &data;
            let n = pump(&mut reader, buf_len, |b| seen.extend_from_slice(b)).unwrap();
            assert_eq!(n, 1000, "{buf_len}");
            assert_eq!(seen, data, "{buf_len}");
        }
    }

    #[test]
    fn an_empty_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), b"x").unwrap();
        let src = LocalSource::new(dir.path()).unwrap();
        let err = hash_model(
            &src,
            &Serialization::files(HashAlgorithm::Sha256),
            &HashOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, HashError::Empty(_)), "{err}");
    }
}
