//! Workflow definitions: the model, parsing from YAML or JSON, and validation.
//!
//! [`load`] turns a document into a [`Definition`] or returns every problem at
//! once, each with the path of the offending value.

mod fields;
mod model;
mod parse;
mod validate;

pub use model::*;
pub use validate::{MAX_DEPTH, MAX_STEPS};

use serde_json::Value as Json;
use std::fmt;

/// Largest definition document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// One validation problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// Path of the offending value, e.g. `steps[2].parallel[0][1].retry.multiplier`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Parses and validates a YAML or JSON document (JSON when it starts with `{`).
pub fn load(text: &str) -> Result<Definition, Vec<Issue>> {
    let issue = |message: String| {
        vec![Issue {
            path: String::new(),
            message,
        }]
    };
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(issue(format!(
            "document is {} bytes; at most {MAX_DOCUMENT_BYTES} are allowed",
            text.len()
        )));
    }
    let doc: Json = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| issue(format!("invalid JSON: {e}")))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| issue(format!("invalid YAML: {e}")))?
    };
    load_value(&doc)
}

/// Validates an already parsed document.
pub fn load_value(doc: &Json) -> Result<Definition, Vec<Issue>> {
    let mut issues = fields::Issues::default();
    let definition = parse::definition(doc, &mut issues);
    validate::check(doc, &mut issues);
    match definition {
        Some(d) if issues.0.is_empty() => Ok(d),
        _ => {
            let mut all = issues.0;
            if all.is_empty() {
                all.push(Issue {
                    path: String::new(),
                    message: "invalid definition".into(),
                });
            }
            Err(all)
        }
    }
}

#[cfg(test)]
mod tests;
