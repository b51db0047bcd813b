//! Text and JSON files: checked to be what their names say, streaming.

use std::io::{self, BufReader, Read};

use serde::de::IgnoredAny;

use crate::{FindingKind, Issue};

/// Whether the stream is UTF-8 without NUL bytes (what a binary payload almost never is).
pub(crate) fn is_text<R: Read>(mut reader: R) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    // Bytes of a character split across two reads, carried to the next.
    let mut carry = 0;
    loop {
        let n = reader.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(carry == 0);
        }
        let filled = carry + n;
        let chunk = &buf[..filled];
        if chunk.contains(&0) {
            return Ok(false);
        }
        carry = match std::str::from_utf8(chunk) {
            Ok(_) => 0,
            // An incomplete sequence at the end: keep it for the next read.
            Err(e) if e.error_len().is_none() => filled - e.valid_up_to(),
            Err(_) => return Ok(false),
        };
        buf.copy_within(filled - carry..filled, 0);
    }
}

/// Checks that the stream is one JSON document. Values are skipped, not built, so
/// neither nesting nor size costs memory beyond the read buffer.
pub(crate) fn check_json<R: Read>(reader: R) -> Option<Issue> {
    let mut de = serde_json::Deserializer::from_reader(BufReader::new(reader));
    let result = serde::Deserialize::deserialize(&mut de)
        .map(|_: IgnoredAny| ())
        .and_then(|()| de.end());
    result.err().map(|e| {
        Issue::new(
            FindingKind::NotScanned,
            None,
            format!("not valid JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_reads_is_text() {
        // A reader that returns one byte at a time splits every multi-byte character.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        assert!(is_text(OneByte("größe ✓ 模型".as_bytes())).unwrap());
        assert!(!is_text(OneByte(b"ab\xffcd")).unwrap());
        assert!(!is_text(OneByte(b"ab\0cd")).unwrap());
        // A truncated character at the very end is not text.
        assert!(!is_text(&"✓".as_bytes()[..2]).unwrap());
    }

    #[test]
    fn json_depth_and_trailing_data() {
        assert!(check_json(&b"{\"a\": [1, 2, {\"b\": null}]}"[..]).is_none());
        assert!(check_json(&b"{} {}"[..]).is_some());
        // Skipping a value is iterative in serde_json: deep nesting costs no stack.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(check_json(deep.as_bytes()).is_none());
        assert!(check_json(&deep.as_bytes()[1..]).is_some());
    }
}
