//! Which scanner a file goes to: magic bytes first, the extension where content alone is
//! ambiguous (protocol 0/1 pickles have no magic).

use std::path::Path;

/// What the first bytes and the name say a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Zip,
    Pickle,
    Safetensors,
    Gguf,
    Onnx,
    Json,
    Code,
    /// Text if it is UTF-8, else unknown.
    Other,
}

/// Bytes of the head [`detect`] looks at.
pub(crate) const HEAD: usize = 16;

/// Extensions of files that are pickles whatever their first byte (legacy `torch.save`,
/// joblib, raw pickles of protocol 0/1).
const PICKLE_EXTENSIONS: &[&str] = &["pkl", "pickle", "pt", "pth", "ckpt", "joblib"];
/// Extensions of code that a loader may execute: Python with `trust_remote_code`, native
/// libraries of custom ops, shell scripts.
const CODE_EXTENSIONS: &[&str] = &[
    "py", "pyc", "pyo", "pyx", "ipynb", "sh", "bash", "js", "so", "dll", "dylib", "exe", "bat",
    "ps1",
];

pub(crate) fn detect(path: &Path, head: &[u8], file_len: u64) -> Kind {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Kind::Zip;
    }
    if head.starts_with(b"GGUF") || ext == "gguf" {
        return Kind::Gguf;
    }
    if ext == "safetensors" || looks_like_safetensors(head, file_len) {
        return Kind::Safetensors;
    }
    if matches!(head, [0x80, 2..=5, ..]) || PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Kind::Pickle;
    }
    match ext.as_str() {
        "onnx" => Kind::Onnx,
        "json" => Kind::Json,
        e if CODE_EXTENSIONS.contains(&e) => Kind::Code,
        _ => Kind::Other,
    }
}

/// A plausible header length followed by the JSON object's opening brace.
fn looks_like_safetensors(head: &[u8], file_len: u64) -> bool {
    let (Some(len), Some(b'{')) = (head.get(..8), head.get(8)) else {
        return false;
    };
    let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
    len.checked_add(8).is_some_and(|end| end <= file_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_beats_extension() {
        let p = Path::new;
        assert_eq!(detect(p("model.bin"), b"PK\x03\x04....", 100), Kind::Zip);
        assert_eq!(detect(p("x.bin"), b"\x80\x02}q\x00.", 6), Kind::Pickle);
        assert_eq!(detect(p("x.bin"), b"GGUF\x03\0\0\0", 100), Kind::Gguf);
        assert_eq!(
            detect(p("x"), b"\x02\0\0\0\0\0\0\0{}", 10),
            Kind::Safetensors
        );
        // The same bytes claim a header longer than the file: not safetensors.
        assert_eq!(detect(p("x"), b"\x09\0\0\0\0\0\0\0{}", 10), Kind::Other);
        assert_eq!(detect(p("w.PT"), b"(lp0\n", 5), Kind::Pickle);
        assert_eq!(detect(p("modeling_x.py"), b"import os", 9), Kind::Code);
        assert_eq!(detect(p("config.json"), b"{}", 2), Kind::Json);
        assert_eq!(detect(p("x.safetensors"), b"", 0), Kind::Safetensors);
        // A weights extension keeps its scanner even when the content is short or wrong.
        assert_eq!(detect(p("x.gguf"), b"GGU", 3), Kind::Gguf);
    }
}
