//! The protocol between the Arca host and `arca-agent`.
//!
//! Pure data and framing: no I/O, no unsafe code. Both ends read bytes from their own
//! transport (vsock, a Unix socket) and feed them to a [`FrameDecoder`]; they write what
//! [`encode_frame`] returns. The wire format is documented in `docs/agent-protocol.md`.
//!
//! A connection starts with one [`Hello`] from the client, answered by a [`HelloReply`].
//! A *control* connection then carries [`Request`] frames answered by [`Response`] frames
//! that repeat the request's id (responses may come out of order: a `Wait` answers when
//! the process exits). A *stdio* connection names one stream of one process in its hello
//! and, once accepted, carries raw bytes with no framing; a half-close is the end of the
//! stream.

#![forbid(unsafe_code)]

mod chunk;
mod frame;
mod messages;
mod security;

pub use chunk::{LayerChunk, MAX_CHUNK, MAX_CHUNK_ERROR, chunk_header, error_chunk};
pub use frame::{FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN, encode_frame};
pub use messages::*;
pub use security::*;

/// Version of this protocol. A peer with another version is refused in the hello.
pub const PROTOCOL_VERSION: u32 = 10;
