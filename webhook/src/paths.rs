//! Host paths compared by whole segments.
//!
//! A textual `startsWith` lets `/foo` allow `/fool` and lets `/data/../etc` through; here a
//! path is first normalised (`.` dropped, `..` resolved, repeated and trailing slashes
//! collapsed) and then compared segment by segment.

use std::fmt;

/// An absolute host path in normal form: a leading `/`, no empty, `.` or `..` segments,
/// no trailing slash (except the root itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPath(String);

/// Why a string is not an absolute host path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty string.
    #[error("is empty")]
    Empty,
    /// Does not start with `/`.
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(String),
    /// Contains a NUL byte, which no kernel path can.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

impl HostPath {
    /// Normalises `raw`: `.` segments dropped, `..` resolved (never above the root), repeated
    /// and trailing slashes collapsed.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.to_string()));
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute(raw.to_string()));
        }
        let mut segs: Vec<&str> = Vec::new();
        for seg in raw.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segs.pop();
                }
                s => segs.push(s),
            }
        }
        let mut out = String::with_capacity(raw.len());
        for s in &segs {
            out.push('/');
            out.push_str(s);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(Self(out))
    }

    /// The normal form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Whether `self` is `base` or lies below it, by whole segments: `/foo/bar` is within
    /// `/foo`, `/fool` is not.
    pub fn is_within(&self, base: &HostPath) -> bool {
        if base.is_root() {
            return true;
        }
        match self.0.strip_prefix(base.0.as_str()) {
            Some("") => true,
            Some(rest) => rest.starts_with('/'),
            None => false,
        }
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPath {
        HostPath::parse(s).unwrap()
    }

    #[test]
    fn normalises() {
        let cases = [
            ("/", "/"),
            ("//", "/"),
            ("/.", "/"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/foo/", "/foo"),
            ("/foo//bar///", "/foo/bar"),
            ("/foo/./bar", "/foo/bar"),
            ("/foo/../bar", "/bar"),
            ("/data/../../etc", "/etc"),
            ("/var/run/../run/docker.sock", "/var/run/docker.sock"),
            ("/a/b/c/../../d", "/a/d"),
            ("/.hidden/..x", "/.hidden/..x"),
        ];
        for (raw, want) in cases {
            assert_eq!(p(raw).as_str(), want, "{raw}");
        }
    }

    #[test]
    fn rejects_non_absolute() {
        assert_eq!(HostPath::parse(""), Err(PathError::Empty));
        assert!(matches!(
            HostPath::parse("var/log"),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            HostPath::parse("C:\\data"),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(HostPath::parse("/a\0b"), Err(PathError::Nul(_))));
    }

    #[test]
    fn within_by_whole_segments() {
        let cases = [
            ("/foo", "/foo", true),
            ("/foo/bar", "/foo", true),
            ("/foo/", "/foo", true),
            ("/fool", "/foo", false),
            ("/foo.bak", "/foo", false),
            ("/fo", "/foo", false),
            ("/", "/foo", false),
            ("/anything", "/", true),
            ("/", "/", true),
            ("/foo/../fool", "/foo", false),
            ("/foo/./bar/..", "/foo", true),
            ("/var/run/docker.sock", "/var/run", true),
            ("/var/running", "/var/run", false),
        ];
        for (path, base, want) in cases {
            assert_eq!(p(path).is_within(&p(base)), want, "{path} within {base}");
        }
    }
}
