//! The files of a model as a behavioural-probe pod fetches them: the same listing the
//! integrity stage hashed (the walk options of the signed manifest, or the policy's),
//! plus the signature bundle when it lies inside the model, so that the pod can name
//! the file that differs; and one file's bytes, read from the model's [`Source`] in
//! chunks on a blocking thread, never buffered whole.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use lotabots_crds::workload::ModelFile;
use lotabots_model::attest::{Inputs, manifest_serialization};
use lotabots_model::ignore::IgnoreSet;
use lotabots_model::source::{Source, SourceError, WalkOptions};

/// Bytes read from the source at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// A model opened for a probe pod: its source and its files, sorted by path.
#[derive(Debug, Clone)]
pub struct ModelView {
    /// Where the files are read.
    pub source: Arc<dyn Source>,
    /// Every file the pod may fetch.
    pub files: Vec<ModelFile>,
}

impl ModelView {
    /// Lists the model `inputs` name (blocks: run it on a blocking thread).
    pub fn list(inputs: &Inputs) -> Result<Self, SourceError> {
        let source = inputs.source.clone();
        let signature_name = inputs.signature.as_ref().and_then(|s| s.name_in(&*source));
        let serialization = manifest_serialization(inputs);
        // The bundle is left out of the manifest, not out of what the pod may fetch.
        let ignore = IgnoreSet::with_defaults(
            serialization
                .ignore
                .paths()
                .filter(|p| Some(*p) != signature_name.as_deref()),
        )
        .map_err(|problem| SourceError {
            path: source.location(),
            problem,
        })?;
        let mut files: Vec<ModelFile> = source
            .list(&WalkOptions {
                allow_symlinks: serialization.allow_symlinks,
                ignore,
            })?
            .into_iter()
            .map(|f| ModelFile {
                path: f.name,
                size: f.size,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self { source, files })
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The listed file `path`.
    pub fn file(&self, path: &str) -> Option<&ModelFile> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// The bytes of `file` as a body streamed from a blocking reader; a read failure
    /// ends the body with an error (the client sees a truncated transfer).
    pub fn stream(&self, file: &ModelFile) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_AHEAD);
        let (source, name, size) = (self.source.clone(), file.path.clone(), file.size);
        tokio::task::spawn_blocking(move || {
            let mut reader = match source.open_range(&name, 0, size) {
                Ok(r) => r.take(size),
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            loop {
                let mut chunk = vec![0; CHUNK_BYTES];
                let sent = match reader.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        tx.blocking_send(Ok(Bytes::from(chunk)))
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                // The client went away.
                if sent.is_err() {
                    return;
                }
            }
        });
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use lotabots_model::attest::SignatureRef;
    use lotabots_model::source::LocalSource;

    fn inputs(dir: &std::path::Path, signature: Option<SignatureRef>) -> Inputs {
        Inputs {
            source: Arc::new(LocalSource::new(dir).unwrap()),
            spec: None,
            trust: None,
            signature,
            signature_explicit: false,
        }
    }

    #[tokio::test]
    async fn the_listing_has_the_model_and_its_bundle_and_streams_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        let big: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("sub/w.bin"), &big).unwrap();
        std::fs::write(dir.path().join("model.sig"), b"{}").unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), b"ref").unwrap();
        let sig = SignatureRef::Path(dir.path().join("model.sig"));
        let view = ModelView::list(&inputs(dir.path(), Some(sig))).unwrap();
        let paths: Vec<&str> = view.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["model.sig", "sub/w.bin"],
            "git metadata is left out"
        );
        assert_eq!(view.bytes(), big.len() as u64 + 2);
        let file = view.file("sub/w.bin").unwrap().clone();
        let body = view.stream(&file).collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), big.as_slice());
        assert!(view.file("missing").is_none());
    }
}
