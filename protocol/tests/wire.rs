//! The native protocol's framing and codec: round trips, and every way bytes
//! can be wrong.

use proptest::prelude::*;
use troupe_protocol::frame::{self, FrameError, LENGTH_BYTES};
use troupe_protocol::*;

fn roundtrip(message: &ClientFrame) -> ClientFrame {
    let bytes = frame::encode_frame(message);
    let prefix: [u8; LENGTH_BYTES] = bytes[..LENGTH_BYTES].try_into().unwrap();
    let len = frame::frame_len(prefix, frame::DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(len, bytes.len() - LENGTH_BYTES);
    frame::decode_frame(&bytes[LENGTH_BYTES..]).unwrap()
}

#[test]
fn every_request_kind_round_trips() {
    let requests = vec![
        Request::Deploy {
            source: "name: x".into(),
        },
        Request::Start(StartWorkflow {
            definition: "order".into(),
            version: Some(2),
            id: Some("o-1".into()),
            input: r#"{"amount": 12.5}"#.into(),
        }),
        Request::List(ListWorkflows {
            status: Some("running".into()),
            ..ListWorkflows::default()
        }),
        Request::Poll(PollTasks {
            worker: "w".into(),
            task_types: vec!["a".into(), "b".into()],
            max: 8,
            wait_ms: 1000,
        }),
        Request::FailTask {
            token: "t".into(),
            code: "card_declined".into(),
            message: "no".into(),
            retryable: false,
        },
        Request::Heartbeat {
            token: "t".into(),
            progress: None,
        },
        Request::History {
            id: "o-1".into(),
            page: Page {
                cursor: Some("41".into()),
                limit: Some(10),
            },
        },
        Request::Steps {
            id: "o-1".into(),
            page: Page {
                cursor: Some("lines/3/pick".into()),
                limit: None,
            },
        },
        Request::HumanTasks {
            assignee: Some("ops".into()),
            page: Page::default(),
        },
    ];
    for (n, request) in requests.into_iter().enumerate() {
        let message = ClientFrame {
            id: n as u64 + 1,
            request,
        };
        assert_eq!(roundtrip(&message), message);
    }
}

#[test]
fn limits_and_versions_are_checked_before_decoding() {
    assert_eq!(
        frame::frame_len((1u32 << 30).to_be_bytes(), 1024),
        Err(FrameError::TooLarge {
            len: 1 << 30,
            max: 1024
        })
    );
    assert_eq!(frame::frame_len([0; 4], 1024), Err(FrameError::Empty));
    let mut bytes = frame::encode_frame(&ClientFrame {
        id: 1,
        request: Request::Cluster,
    });
    bytes[LENGTH_BYTES] = 9;
    let err = frame::decode_frame::<ClientFrame>(&bytes[LENGTH_BYTES..]).unwrap_err();
    assert_eq!(err, FrameError::Version(9));
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert_eq!(
        FrameError::TooLarge { len: 2, max: 1 }.code(),
        ErrorCode::PayloadTooLarge
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = frame::encode_frame(&ClientFrame {
        id: 7,
        request: Request::Incidents {
            page: Page::default(),
        },
    });
    bytes.push(0);
    assert!(matches!(
        frame::decode_frame::<ClientFrame>(&bytes[LENGTH_BYTES..]),
        Err(FrameError::Body(_))
    ));
}

#[test]
fn error_codes_parse_from_their_string_form() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
    }
    assert_eq!(ErrorCode::parse("nope"), None);
}

proptest! {
    /// Garbage never panics the decoder: it decodes or is refused.
    #[test]
    fn garbage_is_refused_not_panicked(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode_frame::<ClientFrame>(&bytes);
        let _ = frame::decode_frame::<ServerFrame>(&bytes);
    }

    /// Any payload text survives the trip.
    #[test]
    fn payload_text_round_trips(text in ".*", id in 1u64..) {
        let message = ClientFrame { id, request: Request::CompleteTask { token: text.clone(), output: text } };
        prop_assert_eq!(roundtrip(&message), message);
    }
}
