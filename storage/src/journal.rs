//! Journal records: the events of one transition, stored compactly.
//!
//! The engine's events serialize to JSON with their type as a field, the
//! shape the HTTP history shows; bincode can carry neither that nor the
//! JSON values inside. A record is therefore stored as the protocol's
//! bincode (codec version 2) of a mirror of the events, with JSON values
//! as JSON text and variants by position (append new ones at the end).
//! That is about a third of the JSON's bytes, which every flush and
//! compaction of the journal (most of what a node writes) would otherwise
//! copy again. Records written as JSON (version 1) still read.

use crate::codec;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::borrow::Cow;
use troupe_engine::engine::{ErrorInfo, Event, EventKind, Millis, TimerId};

/// Encodes the events of one record.
pub(crate) fn encode(events: &[&Event]) -> Vec<u8> {
    let stored: Vec<StoredEvent<'_>> = events.iter().map(|e| StoredEvent::of(e)).collect();
    codec::encode_compact(&stored)
}

/// Decodes a record written by [`encode`], or as JSON before it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Event>, codec::Error> {
    if !codec::is_compact(bytes) {
        return codec::decode(bytes);
    }
    let stored: Vec<StoredEvent<'static>> = codec::decode(bytes)?;
    stored.into_iter().map(StoredEvent::into_event).collect()
}

#[derive(Serialize, Deserialize)]
struct StoredEvent<'a> {
    at: Millis,
    kind: StoredKind<'a>,
}

/// [`EventKind`] as stored. Stored by position: add variants at the end
/// only.
#[derive(Serialize, Deserialize)]
enum StoredKind<'a> {
    Started {
        id: Cow<'a, str>,
        input: String,
    },
    TaskStarted {
        path: Cow<'a, str>,
        attempt: u32,
    },
    TaskHeartbeat {
        path: Cow<'a, str>,
        attempt: u32,
        progress: Option<String>,
    },
    TaskCompleted {
        path: Cow<'a, str>,
        attempt: u32,
        output: String,
    },
    TaskFailed {
        path: Cow<'a, str>,
        attempt: u32,
        error: StoredError<'a>,
        retryable: bool,
    },
    TimerFired {
        timer: Cow<'a, TimerId>,
    },
    Signal {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        payload: String,
    },
    HumanCompleted {
        path: Cow<'a, str>,
        payload: String,
    },
    ChildEnded {
        path: Cow<'a, str>,
        outcome: Result<String, StoredError<'a>>,
    },
    CancelRequested {
        reason: Cow<'a, str>,
    },
    IncidentRetried {
        path: Cow<'a, str>,
    },
    IncidentResolved {
        path: Cow<'a, str>,
    },
}

/// [`ErrorInfo`] as stored (its JSON leaves out a missing step, which
/// bincode cannot).
#[derive(Serialize, Deserialize)]
struct StoredError<'a> {
    code: Cow<'a, str>,
    message: Cow<'a, str>,
    step: Option<Cow<'a, str>>,
}

impl<'a> StoredEvent<'a> {
    fn of(event: &'a Event) -> Self {
        let b = |s: &'a String| Cow::Borrowed(s.as_str());
        let kind = match &event.kind {
            EventKind::Started { id, input } => StoredKind::Started {
                id: b(id),
                input: text(input),
            },
            EventKind::TaskStarted { path, attempt } => StoredKind::TaskStarted {
                path: b(path),
                attempt: *attempt,
            },
            EventKind::TaskHeartbeat {
                path,
                attempt,
                progress,
            } => StoredKind::TaskHeartbeat {
                path: b(path),
                attempt: *attempt,
                progress: progress.as_ref().map(text),
            },
            EventKind::TaskCompleted {
                path,
                attempt,
                output,
            } => StoredKind::TaskCompleted {
                path: b(path),
                attempt: *attempt,
                output: text(output),
            },
            EventKind::TaskFailed {
                path,
                attempt,
                error,
                retryable,
            } => StoredKind::TaskFailed {
                path: b(path),
                attempt: *attempt,
                error: StoredError::of(error),
                retryable: *retryable,
            },
            EventKind::TimerFired { timer } => StoredKind::TimerFired {
                timer: Cow::Borrowed(timer),
            },
            EventKind::Signal { id, name, payload } => StoredKind::Signal {
                id: b(id),
                name: b(name),
                payload: text(payload),
            },
            EventKind::HumanCompleted { path, payload } => StoredKind::HumanCompleted {
                path: b(path),
                payload: text(payload),
            },
            EventKind::ChildEnded { path, outcome } => StoredKind::ChildEnded {
                path: b(path),
                outcome: match outcome {
                    Ok(output) => Ok(text(output)),
                    Err(error) => Err(StoredError::of(error)),
                },
            },
            EventKind::CancelRequested { reason } => {
                StoredKind::CancelRequested { reason: b(reason) }
            }
            EventKind::IncidentRetried { path } => StoredKind::IncidentRetried { path: b(path) },
            EventKind::IncidentResolved { path } => StoredKind::IncidentResolved { path: b(path) },
        };
        Self { at: event.at, kind }
    }

    fn into_event(self) -> Result<Event, codec::Error> {
        let o = Cow::into_owned;
        let kind = match self.kind {
            StoredKind::Started { id, input } => EventKind::Started {
                id: o(id),
                input: value(&input)?,
            },
            StoredKind::TaskStarted { path, attempt } => EventKind::TaskStarted {
                path: o(path),
                attempt,
            },
            StoredKind::TaskHeartbeat {
                path,
                attempt,
                progress,
            } => EventKind::TaskHeartbeat {
                path: o(path),
                attempt,
                progress: progress.as_deref().map(value).transpose()?,
            },
            StoredKind::TaskCompleted {
                path,
                attempt,
                output,
            } => EventKind::TaskCompleted {
                path: o(path),
                attempt,
                output: value(&output)?,
            },
            StoredKind::TaskFailed {
                path,
                attempt,
                error,
                retryable,
            } => EventKind::TaskFailed {
                path: o(path),
                attempt,
                error: error.into_error(),
                retryable,
            },
            StoredKind::TimerFired { timer } => EventKind::TimerFired {
                timer: timer.into_owned(),
            },
            StoredKind::Signal { id, name, payload } => EventKind::Signal {
                id: o(id),
                name: o(name),
                payload: value(&payload)?,
            },
            StoredKind::HumanCompleted { path, payload } => EventKind::HumanCompleted {
                path: o(path),
                payload: value(&payload)?,
            },
            StoredKind::ChildEnded { path, outcome } => EventKind::ChildEnded {
                path: o(path),
                outcome: match outcome {
                    Ok(output) => Ok(value(&output)?),
                    Err(error) => Err(error.into_error()),
                },
            },
            StoredKind::CancelRequested { reason } => {
                EventKind::CancelRequested { reason: o(reason) }
            }
            StoredKind::IncidentRetried { path } => EventKind::IncidentRetried { path: o(path) },
            StoredKind::IncidentResolved { path } => EventKind::IncidentResolved { path: o(path) },
        };
        Ok(Event { at: self.at, kind })
    }
}

impl<'a> StoredError<'a> {
    fn of(error: &'a ErrorInfo) -> Self {
        Self {
            code: Cow::Borrowed(&error.code),
            message: Cow::Borrowed(&error.message),
            step: error.step.as_deref().map(Cow::Borrowed),
        }
    }

    fn into_error(self) -> ErrorInfo {
        ErrorInfo {
            code: self.code.into_owned(),
            message: self.message.into_owned(),
            step: self.step.map(Cow::into_owned),
        }
    }
}

fn text(value: &Json) -> String {
    value.to_string()
}

fn value(text: &str) -> Result<Json, codec::Error> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use troupe_engine::engine::TimerKind;

    fn every_kind() -> Vec<Event> {
        let error = ErrorInfo {
            code: "card_declined".into(),
            message: "no funds".into(),
            step: Some("charge".into()),
        };
        let kinds = vec![
            EventKind::Started {
                id: "order-1".into(),
                input: json!({"total": 12.5, "items": [1, 2], "big": u64::MAX}),
            },
            EventKind::TaskStarted {
                path: "charge".into(),
                attempt: 2,
            },
            EventKind::TaskHeartbeat {
                path: "charge".into(),
                attempt: 2,
                progress: Some(json!({"done": 0.5})),
            },
            EventKind::TaskHeartbeat {
                path: "charge".into(),
                attempt: 2,
                progress: None,
            },
            EventKind::TaskCompleted {
                path: "charge".into(),
                attempt: 2,
                output: json!(null),
            },
            EventKind::TaskFailed {
                path: "charge".into(),
                attempt: 1,
                error: error.clone(),
                retryable: true,
            },
            EventKind::TimerFired {
                timer: TimerId {
                    kind: TimerKind::Retry,
                    path: "charge".into(),
                    attempt: 1,
                },
            },
            EventKind::Signal {
                id: "s-1".into(),
                name: "approved".into(),
                payload: json!("yes \"quoted\" ü"),
            },
            EventKind::HumanCompleted {
                path: "review".into(),
                payload: json!({"decision": "approve"}),
            },
            EventKind::ChildEnded {
                path: "child".into(),
                outcome: Ok(json!([true])),
            },
            EventKind::ChildEnded {
                path: "child".into(),
                outcome: Err(ErrorInfo::new("failed", "child failed")),
            },
            EventKind::CancelRequested {
                reason: "customer asked".into(),
            },
            EventKind::IncidentRetried {
                path: "ship".into(),
            },
            EventKind::IncidentResolved {
                path: "ship".into(),
            },
        ];
        (1_796_428_690_572..)
            .zip(kinds)
            .map(|(at, kind)| Event { at, kind })
            .collect()
    }

    #[test]
    fn every_kind_of_event_reads_back_as_written() {
        let events = every_kind();
        let bytes = encode(&events.iter().collect::<Vec<_>>());
        assert_eq!(decode(&bytes).unwrap(), events);
    }

    #[test]
    fn records_written_as_json_still_read() {
        let events = every_kind();
        assert_eq!(decode(&codec::encode(&events)).unwrap(), events);
    }

    #[test]
    fn a_short_workflows_record_is_under_half_its_json() {
        let events: Vec<Event> = std::iter::once(EventKind::Started {
            id: "bench-noop-14916-0".into(),
            input: json!({"n": 0}),
        })
        .chain(["a", "b", "c"].map(|path| EventKind::TaskCompleted {
            path: path.into(),
            attempt: 1,
            output: json!(null),
        }))
        .map(|kind| Event {
            at: 1_796_428_690_572,
            kind,
        })
        .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let (compact, json) = (encode(&refs), codec::encode(&refs));
        assert!(
            compact.len() * 2 < json.len(),
            "{} against {}",
            compact.len(),
            json.len()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[2, 0xff, 0xff]).is_err());
        assert!(decode(&[2, 1, 0, 0, 0]).is_err());
    }
}
