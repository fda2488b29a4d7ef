//! Length-prefixed frames: a 4-byte big-endian payload length, then a JSON payload.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes before each payload.
pub const HEADER_LEN: usize = 4;
/// Largest payload either side accepts. Stdio bytes never travel in frames, so control
/// messages stay far below this; a larger length is a broken or hostile peer.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Errors in framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix names a payload larger than [`MAX_FRAME_LEN`].
    #[error("Frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("Connection closed inside a frame ({buffered} bytes of an unfinished frame)")]
    Truncated {
        /// Bytes of the unfinished frame that did arrive.
        buffered: usize,
    },
    /// The payload is not a valid message.
    #[error("Malformed message")]
    Malformed(#[source] serde_json::Error),
}

/// Serializes `message` into one frame.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut out, message).map_err(FrameError::Malformed)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` fits: it is at most MAX_FRAME_LEN.
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reassembles frames from a byte stream.
///
/// Feed it whatever the transport returned with [`FrameDecoder::push`], then take
/// complete messages with [`FrameDecoder::next`]. An oversize length is reported as soon
/// as its prefix arrives, before any payload is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop what was consumed, so a long-lived connection's buffer holds at most one
        // unfinished frame plus the latest read.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (consumed ones included until the next push).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete message, if one has arrived.
    ///
    /// After an error the connection should be dropped: the stream is out of sync.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_payload()? {
            None => Ok(None),
            Some(range) => serde_json::from_slice(&self.buf[range])
                .map(Some)
                .map_err(FrameError::Malformed),
        }
    }

    fn next_payload(&mut self) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(header) = pending.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let begin = self.start + HEADER_LEN;
        self.start = begin + len;
        Ok(Some(begin..begin + len))
    }

    /// Bytes received past the last complete frame. After a stdio hello, these are the
    /// first raw stream bytes.
    pub fn take_remainder(&mut self) -> Vec<u8> {
        let rest = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        rest
    }

    /// Call when the transport reports end of stream: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        let buffered = self.buf.len() - self.start;
        if buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestFrame};

    fn ping(id: u64) -> RequestFrame {
        RequestFrame {
            id,
            request: Request::Ping,
        }
    }

    #[test]
    fn frames_round_trip_whole_and_byte_by_byte() {
        let mut wire = encode_frame(&ping(1)).unwrap();
        wire.extend(encode_frame(&ping(2)).unwrap());
        let mut whole = FrameDecoder::new();
        whole.push(&wire);
        assert_eq!(whole.next::<RequestFrame>().unwrap(), Some(ping(1)));
        assert_eq!(whole.next::<RequestFrame>().unwrap(), Some(ping(2)));
        assert_eq!(whole.next::<RequestFrame>().unwrap(), None);
        whole.finish().unwrap();

        let mut dribble = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            dribble.push(std::slice::from_ref(b));
            while let Some(m) = dribble.next::<RequestFrame>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![ping(1), ping(2)]);
    }

    #[test]
    fn a_truncated_frame_is_reported_at_end_of_stream() {
        let wire = encode_frame(&ping(7)).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next::<RequestFrame>().unwrap(), None);
        assert!(
            matches!(d.finish(), Err(FrameError::Truncated { buffered }) if buffered == wire.len() - 1)
        );
        // A lone partial header is truncation too.
        let mut d = FrameDecoder::new();
        d.push(&[0, 0]);
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated { buffered: 2 })
        ));
    }

    #[test]
    fn an_oversize_length_is_refused_before_its_payload_arrives() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        assert!(matches!(
            d.next::<RequestFrame>(),
            Err(FrameError::TooLarge { len, .. }) if len == MAX_FRAME_LEN + 1
        ));
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next::<RequestFrame>().is_err());
    }

    #[test]
    fn an_oversize_message_is_not_encoded() {
        let big = RequestFrame {
            id: 1,
            request: Request::Signal {
                container: "x".repeat(MAX_FRAME_LEN),
                process: None,
                signal: 9,
            },
        };
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_payloads_are_malformed_not_panics() {
        for payload in [
            &b"{"[..],
            b"null",
            b"\xff\xfe",
            b"{\"id\":1,\"request\":{\"kind\":\"nope\"}}",
        ] {
            let mut d = FrameDecoder::new();
            d.push(&(payload.len() as u32).to_be_bytes());
            d.push(payload);
            assert!(
                matches!(d.next::<RequestFrame>(), Err(FrameError::Malformed(_))),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn a_long_stream_of_frames_does_not_grow_the_buffer() {
        let frame = encode_frame(&ping(1)).unwrap();
        let wire: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 10_000)
            .collect();
        let mut d = FrameDecoder::new();
        let mut got = 0;
        // Reads that end one byte into the next frame, as a pipelining peer causes.
        for chunk in wire.chunks(frame.len() + 1) {
            d.push(chunk);
            while d.next::<RequestFrame>().unwrap().is_some() {
                got += 1;
            }
            assert!(
                d.buffered() <= 3 * frame.len(),
                "{} bytes held",
                d.buffered()
            );
        }
        assert_eq!(got, 10_000);
    }

    #[test]
    fn the_remainder_after_a_hello_is_kept_for_the_raw_stream() {
        let mut wire = encode_frame(&ping(3)).unwrap();
        wire.extend_from_slice(b"raw bytes");
        let mut d = FrameDecoder::new();
        d.push(&wire);
        assert!(d.next::<RequestFrame>().unwrap().is_some());
        assert_eq!(d.take_remainder(), b"raw bytes");
    }
}
