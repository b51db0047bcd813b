//! Where a model's files come from: a [`Source`] lists the regular files of a model and
//! opens byte ranges of them, so that hashing can read shards in parallel whatever the
//! storage. Local directories (`file://` URIs, plain paths, mounted PVCs) are implemented
//! here; `s3://` and `gs://` sources ([`crate::remote`]) plug in through the same trait
//! with ranged GETs.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::ignore::IgnoreSet;

/// One regular file of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the model root, `/`-separated, valid UTF-8 (the manifest name).
    pub name: String,
    /// Size in bytes when listed.
    pub size: u64,
}

/// How a source enumerates files.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Follow symbolic links to files (their target's content is hashed under the
    /// link's name); without it a symbolic link is an error, as in model_signing.
    pub allow_symlinks: bool,
    /// Paths (relative to the root) whose subtrees are skipped.
    pub ignore: IgnoreSet,
}

/// A model's storage.
pub trait Source: Sync + Send + fmt::Debug {
    /// Where the model is, for messages (a path or URI, never credentials).
    fn location(&self) -> String;

    /// The model's name: the final component of its path, recorded as the in-toto subject.
    fn model_name(&self) -> String;

    /// Every regular file of the model that `opts.ignore` does not exclude, in any order.
    fn list(&self, opts: &WalkOptions) -> Result<Vec<SourceFile>, SourceError>;

    /// A reader over bytes `start..end` of the file `name` (as [`Self::list`] named it).
    /// Object stores implement it as one ranged GET; shards are aligned to these ranges.
    fn open_range(
        &self,
        name: &str,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError>;

    /// Whether the model is a single file rather than a directory (for an object store:
    /// known once listed).
    fn is_single_file(&self) -> bool {
        false
    }

    /// The local model, for what reads a filesystem directly (the scanner's walk);
    /// `None` for object stores.
    fn local(&self) -> Option<&LocalSource> {
        None
    }

    /// How many ranges are best read at once (object stores: more than cores, since each
    /// request waits a round trip); `None`: one per core.
    fn read_parallelism(&self) -> Option<usize> {
        None
    }

    /// The whole file `name` when it is at most `max` bytes (a signature bundle, a model
    /// card); `Ok(None)` when there is no such file, an error when it is larger.
    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, SourceError>;

    /// `name` as messages show it: the path or URI of the file.
    fn display_name(&self, name: &str) -> String {
        format!("{}/{name}", self.location())
    }
}

/// A file of a source as a seekable reader (the scanner seeks in archives): each read
/// after a seek is a fresh range request, whose window doubles while reads continue
/// sequentially, so a header costs one small request and a long walk few large ones.
pub struct SeekableFile<'a> {
    source: &'a dyn Source,
    name: String,
    size: u64,
    pos: u64,
    window: u64,
    current: Option<(Box<dyn Read + Send + 'a>, u64)>,
}

impl<'a> SeekableFile<'a> {
    /// First request size.
    const MIN_WINDOW: u64 = 1 << 20;
    /// Largest request size.
    const MAX_WINDOW: u64 = 64 << 20;

    /// The file `name` of `size` bytes (as listed).
    pub fn new(source: &'a dyn Source, name: &str, size: u64) -> Self {
        Self {
            source,
            name: name.to_owned(),
            size,
            pos: 0,
            window: Self::MIN_WINDOW,
            current: None,
        }
    }
}

impl Read for SeekableFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if buf.is_empty() || self.pos >= self.size {
                return Ok(0);
            }
            if self.current.is_none() {
                let end = self.size.min(self.pos.saturating_add(self.window));
                let reader = self
                    .source
                    .open_range(&self.name, self.pos, end)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                self.current = Some((reader, end));
            }
            let (reader, end) = self.current.as_mut().expect("opened above");
            let n = reader.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos < *end {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: ended at byte {} of {}",
                        self.source.display_name(&self.name),
                        self.pos,
                        self.size
                    ),
                ));
            }
            // The window is used up: continue with a larger one.
            self.current = None;
            self.window = (self.window * 2).min(Self::MAX_WINDOW);
        }
    }
}

impl Seek for SeekableFile<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        if target != self.pos {
            self.current = None;
            self.window = Self::MIN_WINDOW;
            self.pos = target;
        }
        Ok(self.pos)
    }
}

/// A source that cannot be listed or read; the message names the path and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SourceError {
    /// The file or directory at fault.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SourceError {
    fn io(path: &Path, e: &io::Error) -> Self {
        Self {
            path: path.display().to_string(),
            problem: e.to_string(),
        }
    }

    fn new(path: &Path, problem: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            problem: problem.into(),
        }
    }
}

/// Where a model is, parsed from the command line or a ModelAttestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory or file (`file:///PATH`, a plain path, a mounted PVC).
    Local(PathBuf),
    /// `s3://BUCKET/PREFIX`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key prefix (may be empty).
        prefix: String,
    },
    /// `gs://BUCKET/PREFIX`.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object name prefix (may be empty).
        prefix: String,
    },
}

impl Location {
    /// Parses `file:///PATH`, `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX` or a plain path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a file URI must be absolute, file:///PATH"));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        for (scheme, gcs) in [("s3://", false), ("gs://", true)] {
            if let Some(rest) = s.strip_prefix(scheme) {
                if !lotabots_crds::model_attestation::is_source_uri(s) {
                    return Err(format!("{s:?} is not {scheme}BUCKET/PREFIX"));
                }
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
                return Ok(if gcs {
                    Self::Gcs { bucket, prefix }
                } else {
                    Self::S3 { bucket, prefix }
                });
            }
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: unsupported scheme; use a path, file:///PATH, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"
            ));
        }
        if s.is_empty() {
            return Err("the model location is empty".into());
        }
        Ok(Self::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
        }
    }
}

/// A model on a local filesystem: a directory (every regular file below it) or a single
/// file (then the model has exactly that file, named by its file name).
#[derive(Debug, Clone)]
pub struct LocalSource {
    root: PathBuf,
    single_file: bool,
}

impl LocalSource {
    /// Opens a local model; fails when `root` is neither a directory nor a regular file.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|e| SourceError::io(&root, &e))?;
        if !(meta.is_dir() || meta.is_file()) {
            return Err(SourceError::new(
                &root,
                "is neither a directory nor a regular file",
            ));
        }
        Ok(Self {
            single_file: meta.is_file(),
            root,
        })
    }

    /// The model's root directory or file.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the model is a single file rather than a directory.
    pub fn is_single_file(&self) -> bool {
        self.single_file
    }

    /// `path` relative to the model root, `/`-separated, when it lies inside the model
    /// directory (used to leave a signature inside the model out of the manifest).
    pub fn relative_name(&self, path: &Path) -> Option<String> {
        if self.single_file {
            return None;
        }
        // Canonical paths, so that `..` and symbolic links in either cannot hide that the
        // file is inside; plain absolute paths for a file that does not exist (yet).
        let resolve = |p: &Path| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .ok()
        };
        let root = resolve(&self.root)?;
        let path = resolve(path)?;
        let rel = path.strip_prefix(&root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?),
                Component::CurDir => {}
                _ => return None,
            }
        }
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, SourceError> {
        if self.single_file {
            return if Some(name) == self.single_name().as_deref() {
                Ok(self.root.clone())
            } else {
                Err(SourceError::new(
                    &self.root,
                    format!("has no file {name:?}"),
                ))
            };
        }
        let rel = Path::new(name);
        if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(SourceError::new(
                &self.root,
                format!("{name:?} is not a path inside the model"),
            ));
        }
        Ok(self.root.join(rel))
    }

    fn single_name(&self) -> Option<String> {
        self.root
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        opts: &WalkOptions,
        out: &mut Vec<SourceFile>,
    ) -> Result<(), SourceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| SourceError::io(dir, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SourceError::io(dir, &e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                SourceError::new(
                    &path,
                    "the file name is not valid UTF-8, which a manifest cannot record",
                )
            })?;
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            if opts.ignore.is_ignored(&rel) {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| SourceError::io(&path, &e))?;
            if file_type.is_dir() {
                self.walk(&path, &rel, opts, out)?;
            } else if file_type.is_file() {
                let meta = entry.metadata().map_err(|e| SourceError::io(&path, &e))?;
                out.push(SourceFile {
                    name: rel,
                    size: meta.len(),
                });
            } else if file_type.is_symlink() {
                if !opts.allow_symlinks {
                    return Err(SourceError::new(
                        &path,
                        "is a symbolic link; links are rejected unless symlinks are allowed",
                    ));
                }
                // As model_signing: a link to a file is hashed as its target; a link to a
                // directory is not descended into (which also rules out link loops).
                let meta = std::fs::metadata(&path).map_err(|e| {
                    SourceError::new(&path, format!("is a broken symbolic link: {e}"))
                })?;
                if meta.is_file() {
                    out.push(SourceFile {
                        name: rel,
                        size: meta.len(),
                    });
                } else if !meta.is_dir() {
                    return Err(SourceError::new(
                        &path,
                        "links to something that is neither a file nor a directory",
                    ));
                }
            } else {
                return Err(SourceError::new(
                    &path,
                    "is neither a regular file nor a directory (socket, pipe or device)",
                ));
            }
        }
        Ok(())
    }
}

impl Source for LocalSource {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn model_name(&self) -> String {
        let name = self.root.file_name().map(ToOwned::to_owned).or_else(|| {
            // `.` or `..`: name the directory they resolve to, as model_signing does.
            std::fs::canonicalize(&self.root)
                .ok()
                .and_then(|p| p.file_name().map(ToOwned::to_owned))
        });
        name.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn list(&self, opts: &WalkOptions) -> Result<Vec<SourceFile>, SourceError> {
        if self.single_file {
            let name = self
                .single_name()
                .ok_or_else(|| SourceError::new(&self.root, "the file name is not valid UTF-8"))?;
            let meta =
                std::fs::metadata(&self.root).map_err(|e| SourceError::io(&self.root, &e))?;
            return Ok(vec![SourceFile {
                name,
                size: meta.len(),
            }]);
        }
        let link =
            std::fs::symlink_metadata(&self.root).map_err(|e| SourceError::io(&self.root, &e))?;
        if link.file_type().is_symlink() && !opts.allow_symlinks {
            return Err(SourceError::new(
                &self.root,
                "is a symbolic link; links are rejected unless symlinks are allowed",
            ));
        }
        let mut out = Vec::new();
        self.walk(&self.root, "", opts, &mut out)?;
        Ok(out)
    }

    fn open_range(
        &self,
        name: &str,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let path = self.path_of(name)?;
        let mut file = File::open(&path).map_err(|e| SourceError::io(&path, &e))?;
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .map_err(|e| SourceError::io(&path, &e))?;
        }
        Ok(Box::new(file.take(end.saturating_sub(start))))
    }

    fn is_single_file(&self) -> bool {
        self.single_file
    }

    fn local(&self) -> Option<&LocalSource> {
        Some(self)
    }

    fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let path = self.path_of(name)?;
        read_bounded(&path, max)
    }

    fn display_name(&self, name: &str) -> String {
        self.path_of(name)
            .map_or_else(|_| name.to_owned(), |p| p.display().to_string())
    }
}

/// The file at `path` when it is at most `max` bytes; `Ok(None)` when it does not exist.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io(path, &e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError::io(path, &e))?;
    if bytes.len() as u64 > max {
        return Err(SourceError::new(path, format!("larger than {max} bytes")));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("file:///models/x").unwrap(),
            Location::Local("/models/x".into())
        );
        assert_eq!(
            Location::parse("./m").unwrap(),
            Location::Local("./m".into())
        );
        assert_eq!(
            Location::parse("s3://models/llama/").unwrap(),
            Location::S3 {
                bucket: "models".into(),
                prefix: "llama/".into()
            }
        );
        assert_eq!(
            Location::parse("gs://bkt").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        for bad in ["file://rel", "https://x/y", "s3://Bad", ""] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn walk_names_files_and_rejects_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("a/b/c.bin"), b"xyz").unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), b"ref").unwrap();
        std::fs::write(dir.path().join("top"), b"").unwrap();
        let src = LocalSource::new(dir.path()).unwrap();
        let opts = WalkOptions {
            allow_symlinks: false,
            ignore: IgnoreSet::with_defaults(std::iter::empty::<&str>()).unwrap(),
        };
        let mut files = src.list(&opts).unwrap();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(names, [("a/b/c.bin", 3), ("top", 0)]);

        std::os::unix::fs::symlink("top", dir.path().join("link")).unwrap();
        let err = src.list(&opts).unwrap_err();
        assert!(err.path.ends_with("link"), "{err}");
        assert!(err.problem.contains("symbolic link"), "{err}");
        let allowed = WalkOptions {
            allow_symlinks: true,
            ..opts
        };
        assert_eq!(src.list(&allowed).unwrap().len(), 3);

        let mut r = src.open_range("a/b/c.bin", 1, 3).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "yz");
        assert!(src.open_range("../etc/passwd", 0, 1).is_err());
    }

    /// A source that counts its range requests, over a local file.
    #[derive(Debug)]
    struct Counting {
        inner: LocalSource,
        requests: std::sync::Mutex<Vec<(u64, u64)>>,
    }

    impl Source for Counting {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn model_name(&self) -> String {
            self.inner.model_name()
        }
        fn list(&self, opts: &WalkOptions) -> Result<Vec<SourceFile>, SourceError> {
            self.inner.list(opts)
        }
        fn open_range(
            &self,
            name: &str,
            start: u64,
            end: u64,
        ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
            self.requests.lock().unwrap().push((start, end));
            self.inner.open_range(name, start, end)
        }
        fn read_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
            self.inner.read_small(name, max)
        }
    }

    #[test]
    fn seekable_files_read_in_growing_windows_and_restart_after_a_seek() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("w.bin"), &data).unwrap();
        let src = Counting {
            inner: LocalSource::new(dir.path()).unwrap(),
            requests: Default::default(),
        };
        let size = data.len() as u64;
        let mut f = SeekableFile::new(&src, "w.bin", size);
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        let mib = 1 << 20;
        assert_eq!(
            *src.requests.lock().unwrap(),
            [(0, mib), (mib, 3 * mib), (3 * mib, size)],
            "1 MiB, then 2 MiB, then the rest"
        );

        src.requests.lock().unwrap().clear();
        let mut tail = [0u8; 4];
        f.seek(SeekFrom::End(-4)).unwrap();
        f.read_exact(&mut tail).unwrap();
        assert_eq!(tail, data[data.len() - 4..]);
        f.seek(SeekFrom::Start(10)).unwrap();
        f.read_exact(&mut tail).unwrap();
        assert_eq!(tail, data[10..14]);
        assert_eq!(
            *src.requests.lock().unwrap(),
            [(size - 4, size), (10, 10 + mib)]
        );
        assert!(f.seek(SeekFrom::Current(-100)).is_err());

        // A file shorter than listed is an error naming it, not a silent end.
        let mut short = SeekableFile::new(&src, "w.bin", size + 10);
        short.seek(SeekFrom::Start(size - 2)).unwrap();
        let err = short.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("w.bin"), "{err}");
    }

    #[test]
    fn relative_names_see_through_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("model.sig"), b"{}").unwrap();
        let src = LocalSource::new(&model).unwrap();
        let sneaky = model.join("sub/../model.sig");
        assert_eq!(src.relative_name(&sneaky).as_deref(), Some("model.sig"));
        assert_eq!(
            src.relative_name(&model.join("sub/new.sig")).as_deref(),
            Some("sub/new.sig")
        );
        assert_eq!(src.relative_name(&dir.path().join("outside.sig")), None);
        assert_eq!(src.relative_name(&model), None);
    }
}
