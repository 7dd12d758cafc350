//! The native protocol's codec: the one module that turns messages into
//! bytes and back. It is bincode 2 (serde mode, standard config); the frame's
//! version byte names it, so a future codec can sit beside it.
//!
//! bincode cannot carry self-describing values, so JSON payloads travel as
//! JSON text ([`crate::JsonText`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte of frames this codec writes and reads.
pub const VERSION: u8 = 1;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(pub String);

/// Standard bincode with a ceiling on what one message may claim to
/// allocate, so a lying length inside a body cannot exhaust memory.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 64 << 20 }>()
}

/// Encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(message, config()).expect("wire messages always encode")
}

/// Appends the encoding of a message to `out`.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(message, out, config())
        .expect("writing to a Vec cannot fail");
}

/// Decodes a message that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (message, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(message)
}
