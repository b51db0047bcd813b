//! Paths left out of a manifest: model_signing's default git paths, the signature file and
//! user-given paths, each matching itself and its whole subtree, relative to the model root.

use std::collections::BTreeSet;

/// The paths model_signing leaves out by default (top-level only).
pub const DEFAULT_IGNORED: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// A set of model-relative paths whose subtrees are excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreSet {
    paths: BTreeSet<String>,
}

impl IgnoreSet {
    /// The given paths plus [`DEFAULT_IGNORED`]; fails on a path that is absolute, has a
    /// `..` component or is empty.
    pub fn with_defaults<S: AsRef<str>>(
        paths: impl IntoIterator<Item = S>,
    ) -> Result<Self, String> {
        let mut set = Self::default();
        for p in DEFAULT_IGNORED {
            set.paths.insert(p.to_owned());
        }
        for p in paths {
            set.insert(p.as_ref())?;
        }
        Ok(set)
    }

    /// Adds one path, normalised (`./` and duplicate or trailing `/` dropped).
    pub fn insert(&mut self, path: &str) -> Result<(), String> {
        if path.starts_with('/') {
            return Err(format!(
                "ignore path {path:?} must be relative to the model root"
            ));
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        if parts.contains(&"..") {
            return Err(format!("ignore path {path:?} must not contain '..'"));
        }
        if parts.is_empty() {
            return Err(format!("ignore path {path:?} names the whole model"));
        }
        self.paths.insert(parts.join("/"));
        Ok(())
    }

    /// Whether `name` (a `/`-separated model-relative path) is one of the paths or lies
    /// below one.
    pub fn is_ignored(&self, name: &str) -> bool {
        self.paths.iter().any(|p| {
            name == p
                || name
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The paths, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_subtrees_only() {
        let set = IgnoreSet::with_defaults(["model.sig", "./cache/", "a//b"]).unwrap();
        for yes in [
            ".git",
            ".git/HEAD",
            "model.sig",
            "cache/x/y",
            "a/b",
            ".github/w.yml",
        ] {
            assert!(set.is_ignored(yes), "{yes}");
        }
        for no in ["sub/.git", ".gitx", "model.sig2", "cachex", "a", "a/bc"] {
            assert!(!set.is_ignored(no), "{no}");
        }
        assert_eq!(
            set.paths().collect::<Vec<_>>(),
            [
                ".git",
                ".gitattributes",
                ".github",
                ".gitignore",
                "a/b",
                "cache",
                "model.sig"
            ]
        );
    }

    #[test]
    fn rejects_escaping_paths() {
        for bad in ["/etc", "../x", "a/../../b", "", "./"] {
            assert!(IgnoreSet::with_defaults([bad]).is_err(), "{bad}");
        }
    }
}
