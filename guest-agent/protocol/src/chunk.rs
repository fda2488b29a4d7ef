//! The chunks of a layer connection ([`crate::Channel::Layer`]): each is a 4-byte
//! big-endian header and what it announces. A length of 1 to [`MAX_CHUNK`] is that
//! many bytes of the tar; `0` is the end (the tar is whole); `u32::MAX` is a failure,
//! followed by a 4-byte length (at most [`MAX_CHUNK_ERROR`]) and the reason in UTF-8.
//! A connection that closes without an end chunk is a failure too: a layer is never
//! taken for whole because its stream stopped.

use crate::FrameError;

/// The largest chunk of data.
pub const MAX_CHUNK: u32 = 1 << 20;
/// The longest failure reason.
pub const MAX_CHUNK_ERROR: u32 = 64 << 10;
const END: u32 = 0;
const ERROR: u32 = u32::MAX;

/// What a chunk header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerChunk {
    /// This many bytes of the tar follow.
    Data(usize),
    /// The tar is whole.
    End,
    /// A failure: a 4-byte length and the reason follow.
    Error,
}

impl LayerChunk {
    /// Reads a chunk header; an oversized chunk is an error (the peer is not trusted).
    pub fn parse(header: [u8; 4]) -> Result<Self, FrameError> {
        match u32::from_be_bytes(header) {
            END => Ok(Self::End),
            ERROR => Ok(Self::Error),
            n if n <= MAX_CHUNK => Ok(Self::Data(n as usize)),
            n => Err(FrameError::TooLarge {
                len: n as usize,
                max: MAX_CHUNK as usize,
            }),
        }
    }
}

/// The header of a data chunk of `len` bytes (1 to [`MAX_CHUNK`]), or of the end
/// (`0`).
pub fn chunk_header(len: usize) -> [u8; 4] {
    debug_assert!(len <= MAX_CHUNK as usize);
    (len as u32).to_be_bytes()
}

/// A whole failure chunk saying `why` (cut to [`MAX_CHUNK_ERROR`] bytes, at a
/// character boundary).
pub fn error_chunk(why: &str) -> Vec<u8> {
    let mut end = why.len().min(MAX_CHUNK_ERROR as usize);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&(end as u32).to_be_bytes());
    out.extend_from_slice(&why.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back() {
        let parse = |h| LayerChunk::parse(h).unwrap();
        assert_eq!(parse(chunk_header(0)), LayerChunk::End);
        assert_eq!(parse(chunk_header(5)), LayerChunk::Data(5));
        assert_eq!(
            parse(chunk_header(MAX_CHUNK as usize)),
            LayerChunk::Data(MAX_CHUNK as usize)
        );
        let e = error_chunk("no");
        assert_eq!(parse(e[..4].try_into().unwrap()), LayerChunk::Error);
        assert_eq!(&e[4..8], &2u32.to_be_bytes());
        assert_eq!(&e[8..], b"no");
    }

    #[test]
    fn a_hostile_chunk_length_is_refused() {
        // A peer announcing more than a chunk may hold is not believed.
        assert!(LayerChunk::parse((MAX_CHUNK + 1).to_be_bytes()).is_err());
        assert!(LayerChunk::parse((u32::MAX - 1).to_be_bytes()).is_err());
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character() {
        let why = "é".repeat(MAX_CHUNK_ERROR as usize);
        let e = error_chunk(&why);
        let len = u32::from_be_bytes(e[4..8].try_into().unwrap());
        assert!(len <= MAX_CHUNK_ERROR);
        assert!(std::str::from_utf8(&e[8..]).is_ok());
    }
}
