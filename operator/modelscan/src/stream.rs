//! A buffered byte stream that knows its offset, reads bounded lines and skips payloads
//! without keeping them.

use std::io::{self, BufRead, BufReader, Read};

/// Why reading an operand failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended inside an operand.
    Eof,
    /// A text operand had no newline within the bound.
    LineTooLong(usize),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Eof
        } else {
            Self::Io(e)
        }
    }
}

pub(crate) struct Input<R> {
    inner: BufReader<R>,
    pos: u64,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            inner: BufReader::with_capacity(64 << 10, reader),
            pos: 0,
        }
    }

    /// Offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The next byte, `None` at the end of the stream.
    pub(crate) fn byte(&mut self) -> io::Result<Option<u8>> {
        let buf = self.inner.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.inner.consume(1);
        self.pos += 1;
        Ok(Some(b))
    }

    pub(crate) fn at_eof(&mut self) -> io::Result<bool> {
        Ok(self.inner.fill_buf()?.is_empty())
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut a = [0; N];
        self.inner.read_exact(&mut a)?;
        self.pos += N as u64;
        Ok(a)
    }

    /// Reads `n` bytes that the caller has bounded.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        let mut v = vec![0; n];
        self.inner.read_exact(&mut v)?;
        self.pos += n as u64;
        Ok(v)
    }

    /// Skips `n` bytes (a tensor's payload) without keeping them.
    pub(crate) fn skip(&mut self, n: u64) -> Result<(), ReadError> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(ReadError::Eof);
        }
        Ok(())
    }

    /// A `\n`-terminated text operand, without the newline, of at most `max` bytes.
    pub(crate) fn line(&mut self, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = Vec::new();
        let n = (&mut self.inner)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        self.pos += n as u64;
        if buf.pop() == Some(b'\n') {
            Ok(buf)
        } else if n > max {
            Err(ReadError::LineTooLong(max))
        } else {
            Err(ReadError::Eof)
        }
    }
}
