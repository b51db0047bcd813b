//! The manifest of a model as OpenSSF model-signing v1.0 defines it: one digest per file
//! (`files`) or per fixed-size byte range of each file (`shards`), the serialization
//! parameters that produced them, and the root digest over all of them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use lotabots_crds::model_attestation::HashAlgorithm;
use sha2::{Digest as _, Sha256};

use crate::ignore::IgnoreSet;

/// How model_signing 1.x names the one file of a single-file model (the specification
/// names it by its file name, which is what we write).
pub const SINGLE_FILE_REFERENCE_NAME: &str = ".";

/// model_signing's default shard size (1,000,000,000 bytes).
pub const DEFAULT_SHARD_SIZE: u64 = 1_000_000_000;

/// How files map to manifest resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One resource per file (`"files"`).
    Files,
    /// One resource per `shard_size` bytes of each file; empty files have none (`"shards"`).
    Shards {
        /// Bytes per shard (the last shard of a file may be shorter).
        shard_size: u64,
    },
}

/// The serialization parameters recorded in the signature's predicate; verification
/// re-hashes the model with exactly these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serialization {
    /// Files or shards.
    pub method: Method,
    /// Hash of every resource.
    pub hash: HashAlgorithm,
    /// Whether symbolic links to files were followed.
    pub allow_symlinks: bool,
    /// Paths left out (defaults, the signature file, user paths).
    pub ignore: IgnoreSet,
}

impl Serialization {
    /// `files` with SHA-256, no symlinks, the default ignores: model_signing's defaults.
    pub fn files(hash: HashAlgorithm) -> Self {
        Self {
            method: Method::Files,
            hash,
            allow_symlinks: false,
            ignore: IgnoreSet::with_defaults(std::iter::empty::<&str>())
                .expect("the defaults are valid"),
        }
    }

    /// `shards` of `shard_size` bytes.
    pub fn shards(hash: HashAlgorithm, shard_size: u64) -> Self {
        Self {
            method: Method::Shards { shard_size },
            ..Self::files(hash)
        }
    }

    /// The resource `algorithm` the specification writes: the hash's name, for shards too.
    pub fn algorithm_name(&self) -> &'static str {
        self.hash.as_str()
    }

    /// Whether `name` is an acceptable resource `algorithm` under these parameters: the
    /// specification's spelling (`sha256`), or for shards also the Python reference's
    /// (`sha256-sharded-1000000000`).
    pub fn accepts_algorithm(&self, name: &str) -> bool {
        if name == self.hash.as_str() {
            return true;
        }
        match self.method {
            Method::Files => false,
            Method::Shards { shard_size } => {
                name.strip_prefix(self.hash.as_str())
                    .and_then(|r| r.strip_prefix("-sharded-"))
                    == Some(shard_size.to_string().as_str())
            }
        }
    }
}

/// What a resource covers: a whole file, or bytes `start..end` of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    /// The file, relative to the model root, `/`-separated.
    pub path: String,
    /// The byte range of a shard; `None` for a whole file.
    pub range: Option<(u64, u64)>,
}

impl ResourceKey {
    /// Parses a resource name: `PATH` for files, `PATH:START:END` for shards (the last two
    /// colon-separated fields, since file names may contain colons).
    pub fn parse(name: &str, method: Method) -> Result<Self, String> {
        let check_path = |p: &str| -> Result<String, String> {
            if p == SINGLE_FILE_REFERENCE_NAME {
                return Ok(p.to_owned());
            }
            if p.is_empty()
                || p.starts_with('/')
                || p.split('/').any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(format!(
                    "resource name {name:?} is not a normalised path relative to the model root"
                ));
            }
            Ok(p.to_owned())
        };
        match method {
            Method::Files => Ok(Self {
                path: check_path(name)?,
                range: None,
            }),
            Method::Shards { shard_size } => {
                let mut it = name.rsplitn(3, ':');
                let (end, start, path) = (it.next(), it.next(), it.next());
                let (Some(end), Some(start), Some(path)) = (end, start, path) else {
                    return Err(format!(
                        "shard resource name {name:?} is not PATH:START:END"
                    ));
                };
                let num = |s: &str| {
                    s.parse::<u64>()
                        .ok()
                        .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                };
                let (Some(start), Some(end)) = (num(start), num(end)) else {
                    return Err(format!(
                        "shard resource name {name:?} has non-numeric offsets"
                    ));
                };
                if start >= end || end - start > shard_size || start % shard_size != 0 {
                    return Err(format!(
                        "shard resource name {name:?} is not a {shard_size}-byte shard"
                    ));
                }
                Ok(Self {
                    path: check_path(path)?,
                    range: Some((start, end)),
                })
            }
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.range {
            None => f.write_str(&self.path),
            Some((s, e)) => write!(f, "{}:{s}:{e}", self.path),
        }
    }
}

impl Ord for ResourceKey {
    /// model_signing's order: paths compared component by component (Python's
    /// `PurePosixPath` ordering, so `a/b` sorts before `a.b`), then the byte range.
    fn cmp(&self, other: &Self) -> Ordering {
        self.path
            .split('/')
            .cmp(other.path.split('/'))
            .then(self.range.cmp(&other.range))
    }
}

impl PartialOrd for ResourceKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A model manifest: serialization parameters and one digest per resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The model's name (informational; not compared).
    pub model_name: String,
    /// How the resources were produced.
    pub serialization: Serialization,
    /// Resource digests, in model_signing's order.
    pub resources: BTreeMap<ResourceKey, Vec<u8>>,
}

impl Manifest {
    /// SHA-256 over the resource digests in manifest order: the in-toto subject digest,
    /// which names the manifest (`sha256:` + this, in lowercase hex).
    pub fn root_digest(&self) -> [u8; 32] {
        root_digest(self.resources.values().map(Vec::as_slice))
    }

    /// The root digest as `sha256:HEX`.
    pub fn digest_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.root_digest()))
    }

    /// Total number of distinct files.
    pub fn file_count(&self) -> usize {
        self.resources
            .keys()
            .map(|k| k.path.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// For a single-file model hashed here (named by its file name): when `signed` names
    /// its file `.` as model_signing 1.x does, renames ours to match, so that the two
    /// spellings of the same file compare equal.
    pub fn align_single_file_name(&mut self, signed: &Self) {
        let reference_style = signed
            .resources
            .keys()
            .all(|k| k.path == SINGLE_FILE_REFERENCE_NAME);
        if reference_style && self.file_count() == 1 {
            self.resources = std::mem::take(&mut self.resources)
                .into_iter()
                .map(|(k, d)| {
                    let path = SINGLE_FILE_REFERENCE_NAME.to_owned();
                    (ResourceKey { path, ..k }, d)
                })
                .collect();
        }
    }

    /// Compares this (the model as found) with `expected` (the signed manifest), file by
    /// file. Empty when they match.
    pub fn diff(&self, expected: &Self) -> Vec<FileProblem> {
        fn by_path(m: &Manifest) -> BTreeMap<&str, Vec<(&ResourceKey, &Vec<u8>)>> {
            let mut map: BTreeMap<&str, Vec<_>> = BTreeMap::new();
            for (k, d) in &m.resources {
                map.entry(k.path.as_str()).or_default().push((k, d));
            }
            map
        }
        let (actual, wanted) = (by_path(self), by_path(expected));
        let paths: BTreeSet<&str> = actual.keys().chain(wanted.keys()).copied().collect();
        let mut problems = Vec::new();
        for path in paths {
            let problem = match (actual.get(path), wanted.get(path)) {
                (None, Some(_)) => Problem::Missing,
                (Some(_), None) => Problem::Extra,
                (Some(a), Some(w)) if a != w => Problem::Mismatch,
                _ => continue,
            };
            problems.push(FileProblem {
                path: path.to_owned(),
                problem,
            });
        }
        problems
    }
}

/// SHA-256 over digests concatenated in order (model_signing's subject digest).
pub fn root_digest<'a>(digests: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// What is wrong with one file of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Problem {
    /// Signed, but absent from the model.
    Missing,
    /// In the model, but not signed.
    Extra,
    /// Present in both with different content.
    Mismatch,
}

/// One file a check objected to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileProblem {
    /// The file, relative to the model root.
    pub path: String,
    /// What is wrong.
    pub problem: Problem,
}

impl Problem {
    /// The problem in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "missing: signed but not in the model",
            Self::Extra => "extra: in the model but not signed",
            Self::Mismatch => "modified: content differs from the signed digest",
        }
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> ResourceKey {
        ResourceKey {
            path: p.into(),
            range: None,
        }
    }

    #[test]
    fn order_is_component_wise_like_the_reference() {
        let mut keys = [
            key("a.b"),
            key("a/b"),
            key("a.txt"),
            key("sub/w.bin"),
            key("empty"),
        ];
        keys.sort();
        let names: Vec<_> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a/b", "a.b", "a.txt", "empty", "sub/w.bin"]);

        let shard = |s, e| ResourceKey {
            path: "f".into(),
            range: Some((s, e)),
        };
        let mut shards = [shard(10_000, 10_500), shard(2_000, 3_000), shard(0, 1_000)];
        shards.sort();
        assert_eq!(shards[0].range, Some((0, 1_000)));
        assert_eq!(shards[2].to_string(), "f:10000:10500");
    }

    #[test]
    fn shard_names_parse_from_the_right() {
        let m = Method::Shards { shard_size: 1000 };
        let k = ResourceKey::parse("dir/a:b.bin:2000:2500", m).unwrap();
        assert_eq!(k.path, "dir/a:b.bin");
        assert_eq!(k.range, Some((2000, 2500)));
        for bad in [
            "f:0",
            "f:x:10",
            "f:0:1001",
            "f:500:900",
            "f:10:10",
            "../f:0:1",
            "/f:0:1",
        ] {
            assert!(ResourceKey::parse(bad, m).is_err(), "{bad}");
        }
        assert!(ResourceKey::parse("a//b", Method::Files).is_err());
    }

    #[test]
    fn algorithm_spellings() {
        let s = Serialization::shards(HashAlgorithm::Sha256, 1000);
        assert!(s.accepts_algorithm("sha256"));
        assert!(s.accepts_algorithm("sha256-sharded-1000"));
        assert!(!s.accepts_algorithm("sha256-sharded-999"));
        assert!(!s.accepts_algorithm("blake3"));
        assert!(
            !Serialization::files(HashAlgorithm::Sha256).accepts_algorithm("sha256-sharded-1000")
        );
    }

    #[test]
    fn diff_names_each_file() {
        let ser = Serialization::files(HashAlgorithm::Sha256);
        let make = |items: &[(&str, u8)]| Manifest {
            model_name: "m".into(),
            serialization: ser.clone(),
            resources: items.iter().map(|(p, d)| (key(p), vec![*d])).collect(),
        };
        let found = make(&[("a", 1), ("b", 2), ("extra", 3)]);
        let signed = make(&[("a", 1), ("b", 9), ("gone", 4)]);
        let got: Vec<_> = found
            .diff(&signed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "b: modified: content differs from the signed digest",
                "extra: extra: in the model but not signed",
                "gone: missing: signed but not in the model",
            ]
        );
        assert!(signed.diff(&signed).is_empty());
        assert_ne!(found.root_digest(), signed.root_digest());
    }
}
