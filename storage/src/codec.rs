//! Encoding of everything stored on disk: one version byte, then the value.
//!
//! Version 1 is JSON: the engine's payloads are arbitrary JSON values, which
//! self-describing JSON keeps exact. Version 2 is the protocol's bincode, for
//! records of a fixed shape written often (the instance head on every
//! transition, index entries, timers): a third of the bytes, and cheaper to
//! write and read. Bincode cannot carry a JSON value and stores enum
//! variants by position, so only records without JSON inside are written in
//! it (or mirrored with JSON as text, as journal records are: see
//! `journal`), and the variants of the enums in them are only ever appended
//! to. Reads take either version.

use serde::Serialize;
use serde::de::DeserializeOwned;

const VERSION_JSON: u8 = 1;
const VERSION_COMPACT: u8 = 2;

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
    /// Malformed compact body.
    #[error("malformed compact value: {0}")]
    Compact(String),
}

/// Encodes a value with the current format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION_JSON];
    serde_json::to_writer(&mut out, value).expect("engine values always serialize");
    out
}

/// Encodes a record of a fixed shape (no JSON value inside) compactly.
pub fn encode_compact<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION_COMPACT];
    troupe_protocol::codec::encode_into(&value, &mut out);
    out
}

/// Whether `bytes` were written by [`encode_compact`].
pub fn is_compact(bytes: &[u8]) -> bool {
    bytes.first() == Some(&VERSION_COMPACT)
}

/// Decodes a value written by [`encode`] or [`encode_compact`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        None => Err(Error::Empty),
        Some((&VERSION_JSON, body)) => Ok(serde_json::from_slice(body)?),
        Some((&VERSION_COMPACT, body)) => {
            troupe_protocol::codec::decode(body).map_err(|e| Error::Compact(e.0))
        }
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
        assert!(matches!(
            decode::<String>(&[VERSION_COMPACT, 0xff]),
            Err(Error::Compact(_))
        ));
    }

    #[test]
    fn a_compact_head_is_less_than_half_its_json_and_either_reads_back() {
        let head = crate::records::InstanceHead {
            id: "order-42".into(),
            definition: "fulfilment".into(),
            version: 3,
            status: troupe_engine::engine::InstanceStatus::Completed,
            created_at: 1_796_428_690_572,
            updated_at: 1_796_428_690_575,
            events: 4,
            snapshot_events: 0,
            parent: Some(crate::records::ParentLink {
                id: "p".into(),
                path: "child".into(),
            }),
        };
        let (json, compact) = (encode(&head), encode_compact(&head));
        assert!(
            compact.len() * 2 < json.len(),
            "{compact:?} against {json:?}"
        );
        assert_eq!(
            decode::<crate::records::InstanceHead>(&compact).unwrap(),
            head
        );
        assert_eq!(decode::<crate::records::InstanceHead>(&json).unwrap(), head);
    }

    proptest! {
        #[test]
        fn round_trips(s in ".*", n in any::<i64>(), xs in prop::collection::vec(any::<u32>(), 0..8)) {
            let value = json!({"s": s, "n": n, "xs": xs});
            prop_assert_eq!(decode::<serde_json::Value>(&encode(&value)).unwrap(), value);
        }
    }
}
