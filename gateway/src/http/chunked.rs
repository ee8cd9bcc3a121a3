//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! The proxy forwards chunked bodies byte for byte, so the decoder's job is to
//! find where the body ends, to reject malformed framing before it reaches a
//! peer, and to point at the data bytes when a body must be de-chunked (an
//! HTTP/1.0 client). Line endings must be CRLF: leniency here is what request
//! smuggling feeds on.

use std::ops::Range;

use super::HttpError;

/// Longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;
/// Hex digits in a chunk size; 15 keeps the size below 2^60.
const MAX_SIZE_DIGITS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size {
        digits: usize,
    },
    /// After the size: optional whitespace and extensions up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    line_len: usize,
    trailer_len: usize,
    last_chunk: bool,
    /// The trailer section's lines (LF-separated, CR dropped), kept only when
    /// asked for: plugins read trailers, the plain proxy forwards them raw.
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input that belong to the chunked body.
    pub consumed: usize,
    /// The body ended within those bytes.
    pub done: bool,
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line_len: 0,
            trailer_len: 0,
            last_chunk: false,
            trailers: None,
        }
    }

    /// A decoder that also keeps the trailer fields for [`take_trailers`](Self::take_trailers).
    pub fn keeping_trailers() -> ChunkedDecoder {
        ChunkedDecoder {
            trailers: Some(Vec::new()),
            ..ChunkedDecoder::new()
        }
    }

    /// The trailer fields seen so far as (lower-case name, value) pairs;
    /// lines without a colon are dropped.
    pub fn take_trailers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(raw) = self.trailers.as_mut() else {
            return Vec::new();
        };
        let fields = raw
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = line[..colon].to_ascii_lowercase();
                let value = line[colon + 1..].trim_ascii().to_vec();
                (!name.is_empty() && !name.contains(&b' ')).then_some((name, value))
            })
            .collect();
        raw.clear();
        fields
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Walks `input`, calling `data` with the range of every run of chunk
    /// data. Stops at the end of the body; bytes after it are not consumed.
    pub fn decode(&mut self, input: &[u8], mut data: impl FnMut(Range<usize>)) -> Result<Decoded, HttpError> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                State::Size { digits } => match hex_value(byte) {
                    Some(value) if digits < MAX_SIZE_DIGITS => {
                        self.size = self.size * 16 + u64::from(value);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    Some(_) => return Err(HttpError::BadRequest("chunk size too large")),
                    None if digits == 0 => return Err(HttpError::BadRequest("invalid chunk size")),
                    None => {
                        self.line_len = digits;
                        self.state = State::Extension;
                        continue;
                    }
                },
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err(HttpError::BadRequest("chunk extension too long"));
                    }
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(HttpError::BadRequest("bare LF in chunk size line")),
                        b'\t' | b' ' | b';' | b'=' | b'"' | b'\\' | 0x21..=0x7e => {}
                        _ => return Err(HttpError::BadRequest("invalid byte in chunk extension")),
                    }
                }
                State::SizeLf => {
                    expect_lf(byte)?;
                    if self.size == 0 {
                        self.last_chunk = true;
                        self.state = State::TrailerLineStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let available = (input.len() - at) as u64;
                    let take = available.min(self.size) as usize;
                    data(at..at + take);
                    self.size -= take as u64;
                    at += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if byte != b'\r' {
                        return Err(HttpError::BadRequest("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    expect_lf(byte)?;
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerLineStart => {
                    if byte == b'\r' {
                        self.state = State::FinalLf;
                    } else {
                        self.state = State::TrailerLine;
                        continue;
                    }
                }
                State::TrailerLine => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(HttpError::BadRequest("trailer section too large"));
                    }
                    match byte {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' | 0 => return Err(HttpError::BadRequest("invalid byte in trailer")),
                        _ => {
                            if let Some(trailers) = self.trailers.as_mut() {
                                trailers.push(byte);
                            }
                        }
                    }
                }
                State::TrailerLf => {
                    expect_lf(byte)?;
                    if let Some(trailers) = self.trailers.as_mut() {
                        trailers.push(b'\n');
                    }
                    self.state = State::TrailerLineStart;
                }
                State::FinalLf => {
                    expect_lf(byte)?;
                    self.state = State::Done;
                    return Ok(Decoded {
                        consumed: at + 1,
                        done: true,
                    });
                }
                State::Done => break,
            }
            at += 1;
        }
        Ok(Decoded {
            consumed: at,
            done: self.state == State::Done,
        })
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn expect_lf(byte: u8) -> Result<(), HttpError> {
    if byte == b'\n' {
        Ok(())
    } else {
        Err(HttpError::BadRequest("expected CRLF in chunked body"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_kept_only_when_asked() {
        let body = b"3\r\nabc\r\n0\r\nX-Checksum: 42 \r\nExpires:never\r\n\r\n";
        let mut keeping = ChunkedDecoder::keeping_trailers();
        let decoded = keeping.decode(body, |_| {}).unwrap();
        assert!(decoded.done);
        assert_eq!(
            keeping.take_trailers(),
            vec![
                (b"x-checksum".to_vec(), b"42".to_vec()),
                (b"expires".to_vec(), b"never".to_vec())
            ]
        );
        let mut plain = ChunkedDecoder::new();
        plain.decode(body, |_| {}).unwrap();
        assert!(plain.take_trailers().is_empty());
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Decoded), HttpError> {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        let decoded = decoder.decode(input, |range| out.extend_from_slice(&input[range]))?;
        Ok((out, decoded))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"5;name=val\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (data, decoded) = decode_all(body).unwrap();
        assert_eq!(data, b"hello world");
        assert!(decoded.done);
        assert_eq!(&body[decoded.consumed..], b"NEXT");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let mut data = Vec::new();
        for (i, byte) in body.iter().enumerate() {
            let one = [*byte];
            let decoded = decoder.decode(&one, |r| data.extend_from_slice(&one[r])).unwrap();
            assert_eq!(decoded.consumed, 1);
            assert_eq!(decoded.done, i == body.len() - 1);
        }
        assert_eq!(data, b"0123456789");
    }

    #[test]
    fn rejects_malformed_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"-1\r\n",
            b"fffffffffffffffff\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
