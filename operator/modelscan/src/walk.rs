//! Scanning files and directory trees: detection, dispatch to the format scanners, and
//! the files in parallel.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, Read, Seek},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use crate::{
    FileReport, FindingKind, Format, Issue, ScanLimits, ScanReport, archive,
    detect::{self, HEAD, Kind},
    gguf, pickle, safetensors, text,
};

/// Why a scan could not start. Problems with a single file's content are findings in its
/// [`FileReport`], never errors.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The path is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The tree has more files, or deeper directories, than the limits allow.
    #[error("{path}: {what}")]
    TooLarge {
        /// The directory.
        path: PathBuf,
        /// Which limit.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Scans one file; its report's path is the file name.
pub fn scan_file(path: &Path, limits: &ScanLimits) -> Result<FileReport, ScanError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let name = path
        .file_name()
        .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
        .into_owned();
    Ok(scan_entry(path, name, &meta, limits))
}

/// Scans a file, or every file under a directory (symbolic links are reported, not
/// followed), in parallel on the available cores. Reports are sorted by path.
pub fn scan_path(path: &Path, limits: &ScanLimits) -> Result<ScanReport, ScanError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Ok(ScanReport::from_files(vec![scan_file(path, limits)?]));
    }
    let mut entries = Vec::new();
    collect(path, "", 0, limits, &mut entries)?;
    let next = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::with_capacity(entries.len()));
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(entries.len().max(1));
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((full, rel, meta)) = entries.get(i) else {
                        break;
                    };
                    let report = scan_entry(full, rel.clone(), meta, limits);
                    reports
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(report);
                }
            });
        }
    });
    let reports = reports
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(ScanReport::from_files(reports))
}

/// Lists every non-directory entry under `dir`, with its `/`-separated relative path.
fn collect(
    dir: &Path,
    prefix: &str,
    depth: usize,
    limits: &ScanLimits,
    out: &mut Vec<(PathBuf, String, fs::Metadata)>,
) -> Result<(), ScanError> {
    if depth > limits.max_depth {
        return Err(ScanError::TooLarge {
            path: dir.to_owned(),
            what: format!("directories nested deeper than {}", limits.max_depth),
        });
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let full = entry.path();
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if meta.is_dir() {
            collect(&full, &format!("{rel}/"), depth + 1, limits, out)?;
        } else {
            if out.len() >= limits.max_files {
                return Err(ScanError::TooLarge {
                    path: dir.to_owned(),
                    what: format!("more than {} files", limits.max_files),
                });
            }
            out.push((full, rel, meta));
        }
    }
    Ok(())
}

fn not_scanned(rel: String, size: u64, format: Format, msg: impl Into<String>) -> FileReport {
    FileReport::new(
        rel,
        size,
        format,
        vec![Issue::new(FindingKind::NotScanned, None, msg)],
        BTreeSet::new(),
    )
}

fn scan_entry(path: &Path, rel: String, meta: &fs::Metadata, limits: &ScanLimits) -> FileReport {
    let size = meta.len();
    if meta.file_type().is_symlink() {
        return not_scanned(rel, size, Format::Unknown, "symbolic link, not followed");
    }
    if !meta.is_file() {
        return not_scanned(rel, size, Format::Unknown, "not a regular file");
    }
    match scan_regular(path, rel.clone(), size, limits) {
        Ok(report) => report,
        Err(e) => not_scanned(rel, size, Format::Unknown, format!("unreadable: {e}")),
    }
}

fn scan_regular(
    path: &Path,
    rel: String,
    size: u64,
    limits: &ScanLimits,
) -> io::Result<FileReport> {
    scan_opened(path, rel, size, || File::open(path), limits)
}

/// Scans one file that is not on a local filesystem (an object in a bucket): `name` is
/// its model-relative path (its extension counts, as a file name's does), `size` its
/// length, and `open` gives a fresh reader from its first byte on each call (archives
/// seek; the other formats read straight through). A file `open` cannot read is reported
/// as not scanned, never as safe.
pub fn scan_reader<R, F>(name: &str, size: u64, open: F, limits: &ScanLimits) -> FileReport
where
    R: Read + Seek,
    F: Fn() -> io::Result<R>,
{
    scan_opened(Path::new(name), name.to_owned(), size, open, limits).unwrap_or_else(|e| {
        not_scanned(
            name.to_owned(),
            size,
            Format::Unknown,
            format!("unreadable: {e}"),
        )
    })
}

fn scan_opened<R, F>(
    path: &Path,
    rel: String,
    size: u64,
    reopen: F,
    limits: &ScanLimits,
) -> io::Result<FileReport>
where
    R: Read + Seek,
    F: Fn() -> io::Result<R>,
{
    let mut head = Vec::with_capacity(HEAD);
    reopen()?.take(HEAD as u64).read_to_end(&mut head)?;
    let mut globals = BTreeSet::new();
    let (format, issues) = match detect::detect(path, &head, size) {
        Kind::Zip => {
            let scan = archive::scan_zip(reopen()?, limits);
            globals = scan.globals;
            (scan.format, scan.issues)
        }
        Kind::Pickle => {
            let scan = pickle::scan_pickle(reopen()?, limits);
            globals = scan.globals;
            (Format::Pickle, scan.issues)
        }
        Kind::Safetensors => (
            Format::Safetensors,
            safetensors::scan_safetensors(reopen()?, size, limits),
        ),
        Kind::Gguf => (Format::Gguf, gguf::scan_gguf(reopen()?, size, limits)),
        Kind::Onnx => (
            Format::Onnx,
            vec![Issue::new(
                FindingKind::NotScanned,
                None,
                "ONNX graphs are recognised but not analysed",
            )],
        ),
        Kind::Json => {
            let issue = text::check_json(reopen()?);
            (Format::Json, issue.into_iter().collect())
        }
        Kind::Code => (
            Format::Code,
            vec![Issue::new(
                FindingKind::NotScanned,
                None,
                "code that a loader may execute (e.g. with trust_remote_code); not analysed",
            )],
        ),
        Kind::Other => {
            // Protocol 0 and 1 pickles have no magic, and protocol 0 is plain ASCII: a
            // loader that unpickles `pytorch_model.bin` runs it whatever its name. So a
            // file that walks as a pickle far enough to import something is one.
            let scan = pickle::scan_pickle(reopen()?, limits);
            if scan.pickles > 0
                || !scan.globals.is_empty()
                || scan
                    .issues
                    .iter()
                    .any(|i| i.kind == FindingKind::UnresolvedImport)
            {
                globals = scan.globals;
                (Format::Pickle, scan.issues)
            } else if text::is_text(reopen()?)? {
                (Format::Text, Vec::new())
            } else {
                unknown()
            }
        }
    };
    Ok(FileReport::new(rel, size, format, issues, globals))
}

fn unknown() -> (Format, Vec<Issue>) {
    (
        Format::Unknown,
        vec![Issue::new(
            FindingKind::NotScanned,
            None,
            "unknown format, not analysed",
        )],
    )
}
