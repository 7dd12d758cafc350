//! Reading a JSON object field by field while collecting every problem.
//!
//! Validation must report all errors at once with their paths, so instead of
//! serde's stop-at-first-error derive, documents are walked by hand with this
//! small reader: each accessor records an issue and returns `None` on a bad
//! value, and `finish` reports the keys nobody asked for.

use super::Issue;
use serde_json::{Map, Value as Json};
use std::time::Duration;

/// Collected issues of one document.
#[derive(Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    /// Records `message` at `path`.
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.to_owned(),
            message: message.into(),
        });
    }
}

/// Field reader for one JSON object at `path`.
pub struct Fields<'a> {
    map: &'a Map<String, Json>,
    path: String,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// A reader over `value`, or `None` (with an issue) when it is not an object.
    pub fn of(value: &'a Json, path: &str, issues: &mut Issues) -> Option<Self> {
        match value {
            Json::Object(map) => Some(Self {
                map,
                path: path.to_owned(),
                used: Vec::new(),
            }),
            other => {
                issues.push(
                    path,
                    format!("must be a map, got {}", crate::expr::type_name(other)),
                );
                None
            }
        }
    }

    /// Path of a field of this object.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Whether the key is present (marks it as known).
    pub fn has(&mut self, key: &'static str) -> bool {
        self.used.push(key);
        self.map.contains_key(key)
    }

    /// The raw value of an optional field.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Json> {
        self.used.push(key);
        self.map.get(key)
    }

    /// The raw value of a required field.
    pub fn require(&mut self, key: &'static str, issues: &mut Issues) -> Option<&'a Json> {
        let value = self.get(key);
        if value.is_none() {
            issues.push(&self.path_of(key), "is required");
        }
        value
    }

    /// An optional string field.
    pub fn string(&mut self, key: &'static str, issues: &mut Issues) -> Option<String> {
        let value = self.get(key)?;
        as_string(value, &self.path_of(key), issues)
    }

    /// A required string field.
    pub fn required_string(&mut self, key: &'static str, issues: &mut Issues) -> Option<String> {
        let value = self.require(key, issues)?;
        as_string(value, &self.path_of(key), issues)
    }

    /// An optional unsigned integer field within `min..=max`.
    pub fn uint(
        &mut self,
        key: &'static str,
        min: u64,
        max: u64,
        issues: &mut Issues,
    ) -> Option<u64> {
        let value = self.get(key)?;
        let path = self.path_of(key);
        match value.as_u64() {
            Some(n) if n < min => issues.push(&path, format!("must be >= {min}")),
            Some(n) if n > max => issues.push(&path, format!("must be <= {max}")),
            Some(n) => return Some(n),
            None if value.as_i64().is_some() => issues.push(&path, format!("must be >= {min}")),
            None => issues.push(&path, "must be a whole number"),
        }
        None
    }

    /// An optional number field.
    pub fn number(&mut self, key: &'static str, issues: &mut Issues) -> Option<f64> {
        let value = self.get(key)?;
        let n = value.as_f64();
        if n.is_none() {
            issues.push(&self.path_of(key), "must be a number");
        }
        n
    }

    /// An optional duration field (`"10s"`, `"1h 30m"`).
    pub fn duration(&mut self, key: &'static str, issues: &mut Issues) -> Option<Duration> {
        let value = self.get(key)?;
        as_duration(value, &self.path_of(key), issues)
    }

    /// Reports every key not asked for.
    pub fn finish(self, issues: &mut Issues) {
        for key in self.map.keys() {
            if !self.used.contains(&key.as_str()) {
                issues.push(&self.path_of(key), "unknown field");
            }
        }
    }
}

/// A string value, or an issue.
pub fn as_string(value: &Json, path: &str, issues: &mut Issues) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        other => {
            issues.push(
                path,
                format!("must be a string, got {}", crate::expr::type_name(other)),
            );
            None
        }
    }
}

/// A duration value (`"500ms"`, `"10s"`, `"7d"`), or an issue.
pub fn as_duration(value: &Json, path: &str, issues: &mut Issues) -> Option<Duration> {
    let text = as_string(value, path, issues)?;
    match humantime::parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            issues.push(
                path,
                format!("invalid duration {text:?}: {e} (use e.g. 500ms, 10s, 5m, 48h, 7d)"),
            );
            None
        }
    }
}
