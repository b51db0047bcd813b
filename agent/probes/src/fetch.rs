//! Fetch mode: the probe pod has no model volume (its NetworkPolicy lets it reach only the
//! operator), so it fetches the suite and the model's files from the operator's API
//! (`crds::workload::MODEL_PATH`) into its scratch volume before anything else.
//!
//! Nothing fetched is trusted. The suite is refused unless it hashes to the suite digest
//! the launcher passed; the file list is untrusted input that decides where files are
//! written, so every path in it is checked (relative, no `..`, nothing that could escape
//! or alias the model directory) and the whole list refused for one bad entry, before any
//! download; each file must be exactly its listed size. The real guard comes after: the
//! runner hashes the files against the attested manifest digest before loading them, as
//! for a mounted model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lotabots_crds::workload::{MODEL_PATH, ModelFiles};
use lotabots_operator_client::{Client, GetError, Retry};

use crate::integrity::parse_manifest_digest;
use crate::suite::{self, MAX_SUITE_BYTES};

/// The most a model may weigh, whatever space there is (a list claiming more is refused
/// before anything is downloaded).
pub const MAX_MODEL_BYTES: u64 = 1 << 40;
/// The most files a model may have.
pub const MAX_FILES: usize = 100_000;
/// The largest file list read.
pub const MAX_LIST_BYTES: u64 = 16 << 20;

/// What to fetch, and where to.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    /// The workload request id: `{id}` in the operator's paths.
    pub request_id: String,
    /// Where the suite is written.
    pub suite: PathBuf,
    /// Where the model's files are written (absent or empty).
    pub model_dir: PathBuf,
    /// The suite digest the launcher passed, `sha256:HEX`.
    pub suite_digest: String,
    /// The attested manifest digest, `sha256:HEX`: the list must name it.
    pub manifest_digest: String,
    /// How patiently each request is retried.
    pub retry: Retry,
}

/// What was fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The suite's bytes (checked against the suite digest).
    pub suite: Vec<u8>,
    /// Model files downloaded.
    pub files: usize,
    /// Bytes of model files downloaded.
    pub bytes: u64,
    /// How long fetching took, suite and list included.
    pub elapsed: Duration,
}

impl Fetched {
    /// The `--report` line.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "fetch ({} files, {:.1} MB): {:.3} s = {:.1} MB/s",
            self.files,
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.bytes as f64 / 1e6 / secs,
        )
    }
}

/// Why the suite or the model could not be fetched, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The operator did not serve it.
    #[error("fetching {what}: {source}")]
    Operator {
        /// The suite, the file list, or a file.
        what: String,
        /// Why.
        source: GetError,
    },
    /// The suite served is not the one the launcher named.
    #[error(
        "suite refused: the suite served hashes to {found}, not to the expected suite digest {expected}"
    )]
    SuiteDigest {
        /// The digest passed by the launcher.
        expected: String,
        /// The digest of the bytes served.
        found: String,
    },
    /// The file list is refused as a whole.
    #[error("model refused: the operator's file list is unusable: {0}")]
    List(String),
    /// A file is not its listed size.
    #[error("model refused: file {path}: {got} bytes served, {listed} listed")]
    Size {
        /// The file.
        path: String,
        /// Its listed size.
        listed: u64,
        /// What came.
        got: u64,
    },
    /// Writing locally failed.
    #[error("{path}: {problem}")]
    Local {
        /// The file or folder.
        path: String,
        /// Why.
        problem: String,
    },
}

fn local(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Local {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// Fetches the suite (refused unless it hashes to `plan.suite_digest`, then written to
/// `plan.suite`) and the model's files into `plan.model_dir` (after the file list passed
/// [`check_list`] and fits in the space there is); returns what was fetched.
pub async fn fetch(client: &Client, plan: &FetchPlan) -> Result<Fetched, FetchError> {
    let began = Instant::now();
    let base = format!("{MODEL_PATH}/{}", encode_path(&plan.request_id));
    let operator = |what: &str| {
        let what = what.to_owned();
        move |source| FetchError::Operator { what, source }
    };

    let suite = client
        .get_bytes(&format!("{base}/suite"), MAX_SUITE_BYTES as u64, plan.retry)
        .await
        .map_err(operator("the suite"))?;
    let found = suite::digest_of(&suite);
    if found != plan.suite_digest {
        return Err(FetchError::SuiteDigest {
            expected: plan.suite_digest.clone(),
            found,
        });
    }
    if let Some(parent) = plan.suite.parent() {
        std::fs::create_dir_all(parent).map_err(local(parent))?;
    }
    std::fs::write(&plan.suite, &suite).map_err(local(&plan.suite))?;

    let list = client
        .get_bytes(&format!("{base}/files"), MAX_LIST_BYTES, plan.retry)
        .await
        .map_err(operator("the file list"))?;
    let list: ModelFiles = serde_json::from_slice(&list)
        .map_err(|e| FetchError::List(format!("not a ModelFiles document: {e}")))?;
    let bytes =
        check_list(&list, &plan.manifest_digest, MAX_MODEL_BYTES).map_err(FetchError::List)?;
    prepare_model_dir(&plan.model_dir)?;
    let room = free_space(&plan.model_dir).map_err(local(&plan.model_dir))?;
    if bytes > room {
        return Err(FetchError::Local {
            path: plan.model_dir.display().to_string(),
            problem: format!("the model's {bytes} bytes do not fit in the {room} bytes free"),
        });
    }

    for file in &list.files {
        let dest = plan.model_dir.join(&file.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(local(parent))?;
        }
        let got = client
            .download(
                &format!("{base}/files/{}", encode_path(&file.path)),
                &dest,
                file.size,
                plan.retry,
            )
            .await
            .map_err(operator(&format!("model file {}", file.path)))?;
        if got != file.size {
            return Err(FetchError::Size {
                path: file.path.clone(),
                listed: file.size,
                got,
            });
        }
    }
    Ok(Fetched {
        suite,
        files: list.files.len(),
        bytes,
        elapsed: began.elapsed(),
    })
}

/// Creates the model directory, which must hold nothing yet: the files fetched are to be
/// the only ones verified and loaded.
fn prepare_model_dir(dir: &Path) -> Result<(), FetchError> {
    std::fs::create_dir_all(dir).map_err(local(dir))?;
    let mut entries = std::fs::read_dir(dir).map_err(local(dir))?;
    if entries.next().is_some() {
        return Err(FetchError::Local {
            path: dir.display().to_string(),
            problem: "not empty: the fetched model must be alone in it".into(),
        });
    }
    Ok(())
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Checks the operator's file list: it names `manifest_digest`, every path is safe
/// ([`check_path`]) and listed once, no file is also a folder of another, there are at
/// most [`MAX_FILES`], and they weigh at most `room` bytes in all. Returns their total.
pub fn check_list(list: &ModelFiles, manifest_digest: &str, room: u64) -> Result<u64, String> {
    let listed = parse_manifest_digest(&list.manifest_digest)
        .map_err(|e| format!("its manifestDigest: {e}"))?;
    if listed != manifest_digest {
        return Err(format!(
            "it lists the files of manifest {listed}, not of the attested {manifest_digest}"
        ));
    }
    if list.files.is_empty() {
        return Err("it lists no file".into());
    }
    if list.files.len() > MAX_FILES {
        return Err(format!(
            "it lists {} files, more than {MAX_FILES}",
            list.files.len()
        ));
    }
    let mut paths = BTreeSet::new();
    let mut total = 0u64;
    for file in &list.files {
        check_path(&file.path).map_err(|why| format!("path {:?} {why}", file.path))?;
        if !paths.insert(file.path.as_str()) {
            return Err(format!("path {:?} is listed twice", file.path));
        }
        total = total.saturating_add(file.size);
    }
    for path in &paths {
        let mut folder = *path;
        while let Some((parent, _)) = folder.rsplit_once('/') {
            if paths.contains(parent) {
                return Err(format!(
                    "path {parent:?} is listed as a file and is the folder of {path:?}"
                ));
            }
            folder = parent;
        }
    }
    if total > room {
        return Err(format!(
            "its files weigh {total} bytes, more than the {room} bytes there is room for"
        ));
    }
    Ok(total)
}

/// Why a listed path cannot be written under the model directory as it is: it must be
/// relative and `/`-separated, every segment a plain name (not empty, `.` or `..`),
/// with no backslash, NUL or other control character.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    if path.contains('\\') {
        return Err("holds a backslash");
    }
    if path.contains('\0') {
        return Err("holds a NUL byte");
    }
    if path.chars().any(char::is_control) {
        return Err("holds a control character");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("has an empty segment"),
            "." => return Err("has a `.` segment"),
            ".." => return Err("has a `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// `path` with each `/`-separated segment percent-encoded (all but RFC 3986's
/// unreserved characters), the separators kept.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lotabots_crds::workload::ModelFile;

    use super::*;

    const DIGEST: &str = "sha256:8a36265b0b7aa0d00dce7ed1f5db75f01433046b4518e00f63248b2d0c866cb2";

    fn list(files: &[(&str, u64)]) -> ModelFiles {
        ModelFiles {
            manifest_digest: DIGEST.into(),
            files: files
                .iter()
                .map(|(path, size)| ModelFile {
                    path: (*path).into(),
                    size: *size,
                })
                .collect(),
        }
    }

    #[test]
    fn plain_relative_paths_pass() {
        for ok in [
            "config.json",
            "1_Pooling/config.json",
            "a/b/c.d",
            ".gitattributes",
            "..hidden",
            "a..b/x",
            "with space/ü.bin",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn paths_that_could_escape_or_alias_are_refused() {
        for (bad, why) in [
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("../x", "has a `..` segment"),
            ("a/../../x", "has a `..` segment"),
            ("a/..", "has a `..` segment"),
            ("./x", "has a `.` segment"),
            ("a/./x", "has a `.` segment"),
            ("a//x", "has an empty segment"),
            ("a/", "has an empty segment"),
            ("a\\..\\x", "holds a backslash"),
            ("a\0b", "holds a NUL byte"),
            ("a\nb", "holds a control character"),
        ] {
            assert_eq!(check_path(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn one_bad_entry_refuses_the_whole_list_naming_it() {
        let good = [("config.json", 10), ("1_Pooling/config.json", 5)];
        assert_eq!(check_list(&list(&good), DIGEST, 15), Ok(15));
        let mut files = good.to_vec();
        files.push(("../x", 1));
        assert_eq!(
            check_list(&list(&files), DIGEST, 100).unwrap_err(),
            "path \"../x\" has a `..` segment"
        );
        let twice = [("config.json", 10), ("config.json", 10)];
        assert_eq!(
            check_list(&list(&twice), DIGEST, 100).unwrap_err(),
            "path \"config.json\" is listed twice"
        );
        let both = [("a/b/c", 1), ("a/b", 1)];
        assert_eq!(
            check_list(&list(&both), DIGEST, 100).unwrap_err(),
            "path \"a/b\" is listed as a file and is the folder of \"a/b/c\""
        );
        assert_eq!(
            check_list(&list(&[]), DIGEST, 100).unwrap_err(),
            "it lists no file"
        );
    }

    #[test]
    fn the_list_must_fit_and_name_the_attested_manifest() {
        let e = check_list(&list(&[("a", 10), ("b", 6)]), DIGEST, 15).unwrap_err();
        assert_eq!(
            e,
            "its files weigh 16 bytes, more than the 15 bytes there is room for"
        );
        // Sizes that would overflow a sum are too big, not small.
        let e =
            check_list(&list(&[("a", u64::MAX), ("b", 2)]), DIGEST, MAX_MODEL_BYTES).unwrap_err();
        assert!(
            e.starts_with("its files weigh 18446744073709551615 bytes"),
            "{e}"
        );
        let other = format!("sha256:{}", "1".repeat(64));
        let e = check_list(&list(&[("a", 1)]), &other, 100).unwrap_err();
        assert_eq!(
            e,
            format!("it lists the files of manifest {DIGEST}, not of the attested {other}")
        );
        let mut bare = list(&[("a", 1)]);
        bare.manifest_digest = DIGEST.trim_start_matches("sha256:").to_uppercase();
        assert_eq!(check_list(&bare, DIGEST, 100), Ok(1));
        bare.manifest_digest = "sha256:zz".into();
        assert!(
            check_list(&bare, DIGEST, 100)
                .unwrap_err()
                .starts_with("its manifestDigest: manifest digest \"sha256:zz\"")
        );
    }

    #[test]
    fn segments_are_percent_encoded_and_separators_kept() {
        assert_eq!(
            encode_path("1_Pooling/config.json"),
            "1_Pooling/config.json"
        );
        assert_eq!(
            encode_path("with space/a?b#c%d/ü~x"),
            "with%20space/a%3Fb%23c%25d/%C3%BC~x"
        );
    }

    #[test]
    fn a_model_directory_must_be_absent_or_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("work/model");
        prepare_model_dir(&dir).unwrap();
        prepare_model_dir(&dir).unwrap();
        std::fs::write(dir.join("left-over"), b"x").unwrap();
        let e = prepare_model_dir(&dir).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("model: not empty: the fetched model must be alone in it"),
            "{e}"
        );
        assert!(free_space(&dir).unwrap() > 0);
    }
}
