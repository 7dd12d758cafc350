//! Framing: every message on a native connection is
//! `length: u32 big-endian | version: u8 | body`, where `length` counts the
//! version byte and the body, and the body is the codec's encoding of a
//! [`crate::ClientFrame`] or [`crate::ServerFrame`].
//!
//! Readers check the length against their limit before reading the body, so
//! a peer cannot make them allocate more than the limit.

use crate::ErrorCode;
use crate::codec::{self, DecodeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes before the frame's content: the length.
pub const LENGTH_BYTES: usize = 4;

/// Largest frame a node accepts unless configured otherwise (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// Why a frame was refused. The connection cannot continue after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over the limit.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// A zero length: not even a version byte.
    #[error("empty frame")]
    Empty,
    /// A version byte this side does not speak.
    #[error("unsupported frame version {0} (this side speaks {v})", v = codec::VERSION)]
    Version(u8),
    /// The body did not decode.
    #[error(transparent)]
    Body(#[from] DecodeError),
}

impl FrameError {
    /// The error code reported to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Encodes `message` as a whole frame, length prefix included.
pub fn encode_frame<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.push(codec::VERSION);
    codec::encode_into(message, &mut out);
    let len = u32::try_from(out.len() - LENGTH_BYTES).expect("frames stay under 4 GiB");
    out[..LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads a length prefix and checks it against `max`.
pub fn frame_len(prefix: [u8; LENGTH_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    match len {
        0 => Err(FrameError::Empty),
        len if len > max => Err(FrameError::TooLarge { len, max }),
        len => Ok(len),
    }
}

/// Decodes a frame's content (version byte and body, without the prefix).
pub fn decode_frame<T: DeserializeOwned>(content: &[u8]) -> Result<T, FrameError> {
    match content.split_first() {
        None => Err(FrameError::Empty),
        Some((&codec::VERSION, body)) => Ok(codec::decode(body)?),
        Some((&other, _)) => Err(FrameError::Version(other)),
    }
}
