//! Fuzzes the chunked body decoder (`tollgate::http::ChunkedDecoder`). Bodies
//! arrive in reads of any size, so the property checked is that decoding the
//! input in pieces gives exactly what decoding it at once gives: the same data
//! bytes, the same end of body, the same error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::http::{ChunkedDecoder, HttpError};

/// Decoding outcome: data bytes, bytes of the input consumed, body complete.
type Outcome = Result<(Vec<u8>, usize, bool), HttpError>;

fuzz_target!(|data: &[u8]| {
    let whole = decode_in_pieces(data, data.len().max(1));
    if let Ok((body, consumed, done)) = &whole {
        assert!(*consumed <= data.len() && body.len() <= *consumed);
        assert!(
            *done || *consumed == data.len(),
            "stopped early without finding the end"
        );
    }
    for piece in [1, 2, 3, 7, 64] {
        assert_eq!(
            decode_in_pieces(data, piece),
            whole,
            "reads of {piece} bytes disagree with one read"
        );
    }
});

fn decode_in_pieces(data: &[u8], piece: usize) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut offset = 0;
    for chunk in data.chunks(piece) {
        let decoded = decoder.decode(chunk, |range| {
            assert!(range.end <= chunk.len());
            body.extend_from_slice(&chunk[range]);
        })?;
        offset += decoded.consumed;
        if decoded.done {
            assert!(decoder.is_done());
            return Ok((body, offset, true));
        }
        assert_eq!(
            decoded.consumed,
            chunk.len(),
            "a read was not consumed although the body goes on"
        );
    }
    Ok((body, offset, false))
}
