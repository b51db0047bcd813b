//! Zip archives, as `torch.save` writes them: `ARCHIVE/data.pkl` (the pickle), raw
//! storages under `ARCHIVE/data/`, and small records (`version`, `byteorder`).
//!
//! Every entry's name, type and sizes are checked from the central directory before anything
//! is decompressed; then every pickle member (`*.pkl`) is walked through a reader bounded by
//! its declared size. Storages are not read: they are data, and the manifest hashes them.

use std::{
    collections::BTreeSet,
    io::{self, Read, Seek, SeekFrom},
};

use zip::{CompressionMethod, ZipArchive};

use crate::{FindingKind, Format, Issue, ScanLimits, pickle};

/// What the archive scan found.
pub(crate) struct ArchiveScan {
    pub format: Format,
    pub issues: Vec<Issue>,
    pub globals: BTreeSet<String>,
}

/// Whether an archive member name could escape the directory it is extracted to, or means
/// different things on different systems.
fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.starts_with('/') || name.starts_with('\\') {
        Some("is an absolute path")
    } else if name.contains('\\') {
        Some("contains a backslash")
    } else if name.as_bytes().get(1) == Some(&b':') {
        Some("starts with a drive letter")
    } else if name.split('/').any(|c| c == "..") {
        Some("has a '..' component")
    } else {
        None
    }
}

fn entry_issue(kind: FindingKind, name: &str, msg: impl Into<String>) -> Issue {
    Issue::new(kind, None, msg).in_member(name)
}

/// Longest End Of Central Directory record: 22 bytes and a comment of up to 64 KiB.
const MAX_EOCD: u64 = 22 + 0xffff;
/// Smallest central-directory record (no name, extra field or comment).
const MIN_CD_RECORD: u64 = 46;

/// The entry count the End Of Central Directory record (or its zip64 successor) declares.
///
/// The zip crate parses the whole central directory into memory when it opens an archive,
/// a few hundred bytes per entry; reading the declared count first keeps a hostile archive
/// of millions of empty entries from costing gigabytes before the limit applies.
fn declared_entries<R: Read + Seek>(reader: &mut R) -> io::Result<Option<u64>> {
    let len = reader.seek(SeekFrom::End(0))?;
    let tail_len = len.min(MAX_EOCD);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0; tail_len as usize];
    reader.read_exact(&mut tail)?;
    let Some(eocd) = tail.windows(4).rposition(|w| w == b"PK\x05\x06") else {
        return Ok(None);
    };
    let Some(record) = tail.get(eocd..eocd + 22) else {
        return Ok(None);
    };
    let entries = u16::from_le_bytes([record[10], record[11]]);
    if entries != 0xffff {
        return Ok(Some(u64::from(entries)));
    }
    // zip64: the locator sits right before the EOCD and points at the zip64 record.
    let Some(locator) = eocd.checked_sub(20).and_then(|at| tail.get(at..at + 20)) else {
        return Ok(None);
    };
    if &locator[..4] != b"PK\x06\x07" {
        return Ok(None);
    }
    let at = u64::from_le_bytes(locator[8..16].try_into().unwrap_or_default());
    let mut record = [0; 56];
    reader.seek(SeekFrom::Start(at))?;
    reader.read_exact(&mut record)?;
    if &record[..4] != b"PK\x06\x06" {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        record[32..40].try_into().unwrap_or_default(),
    )))
}

pub(crate) fn scan_zip<R: Read + Seek>(mut reader: R, limits: &ScanLimits) -> ArchiveScan {
    let mut out = ArchiveScan {
        format: Format::Unknown,
        issues: Vec::new(),
        globals: BTreeSet::new(),
    };
    let file_len = reader.seek(SeekFrom::End(0)).unwrap_or(0);
    let too_many = |n: u64| {
        Issue::new(
            FindingKind::LimitExceeded,
            None,
            format!(
                "zip archive has {n} entries, more than the limit of {}",
                limits.archive_max_entries
            ),
        )
    };
    match declared_entries(&mut reader) {
        Ok(Some(n)) if n > limits.archive_max_entries as u64 => {
            out.issues.push(too_many(n));
            return out;
        }
        Ok(Some(n)) if n > file_len / MIN_CD_RECORD => {
            out.issues.push(Issue::new(
                FindingKind::Malformed,
                None,
                format!(
                    "zip archive declares {n} entries, more than its {file_len} bytes can hold"
                ),
            ));
            return out;
        }
        // No readable end record: the zip crate reports it below.
        Ok(_) => {}
        Err(e) => {
            out.issues.push(Issue::new(
                FindingKind::Malformed,
                None,
                format!("invalid zip archive: {e}"),
            ));
            return out;
        }
    }
    let mut archive = match ZipArchive::new(reader) {
        Ok(a) => a,
        Err(e) => {
            out.issues.push(Issue::new(
                FindingKind::Malformed,
                None,
                format!("invalid zip archive: {e}"),
            ));
            return out;
        }
    };
    if archive.len() > limits.archive_max_entries {
        out.issues.push(too_many(archive.len() as u64));
        return out;
    }
    let pickles = match check_entries(&mut archive, limits, &mut out.issues) {
        Some(p) => p,
        None => return out,
    };
    if pickles
        .iter()
        .any(|(_, name)| name == "data.pkl" || name.ends_with("/data.pkl"))
    {
        out.format = Format::Pytorch;
    } else {
        out.issues.push(Issue::new(
            FindingKind::NotScanned,
            None,
            "zip archive without a data.pkl: not a PyTorch archive, its other members are not analysed",
        ));
    }
    for (index, name) in pickles {
        scan_member(&mut archive, index, &name, limits, &mut out);
    }
    out
}

/// Checks every entry from its central-directory record. Returns the pickle members to
/// walk, or `None` when the archive must not be opened further (a zip bomb).
fn check_entries<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    limits: &ScanLimits,
    issues: &mut Vec<Issue>,
) -> Option<Vec<(usize, String)>> {
    let mut total: u64 = 0;
    let mut pickles = Vec::new();
    for i in 0..archive.len() {
        let entry = match archive.by_index_raw(i) {
            Ok(e) => e,
            Err(e) => {
                issues.push(Issue::new(
                    FindingKind::Malformed,
                    None,
                    format!("zip entry {i} is unreadable: {e}"),
                ));
                return None;
            }
        };
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if let Some(why) = unsafe_name(&name) {
            issues.push(entry_issue(
                FindingKind::UnsafeArchiveEntry,
                &name,
                format!("entry name {name:?} {why}"),
            ));
            continue;
        }
        if entry.is_symlink() {
            issues.push(entry_issue(
                FindingKind::UnsafeArchiveEntry,
                &name,
                "entry is a symbolic link",
            ));
            continue;
        }
        if entry.encrypted() {
            issues.push(entry_issue(
                FindingKind::UnsafeArchiveEntry,
                &name,
                "entry is encrypted and cannot be checked",
            ));
            continue;
        }
        if entry.is_dir() {
            continue;
        }
        let (size, packed) = (entry.size(), entry.compressed_size());
        total = total.saturating_add(size);
        if total > limits.archive_max_total {
            issues.push(Issue::new(
                FindingKind::LimitExceeded,
                None,
                format!(
                    "zip entries uncompress to more than {} bytes (zip bomb?)",
                    limits.archive_max_total
                ),
            ));
            return None;
        }
        match entry.compression() {
            CompressionMethod::Stored => {}
            CompressionMethod::Deflated => {
                // A few KiB may compress well for real; beyond that a high ratio is a bomb.
                if size > 64 << 10 && size / packed.max(1) > limits.archive_max_ratio {
                    issues.push(entry_issue(
                        FindingKind::LimitExceeded,
                        &name,
                        format!(
                            "entry expands {packed} bytes to {size}, a ratio above {} (zip bomb?)",
                            limits.archive_max_ratio
                        ),
                    ));
                    return None;
                }
            }
            other => {
                issues.push(entry_issue(
                    FindingKind::NotScanned,
                    &name,
                    format!("compression method {other:?} is not supported"),
                ));
                continue;
            }
        }
        if name.ends_with(".pkl") {
            pickles.push((i, name));
        } else if name.ends_with(".py") {
            // TorchScript archives carry their model as code (`ARCHIVE/code/*.py`), which
            // `torch.jit.load` compiles and runs.
            issues.push(entry_issue(
                FindingKind::NotScanned,
                &name,
                "TorchScript code, which torch.jit.load runs; not analysed",
            ));
        }
    }
    Some(pickles)
}

/// A reader that fails once more than `left` bytes come through: the declared size is
/// what the limits were checked against, so a member that inflates beyond it is refused.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "entry inflates beyond its declared size",
            )
        })?;
        Ok(n)
    }
}

fn scan_member<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    index: usize,
    name: &str,
    limits: &ScanLimits,
    out: &mut ArchiveScan,
) {
    let member = match archive.by_index(index) {
        Ok(m) => m,
        Err(e) => {
            out.issues.push(entry_issue(
                FindingKind::Malformed,
                name,
                format!("cannot open the pickle: {e}"),
            ));
            return;
        }
    };
    if member.size() > limits.archive_max_pickle {
        out.issues.push(entry_issue(
            FindingKind::LimitExceeded,
            name,
            format!(
                "pickle of {} bytes exceeds the limit of {}",
                member.size(),
                limits.archive_max_pickle
            ),
        ));
        return;
    }
    let left = member.size();
    let scan = pickle::scan_pickle(
        Bounded {
            inner: member,
            left,
        },
        limits,
    );
    out.globals.extend(scan.globals);
    out.issues
        .extend(scan.issues.into_iter().map(|i| i.in_member(name)));
}

#[cfg(test)]
mod tests {
    use super::unsafe_name;

    #[test]
    fn traversal_names() {
        for bad in [
            "../evil",
            "a/../../b",
            "/etc/passwd",
            "\\x",
            "a\\..\\b",
            "C:x",
            "a\0b",
        ] {
            assert!(unsafe_name(bad).is_some(), "{bad:?}");
        }
        for ok in [
            "archive/data.pkl",
            "archive/data/0",
            "a..b/c",
            ".data/version",
        ] {
            assert!(unsafe_name(ok).is_none(), "{ok:?}");
        }
    }
}
