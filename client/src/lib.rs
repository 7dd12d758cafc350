//! The Troupe Rust client: talks to a node over the native protocol (one
//! TCP connection, many requests in flight, answers matched by request id)
//! and runs workers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), troupe_client::Error> {
//! use serde_json::json;
//! let client = troupe_client::Client::connect("127.0.0.1:7070").await?;
//! let view = client.start("hello", Some("hello-1"), &json!({"name": "Ada"})).await?;
//! println!("{}", view["status"]);
//! # Ok(()) }
//! ```
//!
//! Requests refused as overloaded or unavailable are retried with
//! exponential backoff ([`RetryPolicy`]); starts always carry an instance id
//! (generated when the caller gives none), so a retried start never creates
//! a second instance. Connected to a cluster node, the client learns which
//! node leads which shard and sends requests about an instance straight to
//! its shard's leader, following `not_leader` answers. See [`Worker`] for
//! serving task types.

mod client;
mod connection;
mod error;
mod routing;
mod worker;

pub use client::{Client, RetryPolicy};
pub use error::Error;
pub use troupe_protocol::{ErrorCode, ListWorkflows, Page, TaskAssignment};
pub use worker::{Task, TaskError, Worker};
