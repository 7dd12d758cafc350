//! Encoding of everything stored on disk: one version byte, then the value.
//!
//! Version 1 is JSON: the engine's payloads are arbitrary JSON values, which
//! self-describing JSON keeps exact. The version byte lets a later format
//! (bincode for fixed-shape records) be introduced without a migration.

use serde::Serialize;
use serde::de::DeserializeOwned;

const VERSION_JSON: u8 = 1;

/// A stored value that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Empty value.
    #[error("empty value")]
    Empty,
    /// Unknown format version.
    #[error("unknown encoding version {0}")]
    Version(u8),
    /// Malformed body.
    #[error("malformed value: {0}")]
    Body(#[from] serde_json::Error),
}

/// Encodes a value with the current format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION_JSON];
    serde_json::to_writer(&mut out, value).expect("engine values always serialize");
    out
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        None => Err(Error::Empty),
        Some((&VERSION_JSON, body)) => Ok(serde_json::from_slice(body)?),
        Some((&v, _)) => Err(Error::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rejects_unknown_versions_and_garbage() {
        assert!(matches!(decode::<u32>(&[]), Err(Error::Empty)));
        assert!(matches!(decode::<u32>(&[9, b'1']), Err(Error::Version(9))));
        assert!(matches!(
            decode::<u32>(&[VERSION_JSON, 0xff]),
            Err(Error::Body(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trips(s in ".*", n in any::<i64>(), xs in prop::collection::vec(any::<u32>(), 0..8)) {
            let value = json!({"s": s, "n": n, "xs": xs});
            prop_assert_eq!(decode::<serde_json::Value>(&encode(&value)).unwrap(), value);
        }
    }
}
